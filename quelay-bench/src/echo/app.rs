//! The server side of the raw workload: echo, sink or source per stream.
//!
//! Backpressure: a stream is read only while its echo bytes fit the send side, so a
//! client that does not read its echoes stalls its own stream, not the worker.

use std::collections::HashMap;

use quinn_proto::{
    ConnectionHandle, Dir, Event, FinishError, StreamEvent, StreamId, VarInt, WriteError,
};

use crate::{pattern, Mode, CHUNK, HEADER_LEN};
use quelay::quic::stream::{self, ReadEnd};
use quelay::worker::{App, Io};

/// Echo bytes held per stream before reading pauses.
const MAX_PENDING: usize = 256 * 1024;

#[derive(Default)]
struct Stream {
    header: Vec<u8>,
    mode: Option<Mode>,
    /// Download: bytes still to generate.
    remaining: u64,
    /// Download: bytes generated so far (pattern offset).
    generated: u64,
    /// Upload: bytes received after the header.
    received: u64,
    /// Upload: the byte count has been queued for sending.
    count_queued: bool,
    /// Bytes waiting for send credit.
    pending: Vec<u8>,
    pending_off: usize,
    /// The client finished its side.
    fin_in: bool,
    /// We finished ours.
    fin_out: bool,
}

#[derive(Default)]
pub struct EchoApp {
    streams: HashMap<(ConnectionHandle, StreamId), Stream>,
    /// Streams reset or stopped by peers, or malformed.
    pub aborted: u64,
    /// Brutal send rate (bytes/s) for every connection; `None` keeps the configured
    /// controller.
    brutal_rate: Option<u64>,
}

impl EchoApp {
    pub fn new() -> Self {
        Self::default()
    }

    /// An echo app that sends on every connection with Brutal at `bytes_per_sec`.
    pub fn with_brutal_rate(bytes_per_sec: Option<u64>) -> Self {
        EchoApp {
            brutal_rate: bytes_per_sec,
            ..Self::default()
        }
    }

    fn drive(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, id: StreamId) {
        let Some(st) = self.streams.get_mut(&(ch, id)) else {
            return;
        };
        let Some(conn) = io.conn(ch) else {
            self.streams.remove(&(ch, id));
            return;
        };
        let mut abort = false;
        'outer: loop {
            // Flush what is pending.
            while st.pending_off < st.pending.len() {
                match conn.send_stream(id).write(&st.pending[st.pending_off..]) {
                    Ok(n) => st.pending_off += n,
                    Err(WriteError::Blocked) => break 'outer,
                    Err(_) => {
                        abort = true;
                        break 'outer;
                    }
                }
            }
            st.pending.clear();
            st.pending_off = 0;
            if st.mode == Some(Mode::Download) && st.remaining > 0 {
                let n = st.remaining.min(CHUNK as u64) as usize;
                st.pending.extend_from_slice(pattern(st.generated, n));
                st.generated += n as u64;
                st.remaining -= n as u64;
                continue;
            }
            if st.fin_in && !st.fin_out {
                if st.mode == Some(Mode::Upload) && !st.count_queued {
                    st.pending.extend_from_slice(&st.received.to_be_bytes());
                    st.count_queued = true;
                    continue;
                }
                let download_done = st.mode != Some(Mode::Download) || st.remaining == 0;
                if download_done {
                    match conn.send_stream(id).finish() {
                        Ok(()) | Err(FinishError::ClosedStream) => {}
                        Err(FinishError::Stopped(_)) => abort = true,
                    }
                    st.fin_out = true;
                }
            }
            if st.fin_in || st.pending.len() >= MAX_PENDING {
                break;
            }
            // Read what fits.
            let r = stream::read(conn, id, CHUNK, |data| {
                let mut data = &data[..];
                if st.mode.is_none() {
                    let take = (HEADER_LEN - st.header.len()).min(data.len());
                    st.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if st.header.len() == HEADER_LEN {
                        let Some(mode) = Mode::from_byte(st.header[0]) else {
                            abort = true;
                            return 0;
                        };
                        st.mode = Some(mode);
                        let n = u64::from_be_bytes(st.header[1..9].try_into().unwrap());
                        if mode == Mode::Download {
                            st.remaining = n;
                        }
                    }
                }
                match st.mode {
                    Some(Mode::Echo) => st.pending.extend_from_slice(data),
                    Some(Mode::Upload) => st.received += data.len() as u64,
                    _ => {}
                }
                if st.pending.len() >= MAX_PENDING {
                    0
                } else {
                    CHUNK
                }
            });
            match r.end {
                ReadEnd::Fin => st.fin_in = true,
                ReadEnd::Reset(_) | ReadEnd::Closed => abort = true,
                ReadEnd::Blocked | ReadEnd::Paused => {}
            }
            if abort || (r.bytes == 0 && r.end != ReadEnd::Fin) {
                break;
            }
        }
        if abort {
            self.aborted += 1;
            let _ = conn.recv_stream(id).stop(VarInt::from_u32(1));
            let _ = conn.send_stream(id).reset(VarInt::from_u32(1));
            self.streams.remove(&(ch, id));
        } else if st.fin_in && st.fin_out {
            // Both halves done: quinn returns the stream credit once the FIN is acked.
            self.streams.remove(&(ch, id));
        }
    }
}

impl App for EchoApp {
    fn on_event(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, event: Event) {
        match event {
            Event::Connected => {
                if let Some(rate) = self.brutal_rate {
                    io.set_send_rate(ch, rate);
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                let mut opened = Vec::new();
                if let Some(conn) = io.conn(ch) {
                    while let Some(id) = conn.streams().accept(Dir::Bi) {
                        opened.push(id);
                    }
                }
                for id in opened {
                    self.streams.insert((ch, id), Stream::default());
                    self.drive(io, ch, id);
                }
            }
            Event::Stream(StreamEvent::Readable { id })
            | Event::Stream(StreamEvent::Writable { id }) => self.drive(io, ch, id),
            Event::Stream(StreamEvent::Stopped { id, .. }) => {
                if let Some(conn) = io.conn(ch) {
                    let _ = conn.recv_stream(id).stop(VarInt::from_u32(0));
                }
                if self.streams.remove(&(ch, id)).is_some() {
                    self.aborted += 1;
                }
            }
            Event::ConnectionLost { .. } => self.streams.retain(|(c, _), _| *c != ch),
            _ => {}
        }
    }
}
