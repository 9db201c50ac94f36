//! Connection IDs that name their worker.
//!
//! Every CID a server worker issues carries the worker index in byte 0 and random bytes after
//! it, so the kernel steering program and the user-space router can find the owning worker from
//! a packet's destination CID alone (see DESIGN.md, "Connection-ID sharding").
//!
//! `validate()` rejecting other workers' CIDs is load-bearing: quinn-proto answers a
//! short-header packet for an unknown CID that validates with a stateless reset, and that reset
//! would kill the live connection that another worker owns. A CID that fails validation is
//! dropped silently instead.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand::RngCore;

/// Length of every CID a server worker issues: one worker byte and seven random bytes
/// (56 bits of entropy per worker, plenty for the lifetime of a process).
pub const CID_LEN: usize = 8;

/// Largest CID RFC 9000 allows in a long header (§17.2).
const MAX_CID_LEN: usize = 20;

/// First-byte bit of a long-header packet (RFC 9000 §17.2).
const LONG_HEADER_FORM: u8 = 0x80;
/// First-byte fixed bit; always set because we never advertise `grease_quic_bit`.
const FIXED_BIT: u8 = 0x40;

/// A node of a cluster (`cluster` in the server config): its CIDs follow QUIC-LB's plaintext
/// format (draft-ietf-quic-load-balancers), so a balancer that reads the server ID routes
/// every packet of a connection to its node, whatever the client's address.
///
/// ```text
/// byte 0       1      2        3..8
///      CR|len  node   worker   nonce (40 random bits)
/// ```
/// CR is the config rotation (3 bits, 0..=6; 7 means unroutable), `len` the CID length
/// less one (self-encoded length); the server ID is the node, then the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterId {
    pub config_rotation: u8,
    pub node: u8,
}

/// Where a server's CIDs carry their worker: byte 0 on a lone server, byte 2 (after the
/// QUIC-LB first octet and the node) in a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CidLayout {
    pub cluster: Option<ClusterId>,
}

impl CidLayout {
    /// The index of the worker byte within the CID.
    pub const fn worker_byte(&self) -> usize {
        if self.cluster.is_some() {
            2
        } else {
            0
        }
    }

    /// The QUIC-LB first octet of this node's CIDs.
    const fn first_octet(c: ClusterId) -> u8 {
        (c.config_rotation << 5) | (CID_LEN as u8 - 1)
    }

    /// Whether `dcid` (at least [`CID_LEN`] bytes) names another node of the cluster: its
    /// packets are that node's, and must be dropped without a stateless reset. Only a CID
    /// with this cluster's first octet names a node; any other (a client's stateless reset,
    /// whose bytes are random, or the unroutable rotation 7) is no node's, reaches a node by
    /// the balancer's 4-tuple fallback, and fails `validate` there like any unknown CID.
    pub fn other_node(&self, dcid: &[u8]) -> bool {
        match self.cluster {
            Some(c) => {
                dcid.starts_with(&[Self::first_octet(c)])
                    && dcid.get(1).is_some_and(|&n| n != c.node)
            }
            None => false,
        }
    }
}

/// Issues CIDs whose worker byte is this worker's index ([`CidLayout`]).
#[derive(Debug, Clone, Copy)]
pub struct ShardedCidGenerator {
    /// Index of the worker that owns every CID issued here; fixed at construction.
    worker: u8,
    /// Number of workers in the process; fixed at construction.
    workers: u8,
    /// Lifetime after which quinn-proto retires an issued CID; `None` keeps CIDs for the
    /// connection's life.
    lifetime: Option<Duration>,
    layout: CidLayout,
}

impl ShardedCidGenerator {
    /// A generator for `worker` out of `workers`.
    ///
    /// `worker < workers` is the caller's contract (worker indices come from the worker pool,
    /// not from configuration or the network).
    pub fn new(worker: u8, workers: u8) -> Self {
        debug_assert!(
            worker < workers,
            "worker {worker} out of range 0..{workers}"
        );
        Self {
            worker,
            workers,
            lifetime: None,
            layout: CidLayout::default(),
        }
    }

