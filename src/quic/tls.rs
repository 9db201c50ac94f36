//! TLS 1.3 configurations for QUIC, on the rustls *ring* provider.
//!
//! Certificates are ECDSA P-256 when we generate them: official Hysteria2 clients since v2.11 do
//! not offer Ed25519 (DESIGN.md, "Known interop hazards").

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn_proto::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::VerifierBuilderError;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::sni::{LeafNames, SniGuard};

/// A certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct CertKey {
    /// DER certificates, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertKey {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// What went wrong building a TLS configuration, and whose input caused it.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be opened or read.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A certificate or key file is not valid PEM.
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        source: io::Error,
    },
    /// A certificate file holds no `CERTIFICATE` block.
    NoCertificate(PathBuf),
    /// A key file holds no private key block (PKCS#8, PKCS#1 or SEC1).
    NoPrivateKey(PathBuf),
    /// Generating a self-signed certificate failed (for example, a name is not a valid DNS
    /// name or IP address).
    Generate(rcgen::Error),
    /// rustls refused the configuration (for example, the key does not match the certificate,
    /// or the key type is unsupported).
    Rustls(rustls::Error),
    /// The root store cannot be used to verify servers (for example, it is empty).
    Roots(VerifierBuilderError),
    /// The crypto provider lacks AES-128-GCM, which QUIC Initial packets require.
    NoInitialCipherSuite(NoInitialCipherSuite),
    /// A certificate pin is not 64 hex digits (the reason names the pin).
    BadPin(String),
    /// A name for a generated certificate is neither an IP address nor a DNS name.
    BadName(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable { path, source } => {
                write!(f, "{}: unreadable: {source}", path.display())
            }
            Self::BadPem { path, source } => write!(f, "{}: invalid PEM: {source}", path.display()),
            Self::NoCertificate(path) => write!(f, "{}: no certificate found", path.display()),
            Self::NoPrivateKey(path) => write!(f, "{}: no private key found", path.display()),
            Self::Generate(e) => write!(f, "cannot generate self-signed certificate: {e}"),
            Self::Rustls(e) => write!(f, "TLS configuration rejected: {e}"),
            Self::Roots(e) => write!(f, "cannot verify servers with these root certificates: {e}"),
            Self::NoInitialCipherSuite(e) => write!(f, "TLS provider unusable for QUIC: {e}"),
            Self::BadPin(reason) => f.write_str(reason),
            Self::BadName(name) => write!(
                f,
                "certificate name {name:?} is neither an IP address nor a DNS name"
            ),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unreadable { source, .. } | Self::BadPem { source, .. } => Some(source),
            Self::Generate(e) => Some(e),
            Self::Rustls(e) => Some(e),
            Self::Roots(e) => Some(e),
            Self::NoInitialCipherSuite(e) => Some(e),
            Self::NoCertificate(_) | Self::NoPrivateKey(_) | Self::BadPin(_) | Self::BadName(_) => {
                None
            }
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        Self::Rustls(e)
    }
}

impl From<NoInitialCipherSuite> for TlsError {
    fn from(e: NoInitialCipherSuite) -> Self {
        Self::NoInitialCipherSuite(e)
    }
}

/// The *ring* provider with TLS 1.3 suites only, AES-128-GCM first: it is what QUIC Initial
/// packets use anyway, and it is the fastest with hardware AES.
/// Seeds this thread's random generator, as the first handshake would otherwise do:
/// aws-lc collects CPU jitter entropy for tens of milliseconds on first use, and a worker
/// should pay that when it starts, not while a client waits for its first handshake.
pub fn warm_up_rng() {
    let _ = provider().secure_random.fill(&mut [0u8; 32]);
}

fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// A self-signed ECDSA P-256 certificate for `names` (IP literals become IP SANs, everything
/// else a DNS SAN). The first name, if any, is also the subject common name.
pub fn self_signed(names: &[String]) -> Result<CertKey, TlsError> {
    // rcgen accepts any ASCII as a DNS name; refuse what no client could ever match.
    if let Some(bad) = names.iter().find(|n| !is_cert_name(n)) {
        return Err(TlsError::BadName(bad.clone()));
    }
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(TlsError::Generate)?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.as_str());
    }
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    Ok(CertKey {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    })
}

