//! Emulated network paths for congestion-control tests: two network namespaces of the test's
//! own, joined by a veth pair, with a rate limit (a `tbf` qdisc on each veth end's egress)
//! and delay, jitter and random loss added by a UDP forwarder that runs as threads of the
//! test process (the kernel has no netem).
//!
//! ```text
//!  client ns (qp-PID-N-c)                      server ns (qp-PID-N-s)
//!  10.213.N.1/30 vc ==== veth, tbf both ways ==== vs 10.213.N.2/30
//!  client process -----------------------------> forwarder on 10.213.N.2:PORT
//!                                                  | rtt/2 (+jitter) each way, loss
//!                                                  v
//!                                               server on 127.0.0.1:PORT
//! ```
//!
//! Nothing is routed anywhere else: the namespaces have no default route and no link but the
//! veth pair, and `Drop` deletes both namespaces (everything in them goes with them), also
//! while a failing test unwinds. Processes run in a namespace through `ip netns exec`
//! (`NetPath::run_in`); test-side sockets are made on a thread that entered it first
//! (`in_ns`). Needs root, iproute2 (`ip`, `tc`) and the veth and tbf kernel modules:
//! `NetPath::check_available` fails the test, naming what is missing, when they are not there.
//!
//! /proc/net (and so `udp_bound` and `tcp_listening`) shows the namespace of the process's
//! main thread even on a thread that entered another: a child's sockets are looked up under
//! its own /proc/PID/net (`proc_net_bound`), which is why the peers have launchers here.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{self, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::peers::yaml_str;
use super::{
    hex, pattern_byte, read_head, socks5_connect, tail, tempdir, write_cert, Child, SbOpts,
    ServerOpts, TempDir, PASSWORD, PATTERN_PERIOD, SNI,
};

/// Every namespace this module creates is named `qp-<pid>-<n>-c` or `qp-<pid>-<n>-s`.
const NS_PREFIX: &str = "qp-";
/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";
/// The client-side and server-side veth interfaces (each in its own namespace).
const VETH_CLIENT: &str = "vc";
const VETH_SERVER: &str = "vs";
/// Socket buffers of the forwarder: room for a burst of a fast sender.
const FWD_BUFFER: usize = 8 << 20;
/// The most bytes waiting in one direction of the forwarder; beyond it datagrams are dropped
/// (and counted): a bound on memory, far above what any test path holds in flight.
const FWD_QUEUE_CAP: usize = 256 << 20;
/// How often the forwarder's blocked threads look at their stop flag.
const POLL: Duration = Duration::from_millis(100);
/// How long a peer may take to start listening in its namespace.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The smallest tbf queue: 64 KiB.
const MIN_QUEUE: u64 = 64 * 1024;
/// One full-size Ethernet frame.
const FRAME: u64 = 1514;

/// What the emulated path does to traffic.
#[derive(Clone, Debug)]
pub struct PathSpec {
    /// Bottleneck rate each way (Mbit/s); `None`: no tbf, veth speed.
    pub rate_mbit: Option<f64>,
    /// Round-trip time the forwarder adds: half of it each way.
    pub rtt: Duration,
    /// Fraction (0..1) of datagrams the forwarder drops, independently in each direction.
    pub loss: f64,
    /// Extra uniform random delay in `[0, jitter]` per datagram and direction; non-zero
    /// jitter reorders datagrams.
    pub jitter: Duration,
    /// Seed of the forwarder's loss and jitter draws.
    pub seed: u64,
    /// The tbf queue in bytes, when not one bandwidth-delay product (at least `MIN_QUEUE`).
    pub queue: Option<u64>,
}

impl Default for PathSpec {
    fn default() -> Self {
        PathSpec {
            rate_mbit: None,
            rtt: Duration::ZERO,
            loss: 0.0,
            jitter: Duration::ZERO,
            seed: DEFAULT_SEED,
            queue: None,
        }
    }
}

/// The seed of the forwarder's draws unless a test picks another.
const DEFAULT_SEED: u64 = 0x5eed_0f9a;

impl PathSpec {
    /// A path with this rate (Mbit/s, `None` = unlimited), round-trip time and loss.
    pub fn new(rate_mbit: Option<f64>, rtt: Duration, loss: f64) -> PathSpec {
        PathSpec {
            rate_mbit,
            rtt,
            loss,
            ..PathSpec::default()
        }
    }

    /// The same path with `jitter`.
    pub fn with_jitter(mut self, jitter: Duration) -> PathSpec {
        self.jitter = jitter;
        self
    }

    /// The same path with a tbf queue of `bytes`.
    pub fn with_queue(mut self, bytes: u64) -> PathSpec {
        self.queue = Some(bytes);
        self
    }

    /// A short human-readable description: `rtt 30ms, loss 1%, 50 Mbit/s`.
    pub fn describe(&self) -> String {
        let mut s = format!("rtt {:?}, loss {}%", self.rtt, self.loss * 100.0);
        if !self.jitter.is_zero() {
            let _ = write!(s, ", jitter {:?}", self.jitter);
        }
        if let Some(q) = self.queue {
            let _ = write!(s, ", queue {} KiB", q / 1024);
        }
        match self.rate_mbit {
            Some(r) => {
                let _ = write!(s, ", {r} Mbit/s");
            }
            None => s.push_str(", no rate limit"),
        }
        s
    }

    /// The tbf queue in bytes: `queue`, else one bandwidth-delay product; at least
    /// `MIN_QUEUE`.
    fn queue_bytes(&self, rate_mbit: f64) -> u64 {
        let bdp = rate_mbit * 1e6 / 8.0 * self.rtt.as_secs_f64();
        self.queue.unwrap_or(bdp as u64).max(MIN_QUEUE)
    }

