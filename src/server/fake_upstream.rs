//! A stand-in HTTP/1.1 server on loopback for the tests of the HTTP authenticator and the
//! proxy masquerade: it answers every connection with one canned reply and reports what it
//! was sent.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// An HTTP/1.1 request as an upstream saw it: request line, lower-cased fields, body.
pub(crate) struct Seen {
    pub(crate) line: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &mut impl Read) -> io::Result<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let want: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < want {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Seen {
        line,
        headers,
        body,
    })
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every connection with `reply` (over TLS
/// with a fresh self-signed certificate if `tls`) and reports what it was sent.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: mpsc::Receiver<Seen>,
}

impl Upstream {
    pub(crate) fn start(reply: Vec<u8>, tls: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = tls.then(tls_config);
        let (tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let result = match &tls {
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                            continue;
                        };
                        let mut stream = rustls::StreamOwned::new(conn, tcp);
                        let seen = exchange(&mut stream, &reply);
                        stream.conn.send_close_notify();
                        let _ = stream.flush();
                        seen
                    }
                    None => exchange(&mut { tcp }, &reply),
                };
                if let Ok(seen) = result {
                    let _ = tx.send(seen);
                }
            }
        });
        Upstream { addr, seen }
    }

    pub(crate) fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    pub(crate) fn last(&self) -> Seen {
        self.seen.recv_timeout(Duration::from_secs(5)).unwrap()
    }
}

fn exchange(stream: &mut (impl Read + Write), reply: &[u8]) -> io::Result<Seen> {
    let seen = read_request(stream)?;
    stream.write_all(reply)?;
    stream.flush()?;
    Ok(seen)
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    Arc::new(config)
}

pub(crate) fn http_reply(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// An address nothing listens on.
pub(crate) fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The QUIC peer address the tests ask on behalf of.
pub(crate) const CLIENT: &str = "203.0.113.7:4433";
