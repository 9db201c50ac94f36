//! ACL: the reference's routing rules (`acl.inline`, `acl.file`), compiled once into
//! indices, matched first-rule-wins per request. Sans-IO apart from compiling: that reads
//! the rule file, and the geo databases through the caller's [`GeoLoader`] ([`GeoDownload`]
//! fetches them over HTTP(S) when due, see `download`).
//!
//! A rule is `outbound(address[, proto/port[, hijack IP]])`; see `parse` for the grammar.
//! Compiling ([`Acl::from_inline`], [`Acl::from_file`], [`Acl::compile`]) resolves outbound
//! names against the configured outbounds (plus the built-ins `direct`, `reject`,
//! `default`), loads geoip/geosite through a [`GeoLoader`] only if a rule needs them, and
//! spreads the rules over:
//! - a hash map of names and `.`-suffixes (exact names, `suffix:`, `*.domain`, geosite Full
//!   and RootDomain), probed once per label of the request name;
//! - one regex set per name family for other wildcards and geosite Plain/Regex entries;
//! - binary prefix trees for IPv4 and IPv6 (IPs, CIDRs, geoip countries);
//! - port indices answering "first `all` rule (or first address rule) for this protocol and
//!   port" by binary search.
//!
//! Call order for one request:
//! 1. [`Host::new`] with the request's host (a name or an IP literal, which carries its own
//!    address).
//! 2. Before resolving, [`Acl::route_unresolved`]: it answers [`Verdict::Decided`] when no
//!    rule that looks at addresses could come first, so the lookup can be skipped;
//!    otherwise [`Verdict::NeedsAddresses`].
//! 3. After resolving (the first A and the first AAAA, or none if resolution failed),
//!    [`Host::set_addresses`] and [`Acl::route`].
//! 4. Apply the [`Decision`]: the route, and the hijack IP if any (the request goes to the
//!    hijack IP, same port).
//!
//! Cost of one match: one hash probe per label of the name, at most 32 or 128 tree steps
//! per address, a binary search or two over port intervals, plus the short lists of rules
//! sharing one key and the `geoip:` rules of inverse countries (rare), each tried in order.
//! None of that grows with the number of rules (`benches/acl.rs`: about the same time with
//! 10 and with 10,000 such rules). Wildcards other than `*.domain`, and geosite Plain and
//! Regex entries, go through one regex set pass over the name, linear in the name's length
//! but slower as the set grows (about 1 µs a request with 2,000 such wildcards).

mod compile;
mod domain;
pub mod download;
pub mod geo;
mod iptrie;
pub mod parse;
mod ports;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use compile::{route_table, Builder};
use domain::DomainIndex;
pub use download::{GeoDownload, GeoSource};
use geo::GeoCache;
pub use geo::{GeoBytes, GeoFiles, GeoLoader};
use iptrie::IpTrie;
use parse::ProtoPort;
use ports::PortIndex;
pub use ports::PortUnion;

/// The transport of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A TCP request.
    Tcp,
    /// A UDP session or datagram.
    Udp,
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// The configured outbound at this index (of the list given to the compile).
    Outbound(usize),
    /// The built-in `direct` (mode auto, no binding): no configured outbound is named
    /// `direct`, or there are no configured outbounds and `default` was chosen.
    Direct,
    /// The built-in `reject`: an error TCPResponse for TCP, a drop for UDP.
    Reject,
}

/// The outcome of a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The outbound.
    pub route: Route,
    /// Send to this IP instead, keeping the port.
    pub hijack: Option<IpAddr>,
    /// The matching rule's line, `None` when no rule matched (the default route).
    pub line: Option<usize>,
}

/// The answer before resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The addresses cannot change the outcome.
    Decided(Decision),
    /// Resolve, then call [`Acl::route`] (also when resolution fails: a rule may match a
    /// host without addresses).
    NeedsAddresses,
}

/// A compile error: where (the file path or `acl.inline`), which line, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclError {
    /// The rule file's path, or `acl.inline`.
    pub origin: String,
    /// 1-based line, when the error belongs to one.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}: line {line}: {}", self.origin, self.reason),
            None => write!(f, "{}: {}", self.origin, self.reason),
        }
    }
}

impl std::error::Error for AclError {}

