//! The adapter's side of UDP sessions: one unconnected UDP socket per session, with one
//! receive and one send in flight, and a bounded queue of datagrams waiting to be sent.
//! What a session is, where its datagrams go and when it ends is the session's decision
//! (`session::udp`).
//!
//! A session routed to a SOCKS5 outbound also holds the association's control connection
//! ([`Assoc`]): it connects to the proxy, asks for UDP ASSOCIATE, and then only reads, to
//! see the proxy end it. Its datagrams wait in the queue until the proxy has named its
//! relay; each then goes there behind the SOCKS5 UDP header, and replies come back from
//! it with theirs.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use super::session::{UdpId, UdpTo, UdpVia};
use crate::engine::{Completion, Egress, Sock, SockOp, Token};
use crate::proto::outbound::{socks5_udp_unwrap, socks5_udp_wrap, Handshake, Step};
use crate::worker::Io;

/// Datagrams waiting for a send slot, per session.
const MAX_QUEUED: usize = 64;
/// Receive buffer: larger than the largest relayed payload (plus a SOCKS5 header) so
/// oversized replies are seen (and dropped) rather than silently truncated.
const RECV_BUF: usize = 8192;
/// Read buffer of an association's control connection.
const CTRL_BUF: usize = 512;

struct Session {
    sock: Sock,
    recv_inflight: bool,
    send_inflight: bool,
    /// Datagrams to send.
    queue: VecDeque<(UdpTo, Vec<u8>)>,
    /// The SOCKS5 association the datagrams go through, if the session was routed to one.
    assoc: Option<Assoc>,
    closing: bool,
}

/// A SOCKS5 UDP association: its control connection and, once the handshake is done, the
/// relay the datagrams go to.
struct Assoc {
    ctrl: Sock,
    handshake: Handshake,
    relay: Option<SocketAddr>,
}

/// What a socket operation brought back, for the session.
pub enum Done {
    Sent,
    Received {
        from: SocketAddr,
        payload: Vec<u8>,
    },
    Closed,
    /// The session's SOCKS5 association is up.
    Ready,
    /// The session's way out broke: the reason (a SOCKS5 association refused, or ended).
    Failed(String),
}

#[derive(Default)]
pub struct UdpSockets {
    socks: HashMap<UdpId, Session>,
    /// Datagrams dropped because the session's send queue was full, or they could not go
    /// its way (a name too long for SOCKS5, a malformed reply from the relay).
    pub dropped: u64,
}

impl UdpSockets {
    /// Opens the session's socket: bound to the egress's address, else IPv6 dual-stack,
    /// else IPv4; for a SOCKS5 association, also the connect to the proxy.
    pub fn open(&mut self, io: &mut Io<'_>, udp: UdpId, via: &UdpVia) -> Result<(), String> {
        // A SOCKS5 association's socket talks to the proxy: no egress of its own.
        let default = Egress::default();
        let egress = match via {
            UdpVia::Direct(egress) => egress,
            UdpVia::Socks5 { .. } => &default,
        };
        let device = egress.device.as_deref();
        let any6: SocketAddr = "[::]:0".parse().expect("literal");
        let any4: SocketAddr = "0.0.0.0:0".parse().expect("literal");
        let opened = match egress.bind {
            Some(ip) => io.driver.udp_open(SocketAddr::new(ip, 0), device),
            None => io
                .driver
                .udp_open(any6, device)
                .or_else(|_| io.driver.udp_open(any4, device)),
        };
        let sock = opened.map_err(|e| format!("UDP session socket: {e}"))?;
        let assoc = match via {
            UdpVia::Direct(_) => None,
            UdpVia::Socks5 { proxy, auth } => {
                let token = super::Token::Udp(udp).into();
                match io.driver.tcp_connect(*proxy, &Egress::default(), token) {
                    Ok(ctrl) => Some(Assoc {
                        ctrl,
                        handshake: Handshake::socks5_udp(auth.clone()),
                        relay: None,
                    }),
                    Err(e) => {
                        io.driver.sock_close(sock, super::Token::Orphan.into());
                        return Err(format!("SOCKS5 proxy {proxy}: {e}"));
                    }
                }
            }
        };
        self.socks.insert(
            udp,
            Session {
                sock,
                recv_inflight: false,
                send_inflight: false,
                queue: VecDeque::new(),
                assoc,
                closing: false,
            },
        );
        self.pump(io, udp);
        Ok(())
    }

    pub fn send(&mut self, io: &mut Io<'_>, udp: UdpId, to: UdpTo, payload: Vec<u8>) {
        let Some(s) = self.socks.get_mut(&udp).filter(|s| !s.closing) else {
            return;
        };
        if s.queue.len() < MAX_QUEUED {
            s.queue.push_back((to, payload));
        } else {
            self.dropped += 1;
        }
        self.pump(io, udp);
    }

    /// Closes the session's socket (and its association's connection); `Done::Closed`
    /// comes with the socket's completion.
    pub fn close(&mut self, io: &mut Io<'_>, udp: UdpId, token: Token) {
        if let Some(s) = self.socks.get_mut(&udp).filter(|s| !s.closing) {
            s.closing = true;
            s.queue.clear();
            if let Some(a) = &s.assoc {
                io.driver.sock_close(a.ctrl, token);
            }
            io.driver.sock_close(s.sock, token);
        }
    }

