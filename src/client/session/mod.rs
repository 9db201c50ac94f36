//! The Hysteria2 client session of one worker, sans-IO: the local requests waiting for a
//! stream, the pool's connections to the server, and what happens to each request.
//!
//! The worker's adapter hands it events, in about this order: a local request from a front
//! ([`Session::request`]: its target, the bytes that go after the TCPRequest, the front's
//! success reply), the server's addresses for a connection about to be dialled when the
//! server is given by name ([`Session::resolved`]), a connection's handshake done
//! ([`Session::connected`]) and its auth
//! request sent ([`Session::auth_sent`]), a stream opened or refused for lack of credit
//! ([`Session::stream_opened`]), credit back ([`Session::credit`]), bytes the server sent on
//! a stream the session reads ([`Session::stream_data`]: the auth answer, a TCPResponse), a
//! stream the server reset ([`Session::stream_reset`]), a request's local end gone or its
//! relay ended ([`Session::request_closed`]), a connection lost
//! ([`Session::connection_lost`]), the clock ([`Session::handle_timeout`]). It decides which
//! request waits, which connection serves it, when the pool grows or shrinks (the decisions
//! of [`Pool`]), what the front answers, and queues [`Action`]s that the adapter performs
//! in order ([`Session::poll_action`]).
//!
//! It holds ids that are never reused ([`ConnId`], [`RequestId`]) and never a socket or a
//! quinn handle, so an answer that comes back after what it was for has gone finds nothing
//! to land on. Its only clock is the `now` it is given: `tests.rs` runs it in virtual time.
//! The UDP sessions (SOCKS5 associations, UDP forwarders) are a core of their own, [`udp`],
//! on the same connection ids.

#[cfg(test)]
mod pair;
#[cfg(test)]
mod tests;
pub mod udp;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::StreamId;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::auth::AuthExchange;
use super::http_proxy;
use super::pool::{AuthStep, Pool, PoolConfig, ServerAddr};
use super::socks5::{self, ReplyCode};
use super::stats::PoolStats;
use crate::proto::h3;
use crate::proto::tcp::{self, TcpRequest, TcpResponse};
use crate::worker::WorkerId;

/// Application error code of streams we abort.
pub const STREAM_ABORT: u64 = crate::worker::pipe::STREAM_ABORT as u64;

/// A connection to the server, by a number no other connection of this session ever gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A local request (from its arrival to the end of its relay or its refusal), never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The front a request came from: it decides how a refusal is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontKind {
    Socks5,
    Http,
    /// A TCP forwarder: a refusal just closes.
    Forward,
}

/// A local request for a stream to `target`.
#[derive(Clone, Debug)]
pub struct LocalRequest {
    pub front: FrontKind,
    /// `host:port` for the TCPRequest.
    pub target: String,
    /// Bytes for the stream after the TCPRequest (an HTTP head, early payload).
    pub early: Vec<u8>,
    /// Bytes for the app once the server connected (a SOCKS5 or HTTP success reply).
    pub ok_reply: Vec<u8>,
}

/// Settings of the session.
#[derive(Clone, Debug)]
pub struct Config {
    pub pool: PoolConfig,
    /// `pool.streamOpenTimeout`: a request without a stream by then is refused.
    pub stream_open_timeout: Duration,
    /// `fastOpen`: answer SOCKS5/HTTP CONNECT before the server confirmed the target.
    pub fast_open: bool,
}

/// Why a request gets no relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No stream within the timeout.
    NoStream(String),
    /// The server refused or failed (its message), or the stream or connection ended
    /// before it answered.
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

impl Refusal {
    /// What `front` answers the app (possibly nothing), and the code for the log.
    pub fn reply(&self, front: FrontKind) -> (&'static str, Vec<u8>) {
        match (front, self) {
            (FrontKind::Socks5, Refusal::NoStream(_)) => (
                "0x01",
                socks5::reply(ReplyCode::GeneralFailure, unspecified()),
            ),
            (FrontKind::Socks5, Refusal::Server(_)) => (
                "0x05",
                socks5::reply(ReplyCode::ConnectionRefused, unspecified()),
            ),
            (FrontKind::Socks5, Refusal::Target(_)) => (
                "0x04",
                socks5::reply(ReplyCode::HostUnreachable, unspecified()),
            ),
            (FrontKind::Http, Refusal::NoStream(_)) => {
                ("503", http_proxy::response_unavailable(&self.to_string()))
            }
            (FrontKind::Http, _) => ("502", http_proxy::response_bad_gateway(&self.to_string())),
            (FrontKind::Forward, _) => ("close", Vec::new()),
        }
    }
}

