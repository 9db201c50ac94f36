//! Where relayed traffic goes: `resolver`, `sniff`, `acl`, `outbounds`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::{lower, W};
use crate::config::error::{fault, Fault, Warning};
use crate::config::reader::Section;
use crate::config::server::*;
use crate::config::units::PortSet;

pub(super) fn resolver(top: &mut Section, w: &mut W) -> Result<Resolver, Fault> {
    let mut s = top.section("resolver")?;
    let type_key = s.key("type");
    let kind = lower(s.string("type", w)?);
    // Every section is read (and checked) whichever type is chosen, as the official server
    // decodes them all; only the chosen one must have an address.
    let udp = upstream(&mut s, "udp", false, w)?;
    let tcp = upstream(&mut s, "tcp", false, w)?;
    let tls = upstream(&mut s, "tls", true, w)?;
    let https = upstream(&mut s, "https", true, w)?;
    s.skip_section("quic", &["addr", "timeout", "sni", "insecure"], w)?;
    s.finish(w);
    let (name, raw, port) = match kind.as_str() {
        "" | "system" => return Ok(Resolver::System),
        "udp" => ("udp", udp, 53),
        "tcp" => ("tcp", tcp, 53),
        "tls" | "tcp-tls" => ("tls", tls, 853),
        "https" | "http" => ("https", https, 0),
        other => {
            return Err(fault(
                type_key,
                format!("unsupported resolver type {other:?} (system, udp, tcp, tls or https)"),
            ))
        }
    };
    let (addr_key, addr, mut up) = raw;
    if addr.is_empty() {
        return Err(fault(addr_key, "empty resolver address"));
    }
    up.addr = if name == "https" {
        doh_url(&addr).map_err(|e| fault(addr_key, e))?
    } else {
        with_default_port(&addr, port).map_err(|e| fault(addr_key, e))?
    };
    Ok(match name {
        "udp" => Resolver::Udp(up),
        "tcp" => Resolver::Tcp(up),
        "tls" => Resolver::Tls(up),
        _ => Resolver::Https(up),
    })
}

/// `resolver.<name>`: its `addr` (as written, with its dotted key) and the rest.
fn upstream(
    top: &mut Section,
    name: &str,
    tls: bool,
    w: &mut W,
) -> Result<(String, String, DnsUpstream), Fault> {
    let mut s = top.section(name)?;
    let addr_key = s.key("addr");
    let addr = s.string("addr", w)?.unwrap_or_default().trim().to_owned();
    let timeout = s
        .duration("timeout")?
        .map_or(DEFAULT_RESOLVER_TIMEOUT, |(d, _)| d);
    let (sni, insecure) = if tls {
        (s.nonempty_string("sni", w)?, s.bool("insecure")?)
    } else {
        (None, false)
    };
    s.finish(w);
    let up = DnsUpstream {
        addr: String::new(),
        timeout,
        sni,
        insecure,
    };
    Ok((addr_key, addr, up))
}

/// `host:port` with `port` added when `addr` has none; a bare IPv6 literal is bracketed.
pub(crate) fn with_default_port(addr: &str, port: u16) -> Result<String, String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(addr.to_owned());
    }
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => {
            let p = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("bad port {p:?} in {addr:?}"))?;
            (h, p)
        }
        None => (addr, port),
    };
    if host.is_empty() || host.contains(['/', ' ', '[', ']', ':']) {
        return Err(format!("{addr:?} is not a host:port address"));
    }
    Ok(format!("{host}:{port}"))
}

/// The DoH URL for `addr`: as given when it starts with `https://`, else
/// `https://ADDR/dns-query` (as the official server builds it).
pub(crate) fn doh_url(addr: &str) -> Result<String, String> {
    let url = if addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("https://{addr}/dns-query")
    };
    let rest = &url["https://".len()..];
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(' ') {
        return Err(format!("{addr:?}: no host in the URL {url:?}"));
    }
    Ok(url)
}

pub(super) fn sniff(top: &mut Section, w: &mut W) -> Result<Option<Sniff>, Fault> {
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

pub(super) fn acl(top: &mut Section, w: &mut W) -> Result<Option<Acl>, Fault> {
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

pub(super) fn outbounds(
    top: &mut Section,
    has_acl: bool,
    w: &mut W,
) -> Result<DirectOutbound, Fault> {
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
