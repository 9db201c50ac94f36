//! A QUIC stream joined to a TCP socket: the byte pump under both roles' proxied TCP
//! connections (the server's side faces the target, the client's side the local app).
//! What any stream joined to a socket needs, whatever frames its bytes (the socket's
//! close, the abort of both directions, the reports to the window and the gauges), is the
//! [`Joint`], which the client's one-request HTTP relay uses too.
//!
//! Backpressure couples the two sides: the QUIC stream is read only while the bytes read
//! from it fit the TCP side (at most `MAX_TO_TCP` buffered, one send in flight), and the TCP
//! socket is read only when everything previously read has been written into the QUIC
//! stream. A slow reader on either side therefore stalls its own stream's flow-control
//! window, not the connection or the worker.
//!
//! Closing follows [`Ends`]: one side's end half-closes the other side's direction, the
//! other side's end tears both down, as the reference implementation does. Both halves of
//! the QUIC stream are always closed (FIN or reset, plus STOP_SENDING), so stream credit
//! comes back to the peer.

use bytes::Bytes;
use quinn_proto::{Connection, ConnectionHandle, FinishError, StreamId, VarInt, WriteError};

use super::Io;
use crate::engine::{Completion, Sock, SockOp, Token};
use crate::quic::stream::{self, ReadEnd};

/// Bytes read from the QUIC stream that may wait for the TCP side.
const MAX_TO_TCP: usize = 256 * 1024;
/// Bytes read from TCP at once: a pipe starts small (a request/response stream holds little
/// while its receive waits) and doubles its buffer on each receive that fills it. Each
/// receive's buffer is handed to quinn as it is (`write_chunks`), never copied.
const TCP_CHUNK_MIN: usize = 8 * 1024;
const TCP_CHUNK_MAX: usize = 256 * 1024;
/// QUIC application error code for streams we abort.
pub const STREAM_ABORT: u32 = 0x101;

/// Ends our half of stream `id`: FIN, or RESET_STREAM when the peer already sent
/// STOP_SENDING (RFC 9000 §3.5: the peer's receive side then closes, and the stream's
/// credit comes back; a FIN refused as `Stopped` would leave it open for good).
pub fn finish_or_reset(conn: &mut Connection, id: StreamId) {
    if let Err(FinishError::Stopped(_)) = conn.send_stream(id).finish() {
        let _ = conn.send_stream(id).reset(VarInt::from_u32(0));
    }
}

/// Which end of the pipe tears it down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    /// The server: EOF from the target finishes the stream and closes everything; the
    /// client's FIN half-closes the TCP socket (its reply still flows back).
    TcpEofCloses,
    /// The client: the stream's FIN (the target is done) closes everything once its bytes
    /// reached the app; the app's EOF finishes the stream (the reply still flows back).
    QuicFinCloses,
}

/// What the caller should do after the pipe progressed.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Remove the owner: both sides are closed.
    Remove,
}

/// What every stream joined to a socket shares, however its bytes are framed ([`Pipe`], the
/// client's one-request `HttpRelay`): the socket and its close, the abort of both directions,
/// and what is reported to the connection's window and the worker's gauges.
pub struct Joint {
    pub ch: ConnectionHandle,
    pub id: StreamId,
    /// Set once the socket may carry the relay's bytes; nothing moves before.
    sock: Option<Sock>,
    /// A close of the socket has been requested.
    closing: bool,
    /// The relay is over: both sides closed or closing (or, for an HTTP exchange, handed back).
    done: bool,
    /// What was last reported: the stream stopped reading, and the bytes the relay holds.
    reported_stall: bool,
    reported_buffered: u64,
}

impl Joint {
    pub fn new(ch: ConnectionHandle, id: StreamId) -> Self {
        Joint {
            ch,
            id,
            sock: None,
            closing: false,
            done: false,
            reported_stall: false,
            reported_buffered: 0,
        }
    }

