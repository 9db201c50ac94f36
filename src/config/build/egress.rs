//! Where relayed traffic goes: `resolver`, `sniff`, `acl`, `outbounds`.

use std::path::PathBuf;

use super::{lower, W};
use crate::config::error::{fault, Fault, Warning};
use crate::config::reader::Section;
use crate::config::server::*;
use crate::config::units::PortSet;

pub(super) fn resolver(top: &mut Section, w: &mut W) -> Result<(), Fault> {
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
