//! sing-box 1.14.4 as a Hysteria2 client against a Hysteria2 server, end to end on loopback:
//! the test talks SOCKS5 to the sing-box client, which carries the traffic over Hysteria2 to
//! the server, which reaches local HTTP, TCP-echo and UDP-echo targets.
//!
//! Every scenario is generic over the server. The `_quelay` tests run it against
//! `quelay server`; the `_singbox` tests run the same code against the sing-box server, the
//! reference, so a `_quelay` failure next to a `_singbox` pass points at quelay, not at the
//! harness. sing-box is installed by `scripts/get-singbox.sh` (from PyPI) on first use; if
//! that fails, the tests fail.

#[macro_use]
mod support;

// What an unauthenticated prober sees, against sing-box's server (tests/hy2_singbox/probe.rs).
#[path = "hy2_singbox/probe.rs"]
mod probe;

// Routing by the ACL, its outbounds and sniffing (tests/hy2_singbox/acl.rs).
#[path = "hy2_singbox/acl.rs"]
mod acl;

// auth.type: command, with a real client (tests/hy2_singbox/command_auth.rs).
#[path = "hy2_singbox/command_auth.rs"]
mod command_auth;

// The masquerade over TCP and tls.sniGuard (tests/hy2_singbox/masquerade_tcp.rs).
#[path = "hy2_singbox/masquerade_tcp.rs"]
mod masquerade_tcp;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    check_upload, http_get, http_post, mib_per_s, open_files_limit, pattern_mismatch, random_bytes,
    sha256_hex, socks5_connect, test_name, HttpTarget, Hy2Server, QuelayServer, SbOpts, ServerOpts,
    SingboxClient, SingboxServer, Socks5Udp, TcpEcho, UdpEcho, MIB, PASSWORD,
};

/// Bytes moved each way by the bulk scenarios.
const BULK: usize = 64 * MIB;
const OBFS_PASSWORD: &str = "obfspass";

fn salamander() -> Option<String> {
    Some(OBFS_PASSWORD.to_owned())
}

/// Fails the test with `what`, first making sure both peers are still running: a peer that
/// died (or was killed from outside) explains everything after it, so that is the report.
fn fail<S: Hy2Server>(server: &mut S, client: &mut SingboxClient, what: String) -> ! {
    client.child().assert_running();
    server.child().assert_running();
    panic!("{what}");
}

/// Downloads `BULK` bytes of the target's pattern and uploads `BULK` random bytes, each on its
/// own proxied connection, checking every byte (download) and the SHA-256 (upload).
fn download_upload<S: Hy2Server>(server_opts: ServerOpts, client_opts: SbOpts) {
    let target = HttpTarget::start();
    let mut server = S::launch(&server_opts);
    let mut client = SingboxClient::start(server.addr(), PASSWORD, &client_opts);
    let host = target.addr().to_string();
    let port = target.addr().port();

    let t = Instant::now();
    let mut s = socks5_connect(client.socks_addr(), "127.0.0.1", port).unwrap_or_else(|e| {
        fail(
            &mut server,
            &mut client,
            format!("SOCKS5 CONNECT for the download: {e}"),
        )
    });
    let (status, body) = http_get(&mut s, &host, &format!("/bytes/{BULK}"))
        .unwrap_or_else(|e| fail(&mut server, &mut client, format!("download: {e}")));
    let took = t.elapsed();
    assert_eq!(status, 200, "download status");
    assert_eq!(body.len(), BULK, "download length");
    if let Some(i) = pattern_mismatch(0, &body) {
        panic!(
            "download byte {i} is {:#04x}, expected {:#04x}",
            body[i],
            support::pattern_byte(i as u64)
        );
    }
    eprintln!(
        "{}: download {} MiB in {took:.2?} ({:.0} MiB/s)",
        test_name(),
        BULK / MIB,
        mib_per_s(BULK, took)
    );
    drop(s);

    let data = random_bytes(BULK);
    let want = sha256_hex(&data);
    let t = Instant::now();
    let mut s = socks5_connect(client.socks_addr(), "127.0.0.1", port).unwrap_or_else(|e| {
        fail(
            &mut server,
            &mut client,
            format!("SOCKS5 CONNECT for the upload: {e}"),
        )
    });
    let (status, body) = http_post(&mut s, &host, "/sha256", &data)
        .unwrap_or_else(|e| fail(&mut server, &mut client, format!("upload: {e}")));
    check_upload(status, &body, &want, BULK, t.elapsed());
    assert_eq!(target.requests(), 2, "requests that reached the target");
}

/// Streams held open at once by `concurrent_streams`.
const STREAMS: usize = 1000;
/// Bytes each stream echoes.
const ECHO_BYTES: usize = 1024;
/// Threads opening the streams.
const OPENERS: usize = 50;

