//! Port hopping, client side (the reference's `udphop`): QUIC is given one server address,
//! the worker sends to a random port of the server's set and, every interval, moves to a
//! new local socket and a new random port. The socket it leaves keeps receiving until the
//! next hop (`Driver::rebind`), and replies from any port of the set reach QUIC as coming
//! from the one address it knows, so QUIC sees a single path throughout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::engine::{self, Driver};
use crate::metrics::WorkerCounters;

/// How a client group hops: the same for every worker.
#[derive(Clone, Debug)]
pub struct HopPlan {
    /// The server's ports, sorted, without duplicates. QUIC is given the first.
    pub ports: Arc<[u16]>,
    /// The interval, drawn uniformly from `min..=max` after each hop (`min == max`: fixed).
    pub min: Duration,
    pub max: Duration,
    /// Buffer size asked for each new socket (as for the first).
    pub buffer: usize,
    /// Socket options of each new socket (as for the first).
    pub sockopts: engine::SockOpts,
}

impl HopPlan {
    /// The port QUIC sees the server on.
    pub fn virtual_port(&self) -> u16 {
        self.ports[0]
    }
}

/// One worker's hopping state.
pub(super) struct Hop {
    plan: HopPlan,
    /// The port datagrams to the server leave for now.
    current: u16,
    pub next: Instant,
}

impl Hop {
    /// `None` for a plan without ports (nothing to hop over).
    pub fn new(plan: HopPlan, now: Instant) -> Option<Hop> {
        if plan.ports.is_empty() {
            return None;
        }
        let mut hop = Hop {
            current: plan.ports[0],
            next: now,
            plan,
        };
        hop.pick(now);
        Some(hop)
    }

    fn pick(&mut self, now: Instant) {
        let mut rng = rand::thread_rng();
        self.current = self.plan.ports[rng.gen_range(0..self.plan.ports.len())];
        self.next = now + rng.gen_range(self.plan.min..=self.plan.max.max(self.plan.min));
    }

    /// A datagram for the server leaves for the current port.
    #[inline]
    pub fn outgoing(&self, dest: &mut SocketAddr) {
        if dest.port() == self.plan.virtual_port() {
            dest.set_port(self.current);
        }
    }

    /// A datagram from any port of the set reaches QUIC as coming from the one it knows.
    #[inline]
    pub fn incoming(&self, peer: &mut SocketAddr) {
        if self.plan.ports.binary_search(&peer.port()).is_ok() {
            peer.set_port(self.plan.virtual_port());
        }
    }

    /// Hops if it is time: a new local socket and a new port. A socket that cannot be
    /// opened skips this hop (as the reference does) and the next is tried an interval later.
    pub fn poll(&mut self, now: Instant, driver: &mut dyn Driver, counters: &WorkerCounters) {
        if now < self.next {
            return;
        }
        let mut bind = driver.local_addr();
        bind.set_port(0);
        let rebound = engine::bind_udp_with(bind, false, self.plan.buffer, &self.plan.sockopts)
            .and_then(|(socket, _)| driver.rebind(socket));
        match rebound {
            Ok(()) => {
                self.pick(now);
                WorkerCounters::add(&counters.hops, 1);
                tracing::debug!(
                    "port hop: from {} to server port {}",
                    driver.local_addr(),
                    self.current
                );
            }
            Err(e) => {
                crate::warn_limited!("port hop skipped: cannot open a new UDP socket: {e}");
                self.next = now + self.plan.min;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ports: &[u16]) -> HopPlan {
        HopPlan {
            ports: ports.into(),
            min: Duration::from_secs(10),
            max: Duration::from_secs(30),
            buffer: 1 << 20,
            sockopts: Default::default(),
        }
    }

    #[test]
    fn rewrites_only_the_servers_ports() {
        let now = Instant::now();
        let hop = Hop::new(plan(&[2000, 2001, 2005]), now).expect("ports");
        assert!([2000, 2001, 2005].contains(&hop.current));
        assert!(hop.next >= now + Duration::from_secs(10));
        assert!(hop.next <= now + Duration::from_secs(30));
        let mut out: SocketAddr = "10.0.0.1:2000".parse().unwrap();
        hop.outgoing(&mut out);
        assert_eq!(out.port(), hop.current);
        let mut other: SocketAddr = "10.0.0.1:53".parse().unwrap();
        hop.outgoing(&mut other);
        assert_eq!(other.port(), 53);
        for port in [2000, 2001, 2005] {
            let mut from = SocketAddr::from(([10, 0, 0, 1], port));
            hop.incoming(&mut from);
            assert_eq!(from.port(), 2000, "{port}");
        }
        let mut stranger: SocketAddr = "10.0.0.1:2002".parse().unwrap();
        hop.incoming(&mut stranger);
        assert_eq!(stranger.port(), 2002);
        assert!(Hop::new(plan(&[]), now).is_none());
    }

    #[test]
    fn every_port_gets_picked() {
        let ports: Vec<u16> = (40000..40010).collect();
        let mut hop = Hop::new(plan(&ports), Instant::now()).expect("ports");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            hop.pick(Instant::now());
            seen.insert(hop.current);
        }
        assert_eq!(seen.len(), 10);
    }
}
