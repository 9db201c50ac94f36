//! The client session in virtual time: a model of the adapter and a scripted server on the
//! other side ([`Harness`]), and a clock that moves only when a test says so. Races that
//! need a real server elsewhere (an answer for a request already gone, a connection lost
//! between a request and its answer) are a few lines here.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{Dir, Side, StreamId};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::proto::h3::CcRx;
use crate::proto::tcp::{TcpRequest, TcpResponse};

const TIMEOUT: Duration = Duration::from_secs(5);
const SERVER: &str = "192.0.2.1:443";

pub(super) fn config(max_connections: usize) -> Config {
    Config {
        pool: PoolConfig {
            server: ServerAddr::Ip(SERVER.parse().expect("address")),
            server_name: "example.com".into(),
            auth: "secret".into(),
            up: 0,
            down: 0,
            max_connections,
            open_wait_threshold: Duration::from_millis(200),
            eager: false,
        },
        stream_open_timeout: TIMEOUT,
        fast_open: false,
    }
}

pub(super) fn socks(target: &str, early: &[u8]) -> LocalRequest {
    LocalRequest {
        front: FrontKind::Socks5,
        target: target.into(),
        early: early.to_vec(),
        ok_reply: socks5::reply(ReplyCode::Succeeded, unspecified()),
    }
}

fn http(target: &str) -> LocalRequest {
    LocalRequest {
        front: FrontKind::Http,
        target: target.into(),
        early: Vec::new(),
        ok_reply: http_proxy::response_connected(),
    }
}

fn tcp_response(ok: bool, msg: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let status = if ok {
        tcp::STATUS_OK
    } else {
        tcp::STATUS_ERROR
    };
    TcpResponse::encode(status, msg, b"pad", &mut out).expect("response");
    out
}

/// What the adapter did for the session, and the scripted server's stream credit.
#[derive(Default)]
struct Adapter {
    dials: Vec<ConnId>,
    /// Where each connection was dialled.
    dialled_at: HashMap<ConnId, SocketAddr>,
    /// Lookups asked for: the connection and the name.
    resolves: Vec<(ConnId, String, u16)>,
    auth_streams: HashMap<ConnId, StreamId>,
    /// Concurrent streams the server grants each connection, and those open.
    grant: u64,
    open: HashMap<ConnId, u64>,
    next_stream: HashMap<ConnId, u64>,
    /// OpenStream actions not answered yet, when the test answers them itself.
    hold_opens: bool,
    held: Vec<(ConnId, RequestId)>,
    written: HashMap<RequestId, (ConnId, StreamId, Vec<u8>)>,
    replies: Vec<(RequestId, Vec<u8>)>,
    pumps: HashMap<RequestId, (ConnId, StreamId, Vec<u8>)>,
    closed_local: HashMap<RequestId, (Vec<u8>, &'static str, String)>,
    ended: Vec<(ConnId, StreamId)>,
    resets: Vec<(ConnId, StreamId, u64)>,
    aborted: Vec<RequestId>,
    closed_conns: Vec<ConnId>,
    send_rates: Vec<(ConnId, u64)>,
}

struct Harness {
    s: Session,
    now: Instant,
    stats: Arc<PoolStats>,
    a: Adapter,
}

impl Harness {
    fn new(cfg: Config, grant: u64) -> Self {
        let stats = Arc::new(PoolStats::new(1));
        let now = Instant::now();
        Harness {
            s: Session::with_rng(
                cfg,
                stats.clone(),
                WorkerId(0),
                now,
                StdRng::seed_from_u64(7),
            ),
            now,
            stats,
            a: Adapter {
                grant,
                ..Adapter::default()
            },
        }
    }

    fn next_stream(&mut self, conn: ConnId) -> StreamId {
        let n = self.a.next_stream.entry(conn).or_default();
        *n += 1;
        StreamId::new(Side::Client, Dir::Bi, *n)
    }

