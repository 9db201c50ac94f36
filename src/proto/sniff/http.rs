//! The host of an HTTP/1.x request head, read the way Go's `http.ReadRequest` reads it.
//!
//! The official sniffer hands the stream to `http.ReadRequest` and takes `req.Host`: the host
//! of an absolute-form (or CONNECT authority-form) request target, else the `Host:` header.
//! Every head Go refuses (a malformed request line, target or header line, two `Host:`
//! headers, a bad `Content-Length` or `Transfer-Encoding`) gives no host; so does a head not
//! complete within [`MAX_TCP_SNIFF_LEN`] bytes of the stream. Lines are read as Go reads
//! them: they end at LF with one CR before it dropped, and a line starting with a space or tab
//! continues the header line before it.

use super::{TcpSniff, MAX_TCP_SNIFF_LEN};
use crate::proto::addr::split_go;

/// The head can never yield a host: Go's `ReadRequest` would return an error.
#[derive(Debug)]
struct Refused;

/// Where in the head the next line belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The request line.
    RequestLine,
    /// The first header line, which may not start with white space.
    FirstHeader,
    /// A header line, or a continuation of the one before.
    Headers,
}

/// Reads a request head line by line as the stream's bytes arrive.
#[derive(Debug)]
pub(super) struct HeadReader {
    /// Start of the first line not read yet; grows by whole lines.
    pos: usize,
    /// The bytes from `pos` up to here hold no LF; the next search starts here.
    scanned: usize,
    /// What the line at `pos` is.
    stage: Stage,
    /// The request line's HTTP version (major, minor); set with the request line.
    version: (u8, u8),
    /// The host of the request target (empty for origin-form); set with the request line.
    target_host: Vec<u8>,
    /// The last header line with its continuations, trimmed; it is complete, and checked, once
    /// the next line turns out not to start with white space.
    pending: Option<Vec<u8>>,
    /// What the complete header lines said.
    headers: Headers,
}

/// The headers `ReadRequest` looks at, as far as the head has been read.
#[derive(Debug, Default)]
struct Headers {
    /// The first `Host:` value.
    host: Option<Vec<u8>>,
    /// How many `Host:` headers there were (more than one is refused).
    host_count: usize,
    /// The first `Content-Length:` value, trimmed.
    content_length: Option<Vec<u8>>,
    /// Whether a later `Content-Length:` value differs from the first.
    content_length_differs: bool,
    /// The first `Transfer-Encoding:` value.
    transfer_encoding: Option<Vec<u8>>,
    /// How many `Transfer-Encoding:` headers there were (only one is accepted).
    transfer_encoding_count: usize,
    /// Whether a `Trailer:` header names Transfer-Encoding, Trailer or Content-Length.
    trailer_forbidden: bool,
}

impl HeadReader {
    pub(super) fn new() -> Self {
        Self {
            pos: 0,
            scanned: 0,
            stage: Stage::RequestLine,
            version: (0, 0),
            target_host: Vec::new(),
            pending: None,
            headers: Headers::default(),
        }
    }

    /// Reads the lines `buf` (the whole stream so far) completes since the last call.
    pub(super) fn read(&mut self, buf: &[u8]) -> TcpSniff {
        match self.advance(buf) {
            Ok(None) => TcpSniff::NeedMore,
            Ok(Some(host)) => found(host),
            Err(Refused) => TcpSniff::Nothing,
        }
    }

