//! The Hysteria 2 authentication exchange over HTTP/3 (protocol notes §2): `POST
//! https://hysteria/auth` with `hysteria-*` headers, answered by status 233.

use rand::Rng;

use super::frames::headers_frame;
use super::qpack::HuffmanPolicy;
use super::request::Request;
use super::response::Response;

/// `:authority` of the auth request; compared exactly (no port, case-sensitive).
pub const AUTH_HOST: &str = "hysteria";
/// Path of the auth request.
pub const AUTH_PATH: &str = "/auth";
/// The status that means "authenticated"; every other status is a failure.
pub const STATUS_AUTH_OK: u16 = 233;
/// Client credential: a password, or `user:pass`.
pub const HEADER_AUTH: &str = "hysteria-auth";
/// Receive rate in bytes per second (`auto` from a server).
pub const HEADER_CC_RX: &str = "hysteria-cc-rx";
/// Random padding, ignored on receipt.
pub const HEADER_PADDING: &str = "hysteria-padding";
/// Whether the server allows UDP relaying.
pub const HEADER_UDP: &str = "hysteria-udp";
/// Padding length range of both auth messages, as the Go code draws it: 256..2048.
pub const AUTH_PADDING_LEN: std::ops::Range<usize> = 256..2048;
/// `user-agent` of quic-go's HTTP/3 client, which the official client and sing-box send.
pub const GO_USER_AGENT: &str = "quic-go HTTP/3";

const PADDING_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// What an auth request carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRequest {
    /// `hysteria-auth` (empty if absent).
    pub auth: String,
    /// `hysteria-cc-rx`: the client's receive rate, bytes per second; 0 = unknown.
    pub cc_rx: u64,
}

/// A rate in a server's `hysteria-cc-rx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcRx {
    /// `auto`: the client picks its own congestion control.
    Auto,
    /// Bytes per second; 0 = unlimited.
    Bps(u64),
}

/// A successful auth response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthOk {
    /// `hysteria-udp`: the server relays UDP.
    pub udp: bool,
    /// `hysteria-cc-rx`: the server's receive rate.
    pub cc_rx: CcRx,
}

/// An auth response with a status other than 233.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFailed(pub u16);

/// The Hysteria auth request inside `req`, if it is one: `POST`, `:authority` exactly
/// `hysteria`, and a URL path of `/auth` (Go's `r.URL.Path`, so a query is allowed).
/// Anything else goes to the masquerade.
pub fn auth_request(req: &Request) -> Option<AuthRequest> {
    if req.method != "POST" || req.authority != AUTH_HOST {
        return None;
    }
    if req.url_path().as_deref() != Some(AUTH_PATH) {
        return None;
    }
    Some(AuthRequest {
        auth: req.header(HEADER_AUTH).unwrap_or_default().to_owned(),
        cc_rx: go_parse_uint(req.header(HEADER_CC_RX).unwrap_or_default()),
    })
}

/// The server's 233 response: one HEADERS frame with `:status 233`, `hysteria-udp`,
/// `hysteria-cc-rx`, `hysteria-padding` and `content-length: 0`. The server sends FIN after
/// it. (The Go server also sends `date`; only authenticated clients ever see this.)
pub fn auth_ok_response(udp: bool, cc_rx: CcRx, padding: &str) -> Vec<u8> {
    let cc_rx = match cc_rx {
        CcRx::Auto => "auto".to_owned(),
        CcRx::Bps(bps) => bps.to_string(),
    };
    headers_frame(
        &[
            (":status", "233"),
            (HEADER_UDP, if udp { "true" } else { "false" }),
            (HEADER_CC_RX, &cc_rx),
            (HEADER_PADDING, padding),
            ("content-length", "0"),
        ],
        HuffmanPolicy::Always,
    )
}

