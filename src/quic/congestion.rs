//! Congestion control: BBR (ours, see `bbr`, or a quinn controller) until Hysteria2
//! negotiates a send rate, then Brutal (`reference/hysteria2-protocol.md` §5.3).
//!
//! quinn-proto paces every connection itself, at 1.25 × window / smoothed RTT. Brutal's
//! window is 2 × rate × RTT, so quinn alone would send at 2.5 × the negotiated rate, and far
//! more where the window sits at its floor (on loopback, 10 MB/s Brutal sent ~250 MB/s). The
//! rate is therefore enforced outside quinn: the controller ([`Adaptive`]) only supplies the
//! window (a cap on bytes in flight) and the loss-compensated ackRate, and the worker loop
//! asks [`BrutalPacer`] before every `poll_transmit`. The rate counts UDP payload bytes, QUIC
//! headers and ACK-only packets included, as in the official implementation. A fallback
//! controller that paces by rate (our BBR) publishes its rate through the same handle, and
//! the same pacer enforces it while Brutal is off.
//!
//! # How a connection's worker finds its controller
//!
//! quinn owns the controller and hands out no reference to it, so the two share a
//! [`CcHandle`]. [`AdaptiveConfig::build`] creates the handle and leaves a clone in a
//! thread-local slot, which [`take_last_built`] empties. quinn builds a controller
//! synchronously inside `Endpoint::accept`, `Endpoint::connect`, a migration to a new IP
//! (inside `Connection::handle_event`) and `Connection::path_changed`. The worker calls
//! `take_last_built` right after each of the first three and files the handle with that
//! connection; after a failed `accept` it empties the slot so no other connection picks the
//! handle up. quinn clones the controller (sharing the handle) on a NAT rebinding.

use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Brutal's window before the first RTT sample (official `brutal.go`).
pub const INITIAL_WINDOW: u64 = 10_240;
/// Brutal's window multiplier: twice the bandwidth-delay product may be in flight.
const WINDOW_RTTS: u128 = 2;
/// Floor of the Brutal window, in packets. The official floor is one packet, but quinn blocks
/// when `in_flight + packet >= window`, so one packet would never send; ten packets is one
/// pacing burst, which on sub-millisecond paths is more than 2 × rate × RTT anyway.
const MIN_WINDOW_PACKETS: u64 = 10;
/// Slots of the loss-statistics ring, one second each.
const SLOTS: usize = 5;
/// Below this many acked + lost packets in the ring, ackRate stays 1.
const MIN_SAMPLES: u64 = 50;
/// Fixed-point unit of ackRate: parts per million.
const PPM: u64 = 1_000_000;
/// ackRate is clamped here, so loss compensation sends at most 1.25 × the rate.
const MIN_ACK_RATE_PPM: u64 = 800_000;
/// Pacing bucket: it holds this much time's worth of the rate...
const BUCKET_TIME: Duration = Duration::from_millis(4);
/// ... and at least this many packets, which is also the budget of a fresh bucket.
const BUCKET_PACKETS: u64 = 10;
/// A connection out of tokens sleeps at least this long (official pacer): fewer wake-ups,
/// and the bucket holds four times as much, so no tokens are lost while asleep.
const MIN_PACING_DELAY: Duration = Duration::from_millis(1);

/// What a connection's controller and its worker share. Cloning is cheap (one `Arc`).
#[derive(Clone, Debug)]
pub struct CcHandle(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// Brutal send rate in bytes/s; 0 while the connection uses its fallback controller.
    /// Written by the worker (`Io::set_send_rate`).
    rate: AtomicU64,
    /// ackRate in parts per million (800,000..=1,000,000). Written by the controller after
    /// every ack batch and loss event while Brutal is on.
    ack_rate_ppm: AtomicU32,
    /// The fallback controller's pacing rate in bytes/s while Brutal is off; 0 leaves
    /// pacing to quinn. Written by the controller after every ack batch and loss event.
    fallback_rate: AtomicU64,
}

impl CcHandle {
    fn new() -> Self {
        CcHandle(Arc::new(Shared {
            rate: AtomicU64::new(0),
            ack_rate_ppm: AtomicU32::new(PPM as u32),
            fallback_rate: AtomicU64::new(0),
        }))
    }

