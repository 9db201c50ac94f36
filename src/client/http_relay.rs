//! One forwarded HTTP request on a connection the app keeps open: the request's stream
//! joined to the app's socket for as long as the request and its response last, the bytes
//! framed by an [`Exchange`]. Then the stream ends and the connection reads the next request
//! ([`After::Next`]), or closes when the exchange says it cannot carry one.
//!
//! [`Pipe`](crate::worker::pipe::Pipe) joins a stream and a socket for good; this is its
//! counterpart for one request, with the same backpressure: the stream is read only while
//! the bytes for the app fit [`MAX_TO_APP`], and the app is read only while the request's
//! body is incomplete and the stream took what was read before. A request's body is read up
//! to its end and no further, so a pipelined next request stays with the app's connection.

use bytes::Bytes;
use quinn_proto::{ConnectionHandle, StreamId, VarInt};

use super::http_proxy::Exchange;
use crate::engine::{Completion, Sock, SockOp, Token};
use crate::quic::stream::{self, ReadEnd};
use crate::worker::pipe::{
    self, finish_or_reset, requeue_unsent, write_to_stream, Joint, STREAM_ABORT,
};
use crate::worker::Io;

/// Response bytes that may wait for the app's socket before the stream is read again.
const MAX_TO_APP: usize = 256 * 1024;
/// Bytes of a request body read from the app at once.
const RECV_CHUNK: usize = 64 * 1024;

/// What the owner does after the relay progressed.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Both sides are closed: remove the owner.
    Remove,
    /// The response is complete and the connection carries another request: the stream
    /// has ended, nothing of the socket is in flight, and [`HttpRelay::take_next`] holds the
    /// bytes read after this request.
    Next,
}

impl From<pipe::After> for After {
    fn from(a: pipe::After) -> After {
        match a {
            pipe::After::Continue => After::Continue,
            pipe::After::Remove => After::Remove,
        }
    }
}

pub struct HttpRelay {
    /// The stream and the app's socket; the socket is set once the handshake's sends are
    /// done, and nothing moves before.
    j: Joint,
    exchange: Exchange,
    /// Response bytes for the app not yet handed to the socket.
    to_app: Vec<u8>,
    /// Bytes of the send in flight (0: none).
    sending: usize,
    /// Request bytes the stream has not taken yet.
    to_stream: Bytes,
    receiving: bool,
    /// Bytes from the app after this request's end: the start of the next one.
    next: Vec<u8>,
    /// The app closed its side.
    app_eof: bool,
    /// Our half of the stream is finished or reset.
    finished: bool,
}

impl HttpRelay {
    /// A relay for `exchange` on stream `id` of `ch`: `from_stream` are response bytes read
    /// with the TCPResponse, `to_stream` request bytes the stream did not take yet, `next`
    /// bytes from the app after the request.
    pub fn new(
        ch: ConnectionHandle,
        id: StreamId,
        mut exchange: Exchange,
        from_stream: &[u8],
        to_stream: Vec<u8>,
        next: Vec<u8>,
    ) -> Self {
        let mut to_app = Vec::new();
        exchange.response_bytes(from_stream, &mut to_app);
        HttpRelay {
            j: Joint::new(ch, id),
            exchange,
            to_app,
            sending: 0,
            to_stream: Bytes::from(to_stream),
            receiving: false,
            next,
            app_eof: false,
            finished: false,
        }
    }

    /// The app's socket is free for the relay: call [`HttpRelay::pump`] next.
    pub fn attach(&mut self, sock: Sock) {
        self.j.attach(sock);
    }

    pub fn sock(&self) -> Option<Sock> {
        self.j.sock()
    }