/// An IP literal, a DNS name, or a wildcard DNS name (`*.example.com`).
fn is_cert_name(name: &str) -> bool {
    let dns = name.strip_prefix("*.").unwrap_or(name);
    name.parse::<std::net::IpAddr>().is_ok() || rustls::pki_types::DnsName::try_from(dns).is_ok()
}

/// Lowercase hex SHA-256 of a certificate's DER, as Hysteria2's `pinSHA256` expects.
pub fn pin_sha256(cert: &CertificateDer) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Parse a SHA-256 pin as Hysteria2's `tls.pinSHA256` (see [`crate::config::parse_pin`]).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], TlsError> {
    crate::config::parse_pin(pin).map_err(TlsError::BadPin)
}

/// Load a PEM certificate chain and private key.
pub fn load_pem(cert: &Path, key: &Path) -> Result<CertKey, TlsError> {
    let chain = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key_der = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(|source| TlsError::BadPem {
            path: key.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey(key.to_owned()))?;
    Ok(CertKey {
        chain,
        key: key_der,
    })
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Unreadable {
            path: path.to_owned(),
            source,
        })
}

/// Server-side QUIC crypto: TLS 1.3 only, our certificate, the given ALPN list.
///
/// 0-RTT is off: Hysteria2 clients never use it, and early data would make the auth request
/// replayable.
pub fn server_crypto(ck: &CertKey, alpn: &[&[u8]]) -> Result<Arc<QuicServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(ck.chain.clone(), ck.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.max_early_data_size = 0;
    Ok(Arc::new(QuicServerConfig::try_from(config)?))
}

/// How a client decides to trust a server's certificate.
#[derive(Debug, Clone)]
pub enum Verify {
    /// Trust any certificate (Hysteria2 `insecure: true`). The handshake signature is still
    /// checked against the presented leaf, so the peer must hold its key.
    Insecure,
    /// Trust exactly the leaf whose DER hashes (SHA-256) to this pin, whatever its chain, names
    /// or validity dates.
    Pin([u8; 32]),
    /// Verify the chain to these roots and the server name (WebPKI).
    Roots(RootCertStore),
}

/// Client-side QUIC crypto: TLS 1.3 only, the given trust decision and ALPN list.
pub fn client_crypto(verify: Verify, alpn: &[&[u8]]) -> Result<Arc<QuicClientConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let pin = match verify {
        Verify::Roots(roots) => {
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(TlsError::Roots)?;
            return finish_client(
                builder.with_webpki_verifier(verifier).with_no_client_auth(),
                alpn,
            );
        }
        Verify::Insecure => None,
        Verify::Pin(pin) => Some(pin),
    };
    finish_client(
        builder
            .dangerous()
            .with_custom_certificate_verifier(leaf_verifier(pin, &provider))
            .with_no_client_auth(),
        alpn,
    )
}

fn finish_client(
    mut config: rustls::ClientConfig,
    alpn: &[&[u8]],
) -> Result<Arc<QuicClientConfig>, TlsError> {
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_early_data = false;
    Ok(Arc::new(QuicClientConfig::try_from(config)?))
}

/// A verifier that skips chain and name checks, requiring the leaf whose SHA-256 is `pin`
/// when given, but still verifies the handshake signature (see [`LeafVerifier`]). Also
/// serves the resolver's `insecure` DNS-over-TLS/HTTPS upstreams.
pub(crate) fn leaf_verifier(
    pin: Option<[u8; 32]>,
    provider: &rustls::crypto::CryptoProvider,
) -> Arc<dyn ServerCertVerifier> {
    Arc::new(LeafVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
    })
}

/// TLS over TCP to a server of the operator's choosing (a DNS upstream, the proxy
/// masquerade's upstream): the system's CA certificates, or with `insecure` no certificate
/// check (the handshake signature is still verified).
pub(crate) fn tcp_client_tls(insecure: bool) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if insecure {
        let verifier = leaf_verifier(None, &provider);
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(
            "no CA certificates found on this system to verify the server (install them, or \
             set insecure: true)"
                .into(),
        );
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Skips chain and name checks (optionally requiring a leaf pin) but still verifies the
/// handshake signature, so a man in the middle without the leaf's key fails.
#[derive(Debug)]
struct LeafVerifier {
    /// SHA-256 of the only acceptable leaf; `None` accepts any leaf.
    pin: Option<[u8; 32]>,
    /// The provider's signature algorithms, for the handshake signature.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.pin {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
            if digest.as_ref() != pin {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(CertificatePinMismatch)),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's leaf certificate does not match the configured pin.
#[derive(Debug)]
struct CertificatePinMismatch;

impl fmt::Display for CertificatePinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("server certificate does not match the pinned SHA-256")
    }
}

