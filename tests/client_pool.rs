//! `quelay client`'s pool follows demand: thousands of SOCKS5 connections held open at once
//! through a client with its default config all get a stream, on about as few connections
//! to the server as its stream credit allows; and when the server takes no more
//! connections (a per-user cap), requests wait, with one log line saying why, and go through
//! once streams free.

mod support;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// `quic.maxIncomingStreams` of the quelay server: a connection carries 64 streams at most.
const CREDIT: usize = 64;
/// How long the whole burst may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);
/// The client's default `pool.streamOpenTimeout`.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of a request: no answer yet, a SOCKS5 REP, or the proxy closed or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Pending,
    Rep(u8),
    Closed,
    Error(ErrorKind),
}

/// `n` SOCKS5 CONNECTs to `target` sent through `proxy` at once (each on its own
/// connection, greeting and request in one write), the connections held.
struct Burst {
    socks: Vec<TcpStream>,
    answers: Vec<Answer>,
    started: Instant,
}

impl Burst {
    fn send(proxy: SocketAddr, target: SocketAddr, n: usize) -> Burst {
        let started = Instant::now();
        let socks: Vec<TcpStream> = (0..n)
            .map(|i| {
                let s = socks5_connect_send(proxy, "127.0.0.1", target.port())
                    .unwrap_or_else(|e| panic!("request {i} to the SOCKS5 listener: {e}"));
                s.set_nonblocking(true).expect("non-blocking");
                s
            })
            .collect();
        eprintln!(
            "{}: {n} requests sent in {:.2?}",
            test_name(),
            started.elapsed()
        );
        Burst {
            answers: vec![Answer::Pending; n],
            socks,
            started,
        }
    }

