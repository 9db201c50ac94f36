//! The path matrix: downloads through emulated network paths (the harness of
//! `tests/paths.rs`, `tests/support/netns.rs`) from quelay and from the sing-box Hysteria2
//! server, side by side. A benchmark, not a test: nothing is asserted, figures are reported.
//!
//! ```text
//! cargo build --release --bin quelay      # the example does not build the binary it runs
//! cargo run --release --example path_matrix -- [--rounds N] [--only SUBSTR]... [--secs S]
//!     [--out DIR] [--servers quelay,singbox,quelay-brutal[,singbox-brutal]] [--fair-secs S]
//! ```
//!
//! Needs root (network namespaces, veth, tbf, a TUN device for the fairness row). Uses
//! `target/release/quelay` (or `$QUELAY_BIN`), copied at start so that a concurrent `cargo
//! build` cannot swap it mid-run; it warns when that binary is older than a file under
//! `src/`. sing-box 1.14.4 comes from `scripts/get-singbox.sh` as in the tests.
//!
//! **Cells.** RTT {0, 30 ms, 150 ms} × random loss {0, 1%, 5%} (each way, independent draws)
//! × bottleneck {50 Mbit/s, 300 Mbit/s, none}: 27 paths. Each sample builds a fresh pair of
//! namespaces (the forwarder's draws seeded per round, the same for every server of a round),
//! starts the server and the HTTP target in the server namespace behind the delay/loss
//! forwarder, the sing-box client (SOCKS5) in the client namespace, and downloads
//! `GET /bytes/N` through it, checked by SHA-256. N = rate × `--secs` (at least 4 MiB) on a
//! rate-limited path, 256 MiB on an unlimited one; a download ends with an error after a
//! 5-s stall (as in the tests) or past `max(30 s, 5 × secs)`, and then its goodput is that of
//! the bytes that did arrive (the table flags it).
//!
//! **Servers**, interleaved per round (the order rotates each round): `quelay` (`quelay
//! server`, its default congestion control), `singbox` (the sing-box 1.14.4 Hysteria2 server,
//! the configuration of `tests/support/peers.rs` and `bench/compare.py`), `quelay-brutal`
//! (quelay, the client asking for `up_mbps`/`down_mbps` = the bottleneck rate: Brutal; not
//! run without a bottleneck, said so in the table), and, only when asked, `singbox-brutal`.
//!
//! **Counted outside the servers**, by the forwarder, from just before the SOCKS5 CONNECT to
//! just after the last byte: datagrams the server sent (the forwarder's down-direction `in`)
//! and their UDP payload bytes; from these, datagrams per MiB of payload and the wire
//! overhead (UDP payload bytes the server sent / body bytes − 1). The retransmitted share is
//! estimated as (UDP bytes − n × 32 − body) / (UDP bytes − n × 32), 32 B per datagram being
//! the short header, AEAD tag and STREAM frame header towards a quic-go client (4-byte
//! connection IDs) – an estimate: each byte of error in that figure moves it by about 0.07
//! percentage points (it reads about −0.4% on clean paths, so the true figure is nearer
//! 28 B). Also: the forwarder's random drops (down: the server's datagrams; up: the
//! client's), the tbf drops on the server's veth (the bottleneck queue towards the client),
//! receive-buffer drops (the `drops` column of /proc/PID/net/udp) at the client's socket and
//! at the forwarder's upstream socket (the latter are datagrams the server sent that the
//! forwarder never counted: they are added to datagrams per MiB), and the server's CPU time.
//! On the unlimited paths no link is the bottleneck but the machine (forwarder, server and
//! client share its cores): there, retx≈ also counts datagrams that reached the client's
//! socket and were sent again anyway (spurious retransmissions, or packets the client dropped
//! in user space, which no kernel counter sees).
//!
//! **Fairness row**: on the 50 Mbit/s, 30 ms, 0-loss path, a download through the sing-box
//! client (default, i.e. BBR towards the server's choice) runs for `--fair-secs` (20 s) at the
//! same time as one TCP connection with CUBIC (set with TCP_CONGESTION; this host's default
//! is bbr) sending from the server namespace to the client namespace. The forwarder carries
//! only UDP, so the TCP connection runs through a TUN tunnel of this program: a TUN device
//! in each namespace whose packets travel as UDP datagrams through a second forwarder with
//! the same delay (15 ms each way) and over the same veth, i.e. through the same tbf queue
//! towards the client as the QUIC flow. Tunnel MTU 1472, so that an encapsulated full packet
//! is a 1500-byte IP packet on the veth, about the QUIC flow's largest (1480 with 1452-byte
//! datagrams); the TUN devices have a 1000-packet pfifo (no AQM ahead of the bottleneck). Shares are of the bytes each receiver got between 2 s after
//! the start and the end; TCP alone through the tunnel is measured first (5 s) as a check.
//!
//! Output: one line per sample on stderr; the table (medians per cell and server, ratios to
//! sing-box) to stdout and `--out/paths-<UTC timestamp>.md`, every sample to the `.json` next
//! to it (both rewritten after each sample, so an interrupted run leaves what it measured).
//! Ctrl-C stops after killing the running sample's peers (namespaces deleted by their
//! owners' `Drop`); a second Ctrl-C exits at once (`clean_stale_namespaces` removes what is
//! left on the next run).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

use support::{
    pattern_mismatch, pattern_sha256, read_head, socks5_connect, socks_download, Child,
    FwdSnapshot, HttpTarget, NetPath, NsProxyClient, NsQuelayServer, NsSingboxServer, PathSide,
    PathSpec, SbOpts, ServerOpts, TbfStats, MIB,
};