/// The client's auth request as the official client sends it through quic-go: one HEADERS
/// frame with `:authority hysteria`, `:method POST`, `:path /auth`, `:scheme https`,
/// `hysteria-auth`, `hysteria-cc-rx`, `hysteria-padding`, then the fields quic-go adds itself
/// (`content-length: 0`, `accept-encoding: gzip`, `user-agent: quic-go HTTP/3`), all
/// Huffman-coded. The client sends FIN after it.
pub fn auth_request_headers(auth: &str, cc_rx: u64, padding: &str) -> Vec<u8> {
    let cc_rx = cc_rx.to_string();
    headers_frame(
        &[
            (":authority", AUTH_HOST),
            (":method", "POST"),
            (":path", AUTH_PATH),
            (":scheme", "https"),
            (HEADER_AUTH, auth),
            (HEADER_CC_RX, &cc_rx),
            (HEADER_PADDING, padding),
            ("content-length", "0"),
            ("accept-encoding", "gzip"),
            ("user-agent", GO_USER_AGENT),
        ],
        HuffmanPolicy::Always,
    )
}

/// Reads a response to the auth request. Only the status decides (it must be exactly 233);
/// the headers are then read the way the Go client reads them (`strconv.ParseBool`,
/// `strconv.ParseUint`, errors ignored).
pub fn parse_auth_response(resp: &Response) -> Result<AuthOk, AuthFailed> {
    if resp.status != STATUS_AUTH_OK {
        return Err(AuthFailed(resp.status));
    }
    let udp = go_parse_bool(resp.header(HEADER_UDP).unwrap_or_default()).unwrap_or(false);
    let cc_rx = match resp.header(HEADER_CC_RX).unwrap_or_default() {
        "auto" => CcRx::Auto,
        other => CcRx::Bps(go_parse_uint(other)),
    };
    Ok(AuthOk { udp, cc_rx })
}