    /// The tbf bucket: a few full frames, more at high rates so that the token bucket is not
    /// refilled more often than every ~0.2 ms.
    fn burst_bytes(rate_mbit: f64) -> u64 {
        let per_200us = rate_mbit * 1e6 / 8.0 * 200e-6;
        (per_200us as u64).max(4 * FRAME)
    }
}

/// One end of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathSide {
    Client,
    Server,
}

/// Two network namespaces joined by a veth pair, shaped as a `PathSpec` says. Dropping it
/// deletes both namespaces; drop the processes, forwarders and sockets that live in them
/// first (declare the `NetPath` before them).
pub struct NetPath {
    spec: PathSpec,
    index: u32,
    client_ns: String,
    server_ns: String,
    /// With `$QUELAY_TEST_PCAP` set: tcpdump on the client's veth, writing `veth.pcap` into
    /// a scratch directory that is kept when the test fails or `$QUELAY_TEST_KEEP` is set.
    capture: Option<(Child, TempDir)>,
}

/// Runs `prog args`, returning its stderr (and stdout) as the error when it fails.
pub fn run_tool(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{prog}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{prog} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// The stdout of `prog args`, or `None` if it cannot run or fails.
fn tool_output(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes the namespaces that earlier runs of these tests left behind: `qp-<pid>-...` whose
/// process is gone (killed before its `NetPath`s were dropped). Once per process.
fn clean_stale_namespaces() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(entries) = fs::read_dir(NETNS_DIR) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = left_by_dead_process(&name, NS_PREFIX) {
                eprintln!("netns: deleting stale namespace {name} (pid {pid} is gone)");
                let _ = run_tool("ip", &["netns", "del", &name]);
            }
        }
    });
}

