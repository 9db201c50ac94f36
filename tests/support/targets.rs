//! The servers proxied traffic reaches: an HTTP/1.1 target with a download pattern and an
//! upload digest, a TCP echo and a UDP echo. Each runs on threads that stop when it is dropped
//! and, whatever happens, after `MAX_LIFETIME`; every connection has an idle timeout.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::http::{read_head, Head};

/// No target outlives this, even if its owner leaks it.
const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// A connection silent for this long is dropped.
const IDLE: Duration = Duration::from_secs(60);
/// Connection threads only shuffle buffers; small stacks keep 1000 of them cheap.
const CONN_STACK: usize = 256 * 1024;
/// The largest body the HTTP target serves or digests: anything bigger is a test bug.
const MAX_BODY: u64 = 1 << 30;

/// The period of the download pattern: a prime, so a shifted or repeated chunk never lines
/// up with power-of-two buffer sizes.
pub const PATTERN_PERIOD: u64 = 251;

/// Byte `i` of the deterministic download pattern.
pub fn pattern_byte(i: u64) -> u8 {
    (i % PATTERN_PERIOD) as u8
}

/// The index of the first byte of `data` that differs from the pattern starting at `offset`.
pub fn pattern_mismatch(offset: u64, data: &[u8]) -> Option<usize> {
    data.iter()
        .enumerate()
        .find(|&(i, &b)| b != pattern_byte(offset + i as u64))
        .map(|(i, _)| i)
}

/// Counters shared by a TCP service and its connection threads.
#[derive(Default)]
struct Counters {
    /// Connections accepted.
    accepted: AtomicUsize,
    /// Connections whose handler has not returned yet.
    open: AtomicUsize,
    /// The most connections open at once.
    peak_open: AtomicUsize,
    /// Requests parsed (HTTP only).
    requests: AtomicUsize,
}

/// Accept queue of the targets' listeners. std's `TcpListener::bind` asks for 128, which a
/// burst of a thousand connects from a relay overflows: the relay's connect succeeds, the
/// target never accepts, and the stream ends empty. The kernel caps this at somaxconn.
const BACKLOG: i32 = 4096;

/// A TCP listener on a free 127.0.0.1 port with a `BACKLOG` accept queue.
fn listen_loopback() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("TCP socket");
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    sock.bind(&addr.into()).expect("bind 127.0.0.1:0");
    sock.listen(BACKLOG).expect("listen");
    sock.into()
}

/// A TCP listener on 127.0.0.1 with one thread per connection running `handle`.
struct TcpService {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    /// Clones of the streams whose handler still runs, by accept sequence number: shut down
    /// on drop so handlers blocked in a read return; removed when the handler returns, so the
    /// socket closes then.
    conns: Arc<Mutex<HashMap<usize, TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl TcpService {
    fn start<H>(name: &str, handle: H) -> TcpService
    where
        H: Fn(TcpStream, &Counters) + Send + Sync + 'static,
    {
        let listener = listen_loopback();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let conns = Arc::new(Mutex::new(HashMap::new()));
        let handle = Arc::new(handle);
        let accept = {
            let (stop, counters, conns) = (stop.clone(), counters.clone(), conns.clone());
            let name = name.to_owned();
            thread::Builder::new()
                .name(format!("{name}-accept"))
                .spawn(move || {
                    let until = Instant::now() + MAX_LIFETIME;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        let stream = match listener.accept() {
                            Ok((s, _)) => s,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                thread::sleep(Duration::from_millis(2));
                                continue;
                            }
                            Err(e) => {
                                eprintln!("{name}: accept: {e}");
                                thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        };
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(IDLE));
                        let _ = stream.set_write_timeout(Some(IDLE));
                        let _ = stream.set_nodelay(true);
                        let seq = counters.accepted.fetch_add(1, Ordering::SeqCst);
                        if let Ok(clone) = stream.try_clone() {
                            conns.lock().unwrap().insert(seq, clone);
                        }
                        let now = counters.open.fetch_add(1, Ordering::SeqCst) + 1;
                        counters.peak_open.fetch_max(now, Ordering::SeqCst);
                        let (handle, counters2, conns2) =
                            (handle.clone(), counters.clone(), conns.clone());
                        let spawned = thread::Builder::new()
                            .name(format!("{name}-conn"))
                            .stack_size(CONN_STACK)
                            .spawn(move || {
                                handle(stream, &counters2);
                                conns2.lock().unwrap().remove(&seq);
                                counters2.open.fetch_sub(1, Ordering::SeqCst);
                            });
                        if let Err(e) = spawned {
                            eprintln!("{name}: cannot spawn a connection thread: {e}");
                            conns.lock().unwrap().remove(&seq);
                            counters.open.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                })
                .expect("spawn the accept thread")
        };
        TcpService {
            addr,
            stop,
            counters,
            conns,
            accept: Some(accept),
        }
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for (_, s) in self.conns.lock().unwrap().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// HTTP/1.1 on 127.0.0.1 with keep-alive:
/// - `GET /bytes/N` answers N bytes of the pattern (`pattern_byte`) with a Content-Length;
/// - `POST /sha256` reads Content-Length bytes and answers the lowercase hex SHA-256 of them;
/// - anything else is a 404.
pub struct HttpTarget(TcpService);

impl HttpTarget {
    pub fn start() -> HttpTarget {
        HttpTarget(TcpService::start("http-target", serve_http))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.0.counters.accepted.load(Ordering::SeqCst)
    }

    /// Requests whose head was read so far.
    pub fn requests(&self) -> usize {
        self.0.counters.requests.load(Ordering::SeqCst)
    }
}

fn serve_http(stream: TcpStream, counters: &Counters) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::with_capacity(64 * 1024, read_half);
    let mut w = stream;
    // Errors just end the connection: the client side of the test reports what it saw.
    while let Ok(Some(head)) = read_head(&mut r) {
        counters.requests.fetch_add(1, Ordering::SeqCst);
        if answer(&head, &mut r, &mut w).is_err() || head.wants_close() {
            return;
        }
    }
}

fn answer(head: &Head, r: &mut impl BufRead, w: &mut TcpStream) -> io::Result<()> {
    let mut parts = head.start.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path.strip_prefix("/bytes/")) {
        ("GET", Some(n)) => match n.parse::<u64>() {
            Ok(n) if n <= MAX_BODY => send_pattern(w, n),
            _ => respond(w, "400 Bad Request", b"bad length\n"),
        },
        _ if method == "POST" && path == "/sha256" => match head.content_length() {
            Some(len) if len <= MAX_BODY => {
                let digest = digest_body(r, len)?;
                respond(w, "200 OK", digest.as_bytes())
            }
            _ => respond(w, "400 Bad Request", b"missing or huge Content-Length\n"),
        },
        _ => respond(w, "404 Not Found", b"not found\n"),
    }
}

fn respond(w: &mut TcpStream, status: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)
}

