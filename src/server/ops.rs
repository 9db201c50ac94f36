//! Operating a running server: commands the workers act on (kick a user, dump streams,
//! reload the config), the drain state, and the traffic-stats API backed by them.
//!
//! Workers share nothing with the outside but these: one command channel each (read in
//! `Hy2App::tick` after a wakeup), the per-user atomics in `crate::limits`, and [`Control`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::hy2::config::Hy2Config;
use crate::limits::Limits;
use crate::metrics::traffic::{Backend, StreamInfo};
use crate::worker::Shared;

/// How long `/dump/streams` waits for the workers' answers.
const DUMP_WAIT: Duration = Duration::from_secs(2);

/// What a worker is asked to do.
pub enum Command {
    /// Close every connection of these users.
    Kick(Arc<HashSet<String>>),
    /// Answer with the worker's relayed streams.
    Dump(Sender<Vec<StreamInfo>>),
    /// Use this config for what comes next (authentication, new streams).
    Reload(Arc<Hy2Config>),
}

/// State the workers publish or read, set from outside.
pub struct Control {
    /// Shutting down: refuse new proxy streams and report `busy`.
    pub draining: AtomicBool,
    /// Per worker while draining: streams still relayed or with unacknowledged data.
    pub busy: Vec<AtomicU64>,
}

impl Control {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// A worker's end: its commands and the shared control.
#[derive(Clone)]
pub struct Link {
    pub worker: usize,
    pub commands: Receiver<Command>,
    pub control: Arc<Control>,
}

/// The outside end: sends commands and wakes the workers.
pub struct Ops {
    senders: Vec<Sender<Command>>,
    shared: Option<Arc<Shared>>,
    pub control: Arc<Control>,
    pub limits: Arc<Limits>,
}

/// Creates the ends for `n` workers; [`Ops::attach`] once the workers run.
pub fn channels(n: usize, limits: Arc<Limits>) -> (Ops, Vec<Link>) {
    let control = Arc::new(Control {
        draining: AtomicBool::new(false),
        busy: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let (senders, links) = (0..n)
        .map(|worker| {
            let (tx, rx) = unbounded();
            (
                tx,
                Link {
                    worker,
                    commands: rx,
                    control: control.clone(),
                },
            )
        })
        .unzip();
    let ops = Ops {
        senders,
        shared: None,
        control,
        limits,
    };
    (ops, links)
}

impl Ops {
    /// The workers' wakers (known once they run).
    pub fn attach(&mut self, shared: Arc<Shared>) {
        self.shared = Some(shared);
    }

    /// Wakes every worker (its `tick` runs: commands are read, `busy` is published).
    pub fn wake_all(&self) {
        if let Some(s) = &self.shared {
            for w in &s.wakers {
                w.wake();
            }
        }
    }

    /// Sends `make()` to every worker and wakes them. Returns how many took it.
    pub fn broadcast(&self, make: impl Fn() -> Command) -> usize {
        let sent = self
            .senders
            .iter()
            .filter(|s| s.send(make()).is_ok())
            .count();
        self.wake_all();
        sent
    }

    /// Starts draining: workers refuse new streams from now on.
    pub fn start_drain(&self) {
        self.control.draining.store(true, Ordering::Relaxed);
        if let Some(s) = &self.shared {
            s.refuse_new.store(true, Ordering::Relaxed);
        }
        self.wake_all();
    }

    /// Streams still in progress over all workers (meaningful while draining).
    pub fn busy(&self) -> u64 {
        self.control
            .busy
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl Backend for Arc<Ops> {
    fn traffic(&self, clear: bool) -> Vec<(String, u64, u64)> {
        self.limits
            .users()
            .iter()
            .map(|u| {
                let (tx, rx) = u.traffic(clear);
                (u.name.clone(), tx, rx)
            })
            .collect()
    }

    fn online(&self) -> Vec<(String, u64)> {
        self.limits
            .users()
            .iter()
            .map(|u| (u.name.clone(), u.online.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn kick(&self, users: Vec<String>) {
        // User IDs are stored lowercased for `userpass` (see `Authenticator`); match both.
        let set: HashSet<String> = users
            .into_iter()
            .flat_map(|u| {
                let l = u.to_lowercase();
                [u, l]
            })
            .collect();
        if set.is_empty() {
            return;
        }
        tracing::info!("trafficStats: kicking {:?}", set);
        let set = Arc::new(set);
        self.broadcast(|| Command::Kick(set.clone()));
    }

    fn dump_streams(&self) -> Vec<StreamInfo> {
        let (tx, rx) = unbounded();
        let n = self.broadcast(|| Command::Dump(tx.clone()));
        drop(tx);
        let deadline = Instant::now() + DUMP_WAIT;
        let mut out = Vec::new();
        for _ in 0..n {
            match rx.recv_deadline(deadline) {
                Ok(mut v) => out.append(&mut v),
                Err(_) => break,
            }
        }
        out.sort_by_key(|s| (s.connection, s.stream));
        out
    }
}