/// The longest a download may go without a byte (as in tests/paths.rs).
const STALL: Duration = Duration::from_secs(5);
/// The body of a download on a path without a rate limit.
const UNLIMITED_BYTES: usize = 256 * MIB;
/// The smallest download.
const MIN_BYTES: usize = 4 * MIB;
/// Assumed bytes per datagram besides STREAM data (see the module doc).
const PER_DATAGRAM: f64 = 32.0;
/// The fairness row's path.
const FAIR_RATE: f64 = 50.0;
const FAIR_RTT_MS: u64 = 30;
/// What the fairness shares leave out at the start.
const FAIR_WARMUP: Duration = Duration::from_secs(2);
/// TCP alone through the tunnel, before the fairness run.
const TCP_ALONE: Duration = Duration::from_secs(5);
/// Bins of the fairness time series.
const BIN: Duration = Duration::from_millis(100);
/// The TUN tunnel's addresses (client, server) and MTU.
const TUN_CLIENT: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
const TUN_SERVER: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const TUN_MTU: u32 = 1472;
const TUN_NAME: &str = "qt0";

#[derive(Parser, Debug)]
#[command(about = "Downloads through emulated paths from quelay and sing-box (needs root)")]
struct Args {
    /// Rounds: every cell and server once per round.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Only the cells whose name contains one of these (repeatable); `fairness` selects the
    /// fairness row.
    #[arg(long)]
    only: Vec<String>,
    /// Seconds of transfer a download should take at the bottleneck rate.
    #[arg(long, default_value_t = 8.0)]
    secs: f64,
    /// Where the .md and .json go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The servers, in their order in the first round.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [ServerKind::Quelay, ServerKind::Singbox, ServerKind::QuelayBrutal])]
    servers: Vec<ServerKind>,
    /// Seconds of the fairness row's shared run.
    #[arg(long, default_value_t = 20.0)]
    fair_secs: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServerKind {
    Quelay,
    Singbox,
    QuelayBrutal,
    SingboxBrutal,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Quelay => "quelay",
            ServerKind::Singbox => "sing-box",
            ServerKind::QuelayBrutal => "quelay-brutal",
            ServerKind::SingboxBrutal => "sing-box-brutal",
        }
    }

    fn brutal(self) -> bool {
        matches!(self, ServerKind::QuelayBrutal | ServerKind::SingboxBrutal)
    }

    fn is_quelay(self) -> bool {
        matches!(self, ServerKind::Quelay | ServerKind::QuelayBrutal)
    }

    /// The server whose figures this one's are compared with.
    fn reference(self) -> Option<ServerKind> {
        match self {
            ServerKind::Quelay | ServerKind::QuelayBrutal => Some(ServerKind::Singbox),
            ServerKind::SingboxBrutal => None,
            ServerKind::Singbox => None,
        }
    }
}

/// One path of the matrix.
#[derive(Clone, Debug)]
struct Cell {
    name: String,
    rtt_ms: u64,
    loss: f64,
    rate_mbit: Option<f64>,
}

impl Cell {
    fn all() -> Vec<Cell> {
        let mut cells = Vec::new();
        for rate in [Some(50.0), Some(300.0), None] {
            for rtt_ms in [0u64, 30, 150] {
                for loss in [0.0_f64, 0.01, 0.05] {
                    let rtt = match rtt_ms {
                        0 => "rtt0".to_owned(),
                        n => format!("rtt{n}ms"),
                    };
                    let l = if loss == 0.0 {
                        "loss0".to_owned()
                    } else {
                        format!("loss{}pct", (loss * 100.0).round() as u32)
                    };
                    let r = rate.map_or("unlimited".to_owned(), |r| format!("{r}mbit"));
                    cells.push(Cell {
                        name: format!("{rtt}_{l}_{r}"),
                        rtt_ms,
                        loss,
                        rate_mbit: rate,
                    });
                }
            }
        }
        cells
    }

    fn spec(&self, round: u32) -> PathSpec {
        let mut spec = PathSpec::new(
            self.rate_mbit,
            Duration::from_millis(self.rtt_ms),
            self.loss,
        );
        spec.seed = 0x5eed_0f9a + u64::from(round);
        spec
    }

    fn bytes(&self, secs: f64) -> usize {
        match self.rate_mbit {
            Some(r) => {
                let b = r * 1e6 / 8.0 * secs;
                ((b / MIB as f64).round() as usize * MIB).max(MIN_BYTES)
            }
            None => UNLIMITED_BYTES,
        }
    }
}

/// Set by SIGINT/SIGTERM: stop after the current sample.
static STOP: AtomicBool = AtomicBool::new(false);

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The server of a sample.
enum ServerProc {
    Quelay(NsQuelayServer),
    Singbox(NsSingboxServer),
}

impl ServerProc {
    fn start(path: &NetPath, kind: ServerKind) -> ServerProc {
        if kind.is_quelay() {
            ServerProc::Quelay(NsQuelayServer::start(path, ""))
        } else {
            ServerProc::Singbox(NsSingboxServer::start(path, &ServerOpts::default()))
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            ServerProc::Quelay(s) => s.addr(),
            ServerProc::Singbox(s) => s.addr(),
        }
    }

    fn child(&mut self) -> &mut Child {
        match self {
            ServerProc::Quelay(s) => s.child(),
            ServerProc::Singbox(s) => s.child(),
        }
    }
}

/// User + system CPU seconds of process `pid` (all threads), from /proc/PID/stat.
fn cpu_secs(pid: u32) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz)
}

/// (local port, drops) of every UDP socket in process `pid`'s network namespace, from the
/// `drops` column of /proc/PID/net/udp{,6}: datagrams the kernel discarded because the
/// socket's receive buffer was full.
fn udp_drops(pid: u32) -> Vec<(u16, u64)> {
    let mut v = Vec::new();
    for table in ["udp", "udp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let drops = cols.get(12).and_then(|d| d.parse().ok());
            if let (Some(port), Some(drops)) = (port, drops) {
                v.push((port, drops));
            }
        }
    }
    v
}

