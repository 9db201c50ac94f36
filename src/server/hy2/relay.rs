//! The adapter's side of one relayed TCP connection: a Hysteria2 proxy stream (0x401)
//! joined to a TCP socket to its target by a [`Pipe`] (EOF from the target tears both
//! directions down, as the reference server does), and the user's traffic accounting.
//! Whether and when it connects, fails or is aborted is the session's decision
//! (`session::Phase`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::{ConnectionHandle, StreamId};

use crate::engine::{Completion, Egress, Sock, SockOp, Token};
use crate::limits::User;
use crate::proto::outbound::{Handshake, Step};
use crate::worker::pipe::{Ends, Pipe};
use crate::worker::Io;

pub use crate::worker::pipe::After;

pub struct Relay {
    pub ch: ConnectionHandle,
    pub id: StreamId,
    /// The user whose traffic counters this relay's bytes go to.
    user: Option<Arc<User>>,
    /// (tx, rx) already added to the user's counters.
    reported: (u64, u64),
    /// When bytes last moved.
    pub last_active: Instant,
    /// Payload that arrived with the request (sing-box coalesces it), not seen by the pipe's
    /// counters.
    first_len: u64,
    /// The target is connected: bytes may move.
    started: bool,
    /// A proxy outbound's handshake, until the proxy agreed.
    handshake: Option<Handshake>,
    /// Addresses still to try if the connect fails, each with its set-up.
    fallback: VecDeque<(SocketAddr, Egress)>,
    /// The socket of a second connect, to the target's other address family, racing the
    /// pipe's until one of them succeeds (or fails: the other goes on alone).
    racer: Option<Sock>,
    pipe: Pipe,
}

/// Where a relay's connect stands once its socket is connected.
#[derive(Debug, PartialEq, Eq)]
pub enum Proxying {
    /// The target is reached (directly, or the proxy agreed).
    Ready,
    /// The proxy has not answered yet.
    Pending,
    /// The proxy refused, or the connection to it failed: why.
    Failed(String),
}

impl Relay {
    /// `ok` is the TCPResponse sent once the target is connected; `first` holds payload
    /// bytes that arrived with the request; `handshake`, what a proxy outbound is told first;
    /// `fallback`, the addresses to try in turn if the connect fails.
    pub fn new(
        ch: ConnectionHandle,
        id: StreamId,
        first: Vec<u8>,
        ok: Vec<u8>,
        user: Option<Arc<User>>,
        handshake: Option<Handshake>,
        fallback: Vec<(SocketAddr, Egress)>,
    ) -> Self {
        Relay {
            ch,
            id,
            user,
            reported: (0, 0),
            last_active: Instant::now(),
            first_len: first.len() as u64,
            started: false,
            handshake,
            fallback: fallback.into(),
            racer: None,
            pipe: Pipe::new(ch, id, Ends::TcpEofCloses, first, ok),
        }
    }

    /// Payload bytes relayed client → target and target → client.
    pub fn traffic(&self) -> (u64, u64) {
        (self.pipe.from_quic + self.first_len, self.pipe.from_tcp)
    }

    /// Adds the bytes moved since the last call to the user's traffic counters.
    pub fn account(&mut self, now: Instant) {
        let (tx, rx) = self.traffic();
        let (dtx, drx) = (
            tx.saturating_sub(self.reported.0),
            rx.saturating_sub(self.reported.1),
        );
        if dtx == 0 && drx == 0 {
            return;
        }
        self.reported = (tx, rx);
        self.last_active = now;
        if let Some(u) = &self.user {
            u.add_traffic(dtx, drx);
        }
    }

    /// Starts the TCP connect; its completion comes with `token`.
    pub fn connect(
        &mut self,
        io: &mut Io<'_>,
        addr: SocketAddr,
        egress: &Egress,
        token: Token,
    ) -> Result<(), String> {
        let sock = io
            .driver
            .tcp_connect(addr, egress, token)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        // The pipe owns the socket from now on: a failure, an abort or the connect timeout
        // closes it, which also cancels a connect still pending.
        self.pipe.attach(sock);
        Ok(())
    }

    /// Starts a second connect beside the pipe's, to `addr` (mode `auto`: the other address
    /// family), on a socket of its own; its completion also comes with `token`. A connect
    /// that cannot even start leaves the first alone.
    pub fn race(&mut self, io: &mut Io<'_>, addr: SocketAddr, egress: &Egress, token: Token) {
        match io.driver.tcp_connect(addr, egress, token) {
            Ok(sock) => self.racer = Some(sock),
            Err(e) => tracing::debug!("connect {addr}: {e}"),
        }
    }

    /// Whether `sock` is a socket the relay is connecting on now: not one it closed, whether
    /// for the next address, for the winner of a race or because the relay is over.
    pub fn dialing(&self, sock: Sock) -> bool {
        !self.started
            && !self.pipe.is_done()
            && (self.pipe.sock() == Some(sock) || self.racer == Some(sock))
    }

    /// The connect on `sock` succeeded: it is the pipe's, and the other of a race is closed.
    pub fn won(&mut self, io: &mut Io<'_>, sock: Sock) {
        if let Some(racer) = self.racer.take() {
            self.settle(io, racer, sock);
        }
    }