/// The pid in `name` (`<prefix><pid>-...`) when that process is gone: a namespace or file
/// left behind by a test run that was killed.
pub fn left_by_dead_process(name: &str, prefix: &str) -> Option<u32> {
    let pid = name
        .strip_prefix(prefix)?
        .split('-')
        .next()?
        .parse::<u32>()
        .ok()?;
    (pid != process::id() && !Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

impl NetPath {
    /// Fails the test, naming what is missing, unless this machine can build paths: root,
    /// `ip` and `tc`, network namespaces, veth, tbf, and setns(2) from a thread. The check
    /// builds (and deletes) one rate-limited path; its result is kept for the process.
    pub fn check_available() {
        static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
        let result = RESULT.get_or_init(|| {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            if uid != 0 {
                return Err(format!(
                    "the path tests need root (euid is {uid}): they create network \
                     namespaces, veth links and tbf qdiscs"
                ));
            }
            for (tool, package) in [("ip", "iproute2"), ("tc", "iproute2")] {
                if tool_output(tool, &["-V"]).is_none() {
                    return Err(format!(
                        "`{tool}` is missing or does not run: install {package}"
                    ));
                }
            }
            let spec = PathSpec::new(Some(10.0), Duration::from_millis(10), 0.0);
            let path = NetPath::try_new(spec)?;
            let ip = path.ip(PathSide::Client);
            let seen = path.in_ns(PathSide::Client, || {
                UdpSocket::bind(SocketAddrV4::new(ip, 0)).map(|_| ())
            });
            seen.map_err(|e| {
                format!(
                    "a thread that entered {} cannot bind {ip}: {e}",
                    path.client_ns
                )
            })
        });
        if let Err(e) = result {
            panic!("emulated network paths are not available: {e}");
        }
    }

    /// Builds the path; panics with the failing command's message.
    pub fn new(spec: PathSpec) -> NetPath {
        NetPath::try_new(spec).unwrap_or_else(|e| panic!("cannot build the emulated path: {e}"))
    }

    fn try_new(spec: PathSpec) -> Result<NetPath, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        assert!(
            (0.0..1.0).contains(&spec.loss),
            "loss {} is not in 0..1",
            spec.loss
        );
        clean_stale_namespaces();
        let index = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NS_PREFIX}{}-{index}", process::id());
        // From here on, Drop deletes whatever part of the path exists.
        let mut path = NetPath {
            spec,
            index,
            client_ns: format!("{base}-c"),
            server_ns: format!("{base}-s"),
            capture: None,
        };
        let (c, s) = (path.client_ns.as_str(), path.server_ns.as_str());
        let hint = |step: &str, e: String| format!("{step}: {e}");
        run_tool("ip", &["netns", "add", c])
            .and_then(|()| run_tool("ip", &["netns", "add", s]))
            .map_err(|e| hint("`ip netns add` failed (network namespaces)", e))?;
        run_tool(
            "ip",
            &[
                "-n",
                c,
                "link",
                "add",
                VETH_CLIENT,
                "type",
                "veth",
                "peer",
                "name",
                VETH_SERVER,
                "netns",
                s,
            ],
        )
        .map_err(|e| hint("cannot create the veth pair (CONFIG_VETH)", e))?;
        for (ns, dev, side) in [
            (c, VETH_CLIENT, PathSide::Client),
            (s, VETH_SERVER, PathSide::Server),
        ] {
            let addr = format!("{}/30", path.ip(side));
            run_tool("ip", &["-n", ns, "addr", "add", &addr, "dev", dev])
                .and_then(|()| run_tool("ip", &["-n", ns, "link", "set", "lo", "up"]))
                .and_then(|()| run_tool("ip", &["-n", ns, "link", "set", dev, "up"]))
                .map_err(|e| hint("cannot configure the veth link", e))?;
            if let Some(rate) = path.spec.rate_mbit {
                let rate_arg = format!("{}bit", (rate * 1e6) as u64);
                let burst = PathSpec::burst_bytes(rate).to_string();
                let limit = path.spec.queue_bytes(rate).to_string();
                run_tool(
                    "tc",
                    &[
                        "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate_arg,
                        "burst", &burst, "limit", &limit,
                    ],
                )
                .map_err(|e| hint("cannot add the tbf qdisc (CONFIG_NET_SCH_TBF)", e))?;
            }
        }
        if std::env::var_os("QUELAY_TEST_PCAP").is_some() {
            path.capture = Some(path.start_capture()?);
        }
        Ok(path)
    }

    /// tcpdump on the client's veth, both directions: the UDP header and the first 54 bytes
    /// of each payload (96-byte snapshots: QUIC's header and connection IDs), flushed packet
    /// by packet.
    fn start_capture(&self) -> Result<(Child, TempDir), String> {
        run_tool("tcpdump", &["--version"]).map_err(|e| {
            format!("$QUELAY_TEST_PCAP needs tcpdump (apt-get install tcpdump): {e}")
        })?;
        let dir = tempdir();
        let file = dir.join("veth.pcap");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.client_ns,
            "tcpdump",
            "-i",
            VETH_CLIENT,
        ])
        .args(["-s", "96", "-U", "-w"])
        .arg(&file)
        .arg("udp");
        let child = Child::spawn("tcpdump", cmd, &dir);
        eprintln!("capturing the client's veth into {}", file.display());
        Ok((child, dir))
    }

    pub fn spec(&self) -> &PathSpec {
        &self.spec
    }

    /// The namespace of `side`.
    pub fn ns(&self, side: PathSide) -> &str {
        match side {
            PathSide::Client => &self.client_ns,
            PathSide::Server => &self.server_ns,
        }
    }

    /// The veth address of `side`: 10.213.N.1 (client) or 10.213.N.2 (server).
    pub fn ip(&self, side: PathSide) -> Ipv4Addr {
        let n = (self.index % 256) as u8;
        match side {
            PathSide::Client => Ipv4Addr::new(10, 213, n, 1),
            PathSide::Server => Ipv4Addr::new(10, 213, n, 2),
        }
    }

    /// Runs `f` on a fresh thread inside `side`'s namespace and returns its result (a panic
    /// in `f` is resumed here).
    pub fn in_ns<T: Send, F: FnOnce() -> T + Send>(&self, side: PathSide, f: F) -> T {
        in_ns(self.ns(side), f)
    }

    /// Spawns `cmd` in `side`'s namespace (see `run_in`).
    pub fn run_in(&self, side: PathSide, name: &str, cmd: Command, dir: &Path) -> Child {
        run_in(self.ns(side), name, cmd, dir)
    }

    /// A free port on 127.0.0.1 inside `side`'s namespace.
    pub fn free_port(&self, side: PathSide) -> u16 {
        self.in_ns(side, super::free_port)
    }

    /// Starts a forwarder on the server's veth address that relays to `upstream` (an address
    /// in the server namespace, usually on its 127.0.0.1) with this path's delay, jitter and
    /// loss.
    pub fn forwarder(&self, upstream: SocketAddr) -> PathForwarder {
        PathForwarder::start(self, upstream)
    }

    /// The counters of `side`'s tbf qdisc (`None` without a rate limit).
    pub fn tbf_stats(&self, side: PathSide) -> Option<TbfStats> {
        self.spec.rate_mbit?;
        let dev = match side {
            PathSide::Client => VETH_CLIENT,
            PathSide::Server => VETH_SERVER,
        };
        let text = tool_output(
            "tc",
            &["-n", self.ns(side), "-s", "qdisc", "show", "dev", dev],
        )?;
        TbfStats::parse(&text)
    }
}

impl Drop for NetPath {
    fn drop(&mut self) {
        self.capture = None; // tcpdump first, while its namespace is there
        for ns in [&self.client_ns, &self.server_ns] {
            if Path::new(NETNS_DIR).join(ns).exists() {
                if let Err(e) = run_tool("ip", &["netns", "del", ns]) {
                    eprintln!("netns: {e}");
                }
            }
        }
    }
}

/// The counters `tc -s qdisc show` prints for a tbf qdisc.
#[derive(Clone, Copy, Debug, Default)]
pub struct TbfStats {
    pub bytes: u64,
    pub packets: u64,
    pub dropped: u64,
    pub overlimits: u64,
}

impl TbfStats {
    /// From ` Sent 123 bytes 4 pkt (dropped 5, overlimits 6 requeues 0)`.
    fn parse(text: &str) -> Option<TbfStats> {
        let line = text.lines().find(|l| l.trim_start().starts_with("Sent "))?;
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
            .filter(|w| !w.is_empty())
            .collect();
        let after = |key: &str| -> Option<u64> {
            let i = words.iter().position(|w| *w == key)?;
            words.get(i + 1)?.parse().ok()
        };
        let before = |key: &str| -> Option<u64> {
            let i = words.iter().position(|w| *w == key)?;
            words.get(i.checked_sub(1)?)?.parse().ok()
        };
        Some(TbfStats {
            bytes: after("Sent")?,
            packets: before("pkt")?,
            dropped: after("dropped").unwrap_or(0),
            overlimits: after("overlimits").unwrap_or(0),
        })
    }
}

