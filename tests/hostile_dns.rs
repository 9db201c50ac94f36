//! The Hysteria2 server against clients that act while their targets are being resolved,
//! with a DNS server the test controls.
//!
//! - Streams reset while their domain target is still being resolved must leave nothing
//!   behind: no relay, no TCP socket, no stream permit, no socket-budget slot, no
//!   `/dump/streams` entry (issue 14, finding 1).
//! - A UDP session that sends to two names must deliver each datagram to its own name's
//!   address, whichever answer comes first (issue 14, finding 5).
//! - Lookups of names that never answer, and a flood of HTTP-auth requests to a backend that
//!   stalls, each fill only their own room: relays to IP literals and to names that answer,
//!   and logins, go on meanwhile (issue 14, finding 4).
//! - `resolver: {type: udp}` asks the server it names, not the system's.
//!
//! The server (`quelay server`) runs in a network namespace of the test's own
//! (`ip netns exec`), whose /etc/resolv.conf (bind-mounted from /etc/netns/NS/) names a DNS
//! server on 127.0.0.1:53: a thread of this test that entered the namespace and answers A
//! queries for a few `.test` names after a fixed delay, and AAAA queries with no records.
//! The targets, and the raw quinn client that speaks the Hysteria2 wire format by hand, live
//! in the same namespace. Needs root and iproute2; fails, saying what is missing, without.

// Each test binary uses a subset of the shared helpers.
#[allow(unused_imports)]
mod support;

use std::collections::{BinaryHeap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{self, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quelay::proto::h3;
use quelay::proto::tcp::{TcpRequest, TcpResponse};
use quelay::proto::udp::UdpMessage;
use quelay::quic::{self, QuicParams, Verify};

use support::{
    enter_ns, in_ns, left_by_dead_process, proc_net_bound, run_in, run_tool, tempdir, write_cert,
    Child, TempDir,
};

/// The password of the servers these tests start.
const PASSWORD: &str = "hostile-dns-secret";
/// How long a server may take to bind its ports.
const START_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// A network namespace with its own resolv.conf.

/// Namespaces of this file are `qd-<pid>-<n>`; /etc/netns/<name>/ holds their resolv.conf.
const NS_PREFIX: &str = "qd-";
const NETNS_DIR: &str = "/run/netns";
const ETC_NETNS: &str = "/etc/netns";

/// A network namespace with only `lo` (up), whose processes resolve names through
/// 127.0.0.1:53 (`/etc/netns/NS/resolv.conf`). Drop deletes both.
struct DnsNs {
    name: String,
    etc: PathBuf,
}

impl DnsNs {
    /// Builds the namespace, or fails the test naming what is missing.
    fn new() -> DnsNs {
        // One try, 5 s: an answer that comes late is waited for, never asked again.
        DnsNs::with_options("attempts:1 timeout:5")
    }

    /// A namespace whose resolv.conf has `options OPTIONS`.
    fn with_options(options: &str) -> DnsNs {
        DnsNs::try_new(options).unwrap_or_else(|e| {
            panic!(
                "cannot create a network namespace with its own resolv.conf for the DNS \
                 tests: {e}"
            )
        })
    }

    fn try_new(options: &str) -> Result<DnsNs, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(format!(
                "these tests need root (euid is {uid}): they create a network namespace and \
                 write /etc/netns/NS/resolv.conf"
            ));
        }
        clean_stale();
        let name = format!(
            "{NS_PREFIX}{}-{}",
            process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let etc = Path::new(ETC_NETNS).join(&name);
        // From here on, Drop removes whatever part exists.
        let ns = DnsNs { name, etc };
        run_tool("ip", &["netns", "add", &ns.name])
            .map_err(|e| format!("`ip netns add` failed (iproute2, network namespaces): {e}"))?;
        run_tool("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        fs::create_dir_all(&ns.etc)
            .map_err(|e| format!("cannot create {}: {e}", ns.etc.display()))?;
        fs::write(
            ns.etc.join("resolv.conf"),
            format!("nameserver 127.0.0.1\noptions {options}\n"),
        )
        .map_err(|e| format!("cannot write {}/resolv.conf: {e}", ns.etc.display()))?;
        // The check that matters: a thread can enter it and bind there.
        in_ns(&ns.name, || UdpSocket::bind("127.0.0.1:0").map(|_| ()))
            .map_err(|e| format!("a thread that entered {} cannot bind: {e}", ns.name))?;
        Ok(ns)
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread in the namespace.
    fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        in_ns(&self.name, f)
    }
}

impl Drop for DnsNs {
    fn drop(&mut self) {
        if Path::new(NETNS_DIR).join(&self.name).exists() {
            if let Err(e) = run_tool("ip", &["netns", "del", &self.name]) {
                eprintln!("netns: {e}");
            }
        }
        let _ = fs::remove_dir_all(&self.etc);
    }
}

/// Deletes namespaces (and their /etc/netns directories) that earlier, killed runs of this
/// file left behind: `qd-<pid>-...` whose process is gone. Once per process.
fn clean_stale() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for dir in [NETNS_DIR, ETC_NETNS] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if left_by_dead_process(&name, NS_PREFIX).is_none() {
                    continue;
                }
                if dir == NETNS_DIR {
                    let _ = run_tool("ip", &["netns", "del", &name]);
                } else {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    });
}

/// A free port on 127.0.0.1 in the namespace (TCP and UDP).
fn free_port(ns: &DnsNs) -> u16 {
    ns.run(support::free_port)
}

