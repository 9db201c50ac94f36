//! Driver tests, run against both drivers (loopback, no root).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::*;

fn drivers() -> Vec<IoKind> {
    vec![IoKind::Epoll, IoKind::Uring]
}

fn open_driver(kind: IoKind, cfg: &DriverConfig) -> Box<dyn Driver> {
    let (sock, _) = sys::bind_udp("127.0.0.1:0".parse().unwrap(), false, 4 << 20).unwrap();
    open(sock, Some(kind), cfg).unwrap_or_else(|e| panic!("{kind} driver: {e}"))
}

/// Collects UDP datagrams (split by stride) until `want` arrived or 5 s passed.
fn collect(d: &mut dyn Driver, want: usize) -> (Vec<Vec<u8>>, Vec<RecvMeta>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut metas = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        d.wait(Some(Duration::from_millis(50))).unwrap();
        d.reap(64, &mut |ev| {
            if let Event::Udp { meta, data } = ev {
                metas.push(meta);
                for seg in data.chunks(meta.stride) {
                    got.push(seg.to_vec());
                }
            }
        });
    }
    (got, metas)
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 7 + j) as u8).collect()
}

/// Sends `count` datagrams of `seg` bytes (the last `last` bytes) in one GSO sendmsg.
fn gso_send(to: SocketAddr, seg: usize, count: usize, last: usize) -> UdpSocket {
    let (tx, _) = sys::bind_udp("127.0.0.1:0".parse().unwrap(), false, 1 << 20).unwrap();
    let cfg = DriverConfig {
        gro: false,
        ..DriverConfig::default()
    };
    let mut d = open(tx.try_clone().unwrap(), Some(IoKind::Epoll), &cfg).unwrap();
    assert!(d.gso_enabled(), "loopback supports GSO");
    let mut buf = Vec::new();
    for i in 0..count {
        buf.extend(payload(i, if i + 1 == count { last } else { seg }));
    }
    d.send(
        TxMeta {
            dest: to,
            src_ip: None,
            ecn: 0,
            segment_size: Some(seg),
        },
        buf,
    );
    d.wait(Some(Duration::ZERO)).unwrap();
    assert_eq!(d.stats().tx_gso_batches, 1);
    tx
}

#[test]
fn gro_batches_are_split_by_stride() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let to = d.local_addr();
        // 10 full segments and a short last one, in one GSO send: GRO hands them back as
        // one (or a few) batches; splitting by the stride must give back all 11 intact.
        let _tx = gso_send(to, 1000, 11, 321);
        let (got, metas) = collect(d.as_mut(), 11);
        assert_eq!(got.len(), 11, "{kind}: datagram count");
        for (i, g) in got.iter().enumerate() {
            let len = if i == 10 { 321 } else { 1000 };
            assert_eq!(g, &payload(i, len), "{kind}: datagram {i}");
        }
        assert!(
            metas.len() < 11,
            "{kind}: GRO coalesced nothing ({} batches)",
            metas.len()
        );
        let s = d.stats();
        assert_eq!(s.rx_datagrams, 11, "{kind}");
        assert!(s.rx_gro_batches >= 1, "{kind}");
        assert_eq!(metas[0].stride, 1000, "{kind}");
        assert_eq!(
            metas[0].dst_ip,
            Some("127.0.0.1".parse().unwrap()),
            "{kind}"
        );
    }
}

