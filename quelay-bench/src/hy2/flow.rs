//! One proxy stream of the TCP scenarios: a Hysteria2 TCPRequest for the target, the
//! target's 9-byte header, the payload; then the server's TCPResponse and the target's
//! answer, every byte checked.
//!
//! Everything we send goes out at once, the TCPRequest coalesced with what follows (as
//! sing-box does), so a request/response costs one round trip through the server. Our FIN
//! goes after the last payload byte for uploads (the target reads until EOF), and after
//! the whole answer otherwise (a half-close towards a target that still writes is a case
//! some servers handle poorly, and this workload does not need it).

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use quinn_proto::{Connection, FinishError, StreamId, WriteError};

use super::stats::Stats;
use crate::target::{self, MODE_DOWNLOAD, MODE_REQUEST, MODE_UPLOAD};
use crate::{pattern, CHUNK};
use quelay::proto::tcp::{self, TcpRequest, TcpResponse, MAX_TCP_RESPONSE_LEN, REQUEST_PADDING};
use quelay::quic::stream::{self, ReadEnd};

/// What the stream asks of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Send `len` bytes; the target answers with its count.
    Upload,
    /// Receive `len` bytes.
    Download,
    /// Send `len` bytes, receive `len` bytes.
    Request,
}

/// Where a stream is after [`Flow::drive`].
pub enum Progress {
    Pending,
    Done,
    Failed(String),
}

pub struct Flow {
    kind: Kind,
    len: u64,
    /// TCPRequest and target header, then how much of it is written.
    head: Vec<u8>,
    head_written: usize,
    /// Payload bytes written.
    written: u64,
    fin_sent: bool,
    /// Stream bytes until the TCPResponse parsed; `None` once it has.
    response: Option<Vec<u8>>,
    /// Payload bytes received and checked.
    received: u64,
    /// Upload: the target's count.
    count: Vec<u8>,
    fin_received: bool,
    /// When the stream was opened: latencies count from here.
    pub started: Instant,
}

impl Flow {
    /// A stream to `target` (`host:port`). Fails only on an address the protocol cannot carry.
    pub fn new(kind: Kind, len: u64, target: &str, now: Instant) -> Result<Self, String> {
        let padding = tcp::padding(
            &mut rand::thread_rng(),
            REQUEST_PADDING.0,
            REQUEST_PADDING.1,
        );
        let mut head = Vec::with_capacity(16 + target.len() + padding.len());
        TcpRequest::encode(target, &padding, &mut head)
            .map_err(|e| format!("target {target}: {e}"))?;
        let mode = match kind {
            Kind::Upload => MODE_UPLOAD,
            Kind::Download => MODE_DOWNLOAD,
            Kind::Request => MODE_REQUEST,
        };
        head.extend_from_slice(&target::header(mode, len));
        Ok(Flow {
            kind,
            len,
            head,
            head_written: 0,
            written: 0,
            fin_sent: false,
            response: Some(Vec::new()),
            received: 0,
            count: Vec::new(),
            fin_received: false,
            started: now,
        })
    }

    fn to_send(&self) -> u64 {
        match self.kind {
            Kind::Download => 0,
            Kind::Upload | Kind::Request => self.len,
        }
    }

    /// Writes what flow control allows, reads and checks what arrived.
    pub fn drive(&mut self, conn: &mut Connection, id: StreamId, stats: &Stats) -> Progress {
        if let Err(e) = self.write(conn, id, stats) {
            return Progress::Failed(e);
        }
        if let Err(e) = self.read(conn, id, stats) {
            return Progress::Failed(e);
        }
        if !self.fin_received {
            return Progress::Pending;
        }
        let complete = match self.kind {
            Kind::Upload => self.count.len() == 8,
            Kind::Download | Kind::Request => self.received == self.len,
        };
        if !complete {
            return Progress::Failed(match self.response {
                Some(_) => "the server ended the stream without a TCPResponse".into(),
                None if self.kind == Kind::Upload => {
                    "the stream ended before the target's byte count".into()
                }
                None => format!(
                    "the stream ended after {} of {} bytes",
                    self.received, self.len
                ),
            });
        }
        if self.kind == Kind::Upload {
            let mut c = [0u8; 8];
            c.copy_from_slice(&self.count);
            let got = u64::from_be_bytes(c);
            if got != self.len {
                return Progress::Failed(format!(
                    "the target counted {got} of {} uploaded bytes",
                    self.len
                ));
            }
        }
        // The answer is complete: close our side too.
        if !self.fin_sent {
            match conn.send_stream(id).finish() {
                Ok(()) | Err(FinishError::ClosedStream) => self.fin_sent = true,
                Err(FinishError::Stopped(code)) => {
                    // The server stopped reading once the target closed (nothing was lost).
                    // A stopped stream cannot FIN; a reset tells the server its final size,
                    // without which it never frees the stream nor returns its credit.
                    let _ = conn.send_stream(id).reset(code);
                    self.fin_sent = true;
                }
            }
        }
        Progress::Done
    }

