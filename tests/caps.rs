//! Stream caps and flow control end to end: `quelay client` → `quelay server` → local
//! targets, with the server's figures read from its Prometheus endpoint.
//!
//! - A per-user cap holds without failing anything: the client waits for credit, the
//!   server parks what arrives on credit granted before the cap.
//! - Many streams stuck on targets that do not read cannot starve a bulk stream on the same
//!   connection (the HTTP/2 "Cowboy" trap), and window updates stay bounded.
//! - Receive windows follow consumption: streams that stop reading widen their connection's
//!   window so the others keep moving; on a long path a window read within two RTTs doubles;
//!   all windows stay within the server's budget, and a spent budget fails nothing.

#[allow(unused_imports)]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    free_port, open_files_limit, socks5_connect, ClientOpts, Hy2Server, QuelayClient, QuelayServer,
    Socks5Udp, TcpEcho, UdpDelay, UdpEcho,
};

/// The value of the first sample of `series` (with its labels) in a metrics page.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sum of every sample of `name` (all labels).
fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The server's Prometheus page, checked to parse as Prometheus text.
fn scrape(addr: SocketAddr) -> String {
    let body = support::scrape(addr);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    body
}

fn server_with(yaml: &str) -> (QuelayServer, SocketAddr) {
    server_with_nofile(yaml, None)
}

fn server_with_nofile(yaml: &str, nofile: Option<u64>) -> (QuelayServer, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server =
        QuelayServer::start_with_nofile(&format!("{yaml}metrics:\n  listen: {metrics}\n"), nofile);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(metrics).is_err() {
        assert!(
            Instant::now() < deadline,
            "metrics endpoint {metrics} never came up"
        );
        thread::sleep(Duration::from_millis(50));
    }
    (server, metrics)
}

/// 1000 concurrent SOCKS5 streams of one user whose cap is 100, over two connections (one
/// per client worker): all succeed, and the server never relays more than 100 at once.
#[test]
fn per_user_cap_of_100_over_two_connections_fails_nothing() {
    const STREAMS: usize = 1000;
    let limit = open_files_limit().unwrap_or(0);
    assert!(
        limit >= 4 * STREAMS as u64,
        "RLIMIT_NOFILE {limit} is too low for this test"
    );
    let echo = TcpEcho::start();
    let (mut server, metrics) = server_with("limits:\n  maxStreamsPerUser: 100\n");
    let mut client = QuelayClient::start(
        server.addr(),
        &ClientOpts {
            extra: "pool:\n  maxConnections: 1\n  streamOpenTimeout: 60s\nengine:\n  workers: 2\n"
                .into(),
            ..ClientOpts::default()
        },
    );
    let proxy = client.socks_addr();
    let target = echo.addr();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (failures, done) = (failures.clone(), done.clone());
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let r = (|| -> std::io::Result<()> {
                        let mut s = socks5_connect(proxy, "127.0.0.1", target.port())?;
                        s.set_read_timeout(Some(Duration::from_secs(60)))?;
                        let msg: Vec<u8> = (0..1024).map(|j| (i * 7 + j) as u8).collect();
                        s.write_all(&msg)?;
                        let mut back = vec![0; msg.len()];
                        s.read_exact(&mut back)?;
                        if back != msg {
                            return Err(std::io::Error::other("echo mismatch"));
                        }
                        // Hold the stream so that demand stays well above the cap.
                        thread::sleep(Duration::from_millis(100));
                        Ok(())
                    })();
                    match r {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(format!("stream {i}: {e}")),
                    }
                })
                .expect("spawn")
        })
        .collect();
    for t in threads {
        t.join().expect("stream thread");
    }
    let elapsed = started.elapsed();
    // The clients are done; the server sees the last closes a moment later. A permit still
    // held once it had 10 s to see them is a leak.
    let quiet_by = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = scrape(metrics);
        let open = metric(&page, "quelay_user_streams_open{user=\"user\"}").expect("user open");
        if open == 0.0 || Instant::now() > quiet_by {
            break page;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let peak = metric(&page, "quelay_user_streams_peak{user=\"user\"}").expect("user peak");
    let open = metric(&page, "quelay_user_streams_open{user=\"user\"}").expect("user open");
    let hits = metric(&page, "quelay_user_stream_cap_hits_total{user=\"user\"}").unwrap_or(0.0);
    let withheld = metric_sum(&page, "quelay_credit_withheld_total");
    let stats = client.stop_stats();
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "{STREAMS} streams in {elapsed:.2?}: {} ok, {} failed; server: peak {peak} relayed at \
         once, {hits} cap hits, credit withheld {withheld} times; client: {} connections, \
         wait p50 {} ms, max {} ms",
        done.load(Ordering::Relaxed),
        failures.len(),
        stats.get("peak_connections"),
        stats.get("wait_p50_ms"),
        stats.get("wait_max_ms"),
    );
    server.child().assert_running();
    assert!(
        failures.is_empty(),
        "failures: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert_eq!(done.load(Ordering::Relaxed), STREAMS);
    assert!(
        peak <= 100.0,
        "the server relayed {peak} streams of the user at once"
    );
    assert!(
        peak >= 50.0,
        "the cap was never approached (peak {peak}): the test is too light"
    );
    assert!(hits > 0.0, "the cap was never hit");
    assert_eq!(
        open, 0.0,
        "permits still held 10 s after every stream closed"
    );
    assert_eq!(
        stats.get("peak_connections"),
        2,
        "two connections of the same user"
    );
}