    /// Performs the queued actions as the adapter does.
    fn step(&mut self) {
        while let Some(action) = self.s.poll_action() {
            match action {
                Action::Resolve { conn, host, port } => self.a.resolves.push((conn, host, port)),
                Action::Dial { conn, addr } => {
                    self.a.dials.push(conn);
                    let old = self.a.dialled_at.insert(conn, addr);
                    assert!(old.is_none(), "{conn:?} dialled twice");
                }
                Action::Authenticate { conn, request, .. } => {
                    assert!(!request.is_empty());
                    let id = self.next_stream(conn);
                    self.a.auth_streams.insert(conn, id);
                    self.s.auth_sent(conn, Some(id));
                }
                Action::SendRate {
                    conn,
                    bytes_per_sec,
                } => self.a.send_rates.push((conn, bytes_per_sec)),
                Action::OpenStream { conn, req } if self.a.hold_opens => {
                    self.a.held.push((conn, req));
                }
                Action::OpenStream { conn, req } => self.answer_open(conn, req),
                Action::WriteRequest {
                    req,
                    conn,
                    stream,
                    bytes,
                } => {
                    let old = self.a.written.insert(req, (conn, stream, bytes));
                    assert!(old.is_none(), "two requests written for {req:?}");
                }
                Action::ReplyLocal { req, bytes } => self.a.replies.push((req, bytes)),
                Action::StartPump {
                    req,
                    conn,
                    stream,
                    to_local,
                } => {
                    self.a.pumps.insert(req, (conn, stream, to_local));
                }
                Action::CloseLocal {
                    req,
                    reply,
                    code,
                    why,
                } => {
                    let old = self.a.closed_local.insert(req, (reply, code, why));
                    assert!(old.is_none(), "{req:?} closed twice");
                }
                Action::EndStream { conn, stream } => {
                    self.a.ended.push((conn, stream));
                    self.stream_done(conn);
                }
                Action::ResetStream { conn, stream, code } => {
                    self.a.resets.push((conn, stream, code));
                    self.stream_done(conn);
                }
                Action::AbortPump(req) => self.a.aborted.push(req),
                Action::CloseConn(c) => self.a.closed_conns.push(c),
            }
        }
    }

    fn answer_open(&mut self, conn: ConnId, req: RequestId) {
        let open = self.a.open.get(&conn).copied().unwrap_or(0);
        if open < self.a.grant {
            self.a.open.insert(conn, open + 1);
            let id = self.next_stream(conn);
            self.s.stream_opened(self.now, req, Some(id));
        } else {
            self.s.stream_opened(self.now, req, None);
        }
    }