/// What the adapter does for the session, in the order queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Look the server's name up for `conn`, off the worker's thread;
    /// [`Session::resolved`] follows with the addresses or why there are none.
    Resolve {
        conn: ConnId,
        host: String,
        port: u16,
    },
    /// Start a QUIC connection to the server at `addr`. [`Session::connected`] follows, or
    /// [`Session::connection_lost`] (also when it cannot be started).
    Dial { conn: ConnId, addr: SocketAddr },
    /// Open our HTTP/3 control stream with `control`, and a bidirectional stream with
    /// `request`, finished; [`Session::auth_sent`] names that stream.
    Authenticate {
        conn: ConnId,
        control: Vec<u8>,
        request: Vec<u8>,
    },
    /// Send with Brutal at this rate (the server's answer said so).
    SendRate { conn: ConnId, bytes_per_sec: u64 },
    /// Open a bidirectional stream on `conn` for `req`; [`Session::stream_opened`] says which,
    /// or that the connection had no credit. No other stream is asked for until it does.
    OpenStream { conn: ConnId, req: RequestId },
    /// Write `bytes` (the TCPRequest and the bytes after it) on the request's stream; what
    /// the stream does not take now goes before the relay's bytes.
    WriteRequest {
        req: RequestId,
        conn: ConnId,
        stream: StreamId,
        bytes: Vec<u8>,
    },
    /// Write `bytes` to the request's app now (`fastOpen`: the success reply before the
    /// server confirmed).
    ReplyLocal { req: RequestId, bytes: Vec<u8> },
    /// The server connected the target: write `to_local` (the front's success reply, the
    /// target's first bytes) to the app, then move bytes both ways.
    /// [`Session::request_closed`] when the relay ends.
    StartPump {
        req: RequestId,
        conn: ConnId,
        stream: StreamId,
        to_local: Vec<u8>,
    },
    /// The request gets no relay: write `reply` to the app (possibly nothing), half-close,
    /// drain and close. `code` and `why` are for the log. The session has let go of the
    /// request.
    CloseLocal {
        req: RequestId,
        reply: Vec<u8>,
        code: &'static str,
        why: String,
    },
    /// Stop reading the stream and finish it (reset it if it cannot be finished): the
    /// server answered, and no relay follows.
    EndStream { conn: ConnId, stream: StreamId },
    /// Reset both halves of the stream.
    ResetStream {
        conn: ConnId,
        stream: StreamId,
        code: u64,
    },
    /// The relay's connection is gone: abort it both ways and close the app's connection.
    /// The session has let go of the request.
    AbortPump(RequestId),
    /// Close the connection (code 0). The session has let go of it; the adapter lets go
    /// of what it holds for it (a local close raises no loss).
    CloseConn(ConnId),
}

/// Where a request is.
#[derive(Debug)]
enum Phase {
    /// In the queue for a stream.
    Waiting,
    /// A stream asked for on `conn` ([`Action::OpenStream`]).
    Opening { conn: ConnId },
    /// TCPRequest sent on `stream`; reading the TCPResponse into `resp`.
    Requested {
        conn: ConnId,
        stream: StreamId,
        resp: Vec<u8>,
    },
    /// Bytes flow.
    Relay { conn: ConnId, stream: StreamId },
}

struct Request {
    front: FrontKind,
    target: String,
    /// Bytes after the TCPRequest, kept to send again if the request goes back to the
    /// queue.
    early: Vec<u8>,
    ok_reply: Vec<u8>,
    /// When it started waiting (a request sent again keeps its first arrival).
    since: Instant,
    phase: Phase,
    /// The success reply went out before the server confirmed (`fastOpen`).
    replied: bool,
}

