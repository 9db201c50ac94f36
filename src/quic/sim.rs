//! A bottleneck path in virtual time, to run [`Bbr`] against in unit tests.
//!
//! One bulk sender (always has data, packets of [`PACKET`] bytes) crosses a link of a given
//! rate with a drop-tail queue, a one-way delay each way and random loss; the receiver
//! acknowledges every packet at once, unless it is paused (`pauses`: a busy host's
//! scheduling), and ACKs are never lost or queued. The link may serve only part of each
//! period (`duty`), which models a receiver whose CPU sets the pace: a client in a cgroup
//! with a CPU quota drains its queue only while it runs.
//!
//! Loss detection is RFC 9002's: a packet is lost when one sent 3 packets later is acked,
//! or when 9/8 of the latest RTT has passed since it left and a later one was acked; a
//! probe timeout declares everything outstanding lost when nothing is acked for 3 RTTs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use super::bbr::Bbr;

/// Bytes per packet on the wire.
pub const PACKET: u64 = 1200;

#[derive(Clone, Debug)]
pub struct Path {
    /// Bottleneck rate in bytes per second.
    pub rate: f64,
    /// Drop-tail queue in front of the bottleneck, in bytes.
    pub queue: u64,
    /// One-way propagation delay (the RTT is twice this).
    pub one_way: Duration,
    /// Probability that a packet is dropped at random before the queue.
    pub loss: f64,
    /// The link serves only the first `.0` of every `.1`.
    pub duty: Option<(Duration, Duration)>,
    /// The receiver's flow-control window: at most this many bytes in flight, whatever the
    /// congestion window allows (the sender is then application-limited).
    pub window: Option<u64>,
    /// The receiver's CPU noise: after a packet, with probability `.0`, it pauses for up to
    /// `.1` (uniformly), and what arrives meanwhile is acknowledged when it wakes. RTT
    /// samples then spread far above the path's without any queue at a link.
    pub pauses: Option<(f64, Duration)>,
    pub seed: u64,
}

impl Path {
    /// `mbit` Mbit/s, `rtt_ms` RTT, a queue of `queue_bdp` × the BDP (at least 20 packets).
    pub fn new(mbit: f64, rtt_ms: u64, queue_bdp: f64) -> Path {
        let rate = mbit * 1e6 / 8.0;
        let one_way = Duration::from_micros(rtt_ms * 500);
        let bdp = rate * 2.0 * one_way.as_secs_f64();
        Path {
            rate,
            queue: ((bdp * queue_bdp) as u64).max(20 * PACKET),
            one_way,
            loss: 0.0,
            duty: None,
            window: None,
            pauses: None,
            seed: 1,
        }
    }

    pub fn loss(mut self, loss: f64) -> Path {
        self.loss = loss;
        self
    }

    pub fn duty(mut self, on: Duration, period: Duration) -> Path {
        self.duty = Some((on, period));
        self
    }

    pub fn window(mut self, bytes: u64) -> Path {
        self.window = Some(bytes);
        self
    }

    pub fn pauses(mut self, probability: f64, longest: Duration) -> Path {
        self.pauses = Some((probability, longest));
        self
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub secs: f64,
    /// Bytes acknowledged.
    pub delivered: u64,
    /// Bytes sent, retransmissions included.
    pub sent: u64,
    /// Bytes declared lost (and so sent again).
    pub lost: u64,
    /// Bytes dropped by the path (queue overflow or random loss).
    pub dropped: u64,
    /// The largest queue seen, in bytes.
    pub max_queue: u64,
    /// Mean queue over the second half of the run, in bytes.
    pub mean_queue: f64,
}

impl Report {
    pub fn goodput(&self) -> f64 {
        self.delivered as f64 / self.secs
    }

