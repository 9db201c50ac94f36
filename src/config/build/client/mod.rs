//! Turning the YAML tree into a [`ClientConfig`], with the official client's defaults and
//! checks (`app/cmd/client.go`, `core/client/config.go`). `obfs`, `congestion` and `engine`
//! read exactly as on the server, so they share its readers; `addr` reads `server`.

mod addr;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_norway::Value;

pub(super) use self::addr::host_port as dial_host_port;
use self::addr::{check_sni, host_port, UriServer, URI_ORIGIN};
use super::{address, lower, mimic_and_realm, ranged, End, W};
use crate::config::client::*;
use crate::config::error::{fault, ConfigError, Fault, Warning};
use crate::config::reader::Section;
use crate::config::server::*;
use crate::config::units;
use crate::proto::split_host_port;

/// The error for a config that would start no proxy at all.
pub(crate) const NO_MODE: &str =
    "no client mode configured (socks5, http, tcpForwarding or udpForwarding)";

/// Build a client config from the parsed top-level value.
pub(crate) fn client(root: &Value, w: &mut W) -> Result<ClientConfig, Fault> {
    let mut top = Section::new(String::new(), root)?;
    let addr::Server {
        addr: server,
        hop: hop_ports,
        uri,
    } = addr::server(&mut top, w)?;
    let file_auth = top.string("auth", w)?;
    let (min_interval, max_interval) = transport(&mut top, w)?;
    let hop = hop_ports.map(|ports| PortHopping {
        ports,
        min_interval,
        max_interval,
    });
    let uri_obfs = uri.as_ref().and_then(UriServer::obfs);
    let obfs = match uri_obfs {
        // The URI's obfs replaces the whole section, so the section is not checked.
        Some(obfs) => {
            UriServer::overrides_obfs(&top, w);
            top.skip_section("obfs", &["type", "salamander", "gecko"], w)?;
            obfs
        }
        None => super::obfs(&mut top, w)?,
    };
    let mut tls = tls(&mut top, w)?;
    let auth = match uri {
        Some(uri) => uri.apply(&top, file_auth, &mut tls, w),
        None => file_auth,
    }
    .unwrap_or_default();
    if auth.is_empty() {
        w.push(Warning::new(
            top.key("auth"),
            "empty: most servers refuse a connection without a password",
        ));
    }
    let quic = super::quic(&mut top, End::Client, w)?.client();
    let congestion = super::congestion(&mut top, w)?;
    let bandwidth = super::bandwidth(&mut top, End::Client, w)?;
    let fast_open = top.bool("fastOpen")?;
    let lazy = top.bool("lazy")?;
    let socks5 = socks5(&mut top, w)?;
    let http = http(&mut top, w)?;
    let tcp_forwarding = tcp_forwarding(&mut top, w)?;
    let udp_forwarding = udp_forwarding(&mut top, w)?;
    for name in ["tun", "tcpTProxy", "udpTProxy", "tcpRedirect"] {
        refuse(&mut top, name, &format!("{name} mode is not supported"))?;
    }
    mimic_and_realm(&mut top, w)?;
    let pool = pool(&mut top, w)?;
    let engine = super::engine(&mut top, w)?;
    top.finish(w);
    if socks5.is_none() && http.is_none() && tcp_forwarding.is_empty() && udp_forwarding.is_empty()
    {
        return Err(fault("", NO_MODE));
    }
    Ok(ClientConfig {
        server,
        hop,
        auth,
        obfs,
        tls,
        quic,
        congestion,
        bandwidth,
        fast_open,
        lazy,
        socks5,
        http,
        tcp_forwarding,
        udp_forwarding,
        pool,
        engine,
    })
}

/// A config from a share URI alone, with a SOCKS5 listener and every other default.
pub(crate) fn from_uri(
    uri: &str,
    socks5_listen: Option<SocketAddr>,
) -> Result<ClientConfig, ConfigError> {
    let (server, hop_ports, share) = addr::share_uri(uri)?;
    let Some(listen) = socks5_listen else {
        return Err(ConfigError::file(URI_ORIGIN, NO_MODE));
    };
    Ok(ClientConfig {
        server,
        hop: hop_ports.map(|ports| PortHopping {
            ports,
            min_interval: DEFAULT_HOP_INTERVAL,
            max_interval: DEFAULT_HOP_INTERVAL,
        }),
        auth: share.auth.unwrap_or_default(),
        obfs: share.obfs,
        tls: ClientTls {
            sni: share.sni,
            insecure: share.insecure,
            pin_sha256: share.pin_sha256,
            ca: None,
        },
        quic: ClientQuic::default(),
        congestion: Congestion::default(),
        bandwidth: ClientBandwidth::default(),
        fast_open: false,
        lazy: false,
        socks5: Some(Socks5 {
            listen,
            auth: None,
            disable_udp: false,
        }),
        http: None,
        tcp_forwarding: Vec::new(),
        udp_forwarding: Vec::new(),
        pool: Pool::default(),
        engine: Engine::default(),
    })
}

