//! The server role: the Hysteria2 server, and the raw QUIC echo server that exercises
//! the engine.

pub mod backend;
pub mod echo;
pub mod guard;
pub mod hy2;
pub mod offload;
pub mod ops;
pub mod run;

// The raw QUIC echo server still assembles its socket group from the builder's pieces.
pub(crate) use crate::worker::sockets::{attach_steering, log_buffers, worker_specs};
