//! The relay's socket operations on the ring: what each holds while in flight, Close after
//! cancelling what is pending, and the completions handed to `reap`. The operations
//! themselves are built in `tcp.rs` (Connect, Accept, Recv, Send) and `dgram.rs` (RecvFrom,
//! SendTo).
//!
//! Semantics match the epoll driver: Connect completes on the socket `tcp_connect` returned,
//! which the caller closes whatever the outcome; Accept completes with the new socket and
//! its peer (after setting TCP_NODELAY), Recv fills the buffer up to its capacity
//! (0 = EOF), Send reports the bytes written, RecvFrom one datagram and its source, SendTo
//! the bytes sent; Close first completes the fd's pending operations with ECANCELED, then
//! itself.

use std::io;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types};

use super::super::sys::{self, DgramMsg, RawAddr};
use super::super::{Completion, Sock, SockOp, Token};
use super::{KBox, Op, UringDriver, IGNORE};

/// A socket operation in flight.
pub(super) struct SockOpState {
    pub(super) fd: RawFd,
    pub(super) token: Token,
    pub(super) kind: Kind,
}

pub(super) enum Kind {
    /// The kernel reads the target's address here (the fd is already the caller's).
    Connect {
        addr: KBox<RawAddr>,
    },
    /// The kernel writes the peer's address and its length here.
    Accept(KBox<RawAddr>),
    /// The kernel writes into the vector's spare capacity (its heap buffer never moves).
    Recv(Vec<u8>),
    Send(Vec<u8>),
    /// The header, source address and iovec the kernel fills in are boxed; the datagram
    /// goes into `buf`'s spare capacity.
    RecvFrom {
        msg: KBox<DgramMsg>,
        buf: Vec<u8>,
    },
    /// As `RecvFrom`; the kernel reads the destination and `buf`.
    SendTo {
        msg: KBox<DgramMsg>,
        buf: Vec<u8>,
    },
    Close,
}

impl SockOpState {
    /// # Safety
    /// The kernel must be done with the operation (see `Op::free`).
    pub(super) unsafe fn free(self) {
        // SAFETY: per the contract, the kernel no longer reads or writes these boxes.
        unsafe {
            match self.kind {
                Kind::Connect { addr, .. } => addr.free(),
                Kind::Accept(addr) => addr.free(),
                Kind::RecvFrom { msg, .. } | Kind::SendTo { msg, .. } => msg.free(),
                Kind::Recv(_) | Kind::Send(_) | Kind::Close => {}
            }
        }
    }
}

/// Operations pending on one descriptor.
#[derive(Default)]
pub(super) struct FdState {
    /// Operations in flight other than Close.
    ops: usize,
    /// `sock_close` was called while operations were pending: its token.
    close: Option<Token>,
}

impl UringDriver {
    pub(super) fn start_op(&mut self, op: SockOpState, e: squeue::Entry) {
        let fd = op.fd;
        if !matches!(op.kind, Kind::Close) {
            self.sock_fds.entry(fd).or_default().ops += 1;
        }
        let key = self.ops.insert(Op::Sock(op));
        self.push(e.user_data(key as u64));
    }

    /// Takes over a socket bound elsewhere (`Driver::adopt`).
    pub(super) fn adopt_sock(&mut self, sock: OwnedFd) -> io::Result<RawFd> {
        let (sock, udp_v6) = sys::adopt(sock)?;
        let fd = sock.into_raw_fd();
        if let Some(v6) = udp_v6 {
            self.udp_fds.insert(fd, v6);
        } else {
            self.listen_fds.insert(fd);
        }
        Ok(fd)
    }

    pub(super) fn close(&mut self, fd: RawFd, token: Token) {
        // A UDP session socket's family is not needed any more: no new sends on it.
        self.udp_fds.remove(&fd);
        self.listen_fds.remove(&fd);
        let st = self.sock_fds.entry(fd).or_default();
        if st.ops == 0 {
            self.start_close(fd, token);
        } else {
            // Close once the cancelled operations have completed (see `sock_complete`), so
            // their ECANCELED completions come first and the fd is not reused under them.
            st.close = Some(token);
            let cancel = types::CancelBuilder::fd(types::Fd(fd)).all();
            self.push(opcode::AsyncCancel2::new(cancel).build().user_data(IGNORE));
        }
    }

