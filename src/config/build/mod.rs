//! Turning the YAML tree into a [`ServerConfig`], one official section at a time, with the
//! official server's defaults and checks (`app/cmd/server.go`, `core/server/config.go`).
//! `access` holds who may connect and what others see; `egress` where traffic goes; `client`
//! builds a [`ClientConfig`](super::ClientConfig) from the sections both sides share and its own.

mod access;
mod acme_dns;
mod client;
mod egress;
mod transport;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_norway::Value;

use super::error::{fault, Fault, Warning};
use super::reader::Section;
use super::server::*;
use super::units;

pub(crate) use client::{client, from_uri as client_from_uri};
use transport::{bandwidth, congestion, obfs, quic, End};

pub(super) type W = Vec<Warning>;

/// Build a server config from the parsed top-level value.
pub(crate) fn server(root: &Value, w: &mut W) -> Result<ServerConfig, Fault> {
    let mut top = Section::new(String::new(), root)?;
    let (listen, listen_ports) = listen(&mut top, w)?;
    let tls = tls(&mut top, w)?;
    let acme = acme(&mut top, w)?;
    if tls.is_some() && acme.is_some() {
        return Err(fault(top.key("acme"), "cannot set both tls and acme"));
    }
    unsupported_extras(&mut top, w)?;
    let obfs = obfs(&mut top, w)?;
    let quic = quic(&mut top, End::Server, w)?.server();
    let congestion = congestion(&mut top, w)?;
    let bandwidth = bandwidth(&mut top, End::Server, w)?;
    let ignore_client_bandwidth = top.bool("ignoreClientBandwidth")?;
    let speed_test = top.bool("speedTest")?;
    let disable_udp = top.bool("disableUDP")?;
    let udp_idle_timeout = ranged(
        &mut top,
        "udpIdleTimeout",
        DEFAULT_UDP_IDLE_TIMEOUT,
        UDP_IDLE_TIMEOUT_RANGE,
        "2s to 600s",
    )?;
    let auth = access::auth(&mut top, w)?;
    let resolver = egress::resolver(&mut top, w)?;
    let sniff = egress::sniff(&mut top, w)?;
    let acl = egress::acl(&mut top, w)?;
    let outbounds = egress::outbounds(&mut top, acl.is_some(), w)?;
    let traffic_stats = access::traffic_stats(&mut top, w)?;
    let masquerade = access::masquerade(&mut top, w)?;
    let outbound_guard = {
        let mut s = top.section("outboundGuard")?;
        let guard = OutboundGuard {
            allow_loopback: s.bool("allowLoopback")?,
            allow_link_local: s.bool("allowLinkLocal")?,
        };
        s.finish(w);
        guard
    };
    let limits = {
        let mut s = top.section("limits")?;
        let limits = Limits {
            max_streams_per_user: s.u64("maxStreamsPerUser")?.filter(|&n| n != 0),
            max_streams: s.u64("maxStreams")?.filter(|&n| n != 0),
            max_connections_per_user: s.u64("maxConnectionsPerUser")?.filter(|&n| n != 0),
            max_udp_sessions_per_user: s.u64("maxUdpSessionsPerUser")?,
            max_sockets_per_user: s.u64("maxSocketsPerUser")?,
            receive_window_budget: match s.size("receiveWindowBudget")? {
                Some(n) if n < MIN_RECEIVE_WINDOW_BUDGET => {
                    return Err(fault(
                        s.key("receiveWindowBudget"),
                        format!(
                            "{n} bytes is below the least window of a connection \
                             ({MIN_RECEIVE_WINDOW_BUDGET})"
                        ),
                    ))
                }
                n => n,
            },
            auth_timeout: s.duration("authTimeout")?.map(|(d, _)| d),
            max_unauthenticated: s.u64("maxUnauthenticated")?.filter(|&n| n != 0),
            max_unauthenticated_per_source: s
                .u64("maxUnauthenticatedPerSource")?
                .filter(|&n| n != 0),
            max_unvalidated_handshakes: s.u64("maxUnvalidatedHandshakes")?.filter(|&n| n != 0),
            handshakes_per_second: s.u64("handshakesPerSecond")?.filter(|&n| n != 0),
        };
        s.finish(w);
        limits
    };
    let engine = engine(&mut top, w)?;
    let metrics = {
        let mut s = top.section("metrics")?;
        let listen = address(&mut s, "listen", w)?;
        s.finish(w);
        listen.map(|listen| Metrics { listen })
    };
    let cluster = cluster(&mut top, w)?;
    top.finish(w);
    Ok(ServerConfig {
        listen,
        listen_ports,
        cluster,
        tls,
        acme,
        obfs,
        quic,
        congestion,
        bandwidth,
        ignore_client_bandwidth,
        speed_test,
        disable_udp,
        udp_idle_timeout,
        auth,
        sniff,
        resolver,
        acl,
        outbounds,
        traffic_stats,
        masquerade,
        outbound_guard,
        limits,
        engine,
        metrics,
    })
}

