//! Driver tests, run against both drivers (loopback, no root).

use std::collections::HashSet;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;

/// A token with id `id` (the engine never looks at the kind).
fn tok(id: u64) -> Token {
    Token::new(0, id)
}

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
            if let Event::Udp { meta, rx } = ev {
                metas.push(meta);
                for seg in rx.data.chunks(meta.stride) {
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
        d.tcp_connect(addr, &Egress::default(), tok(1)).unwrap();
        let mut step = 0;
        let mut fd = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut echoed = Vec::new();
        while step < 4 && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(50))).unwrap();
            let mut done = Vec::new();
            d.reap(8, &mut |ev| {
                if let Event::Sock(c) = ev {
                    done.push(c);
                }
            });
            for c in done {
                match (step, c.op) {
                    (0, SockOp::Connect) => {
                        c.result.expect("connect");
                        fd = Some(c.sock);
                        d.tcp_send(c.sock, b"hello".to_vec(), tok(2));
                        step = 1;
                    }
                    (1, SockOp::Send) => {
                        assert_eq!(c.result.unwrap(), 5);
                        d.tcp_recv(fd.unwrap(), Vec::with_capacity(64), tok(3));
                        step = 2;
                    }
                    (2, SockOp::Recv) => {
                        let n = c.result.unwrap();
                        echoed.extend_from_slice(&c.buf[..n]);
                        if echoed.len() < 5 {
                            d.tcp_recv(fd.unwrap(), c.buf, tok(3));
                        } else {
                            d.sock_close(fd.unwrap(), tok(4));
                            step = 3;
                        }
                    }
                    (3, SockOp::Close) => {
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
        d.tcp_connect(addr, &Egress::default(), tok(9)).unwrap();
        let mut result = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while result.is_none() && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(50))).unwrap();
            d.reap(8, &mut |ev| {
                if let Event::Sock(c) = ev {
                    result = Some(c.result.map(|_| ()));
                }
            });
        }
        let err = result.expect("completion").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{kind}");
    }
}

/// The kernel inode behind `sock`, as /proc names it (`socket:[N]`).
fn fd_link(sock: Sock) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", sock.fd())).ok()
}

