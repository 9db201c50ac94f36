//! TCP proxying: the TCPRequest / TCPResponse header at the start of a proxy stream.
//!
//! ```text
//! TCPRequest:  varint 0x401 | varint addr_len | addr | varint padding_len | padding
//! TCPResponse: u8 status    | varint msg_len  | msg  | varint padding_len | padding
//! ```
//! Raw relay bytes follow either header on the same stream, possibly in the same read
//! (sing-box coalesces them), so the parsers report how many bytes the header used.

use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};

pub use super::addr::{split_host_port, split_host_port_bytes, Host};
use super::{varint, AddressError, ProtoError};

/// The frame type that opens a proxy stream (above every HTTP/3 frame type).
pub const TCP_REQUEST_TYPE: u64 = 0x401;
/// Longest address, in bytes (`MaxAddressLength`).
pub const MAX_ADDRESS_LENGTH: usize = 2048;
/// Longest padding, in bytes (`MaxPaddingLength`).
pub const MAX_PADDING_LENGTH: usize = 4096;
/// Longest TCPResponse message, in bytes (`MaxMessageLength`).
pub const MAX_MESSAGE_LENGTH: usize = 2048;

/// The most bytes a valid TCPRequest can take (every varint in its longest form), so the most
/// a reader buffers before [`TcpRequest::parse`] must have answered.
pub const MAX_TCP_REQUEST_LEN: usize =
    3 * varint::MAX_LEN + MAX_ADDRESS_LENGTH + MAX_PADDING_LENGTH;
/// The most bytes a valid TCPResponse can take.
pub const MAX_TCP_RESPONSE_LEN: usize =
    1 + 2 * varint::MAX_LEN + MAX_MESSAGE_LENGTH + MAX_PADDING_LENGTH;

/// TCPResponse status for a successful dial; any other value is a failure.
pub const STATUS_OK: u8 = 0x00;
/// The failure status senders use.
pub const STATUS_ERROR: u8 = 0x01;

/// Padding lengths the official client puts on a TCPRequest: `64..512`.
pub const REQUEST_PADDING: (usize, usize) = (64, 512);
/// Padding lengths the official server puts on a TCPResponse: `128..1024`.
pub const RESPONSE_PADDING: (usize, usize) = (128, 1024);

/// How a new client bidi stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// The first varint is not complete yet.
    NeedMore,
    /// 0x401: a TCPRequest. Only a proxy stream if the connection already authenticated;
    /// before that the official server parses it as HTTP/3 (reference §3.4).
    Proxy,
    /// Anything else: an HTTP/3 request stream.
    Http3,
}

impl StreamStart {
    /// Looks at the first varint of a client-initiated bidi stream.
    pub fn classify(buf: &[u8]) -> Self {
        match varint::decode(buf) {
            Some((TCP_REQUEST_TYPE, _)) => Self::Proxy,
            Some(_) => Self::Http3,
            None => Self::NeedMore,
        }
    }
}

/// The client's request to open a TCP connection to `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRequest {
    /// Destination as `host:port`, already checked by [`split_host_port`].
    pub addr: String,
}

impl TcpRequest {
    /// Parses a TCPRequest from the start of a stream (`buf` begins with the 0x401 varint).
    ///
    /// Returns the request and the bytes it used; anything after that is payload.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtoError> {
        let Some((ty, n)) = varint::decode(buf) else {
            return Ok(None);
        };
        if ty != TCP_REQUEST_TYPE {
            return Err(ProtoError::UnexpectedType(ty));
        }
        Ok(Self::parse_after_type(&buf[n..])?.map(|(req, used)| (req, n + used)))
    }

    /// Parses a TCPRequest whose type varint the caller already consumed (`buf` begins with
    /// the address length), as the official server's stream hook does.
    pub fn parse_after_type(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtoError> {
        let mut r = Reader { buf, pos: 0 };
        let Some(len) = r.varint()? else {
            return Ok(None);
        };
        check_address_len(len)?;
        let Some(addr) = r.take(len as usize) else {
            return Ok(None);
        };
        // Checked as soon as it arrives, so a bad address fails without waiting for padding.
        let addr = std::str::from_utf8(addr).map_err(|_| AddressError::NotUtf8)?;
        // The speed test's pseudo-address (`@SpeedTest:0`) is no host name; servers with
        // `speedTest` on answer it themselves, others refuse it like any bad target.
        if !super::speedtest::is_speedtest_addr(addr) {
            split_host_port(addr)?;
        }
        if r.padding()?.is_none() {
            return Ok(None);
        }
        Ok(Some((
            Self {
                addr: addr.to_owned(),
            },
            r.pos,
        )))
    }

    /// Appends a TCPRequest for `addr` (checked with [`split_host_port`], or the speed
    /// test's pseudo-address) to `out`.
    /// `out` is untouched on error.
    pub fn encode(addr: &str, padding: &[u8], out: &mut Vec<u8>) -> Result<(), ProtoError> {
        check_address_len(addr.len() as u64)?;
        if !super::speedtest::is_speedtest_addr(addr) {
            split_host_port(addr)?;
        }
        check_padding_len(padding.len())?;
        out.reserve(2 + 2 + addr.len() + 2 + padding.len());
        varint::encode(TCP_REQUEST_TYPE, out)?;
        varint::encode_len(addr.len(), out)?;
        out.extend_from_slice(addr.as_bytes());
        varint::encode_len(padding.len(), out)?;
        out.extend_from_slice(padding);
        Ok(())
    }
}

