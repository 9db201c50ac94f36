//! Real Hysteria2 downloads through emulated network paths (`support::netns`): rate limits,
//! long round trips and random loss, so that congestion control meets the paths it is built
//! for. Needs root (network namespaces, veth, tbf); without it every test here fails with
//! the reason, none is skipped.
//!
//! Each cell builds a fresh pair of namespaces: `quelay server` (its default congestion
//! control) and an HTTP target run in the server namespace behind the delay/loss
//! forwarder; a Hysteria2 client (sing-box, or `quelay client`) runs in the client
//! namespace, and the test downloads `DOWNLOAD` bytes (`DOWNLOAD_FAST` on the fast paths)
//! through its SOCKS5 port from a thread in that namespace. A transfer must arrive intact
//! (SHA-256), never go `STALL` without a byte, and end within `TRANSFER_BOUND`. Its rate is
//! printed, not asserted:
//!
//! ```text
//! path cell=rtt30ms_loss1pct_50mbit client=sing-box bytes=8388608 seconds=2.10 mbit_s=32.0 ...
//! ```
//!
//! The `cluster` tests (`paths/cluster.rs`) run three nodes behind an nftables balancer with
//! 30 clients that change their source port every second.
//!
//! The `hopping_client_*` tests (`paths/hop.rs`) download through a client that hops ports
//! every second across an nftables redirect in the server namespace.
//!
//! `sockopts::*` (`paths/sockopts.rs`) checks that the client's `quic.sockopts` reach its
//! sockets: every datagram to the server carries the fwmark, out of the bound interface.
//!
//! The `brutal40_*` tests run the same download with the sing-box client asking for Brutal
//! (`up_mbps`/`down_mbps` = 40) through 30 ms and 1% or 5% random loss behind 50 Mbit/s.
//!
//! The transfers run one at a time (a lock), so that the printed rates of a 2-core machine
//! are not those of two cells sharing it. The `path_harness_*` tests check the emulation
//! itself: the round trip the forwarder adds, the rate tbf allows, loss and jitter, and the
//! forwarder's own speed.

mod support;

#[path = "paths/cluster.rs"]
mod cluster;
#[path = "paths/hop.rs"]
mod hop;
#[path = "paths/sockopts.rs"]
mod sockopts;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    big_buffers, pattern_sha256, socks_download, ClientKind, Download, HttpTarget, NetPath,
    NsProxyClient, NsQuelayServer, PathSide, PathSpec, SbOpts, UdpEcho, MIB,
};

/// Bytes of a download over a 50 Mbit/s path: seconds of steady state after the start-up.
const DOWNLOAD: usize = 8 * MIB;
/// Bytes of a download over a faster path, where `DOWNLOAD` would be mostly start-up.
const DOWNLOAD_FAST: usize = 32 * MIB;
/// The longest a transfer may go without a byte arriving (from the request on).
const STALL: Duration = Duration::from_secs(5);
/// The longest a transfer may take, from the SOCKS5 CONNECT to the last byte.
const TRANSFER_BOUND: Duration = Duration::from_secs(60);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Serializes the tests of this file: each one's figures are its own.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// GETs `/bytes/len` through the SOCKS5 proxy at `socks` (`support::socks_download`), failing
/// on a stall (`STALL` without a byte), past `TRANSFER_BOUND`, or on a short body. Must run in
/// the proxy's namespace.
fn download(socks: SocketAddr, port: u16, len: usize) -> Result<Download, String> {
    let d = socks_download(socks, port, len, STALL, TRANSFER_BOUND);
    match d.error {
        Some(e) => Err(e),
        None => Ok(d),
    }
}

/// One download of `len` bytes over a fresh path shaped as `spec`, with `kind` as the client
/// and quelay as the server; checks integrity, stalls and the bound, and prints the figures.
fn transfer(cell: &str, spec: PathSpec, len: usize, kind: ClientKind) {
    transfer_with(cell, spec, len, kind.name(), |path, server| {
        NsProxyClient::start(path, kind, server)
    });
}