#[test]
fn closing_a_pending_connect_cancels_it_and_frees_the_socket() {
    // A listener whose accept queue is full drops further SYNs: a target that never answers.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let fillers: Vec<_> = (0..4)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    assert!(!fillers.is_empty(), "could not fill the accept queue");
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let fd = d.tcp_connect(addr, &Egress::default(), tok(5)).unwrap();
        let sock = fd_link(fd).expect("the connecting socket");
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            d.wait(Some(Duration::from_millis(50))).unwrap();
            d.reap(8, &mut |ev| {
                if let Event::Sock(c) = ev {
                    seen.push((c.op, c.result.map_err(|e| e.raw_os_error())));
                }
            });
        }
        assert!(
            seen.is_empty(),
            "{kind}: the connect did not hang: {seen:?}"
        );
        d.sock_close(fd, tok(6));
        let deadline = Instant::now() + Duration::from_secs(1);
        while seen.len() < 2 && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(20))).unwrap();
            d.reap(8, &mut |ev| {
                if let Event::Sock(c) = ev {
                    seen.push((c.op, c.result.map_err(|e| e.raw_os_error())));
                }
            });
        }
        assert_eq!(
            seen,
            vec![
                (SockOp::Connect, Err(Some(libc::ECANCELED))),
                (SockOp::Close, Ok(0)),
            ],
            "{kind}"
        );
        assert_ne!(fd_link(fd), Some(sock), "{kind}: the socket is still open");
    }
    drop(fillers);
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
            if let Event::Udp { meta, rx } = ev {
                for seg in rx.data.chunks(meta.stride.max(1)) {
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
        d.tcp_connect(listener.local_addr().unwrap(), &Egress::default(), tok(1))
            .unwrap();
        // Never accepted: the handshake completes in the backlog and nothing is sent.
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !seen.contains(&SockOp::Close) && Instant::now() < deadline {
            d.wait(Some(Duration::from_millis(20))).unwrap();
            let mut done = Vec::new();
            d.reap(8, &mut |ev| {
                if let Event::Sock(c) = ev {
                    done.push(c);
                }
            });
            for c in done {
                seen.push(c.op);
                match c.op {
                    SockOp::Connect => {
                        c.result.expect("connect");
                        let fd = c.sock;
                        // Nothing will arrive: the receive stays pending until the close.
                        d.tcp_recv(fd, Vec::with_capacity(64), tok(2));
                        d.wait(Some(Duration::from_millis(10))).unwrap();
                        d.sock_close(fd, tok(3));
                    }
                    SockOp::Recv => {
                        let e = c.result.expect_err("cancelled receive");
                        assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{kind}");
                        assert_eq!((c.token.id(), c.buf.capacity() >= 64), (2, true), "{kind}");
                    }
                    SockOp::Close => assert_eq!(c.result.unwrap(), 0, "{kind}"),
                    other => panic!("{kind}: unexpected {other:?}"),
                }
            }
        }
        assert_eq!(
            seen,
            [SockOp::Connect, SockOp::Recv, SockOp::Close],
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
    d.tcp_connect(listener.local_addr().unwrap(), &Egress::default(), tok(1))
        .unwrap();
    let mut fd = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while fd.is_none() && Instant::now() < deadline {
        d.wait(Some(Duration::from_millis(20))).unwrap();
        d.reap(8, &mut |ev| {
            if let Event::Sock(c) = ev {
                fd = c.result.is_ok().then_some(c.sock);
            }
        });
    }
    let fd = fd.expect("connected");
    d.tcp_recv(fd, Vec::with_capacity(4096), tok(2));
    d.wait(Some(Duration::ZERO)).unwrap();
    let start = Instant::now();
    drop(d);
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "cancelled, not timed out"
    );
    // SAFETY: the fd came from the Connect completion and nothing else uses it.
    unsafe { libc::close(fd.fd()) };
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

// ---- UDP session sockets ----

/// A std UDP echo on its own thread; reports the source of every datagram it echoes.
struct Echo {
    addr: SocketAddr,
    seen: mpsc::Receiver<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn bind(addr: &str) -> Echo {
        let sock = UdpSocket::bind(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, seen) = mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                    let _ = tx.send(from);
                }
            }
        });
        Echo {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether this host has IPv6 loopback.
fn have_ipv6() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

/// The local address of a socket the driver owns.
fn sock_name(sock: Sock) -> SocketAddr {
    // SAFETY: borrows the driver's fd; ManuallyDrop never closes it.
    let s = ManuallyDrop::new(unsafe { UdpSocket::from_raw_fd(sock.fd()) });
    s.local_addr().unwrap()
}

/// Runs `d` for up to 5 s, handing `on` each socket completion until it returns true.
fn drive(d: &mut dyn Driver, mut on: impl FnMut(&mut dyn Driver, Completion) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        d.wait(Some(Duration::from_millis(20))).unwrap();
        let mut done = Vec::new();
        d.reap(8, &mut |ev| {
            if let Event::Sock(c) = ev {
                done.push(c);
            }
        });
        for c in done {
            if on(d, c) {
                return true;
            }
        }
    }
    false
}

/// Closes `fd` and checks the Close completion.
fn close_session(kind: IoKind, d: &mut dyn Driver, fd: Sock) {
    d.sock_close(fd, tok(99));
    let closed = drive(d, |_, c| {
        assert_eq!(
            (c.op, c.token.id(), c.sock),
            (SockOp::Close, 99, fd),
            "{kind}"
        );
        assert!(c.accepted.is_none(), "{kind}");
        assert_eq!(c.result.unwrap(), 0, "{kind}");
        true
    });
    assert!(closed, "{kind}: close completes");
}