    /// Switches the connection to Brutal at `bytes_per_sec`, or back to the fallback with 0.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.0.rate.store(bytes_per_sec, Relaxed);
    }

    /// The Brutal send rate in bytes/s; 0 when Brutal is off.
    pub fn rate(&self) -> u64 {
        self.0.rate.load(Relaxed)
    }

    /// Fraction of packets acked over the last five seconds (1 when there are too few).
    pub fn ack_rate(&self) -> f64 {
        f64::from(self.0.ack_rate_ppm.load(Relaxed)) / PPM as f64
    }

    /// Rate the pacer refills at: Brutal's rate over ackRate, so lost packets are made up
    /// for; without Brutal, the fallback controller's own rate (0: quinn paces).
    pub fn pacing_rate(&self) -> u64 {
        match self.rate() {
            0 => self.0.fallback_rate.load(Relaxed),
            rate => {
                let ppm = u64::from(self.0.ack_rate_ppm.load(Relaxed)).max(1);
                (u128::from(rate) * u128::from(PPM) / u128::from(ppm)) as u64
            }
        }
    }
}

thread_local! {
    /// The handle of the controller [`AdaptiveConfig`] built last on this thread.
    static LAST_BUILT: Cell<Option<CcHandle>> = const { Cell::new(None) };
}

/// The handle of the controller built last on this thread, if not taken yet. See the module
/// documentation for when to call it.
pub fn take_last_built() -> Option<CcHandle> {
    LAST_BUILT.with(Cell::take)
}

/// Builds [`Adaptive`] controllers around a fallback controller (BBR by default).
pub struct AdaptiveConfig {
    fallback: Arc<dyn ControllerFactory + Send + Sync>,
    loss_compensation: bool,
    /// The fallback's `metrics().pacing_rate` is enforced by the worker's pacer.
    paced_fallback: bool,
}

impl AdaptiveConfig {
    /// `loss_compensation: false` is Hysteria2's `bandwidth.disableLossCompensation`: Brutal
    /// then keeps ackRate at 1 and sends exactly the rate, lost packets included.
    pub fn new(
        fallback: Arc<dyn ControllerFactory + Send + Sync>,
        loss_compensation: bool,
    ) -> Self {
        AdaptiveConfig {
            fallback,
            loss_compensation,
            paced_fallback: false,
        }
    }

    /// Has the worker pace the fallback at the rate its `metrics()` report (for a controller
    /// that, unlike quinn's, sets a pacing rate of its own).
    pub fn pace_fallback(mut self) -> Self {
        self.paced_fallback = true;
        self
    }
}

impl ControllerFactory for AdaptiveConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let handle = CcHandle::new();
        LAST_BUILT.with(|s| s.set(Some(handle.clone())));
        Box::new(Adaptive {
            fallback: self.fallback.clone().build(now, current_mtu),
            brutal: Brutal::new(now, current_mtu, self.loss_compensation),
            handle,
            paced_fallback: self.paced_fallback,
        })
    }
}

/// The fallback controller while the handle's rate is 0, Brutal's window otherwise.
///
/// The fallback sees every event in both modes, so switching back resumes from a live model.
pub struct Adaptive {
    handle: CcHandle,
    fallback: Box<dyn Controller>,
    brutal: Brutal,
    paced_fallback: bool,
}

impl Adaptive {
    fn brutal_on(&self) -> bool {
        self.handle.rate() != 0
    }

    /// Hands the fallback's pacing rate to the worker's pacer.
    fn publish_fallback_rate(&self) {
        if self.paced_fallback {
            let bits = self.fallback.metrics().pacing_rate.unwrap_or(0);
            self.handle.0.fallback_rate.store(bits / 8, Relaxed);
        }
    }
}

impl Controller for Adaptive {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.fallback.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        // quinn updates the estimator after the batch, so this lags one ACK; the handshake
        // has sampled the RTT long before an app can turn Brutal on.
        self.brutal.srtt = Some(rtt.get());
        if self.brutal_on() {
            self.brutal.record(now, 1, 0);
        }
        self.fallback.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        if self.brutal_on() {
            self.brutal.update_ack_rate(now, &self.handle);
        }
        self.fallback
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.publish_fallback_rate();
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // Brutal does not back off; losses only feed ackRate. ECN marks (0 bytes) count
        // as nothing.
        if self.brutal_on() && lost_bytes > 0 {
            let packets = lost_bytes.div_ceil(u64::from(self.brutal.mtu).max(1));
            self.brutal.record(now, 0, packets);
            self.brutal.update_ack_rate(now, &self.handle);
        }
        self.fallback
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.publish_fallback_rate();
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.brutal.mtu = new_mtu;
        self.fallback.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        match self.handle.rate() {
            0 => self.fallback.window(),
            rate => self
                .brutal
                .window(rate, self.handle.0.ack_rate_ppm.load(Relaxed)),
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        if !self.brutal_on() {
            return self.fallback.metrics();
        }
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window();
        m.pacing_rate = Some(self.handle.pacing_rate().saturating_mul(8));
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Adaptive {
            handle: self.handle.clone(),
            fallback: self.fallback.clone_box(),
            brutal: self.brutal.clone(),
            paced_fallback: self.paced_fallback,
        })
    }

    fn initial_window(&self) -> u64 {
        self.fallback.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Packets acked and lost during one second.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Seconds since the controller was built; `None` for a slot never used.
    second: Option<u64>,
    acked: u64,
    lost: u64,
}