/// `quelay client` with one worker holding one connection to `server`: every stream shares
/// that connection's windows.
fn one_connection_client(server: SocketAddr) -> QuelayClient {
    QuelayClient::start(
        server,
        &ClientOpts {
            extra: "pool:\n  maxConnections: 1\nengine:\n  workers: 1\n".into(),
            ..ClientOpts::default()
        },
    )
}

/// DATA_BLOCKED frames the server received, read once every connection has closed (a
/// connection's count is added when it goes), waiting up to 10 s for that.
fn data_blocked_when_quiet(metrics: SocketAddr) -> f64 {
    let quiet_by = Instant::now() + Duration::from_secs(10);
    loop {
        let page = scrape(metrics);
        let live = metric_sum(&page, "quelay_connections");
        if live == 0.0 {
            return metric_sum(&page, "quelay_data_blocked_received_total");
        }
        assert!(
            Instant::now() < quiet_by,
            "{live} connections still open 10 s after their clients stopped"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP server that accepts and reads nothing for `stall`, then drains.
fn stalled_target(stall: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut s = s;
                    thread::sleep(stall);
                    let _ = std::io::copy(&mut s, &mut std::io::sink());
                })
                .ok();
        }
    });
    addr
}

/// A TCP server that reads everything (the bulk stream's sink).
fn sink_target() -> SocketAddr {
    stalled_target(Duration::ZERO)
}

/// Uploads `bytes` through the SOCKS5 proxy to `target`; returns the time it took.
fn upload(proxy: SocketAddr, target: SocketAddr, bytes: usize) -> Duration {
    let mut s = socks5_connect(proxy, "127.0.0.1", target.port()).expect("bulk CONNECT");
    let chunk = vec![0x5a; 256 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&chunk).expect("bulk write");
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    t.elapsed()
}

