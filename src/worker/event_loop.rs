//! The per-worker loop (DESIGN.md "The worker loop"): read the clock once; reap
//! completions and forwarded packets; feed QUIC; let the app act; transmit in GSO
//! batches; wait until the earliest timer. Every phase is bounded so that one busy
//! connection cannot starve the others.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use crossbeam_channel::{Receiver, TrySendError};
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint, ServerConfig, Transmit,
};

use super::app::{App, Io};
use super::hop::Hop;
use super::route::{route, Route};
use super::table::{ConnTable, Entry};
use super::{Forwarded, Shared, WorkerId};
use crate::engine::{Completion, Driver, Event, TxMeta, MAX_GSO_SEGMENTS};
use crate::limits::handshake::{Admit, HandshakeGate};
use crate::metrics::WorkerCounters;
use crate::proto::salamander::{Salamander, SALT_LEN};
use crate::quic::{self, CcHandle};

/// Receive batches (each up to 64 KiB of GRO segments) handled per iteration.
const RX_BATCHES_PER_LOOP: usize = 32;
/// Forwarded datagrams taken per iteration.
const FORWARDED_PER_LOOP: usize = 256;
/// Largest total payload of one GSO send (65535 less IPv6/IPv4 and UDP headers).
const MAX_GSO_PAYLOAD: usize = 65_535 - 48;
/// GSO batches one connection may send per iteration before others get their turn.
const TX_BATCHES_PER_CONN: usize = 8;

pub(super) struct Worker<A: App> {
    pub id: WorkerId,
    pub driver: Box<dyn Driver>,
    pub state: State<A>,
    pub forwarded: Receiver<Forwarded>,
}

/// Everything but the driver, so receive callbacks can borrow it while the driver reaps.
pub(super) struct State<A: App> {
    pub id: WorkerId,
    pub workers: usize,
    pub endpoint: Endpoint,
    pub server_config: Option<Arc<ServerConfig>>,
    pub client_config: Option<ClientConfig>,
    /// Where our CIDs carry the worker and node.
    pub layout: crate::quic::cid::CidLayout,
    pub conns: ConnTable,
    pub app: A,
    pub shared: Arc<Shared>,
    pub counters: Arc<WorkerCounters>,
    /// Salamander: every datagram in and out is (de)obfuscated here.
    pub obfs: Option<Arc<Salamander>>,
    /// Scratch for a transmit before obfuscation.
    pub obfs_buf: Vec<u8>,
    /// Scratch for endpoint responses (stateless resets, version negotiation, refusals).
    pub response_buf: Vec<u8>,
    /// Responses waiting for the driver.
    pub responses: Vec<(Transmit, Vec<u8>)>,
    pub sock_done: Vec<Completion>,
    /// When `publish` next sums the live connections' window updates.
    pub window_scan: Instant,
    /// Admission of new handshakes (servers).
    pub gate: Option<HandshakeGate>,
    /// Connections accepted whose handshake may still be in progress (pruned when the
    /// gate needs the count).
    pub handshaking: Vec<ConnectionHandle>,
    /// Port hopping (clients whose server gives a port range).
    pub hop: Option<Hop>,
}

