//! `quelay client`: from a validated config to workers serving the local listeners.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::app::{ClientApp, ClientShared, Front, LocalSockets};
use super::pool::{PoolConfig, ServerAddr};
use super::session::udp::UdpForward;
use super::stats::PoolStats;
use crate::config::{self, ClientConfig, ProxyAuth};
use crate::engine::{self, DriverConfig};
use crate::limits::Cap;
use crate::proto::h3::ALPN;
use crate::proto::Host;
use crate::quic::{self, Verify};
use crate::resolve::Resolver;
use crate::worker::{self, Group, GroupConfig, Listener, QuicSection};

/// Backlog of each local TCP listener.
const BACKLOG: i32 = 4096;

/// A running client.
pub struct Client {
    pub group: Group,
    pub stats: Arc<PoolStats>,
    /// What listens where, for the start-up message.
    pub listening: Vec<String>,
}

/// Loads and validates the config file, logging warnings for unknown keys.
pub fn load(path: &std::path::Path) -> Result<ClientConfig, String> {
    let (cfg, warnings) = config::load_client(path).map_err(|e| e.to_string())?;
    for w in warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok(cfg)
}

fn verify(cfg: &ClientConfig) -> Result<Verify, String> {
    let tls = &cfg.tls;
    if let Some(pin) = tls.pin_sha256 {
        return Ok(Verify::Pin(pin));
    }
    if tls.insecure {
        return Ok(Verify::Insecure);
    }
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("tls.ca: {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| format!("tls.ca: {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls.ca: {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("tls.ca: {}: no certificate in it", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(
                    "tls: the system has no CA certificates; set tls.ca, tls.pinSHA256 or \
                     tls.insecure"
                        .into(),
                );
            }
        }
    }
    Ok(Verify::Roots(roots))
}

fn creds(a: &Option<ProxyAuth>) -> Option<(String, String)> {
    a.as_ref().map(|a| (a.username.clone(), a.password.clone()))
}

/// Binds the local listeners (`n` sockets each) and returns each worker's share.
fn local_sockets(cfg: &ClientConfig, n: usize) -> Result<(Vec<LocalSockets>, Vec<String>), String> {
    let mut per_worker: Vec<LocalSockets> = (0..n)
        .map(|_| LocalSockets {
            tcp: Vec::new(),
            udp: Vec::new(),
        })
        .collect();
    let mut listening = Vec::new();
    let mut tcp = |key: &str, addr: SocketAddr, front: Front| -> Result<(), String> {
        let (fds, bound) = worker::bind_listeners(addr, n, Listener::Tcp { backlog: BACKLOG })
            .map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?;
        for (w, fd) in per_worker.iter_mut().zip(fds) {
            w.tcp.push((fd, front.clone()));
        }
        listening.push(format!("{key} on {bound}"));
        Ok(())
    };
    if let Some(s) = &cfg.socks5 {
        let front = Front::Socks5 {
            auth: creds(&s.auth),
            udp: !s.disable_udp,
            bind_ip: s.listen.ip(),
        };
        tcp("socks5", s.listen, front)?;
    }
    if let Some(h) = &cfg.http {
        let front = Front::Http {
            auth: creds(&h.auth),
            realm: h.realm.clone(),
        };
        tcp("http", h.listen, front)?;
    }
    for f in &cfg.tcp_forwarding {
        let front = Front::Forward {
            remote: f.remote.to_string(),
        };
        tcp(&format!("tcpForwarding to {}", f.remote), f.listen, front)?;
    }
    for f in &cfg.udp_forwarding {
        let (fds, bound) = worker::bind_listeners(f.listen, n, Listener::Udp)
            .map_err(|e| format!("udpForwarding: cannot bind {}: {e}", f.listen))?;
        let fwd = UdpForward {
            remote: f.remote.to_string(),
            timeout: f.timeout,
        };
        for (w, fd) in per_worker.iter_mut().zip(fds) {
            w.udp.push((fd, fwd.clone()));
        }
        listening.push(format!("udpForwarding to {} on {bound}", f.remote));
    }
    if listening.is_empty() {
        return Err(
            "nothing to serve: configure socks5, http, tcpForwarding or udpForwarding".into(),
        );
    }
    Ok((per_worker, listening))
}

/// `server`: an address, or a name each connection looks up again.
fn server_addr(cfg: &ClientConfig) -> ServerAddr {
    let port = cfg.server.port;
    match &cfg.server.host {
        Host::Ip(ip) => ServerAddr::Ip(SocketAddr::new(*ip, port)),
        Host::Domain(name) => ServerAddr::Name {
            host: name.clone(),
            port,
        },
    }
}

/// Starts the workers for `cfg`.
pub fn start(cfg: &ClientConfig) -> Result<Client, String> {
    let server = server_addr(cfg);
    let looked_up = match &server {
        ServerAddr::Ip(_) => "",
        ServerAddr::Name { .. } => " (looked up for each connection)",
    };
    let n = cfg
        .engine
        .workers
        .unwrap_or_else(worker::default_workers)
        .clamp(1, worker::MAX_WORKERS);
    let (mut sockets, listening) = local_sockets(cfg, n)?;
    let obfs = worker::obfuscator(&cfg.obfs)?;
    let crypto = quic::client_crypto(verify(cfg)?, &[ALPN]).map_err(|e| format!("tls: {e}"))?;
    let section = QuicSection::Client(&cfg.quic);
    let params = worker::quic_params(section, &cfg.congestion, &cfg.bandwidth, &cfg.obfs);
    let client_config = quic::client_config(crypto, &params);
    let driver = DriverConfig::default();
    let socket_buffer = driver.socket_buffer;
    let sockopts = engine::SockOpts {
        device: cfg.quic.sockopts.bind_interface.clone(),
        mark: cfg.quic.sockopts.fwmark,
    };
    // A name may move to either family: its sockets reach both.
    let (specs, resolver) = match &server {
        ServerAddr::Ip(addr) => (
            worker::client_specs(*addr, n, &client_config, socket_buffer, &sockopts),
            None,
        ),
        ServerAddr::Name { .. } => (
            worker::client_specs_any_family(n, &client_config, socket_buffer, &sockopts),
            Some(Arc::new(Resolver::start(&config::Resolver::System)?)),
        ),
    };
    let specs = specs.map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let stats = Arc::new(PoolStats::new(n));
    let shared = Arc::new(ClientShared {
        pool: PoolConfig {
            server,
            server_name: cfg.server_name(),
            auth: cfg.auth.clone(),
            up: cfg.bandwidth.up.unwrap_or(0),
            down: cfg.bandwidth.down.unwrap_or(0),
            max_connections: cfg.pool.max_connections,
            open_wait_threshold: cfg.pool.open_wait_threshold,
            eager: !cfg.lazy,
        },
        stream_open_timeout: cfg.pool.stream_open_timeout,
        fast_open: cfg.fast_open,
        stats: stats.clone(),
        resolver,
    });
    // Each worker takes its own share of the listeners.
    sockets.reverse();
    let sockets = Mutex::new(sockets);
    let group_cfg = GroupConfig {
        io: cfg.engine.io.map(Into::into),
        driver,
        pin: true,
        obfs,
        windows: Some(worker::window_policy(
            section,
            Arc::new(Cap::new(Some(crate::limits::default_window_budget()))),
        )),
        handshakes: None,
        hop: cfg.hop.as_ref().map(|h| worker::HopPlan {
            ports: h.ports.clone().into(),
            min: h.min_interval,
            max: h.max_interval,
            buffer: socket_buffer,
            sockopts: sockopts.clone(),
        }),
    };
    let hopping = match &cfg.hop {
        Some(h) if h.min_interval == h.max_interval => format!(
            ", hopping over {} port(s) every {:?}",
            h.ports.len(),
            h.min_interval
        ),
        Some(h) => format!(
            ", hopping over {} port(s) every {:?} to {:?}",
            h.ports.len(),
            h.min_interval,
            h.max_interval
        ),
        None => String::new(),
    };
    let group = worker::spawn(specs, &group_cfg, |id| {
        let mine = sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or(LocalSockets {
                tcp: Vec::new(),
                udp: Vec::new(),
            });
        ClientApp::new(shared.clone(), mine, id.0 as usize)
    })
    .map_err(|e| format!("cannot start workers: {e}"))?;
    tracing::info!(
        "Hysteria2 client for {}{looked_up}{hopping}: {n} worker(s), {} driver, up to {} \
         connection(s) each, {}",
        cfg.server,
        group.shared.io_kinds[0],
        cfg.pool.max_connections,
        listening.join(", ")
    );
    Ok(Client {
        group,
        stats,
        listening,
    })
}

/// Runs until SIGTERM or SIGINT (or the workers stop), then prints the pool's figures.
pub fn wait(client: Client) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    while !stop.load(Ordering::Relaxed) && !client.group.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    client.group.stop();
    let hops = client.group.totals().hops;
    let joined = client.group.join();
    // On stderr whatever the log level: scripts and tests read this line.
    eprintln!("pool stats: {} hops={hops}", client.stats);
    joined.map_err(|e| e.to_string())
}