#[test]
fn udp_session_round_trip_reports_peer() {
    // (session bind, echo bind): IPv4, IPv6, and IPv4 from a dual-stack socket.
    let cases = [
        ("0.0.0.0:0", "127.0.0.1:0"),
        ("[::]:0", "[::1]:0"),
        ("[::]:0", "127.0.0.1:0"),
    ];
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        for (bind, echo_bind) in cases {
            if bind.starts_with('[') && !have_ipv6() {
                eprintln!("{kind}: no IPv6 loopback; skipping {bind} -> {echo_bind}");
                continue;
            }
            let echo = Echo::bind(echo_bind);
            let fd = d.udp_open(bind.parse().unwrap(), None).unwrap();
            let local = sock_name(fd);
            assert_ne!(local.port(), 0, "{kind}: ephemeral port");
            d.udp_recv_from(fd, Vec::with_capacity(2048), tok(1));
            d.udp_send_to(fd, echo.addr, b"ping".to_vec(), tok(2));
            let mut seen = Vec::new();
            let done = drive(d.as_mut(), |_, c| {
                assert_eq!(c.sock, fd, "{kind}");
                match c.op {
                    SockOp::SendTo => {
                        assert_eq!((c.token.id(), c.result.unwrap(), c.peer), (2, 4, None));
                    }
                    SockOp::RecvFrom => {
                        assert_eq!((c.token.id(), c.result.unwrap()), (1, 4), "{kind}");
                        assert_eq!(c.buf, b"ping", "{kind}");
                        // An IPv4 peer of a dual-stack socket comes back as IPv4.
                        assert_eq!(c.peer, Some(echo.addr), "{kind} {bind}");
                    }
                    other => panic!("{kind}: unexpected {other:?}"),
                }
                seen.push(c.op);
                seen.len() == 2
            });
            assert!(done, "{kind} {bind} -> {echo_bind}: round trip ({seen:?})");
            let from = echo.seen.recv_timeout(Duration::from_secs(1)).unwrap();
            assert_eq!(from.port(), local.port(), "{kind}: echo saw our socket");
            close_session(kind, d.as_mut(), fd);
        }
    }
}

#[test]
fn udp_session_is_full_cone() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let (a, b) = (Echo::bind("127.0.0.1:0"), Echo::bind("127.0.0.1:0"));
        let fd = d.udp_open("0.0.0.0:0".parse().unwrap(), None).unwrap();
        for token in [1, 2] {
            d.udp_recv_from(fd, Vec::with_capacity(2048), tok(token));
        }
        d.udp_send_to(fd, a.addr, b"to a".to_vec(), tok(3));
        d.udp_send_to(fd, b.addr, b"to b".to_vec(), tok(4));
        let mut replies = Vec::new();
        let mut sent = 0;
        let done = drive(d.as_mut(), |_, c| {
            match c.op {
                SockOp::SendTo => {
                    assert_eq!(c.result.unwrap(), 4, "{kind}");
                    sent += 1;
                }
                SockOp::RecvFrom => {
                    c.result.as_ref().unwrap();
                    replies.push((c.peer.unwrap(), c.buf));
                }
                other => panic!("{kind}: unexpected {other:?}"),
            }
            sent == 2 && replies.len() == 2
        });
        assert!(done, "{kind}: both replies ({replies:?})");
        replies.sort();
        let mut want = vec![(a.addr, b"to a".to_vec()), (b.addr, b"to b".to_vec())];
        want.sort();
        assert_eq!(replies, want, "{kind}");
        // One mapping for every destination: both saw the same source.
        let seen_a = a.seen.recv_timeout(Duration::from_secs(1)).unwrap();
        let seen_b = b.seen.recv_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!(seen_a, seen_b, "{kind}");
        assert_eq!(seen_a.port(), sock_name(fd).port(), "{kind}");
        close_session(kind, d.as_mut(), fd);
    }
}

