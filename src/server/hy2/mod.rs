//! The Hysteria2 server application, run by every worker.
//!
//! Per connection: an HTTP/3 control stream; request streams answered by the
//! authenticator (233) or the masquerade (an ordinary web server's answer); after
//! authentication, proxy streams (first varint 0x401) relayed to TCP and DATAGRAMs relayed
//! to UDP sessions.

mod caps;
pub mod relay;
pub mod speedtest;
pub mod udp;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{ConnectionHandle, Dir, Event, ReadError, StreamEvent, StreamId, VarInt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use slab::Slab;

use self::caps::Parked;
use self::relay::{After, Relay};
use self::speedtest::{is_speedtest_addr, SpeedTest};
use self::udp::UdpTable;
use super::auth::http_auth;
use super::guard::OutboundGuard;
use super::masquerade::{FileMasquerade, ProxyMasquerade};
use super::offload::{Class, Offload, OffloadClient, Outcome};
use super::ops::{Command, Link};
use crate::engine::{Completion, SockOp};
use crate::limits::admission::UnauthPermit;
use crate::limits::{ConnPermit, Limits, Online, StreamPermit, User};
use crate::metrics::traffic::StreamInfo;
use crate::metrics::WorkerCounters;
use crate::proto::h3::{self, CcRx, RequestReader};
use crate::proto::tcp::{self, Host, StreamStart, TcpRequest};
use crate::worker::{App, Io};

/// The reference server's dial timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The reference server's timeout for its HTTP authentication backend.
const HTTP_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Token of closes nobody waits for (generation 0 is never given to a relay).
const ORPHAN_TOKEN: u64 = 0;
/// Marks tokens of work offloaded for a stream (auth verdicts, masquerade responses).
const JOB_TOKEN: u64 = 1 << 62;
/// QUIC error code of a kicked connection (H3_EXCESSIVE_LOAD, as the reference server).
const KICK_ERROR: u32 = 0x107;
/// RFC 9114 §8.1.
const H3_NO_ERROR: u32 = 0x100;
const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// Bytes a proxy stream may send before its TCPRequest is complete
/// (type + address ≤ 2048 + padding ≤ 4096 + length fields).
const MAX_REQUEST_BYTES: usize = 2 + 2048 + 4096 + 16;

/// Who may use the relay.
#[derive(Clone, Debug)]
pub enum Authenticator {
    /// One shared password; the user ID is "user".
    Password(String),
    /// user → password; user names compared case-insensitively (stored lowercased).
    UserPass(HashMap<String, String>),
    /// An HTTP backend decides (`auth.type: http`), off the data path.
    Http { url: String, insecure: bool },
}

impl Authenticator {
    /// The user ID for `auth`, or `None` when it is wrong.
    pub fn check(&self, auth: &str) -> Option<String> {
        match self {
            Authenticator::Password(p) => crate::secret::eq(auth, p).then(|| "user".to_string()),
            Authenticator::UserPass(users) => {
                let (user, pass) = auth.split_once(':')?;
                let user = user.to_lowercase();
                let expected = users.get(&user)?;
                crate::secret::eq(pass, expected).then_some(user)
            }
            Authenticator::Http { .. } => None,
        }
    }
}

/// What unauthenticated visitors see.
#[derive(Clone, Debug)]
pub enum Masquerade {
    /// Go's `http.NotFound`.
    NotFound,
    String {
        status: u16,
        headers: Vec<(String, String)>,
        content: String,
    },
    /// A static file server (`masquerade.type: file`).
    File(Arc<FileMasquerade>),
    /// A reverse proxy (`masquerade.type: proxy`).
    Proxy(Arc<ProxyMasquerade>),
}

impl Masquerade {
    /// The answer for the kinds that need no I/O.
    fn response(&self) -> Vec<u8> {
        match self {
            Masquerade::NotFound => h3::response(
                404,
                &[
                    ("content-type", "text/plain; charset=utf-8"),
                    ("x-content-type-options", "nosniff"),
                ],
                b"404 page not found\n",
            ),
            Masquerade::String {
                status,
                headers,
                content,
            } => {
                let hs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                h3::response(*status, &hs, content.as_bytes())
            }
            // Answered off the data path; never reached.
            Masquerade::File(_) | Masquerade::Proxy(_) => h3::response(500, &[], b""),
        }
    }
}

/// Server behaviour shared by all workers.
#[derive(Clone, Debug)]
pub struct Hy2Config {
    pub auth: Authenticator,
    pub masquerade: Masquerade,
    pub guard: OutboundGuard,
    pub udp: bool,
    pub udp_idle_timeout: Duration,
    /// `bandwidth.up` in bytes/s (0: unlimited): caps the Brutal rate we send at.
    pub bandwidth_up: u64,
    /// `bandwidth.down` in bytes/s (0: unlimited): what we tell clients we can receive.
    pub bandwidth_down: u64,
    pub ignore_client_bandwidth: bool,
    /// Answer the official speed test (`speedTest`).
    pub speed_test: bool,
    /// Stream and connection caps, shared by all workers.
    pub limits: Arc<Limits>,
    /// `quic.maxIncomingStreams`: the stream credit of a connection whose caps have room.
    pub max_incoming_streams: u64,
    /// Connections not authenticated this long after their handshake are closed.
    pub auth_timeout: Duration,
    /// Caps on connections waiting to authenticate: over the server, per source.
    pub max_unauthenticated: u64,
    pub max_unauthenticated_per_source: u32,
}

/// What an offloaded job answers.
enum Pending {
    /// An HTTP authentication verdict for this request.
    Auth { cc_rx: u64, req: h3::Request },
    /// A masquerade response.
    Response,
}

/// A bidirectional stream before we know what it is, or an HTTP/3 request.
enum Bidi {
    /// First bytes, until the first varint is complete.
    Start(Vec<u8>),
    /// A proxy stream whose TCPRequest is still arriving.
    Request(Vec<u8>),
    /// An HTTP/3 request.
    Http(RequestReader),
    /// Handed to a relay (slab key).
    Relay(usize),
    /// A response (and the offset sent so far) waiting for stream credit.
    Writing(Vec<u8>, usize),
    /// The built-in speed test (`speedTest: true`).
    SpeedTest(Box<SpeedTest>),
    /// A proxy request waiting for a stream permit (see `caps`).
    Parked,
}

#[derive(Default)]
struct Conn {
    /// Never given to another connection of this worker (quinn-proto reuses handles).
    serial: u64,
    /// The authenticated user ID.
    user: Option<String>,
    bidi: HashMap<StreamId, Bidi>,
    /// The user's counters, from authentication on.
    limits: Option<Arc<User>>,
    /// This connection's place under the user's connection cap; until it has one, its
    /// streams are parked.
    conn_permit: Option<ConnPermit>,
    /// New stream credit is withheld (a cap was reached).
    withheld: bool,
    /// Counts the connection in its user's `online` while it lives.
    online: Option<Online>,
    /// Its place among the connections waiting to authenticate, until they do.
    unauthenticated: Option<UnauthPermit>,
}

/// A connection as work that finishes later names it: quinn-proto's handle, which the next
/// connection gets once this one is gone, and the serial number that it never gets.
#[derive(Clone, Copy, Debug)]
struct ConnRef {
    ch: ConnectionHandle,
    serial: u64,
}

/// Relay tokens: slab key in the low 32 bits, a generation above, so a completion for a
/// removed relay is never applied to its slot's next occupant.
fn token(key: usize, gen: u32) -> u64 {
    (u64::from(gen) << 32) | key as u64
}

pub struct Hy2App {
    cfg: Arc<Hy2Config>,
    pool: Arc<Offload>,
    offload: Option<OffloadClient>,
    /// Streams waiting for an answer prepared off the data path. An entry stays until its
    /// answer comes back, even when its connection is gone, so that no other job's answer
    /// can take its slot.
    pending: Slab<(ConnRef, StreamId, Pending)>,
    conns: HashMap<ConnectionHandle, Conn>,
    /// The last `Conn::serial` given.
    conn_serial: u64,
    relays: Slab<(u32, Relay)>,
    /// Connect deadlines (deadline, key, generation), earliest first. An entry whose relay
    /// connected or went away meanwhile is skipped when it comes up.
    connect_deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Auth deadlines (deadline, connection serial, handle), earliest first; an entry whose
    /// connection authenticated or left is skipped.
    auth_deadlines: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    generation: u32,
    udp: UdpTable,
    rng: StdRng,
    /// Streams whose target refused by the outbound guard, malformed requests, etc.
    pub refused: u64,
    /// Proxy requests waiting for a stream permit, oldest first.
    parked: VecDeque<Parked>,
    /// Times a connection's stream credit was withheld.
    pub credit_withheld: u64,
    /// Connections whose credit is withheld now (kept so that no loop scans for them).
    withheld_conns: usize,
    /// Commands from outside (kick, dump, reload) and the drain state; `None` when run
    /// without them (tests).
    link: Option<Link>,
}

impl Hy2App {
    pub fn new(cfg: Arc<Hy2Config>, pool: Arc<Offload>) -> Self {
        Hy2App {
            cfg,
            pool,
            offload: None,
            pending: Slab::new(),
            conns: HashMap::new(),
            conn_serial: 0,
            relays: Slab::new(),
            connect_deadlines: BinaryHeap::new(),
            auth_deadlines: BinaryHeap::new(),
            generation: 0,
            udp: UdpTable::default(),
            rng: StdRng::from_entropy(),
            refused: 0,
            parked: VecDeque::new(),
            credit_withheld: 0,
            withheld_conns: 0,
            link: None,
        }
    }

