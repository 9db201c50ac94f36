//! One worker of `quelay-bench hy2`: its connections (QUIC handshake, HTTP/3 authentication as
//! the reference client does it), the proxy streams of the TCP scenarios, the UDP sessions.
//!
//! Streams wait for credit: `open(Dir::Bi)` without MAX_STREAMS credit returns `None`, and
//! the connection tries again on `StreamEvent::Available`. Any connection lost, or
//! authentication refused, is fatal for the run (the reporter stops every worker); a
//! failed stream is an error and the run goes on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{ConnectionHandle, Dir, Event, StreamEvent, StreamId, VarInt};

use super::flow::{Flow, Kind, Progress};
use super::stats::Stats;
use super::udp::Session;
use super::Scenario;
use quelay::client::{AuthError, AuthExchange};
use quelay::proto::h3::CcRx;
use quelay::quic::stream;
use quelay::worker::{App, Io};

/// H3_REQUEST_CANCELLED: how we reset a stream we give up on.
const CANCELLED: u32 = 0x10c;
/// Echoes still awaited this long after the last UDP packet went out.
const UDP_GRACE: Duration = Duration::from_secs(1);
/// How often connection setups are checked against the setup timeout.
const SETUP_CHECK: Duration = Duration::from_millis(100);

/// What every worker of a run does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub server: SocketAddr,
    pub server_name: String,
    pub auth: String,
    /// `host:port` the server connects to.
    pub target: String,
    pub scenario: Scenario,
    /// Bytes per stream (bulk) or each way (rr), or the UDP packet size.
    pub bytes: u64,
    /// The run's clock origin (UDP send stamps) and, for the rate scenarios, its end.
    pub epoch: Instant,
    pub deadline: Instant,
    /// A connection not authenticated by then is a failure.
    pub setup_timeout: Duration,
}

/// This worker's share of the run.
#[derive(Clone, Debug, Default)]
pub struct Share {
    /// One entry per connection to open: its streams (bulk) or streams in flight (rr).
    pub conns: Vec<usize>,
    /// Connect scenario: handshakes kept in flight.
    pub handshakes: usize,
    /// UDP scenario: packets per second on each connection.
    pub udp_rate: f64,
}

enum Setup {
    Handshake,
    /// The auth request went out; its response is being read.
    Auth(AuthExchange),
    Ready,
}

struct Conn {
    setup: Setup,
    /// When we asked for the connection: setup latency counts from here.
    started: Instant,
    /// Streams to open in all (bulk) or to keep in flight (rr).
    want: usize,
    /// Streams opened, and those that ended.
    opened: usize,
    done: usize,
    /// The last open found no stream credit; cleared by `StreamEvent::Available`.
    no_credit: bool,
    udp: Option<Session>,
}

impl Conn {
    fn in_flight(&self) -> usize {
        self.opened - self.done
    }
}

pub struct Hy2App {
    plan: Arc<Plan>,
    share: Share,
    stats: Arc<Stats>,
    worker: usize,
    started: bool,
    finished: bool,
    /// Connections we have not closed ourselves; a loss of one of them is fatal.
    conns: HashMap<ConnectionHandle, Conn>,
    flows: HashMap<(ConnectionHandle, StreamId), Flow>,
    next_setup_check: Option<Instant>,
    next_udp_session: u32,
    /// Connections this worker saw authenticated.
    ready: u64,
}

impl Hy2App {
    pub fn new(plan: Arc<Plan>, share: Share, stats: Arc<Stats>, worker: usize) -> Self {
        Hy2App {
            plan,
            share,
            stats,
            worker,
            started: false,
            finished: false,
            conns: HashMap::new(),
            flows: HashMap::new(),
            next_setup_check: None,
            next_udp_session: (worker as u32) << 24,
            ready: 0,
        }
    }

    fn connect(&mut self, io: &mut Io<'_>, want: usize) {
        match io.connect(self.plan.server, &self.plan.server_name) {
            Ok(ch) => {
                self.conns.insert(
                    ch,
                    Conn {
                        setup: Setup::Handshake,
                        started: io.now,
                        want,
                        opened: 0,
                        done: 0,
                        no_credit: false,
                        udp: None,
                    },
                );
            }
            Err(e) => self.fail(format!("cannot connect to {}: {e}", self.plan.server)),
        }
    }

