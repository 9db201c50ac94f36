//! `hysteria2://` share URIs (reference §8.3; official `clientConfig.URI` / `parseURI`):
//!
//! `hysteria2://[auth@]host[:port]/?obfs=salamander&obfs-password=...&sni=...&insecure=1&pinSHA256=...#name`

use std::fmt;
use std::net::Ipv6Addr;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::error::{ConfigError, ErrorAt};
use super::server::{Obfs, DEFAULT_LISTEN_PORT, MIN_SALAMANDER_PASSWORD};
use super::units::{parse_go_bool, parse_pin};

/// What errors from [`parse_share_uri`] name as their origin. The URI itself is not
/// repeated: it usually holds a password.
const ORIGIN: &str = "share URI";

/// Go's `url.QueryEscape` keeps only these unescaped (and turns space into `+`).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Userinfo: Go's set for user names and passwords, except that `+` is escaped too, because
/// the official parser reads a literal `+` in userinfo as a space.
const USERINFO: &AsciiSet = &QUERY
    .remove(b'$')
    .remove(b'&')
    .remove(b',')
    .remove(b';')
    .remove(b'=');

/// A fragment (`#name`): Go also leaves these sub-delimiters alone there.
const FRAGMENT: &AsciiSet = &QUERY.remove(b'!').remove(b'(').remove(b')').remove(b'*');

/// A parsed share URI: what a client needs to reach one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareUri {
    /// The `auth@` part, percent-decoded: a password, or `user:pass` for a `userpass`
    /// server. `None` when absent or empty.
    pub auth: Option<String>,
    /// Host name or IP address, without brackets.
    pub host: String,
    /// Port; 443 when absent; with port hopping, the lowest of `ports`.
    pub port: u16,
    /// Port hopping: the port list or range the authority gives instead of one port
    /// (`host:20000-50000`), or the `mport` parameter, which replaces it.
    pub ports: Option<String>,
    /// `obfs` and `obfs-password`.
    pub obfs: Obfs,
    /// `sni`: TLS server name to send instead of `host`.
    pub sni: Option<String>,
    /// `insecure`: do not verify the server's certificate chain.
    pub insecure: bool,
    /// `pinSHA256`: SHA-256 of the server's leaf certificate (DER).
    pub pin_sha256: Option<[u8; 32]>,
    /// The `#name` fragment, percent-decoded: a label for humans.
    pub name: Option<String>,
}

impl ShareUri {
    /// `host:port` as a dial string, with brackets around IPv6 literals.
    pub fn server_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        origin: ORIGIN.to_owned(),
        at: ErrorAt::Key(key.to_owned()),
        reason: reason.into(),
    }
}

