//! A client [`Session`] against a server session (`server::hy2::session`) in virtual time,
//! as quinn-proto's `Pair` runs two endpoints: the client's actions become the server's
//! events (a connection, a stream opened, the stream's bytes, a reset, a close) and the
//! server's actions become the client's (the auth answer, a TCPResponse, credit, a reset,
//! a close). The server's targets, resolver and HTTP auth backend are scripted by the test;
//! QUIC itself is reduced to streams, their credit and their ends.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{Dir, Side, StreamId};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::tests::{config, socks};
use super::*;
use crate::server::hy2::session::{
    self as server, ConnId as SConn, JobId, RelayId, Session as Server,
};
use crate::server::hy2::{Authenticator, Hy2Config};

const CLIENT_ADDR: &str = "192.0.2.7:40000";
const TARGET: &str = "192.0.2.80:443";

fn password(p: &str) -> Hy2Config {
    server::tests::config(Authenticator::Password(p.into()))
}

/// A relay as the server's adapter holds it.
struct Relay {
    conn: SConn,
    stream: StreamId,
    /// The TCPResponse to send once connected.
    ok: Vec<u8>,
}

/// One QUIC connection, reduced to its bidirectional streams and their credit.
struct Link {
    server: SConn,
    /// Concurrent streams the server grants.
    limit: u64,
    open: HashSet<StreamId>,
    next: u64,
    /// An open found no credit: tell the client when a stream frees one.
    blocked: bool,
}

struct Pair {
    now: Instant,
    client: Session,
    server: Server,
    links: HashMap<ConnId, Link>,
    /// The client connection of each server connection.
    back: HashMap<SConn, ConnId>,
    /// Bytes written on a stream the server does not read yet (a parked request).
    unread: HashMap<(SConn, StreamId), Vec<u8>>,
    /// Targets that accept (`Ok`) or refuse; a connect to any other waits for the test.
    targets: HashMap<SocketAddr, Result<(), String>>,
    /// What the resolver knows.
    names: HashMap<String, Vec<SocketAddr>>,
    relays: HashMap<RelayId, Relay>,
    /// Connects that wait for the test, and what each target got first.
    pending_connects: Vec<RelayId>,
    target_got: HashMap<RelayId, Vec<u8>>,
    jobs: Vec<JobId>,
    server_closed: Vec<(SConn, u32)>,
    /// The client's side: requests relaying (with their stream), refused, aborted.
    pumps: HashMap<RequestId, (ConnId, StreamId, Vec<u8>)>,
    refused: HashMap<RequestId, (&'static str, String)>,
    aborted: Vec<RequestId>,
    client_closed: Vec<ConnId>,
    /// Server actions performed, of any kind.
    server_actions: usize,
}

impl Pair {
    fn new(server_cfg: Hy2Config, auth: &str) -> Self {
        let mut cfg = config(2);
        cfg.pool.auth = auth.into();
        let now = Instant::now();
        let stats = Arc::new(PoolStats::new(1));
        let mut p = Pair {
            now,
            client: Session::with_rng(cfg, stats, WorkerId(0), now, StdRng::seed_from_u64(1)),
            server: Server::with_rng(Arc::new(server_cfg), StdRng::seed_from_u64(2)),
            links: HashMap::new(),
            back: HashMap::new(),
            unread: HashMap::new(),
            targets: HashMap::new(),
            names: HashMap::new(),
            relays: HashMap::new(),
            pending_connects: Vec::new(),
            target_got: HashMap::new(),
            jobs: Vec::new(),
            server_closed: Vec::new(),
            pumps: HashMap::new(),
            refused: HashMap::new(),
            aborted: Vec::new(),
            client_closed: Vec::new(),
            server_actions: 0,
        };
        p.targets.insert(TARGET.parse().expect("address"), Ok(()));
        p
    }

    /// Runs both sides until neither has anything left to do.
    fn run(&mut self) {
        loop {
            let mut idle = true;
            while let Some(a) = self.client.poll_action() {
                idle = false;
                self.client_action(a);
            }
            while let Some(a) = self.server.poll_action() {
                idle = false;
                self.server_actions += 1;
                self.server_action(a);
            }
            // Bytes a parked request left in its stream, once the server reads it.
            let ready: Vec<_> = self
                .unread
                .keys()
                .filter(|(c, s)| self.server.reading(*c, *s))
                .copied()
                .collect();
            for k in ready {
                idle = false;
                let bytes = self.unread.remove(&k).unwrap_or_default();
                self.server.stream_data(self.now, k.0, k.1, &bytes, false);
            }
            if idle {
                return;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.client.handle_timeout(self.now, |_| false);
        self.server.handle_timeout(self.now);
        self.run();
    }

    fn request(&mut self, target: &str, early: &[u8]) -> RequestId {
        let id = self.client.request(self.now, socks(target, early));
        self.run();
        id
    }

    fn open_stream(&mut self, conn: ConnId, force: bool) -> Option<StreamId> {
        let link = self.links.get_mut(&conn)?;
        if !force && link.open.len() as u64 >= link.limit {
            link.blocked = true;
            return None;
        }
        let id = StreamId::new(Side::Client, Dir::Bi, link.next);
        link.next += 1;
        link.open.insert(id);
        self.server.stream_opened(link.server, id);
        Some(id)
    }

    /// Both halves of the stream are done: its credit comes back.
    fn stream_done(&mut self, conn: ConnId, stream: StreamId) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if link.open.remove(&stream) {
            self.credit_check(conn);
        }
    }

    fn credit_check(&mut self, conn: ConnId) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if link.blocked && (link.open.len() as u64) < link.limit {
            link.blocked = false;
            self.client.credit(self.now, conn);
        }
    }

