//! Name lookups off the data path (`resolver` in the config).
//!
//! One thread of its own runs a current-thread tokio runtime. Workers hand it a name and a
//! callback with [`Resolver::lookup`], which never blocks: a full queue fails the lookup at
//! once. The thread coalesces lookups of a name already in flight, starts at most
//! [`Bounds::in_flight`] different names at once, gives each a deadline, and calls every
//! waiter's callback with the outcome (the caller's callback posts it back to its worker).
//!
//! - `system`: getaddrinfo (/etc/hosts, then resolv.conf), as before, on the runtime's own
//!   blocking threads. getaddrinfo cannot be cancelled: at the deadline its waiters get an
//!   error, and its thread stays counted against the cap until the call returns.
//! - `udp`, `tcp`, `tls`, `https`: hickory-resolver (with its cache) against the configured
//!   server; A and AAAA are asked in parallel, IPv4 first in the result.
//!
//! When [`TEST_HOSTS_ENV`] names a file, the names it lists are answered from it first, read
//! again on every lookup, so that a test can move a name while the process runs without
//! touching the system's files.

mod upstream;

pub(crate) use upstream::dns_resolver;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::config;

/// What a lookup produced: the name's addresses, each with the caller's port.
pub type Addrs = io::Result<Vec<SocketAddr>>;
/// Called once with a lookup's outcome, on the resolver's thread: it must not block.
pub type Done = Box<dyn FnOnce(Addrs) + Send>;

/// How much work the resolver takes on.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Lookups accepted but not yet started; beyond it, `lookup` fails at once.
    pub queue: usize,
    /// Different names looked up at once (for `system`: blocking threads).
    pub in_flight: usize,
    /// How long a `system` lookup may take before its waiters get an error (the DNS
    /// upstreams' deadline follows from their `timeout`).
    pub system_deadline: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            // A burst of new streams of every worker, a little more than the old shared pool
            // took for all kinds of work together.
            queue: 4096,
            in_flight: IN_FLIGHT,
            // The relay's own connect timeout (10 s) covers the lookup too.
            system_deadline: Duration::from_secs(10),
        }
    }
}

/// Different names looked up at once by default: each costs a task and two queries.
pub const IN_FLIGHT: usize = 256;

/// getaddrinfo threads for `system`: each one blocks for as long as the name's servers take.
pub const SYSTEM_THREADS: usize = 32;

/// Names a hosts-format file (`IP name...` per line, `#` comments) whose names are answered
/// from it before the configured resolver. Read on every lookup; for tests only.
pub const TEST_HOSTS_ENV: &str = "QUELAY_TEST_HOSTS";

/// Counters of the resolver, read by `/metrics`.
#[derive(Default, Debug)]
pub struct Stats {
    /// Lookups accepted (each waiter counts).
    pub accepted: AtomicU64,
    /// Lookups refused because the queue was full.
    pub queue_full: AtomicU64,
    /// Lookups waiting in the queue now.
    pub queued: AtomicU64,
    /// Names being looked up now (for `system`, threads still in getaddrinfo).
    pub in_flight: AtomicU64,
    /// Lookups that joined one of the same name already in flight.
    pub coalesced: AtomicU64,
    /// Names whose lookup passed its deadline.
    pub timed_out: AtomicU64,
    /// Names whose lookup failed otherwise.
    pub failed: AtomicU64,
}

/// A lookup waiting in the queue.
struct Request {
    host: String,
    port: u16,
    done: Done,
}

/// The resolver: a queue into its thread. Dropping it ends the thread once the lookups in
/// flight have answered.
pub struct Resolver {
    queue: mpsc::Sender<Request>,
    stats: Arc<Stats>,
    kind: &'static str,
    _thread: JoinHandle<()>,
}

impl Resolver {
    /// Starts the resolver `cfg` describes. Errors name the config key.
    pub fn start(cfg: &config::Resolver) -> Result<Resolver, String> {
        Self::start_with(cfg, Bounds::default())
    }

    pub fn start_with(cfg: &config::Resolver, bounds: Bounds) -> Result<Resolver, String> {
        let kind = cfg.kind();
        // Checked here, on the caller's thread, so that a bad upstream stops the start-up.
        let plan = upstream::Plan::new(cfg)?;
        let (queue, rx) = mpsc::channel(bounds.queue.max(1));
        let stats = Arc::new(Stats::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("quelay-dns".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(SYSTEM_THREADS.min(bounds.in_flight).max(1))
                    .thread_name("quelay-dns-gai")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("resolver: runtime: {e}")));
                        return;
                    }
                };
                let backend = {
                    let _enter = rt.enter();
                    match plan.build(bounds.in_flight) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                };
                let _ = ready_tx.send(Ok(()));
                rt.block_on(serve(rx, Arc::new(backend), bounds, thread_stats));
                // getaddrinfo calls still running are not waited for.
                rt.shutdown_background();
            })
            .map_err(|e| format!("resolver: cannot start its thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("resolver: its thread ended at start".into()),
        }
        tracing::debug!("resolver: {kind}");
        Ok(Resolver {
            queue,
            stats,
            kind,
            _thread: thread,
        })
    }

    /// Looks `host` up; `done` gets its addresses with `port`. Never blocks: when the queue
    /// is full, fails at once and `done` is dropped uncalled.
    pub fn lookup(&self, host: &str, port: u16, done: Done) -> io::Result<()> {
        let req = Request {
            host: host.to_owned(),
            port,
            done,
        };
        // Counted before it is queued, so the thread never takes it below zero.
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(req) {
            Ok(()) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                    Err(io::Error::other("resolver queue full"))
                } else {
                    Err(io::Error::other("resolver stopped"))
                }
            }
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The config's type name (`system`, `udp`, ...).
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// How a name is looked up, built on the resolver's thread.
enum Backend {
    System,
    Dns {
        resolver: Box<hickory_resolver::TokioResolver>,
        deadline: Duration,
    },
}

