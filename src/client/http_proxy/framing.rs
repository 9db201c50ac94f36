//! Message framing for the HTTP proxy's persistent connections, sans-IO: where a request's
//! body ends in the bytes from the app, where the response ends in the bytes from the
//! origin, and the response head the app gets (its hop-by-hop fields replaced by our own
//! `Connection`).
//!
//! Each forwarded request reaches the origin on a stream of its own and asks it to close
//! after the response; the app's connection carries the next request once the response is
//! complete. Body lengths follow RFC 9112 §6.3. What cannot be framed (a response that ends
//! when the origin closes, a framing error, a switch of protocols) is relayed as it comes
//! and the app's connection closes after it, as a proxy without keep-alive does.

use super::{tokens, MAX_HEADERS};

/// The longest response head (status line to blank line) framed; a longer one is relayed
/// as it comes and the connection closes after it.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The longest trailer section of a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a body's framing was given up (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingError(pub &'static str);

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// How a message body is delimited, and how much of it is still to come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
    /// Until the sender closes: a response with neither field.
    UntilClose,
}

impl Body {
    /// How many of the first bytes of `input` belong to the body (all of them until it
    /// ends); `Err` when they break its framing.
    pub fn take(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        match self {
            Body::Length(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                *left -= n as u64;
                Ok(n)
            }
            Body::Chunked(c) => c.take(input),
            Body::UntilClose => Ok(input.len()),
        }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        match self {
            Body::Length(left) => *left == 0,
            Body::Chunked(c) => c.state == ChunkState::Done,
            Body::UntilClose => false,
        }
    }
}

/// Where a chunked body is (RFC 9112 §7.1). Bare LF is taken for CRLF, as RFC 9112 §2.2
/// lets a recipient do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of the current chunk-size line, or of the trailer section.
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// The chunk size's hex digits: the value and how many so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions, up to the end of the line.
    Ext {
        size: u64,
    },
    /// A CR ended the size line; its LF comes next.
    SizeLf {
        size: u64,
    },
    /// Bytes of chunk data left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// Trailer fields up to an empty line; `empty`: the line so far is.
    Trailers {
        empty: bool,
    },
    Done,
}

impl Default for ChunkState {
    fn default() -> Self {
        ChunkState::Size { size: 0, digits: 0 }
    }
}

impl Chunked {
    fn take(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            self.state = match self.state {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    i += n;
                    self.state = match left - n as u64 {
                        0 => ChunkState::DataCr,
                        left => ChunkState::Data(left),
                    };
                    continue;
                }
                ChunkState::Size { size, digits } => match (b as char).to_digit(16) {
                    // Sixteen hex digits fill a u64.
                    Some(d) if digits < 16 => ChunkState::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(FramingError("chunk size too large")),
                    None if digits == 0 => return Err(FramingError("no chunk size")),
                    None => match b {
                        b';' | b' ' | b'\t' => ChunkState::Ext { size },
                        b'\r' => ChunkState::SizeLf { size },
                        b'\n' => self.size_line_ended(size),
                        _ => return Err(FramingError("bad chunk size")),
                    },
                },
                ChunkState::Ext { size } if b == b'\n' => self.size_line_ended(size),
                ChunkState::Ext { size } => ChunkState::Ext { size },
                ChunkState::SizeLf { size } if b == b'\n' => self.size_line_ended(size),
                ChunkState::SizeLf { .. } => return Err(FramingError("bad chunk size line")),
                ChunkState::DataCr if b == b'\r' => ChunkState::DataLf,
                ChunkState::DataCr | ChunkState::DataLf if b == b'\n' => ChunkState::default(),
                ChunkState::DataCr | ChunkState::DataLf => {
                    return Err(FramingError("chunk longer than its size"))
                }
                ChunkState::Trailers { empty } => match b {
                    b'\n' if empty => ChunkState::Done,
                    b'\n' => ChunkState::Trailers { empty: true },
                    b'\r' => ChunkState::Trailers { empty },
                    _ => ChunkState::Trailers { empty: false },
                },
            };
            i += 1;
            let limit = match self.state {
                ChunkState::Size { .. } | ChunkState::Ext { .. } | ChunkState::SizeLf { .. } => {
                    MAX_CHUNK_LINE
                }
                ChunkState::Trailers { .. } => MAX_TRAILERS,
                _ => {
                    self.line = 0;
                    continue;
                }
            };
            self.line += 1;
            if self.line > limit {
                return Err(FramingError("chunk-size line or trailers too long"));
            }
        }
        Ok(i)
    }

    /// The state after a chunk-size line: the chunk's data, or the trailers after the last.
    fn size_line_ended(&mut self, size: u64) -> ChunkState {
        self.line = 0;
        match size {
            0 => ChunkState::Trailers { empty: true },
            size => ChunkState::Data(size),
        }
    }
}