    /// A fatal error: the run ends.
    fn fail(&mut self, msg: String) {
        self.stats.fatal(msg);
        self.finished = true;
    }

    /// Closes a connection of ours (it is no longer watched for losses).
    fn close(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        self.conns.remove(&ch);
        self.flows.retain(|(c, _), _| *c != ch);
        let now = io.now;
        if let Some(qc) = io.conn(ch) {
            qc.close(now, VarInt::from_u32(0), bytes::Bytes::from_static(b"done"));
        }
    }

    /// Ends this worker's part: closes everything (in-flight requests are abandoned). A
    /// connection of rr or udp still being set up, or a connect run without a single
    /// handshake, means the server never answered: that is a failure, not a quiet zero.
    fn finish(&mut self, io: &mut Io<'_>) {
        let pending = self
            .conns
            .values()
            .any(|c| !matches!(c.setup, Setup::Ready));
        let never = match self.plan.scenario {
            Scenario::Connect => self.ready == 0,
            _ => pending,
        };
        if never {
            self.stats.fatal(format!(
                "no Hysteria2 connection to {} was set up before the run's end (is a \
                 Hysteria2 server listening there, with these --obfs and --auth?)",
                self.plan.server
            ));
        }
        let all: Vec<_> = self.conns.keys().copied().collect();
        for ch in all {
            self.close(io, ch);
        }
        self.finished = true;
    }

    /// The handshake finished: HTTP/3 SETTINGS on a control stream, then the auth request.
    fn on_connected(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        let Some(qc) = io.conn(ch) else { return };
        match AuthExchange::start(qc, &self.plan.auth, 0) {
            Some(auth) => c.setup = Setup::Auth(auth),
            None => self.fail("the server grants no stream for the auth request".to_string()),
        }
    }

    /// Reads the auth response if `id` is the auth stream of `ch`; true if it was.
    fn on_auth_readable(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) -> bool {
        let Some(c) = self.conns.get_mut(&ch) else {
            return false;
        };
        let Setup::Auth(auth) = &mut c.setup else {
            return false;
        };
        if auth.id() != id {
            return false;
        }
        let Some(qc) = io.conn(ch) else { return true };
        let outcome = auth.read(qc).map(|r| {
            r.map_err(|e| match e {
                AuthError::Refused(status) => format!(
                    "authentication refused by {} (HTTP status {status}): check --auth",
                    self.plan.server
                ),
                AuthError::Failed(why) => why,
            })
        });
        match outcome {
            None => {}
            Some(Err(msg)) => self.fail(msg),
            Some(Ok(ok)) => {
                c.setup = Setup::Ready;
                let setup_us = io.now.saturating_duration_since(c.started).as_micros() as u64;
                Stats::add(&self.stats.handshakes, 1);
                self.ready += 1;
                // As the reference client: Brutal at the server's receive rate if it names one.
                if let CcRx::Bps(rate) = ok.cc_rx {
                    if rate > 0 {
                        io.set_send_rate(ch, rate);
                    }
                }
                match self.plan.scenario {
                    Scenario::Connect => {
                        self.stats.record(self.worker, setup_us);
                        self.close(io, ch);
                    }
                    Scenario::Udp => {
                        self.next_udp_session = self.next_udp_session.wrapping_add(1);
                        let (id, rate, now) = (self.next_udp_session, self.share.udp_rate, io.now);
                        let Some(qc) = io.conn(ch) else { return true };
                        match Session::new(qc, id, rate, ok.udp, now) {
                            Ok(s) => c.udp = Some(s),
                            Err(e) => self.fail(e),
                        }
                    }
                    Scenario::BulkUp | Scenario::BulkDown | Scenario::Rr => {
                        self.open_streams(io, ch)
                    }
                }
            }
        }
        true
    }

    fn flow_kind(&self) -> Kind {
        match self.plan.scenario {
            Scenario::BulkUp => Kind::Upload,
            Scenario::BulkDown => Kind::Download,
            _ => Kind::Request,
        }
    }

