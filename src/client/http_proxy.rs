//! The local HTTP proxy of the client role, sans-IO: request heads in, a relay target and the
//! bytes to write out.
//!
//! Nothing here opens a socket or reads the clock. Per accepted connection the caller:
//! 1. makes a [`ProxyRequestReader`] and [`feed`](ProxyRequestReader::feed)s it every chunk
//!    read from the client until it returns `Ok(Some(request))` or `Err(e)`;
//! 2. on `Err(e)` writes [`e.response()`](ProxyError::response) and closes;
//! 3. on [`ProxyRequest::Connect`] opens a relay stream to `target`, writes
//!    [`response_connected`], sends [`leftover`](ProxyRequestReader::leftover) (a client may
//!    start its TLS handshake before our 200) and relays bytes both ways;
//! 4. on [`ProxyRequest::Forward`] opens a relay stream to `target` and sends `head`, then:
//!    - with an [`Exchange`] (the client keeps its connection open and the request's body
//!      can be framed), the request's body from the leftover and later reads as far as
//!      [`Exchange::request_bytes`] says, and the origin's response to the client through
//!      [`Exchange::response_bytes`]; once [`Exchange::keep_alive`], the stream ends and the
//!      bytes after the body start the next request, read by a new reader;
//!    - without one, the leftover and every later byte, and the response untouched, until
//!      either side ends; then closes;
//! 5. when the relay refuses the target writes [`response_bad_gateway`], and when it has no
//!    stream to give writes [`response_unavailable`], then closes.
//!
//! Each forwarded request goes to the origin on a stream of its own and asks it to close
//! after its response (`Connection: close`): requests on one client connection may go to
//! different hosts, and an origin's connection never outlives its response. The framing of
//! bodies and responses is in `http_proxy/framing.rs`; a response it cannot frame closes the
//! client's connection.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use std::fmt;
use std::net::IpAddr;

use crate::proto::{split_host_port, AddressError, Host, ProtoError};

mod framing;

pub use framing::Exchange;

/// Default for [`Limits::max_head`]: room for a browser's head with a pile of cookies (Apache
/// refuses a single field above 8 KiB), while a thousand idle half-sent heads hold 16 MiB.
pub const DEFAULT_MAX_HEAD: usize = 16 * 1024;

/// Header fields parsed per head; more is answered 431 like an oversized head. Apache's
/// `LimitRequestFields` is 100, and browsers send about 20.
const MAX_HEADERS: usize = 128;

/// The realm named in `Proxy-Authenticate`.
const REALM: &str = "quelay";

/// Port of an `http://` URI that names none (RFC 9110 §4.2.1).
const HTTP_PORT: &str = "80";

/// Base64 of Basic credentials: padding optional, because the secret is compared, not the
/// encoding.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a [`ProxyRequestReader`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest request head, request line to blank line included; longer heads get 431.
    pub max_head: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: DEFAULT_MAX_HEAD,
        }
    }
}

/// A proxy request, ready to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port`: a byte tunnel to `target`.
    Connect {
        /// `host:port` to dial; an IPv6 host in brackets, the port in plain decimal.
        target: String,
    },
    /// An absolute-form `http://` request, re-written for the origin.
    Forward {
        /// `host:port` to dial, port 80 when the URI names none; shaped like
        /// [`Connect`](Self::Connect)'s.
        target: String,
        /// The head to send the origin: origin-form request line, `Host` from the URI,
        /// hop-by-hop and `Proxy-*` fields dropped, `Connection: close` (or `Upgrade` for a
        /// WebSocket handshake), ending with the blank line.
        head: Vec<u8>,
        /// Set when the client's connection may carry another request after this one: it
        /// asked to keep it open (HTTP/1.1 by default, HTTP/1.0 with `keep-alive`), it is no
        /// WebSocket handshake, and the body's end can be told. It frames the body and the
        /// response.
        exchange: Option<Exchange>,
    },
}

impl ProxyRequest {
    /// The `host:port` to dial.
    pub fn target(&self) -> &str {
        match self {
            Self::Connect { target } | Self::Forward { target, .. } => target,
        }
    }
}

/// Why a request head was refused; every variant is the client's doing, and
/// [`response`](Self::response) is what to tell it before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Not an HTTP/1.x request head, or one this proxy cannot make sense of (400).
    Malformed(&'static str),
    /// The target is not a `host:port` the relay can dial (400).
    BadTarget(AddressError),
    /// An absolute URI with a scheme other than `http`; `https` goes through CONNECT (400).
    UnsupportedScheme,
    /// A request for an origin server (origin- or asterisk-form), not for a proxy (405).
    NotAProxyRequest,
    /// Proxy authentication is configured and the request carries no valid Basic
    /// credentials (407).
    AuthRequired,
    /// The head is longer than [`Limits::max_head`] or has too many fields (431).
    HeadTooLarge,
}

