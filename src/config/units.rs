//! Value syntaxes the official config borrows from Go: durations (`time.ParseDuration`),
//! booleans (`strconv.ParseBool`), bandwidths (`utils.StringToBps`), listen addresses and
//! port unions. Each parser returns a reason without the key; the caller adds the key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::proto::PortSet;

/// Parse a Go duration: a sequence of decimal numbers, each with an optional fraction and a
/// unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `30s`, `1m30s`, `1.5h`, `500ms`.
/// A lone `0` needs no unit. Negative durations are refused (no key takes one).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("invalid duration {text:?} (expected e.g. \"30s\", \"1m30s\", \"500ms\")");
    let mut s = text.trim();
    let negative = s.starts_with('-');
    s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    // Go's limit: an i64 of nanoseconds.
    const MAX_NANOS: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    while !s.is_empty() {
        let (int, rest) = split_digits(s);
        let (frac, rest) = match rest.strip_prefix('.') {
            Some(r) => split_digits(r),
            None => ("", rest),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "missing unit in duration {text:?} (use ns, us, ms, s, m or h)"
                ))
            }
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in duration {text:?} (use ns, us, ms, s, m or h)"
                ))
            }
        };
        let too_long = || format!("duration {text:?} is too long");
        let mut value: u128 = 0;
        for d in int.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(d - b'0')))
                .filter(|&v| v <= MAX_NANOS)
                .ok_or_else(too_long)?;
        }
        value = value.checked_mul(scale).ok_or_else(too_long)?;
        // Digits past nanosecond precision cannot change the result; Go drops them too.
        let mut place = scale;
        for d in frac.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            value += u128::from(d - b'0') * place;
        }
        total = total
            .checked_add(value)
            .filter(|&v| v <= MAX_NANOS)
            .ok_or_else(too_long)?;
        s = rest;
    }
    if negative && total != 0 {
        return Err(format!("duration {text:?} is negative"));
    }
    // total <= i64::MAX, so it fits in a u64.
    Ok(Duration::from_nanos(
        u64::try_from(total).map_err(|_| invalid())?,
    ))
}

fn split_digits(s: &str) -> (&str, &str) {
    s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()))
}

/// Go `strconv.ParseBool`: `1 t T TRUE true True` and `0 f F FALSE false False`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parse a SHA-256 certificate pin as Hysteria2's `tls.pinSHA256`: 64 hex digits, either
/// case, with any ':' or '-' separators ignored (`openssl x509 -fingerprint -sha256` prints
/// the ':' form).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let bad = || {
        format!(
            "certificate pin {pin:?} is not a SHA-256 digest (64 hex digits, ':' and '-' allowed)"
        )
    };
    let mut out = [0u8; 32];
    let mut digits = pin
        .chars()
        .filter(|&c| c != ':' && c != '-')
        .map(|c| c.to_digit(16));
    for byte in &mut out {
        let hi = digits.next().flatten().ok_or_else(bad)?;
        let lo = digits.next().flatten().ok_or_else(bad)?;
        // Both digits are < 16, so this fits in a byte.
        *byte = u8::try_from(hi << 4 | lo).map_err(|_| bad())?;
    }
    if digits.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// Parse a bandwidth such as `100 mbps`, `1g`, `500kbps` or `12345` into **bytes** per
/// second. Units are SI bits per second (b, k, m, g, t, each optionally followed by `b` or
/// `bps`), any case, with or without a space; a bare number is bits per second. The result
/// is the bit rate divided by 8, rounded down.
pub fn parse_bandwidth(text: &str) -> Result<u64, String> {
    let bits = quantity(
        text,
        "bandwidth",
        "100 mbps",
        "b, k, m, g or t, optionally followed by bps",
        |unit| match unit {
            "" | "b" | "bps" => Some(1),
            "k" | "kb" | "kbps" => Some(1_000),
            "m" | "mb" | "mbps" => Some(1_000_000),
            "g" | "gb" | "gbps" => Some(1_000_000_000),
            "t" | "tb" | "tbps" => Some(1_000_000_000_000),
            _ => None,
        },
    )?;
    Ok(bits / 8)
}

/// Parse a size in bytes such as `512MiB`, `2 GiB`, `64KB` or `1048576`: a whole number and
/// an optional unit, any case. `k`/`kb`, `m`/`mb`, `g`/`gb`, `t`/`tb` are powers of 1000;
/// `ki`/`kib`, `mi`/`mib`, `gi`/`gib`, `ti`/`tib` powers of 1024; `b` or none is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    quantity(
        text,
        "size",
        "512MiB",
        "B, KB, MB, GB, TB or KiB, MiB, GiB, TiB",
        |unit| match unit {
            "" | "b" => Some(1),
            "k" | "kb" => Some(1_000),
            "m" | "mb" => Some(1_000_000),
            "g" | "gb" => Some(1_000_000_000),
            "t" | "tb" => Some(1_000_000_000_000),
            "ki" | "kib" => Some(1 << 10),
            "mi" | "mib" => Some(1 << 20),
            "gi" | "gib" => Some(1 << 30),
            "ti" | "tib" => Some(1 << 40),
            _ => None,
        },
    )
}