    /// Reads the answers that arrived, until `done` holds or `deadline` passes.
    fn collect(&mut self, deadline: Instant, mut done: impl FnMut(&Burst) -> bool) {
        loop {
            for (s, a) in self.socks.iter().zip(self.answers.iter_mut()) {
                if *a != Answer::Pending {
                    continue;
                }
                let mut buf = [0; CONNECT_ANSWER_LEN];
                match s.peek(&mut buf) {
                    Ok(0) => *a = Answer::Closed,
                    Ok(n) if n >= CONNECT_ANSWER_LEN => {
                        (&*s).read_exact(&mut buf).expect("read a peeked answer");
                        *a = Answer::Rep(buf[3]);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => *a = Answer::Error(e.kind()),
                }
            }
            if done(self) || Instant::now() >= deadline {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, what: Answer) -> usize {
        self.answers.iter().filter(|&&a| a == what).count()
    }

    fn succeeded(&self) -> usize {
        self.count(Answer::Rep(0))
    }

    fn pending(&self) -> usize {
        self.count(Answer::Pending)
    }

    /// Answers other than success and pending, with how many of each.
    fn failures(&self) -> Vec<(Answer, usize)> {
        let mut out: Vec<(Answer, usize)> = Vec::new();
        for &a in &self.answers {
            if a == Answer::Pending || a == Answer::Rep(0) {
                continue;
            }
            match out.iter_mut().find(|(b, _)| *b == a) {
                Some((_, n)) => *n += 1,
                None => out.push((a, 1)),
            }
        }
        out
    }
}

/// The client's default worker count: one pool per worker.
fn client_workers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Holds `n` SOCKS5 connections through `quelay client` (default config) against a server
/// at `server` that grants `credit` streams per connection (`None`: no limit that matters):
/// every request succeeds, the target sees them all, and the pool opened no more than 10%
/// over the connections needed.
fn hold_many(server: SocketAddr, n: usize, credit: Option<usize>, target: &TcpBacklogHold) {
    let mut client = QuelayClient::start(server, &ClientOpts::default());
    let mut burst = Burst::send(client.socks_addr(), target.addr(), n);
    burst.collect(burst.started + ANSWER_TIMEOUT, |b| b.pending() == 0);
    let took = burst.started.elapsed();
    let failures = burst.failures();
    assert!(
        failures.is_empty() && burst.pending() == 0,
        "{n} held requests: {} succeeded, {} unanswered after {ANSWER_TIMEOUT:?}, failures \
         {failures:?}; client stderr:\n{}",
        burst.succeeded(),
        burst.pending(),
        tail(&client.child().stderr(), 30)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.held() < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(target.held(), n, "connections the target holds");
    let stats = client.stop_stats();
    eprintln!(
        "{}: {n} streams held, all answered in {took:.2?}; {}",
        test_name(),
        stats.line
    );
    // Each worker has a pool of its own and keeps one connection up: the fewest connections
    // that can carry the requests is the larger of the two.
    let needed = credit.map_or(1, |c| n.div_ceil(c)).max(client_workers());
    let allowed = needed + needed / 10;
    assert_eq!(stats.get("refused"), 0, "requests refused: {}", stats.line);
    assert_eq!(
        stats.get("streams_opened"),
        n as u64,
        "streams opened: {}",
        stats.line
    );
    let peak = stats.get("peak_connections") as usize;
    assert!(
        (needed..=allowed).contains(&peak),
        "peak connections {peak}, want {needed} to {allowed} (the minimum for {n} streams \
         plus 10%): {}",
        stats.line
    );
    let connects = stats.get("connects") as usize;
    assert!(
        connects <= allowed,
        "connections attempted {connects}, want at most {allowed}: {}",
        stats.line
    );
    assert_eq!(stats.get("server_refusals"), 0, "{}", stats.line);
}

fn quelay_server() -> QuelayServer {
    QuelayServer::start(&format!("quic:\n  maxIncomingStreams: {CREDIT}\n"))
}

/// File descriptors for `n` held streams: the SOCKS5 connections here, the local
/// connections in the client and the outbound ones in the server, which inherit this limit.
/// (The target holds its side in accept queues.) The tests that hold thousands run one at a
/// time: together they would need more than the limit allows.
fn open_files_for(n: usize) -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_open_files(n as u64 + 2048);
    guard
}

#[test]
fn holds_3000_streams_against_quelay() {
    let _one = open_files_for(3000);
    let target = TcpBacklogHold::start(3000);
    let server = quelay_server();
    hold_many(server.addr(), 3000, Some(CREDIT), &target);
}

#[test]
fn holds_10000_streams_against_quelay() {
    let _one = open_files_for(10_000);
    let target = TcpBacklogHold::start(10_000);
    let server = quelay_server();
    hold_many(server.addr(), 10_000, Some(CREDIT), &target);
}

/// sing-box grants a connection practically unlimited streams: one connection per worker
/// carries them all.
#[test]
fn holds_3000_streams_against_singbox() {
    let _one = open_files_for(3000);
    let target = TcpBacklogHold::start(3000);
    let server = SingboxServer::start(PASSWORD, &ServerOpts::default());
    hold_many(server.addr(), 3000, None, &target);
}

#[test]
fn holds_10000_streams_against_singbox() {
    let _one = open_files_for(10_000);
    let target = TcpBacklogHold::start(10_000);
    let server = SingboxServer::start(PASSWORD, &ServerOpts::default());
    hold_many(server.addr(), 10_000, None, &target);
}

/// The server serves 4 connections of the user (`limits.maxConnectionsPerUser: 4`), 64
/// streams each at most; 64 requests more than those streams can carry are held. The pool
/// finds the connections beyond the fourth not served, says so in one line, and keeps the
/// requests waiting; when the held connections close, within `pool.streamOpenTimeout`, the
/// rest go through. One worker, so that the four connections are all in the same pool.
#[test]
fn waits_when_the_server_caps_connections() {
    const PER_USER: usize = 4;
    const CAPACITY: usize = PER_USER * CREDIT;
    const EXTRA: usize = 64;
    const WHY: &str = "the server refused connection";
    // An echo target: it closes its side when the application closes, freeing the stream.
    let target = TcpEcho::start();
    let server = QuelayServer::start(&format!(
        "quic:\n  maxIncomingStreams: {CREDIT}\nlimits:\n  maxConnectionsPerUser: {PER_USER}\n"
    ));
    let opts = ClientOpts {
        extra: "engine:\n  workers: 1\n".to_owned(),
        ..ClientOpts::default()
    };
    let mut client = QuelayClient::start(server.addr(), &opts);
    let mut burst = Burst::send(client.socks_addr(), target.addr(), CAPACITY + EXTRA);
    let said_why = |c: &mut QuelayClient| c.child().stderr().contains(WHY);
    // Well within the requests' streamOpenTimeout, the pool has found out.
    let deadline = burst.started + STREAM_OPEN_TIMEOUT - Duration::from_secs(3);
    burst.collect(deadline, |_| said_why(&mut client));
    burst.collect(Instant::now() + Duration::from_millis(500), |_| false);
    let waited = burst.started.elapsed();
    let stderr = client.child().stderr();
    let failures = burst.failures();
    assert!(
        failures.is_empty(),
        "failures while the server is at its connection cap: {failures:?}; client stderr:\n{}",
        tail(&stderr, 30)
    );
    // Each connection's auth request may hold one of its streams.
    let served = burst.succeeded();
    assert!(
        (CAPACITY - PER_USER..=CAPACITY).contains(&served) && burst.pending() > 0,
        "after {waited:.2?}: {served} answered, {} waiting; the server relays {} to \
         {CAPACITY} streams; client stderr:\n{}",
        burst.pending(),
        CAPACITY - PER_USER,
        tail(&stderr, 30)
    );
    let why: Vec<&str> = stderr.lines().filter(|l| l.contains(WHY)).collect();
    assert_eq!(
        why.len(),
        1,
        "one line saying why requests wait; client stderr:\n{}",
        tail(&stderr, 30)
    );
    eprintln!(
        "{}: after {waited:.2?}, {served} answered, {} waiting: {}",
        test_name(),
        burst.pending(),
        why[0]
    );
    assert!(
        why[0].contains("maxConnectionsPerUser"),
        "the line names the likely cause: {}",
        why[0]
    );

    // Free the held streams: the waiting requests get them.
    for (s, a) in burst.socks.iter().zip(&burst.answers) {
        if *a == Answer::Rep(0) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    burst.collect(burst.started + STREAM_OPEN_TIMEOUT, |b| b.pending() == 0);
    let failures = burst.failures();
    assert!(
        failures.is_empty() && burst.pending() == 0,
        "after the held streams closed: {} more went through, {} still waiting at {:.2?}, \
         failures {failures:?}; client stderr:\n{}",
        burst.succeeded() - served,
        burst.pending(),
        burst.started.elapsed(),
        tail(&client.child().stderr(), 30)
    );
    let stats = client.stop_stats();
    eprintln!("{}: {}", test_name(), stats.line);
    assert_eq!(stats.get("refused"), 0, "{}", stats.line);
    assert!(stats.get("server_refusals") >= 1, "{}", stats.line);
    assert!(stats.get("requeued") >= 1, "{}", stats.line);
    assert_eq!(
        stats.get("streams_opened"),
        (CAPACITY + EXTRA) as u64 + stats.get("requeued"),
        "{}",
        stats.line
    );
}

/// After a burst, the extra connections close once they have carried nothing for 30 s;
/// the first stays. One worker, so that all are in the same pool.
#[test]
fn idle_connections_beyond_the_first_close() {
    const N: usize = 300;
    const IDLE_CLOSE: Duration = Duration::from_secs(30);
    let target = TcpEcho::start();
    let server = quelay_server();
    let opts = ClientOpts {
        extra: "engine:\n  workers: 1\n".to_owned(),
        ..ClientOpts::default()
    };
    let mut client = QuelayClient::start(server.addr(), &opts);
    let mut burst = Burst::send(client.socks_addr(), target.addr(), N);
    burst.collect(burst.started + ANSWER_TIMEOUT, |b| b.pending() == 0);
    assert_eq!(
        burst.succeeded(),
        N,
        "answers: {:?}; client stderr:\n{}",
        burst.failures(),
        tail(&client.child().stderr(), 30)
    );
    // Close every stream (the echo target closes its side in turn), then wait out the
    // idle time.
    drop(burst);
    thread::sleep(IDLE_CLOSE + Duration::from_secs(3));
    let stats = client.stop_stats();
    eprintln!("{}: {}", test_name(), stats.line);
    let peak = stats.get("peak_connections");
    assert!(
        peak >= N.div_ceil(CREDIT) as u64,
        "the burst needed several connections: {}",
        stats.line
    );
    assert_eq!(
        stats.get("idle_closed"),
        peak - 1,
        "every connection but the first closed when idle: {}",
        stats.line
    );
    assert_eq!(stats.get("connections"), 1, "{}", stats.line);
}