/// Official keys for features quelay does not have: an error when given a value, so that a
/// config never silently means something else. An empty string, `false`, `0` or `0s` is unset.
pub(super) fn refuse(s: &mut Section, name: &str, reason: &str) -> Result<(), Fault> {
    let key = s.key(name);
    let set = match s.take(name) {
        None | Some(Value::Bool(false)) => false,
        // "0s" for a duration, "0" for a number given as text.
        Some(Value::String(t)) => {
            !(t.trim().is_empty() || units::parse_duration(t) == Ok(Duration::ZERO))
        }
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    };
    if set {
        return Err(fault(key, reason));
    }
    Ok(())
}

/// `transport`: the hop interval as (min, max), the reference's default when unset.
fn transport(top: &mut Section, w: &mut W) -> Result<(Duration, Duration), Fault> {
    let mut s = top.section("transport")?;
    let kind = lower(s.string("type", w)?);
    if !matches!(kind.as_str(), "" | "udp") {
        return Err(fault(
            s.key("type"),
            format!("unsupported transport type {kind:?} (only udp)"),
        ));
    }
    let mut udp = s.section("udp")?;
    let key = udp.key("");
    let key = key.trim_end_matches('.').to_owned();
    let fixed = udp.duration("hopInterval")?;
    let min = udp.duration("minHopInterval")?;
    let max = udp.duration("maxHopInterval")?;
    let (min, max) = match (fixed, min, max) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(fault(
                key,
                "hopInterval cannot be used together with minHopInterval or maxHopInterval",
            ))
        }
        (Some((d, _)), None, None) => (d, d),
        (None, Some((min, _)), Some((max, _))) => (min, max),
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(fault(
                key,
                "minHopInterval and maxHopInterval must both be set",
            ))
        }
        (None, None, None) => (DEFAULT_HOP_INTERVAL, DEFAULT_HOP_INTERVAL),
    };
    if min > max {
        return Err(fault(
            key,
            "min hop interval must not be greater than max hop interval",
        ));
    }
    if min < min_hop_interval() {
        return Err(fault(key, "hop interval must be at least 5 seconds"));
    }
    udp.finish(w);
    s.finish(w);
    Ok((min, max))
}

/// The shortest hop interval: the reference's 5 s, or a test's floor
/// ([`TEST_MIN_HOP_INTERVAL_ENV`]).
fn min_hop_interval() -> Duration {
    std::env::var(TEST_MIN_HOP_INTERVAL_ENV)
        .ok()
        .and_then(|v| units::parse_duration(&v).ok())
        .map_or(MIN_HOP_INTERVAL, |floor| floor.min(MIN_HOP_INTERVAL))
}

fn tls(top: &mut Section, w: &mut W) -> Result<ClientTls, Fault> {
    let mut s = top.section("tls")?;
    let sni = match s.nonempty_string("sni", w)? {
        Some(sni) => {
            check_sni(&sni).map_err(|e| fault(s.key("sni"), e))?;
            Some(sni)
        }
        None => None,
    };
    let insecure = s.bool("insecure")?;
    let pin_key = s.key("pinSHA256");
    let pin_sha256 = match s.nonempty_string("pinSHA256", w)? {
        Some(pin) => Some(units::parse_pin(pin.trim()).map_err(|e| fault(pin_key, e))?),
        None => None,
    };
    let ca = s.nonempty_string("ca", w)?.map(PathBuf::from);
    refuse(
        &mut s,
        "clientCertificate",
        "client certificates are not supported",
    )?;
    refuse(&mut s, "clientKey", "client certificates are not supported")?;
    refuse(&mut s, "ech", "ECH is not supported")?;
    s.finish(w);
    Ok(ClientTls {
        sni,
        insecure,
        pin_sha256,
        ca,
    })
}

/// A required local `listen` address.
fn listen(s: &mut Section, w: &mut W) -> Result<SocketAddr, Fault> {
    address(s, "listen", w)?
        .ok_or_else(|| fault(s.key("listen"), "required: the local address to listen on"))
}

/// `username` and `password`: both or neither. The official client turns authentication
/// off when one is missing, which would leave a proxy open that was meant to be closed.
fn proxy_auth(s: &mut Section, w: &mut W) -> Result<Option<ProxyAuth>, Fault> {
    let username = s.string("username", w)?.unwrap_or_default();
    let password = s.string("password", w)?.unwrap_or_default();
    match (username.is_empty(), password.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some(ProxyAuth { username, password })),
        (false, true) => Err(fault(
            s.key("password"),
            "required when username is set (or remove both to turn authentication off)",
        )),
        (true, false) => Err(fault(
            s.key("username"),
            "required when password is set (or remove both to turn authentication off)",
        )),
    }
}

