//! How large each connection's receive window is (DESIGN.md "Stream caps and flow control").
//!
//! quinn-proto grants credit as the application reads, so a window only moves when data was
//! handed on (the relay reads a QUIC stream only as fast as its TCP side takes the bytes).
//! What it does not decide is the window's size; [`RecvWindow`] does, per connection:
//!
//! - **Auto-tuning** (the quic-go/Chromium rule): once half of the window or more was read,
//!   look at how long that took. Reading a window's worth in less than about two RTTs means
//!   the window, not the reader, limited the sender: double it, up to the maximum.
//! - **Slow streams**: a stream whose relay buffer is full (its TCP side is not keeping up)
//!   may pin up to one stream window of connection credit in quinn-proto. On top of the tuned
//!   part, the window grows by a stream window for each such stream (up to
//!   [`MAX_STALLED_ALLOWANCE`] of them), so a few slow streams cannot starve the others, even
//!   when the maximum equals the initial window as in the official defaults; it shrinks back
//!   as they drain.
//! - **Budget**: every byte of every window is reserved from one [`Cap`] shared by all
//!   workers (`limits.receiveWindowBudget`), since a window is what peers may make us buffer.
//!   Growth takes only what is left. A connection always gets at least [`WINDOW_FLOOR`], so a
//!   spent budget slows new connections down instead of refusing them.
//! - **Idle**: after [`IDLE`] without a byte read, the window goes back to its initial size
//!   and returns the rest to the budget.
//!
//! A shrink returns its bytes to the budget at once, while credit already sent stays valid
//! until the peer uses it (quinn-proto withholds new credit until the shrink is paid off):
//! for that long the peer may still send up to the old window.
//!
//! Sans-IO: the worker feeds reads, stalls, the clock and the RTT, and applies the window
//! this returns with `Connection::set_receive_window`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cap;

/// The least window a connection gets, budget or not. It is also what the handshake
/// advertises (`initial_max_data`): the granted window follows in the first flight, so no
/// peer is ever promised credit that was not reserved.
pub const WINDOW_FLOOR: u64 = 64 * 1024;
/// Stalled streams a connection's window makes room for, each with a stream window.
pub const MAX_STALLED_ALLOWANCE: u64 = 16;
/// No byte read for this long: the window returns to its initial size.
pub const IDLE: Duration = Duration::from_secs(10);

/// The window sizes of one group of connections and the budget they share.
#[derive(Debug)]
pub struct WindowPolicy {
    /// Window a connection starts with (`quic.initConnReceiveWindow`).
    pub init: u64,
    /// Most a window grows to (`quic.maxConnReceiveWindow`, at least `init`).
    pub max: u64,
    /// A stream's window (`quic.initStreamReceiveWindow`): what one slow stream may pin.
    pub stream: u64,
    /// Bytes of window all connections together may hold.
    pub budget: Arc<Cap>,
}

impl WindowPolicy {
    pub fn new(init: u64, max: u64, stream: u64, budget: Arc<Cap>) -> Arc<Self> {
        Arc::new(WindowPolicy {
            init: init.max(WINDOW_FLOOR),
            max: max.max(init).max(WINDOW_FLOOR),
            stream,
            budget,
        })
    }
}

/// What the handshake advertises (`initial_max_data`) when windows start at `init`: the
/// floor, since the connection's window is granted from the budget only once it exists.
pub fn handshake_window(init: u64) -> u64 {
    WINDOW_FLOOR.min(init)
}

/// What [`RecvWindow::tune`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The window to advertise now.
    pub window: u64,
    /// Auto-tuning doubled the target in this step.
    pub doubled: bool,
    /// The budget could not cover the target (counted once per shortage, not per retry).
    pub short: bool,
}

