//! The Hysteria2 server session of one worker, sans-IO: what each connection and stream is,
//! and what happens to it.
//!
//! The worker's adapter ([`super::Hy2App`]) hands it events: a connection established or
//! gone, a stream opened, a stream's first bytes, a stream stopped by the client, an auth
//! verdict or a masquerade answer prepared off the data path, a DNS answer, a connect's
//! outcome, a relay's end, the clock. It decides authentication, the masquerade, admission,
//! stream caps and credit, and each relay's phase, and queues [`Action`]s that the adapter
//! performs in order ([`Session::poll_action`]).
//!
//! It holds ids that are never reused ([`ConnId`], [`RelayId`], [`JobId`]) and never a socket
//! or a quinn handle, so an answer that comes back after what it was for has gone finds
//! nothing to land on. Its only clock is the `now` it is given: `tests.rs` runs it in
//! virtual time.

mod caps;
#[cfg(test)]
pub(crate) mod tests;
mod udp;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use quinn_proto::StreamId;
use rand::rngs::StdRng;
use rand::SeedableRng;

use self::caps::Parked;
pub use self::udp::{LookupId, UdpCounters, UdpId, UdpTo, UdpVia, ASSOCIATE_TIMEOUT};
use super::speedtest::is_speedtest_addr;
use super::{Authenticator, Hy2Config, Masquerade};
use crate::acl::{self, Decision, Protocol, Verdict};
use crate::engine::Egress;
use crate::limits::admission::UnauthPermit;
use crate::limits::{ConnPermit, ExtraSocket, Limits, Online, StreamPermit, User};
use crate::proto::h3::{self, CcRx, RequestReader};
use crate::proto::outbound::Handshake;
use crate::proto::sniff::{self, TcpSniff, TcpSniffer, Transport};
use crate::proto::tcp::{self, Host, StreamStart, TcpRequest};
use crate::server::masquerade::Tail;
use crate::server::route::{Outbound, Way};

/// The largest request body passed to the proxy masquerade, as over the TCP listeners.
pub const MAX_PROXY_BODY: usize = crate::server::masquerade::tcp::MAX_REQUEST_BODY;
/// Request bodies a worker reads at once for the proxy masquerade (each up to
/// [`MAX_PROXY_BODY`]); past it a request with a body is answered 503.
pub const MAX_BODIES_READING: usize = 64;

/// One of the places counted by [`MAX_BODIES_READING`], given back when dropped (the body
/// read, the stream reset, the connection gone).
struct BodySlot(Arc<AtomicUsize>);

impl Drop for BodySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
/// The reference server's dial timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 9114 §8.1's codes, as the QUIC close codes the session uses (they fit 32 bits).
pub const H3_NO_ERROR: u32 = h3::error::H3_NO_ERROR as u32;
pub const H3_EXCESSIVE_LOAD: u32 = h3::error::H3_EXCESSIVE_LOAD as u32;
/// QUIC error code of a kicked connection (H3_EXCESSIVE_LOAD, as the reference server).
pub const KICK_ERROR: u32 = H3_EXCESSIVE_LOAD;
/// Application error code of relay streams we abort.
pub const STREAM_ABORT: u64 = crate::worker::pipe::STREAM_ABORT as u64;

/// Bytes a proxy stream may send before its TCPRequest is complete
/// (type + address ≤ 2048 + padding ≤ 4096 + length fields).
pub const MAX_REQUEST_BYTES: usize = 2 + 2048 + 4096 + 16;

/// A connection, by a number no other connection of this session ever gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A relayed TCP stream (from its request to its end), never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u64);

/// Work prepared off the data path (an HTTP auth verdict, a masquerade answer), never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// What the adapter does for the session, in the order queued.
#[derive(Debug)]
pub enum Action {
    /// Open our HTTP/3 control stream with SETTINGS, as any HTTP/3 server does.
    ControlStream(ConnId),
    /// Write `bytes` on the stream as credit allows, then the tail's chunks as DATA frames
    /// if there is one, then finish the stream and stop reading it.
    Respond {
        conn: ConnId,
        stream: StreamId,
        bytes: Vec<u8>,
        tail: Option<Tail>,
    },
    /// Write `bytes` on the stream now and keep it open: a relay's TCPResponse sent before
    /// its connect (while sniffing). What credit does not take goes before the relay's
    /// bytes.
    Reply {
        conn: ConnId,
        stream: StreamId,
        bytes: Vec<u8>,
    },
    /// Reset both halves of the stream.
    Reset {
        conn: ConnId,
        stream: StreamId,
        code: u64,
    },
    /// Close the connection. The session has already let go of it; the adapter lets go of
    /// what it holds for it (a local close raises no ConnectionLost).
    Close {
        conn: ConnId,
        code: u32,
        reason: &'static [u8],
    },
    /// Send with Brutal at this rate, or with the configured controller when 0.
    SendRate { conn: ConnId, bytes_per_sec: u64 },
    /// The connection's stream credit: `None` holds its limit at the streams open now (so
    /// closing streams return none), `Some(n)` grants `n` concurrent streams again.
    Credit { conn: ConnId, limit: Option<u64> },
    /// Run `work` off the data path; [`Session::verdict`] or [`Session::answer`] brings the
    /// outcome, [`Session::job_refused`] says it could not be queued.
    Offload { job: JobId, work: Work },
    /// Look the relay's target name up; [`Session::resolved`] brings the answer.
    Resolve {
        relay: RelayId,
        host: String,
        port: u16,
    },
    /// Connect the relay's socket to `addr` and join it to the stream; once connected, send
    /// `ok` (the TCPResponse) and `first` (payload that came with the request). If the
    /// connect fails, the `fallback` addresses are tried in turn on fresh sockets.
    /// [`Session::connect_done`] brings the outcome, [`Session::relay_closed`] the end.
    Connect {
        relay: RelayId,
        conn: ConnId,
        stream: StreamId,
        addr: SocketAddr,
        /// How the socket is set up (the outbound's binding and fast open).
        egress: Egress,
        /// Mode `auto` with addresses of both families: the other family's first address,
        /// connected at the same time. The first connect to succeed wins and the other is
        /// closed; if both fail, `fallback` goes on.
        racer: Option<(SocketAddr, Egress)>,
        /// The other addresses the outbound's mode and the outbound guard allow, in order,
        /// each with its own set-up.
        fallback: Vec<(SocketAddr, Egress)>,
        /// For a proxy outbound: what to say to the proxy before the target's bytes flow
        /// ([`Session::connect_done`] comes once it agreed, or with its refusal).
        handshake: Option<Handshake>,
        first: Vec<u8>,
        ok: Vec<u8>,
        user: Option<Arc<User>>,
    },
    /// The relay's target is connected: move bytes both ways.
    Start(RelayId),
    /// Answer the client with `response` (an error TCPResponse), close the stream and the
    /// relay's socket. [`Session::relay_closed`] follows.
    Fail { relay: RelayId, response: Vec<u8> },
    /// Reset the relay's stream both ways and close its socket. [`Session::relay_closed`]
    /// follows.
    Abort(RelayId),
    /// The built-in speed test takes the stream, with the bytes that came after its request.
    SpeedTest {
        conn: ConnId,
        stream: StreamId,
        ok: Vec<u8>,
        first: Vec<u8>,
    },
    /// Open the UDP session's socket, set up as `via` says (before its first send);
    /// [`Session::udp_open_failed`] if it cannot be, [`Session::udp_failed`] if it breaks.
    UdpOpen { udp: UdpId, via: UdpVia },
    /// Send `payload` to `to` from the session's socket (the adapter bounds what waits).
    UdpSend {
        udp: UdpId,
        to: UdpTo,
        payload: Vec<u8>,
    },
    /// Look a destination of a UDP session up; [`Session::udp_resolved`] brings the answer.
    UdpResolve {
        lookup: LookupId,
        host: String,
        port: u16,
    },
    /// Send a DATAGRAM (a UDPMessage) to the client.
    Datagram { conn: ConnId, bytes: Vec<u8> },
    /// Close the session's socket; [`Session::udp_closed`] follows.
    UdpClose(UdpId),
}

