//! The server session in virtual time: a scripted client on one side, a model of the
//! adapter on the other ([`Harness`]), and a clock that moves only when a test says so.
//! Races that need threads and sockets elsewhere (a verdict after its connection closed, a
//! DNS answer after the client reset the stream) are a few lines here.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{Dir, Side, StreamId};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::limits::Caps;
use crate::proto::h3::ResponseReader;
use crate::proto::tcp::TcpResponse;
use crate::server::guard::OutboundGuard;

const CLIENT: &str = "192.0.2.7:40000";
const TARGET: &str = "192.0.2.80:443";

fn config(auth: Authenticator) -> Hy2Config {
    Hy2Config {
        auth,
        masquerade: Masquerade::NotFound,
        guard: OutboundGuard::default(),
        udp: true,
        udp_idle_timeout: Duration::from_secs(60),
        bandwidth_up: 0,
        bandwidth_down: 0,
        ignore_client_bandwidth: false,
        speed_test: false,
        limits: Limits::new(Caps::default(), None),
        max_incoming_streams: 64,
        auth_timeout: Duration::from_secs(60),
        max_unauthenticated: 10_000,
        max_unauthenticated_per_source: 256,
    }
}

fn password() -> Hy2Config {
    config(Authenticator::Password("secret".into()))
}

fn http_auth() -> Hy2Config {
    config(Authenticator::Http {
        url: "http://127.0.0.1:1/auth".into(),
        insecure: false,
    })
}

fn bidi(n: u64) -> StreamId {
    StreamId::new(Side::Client, Dir::Bi, n)
}

/// What the adapter did for the session, as a model of it would.
#[derive(Default)]
struct Adapter {
    /// Responses written, by stream.
    responses: HashMap<(ConnId, StreamId), Vec<u8>>,
    resets: Vec<(ConnId, StreamId, u64)>,
    closed: Vec<(ConnId, u32)>,
    control_streams: HashSet<ConnId>,
    send_rates: Vec<(ConnId, u64)>,
    /// The latest credit decision per connection.
    credit: HashMap<ConnId, Option<u64>>,
    jobs: Vec<(JobId, Work)>,
    resolves: Vec<(RelayId, String, u16)>,
    /// Connects issued: relay, its stream, address, first bytes.
    connects: Vec<(RelayId, StreamId, SocketAddr, Vec<u8>)>,
    /// Relays joined to a socket (connected or connecting), until closed.
    pipes: HashSet<RelayId>,
    started: Vec<RelayId>,
    /// Relays failed with this response.
    failed: Vec<(RelayId, Vec<u8>)>,
    aborted: Vec<RelayId>,
    speed_tests: Vec<(ConnId, StreamId)>,
}

struct Harness {
    s: Session,
    now: Instant,
    a: Adapter,
}

impl Harness {
    fn new(cfg: Hy2Config) -> Self {
        Harness {
            s: Session::with_rng(Arc::new(cfg), StdRng::seed_from_u64(7)),
            now: Instant::now(),
            a: Adapter::default(),
        }
    }

    fn limits(&self) -> Arc<Limits> {
        self.s.config().limits.clone()
    }