impl std::error::Error for CertificatePinMismatch {}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn self_signed_is_p256_with_sans() {
        let ck = self_signed(&names(&["example.com", "127.0.0.1", "::1"])).unwrap();
        assert_eq!(ck.chain.len(), 1);
        // The key loads into rustls and matches the certificate.
        server_crypto(&ck, &[b"h3"]).unwrap();
        let der = ck.chain[0].as_ref();
        // OID 1.2.840.10045.3.1.7 (prime256v1).
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert!(der.windows(p256.len()).any(|w| w == p256));
        assert!(der.windows(11).any(|w| w == b"example.com"));
        assert!(der.windows(4).any(|w| w == [127, 0, 0, 1]));
    }

    #[test]
    fn self_signed_rejects_bad_name() {
        for bad in ["bad name", "nul\u{0}", "bücher.example", "", "a..b", "*"] {
            let err = self_signed(&names(&["ok.example", bad])).unwrap_err();
            assert!(matches!(err, TlsError::BadName(_)), "{bad:?}: {err}");
        }
        self_signed(&names(&["*.example.com", "::1", "10.0.0.1", "host-1"])).unwrap();
    }

    #[test]
    fn pin_roundtrip() {
        let ck = self_signed(&names(&["localhost"])).unwrap();
        let hex = pin_sha256(&ck.chain[0]);
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| HEX.contains(&b)));
        let pin = parse_pin(&hex).unwrap();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ck.chain[0].as_ref());
        assert_eq!(&pin[..], digest.as_ref());
        // Upper case with colons parses to the same pin.
        let colons = hex
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_pin(&colons).unwrap(), pin);
    }

    #[test]
    fn parse_pin_rejects_garbage() {
        for bad in [
            "",
            "abc",
            &"0".repeat(63),
            &"0".repeat(65),
            &"g".repeat(64),
            "é",
        ] {
            assert!(matches!(parse_pin(bad), Err(TlsError::BadPin(_))), "{bad}");
        }
        assert_eq!(parse_pin(&"f".repeat(64)).unwrap(), [0xff; 32]);
    }

    #[test]
    fn known_pin_value() {
        // SHA-256("") so the hex formatting is checked against a fixed vector.
        assert_eq!(
            pin_sha256(&CertificateDer::from(Vec::new())),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "quelay-tls-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pem(tag: &str, der: &[u8]) -> String {
        // Minimal base64 so the test does not need another crate.
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in der.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        let body = out
            .as_bytes()
            .chunks(64)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
        format!("-----BEGIN {tag}-----\n{body}\n-----END {tag}-----\n")
    }

    #[test]
    fn load_pem_roundtrip_and_errors() {
        let dir = TempDir::new("load");
        let ck = self_signed(&names(&["localhost"])).unwrap();
        let PrivateKeyDer::Pkcs8(pkcs8) = &ck.key else {
            panic!("rcgen key is PKCS#8")
        };
        let cert_path = dir.file("cert.pem", pem("CERTIFICATE", &ck.chain[0]).as_bytes());
        let key_path = dir.file(
            "key.pem",
            pem("PRIVATE KEY", pkcs8.secret_pkcs8_der()).as_bytes(),
        );
        let loaded = load_pem(&cert_path, &key_path).unwrap();
        assert_eq!(loaded.chain, ck.chain);
        assert_eq!(loaded.key.secret_der(), ck.key.secret_der());
        server_crypto(&loaded, &[b"h3"]).unwrap();

        // Missing file: names the file and says unreadable.
        let missing = dir.0.join("missing.pem");
        let err = load_pem(&missing, &key_path).unwrap_err();
        assert!(matches!(err, TlsError::Unreadable { .. }));
        assert!(err.to_string().contains("missing.pem"), "{err}");

        // Key file given as the certificate: no certificate found.
        let err = load_pem(&key_path, &key_path).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate(_)));
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert!(err.to_string().contains("no certificate found"), "{err}");

        // Certificate given as the key: no private key found.
        let err = load_pem(&cert_path, &cert_path).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey(_)));
        assert!(err.to_string().contains("cert.pem"), "{err}");
        assert!(err.to_string().contains("no private key found"), "{err}");

        // Empty and garbage files.
        let empty = dir.file("empty.pem", b"");
        assert!(matches!(
            load_pem(&empty, &key_path),
            Err(TlsError::NoCertificate(_))
        ));
        let garbage = dir.file(
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let err = load_pem(&garbage, &key_path).unwrap_err();
        assert!(err.to_string().contains("garbage.pem"), "{err}");
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let a = self_signed(&names(&["a.example"])).unwrap();
        let b = self_signed(&names(&["b.example"])).unwrap();
        let mixed = CertKey {
            chain: a.chain,
            key: b.key,
        };
        assert!(matches!(
            server_crypto(&mixed, &[b"h3"]),
            Err(TlsError::Rustls(_))
        ));
    }

    #[test]
    fn empty_roots_rejected() {
        let Err(err) = client_crypto(Verify::Roots(RootCertStore::empty()), &[b"h3"]) else {
            panic!("an empty root store must be refused");
        };
        assert!(matches!(err, TlsError::Roots(_)), "{err}");
    }

    #[test]
    fn cipher_suite_order() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
    }
}

