//! `quelay server -c FILE`: from a validated config to running workers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use super::backend;
use super::guard::OutboundGuard;
use super::hy2::{Authenticator, Hy2App, Hy2Config, Masquerade};
use super::offload::Offload;
use crate::config::{self, Auth, MasqueradeHandler, Obfs, ServerConfig};
use crate::engine::DriverConfig;
use crate::limits::{Caps, Limits};
use crate::proto::salamander::{Salamander, SALT_LEN};
use crate::quic::{self, AssumePeerDatagrams, QuicParams, ASSUMED_PEER_DATAGRAM_PAYLOAD};
use crate::worker::{self, Group, GroupConfig};

/// ALPN of Hysteria2 (HTTP/3).
pub const ALPN: &[u8] = b"h3";

/// A running Hysteria2 server.
pub struct Server {
    pub group: Group,
    pub addr: SocketAddr,
    /// The share URI printed when the certificate was generated (no `tls` section).
    pub share_uri: Option<String>,
}

/// Turns the config into what the workers run. Errors name the config key.
fn hy2_config(cfg: &ServerConfig) -> Result<Hy2Config, String> {
    // Sections that would change who may reach what must not be ignored silently.
    if cfg.acl.is_some() {
        return Err("acl: ACL rules are not supported yet; remove the section".into());
    }
    if cfg.masquerade.listen_http.is_some() || cfg.masquerade.listen_https.is_some() {
        return Err(
            "masquerade.listenHTTP/listenHTTPS: the TCP side of the masquerade is not \
             supported yet"
                .into(),
        );
    }
    let ignored = [
        (cfg.sniff.is_some(), "sniff"),
        (cfg.traffic_stats.is_some(), "trafficStats"),
    ];
    for (set, key) in ignored {
        if set {
            tracing::warn!("{key}: not supported yet; ignored");
        }
    }
    let auth = match &cfg.auth {
        Auth::Password(p) => Authenticator::Password(p.clone()),
        Auth::UserPass(users) => Authenticator::UserPass(
            users
                .iter()
                .map(|(u, p)| (config::Auth::user_key(u), p.clone()))
                .collect(),
        ),
        Auth::Http { url, insecure } => Authenticator::Http {
            url: url.clone(),
            insecure: *insecure,
        },
    };
    let masquerade = match &cfg.masquerade.handler {
        MasqueradeHandler::NotFound => Masquerade::NotFound,
        MasqueradeHandler::String {
            content,
            headers,
            status_code,
        } => Masquerade::String {
            status: *status_code,
            headers: headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            content: content.clone(),
        },
        MasqueradeHandler::File { dir } => {
            Masquerade::File(Arc::new(backend::FileMasquerade::new(dir.clone())))
        }
        MasqueradeHandler::Proxy {
            url,
            rewrite_host,
            x_forwarded,
            insecure,
        } => Masquerade::Proxy(Arc::new(
            backend::ProxyMasquerade::new(url.clone(), *rewrite_host, *x_forwarded, *insecure)
                .map_err(|e| format!("masquerade.proxy.url: {e}"))?,
        )),
    };
    Ok(Hy2Config {
        auth,
        masquerade,
        guard: OutboundGuard {
            allow_loopback: cfg.outbound_guard.allow_loopback,
            allow_link_local: cfg.outbound_guard.allow_link_local,
        },
        udp: !cfg.disable_udp,
        udp_idle_timeout: cfg.udp_idle_timeout,
        bandwidth_up: cfg.bandwidth.up.unwrap_or(0),
        bandwidth_down: cfg.bandwidth.down.unwrap_or(0),
        ignore_client_bandwidth: cfg.ignore_client_bandwidth,
        speed_test: cfg.speed_test,
        limits: Limits::new(caps(cfg), crate::limits::fd_limit()),
        max_incoming_streams: cfg.quic.max_incoming_streams,
    })
}

/// `limits.*` as the counters take them.
pub fn caps(cfg: &ServerConfig) -> Caps {
    Caps {
        streams_per_user: cfg.limits.max_streams_per_user,
        streams: cfg.limits.max_streams,
        connections_per_user: cfg.limits.max_connections_per_user,
    }
}

fn quic_params(cfg: &ServerConfig) -> QuicParams {
    let q = &cfg.quic;
    QuicParams {
        init_stream_window: q.init_stream_receive_window,
        max_stream_window: q.max_stream_receive_window,
        init_conn_window: q.init_conn_receive_window,
        max_conn_window: q.max_conn_receive_window,
        max_idle_timeout: q.max_idle_timeout,
        max_incoming_streams: q.max_incoming_streams,
        datagrams: !cfg.disable_udp,
        mtu_discovery: !q.disable_path_mtu_discovery,
        congestion: match cfg.congestion.kind {
            config::CongestionKind::Bbr => quic::Congestion::Bbr,
            config::CongestionKind::Reno => quic::Congestion::NewReno,
        },
        loss_compensation: !cfg.bandwidth.disable_loss_compensation,
        datagram_overhead: match cfg.obfs {
            Obfs::Salamander { .. } => SALT_LEN as u16,
            Obfs::Plain => 0,
        },
        ..QuicParams::default()
    }
}

