//! The io_uring driver: one ring per worker, no SQPOLL (4x slower per operation on 2 cores,
//! DESIGN.md), single-issuer with deferred task work when the kernel offers it.
//!
//! Memory ownership (STYLE.md, monoio row): every operation handed to the kernel has an
//! entry in `ops`, a `Slab<Op>`, and the SQE's `user_data` is that entry's key. Whatever the
//! kernel reads or writes (buffers, `msghdr`, `iovec`, addresses, control messages) is owned
//! by the entry, on the heap ([`KBox`] or a `Vec`'s buffer) so that its address is stable,
//! and is released only once the operation's CQE has been reaped. Dropping the driver
//! cancels what is in flight, waits a bounded time for the CQEs, and leaks the entries whose
//! operations never completed.
//!
//! - `udp.rs`: `recv_depth` RecvMsg kept posted, each with its own 64 KiB GRO buffer;
//!   SendMsg with GSO, ECN and source-address control messages, GSO fallback on EIO/EINVAL.
//! - `sock.rs`: the relay's socket operations in flight, their completions, adopted
//!   sockets, and Close after cancelling what is pending on the fd; `tcp.rs` builds
//!   Connect, Accept, Recv and Send, `dgram.rs` RecvMsg and SendMsg on the UDP session
//!   sockets of `udp_open` (and adopted UDP sockets).
//! - Wakeups: a Read of the waker's eventfd into an 8-byte slot, re-armed after each
//!   completion (a PollAdd plus a drain if the kernel answers EAGAIN for the non-blocking fd).

mod dgram;
mod sock;
mod tcp;
mod udp;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;

use super::sys::{self, Waker};
use super::{Completion, DriverConfig, Egress, EngineStats, Event, IoKind, Sock, Token, TxMeta};

/// `user_data` of SQEs whose completions carry nothing to act on (cancellations).
const IGNORE: u64 = u64::MAX;
/// How long `Drop` waits for cancelled operations before leaking their memory.
const DROP_WAIT: Duration = Duration::from_secs(1);

/// Heap memory lent to the kernel. Allocated by [`KBox::new`], released only by
/// [`KBox::take`] once no operation uses it; dropping a `KBox` leaks it, the safe default
/// for memory the kernel may still write.
struct KBox<T>(NonNull<T>);

impl<T> KBox<T> {
    fn new(v: T) -> Self {
        KBox(NonNull::from(Box::leak(Box::new(v))))
    }

    fn ptr(&self) -> *mut T {
        self.0.as_ptr()
    }

    /// # Safety
    /// No operation using this memory may be in flight.
    unsafe fn get(&mut self) -> &mut T {
        // SAFETY: allocated by `new`, never freed while `self` exists; the caller
        // guarantees the kernel is not using it, so this is the only reference.
        unsafe { &mut *self.0.as_ptr() }
    }

    /// # Safety
    /// As for `get`.
    unsafe fn take(self) -> T {
        // SAFETY: allocated by Box in `new`; `self` is consumed, so this is the last use.
        unsafe { *Box::from_raw(self.0.as_ptr()) }
    }