    fn server_of(&self, conn: ConnId) -> Option<SConn> {
        self.links.get(&conn).map(|l| l.server)
    }

    fn client_action(&mut self, a: Action) {
        let now = self.now;
        match a {
            // The pair's server is an address.
            Action::Resolve { .. } => {}
            Action::Dial { conn, .. } => {
                let remote = CLIENT_ADDR.parse().expect("address");
                let s = self.server.connection(remote);
                let limit = self.server.config().max_incoming_streams;
                self.links.insert(
                    conn,
                    Link {
                        server: s,
                        limit,
                        open: HashSet::new(),
                        next: 0,
                        blocked: false,
                    },
                );
                self.back.insert(s, conn);
                self.server.connected(now, s);
                self.client.connected(conn);
            }
            Action::Authenticate { conn, request, .. } => {
                let id = self.open_stream(conn, true);
                self.client.auth_sent(conn, id);
                if let (Some(id), Some(s)) = (id, self.server_of(conn)) {
                    self.server.stream_data(now, s, id, &request, true);
                }
            }
            Action::SendRate { .. } => {}
            Action::OpenStream { conn, req } => {
                let id = self.open_stream(conn, false);
                self.client.stream_opened(now, req, id);
            }
            Action::WriteRequest {
                conn,
                stream,
                bytes,
                ..
            } => {
                let Some(s) = self.server_of(conn) else {
                    return;
                };
                if self.server.reading(s, stream) {
                    self.server.stream_data(now, s, stream, &bytes, false);
                } else {
                    self.unread
                        .entry((s, stream))
                        .or_default()
                        .extend_from_slice(&bytes);
                }
            }
            Action::ReplyLocal { .. } => {}
            Action::StartPump {
                req,
                conn,
                stream,
                to_local,
            } => {
                self.pumps.insert(req, (conn, stream, to_local));
            }
            Action::CloseLocal { req, code, why, .. } => {
                self.refused.insert(req, (code, why));
            }
            Action::EndStream { conn, stream } => {
                if let Some(s) = self.server_of(conn) {
                    self.server.stream_stopped(s, stream);
                }
                self.stream_done(conn, stream);
            }
            Action::ResetStream { conn, stream, .. } => {
                if let Some(s) = self.server_of(conn) {
                    self.server.stream_reset(s, stream);
                    self.server.stream_stopped(s, stream);
                }
                self.stream_done(conn, stream);
            }
            Action::AbortPump(req) => {
                self.aborted.push(req);
                if let Some((conn, stream, _)) = self.pumps.remove(&req) {
                    if let Some(s) = self.server_of(conn) {
                        self.server.stream_reset(s, stream);
                        self.server.stream_stopped(s, stream);
                    }
                    self.stream_done(conn, stream);
                }
                // The adapter lets go of the local connection.
                self.client.request_closed(now, req);
            }
            Action::CloseConn(conn) => {
                self.client_closed.push(conn);
                if let Some(link) = self.links.remove(&conn) {
                    self.back.remove(&link.server);
                    self.server.connection_lost(link.server);
                }
            }
        }
    }

