//! The client side of the raw workload: C connections × S concurrent streams, each
//! moving N bytes, with every byte checked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn_proto::{
    ConnectionHandle, Dir, Event, FinishError, StreamEvent, StreamId, VarInt, WriteError,
};

use super::{header, pattern, Mode, CHUNK, HEADER_LEN};
use quelay::quic::stream::{self, ReadEnd};
use quelay::worker::{App, Io};

/// What one worker of the load client does.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub server: SocketAddr,
    pub server_name: String,
    pub mode: Mode,
    /// Bytes per stream.
    pub bytes: u64,
    /// Connections this worker opens.
    pub connections: usize,
    /// Concurrent streams per connection.
    pub streams: usize,
    /// Send with Brutal at this rate (bytes/s); `None` keeps the configured controller.
    pub brutal_rate: Option<u64>,
}

/// Results shared by all workers of a load run.
#[derive(Default, Debug)]
pub struct LoadStats {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub streams_done: AtomicU64,
    pub connections_done: AtomicU64,
    pub errors: AtomicU64,
    /// The first few error messages.
    pub messages: Mutex<Vec<String>>,
    /// When the first and the last payload bytes arrived.
    received_at: Mutex<Option<(Instant, Instant)>>,
}

impl LoadStats {
    /// From the first payload byte received to the last.
    pub fn receive_span(&self) -> Option<Duration> {
        let r = self.received_at.lock().unwrap_or_else(|e| e.into_inner());
        r.map(|(first, last)| last - first)
    }

    fn received(&self, now: Instant) {
        let mut r = self.received_at.lock().unwrap_or_else(|e| e.into_inner());
        let first = r.map_or(now, |(first, _)| first);
        *r = Some((first, now));
    }

    fn error(&self, msg: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut m = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < 16 {
            m.push(msg);
        }
    }
}

#[derive(Default)]
struct ClientStream {
    header_sent: usize,
    /// Payload bytes written.
    written: u64,
    fin_sent: bool,
    /// Payload bytes received and checked.
    received: u64,
    /// Upload: the server's count.
    count: Vec<u8>,
}

#[derive(Default)]
struct ClientConn {
    opened: usize,
    done: usize,
    finished: bool,
}

pub struct LoadApp {
    cfg: LoadConfig,
    stats: Arc<LoadStats>,
    started: bool,
    conns: HashMap<ConnectionHandle, ClientConn>,
    streams: HashMap<(ConnectionHandle, StreamId), ClientStream>,
    finished: usize,
}

impl LoadApp {
    pub fn new(cfg: LoadConfig, stats: Arc<LoadStats>) -> Self {
        LoadApp {
            cfg,
            stats,
            started: false,
            conns: HashMap::new(),
            streams: HashMap::new(),
            finished: 0,
        }
    }

    fn to_write(&self) -> u64 {
        match self.cfg.mode {
            Mode::Download => 0,
            _ => self.cfg.bytes,
        }
    }

    fn open_streams(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        let mut opened = Vec::new();
        {
            let Some(c) = self.conns.get_mut(&ch) else {
                return;
            };
            let Some(conn) = io.conn(ch) else { return };
            while c.opened < self.cfg.streams {
                match conn.streams().open(Dir::Bi) {
                    Some(id) => {
                        c.opened += 1;
                        opened.push(id);
                    }
                    None => break, // wait for credit (StreamEvent::Available)
                }
            }
        }
        for id in opened {
            self.streams.insert((ch, id), ClientStream::default());
            self.drive(io, ch, id);
        }
    }