/// Moves the calling thread into network namespace `ns` (a name under /run/netns). Only this
/// thread moves; sockets it creates afterwards, threads and processes it spawns live there.
pub fn enter_ns(ns: &str) {
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {} to enter it: {e}", path.display()));
    // SAFETY: setns(2) on a namespace fd we own; it affects only the calling thread's
    // network namespace (std's threads do not share anything that depends on it).
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns({}, CLONE_NEWNET): {}",
        path.display(),
        io::Error::last_os_error()
    );
}

/// Runs `f` on a fresh thread that has entered network namespace `ns` first, and returns its
/// result; a panic in `f` is resumed on the calling thread. Sockets `f` creates stay in `ns`
/// wherever they are used later.
pub fn in_ns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> T {
    let name = format!("{}@{ns}", super::test_name());
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name(name)
            .spawn_scoped(scope, || {
                enter_ns(ns);
                f()
            })
            .expect("spawn a thread for the namespace");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Spawns `cmd` (its program, arguments, environment and working directory) as
/// `ip netns exec NS ...`: `ip` enters the namespace and execs the program, so the child's
/// pid is the program's and `Child` kills it on drop. Output goes to `dir/NAME.std{out,err}`.
pub fn run_in(ns: &str, name: &str, cmd: Command, dir: &Path) -> Child {
    let mut wrapped = Command::new("ip");
    wrapped
        .arg("netns")
        .arg("exec")
        .arg(ns)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(cwd) = cmd.get_current_dir() {
        wrapped.current_dir(cwd);
    }
    Child::spawn(name, wrapped, dir)
}

/// Whether process `pid`'s network namespace has a socket on `port` in
/// /proc/PID/net/{proto,proto6}: any state for udp, LISTEN (0A) for tcp. Unlike
/// /proc/net (the namespace of this process's main thread), this sees inside the namespace a
/// child runs in, and unlike a probe connection it leaves no trace at the listener.
pub fn proc_net_bound(pid: u32, proto: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    [proto.to_owned(), format!("{proto}6")].iter().any(|table| {
        fs::read_to_string(format!("/proc/{pid}/net/{table}")).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let cols: Vec<&str> = line.split_whitespace().take(4).collect();
                cols.len() == 4 && cols[1].ends_with(&want) && (proto != "tcp" || cols[3] == "0A")
            })
        })
    })
}

/// Counters of a forwarder, per direction: `up` is client to server, `down` server to
/// client.
#[derive(Debug, Default)]
pub struct FwdCounters {
    pub up_received: AtomicU64,
    pub up_dropped: AtomicU64,
    pub up_sent: AtomicU64,
    pub down_received: AtomicU64,
    pub down_dropped: AtomicU64,
    pub down_sent: AtomicU64,
    /// UDP payload bytes of the datagrams counted in `up_received` / `down_received`.
    pub up_received_bytes: AtomicU64,
    pub down_received_bytes: AtomicU64,
}

/// The values of a forwarder's counters at one moment (`FwdCounters::snapshot`).
#[derive(Clone, Copy, Debug, Default)]
pub struct FwdSnapshot {
    pub up_received: u64,
    pub up_dropped: u64,
    pub up_sent: u64,
    pub down_received: u64,
    pub down_dropped: u64,
    pub down_sent: u64,
    pub up_received_bytes: u64,
    pub down_received_bytes: u64,
}

impl FwdSnapshot {
    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &FwdSnapshot) -> FwdSnapshot {
        FwdSnapshot {
            up_received: self.up_received - earlier.up_received,
            up_dropped: self.up_dropped - earlier.up_dropped,
            up_sent: self.up_sent - earlier.up_sent,
            down_received: self.down_received - earlier.down_received,
            down_dropped: self.down_dropped - earlier.down_dropped,
            down_sent: self.down_sent - earlier.down_sent,
            up_received_bytes: self.up_received_bytes - earlier.up_received_bytes,
            down_received_bytes: self.down_received_bytes - earlier.down_received_bytes,
        }
    }
}

impl FwdCounters {
    /// The counters now.
    pub fn snapshot(&self) -> FwdSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FwdSnapshot {
            up_received: g(&self.up_received),
            up_dropped: g(&self.up_dropped),
            up_sent: g(&self.up_sent),
            down_received: g(&self.down_received),
            down_dropped: g(&self.down_dropped),
            down_sent: g(&self.down_sent),
            up_received_bytes: g(&self.up_received_bytes),
            down_received_bytes: g(&self.down_received_bytes),
        }
    }

    /// `up 1000 in/10 lost/990 out, down 5000 in/50 lost/4950 out` (out: sent on; the rest
    /// of in - lost is still held or was refused by the kernel).
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "up {} in/{} lost/{} out, down {} in/{} lost/{} out",
            g(&self.up_received),
            g(&self.up_dropped),
            g(&self.up_sent),
            g(&self.down_received),
            g(&self.down_dropped),
            g(&self.down_sent)
        )
    }
}

/// A datagram waiting for its time in one direction of the forwarder.
struct Held {
    due: Instant,
    /// Arrival order, to keep datagrams with equal due times in order.
    seq: u64,
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest due time first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .due
            .cmp(&self.due)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct HeldQueue {
    heap: BinaryHeap<Held>,
    seq: u64,
    bytes: usize,
}

/// One direction of the forwarder: receive threads push, one sender thread sleeps until the
/// earliest datagram is due (a timer heap: FIFO without jitter, reordering with it).
#[derive(Default)]
struct DelayLine {
    queue: Mutex<HeldQueue>,
    /// Signalled when a datagram becomes the new head (or on stop).
    changed: Condvar,
}

impl DelayLine {
    /// Queues `data` to go from `sock` to `to` at `due`; false if the queue is full.
    fn push(&self, due: Instant, sock: &Arc<UdpSocket>, to: SocketAddr, data: &[u8]) -> bool {
        let mut q = self.queue.lock().unwrap();
        if q.bytes + data.len() > FWD_QUEUE_CAP {
            return false;
        }
        let new_head = q.heap.peek().is_none_or(|head| due < head.due);
        let seq = q.seq;
        q.seq += 1;
        q.bytes += data.len();
        q.heap.push(Held {
            due,
            seq,
            sock: sock.clone(),
            to,
            data: data.to_vec(),
        });
        drop(q);
        if new_head {
            self.changed.notify_one();
        }
        true
    }