/// `transfer` with the client `start` launches (in the client namespace, dialing `server`),
/// `client_name` naming it in the messages.
fn transfer_with(
    cell: &str,
    spec: PathSpec,
    len: usize,
    client_name: &str,
    start: impl FnOnce(&NetPath, SocketAddr) -> NsProxyClient,
) {
    NetPath::check_available();
    let _serial = serial();
    let path = NetPath::new(spec);
    let target = path.in_ns(PathSide::Server, HttpTarget::start);
    let mut server = NsQuelayServer::start(&path, "");
    let fwd = path.forwarder(server.addr());
    let mut client = start(&path, fwd.addr());
    let (socks, port) = (client.socks_addr(), target.addr().port());

    let got = match path.in_ns(PathSide::Client, || download(socks, port, len)) {
        Ok(got) => got,
        Err(e) => {
            // A peer that died explains the failure better than its symptom.
            client.child().assert_running();
            server.child().assert_running();
            panic!(
                "{cell} with the {} client ({}): {e}; forwarder: {}",
                client_name,
                path.spec().describe(),
                fwd.counters().summary()
            );
        }
    };
    assert_eq!(got.bytes, len, "bytes downloaded");
    assert_eq!(
        got.sha256,
        pattern_sha256(len),
        "SHA-256 of the download ({cell}, {} client)",
        client_name
    );
    let secs = got.transfer.as_secs_f64();
    let tbf = path
        .tbf_stats(PathSide::Server)
        .map_or("none".to_owned(), |t| {
            format!("{} pkts, {} dropped", t.packets, t.dropped)
        });
    eprintln!(
        "path cell={cell} client={} bytes={} seconds={secs:.2} mbit_s={:.1} \
         (connect {:.2}s, longest gap {:.2}s; {}; forwarder {}; tbf server->client {tbf})",
        client_name,
        got.bytes,
        got.bytes as f64 * 8.0 / 1e6 / secs,
        got.connect.as_secs_f64(),
        got.longest_gap.as_secs_f64(),
        path.spec().describe(),
        fwd.counters().summary(),
    );
    client.child().assert_running();
    server.child().assert_running();
}

