//! One worker of the client role: its share of the local listeners, the local connections
//! they accept, and the pool of QUIC connections that carries them.
//!
//! A local TCP connection goes through: the front end's handshake (SOCKS5 or HTTP proxy;
//! none for a forwarder), a request in the worker's client [`Session`] (which decides when
//! it gets a stream, on which connection, and what the server's answer means), then a
//! [`Pipe`]. A forwarded HTTP request on a connection the app keeps open gets an
//! [`HttpRelay`] instead, for that request and its response; then the connection goes back
//! to the HTTP proxy's handshake for its next request, on a new stream. The SOCKS5/HTTP
//! success reply is only sent once the server connected to the target, so a refusal can
//! still be reported as one.
//!
//! This is the session's adapter: it maps sockets, tokens and quinn handles to the
//! session's ids, performs its actions, and hands it what the sockets and connections
//! bring.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{ConnectionHandle, Dir, Event, StreamEvent, StreamId, VarInt};
use slab::Slab;

use super::http_proxy::{self, Exchange, ProxyRequest, ProxyRequestReader};
use super::http_relay::{self, HttpRelay};
use super::pool::PoolConfig;
use super::session::udp::{UdpForward, UdpSessions};
use super::session::{
    Action, Config as SessionConfig, ConnId, FrontKind, LocalRequest, RequestId, Session,
};
use super::socks5::{self, Command, ReplyCode, Socks5Server, Step};
use super::stats::PoolStats;
use super::token::{self, token, TokenKind};
use super::udp::Udp;
use crate::engine::{Completion, Sock, SockOp, Waker};
use crate::proto::tcp;
use crate::quic::stream::{self, ReadEnd};
use crate::resolve::Resolver;
use crate::worker::pipe::{After, Ends, Pipe, STREAM_ABORT};
use crate::worker::{App, Io};

/// Bytes read from a local connection during its handshake.
const HANDSHAKE_CHUNK: usize = 16 * 1024;
/// Accepts kept posted on each listener.
const ACCEPTS_PER_LISTENER: usize = 4;
/// After an accept failed (EMFILE, ...), wait this long before accepting again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// A refused connection is closed after its reply and EOF from the app, or after this.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes drained from a refused connection before it is closed anyway.
const LINGER_BYTES: usize = 1 << 20;

/// What a local listener offers.
#[derive(Clone, Debug)]
pub enum Front {
    Socks5 {
        auth: Option<(String, String)>,
        udp: bool,
        /// Where UDP ASSOCIATE binds its relay sockets: the listener's address.
        bind_ip: IpAddr,
    },
    Http {
        auth: Option<(String, String)>,
        /// `http.realm`, named when credentials are missing.
        realm: String,
    },
    /// A TCP forwarder to this `host:port`.
    Forward { remote: String },
}

/// The worker's share of the local sockets, bound by the caller (SO_REUSEPORT groups).
pub struct LocalSockets {
    pub tcp: Vec<(OwnedFd, Front)>,
    pub udp: Vec<(OwnedFd, UdpForward)>,
}

/// Settings every worker shares.
pub struct ClientShared {
    pub pool: PoolConfig,
    pub stream_open_timeout: Duration,
    /// `fastOpen`: answer SOCKS5/HTTP CONNECT before the server confirmed the target.
    pub fast_open: bool,
    pub stats: Arc<PoolStats>,
    /// Looks the server's name up for each connection (`None`: the server is an address).
    pub resolver: Option<Arc<Resolver>>,
}

/// The server's addresses for a connection, as the resolver's thread hands them back.
type Lookup = (ConnId, Result<Vec<SocketAddr>, String>);

/// Lookups of the server's name in flight: the resolver's thread sends each answer here and
/// wakes the worker, whose next tick hands it to the session.
struct Lookups {
    answers: crossbeam_channel::Receiver<Lookup>,
    reply: crossbeam_channel::Sender<Lookup>,
    waker: Waker,
}

impl Lookups {
    fn new(waker: Waker) -> Self {
        let (reply, answers) = crossbeam_channel::unbounded();
        Lookups {
            answers,
            reply,
            waker,
        }
    }
}

struct Listener {
    sock: Sock,
    front: Front,
    /// Accepts posted and not completed.
    posted: usize,
}