#[test]
fn udp_session_close_cancels_pending_recv() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let fd = d.udp_open("127.0.0.1:0".parse().unwrap(), None).unwrap();
        // Nothing will arrive: the receive stays pending until the close.
        d.udp_recv_from(fd, Vec::with_capacity(1500), tok(7));
        d.wait(Some(Duration::from_millis(10))).unwrap();
        d.reap(8, &mut |ev| {
            if let Event::Sock(c) = ev {
                panic!("{kind}: early completion {c:?}");
            }
        });
        d.sock_close(fd, tok(8));
        let mut seen = Vec::new();
        drive(d.as_mut(), |_, c| {
            match c.op {
                SockOp::RecvFrom => {
                    let e = c.result.expect_err("cancelled receive");
                    assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{kind}");
                    assert_eq!((c.token.id(), c.peer), (7, None), "{kind}");
                    assert!(c.buf.capacity() >= 1500, "{kind}: buffer returned");
                }
                SockOp::Close => assert_eq!((c.token.id(), c.result.unwrap()), (8, 0), "{kind}"),
                other => panic!("{kind}: unexpected {other:?}"),
            }
            seen.push(c.op);
            c.op == SockOp::Close
        });
        assert_eq!(
            seen,
            [SockOp::RecvFrom, SockOp::Close],
            "{kind}: completion order"
        );
    }
}

#[test]
fn udp_session_errors_are_completions() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let fd = d.udp_open("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let to = sock_name(fd);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Longer than the buffer: reported, not silently cut.
        tx.send_to(&[7u8; 100], to).unwrap();
        d.udp_recv_from(fd, Vec::with_capacity(10), tok(1));
        // An IPv6 destination from an IPv4 socket: the kernel refuses it.
        d.udp_send_to(fd, "[::1]:9".parse().unwrap(), vec![0; 8], tok(2));
        let mut errors = Vec::new();
        drive(d.as_mut(), |_, c| {
            errors.push((c.op, c.result.map_err(|e| e.raw_os_error())));
            errors.len() == 2
        });
        errors.sort_by_key(|(op, _)| *op as u8);
        assert_eq!(errors.len(), 2, "{kind}: {errors:?}");
        assert_eq!(
            errors[0],
            (SockOp::RecvFrom, Err(Some(libc::EMSGSIZE))),
            "{kind}"
        );
        assert_eq!(errors[1].0, SockOp::SendTo, "{kind}");
        assert!(errors[1].1.is_err(), "{kind}: {:?}", errors[1]);
        close_session(kind, d.as_mut(), fd);
    }
}

#[test]
fn udp_session_1000_datagrams_round_trip() {
    const N: u32 = 1000;
    /// Datagrams on the way at once: well inside the echo's receive buffer.
    const WINDOW: u32 = 64;
    const RECVS: u64 = 16;
    let dgram = |n: u32| {
        let mut v = n.to_be_bytes().to_vec();
        v.resize(4 + (n as usize * 37) % 1200, n as u8);
        v
    };
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let echo = Echo::bind("127.0.0.1:0");
        let fd = d.udp_open("0.0.0.0:0".parse().unwrap(), None).unwrap();
        for t in 0..RECVS {
            d.udp_recv_from(fd, Vec::with_capacity(2048), tok(t));
        }
        let mut got = HashSet::new();
        let (mut sent, mut send_done) = (0u32, 0u32);
        let deadline = Instant::now() + Duration::from_secs(20);
        while (got.len() < N as usize || send_done < N) && Instant::now() < deadline {
            while sent < N && sent - (got.len() as u32) < WINDOW {
                d.udp_send_to(fd, echo.addr, dgram(sent), tok(1000 + sent as u64));
                sent += 1;
            }
            d.wait(Some(Duration::from_millis(20))).unwrap();
            let mut done = Vec::new();
            d.reap(8, &mut |ev| {
                if let Event::Sock(c) = ev {
                    done.push(c);
                }
            });
            for c in done {
                match c.op {
                    SockOp::SendTo => {
                        let n = (c.token.id() - 1000) as u32;
                        assert_eq!(c.result.unwrap(), dgram(n).len(), "{kind}: send {n}");
                        send_done += 1;
                    }
                    SockOp::RecvFrom => {
                        let len = c.result.unwrap();
                        assert_eq!(c.peer, Some(echo.addr), "{kind}");
                        let n = u32::from_be_bytes(c.buf[..4].try_into().unwrap());
                        assert_eq!(c.buf[..len], dgram(n)[..], "{kind}: datagram {n}");
                        assert!(got.insert(n), "{kind}: datagram {n} twice");
                        d.udp_recv_from(fd, c.buf, c.token);
                    }
                    other => panic!("{kind}: unexpected {other:?}"),
                }
            }
        }
        assert_eq!(send_done, N, "{kind}: sends completed");
        assert_eq!(
            got,
            (0..N).collect::<HashSet<_>>(),
            "{kind}: every datagram back"
        );
        // The receives still posted are cancelled by the close.
        d.sock_close(fd, tok(99));
        let mut cancelled = 0;
        let closed = drive(d.as_mut(), |_, c| {
            if c.op == SockOp::RecvFrom {
                assert_eq!(
                    c.result.unwrap_err().raw_os_error(),
                    Some(libc::ECANCELED),
                    "{kind}"
                );
                cancelled += 1;
            }
            c.op == SockOp::Close
        });
        assert!(closed, "{kind}: closed");
        assert_eq!(cancelled, RECVS, "{kind}: pending receives cancelled");
    }
}

