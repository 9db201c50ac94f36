//! Stream caps on the server: each relayed stream holds a permit (`crate::limits`); a
//! stream that finds its user or the server at the cap is parked, not failed, and the
//! connection stops receiving new stream credit until permits come back.
//!
//! Credit is withheld with quinn-proto's concurrency limit: lowering it to the number of
//! streams open now means closing streams no longer return credit. Credit granted before
//! the cap was reached can still be used; those streams wait in the park (in arrival
//! order) without being read, so they hold no outbound socket.

use std::time::{Duration, Instant};

use quinn_proto::{ConnectionHandle, Dir, StreamId, VarInt};

use super::{Bidi, Hy2App};
use crate::limits::{Limits, StreamPermit};
use crate::worker::Io;

/// How often parked streams and withheld credit are looked at again: permits released on
/// other workers are not signalled.
pub(super) const RECHECK: Duration = Duration::from_millis(5);

/// A proxy stream waiting for a permit.
pub(super) struct Parked {
    pub ch: ConnectionHandle,
    pub id: StreamId,
    pub target: String,
    pub first: Vec<u8>,
}

impl Hy2App {
    /// A permit for a relay of `ch`'s user: the connection's own permit first (its user's
    /// connection cap), then a stream permit. `None` when a cap is reached.
    /// `first`: the request's first attempt (refusals are counted once per request).
    fn try_permit(&mut self, ch: ConnectionHandle, first: bool) -> Option<StreamPermit> {
        let conn = self.conns.get_mut(&ch)?;
        let user = conn.limits.clone()?;
        if conn.conn_permit.is_none() {
            conn.conn_permit = Limits::acquire_connection(&user, false);
            conn.conn_permit.as_ref()?;
        }
        self.cfg.limits.acquire_stream(&user, first)
    }

    /// Starts the relay with a permit, or parks the request and withholds credit.
    pub(super) fn admit(&mut self, io: &mut Io<'_>, p: Parked) {
        if let Some(permit) = self.try_permit(p.ch, true) {
            return self.start_relay_with(io, p, permit);
        }
        let ch = p.ch;
        if let Some(conn) = self.conns.get_mut(&ch) {
            conn.bidi.insert(p.id, Bidi::Parked);
            self.parked.push_back(p);
            self.withhold_credit(io, ch);
        }
    }

    /// Stops granting stream credit on `ch`: its limit becomes the streams open now.
    fn withhold_credit(&mut self, io: &mut Io<'_>, ch: ConnectionHandle) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        if let Some(qc) = io.conn(ch) {
            let open = qc.streams().remote_open_streams(Dir::Bi);
            if open < qc.max_concurrent_streams(Dir::Bi) {
                qc.set_max_concurrent_streams(Dir::Bi, varint(open));
            }
        }
        if !conn.withheld {
            conn.withheld = true;
            self.credit_withheld += 1;
            self.withheld_conns += 1;
        }
    }

    /// Starts parked streams that can get permits now (oldest first), and grants credit
    /// again where nothing is parked and the caps have room.
    pub(super) fn recheck_caps(&mut self, io: &mut Io<'_>) {
        let mut waiting = std::mem::take(&mut self.parked);
        for p in waiting.drain(..) {
            let parked = self
                .conns
                .get(&p.ch)
                .is_some_and(|c| matches!(c.bidi.get(&p.id), Some(Bidi::Parked)));
            if !parked {
                continue; // the stream or its connection went away
            }
            match self.try_permit(p.ch, false) {
                Some(permit) => {
                    if let Some(conn) = self.conns.get_mut(&p.ch) {
                        conn.bidi.remove(&p.id);
                    }
                    self.start_relay_with(io, p, permit);
                }
                None => self.parked.push_back(p),
            }
        }
        if self.withheld_conns == 0 {
            return;
        }
        let max = varint(self.cfg.max_incoming_streams);
        for (ch, conn) in self.conns.iter_mut().filter(|(_, c)| c.withheld) {
            let Some(qc) = io.conn(*ch) else {
                continue;
            };
            let parked_here = self.parked.iter().any(|p| p.ch == *ch);
            let room = conn.conn_permit.is_some()
                && conn
                    .limits
                    .as_ref()
                    .is_none_or(|u| self.cfg.limits.stream_room(u));
            if room && !parked_here {
                conn.withheld = false;
                self.withheld_conns -= 1;
                qc.set_max_concurrent_streams(Dir::Bi, max);
            } else {
                // Keep the limit at what is open, so closing streams return no credit.
                let open = qc.streams().remote_open_streams(Dir::Bi);
                if open < qc.max_concurrent_streams(Dir::Bi) {
                    qc.set_max_concurrent_streams(Dir::Bi, varint(open));
                }
            }
        }
    }

    /// When the caps need another look.
    pub(super) fn caps_deadline(&self, now: Instant) -> Option<Instant> {
        (!self.parked.is_empty() || self.withheld_conns > 0).then(|| now + RECHECK)
    }
}

fn varint(n: u64) -> VarInt {
    VarInt::from_u64(n).unwrap_or(VarInt::MAX)
}
