//! UDP over Hysteria2 for one worker: SOCKS5 UDP associations and UDP forwarders.
//!
//! Each association or forwarded source address is a session with its own id; its
//! datagrams go out as UDPMessages (fragmented to fit the connection's datagram size) on one
//! authenticated connection, which the server answers on. A session whose connection is
//! lost moves to another one with its next datagram (the server sees a new session).
//! Replies are reassembled and sent back to the app: with a SOCKS5 UDP header for an
//! association, raw for a forwarder.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::ConnectionHandle;
use slab::Slab;

use super::socks5::{self, Destination};
use super::stats::PoolStats;
use super::token::{self, token, TokenKind};
use crate::engine::{self, Completion, SockOp};
use crate::proto::udp::{fragment, MAX_UDP_PAYLOAD};
use crate::proto::{Defragger, UdpMessage};
use crate::worker::Io;

/// Receive buffer: the largest payload plus a SOCKS5 header.
const RECV_BUF: usize = MAX_UDP_PAYLOAD + 512;
/// Datagrams to the app in flight per socket before new ones are dropped.
const MAX_SENDS: usize = 256;
/// Datagrams held while no connection is up (the first ones after start or a reconnect).
const MAX_PENDING: usize = 256;

/// The connections the UDP sessions may use.
pub trait UdpConns {
    /// Whether `ch` is authenticated.
    fn ready(&self, ch: ConnectionHandle) -> bool;
    /// An authenticated connection that relays UDP.
    fn pick_udp(&self) -> Option<ConnectionHandle>;
}

/// `udpForwarding` entry: datagrams to the local socket go to `remote`.
#[derive(Clone, Debug)]
pub struct UdpForward {
    /// `host:port`, resolved by the server.
    pub remote: String,
    /// A source address silent this long loses its session.
    pub timeout: Duration,
}

enum Kind {
    /// A SOCKS5 association for the app at `client_ip`; its control connection is the
    /// local `(key, generation)`.
    Socks { client_ip: IpAddr, session: u32 },
    Forward {
        fwd: UdpForward,
        by_src: HashMap<SocketAddr, u32>,
    },
}

struct Sock {
    socket: engine::Sock,
    gen: u32,
    kind: Kind,
    sends: usize,
    closing: bool,
}

struct Session {
    sock: usize,
    /// Where replies go: the app's address (learned from its first datagram for SOCKS5).
    app: Option<SocketAddr>,
    ch: Option<ConnectionHandle>,
    defrag: Defragger,
    last: Instant,
    packet_id: u16,
}

pub struct Udp {
    socks: Slab<Sock>,
    sessions: HashMap<u32, Session>,
    next_id: u32,
    gen: u32,
    stats: Arc<PoolStats>,
    /// Datagrams that found no connection, sent once one is up: (session, address,
    /// payload).
    pending: std::collections::VecDeque<(u32, String, Vec<u8>)>,
    /// Earliest forwarder session expiry.
    next_expiry: Option<Instant>,
}

impl Udp {
    pub fn new(stats: Arc<PoolStats>, worker: usize) -> Self {
        Udp {
            socks: Slab::new(),
            sessions: HashMap::new(),
            // Ids differ across workers only for readability in logs; the server keys
            // sessions by connection.
            next_id: (worker as u32) << 24,
            gen: 0,
            stats,
            pending: std::collections::VecDeque::new(),
            next_expiry: None,
        }
    }

    /// Whether a session sends on `ch`.
    pub fn uses(&self, ch: ConnectionHandle) -> bool {
        self.sessions.values().any(|s| s.ch == Some(ch))
    }