/// The server's answer to a [`TcpRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpResponse {
    /// [`STATUS_OK`] or a failure.
    pub status: u8,
    /// Official: `"Connected"` or the dial error; sing-box: empty. Invalid UTF-8 is replaced,
    /// since only the status matters.
    pub message: String,
}

impl TcpResponse {
    /// Whether the server connected.
    pub fn is_ok(&self) -> bool {
        self.status == STATUS_OK
    }

    /// Parses a TCPResponse from the start of a stream; same contract as [`TcpRequest::parse`].
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtoError> {
        let mut r = Reader { buf, pos: 0 };
        let Some(&[status]) = r.take(1) else {
            return Ok(None);
        };
        let Some(len) = r.varint()? else {
            return Ok(None);
        };
        if len > MAX_MESSAGE_LENGTH as u64 {
            return Err(ProtoError::MessageTooLong(len));
        }
        let Some(message) = r.take(len as usize) else {
            return Ok(None);
        };
        if r.padding()?.is_none() {
            return Ok(None);
        }
        let message = String::from_utf8_lossy(message).into_owned();
        Ok(Some((Self { status, message }, r.pos)))
    }

    /// Appends a TCPResponse to `out`; `out` is untouched on error.
    pub fn encode(
        status: u8,
        message: &str,
        padding: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtoError> {
        if message.len() > MAX_MESSAGE_LENGTH {
            return Err(ProtoError::MessageTooLong(message.len() as u64));
        }
        check_padding_len(padding.len())?;
        out.reserve(1 + 2 + message.len() + 2 + padding.len());
        out.push(status);
        varint::encode_len(message.len(), out)?;
        out.extend_from_slice(message.as_bytes());
        varint::encode_len(padding.len(), out)?;
        out.extend_from_slice(padding);
        Ok(())
    }
}

/// Random alphanumeric padding of a length in `min..max` (Go `padding.String()`), or exactly
/// `min` when `max <= min`; lengths are capped at [`MAX_PADDING_LENGTH`].
pub fn padding<R: RngCore + ?Sized>(rng: &mut R, min: usize, max: usize) -> Vec<u8> {
    let min = min.min(MAX_PADDING_LENGTH);
    let max = max.min(MAX_PADDING_LENGTH + 1);
    let len = if max > min {
        rng.gen_range(min..max)
    } else {
        min
    };
    (0..len).map(|_| rng.sample(Alphanumeric)).collect()
}

fn check_address_len(len: u64) -> Result<(), ProtoError> {
    match len {
        0 => Err(ProtoError::EmptyAddress),
        n if n > MAX_ADDRESS_LENGTH as u64 => Err(ProtoError::AddressTooLong(n)),
        _ => Ok(()),
    }
}

fn check_padding_len(len: usize) -> Result<(), ProtoError> {
    if len > MAX_PADDING_LENGTH {
        return Err(ProtoError::PaddingTooLong(len as u64));
    }
    Ok(())
}

/// A cursor over a stream prefix: `None` means "not here yet".
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<Option<u64>, ProtoError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        Ok(varint::decode(rest).map(|(v, n)| {
            self.pos += n;
            v
        }))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    /// Length-checked padding, skipped.
    fn padding(&mut self) -> Result<Option<()>, ProtoError> {
        let Some(len) = self.varint()? else {
            return Ok(None);
        };
        if len > MAX_PADDING_LENGTH as u64 {
            return Err(ProtoError::PaddingTooLong(len));
        }
        Ok(self.take(len as usize).map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Reference §3.1: `44 01 0f "example.com:443" 40 64 <100 bytes>`.
    fn request_example() -> Vec<u8> {
        let mut v = vec![0x44, 0x01, 0x0f];
        v.extend_from_slice(b"example.com:443");
        v.extend_from_slice(&[0x40, 0x64]);
        v.extend_from_slice(&[b'p'; 100]);
        v
    }

    /// Reference §3.2: `00 09 "Connected" 40 c8 <200 bytes>`.
    fn response_example() -> Vec<u8> {
        let mut v = vec![0x00, 0x09];
        v.extend_from_slice(b"Connected");
        v.extend_from_slice(&[0x40, 0xc8]);
        v.extend_from_slice(&[b'p'; 200]);
        v
    }

    #[test]
    fn request_reference_example() {
        let bytes = request_example();
        let mut out = Vec::new();
        TcpRequest::encode("example.com:443", &[b'p'; 100], &mut out).unwrap();
        assert_eq!(out, bytes);
        let (req, used) = TcpRequest::parse(&bytes).unwrap().unwrap();
        assert_eq!(req.addr, "example.com:443");
        assert_eq!(used, 2 + 1 + 15 + 2 + 100);
        let (req2, used2) = TcpRequest::parse_after_type(&bytes[2..]).unwrap().unwrap();
        assert_eq!((req2, used2), (req, used - 2));
    }

    #[test]
    fn request_coalesced_with_payload() {
        let mut bytes = request_example();
        let header = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let (req, used) = TcpRequest::parse(&bytes).unwrap().unwrap();
        assert_eq!(req.addr, "example.com:443");
        assert_eq!(used, header);
        assert_eq!(&bytes[used..], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn request_truncated_at_every_byte() {
        let bytes = request_example();
        for n in 0..bytes.len() {
            assert_eq!(TcpRequest::parse(&bytes[..n]), Ok(None), "prefix {n}");
        }
        for n in 0..bytes.len() - 2 {
            assert_eq!(TcpRequest::parse_after_type(&bytes[2..2 + n]), Ok(None));
        }
    }

    #[test]
    fn request_non_minimal_varints() {
        let mut bytes = vec![0x80, 0x00, 0x04, 0x01, 0x40, 0x0a];
        bytes.extend_from_slice(b"1.1.1.1:53");
        bytes.extend_from_slice(&[0x80, 0, 0, 0]);
        let (req, used) = TcpRequest::parse(&bytes).unwrap().unwrap();
        assert_eq!((req.addr.as_str(), used), ("1.1.1.1:53", bytes.len()));
    }

    #[test]
    fn request_errors() {
        assert_eq!(
            TcpRequest::parse(&[0x44, 0x02, 0x01]),
            Err(ProtoError::UnexpectedType(0x402))
        );
        assert_eq!(
            TcpRequest::parse(&[0x00]),
            Err(ProtoError::UnexpectedType(0))
        );
        assert_eq!(
            TcpRequest::parse(&[0x44, 0x01, 0x00]),
            Err(ProtoError::EmptyAddress)
        );
        // Length checked before the address bytes arrive.
        assert_eq!(
            TcpRequest::parse(&[0x44, 0x01, 0x48, 0x01]),
            Err(ProtoError::AddressTooLong(2049))
        );
        let mut ok_2048 = vec![0x48, 0x00];
        ok_2048.extend_from_slice(&[b'a'; 100]);
        assert_eq!(TcpRequest::parse_after_type(&ok_2048), Ok(None));
        // Padding length checked before the padding arrives.
        let mut bytes = vec![0x44, 0x01, 0x0a];
        bytes.extend_from_slice(b"1.1.1.1:53");
        bytes.extend_from_slice(&[0x50, 0x01]);
        assert_eq!(
            TcpRequest::parse(&bytes),
            Err(ProtoError::PaddingTooLong(4097))
        );
        let bad = |addr: &[u8]| {
            let mut b = vec![0x44, 0x01, addr.len() as u8];
            b.extend_from_slice(addr);
            TcpRequest::parse(&b)
        };
        use AddressError::*;
        assert_eq!(bad(b"example.com"), Err(MissingPort.into()));
        assert_eq!(bad(b"example.com:65536"), Err(BadPort.into()));
        assert_eq!(bad(b":443"), Err(EmptyHost.into()));
        assert_eq!(bad(b"2001:db8::1:443"), Err(TooManyColons.into()));
        assert_eq!(bad(b"\xc3\x28:1"), Err(NotUtf8.into()));
    }

    #[test]
    fn request_encode_refuses() {
        let mut out = Vec::new();
        let long = format!("{}:1", "a".repeat(2047));
        assert_eq!(
            TcpRequest::encode(&long, &[], &mut out),
            Err(ProtoError::AddressTooLong(2049))
        );
        assert_eq!(
            TcpRequest::encode("", &[], &mut out),
            Err(ProtoError::EmptyAddress)
        );
        assert_eq!(
            TcpRequest::encode("::1:80", &[], &mut out),
            Err(AddressError::TooManyColons.into())
        );
        assert_eq!(
            TcpRequest::encode("a:1", &[0; 4097], &mut out),
            Err(ProtoError::PaddingTooLong(4097))
        );
        assert!(out.is_empty());
        TcpRequest::encode("[::1]:80", &[0; 4096], &mut out).unwrap();
        let (req, used) = TcpRequest::parse(&out).unwrap().unwrap();
        assert_eq!((req.addr.as_str(), used), ("[::1]:80", out.len()));
    }

    #[test]
    fn response_reference_example() {
        let bytes = response_example();
        let mut out = Vec::new();
        TcpResponse::encode(STATUS_OK, "Connected", &[b'p'; 200], &mut out).unwrap();
        assert_eq!(out, bytes);
        let (resp, used) = TcpResponse::parse(&bytes).unwrap().unwrap();
        assert!(resp.is_ok());
        assert_eq!(resp.message, "Connected");
        assert_eq!(used, bytes.len());
        for n in 0..bytes.len() {
            assert_eq!(TcpResponse::parse(&bytes[..n]), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn response_sing_box_style_coalesced() {
        // Empty message, no padding, first download bytes in the same read.
        let bytes = [0x00, 0x00, 0x00, b'H', b'T'];
        let (resp, used) = TcpResponse::parse(&bytes).unwrap().unwrap();
        assert_eq!((resp.status, resp.message.as_str(), used), (0, "", 3));
    }

    #[test]
    fn response_errors() {
        assert_eq!(
            TcpResponse::parse(&[0x01, 0x48, 0x01]),
            Err(ProtoError::MessageTooLong(2049))
        );
        assert_eq!(
            TcpResponse::parse(&[0x01, 0x00, 0x50, 0x01]),
            Err(ProtoError::PaddingTooLong(4097))
        );
        let (resp, _) = TcpResponse::parse(&[0x01, 0x02, 0xff, b'x', 0x00])
            .unwrap()
            .unwrap();
        assert!(!resp.is_ok());
        assert_eq!(resp.message, "\u{fffd}x");
        let mut out = Vec::new();
        assert_eq!(
            TcpResponse::encode(1, &"e".repeat(2049), &[], &mut out),
            Err(ProtoError::MessageTooLong(2049))
        );
        assert_eq!(
            TcpResponse::encode(1, "e", &[0; 4097], &mut out),
            Err(ProtoError::PaddingTooLong(4097))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn stream_start() {
        assert_eq!(StreamStart::classify(&[]), StreamStart::NeedMore);
        assert_eq!(StreamStart::classify(&[0x44]), StreamStart::NeedMore);
        assert_eq!(StreamStart::classify(&[0x44, 0x01]), StreamStart::Proxy);
        assert_eq!(
            StreamStart::classify(&request_example()),
            StreamStart::Proxy
        );
        assert_eq!(
            StreamStart::classify(&[0x80, 0, 0x04, 0x01]),
            StreamStart::Proxy
        );
        // HTTP/3 HEADERS frame (type 0x01).
        assert_eq!(StreamStart::classify(&[0x01, 0x10]), StreamStart::Http3);
        assert_eq!(StreamStart::classify(&[0x44, 0x02]), StreamStart::Http3);
    }

    #[test]
    fn padding_lengths_and_alphabet() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let p = padding(&mut rng, REQUEST_PADDING.0, REQUEST_PADDING.1);
            assert!((64..512).contains(&p.len()));
            assert!(p.iter().all(u8::is_ascii_alphanumeric));
        }
        assert_eq!(padding(&mut rng, 10, 10).len(), 10);
        assert_eq!(padding(&mut rng, 10, 3).len(), 10);
        assert_eq!(padding(&mut rng, 9999, 99999).len(), MAX_PADDING_LENGTH);
        assert!(padding(&mut rng, 0, usize::MAX).len() <= MAX_PADDING_LENGTH);
    }
}

#[cfg(test)]
mod speedtest_address_tests {
    use super::*;

    /// Found by the `tcp_request` fuzz target: the speed test's pseudo-address parses, so it
    /// must encode too (it is no host name).
    #[test]
    fn speedtest_address_round_trips() {
        let mut out = Vec::new();
        TcpRequest::encode("@SpeedTest:34", b"", &mut out).unwrap();
        let (req, used) = TcpRequest::parse(&out).unwrap().unwrap();
        assert_eq!(req.addr, "@SpeedTest:34");
        assert_eq!(used, out.len());
        assert!(TcpRequest::encode("@Other:34", b"", &mut Vec::new()).is_err());
    }
}
