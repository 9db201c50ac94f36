//! What runs on top of a worker: the echo server, the load client, later the relay.

use std::net::SocketAddr;
use std::time::Instant;

use quinn_proto::{ClientConfig, ConnectError, Connection, ConnectionHandle, Endpoint, Event};

use super::table::ConnTable;
use super::WorkerId;
use crate::engine::{Completion, Driver};
use crate::quic;

/// An application driven by one worker. All calls happen on the worker's thread.
pub trait App: Send + 'static {
    /// Once per loop iteration, after input was handled and before transmits: start
    /// connections (clients), move data that arrived elsewhere into streams.
    fn tick(&mut self, _io: &mut Io<'_>) {}

    /// A connection event (handshake done, stream readable/writable, lost, ...).
    fn on_event(&mut self, io: &mut Io<'_>, ch: ConnectionHandle, event: Event);

    /// A socket operation this app started on `io.driver` completed.
    fn on_sock(&mut self, _io: &mut Io<'_>, _completion: Completion) {}

    /// The app's own next deadline (connect timeouts, idle sessions); `tick` runs then.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The worker leaves its loop when this returns true (a client whose work is done).
    fn done(&self) -> bool {
        false
    }
}

/// The worker's state an [`App`] may use during a call.
pub struct Io<'a> {
    /// The loop iteration's clock reading.
    pub now: Instant,
    pub worker: WorkerId,
    pub driver: &'a mut dyn Driver,
    /// This worker's counters (single writer: use `WorkerCounters::add`/`set`).
    pub counters: &'a crate::metrics::WorkerCounters,
    pub(super) endpoint: &'a mut Endpoint,
    pub(super) conns: &'a mut ConnTable,
    pub(super) client_config: Option<&'a ClientConfig>,
}

impl Io<'_> {
    /// The connection `ch`, marked for a transmit pass since the app is about to act on it.
    pub fn conn(&mut self, ch: ConnectionHandle) -> Option<&mut Connection> {
        self.conns.get_dirty(ch)
    }

    /// `n` bytes were read from streams of `ch` (and handed on): its window follows.
    pub fn consumed(&mut self, ch: ConnectionHandle, n: u64) {
        if n > 0 {
            self.conns.consumed(ch, n, self.now);
        }
    }

    /// A stream of `ch` stopped reading because its buffer toward the far side is full
    /// (`true`), or reads again (`false`).
    pub fn stalled(&mut self, ch: ConnectionHandle, stalled: bool) {
        self.conns.stalled(ch, stalled);
    }

    /// Opens a client connection with the worker's client configuration.
    pub fn connect(
        &mut self,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<ConnectionHandle, ConnectError> {
        let Some(cfg) = self.client_config else {
            return Err(ConnectError::NoDefaultClientConfig);
        };
        let (ch, conn) = self
            .endpoint
            .connect(self.now, cfg.clone(), remote, server_name)?;
        // `connect` built the connection's controller on this thread.
        self.conns
            .insert(ch, conn, quic::take_last_built(), self.now);
        Ok(ch)
    }

    /// Sends on `ch` with Brutal at `bytes_per_sec` (Hysteria2 negotiated a rate), or with
    /// the configured controller again when 0. False if the connection is gone.
    pub fn set_send_rate(&mut self, ch: ConnectionHandle, bytes_per_sec: u64) -> bool {
        self.conns.set_send_rate(ch, bytes_per_sec)
    }
}
