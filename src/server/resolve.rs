//! DNS resolution off the data path: a small pool of threads runs the system resolver and
//! posts each answer back to the worker that asked (a channel plus a ring wakeup).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::engine::Waker;

/// Threads shared by all workers; lookups block, so several run at once.
const RESOLVER_THREADS: usize = 4;
/// Lookups queued before new ones fail at once.
const QUEUE: usize = 4096;

/// A lookup's answer, tagged with the caller's token.
pub struct Answer {
    pub token: u64,
    pub result: io::Result<Vec<SocketAddr>>,
}

struct Job {
    host: String,
    port: u16,
    token: u64,
    reply: Sender<Answer>,
    waker: Waker,
}

/// The pool. Dropping it lets the threads finish.
pub struct Resolver {
    jobs: Sender<Job>,
    _threads: Vec<JoinHandle<()>>,
}

impl Resolver {
    pub fn new() -> io::Result<Self> {
        let (jobs, rx) = bounded::<Job>(QUEUE);
        let threads = (0..RESOLVER_THREADS)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("quelay-dns{i}"))
                    .spawn(move || {
                        for job in rx {
                            let result = (job.host.as_str(), job.port)
                                .to_socket_addrs()
                                .map(|a| a.collect::<Vec<_>>());
                            let _ = job.reply.send(Answer {
                                token: job.token,
                                result,
                            });
                            job.waker.wake();
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Resolver {
            jobs,
            _threads: threads,
        })
    }

    /// A worker's end: submit lookups, collect answers.
    pub fn client(&self, waker: Waker) -> ResolverClient {
        let (reply, answers) = unbounded();
        ResolverClient {
            jobs: self.jobs.clone(),
            reply,
            answers,
            waker,
        }
    }
}

pub struct ResolverClient {
    jobs: Sender<Job>,
    reply: Sender<Answer>,
    answers: Receiver<Answer>,
    waker: Waker,
}

impl ResolverClient {
    /// Starts a lookup; the answer arrives through `answers()` with `token`.
    pub fn lookup(&self, host: &str, port: u16, token: u64) -> io::Result<()> {
        self.jobs
            .try_send(Job {
                host: host.to_string(),
                port,
                token,
                reply: self.reply.clone(),
                waker: self.waker.clone(),
            })
            .map_err(|_| io::Error::other("resolver queue full"))
    }

    pub fn answers(&self) -> impl Iterator<Item = Answer> + '_ {
        self.answers.try_iter()
    }
}
