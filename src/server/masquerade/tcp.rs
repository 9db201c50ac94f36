//! The masquerade over TCP (reference notes §7.1): `masquerade.listenHTTPS` serves the same
//! [`Masquerade`] as HTTP/3 over TLS (the QUIC certificate and SNI guard, ALPN h2 and
//! http/1.1), and `masquerade.listenHTTP` over plain HTTP/1.1, or with `forceHTTPS` a 301
//! to the HTTPS listener. Every masquerade answer gets `Alt-Svc: h3=":<QUIC port>";
//! ma=2592000` (replacing any the handler set), which points browsers at the QUIC side.
//!
//! One thread with a current-thread runtime serves both listeners, off the data path; the
//! `file` and `proxy` kinds answer on its blocking pool, which also reads their streamed
//! bodies a chunk at a time as the client takes them. Connections are bounded like the
//! admin endpoints' (`metrics::http`): a cap per listener, a TLS handshake deadline, a
//! header deadline that also closes idle HTTP/1.1 connections, and a lifetime.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Channel, Either, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderName, HeaderValue, ALT_SVC, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::tunnel::{requested, Opened, Tunnels};
use super::{html_escape, Masquerade, Reply, Tail};
use crate::metrics::http::{self as admin, accept_bounded, read_body, with_lifetime};
use crate::proto::h3;
use crate::server::acme::tlsalpn01::ACME_TLS_ALPN;

/// Most connections each listener serves at once (past it they wait in the backlog).
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an HTTP/1.1 client has to send a whole request head, counted from the start of the
/// connection or the end of the previous response: an idle connection is closed after it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a connection is served; then it finishes the requests in progress and closes.
/// It bounds HTTP/2 connections, which hyper keeps open while their pings are answered.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// HTTP/2 pings: a peer that stops answering them is dropped.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent requests on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 32;
/// Largest request body read and passed to the masquerade (the proxy sends it upstream).
pub const MAX_REQUEST_BODY: usize = 1 << 20;
/// Threads for the `file` and `proxy` answers, and how many may be queued, running or
/// streaming their bodies.
const BLOCKING_THREADS: usize = 8;
const MAX_BLOCKING_ANSWERS: usize = 256;
/// `ma` of the `Alt-Svc` field, as the reference sends it (30 days).
const ALT_SVC_MAX_AGE: u32 = 2_592_000;

/// A response body: whole, or streamed from a [`Tail`].
type Body = Either<Full<Bytes>, Channel<Bytes, io::Error>>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

/// The masquerade a reload may replace while the listeners run.
pub type Current = Arc<RwLock<Masquerade>>;

/// Where and how the TCP side listens.
#[derive(Clone, Debug)]
pub struct Listeners {
    /// `masquerade.listenHTTPS`.
    pub https: SocketAddr,
    /// `masquerade.listenHTTP`.
    pub http: Option<SocketAddr>,
    /// `masquerade.forceHTTPS`.
    pub force_https: bool,
    /// The UDP port of the QUIC listener, advertised in `Alt-Svc`.
    pub quic_port: u16,
    /// ACME HTTP-01 answers the HTTP listener gives before anything else, when ACME's
    /// HTTP-01 port is this listener's.
    pub acme_http01: Option<crate::server::acme::http01::Answers>,
}