/// Why a name has no addresses (shared by every waiter of a coalesced lookup).
#[derive(Clone, Debug)]
enum Failure {
    TimedOut(Duration),
    Failed(String),
}

impl Failure {
    fn to_io(&self) -> io::Error {
        match self {
            Failure::TimedOut(d) => {
                io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {d:?}"))
            }
            Failure::Failed(msg) => io::Error::other(msg.clone()),
        }
    }
}

/// Waiters by name (lowercased): whoever asks for a name in flight waits for that lookup.
type Waiters = Arc<Mutex<HashMap<String, Vec<(u16, Done)>>>>;

/// The resolver thread's loop: takes requests until every `Resolver` handle is gone.
async fn serve(
    mut rx: mpsc::Receiver<Request>,
    backend: Arc<Backend>,
    bounds: Bounds,
    stats: Arc<Stats>,
) {
    let cap = match *backend {
        Backend::System => bounds.in_flight.min(SYSTEM_THREADS),
        Backend::Dns { .. } => bounds.in_flight,
    };
    let slots = Arc::new(Semaphore::new(cap.max(1)));
    let waiters: Waiters = Arc::default();
    while let Some(req) = rx.recv().await {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        let Request { host, port, done } = req;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            done(Ok(vec![SocketAddr::new(ip, port)]));
            continue;
        }
        let name = host.to_ascii_lowercase();
        if let Some(ips) = test_hosts(&name) {
            done(Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()));
            continue;
        }
        {
            let mut w = waiters.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = w.get_mut(&name) {
                list.push((port, done));
                stats.coalesced.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            w.insert(name.clone(), vec![(port, done)]);
        }
        // Waits while `cap` names are in flight: meanwhile the queue fills and new lookups
        // fail fast at `Resolver::lookup`.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (backend, waiters, stats, deadline) = (
            backend.clone(),
            waiters.clone(),
            stats.clone(),
            bounds.system_deadline,
        );
        tokio::spawn(async move {
            let held = InFlight::new(&stats, slot);
            let outcome = match &*backend {
                Backend::System => system(&name, held, deadline).await,
                Backend::Dns { resolver, deadline } => {
                    let out = dns(resolver, &name, *deadline).await;
                    drop(held);
                    out
                }
            };
            if let Err(f) = &outcome {
                let counter = match f {
                    Failure::TimedOut(_) => &stats.timed_out,
                    Failure::Failed(_) => &stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let list = waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name)
                .unwrap_or_default();
            for (port, done) in list {
                done(match &outcome {
                    Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
                    Err(f) => Err(f.to_io()),
                });
            }
        });
    }
}

/// A slot of the in-flight cap, counted in `Stats::in_flight` while held.
struct InFlight {
    stats: Arc<Stats>,
    _slot: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(stats: &Arc<Stats>, slot: OwnedSemaphorePermit) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: stats.clone(),
            _slot: slot,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// getaddrinfo on a blocking thread, which keeps `held` until the call returns, even when the
/// waiters were answered at the deadline.
async fn system(name: &str, held: InFlight, deadline: Duration) -> Result<Vec<IpAddr>, Failure> {
    let host = name.to_owned();
    let call = tokio::task::spawn_blocking(move || {
        let _held = held;
        (host.as_str(), 0)
            .to_socket_addrs()
            .map(|a| a.map(|a| a.ip()).collect::<Vec<_>>())
    });
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(Ok(ips))) => Ok(dedup(ips)),
        Ok(Ok(Err(e))) => Err(Failure::Failed(e.to_string())),
        Ok(Err(e)) => Err(Failure::Failed(format!("lookup thread: {e}"))),
        Err(_) => Err(Failure::TimedOut(deadline)),
    }
}

/// A lookup through hickory: IPv4 addresses first. A name with no A or AAAA records has no
/// addresses, which is not an error (as in the official server).
async fn dns(
    resolver: &hickory_resolver::TokioResolver,
    name: &str,
    deadline: Duration,
) -> Result<Vec<IpAddr>, Failure> {
    match tokio::time::timeout(deadline, resolver.lookup_ip(name)).await {
        Ok(Ok(lookup)) => {
            let mut ips: Vec<IpAddr> = lookup.iter().collect();
            ips.sort_by_key(|ip| ip.is_ipv6());
            Ok(dedup(ips))
        }
        Ok(Err(e)) if e.is_no_records_found() => Ok(Vec::new()),
        Ok(Err(hickory_resolver::net::NetError::Timeout)) => Err(Failure::TimedOut(deadline)),
        Ok(Err(e)) => Err(Failure::Failed(e.to_string())),
        Err(_) => Err(Failure::TimedOut(deadline)),
    }
}

/// The addresses the [`TEST_HOSTS_ENV`] file gives `name`, when it is set and lists it.
fn test_hosts(name: &str) -> Option<Vec<IpAddr>> {
    let path = std::env::var_os(TEST_HOSTS_ENV)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            tracing::debug!("{TEST_HOSTS_ENV}: {}: {e}", path.to_string_lossy());
            return None;
        }
    };
    let ips = hosts_entries(&text, name);
    (!ips.is_empty()).then_some(ips)
}

/// The addresses a hosts-format text gives `name` (compared without case), in file order.
/// Lines that do not start with an IP address are skipped.
fn hosts_entries(text: &str, name: &str) -> Vec<IpAddr> {
    let ips = text.lines().filter_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let ip = words.next()?.parse::<IpAddr>().ok()?;
        words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
    });
    dedup(ips.collect())
}

/// Drops repeated addresses, keeping the first of each.
fn dedup(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests;
