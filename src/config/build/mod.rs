//! Turning the YAML tree into a [`ServerConfig`], one official section at a time, with the
//! official server's defaults and checks (`app/cmd/server.go`, `core/server/config.go`).
//! `access` holds who may connect and what others see; `egress` where traffic goes; `client`
//! builds a [`ClientConfig`](super::ClientConfig) from the sections both sides share and its own.

mod access;
mod client;
mod egress;
mod transport;

use std::net::SocketAddr;
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
    if top.has("acme") {
        return Err(fault(
            top.key("acme"),
            "acme is not supported; use tls.cert/tls.key",
        ));
    }
    top.skip(&["acme"]);
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
