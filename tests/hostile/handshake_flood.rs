//! A flood of QUIC handshakes against `quelay server`, on loopback.
//!
//! A sender makes real client Initials (each a new connection: its own connection IDs and
//! TLS ClientHello) at 5,000 a second and never answers. Meanwhile an established client
//! moves data through the relay and checks every byte, and a new client connects and logs
//! in. The server must answer the flood with Retry once its handshakes in progress reach
//! `limits.maxUnvalidatedHandshakes`, so that the flood starts no more handshakes than that.

use super::support;
use super::{client_endpoint, spawn_server};
use support::{metric, scrape};

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quelay::proto::h3;
use quelay::proto::tcp::{TcpRequest, TcpResponse};
use quelay::quic::{self, QuicParams, Verify};

use support::TcpEcho;

/// Initials per second the flood sends.
const FLOOD_RATE: u64 = 5_000;
/// How long it lasts: the established client's transfers run all along.
const FLOOD_FOR: Duration = Duration::from_secs(4);
/// The server's `limits.maxUnvalidatedHandshakes` (its default).
const MAX_UNVALIDATED: u64 = 128;

/// Sends client Initials to `server` at `FLOOD_RATE` until `stop`; returns how many.
fn flood(server: SocketAddr, stop: &AtomicBool) -> u64 {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the flood socket");
    let crypto = quic::client_crypto(Verify::Insecure, &[b"h3"]).expect("client TLS config");
    let config = quic::client_config(crypto, &QuicParams::default());
    let endpoint = || {
        quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            None,
            false,
            None,
        )
    };
    let mut ep = endpoint();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut buf = Vec::with_capacity(1500);
    while !stop.load(Ordering::Relaxed) {
        // Keep to the rate: Initial number `sent` is due at sent / rate seconds.
        let due = start + Duration::from_micros(sent * 1_000_000 / FLOOD_RATE);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let now = Instant::now();
        let (_, mut conn) = ep
            .connect(now, config.clone(), server, support::SNI)
            .expect("a client connection starts");
        buf.clear();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            let _ = sock.send_to(&buf[..t.size], server);
            sent += 1;
        }
        // The connection is abandoned; a fresh endpoint now and then lets go of their state.
        if sent % 1000 == 0 {
            ep = endpoint();
        }
    }
    sent
}

/// Connects and logs in with the password; the auth response's status.
async fn login(ep: &quinn::Endpoint, server: SocketAddr) -> (quinn::Connection, u16) {
    let conn = ep
        .connect(server, support::SNI)
        .expect("connect starts")
        .await
        .expect("QUIC handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("open the auth stream");
    let padding = h3::auth_padding(&mut rand::thread_rng());
    send.write_all(&h3::auth_request_headers("pw", 0, &padding))
        .await
        .expect("write the auth request");
    send.finish().expect("finish the auth stream");
    let mut reader = h3::ResponseReader::new();
    let mut buf = [0u8; 4096];
    let status = loop {
        let n = recv
            .read(&mut buf)
            .await
            .expect("read the auth response")
            .expect("an auth response before the stream ends");
        if let Some(resp) = reader.push(&buf[..n]).expect("a well-formed auth response") {
            break resp.status;
        }
    };
    (conn, status)
}

/// Sends `len` bytes of a pattern through the relay to the echo target and checks that
/// every byte comes back in order.
async fn echo_through(conn: &quinn::Connection, target: SocketAddr, len: usize, seed: u8) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open a proxy stream");
    let mut req = Vec::new();
    TcpRequest::encode(&target.to_string(), &[b'p'; 16], &mut req).expect("valid TCPRequest");
    send.write_all(&req).await.expect("write the TCPRequest");
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let writer = {
        let data = data.clone();
        async move {
            send.write_all(&data).await.expect("write the payload");
            send.finish().expect("finish the proxy stream");
        }
    };
    let reader = async move {
        let mut got = Vec::with_capacity(len + 64);
        let mut buf = vec![0u8; 64 * 1024];
        let mut used = None;
        while let Some(n) = recv.read(&mut buf).await.expect("read the echo") {
            got.extend_from_slice(&buf[..n]);
            if used.is_none() {
                if let Some((resp, u)) = TcpResponse::parse(&got).expect("a TCPResponse") {
                    assert!(resp.is_ok(), "the relay refused the target: {resp:?}");
                    used = Some(u);
                }
            }
        }
        let used = used.expect("a TCPResponse before the stream ended");
        got.drain(..used);
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    assert_eq!(got.len(), data.len(), "echo length");
    assert!(got == data, "the echo differs from what was sent");
}

#[test]
fn a_handshake_flood_gets_retries_and_leaves_established_transfers_intact() {
    let metrics: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .expect("address");
    let (mut server, addr, _dir) = spawn_server(&format!(
        "metrics: {{listen: {metrics}}}\nengine: {{workers: 2}}\n"
    ));
    assert!(
        support::wait_tcp_port(metrics, Duration::from_secs(10)),
        "the metrics endpoint never listened"
    );
    let echo = TcpEcho::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ep = rt.block_on(async { client_endpoint() });

    let (conn, status) = rt.block_on(login(&ep, addr));
    assert_eq!(status, 233, "the established client logs in");

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(addr, &stop))
    };
    // Transfers on the established connection for the whole flood, each checked.
    let started = Instant::now();
    let mut transfers = 0u32;
    let mut late_login = None;
    rt.block_on(async {
        while started.elapsed() < FLOOD_FOR {
            echo_through(&conn, echo.addr(), 1 << 20, transfers as u8).await;
            transfers += 1;
            // Half-way, a new client connects and logs in through the flood.
            if late_login.is_none() && started.elapsed() >= FLOOD_FOR / 2 {
                let t = Instant::now();
                let login = tokio::time::timeout(Duration::from_secs(10), login(&ep, addr));
                let (late, status) = login.await.expect("a new client logs in during the flood");
                assert_eq!(status, 233, "the new client's login");
                echo_through(&late, echo.addr(), 64 << 10, 7).await;
                late_login = Some(t.elapsed());
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().expect("the flood thread");
    server.assert_running();

    // Every datagram the flood sent has been handled once the retry count stops moving.
    let mut page = scrape(metrics);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let next = scrape(metrics);
        let settled = metric(&next, "quelay_handshakes_retried_total")
            == metric(&page, "quelay_handshakes_retried_total");
        page = next;
        if settled || Instant::now() > deadline {
            break;
        }
    }
    let accepted = metric(&page, "quelay_connections_total") as u64;
    let retried = metric(&page, "quelay_handshakes_retried_total") as u64;
    eprintln!(
        "flood: {sent} Initials in {:?}; server: {accepted} handshakes started, {retried} \
         Retry answers; established client: {transfers} transfers of 1 MiB intact; new \
         client logged in after {:?}",
        FLOOD_FOR,
        late_login.expect("the new client logged in")
    );
    assert!(
        sent >= FLOOD_RATE * FLOOD_FOR.as_secs() / 2,
        "the flood sent only {sent} Initials"
    );
    assert!(
        transfers >= 2,
        "only {transfers} transfers during the flood"
    );
    // The flood's handshakes never complete: once MAX_UNVALIDATED are in progress, every
    // further Initial gets a Retry. The two real clients (one came back after a Retry)
    // account for the rest.
    assert!(
        accepted <= MAX_UNVALIDATED + 2,
        "{accepted} handshakes started for {sent} flood Initials (limit {MAX_UNVALIDATED})"
    );
    assert!(
        retried + MAX_UNVALIDATED >= sent * 9 / 10,
        "only {retried} Retry answers to {sent} flood Initials"
    );
}
