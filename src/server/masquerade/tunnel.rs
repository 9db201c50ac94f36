//! Connection upgrades (WebSocket) through the `proxy` masquerade on the TCP listeners, as
//! Go's ReverseProxy passes them. An HTTP/1.1 request whose `Connection` names `upgrade`
//! goes upstream as the proxy sends any request, with its `Upgrade` field kept. A `101` for
//! the same protocol goes back to the client, and the two connections are then joined byte
//! for byte until either side closes; any other answer is relayed as it is, its body up to
//! 1 MiB. HTTP/2 carries no such upgrades.
//!
//! Bounds: at most [`MAX_TUNNELS`] joined connections at once (a 503 past it), and the
//! upstream has [`PROXY_TIMEOUT`] to accept, finish TLS and answer. A joined connection
//! lives as long as both ends keep it, as in Go.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::proxy::{response_fields, PROXY_TIMEOUT};
use super::{now_http_date, response, ProxyMasquerade, Reply};
use crate::proto::h3;

/// Most upgraded connections joined at once.
pub const MAX_TUNNELS: usize = 256;
/// Largest body of an upstream answer that is not a `101`.
const MAX_ANSWER_BODY: usize = 1 << 20;

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade` field, when
/// `Connection` names `upgrade`.
pub fn requested(headers: &HeaderMap) -> Option<&[u8]> {
    let named = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    named
        .then(|| headers.get(UPGRADE).map(|v| v.as_bytes()))
        .flatten()
}

/// How an upgrade request ended.
pub enum Opened {
    /// The upstream switched: send a `101` with its fields; the connections are joined once
    /// it is sent.
    Switched(HeaderMap),
    /// Anything else, to be sent as the masquerade's answer.
    Answered(Reply),
}

/// The upgraded connections of the TCP listeners.
pub struct Tunnels {
    permits: Arc<Semaphore>,
    /// The upstream TLS configuration, built at the first use: checked, and `insecure`.
    tls: [OnceLock<Result<Arc<rustls::ClientConfig>, String>>; 2],
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            permits: Arc::new(Semaphore::new(MAX_TUNNELS)),
            tls: [OnceLock::new(), OnceLock::new()],
        }
    }
}

impl Tunnels {
    /// Relays `req` (its head read as `head`), which asks to switch to `kind`, through
    /// `proxy`.
    pub async fn open(
        &self,
        proxy: &ProxyMasquerade,
        mut req: Request<Incoming>,
        head: &h3::Request,
        kind: &[u8],
        peer: SocketAddr,
    ) -> Opened {
        let date = now_http_date();
        let fail = |status: u16, why: &str| {
            crate::warn_limited!("masquerade proxy: upgrade: {why}");
            Opened::Answered(response(status, &[("date", &date)], b""))
        };
        // Go refuses a protocol name that is not printable ASCII.
        let Some(kind) = std::str::from_utf8(kind)
            .ok()
            .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic()))
        else {
            return fail(400, "the client asked for an unprintable protocol");
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return fail(503, "too many upgraded connections");
        };
        let upstream_head = match proxy.upgrade_head(head, peer, kind) {
            Ok(h) => h,
            Err(e) => return fail(502, &e),
        };
        let mut answer = match timeout(PROXY_TIMEOUT, self.exchange(proxy, upstream_head)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return fail(502, &e),
            Err(_) => return fail(502, "the upstream did not answer in time"),
        };
        if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
            return match relay(answer, &date).await {
                Ok(reply) => Opened::Answered(reply),
                Err(e) => fail(502, &e),
            };
        }
        let switched_to = answer.headers().get(UPGRADE).map(|v| v.as_bytes());
        if !switched_to.is_some_and(|s| s.eq_ignore_ascii_case(kind.as_bytes())) {
            return fail(
                502,
                &format!(
                    "the upstream switched to {:?} when {kind:?} was asked for",
                    String::from_utf8_lossy(switched_to.unwrap_or_default())
                ),
            );
        }
        // Go sends the upstream's 101 fields as they are.
        let fields = answer.headers().clone();
        let from_upstream = hyper::upgrade::on(&mut answer);
        let from_client = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let _permit = permit;
            let (Ok(client), Ok(upstream)) = (from_client.await, from_upstream.await) else {
                return;
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        Opened::Switched(fields)
    }

    /// Connects to the upstream (TLS for `https`) and sends `head`; its answer's head.
    async fn exchange(
        &self,
        proxy: &ProxyMasquerade,
        head: hyper::Request<()>,
    ) -> Result<Response<Incoming>, String> {
        let (https, authority, insecure) = proxy.upstream();
        let parsed: hyper::http::uri::Authority = authority
            .parse()
            .map_err(|e| format!("upstream {authority:?}: {e}"))?;
        let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("upstream {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let head = head.map(|()| Empty::<Bytes>::new());
        if !https {
            return send(tcp, head).await;
        }
        let config = self.tls[usize::from(insecure)]
            .get_or_init(|| {
                crate::quic::tls::tcp_client_tls(insecure).map(|mut c| {
                    c.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Arc::new(c)
                })
            })
            .clone()?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("upstream {authority}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("upstream {authority}: TLS: {e}"))?;
        send(tls, head).await
    }
}

/// Sends `head` over `io` as HTTP/1.1 and returns the answer's head; the connection is
/// driven by a task of its own, which hands it over if the answer is a `101`.
async fn send<IO>(io: IO, head: Request<Empty<Bytes>>) -> Result<Response<Incoming>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
        .send_request(head)
        .await
        .map_err(|e| format!("upstream: {e}"))
}

/// An upstream answer that is not a `101`, as the masquerade's reply.
async fn relay(answer: Response<Incoming>, date: &str) -> Result<Reply, String> {
    let (parts, body) = answer.into_parts();
    let body = timeout(PROXY_TIMEOUT, Limited::new(body, MAX_ANSWER_BODY).collect())
        .await
        .map_err(|_| "the upstream's body took too long".to_owned())?
        .map_err(|e| format!("the upstream's body: {e}"))?
        .to_bytes();
    let fields = response_fields(&parts.headers, false, date);
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    Ok(response(parts.status.as_u16(), &fields, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_is_asked_for_only_with_connection_naming_it() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, "websocket".parse().unwrap());
        assert_eq!(requested(&h), None, "Upgrade alone");
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(requested(&h), Some(&b"websocket"[..]));
        h.insert(CONNECTION, "keep-alive".parse().unwrap());
        assert_eq!(requested(&h), None);
        h.remove(UPGRADE);
        h.insert(CONNECTION, "upgrade".parse().unwrap());
        assert_eq!(requested(&h), None, "Connection alone");
    }
}
