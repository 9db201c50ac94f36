//! `quelay client` as a child process: writes its `client.yaml` (the official Hysteria2
//! client's keys) or passes a share URI, waits until its local listeners are up (seen in
//! /proc, not probed: a probe would be relayed), and stops it
//! with SIGTERM, returning its `pool stats:` line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::peers::yaml_str;
use super::{free_port, tail, tcp_listening, tempdir, udp_bound, Child, TempDir, PASSWORD, SNI};

/// How long the client may take to open its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the client may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The keys of the `pool stats:` line, all of which must be there.
pub const POOL_STATS_KEYS: [&str; 9] = [
    "connections_opened",
    "peak_connections",
    "streams_opened",
    "streams_waited",
    "wait_max_ms",
    "wait_p50_ms",
    "wait_p99_ms",
    "refused",
    "reconnects",
];

/// A local proxy listener (`socks5` or `http`) of the client.
#[derive(Clone, Debug, Default)]
pub struct ProxyOpts {
    /// `username` and `password` local applications must present.
    pub auth: Option<(String, String)>,
}

/// What `QuelayClient::start` writes into `client.yaml`. Listen ports are picked free.
#[derive(Clone, Debug)]
pub struct ClientOpts {
    /// `auth`.
    pub password: String,
    /// Salamander password (`obfs`).
    pub obfs: Option<String>,
    /// `socks5`, on by default.
    pub socks5: Option<ProxyOpts>,
    /// `http`.
    pub http: Option<ProxyOpts>,
    /// `tcpForwarding`: one local port for each of these remotes.
    pub tcp_forwarding: Vec<SocketAddr>,
    /// `udpForwarding`: one local port for each of these remotes.
    pub udp_forwarding: Vec<SocketAddr>,
    /// Appended verbatim at top level: `quic`, `pool`, `engine`...
    pub extra: String,
    /// Environment variables of the client process (on top of the test's own).
    pub env: Vec<(String, String)>,
}

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            password: PASSWORD.to_owned(),
            obfs: None,
            socks5: Some(ProxyOpts::default()),
            http: None,
            tcp_forwarding: Vec::new(),
            udp_forwarding: Vec::new(),
            extra: String::new(),
            env: Vec::new(),
        }
    }
}

fn loopback_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// `quelay client`, run with QUELAY_LOG=info; killed on drop unless `stop`ped.
pub struct QuelayClient {
    child: Child,
    socks: Option<SocketAddr>,
    http: Option<SocketAddr>,
    tcp_forwards: Vec<SocketAddr>,
    udp_forwards: Vec<SocketAddr>,
    dir: TempDir,
}

impl QuelayClient {
    /// Writes `client.yaml` for the Hysteria2 server at `server` (TLS name hy2.test, the
    /// certificate not verified) and starts `quelay client -c client.yaml`.
    pub fn start(server: SocketAddr, opts: &ClientOpts) -> QuelayClient {
        Self::start_at(&server.to_string(), opts)
    }

    /// `start`, with `server` as the config's text: `host:port`, a name the client looks
    /// up.
    pub fn start_at(server: &str, opts: &ClientOpts) -> QuelayClient {
        let dir = tempdir();
        let mut y = format!(
            "server: {}\nauth: {}\ntls:\n  sni: {SNI}\n  insecure: true\n",
            yaml_str(server),
            yaml_str(&opts.password)
        );
        if let Some(pw) = &opts.obfs {
            let _ = writeln!(
                y,
                "obfs:\n  type: salamander\n  salamander:\n    password: {}",
                yaml_str(pw)
            );
        }
        let mut listener = |key: &str, p: &Option<ProxyOpts>| {
            let p = p.as_ref()?;
            let addr = loopback_port();
            let _ = writeln!(y, "{key}:\n  listen: {addr}");
            if let Some((user, pass)) = &p.auth {
                let _ = writeln!(
                    y,
                    "  username: {}\n  password: {}",
                    yaml_str(user),
                    yaml_str(pass)
                );
            }
            Some(addr)
        };
        let socks = listener("socks5", &opts.socks5);
        let http = listener("http", &opts.http);
        let mut forwards = |key: &str, remotes: &[SocketAddr]| -> Vec<SocketAddr> {
            if remotes.is_empty() {
                return Vec::new();
            }
            let _ = writeln!(y, "{key}:");
            remotes
                .iter()
                .map(|remote| {
                    let listen = loopback_port();
                    let _ = writeln!(y, "  - listen: {listen}\n    remote: {remote}");
                    listen
                })
                .collect()
        };
        let tcp_forwards = forwards("tcpForwarding", &opts.tcp_forwarding);
        let udp_forwards = forwards("udpForwarding", &opts.udp_forwarding);
        y.push_str(&opts.extra);
        if !y.ends_with('\n') {
            y.push('\n');
        }
        let path = dir.join("client.yaml");
        fs::write(&path, y).expect("write client.yaml");
        let mut cmd = Command::new(super::quelay_bin());
        cmd.arg("client").arg("-c").arg(&path);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        Self::launch(cmd, dir, socks, http, tcp_forwards, udp_forwards)
    }

