//! Operating a running `quelay server`: the traffic-stats API (`/traffic`, `/online`,
//! `/kick`, `/dump/streams`, the secret), SIGHUP reloads and SIGTERM drains. Real processes
//! over 127.0.0.1: the server with a config this file writes (and rewrites), `quelay client`
//! as the Hysteria2 client, echo targets.

#[allow(unused_imports)]
mod support;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    free_port, socks5_connect, tail, tempdir, udp_bound, wait_tcp_port, write_cert, Child,
    ClientOpts, QuelayClient, SbOpts, SingboxClient, Socks5Udp, TcpEcho, TempDir, UdpEcho,
};

const SECRET: &str = "s3cret-token";
const START: Duration = Duration::from_secs(20);

/// `quelay server` with `auth.type: userpass`, the traffic API on a free port, and a config
/// file the test may rewrite (then SIGHUP).
struct OpsServer {
    child: Child,
    addr: SocketAddr,
    api: SocketAddr,
    config: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    _dir: TempDir,
}

impl OpsServer {
    fn start(users: &[(&str, &str)], args: &[&str]) -> OpsServer {
        let dir = tempdir();
        let (cert, key) = write_cert(&dir);
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join("server.yaml");
        let text = config_text(addr, api, &cert, &key, users, "");
        fs::write(&config, text).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quelay"));
        cmd.arg("server")
            .arg("-c")
            .arg(&config)
            .args(args)
            .env("QUELAY_LOG", "info");
        let mut child = Child::spawn("quelay-server", cmd, dir.path());
        child.wait_ready("UDP and API ports", START, |_| {
            udp_bound(addr.port()) && wait_tcp_port(api, Duration::from_millis(100))
        });
        OpsServer {
            child,
            addr,
            api,
            config,
            cert,
            key,
            _dir: dir,
        }
    }

    fn write_config(&self, users: &[(&str, &str)]) {
        self.write_config_with(users, "");
    }

    /// The config with `extra` appended at top level.
    fn write_config_with(&self, users: &[(&str, &str)], extra: &str) {
        let text = config_text(self.addr, self.api, &self.cert, &self.key, users, extra);
        fs::write(&self.config, text).expect("write server.yaml");
    }

    /// An HTTP request to the traffic API: (status, body).
    fn api(&self, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
        http(self.api, method, path, auth, body).expect("traffic API request")
    }

    /// GET with the right secret, parsed as JSON.
    fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.api("GET", path, Some(SECRET), "");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Waits until the server log contains `needle`.
    fn wait_log(&mut self, needle: &str) {
        let what = format!("server log line containing {needle:?}");
        self.child.wait_ready(&what, Duration::from_secs(10), |c| {
            c.stderr().contains(needle)
        });
    }
}

fn config_text(
    addr: SocketAddr,
    api: SocketAddr,
    cert: &Path,
    key: &Path,
    users: &[(&str, &str)],
    extra: &str,
) -> String {
    let mut y = format!(
        "listen: {addr}\ntls:\n  cert: \"{}\"\n  key: \"{}\"\nauth:\n  type: userpass\n  userpass:\n",
        cert.display(),
        key.display()
    );
    for (u, p) in users {
        y.push_str(&format!("    {u}: \"{p}\"\n"));
    }
    y.push_str(&format!(
        "outboundGuard:\n  allowLoopback: true\ntrafficStats:\n  listen: {api}\n  secret: {SECRET}\n"
    ));
    y.push_str(extra);
    y
}

/// A minimal HTTP/1.1 client (one request per connection).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad response: {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn client(server: &OpsServer, auth: &str) -> QuelayClient {
    QuelayClient::start(
        server.addr,
        &ClientOpts {
            password: auth.to_owned(),
            // One worker: one QUIC connection, so `/online` counts are exact.
            extra: "engine:\n  workers: 1\n".to_owned(),
            ..ClientOpts::default()
        },
    )
}

/// A stream to the echo target through `c`'s SOCKS5 proxy.
fn echo_stream(c: &QuelayClient, echo: &TcpEcho) -> io::Result<TcpStream> {
    let a = echo.addr();
    socks5_connect(c.socks_addr(), &a.ip().to_string(), a.port())
}

