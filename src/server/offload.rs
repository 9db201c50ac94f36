//! Work off the data path, posted back to the worker that asked (a channel plus a ring
//! wakeup). Each kind has a bounded room of its own, so that no kind can starve another:
//!
//! - DNS lookups go to the resolver ([`crate::resolve`]): its own thread, queue and cap;
//! - HTTP authentication runs on blocking threads of its own, with its own queue;
//! - masquerade responses (file, proxy) run on others, with theirs.
//!
//! A full queue fails that job at once; the caller answers as a busy server would.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::config;
use crate::engine::{Token, Waker};
use crate::resolve::Resolver;
use crate::server::masquerade::Tail;

/// What a job produced.
pub enum Outcome {
    /// A DNS lookup's addresses.
    Resolved(io::Result<Vec<SocketAddr>>),
    /// An authentication backend's verdict: the user ID, none (refused), or why it failed.
    Auth(Result<Option<String>, String>),
    /// A masquerade response: its HTTP/3 bytes, and the rest of its body if it is streamed.
    Response(Vec<u8>, Option<Tail>),
    /// The next chunk of a streamed body (`None` at its end), and the body to read on.
    Chunk(Tail, io::Result<Option<Vec<u8>>>),
}

/// A job's outcome, tagged with the caller's token.
pub struct Answer {
    pub token: Token,
    pub outcome: Outcome,
}

/// Which room a blocking job runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `auth.type: http`: the backend's verdict.
    Auth,
    /// `masquerade.type: file` or `proxy`: the response.
    Masquerade,
}

/// A room's size.
#[derive(Clone, Copy, Debug)]
pub struct PoolSize {
    /// Jobs run at once (each blocks a thread).
    pub threads: usize,
    /// Jobs waiting for a thread; beyond it, new ones fail at once.
    pub queue: usize,
}

/// HTTP authentication: a backend that stalls holds a thread for up to its 10 s timeout, so
/// a flood fills this queue and is refused without touching anything else.
pub const AUTH_POOL: PoolSize = PoolSize {
    threads: 8,
    queue: 1024,
};
/// Masquerade responses: visitors a web server would serve, far fewer than relayed streams.
pub const MASQUERADE_POOL: PoolSize = PoolSize {
    threads: 4,
    queue: 512,
};

type Work = Box<dyn FnOnce() -> Outcome + Send>;

struct Job {
    work: Work,
    token: Token,
    reply: Sender<Answer>,
    waker: Waker,
}

/// Counters of one room, read by `/metrics`.
#[derive(Default, Debug)]
pub struct PoolStats {
    /// Jobs accepted.
    pub accepted: AtomicU64,
    /// Jobs refused because the queue was full.
    pub queue_full: AtomicU64,
    /// Jobs running now.
    pub running: AtomicU64,
}

