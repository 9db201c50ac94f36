//! The client role: local SOCKS5 and HTTP proxy front ends (sans-IO so far).

pub mod http_proxy;
pub mod socks5;
