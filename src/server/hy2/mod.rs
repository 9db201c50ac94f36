//! The Hysteria2 server application, run by every worker: the adapter between the worker
//! (quinn-proto connections, the driver's sockets, the rooms off the data path) and the
//! sans-IO [`session::Session`] that decides what happens.
//!
//! Per connection: an HTTP/3 control stream; request streams answered by the
//! authenticator (233) or the masquerade (an ordinary web server's answer); after
//! authentication, proxy streams (first varint 0x401) relayed to TCP and DATAGRAMs relayed
//! to UDP sessions.
//!
//! The adapter holds what the session must not: quinn handles, the relays' pipes and
//! sockets, responses waiting for stream credit, the speed test's streams, UDP sessions.
//! A streamed masquerade body is read a chunk at a time off the data path, the next chunk
//! only once stream credit took the last; at most [`MAX_STREAMED_BODIES`] are under way
//! per worker, so they cost at most that many chunks of memory.
//! It reads a stream for the session only while the session asks for its bytes, and it
//! performs the session's actions in the order they were queued.

pub mod config;
pub mod relay;
pub mod session;
pub mod speedtest;
pub mod udp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{ConnectionHandle, Dir, Event, StreamEvent, StreamId, VarInt};

use self::relay::{After, Proxying, Relay};
use self::session::{
    Action, ConnId, JobId, LookupId, RelayId, Session, UdpId, Work, MAX_REQUEST_BYTES,
};
use self::speedtest::SpeedTest;
use self::udp::{Done, UdpSockets};
use super::auth::{command_auth, http_auth};
use super::masquerade::Tail;
use super::offload::{Class, Offload, OffloadClient, Outcome};
use super::ops::{Command, Link};
use crate::engine::{self, Completion, SockOp};
use crate::metrics::traffic::StreamInfo;
use crate::metrics::WorkerCounters;
use crate::proto::h3;
use crate::quic::stream::{self, ReadEnd};
use crate::worker::{App, Io};

pub use self::config::{Authenticator, Hy2Config, Masquerade};
pub use self::session::{error_response, CONNECT_TIMEOUT};

/// How long a login may wait for its HTTP backend (the reference server's timeout) or its
/// command (the reference has none; a command still running then is killed).
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Streamed masquerade responses under way on one worker; past it a new one is answered
/// 503. Each holds at most one chunk ([`super::masquerade::CHUNK`]) here.
pub const MAX_STREAMED_BODIES: usize = 256;

/// A stream the adapter holds for good or until it is done.
enum Held {
    /// Joined to a relay's pipe.
    Relay(RelayId),
    /// A response waiting for stream credit.
    Writing(Outgoing),
    /// A streamed response whose next chunk is being read off the data path.
    Fetching(BodyId),
    /// The built-in speed test (`speedTest: true`).
    SpeedTest(Box<SpeedTest>),
}

/// A response on its way out: `buf` sent up to `off`, then, for a streamed one, its tail.
struct Outgoing {
    buf: Vec<u8>,
    off: usize,
    tail: Option<(BodyId, Tail)>,
}

/// A streamed response, never reused: a chunk read for one that is gone is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BodyId(u64);

/// Where a streamed response goes.
#[derive(Clone, Copy)]
struct BodyDest {
    ch: ConnectionHandle,
    conn: ConnId,
    stream: StreamId,
}

/// A connection as the adapter knows it.
struct Conn {
    id: ConnId,
    held: HashMap<StreamId, Held>,
    /// The part of an early reply (sniffing) that stream credit did not take yet: its
    /// relay's pipe sends it first.
    early: HashMap<StreamId, Vec<u8>>,
}

/// The engine tokens of this role: each maps to an [`engine::Token`] of its own kind, with
/// the session's id (a serial number) as the token's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// A close nobody waits for.
    Orphan,
    Relay(RelayId),
    /// Work offloaded for a stream.
    Job(JobId),
    /// A UDP session's socket operation.
    Udp(UdpId),
    /// A lookup for a destination of a UDP session.
    UdpLookup(LookupId),
    /// The next chunk of a streamed response.
    Body(BodyId),
}

/// Kinds of [`engine::Token`] this role uses (a relay's id is never 0: id 0 is the orphan).
const KIND_RELAY: u8 = 0;
const KIND_JOB: u8 = 1;
const KIND_UDP: u8 = 2;
const KIND_UDP_LOOKUP: u8 = 3;
const KIND_BODY: u8 = 4;

