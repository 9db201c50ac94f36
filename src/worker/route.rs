//! Which worker owns a datagram, from the first byte of its destination connection ID.
//!
//! Our server CIDs carry the issuing worker in byte 0 (`quic::cid`). A client's first
//! Initial carries a DCID the client chose at random; routing it by its byte 0 too is
//! consistent (every copy of it goes to the same worker, which then issues its own CIDs),
//! so one rule serves both header forms.

use crate::quic::cid::CID_LEN;

/// Where a datagram goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Worker index from the DCID.
    Worker(usize),
    /// No worker encoded (e.g. a client-chosen DCID of another length): handle here.
    Local,
    /// Too short to be QUIC: drop and count.
    Malformed,
}

/// Routes one datagram (already de-obfuscated) among `workers` workers.
pub fn route(packet: &[u8], workers: usize) -> Route {
    let Some(&first) = packet.first() else {
        return Route::Malformed;
    };
    let dcid = if first & 0x80 == 0 {
        // Short header: flags, then our fixed-length DCID. The fixed bit (0x40) is not
        // checked: peers may grease it (RFC 9287).
        match packet.get(1..1 + CID_LEN) {
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
    let w = dcid[0] as usize;
    if w < workers {
        Route::Worker(w)
    } else {
        Route::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_header_routes_by_first_dcid_byte() {
        let mut p = vec![0x40, 1, 2, 3, 4, 5, 6, 7, 8, 0xaa];
        assert_eq!(route(&p, 2), Route::Worker(1));
        p[1] = 7;
        assert_eq!(route(&p, 2), Route::Local);
        assert_eq!(route(&p[..5], 2), Route::Malformed);
        assert_eq!(route(&[], 2), Route::Malformed);
    }

    #[test]
    fn long_header_routes_only_our_cid_length() {
        let mut p = vec![0xc0, 0, 0, 0, 1, 8, 0, 9, 9, 9, 9, 9, 9, 9, 0];
        assert_eq!(route(&p, 2), Route::Worker(0));
        p[5] = 4;
        assert_eq!(route(&p, 2), Route::Local);
        p[5] = 200;
        assert_eq!(route(&p, 2), Route::Malformed);
        assert_eq!(route(&p[..4], 2), Route::Malformed);
    }
}