pub struct Session {
    cfg: Config,
    stats: Arc<PoolStats>,
    worker: WorkerId,
    pool: Pool<ConnId>,
    requests: HashMap<RequestId, Request>,
    /// Requests waiting for a stream, oldest first (stale entries are skipped).
    queue: VecDeque<RequestId>,
    /// Requests in `Phase::Waiting`: the live entries of `queue`.
    n_waiting: usize,
    /// The stream asked for and not answered yet.
    opening: Option<(RequestId, ConnId)>,
    /// `pool.streamOpenTimeout` deadlines, earliest first; an entry whose request left the
    /// queue is skipped.
    deadlines: BinaryHeap<Reverse<(Instant, RequestId)>>,
    /// Requests by their stream, from TCPRequest to the relay's end.
    by_stream: HashMap<(ConnId, StreamId), RequestId>,
    /// Datagrams wait for a connection (UDP is the adapter's): the pool counts it as a
    /// request.
    udp_waiting: bool,
    /// Connections whose server lookup was asked for ([`Action::Resolve`]) and not answered;
    /// a connection leaves when answered, closed or lost.
    resolving: HashSet<ConnId>,
    last_id: u64,
    rng: StdRng,
    actions: VecDeque<Action>,
}

impl Session {
    pub fn new(cfg: Config, stats: Arc<PoolStats>, worker: WorkerId, now: Instant) -> Self {
        Self::with_rng(cfg, stats, worker, now, StdRng::from_entropy())
    }

