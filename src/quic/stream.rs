//! Reading a QUIC receive stream: the one loop every reader uses (relay pipes, auth and
//! request parsers, the speed test, HTTP/3 control streams that are only drained).
//!
//! quinn-proto hands out a stream's data as [`Chunks`](quinn_proto::Chunks) that must be
//! finalized for the read bytes' credit to go back to the peer; [`read`] runs that loop and
//! says how it ended, so that no caller forgets the finalize or mixes up FIN and reset.

use bytes::Bytes;
use quinn_proto::{Connection, ReadError, StreamId, VarInt};

/// How a [`read`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// Everything that had arrived was read; more may come.
    Blocked,
    /// The reader wanted no more for now (its sink returned 0).
    Paused,
    /// The peer finished the stream and every byte was read.
    Fin,
    /// The peer reset the stream with this code.
    Reset(VarInt),
    /// The stream cannot be read: already finished and read, stopped, or unknown.
    Closed,
}

impl ReadEnd {
    /// Whether the peer will send nothing more on the stream (FIN, reset or gone).
    pub fn is_over(self) -> bool {
        !matches!(self, ReadEnd::Blocked | ReadEnd::Paused)
    }
}

/// What a [`read`] did: the bytes it passed to the sink, and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    pub bytes: u64,
    pub end: ReadEnd,
}

/// Reads what stream `id` has, in order, at most `want` bytes in the first chunk. Each chunk
/// goes to `sink`, which returns how many bytes it wants in the next one (0: stop for now).
/// The read bytes' flow-control credit is released before returning.
pub fn read(
    conn: &mut Connection,
    id: StreamId,
    mut want: usize,
    mut sink: impl FnMut(Bytes) -> usize,
) -> Read {
    let mut recv = conn.recv_stream(id);
    let Ok(mut chunks) = recv.read(true) else {
        return Read {
            bytes: 0,
            end: ReadEnd::Closed,
        };
    };
    let mut bytes = 0;
    let end = loop {
        if want == 0 {
            break ReadEnd::Paused;
        }
        match chunks.next(want) {
            Ok(Some(c)) => {
                bytes += c.bytes.len() as u64;
                want = sink(c.bytes);
            }
            Ok(None) => break ReadEnd::Fin,
            Err(ReadError::Blocked) => break ReadEnd::Blocked,
            Err(ReadError::Reset(code)) => break ReadEnd::Reset(code),
        }
    };
    // Whether quinn-proto wants a transmit after this is reported by its own poll.
    let _ = chunks.finalize();
    Read { bytes, end }
}

/// Reads and discards what stream `id` has (a peer's HTTP/3 control or QPACK stream).
pub fn discard(conn: &mut Connection, id: StreamId) -> ReadEnd {
    read(conn, id, usize::MAX, |_| usize::MAX).end
}

/// Reads what stream `id` has into `out`, until `out` holds `limit` bytes.
pub fn read_into(conn: &mut Connection, id: StreamId, out: &mut Vec<u8>, limit: usize) -> Read {
    let room = |out: &Vec<u8>| limit.saturating_sub(out.len());
    let first = room(out);
    read(conn, id, first, |b| {
        out.extend_from_slice(&b);
        room(out)
    })
}
