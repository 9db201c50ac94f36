//! `quelay client` end to end on loopback: the test talks SOCKS5, HTTP-proxy or plain TCP/UDP
//! to the client, which carries the traffic over Hysteria2 to a server, which reaches local
//! HTTP, TCP-echo and UDP-echo targets.
//!
//! Scenarios marked so run against both `quelay server` (`_quelay`) and the sing-box 1.14.4
//! server (`_singbox`, the reference), so a failure on one side only points at the pair, not
//! at the harness. The others exercise the client's pool, its reconnects and its handling of
//! bad local input, against `quelay server`. Run with `--nocapture` for timings and the
//! client's `pool stats:` lines.

#[macro_use]
mod support;

#[path = "hy2_client/keepalive.rs"]
mod keepalive;
#[path = "hy2_client/reresolve.rs"]
mod reresolve;

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

use support::{
    basic_auth, check_upload, http_connect, http_get, http_post, mib_per_s, open_files_limit,
    pattern_byte, random_bytes, read_head, read_head_unbuffered, reply_text, sha256_hex,
    socks5_connect, socks5_greet, socks5_greet_auth, socks5_request, test_name, ClientOpts, Head,
    HttpTarget, Hy2Server, PoolStats, ProxyOpts, QuelayClient, QuelayServer, ServerOpts,
    SingboxServer, Socks5Udp, TcpEcho, UdpEcho, CMD_BIND, CMD_CONNECT, MIB, PASSWORD, SNI,
};

/// Bytes moved each way by the SOCKS5 bulk scenarios.
const BULK: usize = 64 * MIB;
/// Bytes downloaded through the HTTP proxy.
const HTTP_BULK: usize = 16 * MIB;
const OBFS_PASSWORD: &str = "obfspass";
/// Read and write timeout of the raw sockets the tests drive by hand.
const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails the test with `what`, first making sure both peers still run: a peer that died
/// explains everything after it, so that is the report.
fn fail<S: Hy2Server>(server: &mut S, client: &mut QuelayClient, what: String) -> ! {
    client.child().assert_running();
    server.child().assert_running();
    panic!("{what}");
}

/// Stops the client (SIGTERM, exit status 0) and prints its `pool stats:` line.
fn stop_and_report(client: &mut QuelayClient) -> PoolStats {
    let stats = client.stop_stats();
    eprintln!("{}: {}", test_name(), stats.line.trim());
    stats
}

/// Hex SHA-256 of the first `len` bytes of the HTTP target's download pattern.
fn pattern_sha256(len: usize) -> String {
    static CACHE: OnceLock<Mutex<BTreeMap<usize, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(h) = cache.lock().unwrap().get(&len) {
        return h.clone();
    }
    let data: Vec<u8> = (0..len as u64).map(pattern_byte).collect();
    let h = sha256_hex(&data);
    cache.lock().unwrap().insert(len, h.clone());
    h
}

/// A downloaded body is `len` bytes of the pattern, checked by SHA-256 (and located on a
/// mismatch).
fn check_pattern(status: u16, body: &[u8], len: usize) -> Result<(), String> {
    if status != 200 {
        return Err(format!("status {status}"));
    }
    if body.len() != len {
        return Err(format!("{} bytes instead of {len}", body.len()));
    }
    if sha256_hex(body) != pattern_sha256(len) {
        let i = support::pattern_mismatch(0, body).unwrap_or(0);
        return Err(format!(
            "SHA-256 differs: byte {i} is {:#04x}, expected {:#04x}",
            body[i],
            pattern_byte(i as u64)
        ));
    }
    Ok(())
}

/// GETs `/bytes/len` from `target` on `s` (origin-form, or `http://...` absolute-form when
/// `absolute`) and checks the body.
fn download(
    s: &mut TcpStream,
    target: SocketAddr,
    len: usize,
    absolute: bool,
) -> Result<(), String> {
    let path = if absolute {
        format!("http://{target}/bytes/{len}")
    } else {
        format!("/bytes/{len}")
    };
    let (status, body) =
        http_get(s, &target.to_string(), &path).map_err(|e| format!("GET {path}: {e}"))?;
    check_pattern(status, &body, len).map_err(|e| format!("GET {path}: {e}"))
}

/// Sends `data` on `s` from a second thread while reading the echo here.
fn echo_check(s: &mut TcpStream, data: &[u8]) -> Result<(), String> {
    let mut w = s.try_clone().map_err(|e| format!("clone: {e}"))?;
    thread::scope(|scope| {
        let writer = scope.spawn(move || w.write_all(data));
        let mut back = vec![0; data.len()];
        let read = s.read_exact(&mut back);
        let written = writer.join().expect("writer thread");
        written.map_err(|e| format!("write {} bytes: {e}", data.len()))?;
        read.map_err(|e| format!("read {} bytes back: {e}", data.len()))?;
        match back.iter().zip(data).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(i) => Err(format!("echo differs from byte {i} of {}", data.len())),
        }
    })
}

/// One SOCKS5 CONNECT to the echo at `echo`, echoing `len` random bytes.
fn socks_echo(proxy: SocketAddr, echo: SocketAddr, len: usize) -> Result<(), String> {
    let mut s = socks5_connect(proxy, "127.0.0.1", echo.port())
        .map_err(|e| format!("SOCKS5 CONNECT: {e}"))?;
    echo_check(&mut s, &random_bytes(len))
}

/// UDP payload sizes: small ones and ones that Hysteria2 fragments (a QUIC DATAGRAM carries
/// about 1200 bytes).
const UDP_SIZES: [usize; 5] = [1, 100, 1200, 3000, 4000];
/// Sends per payload before giving up: UDP may drop.
const UDP_TRIES: usize = 5;
const UDP_WAIT: Duration = Duration::from_secs(2);

