//! One worker's QUIC connections to the server: handshake, HTTP/3 authentication, stream
//! credit, growth with demand, shrinking when idle, and reconnection.
//!
//! A request for a stream is served by the authenticated connection with credit and the
//! fewest open streams. The pool learns what the server grants a connection (the streams
//! open on it when its credit ran out) and, when requests wait with every connection out of
//! credit, opens at once as many connections as the waiting requests need, counting those
//! still handshaking; before it knows the credit it opens one at a time. It stays within
//! `pool.maxConnections`, and closes connections beyond the first that carried nothing for
//! [`IDLE_CLOSE`].
//!
//! A server may take fewer connections than the pool wants (a per-user connection cap):
//! it refuses one at authentication or closes it, or authenticates it and never answers its
//! streams. The pool then stays at the connections that work, logs why once, and tries one
//! more after a hold that grows from [`MIN_HOLD`] to [`MAX_HOLD`]; the requests wait
//! meanwhile, and those sent on a connection that never answered are sent again elsewhere.
//! Failed attempts with no connection up back off (0.2 s doubling to 2 s); while no
//! connection is up, requests wait and are refused after `pool.streamOpenTimeout`.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::StreamId;

use super::auth::{AuthError, AuthExchange};
use super::stats::PoolStats;
use crate::proto::h3::CcRx;
use crate::worker::WorkerId;

/// First delay after a failed attempt; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// An attempt (its lookup, handshake and authentication) not authenticated by then is
/// abandoned.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection beyond the first that carried no stream for this long is closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// A connection none of whose streams got an answer for this long after the first was
/// opened, while other connections of the pool are answered, is taken as refused by the
/// server.
pub const STALL: Duration = Duration::from_secs(3);
/// After the server refused a connection, the pool tries one more after this, doubling up
/// to [`MAX_HOLD`] while the server keeps refusing.
const MIN_HOLD: Duration = Duration::from_secs(5);
const MAX_HOLD: Duration = Duration::from_secs(60);

/// How far a connection got.
pub enum State {
    /// QUIC handshake in progress.
    Handshake,
    /// Auth request sent; its response is being read.
    Auth(AuthExchange),
    /// Authenticated: streams may be opened. `udp`: the server relays UDP.
    Ready { udp: bool },
}

pub struct PoolConn<H> {
    /// The connection, as its owner names it (a quinn handle, a session's id).
    pub ch: H,
    pub state: State,
    /// Our proxy streams open on it.
    pub streams: usize,
    /// The last open attempt found no stream credit; cleared when credit arrives.
    pub no_credit: bool,
    /// One of its streams got (part of) a TCPResponse: the server serves it.
    answered: bool,
    /// When its first stream was opened.
    first_stream: Option<Instant>,
    /// Since when it carries no stream.
    idle_since: Instant,
    started: Instant,
}

impl<H> PoolConn<H> {
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// Authenticated: may carry streams.
    pub fn usable(&self) -> bool {
        self.is_ready()
    }
}

/// Where the server listens: an address, or a name looked up again for every connection
/// (as the official client does, so that a server that moves is found on the next dial).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Ip(addr) => write!(f, "{addr}"),
            ServerAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// What the pool needs from the config.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub server: ServerAddr,
    pub server_name: String,
    pub auth: String,
    /// `bandwidth.up` / `bandwidth.down`, bytes per second (0: not set).
    pub up: u64,
    pub down: u64,
    pub max_connections: usize,
    pub open_wait_threshold: Duration,
    /// Keep a connection up even with nothing to carry (the config's `lazy: false`).
    pub eager: bool,
}

/// The server took no more than `at_most` connections of this worker.
struct Held {
    at_most: usize,
    /// Until then the pool stays at `at_most`; then it tries one more.
    until: Instant,
    hold: Duration,
}

/// The pool's decisions, sans-IO: its owner dials what [`Pool::maybe_grow`] asks for,
/// closes what [`Pool::take_closed`] returns, sends the auth request and feeds the answer
/// ([`Pool::on_auth_bytes`]), and sets the send rate that answer brings.
pub struct Pool<H> {
    cfg: PoolConfig,
    stats: Arc<PoolStats>,
    worker: WorkerId,
    pub conns: Vec<PoolConn<H>>,
    backoff: Duration,
    next_attempt: Instant,
    /// The worker lost its last connection; the next one up counts as a reconnect.
    lost_all: bool,
    /// Concurrent streams the server grants a connection, as seen when one ran out.
    credit: Option<usize>,
    held: Option<Held>,
    /// Connections the pool closed itself since the app last looked: quinn reports no loss
    /// for those.
    closed: Vec<H>,
}

