//! The client's UDP sessions driven by an arbitrary script of events (sockets opened,
//! closing and closed, the app's datagrams, the server's UDPMessages and fragments,
//! connections up and lost, sends done, time passing) keep their promises: a packet goes
//! only to a ready connection and only with a payload a UDPMessage may carry, a reply goes
//! only from a socket that is open and not closing, and never more replies are in flight on
//! a socket than its budget.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quelay::client::session::udp::{UdpAction, UdpConns, UdpForward, UdpSessions};
use quelay::client::session::ConnId;
use quelay::client::PoolStats;
use quelay::proto::udp::MAX_UDP_PAYLOAD;
use quelay::proto::UdpMessage;

/// Replies in flight per socket (`session/udp.rs`).
const MAX_SENDS: usize = 256;
const APP_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Default)]
struct Conns(HashSet<u64>);

impl UdpConns for Conns {
    fn ready(&self, conn: ConnId) -> bool {
        self.0.contains(&conn.0)
    }
    fn pick_udp(&self) -> Option<ConnId> {
        self.0.iter().min().map(|&c| ConnId(c))
    }
}

#[derive(PartialEq)]
enum Sock {
    Open,
    Closing,
}

fuzz_target!(|data: &[u8]| {
    let mut udp = UdpSessions::new(Arc::new(PoolStats::new(1)), 0);
    let mut conns = Conns::default();
    let mut socks: HashMap<usize, Sock> = HashMap::new();
    let mut in_flight: HashMap<usize, usize> = HashMap::new();
    let mut now = Instant::now();
    let mut rest = data;
    while let [op, arg, len, tail @ ..] = rest {
        let take = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(take);
        rest = next;
        let sock = usize::from(arg & 0x3);
        match op % 10 {
            0 if !socks.contains_key(&sock) => {
                udp.add_association(sock, APP_IP, now);
                socks.insert(sock, Sock::Open);
            }
            1 if !socks.contains_key(&sock) => {
                let fwd = UdpForward {
                    remote: "10.0.0.1:53".into(),
                    timeout: Duration::from_secs(u64::from(arg >> 2) + 1),
                };
                udp.add_forwarder(sock, fwd);
                socks.insert(sock, Sock::Open);
            }
            2 => {
                let peer = SocketAddr::new(APP_IP, 1000 + u16::from(arg >> 2));
                udp.from_app(sock, peer, bytes, now, &conns);
            }
            3 => {
                // A UDPMessage of a low session id (the ids the sessions hand out), its
                // fragment fields and payload from the script.
                let msg = UdpMessage {
                    session_id: u32::from(arg >> 4) + 1,
                    packet_id: u16::from(arg & 0x3),
                    frag_id: bytes.first().map_or(0, |b| b & 0x3),
                    frag_count: bytes.get(1).map_or(1, |b| b & 0x3),
                    addr: "1.2.3.4:53".into(),
                    payload: Bytes::copy_from_slice(bytes),
                };
                let mut out = Vec::new();
                if msg.encode(&mut out).is_ok() {
                    udp.from_server(ConnId(u64::from(arg & 0x3)), Bytes::from(out), now);
                }
            }
            4 => udp.from_server(ConnId(u64::from(arg & 0x3)), Bytes::copy_from_slice(bytes), now),
            5 => {
                conns.0.insert(u64::from(arg & 0x3));
                udp.flush_pending(now, &conns);
            }
            6 => {
                let conn = u64::from(arg & 0x3);
                conns.0.remove(&conn);
                udp.connection_lost(ConnId(conn));
            }
            7 => match socks.get(&sock) {
                Some(Sock::Open) => {
                    udp.closing(sock);
                    socks.insert(sock, Sock::Closing);
                }
                Some(Sock::Closing) => {
                    udp.closed(sock);
                    socks.remove(&sock);
                    in_flight.remove(&sock);
                }
                None => {}
            },
            8 => {
                let n = in_flight.entry(sock).or_default();
                if *n > 0 {
                    *n -= 1;
                    udp.sent(sock);
                }
            }
            _ => {
                now += Duration::from_secs(u64::from(*arg));
                udp.expire(now);
            }
        }
        while let Some(action) = udp.poll_action() {
            match action {
                UdpAction::ToServer { conn, payload, .. } => {
                    assert!(conns.ready(conn), "a packet for a connection not ready");
                    assert!(!payload.is_empty() && payload.len() <= MAX_UDP_PAYLOAD);
                }
                UdpAction::ToApp { sock, .. } => {
                    assert!(socks.get(&sock) == Some(&Sock::Open), "a reply from socket {sock}");
                    let n = in_flight.entry(sock).or_default();
                    *n += 1;
                    assert!(*n <= MAX_SENDS);
                }
            }
        }
    }
});