    pub fn attach(&mut self, sock: Sock) {
        self.sock = Some(sock);
    }

    pub fn detach(&mut self) {
        self.sock = None;
    }

    pub fn sock(&self) -> Option<Sock> {
        self.sock
    }

    /// The socket, unless the relay is over: what a pump may move bytes on.
    pub fn live_sock(&self) -> Option<Sock> {
        self.sock.filter(|_| !self.done)
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn set_done(&mut self) {
        self.done = true;
    }

    /// Aborts both directions of the stream (reset + STOP_SENDING) and closes the socket.
    pub fn abort(&mut self, io: &mut Io<'_>, token: Token) -> After {
        if let Some(conn) = io.conn(self.ch) {
            let code = VarInt::from_u32(STREAM_ABORT);
            let _ = conn.send_stream(self.id).reset(code);
            let _ = conn.recv_stream(self.id).stop(code);
        }
        self.close_sock(io, token)
    }

    /// Ends the relay and closes the socket: `Continue` until its Close completes, `Remove`
    /// if there is none.
    pub fn close_sock(&mut self, io: &mut Io<'_>, token: Token) -> After {
        self.done = true;
        self.report(io, false, 0);
        match (self.sock, self.closing) {
            (Some(sock), false) => {
                self.closing = true;
                io.driver.sock_close(sock, token);
                After::Continue
            }
            (Some(_), true) => After::Continue,
            (None, _) => After::Remove,
        }
    }

    /// Tells the connection's window whether this stream stopped reading (`stall`: the bytes
    /// for the socket are at their cap), and the worker how many bytes the relay holds. A
    /// relay that is over holds none.
    pub fn report(&mut self, io: &mut Io<'_>, stall: bool, buffered: u64) {
        let (stall, buffered) = if self.done {
            (false, 0)
        } else {
            (stall, buffered)
        };
        if stall != self.reported_stall {
            self.reported_stall = stall;
            io.stalled(self.ch, stall);
        }
        if buffered != self.reported_buffered {
            io.counters.buffered(self.reported_buffered, buffered);
            self.reported_buffered = buffered;
        }
    }
}

/// Writes `bytes` into stream `id` as far as its credit allows; quinn takes the buffer
/// itself, or what is left of it. `Err`: the stream cannot take data any more (stopped,
/// closed).
pub fn write_to_stream(
    conn: &mut Connection,
    id: StreamId,
    bytes: &mut Bytes,
) -> Result<(), WriteError> {
    while !bytes.is_empty() {
        match conn
            .send_stream(id)
            .write_chunks(std::slice::from_mut(bytes))
        {
            Ok(w) if w.bytes == 0 => break,
            Ok(_) => {}
            Err(WriteError::Blocked) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A socket send of `buf` took its first `sent` bytes: the rest goes before `queued`.
pub fn requeue_unsent(mut buf: Vec<u8>, sent: usize, queued: &mut Vec<u8>) {
    buf.drain(..sent.min(buf.len()));
    buf.extend_from_slice(queued);
    *queued = buf;
}

pub struct Pipe {
    j: Joint,
    ends: Ends,
    /// QUIC → TCP bytes not yet handed to the socket.
    to_tcp: Vec<u8>,
    to_tcp_inflight: bool,
    /// The buffer of the last completed send while `to_tcp` refilled, kept for the next
    /// swap: a busy pipe alternates two buffers instead of growing a fresh one each time.
    to_tcp_spare: Vec<u8>,
    /// The stream's FIN was read.
    quic_fin: bool,
    /// The TCP write side was shut down after the FIN.
    tcp_write_closed: bool,
    /// TCP → QUIC bytes not yet accepted by the stream (a receive's own buffer).
    to_quic: Bytes,
    tcp_recv_inflight: bool,
    tcp_eof: bool,
    /// Our side of the stream is finished.
    quic_finished: bool,
    /// Size of the next TCP receive.
    tcp_chunk: usize,
    /// Payload bytes QUIC → TCP and TCP → QUIC (traffic accounting).
    pub from_quic: u64,
    pub from_tcp: u64,
    /// Bytes of the TCP send in flight.
    to_tcp_inflight_len: usize,
}

impl Pipe {
    /// `to_tcp` and `to_quic` are bytes queued ahead of relayed data (a request's first
    /// payload bytes, a protocol response).
    pub fn new(
        ch: ConnectionHandle,
        id: StreamId,
        ends: Ends,
        to_tcp: Vec<u8>,
        to_quic: Vec<u8>,
    ) -> Self {
        Pipe {
            j: Joint::new(ch, id),
            ends,
            to_tcp,
            to_tcp_inflight: false,
            to_tcp_spare: Vec::new(),
            quic_fin: false,
            tcp_write_closed: false,
            to_quic: Bytes::from(to_quic),
            tcp_recv_inflight: false,
            tcp_eof: false,
            quic_finished: false,
            tcp_chunk: TCP_CHUNK_MIN,
            from_quic: 0,
            from_tcp: 0,
            to_tcp_inflight_len: 0,
        }
    }

    /// The TCP socket is ready: bytes may flow. Call [`Pipe::pump`] next.
    pub fn attach(&mut self, sock: Sock) {
        self.j.attach(sock);
    }

    /// Forgets the socket before anything moved on it (a connect that failed, closed by the
    /// caller), so that another can be attached.
    pub fn detach(&mut self) {
        self.j.detach();
    }

    /// Queues `bytes` from the TCP side behind what waits for the stream (a proxy's early
    /// bytes from the target).
    pub fn queue_to_quic(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            let mut all = self.to_quic.to_vec();
            all.extend_from_slice(bytes);
            self.from_tcp += bytes.len() as u64;
            self.to_quic = Bytes::from(all);
        }
    }

    pub fn sock(&self) -> Option<Sock> {
        self.j.sock()
    }

    /// Whether both sides are closed (or closing).
    pub fn is_done(&self) -> bool {
        self.j.is_done()
    }

    /// Answers the stream with `response`, finishes it and closes the socket, if any.
    pub fn fail(&mut self, io: &mut Io<'_>, response: &[u8], token: Token) -> After {
        if let Some(conn) = io.conn(self.j.ch) {
            let _ = conn.send_stream(self.j.id).write(response);
            finish_or_reset(conn, self.j.id);
            let _ = conn.recv_stream(self.j.id).stop(VarInt::from_u32(0));
        }
        self.j.close_sock(io, token)
    }

    /// Aborts both directions (reset + STOP_SENDING) and closes the socket.
    pub fn abort(&mut self, io: &mut Io<'_>, token: Token) -> After {
        self.j.abort(io, token)
    }

    /// A Send, Recv or Close of this pipe's socket completed.
    pub fn on_completion(&mut self, io: &mut Io<'_>, c: Completion, token: Token) -> After {
        match c.op {
            SockOp::Send => {
                self.to_tcp_inflight = false;
                self.to_tcp_inflight_len = 0;
                let mut buf = c.buf;
                match c.result {
                    Ok(n) if n < buf.len() => requeue_unsent(buf, n, &mut self.to_tcp),
                    Ok(_) => {
                        buf.clear();
                        if self.to_tcp.is_empty() {
                            // Idle again: one buffer is enough.
                            self.to_tcp = buf;
                            self.to_tcp_spare = Vec::new();
                        } else {
                            self.to_tcp_spare = buf;
                        }
                    }
                    Err(_) if self.j.is_done() => return After::Continue,
                    Err(_) => return self.abort(io, token),
                }
                self.pump(io, token)
            }
            SockOp::Recv => {
                self.tcp_recv_inflight = false;
                match c.result {
                    Ok(0) => self.tcp_eof = true,
                    Ok(n) => {
                        self.from_tcp += n as u64;
                        if n >= c.buf.capacity() {
                            self.tcp_chunk = (self.tcp_chunk * 2).min(TCP_CHUNK_MAX);
                        }
                        // A receive is issued only once `to_quic` is empty. quinn keeps the
                        // buffer until the peer acknowledges it: a mostly empty one is
                        // copied to its size instead of pinning its whole capacity.
                        self.to_quic = if n * 2 >= c.buf.capacity() {
                            Bytes::from(c.buf)
                        } else {
                            Bytes::copy_from_slice(&c.buf)
                        };
                    }
                    Err(_) if self.j.is_done() => return After::Continue,
                    Err(_) => return self.abort(io, token),
                }
                self.pump(io, token)
            }
            SockOp::Close => After::Remove,
            _ => After::Continue,
        }
    }

    /// Moves bytes both ways as far as buffers and credit allow.
    pub fn pump(&mut self, io: &mut Io<'_>, token: Token) -> After {
        let after = self.pump_inner(io, token);
        let stall = !self.quic_fin && self.to_tcp.len() >= MAX_TO_TCP;
        let held = self.to_tcp.len() + self.to_tcp_inflight_len + self.to_quic.len();
        self.j.report(io, stall, held as u64);
        after
    }

    fn pump_inner(&mut self, io: &mut Io<'_>, token: Token) -> After {
        let Some(sock) = self.j.live_sock() else {
            return After::Continue;
        };
        let (ch, id) = (self.j.ch, self.j.id);
        let Some(conn) = io.conn(ch) else {
            return self.abort(io, token);
        };
        // TCP → QUIC: flush what we hold.
        if write_to_stream(conn, id, &mut self.to_quic).is_err() {
            return self.abort(io, token);
        }
        let to_quic_flushed = self.to_quic.is_empty();
        if to_quic_flushed && self.tcp_eof && !self.quic_finished {
            self.quic_finished = true;
            finish_or_reset(conn, id);
            if self.ends == Ends::TcpEofCloses {
                let _ = conn.recv_stream(id).stop(VarInt::from_u32(0));
                return self.j.close_sock(io, token);
            }
        }
        // QUIC → TCP: read while there is room.
        if !self.quic_fin && self.to_tcp.len() < MAX_TO_TCP {
            let r = stream::read_into(conn, id, &mut self.to_tcp, MAX_TO_TCP);
            self.from_quic += r.bytes;
            io.consumed(ch, r.bytes);
            match r.end {
                ReadEnd::Reset(_) => return self.abort(io, token),
                ReadEnd::Fin | ReadEnd::Closed => self.quic_fin = true,
                ReadEnd::Blocked | ReadEnd::Paused => {}
            }
        }
        if !self.to_tcp_inflight && !self.to_tcp.is_empty() {
            let spare = std::mem::take(&mut self.to_tcp_spare);
            let buf = std::mem::replace(&mut self.to_tcp, spare);
            self.to_tcp_inflight = true;
            self.to_tcp_inflight_len = buf.len();
            io.driver.tcp_send(sock, buf, token);
        }
        let to_tcp_flushed = !self.to_tcp_inflight && self.to_tcp.is_empty();
        if self.quic_fin && to_tcp_flushed {
            match self.ends {
                Ends::QuicFinCloses => {
                    // The target is done and the app has every byte: close both sides.
                    if let Some(conn) = io.conn(ch) {
                        finish_or_reset(conn, id);
                    }
                    return self.j.close_sock(io, token);
                }
                Ends::TcpEofCloses if !self.tcp_write_closed => {
                    self.tcp_write_closed = true;
                    io.driver.tcp_shutdown_write(sock);
                }
                Ends::TcpEofCloses => {}
            }
        }
        if to_quic_flushed && !self.tcp_recv_inflight && !self.tcp_eof {
            let buf = Vec::with_capacity(self.tcp_chunk);
            self.tcp_recv_inflight = true;
            io.driver.tcp_recv(sock, buf, token);
        }
        After::Continue
    }
}
