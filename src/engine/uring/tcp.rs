//! TCP on the ring: Connect, Accept, Recv and Send (completed and closed in `sock.rs`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::ptr::{addr_of, addr_of_mut};

use io_uring::{opcode, types};

use super::super::sys::{self, RawAddr};
use super::super::{Egress, Token};
use super::sock::{Kind, SockOpState};
use super::{KBox, UringDriver};

impl UringDriver {
    pub(super) fn connect(
        &mut self,
        addr: SocketAddr,
        egress: &Egress,
        token: Token,
    ) -> io::Result<RawFd> {
        // Non-blocking like the epoll driver's sockets; io_uring polls for completion.
        let sock = sys::tcp_socket(addr, egress)?;
        let raw = RawAddr::new(addr, addr.is_ipv6());
        let len = raw.len;
        let addr = KBox::new(raw);
        let p = addr.ptr();
        // SAFETY: `p` points at the live RawAddr just boxed (owned by the op's slab entry
        // from `start_op` until its CQE); only its address is taken.
        let sa = unsafe { addr_of!((*p).storage) }.cast::<libc::sockaddr>();
        // The caller owns the fd from here and closes it with `sock_close`.
        let fd = sock.into_raw_fd();
        let e = opcode::Connect::new(types::Fd(fd), sa, len).build();
        let kind = Kind::Connect { addr };
        self.start_op(SockOpState { fd, token, kind }, e);
        Ok(fd)
    }

    /// One single-shot accept: non-blocking and close-on-exec like the epoll driver's.
    pub(super) fn accept(&mut self, listener: RawFd, token: Token) {
        let addr = KBox::new(RawAddr::zeroed());
        let p = addr.ptr();
        // SAFETY: `p` points at the live RawAddr just boxed (owned by the op's slab entry
        // from `start_op` until its CQE); only the addresses of its fields are taken.
        let (sa, len) = unsafe { (addr_of_mut!((*p).storage), addr_of_mut!((*p).len)) };
        let e = opcode::Accept::new(types::Fd(listener), sa.cast(), len)
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build();
        let (fd, kind) = (listener, Kind::Accept(addr));
        self.start_op(SockOpState { fd, token, kind }, e);
    }

    pub(super) fn recv(&mut self, fd: RawFd, mut buf: Vec<u8>, token: Token) {
        buf.clear();
        let cap = buf.capacity().max(1);
        buf.reserve(cap);
        let len = cap.min(u32::MAX as usize) as u32;
        let e = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), len).build();
        let kind = Kind::Recv(buf);
        self.start_op(SockOpState { fd, token, kind }, e);
    }

    pub(super) fn send_tcp(&mut self, fd: RawFd, buf: Vec<u8>, token: Token) {
        let len = buf.len().min(u32::MAX as usize) as u32;
        let e = opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        let kind = Kind::Send(buf);
        self.start_op(SockOpState { fd, token, kind }, e);
    }
}
