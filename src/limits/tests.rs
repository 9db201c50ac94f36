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
                    if let Ok(p) = limits.acquire_stream(&users[user], true) {
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
                    let user = &users[conn % users.len()];
                    if let Ok(p) = limits.acquire_udp(Some(user)) {
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
        udp_per_user in 0u64..8,
        sockets_per_user in 0u64..16,
    ) {
        let limits = Limits::new(
            Caps {
                streams_per_user: Some(per_user),
                streams: Some(total),
                connections_per_user: Some(conns),
                receive_window_budget: Some(budget_mib << 20),
                udp_sessions_per_user: PerUser::from_config(Some(udp_per_user)),
                sockets_per_user: PerUser::from_config(Some(sockets_per_user)),
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
            prop_assert_eq!(u.udp_sessions.held(), 0);
            prop_assert_eq!(u.sockets.held(), 0);
            if udp_per_user > 0 {
                prop_assert!(u.udp_sessions.peak() <= udp_per_user);
            }
            if sockets_per_user > 0 {
                prop_assert!(u.sockets.peak() <= sockets_per_user);
            }
            prop_assert!(u.streams.peak() <= per_user);
            prop_assert!(u.connections.peak() <= conns);
        }
    }
}

#[test]
fn the_fd_budget_caps_the_server() {
    let no_user_caps = Caps {
        udp_sessions_per_user: PerUser::Unlimited,
        sockets_per_user: PerUser::Unlimited,
        ..Caps::default()
    };
    let limits = Limits::new(no_user_caps, Some(300));
    assert_eq!(limits.sockets.cap(), Some(44));
    let u = limits.user("u");
    // Streams and UDP sessions draw on the same sockets.
    let streams: Vec<_> = (0..40)
        .filter_map(|_| limits.acquire_stream(&u, true).ok())
        .collect();
    let sessions: Vec<_> = (0..10)
        .filter_map(|_| limits.acquire_udp(Some(&u)).ok())
        .collect();
    assert_eq!((streams.len(), sessions.len()), (40, 4));
    assert_eq!(limits.acquire_stream(&u, true).err(), Some(Refused::Wait));
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
        .filter_map(|_| limits.acquire_stream(&u, true).ok())
        .collect();
    assert_eq!(held.len(), 3);
    assert!(limits.acquire_stream(&u, true).is_err());
    assert_eq!(u.streams.hits(), 1);
    limits.set_caps(Caps {
        streams_per_user: Some(1),
        ..Caps::default()
    });
    drop(held);
    let one = limits.acquire_stream(&u, true);
    assert!(one.is_ok());
    assert!(limits.acquire_stream(&u, true).is_err());
}

/// Without configured values, a user's sockets are capped at half the budget and its UDP
/// sessions at half of those; 0 lifts a cap; explicit values win.
#[test]
fn per_user_socket_caps_default_from_the_budget() {
    let limits = Limits::new(Caps::default(), Some(FD_RESERVE + 4000));
    let u = limits.user("u");
    assert_eq!(
        (u.sockets.cap(), u.udp_sessions.cap()),
        (Some(2000), Some(1000))
    );
    let none = Limits::new(Caps::default(), None);
    let n = none.user("n");
    assert_eq!((n.sockets.cap(), n.udp_sessions.cap()), (None, None));
    let set = Caps {
        udp_sessions_per_user: PerUser::from_config(Some(0)),
        sockets_per_user: PerUser::from_config(Some(300)),
        ..Caps::default()
    };
    limits.set_caps(set);
    assert_eq!((u.sockets.cap(), u.udp_sessions.cap()), (Some(300), None));
    let set = Caps {
        udp_sessions_per_user: PerUser::from_config(Some(7)),
        ..Caps::default()
    };
    limits.set_caps(set);
    assert_eq!(
        (u.sockets.cap(), u.udp_sessions.cap()),
        (Some(2000), Some(7))
    );
}

/// One user's UDP sessions stop at its UDP cap and its socket cap; its TCP streams are
/// refused (not parked) at its socket cap; another user still gets sockets.
#[test]
fn one_users_udp_sessions_leave_sockets_for_others() {
    let limits = Limits::new(
        Caps {
            udp_sessions_per_user: PerUser::Cap(5),
            sockets_per_user: PerUser::Cap(8),
            ..Caps::default()
        },
        Some(FD_RESERVE + 20),
    );
    let a = limits.user("a");
    let b = limits.user("b");
    let udp: Vec<_> = (0..100)
        .filter_map(|_| limits.acquire_udp(Some(&a)).ok())
        .collect();
    assert_eq!(udp.len(), 5);
    assert_eq!(a.udp_sessions.hits(), 95);
    let tcp: Vec<_> = (0..3)
        .filter_map(|_| limits.acquire_stream(&a, false).ok())
        .collect();
    assert_eq!(tcp.len(), 3);
    // The user's sockets are all taken: a stream is refused and counted even when retried.
    assert_eq!(
        limits.acquire_stream(&a, false).err(),
        Some(Refused::UserSockets)
    );
    assert_eq!(a.sockets.hits(), 1);
    assert!(!limits.stream_room(&a));
    assert_eq!(a.streams.held(), 3, "a refused stream holds nothing");
    // Another user: 20 - 8 sockets left.
    let b_tcp: Vec<_> = (0..8)
        .filter_map(|_| limits.acquire_stream(&b, true).ok())
        .collect();
    assert_eq!(b_tcp.len(), 8);
    let b_udp: Vec<_> = (0..8)
        .filter_map(|_| limits.acquire_udp(Some(&b)).ok())
        .collect();
    assert_eq!(b_udp.len(), 0, "b's socket cap of 8 is reached");
    assert_eq!(b.sockets.hits(), 8);
    drop((udp, tcp, b_tcp));
    for c in [&a.udp_sessions, &a.sockets, &b.sockets, &limits.sockets] {
        assert_eq!(c.held(), 0);
    }
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
