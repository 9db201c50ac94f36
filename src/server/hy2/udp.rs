//! UDP sessions: client DATAGRAMs (UDPMessage, possibly fragmented) relayed through one
//! unconnected UDP socket per session, replies wrapped back with the session ID.
//!
//! As in the reference server: the first datagram of an unknown session ID opens the
//! session; one session may reach many destinations (each checked by the outbound guard,
//! the fix of GHSA-vgrc-hq28-p3xp); a session closes after `udpIdleTimeout` without
//! traffic either way; malformed datagrams are dropped and counted. Replies are fragmented
//! to the connection's DATAGRAM size and never exceed 1200 bytes per frame.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::ConnectionHandle;
use slab::Slab;

use super::super::guard::OutboundGuard;
use super::super::offload::OffloadClient;
use crate::engine::{Completion, SockOp};
use crate::limits::{Limits, SocketPermit, User};
use crate::proto::tcp::{split_host_port, Host};
use crate::proto::udp::{fragment, Defragger, UdpMessage, MAX_UDP_MESSAGE, MAX_UDP_PAYLOAD};
use crate::worker::Io;

/// Marks socket-operation and DNS tokens that belong to UDP sessions. A socket operation's
/// token carries the session's slab key; a DNS lookup's carries the lookup's own id
/// (`UdpTable::lookups`).
const UDP_TOKEN: u64 = 1 << 63;
/// Lookup ids stay below this, clear of the token's marker bits.
const LOOKUP_ID_MASK: u64 = (1 << 62) - 1;
/// Datagrams waiting for a send slot or a DNS answer, per session.
const MAX_QUEUED: usize = 64;
/// Receive buffer: larger than the largest relayed payload so oversized replies are seen
/// (and dropped) rather than silently truncated.
const RECV_BUF: usize = 8192;

pub fn is_udp_token(t: u64) -> bool {
    t & UDP_TOKEN != 0
}

struct Session {
    /// Never given to another session of this table (slab keys are reused).
    serial: u64,
    ch: ConnectionHandle,
    id: u32,
    fd: RawFd,
    last_active: Instant,
    defrag: Defragger,
    recv_inflight: bool,
    send_inflight: bool,
    /// Datagrams to send: destination, payload.
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Datagrams waiting for a DNS answer: host:port, payload. A destination has one lookup
    /// in flight exactly while it has datagrams here.
    unresolved: VecDeque<(String, Vec<u8>)>,
    /// Resolved and allowed destinations (bounded).
    resolved: HashMap<String, SocketAddr>,
    closing: bool,
    next_packet_id: u16,
    /// Whose traffic counters the payloads go to.
    user: Option<Arc<User>>,
    /// The session's socket, counted in the server's outbound-socket budget.
    _socket: SocketPermit,
}

/// Counters of the UDP path.
#[derive(Default, Debug, Clone, Copy)]
pub struct UdpCounters {
    pub sessions_opened: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Malformed or undeliverable client datagrams.
    pub dropped: u64,
    /// Destinations refused by the outbound guard.
    pub refused: u64,
    /// Sessions not opened: the outbound-socket budget was spent (their datagrams dropped).
    pub sessions_refused: u64,
}

/// A DNS lookup in flight for one destination of one session.
struct Lookup {
    /// The session's slab key and serial: the answer is for that session only.
    key: usize,
    serial: u64,
    /// The destination as the client named it (`host:port`).
    target: String,
}

#[derive(Default)]
pub struct UdpTable {
    sessions: Slab<Session>,
    by_id: HashMap<(ConnectionHandle, u32), usize>,
    /// The last `Session::serial` given.
    serial: u64,
    /// Lookups in flight, by id (the id is their token's low bits). An entry stays until its
    /// answer comes back, also when its session is gone.
    lookups: HashMap<u64, Lookup>,
    /// The last lookup id given.
    lookup_id: u64,
    pub counters: UdpCounters,
    /// No session can idle out before this (sessions only get later as they are used):
    /// `expire` scans the table only from then on.
    next_expiry: Option<Instant>,
}

/// What sessions reach the outside through.
pub struct Outbound<'a> {
    /// The socket budget each session's socket is taken from.
    pub limits: &'a Arc<Limits>,
    pub guard: &'a OutboundGuard,
    pub dns: &'a OffloadClient,
    /// `udpIdleTimeout`.
    pub idle_timeout: Duration,
}