/// One connection's receive window; its reservation returns to the budget when dropped.
#[derive(Debug)]
pub struct RecvWindow {
    policy: Arc<WindowPolicy>,
    /// Advertised and reserved from the budget.
    window: u64,
    /// The auto-tuned part (slow streams add to it).
    tuned: u64,
    epoch_start: Instant,
    epoch_read: u64,
    last_read: Instant,
    /// Streams whose relay buffer is full.
    stalled: u64,
    /// The last attempt to grow fell short of the target.
    short: bool,
}

impl RecvWindow {
    /// Reserves the initial window (or what is left of the budget, at least the floor).
    pub fn open(policy: &Arc<WindowPolicy>, now: Instant) -> Self {
        let got = policy.budget.acquire_up_to(policy.init);
        let forced = WINDOW_FLOOR.min(policy.init).saturating_sub(got);
        if forced > 0 {
            policy.budget.force(forced);
        }
        if got < policy.init {
            policy.budget.hit();
        }
        RecvWindow {
            policy: policy.clone(),
            window: got + forced,
            tuned: policy.init,
            epoch_start: now,
            epoch_read: 0,
            last_read: now,
            stalled: 0,
            short: got < policy.init,
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    pub fn stalled(&self) -> u64 {
        self.stalled
    }

    /// `n` bytes were read from the connection's streams.
    pub fn read(&mut self, n: u64, now: Instant) {
        self.epoch_read += n;
        self.last_read = now;
    }

    /// A stream's relay buffer filled up (`true`) or drained again (`false`).
    pub fn stall(&mut self, stalled: bool) {
        if stalled {
            self.stalled += 1;
        } else {
            self.stalled = self.stalled.saturating_sub(1);
        }
    }

    /// Brings the window to its target; `Some` when the advertised window changed or a
    /// shortage began.
    pub fn tune(&mut self, now: Instant, rtt: Duration) -> Option<Step> {
        let p = &*self.policy;
        let mut doubled = false;
        if self.epoch_read > 0 && self.epoch_read >= self.tuned / 2 {
            // Read `epoch_read` of `tuned` in `elapsed`: a whole window in under two RTTs
            // means elapsed / (read / tuned) < 2·rtt.
            let elapsed = now.saturating_duration_since(self.epoch_start).as_nanos();
            let fast = elapsed.saturating_mul(u128::from(self.tuned))
                < 2 * rtt.as_nanos().saturating_mul(u128::from(self.epoch_read));
            if fast && self.tuned < p.max {
                self.tuned = self.tuned.saturating_mul(2).min(p.max);
                doubled = true;
            }
            self.epoch_start = now;
            self.epoch_read = 0;
        } else if self.tuned > p.init && now.saturating_duration_since(self.last_read) >= IDLE {
            self.tuned = p.init;
            self.epoch_start = now;
            self.epoch_read = 0;
        }
        let allowance = self
            .stalled
            .min(MAX_STALLED_ALLOWANCE)
            .saturating_mul(p.stream);
        let target = self
            .tuned
            .saturating_add(allowance)
            .max(WINDOW_FLOOR.min(p.init));
        let before = self.window;
        let mut began = false;
        if target <= self.window {
            p.budget.release_n(self.window - target);
            self.window = target;
            self.short = false;
        } else {
            let want = target - self.window;
            let got = p.budget.acquire_up_to(want);
            self.window += got;
            let short = got < want;
            began = short && !self.short;
            if began {
                p.budget.hit();
            }
            self.short = short;
        }
        (self.window != before || doubled || began).then_some(Step {
            window: self.window,
            doubled,
            short: began,
        })
    }
}

impl Drop for RecvWindow {
    fn drop(&mut self) {
        self.policy.budget.release_n(self.window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const RTT: Duration = Duration::from_millis(20);

    fn policy(init: u64, max: u64, budget: Option<u64>) -> Arc<WindowPolicy> {
        WindowPolicy::new(init, max, MIB, Arc::new(Cap::new(budget)))
    }

    #[test]
    fn a_window_read_within_two_rtts_doubles_up_to_the_max() {
        let p = policy(MIB, 4 * MIB, None);
        let t0 = Instant::now();
        let mut w = RecvWindow::open(&p, t0);
        assert_eq!(w.window(), MIB);
        let mut now = t0;
        let mut sizes = vec![];
        for _ in 0..6 {
            // The whole window every RTT: the window is the bottleneck.
            now += RTT;
            w.read(w.window(), now);
            if let Some(s) = w.tune(now, RTT) {
                sizes.push(s.window);
            }
        }
        assert_eq!(sizes, vec![2 * MIB, 4 * MIB]);
        assert_eq!(p.budget.held(), 4 * MIB);
        drop(w);
        assert_eq!(p.budget.held(), 0);
    }

    #[test]
    fn a_slow_reader_keeps_its_window() {
        let p = policy(MIB, 8 * MIB, None);
        let t0 = Instant::now();
        let mut w = RecvWindow::open(&p, t0);
        let mut now = t0;
        for _ in 0..20 {
            // Half a window per 4 RTTs: the reader, not the window, is the limit.
            now += 4 * RTT;
            w.read(MIB / 2, now);
            assert_eq!(w.tune(now, RTT), None);
        }
        assert_eq!(w.window(), MIB);
    }

    #[test]
    fn slow_streams_widen_the_window_past_the_max_and_give_it_back() {
        // The official defaults' shape: the maximum is the initial window.
        let p = policy(2 * MIB, 2 * MIB, None);
        let now = Instant::now();
        let mut w = RecvWindow::open(&p, now);
        w.stall(true);
        w.stall(true);
        assert_eq!(w.tune(now, RTT).map(|s| s.window), Some(4 * MIB));
        for _ in 0..30 {
            w.stall(true);
        }
        let most = 2 * MIB + MAX_STALLED_ALLOWANCE * MIB;
        assert_eq!(w.tune(now, RTT).map(|s| s.window), Some(most));
        for _ in 0..32 {
            w.stall(false);
        }
        assert_eq!(w.tune(now, RTT).map(|s| s.window), Some(2 * MIB));
        assert_eq!(p.budget.held(), 2 * MIB);
    }

    #[test]
    fn the_budget_bounds_growth_and_counts_one_shortage() {
        let p = policy(MIB, 8 * MIB, Some(3 * MIB));
        let t0 = Instant::now();
        let mut a = RecvWindow::open(&p, t0);
        let mut b = RecvWindow::open(&p, t0);
        let mut now = t0;
        let mut shorts = 0;
        for _ in 0..5 {
            now += RTT;
            a.read(a.window(), now);
            if let Some(s) = a.tune(now, RTT) {
                shorts += u32::from(s.short);
            }
        }
        assert_eq!(a.window(), 2 * MIB, "took only what b left");
        assert_eq!(shorts, 1);
        assert_eq!(p.budget.held(), 3 * MIB);
        // b closes: a gets the rest on its next pass.
        drop(b);
        now += RTT;
        a.read(MIB, now);
        assert!(a.tune(now, RTT).is_some());
        assert!(a.window() > 2 * MIB && a.window() <= 3 * MIB);
        assert!(p.budget.held() <= 3 * MIB);
        b = RecvWindow::open(&p, now);
        assert_eq!(
            b.window(),
            WINDOW_FLOOR,
            "a spent budget still gives the floor"
        );
        drop((a, b));
        assert_eq!(p.budget.held(), 0);
    }

    #[test]
    fn an_idle_window_returns_to_its_initial_size() {
        let p = policy(MIB, 8 * MIB, None);
        let t0 = Instant::now();
        let mut w = RecvWindow::open(&p, t0);
        let mut now = t0;
        for _ in 0..3 {
            now += RTT;
            w.read(w.window(), now);
            w.tune(now, RTT);
        }
        assert_eq!(w.window(), 8 * MIB);
        now += IDLE;
        assert_eq!(w.tune(now, RTT).map(|s| s.window), Some(MIB));
        assert_eq!(p.budget.held(), MIB);
    }
}
