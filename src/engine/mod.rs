//! The I/O engine: the only module with `unsafe`, libc and io_uring.
//!
//! A [`Driver`] owns one UDP socket (a member of a SO_REUSEPORT group on the server) and the
//! relay's outbound sockets: TCP connections and the UDP sockets of relayed UDP sessions,
//! plus sockets bound elsewhere that it adopts (TCP listeners and their accepted
//! connections, forwarders' UDP sockets).
//! Two drivers share one interface:
//! - `uring::UringDriver`: io_uring, kernel-owned buffers in a slab until completion;
//! - `epoll::EpollDriver`: plain non-blocking syscalls on epoll, for hosts that refuse
//!   io_uring (EPERM, ENOSYS, Docker's seccomp profile).
//!
//! Both keep GSO on send and GRO on receive: they are the first lever for throughput
//! (DESIGN.md, measured facts). The worker calls, once per loop iteration:
//! `wait(timeout)`, then `reap(max, ..)`, then `send(..)` while `can_send()`.

mod bpf;
mod epoll;
mod sys;
mod uring;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

pub use bpf::{steer_group, WORKER_OFFSET};
pub use sys::{
    bind_udp, bind_udp_with, cpu_seconds_self, kill_process_group, BufferReport, SockOpts, Waker,
};

/// Largest UDP payload a GRO receive can coalesce (64 KiB minus headers).
pub const GRO_BUF_SIZE: usize = 65_535;
/// Receive buffers the kernel writes into and the worker then owns, so datagrams reach
/// quinn-proto without a copy.
///
/// Each receive is split off the front of a 64 KiB allocation (`take`), and quinn-proto keeps
/// slices of it for stream data not yet read. The next receive reuses an allocation once
/// nothing points into it any more, which is at once for ACKs and as soon as the relay read
/// a batch's stream data. While data stays unread (a slow target, a gap the peer never
/// fills), whole allocations stay pinned by small slices: at most [`RX_PINNED_MAX`] per
/// buffer. Past that, receives land in a scratch allocation and [`RxData::copy`] tells the
/// worker to copy each datagram out, so what a peer can make us hold stays proportional to
/// what it sent.
#[derive(Default)]
pub(crate) struct RxBuf {
    cur: bytes::BytesMut,
    /// Earlier allocations something still pointed into when they were last looked at.
    pinned: Vec<bytes::BytesMut>,
    scratch: bytes::BytesMut,
    in_scratch: bool,
}

/// Allocations one [`RxBuf`] may leave pinned before it falls back to copying.
pub(crate) const RX_PINNED_MAX: usize = 4;

/// One receive's bytes, as [`Event::Udp`] hands them over.
pub struct RxData {
    pub data: bytes::BytesMut,
    /// The bytes sit in a driver's scratch buffer: copy each datagram out instead of
    /// keeping slices of `data`.
    pub copy: bool,
}

impl RxBuf {
    /// Room for one receive of up to [`GRO_BUF_SIZE`] bytes: pointer and length to hand to
    /// the kernel. It stays valid until `take` or the next `room`.
    pub(crate) fn room(&mut self) -> (*mut u8, usize) {
        self.in_scratch = false;
        if !self.cur.try_reclaim(GRO_BUF_SIZE) {
            let free = self
                .pinned
                .iter_mut()
                .position(|b| b.try_reclaim(GRO_BUF_SIZE));
            let next = match free {
                Some(i) => Some(self.pinned.swap_remove(i)),
                None if self.pinned.len() < RX_PINNED_MAX || self.cur.capacity() == 0 => {
                    Some(bytes::BytesMut::with_capacity(GRO_BUF_SIZE))
                }
                None => None,
            };
            match next {
                Some(next) => {
                    let old = std::mem::replace(&mut self.cur, next);
                    if old.capacity() > 0 {
                        self.pinned.push(old);
                    }
                }
                None => self.in_scratch = true,
            }
        }
        let buf = if self.in_scratch {
            self.scratch.reserve(GRO_BUF_SIZE);
            &mut self.scratch
        } else {
            &mut self.cur
        };
        (buf.spare_capacity_mut().as_mut_ptr().cast(), GRO_BUF_SIZE)
    }

