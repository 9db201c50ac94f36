//! The official speed test (`speedTest: true`), spoken on a proxy stream to a special address.
//!
//! A client opens an ordinary proxy stream (TCPRequest) to [`SPEEDTEST_ADDR`]; a server with
//! the speed test enabled answers it with a normal TCPResponse and then, instead of relaying,
//! speaks this protocol on the rest of the stream (official `extras/outbounds/speedtest/`):
//!
//! ```text
//! Request (client → server):  u8 type (1 = download, 2 = upload) | u32 BE size
//! Response (server → client): u8 status (0 = ok, 1 = error) | u16 BE msg_len | msg
//! download: server sends `size` bytes, then closes the stream
//! upload:   client sends `size` bytes; server answers with an UploadSummary and closes
//! UploadSummary:              u32 BE elapsed milliseconds | u32 BE bytes received
//! ```
//! All integers are big-endian and fixed-width (no varints here). Each stream carries one test.
//! Parsers follow the crate's stream contract: `Ok(None)` for a prefix, `Ok(Some((msg, used)))`
//! once complete, `Err` when the bytes can never become valid.

use std::fmt;
use std::time::Duration;

/// The host a client dials to reach the speed test (official `outbounds.SpeedtestDest`).
/// The official server matches the host only; any port is accepted.
pub const SPEEDTEST_HOST: &str = "@SpeedTest";
/// The address the official client dials (`app/cmd/speedtest.go`: `SpeedtestDest` + `:0`).
pub const SPEEDTEST_ADDR: &str = "@SpeedTest:0";

/// Request type: the server sends `size` bytes.
pub const TYPE_DOWNLOAD: u8 = 0x01;
/// Request type: the client sends `size` bytes.
pub const TYPE_UPLOAD: u8 = 0x02;
/// A request is always this long: type + u32 size.
pub const REQUEST_LEN: usize = 5;
/// An upload summary is always this long: two u32s.
pub const SUMMARY_LEN: usize = 8;
/// Response status: the test starts.
pub const STATUS_OK: u8 = 0x00;
/// Response status: refused (the message says why). Readers treat any non-zero value as this.
pub const STATUS_ERROR: u8 = 0x01;
/// The message the official server puts in every OK response.
pub const OK_MESSAGE: &str = "OK";
/// Response messages carry a u16 length.
pub const MAX_MESSAGE_LENGTH: usize = u16::MAX as usize;
/// The official client and server move data in pieces of this size (`chunkSize`).
pub const CHUNK_SIZE: usize = 64 * 1024;

/// What is wrong with speed-test bytes, or with arguments handed to an encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeedTestError {
    /// The peer's fault: the request type is neither download nor upload.
    UnknownType(u8),
    /// Encode: a response message longer than its u16 length field allows.
    MessageTooLong(usize),
}

impl fmt::Display for SpeedTestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownType(t) => write!(f, "unknown speed test request type {t}"),
            Self::MessageTooLong(n) => write!(f, "speed test message of {n} bytes above 65535"),
        }
    }
}

impl std::error::Error for SpeedTestError {}

/// Whether a TCPRequest address asks for the speed test: host [`SPEEDTEST_HOST`] (exactly,
/// as the official `speedtestHandler` compares it) with a port Go's `net.SplitHostPort` and
/// `strconv.Atoi` accept, so `@SpeedTest:0`, `@SpeedTest:443` and `[@SpeedTest]:0` all match.
pub fn is_speedtest_addr(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // Rust's i64 parsing accepts exactly what Go's strconv.Atoi does: an optional sign and
    // decimal digits that fit an int64.
    host == SPEEDTEST_HOST && port.parse::<i64>().is_ok()
}

/// The client's request: which direction and how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The server sends this many bytes.
    Download(u32),
    /// The client sends this many bytes.
    Upload(u32),
}

