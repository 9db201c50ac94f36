//! The fallback driver: non-blocking syscalls on epoll, for hosts where io_uring is
//! refused. GSO and GRO are kept: they matter more than io_uring (DESIGN.md).
//!
//! UDP receives use `recvmmsg` into 64 KiB GRO buffers; sends go out at once with
//! `sendmsg` and are queued only when the socket buffer is full. The relay's socket
//! operations (`sock.rs`) are tried at once and parked on readiness when they would block.

mod sock;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::sys::{self, CmsgBuf, RawAddr, Waker, RX_CMSG_SPACE, TX_CMSG_SPACE};
use super::{
    Completion, DriverConfig, Egress, EngineStats, Event, IoKind, RxBuf, Sock, SockOp, Token,
    TxMeta, GRO_BUF_SIZE,
};
use sock::Parked;

/// epoll tokens for our fixed descriptors; relay sockets use their fd.
const TOKEN_UDP: u64 = u64::MAX;
const TOKEN_WAKE: u64 = u64::MAX - 1;
/// The UDP socket a `rebind` replaced, still receiving.
const TOKEN_UDP_PREVIOUS: u64 = u64::MAX - 2;
/// Datagram batches read per `recvmmsg`.
const RX_BATCH: usize = 8;

pub struct EpollDriver {
    socket: UdpSocket,
    /// The socket `rebind` replaced, still receiving until the next `rebind`, and whether
    /// it may have data.
    previous: Option<(UdpSocket, bool)>,
    v6: bool,
    gro: bool,
    epfd: OwnedFd,
    waker: Waker,
    gso: bool,
    inject_gso_failure: bool,
    /// The UDP socket reported readable and has not yet returned EAGAIN.
    udp_readable: bool,
    /// Sends waiting for socket buffer space, oldest first.
    tx_queue: VecDeque<(TxMeta, Vec<u8>)>,
    tx_pool: Vec<Vec<u8>>,
    send_depth: usize,
    rx_bufs: Vec<RxBuf>,
    rx_names: Vec<RawAddr>,
    rx_cmsgs: Vec<CmsgBuf<RX_CMSG_SPACE>>,
    /// The relay's sockets with pending work (TCP), handed out by `udp_open` or an Accept,
    /// or adopted.
    socks: HashMap<RawFd, sock::SockState>,
    sock_done: VecDeque<Completion>,
    stats: EngineStats,
}

