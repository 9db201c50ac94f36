//! The `file` and `proxy` masquerades (protocol notes §7): what the server answers an
//! HTTP/3 request that is not a Hysteria login, when the config names more than a canned
//! response.
//!
//! They run on the masquerade room's threads (`server::offload`), off the data path, which
//! post each response back to the worker that asked, so they may block: on the network up
//! to their timeout, on the disk as long as it takes. Neither panics on what the network,
//! the disk or the config hands it; every failure becomes an HTTP error response, as the Go
//! server would answer.

pub mod file;
pub mod proxy;

pub use file::FileMasquerade;
pub use proxy::ProxyMasquerade;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::h3::http_date;

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