/// Sends each of `UDP_SIZES` with `send` until `recv` returns it intact (late echoes of
/// earlier payloads are skipped). Returns `size:tries` for each.
fn echo_datagrams(
    send: impl Fn(&[u8]) -> io::Result<()>,
    recv: impl Fn(Duration) -> io::Result<Vec<u8>>,
) -> Result<String, String> {
    let mut report = Vec::new();
    for size in UDP_SIZES {
        let payload = random_bytes(size);
        let mut tries = 0;
        let mut echoed = false;
        while tries < UDP_TRIES && !echoed {
            tries += 1;
            send(&payload).map_err(|e| format!("send {size} bytes: {e}"))?;
            let until = Instant::now() + UDP_WAIT;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match recv(left) {
                    Ok(data) if data == payload => {
                        echoed = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        if !echoed {
            return Err(format!("no echo of a {size}-byte payload in {tries} tries"));
        }
        report.push(format!("{size}B:{tries}"));
    }
    Ok(report.join(" "))
}

fn salamander() -> Option<String> {
    Some(OBFS_PASSWORD.to_owned())
}

/// A server and a client to it with `client_opts` (plus the server's obfuscation).
fn pair<S: Hy2Server>(obfs: Option<String>, client_opts: ClientOpts) -> (S, QuelayClient) {
    let server = S::launch(&ServerOpts {
        obfs: obfs.clone(),
        ..ServerOpts::default()
    });
    let client = QuelayClient::start(
        server.addr(),
        &ClientOpts {
            obfs,
            ..client_opts
        },
    );
    (server, client)
}

/// Scenario 1: `BULK` bytes down and `BULK` bytes up through the SOCKS5 listener, each on its
/// own proxied connection, checked by SHA-256.
fn socks5_download_upload<S: Hy2Server>(obfs: Option<String>) {
    let target = HttpTarget::start();
    let (mut server, mut client) = pair::<S>(obfs, ClientOpts::default());
    let proxy = client.socks_addr();
    let host = target.addr().to_string();

    let t = Instant::now();
    let down = socks5_connect(proxy, "127.0.0.1", target.addr().port())
        .map_err(|e| format!("SOCKS5 CONNECT: {e}"))
        .and_then(|mut s| download(&mut s, target.addr(), BULK, false));
    if let Err(e) = down {
        fail(&mut server, &mut client, format!("download: {e}"));
    }
    let took = t.elapsed();
    eprintln!(
        "{}: download {} MiB in {took:.2?} ({:.0} MiB/s)",
        test_name(),
        BULK / MIB,
        mib_per_s(BULK, took)
    );

    let data = random_bytes(BULK);
    let want = sha256_hex(&data);
    let t = Instant::now();
    let up = socks5_connect(proxy, "127.0.0.1", target.addr().port())
        .map_err(|e| format!("SOCKS5 CONNECT: {e}"))
        .and_then(|mut s| http_post(&mut s, &host, "/sha256", &data).map_err(|e| e.to_string()));
    let (status, body) =
        up.unwrap_or_else(|e| fail(&mut server, &mut client, format!("upload: {e}")));
    check_upload(status, &body, &want, BULK, t.elapsed());
    assert_eq!(target.requests(), 2, "requests that reached the target");
    stop_and_report(&mut client);
}

/// A one-shot HTTP origin on 127.0.0.1 that answers `200 ok` to one request and hands its
/// head to the receiver. Gives up after 30 s without a connection.
fn capture_one_request() -> (SocketAddr, mpsc::Receiver<Head>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("local address");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Err(_) => return,
            }
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(RAW_TIMEOUT));
        if let Ok(Some(head)) = read_head(&mut BufReader::new(&s)) {
            let _ = (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            let _ = tx.send(head);
        }
    });
    (addr, rx)
}

/// Scenario 2: through the HTTP proxy, a CONNECT tunnel download and a plain absolute-URI GET
/// download (`HTTP_BULK` each, checked), and the head a plain GET reaches the origin with.
fn http_proxy<S: Hy2Server>() {
    let target = HttpTarget::start();
    let (mut server, mut client) = pair::<S>(
        None,
        ClientOpts {
            socks5: None,
            http: Some(ProxyOpts::default()),
            ..ClientOpts::default()
        },
    );
    let proxy = client.http_addr();
    let host = target.addr().to_string();

    let t = Instant::now();
    let tunnel = http_connect(proxy, &host, None)
        .map_err(|e| format!("CONNECT {host}: {e}"))
        .and_then(|(head, mut s)| {
            if head.status() != Some(200) {
                return Err(format!("CONNECT {host} answered {:?}", head.start));
            }
            eprintln!("{}: CONNECT answered {:?}", test_name(), head.start);
            download(&mut s, target.addr(), HTTP_BULK, false)
        });
    if let Err(e) = tunnel {
        fail(&mut server, &mut client, format!("CONNECT tunnel: {e}"));
    }
    eprintln!(
        "{}: CONNECT tunnel download {} MiB in {:.2?}",
        test_name(),
        HTTP_BULK / MIB,
        t.elapsed()
    );

    let t = Instant::now();
    let plain = TcpStream::connect_timeout(&proxy, RAW_TIMEOUT)
        .map_err(|e| format!("connect to the proxy: {e}"))
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            download(&mut s, target.addr(), HTTP_BULK, true)
        });
    if let Err(e) = plain {
        fail(&mut server, &mut client, format!("plain GET: {e}"));
    }
    eprintln!(
        "{}: plain GET download {} MiB in {:.2?}",
        test_name(),
        HTTP_BULK / MIB,
        t.elapsed()
    );
    assert_eq!(target.requests(), 2, "requests that reached the target");

    // What the origin sees of a plain GET: origin-form, and asked to close.
    let (origin, heads) = capture_one_request();
    let mut s = TcpStream::connect_timeout(&proxy, RAW_TIMEOUT).expect("connect to the proxy");
    s.set_read_timeout(Some(RAW_TIMEOUT)).unwrap();
    let got = http_get(
        &mut s,
        &origin.to_string(),
        &format!("http://{origin}/probe?x=1"),
    );
    let (status, body) = got.unwrap_or_else(|e| {
        fail(
            &mut server,
            &mut client,
            format!("plain GET to the capturing origin: {e}"),
        )
    });
    assert_eq!((status, &body[..]), (200, &b"ok"[..]), "relayed response");
    let head = heads
        .recv_timeout(RAW_TIMEOUT)
        .expect("the origin got a request head");
    assert_eq!(
        head.start, "GET /probe?x=1 HTTP/1.1",
        "request line at the origin"
    );
    assert!(
        head.wants_close(),
        "the origin was not asked to close (Connection: close): {:?}",
        head.headers
    );
    stop_and_report(&mut client);
}

