//! Any bytes decode without panicking; decoded values re-encode in the shortest form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::proto::varint;

fuzz_target!(|data: &[u8]| {
    match varint::decode(data) {
        None => assert!(data.is_empty() || data.len() < 1 << (data[0] >> 6)),
        Some((v, n)) => {
            assert!(v <= varint::MAX && n <= data.len());
            let mut out = Vec::new();
            varint::encode(v, &mut out).expect("a decoded value encodes");
            assert_eq!(out.len(), varint::encoded_len(v));
            assert!(out.len() <= n);
            assert_eq!(varint::decode(&out), Some((v, out.len())));
        }
    }
    if let Some(word) = data.get(..8) {
        let v = u64::from_be_bytes(word.try_into().unwrap());
        let mut out = Vec::new();
        match varint::encode(v, &mut out) {
            Ok(()) => assert_eq!(varint::decode(&out), Some((v, out.len()))),
            Err(_) => assert!(v > varint::MAX && out.is_empty()),
        }
    }
});