    /// Keeps one receive and one send in flight per session; an association's datagrams
    /// wait until its relay is known.
    pub fn pump(&mut self, io: &mut Io<'_>, udp: UdpId) {
        let Some(s) = self.socks.get_mut(&udp).filter(|s| !s.closing) else {
            return;
        };
        let token = super::Token::Udp(udp).into();
        let relay = match &s.assoc {
            None => None,
            Some(Assoc { relay: None, .. }) => return,
            Some(Assoc { relay, .. }) => *relay,
        };
        while !s.send_inflight {
            let Some((to, payload)) = s.queue.pop_front() else {
                break;
            };
            let datagram = match (relay, to) {
                (None, UdpTo::Addr(dest)) => Some((dest, payload)),
                (Some(relay), UdpTo::Addr(dest)) => {
                    socks5_udp_wrap(&dest.ip().to_string(), dest.port(), &payload)
                        .map(|d| (relay, d))
                }
                (Some(relay), UdpTo::Proxied(host, port)) => {
                    socks5_udp_wrap(&host, port, &payload).map(|d| (relay, d))
                }
                // The session never asks for this; nothing to send it through.
                (None, UdpTo::Proxied(..)) => None,
            };
            match datagram {
                Some((dest, buf)) => {
                    s.send_inflight = true;
                    io.driver.udp_send_to(s.sock, dest, buf, token);
                }
                None => self.dropped += 1,
            }
        }
        if !s.recv_inflight {
            s.recv_inflight = true;
            io.driver
                .udp_recv_from(s.sock, Vec::with_capacity(RECV_BUF), token);
        }
    }

    /// A socket operation of `udp` completed: what it means for the session, if anything.
    pub fn on_completion(&mut self, io: &mut Io<'_>, udp: UdpId, c: Completion) -> Option<Done> {
        let s = self.socks.get_mut(&udp)?;
        if s.assoc.as_ref().is_some_and(|a| a.ctrl == c.sock) {
            if s.closing {
                return None;
            }
            return self.on_ctrl(io, udp, c);
        }
        if c.sock != s.sock {
            return None;
        }
        match c.op {
            SockOp::SendTo => {
                s.send_inflight = false;
                c.result.is_ok().then_some(Done::Sent)
            }
            SockOp::RecvFrom => {
                s.recv_inflight = false;
                let (Ok(n), Some(from)) = (c.result, c.peer) else {
                    return None;
                };
                if n == 0 || s.closing {
                    return None;
                }
                let mut payload = c.buf;
                payload.truncate(n);
                let Some(assoc) = &s.assoc else {
                    return Some(Done::Received { from, payload });
                };
                // Only the relay speaks for the association, with the source in front.
                match socks5_udp_unwrap(&payload) {
                    Some((source, inner)) if Some(from) == assoc.relay => Some(Done::Received {
                        from: source,
                        payload: inner.to_vec(),
                    }),
                    _ => {
                        self.dropped += 1;
                        None
                    }
                }
            }
            SockOp::Close if s.closing => {
                self.socks.remove(&udp);
                Some(Done::Closed)
            }
            _ => None,
        }
    }

    /// The association's control connection: connected, then the handshake's sends and
    /// reads, then one read at a time until the proxy closes it.
    fn on_ctrl(&mut self, io: &mut Io<'_>, udp: UdpId, c: Completion) -> Option<Done> {
        let s = self.socks.get_mut(&udp)?;
        let a = s.assoc.as_mut()?;
        let token = super::Token::Udp(udp).into();
        let step = match (c.op, c.result) {
            (SockOp::Connect, Ok(_)) => a.handshake.start(),
            (SockOp::Send, Ok(n)) if n < c.buf.len() => Step::Send(c.buf[n..].to_vec()),
            (SockOp::Send, Ok(_)) => Step::Recv,
            (SockOp::Recv, Ok(n)) if n > 0 && a.relay.is_none() => {
                a.handshake.received(&c.buf[..n])
            }
            // The association is up: anything but more bytes is its end.
            (SockOp::Recv, Ok(n)) if n > 0 => Step::Recv,
            (SockOp::Recv, Ok(_)) => Step::Failed("the proxy closed the association".into()),
            (SockOp::Close, _) => return None,
            (_, Err(e)) => Step::Failed(e.to_string()),
            _ => return None,
        };
        match step {
            Step::Send(bytes) => io.driver.tcp_send(a.ctrl, bytes, token),
            Step::Recv => io
                .driver
                .tcp_recv(a.ctrl, Vec::with_capacity(CTRL_BUF), token),
            Step::Done { .. } => {
                let Some(relay) = a.handshake.bound() else {
                    return Some(Done::Failed(
                        "SOCKS5 UDP ASSOCIATE: the proxy named no relay address".into(),
                    ));
                };
                a.relay = Some(relay);
                io.driver
                    .tcp_recv(a.ctrl, Vec::with_capacity(CTRL_BUF), token);
                self.pump(io, udp);
                return Some(Done::Ready);
            }
            Step::Failed(why) => return Some(Done::Failed(why)),
        }
        None
    }
}
