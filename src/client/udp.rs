//! The worker's adapter for the UDP sessions (`session/udp.rs`): the local UDP sockets of
//! SOCKS5 associations and UDP forwarders, their receives and sends on the driver, and the
//! UDPMessages on the connections.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use quinn_proto::ConnectionHandle;
use slab::Slab;

use super::session::udp::{UdpAction, UdpConns, UdpForward, UdpSessions};
use super::session::ConnId;
use super::token::{self, token, TokenKind};
use crate::engine::{self, Completion, SockOp};
use crate::proto::udp::{fragment, MAX_UDP_PAYLOAD};
use crate::worker::Io;

/// Receive buffer: the largest payload plus a SOCKS5 header.
const RECV_BUF: usize = MAX_UDP_PAYLOAD + 512;

struct Sock {
    socket: engine::Sock,
    gen: u32,
    closing: bool,
}

/// The sessions and the sockets they use.
pub struct Udp {
    socks: Slab<Sock>,
    gen: u32,
    pub sessions: UdpSessions,
}

impl Udp {
    pub fn new(sessions: UdpSessions) -> Self {
        Udp {
            socks: Slab::new(),
            gen: 0,
            sessions,
        }
    }

    fn insert(&mut self, io: &mut Io<'_>, socket: engine::Sock) -> usize {
        self.gen = self.gen % token::GEN_MASK + 1;
        let key = self.socks.insert(Sock {
            socket,
            gen: self.gen,
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

    pub fn add_forwarder(&mut self, io: &mut Io<'_>, socket: engine::Sock, fwd: UdpForward) {
        let key = self.insert(io, socket);
        self.sessions.add_forwarder(key, fwd);
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
        let key = self.insert(io, socket);
        self.sessions.add_association(key, client_ip, io.now);
        Ok((key, addr))
    }

    /// The association's TCP connection ended: close its socket.
    pub fn control_closed(&mut self, io: &mut Io<'_>, key: usize) {
        if let Some(s) = self.socks.get_mut(key) {
            if !s.closing {
                s.closing = true;
                self.sessions.closing(key);
                io.driver
                    .sock_close(s.socket, token(TokenKind::Udp, key, s.gen));
            }
        }
    }

    pub fn on_completion(
        &mut self,
        io: &mut Io<'_>,
        c: Completion,
        conns: &dyn UdpConns,
        ch: impl Fn(ConnId) -> Option<ConnectionHandle>,
    ) {
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
                    self.sessions
                        .from_app(key, peer, &c.buf[..n], io.now, conns);
                }
                self.post_recv(io, key);
            }
            SockOp::SendTo => self.sessions.sent(key),
            SockOp::Close => {
                self.socks.remove(key);
                self.sessions.closed(key);
            }
            _ => {}
        }
        self.perform(io, ch);
    }

    /// Datagrams from the server on `ch` (the session's `conn`).
    pub fn on_datagrams(
        &mut self,
        io: &mut Io<'_>,
        conn: ConnId,
        ch: ConnectionHandle,
        chs: impl Fn(ConnId) -> Option<ConnectionHandle>,
    ) {
        let mut datagrams = Vec::new();
        if let Some(qc) = io.conn(ch) {
            while let Some(d) = qc.datagrams().recv() {
                datagrams.push(d);
            }
        }
        for d in datagrams {
            self.sessions.from_server(conn, d, io.now);
        }
        self.perform(io, chs);
    }

    /// Sends the packets that waited for a connection, if one is up now.
    pub fn flush_pending(
        &mut self,
        io: &mut Io<'_>,
        conns: &dyn UdpConns,
        ch: impl Fn(ConnId) -> Option<ConnectionHandle>,
    ) {
        self.sessions.flush_pending(io.now, conns);
        self.perform(io, ch);
    }

    /// Performs what the sessions decided.
    fn perform(&mut self, io: &mut Io<'_>, ch: impl Fn(ConnId) -> Option<ConnectionHandle>) {
        while let Some(action) = self.sessions.poll_action() {
            match action {
                UdpAction::ToServer {
                    conn,
                    session,
                    packet_id,
                    addr,
                    payload,
                } => {
                    let Some(qc) = ch(conn).and_then(|ch| io.conn(ch)) else {
                        self.sessions.dropped();
                        continue;
                    };
                    let Some(max) = qc.datagrams().max_size() else {
                        self.sessions.dropped();
                        continue;
                    };
                    let Ok(frags) = fragment(session, packet_id, &addr, &payload, max) else {
                        self.sessions.dropped();
                        continue;
                    };
                    for f in frags {
                        if qc.datagrams().send(Bytes::from(f), true).is_err() {
                            self.sessions.dropped();
                            break;
                        }
                    }
                }
                UdpAction::ToApp { sock, to, buf } => {
                    let Some(s) = self.socks.get(sock) else {
                        continue;
                    };
                    let tok = token(TokenKind::Udp, sock, s.gen);
                    io.driver.udp_send_to(s.socket, to, buf, tok);
                }
            }
        }
    }
}