    /// Performs the queued actions as the adapter does: a failed or aborted relay's pipe
    /// closes at once.
    fn step(&mut self) {
        while let Some(action) = self.s.poll_action() {
            match action {
                Action::ControlStream(c) => {
                    self.a.control_streams.insert(c);
                }
                Action::Respond {
                    conn,
                    stream,
                    bytes,
                } => {
                    let old = self.a.responses.insert((conn, stream), bytes);
                    assert!(old.is_none(), "two responses on {conn:?} {stream}");
                }
                Action::Reset { conn, stream, code } => self.a.resets.push((conn, stream, code)),
                Action::Close { conn, code, .. } => self.a.closed.push((conn, code)),
                Action::SendRate {
                    conn,
                    bytes_per_sec,
                } => self.a.send_rates.push((conn, bytes_per_sec)),
                Action::Credit { conn, limit } => {
                    self.a.credit.insert(conn, limit);
                }
                Action::Offload { job, work } => self.a.jobs.push((job, work)),
                Action::Resolve { relay, host, port } => self.a.resolves.push((relay, host, port)),
                Action::Connect {
                    relay,
                    stream,
                    addr,
                    first,
                    ..
                } => {
                    assert!(self.a.pipes.insert(relay), "{relay:?} connected twice");
                    self.a.connects.push((relay, stream, addr, first));
                }
                Action::Start(relay) => {
                    assert!(
                        self.a.pipes.contains(&relay),
                        "{relay:?} started without a pipe"
                    );
                    self.a.started.push(relay);
                }
                Action::Fail { relay, response } => {
                    assert!(
                        self.a.pipes.remove(&relay),
                        "{relay:?} failed without a pipe"
                    );
                    self.a.failed.push((relay, response));
                    self.s.relay_closed(relay);
                }
                Action::Abort(relay) => {
                    assert!(
                        self.a.pipes.remove(&relay),
                        "{relay:?} aborted without a pipe"
                    );
                    self.a.aborted.push(relay);
                    self.s.relay_closed(relay);
                }
                Action::SpeedTest { conn, stream, .. } => self.a.speed_tests.push((conn, stream)),
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.handle_timeout(self.now);
        self.step();
    }

    /// A connection from `remote` that finished its handshake.
    fn connect_from(&mut self, remote: &str) -> ConnId {
        let conn = self.s.connection(remote.parse().unwrap());
        self.s.connected(self.now, conn);
        self.step();
        conn
    }

    fn send(&mut self, conn: ConnId, stream: StreamId, data: &[u8], fin: bool) {
        if !self.s.reading(conn, stream) {
            self.s.stream_opened(conn, stream);
        }
        self.s.stream_data(self.now, conn, stream, data, fin);
        self.step();
    }

    /// Sends the auth request on `stream`.
    fn auth(&mut self, conn: ConnId, stream: StreamId, auth: &str) {
        let req = h3::auth_request_headers(auth, 12_500_000, "pad");
        self.send(conn, stream, &req, true);
    }

    /// A connection authenticated with the password `secret`.
    fn client(&mut self) -> ConnId {
        let conn = self.connect_from(CLIENT);
        self.auth(conn, bidi(0), "secret");
        assert_eq!(self.status(conn, bidi(0)), 233);
        conn
    }

    fn proxy(&mut self, conn: ConnId, stream: StreamId, target: &str, first: &[u8]) {
        let mut req = Vec::new();
        TcpRequest::encode(target, b"padding", &mut req).unwrap();
        req.extend_from_slice(first);
        self.send(conn, stream, &req, false);
    }

    /// The HTTP status of the response on `stream`.
    fn status(&self, conn: ConnId, stream: StreamId) -> u16 {
        let bytes = self
            .a
            .responses
            .get(&(conn, stream))
            .unwrap_or_else(|| panic!("no response on {conn:?} {stream}"));
        let mut r = ResponseReader::new();
        r.push(bytes).unwrap().expect("a whole response").status
    }

    /// The TCPResponse on `stream` (an answer written without a pipe) or of `relay`'s
    /// failure.
    fn tcp_error(&self, conn: ConnId, stream: StreamId) -> String {
        let bytes = self
            .a
            .responses
            .get(&(conn, stream))
            .unwrap_or_else(|| panic!("no TCPResponse on {conn:?} {stream}"));
        let (resp, _) = TcpResponse::parse(bytes).unwrap().unwrap();
        assert!(!resp.is_ok());
        resp.message
    }

    fn relay_of(&self, stream: StreamId) -> RelayId {
        self.a
            .connects
            .iter()
            .find(|c| c.1 == stream)
            .map(|c| c.0)
            .or_else(|| self.s.relays().find(|v| v.stream == stream).map(|v| v.id))
            .unwrap_or_else(|| panic!("no relay on {stream}"))
    }

    fn streams_held(&self) -> u64 {
        self.limits().streams.held()
    }
}

// ---- authentication ----

#[test]
fn password_authenticates_and_relays() {
    let mut h = Harness::new(password());
    let conn = h.connect_from(CLIENT);
    assert!(h.a.control_streams.contains(&conn));
    h.auth(conn, bidi(0), "secret");
    assert_eq!(h.status(conn, bidi(0)), 233);
    assert_eq!(h.a.send_rates, vec![(conn, 12_500_000)]);
    assert!(h.s.udp_user(conn).is_some());

    h.proxy(conn, bidi(1), TARGET, b"GET /");
    let relay = h.relay_of(bidi(1));
    let (_, _, addr, first) = &h.a.connects[0];
    assert_eq!(*addr, TARGET.parse().unwrap());
    assert_eq!(first, b"GET /");
    assert_eq!(h.streams_held(), 1);

    h.s.connect_done(relay, Ok(()));
    h.step();
    assert_eq!(h.a.started, vec![relay]);
    let view = h.s.relays().next().unwrap();
    assert_eq!((view.phase, view.user), (Phase::Established, Some("user")));

    h.s.relay_closed(relay);
    assert_eq!(h.s.relay_count(), 0);
    assert_eq!(h.streams_held(), 0, "the permit comes back with the relay");
}

#[test]
fn a_wrong_password_gets_the_masquerade_and_cannot_relay() {
    let mut h = Harness::new(password());
    let conn = h.connect_from(CLIENT);
    h.auth(conn, bidi(0), "wrong");
    assert_eq!(h.status(conn, bidi(0)), 404);
    assert_eq!(h.s.counters.auth_failures, 1);
    assert!(h.a.send_rates.is_empty());
    assert!(h.s.udp_user(conn).is_none());

    // A proxy stream before auth is not one: it is read as HTTP/3 and refused as such.
    h.proxy(conn, bidi(1), TARGET, b"");
    assert!(h.a.connects.is_empty());
    assert_eq!(
        h.a.resets,
        vec![(conn, bidi(1), h3::error::H3_MESSAGE_ERROR)]
    );
}

#[test]
fn userpass_names_are_case_insensitive() {
    let users = HashMap::from([("alice".to_string(), "pw".to_string())]);
    let mut h = Harness::new(config(Authenticator::UserPass(users)));
    let conn = h.connect_from(CLIENT);
    h.auth(conn, bidi(0), "Alice:pw");
    assert_eq!(h.status(conn, bidi(0)), 233);
    h.proxy(conn, bidi(1), TARGET, b"");
    assert_eq!(h.s.relays().next().unwrap().user, Some("alice"));

    let other = h.connect_from("192.0.2.8:1");
    h.auth(other, bidi(0), "alice:PW");
    assert_eq!(h.status(other, bidi(0)), 404);
}

#[test]
fn a_second_auth_changes_nothing() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.auth(conn, bidi(1), "secret");
    assert_eq!(h.status(conn, bidi(1)), 233);
    assert_eq!(h.a.send_rates.len(), 1, "the send rate is set once");
    assert_eq!(h.limits().user("user").online.load(Ordering::Relaxed), 1);
}

#[test]
fn an_http_verdict_that_comes_early_authenticates() {
    let mut h = Harness::new(http_auth());
    let conn = h.connect_from(CLIENT);
    h.auth(conn, bidi(0), "token");
    let (job, work) =
        h.a.jobs
            .pop()
            .expect("the auth request goes off the data path");
    match work {
        Work::Auth {
            auth,
            cc_rx,
            remote,
        } => {
            assert_eq!((auth.as_str(), cc_rx), ("token", 12_500_000));
            assert_eq!(remote, CLIENT.parse().unwrap());
        }
        w => panic!("unexpected work {w:?}"),
    }
    assert!(!h.a.responses.contains_key(&(conn, bidi(0))));
    h.s.verdict(job, Ok(Some("bob".into())));
    h.step();
    assert_eq!(h.status(conn, bidi(0)), 233);
    h.proxy(conn, bidi(1), TARGET, b"");
    assert_eq!(h.s.relays().next().unwrap().user, Some("bob"));
}

#[test]
fn an_http_verdict_after_its_connection_closed_lands_nowhere() {
    let mut h = Harness::new(http_auth());
    let old = h.connect_from(CLIENT);
    h.auth(old, bidi(0), "token");
    let (job, _) = h.a.jobs.pop().unwrap();
    h.s.connection_lost(old);
    h.step();

    // A new connection (on a real worker it may take the old one's quinn handle) that
    // never authenticates.
    let new = h.connect_from(CLIENT);
    assert_ne!(new, old);
    h.s.verdict(job, Ok(Some("bob".into())));
    h.step();
    assert!(
        h.a.responses.is_empty(),
        "no answer for a closed connection"
    );
    assert!(h.a.send_rates.is_empty());
    assert!(h.s.udp_user(new).is_none());
    h.proxy(new, bidi(0), TARGET, b"");
    assert!(h.a.connects.is_empty(), "the new connection cannot relay");
    assert_eq!(h.limits().user("bob").online.load(Ordering::Relaxed), 0);
}

#[test]
fn an_http_verdict_that_comes_late_still_authenticates_a_live_connection() {
    let mut h = Harness::new(http_auth());
    let conn = h.connect_from(CLIENT);
    h.auth(conn, bidi(0), "token");
    let (job, _) = h.a.jobs.pop().unwrap();
    h.advance(Duration::from_secs(30));
    h.s.verdict(job, Ok(Some("bob".into())));
    h.step();
    assert_eq!(h.status(conn, bidi(0)), 233);
    // Authenticated before the deadline: it stays.
    h.advance(Duration::from_secs(60));
    assert!(h.a.closed.is_empty());
}

#[test]
fn a_refusing_or_failing_backend_gets_the_masquerade() {
    let mut h = Harness::new(http_auth());
    let conn = h.connect_from(CLIENT);
    h.auth(conn, bidi(0), "a");
    h.auth(conn, bidi(4), "b");
    let (failing, _) = h.a.jobs.pop().unwrap();
    let (refusing, _) = h.a.jobs.pop().unwrap();
    h.s.verdict(refusing, Ok(None));
    h.s.verdict(failing, Err("backend down".into()));
    h.step();
    assert_eq!(h.status(conn, bidi(0)), 404);
    assert_eq!(h.status(conn, bidi(4)), 404);
    assert_eq!(
        h.s.counters.auth_failures, 1,
        "only a refusal is an auth failure"
    );
    assert!(h.s.udp_user(conn).is_none());
}

#[test]
fn a_saturated_auth_room_answers_503() {
    let mut h = Harness::new(http_auth());
    let conn = h.connect_from(CLIENT);
    h.auth(conn, bidi(0), "a");
    let (job, _) = h.a.jobs.pop().unwrap();
    h.s.job_refused(job);
    h.step();
    assert_eq!(h.status(conn, bidi(0)), 503);
    // The job is gone: a verdict for it afterwards does nothing.
    h.s.verdict(job, Ok(Some("bob".into())));
    h.step();
    assert!(h.s.udp_user(conn).is_none());
}

// ---- admission ----

#[test]
fn an_unauthenticated_connection_is_closed_at_its_deadline() {
    let mut h = Harness::new(password());
    let idle = h.connect_from(CLIENT);
    let authed = h.client();
    h.advance(Duration::from_secs(59));
    assert!(h.a.closed.is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(h.a.closed, vec![(idle, H3_NO_ERROR)]);
    assert_eq!(h.s.connection_count(), 1);
    assert!(h.s.udp_user(authed).is_some());
}

#[test]
fn unauthenticated_connections_per_source_are_capped() {
    let mut cfg = password();
    cfg.max_unauthenticated_per_source = 2;
    let mut h = Harness::new(cfg);
    let a = h.connect_from("192.0.2.1:1");
    let _b = h.connect_from("192.0.2.1:2");
    let c = h.connect_from("192.0.2.1:3");
    assert_eq!(h.a.closed, vec![(c, H3_EXCESSIVE_LOAD)]);
    assert!(!h.a.control_streams.contains(&c));
    let other = h.connect_from("192.0.2.2:1");
    assert!(h.a.control_streams.contains(&other));
    // Authenticating frees a place for the source.
    h.auth(a, bidi(0), "secret");
    let d = h.connect_from("192.0.2.1:4");
    assert!(h.a.control_streams.contains(&d));
}

// ---- caps: parking and credit ----

#[test]
fn a_request_over_the_user_cap_parks_and_credit_is_withheld_until_a_permit_returns() {
    let mut h = Harness::new(password());
    h.limits().set_caps(Caps {
        streams_per_user: Some(2),
        ..Caps::default()
    });
    let conn = h.client();
    h.proxy(conn, bidi(1), TARGET, b"");
    h.proxy(conn, bidi(2), TARGET, b"");
    assert_eq!(h.a.connects.len(), 2);
    assert!(h.a.credit.is_empty());

    h.proxy(conn, bidi(3), TARGET, b"third");
    assert_eq!(h.a.connects.len(), 2, "the third request waits");
    assert_eq!(h.s.parked_count(), 1);
    assert_eq!(
        h.a.credit.get(&conn),
        Some(&None),
        "credit held at the streams open"
    );
    assert_eq!(h.s.counters.credit_withheld, 1);
    assert!(!h.s.reading(conn, bidi(3)), "a parked request is not read");

    // Rechecks keep the credit withheld while the cap is full.
    h.advance(caps::RECHECK);
    assert_eq!(h.a.credit.get(&conn), Some(&None));

    let first = h.relay_of(bidi(1));
    h.s.connect_done(first, Ok(()));
    h.step();
    h.s.relay_closed(first);
    h.advance(caps::RECHECK);
    assert_eq!(h.a.connects.len(), 3, "the parked request starts");
    assert_eq!(h.a.connects[2].3, b"third");
    assert_eq!(h.s.parked_count(), 0);
    // The cap is full again (two relays): credit stays withheld...
    assert_eq!(h.a.credit.get(&conn), Some(&None));
    let second = h.relay_of(bidi(2));
    h.s.connect_done(second, Ok(()));
    h.step();
    h.s.relay_closed(second);
    h.advance(caps::RECHECK);
    // ...and comes back once there is room and nothing is parked.
    assert_eq!(h.a.credit.get(&conn), Some(&Some(64)));
    assert_eq!(h.s.counters.credit_withheld, 1);
}

#[test]
fn a_parked_request_of_a_lost_connection_never_starts() {
    let mut h = Harness::new(password());
    h.limits().set_caps(Caps {
        streams_per_user: Some(1),
        ..Caps::default()
    });
    let conn = h.client();
    h.proxy(conn, bidi(1), TARGET, b"");
    h.proxy(conn, bidi(2), TARGET, b"");
    assert_eq!(h.s.parked_count(), 1);
    h.s.connection_lost(conn);
    h.step();
    assert_eq!(h.s.parked_count(), 0);
    h.advance(caps::RECHECK);
    assert_eq!(h.a.connects.len(), 1);
    assert_eq!(h.s.relay_count(), 0);
    assert_eq!(h.streams_held(), 0);
}

// ---- relays: every phase, every way out ----

#[test]
fn a_reset_while_resolving_ends_the_relay_and_the_late_answer_brings_nothing() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.proxy(conn, bidi(1), "example.com:80", b"");
    let (relay, host, port) = h.a.resolves[0].clone();
    assert_eq!((host.as_str(), port), ("example.com", 80));
    h.s.stream_stopped(conn, bidi(1));
    h.step();
    assert_eq!(h.a.resets.last(), Some(&(conn, bidi(1), STREAM_ABORT)));
    assert_eq!(h.s.relay_count(), 0);
    assert_eq!(h.streams_held(), 0);

    h.s.resolved(relay, Ok(vec![TARGET.parse().unwrap()]));
    h.step();
    assert!(h.a.connects.is_empty(), "a late answer connects nothing");
}

#[test]
fn a_reset_while_connecting_aborts_and_a_late_connect_starts_nothing() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.proxy(conn, bidi(1), TARGET, b"");
    let relay = h.relay_of(bidi(1));
    h.s.stream_stopped(conn, bidi(1));
    h.step();
    assert_eq!(h.a.aborted, vec![relay]);
    assert_eq!(h.streams_held(), 0);
    h.s.connect_done(relay, Ok(()));
    h.step();
    assert!(h.a.started.is_empty());
}

