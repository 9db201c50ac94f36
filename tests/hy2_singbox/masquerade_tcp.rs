//! The masquerade over TCP (`masquerade.listenHTTPS`, `listenHTTP`, `forceHTTPS`) and
//! `tls.sniGuard`, against an in-process `quelay server`: curl over HTTP/1.1 and HTTP/2 gets
//! what an HTTP/3 client gets, plus `Alt-Svc`; the HTTP listener redirects; a wrong SNI is
//! refused on both transports; idle TCP connections do not stop a relayed download.
//! curl must be installed (`.ci/run` installs it).

use super::support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use quelay::quic::{self, QuicParams, Verify};

use support::{
    http_get, open_files_limit, pattern_mismatch, socks5_connect, HttpTarget, SbOpts,
    SingboxClient, MIB, PASSWORD, SNI,
};

/// The masquerade served on every transport: a string with a field of its own.
const CONTENT: &str = "<html>a real website</html>\n";

/// An in-process server with `tls.sniGuard: strict`, a `string` masquerade, and both TCP
/// listeners. Returns the server, its HTTPS and HTTP listeners, and the directory holding
/// its certificate.
fn start(
    force_https: bool,
) -> (
    quelay::server::run::Server,
    SocketAddr,
    SocketAddr,
    support::TempDir,
) {
    let dir = support::tempdir();
    let (cert, key) = support::write_cert(&dir);
    let https = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         tls: {{cert: {cert:?}, key: {key:?}, sniGuard: strict}}\n\
         auth: {{type: password, password: {PASSWORD:?}}}\n\
         outboundGuard: {{allowLoopback: true}}\n\
         engine: {{workers: 2}}\n\
         masquerade:\n\
         \x20 type: string\n\
         \x20 string:\n\
         \x20   content: {CONTENT:?}\n\
         \x20   headers: {{content-type: text/html, x-site: quelay-test}}\n\
         \x20   statusCode: 200\n\
         \x20 listenHTTPS: {https}\n\
         \x20 listenHTTP: {http}\n\
         \x20 forceHTTPS: {force_https}\n",
    );
    let server = support::start_in_process(&yaml);
    for addr in [https, http] {
        assert!(
            support::wait_tcp_port(addr, Duration::from_secs(10)),
            "the TCP listener {addr} did not come up"
        );
    }
    (server, https, http, dir)
}

/// A response as a client saw it.
#[derive(Debug)]
struct Seen {
    status: u16,
    /// Names lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs curl with `args` (10 s at most); its exit code and stdout.
fn curl(args: &[&str]) -> (i32, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run curl ({e}): these tests need curl installed (apt-get install curl)")
        });
    (out.status.code().unwrap_or(-1), out.stdout)
}

/// curl `-i` output: the status line, the fields, the body.
fn parse_curl(out: &[u8]) -> Seen {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Seen {
        status,
        headers,
        body: out[split + 4..].to_vec(),
    }
}

/// `GET path` over the HTTPS listener with SNI and Host `hy2.test`.
fn curl_https(version: &str, https: SocketAddr, path: &str) -> Seen {
    let resolve = format!("{SNI}:{}:127.0.0.1", https.port());
    let url = format!("https://{SNI}:{}{path}", https.port());
    let (code, out) = curl(&[version, "-k", "-i", "--resolve", &resolve, &url]);
    assert_eq!(code, 0, "curl {version} {url} failed with exit code {code}");
    parse_curl(&out)
}

/// `GET path` over HTTP/3 (no Hysteria2 auth) with SNI `sni`; `Err` when the handshake fails.
fn h3_get(server: SocketAddr, sni: &str, path: &str) -> Result<Seen, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let crypto = quic::client_crypto(Verify::Insecure, &[b"h3"]).expect("client TLS config");
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal"))
            .expect("client endpoint");
        ep.set_default_client_config(quic::client_config(crypto, &QuicParams::default()));
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ep.connect(server, sni).expect("connect starts"),
        )
        .await
        .map_err(|_| "no handshake within 10 s".to_string())?
        .map_err(|e| format!("QUIC handshake: {e}"))?;
        let answer = super::h3_request(
            &conn,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", SNI),
                (":path", path),
            ],
        )
        .await;
        conn.close(0u32.into(), b"");
        ep.wait_idle().await;
        Ok(Seen {
            status: answer.status,
            headers: answer.headers,
            body: answer.body,
        })
    })
}