/// Binds the listeners (errors name their config key) and serves them from a thread of
/// their own.
pub fn serve(
    listeners: &Listeners,
    tls: Arc<rustls::ServerConfig>,
    masquerade: Current,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("quelay-masq-tcp-blocking")
        .build()
        .map_err(|e| format!("masquerade.listenHTTPS: cannot start a runtime: {e}"))?;
    let (https, http) = {
        let _in_runtime = rt.enter();
        let https = admin::bind(listeners.https).map_err(|e| {
            format!(
                "masquerade.listenHTTPS: cannot listen on {}: {e}",
                listeners.https
            )
        })?;
        let http = match listeners.http {
            Some(addr) => Some(
                admin::bind(addr)
                    .map_err(|e| format!("masquerade.listenHTTP: cannot listen on {addr}: {e}"))?,
            ),
            None => None,
        };
        (https, http)
    };
    let site = Arc::new(Site {
        masquerade,
        alt_svc: alt_svc(listeners.quic_port),
        blocking: Arc::new(Semaphore::new(MAX_BLOCKING_ANSWERS)),
        tunnels: Tunnels::default(),
    });
    let acceptor = TlsAcceptor::from(tls);
    let redirect_port = listeners.force_https.then_some(listeners.https.port());
    let acme = listeners.acme_http01.clone();
    std::thread::Builder::new()
        .name("quelay-masq-tcp".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Some(http) = http {
                    let site = site.clone();
                    tokio::spawn(accept_bounded(
                        http,
                        MAX_CONNECTIONS,
                        "masquerade.listenHTTP".into(),
                        move |stream, peer| {
                            serve_http(stream, peer, site.clone(), redirect_port, acme.clone())
                        },
                    ));
                }
                accept_bounded(
                    https,
                    MAX_CONNECTIONS,
                    "masquerade.listenHTTPS".into(),
                    move |stream, peer| serve_https(stream, peer, acceptor.clone(), site.clone()),
                )
                .await
            })
        })
        .map_err(|e| format!("masquerade.listenHTTPS: cannot start a thread: {e}"))?;
    Ok(())
}

/// `h3=":<port>"; ma=2592000`.
fn alt_svc(quic_port: u16) -> HeaderValue {
    HeaderValue::from_str(&format!("h3=\":{quic_port}\"; ma={ALT_SVC_MAX_AGE}"))
        .unwrap_or_else(|_| HeaderValue::from_static("clear"))
}

/// What both listeners answer with.
struct Site {
    masquerade: Current,
    /// The `Alt-Svc` value put on every masquerade answer.
    alt_svc: HeaderValue,
    /// Bounds the `file` and `proxy` answers waiting for or running on the blocking pool.
    blocking: Arc<Semaphore>,
    /// Connection upgrades through the `proxy` kind.
    tunnels: Tunnels,
}

