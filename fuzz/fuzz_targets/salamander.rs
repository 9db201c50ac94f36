//! Salamander: decoding arbitrary datagrams never panics, and encode/decode round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::proto::salamander::{Salamander, SALT_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&psk_len, rest)) = data.split_first() else {
        return;
    };
    let (psk, rest) = rest.split_at(usize::from(psk_len % 16).min(rest.len()));
    let Ok(s) = Salamander::new(psk) else {
        assert!(psk.len() < 4);
        return;
    };
    let mut out = Vec::new();
    let decoded = s.decode(rest, &mut out);
    let mut in_place = rest.to_vec();
    match s.decode_in_place(&mut in_place) {
        Ok(body) => assert_eq!(body, &out[..]),
        Err(e) => assert_eq!(decoded, Err(e)),
    }

    let mut salt = [0u8; SALT_LEN];
    for (s, b) in salt.iter_mut().zip(rest) {
        *s = *b;
    }
    let mut wire = Vec::new();
    s.encode(salt, rest, &mut wire);
    let mut wire2 = rest.to_vec();
    s.encode_in_place(salt, &mut wire2);
    assert_eq!(wire, wire2);
    let mut back = Vec::new();
    match s.decode(&wire, &mut back) {
        Ok(()) => assert_eq!(back, rest),
        Err(_) => assert!(rest.is_empty()),
    }
});
