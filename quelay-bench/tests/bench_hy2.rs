//! `quelay-bench hy2` against `quelay server`, towards `quelay-bench target`: every scenario
//! runs briefly with `--json` and must measure something without errors; a server that is
//! not there, or that dies mid-run, ends the run promptly with a partial report.

// The relay's shared helpers; `quelay server` is the relay's binary (support::quelay_bin).
// This binary uses neither the HTTP client nor the targets of the shared helpers.
#[allow(unused_imports)]
#[path = "../../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    free_port, tempdir, wait_tcp_port, Child, QuelayServer, ServerOpts, TempDir, PASSWORD,
};

/// How long one benchmark run may take before the test calls it a hang.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// `quelay-bench target` on a free port.
struct Target {
    _child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Target {
    fn start() -> Target {
        let dir = tempdir();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quelay-bench"));
        cmd.args(["target", "--listen", &addr.to_string()]);
        let mut child = Child::spawn("bench-target", cmd, dir.path());
        child.wait_ready("TCP port accepting", Duration::from_secs(10), |_| {
            wait_tcp_port(addr, Duration::from_millis(100))
        });
        Target {
            _child: child,
            addr,
            _dir: dir,
        }
    }
}

/// What a finished `quelay-bench hy2` run left.
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Outcome {
    fn json(&self) -> Value {
        let line = self.stdout.lines().last().unwrap_or("");
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `quelay-bench hy2 --server .. --auth .. --target .. --json ARGS`; a run that takes
/// longer than [`RUN_LIMIT`] is killed and fails the test.
fn bench(server: SocketAddr, target: SocketAddr, args: &[&str]) -> Outcome {
    bench_as(PASSWORD, server, target, args)
}

/// [`bench`] with another password.
fn bench_as(auth: &str, server: SocketAddr, target: SocketAddr, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quelay-bench"));
    cmd.args([
        "hy2",
        "--server",
        &server.to_string(),
        "--sni",
        support::SNI,
    ])
    .args(["--auth", auth, "--target", &target.to_string(), "--json"])
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start quelay-bench hy2");
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < RUN_LIMIT => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("reap quelay-bench hy2");
                panic!(
                    "bench hy2 {args:?} still running after {RUN_LIMIT:?}; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let out = child.wait_with_output().expect("collect output");
    Outcome {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// A server and a target, and a successful run of `args` against them.
fn run_ok(args: &[&str]) -> Value {
    run_ok_with("", args)
}

/// Like [`run_ok`], with `yaml` added to the server's config.
fn run_ok_with(yaml: &str, args: &[&str]) -> Value {
    let server = QuelayServer::start(yaml);
    let target = Target::start();
    let out = bench(support::Hy2Server::addr(&server), target.addr, args);
    let v = out.json();
    assert!(
        out.success,
        "bench hy2 {args:?} failed: {v}\nstderr:\n{}",
        out.stderr
    );
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["partial"], false, "{v}");
    v
}

#[test]
fn bulk_down() {
    let v = run_ok(&[
        "--scenario",
        "bulk-down",
        "--connections",
        "2",
        "--streams",
        "2",
        "--bytes",
        "4000000",
    ]);
    assert_eq!(v["bytes"], 16_000_000, "{v}");
    assert!(v["goodput_bps"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["requests"], 4, "{v}");
}

#[test]
fn bulk_up() {
    let v = run_ok(&[
        "--scenario",
        "bulk-up",
        "--connections",
        "2",
        "--streams",
        "2",
        "--bytes",
        "4000000",
    ]);
    assert_eq!(v["bytes"], 16_000_000, "{v}");
    assert!(v["goodput_bps"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn request_response() {
    let v = run_ok(&[
        "--scenario",
        "rr",
        "--connections",
        "2",
        "--concurrency",
        "50",
        "--size",
        "1024",
        "--duration",
        "2",
    ]);
    // More requests than one connection's initial stream credit: credit comes back.
    assert!(v["requests"].as_u64().unwrap() > 0, "{v}");
    assert!(v["rps"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["latency_us"]["p99"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn request_response_waits_for_stream_credit() {
    // 1500 in flight on one connection whose server grants 1024 streams: the rest wait.
    let v = run_ok(&[
        "--scenario",
        "rr",
        "--connections",
        "1",
        "--concurrency",
        "1500",
        "--size",
        "64",
        "--duration",
        "3",
    ]);
    assert!(v["requests"].as_u64().unwrap() > 1500, "{v}");
}

#[test]
fn connect() {
    let v = run_ok(&[
        "--scenario",
        "connect",
        "--concurrency",
        "4",
        "--duration",
        "2",
    ]);
    assert!(v["handshakes_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["latency_us"]["p50"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn udp_echo() {
    // 3000-byte packets do not fit one datagram: fragmented and reassembled both ways.
    for size in ["200", "3000"] {
        let v = run_ok(&[
            "--scenario",
            "udp",
            "--size",
            size,
            "--rate",
            "500",
            "--duration",
            "2",
        ]);
        let sent = v["udp"]["sent"].as_u64().unwrap();
        assert!(sent > 0, "{v}");
        assert!(v["udp"]["loss"].as_f64().unwrap() < 50.0, "{v}");
    }
}

#[test]
fn no_server_ends_with_a_partial_report() {
    let target = Target::start();
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let out = bench(
        nobody,
        target.addr,
        &["--scenario", "rr", "--duration", "30"],
    );
    assert!(!out.success, "stdout:\n{}", out.stdout);
    assert!(out.took < Duration::from_secs(20), "took {:?}", out.took);
    let v = out.json();
    assert_eq!(v["partial"], true, "{v}");
    assert!(out.stdout.contains("\"partial\":true"), "{}", out.stdout);
    let msg = v["error_messages"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(msg.contains("cannot connect"), "{v}");
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
}

#[test]
fn server_dying_mid_run_ends_with_a_partial_report() {
    let mut server = QuelayServer::start("");
    let target = Target::start();
    let addr = support::Hy2Server::addr(&server);
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_secs(2));
        server.kill();
        server
    });
    let out = bench(
        addr,
        target.addr,
        &[
            "--scenario",
            "rr",
            "--concurrency",
            "20",
            "--duration",
            "60",
        ],
    );
    let _server = killer.join().expect("killer thread");
    assert!(!out.success, "stdout:\n{}", out.stdout);
    assert!(out.took < Duration::from_secs(20), "took {:?}", out.took);
    let v = out.json();
    assert_eq!(v["partial"], true, "{v}");
    assert!(v["requests"].as_u64().unwrap() > 0, "{v}");
    assert!(out.stderr.contains("lost"), "{}", out.stderr);
}

#[test]
fn salamander() {
    let yaml = QuelayServer::yaml_for(&ServerOpts {
        obfs: Some("obfs-secret".into()),
        ..ServerOpts::default()
    });
    for scenario in ["rr", "udp"] {
        let v = run_ok_with(
            &yaml,
            &[
                "--scenario",
                scenario,
                "--obfs",
                "obfs-secret",
                "--duration",
                "1",
                "--size",
                "1500",
            ],
        );
        assert!(
            v["requests"].as_u64().unwrap() + v["udp"]["received"].as_u64().unwrap() > 0,
            "{v}"
        );
    }
}

#[test]
fn wrong_password_ends_with_a_partial_report() {
    let server = QuelayServer::start("");
    let target = Target::start();
    let out = bench_as(
        "not-the-password",
        support::Hy2Server::addr(&server),
        target.addr,
        &["--scenario", "bulk-down", "--bytes", "1000"],
    );
    assert!(!out.success, "stdout:\n{}", out.stdout);
    let v = out.json();
    assert_eq!(v["partial"], true, "{v}");
    assert!(
        out.stderr.contains("authentication refused"),
        "{}",
        out.stderr
    );
}