/// Parse `hysteria2://...` or `hy2://...`.
pub fn parse_share_uri(s: &str) -> Result<ShareUri, ConfigError> {
    let s = s.trim();
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(err("scheme", "expected hysteria2://... or hy2://..."));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "hysteria2" | "hy2" => {}
        "hysteria2+realm" => return Err(err("scheme", "realm URIs are not supported")),
        other => return Err(err("scheme", format!("{other:?} is not hysteria2 or hy2"))),
    }
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    // The path, if any, carries nothing.
    let authority = rest.split('/').next().unwrap_or("");
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let auth = match userinfo {
        Some(u) => Some(decode(u, false).ok_or_else(|| err("auth", "invalid percent-encoding"))?),
        None => None,
    }
    .filter(|a| !a.is_empty());
    let (host, port, authority_ports) = split_host_port(hostport)?;

    let mut params: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k, true).ok_or_else(|| err("query", "invalid percent-encoding"))?;
        let v = decode(v, true).ok_or_else(|| err(&k, "invalid percent-encoding"))?;
        params.push((k, v));
    }
    // Like Go's `url.Values.Get`: the first value wins.
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };

    let obfs = match get("obfs").to_ascii_lowercase().as_str() {
        "" | "plain" => Obfs::Plain,
        "salamander" => {
            let password = get("obfs-password").to_owned();
            if password.len() < MIN_SALAMANDER_PASSWORD {
                return Err(err(
                    "obfs-password",
                    format!(
                        "must be at least {MIN_SALAMANDER_PASSWORD} bytes (got {})",
                        password.len()
                    ),
                ));
            }
            Obfs::Salamander { password }
        }
        "gecko" => {
            return Err(err(
                "obfs",
                "gecko obfuscation is not supported; use salamander",
            ))
        }
        other => {
            return Err(err(
                "obfs",
                format!("unsupported obfuscation type {other:?} (use salamander)"),
            ))
        }
    };
    let insecure = match get("insecure") {
        "" => false,
        v => parse_go_bool(v).ok_or_else(|| {
            err(
                "insecure",
                format!("expected 1, 0, true or false, got {v:?}"),
            )
        })?,
    };
    let pin_sha256 = match get("pinSHA256") {
        "" => None,
        v => Some(parse_pin(v).map_err(|e| err("pinSHA256", e))?),
    };
    let sni = Some(get("sni").to_owned()).filter(|s| !s.is_empty());
    let (port, ports) = match get("mport") {
        "" => (port, authority_ports),
        list => (lowest_port("mport", list)?, Some(list.to_owned())),
    };
    let name = match fragment {
        Some(f) => Some(decode(f, false).ok_or_else(|| err("name", "invalid percent-encoding"))?),
        None => None,
    }
    .filter(|n| !n.is_empty());
    Ok(ShareUri {
        auth,
        host,
        port,
        ports,
        obfs,
        sni,
        insecure,
        pin_sha256,
        name,
    })
}

/// The lowest port of a hopping list, which must be valid and hold no port 0.
fn lowest_port(key: &str, list: &str) -> Result<u16, ConfigError> {
    let ports = super::units::hop_ports(list).map_err(|e| err(key, e))?;
    ports
        .first()
        .copied()
        .ok_or_else(|| err(key, format!("{list:?}: no port")))
}

/// Host, port and, for a port list or range, its text.
fn split_host_port(hostport: &str) -> Result<(String, u16, Option<String>), ConfigError> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| err("host", "missing ']' after an IPv6 address"))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(err("host", format!("{host:?} is not an IPv6 address")));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| err("port", format!("unexpected {p:?} after the address")))?,
            ),
        };
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(err(
                    "host",
                    "IPv6 addresses need brackets, e.g. [2001:db8::1]:443",
                ))
            }
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(err("host", "missing"));
    }
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"%\\/@?#".contains(&b))
    {
        return Err(err(
            "host",
            format!("{host:?} is not a host name or IP address"),
        ));
    }
    let (port, ports) = match port {
        None | Some("") => (DEFAULT_LISTEN_PORT, None),
        Some(p) if p.contains([',', '-']) => (lowest_port("port", p)?, Some(p.to_owned())),
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(err("port", format!("{p:?} is not a port (1 to 65535)"))),
            Ok(n) => (n, None),
        },
    };
    Ok((host.to_owned(), port, ports))
}

/// Strict percent-decoding to UTF-8: `%` must be followed by two hex digits. In a query
/// component `+` is a space, as in Go's `url.QueryUnescape`.
fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query_escape(s: &str) -> String {
    utf8_percent_encode(s, QUERY)
        .to_string()
        .replace("%20", "+")
}