    /// Sends every datagram when it is due, until `stop`.
    fn run_sender(&self, stop: &AtomicBool, sent: &AtomicU64) {
        let mut batch = Vec::with_capacity(64);
        loop {
            {
                let mut q = self.queue.lock().unwrap();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let now = Instant::now();
                    let wait = match q.heap.peek() {
                        Some(head) if head.due <= now => break,
                        Some(head) => (head.due - now).min(POLL),
                        None => POLL,
                    };
                    q = self.changed.wait_timeout(q, wait).unwrap().0;
                }
                let now = Instant::now();
                while batch.len() < 64 && q.heap.peek().is_some_and(|h| h.due <= now) {
                    let held = q.heap.pop().expect("peeked");
                    q.bytes -= held.data.len();
                    batch.push(held);
                }
            }
            for held in batch.drain(..) {
                // A full tbf queue drops silently, like a router; other errors (the peer's
                // port is gone) are the same loss to the transport.
                if held.sock.send_to(&held.data, held.to).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Sets SO_RCVBUF and SO_SNDBUF to 8 MiB, past net.core.[rw]mem_max (we are root).
pub fn big_buffers(sock: &UdpSocket) {
    let size = libc::c_int::try_from(FWD_BUFFER).expect("buffer size fits");
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt(2) on a socket we own with a c_int value of the right length.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let s = socket2::SockRef::from(sock);
            let _ = s.set_recv_buffer_size(FWD_BUFFER);
            let _ = s.set_send_buffer_size(FWD_BUFFER);
        }
    }
}

/// A UDP socket for the forwarder, with big buffers and a `POLL` read timeout.
fn fwd_socket(bind: SocketAddr) -> Arc<UdpSocket> {
    let s = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("forwarder: bind {bind}: {e}"));
    big_buffers(&s);
    s.set_read_timeout(Some(POLL)).expect("read timeout");
    Arc::new(s)
}

/// Delay, jitter and loss for one direction.
#[derive(Clone)]
struct Impairment {
    one_way: Duration,
    jitter: Duration,
    loss: f64,
}

impl Impairment {
    /// When a datagram arriving now is due, or `None` if it is lost.
    fn due(&self, rng: &mut StdRng) -> Option<Instant> {
        if self.loss > 0.0 && rng.gen::<f64>() < self.loss {
            return None;
        }
        let mut delay = self.one_way;
        if !self.jitter.is_zero() {
            delay += self.jitter.mul_f64(rng.gen::<f64>());
        }
        Some(Instant::now() + delay)
    }
}

/// A UDP forwarder in a path's server namespace: it listens on the server's veth address and
/// relays each client address's datagrams to `upstream` through an upstream socket of its
/// own (like a NAT), and the answers back, holding every datagram rtt/2 (+ jitter) and
/// dropping a fraction `loss` of them, independently each way (seeded, reproducible draws).
/// Threads: one receiving from clients, one per client receiving from upstream, one sender
/// per direction. They stop, and are joined, on drop.
pub struct PathForwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    lines: [Arc<DelayLine>; 2],
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    front_thread: Option<JoinHandle<()>>,
    counters: Arc<FwdCounters>,
}

impl PathForwarder {
    fn start(path: &NetPath, upstream: SocketAddr) -> PathForwarder {
        let ns = path.ns(PathSide::Server).to_owned();
        let bind = SocketAddr::from((path.ip(PathSide::Server), 0));
        let front = path.in_ns(PathSide::Server, || fwd_socket(bind));
        let addr = front.local_addr().expect("forwarder address");
        let spec = path.spec();
        let imp = Impairment {
            one_way: spec.rtt / 2,
            jitter: spec.jitter,
            loss: spec.loss,
        };
        let seed = spec.seed;
        let stop = Arc::new(AtomicBool::new(false));
        let lines = [
            Arc::new(DelayLine::default()),
            Arc::new(DelayLine::default()),
        ];
        let counters = Arc::new(FwdCounters::default());
        let threads = Arc::new(Mutex::new(Vec::new()));
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name)
                .spawn(f)
                .expect("spawn a forwarder thread")
        };
        for (i, line) in lines.iter().enumerate() {
            let (line, stop, counters) = (line.clone(), stop.clone(), counters.clone());
            let t = spawn(
                format!("fwd-send-{}", ["up", "down"][i]),
                Box::new(move || {
                    let sent = if i == 0 {
                        &counters.up_sent
                    } else {
                        &counters.down_sent
                    };
                    line.run_sender(&stop, sent);
                }),
            );
            threads.lock().unwrap().push(t);
        }
        let front_thread = {
            let (stop, counters, threads) = (stop.clone(), counters.clone(), threads.clone());
            let [up_line, down_line] = lines.clone();
            spawn(
                "fwd-front".to_owned(),
                Box::new(move || {
                    // Upstream sockets are made here, so this thread lives in the namespace.
                    enter_ns(&ns);
                    let mut rng = StdRng::seed_from_u64(seed);
                    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                    let mut buf = vec![0u8; 65_536];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, client)) = front.recv_from(&mut buf) else {
                            continue;
                        };
                        counters.up_received.fetch_add(1, Ordering::Relaxed);
                        counters
                            .up_received_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                        let up = clients.entry(client).or_insert_with(|| {
                            let up = fwd_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
                            let client_seed = seed ^ (1 + threads.lock().unwrap().len() as u64);
                            let t = spawn_downlink(DownlinkArgs {
                                up: up.clone(),
                                front: front.clone(),
                                client,
                                line: down_line.clone(),
                                imp: imp.clone(),
                                rng: StdRng::seed_from_u64(client_seed.rotate_left(17)),
                                stop: stop.clone(),
                                counters: counters.clone(),
                            });
                            threads.lock().unwrap().push(t);
                            up
                        });
                        match imp.due(&mut rng) {
                            Some(due) if up_line.push(due, up, upstream, &buf[..n]) => {}
                            _ => {
                                counters.up_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }),
            )
        };
        PathForwarder {
            addr,
            stop,
            lines,
            threads,
            front_thread: Some(front_thread),
            counters,
        }
    }

    /// Where clients send instead of the upstream: the server's veth address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> &FwdCounters {
        &self.counters
    }
}

