//! `acme.dir`: the account of each CA and the certificate of each domain list, written
//! owner-only (directories 0700, files 0600) through a temporary file and a rename, so a
//! crash never leaves half a key.
//!
//! ```text
//! <dir>/<ca>/account.json           the account's key and URL (instant-acme's credentials)
//! <dir>/<ca>/<first domain>/cert.pem  the chain, leaf first
//! <dir>/<ca>/<first domain>/key.pem   its ECDSA P-256 key (PKCS#8)
//! ```
//!
//! `<ca>` is the directory URL with every character but letters, digits, `.` and `-`
//! turned into `_`, so two CAs never share an account.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, DnsName, ServerName};

/// The environment variable that names the storage directory when `acme.dir` is not set,
/// as in the reference.
pub const DIR_ENV: &str = "HYSTERIA_ACME_DIR";
/// The storage directory when neither `acme.dir` nor [`DIR_ENV`] is set, relative to the
/// working directory.
pub const DEFAULT_DIR: &str = "acme";

/// Where one CA's account and one domain list's certificate live.
#[derive(Clone, Debug)]
pub struct Store {
    /// `<dir>/<ca>`.
    ca_dir: PathBuf,
    /// `<dir>/<ca>/<first domain>`.
    cert_dir: PathBuf,
}

impl Store {
    /// The store for `directory` and `domains` (at least one) under `dir` (`None`: the
    /// default, see [`DIR_ENV`]).
    pub fn new(dir: Option<&Path>, directory: &str, domains: &[String]) -> Store {
        let root = match dir {
            Some(d) => d.to_owned(),
            None => std::env::var_os(DIR_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
        };
        let ca_dir = root.join(slug(directory.trim_start_matches("https://")));
        let cert_dir = ca_dir.join(slug(domains.first().map_or("default", String::as_str)));
        Store { ca_dir, cert_dir }
    }

    pub fn account(&self) -> PathBuf {
        self.ca_dir.join("account.json")
    }

    pub fn cert(&self) -> PathBuf {
        self.cert_dir.join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.cert_dir.join("key.pem")
    }

    /// Writes the account's credentials.
    pub fn save_account(&self, json: &[u8]) -> io::Result<()> {
        make_dirs(&self.ca_dir)?;
        write_private(&self.account(), json)
    }

    /// Writes a certificate chain and its key (the key first: a chain never lacks its key).
    pub fn save_cert(&self, chain_pem: &[u8], key_pem: &[u8]) -> io::Result<()> {
        make_dirs(&self.cert_dir)?;
        write_private(&self.key(), key_pem)?;
        write_private(&self.cert(), chain_pem)
    }
}

/// Letters, digits, `.` and `-` kept; anything else `_`.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Creates `dir` and its missing parents, owner-only, and makes `dir` itself 0700 if it
/// was there already with wider rights.
fn make_dirs(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `data` to `path` with mode 0600 through a temporary file and a rename.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

/// A certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// When to renew: with a third of the lifetime left, as certmagic does.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_after - life / 3
    }
}

/// The validity of a DER certificate; `None` when it does not parse.
pub fn validity(cert: &[u8]) -> Option<Validity> {
    let (tag, cert, _) = tlv(cert)?;
    let (tbs_tag, tbs, _) = (tag == SEQUENCE).then(|| tlv(cert))??;
    if tbs_tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serial, signature, issuer
    }
    let (tag, validity, _) = tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (t1, v1, rest) = tlv(validity)?;
    let (t2, v2, _) = tlv(rest)?;
    Some(Validity {
        not_before: time(t1, v1)?,
        not_after: time(t2, v2)?,
    })
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One DER element: its tag, its contents and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        UTC_TIME if text.len() == 12 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 14 => (text.get(..4)?.parse().ok()?, &text[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The label a wildcard domain is checked with: one no explicit name of ours carries.
const WILDCARD_PROBE: &str = "quelay-wildcard-probe";

/// Whether the leaf is valid for every one of `domains` (`*.a.example` among them).
pub fn covers(leaf: &CertificateDer<'_>, domains: &[String]) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    domains.iter().all(|d| {
        // A wildcard is covered when a name only it would match is (webpki takes no `*`).
        let probe = d
            .strip_prefix("*.")
            .map(|base| format!("{WILDCARD_PROBE}.{base}"));
        DnsName::try_from(probe.as_deref().unwrap_or(d)).is_ok_and(|name| {
            cert.verify_is_valid_for_subject_name(&ServerName::DnsName(name))
                .is_ok()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_validity_of_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2051, 4, 1);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let v = validity(cert.der()).unwrap();
        // 2026-01-02 (UTCTime) and 2051-04-01 (GeneralizedTime, past 2049).
        assert_eq!(
            v.not_before.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_767_312_000
        );
        assert_eq!(
            v.not_after.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            2_563_920_000
        );
        assert!(v.renew_at() < v.not_after && v.renew_at() > v.not_before);
        assert!(covers(cert.der(), &["a.example".into()]));
        assert!(!covers(
            cert.der(),
            &["a.example".into(), "b.example".into()]
        ));
        assert!(!covers(cert.der(), &["*.a.example".into()]));
        let params =
            rcgen::CertificateParams::new(vec!["a.example".into(), "*.a.example".into()]).unwrap();
        let wild = params.self_signed(&key).unwrap();
        assert!(covers(
            wild.der(),
            &["a.example".into(), "*.a.example".into()]
        ));
        assert!(!covers(wild.der(), &["*.b.example".into()]));
    }

    #[test]
    fn acme_validity_never_panics_on_garbage() {
        assert_eq!(validity(&[]), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(validity(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0x30).collect();
            let _ = validity(&junk);
        }
        assert_eq!(time(UTC_TIME, b"2613320000Z"), None);
        assert_eq!(time(UTC_TIME, b"261301000000Z"), None);
        assert_eq!(time(GENERALIZED_TIME, b"2026+1010000000Z"), None);
    }

    #[test]
    fn acme_store_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("quelay-acme-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::new(
            Some(&dir),
            "https://127.0.0.1:14000/dir",
            &["a.example".into()],
        );
        store.save_account(b"{}").unwrap();
        store.save_cert(b"chain", b"key").unwrap();
        assert!(store.account().starts_with(dir.join("127.0.0.1_14000_dir")));
        assert_eq!(fs::read(store.cert()).unwrap(), b"chain");
        for file in [store.account(), store.cert(), store.key()] {
            let mode = fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        let mode = fs::metadata(store.cert().parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }
}
