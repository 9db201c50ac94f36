//! The engine end to end, in process, on loopback: a worker group serving the raw QUIC
//! workload and a load client with byte-exact content checks.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quelay::engine::{DriverConfig, IoKind};
use quelay_bench::echo::{self, EchoOptions, EchoServer, Steering};
use quelay_bench::run::{self, LoadOptions, LoadReport};
use quelay_bench::Mode;

fn server(io: IoKind, steering: Steering, driver: DriverConfig) -> EchoServer {
    let opts = EchoOptions {
        workers: 2,
        io: Some(io),
        driver,
        steering,
        // The CI machine has two cores; pinning both groups to them is fine but
        // unnecessary for correctness.
        pin: false,
        ..EchoOptions::default()
    };
    echo::start(&opts).expect("echo server starts")
}

fn load(
    to: SocketAddr,
    io: IoKind,
    mode: Mode,
    conns: usize,
    streams: usize,
    bytes: u64,
) -> LoadReport {
    let mut o = LoadOptions::new(to);
    o.io = Some(io);
    o.mode = mode;
    o.connections = conns;
    o.streams = streams;
    o.bytes = bytes;
    o.workers = 2;
    o.timeout = Duration::from_secs(120);
    run::run(&o).expect("load client runs")
}

/// No errors, `streams` streams completed, `bytes` payload bytes received and checked.
fn assert_clean(r: &LoadReport, streams: u64, bytes: u64) {
    assert!(
        r.ok(),
        "errors: {} (timed out: {}): {:?}",
        r.errors,
        r.timed_out,
        r.messages
    );
    assert_eq!(r.streams_done, streams, "streams completed");
    assert_eq!(r.bytes_received, bytes, "bytes received and checked");
}

fn many_streams(io: IoKind) {
    let srv = server(io, Steering::Bpf, DriverConfig::default());
    assert!(srv.bpf_steering, "CID steering attached and self-tested");
    let per_stream = 16 * 1024;
    let r = load(srv.addr, io, Mode::Echo, 64, 16, per_stream);
    assert_clean(&r, 64 * 16, 64 * 16 * per_stream);
    let t = srv.group.totals();
    assert_eq!(t.connections_total, 64);
    assert!(
        srv.group.shared.io_kinds.iter().all(|k| *k == io),
        "{:?}",
        srv.group.shared.io_kinds
    );
    // Kernel steering by CID: no packet of an established connection needed forwarding
    // (handshake Initials with a client-chosen DCID may).
    assert!(t.forwarded_out <= 64, "forwarded {}", t.forwarded_out);
    srv.group.stop();
    srv.group.join().unwrap();
}

#[test]
fn sixty_four_connections_by_sixteen_streams_io_uring() {
    many_streams(IoKind::Uring);
}

#[test]
fn sixty_four_connections_by_sixteen_streams_epoll() {
    many_streams(IoKind::Epoll);
}

#[test]
fn bulk_upload_and_download_are_byte_exact() {
    let srv = server(IoKind::Uring, Steering::Bpf, DriverConfig::default());
    let r = load(srv.addr, IoKind::Uring, Mode::Download, 1, 1, 64 << 20);
    assert_clean(&r, 1, 64 << 20);
    let r = load(srv.addr, IoKind::Uring, Mode::Upload, 1, 1, 64 << 20);
    // The server answers an upload with its byte count, which the client checks.
    assert_clean(&r, 1, 0);
    assert_eq!(r.bytes_sent, 64 << 20);
    let t = srv.group.totals();
    assert!(t.tx_gso_batches > 0, "server sent GSO batches");
    assert!(t.rx_gro_batches > 0, "server received GRO batches");
    srv.group.stop();
    srv.group.join().unwrap();
}

#[test]
fn forced_gso_failure_keeps_the_connection() {
    let driver = DriverConfig {
        inject_gso_failure: true,
        ..DriverConfig::default()
    };
    for io in [IoKind::Uring, IoKind::Epoll] {
        let srv = server(io, Steering::Bpf, driver.clone());
        let r = load(srv.addr, io, Mode::Download, 2, 2, 4 << 20);
        assert_clean(&r, 4, 16 << 20);
        let t = srv.group.totals();
        assert!(t.gso_disabled >= 1, "{io}: GSO switched off on a worker");
        srv.group.stop();
        srv.group.join().unwrap();
    }
}