#[test]
fn a_reset_while_established_aborts_once() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.proxy(conn, bidi(1), TARGET, b"");
    let relay = h.relay_of(bidi(1));
    h.s.connect_done(relay, Ok(()));
    h.step();
    h.s.stream_stopped(conn, bidi(1));
    h.s.stream_stopped(conn, bidi(1));
    h.step();
    assert_eq!(h.a.aborted, vec![relay]);
    assert_eq!((h.s.relay_count(), h.streams_held()), (0, 0));
}

#[test]
fn a_lost_connection_ends_its_relays_in_every_phase() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.proxy(conn, bidi(1), "example.com:80", b"");
    h.proxy(conn, bidi(2), TARGET, b"");
    h.proxy(conn, bidi(3), TARGET, b"");
    let established = h.relay_of(bidi(3));
    h.s.connect_done(established, Ok(()));
    h.step();
    assert_eq!(h.s.relay_count(), 3);

    h.s.connection_lost(conn);
    h.step();
    assert_eq!((h.s.relay_count(), h.streams_held()), (0, 0));
    assert_eq!(h.a.aborted.len(), 2, "the relays with sockets are aborted");
    assert!(h.a.pipes.is_empty());
    assert_eq!(h.limits().user("user").online.load(Ordering::Relaxed), 0);
}