struct DownlinkArgs {
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    line: Arc<DelayLine>,
    imp: Impairment,
    rng: StdRng,
    stop: Arc<AtomicBool>,
    counters: Arc<FwdCounters>,
}

/// Relays what the upstream answers on `up` back to `client` through `front`.
fn spawn_downlink(a: DownlinkArgs) -> JoinHandle<()> {
    thread::Builder::new()
        .name("fwd-down".to_owned())
        .spawn(move || {
            let DownlinkArgs {
                up,
                front,
                client,
                line,
                imp,
                mut rng,
                stop,
                counters,
            } = a;
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, _)) = up.recv_from(&mut buf) else {
                    continue;
                };
                counters.down_received.fetch_add(1, Ordering::Relaxed);
                counters
                    .down_received_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                match imp.due(&mut rng) {
                    Some(due) if line.push(due, &front, client, &buf[..n]) => {}
                    _ => {
                        counters.down_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .expect("spawn a forwarder thread")
}

impl Drop for PathForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for line in &self.lines {
            line.changed.notify_all();
        }
        // The front thread first: it is the one that adds threads to the list.
        if let Some(t) = self.front_thread.take() {
            let _ = t.join();
        }
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// `quelay server` in a path's server namespace, listening on 127.0.0.1 there (behind a
/// `PathForwarder`), with the test certificate, password auth with `PASSWORD`, loopback
/// targets allowed, its default congestion control, and `yaml_extra` appended.
pub struct NsQuelayServer {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl NsQuelayServer {
    /// A server on a free loopback port of the server namespace.
    pub fn start(path: &NetPath, yaml_extra: &str) -> NsQuelayServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], path.free_port(PathSide::Server)));
        Self::start_listen(path, &addr.to_string(), addr, yaml_extra, None)
    }

    /// With `listen: <listen>` (a port range for port hopping, say), bound at `addr`: the
    /// address it is ready on and `addr()` reports. `log` is its `QUELAY_LOG` filter; by
    /// default `$QUELAY_TEST_SERVER_LOG`, or `info` when that is unset.
    pub fn start_listen(
        path: &NetPath,
        listen: &str,
        addr: SocketAddr,
        yaml_extra: &str,
        log: Option<&str>,
    ) -> NsQuelayServer {
        let log = log.map_or_else(
            || std::env::var("QUELAY_TEST_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            str::to_string,
        );
        let dir = tempdir();
        let (cert, key) = write_cert(&dir);
        let mut config = format!(
            "listen: {}\n\
             tls:\n  cert: {}\n  key: {}\n\
             auth:\n  type: password\n  password: {}\n\
             outboundGuard:\n  allowLoopback: true\n",
            yaml_str(listen),
            yaml_str(&cert.to_string_lossy()),
            yaml_str(&key.to_string_lossy()),
            yaml_str(PASSWORD),
        );
        config.push_str(yaml_extra);
        if !config.ends_with('\n') {
            config.push('\n');
        }
        let file = dir.join("server.yaml");
        fs::write(&file, config).expect("write server.yaml");
        let mut cmd = Command::new(super::quelay_bin());
        cmd.arg("server")
            .arg("-c")
            .arg(&file)
            .env("QUELAY_LOG", &log)
            .env("NO_COLOR", "1")
            .current_dir(dir.path());
        let child = start_udp_server(path, "quelay-server", cmd, &dir, addr);
        NsQuelayServer {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The server's address inside the server namespace.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// Runs a server in the path's server namespace and waits until it has bound `addr`'s UDP
/// port.
fn start_udp_server(
    path: &NetPath,
    name: &str,
    cmd: Command,
    dir: &Path,
    addr: SocketAddr,
) -> Child {
    let mut child = path.run_in(PathSide::Server, name, cmd, dir);
    let pid = child.id();
    child.wait_ready(
        &format!(
            "UDP port {} bound in {}",
            addr.port(),
            path.ns(PathSide::Server)
        ),
        START_TIMEOUT,
        |_| proc_net_bound(pid, "udp", addr.port()),
    );
    child
}

/// Which Hysteria2 client an `NsProxyClient` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// sing-box's hysteria2 outbound behind a "mixed" (SOCKS5/HTTP) inbound.
    SingBox,
    /// `quelay client` with a `socks5` listener.
    Quelay,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::SingBox => "sing-box",
            ClientKind::Quelay => "quelay",
        }
    }
}