/// A transfer test of `len` bytes for each client over the path `spec`, named `cell`.
macro_rules! cell {
    ($(#[$doc:meta])* $cell:literal, $singbox:ident, $quelay:ident, $spec:expr, $len:expr) => {
        $(#[$doc])*
        ///
        /// With the sing-box client.
        #[test]
        fn $singbox() {
            transfer($cell, $spec, $len, ClientKind::SingBox);
        }
        $(#[$doc])*
        ///
        /// With quelay's client.
        #[test]
        fn $quelay() {
            transfer($cell, $spec, $len, ClientKind::Quelay);
        }
    };
}

cell!(
    /// A short path with a little random loss behind a 50 Mbit/s bottleneck.
    "rtt30ms_loss1pct_50mbit",
    rtt30ms_loss1pct_50mbit_singbox,
    rtt30ms_loss1pct_50mbit_quelay,
    PathSpec::new(Some(50.0), ms(30), 0.01),
    DOWNLOAD
);

cell!(
    /// A long, clean path: a 1-BDP queue of 940 KB at 50 Mbit/s.
    "rtt150ms_50mbit",
    rtt150ms_50mbit_singbox,
    rtt150ms_50mbit_quelay,
    PathSpec::new(Some(50.0), ms(150), 0.0),
    DOWNLOAD
);

cell!(
    /// No delay and no rate limit, but 5% random loss each way: loss that is not congestion.
    "rtt0_loss5pct_unlimited",
    rtt0_loss5pct_unlimited_singbox,
    rtt0_loss5pct_unlimited_quelay,
    PathSpec::new(None, Duration::ZERO, 0.05),
    DOWNLOAD_FAST
);

cell!(
    /// A fast clean path: 300 Mbit/s, 30 ms.
    "rtt30ms_300mbit",
    rtt30ms_300mbit_singbox,
    rtt30ms_300mbit_quelay,
    PathSpec::new(Some(300.0), ms(30), 0.0),
    DOWNLOAD_FAST
);

/// Brutal under random loss: the sing-box client asks for `up_mbps`/`down_mbps` = 40, so
/// quelay sends to it with Brutal at 40 Mbit/s (below the 50 Mbit/s bottleneck), which must
/// keep going through the losses (Brutal resends at a rate raised by the loss it measures)
/// and deliver `DOWNLOAD` intact without a stall.
fn brutal_transfer(cell: &str, loss: f64) {
    let spec = PathSpec::new(Some(50.0), ms(30), loss);
    let opts = SbOpts {
        up_down_mbps: Some(40),
        ..SbOpts::default()
    };
    transfer_with(
        cell,
        spec,
        DOWNLOAD,
        "sing-box (brutal 40)",
        |path, server| NsProxyClient::singbox(path, server, &opts),
    );
}

/// Brutal at 40 Mbit/s through 30 ms, 1% loss each way, 50 Mbit/s.
#[test]
fn brutal40_rtt30ms_loss1pct_50mbit_singbox() {
    brutal_transfer("brutal40_rtt30ms_loss1pct_50mbit", 0.01);
}

/// Brutal at 40 Mbit/s through 30 ms, 5% loss each way, 50 Mbit/s.
#[test]
fn brutal40_rtt30ms_loss5pct_50mbit_singbox() {
    brutal_transfer("brutal40_rtt30ms_loss5pct_50mbit", 0.05);
}

/// Round trips of `n` numbered datagrams sent one after the other to `to` (an echo), each
/// waited for up to a second. Must run in the namespace the socket should live in.
fn ping(to: SocketAddr, n: u32) -> Vec<Duration> {
    let s = UdpSocket::bind("0.0.0.0:0").expect("bind the ping socket");
    s.set_read_timeout(Some(ms(100))).expect("read timeout");
    let mut rtts = Vec::new();
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let mut msg = vec![0u8; 64];
        msg[..4].copy_from_slice(&i.to_be_bytes());
        let sent = Instant::now();
        s.send_to(&msg, to).expect("send a ping");
        loop {
            assert!(
                sent.elapsed() < Duration::from_secs(1),
                "ping {i} to {to}: no echo within 1 s"
            );
            if let Ok((len, _)) = s.recv_from(&mut buf) {
                if len >= 4 && buf[..4] == i.to_be_bytes() {
                    rtts.push(sent.elapsed());
                    break;
                }
            }
        }
    }
    rtts
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// Sends over one TCP connection for `dur`, or receives until EOF: returns, for the receiver,
/// the bytes after the first read and the time from the first read to the last.
fn blast_role(s: &mut TcpStream, send: bool, dur: Duration) -> Option<(u64, Duration)> {
    s.set_read_timeout(Some(STALL)).expect("read timeout");
    s.set_write_timeout(Some(STALL)).expect("write timeout");
    let mut buf = vec![0x5au8; 64 * 1024];
    if send {
        let start = Instant::now();
        while start.elapsed() < dur {
            s.write_all(&buf).expect("blast: write");
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        // Wait for the receiver's close, so all of it crossed before we return.
        let _ = s.read(&mut buf);
        return None;
    }
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut bytes = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                last = Instant::now();
                if first.is_some() {
                    bytes += n as u64;
                } else {
                    first = Some(last);
                }
            }
            Err(e) => panic!("blast: read after {bytes} bytes: {e}"),
        }
    }
    let first = first.expect("blast: nothing arrived");
    Some((bytes, last - first))
}

/// The rate (Mbit/s) one TCP connection across the veth link (not through the forwarder)
/// reaches from `sender`'s side in `dur`, as the receiver measures it.
fn tcp_blast(path: &NetPath, sender: PathSide, dur: Duration) -> f64 {
    let ip = path.ip(PathSide::Server);
    let listener = path.in_ns(PathSide::Server, || {
        TcpListener::bind((ip, 0)).expect("bind the blast listener")
    });
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("listener address");
    thread::scope(|scope| {
        let server = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "blast: no connection in 10 s");
                        thread::sleep(ms(5));
                    }
                    Err(e) => panic!("blast: accept: {e}"),
                }
            };
            s.set_nonblocking(false).expect("blocking");
            blast_role(&mut s, sender == PathSide::Server, dur)
        });
        let client = path.in_ns(PathSide::Client, || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("blast: connect to {addr}: {e}"));
            blast_role(&mut s, sender == PathSide::Client, dur)
        });
        let server = server
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let (bytes, span) = client.or(server).expect("one side received");
        bytes as f64 * 8.0 / 1e6 / span.as_secs_f64()
    })
}

