//! `quelay server -c FILE`: from a validated config to running workers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::acme::{tlsalpn01, Acme};
use super::guard::OutboundGuard;
use super::hy2::{Authenticator, Hy2App, Hy2Config, Masquerade};
use super::masquerade::{tcp, FileMasquerade, ProxyMasquerade};
use super::offload::Offload;
use super::ops::{self, Command, Ops};
use super::route::Router;
use crate::config::{self, Acl, AclRules, Auth, MasqueradeHandler, Obfs, ServerConfig};
use crate::config::{ConfigError, ErrorAt, Warning};
use crate::config::{
    DEFAULT_AUTH_TIMEOUT, DEFAULT_MAX_UNAUTHENTICATED, DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE,
};
use crate::engine::DriverConfig;
use crate::limits::handshake::HandshakeLimits;
use crate::limits::{Caps, Limits, PerUser};
use crate::proto::h3::ALPN;
use crate::proto::sniff::Sniffer;
use crate::quic::cid::{CidLayout, ClusterId};
use crate::quic::{self, AssumePeerDatagrams, CertKey, TlsError, ASSUMED_PEER_DATAGRAM_PAYLOAD};
use crate::worker::{self, Group, GroupConfig, QuicSection, SocketGroup, Steering};

/// How long a SIGTERM/SIGINT drain lets streams finish by default.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Hysteria2 server.
pub struct Server {
    pub group: Group,
    pub addr: SocketAddr,
    /// The share URI printed when the certificate was generated (no `tls` section).
    pub share_uri: Option<String>,
    /// Commands to the workers, the drain state and the traffic-stats backend.
    pub ops: Arc<Ops>,
    /// The config running now (what a reload compares against).
    cfg: ServerConfig,
    /// The certificate new handshakes get (`None`: generated, never reloaded). With `acme`
    /// the renewal thread holds it too.
    cert: Option<Arc<quic::CertSwap>>,
    /// Contents of `tls.cert` and `tls.key` when last loaded.
    cert_files: Option<(Vec<u8>, Vec<u8>)>,
    /// The masquerade the TCP listeners serve (`masquerade.listenHTTPS`), replaced on reload.
    masquerade_tcp: Option<tcp::Current>,
    /// The port-hopping redirect this server installed, removed when it is dropped.
    _hop_redirect: Option<super::hopping::Redirect>,
}

/// Turns the config into what the workers run. Errors name the config key. `limits`: the
/// running server's counters (a reload keeps them; the caps are applied by the caller).
fn hy2_config(cfg: &ServerConfig, limits: Option<Arc<Limits>>) -> Result<Hy2Config, String> {
    let auth = match &cfg.auth {
        Auth::Password(p) => Authenticator::Password(p.clone()),
        Auth::UserPass(users) => Authenticator::UserPass(
            users
                .iter()
                .map(|(u, p)| (config::Auth::user_key(u), p.clone()))
                .collect(),
        ),
        Auth::Command(path) => Authenticator::Command(path.clone()),
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
            Masquerade::File(Arc::new(FileMasquerade::new(dir.clone())))
        }
        MasqueradeHandler::Proxy {
            url,
            rewrite_host,
            x_forwarded,
            insecure,
        } => Masquerade::Proxy(Arc::new(
            ProxyMasquerade::new(url.clone(), *rewrite_host, *x_forwarded, *insecure)
                .map_err(|e| format!("masquerade.proxy.url: {e}"))?,
        )),
    };
    let router = Arc::new(Router::new(cfg.acl.as_ref(), &cfg.outbounds)?);
    Ok(Hy2Config {
        auth,
        masquerade,
        router,
        sniffer: cfg.sniff.as_ref().map(sniffer),
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
        limits: limits.unwrap_or_else(|| Limits::new(caps(cfg), crate::limits::fd_limit())),
        max_incoming_streams: cfg.quic.max_incoming_streams,
        auth_timeout: cfg.limits.auth_timeout.unwrap_or(DEFAULT_AUTH_TIMEOUT),
        max_unauthenticated: cfg
            .limits
            .max_unauthenticated
            .unwrap_or(DEFAULT_MAX_UNAUTHENTICATED),
        max_unauthenticated_per_source: cfg
            .limits
            .max_unauthenticated_per_source
            .unwrap_or(DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE)
            .min(u64::from(u32::MAX)) as u32,
    })
}

