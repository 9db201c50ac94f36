//! A server given by name is looked up again for every connection: when the name moves
//! (here from 127.0.0.1 to ::1, through the client's test hosts file) and the connection it
//! had ends, the next connection goes to the new address.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use quelay::resolve::TEST_HOSTS_ENV;

use super::{fail, socks_echo, stop_and_report};
use crate::support::{
    free_port, tempdir, test_name, wait_tcp_port, ClientOpts, Hy2Server, QuelayClient,
    QuelayServer, TcpEcho,
};

/// The server's name: `.invalid` never resolves anywhere but in the hosts file.
const NAME: &str = "test.invalid";

fn have_ipv6_loopback() -> bool {
    UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// `quelay_streams_relayed_total` of the server whose metrics listen on `metrics`, summed
/// over its workers.
fn streams_relayed(metrics: SocketAddr) -> u64 {
    let Ok(mut s) = TcpStream::connect_timeout(&metrics, Duration::from_secs(5)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page.lines()
        .filter(|l| l.starts_with("quelay_streams_relayed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls until the server behind `metrics` counted a relayed stream, for up to 10 s.
fn saw_a_stream(metrics: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if streams_relayed(metrics) > 0 {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Points `NAME` at `ip` in the hosts file, replacing it whole (a lookup never reads half).
fn point_name_at(hosts: &std::path::Path, ip: &str) {
    let next = hosts.with_extension("next");
    fs::write(&next, format!("{ip} {NAME}\n")).expect("write the hosts file");
    fs::rename(&next, hosts).expect("replace the hosts file");
}

fn server_on(addr: SocketAddr, metrics: SocketAddr) -> QuelayServer {
    let server = QuelayServer::start_on(
        addr,
        &format!("metrics:\n  listen: {metrics}\nengine:\n  workers: 1\n"),
        None,
    );
    assert!(
        wait_tcp_port(metrics, Duration::from_secs(10)),
        "the metrics of the server on {addr} never listened"
    );
    server
}

#[test]
fn reresolve_follows_the_server_name_to_its_new_address_quelay() {
    if !have_ipv6_loopback() {
        eprintln!("{}: no IPv6 loopback; skipped", test_name());
        return;
    }
    let echo = TcpEcho::start();
    let port = free_port();
    let (m4, m6) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let mut v4 = server_on(SocketAddr::from(([127, 0, 0, 1], port)), m4);
    let mut v6 = server_on(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port), m6);
    let dir = tempdir();
    let hosts = dir.join("hosts");
    point_name_at(&hosts, "127.0.0.1");
    let mut client = QuelayClient::start_at(
        &format!("{NAME}:{port}"),
        &ClientOpts {
            // One worker, one connection: the one that must move.
            extra: "quic:\n  maxIdleTimeout: 4s\n  keepAlivePeriod: 2s\n\
                    engine:\n  workers: 1\n"
                .into(),
            env: vec![(
                TEST_HOSTS_ENV.to_owned(),
                hosts.to_string_lossy().into_owned(),
            )],
            ..ClientOpts::default()
        },
    );
    let proxy = client.socks_addr();
    if let Err(e) = socks_echo(proxy, echo.addr(), 1024) {
        fail(&mut v4, &mut client, format!("via 127.0.0.1: {e}"));
    }
    assert!(saw_a_stream(m4), "the server on 127.0.0.1 relayed nothing");
    assert_eq!(streams_relayed(m6), 0, "the server on ::1 relayed a stream");

    // The name moves, then the server it named goes (closing its connections).
    point_name_at(&hosts, "::1");
    let status = v4.child().stop_with(libc::SIGTERM, Duration::from_secs(15));
    assert!(
        status.success(),
        "the server on 127.0.0.1 exited with {status}"
    );
    let stopped = Instant::now();
    let mut attempts = 0;
    let mut last = String::new();
    loop {
        attempts += 1;
        match socks_echo(proxy, echo.addr(), 1024) {
            Ok(()) => break,
            Err(e) => last = e,
        }
        if stopped.elapsed() > Duration::from_secs(20) {
            fail(
                &mut v6,
                &mut client,
                format!("no echo via ::1 within 20 s ({attempts} attempts): {last}"),
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{}: echo via ::1 {:.2?} after the first server stopped ({attempts} attempts; last \
         error: {last:?})",
        test_name(),
        stopped.elapsed()
    );
    assert!(saw_a_stream(m6), "the server on ::1 relayed nothing");
    let stats = stop_and_report(&mut client);
    assert!(
        stats.get("reconnects") >= 1,
        "no reconnect counted: {}",
        stats.line
    );
}