// ---------------------------------------------------------------------------------------
// A slow DNS server.

/// What the DNS server has seen.
#[derive(Default)]
struct DnsStats {
    /// Queries received, by (name, qtype).
    queries: Mutex<HashMap<(String, u16), u64>>,
    received: AtomicU64,
    answered: AtomicU64,
    /// Milliseconds since `DnsServer::started` of the last query.
    last_query_ms: AtomicU64,
}

/// A reply waiting for its time.
struct Due {
    at: Instant,
    seq: u64,
    to: SocketAddr,
    reply: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    /// Reversed: `BinaryHeap` pops the earliest first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A DNS server on 127.0.0.1:53 in a namespace: A queries for the names it knows get their
/// address, AAAA queries for them an empty NOERROR answer, names under `never.test` no answer
/// at all, anything else NXDOMAIN; every reply goes out `delay` after its query arrived.
struct DnsServer {
    stats: Arc<DnsStats>,
    started: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    fn start(ns: &DnsNs, delay: Duration, names: &[(&str, Ipv4Addr)]) -> DnsServer {
        DnsServer::start_on(ns, 53, delay, names)
    }

    /// The server on 127.0.0.1:`port`.
    fn start_on(ns: &DnsNs, port: u16, delay: Duration, names: &[(&str, Ipv4Addr)]) -> DnsServer {
        let names: HashMap<String, Ipv4Addr> =
            names.iter().map(|(n, a)| (n.to_string(), *a)).collect();
        let stats = Arc::new(DnsStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let ns_name = ns.name().to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stats, stop) = (stats.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("dns@{ns_name}"))
                .spawn(move || {
                    enter_ns(&ns_name);
                    let sock = match UdpSocket::bind(("127.0.0.1", port)) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    serve_dns(&sock, delay, &names, &stats, &stop, started);
                })
                .expect("spawn the DNS server thread")
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the test's DNS server cannot bind 127.0.0.1:{port}: {e}"),
            Err(e) => panic!("the test's DNS server did not start: {e}"),
        }
        DnsServer {
            stats,
            started,
            stop,
            thread: Some(thread),
        }
    }

    /// Queries for `name` of type `qtype` so far.
    fn queries(&self, name: &str, qtype: u16) -> u64 {
        let q = self.stats.queries.lock().unwrap();
        q.get(&(name.to_owned(), qtype)).copied().unwrap_or(0)
    }

    fn received(&self) -> u64 {
        self.stats.received.load(Ordering::SeqCst)
    }

    fn answered(&self) -> u64 {
        self.stats.answered.load(Ordering::SeqCst)
    }

    /// Time since the last query arrived.
    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.stats.last_query_ms.load(Ordering::SeqCst));
        self.started.elapsed().saturating_sub(last)
    }

    /// Waits until every query received has been answered and none came for `quiet`;
    /// panics after `timeout`.
    fn wait_all_answered(&self, quiet: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (r, a) = (self.received(), self.answered());
            if r == a && self.quiet_for() >= quiet {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the DNS server still had queries to answer after {timeout:?}: {r} received, \
                 {a} answered"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const QTYPE_A: u16 = 1;
const QTYPE_AAAA: u16 = 28;

fn serve_dns(
    sock: &UdpSocket,
    delay: Duration,
    names: &HashMap<String, Ipv4Addr>,
    stats: &DnsStats,
    stop: &AtomicBool,
    started: Instant,
) {
    let mut due = BinaryHeap::<Due>::new();
    let mut seq = 0u64;
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        // Send what is due, then wait for a query until the next reply's time (at most
        // 50 ms, to look at the stop flag).
        let now = Instant::now();
        while due.peek().is_some_and(|d| d.at <= now) {
            let d = due.pop().expect("peeked");
            let _ = sock.send_to(&d.reply, d.to);
            stats.answered.fetch_add(1, Ordering::SeqCst);
        }
        let wait = due
            .peek()
            .map_or(Duration::from_millis(50), |d| {
                d.at.saturating_duration_since(now)
            })
            .clamp(Duration::from_micros(200), Duration::from_millis(50));
        let _ = sock.set_read_timeout(Some(wait));
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let arrived = Instant::now();
        let Some((name, qtype, reply)) = dns_reply(&buf[..n], names) else {
            continue;
        };
        let silent = name_never_answered(&name);
        *stats
            .queries
            .lock()
            .unwrap()
            .entry((name, qtype))
            .or_default() += 1;
        stats.received.fetch_add(1, Ordering::SeqCst);
        stats.last_query_ms.store(
            arrived.duration_since(started).as_millis() as u64,
            Ordering::SeqCst,
        );
        if silent {
            continue;
        }
        seq += 1;
        due.push(Due {
            at: arrived + delay,
            seq,
            to: from,
            reply,
        });
    }
}

/// Names the DNS server never answers: `never.test` and the names under it.
fn name_never_answered(name: &str) -> bool {
    name == "never.test" || name.ends_with(".never.test")
}

/// The question of a DNS query (name lowercased, type) and the reply to it; `None` for
/// anything that is not a one-question standard query.
fn dns_reply(q: &[u8], names: &HashMap<String, Ipv4Addr>) -> Option<(String, u16, Vec<u8>)> {
    let header = q.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || qdcount != 1 {
        return None;
    }
    // QNAME: labels up to the root label.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression in a question: not from a stub resolver
        }
        labels.push(
            std::str::from_utf8(q.get(pos..pos + len)?)
                .ok()?
                .to_ascii_lowercase(),
        );
        pos += len;
    }
    let fixed = q.get(pos..pos + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let question_end = pos + 4;
    let name = labels.join(".");
    let addr = names.get(&name).filter(|_| qclass == 1);
    let answer = addr.filter(|_| qtype == QTYPE_A);
    // QR, the query's opcode (0) and RD, AA, RA; NXDOMAIN for names we do not know.
    let rcode = if addr.is_some() { 0 } else { 3 };
    let rflags: u16 = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode;
    let mut r = Vec::with_capacity(question_end + 16);
    r.extend_from_slice(&header[..2]);
    r.extend_from_slice(&rflags.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..question_end]);
    if let Some(ip) = answer {
        r.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        r.extend_from_slice(&QTYPE_A.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes()); // TTL 0
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&ip.octets());
    }
    Some((name, qtype, r))
}