/// The sniffer a `sniff:` section describes.
fn sniffer(c: &config::Sniff) -> Sniffer {
    Sniffer::new(
        c.timeout,
        c.rewrite_domain,
        c.tcp_ports.clone(),
        c.udp_ports.clone(),
    )
}

/// A per-user socket cap as configured. With `auth.type: password` every client is the one
/// user `user`, so there is no other user to protect: no default cap (a value set is kept).
fn per_user(cfg: &ServerConfig, v: Option<u64>) -> PerUser {
    match (&cfg.auth, v) {
        (Auth::Password(_), None) => PerUser::Unlimited,
        _ => PerUser::from_config(v),
    }
}

/// `limits.*` as the counters take them.
pub fn caps(cfg: &ServerConfig) -> Caps {
    Caps {
        streams_per_user: cfg.limits.max_streams_per_user,
        streams: cfg.limits.max_streams,
        connections_per_user: cfg.limits.max_connections_per_user,
        udp_sessions_per_user: per_user(cfg, cfg.limits.max_udp_sessions_per_user),
        sockets_per_user: per_user(cfg, cfg.limits.max_sockets_per_user),
        receive_window_budget: Some(
            cfg.limits
                .receive_window_budget
                .unwrap_or_else(crate::limits::default_window_budget),
        ),
    }
}

/// `tls.sniGuard` as the certificate lookup enforces it. A generated certificate (no `tls`
/// section) names only `localhost`, which clients cannot be expected to send: no check.
/// An ACME certificate is served, as certmagic serves it, to the names it was issued for.
fn sni_guard(cfg: &ServerConfig) -> quic::SniGuard {
    if cfg.tls.is_none() && cfg.acme.is_some() {
        return quic::SniGuard::DnsSan;
    }
    match cfg.tls.as_ref().map(|t| t.sni_guard) {
        None | Some(config::SniGuard::Disable) => quic::SniGuard::Disable,
        Some(config::SniGuard::DnsSan) => quic::SniGuard::DnsSan,
        Some(config::SniGuard::Strict) => quic::SniGuard::Strict,
    }
}

/// Loads `tls.cert` and `tls.key`. Errors name the key at fault.
fn load_cert(tls: &config::Tls) -> Result<CertKey, (&'static str, String)> {
    quic::load_pem(&tls.cert, &tls.key).map_err(|e| {
        // load_pem reads the certificate first, so a path equal to both is the cert's.
        let key = match &e {
            TlsError::Unreadable { path, .. } | TlsError::BadPem { path, .. }
                if path != &tls.cert =>
            {
                "tls.key"
            }
            TlsError::NoPrivateKey(_) => "tls.key",
            _ => "tls.cert",
        };
        (key, e.to_string())
    })
}

/// [`load_cert`] with the key in front of the reason, as start-up reports it.
fn load_cert_at(tls: &config::Tls) -> Result<CertKey, String> {
    load_cert(tls).map_err(|(key, e)| format!("{key}: {e}"))
}