/// Scenario 3: each of `UDP_SIZES` echoed through a SOCKS5 UDP association.
fn socks5_udp<S: Hy2Server>() {
    let echo = UdpEcho::start();
    let (mut server, mut client) = pair::<S>(None, ClientOpts::default());
    let udp = Socks5Udp::associate(client.socks_addr()).unwrap_or_else(|e| {
        fail(
            &mut server,
            &mut client,
            format!("SOCKS5 UDP ASSOCIATE: {e}"),
        )
    });
    let t = Instant::now();
    let result = echo_datagrams(
        |p| udp.send_to(echo.addr(), p),
        |left| {
            let (from, data) = udp.recv_from(left)?;
            assert_eq!(from, echo.addr(), "source of a datagram relayed back");
            Ok(data)
        },
    );
    match result {
        Ok(report) => eprintln!(
            "{}: UDP echo in {:.2?} (size:tries) {report}",
            test_name(),
            t.elapsed()
        ),
        Err(e) => fail(
            &mut server,
            &mut client,
            format!("{e} ({} datagrams reached the target)", echo.datagrams()),
        ),
    }
    stop_and_report(&mut client);
}

/// Scenario 4: a TCP forwarder to an echo (1 MiB echoed) and a UDP forwarder to an echo.
fn forwarding<S: Hy2Server>() {
    let tcp_echo = TcpEcho::start();
    let udp_echo = UdpEcho::start();
    let (mut server, mut client) = pair::<S>(
        None,
        ClientOpts {
            socks5: None,
            tcp_forwarding: vec![tcp_echo.addr()],
            udp_forwarding: vec![udp_echo.addr()],
            ..ClientOpts::default()
        },
    );
    let fwd = client.tcp_forward_addr(0);
    let tcp = TcpStream::connect_timeout(&fwd, RAW_TIMEOUT)
        .map_err(|e| format!("connect to the forwarder: {e}"))
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            echo_check(&mut s, &random_bytes(MIB))
        });
    if let Err(e) = tcp {
        fail(&mut server, &mut client, format!("TCP forwarder: {e}"));
    }
    assert_eq!(tcp_echo.connections(), 1, "connections at the TCP echo");

    let fwd = client.udp_forward_addr(0);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let result = echo_datagrams(
        |p| sock.send_to(p, fwd).map(drop),
        |left| {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut buf = vec![0; 65536];
            let (n, from) = sock.recv_from(&mut buf)?;
            assert_eq!(from, fwd, "source of a datagram from the UDP forwarder");
            buf.truncate(n);
            Ok(buf)
        },
    );
    match result {
        Ok(report) => eprintln!("{}: UDP forwarder (size:tries) {report}", test_name()),
        Err(e) => fail(
            &mut server,
            &mut client,
            format!(
                "UDP forwarder: {e} ({} datagrams reached the target)",
                udp_echo.datagrams()
            ),
        ),
    }
    stop_and_report(&mut client);
}

/// The client started from a share URI with `--socks5` and `--http`: one echo through each.
fn share_uri<S: Hy2Server>() {
    let echo = TcpEcho::start();
    let mut server = S::launch(&ServerOpts::default());
    let uri = format!(
        "hysteria2://{PASSWORD}@127.0.0.1:{}/?insecure=1&sni={SNI}",
        server.addr().port()
    );
    let mut client = QuelayClient::start_uri(&uri, true);
    if let Err(e) = socks_echo(client.socks_addr(), echo.addr(), 64 * 1024) {
        fail(&mut server, &mut client, format!("SOCKS5 echo: {e}"));
    }
    let http = http_connect(client.http_addr(), &echo.addr().to_string(), None)
        .map_err(|e| format!("CONNECT: {e}"))
        .and_then(|(head, mut s)| match head.status() {
            Some(200) => echo_check(&mut s, &random_bytes(64 * 1024)),
            _ => Err(format!("CONNECT answered {:?}", head.start)),
        });
    if let Err(e) = http {
        fail(&mut server, &mut client, format!("HTTP CONNECT echo: {e}"));
    }
    assert_eq!(echo.connections(), 2, "connections at the echo");
    stop_and_report(&mut client);
}

