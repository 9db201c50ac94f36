//! The Hysteria2 server against hostile clients, in process on loopback.
//!
//! - A late HTTP-auth verdict must land only on the connection that asked for it: with one
//!   worker, quinn-proto hands a closed connection's handle to the next one, and a verdict
//!   keyed by that handle alone would log the newcomer in.
//! - Connects to a target that never answers give their sockets back at the timeout, and
//!   requests abandoned while connecting leave no socket behind.
//! - A second auth request changes nothing about the connection.
//! - Unauthenticated connections: memory by what they send, closed at the auth deadline,
//!   capped per source.
//! - Masquerade responses cost a chunk each while their clients do not read them.
//!
//! The clients are plain quinn connections that speak the Hysteria2 wire format by hand, so
//! that they can do what no well-behaved client does (leave mid-auth, skip auth).

// Each test binary uses a subset of the shared helpers.
#[allow(unused_imports)]
mod support;

// More hostile clients, each a file of its own under tests/hostile/.
#[path = "hostile/handshake_flood.rs"]
mod handshake_flood;
#[path = "hostile/masquerade_stream.rs"]
mod masquerade_stream;
#[path = "hostile/silent_ipv6.rs"]
mod silent_ipv6;
#[path = "hostile/udp_sessions.rs"]
mod udp_sessions;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use quelay::proto::h3;
use quelay::proto::tcp::{TcpRequest, TcpResponse};
use quelay::quic::{self, QuicParams, Verify};

use support::TcpEcho;

// ---------------------------------------------------------------------------------------
// A slow HTTP authentication backend.

/// Accepts every login as `user`, answering each request `delay` after it arrived.
struct SlowAuth {
    addr: SocketAddr,
    /// Requests received so far.
    requests: Arc<AtomicUsize>,
    _thread: JoinHandle<()>,
}