/// `quelay server --check -c FILE`: everything [`load`] checks, plus that the files the
/// config names can be used (certificate and key load and match, the client CA, the
/// masquerade directory and the ACL file are readable). Errors name the file and the key.
pub fn check(path: &Path) -> Result<Vec<Warning>, ConfigError> {
    let origin = path.display().to_string();
    let (config, warnings) = config::load_server(path)?;
    let at = |key: &str, reason: String| ConfigError {
        origin: origin.clone(),
        at: ErrorAt::Key(key.to_owned()),
        reason,
    };
    if let Some(tls) = &config.tls {
        let ck = load_cert(tls).map_err(|(key, e)| at(key, e))?;
        quic::server_crypto(&ck, &[ALPN]).map_err(|e| at("tls", e.to_string()))?;
        if let Some(ca) = &tls.client_ca {
            std::fs::File::open(ca)
                .map_err(|e| at("tls.clientCA", format!("{}: {e}", ca.display())))?;
        }
    }
    if let MasqueradeHandler::File { dir } = &config.masquerade.handler {
        if !dir.is_dir() {
            return Err(at(
                "masquerade.file.dir",
                format!("{} is not a readable directory", dir.display()),
            ));
        }
    }
    if let Some(Acl {
        rules: AclRules::File(file),
        ..
    }) = &config.acl
    {
        std::fs::File::open(file)
            .map_err(|e| at("acl.file", format!("{}: {e}", file.display())))?;
    }
    Ok(warnings)
}

/// Each worker's share of `limits.maxUnvalidatedHandshakes` and `limits.handshakesPerSecond`.
fn handshake_limits(limits: &config::Limits, workers: usize) -> HandshakeLimits {
    HandshakeLimits::per_worker(
        limits
            .max_unvalidated_handshakes
            .unwrap_or(config::DEFAULT_MAX_UNVALIDATED_HANDSHAKES),
        limits
            .handshakes_per_second
            .unwrap_or(config::DEFAULT_HANDSHAKES_PER_SECOND_PER_WORKER * workers as u64),
        workers,
    )
}

