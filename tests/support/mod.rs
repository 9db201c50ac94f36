//! Helpers for the integration tests that run real processes over loopback: child processes
//! that die with their owner, ports, scratch directories and certificates (this file); the
//! targets proxied traffic reaches (`targets`); a SOCKS5 client (`socks`) and an HTTP/1.1
//! client (`http`); the Hysteria2 peers, sing-box and quelay (`peers`); and `quelay client`
//! (`client`); a UDP relay that adds delay (`delay`); emulated network paths in namespaces of
//! their own, with a rate limit, delay, jitter and loss, for congestion-control tests (`netns`).
//!
//! Every wait is bounded, and every thread and child process stops when its owner is dropped,
//! including while a failing test unwinds. Traffic stays on 127.0.0.1.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

/// A test against quelay and the same test against the sing-box server: the body names
/// the server type `Server` (`QuelayServer` or `SingboxServer`, both `Hy2Server`).
#[allow(unused_macros)]
macro_rules! against_both {
    ($(#[$doc:meta])* $quelay:ident, $singbox:ident => $body:expr) => {
        $(#[$doc])*
        #[test]
        fn $quelay() {
            type Server = QuelayServer;
            $body
        }
        $(#[$doc])*
        #[test]
        fn $singbox() {
            type Server = SingboxServer;
            $body
        }
    };
}

mod client;
mod delay;
mod http;
mod netns;
mod peers;
mod socks;
mod targets;

// Only the client tests use the client launcher.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use delay::*;
pub use http::*;
// Only the path tests (root, namespaces) use these.
#[allow(unused_imports)]
pub use netns::*;
pub use peers::*;
pub use socks::*;
pub use targets::*;

use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{self, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The workspace root, the relay crate's directory: its tests run with it as their working
/// directory, but helpers do not rely on that. quelay-bench's tests share these helpers from
/// one level down.
pub fn root() -> &'static Path {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if env!("CARGO_PKG_NAME") == "quelay" {
        dir
    } else {
        dir.parent().unwrap_or(dir)
    }
}

/// The quelay binary the peers run: Cargo's `CARGO_BIN_EXE_quelay` in the relay's integration
/// tests; elsewhere (quelay-bench's tests and the examples that reuse this harness, where Cargo
/// does not set it) `$QUELAY_BIN` if set, else the `quelay` built beside the running test
/// (`target/<profile>/quelay`, which `cargo test --workspace` builds), else
/// `target/release/quelay` under the workspace root, resolved at run time. Panics, saying how
/// to build it, when that file is missing.
pub fn quelay_bin() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_quelay") {
        return PathBuf::from(bin);
    }
    // A test binary runs from target/<profile>/deps/.
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("quelay")))
        .filter(|bin| bin.is_file());
    let bin = std::env::var_os("QUELAY_BIN")
        .map(PathBuf::from)
        .or(beside)
        .unwrap_or_else(|| root().join("target/release/quelay"));
    assert!(
        bin.is_file(),
        "{} is missing: build the relay first (cargo build --release -p quelay --bin quelay; \
         cargo test --profile ci --workspace builds it), or set QUELAY_BIN",
        bin.display()
    );
    bin
}

/// The sing-box version the interop tests are written against.
pub const SINGBOX_VERSION: &str = "1.14.4";

/// The sing-box binary (`SINGBOX_VERSION`), installed by `scripts/get-singbox.sh
/// target/peers/bin` once per test binary. Panics with the script's stderr (which says which step failed: pip download,
/// extraction, version check) if it cannot be installed: a missing peer is a failure, not a
/// reason to skip.
pub fn singbox() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = root().join("scripts/get-singbox.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("target/peers/bin")
            .env("SINGBOX_VERSION", SINGBOX_VERSION)
            .current_dir(root())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "installing sing-box with {} failed ({}):\n{stderr}",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or("").trim();
        let bin = root().join(last);
        assert!(
            bin.is_file(),
            "get-singbox.sh succeeded but printed {last:?}, which is not a file; its stderr:\n{stderr}"
        );
        bin
    })
    .clone()
}

