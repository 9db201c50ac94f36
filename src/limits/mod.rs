//! Caps on what the relay holds: streams per user (over all of the user's connections on
//! every worker), streams over the whole server, connections per user, UDP sessions and
//! outbound sockets per user, outbound sockets over the whole server.
//!
//! Counters are shared by all workers and lock-free: a permit is acquired by
//! compare-and-swap below the cap and released when the permit is dropped. A cap is never
//! enforced by failing a stream: a worker that cannot get a permit parks the stream and
//! withholds new stream credit on that connection until permits come back (see
//! `server::hy2`), so well-behaved clients wait. The mutex guards only the user table,
//! touched at authentication, never per stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub mod admission;
pub mod handshake;
pub mod window;

/// `u64::MAX`: no cap.
const UNLIMITED: u64 = u64::MAX;

/// One capped counter.
#[derive(Debug)]
pub struct Cap {
    cap: AtomicU64,
    held: AtomicU64,
    /// Most held at once since start.
    peak: AtomicU64,
    /// Acquisitions refused at the cap.
    hits: AtomicU64,
}

impl Cap {
    pub fn new(cap: Option<u64>) -> Self {
        Cap {
            cap: AtomicU64::new(cap.unwrap_or(UNLIMITED)),
            held: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// Changes the cap; permits already held stay valid (a lower cap takes effect as they
    /// are released).
    pub fn set_cap(&self, cap: Option<u64>) {
        self.cap.store(cap.unwrap_or(UNLIMITED), Ordering::Relaxed);
    }

    pub fn cap(&self) -> Option<u64> {
        Some(self.cap.load(Ordering::Relaxed)).filter(|&c| c != UNLIMITED)
    }

    /// Takes one unit if that stays within the cap. A refusal is not counted as a hit:
    /// callers count a request once ([`Cap::hit`]), not each retry.
    pub fn try_acquire(&self) -> bool {
        self.acquire_up_to(1) == 1
    }

    /// Counts a request refused at this cap.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives one unit back.
    pub fn release(&self) {
        self.release_n(1);
    }

    /// Takes as much of `want` as stays within the cap (all, some or none): a byte budget.
    pub fn acquire_up_to(&self, want: u64) -> u64 {
        let cap = self.cap.load(Ordering::Relaxed);
        let mut cur = self.held.load(Ordering::Relaxed);
        loop {
            let got = want.min(cap.saturating_sub(cur));
            if got == 0 {
                return 0;
            }
            match self.held.compare_exchange_weak(
                cur,
                cur + got,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.peak.fetch_max(cur + got, Ordering::Relaxed);
                    return got;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Takes `n` whatever the cap (a floor that must be granted); counted in `held`.
    pub fn force(&self, n: u64) {
        let now = self.held.fetch_add(n, Ordering::Acquire) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// Gives `n` units back.
    pub fn release_n(&self, n: u64) {
        self.held.fetch_sub(n, Ordering::Release);
    }

    /// Whether an acquisition would succeed now (a hint: another worker may take it first).
    pub fn has_room(&self) -> bool {
        self.held.load(Ordering::Relaxed) < self.cap.load(Ordering::Relaxed)
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// One user's counters.
#[derive(Debug)]
pub struct User {
    pub name: String,
    pub streams: Cap,
    pub connections: Cap,
    /// UDP sessions of the user (`limits.maxUdpSessionsPerUser`).
    pub udp_sessions: Cap,
    /// Outbound sockets of the user: relayed TCP streams and UDP sessions
    /// (`limits.maxSocketsPerUser`).
    pub sockets: Cap,
    /// Payload bytes client → targets (TCP stream bytes and UDP datagram payloads).
    pub tx: AtomicU64,
    /// Payload bytes targets → client.
    pub rx: AtomicU64,
    /// Authenticated QUIC connections of the user now (see [`Online`]).
    pub online: AtomicU64,
}

impl User {
    /// Counts relayed payload bytes (relaxed: a statistic, read by the traffic API).
    pub fn add_traffic(&self, tx: u64, rx: u64) {
        if tx > 0 {
            self.tx.fetch_add(tx, Ordering::Relaxed);
        }
        if rx > 0 {
            self.rx.fetch_add(rx, Ordering::Relaxed);
        }
    }

    /// (tx, rx) so far; with `clear`, the counters restart from 0 (no byte is lost
    /// between the read and the reset).
    pub fn traffic(&self, clear: bool) -> (u64, u64) {
        if clear {
            (
                self.tx.swap(0, Ordering::Relaxed),
                self.rx.swap(0, Ordering::Relaxed),
            )
        } else {
            (
                self.tx.load(Ordering::Relaxed),
                self.rx.load(Ordering::Relaxed),
            )
        }
    }
}

/// One authenticated connection of a user, counted in `User::online` while it lives.
#[derive(Debug)]
pub struct Online(Arc<User>);

impl Online {
    pub fn new(user: &Arc<User>) -> Self {
        user.online.fetch_add(1, Ordering::Relaxed);
        Online(user.clone())
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        self.0.online.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The caps as configured (`limits.*`); `None` = no cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub streams_per_user: Option<u64>,
    pub streams: Option<u64>,
    pub connections_per_user: Option<u64>,
    /// Bytes of receive window all connections together may hold (see [`window`]).
    pub receive_window_budget: Option<u64>,
    /// UDP sessions of one user; see [`PerUser`] (default: half the user's sockets).
    pub udp_sessions_per_user: PerUser,
    /// Outbound sockets of one user; see [`PerUser`] (default: half the socket budget).
    pub sockets_per_user: PerUser,
}

/// A per-user cap whose default depends on the socket budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PerUser {
    /// Absent from the config: the default, derived from the outbound-socket budget.
    #[default]
    Default,
    /// `0` in the config: no cap.
    Unlimited,
    /// This many.
    Cap(u64),
}

impl PerUser {
    /// The config's value: absent → default, 0 → no cap.
    pub fn from_config(v: Option<u64>) -> Self {
        match v {
            None => PerUser::Default,
            Some(0) => PerUser::Unlimited,
            Some(n) => PerUser::Cap(n),
        }
    }

    fn resolve(self, default: Option<u64>) -> Option<u64> {
        match self {
            PerUser::Default => default,
            PerUser::Unlimited => None,
            PerUser::Cap(n) => Some(n),
        }
    }
}

/// Why [`Limits::acquire_stream`] gave no permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A stream cap or the server's socket budget: permits come back as relays end, so the
    /// request waits.
    Wait,
    /// The user's socket cap (`limits.maxSocketsPerUser`): the request is refused.
    UserSockets,
}

/// Why [`Limits::acquire_udp`] gave no permit (each refusal is counted at its cap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpRefused {
    /// `limits.maxUdpSessionsPerUser`.
    UserUdpSessions,
    /// `limits.maxSocketsPerUser`.
    UserSockets,
    /// The server's outbound-socket budget.
    Budget,
}

/// Every counter of the server.
#[derive(Debug)]
pub struct Limits {
    caps: Mutex<Caps>,
    /// Streams relayed over the whole server: `limits.maxStreams`.
    pub streams: Cap,
    /// Outbound sockets (a relayed stream's TCP socket, a UDP session's socket): the
    /// process never opens more than RLIMIT_NOFILE allows, less a reserve.
    pub sockets: Cap,
    /// Receive-window bytes reserved by every connection ([`window::RecvWindow`]).
    pub window_budget: Arc<Cap>,
    /// Connections that have not authenticated yet (caps from the server's config).
    pub unauthenticated: Arc<admission::Unauthenticated>,
    users: Mutex<HashMap<String, Arc<User>>>,
}

/// Holds one stream of a user; releases it when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    user: Arc<User>,
    limits: Arc<Limits>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.user.streams.release();
        self.limits.streams.release();
        self.user.sockets.release();
        self.limits.sockets.release();
    }
}

/// Holds one UDP session of a user (its outbound socket); releases it when dropped.
#[derive(Debug)]
pub struct SocketPermit {
    user: Option<Arc<User>>,
    limits: Arc<Limits>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        if let Some(u) = &self.user {
            u.udp_sessions.release();
            u.sockets.release();
        }
        self.limits.sockets.release();
    }
}

/// Holds a second outbound socket of a relay or a UDP session (a connect racing the first,
/// a SOCKS5 association's control connection; see [`Limits::try_extra_socket`]); releases
/// it when dropped.
#[derive(Debug)]
pub struct ExtraSocket {
    user: Option<Arc<User>>,
    limits: Arc<Limits>,
}

impl Drop for ExtraSocket {
    fn drop(&mut self) {
        if let Some(u) = &self.user {
            u.sockets.release();
        }
        self.limits.sockets.release();
    }
}

/// Holds one connection of a user; releases it when dropped.
#[derive(Debug)]
pub struct ConnPermit {
    user: Arc<User>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.user.connections.release();
    }
}

/// File descriptors kept out of the outbound budget: listeners, io_uring, eventfds, logs,
/// the masquerade's and the auth backend's sockets.
pub(crate) const FD_RESERVE: u64 = 256;

impl Limits {
    /// `fd_limit`: RLIMIT_NOFILE (soft), when known. Each relayed stream and each UDP
    /// session holds one outbound socket, so the server never holds more of them than the
    /// fds it may open.
    pub fn new(caps: Caps, fd_limit: Option<u64>) -> Arc<Self> {
        let fd_budget = fd_limit.map(|n| n.saturating_sub(FD_RESERVE).max(1));
        Arc::new(Limits {
            streams: Cap::new(caps.streams),
            sockets: Cap::new(fd_budget),
            window_budget: Arc::new(Cap::new(caps.receive_window_budget)),
            unauthenticated: Arc::default(),
            caps: Mutex::new(caps),
            users: Mutex::new(HashMap::new()),
        })
    }

    pub fn caps(&self) -> Caps {
        *self.caps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The caps on each user's UDP sessions and outbound sockets, defaults resolved: a
    /// user's sockets default to half the server's socket budget (so one user never takes
    /// it all), its UDP sessions to half its sockets (opened by a single datagram each, with
    /// no flow control, they never crowd out the user's own TCP streams). No budget (no
    /// RLIMIT_NOFILE): no default cap.
    pub fn per_user_socket_caps(&self, caps: &Caps) -> (Option<u64>, Option<u64>) {
        let sockets = caps
            .sockets_per_user
            .resolve(self.sockets.cap().map(|b| (b / 2).max(1)));
        let udp = caps
            .udp_sessions_per_user
            .resolve(sockets.map(|s| (s / 2).max(1)));
        (udp, sockets)
    }

    /// Applies new caps (a reload) to the server and every known user.
    pub fn set_caps(&self, caps: Caps) {
        *self.caps.lock().unwrap_or_else(|e| e.into_inner()) = caps;
        self.streams.set_cap(caps.streams);
        self.window_budget.set_cap(caps.receive_window_budget);
        let (udp, sockets) = self.per_user_socket_caps(&caps);
        for u in self
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            u.streams.set_cap(caps.streams_per_user);
            u.connections.set_cap(caps.connections_per_user);
            u.udp_sessions.set_cap(udp);
            u.sockets.set_cap(sockets);
        }
    }

    /// The counters of `name` (created on first use; called at authentication).
    pub fn user(&self, name: &str) -> Arc<User> {
        let caps = self.caps();
        let (udp, sockets) = self.per_user_socket_caps(&caps);
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(User {
                    name: name.to_string(),
                    streams: Cap::new(caps.streams_per_user),
                    connections: Cap::new(caps.connections_per_user),
                    udp_sessions: Cap::new(udp),
                    sockets: Cap::new(sockets),
                    tx: AtomicU64::new(0),
                    rx: AtomicU64::new(0),
                    online: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Every user seen so far (for metrics).
    pub fn users(&self) -> Vec<Arc<User>> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = users.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One stream for `user`: within the user's stream cap, the server's, the user's
    /// socket cap and the socket budget. With `count`, a refusal at a cap the request waits
    /// for is counted as a hit of that cap (once per request, not per retry); a refusal at
    /// the user's socket cap ends the request, so it is always counted.
    pub fn acquire_stream(
        self: &Arc<Self>,
        user: &Arc<User>,
        count: bool,
    ) -> Result<StreamPermit, Refused> {
        let caps = [&user.streams, &self.streams, &user.sockets, &self.sockets];
        for (i, cap) in caps.iter().enumerate() {
            if !cap.try_acquire() {
                for taken in &caps[..i] {
                    taken.release();
                }
                let refused = if i == 2 {
                    Refused::UserSockets
                } else {
                    Refused::Wait
                };
                if count || refused == Refused::UserSockets {
                    cap.hit();
                }
                return Err(refused);
            }
        }
        Ok(StreamPermit {
            user: user.clone(),
            limits: self.clone(),
        })
    }

    /// One more socket for `user`, within its socket cap and the socket budget, if both
    /// have room now: nothing waits for it, and a refusal is no hit (the caller does
    /// without).
    pub fn try_extra_socket(self: &Arc<Self>, user: Option<&Arc<User>>) -> Option<ExtraSocket> {
        if user.is_some_and(|u| !u.sockets.try_acquire()) {
            return None;
        }
        if !self.sockets.try_acquire() {
            if let Some(u) = user {
                u.sockets.release();
            }
            return None;
        }
        Some(ExtraSocket {
            user: user.cloned(),
            limits: self.clone(),
        })
    }

    /// Whether `user` could get a stream now (a hint for granting credit again).
    pub fn stream_room(&self, user: &User) -> bool {
        user.streams.has_room()
            && self.streams.has_room()
            && user.sockets.has_room()
            && self.sockets.has_room()
    }

    /// One UDP session (one outbound socket) for `user`: within the user's UDP-session cap,
    /// its socket cap and the server's socket budget. A refusal is counted as a hit of the
    /// cap that refused.
    pub fn acquire_udp(
        self: &Arc<Self>,
        user: Option<&Arc<User>>,
    ) -> Result<SocketPermit, UdpRefused> {
        let mut caps: Vec<(&Cap, UdpRefused)> = Vec::with_capacity(3);
        if let Some(u) = user {
            caps.push((&u.udp_sessions, UdpRefused::UserUdpSessions));
            caps.push((&u.sockets, UdpRefused::UserSockets));
        }
        caps.push((&self.sockets, UdpRefused::Budget));
        for (i, (cap, why)) in caps.iter().enumerate() {
            if !cap.try_acquire() {
                for (taken, _) in &caps[..i] {
                    taken.release();
                }
                cap.hit();
                return Err(*why);
            }
        }
        Ok(SocketPermit {
            user: user.cloned(),
            limits: self.clone(),
        })
    }

    /// One connection for `user`; with `count`, a refusal is counted as a hit.
    pub fn acquire_connection(user: &Arc<User>, count: bool) -> Option<ConnPermit> {
        let ok = user.connections.try_acquire();
        if !ok && count {
            user.connections.hit();
        }
        ok.then(|| ConnPermit { user: user.clone() })
    }
}

/// RLIMIT_NOFILE (soft) of this process, from `/proc/self/limits`; `None` when unlimited
/// or unreadable.
pub fn fd_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The receive-window budget when none is configured: a quarter of physical memory (from
/// `/proc/meminfo`), or 1 GiB when that cannot be read.
pub fn default_window_budget() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    });
    total_kib.map_or(1 << 30, |k| k.saturating_mul(1024) / 4)
}

#[cfg(test)]
mod tests;