/// Starts the workers for `cfg`.
pub fn start(cfg: &ServerConfig) -> Result<Server, String> {
    let hy2 = Arc::new(hy2_config(cfg, None)?);
    let obfs = worker::obfuscator(&cfg.obfs)?;
    let mut acme = None;
    let (ck, generated, cert_files) = match (&cfg.tls, &cfg.acme) {
        (Some(tls), _) => (load_cert_at(tls)?, false, read_pair(&tls.cert, &tls.key)),
        (None, Some(a)) => {
            let client = Acme::new(a, &cfg.resolver)?;
            let (ck, validity) = client.obtain()?;
            acme = Some((client, validity));
            (ck, false, None)
        }
        (None, None) => (
            quic::self_signed(&["localhost".to_string()]).map_err(|e| e.to_string())?,
            true,
            None,
        ),
    };
    let pin = quic::pin_sha256(&ck.chain[0]);
    let cert = quic::CertSwap::new(&ck, sni_guard(cfg)).map_err(|e| format!("tls: {e}"))?;
    let crypto = quic::server_crypto_swappable(cert.clone(), &[ALPN]).map_err(|e| e.to_string())?;
    // Official clients since 2.8.2 omit max_datagram_frame_size; assume 1200 like the
    // reference server so UDP replies reach them.
    let crypto = Arc::new(AssumePeerDatagrams::new(
        crypto,
        ASSUMED_PEER_DATAGRAM_PAYLOAD,
    ));
    let section = QuicSection::Server {
        quic: &cfg.quic,
        udp: !cfg.disable_udp,
    };
    let params = worker::quic_params(section, &cfg.congestion, &cfg.bandwidth, &cfg.obfs);
    let cluster = cfg.cluster.as_ref().map(cluster_keys).transpose()?;
    let server_config = quic::server_config(crypto, &params, cluster.as_ref().map(|c| &c.2));

    let n = cfg
        .engine
        .workers
        .unwrap_or_else(worker::default_workers)
        .clamp(1, worker::MAX_WORKERS);
    let driver = DriverConfig::default();
    // With Salamander the kernel cannot read CIDs: the 4-tuple hash plus user-space
    // forwarding route instead.
    let steering = if obfs.is_none() {
        Steering::Bpf
    } else {
        Steering::Hash
    };
    let layout = cluster.as_ref().map(|c| c.0).unwrap_or_default();
    let sockets = SocketGroup::bind(cfg.listen, n, driver.socket_buffer, steering, layout)
        .map_err(|e| format!("listen: cannot bind {}: {e}", cfg.listen))?;
    let (addr, steering) = (sockets.addr, sockets.steering);
    let specs = sockets.specs(&server_config, cluster.map(|c| (c.0, c.1)));
    if let Some(c) = &cfg.cluster {
        tracing::info!(
            "cluster node {} (config {}): connection IDs carry the node for the balancer",
            c.node_id,
            c.config_id
        );
    }
    let masquerade_tcp = match cfg.masquerade.listen_https {
        Some(https) => {
            // An ACME TLS-ALPN-01 port the HTTPS listener takes is answered there too.
            let (resolver, alpn): (Arc<dyn rustls::server::ResolvesServerCert>, Vec<&[u8]>) =
                match &mut acme {
                    Some((client, _)) if client.tls_alpn01_port() == Some(https.port()) => {
                        let challenges = tlsalpn01::Certs::default();
                        client.share_tls_alpn01(challenges.clone());
                        let both = tlsalpn01::OrSite {
                            challenges,
                            site: cert.clone(),
                        };
                        (
                            Arc::new(both),
                            vec![b"h2", b"http/1.1", tlsalpn01::ACME_TLS_ALPN],
                        )
                    }
                    _ => (cert.clone(), vec![b"h2", b"http/1.1"]),
                };
            let tls = quic::tcp_server_tls(resolver, &alpn)
                .map_err(|e| format!("masquerade.listenHTTPS: {e}"))?;
            let current: tcp::Current = Arc::new(std::sync::RwLock::new(hy2.masquerade.clone()));
            // An ACME HTTP-01 port the HTTP listener takes is answered there, for renewals.
            let acme_http01 = match (&mut acme, cfg.masquerade.listen_http) {
                (Some((client, _)), Some(http)) if client.http01_port() == Some(http.port()) => {
                    let answers = super::acme::http01::Answers::default();
                    client.share_http01(answers.clone());
                    Some(answers)
                }
                _ => None,
            };
            let listeners = tcp::Listeners {
                https,
                http: cfg.masquerade.listen_http,
                force_https: cfg.masquerade.force_https,
                quic_port: addr.port(),
                acme_http01,
            };
            tcp::serve(&listeners, tls, current.clone())?;
            tracing::info!(
                "masquerade over TCP: HTTPS on {https}{}",
                cfg.masquerade
                    .listen_http
                    .map(|h| format!(", HTTP on {h}"))
                    .unwrap_or_default()
            );
            Some(current)
        }
        None => None,
    };
    if let Some((client, validity)) = acme {
        client.spawn_renewal(cert.clone(), validity)?;
    }
    let offload = Arc::new(Offload::new(&cfg.resolver)?);
    tracing::info!("resolver: {}", offload.resolver().kind());
    let group_cfg = GroupConfig {
        io: cfg.engine.io.map(Into::into),
        driver,
        pin: true,
        obfs,
        windows: Some(worker::window_policy(
            section,
            hy2.limits.window_budget.clone(),
        )),
        handshakes: Some(handshake_limits(&cfg.limits, n)),
        hop: None,
    };
    let (mut ops, links) = ops::channels(n, hy2.limits.clone());
    let group = worker::spawn(specs, &group_cfg, |id| {
        let app = Hy2App::new(hy2.clone(), offload.clone());
        match links.get(usize::from(id.0)) {
            Some(link) => app.with_link(link.clone()),
            None => app,
        }
    })
    .map_err(|e| format!("cannot start workers: {e}"))?;
    ops.attach(group.shared.clone());
    let ops = Arc::new(ops);
    tracing::info!(
        "Hysteria2 server on {addr}: {n} worker(s), {} driver, steering {}, obfs {}",
        group.shared.io_kinds[0],
        if steering == Steering::Bpf {
            "bpf"
        } else {
            "hash + forwarding"
        },
        if cfg.obfs == Obfs::Plain {
            "off"
        } else {
            "salamander"
        },
    );
    if let Some(m) = &cfg.metrics {
        let counters = group.shared.counters.clone();
        let limits = hy2.limits.clone();
        let offload = offload.clone();
        crate::metrics::prometheus::serve(m.listen, move || {
            let mut page = crate::metrics::prometheus::render(&counters, Some(&limits));
            offload.render_metrics(&mut page);
            page
        })?;
        tracing::info!("metrics on http://{}/metrics", m.listen);
    }
    if let Some(ts) = &cfg.traffic_stats {
        crate::metrics::traffic::serve(ts.listen, ts.secret.clone(), ops.clone())?;
        tracing::info!("traffic stats API on http://{}/", ts.listen);
    }
    // The other ports reach the bound one through a redirect: found, or installed now.
    let hop_redirect = cfg
        .listen_ports
        .as_ref()
        .and_then(|ports| super::hopping::ensure(addr, ports));
    let share_uri = generated.then(|| share_uri(cfg, addr, &pin));
    Ok(Server {
        group,
        addr,
        share_uri,
        ops,
        cfg: cfg.clone(),
        cert: (!generated).then_some(cert),
        cert_files,
        masquerade_tcp,
        _hop_redirect: hop_redirect,
    })
}