/// A child process whose stdout and stderr go to files, killed (SIGKILL) and reaped on drop.
/// If the dropping thread is panicking, the tail of its stderr is printed to help the reader.
pub struct Child {
    name: String,
    proc: process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Child {
    /// Spawns `cmd` with stdin closed and stdout/stderr in `dir/NAME.stdout` / `dir/NAME.stderr`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Child {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let out = File::create(&stdout)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stdout.display()));
        let err = File::create(&stderr)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr.display()));
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let proc = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Child {
            name: name.to_owned(),
            proc,
            stdout,
            stderr,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.proc.id()
    }

    /// Everything the child has written to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything the child has written to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Whether the child is still running (reaping it if it has exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.proc.try_wait(), Ok(None))
    }

    /// Sends signal `sig` (a `libc::SIG*`) to the child. A child already reaped is left alone:
    /// its pid may belong to another process by now.
    pub fn signal(&mut self, sig: i32) {
        if !self.is_running() {
            return;
        }
        let pid = i32::try_from(self.proc.id()).expect("pid fits in i32");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}) for {}: {}",
            self.name,
            io::Error::last_os_error()
        );
    }

    /// SIGKILL, then reap: the child is gone when this returns.
    pub fn kill(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }

    /// Sends `sig` and waits up to `timeout` for the child to exit; returns how it exited.
    /// Panics, quoting its output, if it is still running then (after a SIGKILL).
    pub fn stop_with(&mut self, sig: i32, timeout: Duration) -> ExitStatus {
        self.signal(sig);
        let deadline = Instant::now() + timeout;
        loop {
            match self.proc.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    self.kill();
                    panic!(
                        "{} still running {timeout:?} after signal {sig}; killed it. stderr:\n{}",
                        self.name,
                        tail(&self.stderr(), 40)
                    );
                }
                Err(e) => panic!("cannot poll {}: {e}", self.name),
            }
        }
    }

    /// Panics, quoting the child's output, if it has exited.
    pub fn assert_running(&mut self) {
        match self.proc.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => panic!(
                "{} exited ({status}); stdout:\n{}\nstderr:\n{}",
                self.name,
                tail(&self.stdout(), 40),
                tail(&self.stderr(), 40)
            ),
            Err(e) => panic!("cannot poll {}: {e}", self.name),
        }
    }

    /// Polls `ready` every 20 ms until it holds. Panics, quoting the child's output, if the
    /// child exits first or `timeout` passes.
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, ready: impl FnMut(&Child) -> bool) {
        if !self.wait_ready_or_port_taken(what, timeout, ready) {
            self.assert_running(); // it exited: fails with its output
        }
    }

    /// `wait_ready`, except that a child that exits because a port it was given is in use
    /// (taken between [`free_port`] and the child's bind, by any process, as the ephemeral
    /// port of a connection, say) gives `false`: the caller starts it again on other ports.
    pub fn wait_ready_or_port_taken(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Child) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running()
                && (self.stderr() + &self.stdout()).contains("address already in use")
            {
                eprintln!(
                    "{}: a port it was given was taken; starting it again",
                    self.name
                );
                return false;
            }
            self.assert_running();
            if ready(self) {
                return true;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not ready after {timeout:?}: {what}; stdout:\n{}\nstderr:\n{}",
                    self.name,
                    tail(&self.stdout(), 40),
                    tail(&self.stderr(), 40)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // A child that died before its owner let go of it is worth a line in a failure report.
        let state = match self.proc.try_wait() {
            Ok(Some(status)) => format!("had already exited: {status}"),
            _ => "was running".to_owned(),
        };
        // SIGKILL cannot be caught, so the wait below is bounded.
        let _ = self.proc.kill();
        let _ = self.proc.wait();
        if thread::panicking() {
            eprintln!(
                "--- {} (pid {}, {state}) stderr, last lines ({}) ---\n{}",
                self.name,
                self.proc.id(),
                self.stderr.display(),
                tail(&self.stderr(), 60)
            );
        }
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port that was free for both TCP and UDP on 127.0.0.1 a moment ago.
///
/// Racy by nature: the port is released before the caller's child binds it, so another
/// process could take it in between. Linux hands out bind(0) ports at random from a large
/// range, which makes that rare; a collision shows up as a child failing to bind, not as a
/// wrong result.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP socket on 127.0.0.1:0");
        let port = tcp.local_addr().expect("local address").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on 127.0.0.1 in 100 tries");
}

/// True once something accepts TCP connections on `addr`, polling until `timeout`.
pub fn wait_tcp_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// True once a UDP socket is bound to `addr`'s port, polling until `timeout`.
pub fn wait_udp_ready(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if udp_bound(addr.port()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether any UDP socket (IPv4 or IPv6, any local address) is bound to `port`, from
/// /proc/net/udp{,6}: the `local_address` column is `HEXIP:HEXPORT`.
pub fn udp_bound(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|table| {
        fs::read_to_string(table).is_ok_and(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| line.split_whitespace().nth(1))
                .any(|local| local.ends_with(&want))
        })
    })
}

/// Whether a UDP socket is bound to exactly `addr`, from /proc/net/udp{,6}: the kernel
/// writes an address as its 32-bit words in host byte order, in hex.
pub fn udp_bound_at(addr: SocketAddr) -> bool {
    let (table, octets) = match addr.ip() {
        std::net::IpAddr::V4(ip) => ("/proc/net/udp", ip.octets().to_vec()),
        std::net::IpAddr::V6(ip) => ("/proc/net/udp6", ip.octets().to_vec()),
    };
    let mut want: String = octets
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    want.push_str(&format!(":{:04X}", addr.port()));
    fs::read_to_string(table).is_ok_and(|text| {
        text.lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().nth(1))
            .any(|local| local == want)
    })
}

