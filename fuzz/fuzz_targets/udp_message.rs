//! UDPMessage parsing: no panics; parse/encode/parse round trips; a parsed payload survives
//! fragment + Defragger at a size picked from the input.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quelay::proto::udp::{fragment, header_len, MAX_UDP_PAYLOAD};
use quelay::proto::{split_host_port, Defragger, UdpMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = UdpMessage::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let _ = split_host_port(&msg.addr);
    assert!(!msg.payload.is_empty());
    assert!(msg.header_len() + msg.payload.len() <= data.len());
    let mut out = Vec::new();
    msg.encode(&mut out).expect("a parsed message encodes");
    assert_eq!(out.len(), msg.encoded_len());
    assert_eq!(UdpMessage::parse(Bytes::from(out)).unwrap(), msg);

    let header = header_len(msg.addr.len());
    let max = header + 1 + usize::from(data[0]) * 8;
    match fragment(msg.session_id, msg.packet_id, &msg.addr, &msg.payload, max) {
        Err(_) => assert!(
            msg.payload.len() > MAX_UDP_PAYLOAD || msg.payload.len().div_ceil(max - header) > 255
        ),
        Ok(frags) => {
            let mut d = Defragger::new();
            let mut done = None;
            for f in frags.iter().rev() {
                assert!(f.len() <= max);
                let m = UdpMessage::parse(Bytes::copy_from_slice(f)).unwrap();
                assert!(done.is_none());
                done = d.feed(m).unwrap();
            }
            let whole = done.expect("all fragments fed");
            assert_eq!(whole.payload, msg.payload);
            assert_eq!(whole.addr, msg.addr);
        }
    }
});
