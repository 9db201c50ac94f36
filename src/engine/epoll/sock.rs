//! The relay's sockets on epoll: TCP connections, UDP session sockets and adopted sockets
//! (listeners and the connections they accept, forwarders' UDP sockets).
//!
//! Every operation is tried at once; one that would block is parked in its descriptor's
//! queue and retried when level-triggered epoll reports the descriptor ready (EPOLLIN for
//! receives and accepts, EPOLLOUT for sends and connects). Queues keep each direction in
//! order.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use super::super::sys::{self, DgramMsg, RawAddr};
use super::super::{Completion, Egress, Sock, SockOp, Token, SESSION_SOCKET_BUFFER};
use super::{epoll_ctl, EpollDriver};

/// A receive, accept or send waiting for its descriptor.
pub(super) struct Parked {
    /// Recv, RecvFrom, Accept, Send or SendTo.
    op: SockOp,
    token: Token,
    buf: Vec<u8>,
    /// SendTo: where the datagram goes.
    pub(super) dest: Option<SocketAddr>,
}

impl Parked {
    pub(super) fn new(op: SockOp, buf: Vec<u8>, token: Token) -> Self {
        Parked {
            op,
            token,
            buf,
            dest: None,
        }
    }

    fn is_send(&self) -> bool {
        matches!(self.op, SockOp::Send | SockOp::SendTo)
    }
}

/// Pending work on one descriptor the driver handed out.
#[derive(Default)]
pub(super) struct SockState {
    /// Token of a connect in progress (EPOLLOUT ends it).
    connect: Option<Token>,
    /// Receives and accepts waiting for EPOLLIN, oldest first.
    reads: VecDeque<Parked>,
    /// Sends waiting for EPOLLOUT, oldest first.
    writes: VecDeque<Parked>,
    /// Set by `udp_open` and `adopt` (the family: true for IPv6, whose IPv4 destinations
    /// are mapped); `None` for TCP.
    udp_v6: Option<bool>,
    /// Taken over by `adopt`: closed with the driver if the relay never closes it.
    adopted: bool,
    /// Events currently registered with epoll (0 = not registered).
    registered: u32,
}

impl EpollDriver {
    pub(super) fn connect(
        &mut self,
        addr: SocketAddr,
        egress: &Egress,
        token: Token,
    ) -> io::Result<RawFd> {
        let (sock, pending) = sys::tcp_connect_start(addr, egress)?;
        let fd = sock.into_raw_fd();
        self.socks.insert(
            fd,
            SockState {
                connect: Some(token),
                ..SockState::default()
            },
        );
        if pending {
            self.interest(fd);
        } else {
            self.progress(fd);
        }
        Ok(fd)
    }

    pub(super) fn open_udp(&mut self, bind: SocketAddr, device: Option<&str>) -> io::Result<RawFd> {
        let fd = sys::udp_session_socket(bind, device, SESSION_SOCKET_BUFFER)?.into_raw_fd();
        self.socks.insert(
            fd,
            SockState {
                udp_v6: Some(bind.is_ipv6()),
                ..SockState::default()
            },
        );
        Ok(fd)
    }

    /// Takes over a socket bound elsewhere (`Driver::adopt`).
    pub(super) fn adopt_sock(&mut self, sock: OwnedFd) -> io::Result<RawFd> {
        let (sock, udp_v6) = sys::adopt(sock)?;
        let fd = sock.into_raw_fd();
        let st = SockState {
            udp_v6,
            adopted: true,
            ..SockState::default()
        };
        self.socks.insert(fd, st);
        Ok(fd)
    }

    /// Queues a receive or send behind those already waiting on `fd`, and tries them.
    pub(super) fn park(&mut self, fd: RawFd, p: Parked) {
        let st = self.socks.entry(fd).or_default();
        if p.is_send() {
            st.writes.push_back(p);
        } else {
            st.reads.push_back(p);
        }
        self.progress(fd);
    }

