//! Compiling text rules: outbound names to routes, addresses into the indices.

use std::collections::HashMap;
use std::net::IpAddr;

use super::geo::{DomainKind, GeoCache};
use super::iptrie::IpTrie;
use super::parse::{self, Address, ProtoPort, TextRule};
use super::{Acl, InverseGeoIp, Route, Rule};

/// Rule names (lowercased) to routes, built-ins included.
pub(super) fn route_table<S: AsRef<str>>(outbounds: &[S]) -> HashMap<String, Route> {
    let mut t: HashMap<String, Route> = outbounds
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_ref().to_lowercase(), Route::Outbound(i)))
        .collect();
    let direct = *t.entry("direct".into()).or_insert(Route::Direct);
    t.entry("reject".into()).or_insert(Route::Reject);
    let default = if outbounds.is_empty() {
        direct
    } else {
        Route::Outbound(0)
    };
    t.entry("default".into()).or_insert(default);
    t
}

/// Compile state: the ACL under construction and what the port indices are built from.
pub(super) struct Builder<'a> {
    pub(super) acl: Acl,
    pub(super) always: Vec<(u32, ProtoPort)>,
    pub(super) addressed: Vec<(u32, ProtoPort)>,
    pub(super) geo: GeoCache<'a>,
}

impl Builder<'_> {
    pub(super) fn add(
        &mut self,
        tr: &TextRule,
        table: &HashMap<String, Route>,
    ) -> Result<(), String> {
        let route = *table
            .get(&tr.outbound.to_lowercase())
            .ok_or_else(|| format!("outbound {} not found", tr.outbound))?;
        let address = parse::parse_address(&tr.address)?;
        let rule = u32::try_from(self.acl.rules.len())
            .ok()
            .filter(|&r| r < u32::MAX)
            .ok_or("too many rules")?;
        // The address goes into the indices only after the rest of the rule is checked.
        let pp = parse::parse_proto_port(&tr.proto_port)
            .ok_or_else(|| format!("invalid protocol/port: {}", tr.proto_port))?;
        let hijack = if tr.hijack.is_empty() {
            None
        } else {
            Some(parse::parse_hijack(&tr.hijack).ok_or_else(|| {
                format!(
                    "invalid hijack address (must be an IP address): {}",
                    tr.hijack
                )
            })?)
        };
        if pp.zero_start {
            self.acl.warnings.push(format!(
                "line {}: {} has start port 0, which matches every port",
                tr.line, tr.proto_port
            ));
        }
        self.add_address(&address, rule, pp, tr.line)?;
        self.acl.rules.push(Rule {
            route,
            hijack,
            pp,
            line: tr.line,
        });
        Ok(())
    }

    fn add_address(
        &mut self,
        address: &Address,
        rule: u32,
        pp: ProtoPort,
        line: usize,
    ) -> Result<(), String> {
        let acl = &mut self.acl;
        match address {
            Address::All => self.always.push((rule, pp)),
            Address::Exact(n) => acl.names.add_exact(n, rule),
            Address::Suffix(d) => acl.names.add_suffix(d, rule),
            Address::Wildcard(p) => acl.names.add_wildcard(p, rule),
            Address::Ip(ip) => {
                self.addressed.push((rule, pp));
                insert(
                    &mut acl.v4,
                    &mut acl.v6,
                    *ip,
                    if ip.is_ipv4() { 32 } else { 128 },
                    rule,
                );
            }
            Address::Cidr(ip, bits) => {
                self.addressed.push((rule, pp));
                insert(&mut acl.v4, &mut acl.v6, *ip, *bits, rule);
            }
            Address::GeoIp(cc) => {
                self.addressed.push((rule, pp));
                let entry = self
                    .geo
                    .geoip()?
                    .0
                    .get(cc)
                    .ok_or_else(|| format!("GeoIP country code {cc} not found"))?;
                let mut inverse = InverseGeoIp {
                    rule,
                    v4: IpTrie::default(),
                    v6: IpTrie::default(),
                };
                let (v4, v6) = if entry.inverse_match {
                    (&mut inverse.v4, &mut inverse.v6)
                } else {
                    (&mut acl.v4, &mut acl.v6)
                };
                for c in &entry.cidr {
                    let ip = match c.ip.len() {
                        4 => IpAddr::from(
                            <[u8; 4]>::try_from(&c.ip[..]).map_err(|_| "invalid IP length")?,
                        ),
                        16 => IpAddr::from(
                            <[u8; 16]>::try_from(&c.ip[..]).map_err(|_| "invalid IP length")?,
                        ),
                        _ => return Err("invalid IP length".into()),
                    };
                    let width = if ip.is_ipv4() { 32 } else { 128 };
                    // The reference's mask for a prefix beyond the width matches nothing.
                    if let Ok(bits) = u8::try_from(c.prefix) {
                        if bits <= width {
                            insert(v4, v6, ip, bits, rule);
                        }
                    }
                }
                if entry.inverse_match {
                    acl.inverse.push(inverse);
                }
            }
            Address::GeoSite(name, attrs) => {
                let site = self
                    .geo
                    .geosite()?
                    .0
                    .get(name)
                    .ok_or_else(|| format!("GeoSite name {name} not found"))?;
                for d in &site.domain {
                    let kind = DomainKind::from_wire(d.kind).ok_or("unsupported domain type")?;
                    let wanted = attrs.is_empty()
                        || (!d.attribute.is_empty()
                            && attrs
                                .iter()
                                .all(|a| d.attribute.iter().any(|x| &x.key == a)));
                    match kind {
                        // Every regex of the list must compile, wanted or not.
                        DomainKind::Regex if wanted => acl.sites.add_regex(&d.value, rule)?,
                        DomainKind::Regex => {
                            regex::Regex::new(&d.value).map_err(|e| e.to_string())?;
                        }
                        _ if !wanted => {}
                        DomainKind::Plain => acl.sites.add_substring(&d.value, rule),
                        DomainKind::RootDomain => acl.sites.add_suffix(&d.value, rule),
                        DomainKind::Full => acl.sites.add_exact(&d.value, rule),
                    }
                }
            }
        }
        if let Address::Exact(p) | Address::Suffix(p) | Address::Wildcard(p) = address {
            if p.contains("xn--") {
                acl.warnings.push(format!(
                    "line {line}: {p} is written in punycode, but names are compared in Unicode, so it never matches a punycode name"
                ));
            }
        }
        Ok(())
    }
}

fn insert(v4: &mut IpTrie<32>, v6: &mut IpTrie<128>, ip: IpAddr, bits: u8, rule: u32) {
    match ip {
        IpAddr::V4(a) => {
            let masked = u32::from(a) & parse::mask32(bits);
            v4.insert(u128::from(masked), bits, rule);
        }
        IpAddr::V6(a) => v6.insert(u128::from(a) & parse::mask128(bits), bits, rule),
    }
}