#[test]
fn udp_session_sockets_close_with_the_driver() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let fd = d.udp_open("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let local = sock_name(fd);
        // A receive in the kernel when the driver goes.
        d.udp_recv_from(fd, Vec::with_capacity(1500), tok(1));
        d.wait(Some(Duration::ZERO)).unwrap();
        drop(d);
        // The port is free again: the driver closed the socket it owned.
        UdpSocket::bind(local).unwrap_or_else(|e| panic!("{kind}: {local} still bound: {e}"));
    }
}

// ---- adopted sockets: TCP listeners and UDP sockets bound elsewhere ----

/// Adopts a std listener on 127.0.0.1: its socket and address.
fn adopt_listener(d: &mut dyn Driver) -> (Sock, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (d.adopt(OwnedFd::from(listener)).unwrap(), addr)
}

#[test]
fn tcp_accept_echo() {
    use std::io::{Read, Write};
    const LEN: usize = 10_000;
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let (lfd, addr) = adopt_listener(d.as_mut());
        d.tcp_accept(lfd, tok(1));
        let mut client = TcpStream::connect(addr).unwrap();
        let mut accepted = None;
        let done = drive(d.as_mut(), |_, c| {
            assert_eq!(
                (c.op, c.token.id(), c.sock),
                (SockOp::Accept, 1, lfd),
                "{kind}"
            );
            assert_eq!(c.result.expect("accept"), 0, "{kind}");
            accepted = Some((c.accepted.expect("accepted socket"), c.peer));
            true
        });
        assert!(done, "{kind}: accepted");
        let (fd, peer) = accepted.unwrap();
        assert_eq!(peer, Some(client.local_addr().unwrap()), "{kind}: peer");
        // SAFETY: borrows the driver's fd; ManuallyDrop never closes it.
        let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd.fd()) });
        assert!(s.nodelay().unwrap(), "{kind}: TCP_NODELAY");
        // The driver echoes what it reads, one receive or send at a time.
        let data = payload(3, LEN);
        client.write_all(&data).unwrap();
        d.tcp_recv(fd, Vec::with_capacity(4096), tok(2));
        let mut echoed = 0;
        let done = drive(d.as_mut(), |d, c| {
            assert_eq!(c.sock, fd, "{kind}");
            let n = c.result.unwrap();
            match c.op {
                SockOp::Recv => d.tcp_send(fd, c.buf, tok(3)),
                SockOp::Send if n < c.buf.len() => d.tcp_send(fd, c.buf[n..].to_vec(), tok(3)),
                SockOp::Send => {
                    echoed += n;
                    d.tcp_recv(fd, c.buf, tok(2));
                }
                other => panic!("{kind}: unexpected {other:?}"),
            }
            echoed == LEN
        });
        assert!(done, "{kind}: echoed {echoed} of {LEN}");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut back = vec![0u8; LEN];
        client.read_exact(&mut back).unwrap();
        assert!(back == data, "{kind}: echo intact");
        // The receive still posted is cancelled by the close.
        d.sock_close(fd, tok(98));
        let closed = drive(d.as_mut(), |_, c| c.op == SockOp::Close);
        assert!(closed, "{kind}");
        assert_eq!(client.read(&mut back).unwrap(), 0, "{kind}: EOF");
        close_session(kind, d.as_mut(), lfd);
    }
}

