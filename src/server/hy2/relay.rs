//! One proxied TCP connection: a Hysteria2 proxy stream (0x401) joined to a TCP socket.
//!
//! Backpressure couples the two sides: the QUIC stream is read only while the bytes read
//! from it fit the TCP side (at most `MAX_UP` buffered, one send in flight), and the TCP
//! socket is read only when everything previously read has been written into the QUIC
//! stream. A slow reader on either side therefore stalls its own stream's flow-control
//! window, not the connection or the worker.
//!
//! Closing: a FIN from the client half-closes the TCP socket (its reply still flows back);
//! EOF from the target finishes the QUIC stream and tears down both directions, as the
//! reference server does. Both halves of the QUIC stream are always closed (FIN or reset,
//! plus STOP_SENDING), so the client's stream credit comes back.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use quinn_proto::{ConnectionHandle, FinishError, ReadError, StreamId, VarInt, WriteError};

use crate::engine::{Completion, SockOp};
use crate::worker::Io;

/// Bytes read from the QUIC stream that may wait for the TCP side.
const MAX_UP: usize = 256 * 1024;
/// Bytes read from TCP at once.
const DOWN_CHUNK: usize = 64 * 1024;
/// QUIC application error code for streams we abort.
pub const STREAM_ABORT: u32 = 0x101;

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
    pub fd: Option<RawFd>,
    /// Give up connecting at this time (reported to the client as a timeout).
    pub deadline: Instant,
    /// QUIC → TCP bytes not yet handed to the socket.
    up: Vec<u8>,
    up_inflight: bool,
    /// The client finished its side (FIN read).
    quic_fin: bool,
    /// We shut down the TCP write side after the client's FIN.
    tcp_write_closed: bool,
    /// TCP → QUIC bytes not yet accepted by the stream.
    down: Vec<u8>,
    down_off: usize,
    down_inflight: bool,
    tcp_eof: bool,
    /// Buffer recycled between TCP receives.
    spare: Vec<u8>,
    /// A close of the fd has been requested.
    closing: bool,
    /// Payload bytes relayed client → target and target → client (traffic accounting).
    pub tx: u64,
    pub rx: u64,
}

