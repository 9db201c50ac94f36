//! The adapter's side of UDP sessions: one unconnected UDP socket per session, with one
//! receive and one send in flight, and a bounded queue of datagrams waiting to be sent.
//! What a session is, where its datagrams go and when it ends is the session's decision
//! (`session::udp`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use super::session::UdpId;
use crate::engine::{Completion, Egress, Sock, SockOp, Token};
use crate::worker::Io;

/// Datagrams waiting for a send slot, per session.
const MAX_QUEUED: usize = 64;
/// Receive buffer: larger than the largest relayed payload so oversized replies are seen
/// (and dropped) rather than silently truncated.
const RECV_BUF: usize = 8192;

struct Session {
    sock: Sock,
    recv_inflight: bool,
    send_inflight: bool,
    /// Datagrams to send: destination, payload.
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    closing: bool,
}

/// What a socket operation brought back, for the session.
pub enum Done {
    Sent,
    Received { from: SocketAddr, payload: Vec<u8> },
    Closed,
}

#[derive(Default)]
pub struct UdpSockets {
    socks: HashMap<UdpId, Session>,
    /// Datagrams dropped because the session's send queue was full.
    pub dropped: u64,
}

impl UdpSockets {
    /// Opens the session's socket: bound to the egress's address, else IPv6 dual-stack,
    /// else IPv4.
    pub fn open(&mut self, io: &mut Io<'_>, udp: UdpId, egress: &Egress) -> Result<(), String> {
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
        self.socks.insert(
            udp,
            Session {
                sock,
                recv_inflight: false,
                send_inflight: false,
                queue: VecDeque::new(),
                closing: false,
            },
        );
        self.pump(io, udp);
        Ok(())
    }

    pub fn send(&mut self, io: &mut Io<'_>, udp: UdpId, addr: SocketAddr, payload: Vec<u8>) {
        let Some(s) = self.socks.get_mut(&udp).filter(|s| !s.closing) else {
            return;
        };
        if s.queue.len() < MAX_QUEUED {
            s.queue.push_back((addr, payload));
        } else {
            self.dropped += 1;
        }
        self.pump(io, udp);
    }

    /// Closes the session's socket; `Done::Closed` comes with its completion.
    pub fn close(&mut self, io: &mut Io<'_>, udp: UdpId, token: Token) {
        if let Some(s) = self.socks.get_mut(&udp).filter(|s| !s.closing) {
            s.closing = true;
            s.queue.clear();
            io.driver.sock_close(s.sock, token);
        }
    }

    /// Keeps one receive and one send in flight per session.
    pub fn pump(&mut self, io: &mut Io<'_>, udp: UdpId) {
        let Some(s) = self.socks.get_mut(&udp).filter(|s| !s.closing) else {
            return;
        };
        let token = super::Token::Udp(udp).into();
        if !s.send_inflight {
            if let Some((dest, payload)) = s.queue.pop_front() {
                s.send_inflight = true;
                io.driver.udp_send_to(s.sock, dest, payload, token);
            }
        }
        if !s.recv_inflight {
            s.recv_inflight = true;
            io.driver
                .udp_recv_from(s.sock, Vec::with_capacity(RECV_BUF), token);
        }
    }

    /// A socket operation of `udp` completed: what it means for the session, if anything.
    pub fn on_completion(&mut self, udp: UdpId, c: Completion) -> Option<Done> {
        let s = self.socks.get_mut(&udp)?;
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
                match (c.result, c.peer) {
                    (Ok(n), Some(from)) if n > 0 && !s.closing => {
                        let mut payload = c.buf;
                        payload.truncate(n);
                        Some(Done::Received { from, payload })
                    }
                    _ => None,
                }
            }
            SockOp::Close if s.closing => {
                self.socks.remove(&udp);
                Some(Done::Closed)
            }
            _ => None,
        }
    }
}