/// Blocking threads and their queue.
struct Pool {
    jobs: Sender<Job>,
    stats: Arc<PoolStats>,
    _threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(name: &str, size: PoolSize) -> io::Result<Pool> {
        let (jobs, rx) = bounded::<Job>(size.queue.max(1));
        let stats = Arc::new(PoolStats::default());
        let threads = (0..size.threads.max(1))
            .map(|i| {
                let (rx, stats) = (rx.clone(), stats.clone());
                std::thread::Builder::new()
                    .name(format!("quelay-{name}{i}"))
                    .spawn(move || {
                        for job in rx {
                            stats.running.fetch_add(1, Ordering::Relaxed);
                            let outcome = (job.work)();
                            stats.running.fetch_sub(1, Ordering::Relaxed);
                            let _ = job.reply.send(Answer {
                                token: job.token,
                                outcome,
                            });
                            job.waker.wake();
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Pool {
            jobs,
            stats,
            _threads: threads,
        })
    }

    fn handle(&self) -> PoolHandle {
        PoolHandle {
            jobs: self.jobs.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// A worker's way into one room.
struct PoolHandle {
    jobs: Sender<Job>,
    stats: Arc<PoolStats>,
}

/// The rooms. Dropping it (and every client) lets the threads finish.
pub struct Offload {
    auth: Pool,
    masquerade: Pool,
    resolver: Arc<Resolver>,
}

impl Offload {
    /// The rooms, with the resolver `resolver` describes. Errors name the config key.
    pub fn new(resolver: &config::Resolver) -> Result<Self, String> {
        let resolver = Arc::new(Resolver::start(resolver)?);
        Self::with_resolver(resolver)
    }

    /// The rooms around a resolver that is already running.
    pub fn with_resolver(resolver: Arc<Resolver>) -> Result<Self, String> {
        let pool = |name, size| {
            Pool::new(name, size).map_err(|e| format!("cannot start the {name} threads: {e}"))
        };
        Ok(Offload {
            auth: pool("auth", AUTH_POOL)?,
            masquerade: pool("masq", MASQUERADE_POOL)?,
            resolver,
        })
    }

    /// The resolver lookups go to (the one the ACL asks too).
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// A worker's end: submit jobs, collect answers.
    pub fn client(&self, waker: Waker) -> OffloadClient {
        let (reply, answers) = unbounded();
        OffloadClient {
            auth: self.auth.handle(),
            masquerade: self.masquerade.handle(),
            resolver: self.resolver.clone(),
            reply,
            answers,
            waker,
        }
    }

    /// The rooms' counters as Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        let d = self.resolver.stats();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let pools = [
            (
                "dns",
                load(&d.accepted),
                load(&d.queue_full),
                load(&d.queued),
                load(&d.in_flight),
            ),
            pool_row("auth", &self.auth),
            pool_row("masquerade", &self.masquerade),
        ];
        type Get = fn(&(&str, u64, u64, u64, u64)) -> u64;
        let series: [(&str, &str, &str, Get); 4] = [
            (
                "quelay_offload_jobs_total",
                "counter",
                "Jobs accepted off the data path (dns: lookups; auth: HTTP verdicts; \
                 masquerade: file and proxy responses).",
                |r| r.1,
            ),
            (
                "quelay_offload_queue_full_total",
                "counter",
                "Jobs refused at once because their room's queue was full.",
                |r| r.2,
            ),
            (
                "quelay_offload_queued",
                "gauge",
                "Jobs waiting in their room's queue.",
                |r| r.3,
            ),
            (
                "quelay_offload_running",
                "gauge",
                "Jobs running now (dns: names being looked up).",
                |r| r.4,
            ),
        ];
        for (name, ty, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
            for row in &pools {
                let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", row.0, get(row));
            }
        }
        let dns = [
            (
                "quelay_dns_coalesced_total",
                "Lookups that joined a lookup of the same name in flight.",
                load(&d.coalesced),
            ),
            (
                "quelay_dns_timeouts_total",
                "Names whose lookup passed its deadline.",
                load(&d.timed_out),
            ),
            (
                "quelay_dns_failures_total",
                "Names whose lookup failed otherwise.",
                load(&d.failed),
            ),
        ];
        for (name, help, v) in dns {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{resolver=\"{}\"}} {v}",
                self.resolver.kind()
            );
        }
    }
}

fn pool_row(name: &'static str, p: &Pool) -> (&'static str, u64, u64, u64, u64) {
    let s = &p.stats;
    (
        name,
        s.accepted.load(Ordering::Relaxed),
        s.queue_full.load(Ordering::Relaxed),
        p.jobs.len() as u64,
        s.running.load(Ordering::Relaxed),
    )
}

pub struct OffloadClient {
    auth: PoolHandle,
    masquerade: PoolHandle,
    resolver: Arc<Resolver>,
    reply: Sender<Answer>,
    answers: Receiver<Answer>,
    waker: Waker,
}

impl OffloadClient {
    /// Starts a lookup; the answer arrives through `answers()` with `token`. Fails at once
    /// when the resolver's queue is full.
    pub fn lookup(&self, host: &str, port: u16, token: Token) -> io::Result<()> {
        let (reply, waker) = (self.reply.clone(), self.waker.clone());
        self.resolver.lookup(
            host,
            port,
            Box::new(move |addrs| {
                let _ = reply.send(Answer {
                    token,
                    outcome: Outcome::Resolved(addrs),
                });
                waker.wake();
            }),
        )
    }

    /// Runs `work` in `class`'s room; its outcome arrives through `answers()` with `token`.
    /// Fails at once when that room's queue is full.
    pub fn run(&self, class: Class, token: Token, work: Work) -> io::Result<()> {
        let room = match class {
            Class::Auth => &self.auth,
            Class::Masquerade => &self.masquerade,
        };
        let job = Job {
            work,
            token,
            reply: self.reply.clone(),
            waker: self.waker.clone(),
        };
        match room.jobs.try_send(job) {
            Ok(()) => {
                room.stats.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => {
                room.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::other(format!("{class:?} queue full")))
            }
        }
    }

    pub fn answers(&self) -> impl Iterator<Item = Answer> + '_ {
        self.answers.try_iter()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    fn rooms() -> (Offload, OffloadClient) {
        let off = Offload::new(&config::Resolver::System).unwrap();
        let client = off.client(Waker::new().unwrap());
        (off, client)
    }

    /// Collects `n` answers (polling, as a worker does after a wakeup).
    fn collect(c: &OffloadClient, n: usize) -> Vec<Answer> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(c.answers());
            assert!(Instant::now() < deadline, "{} of {n} answers", out.len());
            std::thread::sleep(Duration::from_millis(2));
        }
        out
    }

    /// Auth jobs that never end fill the auth room: one more is refused at once, while the
    /// masquerade room and the resolver still answer.
    #[test]
    fn a_full_auth_room_refuses_and_starves_nothing_else() {
        let (off, c) = rooms();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        let stall = |i: usize| -> io::Result<()> {
            let gate = gate.clone();
            let work: Work = Box::new(move || {
                // One thread at a time holds the lock and waits: the others wait for the lock.
                let _ = gate.lock().map(|g| g.recv());
                Outcome::Auth(Ok(None))
            });
            c.run(Class::Auth, Token::new(0, i as u64), work)
        };
        for i in 0..AUTH_POOL.threads {
            stall(i).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while off.auth.stats.running.load(Ordering::Relaxed) < AUTH_POOL.threads as u64 {
            assert!(Instant::now() < deadline, "the auth threads did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        let stalled = AUTH_POOL.threads + AUTH_POOL.queue;
        for i in AUTH_POOL.threads..stalled {
            stall(i).unwrap();
        }
        let mut extra_refused = 0;
        for i in 0..AUTH_POOL.threads {
            if stall(stalled + i).is_err() {
                extra_refused += 1;
            }
        }
        assert_eq!(
            extra_refused, AUTH_POOL.threads as u64,
            "a full auth queue refuses"
        );
        assert_eq!(
            off.auth.stats.queue_full.load(Ordering::Relaxed),
            extra_refused
        );
        // The other rooms answer.
        let work: Work = Box::new(|| Outcome::Response(b"page".to_vec(), None));
        c.run(Class::Masquerade, Token::new(1, 7), work).unwrap();
        c.lookup("127.0.0.1", 80, Token::new(2, 8)).unwrap();
        let answers = collect(&c, 2);
        let mut tokens: Vec<(u8, u64)> = answers
            .iter()
            .map(|a| (a.token.kind(), a.token.id()))
            .collect();
        tokens.sort_unstable();
        assert_eq!(tokens, [(1, 7), (2, 8)]);
        for a in answers {
            match (a.token.id(), a.outcome) {
                (7, Outcome::Response(r, None)) => assert_eq!(r, b"page"),
                (8, Outcome::Resolved(Ok(addrs))) => {
                    assert_eq!(addrs, vec!["127.0.0.1:80".parse::<SocketAddr>().unwrap()])
                }
                (t, _) => panic!("unexpected answer for token {t}"),
            }
        }
        let mut page = String::new();
        off.render_metrics(&mut page);
        assert!(page.contains(&format!(
            "quelay_offload_queue_full_total{{pool=\"auth\"}} {extra_refused}"
        )));
        assert!(page.contains(&format!(
            "quelay_offload_running{{pool=\"auth\"}} {}",
            AUTH_POOL.threads
        )));
        drop(release);
    }

    #[test]
    fn metrics_parse_as_prometheus_text() {
        let (off, _c) = rooms();
        let mut page = String::new();
        off.render_metrics(&mut page);
        let scrape = prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_owned())))
            .expect("Prometheus text");
        let pools: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "quelay_offload_jobs_total")
            .filter_map(|s| s.labels.get("pool").map(str::to_owned))
            .collect();
        assert_eq!(pools, ["dns", "auth", "masquerade"]);
        assert!(scrape
            .samples
            .iter()
            .any(|s| s.metric == "quelay_dns_timeouts_total"
                && s.labels.get("resolver") == Some("system")));
    }
}