    /// Takes commands from `link` and follows its drain state.
    pub fn with_link(mut self, link: Link) -> Self {
        self.link = Some(link);
        self
    }

    /// The connection's state, made with a new serial number when it has none.
    fn conn_entry(&mut self, ch: ConnectionHandle) -> &mut Conn {
        let serial = &mut self.conn_serial;
        self.conns.entry(ch).or_insert_with(|| {
            *serial += 1;
            Conn {
                serial: *serial,
                ..Conn::default()
            }
        })
    }

    /// `ch`'s state, if `at` still names the connection that has it.
    fn conn_at(&mut self, at: ConnRef) -> Option<&mut Conn> {
        self.conns.get_mut(&at.ch).filter(|c| c.serial == at.serial)
    }

    fn draining(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.control.draining())
    }

    /// Acts on what came through the command channel.
    fn commands(&mut self, io: &mut Io<'_>) {
        let cmds: Vec<Command> = match &self.link {
            Some(l) => l.commands.try_iter().collect(),
            None => return,
        };
        for cmd in cmds {
            match cmd {
                Command::Kick(users) => self.kick(io, &users),
                Command::Dump(reply) => {
                    let _ = reply.send(self.dump(io.now));
                }
                Command::Reload(cfg) => self.cfg = cfg,
            }
        }
    }