enum Phase {
    /// Reading the SOCKS5 greeting/request or the HTTP proxy head.
    Socks(Box<Socks5Server>),
    Http(Box<ProxyRequestReader>),
    /// The session has the request (`Local::req`): waiting for a stream, or for the
    /// server's answer on `Local::stream`.
    Session,
    /// Bytes flow; `pipe.sock()` is unset until the handshake's last send completed.
    Relay(Pipe),
    /// A forwarded HTTP request and its response on a connection the app keeps open;
    /// `sock()` as for `Relay`. Then the connection reads the next request.
    Exchange(Box<HttpRelay>),
    /// A SOCKS5 UDP association: the TCP connection is held until the app closes it.
    Udp {
        sock: usize,
    },
    /// A refusal is being written; then the connection is drained until EOF and closed,
    /// at the latest at `until`.
    Closing {
        drained: usize,
        until: Instant,
    },
}

struct Local {
    gen: u32,
    sock: Sock,
    peer: SocketAddr,
    front: Front,
    phase: Phase,
    /// The session's request, until the session lets go of it.
    req: Option<RequestId>,
    /// The stream the request went out on, until the relay ends.
    stream: Option<(ConnectionHandle, StreamId)>,
    /// `host:port` for the TCPRequest.
    target: String,
    /// Bytes for the stream: after the handshake, those that go after the TCPRequest (an
    /// HTTP head, early payload); once the request is written, what the stream did not
    /// take yet.
    to_quic: Vec<u8>,
    /// Bytes for the app once the server connected (a SOCKS5 or HTTP success reply).
    ok_reply: Vec<u8>,
    /// A forwarded HTTP request after which the connection stays open: frames its relay.
    exchange: Option<Exchange>,
    /// Bytes read after that request's end: the start of the next request.
    next: Vec<u8>,
    /// Handshake bytes for the app not yet sent, and whether a send or receive of the
    /// handshake is in flight.
    out: Vec<u8>,
    sending: bool,
    receiving: bool,
    /// A close was requested.
    closing: bool,
}

/// The connections of the worker: the session's ids and quinn's handles.
#[derive(Default)]
struct Conns {
    ch: HashMap<ConnId, ConnectionHandle>,
    id: HashMap<ConnectionHandle, ConnId>,
}

pub struct ClientApp {
    shared: Arc<ClientShared>,
    sockets: Option<LocalSockets>,
    listeners: Vec<Listener>,
    accept_retry: Option<Instant>,
    locals: Slab<Local>,
    generation: u32,
    /// Lingering locals' deadlines (stale entries are skipped).
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Locals by their stream, from the TCPRequest to the relay's end.
    by_stream: HashMap<(ConnectionHandle, StreamId), (usize, u32)>,
    /// Locals by their request in the session.
    by_req: HashMap<RequestId, (usize, u32)>,
    session: Session,
    conns: Conns,
    udp: Udp,
    /// Set up with the first lookup.
    lookups: Option<Lookups>,
}

impl ClientApp {
    pub fn new(shared: Arc<ClientShared>, sockets: LocalSockets, worker: usize) -> Self {
        let now = Instant::now();
        let cfg = SessionConfig {
            pool: shared.pool.clone(),
            stream_open_timeout: shared.stream_open_timeout,
            fast_open: shared.fast_open,
        };
        ClientApp {
            session: Session::new(
                cfg,
                shared.stats.clone(),
                crate::worker::WorkerId(worker as u8),
                now,
            ),
            udp: Udp::new(UdpSessions::new(shared.stats.clone(), worker)),
            shared,
            sockets: Some(sockets),
            listeners: Vec::new(),
            accept_retry: None,
            locals: Slab::new(),
            generation: 0,
            timers: BinaryHeap::new(),
            by_stream: HashMap::new(),
            by_req: HashMap::new(),
            conns: Conns::default(),
            lookups: None,
        }
    }

    /// Adopts the local sockets into the driver and starts accepting (first tick).
    fn start(&mut self, io: &mut Io<'_>) {
        let Some(sockets) = self.sockets.take() else {
            return;
        };
        for (sock, front) in sockets.tcp {
            match io.driver.adopt(sock) {
                Ok(sock) => self.listeners.push(Listener {
                    sock,
                    front,
                    posted: 0,
                }),
                Err(e) => tracing::error!("cannot use a listening socket: {e}"),
            }
        }
        for (sock, fwd) in sockets.udp {
            match io.driver.adopt(sock) {
                Ok(sock) => self.udp.add_forwarder(io, sock, fwd),
                Err(e) => tracing::error!("cannot use a UDP forwarding socket: {e}"),
            }
        }
        self.post_accepts(io);
    }

