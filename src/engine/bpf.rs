//! Kernel connection-ID steering for a `SO_REUSEPORT` UDP group (DESIGN.md, "Connection-ID
//! sharding").
//!
//! Every CID a worker issues carries the worker's index in its first byte. A classic BPF
//! program attached to the group with `SO_ATTACH_REUSEPORT_CBPF` reads that byte from each
//! short-header packet and returns it as the socket index, so the kernel delivers the packet
//! straight to the worker that owns the connection. Anything else (long headers, packets too
//! short to hold a CID byte, indices beyond the worker count) gets an out-of-range index, and
//! the kernel then falls back to its 4-tuple hash.
//!
//! Kernel semantics this relies on (`net/core/sock_reuseport.c`, `reuseport_select_sock` and
//! `run_bpf_filter`):
//! - For UDP the skb is pulled past the UDP header before the program runs, so offsets and the
//!   length the program sees are those of the UDP payload.
//! - A returned index `>= num_socks` yields no socket, and the caller then picks one by hash.
//!   A load past the end of the packet aborts the program with return value 0, which is a valid
//!   index (socket 0): hence the explicit length check before the first load.
//! - Indices are positions in the group's `socks[]` array: bind order. Closing a member moves the
//!   last member into its slot, so every socket must stay open for the life of the process.
//!   [`self_test`] checks the mapping at start-up.
//! - The program belongs to the group, not to the socket it was attached through; attach it once,
//!   after every member is bound.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// Index returned for packets the program does not steer; out of range for any group, so the
/// kernel hashes the 4-tuple instead.
const FALLBACK: u32 = u32::MAX;

/// Bit 7 of the first byte: set on QUIC long headers (RFC 9000, 17.2), whose DCID is not at
/// offset 1 and was chosen by the client anyway.
const LONG_HEADER_BIT: u32 = 0x80;

/// A CID byte can name at most 256 workers.
const MAX_WORKERS: usize = 256;

/// Payload marker of a steering probe; a short header, so the program steers it by byte 1.
const PROBE_MAGIC: &[u8] = b"quelay-steering-probe";

/// Length of the random nonce that tells this run's probes from stale or foreign datagrams.
const PROBE_NONCE_LEN: usize = 8;

/// How long [`self_test`] waits for all probes; loopback delivers in microseconds.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Where a short header's UDP payload carries the worker byte on a lone server: the first
/// DCID byte, after the flags.
pub const WORKER_OFFSET: u32 = 1;

/// The steering program for a group of `workers` sockets whose short headers carry the
/// worker at payload offset `offset` (1, or 3 for a cluster node's QUIC-LB CIDs).
///
/// Jump offsets count instructions after the jump itself.
fn steering_program(workers: u32, offset: u32) -> [libc::sock_filter; 8] {
    const fn stmt(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }
    const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }
    use libc::{BPF_A, BPF_ABS, BPF_B, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LEN};
    use libc::{BPF_RET, BPF_W};
    [
        // 0: A = payload length
        stmt(BPF_LD | BPF_W | BPF_LEN, 0),
        // 1: too short to hold the worker byte → 7 (a load past the end would return
        // socket 0)
        jump(BPF_JMP | BPF_JGE | BPF_K, offset + 1, 0, 5),
        // 2: A = first byte
        stmt(BPF_LD | BPF_B | BPF_ABS, 0),
        // 3: long header → 7
        jump(BPF_JMP | BPF_JSET | BPF_K, LONG_HEADER_BIT, 3, 0),
        // 4: A = the worker byte of a short header's DCID
        stmt(BPF_LD | BPF_B | BPF_ABS, offset),
        // 5: not one of our workers → 7
        jump(BPF_JMP | BPF_JGE | BPF_K, workers, 1, 0),
        // 6: steer to socket A
        stmt(BPF_RET | BPF_A, 0),
        // 7: let the kernel hash the 4-tuple
        stmt(BPF_RET | BPF_K, FALLBACK),
    ]
}

