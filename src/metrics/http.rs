//! The one small HTTP/1.1 server behind the admin endpoints (`metrics.listen`,
//! `trafficStats.listen`): hyper on a current-thread tokio runtime, a thread of its own per
//! listener, off the data path. Each connection is a task of its own, so one slow client
//! holds only its own connection; every connection is bounded in number and in time.
//!
//! What an endpoint answers comes from a [`Handler`]: plain synchronous code that sees a
//! whole request (head and body, the body read under a size bound and a deadline).
//!
//! The bounded accept loop, the connection lifetime and the body reader also serve the
//! masquerade's TCP listeners (`server::masquerade::tcp`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Most connections one listener serves at once. Past it the accept loop stops accepting:
/// new connections wait in the kernel's listen backlog ([`BACKLOG`], then their SYNs are
/// retried) until a connection ends. A flood thus costs the process no fd and no task past
/// this bound, and queued clients are served in order as slots free. Accepting and closing
/// them at once instead would turn a flood into an accept/close loop on the runtime thread
/// and serve a legitimate client no better.
pub const MAX_CONNECTIONS: usize = 1024;
/// The listen backlog where connections past [`MAX_CONNECTIONS`] wait.
const BACKLOG: u32 = 1024;
/// Time a client has to send a whole request head, counted from the start of the connection
/// or the end of the previous response on it: an idle connection is closed after it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to send a whole request body, counted from the end of its head.
pub const BODY_DEADLINE: Duration = Duration::from_secs(5);
/// Longest a connection is served, whatever it does: after it the connection finishes the
/// request in progress and closes ([`SHUTDOWN_GRACE`]). It bounds a client that stops
/// reading its response, for hyper has no write timeout of its own.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Time a connection past its lifetime has to finish its request before it is dropped.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Bound on the bytes hyper buffers per connection (request heads included).
pub(crate) const MAX_BUF: usize = 64 * 1024;
/// Threads for the handlers that may block ([`Handler::blocks`]).
const BLOCKING_THREADS: usize = 4;

pub const JSON: &str = "application/json; charset=utf-8";
pub const TEXT: &str = "text/plain; charset=utf-8";
pub const HTML: &str = "text/html; charset=utf-8";

/// A whole answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }
}

/// What one endpoint answers.
pub trait Handler: Send + Sync + 'static {
    /// The largest request body read; a larger one is refused (413) unread.
    const MAX_BODY: usize;

    /// An answer decided from the head alone, before any body is read (a refusal), or `None`.
    fn early(&self, _head: &Parts) -> Option<Response> {
        None
    }

    /// Whether answering `req` may block for a while: it then runs on the runtime's blocking
    /// pool, so that it never stalls the other connections.
    fn blocks(&self, _req: &Request<Bytes>) -> bool {
        false
    }

    /// The answer to a whole request.
    fn handle(&self, req: &Request<Bytes>) -> Response;
}

/// Serves `handler` on `listen` from a thread named `thread` of its own. Errors name the
/// config key `key` (binding is done before this returns, so a taken port is reported).
pub fn serve(
    listen: SocketAddr,
    key: &str,
    thread: &str,
    handler: impl Handler,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name(format!("{thread}-blocking"))
        .build()
        .map_err(|e| format!("{key}: cannot start a runtime: {e}"))?;
    let listener = {
        let _in_runtime = rt.enter();
        bind(listen).map_err(|e| format!("{key}: cannot listen on {listen}: {e}"))?
    };
    let owned = key.to_owned();
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || rt.block_on(accept(listener, Arc::new(handler), owned)))
        .map_err(|e| format!("{key}: cannot start a thread: {e}"))?;
    Ok(())
}

/// A listening socket for `listen`, with the backlog where connections past the cap wait.
/// Call inside a runtime.
pub(crate) fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(BACKLOG)
}