/// Receive-buffer drops in the two namespaces (see `udp_drops`).
#[derive(Clone, Copy, Default)]
struct RcvDrops {
    /// The client's sockets: the server's datagrams lost at the client.
    client: u64,
    /// The forwarder's upstream sockets: the server's datagrams lost before the forwarder
    /// counted them.
    fwd_upstream: u64,
    /// The server's own socket(s): the client's datagrams lost at the server.
    server: u64,
}

impl RcvDrops {
    fn read(client_pid: u32, server_pid: u32, server_port: u16, front_port: u16) -> RcvDrops {
        let mut d = RcvDrops {
            client: udp_drops(client_pid).iter().map(|&(_, n)| n).sum(),
            ..RcvDrops::default()
        };
        for (port, n) in udp_drops(server_pid) {
            if port == server_port {
                d.server += n;
            } else if port != front_port {
                d.fwd_upstream += n;
            }
        }
        d
    }

    fn since(self, before: RcvDrops) -> RcvDrops {
        RcvDrops {
            client: self.client.saturating_sub(before.client),
            fwd_upstream: self.fwd_upstream.saturating_sub(before.fwd_upstream),
            server: self.server.saturating_sub(before.server),
        }
    }
}

fn load1() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Kills `pids` (SIGKILL) if STOP is raised before `done`; runs on a scoped thread while a
/// sample blocks, so that Ctrl-C does not wait for a download to end. The pids are unreaped
/// children of this process (their `Child` is alive until the scope ends), so none can have
/// been reused.
fn watchdog(pids: &[u32], done: &AtomicBool) {
    while !done.load(Ordering::Relaxed) {
        if stopping() {
            for &pid in pids {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn tbf_delta(after: Option<TbfStats>, before: Option<TbfStats>) -> Option<TbfStats> {
    let (a, b) = (after?, before?);
    Some(TbfStats {
        bytes: a.bytes - b.bytes,
        packets: a.packets - b.packets,
        dropped: a.dropped - b.dropped,
        overlimits: a.overlimits - b.overlimits,
    })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// One download of the matrix.
fn run_sample(cell: &Cell, kind: ServerKind, round: u32, args: &Args) -> Value {
    let len = cell.bytes(args.secs);
    let bound = Duration::from_secs_f64((5.0 * args.secs).max(30.0));
    let path = NetPath::new(cell.spec(round));
    let target = path.in_ns(PathSide::Server, HttpTarget::start);
    let mut server = ServerProc::start(&path, kind);
    let fwd = path.forwarder(server.addr());
    let opts = SbOpts {
        up_down_mbps: if kind.brutal() {
            cell.rate_mbit.map(|r| r as u32)
        } else {
            None
        },
        log_level: "warn".to_owned(),
        ..SbOpts::default()
    };
    let mut client = NsProxyClient::singbox(&path, fwd.addr(), &opts);
    let (socks, port) = (client.socks_addr(), target.addr().port());
    let pids = [client.child().id(), server.child().id()];
    let server_pid = pids[1];
    let cpu_before = cpu_secs(server_pid);
    let (server_port, front_port) = (server.addr().port(), fwd.addr().port());
    let drops = || RcvDrops::read(pids[0], server_pid, server_port, front_port);
    let drops_before = drops();
    let fwd_before = fwd.counters().snapshot();
    let tbf_before = path.tbf_stats(PathSide::Server);
    let load = load1();
    let done = AtomicBool::new(false);
    let d = thread::scope(|s| {
        s.spawn(|| watchdog(&pids, &done));
        let d = path.in_ns(PathSide::Client, || {
            socks_download(socks, port, len, STALL, bound)
        });
        done.store(true, Ordering::Relaxed);
        d
    });
    let fwd_d = fwd.counters().snapshot().since(&fwd_before);
    let tbf_d = tbf_delta(path.tbf_stats(PathSide::Server), tbf_before);
    let tbf_client = path.tbf_stats(PathSide::Client);
    let rcv = drops().since(drops_before);
    let cpu = cpu_secs(server_pid).zip(cpu_before).map(|(a, b)| a - b);
    let mut error = d.error.clone();
    if error.is_none() && d.sha256 != pattern_sha256(len) {
        error = Some("SHA-256 of the body differs from the target's".to_owned());
    }
    if !client.child().is_running() {
        let e = format!(
            "the sing-box client exited; stderr: {}",
            client.stderr_tail(5)
        );
        error = Some(error.map_or(e.clone(), |x| format!("{x}; {e}")));
    }
    if !server.child().is_running() {
        let e = format!(
            "the {} server exited; stderr: {}",
            kind.name(),
            support::tail(&server.child().stderr(), 5)
        );
        error = Some(error.map_or(e.clone(), |x| format!("{x}; {e}")));
    }
    sample_json(
        cell, kind, round, len, &d, &fwd_d, tbf_d, tbf_client, rcv, cpu, load, error,
    )
}

#[allow(clippy::too_many_arguments)]
fn sample_json(
    cell: &Cell,
    kind: ServerKind,
    round: u32,
    len: usize,
    d: &support::Download,
    f: &FwdSnapshot,
    tbf: Option<TbfStats>,
    tbf_client: Option<TbfStats>,
    rcv: RcvDrops,
    cpu: Option<f64>,
    load: f64,
    error: Option<String>,
) -> Value {
    let secs = d.transfer.as_secs_f64();
    let mib = d.bytes as f64 / MIB as f64;
    let goodput = d.bytes as f64 * 8.0 / 1e6 / secs.max(1e-9);
    let per_mib = |n: u64| (mib > 0.0).then(|| n as f64 / mib);
    let data_bytes = f.down_received_bytes as f64 - f.down_received as f64 * PER_DATAGRAM;
    let retx =
        (d.bytes > 0 && data_bytes > 0.0).then(|| (data_bytes - d.bytes as f64) / data_bytes);
    let overhead = (d.bytes > 0).then(|| f.down_received_bytes as f64 / d.bytes as f64 - 1.0);
    json!({
        "cell": cell.name, "rtt_ms": cell.rtt_ms, "loss": cell.loss, "rate_mbit": cell.rate_mbit,
        "server": kind.name(), "round": round,
        "bytes_requested": len, "bytes": d.bytes, "complete": d.error.is_none() && d.bytes == len,
        "seconds": secs, "goodput_mbit": goodput,
        "connect_s": d.connect.as_secs_f64(), "longest_gap_s": d.longest_gap.as_secs_f64(),
        "server_datagrams": f.down_received, "server_udp_bytes": f.down_received_bytes,
        "client_datagrams": f.up_received, "client_udp_bytes": f.up_received_bytes,
        "server_datagrams_lost_before_forwarder": rcv.fwd_upstream,
        "datagrams_per_mib": per_mib(f.down_received + rcv.fwd_upstream),
        "client_datagrams_per_mib": per_mib(f.up_received),
        "wire_overhead": overhead,
        "retx_est": retx,
        "fwd_down_dropped": f.down_dropped, "fwd_up_dropped": f.up_dropped,
        "fwd_down_sent": f.down_sent,
        "tbf_down_dropped": tbf.map(|t| t.dropped), "tbf_down_packets": tbf.map(|t| t.packets),
        "tbf_up_dropped": tbf_client.map(|t| t.dropped),
        "client_rcvbuf_drops": rcv.client, "server_rcvbuf_drops": rcv.server,
        "fwd_rcvbuf_drops": rcv.fwd_upstream,
        "server_cpu_s": cpu,
        "load1": load,
        "error": error,
    })
}

// ---------------------------------------------------------------------------------------------
// The fairness row: a TUN tunnel through a forwarder, a CUBIC sender, time series.

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens a TUN device (no packet information) named `TUN_NAME` in the namespace of the
/// calling thread.
fn open_tun() -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap_or_else(|e| panic!("open /dev/net/tun: {e}"));
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..TUN_NAME.len()].copy_from_slice(TUN_NAME.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `IfReq` lays out.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", io::Error::last_os_error());
    f
}

/// Waits up to 100 ms for `fd` to be readable.
fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd we own.
    unsafe { libc::poll(&mut p, 1, 100) > 0 }
}

fn run_tool(prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(
        out.status.success(),
        "`{prog} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A point-to-point IP tunnel between the path's namespaces: TUN `qt0` in each, the client's
/// packets sent as UDP datagrams to a forwarder of the path (delay, loss, and the veth with
/// its tbf), which relays them to the server end's socket on 127.0.0.1; the server end
/// answers the forwarder's upstream address, so its packets come back the same way.
struct Tunnel {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    fwd: support::PathForwarder,
}

impl Tunnel {
    fn start(path: &NetPath) -> Tunnel {
        let (tun_s, udp_s) = path.in_ns(PathSide::Server, || {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the tunnel's server end");
            support::big_buffers(&sock);
            (open_tun(), sock)
        });
        let fwd = path.forwarder(udp_s.local_addr().expect("address"));
        let to = fwd.addr();
        let (tun_c, udp_c) = path.in_ns(PathSide::Client, || {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind the tunnel's client end");
            support::big_buffers(&sock);
            (open_tun(), sock)
        });
        for (side, me, peer) in [
            (PathSide::Client, TUN_CLIENT, TUN_SERVER),
            (PathSide::Server, TUN_SERVER, TUN_CLIENT),
        ] {
            let ns = path.ns(side);
            run_tool(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &me.to_string(),
                    "peer",
                    &format!("{peer}/32"),
                    "dev",
                    TUN_NAME,
                ],
            );
            run_tool(
                "ip",
                &[
                    "-n",
                    ns,
                    "link",
                    "set",
                    TUN_NAME,
                    "mtu",
                    &TUN_MTU.to_string(),
                    "up",
                ],
            );
            run_tool(
                "tc",
                &[
                    "-n", ns, "qdisc", "replace", "dev", TUN_NAME, "root", "pfifo", "limit", "1000",
                ],
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let peer_s: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (tun_s, udp_s, tun_c, udp_c) = (
            Arc::new(tun_s),
            Arc::new(udp_s),
            Arc::new(tun_c),
            Arc::new(udp_c),
        );
        for s in [&udp_s, &udp_c] {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("read timeout");
        }
        let mut threads = Vec::new();
        // TUN -> UDP, both ends.
        for (tun, udp, client) in [
            (tun_c.clone(), udp_c.clone(), true),
            (tun_s.clone(), udp_s.clone(), false),
        ] {
            let (stop, peer_s) = (stop.clone(), peer_s.clone());
            threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if !readable(tun.as_raw_fd()) {
                        continue;
                    }
                    let Ok(n) = (&*tun).read(&mut buf) else {
                        continue;
                    };
                    let dest = if client {
                        Some(to)
                    } else {
                        *peer_s.lock().unwrap()
                    };
                    if let Some(dest) = dest {
                        let _ = udp.send_to(&buf[..n], dest);
                    }
                }
            }));
        }
        // UDP -> TUN, both ends.
        for (tun, udp, client) in [(tun_c, udp_c, true), (tun_s, udp_s, false)] {
            let (stop, peer_s) = (stop.clone(), peer_s.clone());
            threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    if !client {
                        *peer_s.lock().unwrap() = Some(from);
                    }
                    let _ = (&*tun).write(&buf[..n]);
                }
            }));
        }
        Tunnel { stop, threads, fwd }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sets the congestion control of TCP socket `s` and reads it back.