/// `STREAMS` proxied TCP connections to an echo target, each echoing `ECHO_BYTES`; all of them
/// are connected and have echoed before the first one is closed.
fn concurrent_streams<S: Hy2Server>() {
    // Per stream: the test's socket, the client's two, the target's one (and its clone).
    let need = (STREAMS * 5 + 1000) as u64;
    let limit = open_files_limit().unwrap_or(0);
    assert!(
        limit >= need,
        "this test needs {need} open files but RLIMIT_NOFILE is {limit}: raise it (ulimit -n)"
    );
    let echo = TcpEcho::start();
    let mut server = S::launch(&ServerOpts::default());
    let mut client = SingboxClient::start(server.addr(), PASSWORD, &SbOpts::default());
    let proxy = client.socks_addr();
    let port = echo.addr().port();

    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    let next = AtomicUsize::new(0);
    let open: Mutex<Vec<TcpStream>> = Mutex::new(Vec::with_capacity(STREAMS));
    let failures: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let one = |i: usize| -> Result<TcpStream, String> {
        let mut s =
            socks5_connect(proxy, "127.0.0.1", port).map_err(|e| format!("connect: {e}"))?;
        let out: Vec<u8> = (0..ECHO_BYTES).map(|k| (i * 7 + k) as u8).collect();
        s.write_all(&out).map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0; ECHO_BYTES];
        s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
        if back != out {
            return Err("echo differs".into());
        }
        Ok(s)
    };
    thread::scope(|scope| {
        for _ in 0..OPENERS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= STREAMS {
                    return;
                }
                if Instant::now() > deadline {
                    failures
                        .lock()
                        .unwrap()
                        .push((i, "not started before the deadline".into()));
                    continue;
                }
                match one(i) {
                    Ok(s) => open.lock().unwrap().push(s),
                    Err(e) => failures.lock().unwrap().push((i, e)),
                }
            });
        }
    });
    let took = t.elapsed();
    let failures = failures.into_inner().unwrap();
    let open = open.into_inner().unwrap();
    eprintln!(
        "{}: {} of {STREAMS} streams connected and echoed in {took:.2?}; target saw {} connections, {} at once",
        test_name(),
        open.len(),
        echo.connections(),
        echo.peak_open()
    );
    if !failures.is_empty() {
        // Grouped by error, with the first stream that saw each.
        let mut kinds: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (i, e) in &failures {
            let k = kinds.entry(e.as_str()).or_insert((0, *i));
            k.0 += 1;
            k.1 = k.1.min(*i);
        }
        let kinds: Vec<String> = kinds
            .iter()
            .map(|(e, (n, first))| format!("{n} x {e} (first: stream {first})"))
            .collect();
        fail(
            &mut server,
            &mut client,
            format!(
                "{} of {STREAMS} streams failed:\n{}",
                failures.len(),
                kinds.join("\n")
            ),
        );
    }
    assert_eq!(open.len(), STREAMS);
    assert_eq!(
        echo.peak_open(),
        STREAMS,
        "connections open at the target at the same time"
    );
    drop(open);
}

/// UDP payload sizes: small ones, and ones that need Hysteria2 fragmentation (a QUIC DATAGRAM
/// carries about 1200 bytes; Hysteria2 caps UDP payloads at 4096).
const UDP_SIZES: [usize; 9] = [1, 16, 100, 512, 1000, 1200, 1500, 3000, 4000];
/// Sends per payload before giving up: UDP may drop.
const UDP_TRIES: usize = 5;
const UDP_WAIT: Duration = Duration::from_secs(2);