fn send_pattern(w: &mut TcpStream, len: u64) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    w.write_all(head.as_bytes())?;
    // A whole number of periods, so every chunk starts at pattern position 0.
    let chunk: Vec<u8> = (0..PATTERN_PERIOD * 256).map(pattern_byte).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    w.flush()
}

fn digest_body(r: &mut impl Read, len: u64) -> io::Result<String> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(super::hex(ctx.finish().as_ref()))
}

/// Echoes every byte back on the same connection until EOF.
pub struct TcpEcho(TcpService);

impl TcpEcho {
    pub fn start() -> TcpEcho {
        TcpEcho(TcpService::start("tcp-echo", |mut s, _| {
            let mut buf = [0; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.0.counters.accepted.load(Ordering::SeqCst)
    }

    /// The most connections that were open at the same time.
    pub fn peak_open(&self) -> usize {
        self.0.counters.peak_open.load(Ordering::SeqCst)
    }
}

/// A UDP target on `bind`: one thread that answers each datagram with what `answer` makes
/// of it (nothing for `None`), until dropped.
pub struct UdpService {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Datagrams received.
    datagrams: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl UdpService {
    pub fn start<A>(name: &str, bind: &str, answer: A) -> UdpService
    where
        A: Fn(&[u8], SocketAddr) -> Option<Vec<u8>> + Send + 'static,
    {
        let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("{name}: bind {bind}: {e}"));
        // The poll interval for the stop flag.
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let addr = sock.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let datagrams = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, datagrams) = (stop.clone(), datagrams.clone());
            thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    let until = Instant::now() + MAX_LIFETIME;
                    let mut buf = vec![0; 65536];
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        if let Ok((n, from)) = sock.recv_from(&mut buf) {
                            datagrams.fetch_add(1, Ordering::SeqCst);
                            if let Some(reply) = answer(&buf[..n], from) {
                                let _ = sock.send_to(&reply, from);
                            }
                        }
                    }
                })
                .unwrap_or_else(|e| panic!("spawn the {name} thread: {e}"))
        };
        UdpService {
            addr,
            stop,
            datagrams,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far.
    pub fn datagrams(&self) -> usize {
        self.datagrams.load(Ordering::SeqCst)
    }
}

impl Drop for UdpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echoes every datagram to its sender, from one thread.
pub struct UdpEcho(UdpService);

impl UdpEcho {
    pub fn start() -> UdpEcho {
        UdpEcho(UdpService::start("udp-echo", "127.0.0.1:0", |d, _| {
            Some(d.to_vec())
        }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Datagrams received (and echoed).
    pub fn datagrams(&self) -> usize {
        self.0.datagrams()
    }
}

/// Listening sockets on one 127.0.0.1 port that never accept: the kernel completes each
/// connection's handshake and holds it in an accept queue (`BACKLOG` long) until the
/// holder is dropped. A target for many streams held at once that costs neither a thread
/// nor a file descriptor per connection: `listeners` sockets in a SO_REUSEPORT group,
/// among which the kernel spreads connections by a hash of their addresses.
pub struct TcpBacklogHold {
    addr: SocketAddr,
    _listeners: Vec<socket2::Socket>,
}

impl TcpBacklogHold {
    /// Enough listeners for `n` connections, with room for an uneven spread.
    pub fn start(n: usize) -> TcpBacklogHold {
        use socket2::{Domain, Socket, Type};
        let count = (2 * n).div_ceil(BACKLOG as usize).max(1);
        let mut addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut listeners = Vec::with_capacity(count);
        for _ in 0..count {
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("TCP socket");
            sock.set_reuse_port(true).expect("SO_REUSEPORT");
            sock.bind(&addr.into())
                .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            sock.listen(BACKLOG).expect("listen");
            addr = sock
                .local_addr()
                .expect("local address")
                .as_socket()
                .expect("an IP address");
            listeners.push(sock);
        }
        TcpBacklogHold {
            addr,
            _listeners: listeners,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections held now: the accept queues' lengths, which /proc/net/tcp shows as the
    /// receive queue of a listening socket.
    pub fn held(&self) -> usize {
        let want = format!(":{:04X}", self.addr.port());
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().take(5).collect();
                (cols.len() == 5 && cols[1].ends_with(&want) && cols[3] == "0A").then(|| {
                    let rx = cols[4].split(':').nth(1).unwrap_or("0");
                    usize::from_str_radix(rx, 16).unwrap_or(0)
                })
            })
            .sum()
    }
}