    fn advance(&mut self, buf: &[u8]) -> Result<Option<Vec<u8>>, Refused> {
        // Go reads through a LimitReader: bytes past the limit are never seen, and a head that
        // has not ended by then meets EOF, which fails the parse.
        let window = buf.get(..MAX_TCP_SNIFF_LEN).unwrap_or(buf);
        loop {
            let rest = window.get(self.pos..).unwrap_or_default();
            if rest.first().is_some_and(|&b| b != b' ' && b != b'\t') {
                if let Some(kv) = self.pending.take() {
                    self.headers.add(&kv)?;
                }
            }
            let from = self.scanned.max(self.pos);
            let Some(lf) = window
                .get(from..)
                .and_then(|r| r.iter().position(|&b| b == b'\n'))
            else {
                self.scanned = window.len();
                return if window.len() >= MAX_TCP_SNIFF_LEN {
                    Err(Refused)
                } else {
                    Ok(None)
                };
            };
            let end = from + lf;
            let line = window.get(self.pos..end).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.pos = end + 1;
            self.scanned = self.pos;
            match self.stage {
                Stage::RequestLine => {
                    self.request_line(line)?;
                    self.stage = Stage::FirstHeader;
                }
                _ if line.is_empty() => return self.finish().map(Some),
                stage if matches!(line.first(), Some(b' ' | b'\t')) => {
                    // "The first line cannot start with a leading space."
                    let (Stage::Headers, Some(kv)) = (stage, self.pending.as_mut()) else {
                        return Err(Refused);
                    };
                    kv.push(b' ');
                    kv.extend_from_slice(trim(line));
                }
                _ => {
                    // The field name must be on the first line of a header.
                    if !line.contains(&b':') {
                        return Err(Refused);
                    }
                    self.pending = Some(trim(line).to_vec());
                    self.stage = Stage::Headers;
                }
            }
        }
    }

    /// `METHOD SP request-target SP HTTP/x.y`, as Go's `parseRequestLine`, `validMethod`,
    /// `ParseHTTPVersion` and `url.ParseRequestURI` accept it.
    fn request_line(&mut self, line: &[u8]) -> Result<(), Refused> {
        let (method, rest) = split_once(line, b' ').ok_or(Refused)?;
        let (target, proto) = split_once(rest, b' ').ok_or(Refused)?;
        if method.is_empty() || !method.iter().copied().all(is_tchar) {
            return Err(Refused);
        }
        self.version = match proto {
            b"HTTP/1.1" => (1, 1),
            b"HTTP/1.0" => (1, 0),
            [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                if major.is_ascii_digit() && minor.is_ascii_digit() =>
            {
                (major - b'0', minor - b'0')
            }
            _ => return Err(Refused),
        };
        // A CONNECT target is an authority ("host:port"); Go parses it as "http://" + target.
        self.target_host = if method == b"CONNECT" && !target.starts_with(b"/") {
            let mut url = b"http://".to_vec();
            url.extend_from_slice(target);
            target_host(&url)?
        } else {
            target_host(target)?
        };
        Ok(())
    }

    /// The head is complete: the checks `ReadRequest` makes after the headers, then the host.
    fn finish(&mut self) -> Result<Vec<u8>, Refused> {
        let h = std::mem::take(&mut self.headers);
        if h.host_count > 1 {
            return Err(Refused);
        }
        // Go reads version 0.0 as 1.1, and ignores Transfer-Encoding below 1.1.
        let (major, minor) = match self.version {
            (0, 0) => (1, 1),
            v => v,
        };
        let chunked = h.transfer_encoding_count > 0 && (major, minor) >= (1, 1);
        if chunked {
            let single_chunked = h.transfer_encoding_count == 1
                && h.transfer_encoding
                    .as_deref()
                    .is_some_and(|te| te.eq_ignore_ascii_case(b"chunked"));
            if !single_chunked || h.trailer_forbidden {
                return Err(Refused);
            }
        } else if let Some(cl) = &h.content_length {
            // Chunked framing overrides (and drops) Content-Length; otherwise every value must
            // be the same non-negative decimal below 2^63.
            if h.content_length_differs || !is_content_length(cl) {
                return Err(Refused);
            }
        }
        Ok(if self.target_host.is_empty() {
            h.host.unwrap_or_default()
        } else {
            std::mem::take(&mut self.target_host)
        })
    }
}

impl Headers {
    /// One complete header line (with its continuations), as `textproto.ReadMIMEHeader`
    /// checks it.
    fn add(&mut self, kv: &[u8]) -> Result<(), Refused> {
        let (key, value) = split_once(kv, b':').ok_or(Refused)?;
        // Go accepts a space in a field name but then leaves the name as it is, so it never
        // matches the names below.
        if key.is_empty() || !key.iter().all(|&b| is_tchar(b) || b == b' ') {
            return Err(Refused);
        }
        if !value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
        {
            return Err(Refused);
        }
        if key.contains(&b' ') {
            return Ok(());
        }
        let value = value.trim_ascii_start();
        if key.eq_ignore_ascii_case(b"host") {
            self.host_count += 1;
            self.host.get_or_insert_with(|| value.to_vec());
        } else if key.eq_ignore_ascii_case(b"content-length") {
            let value = value.trim_ascii();
            match &self.content_length {
                None => self.content_length = Some(value.to_vec()),
                Some(first) => self.content_length_differs |= first[..] != *value,
            }
        } else if key.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding_count += 1;
            self.transfer_encoding.get_or_insert_with(|| value.to_vec());
        } else if key.eq_ignore_ascii_case(b"trailer") {
            self.trailer_forbidden |= value.split(|&b| b == b',').any(|name| {
                let name = name.trim_ascii();
                [&b"transfer-encoding"[..], b"trailer", b"content-length"]
                    .iter()
                    .any(|n| name.eq_ignore_ascii_case(n))
            });
        }
        Ok(())
    }
}