/// The Cowboy scenario: 2000 streams each send 1 KiB to targets that read nothing for 5 s,
/// while one bulk stream on the same connection uploads 256 MiB. The bulk stream keeps at
/// least half its throughput alone, and window updates stay within one per 64 KiB relayed
/// plus two per stream.
#[test]
fn stalled_streams_do_not_starve_a_bulk_stream() {
    const STALLED: usize = 2000;
    const BULK: usize = 256 << 20;
    let (mut server, metrics) = server_with("quic:\n  maxIncomingStreams: 4096\n");
    let sink = sink_target();
    // Each phase has a client (and a connection) of its own, so that its DATA_BLOCKED count
    // is final once its connection has closed.
    let mut client = one_connection_client(server.addr());
    let alone = upload(client.socks_addr(), sink, BULK);
    client.stop();
    let blocked_alone = data_blocked_when_quiet(metrics);
    let before = metric_sum(&scrape(metrics), "quelay_window_updates_total");
    let mut client = one_connection_client(server.addr());
    let proxy = client.socks_addr();

    let stalled = stalled_target(Duration::from_secs(5));
    let opened = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..STALLED)
        .map(|_| {
            let opened = opened.clone();
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    if let Ok(mut s) = socks5_connect(proxy, "127.0.0.1", stalled.port()) {
                        if s.write_all(&[0x11; 1024]).is_ok() {
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                        thread::sleep(Duration::from_secs(6));
                    }
                })
                .expect("spawn")
        })
        .collect();
    // The bulk upload runs while the stalled streams hold their bytes.
    let wait = Instant::now() + Duration::from_secs(20);
    while opened.load(Ordering::Relaxed) < STALLED && Instant::now() < wait {
        thread::sleep(Duration::from_millis(20));
    }
    let with = upload(proxy, sink, BULK);
    for t in threads {
        t.join().unwrap();
    }
    client.stop();
    // The stalled streams' own phase included.
    let blocked_with = data_blocked_when_quiet(metrics) - blocked_alone;
    let after = metric_sum(&scrape(metrics), "quelay_window_updates_total");
    let updates = after - before;
    let bound = (BULK / (64 << 10) + 2 * STALLED) as f64;
    let ratio = alone.as_secs_f64() / with.as_secs_f64();
    eprintln!(
        "bulk 256 MiB alone {alone:.2?} ({:.0} MiB/s), beside {} stalled streams {with:.2?} \
         ({:.0} MiB/s): {ratio:.2}x; the client waited on connection credit {blocked_alone} \
         times alone, {blocked_with} times beside them; window updates sent {updates} (bound \
         {bound})",
        256.0 / alone.as_secs_f64(),
        opened.load(Ordering::Relaxed),
        256.0 / with.as_secs_f64()
    );
    server.child().assert_running();
    assert_eq!(
        opened.load(Ordering::Relaxed),
        STALLED,
        "stalled streams opened"
    );
    // What the relay controls (the throughput ratio depends on the machine's load, and goes
    // to the benchmark): the stalled streams never make the sender wait on connection credit
    // more than it did alone.
    assert!(
        blocked_with <= blocked_alone,
        "beside the stalled streams the client waited on connection credit {blocked_with} \
         times, alone {blocked_alone}"
    );
    assert!(
        updates <= bound,
        "{updates} window updates, more than {bound}"
    );
}

/// The measure the test above relies on: a client held to a small connection window waits
/// on connection credit, and the server counts its DATA_BLOCKED frames.
#[test]
fn a_client_waiting_on_connection_credit_is_counted() {
    let (mut server, metrics) =
        server_with("quic:\n  initConnReceiveWindow: 65536\n  maxConnReceiveWindow: 65536\n");
    let mut client = one_connection_client(server.addr());
    upload(client.socks_addr(), sink_target(), 16 << 20);
    client.stop();
    let blocked = data_blocked_when_quiet(metrics);
    server.child().assert_running();
    assert!(
        blocked > 0.0,
        "no DATA_BLOCKED counted behind a 64 KiB window"
    );
}

/// A TCP server that reads 1 KiB, answers it and closes first (request/response targets).
fn answer_and_close_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 1024];
                if s.read_exact(&mut buf).is_ok() {
                    let _ = s.write_all(&buf);
                }
            });
        }
    });
    addr
}