/// Work for the rooms off the data path.
#[derive(Debug)]
pub enum Work {
    /// Ask the HTTP auth backend about `auth` from `remote`.
    Auth {
        auth: String,
        cc_rx: u64,
        remote: SocketAddr,
    },
    /// The file or proxy masquerade's answer to `req` (with its body, for the proxy).
    Masquerade {
        req: h3::Request,
        body: Vec<u8>,
        remote: SocketAddr,
    },
}

/// A relay's phase, as `/dump/streams` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the resolver.
    Resolving,
    /// TCP connect in flight.
    Connecting,
    /// Bytes flow both ways.
    Established,
    /// Failed or aborted: the adapter is closing it.
    Closing,
}

impl Phase {
    /// The reference's name for the phase.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Resolving => "init",
            Phase::Connecting => "connect",
            Phase::Established => "estab",
            Phase::Closing => "closed",
        }
    }
}

/// Counts the adapter publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Proxy requests refused: malformed, refused by the outbound guard or the ACL, while
    /// draining, at the user's socket cap.
    pub refused: u64,
    /// Proxy requests (TCP) and UDP destinations the ACL sent to `reject`.
    pub acl_rejected: u64,
    /// Proxy requests and UDP sessions whose target sniffing replaced.
    pub sniffed: u64,
    /// Proxy requests refused at their user's socket cap (`limits.maxSocketsPerUser`).
    pub socket_cap_refused: u64,
    /// Times a connection's stream credit was withheld.
    pub credit_withheld: u64,
    pub auth_failures: u64,
    pub streams_relayed: u64,
}

/// A relay as `/dump/streams` shows it.
pub struct RelayView<'a> {
    pub id: RelayId,
    pub conn: ConnId,
    pub stream: StreamId,
    pub phase: Phase,
    pub target: &'a str,
    pub user: Option<&'a str>,
    pub created: SystemTime,
}

/// A bidirectional stream the session still looks at.
enum Stream {
    /// First bytes, until the first varint is complete.
    Start(Vec<u8>),
    /// A proxy stream whose TCPRequest is still arriving.
    Request(Vec<u8>),
    /// An HTTP/3 request.
    Http(RequestReader),
    /// A request for the proxy masquerade whose body is still arriving, holding one of the
    /// worker's [`MAX_BODIES_READING`] places.
    Body(RequestReader, Box<h3::Request>, BodySlot),
    /// A proxy request waiting for a stream permit (see `caps`): not read meanwhile.
    Parked,
    /// Handed to a relay.
    Relay(RelayId),
}

struct Conn {
    remote: SocketAddr,
    /// The authenticated user ID.
    user: Option<String>,
    streams: HashMap<StreamId, Stream>,
    /// The user's counters, from authentication on.
    limits: Option<Arc<User>>,
    /// This connection's place under the user's connection cap; until it has one, its
    /// streams are parked.
    conn_permit: Option<ConnPermit>,
    /// Counts the connection in its user's `online` while it lives.
    online: Option<Online>,
    /// Its place among the connections waiting to authenticate, until they do.
    unauthenticated: Option<UnauthPermit>,
}

struct Relay {
    conn: ConnId,
    stream: StreamId,
    phase: Phase,
    /// The client's target, as sent (`host:port`).
    target: String,
    /// The target's host and port as the ACL sees them (addresses once resolved).
    host: acl::Host,
    port: u16,
    /// Where it goes, once decided (before or after resolving).
    decision: Option<Decision>,
    /// The resolver's answer, once it came.
    answer: Option<Result<Vec<SocketAddr>, String>>,
    /// Payload that came with the request (and, while sniffing, every byte read since),
    /// until the connect takes it.
    first: Vec<u8>,
    /// Reading the first bytes for a name (`sniff`), until it is found, ruled out or the
    /// time is up.
    sniff: Option<TcpSniffer>,
    /// The client was told "connected" before the connect (sniffing): a failure now only
    /// closes the stream.
    replied: bool,
    /// Released when the relay ends.
    _permit: StreamPermit,
    /// The socket of a connect racing the first (mode `auto`), until the connect is done.
    racing: Option<ExtraSocket>,
    user: Option<Arc<User>>,
    created: SystemTime,
}

