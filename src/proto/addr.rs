//! `host:port` addresses as TCPRequest and UDPMessage carry them.
//!
//! Hysteria peers format and parse these with Go's `net.SplitHostPort`; this module accepts the
//! same shapes, and is stricter about what it can dial: a decimal port (Go would look up a
//! service name), a non-empty host, and a host that is an IP address or a plausible domain.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use super::{AddressError, ProtoError};

/// The longest domain name, without a trailing dot (RFC 1035 §2.3.4, as text).
pub const MAX_DOMAIN_LEN: usize = 253;

/// The longest label of a domain name (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// The host part of a `host:port` address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 literal, or an IP literal in brackets (IPv6 in practice).
    Ip(IpAddr),
    /// Anything else that looks like a domain name; the resolver has the last word.
    Domain(String),
}

/// Splits `host:port` the way Go's `net.SplitHostPort` does, then checks the parts.
///
/// IPv6 literals need brackets (`[2001:db8::1]:443`), zones (`%eth0`) are refused, the port is
/// decimal in 0..=65535 (leading zeros allowed, as Go allows), and a domain is at most 253 bytes
/// of labels of 1..=63 bytes made of letters, digits, `-`, `_` or non-ASCII (IDN) characters.
pub fn split_host_port(addr: &str) -> Result<(Host, u16), ProtoError> {
    let (host, port, bracketed) = split_go(addr)?;
    let port = parse_port(port)?;
    if host.is_empty() {
        return Err(AddressError::EmptyHost.into());
    }
    let host = if bracketed {
        Host::Ip(host.parse().map_err(|_| AddressError::BadIpLiteral)?)
    } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
        Host::Ip(IpAddr::V4(v4))
    } else if is_domain(host) {
        Host::Domain(host.to_owned())
    } else {
        return Err(AddressError::BadDomain.into());
    };
    Ok((host, port))
}

/// [`split_host_port`] on raw bytes from the wire.
pub fn split_host_port_bytes(addr: &[u8]) -> Result<(Host, u16), ProtoError> {
    split_host_port(std::str::from_utf8(addr).map_err(|_| AddressError::NotUtf8)?)
}

/// Go `net.SplitHostPort`, step for step: returns host, port and whether the host was
/// bracketed. The port is not checked.
pub(super) fn split_go(addr: &str) -> Result<(&str, &str, bool), AddressError> {
    // "The port starts after the last colon."
    let colon = addr.rfind(':').ok_or(AddressError::MissingPort)?;
    let (host, bracketed, after_open, after_close) = if addr.starts_with('[') {
        // "Expect the first ']' just before the last ':'."
        let close = addr.find(']').ok_or(AddressError::BadBrackets)?;
        if close + 1 == addr.len() {
            return Err(AddressError::MissingPort);
        }
        if close + 1 != colon {
            return Err(if addr.as_bytes()[close + 1] == b':' {
                AddressError::TooManyColons
            } else {
                AddressError::MissingPort
            });
        }
        (&addr[1..close], true, 1, close + 1)
    } else {
        let host = &addr[..colon];
        if host.contains(':') {
            return Err(AddressError::TooManyColons);
        }
        (host, false, 0, 0)
    };
    if addr[after_open..].contains('[') || addr[after_close..].contains(']') {
        return Err(AddressError::BadBrackets);
    }
    Ok((host, &addr[colon + 1..], bracketed))
}

fn parse_port(port: &str) -> Result<u16, AddressError> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::BadPort);
    }
    // Leading zeros are fine; u16::from_str refuses anything above 65535.
    let digits = port.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    digits.parse().map_err(|_| AddressError::BadPort)
}

fn is_domain(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= MAX_DOMAIN_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && label.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || c == '-'
                        || c == '_'
                        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
                })
        })
}

/// A set of ports, as in `sniff.tcpPorts`: `all`, or a comma-separated list of ports and
/// ranges such as `80,443,8000-9000`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet(Vec<RangeInclusive<u16>>);

impl PortSet {
    /// Every port.
    pub fn all() -> Self {
        Self(vec![0..=u16::MAX])
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }

    /// The ranges, in the order given.
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.0
    }

    /// Every port of the set, sorted, each once.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.0.iter().flat_map(|r| r.clone()).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Parse `all`, `*` or `80,443,1000-2000`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let s = text.trim();
        if s.eq_ignore_ascii_case("all") || s == "*" {
            return Ok(Self::all());
        }
        let bad = |part: &str| {
            format!(
                "invalid port {part:?} in {text:?} (expected e.g. \"80,443,8000-9000\" or \"all\")"
            )
        };
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim) {
            let port = |p: &str| p.trim().parse::<u16>().map_err(|_| bad(part));
            let range = match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (port(a)?, port(b)?);
                    a.min(b)..=a.max(b)
                }
                None => {
                    let p = port(part)?;
                    p..=p
                }
            };
            ranges.push(range);
        }
        Ok(Self(ranges))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn err(addr: &str) -> AddressError {
        match split_host_port(addr) {
            Err(ProtoError::BadAddress(e)) => e,
            other => panic!("{addr:?}: expected a BadAddress error, got {other:?}"),
        }
    }

    #[test]
    fn accepts() {
        let ok = |addr: &str, host: Host, port: u16| {
            assert_eq!(split_host_port(addr).unwrap(), (host, port), "{addr}");
        };
        let dom = |s: &str| Host::Domain(s.to_owned());
        ok("example.com:443", dom("example.com"), 443);
        ok("example.com.:443", dom("example.com."), 443);
        ok("localhost:0", dom("localhost"), 0);
        ok("my_host-1.example:65535", dom("my_host-1.example"), 65535);
        ok("bücher.example:80", dom("bücher.example"), 80);
        ok(
            "1.1.1.1:53",
            Host::Ip(IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1))),
            53,
        );
        ok(
            "1.1.1.1:0053",
            Host::Ip(IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1))),
            53,
        );
        ok(
            "1.1.1.1:00000",
            Host::Ip(IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1))),
            0,
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        ok("[2001:db8::1]:443", Host::Ip(IpAddr::V6(v6)), 443);
        ok(
            "[::1]:8080",
            Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            8080,
        );
        // Go accepts any IP in brackets.
        ok(
            "[127.0.0.1]:1",
            Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            1,
        );
        let label = "a".repeat(63);
        let long = [label.as_str(); 4].join(".")[..253].to_owned();
        let long = long.trim_end_matches('.').to_owned();
        ok(&format!("{long}:1"), dom(&long), 1);
    }

    #[test]
    fn refuses() {
        use AddressError::*;
        assert_eq!(err("example.com"), MissingPort);
        assert_eq!(err(""), MissingPort);
        assert_eq!(err("[::1]"), MissingPort);
        assert_eq!(err("[::1]x:80"), MissingPort);
        assert_eq!(err("[::1]::80"), TooManyColons);
        assert_eq!(err("2001:db8::1:443"), TooManyColons);
        assert_eq!(err("::1:443"), TooManyColons);
        assert_eq!(err("[::1:443"), BadBrackets);
        assert_eq!(err("a]:443"), BadBrackets);
        assert_eq!(err("[a[b]:443"), BadBrackets);
        assert_eq!(err("example.com:"), BadPort);
        assert_eq!(err("example.com:65536"), BadPort);
        assert_eq!(err("example.com:99999999999999999999"), BadPort);
        assert_eq!(err("example.com:http"), BadPort);
        assert_eq!(err("example.com:+80"), BadPort);
        assert_eq!(err("example.com:-1"), BadPort);
        assert_eq!(err(":443"), EmptyHost);
        assert_eq!(err("[]:443"), EmptyHost);
        assert_eq!(err("[example.com]:443"), BadIpLiteral);
        assert_eq!(err("[fe80::1%eth0]:443"), BadIpLiteral);
        assert_eq!(err("exa mple.com:443"), BadDomain);
        assert_eq!(err("example..com:443"), BadDomain);
        assert_eq!(err(".:443"), BadDomain);
        assert_eq!(err("a\u{0}b:443"), BadDomain);
        assert_eq!(err("a/b:443"), BadDomain);
        assert_eq!(err(&format!("{}.com:1", "a".repeat(64))), BadDomain);
        let long = ["a".repeat(63).as_str(); 4].join(".");
        assert_eq!(err(&format!("{long}:1")), BadDomain);
        assert_eq!(
            split_host_port_bytes(b"\xff:80"),
            Err(ProtoError::BadAddress(NotUtf8))
        );
    }

    #[test]
    fn port_sets() {
        let s = PortSet::parse("80, 443,8000-9000,20-10").unwrap();
        for p in [80, 443, 8000, 8500, 9000, 10, 15, 20] {
            assert!(s.contains(p), "{p}");
        }
        for p in [0, 81, 7999, 9001, 21] {
            assert!(!s.contains(p), "{p}");
        }
        assert!(PortSet::parse("all").unwrap().contains(65535));
        assert!(PortSet::parse("*").unwrap().contains(0));
        for bad in ["", "80,", "a", "1-", "70000"] {
            assert!(PortSet::parse(bad).is_err(), "{bad:?} should fail");
        }
    }
}