impl From<Token> for engine::Token {
    fn from(t: Token) -> engine::Token {
        let (kind, id) = match t {
            Token::Orphan => (KIND_RELAY, 0),
            Token::Relay(r) => (KIND_RELAY, r.0),
            Token::Job(j) => (KIND_JOB, j.0),
            Token::Udp(u) => (KIND_UDP, u.0),
            Token::UdpLookup(l) => (KIND_UDP_LOOKUP, l.0),
            Token::Body(b) => (KIND_BODY, b.0),
        };
        engine::Token::new(kind, id)
    }
}

impl From<engine::Token> for Token {
    /// Every token this role hands out comes back as it was; any other is an orphan.
    fn from(t: engine::Token) -> Token {
        let id = t.id();
        match t.kind() {
            KIND_RELAY if id == 0 => Token::Orphan,
            KIND_RELAY => Token::Relay(RelayId(id)),
            KIND_JOB => Token::Job(JobId(id)),
            KIND_UDP => Token::Udp(UdpId(id)),
            KIND_UDP_LOOKUP => Token::UdpLookup(LookupId(id)),
            KIND_BODY => Token::Body(BodyId(id)),
            _ => Token::Orphan,
        }
    }
}

pub struct Hy2App {
    session: Session,
    pool: Arc<Offload>,
    offload: Option<OffloadClient>,
    conns: HashMap<ConnectionHandle, Conn>,
    handles: HashMap<ConnId, ConnectionHandle>,
    relays: HashMap<RelayId, Relay>,
    udp: UdpSockets,
    /// Streamed responses under way.
    bodies: HashMap<BodyId, BodyDest>,
    next_body: u64,
    /// Commands from outside (kick, dump, reload) and the drain state; `None` when run
    /// without them (tests).
    link: Option<Link>,
}

impl Hy2App {
    pub fn new(cfg: Arc<Hy2Config>, pool: Arc<Offload>) -> Self {
        Hy2App {
            session: Session::new(cfg),
            pool,
            offload: None,
            conns: HashMap::new(),
            handles: HashMap::new(),
            relays: HashMap::new(),
            udp: UdpSockets::default(),
            bodies: HashMap::new(),
            next_body: 0,
            link: None,
        }
    }

    /// Takes commands from `link` and follows its drain state.
    pub fn with_link(mut self, link: Link) -> Self {
        self.link = Some(link);
        self
    }

    fn cfg(&self) -> &Arc<Hy2Config> {
        self.session.config()
    }

    /// The session's id for `ch`, given when the session first hears of it. A connection
    /// already closed gets none: nothing of it reaches the session again.
    fn conn_id(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) -> Option<ConnId> {
        if let Some(c) = self.conns.get(&ch) {
            return Some(c.id);
        }
        let qc = io.conn(ch)?;
        if qc.is_closed() {
            return None;
        }
        let id = self.session.connection(qc.remote_address());
        self.conns.insert(
            ch,
            Conn {
                id,
                held: HashMap::new(),
                early: HashMap::new(),
            },
        );
        self.handles.insert(id, ch);
        Some(id)
    }

    fn offload_client(&mut self, io: &Io<'_>) -> &OffloadClient {
        self.offload
            .get_or_insert_with(|| self.pool.client(io.driver.waker()))
    }

    /// Acts on what came through the command channel.
    fn commands(&mut self, io: &mut Io<'_>) {
        let cmds: Vec<Command> = match &self.link {
            Some(l) => l.commands.try_iter().collect(),
            None => return,
        };
        for cmd in cmds {
            match cmd {
                Command::Kick(users) => self.session.kick(&users),
                Command::Dump(reply) => {
                    let _ = reply.send(self.dump(io.now));
                }
                Command::Reload(cfg) => self.session.reload(cfg),
            }
        }
    }