/// Streams whose target closes first (so the server stops reading before the client has
/// finished) still give their credit back: 200 in a row on one connection whose server
/// grants 16 at a time.
#[test]
fn credit_returns_when_the_target_closes_first() {
    let target = answer_and_close_target();
    let (mut server, _metrics) = server_with("quic:\n  maxIncomingStreams: 16\n");
    let mut client = QuelayClient::start(
        server.addr(),
        &ClientOpts {
            extra: "pool:\n  maxConnections: 1\n  streamOpenTimeout: 5s\nengine:\n  workers: 1\n"
                .into(),
            ..ClientOpts::default()
        },
    );
    let proxy = client.socks_addr();
    for i in 0..200 {
        let mut s = socks5_connect(proxy, "127.0.0.1", target.port())
            .unwrap_or_else(|e| panic!("stream {i}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&[i as u8; 1024]).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert_eq!(back, vec![i as u8; 1024], "stream {i}");
    }
    let stats = client.stop_stats();
    server.child().assert_running();
    assert_eq!(
        stats.get("peak_connections"),
        1,
        "one connection carried every stream"
    );
    assert_eq!(stats.get("refused"), 0);
}

/// Waits until `ok` holds for the server's metrics page; panics with `what` and the last
/// page after `timeout`.
fn wait_metrics(
    metrics: SocketAddr,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let page = scrape(metrics);
        if ok(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}; last metrics:\n{}",
            page.lines()
                .filter(|l| l.starts_with("quelay_receive_window")
                    || l.starts_with("quelay_streams_stalled"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Starts an upload of `bytes` through `proxy` to `target` on a thread of its own; the
/// thread returns whether every byte was accepted (a write that blocks past `timeout`
/// fails it).
fn upload_in_background(
    proxy: SocketAddr,
    target: SocketAddr,
    bytes: usize,
    timeout: Duration,
) -> thread::JoinHandle<Result<Duration, String>> {
    thread::spawn(move || {
        let mut s = socks5_connect(proxy, "127.0.0.1", target.port())
            .map_err(|e| format!("CONNECT: {e}"))?;
        s.set_write_timeout(Some(timeout)).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        let chunk = vec![0x3c; 64 * 1024];
        let t = Instant::now();
        let mut sent = 0;
        while sent < bytes {
            s.write_all(&chunk)
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            sent += chunk.len();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        Ok(t.elapsed())
    })
}

/// Streams whose targets read nothing fill their relay buffers and pin a stream window of
/// connection credit each. With four of them at 1 MiB stream windows, a connection window
/// fixed at 2 MiB (initial = maximum, as the official defaults have it) would leave nothing
/// for a fifth stream until the targets read (60 s). The window widens by a stream window
/// per stalled stream, so the fifth uploads 32 MiB while they stay stuck; everything is
/// given back once the client leaves.
#[test]
fn stalled_streams_widen_the_connection_window() {
    const STALLED: usize = 4;
    let (mut server, metrics) = server_with(
        "quic:\n  initStreamReceiveWindow: 1048576\n  maxStreamReceiveWindow: 1048576\n  \
         initConnReceiveWindow: 2097152\n  maxConnReceiveWindow: 2097152\n",
    );
    let mut client = one_connection_client(server.addr());
    let proxy = client.socks_addr();
    let stuck = stalled_target(Duration::from_secs(60));
    // Each stuck upload is larger than what the TCP socket buffers on both ends absorb.
    let _stuck: Vec<_> = (0..STALLED)
        .map(|_| upload_in_background(proxy, stuck, 64 << 20, Duration::from_secs(90)))
        .collect();
    let page = wait_metrics(
        metrics,
        Duration::from_secs(30),
        "four streams stalled",
        |p| metric_sum(p, "quelay_streams_stalled") >= STALLED as f64,
    );
    let widened = metric_sum(&page, "quelay_receive_window_bytes");
    let bulk = upload_in_background(proxy, sink_target(), 32 << 20, Duration::from_secs(20))
        .join()
        .unwrap();
    let still = metric_sum(&scrape(metrics), "quelay_streams_stalled");
    eprintln!(
        "{STALLED} stalled streams: connection window {widened} bytes; bulk 32 MiB beside \
         them: {bulk:?}; stalled after: {still}"
    );
    assert!(
        widened >= (2 + STALLED) as f64 * 1048576.0,
        "window {widened} did not widen by a stream window per stalled stream"
    );
    let took = bulk.expect("the bulk stream moved while the others were stuck");
    assert!(still >= STALLED as f64, "the stuck streams drained early");
    assert!(took < Duration::from_secs(20));
    client.stop();
    let page = wait_metrics(
        metrics,
        Duration::from_secs(10),
        "windows returned to the budget once the client left",
        |p| {
            metric(p, "quelay_receive_window_reserved_bytes") == Some(0.0)
                && metric_sum(p, "quelay_streams_stalled") == 0.0
        },
    );
    assert_eq!(metric_sum(&page, "quelay_receive_window_bytes"), 0.0);
    server.child().assert_running();
}

/// On a path with 30 ms of round trip, a connection that starts at a 256 KiB window reads
/// it within two RTTs, so auto-tuning doubles it (at least twice) while a 24 MiB upload
/// runs; the reservation never passes the budget.
#[test]
fn windows_grow_on_a_long_path() {
    let (mut server, metrics) = server_with(
        "quic:\n  initConnReceiveWindow: 262144\n  maxConnReceiveWindow: 16777216\n\
         limits:\n  receiveWindowBudget: 64MiB\n",
    );
    let path = UdpDelay::start(server.addr(), Duration::from_millis(15));
    let mut client = one_connection_client(path.addr());
    let took = upload_in_background(
        client.socks_addr(),
        sink_target(),
        24 << 20,
        Duration::from_secs(60),
    )
    .join()
    .unwrap()
    .expect("upload over the long path");
    let page = scrape(metrics);
    let doublings = metric_sum(&page, "quelay_receive_window_doublings_total");
    let peak = metric(&page, "quelay_receive_window_reserved_peak_bytes").unwrap_or(0.0);
    eprintln!("24 MiB over 30 ms RTT in {took:?}: {doublings} doublings, reserved peak {peak}");
    client.stop();
    assert!(doublings >= 2.0, "the window doubled {doublings} times");
    assert!(peak >= 1048576.0, "reserved peak {peak}");
    assert!(
        peak <= 64.0 * 1048576.0,
        "reserved peak {peak} past the budget"
    );
    server.child().assert_running();
}

/// A budget of 1 MiB for two connections that each start at 768 KiB: the second gets what
/// is left, growth is refused and counted, the reservation stays within the budget (plus
/// the floor a connection always gets), and both uploads finish.
#[test]
fn a_spent_window_budget_slows_connections_but_fails_none() {
    const BUDGET: f64 = 1048576.0;
    const FLOOR: f64 = 65536.0;
    let (mut server, metrics) = server_with(
        "quic:\n  initConnReceiveWindow: 786432\n  maxConnReceiveWindow: 16777216\n\
         limits:\n  receiveWindowBudget: 1MiB\n",
    );
    let path = UdpDelay::start(server.addr(), Duration::from_millis(5));
    let mut clients = [
        one_connection_client(path.addr()),
        one_connection_client(path.addr()),
    ];
    let sink = sink_target();
    let uploads: Vec<_> = clients
        .iter()
        .map(|c| upload_in_background(c.socks_addr(), sink, 16 << 20, Duration::from_secs(60)))
        .collect();
    for (i, u) in uploads.into_iter().enumerate() {
        let took = u
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("upload {i}: {e}"));
        eprintln!("upload {i}: 16 MiB in {took:?}");
    }
    let page = scrape(metrics);
    let peak = metric(&page, "quelay_receive_window_reserved_peak_bytes").unwrap_or(0.0);
    let short = metric_sum(&page, "quelay_receive_window_budget_short_total");
    let connections = metric_sum(&page, "quelay_connections_total");
    eprintln!("budget {BUDGET}: reserved peak {peak}, short {short}, connections {connections}");
    for c in &mut clients {
        c.stop();
    }
    assert_eq!(connections, 2.0);
    assert!(short >= 1.0, "no shortage counted");
    assert!(
        peak <= BUDGET + 2.0 * FLOOR,
        "reserved peak {peak} past the budget and floors"
    );
    server.child().assert_running();
}

/// UDP sessions and relayed streams share the outbound-socket budget (RLIMIT_NOFILE less
/// 256). At 8 sockets, 12 UDP associations get 8 sessions; the other 4 are refused and
/// counted (UDP has no backpressure: their datagrams are dropped). A TCP stream that asks
/// meanwhile is parked, not failed, and completes once the sessions idle out.
#[test]
fn udp_sessions_and_streams_share_the_socket_budget() {
    const SOCKETS: usize = 8;
    const ASSOCIATIONS: usize = 12;
    let udp_echo = UdpEcho::start();
    let tcp_echo = TcpEcho::start();
    let (mut server, metrics) =
        server_with_nofile("udpIdleTimeout: 2s\n", Some(256 + SOCKETS as u64));
    let mut client = QuelayClient::start(
        server.addr(),
        &ClientOpts {
            extra: "engine:\n  workers: 1\n".into(),
            ..ClientOpts::default()
        },
    );
    let proxy = client.socks_addr();
    let assocs: Vec<_> = (0..ASSOCIATIONS)
        .map(|_| Socks5Udp::associate(proxy).expect("UDP ASSOCIATE"))
        .collect();
    for a in &assocs {
        a.send_to(udp_echo.addr(), b"ping").expect("send");
    }
    let page = wait_metrics(
        metrics,
        Duration::from_secs(5),
        "sessions opened up to the budget",
        |p| metric_sum(p, "quelay_udp_sessions_refused_total") >= (ASSOCIATIONS - SOCKETS) as f64,
    );
    assert_eq!(metric(&page, "quelay_sockets_budget"), Some(SOCKETS as f64));
    assert_eq!(metric(&page, "quelay_sockets_held"), Some(SOCKETS as f64));
    // A stream now needs a ninth socket: it waits.
    let tcp_target = tcp_echo.addr();
    let stream = thread::spawn(move || -> std::io::Result<Duration> {
        let t = Instant::now();
        let mut s = socks5_connect(proxy, "127.0.0.1", tcp_target.port())?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(b"hello")?;
        let mut back = [0u8; 5];
        s.read_exact(&mut back)?;
        assert_eq!(&back, b"hello");
        Ok(t.elapsed())
    });
    wait_metrics(
        metrics,
        Duration::from_secs(2),
        "the stream parked at the socket budget",
        |p| metric_sum(p, "quelay_streams_parked") == 1.0,
    );
    let answered = assocs
        .iter()
        .filter(|a| a.recv_from(Duration::from_millis(300)).is_ok())
        .count();
    let waited = stream
        .join()
        .unwrap()
        .expect("the parked stream completes once sockets come back");
    let page = scrape(metrics);
    eprintln!(
        "{answered} of {ASSOCIATIONS} associations answered; the stream waited {waited:?}; \
         budget hits {}",
        metric(&page, "quelay_sockets_budget_hits_total").unwrap_or(-1.0)
    );
    assert_eq!(answered, SOCKETS, "sessions within the budget are relayed");
    assert!(metric(&page, "quelay_sockets_budget_hits_total").unwrap_or(0.0) >= 5.0);
    drop(assocs);
    client.stop();
    wait_metrics(
        metrics,
        Duration::from_secs(10),
        "every socket returned",
        |p| metric(p, "quelay_sockets_held") == Some(0.0),
    );
    server.child().assert_running();
}

/// A loopback listener whose accept queue is full, so new connections to it get no SYN-ACK
/// and hang: a target that never answers, without leaving 127.0.0.1. Returns the address
/// and what must stay alive (the listener and the queued connections).
fn unanswering_target() -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    l.listen(0).expect("listen");
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        queued.push(s);
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    (addr, l, queued)
}

/// A stream whose target never answers the TCP handshake fails after the server's connect
/// timeout (10 s) with an error to the client, not a hang, and its permit and socket come
/// back.
#[test]
fn a_target_that_never_answers_times_out_and_returns_its_permit() {
    let (target, _listener, _queued) = unanswering_target();
    let (mut server, metrics) = server_with("");
    let mut client = QuelayClient::start(server.addr(), &ClientOpts::default());
    let t = Instant::now();
    let mut s = support::socks5_greet(client.socks_addr()).expect("SOCKS5 greeting");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (rep, _) = support::socks5_request(&mut s, 1, "127.0.0.1", target.port())
        .expect("a SOCKS5 reply, not a hang");
    let took = t.elapsed();
    eprintln!("reply {rep} after {took:?}");
    assert_ne!(rep, 0, "CONNECT to a target that never answers succeeded");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "the connect timeout fired after {took:?}"
    );
    wait_metrics(
        metrics,
        Duration::from_secs(5),
        "the permit and the socket returned",
        |p| {
            metric(p, "quelay_streams_held") == Some(0.0)
                && metric(p, "quelay_sockets_held") == Some(0.0)
        },
    );
    client.stop();
    server.child().assert_running();
}
