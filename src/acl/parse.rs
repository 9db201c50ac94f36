//! The ACL text grammar: lines of `outbound(address[, proto/port[, hijack]])`, and the
//! meaning of each field. Pure functions over strings; compiling into indices is in `mod.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One rule as written, fields trimmed, before any field is interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextRule {
    /// The outbound name as written (ASCII letters, digits, `_`).
    pub outbound: String,
    /// Field 1, the address pattern.
    pub address: String,
    /// Field 2, `proto/port`; empty when absent.
    pub proto_port: String,
    /// Field 3, the hijack IP; empty when absent.
    pub hijack: String,
    /// 1-based line number in the text.
    pub line: usize,
}

/// Parses rule text. A `#` starts a comment, lines are trimmed, empty lines are skipped
/// but counted. On a malformed line: `(line, reason)`.
pub fn parse_text(text: &str) -> Result<Vec<TextRule>, (usize, String)> {
    let mut rules = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = match raw.find('#') {
            Some(at) => &raw[..at],
            None => raw,
        }
        .trim();
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Some((outbound, fields)) => rules.push(TextRule {
                outbound: outbound.to_string(),
                address: fields[0].trim().to_string(),
                proto_port: fields[1].trim().to_string(),
                hijack: fields[2].trim().to_string(),
                line: line_no,
            }),
            None => return Err((line_no, format!("invalid syntax: {line}"))),
        }
    }
    Ok(rules)
}

/// `NAME ws* "(" F1 ["," F2 ["," F3]] ")"`, nothing after the `)`. Fields are non-empty
/// and free of `,` (they may hold spaces and parentheses); absent fields come back empty.
fn parse_line(line: &str) -> Option<(&str, [&str; 3])> {
    let name_end = line
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
        .unwrap_or(line.len());
    if name_end == 0 {
        return None;
    }
    // The reference's `\s`: ASCII space, tab, newline, form feed, carriage return.
    let rest = line[name_end..].trim_start_matches([' ', '\t', '\n', '\x0c', '\r']);
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    let mut fields = [""; 3];
    for (n, field) in inner.split(',').enumerate() {
        if n == 3 || field.is_empty() {
            return None;
        }
        fields[n] = field;
    }
    Some((&line[..name_end], fields))
}

/// Field 2: which protocols and ports a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoPort {
    /// Applies to TCP requests.
    pub tcp: bool,
    /// Applies to UDP requests.
    pub udp: bool,
    /// First port, inclusive.
    pub lo: u16,
    /// Last port, inclusive.
    pub hi: u16,
    /// Written with a start port of 0 (`tcp/0`, `udp/0-100`): the reference then applies no
    /// port filter at all; kept for parity, worth a warning.
    pub zero_start: bool,
}

impl ProtoPort {
    /// Both protocols, every port.
    pub const ANY: ProtoPort = ProtoPort {
        tcp: true,
        udp: true,
        lo: 0,
        hi: u16::MAX,
        zero_start: false,
    };

    /// Whether every port of the rule's protocols passes.
    pub fn all_ports(&self) -> bool {
        self.lo == 0 && self.hi == u16::MAX
    }
}

/// Parses field 2. `None` means `invalid protocol/port`.
pub fn parse_proto_port(field: &str) -> Option<ProtoPort> {
    let f = field.to_lowercase();
    if f.is_empty() || f == "*" || f == "*/*" {
        return Some(ProtoPort::ANY);
    }
    let (proto, ports) = match f.split_once('/') {
        None => (f.as_str(), None),
        Some((p, q)) => (p, Some(q)),
    };
    let (tcp, udp) = match (proto, ports.is_some()) {
        ("tcp", _) => (true, false),
        ("udp", _) => (false, true),
        ("*", true) => (true, true),
        _ => return None,
    };
    let mut pp = ProtoPort {
        tcp,
        udp,
        ..ProtoPort::ANY
    };
    let Some(q) = ports else { return Some(pp) };
    if q == "*" {
        return Some(pp);
    }
    // The reference trims before looking for a range but parses a single port untrimmed,
    // so `tcp/ 1-2` passes while `tcp/ 80` does not.
    let (lo, hi) = match q.trim().split_once('-') {
        None => {
            let p = parse_port(q)?;
            (p, p)
        }
        Some((a, b)) => (parse_port(a)?, parse_port(b)?),
    };
    if lo > hi {
        return None;
    }
    if lo == 0 {
        pp.zero_start = true;
    } else {
        pp.lo = lo;
        pp.hi = hi;
    }
    Some(pp)
}

