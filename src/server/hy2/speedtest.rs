//! The speed test (`speedTest: true`): a proxy stream to [`SPEEDTEST_ADDR`] is answered by the
//! server itself instead of being relayed to TCP.
//!
//! The official server (`extras/outbounds/speedtest.go`) hands such a request a fake
//! connection whose far end runs `speedtest/server.go`; the client sees an ordinary
//! TCPResponse, then the speed-test exchange ([`crate::proto::speedtest`]):
//! - download: request in, OK response out, `size` bytes out, stream closed;
//! - upload: request in, OK response out, `size` bytes in, summary out, stream closed.
//!
//! [`SpeedTest`] does the same on a `quinn_proto` stream as far as credit allows each time it
//! is driven. Download data is one static pseudo-random chunk handed to quinn by reference
//! again and again, so a test of any size allocates nothing per byte. Every exit closes both
//! halves of the stream (FIN or reset, plus STOP_SENDING) so the client's stream credit
//! comes back.
//!
//! Close behaviour, with the official server's for comparison:
//! - a malformed request (unknown type, or FIN before 5 bytes): reset + STOP_SENDING
//!   ([`STREAM_ABORT`]); the official server just closes.
//! - the client's FIN during an upload before all bytes arrived: the stream is closed without
//!   a summary, as the official server does.
//! - the client's FIN during a download: the download goes on (half-close, like the relay);
//!   the official server stops, since its relay tears down both directions on either EOF.
//! - the client's reset or STOP_SENDING: reset + STOP_SENDING.
//! - bytes after an upload's last counted byte, or during a download: read and dropped.

use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{Connection, Dir, FinishError, StreamId, VarInt, WriteError};

use crate::proto::speedtest::{Request, Response, UploadSummary, CHUNK_SIZE, REQUEST_LEN};
use crate::quic::stream::{self, ReadEnd};
use crate::worker::pipe::STREAM_ABORT;

pub use crate::proto::speedtest::is_speedtest_addr;

/// The address the official client dials; match requests with [`is_speedtest_addr`], which
/// accepts any port, as the official server does.
pub const SPEEDTEST_ADDR: &str = crate::proto::speedtest::SPEEDTEST_ADDR;

/// Most bytes taken from the stream per read call; the stream's window bounds the total.
const READ_CHUNK: usize = 64 * 1024;

/// Download data: the official server also repeats one random chunk (`handleDownload`); a
/// fixed pseudo-random one is as good for measuring and needs no RNG.
static PATTERN: [u8; CHUNK_SIZE] = pattern();

/// xorshift64, eight bytes per step, evaluated at compile time.
const fn pattern() -> [u8; CHUNK_SIZE] {
    let mut out = [0u8; CHUNK_SIZE];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i + 8 <= CHUNK_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let mut j = 0;
        while j < 8 {
            out[i + j] = b[j];
            j += 1;
        }
        i += 8;
    }
    out
}

/// Whether the caller should keep the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for credit or bytes; drive again on the stream's next event.
    Continue,
    /// Both halves of the stream are closed or reset; forget the test.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The 5-byte request is still arriving.
    Request,
    /// Sending test data.
    Download {
        /// Bytes not yet cut into a chunk for the stream.
        remaining: u32,
    },
    /// Counting the client's bytes.
    Upload {
        /// When the OK response was queued (the official server's `startTime`).
        started: Instant,
        /// Bytes counted so far.
        received: u32,
        /// Bytes the client said it would send.
        size: u32,
    },
    /// All that is left is to flush `out`, then close.
    Closing,
    /// The stream is closed or reset.
    Done,
}

/// One speed test on one proxy stream.
pub struct SpeedTest {
    /// Changes when the request is parsed, the data is through, or the stream ends.
    phase: Phase,
    /// Request bytes so far; only the first `req_len` count.
    req: [u8; REQUEST_LEN],
    req_len: usize,
    /// Bytes for the client ahead of any test data: the TCPResponse, the speed-test response,
    /// the upload summary. At most a TCPResponse plus 13 bytes.
    out: Vec<u8>,
    /// How much of `out` the stream has accepted.
    out_off: usize,
    /// Payload that came with the TCPRequest; consumed on the first drive.
    first: Vec<u8>,
    /// Part of [`PATTERN`] the stream has not accepted yet.
    chunk: Bytes,
    /// The client finished its side (FIN read).
    peer_fin: bool,
    /// Test bytes counted from the client (upload), for traffic accounting.
    pub tx: u64,
    /// Test bytes accepted by the stream for the client (download), for traffic accounting.
    pub rx: u64,
}

