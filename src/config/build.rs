//! Turning the YAML tree into a [`ServerConfig`], one official section at a time, with the
//! official server's defaults and checks (`app/cmd/server.go`, `core/server/config.go`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_norway::Value;

use super::error::{fault, Fault, Warning};
use super::reader::Section;
use super::server::*;
use super::units::{self, PortSet};
use crate::engine::IoKind;

type W = Vec<Warning>;

/// Build a server config from the parsed top-level value.
pub(crate) fn server(root: &Value, w: &mut W) -> Result<ServerConfig, Fault> {
    let mut top = Section::new(String::new(), root)?;
    let listen = listen(&mut top, w)?;
    let tls = tls(&mut top, w)?;
    unsupported_extras(&mut top, w)?;
    let obfs = obfs(&mut top, w)?;
    let quic = quic(&mut top, w)?;
    let congestion = congestion(&mut top, w)?;
    let bandwidth = bandwidth(&mut top, w)?;
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
    let auth = auth(&mut top, w)?;
    resolver(&mut top, w)?;
    let sniff = sniff(&mut top, w)?;
    let acl = acl(&mut top, w)?;
    let outbound = outbounds(&mut top, acl.is_some(), w)?;
    let traffic_stats = traffic_stats(&mut top, w)?;
    let masquerade = masquerade(&mut top, w)?;
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
    top.finish(w);
    Ok(ServerConfig {
        listen,
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
        acl,
        outbound,
        traffic_stats,
        masquerade,
        outbound_guard,
        limits,
        engine,
        metrics,
    })
}

fn listen(top: &mut Section, w: &mut W) -> Result<SocketAddr, Fault> {
    let key = top.key("listen");
    let text = top.string("listen", w)?.unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return Ok(SocketAddr::from((
            std::net::Ipv6Addr::UNSPECIFIED,
            DEFAULT_LISTEN_PORT,
        )));
    }
    if text.to_ascii_lowercase().starts_with("realm://") {
        return Err(fault(key, "realm mode (realm://) is not supported"));
    }
    if text
        .rsplit(':')
        .next()
        .is_some_and(|port| port.contains(['-', ',']))
    {
        return Err(fault(
            key,
            format!("port hopping ranges are not supported ({text:?}); listen on a single port"),
        ));
    }
    units::parse_socket_addr(text).map_err(|e| fault(key, e))
}