/// The answer for a complete head: its host without the port (Go's `net.SplitHostPort`, or
/// the whole host when that fails).
///
/// The official server would also take an empty host (`Host: :80`) and dial ":port", which Go
/// reads as this machine; here that gives no name and the request keeps its address. A host
/// that is not UTF-8 gives no name either.
fn found(host: Vec<u8>) -> TcpSniff {
    let Ok(host) = String::from_utf8(host) else {
        return TcpSniff::Nothing;
    };
    let name = match split_go(&host) {
        Ok((name, _, _)) => name,
        Err(_) => &host,
    };
    if name.is_empty() {
        TcpSniff::Nothing
    } else {
        TcpSniff::Found(name.to_owned())
    }
}

/// The host (with its port, percent-decoded) of a request target, as `url.ParseRequestURI`
/// finds it: empty for origin-form (`/path`), `*` and opaque (`scheme:rest`) targets.
fn target_host(raw: &[u8]) -> Result<Vec<u8>, Refused> {
    if raw.is_empty() || raw.iter().any(|&b| b < b' ' || b == 0x7f) {
        return Err(Refused);
    }
    if raw == b"*" {
        return Ok(Vec::new());
    }
    let (scheme, rest) = split_scheme(raw)?;
    let rest = match rest.iter().position(|&b| b == b'?') {
        Some(q) => rest.get(..q).unwrap_or_default(),
        None => rest,
    };
    if !rest.starts_with(b"/") {
        // A rootless path after a scheme is opaque; without a scheme it is refused.
        return if scheme.is_empty() {
            Err(Refused)
        } else {
            Ok(Vec::new())
        };
    }
    let (host, path) = match rest.strip_prefix(b"//") {
        Some(after) if !scheme.is_empty() => {
            let slash = after.iter().position(|&b| b == b'/').unwrap_or(after.len());
            let (authority, path) = after.split_at(slash);
            (authority_host(authority)?, path)
        }
        _ => (Vec::new(), rest),
    };
    if !escapes_valid(path) {
        return Err(Refused);
    }
    Ok(host)
}

/// Splits off a leading `scheme:` (`[A-Za-z][A-Za-z0-9+.-]*`); an empty scheme when there is
/// none. A target that starts with ':' is refused.
fn split_scheme(raw: &[u8]) -> Result<(&[u8], &[u8]), Refused> {
    for (i, &c) in raw.iter().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Err(Refused),
            b':' => {
                let (scheme, rest) = raw.split_at(i);
                return Ok((scheme, rest.get(1..).unwrap_or_default()));
            }
            _ => break,
        }
    }
    Ok((&[], raw))
}