    /// A session whose padding comes from `rng` (tests seed it).
    pub fn with_rng(
        cfg: Config,
        stats: Arc<PoolStats>,
        worker: WorkerId,
        now: Instant,
        rng: StdRng,
    ) -> Self {
        Session {
            pool: Pool::new(cfg.pool.clone(), stats.clone(), worker, now),
            cfg,
            stats,
            worker,
            requests: HashMap::new(),
            queue: VecDeque::new(),
            n_waiting: 0,
            opening: None,
            deadlines: BinaryHeap::new(),
            by_stream: HashMap::new(),
            udp_waiting: false,
            resolving: HashSet::new(),
            last_id: 0,
            rng,
            actions: VecDeque::new(),
        }
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// The pool's decisions and connections (for the adapter's UDP sessions and tests).
    pub fn pool(&self) -> &Pool<ConnId> {
        &self.pool
    }

    /// Requests waiting for a stream.
    pub fn waiting(&self) -> usize {
        self.n_waiting
    }

    /// Requests the session holds, in any phase.
    pub fn request_count(&self) -> usize {
        self.requests.len()
    }

    /// Whether datagrams wait for a connection: the pool grows for them as for a request.
    pub fn set_udp_waiting(&mut self, now: Instant, waiting: bool) {
        self.udp_waiting = waiting;
        if waiting {
            self.dispatch(now);
        }
    }

    // ---- requests ----

    /// A local request: it waits for a stream (the success reply goes out at once with
    /// `fastOpen`).
    pub fn request(&mut self, now: Instant, r: LocalRequest) -> RequestId {
        let id = RequestId(self.next_id());
        let mut req = Request {
            front: r.front,
            target: r.target,
            early: r.early,
            ok_reply: r.ok_reply,
            since: now,
            phase: Phase::Waiting,
            replied: false,
        };
        if self.cfg.fast_open && !req.ok_reply.is_empty() {
            req.replied = true;
            let bytes = std::mem::take(&mut req.ok_reply);
            self.actions
                .push_back(Action::ReplyLocal { req: id, bytes });
        }
        self.requests.insert(id, req);
        self.queue.push_back(id);
        self.wait_started(id, now);
        self.dispatch(now);
        id
    }

    fn wait_started(&mut self, id: RequestId, since: Instant) {
        self.n_waiting += 1;
        self.stats.wait_started();
        // A request back in the queue may have seen its first deadline pass meanwhile.
        self.deadlines
            .push(Reverse((since + self.cfg.stream_open_timeout, id)));
    }

    /// A request leaves `Phase::Waiting`.
    fn wait_ended(&mut self) {
        self.n_waiting = self.n_waiting.saturating_sub(1);
        self.stats.wait_ended();
    }

    /// Hands a stream to the oldest waiting request while a connection has credit, then
    /// lets the pool grow if requests still wait.
    fn dispatch(&mut self, now: Instant) {
        while let Some(&id) = self.queue.front() {
            if self.opening.is_some() {
                // The answer for the stream asked for comes first.
                return;
            }
            if !matches!(self.requests.get(&id), Some(r) if matches!(r.phase, Phase::Waiting)) {
                self.queue.pop_front();
                continue;
            }
            let Some(i) = self.pool.pick() else {
                break;
            };
            let conn = self.pool.conns[i].ch;
            self.queue.pop_front();
            self.wait_ended();
            if let Some(r) = self.requests.get_mut(&id) {
                r.phase = Phase::Opening { conn };
            }
            self.opening = Some((id, conn));
            self.actions.push_back(Action::OpenStream { conn, req: id });
        }
        if self.opening.is_some() {
            return;
        }
        let oldest = self
            .queue
            .iter()
            .find_map(|id| match self.requests.get(id) {
                Some(r) if matches!(r.phase, Phase::Waiting) => {
                    Some(now.saturating_duration_since(r.since))
                }
                _ => None,
            });
        let waiting = self.n_waiting + usize::from(self.udp_waiting);
        let mut dialed = Vec::new();
        let last_id = &mut self.last_id;
        self.pool
            .maybe_grow(now, waiting, oldest.unwrap_or(Duration::ZERO), || {
                *last_id += 1;
                let conn = ConnId(*last_id);
                dialed.push(conn);
                Ok::<_, std::convert::Infallible>(conn)
            });
        for conn in dialed {
            self.dial(conn);
        }
    }

    /// Starts connection `conn`: dials the server's address, or first looks its name up.
    fn dial(&mut self, conn: ConnId) {
        let action = match &self.cfg.pool.server {
            ServerAddr::Ip(addr) => Action::Dial { conn, addr: *addr },
            ServerAddr::Name { host, port } => {
                self.resolving.insert(conn);
                Action::Resolve {
                    conn,
                    host: host.clone(),
                    port: *port,
                }
            }
        };
        self.actions.push_back(action);
    }

    /// The answer to [`Action::Resolve`] for `conn`: the server's addresses, or why there
    /// are none. The connection is dialled at the first IPv4 address, else the first (as
    /// the official client picks); no address counts as a failed attempt, which the pool
    /// retries after its backoff. An answer for a connection that no longer waits for one
    /// is ignored.
    pub fn resolved(
        &mut self,
        now: Instant,
        conn: ConnId,
        answer: Result<Vec<SocketAddr>, String>,
    ) {
        if !self.resolving.remove(&conn) || !self.pool.conns.iter().any(|c| c.ch == conn) {
            return;
        }
        let addrs = match answer {
            Ok(addrs) => addrs,
            Err(why) => return self.lookup_failed(now, conn, why),
        };
        let first_v4 = addrs.iter().find(|a| a.is_ipv4());
        match first_v4.or(addrs.first()) {
            Some(&addr) => {
                tracing::debug!("{conn:?}: {} is at {addr}", self.cfg.pool.server);
                self.actions.push_back(Action::Dial { conn, addr });
            }
            None => self.lookup_failed(now, conn, "no address".into()),
        }
    }

    fn lookup_failed(&mut self, now: Instant, conn: ConnId, why: String) {
        let server = &self.cfg.pool.server;
        crate::warn_limited!("cannot resolve the server {server}: {why}");
        let reason = format!("cannot resolve {server}: {why}");
        self.connection_lost(now, conn, false, &reason);
    }

    /// The stream asked for `req` ([`Action::OpenStream`]): `None` when the connection had
    /// no credit (the request keeps its place at the head of the queue).
    pub fn stream_opened(&mut self, now: Instant, req: RequestId, stream: Option<StreamId>) {
        let conn = match self.opening {
            Some((r, conn)) if r == req => conn,
            _ => return, // not asked for: nothing to answer
        };
        self.opening = None;
        let pos = self.pool.conns.iter().position(|c| c.ch == conn);
        let live = matches!(
            self.requests.get(&req),
            Some(r) if matches!(r.phase, Phase::Opening { conn: c } if c == conn)
        );
        match (stream, pos, live) {
            (Some(stream), Some(i), true) => {
                self.pool.stream_opened(i, now);
                self.write_request(now, req, conn, stream);
            }
            (Some(stream), pos, false) => {
                // The request went away meanwhile: the stream carries nothing.
                if pos.is_some() {
                    self.reset(conn, stream, STREAM_ABORT);
                }
            }
            (None, Some(i), _) => {
                self.pool.out_of_credit(i);
                self.back_to_head(req);
            }
            (_, None, _) => self.back_to_head(req),
        }
        self.dispatch(now);
    }

    /// A request whose stream was not opened waits again, first in line.
    fn back_to_head(&mut self, id: RequestId) {
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        if !matches!(r.phase, Phase::Opening { .. }) {
            return;
        }
        r.phase = Phase::Waiting;
        let since = r.since;
        self.queue.push_front(id);
        self.wait_started(id, since);
    }

    /// Sends the TCPRequest on the request's new stream.
    fn write_request(&mut self, now: Instant, id: RequestId, conn: ConnId, stream: StreamId) {
        let padding = tcp::padding(
            &mut self.rng,
            tcp::REQUEST_PADDING.0,
            tcp::REQUEST_PADDING.1,
        );
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let mut bytes = Vec::with_capacity(600 + r.early.len());
        if let Err(e) = TcpRequest::encode(&r.target, &padding, &mut bytes) {
            let msg = format!("bad target {:?}: {e}", r.target);
            self.reset(conn, stream, STREAM_ABORT);
            self.pool.stream_closed(conn, now);
            return self.refuse(now, id, Refusal::Target(msg));
        }
        self.stats.stream_opened(
            self.worker.0 as usize,
            now.saturating_duration_since(r.since),
        );
        bytes.extend_from_slice(&r.early);
        r.phase = Phase::Requested {
            conn,
            stream,
            resp: Vec::new(),
        };
        self.by_stream.insert((conn, stream), id);
        self.actions.push_back(Action::WriteRequest {
            req: id,
            conn,
            stream,
            bytes,
        });
    }

    /// Whether the session wants the stream's bytes (through [`Self::stream_data`]): an
    /// auth answer or a TCPResponse still awaited.
    pub fn reading(&mut self, conn: ConnId, stream: StreamId) -> bool {
        if self.pool.auth_exchange(conn, stream).is_some() {
            return true;
        }
        let Some(id) = self.by_stream.get(&(conn, stream)) else {
            return false;
        };
        matches!(
            self.requests.get(id).map(|r| &r.phase),
            Some(Phase::Requested { .. })
        )
    }

    /// Bytes the server sent on a stream the session reads (`fin`: it finished the stream).
    pub fn stream_data(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
        data: &[u8],
        fin: bool,
    ) {
        if let Some(auth) = self.pool.auth_exchange(conn, stream) {
            let outcome = auth.push(data, fin);
            return self.auth_answer(now, conn, outcome);
        }
        let Some(&id) = self.by_stream.get(&(conn, stream)) else {
            return;
        };
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let Phase::Requested { resp, .. } = &mut r.phase else {
            return;
        };
        resp.extend_from_slice(data);
        if !resp.is_empty() {
            self.pool.answered(conn);
        }
        let refusal = match TcpResponse::parse(resp) {
            Ok(Some((answer, n))) if answer.is_ok() => {
                let mut to_local = std::mem::take(&mut r.ok_reply);
                to_local.extend_from_slice(&resp[n..]);
                r.phase = Phase::Relay { conn, stream };
                self.actions.push_back(Action::StartPump {
                    req: id,
                    conn,
                    stream,
                    to_local,
                });
                return;
            }
            Ok(Some((answer, _))) => Refusal::Server(answer.message),
            Err(e) => Refusal::Server(format!("malformed response: {e}")),
            Ok(None) if fin => Refusal::Server("the server closed the stream".into()),
            Ok(None) if resp.len() > tcp::MAX_TCP_RESPONSE_LEN => {
                Refusal::Server("malformed response: too long".into())
            }
            Ok(None) => return,
        };
        self.actions.push_back(Action::EndStream { conn, stream });
        self.refuse(now, id, refusal);
    }

    /// The server reset a stream of ours. Before its TCPResponse, the request is refused;
    /// a relay's pump sees the reset itself.
    pub fn stream_reset(&mut self, now: Instant, conn: ConnId, stream: StreamId) {
        let Some(&id) = self.by_stream.get(&(conn, stream)) else {
            return;
        };
        if matches!(
            self.requests.get(&id).map(|r| &r.phase),
            Some(Phase::Requested { .. })
        ) {
            self.actions.push_back(Action::EndStream { conn, stream });
            self.refuse(
                now,
                id,
                Refusal::Server("the server reset the stream".into()),
            );
        }
    }

    /// The request's app went away, or its relay ended: the session lets go of it (a
    /// stream still awaiting its TCPResponse is reset).
    pub fn request_closed(&mut self, now: Instant, id: RequestId) {
        let Some(r) = self.requests.remove(&id) else {
            return;
        };
        match r.phase {
            Phase::Waiting => self.wait_ended(),
            // The stream's answer finds no request and resets the stream.
            Phase::Opening { .. } => {}
            Phase::Requested { conn, stream, .. } => {
                self.by_stream.remove(&(conn, stream));
                self.pool.stream_closed(conn, now);
                self.reset(conn, stream, STREAM_ABORT);
            }
            Phase::Relay { conn, stream } => {
                self.by_stream.remove(&(conn, stream));
                self.pool.stream_closed(conn, now);
            }
        }
    }

    /// Answers the app with the front's refusal and lets go of the request.
    fn refuse(&mut self, now: Instant, id: RequestId, why: Refusal) {
        let Some(r) = self.requests.remove(&id) else {
            return;
        };
        match r.phase {
            Phase::Waiting => self.wait_ended(),
            Phase::Opening { .. } => {}
            Phase::Requested { conn, stream, .. } | Phase::Relay { conn, stream } => {
                self.by_stream.remove(&(conn, stream));
                self.pool.stream_closed(conn, now);
            }
        }
        let (code, reply) = match r.replied {
            true => ("close", Vec::new()),
            false => why.reply(r.front),
        };
        let target = if r.target.is_empty() { "?" } else { &r.target };
        self.actions.push_back(Action::CloseLocal {
            req: id,
            reply,
            code,
            why: format!("{target}: {why}"),
        });
    }

    fn reset(&mut self, conn: ConnId, stream: StreamId, code: u64) {
        self.actions
            .push_back(Action::ResetStream { conn, stream, code });
    }

    // ---- connections ----

    /// The connection's handshake finished: it sends its auth request.
    pub fn connected(&mut self, conn: ConnId) {
        if !self.pool.conns.iter().any(|c| c.ch == conn) {
            return;
        }
        let padding = h3::auth_padding(&mut self.rng);
        let cfg = self.pool.config();
        let request = h3::auth_request_headers(&cfg.auth, cfg.down, &padding);
        self.actions.push_back(Action::Authenticate {
            conn,
            control: h3::client_control_stream(),
            request,
        });
    }

    /// The auth request went out on `stream` (`None`: the server granted no stream for it;
    /// the setup then times out).
    pub fn auth_sent(&mut self, conn: ConnId, stream: Option<StreamId>) {
        self.pool.on_connected(conn, stream.map(AuthExchange::new));
    }

    fn auth_answer(
        &mut self,
        now: Instant,
        conn: ConnId,
        outcome: Option<Result<h3::AuthOk, super::auth::AuthError>>,
    ) {
        let step = self.pool.on_auth_answer(now, conn, outcome, self.n_waiting);
        match step {
            AuthStep::NotAuth | AuthStep::Pending => return,
            AuthStep::Ready { send_rate } if send_rate > 0 => {
                self.actions.push_back(Action::SendRate {
                    conn,
                    bytes_per_sec: send_rate,
                });
            }
            AuthStep::Ready { .. } | AuthStep::Closed => {}
        }
        self.pool_closed(now);
        self.dispatch(now);
    }

    /// The connection has credit for another stream again.
    pub fn credit(&mut self, now: Instant, conn: ConnId) {
        if let Some(c) = self.pool.get_mut(conn) {
            c.no_credit = false;
        }
        self.dispatch(now);
    }

    /// The connection is gone (`by_peer`: the server closed it; `reason` for the log).
    /// Requests it never answered go back to the queue; the others on it are refused or
    /// their relays aborted.
    pub fn connection_lost(
        &mut self,
        now: Instant,
        conn: ConnId,
        by_peer: bool,
        reason: &dyn std::fmt::Display,
    ) {
        tracing::debug!("{conn:?} closed: {reason}");
        self.resolving.remove(&conn);
        if self.pool.unanswered(conn) {
            self.requeue(now, conn);
        }
        self.release(now, conn);
        if self
            .pool
            .on_lost(now, conn, by_peer, reason, self.n_waiting)
        {
            tracing::warn!("{:?}: lost a connection to the server", self.worker);
        }
        self.dispatch(now);
    }

    /// Ends what is left on a connection that is gone: requests awaiting their answer are
    /// refused, relays aborted.
    fn release(&mut self, now: Instant, conn: ConnId) {
        let mut on_conn: Vec<RequestId> = self
            .by_stream
            .iter()
            .filter(|((c, _), _)| *c == conn)
            .map(|(_, id)| *id)
            .collect();
        on_conn.sort();
        for id in on_conn {
            match self.requests.get(&id).map(|r| &r.phase) {
                Some(Phase::Requested { .. }) => self.refuse(
                    now,
                    id,
                    Refusal::Server("the connection to the server was lost".into()),
                ),
                Some(Phase::Relay { .. }) => {
                    self.requests.remove(&id);
                    self.actions.push_back(Action::AbortPump(id));
                }
                _ => {}
            }
        }
        self.by_stream.retain(|(c, _), _| *c != conn);
    }

    /// Puts the requests sent on `conn`, which never answered, back in the queue in arrival
    /// order, to go out on another connection. Their `pool.streamOpenTimeout` still counts
    /// from their arrival.
    fn requeue(&mut self, now: Instant, conn: ConnId) {
        let mut back = Vec::new();
        let on_conn: Vec<_> = self
            .by_stream
            .iter()
            .filter(|((c, _), _)| *c == conn)
            .map(|(k, id)| (*k, *id))
            .collect();
        for (k, id) in on_conn {
            let Some(r) = self.requests.get_mut(&id) else {
                self.by_stream.remove(&k);
                continue;
            };
            match &r.phase {
                Phase::Requested { resp, .. } if resp.is_empty() => {}
                _ => continue,
            }
            r.phase = Phase::Waiting;
            back.push((r.since, id));
            self.by_stream.remove(&k);
            self.pool.stream_closed(conn, now);
        }
        if back.is_empty() {
            return;
        }
        tracing::debug!(
            "{:?}: {} request(s) back in the queue",
            self.worker,
            back.len()
        );
        self.stats.requeued.fetch_add(back.len() as u64, Relaxed);
        for &(since, id) in &back {
            self.wait_started(id, since);
        }
        back.sort();
        let mut merged = VecDeque::with_capacity(self.queue.len() + back.len());
        let mut back = back.into_iter().peekable();
        for id in self.queue.drain(..) {
            let since = match self.requests.get(&id) {
                Some(r) if matches!(r.phase, Phase::Waiting) => r.since,
                _ => continue,
            };
            while let Some(&(s, b)) = back.peek() {
                if s > since {
                    break;
                }
                merged.push_back(b);
                back.next();
            }
            merged.push_back(id);
        }
        merged.extend(back.map(|(_, b)| b));
        self.queue = merged;
    }

    /// Closes the connections the pool let go of and ends what they carried.
    fn pool_closed(&mut self, now: Instant) {
        for conn in self.pool.take_closed() {
            self.resolving.remove(&conn);
            self.release(now, conn);
            self.actions.push_back(Action::CloseConn(conn));
        }
    }

    // ---- time ----

    /// When [`Self::handle_timeout`] is due next.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        // The earliest deadline may be stale (its request got a stream): waking for it only
        // pops it.
        let deadline = self.deadlines.peek().map(|Reverse((at, _))| *at);
        let waiting = self.n_waiting + usize::from(self.udp_waiting);
        deadline
            .into_iter()
            .chain(self.pool.next_deadline(now, waiting))
            .min()
    }