/// A whole number and a unit (any case, spaces allowed between), times what `scale` says
/// the unit is worth. `what`, `example` and `units` word the errors.
fn quantity(
    text: &str,
    what: &str,
    example: &str,
    units: &str,
    scale: impl Fn(&str) -> Option<u64>,
) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = split_digits(&lower);
    if digits.is_empty() {
        return Err(format!(
            "invalid {what} {text:?} (expected a whole number and a unit, e.g. \"{example}\")"
        ));
    }
    let too_large = || format!("{what} {text:?} is too large");
    let value: u64 = digits.parse().map_err(|_| too_large())?;
    let unit = unit.trim();
    let scale = scale(unit)
        .ok_or_else(|| format!("unknown unit {unit:?} in {what} {text:?} (use {units})"))?;
    value.checked_mul(scale).ok_or_else(too_large)
}

/// Parse `host:port` where host is empty (all addresses, dual-stack: `[::]`), an IPv4
/// literal, a bracketed IPv6 literal, or `localhost`. Host names are not resolved: a config
/// check must not depend on DNS.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let s = text.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("missing ']' in address {text:?}"));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!(
                "missing port in address {text:?} (e.g. \"[{host}]:443\")"
            ));
        };
        (host, port)
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "missing port in address {text:?} (e.g. \":443\" for all addresses)"
            ));
        };
        if host.contains(':') {
            return Err(format!(
                "IPv6 addresses need brackets: \"[{host}]:{port}\", not {text:?}"
            ));
        }
        (host, port)
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid port {port:?} in address {text:?} (expected 0 to 65535)"))?;
    let ip = if host.is_empty() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| {
            format!("{host:?} is not an IP address (host names are not resolved here)")
        })?
    };
    Ok(SocketAddr::new(ip, port))
}

/// The ports of port hopping (`20000-50000`, `443,8443`: the reference's port union, in a
/// client's `server` or a server's `listen`), sorted, each once; port 0 is refused.
pub fn hop_ports(text: &str) -> Result<Vec<u16>, String> {
    let ports = PortSet::parse(text)?.ports();
    if ports.first() == Some(&0) {
        return Err(format!("{text:?}: port 0 cannot be used"));
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_go() {
        let ok = |s: &str, nanos: u64| {
            assert_eq!(parse_duration(s), Ok(Duration::from_nanos(nanos)), "{s}")
        };
        ok("0", 0);
        ok("30s", 30_000_000_000);
        ok("1m30s", 90_000_000_000);
        ok("500ms", 500_000_000);
        ok("2h", 7_200_000_000_000);
        ok("1.5h", 5_400_000_000_000);
        ok(".5s", 500_000_000);
        ok("1.s", 1_000_000_000);
        ok("10us", 10_000);
        ok("10µs", 10_000);
        ok("7ns", 7);
        ok("1h2m3s4ms5us6ns", 3_723_004_005_006);
        ok("+3s", 3_000_000_000);
        ok("-0s", 0);
        ok("1.0000000001s", 1_000_000_000);
        for bad in [
            "",
            "s",
            "30",
            "1x",
            "1.2.3s",
            ".s",
            "-1s",
            "1 s",
            "9999999999h",
            "1e3s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn go_bools() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Some(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Some(false));
        }
        for x in ["", "yes", "tRUE", "2", " 1"] {
            assert_eq!(parse_go_bool(x), None);
        }
    }

    #[test]
    fn size_unit_table() {
        let cases: &[(&str, u64)] = &[
            ("1048576", 1_048_576),
            ("512MiB", 512 << 20),
            ("512 mib", 512 << 20),
            ("2 GiB", 2 << 30),
            ("2gi", 2 << 30),
            ("64KB", 64_000),
            ("64k", 64_000),
            ("64KiB", 65_536),
            ("1 TB", 1_000_000_000_000),
            ("1tib", 1 << 40),
            ("10 B", 10),
        ];
        for &(text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MiB", "1.5GiB", "-1", "12 parsecs", "99999999999 TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bandwidth_unit_table() {
        let cases: &[(&str, u64)] = &[
            ("100 mbps", 12_500_000),
            ("100mbps", 12_500_000),
            ("100 Mbps", 12_500_000),
            ("100 MB", 12_500_000),
            ("100m", 12_500_000),
            ("1g", 125_000_000),
            ("1 Gbps", 125_000_000),
            ("1gb", 125_000_000),
            ("500kbps", 62_500),
            ("500 k", 62_500),
            ("500kb", 62_500),
            ("12345", 1543),
            ("12345 bps", 1543),
            ("12345b", 1543),
            ("2t", 250_000_000_000),
            ("2 tbps", 250_000_000_000),
            ("0", 0),
            ("0 mbps", 0),
            (" 8 b ", 1),
        ];
        for &(text, bytes) in cases {
            assert_eq!(parse_bandwidth(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "mbps",
            "1.5 gbps",
            "-1m",
            "10 mibps",
            "10 x",
            "99999999999999999999",
            "20000000t",
        ] {
            assert!(parse_bandwidth(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn socket_addrs() {
        let ok = |s: &str, want: &str| {
            assert_eq!(parse_socket_addr(s), Ok(want.parse().unwrap()), "{s}")
        };
        ok(":443", "[::]:443");
        ok("0.0.0.0:443", "0.0.0.0:443");
        ok("127.0.0.1:8443", "127.0.0.1:8443");
        ok("[::1]:8443", "[::1]:8443");
        ok("[::]:1", "[::]:1");
        ok("localhost:80", "127.0.0.1:80");
        for bad in [
            "443",
            "::1:443",
            "[::1]",
            "[::1:443",
            "1.2.3.4:65536",
            "1.2.3.4:https",
            "example.com:443",
            ":",
            "1.2.3.4:",
        ] {
            assert!(parse_socket_addr(bad).is_err(), "{bad:?} should fail");
        }
    }
}