    /// The `len` bytes the kernel wrote into the last `room`.
    ///
    /// # Safety
    /// The kernel (or the caller) initialised the first `len` bytes of the last `room`, and
    /// `len <= GRO_BUF_SIZE`.
    pub(crate) unsafe fn take(&mut self, len: usize) -> RxData {
        let buf = if self.in_scratch {
            &mut self.scratch
        } else {
            &mut self.cur
        };
        debug_assert!(buf.is_empty() && len <= buf.capacity());
        // SAFETY: by the caller, the first `len` bytes of the spare room are initialised.
        unsafe { buf.set_len(len) };
        RxData {
            data: buf.split(),
            copy: self.in_scratch,
        }
    }
}

/// Most segments one GSO `sendmsg` may carry (kernel `UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Which driver runs a worker's I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Uring,
    Epoll,
}

impl std::fmt::Display for IoKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoKind::Uring => "io_uring",
            IoKind::Epoll => "epoll",
        })
    }
}

impl std::str::FromStr for IoKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uring" | "io_uring" => Ok(IoKind::Uring),
            "epoll" => Ok(IoKind::Epoll),
            _ => Err(format!(
                "unknown I/O driver {s:?} (expected uring or epoll)"
            )),
        }
    }
}

/// What a driver knows about one received GRO batch (or single datagram).
#[derive(Clone, Copy, Debug)]
pub struct RecvMeta {
    /// Sender; IPv4-mapped IPv6 addresses are reported as IPv4.
    pub peer: SocketAddr,
    /// Total bytes in the batch.
    pub len: usize,
    /// Size of each datagram in the batch (the last may be shorter); `len` when not coalesced.
    pub stride: usize,
    /// ECN bits (low two bits of TOS / traffic class).
    pub ecn: u8,
    /// Local address the batch was sent to (IP_PKTINFO / IPV6_PKTINFO).
    pub dst_ip: Option<IpAddr>,
}

impl RecvMeta {
    /// Number of datagrams coalesced in this batch.
    pub fn segments(&self) -> usize {
        if self.stride == 0 {
            0
        } else {
            self.len.div_ceil(self.stride)
        }
    }
}

/// How to send one buffer: a single datagram, or a GSO batch of `segment_size` segments.
#[derive(Clone, Copy, Debug)]
pub struct TxMeta {
    pub dest: SocketAddr,
    /// Source address to send from (multi-homed hosts); `None` lets the kernel pick.
    pub src_ip: Option<IpAddr>,
    /// ECN bits to set.
    pub ecn: u8,
    /// `Some(s)` when the buffer holds several datagrams of `s` bytes (the last may be shorter).
    pub segment_size: Option<usize>,
}

/// How an outgoing socket is set up before it connects or sends (an outbound's
/// `bindIPv4`/`bindIPv6`, `bindDevice`, `fastOpen`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Egress {
    /// Source address (port 0), of the destination's family.
    pub bind: Option<std::net::IpAddr>,
    /// Network device (SO_BINDTODEVICE).
    pub device: Option<std::sync::Arc<str>>,
    /// TCP Fast Open (TCP_FASTOPEN_CONNECT): the connect completes at once and the SYN
    /// leaves with the first write.
    pub fast_open: bool,
}

/// A socket the driver owns: one it opened (`tcp_connect`, `udp_open`), accepted or
/// adopted. Only the engine sees the descriptor behind it; callers pass it back to the
/// driver that handed it out, until [`Driver::sock_close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sock(RawFd);

impl Sock {
    pub(in crate::engine) fn from_fd(fd: RawFd) -> Sock {
        Sock(fd)
    }

    pub(in crate::engine) fn fd(self) -> RawFd {
        self.0
    }
}

/// What a caller attaches to a socket operation and gets back with its [`Completion`]:
/// a kind (4 bits, each caller maps its own enum to it) and an id (60 bits: a slab key, a
/// serial number, whatever the caller uses to find the operation's owner again).
///
/// The same layout for every caller; the engine never looks inside.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(u64);

impl Token {
    /// Number of distinct kinds.
    pub const KINDS: u8 = 1 << Self::KIND_BITS;
    /// Largest id a token can carry.
    pub const ID_MAX: u64 = (1 << (64 - Self::KIND_BITS)) - 1;
    const KIND_BITS: u32 = 4;