fn set_cc(s: &impl AsRawFd, name: &str) -> String {
    // SAFETY: setsockopt/getsockopt on a socket we own with buffers of the given lengths.
    unsafe {
        let rc = libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        );
        assert_eq!(
            rc,
            0,
            "TCP_CONGESTION {name}: {}",
            io::Error::last_os_error()
        );
        let mut buf = [0u8; 16];
        let mut len = buf.len() as libc::socklen_t;
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast(),
            &mut len,
        );
        String::from_utf8_lossy(&buf[..len as usize])
            .trim_end_matches('\0')
            .to_owned()
    }
}

/// Bytes received per `BIN` from `t0` on.
#[derive(Default)]
struct Series(Vec<u64>);

impl Series {
    fn add(&mut self, t0: Instant, n: usize) {
        let i = (t0.elapsed().as_nanos() / BIN.as_nanos()) as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += n as u64;
    }

    /// Mbit/s between `from` and `to` after t0.
    fn mbit(&self, from: Duration, to: Duration) -> f64 {
        let (a, b) = (
            (from.as_nanos() / BIN.as_nanos()) as usize,
            (to.as_nanos() / BIN.as_nanos()) as usize,
        );
        let bytes: u64 = self.0.iter().take(b).skip(a).sum();
        bytes as f64 * 8.0 / 1e6 / (to - from).as_secs_f64()
    }

