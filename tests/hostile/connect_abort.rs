//! A client that gives up on its requests while the server is still connecting to their
//! targets: every socket the server opened for them is closed, and no other address of the
//! target is tried for a request nobody waits for.
//!
//! The target's name has two addresses (the outbound prefers IPv6): `[::1]:P`, a listener
//! whose accept queue is full, so the kernel drops the SYNs and the connect hangs, and
//! `127.0.0.1:P`, where nothing listens. The client opens its streams, waits until the
//! server's SYNs to `[::1]:P` are pending, and closes its connection.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use quelay::proto::tcp::TcpRequest;

use super::support::{self, Hy2Server, QuelayServer};
use super::{client_endpoint, connect, runtime, send_auth};

/// Sockets of this host in SYN_SENT towards `[::1]:port`, from /proc/net/tcp6.
fn syn_sent_to_v6(port: u16) -> usize {
    let table = fs::read_to_string("/proc/net/tcp6").expect("read /proc/net/tcp6");
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
    const STREAMS: usize = 40;
    // [::1]:P hangs: its accept queue is full, so its SYNs are dropped.
    let silent = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
        .expect("a TCP socket");
    silent.set_only_v6(true).expect("IPV6_V6ONLY");
    silent
        .bind(&"[::1]:0".parse::<SocketAddr>().expect("literal").into())
        .expect("bind the silent target on ::1 (does this host have IPv6 loopback?)");
    silent.listen(0).expect("listen");
    let target = silent
        .local_addr()
        .expect("its address")
        .as_socket()
        .expect("an IP address");
    let port = target.port();
    let fillers: Vec<TcpStream> = (0..4)
        .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_millis(200)).ok())
        .collect();
    assert!(
        !fillers.is_empty(),
        "could not fill the silent target's accept queue"
    );
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1)
        )
        .is_err(),
        "127.0.0.1:{port} should refuse (something listens there)"
    );

    let dir = support::tempdir();
    let hosts = dir.join("hosts");
    fs::write(&hosts, "::1 hang.test\n127.0.0.1 hang.test\n").expect("write the hosts file");
    let mut server = QuelayServer::start_with_hosts(
        "outbounds:\n  - {name: v6first, type: direct, direct: {mode: 64}}\n\
         engine: {workers: 1}\n",
        &hosts,
    );
    let pid = server.child().id();
    let syn_before = syn_sent_to_v6(port);

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
            pending = syn_sent_to_v6(port).saturating_sub(syn_before);
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
        "every request's connect to [::1]:{port} should be pending before the client leaves"
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
    let syn_after = syn_sent_to_v6(port).saturating_sub(syn_before);
    drop(fillers);
    assert_eq!(syn_after, 0, "connects to [::1]:{port} still pending");
    assert!(
        held <= baseline,
        "the server holds {held} sockets, {baseline} before the abandoned requests: {} leaked \
         (a connect to the target's other address, started after the abort, never closed)",
        held - baseline
    );
}