    /// The connect on `sock` failed. In a race the other goes on alone (`Some(Ok)`);
    /// otherwise the next address is tried (see `connect_next`).
    pub fn dial_failed(
        &mut self,
        io: &mut Io<'_>,
        sock: Sock,
        token: Token,
    ) -> Option<Result<(), String>> {
        let Some(racer) = self.racer.take() else {
            return self.connect_next(io, token);
        };
        let other = if racer == sock {
            self.pipe.sock()
        } else {
            Some(racer)
        };
        match other {
            Some(keep) => self.settle(io, racer, keep),
            None => io.driver.sock_close(sock, super::Token::Orphan.into()),
        }
        Some(Ok(()))
    }

    /// Ends a race: `keep` (the pipe's socket or `racer`) is the pipe's from now on, and the
    /// other is closed.
    fn settle(&mut self, io: &mut Io<'_>, racer: Sock, keep: Sock) {
        let loser = if keep == racer {
            let first = self.pipe.sock();
            self.pipe.detach();
            self.pipe.attach(racer);
            first
        } else {
            Some(racer)
        };
        if let Some(loser) = loser {
            io.driver.sock_close(loser, super::Token::Orphan.into());
        }
    }

    /// Closes the racing connect's socket, if any (the relay is over).
    fn drop_racer(&mut self, io: &mut Io<'_>) {
        if let Some(racer) = self.racer.take() {
            io.driver.sock_close(racer, super::Token::Orphan.into());
        }
    }

    /// The connect failed: the next fallback address is tried on a fresh socket (the failed
    /// one closed, nobody waits for it). `None` when none is left; an address whose connect
    /// cannot even start is skipped.
    pub fn connect_next(&mut self, io: &mut Io<'_>, token: Token) -> Option<Result<(), String>> {
        let mut last = None;
        while let Some((addr, egress)) = self.fallback.pop_front() {
            if let Some(failed) = self.pipe.sock() {
                io.driver.sock_close(failed, super::Token::Orphan.into());
                self.pipe.detach();
            }
            match self.connect(io, addr, &egress, token) {
                Ok(()) => return Some(Ok(())),
                Err(why) => last = Some(Err(why)),
            }
        }
        last
    }

    /// The socket connected: a proxy outbound's handshake begins, anything else is ready.
    pub fn connected(&mut self, io: &mut Io<'_>, token: Token) -> Proxying {
        match self.handshake.as_mut() {
            None => Proxying::Ready,
            Some(h) => {
                let step = h.start();
                self.step(io, step, token)
            }
        }
    }

    /// Whether `c` belongs to the proxy handshake (the pipe has not started).
    pub fn handshaking(&self, c: &Completion) -> bool {
        self.handshake.is_some()
            && !self.pipe.is_done()
            && matches!(c.op, SockOp::Send | SockOp::Recv)
    }

    /// A send or receive of the proxy handshake completed.
    pub fn on_handshake(&mut self, io: &mut Io<'_>, c: Completion, token: Token) -> Proxying {
        let Some(h) = self.handshake.as_mut() else {
            return Proxying::Ready;
        };
        let step = match (c.op, c.result) {
            (_, Err(e)) => Step::Failed(format!("proxy: {e}")),
            (SockOp::Send, Ok(n)) if n < c.buf.len() => Step::Send(c.buf[n..].to_vec()),
            (SockOp::Send, Ok(_)) => Step::Recv,
            (_, Ok(0)) => Step::Failed("proxy closed the connection".into()),
            (_, Ok(_)) => h.received(&c.buf),
        };
        self.step(io, step, token)
    }

    fn step(&mut self, io: &mut Io<'_>, step: Step, token: Token) -> Proxying {
        let Some(sock) = self.pipe.sock() else {
            return Proxying::Failed("proxy: no socket".into());
        };
        match step {
            Step::Send(bytes) => {
                io.driver.tcp_send(sock, bytes, token);
                Proxying::Pending
            }
            Step::Recv => {
                io.driver.tcp_recv(sock, Vec::with_capacity(4096), token);
                Proxying::Pending
            }
            Step::Done { leftover } => {
                self.handshake = None;
                self.pipe.queue_to_quic(&leftover);
                Proxying::Ready
            }
            Step::Failed(why) => {
                self.handshake = None;
                Proxying::Failed(why)
            }
        }
    }

    /// Answers the client with an error and closes the stream and the socket.
    pub fn fail(&mut self, io: &mut Io<'_>, response: &[u8], token: Token) -> After {
        self.drop_racer(io);
        self.pipe.fail(io, response, token);
        After::Remove
    }

    /// Aborts both directions (reset + STOP_SENDING) and closes the socket.
    pub fn abort(&mut self, io: &mut Io<'_>, token: Token) -> After {
        self.drop_racer(io);
        self.pipe.abort(io, token)
    }

    /// A socket operation of the pipe completed.
    pub fn on_completion(&mut self, io: &mut Io<'_>, c: Completion, token: Token) -> After {
        self.pipe.on_completion(io, c, token)
    }

    /// The target is connected: bytes move from now on.
    pub fn start(&mut self) {
        self.started = true;
    }

    /// Moves bytes both ways as far as buffers and credit allow (nothing before `start`).
    pub fn pump(&mut self, io: &mut Io<'_>, token: Token) -> After {
        if !self.started {
            return After::Continue;
        }
        self.pipe.pump(io, token)
    }
}