/// `cluster`: `nodeId` and `keyFile` together, or neither.
fn cluster(top: &mut Section, w: &mut W) -> Result<Option<Cluster>, Fault> {
    let mut s = top.section("cluster")?;
    let node = s.u64("nodeId")?;
    let config = s.u64("configId")?;
    let key_file = s.nonempty_string("keyFile", w)?;
    let (node_key, config_key, file_key) = (s.key("nodeId"), s.key("configId"), s.key("keyFile"));
    s.finish(w);
    let (node, key_file) = match (node, key_file) {
        (None, None) if config.is_none() => return Ok(None),
        (Some(n), Some(f)) => (n, f),
        (None, _) => return Err(fault(node_key, "required in a cluster (0 to 255)")),
        (_, None) => {
            return Err(fault(
                file_key,
                "required in a cluster: a file with the secret every node shares",
            ))
        }
    };
    let node_id = u8::try_from(node)
        .map_err(|_| fault(node_key, format!("{node} is not a node ID (0 to 255)")))?;
    let config_id = match config {
        None => 0,
        Some(c @ 0..=6) => c as u8,
        Some(c) => {
            return Err(fault(
                config_key,
                format!("{c} is not a config ID (0 to 6)"),
            ))
        }
    };
    Ok(Some(Cluster {
        node_id,
        config_id,
        key_file: PathBuf::from(key_file),
    }))
}

/// `listen`: the address, and the whole port set when it gives several (port hopping).
fn listen(top: &mut Section, w: &mut W) -> Result<(SocketAddr, Option<ListenPorts>), Fault> {
    let key = top.key("listen");
    let text = top.string("listen", w)?.unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        let any = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, DEFAULT_LISTEN_PORT));
        return Ok((any, None));
    }
    if text.to_ascii_lowercase().starts_with("realm://") {
        return Err(fault(key, "realm mode (realm://) is not supported"));
    }
    if let Some((host, list)) = text
        .rsplit_once(':')
        .filter(|(_, p)| p.contains(['-', ',']))
    {
        let ports = units::hop_ports(list).map_err(|e| fault(key.clone(), e))?;
        let addr =
            units::parse_socket_addr(&format!("{host}:{}", ports[0])).map_err(|e| fault(key, e))?;
        let text = list.to_owned();
        return Ok((addr, Some(ListenPorts { text, ports })));
    }
    let addr = units::parse_socket_addr(text).map_err(|e| fault(key, e))?;
    Ok((addr, None))
}

/// An optional `host:port` key.
pub(super) fn address(s: &mut Section, name: &str, w: &mut W) -> Result<Option<SocketAddr>, Fault> {
    let key = s.key(name);
    match s.nonempty_string(name, w)? {
        Some(text) => units::parse_socket_addr(&text)
            .map(Some)
            .map_err(|e| fault(key, e)),
        None => Ok(None),
    }
}

fn tls(top: &mut Section, w: &mut W) -> Result<Option<Tls>, Fault> {
    if !top.has("tls") {
        top.skip(&["tls"]);
        return Ok(None);
    }
    let mut s = top.section("tls")?;
    let cert = s
        .nonempty_string("cert", w)?
        .ok_or_else(|| fault(s.key("cert"), "required: the PEM certificate chain file"))?;
    let key = s
        .nonempty_string("key", w)?
        .ok_or_else(|| fault(s.key("key"), "required: the PEM private key file"))?;
    let guard_key = s.key("sniGuard");
    let sni_guard = match lower(s.string("sniGuard", w)?).as_str() {
        "" | "dns-san" => SniGuard::DnsSan,
        "strict" => SniGuard::Strict,
        "disable" => SniGuard::Disable,
        other => {
            return Err(fault(
                guard_key,
                format!("unsupported SNI guard {other:?} (use dns-san, strict or disable)"),
            ))
        }
    };
    let client_ca = s.nonempty_string("clientCA", w)?.map(PathBuf::from);
    s.finish(w);
    Ok(Some(Tls {
        cert: cert.into(),
        key: key.into(),
        sni_guard,
        client_ca,
    }))
}

