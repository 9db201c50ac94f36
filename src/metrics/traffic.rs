//! The reference server's traffic-stats HTTP API (`trafficStats`): `GET /traffic`,
//! `GET /online`, `POST /kick`, `GET /dump/streams`, on the admin HTTP server
//! ([`super::http`]), off the data path. What it reports and does comes from a [`Backend`] (the server role implements it);
//! this module only speaks HTTP and JSON.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION};
use hyper::http::request::Parts;
use hyper::{Method, Request};
use serde_json::{json, Map, Value};

use super::http::{self, Handler, Response, HTML, JSON, TEXT};

/// Largest `/kick` body read (a JSON array of user IDs); a larger one is refused unread.
const MAX_KICK_BODY: usize = 1 << 20;

/// One relayed stream, as `/dump/streams` shows it (the reference's fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// init, hook, connect, estab or closed.
    pub state: &'static str,
    pub auth: String,
    /// The QUIC connection, unique over the server's workers.
    pub connection: u64,
    pub stream: u64,
    pub req_addr: String,
    /// Payload bytes client → target, target → client.
    pub tx: u64,
    pub rx: u64,
    pub initial_at: SystemTime,
    pub last_active_at: SystemTime,
}

/// What the API reads and acts on.
pub trait Backend: Send + Sync + 'static {
    /// Per user: (tx, rx) payload bytes; `clear` resets the counters after reading.
    fn traffic(&self, clear: bool) -> Vec<(String, u64, u64)>;
    /// Per user with connections: the number of authenticated QUIC connections.
    fn online(&self) -> Vec<(String, u64)>;
    /// Closes every connection of these users.
    fn kick(&self, users: Vec<String>);
    /// Every relayed stream now.
    fn dump_streams(&self) -> Vec<StreamInfo>;
}

/// `/traffic`'s answer, as the reference writes it: `{user: {"tx": n, "rx": n}}`.
pub fn traffic_json(users: impl IntoIterator<Item = (String, u64, u64)>) -> Value {
    let out: Map<String, Value> = users
        .into_iter()
        .map(|(user, tx, rx)| (user, json!({"tx": tx, "rx": rx})))
        .collect();
    Value::Object(out)
}

/// Serves the API on `listen` from a thread of its own ([`super::http`]). With a non-empty
/// `secret`, every request must carry `Authorization: <secret>` (exact match, as the
/// reference server; compared in constant time).
pub fn serve(listen: SocketAddr, secret: String, backend: impl Backend) -> Result<(), String> {
    http::serve(
        listen,
        "trafficStats.listen",
        "quelay-traffic",
        Api { secret, backend },
    )
}

struct Api<B> {
    secret: String,
    backend: B,
}

impl<B: Backend> Handler for Api<B> {
    const MAX_BODY: usize = MAX_KICK_BODY;

    /// Without the secret, a 401 before any body is read.
    fn early(&self, head: &Parts) -> Option<Response> {
        if self.secret.is_empty() {
            return None;
        }
        let given = head
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given.is_some_and(|g| crate::secret::eq(g, &self.secret)) {
            None
        } else {
            Some(Response::new(401, TEXT, "unauthorized"))
        }
    }

    /// `/dump/streams` waits for the workers' answers (up to two seconds).
    fn blocks(&self, req: &Request<Bytes>) -> bool {
        req.uri().path() == "/dump/streams"
    }

    fn handle(&self, req: &Request<Bytes>) -> Response {
        let backend = &self.backend;
        let query = req.uri().query().unwrap_or("");
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/") => Response::new(200, HTML, INDEX),
            (&Method::GET, "/traffic") => {
                let clear = query_bool(query, "clear");
                Response::new(200, JSON, traffic_json(backend.traffic(clear)).to_string())
            }
            (&Method::GET, "/online") => {
                let out: BTreeMap<String, u64> = backend.online().into_iter().collect();
                Response::new(200, JSON, json!(out).to_string())
            }
            (&Method::POST, "/kick") => match serde_json::from_slice::<Vec<String>>(req.body()) {
                Ok(users) => {
                    backend.kick(users);
                    Response::new(200, TEXT, "")
                }
                Err(e) => Response::new(400, TEXT, format!("bad request: {e}")),
            },
            (&Method::GET, "/dump/streams") => {
                let streams = backend.dump_streams();
                let text = req
                    .headers()
                    .get(ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("text/plain"));
                if text {
                    Response::new(200, TEXT, streams_table(&streams))
                } else {
                    Response::new(200, JSON, streams_json(&streams).to_string())
                }
            }
            _ => Response::new(404, TEXT, "404 page not found\n"),
        }
    }
}

const INDEX: &str = "<!DOCTYPE html><html><head><title>quelay traffic stats</title></head>\
<body><ul><li><a href=\"/traffic\">/traffic</a></li><li><a href=\"/online\">/online</a></li>\
<li><a href=\"/dump/streams\">/dump/streams</a></li><li>POST /kick</li></ul></body></html>\n";

/// `key` in the query string, read as Go's `strconv.ParseBool` reads it.
fn query_bool(query: &str, key: &str) -> bool {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| *k == key)
        .any(|(_, v)| matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// `{"streams": [...]}` in the reference's shape.
pub fn streams_json(streams: &[StreamInfo]) -> Value {
    let list: Vec<Value> = streams
        .iter()
        .map(|s| {
            json!({
                "state": s.state,
                "auth": s.auth,
                "connection": s.connection,
                "stream": s.stream,
                "req_addr": s.req_addr,
                "hooked_req_addr": "",
                "tx": s.tx,
                "rx": s.rx,
                "initial_at": rfc3339(s.initial_at),
                "last_active_at": rfc3339(s.last_active_at),
            })
        })
        .collect();
    json!({ "streams": list })
}

/// An `ss`-like table (`Accept: text/plain`).
fn streams_table(streams: &[StreamInfo]) -> String {
    let mut out = format!(
        "{:<8} {:<16} {:<16} {:<8} {:>12} {:>12} {}\n",
        "State", "Auth", "Connection", "Stream", "TX-Bytes", "RX-Bytes", "Req-Addr"
    );
    for s in streams {
        out.push_str(&format!(
            "{:<8} {:<16} {:<16x} {:<8} {:>12} {:>12} {}\n",
            s.state, s.auth, s.connection, s.stream, s.tx, s.rx, s.req_addr
        ));
    }
    out
}

/// `2006-01-02T15:04:05.000Z` (UTC, milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_and_flags() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
        assert!(query_bool("clear=1", "clear"));
        assert!(query_bool("a=b&clear=true", "clear"));
        assert!(!query_bool("clear=0", "clear"));
        assert!(!query_bool("clear", "clear"));
        assert!(!query_bool("", "clear"));
    }
}
