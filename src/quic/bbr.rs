//! BBR congestion control: version 1 as draft-cardwell-iccrg-bbr-congestion-control-00
//! describes it, with the loss response of its successors.
//!
//! - **Model.** The bottleneck bandwidth is the largest delivery rate sampled over the last
//!   10 round trips (draft-cheng-iccrg-delivery-rate-estimation); the round-trip
//!   propagation time is the smallest RTT sampled over the last 10 seconds.
//! - **States.** Startup (pacing gain 2/ln 2) until the bandwidth stops growing by 25% for
//!   3 rounds (rounds limited by the application or the peer's flow control count only when
//!   their RTT shows a queue or they lost more than 2%), or a round loses too much with a
//!   queue (below); Drain (gain ln 2/2) until what is in flight fits the estimated BDP;
//!   ProbeBW, cycling pacing gains 1.25, 0.75, 1 × 6, one phase per RTT; ProbeRTT (4
//!   packets in flight for 200 ms and a round) when the RTT estimate is 10 seconds old.
//! - **Window.** 2 × BDP plus 3 send quanta (up to 64 KiB each: a millisecond at the pacing
//!   rate) for delayed and aggregated ACKs, in Startup 2/ln 2 × BDP, never below 4 packets.
//!   A loss while the RTT shows a queue starts recovery: packet conservation for a round,
//!   then the window from before the loss.
//! - **Loss response** (BBRv2/v3's `inflight_hi`). A round that loses more than 2% of its
//!   packets while its RTT rose above the min RTT (a queue: at a bottleneck, or in a receiver
//!   that cannot keep up) caps what may be in flight at 0.7 × the most that round had in
//!   flight, never below 1.25 × BDP plus one send quantum. The cap grows again (1, 2, 4, ...
//!   packets per round) only after 2 to 3 seconds or 63 rounds, whichever is first, without
//!   such a round. Loss without a queue is random: no smaller window would avoid it, and
//!   the model is left alone, as in BBRv1. So is loss that goes on at the same rate in two
//!   rounds with at most 0.85 × the in flight that caused a cut and no standing queue (a
//!   round whose smallest RTT is near the min): the cut is undone and that rate is
//!   tolerated for 10 seconds (on a path of a fraction of a millisecond, the receiver's
//!   scheduling alone puts every round's RTT far above the min). BBRv1 alone ignores all
//!   loss, and a receiver whose CPU sets the pace (a phone, a router, a busy quic-go
//!   client) then drops much of what it is sent.
//! - **Pacing.** The pacing rate is gain × bandwidth. quinn-proto cannot be told a rate, so
//!   [`Bbr::pacing_rate`] is read by the worker's pacer (see `congestion`), as for Brutal.
//!
//! [`Bbr`] is sans-IO: it takes the events quinn-proto's `Controller` trait delivers and
//! computes RTT samples itself from send times, so that `sim` can drive it in virtual time.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Pacing and window gain of Startup: 2/ln 2, the smallest that doubles the rate per round.
const STARTUP_GAIN: f64 = 2.885;
/// Pacing gain of Drain: the inverse of Startup's, to empty the queue Startup built.
const DRAIN_GAIN: f64 = 1.0 / STARTUP_GAIN;
/// ProbeBW's pacing gains, one phase (one min RTT) each.
const PROBE_BW_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Window gain outside Startup: room for delayed and stretched ACKs.
const CWND_GAIN: f64 = 2.0;
/// Rounds over which the bandwidth estimate is the largest sample.
const BW_FILTER_ROUNDS: u64 = 10;
/// Age at which the min RTT estimate is refreshed by ProbeRTT.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// How long ProbeRTT holds the window at its floor.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// The smallest window, in packets.
const MIN_PIPE_PACKETS: u64 = 4;
/// Send quanta of window on top of the BDP, for delayed and aggregated ACKs.
const QUANTA: u64 = 3;
/// The send quantum is the pacing rate's worth of this long ...
const QUANTUM_TIME: Duration = Duration::from_millis(1);
/// ... at most this much (one GSO batch) ...
const MAX_QUANTUM: u64 = 64 * 1024;
/// ... and at least one packet, or two at this rate (bytes/s) and above.
const TWO_PACKET_RATE: f64 = 150_000.0;
/// At this pacing rate (bytes/s) and above, the quantum is a millisecond's worth.
const TIME_QUANTUM_RATE: f64 = 3_000_000.0;
/// Startup ends when the bandwidth has grown by less than this ...
const FULL_BW_GROWTH: f64 = 1.25;
/// ... for this many rounds in a row.
const FULL_BW_ROUNDS: u32 = 3;
/// A round losing more than this fraction of what it sent has lost too much.
const LOSS_THRESH: f64 = 0.02;
/// ... as long as it lost at least this many packets (one drop in a short round is noise).
const LOSS_MIN_PACKETS: u64 = 3;
/// RTT above the min RTT (and a quarter of it) that shows a queue, not jitter.
const QUEUE_RTT_MARGIN: Duration = Duration::from_micros(200);
/// After too much loss, what may be in flight is this fraction of the round's most.
const BETA: f64 = 0.7;
/// The cap on what is in flight is probed upward again after this long ...
const PROBE_HI_TIME: Duration = Duration::from_secs(2);
/// ... (plus up to one more second, at random) or this many rounds, whichever comes first.
const PROBE_HI_ROUNDS: u64 = 63;
/// A lossy round after a cut shows random loss when it had at most this fraction of the
/// in flight of the round that caused the cut, its smallest RTT shows no standing queue ...
const RANDOM_LOSS_IN_FLIGHT: f64 = 0.85;
/// ... and it lost at least this fraction of that round's loss rate ...
const RANDOM_LOSS_RATE: f64 = 0.8;
/// ... and this many such rounds, before the cap is probed again, undo the cut.
const RANDOM_LOSS_ROUNDS: u32 = 2;
/// How long the random loss rate found so is tolerated before it must be shown again.
const RANDOM_LOSS_TIME: Duration = Duration::from_secs(10);
/// Seeds of the connections' random sequences.
static NEXT_SEED: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);
/// Send instants whose delivery state is kept for rate samples.
const MAX_SENT_STATES: usize = 1 << 16;
/// The pacing rate before any bandwidth sample: the initial window per this time.
const INITIAL_RTT: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    Startup,
    Drain,
    /// Index into [`PROBE_BW_GAINS`] and when that phase began.
    ProbeBw {
        phase: usize,
        since: Instant,
    },
    /// When the window reached its floor (the 200 ms start then), if it has.
    ProbeRtt {
        done_at: Option<Instant>,
    },
}

