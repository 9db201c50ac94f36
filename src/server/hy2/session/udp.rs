//! UDP sessions: client DATAGRAMs (UDPMessage, possibly fragmented) relayed through one
//! unconnected UDP socket per session, replies wrapped back with the session ID.
//!
//! As in the reference server: the first datagram of an unknown session ID opens the
//! session; one session may reach many destinations (each checked by the outbound guard,
//! the fix of GHSA-vgrc-hq28-p3xp); a session closes after `udpIdleTimeout` without
//! traffic either way; malformed datagrams are dropped and counted. Replies are fragmented
//! to the connection's DATAGRAM size and never exceed 1200 bytes per frame.
//!
//! Each lookup of a destination has its own id, answered for that destination of that
//! session only. The adapter owns the sockets ([`Action::UdpOpen`], [`Action::UdpSend`],
//! [`Action::UdpClose`]).
//!
//! A session leaves the way its first destination's outbound says ([`UdpVia`]): a socket of
//! its own (`direct`), or a SOCKS5 UDP association (`socks5`), one per session as in the
//! reference, which is handed the destination's name to resolve. A later destination routed
//! to another way than the session's is dropped and counted, never sent the wrong way. An
//! `http` outbound carries no UDP (the reference's "UDP not supported by HTTP proxy").

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Action, ConnId, Session};
use crate::acl::{self, Decision, Protocol, Verdict};
use crate::engine::Egress;
use crate::limits::{ExtraSocket, SocketPermit, UdpRefused, User};
use crate::proto::sniff::{self, Transport};
use crate::proto::tcp::{split_host_port, Host};
use crate::proto::udp::{fragment, Defragger, UdpMessage, MAX_UDP_MESSAGE, MAX_UDP_PAYLOAD};
use crate::server::route::{Outbound, ProxyKind, Way};

/// Datagrams of one session waiting for DNS answers.
const MAX_UNRESOLVED: usize = 64;
/// Destinations a session remembers the address of.
const MAX_RESOLVED: usize = 256;
/// Time a SOCKS5 proxy has to set up an association, as the reference's dial and request
/// deadlines give it.
pub const ASSOCIATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A UDP session, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpId(pub u64);

/// Where one datagram of a session is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdpTo {
    /// Straight to this address, from the session's socket.
    Addr(SocketAddr),
    /// Through the session's SOCKS5 association, to this host (a name the proxy resolves,
    /// or an IP literal) and port.
    Proxied(String, u16),
}

/// How a session's datagrams leave, set by its first destination's outbound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdpVia {
    /// A UDP socket set up as the `direct` outbound says.
    Direct(Egress),
    /// A UDP ASSOCIATE with this SOCKS5 proxy (and its username and password).
    Socks5 {
        proxy: SocketAddr,
        auth: Option<(String, String)>,
    },
}