/// Sends `n` bytes and reads them back.
fn roundtrip(s: &mut TcpStream, n: usize) -> io::Result<()> {
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0; n];
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || w.write_all(&data).map(|_| data));
    s.read_exact(&mut back)?;
    let data = writer
        .join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    if back != data {
        return Err(io::Error::other("echo differs"));
    }
    Ok(())
}

/// Sends `count` datagrams of `payload` to `target` through the association, one at a time,
/// and returns how many were echoed within 3 s each.
fn udp_echoes(udp: &Socks5Udp, target: SocketAddr, count: usize, payload: &[u8]) -> usize {
    (0..count)
        .filter(|_| {
            udp.send_to(target, payload).expect("send");
            udp.recv_from(Duration::from_secs(3)).is_ok()
        })
        .count()
}

/// Waits (up to `timeout`) for the server, already signalled, to exit with status 0 after
/// logging `needle`.
fn exits_0_saying(server: &mut OpsServer, timeout: Duration, needle: &str) {
    let status = server.child.stop_with(0, timeout);
    let stderr = server.child.stderr();
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        tail(&stderr, 40)
    );
    assert!(stderr.contains(needle), "stderr:\n{}", tail(&stderr, 40));
}

/// Whether a live echo stream stops working (EOF or an error) within 10 s.
fn stream_fails(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut buf = [0; 16];
        match s.write_all(b"ping").and_then(|_| s.read(&mut buf)) {
            Ok(0) | Err(_) => return true,
            Ok(_) if Instant::now() > deadline => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn user_counts(v: &Value, user: &str) -> (u64, u64) {
    let u = &v[user];
    (u["tx"].as_u64().unwrap_or(0), u["rx"].as_u64().unwrap_or(0))
}

#[test]
fn traffic_online_dump_and_secret() {
    let mut server = OpsServer::start(&[("alice", "pw-a"), ("bob", "pw-b")], &[]);
    let echo = TcpEcho::start();
    let uecho = UdpEcho::start();
    let c = client(&server, "alice:pw-a");

    // Secret: missing or wrong is 401, on every endpoint.
    for auth in [
        None,
        Some("wrong"),
        Some("s3cret"),
        Some("Bearer s3cret-token"),
    ] {
        for (m, p) in [("GET", "/traffic"), ("GET", "/online"), ("POST", "/kick")] {
            let (status, _) = server.api(m, p, auth, "[]");
            assert_eq!(status, 401, "{m} {p} with {auth:?}");
        }
    }
    assert_eq!(server.api("GET", "/nope", Some(SECRET), "").0, 404);

    const N: usize = 300_000;
    let mut s = echo_stream(&c, &echo).expect("stream through the client");
    roundtrip(&mut s, N).expect("echo");

    // UDP: 20 datagrams of 500 bytes, echoed.
    let udp = Socks5Udp::associate(c.socks_addr()).expect("UDP associate");
    let echoed = udp_echoes(&udp, uecho.addr(), 20, &[7u8; 500]);
    assert!(echoed >= 15, "only {echoed} UDP echoes");

    // While the stream is open: online and the dump show it.
    let online = server.get_json("/online");
    assert_eq!(online["alice"], 1, "online: {online}");
    assert!(online.get("bob").is_none(), "online: {online}");
    let dump = server.get_json("/dump/streams");
    let streams = dump["streams"].as_array().expect("streams array");
    let mine = streams
        .iter()
        .find(|st| st["req_addr"] == echo.addr().to_string())
        .unwrap_or_else(|| panic!("no stream to the echo target in {dump}"));
    assert_eq!(mine["auth"], "alice");
    assert_eq!(mine["state"], "estab");
    assert_eq!(mine["tx"], N as u64);
    assert_eq!(mine["rx"], N as u64);
    assert!(mine["initial_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // Payload bytes only: TCP exactly, UDP payloads as sent and as echoed.
    let udp_tx = 20 * 500;
    let udp_rx = echoed * 500;
    let t = server.get_json("/traffic");
    let (tx, rx) = user_counts(&t, "alice");
    assert_eq!(tx, (N + udp_tx) as u64, "traffic: {t}");
    assert_eq!(rx, (N + udp_rx) as u64, "traffic: {t}");
    assert_eq!(user_counts(&t, "bob"), (0, 0), "traffic: {t}");

    // ?clear=1 answers the counts, then starts over.
    let cleared = server.get_json("/traffic?clear=1");
    assert_eq!(user_counts(&cleared, "alice"), (tx, rx));
    roundtrip(&mut s, 1000).expect("echo after clear");
    let after = server.get_json("/traffic");
    assert_eq!(
        user_counts(&after, "alice"),
        (1000, 1000),
        "after clear: {after}"
    );
    server.child.assert_running();
}

/// sing-box sends the first payload bytes with the TCPRequest: they count too.
#[test]
fn traffic_counts_a_singbox_client_exactly() {
    let server = OpsServer::start(&[("carol", "pw-c")], &[]);
    let echo = TcpEcho::start();
    let uecho = UdpEcho::start();
    let sb = SingboxClient::start(server.addr, "carol:pw-c", &SbOpts::default());
    const N: usize = 1 << 20;
    let a = echo.addr();
    let mut s = socks5_connect(sb.socks_addr(), &a.ip().to_string(), a.port()).expect("stream");
    roundtrip(&mut s, N).expect("echo");
    let udp = Socks5Udp::associate(sb.socks_addr()).expect("UDP associate");
    let echoed = udp_echoes(&udp, uecho.addr(), 10, &[9u8; 700]);
    assert!(echoed >= 8, "only {echoed} UDP echoes");
    let t = server.get_json("/traffic");
    assert_eq!(
        user_counts(&t, "carol"),
        ((N + 10 * 700) as u64, (N + echoed * 700) as u64),
        "traffic: {t}"
    );
    assert_eq!(server.get_json("/online")["carol"], 1);
}

#[test]
fn kick_closes_the_users_connections() {
    let mut server = OpsServer::start(&[("alice", "pw-a"), ("bob", "pw-b")], &[]);
    let echo = TcpEcho::start();
    let alice = client(&server, "alice:pw-a");
    let bob = client(&server, "bob:pw-b");
    let mut sa = echo_stream(&alice, &echo).expect("alice's stream");
    let mut sb = echo_stream(&bob, &echo).expect("bob's stream");
    roundtrip(&mut sa, 10_000).expect("alice echo");
    roundtrip(&mut sb, 10_000).expect("bob echo");
    let online = server.get_json("/online");
    assert_eq!(
        (online["alice"].as_u64(), online["bob"].as_u64()),
        (Some(1), Some(1))
    );

    // A malformed body is a 400 and kicks nobody.
    assert_eq!(
        server.api("POST", "/kick", Some(SECRET), "{\"alice\"").0,
        400
    );
    assert_eq!(server.api("POST", "/kick", Some(SECRET), "[1, 2]").0, 400);
    let (status, body) = server.api("POST", "/kick", Some(SECRET), "[\"alice\"]");
    assert_eq!(status, 200, "{body}");
    server.wait_log("kicking");

    // Alice's stream in progress fails; Bob's goes on.
    assert!(
        stream_fails(&mut sa),
        "alice's stream still works after the kick"
    );
    roundtrip(&mut sb, 10_000).expect("bob's stream after alice's kick");
    let online = server.get_json("/online");
    assert_eq!(online["bob"], 1, "online: {online}");
    // Kicked clients may reconnect (the reference server behaves the same); a new stream
    // of alice's works again through a new connection.
    let mut again = echo_stream(&alice, &echo).expect("alice reconnects");
    roundtrip(&mut again, 1000).expect("alice echo after reconnect");
    server.child.assert_running();
}

/// Runs `quelay cluster -c FILE ARGS`: (exit code, stdout, stderr).
fn quelay_cluster(file: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quelay"))
        .arg("cluster")
        .arg("-c")
        .arg(file)
        .args(args)
        .output()
        .expect("run quelay cluster");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two nodes and a third that does not answer: `quelay cluster stats` sums the nodes'
/// `/traffic` and `/online` per user, shows each node's own figures, and names the silent
/// node (exit 1) without hiding the others; a wrong secret is named as such. `quelay
/// cluster kick` closes the user's connections on every node and no one else's.
#[test]
fn cluster_stats_merge_the_nodes_and_a_kick_reaches_every_node() {
    let users = [("alice", "pw-a"), ("bob", "pw-b")];
    let mut nodes = [OpsServer::start(&users, &[]), OpsServer::start(&users, &[])];
    let echo = TcpEcho::start();
    let alice: Vec<QuelayClient> = nodes.iter().map(|n| client(n, "alice:pw-a")).collect();
    let bob = client(&nodes[1], "bob:pw-b");
    let mut alice_streams: Vec<TcpStream> = alice
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut s = echo_stream(c, &echo).expect("alice's stream");
            roundtrip(&mut s, 10_000 * (i + 1)).expect("alice echo");
            s
        })
        .collect();
    let mut bob_stream = echo_stream(&bob, &echo).expect("bob's stream");
    roundtrip(&mut bob_stream, 5_000).expect("bob echo");

    let dir = tempdir();
    let node_lines: String = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("  - {{name: n{i}, api: \"{}\"}}\n", n.api))
        .collect();
    let file = dir.join("cluster.yaml");
    fs::write(&file, format!("nodes:\n{node_lines}secret: {SECRET}\n")).expect("write");
    let (code, out, err) = quelay_cluster(&file, &["stats", "--json"]);
    assert_eq!(code, 0, "stats: {out}{err}");
    let merged: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let own: Vec<(Value, Value)> = nodes
        .iter()
        .map(|n| (n.get_json("/traffic"), n.get_json("/online")))
        .collect();
    for user in ["alice", "bob"] {
        let sum = own.iter().fold((0, 0), |acc, (t, _)| {
            let (tx, rx) = user_counts(t, user);
            (acc.0 + tx, acc.1 + rx)
        });
        assert_eq!(
            user_counts(&merged["traffic"], user),
            sum,
            "{user}: {merged}"
        );
    }
    assert!(
        user_counts(&merged["traffic"], "alice").0 >= 30_000,
        "{merged}"
    );
    assert_eq!(
        (&merged["online"]["alice"], &merged["online"]["bob"]),
        (&Value::from(2), &Value::from(1)),
        "{merged}"
    );
    for (i, (t, o)) in own.iter().enumerate() {
        assert_eq!(&merged["nodes"][format!("n{i}")]["traffic"], t, "{merged}");
        assert_eq!(&merged["nodes"][format!("n{i}")]["online"], o, "{merged}");
    }

    // A node that does not answer, and one with the wrong secret: both named, exit 1, and
    // the answering node's figures still shown.
    let silent = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let partial = dir.join("partial.yaml");
    fs::write(
        &partial,
        format!(
            "nodes:\n  - {{name: n1, api: \"{}\"}}\n  - {{name: silent, api: \"{silent}\"}}\n  \
             - {{name: wrong, api: \"{}\", secret: nope}}\nsecret: {SECRET}\ntimeout: 2s\n",
            nodes[1].api, nodes[0].api
        ),
    )
    .expect("write");
    let (code, out, err) = quelay_cluster(&partial, &["stats"]);
    assert_eq!(code, 1, "stats with a silent node: {out}{err}");
    assert!(err.contains("not every node answered"), "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}: {out}"))
            .to_owned()
    };
    assert!(line("silent").contains("no answer"), "{out}");
    assert!(line("wrong").contains("401"), "{out}");
    assert!(line("n1").contains("ok"), "{out}");
    assert_eq!(
        line("bob").split_whitespace().last(),
        Some("1"),
        "bob's connection on n1: {out}"
    );

    // The kick reaches both nodes: alice's streams on each fail, bob's goes on.
    let (code, out, err) = quelay_cluster(&file, &["kick", "alice"]);
    assert_eq!(code, 0, "kick: {out}{err}");
    assert!(
        out.contains("n0: kicked") && out.contains("n1: kicked"),
        "{out}"
    );
    for n in &mut nodes {
        n.wait_log("kicking");
    }
    for (i, s) in alice_streams.iter_mut().enumerate() {
        assert!(stream_fails(s), "alice's stream on node {i} still works");
    }
    roundtrip(&mut bob_stream, 5_000).expect("bob's stream after alice's kick");
}

