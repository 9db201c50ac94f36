//! A worker's connections, indexed by quinn-proto's handle, with the timer queue and the
//! list of connections that need a pass (input arrived, app acted, timer fired).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use quinn_proto::{Connection, ConnectionHandle};

use crate::quic::{BrutalPacer, CcHandle};

pub(super) struct Entry {
    pub conn: Connection,
    /// Shared with the connection's congestion controller (`quic::take_last_built` after
    /// quinn built it); `None` for a controller that cannot switch to Brutal.
    pub cc: Option<CcHandle>,
    /// Brutal's pacing bucket, used while `cc` has a rate; reset when the rate is set.
    pub pacer: BrutalPacer,
    /// The deadline last pushed to the timer queue for this connection.
    pub timer: Option<Instant>,
    /// Whether the connection is in the dirty list.
    pub dirty: bool,
}

#[derive(Default)]
pub struct ConnTable {
    /// quinn-proto hands out small, dense handles: index directly.
    entries: Vec<Option<Entry>>,
    len: usize,
    /// Connections that need a pass in this iteration.
    dirty: Vec<ConnectionHandle>,
    /// Deadlines; stale entries (no longer the connection's `timer`) are skipped on pop.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl ConnTable {
    /// Files a new connection with the handle of the controller quinn built for it.
    pub fn insert(&mut self, ch: ConnectionHandle, conn: Connection, cc: Option<CcHandle>) {
        if self.entries.len() <= ch.0 {
            self.entries.resize_with(ch.0 + 1, || None);
        }
        if self.entries[ch.0].is_none() {
            self.len += 1;
        }
        self.entries[ch.0] = Some(Entry {
            conn,
            cc,
            pacer: BrutalPacer::default(),
            timer: None,
            dirty: false,
        });
        self.mark(ch);
    }

    pub fn remove(&mut self, ch: ConnectionHandle) -> Option<Connection> {
        let e = self.entries.get_mut(ch.0)?.take()?;
        self.len -= 1;
        Some(e.conn)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn entry(&mut self, ch: ConnectionHandle) -> Option<&mut Entry> {
        self.entries.get_mut(ch.0)?.as_mut()
    }

    pub fn get(&mut self, ch: ConnectionHandle) -> Option<&mut Connection> {
        self.entry(ch).map(|e| &mut e.conn)
    }

    /// The connection, marked dirty.
    pub fn get_dirty(&mut self, ch: ConnectionHandle) -> Option<&mut Connection> {
        self.mark(ch);
        self.get(ch)
    }

    pub fn mark(&mut self, ch: ConnectionHandle) {
        if let Some(Some(e)) = self.entries.get_mut(ch.0) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(ch);
            }
        }
    }

    /// Takes the dirty list (entries stay flagged until `clean`).
    pub fn take_dirty(&mut self, into: &mut Vec<ConnectionHandle>) {
        into.clear();
        std::mem::swap(into, &mut self.dirty);
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    pub fn clean(&mut self, ch: ConnectionHandle) {
        if let Some(e) = self.entry(ch) {
            e.dirty = false;
        }
    }

    /// Files the handle of a controller quinn rebuilt for a new path (migration to another
    /// IP): the old one no longer reaches the connection. The connection keeps its rate.
    pub fn replace_cc(&mut self, ch: ConnectionHandle, cc: CcHandle) {
        let Some(e) = self.entry(ch) else { return };
        if let Some(old) = &e.cc {
            cc.set_rate(old.rate());
        }
        e.cc = Some(cc);
    }

    /// Switches the connection to Brutal at `bytes_per_sec` (0: back to its fallback
    /// controller), with a fresh pacing bucket. False if its controller cannot switch.
    pub fn set_send_rate(&mut self, ch: ConnectionHandle, bytes_per_sec: u64) -> bool {
        let Some(e) = self.entry(ch) else {
            return false;
        };
        let Some(cc) = &e.cc else { return false };
        cc.set_rate(bytes_per_sec);
        e.pacer = BrutalPacer::default();
        self.mark(ch);
        true
    }

    /// Records the connection's next deadline.
    pub fn set_timer(&mut self, ch: ConnectionHandle, at: Option<Instant>) {
        let Some(e) = self.entry(ch) else { return };
        if e.timer == at {
            return;
        }
        e.timer = at;
        if let Some(t) = at {
            self.timers.push(Reverse((t, ch.0)));
        }
    }

    /// Earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, i))) = self.timers.peek().copied() {
            match self.entries.get(i).and_then(|e| e.as_ref()) {
                Some(e) if e.timer == Some(t) => return Some(t),
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    /// Pops connections whose deadline has passed (their `timer` is cleared).
    pub fn expired(&mut self, now: Instant, out: &mut Vec<ConnectionHandle>) {
        while let Some(t) = self.next_deadline() {
            if t > now {
                break;
            }
            let Reverse((_, i)) = self.timers.pop().expect("peeked");
            if let Some(Some(e)) = self.entries.get_mut(i) {
                e.timer = None;
            }
            out.push(ConnectionHandle(i));
        }
    }

    pub fn handles(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_some())
            .map(|(i, _)| ConnectionHandle(i))
    }
}
