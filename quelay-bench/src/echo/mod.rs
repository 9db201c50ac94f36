//! `quelay-bench echo`: a worker group serving the raw QUIC workload (the crate root
//! describes it) with [`EchoApp`].

mod app;

pub use app::EchoApp;

use std::io;
use std::net::SocketAddr;

use crate::ALPN;
use quelay::engine::{DriverConfig, IoKind};
use quelay::quic::{self, QuicParams};
use quelay::worker::sockets::{attach_steering, log_buffers, worker_specs};
use quelay::worker::{self, default_workers, Group, GroupConfig};

/// How datagrams reach the worker that owns their connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steering {
    /// Kernel BPF picks the socket from the CID; the user-space forwarder catches the rest.
    Bpf,
    /// The kernel's 4-tuple hash only; the user-space forwarder routes by CID.
    Hash,
}

impl std::str::FromStr for Steering {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bpf" => Ok(Steering::Bpf),
            "hash" => Ok(Steering::Hash),
            _ => Err(format!("unknown steering {s:?} (bpf or hash)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EchoOptions {
    pub listen: SocketAddr,
    pub workers: usize,
    pub io: Option<IoKind>,
    pub driver: DriverConfig,
    pub steering: Steering,
    pub pin: bool,
    pub quic: QuicParams,
    /// Send with Brutal at this rate (bytes/s) on every connection, as a Hysteria2 server
    /// does after negotiating one; `None` keeps `quic.congestion`.
    pub brutal_rate: Option<u64>,
}

impl Default for EchoOptions {
    fn default() -> Self {
        EchoOptions {
            listen: "127.0.0.1:0".parse().expect("literal"),
            workers: default_workers(),
            io: None,
            driver: DriverConfig::default(),
            steering: Steering::Bpf,
            pin: true,
            quic: QuicParams::default(),
            brutal_rate: None,
        }
    }
}

/// A running echo server.
pub struct EchoServer {
    pub group: Group,
    pub addr: SocketAddr,
    /// SHA-256 pin of the generated certificate (clients may verify it).
    pub pin_sha256: String,
    /// Whether kernel CID steering is active (attached and self-tested).
    pub bpf_steering: bool,
}

/// Binds the SO_REUSEPORT group, attaches and self-tests CID steering, and starts the
/// workers.
pub fn start(opts: &EchoOptions) -> io::Result<EchoServer> {
    let n = opts.workers.clamp(1, worker::MAX_WORKERS);
    let (socks, report) = worker::bind_group(opts.listen, n, opts.driver.socket_buffer)?;
    let addr = socks[0].local_addr()?;
    log_buffers(&report, opts.driver.socket_buffer);
    let bpf_steering =
        n > 1 && opts.steering == Steering::Bpf && attach_steering(&socks, Default::default());

    let ck = quic::self_signed(&["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(io::Error::other)?;
    let pin_sha256 = quic::pin_sha256(&ck.chain[0]);
    let crypto = quic::server_crypto(&ck, &[ALPN]).map_err(io::Error::other)?;
    let server_config = quic::server_config(crypto, &opts.quic, None);
    let specs = worker_specs(socks, &server_config, None);
    let cfg = GroupConfig {
        io: opts.io,
        driver: opts.driver.clone(),
        pin: opts.pin,
        obfs: None,
        windows: None,
        handshakes: None,
        hop: None,
    };
    let group = worker::spawn(specs, &cfg, |_| EchoApp::with_brutal_rate(opts.brutal_rate))?;
    tracing::info!(
        "echo server on {addr}: {n} worker(s), {} driver, GSO {}, steering {}",
        group.shared.io_kinds[0],
        if opts.driver.gso { "on" } else { "off" },
        if bpf_steering {
            "bpf"
        } else {
            "hash + forwarding"
        },
    );
    Ok(EchoServer {
        group,
        addr,
        pin_sha256,
        bpf_steering,
    })
}
