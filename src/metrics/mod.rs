//! Counters. Each worker owns one [`WorkerCounters`] and is its only writer (relaxed
//! stores, no contention); readers (tests, the metrics endpoint) sum them.

pub mod http;
pub mod limited;
pub mod prometheus;
pub mod traffic;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One worker's counters, cache-line aligned so workers never share a line.
#[repr(align(128))]
#[derive(Default, Debug)]
pub struct WorkerCounters {
    /// UDP datagrams received by this worker's socket (GRO segments counted one by one).
    pub rx_datagrams: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Receive completions that held more than one datagram.
    pub rx_gro_batches: AtomicU64,
    pub tx_datagrams: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// `sendmsg` calls carrying a UDP_SEGMENT batch.
    pub tx_gso_batches: AtomicU64,
    pub tx_errors: AtomicU64,
    /// GSO switched off after a send failure.
    pub gso_disabled: AtomicU64,
    /// Datagrams too short or malformed to route, dropped before QUIC saw them.
    pub rx_malformed: AtomicU64,
    /// Datagrams QUIC dropped: undecryptable, unknown connection, or garbage.
    pub rx_dropped: AtomicU64,
    /// Stateless replies the endpoint sent to unknown datagrams (version negotiation,
    /// stateless resets, refusals).
    pub rx_responses: AtomicU64,
    /// Stateless resets sent: short-header datagrams for no connection of this worker
    /// (state lost, or a datagram steered to the wrong worker).
    pub stateless_resets: AtomicU64,
    /// Short-header datagrams for another node of the cluster, dropped unanswered.
    pub other_node: AtomicU64,
    /// Times a connection's peer address changed (a client's new port or address: NAT
    /// rebinding, or port hopping), followed by the connection.
    pub migrations: AtomicU64,
    /// Port hops of a client worker: a new local port and a new server port.
    pub hops: AtomicU64,
    /// Datagrams that reached this worker but belong to another, sent on to it.
    pub forwarded_out: AtomicU64,
    /// Datagrams other workers sent to this one.
    pub forwarded_in: AtomicU64,
    /// Forwarded datagrams lost because the target's queue was full.
    pub forward_dropped: AtomicU64,
    /// Connections currently held.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Incoming connections refused or failed during the handshake set-up.
    pub accept_errors: AtomicU64,
    /// Initials answered with a Retry (address validation under load or over the
    /// handshake rate).
    pub handshakes_retried: AtomicU64,
    /// Initials dropped unanswered: validated, but over the handshake rate.
    pub handshakes_dropped: AtomicU64,
    /// Loop iterations, and those that ended in a blocking wait.
    pub loops: AtomicU64,
    pub waits: AtomicU64,
    /// Proxy streams relayed since start, and relayed now (each holds a stream permit).
    pub streams_relayed: AtomicU64,
    pub streams_open: AtomicU64,
    /// Proxy streams waiting for a permit (a cap was reached), now.
    pub streams_parked: AtomicU64,
    /// Times a connection's stream credit was withheld at a cap.
    pub credit_withheld: AtomicU64,
    /// Proxy streams refused: malformed requests, targets the outbound guard refuses.
    pub streams_refused: AtomicU64,
    /// Proxy streams and UDP destinations an ACL `reject` rule refused.
    pub acl_rejected: AtomicU64,
    /// Requests whose target sniffing replaced with the name their first bytes carry.
    pub sniffed: AtomicU64,
    /// Window updates sent (MAX_DATA and MAX_STREAM_DATA frames): by connections gone,
    /// and by live ones (refreshed every second).
    pub window_updates_closed: AtomicU64,
    pub window_updates_live: AtomicU64,
    /// DATA_BLOCKED frames received (a peer that waited on connection credit): from
    /// connections gone, and from live ones (refreshed every second).
    pub data_blocked_closed: AtomicU64,
    pub data_blocked_live: AtomicU64,
    /// Auth requests refused (wrong credentials, or the HTTP backend said no).
    pub auth_failures: AtomicU64,
    /// Receive window advertised over the worker's connections now (bytes).
    pub recv_window_bytes: AtomicU64,
    /// Times auto-tuning doubled a connection's receive window.
    pub recv_window_doublings: AtomicU64,
    /// Times a connection's window stayed below its target for want of budget.
    pub recv_window_budget_short: AtomicU64,
    /// Relayed streams whose buffer toward TCP is full (a slow reader) now.
    pub streams_stalled: AtomicU64,
    /// Bytes held in relay buffers between QUIC streams and TCP sockets now.
    pub relay_buffered: AtomicU64,
    /// UDP sessions open now, and opened since start.
    pub udp_sessions: AtomicU64,
    pub udp_sessions_opened: AtomicU64,
    /// UDP sessions not opened: the outbound-socket budget was spent.
    pub udp_sessions_refused: AtomicU64,
    /// Hysteria2 UDP messages from clients, and datagrams sent back to them.
    pub udp_datagrams_in: AtomicU64,
    pub udp_datagrams_out: AtomicU64,
    /// Client UDP messages dropped: malformed, undeliverable, or refused by the guard.
    pub udp_dropped: AtomicU64,
}