/// The server's certificate, replaceable while the server runs (a SIGHUP reload): read
/// once per handshake, so live connections keep the certificate they were made with. The
/// lookup is also where `tls.sniGuard` refuses a ClientHello (no certificate: the handshake
/// fails), for QUIC and for the masquerade's HTTPS listener alike.
#[derive(Debug)]
pub struct CertSwap {
    /// The certificate handshakes get now, with the names the guard checks against.
    served: std::sync::RwLock<Arc<Served>>,
    /// Which SNIs may have it.
    guard: SniGuard,
}

/// A certificate ready for handshakes.
#[derive(Debug)]
struct Served {
    key: Arc<rustls::sign::CertifiedKey>,
    names: LeafNames,
}

impl CertSwap {
    pub fn new(ck: &CertKey, guard: SniGuard) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(CertSwap {
            served: std::sync::RwLock::new(served(ck)?),
            guard,
        }))
    }

    /// Uses `ck` for handshakes from now on (an error leaves the current one in place).
    pub fn set(&self, ck: &CertKey) -> Result<(), TlsError> {
        let new = served(ck)?;
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }
}

fn served(ck: &CertKey) -> Result<Arc<Served>, TlsError> {
    let key =
        rustls::sign::CertifiedKey::from_der(ck.chain.clone(), ck.key.clone_key(), &provider())?;
    let names = LeafNames::new(
        ck.chain
            .first()
            .ok_or(rustls::Error::NoCertificatesPresented)?,
    );
    Ok(Arc::new(Served {
        key: Arc::new(key),
        names,
    }))
}

impl rustls::server::ResolvesServerCert for CertSwap {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let served = self
            .served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.guard.admits(hello.server_name(), &served.names) {
            Some(served.key.clone())
        } else {
            tracing::debug!(
                "TLS: SNI {:?} refused by tls.sniGuard",
                hello.server_name().unwrap_or("")
            );
            None
        }
    }
}

/// [`server_crypto`] with a certificate that can be replaced while running.
pub fn server_crypto_swappable(
    cert: Arc<CertSwap>,
    alpn: &[&[u8]],
) -> Result<Arc<QuicServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.max_early_data_size = 0;
    Ok(Arc::new(QuicServerConfig::try_from(config)?))
}

/// The TLS configuration of the masquerade's HTTPS listener (TCP): the QUIC server's
/// certificate and SNI guard through `cert` (a [`CertSwap`], or one beside ACME's
/// TLS-ALPN-01 certificates), TLS 1.2 and 1.3 as Go's server defaults to, and `alpn` (h2,
/// http/1.1).
pub fn tcp_server_tls(
    cert: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
