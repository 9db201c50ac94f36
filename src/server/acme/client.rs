//! instant-acme's HTTP requests, made by ureq on the runtime's blocking pool: the CA is
//! trusted through the system roots, which honour `SSL_CERT_FILE` and `SSL_CERT_DIR`
//! (rustls-native-certs), as the rest of quelay does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use ureq::http::{Request, Response};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, SendBody};

/// Longest one request to the CA may take, connection, head and body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from the CA (a certificate chain is a few kB).
pub const MAX_RESPONSE: u64 = 1 << 20;

/// An [`HttpClient`] on a ureq agent.
#[derive(Clone)]
pub struct UreqClient(Agent);

impl UreqClient {
    /// An agent that trusts the system's roots. Fails when there are none.
    pub fn new() -> Result<UreqClient, String> {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("acme: loading the system's CA certificates: {e}");
        }
        if found.certs.is_empty() {
            return Err("no CA certificates found to verify the ACME server (set \
                        SSL_CERT_FILE, or install ca-certificates)"
                .into());
        }
        let roots: Vec<Certificate<'static>> = found
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("quelay/", env!("CARGO_PKG_VERSION")))
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::Specific(Arc::new(roots)))
                    .build(),
            )
            .build()
            .new_agent();
        Ok(UreqClient(agent))
    }
}

impl HttpClient for UreqClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let agent = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let answer = tokio::task::spawn_blocking(move || send(&agent, parts, &body))
                .await
                .map_err(|e| Error::Other(Box::new(e)))?
                .map_err(|e| Error::Other(Box::new(e)))?;
            Ok(BytesResponse::from(answer))
        })
    }
}

/// One request, its whole answer read under [`MAX_RESPONSE`].
fn send(
    agent: &Agent,
    parts: ureq::http::request::Parts,
    body: &Bytes,
) -> Result<Response<Full<Bytes>>, ureq::Error> {
    let answer = if body.is_empty() {
        agent.run(Request::from_parts(parts, SendBody::none()))?
    } else {
        agent.run(Request::from_parts(parts, &body[..]))?
    };
    let (parts, mut body) = answer.into_parts();
    let bytes = body.with_config().limit(MAX_RESPONSE).read_to_vec()?;
    Ok(Response::from_parts(parts, Full::new(Bytes::from(bytes))))
}