#[test]
fn sighup_reloads_passwords_and_keeps_live_connections() {
    let mut server = OpsServer::start(&[("alice", "old-pw")], &[]);
    let echo = TcpEcho::start();
    let old = client(&server, "alice:old-pw");
    let mut live = echo_stream(&old, &echo).expect("stream with the old password");
    roundtrip(&mut live, 10_000).expect("echo before reload");

    server.write_config(&[("alice", "new-pw")]);
    server.child.signal(libc::SIGHUP);
    server.wait_log("reloaded");

    // The live connection and stream continue.
    roundtrip(&mut live, 10_000).expect("echo on the old stream after reload");
    let mut s2 = echo_stream(&old, &echo).expect("new stream on the old connection");
    roundtrip(&mut s2, 1000).expect("echo on a new stream of the old connection");

    // New connections need the new password.
    let fresh_old = client(&server, "alice:old-pw");
    assert!(
        echo_stream(&fresh_old, &echo)
            .and_then(|mut s| roundtrip(&mut s, 100))
            .is_err(),
        "a new connection with the old password was let in"
    );
    let fresh_new = client(&server, "alice:new-pw");
    let mut s3 = echo_stream(&fresh_new, &echo).expect("new connection, new password");
    roundtrip(&mut s3, 1000).expect("echo with the new password");

    // A new certificate (same paths, new files) is used for new handshakes.
    let other = tempdir();
    let (cert2, key2) = write_cert(&other);
    fs::copy(&cert2, &server.cert).unwrap();
    fs::copy(&key2, &server.key).unwrap();
    server.child.signal(libc::SIGHUP);
    server.wait_log("new certificate");
    let after_cert = client(&server, "alice:new-pw");
    let mut s5 = echo_stream(&after_cert, &echo).expect("handshake with the new certificate");
    roundtrip(&mut s5, 1000).expect("echo after the certificate reload");
    roundtrip(&mut live, 1000).expect("the old stream after the certificate reload");

    // An invalid config is rejected with the reason; the running one stays.
    fs::write(&server.config, "listen: [this is not\n").unwrap();
    server.child.signal(libc::SIGHUP);
    server.wait_log("rejected");
    let fresh_new2 = client(&server, "alice:new-pw");
    let mut s4 = echo_stream(&fresh_new2, &echo).expect("new password after a bad reload");
    roundtrip(&mut s4, 1000).expect("echo after a bad reload");
    server.child.assert_running();
}

