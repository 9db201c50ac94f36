//! The `udp` scenario on one connection: UDP packets to the target's echo as Hysteria2
//! UDPMessages in QUIC datagrams (fragmented when larger than one datagram), at a fixed
//! rate, and their echoes back.
//!
//! Each packet carries its sequence number and send time (microseconds since the run
//! began, u64 BE each) ahead of pattern filler, so an echo gives its round-trip time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::Connection;

use super::stats::Stats;
use crate::pattern;
use quelay::proto::udp::{fragment, MAX_UDP_MESSAGE, MAX_UDP_PAYLOAD};
use quelay::proto::{Defragger, UdpMessage};

/// Sequence number and send time.
pub const STAMP_LEN: usize = 16;
/// Packets sent at once when behind schedule (after a stall), so one connection cannot hog
/// the worker.
const MAX_BURST: u64 = 256;

/// Smallest and largest packet this scenario sends.
pub fn clamp_size(size: usize) -> usize {
    size.clamp(STAMP_LEN, MAX_UDP_PAYLOAD)
}

/// One connection's UDP session.
pub struct Session {
    /// Our session id (one per connection).
    id: u32,
    /// Id of the next packet, shared by its fragments.
    packet_id: u16,
    defrag: Defragger,
    /// Largest UDPMessage the connection carries in one datagram.
    max_message: usize,
    /// Packets per second on this connection.
    rate: f64,
    /// When sending began: packet `n` is due at `since + n / rate`.
    since: Instant,
    /// Packets handed to QUIC, and echoes received.
    pub sent: u64,
    pub received: u64,
}

impl Session {
    /// A session on an authenticated connection; fails when the server relays no UDP.
    pub fn new(
        conn: &mut Connection,
        id: u32,
        rate: f64,
        server_udp: bool,
        now: Instant,
    ) -> Result<Self, String> {
        if !server_udp {
            return Err("the server does not relay UDP (hysteria-udp: false)".into());
        }
        let Some(max) = conn.datagrams().max_size() else {
            return Err("the server does not accept QUIC datagrams".into());
        };
        Ok(Session {
            id,
            packet_id: 0,
            defrag: Defragger::new(),
            max_message: max.min(MAX_UDP_MESSAGE),
            rate,
            since: now,
            sent: 0,
            received: 0,
        })
    }

    /// When the next packet is due.
    pub fn next_due(&self) -> Instant {
        if self.rate <= 0.0 {
            return self.since + Duration::from_secs(3600);
        }
        self.since + Duration::from_secs_f64((self.sent + 1) as f64 / self.rate)
    }

    /// Sends the packets due by `now` (at most [`MAX_BURST`]).
    pub fn send_due(
        &mut self,
        conn: &mut Connection,
        target: &str,
        size: usize,
        epoch: Instant,
        now: Instant,
        stats: &Stats,
    ) -> Result<(), String> {
        let due = (now.saturating_duration_since(self.since).as_secs_f64() * self.rate) as u64;
        let mut budget = due.saturating_sub(self.sent).min(MAX_BURST);
        let mut payload = vec![0u8; clamp_size(size)];
        let fill = payload.len() - STAMP_LEN;
        payload[STAMP_LEN..].copy_from_slice(pattern(0, fill));
        while budget > 0 {
            budget -= 1;
            let us = now.saturating_duration_since(epoch).as_micros() as u64;
            payload[..8].copy_from_slice(&self.sent.to_be_bytes());
            payload[8..STAMP_LEN].copy_from_slice(&us.to_be_bytes());
            self.packet_id = self.packet_id.wrapping_add(1);
            let frags = fragment(self.id, self.packet_id, target, &payload, self.max_message)
                .map_err(|e| format!("cannot encode a UDP message: {e}"))?;
            for f in frags {
                // `drop: true`: a full send queue loses the oldest datagram, as UDP would.
                conn.datagrams()
                    .send(Bytes::from(f), true)
                    .map_err(|e| format!("cannot send a datagram: {e}"))?;
            }
            self.sent += 1;
            Stats::add(&stats.udp_sent, 1);
        }
        Ok(())
    }

    /// Takes the echoes that arrived; returns how many were malformed.
    pub fn receive(
        &mut self,
        conn: &mut Connection,
        epoch: Instant,
        now: Instant,
        stats: &Stats,
        worker: usize,
    ) -> u64 {
        let mut bad = 0;
        while let Some(d) = conn.datagrams().recv() {
            let msg = match UdpMessage::parse(d) {
                Ok(m) => m,
                Err(_) => {
                    bad += 1;
                    continue;
                }
            };
            if msg.session_id != self.id {
                bad += 1;
                continue;
            }
            let whole = match self.defrag.feed(msg) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(_) => {
                    bad += 1;
                    continue;
                }
            };
            let p = &whole.payload;
            if p.len() < STAMP_LEN {
                bad += 1;
                continue;
            }
            let mut t = [0u8; 8];
            t.copy_from_slice(&p[8..STAMP_LEN]);
            let sent_us = u64::from_be_bytes(t);
            let now_us = now.saturating_duration_since(epoch).as_micros() as u64;
            stats.record(worker, now_us.saturating_sub(sent_us));
            self.received += 1;
            Stats::add(&stats.udp_received, 1);
        }
        bad
    }
}