/// Echoes each of `UDP_SIZES` through a SOCKS5 UDP association, retrying each a few times.
fn udp_echo<S: Hy2Server>(server_opts: ServerOpts, client_opts: SbOpts) {
    let echo = UdpEcho::start();
    let mut server = S::launch(&server_opts);
    let mut client = SingboxClient::start(server.addr(), PASSWORD, &client_opts);
    let udp = Socks5Udp::associate(client.socks_addr()).unwrap_or_else(|e| {
        fail(
            &mut server,
            &mut client,
            format!("SOCKS5 UDP ASSOCIATE: {e}"),
        )
    });
    let t = Instant::now();
    let mut report = Vec::new();
    for size in UDP_SIZES {
        let payload = random_bytes(size);
        let mut tries = 0;
        let mut echoed = false;
        while tries < UDP_TRIES && !echoed {
            tries += 1;
            udp.send_to(echo.addr(), &payload)
                .unwrap_or_else(|e| panic!("send {size} bytes: {e}"));
            let wait_until = Instant::now() + UDP_WAIT;
            // Late echoes of earlier payloads are skipped.
            while let Some(left) = wait_until.checked_duration_since(Instant::now()) {
                match udp.recv_from(left) {
                    Ok((from, data)) if data == payload => {
                        assert_eq!(from, echo.addr(), "source of the echoed datagram");
                        echoed = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        if !echoed {
            fail(
                &mut server,
                &mut client,
                format!(
                    "no echo of a {size}-byte payload after {tries} tries ({} datagrams reached the target)",
                    echo.datagrams()
                ),
            );
        }
        report.push(format!("{size}B:{tries}"));
    }
    eprintln!(
        "{}: UDP echo in {:.2?} (size:tries) {}",
        test_name(),
        t.elapsed(),
        report.join(" ")
    );
}

/// A client with the wrong password gets nowhere: the proxied request fails, and no
/// connection reaches the target.
fn wrong_password<S: Hy2Server>() {
    let target = HttpTarget::start();
    let mut server = S::launch(&ServerOpts::default());
    let mut client = SingboxClient::start(server.addr(), "not-the-password", &SbOpts::default());
    let t = Instant::now();
    let outcome = match socks5_connect(client.socks_addr(), "127.0.0.1", target.addr().port()) {
        Err(e) => format!("SOCKS5 CONNECT failed: {e}"),
        Ok(mut s) => match http_get(&mut s, &target.addr().to_string(), "/bytes/16") {
            Err(e) => format!("SOCKS5 CONNECT succeeded, then the request failed: {e}"),
            Ok((status, body)) => panic!(
                "a client with the wrong password got a response through {}: status {status}, {} bytes",
                S::NAME,
                body.len()
            ),
        },
    };
    eprintln!("{}: {outcome} after {:.2?}", test_name(), t.elapsed());
    // Anything the server had wrongly let through would have reached the target by now.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        target.connections(),
        0,
        "connections that reached the target"
    );
    assert_eq!(target.requests(), 0, "requests that reached the target");
    // Refusing a client is not a reason to stop serving.
    server.child().assert_running();
    client.child().assert_running();
}

against_both! {
    /// 64 MiB each way, BBR (the client sets no bandwidth).
    download_upload_quelay, download_upload_singbox =>
        download_upload::<Server>(ServerOpts::default(), SbOpts::default())
}

against_both! {
    /// 64 MiB each way with Brutal at 200 Mbit/s each way.
    download_upload_brutal_quelay, download_upload_brutal_singbox =>
        download_upload::<Server>(
            ServerOpts::default(),
            SbOpts { up_down_mbps: Some(200), ..SbOpts::default() },
        )
}

against_both! {
    /// 64 MiB each way, Salamander on both sides.
    salamander_download_upload_quelay, salamander_download_upload_singbox =>
        download_upload::<Server>(
            ServerOpts { obfs: salamander(), ..ServerOpts::default() },
            SbOpts { obfs: salamander(), ..SbOpts::default() },
        )
}

against_both! {
    concurrent_streams_quelay, concurrent_streams_singbox => concurrent_streams::<Server>()
}

against_both! {
    udp_echo_quelay, udp_echo_singbox =>
        udp_echo::<Server>(ServerOpts::default(), SbOpts::default())
}

against_both! {
    /// UDP, Salamander on both sides.
    salamander_udp_echo_quelay, salamander_udp_echo_singbox =>
        udp_echo::<Server>(
            ServerOpts { obfs: salamander(), ..ServerOpts::default() },
            SbOpts { obfs: salamander(), ..SbOpts::default() },
        )
}

against_both! {
    wrong_password_quelay, wrong_password_singbox => wrong_password::<Server>()
}

/// An HTTP/3 answer: status, header fields in the order they came, and the whole body.
pub struct H3Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Sends one HTTP/3 request with `fields` (pseudo-headers first) on `conn`, as a browser
/// would: the client's control stream (SETTINGS), then the request on a new stream. The
/// answer is read to its end within 10 s.
pub async fn h3_request(conn: &quinn::Connection, fields: &[(&str, &str)]) -> H3Answer {
    use quelay::proto::h3::{self, HuffmanPolicy};

    let mut control = conn.open_uni().await.expect("open the control stream");
    control
        .write_all(&h3::client_control_stream())
        .await
        .expect("write SETTINGS");
    let (mut send, mut recv) = conn.open_bi().await.expect("open a request stream");
    send.write_all(&h3::headers_frame(fields, HuffmanPolicy::Always))
        .await
        .expect("write the request");
    send.finish().expect("finish the request");
    let bytes = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("a response within 10 s")
        .expect("read the response");
    let mut reader = h3::ResponseReader::new();
    let resp = reader
        .push(&bytes)
        .expect("an HTTP/3 response")
        .expect("a whole response");
    reader.finish().expect("a complete body");
    H3Answer {
        status: resp.status,
        headers: resp.headers,
        body: reader.body().to_vec(),
    }
}