    /// Mbit/s per second, over the first `dur`.
    fn per_second(&self, dur: Duration) -> Vec<f64> {
        let per = (Duration::from_secs(1).as_nanos() / BIN.as_nanos()) as usize;
        let bins = (dur.as_nanos() / BIN.as_nanos()) as usize;
        self.0[..bins.min(self.0.len())]
            .chunks(per)
            .map(|c| {
                c.iter().sum::<u64>() as f64 * 8.0 / 1e6 / (c.len() as f64 * BIN.as_secs_f64())
            })
            .collect()
    }
}

/// A CUBIC TCP connection from the server namespace (sender) to the client namespace
/// (receiver) through the tunnel, for `dur` from `t0`; the receiver's series.
fn tcp_flow(path: &NetPath, t0: Instant, dur: Duration) -> Result<(Series, String), String> {
    let listener = path
        .in_ns(PathSide::Server, || TcpListener::bind((TUN_SERVER, 0)))
        .map_err(|e| format!("bind {TUN_SERVER}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let end = t0 + dur;
    thread::scope(|scope| {
        let sender = scope.spawn(|| -> Result<String, String> {
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                    {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("TCP accept: {e}")),
                }
            };
            s.set_nonblocking(false).map_err(|e| e.to_string())?;
            let cc = set_cc(&s, "cubic");
            s.set_write_timeout(Some(Duration::from_millis(200)))
                .map_err(|e| e.to_string())?;
            let buf = vec![0x5au8; 64 * 1024];
            let mut w = &s;
            while Instant::now() < end && !stopping() {
                match w.write(&buf) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
            Ok(cc)
        });
        let received = path.in_ns(PathSide::Client, || -> Result<Series, String> {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("TCP connect to {addr} through the tunnel: {e}"))?;
            set_cc(&s, "cubic");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .map_err(|e| e.to_string())?;
            let mut series = Series::default();
            let mut buf = vec![0u8; 256 * 1024];
            let mut r = &s;
            while Instant::now() < end && !stopping() {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => series.add(t0, n),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(format!("TCP read: {e}")),
                }
            }
            Ok(series)
        });
        let cc = sender.join().map_err(|p| panic_message(&*p))??;
        Ok((received?, cc))
    })
}

