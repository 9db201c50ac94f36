//! What the server answers an HTTP request that is not a Hysteria login (protocol notes §7):
//! the configured [`Masquerade`], as a transport-neutral [`Reply`] that the HTTP/3 side
//! encodes into frames and the TCP listeners ([`tcp`]) hand to hyper.
//!
//! The `file` and `proxy` kinds run off the data path (on the masquerade room's threads,
//! `server::offload`, for HTTP/3; on the TCP listeners' blocking pool), so they may block:
//! on the network up to their timeout, on the disk as long as it takes. Neither panics on
//! what the network, the disk or the config hands it; every failure before the response's
//! head becomes an HTTP error response, as the Go server would answer, and one after it
//! cuts the body short (the stream is reset).
//!
//! Their bodies are streamed: a [`Reply`] carries at most one [`CHUNK`] of body, and the
//! rest is a [`Tail`] read a chunk at a time, off the data path, as the receiver takes
//! them. A response of any size costs one chunk of memory while it is sent.

pub mod file;
pub mod proxy;
pub mod tcp;
mod tunnel;

pub use file::FileMasquerade;
pub use proxy::ProxyMasquerade;

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::h3::{self, http_date, Request, NOT_FOUND_BODY};

/// What unauthenticated visitors see.
#[derive(Clone, Debug)]
pub enum Masquerade {
    /// Go's `http.NotFound`.
    NotFound,
    String {
        status: u16,
        headers: Vec<(String, String)>,
        content: String,
    },
    /// A static file server (`masquerade.type: file`).
    File(Arc<FileMasquerade>),
    /// A reverse proxy (`masquerade.type: proxy`).
    Proxy(Arc<ProxyMasquerade>),
}

impl Masquerade {
    /// The answer of the kinds that need no I/O; `None` for `file` and `proxy`.
    pub fn canned(&self) -> Option<Reply> {
        match self {
            // With a `date`, as Go's servers add to every response.
            Masquerade::NotFound => Some(not_found_response(&now_http_date())),
            Masquerade::String {
                status,
                headers,
                content,
            } => Some(Reply {
                status: *status,
                headers: headers.clone(),
                body: content.clone().into_bytes(),
                tail: None,
            }),
            Masquerade::File(_) | Masquerade::Proxy(_) => None,
        }
    }

    /// Whether [`Self::answer`] may block (on the disk or the upstream).
    pub fn blocks(&self) -> bool {
        matches!(self, Masquerade::File(_) | Masquerade::Proxy(_))
    }

    /// The answer to `req` (with its `body`) from `client`, whatever the transport.
    pub fn answer(&self, req: &Request, body: &[u8], client: SocketAddr) -> Reply {
        match self {
            Masquerade::File(f) => f.answer(req),
            Masquerade::Proxy(p) => p.answer(req, body, client),
            Masquerade::NotFound => not_found_response(&now_http_date()),
            Masquerade::String { .. } => self
                .canned()
                .unwrap_or_else(|| not_found_response(&now_http_date())),
        }
    }
}

/// Most body bytes a streamed response holds at once: what [`Tail::next_chunk`] reads.
pub const CHUNK: usize = 64 * 1024;

/// A response, before it is framed for a transport.
#[derive(Debug, Default)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Fields in order. A `content-length` here wins over the body's length (HEAD answers
    /// carry the length of a body they do not send, streamed ones the length of the whole).
    pub headers: Vec<(String, String)>,
    /// The body, or its first chunk when a [`Tail`] follows; empty for HEAD.
    pub body: Vec<u8>,
    /// The rest of the body, read as the receiver takes it.
    pub tail: Option<Tail>,
}

/// The part of a response body not read yet: a file or an upstream's body, read one
/// [`CHUNK`] at a time. Dropping it closes the source.
pub struct Tail {
    source: Box<dyn Read + Send>,
    /// Bytes still promised by the response's `content-length`, if it has one: the source
    /// ending short of them is an error, not the end.
    left: Option<u64>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail").field("left", &self.left).finish()
    }
}

impl Tail {
    /// `source` read to its end, or to exactly `len` bytes if given.
    pub fn new(source: impl Read + Send + 'static, len: Option<u64>) -> Tail {
        Tail {
            source: Box::new(source),
            left: len,
        }
    }