/// The harness itself: a ping through the forwarder measures the configured RTT, and TCP
/// across the veth link in either direction gets no more than the tbf rate.
#[test]
fn path_harness_limits_rate_and_adds_delay() {
    NetPath::check_available();
    let _serial = serial();
    let rtt = ms(40);
    let rate = 50.0;
    let path = NetPath::new(PathSpec::new(Some(rate), rtt, 0.0));
    let echo = path.in_ns(PathSide::Server, UdpEcho::start);
    let fwd = path.forwarder(echo.addr());
    let to = fwd.addr();
    let rtts = path.in_ns(PathSide::Client, || ping(to, 20));
    let (lo, mid) = (*rtts.iter().min().expect("pings"), median(&rtts));
    let tolerance = rtt / 5 + ms(2);
    eprintln!(
        "harness: configured rtt {rtt:?}: measured median {mid:.2?}, min {lo:.2?}, max {:.2?}",
        rtts.iter().max().expect("pings")
    );
    assert!(
        mid.abs_diff(rtt) <= tolerance && lo + tolerance >= rtt,
        "ping through the forwarder: median {mid:?}, min {lo:?}; configured {rtt:?} +-{tolerance:?}"
    );
    for sender in [PathSide::Client, PathSide::Server] {
        let mbit = tcp_blast(&path, sender, Duration::from_secs(3));
        eprintln!("harness: tbf {rate} Mbit/s, TCP from the {sender:?} side: {mbit:.1} Mbit/s");
        assert!(
            mbit <= rate * 1.2,
            "TCP from the {sender:?} side reached {mbit:.1} Mbit/s through a {rate} Mbit/s tbf"
        );
        assert!(
            mbit >= rate * 0.5,
            "TCP from the {sender:?} side reached only {mbit:.1} Mbit/s of {rate}: the link is broken"
        );
    }
}

/// The harness's loss and jitter: about `loss` of the datagrams are lost each way, and round
/// trips spread over rtt..rtt+2*jitter (reordered).
#[test]
fn path_harness_loss_and_jitter() {
    NetPath::check_available();
    let _serial = serial();
    let (rtt, jitter, loss) = (ms(20), ms(10), 0.1);
    let path = NetPath::new(PathSpec::new(None, rtt, loss).with_jitter(jitter));
    let echo = path.in_ns(PathSide::Server, UdpEcho::start);
    let fwd = path.forwarder(echo.addr());
    let to = fwd.addr();
    const N: u32 = 2000;
    let (rtts, reordered) = path.in_ns(PathSide::Client, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(ms(300))).expect("read timeout");
        let recv = s.try_clone().expect("clone the socket");
        let sent_at: Arc<Mutex<Vec<Option<Instant>>>> =
            Arc::new(Mutex::new(vec![None; N as usize]));
        let done = Arc::new(AtomicBool::new(false));
        let ooo = Arc::new(AtomicU64::new(0));
        let receiver = {
            let (sent_at, done, ooo) = (sent_at.clone(), done.clone(), ooo.clone());
            thread::spawn(move || {
                let mut rtts = Vec::new();
                let mut buf = [0u8; 2048];
                let mut highest = None;
                loop {
                    match recv.recv_from(&mut buf) {
                        Ok((len, _)) if len >= 4 => {
                            let i = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
                            if let Some(at) = sent_at.lock().unwrap()[i as usize] {
                                rtts.push(at.elapsed());
                            }
                            if highest.is_some_and(|h| i < h) {
                                ooo.fetch_add(1, Ordering::Relaxed);
                            }
                            highest = highest.max(Some(i));
                        }
                        Ok(_) => {}
                        // 300 ms of silence once everything is sent: the rest is lost.
                        Err(_) if done.load(Ordering::Relaxed) => return rtts,
                        Err(_) => {}
                    }
                }
            })
        };
        for i in 0..N {
            let mut msg = vec![0u8; 64];
            msg[..4].copy_from_slice(&i.to_be_bytes());
            sent_at.lock().unwrap()[i as usize] = Some(Instant::now());
            s.send_to(&msg, to).expect("send");
            thread::sleep(Duration::from_micros(250));
        }
        done.store(true, Ordering::Relaxed);
        let rtts = receiver.join().expect("the receiver");
        (rtts, ooo.load(Ordering::Relaxed))
    });
    let delivered = rtts.len() as f64 / f64::from(N);
    let want = (1.0 - loss) * (1.0 - loss);
    let (lo, hi) = (
        *rtts.iter().min().expect("echoes"),
        *rtts.iter().max().expect("echoes"),
    );
    eprintln!(
        "harness: loss {loss} each way: {delivered:.3} of {N} round trips delivered (expected \
         {want:.3}); rtt {rtt:?} + jitter {jitter:?} each way: {lo:.2?}..{hi:.2?}, \
         {reordered} reordered; forwarder {}",
        fwd.counters().summary()
    );
    assert!(
        (delivered - want).abs() <= 0.05,
        "{delivered:.3} of the round trips were delivered with {loss} loss each way, expected {want:.3}"
    );
    // Delays only add up: the fastest round trip shows the configured delay, the median the
    // jitter's centre. The slowest also carries whatever the machine's scheduler added (a
    // loaded CI host has added 40 ms), so it bounds nothing.
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        lo + ms(1) >= rtt && median <= rtt + jitter + ms(10),
        "round trips from {lo:?}, median {median:?}: outside {rtt:?}..{:?}",
        rtt + jitter + ms(10)
    );
    assert!(
        hi - lo >= jitter / 2 && reordered > 0,
        "round trips {lo:?}..{hi:?} with {reordered} reordered: no jitter"
    );
}