/// `[userinfo@]host[:port]`: the checked and decoded `host[:port]`.
fn authority_host(authority: &[u8]) -> Result<Vec<u8>, Refused> {
    let (userinfo, hostport) = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => {
            let (user, rest) = authority.split_at(at);
            (Some(user), rest.get(1..).unwrap_or_default())
        }
        None => (None, authority),
    };
    let host = parse_host(hostport)?;
    if let Some(user) = userinfo {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&b);
        if !user.iter().all(|&b| allowed(b)) || !escapes_valid(user) {
            return Err(Refused);
        }
    }
    Ok(host)
}

/// Go's `url.parseHost`: an optional numeric port after the last ':' (after the ']' of an IP
/// literal), and a host of allowed characters whose escapes may only encode non-ASCII bytes,
/// except `%25` which introduces an IPv6 zone.
fn parse_host(host: &[u8]) -> Result<Vec<u8>, Refused> {
    if host.starts_with(b"[") {
        let close = host.iter().rposition(|&b| b == b']').ok_or(Refused)?;
        let (literal, port) = host.split_at(close + 1);
        if !optional_port(port) {
            return Err(Refused);
        }
        let inside = literal.get(..close).unwrap_or_default();
        if let Some(zone) = inside.windows(3).position(|w| w == b"%25") {
            let (addr, zone) = inside.split_at(zone);
            let mut out = unescape_host(addr, false)?;
            out.extend(unescape_host(zone, true)?);
            out.extend(unescape_host(host.get(close..).unwrap_or_default(), false)?);
            return Ok(out);
        }
    } else if let Some(colon) = host.iter().rposition(|&b| b == b':') {
        if !optional_port(host.get(colon..).unwrap_or_default()) {
            return Err(Refused);
        }
    }
    unescape_host(host, false)
}

/// Empty, or ':' and decimal digits.
fn optional_port(port: &[u8]) -> bool {
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// Percent-decodes a host (or, with `zone`, an IPv6 zone), refusing what Go's `unescape`
/// refuses in those modes.
fn unescape_host(s: &[u8], zone: bool) -> Result<Vec<u8>, Refused> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        if c == b'%' {
            let hi = s.get(i + 1).and_then(|&b| hex(b)).ok_or(Refused)?;
            let lo = s.get(i + 2).and_then(|&b| hex(b)).ok_or(Refused)?;
            let v = hi << 4 | lo;
            let refused = if zone {
                v != b'%' && v != b' ' && !host_char(v)
            } else {
                // "%-encoding can only be used for non-ASCII bytes" (RFC 3986), and %25.
                hi < 8 && v != b'%'
            };
            if refused {
                return Err(Refused);
            }
            out.push(v);
            i += 3;
        } else {
            if c < 0x80 && !host_char(c) {
                return Err(Refused);
            }
            out.push(c);
            i += 1;
        }
    }
    Ok(out)
}

/// The characters Go leaves unescaped in a host: unreserved, sub-delims, and `:[]<>"`.
fn host_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-_.~!$&'()*+,;=:[]<>\"".contains(&c)
}

/// Whether every '%' is followed by two hex digits (all Go checks in a path or userinfo).
fn escapes_valid(s: &[u8]) -> bool {
    s.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || (s.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// A token character (RFC 9110 §5.6.2), as HTTP methods and field names use.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty decimal number below 2^63 (Go's `strconv.ParseUint(s, 10, 63)`).
fn is_content_length(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter().all(u8::is_ascii_digit)
        && s.iter()
            .try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .is_some_and(|n| n <= i64::MAX as u64)
}

/// Leading and trailing spaces and tabs removed (textproto's `trim`).
fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t');
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(a), Some(b)) => s.get(a..=b).unwrap_or_default(),
        _ => &[],
    }
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == sep)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}