    /// `quelay client URI --socks5 ADDR [--http ADDR]`, with free ports.
    pub fn start_uri(uri: &str, http: bool) -> QuelayClient {
        let dir = tempdir();
        let socks = loopback_port();
        let mut cmd = Command::new(super::quelay_bin());
        cmd.arg("client")
            .arg(uri)
            .arg("--socks5")
            .arg(socks.to_string());
        let http = http.then(loopback_port);
        if let Some(h) = http {
            cmd.arg("--http").arg(h.to_string());
        }
        Self::launch(cmd, dir, Some(socks), http, Vec::new(), Vec::new())
    }

    fn launch(
        mut cmd: Command,
        dir: TempDir,
        socks: Option<SocketAddr>,
        http: Option<SocketAddr>,
        tcp_forwards: Vec<SocketAddr>,
        udp_forwards: Vec<SocketAddr>,
    ) -> QuelayClient {
        cmd.env("QUELAY_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(dir.path());
        let mut child = Child::spawn("quelay-client", cmd, dir.path());
        let tcp: Vec<SocketAddr> = socks
            .iter()
            .chain(http.iter())
            .chain(tcp_forwards.iter())
            .copied()
            .collect();
        child.wait_ready(
            &format!("TCP listeners {tcp:?} accepting, UDP ports {udp_forwards:?} bound"),
            START_TIMEOUT,
            |_| {
                tcp.iter().all(|a| tcp_listening(a.port()))
                    && udp_forwards.iter().all(|a| udp_bound(a.port()))
            },
        );
        QuelayClient {
            child,
            socks,
            http,
            tcp_forwards,
            udp_forwards,
            dir,
        }
    }

    /// The SOCKS5 listener.
    pub fn socks_addr(&self) -> SocketAddr {
        self.socks.expect("the client was started without socks5")
    }

    /// The HTTP proxy listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("the client was started without http")
    }

    /// The local address of `tcpForwarding[i]`.
    pub fn tcp_forward_addr(&self, i: usize) -> SocketAddr {
        self.tcp_forwards[i]
    }

    /// The local address of `udpForwarding[i]`.
    pub fn udp_forward_addr(&self, i: usize) -> SocketAddr {
        self.udp_forwards[i]
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The scratch directory with `client.yaml` and the output files.
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// SIGTERM; the client must exit with status 0 within `STOP_TIMEOUT`. Returns its
    /// stderr.
    pub fn stop(&mut self) -> String {
        self.child.assert_running();
        let status = self.child.stop_with(libc::SIGTERM, STOP_TIMEOUT);
        let stderr = self.child.stderr();
        assert!(
            status.success(),
            "quelay client exited with {status} after SIGTERM; stderr:\n{}",
            tail(&stderr, 40)
        );
        stderr
    }

    /// `stop`, then the `pool stats:` line of its stderr, parsed.
    pub fn stop_stats(&mut self) -> PoolStats {
        PoolStats::parse(&self.stop())
    }
}

/// The `pool stats:` line the client logs on exit: `key=value` counters.
#[derive(Debug)]
pub struct PoolStats {
    /// The whole line, as logged.
    pub line: String,
    pub values: BTreeMap<String, u64>,
}

impl PoolStats {
    /// Finds the one line containing `pool stats:` in `stderr` and parses the `key=value`
    /// pairs after it. Panics (quoting stderr) unless there is exactly one such line with
    /// every key of `POOL_STATS_KEYS` and numeric values.
    pub fn parse(stderr: &str) -> PoolStats {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("pool stats:"))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "lines containing `pool stats:` in the client's stderr: {lines:#?}\nstderr tail:\n{}",
            tail(stderr, 30)
        );
        let line = strip_ansi(lines[0]);
        let after = &line[line.find("pool stats:").expect("found above") + "pool stats:".len()..];
        let mut values = BTreeMap::new();
        for pair in after.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or_else(|| {
                panic!("`{pair}` in the pool stats line is not key=value: {line}")
            });
            let v: u64 = v
                .trim_matches(|c| c == ',' || c == '"')
                .parse()
                .unwrap_or_else(|e| panic!("value of {k} in the pool stats line: {e}: {line}"));
            values.insert(k.to_owned(), v);
        }
        for k in POOL_STATS_KEYS {
            assert!(
                values.contains_key(k),
                "the pool stats line has no {k}: {line}"
            );
        }
        PoolStats { line, values }
    }

    /// The value of `key` (one of `POOL_STATS_KEYS`).
    pub fn get(&self, key: &str) -> u64 {
        *self
            .values
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the pool stats line: {}", self.line))
    }
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`), in case the log is colored.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