// ---------------------------------------------------------------------------------------
// Targets in the namespace.

/// A TCP listener that accepts connections and holds them open, never reading or writing.
struct TcpHolder {
    port: u16,
    held: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpHolder {
    fn start(ns: &DnsNs) -> TcpHolder {
        let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").expect("bind the TCP target"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("target address").port();
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (held, stop) = (held.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => held.lock().unwrap().push(s),
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        TcpHolder {
            port,
            held,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for TcpHolder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket that records every datagram it receives.
struct UdpRecorder {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpRecorder {
    fn start(ns: &DnsNs, addr: SocketAddr) -> UdpRecorder {
        let sock = ns
            .run(|| UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("bind the UDP target {addr} in {}: {e}", ns.name()));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, stop) = (got.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        got.lock().unwrap().push(buf[..n].to_vec());
                    }
                }
            })
        };
        UdpRecorder {
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// The payloads received so far, as text, in arrival order.
    fn payloads(&self) -> Vec<String> {
        let got = self.got.lock().unwrap();
        got.iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

impl Drop for UdpRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The server in the namespace, and what it reports.

/// `quelay server` in the namespace: password auth, loopback targets allowed, one worker,
/// metrics and the traffic-stats API on 127.0.0.1 there.
struct NsServer {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    stats: SocketAddr,
    ns: String,
    _dir: TempDir,
}

impl NsServer {
    fn start(ns: &DnsNs) -> NsServer {
        let auth = format!("auth:\n  type: password\n  password: {PASSWORD}\n");
        NsServer::start_with(ns, &auth, "")
    }

    /// A server with the `auth` section `auth` and more top-level keys in `extra` (YAML).
    fn start_with(ns: &DnsNs, auth: &str, extra: &str) -> NsServer {
        let dir = tempdir();
        let (cert, key) = write_cert(&dir);
        let port = |ns: &DnsNs| SocketAddr::from(([127, 0, 0, 1], free_port(ns)));
        let (addr, metrics, stats) = (port(ns), port(ns), port(ns));
        let config = format!(
            "listen: {addr}\n\
             tls:\n  cert: {:?}\n  key: {:?}\n\
             {auth}{extra}\
             outboundGuard:\n  allowLoopback: true\n\
             engine:\n  workers: 1\n\
             metrics:\n  listen: {metrics}\n\
             trafficStats:\n  listen: {stats}\n",
            cert.to_string_lossy(),
            key.to_string_lossy(),
        );
        let file = dir.join("server.yaml");
        fs::write(&file, config).expect("write server.yaml");
        let mut cmd = Command::new(support::quelay_bin());
        cmd.arg("server")
            .arg("-c")
            .arg(&file)
            .env("QUELAY_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(dir.path());
        let mut child = run_in(ns.name(), "quelay-server", cmd, &dir);
        let pid = child.id();
        child.wait_ready(
            &format!(
                "UDP {addr}, metrics {metrics} and API {stats} bound in {}",
                ns.name()
            ),
            START_TIMEOUT,
            |_| {
                proc_net_bound(pid, "udp", addr.port())
                    && proc_net_bound(pid, "tcp", metrics.port())
                    && proc_net_bound(pid, "tcp", stats.port())
            },
        );
        NsServer {
            child,
            addr,
            metrics,
            stats,
            ns: ns.name().to_owned(),
            _dir: dir,
        }
    }

    /// The body of `GET path` from `addr` (in the namespace).
    fn get(&self, addr: SocketAddr, path: &str) -> String {
        let path = path.to_owned();
        in_ns(&self.ns, move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // HTTP/1.0: the body is not chunked and ends at EOF.
            let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            s.write_all(req.as_bytes()).expect("send the request");
            let mut out = String::new();
            s.read_to_string(&mut out)
                .unwrap_or_else(|e| panic!("read GET {path} from {addr}: {e}"));
            let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
            assert!(head.split(' ').nth(1) == Some("200"), "GET {path}: {head}");
            body.to_owned()
        })
    }

    /// The sum of every sample of metric `name`.
    fn metric(&self, page: &str, name: &str) -> u64 {
        page.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// The value of the one sample `series` (name and labels, as the page writes them).
    fn sample(page: &str, series: &str) -> u64 {
        page.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no sample {series} in /metrics")) as u64
    }

    /// The `/metrics` page.
    fn metrics_page(&self) -> String {
        self.get(self.metrics, "/metrics")
    }

    /// Open files of the server process.
    fn fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
    }

    /// What the server holds now.
    fn holdings(&mut self) -> Holdings {
        self.child.assert_running();
        let page = self.get(self.metrics, "/metrics");
        let dump = self.get(self.stats, "/dump/streams");
        let dump: serde_json::Value = serde_json::from_str(&dump).expect("/dump/streams is JSON");
        let streams = dump["streams"].as_array().map_or(0, Vec::len);
        Holdings {
            relays: self.metric(&page, "quelay_streams_open"),
            permits: self.metric(&page, "quelay_streams_held"),
            sockets: self.metric(&page, "quelay_sockets_held"),
            user_streams: self.metric(&page, "quelay_user_streams_open"),
            dump_streams: streams as u64,
            fds: self.fds() as u64,
            relayed_total: self.metric(&page, "quelay_streams_relayed_total"),
        }
    }
}

/// What a server holds at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holdings {
    /// `quelay_streams_open`: relays in the workers' tables.
    relays: u64,
    /// `quelay_streams_held`: stream permits.
    permits: u64,
    /// `quelay_sockets_held`: socket-budget slots.
    sockets: u64,
    /// `quelay_user_streams_open`, over users.
    user_streams: u64,
    /// Entries of `/dump/streams`.
    dump_streams: u64,
    /// Open files of the process.
    fds: u64,
    /// `quelay_streams_relayed_total` (not a holding: for the report).
    relayed_total: u64,
}

impl Holdings {
    /// Everything but the counter, to compare with a baseline.
    fn held(&self) -> [u64; 6] {
        [
            self.relays,
            self.permits,
            self.sockets,
            self.user_streams,
            self.dump_streams,
            self.fds,
        ]
    }
}

// ---------------------------------------------------------------------------------------
// The raw Hysteria2 client.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A quinn endpoint whose socket is in the namespace; call inside the runtime.
fn client_endpoint(ns: &DnsNs) -> quinn::Endpoint {
    let sock = ns.run(|| UdpSocket::bind("127.0.0.1:0").expect("bind the client socket"));
    let runtime = quinn::default_runtime().expect("a quinn runtime");
    let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, sock, runtime)
        .expect("client endpoint");
    let crypto = quic::client_crypto(Verify::Insecure, &[b"h3"]).expect("client TLS config");
    ep.set_default_client_config(quic::client_config(crypto, &QuicParams::default()));
    ep
}

/// Connects and authenticates (status 233).
async fn connect_authed(ep: &quinn::Endpoint, server: SocketAddr) -> quinn::Connection {
    connect_authed_as(ep, server, PASSWORD).await
}

/// Connects and authenticates with `auth` (status 233).
async fn connect_authed_as(
    ep: &quinn::Endpoint,
    server: SocketAddr,
    auth: &str,
) -> quinn::Connection {
    let conn = ep
        .connect(server, "hy2.test")
        .expect("connect starts")
        .await
        .expect("QUIC handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("open the auth stream");
    let padding = h3::auth_padding(&mut rand::thread_rng());
    send.write_all(&h3::auth_request_headers(auth, 0, &padding))
        .await
        .expect("write the auth request");
    send.finish().expect("finish the auth stream");
    let head = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(64 * 1024))
        .await
        .expect("the auth answer within 10 s")
        .expect("the auth answer arrives");
    let resp = h3::ResponseReader::new()
        .push(&head)
        .expect("an HTTP/3 response")
        .expect("a whole response");
    assert_eq!(resp.status, 233, "{auth:?} logs the client in");
    conn
}

/// A TCPRequest for `target` with some padding.
fn tcp_request(target: &str) -> Vec<u8> {
    let mut req = Vec::new();
    TcpRequest::encode(target, &[b'p'; 16], &mut req).expect("valid TCPRequest");
    req
}

/// Opens a proxy stream to `target` and waits for its TCPResponse; returns the stream.
async fn open_relay(
    conn: &quinn::Connection,
    target: &str,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open a proxy stream");
    send.write_all(&tcp_request(target))
        .await
        .expect("write the TCPRequest");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match recv.read(&mut buf).await.expect("read the TCPResponse") {
                Some(n) => got.extend_from_slice(&buf[..n]),
                None => panic!("the proxy stream to {target} ended before its TCPResponse"),
            }
            if let Some((resp, _)) = TcpResponse::parse(&got).expect("a TCPResponse") {
                assert!(resp.is_ok(), "the relay to {target} failed: {resp:?}");
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no TCPResponse for {target} within 10 s"));
    (send, recv)
}

/// Polls `server.holdings()` until `done` holds; returns the last reading and whether it did.
fn wait_for(
    server: &mut NsServer,
    timeout: Duration,
    mut done: impl FnMut(&Holdings) -> bool,
) -> (Holdings, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let h = server.holdings();
        if done(&h) {
            return (h, true);
        }
        if Instant::now() >= deadline {
            return (h, false);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// Tests.

/// 2,000 proxy streams to a name that resolves slowly, each reset by the client right after
/// its TCPRequest, while the lookups are queued. Once the resolver has answered them all,
/// the server holds what it held before: relays, permits, sockets, `/dump/streams`, fds.
#[test]
fn streams_reset_during_dns_leave_nothing_behind() {
    const STREAMS: usize = 2000;
    /// Streams opened before the client lets quinn send their requests, then resets them.
    const BATCH: usize = 100;
    /// From a batch's requests to its resets: time for quinn to send the requests and for
    /// the server to read them (a busy machine may take a while).
    const RESET_AFTER: Duration = Duration::from_millis(20);
    const DNS_DELAY: Duration = Duration::from_millis(15);

    let started = Instant::now();
    let ns = DnsNs::new();
    let dns = DnsServer::start(
        &ns,
        DNS_DELAY,
        &[("slow.test", Ipv4Addr::new(127, 0, 0, 1))],
    );
    let target = TcpHolder::start(&ns);
    let mut server = NsServer::start(&ns);
    let target_addr = format!("slow.test:{}", target.port);
    let rt = runtime();
    let _guard = rt.enter();
    let ep = client_endpoint(&ns);
    let conn = rt.block_on(connect_authed(&ep, server.addr));

    // The path works, and the server has done one lookup and one relay before the baseline:
    // a stream relayed to slow.test, then reset by the client (its relay goes away).
    rt.block_on(async {
        let (mut send, mut recv) = open_relay(&conn, &target_addr).await;
        let _ = send.reset(0u32.into());
        let _ = recv.stop(0u32.into());
    });
    let (base, quiet) = wait_for(&mut server, Duration::from_secs(10), |h| {
        h.relays == 0 && h.permits == 0 && h.sockets == 0 && h.dump_streams == 0
    });
    assert!(
        quiet,
        "the warm-up stream's relay did not go away after its reset: {base:?}"
    );
    // The fds settle (the metrics and API connections of the readings are closed).
    let (base, _) = {
        let mut last = base;
        wait_for(&mut server, Duration::from_secs(3), |h| {
            let same = h.fds == last.fds;
            last = *h;
            same
        })
    };
    let a_before = dns.queries("slow.test", QTYPE_A);
    let dns_jobs = |server: &NsServer| {
        NsServer::sample(
            &server.metrics_page(),
            "quelay_offload_jobs_total{pool=\"dns\"}",
        )
    };
    let jobs_before = dns_jobs(&server);
    eprintln!("baseline after the warm-up stream: {base:?}");

    // The streams: each request reaches the server with a STOP_SENDING right behind it; the
    // RESET_STREAM follows once quinn has sent the batch's requests (a reset discards data
    // not yet sent, which would leave the server nothing to resolve).
    let sent_at = Instant::now();
    rt.block_on(async {
        let req = tcp_request(&target_addr);
        for _ in 0..STREAMS / BATCH {
            let mut sends = Vec::with_capacity(BATCH);
            for _ in 0..BATCH {
                let (mut send, mut recv) =
                    tokio::time::timeout(Duration::from_secs(10), conn.open_bi())
                        .await
                        .expect("stream credit within 10 s")
                        .expect("open a proxy stream");
                send.write_all(&req).await.expect("write the TCPRequest");
                let _ = recv.stop(0u32.into());
                sends.push(send);
            }
            tokio::time::sleep(RESET_AFTER).await;
            for mut send in sends {
                let _ = send.reset(0u32.into());
            }
        }
    });
    let sent_in = sent_at.elapsed();

    // Every lookup answered (the relays of the old code connect now), then quiescence.
    dns.wait_all_answered(Duration::from_secs(1), Duration::from_secs(40));
    let queries = dns.queries("slow.test", QTYPE_A) - a_before;
    let aaaa = dns.queries("slow.test", QTYPE_AAAA);
    // Lookups the resolver took (those of one name in flight together share its queries).
    let lookups = dns_jobs(&server) - jobs_before;
    let dns_done = sent_at.elapsed();
    let (end, settled) = wait_for(&mut server, Duration::from_secs(5), |h| {
        h.held() == base.held()
    });
    eprintln!(
        "{STREAMS} streams sent in {sent_in:.1?}; {lookups} lookups of slow.test, {queries} \
         A queries ({aaaa} AAAA in all), all answered {dns_done:.1?} after the first stream; relays started: \
         {}; target connections accepted: {}; now: {end:?}",
        end.relayed_total - base.relayed_total,
        target.accepted(),
    );
    // The test exercised the path: most streams were being resolved when they were reset.
    assert!(
        lookups as usize >= STREAMS / 2,
        "only {lookups} of {STREAMS} streams reached the resolver: the test did not exercise \
         resets during DNS"
    );
    assert!(
        settled,
        "after {STREAMS} streams reset during DNS the server still holds more than before \
         (relays, permits, sockets, user streams, /dump/streams, fds):\n  before {:?}\n  after  \
         {:?}\n  ({} target connections were opened)",
        base.held(),
        end.held(),
        target.accepted()
    );
    // The connection is still usable.
    rt.block_on(async {
        let (mut send, mut recv) = open_relay(&conn, &target_addr).await;
        let _ = send.reset(0u32.into());
        let _ = recv.stop(0u32.into());
    });
    conn.close(0u32.into(), b"done");
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(3), ep.wait_idle()).await;
    });
    server.child.assert_running();
    eprintln!("took {:.1?}", started.elapsed());
}

/// One UDP session sends, alternately, three datagrams to `a.test` and three to `b.test`
/// before either name is resolved (the DNS server answers after 100 ms), then one more to
/// each once they are. Each datagram reaches its own name's address: 127.0.0.2 for a.test,
/// 127.0.0.3 for b.test.
#[test]
fn udp_session_delivers_each_datagram_to_its_own_name() {
    const DNS_DELAY: Duration = Duration::from_millis(100);
    const SESSION: u32 = 7;

    let started = Instant::now();
    let ns = DnsNs::new();
    let a_ip = Ipv4Addr::new(127, 0, 0, 2);
    let b_ip = Ipv4Addr::new(127, 0, 0, 3);
    let dns = DnsServer::start(&ns, DNS_DELAY, &[("a.test", a_ip), ("b.test", b_ip)]);
    let port = free_port(&ns);
    let host_a = UdpRecorder::start(&ns, SocketAddr::from((a_ip, port)));
    let host_b = UdpRecorder::start(&ns, SocketAddr::from((b_ip, port)));
    let mut server = NsServer::start(&ns);
    let rt = runtime();
    let _guard = rt.enter();
    let ep = client_endpoint(&ns);
    let conn = rt.block_on(connect_authed(&ep, server.addr));

    let send = |name: &str, i: usize| {
        let msg = UdpMessage {
            session_id: SESSION,
            packet_id: 0,
            frag_id: 0,
            frag_count: 1,
            addr: format!("{name}:{port}"),
            payload: Bytes::from(format!("for {name} #{i}")),
        };
        let mut out = Vec::new();
        msg.encode(&mut out).expect("a valid UDPMessage");
        conn.send_datagram(Bytes::from(out))
            .expect("the connection takes DATAGRAMs");
    };
    let expect_a = |n: usize| {
        (0..n)
            .map(|i| format!("for a.test #{i}"))
            .collect::<Vec<_>>()
    };
    let expect_b = |n: usize| {
        (0..n)
            .map(|i| format!("for b.test #{i}"))
            .collect::<Vec<_>>()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // Wait until `total` datagrams arrived in all, then a little longer for strays.
    let wait_delivered = |total: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while host_a.payloads().len() + host_b.payloads().len() < total && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(200));
        (host_a.payloads(), host_b.payloads())
    };

    // Round 1: both names unresolved.
    for i in 0..3 {
        send("a.test", i);
        send("b.test", i);
    }
    let answered_while_sending = dns.answered();
    let (got_a, got_b) = wait_delivered(6);
    eprintln!("round 1: 127.0.0.2 got {got_a:?}; 127.0.0.3 got {got_b:?}");
    assert_eq!(
        answered_while_sending, 0,
        "the datagrams were sent before any name was resolved"
    );
    assert_eq!(
        (sorted(got_a), sorted(got_b)),
        (expect_a(3), expect_b(3)),
        "each datagram sent before the names were resolved goes to its own name's address \
         (127.0.0.2 for a.test, 127.0.0.3 for b.test)"
    );
    assert_eq!(
        (
            dns.queries("a.test", QTYPE_A),
            dns.queries("b.test", QTYPE_A)
        ),
        (1, 1),
        "one lookup per name"
    );

    // Round 2: both names known to the session.
    send("a.test", 3);
    send("b.test", 3);
    let (got_a, got_b) = wait_delivered(8);
    eprintln!("round 2: 127.0.0.2 got {got_a:?}; 127.0.0.3 got {got_b:?}");
    assert_eq!(
        (sorted(got_a), sorted(got_b)),
        (expect_a(4), expect_b(4)),
        "datagrams to names the session has resolved go to their own addresses"
    );

    conn.close(0u32.into(), b"done");
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(3), ep.wait_idle()).await;
    });
    server.child.assert_running();
    eprintln!("took {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// Rooms off the data path: DNS, HTTP authentication.

/// The auth value the backend never answers (it holds the request open).
const FLOOD_AUTH: &str = "flood";

/// An `auth.type: http` backend in the namespace: `{"ok": true, "id": AUTH}` at once for any
/// auth value but [`FLOOD_AUTH`], whose requests it holds open without an answer until it
/// is dropped.
struct AuthBackend {
    url: String,
    /// Requests held open now.
    held: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AuthBackend {
    fn start(ns: &DnsNs) -> AuthBackend {
        let listener = ns.run(|| TcpListener::bind("127.0.0.1:0").expect("bind the auth backend"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let url = format!(
            "http://{}/auth",
            listener.local_addr().expect("its address")
        );
        let held = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (held, stop) = (held.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (held, stop) = (held.clone(), stop.clone());
                            thread::spawn(move || serve_auth(s, &held, &stop));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        AuthBackend {
            url,
            held,
            stop,
            thread: Some(thread),
        }
    }

    /// The server's `auth` section for this backend.
    fn auth_section(&self) -> String {
        format!("auth:\n  type: http\n  http:\n    url: {}\n", self.url)
    }

    fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for AuthBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers the requests of one backend connection (the server's HTTP client keeps it alive).
fn serve_auth(s: TcpStream, held: &AtomicU64, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut out = match s.try_clone() {
        Ok(o) => o,
        Err(_) => return,
    };
    let mut r = std::io::BufReader::new(s);
    while !stop.load(Ordering::SeqCst) {
        let head = match support::read_head(&mut r) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => return,
        };
        let mut body = vec![0u8; head.content_length().unwrap_or(0) as usize];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let auth = req["auth"].as_str().unwrap_or_default().to_owned();
        if auth == FLOOD_AUTH {
            held.fetch_add(1, Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
            held.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let reply = serde_json::json!({ "ok": true, "id": auth }).to_string();
        let msg = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if out.write_all(msg.as_bytes()).is_err() {
            return;
        }
    }
}

/// Opens a proxy stream to `target` and sends its TCPRequest; a task records in `answered`
/// when its TCPResponse (or the end of the stream) arrives. The streams are returned so that
/// they stay open.
fn start_relay_in_background(
    conn: &quinn::Connection,
    target: String,
    answered: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Option<bool>> {
    let conn = conn.clone();
    tokio::spawn(async move {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(&tcp_request(&target)).await.ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let ok = loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                _ => break None,
            }
            if let Ok(Some((resp, _))) = TcpResponse::parse(&got) {
                break Some(resp.is_ok());
            }
        };
        answered.fetch_add(1, Ordering::SeqCst);
        let _ = send.reset(0u32.into());
        ok
    })
}

/// Polls the server's `/metrics` until `done` holds; panics with `what` after `timeout`.
fn wait_metrics(server: &NsServer, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let page = server.metrics_page();
        if done(&page) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}; /metrics:\n{}",
            page.lines()
                .filter(|l| l.starts_with("quelay_offload") || l.starts_with("quelay_dns"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Where the server looks names up in [`nothing_waits_on_names_that_never_answer`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Upstream {
    /// `system`: getaddrinfo, through the namespace's resolv.conf (the test's DNS server).
    System,
    /// `resolver: {type: udp}`: the test's DNS server on another port, which no resolv.conf
    /// names.
    Udp,
}

/// 200 proxy streams to names that never answer are being looked up. Meanwhile a relay to an
/// IP literal, a login through the HTTP backend and a relay to a name that answers all
/// complete, before any of the 200 has its answer; then each of the 200 fails.
fn nothing_waits_on_names_that_never_answer(upstream: Upstream) {
    const SLOW: usize = 200;
    let started = Instant::now();
    // getaddrinfo keeps asking for 20 s: the resolver's own deadline (10 s) ends the lookups.
    let ns = DnsNs::with_options("attempts:2 timeout:10");
    let names = [("fast.test", Ipv4Addr::new(127, 0, 0, 1))];
    let (dns, extra) = match upstream {
        Upstream::System => (DnsServer::start(&ns, Duration::ZERO, &names), String::new()),
        Upstream::Udp => {
            let port = free_port(&ns);
            let dns = DnsServer::start_on(&ns, port, Duration::ZERO, &names);
            let extra = format!(
                "resolver:\n  type: udp\n  udp:\n    addr: 127.0.0.1:{port}\n    timeout: 4s\n"
            );
            (dns, extra)
        }
    };
    let backend = AuthBackend::start(&ns);
    let target = TcpHolder::start(&ns);
    let server = NsServer::start_with(&ns, &backend.auth_section(), &extra);
    let rt = runtime();
    let _guard = rt.enter();
    let ep = client_endpoint(&ns);
    let conn = rt.block_on(connect_authed_as(&ep, server.addr, "alice"));
    let page = server.metrics_page();
    let jobs = |page: &str| NsServer::sample(page, "quelay_offload_jobs_total{pool=\"dns\"}");
    let jobs_before = jobs(&page);

    // The slow streams: with the system resolver all to one name (getaddrinfo holds a thread
    // per name), with the udp upstream each to its own.
    let answered = Arc::new(AtomicU64::new(0));
    let slow: Vec<_> = (0..SLOW)
        .map(|i| {
            let name = match upstream {
                Upstream::System => "never.test".to_owned(),
                Upstream::Udp => format!("n{i}.never.test"),
            };
            start_relay_in_background(&conn, format!("{name}:{}", target.port), answered.clone())
        })
        .collect();
    wait_metrics(&server, Duration::from_secs(20), "the slow lookups", |p| {
        jobs(p) - jobs_before >= SLOW as u64
            && NsServer::sample(p, "quelay_offload_running{pool=\"dns\"}") >= 1
    });
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "a never-answered name was answered"
    );

    // Meanwhile: an IP literal, a login, a name that answers.
    rt.block_on(async {
        let ip = format!("127.0.0.1:{}", target.port);
        let (mut send, _recv) = open_relay(&conn, &ip).await;
        let _ = send.reset(0u32.into());
        let second = connect_authed_as(&ep, server.addr, "bob").await;
        second.close(0u32.into(), b"done");
        let (mut send, _recv) = open_relay(&conn, &format!("fast.test:{}", target.port)).await;
        let _ = send.reset(0u32.into());
    });
    let page = server.metrics_page();
    let pending = NsServer::sample(&page, "quelay_offload_running{pool=\"dns\"}");
    let early = answered.load(Ordering::SeqCst);
    eprintln!(
        "{upstream:?}: IP literal, login and fast.test done {:.1?} in, while {pending} lookup(s) \
         were in flight and {early} of {SLOW} slow streams had an answer; DNS queries: \
         never.test {}, fast.test {}",
        started.elapsed(),
        dns.queries("never.test", QTYPE_A) + dns.queries("n0.never.test", QTYPE_A),
        dns.queries("fast.test", QTYPE_A),
    );
    assert_eq!(
        early, 0,
        "the slow streams were answered before the fast work was done: the test did not \
         show it going on beside them"
    );
    assert!(pending >= 1, "the slow lookups were still in flight");
    if upstream == Upstream::Udp {
        // Nothing listens on the port resolv.conf names: fast.test came through the
        // configured server.
        assert!(
            dns.queries("fast.test", QTYPE_A) >= 1,
            "fast.test was not asked of the configured udp upstream"
        );
    }

    // Every slow stream ends with an error once its lookup has given up.
    let outcomes = rt.block_on(async {
        let mut out = Vec::new();
        for t in slow {
            let r = tokio::time::timeout(Duration::from_secs(40), t).await;
            out.push(r.ok().and_then(|r| r.ok()).flatten());
        }
        out
    });
    let failed = outcomes.iter().filter(|o| **o == Some(false)).count();
    assert_eq!(
        failed,
        SLOW,
        "each stream to a name that never answers fails once its lookup gives up: {:?}",
        outcomes
            .iter()
            .filter(|o| **o != Some(false))
            .take(5)
            .collect::<Vec<_>>()
    );
    conn.close(0u32.into(), b"done");
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(3), ep.wait_idle()).await;
    });
    let mut server = server;
    server.child.assert_running();
    drop(backend);
    eprintln!("took {:.1?}", started.elapsed());
}

#[test]
fn nothing_waits_on_names_that_never_answer_system() {
    nothing_waits_on_names_that_never_answer(Upstream::System);
}

#[test]
fn nothing_waits_on_names_that_never_answer_udp_upstream() {
    nothing_waits_on_names_that_never_answer(Upstream::Udp);
}

/// Two unauthenticated connections send 1,200 auth requests to an HTTP backend that never
/// answers them. The auth room's threads all wait on the backend, its queue fills, and what
/// does not fit is refused at once (503, counted in /metrics). Meanwhile an authenticated
/// client's relays to a name and to an IP literal complete.
#[test]
fn an_auth_flood_does_not_delay_domain_relays() {
    const PER_CONN: usize = 600;
    let started = Instant::now();
    let ns = DnsNs::new();
    let dns = DnsServer::start(
        &ns,
        Duration::ZERO,
        &[("fast.test", Ipv4Addr::new(127, 0, 0, 1))],
    );
    let backend = AuthBackend::start(&ns);
    let target = TcpHolder::start(&ns);
    let server = NsServer::start_with(&ns, &backend.auth_section(), "");
    let rt = runtime();
    let _guard = rt.enter();
    let ep = client_endpoint(&ns);
    let conn = rt.block_on(connect_authed_as(&ep, server.addr, "alice"));
    let full_before = NsServer::sample(
        &server.metrics_page(),
        "quelay_offload_queue_full_total{pool=\"auth\"}",
    );

    // The flood: auth requests the backend holds, on two connections that never log in.
    let statuses = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
    let flooders: Vec<quinn::Connection> = rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..2 {
            let c = ep
                .connect(server.addr, "hy2.test")
                .expect("connect starts")
                .await
                .expect("QUIC handshake");
            for _ in 0..PER_CONN {
                let (c2, statuses) = (c.clone(), statuses.clone());
                tokio::spawn(async move {
                    let (mut send, mut recv) = c2.open_bi().await.ok()?;
                    let padding = h3::auth_padding(&mut rand::thread_rng());
                    send.write_all(&h3::auth_request_headers(FLOOD_AUTH, 0, &padding))
                        .await
                        .ok()?;
                    send.finish().ok()?;
                    let head = recv.read_to_end(64 * 1024).await.ok()?;
                    let resp = h3::ResponseReader::new().push(&head).ok()??;
                    *statuses.lock().unwrap().entry(resp.status).or_default() += 1;
                    Some(())
                });
            }
            conns.push(c);
        }
        conns
    });
    let threads = quelay::server::offload::AUTH_POOL.threads as u64;
    wait_metrics(&server, Duration::from_secs(30), "the auth flood", |p| {
        NsServer::sample(p, "quelay_offload_running{pool=\"auth\"}") == threads
            && NsServer::sample(p, "quelay_offload_queue_full_total{pool=\"auth\"}") > full_before
    });
    assert_eq!(
        backend.held(),
        threads,
        "the backend holds one request per auth thread"
    );

    // Domain relays (and an IP literal) meanwhile.
    rt.block_on(async {
        for i in 0..5 {
            let target = if i % 2 == 0 {
                format!("fast.test:{}", target.port)
            } else {
                format!("127.0.0.1:{}", target.port)
            };
            let (mut send, _recv) = open_relay(&conn, &target).await;
            let _ = send.reset(0u32.into());
        }
    });
    let page = server.metrics_page();
    let running = NsServer::sample(&page, "quelay_offload_running{pool=\"auth\"}");
    let queued = NsServer::sample(&page, "quelay_offload_queued{pool=\"auth\"}");
    let refused =
        NsServer::sample(&page, "quelay_offload_queue_full_total{pool=\"auth\"}") - full_before;
    let got = statuses.lock().unwrap().clone();
    eprintln!(
        "relays done {:.1?} in, with {running} auth jobs running, {queued} queued, {refused} \
         refused; flood answers by status: {got:?}; fast.test A queries: {}",
        started.elapsed(),
        dns.queries("fast.test", QTYPE_A)
    );
    assert_eq!(running, threads, "the flood still held every auth thread");
    assert!(queued > 0, "the flood still had auth requests queued");
    // What did not fit was refused at once, and nothing of the flood logged in.
    assert!(refused > 0);
    assert_eq!(got.get(&233), None, "a flood request logged in: {got:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (statuses.lock().unwrap().get(&503).copied().unwrap_or(0) as u64) < refused
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(20));
    }
    let got = statuses.lock().unwrap().clone();
    assert_eq!(
        got.get(&503).copied().unwrap_or(0) as u64,
        refused,
        "each refused auth request is answered 503: {got:?}"
    );

    for c in flooders {
        c.close(0u32.into(), b"done");
    }
    conn.close(0u32.into(), b"done");
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(3), ep.wait_idle()).await;
    });
    let mut server = server;
    server.child.assert_running();
    drop(backend);
    eprintln!("took {:.1?}", started.elapsed());
}