/// A download of the target's pattern through the SOCKS5 proxy for `dur` from `t0`, each byte
/// checked against the pattern; the series.
fn quic_flow(socks: SocketAddr, port: u16, t0: Instant, dur: Duration) -> Result<Series, String> {
    let len: u64 = 1 << 30;
    let end = t0 + dur;
    let s = socks5_connect(socks, "127.0.0.1", port).map_err(|e| format!("SOCKS5 CONNECT: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    (&s).write_all(format!("GET /bytes/{len} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .map_err(|e| format!("request: {e}"))?;
    let mut r = BufReader::with_capacity(256 * 1024, &s);
    let head_deadline = Instant::now() + STALL;
    let head = loop {
        match read_head(&mut r) {
            Ok(Some(h)) => break h,
            Ok(None) => return Err("the stream ended before the response".into()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && Instant::now() < head_deadline => {}
            Err(e) => return Err(format!("response head: {e}")),
        }
    };
    if head.status() != Some(200) {
        return Err(format!("response {:?}", head.start));
    }
    let mut series = Series::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    let mut last = Instant::now();
    while Instant::now() < end && !stopping() {
        match r.read(&mut buf) {
            Ok(0) => return Err(format!("the body ended after {offset} bytes")),
            Ok(n) => {
                if let Some(i) = pattern_mismatch(offset, &buf[..n]) {
                    return Err(format!(
                        "byte {} differs from the pattern",
                        offset + i as u64
                    ));
                }
                offset += n as u64;
                series.add(t0, n);
                last = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if last.elapsed() > STALL {
                    return Err(format!("stalled after {offset} bytes"));
                }
            }
            Err(e) => return Err(format!("read after {offset} bytes: {e}")),
        }
    }
    Ok(series)
}

/// The fairness row for `kind` (quelay or sing-box, default congestion control).
fn run_fairness(kind: ServerKind, round: u32, args: &Args) -> Value {
    let dur = Duration::from_secs_f64(args.fair_secs);
    let mut spec = PathSpec::new(Some(FAIR_RATE), Duration::from_millis(FAIR_RTT_MS), 0.0);
    spec.seed = 0x5eed_0f9a + u64::from(round);
    let path = NetPath::new(spec);
    let target = path.in_ns(PathSide::Server, HttpTarget::start);
    let mut server = ServerProc::start(&path, kind);
    let fwd = path.forwarder(server.addr());
    let opts = SbOpts {
        log_level: "warn".to_owned(),
        ..SbOpts::default()
    };
    let mut client = NsProxyClient::singbox(&path, fwd.addr(), &opts);
    let tunnel = Tunnel::start(&path);
    let (socks, port) = (client.socks_addr(), target.addr().port());
    let pids = [client.child().id(), server.child().id()];
    let done = AtomicBool::new(false);
    let tbf_before = path.tbf_stats(PathSide::Server);
    let result = thread::scope(|scope| {
        scope.spawn(|| watchdog(&pids, &done));
        let r = (|| -> Result<Value, String> {
            // TCP alone first: the tunnel must not be the bottleneck.
            let t0 = Instant::now();
            let (alone, cc) = tcp_flow(&path, t0, TCP_ALONE)?;
            let alone_mbit = alone.mbit(Duration::from_secs(1), TCP_ALONE);
            if stopping() {
                return Err("interrupted".into());
            }
            let t0 = Instant::now() + Duration::from_millis(200);
            let (tcp, quic) = thread::scope(|s| {
                let quic = s.spawn(|| {
                    path.in_ns(PathSide::Client, || {
                        thread::sleep(t0.saturating_duration_since(Instant::now()));
                        quic_flow(socks, port, t0, dur)
                    })
                });
                thread::sleep(t0.saturating_duration_since(Instant::now()));
                let tcp = tcp_flow(&path, t0, dur);
                (tcp, quic.join().map_err(|p| panic_message(&*p)))
            });
            let (tcp, _) = tcp?;
            let quic = quic??;
            let (tm, qm) = (tcp.mbit(FAIR_WARMUP, dur), quic.mbit(FAIR_WARMUP, dur));
            let (tm_all, qm_all) = (
                tcp.mbit(Duration::ZERO, dur),
                quic.mbit(Duration::ZERO, dur),
            );
            Ok(json!({
                "tcp_cc": cc,
                "tcp_alone_mbit": alone_mbit,
                "window_s": [FAIR_WARMUP.as_secs_f64(), dur.as_secs_f64()],
                "quic_mbit": qm, "tcp_mbit": tm,
                "quic_share": qm / (qm + tm), "tcp_share": tm / (qm + tm),
                "quic_share_of_link": qm / FAIR_RATE, "tcp_share_of_link": tm / FAIR_RATE,
                "quic_mbit_whole": qm_all, "tcp_mbit_whole": tm_all,
                "quic_mbit_per_s": quic.per_second(dur), "tcp_mbit_per_s": tcp.per_second(dur),
            }))
        })();
        done.store(true, Ordering::Relaxed);
        r
    });
    let tbf = tbf_delta(path.tbf_stats(PathSide::Server), tbf_before);
    let mut v = json!({
        "cell": format!("fairness_rtt{FAIR_RTT_MS}ms_loss0_{FAIR_RATE}mbit"),
        "server": kind.name(), "round": round, "seconds": dur.as_secs_f64(),
        "tbf_down_dropped": tbf.map(|t| t.dropped),
        "quic_fwd": fwd.counters().summary(), "tunnel_fwd": tunnel.fwd.counters().summary(),
        "error": Value::Null,
    });
    match result {
        Ok(r) => {
            for (k, x) in r.as_object().expect("object") {
                v[k] = x.clone();
            }
        }
        Err(e) => v["error"] = e.into(),
    }
    if !server.child().is_running() || !client.child().is_running() {
        v["error"] = format!(
            "{}; a peer exited: server running {}, client running {}",
            v["error"].as_str().unwrap_or(""),
            server.child().is_running(),
            client.child().is_running()
        )
        .into();
    }
    drop(tunnel);
    v
}

// ---------------------------------------------------------------------------------------------
// Summary and output.

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k)?.as_f64()
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".to_owned(), |x| format!("{x:.digits$}"))
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".to_owned(), |x| format!("{:.1}", x * 100.0))
}

/// Per cell and server: the medians.
fn summarize(samples: &[Value]) -> BTreeMap<(String, String), Value> {
    let mut groups: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for s in samples {
        let key = (
            s["cell"].as_str().unwrap_or("").to_owned(),
            s["server"].as_str().unwrap_or("").to_owned(),
        );
        groups.entry(key).or_default().push(s);
    }
    groups
        .into_iter()
        .map(|(key, v)| {
            let m = |k: &str| median(v.iter().filter_map(|s| f(s, k)).collect());
            let errors: Vec<String> = v
                .iter()
                .filter_map(|s| s["error"].as_str().map(str::to_owned))
                .collect();
            let gp: Vec<f64> = v.iter().filter_map(|s| f(s, "goodput_mbit")).collect();
            let summary = json!({
                "n": v.len(),
                "goodput_mbit": m("goodput_mbit"),
                "goodput_min": gp.iter().copied().fold(f64::INFINITY, f64::min),
                "goodput_max": gp.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                "datagrams_per_mib": m("datagrams_per_mib"),
                "wire_overhead": m("wire_overhead"),
                "retx_est": m("retx_est"),
                "fwd_down_dropped": m("fwd_down_dropped"),
                "fwd_up_dropped": m("fwd_up_dropped"),
                "tbf_down_dropped": m("tbf_down_dropped"),
                "client_rcvbuf_drops": m("client_rcvbuf_drops"),
                "fwd_rcvbuf_drops": m("fwd_rcvbuf_drops"),
                "server_cpu_s": m("server_cpu_s"),
                "seconds": m("seconds"),
                "errors": errors,
            });
            (key, summary)
        })
        .collect()
}

fn markdown(
    cells: &[Cell],
    servers: &[ServerKind],
    summary: &BTreeMap<(String, String), Value>,
    fair: &[Value],
    header: &str,
) -> String {
    let mut md = String::new();
    md.push_str(header);
    md.push_str(
        "\n| cell | server | goodput Mbit/s | ÷ sing-box | dgrams/MiB | ÷ sing-box | wire overhead % | retx≈ % | fwd drops down/up | tbf drops | rcvbuf drops client/fwd | CPU s | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for cell in cells {
        for &kind in servers {
            let key = (cell.name.clone(), kind.name().to_owned());
            if kind.brutal() && cell.rate_mbit.is_none() {
                md.push_str(&format!(
                    "| {} | {} | skipped: no bottleneck rate to ask for | | | | | | | | | | |\n",
                    cell.name,
                    kind.name()
                ));
                continue;
            }
            let Some(s) = summary.get(&key) else {
                continue;
            };
            let refs = kind
                .reference()
                .and_then(|r| summary.get(&(cell.name.clone(), r.name().to_owned())));
            let ratio = |k: &str| -> Option<f64> {
                let (a, b) = (f(s, k)?, f(refs?, k)?);
                (b > 0.0).then(|| a / b)
            };
            let gp = if s["n"].as_u64().unwrap_or(0) > 1 {
                format!(
                    "{} ({}–{})",
                    fmt(f(s, "goodput_mbit"), 1),
                    fmt(f(s, "goodput_min"), 1),
                    fmt(f(s, "goodput_max"), 1)
                )
            } else {
                fmt(f(s, "goodput_mbit"), 1)
            };
            let errors = s["errors"].as_array().map_or(0, Vec::len);
            let err_text = if errors == 0 {
                String::new()
            } else {
                let first = s["errors"][0].as_str().unwrap_or("");
                let short: String = first.chars().take(60).collect();
                format!("{errors}/{}: {short}", s["n"])
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {}/{} | {} | {} |\n",
                cell.name,
                kind.name(),
                gp,
                fmt(ratio("goodput_mbit"), 2),
                fmt(f(s, "datagrams_per_mib"), 0),
                fmt(ratio("datagrams_per_mib"), 2),
                pct(f(s, "wire_overhead")),
                pct(f(s, "retx_est")),
                fmt(f(s, "fwd_down_dropped"), 0),
                fmt(f(s, "fwd_up_dropped"), 0),
                fmt(f(s, "tbf_down_dropped"), 0),
                fmt(f(s, "client_rcvbuf_drops"), 0),
                fmt(f(s, "fwd_rcvbuf_drops"), 0),
                fmt(f(s, "server_cpu_s"), 1),
                err_text
            ));
        }
    }
    if !fair.is_empty() {
        md.push_str(&format!(
            "\n### Fairness: {FAIR_RATE} Mbit/s, {FAIR_RTT_MS} ms, 0 loss; one QUIC download \
             (sing-box client, server's default CC) and one TCP CUBIC flow (through the TUN \
             tunnel, same delay and tbf) at once; shares of the bytes received between \
             {:.0} s and the end\n\n\
             | server | round | QUIC Mbit/s | TCP Mbit/s | QUIC share | TCP share | TCP share of link | TCP alone Mbit/s | tbf drops | error |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
            FAIR_WARMUP.as_secs_f64()
        ));
        for v in fair {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                v["server"].as_str().unwrap_or(""),
                v["round"],
                fmt(f(v, "quic_mbit"), 1),
                fmt(f(v, "tcp_mbit"), 1),
                pct(f(v, "quic_share")),
                pct(f(v, "tcp_share")),
                pct(f(v, "tcp_share_of_link")),
                fmt(f(v, "tcp_alone_mbit"), 1),
                v["tbf_down_dropped"],
                v["error"].as_str().unwrap_or("")
            ));
        }
    }
    md
}

