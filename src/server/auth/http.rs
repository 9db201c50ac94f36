//! The `http` authenticator (protocol notes §2.4): one blocking POST to the configured
//! backend per login.
//!
//! It runs on the auth room's threads, off the data path, so it may block up to its
//! timeout. It never panics on what the backend sends; every failure is an `Err` the caller
//! treats as a failed login.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use ureq::tls::TlsConfig;
use ureq::Agent;

/// Most bytes read from an auth backend's answer: `{"ok":true,"id":"..."}` is tiny, and a
/// backend that sends more is broken.
const AUTH_MAX_BODY: u64 = 64 * 1024;

/// The official `http` authenticator: POSTs `{"addr","auth","tx"}` as JSON to `url` and
/// expects 200 with `{"ok": bool, "id": string}`.
///
/// `Ok(Some(id))` accepts the client, `Ok(None)` is the backend's "no"; `Err` says why the
/// backend could not be asked or made no sense (transport error, timeout, status other than
/// 200, bad JSON, `ok` with an empty `id`). The caller treats `Err` as a failed login and
/// logs the reason. `insecure` skips verification of an https backend's certificate.
/// Redirects are followed as Go's `http.Client` does (up to 10).
pub fn http_auth(
    url: &str,
    insecure: bool,
    addr: SocketAddr,
    auth: &str,
    tx: u64,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let body = serde_json::json!({ "addr": addr.to_string(), "auth": auth, "tx": tx }).to_string();
    let mut reply = auth_agent(insecure)
        .post(url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .header("content-type", "application/json")
        .send(body.as_bytes())
        .map_err(|e| format!("auth backend: {e}"))?;
    let status = reply.status().as_u16();
    if status != 200 {
        return Err(format!("auth backend answered status {status}"));
    }
    let body = reply
        .body_mut()
        .with_config()
        .limit(AUTH_MAX_BODY)
        .read_to_vec()
        .map_err(|e| format!("auth backend body: {e}"))?;
    parse_auth_reply(&body)
}

/// One pooled agent per certificate policy, shared by every auth call; the timeout is set
/// per request.
fn auth_agent(insecure: bool) -> &'static Agent {
    static VERIFYING: OnceLock<Agent> = OnceLock::new();
    static INSECURE: OnceLock<Agent> = OnceLock::new();
    let cell = if insecure { &INSECURE } else { &VERIFYING };
    cell.get_or_init(|| {
        Agent::config_builder()
            .http_status_as_error(false)
            // hysteria's auth client has its own Transport, which ignores HTTP_PROXY.
            .proxy(None)
            .tls_config(TlsConfig::builder().disable_verification(insecure).build())
            .build()
            .new_agent()
    })
}