    /// # Safety
    /// As for `get`.
    unsafe fn free(self) {
        // SAFETY: as for `take`.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// One operation the kernel holds (or has completed and the driver has not yet delivered).
enum Op {
    UdpRecv(KBox<udp::RecvSlot>),
    UdpSend(KBox<udp::SendSlot>),
    /// Read of the waker's eventfd counter (or PollAdd, see `wake_by_poll`).
    Wake(KBox<u64>),
    Sock(sock::SockOpState),
}

impl Op {
    /// Releases an operation's memory.
    ///
    /// # Safety
    /// The kernel must be done with it: its CQE was reaped, or its SQE never submitted.
    unsafe fn free(self) {
        // SAFETY: per the contract above, nothing in flight uses the memory.
        unsafe {
            match self {
                Op::UdpRecv(s) => s.free(),
                Op::UdpSend(s) => s.free(),
                Op::Wake(b) => b.free(),
                Op::Sock(s) => s.free(),
            }
        }
    }
}

pub struct UringDriver {
    ring: IoUring,
    /// False while a ring set up with R_DISABLED waits for its first `wait` (single issuer:
    /// the thread that enables the ring is the only one allowed to submit to it).
    enabled: bool,
    socket: UdpSocket,
    /// The socket `rebind` replaced: it still receives until the next `rebind`.
    previous: Option<UdpSocket>,
    local: SocketAddr,
    v6: bool,
    gro: bool,
    recv_depth: usize,
    waker: Waker,
    /// The kernel answered EAGAIN to a Read of the non-blocking eventfd (older kernels):
    /// wait with PollAdd and drain the counter instead.
    wake_by_poll: bool,
    gso: bool,
    inject_gso_failure: bool,
    ops: Slab<Op>,
    /// SQEs that did not fit in the submission queue, oldest first.
    backlog: VecDeque<squeue::Entry>,
    /// Receive slots whose CQE arrived and whose data is not yet delivered: (key, result).
    rx_ready: VecDeque<(usize, i32)>,
    /// Sends waiting for a free slot (send depth) or a retry, oldest first.
    tx_queue: VecDeque<(TxMeta, Vec<u8>)>,
    tx_inflight: usize,
    tx_pool: Vec<Vec<u8>>,
    send_depth: usize,
    /// Descriptors with socket operations in flight (or a Close waiting for them).
    sock_fds: HashMap<RawFd, sock::FdState>,
    /// UDP session sockets from `udp_open` (or adopted) until `sock_close`: fd → IPv6
    /// (dual-stack).
    udp_fds: HashMap<RawFd, bool>,
    /// Adopted sockets other than UDP (listeners) until `sock_close`.
    listen_fds: HashSet<RawFd>,
    sock_done: VecDeque<Completion>,
    cqes: Vec<(u64, i32)>,
    stats: EngineStats,
}

// SAFETY: the raw pointers in `ops` (KBox) point at heap memory owned exclusively by this
// driver; nothing is shared with other threads, so moving the driver moves the ownership.
// (With a single-issuer ring, the ring must then be used from one thread: see `wait`.)
unsafe impl Send for UringDriver {}

/// Sets up a ring: single issuer + cooperative, deferred task work when the kernel accepts
/// them (R_DISABLED so the worker thread, not the creating one, becomes the issuer), plain
/// otherwise. Returns the ring and whether it is already enabled.
fn build_ring(entries: u32) -> io::Result<(IoUring, bool)> {
    let fast = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_defer_taskrun()
        .setup_r_disabled()
        .build(entries);
    match fast {
        Ok(ring) => Ok((ring, false)),
        Err(e) => {
            tracing::debug!("io_uring with single issuer/deferred task run refused ({e})");
            Ok((IoUring::new(entries)?, true))
        }
    }
}

/// Whether io_uring works here: creates and drops a tiny ring.
pub fn probe() -> io::Result<()> {
    IoUring::new(4).map(drop)
}

/// Errors of `io_uring_enter` that only mean "nothing (more) to do right now".
fn benign_enter_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
    )
}