    fn start_close(&mut self, fd: RawFd, token: Token) {
        let e = opcode::Close::new(types::Fd(fd)).build();
        let kind = Kind::Close;
        self.start_op(SockOpState { fd, token, kind }, e);
    }

    /// Turns a socket CQE into a completion for `reap`; the op has left the slab.
    pub(super) fn sock_complete(&mut self, op: SockOpState, res: i32) {
        let SockOpState { fd, token, kind } = op;
        let closing = self.sock_fds.get(&fd).is_some_and(|s| s.close.is_some());
        let result = if res >= 0 {
            Ok(res as usize)
        } else if closing && res == -libc::EINTR {
            // Interrupted by the cancellation of `sock_close`.
            Err(io::Error::from_raw_os_error(libc::ECANCELED))
        } else {
            Err(io::Error::from_raw_os_error(-res))
        };
        let mut peer = None;
        let mut accepted = None;
        let (op, result, buf) = match kind {
            Kind::Close => {
                self.sock_fds.remove(&fd);
                self.sock_done.push_back(Completion {
                    token,
                    op: SockOp::Close,
                    sock: Sock::from_fd(fd),
                    result: result.map(|_| 0),
                    buf: Vec::new(),
                    peer: None,
                    accepted: None,
                });
                return;
            }
            Kind::Connect { addr } => {
                // SAFETY: the CQE has been reaped; the kernel no longer reads the address.
                unsafe { addr.free() };
                (SockOp::Connect, result.map(|_| 0), Vec::new())
            }
            Kind::Accept(addr) => {
                // SAFETY: the CQE has been reaped; the kernel is done with the address.
                let addr = unsafe { addr.take() };
                if let Ok(new) = result {
                    let new = new as RawFd;
                    sys::set_nodelay(new);
                    peer = addr.socket_addr();
                    accepted = Some(Sock::from_fd(new));
                }
                (SockOp::Accept, result.map(|_| 0), Vec::new())
            }
            Kind::Recv(mut buf) => {
                if let Ok(n) = result {
                    // SAFETY: the kernel initialised `n` bytes of the spare capacity, and
                    // never more than the length it was given (≤ capacity).
                    unsafe { buf.set_len(n.min(buf.capacity())) };
                }
                (SockOp::Recv, result, buf)
            }
            Kind::Send(buf) => (SockOp::Send, result, buf),
            Kind::RecvFrom { msg, mut buf } => {
                // SAFETY: the CQE has been reaped; the kernel is done with the header.
                let mut msg = unsafe { msg.take() };
                let cap = msg.iov.iov_len;
                let result = result.and_then(|n| msg.received(n, cap));
                if let Ok((len, _)) = result {
                    // SAFETY: the kernel initialised `len` bytes of the spare capacity it
                    // was given, and `len <= cap <= capacity` (checked by `received`).
                    unsafe { buf.set_len(len.min(buf.capacity())) };
                }
                peer = result.as_ref().ok().map(|&(_, p)| p);
                (SockOp::RecvFrom, result.map(|(len, _)| len), buf)
            }
            Kind::SendTo { msg, buf } => {
                // SAFETY: the CQE has been reaped; the kernel is done with the header.
                unsafe { msg.free() };
                (SockOp::SendTo, result, buf)
            }
        };
        self.sock_done.push_back(Completion {
            token,
            op,
            sock: Sock::from_fd(fd),
            result,
            buf,
            peer,
            accepted,
        });
        if let Some(st) = self.sock_fds.get_mut(&fd) {
            st.ops = st.ops.saturating_sub(1);
            if st.ops == 0 {
                match st.close.take() {
                    Some(close_token) => self.start_close(fd, close_token),
                    None => {
                        self.sock_fds.remove(&fd);
                    }
                }
            }
        }
    }
}