/// The delivery state when packets were sent at one instant (a GSO batch shares it).
#[derive(Clone, Copy, Debug)]
struct SentAt {
    sent: Instant,
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    app_limited: bool,
}

/// The delivery-rate sample of one batch of ACKs, from its most recently sent packet.
#[derive(Clone, Copy, Debug)]
struct RateSample {
    prior_delivered: u64,
    interval: Duration,
    app_limited: bool,
}

/// A windowed maximum over rounds (a monotonic queue).
#[derive(Clone, Debug, Default)]
struct MaxFilter {
    samples: VecDeque<(u64, f64)>,
}

impl MaxFilter {
    fn update(&mut self, round: u64, value: f64) {
        while self.samples.back().is_some_and(|&(_, v)| v <= value) {
            self.samples.pop_back();
        }
        self.samples.push_back((round, value));
        self.expire(round);
    }

    fn expire(&mut self, round: u64) {
        while self
            .samples
            .front()
            .is_some_and(|&(r, _)| r + BW_FILTER_ROUNDS <= round)
            && self.samples.len() > 1
        {
            self.samples.pop_front();
        }
    }

    fn get(&self) -> f64 {
        self.samples.front().map_or(0.0, |&(_, v)| v)
    }
}

/// One connection's BBR state.
#[derive(Clone, Debug)]
pub struct Bbr {
    mtu: u64,
    initial_window: u64,

    // Delivery-rate estimation.
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    /// `delivered` at which the app-limited period ends; 0 when not app-limited.
    app_limited_until: u64,
    in_flight: u64,
    sent: VecDeque<SentAt>,

    // The ACK batch being processed.
    batch_sample: Option<RateSample>,
    batch_rtt: Option<Duration>,
    batch_acked: u64,
    round_start: bool,

    // The model.
    bw: MaxFilter,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Instant,
    round: u64,
    next_round_delivered: u64,