/// A NAT in front of the client: it relays between the client and the server from an
/// upstream socket it replaces on demand, so the server sees the client's source port
/// change mid-connection.
struct Nat {
    addr: SocketAddr,
    rebinds: Arc<AtomicU64>,
    rebind: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Nat {
    fn start(server: SocketAddr) -> Nat {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        front.set_nonblocking(true).unwrap();
        let addr = front.local_addr().unwrap();
        let rebinds = Arc::new(AtomicU64::new(0));
        let rebind = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, rb, st) = (rebinds.clone(), rebind.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let new_upstream = || {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                s
            };
            let mut up = new_upstream();
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            let deadline = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                if rb.swap(false, Ordering::Relaxed) {
                    // The old mapping is gone: replies to it are lost, as behind a real NAT.
                    up = new_upstream();
                    r.fetch_add(1, Ordering::Relaxed);
                }
                let mut idle = true;
                for _ in 0..256 {
                    match front.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            idle = false;
                            client = Some(from);
                            let _ = up.send_to(&buf[..n], server);
                        }
                        Err(_) => break,
                    }
                }
                for _ in 0..256 {
                    match up.recv_from(&mut buf) {
                        Ok((n, _)) => {
                            idle = false;
                            if let Some(c) = client {
                                let _ = front.send_to(&buf[..n], c);
                            }
                        }
                        Err(_) => break,
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Nat {
            addr,
            rebinds,
            rebind,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn nat_rebinding_onto_another_workers_socket_is_forwarded_not_reset() {
    // Hash steering: after a rebind the kernel picks the socket by the new 4-tuple, so
    // packets land on the other worker's socket about half the time and must be forwarded.
    let srv = server(IoKind::Uring, Steering::Hash, DriverConfig::default());
    let nat = Nat::start(srv.addr);
    let counters = srv.group.shared.counters.clone();
    let rebind = nat.rebind.clone();
    let forwarded = move || {
        counters
            .iter()
            .map(|c| c.forwarded_out.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let before = forwarded();
    let driver = std::thread::spawn({
        let forwarded = forwarded.clone();
        move || {
            // Rebind every 100 ms until packets have been forwarded after a rebind, at
            // most 30 times (the chance that all land on the owner is 2^-30).
            std::thread::sleep(Duration::from_millis(200));
            for _ in 0..30 {
                rebind.store(true, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
                if forwarded() > before + 10 {
                    break;
                }
            }
        }
    });
    let r = load(nat.addr, IoKind::Uring, Mode::Echo, 1, 4, 24 << 20);
    driver.join().unwrap();
    assert_clean(&r, 4, 4 * (24 << 20));
    let rebinds = nat.rebinds.load(Ordering::Relaxed);
    let fwd = forwarded() - before;
    assert!(rebinds >= 1, "the NAT rebound");
    assert!(
        fwd > 10,
        "packets were forwarded between workers ({fwd} after {rebinds} rebinds)"
    );
    drop(nat);
    srv.group.stop();
    srv.group.join().unwrap();
}

#[test]
fn malformed_datagrams_are_dropped_and_counted_while_transfers_finish() {
    use rand::{Rng, RngCore, SeedableRng};
    let srv = server(IoKind::Uring, Steering::Bpf, DriverConfig::default());
    let target = srv.addr;
    const GARBAGE: u64 = 100_000;
    let flood = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut buf = vec![0u8; 65_000];
        let mut sent = 0u64;
        for i in 0..GARBAGE {
            let len = match i % 10 {
                0 => 0,                           // empty
                1 => rng.gen_range(1..9),         // truncated header
                2 => rng.gen_range(9000..65_000), // oversized
                _ => rng.gen_range(9..1500),
            };
            rng.fill_bytes(&mut buf[..len]);
            if i % 10 == 3 {
                buf[0] = 0x40 | (buf[0] & 0x3f); // short header aimed at a worker
                buf[1] &= 1;
            }
            if s.send_to(&buf[..len], target).is_ok() {
                sent += 1;
            }
            if i % 256 == 255 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sent
    });
    let r = load(srv.addr, IoKind::Uring, Mode::Echo, 8, 4, 2 << 20);
    let sent = flood.join().unwrap();
    assert_clean(&r, 32, 32 * (2 << 20));
    // Let the server finish reading the flood.
    std::thread::sleep(Duration::from_millis(500));
    let t = srv.group.totals();
    let counted = t.rx_malformed + t.rx_dropped + t.rx_responses;
    assert_eq!(sent, GARBAGE);
    assert!(
        counted >= GARBAGE * 95 / 100,
        "garbage counted: {counted} of {GARBAGE} (malformed {}, dropped {}, answered {})",
        t.rx_malformed,
        t.rx_dropped,
        t.rx_responses
    );
    srv.group.stop();
    srv.group.join().unwrap();
}
