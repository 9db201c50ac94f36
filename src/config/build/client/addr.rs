//! Where the server is: `server` as `host:port` or as a share URI, whose auth, obfs and tls
//! settings then replace the file's (official `clientConfig.parseURI`), and the `host:port`
//! checks forwarding `remote`s share.

use std::net::{IpAddr, Ipv6Addr};

use rustls::pki_types::ServerName;

use super::W;
use crate::config::client::{ClientTls, HostPort, DEFAULT_SERVER_PORT};
use crate::config::error::{fault, ConfigError, ErrorAt, Fault, Warning};
use crate::config::reader::Section;
use crate::config::server::Obfs;
use crate::config::units::hop_ports;
use crate::config::uri::{parse_share_uri, ShareUri};
use crate::proto::{split_host_port, AddressError, Host, ProtoError};

/// Origin of errors about a share URI given on its own (as in `uri.rs`).
pub(super) const URI_ORIGIN: &str = "share URI";

const OVERRIDDEN: &str = "overridden by the share URI in `server`";

/// A share URI in `server`, and which of the optional settings it makes.
pub(super) struct UriServer {
    /// The parsed URI.
    pub share: ShareUri,
    /// `obfs=` is present and non-empty: the URI's obfs replaces the file's.
    pub sets_obfs: bool,
    /// `insecure=` is present and non-empty: the URI's value replaces the file's.
    pub sets_insecure: bool,
}

impl UriServer {
    /// The URI's obfs, when it sets one: it replaces the file's whole `obfs` section.
    pub fn obfs(&self) -> Option<Obfs> {
        self.sets_obfs.then(|| self.share.obfs.clone())
    }

    /// Apply the URI's auth and tls settings over the file's, warning about each file value
    /// that is replaced by a different one.
    pub fn apply(
        self,
        top: &Section,
        file_auth: Option<String>,
        tls: &mut ClientTls,
        w: &mut W,
    ) -> Option<String> {
        let share = self.share;
        let mut auth = file_auth.clone();
        if let Some(a) = share.auth {
            if file_auth.is_some_and(|f| f != a) {
                w.push(Warning::new(top.key("auth"), OVERRIDDEN));
            }
            auth = Some(a);
        }
        if let Some(sni) = share.sni {
            if tls.sni.as_ref().is_some_and(|f| *f != sni) {
                w.push(Warning::new(top.key("tls.sni"), OVERRIDDEN));
            }
            tls.sni = Some(sni);
        }
        if self.sets_insecure {
            if tls.insecure && !share.insecure {
                w.push(Warning::new(top.key("tls.insecure"), OVERRIDDEN));
            }
            tls.insecure = share.insecure;
        }
        if let Some(pin) = share.pin_sha256 {
            if tls.pin_sha256.is_some_and(|f| f != pin) {
                w.push(Warning::new(top.key("tls.pinSHA256"), OVERRIDDEN));
            }
            tls.pin_sha256 = Some(pin);
        }
        auth
    }

    /// Warn that the file's `obfs` section, if any, is replaced.
    pub fn overrides_obfs(top: &Section, w: &mut W) {
        if top.has("obfs") {
            w.push(Warning::new(top.key("obfs"), OVERRIDDEN));
        }
    }
}

/// What `server` gives.
pub(super) struct Server {
    pub addr: HostPort,
    /// The ports to hop over, when it gives several.
    pub hop: Option<Vec<u16>>,
    /// The share URI, when it is one.
    pub uri: Option<UriServer>,
}