#[test]
fn tcp_two_accepts_pending() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let (lfd, addr) = adopt_listener(d.as_mut());
        d.tcp_accept(lfd, tok(1));
        d.tcp_accept(lfd, tok(2));
        d.wait(Some(Duration::from_millis(10))).unwrap();
        let clients = [addr; 2].map(|a| TcpStream::connect(a).unwrap());
        let mut got = Vec::new();
        let done = drive(d.as_mut(), |_, c| {
            assert_eq!((c.op, c.sock), (SockOp::Accept, lfd), "{kind}");
            c.result.expect("accept");
            let accepted = c.accepted.expect("accepted socket");
            got.push((c.token.id(), accepted, c.peer.unwrap()));
            got.len() == 2
        });
        assert!(done, "{kind}: both accepted ({got:?})");
        let mut tokens: Vec<u64> = got.iter().map(|g| g.0).collect();
        let mut peers: Vec<SocketAddr> = got.iter().map(|g| g.2).collect();
        let mut want: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        tokens.sort();
        peers.sort();
        want.sort();
        assert_eq!((tokens, peers), (vec![1, 2], want), "{kind}");
        for (_, fd, _) in got {
            close_session(kind, d.as_mut(), fd);
        }
        close_session(kind, d.as_mut(), lfd);
    }
}

#[test]
fn tcp_close_cancels_pending_accept() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let (lfd, addr) = adopt_listener(d.as_mut());
        // Nobody connects: the accept stays pending until the close.
        d.tcp_accept(lfd, tok(1));
        d.wait(Some(Duration::from_millis(10))).unwrap();
        d.reap(8, &mut |ev| {
            if let Event::Sock(c) = ev {
                panic!("{kind}: early completion {c:?}");
            }
        });
        d.sock_close(lfd, tok(2));
        let mut seen = Vec::new();
        drive(d.as_mut(), |_, c| {
            match c.op {
                SockOp::Accept => {
                    let e = c.result.expect_err("cancelled accept");
                    assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{kind}");
                    assert_eq!((c.token.id(), c.peer), (1, None), "{kind}");
                }
                SockOp::Close => assert_eq!((c.token.id(), c.result.unwrap()), (2, 0), "{kind}"),
                other => panic!("{kind}: unexpected {other:?}"),
            }
            seen.push(c.op);
            c.op == SockOp::Close
        });
        assert_eq!(seen, [SockOp::Accept, SockOp::Close], "{kind}: order");
        let e = TcpStream::connect(addr).expect_err("listener closed");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{kind}");
    }
}

#[test]
fn udp_adopted_socket_round_trip() {
    // (adopted socket's bind, echo bind): IPv4, and IPv4 from a dual-stack socket.
    let cases = [("127.0.0.1:0", "127.0.0.1:0"), ("[::]:0", "127.0.0.1:0")];
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        for (bind, echo_bind) in cases {
            if bind.starts_with('[') && !have_ipv6() {
                eprintln!("{kind}: no IPv6 loopback; skipping {bind} -> {echo_bind}");
                continue;
            }
            let echo = Echo::bind(echo_bind);
            let sock = UdpSocket::bind(bind).unwrap();
            let local = sock.local_addr().unwrap();
            let fd = d.adopt(OwnedFd::from(sock)).unwrap();
            // Posted first: a socket left blocking would hang the epoll driver here.
            d.udp_recv_from(fd, Vec::with_capacity(2048), tok(1));
            d.udp_send_to(fd, echo.addr, b"ping".to_vec(), tok(2));
            let mut seen = Vec::new();
            let done = drive(d.as_mut(), |_, c| {
                assert_eq!(c.sock, fd, "{kind}");
                match c.op {
                    SockOp::SendTo => assert_eq!((c.token.id(), c.result.unwrap()), (2, 4)),
                    SockOp::RecvFrom => {
                        assert_eq!((c.token.id(), c.result.unwrap()), (1, 4), "{kind}");
                        assert_eq!(c.buf, b"ping", "{kind}");
                        assert_eq!(c.peer, Some(echo.addr), "{kind} {bind}");
                    }
                    other => panic!("{kind}: unexpected {other:?}"),
                }
                seen.push(c.op);
                seen.len() == 2
            });
            assert!(done, "{kind} {bind}: round trip ({seen:?})");
            let from = echo.seen.recv_timeout(Duration::from_secs(1)).unwrap();
            assert_eq!(
                from.port(),
                local.port(),
                "{kind}: echo saw the adopted socket"
            );
            close_session(kind, d.as_mut(), fd);
        }
    }
}