/// A decimal port: ASCII digits only (no sign), at most 65535.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: u32 = 0;
    for b in s.bytes() {
        v = v * 10 + u32::from(b - b'0');
        if v > u32::from(u16::MAX) {
            return None;
        }
    }
    u16::try_from(v).ok()
}

/// Field 1, interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `*` or `all`.
    All,
    /// `geoip:CC`, the code lowercased.
    GeoIp(String),
    /// `geosite:NAME[@attr...]`: the name and the attribute keys an entry must all carry.
    GeoSite(String, Vec<String>),
    /// `suffix:D`: the name is `D` or ends with `.D`.
    Suffix(String),
    /// A CIDR, host bits cleared.
    Cidr(IpAddr, u8),
    /// A single IP (IPv4-mapped IPv6 is stored as IPv4: the two compare equal).
    Ip(IpAddr),
    /// A pattern with `*` (any run of characters, dots included) over the whole name.
    Wildcard(String),
    /// The exact name.
    Exact(String),
}

/// Parses field 1: lowercased, trailing dots removed, then the first form that applies.
pub fn parse_address(field: &str) -> Result<Address, String> {
    let lower = field.to_lowercase();
    let a = lower.trim_end_matches('.');
    if a == "*" || a == "all" {
        return Ok(Address::All);
    }
    if let Some(cc) = a.strip_prefix("geoip:") {
        if cc.is_empty() {
            return Err("empty GeoIP country code".into());
        }
        return Ok(Address::GeoIp(cc.to_string()));
    }
    if let Some(rest) = a.strip_prefix("geosite:") {
        let (name, attrs) = split_geosite_name(rest);
        if name.is_empty() {
            return Err("empty GeoSite name".into());
        }
        return Ok(Address::GeoSite(name, attrs));
    }
    if let Some(d) = a.strip_prefix("suffix:") {
        if d.is_empty() {
            return Err("empty domain suffix".into());
        }
        return Ok(Address::Suffix(d.to_string()));
    }
    if a.contains('/') {
        return parse_cidr(a).ok_or_else(|| format!("invalid CIDR address: {a}"));
    }
    if let Some(ip) = parse_ip(a) {
        return Ok(Address::Ip(ip));
    }
    if a.contains('*') {
        return Ok(Address::Wildcard(a.to_string()));
    }
    Ok(Address::Exact(a.to_string()))
}

/// `NAME@attr@attr`, each part trimmed.
pub fn split_geosite_name(s: &str) -> (String, Vec<String>) {
    let mut parts = s.split('@').map(|p| p.trim().to_string());
    let name = parts.next().unwrap_or_default();
    (name, parts.collect())
}

/// An IPv4 or IPv6 literal without brackets or zone; IPv4-mapped IPv6 becomes IPv4.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(v4) = s.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    s.parse::<Ipv6Addr>().ok().map(|v6| v6.to_canonical())
}

/// `ip/prefix`: the prefix is decimal digits within the family's width. Host bits are
/// cleared. A v4-mapped IPv6 network stays IPv6 (the reference never matches it against
/// IPv4 addresses).
fn parse_cidr(s: &str) -> Option<Address> {
    let (ip, bits) = s.split_once('/')?;
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) || bits.len() > 3 {
        return None;
    }
    let bits: u8 = bits.parse().ok()?;
    if let Ok(v4) = ip.parse::<Ipv4Addr>() {
        if bits > 32 {
            return None;
        }
        let masked = u32::from(v4) & mask32(bits);
        return Some(Address::Cidr(IpAddr::V4(masked.into()), bits));
    }
    let v6 = ip.parse::<Ipv6Addr>().ok()?;
    if bits > 128 {
        return None;
    }
    let masked = u128::from(v6) & mask128(bits);
    Some(Address::Cidr(IpAddr::V6(masked.into()), bits))
}

pub(crate) fn mask32(bits: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)
}

pub(crate) fn mask128(bits: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0)
}

