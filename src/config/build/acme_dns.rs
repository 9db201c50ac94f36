//! `acme.dns` (`acme.type: dns`): the DNS provider and its `acme.dns.config` keys, named as
//! in the reference (caddy-dns/libdns modules), plus quelay's `pdns`, `rfc2136` and `zone`.

use std::net::{IpAddr, SocketAddr};

use super::{lower, W};
use crate::config::error::{fault, Fault, Warning};
use crate::config::reader::Section;
use crate::config::server::{
    AcmeDns, DnsProvider, Secret, DEFAULT_TSIG_ALGORITHM, NAMECHEAP_API_ENDPOINT,
};

/// The providers `acme.dns.name` accepts, for the error that names an unknown one.
const PROVIDERS: &str =
    "cloudflare, duckdns, gandi, godaddy, namecheap, porkbun, vultr, pdns or rfc2136";
/// The TSIG algorithms `rfc2136_tsig_algorithm` accepts (those hickory signs with).
const TSIG_ALGORITHMS: [&str; 5] = [
    "hmac-sha1",
    "hmac-sha224",
    "hmac-sha256",
    "hmac-sha384",
    "hmac-sha512",
];
/// The `acme.dns.config` key every provider accepts.
const ZONE: &str = "zone";

/// `acme.dns`, read from the `acme` section.
pub(super) fn dns(acme: &mut Section, w: &mut W) -> Result<AcmeDns, Fault> {
    let mut s = acme.section("dns")?;
    let name_key = s.key("name");
    let config_key = s.key("config");
    let name = lower(s.string("name", w)?);
    if name.is_empty() {
        return Err(fault(name_key, "empty DNS provider name"));
    }
    let entries = s.string_map("config", w)?;
    s.finish(w);
    if entries.is_empty() {
        return Err(fault(config_key, "empty DNS provider config"));
    }
    let mut config = Config {
        key: config_key,
        provider: name.clone(),
        // Keys match case-insensitively, as viper lowercases them.
        entries: entries
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned(), false))
            .collect(),
    };
    let provider = match name.as_str() {
        "cloudflare" => DnsProvider::Cloudflare {
            api_token: config.secret("cloudflare_api_token")?,
        },
        "duckdns" => DnsProvider::DuckDns {
            api_token: config.secret("duckdns_api_token")?,
            override_domain: config.optional("duckdns_override_domain"),
        },
        "gandi" => DnsProvider::Gandi {
            api_token: config.secret("gandi_api_token")?,
        },
        "godaddy" => {
            let key = config.key("godaddy_api_token");
            let token = config.required("godaddy_api_token")?;
            let (k, s) = token
                .split_once(':')
                .filter(|(k, s)| !k.is_empty() && !s.is_empty())
                .ok_or_else(|| fault(key, "expected KEY:SECRET (GoDaddy's key and secret)"))?;
            DnsProvider::GoDaddy {
                api_key: Secret(k.to_owned()),
                api_secret: Secret(s.to_owned()),
            }
        }
        "namecheap" => {
            let api_key = config.secret("namecheap_api_key")?;
            let api_user = config.required("namecheap_api_user")?;
            let ip_key = config.key("namecheap_client_ip");
            let client_ip = config
                .optional("namecheap_client_ip")
                .map(|ip| {
                    ip.parse::<IpAddr>()
                        .map_err(|_| fault(ip_key, format!("{ip:?} is not an IP address")))
                })
                .transpose()?;
            let endpoint_key = config.key("namecheap_api_endpoint");
            if let Some(url) = config.optional("namecheap_api_endpoint") {
                if url.trim_end_matches('/') != NAMECHEAP_API_ENDPOINT {
                    return Err(fault(
                        endpoint_key,
                        format!(
                            "{url:?}: quelay's DNS client (dns-update) talks only to \
                             {NAMECHEAP_API_ENDPOINT}"
                        ),
                    ));
                }
            }
            DnsProvider::Namecheap {
                api_key,
                api_user,
                client_ip,
            }
        }
        "porkbun" => DnsProvider::Porkbun {
            api_key: config.secret("porkbun_api_key")?,
            secret_key: config.secret("porkbun_api_secret_key")?,
        },
        "vultr" => DnsProvider::Vultr {
            api_token: config.secret("vultr_api_token")?,
        },
        "pdns" | "powerdns" => {
            let url_key = config.key("pdns_api_url");
            let api_url = config.required("pdns_api_url")?;
            if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
                return Err(fault(
                    url_key,
                    format!("{api_url:?} is not an http:// or https:// URL"),
                ));
            }
            DnsProvider::Pdns {
                api_url,
                api_key: config.secret("pdns_api_key")?,
                server_id: config.optional("pdns_server_id"),
            }
        }
        "rfc2136" => {
            let server_key = config.key("rfc2136_server");
            let server = config.required("rfc2136_server")?;
            let server = dns_server(&server).map_err(|e| fault(server_key, e))?;
            let key_name = config.required("rfc2136_tsig_key_name")?;
            let secret_key = config.key("rfc2136_tsig_key");
            let key = config.required("rfc2136_tsig_key")?;
            use base64::Engine as _;
            match base64::engine::general_purpose::STANDARD.decode(&key) {
                Ok(bytes) if !bytes.is_empty() => {}
                _ => return Err(fault(secret_key, "not a base64 key")),
            }
            let alg_key = config.key("rfc2136_tsig_algorithm");
            let algorithm = config
                .optional("rfc2136_tsig_algorithm")
                .map(|a| a.to_ascii_lowercase())
                .unwrap_or_else(|| DEFAULT_TSIG_ALGORITHM.to_owned());
            if !TSIG_ALGORITHMS.contains(&algorithm.as_str()) {
                return Err(fault(
                    alg_key,
                    format!(
                        "unsupported TSIG algorithm {algorithm:?} (use {})",
                        TSIG_ALGORITHMS.join(", ")
                    ),
                ));
            }
            DnsProvider::Rfc2136 {
                server,
                key_name,
                key: Secret(key),
                algorithm,
            }
        }
        "namedotcom" => return Err(fault(name_key, "namedotcom is no longer supported")),
        "njalla" => {
            return Err(fault(
                name_key,
                "njalla is not supported by quelay's DNS client (dns-update); \
                 use another provider, or rfc2136 to your own DNS server",
            ))
        }
        other => {
            return Err(fault(
                name_key,
                format!("unsupported DNS provider {other:?} (use {PROVIDERS})"),
            ))
        }
    };
    let zone_key = config.key(ZONE);
    let zone = config
        .optional(ZONE)
        .map(|z| {
            let z = z.trim_end_matches('.').to_ascii_lowercase();
            if super::is_dns_name(&z) {
                Ok(z)
            } else {
                Err(fault(zone_key, format!("{z:?} is not a DNS name")))
            }
        })
        .transpose()?;
    config.finish(w);
    Ok(AcmeDns { provider, zone })
}