/// Attaches the CID steering program to the reuseport group of the bound UDP socket `fd`.
///
/// `workers` is the number of sockets that own CIDs, in bind order (1..=256). Attach after
/// every member of the group is bound; the program then applies to the whole group.
#[cfg(test)]
pub fn attach_cid_steering(fd: RawFd, workers: usize) -> io::Result<()> {
    attach_cid_steering_at(fd, workers, WORKER_OFFSET)
}

/// [`attach_cid_steering`] for CIDs whose worker byte is at payload offset `offset`.
fn attach_cid_steering_at(fd: RawFd, workers: usize, offset: u32) -> io::Result<()> {
    if workers == 0 || workers > MAX_WORKERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CID steering needs 1..={MAX_WORKERS} workers, got {workers}"),
        ));
    }
    let mut program = steering_program(workers as u32, offset);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` and the `program` array it points to are locals that outlive the call;
    // the kernel copies the instructions during setsockopt and keeps no pointer to them.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("SO_ATTACH_REUSEPORT_CBPF: {err}"),
        ));
    }
    Ok(())
}

/// Attaches CID steering to a bound reuseport group (`sockets` in bind order, each one
/// worker) whose short headers carry the worker at payload `offset`, and self-tests it.
pub fn steer_group(sockets: &[UdpSocket], offset: u32) -> io::Result<()> {
    let first = sockets.first().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "CID steering needs a socket")
    })?;
    attach_cid_steering_at(first.as_raw_fd(), sockets.len(), offset)?;
    self_test_at(&sockets.iter().collect::<Vec<_>>(), offset)
}

/// Checks that the kernel steers a short-header packet whose DCID starts with byte `i` to
/// `sockets[i]`.
///
/// `sockets` are the bound members of the group, in bind order, with the program attached.
/// One probe per index is sent from a fresh ephemeral socket to the group's address (the
/// loopback address of the same family when the group is bound to the unspecified address).
/// Each socket is non-blocking during the test and restored afterwards.
///
/// Datagrams that are not this run's probes are read and discarded: run it before serving, or
/// accept that a restart under live traffic drops a few packets, which clients retransmit.
#[cfg(test)]
pub fn self_test(sockets: &[&UdpSocket]) -> io::Result<()> {
    self_test_at(sockets, WORKER_OFFSET)
}

/// [`self_test`] with the worker byte at payload `offset`.
fn self_test_at(sockets: &[&UdpSocket], offset: u32) -> io::Result<()> {
    if sockets.is_empty() || sockets.len() > MAX_WORKERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "steering self-test needs 1..={MAX_WORKERS} sockets, got {}",
                sockets.len()
            ),
        ));
    }
    let group = sockets[0].local_addr()?;
    for (i, sock) in sockets.iter().enumerate().skip(1) {
        let addr = sock.local_addr()?;
        if addr != group {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket {i} is bound to {addr}, socket 0 to {group}: not one group"),
            ));
        }
    }

    let was_nonblocking = sockets
        .iter()
        .map(|s| socket2::SockRef::from(*s).nonblocking())
        .collect::<io::Result<Vec<bool>>>()?;
    let result = sockets
        .iter()
        .try_for_each(|s| s.set_nonblocking(true))
        .and_then(|()| run_probes(sockets, probe_target(group), offset as usize));
    for (sock, &nonblocking) in sockets.iter().zip(&was_nonblocking) {
        // Restore even after a failed test; the first error is the one worth reporting.
        let restored = sock.set_nonblocking(nonblocking);
        if result.is_ok() {
            restored?;
        }
    }
    result
}

/// Where probes for a group bound to `group` are sent.
fn probe_target(group: SocketAddr) -> SocketAddr {
    let ip = match group.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, group.port())
}

/// Sends one probe per socket index and checks where each arrives.
fn run_probes(sockets: &[&UdpSocket], target: SocketAddr, offset: usize) -> io::Result<()> {
    let unspecified: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sender = UdpSocket::bind(SocketAddr::new(unspecified, 0))?;
    let nonce: [u8; PROBE_NONCE_LEN] = rand::random();
    for i in 0..sockets.len() {
        sender.send_to(&probe(i as u8, &nonce, offset), target)?;
    }

    // landed[i] = index of the socket probe i arrived on.
    let mut landed: Vec<Option<usize>> = vec![None; sockets.len()];
    let mut missing = sockets.len();
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut buf = [0u8; 2048];
    while missing > 0 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || !wait_readable(sockets, remaining)? {
            break;
        }
        for (at, sock) in sockets.iter().enumerate() {
            loop {
                let len = match sock.recv_from(&mut buf) {
                    Ok((len, _)) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                };
                let Some(index) = probe_index(&buf[..len], &nonce, offset) else {
                    continue;
                };
                if let Some(slot @ None) = landed.get_mut(index) {
                    *slot = Some(at);
                    missing -= 1;
                }
            }
        }
    }

    let wrong: Vec<String> = landed
        .iter()
        .enumerate()
        .filter(|&(i, at)| *at != Some(i))
        .map(|(i, at)| match at {
            Some(at) => format!("probe {i} landed on socket {at}"),
            None => format!("probe {i} never arrived"),
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "CID steering self-test to {target} failed ({} sockets): {}",
            sockets.len(),
            wrong.join(", ")
        )))
    }
}

/// A short-header probe with `index` at payload `offset` (the bytes between are zero).
fn probe(index: u8, nonce: &[u8; PROBE_NONCE_LEN], offset: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(offset + 1 + PROBE_MAGIC.len() + PROBE_NONCE_LEN);
    p.push(0x40);
    p.resize(offset, 0);
    p.push(index);
    p.extend_from_slice(PROBE_MAGIC);
    p.extend_from_slice(nonce);
    p
}

/// The index of a probe of this run, or `None` for any other datagram.
fn probe_index(datagram: &[u8], nonce: &[u8; PROBE_NONCE_LEN], offset: usize) -> Option<usize> {
    if datagram.first() != Some(&0x40) {
        return None;
    }
    let index = *datagram.get(offset)?;
    let rest = datagram.get(offset + 1..)?;
    (rest.strip_prefix(PROBE_MAGIC) == Some(&nonce[..])).then_some(usize::from(index))
}

/// Waits up to `timeout` for any socket to become readable; `false` on timeout.
fn wait_readable(sockets: &[&UdpSocket], timeout: Duration) -> io::Result<bool> {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Round up so a sub-millisecond remainder still waits instead of spinning.
    let timeout_ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: `fds` is a Vec owned by this frame, alive and not otherwise borrowed for the
        // duration of the call; the kernel writes only the `revents` fields within its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Socket, Type};

    /// Binds `n` reuseport sockets to `ip`: the first to port 0, the rest to the port it got.
    fn group(ip: IpAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
        let mut addr = SocketAddr::new(ip, 0);
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_port(true)?;
            s.bind(&addr.into())?;
            let s: UdpSocket = s.into();
            addr = s.local_addr()?;
            socks.push(s);
        }
        Ok(socks)
    }

    /// A group of `n` with the program attached for `workers`.
    fn steered_group(ip: IpAddr, n: usize, workers: usize) -> Vec<UdpSocket> {
        let socks = group(ip, n).unwrap();
        attach_cid_steering(socks[0].as_raw_fd(), workers).unwrap();
        for s in &socks {
            s.set_nonblocking(true).unwrap();
        }
        socks
    }

    fn refs(socks: &[UdpSocket]) -> Vec<&UdpSocket> {
        socks.iter().collect()
    }

    /// Ephemeral sender sockets on `ip`, each with its own source port.
    fn senders(ip: IpAddr, n: usize) -> Vec<UdpSocket> {
        (0..n)
            .map(|_| UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap())
            .collect()
    }

    /// Reads until `expected` datagrams arrived (or 2 s passed); returns (socket, payload).
    fn collect(socks: &[UdpSocket], expected: usize) -> Vec<(usize, Vec<u8>)> {
        let refs = refs(socks);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < expected {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || !wait_readable(&refs, remaining).unwrap() {
                break;
            }
            for (at, s) in socks.iter().enumerate() {
                while let Ok((len, _)) = s.recv_from(&mut buf) {
                    got.push((at, buf[..len].to_vec()));
                }
            }
        }
        got
    }

    fn assert_short_headers_steered(ip: IpAddr, n: usize) {
        let socks = steered_group(ip, n, n);
        let target = socks[0].local_addr().unwrap();
        let sources = senders(ip, 8);
        for (src, sender) in sources.iter().enumerate() {
            for i in 0..n {
                sender
                    .send_to(&[0x40, i as u8, src as u8, 0xAA, 0xBB], target)
                    .unwrap();
            }
        }
        let got = collect(&socks, n * sources.len());
        assert_eq!(got.len(), n * sources.len(), "lost datagrams: {got:?}");
        for (at, payload) in &got {
            assert_eq!(
                usize::from(payload[1]),
                *at,
                "DCID byte {} from source {} landed on socket {at}",
                payload[1],
                payload[2]
            );
        }
    }

    /// Sends `payload` from 64 different source ports and returns how many sockets got some.
    fn spread(ip: IpAddr, n: usize, workers: usize, payload: &[u8]) -> usize {
        let socks = steered_group(ip, n, workers);
        let target = socks[0].local_addr().unwrap();
        let sources = senders(ip, 64);
        for sender in &sources {
            sender.send_to(payload, target).unwrap();
        }
        let got = collect(&socks, sources.len());
        assert_eq!(got.len(), sources.len(), "lost datagrams");
        assert!(got.iter().all(|(_, p)| p == payload));
        let mut hit = vec![false; n];
        for (at, _) in got {
            hit[at] = true;
        }
        hit.iter().filter(|&&h| h).count()
    }

    fn loopback_v6() -> Option<IpAddr> {
        let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        match UdpSocket::bind(SocketAddr::new(ip, 0)) {
            Ok(_) => Some(ip),
            Err(e) => {
                eprintln!("skipping IPv6 case: cannot bind [::1]:0: {e}");
                None
            }
        }
    }

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn program_shape() {
        let p = steering_program(4, WORKER_OFFSET);
        // Every jump lands inside the program, and it ends in a return.
        for (i, insn) in p.iter().enumerate() {
            if u32::from(insn.code) & 0x07 == libc::BPF_JMP {
                assert!(i + 1 + usize::from(insn.jt.max(insn.jf)) < p.len());
            }
        }
        assert_eq!(u32::from(p[7].code), libc::BPF_RET | libc::BPF_K);
        assert_eq!(p[7].k, FALLBACK);
    }

    #[test]
    fn rejects_bad_worker_counts() {
        let socks = group(V4, 1).unwrap();
        for workers in [0, MAX_WORKERS + 1] {
            let err = attach_cid_steering(socks[0].as_raw_fd(), workers).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        assert_eq!(
            self_test(&[]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn steer_group_attaches_and_tests() {
        assert_eq!(
            steer_group(&[], WORKER_OFFSET).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let socks = group(V4, 3).unwrap();
        steer_group(&socks, WORKER_OFFSET).unwrap();
        // A cluster node's CIDs: the worker byte after the QUIC-LB octet and the node.
        let socks = group(V4, 3).unwrap();
        steer_group(&socks, 3).unwrap();
        // Bound out of order: the group's self-test catches it.
        let socks = group(V4, 2).unwrap();
        let swapped = [socks[1].try_clone().unwrap(), socks[0].try_clone().unwrap()];
        assert!(steer_group(&swapped, WORKER_OFFSET).is_err());
    }

    #[test]
    fn self_test_passes_v4() {
        for n in [1, 2, 4] {
            let socks = group(V4, n).unwrap();
            attach_cid_steering(socks[0].as_raw_fd(), n).unwrap();
            self_test(&refs(&socks)).unwrap();
            // Blocking mode restored.
            for s in &socks {
                assert!(!socket2::SockRef::from(s).nonblocking().unwrap());
            }
        }
    }

    #[test]
    fn self_test_passes_unspecified_v4() {
        let socks = group(Ipv4Addr::UNSPECIFIED.into(), 4).unwrap();
        attach_cid_steering(socks[3].as_raw_fd(), 4).unwrap();
        self_test(&refs(&socks)).unwrap();
    }

    #[test]
    fn self_test_detects_wrong_order() {
        let socks = group(V4, 2).unwrap();
        attach_cid_steering(socks[0].as_raw_fd(), 2).unwrap();
        let err = self_test(&[&socks[1], &socks[0]]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("probe 0 landed on socket 1"), "{msg}");
        assert!(msg.contains("probe 1 landed on socket 0"), "{msg}");
    }

    #[test]
    fn self_test_fails_without_program() {
        // One sender means one 4-tuple, so plain hashing puts every probe on one socket.
        let socks = group(V4, 2).unwrap();
        let err = self_test(&refs(&socks)).unwrap_err();
        assert!(err.to_string().contains("landed on socket"), "{err}");
    }

    #[test]
    fn self_test_discards_foreign_datagrams() {
        let socks = group(V4, 2).unwrap();
        attach_cid_steering(socks[0].as_raw_fd(), 2).unwrap();
        let target = socks[0].local_addr().unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(&[0x40, 1, 2, 3], target).unwrap();
        let stale = probe(0, &[0; PROBE_NONCE_LEN], WORKER_OFFSET as usize);
        stranger.send_to(&stale, target).unwrap();
        self_test(&refs(&socks)).unwrap();
    }

    #[test]
    fn short_headers_follow_dcid_byte_v4() {
        assert_short_headers_steered(V4, 2);
        assert_short_headers_steered(V4, 4);
    }

    #[test]
    fn unsteered_packets_fall_back_to_hash_v4() {
        // Long header: the 4-tuple hash spreads 64 sources over more than one socket
        // (all on one socket has probability 4 * 4^-64).
        assert!(spread(V4, 4, 4, &[0xC0, 0, 0, 0, 1, 8, 0, 0]) > 1);
        // Too short to carry a CID byte: without the length check the aborted load would
        // return 0 and send every one of these to socket 0.
        assert!(spread(V4, 4, 4, &[0x40]) > 1);
        assert!(spread(V4, 4, 4, &[]) > 1);
        // DCID byte names no worker (group larger than the worker count, and beyond the group).
        assert!(spread(V4, 4, 2, &[0x40, 3, 0]) > 1);
        assert!(spread(V4, 4, 4, &[0x40, 200, 0]) > 1);
    }

    #[test]
    fn ipv6() {
        let Some(ip) = loopback_v6() else { return };
        for n in [2, 4] {
            let socks = group(ip, n).unwrap();
            attach_cid_steering(socks[0].as_raw_fd(), n).unwrap();
            self_test(&refs(&socks)).unwrap();
        }
        let socks = group(Ipv6Addr::UNSPECIFIED.into(), 2).unwrap();
        attach_cid_steering(socks[0].as_raw_fd(), 2).unwrap();
        self_test(&refs(&socks)).unwrap();
        assert_short_headers_steered(ip, 4);
        assert!(spread(ip, 4, 4, &[0xC0, 0, 0, 0, 1, 8, 0, 0]) > 1);
    }
}