    /// Closes the connections of `users` (QUIC error 0x107, as the reference server).
    fn kick(&mut self, io: &mut Io<'_>, users: &std::collections::HashSet<String>) {
        let chs: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| c.user.as_ref().is_some_and(|u| users.contains(u)))
            .map(|(ch, _)| *ch)
            .collect();
        for ch in chs {
            let user = self.conns.get(&ch).and_then(|c| c.user.clone());
            tracing::info!("kicked {ch:?} of {}", user.unwrap_or_default());
            // A local close raises no ConnectionLost: let go of its streams here.
            self.forget_conn(io, ch);
            let now = io.now;
            if let Some(qc) = io.conn(ch) {
                let reason = bytes::Bytes::from_static(b"kicked");
                qc.close(now, VarInt::from_u32(KICK_ERROR), reason);
            }
        }
    }

    /// A connection finished its handshake: it may wait to authenticate if the caps on
    /// unauthenticated connections have room (else it is closed at once, H3_EXCESSIVE_LOAD)
    /// and until its auth deadline.
    fn admit_connection(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) -> bool {
        let Some(source) = io.conn(ch).map(|c| c.remote_address().ip()) else {
            return false;
        };
        let (max, per_source) = (
            self.cfg.max_unauthenticated,
            self.cfg.max_unauthenticated_per_source,
        );
        match self
            .cfg
            .limits
            .unauthenticated
            .admit(source, max, per_source)
        {
            Ok(permit) => {
                let deadline = io.now + self.cfg.auth_timeout;
                let conn = self.conn_entry(ch);
                conn.unauthenticated = Some(permit);
                let serial = conn.serial;
                self.auth_deadlines.push(Reverse((deadline, serial, ch.0)));
                true
            }
            Err(why) => {
                tracing::debug!("closing {ch:?} from {source}: too many unauthenticated ({why:?})");
                self.forget_conn(io, ch);
                let now = io.now;
                if let Some(qc) = io.conn(ch) {
                    qc.close(
                        now,
                        VarInt::from_u32(H3_EXCESSIVE_LOAD),
                        bytes::Bytes::new(),
                    );
                }
                false
            }
        }
    }

    /// Closes the connections whose auth deadline passed before they authenticated
    /// (H3_NO_ERROR, as a web server ends an idle visitor's connection).
    fn expire_unauthenticated(&mut self, io: &mut Io<'_>) {
        while let Some(&Reverse((at, serial, ch))) = self.auth_deadlines.peek() {
            if at > io.now {
                break;
            }
            self.auth_deadlines.pop();
            let ch = ConnectionHandle(ch);
            let waiting = self
                .conns
                .get(&ch)
                .is_some_and(|c| c.serial == serial && c.user.is_none());
            if !waiting {
                continue;
            }
            tracing::debug!("closing {ch:?}: not authenticated within the auth timeout");
            self.forget_conn(io, ch);
            let now = io.now;
            if let Some(qc) = io.conn(ch) {
                qc.close(now, VarInt::from_u32(H3_NO_ERROR), bytes::Bytes::new());
            }
        }
    }

    /// The connection is gone (or going): abort its relays, close its UDP sessions, and
    /// drop its permits and its place in `online`.
    fn forget_conn(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        self.udp.close_conn(io, ch);
        self.parked.retain(|p| p.ch != ch);
        if let Some(mut conn) = self.conns.remove(&ch) {
            if conn.withheld {
                self.withheld_conns -= 1;
            }
            for (_, b) in conn.bidi.drain() {
                if let Bidi::Relay(key) = b {
                    self.abort_relay(io, key);
                }
            }
        }
    }

    /// This worker's relayed streams, for `/dump/streams`.
    fn dump(&self, now: Instant) -> Vec<StreamInfo> {
        let wall = std::time::SystemTime::now();
        let worker = self.link.as_ref().map_or(0, |l| l.worker as u64);
        self.relays
            .iter()
            .map(|(_, (_, r))| {
                let (tx, rx) = r.traffic();
                StreamInfo {
                    state: r.state_name(),
                    auth: r.user.as_ref().map(|u| u.name.clone()).unwrap_or_default(),
                    connection: (worker << 32) | r.ch.0 as u64,
                    stream: VarInt::from(r.id).into_inner(),
                    req_addr: r.target.clone(),
                    tx,
                    rx,
                    initial_at: r.created,
                    last_active_at: wall
                        .checked_sub(now.saturating_duration_since(r.last_active))
                        .unwrap_or(r.created),
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
        let mut busy = self.relays.len() as u64;
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

    /// Reads what a new or unclassified bidirectional stream has and acts on it.
    fn on_bidi(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        let authed = conn.user.is_some();
        let Some(mut state) = conn.bidi.remove(&id) else {
            return;
        };
        if let Bidi::Relay(key) = state {
            conn.bidi.insert(id, state);
            self.pump_relay(io, key);
            return;
        }
        if let Bidi::Writing(buf, off) = state {
            return self.write_out(io, ch, id, buf, off);
        }
        if let Bidi::SpeedTest(st) = state {
            return self.drive_speedtest(io, ch, id, st);
        }
        if let Bidi::Parked = state {
            // Not read until it has a permit: its bytes wait in the stream's window.
            conn.bidi.insert(id, state);
            return;
        }
        let Some((mut data, fin)) = read_some(io, ch, id) else {
            return; // reset by the client: forget the stream
        };
        // Each step either hands the stream on (and returns) or moves it to the next
        // state with the bytes still to look at.
        loop {
            state = match state {
                Bidi::Start(mut buf) => {
                    buf.append(&mut data);
                    match StreamStart::classify(&buf) {
                        StreamStart::NeedMore if !fin => {
                            return self.park(ch, id, Bidi::Start(buf))
                        }
                        StreamStart::Proxy if authed => Bidi::Request(buf),
                        _ => {
                            data = buf;
                            Bidi::Http(RequestReader::new())
                        }
                    }
                }
                Bidi::Request(mut buf) => {
                    buf.append(&mut data);
                    match TcpRequest::parse(&buf) {
                        Ok(None) if !fin && buf.len() < MAX_REQUEST_BYTES => {
                            return self.park(ch, id, Bidi::Request(buf));
                        }
                        Ok(Some((req, used))) => {
                            let first = buf.split_off(used);
                            if self.cfg.speed_test && is_speedtest_addr(&req.addr) {
                                let st = Box::new(SpeedTest::new(self.ok_response(), first));
                                return self.drive_speedtest(io, ch, id, st);
                            }
                            if self.draining() {
                                self.refused += 1;
                                let msg = "server is shutting down";
                                let Some(qc) = io.conn(ch) else { return };
                                let _ = qc.send_stream(id).write(&error_response(msg));
                                crate::worker::pipe::finish_or_reset(qc, id);
                                let _ = qc.recv_stream(id).stop(VarInt::from_u32(0));
                                return;
                            }
                            let p = Parked {
                                ch,
                                id,
                                target: req.addr,
                                first,
                            };
                            return self.admit(io, p);
                        }
                        Ok(None) | Err(_) => {
                            tracing::debug!("malformed TCPRequest on {ch:?} stream {id}");
                            self.refused += 1;
                            return reset_stream(io, ch, id, h3::error::H3_MESSAGE_ERROR);
                        }
                    }
                }
                Bidi::Http(mut reader) => match reader.push(&std::mem::take(&mut data)) {
                    Ok(Some(req)) => {
                        if let Some(response) = self.answer(ch, id, &req, io) {
                            self.respond(io, ch, id, response);
                        }
                        return;
                    }
                    Ok(None) if !fin => return self.park(ch, id, Bidi::Http(reader)),
                    Ok(None) | Err(_) => {
                        return reset_stream(io, ch, id, h3::error::H3_MESSAGE_ERROR)
                    }
                },
                Bidi::Relay(_) | Bidi::Writing(..) | Bidi::SpeedTest(_) | Bidi::Parked => return,
            };
        }
    }

    /// Writes an HTTP/3 response and closes both halves of the stream once all of it is
    /// sent; what the stream cannot take yet waits for `Writable`.
    fn respond(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId, response: Vec<u8>) {
        self.write_out(io, ch, id, response, 0);
    }

    fn write_out(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        id: StreamId,
        buf: Vec<u8>,
        mut off: usize,
    ) {
        let Some(qc) = io.conn(ch) else { return };
        while off < buf.len() {
            match qc.send_stream(id).write(&buf[off..]) {
                Ok(n) => off += n,
                Err(quinn_proto::WriteError::Blocked) => {
                    return self.park(ch, id, Bidi::Writing(buf, off));
                }
                Err(_) => return,
            }
        }
        crate::worker::pipe::finish_or_reset(qc, id);
        let _ = qc.recv_stream(id).stop(VarInt::from_u32(0));
    }

    /// The TCPResponse that tells a client its target is connected.
    fn ok_response(&mut self) -> Vec<u8> {
        let mut ok = Vec::new();
        let padding = tcp::padding(
            &mut self.rng,
            tcp::RESPONSE_PADDING.0,
            tcp::RESPONSE_PADDING.1,
        );
        let _ = tcp::TcpResponse::encode(tcp::STATUS_OK, "Connected", &padding, &mut ok);
        ok
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
            self.park(ch, id, Bidi::SpeedTest(st));
        }
    }

    /// Keeps a stream's state until more bytes arrive.
    fn park(&mut self, ch: ConnectionHandle, id: StreamId, state: Bidi) {
        if let Some(conn) = self.conns.get_mut(&ch) {
            conn.bidi.insert(id, state);
        }
    }

    /// The response to an HTTP/3 request: 233 for a good auth request, the masquerade
    /// for everything else.
    /// The response to an HTTP/3 request, or `None` when it is being prepared off the data
    /// path (HTTP authentication, file or proxy masquerade) and will be sent later.
    fn answer(
        &mut self,
        ch: ConnectionHandle,
        id: StreamId,
        req: &h3::Request,
        io: &mut Io<'_>,
    ) -> Option<Vec<u8>> {
        let Some(auth) = h3::auth_request(req) else {
            return self.masquerade(io, ch, id, req);
        };
        if self.conns.get(&ch).is_some_and(|c| c.user.is_some()) {
            return Some(self.auth_ok_again());
        }
        let user = match &self.cfg.auth {
            Authenticator::Http { url, insecure } => {
                let (url, insecure) = (url.clone(), *insecure);
                let addr = io.conn(ch)?.remote_address();
                let work = Box::new(move || {
                    Outcome::Auth(http_auth(
                        &url,
                        insecure,
                        addr,
                        &auth.auth,
                        auth.cc_rx,
                        HTTP_AUTH_TIMEOUT,
                    ))
                });
                let kind = Pending::Auth {
                    cc_rx: auth.cc_rx,
                    req: req.clone(),
                };
                self.defer(io, ch, id, kind, work);
                return None;
            }
            a => a.check(&auth.auth),
        };
        let Some(user) = user else {
            tracing::debug!("authentication failed on {ch:?}");
            WorkerCounters::add(&io.counters.auth_failures, 1);
            return self.masquerade(io, ch, id, req);
        };
        Some(self.authenticated(io, ch, user, auth.cc_rx))
    }

    /// The receive rate the 233 response announces.
    fn auth_reply(&self) -> CcRx {
        if self.cfg.ignore_client_bandwidth {
            CcRx::Auto
        } else {
            CcRx::Bps(self.cfg.bandwidth_down)
        }
    }

    /// The answer to an auth request on a connection that is already authenticated: 233
    /// again, and nothing changes (its user, limits and send rate stay), as the reference
    /// answers it.
    fn auth_ok_again(&mut self) -> Vec<u8> {
        let padding = h3::auth_padding(&mut self.rng);
        h3::auth_ok_response(self.cfg.udp, self.auth_reply(), &padding)
    }

    /// Marks the connection authenticated and builds the 233 response. A connection is
    /// authenticated once: a later verdict (two requests in flight) changes nothing.
    fn authenticated(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        user: String,
        cc_rx: u64,
    ) -> Vec<u8> {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return self.auth_ok_again();
        };
        if conn.user.is_some() {
            return self.auth_ok_again();
        }
        conn.unauthenticated = None;
        let limits = self.cfg.limits.user(&user);
        conn.conn_permit = Limits::acquire_connection(&limits, true);
        conn.online = Some(Online::new(&limits));
        conn.limits = Some(limits);
        conn.user = Some(user);
        // Congestion: Brutal at the client's receive rate (capped by bandwidth.up),
        // BBR when the client does not say or the server ignores it.
        let rate = match self.cfg.ignore_client_bandwidth {
            true => 0,
            false if self.cfg.bandwidth_up > 0 => cc_rx.min(self.cfg.bandwidth_up),
            false => cc_rx,
        };
        io.set_send_rate(ch, rate);
        tracing::debug!("{ch:?} authenticated, send rate {rate} B/s");
        self.auth_ok_again()
    }

    /// The masquerade's answer to `req`: at once for 404 and string, off the data path
    /// for file and proxy.
    fn masquerade(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        id: StreamId,
        req: &h3::Request,
    ) -> Option<Vec<u8>> {
        let work: Box<dyn FnOnce() -> Outcome + Send> = match &self.cfg.masquerade {
            Masquerade::File(f) => {
                let (f, req) = (f.clone(), req.clone());
                Box::new(move || Outcome::Response(f.respond(&req)))
            }
            Masquerade::Proxy(p) => {
                let (p, req) = (p.clone(), req.clone());
                let client = io.conn(ch)?.remote_address();
                Box::new(move || Outcome::Response(p.respond(&req, &[], client)))
            }
            m => return Some(m.response()),
        };
        self.defer(io, ch, id, Pending::Response, work);
        None
    }

    /// Runs `work` off the data path; its outcome answers stream `id` later.
    fn defer(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        id: StreamId,
        kind: Pending,
        work: Box<dyn FnOnce() -> Outcome + Send>,
    ) {
        let Some(serial) = self.conns.get(&ch).map(|c| c.serial) else {
            return;
        };
        let class = match kind {
            Pending::Auth { .. } => Class::Auth,
            Pending::Response => Class::Masquerade,
        };
        let key = self.pending.insert((ConnRef { ch, serial }, id, kind));
        let off = self
            .offload
            .get_or_insert_with(|| self.pool.client(io.driver.waker()));
        if off.run(class, JOB_TOKEN | key as u64, work).is_err() {
            // Its room is saturated: answer as a busy web server would (an auth request is
            // refused so).
            self.pending.remove(key);
            self.respond(io, ch, id, h3::response(503, &[], b""));
        }
    }

    /// A deferred answer is ready.
    fn on_job(&mut self, io: &mut Io<'_>, key: usize, outcome: Outcome) {
        let Some((at, id, kind)) = self.pending.try_remove(key) else {
            return;
        };
        if self.conn_at(at).is_none() {
            // The connection that asked is gone, and its handle may be another's by now.
            tracing::debug!("answer for a closed connection ({:?}) dropped", at.ch);
            return;
        }
        let ch = at.ch;
        let response = match (kind, outcome) {
            (Pending::Response, Outcome::Response(r)) => r,
            (Pending::Auth { cc_rx, req }, Outcome::Auth(verdict)) => match verdict {
                Ok(Some(user)) => self.authenticated(io, ch, user, cc_rx),
                Ok(None) => {
                    tracing::debug!("authentication refused by the backend on {ch:?}");
                    WorkerCounters::add(&io.counters.auth_failures, 1);
                    match self.masquerade(io, ch, id, &req) {
                        Some(r) => r,
                        None => return,
                    }
                }
                Err(e) => {
                    crate::warn_limited!("authentication backend failed: {e}");
                    match self.masquerade(io, ch, id, &req) {
                        Some(r) => r,
                        None => return,
                    }
                }
            },
            _ => return,
        };
        self.respond(io, ch, id, response);
    }

    /// Starts a relay that holds `permit` until it is removed.
    fn start_relay_with(&mut self, io: &mut Io<'_>, p: Parked, permit: StreamPermit) {
        let Parked {
            ch,
            id,
            target,
            first,
        } = p;
        // 28 bits: the token's top bits mark UDP sessions and offloaded jobs.
        self.generation = self.generation % 0x0fff_ffff + 1;
        let gen = self.generation;
        let ok = self.ok_response();
        let mut relay = Relay::new(ch, id, target.clone(), first, ok);
        relay.permit = Some(permit);
        relay.user = self.conns.get(&ch).and_then(|c| c.limits.clone());
        WorkerCounters::add(&io.counters.streams_relayed, 1);
        let key = self.relays.insert((gen, relay));
        self.connect_deadlines
            .push(Reverse((io.now + CONNECT_TIMEOUT, key, gen)));
        if let Some(conn) = self.conns.get_mut(&ch) {
            conn.bidi.insert(id, Bidi::Relay(key));
        }
        let tok = token(key, gen);
        match tcp::split_host_port(&target) {
            Ok((Host::Ip(ip), port)) => self.resolved(io, key, Ok(vec![SocketAddr::new(ip, port)])),
            Ok((Host::Domain(host), port)) => {
                let off = self
                    .offload
                    .get_or_insert_with(|| self.pool.client(io.driver.waker()));
                if let Err(e) = off.lookup(&host, port, tok) {
                    self.resolved(io, key, Err(e));
                }
            }
            Err(e) => {
                let msg = format!("bad address {target:?}: {e}");
                self.fail_relay(io, key, &msg);
            }
        }
    }

    /// The target's addresses (or why there are none): connect to the first allowed.
    fn resolved(&mut self, io: &mut Io<'_>, key: usize, addrs: std::io::Result<Vec<SocketAddr>>) {
        let Some((gen, relay)) = self.relays.get_mut(key) else {
            return;
        };
        if relay.phase != relay::Phase::Resolving {
            // Aborted, failed or timed out while its name was looked up: an answer must not
            // bring it back.
            return;
        }
        let tok = token(key, *gen);
        let addrs = match addrs {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                let msg = format!("resolve {}: no addresses", relay.target);
                return self.fail_relay(io, key, &msg);
            }
            Err(e) => {
                let msg = format!("resolve {}: {e}", relay.target);
                return self.fail_relay(io, key, &msg);
            }
        };
        let mut refusal = None;
        let allowed = addrs
            .into_iter()
            .find(|a| match self.cfg.guard.check(a.ip()) {
                Ok(()) => true,
                Err(r) => {
                    refusal.get_or_insert(r);
                    false
                }
            });
        let Some(addr) = allowed else {
            let msg = format!(
                "refused {}: {}",
                relay.target,
                refusal.map_or_else(String::new, |r| r.to_string())
            );
            self.refused += 1;
            return self.fail_relay(io, key, &msg);
        };
        if let Err(msg) = relay.connect(io, addr, tok) {
            self.fail_relay(io, key, &msg);
        }
    }

    /// Aborts relay `key` (both directions of its stream, its socket closed) and removes it
    /// unless a socket operation of it is still in flight: then it goes when that completes.
    /// Every abort goes through here, so that none can leave a relay behind.
    fn abort_relay(&mut self, io: &mut Io<'_>, key: usize) {
        let Some((gen, relay)) = self.relays.get_mut(key) else {
            return;
        };
        let tok = token(key, *gen);
        if relay.abort(io, tok) == After::Remove {
            self.remove_relay(key);
        }
    }

    fn fail_relay(&mut self, io: &mut Io<'_>, key: usize, msg: &str) {
        tracing::debug!("proxy request failed: {msg}");
        let response = error_response(msg);
        if let Some((_, relay)) = self.relays.get_mut(key) {
            if relay.fail(io, &response) == After::Remove {
                self.remove_relay(key);
            }
        }
    }

    fn remove_relay(&mut self, key: usize) {
        if let Some((_, mut r)) = self.relays.try_remove(key) {
            r.account(Instant::now());
            if let Some(conn) = self.conns.get_mut(&r.ch) {
                if matches!(conn.bidi.get(&r.id), Some(Bidi::Relay(k)) if *k == key) {
                    conn.bidi.remove(&r.id);
                }
            }
        }
    }

    fn pump_relay(&mut self, io: &mut Io<'_>, key: usize) {
        let Some((gen, relay)) = self.relays.get_mut(key) else {
            return;
        };
        let after = relay.pump(io, token(key, *gen));
        relay.account(io.now);
        if after == After::Remove {
            self.remove_relay(key);
        }
    }
}