/// Whether a TCP socket (IPv4 or IPv6, any local address) listens on `port`, from
/// /proc/net/tcp{,6} (state 0A is LISTEN). Unlike connecting to it, this leaves no trace at
/// the listener: a forwarder would relay a probe connection to its target.
pub fn tcp_listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let cols: Vec<&str> = line.split_whitespace().take(4).collect();
                cols.len() == 4 && cols[1].ends_with(&want) && cols[3] == "0A"
            })
        })
    })
}

/// The soft limit on open files of this process, from /proc/self/limits.
pub fn open_files_limit() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// Raises this process's RLIMIT_NOFILE (soft, and hard if it is lower, which needs
/// CAP_SYS_RESOURCE) to at least `want`; child processes started afterwards inherit it.
/// Panics, naming the limits, if that is not allowed.
pub fn raise_open_files(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
    if lim.rlim_cur >= want {
        return;
    }
    let old = (lim.rlim_cur, lim.rlim_max);
    lim.rlim_cur = want;
    lim.rlim_max = lim.rlim_max.max(want);
    // SAFETY: as above.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(
        rc,
        0,
        "cannot raise RLIMIT_NOFILE from {old:?} (soft, hard) to {want}: {} (raising the hard \
         limit needs CAP_SYS_RESOURCE)",
        io::Error::last_os_error()
    );
}

/// A unique scratch directory under `target/test-tmp/`, removed on drop unless the dropping
/// thread is panicking or `QUELAY_TEST_KEEP` is set: then it is kept (and its path printed)
/// so the logs in it can be read.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() || std::env::var_os("QUELAY_TEST_KEEP").is_some() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

pub fn tempdir() -> TempDir {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let base = root().join("target/test-tmp");
    fs::create_dir_all(&base).unwrap_or_else(|e| panic!("cannot create {}: {e}", base.display()));
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(Path::file_stem)
        .and_then(|s| s.to_str())
        .unwrap_or("test");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..100 {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{stem}-{}-{seq}-{nanos:09}", process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return TempDir(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
    panic!("no unique directory under {} in 100 tries", base.display());
}

/// The server name in the test certificate, and the SNI clients send.
pub const SNI: &str = "hy2.test";

/// Writes a self-signed ECDSA P-256 certificate for DNS:hy2.test and IP:127.0.0.1 (Ed25519
/// breaks official Hysteria2 clients) to `dir/cert.pem` and its PKCS#8 key to `dir/key.pem`.
pub fn write_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec![SNI.to_owned(), "127.0.0.1".to_owned()])
        .expect("certificate parameters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SNI);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    fs::write(&cert_path, cert.pem()).expect("write cert.pem");
    fs::write(&key_path, key.serialize_pem()).expect("write key.pem");
    (cert_path, key_path)
}

/// Bytes in a MiB.
pub const MIB: usize = 1 << 20;

/// The running test's name (libtest names each test's thread after it), to tell apart the
/// progress lines of tests running in parallel.
pub fn test_name() -> String {
    thread::current().name().unwrap_or("?").to_owned()
}

pub fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

/// Checks the answer of the HTTP target's `/sha256` to an upload of `bytes` bytes whose
/// SHA-256 is `want`, and prints how long it took.
pub fn check_upload(status: u16, body: &[u8], want: &str, bytes: usize, took: Duration) {
    assert_eq!(status, 200, "upload status");
    assert_eq!(
        String::from_utf8_lossy(body).trim(),
        want,
        "SHA-256 of the uploaded body as the target saw it"
    );
    eprintln!(
        "{}: upload {} MiB in {took:.2?} ({:.0} MiB/s)",
        test_name(),
        bytes / MIB,
        mib_per_s(bytes, took)
    );
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// Starts `quelay server` in this process from `yaml`, which must parse without warnings.
pub fn start_in_process(yaml: &str) -> quelay::server::run::Server {
    let (cfg, warnings) = quelay::config::parse_server(yaml, "test.yaml").expect("config parses");
    assert!(warnings.is_empty(), "config warnings: {warnings:?}");
    quelay::server::run::start(&cfg).expect("server starts")
}

/// Checks that no server worker died (a panic ends its thread), then stops and joins them.
pub fn stop_in_process(server: quelay::server::run::Server) {
    assert!(
        !server.group.is_finished(),
        "a server worker left its loop during the test (panic?)"
    );
    server.group.stop();
    server
        .group
        .join()
        .expect("server workers exit cleanly (none panicked)");
}

/// The server's Prometheus page.
pub fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read metrics");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// The value of `series` (with its labels), or the sum over every label set of a bare name.
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.starts_with(series) && {
                let rest = &l[series.len()..];
                rest.starts_with(' ') || (!series.contains('{') && rest.starts_with('{'))
            }
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