    /// Datagrams wait for a connection: the pool should open one.
    pub fn wants_connection(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sends the datagrams that waited for a connection, if one is up now.
    pub fn flush_pending(&mut self, io: &mut Io<'_>, pool: &dyn UdpConns) {
        if self.pending.is_empty() || pool.pick_udp().is_none() {
            return;
        }
        for (id, addr, payload) in std::mem::take(&mut self.pending) {
            self.send(io, id, &addr, &payload, pool);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_expiry
    }

    fn insert(&mut self, io: &mut Io<'_>, socket: engine::Sock, kind: Kind) -> usize {
        self.gen = self.gen % token::GEN_MASK + 1;
        let key = self.socks.insert(Sock {
            socket,
            gen: self.gen,
            kind,
            sends: 0,
            closing: false,
        });
        self.post_recv(io, key);
        key
    }

    fn post_recv(&mut self, io: &mut Io<'_>, key: usize) {
        let s = &self.socks[key];
        io.driver.udp_recv_from(
            s.socket,
            Vec::with_capacity(RECV_BUF),
            token(TokenKind::Udp, key, s.gen),
        );
    }

    fn new_session(&mut self, sock: usize, app: Option<SocketAddr>, now: Instant) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.sessions.insert(
            id,
            Session {
                sock,
                app,
                ch: None,
                defrag: Defragger::new(),
                last: now,
                packet_id: 0,
            },
        );
        id
    }

    pub fn add_forwarder(&mut self, io: &mut Io<'_>, socket: engine::Sock, fwd: UdpForward) {
        self.insert(
            io,
            socket,
            Kind::Forward {
                fwd,
                by_src: HashMap::new(),
            },
        );
    }

    /// Opens the relay socket of a SOCKS5 association; returns its key and address.
    pub fn associate(
        &mut self,
        io: &mut Io<'_>,
        bind_ip: IpAddr,
        client_ip: IpAddr,
    ) -> std::io::Result<(usize, SocketAddr)> {
        let sock = std::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0))?;
        let addr = sock.local_addr()?;
        let socket = io.driver.adopt(sock.into())?;
        let key = self.insert(
            io,
            socket,
            Kind::Socks {
                client_ip,
                session: 0,
            },
        );
        let session = self.new_session(key, None, io.now);
        if let Kind::Socks { session: s, .. } = &mut self.socks[key].kind {
            *s = session;
        }
        Ok((key, addr))
    }

    /// The association's TCP connection ended: close its socket.
    pub fn control_closed(&mut self, io: &mut Io<'_>, key: usize) {
        if let Some(s) = self.socks.get_mut(key) {
            if !s.closing {
                s.closing = true;
                io.driver
                    .sock_close(s.socket, token(TokenKind::Udp, key, s.gen));
            }
        }
    }

    pub fn connection_lost(&mut self, ch: ConnectionHandle) {
        for s in self.sessions.values_mut() {
            if s.ch == Some(ch) {
                s.ch = None;
                s.defrag.clear();
            }
        }
    }

    pub fn on_completion(&mut self, io: &mut Io<'_>, c: Completion, pool: &dyn UdpConns) {
        let (_, key, gen) = token::split(c.token);
        match self.socks.get(key) {
            Some(s) if s.gen == gen => {}
            _ => return,
        }
        match c.op {
            SockOp::RecvFrom => {
                if self.socks[key].closing {
                    return;
                }
                if let (Ok(n), Some(peer)) = (c.result, c.peer) {
                    self.app_datagram(io, key, peer, &c.buf[..n], pool);
                }
                self.post_recv(io, key);
            }
            SockOp::SendTo => {
                let s = &mut self.socks[key];
                s.sends = s.sends.saturating_sub(1);
            }
            SockOp::Close => {
                let s = self.socks.remove(key);
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
            _ => {}
        }
    }

    /// A datagram from the app.
    fn app_datagram(
        &mut self,
        io: &mut Io<'_>,
        key: usize,
        peer: SocketAddr,
        data: &[u8],
        pool: &dyn UdpConns,
    ) {
        let now = io.now;
        let (id, addr, payload) = match &mut self.socks[key].kind {
            Kind::Socks { client_ip, session } => {
                // Only the host that asked for the association may use it (RFC 1928 §7).
                if peer.ip() != *client_ip {
                    return self.dropped();
                }
                let Ok((dest, payload)) = socks5::parse_udp(data) else {
                    return self.dropped();
                };
                let id = *session;
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.app = Some(peer);
                }
                (id, dest.to_host_port(), payload)
            }
            Kind::Forward { fwd, by_src } => {
                let remote = fwd.remote.clone();
                let timeout = fwd.timeout;
                let id = match by_src.get(&peer) {
                    Some(&id) => id,
                    None => {
                        self.next_id = self.next_id.wrapping_add(1);
                        let id = self.next_id;
                        by_src.insert(peer, id);
                        self.sessions.insert(
                            id,
                            Session {
                                sock: key,
                                app: Some(peer),
                                ch: None,
                                defrag: Defragger::new(),
                                last: now,
                                packet_id: 0,
                            },
                        );
                        let expiry = now + timeout;
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
        self.send(io, id, &addr, payload, pool);
    }

    /// Sends one packet of session `id` as UDPMessages on the session's connection (or a
    /// new one); holds it while no connection is up.
    fn send(&mut self, io: &mut Io<'_>, id: u32, addr: &str, payload: &[u8], pool: &dyn UdpConns) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.last = io.now;
        let ready = |ch: ConnectionHandle| pool.ready(ch);
        let ch = match s.ch.filter(|&ch| ready(ch)) {
            Some(ch) => ch,
            None => match pool.pick_udp() {
                Some(ch) => {
                    s.ch = Some(ch);
                    s.defrag.clear();
                    ch
                }
                None => {
                    if self.pending.len() >= MAX_PENDING {
                        return self.dropped();
                    }
                    self.pending
                        .push_back((id, addr.to_string(), payload.to_vec()));
                    return;
                }
            },
        };
        s.packet_id = s.packet_id.wrapping_add(1);
        let packet_id = s.packet_id;
        let Some(qc) = io.conn(ch) else {
            return self.dropped();
        };
        let Some(max) = qc.datagrams().max_size() else {
            return self.dropped();
        };
        let Ok(frags) = fragment(id, packet_id, addr, payload, max) else {
            return self.dropped();
        };
        for f in frags {
            if qc.datagrams().send(Bytes::from(f), true).is_err() {
                self.stats.udp_dropped.fetch_add(1, Relaxed);
                break;
            }
        }
    }

    fn dropped(&self) {
        self.stats.udp_dropped.fetch_add(1, Relaxed);
    }

    /// Datagrams from the server on `ch`.
    pub fn on_datagrams(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        let mut msgs = Vec::new();
        if let Some(qc) = io.conn(ch) {
            while let Some(d) = qc.datagrams().recv() {
                msgs.push(d);
            }
        }
        for d in msgs {
            let Ok(msg) = UdpMessage::parse(d) else {
                self.dropped();
                continue;
            };
            let Some(s) = self.sessions.get_mut(&msg.session_id) else {
                continue;
            };
            if s.ch != Some(ch) {
                continue;
            }
            let msg = match s.defrag.feed(msg) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(_) => {
                    self.stats.udp_dropped.fetch_add(1, Relaxed);
                    continue;
                }
            };
            s.last = io.now;
            let (Some(app), Some(sock)) = (s.app, self.socks.get_mut(s.sock)) else {
                continue;
            };
            if sock.closing || sock.sends >= MAX_SENDS {
                self.stats.udp_dropped.fetch_add(1, Relaxed);
                continue;
            }
            let buf = match &sock.kind {
                Kind::Socks { .. } => {
                    let Ok(src) = Destination::from_host_port(&msg.addr) else {
                        self.stats.udp_dropped.fetch_add(1, Relaxed);
                        continue;
                    };
                    let mut out = Vec::with_capacity(msg.payload.len() + 32);
                    if socks5::encode_udp(&src, &msg.payload, &mut out).is_err() {
                        self.stats.udp_dropped.fetch_add(1, Relaxed);
                        continue;
                    }
                    out
                }
                Kind::Forward { .. } => msg.payload.to_vec(),
            };
            sock.sends += 1;
            let tok = token(TokenKind::Udp, s.sock, sock.gen);
            io.driver.udp_send_to(sock.socket, app, buf, tok);
        }
    }

    /// Ends forwarder sessions idle past their timeout.
    pub fn expire(&mut self, io: &mut Io<'_>) {
        if self.next_expiry.is_none_or(|at| at > io.now) {
            return;
        }
        let now = io.now;
        let mut next: Option<Instant> = None;
        let sessions = &mut self.sessions;
        for (_, sock) in self.socks.iter_mut() {
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