/// A TCP port on 127.0.0.1 where nothing listens (it was free a moment ago).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// A target the server cannot reach: SOCKS5 answers 0x04 or 0x05, the HTTP proxy 502 (for
/// CONNECT and for a plain GET).
fn unreachable_target<S: Hy2Server>() {
    let (mut server, mut client) = pair::<S>(
        None,
        ClientOpts {
            http: Some(ProxyOpts::default()),
            ..ClientOpts::default()
        },
    );
    let port = closed_port();
    let rep = socks5_greet(client.socks_addr())
        .and_then(|mut s| socks5_request(&mut s, CMD_CONNECT, "127.0.0.1", port))
        .unwrap_or_else(|e| fail(&mut server, &mut client, format!("SOCKS5 CONNECT: {e}")))
        .0;
    assert!(
        rep == 4 || rep == 5,
        "SOCKS5 reply to CONNECT to a closed port: {rep:#04x} ({}), expected 0x04 or 0x05",
        reply_text(rep)
    );
    let target = format!("127.0.0.1:{port}");
    let (head, _) = http_connect(client.http_addr(), &target, None)
        .unwrap_or_else(|e| fail(&mut server, &mut client, format!("HTTP CONNECT: {e}")));
    assert_eq!(
        head.status(),
        Some(502),
        "CONNECT to a closed port: {:?}",
        head.start
    );
    let mut s = TcpStream::connect_timeout(&client.http_addr(), RAW_TIMEOUT).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (status, _) = http_get(&mut s, &target, &format!("http://{target}/"))
        .unwrap_or_else(|e| fail(&mut server, &mut client, format!("plain GET: {e}")));
    assert_eq!(status, 502, "plain GET to a closed port");
    stop_and_report(&mut client);
}

against_both! {
    /// 64 MiB each way through SOCKS5.
    socks5_download_upload_quelay, socks5_download_upload_singbox =>
        socks5_download_upload::<Server>(None)
}

against_both! {
    /// 64 MiB each way through SOCKS5, Salamander on both sides.
    salamander_socks5_download_upload_quelay, salamander_socks5_download_upload_singbox =>
        socks5_download_upload::<Server>(salamander())
}

against_both! {
    http_proxy_connect_and_plain_get_quelay, http_proxy_connect_and_plain_get_singbox =>
        http_proxy::<Server>()
}

against_both! {
    socks5_udp_echo_quelay, socks5_udp_echo_singbox => socks5_udp::<Server>()
}

against_both! {
    tcp_and_udp_forwarding_quelay, tcp_and_udp_forwarding_singbox => forwarding::<Server>()
}

against_both! {
    share_uri_socks5_and_http_quelay, share_uri_socks5_and_http_singbox => share_uri::<Server>()
}

against_both! {
    unreachable_target_refused_quelay, unreachable_target_refused_singbox =>
        unreachable_target::<Server>()
}

/// A TCP connection with `RAW_TIMEOUT` timeouts.
fn raw(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, RAW_TIMEOUT)?;
    s.set_read_timeout(Some(RAW_TIMEOUT))?;
    s.set_write_timeout(Some(RAW_TIMEOUT))?;
    Ok(s)
}

/// Reads until the peer closes (EOF or reset) and returns what it sent first; an error if it
/// is still open after `RAW_TIMEOUT`.
fn until_closed(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(got)
            }
            Err(e) => {
                return Err(format!(
                    "not closed within {RAW_TIMEOUT:?} ({e}); got {got:02x?}"
                ))
            }
        }
    }
}

/// Connects to `addr`, sends `bytes`, and returns all it answers before closing.
fn send_then_closed(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = raw(addr).map_err(|e| format!("connect: {e}"))?;
    s.write_all(bytes).map_err(|e| format!("write: {e}"))?;
    until_closed(&mut s)
}

/// Username/password on the SOCKS5 listener: the right ones work, a wrong password gets
/// status 0x01 and a close, a client offering only "no authentication" gets 0xFF and a close.
#[test]
fn socks5_username_password_quelay() {
    let echo = TcpEcho::start();
    let (mut server, mut client) = pair::<QuelayServer>(
        None,
        ClientOpts {
            socks5: Some(ProxyOpts {
                auth: Some(("alice".into(), "wonder".into())),
            }),
            ..ClientOpts::default()
        },
    );
    let proxy = client.socks_addr();
    let ok = socks5_greet_auth(proxy, "alice", "wonder")
        .map_err(|e| e.to_string())
        .and_then(|mut s| {
            match socks5_request(&mut s, CMD_CONNECT, "127.0.0.1", echo.addr().port()) {
                Ok((0, _)) => echo_check(&mut s, b"hello through auth"),
                Ok((rep, _)) => Err(format!("CONNECT reply {rep:#04x}")),
                Err(e) => Err(format!("CONNECT: {e}")),
            }
        });
    if let Err(e) = ok {
        fail(
            &mut server,
            &mut client,
            format!("with the right credentials: {e}"),
        );
    }

    let mut wrong = vec![5, 1, 2, 1, 5];
    wrong.extend_from_slice(b"alice");
    wrong.push(5);
    wrong.extend_from_slice(b"WRONG");
    let got = send_then_closed(proxy, &wrong).unwrap_or_else(|e| panic!("wrong password: {e}"));
    assert_eq!(
        got,
        [5, 2, 1, 1],
        "method choice and RFC 1929 status for a wrong password"
    );

    let got = send_then_closed(proxy, &[5, 1, 0]).unwrap_or_else(|e| panic!("no auth: {e}"));
    assert_eq!(got, [5, 0xFF], "answer to a greeting offering only 0x00");
    assert_eq!(echo.connections(), 1, "connections at the echo");
    client.child().assert_running();
    stop_and_report(&mut client);
}

/// Connections held by the pool scenario.
const SEED_CONNS: usize = 5000;
/// Bytes each of them echoes.
const SEED_BYTES: usize = 1024;
/// Connect, read and write timeout of each of them.
const SEED_TIMEOUT: Duration = Duration::from_secs(60);
/// Stack of each of their threads: they only shuffle 1 KiB buffers.
const SEED_STACK: usize = 128 * 1024;

