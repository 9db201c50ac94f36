//! Reassembly of fragmented UDPMessages, one [`Defragger`] per UDP session.
//!
//! The official implementation keeps one packet under reassembly per session and throws it
//! away when a fragment of another packet arrives; sing-box numbers every packet and may
//! interleave fragments of several. Keeping a few packets in least-recently-used order accepts
//! both: an official sender's abandoned packet just ages out.

use bytes::Bytes;

use super::udp::UdpMessage;
use super::ProtoError;

/// Packets under reassembly per session. sing-box interleaves at most a handful; the official
/// implementation never more than one.
pub const DEFAULT_MAX_PACKETS: usize = 4;
/// Payload bytes held per session: one UDP datagram of the largest size (65,507) fits.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;

/// Joins the fragments of a session's UDP packets.
///
/// Memory bound: at most `max_packets` packets under reassembly and at most `max_bytes` payload
/// bytes held, copied out of the datagrams so no receive buffer stays pinned; bookkeeping adds
/// at most one `(u8, Vec<u8>)` entry per held fragment. When a new fragment would break a
/// limit, the least recently touched other packets are dropped; a packet that alone would
/// exceed `max_bytes` is dropped with [`ProtoError::ReassemblyTooLarge`].
#[derive(Debug)]
pub struct Defragger {
    /// Packets under reassembly, least recently touched first; changes on every fragment.
    partials: Vec<Partial>,
    /// Sum of `Partial::bytes`; changes with `partials`.
    bytes: usize,
    /// Limit on `partials.len()`; fixed at construction.
    max_packets: usize,
    /// Limit on `bytes`; fixed at construction.
    max_bytes: usize,
}

#[derive(Debug)]
struct Partial {
    /// Shared by all fragments of the packet.
    packet_id: u16,
    /// From the first fragment seen; a fragment with another count restarts the packet.
    frag_count: u8,
    /// Fragments received so far, sorted by id, without duplicates.
    frags: Vec<(u8, Vec<u8>)>,
    /// Payload bytes in `frags`.
    bytes: usize,
}

impl Default for Defragger {
    fn default() -> Self {
        Self::new()
    }
}

