//! TCPResponse parsing: no panics, bounded buffering, and parse/encode/parse round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::proto::tcp::{TcpResponse, MAX_TCP_RESPONSE_LEN};

fuzz_target!(|data: &[u8]| match TcpResponse::parse(data) {
    Ok(None) => assert!(data.len() < MAX_TCP_RESPONSE_LEN),
    Err(_) => {}
    Ok(Some((resp, used))) => {
        assert!(used <= data.len() && used <= MAX_TCP_RESPONSE_LEN);
        assert_eq!(TcpResponse::parse(&data[..used - 1]), Ok(None));
        let mut out = Vec::new();
        // Lossy UTF-8 replacement can lengthen the message past the limit; that must error.
        match TcpResponse::encode(resp.status, &resp.message, &[0; 7], &mut out) {
            Err(_) => assert!(out.is_empty()),
            Ok(()) => {
                out.extend_from_slice(b"payload");
                let (again, used2) = TcpResponse::parse(&out).unwrap().unwrap();
                assert_eq!(again, resp);
                assert_eq!(&out[used2..], b"payload");
            }
        }
    }
});
