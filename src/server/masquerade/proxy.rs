//! The `proxy` masquerade (protocol notes §7): a reverse proxy like Go's
//! `httputil.ReverseProxy`, relaying each request to one upstream over HTTP/1.1.

use std::net::SocketAddr;
use std::time::Duration;

use ureq::config::AutoHeaderValue;
use ureq::http;
use ureq::tls::TlsConfig;
use ureq::Agent;

use super::{now_http_date, percent_escape, response, Reply, Tail};
use crate::proto::h3::Request;

/// The upstream exchange of the proxy masquerade up to the response's head, and the longest
/// the upstream may go silent while its body is read.
pub const PROXY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest an upstream body is relayed, slow receivers included (as the TCP listeners'
/// connection lifetime); past it the body is cut short.
pub const PROXY_BODY_TIMEOUT: Duration = Duration::from_secs(300);

/// Hop-by-hop fields Go's `httputil.ReverseProxy` drops in both directions, plus every
/// `proxy-*` field.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// The `proxy` masquerade: hysteria's `httputil.ReverseProxy` with `Rewrite` (`SetURL`,
/// then the original Host back unless `rewrite_host`, then `SetXForwarded` if
/// `x_forwarded`).
///
/// The request's method, path and query (joined onto the upstream URL's), body and fields
/// go upstream over HTTP/1.1, minus hop-by-hop fields, fields named in `connection`,
/// client-sent `forwarded`/`x-forwarded-*` (Go strips them in `Rewrite` mode) and
/// `expect`; split `cookie` fields are joined with "; " as quic-go does. No redirects are
/// followed. The upstream's status, fields (minus hop-by-hop) and body come back, the body
/// streamed as it arrives; any upstream failure before the response's head, or the head
/// taking longer than [`PROXY_TIMEOUT`], is a 502 with no body, as in Go; a failure during
/// the body cuts it short. `HTTP_PROXY` is not honoured.
/// Plain CONNECT is a 502: there is no tunnel to relay.
pub struct ProxyMasquerade {
    /// The upstream URL as configured.
    url: String,
    /// `rewriteHost`: send the upstream's host as Host instead of the client's authority.
    rewrite_host: bool,
    /// `xForwarded`: add `X-Forwarded-For/-Host/-Proto`.
    x_forwarded: bool,
    /// `insecure`: do not verify an https upstream's certificate.
    insecure: bool,
    /// Pooled connections to the upstream.
    agent: Agent,
    /// `http` or `https`.
    scheme: String,
    /// The upstream's `host[:port]`, as written in the URL (Go's `URL.Host`).
    authority: String,
    /// The upstream URL's path, already escaped; "/" when it has none.
    base_path: String,
    /// The upstream URL's raw query, without `?`.
    base_query: String,
}

impl std::fmt::Debug for ProxyMasquerade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMasquerade")
            .field("url", &self.url)
            .field("rewrite_host", &self.rewrite_host)
            .field("x_forwarded", &self.x_forwarded)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl ProxyMasquerade {
    /// Checks `url` (absolute `http` or `https` with a host) and builds the pooled agent.
    pub fn new(
        url: impl Into<String>,
        rewrite_host: bool,
        x_forwarded: bool,
        insecure: bool,
    ) -> Result<Self, String> {
        let url = url.into();
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("masquerade proxy url {url:?}: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
                s.to_ascii_lowercase()
            }
            _ => {
                return Err(format!(
                    "masquerade proxy url {url:?}: scheme must be http or https"
                ))
            }
        };
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() => {
                // Go's `URL.Host` carries no userinfo.
                a.as_str().rsplit('@').next().unwrap_or("").to_owned()
            }
            _ => return Err(format!("masquerade proxy url {url:?}: no host")),
        };
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .allow_non_standard_methods(true)
            .timeout_resolve(Some(PROXY_TIMEOUT))
            .timeout_connect(Some(PROXY_TIMEOUT))
            .timeout_send_request(Some(PROXY_TIMEOUT))
            .timeout_send_body(Some(PROXY_TIMEOUT))
            .timeout_recv_response(Some(PROXY_TIMEOUT))
            .timeout_per_read(Some(PROXY_TIMEOUT))
            .timeout_recv_body(Some(PROXY_BODY_TIMEOUT))
            // Go's ReverseProxy sends no User-Agent the client did not send; ureq adds
            // none of its own fields either.
            .user_agent(AutoHeaderValue::None)
            .accept(AutoHeaderValue::None)
            .accept_encoding(AutoHeaderValue::None)
            .tls_config(TlsConfig::builder().disable_verification(insecure).build())
            .build()
            .new_agent();
        Ok(Self {
            scheme,
            authority,
            base_path: uri.path().to_owned(),
            base_query: uri.query().unwrap_or("").to_owned(),
            url,
            rewrite_host,
            x_forwarded,
            insecure,
            agent,
        })
    }

    /// [`Self::answer`] as a complete HTTP/3 response.
    #[cfg(test)]
    pub fn respond(&self, req: &Request, body: &[u8], client: SocketAddr) -> Vec<u8> {
        self.answer(req, body, client).into_h3_whole()
    }

    /// Relays one request upstream and returns the response, its body to be read as it is
    /// sent. `body` is the request's body, `client` the peer's address (for
    /// `X-Forwarded-For`).
    pub fn answer(&self, req: &Request, body: &[u8], client: SocketAddr) -> Reply {
        let date = now_http_date();
        match self.forward(req, body, client, &date) {
            Ok(reply) => reply,
            Err(reason) => {
                // Go logs this at error level. The authority only: the URL may hold a password.
                crate::warn_limited!(
                    "masquerade proxy: upstream {} error: {reason}",
                    self.authority
                );
                response(502, &[("date", &date)], b"")
            }
        }
    }

    fn forward(
        &self,
        req: &Request,
        body: &[u8],
        client: SocketAddr,
        date: &str,
    ) -> Result<Reply, String> {
        let method = http::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| format!("bad method {:?}", req.method))?;
        if method == http::Method::CONNECT {
            return Err("CONNECT cannot be proxied".into());
        }
        let uri = self.upstream_uri(&req.path)?;
        let headers = self.request_headers(req, client);
        let head = method == http::Method::HEAD;
        let mut request = http::Request::new(());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let (parts, ()) = request.into_parts();
        // Go sends no body (and no content-length) for an empty body, except that POST,
        // PUT and PATCH say `content-length: 0`.
        let result = if !body.is_empty()
            || matches!(
                method,
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            ) {
            self.agent.run(http::Request::from_parts(parts, body))
        } else {
            self.agent.run(http::Request::from_parts(parts, ()))
        };
        let upstream = result.map_err(|e| e.to_string())?;
        let status = upstream.status().as_u16();
        if !(200..=999).contains(&status) {
            return Err(format!("upstream answered status {status}"));
        }
        // A chunked body has no length to promise; any other keeps the upstream's.
        let chunked = upstream
            .headers()
            .contains_key(http::header::TRANSFER_ENCODING);
        let fields = response_fields(upstream.headers(), !chunked, date);
        let length = fields
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok());
        let (body, tail) = if head || status == 304 {
            (Vec::new(), None)
        } else {
            Tail::new(upstream.into_body().into_reader(), length)
                .start()
                .map_err(|e| format!("upstream body: {e}"))?
        };
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let mut reply = response(status, &fields, b"");
        (reply.body, reply.tail) = (body, tail);
        Ok(reply)
    }

    /// An upgrade request's head (WebSocket, say) as it goes upstream: the request
    /// [`Self::answer`] would send, with `Connection: Upgrade` and `Upgrade: <kind>` put
    /// back as Go's ReverseProxy does, and the target in origin form.
    pub fn upgrade_head(
        &self,
        req: &Request,
        client: SocketAddr,
        kind: &str,
    ) -> Result<http::Request<()>, String> {
        let method = http::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| format!("bad method {:?}", req.method))?;
        let uri = self.upstream_uri(&req.path)?;
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = self.request_headers(req, client);
        append(&mut headers, "connection", "Upgrade");
        append(&mut headers, "upgrade", kind);
        let mut request = http::Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = target
            .parse()
            .map_err(|e| format!("upstream request target {target:?}: {e}"))?;
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// Where the upstream is: whether it speaks TLS, its `host[:port]`, and whether its
    /// certificate goes unchecked (`insecure`).
    pub fn upstream(&self) -> (bool, &str, bool) {
        (self.scheme == "https", &self.authority, self.insecure)
    }

    /// `SetURL`: the upstream's scheme and host, its path joined with the request's by one
    /// slash, its query then the request's joined by `&`.
    fn upstream_uri(&self, target: &str) -> Result<http::Uri, String> {
        let (path, query) = request_target(target);
        let path = escape(path, false);
        let query = escape(query, true);
        let path = match (self.base_path.ends_with('/'), path.starts_with('/')) {
            (true, true) => format!(
                "{}{}",
                self.base_path,
                path.strip_prefix('/').unwrap_or(&path)
            ),
            (false, false) => format!("{}/{}", self.base_path, path),
            _ => format!("{}{}", self.base_path, path),
        };
        let query = match (self.base_query.is_empty(), query.is_empty()) {
            (false, false) => format!("{}&{}", self.base_query, query),
            _ => format!("{}{}", self.base_query, query),
        };
        let mut uri = format!("{}://{}{}", self.scheme, self.authority, path);
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(&query);
        }
        uri.parse()
            .map_err(|e| format!("upstream request target {uri:?}: {e}"))
    }

    fn request_headers(&self, req: &Request, client: SocketAddr) -> http::HeaderMap {
        let listed = connection_tokens(
            req.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .map(|(_, v)| v.as_str()),
        );
        let mut headers = http::HeaderMap::new();
        let mut cookies: Vec<&str> = Vec::new();
        let mut te_trailers = false;
        for (name, value) in &req.headers {
            let name = name.to_ascii_lowercase();
            if name == "te" {
                te_trailers |= value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
            }
            if is_hop_by_hop(&name)
                || listed.contains(&name)
                || matches!(
                    name.as_str(),
                    "host"
                        | "content-length"
                        | "expect"
                        | "forwarded"
                        | "x-forwarded-for"
                        | "x-forwarded-host"
                        | "x-forwarded-proto"
                )
            {
                continue;
            }
            if name == "cookie" {
                cookies.push(value);
                continue;
            }
            append(&mut headers, &name, value);
        }
        if !cookies.is_empty() {
            append(&mut headers, "cookie", &cookies.join("; "));
        }
        if te_trailers {
            append(&mut headers, "te", "trailers");
        }
        let host = if self.rewrite_host {
            &self.authority
        } else {
            &req.authority
        };
        append(&mut headers, "host", host);
        if self.x_forwarded {
            append(
                &mut headers,
                "x-forwarded-for",
                &client.ip().to_canonical().to_string(),
            );
            append(&mut headers, "x-forwarded-host", &req.authority);
            let proto = if req.scheme == "http" {
                "http"
            } else {
                "https"
            };
            append(&mut headers, "x-forwarded-proto", proto);
        }
        headers
    }
}