/// An optional `host:port` key.
fn address(s: &mut Section, name: &str, w: &mut W) -> Result<Option<SocketAddr>, Fault> {
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

fn obfs(top: &mut Section, w: &mut W) -> Result<Obfs, Fault> {
    let mut s = top.section("obfs")?;
    let type_key = s.key("type");
    let kind = lower(s.string("type", w)?);
    let mut sal = s.section("salamander")?;
    let password_key = sal.key("password");
    let password = sal.string("password", w)?;
    sal.finish(w);
    s.skip_section("gecko", &["password", "minPacketSize", "maxPacketSize"], w)?;
    s.finish(w);
    match kind.as_str() {
        "" | "plain" => {
            if kind.is_empty() && password.is_some_and(|p| !p.is_empty()) {
                w.push(Warning::new(
                    password_key,
                    "set, but obfs.type is not salamander: obfuscation is off",
                ));
            }
            Ok(Obfs::Plain)
        }
        "salamander" => {
            let password = password.unwrap_or_default();
            if password.len() < MIN_SALAMANDER_PASSWORD {
                return Err(fault(
                    password_key,
                    format!(
                        "must be at least {MIN_SALAMANDER_PASSWORD} bytes (got {})",
                        password.len()
                    ),
                ));
            }
            Ok(Obfs::Salamander { password })
        }
        "gecko" => Err(fault(
            type_key,
            "gecko obfuscation is not supported; use salamander",
        )),
        other => Err(fault(
            type_key,
            format!("unsupported obfuscation type {other:?} (use salamander or plain)"),
        )),
    }
}

fn quic(top: &mut Section, w: &mut W) -> Result<Quic, Fault> {
    let mut s = top.section("quic")?;
    let mut window = |name: &str, default: u64| -> Result<u64, Fault> {
        match s.u64(name)? {
            None | Some(0) => Ok(default),
            Some(v) if v < MIN_RECEIVE_WINDOW => Err(fault(
                s.key(name),
                format!("{v} is below the minimum of {MIN_RECEIVE_WINDOW} bytes"),
            )),
            Some(v) if v > MAX_QUIC_VARINT => Err(fault(
                s.key(name),
                format!("{v} is above the QUIC maximum of {MAX_QUIC_VARINT}"),
            )),
            Some(v) => Ok(v),
        }
    };
    let init_stream_receive_window =
        window("initStreamReceiveWindow", DEFAULT_STREAM_RECEIVE_WINDOW)?;
    let max_stream_receive_window =
        window("maxStreamReceiveWindow", DEFAULT_STREAM_RECEIVE_WINDOW)?;
    let init_conn_receive_window = window("initConnReceiveWindow", DEFAULT_CONN_RECEIVE_WINDOW)?;
    let max_conn_receive_window = window("maxConnReceiveWindow", DEFAULT_CONN_RECEIVE_WINDOW)?;
    let max_idle_timeout = ranged(
        &mut s,
        "maxIdleTimeout",
        DEFAULT_MAX_IDLE_TIMEOUT,
        MAX_IDLE_TIMEOUT_RANGE,
        "4s to 120s",
    )?;
    let max_incoming_streams = match s.u64("maxIncomingStreams")? {
        None | Some(0) => DEFAULT_MAX_INCOMING_STREAMS,
        Some(v) if v < MIN_INCOMING_STREAMS => {
            return Err(fault(
                s.key("maxIncomingStreams"),
                format!("{v} is below the minimum of {MIN_INCOMING_STREAMS}"),
            ))
        }
        Some(v) if v > MAX_INCOMING_STREAMS => {
            return Err(fault(
                s.key("maxIncomingStreams"),
                format!("{v} is above the QUIC maximum of 2^60"),
            ))
        }
        Some(v) => v,
    };
    let disable_path_mtu_discovery = s.bool("disablePathMTUDiscovery")?;
    s.finish(w);
    Ok(Quic {
        init_stream_receive_window,
        max_stream_receive_window,
        init_conn_receive_window,
        max_conn_receive_window,
        max_idle_timeout,
        max_incoming_streams,
        disable_path_mtu_discovery,
    })
}

/// A duration key with a default (for absent or zero) and an allowed range.
fn ranged(
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

fn congestion(top: &mut Section, w: &mut W) -> Result<Congestion, Fault> {
    let mut s = top.section("congestion")?;
    let kind = match lower(s.string("type", w)?).as_str() {
        "" | "bbr" => CongestionKind::Bbr,
        "reno" => CongestionKind::Reno,
        other => {
            return Err(fault(
                s.key("type"),
                format!("unsupported congestion type {other:?} (use bbr or reno)"),
            ))
        }
    };
    let bbr_profile = match lower(s.string("bbrProfile", w)?).as_str() {
        "" | "standard" => BbrProfile::Standard,
        "conservative" => BbrProfile::Conservative,
        "aggressive" => BbrProfile::Aggressive,
        other => {
            return Err(fault(
                s.key("bbrProfile"),
                format!(
                    "unsupported BBR profile {other:?} (use standard, conservative or aggressive)"
                ),
            ))
        }
    };
    s.finish(w);
    Ok(Congestion { kind, bbr_profile })
}

fn bandwidth(top: &mut Section, w: &mut W) -> Result<Bandwidth, Fault> {
    let mut s = top.section("bandwidth")?;
    let mut rate = |name: &str, w: &mut W| -> Result<Option<u64>, Fault> {
        let key = s.key(name);
        let Some(text) = s.string(name, w)?.filter(|t| !t.trim().is_empty()) else {
            return Ok(None);
        };
        match units::parse_bandwidth(&text).map_err(|e| fault(key.clone(), e))? {
            0 => Ok(None),
            bytes if bytes < MIN_BANDWIDTH => Err(fault(
                key,
                format!(
                    "{} is {bytes} bytes/s, below the minimum of {MIN_BANDWIDTH} bytes/s (524288 bps)",
                    text.trim()
                ),
            )),
            bytes => Ok(Some(bytes)),
        }
    };
    let up = rate("up", w)?;
    let down = rate("down", w)?;
    let disable_loss_compensation = s.bool("disableLossCompensation")?;
    s.finish(w);
    Ok(Bandwidth {
        up,
        down,
        disable_loss_compensation,
    })
}

fn auth(top: &mut Section, w: &mut W) -> Result<Auth, Fault> {
    let mut s = top.section("auth")?;
    let type_key = s.key("type");
    let kind = lower(s.string("type", w)?);
    let password_key = s.key("password");
    let password = s.string("password", w)?.unwrap_or_default();
    let userpass_key = s.key("userpass");
    let userpass = s.string_map("userpass", w)?;
    let mut http = s.section("http")?;
    let url_key = http.key("url");
    let url = http.string("url", w)?.unwrap_or_default();
    let insecure = http.bool("insecure")?;
    http.finish(w);
    s.skip(&["command"]);
    s.finish(w);
    match kind.as_str() {
        "" => Err(fault(type_key, "required: password, userpass or http")),
        "password" if password.is_empty() => Err(fault(
            password_key,
            "required for auth.type password (must not be empty)",
        )),
        "password" => Ok(Auth::Password(password)),
        "userpass" => {
            if userpass.is_empty() {
                return Err(fault(
                    userpass_key,
                    "required for auth.type userpass: a mapping of user names to passwords",
                ));
            }
            let mut users = BTreeMap::new();
            for (name, pass) in userpass {
                let key = format!("{userpass_key}.{name}");
                if name.contains(':') {
                    w.push(Warning::new(
                        key.clone(),
                        "user name contains ':', so this user can never log in (clients send user:pass)",
                    ));
                }
                if users.insert(Auth::user_key(&name), pass).is_some() {
                    return Err(fault(
                        key,
                        "user given twice (user names are case-insensitive)",
                    ));
                }
            }
            Ok(Auth::UserPass(users))
        }
        "http" | "https" => {
            if url.is_empty() {
                return Err(fault(url_key, "required for auth.type http"));
            }
            http_url(&url_key, &url)?;
            Ok(Auth::Http { url, insecure })
        }
        "command" | "cmd" => Err(fault(
            type_key,
            "command authentication is not supported by quelay (it runs a process per login); use password, userpass or http",
        )),
        other => Err(fault(
            type_key,
            format!("unsupported auth type {other:?} (use password, userpass or http)"),
        )),
    }
}

fn resolver(top: &mut Section, w: &mut W) -> Result<(), Fault> {
    let mut s = top.section("resolver")?;
    let type_key = s.key("type");
    let kind = lower(s.string("type", w)?);
    s.skip_section("tcp", &["addr", "timeout"], w)?;
    s.skip_section("udp", &["addr", "timeout"], w)?;
    s.skip_section("tls", &["addr", "timeout", "sni", "insecure"], w)?;
    s.skip_section("https", &["addr", "timeout", "sni", "insecure"], w)?;
    s.skip_section("quic", &["addr", "timeout", "sni", "insecure"], w)?;
    s.finish(w);
    match kind.as_str() {
        "" | "system" => Ok(()),
        "tcp" | "udp" | "tls" | "tcp-tls" | "https" | "http" | "quic" => {
            w.push(Warning::new(
                type_key,
                format!("{kind:?} resolvers are not supported; the system resolver is used"),
            ));
            Ok(())
        }
        other => Err(fault(
            type_key,
            format!("unsupported resolver type {other:?} (quelay uses the system resolver)"),
        )),
    }
}

fn sniff(top: &mut Section, w: &mut W) -> Result<Option<Sniff>, Fault> {
    let mut s = top.section("sniff")?;
    if !s.bool("enable")? {
        s.skip(&["timeout", "rewriteDomain", "tcpPorts", "udpPorts"]);
        s.finish(w);
        return Ok(None);
    }
    let timeout = s.duration("timeout")?.map(|(d, _)| d);
    let rewrite_domain = s.bool("rewriteDomain")?;
    let mut ports = |name: &str, w: &mut W| -> Result<Option<PortSet>, Fault> {
        let key = s.key(name);
        s.nonempty_string(name, w)?
            .map(|text| PortSet::parse(&text).map_err(|e| fault(key, e)))
            .transpose()
    };
    let tcp_ports = ports("tcpPorts", w)?;
    let udp_ports = ports("udpPorts", w)?;
    s.finish(w);
    Ok(Some(Sniff {
        timeout,
        rewrite_domain,
        tcp_ports,
        udp_ports,
    }))
}

fn acl(top: &mut Section, w: &mut W) -> Result<Option<Acl>, Fault> {
    let mut s = top.section("acl")?;
    let file = s.nonempty_string("file", w)?;
    let inline = s.string_list("inline", w)?;
    let geoip = s.nonempty_string("geoip", w)?.map(PathBuf::from);
    let geosite = s.nonempty_string("geosite", w)?.map(PathBuf::from);
    let geo_update_interval = s
        .duration("geoUpdateInterval")?
        .map_or(DEFAULT_GEO_UPDATE_INTERVAL, |(d, _)| d);
    let path = s.path().to_owned();
    s.finish(w);
    let rules = match (file, inline.is_empty()) {
        (Some(_), false) => return Err(fault(path, "cannot set both acl.file and acl.inline")),
        (Some(file), true) => AclRules::File(file.into()),
        (None, false) => AclRules::Inline(inline),
        (None, true) => return Ok(None),
    };
    Ok(Some(Acl {
        rules,
        geoip,
        geosite,
        geo_update_interval,
    }))
}

fn outbounds(top: &mut Section, has_acl: bool, w: &mut W) -> Result<DirectOutbound, Fault> {
    let mut chosen = DirectOutbound::default();
    for (i, mut e) in top.list_of_sections("outbounds")?.into_iter().enumerate() {
        let name = e
            .nonempty_string("name", w)?
            .ok_or_else(|| fault(e.key("name"), "required: a name for ACL rules to refer to"))?;
        let kind = lower(e.string("type", w)?);
        e.skip_section("socks5", &["addr", "username", "password"], w)?;
        e.skip_section("http", &["url", "insecure"], w)?;
        let this = e.path().to_owned();
        if i == 0 {
            if kind != "direct" {
                return Err(fault(
                    e.key("type"),
                    format!(
                        "{kind:?} outbounds are not supported; quelay has only the direct outbound"
                    ),
                ));
            }
            chosen = direct(&mut e, name, w)?;
        } else if has_acl {
            return Err(fault(
                this,
                format!("only one outbound (type direct) is supported, so ACL rules cannot route to {name:?}"),
            ));
        } else {
            w.push(Warning::new(
                this,
                "ignored: without acl only the first outbound is used (as in the official server)",
            ));
            e.skip(&["direct"]);
        }
        e.finish(w);
    }
    Ok(chosen)
}

fn direct(e: &mut Section, name: String, w: &mut W) -> Result<DirectOutbound, Fault> {
    let mut d = e.section("direct")?;
    let mode = match lower(d.string("mode", w)?).as_str() {
        "" | "auto" => DirectMode::Auto,
        "64" => DirectMode::Prefer6,
        "46" => DirectMode::Prefer4,
        "6" => DirectMode::Only6,
        "4" => DirectMode::Only4,
        other => {
            return Err(fault(
                d.key("mode"),
                format!("unsupported mode {other:?} (use auto, 64, 46, 6 or 4)"),
            ))
        }
    };
    let v4 = match d.nonempty_string("bindIPv4", w)? {
        Some(t) => Some(
            t.trim()
                .parse()
                .map_err(|_| fault(d.key("bindIPv4"), format!("{t:?} is not an IPv4 address")))?,
        ),
        None => None,
    };
    let v6 = match d.nonempty_string("bindIPv6", w)? {
        Some(t) => Some(
            t.trim()
                .parse()
                .map_err(|_| fault(d.key("bindIPv6"), format!("{t:?} is not an IPv6 address")))?,
        ),
        None => None,
    };
    let device = d.nonempty_string("bindDevice", w)?;
    let fast_open = d.bool("fastOpen")?;
    let bind = match (v4.is_some() || v6.is_some(), device) {
        (true, Some(_)) => {
            return Err(fault(
                d.path(),
                "cannot bind both an IP address and a device",
            ));
        }
        (true, None) => OutboundBind::Addresses { v4, v6 },
        (false, Some(dev)) => OutboundBind::Device(dev),
        (false, None) => OutboundBind::Any,
    };
    d.finish(w);
    Ok(DirectOutbound {
        name,
        mode,
        bind,
        fast_open,
    })
}

fn traffic_stats(top: &mut Section, w: &mut W) -> Result<Option<TrafficStats>, Fault> {
    let mut s = top.section("trafficStats")?;
    let listen = address(&mut s, "listen", w)?;
    let secret = s.string("secret", w)?.unwrap_or_default();
    if let Some(listen) = listen.filter(|_| secret.is_empty()) {
        w.push(Warning::new(
            s.key("secret"),
            format!("empty: anyone who can reach {listen} can read traffic counts and kick users"),
        ));
    }
    s.finish(w);
    Ok(listen.map(|listen| TrafficStats { listen, secret }))
}

fn masquerade(top: &mut Section, w: &mut W) -> Result<Masquerade, Fault> {
    let mut s = top.section("masquerade")?;
    let type_key = s.key("type");
    let kind = lower(s.string("type", w)?);

    let mut file = s.section("file")?;
    let dir_key = file.key("dir");
    let dir = file.nonempty_string("dir", w)?;
    file.finish(w);

    let mut proxy = s.section("proxy")?;
    let url_key = proxy.key("url");
    let url = proxy.nonempty_string("url", w)?;
    let rewrite_host = proxy.bool("rewriteHost")?;
    let x_forwarded = proxy.bool("xForwarded")?;
    let insecure = proxy.bool("insecure")?;
    proxy.finish(w);

    let mut string = s.section("string")?;
    let content_key = string.key("content");
    let content = string.string("content", w)?.unwrap_or_default();
    let headers_key = string.key("headers");
    let header_list = string.string_map("headers", w)?;
    let status_key = string.key("statusCode");
    let status = string.u64("statusCode")?;
    string.finish(w);

    let handler = match kind.as_str() {
        "" | "404" => MasqueradeHandler::NotFound,
        "file" => MasqueradeHandler::File {
            dir: dir
                .ok_or_else(|| fault(dir_key, "required for masquerade.type file"))?
                .into(),
        },
        "proxy" => {
            let url =
                url.ok_or_else(|| fault(url_key.clone(), "required for masquerade.type proxy"))?;
            http_url(&url_key, &url)?;
            MasqueradeHandler::Proxy {
                url,
                rewrite_host,
                x_forwarded,
                insecure,
            }
        }
        "string" => {
            if content.is_empty() {
                return Err(fault(
                    content_key,
                    "required for masquerade.type string (must not be empty)",
                ));
            }
            let status_code = match status {
                None | Some(0) => DEFAULT_MASQUERADE_STATUS,
                Some(code @ 200..=599) if code != 233 => code as u16,
                Some(code) => {
                    return Err(fault(
                        status_key,
                        format!("{code} is not allowed (200 to 599, except 233)"),
                    ))
                }
            };
            let mut headers = BTreeMap::new();
            for (name, value) in header_list {
                let key = format!("{headers_key}.{name}");
                if name.is_empty() || !name.bytes().all(is_token_byte) {
                    return Err(fault(key, "not a valid HTTP header name"));
                }
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(fault(key, "header values cannot hold line breaks"));
                }
                headers.insert(name.to_ascii_lowercase(), value);
            }
            MasqueradeHandler::String {
                content,
                headers,
                status_code,
            }
        }
        other => {
            return Err(fault(
                type_key,
                format!("unsupported masquerade type {other:?} (use 404, file, proxy or string)"),
            ))
        }
    };
    let listen_http = address(&mut s, "listenHTTP", w)?;
    let listen_https = address(&mut s, "listenHTTPS", w)?;
    if listen_http.is_some() && listen_https.is_none() {
        return Err(fault(
            s.key("listenHTTPS"),
            "required when masquerade.listenHTTP is set (HTTP-only masquerade is not supported)",
        ));
    }
    let force_https = s.bool("forceHTTPS")?;
    s.finish(w);
    Ok(Masquerade {
        handler,
        listen_http,
        listen_https,
        force_https,
    })
}

fn engine(top: &mut Section, w: &mut W) -> Result<Engine, Fault> {
    let mut s = top.section("engine")?;
    let workers = match s.u64("workers")? {
        None | Some(0) => None,
        Some(n) if n <= crate::worker::MAX_WORKERS as u64 => Some(n as usize),
        Some(n) => {
            return Err(fault(
                s.key("workers"),
                format!("{n} is above the maximum of {}", crate::worker::MAX_WORKERS),
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

/// Check that `url` is an absolute http(s) URL with a host.
fn http_url(key: &str, url: &str) -> Result<(), Fault> {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    else {
        return Err(fault(
            key,
            format!("{url:?} is not an http:// or https:// URL"),
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(fault(key, format!("{url:?} has no host")));
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(fault(
            key,
            format!("{url:?} contains spaces or control characters"),
        ));
    }
    Ok(())
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Selector values (`type`, `mode`, ...) match case-insensitively, as in the official server.
fn lower(s: Option<String>) -> String {
    s.map(|s| s.trim().to_lowercase()).unwrap_or_default()
}