/// A cluster node's CID layout, stateless-reset key and token key, from `cluster.keyFile`.
fn cluster_keys(c: &config::Cluster) -> Result<(CidLayout, [u8; 64], [u8; 64]), String> {
    let path = c.key_file.display();
    let text = std::fs::read(&c.key_file).map_err(|e| format!("cluster.keyFile: {path}: {e}"))?;
    let secret = text.trim_ascii();
    if secret.len() < quic::MIN_CLUSTER_SECRET {
        return Err(format!(
            "cluster.keyFile: {path}: {} bytes of secret, at least {} needed (for example \
             `openssl rand -hex 32`)",
            secret.len(),
            quic::MIN_CLUSTER_SECRET
        ));
    }
    let (reset, token) = quic::cluster_keys(secret);
    let layout = CidLayout {
        cluster: Some(ClusterId {
            config_rotation: c.config_id,
            node: c.node_id,
        }),
    };
    Ok((layout, reset, token))
}

/// The bytes of a certificate and key file (to notice a change on reload).
fn read_pair(cert: &Path, key: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((std::fs::read(cert).ok()?, std::fs::read(key).ok()?))
}

impl Server {
    /// Applies the config file at `path` (SIGHUP): authentication, limits, masquerade,
    /// outbound guard, bandwidth, and the certificate when its files changed. Keys that need
    /// new sockets or workers keep their running values (with a warning). On any error the
    /// running config stays as it is.
    pub fn reload(&mut self, path: &Path) -> Result<(), String> {
        let mut new = load(path)?;
        let old = &self.cfg;
        let restart_only = [
            (
                new.listen != old.listen || new.listen_ports != old.listen_ports,
                "listen",
            ),
            (new.obfs != old.obfs, "obfs"),
            (new.quic != old.quic, "quic"),
            (new.engine != old.engine, "engine"),
            (new.congestion != old.congestion, "congestion"),
            (new.disable_udp != old.disable_udp, "disableUDP"),
            (new.traffic_stats != old.traffic_stats, "trafficStats"),
            (new.metrics != old.metrics, "metrics"),
            (new.resolver != old.resolver, "resolver"),
            (
                (
                    new.limits.max_unvalidated_handshakes,
                    new.limits.handshakes_per_second,
                ) != (
                    old.limits.max_unvalidated_handshakes,
                    old.limits.handshakes_per_second,
                ),
                "limits.maxUnvalidatedHandshakes/handshakesPerSecond",
            ),
            (
                new.tls.is_some() != old.tls.is_some(),
                "tls (added or removed)",
            ),
            (new.acme != old.acme, "acme"),
            (
                new.tls.as_ref().map(|t| t.sni_guard) != old.tls.as_ref().map(|t| t.sni_guard),
                "tls.sniGuard",
            ),
            (
                (
                    new.masquerade.listen_http,
                    new.masquerade.listen_https,
                    new.masquerade.force_https,
                ) != (
                    old.masquerade.listen_http,
                    old.masquerade.listen_https,
                    old.masquerade.force_https,
                ),
                "masquerade.listenHTTP/listenHTTPS/forceHTTPS",
            ),
        ];
        for (changed, key) in restart_only {
            if changed {
                tracing::warn!("reload: {key} changed; it takes effect after a restart");
            }
        }
        new.listen = old.listen;
        new.listen_ports = old.listen_ports.clone();
        new.obfs = old.obfs.clone();
        new.quic = old.quic.clone();
        new.engine = old.engine;
        new.congestion = old.congestion;
        new.disable_udp = old.disable_udp;
        new.traffic_stats = old.traffic_stats.clone();
        new.metrics = old.metrics.clone();
        new.resolver = old.resolver.clone();
        new.limits.max_unvalidated_handshakes = old.limits.max_unvalidated_handshakes;
        new.limits.handshakes_per_second = old.limits.handshakes_per_second;
        if new.tls.is_some() != old.tls.is_some() {
            new.tls = old.tls.clone();
        }
        new.acme = old.acme.clone();
        if let (Some(new_tls), Some(old_tls)) = (&mut new.tls, &old.tls) {
            new_tls.sni_guard = old_tls.sni_guard;
        }
        new.masquerade.listen_http = old.masquerade.listen_http;
        new.masquerade.listen_https = old.masquerade.listen_https;
        new.masquerade.force_https = old.masquerade.force_https;
        let limits = self.ops.limits.clone();
        let hy2 = Arc::new(hy2_config(&new, Some(limits.clone()))?);
        // The certificate: loaded and checked before anything is applied.
        let mut cert = None;
        if let (Some(tls), Some(_)) = (&new.tls, &self.cert) {
            let files = read_pair(&tls.cert, &tls.key);
            if files.is_none() || files != self.cert_files {
                let ck = load_cert_at(tls)?;
                quic::CertSwap::new(&ck, quic::SniGuard::Disable)
                    .map_err(|e| format!("tls: {e}"))?;
                cert = Some((ck, files));
            }
        }
        if let (Some((ck, files)), Some(swap)) = (cert, &self.cert) {
            swap.set(&ck).map_err(|e| format!("tls: {e}"))?;
            self.cert_files = files;
            tracing::info!("reload: new certificate for new connections");
        }
        limits.set_caps(caps(&new));
        if let Some(current) = &self.masquerade_tcp {
            *current.write().unwrap_or_else(|e| e.into_inner()) = hy2.masquerade.clone();
        }
        self.ops.broadcast(|| Command::Reload(hy2.clone()));
        let removed = self.cfg.auth.removed_users(&new.auth);
        if !removed.is_empty() {
            tracing::info!("reload: closing the connections of removed users {removed:?}");
            let removed: Arc<HashSet<String>> = Arc::new(removed.into_iter().collect());
            self.ops.broadcast(|| Command::Kick(removed.clone()));
        }
        self.cfg = new;
        Ok(())
    }
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
        Auth::Http { .. } | Auth::Command(_) => String::new(),
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
        ports: cfg.listen_ports.as_ref().map(|p| p.text.clone()),
        obfs: cfg.obfs.clone(),
        sni: None,
        insecure: true,
        pin_sha256: config::parse_pin(pin).ok(),
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

/// Runs until SIGTERM or SIGINT (or the workers stop); SIGHUP reloads `config` (when
/// given). On SIGTERM/SIGINT the server drains: new connections and streams are refused,
/// streams in progress get up to `drain` to finish, then connections are closed.
pub fn wait(mut server: Server, config: Option<&Path>, drain: Duration) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let config: Option<PathBuf> = config.map(Path::to_path_buf);
    while !stop.load(Ordering::Relaxed) && !server.group.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if hup.swap(false, Ordering::Relaxed) {
            match &config {
                Some(path) => match server.reload(path) {
                    Ok(()) => tracing::info!("reloaded {}", path.display()),
                    Err(e) => tracing::error!(
                        "reload of {} rejected, the running config stays: {e}",
                        path.display()
                    ),
                },
                None => tracing::warn!("SIGHUP: no config file to reload"),
            }
        }
    }
    if !server.group.is_finished() {
        drain_streams(&server, drain);
    }
    server.group.stop();
    server.group.join().map_err(|e| e.to_string())
}