/// The body of a request with `fields` (RFC 9112 §6.3), or `None` when its end cannot be
/// told for sure: a `Transfer-Encoding` that does not end in chunked or comes with a
/// `Content-Length` ("the server MUST close the connection after responding to such a
/// request", RFC 9112 §6.1), or a `Content-Length` that is not one number.
pub(super) fn request_body(fields: &[httparse::Header<'_>]) -> Option<Body> {
    let codings = tokens(fields, "transfer-encoding");
    let length = content_length(fields).ok()?;
    match (codings.last(), length) {
        (Some(last), None) if last == "chunked" => Some(Body::Chunked(Chunked::default())),
        (Some(_), _) => None,
        (None, Some(n)) => Some(Body::Length(n)),
        (None, None) => Some(Body::Length(0)),
    }
}

/// The body of a final response with `fields`, status `code`, to a request that was a
/// HEAD or not (RFC 9112 §6.3); `None` when it has none. `Err` for a `Content-Length`
/// that is not one number.
fn response_body(
    fields: &[httparse::Header<'_>],
    code: u16,
    head_request: bool,
) -> Result<Option<Body>, FramingError> {
    if head_request || code == 204 || code == 304 {
        return Ok(None);
    }
    let codings = tokens(fields, "transfer-encoding");
    if let Some(last) = codings.last() {
        return Ok(Some(match last.as_str() {
            "chunked" => Body::Chunked(Chunked::default()),
            _ => Body::UntilClose,
        }));
    }
    match content_length(fields) {
        Ok(Some(0)) => Ok(None),
        Ok(Some(n)) => Ok(Some(Body::Length(n))),
        Ok(None) => Ok(Some(Body::UntilClose)),
        Err(e) => Err(e),
    }
}

/// The `Content-Length` of `fields`: `None` without one, `Err` unless every value (a list
/// of the same number is allowed, RFC 9110 §8.6) is the same decimal number.
fn content_length(fields: &[httparse::Header<'_>]) -> Result<Option<u64>, FramingError> {
    let bad = FramingError("bad Content-Length");
    let mut found = None;
    let values = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("content-length"));
    for value in values {
        let text = std::str::from_utf8(value.value).map_err(|_| bad)?;
        for n in text.split(',').map(str::trim) {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad);
            }
            let n: u64 = n.parse().map_err(|_| bad)?;
            if found.is_some_and(|f| f != n) {
                return Err(bad);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Where the origin's response is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Response {
    /// Reading a head (an interim one or the final one) into the buffer.
    Head(Vec<u8>),
    /// The final head went out; its body follows.
    Body(Body),
    /// Relayed as it comes until the stream ends: the body runs until the origin closes,
    /// or framing was given up.
    Raw,
    /// Complete; later bytes are dropped.
    Done,
}

/// One forwarded request and its response, on an app connection that may carry the next
/// request once both are complete: the body of the request read from the app, the response
/// read from the origin and written to the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The request body still to come from the app; `None` once its framing broke (every
    /// later byte from the app then goes to the stream).
    request: Option<Body>,
    response: Response,
    /// HEAD: the response has no body whatever its fields say.
    head_request: bool,
    /// The app's connection may carry another request: it asked for that, and nothing
    /// ruled it out since.
    keep_alive: bool,
}

impl Exchange {
    /// An exchange for a request with `body` on a connection the app keeps open.
    pub(super) fn new(body: Body, head_request: bool) -> Self {
        Exchange {
            request: Some(body),
            response: Response::Head(Vec::new()),
            head_request,
            keep_alive: true,
        }
    }

    /// How many of the first bytes of `input` from the app belong to this request's body;
    /// the rest starts the next request. Once the body's framing broke, every byte does, and
    /// the connection closes after the response.
    pub fn request_bytes(&mut self, input: &[u8]) -> usize {
        let Some(body) = &mut self.request else {
            return input.len();
        };
        match body.take(input) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("HTTP proxy: request body: {e}; closing after the response");
                self.request = None;
                self.keep_alive = false;
                input.len()
            }
        }
    }

    /// Whether the request's body has been read to its end.
    pub fn request_done(&self) -> bool {
        self.request.as_ref().is_some_and(Body::is_done)
    }

    /// Bytes of the response from the origin: what goes to the app is appended to `out`.
    /// Bytes after the end of the response are dropped.
    pub fn response_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut owned;
        let mut rest = input;
        loop {
            match &mut self.response {
                Response::Done => return,
                Response::Raw => return out.extend_from_slice(rest),
                Response::Body(body) => {
                    match body.take(rest) {
                        Ok(n) => out.extend_from_slice(rest.get(..n).unwrap_or_default()),
                        Err(e) => {
                            // What was read of the body so far went out already; the rest
                            // goes as it is.
                            self.give_up(e);
                            continue;
                        }
                    }
                    if body.is_done() {
                        self.response = Response::Done;
                    }
                    return;
                }
                Response::Head(buf) => {
                    buf.extend_from_slice(rest);
                    let head = std::mem::take(buf);
                    match self.read_head(head, out) {
                        Some(tail) => {
                            owned = tail;
                            rest = &owned;
                        }
                        None => return,
                    }
                }
            }
        }
    }

    /// The origin's stream ended: a response running until then is complete; one cut short
    /// is relayed as far as it came, and the connection closes after it.
    pub fn response_ended(&mut self, out: &mut Vec<u8>) {
        match std::mem::replace(&mut self.response, Response::Done) {
            Response::Done => {}
            Response::Raw => self.keep_alive = false,
            Response::Head(buf) => {
                out.extend_from_slice(&buf);
                self.keep_alive = false;
            }
            Response::Body(_) => {
                tracing::debug!("HTTP proxy: the origin ended its response early");
                self.keep_alive = false;
            }
        }
    }

    /// Whether the response is complete.
    pub fn response_done(&self) -> bool {
        self.response == Response::Done
    }

    /// After the response: whether the app's connection carries another request.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive && self.request_done() && self.response_done()
    }

    /// Relays the rest of the response as it comes, and closes after it.
    fn give_up(&mut self, why: FramingError) {
        tracing::debug!("HTTP proxy: response: {why}; relayed as it comes, then closed");
        self.response = Response::Raw;
        self.keep_alive = false;
    }

    /// Parses a response head at the start of `buf`. Returns the bytes after it, or `None`
    /// when it is incomplete (kept for more) or cannot be framed (relayed raw).
    fn read_head(&mut self, buf: Vec<u8>, out: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        let len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => {
                self.response = Response::Head(buf);
                return None;
            }
            Ok(httparse::Status::Partial) => {
                self.give_up(FramingError("response head too large"));
                out.extend_from_slice(&buf);
                return None;
            }
            Err(_) => {
                self.give_up(FramingError("malformed response head"));
                out.extend_from_slice(&buf);
                return None;
            }
        };
        let code = resp.code.unwrap_or_default();
        let (head, tail) = buf.split_at(len.min(buf.len()));
        if code == 101 {
            self.give_up(FramingError("the origin switched protocols"));
            out.extend_from_slice(&buf);
            return None;
        }
        if (100..200).contains(&code) {
            // Interim (100 Continue, 103 Early Hints): as it is; the final head follows.
            out.extend_from_slice(head);
            self.response = Response::Head(Vec::new());
            return Some(tail.to_vec());
        }
        let body = match response_body(resp.headers, code, self.head_request) {
            Ok(body) => body,
            Err(e) => {
                self.give_up(e);
                out.extend_from_slice(&buf);
                return None;
            }
        };
        if body == Some(Body::UntilClose) {
            // The app can only see the end when we close.
            self.keep_alive = false;
        }
        write_head(head, resp.headers, self.keep_alive, out);
        self.response = match body {
            None => Response::Done,
            Some(Body::UntilClose) => Response::Raw,
            Some(body) => Response::Body(body),
        };
        Some(tail.to_vec())
    }
}

/// The final response head for the app: the status line as the origin sent it, its fields
/// without the hop-by-hop ones (RFC 9110 §7.6.1), and our `Connection`.
fn write_head(head: &[u8], fields: &[httparse::Header<'_>], keep_alive: bool, out: &mut Vec<u8>) {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let status_line = head.get(..line_end).unwrap_or_default();
    out.extend_from_slice(status_line.strip_suffix(b"\r").unwrap_or(status_line));
    out.extend_from_slice(b"\r\n");
    let connection = tokens(fields, "connection");
    for field in fields {
        let name = field.name;
        let hop_by_hop = ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
            || connection.iter().any(|t| name.eq_ignore_ascii_case(t));
        let frames = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        if hop_by_hop && !frames {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(field.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
}

#[cfg(test)]
mod tests;