    fn drive(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
        let to_write = self.to_write();
        let (mode, bytes) = (self.cfg.mode, self.cfg.bytes);
        let Some(st) = self.streams.get_mut(&(ch, id)) else {
            return;
        };
        let now = io.now;
        let Some(conn) = io.conn(ch) else { return };
        let mut failure = None;
        let mut fin_in = false;
        let received_before = st.received;
        // Write as much as credit allows.
        let hdr = header(mode, bytes);
        let mut send = conn.send_stream(id);
        while st.header_sent < HEADER_LEN {
            match send.write(&hdr[st.header_sent..]) {
                Ok(n) => st.header_sent += n,
                Err(WriteError::Blocked) => break,
                Err(e) => {
                    failure = Some(format!("write: {e}"));
                    break;
                }
            }
        }
        while failure.is_none() && st.header_sent == HEADER_LEN && st.written < to_write {
            let n = (to_write - st.written).min(CHUNK as u64) as usize;
            match send.write(pattern(st.written, n)) {
                Ok(n) => {
                    st.written += n as u64;
                    self.stats.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                Err(WriteError::Blocked) => break,
                Err(e) => failure = Some(format!("write: {e}")),
            }
        }
        if failure.is_none()
            && st.header_sent == HEADER_LEN
            && st.written == to_write
            && !st.fin_sent
        {
            match send.finish() {
                Ok(()) | Err(FinishError::ClosedStream) => st.fin_sent = true,
                Err(e) => failure = Some(format!("finish: {e}")),
            }
        }
        // Read and check what arrived.
        if failure.is_none() {
            let stats = &self.stats;
            let r = stream::read(conn, id, CHUNK, |data| {
                if mode == Mode::Upload {
                    st.count.extend_from_slice(&data);
                    return CHUNK;
                }
                if data[..] != pattern(st.received, data.len())[..] {
                    failure = Some(format!(
                        "content mismatch at byte {} of stream {id}",
                        st.received
                    ));
                    return 0;
                }
                st.received += data.len() as u64;
                stats.bytes_received.fetch_add(data.len() as u64, Relaxed);
                CHUNK
            });
            match r.end {
                ReadEnd::Fin => fin_in = true,
                ReadEnd::Reset(code) => {
                    failure = Some(format!("stream {id} reset by server ({code})"))
                }
                ReadEnd::Closed => failure = Some("read: the stream is closed".into()),
                ReadEnd::Blocked | ReadEnd::Paused => {}
            }
        }
        if st.received > received_before {
            self.stats.received(now);
        }
        if fin_in && failure.is_none() {
            let ok = match mode {
                Mode::Upload => st.count == bytes.to_be_bytes(),
                _ => st.received == bytes,
            };
            if !ok {
                failure = Some(format!(
                    "stream {id} ended early: received {} of {bytes} bytes",
                    st.received
                ));
            }
        }
        if failure.is_none() && !fin_in {
            return;
        }
        if let Some(msg) = failure {
            self.stats.error(msg);
            let _ = conn.send_stream(id).reset(VarInt::from_u32(1));
            let _ = conn.recv_stream(id).stop(VarInt::from_u32(1));
        } else {
            self.stats.streams_done.fetch_add(1, Relaxed);
        }
        self.streams.remove(&(ch, id));
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        c.done += 1;
        if c.done == self.cfg.streams && !c.finished {
            c.finished = true;
            self.finished += 1;
            self.stats.connections_done.fetch_add(1, Relaxed);
            let now = io.now;
            if let Some(conn) = io.conn(ch) {
                conn.close(now, VarInt::from_u32(0), bytes::Bytes::from_static(b"done"));
            }
        }
    }
}

impl App for LoadApp {
    fn tick(&mut self, io: &mut Io<'_>) {
        if self.started {
            return;
        }
        self.started = true;
        for _ in 0..self.cfg.connections {
            match io.connect(self.cfg.server, &self.cfg.server_name) {
                Ok(ch) => {
                    self.conns.insert(ch, ClientConn::default());
                }
                Err(e) => {
                    self.stats.error(format!("connect: {e}"));
                    self.finished += 1;
                }
            }
        }
    }

    fn on_event(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, event: Event) {
        match event {
            Event::Connected => {
                if let Some(rate) = self.cfg.brutal_rate {
                    io.set_send_rate(ch, rate);
                }
                self.open_streams(io, ch)
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Bi }) => self.open_streams(io, ch),
            Event::Stream(StreamEvent::Readable { id })
            | Event::Stream(StreamEvent::Writable { id }) => self.drive(io, ch, id),
            Event::ConnectionLost { reason } => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    if !c.finished {
                        c.finished = true;
                        self.finished += 1;
                        self.stats.error(format!(
                            "connection lost after {} of {} streams: {reason}",
                            c.done, self.cfg.streams
                        ));
                    }
                }
                self.streams.retain(|(c, _), _| *c != ch);
            }
            _ => {}
        }
    }

    fn done(&self) -> bool {
        self.started && self.finished == self.cfg.connections
    }
}
