use std::sync::Arc;

use proptest::prelude::*;

use super::window::{self, RecvWindow, WindowPolicy, WINDOW_FLOOR};
use super::*;

/// What one thread does to the counters.
#[derive(Clone, Debug)]
enum Op {
    /// A stream opens on connection `conn` of user `user`.
    Open { user: usize, conn: usize },
    /// The `i`-th open stream (modulo) closes normally.
    Close(usize),
    /// The `i`-th open stream is reset (released the same way, from another path).
    Reset(usize),
    /// Connection `conn` is lost: every stream on it goes, and its connection permit.
    Lose(usize),
    /// Connection `conn` of `user` is (re)established.
    Connect { user: usize, conn: usize },
    /// `kib` KiB are read on connection `conn`, `ms` after the previous step; its window
    /// is tuned.
    Read { conn: usize, kib: u64, ms: u64 },
    /// A stream of connection `conn` stalls (or drains).
    Stall { conn: usize, on: bool },
    /// A UDP session opens on connection `conn` (it takes an outbound socket).
    Session(usize),
    /// The `i`-th UDP session (modulo) idles out.
    EndSession(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..4usize).prop_map(|(user, conn)| Op::Open { user, conn }),
        2 => any::<usize>().prop_map(Op::Close),
        1 => any::<usize>().prop_map(Op::Reset),
        1 => (0..4usize).prop_map(Op::Lose),
        1 => (0..3usize, 0..4usize).prop_map(|(user, conn)| Op::Connect { user, conn }),
        3 => (0..4usize, 0..4096u64, 0..50u64).prop_map(|(conn, kib, ms)| Op::Read { conn, kib, ms }),
        1 => (0..4usize, any::<bool>()).prop_map(|(conn, on)| Op::Stall { conn, on }),
        2 => (0..4usize).prop_map(Op::Session),
        1 => any::<usize>().prop_map(Op::EndSession),
    ]
}

const USERS: [&str; 3] = ["alice", "bob", "carol"];

fn check(limits: &Limits) {
    let caps = limits.caps();
    for cap in [&limits.streams, &limits.sockets] {
        if let Some(c) = cap.cap() {
            assert!(cap.held() <= c);
        }
    }
    for u in limits.users() {
        if let Some(cap) = caps.streams_per_user {
            assert!(
                u.streams.held() <= cap,
                "{} holds {}",
                u.name,
                u.streams.held()
            );
        }
        if let Some(cap) = caps.connections_per_user {
            assert!(u.connections.held() <= cap);
        }
    }
}

/// Connections each thread runs.
const CONNS: usize = 4;
/// Threads racing on the counters.
const THREADS: usize = 4;