    /// A token of `kind` (below [`Token::KINDS`]) and `id` (at most [`Token::ID_MAX`]).
    /// Both are the caller's own constants and counters, never input: a value out of range
    /// is a bug and panics.
    pub const fn new(kind: u8, id: u64) -> Token {
        assert!(kind < Self::KINDS, "token kind out of range");
        assert!(id <= Self::ID_MAX, "token id out of range");
        Token(((kind as u64) << (64 - Self::KIND_BITS)) | id)
    }

    pub const fn kind(self) -> u8 {
        (self.0 >> (64 - Self::KIND_BITS)) as u8
    }

    pub const fn id(self) -> u64 {
        self.0 & Self::ID_MAX
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}:{})", self.kind(), self.id())
    }
}

/// A socket operation the driver performs on behalf of the relay (TCP connections and UDP
/// session sockets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockOp {
    /// Result: 0; `sock` is the socket `tcp_connect` returned, now connected.
    Connect,
    /// Result: bytes read into the buffer (0 = EOF).
    Recv,
    /// Result: bytes written from the buffer.
    Send,
    /// Result: the datagram's length, all of it in the buffer; `peer` is its source.
    RecvFrom,
    /// Result: bytes sent (the whole datagram).
    SendTo,
    /// Result: 0.
    Close,
    /// Result: 0; `accepted`: the new socket (non-blocking, CLOEXEC, TCP_NODELAY set,
    /// owned by the driver until `sock_close`); `peer`: its remote address (IPv4-mapped
    /// IPv6 reported as IPv4).
    Accept,
}

/// Completion of a socket operation; `buf` is the buffer handed to the driver, returned.
#[derive(Debug)]
pub struct Completion {
    pub token: Token,
    pub op: SockOp,
    /// The socket the operation ran on (for `Accept`, the listener).
    pub sock: Sock,
    pub result: io::Result<usize>,
    pub buf: Vec<u8>,
    /// `RecvFrom`: the datagram's source, `Accept`: the connection's remote address (both
    /// with IPv4-mapped IPv6 reported as IPv4); `None` for every other operation and for
    /// failures.
    pub peer: Option<SocketAddr>,
    /// `Accept`: the accepted socket; `None` for every other operation and for failures.
    pub accepted: Option<Sock>,
}

/// Something a driver reports from `reap`.
pub enum Event {
    /// Received UDP data: `data.len() == meta.len`, split by `meta.stride`. The buffer is
    /// the caller's: split it and hand the pieces on (or copy them, see [`RxData::copy`]).
    Udp { meta: RecvMeta, rx: RxData },
    /// A [`SockOp`] finished.
    Sock(Completion),
}

/// Counters a driver keeps (plain, owned by its worker; published by the worker).
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    /// Receive completions (syscalls or CQEs) that carried data.
    pub rx_batches: u64,
    /// Datagrams received (GRO segments counted one by one).
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    /// Batches that held more than one datagram.
    pub rx_gro_batches: u64,
    /// `sendmsg` calls (or SQEs) that completed.
    pub tx_calls: u64,
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    /// Sends that carried a UDP_SEGMENT control message.
    pub tx_gso_batches: u64,
    /// Sends that failed and were dropped (QUIC retransmits).
    pub tx_errors: u64,
    /// Times GSO was switched off after EIO/EINVAL (0 or 1 per socket).
    pub gso_disabled: u64,
    /// Wakeups from other threads.
    pub wakeups: u64,
}

/// Receive and send buffer of a UDP session socket: a few hundred full-size datagrams,
/// enough for a burst, small enough for thousands of sessions per worker.
pub const SESSION_SOCKET_BUFFER: usize = 1 << 20;