/// `2026-11-23-182821` for now, in UTC.
fn utc_stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(support::root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The newest modification time of a file under `dir`.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let t = if e.file_type().ok()?.is_dir() {
            newest_mtime(&e.path())
        } else {
            e.metadata().ok()?.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// Copies the quelay binary to `dir` and points `$QUELAY_BIN` at the copy; says whether it
/// looks stale.
fn pin_quelay(dir: &Path) -> (PathBuf, bool) {
    let src = support::quelay_bin();
    let meta = fs::metadata(&src).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it first: cargo build --release --bin quelay",
            src.display()
        )
    });
    let stale = newest_mtime(&support::root().join("src"))
        .zip(meta.modified().ok())
        .is_some_and(|(src_t, bin_t)| src_t > bin_t);
    if stale {
        eprintln!(
            "path_matrix: WARNING: {} is older than a file under src/ (cargo build --release --bin quelay)",
            src.display()
        );
    }
    let copy = dir.join("quelay");
    fs::copy(&src, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    std::env::set_var("QUELAY_BIN", &copy);
    (src, stale)
}

struct Out {
    md: PathBuf,
    json: PathBuf,
}

fn main() {
    let args = Args::parse();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal exits at once; the first stops after the running sample.
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
            .expect("signal handler");
        signal_hook::flag::register(sig, flag.clone()).expect("signal handler");
        thread::spawn(move || loop {
            if flag.load(Ordering::Relaxed) {
                eprintln!("path_matrix: stopping (again to exit at once)");
                STOP.store(true, Ordering::Relaxed);
                return;
            }
            thread::sleep(Duration::from_millis(50));
        });
    }
    NetPath::check_available();
    let scratch = support::tempdir();
    let (quelay_src, stale) = pin_quelay(&scratch);
    let singbox = support::singbox();
    let singbox_version = Command::new(&singbox)
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();

    let matches =
        |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()));
    let cells: Vec<Cell> = Cell::all()
        .into_iter()
        .filter(|c| matches(&c.name))
        .collect();
    let fairness = matches("fairness_rtt30ms_loss0_50mbit");
    let fair_servers: Vec<ServerKind> = args
        .servers
        .iter()
        .copied()
        .filter(|s| !s.brutal())
        .collect();
    let stamp = utc_stamp();
    fs::create_dir_all(&args.out).unwrap_or_else(|e| panic!("{}: {e}", args.out.display()));
    let out = Out {
        md: args.out.join(format!("paths-{stamp}.md")),
        json: args.out.join(format!("paths-{stamp}.json")),
    };
    let header = format!(
        "## Path matrix {stamp} UTC\n\n\
         quelay {} (commit {}{}), {singbox_version}; sing-box client (SOCKS5) in the client \
         namespace; {} round(s); downloads of rate × {} s (min 4 MiB), 256 MiB unlimited; \
         medians over rounds (min–max when more than one). Datagrams and bytes the server sent \
         are counted by the forwarder; wire overhead = UDP payload bytes the server sent / body \
         bytes − 1; retx≈ = the share of STREAM bytes sent more than once, assuming \
         {PER_DATAGRAM} B of header per datagram (reads ≈ −0.4% on clean paths); fwd drops = \
         the forwarder's random loss (server's datagrams/client's); tbf drops = bottleneck \
         queue overflow towards the client; rcvbuf drops = receive-buffer overflow at the \
         client's socket / at the forwarder before counting. `÷ sing-box`: this server's median \
         over sing-box's.\n",
        quelay_src.display(),
        git(&["rev-parse", "--short", "HEAD"]),
        if git(&["status", "--porcelain", "src"]).is_empty() {
            ""
        } else {
            ", src/ modified"
        },
        args.rounds,
        args.secs,
    );
    let config = json!({
        "args": format!("{args:?}"),
        "quelay_bin": quelay_src, "quelay_bin_stale": stale,
        "commit": git(&["rev-parse", "HEAD"]),
        "src_status": git(&["status", "--porcelain", "src"]),
        "singbox": singbox_version,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "nproc": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "per_datagram_assumed": PER_DATAGRAM,
        "tbf": "rate limit on both veth ends, burst max(4 frames, 200 us at the rate), queue max(1 BDP, 64 KiB)",
        "stall_s": STALL.as_secs_f64(),
        "bound_s": (5.0 * args.secs).max(30.0),
    });
    let mut samples: Vec<Value> = Vec::new();
    let mut fair: Vec<Value> = Vec::new();
    let write = |samples: &[Value], fair: &[Value]| {
        let summary = summarize(samples);
        let md = markdown(&cells, &args.servers, &summary, fair, &header);
        let summary_json: Vec<Value> = summary
            .iter()
            .map(|((c, s), v)| {
                let mut v = v.clone();
                v["cell"] = c.clone().into();
                v["server"] = s.clone().into();
                v
            })
            .collect();
        let doc = json!({"config": config, "samples": samples, "summary": summary_json, "fairness": fair});
        let _ = fs::write(&out.md, &md);
        let _ = fs::write(&out.json, serde_json::to_string_pretty(&doc).expect("json"));
        md
    };
    let per_round = cells
        .iter()
        .map(|c| {
            args.servers
                .iter()
                .filter(|s| !(s.brutal() && c.rate_mbit.is_none()))
                .count()
        })
        .sum::<usize>()
        + if fairness { fair_servers.len() } else { 0 };
    let total = per_round * args.rounds as usize;
    let mut n = 0;
    eprintln!(
        "path_matrix: {} cells, servers {:?}, {} rounds, {total} runs; results to {}",
        cells.len(),
        args.servers,
        args.rounds,
        out.md.display()
    );
    'rounds: for round in 0..args.rounds {
        let k = args.servers.len();
        let order: Vec<ServerKind> = (0..k)
            .map(|i| args.servers[(i + round as usize) % k])
            .collect();
        for cell in &cells {
            for &kind in &order {
                if kind.brutal() && cell.rate_mbit.is_none() {
                    continue;
                }
                if stopping() {
                    break 'rounds;
                }
                n += 1;
                let started = Instant::now();
                let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_sample(cell, kind, round, &args)
                }))
                .unwrap_or_else(|p| {
                    json!({"cell": cell.name, "server": kind.name(), "round": round,
                           "error": format!("harness: {}", panic_message(&*p))})
                });
                eprintln!(
                    "[{n}/{total}] r{round} {} {}: {} Mbit/s, {} dgrams/MiB, retx≈{}%, drops fwd {}/{} tbf {} rcvbuf {}/{}, {:.1}s{}",
                    cell.name,
                    kind.name(),
                    fmt(f(&v, "goodput_mbit"), 1),
                    fmt(f(&v, "datagrams_per_mib"), 0),
                    pct(f(&v, "retx_est")),
                    v["fwd_down_dropped"],
                    v["fwd_up_dropped"],
                    v["tbf_down_dropped"],
                    v["client_rcvbuf_drops"],
                    v["fwd_rcvbuf_drops"],
                    started.elapsed().as_secs_f64(),
                    v["error"].as_str().map_or(String::new(), |e| format!(" ERROR {e}"))
                );
                samples.push(v);
                write(&samples, &fair);
            }
        }
        if fairness {
            for &kind in &fair_servers {
                if stopping() {
                    break 'rounds;
                }
                n += 1;
                let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_fairness(kind, round, &args)
                }))
                .unwrap_or_else(|p| {
                    json!({"cell": "fairness", "server": kind.name(), "round": round,
                           "error": format!("harness: {}", panic_message(&*p))})
                });
                eprintln!(
                    "[{n}/{total}] r{round} fairness {}: QUIC {} Mbit/s, TCP {} Mbit/s (TCP share {}%, alone {} Mbit/s){}",
                    kind.name(),
                    fmt(f(&v, "quic_mbit"), 1),
                    fmt(f(&v, "tcp_mbit"), 1),
                    pct(f(&v, "tcp_share")),
                    fmt(f(&v, "tcp_alone_mbit"), 1),
                    v["error"].as_str().map_or(String::new(), |e| format!(" ERROR {e}"))
                );
                fair.push(v);
                write(&samples, &fair);
            }
        }
    }
    let md = write(&samples, &fair);
    println!("{md}");
    eprintln!(
        "path_matrix: wrote {} and {}",
        out.md.display(),
        out.json.display()
    );
    drop(scratch);
    if stopping() {
        std::process::exit(130);
    }
}
