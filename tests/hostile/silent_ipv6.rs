//! Targets whose IPv6 address never answers, as on a host with a broken IPv6 route: the
//! name has two addresses, `[::1]:P`, a listener whose accept queue is full (the kernel
//! drops the SYNs, so a connect hangs), and an IPv4 one on the same port.
//!
//! - Requests abandoned while the server is still connecting: every socket the server
//!   opened for them is closed, and no other address is tried for a request nobody waits
//!   for (`127.0.0.1:P` refuses; the outbound prefers IPv6).
//! - Mode `auto` connects to both families at once, as the reference does: the IPv4 echo
//!   at `127.0.0.1:P` answers at once, long before the 10 s connect timeout.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use quelay::proto::tcp::{TcpRequest, TcpResponse};

use super::support::{self, Hy2Server, QuelayServer};
use super::{client_endpoint, connect, runtime, send_auth, syn_sent_to, Silent};

/// A server whose resolver answers `name` with `::1` first, then `127.0.0.1`, and whose
/// only outbound is `direct` in `mode`, on one worker.
fn server_for(name: &str, mode: &str, io: &str) -> (QuelayServer, support::TempDir) {
    let dir = support::tempdir();
    let hosts = dir.join("hosts");
    fs::write(&hosts, format!("::1 {name}\n127.0.0.1 {name}\n")).expect("write the hosts file");
    let server = QuelayServer::start_with_hosts(
        &format!(
            "outbounds:\n  - {{name: out, type: direct, direct: {{mode: {mode}}}}}\n\
             engine: {{workers: 1, io: {io}}}\n"
        ),
        &hosts,
    );
    (server, dir)
}

/// The descriptors `pid` holds that are sockets.
fn sockets_of(pid: u32) -> usize {
    let dir = format!("/proc/{pid}/fd");
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn requests_abandoned_while_connecting_leave_no_socket_and_try_no_other_address() {
    for io in ["uring", "epoll"] {
        abandon_while_connecting(io);
    }
}

fn abandon_while_connecting(io: &str) {
    const STREAMS: usize = 40;
    let silent = Silent::start("[::1]:0");
    let port = silent.addr.port();
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1)
        )
        .is_err(),
        "127.0.0.1:{port} should refuse (something listens there)"
    );
    let (mut server, _dir) = server_for("hang.test", "64", io);
    let pid = server.child().id();
    let syn_before = syn_sent_to(6, port);

    let rt = runtime();
    let ep = rt.block_on(async { client_endpoint() });
    let (baseline, pending) = rt.block_on(async {
        let conn = connect(&ep, server.addr()).await;
        let mut auth = send_auth(&conn, support::PASSWORD).await;
        auth.read_to_end(64 * 1024).await.expect("the auth answer");
        let baseline = sockets_of(pid);
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            let (mut send, recv) = conn.open_bi().await.expect("open a stream");
            let mut req = Vec::new();
            TcpRequest::encode(&format!("hang.test:{port}"), &[b'p'; 16], &mut req)
                .expect("valid TCPRequest");
            send.write_all(&req).await.expect("write the request");
            streams.push((send, recv));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pending = 0;
        while Instant::now() < deadline {
            pending = syn_sent_to(6, port).saturating_sub(syn_before);
            if pending >= STREAMS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The client leaves: the server aborts every relay while its connect hangs.
        conn.close(0u32.into(), b"bye");
        drop(streams);
        (baseline, pending)
    });
    rt.block_on(async { ep.wait_idle().await });
    assert_eq!(
        pending, STREAMS,
        "({io}) every request's connect to [::1]:{port} should be pending before the client leaves"
    );

    // Within a few seconds (far less than the 10 s connect timeout) the server holds no
    // more sockets than before the requests.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut held = sockets_of(pid);
    while held > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        held = sockets_of(pid);
    }
    server.child().assert_running();
    let syn_after = syn_sent_to(6, port).saturating_sub(syn_before);
    drop(silent);
    assert_eq!(syn_after, 0, "connects to [::1]:{port} still pending");
    assert!(
        held <= baseline,
        "({io}) the server holds {held} sockets, {baseline} before the abandoned requests: {} leaked \
         (a connect to the target's other address, started after the abort, never closed)",
        held - baseline
    );
}

#[test]
fn mode_auto_connects_both_families_at_once_and_takes_the_first_that_answers() {
    for io in ["uring", "epoll"] {
        race_both_families(io);
    }
}

fn race_both_families(io: &str) {
    let silent = Silent::start("[::1]:0");
    let port = silent.addr.port();
    let echo = std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("bind the IPv4 echo on 127.0.0.1:{port}: {e}"));
    std::thread::spawn(move || {
        for s in echo.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().expect("clone the stream");
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    let (server, _dir) = server_for("dual.test", "auto", io);
    let syn_before = syn_sent_to(6, port);

    let rt = runtime();
    let ep = rt.block_on(async { client_endpoint() });
    let took = rt.block_on(async {
        let conn = connect(&ep, server.addr()).await;
        let mut auth = send_auth(&conn, support::PASSWORD).await;
        auth.read_to_end(64 * 1024).await.expect("the auth answer");
        let mut took = Vec::new();
        for round in 0..3 {
            let start = Instant::now();
            let (mut send, mut recv) = conn.open_bi().await.expect("open a stream");
            let mut req = Vec::new();
            TcpRequest::encode(&format!("dual.test:{port}"), &[b'p'; 16], &mut req)
                .expect("valid TCPRequest");
            req.extend_from_slice(b"ping");
            send.write_all(&req).await.expect("write the request");
            let read = async {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    if let Ok(Some((resp, used))) = TcpResponse::parse(&got) {
                        assert!(resp.is_ok(), "round {round}: refused: {}", resp.message);
                        if got.len() - used >= 4 {
                            return got[used..used + 4].to_vec();
                        }
                    }
                    match recv.read(&mut buf).await {
                        Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                        other => panic!("round {round}: the stream ended: {other:?}"),
                    }
                }
            };
            let echoed = tokio::time::timeout(Duration::from_secs(15), read)
                .await
                .unwrap_or_else(|_| panic!("round {round}: no answer within 15 s"));
            assert_eq!(echoed, b"ping", "round {round}: the echo");
            took.push(start.elapsed());
            let _ = send.finish();
        }
        conn.close(0u32.into(), b"done");
        took
    });
    rt.block_on(async { ep.wait_idle().await });
    // The losing connects were closed when IPv4 answered.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut losers = syn_sent_to(6, port).saturating_sub(syn_before);
    while losers > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        losers = syn_sent_to(6, port).saturating_sub(syn_before);
    }
    drop(silent);
    assert_eq!(
        losers, 0,
        "connects to [::1]:{port} still pending after IPv4 won"
    );
    // Tried in turn, the silent IPv6 address would hold each request for the whole 10 s
    // connect timeout (and then fail it).
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(3)),
        "({io}) each request should be answered over IPv4 at once, took {took:?}"
    );
}
