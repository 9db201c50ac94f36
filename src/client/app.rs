//! One worker of the client role: its share of the local listeners, the local connections
//! they accept, and the pool of QUIC connections that carries them.
//!
//! A local TCP connection goes through: the front end's handshake (SOCKS5 or HTTP proxy;
//! none for a forwarder), a place in the worker's FIFO of requests waiting for a stream,
//! the Hysteria2 TCPRequest and its response, then a [`Pipe`]. The SOCKS5/HTTP success
//! reply is only sent once the server connected to the target, so a refusal can still be
//! reported as one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{ConnectionHandle, Dir, Event, ReadError, StreamEvent, StreamId, VarInt};
use slab::Slab;

use super::auth::AuthExchange;
use super::http_proxy::{self, ProxyRequest, ProxyRequestReader};
use super::pool::{AuthStep, Pool, PoolConfig};
use super::socks5::{self, Command, ReplyCode, Socks5Server, Step};
use super::stats::PoolStats;
use super::token::{self, token, TokenKind};
use super::udp::{Udp, UdpForward};
use crate::engine::{Completion, Sock, SockOp};
use crate::proto::tcp::{self, TcpRequest, TcpResponse};
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
    /// In the worker's queue for a stream since `since`.
    Waiting {
        since: Instant,
    },
    /// TCPRequest sent on `id`; reading the TCPResponse into `resp`. `since`:
    /// when the request started waiting; `early`: the bytes sent after the TCPRequest, to
    /// send again if the request goes back to the queue.
    Opening {
        ch: ConnectionHandle,
        id: StreamId,
        resp: Vec<u8>,
        since: Instant,
        early: Vec<u8>,
    },
    /// Bytes flow; `pipe.sock()` is unset until the handshake's last send completed.
    Relay(Pipe),
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
    /// `host:port` for the TCPRequest.
    target: String,
    /// Bytes for the stream after the TCPRequest (an HTTP head, early payload).
    to_quic: Vec<u8>,
    /// Bytes for the app once the server connected (a SOCKS5 or HTTP success reply).
    ok_reply: Vec<u8>,
    /// Handshake bytes for the app not yet sent, and whether a send or receive of the
    /// handshake is in flight.
    out: Vec<u8>,
    sending: bool,
    receiving: bool,
    /// A close was requested.
    closing: bool,
    /// The success reply went out before the server confirmed (`fastOpen`).
    replied: bool,
}

pub struct ClientApp {
    shared: Arc<ClientShared>,
    sockets: Option<LocalSockets>,
    listeners: Vec<Listener>,
    accept_retry: Option<Instant>,
    locals: Slab<Local>,
    generation: u32,
    /// Requests waiting for a stream, oldest first (stale entries are skipped).
    waiting: VecDeque<(usize, u32)>,
    /// Locals in `Phase::Waiting`: the live entries of `waiting`.
    n_waiting: usize,
    /// Deadlines of waiting and lingering locals (stale entries are skipped).
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    by_stream: HashMap<(ConnectionHandle, StreamId), (usize, u32)>,
    pool: Pool<ConnectionHandle>,
    udp: Udp,
}

