//! One user opening UDP sessions by the thousand cannot take the server's outbound sockets
//! from another user: `quelay server` with RLIMIT_NOFILE 4096 (an outbound-socket budget of
//! 3840) and no `limits` in its config, so the default per-user caps apply (sockets: half
//! the budget, UDP sessions: half of those, 960). User alice sends one datagram in each of
//! 10,000 UDP sessions; user bob's TCP streams still relay, every byte checked.
//!
//! The clients are plain quinn connections speaking the Hysteria2 wire format by hand; the
//! server's figures come from its Prometheus endpoint.

use super::support;
use support::{metric, scrape};

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quelay::proto::h3;
use quelay::proto::tcp::{TcpRequest, TcpResponse};
use quelay::proto::udp::fragment;
use quelay::quic::{self, QuicParams, Verify};

use support::{free_port, tempdir, write_cert, Child, TcpEcho, UdpEcho};

const NOFILE: u64 = 4096;
/// RLIMIT_NOFILE less the server's reserve of 256, halved for a user's sockets, halved
/// again for its UDP sessions.
const UDP_CAP: u64 = (NOFILE - 256) / 2 / 2;
const SESSIONS: u32 = 10_000;
const BOB_STREAMS: usize = 200;
const BOB_BYTES: usize = 64 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn login(ep: &quinn::Endpoint, server: SocketAddr, auth: &str) -> quinn::Connection {
    let conn = ep
        .connect(server, support::SNI)
        .expect("connect starts")
        .await
        .expect("QUIC handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("open the auth stream");
    let padding = h3::auth_padding(&mut rand::thread_rng());
    send.write_all(&h3::auth_request_headers(auth, 0, &padding))
        .await
        .expect("write the auth request");
    send.finish().expect("finish the auth stream");
    let head = recv.read_to_end(64 * 1024).await.expect("the auth answer");
    let resp = h3::ResponseReader::new()
        .push(&head)
        .expect("an HTTP/3 response")
        .expect("a whole response");
    assert_eq!(resp.status, 233, "{auth} logs in");
    conn
}

/// One proxied stream to the echo target: `BOB_BYTES` of a pattern of its own up, the same
/// bytes back. `Err` says what went wrong.
async fn echo_stream(conn: quinn::Connection, target: SocketAddr, i: usize) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open: {e}"))?;
    let data: Vec<u8> = (0..BOB_BYTES).map(|j| (i * 31 + j * 7) as u8).collect();
    let mut req = Vec::new();
    TcpRequest::encode(&target.to_string(), b"pad", &mut req).expect("valid TCPRequest");
    send.write_all(&req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let writer = async {
        send.write_all(&data)
            .await
            .map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))
    };
    let reader = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut used = None;
        loop {
            if let Some(u) = used {
                if got.len() - u >= BOB_BYTES {
                    break;
                }
            }
            match recv.read(&mut buf).await {
                Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                Ok(None) => return Err(format!("FIN after {} bytes", got.len())),
                Err(e) => return Err(format!("read: {e}")),
            }
            if used.is_none() {
                if let Ok(Some((resp, n))) = TcpResponse::parse(&got) {
                    if !resp.is_ok() {
                        return Err(format!("refused: {}", resp.message));
                    }
                    used = Some(n);
                }
            }
        }
        Ok(got[used.unwrap_or(0)..].to_vec())
    };
    let (w, r) = tokio::join!(writer, reader);
    w?;
    let back = r?;
    if back[..BOB_BYTES] != data[..] {
        return Err("echo differs".into());
    }
    Ok(())
}