    /// Lost bytes per byte sent.
    pub fn loss_ratio(&self) -> f64 {
        self.lost as f64 / self.sent.max(1) as f64
    }
}

struct Outstanding {
    sent: Instant,
    size: u64,
}

/// Runs `bbr` over `path` for `secs` of virtual time from `t0`.
pub fn run(bbr: &mut Bbr, path: &Path, t0: Instant, secs: f64) -> Report {
    let end = t0 + Duration::from_secs_f64(secs);
    let mut rng = path.seed.max(1);
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut now = t0;
    let mut rep = Report::default();
    let mut pn = 0u64;
    let mut outstanding: BTreeMap<u64, Outstanding> = BTreeMap::new();
    let mut in_flight = 0u64;
    // ACK arrivals at the sender: (time, packet number).
    let mut acks: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    // Packets waiting at or crossing the bottleneck: (departure time, size).
    let mut queue: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut link_free = t0;
    // The receiver acknowledges nothing before this (a pause).
    let mut awake_at = t0;
    let mut next_send = t0;
    let mut latest_rtt = path.one_way * 2;
    let mut last_ack = t0;
    // Probe timeouts in a row (each doubles the next), and probe packets owed.
    let (mut ptos, mut probes) = (0u32, 0u32);
    let (mut queue_area, mut queue_time) = (0.0, 0.0);
    let half = t0 + Duration::from_secs_f64(secs / 2.0);

    while now < end {
        let ack_at = acks.peek().map(|Reverse((t, _))| *t);
        let flow_blocked = path.window.is_some_and(|w| in_flight + PACKET > w);
        let can_send = (in_flight + PACKET <= bbr.window() && !flow_blocked) || probes > 0;
        let send_at = can_send.then_some(next_send.max(now));
        let pto_base = (latest_rtt * 3 / 2).max(Duration::from_millis(1)) * 2u32.pow(ptos.min(16));
        let pto_at = (in_flight > 0 && probes == 0).then_some(last_ack + pto_base);
        let Some(t) = [ack_at, send_at, pto_at].into_iter().flatten().min() else {
            break;
        };
        if t >= end {
            break;
        }
        if t > now && t > half {
            let q: u64 = queue.iter().map(|&(_, s)| s).sum();
            queue_area += q as f64 * (t - now.max(half)).as_secs_f64();
            queue_time += (t - now.max(half)).as_secs_f64();
        }
        now = t;
        while queue.front().is_some_and(|&(d, _)| d <= now) {
            queue.pop_front();
        }

        if ack_at == Some(t) {
            // Every ACK due now is one batch.
            let mut largest: Option<(u64, Instant)> = None;
            while let Some(&Reverse((at, n))) = acks.peek() {
                if at > now {
                    break;
                }
                acks.pop();
                if let Some(o) = outstanding.remove(&n) {
                    in_flight -= o.size;
                    rep.delivered += o.size;
                    bbr.on_ack(now, o.sent, o.size);
                    latest_rtt = now - o.sent;
                    if largest.is_none_or(|(l, _)| n > l) {
                        largest = Some((n, o.sent));
                    }
                }
            }
            if let Some((largest, _)) = largest {
                last_ack = now;
                ptos = 0;
                let threshold = latest_rtt * 9 / 8;
                let lost: Vec<u64> = outstanding
                    .range(..largest)
                    .filter(|(&n, o)| largest - n >= 3 || o.sent + threshold <= now)
                    .map(|(&n, _)| n)
                    .collect();
                declare_lost(
                    bbr,
                    now,
                    &mut outstanding,
                    &mut in_flight,
                    &lost,
                    &mut rep,
                    false,
                );
            }
            // A flow-control window below the congestion window holds the sender back
            // before congestion control does: app-limited, as quinn-proto reports it.
            let app_limited = path.window.is_some_and(|w| w < bbr.window());
            bbr.on_end_acks(now, in_flight, app_limited);
        } else if send_at == Some(t) {
            outstanding.insert(
                pn,
                Outstanding {
                    sent: now,
                    size: PACKET,
                },
            );
            in_flight += PACKET;
            rep.sent += PACKET;
            bbr.on_sent(now, PACKET);
            let queued: u64 = queue.iter().map(|&(_, s)| s).sum();
            if random() < path.loss || queued + PACKET > path.queue {
                rep.dropped += PACKET;
            } else {
                let start = serve_from(path, t0, link_free.max(now));
                let depart = start + Duration::from_secs_f64(PACKET as f64 / path.rate);
                link_free = depart;
                queue.push_back((depart, PACKET));
                rep.max_queue = rep.max_queue.max(queued + PACKET);
                let arrive = depart + path.one_way;
                let acked = arrive.max(awake_at);
                if let Some((p, longest)) = path.pauses {
                    if random() < p {
                        awake_at = acked + longest.mul_f64(random());
                    }
                }
                acks.push(Reverse((acked + path.one_way, pn)));
            }
            pn += 1;
            probes = probes.saturating_sub(1);
            let rate = bbr.pacing_rate();
            next_send = if rate > 0 {
                now + Duration::from_secs_f64(PACKET as f64 / rate as f64)
            } else {
                now
            };
        } else {
            // Probe timeout: two packets go out whatever the window; the ACKs they bring
            // back tell what was lost.
            probes = 2;
            ptos += 1;
            last_ack = now;
        }
    }
    rep.secs = secs;
    rep.mean_queue = if queue_time > 0.0 {
        queue_area / queue_time
    } else {
        0.0
    };
    rep
}

fn declare_lost(
    bbr: &mut Bbr,
    now: Instant,
    outstanding: &mut BTreeMap<u64, Outstanding>,
    in_flight: &mut u64,
    lost: &[u64],
    rep: &mut Report,
    persistent: bool,
) {
    let mut bytes = 0;
    let mut newest = None;
    for n in lost {
        if let Some(o) = outstanding.remove(n) {
            bytes += o.size;
            newest = Some(o.sent);
        }
    }
    if let Some(sent) = newest {
        *in_flight -= bytes;
        rep.lost += bytes;
        bbr.on_loss(now, sent, persistent, bytes);
    }
}

/// The first instant at or after `t` when the link serves; periods count from `t0`.
fn serve_from(path: &Path, t0: Instant, t: Instant) -> Instant {
    let Some((on, period)) = path.duty else {
        return t;
    };
    let ns = t.saturating_duration_since(t0).as_nanos() % period.as_nanos().max(1);
    let phase = Duration::from_nanos(ns as u64);
    if phase < on {
        t
    } else {
        t + (period - phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::bbr::State;

    fn bbr(t0: Instant) -> Bbr {
        Bbr::new(t0, PACKET as u16, 10 * PACKET).with_seed(7)
    }

    #[test]
    fn clean_path_fills_the_link_with_a_short_queue() {
        let t0 = Instant::now();
        let path = Path::new(100.0, 30, 1.0);
        let mut b = bbr(t0);
        let rep = run(&mut b, &path, t0, 20.0);
        let util = rep.goodput() / path.rate;
        assert!(util > 0.9, "utilization {util:.3}: {rep:?}");
        assert!(
            rep.loss_ratio() < 0.01,
            "lost {:.4}: {rep:?}",
            rep.loss_ratio()
        );
        let bdp = path.rate * 0.030;
        assert!(
            rep.mean_queue < bdp,
            "mean queue {:.0} B, BDP {bdp:.0} B",
            rep.mean_queue
        );
        let est = b.bandwidth() as f64 / path.rate;
        assert!((0.9..1.1).contains(&est), "bandwidth estimate {est:.3}");
        let rtt = b.min_rtt().expect("an RTT sample");
        assert!(
            rtt >= Duration::from_millis(30) && rtt < Duration::from_millis(32),
            "min RTT {rtt:?}"
        );
        assert!(
            matches!(b.state(), State::ProbeBw { .. }),
            "{:?}",
            b.state()
        );
    }

    #[test]
    fn startup_finds_the_rate_within_a_second() {
        let t0 = Instant::now();
        let path = Path::new(300.0, 30, 1.0);
        let mut b = bbr(t0);
        run(&mut b, &path, t0, 1.0);
        assert!(!matches!(b.state(), State::Startup), "{:?}", b.state());
        let est = b.bandwidth() as f64 / path.rate;
        assert!((0.9..1.1).contains(&est), "bandwidth estimate {est:.3}");
    }

    #[test]
    fn random_loss_does_not_shrink_the_model() {
        // A sub-millisecond path behind a 64 KiB queue (the matrix's "rtt0" cells): a few
        // packets of queue already double the RTT there.
        let short = |loss| Path {
            one_way: Duration::from_micros(100),
            queue: 64 * 1024,
            ..Path::new(300.0, 0, 1.0).loss(loss)
        };
        for (path, want) in [
            (Path::new(300.0, 30, 1.0).loss(0.01), 0.8),
            (Path::new(50.0, 150, 1.0).loss(0.05), 0.75),
            (short(0.01), 0.95),
            (short(0.05), 0.93),
        ] {
            let t0 = Instant::now();
            let mut b = bbr(t0);
            let rep = run(&mut b, &path, t0, 30.0);
            let util = rep.goodput() / path.rate;
            assert!(util > want, "{path:?}: utilization {util:.3}: {rep:?}");
            assert_eq!(
                b.inflight_hi(),
                None,
                "{path:?}: random loss capped the window"
            );
            // Lost: the path's random loss, and little more.
            assert!(rep.loss_ratio() < path.loss * 1.2, "{path:?}: {rep:?}");
        }
    }

    #[test]
    fn random_loss_costs_a_noisy_receiver_little_more_than_its_noise() {
        // A sub-millisecond path whose receiver pauses now and then for up to 4 ms (its CPU
        // scheduling, as on loopback): every round's RTT then looks like a queue, and only
        // the loss going on at the same rate with less in flight shows it to be random.
        let noisy = |loss| Path {
            one_way: Duration::from_micros(100),
            queue: 64 * 1024,
            ..Path::new(300.0, 0, 1.0)
                .loss(loss)
                .pauses(0.01, Duration::from_millis(4))
        };
        let t0 = Instant::now();
        let lossless = run(&mut bbr(t0), &noisy(0.0), t0, 30.0);
        // The queue's own overflow is not random loss: the cuts that stop it stay.
        assert!(lossless.loss_ratio() < 0.01, "no random loss: {lossless:?}");
        let lossless = lossless.goodput();
        for loss in [0.01, 0.05] {
            let mut b = bbr(t0);
            let rep = run(&mut b, &noisy(loss), t0, 30.0);
            let ratio = rep.goodput() / lossless;
            assert!(
                ratio > 0.9,
                "{loss} loss: {ratio:.3} of the lossless goodput: {rep:?}"
            );
            assert!(rep.loss_ratio() < loss * 1.2, "{loss} loss: {rep:?}");
        }
    }

    #[test]
    fn a_receiver_that_runs_30_percent_of_the_time_loses_little() {
        // 1 Gbit/s while it runs, 30 ms of every 100, a 256-packet queue (quic-go's
        // per-connection queue), 100 µs RTT: a CPU-capped client on loopback.
        let t0 = Instant::now();
        let mut path =
            Path::new(1000.0, 0, 0.0).duty(Duration::from_millis(30), Duration::from_millis(100));
        path.queue = 256 * PACKET;
        path.one_way = Duration::from_micros(50);
        let mut b = bbr(t0);
        let rep = run(&mut b, &path, t0, 20.0);
        let capacity = 0.3 * path.rate;
        assert!(rep.goodput() > 0.9 * capacity, "{rep:?}");
        assert!(
            rep.loss_ratio() < 0.03,
            "lost {:.4}: {rep:?}",
            rep.loss_ratio()
        );
    }

    #[test]
    fn loss_with_a_queue_ends_startup_and_counts_as_congestion() {
        // A 30-packet queue at 300 Mbit/s, 1 ms (a receiver's queue on a LAN): Startup
        // overflows it, and the RTT shows the queue.
        let t0 = Instant::now();
        let mut path = Path::new(300.0, 1, 1.0);
        path.queue = 30 * PACKET;
        let mut b = bbr(t0);
        let first = run(&mut b, &path, t0, 0.5);
        assert!(!matches!(b.state(), State::Startup), "{:?}", b.state());
        assert!(
            b.high_loss_rounds() > 0,
            "no round counted as lossy: {first:?}"
        );
        assert!(first.loss_ratio() < 0.05, "{first:?}");
        let mut b = bbr(t0);
        let rep = run(&mut b, &path, t0, 20.0);
        assert!(rep.goodput() / path.rate > 0.9, "{rep:?}");
        assert!(
            rep.loss_ratio() < 0.02,
            "lost {:.4}: {rep:?}",
            rep.loss_ratio()
        );
    }

    #[test]
    fn a_flow_control_window_just_above_the_bdp_still_fills_a_long_path() {
        // 300 Mbit/s, 150 ms (a 5.6 MB BDP) behind a queue of one BDP, and the 8 MiB stream
        // window of a quic-go client: the sender is application-limited from the first
        // seconds on. Startup must still end, or its gain fills the queue with the window
        // and the RTT the window has to cover doubles (goodput 8 MiB per 300 ms).
        let t0 = Instant::now();
        let path = Path::new(300.0, 150, 1.0).window(8 << 20);
        let mut b = bbr(t0);
        let first = run(&mut b, &path, t0, 4.0);
        assert!(
            !matches!(b.state(), State::Startup),
            "still in Startup after 4 s: {first:?}"
        );
        let mut b = bbr(t0);
        let rep = run(&mut b, &path, t0, 20.0);
        let util = rep.goodput() / path.rate;
        assert!(util > 0.85, "utilization {util:.3}: {rep:?}");
        let bdp = path.rate * 0.150;
        assert!(
            rep.mean_queue < 0.25 * bdp,
            "mean queue {:.0} B, BDP {bdp:.0} B: {rep:?}",
            rep.mean_queue
        );
    }

    #[test]
    fn probe_rtt_every_ten_seconds_keeps_the_link_busy() {
        let t0 = Instant::now();
        let path = Path::new(100.0, 30, 1.0);
        let mut b = bbr(t0);
        let rep = run(&mut b, &path, t0, 25.0);
        assert_eq!(b.probe_rtts(), 2, "ProbeRTT at 10 s and 20 s");
        assert!(rep.goodput() / path.rate > 0.9, "{rep:?}");
    }
}