/// What an auth answer did to a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// Not the auth stream of a connection of the pool.
    NotAuth,
    /// The answer is still incomplete.
    Pending,
    /// Authenticated: send at `send_rate` (0: the configured controller).
    Ready { send_rate: u64 },
    /// Refused or failed: the pool let go of the connection ([`Pool::take_closed`]).
    Closed,
}

impl<H: Copy + Eq + Debug> Pool<H> {
    pub fn new(cfg: PoolConfig, stats: Arc<PoolStats>, worker: WorkerId, now: Instant) -> Self {
        Pool {
            cfg,
            stats,
            worker,
            conns: Vec::new(),
            backoff: MIN_BACKOFF,
            next_attempt: now,
            lost_all: false,
            credit: None,
            held: None,
            closed: Vec::new(),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn get_mut(&mut self, ch: H) -> Option<&mut PoolConn<H>> {
        self.conns.iter_mut().find(|c| c.ch == ch)
    }

    /// Connections that count against the limit.
    fn live(&self) -> usize {
        self.conns.len()
    }

    /// Forgets `ch` at once; its owner closes it (see [`Pool::take_closed`]).
    fn close_local(&mut self, ch: H) {
        if let Some(pos) = self.conns.iter().position(|c| c.ch == ch) {
            if self.conns.swap_remove(pos).is_ready() {
                self.stats.connection_down();
            }
        }
        self.closed.push(ch);
    }

    /// The connections the pool let go of since the last call: their owner closes them
    /// (code 0); their streams and UDP sessions are gone.
    pub fn take_closed(&mut self) -> Vec<H> {
        std::mem::take(&mut self.closed)
    }

    /// The most connections the pool may have now.
    fn limit(&self, now: Instant) -> usize {
        let max = self.cfg.max_connections;
        match &self.held {
            None => max,
            Some(h) if now < h.until => h.at_most.min(max),
            Some(h) => (h.at_most + 1).min(max),
        }
    }

    /// How many connections the pool wants for `waiting` requests, the oldest queued for
    /// `oldest_wait` (dispatch has already used every connection with credit).
    fn wanted(&self, waiting: usize, oldest_wait: Duration) -> usize {
        let live = self.live();
        let pending = self.conns.iter().filter(|c| !c.is_ready()).count();
        if live == 0 {
            return match self.credit {
                _ if waiting == 0 => usize::from(self.cfg.eager),
                Some(credit) => waiting.div_ceil(credit),
                None => 1,
            };
        }
        if waiting == 0 {
            return live;
        }
        let out_of_credit = self
            .conns
            .iter()
            .filter(|c| c.usable())
            .all(|c| c.no_credit);
        match self.credit {
            // What the connections still handshaking will take, the rest on new ones.
            Some(credit) if out_of_credit => {
                live + waiting.saturating_sub(pending * credit).div_ceil(credit)
            }
            // Credit not known yet: one at a time.
            _ if pending == 0 && (out_of_credit || oldest_wait >= self.cfg.open_wait_threshold) => {
                live + 1
            }
            _ => live,
        }
    }

    /// Opens the connections the pool wants now: `waiting` requests, the oldest queued for
    /// `oldest_wait`. `dial` starts one connection and names it.
    pub fn maybe_grow<E: std::fmt::Display>(
        &mut self,
        now: Instant,
        waiting: usize,
        oldest_wait: Duration,
        mut dial: impl FnMut() -> Result<H, E>,
    ) {
        if now < self.next_attempt {
            return;
        }
        let live = self.live();
        let want = self.wanted(waiting, oldest_wait).min(self.limit(now));
        if want <= live {
            return;
        }
        tracing::debug!(
            "{:?}: opening {} connection(s) to {} ({live} open, {waiting} request(s) waiting, \
             {} stream(s) per connection)",
            self.worker,
            want - live,
            self.cfg.server,
            self.credit.map_or("? ".to_string(), |c| c.to_string()),
        );
        for _ in live..want {
            match dial() {
                Ok(ch) => {
                    self.stats.connects.fetch_add(1, Relaxed);
                    self.conns.push(PoolConn {
                        ch,
                        state: State::Handshake,
                        streams: 0,
                        no_credit: false,
                        answered: false,
                        first_stream: None,
                        idle_since: now,
                        started: now,
                    });
                }
                Err(e) => {
                    crate::warn_limited!("cannot connect to {}: {e}", self.cfg.server);
                    self.failed(now);
                    return;
                }
            }
        }
    }

    fn failed(&mut self, now: Instant) {
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// When the pool next wants to act by itself (a backoff or hold ending, a setup timing
    /// out, a connection to check for answers or to close when idle).
    pub fn next_deadline(&self, now: Instant, waiting: usize) -> Option<Instant> {
        let setup = self
            .conns
            .iter()
            .filter(|c| !c.is_ready())
            .map(|c| c.started + SETUP_TIMEOUT);
        let retry =
            (self.conns.is_empty() && (self.cfg.eager || waiting > 0)).then_some(self.next_attempt);
        let hold = self
            .held
            .as_ref()
            .filter(|h| waiting > 0 && h.until > now)
            .map(|h| h.until);
        let stall = self
            .conns
            .iter()
            .filter(|c| c.usable() && !c.answered && c.streams > 0)
            .filter_map(|c| c.first_stream.map(|t| t + STALL))
            .filter(|&t| t > now);
        let keep = self.kept();
        let idle = self
            .conns
            .iter()
            .filter(|c| c.usable() && c.streams == 0 && Some(c.ch) != keep)
            .map(|c| c.idle_since + IDLE_CLOSE);
        setup
            .chain(retry)
            .chain(hold)
            .chain(stall)
            .chain(idle)
            .min()
    }

    /// Abandons attempts that took too long.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<_> = self
            .conns
            .iter()
            .filter(|c| !c.is_ready() && now >= c.started + SETUP_TIMEOUT)
            .map(|c| c.ch)
            .collect();
        for ch in late {
            tracing::debug!("{:?}: connection setup timed out", self.worker);
            self.close_local(ch);
            self.failed(now);
        }
    }

    /// The connection never closed for being idle: the oldest usable one.
    fn kept(&self) -> Option<H> {
        self.conns
            .iter()
            .filter(|c| c.usable())
            .min_by_key(|c| c.started)
            .map(|c| c.ch)
    }

    /// Closes connections beyond the first that carried nothing for [`IDLE_CLOSE`];
    /// `in_use` tells those that carry something else (UDP sessions), which stay.
    pub fn close_idle(&mut self, now: Instant, in_use: impl Fn(H) -> bool) {
        let keep = self.kept();
        let mut idle = Vec::new();
        for c in &mut self.conns {
            if !c.usable() || c.streams > 0 || Some(c.ch) == keep || now < c.idle_since + IDLE_CLOSE
            {
                continue;
            }
            if in_use(c.ch) {
                c.idle_since = now;
                continue;
            }
            idle.push(c.ch);
        }
        for ch in idle {
            self.stats.idle_closed.fetch_add(1, Relaxed);
            self.close_local(ch);
        }
    }

    /// The handshake finished and the owner sent our HTTP/3 SETTINGS and the auth request
    /// (`None`: the server granted no stream for it; the setup then times out).
    pub fn on_connected(&mut self, ch: H, auth: Option<AuthExchange>) {
        let Some(c) = self.conns.iter_mut().find(|c| c.ch == ch) else {
            return;
        };
        if let Some(auth) = auth {
            c.state = State::Auth(auth);
        }
    }

    /// The auth exchange of `ch`, when `id` is its stream and the answer is awaited.
    pub fn auth_exchange(&mut self, ch: H, id: StreamId) -> Option<&mut AuthExchange> {
        match &mut self.conns.iter_mut().find(|c| c.ch == ch)?.state {
            State::Auth(auth) if auth.id() == id => Some(auth),
            _ => None,
        }
    }

    /// The auth answer of `ch` as far as it came (`None`: incomplete).
    /// `waiting`: requests waiting for a stream, for the log.
    pub fn on_auth_answer(
        &mut self,
        now: Instant,
        ch: H,
        outcome: Option<Result<crate::proto::h3::AuthOk, AuthError>>,
        waiting: usize,
    ) -> AuthStep {
        let Some(pos) = self.conns.iter().position(|c| c.ch == ch) else {
            return AuthStep::NotAuth;
        };
        if !matches!(self.conns[pos].state, State::Auth(_)) {
            return AuthStep::NotAuth;
        }
        match outcome {
            None => AuthStep::Pending,
            Some(Ok(ok)) => {
                self.conns[pos].state = State::Ready { udp: ok.udp };
                self.conns[pos].idle_since = now;
                self.backoff = MIN_BACKOFF;
                self.stats.connection_up();
                if std::mem::take(&mut self.lost_all) {
                    self.stats.reconnects.fetch_add(1, Relaxed);
                }
                let rate = send_rate(ok.cc_rx, self.cfg.up);
                let ready = self.conns.iter().filter(|c| c.usable()).count();
                let line = format!(
                    "{:?}: connected to {} ({ready} of at most {} on this worker; udp {}, {})",
                    self.worker,
                    self.cfg.server,
                    self.cfg.max_connections,
                    if ok.udp { "on" } else { "off" },
                    if rate > 0 {
                        format!("Brutal at {} bit/s", rate * 8)
                    } else {
                        "BBR".to_string()
                    },
                );
                // The pool may grow to many connections: the first says it at info.
                if ready == 1 {
                    tracing::info!("{line}");
                } else {
                    tracing::debug!("{line}");
                }
                AuthStep::Ready { send_rate: rate }
            }
            Some(Err(why)) => {
                self.close_local(ch);
                if self.conns.iter().any(|c| c.usable()) {
                    // The server takes some connections but not this one: a cap, most
                    // likely.
                    self.refused(now, &format!("refused at authentication: {why}"), waiting);
                } else {
                    if let AuthError::Refused(_) = why {
                        self.stats.auth_failures.fetch_add(1, Relaxed);
                        tracing::error!("{}: {why}: check `auth`", self.cfg.server);
                    } else {
                        tracing::error!("{}: {why}", self.cfg.server);
                    }
                    self.failed(now);
                }
                AuthStep::Closed
            }
        }
    }

    /// The connection is gone (closed by the server when `by_peer`, or timed out; `reason`
    /// for the log). Returns whether it had been authenticated.
    ///
    /// While other connections work, one the server closed before it was ready or before it
    /// answered any of its streams means the server takes no more (a timeout does not: the
    /// path or the server may be gone).
    pub fn on_lost(
        &mut self,
        now: Instant,
        ch: H,
        by_peer: bool,
        reason: &dyn std::fmt::Display,
        waiting: usize,
    ) -> bool {
        let Some(pos) = self.conns.iter().position(|c| c.ch == ch) else {
            return false;
        };
        let c = self.conns.swap_remove(pos);
        let was_ready = c.is_ready();
        if was_ready {
            self.stats.connection_down();
        }
        let others = self.conns.iter().any(|c| c.usable());
        let refusal = by_peer && (!was_ready || (!c.answered && c.first_stream.is_some()));
        if others && refusal {
            let why = if was_ready {
                format!("closed before answering a stream: {reason}")
            } else {
                format!("closed before authentication: {reason}")
            };
            self.refused(now, &why, waiting);
        } else if !was_ready {
            self.failed(now);
        }
        if was_ready && !self.conns.iter().any(|c| c.is_ready()) {
            self.lost_all = true;
        }
        was_ready
    }

    /// The server does not serve one more connection: the pool stays at those that work
    /// for a while, and says why once.
    fn refused(&mut self, now: Instant, why: &str, waiting: usize) {
        let at_most = self.conns.iter().filter(|c| c.usable()).count().max(1);
        let (hold, first) = match &self.held {
            // Refused again within the same hold (several connections of one burst).
            Some(h) if now < h.until => (h.hold, false),
            Some(h) => ((h.hold * 2).min(MAX_HOLD), false),
            None => (MIN_HOLD, true),
        };
        self.held = Some(Held {
            at_most,
            until: now + hold,
            hold,
        });
        self.stats.server_refusals.fetch_add(1, Relaxed);
        if first {
            crate::warn_limited!(
                "{}: the server refused connection {} of this worker ({why}); staying at \
                 {at_most} connection(s) and trying another in {hold:?}; {waiting} request(s) \
                 wait for a stream (a per-user connection cap on the server, such as \
                 limits.maxConnectionsPerUser?)",
                self.cfg.server,
                at_most + 1,
            );
        } else {
            tracing::debug!(
                "{}: the server refused connection {} again ({why}); next try in {hold:?}",
                self.cfg.server,
                at_most + 1
            );
        }
    }

    /// A stream of `ch` got (part of) its response.
    pub fn answered(&mut self, ch: H) {
        let Some(c) = self.conns.iter_mut().find(|c| c.ch == ch) else {
            return;
        };
        if c.answered {
            return;
        }
        c.answered = true;
        if let Some(h) = &self.held {
            let served = self
                .conns
                .iter()
                .filter(|c| c.usable() && c.answered)
                .count();
            if served > h.at_most {
                tracing::info!(
                    "{}: the server serves {served} connections of this worker again",
                    self.cfg.server
                );
                self.held = None;
            }
        }
    }

    /// A connection the server authenticated but does not serve: it answered none of its
    /// streams within [`STALL`] of the first, while other connections are answered. (A
    /// server at a per-user connection cap may hold such streams unread until another
    /// connection of the user closes.)
    pub fn stalled(&self, now: Instant) -> Option<H> {
        if !self.conns.iter().any(|c| c.usable() && c.answered) {
            return None;
        }
        self.conns
            .iter()
            .find(|c| {
                c.usable()
                    && !c.answered
                    && c.streams > 0
                    && c.first_stream.is_some_and(|t| now >= t + STALL)
            })
            .map(|c| c.ch)
    }

    /// Closes `ch`, which [`Pool::stalled`] found not served with `streams` streams, and
    /// holds the pool below it.
    pub fn close_stalled(&mut self, now: Instant, ch: H, streams: usize, waiting: usize) {
        if !self.conns.iter().any(|c| c.ch == ch) {
            return;
        }
        self.close_local(ch);
        self.refused(
            now,
            &format!("authenticated, but none of its {streams} stream(s) answered in {STALL:?}"),
            waiting,
        );
    }

    /// Our streams open on `ch`.
    pub fn streams_on(&self, ch: H) -> usize {
        self.conns
            .iter()
            .find(|c| c.ch == ch)
            .map_or(0, |c| c.streams)
    }

    /// Whether `ch` is in the pool and no stream of it was ever answered.
    pub fn unanswered(&self, ch: H) -> bool {
        self.conns.iter().any(|c| c.ch == ch && !c.answered)
    }

    /// An authenticated connection that relays UDP.
    pub fn pick_udp(&self) -> Option<H> {
        self.conns
            .iter()
            .find(|c| c.usable() && matches!(c.state, State::Ready { udp: true }))
            .map(|c| c.ch)
    }

    /// The ready connection to open the next stream on: credit left, fewest streams.
    pub fn pick(&self) -> Option<usize> {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.usable() && !c.no_credit)
            .min_by_key(|(_, c)| c.streams)
            .map(|(i, _)| i)
    }

    /// Connection `i` had no credit for another stream: what it carries is what the server
    /// grants.
    pub fn out_of_credit(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.no_credit = true;
        if c.streams > 0 {
            self.credit = Some(self.credit.map_or(c.streams, |k| k.max(c.streams)));
        }
    }

    /// A stream was opened on connection `i`.
    pub fn stream_opened(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        c.streams += 1;
        c.first_stream.get_or_insert(now);
    }

    /// One of our streams on `ch` ended.
    pub fn stream_closed(&mut self, ch: H, now: Instant) {
        if let Some(c) = self.get_mut(ch) {
            c.streams = c.streams.saturating_sub(1);
            if c.streams == 0 {
                c.idle_since = now;
            }
        }
    }
}

/// Our send rate as the reference client picks it: BBR (0) when the server says `auto`,
/// else the smaller of the server's receive rate and our `bandwidth.up`, either one alone
/// when the other is unlimited.
fn send_rate(server_rx: CcRx, up: u64) -> u64 {
    match server_rx {
        CcRx::Auto => 0,
        CcRx::Bps(0) => up,
        CcRx::Bps(rx) if up > 0 => rx.min(up),
        CcRx::Bps(rx) => rx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_rate_follows_the_reference_client() {
        assert_eq!(send_rate(CcRx::Auto, 1000), 0);
        assert_eq!(send_rate(CcRx::Bps(0), 1000), 1000);
        assert_eq!(send_rate(CcRx::Bps(0), 0), 0);
        assert_eq!(send_rate(CcRx::Bps(500), 1000), 500);
        assert_eq!(send_rate(CcRx::Bps(5000), 1000), 1000);
        assert_eq!(send_rate(CcRx::Bps(5000), 0), 5000);
    }
}

#[cfg(test)]
mod demand_tests {
    use super::*;
    use quinn_proto::ConnectionHandle;

    fn pool(max: usize, now: Instant) -> Pool<ConnectionHandle> {
        let cfg = PoolConfig {
            server: ServerAddr::Ip("127.0.0.1:443".parse().expect("address")),
            server_name: "x".into(),
            auth: String::new(),
            up: 0,
            down: 0,
            max_connections: max,
            open_wait_threshold: Duration::from_millis(200),
            eager: true,
        };
        Pool::new(cfg, Arc::new(PoolStats::new(1)), WorkerId(0), now)
    }

    fn conn(i: usize, ready: bool, streams: usize, now: Instant) -> PoolConn<ConnectionHandle> {
        PoolConn {
            ch: ConnectionHandle(i),
            state: if ready {
                State::Ready { udp: true }
            } else {
                State::Handshake
            },
            streams,
            no_credit: false,
            answered: false,
            first_stream: (streams > 0).then_some(now),
            idle_since: now,
            started: now,
        }
    }

    #[test]
    fn one_connection_at_a_time_until_the_credit_is_known() {
        let now = Instant::now();
        let mut p = pool(4096, now);
        assert_eq!(p.wanted(0, Duration::ZERO), 1, "eager: one at start");
        assert_eq!(p.wanted(3000, Duration::ZERO), 1, "credit unknown");
        p.conns.push(conn(0, false, 0, now));
        assert_eq!(
            p.wanted(3000, Duration::from_secs(1)),
            1,
            "one is on its way"
        );
    }

    #[test]
    fn a_burst_opens_what_the_waiting_requests_need() {
        let now = Instant::now();
        let mut p = pool(4096, now);
        p.conns.push(conn(0, true, 64, now));
        p.out_of_credit(0);
        assert_eq!(p.credit, Some(64));
        // 2936 waiting at 64 a connection: 46 more.
        assert_eq!(p.wanted(2936, Duration::ZERO), 1 + 46);
        // Connections still handshaking count for what they will carry.
        for i in 1..=10 {
            p.conns.push(conn(i, false, 0, now));
        }
        assert_eq!(p.wanted(2936, Duration::ZERO), 11 + 36);
        assert_eq!(p.wanted(640, Duration::ZERO), 11, "enough on the way");
        // The limit bounds it.
        let mut small = pool(8, now);
        small.conns.push(conn(0, true, 64, now));
        small.out_of_credit(0);
        assert_eq!(small.wanted(2936, Duration::ZERO).min(small.limit(now)), 8);
    }

    #[test]
    fn a_connection_with_credit_left_takes_the_requests_first() {
        let now = Instant::now();
        let mut p = pool(4096, now);
        p.conns.push(conn(0, true, 64, now));
        p.out_of_credit(0);
        p.conns.push(conn(1, true, 10, now));
        assert_eq!(p.pick(), Some(1));
        assert_eq!(p.wanted(100, Duration::ZERO), 2);
    }

    #[test]
    fn a_connection_never_answered_while_others_are_is_refused() {
        let now = Instant::now();
        let mut p = pool(4096, now);
        p.conns.push(conn(0, true, 64, now));
        p.conns.push(conn(1, true, 64, now));
        assert_eq!(
            p.stalled(now + STALL),
            None,
            "nobody answered: the server is slow"
        );
        p.answered(ConnectionHandle(0));
        assert_eq!(p.stalled(now + STALL / 2), None, "not yet");
        assert_eq!(p.stalled(now + STALL), Some(ConnectionHandle(1)));
        // Held at the one that works, then one more is tried.
        p.conns.pop();
        p.refused(now, "test", 64);
        assert_eq!(p.limit(now), 1);
        assert_eq!(p.limit(now + MIN_HOLD), 2);
        // Refused again later: the hold doubles.
        p.refused(now + MIN_HOLD, "test", 64);
        assert_eq!(p.limit(now + MIN_HOLD + MIN_HOLD), 1);
        assert_eq!(p.limit(now + MIN_HOLD + 2 * MIN_HOLD), 2);
        // A second connection served lifts the hold.
        p.conns.push(conn(2, true, 64, now));
        p.answered(ConnectionHandle(2));
        assert!(p.held.is_none());
        assert_eq!(p.limit(now), 4096);
    }
}