    fn post_accepts(&mut self, io: &mut Io<'_>) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            while l.posted < ACCEPTS_PER_LISTENER {
                l.posted += 1;
                io.driver
                    .tcp_accept(l.sock, token(TokenKind::Listener, i, 0));
            }
        }
    }

    fn on_accept(&mut self, io: &mut Io<'_>, idx: usize, c: Completion) {
        let Some(l) = self.listeners.get_mut(idx) else {
            return;
        };
        l.posted = l.posted.saturating_sub(1);
        let front = l.front.clone();
        match (c.result, c.accepted) {
            (Ok(_), Some(sock)) => {
                let peer = c
                    .peer
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                self.add_local(io, sock, peer, front);
                self.post_accepts(io);
            }
            // The engine hands over the socket with every accept that succeeds.
            (Ok(_), None) => self.post_accepts(io),
            (Err(e), _) => {
                crate::warn_limited!("accept: {e}; retrying in {ACCEPT_RETRY:?}");
                self.accept_retry = Some(io.now + ACCEPT_RETRY);
            }
        }
    }

    fn add_local(&mut self, io: &mut Io<'_>, sock: Sock, peer: SocketAddr, front: Front) {
        self.generation = self.generation % token::GEN_MASK + 1;
        let gen = self.generation;
        let (phase, target) = match &front {
            Front::Socks5 { auth, .. } => (
                Phase::Socks(Box::new(Socks5Server::new(auth.clone()))),
                String::new(),
            ),
            Front::Http { auth, .. } => (
                Phase::Http(Box::new(ProxyRequestReader::new(
                    http_proxy::Limits::default(),
                    auth.clone(),
                ))),
                String::new(),
            ),
            Front::Forward { remote } => (Phase::Session, remote.clone()),
        };
        let key = self.locals.insert(Local {
            gen,
            sock,
            peer,
            front,
            phase,
            req: None,
            stream: None,
            target,
            to_quic: Vec::new(),
            ok_reply: Vec::new(),
            exchange: None,
            next: Vec::new(),
            out: Vec::new(),
            sending: false,
            receiving: false,
            closing: false,
        });
        if matches!(self.locals[key].phase, Phase::Session) {
            self.enqueue(io, key);
        } else {
            self.recv(io, key);
        }
    }

    fn recv(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &mut self.locals[key];
        if !l.receiving && !l.closing {
            l.receiving = true;
            io.driver.tcp_recv(
                l.sock,
                Vec::with_capacity(HANDSHAKE_CHUNK),
                token(TokenKind::Local, key, l.gen),
            );
        }
    }

    /// Queues handshake bytes for the app (one send in flight at a time).
    fn send(&mut self, io: &mut Io<'_>, key: usize, bytes: &[u8]) {
        let l = &mut self.locals[key];
        l.out.extend_from_slice(bytes);
        flush(io, key, l);
    }

    /// Hands the local's request to the session.
    fn enqueue(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &mut self.locals[key];
        let front = match l.front {
            Front::Socks5 { .. } => FrontKind::Socks5,
            Front::Http { .. } => FrontKind::Http,
            Front::Forward { .. } => FrontKind::Forward,
        };
        let request = LocalRequest {
            front,
            target: l.target.clone(),
            early: std::mem::take(&mut l.to_quic),
            ok_reply: std::mem::take(&mut l.ok_reply),
        };
        l.phase = Phase::Session;
        let req = self.session.request(io.now, request);
        let l = &mut self.locals[key];
        l.req = Some(req);
        self.by_req.insert(req, (key, l.gen));
        self.perform(io);
    }

    /// The local of a request the session still holds.
    fn local_of(&self, req: RequestId) -> Option<usize> {
        let &(key, gen) = self.by_req.get(&req)?;
        self.locals
            .get(key)
            .filter(|l| l.gen == gen && l.req == Some(req))
            .map(|_| key)
    }

    /// Lets go of request `req` (the session is done with it): the key of its local
    /// connection, if that is still the one it came from.
    fn release(&mut self, req: RequestId) -> Option<usize> {
        let key = self.local_of(req);
        self.by_req.remove(&req);
        let key = key?;
        self.locals[key].req = None;
        Some(key)
    }

    /// Performs what the session asks for, in order.
    fn perform(&mut self, io: &mut Io<'_>) {
        while let Some(action) = self.session.poll_action() {
            self.act(io, action);
        }
    }

    fn act(&mut self, io: &mut Io<'_>, action: Action) {
        let now = io.now;
        match action {
            Action::Resolve { conn, host, port } => self.resolve(io, conn, &host, port),
            Action::Dial { conn, addr } => match io.connect(addr, &self.shared.pool.server_name) {
                Ok(ch) => {
                    self.conns.ch.insert(conn, ch);
                    self.conns.id.insert(ch, conn);
                }
                Err(e) => {
                    crate::warn_limited!("cannot connect to {addr}: {e}");
                    self.session.connection_lost(now, conn, false, &e);
                }
            },
            Action::Authenticate {
                conn,
                control,
                request,
            } => {
                let qc = self.conns.ch.get(&conn).and_then(|&ch| io.conn(ch));
                let stream = qc.and_then(|qc| {
                    if let Some(id) = qc.streams().open(Dir::Uni) {
                        let _ = qc.send_stream(id).write(&control);
                    }
                    let id = qc.streams().open(Dir::Bi)?;
                    let mut s = qc.send_stream(id);
                    let _ = s.write(&request);
                    let _ = s.finish();
                    Some(id)
                });
                self.session.auth_sent(conn, stream);
            }
            Action::SendRate {
                conn,
                bytes_per_sec,
            } => {
                if let Some(&ch) = self.conns.ch.get(&conn) {
                    io.set_send_rate(ch, bytes_per_sec);
                }
            }
            Action::OpenStream { conn, req } => {
                let stream = self
                    .conns
                    .ch
                    .get(&conn)
                    .and_then(|&ch| io.conn(ch))
                    .and_then(|qc| qc.streams().open(Dir::Bi));
                self.session.stream_opened(now, req, stream);
            }
            Action::WriteRequest {
                req,
                conn,
                stream,
                bytes,
            } => {
                let (Some(key), Some(&ch)) = (self.local_of(req), self.conns.ch.get(&conn)) else {
                    return;
                };
                let written = io
                    .conn(ch)
                    .and_then(|qc| qc.send_stream(stream).write(&bytes).ok())
                    .unwrap_or(0);
                let l = &mut self.locals[key];
                l.to_quic = bytes[written.min(bytes.len())..].to_vec();
                l.stream = Some((ch, stream));
                self.by_stream.insert((ch, stream), (key, l.gen));
            }
            Action::ReplyLocal { req, bytes } => {
                if let Some(key) = self.local_of(req) {
                    self.send(io, key, &bytes);
                }
            }
            Action::StartPump {
                req,
                conn,
                stream,
                to_local,
            } => {
                let (Some(key), Some(&ch)) = (self.local_of(req), self.conns.ch.get(&conn)) else {
                    return;
                };
                let l = &mut self.locals[key];
                let to_quic = std::mem::take(&mut l.to_quic);
                l.phase = match l.exchange.take() {
                    Some(x) => {
                        let next = std::mem::take(&mut l.next);
                        let mut relay = HttpRelay::new(ch, stream, x, &to_local, to_quic, next);
                        if !l.sending {
                            relay.attach(l.sock);
                        }
                        Phase::Exchange(Box::new(relay))
                    }
                    None => {
                        let mut pipe =
                            Pipe::new(ch, stream, Ends::QuicFinCloses, to_local, to_quic);
                        if !l.sending {
                            pipe.attach(l.sock);
                        }
                        Phase::Relay(pipe)
                    }
                };
                self.pump(io, key);
            }
            Action::CloseLocal {
                req,
                reply,
                code,
                why,
            } => {
                let Some(key) = self.release(req) else {
                    return;
                };
                let l = &mut self.locals[key];
                tracing::info!("{} -> {why}; answered {code}", l.peer);
                if let Some(k) = l.stream.take() {
                    self.by_stream.remove(&k);
                }
                self.close_with(io, key, &reply);
            }
            Action::EndStream { conn, stream } => {
                if let Some(qc) = self.conns.ch.get(&conn).and_then(|&ch| io.conn(ch)) {
                    let _ = qc.recv_stream(stream).stop(VarInt::from_u32(0));
                    crate::worker::pipe::finish_or_reset(qc, stream);
                }
            }
            Action::ResetStream { conn, stream, code } => {
                if let Some(qc) = self.conns.ch.get(&conn).and_then(|&ch| io.conn(ch)) {
                    let code = VarInt::from_u64(code).unwrap_or(VarInt::from_u32(STREAM_ABORT));
                    let _ = qc.send_stream(stream).reset(code);
                    let _ = qc.recv_stream(stream).stop(code);
                }
            }
            Action::AbortPump(req) => {
                let Some(key) = self.release(req) else {
                    return;
                };
                let l = &mut self.locals[key];
                let tok = token(TokenKind::Local, key, l.gen);
                let removed = match &mut l.phase {
                    Phase::Relay(pipe) => {
                        if pipe.sock().is_none() {
                            pipe.attach(l.sock);
                        }
                        pipe.abort(io, tok) == After::Remove
                    }
                    Phase::Exchange(relay) => {
                        if relay.sock().is_none() {
                            relay.attach(l.sock);
                        }
                        relay.abort(io, tok) == http_relay::After::Remove
                    }
                    _ => false,
                };
                if removed {
                    self.remove(io, key);
                }
            }
            Action::CloseConn(conn) => {
                if let Some(ch) = self.conns.ch.remove(&conn) {
                    self.conns.id.remove(&ch);
                    if let Some(qc) = io.conn(ch) {
                        qc.close(now, 0u32.into(), b""[..].into());
                    }
                    self.conn_gone(conn, ch);
                }
            }
        }
    }

    /// Asks the resolver for the server's addresses; the answer comes back through
    /// [`Lookups`] to [`Self::lookups_done`].
    fn resolve(&mut self, io: &mut Io<'_>, conn: ConnId, host: &str, port: u16) {
        let Some(resolver) = &self.shared.resolver else {
            let why = "no resolver for a server given by name".to_string();
            return self.session.resolved(io.now, conn, Err(why));
        };
        let lookups = self
            .lookups
            .get_or_insert_with(|| Lookups::new(io.driver.waker()));
        let (reply, waker) = (lookups.reply.clone(), lookups.waker.clone());
        let done = Box::new(move |addrs: crate::resolve::Addrs| {
            let _ = reply.send((conn, addrs.map_err(|e| e.to_string())));
            waker.wake();
        });
        if let Err(e) = resolver.lookup(host, port, done) {
            self.session.resolved(io.now, conn, Err(e.to_string()));
        }
    }

    /// Hands the session the lookups answered since the last tick.
    fn lookups_done(&mut self, io: &mut Io<'_>) {
        let Some(lookups) = &self.lookups else {
            return;
        };
        let answers: Vec<Lookup> = lookups.answers.try_iter().collect();
        for (conn, answer) in answers {
            self.session.resolved(io.now, conn, answer);
        }
        self.perform(io);
    }

    /// Lets go of what the adapter holds for a connection that is gone.
    fn conn_gone(&mut self, conn: ConnId, ch: ConnectionHandle) {
        self.by_stream.retain(|(c, _), _| *c != ch);
        self.udp.sessions.connection_lost(conn);
    }

    fn pump(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &mut self.locals[key];
        let tok = token(TokenKind::Local, key, l.gen);
        let removed = match &mut l.phase {
            Phase::Relay(pipe) => pipe.pump(io, tok) == After::Remove,
            Phase::Exchange(relay) => {
                let after = relay.pump(io, tok);
                return self.exchange_progress(io, key, after);
            }
            _ => false,
        };
        if removed {
            self.remove(io, key);
        }
    }

    /// Acts on what an exchange's relay said: the local goes, or reads its next request.
    fn exchange_progress(&mut self, io: &mut Io<'_>, key: usize, after: http_relay::After) {
        match after {
            http_relay::After::Continue => {}
            http_relay::After::Remove => self.remove(io, key),
            http_relay::After::Next => self.next_request(io, key),
        }
    }

    /// A forwarded request and its response are complete and the connection stays open:
    /// the session lets go of the request, and the bytes after it start the next one.
    fn next_request(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &mut self.locals[key];
        let (Phase::Exchange(relay), Front::Http { auth, .. }) = (&mut l.phase, &l.front) else {
            return;
        };
        let next = relay.take_next();
        let reader = ProxyRequestReader::new(http_proxy::Limits::default(), auth.clone());
        l.phase = Phase::Http(Box::new(reader));
        l.target.clear();
        self.release_request(io, key);
        if next.is_empty() {
            self.recv(io, key);
        } else {
            self.on_http_bytes(io, key, &next);
        }
    }

    /// Writes `reply` (possibly nothing), half-closes, drains until EOF, then closes.
    fn close_with(&mut self, io: &mut Io<'_>, key: usize, reply: &[u8]) {
        let l = &mut self.locals[key];
        let until = io.now + LINGER;
        l.phase = Phase::Closing { drained: 0, until };
        self.timers.push(Reverse((until, key, l.gen)));
        self.send(io, key, reply);
        self.progress_closing(io, key);
    }

    fn progress_closing(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &mut self.locals[key];
        if l.sending || l.closing {
            return;
        }
        let Phase::Closing { drained, .. } = l.phase else {
            return;
        };
        if drained == 0 && !l.receiving {
            io.driver.tcp_shutdown_write(l.sock);
        }
        if drained >= LINGER_BYTES {
            return self.close(io, key);
        }
        self.recv(io, key);
    }

    fn close(&mut self, io: &mut Io<'_>, key: usize) {
        self.release_request(io, key);
        let l = &mut self.locals[key];
        if !l.closing {
            l.closing = true;
            io.driver
                .sock_close(l.sock, token(TokenKind::Local, key, l.gen));
        }
    }

    /// The local is going away: the session lets go of its request.
    fn release_request(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &mut self.locals[key];
        if let Some(k) = l.stream.take() {
            self.by_stream.remove(&k);
        }
        if let Some(req) = l.req.take() {
            self.by_req.remove(&req);
            self.session.request_closed(io.now, req);
            self.perform(io);
        }
    }

    fn remove(&mut self, io: &mut Io<'_>, key: usize) {
        if !self.locals.contains(key) {
            return;
        }
        self.release_request(io, key);
        if let Some(l) = self.locals.try_remove(key) {
            if let Phase::Udp { sock } = l.phase {
                self.udp.control_closed(io, sock);
            }
        }
    }

    fn on_local(&mut self, io: &mut Io<'_>, key: usize, gen: u32, c: Completion) {
        match self.locals.get(key) {
            Some(l) if l.gen == gen => {}
            _ => return,
        }
        let tok = c.token;
        if c.op == SockOp::Close {
            return self.remove(io, key);
        }
        let l = &mut self.locals[key];
        // The pipe (or the exchange's relay) owns the socket's operations once attached.
        match &mut l.phase {
            Phase::Relay(pipe) if pipe.sock().is_some() => {
                if pipe.on_completion(io, c, tok) == After::Remove {
                    self.remove(io, key);
                }
                return;
            }
            Phase::Exchange(relay) if relay.sock().is_some() => {
                let after = relay.on_completion(io, c, tok);
                return self.exchange_progress(io, key, after);
            }
            _ => {}
        }
        match c.op {
            SockOp::Send => {
                l.sending = false;
                let mut buf = c.buf;
                match c.result {
                    Ok(n) if n < buf.len() => {
                        buf.drain(..n);
                        buf.append(&mut l.out);
                        l.out = buf;
                    }
                    Ok(_) => {}
                    Err(_) => return self.close(io, key),
                }
                flush(io, key, l);
                if !l.sending {
                    match &mut l.phase {
                        Phase::Relay(pipe) => pipe.attach(l.sock),
                        Phase::Exchange(relay) => relay.attach(l.sock),
                        _ => return self.progress_closing(io, key),
                    }
                    return self.pump(io, key);
                }
                self.progress_closing(io, key);
            }
            SockOp::Recv => {
                l.receiving = false;
                let n = c.result.unwrap_or_default();
                let data = &c.buf[..n];
                match &mut l.phase {
                    Phase::Closing { drained, .. } => {
                        *drained += n;
                        if n == 0 {
                            return self.close(io, key);
                        }
                        self.progress_closing(io, key)
                    }
                    Phase::Udp { .. } => {
                        // The association lives as long as this connection; its bytes are
                        // ignored (RFC 1928 §7).
                        if n == 0 {
                            return self.close(io, key);
                        }
                        self.recv(io, key);
                    }
                    _ if n == 0 => self.close(io, key),
                    Phase::Socks(_) => self.on_socks_bytes(io, key, data.to_vec()),
                    Phase::Http(_) => self.on_http_bytes(io, key, data),
                    Phase::Session | Phase::Relay(_) | Phase::Exchange(_) => {}
                }
            }
            _ => {}
        }
    }

    fn on_http_bytes(&mut self, io: &mut Io<'_>, key: usize, data: &[u8]) {
        let l = &mut self.locals[key];
        let Phase::Http(reader) = &mut l.phase else {
            return;
        };
        match reader.feed(data) {
            Ok(None) => self.recv(io, key),
            Ok(Some(req)) => {
                let mut leftover = reader.take_leftover();
                let (target, head, ok, mut exchange) = match req {
                    ProxyRequest::Connect { target } => {
                        (target, Vec::new(), http_proxy::response_connected(), None)
                    }
                    ProxyRequest::Forward {
                        target,
                        head,
                        exchange,
                    } => (target, head, Vec::new(), exchange),
                };
                // Bytes after this request's body are the next request's.
                let next = match &mut exchange {
                    Some(x) => {
                        let body = x.request_bytes(&leftover).min(leftover.len());
                        leftover.split_off(body)
                    }
                    None => Vec::new(),
                };
                let l = &mut self.locals[key];
                l.target = target;
                l.to_quic = head;
                l.to_quic.extend_from_slice(&leftover);
                l.ok_reply = ok;
                l.exchange = exchange;
                l.next = next;
                self.enqueue(io, key);
            }
            Err(e) => {
                tracing::info!("{}: HTTP proxy request refused: {e}", l.peer);
                let reply = match &l.front {
                    Front::Http { realm, .. } => e.response_in(realm),
                    _ => e.response(),
                };
                self.close_with(io, key, &reply);
            }
        }
    }

    fn on_socks_bytes(&mut self, io: &mut Io<'_>, key: usize, mut data: Vec<u8>) {
        loop {
            let l = &mut self.locals[key];
            let Phase::Socks(srv) = &mut l.phase else {
                return;
            };
            match srv.feed(&data) {
                Ok(Step::NeedMore) => return self.recv(io, key),
                Ok(Step::Reply(bytes)) => {
                    self.send(io, key, &bytes);
                    data.clear();
                }
                Ok(Step::Request { cmd, dest }) => {
                    let leftover = srv.take_leftover();
                    return match cmd {
                        Command::Connect => {
                            l.target = dest.to_host_port();
                            l.to_quic = leftover;
                            l.ok_reply = socks5::reply(ReplyCode::Succeeded, unspecified());
                            self.enqueue(io, key);
                        }
                        Command::UdpAssociate => self.associate(io, key),
                    };
                }
                Err(e) => {
                    tracing::info!("{}: SOCKS5 refused: {e}", l.peer);
                    let reply = e.reply().bytes().unwrap_or_default();
                    return self.close_with(io, key, &reply);
                }
            }
        }
    }

    /// UDP ASSOCIATE: a UDP socket on the listener's address for this client.
    fn associate(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &self.locals[key];
        let udp_allowed = matches!(l.front, Front::Socks5 { udp: true, .. });
        if !udp_allowed {
            tracing::info!("{}: UDP ASSOCIATE refused: socks5.disableUDP", l.peer);
            let reply = socks5::reply(ReplyCode::CommandNotSupported, unspecified());
            return self.close_with(io, key, &reply);
        }
        let Front::Socks5 { bind_ip, .. } = l.front else {
            return;
        };
        match self.udp.associate(io, bind_ip, l.peer.ip()) {
            Ok((sock, addr)) => {
                self.locals[key].phase = Phase::Udp { sock };
                self.send(io, key, &socks5::reply(ReplyCode::Succeeded, addr));
                self.recv(io, key);
            }
            Err(e) => {
                crate::warn_limited!("UDP ASSOCIATE: cannot open a socket: {e}");
                let reply = socks5::reply(ReplyCode::GeneralFailure, unspecified());
                self.close_with(io, key, &reply);
            }
        }
    }

    fn expire(&mut self, io: &mut Io<'_>) {
        while let Some(Reverse((at, key, gen))) = self.timers.peek().copied() {
            if at > io.now {
                break;
            }
            self.timers.pop();
            let Some(l) = self.locals.get(key) else {
                continue;
            };
            if l.gen != gen {
                continue;
            }
            if let Phase::Closing { until, .. } = l.phase {
                if at >= until {
                    self.close(io, key);
                }
            }
        }
        if self.accept_retry.is_some_and(|at| at <= io.now) {
            self.accept_retry = None;
            self.post_accepts(io);
        }
        let wants = self.udp.sessions.wants_connection();
        self.session.set_udp_waiting(io.now, wants);
        self.udp.sessions.expire(io.now);
        let udp = &self.udp.sessions;
        self.session.handle_timeout(io.now, |conn| udp.uses(conn));
        self.perform(io);
    }

    /// Reads a stream whose bytes the session wants (the auth answer, a TCPResponse),
    /// chunk by chunk while it still wants them, so that a relay's bytes stay in the stream
    /// for its pipe.
    fn read_for_session(
        &mut self,
        io: &mut Io<'_>,
        conn: ConnId,
        ch: ConnectionHandle,
        id: StreamId,
    ) {
        let now = io.now;
        let Some(qc) = io.conn(ch) else {
            return;
        };
        let session = &mut self.session;
        let mut read = 0;
        let want = |session: &mut Session, read: usize| {
            if session.reading(conn, id) && read <= MAX_SESSION_READ {
                tcp::MAX_TCP_RESPONSE_LEN
            } else {
                0
            }
        };
        let first = want(session, 0);
        let r = stream::read(qc, id, first, |bytes| {
            read += bytes.len();
            session.stream_data(now, conn, id, &bytes, false);
            want(session, read)
        });
        match r.end {
            ReadEnd::Fin => session.stream_data(now, conn, id, &[], true),
            ReadEnd::Reset(_) | ReadEnd::Closed => session.stream_reset(now, conn, id),
            ReadEnd::Blocked | ReadEnd::Paused => {}
        }
    }
}