    /// Registers `fd` for the events its pending operations need.
    fn interest(&mut self, fd: RawFd) {
        let Some(st) = self.socks.get_mut(&fd) else {
            return;
        };
        let mut want = 0u32;
        if !st.reads.is_empty() {
            want |= libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
        }
        if !st.writes.is_empty() || st.connect.is_some() {
            want |= libc::EPOLLOUT as u32;
        }
        if want == st.registered {
            return;
        }
        let ep = self.epfd.as_raw_fd();
        let r = match (st.registered, want) {
            (0, w) => epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, w, fd as u64),
            (_, 0) => epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, 0, fd as u64),
            (_, w) => epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, w, fd as u64),
        };
        if r.is_ok() {
            st.registered = want;
        }
    }

    /// Runs whatever work on `fd` can progress now.
    pub(super) fn progress(&mut self, fd: RawFd) {
        let Some(st) = self.socks.get_mut(&fd) else {
            return;
        };
        if let Some(token) = st.connect {
            // Called on EPOLLOUT (or error): the connect has finished one way or the other.
            st.connect = None;
            // Failed or not, the fd is the caller's to close.
            let result = sys::take_socket_error(fd).map(|()| 0);
            self.sock_done.push_back(Completion {
                token,
                op: SockOp::Connect,
                sock: Sock::from_fd(fd),
                result,
                buf: Vec::new(),
                peer: None,
                accepted: None,
            });
            self.interest(fd);
            return;
        }
        let v6 = st.udp_v6;
        for sends in [false, true] {
            loop {
                let Some(st) = self.socks.get_mut(&fd) else {
                    return;
                };
                let queue = if sends { &mut st.writes } else { &mut st.reads };
                let Some(mut p) = queue.pop_front() else {
                    break;
                };
                let (result, peer) = attempt(fd, &mut p, v6);
                match result {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        queue.push_front(p);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => queue.push_front(p),
                    mut result => {
                        let mut accepted = None;
                        if let (SockOp::Accept, Ok(new)) = (p.op, &result) {
                            // The accepted socket is the driver's, like a connected one.
                            let new = *new as RawFd;
                            self.socks.insert(new, SockState::default());
                            accepted = Some(Sock::from_fd(new));
                            result = Ok(0);
                        }
                        self.sock_done.push_back(Completion {
                            token: p.token,
                            op: p.op,
                            sock: Sock::from_fd(fd),
                            result,
                            buf: p.buf,
                            peer,
                            accepted,
                        })
                    }
                }
            }
        }
        self.interest(fd);
    }

    /// Closes `fd`: its parked operations complete with ECANCELED first.
    pub(super) fn close(&mut self, fd: RawFd, token: Token) {
        if let Some(st) = self.socks.get_mut(&fd) {
            if let Some(token) = st.connect.take() {
                // Closing cancels a pending connect.
                self.sock_done.push_back(Completion {
                    token,
                    op: SockOp::Connect,
                    sock: Sock::from_fd(fd),
                    result: Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                    buf: Vec::new(),
                    peer: None,
                    accepted: None,
                });
            }
            let parked: Vec<Parked> = st.reads.drain(..).chain(st.writes.drain(..)).collect();
            for p in parked {
                self.sock_done.push_back(Completion {
                    token: p.token,
                    op: p.op,
                    sock: Sock::from_fd(fd),
                    result: Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                    buf: p.buf,
                    peer: None,
                    accepted: None,
                });
            }
        }
        self.forget(fd);
        // SAFETY: the relay hands us a socket this driver gave it (`tcp_connect`, an Accept
        // completion, `udp_open`, `adopt`) and stops using it with this call.
        let rc = unsafe { libc::close(fd) };
        let result = if rc == 0 {
            Ok(0)
        } else {
            Err(io::Error::last_os_error())
        };
        self.sock_done.push_back(Completion {
            token,
            op: SockOp::Close,
            sock: Sock::from_fd(fd),
            result,
            buf: Vec::new(),
            peer: None,
            accepted: None,
        });
    }

    fn forget(&mut self, fd: RawFd) {
        if let Some(st) = self.socks.remove(&fd) {
            if st.registered != 0 {
                let _ = epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0);
            }
        }
    }

    /// Closes the UDP session and adopted sockets still open (the driver owns them until
    /// `sock_close`).
    pub(super) fn close_udp_sessions(&mut self) {
        let fds: Vec<RawFd> = self
            .socks
            .iter()
            .filter(|(_, st)| st.udp_v6.is_some() || st.adopted)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in fds {
            self.forget(fd);
            // SAFETY: `udp_open` created (or `adopt` took) this fd and the relay never
            // closed it.
            unsafe { libc::close(fd) };
        }
    }
}

