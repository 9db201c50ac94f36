//! The client role: local SOCKS5 and HTTP proxies and TCP/UDP forwarders, carried over a
//! pool of Hysteria2 connections per worker that waits for stream credit instead of failing.

mod app;
pub mod http_proxy;
mod pool;
pub mod run;
pub mod socks5;
mod stats;
mod udp;

pub use stats::PoolStats;