    fn write(&mut self, conn: &mut Connection, id: StreamId, stats: &Stats) -> Result<(), String> {
        if self.fin_sent {
            return Ok(());
        }
        let mut send = conn.send_stream(id);
        while self.head_written < self.head.len() {
            match send.write(&self.head[self.head_written..]) {
                Ok(n) => self.head_written += n,
                Err(WriteError::Blocked) => return Ok(()),
                Err(e) => return Err(write_error(e)),
            }
        }
        let total = self.to_send();
        while self.written < total {
            let n = (total - self.written).min(CHUNK as u64) as usize;
            match send.write(pattern(self.written, n)) {
                Ok(n) => {
                    self.written += n as u64;
                    Stats::add(&stats.bytes_sent, n as u64);
                }
                Err(WriteError::Blocked) => return Ok(()),
                Err(e) => return Err(write_error(e)),
            }
        }
        if self.kind == Kind::Upload {
            match send.finish() {
                Ok(()) | Err(FinishError::ClosedStream) => self.fin_sent = true,
                Err(FinishError::Stopped(code)) => {
                    return Err(format!("the server stopped the stream (code {code})"))
                }
            }
        }
        Ok(())
    }

    fn read(&mut self, conn: &mut Connection, id: StreamId, stats: &Stats) -> Result<(), String> {
        if self.fin_received {
            return Ok(());
        }
        let mut result = Ok(());
        let r = stream::read(conn, id, CHUNK, |bytes| {
            result = self.take(&bytes, &stats.bytes_received);
            if result.is_ok() {
                CHUNK
            } else {
                0
            }
        });
        result?;
        match r.end {
            ReadEnd::Fin => self.fin_received = true,
            ReadEnd::Reset(code) => {
                return Err(format!("the server reset the stream (code {code})"))
            }
            ReadEnd::Closed => return Err("read: the stream is closed".into()),
            ReadEnd::Blocked | ReadEnd::Paused => {}
        }
        Ok(())
    }

    /// Takes bytes the server sent: the TCPResponse first, then the target's answer.
    fn take(&mut self, data: &[u8], received: &AtomicU64) -> Result<(), String> {
        let Some(buf) = &mut self.response else {
            return self.check(data, received);
        };
        buf.extend_from_slice(data);
        match TcpResponse::parse(buf) {
            Ok(Some((resp, used))) => {
                if !resp.is_ok() {
                    return Err(format!(
                        "the server could not reach the target: {:?}",
                        resp.message
                    ));
                }
                let rest = buf.split_off(used);
                self.response = None;
                self.check(&rest, received)
            }
            Ok(None) if buf.len() > MAX_TCP_RESPONSE_LEN => {
                Err("the TCPResponse is longer than the protocol allows".into())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(format!("malformed TCPResponse: {e}")),
        }
    }

    /// Checks payload bytes against what the target sends.
    fn check(&mut self, data: &[u8], received: &AtomicU64) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        if self.kind == Kind::Upload {
            if self.count.len() + data.len() > 8 {
                return Err("the target sent more than its 8-byte count".into());
            }
            self.count.extend_from_slice(data);
            return Ok(());
        }
        if self.received + data.len() as u64 > self.len {
            return Err(format!(
                "the target sent more than the {} bytes asked for",
                self.len
            ));
        }
        for piece in data.chunks(CHUNK) {
            if piece != pattern(self.received, piece.len()) {
                return Err(format!("content mismatch at byte {}", self.received));
            }
            self.received += piece.len() as u64;
        }
        Stats::add(received, data.len() as u64);
        Ok(())
    }
}

fn write_error(e: WriteError) -> String {
    match e {
        WriteError::Stopped(code) => format!("the server stopped the stream (code {code})"),
        e => format!("write: {e}"),
    }
}
