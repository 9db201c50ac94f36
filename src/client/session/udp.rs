//! The UDP sessions of one worker, sans-IO: SOCKS5 UDP associations and UDP forwarders.
//!
//! Each association, and each source address of a forwarder, is a session with its own id.
//! Its datagrams go to the server as UDPMessages on one authenticated connection, which the
//! server answers on; a session whose connection is lost moves to another one with its next
//! datagram (the server sees a new session). Replies are reassembled and go back to the app:
//! with a SOCKS5 UDP header for an association, raw for a forwarder.
//!
//! The worker's adapter (`client/udp.rs`) owns the local sockets and names each by a key of
//! its own. It hands in what they receive ([`UdpSessions::from_app`]), the server's
//! datagrams ([`UdpSessions::from_server`]), sends and closes done, lost connections and the
//! clock, and performs the [`UdpAction`]s it polls. Connections are the session's
//! [`ConnId`]s, never quinn handles.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::pool::Pool;
use super::super::socks5::{self, Destination};
use super::super::stats::PoolStats;
use super::ConnId;
use crate::proto::udp::MAX_UDP_PAYLOAD;
use crate::proto::{Defragger, UdpMessage};

/// Datagrams to the app in flight per socket before new ones are dropped.
const MAX_SENDS: usize = 256;
/// Datagrams held while no connection is up (the first ones after start or a reconnect).
const MAX_PENDING: usize = 256;

/// The connections the UDP sessions may use.
pub trait UdpConns {
    /// Whether `conn` is authenticated.
    fn ready(&self, conn: ConnId) -> bool;
    /// An authenticated connection that relays UDP.
    fn pick_udp(&self) -> Option<ConnId>;
}

impl UdpConns for Pool<ConnId> {
    fn ready(&self, conn: ConnId) -> bool {
        self.conns.iter().any(|c| c.ch == conn && c.is_ready())
    }

    fn pick_udp(&self) -> Option<ConnId> {
        Pool::pick_udp(self)
    }
}

/// `udpForwarding` entry: datagrams to the local socket go to `remote`.
#[derive(Clone, Debug)]
pub struct UdpForward {
    /// `host:port`, resolved by the server.
    pub remote: String,
    /// A source address silent this long loses its session.
    pub timeout: Duration,
}

/// What the adapter does for the sessions, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum UdpAction {
    /// One packet of UDP session `session` for `addr`, to go to the server on `conn` as
    /// UDPMessages fragmented to the connection's datagram size.
    ToServer {
        conn: ConnId,
        session: u32,
        packet_id: u16,
        addr: String,
        payload: Vec<u8>,
    },
    /// A reply for the app at `to`, sent from the adapter's socket `sock`.
    ToApp {
        sock: usize,
        to: SocketAddr,
        buf: Vec<u8>,
    },
}

enum Kind {
    /// A SOCKS5 association for the app at `client_ip`.
    Socks { client_ip: IpAddr, session: u32 },
    Forward {
        fwd: UdpForward,
        by_src: HashMap<SocketAddr, u32>,
    },
}

/// A local socket, by the adapter's key.
struct Sock {
    kind: Kind,
    /// Replies handed to the adapter and not yet sent.
    sends: usize,
    closing: bool,
}

struct Session {
    sock: usize,
    /// Where replies go: the app's address (learned from its first datagram for SOCKS5).
    app: Option<SocketAddr>,
    conn: Option<ConnId>,
    defrag: Defragger,
    last: Instant,
    packet_id: u16,
}

impl Session {
    fn new(sock: usize, app: Option<SocketAddr>, now: Instant) -> Self {
        Session {
            sock,
            app,
            conn: None,
            defrag: Defragger::new(),
            last: now,
            packet_id: 0,
        }
    }
}

/// The UDP sessions of one worker.
pub struct UdpSessions {
    socks: HashMap<usize, Sock>,
    sessions: HashMap<u32, Session>,
    next_id: u32,
    stats: Arc<PoolStats>,
    /// Packets that found no connection, sent once one is up: (session, address, payload).
    pending: VecDeque<(u32, String, Vec<u8>)>,
    /// Earliest forwarder session expiry.
    next_expiry: Option<Instant>,
    actions: VecDeque<UdpAction>,
}