    fn server_action(&mut self, a: server::Action) {
        use server::Action as S;
        let now = self.now;
        match a {
            S::ControlStream(_) | S::SendRate { .. } => {}
            S::Respond {
                conn,
                stream,
                bytes,
                ..
            } => {
                if let Some(&c) = self.back.get(&conn) {
                    if self.client.reading(c, stream) {
                        self.client.stream_data(now, c, stream, &bytes, true);
                    }
                    self.stream_done(c, stream);
                }
            }
            S::Reset { conn, stream, .. } => {
                if let Some(&c) = self.back.get(&conn) {
                    self.client.stream_reset(now, c, stream);
                    self.stream_done(c, stream);
                }
            }
            S::Close { conn, code, .. } => {
                self.server_closed.push((conn, code));
                if let Some(c) = self.back.remove(&conn) {
                    self.links.remove(&c);
                    self.client
                        .connection_lost(now, c, true, &"closed by the server");
                }
            }
            S::Credit { conn, limit } => {
                let Some(&c) = self.back.get(&conn) else {
                    return;
                };
                if let Some(link) = self.links.get_mut(&c) {
                    link.limit = limit.unwrap_or(link.open.len() as u64);
                }
                self.credit_check(c);
            }
            S::Offload { job, .. } => self.jobs.push(job),
            S::Resolve { relay, host, .. } => {
                let answer = self
                    .names
                    .get(&host)
                    .cloned()
                    .ok_or_else(|| std::io::Error::other("no such host"));
                self.server.resolved(relay, answer);
            }
            S::Connect {
                relay,
                conn,
                stream,
                addr,
                first,
                ok,
                ..
            } => {
                self.relays.insert(relay, Relay { conn, stream, ok });
                self.target_got.insert(relay, first);
                match self.targets.get(&addr).cloned() {
                    Some(result) => self.server.connect_done(relay, result),
                    None => self.pending_connects.push(relay),
                }
            }
            S::Start(relay) => {
                let Some(r) = self.relays.get(&relay) else {
                    return;
                };
                if let Some(&c) = self.back.get(&r.conn) {
                    let (stream, ok) = (r.stream, r.ok.clone());
                    self.client.stream_data(now, c, stream, &ok, false);
                }
            }
            S::Fail { relay, response } => {
                if let Some(r) = self.relays.remove(&relay) {
                    if let Some(&c) = self.back.get(&r.conn) {
                        if self.client.reading(c, r.stream) {
                            self.client.stream_data(now, c, r.stream, &response, true);
                        }
                        self.stream_done(c, r.stream);
                    }
                }
                self.server.relay_closed(relay);
            }
            S::Abort(relay) => {
                if let Some(r) = self.relays.remove(&relay) {
                    if let Some(&c) = self.back.get(&r.conn) {
                        self.client.stream_reset(now, c, r.stream);
                        self.stream_done(c, r.stream);
                    }
                }
                self.server.relay_closed(relay);
            }
            other => panic!("the pair does not script {other:?}"),
        }
    }

    /// The server's adapter resets an established relay (its target reset the TCP
    /// connection); the client's pump sees the reset and ends the request.
    fn target_reset(&mut self, relay: RelayId, req: RequestId) {
        let r = self.relays.remove(&relay).expect("a relay");
        let c = self.back[&r.conn];
        self.client.stream_reset(self.now, c, r.stream);
        self.server.relay_closed(relay);
        self.stream_done(c, r.stream);
        self.pumps.remove(&req);
        self.client.request_closed(self.now, req);
        self.run();
    }

    fn ready_conns(&self) -> usize {
        self.client
            .pool()
            .conns
            .iter()
            .filter(|c| c.usable())
            .count()
    }

