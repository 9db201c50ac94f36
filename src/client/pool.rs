//! One worker's QUIC connections to the server: handshake, HTTP/3 authentication, stream
//! credit, growth and reconnection.
//!
//! A request for a stream is served by the authenticated connection with credit and the
//! fewest open streams. When none has credit, or the oldest request has waited longer than
//! `pool.openWaitThreshold`, another connection is opened, up to `pool.maxConnections`, one
//! at a time. Failed attempts back off (0.2 s doubling to 2 s); while no connection is up,
//! requests wait and are refused after `pool.streamOpenTimeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{ConnectionHandle, StreamId};

use super::auth::{AuthError, AuthExchange};
use super::stats::PoolStats;
use crate::proto::h3::CcRx;
use crate::worker::Io;

/// First delay after a failed attempt; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// An attempt not authenticated by then is abandoned.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How far a connection got.
pub enum State {
    /// QUIC handshake in progress.
    Handshake,
    /// Auth request sent; its response is being read.
    Auth(AuthExchange),
    /// Authenticated: streams may be opened. `udp`: the server relays UDP.
    Ready { udp: bool },
}

pub struct PoolConn {
    pub ch: ConnectionHandle,
    pub state: State,
    /// Our proxy streams open on it.
    pub streams: usize,
    /// The last open attempt found no stream credit; cleared when credit arrives.
    pub no_credit: bool,
    started: Instant,
}

impl PoolConn {
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }
}

/// What the pool needs from the config.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub server: std::net::SocketAddr,
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

pub struct Pool {
    cfg: PoolConfig,
    stats: Arc<PoolStats>,
    pub conns: Vec<PoolConn>,
    backoff: Duration,
    next_attempt: Instant,
    /// The worker lost its last connection; the next one up counts as a reconnect.
    lost_all: bool,
}

impl Pool {
    pub fn new(cfg: PoolConfig, stats: Arc<PoolStats>, now: Instant) -> Self {
        Pool {
            cfg,
            stats,
            conns: Vec::new(),
            backoff: MIN_BACKOFF,
            next_attempt: now,
            lost_all: false,
        }
    }

    pub fn get_mut(&mut self, ch: ConnectionHandle) -> Option<&mut PoolConn> {
        self.conns.iter_mut().find(|c| c.ch == ch)
    }

    fn setting_up(&self) -> bool {
        self.conns.iter().any(|c| !c.is_ready())
    }

    /// Opens another connection if the pool wants one now: `waiting` requests, the oldest
    /// queued for `oldest_wait`.
    pub fn maybe_grow(&mut self, io: &mut Io<'_>, waiting: usize, oldest_wait: Duration) {
        if self.setting_up() || self.conns.len() >= self.cfg.max_connections {
            return;
        }
        if io.now < self.next_attempt {
            return;
        }
        let ready = self.conns.iter().filter(|c| c.is_ready()).count();
        let want = if ready == 0 {
            self.cfg.eager || waiting > 0
        } else {
            waiting > 0
                && (self.conns.iter().all(|c| c.no_credit)
                    || oldest_wait >= self.cfg.open_wait_threshold)
        };
        if !want {
            return;
        }
        match io.connect(self.cfg.server, &self.cfg.server_name) {
            Ok(ch) => {
                tracing::debug!(
                    "{:?}: connecting to {} ({} open, {waiting} waiting)",
                    io.worker,
                    self.cfg.server,
                    self.conns.len()
                );
                self.conns.push(PoolConn {
                    ch,
                    state: State::Handshake,
                    streams: 0,
                    no_credit: false,
                    started: io.now,
                });
            }
            Err(e) => {
                crate::warn_limited!("cannot connect to {}: {e}", self.cfg.server);
                self.failed(io.now);
            }
        }
    }

