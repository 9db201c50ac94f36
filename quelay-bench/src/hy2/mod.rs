//! `quelay-bench hy2`: a Hysteria2 load generator on the worker engine. It speaks Hysteria2
//! itself (HTTP/3 auth, TCPRequest streams, UDPMessage datagrams, Salamander), so it drives
//! any Hysteria2 server, towards `quelay-bench target` behind it.
//!
//! Scenarios:
//! - `bulk-up` / `bulk-down`: N connections × M concurrent streams, each moving B bytes;
//! - `rr`: K request/response streams in flight over N connections for a duration;
//! - `connect`: handshakes + authentications per second, K in flight;
//! - `udp`: packets at a fixed rate to the target's echo, loss and round-trip time.
//!
//! A run ends when its work is done, at its duration, at `--timeout`, or at the first fatal
//! error (a connection that cannot be set up or is lost); the last three report what was
//! measured so far as partial.

mod app;
mod flow;
pub mod report;
mod stats;
mod udp;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::{Hy2App, Plan, Share};
pub use report::Report;
use stats::Stats;

use quelay::engine::{DriverConfig, IoKind};
use quelay::proto::h3::ALPN;
use quelay::proto::salamander::{Salamander, SALT_LEN};
use quelay::quic::{self, QuicParams, Verify};
use quelay::worker::{self, GroupConfig};

/// How often the reporter looks at the workers.
const POLL: Duration = Duration::from_millis(5);
/// How often the progress line is rewritten.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    BulkUp,
    BulkDown,
    Rr,
    Connect,
    Udp,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::BulkUp => "bulk-up",
            Scenario::BulkDown => "bulk-down",
            Scenario::Rr => "rr",
            Scenario::Connect => "connect",
            Scenario::Udp => "udp",
        }
    }

    /// Whether the scenario runs for `--duration` rather than until its work is done.
    pub fn timed(self) -> bool {
        matches!(self, Scenario::Rr | Scenario::Connect | Scenario::Udp)
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Scenario::BulkUp,
            Scenario::BulkDown,
            Scenario::Rr,
            Scenario::Connect,
            Scenario::Udp,
        ]
        .into_iter()
        .find(|sc| sc.name() == s)
        .ok_or_else(|| format!("unknown scenario {s:?} (bulk-up, bulk-down, rr, connect, udp)"))
    }
}

#[derive(Clone, Debug)]
pub struct Hy2Options {
    pub server: SocketAddr,
    pub auth: String,
    /// `host:port` of the target, as the server should dial it.
    pub target: String,
    pub scenario: Scenario,
    /// TLS server name; `None` sends the server's IP (no SNI). Certificates are never
    /// verified: this is a loopback benchmark.
    pub sni: Option<String>,
    /// Salamander password.
    pub obfs: Option<String>,
    pub workers: usize,
    pub connections: usize,
    /// Bulk: concurrent streams per connection.
    pub streams: usize,
    /// rr: streams in flight in all; connect: handshakes in flight.
    pub concurrency: usize,
    /// Bulk: bytes per stream.
    pub bytes: u64,
    /// rr: bytes each way; udp: packet size.
    pub size: usize,
    /// udp: packets per second in all.
    pub rate: u64,
    pub duration: Duration,
    pub timeout: Duration,
    /// QUIC idle timeout: how soon a silent server counts as gone.
    pub idle_timeout: Duration,
    /// A one-line progress report on stderr every second (only if it is a terminal).
    pub progress: bool,
    pub io: Option<IoKind>,
}

impl Hy2Options {
    pub fn new(server: SocketAddr, auth: &str, target: &str, scenario: Scenario) -> Self {
        Hy2Options {
            server,
            auth: auth.to_owned(),
            target: target.to_owned(),
            scenario,
            sni: None,
            obfs: None,
            workers: 1,
            connections: 1,
            streams: 1,
            concurrency: 16,
            bytes: 1 << 30,
            size: 1024,
            rate: 1000,
            duration: Duration::from_secs(10),
            timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(5),
            progress: true,
            io: None,
        }
    }

    fn bytes_per_flow(&self) -> u64 {
        match self.scenario {
            Scenario::BulkUp | Scenario::BulkDown => self.bytes,
            _ => self.size as u64,
        }
    }
}

/// `n` split into `parts` shares, the first ones taking the remainder.
fn split(n: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| n / parts + usize::from(i < n % parts))
        .collect()
}