/// `acme.dns.config`, its keys lowercase, each marked once read.
struct Config {
    key: String,
    provider: String,
    entries: Vec<(String, String, bool)>,
}

impl Config {
    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.key)
    }

    /// A non-empty value, or `None`.
    fn optional(&mut self, name: &str) -> Option<String> {
        let e = self.entries.iter_mut().find(|e| e.0 == name)?;
        e.2 = true;
        Some(e.1.clone()).filter(|v| !v.is_empty())
    }

    fn required(&mut self, name: &str) -> Result<String, Fault> {
        self.optional(name).ok_or_else(|| {
            fault(
                self.key(name),
                format!("required for the {} DNS provider", self.provider),
            )
        })
    }

    fn secret(&mut self, name: &str) -> Result<Secret, Fault> {
        self.required(name).map(Secret)
    }

    /// Warns about every key the provider does not read.
    fn finish(self, w: &mut W) {
        for (k, _, used) in self.entries {
            if !used {
                w.push(Warning::new(
                    format!("{}.{k}", self.key),
                    format!("not a key of the {} DNS provider (ignored)", self.provider),
                ));
            }
        }
    }
}

/// `rfc2136_server` as `udp://IP:PORT` or `tcp://IP:PORT` (udp and port 53 when absent).
fn dns_server(text: &str) -> Result<String, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("udp") => ("udp", rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("tcp") => ("tcp", rest),
        Some((s, _)) => return Err(format!("{text:?}: use udp:// or tcp://, not {s}://")),
        None => ("udp", text),
    };
    let addr = match rest.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let bare = rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or(rest);
            let ip = bare
                .parse::<IpAddr>()
                .map_err(|_| format!("{text:?} is not an IP address with an optional port"))?;
            SocketAddr::new(ip, 53)
        }
    };
    if addr.port() == 0 {
        return Err(format!("{text:?}: port 0"));
    }
    Ok(format!("{scheme}://{addr}"))
}

#[cfg(test)]
mod tests {
    use super::dns_server;

    #[test]
    fn acme_dns_rfc2136_server_forms() {
        assert_eq!(dns_server("127.0.0.1").unwrap(), "udp://127.0.0.1:53");
        assert_eq!(dns_server("tcp://[::1]:5353").unwrap(), "tcp://[::1]:5353");
        assert_eq!(dns_server("UDP://::1").unwrap(), "udp://[::1]:53");
        assert!(dns_server("ns1.example:53").is_err());
        assert!(dns_server("tls://127.0.0.1").is_err());
        assert!(dns_server("127.0.0.1:0").is_err());
    }
}