#[test]
fn a_connect_that_times_out_fails_in_either_phase() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.proxy(conn, bidi(1), "example.com:80", b"");
    h.proxy(conn, bidi(2), TARGET, b"");
    let connecting = h.relay_of(bidi(2));
    h.advance(CONNECT_TIMEOUT);
    assert!(h.tcp_error(conn, bidi(1)).contains("timed out"));
    let (failed, response) = &h.a.failed[0];
    assert_eq!(*failed, connecting);
    let (resp, _) = TcpResponse::parse(response).unwrap().unwrap();
    assert_eq!(resp.message, format!("connect {TARGET}: timed out"));
    assert_eq!((h.s.relay_count(), h.streams_held()), (0, 0));
}

#[test]
fn resolve_and_connect_failures_answer_the_client() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.proxy(conn, bidi(1), "nowhere.invalid:80", b"");
    let (relay, ..) = h.a.resolves[0].clone();
    h.s.resolved(relay, Err(std::io::Error::other("NXDOMAIN")));
    h.step();
    assert_eq!(
        h.tcp_error(conn, bidi(1)),
        "resolve nowhere.invalid:80: NXDOMAIN"
    );

    h.proxy(conn, bidi(2), TARGET, b"");
    let relay = h.relay_of(bidi(2));
    h.s.connect_done(relay, Err("connection refused".into()));
    h.step();
    assert_eq!(h.a.failed.len(), 1);
    assert_eq!((h.s.relay_count(), h.streams_held()), (0, 0));
}