    /// `pool.streamOpenTimeout` refusals, connection setups that took too long, connections
    /// the server does not serve, idle connections (`in_use`: those that carry something
    /// else, UDP sessions, stay), then streams for the requests that wait.
    pub fn handle_timeout(&mut self, now: Instant, in_use: impl Fn(ConnId) -> bool) {
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let due = matches!(
                self.requests.get(&id),
                Some(r) if matches!(r.phase, Phase::Waiting)
                    && at >= r.since + self.cfg.stream_open_timeout
            );
            if !due {
                continue;
            }
            self.stats.refused.fetch_add(1, Relaxed);
            let why = if self.pool.conns.iter().any(|c| c.usable()) {
                "no stream credit"
            } else {
                "no connection to the server"
            };
            let msg = format!(
                "{why} within pool.streamOpenTimeout ({:?})",
                self.cfg.stream_open_timeout
            );
            self.refuse(now, id, Refusal::NoStream(msg));
        }
        self.pool.expire(now);
        while let Some(conn) = self.pool.stalled(now) {
            let streams = self.pool.streams_on(conn);
            self.requeue(now, conn);
            self.pool.close_stalled(now, conn, streams, self.n_waiting);
        }
        self.pool.close_idle(now, in_use);
        self.pool_closed(now);
        self.dispatch(now);
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
