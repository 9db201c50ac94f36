//! ACL rule text: any text compiles or gives an error naming a line, never a panic; a
//! compiled ACL routes hosts taken from the same text without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::acl::{Acl, GeoBytes, Host, Protocol, Verdict};

/// geoip `TEST` = 10.0.0.0/8 and geosite `TEST` = {RootDomain example.com; Full a.b.c @ads}.
const GEOIP: [u8; 18] = [
    0x0a, 0x10, 0x0a, 0x04, 0x54, 0x45, 0x53, 0x54, 0x12, 0x08, 0x0a, 0x04, 0x0a, 0x00, 0x00, 0x00,
    0x10, 0x08,
];
const GEOSITE: [u8; 45] = [
    0x0a, 0x2b, 0x0a, 0x04, 0x54, 0x45, 0x53, 0x54, 0x12, 0x0f, 0x08, 0x02, 0x12, 0x0b, 0x65, 0x78,
    0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x63, 0x6f, 0x6d, 0x12, 0x12, 0x08, 0x03, 0x12, 0x05, 0x61,
    0x2e, 0x62, 0x2e, 0x63, 0x1a, 0x07, 0x0a, 0x03, 0x61, 0x64, 0x73, 0x10, 0x01,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut geo = GeoBytes {
        geoip: Some(GEOIP.to_vec()),
        geosite: Some(GEOSITE.to_vec()),
    };
    let acl = match Acl::compile(text, "fuzz.acl", &["a", "b_1", "direct"], &mut geo) {
        Ok(acl) => acl,
        Err(e) => {
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= text.split('\n').count(), "{e}");
            }
            return;
        }
    };
    // Hosts: every comma- or paren-separated piece of the text, as names and as addresses.
    for piece in text.split(|c| matches!(c, ',' | '(' | ')' | '\n')).take(64) {
        let mut host = Host::new(piece.trim());
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let d = acl.route(&host, proto, 443);
            if let Verdict::Decided(early) =
                acl.route_unresolved(&Host::new(piece.trim()), proto, 443)
            {
                if host.ipv4().is_none() && host.ipv6().is_none() {
                    assert_eq!(
                        early, d,
                        "a decision before resolution must hold without addresses"
                    );
                }
            }
        }
        host.set_addresses(
            Some([10, 1, 2, 3].into()),
            Some([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1].into()),
        );
        let _ = acl.route(&host, Protocol::Tcp, 0);
    }
});
