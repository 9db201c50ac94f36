//! UDP session sockets on the ring: sockets from `udp_open`, one RecvMsg or SendMsg per
//! datagram (completed and closed in `sock.rs`).
//!
//! The `msghdr`, its iovec and the address live in a [`KBox`] and the datagram in the
//! caller's `Vec`, both owned by the operation's slab entry until its CQE, as for the
//! driver's own UDP socket (`udp.rs`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};

use io_uring::{opcode, types};

use super::super::sys::{self, DgramMsg, RawAddr};
use super::super::{Token, SESSION_SOCKET_BUFFER};
use super::sock::{Kind, SockOpState};
use super::{KBox, UringDriver};

impl UringDriver {
    pub(super) fn open_udp(&mut self, bind: SocketAddr, device: Option<&str>) -> io::Result<RawFd> {
        let fd = sys::udp_session_socket(bind, device, SESSION_SOCKET_BUFFER)?.into_raw_fd();
        self.udp_fds.insert(fd, bind.is_ipv6());
        Ok(fd)
    }

    pub(super) fn recv_from(&mut self, fd: RawFd, mut buf: Vec<u8>, token: Token) {
        buf.clear();
        let cap = buf.capacity().max(1);
        buf.reserve(cap);
        let mut msg = KBox::new(DgramMsg::new(RawAddr::zeroed()));
        // SAFETY: the box was just allocated and is not yet handed to the kernel; from
        // `start_op` on, it and `buf` belong to the op's slab entry until the CQE.
        let hdr = unsafe { msg.get() }.link(buf.as_mut_ptr(), cap);
        // MSG_TRUNC: the CQE carries the datagram's full length, so truncation shows.
        let e = opcode::RecvMsg::new(types::Fd(fd), hdr)
            .flags(libc::MSG_TRUNC as u32)
            .build();
        let kind = Kind::RecvFrom { msg, buf };
        self.start_op(SockOpState { fd, token, kind }, e);
    }

    pub(super) fn send_to(&mut self, fd: RawFd, dest: SocketAddr, buf: Vec<u8>, token: Token) {
        let v6 = match self.udp_fds.get(&fd) {
            Some(&v6) => v6,
            // Not from `udp_open`: ask the socket (a failure shows in the send's result).
            None => sys::is_ipv6_socket(fd).unwrap_or(dest.is_ipv6()),
        };
        let mut msg = KBox::new(DgramMsg::new(RawAddr::new(dest, v6)));
        // SAFETY: as in `recv_from`; the kernel only reads through the data pointer.
        let hdr = unsafe { msg.get() }.link(buf.as_ptr().cast_mut(), buf.len());
        let e = opcode::SendMsg::new(types::Fd(fd), hdr).build();
        let kind = Kind::SendTo { msg, buf };
        self.start_op(SockOpState { fd, token, kind }, e);
    }
}
