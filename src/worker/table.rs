//! A worker's connections, indexed by quinn-proto's handle, with the timer queue and the
//! list of connections that need a pass (input arrived, app acted, timer fired).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use std::sync::Arc;

use quinn_proto::{Connection, ConnectionHandle, VarInt};

use crate::limits::window::{RecvWindow, Step, WindowPolicy};
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
    /// The receive window's size, when the group tunes windows.
    pub window: Option<RecvWindow>,
}

#[derive(Default)]
pub struct ConnTable {
    /// How receive windows are sized; `None`: quinn-proto's fixed windows.
    policy: Option<Arc<WindowPolicy>>,
    /// Sum of the connections' receive windows.
    window_bytes: u64,
    /// Streams with a full relay buffer, over all connections.
    stalled: u64,
    /// quinn-proto hands out small, dense handles: index directly.
    entries: Vec<Option<Entry>>,
    len: usize,
    /// Connections that need a pass in this iteration.
    dirty: Vec<ConnectionHandle>,
    /// Deadlines; stale entries (no longer the connection's `timer`) are skipped on pop.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl ConnTable {
    pub fn new(policy: Option<Arc<WindowPolicy>>) -> Self {
        ConnTable {
            policy,
            ..ConnTable::default()
        }
    }

    /// Files a new connection with the handle of the controller quinn built for it, and
    /// grants its receive window (the handshake advertised only the floor).
    pub fn insert(
        &mut self,
        ch: ConnectionHandle,
        mut conn: Connection,
        cc: Option<CcHandle>,
        now: Instant,
    ) {
        if self.entries.len() <= ch.0 {
            self.entries.resize_with(ch.0 + 1, || None);
        }
        if let Some(old) = self.entries[ch.0].take() {
            self.forget(&old);
        } else {
            self.len += 1;
        }
        let window = self.policy.as_ref().map(|p| {
            let w = RecvWindow::open(p, now);
            conn.set_receive_window(varint(w.window()));
            self.window_bytes += w.window();
            w
        });
        self.entries[ch.0] = Some(Entry {
            conn,
            cc,
            pacer: BrutalPacer::default(),
            timer: None,
            dirty: false,
            window,
        });
        self.mark(ch);
    }

    pub fn remove(&mut self, ch: ConnectionHandle) -> Option<Connection> {
        let e = self.entries.get_mut(ch.0)?.take()?;
        self.len -= 1;
        self.forget(&e);
        Some(e.conn)
    }

    /// Takes a leaving connection's window out of the sums (its budget returns on drop).
    fn forget(&mut self, e: &Entry) {
        if let Some(w) = &e.window {
            self.window_bytes -= w.window();
            self.stalled -= w.stalled();
        }
    }

    /// `n` bytes were read from `ch`'s streams.
    pub fn consumed(&mut self, ch: ConnectionHandle, n: u64, now: Instant) {
        if let Some(w) = self.entry(ch).and_then(|e| e.window.as_mut()) {
            w.read(n, now);
        }
    }

    /// A stream of `ch` stopped (or resumed) reading for want of room toward TCP.
    pub fn stalled(&mut self, ch: ConnectionHandle, stalled: bool) {
        let Some(w) = self.entry(ch).and_then(|e| e.window.as_mut()) else {
            return;
        };
        let before = w.stalled();
        w.stall(stalled);
        let after = w.stalled();
        self.stalled = self.stalled + after - before;
    }

    /// Brings `ch`'s receive window to its target (see [`RecvWindow::tune`]).
    pub fn tune_window(&mut self, ch: ConnectionHandle, now: Instant) -> Option<Step> {
        let e = self.entries.get_mut(ch.0)?.as_mut()?;
        let w = e.window.as_mut()?;
        let before = w.window();
        let step = w.tune(now, e.conn.rtt())?;
        if step.window != before {
            e.conn.set_receive_window(varint(step.window));
            self.window_bytes = self.window_bytes + step.window - before;
        }
        Some(step)
    }

    /// Sum of the connections' receive windows, and their streams that stopped reading.
    pub fn window_totals(&self) -> (u64, u64) {
        (self.window_bytes, self.stalled)
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

fn varint(n: u64) -> VarInt {
    VarInt::from_u64(n).unwrap_or(VarInt::MAX)
}