#[test]
fn gso_send_and_ecn_arrive() {
    for kind in drivers() {
        let (rx, _) = sys::bind_udp("127.0.0.1:0".parse().unwrap(), false, 4 << 20).unwrap();
        let cfg = DriverConfig {
            gro: false,
            ..DriverConfig::default()
        };
        let mut r = open(rx, Some(IoKind::Epoll), &cfg).unwrap();
        let mut d = open_driver(kind, &DriverConfig::default());
        let mut buf = d.tx_buf();
        for i in 0..5 {
            buf.extend(payload(i, 1200));
        }
        d.send(
            TxMeta {
                dest: r.local_addr(),
                src_ip: Some("127.0.0.1".parse().unwrap()),
                ecn: 0b10,
                segment_size: Some(1200),
            },
            buf,
        );
        d.wait(Some(Duration::ZERO)).unwrap();
        let (got, metas) = collect(r.as_mut(), 5);
        assert_eq!(got.len(), 5, "{kind}");
        assert!(metas.iter().all(|m| m.ecn == 0b10), "{kind}: ECN bits");
        // Let the send completion arrive (io_uring reports it asynchronously).
        d.wait(Some(Duration::from_millis(20))).unwrap();
        d.reap(16, &mut |_| {});
        assert_eq!(d.stats().tx_gso_batches, 1, "{kind}");
        assert_eq!(d.stats().tx_datagrams, 5, "{kind}");
    }
}

#[test]
fn injected_gso_failure_falls_back_to_single_datagrams() {
    for kind in drivers() {
        let (rx, _) = sys::bind_udp("127.0.0.1:0".parse().unwrap(), false, 4 << 20).unwrap();
        let mut r = open(rx, Some(IoKind::Epoll), &DriverConfig::default()).unwrap();
        let cfg = DriverConfig {
            inject_gso_failure: true,
            ..DriverConfig::default()
        };
        let mut d = open_driver(kind, &cfg);
        assert!(d.gso_enabled());
        for round in 0..2 {
            let mut buf = d.tx_buf();
            for i in 0..4 {
                buf.extend(payload(round * 4 + i, 1100));
            }
            d.send(
                TxMeta {
                    dest: r.local_addr(),
                    src_ip: None,
                    ecn: 0,
                    segment_size: Some(1100),
                },
                buf,
            );
            for _ in 0..5 {
                d.wait(Some(Duration::from_millis(10))).unwrap();
                d.reap(16, &mut |_| {});
            }
        }
        let (got, _) = collect(r.as_mut(), 8);
        assert_eq!(got.len(), 8, "{kind}: nothing lost when GSO failed");
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, &payload(i, 1100), "{kind}: datagram {i}");
        }
        assert!(!d.gso_enabled(), "{kind}: GSO switched off");
        assert_eq!(d.stats().gso_disabled, 1, "{kind}");
    }
}

#[test]
fn waker_ends_a_wait() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let w = d.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.wake();
        });
        let start = Instant::now();
        while d.stats().wakeups == 0 && start.elapsed() < Duration::from_secs(5) {
            d.wait(Some(Duration::from_secs(10))).unwrap();
            d.reap(1, &mut |_| {});
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{kind}");
        t.join().unwrap();
        assert!(d.stats().wakeups >= 1, "{kind}");
    }
}

#[test]
fn tcp_connect_send_recv_close() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        d.tcp_connect(addr, 1).unwrap();
        let mut step = 0;
        let mut fd = -1;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut echoed = Vec::new();
        while step < 4 && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(50))).unwrap();
            let mut done = Vec::new();
            d.reap(8, &mut |ev| {
                if let Event::Tcp(c) = ev {
                    done.push(c);
                }
            });
            for c in done {
                match (step, c.op) {
                    (0, TcpOp::Connect) => {
                        fd = c.result.expect("connect") as RawFd;
                        d.tcp_send(fd, b"hello".to_vec(), 2);
                        step = 1;
                    }
                    (1, TcpOp::Send) => {
                        assert_eq!(c.result.unwrap(), 5);
                        d.tcp_recv(fd, Vec::with_capacity(64), 3);
                        step = 2;
                    }
                    (2, TcpOp::Recv) => {
                        let n = c.result.unwrap();
                        echoed.extend_from_slice(&c.buf[..n]);
                        if echoed.len() < 5 {
                            d.tcp_recv(fd, c.buf, 3);
                        } else {
                            d.tcp_close(fd, 4);
                            step = 3;
                        }
                    }
                    (3, TcpOp::Close) => {
                        c.result.unwrap();
                        step = 4;
                    }
                    other => panic!("{kind}: unexpected completion {other:?}"),
                }
            }
        }
        assert_eq!(step, 4, "{kind}: TCP sequence incomplete");
        assert_eq!(echoed, b"hello");
        echo.join().unwrap();
    }
}