async fn serve_https(stream: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, site: Arc<Site>) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        // A refused SNI, a scanner, a client that never finished: nothing to answer.
        Ok(Err(_)) | Err(_) => return,
    };
    // An ACME TLS-ALPN-01 validation is done once the handshake is.
    if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
        return;
    }
    let service = service_fn(move |req| {
        let site = site.clone();
        async move { Ok::<_, Infallible>(site.answer(req, peer, "https").await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(admin::MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(admin::MAX_BUF as u32)
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let conn = std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(tls), service));
    with_lifetime(conn, CONNECTION_LIFETIME, |c| c.graceful_shutdown()).await;
}

async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    site: Arc<Site>,
    redirect_port: Option<u16>,
    acme: Option<crate::server::acme::http01::Answers>,
) {
    let service = service_fn(move |req| {
        let site = site.clone();
        let challenge = acme.as_ref().and_then(|a| a.respond(&req));
        async move {
            let resp = match (challenge, redirect_port) {
                (Some(answer), _) => answer.map(Either::Left),
                (None, Some(port)) => redirect(&req, port),
                (None, None) => site.answer(req, peer, "http").await,
            };
            Ok::<_, Infallible>(resp)
        }
    });
    admin::serve_http1(stream, service, CONNECTION_LIFETIME).await;
}

impl Site {
    /// The masquerade's answer to `req`, with `Alt-Svc`.
    async fn answer(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &str,
    ) -> Response<Body> {
        let is_head = req.method() == Method::HEAD;
        let h3_req = to_h3_request(&req, scheme);
        let masquerade = self
            .masquerade
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let (Masquerade::Proxy(proxy), Some(kind)) = (&masquerade, requested(req.headers())) {
            let kind = kind.to_vec();
            return match self.tunnels.open(proxy, req, &h3_req, &kind, peer).await {
                Opened::Switched(fields) => {
                    let mut resp = Response::new(full(Bytes::new()));
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    *resp.headers_mut() = fields;
                    resp.headers_mut().insert(ALT_SVC, self.alt_svc.clone());
                    resp
                }
                Opened::Answered(reply) => self.finish(reply, is_head, None),
            };
        }
        let body = req.into_body();
        let body = match read_body(body, MAX_REQUEST_BODY).await {
            Ok(body) => body,
            Err(refusal) => {
                let reply = Reply {
                    status: refusal.status,
                    headers: vec![("content-type".into(), refusal.content_type.into())],
                    body: refusal.body.into_bytes(),
                    tail: None,
                };
                return self.finish(reply, is_head, None);
            }
        };
        let req = h3_req;
        if !masquerade.blocks() {
            return self.finish(masquerade.answer(&req, &body, peer), is_head, None);
        }
        let Ok(permit) = self.blocking.clone().try_acquire_owned() else {
            return self.finish(unavailable(), is_head, None);
        };
        let reply = tokio::task::spawn_blocking(move || masquerade.answer(&req, &body, peer))
            .await
            .unwrap_or_else(|_| unavailable());
        self.finish(reply, is_head, Some(permit))
    }

    /// `reply` as hyper sends it, with `Alt-Svc` in place of any the handler set; a
    /// streamed body keeps `permit` until it is sent.
    fn finish(
        &self,
        reply: Reply,
        is_head: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Response<Body> {
        let mut resp = to_hyper(reply, is_head, permit);
        resp.headers_mut().insert(ALT_SVC, self.alt_svc.clone());
        resp
    }
}

/// The answer when the blocking pool is saturated.
fn unavailable() -> Reply {
    Reply {
        status: 503,
        headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
        body: b"503 Service Unavailable\n".to_vec(),
        tail: None,
    }
}

/// The request as the masquerade reads it: `:authority` from the URI (HTTP/2, or an
/// absolute-form HTTP/1.1 target) or else `Host`, as Go's `r.Host`; `host` itself is not a
/// field there.
fn to_h3_request<B>(head: &Request<B>, scheme: &str) -> h3::Request {
    let authority = head
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            head.headers()
                .get(HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let path = head
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let headers = head
        .headers()
        .iter()
        .filter(|(name, _)| *name != HOST)
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    h3::Request {
        method: head.method().as_str().to_owned(),
        scheme: scheme.to_owned(),
        authority,
        path,
        protocol: String::new(),
        headers,
    }
}

/// A [`Reply`] as a hyper response. Fields hyper cannot carry are dropped; a
/// `content-length` is kept for HEAD and streamed bodies (hyper measures a whole one).
fn to_hyper(reply: Reply, is_head: bool, permit: Option<OwnedSemaphorePermit>) -> Response<Body> {
    let measured = reply.tail.is_none() && !is_head;
    let body = match reply.tail {
        None => full(reply.body),
        Some(tail) => Either::Right(stream(reply.body, tail, permit)),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    for (name, value) in &reply.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            continue;
        };
        if name == CONTENT_LENGTH && measured {
            continue;
        }
        headers.append(name, value);
    }
    resp
}

/// `first`, then the tail read on the blocking pool a chunk at a time, each once the client
/// took the one before. A failed read aborts the body, so that the client sees it cut
/// rather than short and complete; a client that goes away ends the reading. `permit` is
/// held until then.
fn stream(
    first: Vec<u8>,
    mut tail: Tail,
    permit: Option<OwnedSemaphorePermit>,
) -> Channel<Bytes, io::Error> {
    let (mut tx, body) = Channel::new(1);
    tokio::spawn(async move {
        let _permit = permit;
        if !first.is_empty() && tx.send_data(Bytes::from(first)).await.is_err() {
            return;
        }
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let chunk = tail.next_chunk();
                (tail, chunk)
            });
            let Ok((rest, chunk)) = read.await else {
                return tx.abort(io::Error::other("the body's reader failed"));
            };
            tail = rest;
            match chunk {
                Ok(Some(chunk)) => {
                    if tx.send_data(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => return tx.abort(e),
            }
        }
    });
    body
}

/// `forceHTTPS`: `301` to `https://<Host as received>[:<HTTPS port>]<request URI>`, the port
/// inserted when it is not 443 (even after a Host that carries a port, as the reference
/// does). Go's `http.Redirect` body for GET and HEAD; no `Alt-Svc`.
fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<Body> {
    let host = req
        .headers()
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let location = format!("https://{host}{port}{target}");
    let Ok(value) = HeaderValue::from_str(&location) else {
        let mut bad = Response::new(full(Bytes::from_static(b"400 Bad Request\n")));
        *bad.status_mut() = StatusCode::BAD_REQUEST;
        return bad;
    };
    let get_or_head = matches!(*req.method(), Method::GET | Method::HEAD);
    let body = if get_or_head {
        format!(
            "<a href=\"{}\">Moved Permanently</a>.\n\n",
            html_escape(&location)
        )
    } else {
        String::new()
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    resp.headers_mut().insert(LOCATION, value);
    if get_or_head {
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_names_the_quic_port() {
        assert_eq!(alt_svc(8443), "h3=\":8443\"; ma=2592000");
    }

    #[test]
    fn a_reply_keeps_its_fields_and_drops_what_hyper_cannot_send() {
        let reply = || Reply {
            status: 418,
            headers: vec![
                ("x-site".into(), "teapot".into()),
                ("bad name".into(), "x".into()),
                ("x-bad-value".into(), "a\nb".into()),
                ("content-length".into(), "99".into()),
            ],
            body: b"short".to_vec(),
            tail: None,
        };
        let resp = to_hyper(reply(), false, None);
        assert_eq!(resp.status(), 418);
        assert_eq!(resp.headers()["x-site"], "teapot");
        assert_eq!(resp.headers().len(), 1, "{:?}", resp.headers());
        let head = to_hyper(reply(), true, None);
        assert_eq!(head.headers()["content-length"], "99");
    }

    #[test]
    fn a_streamed_body_arrives_whole_with_its_length_or_is_cut() {
        use http_body_util::BodyExt;

        let whole: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let streamed = |promised: usize| Reply {
            status: 200,
            headers: vec![("content-length".into(), promised.to_string())],
            body: whole[..1000].to_vec(),
            tail: Some(Tail::new(
                std::io::Cursor::new(whole[1000..].to_vec()),
                Some((promised - 1000) as u64),
            )),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let resp = to_hyper(streamed(whole.len()), false, None);
            assert_eq!(resp.headers()["content-length"], "300000");
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(got == whole, "the body arrives whole and in order");

            // The source ends short of the promised length: the body fails.
            let resp = to_hyper(streamed(whole.len() + 1), false, None);
            assert!(resp.into_body().collect().await.is_err());
        });
    }

    #[test]
    fn html_escape_like_go() {
        assert_eq!(html_escape("a&b<c>\"'"), "a&amp;b&lt;c&gt;&#34;&#39;");
    }

    #[test]
    fn a_taken_port_is_reported_under_its_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("address");
        let ck = crate::quic::self_signed(&["localhost".into()]).expect("certificate");
        let cert = crate::quic::CertSwap::new(&ck, crate::quic::SniGuard::Disable).expect("cert");
        let tls = crate::quic::tcp_server_tls(cert, &[b"h2", b"http/1.1"]).expect("tls");
        let current: Current = Arc::new(RwLock::new(Masquerade::NotFound));
        let https = Listeners {
            https: addr,
            http: None,
            force_https: false,
            quic_port: 443,
            acme_http01: None,
        };
        let err = serve(&https, tls.clone(), current.clone()).expect_err("taken");
        assert!(
            err.starts_with(&format!(
                "masquerade.listenHTTPS: cannot listen on {addr}: "
            )),
            "{err}"
        );
        let http = Listeners {
            https: "127.0.0.1:0".parse().expect("literal"),
            http: Some(addr),
            ..https
        };
        let err = serve(&http, tls, current).expect_err("taken");
        assert!(
            err.starts_with(&format!("masquerade.listenHTTP: cannot listen on {addr}: ")),
            "{err}"
        );
    }
}