/// Brutal's own state: the window inputs and the loss statistics.
#[derive(Clone, Debug)]
struct Brutal {
    /// Origin of the slot clock.
    epoch: Instant,
    /// Largest datagram size; changes on MTU discovery.
    mtu: u16,
    /// quinn's smoothed RTT as of the last ack; `None` before any ack.
    srtt: Option<Duration>,
    /// The ring, indexed by second % SLOTS.
    slots: [Slot; SLOTS],
    /// false: ackRate stays 1 (`bandwidth.disableLossCompensation`).
    loss_compensation: bool,
}

impl Brutal {
    fn new(now: Instant, mtu: u16, loss_compensation: bool) -> Self {
        Brutal {
            epoch: now,
            mtu,
            srtt: None,
            slots: [Slot::default(); SLOTS],
            loss_compensation,
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn record(&mut self, now: Instant, acked: u64, lost: u64) {
        let second = self.second(now);
        let slot = &mut self.slots[(second % SLOTS as u64) as usize];
        if slot.second != Some(second) {
            *slot = Slot {
                second: Some(second),
                acked: 0,
                lost: 0,
            };
        }
        slot.acked += acked;
        slot.lost += lost;
    }

    /// ackRate in ppm over the slots of the last five seconds.
    fn ack_rate_ppm(&self, now: Instant) -> u64 {
        if !self.loss_compensation {
            return PPM;
        }
        let oldest = self.second(now).saturating_sub(SLOTS as u64);
        let (acked, lost) = self
            .slots
            .iter()
            .filter(|s| s.second.is_some_and(|t| t >= oldest))
            .fold((0, 0), |(a, l), s| (a + s.acked, l + s.lost));
        if acked + lost < MIN_SAMPLES {
            return PPM;
        }
        (acked * PPM / (acked + lost)).max(MIN_ACK_RATE_PPM)
    }

    fn update_ack_rate(&self, now: Instant, handle: &CcHandle) {
        handle
            .0
            .ack_rate_ppm
            .store(self.ack_rate_ppm(now) as u32, Relaxed);
    }

    /// `rate × srtt × 2 / ackRate`, never below the floor.
    fn window(&self, rate: u64, ack_rate_ppm: u32) -> u64 {
        let Some(srtt) = self.srtt else {
            return INITIAL_WINDOW;
        };
        let bdp = u128::from(rate) * srtt.as_nanos() * WINDOW_RTTS * u128::from(PPM)
            / (1_000_000_000 * u128::from(ack_rate_ppm.max(1)));
        let floor = MIN_WINDOW_PACKETS * u64::from(self.mtu);
        u64::try_from(bdp).unwrap_or(u64::MAX).max(floor)
    }
}

/// Brutal's pacing token bucket (§5.3), owned by the worker, one per connection.
///
/// It lives outside quinn because quinn's pacer cannot be told a rate. It is plain state,
/// used only on the worker thread, so it is not part of [`CcHandle`].
#[derive(Clone, Debug, Default)]
pub struct BrutalPacer {
    /// Bytes that may be sent now.
    tokens: f64,
    /// When `tokens` was last refilled; `None` for a fresh bucket.
    last: Option<Instant>,
}

impl BrutalPacer {
    /// How many datagrams of `mtu` bytes may leave at `now`, at most `max`, for a connection
    /// paced at `rate` bytes/s.
    pub fn allowance(&mut self, now: Instant, rate: u64, mtu: u16, max: usize) -> usize {
        let mtu = u64::from(mtu).max(1);
        let capacity = (BUCKET_TIME.as_secs_f64() * rate as f64).max((BUCKET_PACKETS * mtu) as f64);
        self.tokens = match self.last {
            None => (BUCKET_PACKETS * mtu) as f64,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                (self.tokens + elapsed * rate as f64).min(capacity)
            }
        };
        self.last = Some(now);
        ((self.tokens / mtu as f64) as usize).min(max)
    }

    /// Charges a transmit of `bytes`.
    pub fn on_sent(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }

    /// When the next datagram of `mtu` bytes may leave, after [`Self::allowance`] at `now`
    /// said none.
    pub fn next_send(&self, now: Instant, rate: u64, mtu: u16) -> Instant {
        let last = self.last.unwrap_or(now);
        let missing = (f64::from(mtu) - self.tokens).max(0.0);
        let wait = Duration::from_secs_f64(missing / rate.max(1) as f64);
        last + wait.max(MIN_PACING_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::congestion::BbrConfig;

    fn adaptive(loss_compensation: bool) -> (Box<dyn Controller>, CcHandle, Instant) {
        let now = Instant::now();
        let factory = Arc::new(AdaptiveConfig::new(
            Arc::new(BbrConfig::default()),
            loss_compensation,
        ));
        let _ = take_last_built();
        let c = factory.build(now, 1200);
        let h = take_last_built().expect("build leaves its handle");
        assert!(take_last_built().is_none(), "the slot is emptied");
        (c, h, now)
    }

    #[test]
    fn starts_as_the_fallback() {
        let (c, h, _) = adaptive(true);
        let bbr = Arc::new(BbrConfig::default()).build(Instant::now(), 1200);
        assert_eq!(h.rate(), 0);
        assert_eq!(c.window(), bbr.window());
        assert_eq!(c.initial_window(), bbr.initial_window());
    }

    #[test]
    fn brutal_window_before_and_after_an_rtt_sample() {
        let (c, h, _) = adaptive(true);
        h.set_rate(10_000_000);
        assert_eq!(c.window(), INITIAL_WINDOW);
        let mut b = Brutal::new(Instant::now(), 1200, true);
        b.srtt = Some(Duration::from_millis(50));
        // 10 MB/s × 50 ms × 2.
        assert_eq!(b.window(10_000_000, PPM as u32), 1_000_000);
        // Lossy: ackRate 0.8 widens it by 1.25.
        assert_eq!(b.window(10_000_000, 800_000), 1_250_000);
        // Tiny RTT: the floor.
        b.srtt = Some(Duration::from_micros(10));
        assert_eq!(b.window(10_000_000, PPM as u32), 12_000);
    }

    #[test]
    fn ack_rate_follows_losses_over_five_seconds() {
        let (mut c, h, t0) = adaptive(true);
        h.set_rate(1_000_000);
        // Too few samples: 1.
        c.on_congestion_event(t0, t0, false, 10 * 1200);
        assert_eq!(h.ack_rate(), 1.0);
        // 90 acked, 10 lost: 0.9. (quinn's `RttEstimator` cannot be built outside quinn, so
        // the acks go to the ring directly.)
        let mut c = c.into_any().downcast::<Adaptive>().expect("an Adaptive");
        c.brutal.record(t0, 90, 0);
        c.on_end_acks(t0, 0, false, None);
        assert_eq!(h.ack_rate(), 0.9);
        // Heavy loss is clamped at 0.8; the pacer then refills at 1.25 × the rate.
        c.on_congestion_event(t0, t0, false, 1000 * 1200);
        assert_eq!(h.ack_rate(), 0.8);
        assert_eq!(h.pacing_rate(), 1_250_000);
        // Six seconds later those slots have aged out.
        let later = t0 + Duration::from_secs(6);
        c.on_end_acks(later, 0, false, None);
        assert_eq!(h.ack_rate(), 1.0);
    }

    #[test]
    fn loss_compensation_can_be_disabled() {
        let (mut c, h, t0) = adaptive(false);
        h.set_rate(1_000_000);
        c.on_congestion_event(t0, t0, false, 1000 * 1200);
        assert_eq!(h.ack_rate(), 1.0);
    }

    #[test]
    fn clones_share_the_handle() {
        let (c, h, _) = adaptive(true);
        let copy = c.clone_box();
        h.set_rate(5_000_000);
        assert_eq!(copy.window(), INITIAL_WINDOW);
        h.set_rate(0);
        assert_ne!(copy.window(), INITIAL_WINDOW);
    }

    #[test]
    fn pacer_refills_at_the_rate_up_to_its_capacity() {
        let mut p = BrutalPacer::default();
        let t0 = Instant::now();
        let (rate, mtu) = (10_000_000, 1000);
        // A fresh bucket holds ten packets.
        assert_eq!(p.allowance(t0, rate, mtu, 64), 10);
        p.on_sent(10 * 1000);
        assert_eq!(p.allowance(t0, rate, mtu, 64), 0);
        // The next packet is due in 100 µs, but the pacer sleeps at least 1 ms.
        assert_eq!(p.next_send(t0, rate, mtu), t0 + MIN_PACING_DELAY);
        // 1 ms at 10 MB/s: ten packets.
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(p.allowance(t1, rate, mtu, 64), 10);
        assert_eq!(p.allowance(t1, rate, mtu, 4), 4, "capped by the caller");
        // A long pause fills only 4 ms worth.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(p.allowance(t2, rate, mtu, 1000), 40);
    }
}