impl Request {
    /// Parses a request from the start of the speed-test stream (right after the
    /// TCPRequest). Bytes past `used` are upload data.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, SpeedTestError> {
        let Some(&ty) = buf.first() else {
            return Ok(None);
        };
        // The type is checked before the size arrives, as the official server reads it alone.
        let make = match ty {
            TYPE_DOWNLOAD => Self::Download,
            TYPE_UPLOAD => Self::Upload,
            t => return Err(SpeedTestError::UnknownType(t)),
        };
        let Some(size) = be_u32(buf, 1) else {
            return Ok(None);
        };
        Ok(Some((make(size), REQUEST_LEN)))
    }

    /// Appends the request to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (ty, size) = match *self {
            Self::Download(n) => (TYPE_DOWNLOAD, n),
            Self::Upload(n) => (TYPE_UPLOAD, n),
        };
        out.push(ty);
        out.extend_from_slice(&size.to_be_bytes());
    }

    /// The number of test bytes either way.
    pub fn size(&self) -> u32 {
        match *self {
            Self::Download(n) | Self::Upload(n) => n,
        }
    }
}

/// The server's answer to a [`Request`]; download and upload responses share one layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// [`STATUS_OK`] or a refusal.
    pub status: u8,
    /// Official: `"OK"`. Invalid UTF-8 is replaced, since only the status matters.
    pub message: String,
}

impl Response {
    /// Whether the test goes ahead (the official client checks `status == 0`).
    pub fn is_ok(&self) -> bool {
        self.status == STATUS_OK
    }

    /// Parses a response; bytes past `used` are download data or the upload summary.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, SpeedTestError> {
        let Some(&status) = buf.first() else {
            return Ok(None);
        };
        let Some(len) = buf.get(1..3) else {
            return Ok(None);
        };
        let end = 3 + usize::from(u16::from_be_bytes([len[0], len[1]]));
        let Some(message) = buf.get(3..end) else {
            return Ok(None);
        };
        let message = String::from_utf8_lossy(message).into_owned();
        Ok(Some((Self { status, message }, end)))
    }

    /// Appends a response to `out`; `out` is untouched on error.
    pub fn encode(status: u8, message: &str, out: &mut Vec<u8>) -> Result<(), SpeedTestError> {
        let len = u16::try_from(message.len())
            .map_err(|_| SpeedTestError::MessageTooLong(message.len()))?;
        out.reserve(3 + message.len());
        out.push(status);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(message.as_bytes());
        Ok(())
    }

    /// Appends the OK response the official server sends (`00 00 02 "OK"`).
    pub fn encode_ok(out: &mut Vec<u8>) {
        out.extend_from_slice(&[STATUS_OK, 0x00, OK_MESSAGE.len() as u8]);
        out.extend_from_slice(OK_MESSAGE.as_bytes());
    }
}

/// What the server measured for an upload; it closes the stream after sending this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSummary {
    /// From the response being sent to the last byte read, in whole milliseconds.
    pub elapsed_ms: u32,
    /// Bytes received (the official server only answers once all requested bytes are in).
    pub received: u32,
}

