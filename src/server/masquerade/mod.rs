//! What the server answers an HTTP request that is not a Hysteria login (protocol notes §7):
//! the configured [`Masquerade`], as a transport-neutral [`Reply`] that the HTTP/3 side
//! encodes into frames and the TCP listeners ([`tcp`]) hand to hyper.
//!
//! The `file` and `proxy` kinds run off the data path (on the masquerade room's threads,
//! `server::offload`, for HTTP/3; on the TCP listeners' blocking pool), so they may block:
//! on the network up to their timeout, on the disk as long as it takes. Neither panics on
//! what the network, the disk or the config hands it; every failure becomes an HTTP error
//! response, as the Go server would answer.

pub mod file;
pub mod proxy;
pub mod tcp;

pub use file::FileMasquerade;
pub use proxy::ProxyMasquerade;

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

/// A whole response, before it is framed for a transport.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Fields in order. A `content-length` here wins over the body's length (HEAD answers
    /// carry the length of a body they do not send).
    pub headers: Vec<(String, String)>,
    /// The body; empty for HEAD.
    pub body: Vec<u8>,
}

impl Reply {
    /// First value of the field `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The complete HTTP/3 response: HEADERS (with a `content-length` if none is set), then
    /// DATA if there is a body.
    pub fn to_h3(&self) -> Vec<u8> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        h3::response(self.status, &headers, &self.body)
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