#[test]
fn tcp_connect_refused_reports_error() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        // A port nobody listens on: bind and drop a listener to find one.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        d.tcp_connect(addr, 9).unwrap();
        let mut result = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while result.is_none() && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(50))).unwrap();
            d.reap(8, &mut |ev| {
                if let Event::Tcp(c) = ev {
                    result = Some(c.result.map(|_| ()));
                }
            });
        }
        let err = result.expect("completion").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{kind}");
    }
}

#[test]
fn socket_fd_stays_open() {
    let d = open_driver(IoKind::Epoll, &DriverConfig::default());
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.send_to(b"x", d.local_addr()).unwrap();
    assert!(probe.as_raw_fd() > 0);
}

// ---- io_uring-specific tests ----

#[test]
fn uring_receives_10k_datagrams_in_order() {
    const N: u32 = 10_000;
    let cfg = DriverConfig {
        recv_depth: 4,
        ..DriverConfig::default()
    };
    let mut d = open_driver(IoKind::Uring, &cfg);
    let to = d.local_addr();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (mut sent, mut next) = (0u32, 0u32);
    let mut out_of_order = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while next < N && out_of_order.is_none() && Instant::now() < deadline {
        // A window small enough for the receive buffer: loopback drops nothing then.
        while sent < N && sent - next < 64 {
            let mut dgram = sent.to_be_bytes().to_vec();
            dgram.resize(200, sent as u8);
            tx.send_to(&dgram, to).unwrap();
            sent += 1;
        }
        d.wait(Some(Duration::from_millis(50))).unwrap();
        // Fewer batches per reap than receives posted: completions wait for the next call.
        d.reap(3, &mut |ev| {
            if let Event::Udp { meta, data } = ev {
                for seg in data.chunks(meta.stride.max(1)) {
                    let n = u32::from_be_bytes(seg[..4].try_into().unwrap());
                    if n != next && out_of_order.is_none() {
                        out_of_order = Some((next, n));
                    }
                    next += 1;
                }
            }
        });
    }
    assert_eq!(out_of_order, None, "expected, got");
    assert_eq!(next, N, "datagrams received");
    assert_eq!(d.stats().rx_datagrams, N as u64);
    assert_eq!(d.stats().rx_bytes, 200 * N as u64);
}

#[test]
fn uring_can_send_follows_sends_in_flight() {
    let cfg = DriverConfig {
        send_depth: 4,
        ..DriverConfig::default()
    };
    let mut d = open_driver(IoKind::Uring, &cfg);
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let meta = TxMeta {
        dest: rx.local_addr().unwrap(),
        src_ip: None,
        ecn: 0,
        segment_size: None,
    };
    for round in 0..3 {
        for i in 0..4 {
            assert!(d.can_send(), "round {round}: room for send {i}");
            let mut buf = d.tx_buf();
            buf.extend(payload(round * 4 + i, 300));
            d.send(meta, buf);
        }
        assert!(!d.can_send(), "round {round}: send_depth sends in flight");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !d.can_send() && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(20))).unwrap();
            d.reap(16, &mut |_| {});
        }
        assert!(d.can_send(), "round {round}: completions free the slots");
    }
    for i in 0..12 {
        let mut buf = [0u8; 1500];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &payload(i, 300)[..], "datagram {i}");
    }
    let s = d.stats();
    assert_eq!((s.tx_calls, s.tx_datagrams, s.tx_errors), (12, 12, 0));
}

