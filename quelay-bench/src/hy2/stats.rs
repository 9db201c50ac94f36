//! What the workers of a `quelay-bench hy2` run measured, shared with the thread that reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Error messages kept for the report; the count goes on.
const MAX_MESSAGES: usize = 8;
/// Latencies up to this many microseconds are recorded exactly to 2 significant digits (an
/// hour); longer ones are clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Counters every worker adds to, and one latency histogram per worker (locked only by its
/// worker while it runs, and by the reporter).
pub struct Stats {
    /// Payload bytes written to streams (after the TCPRequest and the target header).
    pub bytes_sent: AtomicU64,
    /// Payload bytes received on streams and checked.
    pub bytes_received: AtomicU64,
    /// Streams opened, and streams that ended (either way).
    pub streams_opened: AtomicU64,
    pub streams_closed: AtomicU64,
    /// Bulk streams and request/responses that completed and checked out.
    pub completed: AtomicU64,
    /// Connections that finished the QUIC handshake and Hysteria2 authentication.
    pub handshakes: AtomicU64,
    /// UDP packets handed to QUIC, and echoes received back whole.
    pub udp_sent: AtomicU64,
    pub udp_received: AtomicU64,
    pub errors: AtomicU64,
    /// An error that ends the run (a connection lost, authentication refused): the reporter
    /// stops the workers and reports what was measured as partial.
    pub fatal: AtomicBool,
    messages: Mutex<Vec<String>>,
    latency: Vec<Mutex<Histogram<u64>>>,
}

impl Stats {
    pub fn new(workers: usize) -> Self {
        Stats {
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            streams_opened: AtomicU64::new(0),
            streams_closed: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            udp_sent: AtomicU64::new(0),
            udp_received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fatal: AtomicBool::new(false),
            messages: Mutex::new(Vec::new()),
            latency: (0..workers.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Counts an error and keeps its message if it is among the first few.
    pub fn error(&self, msg: String) {
        self.errors.fetch_add(1, Relaxed);
        tracing::debug!("bench: {msg}");
        let mut m = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < MAX_MESSAGES && !m.contains(&msg) {
            m.push(msg);
        }
    }

    /// An error after which the run cannot go on.
    pub fn fatal(&self, msg: String) {
        self.error(msg);
        self.fatal.store(true, Relaxed);
    }

    pub fn is_fatal(&self) -> bool {
        self.fatal.load(Relaxed)
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records one latency of worker `worker`, in microseconds.
    pub fn record(&self, worker: usize, us: u64) {
        if let Some(h) = self.latency.get(worker) {
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            h.saturating_record(us.clamp(1, MAX_LATENCY_US));
        }
    }

    /// All workers' latencies together.
    pub fn latency(&self) -> Histogram<u64> {
        let mut total = new_histogram();
        for h in &self.latency {
            let h = h.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds on both sides, so `add` cannot fail.
            let _ = total.add(&*h);
        }
        total
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("constant bounds are valid")
}