/// The upstream's fields to send back: hop-by-hop ones and those named in `connection`
/// dropped, a well-formed `content-length` kept if `keep_content_length` (the body is not
/// chunked), and a `date` added if the upstream sent none, as quic-go would.
pub(super) fn response_fields(
    headers: &http::HeaderMap,
    keep_content_length: bool,
    date: &str,
) -> Vec<(String, String)> {
    let listed = connection_tokens(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let mut fields = Vec::with_capacity(headers.len() + 1);
    let mut has_date = false;
    for (name, value) in headers {
        let name = name.as_str();
        if is_hop_by_hop(name) || listed.iter().any(|l| l == name) {
            continue;
        }
        // Go relays obs-text bytes; the field value here is UTF-8, so keep them lossily.
        let value = String::from_utf8_lossy(value.as_bytes());
        if name == "content-length"
            && !(keep_content_length
                && !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        has_date |= name == "date";
        fields.push((name.to_owned(), value.into_owned()));
    }
    if !has_date {
        fields.push(("date".to_owned(), date.to_owned()));
    }
    fields
}

/// Lower-cased field names listed in `connection` values.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Appends a field, skipping one the `http` crate cannot represent (it cannot reach the
/// upstream anyway).
fn append(headers: &mut http::HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        http::HeaderName::from_bytes(name.as_bytes()),
        http::HeaderValue::from_bytes(value.as_bytes()),
    ) {
        headers.append(name, value);
    }
}

/// Splits a request target into its raw path and query (Go's `URL.EscapedPath()` and
/// `RawQuery`): origin-form as is, absolute-form without scheme and authority.
fn request_target(target: &str) -> (&str, &str) {
    let rest = if target.starts_with('/') || target == "*" {
        target
    } else {
        match target.split_once("://") {
            Some((_, after)) => after.find(['/', '?']).map_or("", |i| &after[i..]),
            None => target.split_once(':').map_or(target, |(_, r)| r),
        }
    };
    rest.split_once('?').unwrap_or((rest, ""))
}

/// Percent-escapes the bytes a request target cannot carry as they are, keeping existing
/// escapes: Go re-escapes the decoded path the same way.
fn escape(s: &str, query: bool) -> String {
    percent_escape(s, |b| {
        b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b) || (query && b == b'?')
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{parse, parse_head, request};
    use super::*;
    use crate::server::fake_upstream::{dead_addr, http_reply, Upstream, CLIENT};

    fn proxy(up: &Upstream, path: &str, rewrite_host: bool, x_forwarded: bool) -> ProxyMasquerade {
        ProxyMasquerade::new(up.url("http", path), rewrite_host, x_forwarded, false).unwrap()
    }

    #[test]
    fn proxy_passthrough() {
        let reply = b"HTTP/1.1 201 Created\r\n\
            Content-Type: text/x-test\r\n\
            X-Up: 1\r\n\
            X-Latin: caf\xe9\r\n\
            Set-Cookie: a=1\r\n\
            Set-Cookie: b=2\r\n\
            Connection: close, X-Drop\r\n\
            X-Drop: gone\r\n\
            Keep-Alive: timeout=5\r\n\
            Proxy-Authenticate: Basic\r\n\
            Transfer-Encoding: chunked\r\n\
            \r\n\
            5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let up = Upstream::start(reply.to_vec(), false);
        let masq = proxy(&up, "/base?k=v", false, false);
        let req = request(
            "POST",
            "/api/x?q=1",
            &[
                ("user-agent", "curl/8"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("te", "trailers"),
                ("content-length", "7"),
                ("proxy-authorization", "Basic xyz"),
                ("accept-encoding", "gzip"),
            ],
        );
        let (resp, body) = parse(&masq.respond(&req, b"payload", CLIENT.parse().unwrap()));
        assert_eq!(resp.status, 201);
        assert_eq!(body, b"hello world");
        assert_eq!(resp.header("content-type"), Some("text/x-test"));
        assert_eq!(resp.header("x-up"), Some("1"));
        assert_eq!(resp.header("x-latin"), Some("caf\u{fffd}"));
        assert_eq!(resp.header("content-length"), Some("11"));
        assert!(resp.header("date").is_some());
        let cookies: Vec<&str> = resp
            .headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        for gone in [
            "connection",
            "x-drop",
            "keep-alive",
            "transfer-encoding",
            "proxy-authenticate",
        ] {
            assert_eq!(resp.header(gone), None, "{gone}");
        }

        let seen = up.last();
        assert_eq!(seen.line, "POST /base/api/x?k=v&q=1 HTTP/1.1");
        assert_eq!(seen.header("host"), Some("example.com"));
        assert_eq!(seen.header("user-agent"), Some("curl/8"));
        assert_eq!(seen.header("cookie"), Some("a=1; b=2"));
        assert_eq!(seen.header("te"), Some("trailers"));
        assert_eq!(seen.header("accept-encoding"), Some("gzip"));
        assert_eq!(seen.header("content-length"), Some("7"));
        for gone in [
            "x-forwarded-for",
            "forwarded",
            "proxy-authorization",
            "x-forwarded-proto",
        ] {
            assert_eq!(seen.header(gone), None, "{gone}");
        }
        assert_eq!(seen.body, b"payload");
    }

    #[test]
    fn proxy_x_forwarded_and_rewrite_host() {
        let up = Upstream::start(http_reply("200 OK", &[], b"ok"), false);
        let masq = proxy(&up, "", true, true);
        let req = request("GET", "/p%20q/r?s=%20t", &[("x-forwarded-for", "6.6.6.6")]);
        let (resp, body) =
            parse(&masq.respond(&req, b"", "[::ffff:10.1.2.3]:999".parse().unwrap()));
        assert_eq!((resp.status, body.as_slice()), (200, &b"ok"[..]));
        let seen = up.last();
        assert_eq!(seen.line, "GET /p%20q/r?s=%20t HTTP/1.1");
        assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
        assert_eq!(seen.header("x-forwarded-for"), Some("10.1.2.3"));
        assert_eq!(seen.header("x-forwarded-host"), Some("example.com"));
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        // Nothing the client did not send: no user-agent, accept or body fields.
        for gone in [
            "user-agent",
            "accept",
            "accept-encoding",
            "content-length",
            "transfer-encoding",
        ] {
            assert_eq!(seen.header(gone), None, "{gone}");
        }
        let v6 = request("GET", "/", &[]);
        masq.respond(&v6, b"", "[2001:db8::1]:1".parse().unwrap());
        assert_eq!(up.last().header("x-forwarded-for"), Some("2001:db8::1"));
    }

    #[test]
    fn proxy_head_and_redirects() {
        let up = Upstream::start(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nConnection: close\r\n\r\n".to_vec(),
            false,
        );
        let masq = proxy(&up, "/", false, false);
        let resp =
            parse_head(&masq.respond(&request("HEAD", "/f", &[]), b"", CLIENT.parse().unwrap()));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("1234"));
        assert_eq!(up.last().line, "HEAD /f HTTP/1.1");

        let up = Upstream::start(
            http_reply("302 Found", &["Location: /elsewhere"], b""),
            false,
        );
        let masq = proxy(&up, "/", false, false);
        let (resp, _) =
            parse(&masq.respond(&request("GET", "/", &[]), b"", CLIENT.parse().unwrap()));
        assert_eq!(resp.status, 302);
        assert_eq!(resp.header("location"), Some("/elsewhere"));
        up.last();
        assert!(
            up.seen.recv_timeout(Duration::from_millis(200)).is_err(),
            "followed"
        );

        let up = Upstream::start(http_reply("404 Not Found", &[], b"nope"), false);
        let masq = proxy(&up, "/", false, false);
        let (resp, body) =
            parse(&masq.respond(&request("GET", "/", &[]), b"", CLIENT.parse().unwrap()));
        assert_eq!((resp.status, body.as_slice()), (404, &b"nope"[..]));
    }

    fn assert_bad_gateway(bytes: &[u8]) {
        let (resp, body) = parse(bytes);
        assert_eq!(resp.status, 502);
        assert!(body.is_empty());
        assert_eq!(resp.header("content-length"), Some("0"));
    }

    #[test]
    fn proxy_upstream_errors() {
        let client = CLIENT.parse().unwrap();
        let get = request("GET", "/", &[]);
        let down =
            ProxyMasquerade::new(format!("http://{}", dead_addr()), false, false, false).unwrap();
        assert_bad_gateway(&down.respond(&get, b"", client));
        let garbage = Upstream::start(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), false);
        assert_bad_gateway(&proxy(&garbage, "/", false, false).respond(&get, b"", client));
        let interim = Upstream::start(b"HTTP/1.1 101 Switching\r\n\r\n".to_vec(), false);
        assert_bad_gateway(&proxy(&interim, "/", false, false).respond(&get, b"", client));
        let connect = Request {
            method: "CONNECT".into(),
            path: String::new(),
            ..request("CONNECT", "", &[])
        };
        assert_bad_gateway(&down.respond(&connect, b"", client));
    }

    #[test]
    fn proxy_https_upstream() {
        let client = CLIENT.parse().unwrap();
        let up = Upstream::start(http_reply("200 OK", &[], b"secure"), true);
        let insecure = ProxyMasquerade::new(up.url("https", "/"), false, false, true).unwrap();
        let (resp, body) = parse(&insecure.respond(&request("GET", "/", &[]), b"", client));
        assert_eq!((resp.status, body.as_slice()), (200, &b"secure"[..]));
        let verifying = ProxyMasquerade::new(up.url("https", "/"), false, false, false).unwrap();
        assert_bad_gateway(&verifying.respond(&request("GET", "/", &[]), b"", client));
    }

    #[test]
    fn proxy_config_errors() {
        for bad in [
            "",
            "example.com",
            "/path",
            "ftp://example.com/",
            "http://",
            "http:// x/",
        ] {
            assert!(
                ProxyMasquerade::new(bad, false, false, false).is_err(),
                "{bad:?}"
            );
        }
        let ok = ProxyMasquerade::new(
            "HTTPS://user:pw@example.com:8443/a/?b=c",
            true,
            false,
            false,
        )
        .unwrap();
        assert_eq!(ok.scheme, "https");
        assert_eq!(ok.authority, "example.com:8443");
        assert_eq!(ok.base_path, "/a/");
        assert_eq!(ok.base_query, "b=c");
    }

    #[test]
    fn upstream_targets_like_set_url() {
        let masq = |url: &str| ProxyMasquerade::new(url, false, false, false).unwrap();
        let uri = |m: &ProxyMasquerade, target: &str| m.upstream_uri(target).unwrap().to_string();
        let root = masq("http://u:81");
        assert_eq!(uri(&root, "/a?b"), "http://u:81/a?b");
        assert_eq!(uri(&root, "*"), "http://u:81/*");
        assert_eq!(uri(&root, "https://example.com/p?x=1"), "http://u:81/p?x=1");
        assert_eq!(uri(&root, "https://example.com?x"), "http://u:81/?x");
        assert_eq!(
            uri(&root, "/a b\"{}|é#f"),
            "http://u:81/a%20b%22%7B%7D%7C%C3%A9%23f"
        );
        let base = masq("http://u/base/?k=v");
        assert_eq!(uri(&base, "/x/"), "http://u/base/x/?k=v");
        assert_eq!(uri(&base, "//x"), "http://u/base//x?k=v");
        assert_eq!(uri(&base, "/x?y=1&z"), "http://u/base/x?k=v&y=1&z");
        let no_slash = masq("http://u/base");
        assert_eq!(uri(&no_slash, "/x"), "http://u/base/x");
        assert_eq!(uri(&no_slash, "/"), "http://u/base/");
    }
}
