//! DNS-01 (RFC 8555 §8.4): for each domain, the TXT record `_acme-challenge.<domain>` holds
//! the key authorization's digest, written through the DNS provider's API (dns-update) in
//! the domain's zone, and the CA is told once the record can be seen. Every record written
//! is removed when the order ends, however it ends.
//!
//! The zone is found as certmagic and lego find it: the first name up from the record's
//! that has an SOA record in its answer (or `acme.dns.config.zone`). Those lookups and the
//! propagation check ask the server's `resolver` (the system's name servers for `system`),
//! with the cache bypassed so that a record is seen as soon as it is served.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use quelay_acme_dns::{Provider, Txt};

use crate::config::{self, AcmeDns, DnsProvider};

/// How often the record is looked for after it is written.
const PROPAGATION_INTERVAL: Duration = Duration::from_secs(2);
/// How long the record may take to be seen (certmagic's default `PropagationTimeout`).
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The TTL of the challenge records: short, as they live for one order (Namecheap's least).
const RECORD_TTL: u32 = 60;
/// Longest one request to the provider may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(30);
/// The label RFC 8555 §8.4 puts the record under.
const LABEL: &str = "_acme-challenge";
/// Where Namecheap's client IP is found when `namecheap_client_ip` is not given.
const PUBLIC_IP_URL: &str = "https://api.ipify.org";
/// The resolver configuration file `resolver: system` reads.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The name of the challenge record of `domain` (a wildcard's is its base name's).
pub fn record_name(domain: &str) -> String {
    let base = domain.strip_prefix("*.").unwrap_or(domain);
    format!(
        "{LABEL}.{}",
        base.trim_end_matches('.').to_ascii_lowercase()
    )
}

/// The zone `name` is in: the first of `name` and its parents (down to two labels) for
/// which `has_soa` finds an SOA record in the answer. `has_soa` gets a name without the
/// final dot and answers `Ok(false)` when there is none (NODATA, NXDOMAIN).
pub async fn find_zone<F, Fut>(name: &str, mut has_soa: F) -> Result<String, String>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let mut candidate = name.as_str();
    // A single label is a top-level domain: never the zone of a certificate's name.
    while candidate.contains('.') {
        match has_soa(candidate.to_owned()).await {
            Ok(true) => return Ok(candidate.to_owned()),
            Ok(false) => {}
            Err(e) => return Err(format!("looking for the SOA of {candidate}: {e}")),
        }
        candidate = candidate.split_once('.').map_or("", |(_, parent)| parent);
    }
    Err(format!(
        "no zone found for {name}: no SOA record at it or any parent (set \
         acme.dns.config.zone)"
    ))
}

/// The name servers of a resolv.conf (port 53), in order.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        // A scoped IPv6 address (`fe80::1%eth0`) keeps its address, not its scope.
        .filter_map(|ip| ip.split('%').next()?.parse().ok())
        .collect()
}

/// DNS-01 for one server: the provider, and where lookups go.
pub struct Solver {
    cfg: AcmeDns,
    resolver: config::Resolver,
}

impl Solver {
    pub fn new(cfg: &AcmeDns, resolver: &config::Resolver) -> Solver {
        Solver {
            cfg: cfg.clone(),
            resolver: resolver.clone(),
        }
    }

    /// Prepares one order: the provider's client and a resolver. Call inside the runtime.
    pub async fn order(&self) -> Result<Order, String> {
        let provider = self.cfg.provider.name();
        let updater = updater(&self.cfg.provider)
            .await
            .map_err(|e| format!("acme.dns.config: {provider}: {e}"))?;
        let resolver = match crate::resolve::dns_resolver(&self.resolver)? {
            Some(r) => r,
            None => system_resolver()?,
        };
        Ok(Order {
            updater,
            resolver,
            provider,
            duckdns_name: match &self.cfg.provider {
                DnsProvider::DuckDns {
                    override_domain, ..
                } => Some(override_domain.clone()),
                _ => None,
            },
            zone: self.cfg.zone.clone(),
            written: Mutex::new(Vec::new()),
        })
    }
}

