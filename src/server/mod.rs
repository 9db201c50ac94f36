//! The server role: the Hysteria2 server.

pub mod masquerade;
use masquerade::file as backend;
pub mod guard;
pub mod hy2;
pub mod offload;
pub mod ops;
pub mod run;
