//! The HTTP-01 responder: plain HTTP/1.1 on `acme.listenHost:acme.http.altPort` (80 by
//! default), up only while an order is being validated. It answers
//! `GET /.well-known/acme-challenge/<token>` with the key authorization when the `Host`
//! header (with or without a port) names a domain being validated, and 404 to anything else.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};

use super::Responder;
use crate::metrics::http::{accept_bounded, bind, serve_http1};

/// Most validation connections served at once: a CA makes a few, from a few places.
const MAX_CONNECTIONS: usize = 64;
/// Longest one validation connection is served.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15);
/// The path prefix RFC 8555 §8.3 puts tokens under.
const PREFIX: &str = "/.well-known/acme-challenge/";

/// Tokens and their key authorizations, per domain.
#[derive(Clone, Debug, Default)]
pub struct Answers(Arc<Mutex<HashMap<(String, String), String>>>);

impl Answers {
    /// Answer `token` for `domain` with `key_authorization`.
    pub fn insert(&self, domain: &str, token: &str, key_authorization: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(
            (domain.to_ascii_lowercase(), token.to_owned()),
            key_authorization.to_owned(),
        );
    }

    /// Forgets every answer (an order is over).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The answer to a request for `path` with the `Host` header `host`.
    pub fn answer(&self, host: Option<&str>, path: &str) -> Option<String> {
        let token = path.strip_prefix(PREFIX)?;
        let domain = host_name(host?).to_ascii_lowercase();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(domain, token.to_owned()))
            .cloned()
    }
}

impl Answers {
    /// The answer to `req` when it asks for a challenge token being validated (the
    /// masquerade's HTTP listener asks this first, so that it can share port 80).
    pub fn respond<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host());
        let text = self.answer(host, req.uri().path())?;
        let mut rsp = Response::new(Full::new(Bytes::from(text)));
        rsp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        Some(rsp)
    }
}

/// The name of a `Host` header: its port and a trailing dot dropped (IPv6 literals in
/// brackets keep their colons).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    let name = if let Some(inner) = host.strip_prefix('[') {
        inner.split_once(']').map_or(inner, |(h, _)| h)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.trim_end_matches('.')
}

/// Starts answering on `listen`. Call inside the runtime.
pub fn start(listen: SocketAddr, answers: Answers) -> std::io::Result<Responder> {
    let listener = bind(listen)?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(accept_bounded(
        listener,
        MAX_CONNECTIONS,
        "acme http-01".into(),
        move |stream, _| {
            let answers = answers.clone();
            async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let rsp = answers.respond(&req).unwrap_or_else(|| {
                        let mut rsp = Response::new(Full::new(Bytes::new()));
                        *rsp.status_mut() = StatusCode::NOT_FOUND;
                        rsp
                    });
                    async move { Ok::<_, Infallible>(rsp) }
                });
                serve_http1(stream, service, CONNECTION_LIFETIME).await;
            }
        },
    ));
    Ok(Responder { task, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_http01_answers_by_host_and_token() {
        let a = Answers::default();
        a.insert("A.example", "tok", "tok.thumb");
        let path = "/.well-known/acme-challenge/tok";
        assert_eq!(
            a.answer(Some("a.example"), path).as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(
            a.answer(Some("A.EXAMPLE:5002"), path).as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(
            a.answer(Some("a.example.:80"), path).as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(a.answer(Some("b.example"), path), None);
        assert_eq!(a.answer(None, path), None);
        assert_eq!(
            a.answer(Some("a.example"), "/.well-known/acme-challenge/other"),
            None
        );
        assert_eq!(a.answer(Some("a.example"), "/tok"), None);
        assert_eq!(host_name("[::1]:80"), "::1");
    }
}
