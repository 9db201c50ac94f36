//! Where relayed traffic goes: `resolver`, `sniff`, `acl`, `outbounds`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::client::dial_host_port as host_port;
use super::{lower, W};
use crate::config::error::{fault, Fault, Warning};
use crate::config::reader::Section;
use crate::config::server::*;
use crate::proto::{split_host_port, PortSet};

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
    // 0 is the default too, as in the reference.
    let geo_update_interval = s
        .duration("geoUpdateInterval")?
        .map(|(d, _)| d)
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_GEO_UPDATE_INTERVAL);
    // quelay's: where geoip.dat / geosite.dat are downloaded from when their path is unset.
    let mut urls = [None, None];
    for (url, (name, path)) in urls
        .iter_mut()
        .zip([("geoipURL", &geoip), ("geositeURL", &geosite)])
    {
        let key = s.key(name);
        *url = s.nonempty_string(name, w)?;
        let Some(u) = url.as_deref() else { continue };
        let lower = u.to_ascii_lowercase();
        let host = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
        if host.is_none_or(str::is_empty) {
            return Err(fault(
                key,
                format!("{u:?} is not an http:// or https:// URL with a host"),
            ));
        }
        if path.is_some() {
            w.push(Warning::new(
                key,
                "unused: the file's path is set, so it is never downloaded",
            ));
        }
    }
    let [geoip_url, geosite_url] = urls;
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
        geoip_url,
        geosite_url,
    }))
}

pub(super) fn outbounds(
    top: &mut Section,
    has_acl: bool,
    w: &mut W,
) -> Result<Vec<Outbound>, Fault> {
    let mut out = Vec::new();
    for (i, mut e) in top.list_of_sections("outbounds")?.into_iter().enumerate() {
        if i > 0 && !has_acl {
            w.push(Warning::new(
                e.path(),
                "unused: without acl only the first outbound is used (as in the official server)",
            ));
        }
        let name = e
            .nonempty_string("name", w)?
            .ok_or_else(|| fault(e.key("name"), "required: a name for ACL rules to refer to"))?;
        let type_key = e.key("type");
        let kind = lower(e.string("type", w)?);
        // Every section is read (and checked) whichever type is chosen, as the official
        // server decodes them all.
        let direct = direct(&mut e, w)?;
        let socks5 = socks5(&mut e, w)?;
        let http = http(&mut e, w)?;
        let kind = match kind.as_str() {
            "direct" => OutboundKind::Direct(direct),
            "socks5" => OutboundKind::Socks5(
                socks5.ok_or_else(|| fault(e.key("socks5.addr"), "empty socks5 address"))?,
            ),
            "http" => OutboundKind::Http(
                http.ok_or_else(|| fault(e.key("http.url"), "empty http address"))?,
            ),
            other => {
                return Err(fault(
                    type_key,
                    format!("unsupported outbound type {other:?} (use direct, socks5 or http)"),
                ))
            }
        };
        e.finish(w);
        out.push(Outbound { name, kind });
    }
    Ok(out)
}

/// `socks5`, when it has an `addr`.
fn socks5(e: &mut Section, w: &mut W) -> Result<Option<Socks5Outbound>, Fault> {
    let mut s = e.section("socks5")?;
    let addr_key = s.key("addr");
    let addr = s.nonempty_string("addr", w)?;
    let username = s.string("username", w)?.unwrap_or_default();
    let password = s.string("password", w)?.unwrap_or_default();
    s.finish(w);
    let Some(addr) = addr else {
        return Ok(None);
    };
    let addr = addr.trim();
    let addr = host_port(addr, split_host_port(addr))
        .map_err(|e| fault(addr_key, e))?
        .to_string();
    let auth = (!username.is_empty() && !password.is_empty()).then_some((username, password));
    Ok(Some(Socks5Outbound { addr, auth }))
}

/// `http`, when it has a `url`.
fn http(e: &mut Section, w: &mut W) -> Result<Option<HttpOutbound>, Fault> {
    let mut s = e.section("http")?;
    let url_key = s.key("url");
    let url = s.nonempty_string("url", w)?;
    let insecure = s.bool("insecure")?;
    s.finish(w);
    let Some(url) = url else {
        return Ok(None);
    };
    proxy_url(url.trim(), insecure)
        .map(Some)
        .map_err(|e| fault(url_key, e))
}

/// An HTTP proxy's URL: `http[s]://[user:pass@]host[:port][/path]` (the path is ignored).
fn proxy_url(url: &str, insecure: bool) -> Result<HttpOutbound, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!("{url:?}: unsupported scheme for HTTP proxy (use http:// or https://)")
    })?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => {
            return Err(format!(
                "{url:?}: unsupported scheme for HTTP proxy (use http:// or https://)"
            ))
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let auth = match userinfo {
        None => None,
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            Some((percent_decode(user)?, percent_decode(pass)?))
        }
    };
    let default_port = if tls { 443 } else { 80 };
    let with_port = match hostport.rsplit_once(':') {
        Some((h, p))
            if !h.ends_with(':') && (!h.contains(':') || h.ends_with(']')) && !p.is_empty() =>
        {
            hostport.to_owned()
        }
        _ => format!("{hostport}:{default_port}"),
    };
    let target = host_port(&with_port, split_host_port(&with_port))?;
    Ok(HttpOutbound {
        host: match &target.host {
            crate::proto::Host::Ip(ip) => ip.to_string(),
            crate::proto::Host::Domain(d) => d.clone(),
        },
        port: target.port,
        tls,
        insecure,
        auth,
    })
}

/// `%XX` escapes of a URL's userinfo.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once unescaped"))
}

fn direct(e: &mut Section, w: &mut W) -> Result<DirectOutbound, Fault> {
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
        mode,
        bind,
        fast_open,
    })
}
