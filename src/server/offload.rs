//! Blocking work off the data path: a small pool of threads runs DNS lookups, HTTP
//! authentication and masquerade responses, and posts each outcome back to the worker
//! that asked (a channel plus a ring wakeup).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::engine::Waker;

/// Threads shared by all workers; jobs block, so several run at once.
const THREADS: usize = 4;
/// Jobs queued before new ones fail at once.
const QUEUE: usize = 4096;

/// What a job produced.
pub enum Outcome {
    /// A DNS lookup's addresses.
    Resolved(io::Result<Vec<SocketAddr>>),
    /// An authentication backend's verdict: the user ID, none (refused), or why it failed.
    Auth(Result<Option<String>, String>),
    /// A finished HTTP/3 response (masquerade).
    Response(Vec<u8>),
}

/// A job's outcome, tagged with the caller's token.
pub struct Answer {
    pub token: u64,
    pub outcome: Outcome,
}

type Work = Box<dyn FnOnce() -> Outcome + Send>;

struct Job {
    work: Work,
    token: u64,
    reply: Sender<Answer>,
    waker: Waker,
}

/// The pool. Dropping it lets the threads finish.
pub struct Offload {
    jobs: Sender<Job>,
    _threads: Vec<JoinHandle<()>>,
}

impl Offload {
    pub fn new() -> io::Result<Self> {
        let (jobs, rx) = bounded::<Job>(QUEUE);
        let threads = (0..THREADS)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("quelay-off{i}"))
                    .spawn(move || {
                        for job in rx {
                            let outcome = (job.work)();
                            let _ = job.reply.send(Answer {
                                token: job.token,
                                outcome,
                            });
                            job.waker.wake();
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Offload {
            jobs,
            _threads: threads,
        })
    }

    /// A worker's end: submit lookups, collect answers.
    pub fn client(&self, waker: Waker) -> OffloadClient {
        let (reply, answers) = unbounded();
        OffloadClient {
            jobs: self.jobs.clone(),
            reply,
            answers,
            waker,
        }
    }
}

pub struct OffloadClient {
    jobs: Sender<Job>,
    reply: Sender<Answer>,
    answers: Receiver<Answer>,
    waker: Waker,
}

impl OffloadClient {
    /// Starts a lookup; the answer arrives through `answers()` with `token`.
    pub fn lookup(&self, host: &str, port: u16, token: u64) -> io::Result<()> {
        let host = host.to_string();
        self.run(
            token,
            Box::new(move || {
                Outcome::Resolved(
                    (host.as_str(), port)
                        .to_socket_addrs()
                        .map(|a| a.collect::<Vec<_>>()),
                )
            }),
        )
    }

    /// Runs `work` on the pool; its outcome arrives through `answers()` with `token`.
    pub fn run(&self, token: u64, work: Work) -> io::Result<()> {
        self.jobs
            .try_send(Job {
                work,
                token,
                reply: self.reply.clone(),
                waker: self.waker.clone(),
            })
            .map_err(|_| io::Error::other("offload queue full"))
    }

    pub fn answers(&self) -> impl Iterator<Item = Answer> + '_ {
        self.answers.try_iter()
    }
}