impl ClientApp {
    pub fn new(shared: Arc<ClientShared>, sockets: LocalSockets, worker: usize) -> Self {
        let now = Instant::now();
        ClientApp {
            pool: Pool::new(
                shared.pool.clone(),
                shared.stats.clone(),
                crate::worker::WorkerId(worker as u8),
                now,
            ),
            udp: Udp::new(shared.stats.clone(), worker),
            shared,
            sockets: Some(sockets),
            listeners: Vec::new(),
            accept_retry: None,
            locals: Slab::new(),
            generation: 0,
            waiting: VecDeque::new(),
            n_waiting: 0,
            timers: BinaryHeap::new(),
            by_stream: HashMap::new(),
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
            Front::Forward { remote } => (Phase::Waiting { since: io.now }, remote.clone()),
        };
        let key = self.locals.insert(Local {
            gen,
            sock,
            peer,
            front,
            phase,
            target,
            to_quic: Vec::new(),
            ok_reply: Vec::new(),
            out: Vec::new(),
            sending: false,
            receiving: false,
            closing: false,
            replied: false,
        });
        if matches!(self.locals[key].phase, Phase::Waiting { .. }) {
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

    fn enqueue(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &mut self.locals[key];
        if self.shared.fast_open && !l.ok_reply.is_empty() {
            l.replied = true;
            let reply = std::mem::take(&mut l.ok_reply);
            self.send(io, key, &reply);
        }
        let l = &mut self.locals[key];
        l.phase = Phase::Waiting { since: io.now };
        self.waiting.push_back((key, l.gen));
        let deadline = io.now + self.shared.stream_open_timeout;
        self.timers.push(Reverse((deadline, key, l.gen)));
        self.wait_started();
    }

    fn wait_started(&mut self) {
        self.n_waiting += 1;
        self.shared.stats.wait_started();
    }

    /// A local leaves `Phase::Waiting`.
    fn wait_ended(&mut self) {
        self.n_waiting = self.n_waiting.saturating_sub(1);
        self.shared.stats.wait_ended();
    }

    /// Puts the requests sent on `ch`, which never answered, back in the queue in arrival
    /// order, to go out on another connection. Their `pool.streamOpenTimeout` still counts
    /// from their arrival.
    fn requeue(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        let on_ch: Vec<_> = self
            .by_stream
            .iter()
            .filter(|((c, _), _)| *c == ch)
            .map(|(k, v)| (*k, *v))
            .collect();
        let mut back = Vec::new();
        for (k, (key, gen)) in on_ch {
            let Some(l) = self.locals.get_mut(key).filter(|l| l.gen == gen) else {
                self.by_stream.remove(&k);
                continue;
            };
            let Phase::Opening {
                resp, since, early, ..
            } = &mut l.phase
            else {
                continue;
            };
            if !resp.is_empty() {
                continue;
            }
            let since = *since;
            l.to_quic = std::mem::take(early);
            l.phase = Phase::Waiting { since };
            self.by_stream.remove(&k);
            self.pool.stream_closed(ch, io.now);
            back.push((since, key, gen));
        }
        if back.is_empty() {
            return;
        }
        tracing::debug!(
            "{:?}: {} request(s) back in the queue",
            io.worker,
            back.len()
        );
        self.shared
            .stats
            .requeued
            .fetch_add(back.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for &(since, key, gen) in &back {
            self.wait_started();
            // Its first deadline may have passed while it was out of the queue.
            self.timers
                .push(Reverse((since + self.shared.stream_open_timeout, key, gen)));
        }
        back.sort();
        let mut merged = VecDeque::with_capacity(self.waiting.len() + back.len());
        let mut back = back.into_iter().peekable();
        for (key, gen) in self.waiting.drain(..) {
            let since = match self.locals.get(key) {
                Some(Local {
                    gen: g,
                    phase: Phase::Waiting { since },
                    ..
                }) if *g == gen => *since,
                _ => continue,
            };
            while let Some(&(s, k, g)) = back.peek() {
                if s > since {
                    break;
                }
                merged.push_back((k, g));
                back.next();
            }
            merged.push_back((key, gen));
        }
        merged.extend(back.map(|(_, k, g)| (k, g)));
        self.waiting = merged;
    }

    /// Hands streams to waiting requests while connections have credit, then lets the pool
    /// grow if requests are still waiting.
    fn dispatch(&mut self, io: &mut Io<'_>) {
        while let Some(&(key, gen)) = self.waiting.front() {
            let since = match self.locals.get(key) {
                Some(l) if l.gen == gen => match l.phase {
                    Phase::Waiting { since } => since,
                    _ => {
                        self.waiting.pop_front();
                        continue;
                    }
                },
                _ => {
                    self.waiting.pop_front();
                    continue;
                }
            };
            let Some(i) = self.pool.pick() else {
                break;
            };
            let ch = self.pool.conns[i].ch;
            let id = io.conn(ch).and_then(|qc| qc.streams().open(Dir::Bi));
            let Some(id) = id else {
                self.pool.out_of_credit(i);
                continue;
            };
            self.pool.stream_opened(i, io.now);
            self.waiting.pop_front();
            self.wait_ended();
            self.shared.stats.stream_opened(
                io.worker.0 as usize,
                io.now.saturating_duration_since(since),
            );
            self.open_stream(io, key, ch, id, since);
        }
        let oldest = self
            .waiting
            .iter()
            .find_map(|&(key, gen)| match self.locals.get(key) {
                Some(Local {
                    gen: g,
                    phase: Phase::Waiting { since },
                    ..
                }) if *g == gen => Some(io.now.saturating_duration_since(*since)),
                _ => None,
            });
        let waiting = self.n_waiting + self.udp.wants_connection() as usize;
        let (server, name) = (self.shared.pool.server, &self.shared.pool.server_name);
        let now = io.now;
        self.pool
            .maybe_grow(now, waiting, oldest.unwrap_or(Duration::ZERO), || {
                io.connect(server, name)
            });
    }

    fn open_stream(
        &mut self,
        io: &mut Io<'_>,
        key: usize,
        ch: ConnectionHandle,
        id: StreamId,
        since: Instant,
    ) {
        let l = &mut self.locals[key];
        let mut req = Vec::with_capacity(600 + l.to_quic.len());
        let padding = tcp::padding(
            &mut rand::thread_rng(),
            tcp::REQUEST_PADDING.0,
            tcp::REQUEST_PADDING.1,
        );
        if let Err(e) = TcpRequest::encode(&l.target, &padding, &mut req) {
            let msg = format!("bad target {:?}: {e}", l.target);
            if let Some(qc) = io.conn(ch) {
                let _ = qc.send_stream(id).reset(VarInt::from_u32(STREAM_ABORT));
            }
            self.pool.stream_closed(ch, io.now);
            return self.refuse(io, key, Refusal::Target(msg));
        }
        let early = l.to_quic.clone();
        req.extend_from_slice(&l.to_quic);
        let written = io
            .conn(ch)
            .and_then(|qc| qc.send_stream(id).write(&req).ok())
            .unwrap_or(0);
        l.to_quic = req.split_off(written);
        l.phase = Phase::Opening {
            ch,
            id,
            resp: Vec::new(),
            since,
            early,
        };
        self.by_stream.insert((ch, id), (key, l.gen));
    }

    /// Reads the TCPResponse; on success the pipe takes over.
    fn on_opening_readable(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &mut self.locals[key];
        let Phase::Opening { ch, id, resp, .. } = &mut l.phase else {
            return;
        };
        let (ch, id) = (*ch, *id);
        let mut fin = false;
        let mut reset = false;
        if let Some(qc) = io.conn(ch) {
            match qc.recv_stream(id).read(true) {
                Ok(mut chunks) => {
                    loop {
                        match chunks.next(tcp::MAX_TCP_RESPONSE_LEN) {
                            Ok(Some(c)) => {
                                resp.extend_from_slice(&c.bytes);
                                if TcpResponse::parse(resp).ok().flatten().is_some() {
                                    break;
                                }
                            }
                            Ok(None) => {
                                fin = true;
                                break;
                            }
                            Err(ReadError::Blocked) => break,
                            Err(ReadError::Reset(_)) => {
                                reset = true;
                                break;
                            }
                        }
                    }
                    let _ = chunks.finalize();
                }
                Err(_) => reset = true,
            }
        }
        if !resp.is_empty() {
            self.pool.answered(ch);
        }
        let parsed = TcpResponse::parse(resp);
        let refusal = match parsed {
            Ok(Some((r, n))) if r.is_ok() => {
                let mut to_tcp = std::mem::take(&mut l.ok_reply);
                to_tcp.extend_from_slice(&resp[n..]);
                let to_quic = std::mem::take(&mut l.to_quic);
                let mut pipe = Pipe::new(ch, id, Ends::QuicFinCloses, to_tcp, to_quic);
                if fin {
                    // Everything the target sent is in `to_tcp`; the pipe sees the end.
                    tracing::trace!("stream {id} finished with its response");
                }
                if !l.sending {
                    pipe.attach(l.sock);
                }
                l.phase = Phase::Relay(pipe);
                return self.pump(io, key);
            }
            Ok(Some((r, _))) => Refusal::Server(r.message),
            Err(e) => Refusal::Server(format!("malformed response: {e}")),
            Ok(None) if reset || fin => Refusal::Server("the server closed the stream".into()),
            Ok(None) => return,
        };
        if let Some(qc) = io.conn(ch) {
            let _ = qc.recv_stream(id).stop(VarInt::from_u32(0));
            crate::worker::pipe::finish_or_reset(qc, id);
        }
        self.refuse(io, key, refusal);
    }

    fn pump(&mut self, io: &mut Io<'_>, key: usize) {
        let l = &mut self.locals[key];
        let tok = token(TokenKind::Local, key, l.gen);
        if let Phase::Relay(pipe) = &mut l.phase {
            if pipe.pump(io, tok) == After::Remove {
                self.remove(io, key);
            }
        }
    }

    /// Answers the app with the front end's refusal, then drains and closes.
    fn refuse(&mut self, io: &mut Io<'_>, key: usize, why: Refusal) {
        let l = &self.locals[key];
        let (code, reply) = match (&l.front, &why) {
            (Front::Socks5 { .. }, Refusal::NoStream(_)) => (
                "0x01",
                socks5::reply(ReplyCode::GeneralFailure, unspecified()),
            ),
            (Front::Socks5 { .. }, Refusal::Server(_)) => (
                "0x05",
                socks5::reply(ReplyCode::ConnectionRefused, unspecified()),
            ),
            (Front::Socks5 { .. }, Refusal::Target(_)) => (
                "0x04",
                socks5::reply(ReplyCode::HostUnreachable, unspecified()),
            ),
            (Front::Http { .. }, Refusal::NoStream(_)) => {
                ("503", http_proxy::response_unavailable(&why.to_string()))
            }
            (Front::Http { .. }, _) => ("502", http_proxy::response_bad_gateway(&why.to_string())),
            (Front::Forward { .. }, _) => ("close", Vec::new()),
        };
        let (code, reply) = if l.replied {
            ("close", Vec::new())
        } else {
            (code, reply)
        };
        tracing::info!(
            "{} -> {}: {why}; answered {code}",
            l.peer,
            if l.target.is_empty() { "?" } else { &l.target }
        );
        if let Some(k) = self.stream_of(key) {
            self.by_stream.remove(&k);
            self.pool.stream_closed(k.0, io.now);
        }
        self.close_with(io, key, &reply);
    }

    fn stream_of(&self, key: usize) -> Option<(ConnectionHandle, StreamId)> {
        match &self.locals.get(key)?.phase {
            Phase::Opening { ch, id, .. } => Some((*ch, *id)),
            Phase::Relay(p) => Some((p.ch, p.id)),
            _ => None,
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
        let l = &mut self.locals[key];
        if let Phase::Waiting { .. } = l.phase {
            l.phase = Phase::Closing {
                drained: 0,
                until: io.now,
            };
            self.wait_ended();
        }
        let l = &mut self.locals[key];
        if !l.closing {
            l.closing = true;
            io.driver
                .sock_close(l.sock, token(TokenKind::Local, key, l.gen));
        }
    }

    fn remove(&mut self, io: &mut Io<'_>, key: usize) {
        if let Some(k) = self.stream_of(key) {
            self.by_stream.remove(&k);
            self.pool.stream_closed(k.0, io.now);
        }
        if let Some(l) = self.locals.try_remove(key) {
            if let Phase::Waiting { .. } = l.phase {
                self.wait_ended();
            }
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
        // The pipe owns the socket's operations once attached.
        if let Phase::Relay(pipe) = &mut l.phase {
            if pipe.sock().is_some() {
                if pipe.on_completion(io, c, tok) == After::Remove {
                    self.remove(io, key);
                }
                return;
            }
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
                    if let Phase::Relay(pipe) = &mut l.phase {
                        pipe.attach(l.sock);
                        return self.pump(io, key);
                    }
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
                    Phase::Http(reader) => match reader.feed(data) {
                        Ok(None) => self.recv(io, key),
                        Ok(Some(req)) => {
                            let leftover = reader.take_leftover();
                            let (target, head, ok) = match req {
                                ProxyRequest::Connect { target } => {
                                    (target, Vec::new(), http_proxy::response_connected())
                                }
                                ProxyRequest::Forward { target, head } => {
                                    (target, head, Vec::new())
                                }
                            };
                            let l = &mut self.locals[key];
                            l.target = target;
                            l.to_quic = head;
                            l.to_quic.extend_from_slice(&leftover);
                            l.ok_reply = ok;
                            self.enqueue(io, key);
                            self.dispatch(io);
                        }
                        Err(e) => {
                            tracing::info!("{}: HTTP proxy request refused: {e}", l.peer);
                            let reply = match &l.front {
                                Front::Http { realm, .. } => e.response_in(realm),
                                _ => e.response(),
                            };
                            self.close_with(io, key, &reply);
                        }
                    },
                    Phase::Waiting { .. } | Phase::Opening { .. } | Phase::Relay(_) => {}
                }
            }
            _ => {}
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
                            self.dispatch(io);
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

    /// Fails every stream of a lost connection; requests it never answered go back to the
    /// queue.
    fn connection_lost(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        reason: &quinn_proto::ConnectionError,
    ) {
        if self.pool.unanswered(ch) {
            self.requeue(io, ch);
        }
        self.release_streams(io, ch);
        let waiting = self.n_waiting;
        let by_peer = matches!(
            reason,
            quinn_proto::ConnectionError::ApplicationClosed(_)
                | quinn_proto::ConnectionError::ConnectionClosed(_)
        );
        if self.pool.on_lost(io.now, ch, by_peer, reason, waiting) {
            tracing::warn!("{:?}: lost a connection to the server", io.worker);
        }
    }

    /// Fails the streams and moves the UDP sessions of a connection that is gone.
    fn release_streams(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        let affected: Vec<_> = self
            .by_stream
            .iter()
            .filter(|((c, _), _)| *c == ch)
            .map(|(_, v)| *v)
            .collect();
        for (key, gen) in affected {
            match self.locals.get_mut(key) {
                Some(l) if l.gen == gen => {}
                _ => continue,
            }
            let tok = token(TokenKind::Local, key, gen);
            let l = &mut self.locals[key];
            match &mut l.phase {
                Phase::Opening { .. } => self.refuse(
                    io,
                    key,
                    Refusal::Server("the connection to the server was lost".into()),
                ),
                Phase::Relay(pipe) => {
                    if pipe.sock().is_none() {
                        pipe.attach(l.sock);
                    }
                    if pipe.abort(io, tok) == After::Remove {
                        self.remove(io, key);
                    }
                }
                _ => {}
            }
        }
        self.by_stream.retain(|(c, _), _| *c != ch);
        self.udp.connection_lost(ch);
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
            match l.phase {
                Phase::Waiting { since } if at >= since + self.shared.stream_open_timeout => {
                    self.wait_ended();
                    self.shared
                        .stats
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let why = if self.pool.conns.iter().any(|c| c.usable()) {
                        "no stream credit"
                    } else {
                        "no connection to the server"
                    };
                    self.refuse(
                        io,
                        key,
                        Refusal::NoStream(format!(
                            "{why} within pool.streamOpenTimeout ({:?})",
                            self.shared.stream_open_timeout
                        )),
                    );
                }
                Phase::Closing { until, .. } if at >= until => self.close(io, key),
                _ => {}
            }
        }
        if self.accept_retry.is_some_and(|at| at <= io.now) {
            self.accept_retry = None;
            self.post_accepts(io);
        }
        self.pool.expire(io.now);
        self.udp.expire(io);
        while let Some(ch) = self.pool.stalled(io.now) {
            let streams = self.pool.streams_on(ch);
            self.requeue(io, ch);
            self.pool.close_stalled(io.now, ch, streams, self.n_waiting);
        }
        let udp = &self.udp;
        self.pool.close_idle(io.now, |ch| udp.uses(ch));
        self.pool_closed(io);
    }

    /// Ends what is left on the connections the pool closed itself.
    fn pool_closed(&mut self, io: &mut Io<'_>) {
        for ch in self.pool.take_closed() {
            let now = io.now;
            if let Some(qc) = io.conn(ch) {
                qc.close(now, 0u32.into(), b""[..].into());
            }
            self.release_streams(io, ch);
        }
    }
}

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

/// Why a request gets no relay.
enum Refusal {
    /// No stream within the timeout.
    NoStream(String),
    /// The server refused or failed (its message).
    Server(String),
    /// The target cannot be encoded.
    Target(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoStream(m) => f.write_str(m),
            Refusal::Server(m) => write!(f, "server: {m}"),
            Refusal::Target(m) => f.write_str(m),
        }
    }
}

impl App for ClientApp {
    fn tick(&mut self, io: &mut Io<'_>) {
        if self.sockets.is_some() {
            self.start(io);
        }
        self.expire(io);
        self.dispatch(io);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let waiting = self.n_waiting + self.udp.wants_connection() as usize;
        [
            timer,
            self.accept_retry,
            self.pool.next_deadline(Instant::now(), waiting),
            self.udp.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_event(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, event: Event) {
        match event {
            Event::Connected if self.pool.get_mut(ch).is_some() => {
                let cfg = &self.shared.pool;
                let auth = io
                    .conn(ch)
                    .and_then(|qc| AuthExchange::start(qc, &cfg.auth, cfg.down));
                self.pool.on_connected(ch, auth);
            }
            Event::ConnectionLost { reason } => {
                tracing::debug!("{ch:?} closed: {reason}");
                self.connection_lost(io, ch, &reason);
                self.dispatch(io);
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Bi }) => {
                if let Some(c) = self.pool.get_mut(ch) {
                    c.no_credit = false;
                }
                self.dispatch(io);
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
                let Some(auth) = self.pool.auth_exchange(ch, id) else {
                    return self.on_stream(io, ch, id);
                };
                let outcome = io.conn(ch).and_then(|qc| auth.read(qc));
                let step = self
                    .pool
                    .on_auth_answer(io.now, ch, outcome, self.n_waiting);
                if let AuthStep::Ready { send_rate } = step {
                    if send_rate > 0 {
                        io.set_send_rate(ch, send_rate);
                    }
                }
                self.pool_closed(io);
                self.udp.flush_pending(io, &self.pool);
                self.dispatch(io);
            }
            Event::Stream(StreamEvent::Writable { id })
            | Event::Stream(StreamEvent::Stopped { id, .. }) => self.on_stream(io, ch, id),
            Event::DatagramReceived => self.udp.on_datagrams(io, ch),
            _ => {}
        }
    }

    fn on_sock(&mut self, io: &mut Io<'_>, c: Completion) {
        match token::split(c.token) {
            (TokenKind::Listener, key, _) => self.on_accept(io, key, c),
            (TokenKind::Local, key, gen) => self.on_local(io, key, gen, c),
            (TokenKind::Udp, ..) => self.udp.on_completion(io, c, &self.pool),
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
            Some(l) if l.gen == gen => match l.phase {
                Phase::Opening { .. } => self.on_opening_readable(io, key),
                Phase::Relay(_) => self.pump(io, key),
                _ => {}
            },
            _ => {
                self.by_stream.remove(&(ch, id));
            }
        }
    }
}

/// Reads and discards a unidirectional stream of the server's (HTTP/3 control, QPACK).
fn drain(io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
    if let Some(qc) = io.conn(ch) {
        if let Ok(mut chunks) = qc.recv_stream(id).read(true) {
            while let Ok(Some(_)) = chunks.next(usize::MAX) {}
            let _ = chunks.finalize();
        }
    }
}