#[test]
fn the_outbound_guard_refuses_loopback_after_resolving() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.proxy(conn, bidi(1), "localhost:22", b"");
    let (relay, ..) = h.a.resolves[0].clone();
    h.s.resolved(relay, Ok(vec!["127.0.0.1:22".parse().unwrap()]));
    h.step();
    assert!(h
        .tcp_error(conn, bidi(1))
        .starts_with("refused localhost:22"));
    assert_eq!(h.s.counters.refused, 1);
    assert!(h.a.connects.is_empty());
}

#[test]
fn malformed_and_split_requests() {
    let mut h = Harness::new(password());
    let conn = h.client();
    // A TCPRequest that arrives a byte at a time.
    let mut req = Vec::new();
    TcpRequest::encode(TARGET, b"pad", &mut req).unwrap();
    h.s.stream_opened(conn, bidi(1));
    for b in &req {
        assert!(h.a.connects.is_empty());
        h.send(conn, bidi(1), std::slice::from_ref(b), false);
    }
    assert_eq!(h.a.connects.len(), 1);

    // An address length past the protocol's bound.
    let mut bad = vec![0x44, 0x01];
    bad.extend_from_slice(&[0x80, 0x00, 0x10, 0x00]);
    h.send(conn, bidi(2), &bad, false);
    assert_eq!(
        h.a.resets,
        vec![(conn, bidi(2), h3::error::H3_MESSAGE_ERROR)]
    );
    assert_eq!(h.s.counters.refused, 1);
}

