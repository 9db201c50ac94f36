use std::sync::Arc;

use proptest::prelude::*;

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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..4usize).prop_map(|(user, conn)| Op::Open { user, conn }),
        2 => any::<usize>().prop_map(Op::Close),
        1 => any::<usize>().prop_map(Op::Reset),
        1 => (0..4usize).prop_map(Op::Lose),
        1 => (0..3usize, 0..4usize).prop_map(|(user, conn)| Op::Connect { user, conn }),
    ]
}

const USERS: [&str; 3] = ["alice", "bob", "carol"];

fn check(limits: &Limits) {
    let caps = limits.caps();
    if let Some(cap) = limits.streams.cap() {
        assert!(limits.streams.held() <= cap);
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

/// One thread: its own connections and streams, acting on the shared counters.
fn run(limits: Arc<Limits>, ops: Vec<Op>) {
    let users: Vec<_> = USERS.iter().map(|u| limits.user(u)).collect();
    let mut conns: Vec<Option<ConnPermit>> = (0..4).map(|_| None).collect();
    let mut streams: Vec<(usize, StreamPermit)> = Vec::new();
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
                conns[conn] = None;
            }
            Op::Connect { user, conn } => {
                if conns[conn].is_none() {
                    conns[conn] = Limits::acquire_connection(&users[user], true);
                }
            }
        }
        check(&limits);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Four threads race random opens, closes, resets and connection losses: no counter
    /// ever passes its cap, and every counter is back at zero at the end.
    #[test]
    fn counters_stay_within_caps_and_return_to_zero(
        ops in proptest::collection::vec(proptest::collection::vec(op(), 1..400), 4),
        per_user in 1u64..20,
        total in 1u64..40,
        conns in 1u64..4,
    ) {
        let limits = Limits::new(
            Caps {
                streams_per_user: Some(per_user),
                streams: Some(total),
                connections_per_user: Some(conns),
            },
            None,
        );
        let threads: Vec<_> = ops
            .into_iter()
            .map(|ops| {
                let l = limits.clone();
                std::thread::spawn(move || run(l, ops))
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread");
        }
        prop_assert_eq!(limits.streams.held(), 0);
        prop_assert!(limits.streams.peak() <= total);
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
    assert_eq!(limits.streams.cap(), Some(44));
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