/// The request's host as the ACL sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Lowercased, trailing dots removed; the IP text for an IP request.
    name: String,
    /// `name` with its `xn--` labels decoded, when there are some and they decode.
    unicode: Option<String>,
    /// The resolved (or literal) IPv4 address.
    v4: Option<Ipv4Addr>,
    /// The resolved (or literal) IPv6 address.
    v6: Option<Ipv6Addr>,
}

impl Host {
    /// A request host: a domain name, or an IP literal without brackets, which then also
    /// stands as the resolved address.
    pub fn new(host: &str) -> Host {
        let mut name = host.to_lowercase();
        let kept = name.trim_end_matches('.').len();
        name.truncate(kept);
        let unicode = domain::to_unicode(&name);
        let (mut v4, mut v6) = (None, None);
        match host.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(IpAddr::V4(a)) => v4 = Some(a),
            Ok(IpAddr::V6(a)) => v6 = Some(a),
            Err(_) => {}
        }
        Host {
            name,
            unicode,
            v4,
            v6,
        }
    }

    /// The resolver's answer: at most one address of each family (none if it failed).
    pub fn set_addresses(&mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) {
        self.v4 = v4;
        self.v6 = v6;
    }

    /// [`Host::set_addresses`], by value.
    pub fn with_addresses(mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Host {
        self.set_addresses(v4, v6);
        self
    }

    /// The normalized name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IPv4 address, if any.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.v4
    }

    /// The IPv6 address, if any.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.v6
    }

    /// The addresses as the prefix trees see them: IPv4-mapped IPv6 counts as IPv4.
    fn keys(&self) -> ([Option<u32>; 2], Option<u128>) {
        let mapped = self.v6.and_then(|a| a.to_ipv4_mapped());
        let v6 = self.v6.filter(|_| mapped.is_none()).map(u128::from);
        ([self.v4.map(u32::from), mapped.map(u32::from)], v6)
    }
}

/// One compiled rule.
#[derive(Clone, Debug)]
struct Rule {
    route: Route,
    hijack: Option<IpAddr>,
    pp: ProtoPort,
    line: usize,
}

impl Rule {
    fn applies(&self, proto: Protocol, port: u16) -> bool {
        let proto_ok = match proto {
            Protocol::Tcp => self.pp.tcp,
            Protocol::Udp => self.pp.udp,
        };
        proto_ok && self.pp.lo <= port && port <= self.pp.hi
    }
}

/// An inverse `geoip:` country: matches a host with no address inside it.
#[derive(Debug)]
struct InverseGeoIp {
    rule: u32,
    v4: IpTrie<32>,
    v6: IpTrie<128>,
}

/// A compiled rule set. Immutable; share it between workers behind an `Arc`.
#[derive(Debug)]
pub struct Acl {
    rules: Vec<Rule>,
    /// The route when no rule matches.
    default: Route,
    /// `all` rules.
    always: PortIndex,
    /// Rules that look at addresses (IP, CIDR, geoip).
    addressed: PortIndex,
    /// Exact, suffix and wildcard patterns, matched against the Unicode form of the name.
    names: DomainIndex,
    /// geosite entries, matched against the name as it is.
    sites: DomainIndex,
    v4: IpTrie<32>,
    v6: IpTrie<128>,
    inverse: Vec<InverseGeoIp>,
    warnings: Vec<String>,
}

impl Acl {
    /// Compiles `acl.inline`: the entries joined by newlines, so entry N is line N.
    pub fn from_inline<S: AsRef<str>>(
        entries: &[String],
        outbounds: &[S],
        geo: &mut dyn GeoLoader,
    ) -> Result<Acl, AclError> {
        Acl::compile(&entries.join("\n"), "acl.inline", outbounds, geo)
    }

    /// Reads and compiles `acl.file`; errors name the file.
    pub fn from_file<S: AsRef<str>>(
        path: &Path,
        outbounds: &[S],
        geo: &mut dyn GeoLoader,
    ) -> Result<Acl, AclError> {
        let origin = path.display().to_string();
        let err = |line, reason| AclError {
            origin: origin.clone(),
            line,
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(None, e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            err(Some(line), "not valid UTF-8".into())
        })?;
        Acl::compile(&text, &origin, outbounds, geo)
    }