impl SpeedTest {
    /// `ok` is the TCPResponse (status OK) to send first; `first` bytes already read after
    /// the request.
    pub fn new(ok: Vec<u8>, first: Vec<u8>) -> Self {
        SpeedTest {
            phase: Phase::Request,
            req: [0; REQUEST_LEN],
            req_len: 0,
            out: ok,
            out_off: 0,
            first,
            chunk: Bytes::new(),
            peer_fin: false,
            tx: 0,
            rx: 0,
        }
    }

    /// [`Self::drive_at`] with the current time.
    pub fn drive(&mut self, conn: &mut Connection, id: StreamId) -> Progress {
        self.drive_at(conn, id, Instant::now())
    }

    /// Reads and writes as far as credit allows on stream `id` of `conn`; `now` times uploads.
    /// Call once at start and on the stream's Readable, Writable and Stopped events.
    pub fn drive_at(&mut self, conn: &mut Connection, id: StreamId, now: Instant) -> Progress {
        if self.phase == Phase::Done {
            return Progress::Done;
        }
        if id.dir() != Dir::Bi {
            // Proxy streams are bidirectional; quinn panics on resetting a receive-only one.
            let _ = conn.recv_stream(id).stop(VarInt::from_u32(STREAM_ABORT));
            self.phase = Phase::Done;
            return Progress::Done;
        }
        // The client gave up on our data (STOP_SENDING), or the stream is gone.
        if !matches!(conn.send_stream(id).stopped(), Ok(None)) {
            return self.abort(conn, id);
        }
        let first = std::mem::take(&mut self.first);
        if self.feed(&first, now).is_err() {
            return self.abort(conn, id);
        }
        match self.read(conn, id, now) {
            Ok(()) => {}
            Err(()) => return self.abort(conn, id),
        }
        if self.peer_fin {
            match self.phase {
                // FIN inside the request: it can never complete.
                Phase::Request => return self.abort(conn, id),
                // The client stopped short: no summary, as the official server.
                Phase::Upload { .. } => self.phase = Phase::Closing,
                _ => {}
            }
        }
        if self.write(conn, id).is_err() {
            return self.abort(conn, id);
        }
        let flushed = self.out_off == self.out.len() && self.chunk.is_empty();
        let finished = match self.phase {
            Phase::Closing => true,
            Phase::Download { remaining } => remaining == 0,
            _ => false,
        };
        if flushed && finished {
            return self.close(conn, id);
        }
        Progress::Continue
    }

    /// Takes client bytes in order: the request, then upload data; anything else is dropped.
    fn feed(&mut self, mut data: &[u8], now: Instant) -> Result<(), ()> {
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Request => {
                    let take = (REQUEST_LEN - self.req_len).min(data.len());
                    self.req[self.req_len..self.req_len + take].copy_from_slice(&data[..take]);
                    self.req_len += take;
                    data = &data[take..];
                    match Request::parse(&self.req[..self.req_len]) {
                        Ok(Some((req, _))) => self.start(req, now),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!("speed test: {e}");
                            return Err(());
                        }
                    }
                }
                Phase::Upload { received, size, .. } => {
                    let want = size.saturating_sub(*received) as usize;
                    // At most `want`, so `received` never passes `size`.
                    let take = want.min(data.len());
                    *received += take as u32;
                    self.tx += take as u64;
                    data = &data[take..];
                    self.upload_progress(now);
                }
                Phase::Download { .. } | Phase::Closing | Phase::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// The request is complete: queue the OK response and switch to the test.
    fn start(&mut self, req: Request, now: Instant) {
        Response::encode_ok(&mut self.out);
        self.phase = match req {
            Request::Download(remaining) => Phase::Download { remaining },
            Request::Upload(size) => Phase::Upload {
                started: now,
                received: 0,
                size,
            },
        };
        // A zero-byte upload is complete at once.
        self.upload_progress(now);
    }