    // The state machine.
    state: State,
    pacing_gain: f64,
    cwnd_gain: f64,
    pacing_rate: f64,
    filled_pipe: bool,
    full_bw: f64,
    full_bw_rounds: u32,
    cwnd: u64,
    prior_cwnd: u64,
    /// The round ProbeRTT must see pass before it ends.
    probe_rtt_round: u64,
    /// Times ProbeRTT was entered.
    probe_rtts: u64,
    /// Rounds that lost too much (with a queue).
    high_loss_rounds: u64,

    // Loss.
    /// Send time of the packet whose loss started the current recovery.
    recovery_start: Option<Instant>,
    /// Packet conservation until this round.
    conservation_until_round: Option<u64>,
    round_lost: u64,
    round_delivered_start: u64,
    round_max_in_flight: u64,
    /// The largest RTT sampled this round.
    round_max_rtt: Duration,
    /// The smallest RTT sampled this round.
    round_min_rtt: Duration,
    /// The cap on bytes in flight after too much loss; `u64::MAX` when there is none.
    inflight_hi: u64,
    probe_hi_add: u64,
    last_high_loss: Option<(Instant, u64)>,
    probe_hi_wait: Duration,
    /// The cut of `inflight_hi` still being tested for random loss.
    cut: Option<Cut>,
    /// Random loss found so, and until when it is tolerated on top of `LOSS_THRESH`.
    random_loss: Option<(f64, Instant)>,
    rng: u64,
}

/// A cut of `inflight_hi` and what caused it. Loss that a smaller window would avoid (a
/// queue that overflows) falls when less is in flight; loss that goes on at the same rate
/// with much less in flight is random, whatever the RTT shows (on a path of a fraction of a
/// millisecond, a receiver's scheduling alone puts every round's RTT far above the min).
#[derive(Clone, Copy, Debug)]
struct Cut {
    /// The cap before the first cut.
    prior_hi: u64,
    /// In flight and loss rate of the round that caused it.
    max_in_flight: u64,
    loss_rate: f64,
    /// Lossy rounds since, with much less in flight and no less loss.
    random_rounds: u32,
}