#[test]
fn adopted_sockets_close_with_the_driver() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let (lfd, addr) = adopt_listener(d.as_mut());
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = udp.local_addr().unwrap();
        d.adopt(OwnedFd::from(udp)).unwrap();
        d.tcp_accept(lfd, tok(1));
        d.wait(Some(Duration::ZERO)).unwrap();
        drop(d);
        // The ports are free again: the driver closed the sockets it owned.
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("{kind}: {addr} still bound: {e}"));
        UdpSocket::bind(local).unwrap_or_else(|e| panic!("{kind}: {local} still bound: {e}"));
    }
}

/// Fills `len` bytes of the room with `byte`, as the kernel would.
fn receive_into(b: &mut RxBuf, len: usize, byte: u8) -> RxData {
    let (ptr, room) = b.room();
    assert!(room >= len);
    // SAFETY: `room` bytes at `ptr` are ours until `take`.
    unsafe {
        std::ptr::write_bytes(ptr, byte, len);
        b.take(len)
    }
}

#[test]
fn rx_buffers_are_reused_once_released_and_copied_when_pinned() {
    let mut b = RxBuf::default();
    // Released at once (ACKs): every receive reuses the first allocation.
    let first = receive_into(&mut b, 1200, 1);
    let base = first.data.as_ptr();
    drop(first);
    for i in 0..10 {
        let rx = receive_into(&mut b, 1200, i);
        assert!(!rx.copy);
        assert_eq!(
            rx.data.as_ptr(),
            base,
            "receive {i} did not reuse the allocation"
        );
        assert!(rx.data.iter().all(|&x| x == i));
    }
    // Held downstream: a new allocation each time, up to the pinned limit...
    let mut held = Vec::new();
    for i in 0..=RX_PINNED_MAX {
        let mut rx = receive_into(&mut b, 1200, i as u8);
        assert!(!rx.copy, "receive {i} copied before the limit");
        held.push(rx.data.split_to(10));
    }
    // ...then receives go to scratch and ask for a copy.
    let rx = receive_into(&mut b, 1200, 9);
    assert!(rx.copy);
    drop(rx);
    let rx = receive_into(&mut b, 1200, 9);
    assert!(rx.copy);
    drop(rx);
    // Released again: back to zero-copy on a pinned allocation.
    held.truncate(2);
    let rx = receive_into(&mut b, 1200, 7);
    assert!(!rx.copy);
    assert!(rx.data.iter().all(|&x| x == 7));
}

#[test]
fn tokens_keep_kind_and_id_apart() {
    for (kind, id) in [(0, 0), (Token::KINDS - 1, Token::ID_MAX), (3, 42)] {
        let t = Token::new(kind, id);
        assert_eq!((t.kind(), t.id()), (kind, id));
    }
    assert_ne!(Token::new(1, 5), Token::new(2, 5));
    assert_eq!(format!("{:?}", Token::new(2, 5)), "Token(2:5)");
}

#[test]
#[should_panic(expected = "token kind out of range")]
fn token_kind_out_of_range_is_a_bug() {
    let _ = Token::new(Token::KINDS, 0);
}