/// A TXT record written for an order.
#[derive(Clone, Debug)]
struct Written {
    /// The domain it proves, for messages.
    domain: String,
    /// Where it was written (the provider's name for it).
    name: String,
    zone: String,
    value: String,
}

/// The records of one order; [`Order::clean_up`] removes them.
pub struct Order {
    updater: Txt,
    resolver: TokioResolver,
    provider: &'static str,
    /// DuckDNS: the name it writes, when not the challenge's own (`duckdns_override_domain`);
    /// `None` for the other providers.
    duckdns_name: Option<Option<String>>,
    zone: Option<String>,
    /// Written and not yet removed; grows as challenges are presented.
    written: Mutex<Vec<Written>>,
}

impl Order {
    /// Writes the TXT record proving `domain` with `value` (the key authorization's digest)
    /// and returns once the resolver serves it.
    pub async fn present(&self, domain: &str, value: &str) -> Result<(), String> {
        let fail = |what: String| format!("acme.domains: {domain}: dns-01 challenge: {what}");
        let record = record_name(domain);
        let (name, zone) = match &self.duckdns_name {
            // DuckDNS has one zone and no use for it; the name is all it reads.
            Some(over) => (
                over.clone().unwrap_or_else(|| record.clone()),
                String::new(),
            ),
            None => {
                let zone = match &self.zone {
                    Some(z) => z.clone(),
                    None => find_zone(&record, |n| has_soa(&self.resolver, n))
                        .await
                        .map_err(fail)?,
                };
                (record.clone(), zone)
            }
        };
        let origin = if zone.is_empty() {
            name.as_str()
        } else {
            &zone
        };
        let written = if self.duckdns_name.is_some() {
            self.updater.set(&name, &[value], RECORD_TTL, origin).await
        } else {
            self.updater.add(&name, value, RECORD_TTL, origin).await
        };
        // Recorded before the answer is known: a write that failed late may still have landed.
        self.lock().push(Written {
            domain: domain.to_owned(),
            name: name.clone(),
            zone: zone.clone(),
            value: value.to_owned(),
        });
        written.map_err(|e| {
            fail(format!(
                "{} refused TXT {name} in zone {origin}: {e}",
                self.provider
            ))
        })?;
        tracing::info!(
            "acme: dns-01 for {domain}: TXT {name} written through {}; waiting until it is seen",
            self.provider
        );
        self.wait_visible(&record, value).await.map_err(fail)?;
        tracing::info!("acme: dns-01 for {domain}: TXT {record} is served");
        Ok(())
    }

    /// Polls TXT `name` until `value` is among its answers.
    async fn wait_visible(&self, name: &str, value: &str) -> Result<(), String> {
        let deadline = Instant::now() + PROPAGATION_TIMEOUT;
        loop {
            let seen = match txt_values(&self.resolver, name).await {
                Ok(values) if values.iter().any(|v| v == value) => return Ok(()),
                Ok(values) if values.is_empty() => "no TXT record".to_owned(),
                Ok(values) => format!("only {values:?}"),
                Err(e) => e,
            };
            if Instant::now() + PROPAGATION_INTERVAL > deadline {
                return Err(format!(
                    "TXT {name} did not show {value:?} within {PROPAGATION_TIMEOUT:?}; the \
                     resolver last answered: {seen}"
                ));
            }
            tokio::time::sleep(PROPAGATION_INTERVAL).await;
        }
    }