    fn only_relay(&self) -> RelayId {
        let ids: Vec<_> = self.server.relays().map(|r| r.id).collect();
        assert_eq!(ids.len(), 1, "one relay");
        ids[0]
    }
}

#[test]
fn a_request_is_relayed_end_to_end() {
    let mut p = Pair::new(password("secret"), "secret");
    p.names
        .insert("example.com".into(), vec![TARGET.parse().expect("address")]);
    let by_ip = p.request(TARGET, b"GET / HTTP/1.1\r\n\r\n");
    let by_name = p.request("example.com:443", b"hello");
    assert_eq!(p.ready_conns(), 1);
    assert_eq!(p.server.counters.streams_relayed, 2);
    let firsts: HashSet<Vec<u8>> = p.target_got.values().cloned().collect();
    assert!(firsts.contains(b"GET / HTTP/1.1\r\n\r\n".as_slice()));
    assert!(
        firsts.contains(b"hello".as_slice()),
        "the early bytes reach the target"
    );
    for req in [by_ip, by_name] {
        let (_, _, to_local) = &p.pumps[&req];
        assert_eq!(
            to_local,
            &socks5::reply(ReplyCode::Succeeded, unspecified())
        );
    }
    assert!(p.refused.is_empty());
    // A name the resolver does not know: the server's reason reaches the app's log.
    let unknown = p.request("nowhere.example:80", b"");
    let (code, why) = &p.refused[&unknown];
    assert_eq!(*code, "0x05");
    assert!(
        why.contains("resolve nowhere.example:80: no such host"),
        "{why}"
    );
}

#[test]
fn auth_by_password_ok_and_refused() {
    let mut ok = Pair::new(password("secret"), "secret");
    ok.request(TARGET, b"");
    assert_eq!(ok.ready_conns(), 1);
    assert_eq!(ok.server.counters.auth_failures, 0);

    let mut wrong = Pair::new(password("secret"), "guess");
    let req = wrong.request(TARGET, b"");
    assert_eq!(wrong.ready_conns(), 0);
    assert_eq!(wrong.server.counters.auth_failures, 1);
    assert_eq!(wrong.client_closed.len(), 1, "the client closes it");
    assert_eq!(
        wrong.server.connection_count(),
        0,
        "and the server let go of it"
    );
    assert!(wrong.server.relays().next().is_none());
    // The request waits for a connection that works, then is refused with the reason.
    wrong.advance(TIMEOUT);
    let (code, why) = &wrong.refused[&req];
    assert_eq!(*code, "0x01");
    assert!(why.contains("no connection to the server"), "{why}");
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn an_http_auth_verdict_after_the_client_closed_lands_nowhere() {
    let http = || {
        server::tests::config(Authenticator::Http {
            url: "http://127.0.0.1:1/auth".into(),
            insecure: false,
        })
    };
    // In time: the connection authenticates.
    let mut p = Pair::new(http(), "token");
    let req = p.request(TARGET, b"");
    let job = p.jobs.pop().expect("the verdict is asked for");
    p.server.verdict(job, Ok(Some("alice".into())));
    p.run();
    assert_eq!(p.ready_conns(), 1);
    assert!(p.pumps.contains_key(&req));

    // Too late: the client gave the setup up and closed the connection.
    let mut p = Pair::new(http(), "token");
    p.request(TARGET, b"");
    let job = p.jobs.pop().expect("the verdict is asked for");
    p.advance(Duration::from_secs(10));
    assert_eq!(p.client_closed.len(), 1, "setup timed out");
    assert_eq!(p.server.connection_count(), 0);
    let before = p.server_actions;
    p.server.verdict(job, Ok(Some("alice".into())));
    p.run();
    assert_eq!(p.server_actions, before, "the verdict finds nothing");
    assert_eq!(p.ready_conns(), 0);
}

#[test]
fn a_reset_from_the_client_while_the_server_connects() {
    let mut p = Pair::new(password("secret"), "secret");
    let slow: SocketAddr = "192.0.2.81:443".parse().expect("address");
    let req = p.request(&slow.to_string(), b"");
    assert_eq!(p.pending_connects.len(), 1);
    let relay = p.only_relay();
    // The app goes away: the client resets the stream, the server aborts the connect.
    p.client.request_closed(p.now, req);
    p.run();
    assert_eq!(p.server.relay_count(), 0);
    assert!(!p.relays.contains_key(&relay));
    // The connect that finishes late starts nothing.
    let before = p.server_actions;
    p.server.connect_done(relay, Ok(()));
    p.run();
    assert_eq!(p.server_actions, before);
    assert!(p.pumps.is_empty());
    assert_eq!(p.client.pool().streams_on(p.client.pool().conns[0].ch), 0);
}

#[test]
fn a_reset_from_the_server_side() {
    let mut p = Pair::new(password("secret"), "secret");
    // A refused connect: the server fails the relay, the app hears the reason.
    let refused: SocketAddr = "192.0.2.82:443".parse().expect("address");
    p.targets.insert(refused, Err("connection refused".into()));
    let req = p.request(&refused.to_string(), b"");
    let (code, why) = &p.refused[&req];
    assert_eq!(*code, "0x05");
    assert!(why.contains("connection refused"), "{why}");
    assert_eq!(p.server.relay_count(), 0);

    // An established relay whose target resets: the client's pump ends it.
    let req = p.request(TARGET, b"");
    let relay = p.only_relay();
    assert!(p.pumps.contains_key(&req));
    p.target_reset(relay, req);
    assert_eq!(p.server.relay_count(), 0);
    assert_eq!(p.client.request_count(), 0);
    let conn = p.client.pool().conns[0].ch;
    assert_eq!(p.client.pool().streams_on(conn), 0);
    assert!(
        p.links[&conn].open.len() <= 1,
        "only the auth stream's slot may remain"
    );

    // The server closes the connection mid-relay and mid-request.
    let relaying = p.request(TARGET, b"");
    let slow: SocketAddr = "192.0.2.81:443".parse().expect("address");
    let waiting = p.request(&slow.to_string(), b"");
    assert!(p.pumps.contains_key(&relaying));
    p.server.kick(&HashSet::from(["user".to_string()]));
    p.run();
    assert_eq!(p.server_closed.len(), 1);
    assert_eq!(p.aborted, vec![relaying]);
    // The server's abort of the connecting relay may reach the client before the close.
    let (code, why) = &p.refused[&waiting];
    assert_eq!(*code, "0x05");
    assert!(
        why.contains("reset the stream") || why.contains("connection to the server was lost"),
        "{why}"
    );
    assert_eq!(p.server.relay_count(), 0);
    assert_eq!(p.client.request_count(), 0);
}
