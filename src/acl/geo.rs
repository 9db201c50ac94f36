//! geoip.dat and geosite.dat: the v2ray "routercommon" protobuf lists (one message per file,
//! no header), decoded with prost into maps keyed by the lowercased code.

use std::collections::HashMap;
use std::path::PathBuf;

use prost::Message;

/// `GeoIPList`.
#[derive(Clone, PartialEq, Message)]
pub struct GeoIpList {
    #[prost(message, repeated, tag = "1")]
    pub entry: Vec<GeoIp>,
}

/// `GeoIP`: one country's networks (`resource_hash` and `code` are skipped).
#[derive(Clone, PartialEq, Message)]
pub struct GeoIp {
    #[prost(string, tag = "1")]
    pub country_code: String,
    #[prost(message, repeated, tag = "2")]
    pub cidr: Vec<Cidr>,
    /// The list matches addresses outside it (and requests without addresses).
    #[prost(bool, tag = "3")]
    pub inverse_match: bool,
}

/// `CIDR`: 4 or 16 address bytes and a prefix length.
#[derive(Clone, PartialEq, Message)]
pub struct Cidr {
    #[prost(bytes = "vec", tag = "1")]
    pub ip: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub prefix: u32,
}

/// `GeoSiteList`.
#[derive(Clone, PartialEq, Message)]
pub struct GeoSiteList {
    #[prost(message, repeated, tag = "1")]
    pub entry: Vec<GeoSite>,
}

/// `GeoSite`: one category's domains (`resource_hash` and `code` are skipped).
#[derive(Clone, PartialEq, Message)]
pub struct GeoSite {
    #[prost(string, tag = "1")]
    pub country_code: String,
    #[prost(message, repeated, tag = "2")]
    pub domain: Vec<Domain>,
}

/// `Domain`. `kind` is the `type` enum: see [`DomainKind`].
#[derive(Clone, PartialEq, Message)]
pub struct Domain {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(message, repeated, tag = "3")]
    pub attribute: Vec<Attribute>,
}

/// `Domain.Attribute`: only the key counts; the bool/int value is skipped.
#[derive(Clone, PartialEq, Message)]
pub struct Attribute {
    #[prost(string, tag = "1")]
    pub key: String,
}

/// How a geosite `Domain` value matches the request name (not IDNA-converted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// Substring (also what an entry without a type is).
    Plain,
    /// Unanchored regex search.
    Regex,
    /// Equal, or ends with `.value`.
    RootDomain,
    /// Equal.
    Full,
}

impl DomainKind {
    /// The wire value; anything else is `unsupported domain type`.
    pub fn from_wire(v: i32) -> Option<DomainKind> {
        Some(match v {
            0 => DomainKind::Plain,
            1 => DomainKind::Regex,
            2 => DomainKind::RootDomain,
            3 => DomainKind::Full,
            _ => return None,
        })
    }
}

/// A decoded geoip.dat: entries by lowercased country code (the last of a duplicate wins).
#[derive(Clone, Debug, Default)]
pub struct GeoIpDb(pub HashMap<String, GeoIp>);

/// A decoded geosite.dat: entries by lowercased category name (the last duplicate wins).
#[derive(Clone, Debug, Default)]
pub struct GeoSiteDb(pub HashMap<String, GeoSite>);

/// Decodes a geoip.dat. Address lengths are checked when a rule uses a country.
pub fn decode_geoip(bytes: &[u8]) -> Result<GeoIpDb, String> {
    let list = GeoIpList::decode(bytes).map_err(|e| e.to_string())?;
    Ok(GeoIpDb(
        list.entry
            .into_iter()
            .map(|e| (e.country_code.to_lowercase(), e))
            .collect(),
    ))
}

/// Decodes a geosite.dat. Types and regexes are checked when a rule uses a category.
pub fn decode_geosite(bytes: &[u8]) -> Result<GeoSiteDb, String> {
    let list = GeoSiteList::decode(bytes).map_err(|e| e.to_string())?;
    Ok(GeoSiteDb(
        list.entry
            .into_iter()
            .map(|e| (e.country_code.to_lowercase(), e))
            .collect(),
    ))
}

/// Where the geo databases come from. Each is asked for at most once per compile, and only
/// when a rule uses `geoip:` or `geosite:`.
pub trait GeoLoader {
    /// The bytes of geoip.dat, or why they are unavailable.
    fn geoip(&mut self) -> Result<Vec<u8>, String>;
    /// The bytes of geosite.dat, or why they are unavailable.
    fn geosite(&mut self) -> Result<Vec<u8>, String>;
    /// geoip.dat decoded. A loader that already decoded it (to check a download) returns
    /// that rather than have it decoded twice.
    fn geoip_db(&mut self) -> Result<GeoIpDb, String> {
        decode_geoip(&self.geoip()?).map_err(|e| format!("geoip: {e}"))
    }
    /// geosite.dat decoded; see [`GeoLoader::geoip_db`].
    fn geosite_db(&mut self) -> Result<GeoSiteDb, String> {
        decode_geosite(&self.geosite()?).map_err(|e| format!("geosite: {e}"))
    }
}

/// The databases read from files (`acl.geoip`, `acl.geosite`).
#[derive(Clone, Debug, Default)]
pub struct GeoFiles {
    /// geoip.dat; `None` fails any `geoip:` rule.
    pub geoip: Option<PathBuf>,
    /// geosite.dat; `None` fails any `geosite:` rule.
    pub geosite: Option<PathBuf>,
}