#[test]
fn ten_thousand_udp_sessions_of_one_user_leave_another_users_tcp_served() {
    let udp_echo = UdpEcho::start();
    let tcp_echo = TcpEcho::start();
    let dir = tempdir();
    let (cert, key) = write_cert(&dir);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {addr}\n\
             tls: {{cert: \"{}\", key: \"{}\"}}\n\
             auth: {{type: userpass, userpass: {{alice: pa, bob: pb}}}}\n\
             outboundGuard: {{allowLoopback: true}}\n\
             metrics: {{listen: {metrics}}}\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("write server.yaml");
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg("--")
        .arg(support::quelay_bin())
        .arg("server")
        .arg("-c")
        .arg(&config)
        .env("QUELAY_LOG", "info");
    let mut server = Child::spawn("quelay-server", cmd, dir.path());
    server.wait_ready(
        &format!("metrics on {metrics}"),
        Duration::from_secs(20),
        |_| TcpStream::connect(metrics).is_ok(),
    );
    let page = scrape(metrics);
    assert_eq!(
        metric(&page, "quelay_user_udp_sessions_cap"),
        UDP_CAP as f64,
        "the default cap on a user's UDP sessions"
    );

    let rt = runtime();
    let ep = rt.block_on(async {
        let crypto = quic::client_crypto(Verify::Insecure, &[b"h3"]).expect("client TLS config");
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal"))
            .expect("client endpoint");
        ep.set_default_client_config(quic::client_config(crypto, &QuicParams::default()));
        ep
    });
    let (alice, bob) = rt.block_on(async {
        (
            login(&ep, addr, "alice:pa").await,
            login(&ep, addr, "bob:pb").await,
        )
    });

    // alice: one datagram in each of 10,000 sessions, paced so that none is lost on the way.
    let target = udp_echo.addr().to_string();
    rt.block_on(async {
        for id in 0..SESSIONS {
            let frags = fragment(id, 1, &target, b"hello", 1200).expect("a UDPMessage");
            for f in frags {
                alice
                    .send_datagram_wait(Bytes::from(f))
                    .await
                    .expect("send a datagram");
            }
            if id % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Every datagram counted by the server, then the figures.
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page = scrape(metrics);
        let seen = metric(&page, "quelay_udp_datagrams_in_total");
        if seen >= f64::from(SESSIONS) || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let datagrams_in = metric(&page, "quelay_udp_datagrams_in_total");
    let open = metric(&page, "quelay_user_udp_sessions{user=\"alice\"}");
    let hits = metric(
        &page,
        "quelay_user_udp_session_cap_hits_total{user=\"alice\"}",
    );
    let refused = metric(&page, "quelay_udp_sessions_refused_total");
    eprintln!(
        "alice: {datagrams_in} datagrams in, {open} sessions open, {hits} refused at her cap"
    );
    assert!(
        datagrams_in >= f64::from(SESSIONS) * 0.95,
        "the server saw {datagrams_in} of {SESSIONS} datagrams"
    );
    assert_eq!(open, UDP_CAP as f64, "alice's sessions stop at her cap");
    assert_eq!(
        hits,
        datagrams_in - UDP_CAP as f64,
        "every other session was refused at her cap"
    );
    assert_eq!(
        refused, hits,
        "quelay_udp_sessions_refused_total counts them"
    );
    assert!(
        udp_echo.datagrams() as u64 <= UDP_CAP,
        "refused sessions' datagrams are dropped: the target got {}",
        udp_echo.datagrams()
    );

    // bob, while alice holds her sessions: every stream relays, every byte checked.
    let target = tcp_echo.addr();
    let failures: Vec<String> = rt.block_on(async {
        let tasks: Vec<_> = (0..BOB_STREAMS)
            .map(|i| tokio::spawn(echo_stream(bob.clone(), target, i)))
            .collect();
        let mut failures = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(60), t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => failures.push(format!("stream {i}: {e}")),
                Ok(Err(e)) => failures.push(format!("stream {i}: task {e}")),
                Err(_) => failures.push(format!("stream {i}: no echo within 60 s")),
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of bob's {BOB_STREAMS} streams failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let page = scrape(metrics);
    assert_eq!(
        metric(&page, "quelay_user_socket_cap_hits_total{user=\"bob\"}"),
        0.0
    );
    assert_eq!(
        metric(&page, "quelay_user_udp_sessions{user=\"alice\"}"),
        UDP_CAP as f64,
        "alice still holds her sessions"
    );
    rt.block_on(async {
        alice.close(0u32.into(), b"done");
        bob.close(0u32.into(), b"done");
        ep.wait_idle().await;
    });
    server.assert_running();
}