/// Each worker's share: connections dealt round-robin, rr concurrency spread over all
/// connections, connect concurrency and UDP rate over workers and connections.
fn shares(o: &Hy2Options, workers: usize) -> Vec<Share> {
    let mut out = vec![Share::default(); workers];
    let conns = o.connections.max(1);
    let per_conn = match o.scenario {
        Scenario::Rr => split(o.concurrency.max(1), conns),
        _ => vec![o.streams.max(1); conns],
    };
    for (i, want) in per_conn.into_iter().enumerate() {
        out[i % workers].conns.push(want);
    }
    for (s, k) in out.iter_mut().zip(split(o.concurrency.max(1), workers)) {
        s.handshakes = k;
        s.udp_rate = o.rate as f64 / conns as f64;
    }
    if o.scenario == Scenario::Connect {
        for s in &mut out {
            s.conns.clear();
        }
    }
    out
}

/// Runs the scenario and reports; `Err` only when the run could not start at all.
pub fn run(o: &Hy2Options) -> Result<Report, String> {
    let n = o.workers.clamp(1, worker::MAX_WORKERS);
    let obfs = match &o.obfs {
        Some(pw) => Some(Arc::new(
            Salamander::new(pw.as_bytes()).map_err(|e| format!("--obfs: {e}"))?,
        )),
        None => None,
    };
    let params = QuicParams {
        max_idle_timeout: o.idle_timeout,
        keep_alive: Some(o.idle_timeout / 3),
        // The server opens no proxy streams towards us.
        max_incoming_streams: 0,
        datagram_overhead: if obfs.is_some() { SALT_LEN as u16 } else { 0 },
        ..QuicParams::default()
    };
    let crypto = quic::client_crypto(Verify::Insecure, &[ALPN]).map_err(|e| format!("tls: {e}"))?;
    let client_config = quic::client_config(crypto, &params);
    let driver = DriverConfig::default();
    let specs = worker::client_specs(
        o.server,
        n,
        &client_config,
        driver.socket_buffer,
        &Default::default(),
    )
    .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let epoch = Instant::now();
    let plan = Arc::new(Plan {
        server: o.server,
        server_name: o.sni.clone().unwrap_or_else(|| o.server.ip().to_string()),
        auth: o.auth.clone(),
        target: o.target.clone(),
        scenario: o.scenario,
        bytes: o.bytes_per_flow(),
        epoch,
        deadline: epoch + o.duration,
        setup_timeout: o.idle_timeout * 2,
    });
    let stats = Arc::new(Stats::new(n));
    let shares = shares(o, n);
    let cfg = GroupConfig {
        io: o.io,
        driver,
        pin: false,
        obfs,
        windows: None,
        handshakes: None,
        hop: None,
    };
    let group = worker::spawn(specs, &cfg, |id| {
        let i = id.0 as usize;
        Hy2App::new(plan.clone(), shares[i].clone(), stats.clone(), i)
    })
    .map_err(|e| format!("cannot start workers: {e}"))?;

    let progress = o.progress && std::io::stderr().is_terminal();
    let mut next_progress = epoch + PROGRESS_EVERY;
    let mut timed_out = false;
    while !group.is_finished() {
        if stats.is_fatal() {
            break;
        }
        if epoch.elapsed() > o.timeout {
            timed_out = true;
            stats.error(format!("timed out after {} s", o.timeout.as_secs()));
            break;
        }
        if progress && Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            let line = Report::collect(o, &stats, epoch.elapsed(), false).progress_line();
            let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
        }
        std::thread::sleep(POLL);
    }
    let elapsed = epoch.elapsed();
    group.stop();
    let joined = group.join();
    if progress {
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
    if let Err(e) = joined {
        stats.error(format!("workers: {e}"));
    }
    let partial = timed_out || stats.is_fatal();
    Ok(Report::collect(o, &stats, elapsed, partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_spread_work() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut o = Hy2Options::new(addr, "pw", "127.0.0.1:2", Scenario::Rr);
        o.connections = 3;
        o.concurrency = 10;
        let s = shares(&o, 2);
        assert_eq!(s[0].conns, vec![4, 3]);
        assert_eq!(s[1].conns, vec![3]);
        o.scenario = Scenario::BulkDown;
        o.streams = 4;
        let s = shares(&o, 4);
        assert_eq!(s.iter().map(|s| s.conns.len()).sum::<usize>(), 3);
        assert!(s[3].conns.is_empty());
        o.scenario = Scenario::Connect;
        let s = shares(&o, 2);
        assert_eq!((s[0].handshakes, s[1].handshakes), (5, 5));
        assert!(s[0].conns.is_empty());
        assert_eq!("bulk-up".parse::<Scenario>(), Ok(Scenario::BulkUp));
        assert!("nope".parse::<Scenario>().is_err());
    }
}