/// Field 3. `None` means `invalid hijack address`.
pub fn parse_hijack(field: &str) -> Option<IpAddr> {
    parse_ip(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(outbound: &str, address: &str, pp: &str, hijack: &str, line: usize) -> TextRule {
        TextRule {
            outbound: outbound.into(),
            address: address.into(),
            proto_port: pp.into(),
            hijack: hijack.into(),
            line,
        }
    }

    #[test]
    fn reference_text_parses_to_seven_rules_with_line_numbers() {
        let text = "\n# just a comment\n # another comment\ndirect(1.1.1.1)\ndirect(8.8.8.0/24)\n\
                    reject(all, udp/443) # inline comment\n reject(geoip:cn)\n  reject(*.v2ex.com)\n\
                    my_custom_outbound1(9.9.9.9,*,   8.8.8.8) # bebop\nmy_custom_outbound2(all)";
        assert_eq!(
            parse_text(text).unwrap(),
            vec![
                rule("direct", "1.1.1.1", "", "", 4),
                rule("direct", "8.8.8.0/24", "", "", 5),
                rule("reject", "all", "udp/443", "", 6),
                rule("reject", "geoip:cn", "", "", 7),
                rule("reject", "*.v2ex.com", "", "", 8),
                rule("my_custom_outbound1", "9.9.9.9", "*", "8.8.8.8", 9),
                rule("my_custom_outbound2", "all", "", "", 10),
            ]
        );
    }

    #[test]
    fn p1_empty_text_is_no_rules() {
        assert_eq!(parse_text("").unwrap(), vec![]);
    }

    #[test]
    fn p2_p3_p5_p6_p7_syntax_errors_name_the_line() {
        for bad in [
            "boom()",
            "lol(1,1,1,1)",
            "my-proxy(all)",
            "direct(all,,1.1.1.1)",
            "direct(all) extra",
        ] {
            let text = format!("direct(all)\n{bad}");
            assert_eq!(
                parse_text(&text),
                Err((2, format!("invalid syntax: {bad}"))),
                "{bad}"
            );
        }
    }

    #[test]
    fn p4_space_before_parenthesis_is_allowed() {
        assert_eq!(
            parse_text("ob1 (1.1.1.1/24,*,8.8.8.8)").unwrap(),
            vec![rule("ob1", "1.1.1.1/24", "*", "8.8.8.8", 1)]
        );
    }

    #[test]
    fn fields_may_hold_parentheses_and_crlf_is_trimmed() {
        assert_eq!(
            parse_text("a((x)) \r\nb(\t )").unwrap(),
            vec![rule("a", "(x)", "", "", 1), rule("b", "", "", "", 2)]
        );
    }

    #[test]
    fn p8_two_ports_put_the_second_in_the_hijack_field() {
        let r = &parse_text("direct(all, udp/53,443)").unwrap()[0];
        assert_eq!(r.hijack, "443");
        assert_eq!(parse_hijack(&r.hijack), None);
    }

    #[test]
    fn p9_reversed_range_and_other_bad_ports_are_invalid() {
        for bad in [
            "*/3-1",
            "sctp/80",
            "tcp/65536",
            "tcp/1000-",
            "tcp/x",
            "tcp /80",
            "udp/ 443",
            "tcp/+80",
            "*", // valid: checked below
        ]
        .into_iter()
        .filter(|s| *s != "*")
        {
            assert_eq!(parse_proto_port(bad), None, "{bad}");
        }
        assert_eq!(parse_proto_port("*"), Some(ProtoPort::ANY));
        assert_eq!(parse_proto_port("*/*"), Some(ProtoPort::ANY));
        assert_eq!(parse_proto_port(""), Some(ProtoPort::ANY));
        let tcp80 = parse_proto_port("TCP/80").unwrap();
        assert_eq!(
            (tcp80.tcp, tcp80.udp, tcp80.lo, tcp80.hi),
            (true, false, 80, 80)
        );
        let range = parse_proto_port("*/6881-6889").unwrap();
        assert_eq!(
            (range.tcp, range.udp, range.lo, range.hi),
            (true, true, 6881, 6889)
        );
        // Reference quirk: the range is trimmed as a whole.
        assert!(parse_proto_port("udp/ 1-2").is_some());
        // `*` alone as the protocol needs a port part.
        assert_eq!(parse_proto_port("*/"), None);
    }

    #[test]
    fn a_start_port_of_zero_means_every_port() {
        let pp = parse_proto_port("tcp/0-100").unwrap();
        assert!(pp.all_ports() && pp.zero_start && pp.tcp && !pp.udp);
    }

    #[test]
    fn p10_bad_cidr_is_reported_lowercased() {
        assert_eq!(
            parse_address("Example.com/X"),
            Err("invalid CIDR address: example.com/x".into())
        );
        for bad in [
            "1.1.1.1/33",
            "::/129",
            "1.1.1.1/",
            "1.1.1.1/+8",
            "1.1.1.1/8/8",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn address_forms_in_order() {
        use Address::*;
        assert_eq!(parse_address("ALL").unwrap(), All);
        assert_eq!(parse_address("*").unwrap(), All);
        assert_eq!(parse_address("GEOIP:CN").unwrap(), GeoIp("cn".into()));
        assert_eq!(
            parse_address("geosite:google @cn").unwrap(),
            GeoSite("google".into(), vec!["cn".into()])
        );
        assert_eq!(
            parse_address("suffix:a.com.").unwrap(),
            Suffix("a.com".into())
        );
        assert_eq!(
            parse_address("1.1.1.1/24").unwrap(),
            Cidr("1.1.1.0".parse().unwrap(), 24)
        );
        assert_eq!(
            parse_address("::ffff:1.2.3.4").unwrap(),
            Ip("1.2.3.4".parse().unwrap())
        );
        assert_eq!(
            parse_address("*.A.com").unwrap(),
            Wildcard("*.a.com".into())
        );
        assert_eq!(
            parse_address("1.2.3.4:80").unwrap(),
            Exact("1.2.3.4:80".into())
        );
        assert_eq!(
            parse_address("dotpattern.test.").unwrap(),
            Exact("dotpattern.test".into())
        );
        assert_eq!(parse_address("").unwrap(), Exact("".into()));
        for (bad, why) in [
            ("geoip:", "empty GeoIP country code"),
            ("geosite:", "empty GeoSite name"),
            ("geosite: @cn", "empty GeoSite name"),
            ("suffix:", "empty domain suffix"),
        ] {
            assert_eq!(parse_address(bad), Err(why.into()), "{bad}");
        }
    }

    #[test]
    fn geosite_name_and_attributes_split() {
        let s = |n: &str, a: &[&str]| (n.to_string(), a.iter().map(|x| x.to_string()).collect());
        assert_eq!(split_geosite_name("pornhub"), s("pornhub", &[]));
        assert_eq!(split_geosite_name("xiaomi@cn"), s("xiaomi", &["cn"]));
        assert_eq!(split_geosite_name(" google @jp "), s("google", &["jp"]));
        assert_eq!(
            split_geosite_name("netflix@jp@kr"),
            s("netflix", &["jp", "kr"])
        );
        assert_eq!(
            split_geosite_name("netflix @xixi    @haha "),
            s("netflix", &["xixi", "haha"])
        );
        assert_eq!(split_geosite_name(""), s("", &[]));
    }

    #[test]
    fn hijack_is_an_ip_literal() {
        assert_eq!(parse_hijack("8.8.8.8"), Some("8.8.8.8".parse().unwrap()));
        assert_eq!(
            parse_hijack("2606:4700::1"),
            Some("2606:4700::1".parse().unwrap())
        );
        for bad in ["example.com", "[::1]", "fe80::1%eth0", "1.2.3.4:53"] {
            assert_eq!(parse_hijack(bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let pieces = [
            "(", ")", ",", "#", "\n", "\r", " ", "a", "_", "*", "/", "-", "é", "\u{0}", "xn--",
            ".", ":", "@", "geoip:", "geosite:", "suffix:", "tcp", "0", "65536", "::",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            if let Ok(rules) = parse_text(&s) {
                for r in rules {
                    let _ = parse_address(&r.address);
                    let _ = parse_proto_port(&r.proto_port);
                    let _ = parse_hijack(&r.hijack);
                }
            }
            let _ = parse_address(&s);
            let _ = parse_proto_port(&s);
        }
    }
}