/// A reload that removes a user closes that user's connections at once; the others' live
/// streams go on.
#[test]
fn sighup_closes_the_connections_of_removed_users() {
    let mut server = OpsServer::start(&[("alice", "pw-a"), ("bob", "pw-b")], &[]);
    let echo = TcpEcho::start();
    let alice = client(&server, "alice:pw-a");
    let bob = client(&server, "bob:pw-b");
    let mut sa = echo_stream(&alice, &echo).expect("alice's stream");
    let mut sb = echo_stream(&bob, &echo).expect("bob's stream");
    roundtrip(&mut sa, 10_000).expect("alice echo");
    roundtrip(&mut sb, 10_000).expect("bob echo");

    server.write_config(&[("alice", "pw-a")]);
    server.child.signal(libc::SIGHUP);
    server.wait_log("removed users");
    assert!(
        stream_fails(&mut sb),
        "bob's stream still works after his removal"
    );
    roundtrip(&mut sa, 10_000).expect("alice's stream after bob's removal");
    assert!(
        echo_stream(&bob, &echo)
            .and_then(|mut s| roundtrip(&mut s, 100))
            .is_err(),
        "bob got back in after his removal"
    );
    assert_eq!(server.get_json("/online")["alice"], 1);
    server.child.assert_running();
}

