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

use bytes::Bytes;

use super::*;
use crate::config;
use crate::limits::{Caps, PerUser};
use crate::proto::h3::ResponseReader;
use crate::proto::tcp::TcpResponse;
use crate::proto::udp::{fragment, Defragger, UdpMessage};
use crate::server::guard::OutboundGuard;
use crate::server::route::Router;

const CLIENT: &str = "192.0.2.7:40000";
const TARGET: &str = "192.0.2.80:443";

/// A server config as a test needs it: `auth`, the rest as the defaults (also used by
/// the client-server pair in `client::session`).
pub(crate) fn config(auth: Authenticator) -> Hy2Config {
    Hy2Config {
        auth,
        masquerade: Masquerade::NotFound,
        guard: OutboundGuard::default(),
        router: Arc::new(Router::default()),
        sniffer: None,
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

fn command_auth() -> Hy2Config {
    config(Authenticator::Command("/etc/quelay/auth.sh".into()))
}

fn bidi(n: u64) -> StreamId {
    StreamId::new(Side::Client, Dir::Bi, n)
}

/// What the adapter did for the session, as a model of it would.
#[derive(Default)]
struct Adapter {
    /// Responses written, by stream.
    responses: HashMap<(ConnId, StreamId), Vec<u8>>,
    /// Early replies (sniffing), by stream.
    replies: HashMap<(ConnId, StreamId), Vec<u8>>,
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
    /// UDP sockets open, until closed.
    udp_socks: HashSet<UdpId>,
    /// How each UDP socket and each relay's socket was set up.
    udp_egress: HashMap<UdpId, Egress>,
    connect_egress: HashMap<RelayId, Egress>,
    /// The addresses each relay tries if its connect fails.
    connect_fallback: HashMap<RelayId, Vec<SocketAddr>>,
    /// The address each relay connects to beside the first, if any.
    connect_racer: HashMap<RelayId, Option<SocketAddr>>,
    /// How each UDP session with a SOCKS5 association leaves: the proxy.
    udp_proxy: HashMap<UdpId, SocketAddr>,
    /// Datagrams sent from session sockets: session, destination, payload.
    udp_sent: Vec<(UdpId, SocketAddr, Vec<u8>)>,
    /// Datagrams sent through SOCKS5 associations: session, host, port, payload.
    udp_proxied: Vec<(UdpId, String, u16, Vec<u8>)>,
    udp_lookups: Vec<(LookupId, String, u16)>,
    /// DATAGRAMs sent to clients.
    datagrams: Vec<(ConnId, Vec<u8>)>,
    udp_closing: Vec<UdpId>,
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
                    ..
                } => {
                    let old = self.a.responses.insert((conn, stream), bytes);
                    assert!(old.is_none(), "two responses on {conn:?} {stream}");
                }
                Action::Reply {
                    conn,
                    stream,
                    bytes,
                } => {
                    let old = self.a.replies.insert((conn, stream), bytes);
                    assert!(old.is_none(), "two early replies on {conn:?} {stream}");
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
                    egress,
                    racer,
                    fallback,
                    ..
                } => {
                    assert!(self.a.pipes.insert(relay), "{relay:?} connected twice");
                    self.a.connect_egress.insert(relay, egress);
                    self.a.connect_racer.insert(relay, racer.map(|(a, _)| a));
                    let fallback = fallback.into_iter().map(|(a, _)| a).collect();
                    self.a.connect_fallback.insert(relay, fallback);
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
                Action::UdpOpen { udp, via } => {
                    assert!(self.a.udp_socks.insert(udp));
                    match via {
                        UdpVia::Direct(egress) => {
                            self.a.udp_egress.insert(udp, egress);
                        }
                        UdpVia::Socks5 { proxy, .. } => {
                            self.a.udp_proxy.insert(udp, proxy);
                        }
                    }
                }
                Action::UdpSend { udp, to, payload } => {
                    assert!(self.a.udp_socks.contains(&udp), "send on a closed socket");
                    match to {
                        UdpTo::Addr(addr) => self.a.udp_sent.push((udp, addr, payload)),
                        UdpTo::Proxied(host, port) => {
                            self.a.udp_proxied.push((udp, host, port, payload))
                        }
                    }
                }
                Action::UdpResolve { lookup, host, port } => {
                    self.a.udp_lookups.push((lookup, host, port))
                }
                Action::Datagram { conn, bytes } => self.a.datagrams.push((conn, bytes)),
                Action::UdpClose(udp) => {
                    assert!(self.a.udp_socks.remove(&udp), "closed twice");
                    self.a.udp_closing.push(udp);
                }
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

    /// The datagrams sent from session sockets: destination (as text) and payload.
    fn udp_sent(&self) -> Vec<(String, Vec<u8>)> {
        self.a
            .udp_sent
            .iter()
            .map(|(_, a, p)| (a.to_string(), p.clone()))
            .collect()
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

    /// Sends a UDP payload to `addr` in session `id`, in `frags` fragments.
    fn udp(&mut self, conn: ConnId, id: u32, addr: &str, payload: &[u8], frags: usize) {
        let max = crate::proto::udp::header_len(addr.len()) + payload.len().div_ceil(frags);
        for d in fragment(id, 9, addr, payload, max).unwrap() {
            self.s.datagram(self.now, conn, Bytes::from(d));
        }
        self.step();
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

/// HTTP and command auth alike: the verdict comes from off the data path.
#[test]
fn a_backends_verdict_that_comes_early_authenticates() {
    for cfg in [http_auth(), command_auth()] {
        backend_verdict_authenticates(cfg);
    }
}

fn backend_verdict_authenticates(cfg: Hy2Config) {
    let mut h = Harness::new(cfg);
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

#[test]
fn the_proxy_masquerade_gets_the_request_body() {
    use crate::server::masquerade::ProxyMasquerade;
    let mut cfg = password();
    let proxy = ProxyMasquerade::new("http://127.0.0.1:1/", false, false, false).unwrap();
    cfg.masquerade = Masquerade::Proxy(Arc::new(proxy));
    let mut h = Harness::new(cfg);
    let conn = h.connect_from(CLIENT);
    let head = |method: &str, length: Option<&str>| {
        let mut fields = vec![
            (":method", method),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", "/form"),
        ];
        if let Some(l) = length {
            fields.push(("content-length", l));
        }
        h3::headers_frame(&fields, h3::HuffmanPolicy::Never)
    };
    let body_of = |h: &Harness, i: usize| match &h.a.jobs[i].1 {
        Work::Masquerade { body, .. } => body.clone(),
        other => panic!("not a masquerade job: {other:?}"),
    };

    // A POST's body arrives in pieces; the job waits for all of it (FIN).
    h.send(conn, bidi(0), &head("POST", Some("11")), false);
    h.send(conn, bidi(0), &h3::data_frame(b"hello "), false);
    assert!(h.a.jobs.is_empty(), "answered before the body");
    h.send(conn, bidi(0), &h3::data_frame(b"world"), true);
    assert_eq!(body_of(&h, 0), b"hello world");
    // A GET without a length goes at once, with no body.
    h.send(conn, bidi(1), &head("GET", None), false);
    assert_eq!(body_of(&h, 1), b"");
    // A body over the limit is refused 413.
    h.send(conn, bidi(2), &head("PUT", None), false);
    let big = vec![b'x'; MAX_PROXY_BODY + 1];
    h.send(conn, bidi(2), &h3::data_frame(&big), true);
    assert_eq!(h.status(conn, bidi(2)), 413);

    // At most MAX_BODIES_READING bodies are read at once; a reset gives its place back.
    for i in 0..MAX_BODIES_READING as u64 {
        h.send(conn, bidi(10 + i), &head("POST", Some("5")), false);
    }
    let over = bidi(10 + MAX_BODIES_READING as u64);
    h.send(conn, over, &head("POST", Some("5")), false);
    assert_eq!(h.status(conn, over), 503);
    h.s.stream_reset(conn, bidi(10));
    let again = bidi(11 + MAX_BODIES_READING as u64);
    h.send(conn, again, &head("POST", Some("5")), false);
    h.send(conn, again, &h3::data_frame(b"again"), true);
    assert_eq!(body_of(&h, h.a.jobs.len() - 1), b"again");
}

// ---- UDP sessions ----

#[test]
fn a_udp_session_relays_both_ways_with_fragments() {
    let mut h = Harness::new(password());
    let conn = h.client();
    let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    h.udp(conn, 5, TARGET, &payload, 3);
    assert_eq!(h.a.udp_socks.len(), 1);
    let (udp, addr, sent) = h.a.udp_sent[0].clone();
    assert_eq!((addr, sent.len()), (TARGET.parse().unwrap(), 3000));
    assert_eq!(sent, payload, "the fragments are put back together");
    assert_eq!(h.s.udp_counters().datagrams_in, 3);

    // A 4,000-byte reply, fragmented to a 1,000-byte DATAGRAM size.
    let reply: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    h.s.udp_received(h.now, udp, TARGET.parse().unwrap(), &reply, Some(1000));
    h.step();
    assert!(h.a.datagrams.len() >= 5);
    let mut defrag = Defragger::default();
    let mut whole = None;
    for (c, d) in &h.a.datagrams {
        assert_eq!(*c, conn);
        assert!(d.len() <= 1000);
        let msg = UdpMessage::parse(Bytes::from(d.clone())).unwrap();
        assert_eq!((msg.session_id, msg.addr.as_str()), (5, TARGET));
        whole = defrag.feed(msg).unwrap().or(whole);
    }
    assert_eq!(whole.expect("a whole reply").payload.as_ref(), &reply[..]);
    assert_eq!(h.limits().user("user").traffic(false), (3000, 4000));
}

#[test]
fn each_name_of_a_udp_session_gets_its_own_answer() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.udp(conn, 1, "a.example:53", b"to a", 1);
    h.udp(conn, 1, "b.example:53", b"to b", 1);
    h.udp(conn, 1, "a.example:53", b"to a again", 1);
    assert_eq!(h.a.udp_lookups.len(), 2, "one lookup per name");
    let (la, ..) = h.a.udp_lookups[0].clone();
    let (lb, ..) = h.a.udp_lookups[1].clone();
    let (ip_a, ip_b) = (
        "192.0.2.1:0".parse().unwrap(),
        "192.0.2.2:0".parse().unwrap(),
    );
    // Answered in the other order.
    h.s.udp_resolved(lb, Ok(vec![ip_b]));
    h.s.udp_resolved(la, Ok(vec![ip_a]));
    h.step();
    let sent = h.udp_sent();
    assert_eq!(
        sent,
        vec![
            ("192.0.2.2:53".into(), b"to b".to_vec()),
            ("192.0.2.1:53".into(), b"to a".to_vec()),
            ("192.0.2.1:53".into(), b"to a again".to_vec()),
        ]
    );
}

#[test]
fn udp_before_auth_or_to_loopback_goes_nowhere() {
    let mut h = Harness::new(password());
    let stranger = h.connect_from(CLIENT);
    h.udp(stranger, 1, TARGET, b"x", 1);
    assert!(h.a.udp_socks.is_empty());
    assert_eq!(h.s.udp_counters().datagrams_in, 0);

    let conn = h.client();
    h.udp(conn, 1, "127.0.0.1:53", b"x", 1);
    assert!(h.a.udp_sent.is_empty());
    assert_eq!(h.s.udp_counters().refused, 1);
    h.udp(conn, 1, "localhost:53", b"y", 1);
    let (lookup, ..) = h.a.udp_lookups[0].clone();
    h.s.udp_resolved(lookup, Ok(vec!["127.0.0.1:0".parse().unwrap()]));
    h.step();
    assert!(h.a.udp_sent.is_empty());
    assert_eq!(h.s.udp_counters().refused, 2);

    // A datagram that does not parse is dropped and counted.
    h.s.datagram(h.now, conn, Bytes::from_static(&[0xff, 0xff]));
    assert_eq!(h.s.udp_counters().dropped, 1);
}

#[test]
fn udp_sessions_idle_out_and_give_their_socket_back() {
    let mut h = Harness::new(password());
    let conn = h.client();
    h.udp(conn, 1, TARGET, b"x", 1);
    h.udp(conn, 2, TARGET, b"x", 1);
    assert_eq!(h.limits().sockets.held(), 2);
    let (first, ..) = h.a.udp_sent[0].clone();
    h.advance(Duration::from_secs(30));
    h.s.udp_received(h.now, first, TARGET.parse().unwrap(), b"reply", Some(1200));
    h.advance(Duration::from_secs(30));
    assert_eq!(h.a.udp_closing.len(), 1, "only the idle one closes");
    assert_eq!(h.s.udp_count(), 1);
    let closed = h.a.udp_closing[0];
    assert_ne!(closed, first);
    assert_eq!(
        h.limits().sockets.held(),
        2,
        "held until the socket is closed"
    );
    h.s.udp_closed(closed);
    assert_eq!(h.limits().sockets.held(), 1);

    // The connection goes: its sessions close too; a late reply lands nowhere.
    h.s.connection_lost(conn);
    h.step();
    assert_eq!(h.a.udp_closing.len(), 2);
    h.s.udp_received(h.now, first, TARGET.parse().unwrap(), b"late", Some(1200));
    h.step();
    assert_eq!(h.a.datagrams.len(), 1);
    h.s.udp_closed(first);
    assert_eq!(h.limits().sockets.held(), 0);
}

#[test]
fn a_spent_socket_budget_refuses_new_udp_sessions() {
    let mut cfg = password();
    cfg.limits = Limits::new(Caps::default(), Some(crate::limits::FD_RESERVE + 1));
    let mut h = Harness::new(cfg);
    let conn = h.client();
    h.udp(conn, 1, TARGET, b"x", 1);
    h.udp(conn, 2, TARGET, b"x", 1);
    assert_eq!(h.a.udp_socks.len(), 1);
    assert_eq!(h.s.udp_counters().sessions_refused, 1);
    // The first session still works.
    h.udp(conn, 1, TARGET, b"y", 1);
    assert_eq!(h.a.udp_sent.len(), 2);
}

// ---- per-user caps on UDP sessions and outbound sockets ----

/// alice and bob (userpass), each authenticated on a connection of its own.
fn two_users(caps: Caps, fd_limit: u64) -> (Harness, ConnId, ConnId) {
    let users = HashMap::from([
        ("alice".to_string(), "a".to_string()),
        ("bob".to_string(), "b".to_string()),
    ]);
    let mut cfg = config(Authenticator::UserPass(users));
    cfg.limits = Limits::new(caps, Some(crate::limits::FD_RESERVE + fd_limit));
    let mut h = Harness::new(cfg);
    let alice = h.connect_from("192.0.2.1:1");
    h.auth(alice, bidi(0), "alice:a");
    let bob = h.connect_from("192.0.2.2:1");
    h.auth(bob, bidi(0), "bob:b");
    assert_eq!(h.status(alice, bidi(0)), 233);
    assert_eq!(h.status(bob, bidi(0)), 233);
    (h, alice, bob)
}

#[test]
fn udp_sessions_beyond_a_users_cap_are_dropped_and_counted_and_leave_sockets_for_others() {
    let caps = Caps {
        udp_sessions_per_user: PerUser::Cap(3),
        sockets_per_user: PerUser::Cap(5),
        ..Caps::default()
    };
    let (mut h, alice, bob) = two_users(caps, 20);
    for id in 0..1000 {
        h.udp(alice, id, TARGET, b"x", 1);
    }
    assert_eq!(h.a.udp_socks.len(), 3, "alice's UDP-session cap");
    assert_eq!(
        h.a.udp_sent.len(),
        3,
        "refused sessions' datagrams are dropped"
    );
    let c = h.s.udp_counters();
    assert_eq!((c.sessions_opened, c.sessions_refused), (3, 997));
    assert_eq!(c.dropped, 997);
    let a = h.limits().user("alice");
    assert_eq!((a.udp_sessions.held(), a.udp_sessions.hits()), (3, 997));
    // The open sessions still carry traffic.
    h.udp(alice, 0, TARGET, b"again", 1);
    assert_eq!(h.a.udp_sent.len(), 4);

    // alice's TCP takes her last two sockets; the next request is answered with an error.
    h.proxy(alice, bidi(1), TARGET, b"");
    h.proxy(alice, bidi(2), TARGET, b"");
    assert_eq!(h.a.connects.len(), 2);
    h.proxy(alice, bidi(3), TARGET, b"");
    assert_eq!(h.a.connects.len(), 2);
    assert!(h.tcp_error(alice, bidi(3)).contains("sockets"));
    assert_eq!(h.s.counters.socket_cap_refused, 1);
    assert_eq!(h.s.parked_count(), 0, "refused, not parked");
    assert_eq!((a.sockets.held(), a.sockets.hits()), (5, 1));
    assert_eq!(
        a.streams.held(),
        2,
        "the refused request holds no stream permit"
    );

    // bob is served: TCP and UDP, from the sockets alice cannot take.
    for i in 1..=4 {
        h.proxy(bob, bidi(i), TARGET, b"");
    }
    assert_eq!(h.a.connects.len(), 6);
    h.udp(bob, 1, TARGET, b"bob", 1);
    assert_eq!(h.a.udp_socks.len(), 4);
    assert_eq!(h.limits().sockets.held(), 10);

    // An idle session of alice's gives its place back once its socket is closed.
    h.advance(Duration::from_secs(61));
    let closing: Vec<UdpId> = h.a.udp_closing.clone();
    assert_eq!(closing.len(), 4);
    for u in closing {
        h.s.udp_closed(u);
    }
    assert_eq!(a.udp_sessions.held(), 0);
    h.udp(alice, 5000, TARGET, b"x", 1);
    assert_eq!(a.udp_sessions.held(), 1);
}

#[test]
fn a_parked_request_that_finds_its_users_sockets_taken_is_answered_with_an_error() {
    let caps = Caps {
        streams_per_user: Some(1),
        udp_sessions_per_user: PerUser::Cap(5),
        sockets_per_user: PerUser::Cap(2),
        ..Caps::default()
    };
    let (mut h, alice, _bob) = two_users(caps, 100);
    h.proxy(alice, bidi(1), TARGET, b"");
    h.proxy(alice, bidi(2), TARGET, b"");
    assert_eq!(h.s.parked_count(), 1, "the stream cap parks");
    h.udp(alice, 1, TARGET, b"x", 1);
    let first = h.relay_of(bidi(1));
    h.s.relay_closed(first);
    // The relay's socket went to a new UDP session before the parked request's recheck.
    h.udp(alice, 2, TARGET, b"x", 1);
    h.advance(caps::RECHECK);
    assert_eq!(h.s.parked_count(), 0);
    assert_eq!(h.a.connects.len(), 1);
    assert!(h.tcp_error(alice, bidi(2)).contains("sockets"));
    assert_eq!(h.s.counters.socket_cap_refused, 1);
    assert!(!h.s.reading(alice, bidi(2)));
}

#[test]
fn a_reload_applies_new_per_user_socket_caps() {
    let caps = Caps {
        udp_sessions_per_user: PerUser::Cap(2),
        ..Caps::default()
    };
    let (mut h, alice, _bob) = two_users(caps, 1000);
    for id in 0..4 {
        h.udp(alice, id, TARGET, b"x", 1);
    }
    assert_eq!(h.a.udp_socks.len(), 2);
    h.limits().set_caps(Caps {
        udp_sessions_per_user: PerUser::Cap(3),
        ..Caps::default()
    });
    for id in 10..14 {
        h.udp(alice, id, TARGET, b"x", 1);
    }
    assert_eq!(h.a.udp_socks.len(), 3);
    // 0 lifts the cap; the default socket cap (half of the 1000-socket budget) remains.
    h.limits().set_caps(Caps {
        udp_sessions_per_user: PerUser::Unlimited,
        ..Caps::default()
    });
    for id in 20..1020 {
        h.udp(alice, id, TARGET, b"x", 1);
    }
    assert_eq!(h.a.udp_socks.len(), 500);
    let a = h.limits().user("alice");
    assert_eq!(a.sockets.cap(), Some(500));
    assert!(a.sockets.hits() > 0);
}

// ---- routing: ACL and outbounds ----

fn direct_out(
    name: &str,
    mode: config::DirectMode,
    bind: config::OutboundBind,
) -> config::Outbound {
    config::Outbound {
        name: name.into(),
        kind: config::OutboundKind::Direct(config::DirectOutbound {
            mode,
            bind,
            fast_open: false,
        }),
    }
}

/// Password auth, with these inline rules over these outbounds.
fn routed(rules: &[&str], outbounds: &[config::Outbound]) -> Hy2Config {
    let acl = config::Acl {
        rules: config::AclRules::Inline(rules.iter().map(|r| r.to_string()).collect()),
        geoip: None,
        geosite: None,
        geo_update_interval: Duration::from_secs(3600),
        geoip_url: None,
        geosite_url: None,
    };
    let mut cfg = password();
    cfg.router = Arc::new(Router::new(Some(&acl), outbounds).unwrap());
    cfg
}

fn connected_to(h: &Harness, stream: StreamId) -> SocketAddr {
    h.a.connects
        .iter()
        .find(|c| c.1 == stream)
        .unwrap_or_else(|| panic!("no connect on {stream}"))
        .2
}

#[test]
fn an_acl_reject_answers_rejected_without_a_lookup() {
    let mut h = Harness::new(routed(&["reject(*.ads.example)", "direct(all)"], &[]));
    let conn = h.client();
    h.proxy(conn, bidi(1), "x.ads.example:443", b"");
    assert_eq!(h.tcp_error(conn, bidi(1)), "rejected");
    assert!(h.a.resolves.is_empty(), "a name rule needs no addresses");
    assert_eq!(h.s.counters.acl_rejected, 1);
    assert_eq!((h.s.relay_count(), h.streams_held()), (0, 0));

    // The direct outbound needs the addresses of what it lets through.
    h.proxy(conn, bidi(2), "news.example:443", b"");
    let (relay, host, port) = h.a.resolves[0].clone();
    assert_eq!((host.as_str(), port), ("news.example", 443));
    h.s.resolved(relay, Ok(vec!["198.51.100.1:0".parse().unwrap()]));
    h.step();
    assert_eq!(
        connected_to(&h, bidi(2)),
        "198.51.100.1:443".parse().unwrap()
    );
}

#[test]
fn an_address_rule_matches_the_lookups_answer() {
    let mut h = Harness::new(routed(&["reject(192.0.2.0/24)", "direct(all)"], &[]));
    let conn = h.client();
    h.proxy(conn, bidi(1), "blocked.example:80", b"");
    h.proxy(conn, bidi(2), "fine.example:80", b"");
    let (blocked, ..) = h.a.resolves[0].clone();
    let (fine, ..) = h.a.resolves[1].clone();
    h.s.resolved(blocked, Ok(vec!["192.0.2.9:0".parse().unwrap()]));
    h.s.resolved(fine, Ok(vec!["198.51.100.1:0".parse().unwrap()]));
    h.step();
    assert_eq!(h.tcp_error(conn, bidi(1)), "rejected");
    assert_eq!(
        connected_to(&h, bidi(2)),
        "198.51.100.1:80".parse().unwrap()
    );
    // An IP literal is matched as it is, without a lookup.
    h.proxy(conn, bidi(3), "192.0.2.200:80", b"");
    assert_eq!(h.tcp_error(conn, bidi(3)), "rejected");
    assert_eq!(h.a.resolves.len(), 2);
}

#[test]
fn a_hijack_keeps_the_port_and_stays_under_the_outbound_guard() {
    let rules = [
        "direct(moved.example, tcp/80, 198.51.100.7)",
        "direct(inside.example, *, 127.0.0.1)",
        "direct(all)",
    ];
    let mut h = Harness::new(routed(&rules, &[]));
    let conn = h.client();
    h.proxy(conn, bidi(1), "moved.example:80", b"");
    assert_eq!(
        connected_to(&h, bidi(1)),
        "198.51.100.7:80".parse().unwrap()
    );
    h.proxy(conn, bidi(2), "inside.example:22", b"");
    assert!(h
        .tcp_error(conn, bidi(2))
        .starts_with("refused inside.example:22"));
    assert!(
        h.a.resolves.is_empty(),
        "a hijacked request needs no lookup"
    );
    // The rule is for TCP port 80 only: port 81 is looked up and goes where it resolves.
    h.proxy(conn, bidi(3), "moved.example:81", b"");
    assert_eq!(h.a.resolves.len(), 1);
}

#[test]
fn the_direct_mode_picks_the_family() {
    use config::{DirectMode, OutboundBind};
    let outs = [
        direct_out("v4", DirectMode::Only4, OutboundBind::Any),
        direct_out("v6", DirectMode::Only6, OutboundBind::Any),
        direct_out("pref6", DirectMode::Prefer6, OutboundBind::Any),
    ];
    let mut h = Harness::new(routed(
        &["v4(four.example)", "v6(six.example)", "pref6(all)"],
        &outs,
    ));
    let conn = h.client();
    let answer: Vec<SocketAddr> = vec![
        "192.0.2.1:0".parse().unwrap(),
        "[2001:db8::1]:0".parse().unwrap(),
    ];
    for (i, name) in ["four.example", "six.example", "any.example"]
        .iter()
        .enumerate()
    {
        h.proxy(conn, bidi(i as u64), &format!("{name}:443"), b"");
        let (relay, ..) = h.a.resolves[i].clone();
        h.s.resolved(relay, Ok(answer.clone()));
        h.step();
    }
    assert_eq!(connected_to(&h, bidi(0)), "192.0.2.1:443".parse().unwrap());
    assert_eq!(
        connected_to(&h, bidi(1)),
        "[2001:db8::1]:443".parse().unwrap()
    );
    assert_eq!(
        connected_to(&h, bidi(2)),
        "[2001:db8::1]:443".parse().unwrap()
    );
    // A preferred family falls back to the other if its connect fails; an only one does not.
    let fallback = |s| h.a.connect_fallback[&h.relay_of(bidi(s))].clone();
    assert_eq!(fallback(2), ["192.0.2.1:443".parse().unwrap()]);
    assert!(fallback(0).is_empty() && fallback(1).is_empty());
    // IPv6 only, and the name has no IPv6 address.
    h.proxy(conn, bidi(3), "six.example:443", b"");
    let (relay, ..) = h.a.resolves[3].clone();
    h.s.resolved(relay, Ok(vec!["192.0.2.1:0".parse().unwrap()]));
    h.step();
    assert_eq!(
        h.tcp_error(conn, bidi(3)),
        "six.example:443: no IPv6 address available"
    );
}

#[test]
fn mode_auto_races_the_other_familys_first_address_when_the_budget_has_room() {
    use config::{DirectMode, OutboundBind};
    let outs = [
        direct_out("auto", DirectMode::Auto, OutboundBind::Any),
        direct_out("pref6", DirectMode::Prefer6, OutboundBind::Any),
    ];
    let cfg = routed(&["pref6(pref.example)", "auto(all)"], &outs);
    let limits = cfg.limits.clone();
    let mut h = Harness::new(cfg);
    let conn = h.client();
    let answer: Vec<SocketAddr> = [
        "[2001:db8::1]:0",
        "[2001:db8::2]:0",
        "192.0.2.1:0",
        "192.0.2.2:0",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
    let ask = |h: &mut Harness, stream: u64, name: &str| {
        let before = h.a.resolves.len();
        h.proxy(conn, bidi(stream), &format!("{name}:443"), b"");
        let (relay, ..) = h.a.resolves[before].clone();
        h.s.resolved(relay, Ok(answer.clone()));
        h.step();
        relay
    };

    // Both families: the first address, and beside it the other family's first; the rest
    // in order if both fail.
    let raced = ask(&mut h, 1, "dual.example");
    assert_eq!(connected_to(&h, bidi(1)), a("[2001:db8::1]:443"));
    assert_eq!(h.a.connect_racer[&raced], Some(a("192.0.2.1:443")));
    assert_eq!(
        h.a.connect_fallback[&raced],
        [a("[2001:db8::2]:443"), a("192.0.2.2:443")]
    );
    // The race's socket is held until the connect is done.
    assert_eq!(limits.sockets.held(), 2);
    h.s.connect_done(raced, Ok(()));
    h.step();
    assert_eq!(limits.sockets.held(), 1, "the race's socket is given back");

    // A preferred family is not raced: it is tried first, the other after it.
    let preferred = ask(&mut h, 2, "pref.example");
    assert_eq!(h.a.connect_racer[&preferred], None);
    assert_eq!(connected_to(&h, bidi(2)), a("[2001:db8::1]:443"));

    // With no room in the socket budget for a second socket, no race: the addresses go
    // one after another.
    limits.sockets.set_cap(Some(limits.sockets.held() + 1));
    let alone = ask(&mut h, 3, "dual.example");
    assert_eq!(h.a.connect_racer[&alone], None);
    assert_eq!(
        h.a.connect_fallback[&alone],
        [
            a("[2001:db8::2]:443"),
            a("192.0.2.1:443"),
            a("192.0.2.2:443")
        ]
    );

    // One family only: nothing to race.
    limits.sockets.set_cap(None);
    let before = h.a.resolves.len();
    h.proxy(conn, bidi(4), "v4.example:443", b"");
    let (relay, ..) = h.a.resolves[before].clone();
    h.s.resolved(relay, Ok(vec![a("192.0.2.1:0"), a("192.0.2.2:0")]));
    h.step();
    assert_eq!(h.a.connect_racer[&relay], None);
}

/// UDP in mode `auto` goes to IPv4 when the name has it, as the reference sends it; `64`
/// prefers IPv6.
#[test]
fn udp_in_mode_auto_prefers_ipv4() {
    use config::{DirectMode, OutboundBind};
    let outs = [
        direct_out("auto", DirectMode::Auto, OutboundBind::Any),
        direct_out("pref6", DirectMode::Prefer6, OutboundBind::Any),
    ];
    let mut h = Harness::new(routed(&["pref6(six.example)", "auto(all)"], &outs));
    let conn = h.client();
    let answer: Vec<SocketAddr> = vec![
        "[2001:db8::1]:0".parse().unwrap(),
        "192.0.2.1:0".parse().unwrap(),
    ];
    h.udp(conn, 1, "dual.example:53", b"a", 1);
    h.udp(conn, 2, "six.example:53", b"b", 1);
    for i in 0..2 {
        let (lookup, ..) = h.a.udp_lookups[i].clone();
        h.s.udp_resolved(lookup, Ok(answer.clone()));
    }
    h.step();
    let sent = h.udp_sent();
    assert_eq!(
        sent,
        [
            ("192.0.2.1:53".to_string(), b"a".to_vec()),
            ("[2001:db8::1]:53".to_string(), b"b".to_vec())
        ]
    );
}

#[test]
fn without_an_acl_the_first_outbound_takes_everything() {
    use config::{DirectMode, OutboundBind};
    let mut cfg = password();
    let outs = [
        direct_out("first", DirectMode::Only6, OutboundBind::Any),
        direct_out("second", DirectMode::Auto, OutboundBind::Any),
    ];
    cfg.router = Arc::new(Router::new(None, &outs).unwrap());
    let mut h = Harness::new(cfg);
    let conn = h.client();
    h.proxy(conn, bidi(1), TARGET, b"");
    assert_eq!(
        h.tcp_error(conn, bidi(1)),
        format!("{TARGET}: no IPv6 address available")
    );
}

#[test]
fn the_outbounds_binding_and_fast_open_reach_the_socket() {
    use config::{DirectMode, OutboundBind};
    let mut bound = direct_out(
        "bound",
        DirectMode::Auto,
        OutboundBind::Addresses {
            v4: Some("192.0.2.100".parse().unwrap()),
            v6: None,
        },
    );
    if let config::OutboundKind::Direct(d) = &mut bound.kind {
        d.fast_open = true;
    }
    let dev = direct_out("dev", DirectMode::Auto, OutboundBind::Device("eth9".into()));
    let mut h = Harness::new(routed(
        &["dev(198.51.100.0/24)", "bound(all)"],
        &[bound, dev],
    ));
    let conn = h.client();
    h.proxy(conn, bidi(1), TARGET, b"hello");
    h.proxy(conn, bidi(2), TARGET, b"");
    h.proxy(conn, bidi(3), "198.51.100.3:80", b"");
    h.proxy(conn, bidi(4), "[2001:db8::5]:80", b"x");
    let egress = |s| h.a.connect_egress[&h.relay_of(bidi(s))].clone();
    let bind4 = Some("192.0.2.100".parse().unwrap());
    assert_eq!(
        egress(1),
        Egress {
            bind: bind4,
            device: None,
            fast_open: true
        },
        "fast open with payload"
    );
    assert!(!egress(2).fast_open, "no fast open without payload");
    assert_eq!(egress(3).device.as_deref(), Some("eth9"));
    assert_eq!(egress(4).bind, None, "no IPv6 bind address");

    // A UDP session's socket takes the binding of its first destination's outbound.
    h.udp(conn, 1, "198.51.100.3:53", b"q", 1);
    let (udp, ..) = h.a.udp_sent[0].clone();
    assert_eq!(h.a.udp_egress[&udp].device.as_deref(), Some("eth9"));
}

#[test]
fn udp_destinations_follow_the_acl() {
    let rules = [
        "reject(blocked.example)",
        "direct(moved.example, udp/5353, 198.51.100.9)",
        "direct(all)",
    ];
    let mut h = Harness::new(routed(&rules, &[]));
    let conn = h.client();
    h.udp(conn, 1, "blocked.example:53", b"a", 1);
    h.udp(conn, 1, "blocked.example:53", b"b", 1);
    assert!(h.a.udp_lookups.is_empty() && h.a.udp_sent.is_empty());
    assert!(
        h.a.udp_socks.is_empty(),
        "no socket for a session that sent nothing"
    );
    assert_eq!(
        h.s.counters.acl_rejected, 1,
        "decided once, then remembered"
    );
    assert_eq!(h.s.udp_counters().refused, 2);

    h.udp(conn, 1, "moved.example:5353", b"c", 1);
    h.udp(conn, 1, TARGET, b"d", 1);
    let sent = h.udp_sent();
    assert_eq!(
        sent,
        [
            ("198.51.100.9:5353".to_string(), b"c".to_vec()),
            (TARGET.to_string(), b"d".to_vec())
        ]
    );
    assert_eq!(h.a.udp_socks.len(), 1, "one socket for the session");
    assert!(h.a.udp_lookups.is_empty());

    // A name the rules do not decide is looked up, then routed.
    h.udp(conn, 1, "other.example:53", b"e", 1);
    let (lookup, ..) = h.a.udp_lookups[0].clone();
    h.s.udp_resolved(lookup, Ok(vec!["198.51.100.20:0".parse().unwrap()]));
    h.step();
    assert_eq!(h.a.udp_sent[2].1, "198.51.100.20:53".parse().unwrap());
}

#[test]
fn udp_routed_to_socks5_goes_through_an_association_and_http_carries_none() {
    let outbound = |name: &str, kind| config::Outbound {
        name: name.into(),
        kind,
    };
    let outbounds = [
        outbound(
            "sox",
            config::OutboundKind::Socks5(config::Socks5Outbound {
                addr: "192.0.2.50:1080".into(),
                auth: None,
            }),
        ),
        outbound(
            "web",
            config::OutboundKind::Http(config::HttpOutbound {
                host: "192.0.2.51".into(),
                port: 8080,
                tls: false,
                insecure: false,
                auth: None,
            }),
        ),
    ];
    let rules = [
        "sox(*.tunnel.example)",
        "web(*.web.example)",
        "sox(198.51.100.7)",
        "direct(all)",
    ];
    let mut h = Harness::new(routed(&rules, &outbounds));
    let conn = h.client();
    // The first destination picks the association; the proxy gets the name, unresolved.
    h.udp(conn, 1, "dns.tunnel.example:53", b"a", 1);
    h.udp(conn, 1, "198.51.100.7:123", b"b", 1);
    assert!(h.a.udp_lookups.is_empty(), "the proxy resolves the name");
    let udp = h.a.udp_proxied[0].0;
    assert_eq!(h.a.udp_proxy[&udp], "192.0.2.50:1080".parse().unwrap());
    let proxied: Vec<(String, u16, Vec<u8>)> =
        h.a.udp_proxied
            .iter()
            .map(|(_, host, port, p)| (host.clone(), *port, p.clone()))
            .collect();
    assert_eq!(
        proxied,
        [
            ("dns.tunnel.example".into(), 53, b"a".to_vec()),
            ("198.51.100.7".into(), 123, b"b".to_vec())
        ]
    );
    // A destination routed direct cannot leave through the association: dropped.
    h.udp(conn, 1, TARGET, b"c", 1);
    assert!(h.a.udp_sent.is_empty());
    assert_eq!(h.s.udp_counters().refused, 1);
    // The association broke: the session closes.
    h.s.udp_failed(udp);
    h.step();
    assert_eq!(h.a.udp_closing, [udp]);

    // An association that is up stays past the deadline; one that is not, fails at it.
    h.udp(conn, 3, "a.tunnel.example:53", b"e", 1);
    h.udp(conn, 4, "b.tunnel.example:53", b"f", 1);
    let (up, stuck) = (h.a.udp_proxied[2].0, h.a.udp_proxied[3].0);
    h.s.udp_ready(up);
    h.advance(ASSOCIATE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(h.a.udp_closing, [udp]);
    h.advance(Duration::from_millis(1));
    h.step();
    assert_eq!(h.a.udp_closing, [udp, stuck]);

    // An HTTP proxy carries no UDP.
    h.udp(conn, 2, "x.web.example:53", b"d", 1);
    assert!(h.a.udp_proxied.len() == 4 && h.a.udp_sent.is_empty());
    assert_eq!(h.s.udp_counters().refused, 2);
}

/// A SOCKS5 association holds two sockets, its UDP socket and its control connection: both
/// count in the budget, and without room for the second its datagrams wait (dropped) until
/// there is.
#[test]
fn a_socks5_association_counts_its_control_connection_in_the_budget() {
    let outbounds = [config::Outbound {
        name: "sox".into(),
        kind: config::OutboundKind::Socks5(config::Socks5Outbound {
            addr: "192.0.2.50:1080".into(),
            auth: None,
        }),
    }];
    let cfg = routed(&["sox(all)"], &outbounds);
    let limits = cfg.limits.clone();
    let mut h = Harness::new(cfg);
    let conn = h.client();
    limits.sockets.set_cap(Some(1));
    h.udp(conn, 1, "dns.example:53", b"a", 1);
    assert!(
        h.a.udp_proxied.is_empty(),
        "no room for the control connection"
    );
    assert_eq!(limits.sockets.held(), 1);
    limits.sockets.set_cap(Some(2));
    h.udp(conn, 1, "dns.example:53", b"b", 1);
    assert_eq!(h.a.udp_proxied.len(), 1, "sent once there is room");
    assert_eq!(limits.sockets.held(), 2);
    let udp = h.a.udp_proxied[0].0;
    h.s.udp_failed(udp);
    h.step();
    h.s.udp_closed(udp);
    h.step();
    assert_eq!(limits.sockets.held(), 0, "both sockets came back");
}

#[test]
fn a_session_that_never_sent_closes_without_a_socket() {
    let mut h = Harness::new(routed(&["reject(all)"], &[]));
    let conn = h.client();
    h.udp(conn, 1, TARGET, b"a", 1);
    assert_eq!(h.s.udp_count(), 1);
    h.advance(Duration::from_secs(61));
    assert_eq!(h.s.udp_count(), 0);
    assert!(h.a.udp_closing.is_empty(), "nothing to close");
    assert_eq!(h.limits().sockets.held(), 0, "its budget slot came back");
}

#[test]
fn a_reload_routes_new_requests_by_the_new_rules() {
    let mut h = Harness::new(routed(&["direct(all)"], &[]));
    let conn = h.client();
    h.proxy(conn, bidi(1), TARGET, b"");
    assert_eq!(h.a.connects.len(), 1);
    h.s.reload(Arc::new(routed(&["reject(all)"], &[])));
    h.proxy(conn, bidi(2), TARGET, b"");
    assert_eq!(h.tcp_error(conn, bidi(2)), "rejected");
}

// ---- sniffing ----

/// Password auth, these inline rules, and sniffing on every port with a 2 s timeout.
fn sniffing(rules: &[&str]) -> Hy2Config {
    let mut cfg = routed(rules, &[]);
    cfg.sniffer = Some(crate::proto::sniff::Sniffer::new(
        Some(Duration::from_secs(2)),
        false,
        None,
        None,
    ));
    cfg
}

#[test]
fn a_sniffed_name_replaces_an_ip_target_and_every_byte_read_reaches_the_target() {
    let mut h = Harness::new(sniffing(&["reject(blocked.example)", "direct(all)"]));
    let conn = h.client();
    let head = b"GET / HTTP/1.1\r\nHost: web.example:8080\r\n\r\n";
    h.proxy(conn, bidi(1), "198.51.100.1:80", &head[..10]);
    let ok =
        h.a.replies
            .get(&(conn, bidi(1)))
            .expect("connected, told at once");
    assert!(TcpResponse::parse(ok).unwrap().unwrap().0.is_ok());
    assert!(
        h.a.resolves.is_empty() && h.a.connects.is_empty(),
        "waits for the head"
    );

    h.send(conn, bidi(1), &head[10..], false);
    let (relay, host, port) = h.a.resolves[0].clone();
    assert_eq!(
        (host.as_str(), port),
        ("web.example", 80),
        "the request's port is kept"
    );
    h.s.resolved(relay, Ok(vec!["198.51.100.7:0".parse().unwrap()]));
    h.step();
    let (_, _, addr, first) = h.a.connects[0].clone();
    assert_eq!(addr, "198.51.100.7:80".parse().unwrap());
    assert_eq!(
        first,
        head.to_vec(),
        "the sniffed bytes go to the target first"
    );
    assert_eq!(h.s.counters.sniffed, 1);

    // The ACL sees the sniffed name. The client was already told "connected": the stream
    // only ends.
    h.proxy(
        conn,
        bidi(2),
        "198.51.100.1:80",
        b"GET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n",
    );
    assert_eq!(h.s.counters.acl_rejected, 1);
    assert_eq!(h.a.responses.get(&(conn, bidi(2))), Some(&Vec::new()));
    assert_eq!((h.s.relay_count(), h.streams_held()), (1, 1));
}

#[test]
fn without_a_name_in_time_the_request_goes_where_it_asked() {
    let mut h = Harness::new(sniffing(&["direct(all)"]));
    let conn = h.client();
    h.proxy(conn, bidi(1), "198.51.100.1:443", b"\x16\x03");
    assert!(h.a.connects.is_empty());
    h.advance(Duration::from_millis(1999));
    assert!(h.a.connects.is_empty());
    h.advance(Duration::from_millis(1));
    let (_, _, addr, first) = h.a.connects[0].clone();
    assert_eq!(addr, "198.51.100.1:443".parse().unwrap());
    assert_eq!(first, b"\x16\x03".to_vec());
    assert_eq!(h.s.counters.sniffed, 0);

    // A name is not sniffed without rewriteDomain: no early reply.
    h.proxy(conn, bidi(2), "name.example:443", b"\x16\x03");
    assert!(!h.a.replies.contains_key(&(conn, bidi(2))));
    assert_eq!(
        h.a.resolves.last().map(|r| r.1.as_str()),
        Some("name.example")
    );

    // A reset while sniffing ends the relay and gives its permit back.
    h.proxy(conn, bidi(3), "198.51.100.1:443", b"");
    let held = h.streams_held();
    h.s.stream_reset(conn, bidi(3));
    h.step();
    assert_eq!(h.streams_held(), held - 1);
    h.advance(Duration::from_secs(3));
    assert_eq!(h.a.connects.len(), 1, "the reset relay never connects");
}

#[test]
fn a_udp_session_goes_to_the_name_its_first_quic_initial_carries() {
    use crate::proto::sniff::tests::{b64, S11_QUIC};
    let mut h = Harness::new(sniffing(&["direct(all)"]));
    let conn = h.client();
    h.udp(conn, 3, "192.0.2.45:443", &b64(S11_QUIC), 1);
    let (lookup, host, port) = h.a.udp_lookups[0].clone();
    assert_eq!((host.as_str(), port), ("www.notion.so", 443));
    h.s.udp_resolved(lookup, Ok(vec!["198.51.100.8:443".parse().unwrap()]));
    h.step();
    h.udp(conn, 3, "192.0.2.45:443", b"later", 1);
    let sent: Vec<SocketAddr> = h.a.udp_sent.iter().map(|s| s.1).collect();
    let to: SocketAddr = "198.51.100.8:443".parse().unwrap();
    assert_eq!(
        sent,
        [to, to],
        "every datagram of the session goes to the name"
    );
    assert_eq!(h.s.counters.sniffed, 1);

    // Replies carry the address the client asked for.
    let udp = h.a.udp_sent[0].0;
    h.s.udp_received(h.now, udp, to, b"answer", Some(1200));
    h.step();
    let msg = UdpMessage::parse(Bytes::from(h.a.datagrams[0].1.clone())).unwrap();
    assert_eq!(msg.addr, "192.0.2.45:443");
}