/// A Hysteria2 client process in a path's client namespace with a SOCKS5 listener on
/// 127.0.0.1 there; reach it from a thread in that namespace (`NetPath::in_ns`).
pub struct NsProxyClient {
    child: Child,
    socks: SocketAddr,
    dir: TempDir,
}

impl NsProxyClient {
    /// Starts `kind` against the server (or forwarder) at `server`, with `PASSWORD`, SNI
    /// hy2.test and the certificate unverified, and waits until its SOCKS5 port listens.
    pub fn start(path: &NetPath, kind: ClientKind, server: SocketAddr) -> NsProxyClient {
        match kind {
            ClientKind::SingBox => Self::singbox(path, server, &SbOpts::default()),
            ClientKind::Quelay => Self::quelay(path, server, ""),
        }
    }

    /// The sing-box client (`SINGBOX_VERSION`, installed on first use) with `opts`.
    pub fn singbox(path: &NetPath, server: SocketAddr, opts: &SbOpts) -> NsProxyClient {
        let bin = super::singbox();
        let dir = tempdir();
        let socks = SocketAddr::from(([127, 0, 0, 1], path.free_port(PathSide::Client)));
        let mut outbound = serde_json::json!({
            "type": "hysteria2",
            "tag": "hy2-out",
            "server": server.ip().to_string(),
            "server_port": server.port(),
            "password": PASSWORD,
            "tls": {"enabled": true, "server_name": opts.sni, "insecure": true, "alpn": ["h3"]},
        });
        if let Some(mbps) = opts.up_down_mbps {
            outbound["up_mbps"] = mbps.into();
            outbound["down_mbps"] = mbps.into();
        }
        if let Some(pw) = &opts.obfs {
            outbound["obfs"] = serde_json::json!({"type": "salamander", "password": pw});
        }
        if let Some(every) = &opts.rebind_every {
            let port = server.port();
            outbound["server_ports"] = serde_json::json!([format!("{port}:{port}")]);
            outbound["hop_interval"] = every.as_str().into();
        }
        let config = serde_json::json!({
            "log": {"level": opts.log_level, "timestamp": true},
            "inbounds": [{
                "type": "mixed", "tag": "mixed-in",
                "listen": "127.0.0.1", "listen_port": socks.port(),
            }],
            "outbounds": [outbound],
            "route": {"final": "hy2-out"},
        });
        let file = dir.join("client.json");
        let text = serde_json::to_string_pretty(&config).expect("client.json");
        fs::write(&file, text).expect("write client.json");
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("-c").arg(&file).current_dir(dir.path());
        Self::launch(path, "sing-box-client", cmd, socks, dir)
    }

    /// `quelay client -c client.yaml` with `yaml_extra` appended at top level.
    pub fn quelay(path: &NetPath, server: SocketAddr, yaml_extra: &str) -> NsProxyClient {
        Self::quelay_to(path, &server.to_string(), yaml_extra, &[])
    }

