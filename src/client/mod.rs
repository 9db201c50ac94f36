//! The client role: local SOCKS5 and HTTP proxies and TCP/UDP forwarders, carried over a
//! pool of Hysteria2 connections per worker that waits for stream credit instead of failing.

mod app;
pub mod auth;
pub mod http_proxy;
mod http_relay;
mod pool;
pub mod run;
pub mod session;
pub mod socks5;
mod stats;
mod token;
mod udp;

pub use auth::{AuthError, AuthExchange};
pub use stats::PoolStats;