    /// Opens streams up to the connection's share, as far as stream credit allows.
    fn open_streams(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        let bulk = self.plan.scenario != Scenario::Rr;
        if !bulk && io.now >= self.plan.deadline {
            return;
        }
        let kind = self.flow_kind();
        let mut opened = Vec::new();
        {
            let Some(c) = self.conns.get_mut(&ch) else {
                return;
            };
            if !matches!(c.setup, Setup::Ready) {
                return;
            }
            let Some(qc) = io.conn(ch) else { return };
            while c.in_flight() < c.want && (!bulk || c.opened < c.want) {
                let Some(id) = qc.streams().open(Dir::Bi) else {
                    c.no_credit = true;
                    break;
                };
                c.opened += 1;
                opened.push(id);
            }
        }
        for id in opened {
            Stats::add(&self.stats.streams_opened, 1);
            match Flow::new(kind, self.plan.bytes, &self.plan.target, io.now) {
                Ok(f) => {
                    self.flows.insert((ch, id), f);
                    self.drive(io, ch, id);
                }
                Err(e) => return self.fail(e),
            }
        }
    }

    fn drive(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
        let Some(flow) = self.flows.get_mut(&(ch, id)) else {
            return;
        };
        let Some(qc) = io.conn(ch) else { return };
        let failed = match flow.drive(qc, id, &self.stats) {
            Progress::Pending => return,
            Progress::Done => None,
            Progress::Failed(msg) => {
                let _ = qc.send_stream(id).reset(VarInt::from_u32(CANCELLED));
                let _ = qc.recv_stream(id).stop(VarInt::from_u32(CANCELLED));
                Some(msg)
            }
        };
        let Some(flow) = self.flows.remove(&(ch, id)) else {
            return;
        };
        Stats::add(&self.stats.streams_closed, 1);
        match failed {
            Some(msg) => self
                .stats
                .error(format!("stream to {}: {msg}", self.plan.target)),
            None => {
                Stats::add(&self.stats.completed, 1);
                if self.plan.scenario == Scenario::Rr {
                    let us = io.now.saturating_duration_since(flow.started).as_micros();
                    self.stats.record(self.worker, us as u64);
                }
            }
        }
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        c.done += 1;
        if self.plan.scenario == Scenario::Rr {
            return self.open_streams(io, ch);
        }
        if c.done >= c.want {
            self.close(io, ch);
            if self.conns.is_empty() {
                self.finished = true;
            }
        }
    }

    fn on_lost(&mut self, ch: ConnectionHandle, reason: String) {
        let Some(c) = self.conns.remove(&ch) else {
            return;
        };
        self.flows.retain(|(c, _), _| *c != ch);
        let server = self.plan.server;
        let msg = match c.setup {
            Setup::Handshake => format!(
                "cannot connect to {server}: {reason} (is a Hysteria2 server listening there?)"
            ),
            Setup::Auth { .. } => format!("connection to {server} lost during auth: {reason}"),
            Setup::Ready => format!(
                "connection to {server} lost after {} of its streams ended: {reason}",
                c.done
            ),
        };
        self.fail(msg);
    }

    fn check_setups(&mut self, io: &mut Io<'_>) {
        if self.next_setup_check.is_some_and(|t| io.now < t) {
            return;
        }
        self.next_setup_check = Some(io.now + SETUP_CHECK);
        let timeout = self.plan.setup_timeout;
        let late = self
            .conns
            .values()
            .any(|c| !matches!(c.setup, Setup::Ready) && io.now >= c.started + timeout);
        if late {
            self.fail(format!(
                "no Hysteria2 connection to {} within {} s",
                self.plan.server,
                timeout.as_secs()
            ));
        }
    }