#[test]
fn sigterm_drains_live_streams_then_exits_0() {
    let mut server = OpsServer::start(&[("alice", "pw")], &["--drain-timeout", "15"]);
    let echo = TcpEcho::start();
    let c = client(&server, "alice:pw");
    let mut s = echo_stream(&c, &echo).expect("stream");
    roundtrip(&mut s, 1000).expect("echo");

    // A stream that keeps going for about two seconds after SIGTERM, then closes.
    let worker = std::thread::spawn(move || -> io::Result<usize> {
        let mut done = 0;
        for _ in 0..20 {
            roundtrip(&mut s, 20_000)?;
            done += 20_000;
            std::thread::sleep(Duration::from_millis(100));
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(done)
    });
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    server.child.signal(libc::SIGTERM);
    server.wait_log("draining");

    // New connections are refused while draining.
    let late = client(&server, "alice:pw");
    assert!(
        echo_stream(&late, &echo)
            .and_then(|mut s| roundtrip(&mut s, 100))
            .is_err(),
        "a new connection got through while draining"
    );

    let moved = worker
        .join()
        .expect("stream thread")
        .expect("the live stream completes");
    assert_eq!(moved, 400_000);
    exits_0_saying(&mut server, Duration::from_secs(15), "drained in");
    assert!(
        t0.elapsed() < Duration::from_secs(14),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn sigterm_closes_idle_streams_at_the_drain_deadline() {
    let mut server = OpsServer::start(&[("alice", "pw")], &["--drain-timeout", "1"]);
    let echo = TcpEcho::start();
    let c = client(&server, "alice:pw");
    let mut s = echo_stream(&c, &echo).expect("stream");
    roundtrip(&mut s, 1000).expect("echo");
    let t0 = Instant::now();
    server.child.signal(libc::SIGTERM);
    exits_0_saying(&mut server, Duration::from_secs(10), "drain timeout");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // The stream is closed once the server is gone.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0; 8];
    let r = s.write_all(b"x").and_then(|_| s.read(&mut buf));
    assert!(matches!(r, Ok(0) | Err(_)), "stream still answers: {r:?}");
}

#[test]
fn sighup_applies_new_limits() {
    let mut server = OpsServer::start(&[("alice", "pw")], &[]);
    let echo = TcpEcho::start();
    let c = client(&server, "alice:pw");
    server.write_config_with(&[("alice", "pw")], "limits:\n  maxStreamsPerUser: 1\n");
    server.child.signal(libc::SIGHUP);
    server.wait_log("reloaded");

    let mut first = echo_stream(&c, &echo).expect("first stream");
    roundtrip(&mut first, 1000).expect("echo");
    // A second stream waits for the first one's permit (it is parked, not failed).
    let (socks, target) = (c.socks_addr(), echo.addr());
    let second = std::thread::spawn(move || -> io::Result<Instant> {
        let mut s = socks5_connect(socks, &target.ip().to_string(), target.port())?;
        roundtrip(&mut s, 1000)?;
        Ok(Instant::now())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !second.is_finished(),
        "a second stream ran despite maxStreamsPerUser: 1"
    );
    let released = Instant::now();
    drop(first);
    let done = second
        .join()
        .expect("second stream thread")
        .expect("the second stream runs once the first is closed");
    assert!(done >= released);
    server.child.assert_running();
}

/// A log written to a file (or a pipe, or journald) carries no ANSI colour codes.
#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let mut server = OpsServer::start(&[("alice", "pa")], &[]);
    let mut c = client(&server, "alice:pa");
    let echo = TcpEcho::start();
    let mut s = echo_stream(&c, &echo).expect("a stream through the relay");
    roundtrip(&mut s, 1000).expect("a round trip");
    drop(s);
    c.stop();
    server.child.signal(libc::SIGTERM);
    let log = server.child.stderr();
    assert!(
        log.contains("INFO"),
        "the server logged at info level: {log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "the log has escape sequences: {log:?}"
    );
}

/// A worker that panics takes the process down at once, with one log line that says so and
/// exit status 70, so that systemd (`Restart=on-failure`) restarts the whole server.
#[test]
fn a_panicking_worker_ends_the_process_with_a_clear_line() {
    let dir = tempdir();
    let (cert, key) = write_cert(&dir);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.join("server.yaml");
    let text = format!(
        "listen: {addr}\ntls: {{cert: \"{}\", key: \"{}\"}}\nauth: {{type: password, password: pw}}\n\
         engine: {{workers: 2}}\n",
        cert.display(),
        key.display()
    );
    fs::write(&config, text).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quelay"));
    cmd.arg("server")
        .arg("-c")
        .arg(&config)
        .env("QUELAY_LOG", "info")
        .env(quelay::worker::FAULT_PANIC_ENV, "1");
    let mut child = Child::spawn("quelay-server", cmd, dir.path());
    let status = child.stop_with(0, Duration::from_secs(10));
    let log = child.stderr();
    assert_eq!(
        status.code(),
        Some(quelay::worker::PANIC_EXIT),
        "exit status {status:?}; log: {log}"
    );
    assert!(
        log.contains("thread quelay-w1 panicked") && log.contains("service manager restarts"),
        "no clear line in the log: {log}"
    );
}