    /// Queues the summary once every upload byte is in.
    fn upload_progress(&mut self, now: Instant) {
        if let Phase::Upload {
            started,
            received,
            size,
        } = self.phase
        {
            if received == size {
                let elapsed = now.saturating_duration_since(started);
                UploadSummary::new(elapsed, received).encode(&mut self.out);
                self.phase = Phase::Closing;
            }
        }
    }

    /// Reads what the stream has. `Err` when the client reset it or sent a bad request.
    fn read(&mut self, conn: &mut Connection, id: StreamId, now: Instant) -> Result<(), ()> {
        if self.peer_fin {
            return Ok(());
        }
        let mut bad = false;
        let r = stream::read(conn, id, READ_CHUNK, |bytes| {
            bad = self.feed(&bytes, now).is_err();
            if bad {
                0
            } else {
                READ_CHUNK
            }
        });
        match r.end {
            _ if bad => Err(()),
            ReadEnd::Reset(_) => Err(()),
            // Closed: nothing left to read on this side.
            ReadEnd::Fin | ReadEnd::Closed => {
                self.peer_fin = true;
                Ok(())
            }
            ReadEnd::Blocked | ReadEnd::Paused => Ok(()),
        }
    }

    /// Sends `out`, then download data. `Err` when the stream can no longer be written.
    fn write(&mut self, conn: &mut Connection, id: StreamId) -> Result<(), ()> {
        let mut send = conn.send_stream(id);
        while self.out_off < self.out.len() {
            match send.write(&self.out[self.out_off..]) {
                Ok(n) => self.out_off += n,
                Err(WriteError::Blocked) => return Ok(()),
                Err(WriteError::Stopped(_) | WriteError::ClosedStream) => return Err(()),
            }
        }
        if !self.out.is_empty() {
            self.out = Vec::new();
            self.out_off = 0;
        }
        loop {
            if self.chunk.is_empty() {
                let Phase::Download { remaining } = &mut self.phase else {
                    return Ok(());
                };
                if *remaining == 0 {
                    return Ok(());
                }
                let n = (*remaining).min(CHUNK_SIZE as u32);
                *remaining -= n;
                self.chunk = Bytes::from_static(&PATTERN[..n as usize]);
            }
            match send.write_chunks(std::slice::from_mut(&mut self.chunk)) {
                Ok(w) if w.bytes == 0 => return Ok(()),
                Ok(w) => self.rx += w.bytes as u64,
                Err(WriteError::Blocked) => return Ok(()),
                Err(WriteError::Stopped(_) | WriteError::ClosedStream) => return Err(()),
            }
        }
    }

    /// Normal end: FIN our side, STOP_SENDING(0) theirs.
    fn close(&mut self, conn: &mut Connection, id: StreamId) -> Progress {
        let stopped = matches!(conn.send_stream(id).finish(), Err(FinishError::Stopped(_)));
        if stopped {
            return self.abort(conn, id);
        }
        let _ = conn.recv_stream(id).stop(VarInt::from_u32(0));
        self.phase = Phase::Done;
        Progress::Done
    }

    /// Abnormal end: reset our side, STOP_SENDING theirs.
    fn abort(&mut self, conn: &mut Connection, id: StreamId) -> Progress {
        let code = VarInt::from_u32(STREAM_ABORT);
        let _ = conn.send_stream(id).reset(code);
        let _ = conn.recv_stream(id).stop(code);
        self.phase = Phase::Done;
        Progress::Done
    }
}

#[cfg(test)]
mod tests {
    //! Two in-memory `quinn_proto` endpoints in virtual time (the pattern of
    //! `src/quic/tests.rs`): the server side runs [`SpeedTest`] only on stream events, the
    //! client side follows the official client (`extras/outbounds/speedtest/client.go`).

    use std::collections::{HashMap, VecDeque};
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::BytesMut;
    use quinn_proto::{ConnectionHandle, DatagramEvent, Endpoint, Event, StreamEvent, Transmit};

    use super::*;
    use crate::proto::speedtest::{SpeedTestError, REQUEST_LEN};
    use crate::proto::tcp::{TcpResponse, STATUS_OK};
    use crate::quic::{
        client_config, client_crypto, client_endpoint_config, endpoint_config, self_signed,
        server_config, server_crypto, QuicParams, Verify,
    };