    fn failed(&mut self, now: Instant) {
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// When the pool next wants to act by itself (a backoff ending, a setup timing out).
    pub fn next_deadline(&self, waiting: usize) -> Option<Instant> {
        let setup = self
            .conns
            .iter()
            .filter(|c| !c.is_ready())
            .map(|c| c.started + SETUP_TIMEOUT)
            .min();
        let retry =
            (self.conns.is_empty() && (self.cfg.eager || waiting > 0)).then_some(self.next_attempt);
        setup.into_iter().chain(retry).min()
    }

    /// Abandons attempts that took too long.
    pub fn expire(&mut self, io: &mut Io<'_>) {
        let now = io.now;
        for c in &self.conns {
            if !c.is_ready() && now >= c.started + SETUP_TIMEOUT {
                if let Some(qc) = io.conn(c.ch) {
                    qc.close(now, 0u32.into(), b"setup timed out"[..].into());
                }
            }
        }
    }

    /// The handshake finished: send our HTTP/3 SETTINGS and the auth request.
    pub fn on_connected(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        let Some(c) = self.conns.iter_mut().find(|c| c.ch == ch) else {
            return;
        };
        let Some(qc) = io.conn(ch) else {
            return;
        };
        if let Some(auth) = AuthExchange::start(qc, &self.cfg.auth, self.cfg.down) {
            c.state = State::Auth(auth);
        }
    }

    /// Reads the auth response on `id`, if that is the auth stream. True when the stream
    /// was the pool's.
    pub fn on_auth_readable(
        &mut self,
        io: &mut Io<'_>,
        ch: ConnectionHandle,
        id: StreamId,
    ) -> bool {
        let Some(pos) = self.conns.iter().position(|c| c.ch == ch) else {
            return false;
        };
        let State::Auth(auth) = &mut self.conns[pos].state else {
            return false;
        };
        if auth.id() != id {
            return false;
        }
        let Some(qc) = io.conn(ch) else {
            return true;
        };
        let outcome = auth.read(qc);
        match outcome {
            None => {}
            Some(Ok(ok)) => {
                self.conns[pos].state = State::Ready { udp: ok.udp };
                self.backoff = MIN_BACKOFF;
                self.stats.connection_up();
                if std::mem::take(&mut self.lost_all) {
                    self.stats
                        .reconnects
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let rate = send_rate(ok.cc_rx, self.cfg.up);
                if rate > 0 {
                    io.set_send_rate(ch, rate);
                }
                tracing::info!(
                    "{:?}: connected to {} ({} of at most {} on this worker; udp {}, {})",
                    io.worker,
                    self.cfg.server,
                    self.conns.iter().filter(|c| c.is_ready()).count(),
                    self.cfg.max_connections,
                    if ok.udp { "on" } else { "off" },
                    if rate > 0 {
                        format!("Brutal at {} bit/s", rate * 8)
                    } else {
                        "BBR".to_string()
                    },
                );
            }
            Some(Err(why)) => {
                if let AuthError::Refused(_) = why {
                    self.stats
                        .auth_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!("{}: {why}: check `auth`", self.cfg.server);
                } else {
                    tracing::error!("{}: {why}", self.cfg.server);
                }
                let now = io.now;
                if let Some(qc) = io.conn(ch) {
                    qc.close(now, 0u32.into(), b""[..].into());
                }
            }
        }
        true
    }

    /// The connection is gone. Returns whether it had been authenticated.
    pub fn on_lost(&mut self, now: Instant, ch: ConnectionHandle) -> bool {
        let Some(pos) = self.conns.iter().position(|c| c.ch == ch) else {
            return false;
        };
        let c = self.conns.swap_remove(pos);
        let was_ready = c.is_ready();
        if was_ready {
            self.stats.connection_down();
        } else {
            self.failed(now);
        }
        if was_ready && !self.conns.iter().any(|c| c.is_ready()) {
            self.lost_all = true;
        }
        was_ready
    }

    /// An authenticated connection that relays UDP.
    pub fn pick_udp(&self) -> Option<ConnectionHandle> {
        self.conns
            .iter()
            .find(|c| matches!(c.state, State::Ready { udp: true }))
            .map(|c| c.ch)
    }

    /// The ready connection to open the next stream on: credit left, fewest streams.
    pub fn pick(&self) -> Option<usize> {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ready() && !c.no_credit)
            .min_by_key(|(_, c)| c.streams)
            .map(|(i, _)| i)
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