    /// Removes every record written; failures are logged, as the order's result stands.
    pub async fn clean_up(self) {
        let written = std::mem::take(&mut *self.lock());
        for w in written {
            let origin = if w.zone.is_empty() { &w.name } else { &w.zone };
            let removed = if self.duckdns_name.is_some() {
                self.updater.set(&w.name, &[], RECORD_TTL, origin).await
            } else {
                self.updater.remove(&w.name, &w.value, origin).await
            };
            match removed {
                Ok(()) => tracing::info!(
                    "acme: dns-01 for {}: TXT {} removed through {}",
                    w.domain,
                    w.name,
                    self.provider
                ),
                Err(e) => tracing::warn!(
                    "acme: dns-01 for {}: {} did not remove TXT {} {:?}: {e}",
                    w.domain,
                    self.provider,
                    w.name,
                    w.value
                ),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Written>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Order {
    /// An order dropped before [`Order::clean_up`] (its future cancelled) cannot remove
    /// records from here; it says which are left.
    fn drop(&mut self) {
        for w in self.lock().iter() {
            tracing::warn!(
                "acme: dns-01 for {}: TXT {} {:?} left in zone {} at {}",
                w.domain,
                w.name,
                w.value,
                w.zone,
                self.provider
            );
        }
    }
}

/// The provider's client for `p`.
async fn updater(p: &DnsProvider) -> Result<Txt, String> {
    let namecheap_ip;
    let rfc2136_key;
    let provider = match p {
        DnsProvider::Cloudflare { api_token } => Provider::Cloudflare {
            api_token: &api_token.0,
        },
        DnsProvider::DuckDns { api_token, .. } => Provider::DuckDns {
            api_token: &api_token.0,
        },
        DnsProvider::Gandi { api_token } => Provider::Gandi {
            api_token: &api_token.0,
        },
        DnsProvider::GoDaddy {
            api_key,
            api_secret,
        } => Provider::GoDaddy {
            api_key: &api_key.0,
            api_secret: &api_secret.0,
        },
        DnsProvider::Namecheap {
            api_key,
            api_user,
            client_ip,
        } => {
            namecheap_ip = match client_ip {
                Some(ip) => ip.to_string(),
                None => public_ip().await?,
            };
            Provider::Namecheap {
                api_user,
                api_key: &api_key.0,
                client_ip: &namecheap_ip,
            }
        }
        DnsProvider::Porkbun {
            api_key,
            secret_key,
        } => Provider::Porkbun {
            api_key: &api_key.0,
            secret_key: &secret_key.0,
        },
        DnsProvider::Vultr { api_token } => Provider::Vultr {
            api_token: &api_token.0,
        },
        DnsProvider::Pdns {
            api_url,
            api_key,
            server_id,
        } => Provider::Pdns {
            api_url,
            api_key: &api_key.0,
            server_id: server_id.as_deref(),
        },
        DnsProvider::Rfc2136 {
            server,
            key_name,
            key,
            algorithm,
        } => {
            use base64::Engine as _;
            rfc2136_key = base64::engine::general_purpose::STANDARD
                .decode(&key.0)
                .map_err(|e| format!("rfc2136_tsig_key: {e}"))?;
            Provider::Rfc2136 {
                server,
                key_name,
                key: rfc2136_key,
                algorithm,
            }
        }
    };
    Txt::new(provider, PROVIDER_TIMEOUT)
}

/// This host's public IP address as ipify sees it (Namecheap allows API calls by IP).
async fn public_ip() -> Result<String, String> {
    let got = tokio::task::spawn_blocking(|| -> Result<String, String> {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(PROVIDER_TIMEOUT))
            .build()
            .new_agent();
        let mut rsp = agent.get(PUBLIC_IP_URL).call().map_err(|e| e.to_string())?;
        rsp.body_mut()
            .with_config()
            .limit(64)
            .read_to_string()
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|e| {
        format!("namecheap_client_ip not set, and {PUBLIC_IP_URL} did not tell it: {e}")
    })?;
    let ip = got.trim();
    ip.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| format!("namecheap_client_ip not set, and {PUBLIC_IP_URL} answered {ip:?}"))
}

/// A resolver asking the system's name servers (resolv.conf; 127.0.0.1 when it lists
/// none, as glibc does).
fn system_resolver() -> Result<TokioResolver, String> {
    let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let mut servers = nameservers(&text);
    if servers.is_empty() {
        servers.push(IpAddr::from([127, 0, 0, 1]));
    }
    let config = ResolverConfig::from_name_servers(
        servers
            .into_iter()
            .map(NameServerConfig::udp_and_tcp)
            .collect(),
    );
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .build()
        .map_err(|e| format!("resolver: cannot use the system's name servers: {e}"))
}

/// The name with its final dot, so that no search domain is tried.
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Whether `name` has an SOA record of its own in the answer.
async fn has_soa(resolver: &TokioResolver, name: String) -> Result<bool, String> {
    let fq = fqdn(&name);
    resolver.clear_lookup_cache(fq.as_str(), RecordType::SOA);
    match resolver.lookup(fq.as_str(), RecordType::SOA).await {
        Ok(found) => Ok(found.answers().iter().any(|r| {
            r.record_type() == RecordType::SOA
                && r.name
                    .to_ascii()
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(&name)
        })),
        Err(e) if e.is_no_records_found() => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// The TXT values served at `name` (each record's strings joined), asked afresh.
async fn txt_values(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, String> {
    let fq = fqdn(name);
    resolver.clear_lookup_cache(fq.as_str(), RecordType::TXT);
    match resolver.lookup(fq.as_str(), RecordType::TXT).await {
        Ok(found) => Ok(found
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn walk(
        name: &str,
        zones: &[&str],
        broken: Option<&str>,
    ) -> (Result<String, String>, Vec<String>) {
        let zones: HashSet<String> = zones.iter().map(|z| z.to_string()).collect();
        let asked = std::cell::RefCell::new(Vec::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let found = rt.block_on(find_zone(name, |n| {
            asked.borrow_mut().push(n.clone());
            let answer = if Some(n.as_str()) == broken {
                Err("SERVFAIL".to_owned())
            } else {
                Ok(zones.contains(&n))
            };
            async move { answer }
        }));
        (found, asked.into_inner())
    }

    #[test]
    fn acme_dns01_zone_walk() {
        let (zone, asked) = walk(
            "_acme-challenge.www.a.example.",
            &["a.example", "example"],
            None,
        );
        assert_eq!(zone.as_deref(), Ok("a.example"));
        assert_eq!(
            asked,
            [
                "_acme-challenge.www.a.example",
                "www.a.example",
                "a.example"
            ]
        );
        // A delegated challenge name is its own zone.
        let (zone, asked) = walk(
            "_acme-challenge.A.example",
            &["_acme-challenge.a.example"],
            None,
        );
        assert_eq!(zone.as_deref(), Ok("_acme-challenge.a.example"));
        assert_eq!(asked.len(), 1);
        // Top-level domains are never asked, and nothing found names the key to set.
        let (zone, asked) = walk("_acme-challenge.a.example", &["example"], None);
        assert!(zone.unwrap_err().contains("acme.dns.config.zone"));
        assert_eq!(asked, ["_acme-challenge.a.example", "a.example"]);
        // A failed lookup stops the walk, naming the name.
        let (zone, _) = walk(
            "_acme-challenge.a.example",
            &["a.example"],
            Some("_acme-challenge.a.example"),
        );
        let e = zone.unwrap_err();
        assert!(
            e.contains("_acme-challenge.a.example") && e.contains("SERVFAIL"),
            "{e}"
        );
    }

    #[test]
    fn acme_dns01_record_names() {
        assert_eq!(record_name("a.example"), "_acme-challenge.a.example");
        assert_eq!(record_name("*.a.example"), "_acme-challenge.a.example");
        assert_eq!(
            record_name("WWW.A.Example."),
            "_acme-challenge.www.a.example"
        );
    }

    #[test]
    fn acme_dns01_resolv_conf() {
        let text = "# comment\nsearch lan\nnameserver 10.0.0.1\nnameserver  fe80::1%eth0\n\
                    nameserver bogus\noptions ndots:2\nnameserver\n";
        assert_eq!(
            nameservers(text),
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert!(nameservers("").is_empty());
    }
}
