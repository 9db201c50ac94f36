//! geoip.dat and geosite.dat: any bytes decode or give an error, never a panic; every entry
//! of a decoded file compiles into a rule or gives an error naming the line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::acl::geo::{decode_geoip, decode_geosite};
use quelay::acl::{Acl, GeoBytes, Host, Protocol};

fuzz_target!(|data: &[u8]| {
    let mut rules = String::new();
    if let Ok(db) = decode_geoip(data) {
        for code in db.0.keys().take(16) {
            rules.push_str(&format!("a(geoip:{code})\n"));
        }
    }
    if let Ok(db) = decode_geosite(data) {
        for code in db.0.keys().take(16) {
            rules.push_str(&format!("a(geosite:{code})\n"));
        }
    }
    let mut geo = GeoBytes {
        geoip: Some(data.to_vec()),
        geosite: Some(data.to_vec()),
    };
    // Codes with `,`, `#`, `)` or newlines make syntax errors: also fine.
    if let Ok(acl) = Acl::compile(&rules, "fuzz.acl", &["a", "b"], &mut geo) {
        for name in ["example.com", "a.b.c", "10.0.0.1", "2001:db8::1", ""] {
            let _ = acl.route(&Host::new(name), Protocol::Udp, 53);
        }
    }
});