impl<A: App> Worker<A> {
    pub fn run(mut self) {
        let mut pass = Vec::new();
        let mut expired = Vec::new();
        let mut timeout = Some(Duration::ZERO);
        loop {
            if self.state.shared.stop.load(Ordering::Acquire) || self.state.app.done() {
                break;
            }
            WorkerCounters::add(&self.state.counters.loops, 1);
            if timeout != Some(Duration::ZERO) {
                WorkerCounters::add(&self.state.counters.waits, 1);
            }
            if let Err(e) = self.driver.wait(timeout) {
                crate::warn_limited!("worker {}: wait failed: {e}", self.id.0);
                std::thread::sleep(Duration::from_millis(10));
            }
            let now = Instant::now();

            // Input: forwarded packets, then our socket.
            for f in self.forwarded.try_iter().take(FORWARDED_PER_LOOP) {
                WorkerCounters::add(&self.state.counters.forwarded_in, 1);
                self.state
                    .handle_datagram(now, f.peer, f.dst_ip, f.ecn, f.data);
            }
            let state = &mut self.state;
            let more_rx = self.driver.reap(RX_BATCHES_PER_LOOP, &mut |ev| match ev {
                Event::Udp { meta, mut rx } => {
                    if rx.data.is_empty() {
                        WorkerCounters::add(&state.counters.rx_malformed, 1);
                    }
                    let stride = meta.stride.max(1);
                    while !rx.data.is_empty() {
                        let seg = rx.data.split_to(stride.min(rx.data.len()));
                        let seg = if rx.copy {
                            BytesMut::from(&seg[..])
                        } else {
                            seg
                        };
                        state.receive(now, meta.peer, meta.dst_ip, meta.ecn, seg);
                    }
                }
                Event::Sock(c) => state.sock_done.push(c),
            }) == RX_BATCHES_PER_LOOP;

            // Timers.
            expired.clear();
            self.state.conns.expired(now, &mut expired);
            for &ch in &expired {
                if let Some(c) = self.state.conns.get_dirty(ch) {
                    c.handle_timeout(now);
                }
            }

            if let Some(hop) = &mut self.state.hop {
                hop.poll(now, self.driver.as_mut(), &self.state.counters);
            }

            // The app: TCP completions, then its own work.
            {
                let st = &mut self.state;
                let mut io = Io {
                    now,
                    worker: st.id,
                    driver: self.driver.as_mut(),
                    counters: &st.counters,
                    endpoint: &mut st.endpoint,
                    conns: &mut st.conns,
                    client_config: st.client_config.as_ref(),
                };
                for c in st.sock_done.drain(..) {
                    st.app.on_sock(&mut io, c);
                }
                st.app.tick(&mut io);
            }

            // Connection passes: events to the app, then transmits.
            for (t, buf) in self.state.responses.drain(..) {
                let buf = match &self.state.obfs {
                    Some(o) => {
                        let mut out = Vec::with_capacity(buf.len() + SALT_LEN);
                        obfuscate(o, &buf, buf.len().max(1), &mut out);
                        out
                    }
                    None => buf,
                };
                self.driver.send(tx_meta(&t, self.state.hop.as_ref()), buf);
            }
            let mut rounds = 0;
            while self.state.conns.has_dirty() && rounds < 4 {
                rounds += 1;
                self.state.conns.take_dirty(&mut pass);
                for &ch in &pass {
                    self.pass(now, ch);
                }
            }
            self.publish(now);

            let busy = more_rx
                || self.state.conns.has_dirty()
                || !self.forwarded.is_empty()
                || !self.state.sock_done.is_empty();
            timeout = if busy {
                Some(Duration::ZERO)
            } else {
                let quic = self.state.conns.next_deadline();
                let app = self.state.app.poll_timeout();
                let hop = self.state.hop.as_ref().map(|h| h.next);
                quic.into_iter()
                    .chain(app)
                    .chain(hop)
                    .min()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            };
        }
        // Leaving: close what is left so peers learn at once.
        let now = Instant::now();
        let handles: Vec<_> = self.state.conns.handles().collect();
        for ch in handles {
            if let Some(c) = self.state.conns.get(ch) {
                tracing::debug!(
                    "worker {}: closing {} (handshaking: {}): {:?}",
                    self.id.0,
                    c.remote_address(),
                    c.is_handshaking(),
                    c.stats()
                );
                c.close(now, 0u32.into(), bytes::Bytes::from_static(b"shutdown"));
            }
            self.pass(now, ch);
        }
        let _ = self.driver.wait(Some(Duration::ZERO));
    }