/// Threads that arrive, and wait until the gate opens. Arrivals wake only the opener.
#[derive(Default)]
struct Gate {
    /// (arrived, open)
    state: Mutex<(usize, bool)>,
    arrived: Condvar,
    opened: Condvar,
}

impl Gate {
    fn arrive_and_wait(&self) {
        let mut g = self.state.lock().unwrap();
        g.0 += 1;
        self.arrived.notify_one();
        while !g.1 {
            g = self.opened.wait(g).unwrap();
        }
    }

    /// Waits up to `timeout` for `n` arrivals; returns how many came.
    fn wait_arrivals(&self, n: usize, timeout: Duration) -> usize {
        let g = self.state.lock().unwrap();
        let (g, _) = self
            .arrived
            .wait_timeout_while(g, timeout, |g| g.0 < n)
            .unwrap();
        g.0
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.opened.notify_all();
    }
}

/// Opens the gate when dropped, so no thread waits forever behind a failed test.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// The 1 KiB connection `i` echoes: its number, then bytes that depend on it.
fn seed_payload(i: usize) -> Vec<u8> {
    let mut v = (i as u64).to_le_bytes().to_vec();
    v.extend((8..SEED_BYTES).map(|k| (i.wrapping_mul(131) ^ k.wrapping_mul(7)) as u8));
    v
}