/// A TCPResponse carrying an error, with padding.
pub fn error_response(msg: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let msg: String = msg.chars().take(2000).collect();
    let _ = tcp::TcpResponse::encode(tcp::STATUS_ERROR, &msg, &[], &mut out);
    out
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
        // Work finished off the data path: DNS answers, auth verdicts, responses.
        let answers: Vec<_> = self
            .offload
            .as_ref()
            .map(|d| d.answers().collect())
            .unwrap_or_default();
        for a in answers {
            match a.outcome {
                Outcome::Resolved(result) if udp::is_udp_token(a.token) => {
                    self.udp.on_dns(io, a.token, result, &self.cfg.guard);
                }
                Outcome::Resolved(result) => {
                    let key = (a.token & 0xffff_ffff) as usize;
                    let gen = (a.token >> 32) as u32;
                    if matches!(self.relays.get(key), Some((g, _)) if *g == gen) {
                        self.resolved(io, key, result);
                    }
                }
                outcome => self.on_job(io, (a.token & !JOB_TOKEN) as usize, outcome),
            }
        }
        // Connect timeouts.
        let now = io.now;
        while let Some(&Reverse((at, key, gen))) = self.connect_deadlines.peek() {
            if at > now {
                break;
            }
            self.connect_deadlines.pop();
            let msg = match self.relays.get(key) {
                Some((g, r))
                    if *g == gen
                        && matches!(
                            r.phase,
                            relay::Phase::Resolving | relay::Phase::Connecting
                        ) =>
                {
                    format!("connect {}: timed out", r.target)
                }
                _ => continue,
            };
            // Closing the socket cancels a connect still pending, so a target that never
            // answers holds no socket past this point.
            self.fail_relay(io, key, &msg);
        }
        self.udp.expire(io, now, self.cfg.udp_idle_timeout);
        self.expire_unauthenticated(io);
        if self.caps_deadline(now).is_some() {
            self.recheck_caps(io);
        }
        let c = io.counters;
        WorkerCounters::set(&c.streams_open, self.relays.len() as u64);
        WorkerCounters::set(&c.streams_parked, self.parked.len() as u64);
        WorkerCounters::set(&c.credit_withheld, self.credit_withheld);
        WorkerCounters::set(&c.streams_refused, self.refused);
        let u = &self.udp.counters;
        WorkerCounters::set(&c.udp_sessions, self.udp.len() as u64);
        WorkerCounters::set(&c.udp_sessions_opened, u.sessions_opened);
        WorkerCounters::set(&c.udp_sessions_refused, u.sessions_refused);
        WorkerCounters::set(&c.udp_datagrams_in, u.datagrams_in);
        WorkerCounters::set(&c.udp_datagrams_out, u.datagrams_out);
        WorkerCounters::set(&c.udp_dropped, u.dropped + u.refused);
        self.publish_busy(io);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // The earliest entry may be stale (its relay connected): waking for it only pops it.
        let relays = self.connect_deadlines.peek().map(|Reverse((at, _, _))| *at);
        let auth = self.auth_deadlines.peek().map(|Reverse((at, _, _))| *at);
        let udp = self.udp.next_expiry();
        let caps = self.caps_deadline(Instant::now());
        relays.into_iter().chain(auth).chain(udp).chain(caps).min()
    }

    fn on_event(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, event: Event) {
        match event {
            Event::Connected => {
                if !self.admit_connection(io, ch) {
                    return;
                }
                // Our HTTP/3 control stream with SETTINGS, as any HTTP/3 server sends.
                if let Some(qc) = io.conn(ch) {
                    if let Some(id) = qc.streams().open(Dir::Uni) {
                        let _ = qc.send_stream(id).write(&h3::server_control_stream());
                    }
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                let mut opened = Vec::new();
                match io.conn(ch) {
                    // Closed by us (kicked, refused, past its auth deadline): its state is
                    // gone and stays gone.
                    Some(qc) if qc.is_closed() => return,
                    Some(qc) => {
                        while let Some(id) = qc.streams().accept(Dir::Bi) {
                            opened.push(id);
                        }
                    }
                    None => return,
                }
                let conn = self.conn_entry(ch);
                for id in &opened {
                    conn.bidi.insert(*id, Bidi::Start(Vec::new()));
                }
                for id in opened {
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
                let key = match self.conns.get(&ch).and_then(|c| c.bidi.get(&id)) {
                    Some(Bidi::Relay(k)) => Some(*k),
                    // The speed test notices STOP_SENDING itself (no Writable follows it).
                    Some(Bidi::SpeedTest(_)) => return self.on_bidi(io, ch, id),
                    _ => None,
                };
                if let Some(key) = key {
                    self.abort_relay(io, key);
                }
            }
            Event::DatagramReceived => {
                let Some(conn) = self.conns.get_mut(&ch) else {
                    return;
                };
                if conn.user.is_none() || !self.cfg.udp {
                    // Drain and drop: UDP before auth or with UDP disabled.
                    if let Some(qc) = io.conn(ch) {
                        while qc.datagrams().recv().is_some() {}
                    }
                    return;
                }
                let user = conn.limits.clone();
                let off = self
                    .offload
                    .get_or_insert_with(|| self.pool.client(io.driver.waker()));
                let out = udp::Outbound {
                    limits: &self.cfg.limits,
                    guard: &self.cfg.guard,
                    dns: off,
                    idle_timeout: self.cfg.udp_idle_timeout,
                };
                self.udp.on_datagrams(io, ch, user, &out);
            }
            Event::ConnectionLost { reason } => {
                tracing::debug!("{ch:?} closed: {reason}");
                self.forget_conn(io, ch);
            }
            _ => {}
        }
    }

    fn on_sock(&mut self, io: &mut Io<'_>, c: Completion) {
        if udp::is_udp_token(c.token) {
            self.udp.on_completion(io, c);
            return;
        }
        let key = (c.token & 0xffff_ffff) as usize;
        let gen = (c.token >> 32) as u32;
        let tok = c.token;
        let relay = match self.relays.get_mut(key) {
            Some((g, relay)) if *g == gen => relay,
            _ => {
                // The relay is gone (its connect timed out, or the client left): a connect
                // that completes now hands us a socket nobody will use.
                if let (SockOp::Connect, Ok(fd)) = (c.op, &c.result) {
                    io.driver
                        .sock_close(*fd as std::os::fd::RawFd, ORPHAN_TOKEN);
                }
                return;
            }
        };
        let after = relay.on_completion(io, c, tok);
        relay.account(io.now);
        if after == After::Remove {
            self.remove_relay(key);
        }
    }
}

/// Reads what a stream has, up to a request's worth. `None` when the client reset it.
fn read_some(io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) -> Option<(Vec<u8>, bool)> {
    let qc = io.conn(ch)?;
    let mut data = Vec::new();
    let mut fin = false;
    let mut recv = qc.recv_stream(id);
    let mut chunks = recv.read(true).ok()?;
    loop {
        match chunks.next(MAX_REQUEST_BYTES) {
            Ok(Some(c)) => {
                data.extend_from_slice(&c.bytes);
                if data.len() >= MAX_REQUEST_BYTES {
                    break;
                }
            }
            Ok(None) => {
                fin = true;
                break;
            }
            Err(ReadError::Blocked) => break,
            Err(ReadError::Reset(_)) => {
                let _ = chunks.finalize();
                return None;
            }
        }
    }
    let _ = chunks.finalize();
    Some((data, fin))
}

fn drain_uni(io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
    if let Some(qc) = io.conn(ch) {
        let mut recv = qc.recv_stream(id);
        if let Ok(mut chunks) = recv.read(true) {
            while let Ok(Some(_)) = chunks.next(usize::MAX) {}
            let _ = chunks.finalize();
        };
    }
}
