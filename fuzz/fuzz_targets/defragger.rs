//! A Defragger fed arbitrary fragment sequences keeps its bounds and only ever returns
//! complete packets joined in fragment order.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quelay::proto::{Defragger, UdpMessage};

fuzz_target!(|data: &[u8]| {
    let Some((&limits, cmds)) = data.split_first() else {
        return;
    };
    let max_packets = usize::from(limits & 0x7) + 1;
    let max_bytes = usize::from(limits >> 3) * 64;
    let mut d = Defragger::with_limits(max_packets, max_bytes);
    // Each command: packet id (few values, to collide), frag id, frag count, length.
    for cmd in cmds.chunks_exact(4) {
        let (packet_id, frag_id, frag_count) =
            (u16::from(cmd[0] & 0x7), cmd[1] & 0xf, cmd[2] & 0xf);
        let len = usize::from(cmd[3]) + 1;
        // Payload bytes name their fragment, so the join order can be checked.
        let msg = UdpMessage {
            session_id: 1,
            packet_id,
            frag_id,
            frag_count,
            addr: "1.2.3.4:5".into(),
            payload: Bytes::from(vec![frag_id; len]),
        };
        let before = d.buffered_bytes();
        match d.feed(msg) {
            Err(_) => {}
            Ok(None) => assert!(frag_count > 1),
            Ok(Some(whole)) if frag_count <= 1 => assert_eq!(whole.payload.len(), len),
            Ok(Some(whole)) => {
                assert_eq!(
                    (whole.frag_id, whole.frag_count, whole.packet_id),
                    (0, 1, packet_id)
                );
                assert!(whole.payload.len() <= max_bytes && whole.payload.len() <= before + len);
                let mut seen = Vec::new();
                for &b in whole.payload.iter() {
                    if seen.last() != Some(&b) {
                        seen.push(b);
                    }
                }
                assert_eq!(seen, (0..frag_count).collect::<Vec<_>>());
            }
        }
        assert!(d.buffered_bytes() <= max_bytes);
        assert!(d.pending_packets() <= max_packets);
    }
});
