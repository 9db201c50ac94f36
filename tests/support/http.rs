//! A minimal HTTP/1.1 client over any stream, and the message-head parser the HTTP target
//! shares with it. Bodies are delimited by Content-Length (or, in responses, by EOF).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use base64::Engine as _;

use super::SOCKS_TIMEOUT;

/// Longest accepted head line, and most accepted header lines: a peer sending more is broken.
const MAX_LINE: usize = 8 * 1024;
const MAX_HEADERS: usize = 100;
/// The largest response body the client reads.
const MAX_BODY: u64 = 1 << 30;

/// A request or response head.
#[derive(Debug)]
pub struct Head {
    /// The request line or status line.
    pub start: String,
    /// Header names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.parse().ok()
    }

    /// The status code of a response head.
    pub fn status(&self) -> Option<u16> {
        self.start
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|s| s.parse::<u16>().ok())
    }

    pub fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one CRLF-terminated line, without the line ending; `None` at a clean EOF.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if n > MAX_LINE {
            invalid(format!("HTTP line longer than {MAX_LINE} bytes"))
        } else {
            io::ErrorKind::UnexpectedEof.into()
        });
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("HTTP head is not UTF-8".into()))
}

/// Reads a message head; `None` if the stream ends cleanly before it starts.
pub fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let Some(start) = read_line(r)? else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        if line.is_empty() {
            return Ok(Some(Head { start, headers }));
        }
        if headers.len() == MAX_HEADERS {
            return Err(invalid(format!("more than {MAX_HEADERS} header lines")));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("header line without a colon: {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// `GET path` with a Host header; returns the status code and the body.
pub fn http_get<S: Read + Write>(
    stream: &mut S,
    host: &str,
    path: &str,
) -> io::Result<(u16, Vec<u8>)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: quelay-tests\r\n\r\n");
    stream.write_all(req.as_bytes())?;
    stream.flush()?;
    read_response(stream)
}

/// `POST path` with `body` and a Content-Length; returns the status code and the body.
pub fn http_post<S: Read + Write>(
    stream: &mut S,
    host: &str,
    path: &str,
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: quelay-tests\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(req.as_bytes())?;
    for chunk in body.chunks(256 * 1024) {
        stream.write_all(chunk)?;
    }
    stream.flush()?;
    read_response(stream)
}

fn read_response<S: Read>(stream: &mut S) -> io::Result<(u16, Vec<u8>)> {
    // Exactly one response is outstanding, so the reader cannot buffer bytes of a later one.
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let head = read_head(&mut r)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the response",
        )
    })?;
    let status = head
        .status()
        .ok_or_else(|| invalid(format!("bad status line {:?}", head.start)))?;
    let mut body = Vec::new();
    match head.content_length() {
        Some(len) if len > MAX_BODY => {
            return Err(invalid(format!("Content-Length {len} over {MAX_BODY}")))
        }
        Some(len) => {
            body.reserve_exact(len as usize);
            let got = (&mut r).take(len).read_to_end(&mut body)?;
            if (got as u64) < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body ended after {got} of {len} bytes"),
                ));
            }
        }
        None => {
            r.take(MAX_BODY).read_to_end(&mut body)?;
        }
    }
    Ok((status, body))
}

/// Reads a message head one byte at a time, so that nothing after it is consumed (the bytes
/// of a CONNECT tunnel follow the proxy's response head). `None` if the stream ends cleanly
/// before the head starts.
pub fn read_head_unbuffered(r: &mut impl Read) -> io::Result<Option<Head>> {
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() > MAX_LINE * 4 {
            return Err(invalid(format!(
                "response head over {} bytes",
                MAX_LINE * 4
            )));
        }
        if r.read(&mut byte)? == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "stream ended inside a head: {:?}",
                    String::from_utf8_lossy(&head)
                ),
            ));
        }
        head.push(byte[0]);
    }
    read_head(&mut &head[..])
}

/// The value of a `Proxy-Authorization: Basic` field for `user:pass`.
pub fn basic_auth(user: &str, pass: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {token}")
}

/// Connects to the HTTP proxy at `proxy` (with `SOCKS_TIMEOUT` timeouts) and sends
/// `CONNECT target`, with Basic credentials if given. Returns the response head and the
/// stream, positioned at the first tunnel byte when the status is 200.
pub fn http_connect(
    proxy: SocketAddr,
    target: &str,
    auth: Option<(&str, &str)>,
) -> io::Result<(Head, TcpStream)> {
    let mut s = TcpStream::connect_timeout(&proxy, SOCKS_TIMEOUT)?;
    s.set_read_timeout(Some(SOCKS_TIMEOUT))?;
    s.set_write_timeout(Some(SOCKS_TIMEOUT))?;
    s.set_nodelay(true)?;
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = auth {
        req.push_str(&format!(
            "Proxy-Authorization: {}\r\n",
            basic_auth(user, pass)
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let head = read_head_unbuffered(&mut s)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "proxy closed before answering CONNECT",
        )
    })?;
    Ok((head, s))
}
