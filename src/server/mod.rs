//! The server role: the Hysteria2 server, and the raw QUIC echo server that exercises
//! the engine.

pub mod backend;
pub mod echo;
pub mod guard;
pub mod hy2;
pub mod resolve;
pub mod run;