fn read(path: Option<&PathBuf>, key: &str) -> Result<Vec<u8>, String> {
    let path = path.ok_or_else(|| format!("no {key} file is configured"))?;
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl GeoLoader for GeoFiles {
    fn geoip(&mut self) -> Result<Vec<u8>, String> {
        read(self.geoip.as_ref(), "acl.geoip")
    }

    fn geosite(&mut self) -> Result<Vec<u8>, String> {
        read(self.geosite.as_ref(), "acl.geosite")
    }
}

/// The databases given as bytes (tests, fuzzing, a caller that downloaded them).
#[derive(Clone, Debug, Default)]
pub struct GeoBytes {
    /// geoip.dat; `None` fails any `geoip:` rule.
    pub geoip: Option<Vec<u8>>,
    /// geosite.dat; `None` fails any `geosite:` rule.
    pub geosite: Option<Vec<u8>>,
}

impl GeoLoader for GeoBytes {
    fn geoip(&mut self) -> Result<Vec<u8>, String> {
        self.geoip.clone().ok_or_else(|| "no geoip data".into())
    }

    fn geosite(&mut self) -> Result<Vec<u8>, String> {
        self.geosite.clone().ok_or_else(|| "no geosite data".into())
    }
}

/// What a compile has loaded so far.
pub(crate) struct GeoCache<'a> {
    loader: &'a mut dyn GeoLoader,
    geoip: Option<GeoIpDb>,
    geosite: Option<GeoSiteDb>,
}

impl<'a> GeoCache<'a> {
    pub(crate) fn new(loader: &'a mut dyn GeoLoader) -> Self {
        GeoCache {
            loader,
            geoip: None,
            geosite: None,
        }
    }

    pub(crate) fn geoip(&mut self) -> Result<&GeoIpDb, String> {
        if self.geoip.is_none() {
            self.geoip = Some(self.loader.geoip_db()?);
        }
        Ok(self.geoip.get_or_insert_with(GeoIpDb::default))
    }

    pub(crate) fn geosite(&mut self) -> Result<&GeoSiteDb, String> {
        if self.geosite.is_none() {
            self.geosite = Some(self.loader.geosite_db()?);
        }
        Ok(self.geosite.get_or_insert_with(GeoSiteDb::default))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The reference's hand-made files, byte for byte.
    pub(crate) const GEOIP_TEST: [u8; 18] = [
        0x0a, 0x10, 0x0a, 0x04, 0x54, 0x45, 0x53, 0x54, 0x12, 0x08, 0x0a, 0x04, 0x0a, 0x00, 0x00,
        0x00, 0x10, 0x08,
    ];
    pub(crate) const GEOSITE_TEST: [u8; 45] = [
        0x0a, 0x2b, 0x0a, 0x04, 0x54, 0x45, 0x53, 0x54, 0x12, 0x0f, 0x08, 0x02, 0x12, 0x0b, 0x65,
        0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x63, 0x6f, 0x6d, 0x12, 0x12, 0x08, 0x03, 0x12,
        0x05, 0x61, 0x2e, 0x62, 0x2e, 0x63, 0x1a, 0x07, 0x0a, 0x03, 0x61, 0x64, 0x73, 0x10, 0x01,
    ];

    #[test]
    fn hand_made_geoip_decodes() {
        let db = decode_geoip(&GEOIP_TEST).unwrap();
        let e = &db.0["test"];
        assert_eq!(e.cidr.len(), 1);
        assert_eq!(e.cidr[0].ip, vec![10, 0, 0, 0]);
        assert_eq!(e.cidr[0].prefix, 8);
        assert!(!e.inverse_match);
    }

    #[test]
    fn hand_made_geosite_decodes() {
        let db = decode_geosite(&GEOSITE_TEST).unwrap();
        let d = &db.0["test"].domain;
        assert_eq!(d.len(), 2);
        assert_eq!(
            DomainKind::from_wire(d[0].kind),
            Some(DomainKind::RootDomain)
        );
        assert_eq!(d[0].value, "example.com");
        assert_eq!(DomainKind::from_wire(d[1].kind), Some(DomainKind::Full));
        assert_eq!(d[1].attribute[0].key, "ads");
    }

    #[test]
    fn truncated_and_garbage_files_are_errors_not_panics() {
        for n in 0..GEOSITE_TEST.len() {
            let _ = decode_geosite(&GEOSITE_TEST[..n]);
            let _ = decode_geoip(&GEOSITE_TEST[..n]);
        }
        assert!(decode_geoip(&GEOIP_TEST[..5]).is_err());
        assert!(decode_geoip(&[0xff; 7]).is_err());
        // An empty file is an empty list, as in the reference.
        assert!(decode_geoip(&[]).unwrap().0.is_empty());
    }

    #[test]
    fn files_are_read_by_path_and_missing_ones_named() {
        let mut files = GeoFiles {
            geoip: Some(PathBuf::from("/nonexistent/geoip.dat")),
            geosite: None,
        };
        let e = files.geoip().unwrap_err();
        assert!(e.starts_with("/nonexistent/geoip.dat: "), "{e}");
        assert_eq!(
            files.geosite().unwrap_err(),
            "no acl.geosite file is configured"
        );
    }
}
