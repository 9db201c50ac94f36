//! Authenticators that ask someone outside the relay. Password and userpass logins are
//! decided on the worker; these run on the auth room's threads (`server::offload`), which
//! post each verdict back to the worker that asked.

pub mod command;
pub mod http;

pub use command::command_auth;
pub use http::http_auth;