    const ALPN: &[u8] = b"h3";
    const MIB: u32 = 1 << 20;

    /// Small windows so a 1 MiB test waits for credit many times; one bidi stream at a time
    /// so a second test only starts if the first one's stream credit came back.
    fn params() -> QuicParams {
        QuicParams {
            init_stream_window: 64 * 1024,
            max_stream_window: 64 * 1024,
            init_conn_window: 256 * 1024,
            max_conn_window: 256 * 1024,
            max_incoming_streams: 1,
            ..QuicParams::default()
        }
    }

    /// One endpoint with (at most) one connection.
    struct Side {
        endpoint: Endpoint,
        addr: SocketAddr,
        conn: Option<(ConnectionHandle, Connection)>,
        /// Datagrams on the wire towards this side.
        inbound: VecDeque<Vec<u8>>,
    }

    impl Side {
        fn new(endpoint: Endpoint, port: u16) -> Self {
            Side {
                endpoint,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                conn: None,
                inbound: VecDeque::new(),
            }
        }

        fn conn(&mut self) -> &mut Connection {
            &mut self.conn.as_mut().expect("connection").1
        }

        /// Receives, runs timers, transmits into `out`; returns the application events and
        /// whether anything was sent.
        fn step(
            &mut self,
            now: Instant,
            remote: SocketAddr,
            out: &mut VecDeque<Vec<u8>>,
        ) -> (Vec<Event>, bool) {
            let mut buf = Vec::new();
            let mut sent = false;
            while let Some(d) = self.inbound.pop_front() {
                let data = BytesMut::from(&d[..]);
                match self
                    .endpoint
                    .handle(now, remote, None, None, data, &mut buf)
                {
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        let accepted = self.endpoint.accept(incoming, now, &mut buf, None);
                        self.conn = Some(accepted.map_err(|e| e.cause).expect("accept"));
                    }
                    Some(DatagramEvent::ConnectionEvent(_, event)) => {
                        if let Some((_, c)) = self.conn.as_mut() {
                            c.handle_event(event);
                        }
                    }
                    Some(DatagramEvent::Response(t)) => sent |= push(&t, &buf, out),
                    None => {}
                }
                buf.clear();
            }
            let mut events = Vec::new();
            if let Some((ch, conn)) = self.conn.as_mut() {
                if conn.poll_timeout().is_some_and(|t| t <= now) {
                    conn.handle_timeout(now);
                }
                while let Some(e) = conn.poll_endpoint_events() {
                    if let Some(e) = self.endpoint.handle_event(*ch, e) {
                        conn.handle_event(e);
                    }
                }
                while let Some(t) = conn.poll_transmit(now, 10, &mut buf) {
                    sent |= push(&t, &buf, out);
                    buf.clear();
                }
                while let Some(e) = conn.poll() {
                    events.push(e);
                }
            }
            (events, sent)
        }
    }

    fn push(t: &Transmit, buf: &[u8], out: &mut VecDeque<Vec<u8>>) -> bool {
        let segment = t.segment_size.unwrap_or(t.size).max(1);
        out.extend(buf[..t.size].chunks(segment).map(<[u8]>::to_vec));
        true
    }

    /// The server application under test: a [`SpeedTest`] per stream, driven on events only.
    #[derive(Default)]
    struct Server {
        tests: HashMap<StreamId, SpeedTest>,
        /// Streams whose test reported Done, and the bytes it moved (tx, rx).
        done: Vec<(StreamId, u64, u64)>,
        /// Bytes handed over as `first`, per stream.
        firsts: Vec<usize>,
        /// `drive_at` calls.
        drives: usize,
    }

    impl Server {
        fn on_events(&mut self, conn: &mut Connection, events: Vec<Event>, now: Instant) {
            for e in events {
                let id = match e {
                    Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                        while let Some(id) = conn.streams().accept(Dir::Bi) {
                            let first = read_available(conn, id);
                            self.firsts.push(first.len());
                            let mut ok = Vec::new();
                            TcpResponse::encode(STATUS_OK, "Connected", &[b'p'; 200], &mut ok)
                                .unwrap();
                            self.tests.insert(id, SpeedTest::new(ok, first));
                            self.drive(conn, id, now);
                        }
                        continue;
                    }
                    Event::Stream(StreamEvent::Readable { id })
                    | Event::Stream(StreamEvent::Writable { id })
                    | Event::Stream(StreamEvent::Stopped { id, .. }) => id,
                    _ => continue,
                };
                self.drive(conn, id, now);
            }
        }

        fn drive(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
            if let Some(t) = self.tests.get_mut(&id) {
                self.drives += 1;
                if t.drive_at(conn, id, now) == Progress::Done {
                    let t = self.tests.remove(&id).unwrap();
                    self.done.push((id, t.tx, t.rx));
                }
            }
        }
    }

    /// What the server's stream loop does before handing over: read what is there.
    fn read_available(conn: &mut Connection, id: StreamId) -> Vec<u8> {
        let mut out = Vec::new();
        stream::read_into(conn, id, &mut out, usize::MAX);
        out
    }

    #[derive(Debug, PartialEq)]
    enum Step {
        /// TCPResponse, then the speed-test response.
        Headers,
        /// Download data or, for an upload, the summary.
        Body,
        Done,
    }

    /// The official client, polled: `Client.Download` / `Client.Upload` after `client.TCP`.
    struct Client {
        id: StreamId,
        req: Request,
        /// Send upload data with the request instead of after the response.
        eager: bool,
        step: Step,
        /// Bytes to write: the request, then (upload) zeros as the official client sends.
        to_send: Vec<u8>,
        upload_left: u32,
        /// Header and summary bytes received (download data is checked, not kept).
        inbuf: Vec<u8>,
        response: Option<Response>,
        downloaded: u32,
        summary: Option<UploadSummary>,
        fin: bool,
        reset: Option<VarInt>,
        stopped: Option<VarInt>,
        /// Misbehaviour: FIN as soon as `to_send` and `upload_left` are out.
        fin_when_sent: bool,
        /// Misbehaviour: STOP_SENDING + reset once this many download bytes are in.
        abort_after: Option<u32>,
        aborted: bool,
    }

    impl Client {
        fn new(id: StreamId, req: Request, eager: bool) -> Self {
            let mut to_send = Vec::new();
            req.encode(&mut to_send);
            Client {
                id,
                req,
                eager,
                step: Step::Headers,
                to_send,
                upload_left: match req {
                    Request::Upload(n) => n,
                    Request::Download(_) => 0,
                },
                inbuf: Vec::new(),
                response: None,
                downloaded: 0,
                summary: None,
                fin: false,
                reset: None,
                stopped: None,
                fin_when_sent: false,
                abort_after: None,
                aborted: false,
            }
        }

        /// Raw bytes, for malformed requests.
        fn raw(id: StreamId, bytes: &[u8]) -> Self {
            let mut c = Client::new(id, Request::Download(0), false);
            c.to_send = bytes.to_vec();
            c
        }

        fn sending_data(&self) -> bool {
            self.eager || self.response.is_some()
        }

        /// Nothing more will happen on this stream from the client's point of view.
        fn over(&self) -> bool {
            self.step == Step::Done || self.fin || self.reset.is_some() || self.aborted
        }

        /// Writes and reads what it can; returns whether anything moved.
        fn poll(&mut self, conn: &mut Connection) -> bool {
            let mut moved = false;
            if self.stopped.is_none() {
                if let Ok(Some(code)) = conn.send_stream(self.id).stopped() {
                    // quic-go answers STOP_SENDING with RESET_STREAM by itself (RFC 9000
                    // §3.5); quinn-proto leaves it to the application.
                    self.stopped = Some(code);
                    let _ = conn.send_stream(self.id).reset(code);
                }
            }
            // Write.
            let mut send = conn.send_stream(self.id);
            while self.stopped.is_none() {
                if self.to_send.is_empty() && self.upload_left > 0 && self.sending_data() {
                    let n = self.upload_left.min(CHUNK_SIZE as u32);
                    self.upload_left -= n;
                    self.to_send = vec![0; n as usize];
                }
                if self.to_send.is_empty() {
                    break;
                }
                match send.write(&self.to_send) {
                    Ok(n) => {
                        self.to_send.drain(..n);
                        moved = true;
                    }
                    Err(_) => break,
                }
            }
            let all_sent = self.to_send.is_empty() && self.upload_left == 0;
            if self.fin_when_sent && all_sent {
                let _ = conn.send_stream(self.id).finish();
            }
            if self.aborted {
                return moved;
            }
            // Read.
            let r = stream::read(conn, self.id, usize::MAX, |bytes| {
                moved = true;
                self.on_bytes(&bytes);
                usize::MAX
            });
            match r.end {
                ReadEnd::Fin => self.fin = true,
                ReadEnd::Reset(code) => self.reset = Some(code),
                ReadEnd::Closed => return moved,
                ReadEnd::Blocked | ReadEnd::Paused => {}
            }
            if self.abort_after.is_some_and(|n| self.downloaded >= n) {
                // A user giving up: quic-go's CancelRead and CancelWrite.
                let code = VarInt::from_u32(0x77);
                let _ = conn.recv_stream(self.id).stop(code);
                let _ = conn.send_stream(self.id).reset(code);
                self.aborted = true;
                return true;
            }
            if self.step == Step::Done && (self.fin || self.reset.is_some()) {
                // `defer conn.Close()`: STOP_SENDING(0) and FIN, as QStream.Close does.
                let _ = conn.recv_stream(self.id).stop(VarInt::from_u32(0));
            }
            if self.step == Step::Done && self.to_send.is_empty() && self.upload_left == 0 {
                let _ = conn.send_stream(self.id).finish();
            }
            moved
        }

        fn on_bytes(&mut self, mut data: &[u8]) {
            while !data.is_empty() {
                match self.step {
                    Step::Headers => {
                        self.inbuf.extend_from_slice(data);
                        data = &[];
                        let Some((tcp, used)) = TcpResponse::parse(&self.inbuf).unwrap() else {
                            return;
                        };
                        assert!(tcp.is_ok());
                        let Some((resp, used2)) = Response::parse(&self.inbuf[used..]).unwrap()
                        else {
                            return;
                        };
                        assert!(resp.is_ok(), "{resp:?}");
                        self.response = Some(resp);
                        self.step = match self.req {
                            Request::Download(0) => Step::Done,
                            _ => Step::Body,
                        };
                        let rest = self.inbuf.split_off(used + used2);
                        self.inbuf.clear();
                        self.on_bytes(&rest);
                    }
                    Step::Body => match self.req {
                        Request::Download(size) => {
                            let take = ((size - self.downloaded) as usize).min(data.len());
                            for (i, b) in data[..take].iter().enumerate() {
                                let at = (self.downloaded as usize + i) % CHUNK_SIZE;
                                assert_eq!(*b, PATTERN[at], "download byte {at}");
                            }
                            self.downloaded += take as u32;
                            assert_eq!(take, data.len(), "bytes past the download size");
                            data = &[];
                            if self.downloaded == size {
                                self.step = Step::Done;
                            }
                        }
                        Request::Upload(_) => {
                            self.inbuf.extend_from_slice(data);
                            data = &[];
                            if let Some((s, used)) = UploadSummary::parse(&self.inbuf).unwrap() {
                                assert_eq!(used, self.inbuf.len(), "bytes past the summary");
                                self.summary = Some(s);
                                self.step = Step::Done;
                            }
                        }
                    },
                    Step::Done => panic!("{} bytes after the end", data.len()),
                }
            }
        }
    }

    struct Pair {
        client: Side,
        server: Side,
        now: Instant,
        app: Server,
    }

    impl Pair {
        fn connected() -> Self {
            let p = params();
            let ck = self_signed(&["localhost".to_string()]).unwrap();
            let server = Endpoint::new(
                Arc::new(endpoint_config(&[7; 64], 0, 1, Default::default())),
                Some(server_config(
                    server_crypto(&ck, &[ALPN]).unwrap(),
                    &p,
                    None,
                )),
                true,
                None,
            );
            let client = Endpoint::new(Arc::new(client_endpoint_config()), None, true, None);
            let mut pair = Pair {
                client: Side::new(client, 40000),
                server: Side::new(server, 443),
                now: Instant::now(),
                app: Server::default(),
            };
            let cfg = client_config(client_crypto(Verify::Insecure, &[ALPN]).unwrap(), &p);
            let now = pair.now;
            let conn = pair
                .client
                .endpoint
                .connect(now, cfg, pair.server.addr, "localhost")
                .unwrap();
            pair.client.conn = Some(conn);
            let mut connected = (false, false);
            for _ in 0..100 {
                let (ce, se, _) = pair.step();
                connected.0 |= ce.iter().any(|e| matches!(e, Event::Connected));
                connected.1 |= se.iter().any(|e| matches!(e, Event::Connected));
                if connected == (true, true) {
                    return pair;
                }
            }
            panic!("no handshake");
        }

        /// One exchange; virtual time moves only when nothing was sent.
        fn step(&mut self) -> (Vec<Event>, Vec<Event>, bool) {
            let (ce, se, busy) = self.exchange();
            if !busy {
                self.advance();
            }
            (ce, se, busy)
        }

        /// Both sides receive, run due timers and transmit; returns their events and whether
        /// anything was sent or happened.
        fn exchange(&mut self) -> (Vec<Event>, Vec<Event>, bool) {
            let (c, s) = (self.client.addr, self.server.addr);
            let (ce, sent_c) = self.client.step(self.now, s, &mut self.server.inbound);
            let (se, sent_s) = self.server.step(self.now, c, &mut self.client.inbound);
            let busy = sent_c || sent_s || !ce.is_empty() || !se.is_empty();
            (ce, se, busy)
        }

        /// Moves virtual time to the next timer of either side.
        fn advance(&mut self) {
            let next = [&mut self.client, &mut self.server]
                .into_iter()
                .filter_map(|side| side.conn.as_mut()?.1.poll_timeout())
                .min();
            if let Some(t) = next {
                self.now = self.now.max(t);
            }
        }

        /// Opens a stream (waiting for stream credit) and runs `client` on it to the end.
        fn run(&mut self, make: impl FnOnce(StreamId) -> Client) -> Client {
            let mut id = None;
            for _ in 0..1000 {
                id = self.client.conn().streams().open(Dir::Bi);
                if id.is_some() {
                    break;
                }
                self.step();
            }
            let mut client = make(id.expect("no stream credit"));
            for _ in 0..20_000 {
                let moved = client.poll(self.client.conn());
                let (_, se, busy) = self.exchange();
                let now = self.now;
                let conn = &mut self.server.conn.as_mut().unwrap().1;
                self.app.on_events(conn, se, now);
                if !moved && !busy {
                    if client.over() && self.app.tests.is_empty() {
                        return client;
                    }
                    // Checked before time moves: when nothing else is pending the next timer
                    // is the idle timeout, which would close the connection the next test
                    // runs on.
                    self.advance();
                }
            }
            panic!("test did not finish: {:?}", client.step);
        }
    }

    #[test]
    fn download_then_upload_one_mib() {
        let mut pair = Pair::connected();
        let c = pair.run(|id| Client::new(id, Request::Download(MIB), false));
        // 64 KiB windows: the server waited for credit again and again.
        assert!(pair.app.drives > 16, "{} drives", pair.app.drives);
        assert_eq!(c.response.as_ref().unwrap().message, "OK");
        assert_eq!(c.downloaded, MIB);
        assert!(c.fin, "download stream not finished");
        assert_eq!(c.reset, None);
        // The server's STOP_SENDING(0) on close may or may not beat the client's FIN.
        assert!(
            c.stopped.is_none_or(|code| code == VarInt::from_u32(0)),
            "{:?}",
            c.stopped
        );
        assert_eq!(
            pair.app.done.last().map(|d| (d.1, d.2)),
            Some((0, MIB.into()))
        );

        // One incoming stream allowed: this only opens if the download's credit came back.
        let mid = pair.now;
        let c = pair.run(|id| Client::new(id, Request::Upload(MIB), false));
        assert_eq!(c.response.as_ref().unwrap().message, "OK");
        let s = c.summary.expect("summary");
        assert_eq!(s.received, MIB);
        assert!(s.elapsed() <= pair.now - mid, "{s:?}");
        assert!(c.fin && c.reset.is_none());
        assert_eq!(
            pair.app.done.last().map(|d| (d.1, d.2)),
            Some((MIB.into(), 0))
        );
        assert_eq!(pair.app.done.len(), 2);

        // And once more, so the upload's credit came back as well.
        let c = pair.run(|id| Client::new(id, Request::Download(1000), false));
        assert_eq!(c.downloaded, 1000);
    }

    /// Upload data coalesced with the request arrives partly in `first`.
    #[test]
    fn eager_upload_counts_first_bytes() {
        let mut pair = Pair::connected();
        let c = pair.run(|id| Client::new(id, Request::Upload(300_000), true));
        assert!(pair.app.firsts[0] > REQUEST_LEN, "{:?}", pair.app.firsts);
        assert_eq!(c.summary.map(|s| s.received), Some(300_000));
        assert_eq!(pair.app.done[0].1, 300_000);
    }

    #[test]
    fn zero_sized_tests() {
        let mut pair = Pair::connected();
        let c = pair.run(|id| Client::new(id, Request::Download(0), false));
        assert!(c.fin && c.downloaded == 0 && c.reset.is_none());
        let c = pair.run(|id| Client::new(id, Request::Upload(0), false));
        assert_eq!(c.summary, Some(UploadSummary::new(Duration::ZERO, 0)));
    }

    #[test]
    fn malformed_request_resets_the_stream() {
        assert_eq!(Request::parse(&[0x03]), Err(SpeedTestError::UnknownType(3)));
        let mut pair = Pair::connected();
        let c = pair.run(|id| Client::raw(id, &[0x03, 0, 0, 0, 1]));
        assert_eq!(c.reset, Some(VarInt::from_u32(STREAM_ABORT)));
        assert_eq!(c.stopped, Some(VarInt::from_u32(STREAM_ABORT)));
        // Only the TCPResponse reached the client, no speed-test response.
        assert!(c.response.is_none());
        // The stream's credit came back.
        let c = pair.run(|id| Client::new(id, Request::Download(10), false));
        assert_eq!(c.downloaded, 10);
    }

    #[test]
    fn truncated_request_then_fin_resets() {
        let mut pair = Pair::connected();
        let c = pair.run(|id| {
            let mut c = Client::raw(id, &[0x01, 0, 0]);
            c.fin_when_sent = true;
            c
        });
        assert_eq!(c.reset, Some(VarInt::from_u32(STREAM_ABORT)));
        assert!(c.response.is_none());
    }

    /// The client's FIN before all upload bytes: closed without a summary, as officially.
    #[test]
    fn short_upload_closes_without_summary() {
        let mut pair = Pair::connected();
        let c = pair.run(|id| {
            let mut c = Client::new(id, Request::Upload(100_000), false);
            c.upload_left = 40_000;
            c.fin_when_sent = true;
            c
        });
        assert!(c.fin && c.reset.is_none() && c.summary.is_none());
        assert_eq!(pair.app.done[0].1, 40_000);
        let c = pair.run(|id| Client::new(id, Request::Upload(10), false));
        assert_eq!(c.summary.map(|s| s.received), Some(10));
    }

    /// The client's FIN after the request does not cut a download short (half-close).
    #[test]
    fn download_survives_client_fin() {
        let mut pair = Pair::connected();
        let c = pair.run(|id| {
            let mut c = Client::new(id, Request::Download(200_000), false);
            c.fin_when_sent = true;
            c
        });
        assert_eq!(c.downloaded, 200_000);
        assert!(c.reset.is_none());
    }

    /// STOP_SENDING and reset from the client mid-download end the test and return credit.
    #[test]
    fn client_abort_mid_download() {
        let mut pair = Pair::connected();
        let c = pair.run(|id| {
            let mut c = Client::new(id, Request::Download(MIB), false);
            c.abort_after = Some(100_000);
            c
        });
        assert!(c.aborted);
        let (_, _, rx) = pair.app.done[0];
        assert!(rx < u64::from(MIB), "{rx}");
        let c = pair.run(|id| Client::new(id, Request::Download(10), false));
        assert_eq!(c.downloaded, 10);
    }

    #[test]
    fn pattern_is_not_trivial() {
        assert_ne!(PATTERN[..8], PATTERN[8..16]);
        assert!(PATTERN.iter().filter(|&&b| b == 0).count() < CHUNK_SIZE / 64);
    }
}