/// A stream waiting for work done off the data path.
struct Job {
    conn: ConnId,
    stream: StreamId,
    kind: JobKind,
}

enum JobKind {
    /// An HTTP auth verdict; on refusal the request gets the masquerade.
    Auth { cc_rx: u64, req: h3::Request },
    /// A masquerade response.
    Response,
}

pub struct Session {
    cfg: Arc<Hy2Config>,
    conns: HashMap<ConnId, Conn>,
    relays: HashMap<RelayId, Relay>,
    jobs: HashMap<JobId, Job>,
    /// Proxy requests waiting for a stream permit, oldest first.
    parked: VecDeque<Parked>,
    /// Connections whose stream credit is withheld now (a cap was reached), kept so that no
    /// loop scans for them.
    withheld: BTreeSet<ConnId>,
    /// Connect deadlines, earliest first. An entry whose relay connected or went away
    /// meanwhile is skipped when it comes up.
    connect_deadlines: BinaryHeap<Reverse<(Instant, RelayId)>>,
    /// Request bodies being read (see [`BodySlot`]).
    bodies_reading: Arc<AtomicUsize>,
    /// When each sniffing relay stops waiting for bytes.
    sniff_deadlines: BinaryHeap<Reverse<(Instant, RelayId)>>,
    /// Auth deadlines, earliest first; an entry whose connection authenticated or left is
    /// skipped.
    auth_deadlines: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// The last id given, of any kind.
    last_id: u64,
    draining: bool,
    rng: StdRng,
    actions: VecDeque<Action>,
    udp: udp::Udp,
    pub counters: Counters,
}

impl Session {
    pub fn new(cfg: Arc<Hy2Config>) -> Self {
        Self::with_rng(cfg, StdRng::from_entropy())
    }

    /// A session whose padding comes from `rng` (tests seed it).
    pub fn with_rng(cfg: Arc<Hy2Config>, rng: StdRng) -> Self {
        Session {
            cfg,
            conns: HashMap::new(),
            relays: HashMap::new(),
            jobs: HashMap::new(),
            parked: VecDeque::new(),
            withheld: BTreeSet::new(),
            connect_deadlines: BinaryHeap::new(),
            bodies_reading: Arc::default(),
            sniff_deadlines: BinaryHeap::new(),
            auth_deadlines: BinaryHeap::new(),
            last_id: 0,
            draining: false,
            rng,
            actions: VecDeque::new(),
            udp: udp::Udp::default(),
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &Arc<Hy2Config> {
        &self.cfg
    }

    /// Uses `cfg` for what comes next (authentication, new streams, new connections).
    pub fn reload(&mut self, cfg: Arc<Hy2Config>) {
        self.cfg = cfg;
    }

    /// Shutting down: new proxy requests are refused.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    // ---- connections ----

    /// A connection the session has not seen yet, from `remote`: its id.
    pub fn connection(&mut self, remote: SocketAddr) -> ConnId {
        let id = ConnId(self.next_id());
        self.conns.insert(
            id,
            Conn {
                remote,
                user: None,
                streams: HashMap::new(),
                limits: None,
                conn_permit: None,
                online: None,
                unauthenticated: None,
            },
        );
        id
    }

    /// The connection finished its handshake: it may wait to authenticate if the caps on
    /// unauthenticated connections have room (else it is closed at once, H3_EXCESSIVE_LOAD),
    /// until its auth deadline.
    pub fn connected(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let source = c.remote.ip();
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
                c.unauthenticated = Some(permit);
                self.auth_deadlines
                    .push(Reverse((now + self.cfg.auth_timeout, conn)));
                self.actions.push_back(Action::ControlStream(conn));
            }
            Err(why) => {
                tracing::debug!(
                    "closing {conn:?} from {source}: too many unauthenticated ({why:?})"
                );
                self.close(conn, H3_EXCESSIVE_LOAD, b"");
            }
        }
    }

    /// The connection is gone: its relays are aborted, its parked requests and permits
    /// dropped. Anything that comes back for it later is dropped too.
    pub fn connection_lost(&mut self, conn: ConnId) {
        self.parked.retain(|p| p.conn != conn);
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        self.close_conn_udp(conn);
        self.withheld.remove(&conn);
        for (_, s) in c.streams.drain() {
            if let Stream::Relay(relay) = s {
                self.abort_relay(relay);
            }
        }
    }

    /// Lets go of the connection and asks the adapter to close it.
    fn close(&mut self, conn: ConnId, code: u32, reason: &'static [u8]) {
        self.connection_lost(conn);
        self.actions.push_back(Action::Close { conn, code, reason });
    }

