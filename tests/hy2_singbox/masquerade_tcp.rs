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

/// An upstream site with a WebSocket endpoint: a request asking for `websocket` gets a
/// `101` and then its bytes echoed; one asking for `mismatch` gets a `101` for websocket;
/// any other gets a `426`. It keeps every request head it reads.
struct WsUpstream {
    addr: SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl WsUpstream {
    /// The `Sec-WebSocket-Accept` it sends (RFC 6455's example).
    const ACCEPT: &'static str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn start() -> WsUpstream {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
        let addr = listener.local_addr().unwrap();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    seen.lock().unwrap().push(head.clone());
                    let answer = if head.contains("\r\nupgrade: websocket\r\n") {
                        format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                             Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                            Self::ACCEPT
                        )
                    } else if head.contains("\r\nupgrade: mismatch\r\n") {
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\n\r\n"
                            .to_owned()
                    } else {
                        "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 5\r\n\
                         X-Why: websocket only\r\n\r\nnope\n"
                            .to_owned()
                    };
                    if s.write_all(answer.as_bytes()).is_err() || !answer.contains(" 101 ") {
                        return;
                    }
                    if let Ok(mut from) = s.try_clone() {
                        let _ = std::io::copy(&mut from, &mut s);
                    }
                });
            }
        });
        WsUpstream { addr, heads }
    }
}

/// An in-process server whose masquerade proxies `upstream`, with both TCP listeners.
fn start_proxy(upstream: SocketAddr) -> (quelay::server::run::Server, SocketAddr, SocketAddr) {
    let dir = support::tempdir();
    let (cert, key) = support::write_cert(&dir);
    let https = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         tls: {{cert: {cert:?}, key: {key:?}}}\n\
         auth: {{type: password, password: {PASSWORD:?}}}\n\
         engine: {{workers: 1}}\n\
         masquerade:\n\
         \x20 type: proxy\n\
         \x20 proxy: {{url: \"http://{upstream}/app\"}}\n\
         \x20 listenHTTPS: {https}\n\
         \x20 listenHTTP: {http}\n",
    );
    let server = support::start_in_process(&yaml);
    for addr in [https, http] {
        assert!(
            support::wait_tcp_port(addr, Duration::from_secs(10)),
            "the TCP listener {addr} did not come up"
        );
    }
    // The certificate stays readable after the directory goes: it is loaded by now.
    drop(dir);
    (server, https, http)
}

/// Sends an upgrade request for `kind` on `s` and reads the answer's head.
fn ask_upgrade<S: std::io::Read + Write>(s: &mut S, kind: &str) -> Seen {
    let request = format!(
        "GET /chat?room=1 HTTP/1.1\r\nHost: {SNI}\r\nUpgrade: {kind}\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .expect("send the upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read the answer's head");
        assert_ne!(n, 0, "closed before the answer's head: {head:?}");
        head.push(byte[0]);
    }
    parse_curl(&head)
}

/// Bytes sent through a switched connection come back, in order, whole.
fn echoes<S: std::io::Read + Write>(s: &mut S) {
    let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    s.write_all(&data).expect("write through the tunnel");
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).expect("read the echo");
    assert!(back == data, "the echo differs from what was sent");
}

/// A WebSocket handshake through the proxy masquerade switches protocols on both TCP
/// listeners and then carries bytes both ways, as Go's ReverseProxy does; an upstream that
/// refuses is relayed as it answered, and one that switches to another protocol is a 502.
#[test]
fn a_websocket_upgrade_passes_through_the_proxy_masquerade() {
    let upstream = WsUpstream::start();
    let (server, https, http) = start_proxy(upstream.addr);
    let alt_svc = format!("h3=\":{}\"; ma=2592000", server.addr.port());

    // Plain HTTP/1.1.
    let mut plain = TcpStream::connect(http).expect("connect to listenHTTP");
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let switched = ask_upgrade(&mut plain, "websocket");
    assert_eq!(switched.status, 101, "{switched:?}");
    assert_eq!(switched.header("upgrade"), Some("websocket"));
    assert_eq!(
        switched.header("sec-websocket-accept"),
        Some(WsUpstream::ACCEPT)
    );
    assert_eq!(switched.header("alt-svc"), Some(alt_svc.as_str()));
    echoes(&mut plain);

    // HTTPS, HTTP/1.1 by ALPN.
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        rustls::pki_types::ServerName::try_from(SNI).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(https).expect("connect to listenHTTPS");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let switched = ask_upgrade(&mut tls, "websocket");
    assert_eq!(switched.status, 101, "{switched:?}");
    assert_eq!(switched.header("upgrade"), Some("websocket"));
    echoes(&mut tls);

    // What went upstream: the joined path, the upgrade fields put back, the key kept.
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for head in &heads {
        assert!(
            head.starts_with("get /app/chat?room=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
        assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
        assert!(
            head.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n"),
            "{head}"
        );
    }

    // An upstream that does not switch: its answer as it is.
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let refused = ask_upgrade(&mut s, "h2c");
    assert_eq!(refused.status, 426, "{refused:?}");
    assert_eq!(refused.header("x-why"), Some("websocket only"));
    // One that switches to what was not asked for: 502.
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ask_upgrade(&mut s, "mismatch").status, 502);

    // The tunnels stay up while the masquerade answers others.
    echoes(&mut plain);
    support::stop_in_process(server);
}

/// Accepts any server certificate (the test's own self-signed one).
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
