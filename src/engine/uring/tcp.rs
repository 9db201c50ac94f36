//! TCP on the ring: Connect, Recv, Send, and Close after cancelling what is pending.
//!
//! Semantics match the epoll driver: Connect completes with the fd, Recv fills the buffer
//! up to its capacity (0 = EOF), Send reports the bytes written, and Close first completes
//! the fd's pending operations with ECANCELED, then itself.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr::addr_of;

use io_uring::{opcode, squeue, types};
use socket2::{Domain, Protocol, Socket, Type};

use super::super::sys::RawAddr;
use super::super::{TcpCompletion, TcpOp};
use super::{KBox, Op, UringDriver, IGNORE};

/// A TCP operation in flight.
pub(super) struct TcpOpState {
    fd: RawFd,
    token: u64,
    kind: Kind,
}

enum Kind {
    /// The socket is owned here until the connect succeeds and the fd goes to the caller.
    Connect {
        sock: OwnedFd,
        addr: KBox<RawAddr>,
    },
    /// The kernel writes into the vector's spare capacity (its heap buffer never moves).
    Recv(Vec<u8>),
    Send(Vec<u8>),
    Close,
}

impl TcpOpState {
    /// # Safety
    /// The kernel must be done with the operation (see `Op::free`).
    pub(super) unsafe fn free(self) {
        if let Kind::Connect { addr, .. } = self.kind {
            // SAFETY: per the contract, the kernel no longer reads the address.
            unsafe { addr.free() };
        }
    }
}

/// Operations pending on one TCP descriptor.
#[derive(Default)]
pub(super) struct FdState {
    /// Connect/Recv/Send in flight (Close is not counted).
    ops: usize,
    /// `tcp_close` was called while operations were pending: its token.
    close: Option<u64>,
}

impl UringDriver {
    fn start_tcp(&mut self, op: TcpOpState, e: squeue::Entry) {
        let fd = op.fd;
        if !matches!(op.kind, Kind::Close) {
            self.tcp_fds.entry(fd).or_default().ops += 1;
        }
        let key = self.ops.insert(Op::Tcp(op));
        self.push(e.user_data(key as u64));
    }

    pub(super) fn connect(&mut self, addr: SocketAddr, token: u64) -> io::Result<()> {
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        // Non-blocking like the epoll driver's sockets; io_uring polls for completion.
        let sock = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
        sock.set_nodelay(true)?;
        let raw = RawAddr::new(addr, addr.is_ipv6());
        let len = raw.len;
        let addr = KBox::new(raw);
        let p = addr.ptr();
        // SAFETY: `p` points at the live RawAddr just boxed; only its address is taken.
        let sa = unsafe { addr_of!((*p).storage) }.cast::<libc::sockaddr>();
        let fd = sock.as_raw_fd();
        let e = opcode::Connect::new(types::Fd(fd), sa, len).build();
        let kind = Kind::Connect {
            sock: sock.into(),
            addr,
        };
        self.start_tcp(TcpOpState { fd, token, kind }, e);
        Ok(())
    }

    pub(super) fn recv(&mut self, fd: RawFd, mut buf: Vec<u8>, token: u64) {
        buf.clear();
        let cap = buf.capacity().max(1);
        buf.reserve(cap);
        let len = cap.min(u32::MAX as usize) as u32;
        let e = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), len).build();
        self.start_tcp(
            TcpOpState {
                fd,
                token,
                kind: Kind::Recv(buf),
            },
            e,
        );
    }

    pub(super) fn send_tcp(&mut self, fd: RawFd, buf: Vec<u8>, token: u64) {
        let len = buf.len().min(u32::MAX as usize) as u32;
        let e = opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.start_tcp(
            TcpOpState {
                fd,
                token,
                kind: Kind::Send(buf),
            },
            e,
        );
    }

    pub(super) fn close(&mut self, fd: RawFd, token: u64) {
        let st = self.tcp_fds.entry(fd).or_default();
        if st.ops == 0 {
            self.start_close(fd, token);
        } else {
            // Close once the cancelled operations have completed (see `tcp_complete`), so
            // their ECANCELED completions come first and the fd is not reused under them.
            st.close = Some(token);
            let cancel = types::CancelBuilder::fd(types::Fd(fd)).all();
            self.push(opcode::AsyncCancel2::new(cancel).build().user_data(IGNORE));
        }
    }

    fn start_close(&mut self, fd: RawFd, token: u64) {
        let e = opcode::Close::new(types::Fd(fd)).build();
        let kind = Kind::Close;
        self.start_tcp(TcpOpState { fd, token, kind }, e);
    }

    /// Turns a TCP CQE into a completion for `reap`; the op has left the slab.
    pub(super) fn tcp_complete(&mut self, op: TcpOpState, res: i32) {
        let TcpOpState { fd, token, kind } = op;
        let closing = self.tcp_fds.get(&fd).is_some_and(|s| s.close.is_some());
        let result = if res >= 0 {
            Ok(res as usize)
        } else if closing && res == -libc::EINTR {
            // Interrupted by the cancellation of `tcp_close`.
            Err(io::Error::from_raw_os_error(libc::ECANCELED))
        } else {
            Err(io::Error::from_raw_os_error(-res))
        };
        let (op, result, buf) = match kind {
            Kind::Close => {
                self.tcp_fds.remove(&fd);
                self.tcp_done.push_back(TcpCompletion {
                    token,
                    op: TcpOp::Close,
                    fd,
                    result: result.map(|_| 0),
                    buf: Vec::new(),
                });
                return;
            }
            Kind::Connect { sock, addr } => {
                // SAFETY: the CQE has been reaped; the kernel no longer reads the address.
                unsafe { addr.free() };
                // On failure the caller never gets the fd: dropping `sock` closes it.
                let result = result.map(|_| sock.into_raw_fd() as usize);
                (TcpOp::Connect, result, Vec::new())
            }
            Kind::Recv(mut buf) => {
                if let Ok(n) = result {
                    // SAFETY: the kernel initialised `n` bytes of the spare capacity, and
                    // never more than the length it was given (≤ capacity).
                    unsafe { buf.set_len(n.min(buf.capacity())) };
                }
                (TcpOp::Recv, result, buf)
            }
            Kind::Send(buf) => (TcpOp::Send, result, buf),
        };
        self.tcp_done.push_back(TcpCompletion {
            token,
            op,
            fd,
            result,
            buf,
        });
        if let Some(st) = self.tcp_fds.get_mut(&fd) {
            st.ops = st.ops.saturating_sub(1);
            if st.ops == 0 {
                match st.close.take() {
                    Some(close_token) => self.start_close(fd, close_token),
                    None => {
                        self.tcp_fds.remove(&fd);
                    }
                }
            }
        }
    }
}