/// Refuses new work and waits up to `timeout` for streams in progress to finish.
fn drain_streams(server: &Server, timeout: Duration) {
    let ops = &server.ops;
    ops.start_drain();
    let start = Instant::now();
    tracing::info!(
        "draining: no new connections or streams; waiting up to {:?}",
        timeout
    );
    // The workers publish what is still busy when they tick; a wakeup makes them tick.
    std::thread::sleep(Duration::from_millis(50));
    loop {
        ops.wake_all();
        std::thread::sleep(Duration::from_millis(50));
        let busy = ops.busy();
        if busy == 0 {
            tracing::info!("drained in {:?}", start.elapsed());
            return;
        }
        if start.elapsed() >= timeout || server.group.is_finished() {
            tracing::warn!("drain timeout: closing {busy} stream(s) still in progress");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: &str = "auth: {type: password, password: pw}\n";

    #[test]
    fn sniff_section_builds_its_sniffer() {
        use crate::proto::sniff::Transport;
        let s = sniffer(&config::Sniff {
            timeout: Some(Duration::from_secs(2)),
            rewrite_domain: true,
            tcp_ports: Some(crate::proto::PortSet::parse("80,443").unwrap()),
            udp_ports: None,
        });
        assert_eq!(s.timeout(), Duration::from_secs(2));
        assert!(s.wants("example.com", Transport::Tcp, 443));
        assert!(!s.wants("example.com", Transport::Tcp, 8080));
        assert!(s.wants("example.com", Transport::Udp, 8080));
    }

    fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    /// The files a config names are checked where they are used: `--check` and start-up
    /// name the key at fault.
    #[test]
    fn check_files() {
        let dir = std::env::temp_dir().join(format!("quelay-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_path = write(&dir, "cert.pem", cert.pem());
        let key_path = write(&dir, "key.pem", key_pair.serialize_pem());
        let config = |cert: &Path, key: &Path| {
            format!(
                "{AUTH}tls: {{cert: \"{}\", key: \"{}\"}}\nbogus: 1\n",
                cert.display(),
                key.display()
            )
        };
        let file = write(&dir, "server.yaml", config(&cert_path, &key_path));
        let (_, w) = config::load_server(&file).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(check(&file).unwrap(), w);

        let missing = dir.join("missing.pem");
        let file = write(&dir, "server.yaml", config(&missing, &key_path));
        let e = check(&file).unwrap_err();
        assert_eq!(e.key(), Some("tls.cert"), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("{}: tls.cert: ", file.display())),
            "{e}"
        );
        let e = start(&load(&file).unwrap()).err().unwrap();
        assert!(e.starts_with("tls.cert: "), "{e}");
        let file = write(&dir, "server.yaml", config(&cert_path, &cert_path));
        assert_eq!(check(&file).unwrap_err().key(), Some("tls.key"));
        let e = start(&load(&file).unwrap()).err().unwrap();
        assert!(e.starts_with("tls.key: "), "{e}");
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        let other_key = write(&dir, "other.key", other.key_pair.serialize_pem());
        let file = write(&dir, "server.yaml", config(&cert_path, &other_key));
        assert_eq!(check(&file).unwrap_err().key(), Some("tls"));

        let file = write(
            &dir,
            "server.yaml",
            format!(
                "{AUTH}masquerade: {{type: file, file: {{dir: \"{}\"}}}}",
                missing.display()
            ),
        );
        assert_eq!(check(&file).unwrap_err().key(), Some("masquerade.file.dir"));
        let file = write(
            &dir,
            "server.yaml",
            format!("{AUTH}acl: {{file: \"{}\"}}", missing.display()),
        );
        assert_eq!(check(&file).unwrap_err().key(), Some("acl.file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
