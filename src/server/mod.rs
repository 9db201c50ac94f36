//! The server role: the Hysteria2 server.

pub mod auth;
/// The masquerades' former path, still named by `run`; goes when `run` names `masquerade`.
mod backend {
    pub use super::masquerade::{FileMasquerade, ProxyMasquerade};
}
#[cfg(test)]
mod fake_upstream;
pub mod guard;
pub mod hy2;
pub mod masquerade;
pub mod offload;
pub mod ops;
pub mod run;
