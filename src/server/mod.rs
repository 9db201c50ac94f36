//! The server role. For now the raw QUIC echo server that exercises the engine; the
//! Hysteria2 server builds on the same start-up path.

pub mod echo;