impl UdpTable {
    /// Reads the connection's DATAGRAMs and relays them.
    pub fn on_datagrams(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        user: Option<Arc<User>>,
        out: &Outbound<'_>,
    ) {
        let mut msgs = Vec::new();
        if let Some(qc) = io.conn(ch) {
            while let Some(d) = qc.datagrams().recv() {
                msgs.push(d);
            }
        }
        for d in msgs {
            self.counters.datagrams_in += 1;
            let msg = match UdpMessage::parse(d) {
                Ok(m) => m,
                Err(_) => {
                    self.counters.dropped += 1;
                    continue;
                }
            };
            let key = match self.by_id.get(&(ch, msg.session_id)) {
                Some(&k) => k,
                None => match self.open(io, ch, msg.session_id, user.clone(), out) {
                    Some(k) => k,
                    None => {
                        self.counters.dropped += 1;
                        continue;
                    }
                },
            };
            let s = &mut self.sessions[key];
            s.last_active = io.now;
            let msg = match s.defrag.feed(msg) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(_) => {
                    self.counters.dropped += 1;
                    continue;
                }
            };
            let payload = msg.payload.to_vec();
            // Counted as received from the client, whether or not it can be delivered.
            if let Some(u) = &s.user {
                u.add_traffic(payload.len() as u64, 0);
            }
            match s.resolved.get(&msg.addr) {
                Some(&addr) => queue(s, addr, payload, &mut self.counters),
                None => match split_host_port(&msg.addr) {
                    Ok((Host::Ip(ip), port)) => match out.guard.check(ip) {
                        Ok(()) => {
                            let addr = SocketAddr::new(ip, port);
                            if s.resolved.len() < 256 {
                                s.resolved.insert(msg.addr.clone(), addr);
                            }
                            queue(s, addr, payload, &mut self.counters);
                        }
                        Err(_) => self.counters.refused += 1,
                    },
                    Ok((Host::Domain(host), port)) => {
                        if s.unresolved.len() >= MAX_QUEUED {
                            self.counters.dropped += 1;
                        } else if s.unresolved.iter().any(|(a, _)| *a == msg.addr) {
                            // Its lookup is in flight already.
                            s.unresolved.push_back((msg.addr, payload));
                        } else {
                            // A lookup of its own, answered for this destination only.
                            self.lookup_id = (self.lookup_id + 1) & LOOKUP_ID_MASK;
                            let lookup = self.lookup_id;
                            match out.dns.lookup(&host, port, UDP_TOKEN | lookup) {
                                Ok(()) => {
                                    self.lookups.insert(
                                        lookup,
                                        Lookup {
                                            key,
                                            serial: s.serial,
                                            target: msg.addr.clone(),
                                        },
                                    );
                                    s.unresolved.push_back((msg.addr, payload));
                                }
                                Err(_) => self.counters.dropped += 1,
                            }
                        }
                    }
                    Err(_) => self.counters.dropped += 1,
                },
            }
            self.pump(io, key);
        }
    }

    fn open(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        id: u32,
        user: Option<Arc<User>>,
        out: &Outbound<'_>,
    ) -> Option<usize> {
        let Some(socket) = out.limits.acquire_socket() else {
            self.counters.sessions_refused += 1;
            crate::warn_limited!("UDP session refused: the outbound-socket budget is spent");
            return None;
        };
        let bind: SocketAddr = "[::]:0".parse().expect("literal");
        let fd = io
            .driver
            .udp_open(bind)
            .or_else(|_| io.driver.udp_open("0.0.0.0:0".parse().expect("literal")))
            .map_err(|e| tracing::debug!("UDP session socket: {e}"))
            .ok()?;
        self.serial += 1;
        let key = self.sessions.insert(Session {
            serial: self.serial,
            ch,
            id,
            fd,
            last_active: io.now,
            defrag: Defragger::default(),
            recv_inflight: false,
            send_inflight: false,
            queue: VecDeque::new(),
            unresolved: VecDeque::new(),
            resolved: HashMap::new(),
            closing: false,
            next_packet_id: 1,
            user,
            _socket: socket,
        });
        self.by_id.insert((ch, id), key);
        self.counters.sessions_opened += 1;
        let at = io.now + out.idle_timeout;
        self.next_expiry = Some(self.next_expiry.map_or(at, |n| n.min(at)));
        Some(key)
    }

    /// A DNS answer for one destination of a session: its datagrams go to the first allowed
    /// address (or are refused), those to other destinations keep waiting for their own
    /// answers. An answer for a session that is gone is dropped, also when another session
    /// has its slot by now.
    pub fn on_dns(
        &mut self,
        io: &mut Io<'_>,
        token: u64,
        result: std::io::Result<Vec<SocketAddr>>,
        guard: &OutboundGuard,
    ) {
        let Some(lookup) = self.lookups.remove(&(token & LOOKUP_ID_MASK)) else {
            return;
        };
        let key = lookup.key;
        let Some(s) = self
            .sessions
            .get_mut(key)
            .filter(|s| s.serial == lookup.serial && !s.closing)
        else {
            return;
        };
        let port = split_host_port(&lookup.target).map_or(0, |(_, p)| p);
        let allowed = result
            .unwrap_or_default()
            .into_iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .find(|a| guard.check(a.ip()).is_ok());
        if let Some(addr) = allowed {
            if s.resolved.len() < 256 {
                s.resolved.insert(lookup.target.clone(), addr);
            }
        }
        for (target, payload) in std::mem::take(&mut s.unresolved) {
            if target != lookup.target {
                s.unresolved.push_back((target, payload));
                continue;
            }
            match allowed {
                Some(addr) => queue(s, addr, payload, &mut self.counters),
                None => self.counters.refused += 1,
            }
        }
        self.pump(io, key);
    }

    /// Keeps one receive and one send in flight per session.
    fn pump(&mut self, io: &mut Io<'_>, key: usize) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.closing {
            return;
        }
        let token = UDP_TOKEN | key as u64;
        if !s.send_inflight {
            if let Some((dest, payload)) = s.queue.pop_front() {
                s.send_inflight = true;
                io.driver.udp_send_to(s.fd, dest, payload, token);
            }
        }
        if !s.recv_inflight {
            s.recv_inflight = true;
            io.driver
                .udp_recv_from(s.fd, Vec::with_capacity(RECV_BUF), token);
        }
    }

    pub fn on_completion(&mut self, io: &mut Io<'_>, c: Completion) {
        let key = (c.token & !UDP_TOKEN) as usize;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if c.fd != s.fd {
            return;
        }
        match c.op {
            SockOp::SendTo => {
                s.send_inflight = false;
                if c.result.is_ok() {
                    s.last_active = io.now;
                }
            }
            SockOp::RecvFrom => {
                s.recv_inflight = false;
                if let (Ok(n), Some(from)) = (c.result, c.peer) {
                    if n > 0 && n <= MAX_UDP_PAYLOAD {
                        s.last_active = io.now;
                        s.next_packet_id = s.next_packet_id.wrapping_add(1).max(1);
                        let (ch, id, pid) = (s.ch, s.id, s.next_packet_id);
                        if reply(io, ch, id, pid, from, &c.buf[..n], &mut self.counters) {
                            if let Some(u) = &s.user {
                                u.add_traffic(0, n as u64);
                            }
                        }
                    }
                }
            }
            SockOp::Close => {
                if s.closing {
                    self.sessions.remove(key);
                }
                return;
            }
            _ => {}
        }
        self.pump(io, key);
    }

    fn close(&mut self, io: &mut Io<'_>, key: usize) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !s.closing {
            s.closing = true;
            self.by_id.remove(&(s.ch, s.id));
            io.driver.sock_close(s.fd, UDP_TOKEN | key as u64);
        }
    }

    /// Closes sessions idle for `timeout`. Scans the table only once the earliest possible
    /// expiry has come.
    pub fn expire(&mut self, io: &mut Io<'_>, now: Instant, timeout: Duration) {
        if self.next_expiry.is_none_or(|t| t > now) {
            return;
        }
        let mut idle = Vec::new();
        let mut next = None::<Instant>;
        for (k, s) in self.sessions.iter().filter(|(_, s)| !s.closing) {
            let at = s.last_active + timeout;
            if at <= now {
                idle.push(k);
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        self.next_expiry = next;
        for k in idle {
            self.close(io, k);
        }
    }

    /// When `expire` next has work, at the earliest.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// The connection went away: close its sessions.
    pub fn close_conn(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        let keys: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.ch == ch)
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.close(io, k);
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

fn queue(s: &mut Session, addr: SocketAddr, payload: Vec<u8>, c: &mut UdpCounters) {
    if s.queue.len() < MAX_QUEUED {
        s.queue.push_back((addr, payload));
    } else {
        c.dropped += 1;
    }
}

/// Wraps a reply in UDPMessages (fragmented when needed) and sends them as DATAGRAMs.
fn reply(
    io: &mut Io<'_>,
    ch: ConnectionHandle,
    session: u32,
    packet_id: u16,
    from: SocketAddr,
    payload: &[u8],
    c: &mut UdpCounters,
) -> bool {
    let Some(qc) = io.conn(ch) else { return false };
    let Some(max) = qc.datagrams().max_size() else {
        return false;
    };
    let max = max.min(MAX_UDP_MESSAGE);
    let addr = from.to_string();
    let Ok(frags) = fragment(session, packet_id, &addr, payload, max) else {
        c.dropped += 1;
        return false;
    };
    let mut sent = true;
    for f in frags {
        if qc.datagrams().send(Bytes::from(f), true).is_ok() {
            c.datagrams_out += 1;
        } else {
            sent = false;
        }
    }
    sent
}