/// Bytes read at once from a stream for the session (an auth answer's padding is at most
/// 2 KiB; a TCPResponse's at most 4 KiB).
const MAX_SESSION_READ: usize = 64 * 1024;

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Starts the next handshake send of `l`, if any and none is in flight.
fn flush(io: &mut Io<'_>, key: usize, l: &mut Local) {
    if !l.sending && !l.out.is_empty() && !l.closing {
        l.sending = true;
        let buf = std::mem::take(&mut l.out);
        io.driver
            .tcp_send(l.sock, buf, token(TokenKind::Local, key, l.gen));
    }
}

impl App for ClientApp {
    fn tick(&mut self, io: &mut Io<'_>) {
        if self.sockets.is_some() {
            self.start(io);
        }
        self.lookups_done(io);
        self.expire(io);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        [
            timer,
            self.accept_retry,
            self.session.poll_timeout(Instant::now()),
            self.udp.sessions.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_event(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, event: Event) {
        let Some(&conn) = self.conns.id.get(&ch) else {
            return;
        };
        match event {
            Event::Connected => self.session.connected(conn),
            Event::ConnectionLost { reason } => {
                let by_peer = matches!(
                    reason,
                    quinn_proto::ConnectionError::ApplicationClosed(_)
                        | quinn_proto::ConnectionError::ConnectionClosed(_)
                );
                self.session.connection_lost(io.now, conn, by_peer, &reason);
                self.perform(io);
                self.conns.ch.remove(&conn);
                self.conns.id.remove(&ch);
                self.conn_gone(conn, ch);
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Bi }) => {
                self.session.credit(io.now, conn)
            }
            Event::Stream(StreamEvent::Opened { dir }) => {
                // The server's HTTP/3 control and QPACK streams: read and ignore. It opens
                // no bidirectional streams in Hysteria2; refuse any.
                if let Some(qc) = io.conn(ch) {
                    while let Some(id) = qc.streams().accept(dir) {
                        if dir == Dir::Bi {
                            let _ = qc.send_stream(id).reset(VarInt::from_u32(0x10c));
                            let _ = qc.recv_stream(id).stop(VarInt::from_u32(0x10c));
                        }
                    }
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                if id.dir() == Dir::Uni {
                    return drain(io, ch, id);
                }
                if self.session.reading(conn, id) {
                    self.read_for_session(io, conn, ch, id);
                    self.perform(io);
                    let chs = &self.conns.ch;
                    self.udp
                        .flush_pending(io, self.session.pool(), |c| chs.get(&c).copied());
                    return;
                }
                self.on_stream(io, ch, id);
            }
            Event::Stream(StreamEvent::Writable { id })
            | Event::Stream(StreamEvent::Stopped { id, .. }) => self.on_stream(io, ch, id),
            Event::DatagramReceived => {
                let chs = &self.conns.ch;
                self.udp
                    .on_datagrams(io, conn, ch, |c| chs.get(&c).copied());
            }
            _ => {}
        }
        self.perform(io);
    }

    fn on_sock(&mut self, io: &mut Io<'_>, c: Completion) {
        match token::split(c.token) {
            (TokenKind::Listener, key, _) => self.on_accept(io, key, c),
            (TokenKind::Local, key, gen) => self.on_local(io, key, gen, c),
            (TokenKind::Udp, ..) => {
                let chs = &self.conns.ch;
                self.udp
                    .on_completion(io, c, self.session.pool(), |c| chs.get(&c).copied());
                if self.udp.sessions.wants_connection() {
                    self.session.set_udp_waiting(io.now, true);
                    self.perform(io);
                }
            }
            (TokenKind::Orphan, ..) => {
                // A socket handed to us for nobody (an accept after its listener closed).
                if let (SockOp::Accept, Some(sock)) = (c.op, c.accepted) {
                    io.driver.sock_close(sock, token(TokenKind::Orphan, 0, 0));
                }
            }
        }
    }
}

impl ClientApp {
    fn on_stream(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
        let Some(&(key, gen)) = self.by_stream.get(&(ch, id)) else {
            return;
        };
        match self.locals.get(key) {
            Some(l) if l.gen == gen => {
                if let Phase::Relay(_) | Phase::Exchange(_) = l.phase {
                    self.pump(io, key);
                }
            }
            _ => {
                self.by_stream.remove(&(ch, id));
            }
        }
    }
}

/// Reads and discards a unidirectional stream of the server's (HTTP/3 control, QPACK).
fn drain(io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
    if let Some(qc) = io.conn(ch) {
        stream::discard(qc, id);
    }
}