/// Sends one datagram `tag` from the driver to `to`.
fn send_one(d: &mut dyn Driver, to: SocketAddr, tag: u8) {
    let mut buf = d.tx_buf();
    buf.push(tag);
    d.send(
        TxMeta {
            dest: to,
            src_ip: None,
            ecn: 0,
            segment_size: None,
        },
        buf,
    );
    d.wait(Some(Duration::ZERO)).unwrap();
}

#[test]
fn rebind_sends_from_the_new_port_and_receives_on_both() {
    for kind in drivers() {
        let mut d = open_driver(kind, &DriverConfig::default());
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let from = |tag: u8| {
            let mut b = [0u8; 16];
            let (n, src) = peer.recv_from(&mut b).unwrap();
            assert_eq!(&b[..n], &[tag], "{kind}");
            src
        };
        send_one(d.as_mut(), peer.local_addr().unwrap(), 1);
        let first = from(1);
        let bind = |_| {
            sys::bind_udp("127.0.0.1:0".parse().unwrap(), false, 1 << 20)
                .unwrap()
                .0
        };
        d.rebind(bind(())).unwrap();
        send_one(d.as_mut(), peer.local_addr().unwrap(), 2);
        let second = from(2);
        assert_ne!(first.port(), second.port(), "{kind}: a new source port");
        assert_eq!(d.local_addr(), second, "{kind}");
        // Both ports receive.
        peer.send_to(&[3], first).unwrap();
        peer.send_to(&[4], second).unwrap();
        let (got, _) = collect(d.as_mut(), 2);
        let mut got: Vec<u8> = got.concat();
        got.sort();
        assert_eq!(
            got,
            vec![3, 4],
            "{kind}: the previous and the current socket"
        );
        // The next hop closes the first socket; the second still receives.
        d.rebind(bind(())).unwrap();
        send_one(d.as_mut(), peer.local_addr().unwrap(), 5);
        let third = from(5);
        assert!(third != first && third != second, "{kind}");
        // The first port is closed (io_uring: once the cancelled receives let go of it):
        // binding it again succeeds.
        let deadline = Instant::now() + Duration::from_secs(2);
        let again = loop {
            let r = UdpSocket::bind(first);
            if r.is_ok() || Instant::now() > deadline {
                break r;
            }
            d.wait(Some(Duration::from_millis(10))).unwrap();
            d.reap(16, &mut |_| {});
        };
        assert!(
            again.is_ok(),
            "{kind}: the first socket was closed ({again:?})"
        );
        drop(again);
        peer.send_to(&[6], second).unwrap();
        peer.send_to(&[7], third).unwrap();
        let (got, _) = collect(d.as_mut(), 2);
        let mut got: Vec<u8> = got.concat();
        got.sort();
        assert_eq!(got, vec![6, 7], "{kind}");
        // A socket of the other family is refused.
        if have_ipv6() {
            let v6 = sys::bind_udp("[::1]:0".parse().unwrap(), false, 1 << 20)
                .unwrap()
                .0;
            assert!(d.rebind(v6).is_err(), "{kind}");
        }
    }
}

/// `quic.sockopts`: the device and the mark reach the socket; a device that does not exist
/// fails the bind, naming it.
#[test]
fn socket_options_reach_the_socket_or_fail_naming_the_option() {
    let opts = SockOpts {
        device: Some("lo".into()),
        mark: Some(77),
    };
    let (sock, _) = bind_udp_with("127.0.0.1:0".parse().unwrap(), false, 1 << 20, &opts)
        .expect("bind with SO_BINDTODEVICE lo and SO_MARK 77 (needs CAP_NET_ADMIN)");
    let s = socket2::SockRef::from(&sock);
    assert_eq!(s.mark().unwrap(), 77);
    assert_eq!(s.device().unwrap().as_deref(), Some(&b"lo"[..]));

    let missing = SockOpts {
        device: Some("nosuch0".into()),
        mark: None,
    };
    let e = bind_udp_with("127.0.0.1:0".parse().unwrap(), false, 1 << 20, &missing)
        .expect_err("no interface nosuch0");
    assert!(
        e.to_string()
            .contains("failed to bind to interface nosuch0"),
        "{e}"
    );
}
