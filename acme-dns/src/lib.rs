//! ACME DNS-01's TXT records through a DNS provider's API or RFC 2136, on the `dns-update`
//! crate, behind plain (non-generic) functions.
//!
//! dns-update's entry points are generic over the name type and match over the seventy-odd
//! providers it knows; a caller instantiates all of them. Kept behind this crate, they are
//! compiled once, here, instead of into the relay crate and each of its test builds. The
//! same holds for an `async fn`'s state machine, which the crate that polls it compiles
//! (the relay's library took six times as long to build): so the requests are returned as
//! boxed trait objects, whose code is generated here.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use dns_update::{DnsRecord, DnsRecordType, DnsUpdater, TsigAlgorithm};

/// A provider and its credentials (the reference's `acme.dns` providers, plus PowerDNS and
/// RFC 2136).
pub enum Provider<'a> {
    Cloudflare {
        api_token: &'a str,
    },
    DuckDns {
        api_token: &'a str,
    },
    Gandi {
        api_token: &'a str,
    },
    GoDaddy {
        api_key: &'a str,
        api_secret: &'a str,
    },
    Namecheap {
        api_user: &'a str,
        api_key: &'a str,
        client_ip: &'a str,
    },
    Porkbun {
        api_key: &'a str,
        secret_key: &'a str,
    },
    Vultr {
        api_token: &'a str,
    },
    Pdns {
        api_url: &'a str,
        api_key: &'a str,
        server_id: Option<&'a str>,
    },
    /// `server` as `[udp://|tcp://]IP[:PORT]`, `key` decoded, `algorithm` by name
    /// (`hmac-sha256`, ...).
    Rfc2136 {
        server: &'a str,
        key_name: &'a str,
        key: Vec<u8>,
        algorithm: &'a str,
    },
}

/// A request to the provider under way.
pub type Request<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A provider's client for TXT records.
pub struct Txt(DnsUpdater);

impl Txt {
    /// The client for `provider`; each request takes at most `timeout` (not RFC 2136).
    pub fn new(provider: Provider<'_>, timeout: Duration) -> Result<Txt, String> {
        let t = Some(timeout);
        let made = match provider {
            Provider::Cloudflare { api_token } => DnsUpdater::new_cloudflare(api_token, t),
            Provider::DuckDns { api_token } => DnsUpdater::new_duckdns(api_token, t),
            Provider::Gandi { api_token } => DnsUpdater::new_gandiv5(api_token, t),
            Provider::GoDaddy {
                api_key,
                api_secret,
            } => DnsUpdater::new_godaddy(api_key, api_secret, t),
            Provider::Namecheap {
                api_user,
                api_key,
                client_ip,
            } => DnsUpdater::new_namecheap(api_user, api_key, client_ip, None::<&str>, t),
            Provider::Porkbun {
                api_key,
                secret_key,
            } => DnsUpdater::new_porkbun(api_key, secret_key, t),
            Provider::Vultr { api_token } => DnsUpdater::new_vultr(api_token, t),
            Provider::Pdns {
                api_url,
                api_key,
                server_id,
            } => DnsUpdater::new_pdns(api_key, Some(api_url), server_id, t),
            Provider::Rfc2136 {
                server,
                key_name,
                key,
                algorithm,
            } => {
                let algorithm: TsigAlgorithm = algorithm
                    .parse()
                    .map_err(|()| format!("rfc2136_tsig_algorithm: unsupported {algorithm:?}"))?;
                DnsUpdater::new_rfc2136_tsig(server, key_name, key, algorithm)
            }
        };
        made.map(Txt).map_err(|e| e.to_string())
    }

    /// Adds `value` to the TXT records of `name` in `zone`, keeping the others.
    pub fn add<'a>(&'a self, name: &'a str, value: &str, ttl: u32, zone: &'a str) -> Request<'a> {
        let txt = vec![DnsRecord::TXT(value.to_owned())];
        Box::pin(async move {
            self.0
                .add_to_rrset(name, DnsRecordType::TXT, ttl, txt, zone)
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// Makes `values` the TXT records of `name` in `zone` (none: removes them all).
    pub fn set<'a>(
        &'a self,
        name: &'a str,
        values: &[&str],
        ttl: u32,
        zone: &'a str,
    ) -> Request<'a> {
        let txt = values
            .iter()
            .map(|v| DnsRecord::TXT((*v).to_owned()))
            .collect();
        Box::pin(async move {
            self.0
                .set_rrset(name, DnsRecordType::TXT, ttl, txt, zone)
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// Removes `value` from the TXT records of `name` in `zone`.
    pub fn remove<'a>(&'a self, name: &'a str, value: &str, zone: &'a str) -> Request<'a> {
        let txt = vec![DnsRecord::TXT(value.to_owned())];
        Box::pin(async move {
            self.0
                .remove_from_rrset(name, DnsRecordType::TXT, txt, zone)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
