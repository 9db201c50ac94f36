//! Which worker owns a datagram, from the worker byte of its destination connection ID.
//!
//! Our server CIDs carry the issuing worker in byte 0, or byte 2 in a cluster (`quic::cid`,
//! `CidLayout`), where byte 1 names the node. A client's first
//! Initial carries a DCID the client chose at random; routing it by its byte 0 too is
//! consistent (every copy of it goes to the same worker, which then issues its own CIDs),
//! so one rule serves both header forms.

use crate::quic::cid::{CidLayout, CID_LEN};

/// Where a datagram goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Worker index from the DCID.
    Worker(usize),
    /// No worker encoded (e.g. a client-chosen DCID of another length): handle here.
    Local,
    /// Too short to be QUIC: drop and count.
    Malformed,
    /// A short header for another node of the cluster: drop, never reset.
    OtherNode,
}

/// Routes one datagram (already de-obfuscated) among `workers` workers.
pub fn route(packet: &[u8], workers: usize, layout: &CidLayout) -> Route {
    let Some(&first) = packet.first() else {
        return Route::Malformed;
    };
    let dcid = if first & 0x80 == 0 {
        // Short header: flags, then our fixed-length DCID. The fixed bit (0x40) is not
        // checked: peers may grease it (RFC 9287).
        match packet.get(1..1 + CID_LEN) {
            Some(d) if layout.other_node(d) => return Route::OtherNode,
            Some(d) => d,
            None => return Route::Malformed,
        }
    } else {
        // Long header: flags, version (4), DCID length (1), DCID.
        let Some(&len) = packet.get(5) else {
            return Route::Malformed;
        };
        let len = len as usize;
        match packet.get(6..6 + len) {
            Some(d) if len == CID_LEN => d,
            Some(_) => return Route::Local,
            None => return Route::Malformed,
        }
    };
    let w = dcid[layout.worker_byte()] as usize;
    if w < workers {
        Route::Worker(w)
    } else {
        Route::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONE: CidLayout = CidLayout { cluster: None };

    #[test]
    fn short_header_routes_by_first_dcid_byte() {
        let mut p = vec![0x40, 1, 2, 3, 4, 5, 6, 7, 8, 0xaa];
        assert_eq!(route(&p, 2, &LONE), Route::Worker(1));
        p[1] = 7;
        assert_eq!(route(&p, 2, &LONE), Route::Local);
        assert_eq!(route(&p[..5], 2, &LONE), Route::Malformed);
        assert_eq!(route(&[], 2, &LONE), Route::Malformed);
    }

    #[test]
    fn long_header_routes_only_our_cid_length() {
        let mut p = vec![0xc0, 0, 0, 0, 1, 8, 0, 9, 9, 9, 9, 9, 9, 9, 0];
        assert_eq!(route(&p, 2, &LONE), Route::Worker(0));
        p[5] = 4;
        assert_eq!(route(&p, 2, &LONE), Route::Local);
        p[5] = 200;
        assert_eq!(route(&p, 2, &LONE), Route::Malformed);
        assert_eq!(route(&p[..4], 2, &LONE), Route::Malformed);
    }

    #[test]
    fn a_cluster_node_routes_by_byte_two_and_drops_other_nodes() {
        let node3 = CidLayout {
            cluster: Some(crate::quic::cid::ClusterId {
                config_rotation: 0,
                node: 3,
            }),
        };
        let mut p = vec![0x40, 0x07, 3, 1, 9, 9, 9, 9, 9, 0xaa];
        assert_eq!(route(&p, 2, &node3), Route::Worker(1));
        p[2] = 4;
        assert_eq!(route(&p, 2, &node3), Route::OtherNode);
        // A client's stateless reset: random bytes after the flags, no node's CID. It goes
        // to quinn-proto as an unknown CID, which `validate` refuses without a reply.
        let reset = vec![0x77, 0xfe, 0x0e, 0xac, 0xbd, 0xde, 0x3b, 0x01, 0x06, 0xcf];
        assert_eq!(route(&reset, 2, &node3), Route::Local);
        // A client's Initial: its random DCID routes consistently by the same byte.
        let init = vec![0xc0, 0, 0, 0, 1, 8, 0x55, 0x66, 1, 9, 9, 9, 9, 9, 0];
        assert_eq!(route(&init, 2, &node3), Route::Worker(1));
    }
}