/// `server`, required.
pub(super) fn server(top: &mut Section, w: &mut W) -> Result<Server, Fault> {
    let key = top.key("server");
    let text = top.string("server", w)?.unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return Err(fault(
            key,
            "required: the server's host:port or a hysteria2:// share URI",
        ));
    }
    if text.to_ascii_lowercase().starts_with("realm://") {
        return Err(fault(key, "realm mode (realm://) is not supported"));
    }
    if !text.contains("://") {
        let (addr, hop) = server_addr(text).map_err(|e| fault(key, e))?;
        return Ok(Server {
            addr,
            hop,
            uri: None,
        });
    }
    // The URI is not repeated in errors: it usually holds the password.
    let (server, hop, share) = share_uri(text).map_err(|e| {
        let part = e.key().unwrap_or("syntax");
        fault(key, format!("share URI {part}: {}", e.reason))
    })?;
    let uri = UriServer {
        share,
        sets_obfs: query_has(text, "obfs"),
        sets_insecure: query_has(text, "insecure"),
    };
    Ok(Server {
        addr: server,
        hop,
        uri: Some(uri),
    })
}

/// Parse a share URI into the server address, the ports to hop over (its port part or
/// `mport`) and the rest, with quelay's extra checks.
pub(super) fn share_uri(uri: &str) -> Result<(HostPort, Option<Vec<u16>>, ShareUri), ConfigError> {
    let err = |part: &str, reason: String| ConfigError {
        origin: URI_ORIGIN.to_owned(),
        at: ErrorAt::Key(part.to_owned()),
        reason,
    };
    let share = parse_share_uri(uri)?;
    let (server, _) = server_addr(&share.server_addr()).map_err(|e| err("host", e))?;
    let hop = match &share.ports {
        Some(ports) => Some(hop_ports(ports).map_err(|e| err("port", e))?),
        None => None,
    };
    if let Some(sni) = &share.sni {
        check_sni(sni).map_err(|e| err("sni", e))?;
    }
    Ok((server, hop, share))
}

/// Whether the URI's query gives `name` a non-empty value first (Go's `Query().Get`).
fn query_has(uri: &str, name: &str) -> bool {
    let before_fragment = uri.split('#').next().unwrap_or("");
    let Some((_, query)) = before_fragment.split_once('?') else {
        return false;
    };
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == name)
        .is_some_and(|(_, v)| !v.is_empty())
}

/// `server` as the official client reads it: `host:port`, or a host alone (port 443),
/// including a bare IPv6 address. Port lists and ranges mean port hopping: the address
/// then carries the lowest port, and the whole set comes second.
fn server_addr(text: &str) -> Result<(HostPort, Option<Vec<u16>>), String> {
    if let Some((host, port)) = text.rsplit_once(':') {
        let one_host = !host.contains(':') || (host.starts_with('[') && host.ends_with(']'));
        if one_host && port.contains([',', '-']) {
            let ports = hop_ports(port)?;
            let server = host_port(text, split_host_port(&format!("{host}:{}", ports[0])))?;
            return Ok((server, Some(ports)));
        }
    }
    let parsed = match split_host_port(text) {
        Err(ProtoError::BadAddress(AddressError::MissingPort | AddressError::TooManyColons)) => {
            // Go's parseServerAddrString: without a port, the whole text is the host.
            if let Ok(v6) = text.parse::<Ipv6Addr>() {
                let server = HostPort {
                    host: Host::Ip(IpAddr::V6(v6)),
                    port: DEFAULT_SERVER_PORT,
                };
                return Ok((server, None));
            }
            split_host_port(&format!("{text}:{DEFAULT_SERVER_PORT}"))
        }
        other => other,
    };
    Ok((host_port(text, parsed)?, None))
}

/// A dialable `host:port` from [`split_host_port`]'s result: port 0 is refused too.
pub(in crate::config::build) fn host_port(
    text: &str,
    parsed: Result<(Host, u16), ProtoError>,
) -> Result<HostPort, String> {
    match parsed {
        Ok((_, 0)) => Err(format!("{text:?}: port 0 cannot be dialled")),
        Ok((host, port)) => Ok(HostPort { host, port }),
        Err(ProtoError::BadAddress(e)) => Err(format!("{text:?}: {e}")),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

/// A TLS server name must be a DNS name or an IP address.
pub(super) fn check_sni(sni: &str) -> Result<(), String> {
    ServerName::try_from(sni)
        .map(|_| ())
        .map_err(|_| format!("{sni:?} is not a DNS name or IP address"))
}