fn socks5(top: &mut Section, w: &mut W) -> Result<Option<Socks5>, Fault> {
    if !top.has("socks5") {
        top.skip(&["socks5"]);
        return Ok(None);
    }
    let mut s = top.section("socks5")?;
    let listen = listen(&mut s, w)?;
    let auth = proxy_auth(&mut s, w)?;
    let disable_udp = s.bool("disableUDP")?;
    s.finish(w);
    Ok(Some(Socks5 {
        listen,
        auth,
        disable_udp,
    }))
}

fn http(top: &mut Section, w: &mut W) -> Result<Option<HttpProxy>, Fault> {
    if !top.has("http") {
        top.skip(&["http"]);
        return Ok(None);
    }
    let mut s = top.section("http")?;
    let listen = listen(&mut s, w)?;
    let auth = proxy_auth(&mut s, w)?;
    let realm = match s.nonempty_string("realm", w)? {
        None => DEFAULT_HTTP_REALM.to_owned(),
        // It goes inside a quoted header value: `Proxy-Authenticate: Basic realm="..."`.
        Some(r) if r.chars().any(|c| c == '"' || c == '\\' || c.is_control()) => {
            return Err(fault(
                s.key("realm"),
                "cannot hold quotes, backslashes or control characters",
            ))
        }
        Some(r) => r,
    };
    s.finish(w);
    Ok(Some(HttpProxy {
        listen,
        auth,
        realm,
    }))
}

/// A forwarding entry's `remote`: what the server dials, so checked as the server will.
fn remote(s: &mut Section, w: &mut W) -> Result<HostPort, Fault> {
    let key = s.key("remote");
    let text = s.nonempty_string("remote", w)?.ok_or_else(|| {
        fault(
            key.clone(),
            "required: the host:port the server connects to",
        )
    })?;
    let text = text.trim();
    host_port(text, split_host_port(text)).map_err(|e| fault(key, e))
}

fn tcp_forwarding(top: &mut Section, w: &mut W) -> Result<Vec<TcpForwarding>, Fault> {
    let mut out = Vec::new();
    for mut e in top.list_of_sections("tcpForwarding")? {
        let listen = listen(&mut e, w)?;
        let remote = remote(&mut e, w)?;
        e.finish(w);
        out.push(TcpForwarding { listen, remote });
    }
    Ok(out)
}

fn udp_forwarding(top: &mut Section, w: &mut W) -> Result<Vec<UdpForwarding>, Fault> {
    let mut out = Vec::new();
    for mut e in top.list_of_sections("udpForwarding")? {
        let listen = listen(&mut e, w)?;
        let remote = remote(&mut e, w)?;
        let timeout = e
            .duration("timeout")?
            .map_or(DEFAULT_UDP_FORWARDING_TIMEOUT, |(d, _)| d);
        e.finish(w);
        out.push(UdpForwarding {
            listen,
            remote,
            timeout,
        });
    }
    Ok(out)
}

fn pool(top: &mut Section, w: &mut W) -> Result<Pool, Fault> {
    let mut s = top.section("pool")?;
    let max_connections = match s.u64("maxConnections")? {
        None | Some(0) => DEFAULT_POOL_MAX_CONNECTIONS,
        Some(n) if n <= MAX_POOL_CONNECTIONS as u64 => n as usize,
        Some(n) => {
            return Err(fault(
                s.key("maxConnections"),
                format!("{n} is above the maximum of {MAX_POOL_CONNECTIONS}"),
            ))
        }
    };
    let stream_open_timeout = ranged(
        &mut s,
        "streamOpenTimeout",
        DEFAULT_STREAM_OPEN_TIMEOUT,
        STREAM_OPEN_TIMEOUT_RANGE,
        "1s to 120s",
    )?;
    let open_wait_threshold = match s.duration("openWaitThreshold")? {
        None => DEFAULT_OPEN_WAIT_THRESHOLD,
        Some((d, _)) if d < stream_open_timeout => d,
        Some((_, text)) => {
            return Err(fault(
                s.key("openWaitThreshold"),
                format!(
                    "{text} is not shorter than pool.streamOpenTimeout ({stream_open_timeout:?}): \
                     requests would be refused before another connection is tried"
                ),
            ))
        }
    };
    s.finish(w);
    Ok(Pool {
        max_connections,
        open_wait_threshold,
        stream_open_timeout,
    })
}