    /// Performs what the session asked for, in order, until it asks for nothing more.
    fn perform(&mut self, io: &mut Io<'_>) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::ControlStream(conn) => {
                    if let Some(qc) = self.handle(conn).and_then(|ch| io.conn(ch)) {
                        if let Some(id) = qc.streams().open(Dir::Uni) {
                            let _ = qc.send_stream(id).write(&h3::server_control_stream());
                        }
                    }
                }
                Action::Respond {
                    conn,
                    stream,
                    bytes,
                    tail,
                } => {
                    if let Some(ch) = self.handle(conn) {
                        let (bytes, tail) = self.streamed(ch, conn, stream, bytes, tail);
                        let buf = self.after_early(ch, stream, bytes);
                        self.write_out(io, ch, stream, Outgoing { buf, off: 0, tail });
                    }
                }
                Action::Reply {
                    conn,
                    stream,
                    bytes,
                } => {
                    if let Some(ch) = self.handle(conn) {
                        self.reply_early(io, ch, stream, bytes);
                    }
                }
                Action::Reset { conn, stream, code } => {
                    if let Some(ch) = self.handle(conn) {
                        self.after_early(ch, stream, Vec::new());
                        reset_stream(io, ch, stream, code);
                    }
                }
                Action::Close { conn, code, reason } => self.close(io, conn, code, reason),
                Action::SendRate {
                    conn,
                    bytes_per_sec,
                } => {
                    if let Some(ch) = self.handle(conn) {
                        io.set_send_rate(ch, bytes_per_sec);
                    }
                }
                Action::Credit { conn, limit } => {
                    if let Some(qc) = self.handle(conn).and_then(|ch| io.conn(ch)) {
                        let open = qc.streams().remote_open_streams(Dir::Bi);
                        match limit {
                            Some(n) => qc.set_max_concurrent_streams(Dir::Bi, varint(n)),
                            None if open < qc.max_concurrent_streams(Dir::Bi) => {
                                qc.set_max_concurrent_streams(Dir::Bi, varint(open))
                            }
                            None => {}
                        }
                    }
                }
                Action::Offload { job, work } => self.offload(io, job, work),
                Action::Resolve { relay, host, port } => {
                    let token = Token::Relay(relay).into();
                    if let Err(e) = self.offload_client(io).lookup(&host, port, token) {
                        self.session.resolved(relay, Err(e));
                    }
                }
                Action::Connect {
                    relay,
                    conn,
                    stream,
                    addr,
                    egress,
                    racer,
                    fallback,
                    handshake,
                    first,
                    ok,
                    user,
                } => {
                    let Some(ch) = self.handle(conn) else {
                        self.session
                            .connect_done(relay, Err("connection gone".into()));
                        continue;
                    };
                    let ok = self.after_early(ch, stream, ok);
                    let mut r = Relay::new(ch, stream, first, ok, user, handshake, fallback);
                    let token = Token::Relay(relay).into();
                    let mut connecting = r.connect(io, addr, &egress, token);
                    if let Some((addr, egress)) = racer {
                        match connecting {
                            Ok(()) => r.race(io, addr, &egress, token),
                            // The first could not even start: the other is the only one.
                            Err(_) => connecting = r.connect(io, addr, &egress, token),
                        }
                    }
                    if connecting.is_err() {
                        // Nor that one (out of descriptors, say): the next addresses in turn.
                        if let Some(next) = r.connect_next(io, token) {
                            connecting = next;
                        }
                    }
                    self.relays.insert(relay, r);
                    if let Some(c) = self.conns.get_mut(&ch) {
                        c.held.insert(stream, Held::Relay(relay));
                    }
                    if let Err(msg) = connecting {
                        self.session.connect_done(relay, Err(msg));
                    }
                }
                Action::Start(relay) => {
                    if let Some(r) = self.relays.get_mut(&relay) {
                        r.start();
                    }
                    self.pump_relay(io, relay);
                }
                Action::Fail { relay, response } => {
                    if let Some(r) = self.relays.get_mut(&relay) {
                        // Nobody waits for this close.
                        if r.fail(io, &response, Token::Orphan.into()) == After::Remove {
                            self.relay_done(io, relay);
                        }
                    }
                }
                Action::Abort(relay) => {
                    if let Some(r) = self.relays.get_mut(&relay) {
                        if r.abort(io, Token::Relay(relay).into()) == After::Remove {
                            self.relay_done(io, relay);
                        }
                    }
                }
                Action::SpeedTest {
                    conn,
                    stream,
                    ok,
                    first,
                } => {
                    if let Some(ch) = self.handle(conn) {
                        self.drive_speedtest(io, ch, stream, Box::new(SpeedTest::new(ok, first)));
                    }
                }
                Action::UdpOpen { udp, via } => {
                    if let Err(e) = self.udp.open(io, udp, &via) {
                        tracing::debug!("{e}");
                        self.session.udp_open_failed(udp);
                    }
                }
                Action::UdpSend { udp, to, payload } => self.udp.send(io, udp, to, payload),
                Action::UdpResolve { lookup, host, port } => {
                    let token = Token::UdpLookup(lookup).into();
                    if let Err(e) = self.offload_client(io).lookup(&host, port, token) {
                        self.session.udp_resolved(lookup, Err(e));
                    }
                }
                Action::Datagram { conn, bytes } => {
                    if let Some(qc) = self.handle(conn).and_then(|ch| io.conn(ch)) {
                        let _ = qc.datagrams().send(bytes::Bytes::from(bytes), true);
                    }
                }
                Action::UdpClose(udp) => self.udp.close(io, udp, Token::Udp(udp).into()),
            }
        }
    }

    fn handle(&self, conn: ConnId) -> Option<ConnectionHandle> {
        self.handles.get(&conn).copied()
    }

    /// Runs `work` in its room off the data path; its outcome comes back in `tick`.
    fn offload(&mut self, io: &mut Io<'_>, job: JobId, work: Work) {
        let cfg = self.cfg().clone();
        let (class, run): (Class, Box<dyn FnOnce() -> Outcome + Send>) = match work {
            Work::Auth {
                auth,
                cc_rx,
                remote,
            } => {
                let run: Box<dyn FnOnce() -> Outcome + Send> = match cfg.auth.clone() {
                    Authenticator::Http { url, insecure } => Box::new(move || {
                        let verdict = http_auth(&url, insecure, remote, &auth, cc_rx, AUTH_TIMEOUT);
                        Outcome::Auth(verdict)
                    }),
                    Authenticator::Command(path) => Box::new(move || {
                        let verdict = command_auth(&path, remote, &auth, cc_rx, AUTH_TIMEOUT);
                        Outcome::Auth(verdict)
                    }),
                    // The config changed meanwhile: a login decided without asking.
                    Authenticator::Password(_) | Authenticator::UserPass(_) => {
                        return self.session.job_refused(job);
                    }
                };
                (Class::Auth, run)
            }
            Work::Masquerade { req, body, remote } => match &cfg.masquerade {
                Masquerade::File(_) | Masquerade::Proxy(_) => {
                    let m = cfg.masquerade.clone();
                    let run = move || {
                        let (bytes, tail) = m.answer(&req, &body, remote).into_h3();
                        Outcome::Response(bytes, tail)
                    };
                    (Class::Masquerade, Box::new(run))
                }
                // The config changed meanwhile: answer with what it says now.
                m => {
                    let response = m.response();
                    return self.session.answer(job, response, None);
                }
            },
        };
        let token = Token::Job(job).into();
        if self.offload_client(io).run(class, token, run).is_err() {
            self.session.job_refused(job);
        }
    }

    /// The session closed the connection: the adapter lets go of it and closes it.
    fn close(&mut self, io: &mut Io<'_>, conn: ConnId, code: u32, reason: &'static [u8]) {
        let Some(ch) = self.forget(conn) else {
            return;
        };
        let now = io.now;
        if let Some(qc) = io.conn(ch) {
            qc.close(
                now,
                VarInt::from_u32(code),
                bytes::Bytes::from_static(reason),
            );
        }
    }

    /// Drops what the adapter holds for the connection (its relays were ended by the
    /// session). Its handle may be another connection's from now on.
    fn forget(&mut self, conn: ConnId) -> Option<ConnectionHandle> {
        let ch = self.handles.remove(&conn)?;
        self.conns.remove(&ch);
        self.bodies.retain(|_, dest| dest.conn != conn);
        Some(ch)
    }

    /// This worker's relayed streams, for `/dump/streams`.
    fn dump(&self, now: Instant) -> Vec<StreamInfo> {
        let wall = std::time::SystemTime::now();
        let worker = self.link.as_ref().map_or(0, |l| l.worker as u64);
        self.session
            .relays()
            .map(|v| {
                let (tx, rx, last_active_at) = match self.relays.get(&v.id) {
                    Some(r) => {
                        let (tx, rx) = r.traffic();
                        let idle = now.saturating_duration_since(r.last_active);
                        (tx, rx, wall.checked_sub(idle).unwrap_or(v.created))
                    }
                    // Not connecting yet: nothing has moved since the request.
                    None => (0, 0, v.created),
                };
                let ch = self.handle(v.conn).map_or(0, |ch| ch.0 as u64);
                StreamInfo {
                    state: v.phase.name(),
                    auth: v.user.unwrap_or_default().to_string(),
                    connection: (worker << 32) | ch,
                    stream: VarInt::from(v.stream).into_inner(),
                    req_addr: v.target.to_string(),
                    tx,
                    rx,
                    initial_at: v.created,
                    last_active_at,
                }
            })
            .collect()
    }

    /// While draining: streams still relayed, or answered but not yet acknowledged.
    fn publish_busy(&mut self, io: &mut Io<'_>) {
        let Some(link) = &self.link else { return };
        if !link.control.draining() {
            return;
        }
        let mut busy = self.session.relay_count() as u64;
        for ch in self.conns.keys() {
            if let Some(qc) = io.conn(*ch) {
                // Our HTTP/3 control stream stays open for the connection's life.
                busy += (qc.streams().send_streams() as u64).saturating_sub(1);
            }
        }
        if let Some(b) = link.control.busy.get(link.worker) {
            b.store(busy, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A bidirectional stream has bytes or credit: whoever holds it moves them.
    fn on_bidi(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        let conn = c.id;
        match c.held.get(&id) {
            // A relay's stream (the bulk of events) stays held: a look-up, nothing more.
            Some(&Held::Relay(relay)) => self.pump_relay(io, relay),
            Some(_) => match c.held.remove(&id) {
                Some(Held::Writing(out)) => self.write_out(io, ch, id, out),
                // Credit waits until the chunk is read.
                Some(Held::Fetching(body)) => self.hold(ch, id, Held::Fetching(body)),
                Some(Held::SpeedTest(st)) => self.drive_speedtest(io, ch, id, st),
                Some(Held::Relay(_)) | None => {}
            },
            None if self.session.reading(conn, id) => match read_some(io, ch, id) {
                Some((data, fin)) => self.session.stream_data(io.now, conn, id, &data, fin),
                None => self.session.stream_reset(conn, id),
            },
            None => {}
        }
        self.perform(io);
    }

    /// Writes what stream credit takes of `bytes` now, keeping the stream open; the rest
    /// waits for the relay's pipe.
    fn reply_early(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId, bytes: Vec<u8>) {
        let Some(qc) = io.conn(ch) else { return };
        let sent = qc.send_stream(id).write(&bytes).unwrap_or(0);
        if sent < bytes.len() {
            if let Some(c) = self.conns.get_mut(&ch) {
                c.early.insert(id, bytes[sent..].to_vec());
            }
        }
    }

    /// `bytes`, behind what is left of the stream's early reply (which is then forgotten).
    fn after_early(&mut self, ch: ConnectionHandle, id: StreamId, bytes: Vec<u8>) -> Vec<u8> {
        match self.conns.get_mut(&ch).and_then(|c| c.early.remove(&id)) {
            Some(mut early) => {
                early.extend_from_slice(&bytes);
                early
            }
            None => bytes,
        }
    }

    /// A response about to be written: a streamed one gets its [`BodyId`], or a 503 in its
    /// place when [`MAX_STREAMED_BODIES`] are under way.
    fn streamed(
        &mut self,
        ch: ConnectionHandle,
        conn: ConnId,
        stream: StreamId,
        bytes: Vec<u8>,
        tail: Option<Tail>,
    ) -> (Vec<u8>, Option<(BodyId, Tail)>) {
        let Some(tail) = tail else {
            return (bytes, None);
        };
        if self.bodies.len() >= MAX_STREAMED_BODIES {
            crate::warn_limited!(
                "masquerade: {MAX_STREAMED_BODIES} streamed responses under way, answering 503"
            );
            return (h3::response(503, &[], b""), None);
        }
        self.next_body += 1;
        let body = BodyId(self.next_body);
        self.bodies.insert(body, BodyDest { ch, conn, stream });
        (bytes, Some((body, tail)))
    }

    /// Writes a response, then its tail's chunks as they are read, and closes both halves
    /// of the stream once all of it is sent; what the stream cannot take yet waits for
    /// `Writable`.
    fn write_out(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        id: StreamId,
        mut out: Outgoing,
    ) {
        let Some(qc) = io.conn(ch) else {
            return self.end_body(out.tail.map(|(body, _)| body));
        };
        while out.off < out.buf.len() {
            match qc.send_stream(id).write(&out.buf[out.off..]) {
                Ok(n) => out.off += n,
                Err(quinn_proto::WriteError::Blocked) => {
                    return self.hold(ch, id, Held::Writing(out));
                }
                // Stopped by the peer, or the stream is gone.
                Err(_) => return self.end_body(out.tail.map(|(body, _)| body)),
            }
        }
        if let Some((body, tail)) = out.tail {
            return self.fetch(io, ch, id, body, tail);
        }
        crate::worker::pipe::finish_or_reset(qc, id);
        let _ = qc.recv_stream(id).stop(VarInt::from_u32(0));
    }

    /// Reads the next chunk of a streamed response off the data path; a saturated room
    /// resets the stream.
    fn fetch(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        id: StreamId,
        body: BodyId,
        mut tail: Tail,
    ) {
        let read = move || {
            let chunk = tail.next_chunk();
            Outcome::Chunk(tail, chunk)
        };
        let token = Token::Body(body).into();
        match self
            .offload_client(io)
            .run(Class::Masquerade, token, Box::new(read))
        {
            Ok(()) => self.hold(ch, id, Held::Fetching(body)),
            Err(_) => {
                self.end_body(Some(body));
                reset_stream(io, ch, id, h3::error::H3_EXCESSIVE_LOAD);
            }
        }
    }

    /// A chunk of a streamed response was read (`None`: its end). One for a response that
    /// is gone (its connection closed, its stream stopped) is dropped, and its source with it.
    fn on_chunk(
        &mut self,
        io: &mut Io<'_>,
        body: BodyId,
        tail: Tail,
        chunk: std::io::Result<Option<Vec<u8>>>,
    ) {
        let Some(&BodyDest { ch, conn, stream }) = self.bodies.get(&body) else {
            return;
        };
        let waiting = self
            .conns
            .get_mut(&ch)
            .filter(|c| c.id == conn)
            .is_some_and(|c| {
                matches!(c.held.get(&stream), Some(Held::Fetching(b)) if *b == body)
                    && c.held.remove(&stream).is_some()
            });
        if !waiting {
            return self.end_body(Some(body));
        }
        let out = match chunk {
            Ok(Some(chunk)) => Outgoing {
                buf: h3::data_frame(&chunk),
                off: 0,
                tail: Some((body, tail)),
            },
            Ok(None) => {
                self.end_body(Some(body));
                Outgoing {
                    buf: Vec::new(),
                    off: 0,
                    tail: None,
                }
            }
            Err(e) => {
                crate::warn_limited!("masquerade: a streamed body failed: {e}");
                self.end_body(Some(body));
                return reset_stream(io, ch, stream, h3::error::H3_INTERNAL_ERROR);
            }
        };
        self.write_out(io, ch, stream, out);
    }

    /// A streamed response is over (sent, failed or abandoned): its place is free.
    fn end_body(&mut self, body: Option<BodyId>) {
        if let Some(body) = body {
            self.bodies.remove(&body);
        }
    }

    fn drive_speedtest(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        id: StreamId,
        mut st: Box<SpeedTest>,
    ) {
        let Some(qc) = io.conn(ch) else { return };
        if st.drive(qc, id) == speedtest::Progress::Continue {
            self.hold(ch, id, Held::SpeedTest(st));
        }
    }

    fn hold(&mut self, ch: ConnectionHandle, id: StreamId, held: Held) {
        if let Some(c) = self.conns.get_mut(&ch) {
            c.held.insert(id, held);
        }
    }

    fn pump_relay(&mut self, io: &mut Io<'_>, relay: RelayId) {
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        let after = r.pump(io, Token::Relay(relay).into());
        r.account(io.now);
        if after == After::Remove {
            self.relay_done(io, relay);
        }
    }

    /// The relay's pipe is closed both ways: it goes, and the session hears of it.
    fn relay_done(&mut self, io: &mut Io<'_>, relay: RelayId) {
        if let Some(mut r) = self.relays.remove(&relay) {
            r.account(io.now);
            if let Some(c) = self.conns.get_mut(&r.ch) {
                if matches!(c.held.get(&r.id), Some(Held::Relay(k)) if *k == relay) {
                    c.held.remove(&r.id);
                }
            }
        }
        self.session.relay_closed(relay);
    }

    /// The outcomes of work done off the data path: DNS answers, auth verdicts, responses.
    fn answers(&mut self, io: &mut Io<'_>) {
        let answers: Vec<_> = match &self.offload {
            Some(off) => off.answers().collect(),
            None => return,
        };
        for a in answers {
            match (Token::from(a.token), a.outcome) {
                (Token::UdpLookup(lookup), Outcome::Resolved(result)) => {
                    self.session.udp_resolved(lookup, result)
                }
                (Token::Relay(relay), Outcome::Resolved(result)) => {
                    self.session.resolved(relay, result)
                }
                (Token::Job(job), Outcome::Auth(verdict)) => self.session.verdict(job, verdict),
                (Token::Job(job), Outcome::Response(r, tail)) => self.session.answer(job, r, tail),
                (Token::Body(body), Outcome::Chunk(tail, chunk)) => {
                    self.on_chunk(io, body, tail, chunk)
                }
                _ => {}
            }
        }
    }

    fn publish(&self, io: &Io<'_>) {
        let c = io.counters;
        let s = &self.session.counters;
        WorkerCounters::set(&c.streams_open, self.session.relay_count() as u64);
        WorkerCounters::set(&c.streams_parked, self.session.parked_count() as u64);
        WorkerCounters::set(&c.credit_withheld, s.credit_withheld);
        WorkerCounters::set(&c.streams_refused, s.refused);
        WorkerCounters::set(&c.acl_rejected, s.acl_rejected);
        WorkerCounters::set(&c.sniffed, s.sniffed);
        WorkerCounters::set(&c.auth_failures, s.auth_failures);
        WorkerCounters::set(&c.streams_relayed, s.streams_relayed);
        let u = self.session.udp_counters();
        WorkerCounters::set(&c.udp_sessions, self.session.udp_count() as u64);
        WorkerCounters::set(&c.udp_sessions_opened, u.sessions_opened);
        WorkerCounters::set(&c.udp_sessions_refused, u.sessions_refused);
        WorkerCounters::set(&c.udp_datagrams_in, u.datagrams_in);
        WorkerCounters::set(&c.udp_datagrams_out, u.datagrams_out);
        WorkerCounters::set(&c.udp_dropped, u.dropped + u.refused + self.udp.dropped);
    }
}

fn varint(n: u64) -> VarInt {
    VarInt::from_u64(n).unwrap_or(VarInt::MAX)
}

fn reset_stream(io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId, code: u64) {
    if let Some(qc) = io.conn(ch) {
        let code = VarInt::from_u64(code).unwrap_or(VarInt::from_u32(0));
        let _ = qc.send_stream(id).reset(code);
        let _ = qc.recv_stream(id).stop(code);
    }
}

impl App for Hy2App {
    fn tick(&mut self, io: &mut Io<'_>) {
        self.commands(io);
        let draining = self.link.as_ref().is_some_and(|l| l.control.draining());
        self.session.set_draining(draining);
        self.answers(io);
        let now = io.now;
        self.session.handle_timeout(now);
        self.perform(io);
        self.publish(io);
        self.publish_busy(io);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout(Instant::now())
    }

    fn on_event(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, event: Event) {
        match event {
            Event::Connected => {
                if let Some(conn) = self.conn_id(io, ch) {
                    self.session.connected(io.now, conn);
                    self.perform(io);
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                // A connection closed by us (kicked, refused, past its auth deadline) gets no
                // id: its state is gone and stays gone.
                let Some(conn) = self.conn_id(io, ch) else {
                    return;
                };
                let mut opened = Vec::new();
                if let Some(qc) = io.conn(ch) {
                    while let Some(id) = qc.streams().accept(Dir::Bi) {
                        opened.push(id);
                    }
                }
                for id in opened {
                    self.session.stream_opened(conn, id);
                    self.on_bidi(io, ch, id);
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                // Control, QPACK encoder/decoder streams: read and ignore (we use no
                // dynamic table and need none of the client's settings).
                if let Some(qc) = io.conn(ch) {
                    while qc.streams().accept(Dir::Uni).is_some() {}
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                if id.dir() == Dir::Uni {
                    drain_uni(io, ch, id);
                } else {
                    self.on_bidi(io, ch, id);
                }
            }
            Event::Stream(StreamEvent::Writable { id }) => self.on_bidi(io, ch, id),
            Event::Stream(StreamEvent::Stopped { id, .. }) => {
                let Some(c) = self.conns.get(&ch) else {
                    return;
                };
                match c.held.get(&id) {
                    Some(Held::Relay(_)) => {
                        self.session.stream_stopped(c.id, id);
                        self.perform(io);
                    }
                    // The speed test notices STOP_SENDING itself (no Writable follows it).
                    Some(Held::SpeedTest(_)) => self.on_bidi(io, ch, id),
                    // A response nobody reads any more: let go of it (and its body's place).
                    Some(Held::Writing(_) | Held::Fetching(_)) => {
                        let body = match self.conns.get_mut(&ch).and_then(|c| c.held.remove(&id)) {
                            Some(Held::Writing(out)) => out.tail.map(|(body, _)| body),
                            Some(Held::Fetching(body)) => Some(body),
                            _ => None,
                        };
                        self.end_body(body);
                    }
                    _ => {}
                }
            }
            Event::DatagramReceived => {
                let Some(conn) = self.conns.get(&ch).map(|c| c.id) else {
                    return;
                };
                let now = io.now;
                let Some(qc) = io.conn(ch) else { return };
                // Read all: the session drops them unseen before auth or with UDP off.
                while let Some(d) = qc.datagrams().recv() {
                    self.session.datagram(now, conn, d);
                }
                self.perform(io);
            }
            Event::ConnectionLost { reason } => {
                tracing::debug!("{ch:?} closed: {reason}");
                if let Some(conn) = self.conns.get(&ch).map(|c| c.id) {
                    self.session.connection_lost(conn);
                    self.perform(io);
                    self.forget(conn);
                }
            }
            _ => {}
        }
    }

    fn on_sock(&mut self, io: &mut Io<'_>, c: Completion) {
        let relay = match Token::from(c.token) {
            Token::Udp(udp) => return self.on_udp(io, udp, c),
            Token::Relay(relay) => relay,
            Token::Orphan | Token::Job(_) | Token::UdpLookup(_) | Token::Body(_) => return,
        };
        // A relay closes its sockets before it goes, so what completes after it is over.
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        let token = Token::Relay(relay).into();
        let proxying = if c.op == SockOp::Connect {
            if !r.dialing(c.sock) {
                // A connect on a socket the relay has closed (aborted or failed meanwhile):
                // its close follows; nothing else is tried for a request nobody waits for.
                return;
            }
            match c.result {
                Ok(_) => {
                    r.won(io, c.sock);
                    r.connected(io, token)
                }
                Err(e) => match r.dial_failed(io, c.sock, token) {
                    Some(Ok(())) => Proxying::Pending,
                    Some(Err(why)) => Proxying::Failed(why),
                    None => Proxying::Failed(e.to_string()),
                },
            }
        } else if r.handshaking(&c) {
            r.on_handshake(io, c, token)
        } else {
            let after = r.on_completion(io, c, token);
            r.account(io.now);
            if after == After::Remove {
                self.relay_done(io, relay);
            }
            return self.perform(io);
        };
        match proxying {
            Proxying::Pending => {}
            Proxying::Ready => self.session.connect_done(relay, Ok(())),
            Proxying::Failed(why) => self.session.connect_done(relay, Err(why)),
        }
        self.perform(io);
    }
}

impl Hy2App {
    /// A UDP session's socket operation completed.
    fn on_udp(&mut self, io: &mut Io<'_>, udp: UdpId, c: Completion) {
        let done = self.udp.on_completion(io, udp, c);
        self.udp.pump(io, udp);
        match done {
            Some(Done::Sent) => self.session.udp_sent(io.now, udp),
            Some(Done::Received { from, payload }) => {
                let max = self
                    .session
                    .udp_conn(udp)
                    .and_then(|conn| self.handle(conn))
                    .and_then(|ch| io.conn(ch))
                    .and_then(|qc| qc.datagrams().max_size());
                self.session.udp_received(io.now, udp, from, &payload, max);
            }
            Some(Done::Closed) => self.session.udp_closed(udp),
            Some(Done::Ready) => self.session.udp_ready(udp),
            Some(Done::Failed(why)) => {
                crate::warn_limited!("UDP session: {why}");
                self.session.udp_failed(udp);
            }
            None => {}
        }
        self.perform(io);
    }
}

/// Reads what a stream has, up to a request's worth. `None` when the client reset it.
fn read_some(io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) -> Option<(Vec<u8>, bool)> {
    let qc = io.conn(ch)?;
    let mut data = Vec::new();
    match stream::read_into(qc, id, &mut data, MAX_REQUEST_BYTES).end {
        ReadEnd::Reset(_) | ReadEnd::Closed => None,
        ReadEnd::Fin => Some((data, true)),
        ReadEnd::Blocked | ReadEnd::Paused => Some((data, false)),
    }
}

fn drain_uni(io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
    if let Some(qc) = io.conn(ch) {
        stream::discard(qc, id);
    }
}