impl ProxyError {
    /// The HTTP status code of [`response`](Self::response).
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) | Self::BadTarget(_) | Self::UnsupportedScheme => 400,
            Self::NotAProxyRequest => 405,
            Self::AuthRequired => 407,
            Self::HeadTooLarge => 431,
        }
    }

    /// The complete response to write before closing the connection.
    pub fn response(&self) -> Vec<u8> {
        self.response_in(REALM)
    }

    /// [`response`](Self::response), naming `realm` in `Proxy-Authenticate` (`http.realm`).
    pub fn response_in(&self, realm: &str) -> Vec<u8> {
        let body = format!("{self}\n");
        match self {
            Self::Malformed(_) | Self::BadTarget(_) | Self::UnsupportedScheme => {
                text_response("400 Bad Request", "", &body)
            }
            Self::NotAProxyRequest => text_response("405 Method Not Allowed", "", &body),
            Self::AuthRequired => text_response(
                "407 Proxy Authentication Required",
                &format!(
                    "Proxy-Authenticate: Basic realm=\"{}\"\r\n",
                    realm.replace(['"', '\\', '\r', '\n'], "")
                ),
                &body,
            ),
            Self::HeadTooLarge => text_response("431 Request Header Fields Too Large", "", &body),
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed request: {why}"),
            Self::BadTarget(e) => write!(f, "bad target: {e}"),
            Self::UnsupportedScheme => f.write_str("only http:// URIs are proxied; use CONNECT"),
            Self::NotAProxyRequest => {
                f.write_str("this is a proxy: send an absolute URI or CONNECT host:port")
            }
            Self::AuthRequired => f.write_str("proxy authentication required"),
            Self::HeadTooLarge => f.write_str("request head too large"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// `200 Connection established`: the tunnel is open, relay bytes from here on.
pub fn response_connected() -> Vec<u8> {
    b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec()
}

/// `502 Bad Gateway`: the relay could not reach the target (it refused, or the dial failed).
pub fn response_bad_gateway(reason: &str) -> Vec<u8> {
    text_response("502 Bad Gateway", "", &format!("{reason}\n"))
}

/// `503 Service Unavailable`: the relay has no stream to give (no connection to the server).
pub fn response_unavailable(reason: &str) -> Vec<u8> {
    text_response("503 Service Unavailable", "", &format!("{reason}\n"))
}

fn text_response(status: &str, fields: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\n{fields}Connection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one proxy request head from a client connection, in whatever pieces it arrives.
#[derive(Debug)]
pub struct ProxyRequestReader {
    /// Fixed at construction.
    limits: Limits,
    /// `user:pass` as Basic credentials carry it; `None` when the proxy is open. Fixed.
    credentials: Option<Vec<u8>>,
    /// Everything fed so far: the head (while reading, or before `head_len`), then leftover.
    /// Emptied on error.
    buf: Vec<u8>,
    /// Where the next search for the blank line that ends the head starts; grows with `buf`.
    scanned: usize,
    /// `buf` length at which an unfinished head is parsed anyway, so that garbage is refused
    /// before the size limit; doubles at each probe, keeping the work linear.
    next_probe: usize,
    /// Set when a byte other than CR or LF arrives: from then on a blank line ends the head.
    in_request: bool,
    /// Changes once, from `Reading` to `Done` or `Failed`.
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Reading,
    /// The request was returned; `buf[head_len..]` is leftover. `head_len` becomes 0 when the
    /// leftover is taken.
    Done {
        head_len: usize,
    },
    Failed(ProxyError),
}

impl ProxyRequestReader {
    /// A reader for one connection; `auth` is the `(user, password)` clients must present as
    /// `Proxy-Authorization: Basic`, or `None` for an open proxy.
    pub fn new(limits: Limits, auth: Option<(String, String)>) -> Self {
        Self {
            limits,
            credentials: auth.map(|(user, pass)| format!("{user}:{pass}").into_bytes()),
            buf: Vec::new(),
            scanned: 0,
            next_probe: 1,
            in_request: false,
            state: State::Reading,
        }
    }

    /// Takes the next bytes from the client.
    ///
    /// Returns `Ok(None)` while the head is incomplete, `Ok(Some(request))` once, when it is
    /// complete, and `Err` as soon as the bytes cannot become an acceptable request. After the
    /// request, fed bytes are added to the [leftover](Self::leftover) and `Ok(None)` is
    /// returned; after an error the same error is returned.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<ProxyRequest>, ProxyError> {
        match self.state {
            State::Failed(e) => return Err(e),
            State::Done { .. } => {
                self.buf.extend_from_slice(input);
                return Ok(None);
            }
            State::Reading => {}
        }
        self.buf.extend_from_slice(input);
        match self.read_head() {
            Ok(None) => Ok(None),
            Ok(Some((request, head_len))) => {
                self.state = State::Done { head_len };
                Ok(Some(request))
            }
            Err(e) => {
                self.state = State::Failed(e);
                self.buf = Vec::new();
                Err(e)
            }
        }
    }

    /// Bytes after the head: the request body for [`ProxyRequest::Forward`], tunnel payload
    /// for [`ProxyRequest::Connect`]. Empty until the request is returned, and after an error.
    pub fn leftover(&self) -> &[u8] {
        match self.state {
            State::Done { head_len } => self.buf.get(head_len..).unwrap_or_default(),
            State::Reading | State::Failed(_) => &[],
        }
    }

    /// Takes the [leftover](Self::leftover), leaving it empty.
    pub fn take_leftover(&mut self) -> Vec<u8> {
        match &mut self.state {
            State::Done { head_len } => {
                self.buf.drain(..(*head_len).min(self.buf.len()));
                *head_len = 0;
                std::mem::take(&mut self.buf)
            }
            State::Reading | State::Failed(_) => Vec::new(),
        }
    }

    /// Parses once the buffer holds a blank line within the size limit (or probes it early);
    /// returns the request and the head's length.
    fn read_head(&mut self) -> Result<Option<(ProxyRequest, usize)>, ProxyError> {
        let max = self.limits.max_head;
        let window = self.buf.len().min(max);
        if !self.in_request {
            // Blank lines before the request line are skipped (RFC 9112 §2.2): they end no head.
            let blank = self.buf.get(self.scanned..window).unwrap_or_default();
            match blank.iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                Some(p) => {
                    self.scanned += p;
                    self.in_request = true;
                }
                None => self.scanned = window,
            }
        }
        if self.in_request {
            while let Some(end) = find_blank_line(&self.buf, self.scanned, max) {
                if let Some(parsed) = parse(&self.buf[..end], self.credentials.as_deref())? {
                    return Ok(Some(parsed));
                }
                self.scanned = end - 1;
            }
            // "\n\r" at the end of the window may still become a blank line.
            self.scanned = self.scanned.max(window.saturating_sub(2));
        }
        if self.buf.len() >= max || self.buf.len() >= self.next_probe {
            self.next_probe = self.buf.len().saturating_mul(2);
            // Partial: valid so far. Err: the peer sent something that is not a request.
            // Complete cannot happen after the search above, but would be an answer all the same.
            if let Some(parsed) = parse(&self.buf[..window], self.credentials.as_deref())? {
                return Ok(Some(parsed));
            }
            if self.buf.len() >= max {
                return Err(ProxyError::HeadTooLarge);
            }
        }
        Ok(None)
    }
}

/// The end (exclusive) of the first `\n\n` or `\n\r\n` starting at or after `from` and ending
/// within `max` bytes.
fn find_blank_line(buf: &[u8], from: usize, max: usize) -> Option<usize> {
    let window = buf.get(..buf.len().min(max))?;
    let mut i = from;
    while let Some(pos) = window.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        match window.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Parses `head`; `Ok(None)` when it is only a prefix of one.
fn parse(
    head: &[u8],
    credentials: Option<&[u8]>,
) -> Result<Option<(ProxyRequest, usize)>, ProxyError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeadTooLarge),
        Err(e) => return Err(ProxyError::Malformed(httparse_reason(e))),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ProxyError::Malformed("incomplete request line"));
    };
    if let Some(expected) = credentials {
        if !authorized(req.headers, expected) {
            return Err(ProxyError::AuthRequired);
        }
    }
    // Methods are case-sensitive (RFC 9110 §9.1).
    let request = if method == "CONNECT" {
        ProxyRequest::Connect {
            target: dial_target(target)?,
        }
    } else {
        let (authority, path) = split_absolute(target)?;
        ProxyRequest::Forward {
            target: dial_target(&with_port(authority))?,
            head: origin_head(method, authority, &path, version, req.headers),
            exchange: exchange(method, version, req.headers),
        }
    };
    Ok(Some((request, len)))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "not HTTP/1.0 or HTTP/1.1",
        httparse::Error::Status | httparse::Error::TooManyHeaders => "invalid request",
    }
}

