//! The TLS-ALPN-01 responder (RFC 8737): TLS over TCP on
//! `acme.listenHost:acme.tls.altPort` (443 by default), up only while an order is being
//! validated. A ClientHello that offers `acme-tls/1` and names a domain being validated gets
//! a self-signed certificate for that domain carrying the `acmeIdentifier` extension (the
//! SHA-256 of the key authorization); the connection is closed once the handshake is done.
//!
//! When `masquerade.listenHTTPS` holds that port, its listener answers instead: its
//! certificates are an [`OrSite`], which hands the challenge certificate to a ClientHello
//! offering `acme-tls/1` and the site's to any other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::Responder;
use crate::metrics::http::{accept_bounded, bind};

/// The ALPN protocol of the challenge.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Most validation connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Longest a validation handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The challenge certificate of each domain being validated.
#[derive(Debug, Default, Clone)]
pub struct Certs(Arc<Mutex<HashMap<String, Arc<CertifiedKey>>>>);

impl Certs {
    /// Serves a challenge certificate for `domain` proving `digest` (SHA-256 of the key
    /// authorization).
    pub fn insert(&self, domain: &str, digest: &[u8]) -> Result<(), String> {
        let cert = challenge_cert(domain, digest)
            .map_err(|e| format!("{domain}: cannot make the tls-alpn-01 certificate: {e}"))?;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_ascii_lowercase(), Arc::new(cert));
        Ok(())
    }

    /// Forgets every challenge certificate (the order ended).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Whether a ClientHello offers the challenge's ALPN protocol.
fn offers_acme(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if !offers_acme(&hello) {
            return None;
        }
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned()
    }
}

/// The certificates of a listener that answers TLS-ALPN-01 beside its own site.
#[derive(Debug)]
pub struct OrSite {
    /// Served to a ClientHello offering `acme-tls/1`.
    pub challenges: Certs,
    /// Served to every other.
    pub site: Arc<dyn ResolvesServerCert>,
}

impl ResolvesServerCert for OrSite {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if offers_acme(&hello) {
            self.challenges.resolve(hello)
        } else {
            self.site.resolve(hello)
        }
    }
}

/// A self-signed ECDSA P-256 certificate for `domain` with the critical `acmeIdentifier`
/// extension.
fn challenge_cert(domain: &str, digest: &[u8]) -> Result<CertifiedKey, Box<dyn std::error::Error>> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate with WebPKI, which
    // refuses the critical acmeIdentifier extension it does not know.
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// Starts answering on `listen`. Call inside the runtime.
pub fn start(listen: SocketAddr, certs: Certs) -> Result<Responder, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(accept_bounded(
        listener,
        MAX_CONNECTIONS,
        "acme tls-alpn-01".into(),
        move |stream, peer| {
            let acceptor = acceptor.clone();
            async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(_)) => tracing::debug!("acme: tls-alpn-01 handshake with {peer}"),
                    Ok(Err(e)) => tracing::debug!("acme: tls-alpn-01 from {peer}: {e}"),
                    Err(_) => tracing::debug!("acme: tls-alpn-01 from {peer}: timed out"),
                }
            }
        },
    ));
    Ok(Responder { task, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_tlsalpn01_certificate_carries_the_digest() {
        let digest = [7u8; 32];
        let ck = challenge_cert("a.example", &digest).unwrap();
        let der = ck.cert[0].as_ref();
        // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, OCTET STRING { OCTET STRING }.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der.windows(oid.len()).position(|w| w == oid).unwrap();
        let mut tail = vec![0x01, 0x01, 0xff, 0x04, 0x22, 0x04, 0x20];
        tail.extend_from_slice(&digest);
        assert_eq!(&der[at + oid.len()..at + oid.len() + tail.len()], &tail[..]);
    }
}