// ---- operations ----

#[test]
fn a_kick_closes_the_users_connections_and_their_relays() {
    let mut h = Harness::new(password());
    let conn = h.client();
    let stranger = h.connect_from("192.0.2.9:1");
    h.proxy(conn, bidi(1), TARGET, b"");
    h.s.kick(&HashSet::from(["user".to_string()]));
    h.step();
    assert_eq!(h.a.closed, vec![(conn, KICK_ERROR)]);
    assert_eq!(h.a.aborted.len(), 1);
    assert_eq!(h.s.connection_count(), 1, "{stranger:?} stays");
}

#[test]
fn draining_refuses_new_requests() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.s.set_draining(true);
    h.proxy(conn, bidi(1), TARGET, b"");
    assert_eq!(h.tcp_error(conn, bidi(1)), "server is shutting down");
    assert!(h.a.connects.is_empty());
}

#[test]
fn the_masquerade_answers_other_requests_in_place_or_off_the_data_path() {
    let mut cfg = password();
    cfg.masquerade = Masquerade::String {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        content: "hello".into(),
    };
    let mut h = Harness::new(cfg);
    let conn = h.connect_from(CLIENT);
    let get = h3::headers_frame(
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", "/"),
        ],
        h3::HuffmanPolicy::Never,
    );
    h.send(conn, bidi(0), &get, true);
    assert_eq!(h.status(conn, bidi(0)), 200);
    assert!(h.a.jobs.is_empty());
}