/// Whether any `Proxy-Authorization` field carries the expected Basic credentials.
fn authorized(fields: &[httparse::Header<'_>], expected: &[u8]) -> bool {
    fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("proxy-authorization"))
        .filter_map(|f| basic_credentials(f.value))
        .any(|given| verify_slices_are_equal(&given, expected).is_ok())
}

/// The decoded `user:pass` of `Basic <base64>` (RFC 7617 §2; the scheme is case-insensitive).
fn basic_credentials(value: &[u8]) -> Option<Vec<u8>> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    BASIC.decode(token.trim()).ok()
}

/// Checks `host:port` the way the relay will dial it and writes it back canonically.
fn dial_target(addr: &str) -> Result<String, ProxyError> {
    let (host, port) = split_host_port(addr).map_err(|e| match e {
        ProtoError::BadAddress(e) => ProxyError::BadTarget(e),
        _ => ProxyError::Malformed("bad target"),
    })?;
    if port == 0 {
        return Err(ProxyError::BadTarget(AddressError::BadPort));
    }
    Ok(match host {
        Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Host::Ip(IpAddr::V4(ip)) => format!("{ip}:{port}"),
        Host::Domain(name) => format!("{name}:{port}"),
    })
}

/// Splits an absolute-form `http://authority/path?query` target into the authority and the
/// origin-form path, without the fragment.
fn split_absolute(target: &str) -> Result<(&str, String), ProxyError> {
    if target.starts_with('/') || target == "*" {
        return Err(ProxyError::NotAProxyRequest);
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(ProxyError::Malformed(
            "request target is not an absolute URI",
        ));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(ProxyError::UnsupportedScheme);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // "A recipient SHOULD parse for userinfo and treat its presence as an error; it is likely
    // being used to obscure the authority for the sake of phishing attacks." (RFC 9110 §4.2.4)
    if authority.contains('@') {
        return Err(ProxyError::Malformed("userinfo in URI"));
    }
    let tail = tail.split('#').next().unwrap_or_default();
    // "If the target URI's path component is empty, the client MUST send "/" as the path
    // within the origin-form of request-target." (RFC 9112 §3.2.1)
    let path = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok((authority, path))
}

/// `authority` with port 80 added when it names none (an empty port means the default too,
/// RFC 3986 §3.2.3).
fn with_port(authority: &str) -> String {
    let after_host = authority.rfind(']').map_or(authority, |i| &authority[i..]);
    match after_host.rfind(':') {
        None => format!("{authority}:{HTTP_PORT}"),
        Some(i) if i + 1 == after_host.len() => format!("{authority}{HTTP_PORT}"),
        Some(_) => authority.to_owned(),
    }
}

/// Fields a proxy never forwards (RFC 9110 §7.6.1, and the `Proxy-*` family); `Host` is
/// replaced.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "host",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// Fields that frame the body, which is relayed as the client framed it: `Connection` cannot
/// remove these. A client that could confuse the origin with them can send any bytes through
/// CONNECT anyway.
fn frames_body(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

/// Comma-separated tokens of every field named `name`, lowercased.
fn tokens(fields: &[httparse::Header<'_>], name: &str) -> Vec<String> {
    fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(name))
        .filter_map(|f| std::str::from_utf8(f.value).ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether the request is a WebSocket handshake: the one upgrade kept. WebSocket needs
/// nothing else from the Connection list, and after a 101 the relay is the byte pipe it
/// wants. "A server MUST ignore an Upgrade header field that is received in an HTTP/1.0
/// request." (RFC 9110 §7.8)
fn is_websocket(version: u8, fields: &[httparse::Header<'_>]) -> bool {
    version == 1
        && tokens(fields, "connection").iter().any(|t| t == "upgrade")
        && tokens(fields, "upgrade")
            .iter()
            .any(|t| t.split('/').next() == Some("websocket"))
}

/// The exchange of a request after which the client's connection stays open, if it does:
/// HTTP/1.1 unless it says `close`, HTTP/1.0 when it says `keep-alive` (RFC 9112 §9.3; old
/// clients say it in `Proxy-Connection`), never a WebSocket handshake, and only when the
/// body's end can be told.
fn exchange(method: &str, version: u8, fields: &[httparse::Header<'_>]) -> Option<Exchange> {
    let mut connection = tokens(fields, "connection");
    connection.extend(tokens(fields, "proxy-connection"));
    let close = connection.iter().any(|t| t == "close");
    let keep = connection.iter().any(|t| t == "keep-alive");
    let persistent = !close && (version == 1 || keep);
    if !persistent || is_websocket(version, fields) {
        return None;
    }
    Some(Exchange::new(
        framing::request_body(fields)?,
        method == "HEAD",
    ))
}

/// The request re-written in origin-form for the origin server.
fn origin_head(
    method: &str,
    authority: &str,
    path: &str,
    version: u8,
    fields: &[httparse::Header<'_>],
) -> Vec<u8> {
    let connection = tokens(fields, "connection");
    let websocket = is_websocket(version, fields);
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(format!("{method} {path} HTTP/1.{version}\r\n").as_bytes());
    // "A proxy that forwards such a request MUST generate a new Host field value based on the
    // received request-target rather than forward the received Host field value."
    // (RFC 9112 §3.2.2) Sent first, as RFC 9112 §3.2 asks of user agents.
    head.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
    for field in fields.iter() {
        let name = field.name;
        let upgrade = websocket && name.eq_ignore_ascii_case("upgrade");
        let named = connection.iter().any(|t| name.eq_ignore_ascii_case(t));
        if !upgrade && !frames_body(name) && (is_hop_by_hop(name) || named) {
            continue;
        }
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(field.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(if websocket {
        b"Connection: Upgrade\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn open() -> ProxyRequestReader {
        ProxyRequestReader::new(Limits::default(), None)
    }

    fn with_auth() -> ProxyRequestReader {
        ProxyRequestReader::new(Limits::default(), Some(("alice".into(), "s3cret".into())))
    }

    fn read(input: &[u8]) -> Result<Option<ProxyRequest>, ProxyError> {
        open().feed(input)
    }

    fn connect(target: &str) -> String {
        match read(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()) {
            Ok(Some(ProxyRequest::Connect { target })) => target,
            other => panic!("{target}: {other:?}"),
        }
    }

    fn forward(input: &[u8]) -> (String, String) {
        match read(input) {
            Ok(Some(ProxyRequest::Forward { target, head, .. })) => {
                (target, String::from_utf8(head).unwrap())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_targets() {
        assert_eq!(connect("example.com:443"), "example.com:443");
        assert_eq!(connect("1.2.3.4:8443"), "1.2.3.4:8443");
        assert_eq!(connect("[2001:db8::1]:443"), "[2001:db8::1]:443");
        assert_eq!(connect("[2001:0db8:0:0::1]:0443"), "[2001:db8::1]:443");
        let err = |t: &str| read(format!("CONNECT {t} HTTP/1.1\r\n\r\n").as_bytes());
        use AddressError::*;
        assert_eq!(err("example.com"), Err(ProxyError::BadTarget(MissingPort)));
        assert_eq!(err("example.com:0"), Err(ProxyError::BadTarget(BadPort)));
        assert_eq!(
            err("2001:db8::1:443"),
            Err(ProxyError::BadTarget(TooManyColons))
        );
        assert_eq!(err("/"), Err(ProxyError::BadTarget(MissingPort)));
    }

    #[test]
    fn connect_keeps_early_payload() {
        let mut r = open();
        let req = r
            .feed(b"CONNECT a.example:443 HTTP/1.0\r\n\r\n\x16\x03\x01")
            .unwrap();
        assert_eq!(req.unwrap().target(), "a.example:443");
        assert_eq!(r.leftover(), b"\x16\x03\x01");
        assert_eq!(r.feed(b"more"), Ok(None));
        assert_eq!(r.leftover(), b"\x16\x03\x01more");
        assert_eq!(r.take_leftover(), b"\x16\x03\x01more");
        assert_eq!(r.leftover(), b"");
        assert_eq!(r.feed(b"x"), Ok(None));
        assert_eq!(r.take_leftover(), b"x");
    }

    #[test]
    fn forward_get_with_query() {
        let (target, head) = forward(
            b"GET http://example.com/a/b?q=1&r=%20 HTTP/1.1\r\n\
              Host: example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\
              Proxy-Connection: Keep-Alive\r\n\r\n",
        );
        assert_eq!(target, "example.com:80");
        assert_eq!(
            head,
            "GET /a/b?q=1&r=%20 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_forwarded_request_keeps_the_connection_only_when_asked_and_framed() {
        let exchange = |input: &str| match read(input.as_bytes()) {
            Ok(Some(ProxyRequest::Forward { exchange, .. })) => exchange,
            other => panic!("{input}: {other:?}"),
        };
        let keeps = |input: &str| exchange(input).is_some();
        assert!(keeps("GET http://a/ HTTP/1.1\r\n\r\n"));
        assert!(keeps(
            "GET http://a/ HTTP/1.1\r\nProxy-Connection: Keep-Alive\r\n\r\n"
        ));
        assert!(!keeps(
            "GET http://a/ HTTP/1.1\r\nConnection: close\r\n\r\n"
        ));
        assert!(!keeps(
            "GET http://a/ HTTP/1.1\r\nProxy-Connection: close\r\n\r\n"
        ));
        assert!(!keeps("GET http://a/ HTTP/1.0\r\n\r\n"));
        assert!(keeps(
            "GET http://a/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!keeps(
            "GET http://a/ HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        // The body's end must be certain.
        assert!(!keeps(
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!keeps(
            "POST http://a/ HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n"
        ));
        // The body is read to its end and no further.
        let mut x = exchange("POST http://a/ HTTP/1.1\r\nContent-Length: 4\r\n\r\n").unwrap();
        assert!(!x.request_done());
        assert_eq!(x.request_bytes(b"bodyGET http://a/"), 4);
        assert!(x.request_done());
        let x = exchange("GET http://a/ HTTP/1.1\r\n\r\n").unwrap();
        assert!(x.request_done(), "no body");
        // A HEAD's response has no body, whatever its length says.
        let mut x = exchange("HEAD http://a/ HTTP/1.1\r\n\r\n").unwrap();
        let mut out = Vec::new();
        x.response_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", &mut out);
        assert!(x.keep_alive());
    }

    #[test]
    fn forward_paths_and_ports() {
        let t = |uri: &str| forward(format!("GET {uri} HTTP/1.1\r\n\r\n").as_bytes());
        let line = |head: String| head.lines().take(2).collect::<Vec<_>>().join("|");
        let (target, head) = t("http://example.com");
        assert_eq!(
            (target.as_str(), line(head).as_str()),
            ("example.com:80", "GET / HTTP/1.1|Host: example.com")
        );
        let (target, head) = t("HTTP://Example.com:8080?x#frag");
        assert_eq!(
            (target.as_str(), line(head).as_str()),
            (
                "Example.com:8080",
                "GET /?x HTTP/1.1|Host: Example.com:8080"
            )
        );
        let (target, head) = t("http://[::1]/p#f");
        assert_eq!(
            (target.as_str(), line(head).as_str()),
            ("[::1]:80", "GET /p HTTP/1.1|Host: [::1]")
        );
        let (target, _) = t("http://[::1]:81/");
        assert_eq!(target, "[::1]:81");
        let (target, _) = t("http://10.0.0.1:/");
        assert_eq!(target, "10.0.0.1:80");
    }

    #[test]
    fn forward_post_keeps_body() {
        let mut r = open();
        let req = r
            .feed(
                b"POST http://api.example:8080/v1?x=y HTTP/1.1\r\nHost: wrong.example\r\n\
                  Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello",
            )
            .unwrap();
        let Some(ProxyRequest::Forward { target, head, .. }) = req else {
            panic!("{req:?}")
        };
        assert_eq!(target, "api.example:8080");
        assert_eq!(
            head,
            b"POST /v1?x=y HTTP/1.1\r\nHost: api.example:8080\r\nContent-Type: text/plain\r\n\
              Content-Length: 11\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(r.leftover(), b"hello");
        r.feed(b" world").unwrap();
        assert_eq!(r.take_leftover(), b"hello world");
    }

    #[test]
    fn forward_drops_hop_by_hop() {
        let req = open().feed(
            b"PUT http://h.example/x HTTP/1.1\r\n\
              Proxy-Authorization: Basic Zm9vOmJhcg==\r\nproxy-connection: keep-alive\r\n\
              Connection: keep-alive, X-Secret, content-length, Upgrade\r\nKeep-Alive: 300\r\n\
              TE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nX-Secret: 1\r\n\
              x-kept: a  b\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\
              Cookie: c=\xff\r\nHOST: h.example\r\nProxy-Other: 1\r\n\r\n",
        );
        let Ok(Some(ProxyRequest::Forward { head, .. })) = req else {
            panic!("{req:?}")
        };
        assert_eq!(
            head,
            b"PUT /x HTTP/1.1\r\nHost: h.example\r\nx-kept: a  b\r\n\
              Transfer-Encoding: chunked\r\nContent-Length: 3\r\nCookie: c=\xff\r\n\
              Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn forward_keeps_websocket_upgrade() {
        let (_, head) = forward(
            b"GET http://ws.example/chat HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Key: abc==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        assert_eq!(
            head,
            "GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: abc==\r\nSec-WebSocket-Version: 13\r\nConnection: Upgrade\r\n\r\n"
        );
        // Ignored in HTTP/1.0, and without "upgrade" in Connection.
        for req in [
            &b"GET http://ws.example/ HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
            b"GET http://ws.example/ HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        ] {
            let (_, head) = forward(req);
            assert!(head.ends_with("Host: ws.example\r\nConnection: close\r\n\r\n"), "{head}");
        }
    }

    #[test]
    fn refused_forms() {
        let e = |input: &[u8]| read(input).unwrap_err();
        assert_eq!(
            e(b"GET https://example.com/ HTTP/1.1\r\n\r\n"),
            ProxyError::UnsupportedScheme
        );
        assert_eq!(
            e(b"GET ftp://example.com/ HTTP/1.1\r\n\r\n"),
            ProxyError::UnsupportedScheme
        );
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            ProxyError::NotAProxyRequest
        );
        assert_eq!(
            e(b"OPTIONS * HTTP/1.1\r\n\r\n"),
            ProxyError::NotAProxyRequest
        );
        assert_eq!(
            e(b"GET example.com:80 HTTP/1.1\r\n\r\n"),
            ProxyError::Malformed("request target is not an absolute URI")
        );
        assert_eq!(
            e(b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n"),
            ProxyError::Malformed("userinfo in URI")
        );
        assert_eq!(
            e(b"GET http:///x HTTP/1.1\r\n\r\n"),
            ProxyError::BadTarget(AddressError::EmptyHost)
        );
        assert_eq!(
            e(b"GET http://a b/ HTTP/1.1\r\n\r\n"),
            ProxyError::Malformed("not HTTP/1.0 or HTTP/1.1")
        );
        assert_eq!(
            e(b"connect example.com:443 HTTP/1.1\r\n\r\n"),
            ProxyError::Malformed("request target is not an absolute URI")
        );
    }

    #[test]
    fn garbage_is_refused_early() {
        let e = |input: &[u8]| read(input).unwrap_err().status();
        // A TLS ClientHello sent to the plain-text proxy.
        assert_eq!(e(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), 400);
        assert_eq!(e(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 400);
        assert_eq!(e(b"GET http://a/ HTTP/1.1\r\nBad Name: x\r\n\r\n"), 400);
        assert_eq!(e(b"GET http://a/ HTTP/1.1\r\nA: b\r\n c\r\n\r\n"), 400);
        assert_eq!(e(b"\r\r"), 400);
        // Fed a byte at a time, garbage is noticed long before the size limit.
        let mut r = open();
        let mut fed = 0;
        let err = loop {
            fed += 1;
            if let Err(e) = r.feed(b"\x00") {
                break e;
            }
        };
        assert_eq!((err.status(), fed), (400, 1));
        assert_eq!(r.feed(b"GET http://a/ HTTP/1.1\r\n\r\n"), Err(err));
        // After a valid prefix, within twice its length.
        let prefix = b"GET http://a/ HTTP/1.1\r\nX: y\r\n";
        let mut r = open();
        assert_eq!(r.feed(prefix), Ok(None));
        let extra = (1..).find(|_| r.feed(b"(").is_err()).unwrap();
        assert!(extra <= prefix.len(), "{extra}");
    }

    #[test]
    fn blank_lines_before_request_line() {
        let (target, head) = forward(b"\r\n\n\r\nGET http://a.example/ HTTP/1.1\r\n\r\n");
        assert_eq!(target, "a.example:80");
        assert!(head.starts_with("GET / HTTP/1.1\r\n"));
        let mut r = open();
        for _ in 0..1000 {
            assert_eq!(r.feed(b"\r\n"), Ok(None));
        }
        let req = r.feed(b"CONNECT a:1 HTTP/1.1\n\nx").unwrap().unwrap();
        assert_eq!((req.target(), r.leftover()), ("a:1", &b"x"[..]));
    }

    #[test]
    fn split_at_every_boundary() {
        let inputs: [&[u8]; 4] = [
            b"GET http://example.com:8080/a?b HTTP/1.1\r\nHost: x\r\nConnection: close, X-A\r\n\
              X-A: 1\r\nAccept: */*\r\n\r\nbody bytes",
            b"CONNECT [::1]:443 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n\x16",
            b"\r\nGET http://a/ HTTP/1.0\n\n",
            b"GET http://a/ HTTP/1.1\r\nX: y\r\n\n\r\n",
        ];
        for input in inputs {
            let mut expect = open();
            let expected = expect.feed(input);
            assert!(expected.as_ref().is_ok_and(|r| r.is_some()), "{expected:?}");
            for cut in 0..=input.len() {
                let mut r = open();
                let first = r.feed(&input[..cut]).unwrap();
                let second = r.feed(&input[cut..]).unwrap();
                assert_eq!(first.or(second), expected.clone().unwrap(), "cut at {cut}");
                assert_eq!(r.leftover(), expect.leftover(), "cut at {cut}");
            }
            let mut r = open();
            let mut got = None;
            for b in input {
                if let Some(req) = r.feed(std::slice::from_ref(b)).unwrap() {
                    assert!(got.is_none());
                    got = Some(req);
                }
            }
            assert_eq!(got, expected.clone().unwrap());
            assert_eq!(r.leftover(), expect.leftover());
        }
    }

    #[test]
    fn head_size_limit() {
        let head = |len: usize| {
            let start = "GET http://a/ HTTP/1.1\r\nX: ";
            let pad = len - start.len() - 4;
            format!("{start}{}\r\n\r\n", "y".repeat(pad)).into_bytes()
        };
        let limits = Limits { max_head: 100 };
        let mut r = ProxyRequestReader::new(limits, None);
        assert!(r.feed(&head(100)).unwrap().is_some());
        let mut r = ProxyRequestReader::new(limits, None);
        assert_eq!(r.feed(&head(101)), Err(ProxyError::HeadTooLarge));
        // A byte at a time, the limit is hit at the 100th byte.
        let mut r = ProxyRequestReader::new(limits, None);
        let big = head(1000);
        let n = big.iter().position(|b| r.feed(&[*b]).is_err()).unwrap();
        assert_eq!(n, 99);
        assert_eq!(r.feed(b"\r\n\r\n"), Err(ProxyError::HeadTooLarge));
        assert_eq!(r.leftover(), b"");
        // The default limit, and too many fields.
        let mut big = b"GET http://a/ HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', DEFAULT_MAX_HEAD));
        assert_eq!(read(&big), Err(ProxyError::HeadTooLarge));
        let mut many = b"GET http://a/ HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(read(&many), Err(ProxyError::HeadTooLarge));
        // Zero admits nothing, and says so.
        let mut r = ProxyRequestReader::new(Limits { max_head: 0 }, None);
        assert_eq!(r.feed(b""), Err(ProxyError::HeadTooLarge));
    }

    #[test]
    fn basic_auth() {
        // "alice:s3cret"
        let req =
            |auth: &str| with_auth().feed(format!("CONNECT a:1 HTTP/1.1\r\n{auth}\r\n").as_bytes());
        let ok = |auth: &str| assert!(matches!(req(auth), Ok(Some(_))), "{auth}");
        let refused = |auth: &str| assert_eq!(req(auth), Err(ProxyError::AuthRequired), "{auth}");
        ok("Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n");
        ok("proxy-authorization: basic   YWxpY2U6czNjcmV0\r\n");
        ok("Proxy-Authorization: BASIC YWxpY2U6czNjcmV0\r\n");
        // Unpadded base64 of "alice:s3cret!" would not match; padding itself is optional.
        ok("Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\nProxy-Authorization: Basic eA==\r\n");
        refused("");
        refused("Authorization: Basic YWxpY2U6czNjcmV0\r\n");
        refused("Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n"); // alice:wrong
        refused("Proxy-Authorization: Basic YWxpY2U6czNjcmV0IQ==\r\n"); // alice:s3cret!
        refused("Proxy-Authorization: Bearer YWxpY2U6czNjcmV0\r\n");
        refused("Proxy-Authorization: Basic\r\n");
        refused("Proxy-Authorization: Basic !!!!\r\n");
        refused("Proxy-Authorization: Basic YWxpY2U6czNjcmV0é\r\n");
        // Padding is optional: "alice:pw" encodes to "YWxpY2U6cHc=".
        let mut r = ProxyRequestReader::new(Limits::default(), Some(("alice".into(), "pw".into())));
        assert!(r
            .feed(b"GET http://a/ HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6cHc\r\n\r\n")
            .unwrap()
            .is_some());
        // Authentication comes before anything is said about the request.
        assert_eq!(
            with_auth().feed(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ProxyError::AuthRequired)
        );
    }

    #[test]
    fn responses() {
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        assert_eq!(
            text(ProxyError::AuthRequired.response()),
            "HTTP/1.1 407 Proxy Authentication Required\r\n\
             Proxy-Authenticate: Basic realm=\"quelay\"\r\nConnection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 30\r\n\r\n\
             proxy authentication required\n"
        );
        assert_eq!(
            text(response_connected()),
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        assert_eq!(
            text(response_bad_gateway("connection refused")),
            "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\r\n\
             connection refused\n"
        );
        assert!(text(response_unavailable("no relay"))
            .starts_with("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"));
        for (e, line) in [
            (ProxyError::Malformed("x"), "HTTP/1.1 400 Bad Request\r\n"),
            (
                ProxyError::BadTarget(AddressError::BadPort),
                "HTTP/1.1 400 Bad Request\r\n",
            ),
            (
                ProxyError::UnsupportedScheme,
                "HTTP/1.1 400 Bad Request\r\n",
            ),
            (
                ProxyError::NotAProxyRequest,
                "HTTP/1.1 405 Method Not Allowed\r\n",
            ),
            (
                ProxyError::HeadTooLarge,
                "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            ),
        ] {
            let resp = text(e.response());
            assert!(resp.starts_with(line), "{resp}");
            assert!(resp.contains("\r\nConnection: close\r\n"), "{resp}");
            assert_eq!(
                resp[..12].split(' ').nth(1).unwrap(),
                e.status().to_string()
            );
            let (head, body) = resp.split_once("\r\n\r\n").unwrap();
            assert!(
                head.ends_with(&format!("Content-Length: {}", body.len())),
                "{resp}"
            );
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x7175_656c_6179);
        let valid: [&[u8]; 3] = [
            b"GET http://example.com:8080/a?b HTTP/1.1\r\nHost: x\r\nConnection: X-A\r\n\r\nbody",
            b"CONNECT [::1]:443 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n",
            b"POST http://a/ HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ];
        let alphabet = b"GET http://[]:/?# HTTP/1.1\r\n:abc\x00\xff";
        for round in 0..3000 {
            let mut input = valid[round % valid.len()].to_vec();
            match round % 3 {
                0 => {
                    for _ in 0..rng.gen_range(1..8) {
                        let i = rng.gen_range(0..input.len());
                        input[i] = rng.gen();
                    }
                }
                1 => {
                    for _ in 0..rng.gen_range(1..8) {
                        let i = rng.gen_range(0..=input.len());
                        input.insert(i, alphabet[rng.gen_range(0..alphabet.len())]);
                    }
                }
                _ => {
                    let len = rng.gen_range(0..300);
                    input = (0..len).map(|_| rng.gen()).collect();
                }
            }
            let max_head = rng.gen_range(0..200);
            let auth = (round % 2 == 0).then(|| ("alice".to_owned(), "s3cret".to_owned()));
            let mut r = ProxyRequestReader::new(Limits { max_head }, auth);
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(rng.gen_range(1..=rest.len()));
                rest = tail;
                match r.feed(chunk) {
                    Ok(Some(req)) => assert!(!req.target().is_empty()),
                    Ok(None) => {}
                    Err(e) => {
                        let resp = e.response();
                        assert!(resp.starts_with(b"HTTP/1.1 4"));
                    }
                }
            }
            let _ = r.take_leftover();
        }
    }
}
