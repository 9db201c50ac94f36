//! TCPRequest parsing: no panics, bounded buffering, and parse/encode/parse round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::proto::speedtest::is_speedtest_addr;
use quelay::proto::tcp::{split_host_port, StreamStart, TcpRequest, MAX_TCP_REQUEST_LEN};

fuzz_target!(|data: &[u8]| {
    let start = StreamStart::classify(data);
    let parsed = TcpRequest::parse(data);
    if let Some(body) = data.get(2..) {
        let _ = TcpRequest::parse_after_type(body);
    }
    match parsed {
        Ok(None) => assert!(data.len() < MAX_TCP_REQUEST_LEN),
        Err(_) => {}
        Ok(Some((req, used))) => {
            assert_eq!(start, StreamStart::Proxy);
            assert!(used <= data.len() && used <= MAX_TCP_REQUEST_LEN);
            // A strict prefix of a complete request is incomplete, never an error.
            assert_eq!(TcpRequest::parse(&data[..used - 1]), Ok(None));
            // A host:port, or the speed test's pseudo-address.
            assert!(split_host_port(&req.addr).is_ok() || is_speedtest_addr(&req.addr));
            let mut out = Vec::new();
            TcpRequest::encode(&req.addr, b"pad", &mut out).expect("a parsed request encodes");
            out.extend_from_slice(b"payload");
            let (again, used2) = TcpRequest::parse(&out).unwrap().unwrap();
            assert_eq!(again, req);
            assert_eq!(&out[used2..], b"payload");
        }
    }
});