/// Phase 1 of one connection: TCP to the SOCKS5 port and the method negotiation.
fn seed_greet(proxy: SocketAddr) -> Result<TcpStream, String> {
    let mut s =
        TcpStream::connect_timeout(&proxy, SEED_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(SEED_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(SEED_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&[5, 1, 0])
        .map_err(|e| format!("greeting: {e}"))?;
    let mut choice = [0; 2];
    s.read_exact(&mut choice)
        .map_err(|e| format!("method choice: {e}"))?;
    if choice != [5, 0] {
        return Err(format!("method choice {choice:02x?}"));
    }
    Ok(s)
}

/// Phase 2 of one connection: CONNECT, then 1 KiB echoed.
fn seed_connect_echo(s: &mut TcpStream, echo: SocketAddr, i: usize) -> Result<(), String> {
    let (rep, _) = socks5_request(s, CMD_CONNECT, "127.0.0.1", echo.port())
        .map_err(|e| format!("CONNECT: {e}"))?;
    if rep != 0 {
        return Err(format!("CONNECT reply {rep:#04x} ({})", reply_text(rep)));
    }
    let out = seed_payload(i);
    s.write_all(&out).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0; SEED_BYTES];
    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != out {
        return Err("echo differs".into());
    }
    Ok(())
}

/// Failures grouped by message, with how many and the first connection that saw each.
fn group_failures(failures: &[(usize, String)]) -> String {
    let mut kinds: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, e) in failures {
        let k = kinds.entry(e.as_str()).or_insert((0, *i));
        k.0 += 1;
        k.1 = k.1.min(*i);
    }
    kinds
        .iter()
        .map(|(e, (n, first))| format!("{n} x {e} (first: connection {first})"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pool under a burst: 5000 SOCKS5 connections negotiated first, then all 5000 CONNECT
/// at once through a client allowed 2 workers x 8 connections to a server granting 64
/// streams per connection, so most requests wait for stream credit or a new connection.
/// Every one must succeed and echo its own 1 KiB.
#[test]
fn pool_5000_concurrent_connects_quelay() {
    // The test's 5000 sockets, and the echo's two descriptors (socket and clone) for each
    // connection it holds: at most the 1024 streams the pool may open, but all 5000 if the
    // pool did not hold back.
    let need = (SEED_CONNS * 3 + 1000) as u64;
    let limit = open_files_limit().unwrap_or(0);
    assert!(
        limit >= need,
        "this test needs {need} open files but RLIMIT_NOFILE is {limit}: raise it (ulimit -n)"
    );
    let echo = TcpEcho::start();
    let mut server = QuelayServer::start("quic:\n  maxIncomingStreams: 64\n");
    let mut client = QuelayClient::start(
        server.addr(),
        &ClientOpts {
            extra: "pool:\n  maxConnections: 8\nengine:\n  workers: 2\n".into(),
            ..ClientOpts::default()
        },
    );
    let proxy = client.socks_addr();
    let echo_addr = echo.addr();

    let gate = Arc::new(Gate::default());
    let opener = OpenOnDrop(gate.clone());
    let failures: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let t = Instant::now();
    let mut threads = Vec::with_capacity(SEED_CONNS);
    let mut spawn_error = None;
    for i in 0..SEED_CONNS {
        let (gate, failures) = (gate.clone(), failures.clone());
        let spawned = thread::Builder::new()
            .name(format!("seed-{i}"))
            .stack_size(SEED_STACK)
            .spawn(move || {
                let greeted = seed_greet(proxy);
                gate.arrive_and_wait();
                let result = greeted
                    .map_err(|e| format!("phase 1: {e}"))
                    .and_then(|mut s| seed_connect_echo(&mut s, echo_addr, i));
                if let Err(e) = result {
                    failures.lock().unwrap().push((i, e));
                }
            });
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        }
    }
    let spawned = threads.len();
    let arrived = gate.wait_arrivals(spawned, Duration::from_secs(180));
    let phase1 = t.elapsed();
    let t = Instant::now();
    drop(opener);
    for h in threads {
        h.join().expect("a connection thread panicked");
    }
    let phase2 = t.elapsed();
    if let Some(e) = spawn_error {
        panic!("could start only {spawned} of {SEED_CONNS} connection threads: {e}");
    }
    let failures = Arc::try_unwrap(failures).unwrap().into_inner().unwrap();
    eprintln!(
        "{}: phase 1 (greetings) {phase1:.2?}, phase 2 (CONNECT + echo) {phase2:.2?}; \
         {} failures; echo saw {} connections, {} at once",
        test_name(),
        failures.len(),
        echo.connections(),
        echo.peak_open()
    );
    assert_eq!(arrived, SEED_CONNS, "connections that reached the barrier");
    if !failures.is_empty() {
        client.child().assert_running();
        server.child().assert_running();
        let stats: Vec<String> = client
            .stop()
            .lines()
            .filter(|l| l.contains("pool stats:"))
            .map(str::to_owned)
            .collect();
        panic!(
            "{} of {SEED_CONNS} connections failed:\n{}\nclient: {stats:?}",
            failures.len(),
            group_failures(&failures)
        );
    }
    assert_eq!(echo.connections(), SEED_CONNS, "connections at the echo");
    let stats = stop_and_report(&mut client);
    assert!(
        stats.get("peak_connections") > 1,
        "the pool never opened a second connection: {}",
        stats.line
    );
    assert!(
        stats.get("streams_opened") >= SEED_CONNS as u64,
        "streams_opened below {SEED_CONNS}: {}",
        stats.line
    );
}

/// Greets the SOCKS5 listener, sends CONNECT to `port` and waits up to `wait` for the reply:
/// returns REP and how long it took.
fn timed_connect(proxy: SocketAddr, port: u16, wait: Duration) -> Result<(u8, Duration), String> {
    let mut s = socks5_greet(proxy).map_err(|e| format!("greeting: {e}"))?;
    s.set_read_timeout(Some(wait)).unwrap();
    let t = Instant::now();
    let (rep, _) = socks5_request(&mut s, CMD_CONNECT, "127.0.0.1", port)
        .map_err(|e| format!("no CONNECT reply after {:.2?}: {e}", t.elapsed()))?;
    Ok((rep, t.elapsed()))
}

/// The server dies (SIGKILL) under a connected client and comes back on the same port: during
/// the outage CONNECTs fail promptly, afterwards new ones succeed, and the client never exits.
#[test]
fn server_kill_and_restart_quelay() {
    let echo = TcpEcho::start();
    let mut server = QuelayServer::start("");
    // keepAlivePeriod: the client accepts 2 s to 60 s, as the official one does.
    let mut client = QuelayClient::start(
        server.addr(),
        &ClientOpts {
            http: Some(ProxyOpts::default()),
            extra: "quic:\n  maxIdleTimeout: 4s\n  keepAlivePeriod: 2s\n\
                    pool:\n  streamOpenTimeout: 3s\n"
                .into(),
            ..ClientOpts::default()
        },
    );
    let proxy = client.socks_addr();
    let port = echo.addr().port();
    if let Err(e) = socks_echo(proxy, echo.addr(), 1024) {
        fail(&mut server, &mut client, format!("before the outage: {e}"));
    }

    server.kill();
    let killed = Instant::now();
    // The connection still looks alive: the request waits for the idle timeout to show
    // otherwise, and must then fail, not hang.
    let (rep, took) = timed_connect(proxy, port, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("CONNECT right after the kill: {e}"));
    eprintln!(
        "{}: CONNECT right after the kill: reply {rep:#04x} ({}) after {took:.2?}",
        test_name(),
        reply_text(rep)
    );
    assert_ne!(rep, 0, "CONNECT succeeded with the server dead");
    assert!(
        took < Duration::from_secs(12),
        "the failure reply took {took:.2?}"
    );
    // Each worker has its own connection, and its idle timer restarts with the first
    // keep-alive it sends after the last packet it got: every worker knows of the loss
    // 4 s + 2 s after the kill. Then: no connection, no stream within streamOpenTimeout
    // (3 s), general failure.
    thread::sleep(Duration::from_secs(8).saturating_sub(killed.elapsed()));
    let (rep, took) = timed_connect(proxy, port, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("CONNECT during the outage: {e}"));
    eprintln!(
        "{}: CONNECT during the outage: reply {rep:#04x} ({}) after {took:.2?}",
        test_name(),
        reply_text(rep)
    );
    assert_eq!(
        rep, 1,
        "reply to a CONNECT that got no stream within streamOpenTimeout"
    );
    assert!(
        took < Duration::from_secs(10),
        "the failure reply took {took:.2?}"
    );
    let t = Instant::now();
    let (head, _) = http_connect(client.http_addr(), &echo.addr().to_string(), None)
        .unwrap_or_else(|e| panic!("HTTP CONNECT during the outage: {e}"));
    eprintln!(
        "{}: HTTP CONNECT during the outage: {:?} after {:.2?}",
        test_name(),
        head.start,
        t.elapsed()
    );
    assert_eq!(head.status(), Some(503), "HTTP CONNECT during the outage");
    client.child().assert_running();

    server.restart();
    let restarted = Instant::now();
    let mut attempts = 0;
    let mut last = String::new();
    loop {
        attempts += 1;
        match socks_echo(proxy, echo.addr(), 1024) {
            Ok(()) => break,
            Err(e) => last = e,
        }
        if restarted.elapsed() > Duration::from_secs(20) {
            fail(
                &mut server,
                &mut client,
                format!("no SOCKS5 echo within 20 s of the restart ({attempts} attempts): {last}"),
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{}: SOCKS5 works again {:.2?} after the restart ({attempts} attempts; last error: {last:?})",
        test_name(),
        restarted.elapsed()
    );
    client.child().assert_running();
    let stats = stop_and_report(&mut client);
    assert!(
        stats.get("reconnects") >= 1,
        "no reconnect counted: {}",
        stats.line
    );
}

/// Downloads `len` bytes of the pattern through SOCKS5, at about 3 MiB/s until `slow` is
/// cleared and then at full speed, sending on `started` once the first MiB is in. Checks the
/// SHA-256.
fn paced_download(
    proxy: SocketAddr,
    target: SocketAddr,
    len: usize,
    slow: &AtomicBool,
    started: mpsc::Sender<()>,
) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s = socks5_connect(proxy, "127.0.0.1", target.port())
        .map_err(|e| format!("SOCKS5 CONNECT: {e}"))?;
    let req = format!("GET /bytes/{len} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("request: {e}"))?;
    let head = read_head_unbuffered(&mut s)
        .map_err(|e| format!("response head: {e}"))?
        .ok_or("closed before the response")?;
    if head.status() != Some(200) || head.content_length() != Some(len as u64) {
        return Err(format!("response {:?} {:?}", head.start, head.headers));
    }
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0; 64 * 1024];
    let mut got = 0;
    let mut signalled = false;
    while got < len {
        let want = (len - got).min(buf.len());
        let n = s
            .read(&mut buf[..want])
            .map_err(|e| format!("read after {got} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {got} of {len} bytes"));
        }
        ctx.update(&buf[..n]);
        got += n;
        if !signalled && got >= MIB {
            signalled = true;
            let _ = started.send(());
        }
        if slow.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(20));
        }
    }
    let digest = support::hex(ctx.finish().as_ref());
    if digest != pattern_sha256(len) {
        return Err("SHA-256 of the download differs from the pattern's".into());
    }
    Ok(t.elapsed())
}