    /// `quelay client` with `server: <server>` (a port range for port hopping, say) and the
    /// environment variables `env`.
    pub fn quelay_to(
        path: &NetPath,
        server: &str,
        yaml_extra: &str,
        env: &[(&str, &str)],
    ) -> NsProxyClient {
        let dir = tempdir();
        let socks = SocketAddr::from(([127, 0, 0, 1], path.free_port(PathSide::Client)));
        let mut y = format!(
            "server: {}\nauth: {}\ntls:\n  sni: {SNI}\n  insecure: true\n\
             socks5:\n  listen: {socks}\n",
            yaml_str(server),
            yaml_str(PASSWORD)
        );
        y.push_str(yaml_extra);
        if !y.ends_with('\n') {
            y.push('\n');
        }
        let file = dir.join("client.yaml");
        fs::write(&file, y).expect("write client.yaml");
        let mut cmd = Command::new(super::quelay_bin());
        cmd.arg("client")
            .arg("-c")
            .arg(&file)
            .env("QUELAY_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .current_dir(dir.path());
        Self::launch(path, "quelay-client", cmd, socks, dir)
    }

    fn launch(
        path: &NetPath,
        name: &str,
        cmd: Command,
        socks: SocketAddr,
        dir: TempDir,
    ) -> NsProxyClient {
        let mut child = path.run_in(PathSide::Client, name, cmd, &dir);
        let pid = child.id();
        child.wait_ready(
            &format!(
                "SOCKS5 port {socks} listening in {}",
                path.ns(PathSide::Client)
            ),
            START_TIMEOUT,
            |_| proc_net_bound(pid, "tcp", socks.port()),
        );
        NsProxyClient { child, socks, dir }
    }

    /// The SOCKS5 listener, inside the client namespace.
    pub fn socks_addr(&self) -> SocketAddr {
        self.socks
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The scratch directory with the config and the output files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `n` lines of the client's stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        tail(&self.child.stderr(), n)
    }
}

/// The sing-box Hysteria2 server (`SINGBOX_VERSION`) in a path's server namespace, listening
/// on 127.0.0.1 there (behind a `PathForwarder`): the configuration of `peers::SingboxServer`
/// (one user with `PASSWORD`, the test certificate, a direct outbound), with `opts`.
pub struct NsSingboxServer {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl NsSingboxServer {
    pub fn start(path: &NetPath, opts: &ServerOpts) -> NsSingboxServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], path.free_port(PathSide::Server)));
        Self::start_on(path, addr, opts)
    }

    /// Listening on `addr` in the server namespace (its veth address, say).
    pub fn start_on(path: &NetPath, addr: SocketAddr, opts: &ServerOpts) -> NsSingboxServer {
        let bin = super::singbox();
        let dir = tempdir();
        let (cert, key) = write_cert(&dir);
        let mut inbound = serde_json::json!({
            "type": "hysteria2",
            "tag": "hy2-in",
            "listen": addr.ip().to_string(),
            "listen_port": addr.port(),
            "users": [{"name": "u", "password": PASSWORD}],
            "tls": {
                "enabled": true,
                "alpn": ["h3"],
                "certificate_path": cert.to_string_lossy(),
                "key_path": key.to_string_lossy(),
            },
        });
        if let Some(mbps) = opts.up_down_mbps {
            inbound["up_mbps"] = mbps.into();
            inbound["down_mbps"] = mbps.into();
        }
        if let Some(pw) = &opts.obfs {
            inbound["obfs"] = serde_json::json!({"type": "salamander", "password": pw});
        }
        let config = serde_json::json!({
            "log": {"level": "info", "timestamp": true},
            "inbounds": [inbound],
            "outbounds": [{"type": "direct", "tag": "direct"}],
        });
        let file = dir.join("server.json");
        let text = serde_json::to_string_pretty(&config).expect("server.json");
        fs::write(&file, text).expect("write server.json");
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("-c").arg(&file).current_dir(dir.path());
        let child = start_udp_server(path, "sing-box-server", cmd, &dir, addr);
        NsSingboxServer {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The server's address inside the server namespace.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// SHA-256 (lowercase hex) of the first `len` bytes of the HTTP target's pattern, i.e. of
/// what it sends for `GET /bytes/len`.
pub fn pattern_sha256(len: usize) -> String {
    let period: Vec<u8> = (0..PATTERN_PERIOD).map(pattern_byte).collect();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut left = len;
    while left > 0 {
        let n = left.min(period.len());
        ctx.update(&period[..n]);
        left -= n;
    }
    hex(ctx.finish().as_ref())
}

/// What one download through a SOCKS5 proxy saw (`socks_download`).
#[derive(Clone, Debug)]
pub struct Download {
    /// Body bytes received (all of them unless `error`).
    pub bytes: usize,
    /// SHA-256 of the body bytes received.
    pub sha256: String,
    /// SOCKS5 CONNECT (including the QUIC handshake if the client dials then).
    pub connect: Duration,
    /// From the request to the last byte, or to the failure.
    pub transfer: Duration,
    /// The longest wait for a read to return data.
    pub longest_gap: Duration,
    /// Why the download ended before `len` bytes, if it did.
    pub error: Option<String>,
}

/// GETs `/bytes/len` from the HTTP target at 127.0.0.1:`port` (as the server sees it) through
/// the SOCKS5 proxy at `socks`, hashing the body as it arrives. Must run in the proxy's
/// namespace. Ends early, with `error` set and the figures so far, on a stall (`stall`
/// without a byte), past `bound` from the CONNECT on, or on a short body or a bad response.
pub fn socks_download(
    socks: SocketAddr,
    port: u16,
    len: usize,
    stall: Duration,
    bound: Duration,
) -> Download {
    let start = Instant::now();
    let mut d = Download {
        bytes: 0,
        sha256: String::new(),
        connect: Duration::ZERO,
        transfer: Duration::ZERO,
        longest_gap: Duration::ZERO,
        error: None,
    };
    let s = match socks5_connect(socks, "127.0.0.1", port) {
        Ok(s) => s,
        Err(e) => {
            d.connect = start.elapsed();
            d.error = Some(format!("SOCKS5 CONNECT: {e}"));
            return d;
        }
    };
    d.connect = start.elapsed();
    let sent = Instant::now();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let result = (|| -> Result<(), String> {
        s.set_read_timeout(Some(stall))
            .map_err(|e| format!("read timeout: {e}"))?;
        let req = format!("GET /bytes/{len} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        (&s).write_all(req.as_bytes())
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut last = sent;
        let stalled = |e: io::Error, got: usize, last: Instant| -> String {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                format!(
                    "stalled: nothing for {:.1?} after {got} of {len} bytes, {:.1?} after the request",
                    last.elapsed(),
                    sent.elapsed()
                )
            } else {
                format!("after {got} of {len} bytes: {e}")
            }
        };
        let mut r = BufReader::with_capacity(256 * 1024, &s);
        let head = read_head(&mut r)
            .map_err(|e| stalled(e, 0, last))?
            .ok_or("the stream ended before the response")?;
        if head.status() != Some(200) || head.content_length() != Some(len as u64) {
            return Err(format!(
                "response {:?} with Content-Length {:?}, expected 200 and {len}",
                head.start,
                head.content_length()
            ));
        }
        let mut buf = vec![0u8; 256 * 1024];
        while d.bytes < len {
            if start.elapsed() > bound {
                return Err(format!(
                    "not done after {bound:?}: {} of {len} bytes",
                    d.bytes
                ));
            }
            let want = buf.len().min(len - d.bytes);
            match r.read(&mut buf[..want]) {
                Ok(0) => return Err(format!("the body ended after {} of {len} bytes", d.bytes)),
                Ok(n) => {
                    ctx.update(&buf[..n]);
                    d.bytes += n;
                    d.longest_gap = d.longest_gap.max(last.elapsed());
                    last = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stalled(e, d.bytes, last)),
            }
        }
        Ok(())
    })();
    d.transfer = sent.elapsed();
    d.sha256 = hex(ctx.finish().as_ref());
    d.error = result.err();
    d
}