/// Options shared by both drivers.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Socket receive/send buffer sizes to ask for.
    pub socket_buffer: usize,
    /// Use GSO on send when the kernel supports it.
    pub gso: bool,
    /// Ask for GRO on receive.
    pub gro: bool,
    /// Testing: report the first GSO send as failed with EIO, to exercise the fallback.
    pub inject_gso_failure: bool,
    /// io_uring: submission queue entries.
    pub ring_entries: u32,
    /// io_uring: receives kept posted at once.
    pub recv_depth: usize,
    /// Sends in flight (io_uring) or queued (epoll) before `can_send` says no.
    pub send_depth: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            // 16 MiB absorbs a GSO burst of several connections while the worker is busy.
            socket_buffer: 16 << 20,
            gso: true,
            gro: true,
            inject_gso_failure: false,
            ring_entries: 256,
            // Enough 64 KiB GRO buffers to cover one loop iteration at line rate.
            recv_depth: 16,
            send_depth: 64,
        }
    }
}

/// A worker's I/O: one UDP socket plus the relay's socket operations, on io_uring or epoll.
///
/// Socket operations complete through `reap` as [`Event::Sock`], each carrying back its
/// buffer and `token`. Several may be pending on one socket; their completion order is only
/// promised by epoll, so a TCP stream should keep one receive and one send at a time.
pub trait Driver: Send {
    fn kind(&self) -> IoKind;
    fn local_addr(&self) -> SocketAddr;
    /// Whether GSO is in use on the UDP socket right now.
    fn gso_enabled(&self) -> bool;
    /// Queues a UDP send. `buf` comes from [`Driver::tx_buf`] (or anywhere) and is recycled.
    fn send(&mut self, meta: TxMeta, buf: Vec<u8>);
    /// Room for another `send` right now.
    fn can_send(&self) -> bool;
    /// A cleared buffer for the next transmit, recycled from completed sends.
    fn tx_buf(&mut self) -> Vec<u8>;
    /// Hands queued work to the kernel, then blocks until something completes, a wakeup
    /// arrives, or `timeout` passes (`None`: no limit; `Some(ZERO)`: do not block).
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// Delivers completed work: at most `max_udp` UDP batches, and all socket completions.
    /// Returns the number of UDP batches delivered.
    fn reap(&mut self, max_udp: usize, on: &mut dyn FnMut(Event)) -> usize;
    /// A handle other threads use to end a `wait` early.
    fn waker(&self) -> Waker;
    fn stats(&self) -> EngineStats;
    /// Starts a non-blocking TCP connect; completes with `SockOp::Connect`. Returns the
    /// socket, which is the caller's from now on whatever the outcome: it always ends
    /// with `sock_close`. A close while the connect is pending cancels it (the Connect
    /// completes with ECANCELED, then the Close), so a target that never answers holds no
    /// socket past the caller's own timeout.
    /// `egress`: the source address, device and fast open of the socket.
    fn tcp_connect(&mut self, addr: SocketAddr, egress: &Egress, token: Token) -> io::Result<Sock>;
    /// Reads into `buf` (its spare capacity up to `buf.capacity()`; contents replaced).
    fn tcp_recv(&mut self, sock: Sock, buf: Vec<u8>, token: Token);
    /// Writes all of `buf` (or part; the completion says how much).
    fn tcp_send(&mut self, sock: Sock, buf: Vec<u8>, token: Token);
    /// Half-closes a TCP socket for writing (the peer reads EOF; replies still arrive).
    /// Synchronous; call it when no send on `sock` is in flight.
    fn tcp_shutdown_write(&mut self, sock: Sock) {
        let _ = sys::shutdown_write(sock.fd());
    }
    /// Opens a non-blocking UDP socket bound to `bind` (port 0: ephemeral; an IPv6 address
    /// makes it dual-stack) with [`SESSION_SOCKET_BUFFER`] buffers, for one relayed UDP
    /// session. Synchronous. The socket belongs to the driver until [`Driver::sock_close`].
    /// `device`: bound to that network device (SO_BINDTODEVICE).
    fn udp_open(&mut self, bind: SocketAddr, device: Option<&str>) -> io::Result<Sock>;
    /// Receives one datagram into `buf` (up to `buf.capacity()`; contents replaced);
    /// completes with `SockOp::RecvFrom` and the source in `peer`. A datagram longer than
    /// the capacity is dropped and reported as EMSGSIZE.
    fn udp_recv_from(&mut self, sock: Sock, buf: Vec<u8>, token: Token);
    /// Sends `buf` as one datagram to `dest` (an IPv4 `dest` from a dual-stack socket is
    /// mapped); completes with `SockOp::SendTo`.
    fn udp_send_to(&mut self, sock: Sock, dest: SocketAddr, buf: Vec<u8>, token: Token);
    /// Takes ownership of a socket bound elsewhere (a listening TCP socket, or a bound UDP
    /// socket such as a forwarder's SO_REUSEPORT socket): makes it non-blocking and from now
    /// on treats it like its own sockets (`tcp_accept`, `udp_recv_from`/`udp_send_to` for
    /// UDP, `tcp_recv`/`tcp_send`, `sock_close`). Returns its [`Sock`]. For UDP the family is
    /// found with getsockname (an IPv6 socket maps IPv4 destinations, as `udp_open` sockets
    /// do).
    /// Synchronous; an error closes the socket.
    fn adopt(&mut self, sock: std::os::fd::OwnedFd) -> io::Result<Sock>;
    /// Accepts one connection on an adopted listening socket; completes with
    /// `SockOp::Accept`. Errors (EMFILE, ENFILE, ECONNABORTED, ...) complete with `Err` and
    /// the listener stays usable; the caller posts the next accept.
    fn tcp_accept(&mut self, listener: Sock, token: Token);
    /// Closes a socket this driver handed out or adopted (TCP or UDP): first completes the
    /// operations pending on it with ECANCELED, then itself with `SockOp::Close`.
    fn sock_close(&mut self, sock: Sock, token: Token);
    /// Port hopping: from now on `send` leaves from `socket` (a new local port, bound like
    /// the first with [`bind_udp`], of the same family). The socket it replaces keeps
    /// receiving, reported like the current one, until the next `rebind` closes it: at most
    /// two are open, so replies already on their way to the old port still arrive.
    fn rebind(&mut self, socket: std::net::UdpSocket) -> io::Result<()>;
}