/// Go's `json.NewDecoder(body).Decode(&httpAuthResponse)`: the first JSON value must be an
/// object; keys match case-insensitively (an exact match wins); missing or `null` fields
/// stay false/empty; a field of the wrong type is an error; trailing bytes are ignored.
fn parse_auth_reply(body: &[u8]) -> Result<Option<String>, String> {
    use serde_json::Value;
    let value = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
        .ok_or("auth backend sent an empty body")?
        .map_err(|e| format!("auth backend sent bad JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("auth backend's JSON is not an object")?;
    let field = |name: &str| {
        object.get(name).or_else(|| {
            object
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    };
    let id = match field("id") {
        None | Some(Value::Null) => "",
        Some(Value::String(id)) => id.as_str(),
        Some(_) => return Err("auth backend's \"id\" is not a string".into()),
    };
    let ok = match field("ok") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(ok)) => *ok,
        Some(_) => return Err("auth backend's \"ok\" is not a boolean".into()),
    };
    match (ok, id.is_empty()) {
        (false, _) => Ok(None),
        (true, true) => Err("auth backend accepted with an empty id".into()),
        (true, false) => Ok(Some(id.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::fake_upstream::{dead_addr, http_reply, Upstream, CLIENT};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    const SECOND: Duration = Duration::from_secs(1);

    fn json_reply(body: &str) -> Vec<u8> {
        http_reply(
            "200 OK",
            &["Content-Type: application/json"],
            body.as_bytes(),
        )
    }

    fn auth(url: &str, insecure: bool) -> Result<Option<String>, String> {
        http_auth(
            url,
            insecure,
            CLIENT.parse().unwrap(),
            "pass word\"",
            12_345,
            5 * SECOND,
        )
    }

    #[test]
    fn auth_ok_posts_the_official_json() {
        let up = Upstream::start(json_reply(r#"{"ok": true, "id": "alice"}"#), false);
        assert_eq!(
            auth(&up.url("http", "/auth"), false),
            Ok(Some("alice".into()))
        );
        let seen = up.last();
        assert_eq!(seen.line, "POST /auth HTTP/1.1");
        assert_eq!(seen.header("content-type"), Some("application/json"));
        let json: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"addr": CLIENT, "auth": "pass word\"", "tx": 12_345})
        );
    }

    #[test]
    fn auth_rejected() {
        let up = Upstream::start(json_reply(r#"{"ok":false,"id":""}"#), false);
        assert_eq!(auth(&up.url("http", "/"), false), Ok(None));
        // Go leaves a missing `ok` false.
        let up = Upstream::start(json_reply(r#"{"id":"bob"}"#), false);
        assert_eq!(auth(&up.url("http", "/"), false), Ok(None));
    }

    #[test]
    fn auth_non_200_is_an_error() {
        for status in ["500 Internal Server Error", "404 Not Found", "201 Created"] {
            let body = br#"{"ok":true,"id":"x"}"#;
            let up = Upstream::start(http_reply(status, &[], body), false);
            let err = auth(&up.url("http", "/"), false).unwrap_err();
            assert!(err.contains(&status[..3]), "{err}");
        }
    }

    #[test]
    fn auth_bad_json_is_an_error() {
        for body in ["", "not json", "<html>ok</html>", "{\"ok\":tru"] {
            let up = Upstream::start(json_reply(body), false);
            assert!(auth(&up.url("http", "/"), false).is_err(), "{body:?}");
        }
    }

    #[test]
    fn auth_reply_shapes() {
        let parse = |s: &str| parse_auth_reply(s.as_bytes());
        assert_eq!(parse(r#"{"ok":true,"id":"a"}"#), Ok(Some("a".into())));
        // encoding/json: case-insensitive keys, exact match first, unknown keys and
        // trailing bytes ignored, null leaves the zero value.
        assert_eq!(
            parse(r#"{"OK":true,"Id":"b","x":[1]}"#),
            Ok(Some("b".into()))
        );
        assert_eq!(
            parse(r#"{"ok":true,"ID":"no","id":"c"}"#),
            Ok(Some("c".into()))
        );
        assert_eq!(
            parse(r#"{"ok":true,"id":"d"} trailing"#),
            Ok(Some("d".into()))
        );
        assert_eq!(parse(r#"{"ok":null,"id":"e"}"#), Ok(None));
        assert_eq!(parse(r#"{"ok":false,"id":"f"}"#), Ok(None));
        for bad in [
            r#"{"ok":true}"#,
            r#"{"ok":true,"id":""}"#,
            r#"{"ok":true,"id":null}"#,
            r#"{"ok":true,"id":7}"#,
            r#"{"ok":false,"id":7}"#,
            r#"{"ok":"true","id":"x"}"#,
            r#"{"ok":1,"id":"x"}"#,
            r#"[{"ok":true,"id":"x"}]"#,
            r#""ok""#,
            "true",
            "",
            "   ",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auth_body_is_capped() {
        let big = format!(r#"{{"ok":true,"id":"x","pad":"{}"}}"#, "a".repeat(70_000));
        let up = Upstream::start(json_reply(&big), false);
        assert!(auth(&up.url("http", "/"), false).is_err());
    }

    #[test]
    fn auth_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accept and never answer.
        std::thread::spawn(move || {
            let held: Vec<TcpStream> = listener.incoming().take(1).flatten().collect();
            std::thread::sleep(Duration::from_secs(10));
            drop(held);
        });
        let started = Instant::now();
        let result = http_auth(
            &format!("http://{addr}/"),
            false,
            CLIENT.parse().unwrap(),
            "x",
            0,
            Duration::from_millis(300),
        );
        assert!(result.is_err(), "{result:?}");
        assert!(started.elapsed() < 5 * SECOND);
    }

    #[test]
    fn auth_transport_errors() {
        assert!(auth(&format!("http://{}/", dead_addr()), false).is_err());
        assert!(auth("not a url", false).is_err());
        assert!(auth("ftp://127.0.0.1/", false).is_err());
        assert!(auth("", false).is_err());
    }

    #[test]
    fn auth_https_insecure() {
        let up = Upstream::start(json_reply(r#"{"ok":true,"id":"tls"}"#), true);
        assert_eq!(auth(&up.url("https", "/"), true), Ok(Some("tls".into())));
        // A self-signed certificate fails verification.
        let err = auth(&up.url("https", "/"), false).unwrap_err();
        assert!(!err.is_empty());
    }
}
