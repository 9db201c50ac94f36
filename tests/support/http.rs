//! A minimal HTTP/1.1 client over any stream, and the message-head parser the HTTP target
//! shares with it. Bodies are delimited by Content-Length (or, in responses, by EOF).

use std::io::{self, BufRead, BufReader, Read, Write};

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
        .start
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
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