/// Opens a driver on an already bound UDP socket.
///
/// `kind = None` tries io_uring first and falls back to epoll with a log line saying why.
pub fn open(
    socket: std::net::UdpSocket,
    kind: Option<IoKind>,
    cfg: &DriverConfig,
) -> io::Result<Box<dyn Driver>> {
    match kind {
        Some(IoKind::Epoll) => Ok(Box::new(epoll::EpollDriver::new(socket, cfg)?)),
        Some(IoKind::Uring) => Ok(Box::new(uring::UringDriver::new(socket, cfg)?)),
        None => {
            let fallback = socket.try_clone()?;
            match uring::UringDriver::new(socket, cfg) {
                Ok(d) => Ok(Box::new(d)),
                Err(e) => {
                    tracing::warn!(
                        "io_uring unavailable ({e}); using the epoll driver \
                         (run `quelay doctor` to see why)"
                    );
                    Ok(Box::new(epoll::EpollDriver::new(fallback, cfg)?))
                }
            }
        }
    }
}

/// What the kernel grants a UDP socket set up as a worker's: offloads and buffer sizes.
#[derive(Clone, Copy, Debug)]
pub struct UdpFeatures {
    /// The kernel accepts UDP_SEGMENT (GSO) on the socket.
    pub gso: bool,
    /// UDP_GRO could be switched on.
    pub gro: bool,
    pub buffers: BufferReport,
}

/// Binds a UDP socket to `addr` the way workers do (asking for `buffer` bytes of buffers),
/// reports what the kernel granted, and closes it.
pub fn probe_udp(addr: SocketAddr, buffer: usize) -> io::Result<UdpFeatures> {
    use std::os::fd::AsRawFd;
    let (sock, buffers) = sys::bind_udp(addr, false, buffer)?;
    let fd = sock.as_raw_fd();
    Ok(UdpFeatures {
        gso: sys::gso_supported(fd),
        gro: sys::enable_gro(fd),
        buffers,
    })
}

/// Probes whether io_uring can be used on this host, and why not.
pub fn uring_available() -> Result<(), String> {
    uring::probe().map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => format!(
            "io_uring refused: {e} (kernel.io_uring_disabled, a seccomp profile such as \
             Docker's default, or RLIMIT_MEMLOCK)"
        ),
        Some(libc::ENOSYS) => format!("io_uring not in this kernel: {e}"),
        _ => format!("io_uring setup failed: {e}"),
    })
}