#[test]
fn curl_over_http1_and_http2_sees_the_http3_masquerade_with_alt_svc() {
    let (server, https, _http, _dir) = start(false);
    let alt_svc = format!("h3=\":{}\"; ma=2592000", server.addr.port());
    let quic = h3_get(server.addr, SNI, "/index.html?x=1").expect("HTTP/3 GET");
    assert_eq!(quic.status, 200);
    assert_eq!(quic.body, CONTENT.as_bytes());
    for version in ["--http1.1", "--http2"] {
        let tcp = curl_https(version, https, "/index.html?x=1");
        assert_eq!(tcp.status, quic.status, "{version} status");
        assert_eq!(tcp.body, quic.body, "{version} body");
        for field in ["content-type", "x-site", "content-length"] {
            assert_eq!(
                tcp.header(field),
                quic.header(field),
                "{version} {field}: {:?} vs HTTP/3 {:?}",
                tcp.headers,
                quic.headers
            );
        }
        assert_eq!(tcp.header("x-site"), Some("quelay-test"));
        assert_eq!(tcp.header("alt-svc"), Some(alt_svc.as_str()), "{version}");
    }
    // curl saw HTTP/2 when it asked for it: ALPN offered h2.
    let (code, out) = curl(&[
        "--http2",
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        "--resolve",
        &format!("{SNI}:{}:127.0.0.1", https.port()),
        &format!("https://{SNI}:{}/", https.port()),
    ]);
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8_lossy(&out), "2");
    support::stop_in_process(server);
}

#[test]
fn plain_http_serves_the_masquerade_or_redirects_with_force_https() {
    let (server, https, http, _dir) = start(false);
    let (code, out) = curl(&["--http1.1", "-i", &format!("http://{http}/a")]);
    assert_eq!(code, 0);
    let plain = parse_curl(&out);
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body, CONTENT.as_bytes());
    assert_eq!(
        plain.header("alt-svc"),
        Some(format!("h3=\":{}\"; ma=2592000", server.addr.port()).as_str())
    );
    support::stop_in_process(server);

    let (server, https2, http, _dir) = start(true);
    assert_ne!(https, https2);
    let (code, out) = curl(&[
        "--http1.1",
        "-i",
        "-H",
        "Host: www.hy2.test",
        &format!("http://{http}/some/path?q=1&r=2"),
    ]);
    assert_eq!(code, 0);
    let moved = parse_curl(&out);
    assert_eq!(moved.status, 301);
    assert_eq!(
        moved.header("location"),
        Some(format!("https://www.hy2.test:{}/some/path?q=1&r=2", https2.port()).as_str())
    );
    assert_eq!(moved.header("alt-svc"), None, "redirects carry no Alt-Svc");
    support::stop_in_process(server);
}

#[test]
fn a_wrong_sni_is_refused_under_strict_on_quic_and_tcp() {
    let (server, https, _http, _dir) = start(false);
    // The certificate's name passes on both transports.
    assert_eq!(
        h3_get(server.addr, SNI, "/").expect("HTTP/3 GET").status,
        200
    );
    assert_eq!(curl_https("--http1.1", https, "/").status, 200);

    let err = h3_get(server.addr, "wrong.test", "/").expect_err("a wrong SNI is refused");
    assert!(err.contains("QUIC handshake"), "{err}");

    let port = https.port();
    let wrong = format!("https://wrong.test:{port}/");
    let (code, _) = curl(&[
        "-k",
        "--resolve",
        &format!("wrong.test:{port}:127.0.0.1"),
        &wrong,
    ]);
    // 35: the TLS handshake failed.
    assert_eq!(code, 35, "curl {wrong} with a wrong SNI");
    // An IP address sends no SNI: refused as well.
    let (code, _) = curl(&["-k", &format!("https://127.0.0.1:{port}/")]);
    assert_eq!(code, 35, "curl without SNI");
    support::stop_in_process(server);
}

#[test]
fn a_thousand_idle_tls_connections_do_not_stop_a_relayed_download() {
    const IDLE: usize = 1000;
    const DOWNLOAD: usize = 16 * MIB;
    let limit = open_files_limit().unwrap_or(0);
    assert!(
        limit >= 4 * IDLE as u64,
        "this test needs {} open files but RLIMIT_NOFILE is {limit}: raise it (ulimit -n)",
        4 * IDLE
    );
    let (server, https, _http, _dir) = start(false);
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&https, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
            // Half of them start a ClientHello and stop.
            if i % 2 == 0 {
                s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
                    .expect("a partial record");
            }
            s
        })
        .collect();

    let target = HttpTarget::start();
    let client = SingboxClient::start(server.addr, PASSWORD, &SbOpts::default());
    let t = Instant::now();
    let mut s = socks5_connect(client.socks_addr(), "127.0.0.1", target.addr().port())
        .expect("SOCKS5 CONNECT for the download");
    let (status, body) = http_get(
        &mut s,
        &target.addr().to_string(),
        &format!("/bytes/{DOWNLOAD}"),
    )
    .expect("download through the relay");
    assert_eq!(status, 200);
    assert_eq!(body.len(), DOWNLOAD);
    assert_eq!(pattern_mismatch(0, &body), None, "download content");
    eprintln!(
        "download of {} MiB with {IDLE} idle TLS connections open: {:.2?}",
        DOWNLOAD / MIB,
        t.elapsed()
    );
    // The listener still answers a real visitor.
    assert_eq!(curl_https("--http1.1", https, "/").status, 200);
    drop(idle);
    drop(client);
    support::stop_in_process(server);
}