#[test]
fn tcp_close_cancels_pending_recv() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        d.tcp_connect(listener.local_addr().unwrap(), 1).unwrap();
        // Never accepted: the handshake completes in the backlog and nothing is sent.
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !seen.contains(&TcpOp::Close) && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(20))).unwrap();
            let mut done = Vec::new();
            d.reap(8, &mut |ev| {
                if let Event::Tcp(c) = ev {
                    done.push(c);
                }
            });
            for c in done {
                seen.push(c.op);
                match c.op {
                    TcpOp::Connect => {
                        let fd = c.result.expect("connect") as RawFd;
                        // Nothing will arrive: the receive stays pending until the close.
                        d.tcp_recv(fd, Vec::with_capacity(64), 2);
                        d.wait(Some(Duration::from_millis(10))).unwrap();
                        d.tcp_close(fd, 3);
                    }
                    TcpOp::Recv => {
                        let e = c.result.expect_err("cancelled receive");
                        assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{kind}");
                        assert_eq!((c.token, c.buf.capacity() >= 64), (2, true), "{kind}");
                    }
                    TcpOp::Close => assert_eq!(c.result.unwrap(), 0, "{kind}"),
                    TcpOp::Send => panic!("{kind}: unexpected send"),
                }
            }
        }
        assert_eq!(
            seen,
            [TcpOp::Connect, TcpOp::Recv, TcpOp::Close],
            "{kind}: completion order"
        );
    }
}

#[test]
fn uring_drop_with_operations_in_flight() {
    // Dropped before the ring was ever entered (single-issuer rings start disabled).
    drop(open_driver(IoKind::Uring, &DriverConfig::default()));
    // Dropped with receives, a wakeup read and a TCP receive in the kernel.
    let mut d = open_driver(IoKind::Uring, &DriverConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    d.tcp_connect(listener.local_addr().unwrap(), 1).unwrap();
    let mut fd = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while fd.is_none() && Instant::now() < deadline {
        d.wait(Some(Duration::from_millis(20))).unwrap();
        d.reap(8, &mut |ev| {
            if let Event::Tcp(c) = ev {
                fd = c.result.ok().map(|f| f as RawFd);
            }
        });
    }
    let fd = fd.expect("connected");
    d.tcp_recv(fd, Vec::with_capacity(4096), 2);
    d.wait(Some(Duration::ZERO)).unwrap();
    let start = Instant::now();
    drop(d);
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "cancelled, not timed out"
    );
    // SAFETY: the fd came from the Connect completion and nothing else uses it.
    unsafe { libc::close(fd) };
}

#[test]
fn kernel_gso_refusal_falls_back_to_single_datagrams() {
    for kind in drivers() {
        let (rx, _) = sys::bind_udp("127.0.0.1:0".parse().unwrap(), false, 4 << 20).unwrap();
        let mut r = open(rx, Some(IoKind::Epoll), &DriverConfig::default()).unwrap();
        let (sock, _) = sys::bind_udp("127.0.0.1:0".parse().unwrap(), false, 4 << 20).unwrap();
        // Without UDP checksums the kernel refuses GSO with EINVAL (udp_send_skb), which
        // the io_uring driver only learns from the CQE.
        let one: libc::c_int = 1;
        // SAFETY: `one` outlives the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_NO_CHECK");
        let mut d = open(sock, Some(kind), &DriverConfig::default()).unwrap();
        assert!(d.gso_enabled(), "{kind}");
        let mut buf = d.tx_buf();
        for i in 0..70 {
            buf.extend(payload(i, 100));
        }
        d.send(
            TxMeta {
                dest: r.local_addr(),
                src_ip: None,
                ecn: 0,
                segment_size: Some(100),
            },
            buf,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.stats().tx_datagrams < 70 && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(10))).unwrap();
            d.reap(16, &mut |_| {});
        }
        let (got, _) = collect(r.as_mut(), 70);
        assert_eq!(
            got.len(),
            70,
            "{kind}: nothing lost when the kernel refused GSO"
        );
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, &payload(i, 100), "{kind}: datagram {i}");
        }
        let s = d.stats();
        assert!(!d.gso_enabled(), "{kind}: GSO switched off");
        assert_eq!((s.gso_disabled, s.tx_errors), (1, 0), "{kind}");
        assert_eq!((s.tx_calls, s.tx_gso_batches), (70, 0), "{kind}");
    }
}