/// Accepts while fewer than `max` connections are served, each connection a task running
/// `serve` (see [`MAX_CONNECTIONS`] for why the loop stops accepting rather than refusing).
/// `key` names the listener in warnings.
pub(crate) async fn accept_bounded<F, Fut>(listener: TcpListener, max: usize, key: String, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of fds, say: wait instead of spinning.
                crate::warn_limited!("{key}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let conn = serve(stream, peer);
        tokio::spawn(async move {
            let _slot = slot;
            conn.await;
        });
    }
}

/// Drives a hyper connection for at most `lifetime`; then `shutdown` asks it to finish the
/// request in progress, which gets [`SHUTDOWN_GRACE`] before the connection is dropped.
pub(crate) async fn with_lifetime<C: Future>(
    mut conn: Pin<&mut C>,
    lifetime: Duration,
    shutdown: impl FnOnce(Pin<&mut C>),
) {
    if tokio::time::timeout(lifetime, conn.as_mut()).await.is_err() {
        shutdown(conn.as_mut());
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
    }
}

/// Serves one HTTP/1.1 connection with these endpoints' bounds: [`HEADER_TIMEOUT`] for
/// each request head (which also closes an idle connection), a [`MAX_BUF`] read buffer,
/// and `lifetime` in all.
pub(crate) async fn serve_http1<S, B>(stream: TcpStream, service: S, lifetime: Duration)
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = std::pin::pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades());
    with_lifetime(conn, lifetime, |c| c.graceful_shutdown()).await;
}

/// Accepts while fewer than [`MAX_CONNECTIONS`] are served, each connection a task.
async fn accept<H: Handler>(listener: TcpListener, handler: Arc<H>, key: String) {
    accept_bounded(listener, MAX_CONNECTIONS, key, move |stream, _| {
        let handler = handler.clone();
        async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(answer(handler, req).await) }
            });
            serve_http1(stream, service, CONNECTION_LIFETIME).await;
        }
    })
    .await
}

async fn answer<H: Handler>(
    handler: Arc<H>,
    req: Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (head, body) = req.into_parts();
    let resp = match handler.early(&head) {
        Some(resp) => resp,
        None => match read_body(body, H::MAX_BODY).await {
            Err(resp) => resp,
            Ok(body) => {
                let req = Request::from_parts(head, body);
                if handler.blocks(&req) {
                    tokio::task::spawn_blocking(move || handler.handle(&req))
                        .await
                        .unwrap_or_else(|_| Response::new(500, TEXT, "internal error\n"))
                } else {
                    handler.handle(&req)
                }
            }
        },
    };
    let mut out = hyper::Response::new(Full::new(Bytes::from(resp.body)));
    *out.status_mut() =
        StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    out.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(resp.content_type));
    out
}

/// The whole body, at most `max` bytes, within [`BODY_DEADLINE`]; or the refusal to send.
pub(crate) async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, Response> {
    let too_large = || Response::new(413, TEXT, format!("request body larger than {max} bytes\n"));
    if body.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    let read = async {
        let mut out = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Response::new(400, TEXT, "cannot read the body"))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > max {
                    return Err(too_large());
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out.freeze())
    };
    tokio::time::timeout(BODY_DEADLINE, read)
        .await
        .unwrap_or_else(|_| {
            Err(Response::new(
                408,
                TEXT,
                "request body not received in time\n",
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Hello;

    impl Handler for Hello {
        const MAX_BODY: usize = 0;

        fn handle(&self, _req: &Request<Bytes>) -> Response {
            Response::new(200, TEXT, "hello\n")
        }
    }

    #[test]
    fn a_taken_port_is_reported_under_its_config_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("address");
        let err = serve(addr, "trafficStats.listen", "quelay-test-http", Hello)
            .expect_err("the port is taken");
        assert!(
            err.starts_with(&format!("trafficStats.listen: cannot listen on {addr}: ")),
            "{err}"
        );
    }
}