/// One thread: its own connections (each with a receive window) and streams, acting on
/// the shared counters.
fn run(limits: Arc<Limits>, policy: Arc<WindowPolicy>, ops: Vec<Op>) {
    let users: Vec<_> = USERS.iter().map(|u| limits.user(u)).collect();
    let mut conns: Vec<Option<ConnPermit>> = (0..CONNS).map(|_| None).collect();
    let mut windows: Vec<Option<RecvWindow>> = (0..CONNS).map(|_| None).collect();
    let mut now = std::time::Instant::now();
    let rtt = std::time::Duration::from_millis(20);
    let mut streams: Vec<(usize, StreamPermit)> = Vec::new();
    let mut sessions: Vec<(usize, SocketPermit)> = Vec::new();
    for op in ops {
        match op {
            Op::Open { user, conn } => {
                if conns[conn].is_some() {
                    if let Some(p) = limits.acquire_stream(&users[user], true) {
                        streams.push((conn, p));
                    }
                }
            }
            Op::Close(i) | Op::Reset(i) => {
                if !streams.is_empty() {
                    let i = i % streams.len();
                    streams.swap_remove(i);
                }
            }
            Op::Lose(conn) => {
                streams.retain(|(c, _)| *c != conn);
                sessions.retain(|(c, _)| *c != conn);
                conns[conn] = None;
                windows[conn] = None;
            }
            Op::Connect { user, conn } => {
                if conns[conn].is_none() {
                    conns[conn] = Limits::acquire_connection(&users[user], true);
                    windows[conn] = Some(RecvWindow::open(&policy, now));
                }
            }
            Op::Read { conn, kib, ms } => {
                now += std::time::Duration::from_millis(ms);
                if let Some(w) = &mut windows[conn] {
                    w.read(kib * 1024, now);
                    w.tune(now, rtt);
                    let allowance = window::MAX_STALLED_ALLOWANCE * policy.stream;
                    assert!(w.window() <= policy.max + allowance);
                }
            }
            Op::Session(conn) => {
                if conns[conn].is_some() {
                    if let Some(p) = limits.acquire_socket() {
                        sessions.push((conn, p));
                    }
                }
            }
            Op::EndSession(i) => {
                if !sessions.is_empty() {
                    let i = i % sessions.len();
                    sessions.swap_remove(i);
                }
            }
            Op::Stall { conn, on } => {
                if let Some(w) = &mut windows[conn] {
                    w.stall(on);
                    w.tune(now, rtt);
                }
            }
        }
        check(&limits);
        // Floors are granted past a spent budget, never more.
        let budget = &limits.window_budget;
        if let Some(cap) = budget.cap() {
            assert!(budget.held() <= cap + WINDOW_FLOOR * (CONNS * THREADS) as u64);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Four threads race random opens, closes, resets, connection losses, reads and
    /// stalls: no counter ever passes its cap (the window budget only by the floors of
    /// connections opened past it), and every counter is back at zero at the end.
    #[test]
    fn counters_stay_within_caps_and_return_to_zero(
        ops in proptest::collection::vec(proptest::collection::vec(op(), 1..400), THREADS),
        per_user in 1u64..20,
        total in 1u64..40,
        conns in 1u64..4,
        budget_mib in 1u64..64,
        fd_limit in 260u64..320,
    ) {
        let limits = Limits::new(
            Caps {
                streams_per_user: Some(per_user),
                streams: Some(total),
                connections_per_user: Some(conns),
                receive_window_budget: Some(budget_mib << 20),
            },
            Some(fd_limit),
        );
        let policy = WindowPolicy::new(1 << 20, 16 << 20, 4 << 20, limits.window_budget.clone());
        let threads: Vec<_> = ops
            .into_iter()
            .map(|ops| {
                let l = limits.clone();
                let p = policy.clone();
                std::thread::spawn(move || run(l, p, ops))
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread");
        }
        prop_assert_eq!(limits.streams.held(), 0);
        prop_assert_eq!(limits.sockets.held(), 0);
        prop_assert!(limits.sockets.peak() <= fd_limit - 256);
        prop_assert!(limits.streams.peak() <= total);
        prop_assert_eq!(limits.window_budget.held(), 0);
        for u in limits.users() {
            prop_assert_eq!(u.streams.held(), 0);
            prop_assert_eq!(u.connections.held(), 0);
            prop_assert!(u.streams.peak() <= per_user);
            prop_assert!(u.connections.peak() <= conns);
        }
    }
}

#[test]
fn the_fd_budget_caps_the_server() {
    let limits = Limits::new(Caps::default(), Some(300));
    assert_eq!(limits.sockets.cap(), Some(44));
    let u = limits.user("u");
    // Streams and UDP sessions draw on the same sockets.
    let streams: Vec<_> = (0..40)
        .filter_map(|_| limits.acquire_stream(&u, true))
        .collect();
    let sessions: Vec<_> = (0..10).filter_map(|_| limits.acquire_socket()).collect();
    assert_eq!((streams.len(), sessions.len()), (40, 4));
    assert!(limits.acquire_stream(&u, true).is_none());
    assert!(!limits.stream_room(&u));
    assert_eq!(limits.sockets.hits(), 7);
    drop(sessions);
    assert!(limits.stream_room(&u));
    drop(streams);
    assert_eq!((limits.sockets.held(), u.streams.held()), (0, 0));
    let limits = Limits::new(
        Caps {
            streams: Some(10),
            ..Caps::default()
        },
        Some(100_000),
    );
    assert_eq!(limits.streams.cap(), Some(10));
}

#[test]
fn a_lower_cap_applies_as_permits_return() {
    let limits = Limits::new(
        Caps {
            streams_per_user: Some(3),
            ..Caps::default()
        },
        None,
    );
    let u = limits.user("u");
    let held: Vec<_> = (0..3)
        .filter_map(|_| limits.acquire_stream(&u, true))
        .collect();
    assert_eq!(held.len(), 3);
    assert!(limits.acquire_stream(&u, true).is_none());
    assert_eq!(u.streams.hits(), 1);
    limits.set_caps(Caps {
        streams_per_user: Some(1),
        ..Caps::default()
    });
    drop(held);
    let one = limits.acquire_stream(&u, true);
    assert!(one.is_some());
    assert!(limits.acquire_stream(&u, true).is_none());
}

#[test]
fn traffic_counts_clear_and_online_follows_guards() {
    let limits = Limits::new(Caps::default(), None);
    let u = limits.user("alice");
    u.add_traffic(10, 20);
    limits.user("alice").add_traffic(1, 2);
    assert_eq!(u.traffic(false), (11, 22));
    assert_eq!(u.traffic(true), (11, 22));
    assert_eq!(u.traffic(false), (0, 0));
    let a = Online::new(&u);
    let b = Online::new(&u);
    assert_eq!(u.online.load(std::sync::atomic::Ordering::Relaxed), 2);
    drop(a);
    drop(b);
    assert_eq!(u.online.load(std::sync::atomic::Ordering::Relaxed), 0);
}