impl SlowAuth {
    fn start(delay: Duration, user: &'static str) -> SlowAuth {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the auth backend");
        let addr = listener.local_addr().expect("auth backend address");
        let requests = Arc::new(AtomicUsize::new(0));
        let thread = {
            let requests = requests.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let requests = requests.clone();
                    std::thread::spawn(move || answer_auth(stream, delay, user, &requests));
                }
            })
        };
        SlowAuth {
            addr,
            requests,
            _thread: thread,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/auth", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads requests on one keep-alive connection and answers each `{"ok": true, "id": user}`
/// after `delay`.
fn answer_auth(stream: TcpStream, delay: Duration, user: &str, requests: &AtomicUsize) {
    let mut r = BufReader::new(stream.try_clone().expect("clone the backend stream"));
    let mut w = stream;
    while let Ok(Some(head)) = support::read_head(&mut r) {
        let len = head
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(delay);
        let reply = format!(r#"{{"ok": true, "id": "{user}"}}"#);
        let msg = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if w.write_all(msg.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The server and the raw clients.

fn client_endpoint() -> quinn::Endpoint {
    let crypto = quic::client_crypto(Verify::Insecure, &[b"h3"]).expect("client TLS config");
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal")).expect("client endpoint");
    ep.set_default_client_config(quic::client_config(crypto, &QuicParams::default()));
    ep
}

async fn connect(ep: &quinn::Endpoint, server: SocketAddr) -> quinn::Connection {
    ep.connect(server, support::SNI)
        .expect("connect starts")
        .await
        .expect("QUIC handshake")
}

/// Sends the Hysteria2 auth request on a new stream (its answer is not read).
async fn send_auth(conn: &quinn::Connection, password: &str) -> quinn::RecvStream {
    let (mut send, recv) = conn.open_bi().await.expect("open the auth stream");
    let padding = h3::auth_padding(&mut rand::thread_rng());
    send.write_all(&h3::auth_request_headers(password, 0, &padding))
        .await
        .expect("write the auth request");
    send.finish().expect("finish the auth stream");
    recv
}

/// Whether a proxy stream to `target` relays: a TCPResponse with status OK and then the
/// echo of what was sent. Any other ending (reset, FIN, an HTTP answer, silence for
/// `wait`) is "no".
async fn relays(conn: &quinn::Connection, target: SocketAddr, wait: Duration) -> bool {
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return false;
    };
    let payload = b"hello through the relay";
    let mut req = Vec::new();
    TcpRequest::encode(&target.to_string(), &[b'p'; 16], &mut req).expect("valid TCPRequest");
    req.extend_from_slice(payload);
    if send.write_all(&req).await.is_err() {
        return false;
    }
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                _ => return false,
            }
            if let Ok(Some((resp, used))) = TcpResponse::parse(&got) {
                if !resp.is_ok() {
                    return false;
                }
                if got.len() - used >= payload.len() {
                    return &got[used..used + payload.len()] == payload;
                }
            }
        }
    };
    tokio::time::timeout(wait, read).await.unwrap_or(false)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------
// Tests.

/// A connection leaves while its HTTP-auth verdict is pending; a new connection takes its
/// handle (one worker, nothing else connected) and never authenticates. When the verdict
/// arrives, the newcomer must still be refused relaying, 20 times over.
#[test]
fn late_http_auth_verdict_never_logs_in_a_successor() {
    const ROUNDS: usize = 20;
    /// How long the backend takes: well past the departed connection's drain period (3 PTO,
    /// tens of milliseconds on loopback), so that its handle is free before it answers.
    const VERDICT_DELAY: Duration = Duration::from_millis(600);
    /// From the departure to the successor's connect.
    const REUSE_AFTER: Duration = Duration::from_millis(250);

    let backend = SlowAuth::start(VERDICT_DELAY, "alice");
    let echo = TcpEcho::start();
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         auth: {{type: http, http: {{url: \"{}\"}}}}\n\
         outboundGuard: {{allowLoopback: true}}\n\
         engine: {{workers: 1}}\n",
        backend.url()
    );
    let server = support::start_in_process(&yaml);
    let addr = server.addr;
    let rt = runtime();
    let ep = rt.block_on(async { client_endpoint() });

    // The setup works: a client that waits for its verdict relays.
    rt.block_on(async {
        let conn = connect(&ep, addr).await;
        let mut answer = send_auth(&conn, "pw").await;
        let head = answer
            .read_to_end(64 * 1024)
            .await
            .expect("the auth answer arrives");
        let mut reader = h3::ResponseReader::new();
        let resp = reader
            .push(&head)
            .expect("an HTTP/3 response")
            .expect("a whole response");
        assert_eq!(resp.status, 233, "the backend's verdict logs the client in");
        assert!(
            relays(&conn, echo.addr(), Duration::from_secs(5)).await,
            "an authenticated client relays to the echo target"
        );
        conn.close(0u32.into(), b"done");
    });

    let mut borrowed = Vec::new();
    for round in 0..ROUNDS {
        let requests_before = backend.requests();
        let relayed = rt.block_on(async {
            // Connections of the previous round are gone from the server's table.
            tokio::time::sleep(REUSE_AFTER).await;
            let leaver = connect(&ep, addr).await;
            let _answer = send_auth(&leaver, "pw").await;
            // Leave once the backend holds the request.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while backend.requests() == requests_before {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "round {round}: the auth request never reached the backend"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            leaver.close(0u32.into(), b"bye");
            tokio::time::sleep(REUSE_AFTER).await;

            let successor = connect(&ep, addr).await;
            // A request stream that has sent only the start of a HEADERS frame: the stream
            // that the leaver's auth used has this id on the successor's connection.
            let (mut idle, _idle_recv) = successor.open_bi().await.expect("open a stream");
            idle.write_all(&[0x01]).await.expect("write a frame type");
            // Past the leaver's verdict.
            tokio::time::sleep(VERDICT_DELAY).await;
            let relayed = relays(&successor, echo.addr(), Duration::from_secs(1)).await;
            successor.close(0u32.into(), b"done");
            relayed
        });
        if relayed {
            borrowed.push(round);
        }
    }
    rt.block_on(async { ep.wait_idle().await });
    support::stop_in_process(server);
    assert!(
        borrowed.is_empty(),
        "a connection that never authenticated relayed after another connection's late \
         verdict, in rounds {borrowed:?} of {ROUNDS}"
    );
}

/// Sockets of this host in SYN_SENT towards local `port` over `family` (4 or 6), from
/// /proc/net/tcp or tcp6 (the kernel's view, so a socket the server forgot but never closed
/// still counts).
fn syn_sent_to(family: u8, port: u16) -> usize {
    let path = if family == 6 {
        "/proc/net/tcp6"
    } else {
        "/proc/net/tcp"
    };
    let table = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "02"
                && f[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

/// A TCP target that never answers: a listener whose accept queue is full, so the kernel
/// drops the SYNs and connects to it hang. Holds the listener and what fills its queue.
struct Silent {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

impl Silent {
    /// Listens on `bind` (port 0: any), IPv6 only for an IPv6 address.
    fn start(bind: &str) -> Silent {
        let bind: SocketAddr = bind.parse().expect("a socket address");
        let listener = socket2::Socket::new(
            socket2::Domain::for_address(bind),
            socket2::Type::STREAM,
            None,
        )
        .expect("a TCP socket");
        if bind.is_ipv6() {
            listener.set_only_v6(true).expect("IPV6_V6ONLY");
        }
        listener
            .bind(&bind.into())
            .unwrap_or_else(|e| panic!("bind the silent target on {bind}: {e}"));
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("its address")
            .as_socket()
            .expect("an IP address");
        let fillers: Vec<TcpStream> = (0..4)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
            .collect();
        assert!(
            !fillers.is_empty(),
            "could not fill the silent target's accept queue"
        );
        Silent {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

/// Connects to a target that never answers (its accept queue is full, so the kernel drops
/// the SYNs), 300 at once: each relay's connect times out after the server's connect
/// timeout, the client gets an error response, and every socket is gone within a second of
/// it, not after the kernel's two minutes of SYN retries.
#[test]
fn connects_that_time_out_give_their_sockets_back() {
    const STREAMS: usize = 300;
    let silent = Silent::start("127.0.0.1:0");
    let target = silent.addr;
    let before = syn_sent_to(4, target.port());

    let server = support::start_in_process(
        "listen: 127.0.0.1:0\n\
         auth: {type: password, password: pw}\n\
         outboundGuard: {allowLoopback: true}\n\
         engine: {workers: 1}\n",
    );
    let rt = runtime();
    let ep = rt.block_on(async { client_endpoint() });
    let (answers, pending, after) = rt.block_on(async {
        let conn = connect(&ep, server.addr).await;
        let mut auth = send_auth(&conn, "pw").await;
        auth.read_to_end(64 * 1024).await.expect("the auth answer");
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let (mut send, mut recv) = conn.open_bi().await.ok()?;
                let mut req = Vec::new();
                TcpRequest::encode(&target.to_string(), &[b'p'; 16], &mut req).ok()?;
                send.write_all(&req).await.ok()?;
                let read = async {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        if let Ok(Some((resp, _))) = TcpResponse::parse(&got) {
                            return Some((resp.is_ok(), resp.message));
                        }
                        let n = recv.read(&mut buf).await.ok()??;
                        got.extend_from_slice(&buf[..n]);
                    }
                };
                let wait = quelay::server::hy2::CONNECT_TIMEOUT + Duration::from_secs(5);
                tokio::time::timeout(wait, read).await.ok()?
            }));
        }
        // Every connect is started within a few seconds even on a loaded machine, and none
        // has timed out yet (CONNECT_TIMEOUT is 10 s).
        let mut pending = 0;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            pending = syn_sent_to(4, target.port()) - before;
            if pending >= STREAMS {
                break;
            }
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("stream task"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = syn_sent_to(4, target.port()).saturating_sub(before);
        conn.close(0u32.into(), b"done");
        (answers, pending, after)
    });
    rt.block_on(async { ep.wait_idle().await });
    support::stop_in_process(server);
    drop(silent);
    assert_eq!(
        pending, STREAMS,
        "every relay's connect should be pending at first"
    );
    let timed_out = answers
        .iter()
        .filter(|a| matches!(a, Some((false, m)) if m.contains("timed out")))
        .count();
    assert_eq!(
        timed_out,
        STREAMS,
        "answers other than a timeout: {:?}",
        answers
            .iter()
            .find(|a| !matches!(a, Some((false, m)) if m.contains("timed out")))
    );
    assert_eq!(
        after, 0,
        "a second after the timeout, the server still holds connecting sockets"
    );
}

/// POSTs `body` to `path` of the traffic API at `api` with `secret`; the status code.
fn api_post(api: SocketAddr, secret: &str, path: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(api).expect("connect to the traffic API");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {secret}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send the request");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"))
}

/// A connection that authenticated as alice asks again as bob. As the reference does, the
/// second request is answered 233 and changes nothing: the connection stays alice's, so
/// kicking bob leaves it and kicking alice closes it.
#[test]
fn a_second_auth_does_not_change_the_connections_user() {
    let echo = TcpEcho::start();
    let api: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .expect("address");
    let server = support::start_in_process(&format!(
        "listen: 127.0.0.1:0\n\
         auth: {{type: userpass, userpass: {{alice: pa, bob: pb}}}}\n\
         outboundGuard: {{allowLoopback: true}}\n\
         trafficStats: {{listen: \"{api}\", secret: s3cret}}\n\
         engine: {{workers: 1}}\n"
    ));
    let rt = runtime();
    let ep = rt.block_on(async { client_endpoint() });
    let (second_status, after_bob_kick, closed_by_alice_kick) = rt.block_on(async {
        let conn = connect(&ep, server.addr).await;
        let mut first = send_auth(&conn, "alice:pa").await;
        first
            .read_to_end(64 * 1024)
            .await
            .expect("the first auth answer");
        let mut second = send_auth(&conn, "bob:pb").await;
        let head = second
            .read_to_end(64 * 1024)
            .await
            .expect("the second answer");
        let mut reader = h3::ResponseReader::new();
        let second_status = reader
            .push(&head)
            .expect("an HTTP/3 response")
            .expect("a whole response")
            .status;
        let api_call = |body: &'static str| {
            tokio::task::spawn_blocking(move || api_post(api, "s3cret", "/kick", body))
        };
        assert_eq!(api_call("[\"bob\"]").await.expect("kick bob"), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after_bob_kick = relays(&conn, echo.addr(), Duration::from_secs(5)).await;
        assert_eq!(api_call("[\"alice\"]").await.expect("kick alice"), 200);
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .is_ok();
        (second_status, after_bob_kick, closed)
    });
    rt.block_on(async { ep.wait_idle().await });
    support::stop_in_process(server);
    assert_eq!(second_status, 233, "a second auth request is answered 233");
    assert!(after_bob_kick, "kicking bob closed alice's connection");
    assert!(
        closed_by_alice_kick,
        "kicking alice left her connection open"
    );
}

/// A server process of its own (so that its memory can be read), with `extra` config.
fn spawn_server(extra: &str) -> (support::Child, SocketAddr, support::TempDir) {
    let dir = support::tempdir();
    let (cert, key) = support::write_cert(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .expect("address");
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {addr}\ntls: {{cert: \"{}\", key: \"{}\"}}\n\
             auth: {{type: password, password: pw}}\n\
             outboundGuard: {{allowLoopback: true}}\n{extra}",
            cert.display(),
            key.display()
        ),
    )
    .expect("write server.yaml");
    let mut cmd = std::process::Command::new(support::quelay_bin());
    cmd.arg("server")
        .arg("-c")
        .arg(&config)
        .env("QUELAY_LOG", "info");
    let mut child = support::Child::spawn("quelay-server", cmd, dir.path());
    child.wait_ready("the UDP port", Duration::from_secs(10), |_| {
        support::udp_bound(addr.port())
    });
    (child, addr, dir)
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// 200 connections that never authenticate open 100 streams each, and on each send the
/// start of a HEADERS frame that declares 16 KiB, then nothing. The server's memory grows
/// by what arrived, not by what the frames declare; every one of those connections is
/// closed at the auth deadline; an authenticated client relays all along.
#[test]
fn unauthenticated_connections_cost_what_they_send_and_end_at_the_auth_deadline() {
    const CONNS: usize = 200;
    const STREAMS: usize = 100;
    const AUTH_TIMEOUT: Duration = Duration::from_secs(6);
    let (mut server, addr, _dir) =
        spawn_server("limits: {authTimeout: 6s, maxUnauthenticatedPerSource: 1000}\n");
    let echo = TcpEcho::start();
    let rt = runtime();
    let ep = rt.block_on(async { client_endpoint() });
    let rss_before = rss(server.id());
    let (opened, closed_in, relayed, rss_peak) = rt.block_on(async {
        let user = connect(&ep, addr).await;
        let mut auth = send_auth(&user, "pw").await;
        auth.read_to_end(64 * 1024).await.expect("the auth answer");
        let started = tokio::time::Instant::now();
        let mut floods = Vec::new();
        for _ in 0..CONNS {
            let ep = ep.clone();
            floods.push(tokio::spawn(async move {
                let conn = connect(&ep, addr).await;
                let connected = tokio::time::Instant::now();
                let mut sends = Vec::new();
                for _ in 0..STREAMS {
                    let Ok((mut send, recv)) = conn.open_bi().await else {
                        break;
                    };
                    // HEADERS (0x01), length 16384 as a 4-byte varint, then silence.
                    if send
                        .write_all(&[0x01, 0x80, 0x00, 0x40, 0x00])
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sends.push((send, recv));
                }
                let opened = sends.len();
                let reason = conn.closed().await;
                let closed_after = connected.elapsed();
                (opened, closed_after, reason)
            }));
        }
        // While the flood holds its streams: the user still relays, and memory is read.
        let mut relayed = 0;
        let mut rss_peak = 0;
        while started.elapsed() < AUTH_TIMEOUT - Duration::from_secs(1) {
            if relays(&user, echo.addr(), Duration::from_secs(5)).await {
                relayed += 1;
            }
            rss_peak = rss_peak.max(rss(server.id()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut opened = 0;
        let mut closed_in = Vec::new();
        for f in floods {
            let (n, after, reason) = f.await.expect("flood task");
            opened += n;
            closed_in.push((after, reason));
        }
        let still = relays(&user, echo.addr(), Duration::from_secs(5)).await;
        user.close(0u32.into(), b"done");
        (opened, closed_in, relayed + usize::from(still), rss_peak)
    });
    rt.block_on(async { ep.wait_idle().await });
    server.assert_running();
    assert_eq!(
        opened,
        CONNS * STREAMS,
        "the flood could not open all its streams"
    );
    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "server RSS {} MiB before, {} MiB at the peak of the flood; {relayed} relays meanwhile",
        rss_before >> 20,
        rss_peak >> 20
    );
    assert!(
        growth < 64 << 20,
        "server memory grew by {} MiB for {} declared-but-unsent 16 KiB headers",
        growth >> 20,
        CONNS * STREAMS
    );
    for (after, reason) in &closed_in {
        assert!(
            *after >= AUTH_TIMEOUT - Duration::from_millis(500)
                && *after <= AUTH_TIMEOUT + Duration::from_secs(3),
            "an unauthenticated connection closed after {after:?} ({reason}), not at the \
             {AUTH_TIMEOUT:?} deadline"
        );
        assert!(
            matches!(reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == 0x100u32.into()),
            "closed with {reason}, not H3_NO_ERROR"
        );
    }
    assert!(
        relayed >= 5,
        "the authenticated client relayed only {relayed} times meanwhile"
    );
}

/// Past `limits.maxUnauthenticatedPerSource`, a new connection from the same source is
/// closed at once with H3_EXCESSIVE_LOAD; one that authenticates frees its place.
#[test]
fn unauthenticated_connections_per_source_are_capped() {
    let (mut server, addr, _dir) = spawn_server("limits: {maxUnauthenticatedPerSource: 5}\n");
    let rt = runtime();
    let ep = rt.block_on(async { client_endpoint() });
    rt.block_on(async {
        let mut waiting = Vec::new();
        for _ in 0..5 {
            waiting.push(connect(&ep, addr).await);
        }
        let refused = connect(&ep, addr).await;
        let reason = tokio::time::timeout(Duration::from_secs(5), refused.closed())
            .await
            .expect("the sixth connection is closed at once");
        assert!(
            matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == 0x107u32.into()),
            "closed with {reason}, not H3_EXCESSIVE_LOAD"
        );
        // One of the five logs in: a place is free again.
        let mut auth = send_auth(&waiting[0], "pw").await;
        auth.read_to_end(64 * 1024).await.expect("the auth answer");
        let next = connect(&ep, addr).await;
        let early = tokio::time::timeout(Duration::from_secs(1), next.closed()).await;
        assert!(early.is_err(), "a connection was refused with a place free: {early:?}");
    });
    rt.block_on(async { ep.wait_idle().await });
    server.assert_running();
}