/// What the caller should do after the relay progressed.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Remove the relay: both sides are closed.
    Remove,
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
        deadline: Instant,
    ) -> Self {
        Relay {
            ch,
            id,
            phase: Phase::Resolving,
            target,
            fd: None,
            deadline,
            up: first,
            up_inflight: false,
            quic_fin: false,
            tcp_write_closed: false,
            down: ok,
            down_off: 0,
            down_inflight: false,
            tcp_eof: false,
            spare: Vec::new(),
            closing: false,
            tx: 0,
            rx: 0,
        }
    }

    /// Starts the TCP connect.
    pub fn connect(&mut self, io: &mut Io<'_>, addr: SocketAddr, token: u64) -> Result<(), String> {
        self.phase = Phase::Connecting;
        io.driver
            .tcp_connect(addr, token)
            .map_err(|e| format!("connect {addr}: {e}"))
    }

    /// Queues bytes for the client (the TCPResponse) ahead of relayed data.
    pub fn queue_down(&mut self, bytes: &[u8]) {
        self.down.extend_from_slice(bytes);
    }

    /// Answers the client with an error and closes the stream. The relay is done.
    pub fn fail(&mut self, io: &mut Io<'_>, response: &[u8]) -> After {
        if let Some(conn) = io.conn(self.ch) {
            let mut s = conn.send_stream(self.id);
            let _ = s.write(response);
            let _ = s.finish();
            let _ = conn.recv_stream(self.id).stop(VarInt::from_u32(0));
        }
        self.phase = Phase::Done;
        self.close_fd(io, 0);
        After::Remove
    }

    /// Aborts both directions (reset + STOP_SENDING) and closes the socket.
    pub fn abort(&mut self, io: &mut Io<'_>, token: u64) -> After {
        if let Some(conn) = io.conn(self.ch) {
            let _ = conn
                .send_stream(self.id)
                .reset(VarInt::from_u32(STREAM_ABORT));
            let _ = conn
                .recv_stream(self.id)
                .stop(VarInt::from_u32(STREAM_ABORT));
        }
        self.phase = Phase::Done;
        self.close_fd(io, token);
        After::Remove
    }

    fn close_fd(&mut self, io: &mut Io<'_>, token: u64) {
        if let (Some(fd), false) = (self.fd, self.closing) {
            self.closing = true;
            io.driver.sock_close(fd, token);
        }
    }

    /// A socket operation of this relay completed.
    pub fn on_completion(&mut self, io: &mut Io<'_>, c: Completion, token: u64) -> After {
        match c.op {
            SockOp::Connect => match c.result {
                Ok(fd) => {
                    self.fd = Some(fd as RawFd);
                    if self.phase != Phase::Connecting {
                        // Timed out or aborted meanwhile.
                        self.close_fd(io, token);
                        return After::Remove;
                    }
                    self.phase = Phase::Established;
                    self.pump(io, token)
                }
                Err(e) => {
                    if self.phase != Phase::Connecting {
                        return After::Remove;
                    }
                    let msg = format!("connect {}: {e}", self.target);
                    self.fail(io, &super::error_response(&msg))
                }
            },
            SockOp::Send => {
                self.up_inflight = false;
                let mut buf = c.buf;
                match c.result {
                    Ok(n) if n < buf.len() => {
                        // Partial write: the rest goes first next time.
                        buf.drain(..n);
                        buf.extend_from_slice(&self.up);
                        self.up = buf;
                    }
                    Ok(_) => {
                        if self.up.is_empty() {
                            buf.clear();
                            self.up = buf;
                        }
                    }
                    Err(_) if self.phase == Phase::Done => return After::Continue,
                    Err(_) => return self.abort(io, token),
                }
                self.pump(io, token)
            }
            SockOp::Recv => {
                self.down_inflight = false;
                match c.result {
                    Ok(0) => {
                        self.tcp_eof = true;
                        self.spare = c.buf;
                    }
                    Ok(n) => {
                        self.rx += n as u64;
                        if self.down_off == self.down.len() {
                            self.down.clear();
                            self.down_off = 0;
                        }
                        self.down.extend_from_slice(&c.buf[..n]);
                        self.spare = c.buf;
                    }
                    Err(_) if self.phase == Phase::Done => return After::Continue,
                    Err(_) => return self.abort(io, token),
                }
                self.pump(io, token)
            }
            SockOp::Close => After::Remove,
            _ => After::Continue,
        }
    }

    /// Moves bytes both ways as far as buffers and credit allow.
    pub fn pump(&mut self, io: &mut Io<'_>, token: u64) -> After {
        if self.phase != Phase::Established {
            return After::Continue;
        }
        let Some(fd) = self.fd else {
            return After::Continue;
        };
        let Some(conn) = io.conn(self.ch) else {
            return self.abort(io, token);
        };
        // TCP → QUIC: flush what we hold.
        let mut stream_gone = false;
        while self.down_off < self.down.len() {
            match conn.send_stream(self.id).write(&self.down[self.down_off..]) {
                Ok(n) => self.down_off += n,
                Err(WriteError::Blocked) => break,
                Err(_) => {
                    stream_gone = true;
                    break;
                }
            }
        }
        if stream_gone {
            return self.abort(io, token);
        }
        let down_flushed = self.down_off == self.down.len();
        if down_flushed && self.tcp_eof {
            // The target is done: finish the stream and tear down both directions.
            match conn.send_stream(self.id).finish() {
                Ok(()) | Err(FinishError::ClosedStream) => {}
                Err(FinishError::Stopped(_)) => {}
            }
            let _ = conn.recv_stream(self.id).stop(VarInt::from_u32(0));
            self.phase = Phase::Done;
            self.close_fd(io, token);
            return After::Continue; // removed on the Close completion
        }
        // QUIC → TCP: read while there is room.
        let mut reset = false;
        if !self.quic_fin && self.up.len() < MAX_UP {
            let mut recv = conn.recv_stream(self.id);
            match recv.read(true) {
                Ok(mut chunks) => {
                    loop {
                        if self.up.len() >= MAX_UP {
                            break;
                        }
                        match chunks.next(MAX_UP - self.up.len()) {
                            Ok(Some(chunk)) => {
                                self.tx += chunk.bytes.len() as u64;
                                self.up.extend_from_slice(&chunk.bytes);
                            }
                            Ok(None) => {
                                self.quic_fin = true;
                                break;
                            }
                            Err(ReadError::Blocked) => break,
                            Err(ReadError::Reset(_)) => {
                                reset = true;
                                break;
                            }
                        }
                    }
                    let _ = chunks.finalize();
                }
                Err(_) => self.quic_fin = true,
            };
        }
        if reset {
            return self.abort(io, token);
        }
        if !self.up_inflight && !self.up.is_empty() {
            let buf = std::mem::take(&mut self.up);
            self.up_inflight = true;
            io.driver.tcp_send(fd, buf, token);
        }
        if self.quic_fin && !self.up_inflight && self.up.is_empty() && !self.tcp_write_closed {
            self.tcp_write_closed = true;
            io.driver.tcp_shutdown_write(fd);
        }
        if down_flushed && !self.down_inflight && !self.tcp_eof {
            let mut buf = std::mem::take(&mut self.spare);
            buf.clear();
            if buf.capacity() < DOWN_CHUNK {
                buf.reserve(DOWN_CHUNK);
            }
            self.down_inflight = true;
            io.driver.tcp_recv(fd, buf, token);
        }
        After::Continue
    }
}
