//! The server role: the Hysteria2 server, and the raw QUIC echo server that exercises
//! the engine.

pub mod backend;
pub mod echo;
pub mod guard;
pub mod hy2;
pub mod offload;
pub mod ops;
pub mod run;

use std::net::UdpSocket;
use std::sync::Arc;

use crate::engine::{self, bpf};
use crate::quic;
use crate::worker::WorkerSpec;

/// One worker spec per socket of the group: all share the server config and one stateless
/// reset key; each issues CIDs that name it.
pub(crate) fn worker_specs(
    socks: Vec<UdpSocket>,
    server_config: &Arc<quinn_proto::ServerConfig>,
) -> Vec<WorkerSpec> {
    let n = socks.len();
    let mut reset_key = [0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut reset_key);
    socks
        .into_iter()
        .enumerate()
        .map(|(i, socket)| WorkerSpec {
            socket,
            endpoint_config: Arc::new(quic::endpoint_config(&reset_key, i as u8, n as u8)),
            server_config: Some(server_config.clone()),
            client_config: None,
        })
        .collect()
}

/// Attaches kernel CID steering to the group and self-tests it; false (logged) when the
/// kernel refuses, leaving routing to the user-space forwarder.
pub(crate) fn attach_steering(socks: &[UdpSocket]) -> bool {
    match bpf::steer_group(socks) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("CID steering unavailable ({e}); relying on user-space forwarding");
            false
        }
    }
}

pub(crate) fn log_buffers(r: &engine::BufferReport, want: usize) {
    if r.forced {
        tracing::info!(
            "socket buffers forced to {} KiB (SO_RCVBUFFORCE)",
            r.rcvbuf / 1024
        );
    } else if r.rcvbuf < want {
        tracing::warn!(
            "socket buffers capped at {} KiB receive / {} KiB send by net.core.rmem_max/wmem_max \
             (wanted {} KiB; see tuning/)",
            r.rcvbuf / 1024,
            r.sndbuf / 1024,
            want / 1024
        );
    } else {
        tracing::info!("socket buffers {} KiB", r.rcvbuf / 1024);
    }
}
