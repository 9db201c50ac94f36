//! The server role: the Hysteria2 server.

pub mod acme;
pub mod auth;
#[cfg(test)]
mod fake_upstream;
pub mod guard;
pub mod hopping;
pub mod hy2;
pub mod masquerade;
pub mod offload;
pub mod ops;
pub mod route;
pub mod run;