impl fmt::Display for ShareUri {
    /// The official layout: `hysteria2://auth@host:port/?k=v&...` with the query keys sorted
    /// (as Go's `url.Values.Encode` does) and `insecure=1` only when set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("hysteria2://")?;
        if let Some(auth) = &self.auth {
            match auth.split_once(':') {
                Some((user, pass)) => write!(
                    f,
                    "{}:{}@",
                    utf8_percent_encode(user, USERINFO),
                    utf8_percent_encode(pass, USERINFO)
                )?,
                None => write!(f, "{}@", utf8_percent_encode(auth, USERINFO))?,
            }
        }
        match &self.ports {
            // The official form: the port list in the authority.
            Some(ports) if self.host.contains(':') => write!(f, "[{}]:{ports}/", self.host)?,
            Some(ports) => write!(f, "{}:{ports}/", self.host)?,
            None => write!(f, "{}/", self.server_addr())?,
        }
        let mut query: Vec<(&str, String)> = Vec::new();
        if self.insecure {
            query.push(("insecure", "1".to_owned()));
        }
        if let Obfs::Salamander { password } = &self.obfs {
            query.push(("obfs", "salamander".to_owned()));
            query.push(("obfs-password", query_escape(password)));
        }
        if let Some(pin) = &self.pin_sha256 {
            query.push((
                "pinSHA256",
                pin.iter().map(|b| format!("{b:02x}")).collect(),
            ));
        }
        if let Some(sni) = &self.sni {
            query.push(("sni", query_escape(sni)));
        }
        for (i, (k, v)) in query.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        if let Some(name) = &self.name {
            write!(f, "#{}", utf8_percent_encode(name, FRAGMENT))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn pin() -> [u8; 32] {
        parse_pin(PIN).unwrap()
    }

    #[test]
    fn official_example() {
        let s = "hysteria2://pass@example.com:443/?insecure=1&obfs=salamander&obfs-password=xyz1&sni=real.example.com";
        let u = parse_share_uri(s).unwrap();
        assert_eq!(u.auth.as_deref(), Some("pass"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, 443);
        assert_eq!(
            u.obfs,
            Obfs::Salamander {
                password: "xyz1".into()
            }
        );
        assert_eq!(u.sni.as_deref(), Some("real.example.com"));
        assert!(u.insecure);
        assert_eq!(u.pin_sha256, None);
        assert_eq!(u.to_string(), s);
    }

    #[test]
    fn port_hopping() {
        let u = parse_share_uri("hysteria2://a@example.com:20000-20010,30000/").unwrap();
        assert_eq!(u.port, 20000);
        assert_eq!(u.ports.as_deref(), Some("20000-20010,30000"));
        assert_eq!(
            u.to_string(),
            "hysteria2://a@example.com:20000-20010,30000/"
        );
        let u = parse_share_uri("hy2://a@[2001:db8::1]:443/?mport=5000-5010").unwrap();
        assert_eq!((u.port, u.ports.as_deref()), (5000, Some("5000-5010")));
        assert_eq!(u.to_string(), "hysteria2://a@[2001:db8::1]:5000-5010/");
        for bad in ["hy2://a@h:1-x/", "hy2://a@h/?mport=0", "hy2://a@h:5-/"] {
            assert!(parse_share_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trip() {
        let u = ShareUri {
            auth: Some("p@ss w/rd+%:x".into()),
            host: "example.com".into(),
            port: 8443,
            ports: None,
            obfs: Obfs::Salamander {
                password: "s3cret &=+?".into(),
            },
            sni: Some("real.example.com".into()),
            insecure: true,
            pin_sha256: Some(pin()),
            name: Some("my server #1".into()),
        };
        let text = u.to_string();
        assert!(text.starts_with("hysteria2://p%40ss%20w%2Frd%2B%25:x@example.com:8443/?insecure=1&obfs=salamander&obfs-password=s3cret+%26%3D%2B%3F&pinSHA256="), "{text}");
        assert_eq!(parse_share_uri(&text).unwrap(), u);

        let plain = ShareUri {
            auth: Some("pass".into()),
            host: "1.2.3.4".into(),
            port: 443,
            ports: None,
            obfs: Obfs::Plain,
            sni: None,
            insecure: false,
            pin_sha256: None,
            name: None,
        };
        assert_eq!(plain.to_string(), "hysteria2://pass@1.2.3.4:443/");
        assert_eq!(parse_share_uri(&plain.to_string()).unwrap(), plain);
    }

    #[test]
    fn userpass_and_ipv6() {
        let u = parse_share_uri(&format!(
            "hy2://alice:s%3Acret@[2001:db8::1]:8443/?insecure=true&pinSHA256={}&sni=a.example",
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        ))
        .unwrap();
        assert_eq!(u.auth.as_deref(), Some("alice:s:cret"));
        assert_eq!(u.host, "2001:db8::1");
        assert_eq!(u.port, 8443);
        assert_eq!(u.server_addr(), "[2001:db8::1]:8443");
        assert!(u.insecure);
        assert_eq!(u.pin_sha256, Some(pin()));
        let text = u.to_string();
        assert_eq!(
            text,
            format!("hysteria2://alice:s%3Acret@[2001:db8::1]:8443/?insecure=1&pinSHA256={PIN}&sni=a.example")
        );
        assert_eq!(parse_share_uri(&text).unwrap(), u);

        let bare = parse_share_uri("hysteria2://[::1]").unwrap();
        assert_eq!(
            (bare.host.as_str(), bare.port, bare.auth),
            ("::1", 443, None)
        );
    }

    #[test]
    fn defaults_and_go_bools() {
        let u = parse_share_uri("HY2://secret@example.com").unwrap();
        assert_eq!((u.port, u.insecure, &u.obfs), (443, false, &Obfs::Plain));
        for (v, want) in [
            ("1", true),
            ("t", true),
            ("TRUE", true),
            ("0", false),
            ("False", false),
        ] {
            let u = parse_share_uri(&format!("hysteria2://a@h/?insecure={v}")).unwrap();
            assert_eq!(u.insecure, want, "{v}");
        }
        // A literal '+' in userinfo is a plus (RFC 3986), a '+' in the query a space.
        let u = parse_share_uri("hysteria2://a+b@h/?sni=x+y").unwrap();
        assert_eq!(u.auth.as_deref(), Some("a+b"));
        assert_eq!(u.sni.as_deref(), Some("x y"));
    }

    #[test]
    fn errors_name_the_part() {
        let key = |s: &str| parse_share_uri(s).unwrap_err().key().map(str::to_owned);
        assert_eq!(key("https://a@h"), Some("scheme".into()));
        assert_eq!(key("hysteria2+realm://t@r/realm"), Some("scheme".into()));
        assert_eq!(key("hysteria2://a@h:1000-"), Some("port".into()));
        assert_eq!(key("hysteria2://a@h:443,x"), Some("port".into()));
        assert_eq!(key("hysteria2://a@h/?mport=1-2-3"), Some("mport".into()));
        assert_eq!(key("hysteria2://a@h:0"), Some("port".into()));
        assert_eq!(key("hysteria2://a@h:99999"), Some("port".into()));
        assert_eq!(key("hysteria2://a@"), Some("host".into()));
        assert_eq!(key("hysteria2://a@::1:443"), Some("host".into()));
        assert_eq!(key("hysteria2://a@[zz]:443"), Some("host".into()));
        assert_eq!(key("hysteria2://a%zz@h"), Some("auth".into()));
        assert_eq!(
            key("hysteria2://a@h/?insecure=yes"),
            Some("insecure".into())
        );
        assert_eq!(
            key("hysteria2://a@h/?pinSHA256=abc"),
            Some("pinSHA256".into())
        );
        assert_eq!(key("hysteria2://a@h/?obfs=gecko"), Some("obfs".into()));
        assert_eq!(
            key("hysteria2://a@h/?obfs=salamander&obfs-password=ab"),
            Some("obfs-password".into())
        );
        let e = parse_share_uri("hysteria2://topsecret@h:1-x").unwrap_err();
        assert!(!e.to_string().contains("topsecret"), "{e}");
        assert!(e.to_string().starts_with("share URI: port: "), "{e}");
    }
}