/// Tries one operation now: its result and, for a receive, the datagram's source.
fn attempt(
    fd: RawFd,
    p: &mut Parked,
    udp_v6: Option<bool>,
) -> (io::Result<usize>, Option<SocketAddr>) {
    match (p.op, p.dest) {
        (SockOp::Recv, _) => (read_into(fd, &mut p.buf), None),
        (SockOp::RecvFrom, _) => match recv_from(fd, &mut p.buf) {
            Ok((len, peer)) => (Ok(len), Some(peer)),
            Err(e) => (Err(e), None),
        },
        (SockOp::Accept, _) => match sys::accept(fd) {
            Ok((sock, peer)) => (Ok(sock.into_raw_fd() as usize), peer),
            Err(e) => (Err(e), None),
        },
        (SockOp::Send, _) => (send(fd, &p.buf), None),
        (SockOp::SendTo, Some(dest)) => (send_to(fd, dest, udp_v6, &p.buf), None),
        // Not built by this driver (`park` takes only the five above, SendTo with `dest`).
        _ => (Err(io::Error::from_raw_os_error(libc::EINVAL)), None),
    }
}

fn read_into(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    let cap = buf.capacity().max(1);
    buf.reserve(cap);
    // SAFETY: the kernel writes at most `cap` bytes into the vector's spare capacity, which
    // `buf` (owned by the parked operation) keeps alive for the call.
    let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), cap, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel initialised `rc` bytes, never more than `cap`.
    unsafe { buf.set_len((rc as usize).min(cap)) };
    Ok(rc as usize)
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads `buf` (owned by the parked operation) during the call.
    let rc = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// One datagram into `buf`'s spare capacity: its length and source.
fn recv_from(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<(usize, SocketAddr)> {
    buf.clear();
    let cap = buf.capacity().max(1);
    buf.reserve(cap);
    let mut msg = DgramMsg::new(RawAddr::zeroed());
    let hdr = msg.link(buf.as_mut_ptr(), cap);
    // SAFETY: `hdr` points into `msg` (this stack frame) and at `cap` bytes of `buf`'s
    // spare capacity (owned by the parked operation); both outlive the call. MSG_TRUNC
    // makes the kernel return the datagram's full length, so truncation shows.
    let rc = unsafe { libc::recvmsg(fd, hdr, libc::MSG_TRUNC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let (len, peer) = msg.received(rc as usize, cap)?;
    // SAFETY: the kernel initialised `len` bytes, and `len <= cap` (checked by `received`).
    unsafe { buf.set_len(len) };
    Ok((len, peer))
}

fn send_to(fd: RawFd, dest: SocketAddr, udp_v6: Option<bool>, buf: &[u8]) -> io::Result<usize> {
    let v6 = match udp_v6 {
        Some(v6) => v6,
        None => sys::is_ipv6_socket(fd)?,
    };
    let mut msg = DgramMsg::new(RawAddr::new(dest, v6));
    // The kernel only reads through the pointer of a send.
    let hdr = msg.link(buf.as_ptr().cast_mut(), buf.len());
    // SAFETY: `hdr` points into `msg` (this stack frame) and at `buf` (owned by the parked
    // operation); both outlive the call, and the kernel copies the data.
    let rc = unsafe { libc::sendmsg(fd, hdr, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}