impl UdpVia {
    /// Whether a destination routed `other`'s way may use a session opened this way: any
    /// `direct` with any (the socket is the first one's, as ever), a proxy only with itself.
    fn carries(&self, other: &UdpVia) -> bool {
        match (self, other) {
            (UdpVia::Direct(_), UdpVia::Direct(_)) => true,
            (UdpVia::Socks5 { proxy: a, .. }, UdpVia::Socks5 { proxy: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// A DNS lookup for one destination of one UDP session, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// Counters of the UDP path.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpCounters {
    pub sessions_opened: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Malformed or undeliverable client datagrams.
    pub dropped: u64,
    /// Destinations refused by the outbound guard.
    pub refused: u64,
    /// Sessions not opened: the user's UDP-session or socket cap was reached, or the
    /// server's outbound-socket budget spent (their datagrams dropped).
    pub sessions_refused: u64,
}

struct UdpSession {
    conn: ConnId,
    id: u32,
    last_active: Instant,
    defrag: Defragger,
    /// Datagrams waiting for a DNS answer: host:port, payload. A destination has one lookup
    /// in flight exactly while it has datagrams here.
    unresolved: VecDeque<(String, Vec<u8>)>,
    /// Routed destinations (bounded): where to send, or `None` when the ACL, the outbound
    /// guard or the session's way refused it.
    resolved: HashMap<String, Option<UdpTo>>,
    /// How it leaves, once its socket was asked for (the first destination's way).
    via: Option<UdpVia>,
    /// A SOCKS5 association not up yet fails at this time.
    associate_by: Option<Instant>,
    /// Its first datagram was looked at for a name (`sniff`).
    inspected: bool,
    /// Where all its datagrams go, sniffed from the first one (`name:port`).
    sniffed: Option<String>,
    /// Replies are labelled with this address (the one the client first asked for) once
    /// sniffing redirected the session.
    reply_as: Option<String>,
    next_packet_id: u16,
    /// Whose traffic counters the payloads go to.
    user: Option<Arc<User>>,
    /// Its socket is being closed; the session goes when the adapter says it is.
    closing: bool,
    /// The session's socket, counted in the server's outbound-socket budget until closed.
    _socket: SocketPermit,
    /// A SOCKS5 association's control connection, once the session leaves that way.
    _ctrl: Option<ExtraSocket>,
}

/// A lookup in flight: for which destination of which session, and its route if the rules
/// decided it before the lookup.
struct Lookup {
    udp: UdpId,
    target: String,
    decision: Option<Decision>,
}

/// Where one destination's datagrams go.
enum Dest {
    Send(UdpTo, UdpVia),
    /// Refused (ACL `reject`, the outbound guard, no usable address): dropped.
    Refused,
    /// Its addresses are needed first.
    Lookup(Option<Decision>),
}

#[derive(Default)]
pub(super) struct Udp {
    sessions: HashMap<UdpId, UdpSession>,
    by_id: HashMap<(ConnId, u32), UdpId>,
    lookups: HashMap<LookupId, Lookup>,
    /// No session can idle out before this (sessions only get later as they are used):
    /// `expire_udp` scans the table only from then on.
    next_expiry: Option<Instant>,
    pub counters: UdpCounters,
}

impl Session {
    /// A DATAGRAM from the client. Dropped unseen before authentication or with UDP off.
    pub fn datagram(&mut self, now: Instant, conn: ConnId, data: Bytes) {
        let Some(user) = self.udp_user(conn) else {
            return;
        };
        let u = &mut self.udp;
        u.counters.datagrams_in += 1;
        let Ok(msg) = UdpMessage::parse(data) else {
            u.counters.dropped += 1;
            return;
        };
        let udp = match u.by_id.get(&(conn, msg.session_id)) {
            Some(&udp) => udp,
            None => match self.open_udp(now, conn, msg.session_id, user) {
                Some(udp) => udp,
                None => return,
            },
        };
        let u = &mut self.udp;
        let Some(s) = u.sessions.get_mut(&udp) else {
            return;
        };
        s.last_active = now;
        let msg = match s.defrag.feed(msg) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(_) => {
                u.counters.dropped += 1;
                return;
            }
        };
        let payload = msg.payload.to_vec();
        // Counted as received from the client, whether or not it can be delivered.
        if let Some(user) = &s.user {
            user.add_traffic(payload.len() as u64, 0);
        }
        let target = self.udp_target(udp, msg.addr, &payload);
        let u = &mut self.udp;
        let Some(s) = u.sessions.get_mut(&udp) else {
            return;
        };
        match s.resolved.get(&target) {
            // The session's way is not open yet (no room for an association's connection):
            // decided again, so that it opens once there is.
            Some(Some(_)) if s.via.is_none() => {
                s.resolved.remove(&target);
            }
            Some(Some(to)) => {
                let to = to.clone();
                self.actions.push_back(Action::UdpSend { udp, to, payload });
                return;
            }
            Some(None) => {
                u.counters.refused += 1;
                return;
            }
            None => {}
        }
        let (host, port) = match split_host_port(&target) {
            Ok((Host::Ip(ip), port)) => (acl::Host::new(&ip.to_string()), port),
            Ok((Host::Domain(name), port)) => (acl::Host::new(&name), port),
            Err(_) => {
                u.counters.dropped += 1;
                return;
            }
        };
        match self.udp_dest(&host, port, None, None) {
            Dest::Lookup(decision) => {
                let u = &mut self.udp;
                let Some(s) = u.sessions.get_mut(&udp) else {
                    return;
                };
                if s.unresolved.len() >= MAX_UNRESOLVED {
                    u.counters.dropped += 1;
                    return;
                }
                let in_flight = s.unresolved.iter().any(|(a, _)| *a == target);
                s.unresolved.push_back((target.clone(), payload));
                if !in_flight {
                    // A lookup of its own, answered for this destination only.
                    self.last_id += 1;
                    let lookup = LookupId(self.last_id);
                    self.udp.lookups.insert(
                        lookup,
                        Lookup {
                            udp,
                            target,
                            decision,
                        },
                    );
                    let host = host.name().to_owned();
                    self.actions
                        .push_back(Action::UdpResolve { lookup, host, port });
                }
            }
            dest => {
                let addr = self.remember(udp, target, dest);
                self.udp_send(udp, addr, payload);
            }
        }
    }

    /// Where a datagram addressed to `addr` goes: as addressed, unless sniffing found a
    /// name in the session's first datagram (a QUIC Initial's SNI): then every datagram of
    /// the session goes to that name on the port first asked for, as in the reference.
    fn udp_target(&mut self, udp: UdpId, addr: String, payload: &[u8]) -> String {
        let Some(s) = self.udp.sessions.get_mut(&udp) else {
            return addr;
        };
        if !s.inspected {
            s.inspected = true;
            let sniffed = match (&self.cfg.sniffer, split_host_port(&addr)) {
                (Some(sniffer), Ok((host, port))) => {
                    let name = match &host {
                        Host::Ip(ip) => ip.to_string(),
                        Host::Domain(name) => name.clone(),
                    };
                    sniffer
                        .wants(&name, Transport::Udp, port)
                        .then(|| sniff::quic_initial_sni(payload))
                        .flatten()
                        .map(|sni| sniff::join_host_port(&sni, port))
                }
                _ => None,
            };
            if let Some(to) = sniffed {
                self.counters.sniffed += 1;
                s.reply_as = Some(addr.clone());
                s.sniffed = Some(to);
            }
        }
        s.sniffed.clone().unwrap_or(addr)
    }

    /// Where datagrams to `host`:`port` go: `decision` if the rules already made it,
    /// `answer` once looked up (an IP literal carries its own address).
    fn udp_dest(
        &mut self,
        host: &acl::Host,
        port: u16,
        decision: Option<Decision>,
        answer: Option<&[SocketAddr]>,
    ) -> Dest {
        let router = self.cfg.router.clone();
        let literal: Vec<SocketAddr> = host
            .ipv4()
            .map(IpAddr::V4)
            .or(host.ipv6().map(IpAddr::V6))
            .filter(|_| host.name().parse::<IpAddr>().is_ok())
            .map(|ip| vec![SocketAddr::new(ip, port)])
            .unwrap_or_default();
        let answer = answer.or((!literal.is_empty()).then_some(literal.as_slice()));
        let decision = match (decision, answer) {
            (Some(d), _) => d,
            (None, Some(_)) => router.route(host, Protocol::Udp, port),
            (None, None) => match router.route_unresolved(host, Protocol::Udp, port) {
                Verdict::Decided(d) => d,
                Verdict::NeedsAddresses => return Dest::Lookup(None),
            },
        };
        let (outbound, hijack) = match router.way(&decision) {
            Way::Reject => {
                self.counters.acl_rejected += 1;
                return Dest::Refused;
            }
            Way::Out { outbound, hijack } => (outbound, hijack),
        };
        let direct = match outbound {
            Outbound::Direct(direct) => direct,
            // The proxy is handed the name (or the hijacked address): it resolves it.
            Outbound::Proxy(proxy) if proxy.kind == ProxyKind::Socks5 => {
                let host = hijack.map_or_else(|| host.name().to_owned(), |ip| ip.to_string());
                let via = UdpVia::Socks5 {
                    proxy: proxy.addr,
                    auth: proxy.auth.clone(),
                };
                return Dest::Send(UdpTo::Proxied(host, port), via);
            }
            Outbound::Proxy(_) => {
                crate::warn_limited!("UDP to {}: UDP not supported by HTTP proxy", host.name());
                return Dest::Refused;
            }
        };
        let hijacked;
        let addrs = match (hijack, answer) {
            (Some(ip), _) => {
                hijacked = [SocketAddr::new(ip, port)];
                &hijacked[..]
            }
            (None, Some(a)) => a,
            (None, None) => return Dest::Lookup(Some(decision)),
        };
        let allowed = direct.udp_candidates(addrs).ok().and_then(|c| {
            c.into_iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .find(|a| self.cfg.guard.check(a.ip()).is_ok())
        });
        match allowed {
            Some(addr) => Dest::Send(UdpTo::Addr(addr), UdpVia::Direct(direct.udp_egress())),
            None => Dest::Refused,
        }
    }

    /// Caches where `target` goes (bounded) and returns it, `None` if refused: by the
    /// rules, or because the session already leaves another way.
    fn remember(&mut self, udp: UdpId, target: String, dest: Dest) -> Option<(UdpTo, UdpVia)> {
        let s = self.udp.sessions.get_mut(&udp)?;
        let out = match dest {
            Dest::Send(to, via) if s.via.as_ref().is_none_or(|v| v.carries(&via)) => {
                Some((to, via))
            }
            Dest::Send(..) => {
                crate::warn_limited!(
                    "UDP to {target}: routed to another outbound than the session's first \
                     destination; dropped"
                );
                None
            }
            Dest::Refused | Dest::Lookup(_) => None,
        };
        if s.resolved.len() < MAX_RESOLVED {
            s.resolved
                .insert(target, out.as_ref().map(|(to, _)| to.clone()));
        }
        out
    }

    /// Sends `payload` from the session's socket, which is opened, the first destination's
    /// way, before the first send. A refused destination drops it.
    fn udp_send(&mut self, udp: UdpId, to: Option<(UdpTo, UdpVia)>, payload: Vec<u8>) {
        let u = &mut self.udp;
        let Some(s) = u.sessions.get_mut(&udp) else {
            return;
        };
        let Some((to, via)) = to else {
            u.counters.refused += 1;
            return;
        };
        if s.via.is_none() {
            if matches!(via, UdpVia::Socks5 { .. }) {
                // The association's control connection is a socket of the budget too.
                let Some(ctrl) = self.cfg.limits.try_extra_socket(s.user.as_ref()) else {
                    u.counters.dropped += 1;
                    crate::warn_limited!(
                        "UDP via SOCKS5 dropped: no room in the outbound-socket budget for the \
                         association's connection"
                    );
                    return;
                };
                s._ctrl = Some(ctrl);
                // Opened on the datagram that arrived last (or the lookup it waited for).
                let by = s.last_active + ASSOCIATE_TIMEOUT;
                s.associate_by = Some(by);
                u.next_expiry = Some(u.next_expiry.map_or(by, |n| n.min(by)));
            }
            s.via = Some(via.clone());
            self.actions.push_back(Action::UdpOpen { udp, via });
        }
        self.actions.push_back(Action::UdpSend { udp, to, payload });
    }

    fn open_udp(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: u32,
        user: Option<Arc<User>>,
    ) -> Option<UdpId> {
        let socket = match self.cfg.limits.acquire_udp(user.as_ref()) {
            Ok(socket) => socket,
            Err(why) => {
                self.udp.counters.sessions_refused += 1;
                self.udp.counters.dropped += 1;
                match why {
                    UdpRefused::Budget => crate::warn_limited!(
                        "UDP session refused: the outbound-socket budget is spent"
                    ),
                    UdpRefused::UserUdpSessions => crate::warn_limited!(
                        "UDP session refused: the user's UDP-session cap is reached"
                    ),
                    UdpRefused::UserSockets => crate::warn_limited!(
                        "UDP session refused: the user's outbound-socket cap is reached"
                    ),
                }
                return None;
            }
        };
        self.last_id += 1;
        let udp = UdpId(self.last_id);
        let u = &mut self.udp;
        u.sessions.insert(
            udp,
            UdpSession {
                conn,
                id,
                last_active: now,
                defrag: Defragger::default(),
                unresolved: VecDeque::new(),
                resolved: HashMap::new(),
                via: None,
                associate_by: None,
                inspected: false,
                sniffed: None,
                reply_as: None,
                next_packet_id: 1,
                user,
                closing: false,
                _socket: socket,
                _ctrl: None,
            },
        );
        u.by_id.insert((conn, id), udp);
        u.counters.sessions_opened += 1;
        let at = now + self.cfg.udp_idle_timeout;
        u.next_expiry = Some(u.next_expiry.map_or(at, |n| n.min(at)));
        Some(udp)
    }

    /// The session's SOCKS5 association is up: its deadline no longer applies.
    pub fn udp_ready(&mut self, udp: UdpId) {
        if let Some(s) = self.udp.sessions.get_mut(&udp) {
            s.associate_by = None;
        }
    }

    /// The session's way out broke (its SOCKS5 association failed or its proxy closed the
    /// control connection): the session closes, as the reference ends it.
    pub fn udp_failed(&mut self, udp: UdpId) {
        if self.udp.sessions.contains_key(&udp) {
            self.udp.counters.dropped += 1;
            self.close_udp(udp);
        }
    }

    /// The adapter could not open the session's socket: the session goes, its datagrams
    /// with it.
    pub fn udp_open_failed(&mut self, udp: UdpId) {
        if let Some(s) = self.udp.sessions.remove(&udp) {
            self.udp.by_id.remove(&(s.conn, s.id));
            self.udp.counters.dropped += 1;
        }
    }

    /// A DNS answer for one destination of a session: its datagrams go to the first allowed
    /// address (or are refused); those to other destinations keep waiting for their own
    /// answers. An answer for a session that is gone is dropped.
    pub fn udp_resolved(&mut self, lookup: LookupId, result: std::io::Result<Vec<SocketAddr>>) {
        let u = &mut self.udp;
        let Some(Lookup {
            udp,
            target,
            decision,
        }) = u.lookups.remove(&lookup)
        else {
            return;
        };
        if u.sessions.get(&udp).is_none_or(|s| s.closing) {
            return;
        }
        let Ok((host, port)) = split_host_port(&target) else {
            return;
        };
        let name = match host {
            Host::Ip(ip) => ip.to_string(),
            Host::Domain(name) => name,
        };
        let addrs = result.unwrap_or_default();
        let v4 = addrs.iter().find_map(|a| match a.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        });
        let v6 = addrs.iter().find_map(|a| match a.ip() {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        });
        let host = acl::Host::new(&name).with_addresses(v4, v6);
        let dest = match self.udp_dest(&host, port, decision, Some(&addrs)) {
            Dest::Lookup(_) => Dest::Refused,
            dest => dest,
        };
        let to = self.remember(udp, target.clone(), dest);
        let Some(s) = self.udp.sessions.get_mut(&udp) else {
            return;
        };
        let mut mine = Vec::new();
        for (dest, payload) in std::mem::take(&mut s.unresolved) {
            if dest == target {
                mine.push(payload);
            } else {
                s.unresolved.push_back((dest, payload));
            }
        }
        for payload in mine {
            self.udp_send(udp, to.clone(), payload);
        }
    }

    /// A datagram reached the session's destination.
    pub fn udp_sent(&mut self, now: Instant, udp: UdpId) {
        if let Some(s) = self.udp.sessions.get_mut(&udp) {
            s.last_active = now;
        }
    }

    /// A reply from `from` on the session's socket: wrapped in UDPMessages, fragmented to
    /// `max_datagram` (the connection's DATAGRAM size now; `None`: DATAGRAMs are off).
    pub fn udp_received(
        &mut self,
        now: Instant,
        udp: UdpId,
        from: SocketAddr,
        payload: &[u8],
        max_datagram: Option<usize>,
    ) {
        let u = &mut self.udp;
        let Some(s) = u.sessions.get_mut(&udp).filter(|s| !s.closing) else {
            return;
        };
        if payload.is_empty() || payload.len() > MAX_UDP_PAYLOAD {
            return;
        }
        s.last_active = now;
        let Some(max) = max_datagram else {
            return;
        };
        s.next_packet_id = s.next_packet_id.wrapping_add(1).max(1);
        let max = max.min(MAX_UDP_MESSAGE);
        let label = s.reply_as.clone().unwrap_or_else(|| from.to_string());
        let Ok(frags) = fragment(s.id, s.next_packet_id, &label, payload, max) else {
            u.counters.dropped += 1;
            return;
        };
        if let Some(user) = &s.user {
            user.add_traffic(0, payload.len() as u64);
        }
        u.counters.datagrams_out += frags.len() as u64;
        for bytes in frags {
            self.actions.push_back(Action::Datagram {
                conn: s.conn,
                bytes,
            });
        }
    }

    /// The adapter closed the session's socket: its place in the socket budget comes back.
    pub fn udp_closed(&mut self, udp: UdpId) {
        if let Some(s) = self.udp.sessions.remove(&udp) {
            if self.udp.by_id.get(&(s.conn, s.id)) == Some(&udp) {
                self.udp.by_id.remove(&(s.conn, s.id));
            }
        }
    }

    fn close_udp(&mut self, udp: UdpId) {
        let u = &mut self.udp;
        if let Some(s) = u.sessions.get_mut(&udp).filter(|s| !s.closing) {
            s.closing = true;
            s.unresolved.clear();
            u.by_id.remove(&(s.conn, s.id));
            if s.via.is_some() {
                self.actions.push_back(Action::UdpClose(udp));
            } else {
                // No socket was ever opened: nothing to wait for.
                self.udp_closed(udp);
            }
        }
    }

    /// The connection went away: its sessions close.
    pub(super) fn close_conn_udp(&mut self, conn: ConnId) {
        let mut gone: Vec<UdpId> = self
            .udp
            .sessions
            .iter()
            .filter(|(_, s)| s.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        gone.sort();
        for udp in gone {
            self.close_udp(udp);
        }
    }

    /// Closes sessions idle for `udpIdleTimeout`, and those whose SOCKS5 association is not
    /// up [`ASSOCIATE_TIMEOUT`] after it was asked for. Scans the table only once the
    /// earliest possible expiry has come.
    pub(super) fn expire_udp(&mut self, now: Instant) {
        if self.udp.next_expiry.is_none_or(|t| t > now) {
            return;
        }
        let timeout = self.cfg.udp_idle_timeout;
        let mut idle = Vec::new();
        let mut next = None::<Instant>;
        let mut stuck = Vec::new();
        for (id, s) in self.udp.sessions.iter().filter(|(_, s)| !s.closing) {
            let at = s.last_active + timeout;
            if s.associate_by.is_some_and(|by| by <= now) {
                stuck.push(*id);
            } else if at <= now {
                idle.push(*id);
            } else {
                let at = s.associate_by.map_or(at, |by| by.min(at));
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        self.udp.next_expiry = next;
        idle.sort();
        for udp in idle {
            self.close_udp(udp);
        }
        stuck.sort();
        for udp in stuck {
            crate::warn_limited!(
                "UDP session: the SOCKS5 association was not set up within {ASSOCIATE_TIMEOUT:?}"
            );
            self.udp_failed(udp);
        }
    }

    pub(super) fn udp_deadline(&self) -> Option<Instant> {
        self.udp.next_expiry
    }

    /// The connection a UDP session belongs to.
    pub fn udp_conn(&self, udp: UdpId) -> Option<ConnId> {
        self.udp.sessions.get(&udp).map(|s| s.conn)
    }

    /// Open UDP sessions.
    pub fn udp_count(&self) -> usize {
        self.udp.by_id.len()
    }

    pub fn udp_counters(&self) -> UdpCounters {
        self.udp.counters
    }
}
