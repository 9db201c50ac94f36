//! Admission of new QUIC handshakes on one worker, sans-IO.
//!
//! A handshake is the most expensive thing an unauthenticated peer can make the server do
//! (a key exchange and a signature), and a client Initial costs the sender almost nothing,
//! so a flood of Initials, with spoofed sources or not, could take the workers' CPU and
//! memory from the connections already established. Two rules bound it:
//!
//! - **Address validation under load**, as quic-go (the reference's QUIC stack) does it:
//!   once `max_unvalidated` handshakes are in progress on the worker, a new Initial that has
//!   not proved its address gets a Retry. A Retry is stateless and costs one packet, a real
//!   client comes back within a round trip with the token, and a spoofed or fire-and-forget
//!   source never does.
//! - **A rate**: at most `per_second` handshakes start per second (a token bucket holding
//!   one second's worth). An Initial over the rate gets a Retry if it has not been
//!   validated yet; a validated one is dropped without an answer, so its client sends it
//!   again after its probe timeout, by then usually within the rate.

use std::time::{Duration, Instant};

/// What to do with a new connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Start the handshake.
    Accept,
    /// Answer with a Retry (the client proves its address and comes back).
    Retry,
    /// Drop the Initial without an answer.
    Drop,
}

/// One worker's share of the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Handshakes in progress on the worker from which an unvalidated Initial gets a Retry.
    pub max_unvalidated: u64,
    /// Handshakes started per second.
    pub per_second: u64,
}

impl HandshakeLimits {
    /// The worker's share of server-wide limits (rounded up, at least 1 each).
    pub fn per_worker(max_unvalidated: u64, per_second: u64, workers: usize) -> Self {
        let n = workers.max(1) as u64;
        HandshakeLimits {
            max_unvalidated: max_unvalidated.div_ceil(n).max(1),
            per_second: per_second.div_ceil(n).max(1),
        }
    }
}

/// The decision state of one worker.
#[derive(Debug)]
pub struct HandshakeGate {
    limits: HandshakeLimits,
    /// Handshakes that may start now, up to `per_second`.
    tokens: f64,
    refilled: Instant,
}

impl HandshakeGate {
    pub fn new(limits: HandshakeLimits, now: Instant) -> Self {
        HandshakeGate {
            limits,
            tokens: limits.per_second as f64,
            refilled: now,
        }
    }

    /// The decision for an Initial that would start a handshake, with `in_progress`
    /// handshakes of this worker not yet complete. `validated`: the Initial carries a token
    /// that proves its source address; `may_retry`: it does not answer a Retry already
    /// (a second Retry is not allowed).
    pub fn admit(
        &mut self,
        now: Instant,
        in_progress: usize,
        validated: bool,
        may_retry: bool,
    ) -> Admit {
        let retry_or_drop = if !validated && may_retry {
            Admit::Retry
        } else {
            Admit::Drop
        };
        if !validated && may_retry && in_progress as u64 >= self.limits.max_unvalidated {
            return Admit::Retry;
        }
        self.refill(now);
        if self.tokens < 1.0 {
            return retry_or_drop;
        }
        self.tokens -= 1.0;
        Admit::Accept
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled);
        if elapsed >= Duration::from_millis(1) {
            let rate = self.limits.per_second as f64;
            self.tokens = (self.tokens + elapsed.as_secs_f64() * rate).min(rate);
            self.refilled = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_unvalidated: u64, per_second: u64, now: Instant) -> HandshakeGate {
        HandshakeGate::new(
            HandshakeLimits {
                max_unvalidated,
                per_second,
            },
            now,
        )
    }

    #[test]
    fn unvalidated_initials_get_a_retry_once_enough_handshakes_are_in_progress() {
        let t = Instant::now();
        let mut g = gate(3, 1000, t);
        assert_eq!(g.admit(t, 2, false, true), Admit::Accept);
        assert_eq!(g.admit(t, 3, false, true), Admit::Retry);
        // A validated client (it answered a Retry, or brought a token) is accepted.
        assert_eq!(g.admit(t, 3, true, false), Admit::Accept);
        assert_eq!(g.admit(t, 50, true, true), Admit::Accept);
        // An Initial that answers a Retry but whose token did not validate cannot get
        // another Retry; it is handled like any other under the rate.
        assert_eq!(g.admit(t, 50, false, false), Admit::Accept);
    }

    #[test]
    fn the_rate_holds_one_second_of_handshakes_and_refills_over_time() {
        let t = Instant::now();
        let mut g = gate(1000, 10, t);
        for _ in 0..10 {
            assert_eq!(g.admit(t, 0, true, false), Admit::Accept);
        }
        // Over the rate: validated attempts are dropped (the client retransmits), the
        // others get a Retry.
        assert_eq!(g.admit(t, 0, true, false), Admit::Drop);
        assert_eq!(g.admit(t, 0, false, true), Admit::Retry);
        // 100 ms later one more handshake may start, not two.
        let t = t + Duration::from_millis(100);
        assert_eq!(g.admit(t, 0, true, false), Admit::Accept);
        assert_eq!(g.admit(t, 0, true, false), Admit::Drop);
        // A long pause refills one second's worth, no more.
        let t = t + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(g.admit(t, 0, true, false), Admit::Accept);
        }
        assert_eq!(g.admit(t, 0, true, false), Admit::Drop);
    }

    #[test]
    fn a_flood_of_unvalidated_initials_starts_no_more_than_the_limits_allow() {
        // 5,000 Initials a second for 10 s from sources that never come back.
        let t0 = Instant::now();
        let mut g = gate(64, 1000, t0);
        let (mut accepted, mut retried) = (0usize, 0usize);
        for i in 0..50_000u64 {
            let now = t0 + Duration::from_micros(i * 200);
            // Handshakes never complete: in progress is everything accepted.
            match g.admit(now, accepted, false, true) {
                Admit::Accept => accepted += 1,
                Admit::Retry => retried += 1,
                Admit::Drop => unreachable!("an unvalidated Initial is never dropped"),
            }
        }
        assert_eq!(accepted, 64);
        assert_eq!(retried, 50_000 - 64);
    }

    #[test]
    fn limits_split_over_workers_round_up() {
        let l = HandshakeLimits::per_worker(128, 2_001, 2);
        assert_eq!(l.max_unvalidated, 64);
        assert_eq!(l.per_second, 1_001);
        let l = HandshakeLimits::per_worker(1, 1, 8);
        assert_eq!((l.max_unvalidated, l.per_second), (1, 1));
    }
}