macro_rules! fields {
    ($m:ident) => {
        $m!(
            rx_datagrams,
            rx_bytes,
            rx_gro_batches,
            tx_datagrams,
            tx_bytes,
            tx_gso_batches,
            tx_errors,
            gso_disabled,
            rx_malformed,
            rx_dropped,
            rx_responses,
            stateless_resets,
            other_node,
            migrations,
            hops,
            forwarded_out,
            forwarded_in,
            forward_dropped,
            connections,
            connections_total,
            accept_errors,
            handshakes_retried,
            handshakes_dropped,
            loops,
            waits,
            streams_relayed,
            streams_open,
            streams_parked,
            credit_withheld,
            streams_refused,
            acl_rejected,
            sniffed,
            window_updates_closed,
            window_updates_live,
            data_blocked_closed,
            data_blocked_live,
            auth_failures,
            recv_window_bytes,
            recv_window_doublings,
            recv_window_budget_short,
            streams_stalled,
            relay_buffered,
            udp_sessions,
            udp_sessions_opened,
            udp_sessions_refused,
            udp_datagrams_in,
            udp_datagrams_out,
            udp_dropped
        )
    };
}

/// A plain copy of counters, one worker's or summed over all.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    pub rx_gro_batches: u64,
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    pub tx_gso_batches: u64,
    pub tx_errors: u64,
    pub gso_disabled: u64,
    pub rx_malformed: u64,
    pub rx_dropped: u64,
    pub rx_responses: u64,
    pub stateless_resets: u64,
    pub other_node: u64,
    pub migrations: u64,
    pub hops: u64,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    pub forward_dropped: u64,
    pub connections: u64,
    pub connections_total: u64,
    pub accept_errors: u64,
    pub handshakes_retried: u64,
    pub handshakes_dropped: u64,
    pub loops: u64,
    pub waits: u64,
    pub streams_relayed: u64,
    pub streams_open: u64,
    pub streams_parked: u64,
    pub credit_withheld: u64,
    pub streams_refused: u64,
    pub acl_rejected: u64,
    pub sniffed: u64,
    pub window_updates_closed: u64,
    pub window_updates_live: u64,
    pub data_blocked_closed: u64,
    pub data_blocked_live: u64,
    pub auth_failures: u64,
    pub recv_window_bytes: u64,
    pub recv_window_doublings: u64,
    pub recv_window_budget_short: u64,
    pub streams_stalled: u64,
    pub relay_buffered: u64,
    pub udp_sessions: u64,
    pub udp_sessions_opened: u64,
    pub udp_sessions_refused: u64,
    pub udp_datagrams_in: u64,
    pub udp_datagrams_out: u64,
    pub udp_dropped: u64,
}

impl WorkerCounters {
    pub fn snapshot(&self) -> Snapshot {
        macro_rules! load {
            ($($f:ident),*) => { Snapshot { $($f: self.$f.load(Relaxed)),* } };
        }
        fields!(load)
    }

    /// Adds `n` (single writer: the owning worker).
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Moves the `relay_buffered` gauge from `was` to `now` for one buffer's owner.
    #[inline]
    pub fn buffered(&self, was: u64, now: u64) {
        let c = &self.relay_buffered;
        c.store(c.load(Relaxed).wrapping_add(now).wrapping_sub(was), Relaxed);
    }

    #[inline]
    pub fn set(c: &AtomicU64, n: u64) {
        c.store(n, Relaxed);
    }
}

impl std::ops::Add for Snapshot {
    type Output = Snapshot;
    fn add(self, o: Snapshot) -> Snapshot {
        macro_rules! sum {
            ($($f:ident),*) => { Snapshot { $($f: self.$f + o.$f),* } };
        }
        fields!(sum)
    }
}

/// Sums the counters of all workers.
pub fn total(workers: &[std::sync::Arc<WorkerCounters>]) -> Snapshot {
    workers
        .iter()
        .map(|w| w.snapshot())
        .fold(Snapshot::default(), |a, b| a + b)
}