/// The bytes of a SOCKS5 CONNECT to `port`, greeting included.
fn socks_connect_bytes(port: u16) -> Vec<u8> {
    let mut v = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1];
    v.extend_from_slice(&port.to_be_bytes());
    v
}

/// Greets (no auth), sends `request`, and returns what the proxy answers to it before
/// closing.
fn socks_after_greeting(proxy: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = raw(proxy).map_err(|e| format!("connect: {e}"))?;
    s.write_all(&[5, 1, 0])
        .map_err(|e| format!("greeting: {e}"))?;
    let mut choice = [0; 2];
    s.read_exact(&mut choice)
        .map_err(|e| format!("method choice: {e}"))?;
    if choice != [5, 0] {
        return Err(format!("method choice {choice:02x?}"));
    }
    s.write_all(request).map_err(|e| format!("request: {e}"))?;
    until_closed(&mut s)
}

/// The first two bytes (VER, REP) of a SOCKS5 reply must be `want`.
fn expect_reply(got: Result<Vec<u8>, String>, want: [u8; 2]) -> Result<(), String> {
    let got = got?;
    if got.len() < 2 || got[..2] != want {
        return Err(format!("answered {got:02x?}, expected {want:02x?}..."));
    }
    Ok(())
}

/// A refused greeting: closed, after nothing or after `05 FF`.
fn expect_refused(got: Result<Vec<u8>, String>) -> Result<(), String> {
    match got? {
        g if g.is_empty() || g == [5, 0xFF] => Ok(()),
        g => Err(format!("answered {g:02x?} before closing")),
    }
}

/// Sends `bytes` to the HTTP proxy (ignoring a write cut short by an early answer) and
/// returns the status of its response.
fn http_status(proxy: SocketAddr, bytes: &[u8]) -> Result<u16, String> {
    let mut s = raw(proxy).map_err(|e| format!("connect: {e}"))?;
    let written = s.write_all(bytes);
    match read_head_unbuffered(&mut s) {
        Ok(Some(head)) => head
            .status()
            .ok_or_else(|| format!("bad status line {:?}", head.start)),
        Ok(None) => Err(format!("closed without a response (write: {written:?})")),
        Err(e) => Err(format!("no response: {e} (write: {written:?})")),
    }
}

fn expect_status(got: Result<u16, String>, want: u16) -> Result<(), String> {
    match got? {
        s if s == want => Ok(()),
        s => Err(format!("status {s}, expected {want}")),
    }
}

