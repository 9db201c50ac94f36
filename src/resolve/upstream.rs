//! The `resolver` config as a lookup backend: nothing for `system`, a hickory-resolver aimed
//! at the one configured server for `udp`, `tcp`, `tls` and `https`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolveHosts,
    ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::Backend;
use crate::config::{self, DnsUpstream};

/// Tries of one query on error (the official server's); hickory counts the retries.
const TRIES: usize = 2;

/// What the resolver thread builds, checked on the caller's thread first.
pub(super) enum Plan {
    System,
    Dns {
        server: SocketAddr,
        protocol: ProtocolConfig,
        tls: Option<Box<rustls::ClientConfig>>,
        timeout: Duration,
    },
}

impl Plan {
    /// Errors name the config key.
    pub(super) fn new(cfg: &config::Resolver) -> Result<Plan, String> {
        let (kind, up) = match cfg {
            config::Resolver::System => return Ok(Plan::System),
            config::Resolver::Udp(u) => ("udp", u),
            config::Resolver::Tcp(u) => ("tcp", u),
            config::Resolver::Tls(u) => ("tls", u),
            config::Resolver::Https(u) => ("https", u),
        };
        let key = format!("resolver.{kind}.addr");
        let (host, port, path) = if kind == "https" {
            split_url(&up.addr).map_err(|e| format!("{key}: {e}"))?
        } else {
            let (h, p) = split_host_port(&up.addr).map_err(|e| format!("{key}: {e}"))?;
            (h, p, String::new())
        };
        let server = server_addr(&host, port).map_err(|e| format!("{key}: {e}"))?;
        let server_name = || -> Arc<str> { Arc::from(up.sni.clone().unwrap_or(host.clone())) };
        let protocol = match kind {
            "udp" => ProtocolConfig::Udp,
            "tcp" => ProtocolConfig::Tcp,
            "tls" => ProtocolConfig::Tls {
                server_name: server_name(),
            },
            _ => ProtocolConfig::Https {
                server_name: server_name(),
                path: Arc::from(path),
            },
        };
        let tls = match kind {
            "tls" | "https" => {
                let tls = tls_config(up).map_err(|e| format!("resolver.{kind}.insecure: {e}"))?;
                Some(Box::new(tls))
            }
            _ => None,
        };
        Ok(Plan::Dns {
            server,
            protocol,
            tls,
            timeout: up.timeout,
        })
    }

    /// The backend for at most `in_flight` names at once; call inside the resolver's runtime.
    pub(super) fn build(self, in_flight: usize) -> Result<Backend, String> {
        let Plan::Dns {
            server,
            protocol,
            tls,
            timeout,
        } = self
        else {
            return Ok(Backend::System);
        };
        let mut conn = ConnectionConfig::new(protocol);
        conn.port = server.port();
        let ns = NameServerConfig::new(server.ip(), true, vec![conn]);
        let mut builder = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        let o = builder.options_mut();
        o.timeout = timeout;
        o.attempts = TRIES - 1;
        o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // As the official upstream resolvers: the server is asked, not /etc/hosts.
        o.use_hosts_file = ResolveHosts::Never;
        // Queries in flight over one connection to the upstream: A and AAAA of every name.
        o.max_active_requests = 2 * in_flight + 16;
        o.num_concurrent_reqs = 1;
        if let Some(tls) = tls {
            builder = builder.with_tls_config(*tls);
        }
        let resolver = builder
            .build()
            .map_err(|e| format!("resolver: cannot set up the {server} upstream: {e}"))?;
        Ok(Backend::Dns {
            resolver: Box::new(resolver),
            deadline: deadline(timeout),
        })
    }
}

/// A hickory resolver asking the server `cfg` names, for lookups other than addresses (ACME
/// DNS-01's SOA and TXT queries); `None` for `system`. Call inside a tokio runtime.
pub(crate) fn dns_resolver(
    cfg: &config::Resolver,
) -> Result<Option<hickory_resolver::TokioResolver>, String> {
    match Plan::new(cfg)?.build(1)? {
        Backend::System => Ok(None),
        Backend::Dns { resolver, .. } => Ok(Some(*resolver)),
    }
}

/// How long one lookup may take in all: every try of its queries, with a little slack.
pub(super) fn deadline(timeout: Duration) -> Duration {
    timeout * TRIES as u32 + Duration::from_millis(250)
}

/// `host:port` as the config stores it (an IPv6 literal in brackets).
fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} has no port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("bad port in {addr:?}"))?;
    Ok((host.to_owned(), port))
}

/// Host, port (443 when absent) and path (`/` when absent) of an `https://` URL.
fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?} is not an https:// URL"))?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if let Some(v6) = authority.strip_prefix('[') {
        let (ip, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed ["))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port in {url:?}"))?,
            None => 443,
        };
        return Ok((ip.to_owned(), port, path));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_owned(),
            p.parse().map_err(|_| format!("bad port in {url:?}"))?,
            path,
        )),
        None => Ok((authority.to_owned(), 443, path)),
    }
}

/// The upstream's address: `host` itself when it is an IP, else its first address from the
/// system resolver (looked up once, at start).
fn server_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    if host.is_empty() {
        return Err("no host".into());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// TLS for `tls` and `https`: the system's CA certificates, or no certificate check with
/// `insecure` (the handshake signature is still verified).
fn tls_config(up: &DnsUpstream) -> Result<rustls::ClientConfig, String> {
    crate::quic::tls::tcp_client_tls(up.insecure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_addresses() {
        assert_eq!(
            split_url("https://1.1.1.1/dns-query").unwrap(),
            ("1.1.1.1".into(), 443, "/dns-query".into())
        );
        assert_eq!(
            split_url("https://dns.example:8443/q?x=1").unwrap(),
            ("dns.example".into(), 8443, "/q?x=1".into())
        );
        assert_eq!(
            split_url("https://[2001:db8::1]:444").unwrap(),
            ("2001:db8::1".into(), 444, "/".into())
        );
        assert!(split_url("http://x/").is_err());
        assert!(split_url("https://x:y/").is_err());
        assert_eq!(split_host_port("[::1]:53").unwrap(), ("::1".into(), 53));
        assert_eq!(
            split_host_port("dns.example:5353").unwrap(),
            ("dns.example".into(), 5353)
        );
        assert_eq!(
            deadline(Duration::from_secs(2)),
            Duration::from_millis(4250)
        );
    }

    #[test]
    fn plans_name_the_key() {
        let up = |addr: &str| DnsUpstream {
            addr: addr.into(),
            timeout: Duration::from_secs(2),
            sni: None,
            insecure: true,
        };
        assert!(matches!(
            Plan::new(&config::Resolver::System),
            Ok(Plan::System)
        ));
        match Plan::new(&config::Resolver::Tls(up("127.0.0.1:853"))) {
            Ok(Plan::Dns {
                server,
                protocol: ProtocolConfig::Tls { server_name },
                tls: Some(_),
                ..
            }) => {
                assert_eq!(server, "127.0.0.1:853".parse().unwrap());
                assert_eq!(&*server_name, "127.0.0.1");
            }
            _ => panic!("a tls plan"),
        }
        let e = Plan::new(&config::Resolver::Udp(up("dns.example")))
            .err()
            .expect("an upstream without a port fails");
        assert!(e.starts_with("resolver.udp.addr: "), "{e}");
        let e = Plan::new(&config::Resolver::Https(up("https://:443/")))
            .err()
            .expect("a URL without a host fails");
        assert!(e.starts_with("resolver.https.addr: "), "{e}");
    }
}