    /// One pass over a connection: endpoint bookkeeping, app events, transmits, timer.
    fn pass(&mut self, now: Instant, ch: ConnectionHandle) {
        let st = &mut self.state;
        st.conns.clean(ch);
        loop {
            let Some(conn) = st.conns.get(ch) else { return };
            let mut drained = false;
            while let Some(ev) = conn.poll_endpoint_events() {
                drained |= ev.is_drained();
                if let Some(cev) = st.endpoint.handle_event(ch, ev) {
                    conn.handle_event(cev);
                }
            }
            let Some(ev) = conn.poll() else {
                if drained {
                    if let Some(c) = st.conns.remove(ch) {
                        let stats = c.stats();
                        let f = stats.frame_tx;
                        WorkerCounters::add(
                            &st.counters.window_updates_closed,
                            f.max_data + f.max_stream_data,
                        );
                        WorkerCounters::add(
                            &st.counters.data_blocked_closed,
                            stats.frame_rx.data_blocked,
                        );
                    }
                    return;
                }
                break;
            };
            let mut io = Io {
                now,
                worker: st.id,
                driver: self.driver.as_mut(),
                counters: &st.counters,
                endpoint: &mut st.endpoint,
                conns: &mut st.conns,
                client_config: st.client_config.as_ref(),
            };
            st.app.on_event(&mut io, ch, ev);
        }
        if let Some(step) = st.conns.tune_window(ch, now) {
            WorkerCounters::add(&st.counters.recv_window_doublings, u64::from(step.doubled));
            WorkerCounters::add(&st.counters.recv_window_budget_short, u64::from(step.short));
        }
        let Some(Entry {
            conn, cc, pacer, ..
        }) = st.conns.entry(ch)
        else {
            return;
        };
        // Brutal: quinn paces from window / RTT, well above the rate (see `quic::congestion`),
        // so the rate is enforced here. 0: quinn's own pacing only.
        let rate = cc.as_ref().map_or(0, CcHandle::pacing_rate);
        let mut paced_until = None;
        let mut batches = 0;
        // A GSO send is one UDP datagram to the kernel: its total must fit 64 KiB less the
        // IP and UDP headers, or it fails with EMSGSIZE once MTU discovery grows segments.
        let overhead = if st.obfs.is_some() { SALT_LEN } else { 0 };
        let max_segments = if self.driver.gso_enabled() {
            (MAX_GSO_PAYLOAD / (usize::from(conn.current_mtu()) + overhead).max(1))
                .clamp(1, MAX_GSO_SEGMENTS)
        } else {
            1
        };
        let mut blocked = false;
        while batches < TX_BATCHES_PER_CONN {
            if !self.driver.can_send() {
                blocked = true;
                break;
            }
            let segments = if rate == 0 {
                max_segments
            } else {
                let mtu = conn.current_mtu();
                match pacer.allowance(now, rate, mtu, max_segments) {
                    0 => {
                        paced_until = Some(pacer.next_send(now, rate, mtu));
                        break;
                    }
                    n => n,
                }
            };
            let mut buf = self.driver.tx_buf();
            match conn.poll_transmit(now, segments, &mut buf) {
                Some(t) => {
                    if rate != 0 {
                        pacer.on_sent(t.size);
                    }
                    buf.truncate(t.size);
                    let mut meta = tx_meta(&t, st.hop.as_ref());
                    if let Some(o) = &st.obfs {
                        // Each segment gets its own salt: the batch's segments grow by 8.
                        let seg = t.segment_size.unwrap_or(t.size).max(1);
                        let mut out = std::mem::take(&mut st.obfs_buf);
                        obfuscate(o, &buf, seg, &mut out);
                        meta.segment_size = t.segment_size.map(|s| s + SALT_LEN);
                        st.obfs_buf = std::mem::replace(&mut buf, out);
                    }
                    self.driver.send(meta, buf);
                    batches += 1;
                }
                None => break,
            }
        }
        // An early wake-up for pacing is harmless: quinn's `handle_timeout` fires only the
        // timers that are due.
        let deadline = match (conn.poll_timeout(), paced_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        st.conns.set_timer(ch, deadline);
        if blocked || batches == TX_BATCHES_PER_CONN {
            // More to send: come back next iteration (after the driver drained some).
            st.conns.mark(ch);
        }
    }

    fn publish(&mut self, now: Instant) {
        if now >= self.state.window_scan {
            // Once a second: the window updates live connections have sent so far, and the
            // DATA_BLOCKED frames they received.
            self.state.window_scan = now + Duration::from_secs(1);
            let handles: Vec<_> = self.state.conns.handles().collect();
            let (mut updates, mut blocked) = (0, 0);
            for ch in handles {
                if let Some(c) = self.state.conns.get(ch) {
                    let stats = c.stats();
                    updates += stats.frame_tx.max_data + stats.frame_tx.max_stream_data;
                    blocked += stats.frame_rx.data_blocked;
                }
            }
            let c = &self.state.counters;
            WorkerCounters::set(&c.window_updates_live, updates);
            WorkerCounters::set(&c.data_blocked_live, blocked);
        }
        let s = self.driver.stats();
        let c = &self.state.counters;
        WorkerCounters::set(&c.rx_datagrams, s.rx_datagrams);
        WorkerCounters::set(&c.rx_bytes, s.rx_bytes);
        WorkerCounters::set(&c.rx_gro_batches, s.rx_gro_batches);
        WorkerCounters::set(&c.tx_datagrams, s.tx_datagrams);
        WorkerCounters::set(&c.tx_bytes, s.tx_bytes);
        WorkerCounters::set(&c.tx_gso_batches, s.tx_gso_batches);
        WorkerCounters::set(&c.tx_errors, s.tx_errors);
        WorkerCounters::set(&c.gso_disabled, s.gso_disabled);
        WorkerCounters::set(&c.connections, self.state.conns.len() as u64);
        let (window, stalled) = self.state.conns.window_totals();
        WorkerCounters::set(&c.recv_window_bytes, window);
        WorkerCounters::set(&c.streams_stalled, stalled);
    }
}

/// Salamander-wraps each `seg`-byte datagram of `buf` into `out` with its own salt.
fn obfuscate(o: &Salamander, buf: &[u8], seg: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut rng = rand::thread_rng();
    for chunk in buf.chunks(seg) {
        let mut salt = [0u8; SALT_LEN];
        rand::RngCore::fill_bytes(&mut rng, &mut salt);
        o.encode(salt, chunk, out);
    }
}

/// How to send `t`; with port hopping, to the server's current port.
fn tx_meta(t: &Transmit, hop: Option<&Hop>) -> TxMeta {
    let mut dest = t.destination;
    if let Some(hop) = hop {
        hop.outgoing(&mut dest);
    }
    TxMeta {
        dest,
        src_ip: t.src_ip,
        ecn: t.ecn.map_or(0, |e| e as u8),
        segment_size: t.segment_size,
    }
}

impl<A: App> State<A> {
    /// A datagram from our socket: route it to its worker, or handle it here.
    fn receive(
        &mut self,
        now: Instant,
        mut peer: std::net::SocketAddr,
        dst_ip: Option<std::net::IpAddr>,
        ecn: u8,
        mut seg: BytesMut,
    ) {
        if let Some(o) = &self.obfs {
            if o.decode_in_place(&mut seg).is_err() {
                WorkerCounters::add(&self.counters.rx_malformed, 1);
                return;
            }
            seg.advance(SALT_LEN);
        }
        if let Some(hop) = &self.hop {
            hop.incoming(&mut peer);
        }
        // Only a server group shares one port; each client worker owns its own socket and
        // its CIDs say nothing about workers.
        let to = if self.server_config.is_some() {
            route(&seg, self.workers, &self.layout)
        } else {
            Route::Local
        };
        match to {
            Route::Malformed => WorkerCounters::add(&self.counters.rx_malformed, 1),
            Route::OtherNode => WorkerCounters::add(&self.counters.other_node, 1),
            Route::Worker(w) if w != self.id.0 as usize => {
                let f = Forwarded {
                    peer,
                    dst_ip,
                    ecn,
                    data: seg,
                };
                match self.shared.forward[w].try_send(f) {
                    Ok(()) => {
                        WorkerCounters::add(&self.counters.forwarded_out, 1);
                        self.shared.wakers[w].wake();
                    }
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                        WorkerCounters::add(&self.counters.forward_dropped, 1);
                    }
                }
            }
            _ => self.handle_datagram(now, peer, dst_ip, ecn, seg),
        }
    }

