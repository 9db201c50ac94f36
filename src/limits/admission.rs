//! Connections that have not authenticated yet, counted over all workers: in total and per
//! source address, so that one address (or a flood from many) cannot hold the server's
//! handshake and HTTP/3 state while users' connections wait.
//!
//! Per-source counts live in a fixed table of counters indexed by a keyed hash of the
//! source: lock-free, bounded memory whatever the number of sources. Two sources that share
//! a slot share its count, which can only make the cap stricter. An IPv6 source counts by
//! its /64, the block one host usually holds.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Slots of the per-source table.
const SLOTS: usize = 4096;

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `limits.maxUnauthenticated` connections are waiting to authenticate.
    Total,
    /// `limits.maxUnauthenticatedPerSource` of them come from this source.
    Source,
}

/// The counters (one per server, shared by the workers).
#[derive(Debug)]
pub struct Unauthenticated {
    total: AtomicU64,
    slots: Box<[AtomicU32]>,
    hasher: std::collections::hash_map::RandomState,
    refused: AtomicU64,
}

/// One unauthenticated connection's place; released when dropped (at authentication or
/// when the connection goes).
#[derive(Debug)]
pub struct UnauthPermit {
    owner: Arc<Unauthenticated>,
    slot: usize,
}

impl Drop for UnauthPermit {
    fn drop(&mut self) {
        self.owner.total.fetch_sub(1, Ordering::AcqRel);
        self.owner.slots[self.slot].fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Unauthenticated {
    fn default() -> Self {
        Unauthenticated {
            total: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            refused: AtomicU64::new(0),
        }
    }
}

impl Unauthenticated {
    /// Admits a connection from `source` while fewer than `max_total` connections in all,
    /// and fewer than `max_per_source` from its source, wait to authenticate.
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        max_total: u64,
        max_per_source: u32,
    ) -> Result<UnauthPermit, Refused> {
        let slot = self.slot(source);
        if !acquire(&self.total, max_total) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        if !acquire32(&self.slots[slot], max_per_source) {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Source);
        }
        Ok(UnauthPermit {
            owner: self.clone(),
            slot,
        })
    }

    /// Connections waiting to authenticate now.
    pub fn held(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn slot(&self, source: IpAddr) -> usize {
        let mut h = self.hasher.build_hasher();
        match source {
            IpAddr::V4(v4) => v4.hash(&mut h),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.hash(&mut h),
                None => v6.octets()[..8].hash(&mut h),
            },
        }
        (h.finish() % SLOTS as u64) as usize
    }
}

fn acquire(c: &AtomicU64, max: u64) -> bool {
    c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < max).then_some(n + 1)
    })
    .is_ok()
}

fn acquire32(c: &AtomicU32, max: u32) -> bool {
    c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < max).then_some(n + 1)
    })
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_source_and_in_total_and_releases_on_drop() {
        let u = Arc::new(Unauthenticated::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| u.admit(a, 10, 3).unwrap()).collect();
        assert_eq!(u.admit(a, 10, 3).unwrap_err(), Refused::Source);
        // The same /64 is the same source; another address is not.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        let _x = u.admit(v6a, 10, 1).unwrap();
        assert_eq!(u.admit(v6b, 10, 1).unwrap_err(), Refused::Source);
        assert_eq!(u.held(), 4);
        drop(held);
        assert_eq!(u.held(), 1);
        let _again = u.admit(a, 10, 3).unwrap();
        assert_eq!(
            u.admit("198.51.100.7".parse().unwrap(), 2, 3).unwrap_err(),
            Refused::Total
        );
        assert_eq!(u.refused(), 3);
    }
}