/// Random padding for an auth message: 256 to 2047 characters from `[a-zA-Z0-9]`.
pub fn auth_padding(rng: &mut impl rand::RngCore) -> String {
    let len = rng.gen_range(AUTH_PADDING_LEN);
    (0..len)
        .map(|_| char::from(PADDING_CHARS[rng.gen_range(0..PADDING_CHARS.len())]))
        .collect()
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `v, _ := strconv.ParseUint(s, 10, 64)` in Go: digits only, else 0; on overflow Go returns
/// the maximum value along with its error, and the Hysteria code keeps it.
fn go_parse_uint(s: &str) -> u64 {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    s.parse().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::h3::{RequestReader, ResponseReader};
    use rand::SeedableRng;

    fn request(auth: &str, cc_rx: u64) -> Request {
        let mut reader = RequestReader::new();
        let req = reader
            .push(&auth_request_headers(auth, cc_rx, "pad"))
            .unwrap()
            .unwrap();
        reader.finish().unwrap();
        req
    }

    #[test]
    fn client_request_is_an_auth_request() {
        let req = request("user:pass", 12_500_000);
        assert_eq!(req.method, "POST");
        assert_eq!(req.scheme, "https");
        assert_eq!(req.authority, "hysteria");
        assert_eq!(req.path, "/auth");
        assert_eq!(req.header("content-length"), Some("0"));
        assert_eq!(req.header("accept-encoding"), Some("gzip"));
        assert_eq!(req.header("user-agent"), Some(GO_USER_AGENT));
        assert_eq!(
            auth_request(&req),
            Some(AuthRequest {
                auth: "user:pass".into(),
                cc_rx: 12_500_000
            })
        );
    }

    #[test]
    fn only_the_exact_request_authenticates() {
        let base = request("pw", 0);
        let not_auth = |f: &dyn Fn(&mut Request)| {
            let mut req = base.clone();
            f(&mut req);
            auth_request(&req)
        };
        assert!(not_auth(&|_| {}).is_some());
        assert_eq!(not_auth(&|r| r.authority = "hysteria:443".into()), None);
        assert_eq!(not_auth(&|r| r.authority = "Hysteria".into()), None);
        assert_eq!(not_auth(&|r| r.method = "GET".into()), None);
        assert_eq!(not_auth(&|r| r.method = "post".into()), None);
        assert_eq!(not_auth(&|r| r.path = "/auth/".into()), None);
        assert_eq!(not_auth(&|r| r.path = "/Auth".into()), None);
        assert_eq!(not_auth(&|r| r.path = "/".into()), None);
        // Go compares r.URL.Path, so these still are auth requests.
        assert!(not_auth(&|r| r.path = "/auth?x=1".into()).is_some());
        assert!(not_auth(&|r| r.path = "/%61uth".into()).is_some());
        // Header names are case-insensitive; bad numbers read as 0, overflow as u64::MAX.
        let req = |headers: &[(&str, &str)]| {
            let mut r = base.clone();
            r.headers = headers.iter().map(|&(n, v)| (n.into(), v.into())).collect();
            auth_request(&r).unwrap()
        };
        assert_eq!(
            req(&[("Hysteria-Auth", "a"), ("HYSTERIA-CC-RX", "7")]),
            AuthRequest {
                auth: "a".into(),
                cc_rx: 7
            }
        );
        assert_eq!(req(&[("hysteria-cc-rx", "fast")]).cc_rx, 0);
        assert_eq!(req(&[("hysteria-cc-rx", "-1")]).cc_rx, 0);
        assert_eq!(req(&[("hysteria-cc-rx", " 1")]).cc_rx, 0);
        assert_eq!(
            req(&[("hysteria-cc-rx", "99999999999999999999")]).cc_rx,
            u64::MAX
        );
        assert_eq!(
            req(&[]),
            AuthRequest {
                auth: String::new(),
                cc_rx: 0
            }
        );
    }

    fn response(bytes: &[u8]) -> Response {
        let mut reader = ResponseReader::new();
        let resp = reader.push(bytes).unwrap().unwrap();
        reader.finish().unwrap();
        resp
    }

    #[test]
    fn auth_ok_round_trip() {
        let padding = auth_padding(&mut rand::rngs::StdRng::seed_from_u64(1));
        for (udp, cc_rx) in [
            (true, CcRx::Auto),
            (false, CcRx::Bps(0)),
            (true, CcRx::Bps(u64::MAX)),
        ] {
            let resp = response(&auth_ok_response(udp, cc_rx, &padding));
            assert_eq!(resp.status, 233);
            assert_eq!(resp.header(HEADER_PADDING), Some(padding.as_str()));
            assert_eq!(resp.header("content-length"), Some("0"));
            assert_eq!(parse_auth_response(&resp), Ok(AuthOk { udp, cc_rx }));
        }
    }

    #[test]
    fn auth_response_parsing_like_go() {
        let resp = |status: u16, headers: &[(&str, &str)]| Response {
            status,
            headers: headers.iter().map(|&(n, v)| (n.into(), v.into())).collect(),
        };
        assert_eq!(parse_auth_response(&resp(404, &[])), Err(AuthFailed(404)));
        assert_eq!(parse_auth_response(&resp(200, &[])), Err(AuthFailed(200)));
        for (v, udp) in [
            ("1", true),
            ("t", true),
            ("T", true),
            ("TRUE", true),
            ("true", true),
            ("True", true),
            ("0", false),
            ("f", false),
            ("FALSE", false),
            ("yes", false),
            ("tRUE", false),
            ("", false),
        ] {
            let ok = parse_auth_response(&resp(233, &[("hysteria-udp", v)])).unwrap();
            assert_eq!(ok.udp, udp, "{v}");
        }
        let cc = |v: &str| {
            parse_auth_response(&resp(233, &[("hysteria-cc-rx", v)]))
                .unwrap()
                .cc_rx
        };
        assert_eq!(cc("auto"), CcRx::Auto);
        assert_eq!(cc("AUTO"), CcRx::Bps(0));
        assert_eq!(cc("100"), CcRx::Bps(100));
        assert_eq!(cc("1e6"), CcRx::Bps(0));
        assert_eq!(
            parse_auth_response(&resp(233, &[])).unwrap().cc_rx,
            CcRx::Bps(0)
        );
    }

    #[test]
    fn padding_shape() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let p = auth_padding(&mut rng);
            assert!(AUTH_PADDING_LEN.contains(&p.len()));
            assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }
}
