//! `tls.sniGuard` (protocol notes §1, "SNI guard"): which server names a client may ask for
//! in its ClientHello, decided where the certificate is looked up, so that QUIC handshakes
//! and the masquerade's HTTPS listener refuse the same clients.
//!
//! As the official server (`app/internal/utils/certloader.go`): `strict` requires the SNI
//! to be a name the certificate is valid for; `dns-san` (the default) does so only when the
//! certificate carries DNS names in its subject alternative names, and lets every client in
//! otherwise; `disable` never checks. A missing SNI matches no name, so under a check it is
//! refused (clients dialling an IP address send none). The name check is WebPKI's
//! (case-insensitive, a `*.` wildcard covers one leftmost label), like Go's
//! `VerifyHostname`; the subject common name is never consulted.

use rustls::pki_types::{CertificateDer, DnsName, ServerName};

/// When the SNI must match the certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SniGuard {
    /// Only when the certificate has DNS SANs.
    #[default]
    DnsSan,
    /// Always.
    Strict,
    /// Never.
    Disable,
}

/// What the guard knows of the served leaf certificate, read once when it is loaded.
#[derive(Clone, Debug)]
pub struct LeafNames {
    /// The leaf's DER, for the name check.
    der: CertificateDer<'static>,
    /// Whether its SAN extension lists at least one DNS name.
    has_dns_sans: bool,
}

impl LeafNames {
    /// Reads the leaf's names. A leaf WebPKI cannot parse has no names a client could match:
    /// `strict` then refuses everyone, `dns-san` lets everyone in.
    pub fn new(leaf: &CertificateDer<'_>) -> Self {
        let der = leaf.clone().into_owned();
        let has_dns_sans = webpki::EndEntityCert::try_from(&der)
            .map(|cert| cert.valid_dns_names().next().is_some())
            .unwrap_or(false);
        Self { der, has_dns_sans }
    }

    /// Whether the leaf carries DNS names in its subject alternative names.
    pub fn has_dns_sans(&self) -> bool {
        self.has_dns_sans
    }

    /// Whether the leaf is valid for `sni`.
    fn matches(&self, sni: &str) -> bool {
        let Ok(name) = DnsName::try_from(sni) else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(&self.der) else {
            return false;
        };
        cert.verify_is_valid_for_subject_name(&ServerName::DnsName(name))
            .is_ok()
    }
}

impl SniGuard {
    /// Whether a ClientHello with `sni` (`None`: no SNI, or one that is not a DNS name) may
    /// go on with the certificate `leaf`.
    pub fn admits(self, sni: Option<&str>, leaf: &LeafNames) -> bool {
        let check = match self {
            SniGuard::Disable => false,
            SniGuard::Strict => true,
            SniGuard::DnsSan => leaf.has_dns_sans(),
        };
        !check || sni.is_some_and(|sni| leaf.matches(sni))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(names: &[&str]) -> LeafNames {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ck = crate::quic::self_signed(&names).expect("certificate");
        LeafNames::new(&ck.chain[0])
    }

    /// A certificate with DNS SANs (one of them a wildcard) and an IP SAN.
    fn named() -> LeafNames {
        leaf(&["hy2.test", "*.example.com", "127.0.0.1"])
    }

    const MATCHING: [&str; 4] = ["hy2.test", "HY2.Test", "www.example.com", "a.example.com"];
    const NOT_MATCHING: [&str; 6] = [
        "other.test",
        "example.com",
        "a.b.example.com",
        "hy2.test.evil",
        "sub.hy2.test",
        "127.0.0.1",
    ];

    #[test]
    fn dns_san_is_the_default() {
        assert_eq!(SniGuard::default(), SniGuard::DnsSan);
    }

    #[test]
    fn strict_admits_only_names_of_the_certificate() {
        let cert = named();
        for sni in MATCHING {
            assert!(SniGuard::Strict.admits(Some(sni), &cert), "{sni}");
        }
        for sni in NOT_MATCHING {
            assert!(!SniGuard::Strict.admits(Some(sni), &cert), "{sni}");
        }
        assert!(!SniGuard::Strict.admits(None, &cert), "no SNI");
    }

    #[test]
    fn strict_refuses_everyone_for_a_certificate_without_dns_names() {
        let ip_only = leaf(&["127.0.0.1"]);
        assert!(!ip_only.has_dns_sans());
        for sni in ["hy2.test", "localhost", "127.0.0.1"] {
            assert!(!SniGuard::Strict.admits(Some(sni), &ip_only), "{sni}");
        }
        assert!(!SniGuard::Strict.admits(None, &ip_only), "no SNI");
    }

    #[test]
    fn dns_san_checks_only_certificates_with_dns_names() {
        let cert = named();
        assert!(cert.has_dns_sans());
        for sni in MATCHING {
            assert!(SniGuard::DnsSan.admits(Some(sni), &cert), "{sni}");
        }
        for sni in NOT_MATCHING {
            assert!(!SniGuard::DnsSan.admits(Some(sni), &cert), "{sni}");
        }
        assert!(!SniGuard::DnsSan.admits(None, &cert), "no SNI");

        let ip_only = leaf(&["127.0.0.1"]);
        for sni in ["hy2.test", "anything.example"] {
            assert!(SniGuard::DnsSan.admits(Some(sni), &ip_only), "{sni}");
        }
        assert!(SniGuard::DnsSan.admits(None, &ip_only), "no SNI");
    }

    #[test]
    fn disable_admits_everyone() {
        for cert in [named(), leaf(&["127.0.0.1"])] {
            for sni in MATCHING.iter().chain(&NOT_MATCHING) {
                assert!(SniGuard::Disable.admits(Some(sni), &cert), "{sni}");
            }
            assert!(SniGuard::Disable.admits(None, &cert), "no SNI");
        }
    }

    #[test]
    fn an_unparseable_leaf_has_no_names() {
        let garbage = LeafNames::new(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]));
        assert!(!garbage.has_dns_sans());
        assert!(!SniGuard::Strict.admits(Some("hy2.test"), &garbage));
        assert!(SniGuard::DnsSan.admits(Some("hy2.test"), &garbage));
    }
}
