//! quelay: a Hysteria2-compatible QUIC relay for bare-metal Linux.
//!
//! Layers (see DESIGN.md): `engine` is the only module with `unsafe`, libc and io_uring;
//! `proto` is the sans-IO Hysteria2 wire format; `quic` glues quinn-proto; `worker` runs the
//! thread-per-core loop on top of them.

#[deny(unsafe_code)]
pub mod acl;
pub mod client;
pub mod cluster;
pub mod config;
pub mod doctor;
pub mod engine;
pub mod limits;
pub mod metrics;
#[deny(unsafe_code)]
pub mod proto;
pub mod quic;
pub mod resolve;
pub mod secret;
pub mod server;
pub mod worker;