    fn udp_tick(&mut self, io: &mut Io<'_>) {
        let now = io.now;
        let sending = now < self.plan.deadline;
        let mut all_echoed = true;
        let mut failure = None;
        for (&ch, c) in self.conns.iter_mut() {
            let Some(s) = &mut c.udp else {
                all_echoed = false;
                continue;
            };
            if sending {
                let Some(qc) = io.conn(ch) else { continue };
                let (target, size, epoch) = (&self.plan.target, self.plan.bytes, self.plan.epoch);
                if let Err(e) = s.send_due(qc, target, size as usize, epoch, now, &self.stats) {
                    failure = Some(e);
                }
            }
            all_echoed &= s.received >= s.sent;
        }
        if let Some(e) = failure {
            return self.fail(e);
        }
        if !sending && (all_echoed || now >= self.plan.deadline + UDP_GRACE) {
            self.finish(io);
        }
    }
}

impl App for Hy2App {
    fn tick(&mut self, io: &mut Io<'_>) {
        if self.finished {
            return;
        }
        if !self.started {
            self.started = true;
            for want in self.share.conns.clone() {
                self.connect(io, want);
            }
            let idle = match self.plan.scenario {
                Scenario::Connect => self.share.handshakes == 0,
                _ => self.share.conns.is_empty(),
            };
            if idle {
                self.finished = true;
                return;
            }
        }
        self.check_setups(io);
        match self.plan.scenario {
            Scenario::BulkUp | Scenario::BulkDown => {}
            Scenario::Rr if io.now >= self.plan.deadline => self.finish(io),
            Scenario::Rr => {}
            Scenario::Connect if io.now >= self.plan.deadline => self.finish(io),
            Scenario::Connect => {
                while !self.finished && self.conns.len() < self.share.handshakes {
                    self.connect(io, 0);
                }
            }
            Scenario::Udp => self.udp_tick(io),
        }
    }

    fn on_event(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, event: Event) {
        if self.finished {
            return;
        }
        match event {
            Event::Connected => self.on_connected(io, ch),
            Event::ConnectionLost { reason } => self.on_lost(ch, reason.to_string()),
            Event::Stream(StreamEvent::Available { dir: Dir::Bi }) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.no_credit = false;
                }
                self.open_streams(io, ch);
            }
            Event::Stream(StreamEvent::Opened { dir }) => {
                // The server's HTTP/3 control and QPACK streams are read and ignored; it
                // opens no bidirectional streams in Hysteria2, so any is refused.
                if let Some(qc) = io.conn(ch) {
                    while let Some(id) = qc.streams().accept(dir) {
                        if dir == Dir::Bi {
                            let _ = qc.send_stream(id).reset(VarInt::from_u32(CANCELLED));
                            let _ = qc.recv_stream(id).stop(VarInt::from_u32(CANCELLED));
                        }
                    }
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                if id.dir() == Dir::Uni {
                    drain(io, ch, id);
                } else if !self.on_auth_readable(io, ch, id) {
                    self.drive(io, ch, id);
                }
            }
            Event::Stream(StreamEvent::Writable { id })
            | Event::Stream(StreamEvent::Stopped { id, .. }) => self.drive(io, ch, id),
            Event::DatagramReceived => {
                let (epoch, now, worker) = (self.plan.epoch, io.now, self.worker);
                let Some(s) = self.conns.get_mut(&ch).and_then(|c| c.udp.as_mut()) else {
                    return;
                };
                if let Some(qc) = io.conn(ch) {
                    let bad = s.receive(qc, epoch, now, &self.stats, worker);
                    if bad > 0 {
                        self.stats
                            .error(format!("{bad} malformed or foreign UDP message(s)"));
                    }
                }
            }
            _ => {}
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let setup = self.next_setup_check;
        let end = match self.plan.scenario {
            Scenario::Rr | Scenario::Connect => Some(self.plan.deadline),
            Scenario::Udp => Some(self.plan.deadline + UDP_GRACE),
            _ => None,
        };
        let udp = self
            .conns
            .values()
            .filter_map(|c| c.udp.as_ref())
            .map(|s| s.next_due().min(self.plan.deadline))
            .min();
        [setup, end, udp].into_iter().flatten().min()
    }

    fn done(&self) -> bool {
        self.finished
    }
}

/// Reads and discards a unidirectional stream of the server's (HTTP/3 control, QPACK).
fn drain(io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
    if let Some(qc) = io.conn(ch) {
        stream::discard(qc, id);
    }
}