impl EpollDriver {
    pub fn new(socket: UdpSocket, cfg: &DriverConfig) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let fd = socket.as_raw_fd();
        let v6 = socket.local_addr()?.is_ipv6();
        if cfg.gro {
            sys::enable_gro(fd);
        }
        let gso = cfg.gso && sys::gso_supported(fd);
        // SAFETY: plain syscall; the fd is owned by the OwnedFd below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `ep` is a fresh descriptor nobody else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(ep) };
        let waker = Waker::new()?;
        epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, TOKEN_UDP)?;
        epoll_ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            waker.fd(),
            libc::EPOLLIN as u32,
            TOKEN_WAKE,
        )?;
        Ok(EpollDriver {
            socket,
            previous: None,
            v6,
            gro: cfg.gro,
            epfd,
            waker,
            gso,
            inject_gso_failure: cfg.inject_gso_failure,
            udp_readable: true,
            tx_queue: VecDeque::new(),
            tx_pool: Vec::new(),
            send_depth: cfg.send_depth.max(1),
            rx_bufs: (0..RX_BATCH).map(|_| RxBuf::default()).collect(),
            rx_names: vec![RawAddr::zeroed(); RX_BATCH],
            rx_cmsgs: vec![CmsgBuf::new(); RX_BATCH],
            socks: HashMap::new(),
            sock_done: VecDeque::new(),
            stats: EngineStats::default(),
        })
    }

    /// Tries to send one buffer now. `Err(WouldBlock)` means "queue it and retry".
    fn try_send(&mut self, meta: &TxMeta, buf: &[u8]) -> io::Result<()> {
        let gso_batch = meta.segment_size.is_some_and(|s| s < buf.len());
        if gso_batch && self.gso && self.inject_gso_failure {
            self.inject_gso_failure = false;
            return self.gso_failed(meta, buf, io::Error::from_raw_os_error(libc::EIO));
        }
        if gso_batch && !self.gso {
            for seg in sys::segments(buf, meta.segment_size) {
                let single = TxMeta {
                    segment_size: None,
                    ..*meta
                };
                self.sendmsg(&single, seg)?;
            }
            return Ok(());
        }
        match self.sendmsg(meta, buf) {
            Err(e) if gso_batch && sys::is_gso_error(&e) => self.gso_failed(meta, buf, e),
            r => r,
        }
    }

    fn gso_failed(&mut self, meta: &TxMeta, buf: &[u8], e: io::Error) -> io::Result<()> {
        tracing::warn!(
            "GSO send failed on {} ({e}); GSO is now off for this socket",
            self.local_addr_str()
        );
        self.gso = false;
        self.stats.gso_disabled += 1;
        self.try_send(meta, buf)
    }

    fn local_addr_str(&self) -> String {
        self.socket
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    fn sendmsg(&mut self, meta: &TxMeta, buf: &[u8]) -> io::Result<()> {
        let mut name = RawAddr::new(meta.dest, self.v6);
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut cmsg = CmsgBuf::<TX_CMSG_SPACE>::new();
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = &mut name.storage as *mut _ as *mut libc::c_void;
        hdr.msg_namelen = name.len;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        // SAFETY: `hdr` points at `name`, `iov` (over `buf`) and `cmsg`, all alive until
        // sendmsg returns; the kernel copies the data.
        let rc = unsafe {
            sys::encode_tx_cmsgs(&mut hdr, &mut cmsg, meta, self.v6, self.gso);
            libc::sendmsg(self.socket.as_raw_fd(), &hdr, 0)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.stats.tx_calls += 1;
        self.stats.tx_bytes += buf.len() as u64;
        let segs = match meta.segment_size {
            Some(s) if self.gso && s < buf.len() => {
                self.stats.tx_gso_batches += 1;
                buf.len().div_ceil(s)
            }
            _ => 1,
        };
        self.stats.tx_datagrams += segs as u64;
        Ok(())
    }

    /// Sends queued buffers until the socket would block.
    fn flush(&mut self) {
        while let Some((meta, buf)) = self.tx_queue.pop_front() {
            match self.try_send(&meta, &buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tx_queue.push_front((meta, buf));
                    break;
                }
                Err(e) => {
                    self.stats.tx_errors += 1;
                    tracing::debug!("UDP send to {} failed: {e}", meta.dest);
                    self.recycle(buf);
                }
                Ok(()) => self.recycle(buf),
            }
        }
        let want = if self.tx_queue.is_empty() {
            libc::EPOLLIN as u32
        } else {
            (libc::EPOLLIN | libc::EPOLLOUT) as u32
        };
        let _ = epoll_ctl(
            self.epfd.as_raw_fd(),
            libc::EPOLL_CTL_MOD,
            self.socket.as_raw_fd(),
            want,
            TOKEN_UDP,
        );
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.tx_pool.len() < self.send_depth {
            buf.clear();
            self.tx_pool.push(buf);
        }
    }

    /// One `recvmmsg` on `fd` (the current socket or the previous one). Returns the batches
    /// delivered and whether the socket may hold more.
    fn recv_batch(&mut self, fd: RawFd, max: usize, on: &mut dyn FnMut(Event)) -> (usize, bool) {
        let n = max.min(RX_BATCH);
        let mut iovs: Vec<libc::iovec> = self
            .rx_bufs
            .iter_mut()
            .take(n)
            .map(|b| {
                let (base, len) = b.room();
                libc::iovec {
                    iov_base: base.cast(),
                    iov_len: len,
                }
            })
            .collect();
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut msgs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (i, m) in msgs.iter_mut().enumerate() {
            self.rx_names[i] = RawAddr::zeroed();
            m.msg_hdr.msg_name = &mut self.rx_names[i].storage as *mut _ as *mut libc::c_void;
            m.msg_hdr.msg_namelen = self.rx_names[i].len;
            m.msg_hdr.msg_iov = &mut iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = self.rx_cmsgs[i].0.as_mut_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_controllen = RX_CMSG_SPACE as _;
        }
        // SAFETY: every header points into buffers owned by `self` (rx_bufs, rx_names,
        // rx_cmsgs) or into `iovs`, all alive for the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return (0, false);
            } else if e.kind() != io::ErrorKind::Interrupted {
                // ICMP errors surface here (ECONNREFUSED etc.); they are not ours to act on.
                tracing::trace!("UDP receive error: {e}");
            }
            return (0, true);
        }
        let got = rc as usize;
        for (i, m) in msgs.iter().take(got).enumerate() {
            self.rx_names[i].len = m.msg_hdr.msg_namelen;
            let Some(peer) = self.rx_names[i].socket_addr() else {
                continue;
            };
            let len = (m.msg_len as usize).min(GRO_BUF_SIZE);
            // SAFETY: the kernel filled this header's control buffer in this call.
            let meta = unsafe { sys::decode_rx(&m.msg_hdr, peer, len) };
            self.stats.rx_batches += 1;
            self.stats.rx_bytes += len as u64;
            let segs = meta.segments() as u64;
            self.stats.rx_datagrams += segs;
            if segs > 1 {
                self.stats.rx_gro_batches += 1;
            }
            // SAFETY: the kernel wrote `len` bytes into this buffer's room in this call.
            let rx = unsafe { self.rx_bufs[i].take(len) };
            on(Event::Udp { meta, rx });
        }
        (got, got == n)
    }

    fn rebind_udp(&mut self, socket: UdpSocket) -> io::Result<()> {
        let local = socket.local_addr()?;
        if local.is_ipv6() != self.v6 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "rebind to {local}: not the family of {}",
                    self.local_addr_str()
                ),
            ));
        }
        socket.set_nonblocking(true)?;
        if self.gro {
            sys::enable_gro(socket.as_raw_fd());
        }
        let ep = self.epfd.as_raw_fd();
        epoll_ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            socket.as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_UDP,
        )?;
        if let Some((old, _)) = self.previous.take() {
            let _ = epoll_ctl(ep, libc::EPOLL_CTL_DEL, old.as_raw_fd(), 0, 0);
        }
        let previous = std::mem::replace(&mut self.socket, socket);
        // Its registration moves to the other token, reading only: queued sends leave from
        // the new socket.
        epoll_ctl(
            ep,
            libc::EPOLL_CTL_MOD,
            previous.as_raw_fd(),
            libc::EPOLLIN as u32,
            TOKEN_UDP_PREVIOUS,
        )?;
        self.previous = Some((previous, true));
        self.udp_readable = true;
        if !self.tx_queue.is_empty() {
            self.flush();
        }
        Ok(())
    }
}