    /// Closes the connections of `users` (QUIC error 0x107, as the reference server).
    pub fn kick(&mut self, users: &HashSet<String>) {
        let mut kicked: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.user.as_ref().is_some_and(|u| users.contains(u)))
            .map(|(id, _)| *id)
            .collect();
        kicked.sort();
        for conn in kicked {
            let user = self.conns.get(&conn).and_then(|c| c.user.clone());
            tracing::info!("kicked {conn:?} of {}", user.unwrap_or_default());
            self.close(conn, KICK_ERROR, b"kicked");
        }
    }

    /// The connection's user, when DATAGRAMs of it may be relayed: `None` when it has not
    /// authenticated or UDP is off.
    pub fn udp_user(&self, conn: ConnId) -> Option<Option<Arc<User>>> {
        let c = self.conns.get(&conn)?;
        (c.user.is_some() && self.cfg.udp).then(|| c.limits.clone())
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    // ---- streams ----

    /// The client opened a bidirectional stream.
    pub fn stream_opened(&mut self, conn: ConnId, stream: StreamId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.streams.insert(stream, Stream::Start(Vec::new()));
        }
    }

    /// Whether the session wants the stream's bytes (through [`Self::stream_data`]). A
    /// parked request is not read: its bytes wait in the stream's window.
    pub fn reading(&self, conn: ConnId, stream: StreamId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| match c.streams.get(&stream) {
                Some(
                    Stream::Start(_) | Stream::Request(_) | Stream::Http(_) | Stream::Body(..),
                ) => true,
                Some(Stream::Relay(r)) => self.relays.get(r).is_some_and(|r| r.sniff.is_some()),
                Some(Stream::Parked) | None => false,
            })
    }

    /// Bytes of a stream the session reads (`fin`: the client finished it).
    pub fn stream_data(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
        data: &[u8],
        fin: bool,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let authed = c.user.is_some();
        let Some(mut state) = c.streams.remove(&stream) else {
            return;
        };
        let mut data = data.to_vec();
        // Each step either hands the stream on (and returns) or moves it to the next state
        // with the bytes still to look at.
        loop {
            state = match state {
                Stream::Start(mut buf) => {
                    buf.append(&mut data);
                    match StreamStart::classify(&buf) {
                        StreamStart::NeedMore if !fin => {
                            return self.keep(conn, stream, Stream::Start(buf))
                        }
                        StreamStart::Proxy if authed => Stream::Request(buf),
                        _ => {
                            data = buf;
                            Stream::Http(self.request_reader())
                        }
                    }
                }
                Stream::Request(mut buf) => {
                    buf.append(&mut data);
                    match TcpRequest::parse(&buf) {
                        Ok(None) if !fin && buf.len() < MAX_REQUEST_BYTES => {
                            return self.keep(conn, stream, Stream::Request(buf));
                        }
                        Ok(Some((req, used))) => {
                            let first = buf.split_off(used);
                            return self.proxy_request(now, conn, stream, req.addr, first);
                        }
                        Ok(None) | Err(_) => {
                            tracing::debug!("malformed TCPRequest on {conn:?} stream {stream}");
                            self.counters.refused += 1;
                            return self.reset(conn, stream, h3::error::H3_MESSAGE_ERROR);
                        }
                    }
                }
                Stream::Http(mut reader) => match reader.push(&std::mem::take(&mut data)) {
                    Ok(Some(req)) if self.wants_body(&req) => match self.body_slot() {
                        Some(slot) => Stream::Body(reader, Box::new(req), slot),
                        None => {
                            crate::warn_limited!(
                                "masquerade: {MAX_BODIES_READING} request bodies being read, \
                                 answering 503"
                            );
                            return self.respond(conn, stream, h3::response(503, &[], b""));
                        }
                    },
                    Ok(Some(req)) => return self.http_request(conn, stream, &req),
                    Ok(None) if !fin => return self.keep(conn, stream, Stream::Http(reader)),
                    Err(h3::H3Error::BodyTooLarge) => return self.body_too_large(conn, stream),
                    Ok(None) | Err(_) => {
                        return self.reset(conn, stream, h3::error::H3_MESSAGE_ERROR)
                    }
                },
                Stream::Body(mut reader, req, slot) => {
                    let pushed = reader.push(&std::mem::take(&mut data));
                    let done = match pushed {
                        Ok(_) if !fin => {
                            return self.keep(conn, stream, Stream::Body(reader, req, slot))
                        }
                        Ok(_) => reader.finish(),
                        Err(e) => Err(e),
                    };
                    return match done {
                        Ok(()) => {
                            let body = reader.body().to_vec();
                            self.masquerade_with_body(conn, stream, &req, body)
                        }
                        Err(h3::H3Error::BodyTooLarge) => self.body_too_large(conn, stream),
                        Err(_) => self.reset(conn, stream, h3::error::H3_MESSAGE_ERROR),
                    };
                }
                Stream::Relay(relay) => {
                    self.keep(conn, stream, state);
                    return self.sniff_data(now, relay, &data, fin);
                }
                Stream::Parked => return self.keep(conn, stream, state),
            };
        }
    }

    /// The client reset a stream the session reads: it is forgotten.
    pub fn stream_reset(&mut self, conn: ConnId, stream: StreamId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match c.streams.get(&stream) {
            // A relay's pipe sees the reset itself; one still sniffing has no pipe yet.
            Some(&Stream::Relay(relay)) => {
                if self.relays.get(&relay).is_some_and(|r| r.sniff.is_some()) {
                    self.abort_relay(relay);
                }
            }
            _ => {
                c.streams.remove(&stream);
            }
        }
    }

    /// The client stopped reading a stream (STOP_SENDING): its relay, if any, is aborted.
    pub fn stream_stopped(&mut self, conn: ConnId, stream: StreamId) {
        let relay = match self.conns.get(&conn).and_then(|c| c.streams.get(&stream)) {
            Some(Stream::Relay(r)) => *r,
            _ => return,
        };
        self.abort_relay(relay);
    }

    fn keep(&mut self, conn: ConnId, stream: StreamId, state: Stream) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.streams.insert(stream, state);
        }
    }

    fn reset(&mut self, conn: ConnId, stream: StreamId, code: u64) {
        self.actions.push_back(Action::Reset { conn, stream, code });
    }

    fn respond(&mut self, conn: ConnId, stream: StreamId, bytes: Vec<u8>) {
        self.respond_streamed(conn, stream, bytes, None);
    }

    fn respond_streamed(
        &mut self,
        conn: ConnId,
        stream: StreamId,
        bytes: Vec<u8>,
        tail: Option<Tail>,
    ) {
        self.actions.push_back(Action::Respond {
            conn,
            stream,
            bytes,
            tail,
        });
    }

    // ---- HTTP/3: authentication and the masquerade ----

    /// Answers an HTTP/3 request: 233 for a good auth request, the masquerade for anything
    /// else.
    fn http_request(&mut self, conn: ConnId, stream: StreamId, req: &h3::Request) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(auth) = h3::auth_request(req) else {
            return self.masquerade(conn, stream, req);
        };
        if c.user.is_some() {
            let ok = self.auth_ok();
            return self.respond(conn, stream, ok);
        }
        let remote = c.remote;
        let user = match &self.cfg.auth {
            Authenticator::Http { .. } | Authenticator::Command(_) => {
                let kind = JobKind::Auth {
                    cc_rx: auth.cc_rx,
                    req: req.clone(),
                };
                let work = Work::Auth {
                    auth: auth.auth,
                    cc_rx: auth.cc_rx,
                    remote,
                };
                return self.offload(conn, stream, kind, work);
            }
            a => a.check(&auth.auth),
        };
        match user {
            Some(user) => self.authenticated(conn, stream, user, auth.cc_rx),
            None => {
                tracing::debug!("authentication failed on {conn:?}");
                self.counters.auth_failures += 1;
                self.masquerade(conn, stream, req);
            }
        }
    }

    /// The receive rate the 233 response announces.
    fn auth_reply(&self) -> CcRx {
        if self.cfg.ignore_client_bandwidth {
            CcRx::Auto
        } else {
            CcRx::Bps(self.cfg.bandwidth_down)
        }
    }

    /// The 233 response, with fresh padding.
    fn auth_ok(&mut self) -> Vec<u8> {
        let padding = h3::auth_padding(&mut self.rng);
        h3::auth_ok_response(self.cfg.udp, self.auth_reply(), &padding)
    }

    /// Marks the connection authenticated as `user` and answers 233. A connection is
    /// authenticated once: a later verdict (two requests in flight) changes nothing, as the
    /// reference answers a second auth request.
    fn authenticated(&mut self, conn: ConnId, stream: StreamId, user: String, cc_rx: u64) {
        let ok = self.auth_ok();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.user.is_none() {
            c.unauthenticated = None;
            let limits = self.cfg.limits.user(&user);
            c.conn_permit = Limits::acquire_connection(&limits, true);
            c.online = Some(Online::new(&limits));
            c.limits = Some(limits);
            c.user = Some(user);
            // Congestion: Brutal at the client's receive rate (capped by bandwidth.up), BBR
            // when the client does not say or the server ignores it.
            let rate = match self.cfg.ignore_client_bandwidth {
                true => 0,
                false if self.cfg.bandwidth_up > 0 => cc_rx.min(self.cfg.bandwidth_up),
                false => cc_rx,
            };
            tracing::debug!("{conn:?} authenticated, send rate {rate} B/s");
            self.actions.push_back(Action::SendRate {
                conn,
                bytes_per_sec: rate,
            });
        }
        self.respond(conn, stream, ok);
    }

    /// The reader of a new HTTP/3 request: with the proxy masquerade, one that keeps a body
    /// of up to [`MAX_PROXY_BODY`] to pass upstream.
    fn request_reader(&self) -> RequestReader {
        match self.cfg.masquerade {
            Masquerade::Proxy(_) => RequestReader::with_limits(h3::Limits {
                max_body: MAX_PROXY_BODY as u64,
                ..h3::Limits::default()
            })
            .keeping_body(),
            _ => RequestReader::new(),
        }
    }

    /// Whether `req` goes to the proxy masquerade with a body still to read first: not a
    /// login, and a body is announced (`content-length` above 0) or may follow (no length,
    /// a method that carries one). A GET or HEAD without a length is answered at once.
    fn wants_body(&self, req: &h3::Request) -> bool {
        if !matches!(self.cfg.masquerade, Masquerade::Proxy(_)) || h3::auth_request(req).is_some() {
            return false;
        }
        match req.header("content-length").map(str::parse::<u64>) {
            Some(Ok(len)) => len > 0,
            Some(Err(_)) => false,
            None => !matches!(
                req.method.as_str(),
                "GET" | "HEAD" | "OPTIONS" | "DELETE" | "TRACE"
            ),
        }
    }

    /// A place to read a request body in, if the worker has one free.
    fn body_slot(&self) -> Option<BodySlot> {
        let held = &self.bodies_reading;
        held.fetch_update(Relaxed, Relaxed, |n| {
            (n < MAX_BODIES_READING).then_some(n + 1)
        })
        .ok()?;
        Some(BodySlot(held.clone()))
    }

    /// A request body over [`MAX_PROXY_BODY`]: 413, as the TCP listeners answer it.
    fn body_too_large(&mut self, conn: ConnId, stream: StreamId) {
        let text = format!("request body larger than {MAX_PROXY_BODY} bytes\n");
        let headers = [("content-type", "text/plain; charset=utf-8")];
        let bytes = h3::response(413, &headers, text.as_bytes());
        self.respond(conn, stream, bytes);
    }

    /// The masquerade's answer: at once for 404 and string, off the data path for file and
    /// proxy.
    fn masquerade(&mut self, conn: ConnId, stream: StreamId, req: &h3::Request) {
        self.masquerade_with_body(conn, stream, req, Vec::new());
    }

    /// [`Self::masquerade`] for a request with a body (the proxy sends it upstream).
    fn masquerade_with_body(
        &mut self,
        conn: ConnId,
        stream: StreamId,
        req: &h3::Request,
        body: Vec<u8>,
    ) {
        let Some(remote) = self.conns.get(&conn).map(|c| c.remote) else {
            return;
        };
        match &self.cfg.masquerade {
            Masquerade::File(_) | Masquerade::Proxy(_) => {
                let work = Work::Masquerade {
                    req: req.clone(),
                    body,
                    remote,
                };
                self.offload(conn, stream, JobKind::Response, work);
            }
            m => {
                let bytes = m.response();
                self.respond(conn, stream, bytes);
            }
        }
    }

    fn offload(&mut self, conn: ConnId, stream: StreamId, kind: JobKind, work: Work) {
        let job = JobId(self.next_id());
        self.jobs.insert(job, Job { conn, stream, kind });
        self.actions.push_back(Action::Offload { job, work });
    }

    /// The job's room is saturated: the stream gets what a busy web server answers (an auth
    /// request is refused so).
    pub fn job_refused(&mut self, job: JobId) {
        if let Some(j) = self.jobs.remove(&job) {
            if self.conns.contains_key(&j.conn) {
                self.respond(j.conn, j.stream, h3::response(503, &[], b""));
            }
        }
    }

    /// The HTTP backend's verdict: `Ok(Some(user))` accepts, `Ok(None)` refuses, `Err` says
    /// the backend failed (the request then gets the masquerade too).
    pub fn verdict(&mut self, job: JobId, verdict: Result<Option<String>, String>) {
        let Some(j) = self.jobs.remove(&job) else {
            return;
        };
        if !self.conns.contains_key(&j.conn) {
            tracing::debug!("verdict for a closed connection ({:?}) dropped", j.conn);
            return;
        }
        let JobKind::Auth { cc_rx, req } = j.kind else {
            return;
        };
        match verdict {
            Ok(Some(user)) => self.authenticated(j.conn, j.stream, user, cc_rx),
            Ok(None) => {
                tracing::debug!("authentication refused by the backend on {:?}", j.conn);
                self.counters.auth_failures += 1;
                self.masquerade(j.conn, j.stream, &req);
            }
            Err(e) => {
                crate::warn_limited!("authentication backend failed: {e}");
                self.masquerade(j.conn, j.stream, &req);
            }
        }
    }

    /// A masquerade response prepared off the data path: its first bytes, and the rest of
    /// its body if it is streamed.
    pub fn answer(&mut self, job: JobId, response: Vec<u8>, tail: Option<Tail>) {
        let Some(j) = self.jobs.remove(&job) else {
            return;
        };
        if !self.conns.contains_key(&j.conn) {
            tracing::debug!("answer for a closed connection ({:?}) dropped", j.conn);
            return;
        }
        if matches!(j.kind, JobKind::Response) {
            self.respond_streamed(j.conn, j.stream, response, tail);
        }
    }

    // ---- relays ----

    /// The TCPResponse that tells a client its target is connected.
    fn ok_response(&mut self) -> Vec<u8> {
        let mut ok = Vec::new();
        let (min, max) = tcp::RESPONSE_PADDING;
        let padding = tcp::padding(&mut self.rng, min, max);
        let _ = tcp::TcpResponse::encode(tcp::STATUS_OK, "Connected", &padding, &mut ok);
        ok
    }

    /// A complete TCPRequest on an authenticated connection.
    fn proxy_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
        target: String,
        first: Vec<u8>,
    ) {
        if self.cfg.speed_test && is_speedtest_addr(&target) {
            let ok = self.ok_response();
            self.actions.push_back(Action::SpeedTest {
                conn,
                stream,
                ok,
                first,
            });
            return;
        }
        if self.draining {
            self.counters.refused += 1;
            let bytes = error_response("server is shutting down");
            return self.respond(conn, stream, bytes);
        }
        self.admit(
            now,
            Parked {
                conn,
                stream,
                target,
                first,
            },
        );
    }

    /// Starts a relay that holds `permit` until it ends.
    fn start_relay(&mut self, now: Instant, p: Parked, permit: StreamPermit) {
        let Parked {
            conn,
            stream,
            target,
            first,
        } = p;
        let relay = RelayId(self.next_id());
        let user = self.conns.get(&conn).and_then(|c| c.limits.clone());
        self.counters.streams_relayed += 1;
        self.keep(conn, stream, Stream::Relay(relay));
        let parsed = tcp::split_host_port(&target);
        let (host, port) = match &parsed {
            Ok((Host::Ip(ip), port)) => (acl::Host::new(&ip.to_string()), *port),
            Ok((Host::Domain(name), port)) => (acl::Host::new(name), *port),
            Err(_) => (acl::Host::new(""), 0),
        };
        let sniff_for = self
            .cfg
            .sniffer
            .as_ref()
            .filter(|s| parsed.is_ok() && s.wants(host.name(), Transport::Tcp, port))
            .map(|s| s.timeout());
        self.relays.insert(
            relay,
            Relay {
                conn,
                stream,
                phase: Phase::Resolving,
                target,
                host,
                port,
                decision: None,
                answer: None,
                first,
                sniff: None,
                replied: false,
                _permit: permit,
                racing: None,
                user,
                created: SystemTime::now(),
            },
        );
        match sniff_for {
            Some(timeout) => self.start_sniff(now, relay, timeout),
            None => {
                self.connect_deadlines
                    .push(Reverse((now + CONNECT_TIMEOUT, relay)));
                self.dispatch(relay);
            }
        }
    }

    /// Routes the relay by its target: an IP literal carries its own address, a name is
    /// routed (and resolved when the rules or the outbound need it).
    fn dispatch(&mut self, relay: RelayId) {
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        match tcp::split_host_port(&r.target) {
            Ok((Host::Ip(ip), port)) => {
                r.host = acl::Host::new(&ip.to_string());
                self.set_answer(relay, Ok(vec![SocketAddr::new(ip, port)]));
                self.route_relay(relay);
            }
            Ok((Host::Domain(name), _)) => {
                r.host = acl::Host::new(&name);
                self.route_relay(relay);
            }
            Err(e) => {
                let msg = format!("bad address {:?}: {e}", r.target);
                self.fail_relay(relay, &msg)
            }
        }
    }

    /// Sniffing, as the reference does it: the client hears "connected" at once (so that
    /// it sends its first bytes), and those bytes are read for a name for up to `timeout`.
    fn start_sniff(&mut self, now: Instant, relay: RelayId, timeout: Duration) {
        let ok = self.ok_response();
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        r.sniff = Some(TcpSniffer::new());
        r.replied = true;
        let (conn, stream) = (r.conn, r.stream);
        self.actions.push_back(Action::Reply {
            conn,
            stream,
            bytes: ok,
        });
        self.sniff_deadlines.push(Reverse((now + timeout, relay)));
        // The bytes that came with the request may already name the target.
        self.sniff_data(now, relay, &[], false);
    }

    /// Bytes of a sniffing relay's stream: kept for the target, and looked at for a name.
    fn sniff_data(&mut self, now: Instant, relay: RelayId, data: &[u8], fin: bool) {
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        let Some(sniffer) = r.sniff.as_mut() else {
            return;
        };
        r.first.extend_from_slice(data);
        let found = match sniffer.sniff(&r.first) {
            TcpSniff::NeedMore if !fin => return,
            TcpSniff::Found(name) => Some(name),
            TcpSniff::NeedMore | TcpSniff::Nothing => None,
        };
        self.end_sniff(now, relay, found);
    }

    /// Sniffing is over (`found`: the name the first bytes carry): the relay goes on, to
    /// that name on the requested port, or as asked.
    fn end_sniff(&mut self, now: Instant, relay: RelayId, found: Option<String>) {
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        if r.sniff.take().is_none() {
            return;
        }
        if let Some(name) = found {
            r.target = sniff::join_host_port(&name, r.port);
            r.answer = None;
            r.decision = None;
            self.counters.sniffed += 1;
        }
        self.connect_deadlines
            .push(Reverse((now + CONNECT_TIMEOUT, relay)));
        self.dispatch(relay);
    }

    fn set_answer(&mut self, relay: RelayId, answer: Result<Vec<SocketAddr>, String>) {
        if let Some(r) = self.relays.get_mut(&relay) {
            // The answer's addresses carry the port the client asked for, whatever the
            // resolver put there.
            let port = r.port;
            let answer = answer.map(|addrs| {
                addrs
                    .into_iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect::<Vec<_>>()
            });
            if let Ok(addrs) = &answer {
                let v4 = addrs.iter().find_map(|a| match a.ip() {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                });
                let v6 = addrs.iter().find_map(|a| match a.ip() {
                    IpAddr::V6(ip) => Some(ip),
                    IpAddr::V4(_) => None,
                });
                r.host.set_addresses(v4, v6);
            }
            r.answer = Some(answer);
        }
    }

    /// Decides where the relay goes (resolving first if the rules or the outbound need its
    /// addresses), then starts it there.
    fn route_relay(&mut self, relay: RelayId) {
        let router = self.cfg.router.clone();
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        let decision = match (r.decision, &r.answer) {
            (Some(d), _) => d,
            (None, Some(_)) => router.route(&r.host, Protocol::Tcp, r.port),
            (None, None) => match router.route_unresolved(&r.host, Protocol::Tcp, r.port) {
                Verdict::Decided(d) => d,
                Verdict::NeedsAddresses => return self.resolve(relay),
            },
        };
        r.decision = Some(decision);
        let (outbound, hijack) = match router.way(&decision) {
            Way::Reject => {
                self.counters.refused += 1;
                self.counters.acl_rejected += 1;
                return self.fail_relay(relay, "rejected");
            }
            Way::Out { outbound, hijack } => (outbound, hijack),
        };
        let direct = match outbound {
            Outbound::Direct(d) => d,
            // The proxy is asked for the name (or the hijacked address): it resolves it.
            Outbound::Proxy(proxy) => {
                let host = hijack.map_or_else(|| r.host.name().to_owned(), |ip| ip.to_string());
                let Some(handshake) = proxy.handshake(&host, r.port) else {
                    return self.fail_relay(relay, "target name too long for SOCKS5");
                };
                let addr = proxy.addr;
                let egress = Egress::default();
                return self.connect(relay, addr, egress, None, Vec::new(), Some(handshake));
            }
        };
        let addrs = match (hijack, &r.answer) {
            (Some(ip), _) => vec![SocketAddr::new(ip, r.port)],
            (None, Some(Ok(addrs))) if !addrs.is_empty() => addrs.clone(),
            (None, Some(Ok(_))) => {
                let msg = format!("resolve {}: no addresses", r.target);
                return self.fail_relay(relay, &msg);
            }
            (None, Some(Err(e))) => {
                let msg = format!("resolve {}: {e}", r.target);
                return self.fail_relay(relay, &msg);
            }
            (None, None) => return self.resolve(relay),
        };
        let candidates = match direct.candidates(&addrs) {
            Ok(c) => c,
            Err(why) => {
                let msg = format!("{}: {why}", r.target);
                return self.fail_relay(relay, &msg);
            }
        };
        let mut refusal = None;
        let allowed: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|a| match self.cfg.guard.check(a.ip()) {
                Ok(()) => true,
                Err(why) => {
                    refusal.get_or_insert(why);
                    false
                }
            })
            .collect();
        let Some(&addr) = allowed.first() else {
            let why = refusal.map_or_else(String::new, |why| why.to_string());
            let msg = format!("refused {}: {why}", r.target);
            self.counters.refused += 1;
            return self.fail_relay(relay, &msg);
        };
        let payload = !r.first.is_empty();
        let egress = direct.egress(addr.ip(), payload);
        // The race's second socket counts like any other, and is done without if there is
        // no room for it.
        let racing = direct.racer(&allowed, payload).and_then(|at| {
            let permit = self.cfg.limits.try_extra_socket(r.user.as_ref())?;
            Some((at, permit))
        });
        let racer_at = racing.as_ref().map(|(at, _)| *at);
        if let Some(r) = self.relays.get_mut(&relay) {
            r.racing = racing.map(|(_, permit)| permit);
        }
        let dial = |a: SocketAddr| (a, direct.egress(a.ip(), payload));
        let racer = racer_at.map(|i| dial(allowed[i]));
        let fallback = (1..allowed.len())
            .filter(|&i| Some(i) != racer_at)
            .map(|i| dial(allowed[i]))
            .collect();
        self.connect(relay, addr, egress, racer, fallback, None);
    }

    /// Connects the relay to `addr` (the target, or a proxy that `handshake` asks for it).
    fn connect(
        &mut self,
        relay: RelayId,
        addr: SocketAddr,
        egress: Egress,
        racer: Option<(SocketAddr, Egress)>,
        fallback: Vec<(SocketAddr, Egress)>,
        handshake: Option<Handshake>,
    ) {
        let replied = self.relays.get(&relay).is_some_and(|r| r.replied);
        let ok = if replied {
            Vec::new()
        } else {
            self.ok_response()
        };
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        r.phase = Phase::Connecting;
        self.actions.push_back(Action::Connect {
            relay,
            conn: r.conn,
            stream: r.stream,
            addr,
            egress,
            racer,
            fallback,
            handshake,
            first: std::mem::take(&mut r.first),
            ok,
            user: r.user.clone(),
        });
    }

    /// Asks for the relay's addresses.
    fn resolve(&mut self, relay: RelayId) {
        if let Some(r) = self.relays.get(&relay) {
            let (host, port) = (r.host.name().to_owned(), r.port);
            self.actions
                .push_back(Action::Resolve { relay, host, port });
        }
    }

    /// The target's addresses (or why there are none): routed, then connected to the first
    /// address the outbound's mode and the outbound guard allow. An answer for a relay that
    /// is no longer resolving (aborted, failed, timed out) brings nothing back.
    pub fn resolved(&mut self, relay: RelayId, addrs: std::io::Result<Vec<SocketAddr>>) {
        match self.relays.get(&relay) {
            Some(r) if r.phase == Phase::Resolving && r.answer.is_none() => {}
            _ => return,
        }
        self.set_answer(relay, addrs.map_err(|e| e.to_string()));
        self.route_relay(relay);
    }

    /// The relay's connect finished: bytes flow, or the client hears why not.
    pub fn connect_done(&mut self, relay: RelayId, result: Result<(), String>) {
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        if r.phase != Phase::Connecting {
            return; // failed, aborted or timed out meanwhile: its close is under way
        }
        // A race is over once the connect is: the loser was closed.
        r.racing = None;
        match result {
            Ok(()) => {
                r.phase = Phase::Established;
                self.actions.push_back(Action::Start(relay));
            }
            Err(e) => {
                let msg = format!("connect {}: {e}", r.target);
                self.fail_relay(relay, &msg);
            }
        }
    }

    /// The adapter closed the relay (both sides done, or after `Fail`/`Abort`): its permit
    /// comes back and its stream is forgotten.
    pub fn relay_closed(&mut self, relay: RelayId) {
        let Some(r) = self.relays.remove(&relay) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&r.conn) {
            if matches!(c.streams.get(&r.stream), Some(Stream::Relay(id)) if *id == relay) {
                c.streams.remove(&r.stream);
            }
        }
    }

    /// Answers the client with an error and ends the relay.
    fn fail_relay(&mut self, relay: RelayId, msg: &str) {
        tracing::debug!("proxy request failed: {msg}");
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        // A client already told "connected" only sees the stream end.
        let response = if r.replied {
            Vec::new()
        } else {
            error_response(msg)
        };
        match r.phase {
            Phase::Closing => {}
            // No socket yet: the answer is an ordinary response.
            Phase::Resolving => {
                let (conn, stream) = (r.conn, r.stream);
                self.relay_closed(relay);
                self.respond(conn, stream, response);
            }
            Phase::Connecting | Phase::Established => {
                r.phase = Phase::Closing;
                self.actions.push_back(Action::Fail { relay, response });
            }
        }
    }

    /// Aborts the relay both ways. Every abort goes through here, so that none can leave a
    /// relay behind.
    fn abort_relay(&mut self, relay: RelayId) {
        let Some(r) = self.relays.get_mut(&relay) else {
            return;
        };
        match r.phase {
            Phase::Closing => {}
            Phase::Resolving => {
                let (conn, stream) = (r.conn, r.stream);
                self.relay_closed(relay);
                self.reset(conn, stream, STREAM_ABORT);
            }
            Phase::Connecting | Phase::Established => {
                r.phase = Phase::Closing;
                self.actions.push_back(Action::Abort(relay));
            }
        }
    }

    pub fn relay_count(&self) -> usize {
        self.relays.len()
    }

    pub fn parked_count(&self) -> usize {
        self.parked.len()
    }

    /// The relays, for `/dump/streams`.
    pub fn relays(&self) -> impl Iterator<Item = RelayView<'_>> {
        self.relays.iter().map(|(id, r)| RelayView {
            id: *id,
            conn: r.conn,
            stream: r.stream,
            phase: r.phase,
            target: &r.target,
            user: r.user.as_ref().map(|u| u.name.as_str()),
            created: r.created,
        })
    }

    // ---- time ----

    /// When [`Self::handle_timeout`] is due next.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        // The earliest entry may be stale (its relay connected): waking for it only pops it.
        let relays = self.connect_deadlines.peek().map(|Reverse((at, _))| *at);
        let auth = self.auth_deadlines.peek().map(|Reverse((at, _))| *at);
        let caps = self.caps_deadline(now);
        let udp = self.udp_deadline();
        let sniff = self.sniff_deadlines.peek().map(|Reverse((at, _))| *at);
        relays
            .into_iter()
            .chain(auth)
            .chain(caps)
            .chain(udp)
            .chain(sniff)
            .min()
    }

    /// Connect timeouts, auth deadlines, another look at the caps, idle UDP sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, relay))) = self.sniff_deadlines.peek() {
            if at > now {
                break;
            }
            self.sniff_deadlines.pop();
            // Nothing named in time: the relay goes where it asked.
            self.end_sniff(now, relay, None);
        }
        while let Some(&Reverse((at, relay))) = self.connect_deadlines.peek() {
            if at > now {
                break;
            }
            self.connect_deadlines.pop();
            let msg = match self.relays.get(&relay) {
                Some(r) if matches!(r.phase, Phase::Resolving | Phase::Connecting) => {
                    format!("connect {}: timed out", r.target)
                }
                _ => continue,
            };
            // Closing the socket cancels a connect still pending, so a target that never
            // answers holds no socket past this point.
            self.fail_relay(relay, &msg);
        }
        while let Some(&Reverse((at, conn))) = self.auth_deadlines.peek() {
            if at > now {
                break;
            }
            self.auth_deadlines.pop();
            if self.conns.get(&conn).is_some_and(|c| c.user.is_none()) {
                tracing::debug!("closing {conn:?}: not authenticated within the auth timeout");
                // As a web server ends an idle visitor's connection.
                self.close(conn, H3_NO_ERROR, b"");
            }
        }
        if self.caps_deadline(now).is_some() {
            self.recheck_caps(now);
        }
        self.expire_udp(now);
    }
}

/// A TCPResponse carrying an error, with padding.
pub fn error_response(msg: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let msg: String = msg.chars().take(2000).collect();
    let _ = tcp::TcpResponse::encode(tcp::STATUS_ERROR, &msg, &[], &mut out);
    out
}