impl UringDriver {
    pub fn new(socket: UdpSocket, cfg: &DriverConfig) -> io::Result<Self> {
        let (ring, enabled) = build_ring(cfg.ring_entries.max(8))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_EXT_ARG (kernel older than 5.11)",
            ));
        }
        // io_uring polls the socket itself; non-blocking keeps direct syscalls safe.
        socket.set_nonblocking(true)?;
        let fd = socket.as_raw_fd();
        let local = socket.local_addr()?;
        if cfg.gro {
            sys::enable_gro(fd);
        }
        let gso = cfg.gso && sys::gso_supported(fd);
        let mut d = UringDriver {
            ring,
            enabled,
            socket,
            previous: None,
            local,
            v6: local.is_ipv6(),
            gro: cfg.gro,
            recv_depth: cfg.recv_depth.max(1),
            waker: Waker::new()?,
            wake_by_poll: false,
            gso,
            inject_gso_failure: cfg.inject_gso_failure,
            ops: Slab::new(),
            backlog: VecDeque::new(),
            rx_ready: VecDeque::new(),
            tx_queue: VecDeque::new(),
            tx_inflight: 0,
            tx_pool: Vec::new(),
            send_depth: cfg.send_depth.max(1),
            sock_fds: HashMap::new(),
            udp_fds: HashMap::new(),
            listen_fds: HashSet::new(),
            sock_done: VecDeque::new(),
            cqes: Vec::new(),
            stats: EngineStats::default(),
        };
        for _ in 0..d.recv_depth {
            let key = d.ops.insert(Op::UdpRecv(KBox::new(udp::RecvSlot::new(fd))));
            d.arm_recv(key);
        }
        let key = d.ops.insert(Op::Wake(KBox::new(0)));
        d.arm_wake(key);
        Ok(d)
    }

    /// Queues an SQE; it reaches the kernel at the next `wait`.
    fn push(&mut self, e: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: every pointer in the SQEs this driver builds refers to memory owned by
            // the operation's slab entry (or to the driver's socket), kept until its CQE.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(e);
    }

    /// Moves the backlog into the submission queue, submitting whenever it fills up.
    fn submit_backlog(&mut self) -> io::Result<()> {
        while !self.backlog.is_empty() {
            {
                let mut sq = self.ring.submission();
                while let Some(e) = self.backlog.front() {
                    // SAFETY: as in `push`.
                    if unsafe { sq.push(e) }.is_err() {
                        break;
                    }
                    self.backlog.pop_front();
                }
            }
            if !self.backlog.is_empty() {
                match self.ring.submit() {
                    Ok(_) => {}
                    Err(e) if benign_enter_error(&e) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn enable(&mut self) -> io::Result<()> {
        if !self.enabled {
            self.ring.submitter().register_enable_rings()?;
            self.enabled = true;
        }
        Ok(())
    }

    fn arm_wake(&mut self, key: usize) {
        let Some(Op::Wake(counter)) = self.ops.get(key) else {
            return;
        };
        let fd = types::Fd(self.waker.fd());
        let e = if self.wake_by_poll {
            opcode::PollAdd::new(fd, libc::POLLIN as u32).build()
        } else {
            // The slab entry owns the 8-byte counter the kernel writes until the CQE.
            opcode::Read::new(fd, counter.ptr().cast(), 8).build()
        };
        self.push(e.user_data(key as u64));
    }

    fn wake_done(&mut self, key: usize, res: i32) {
        if res == -libc::EAGAIN && !self.wake_by_poll {
            self.wake_by_poll = true;
        } else if res >= 0 {
            if self.wake_by_poll {
                self.waker.drain();
            }
            self.stats.wakeups += 1;
        }
        self.arm_wake(key);
    }

    /// Takes every CQE off the ring and files it: UDP receives into `rx_ready`, TCP
    /// completions into `sock_done`; sends and wakeups are handled here.
    fn drain_cq(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            if ud == IGNORE {
                continue;
            }
            let key = ud as usize;
            match self.ops.get(key) {
                None => {}
                Some(Op::UdpRecv(_)) if res < 0 => {
                    // ICMP errors (ECONNREFUSED etc.) are not ours to act on.
                    tracing::trace!("UDP receive error: {}", io::Error::from_raw_os_error(-res));
                    self.arm_recv(key);
                }
                Some(Op::UdpRecv(_)) => self.rx_ready.push_back((key, res)),
                Some(Op::Wake(_)) => self.wake_done(key, res),
                Some(Op::UdpSend(_)) => {
                    if let Op::UdpSend(slot) = self.ops.remove(key) {
                        self.tx_inflight -= 1;
                        // SAFETY: this CQE ends the send; the kernel is done with the slot.
                        let slot = unsafe { slot.take() };
                        self.send_done(slot, res);
                    }
                }
                Some(Op::Sock(_)) => {
                    if let Op::Sock(op) = self.ops.remove(key) {
                        self.sock_complete(op, res);
                    }
                }
            }
        }
        cqes.clear();
        self.cqes = cqes;
    }
}

impl super::Driver for UringDriver {
    fn kind(&self) -> IoKind {
        IoKind::Uring
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn gso_enabled(&self) -> bool {
        self.gso
    }

    fn send(&mut self, meta: TxMeta, buf: Vec<u8>) {
        self.tx_queue.push_back((meta, buf));
        self.flush_tx();
    }

    fn can_send(&self) -> bool {
        self.tx_inflight + self.tx_queue.len() < self.send_depth
    }

    fn tx_buf(&mut self) -> Vec<u8> {
        self.tx_pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(super::GRO_BUF_SIZE))
    }

    /// The first call enables a single-issuer ring for the calling thread: from then on the
    /// driver must stay on that thread (the kernel refuses other submitters with EEXIST).
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.enable()?;
        self.flush_tx();
        self.submit_backlog()?;
        let pending = !self.rx_ready.is_empty()
            || !self.sock_done.is_empty()
            || !self.ring.completion().is_empty();
        let timeout = if pending {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let r = match timeout {
            None => self.ring.submitter().submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Err(e) if !benign_enter_error(&e) => Err(e),
            _ => Ok(()),
        }
    }

    fn reap(&mut self, max_udp: usize, on: &mut dyn FnMut(Event)) -> usize {
        self.drain_cq();
        while let Some(c) = self.sock_done.pop_front() {
            on(Event::Sock(c));
        }
        let mut delivered = 0;
        while delivered < max_udp {
            let Some((key, res)) = self.rx_ready.pop_front() else {
                break;
            };
            if self.deliver(key, res, on) {
                delivered += 1;
            }
            self.arm_recv(key);
        }
        // Completed sends freed slots: start what was waiting for one.
        self.flush_tx();
        delivered
    }

    fn waker(&self) -> Waker {
        self.waker.clone()
    }

    fn stats(&self) -> EngineStats {
        self.stats
    }

    fn tcp_connect(&mut self, addr: SocketAddr, egress: &Egress, token: Token) -> io::Result<Sock> {
        self.connect(addr, egress, token).map(Sock::from_fd)
    }

    fn tcp_recv(&mut self, sock: Sock, buf: Vec<u8>, token: Token) {
        self.recv(sock.fd(), buf, token);
    }

    fn tcp_send(&mut self, sock: Sock, buf: Vec<u8>, token: Token) {
        self.send_tcp(sock.fd(), buf, token);
    }

    fn udp_open(&mut self, bind: SocketAddr, device: Option<&str>) -> io::Result<Sock> {
        self.open_udp(bind, device).map(Sock::from_fd)
    }

    fn udp_recv_from(&mut self, sock: Sock, buf: Vec<u8>, token: Token) {
        self.recv_from(sock.fd(), buf, token);
    }

    fn udp_send_to(&mut self, sock: Sock, dest: SocketAddr, buf: Vec<u8>, token: Token) {
        self.send_to(sock.fd(), dest, buf, token);
    }

    fn adopt(&mut self, sock: OwnedFd) -> io::Result<Sock> {
        self.adopt_sock(sock).map(Sock::from_fd)
    }

    fn tcp_accept(&mut self, listener: Sock, token: Token) {
        self.accept(listener.fd(), token);
    }

    fn sock_close(&mut self, sock: Sock, token: Token) {
        self.close(sock.fd(), token);
    }

    fn rebind(&mut self, socket: UdpSocket) -> io::Result<()> {
        self.rebind_udp(socket)
    }
}

impl UringDriver {
    /// Closes the UDP session and adopted sockets still open (the driver owns them until
    /// `sock_close`).
    fn close_udp_sessions(&mut self) {
        let fds = self.udp_fds.drain().map(|(fd, _)| fd);
        for fd in fds.chain(self.listen_fds.drain()) {
            // SAFETY: `udp_open` created (or `adopt` took) this fd and the relay never
            // closed it; an operation the kernel still holds keeps its own reference to
            // the socket.
            unsafe { libc::close(fd) };
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // SQEs still in the backlog never reached the kernel: their memory is ours.
        for e in std::mem::take(&mut self.backlog) {
            if let Some(op) = self.ops.try_remove(e.get_user_data() as usize) {
                // SAFETY: never submitted.
                unsafe { op.free() };
            }
        }
        if !self.enabled {
            // A disabled ring accepts no submissions: the kernel has seen none of our SQEs.
            for op in self.ops.drain() {
                // SAFETY: never submitted.
                unsafe { op.free() };
            }
            self.close_udp_sessions();
            return;
        }
        self.push(
            opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(IGNORE),
        );
        let deadline = Instant::now() + DROP_WAIT;
        while !self.ops.is_empty() && Instant::now() < deadline {
            if self.submit_backlog().is_err() {
                break;
            }
            let ts = types::Timespec::from(Duration::from_millis(50));
            let args = types::SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                if !benign_enter_error(&e) {
                    break; // e.g. EEXIST: dropped on a thread that may not use this ring
                }
            }
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for ud in done {
                if let Some(op) = self.ops.try_remove(ud as usize) {
                    // SAFETY: its CQE has just been reaped.
                    unsafe { op.free() };
                }
            }
        }
        if !self.ops.is_empty() {
            tracing::warn!(
                "io_uring driver dropped with {} operations still in the kernel; leaking them",
                self.ops.len()
            );
        }
        // The kernel may still write these: leak them (KBox leaks; Vec and fds must not drop).
        for op in self.ops.drain() {
            std::mem::forget(op);
        }
        self.close_udp_sessions();
    }
}