    /// CIDs in `layout` (a cluster node's).
    pub fn with_layout(mut self, layout: CidLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Retire issued CIDs after `lifetime`.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// The worker whose CIDs this generator issues.
    pub fn worker(&self) -> u8 {
        self.worker
    }

    /// The number of workers the generator was built for.
    pub fn workers(&self) -> u8 {
        self.workers
    }
}

impl ConnectionIdGenerator for ShardedCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        match self.layout.cluster {
            None => {
                bytes[0] = self.worker;
                rand::thread_rng().fill_bytes(&mut bytes[1..]);
            }
            Some(c) => {
                bytes[0] = CidLayout::first_octet(c);
                bytes[1] = c.node;
                bytes[2] = self.worker;
                rand::thread_rng().fill_bytes(&mut bytes[3..]);
            }
        }
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        let ours = cid.len() == CID_LEN
            && cid[self.layout.worker_byte()] == self.worker
            && match self.layout.cluster {
                None => true,
                Some(c) => cid[0] == CidLayout::first_octet(c) && cid[1] == c.node,
            };
        if ours {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

/// The worker that owns `dcid`, if its first byte names one of `workers` workers.
///
/// Used by the packet router; a `None` falls back to the 4-tuple.
pub fn worker_of(dcid: &[u8], workers: usize) -> Option<usize> {
    let first = usize::from(*dcid.first()?);
    (first < workers).then_some(first)
}

/// The destination CID of a short-header packet, assuming our fixed [`CID_LEN`].
///
/// Returns `None` for long headers, packets with the fixed bit clear, and packets too short to
/// hold a CID.
pub fn short_header_dcid(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first & LONG_HEADER_FORM != 0 || first & FIXED_BIT == 0 {
        return None;
    }
    packet.get(1..1 + CID_LEN)
}

/// The destination CID of a long-header packet (any version, including version negotiation).
///
/// Layout (RFC 9000 §17.2): first byte, 4-byte version, DCID length (at most 20), DCID.
/// Returns `None` for short headers, over-long CID lengths and truncated packets.
pub fn long_header_dcid(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first & LONG_HEADER_FORM == 0 {
        return None;
    }
    let len = usize::from(*packet.get(5)?);
    if len > MAX_CID_LEN {
        return None;
    }
    packet.get(6..6 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_cids_carry_worker_and_validate() {
        let mut g = ShardedCidGenerator::new(3, 4);
        for _ in 0..100 {
            let cid = g.generate_cid();
            assert_eq!(cid.len(), CID_LEN);
            assert_eq!(cid[0], 3);
            assert!(g.validate(&cid).is_ok());
            assert_eq!(worker_of(&cid, 4), Some(3));
        }
        assert_eq!(g.cid_len(), CID_LEN);
        assert_eq!(g.cid_lifetime(), None);
        let g = g.with_lifetime(Duration::from_secs(60));
        assert_eq!(g.cid_lifetime(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn cluster_cids_follow_quic_lb_and_name_node_and_worker() {
        let layout = CidLayout {
            cluster: Some(ClusterId {
                config_rotation: 1,
                node: 7,
            }),
        };
        let mut g = ShardedCidGenerator::new(2, 4).with_layout(layout);
        let other = ShardedCidGenerator::new(2, 4).with_layout(CidLayout {
            cluster: Some(ClusterId {
                config_rotation: 1,
                node: 8,
            }),
        });
        let lone = ShardedCidGenerator::new(2, 4);
        for _ in 0..100 {
            let cid = g.generate_cid();
            assert_eq!(cid.len(), CID_LEN);
            // CR 001, self-encoded length 7; server ID node 7, worker 2.
            assert_eq!(&cid[..3], &[0b001_00111, 7, 2]);
            assert!(g.validate(&cid).is_ok());
            assert!(other.validate(&cid).is_err(), "another node's");
            assert!(lone.validate(&cid).is_err());
            assert!(!layout.other_node(&cid));
            let mut foreign = cid.to_vec();
            foreign[1] = 8;
            assert!(layout.other_node(&foreign));
            // Not a CID of this cluster at all: random bytes such as a stateless reset's.
            foreign[0] = 0xfe;
            assert!(!layout.other_node(&foreign));
        }
        assert_eq!(layout.worker_byte(), 2);
        assert_eq!(CidLayout::default().worker_byte(), 0);
        assert!(!CidLayout::default().other_node(&[0; 8]));
    }

    #[test]
    fn cids_are_random_after_worker_byte() {
        let mut g = ShardedCidGenerator::new(0, 1);
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_ne!(a[1..], b[1..]);
    }

    #[test]
    fn worker_one_rejects_worker_zero_cids() {
        let mut w0 = ShardedCidGenerator::new(0, 2);
        let w1 = ShardedCidGenerator::new(1, 2);
        for _ in 0..100 {
            let cid = w0.generate_cid();
            assert!(w1.validate(&cid).is_err());
            assert!(w0.validate(&cid).is_ok());
        }
    }

    #[test]
    fn validate_rejects_wrong_length() {
        let g = ShardedCidGenerator::new(1, 2);
        assert!(g.validate(&ConnectionId::new(&[])).is_err());
        assert!(g.validate(&ConnectionId::new(&[1; 4])).is_err());
        assert!(g.validate(&ConnectionId::new(&[1; 9])).is_err());
        assert!(g.validate(&ConnectionId::new(&[1; CID_LEN])).is_ok());
    }

    #[test]
    fn worker_of_bounds() {
        assert_eq!(worker_of(&[], 4), None);
        assert_eq!(worker_of(&[0], 4), Some(0));
        assert_eq!(worker_of(&[3, 9, 9], 4), Some(3));
        assert_eq!(worker_of(&[4, 9, 9], 4), None);
        assert_eq!(worker_of(&[255], 0), None);
    }

    #[test]
    fn short_header_parsing() {
        let mut pkt = vec![0x40];
        pkt.extend_from_slice(&[2, 1, 1, 1, 1, 1, 1, 1]);
        pkt.extend_from_slice(&[0xaa; 20]);
        assert_eq!(short_header_dcid(&pkt), Some(&pkt[1..9]));
        // Exactly header + CID.
        assert_eq!(short_header_dcid(&pkt[..9]), Some(&pkt[1..9]));
        // Truncated.
        assert_eq!(short_header_dcid(&pkt[..8]), None);
        assert_eq!(short_header_dcid(&[]), None);
        // Fixed bit clear.
        pkt[0] = 0x00;
        assert_eq!(short_header_dcid(&pkt), None);
        // Long header.
        pkt[0] = 0xc0;
        assert_eq!(short_header_dcid(&pkt), None);
    }

    #[test]
    fn long_header_parsing() {
        let mut pkt = vec![0xc0, 0, 0, 0, 1, 8];
        pkt.extend_from_slice(&[5; 8]);
        pkt.push(0); // SCID length
        assert_eq!(long_header_dcid(&pkt), Some(&[5u8; 8][..]));
        // Zero-length DCID is valid.
        let empty = [0xc0, 0, 0, 0, 1, 0];
        assert_eq!(long_header_dcid(&empty), Some(&[][..]));
        // Truncated CID.
        assert_eq!(long_header_dcid(&pkt[..10]), None);
        // Truncated before length byte.
        assert_eq!(long_header_dcid(&pkt[..5]), None);
        assert_eq!(long_header_dcid(&[]), None);
        // Over-long CID length.
        let mut long = vec![0xc0, 0, 0, 0, 1, 21];
        long.extend_from_slice(&[0; 40]);
        assert_eq!(long_header_dcid(&long), None);
        // Short header.
        assert_eq!(long_header_dcid(&[0x40; 30]), None);
    }

    #[test]
    fn parsers_never_panic_on_short_garbage() {
        for len in 0..32 {
            for first in [0x00, 0x40, 0x80, 0xc0, 0xff] {
                let mut pkt = vec![0xffu8; len];
                if let Some(b) = pkt.first_mut() {
                    *b = first;
                }
                let _ = short_header_dcid(&pkt);
                let _ = long_header_dcid(&pkt);
            }
        }
    }
}