impl Bbr {
    pub fn new(now: Instant, mtu: u16, initial_window: u64) -> Self {
        let mtu = u64::from(mtu).max(1);
        let mut bbr = Bbr {
            mtu,
            initial_window,
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited_until: 0,
            in_flight: 0,
            sent: VecDeque::new(),
            batch_sample: None,
            batch_rtt: None,
            batch_acked: 0,
            round_start: false,
            bw: MaxFilter::default(),
            min_rtt: None,
            min_rtt_stamp: now,
            round: 0,
            next_round_delivered: 0,
            state: State::Startup,
            pacing_gain: STARTUP_GAIN,
            cwnd_gain: STARTUP_GAIN,
            pacing_rate: 0.0,
            filled_pipe: false,
            full_bw: 0.0,
            full_bw_rounds: 0,
            cwnd: initial_window,
            prior_cwnd: initial_window,
            probe_rtt_round: 0,
            probe_rtts: 0,
            high_loss_rounds: 0,
            recovery_start: None,
            conservation_until_round: None,
            round_lost: 0,
            round_delivered_start: 0,
            round_max_in_flight: 0,
            round_max_rtt: Duration::ZERO,
            round_min_rtt: Duration::MAX,
            inflight_hi: u64::MAX,
            probe_hi_add: mtu,
            last_high_loss: None,
            probe_hi_wait: PROBE_HI_TIME,
            cut: None,
            random_loss: None,
            // Each connection its own sequence, so that flows desynchronize.
            rng: NEXT_SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed) | 1,
        };
        bbr.pacing_rate = STARTUP_GAIN * initial_window as f64 / INITIAL_RTT.as_secs_f64();
        bbr
    }

    /// The same BBR with its random sequence (ProbeBW's first phase, ProbeRTT's waits) from
    /// `seed`: runs in virtual time repeat exactly.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = seed | 1;
        self
    }

    /// The congestion window in bytes.
    pub fn window(&self) -> u64 {
        let w = if matches!(self.state, State::ProbeRtt { .. }) {
            self.cwnd.min(self.min_window())
        } else {
            self.cwnd
        };
        w.min(self.inflight_hi).max(self.min_window())
    }

    /// The pacing rate in bytes per second.
    pub fn pacing_rate(&self) -> u64 {
        self.pacing_rate as u64
    }

    /// The bottleneck bandwidth estimate in bytes per second.
    pub fn bandwidth(&self) -> u64 {
        self.bw.get() as u64
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Times ProbeRTT was entered.
    pub fn probe_rtts(&self) -> u64 {
        self.probe_rtts
    }

    /// Rounds that lost more than 2% with a queue.
    pub fn high_loss_rounds(&self) -> u64 {
        self.high_loss_rounds
    }

    /// The cap on bytes in flight that loss has set, if any.
    pub fn inflight_hi(&self) -> Option<u64> {
        (self.inflight_hi != u64::MAX).then_some(self.inflight_hi)
    }

    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu).max(1);
    }

    fn min_window(&self) -> u64 {
        MIN_PIPE_PACKETS * self.mtu
    }

    /// A packet of `bytes` left at `now`.
    pub fn on_sent(&mut self, now: Instant, bytes: u64) {
        if self.in_flight == 0 {
            // A new flight: intervals start now, not at the last ACK before the pause.
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        if self.sent.back().is_none_or(|s| s.sent != now) {
            if self.sent.len() >= MAX_SENT_STATES {
                // ACK-only packets are reported as sent but never acknowledged: the oldest
                // states go, at worst with a rate sample.
                self.sent.pop_front();
            }
            self.sent.push_back(SentAt {
                sent: now,
                delivered: self.delivered,
                delivered_time: self.delivered_time,
                first_sent_time: self.first_sent_time,
                app_limited: self.app_limited_until != 0,
            });
        }
        self.in_flight += bytes;
        self.round_max_in_flight = self.round_max_in_flight.max(self.in_flight);
    }

    /// A packet sent at `sent`, of `bytes`, was acknowledged at `now`.
    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64) {
        self.in_flight = self.in_flight.saturating_sub(bytes);
        self.delivered += bytes;
        self.delivered_time = now;
        self.batch_acked += bytes;
        let rtt = now.saturating_duration_since(sent);
        self.batch_rtt = Some(self.batch_rtt.map_or(rtt, |r| r.min(rtt)));
        self.round_max_rtt = self.round_max_rtt.max(rtt);
        self.round_min_rtt = self.round_min_rtt.min(rtt);
        if self.recovery_start.is_some_and(|r| sent > r) {
            // A packet sent after the loss arrived: recovery is over.
            self.recovery_start = None;
            self.conservation_until_round = None;
            self.cwnd = self.cwnd.max(self.prior_cwnd);
        }
        let idx = self.sent.partition_point(|s| s.sent < sent);
        let Some(p) = self.sent.get(idx).filter(|s| s.sent == sent).copied() else {
            return; // sent before the oldest state we keep: no sample
        };
        // Everything sent earlier is acknowledged or lost by now (or reordered: no sample).
        self.sent.drain(..idx);
        if self
            .batch_sample
            .is_none_or(|s| p.delivered >= s.prior_delivered)
        {
            self.batch_sample = Some(RateSample {
                prior_delivered: p.delivered,
                interval: sent
                    .saturating_duration_since(p.first_sent_time)
                    .max(now.saturating_duration_since(p.delivered_time)),
                app_limited: p.app_limited,
            });
            self.first_sent_time = sent;
        }
        if p.delivered >= self.next_round_delivered {
            self.next_round_delivered = self.delivered;
            self.round += 1;
            self.round_start = true;
        }
    }

    /// The end of a batch of ACKs; `in_flight` as quinn counts it, `app_limited` whether
    /// the sender had less to send than the window allows.
    pub fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool) {
        self.in_flight = in_flight;
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        if app_limited {
            self.app_limited_until = (self.delivered + in_flight).max(1);
        }
        let acked = std::mem::take(&mut self.batch_acked);
        self.update_model(now);
        if std::mem::take(&mut self.round_start) {
            self.on_round_start(now);
        }
        self.update_state(now);
        self.set_pacing_rate();
        self.set_cwnd(acked);
        self.batch_sample = None;
        self.batch_rtt = None;
    }

    /// Packets totalling `lost_bytes`, the newest sent at `sent`, were declared lost.
    pub fn on_loss(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        self.in_flight = self.in_flight.saturating_sub(lost_bytes);
        self.round_lost += lost_bytes;
        if persistent {
            // The path went away for a while: restart from the floor, as after an RTO.
            self.prior_cwnd = self.save_cwnd();
            self.cwnd = self.min_window();
            self.recovery_start = Some(now);
            return;
        }
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return; // part of the loss that started this recovery
        }
        if !self.queue_grew() {
            // Random loss: no smaller window would have avoided it, and the pacing rate
            // already follows the bandwidth. Conservation is for loss at a full queue.
            return;
        }
        self.prior_cwnd = self.save_cwnd();
        self.cwnd = (self.in_flight + self.mtu).max(self.min_window());
        self.recovery_start = Some(now);
        self.conservation_until_round = Some(self.round + 1);
    }

    fn save_cwnd(&self) -> u64 {
        if self.recovery_start.is_none() && !matches!(self.state, State::ProbeRtt { .. }) {
            self.cwnd
        } else {
            self.prior_cwnd.max(self.cwnd)
        }
    }

    fn bdp(&self, gain: f64) -> u64 {
        match self.min_rtt {
            Some(rtt) if self.bw.get() > 0.0 => (gain * self.bw.get() * rtt.as_secs_f64()) as u64,
            _ => self.initial_window,
        }
    }

    fn update_model(&mut self, now: Instant) {
        if let Some(rtt) = self.batch_rtt {
            let expired = now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_WINDOW;
            if self.min_rtt.is_none_or(|m| rtt <= m) || expired {
                if expired && !matches!(self.state, State::ProbeRtt { .. }) {
                    self.enter_probe_rtt();
                }
                self.min_rtt = Some(rtt);
                self.min_rtt_stamp = now;
            }
        }
        let Some(s) = self.batch_sample else { return };
        let delivered = self.delivered - s.prior_delivered;
        // An interval shorter than the min RTT measures ACK compression, not the path.
        if delivered == 0 || s.interval.is_zero() || self.min_rtt.is_some_and(|m| s.interval < m) {
            return;
        }
        let rate = delivered as f64 / s.interval.as_secs_f64();
        if rate >= self.bw.get() || !s.app_limited {
            self.bw.update(self.round, rate);
        } else {
            self.bw.expire(self.round);
        }
    }

    fn on_round_start(&mut self, now: Instant) {
        if self
            .conservation_until_round
            .is_some_and(|r| self.round >= r)
        {
            self.conservation_until_round = None;
        }
        // The loss of the round that just ended.
        let delivered = self.delivered - self.round_delivered_start;
        let lost = self.round_lost;
        let loss_rate = lost as f64 / (lost + delivered).max(1) as f64;
        let lossy = lost >= LOSS_MIN_PACKETS * self.mtu && loss_rate > LOSS_THRESH;
        // Startup's plateau test, on rounds that were not app-limited, or were but still
        // built a queue or lost much: a sender held back by the receiver's flow-control
        // window that queues at the bottleneck, or overruns a receiver whose CPU sets the
        // pace, has found its rate, and Startup's gain would only lengthen the queue (and
        // the RTT the window has to cover) or the receiver's drops.
        if !self.filled_pipe && (self.app_limited_until == 0 || self.queue_grew() || lossy) {
            let bw = self.bw.get();
            if bw >= self.full_bw * FULL_BW_GROWTH {
                self.full_bw = bw;
                self.full_bw_rounds = 0;
            } else {
                self.full_bw_rounds += 1;
                self.filled_pipe = self.full_bw_rounds >= FULL_BW_ROUNDS;
            }
        }
        let tolerated = match self.random_loss {
            Some((rate, until)) if now < until => rate,
            _ => 0.0,
        };
        let too_much = lossy && loss_rate > LOSS_THRESH + tolerated && self.queue_grew();
        if too_much {
            self.high_loss_rounds += 1;
            if !self.loss_is_random(now, loss_rate) {
                self.cut_inflight_hi(now, loss_rate);
            }
        } else if self.inflight_hi != u64::MAX && self.may_probe_hi(now) {
            // Probing upward: 1, 2, 4, ... packets more each round without too much loss.
            self.cut = None;
            self.inflight_hi = self.inflight_hi.saturating_add(self.probe_hi_add);
            self.probe_hi_add = self.probe_hi_add.saturating_mul(2);
            if self.inflight_hi >= self.bdp(CWND_GAIN).saturating_mul(4) {
                self.inflight_hi = u64::MAX; // far above the model: no cap
            }
        }
        tracing::trace!(
            round = self.round,
            state = ?self.state,
            bw_mbit = self.bw.get() * 8e-6,
            min_rtt_ms = self.min_rtt.map_or(0.0, |m| m.as_secs_f64() * 1e3),
            max_rtt_ms = self.round_max_rtt.as_secs_f64() * 1e3,
            round_min_rtt_ms = self.round_min_rtt.as_secs_f64() * 1e3,
            cwnd = self.cwnd,
            inflight_hi = self.inflight_hi().unwrap_or(0),
            max_in_flight = self.round_max_in_flight,
            delivered,
            lost,
            app_limited = self.app_limited_until != 0,
            "bbr round"
        );
        self.round_lost = 0;
        self.round_delivered_start = self.delivered;
        self.round_max_in_flight = self.in_flight;
        self.round_max_rtt = Duration::ZERO;
        self.round_min_rtt = Duration::MAX;
    }

    /// Caps what may be in flight after a round that lost too much (`loss_rate`).
    fn cut_inflight_hi(&mut self, now: Instant, loss_rate: f64) {
        self.filled_pipe = true;
        self.cut.get_or_insert(Cut {
            prior_hi: self.inflight_hi,
            max_in_flight: self.round_max_in_flight,
            loss_rate,
            random_rounds: 0,
        });
        // Never below what probing at 1.25 × the model needs: random loss, which no
        // smaller window avoids, must not shrink the model round after round.
        let floor = self.bdp(PROBE_BW_GAINS[0]) + self.send_quantum();
        let hi = (BETA * self.round_max_in_flight as f64) as u64;
        self.inflight_hi = hi.min(self.inflight_hi).max(floor).max(self.min_window());
        self.probe_hi_add = self.mtu;
        self.last_high_loss = Some((now, self.round));
        // 2 to 3 seconds until the cap is probed again, as BBRv3.
        self.probe_hi_wait = PROBE_HI_TIME + Duration::from_millis(self.random() % 1000);
    }

    /// Whether a lossy round (`loss_rate`) shows that the loss since the last cut is random:
    /// then the cut is undone and that rate is tolerated for `RANDOM_LOSS_TIME`.
    fn loss_is_random(&mut self, now: Instant, loss_rate: f64) -> bool {
        // A queue that never drained all round overflows, whatever the loss rate says.
        let standing_queue = self.shows_queue(self.round_min_rtt);
        let Some(cut) = self.cut.as_mut() else {
            return false;
        };
        let less_in_flight =
            self.round_max_in_flight as f64 <= RANDOM_LOSS_IN_FLIGHT * cut.max_in_flight as f64;
        if !less_in_flight || standing_queue || loss_rate < RANDOM_LOSS_RATE * cut.loss_rate {
            return false;
        }
        cut.random_rounds += 1;
        if cut.random_rounds < RANDOM_LOSS_ROUNDS {
            return false;
        }
        self.inflight_hi = cut.prior_hi;
        self.random_loss = Some((loss_rate.min(cut.loss_rate), now + RANDOM_LOSS_TIME));
        self.cut = None;
        true
    }

    /// Whether this round's RTT rose above the path's own: loss with a queue is congestion
    /// (at a bottleneck or in a receiver that cannot keep up); loss without one is random,
    /// and no smaller window would avoid it.
    fn queue_grew(&self) -> bool {
        self.shows_queue(self.round_max_rtt)
    }

    /// Whether `rtt` is above the path's own by more than jitter.
    fn shows_queue(&self, rtt: Duration) -> bool {
        self.min_rtt
            .is_some_and(|m| rtt > m + m / 4 + QUEUE_RTT_MARGIN)
    }

    fn may_probe_hi(&self, now: Instant) -> bool {
        self.last_high_loss.is_none_or(|(at, round)| {
            now.saturating_duration_since(at) >= self.probe_hi_wait
                || self.round >= round + PROBE_HI_ROUNDS
        })
    }

    /// xorshift64: enough to spread phases and waits; no secret depends on it.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn enter_probe_rtt(&mut self) {
        self.probe_rtts += 1;
        self.prior_cwnd = self.save_cwnd();
        self.state = State::ProbeRtt { done_at: None };
        self.pacing_gain = 1.0;
        self.cwnd_gain = 1.0;
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        // Any phase but the draining one (index 1), so flows desynchronize.
        let mut phase = (self.random() % 7) as usize;
        if phase >= 1 {
            phase += 1;
        }
        self.state = State::ProbeBw { phase, since: now };
        self.pacing_gain = PROBE_BW_GAINS[phase];
        self.cwnd_gain = CWND_GAIN;
    }

    fn update_state(&mut self, now: Instant) {
        match self.state {
            State::Startup if self.filled_pipe => {
                self.state = State::Drain;
                self.pacing_gain = DRAIN_GAIN;
                self.cwnd_gain = STARTUP_GAIN;
                self.update_state(now);
            }
            State::Drain if self.in_flight <= self.bdp(1.0) => self.enter_probe_bw(now),
            State::ProbeBw { phase, since } => {
                let bdp = self.bdp(1.0);
                let elapsed = self
                    .min_rtt
                    .is_none_or(|m| now.saturating_duration_since(since) > m);
                let next = match PROBE_BW_GAINS[phase] {
                    // Probing up: a full min RTT, and until the pipe holds 1.25 × BDP or
                    // packets are lost.
                    g if g > 1.0 => {
                        elapsed && (self.round_lost > 0 || self.in_flight >= self.bdp(g))
                    }
                    // Draining: until the queue is gone, at most a min RTT.
                    g if g < 1.0 => elapsed || self.in_flight <= bdp,
                    _ => elapsed,
                };
                if next {
                    let phase = (phase + 1) % PROBE_BW_GAINS.len();
                    self.state = State::ProbeBw { phase, since: now };
                    self.pacing_gain = PROBE_BW_GAINS[phase];
                }
            }
            State::ProbeRtt { done_at } => {
                if done_at.is_none() && self.in_flight <= self.min_window() {
                    self.state = State::ProbeRtt {
                        done_at: Some(now + PROBE_RTT_TIME),
                    };
                    self.next_round_delivered = self.delivered;
                    self.probe_rtt_round = self.round + 1;
                } else if let Some(at) = done_at {
                    if self.round >= self.probe_rtt_round && now >= at {
                        self.min_rtt_stamp = now;
                        self.cwnd = self.cwnd.max(self.prior_cwnd);
                        if self.filled_pipe {
                            self.enter_probe_bw(now);
                        } else {
                            self.state = State::Startup;
                            self.pacing_gain = STARTUP_GAIN;
                            self.cwnd_gain = STARTUP_GAIN;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn set_pacing_rate(&mut self) {
        let bw = self.bw.get();
        if bw <= 0.0 {
            return;
        }
        let rate = self.pacing_gain * bw;
        if self.filled_pipe || rate > self.pacing_rate {
            self.pacing_rate = rate;
        }
    }

    /// What the sender sends in one burst at its pacing rate (the draft's
    /// BBRSetSendQuantum): on a fast path a millisecond's worth, up to one GSO batch.
    fn send_quantum(&self) -> u64 {
        if self.pacing_rate < TWO_PACKET_RATE {
            self.mtu
        } else if self.pacing_rate < TIME_QUANTUM_RATE {
            2 * self.mtu
        } else {
            ((self.pacing_rate * QUANTUM_TIME.as_secs_f64()) as u64).min(MAX_QUANTUM)
        }
    }

    fn set_cwnd(&mut self, acked: u64) {
        let target = self.bdp(self.cwnd_gain) + QUANTA * self.send_quantum();
        if self.conservation_until_round.is_some() {
            self.cwnd = self.cwnd.max(self.in_flight + acked);
        } else if self.filled_pipe {
            self.cwnd = (self.cwnd + acked).min(target);
        } else if self.cwnd < target || self.delivered < self.initial_window {
            self.cwnd += acked;
        }
        self.cwnd = self.cwnd.max(self.min_window());
    }
}

/// Builds [`BbrController`]s.
#[derive(Clone, Copy, Debug)]
pub struct BbrConfig {
    /// The window before the first ACK, in bytes.
    pub initial_window: u64,
}

impl Default for BbrConfig {
    fn default() -> Self {
        // quic-go's and Chromium's: 32 packets of 1,252 bytes, what the sing-box and official
        // servers start with (RFC 9002 recommends 10 packets; on a 150 ms path the 3.2 times
        // larger start saves about 250 ms of Startup).
        BbrConfig {
            initial_window: 32 * 1_252,
        }
    }
}

impl ControllerFactory for BbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(BbrController {
            bbr: Bbr::new(now, current_mtu, self.initial_window),
            last_sent: None,
        })
    }
}

/// [`Bbr`] as quinn-proto's `Controller`.
#[derive(Clone, Debug)]
pub struct BbrController {
    bbr: Bbr,
    /// Time and byte count of the last `on_sent`. quinn-proto reports each packet of a GSO
    /// batch with the batch's length so far, so a packet's own size is the difference.
    last_sent: Option<(Instant, u64)>,
}

impl BbrController {
    pub fn bbr(&self) -> &Bbr {
        &self.bbr
    }
}

impl Controller for BbrController {
    fn on_sent(&mut self, now: Instant, bytes: u64, _last_packet_number: u64) {
        let size = match self.last_sent {
            Some((at, before)) if at == now && bytes > before => bytes - before,
            _ => bytes,
        };
        self.last_sent = Some((now, bytes));
        self.bbr.on_sent(now, size);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        _app_limited: bool,
        _rtt: &RttEstimator,
    ) {
        self.bbr.on_ack(now, sent, bytes);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        self.bbr.on_end_acks(now, in_flight, app_limited);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // ECN marks (0 bytes) are not losses; BBRv1 does not use them.
        if lost_bytes > 0 || is_persistent_congestion {
            self.bbr
                .on_loss(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.bbr.set_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        self.bbr.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window();
        m.pacing_rate = Some(self.bbr.pacing_rate().saturating_mul(8));
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.bbr.initial_window
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_filter_keeps_the_largest_of_ten_rounds() {
        let mut f = MaxFilter::default();
        f.update(0, 5.0);
        f.update(1, 9.0);
        f.update(2, 7.0);
        assert_eq!(f.get(), 9.0);
        // Round 11: the 9 of round 1 has aged out; the 7 of round 2 is the largest left.
        f.update(11, 1.0);
        assert_eq!(f.get(), 7.0);
        f.update(12, 8.0);
        assert_eq!(f.get(), 8.0);
    }

    #[test]
    fn each_packet_of_a_gso_batch_counts_once() {
        // quinn reports a batch's packets with the batch's length so far.
        let t0 = Instant::now();
        let mut c = BbrController {
            bbr: Bbr::new(t0, 1200, 12_000),
            last_sent: None,
        };
        c.on_sent(t0, 1200, 0);
        c.on_sent(t0, 2400, 1);
        c.on_sent(t0, 3600, 2);
        assert_eq!(c.bbr.in_flight, 3600);
        // A new batch at the same instant starts from its own first packet.
        c.on_sent(t0, 1200, 3);
        assert_eq!(c.bbr.in_flight, 4800);
        c.on_sent(t0 + Duration::from_millis(1), 1200, 4);
        assert_eq!(c.bbr.in_flight, 6000);
    }

    #[test]
    fn pacing_follows_the_gain_and_the_estimate() {
        let t0 = Instant::now();
        let mut b = Bbr::new(t0, 1200, 12_000);
        // Before any sample: Startup's gain over the initial window per millisecond.
        assert_eq!(b.pacing_rate(), (STARTUP_GAIN * 12_000_000.0) as u64);
        // One packet a millisecond, acked 10 ms later: 1.2 MB/s, 10 ms.
        let mut t = t0;
        for i in 0..200u64 {
            b.on_sent(t, 1200);
            if i >= 10 {
                let sent = t - Duration::from_millis(10);
                b.on_ack(t, sent, 1200);
                b.on_end_acks(t, 10 * 1200, false);
            }
            t += Duration::from_millis(1);
        }
        assert_eq!(b.min_rtt(), Some(Duration::from_millis(10)));
        let bw = b.bandwidth() as f64;
        assert!((1.1e6..1.3e6).contains(&bw), "bandwidth {bw}");
    }
}