impl UploadSummary {
    /// A summary for `elapsed` (truncated to milliseconds, as Go's `duration/time.Millisecond`;
    /// saturating past 49 days where Go's `uint32` conversion would wrap).
    pub fn new(elapsed: Duration, received: u32) -> Self {
        Self {
            elapsed_ms: u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX),
            received,
        }
    }

    /// The elapsed time as a [`Duration`].
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(u64::from(self.elapsed_ms))
    }

    /// Parses a summary; a fixed 8 bytes, so only `Ok(None)` or `Ok(Some(..))`.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, SpeedTestError> {
        let (Some(elapsed_ms), Some(received)) = (be_u32(buf, 0), be_u32(buf, 4)) else {
            return Ok(None);
        };
        Ok(Some((
            Self {
                elapsed_ms,
                received,
            },
            SUMMARY_LEN,
        )))
    }

    /// Appends the summary to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.elapsed_ms.to_be_bytes());
        out.extend_from_slice(&self.received.to_be_bytes());
    }
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    //! Byte vectors come from the official `extras/outbounds/speedtest/protocol_test.go`
    //! (named per test); the `read*Request` vectors there start after the type byte, which
    //! `server.go` (`server`) reads on its own, so it is prepended here.

    use super::*;

    fn request(r: Request) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode(&mut out);
        out
    }

    fn response(status: u8, msg: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Response::encode(status, msg, &mut out).unwrap();
        out
    }

    fn summary(s: UploadSummary) -> Vec<u8> {
        let mut out = Vec::new();
        s.encode(&mut out);
        out
    }

    /// `TestWriteDownloadRequest` and `TestWriteUploadRequest` (`writeDownloadRequest`,
    /// `writeUploadRequest`).
    #[test]
    fn request_encode_official_vectors() {
        assert_eq!(
            request(Request::Download(78909912)),
            b"\x01\x04\xB4\x11\xD8"
        );
        assert_eq!(request(Request::Download(0)), b"\x01\x00\x00\x00\x00");
        assert_eq!(
            request(Request::Upload(2291758882)),
            b"\x02\x88\x99\x77\x22"
        );
        assert_eq!(request(Request::Upload(0)), b"\x02\x00\x00\x00\x00");
    }

    /// `TestReadDownloadRequest` and `TestReadUploadRequest` (`readDownloadRequest`,
    /// `readUploadRequest`) with the type byte prepended; their "incomplete" cases are
    /// prefixes here.
    #[test]
    fn request_parse_official_vectors() {
        let cases: [(&[u8], Request); 4] = [
            (&[0x01, 0x00, 0x01, 0xBD, 0xC2], Request::Download(114114)),
            (&[0x01, 0x00, 0x00, 0x00, 0x00], Request::Download(0)),
            (&[0x02, 0x00, 0x00, 0x26, 0xEE], Request::Upload(9966)),
            (&[0x02, 0x00, 0x00, 0x00, 0x00], Request::Upload(0)),
        ];
        for (bytes, want) in cases {
            assert_eq!(Request::parse(bytes), Ok(Some((want, REQUEST_LEN))));
            assert_eq!(request(want), bytes);
        }
        assert_eq!(Request::parse(&[0x01, 0x00, 0x01, 0x02]), Ok(None));
        assert_eq!(Request::parse(&[0x02, 0x01]), Ok(None));
    }

    #[test]
    fn request_prefixes_and_trailing_data() {
        let mut bytes = request(Request::Upload(3));
        for n in 0..bytes.len() {
            assert_eq!(Request::parse(&bytes[..n]), Ok(None), "prefix {n}");
        }
        bytes.extend_from_slice(b"abc");
        let (req, used) = Request::parse(&bytes).unwrap().unwrap();
        assert_eq!((req, req.size()), (Request::Upload(3), 3));
        assert_eq!(&bytes[used..], b"abc");
    }

    /// `server.go` (`server`) refuses any other type as soon as the first byte is in.
    #[test]
    fn request_unknown_type() {
        for t in [0x00, 0x03, 0x44, 0xff] {
            assert_eq!(Request::parse(&[t]), Err(SpeedTestError::UnknownType(t)));
            assert_eq!(
                Request::parse(&[t, 0, 0, 0, 1]),
                Err(SpeedTestError::UnknownType(t))
            );
        }
    }

    /// `TestWriteDownloadResponse` and `TestWriteUploadResponse` (`writeDownloadResponse`,
    /// `writeUploadResponse`: one layout).
    #[test]
    fn response_encode_official_vectors() {
        assert_eq!(response(STATUS_OK, "wahaha"), b"\x00\x00\x06wahaha");
        assert_eq!(response(STATUS_ERROR, "bullbull"), b"\x01\x00\x08bullbull");
        assert_eq!(response(STATUS_OK, ""), b"\x00\x00\x00");
        assert_eq!(response(STATUS_OK, "lul"), b"\x00\x00\x03lul");
        assert_eq!(response(STATUS_ERROR, "notforu"), b"\x01\x00\x07notforu");
    }

    /// `server.go` (`handleDownload`, `handleUpload`): `write*Response(conn, true, "OK")`.
    #[test]
    fn ok_response_is_the_official_one() {
        let mut out = Vec::new();
        Response::encode_ok(&mut out);
        assert_eq!(out, b"\x00\x00\x02OK");
        assert_eq!(out, response(STATUS_OK, OK_MESSAGE));
    }

    /// `TestReadDownloadResponse` and `TestReadUploadResponse` (`readDownloadResponse`,
    /// `readUploadResponse`).
    #[test]
    fn response_parse_official_vectors() {
        let parse = |b: &[u8]| Response::parse(b).unwrap().unwrap();
        let (r, used) = parse(&[0x0, 0x0, 0x2, 0x41, 0x42]);
        assert!(r.is_ok());
        assert_eq!((r.message.as_str(), used), ("AB", 5));
        // "normal ok no message" (download variant has one byte after the response).
        let (r, used) = parse(&[0x0, 0x0, 0x0, 0x0]);
        assert!(r.is_ok());
        assert_eq!((r.message.as_str(), used), ("", 3));
        let (r, used) = parse(&[0x0, 0x0, 0x0]);
        assert_eq!((r.is_ok(), used), (true, 3));
        let (r, used) = parse(&[0x1, 0x0, 0x2, 0x43, 0x44]);
        assert!(!r.is_ok());
        assert_eq!((r.message.as_str(), used), ("CD", 5));
        // "incomplete": a 0x9999-byte message with three bytes present.
        assert_eq!(
            Response::parse(&[0x0, 0x99, 0x99, 0x45, 0x46, 0x47]),
            Ok(None)
        );
    }

    #[test]
    fn response_prefixes_and_limits() {
        let bytes = response(STATUS_OK, OK_MESSAGE);
        for n in 0..bytes.len() {
            assert_eq!(Response::parse(&bytes[..n]), Ok(None), "prefix {n}");
        }
        let long = "x".repeat(MAX_MESSAGE_LENGTH);
        let bytes = response(STATUS_ERROR, &long);
        assert_eq!(&bytes[..3], b"\x01\xff\xff");
        let (r, used) = Response::parse(&bytes).unwrap().unwrap();
        assert_eq!((r.message.len(), used), (MAX_MESSAGE_LENGTH, bytes.len()));
        let mut out = vec![0xaa];
        let too_long = "x".repeat(MAX_MESSAGE_LENGTH + 1);
        assert_eq!(
            Response::encode(STATUS_ERROR, &too_long, &mut out),
            Err(SpeedTestError::MessageTooLong(MAX_MESSAGE_LENGTH + 1))
        );
        assert_eq!(out, [0xaa]);
        // Non-UTF-8 messages are replaced, not refused.
        let (r, _) = Response::parse(&[0x07, 0x00, 0x01, 0xff]).unwrap().unwrap();
        assert_eq!((r.status, r.message.as_str()), (7, "\u{fffd}"));
    }

    /// `TestWriteUploadSummary` and `TestReadUploadSummary` (`writeUploadSummary`,
    /// `readUploadSummary`).
    #[test]
    fn summary_official_vectors() {
        let s = UploadSummary::new(Duration::from_millis(5230), 2500000);
        assert_eq!(s.elapsed_ms, 5230);
        assert_eq!(summary(s), b"\x00\x00\x14\x6E\x00\x26\x25\xA0");
        assert_eq!(
            UploadSummary::parse(b"\x00\x00\x14\x6E\x00\x26\x25\xA0"),
            Ok(Some((s, SUMMARY_LEN)))
        );
        assert_eq!(s.elapsed(), Duration::from_millis(5230));
        let zero = UploadSummary::new(Duration::ZERO, 0);
        assert_eq!(summary(zero), [0u8; 8]);
        assert_eq!(UploadSummary::parse(&[0; 8]), Ok(Some((zero, SUMMARY_LEN))));
        assert_eq!(UploadSummary::parse(&[0; 6]), Ok(None));
    }

    #[test]
    fn summary_truncates_and_saturates() {
        // Go: uint32(duration / time.Millisecond) truncates sub-millisecond time.
        let s = UploadSummary::new(Duration::from_micros(1999), 1);
        assert_eq!(s.elapsed_ms, 1);
        let s = UploadSummary::new(Duration::from_secs(u64::MAX / 2), 1);
        assert_eq!(s.elapsed_ms, u32::MAX);
    }

    /// `extras/outbounds/speedtest.go` (`speedtestHandler.TCP`) compares the host after
    /// `interface.go` (`PluggableOutboundAdapter.DialTCP`) split it with `net.SplitHostPort`.
    #[test]
    fn speedtest_addresses() {
        for yes in [
            SPEEDTEST_ADDR,
            "@SpeedTest:443",
            "[@SpeedTest]:0",
            "@SpeedTest:+1",
        ] {
            assert!(is_speedtest_addr(yes), "{yes}");
        }
        for no in [
            "@speedtest:0",
            "@SpeedTest",
            "@SpeedTest:",
            "@SpeedTest:x",
            "@SpeedTest:99999999999999999999",
            "SpeedTest:0",
            "@SpeedTest.:0",
            "a@SpeedTest:0",
            "example.com:443",
            ":0",
            "",
        ] {
            assert!(!is_speedtest_addr(no), "{no}");
        }
    }
}
