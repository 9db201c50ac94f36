//! Stream caps: each relayed stream holds a permit (`crate::limits`); a request that finds
//! its user or the server at the cap is parked, not failed, and its connection stops
//! receiving new stream credit until permits come back.
//!
//! Credit is withheld with quinn-proto's concurrency limit ([`Action::Credit`]): holding it
//! at the number of streams open now means closing streams return no credit. Credit granted
//! before the cap was reached can still be used; those streams wait in the park (in arrival
//! order) without being read, so they hold no outbound socket.

use std::time::{Duration, Instant};

use quinn_proto::StreamId;

use super::{Action, ConnId, Session, Stream};
use crate::limits::{Limits, Refused, StreamPermit};

/// How often parked streams and withheld credit are looked at again: permits released on
/// other workers are not signalled.
pub(super) const RECHECK: Duration = Duration::from_millis(5);

/// A proxy request waiting for a permit.
pub(super) struct Parked {
    pub conn: ConnId,
    pub stream: StreamId,
    pub target: String,
    pub first: Vec<u8>,
}

impl Session {
    /// A permit for a relay of the connection's user: the connection's own permit first (its
    /// user's connection cap), then a stream permit. `None` when a cap is reached.
    /// `first`: the request's first attempt (refusals are counted once per request).
    /// `Err(Refused::UserSockets)`: the user's socket cap, the request is refused.
    fn try_permit(&mut self, conn: ConnId, first: bool) -> Result<StreamPermit, Refused> {
        let c = self.conns.get_mut(&conn).ok_or(Refused::Wait)?;
        let user = c.limits.clone().ok_or(Refused::Wait)?;
        if c.conn_permit.is_none() {
            c.conn_permit = Limits::acquire_connection(&user, false);
            c.conn_permit.as_ref().ok_or(Refused::Wait)?;
        }
        self.cfg.limits.acquire_stream(&user, first)
    }

    /// A request refused at its user's socket cap: an error TCPResponse, counted.
    fn refuse_at_socket_cap(&mut self, p: Parked) {
        self.counters.refused += 1;
        self.counters.socket_cap_refused += 1;
        crate::warn_limited!("proxy request refused: the user's outbound-socket cap is reached");
        let bytes = super::error_response("too many sockets open for this user");
        self.respond(p.conn, p.stream, bytes);
    }

    /// Starts the relay with a permit, or parks the request and withholds credit.
    pub(super) fn admit(&mut self, now: Instant, p: Parked) {
        match self.try_permit(p.conn, true) {
            Ok(permit) => return self.start_relay(now, p, permit),
            Err(Refused::UserSockets) => return self.refuse_at_socket_cap(p),
            Err(Refused::Wait) => {}
        }
        let conn = p.conn;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.streams.insert(p.stream, Stream::Parked);
        self.parked.push_back(p);
        if self.withheld.insert(conn) {
            self.counters.credit_withheld += 1;
        }
        self.actions.push_back(Action::Credit { conn, limit: None });
    }

    /// Starts parked requests that can get permits now (oldest first), and grants credit
    /// again where nothing is parked and the caps have room.
    pub(super) fn recheck_caps(&mut self, now: Instant) {
        let mut waiting = std::mem::take(&mut self.parked);
        for p in waiting.drain(..) {
            let parked = self
                .conns
                .get(&p.conn)
                .is_some_and(|c| matches!(c.streams.get(&p.stream), Some(Stream::Parked)));
            if !parked {
                continue; // the stream or its connection went away
            }
            match self.try_permit(p.conn, false) {
                Ok(permit) => {
                    if let Some(c) = self.conns.get_mut(&p.conn) {
                        c.streams.remove(&p.stream);
                    }
                    self.start_relay(now, p, permit);
                }
                Err(Refused::UserSockets) => {
                    if let Some(c) = self.conns.get_mut(&p.conn) {
                        c.streams.remove(&p.stream);
                    }
                    self.refuse_at_socket_cap(p);
                }
                Err(Refused::Wait) => self.parked.push_back(p),
            }
        }
        let max = self.cfg.max_incoming_streams;
        for conn in self.withheld.clone() {
            let parked_here = self.parked.iter().any(|p| p.conn == conn);
            let Some(c) = self.conns.get(&conn) else {
                continue;
            };
            let room = c.conn_permit.is_some()
                && c.limits
                    .as_ref()
                    .is_none_or(|u| self.cfg.limits.stream_room(u));
            let limit = if room && !parked_here {
                self.withheld.remove(&conn);
                Some(max)
            } else {
                // Keep the limit at what is open, so closing streams return no credit.
                None
            };
            self.actions.push_back(Action::Credit { conn, limit });
        }
    }

    /// When the caps need another look.
    pub(super) fn caps_deadline(&self, now: Instant) -> Option<Instant> {
        (!self.parked.is_empty() || !self.withheld.is_empty()).then(|| now + RECHECK)
    }
}