fn epoll_ctl(ep: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is alive for the call; the kernel copies it.
    let rc = unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl super::Driver for EpollDriver {
    fn kind(&self) -> IoKind {
        IoKind::Epoll
    }

    fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound socket")
    }

    fn gso_enabled(&self) -> bool {
        self.gso
    }

    fn send(&mut self, meta: TxMeta, buf: Vec<u8>) {
        if !self.tx_queue.is_empty() {
            self.tx_queue.push_back((meta, buf));
            return;
        }
        match self.try_send(&meta, &buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.tx_queue.push_back((meta, buf));
                self.flush(); // registers EPOLLOUT
            }
            Err(e) => {
                self.stats.tx_errors += 1;
                tracing::debug!("UDP send to {} failed: {e}", meta.dest);
                self.recycle(buf);
            }
            Ok(()) => self.recycle(buf),
        }
    }

    fn can_send(&self) -> bool {
        self.tx_queue.len() < self.send_depth
    }

    fn tx_buf(&mut self) -> Vec<u8> {
        self.tx_pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(GRO_BUF_SIZE))
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if !self.tx_queue.is_empty() {
            self.flush();
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let previous_readable = self.previous.as_ref().is_some_and(|p| p.1);
        let timeout = if self.udp_readable || previous_readable || !self.sock_done.is_empty() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `events` and `ts` are alive for the call; epoll_pwait2 takes a
        // nanosecond timeout (kernel 5.11+), so quinn's pacing timers are not rounded up
        // to milliseconds.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.epfd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                ts_ptr,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        let n = if rc < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => 0,
                Some(libc::ENOSYS) => {
                    let ms = timeout.map_or(-1, |t| {
                        t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
                    });
                    // SAFETY: as above, with a millisecond timeout.
                    let rc = unsafe {
                        libc::epoll_wait(
                            self.epfd.as_raw_fd(),
                            events.as_mut_ptr(),
                            events.len() as libc::c_int,
                            ms,
                        )
                    };
                    if rc < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                        0
                    } else {
                        rc as usize
                    }
                }
                _ => return Err(e),
            }
        } else {
            rc as usize
        };
        for ev in &events[..n] {
            let token = ev.u64;
            match token {
                TOKEN_UDP => {
                    if ev.events & libc::EPOLLIN as u32 != 0 {
                        self.udp_readable = true;
                    }
                    if ev.events & libc::EPOLLOUT as u32 != 0 {
                        self.flush();
                    }
                }
                TOKEN_UDP_PREVIOUS => {
                    if let Some((_, readable)) = &mut self.previous {
                        *readable = true;
                    }
                }
                TOKEN_WAKE => {
                    self.waker.drain();
                    self.stats.wakeups += 1;
                }
                fd => self.progress(fd as RawFd),
            }
        }
        Ok(())
    }

    fn reap(&mut self, max_udp: usize, on: &mut dyn FnMut(Event)) -> usize {
        while let Some(c) = self.sock_done.pop_front() {
            on(Event::Sock(c));
        }
        let mut delivered = 0;
        while self.udp_readable && delivered < max_udp {
            let (got, more) = self.recv_batch(self.socket.as_raw_fd(), max_udp - delivered, on);
            self.udp_readable = more;
            delivered += got;
            if got == 0 {
                break;
            }
        }
        while delivered < max_udp {
            let Some((fd, true)) = self.previous.as_ref().map(|(s, r)| (s.as_raw_fd(), *r)) else {
                break;
            };
            let (got, more) = self.recv_batch(fd, max_udp - delivered, on);
            if let Some(p) = &mut self.previous {
                p.1 = more;
            }
            delivered += got;
            if got == 0 {
                break;
            }
        }
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
        self.park(sock.fd(), Parked::new(SockOp::Recv, buf, token));
    }

    fn tcp_send(&mut self, sock: Sock, buf: Vec<u8>, token: Token) {
        self.park(sock.fd(), Parked::new(SockOp::Send, buf, token));
    }

    fn udp_open(&mut self, bind: SocketAddr, device: Option<&str>) -> io::Result<Sock> {
        self.open_udp(bind, device).map(Sock::from_fd)
    }

    fn udp_recv_from(&mut self, sock: Sock, buf: Vec<u8>, token: Token) {
        self.park(sock.fd(), Parked::new(SockOp::RecvFrom, buf, token));
    }

    fn udp_send_to(&mut self, sock: Sock, dest: SocketAddr, buf: Vec<u8>, token: Token) {
        let mut p = Parked::new(SockOp::SendTo, buf, token);
        p.dest = Some(dest);
        self.park(sock.fd(), p);
    }

    fn adopt(&mut self, sock: OwnedFd) -> io::Result<Sock> {
        self.adopt_sock(sock).map(Sock::from_fd)
    }

    fn tcp_accept(&mut self, listener: Sock, token: Token) {
        self.park(
            listener.fd(),
            Parked::new(SockOp::Accept, Vec::new(), token),
        );
    }

    fn sock_close(&mut self, sock: Sock, token: Token) {
        self.close(sock.fd(), token);
    }

    fn rebind(&mut self, socket: UdpSocket) -> io::Result<()> {
        self.rebind_udp(socket)
    }
}

impl Drop for EpollDriver {
    fn drop(&mut self) {
        self.close_udp_sessions();
    }
}