impl UdpSessions {
    pub fn new(stats: Arc<PoolStats>, worker: usize) -> Self {
        UdpSessions {
            socks: HashMap::new(),
            sessions: HashMap::new(),
            // Ids differ across workers only for readability in logs; the server keys
            // sessions by connection.
            next_id: (worker as u32) << 24,
            stats,
            pending: VecDeque::new(),
            next_expiry: None,
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<UdpAction> {
        self.actions.pop_front()
    }

    /// Whether a session sends on `conn`.
    pub fn uses(&self, conn: ConnId) -> bool {
        self.sessions.values().any(|s| s.conn == Some(conn))
    }

    /// Datagrams wait for a connection: the pool should open one.
    pub fn wants_connection(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When [`UdpSessions::expire`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// The adapter's socket `sock` forwards to `fwd.remote`.
    pub fn add_forwarder(&mut self, sock: usize, fwd: UdpForward) {
        let kind = Kind::Forward {
            fwd,
            by_src: HashMap::new(),
        };
        self.socks.insert(sock, Sock::new(kind));
    }

    /// The adapter's socket `sock` relays the SOCKS5 association of the app at `client_ip`.
    pub fn add_association(&mut self, sock: usize, client_ip: IpAddr, now: Instant) {
        let session = self.new_session(Session::new(sock, None, now));
        let kind = Kind::Socks { client_ip, session };
        self.socks.insert(sock, Sock::new(kind));
    }

    /// `sock` is being closed: nothing more is sent from it.
    pub fn closing(&mut self, sock: usize) {
        if let Some(s) = self.socks.get_mut(&sock) {
            s.closing = true;
        }
    }

    /// `sock` is closed: its sessions end.
    pub fn closed(&mut self, sock: usize) {
        let Some(s) = self.socks.remove(&sock) else {
            return;
        };
        match s.kind {
            Kind::Socks { session, .. } => {
                self.sessions.remove(&session);
            }
            Kind::Forward { by_src, .. } => {
                for id in by_src.values() {
                    self.sessions.remove(id);
                }
            }
        }
    }

    /// A reply to the app from `sock` was sent (or failed).
    pub fn sent(&mut self, sock: usize) {
        if let Some(s) = self.socks.get_mut(&sock) {
            s.sends = s.sends.saturating_sub(1);
        }
    }

    /// The connection `conn` is gone: its sessions move with their next datagram.
    pub fn connection_lost(&mut self, conn: ConnId) {
        for s in self.sessions.values_mut() {
            if s.conn == Some(conn) {
                s.conn = None;
                s.defrag.clear();
            }
        }
    }

    fn new_session(&mut self, session: Session) -> u32 {
        let id = fresh_id(&mut self.next_id);
        self.sessions.insert(id, session);
        id
    }

    /// A datagram from the app at `peer` on `sock`.
    pub fn from_app(
        &mut self,
        sock: usize,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
        conns: &dyn UdpConns,
    ) {
        let Some(s) = self.socks.get_mut(&sock) else {
            return;
        };
        if s.closing {
            return;
        }
        let (id, addr, payload) = match &mut s.kind {
            Kind::Socks { client_ip, session } => {
                // Only the host that asked for the association may use it (RFC 1928 §7).
                if peer.ip() != *client_ip {
                    return drop_one(&self.stats);
                }
                let Ok((dest, payload)) = socks5::parse_udp(data) else {
                    return drop_one(&self.stats);
                };
                let id = *session;
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.app = Some(peer);
                }
                (id, dest.to_host_port(), payload)
            }
            Kind::Forward { fwd, by_src } => {
                let remote = fwd.remote.clone();
                let id = match by_src.get(&peer) {
                    Some(&id) => id,
                    None => {
                        let expiry = now + fwd.timeout;
                        let id = fresh_id(&mut self.next_id);
                        by_src.insert(peer, id);
                        self.sessions
                            .insert(id, Session::new(sock, Some(peer), now));
                        self.next_expiry = Some(self.next_expiry.map_or(expiry, |e| e.min(expiry)));
                        id
                    }
                };
                (id, remote, data)
            }
        };
        if payload.is_empty() || payload.len() > MAX_UDP_PAYLOAD {
            return self.dropped();
        }
        self.send(id, addr, payload.to_vec(), now, conns);
    }

    /// Sends the packets that waited for a connection, if one is up now.
    pub fn flush_pending(&mut self, now: Instant, conns: &dyn UdpConns) {
        if self.pending.is_empty() || conns.pick_udp().is_none() {
            return;
        }
        for (id, addr, payload) in std::mem::take(&mut self.pending) {
            self.send(id, addr, payload, now, conns);
        }
    }

    /// One packet of session `id`, on the session's connection (or another ready one); held
    /// while no connection is up.
    fn send(
        &mut self,
        id: u32,
        addr: String,
        payload: Vec<u8>,
        now: Instant,
        conns: &dyn UdpConns,
    ) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.last = now;
        let conn = match s.conn.filter(|&c| conns.ready(c)) {
            Some(c) => c,
            None => match conns.pick_udp() {
                Some(c) => {
                    s.conn = Some(c);
                    s.defrag.clear();
                    c
                }
                None => {
                    if self.pending.len() >= MAX_PENDING {
                        return drop_one(&self.stats);
                    }
                    self.pending.push_back((id, addr, payload));
                    return;
                }
            },
        };
        s.packet_id = s.packet_id.wrapping_add(1);
        self.actions.push_back(UdpAction::ToServer {
            conn,
            session: id,
            packet_id: s.packet_id,
            addr,
            payload,
        });
    }

    /// A datagram lost on its way: the adapter could not send it, or it was malformed.
    pub fn dropped(&self) {
        drop_one(&self.stats);
    }

    /// A datagram from the server on `conn`.
    pub fn from_server(&mut self, conn: ConnId, datagram: Bytes, now: Instant) {
        let Ok(msg) = UdpMessage::parse(datagram) else {
            return drop_one(&self.stats);
        };
        let Some(s) = self.sessions.get_mut(&msg.session_id) else {
            return;
        };
        if s.conn != Some(conn) {
            return;
        }
        let msg = match s.defrag.feed(msg) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(_) => return drop_one(&self.stats),
        };
        s.last = now;
        let (Some(app), Some(sock)) = (s.app, self.socks.get_mut(&s.sock)) else {
            return;
        };
        if sock.closing || sock.sends >= MAX_SENDS {
            return drop_one(&self.stats);
        }
        let buf = match &sock.kind {
            Kind::Socks { .. } => {
                let Ok(src) = Destination::from_host_port(&msg.addr) else {
                    return drop_one(&self.stats);
                };
                let mut out = Vec::with_capacity(msg.payload.len() + 32);
                if socks5::encode_udp(&src, &msg.payload, &mut out).is_err() {
                    return drop_one(&self.stats);
                }
                out
            }
            Kind::Forward { .. } => msg.payload.to_vec(),
        };
        sock.sends += 1;
        self.actions.push_back(UdpAction::ToApp {
            sock: s.sock,
            to: app,
            buf,
        });
    }

    /// Ends forwarder sessions idle past their timeout.
    pub fn expire(&mut self, now: Instant) {
        if self.next_expiry.is_none_or(|at| at > now) {
            return;
        }
        let mut next: Option<Instant> = None;
        let sessions = &mut self.sessions;
        for sock in self.socks.values_mut() {
            let Kind::Forward { fwd, by_src } = &mut sock.kind else {
                continue;
            };
            by_src.retain(|_, id| {
                let Some(s) = sessions.get(id) else {
                    return false;
                };
                let at = s.last + fwd.timeout;
                if at <= now {
                    sessions.remove(id);
                    return false;
                }
                next = Some(next.map_or(at, |n| n.min(at)));
                true
            });
        }
        self.next_expiry = next;
    }
}

/// The next session id (`new_session` cannot be called while a socket is borrowed).
fn fresh_id(next: &mut u32) -> u32 {
    *next = next.wrapping_add(1);
    *next
}

fn drop_one(stats: &PoolStats) {
    stats.udp_dropped.fetch_add(1, Relaxed);
}

impl Sock {
    fn new(kind: Kind) -> Self {
        Sock {
            kind,
            sends: 0,
            closing: false,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The sessions in virtual time, against scripted connections: the adapter's part is
    //! played by the test, which performs the actions by hand.

    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::proto::udp::fragment;

    const APP_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
    const SOCK: usize = 3;

    /// The pool as the sessions see it: which connections are ready, which one a new
    /// session gets.
    #[derive(Default)]
    struct Conns {
        ready: RefCell<HashSet<ConnId>>,
        pick: RefCell<Option<ConnId>>,
    }

    impl Conns {
        fn up(conn: u64) -> Self {
            let c = Conns::default();
            c.set_up(ConnId(conn));
            c
        }

        fn set_up(&self, conn: ConnId) {
            self.ready.borrow_mut().insert(conn);
            *self.pick.borrow_mut() = Some(conn);
        }

        fn lose(&self, conn: ConnId) {
            self.ready.borrow_mut().remove(&conn);
            *self.pick.borrow_mut() = self.ready.borrow().iter().next().copied();
        }
    }

    impl UdpConns for Conns {
        fn ready(&self, conn: ConnId) -> bool {
            self.ready.borrow().contains(&conn)
        }

        fn pick_udp(&self) -> Option<ConnId> {
            *self.pick.borrow()
        }
    }

    struct Harness {
        udp: UdpSessions,
        stats: Arc<PoolStats>,
        now: Instant,
    }

    impl Harness {
        fn new() -> Self {
            let stats = Arc::new(PoolStats::new(1));
            Harness {
                udp: UdpSessions::new(stats.clone(), 1),
                stats,
                now: Instant::now(),
            }
        }

        fn actions(&mut self) -> Vec<UdpAction> {
            std::iter::from_fn(|| self.udp.poll_action()).collect()
        }

        fn dropped(&self) -> u64 {
            self.stats.udp_dropped.load(Relaxed)
        }

        /// The SOCKS5 UDP request datagram the app sends for `dest`.
        fn socks_datagram(dest: &str, payload: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let dest = Destination::from_host_port(dest).unwrap();
            socks5::encode_udp(&dest, payload, &mut out).unwrap();
            out
        }

        /// Sends `payload` for `dest` from the app and returns the one ToServer it made.
        fn socks_send(&mut self, dest: &str, payload: &[u8], conns: &Conns) -> UdpAction {
            let app = SocketAddr::new(APP_IP, 5000);
            let data = Self::socks_datagram(dest, payload);
            self.udp.from_app(SOCK, app, &data, self.now, conns);
            let mut a = self.actions();
            assert_eq!(a.len(), 1, "{a:?}");
            a.remove(0)
        }
    }

    fn to_server(a: &UdpAction) -> (ConnId, u32, u16) {
        match a {
            UdpAction::ToServer {
                conn,
                session,
                packet_id,
                ..
            } => (*conn, *session, *packet_id),
            other => panic!("not to the server: {other:?}"),
        }
    }

    /// A reply the server sends for `session` from `from`, fragmented to `max` bytes.
    fn reply(session: u32, from: &str, payload: &[u8], max: usize) -> Vec<Bytes> {
        fragment(session, 9, from, payload, max)
            .unwrap()
            .into_iter()
            .map(Bytes::from)
            .collect()
    }

    #[test]
    fn association_relays_both_ways_with_fragmented_replies() {
        let mut h = Harness::new();
        let conns = Conns::up(1);
        h.udp.add_association(SOCK, APP_IP, h.now);
        let a = h.socks_send("1.2.3.4:53", b"query", &conns);
        let (conn, session, packet_id) = to_server(&a);
        assert_eq!((conn, packet_id), (ConnId(1), 1));
        assert!(matches!(&a, UdpAction::ToServer { addr, payload, .. }
            if addr == "1.2.3.4:53" && payload == b"query"));
        assert!(h.udp.uses(ConnId(1)));

        // A 3000-byte answer in 1200-byte datagrams: one reply to the app once all are in.
        let answer: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let frags = reply(session, "1.2.3.4:53", &answer, 1200);
        assert!(frags.len() >= 3, "{}", frags.len());
        let last = frags.len() - 1;
        for (i, f) in frags.into_iter().enumerate() {
            h.udp.from_server(ConnId(1), f, h.now);
            let a = h.actions();
            if i < last {
                assert!(a.is_empty(), "{a:?}");
                continue;
            }
            let [UdpAction::ToApp { sock, to, buf }] = &a[..] else {
                panic!("{a:?}");
            };
            assert_eq!((*sock, *to), (SOCK, SocketAddr::new(APP_IP, 5000)));
            let (src, payload) = socks5::parse_udp(buf).unwrap();
            assert_eq!(src.to_host_port(), "1.2.3.4:53");
            assert_eq!(payload, &answer[..]);
        }
        // The next packet of the session has the next id.
        let a = h.socks_send("1.2.3.4:53", b"again", &conns);
        assert_eq!(to_server(&a), (ConnId(1), session, 2));
        assert_eq!(h.dropped(), 0);
    }

    #[test]
    fn association_refuses_other_hosts_and_malformed_datagrams() {
        let mut h = Harness::new();
        let conns = Conns::up(1);
        h.udp.add_association(SOCK, APP_IP, h.now);
        let data = Harness::socks_datagram("1.2.3.4:53", b"x");
        let stranger = SocketAddr::from(([127, 0, 0, 8], 5000));
        h.udp.from_app(SOCK, stranger, &data, h.now, &conns);
        let app = SocketAddr::new(APP_IP, 5000);
        h.udp.from_app(SOCK, app, b"\x00\x00", h.now, &conns);
        // Fragmented requests (FRAG != 0) are not supported (RFC 1928 §7 lets us drop them).
        let mut frag = data.clone();
        frag[2] = 1;
        h.udp.from_app(SOCK, app, &frag, h.now, &conns);
        assert!(h.actions().is_empty());
        assert_eq!(h.dropped(), 3);
        // A malformed datagram from the server is dropped and counted too.
        h.udp
            .from_server(ConnId(1), Bytes::from_static(b"\x01"), h.now);
        assert_eq!(h.dropped(), 4);
    }

    #[test]
    fn datagrams_wait_for_a_connection() {
        let mut h = Harness::new();
        let conns = Conns::default();
        h.udp.add_association(SOCK, APP_IP, h.now);
        let app = SocketAddr::new(APP_IP, 5000);
        let data = Harness::socks_datagram("1.2.3.4:53", b"early");
        for _ in 0..MAX_PENDING + 5 {
            h.udp.from_app(SOCK, app, &data, h.now, &conns);
        }
        assert!(h.actions().is_empty());
        assert!(h.udp.wants_connection());
        assert_eq!(h.dropped(), 5);
        // Nothing is flushed while no connection is up.
        h.udp.flush_pending(h.now, &conns);
        assert!(h.actions().is_empty());
        conns.set_up(ConnId(4));
        h.udp.flush_pending(h.now, &conns);
        let a = h.actions();
        assert_eq!(a.len(), MAX_PENDING);
        assert!(a.iter().all(|a| to_server(a).0 == ConnId(4)));
        assert!(!h.udp.wants_connection());
    }

    #[test]
    fn a_lost_connection_moves_the_session_and_drops_its_late_fragments() {
        let mut h = Harness::new();
        let conns = Conns::up(1);
        h.udp.add_association(SOCK, APP_IP, h.now);
        let (_, session, _) = to_server(&h.socks_send("1.2.3.4:53", b"a", &conns));
        // Half a reply arrives, then the connection is lost.
        let mut frags = reply(session, "1.2.3.4:53", &[7; 2000], 1200);
        h.udp.from_server(ConnId(1), frags.remove(0), h.now);
        conns.lose(ConnId(1));
        h.udp.connection_lost(ConnId(1));
        assert!(!h.udp.uses(ConnId(1)));
        // The rest of it, late, on the old connection: nothing lands.
        h.udp.from_server(ConnId(1), frags.remove(0), h.now);
        assert!(h.actions().is_empty());
        // The next datagram goes on the new connection, under the same session id.
        conns.set_up(ConnId(2));
        let a = h.socks_send("1.2.3.4:53", b"b", &conns);
        assert_eq!(to_server(&a).0, ConnId(2));
        assert_eq!(to_server(&a).1, session);
        // A reply on a connection the session does not use is ignored.
        for f in reply(session, "1.2.3.4:53", b"stray", 1200) {
            h.udp.from_server(ConnId(1), f, h.now);
        }
        assert!(h.actions().is_empty());
    }

    #[test]
    fn forwarder_sessions_per_source_expire_when_idle() {
        let mut h = Harness::new();
        let conns = Conns::up(1);
        let timeout = Duration::from_secs(60);
        let fwd = UdpForward {
            remote: "10.0.0.1:53".into(),
            timeout,
        };
        h.udp.add_forwarder(SOCK, fwd);
        let a = SocketAddr::from(([127, 0, 0, 1], 1000));
        let b = SocketAddr::from(([127, 0, 0, 1], 1001));
        let send = |h: &mut Harness, from| {
            h.udp.from_app(SOCK, from, b"raw", h.now, &conns);
            let acts = h.actions();
            assert_eq!(acts.len(), 1);
            to_server(&acts[0]).1
        };
        let (sa, sb) = (send(&mut h, a), send(&mut h, b));
        assert_ne!(sa, sb);
        assert_eq!(send(&mut h, a), sa);
        assert_eq!(h.udp.next_deadline(), Some(h.now + timeout));

        // A raw reply, to its own source.
        h.udp.from_server(
            ConnId(1),
            reply(sb, "10.0.0.1:53", b"ans", 1200)[0].clone(),
            h.now,
        );
        assert_eq!(
            h.actions(),
            vec![UdpAction::ToApp {
                sock: SOCK,
                to: b,
                buf: b"ans".to_vec()
            }]
        );

        // b stays busy, a goes quiet: a's session ends after the timeout.
        h.now += timeout / 2;
        assert_eq!(send(&mut h, b), sb);
        h.now += timeout / 2;
        h.udp.expire(h.now);
        assert_eq!(h.udp.next_deadline(), Some(h.now + timeout / 2));
        h.udp.from_server(
            ConnId(1),
            reply(sa, "10.0.0.1:53", b"late", 1200)[0].clone(),
            h.now,
        );
        assert!(
            h.actions().is_empty(),
            "a reply for an expired session lands nowhere"
        );
        let sa2 = send(&mut h, a);
        assert!(sa2 != sa && sa2 != sb);
    }

    #[test]
    fn a_closed_socket_ends_its_sessions_before_its_key_is_reused() {
        let mut h = Harness::new();
        let conns = Conns::up(1);
        h.udp.add_association(SOCK, APP_IP, h.now);
        let (_, old, _) = to_server(&h.socks_send("1.2.3.4:53", b"a", &conns));
        h.udp.closing(SOCK);
        // While closing, the socket neither sends to the server nor to the app.
        let app = SocketAddr::new(APP_IP, 5000);
        let data = Harness::socks_datagram("1.2.3.4:53", b"b");
        h.udp.from_app(SOCK, app, &data, h.now, &conns);
        h.udp.from_server(
            ConnId(1),
            reply(old, "1.2.3.4:53", b"r", 1200)[0].clone(),
            h.now,
        );
        assert!(h.actions().is_empty());
        h.udp.closed(SOCK);
        // The adapter reuses the key for another association: the old session's reply
        // finds nothing, the new one gets a session of its own.
        h.udp.add_association(SOCK, APP_IP, h.now);
        h.udp.from_server(
            ConnId(1),
            reply(old, "1.2.3.4:53", b"r", 1200)[0].clone(),
            h.now,
        );
        assert!(h.actions().is_empty());
        let (_, new, _) = to_server(&h.socks_send("1.2.3.4:53", b"c", &conns));
        assert_ne!(new, old);
    }

    #[test]
    fn replies_beyond_the_send_budget_are_dropped() {
        let mut h = Harness::new();
        let conns = Conns::up(1);
        h.udp.add_association(SOCK, APP_IP, h.now);
        let (_, session, _) = to_server(&h.socks_send("1.2.3.4:53", b"a", &conns));
        let one = || reply(session, "1.2.3.4:53", b"r", 1200).remove(0);
        for _ in 0..MAX_SENDS + 3 {
            h.udp.from_server(ConnId(1), one(), h.now);
        }
        assert_eq!(h.actions().len(), MAX_SENDS);
        assert_eq!(h.dropped(), 3);
        // One send done: room for one more.
        h.udp.sent(SOCK);
        h.udp.from_server(ConnId(1), one(), h.now);
        assert_eq!(h.actions().len(), 1);
    }
}