    /// Compiles rule text; `origin` names it in errors. `outbounds` are the configured
    /// outbound names in order; rules name them case-insensitively, and a configured
    /// `direct`, `reject` or `default` replaces the built-in one (a repeated name: the
    /// last wins). Without a configured `default`, it is the first outbound, or the
    /// built-in `direct` if there are none.
    pub fn compile<S: AsRef<str>>(
        text: &str,
        origin: &str,
        outbounds: &[S],
        geo: &mut dyn GeoLoader,
    ) -> Result<Acl, AclError> {
        let err = |line, reason| AclError {
            origin: origin.to_string(),
            line,
            reason,
        };
        let text_rules = parse::parse_text(text).map_err(|(line, why)| err(Some(line), why))?;
        let table = route_table(outbounds);
        let mut b = Builder {
            acl: Acl {
                rules: Vec::with_capacity(text_rules.len()),
                default: table["default"],
                always: PortIndex::default(),
                addressed: PortIndex::default(),
                names: DomainIndex::default(),
                sites: DomainIndex::default(),
                v4: IpTrie::default(),
                v6: IpTrie::default(),
                inverse: Vec::new(),
                warnings: Vec::new(),
            },
            always: Vec::new(),
            addressed: Vec::new(),
            geo: GeoCache::new(geo),
        };
        for tr in &text_rules {
            b.add(tr, &table).map_err(|why| err(Some(tr.line), why))?;
        }
        let mut acl = b.acl;
        acl.always = PortIndex::build(&b.always);
        acl.addressed = PortIndex::build(&b.addressed);
        acl.names.finish().map_err(|why| err(None, why))?;
        acl.sites.finish().map_err(|why| err(None, why))?;
        acl.warnings = acl
            .warnings
            .into_iter()
            .map(|w| format!("{origin}: {w}"))
            .collect();
        Ok(acl)
    }

    /// Things that compiled but likely do not do what was meant, one line each (each
    /// starts with the origin and line), for the log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (everything takes the default route).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule looks at resolved addresses.
    pub fn uses_addresses(&self) -> bool {
        !self.v4.is_empty() || !self.v6.is_empty() || !self.inverse.is_empty()
    }

    /// The first matching rule's decision, or the default route.
    pub fn route(&self, host: &Host, proto: Protocol, port: u16) -> Decision {
        self.decision(self.first_match(host, proto, port, true))
    }

    /// The decision before resolution: decided when the host carries its addresses (an IP
    /// literal) or when no rule that looks at addresses comes before the first rule
    /// matching the name.
    pub fn route_unresolved(&self, host: &Host, proto: Protocol, port: u16) -> Verdict {
        if host.v4.is_some() || host.v6.is_some() {
            return Verdict::Decided(self.route(host, proto, port));
        }
        let best = self.first_match(host, proto, port, false);
        if self.addressed.first(proto, port) < best {
            Verdict::NeedsAddresses
        } else {
            Verdict::Decided(self.decision(best))
        }
    }

    fn decision(&self, rule: u32) -> Decision {
        match self.rules.get(rule as usize) {
            Some(r) => Decision {
                route: r.route,
                hijack: r.hijack,
                line: Some(r.line),
            },
            None => Decision {
                route: self.default,
                hijack: None,
                line: None,
            },
        }
    }

    /// The first rule that matches, or `u32::MAX`.
    fn first_match(&self, host: &Host, proto: Protocol, port: u16, addresses: bool) -> u32 {
        let rules = &self.rules;
        // Each index hands over ascending lists; the first applicable rule of a list below
        // the current best becomes the best.
        let visit = |list: &[u32], bound: u32| -> u32 {
            for &r in list {
                if r >= bound {
                    break;
                }
                if rules[r as usize].applies(proto, port) {
                    return r;
                }
            }
            bound
        };
        let mut best = self.always.first(proto, port);
        let name = host.unicode.as_deref().unwrap_or(&host.name);
        best = self.names.lookup(name, best, visit);
        best = self.sites.lookup(&host.name, best, visit);
        if !addresses {
            return best;
        }
        let (v4s, v6) = host.keys();
        for a in v4s.into_iter().flatten() {
            best = self.v4.lookup(u128::from(a), best, visit);
        }
        if let Some(a) = v6 {
            best = self.v6.lookup(a, best, visit);
        }
        for inv in &self.inverse {
            if inv.rule >= best {
                break;
            }
            let inside = v4s
                .into_iter()
                .flatten()
                .any(|a| inv.v4.contains(u128::from(a)))
                || v6.is_some_and(|a| inv.v6.contains(a));
            if !inside && rules[inv.rule as usize].applies(proto, port) {
                best = inv.rule;
                break;
            }
        }
        best
    }
}