    /// The gate's decision for a new connection attempt (`Accept` without a gate).
    fn admit(&mut self, now: Instant, incoming: &quinn_proto::Incoming) -> Admit {
        let Some(gate) = self.gate.as_mut() else {
            return Admit::Accept;
        };
        // Count only what is still handshaking; the list stays as short as the handshakes
        // in progress plus those completed since the last attempt.
        let conns = &mut self.conns;
        self.handshaking
            .retain(|&ch| conns.get(ch).is_some_and(|c| c.is_handshaking()));
        gate.admit(
            now,
            self.handshaking.len(),
            incoming.remote_address_validated(),
            incoming.may_retry(),
        )
    }

    fn handle_datagram(
        &mut self,
        now: Instant,
        peer: std::net::SocketAddr,
        dst_ip: Option<std::net::IpAddr>,
        ecn: u8,
        data: BytesMut,
    ) {
        self.response_buf.clear();
        let ecn = EcnCodepoint::from_bits(ecn);
        let short_header = data.first().is_some_and(|b| b & 0x80 == 0);
        match self
            .endpoint
            .handle(now, peer, dst_ip, ecn, data, &mut self.response_buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_dirty(ch) {
                    let was = c.remote_address();
                    c.handle_event(ev);
                    if c.remote_address() != was {
                        WorkerCounters::add(&self.counters.migrations, 1);
                    }
                    // A migration to another IP builds a new controller.
                    if let Some(cc) = quic::take_last_built() {
                        self.conns.replace_cc(ch, cc);
                    }
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.server_config.is_none() {
                    self.endpoint.ignore(incoming);
                    return;
                }
                if self.shared.refuse_new.load(Ordering::Relaxed) {
                    // Draining: tell the client at once (CONNECTION_REFUSED).
                    WorkerCounters::add(&self.counters.accept_errors, 1);
                    self.response_buf.clear();
                    let t = self.endpoint.refuse(incoming, &mut self.response_buf);
                    let buf = self.response_buf[..t.size].to_vec();
                    self.responses.push((t, buf));
                    return;
                }
                self.response_buf.clear();
                match self.admit(now, &incoming) {
                    Admit::Accept => {}
                    Admit::Retry => {
                        // `admit` answers Retry only when the Initial may be retried.
                        if let Ok(t) = self.endpoint.retry(incoming, &mut self.response_buf) {
                            WorkerCounters::add(&self.counters.handshakes_retried, 1);
                            let buf = self.response_buf[..t.size].to_vec();
                            self.responses.push((t, buf));
                        }
                        return;
                    }
                    Admit::Drop => {
                        WorkerCounters::add(&self.counters.handshakes_dropped, 1);
                        self.endpoint.ignore(incoming);
                        return;
                    }
                }
                match self
                    .endpoint
                    .accept(incoming, now, &mut self.response_buf, None)
                {
                    Ok((ch, conn)) => {
                        self.conns.insert(ch, conn, quic::take_last_built(), now);
                        WorkerCounters::add(&self.counters.connections_total, 1);
                        if self.gate.is_some() {
                            self.handshaking.push(ch);
                        }
                    }
                    Err(e) => {
                        // The handshake may have failed after quinn built a controller.
                        let _ = quic::take_last_built();
                        WorkerCounters::add(&self.counters.accept_errors, 1);
                        tracing::debug!("refused a connection from {peer}: {}", e.cause);
                        if let Some(t) = e.response {
                            let buf = self.response_buf[..t.size].to_vec();
                            self.responses.push((t, buf));
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => {
                WorkerCounters::add(&self.counters.rx_responses, 1);
                if short_header {
                    WorkerCounters::add(&self.counters.stateless_resets, 1);
                }
                let buf = self.response_buf[..t.size].to_vec();
                self.responses.push((t, buf));
            }
            None => WorkerCounters::add(&self.counters.rx_dropped, 1),
        }
    }
}