    /// The bytes read from the app after this request (after [`After::Next`]).
    pub fn take_next(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.next)
    }

    /// Aborts both directions of the stream and closes the socket.
    pub fn abort(&mut self, io: &mut Io<'_>, token: Token) -> After {
        self.finished = true;
        self.j.abort(io, token).into()
    }

    /// A Send, Recv or Close of the app's socket completed.
    pub fn on_completion(&mut self, io: &mut Io<'_>, c: Completion, token: Token) -> After {
        match c.op {
            SockOp::Send => {
                self.sending = 0;
                match c.result {
                    Ok(n) if n < c.buf.len() => requeue_unsent(c.buf, n, &mut self.to_app),
                    Ok(_) => {}
                    Err(_) if self.j.is_done() => return After::Continue,
                    Err(_) => return self.abort(io, token),
                }
            }
            SockOp::Recv => {
                self.receiving = false;
                match c.result {
                    Ok(0) => self.app_eof = true,
                    Ok(n) => {
                        let got = c.buf.get(..n).unwrap_or_default();
                        let body = self.exchange.request_bytes(got).min(got.len());
                        self.to_stream = Bytes::copy_from_slice(&got[..body]);
                        self.next.extend_from_slice(&got[body..]);
                    }
                    Err(_) if self.j.is_done() => return After::Continue,
                    Err(_) => return self.abort(io, token),
                }
            }
            SockOp::Close => return After::Remove,
            _ => return After::Continue,
        }
        self.pump(io, token)
    }

    /// Moves bytes both ways as far as buffers and credit allow, and ends the exchange once
    /// the response is out.
    pub fn pump(&mut self, io: &mut Io<'_>, token: Token) -> After {
        let after = self.pump_inner(io, token);
        // The stream stops being read while the app is slow.
        let stall = !self.exchange.response_done() && self.to_app.len() >= MAX_TO_APP;
        let held = self.to_app.len() + self.sending + self.to_stream.len();
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
        // The request to the stream.
        if !self.finished && write_to_stream(conn, id, &mut self.to_stream).is_err() {
            return self.abort(io, token);
        }
        if self.app_eof && self.to_stream.is_empty() && !self.finished {
            // The app is done sending: the origin gets the end of the request.
            self.finished = true;
            finish_or_reset(conn, id);
        }
        // The response from the stream, while the app keeps up.
        if !self.exchange.response_done() && self.to_app.len() < MAX_TO_APP {
            let (exchange, to_app) = (&mut self.exchange, &mut self.to_app);
            let room = |exchange: &Exchange, to_app: &Vec<u8>| {
                if exchange.response_done() {
                    0
                } else {
                    MAX_TO_APP.saturating_sub(to_app.len())
                }
            };
            let first = room(exchange, to_app);
            let r = stream::read(conn, id, first, |bytes| {
                exchange.response_bytes(&bytes, to_app);
                room(exchange, to_app)
            });
            io.consumed(ch, r.bytes);
            match r.end {
                ReadEnd::Reset(_) => return self.abort(io, token),
                ReadEnd::Fin | ReadEnd::Closed => self.exchange.response_ended(&mut self.to_app),
                ReadEnd::Blocked | ReadEnd::Paused => {}
            }
        }
        if self.sending == 0 && !self.to_app.is_empty() {
            let buf = std::mem::take(&mut self.to_app);
            self.sending = buf.len();
            io.driver.tcp_send(sock, buf, token);
        }
        if self.exchange.response_done() && self.sending == 0 && self.to_app.is_empty() {
            return self.end(io, token);
        }
        let wants_body = !self.exchange.request_done() && !self.app_eof;
        if wants_body && self.to_stream.is_empty() && !self.receiving {
            self.receiving = true;
            io.driver
                .tcp_recv(sock, Vec::with_capacity(RECV_CHUNK), token);
        }
        After::Continue
    }

    /// The response is out: the stream ends, then the connection carries the next request
    /// or closes.
    fn end(&mut self, io: &mut Io<'_>, token: Token) -> After {
        if let Some(conn) = io.conn(self.j.ch) {
            let id = self.j.id;
            let _ = conn.recv_stream(id).stop(VarInt::from_u32(0));
            if !self.finished {
                if self.exchange.request_done() && self.to_stream.is_empty() {
                    finish_or_reset(conn, id);
                } else {
                    // A FIN would tell the origin the body is complete.
                    let _ = conn.send_stream(id).reset(VarInt::from_u32(STREAM_ABORT));
                }
            }
        }
        self.finished = true;
        if self.exchange.keep_alive() && !self.app_eof {
            if self.receiving {
                // Cannot happen (the body is complete, so nothing is read), but a receive
                // in flight must land here: wait for it.
                return After::Continue;
            }
            self.j.set_done();
            return After::Next;
        }
        self.j.close_sock(io, token).into()
    }
}