    /// The first chunk in hand, and the rest if there is any. A body of unknown length is
    /// read until a chunk is full or it ends, so that a short one goes whole and with its
    /// length, as Go's response writer buffers it.
    pub fn start(mut self) -> io::Result<(Vec<u8>, Option<Tail>)> {
        let mut first = Vec::new();
        while first.len() < CHUNK {
            match self.next_chunk()? {
                Some(chunk) => first.extend_from_slice(&chunk),
                None => return Ok((first, None)),
            }
            if self.left.is_some() {
                break;
            }
        }
        let rest = (self.left != Some(0)).then_some(self);
        Ok((first, rest))
    }

    /// The rest of the body in hand; [`Self::next_chunk`] until the end.
    pub fn read_to_end(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        while let Some(chunk) = self.next_chunk()? {
            out.extend_from_slice(&chunk);
        }
        Ok(())
    }

    /// The next bytes (one read of at most [`CHUNK`]), `None` at the end. It may block.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let want = match self.left {
            Some(0) => return Ok(None),
            Some(left) => usize::try_from(left).unwrap_or(CHUNK).min(CHUNK),
            None => CHUNK,
        };
        let mut buf = vec![0; want];
        let n = loop {
            match self.source.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return match self.left {
                Some(left) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the body ended {left} bytes short of its length"),
                )),
                None => Ok(None),
            };
        }
        buf.truncate(n);
        if let Some(left) = &mut self.left {
            *left -= n as u64;
        }
        Ok(Some(buf))
    }
}

impl Reply {
    /// First value of the field `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The HTTP/3 bytes to send first: HEADERS (with a `content-length` if none is set and
    /// no tail follows), then DATA if there is a body in hand; and the tail, whose chunks
    /// go as DATA frames after them.
    pub fn into_h3(self) -> (Vec<u8>, Option<Tail>) {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let length = self.tail.is_none().then_some(self.body.len() as u64);
        let mut bytes = h3::response_head(self.status, &headers, length);
        if !self.body.is_empty() {
            bytes.extend(h3::data_frame(&self.body));
        }
        (bytes, self.tail)
    }

    /// The whole HTTP/3 response, the tail read to its end (or to where it fails).
    #[cfg(test)]
    pub fn into_h3_whole(self) -> Vec<u8> {
        let (mut bytes, tail) = self.into_h3();
        if let Some(mut tail) = tail {
            while let Ok(Some(chunk)) = tail.next_chunk() {
                bytes.extend(h3::data_frame(&chunk));
            }
        }
        bytes
    }
}

/// A [`Reply`] from borrowed fields.
fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    Reply {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.to_vec(),
        tail: None,
    }
}

/// Go's `http.NotFound`, the default masquerade (the fields of `h3::not_found_response`).
fn not_found_response(date: &str) -> Reply {
    response(
        404,
        &[
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
            ("date", date),
        ],
        NOT_FOUND_BODY,
    )
}

/// Now as an HTTP date, for the `date` field quic-go puts on every response.
fn now_http_date() -> String {
    http_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// Percent-escapes (`%XX`) every byte of `s` that `keep` refuses. A character beyond ASCII
/// stays whole only if `keep` accepts each of its bytes, so the result is valid UTF-8.
fn percent_escape(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let mut utf8 = [0; 4];
        let bytes = c.encode_utf8(&mut utf8).as_bytes();
        if bytes.iter().all(|&b| keep(b)) {
            out.push(c);
        } else {
            for b in bytes {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Go's `html.EscapeString` (also its `htmlReplacer`): for the directory listing and the
/// redirect page.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Building requests and reading responses as a client would, for the tests of both
/// masquerades.
#[cfg(test)]
mod testing {
    use crate::proto::h3::{Limits, Request, Response, ResponseReader};

    /// Reads a response the way a client would, FIN included.
    pub(super) fn parse(bytes: &[u8]) -> (Response, Vec<u8>) {
        let mut reader = ResponseReader::with_limits(Limits {
            max_body: 32 << 20,
            ..Limits::default()
        });
        let resp = reader.push(bytes).unwrap().unwrap();
        reader.finish().unwrap();
        (resp, reader.body().to_vec())
    }

    /// A HEAD response: its content-length describes a body that is not sent.
    pub(super) fn parse_head(bytes: &[u8]) -> Response {
        let resp = ResponseReader::new().push(bytes).unwrap().unwrap();
        let (hdr, used) = crate::proto::h3::FrameHeader::parse(bytes)
            .unwrap()
            .unwrap();
        assert_eq!(
            used as u64 + hdr.len,
            bytes.len() as u64,
            "HEAD answer has a body"
        );
        resp
    }

    pub(super) fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            scheme: "https".into(),
            authority: "example.com".into(),
            path: path.into(),
            protocol: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }
}
