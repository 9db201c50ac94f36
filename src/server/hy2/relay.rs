//! One proxied TCP connection: a Hysteria2 proxy stream (0x401) joined to a TCP socket to
//! its target. Resolving and connecting happen here; once connected, a [`Pipe`] moves the
//! bytes (EOF from the target tears both directions down, as the reference server does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use quinn_proto::{ConnectionHandle, StreamId};

use crate::engine::{Completion, SockOp};
use crate::worker::pipe::{Ends, Pipe};
use crate::worker::Io;

pub use crate::worker::pipe::{After, STREAM_ABORT};

#[derive(Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the resolver.
    Resolving,
    /// TCP connect in flight.
    Connecting,
    /// Bytes flow both ways.
    Established,
    /// Both sides closed; the entry is about to be removed.
    Done,
}

pub struct Relay {
    pub ch: ConnectionHandle,
    pub id: StreamId,
    pub phase: Phase,
    /// The client's target, as sent (`host:port`).
    pub target: String,
    /// The stream permit this relay holds (released when the relay is dropped).
    pub permit: Option<crate::limits::StreamPermit>,
    /// The user whose traffic counters this relay's bytes go to.
    pub user: Option<Arc<crate::limits::User>>,
    /// (tx, rx) already added to the user's counters.
    reported: (u64, u64),
    /// When the request arrived (for `/dump/streams`).
    pub created: SystemTime,
    /// When bytes last moved.
    pub last_active: Instant,
    /// Payload that arrived with the request (sing-box coalesces it), not seen by the pipe's
    /// counters.
    first_len: u64,
    pipe: Pipe,
}

impl Relay {
    /// `ok` is the TCPResponse sent once the target is connected; `first` holds payload
    /// bytes that arrived with the request.
    pub fn new(
        ch: ConnectionHandle,
        id: StreamId,
        target: String,
        first: Vec<u8>,
        ok: Vec<u8>,
    ) -> Self {
        Relay {
            ch,
            id,
            phase: Phase::Resolving,
            target,
            permit: None,
            user: None,
            reported: (0, 0),
            created: SystemTime::now(),
            last_active: Instant::now(),
            first_len: first.len() as u64,
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

    /// The reference's name for the phase (`/dump/streams`).
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Resolving => "init",
            Phase::Connecting => "connect",
            Phase::Established => "estab",
            Phase::Done => "closed",
        }
    }

    /// Starts the TCP connect. Only a relay still waiting for its target's addresses can
    /// connect: one that was aborted, failed or timed out meanwhile stays where it is.
    pub fn connect(&mut self, io: &mut Io<'_>, addr: SocketAddr, token: u64) -> Result<(), String> {
        if self.phase != Phase::Resolving {
            return Err(format!(
                "connect {addr}: the relay is {}, not resolving",
                self.state_name()
            ));
        }
        self.phase = Phase::Connecting;
        let fd = io
            .driver
            .tcp_connect(addr, token)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        // The pipe owns the socket from now on: a failure, an abort or the connect timeout
        // closes it, which also cancels a connect still pending.
        self.pipe.attach(fd);
        Ok(())
    }

    /// Answers the client with an error and closes the stream. The relay is done.
    pub fn fail(&mut self, io: &mut Io<'_>, response: &[u8]) -> After {
        self.phase = Phase::Done;
        // Nobody waits for this close (token 0).
        self.pipe.fail(io, response, 0);
        After::Remove
    }

    /// Aborts both directions (reset + STOP_SENDING) and closes the socket.
    pub fn abort(&mut self, io: &mut Io<'_>, token: u64) -> After {
        self.phase = Phase::Done;
        self.pipe.abort(io, token)
    }

    /// A socket operation of this relay completed.
    pub fn on_completion(&mut self, io: &mut Io<'_>, c: Completion, token: u64) -> After {
        if c.op != SockOp::Connect {
            let after = self.pipe.on_completion(io, c, token);
            if self.pipe.is_done() {
                self.phase = Phase::Done;
            }
            return after;
        }
        match c.result {
            // Failed, aborted or timed out meanwhile: the socket's close is under way and
            // its completion (or the relay's removal) ends the relay.
            _ if self.phase != Phase::Connecting => After::Continue,
            Ok(_) => {
                self.phase = Phase::Established;
                self.pump(io, token)
            }
            Err(e) => {
                let msg = format!("connect {}: {e}", self.target);
                self.fail(io, &super::error_response(&msg))
            }
        }
    }

    /// Moves bytes both ways as far as buffers and credit allow.
    pub fn pump(&mut self, io: &mut Io<'_>, token: u64) -> After {
        if self.phase != Phase::Established {
            return After::Continue;
        }
        let after = self.pipe.pump(io, token);
        if self.pipe.is_done() {
            self.phase = Phase::Done;
        }
        after
    }
}