impl Defragger {
    /// A defragger with [`DEFAULT_MAX_PACKETS`] and [`DEFAULT_MAX_BYTES`].
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_PACKETS, DEFAULT_MAX_BYTES)
    }

    /// A defragger with other limits; `max_packets` of 1 behaves like the official one.
    pub fn with_limits(max_packets: usize, max_bytes: usize) -> Self {
        Self {
            partials: Vec::new(),
            bytes: 0,
            max_packets: max_packets.max(1),
            max_bytes,
        }
    }

    /// Takes one received message; returns the whole packet once its last fragment arrives.
    ///
    /// Unfragmented messages (`frag_count` 0 or 1) come straight back. The reassembled message
    /// has `frag_id` 0, `frag_count` 1 and the address of the fragment that completed it.
    /// Duplicates return `Ok(None)`; `Err` means the message was dropped (count it).
    pub fn feed(&mut self, msg: UdpMessage) -> Result<Option<UdpMessage>, ProtoError> {
        if msg.frag_count <= 1 {
            return Ok(Some(msg));
        }
        if msg.frag_id >= msg.frag_count {
            return Err(ProtoError::FragmentOutOfRange {
                frag_id: msg.frag_id,
                frag_count: msg.frag_count,
            });
        }
        let mut partial = match self.take(msg.packet_id) {
            Some(p) if p.frag_count == msg.frag_count => p,
            _ => Partial {
                packet_id: msg.packet_id,
                frag_count: msg.frag_count,
                frags: Vec::new(),
                bytes: 0,
            },
        };
        let Err(slot) = partial.frags.binary_search_by_key(&msg.frag_id, |f| f.0) else {
            self.put(partial);
            return Ok(None);
        };
        let bytes = partial.bytes + msg.payload.len();
        if bytes > self.max_bytes {
            return Err(ProtoError::ReassemblyTooLarge {
                packet_id: msg.packet_id,
                bytes,
            });
        }
        partial
            .frags
            .insert(slot, (msg.frag_id, msg.payload.to_vec()));
        partial.bytes = bytes;
        if partial.frags.len() < usize::from(partial.frag_count) {
            self.put(partial);
            return Ok(None);
        }
        let mut payload = Vec::with_capacity(partial.bytes);
        for (_, part) in &partial.frags {
            payload.extend_from_slice(part);
        }
        Ok(Some(UdpMessage {
            session_id: msg.session_id,
            packet_id: msg.packet_id,
            frag_id: 0,
            frag_count: 1,
            addr: msg.addr,
            payload: Bytes::from(payload),
        }))
    }

    /// Payload bytes held for incomplete packets.
    pub fn buffered_bytes(&self) -> usize {
        self.bytes
    }

    /// Packets under reassembly.
    pub fn pending_packets(&self) -> usize {
        self.partials.len()
    }

    /// Drops every incomplete packet.
    pub fn clear(&mut self) {
        self.partials.clear();
        self.bytes = 0;
    }

    fn take(&mut self, packet_id: u16) -> Option<Partial> {
        let i = self
            .partials
            .iter()
            .position(|p| p.packet_id == packet_id)?;
        let p = self.partials.remove(i);
        self.bytes -= p.bytes;
        Some(p)
    }

    /// Stores `partial` as the most recently touched, evicting the least recent to make room.
    fn put(&mut self, partial: Partial) {
        while !self.partials.is_empty()
            && (self.partials.len() >= self.max_packets
                || self.bytes + partial.bytes > self.max_bytes)
        {
            let old = self.partials.remove(0);
            self.bytes -= old.bytes;
        }
        self.bytes += partial.bytes;
        self.partials.push(partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::udp::{fragment, MAX_UDP_MESSAGE};

    const ADDR: &str = "8.8.8.8:53";

    fn frags(packet_id: u16, payload: &[u8], max: usize) -> Vec<UdpMessage> {
        fragment(3, packet_id, ADDR, payload, max)
            .unwrap()
            .into_iter()
            .map(|f| UdpMessage::parse(Bytes::from(f)).unwrap())
            .collect()
    }

    fn payload(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    fn assert_whole(got: Option<UdpMessage>, packet_id: u16, payload: &[u8]) {
        let msg = got.expect("packet complete");
        assert_eq!((msg.session_id, msg.packet_id), (3, packet_id));
        assert_eq!((msg.frag_id, msg.frag_count), (0, 1));
        assert_eq!(msg.addr, ADDR);
        assert_eq!(&msg.payload[..], payload);
    }

    #[test]
    fn unfragmented_passes_through() {
        let mut d = Defragger::new();
        let mut m = frags(0, b"hello", MAX_UDP_MESSAGE).remove(0);
        assert_eq!(d.feed(m.clone()).unwrap(), Some(m.clone()));
        m.frag_count = 0;
        assert_eq!(d.feed(m.clone()).unwrap(), Some(m));
        assert_eq!(d.pending_packets(), 0);
    }

    #[test]
    fn official_style_in_order_and_reversed() {
        let mut d = Defragger::new();
        let p = payload(1, 4000);
        let fs = frags(777, &p, MAX_UDP_MESSAGE);
        assert_eq!(fs.len(), 4);
        let last = fs.len() - 1;
        for (i, f) in fs.iter().enumerate() {
            let got = d.feed(f.clone()).unwrap();
            if i < last {
                assert_eq!(got, None);
            } else {
                assert_whole(got, 777, &p);
            }
        }
        assert_eq!((d.pending_packets(), d.buffered_bytes()), (0, 0));
        let mut rev = fs.clone();
        rev.reverse();
        for f in &rev[..last] {
            assert_eq!(d.feed(f.clone()).unwrap(), None);
        }
        assert_whole(d.feed(rev[last].clone()).unwrap(), 777, &p);
    }

    #[test]
    fn duplicates_ignored() {
        let mut d = Defragger::new();
        let p = payload(2, 3000);
        let fs = frags(5, &p, 1000);
        assert_eq!(d.feed(fs[0].clone()).unwrap(), None);
        assert_eq!(d.feed(fs[0].clone()).unwrap(), None);
        assert_eq!(d.feed(fs[1].clone()).unwrap(), None);
        assert_eq!(d.feed(fs[1].clone()).unwrap(), None);
        assert_eq!(
            d.buffered_bytes(),
            fs[0].payload.len() + fs[1].payload.len()
        );
        assert_eq!(d.feed(fs[3].clone()).unwrap(), None);
        assert_whole(d.feed(fs[2].clone()).unwrap(), 5, &p);
        // A late duplicate of a finished packet starts a new (never completed) one.
        assert_eq!(d.feed(fs[0].clone()).unwrap(), None);
        assert_eq!(d.pending_packets(), 1);
    }

    #[test]
    fn sing_box_style_interleaved() {
        let mut d = Defragger::new();
        let ps: Vec<Vec<u8>> = (0..4).map(|i| payload(i, 2500 + usize::from(i))).collect();
        let fs: Vec<Vec<UdpMessage>> = (0..4u16)
            .map(|i| frags(100 + i, &ps[usize::from(i)], MAX_UDP_MESSAGE))
            .collect();
        assert!(fs.iter().all(|f| f.len() == 3));
        let mut done = Vec::new();
        for round in 0..3 {
            for (i, f) in fs.iter().enumerate() {
                if let Some(m) = d.feed(f[2 - round].clone()).unwrap() {
                    assert_whole(Some(m.clone()), 100 + i as u16, &ps[i]);
                    done.push(i);
                }
            }
        }
        assert_eq!(done, [0, 1, 2, 3]);
        assert_eq!(d.buffered_bytes(), 0);
    }

    #[test]
    fn lost_fragment_loses_only_that_packet() {
        let mut d = Defragger::new();
        let (a, b) = (payload(10, 2000), payload(20, 2000));
        let fa = frags(1, &a, MAX_UDP_MESSAGE);
        let fb = frags(2, &b, MAX_UDP_MESSAGE);
        assert_eq!(d.feed(fa[0].clone()).unwrap(), None); // fa[1] is lost
        assert_eq!(d.feed(fb[0].clone()).unwrap(), None);
        assert_whole(d.feed(fb[1].clone()).unwrap(), 2, &b);
        assert_eq!(d.pending_packets(), 1);
        // Four newer packets push the abandoned one out.
        for id in 3..7 {
            let f = frags(id, &a, MAX_UDP_MESSAGE);
            assert_eq!(d.feed(f[0].clone()).unwrap(), None);
        }
        assert_eq!(d.pending_packets(), DEFAULT_MAX_PACKETS);
        assert_eq!(d.feed(fa[1].clone()).unwrap(), None, "packet 1 was evicted");
    }

    #[test]
    fn official_limit_of_one_discards_the_partial() {
        let mut d = Defragger::with_limits(1, DEFAULT_MAX_BYTES);
        let (a, b) = (payload(1, 2000), payload(2, 2000));
        let fa = frags(1, &a, MAX_UDP_MESSAGE);
        let fb = frags(2, &b, MAX_UDP_MESSAGE);
        assert_eq!(d.feed(fa[0].clone()).unwrap(), None);
        assert_eq!(d.feed(fb[0].clone()).unwrap(), None);
        assert_eq!(
            d.feed(fa[1].clone()).unwrap(),
            None,
            "packet 1 was discarded"
        );
        assert_eq!(d.feed(fb[1].clone()).unwrap(), None, "and so was packet 2");
        assert_eq!(d.pending_packets(), 1);
    }

    #[test]
    fn changed_frag_count_restarts() {
        let mut d = Defragger::new();
        let p = payload(9, 2000);
        let two = frags(4, &p, MAX_UDP_MESSAGE);
        let three = frags(4, &p, 800);
        assert_eq!(three.len(), 3);
        assert_eq!(d.feed(two[0].clone()).unwrap(), None);
        assert_eq!(d.feed(three[0].clone()).unwrap(), None);
        // Restarted again: only fragment 1 of the two-fragment set is held.
        assert_eq!(d.feed(two[1].clone()).unwrap(), None);
        assert_eq!(d.buffered_bytes(), two[1].payload.len());
        assert_whole(d.feed(two[0].clone()).unwrap(), 4, &p);
    }

    #[test]
    fn out_of_range_dropped() {
        let mut d = Defragger::new();
        let mut m = frags(1, &payload(0, 2000), MAX_UDP_MESSAGE).remove(0);
        m.frag_id = 2;
        assert_eq!(
            d.feed(m),
            Err(ProtoError::FragmentOutOfRange {
                frag_id: 2,
                frag_count: 2
            })
        );
        assert_eq!(d.pending_packets(), 0);
    }

    #[test]
    fn memory_bound_respected() {
        let max_bytes = 5000;
        let mut d = Defragger::with_limits(4, max_bytes);
        // 40 packets, all missing their last fragment: the budget holds, and evicts LRU.
        for id in 0..40u16 {
            let fs = frags(id, &payload(id as u8, 4000), 1100);
            for f in &fs[..fs.len() - 1] {
                assert_eq!(d.feed(f.clone()).unwrap(), None);
                assert!(d.buffered_bytes() <= max_bytes);
                assert!(d.pending_packets() <= 4);
            }
        }
        // A packet bigger than the budget on its own is refused without holding more.
        let max_bytes = 3000;
        let mut d = Defragger::with_limits(4, max_bytes);
        let big = payload(0, 4096);
        let mut fs = frags(99, &big, 400);
        let mut refused = false;
        for f in fs.drain(..) {
            match d.feed(f) {
                Ok(got) => assert_eq!(got, None),
                Err(ProtoError::ReassemblyTooLarge {
                    packet_id: 99,
                    bytes,
                }) => {
                    assert!(bytes > max_bytes);
                    refused = true;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(d.buffered_bytes() <= max_bytes);
        }
        assert!(refused);
        d.clear();
        assert_eq!((d.pending_packets(), d.buffered_bytes()), (0, 0));
    }
}