/// `acme`: `None` when the section is absent or empty.
fn acme(top: &mut Section, w: &mut W) -> Result<Option<Acme>, Fault> {
    if !top.has("acme") {
        top.skip(&["acme"]);
        return Ok(None);
    }
    let mut s = top.section("acme")?;
    let domains_key = s.key("domains");
    let mut domains = Vec::new();
    // The first wildcard's key: only DNS-01 can prove one, so it is refused unless `type: dns`.
    let mut wildcard = None;
    for (i, d) in s.string_list("domains", w)?.into_iter().enumerate() {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        let dns = d.strip_prefix("*.").unwrap_or(&d);
        if !is_dns_name(dns) || dns.parse::<IpAddr>().is_ok() {
            return Err(fault(
                format!("{domains_key}[{i}]"),
                format!("{d:?} is not a DNS name"),
            ));
        }
        if d.starts_with("*.") && wildcard.is_none() {
            wildcard = Some((format!("{domains_key}[{i}]"), d.clone()));
        }
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    if domains.is_empty() {
        return Err(fault(domains_key, "empty domains"));
    }
    let email = s.string("email", w)?.unwrap_or_default().trim().to_owned();
    let ca_key = s.key("ca");
    let ca_text = s.string("ca", w)?.unwrap_or_default();
    let ca = match ca_text.trim().to_lowercase().as_str() {
        "" | "letsencrypt" | "le" => AcmeCa::LetsEncrypt,
        "zerossl" | "zero" => AcmeCa::ZeroSsl,
        lower if lower.starts_with("https://") => AcmeCa::Directory(ca_text.trim().to_owned()),
        _ => {
            return Err(fault(
                ca_key,
                format!(
                    "unsupported CA {:?} (use letsencrypt, zerossl or an https:// directory URL)",
                    ca_text.trim()
                ),
            ))
        }
    };
    if ca == AcmeCa::ZeroSsl && email.is_empty() {
        return Err(fault(
            s.key("email"),
            "required for ZeroSSL (its account binding is issued per email)",
        ));
    }
    let dir = s.nonempty_string("dir", w)?.map(PathBuf::from);
    let host_key = s.key("listenHost");
    let listen_host =
        match s.nonempty_string("listenHost", w)? {
            None => None,
            Some(h) => {
                let h = h.trim();
                let bare = h
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(h);
                Some(bare.parse::<IpAddr>().map_err(|_| {
                    fault(host_key, format!("{h:?} is not an IP address (no port)"))
                })?)
            }
        };
    let type_key = s.key("type");
    let kind = lower(s.string("type", w)?);
    let port = |s: &mut Section, name: &str, default: u16| -> Result<u16, Fault> {
        match s.u64(name)? {
            None | Some(0) => Ok(default),
            Some(p) => u16::try_from(p)
                .map_err(|_| fault(s.key(name), format!("{p} is not a port (1 to 65535)"))),
        }
    };
    let legacy = [
        "disableHTTP",
        "disableTLSALPN",
        "altHTTPPort",
        "altTLSALPNPort",
    ];
    if let Some((key, d)) = wildcard.filter(|_| kind != "dns") {
        return Err(fault(
            key,
            format!("{d:?}: a wildcard needs the DNS-01 challenge (acme.type: dns)"),
        ));
    }
    let mut dns = None;
    let (http_port, tls_port) = match kind.as_str() {
        "" => {
            let http = (!s.bool("disableHTTP")?)
                .then(|| port(&mut s, "altHTTPPort", DEFAULT_ACME_HTTP_PORT))
                .transpose()?;
            let tls = (!s.bool("disableTLSALPN")?)
                .then(|| port(&mut s, "altTLSALPNPort", DEFAULT_ACME_TLS_PORT))
                .transpose()?;
            s.skip(&legacy);
            s.skip(&["http", "tls", "dns"]);
            if http.is_none() && tls.is_none() {
                return Err(fault(
                    s.key("disableHTTP"),
                    "both challenges disabled: nothing can prove the domain",
                ));
            }
            (http, tls)
        }
        "http" => {
            let mut sub = s.section("http")?;
            let p = port(&mut sub, "altPort", DEFAULT_ACME_HTTP_PORT)?;
            sub.finish(w);
            s.skip(&legacy);
            s.skip(&["tls", "dns"]);
            (Some(p), None)
        }
        "tls" => {
            let mut sub = s.section("tls")?;
            let p = port(&mut sub, "altPort", DEFAULT_ACME_TLS_PORT)?;
            sub.finish(w);
            s.skip(&legacy);
            s.skip(&["http", "dns"]);
            (None, Some(p))
        }
        "dns" => {
            dns = Some(acme_dns::dns(&mut s, w)?);
            s.skip(&legacy);
            s.skip(&["http", "tls"]);
            (None, None)
        }
        other => {
            return Err(fault(
                type_key,
                format!("unsupported ACME type {other:?} (use http, tls or dns)"),
            ))
        }
    };
    s.finish(w);
    Ok(Some(Acme {
        domains,
        email,
        ca,
        dir,
        listen_host,
        http_port,
        tls_port,
        dns,
    }))
}

/// Letters, digits and inner hyphens in dot-separated labels of 1 to 63, 253 in all.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Official sections for features quelay does not have: refuse them when they would change
/// behaviour, so that a config never silently means something else.
fn unsupported_extras(top: &mut Section, w: &mut W) -> Result<(), Fault> {
    let mut ech = top.section("ech")?;
    if ech.nonempty_string("keyPath", w)?.is_some() {
        return Err(fault(ech.key("keyPath"), "ECH is not supported"));
    }
    ech.finish(w);
    mimic_and_realm(top, w)
}

/// `mimic` (refused when enabled) and `realm` (warned about and ignored), which the official
/// server and client share.
fn mimic_and_realm(top: &mut Section, w: &mut W) -> Result<(), Fault> {
    let mut mimic = top.section("mimic")?;
    if mimic.bool("enabled")? {
        return Err(fault(
            mimic.key("enabled"),
            "mimic (fake TCP) is not supported",
        ));
    }
    mimic.skip(&["interface", "xdpMode", "path", "extraArgs"]);
    mimic.finish(w);
    if top.has("realm") {
        w.push(Warning::new(
            top.key("realm"),
            "realm mode is not supported (section ignored)",
        ));
    }
    top.skip(&["realm"]);
    Ok(())
}

/// A duration key with a default (for absent or zero) and an allowed range.
pub(super) fn ranged(
    s: &mut Section,
    name: &str,
    default: Duration,
    (min, max): (Duration, Duration),
    range_text: &str,
) -> Result<Duration, Fault> {
    match s.duration(name)? {
        None => Ok(default),
        Some((d, _)) if (min..=max).contains(&d) => Ok(d),
        Some((_, text)) => Err(fault(
            s.key(name),
            format!("{text} is out of range ({range_text})"),
        )),
    }
}

fn engine(top: &mut Section, w: &mut W) -> Result<Engine, Fault> {
    let mut s = top.section("engine")?;
    let workers = match s.u64("workers")? {
        None | Some(0) => None,
        Some(n) if n <= MAX_WORKERS as u64 => Some(n as usize),
        Some(n) => {
            return Err(fault(
                s.key("workers"),
                format!("{n} is above the maximum of {MAX_WORKERS}"),
            ))
        }
    };
    let io = match lower(s.string("io", w)?).as_str() {
        "" | "auto" => None,
        "uring" | "io_uring" | "io-uring" => Some(IoKind::Uring),
        "epoll" => Some(IoKind::Epoll),
        other => {
            return Err(fault(
                s.key("io"),
                format!("unsupported I/O driver {other:?} (use uring, epoll or auto)"),
            ))
        }
    };
    s.finish(w);
    Ok(Engine { workers, io })
}

/// Selector values (`type`, `mode`, ...) match case-insensitively, as in the official server.
pub(super) fn lower(s: Option<String>) -> String {
    s.map(|s| s.trim().to_lowercase()).unwrap_or_default()
}