/// The forwarder keeps up with 300 Mbit/s of 1300-byte datagrams (about 29,000 a second)
/// through a 30 ms path: a paced UDP blast from the client side arrives whole at a sink in
/// the server namespace.
#[test]
fn path_harness_forwarder_keeps_up() {
    NetPath::check_available();
    let _serial = serial();
    const RATE_MBIT: f64 = 300.0;
    const SIZE: usize = 1300;
    let dur = Duration::from_secs(2);
    let path = NetPath::new(PathSpec::new(None, ms(30), 0.0));
    let sink = path.in_ns(PathSide::Server, || {
        UdpSocket::bind("127.0.0.1:0").expect("bind the sink")
    });
    big_buffers(&sink);
    sink.set_read_timeout(Some(ms(300))).expect("read timeout");
    let fwd = path.forwarder(sink.local_addr().expect("sink address"));
    let to = fwd.addr();
    let counter = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        // Ends after 300 ms without a datagram once some came, or 9 s before the first.
        let mut idle = 0;
        loop {
            match sink.recv_from(&mut buf) {
                Ok(_) => {
                    n += 1;
                    idle = 0;
                }
                Err(_) if n > 0 || idle >= 30 => return n,
                Err(_) => idle += 1,
            }
        }
    });
    let (sent, took) = path.in_ns(PathSide::Client, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind the blaster");
        let msg = vec![0xa5u8; SIZE];
        let per_ms = RATE_MBIT * 1e6 / 8.0 / SIZE as f64 / 1000.0;
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < dur {
            let due = (start.elapsed().as_secs_f64() * 1000.0 * per_ms) as u64;
            while sent < due {
                s.send_to(&msg, to).expect("send");
                sent += 1;
            }
            thread::sleep(Duration::from_micros(500));
        }
        (sent, start.elapsed())
    });
    let got = counter.join().expect("the sink");
    let mbit = sent as f64 * SIZE as f64 * 8.0 / 1e6 / took.as_secs_f64();
    eprintln!(
        "harness: forwarder at {mbit:.0} Mbit/s offered ({sent} datagrams of {SIZE} bytes in \
         {took:.2?}): {got} arrived; forwarder {}",
        fwd.counters().summary()
    );
    assert!(
        got as f64 >= sent as f64 * 0.99,
        "the forwarder passed {got} of {sent} datagrams offered at {mbit:.0} Mbit/s"
    );
}