/// Starts the workers for `cfg`.
pub fn start(cfg: &ServerConfig) -> Result<Server, String> {
    let hy2 = Arc::new(hy2_config(cfg)?);
    let obfs = match &cfg.obfs {
        Obfs::Salamander { password } => Some(Arc::new(
            Salamander::new(password.as_bytes())
                .map_err(|e| format!("obfs.salamander.password: {e}"))?,
        )),
        Obfs::Plain => None,
    };
    let (ck, generated) = match &cfg.tls {
        Some(tls) => (
            quic::load_pem(&tls.cert, &tls.key).map_err(|e| e.to_string())?,
            false,
        ),
        None => (
            quic::self_signed(&["localhost".to_string()]).map_err(|e| e.to_string())?,
            true,
        ),
    };
    let pin = quic::pin_sha256(&ck.chain[0]);
    let crypto = quic::server_crypto(&ck, &[ALPN]).map_err(|e| e.to_string())?;
    // Official clients since 2.8.2 omit max_datagram_frame_size; assume 1200 like the
    // reference server so UDP replies reach them.
    let crypto = Arc::new(AssumePeerDatagrams::new(
        crypto,
        ASSUMED_PEER_DATAGRAM_PAYLOAD,
    ));
    let server_config = quic::server_config(crypto, &quic_params(cfg), None);

    let n = cfg
        .engine
        .workers
        .unwrap_or_else(super::echo::default_workers)
        .clamp(1, worker::MAX_WORKERS);
    let driver = DriverConfig::default();
    let (socks, report) = worker::bind_group(cfg.listen, n, driver.socket_buffer)
        .map_err(|e| format!("listen: cannot bind {}: {e}", cfg.listen))?;
    let addr = socks[0].local_addr().map_err(|e| e.to_string())?;
    super::log_buffers(&report, driver.socket_buffer);
    // With Salamander the kernel cannot read CIDs: the 4-tuple hash plus user-space
    // forwarding route instead.
    let steering = n > 1 && obfs.is_none() && super::attach_steering(&socks);

    let specs = super::worker_specs(socks, &server_config);
    let resolver = Arc::new(Offload::new().map_err(|e| format!("resolver threads: {e}"))?);
    let group_cfg = GroupConfig {
        io: cfg.engine.io,
        driver,
        pin: true,
        obfs,
    };
    let group = worker::spawn(specs, &group_cfg, |_| {
        Hy2App::new(hy2.clone(), resolver.clone())
    })
    .map_err(|e| format!("cannot start workers: {e}"))?;
    tracing::info!(
        "Hysteria2 server on {addr}: {n} worker(s), {} driver, steering {}, obfs {}",
        group.shared.io_kinds[0],
        if steering { "bpf" } else { "hash + forwarding" },
        if cfg.obfs == Obfs::Plain {
            "off"
        } else {
            "salamander"
        },
    );
    if let Some(m) = &cfg.metrics {
        let counters = group.shared.counters.clone();
        let limits = hy2.limits.clone();
        crate::metrics::prometheus::serve(m.listen, move || {
            crate::metrics::prometheus::render(&counters, Some(&limits))
        })?;
        tracing::info!("metrics on http://{}/metrics", m.listen);
    }
    let share_uri = generated.then(|| share_uri(cfg, addr, &pin));
    Ok(Server {
        group,
        addr,
        share_uri,
    })
}

/// `hysteria2://auth@host:port/?insecure=1&pinSHA256=...` for a generated certificate.
fn share_uri(cfg: &ServerConfig, addr: SocketAddr, pin: &str) -> String {
    let auth = match &cfg.auth {
        Auth::Password(p) => p.clone(),
        Auth::UserPass(users) => users
            .iter()
            .next()
            .map(|(u, p)| format!("{u}:{p}"))
            .unwrap_or_default(),
        Auth::Http { .. } => String::new(),
    };
    let host = if addr.ip().is_unspecified() {
        "YOUR.SERVER.ADDRESS".to_string()
    } else {
        addr.ip().to_string()
    };
    let uri = config::ShareUri {
        auth: (!auth.is_empty()).then_some(auth),
        host,
        port: addr.port(),
        obfs: cfg.obfs.clone(),
        sni: None,
        insecure: true,
        pin_sha256: quic::parse_pin(pin).ok(),
        name: None,
    };
    uri.to_string()
}

/// Loads and validates the config file, printing warnings for unknown keys.
pub fn load(path: &std::path::Path) -> Result<ServerConfig, String> {
    let (cfg, warnings) = config::load_server(path).map_err(|e| e.to_string())?;
    for w in warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok(cfg)
}

/// Blocks until the workers stop.
pub fn wait(server: Server) -> io::Result<()> {
    server.group.join()
}