    fn stream_done(&mut self, conn: ConnId) {
        if let Some(n) = self.a.open.get_mut(&conn) {
            *n = n.saturating_sub(1);
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.handle_timeout(self.now, |_| false);
        self.step();
    }

    fn request(&mut self, r: LocalRequest) -> RequestId {
        let id = self.s.request(self.now, r);
        self.step();
        id
    }

    /// Finishes the handshake of `conn` and answers its auth request with 233.
    fn ready(&mut self, conn: ConnId) {
        self.s.connected(conn);
        self.step();
        let stream = self.a.auth_streams[&conn];
        assert!(self.s.reading(conn, stream));
        let ok = h3::auth_ok_response(true, CcRx::Bps(1000), "xx");
        self.s.stream_data(self.now, conn, stream, &ok, true);
        self.step();
    }

    /// Makes every dialed connection ready, repeatedly (a ready connection may dial more).
    fn ready_all(&mut self) {
        let mut done = std::collections::HashSet::new();
        while let Some(c) = self.a.dials.iter().copied().find(|c| !done.contains(c)) {
            done.insert(c);
            self.ready(c);
        }
    }

    /// The server answers `req`'s stream with `bytes`.
    fn answer(&mut self, req: RequestId, bytes: &[u8], fin: bool) {
        let (conn, stream, _) = self.a.written[&req];
        self.s.stream_data(self.now, conn, stream, bytes, fin);
        self.step();
    }

    fn lose(&mut self, conn: ConnId) {
        self.s
            .connection_lost(self.now, conn, true, &"closed by peer");
        self.a.open.remove(&conn);
        self.step();
    }

    fn close(&mut self, req: RequestId) {
        self.s.request_closed(self.now, req);
        self.step();
    }

    fn target_of(&self, req: RequestId) -> String {
        let bytes = &self.a.written[&req].2;
        TcpRequest::parse(bytes)
            .expect("valid")
            .expect("complete")
            .0
            .addr
    }

    fn streams_on(&self, conn: ConnId) -> usize {
        self.s.pool().streams_on(conn)
    }
}

#[test]
fn a_request_is_served() {
    let mut h = Harness::new(config(4), 64);
    let req = h.request(socks("example.com:80", b"early"));
    assert_eq!(h.a.dials.len(), 1, "the first request dials");
    assert_eq!(h.s.waiting(), 1);
    let conn = h.a.dials[0];
    h.ready(conn);
    assert_eq!(
        h.a.send_rates,
        vec![(conn, 1000)],
        "Brutal at the server's rate"
    );
    let (c, stream, bytes) = h.a.written[&req].clone();
    assert_eq!(c, conn);
    assert_eq!(h.target_of(req), "example.com:80");
    assert!(bytes.ends_with(b"early"), "early bytes follow the request");
    assert!(h.s.reading(conn, stream));
    assert_eq!(h.s.waiting(), 0);

    // The response and the target's first bytes arrive in one piece.
    let mut resp = tcp_response(true, "Connected");
    resp.extend_from_slice(b"hello");
    h.answer(req, &resp, false);
    let (pc, ps, to_local) = &h.a.pumps[&req];
    assert_eq!((*pc, *ps), (conn, stream));
    let mut expected = socks5::reply(ReplyCode::Succeeded, unspecified());
    expected.extend_from_slice(b"hello");
    assert_eq!(
        to_local, &expected,
        "success reply, then the target's bytes"
    );
    assert!(!h.s.reading(conn, stream), "the pump reads now");
    assert_eq!(h.streams_on(conn), 1);
    assert_eq!(h.stats.streams_opened.load(Ordering::Relaxed), 1);

    h.close(req);
    assert_eq!(h.streams_on(conn), 0);
    assert_eq!(h.s.request_count(), 0);
    assert!(h.a.resets.is_empty(), "a relay's end resets nothing");
}

#[test]
fn a_response_split_in_bytes_is_read_to_its_end() {
    let mut h = Harness::new(config(1), 64);
    let req = h.request(http("example.com:443"));
    h.ready(h.a.dials[0]);
    let resp = tcp_response(true, "Connected");
    for b in &resp {
        assert!(!h.a.pumps.contains_key(&req));
        h.answer(req, std::slice::from_ref(b), false);
    }
    assert_eq!(h.a.pumps[&req].2, http_proxy::response_connected());
}

#[test]
fn fast_open_replies_at_once_and_a_later_refusal_just_closes() {
    let mut cfg = config(1);
    cfg.fast_open = true;
    let mut h = Harness::new(cfg, 64);
    let req = h.request(socks("example.com:80", b""));
    assert_eq!(h.a.replies.len(), 1, "success reply before any connection");
    h.ready(h.a.dials[0]);
    h.answer(req, &tcp_response(false, "refused"), true);
    let (reply, code, _) = &h.a.closed_local[&req];
    assert!(reply.is_empty());
    assert_eq!(*code, "close");
}

#[test]
fn requests_wait_while_credit_is_out_and_go_when_it_returns() {
    let mut h = Harness::new(config(1), 2);
    let reqs: Vec<_> = (0..3)
        .map(|i| h.request(socks(&format!("example.com:{}", 80 + i), b"")))
        .collect();
    let conn = h.a.dials[0];
    h.ready(conn);
    assert!(h.a.written.contains_key(&reqs[0]));
    assert!(h.a.written.contains_key(&reqs[1]));
    assert!(
        !h.a.written.contains_key(&reqs[2]),
        "no credit for the third"
    );
    assert_eq!(h.s.waiting(), 1);
    assert_eq!(h.a.dials.len(), 1, "pool.maxConnections is 1");

    // Credit that is not there yet changes nothing.
    h.s.credit(h.now, conn);
    h.step();
    assert_eq!(h.s.waiting(), 1);

    // The first relay ends; the server grants a stream again.
    h.answer(reqs[0], &tcp_response(true, "ok"), false);
    h.close(reqs[0]);
    h.stream_done(conn);
    h.s.credit(h.now, conn);
    h.step();
    assert_eq!(h.s.waiting(), 0);
    assert_eq!(h.target_of(reqs[2]), "example.com:82");
}

#[test]
fn a_burst_opens_the_connections_it_needs_at_once() {
    let mut h = Harness::new(config(8), 2);
    let reqs: Vec<_> = (0..12)
        .map(|_| h.request(socks("example.com:80", b"")))
        .collect();
    assert_eq!(h.a.dials.len(), 1, "credit unknown: one connection");
    h.ready(h.a.dials[0]);
    // Two streams went out; the third found no credit: 10 wait, 2 a connection.
    assert_eq!(h.a.dials.len(), 1 + 5);
    h.ready_all();
    assert!(reqs.iter().all(|r| h.a.written.contains_key(r)));
    assert_eq!(h.s.waiting(), 0);
    for c in &h.a.dials {
        assert_eq!(h.streams_on(*c), 2);
    }
}

#[test]
fn no_stream_within_the_timeout_is_refused_with_the_reason() {
    let mut h = Harness::new(config(1), 1);
    // No connection comes up.
    let req = h.request(socks("example.com:80", b""));
    h.advance(TIMEOUT - Duration::from_millis(1));
    assert!(h.a.closed_local.is_empty());
    h.advance(Duration::from_millis(1));
    let (reply, code, why) = &h.a.closed_local[&req];
    assert_eq!(*code, "0x01");
    assert_eq!(reply[1], ReplyCode::GeneralFailure as u8);
    assert!(why.contains("no connection to the server"), "{why}");
    assert_eq!(h.s.waiting(), 0);
    assert_eq!(h.stats.refused.load(Ordering::Relaxed), 1);

    // A connection without credit: the HTTP front answers 503 and names the credit.
    let mut h = Harness::new(config(1), 1);
    let first = h.request(http("example.com:80"));
    h.ready(h.a.dials[0]);
    assert!(h.a.written.contains_key(&first));
    let req = h.request(http("example.com:81"));
    h.advance(TIMEOUT);
    let (reply, code, why) = &h.a.closed_local[&req];
    assert_eq!(*code, "503");
    assert!(reply.starts_with(b"HTTP/1.1 503"));
    assert!(why.contains("no stream credit"), "{why}");
}

#[test]
fn a_server_refusal_is_answered_with_its_reason() {
    let mut h = Harness::new(config(1), 64);
    let a = h.request(socks("example.com:80", b""));
    let b = h.request(http("example.com:81"));
    h.ready(h.a.dials[0]);
    h.answer(
        a,
        &tcp_response(false, "connect example.com:80: refused"),
        true,
    );
    h.answer(
        b,
        &tcp_response(false, "resolve example.com: no such host"),
        true,
    );
    let (reply, code, why) = &h.a.closed_local[&a];
    assert_eq!(*code, "0x05");
    assert_eq!(reply[1], ReplyCode::ConnectionRefused as u8);
    assert!(
        why.contains("server: connect example.com:80: refused"),
        "{why}"
    );
    let (reply, code, _) = &h.a.closed_local[&b];
    assert_eq!(*code, "502");
    let text = String::from_utf8_lossy(reply);
    assert!(text.contains("no such host"), "{text}");
    let (conn, sa, _) = h.a.written[&a];
    assert!(h.a.ended.contains(&(conn, sa)), "the stream is ended");
    assert_eq!(h.streams_on(conn), 0);
    // Garbage and a stream finished early are refusals too.
    let c = h.request(socks("example.com:82", b""));
    let d = h.request(socks("example.com:83", b""));
    h.answer(
        c,
        &[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        false,
    );
    h.answer(d, &tcp_response(true, "Connected")[..3], true);
    assert!(h.a.closed_local[&c].2.contains("malformed response"));
    assert!(h.a.closed_local[&d].2.contains("closed the stream"));
}

#[test]
fn an_auth_refusal_closes_the_connection_and_requests_keep_waiting() {
    let mut h = Harness::new(config(1), 64);
    let req = h.request(socks("example.com:80", b""));
    let conn = h.a.dials[0];
    h.s.connected(conn);
    h.step();
    let stream = h.a.auth_streams[&conn];
    h.s.stream_data(h.now, conn, stream, &h3::response(404, &[], b""), true);
    h.step();
    assert_eq!(h.a.closed_conns, vec![conn]);
    assert_eq!(h.stats.auth_failures.load(Ordering::Relaxed), 1);
    assert!(h.s.pool().conns.is_empty());
    assert_eq!(h.s.waiting(), 1, "the request waits for another connection");
    // The pool backs off, then tries again.
    h.advance(Duration::from_millis(200));
    assert_eq!(h.a.dials.len(), 2);
    assert!(!h.a.closed_local.contains_key(&req));
    // A late auth answer on the closed connection lands nowhere.
    h.s.stream_data(
        h.now,
        conn,
        stream,
        &h3::auth_ok_response(true, CcRx::Auto, ""),
        true,
    );
    h.step();
    assert!(h.a.send_rates.is_empty());
    assert_eq!(h.s.pool().conns.iter().filter(|c| c.usable()).count(), 0);
}

#[test]
fn a_connection_lost_before_any_answer_sends_its_requests_again() {
    let mut h = Harness::new(config(2), 64);
    let a = h.request(socks("example.com:80", b"first"));
    let b = h.request(socks("example.com:81", b""));
    let conn = h.a.dials[0];
    h.ready(conn);
    assert_eq!(h.a.written[&a].0, conn);
    h.a.written.clear();
    h.lose(conn);
    assert!(h.a.closed_local.is_empty(), "never answered: sent again");
    assert_eq!(h.s.waiting(), 2);
    assert_eq!(h.stats.requeued.load(Ordering::Relaxed), 2);
    h.advance(Duration::from_millis(200));
    let next = *h.a.dials.last().expect("a new connection");
    assert_ne!(next, conn);
    h.ready(next);
    assert_eq!(h.a.written[&a].0, next);
    assert!(h.a.written[&a].2.ends_with(b"first"), "its early bytes too");
    assert_eq!(h.target_of(b), "example.com:81");
}

#[test]
fn a_connection_lost_mid_request_or_mid_relay_ends_what_it_carried() {
    let mut h = Harness::new(config(1), 64);
    let relay = h.request(socks("example.com:80", b""));
    let asked = h.request(http("example.com:81"));
    let conn = h.a.dials[0];
    h.ready(conn);
    h.answer(relay, &tcp_response(true, "Connected"), false);
    // Part of a response: the connection is served, the request cannot go again.
    h.answer(asked, &tcp_response(true, "Connected")[..2], false);
    h.lose(conn);
    assert_eq!(h.a.aborted, vec![relay]);
    let (_, code, why) = &h.a.closed_local[&asked];
    assert_eq!(*code, "502");
    assert!(why.contains("connection to the server was lost"), "{why}");
    assert_eq!(h.s.request_count(), 0);
    // The adapter's pipe ends afterwards: nothing is left to end.
    h.close(relay);
    assert!(h.a.resets.is_empty());
    assert!(
        h.a.ended.is_empty(),
        "a lost connection's streams need no end"
    );
}

#[test]
fn a_local_close_in_each_phase() {
    let mut h = Harness::new(config(1), 64);
    // Waiting: no connection yet.
    let waiting = h.request(socks("example.com:80", b""));
    h.close(waiting);
    assert_eq!(h.s.waiting(), 0);
    assert_eq!(h.stats.waiting_now.load(Ordering::Relaxed), 0);
    let conn = h.a.dials[0];
    h.ready(conn);
    assert!(h.a.written.is_empty(), "a closed request gets no stream");

    // Opening: the stream comes after the request went away: it is reset.
    h.a.hold_opens = true;
    let opening = h.request(socks("example.com:81", b""));
    assert_eq!(h.a.held.len(), 1);
    h.close(opening);
    let (c, r) = h.a.held.pop().expect("held");
    h.a.hold_opens = false;
    h.answer_open(c, r);
    h.step();
    assert_eq!(h.a.resets.len(), 1);
    assert!(h.a.written.is_empty());
    assert_eq!(h.streams_on(conn), 0);

    // Requested: the stream is reset.
    let requested = h.request(socks("example.com:82", b""));
    let (_, stream, _) = h.a.written[&requested];
    h.close(requested);
    assert_eq!(h.a.resets.last(), Some(&(conn, stream, STREAM_ABORT)));
    assert!(!h.s.reading(conn, stream));
    assert_eq!(h.streams_on(conn), 0);

    // Relay: the pump ended the stream itself.
    let relay = h.request(socks("example.com:83", b""));
    h.answer(relay, &tcp_response(true, "ok"), false);
    let resets = h.a.resets.len();
    h.close(relay);
    assert_eq!(h.a.resets.len(), resets);
    assert_eq!(h.streams_on(conn), 0);
    assert_eq!(h.s.request_count(), 0);
    assert!(h.a.closed_local.is_empty(), "nobody was refused");
}

#[test]
fn a_server_reset_before_the_answer_refuses_and_after_it_is_the_pumps() {
    let mut h = Harness::new(config(1), 64);
    let asked = h.request(socks("example.com:80", b""));
    let relay = h.request(socks("example.com:81", b""));
    let conn = h.a.dials[0];
    h.ready(conn);
    h.answer(relay, &tcp_response(true, "ok"), false);
    let (_, sa, _) = h.a.written[&asked];
    let (_, sr, _) = h.a.written[&relay];
    h.s.stream_reset(h.now, conn, sa);
    h.s.stream_reset(h.now, conn, sr);
    h.step();
    let (_, code, why) = &h.a.closed_local[&asked];
    assert_eq!(*code, "0x05");
    assert!(why.contains("reset the stream"), "{why}");
    assert!(!h.a.closed_local.contains_key(&relay));
    assert!(h.a.aborted.is_empty());
}

#[test]
fn late_events_land_nowhere() {
    let mut h = Harness::new(config(1), 64);
    let req = h.request(socks("example.com:80", b""));
    let conn = h.a.dials[0];
    h.ready(conn);
    let (_, stream, _) = h.a.written[&req];
    h.answer(req, &tcp_response(false, "refused"), true);
    assert_eq!(h.a.closed_local.len(), 1);
    let before = h.a.pumps.len();
    // The answer again, a reset, a stream for a request never asked, a close.
    h.s.stream_data(h.now, conn, stream, &tcp_response(true, "ok"), false);
    h.s.stream_reset(h.now, conn, stream);
    h.s.stream_opened(h.now, RequestId(999), Some(stream));
    h.s.request_closed(h.now, req);
    h.s.credit(h.now, ConnId(999));
    h.s.connection_lost(h.now, ConnId(999), true, &"unknown");
    h.s.stream_data(h.now, ConnId(999), stream, b"x", true);
    h.step();
    assert_eq!(h.a.pumps.len(), before);
    assert_eq!(h.a.closed_local.len(), 1);
    assert!(h.a.resets.is_empty());
    assert!(h.a.closed_conns.is_empty());
    assert_eq!(h.streams_on(conn), 0);
}

#[test]
fn a_connection_the_server_never_answers_is_closed_and_its_requests_go_elsewhere() {
    let mut h = Harness::new(config(2), 1);
    let a = h.request(socks("example.com:80", b""));
    let b = h.request(socks("example.com:81", b""));
    h.ready_all();
    h.advance(Duration::from_millis(200));
    h.ready_all();
    assert_eq!(h.a.dials.len(), 2);
    let (ca, ..) = h.a.written[&a];
    let (cb, ..) = h.a.written[&b];
    assert_ne!(ca, cb);
    h.answer(a, &tcp_response(true, "ok"), false);
    // `b`'s connection never answers: after the stall it is closed and `b` waits again.
    h.a.written.remove(&b);
    h.advance(super::super::pool::STALL);
    assert_eq!(h.a.closed_conns, vec![cb]);
    assert!(h.a.closed_local.is_empty());
    assert_eq!(h.s.waiting(), 1);
    assert_eq!(h.stats.server_refusals.load(Ordering::Relaxed), 1);
    // It goes out when `a`'s stream is done.
    h.close(a);
    h.stream_done(ca);
    h.s.credit(h.now, ca);
    h.step();
    assert_eq!(h.a.written[&b].0, ca);
}

/// A config whose server is given by name, with requests that wait long enough to see the
/// pool retry.
fn named(max_connections: usize) -> Config {
    let mut cfg = config(max_connections);
    cfg.pool.server = ServerAddr::Name {
        host: "hy2.example".into(),
        port: 8443,
    };
    cfg.stream_open_timeout = Duration::from_secs(60);
    cfg
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

#[test]
fn a_server_given_by_name_is_looked_up_before_each_dial() {
    let mut h = Harness::new(named(4), 64);
    let req = h.request(socks("example.com:80", b""));
    assert_eq!(h.a.resolves.len(), 1);
    let (conn, host, port) = h.a.resolves[0].clone();
    assert_eq!((host.as_str(), port), ("hy2.example", 8443));
    assert!(h.a.dials.is_empty(), "no dial before the answer");
    let (v6, v4) = (addr("[2001:db8::1]:8443"), addr("192.0.2.9:8443"));
    h.s.resolved(h.now, conn, Ok(vec![v6, v4]));
    h.step();
    assert_eq!(h.a.dials, vec![conn]);
    assert_eq!(
        h.a.dialled_at[&conn], v4,
        "IPv4 first, as the official client"
    );
    h.ready(conn);
    h.answer(req, &tcp_response(true, "ok"), false);
    assert!(h.a.pumps.contains_key(&req));
    // The connection goes: the next one looks the name up again and goes where it says now.
    h.lose(conn);
    h.request(socks("example.com:81", b""));
    assert_eq!(h.a.resolves.len(), 2);
    let next = h.a.resolves[1].0;
    assert_ne!(next, conn);
    h.s.resolved(h.now, next, Ok(vec![v6]));
    h.step();
    assert_eq!(h.a.dialled_at[&next], v6);
}

#[test]
fn a_lookup_answer_for_a_connection_no_longer_waiting_is_ignored() {
    let mut h = Harness::new(named(1), 64);
    h.request(socks("example.com:80", b""));
    let first = h.a.resolves[0].0;
    // No answer within the setup timeout: the attempt is abandoned, another starts after
    // the backoff.
    h.advance(super::super::pool::SETUP_TIMEOUT);
    assert_eq!(h.a.closed_conns, vec![first]);
    h.advance(super::super::pool::MIN_BACKOFF);
    assert_eq!(h.a.resolves.len(), 2);
    let second = h.a.resolves[1].0;
    // The first answer comes late; another names a connection never looked up.
    h.s.resolved(h.now, first, Ok(vec![addr("192.0.2.10:8443")]));
    h.s.resolved(h.now, ConnId(999), Ok(vec![addr("192.0.2.11:8443")]));
    h.step();
    assert!(h.a.dials.is_empty());
    h.s.resolved(h.now, second, Ok(vec![addr("192.0.2.12:8443")]));
    h.step();
    assert_eq!(h.a.dials, vec![second]);
    // A second answer for a connection already dialled changes nothing.
    h.s.resolved(h.now, second, Ok(vec![addr("192.0.2.13:8443")]));
    h.step();
    assert_eq!(h.a.dials, vec![second]);
    assert_eq!(h.a.dialled_at[&second], addr("192.0.2.12:8443"));
}

#[test]
fn a_failed_lookup_is_a_failed_attempt_retried_after_the_backoff() {
    use super::super::pool::MIN_BACKOFF;
    let ms = Duration::from_millis(1);
    let mut h = Harness::new(named(1), 64);
    let req = h.request(socks("example.com:80", b""));
    let c1 = h.a.resolves[0].0;
    h.s.resolved(h.now, c1, Err("no such host".into()));
    h.step();
    assert!(h.a.dials.is_empty());
    assert_eq!(h.a.resolves.len(), 1, "not again at once");
    assert_eq!(h.s.waiting(), 1, "the request still waits");
    assert_eq!(h.s.poll_timeout(h.now), Some(h.now + MIN_BACKOFF));
    h.advance(MIN_BACKOFF - ms);
    assert_eq!(h.a.resolves.len(), 1);
    h.advance(ms);
    assert_eq!(h.a.resolves.len(), 2);
    // No address at all fails too, and the backoff doubles.
    let c2 = h.a.resolves[1].0;
    h.s.resolved(h.now, c2, Ok(Vec::new()));
    h.step();
    h.advance(2 * MIN_BACKOFF - ms);
    assert_eq!(h.a.resolves.len(), 2);
    h.advance(ms);
    assert_eq!(h.a.resolves.len(), 3);
    let c3 = h.a.resolves[2].0;
    h.s.resolved(h.now, c3, Ok(vec![addr("192.0.2.9:8443")]));
    h.step();
    assert_eq!(h.a.dials, vec![c3]);
    h.ready(c3);
    assert_eq!(h.a.written[&req].0, c3, "the request goes out on it");
    assert!(h.a.closed_local.is_empty());
}

#[test]
fn a_server_given_by_address_is_dialled_without_a_lookup() {
    let mut h = Harness::new(config(4), 64);
    h.request(socks("example.com:80", b""));
    assert!(h.a.resolves.is_empty());
    let conn = h.a.dials[0];
    assert_eq!(h.a.dialled_at[&conn], addr(SERVER));
    // An answer nobody asked for dials nothing.
    h.s.resolved(h.now, conn, Ok(vec![addr("192.0.2.9:8443")]));
    h.step();
    assert_eq!(h.a.dials, vec![conn]);
}
