//! What the client's pools did, summed over workers: printed when the client stops.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Counters every worker adds to; one wait-time histogram per worker (locked only by its
/// worker while running, and by the summary at the end).
pub struct PoolStats {
    /// Connections the pools started (handshakes begun).
    pub connects: AtomicU64,
    /// QUIC connections that completed the handshake and authenticated.
    pub connections_opened: AtomicU64,
    /// Authenticated connections open right now, and the most at once.
    pub open_now: AtomicU64,
    pub peak_connections: AtomicU64,
    /// Streams opened for local connections.
    pub streams_opened: AtomicU64,
    /// Streams that had to wait for credit or a connection (1 ms or more).
    pub streams_waited: AtomicU64,
    /// Requests refused because no stream came within `pool.streamOpenTimeout`.
    pub refused: AtomicU64,
    /// Connections authenticated after the worker had lost all of its connections.
    pub reconnects: AtomicU64,
    /// Authentications the server refused.
    pub auth_failures: AtomicU64,
    /// Connections the server refused while it served others (a per-user connection cap).
    pub server_refusals: AtomicU64,
    /// Connections closed for carrying nothing for a while.
    pub idle_closed: AtomicU64,
    /// Requests sent on a connection the server never answered, queued again.
    pub requeued: AtomicU64,
    /// Requests waiting for a stream right now, and the most at once.
    pub waiting_now: AtomicU64,
    pub peak_waiting: AtomicU64,
    /// UDP datagrams dropped (malformed, no connection, too large).
    pub udp_dropped: AtomicU64,
    waits: Vec<Mutex<Histogram<u64>>>,
}

impl PoolStats {
    pub fn new(workers: usize) -> Self {
        let hist = || {
            // Microseconds up to an hour, 2 significant digits.
            Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"))
        };
        PoolStats {
            connects: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            open_now: AtomicU64::new(0),
            peak_connections: AtomicU64::new(0),
            streams_opened: AtomicU64::new(0),
            streams_waited: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            server_refusals: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            waiting_now: AtomicU64::new(0),
            peak_waiting: AtomicU64::new(0),
            udp_dropped: AtomicU64::new(0),
            waits: (0..workers.max(1)).map(|_| hist()).collect(),
        }
    }

    pub fn connection_up(&self) {
        self.connections_opened.fetch_add(1, Relaxed);
        let now = self.open_now.fetch_add(1, Relaxed) + 1;
        self.peak_connections.fetch_max(now, Relaxed);
    }

    pub fn connection_down(&self) {
        self.open_now.fetch_sub(1, Relaxed);
    }

    /// A request started waiting for a stream.
    pub fn wait_started(&self) {
        let now = self.waiting_now.fetch_add(1, Relaxed) + 1;
        self.peak_waiting.fetch_max(now, Relaxed);
    }

    /// A request stopped waiting (it got a stream, was refused or went away).
    pub fn wait_ended(&self) {
        self.waiting_now.fetch_sub(1, Relaxed);
    }

    /// A stream was opened for a request that waited `wait` for it.
    pub fn stream_opened(&self, worker: usize, wait: Duration) {
        self.streams_opened.fetch_add(1, Relaxed);
        if wait >= Duration::from_millis(1) {
            self.streams_waited.fetch_add(1, Relaxed);
        }
        if let Some(h) = self.waits.get(worker) {
            let micros = (wait.as_micros() as u64).clamp(1, 3_600_000_000);
            let _ = h.lock().unwrap_or_else(|e| e.into_inner()).record(micros);
        }
    }

    /// Wait-time percentile over all workers, in milliseconds.
    fn wait_ms(&self, q: f64) -> f64 {
        let mut all = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds");
        for h in &self.waits {
            let _ = all.add(&*h.lock().unwrap_or_else(|e| e.into_inner()));
        }
        if all.is_empty() {
            return 0.0;
        }
        all.value_at_quantile(q) as f64 / 1000.0
    }
}

impl fmt::Display for PoolStats {
    /// `key=value` pairs on one line: the format the integration tests and scripts read.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections_opened={} peak_connections={} connections={} connects={} \
             server_refusals={} idle_closed={} requeued={} streams_opened={} streams_waited={} waiting={} \
             peak_waiting={} wait_max_ms={:.0} wait_p50_ms={:.0} wait_p99_ms={:.0} refused={} \
             reconnects={} auth_failures={} udp_dropped={}",
            self.connections_opened.load(Relaxed),
            self.peak_connections.load(Relaxed),
            self.open_now.load(Relaxed),
            self.connects.load(Relaxed),
            self.server_refusals.load(Relaxed),
            self.idle_closed.load(Relaxed),
            self.requeued.load(Relaxed),
            self.streams_opened.load(Relaxed),
            self.streams_waited.load(Relaxed),
            self.waiting_now.load(Relaxed),
            self.peak_waiting.load(Relaxed),
            self.wait_ms(1.0),
            self.wait_ms(0.5),
            self.wait_ms(0.99),
            self.refused.load(Relaxed),
            self.reconnects.load(Relaxed),
            self.auth_failures.load(Relaxed),
            self.udp_dropped.load(Relaxed),
        )
    }
}