/// Bad local input while a download runs: malformed SOCKS5 and HTTP-proxy requests get the
/// answers of the contract (or a close), a hundred handshakes are abandoned midway, and
/// none of it disturbs the download or later connections.
#[test]
fn bad_local_input_during_download_quelay() {
    let target = HttpTarget::start();
    let echo = TcpEcho::start();
    let (user, pass) = ("hu", "hp");
    let (mut server, mut client) = pair::<QuelayServer>(
        None,
        ClientOpts {
            http: Some(ProxyOpts {
                auth: Some((user.into(), pass.into())),
            }),
            ..ClientOpts::default()
        },
    );
    let (socks, http) = (client.socks_addr(), client.http_addr());
    let echo_port = echo.addr().port();
    let echo_host = echo.addr().to_string();
    let auth_line = format!("Proxy-Authorization: {}\r\n", basic_auth(user, pass));

    let slow = Arc::new(AtomicBool::new(true));
    let (started_tx, started) = mpsc::channel();
    let download = {
        let (slow, target) = (slow.clone(), target.addr());
        thread::spawn(move || paced_download(socks, target, BULK, &slow, started_tx))
    };
    if started.recv_timeout(Duration::from_secs(30)).is_err() {
        slow.store(false, Ordering::Relaxed);
        let e = download.join().expect("download thread");
        fail(
            &mut server,
            &mut client,
            format!("the download did not get its first MiB: {e:?}"),
        );
    }

    let t = Instant::now();
    let mut failures = Vec::new();
    let mut check = |what: &str, r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(format!("{what}: {e}"));
        }
    };
    let mut rng = rand::thread_rng();

    // SOCKS5 greetings and requests.
    let mut socks4 = vec![4, 1];
    socks4.extend_from_slice(&echo_port.to_be_bytes());
    socks4.extend_from_slice(&[127, 0, 0, 1, 0]);
    check(
        "SOCKS4 greeting",
        expect_refused(send_then_closed(socks, &socks4)),
    );
    check(
        "greeting with 0 methods",
        expect_reply(send_then_closed(socks, &[5, 0]), [5, 0xFF]),
    );
    check(
        "greeting offering only 0x02",
        expect_reply(send_then_closed(socks, &[5, 1, 2]), [5, 0xFF]),
    );
    let mut bind = vec![5, CMD_BIND, 0, 1, 127, 0, 0, 1];
    bind.extend_from_slice(&echo_port.to_be_bytes());
    check(
        "BIND",
        expect_reply(socks_after_greeting(socks, &bind), [5, 7]),
    );
    check(
        "ATYP 0x08",
        expect_reply(
            socks_after_greeting(socks, &[5, 1, 0, 8, 1, 2, 3, 4, 0, 80]),
            [5, 8],
        ),
    );
    let mut v4_request = vec![4, 1, 0, 1, 127, 0, 0, 1];
    v4_request.extend_from_slice(&echo_port.to_be_bytes());
    check(
        "request with version 4",
        socks_after_greeting(socks, &v4_request).and_then(|g| match g.get(1) {
            Some(0) => Err(format!("answered success: {g:02x?}")),
            _ => Ok(()),
        }),
    );
    // Requests cut short, then our side closes for writing: the proxy must close too.
    let full = socks_connect_bytes(echo_port);
    let mut domain_cut = vec![5, 1, 0, 5, 1, 0, 3, 20];
    domain_cut.extend_from_slice(b"exam");
    for cut in [
        &full[..1],
        &full[..2],
        &full[..4],
        &full[..9],
        &domain_cut[..],
    ] {
        let r = raw(socks)
            .map_err(|e| format!("connect: {e}"))
            .and_then(|mut s| {
                s.write_all(cut).map_err(|e| format!("write: {e}"))?;
                s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                until_closed(&mut s)
            })
            .and_then(|g| match g.len() {
                0..=2 => Ok(()),
                _ => Err(format!("answered {g:02x?}")),
            });
        check(&format!("truncated request {cut:02x?}"), r);
    }
    for _ in 0..10 {
        let len = rng.gen_range(1..2000);
        let mut garbage = random_bytes(len);
        if garbage[0] == 5 {
            garbage[0] = 0x16;
        }
        check(
            &format!("{len} bytes of garbage"),
            expect_refused(send_then_closed(socks, &garbage)),
        );
    }

    // The HTTP proxy.
    let big = format!(
        "CONNECT {echo_host} HTTP/1.1\r\nHost: {echo_host}\r\n{auth_line}X-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    check(
        "100 KiB request head",
        expect_status(http_status(http, big.as_bytes()), 431),
    );
    let origin_form = format!("GET / HTTP/1.1\r\nHost: {echo_host}\r\n{auth_line}\r\n");
    check(
        "origin-form GET",
        expect_status(http_status(http, origin_form.as_bytes()), 405),
    );
    let connect = |auth: Option<(&str, &str)>| {
        http_connect(http, &echo_host, auth).map_err(|e| format!("CONNECT: {e}"))
    };
    check(
        "CONNECT without Proxy-Authorization",
        connect(None).and_then(|(head, _)| match head.status() {
            Some(407) if head.header("proxy-authenticate").is_some() => Ok(()),
            Some(407) => Err("407 without Proxy-Authenticate".into()),
            _ => Err(format!("answered {:?}", head.start)),
        }),
    );
    check(
        "CONNECT with a wrong password",
        connect(Some((user, "nope")))
            .and_then(|(head, _)| expect_status(head.status().ok_or(head.start), 407)),
    );
    let mut garbage: Vec<u8> = random_bytes(1000)
        .into_iter()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .collect();
    garbage[0] = 0x16;
    garbage.extend_from_slice(b"\r\n\r\n");
    check(
        "garbage HTTP head",
        expect_status(http_status(http, &garbage), 400),
    );
    check(
        "CONNECT with the right credentials",
        connect(Some((user, pass))).and_then(|(head, mut s)| match head.status() {
            Some(200) => echo_check(&mut s, b"through the authenticated tunnel"),
            _ => Err(format!("answered {:?}", head.start)),
        }),
    );

    // Handshakes abandoned midway, half of them with a reset.
    let http_full = format!("CONNECT {echo_host} HTTP/1.1\r\nHost: {echo_host}\r\n{auth_line}\r\n");
    for k in 0..100 {
        let (addr, bytes) = if k % 2 == 0 {
            (socks, &full[..])
        } else {
            (http, http_full.as_bytes())
        };
        let cut = rng.gen_range(0..bytes.len());
        match raw(addr) {
            Ok(mut s) => {
                let _ = s.write_all(&bytes[..cut]);
                if k % 4 < 2 {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
            }
            Err(e) => check(
                &format!("abandoned handshake {k}"),
                Err(format!("connect: {e}")),
            ),
        }
    }
    let barrage = t.elapsed();

    slow.store(false, Ordering::Relaxed);
    let downloaded = download.join().expect("download thread");
    eprintln!(
        "{}: bad input took {barrage:.2?}; download: {downloaded:?}",
        test_name()
    );
    client.child().assert_running();
    assert!(
        failures.is_empty(),
        "{} bad-input checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if let Err(e) = downloaded {
        fail(&mut server, &mut client, format!("the download: {e}"));
    }
    if let Err(e) = socks_echo(socks, echo.addr(), 64 * 1024) {
        fail(
            &mut server,
            &mut client,
            format!("a fresh SOCKS5 connection after the bad input: {e}"),
        );
    }
    stop_and_report(&mut client);
}
