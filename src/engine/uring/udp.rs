//! UDP on the ring: posted RecvMsg slots with GRO buffers, SendMsg with GSO and ECN.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::addr_of_mut;

use io_uring::{opcode, types};

use super::super::sys::{self, CmsgBuf, RawAddr, RX_CMSG_SPACE, TX_CMSG_SPACE};
use super::super::{Event, RxBuf, TxMeta, GRO_BUF_SIZE};
use super::{KBox, Op, UringDriver, IGNORE};

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
    unsafe { std::mem::zeroed() }
}

fn empty_iovec() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// A posted receive: everything the kernel writes lives here, boxed (address stable) and
/// owned by the slab entry while the RecvMsg is in flight.
pub(super) struct RecvSlot {
    /// The UDP socket this slot receives on: the current one, or the one a `rebind`
    /// replaced (until the next `rebind` retires it).
    pub(super) fd: RawFd,
    /// The socket was retired: the slot is freed once the kernel hands it back.
    pub(super) retired: bool,
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: RawAddr,
    cmsg: CmsgBuf<RX_CMSG_SPACE>,
    buf: RxBuf,
}

impl RecvSlot {
    pub(super) fn new(fd: RawFd) -> Self {
        RecvSlot {
            fd,
            retired: false,
            hdr: zeroed_msghdr(),
            iov: empty_iovec(),
            name: RawAddr::zeroed(),
            cmsg: CmsgBuf::new(),
            buf: RxBuf::default(),
        }
    }
}

/// A send in flight: the datagram(s), the header and its control messages.
pub(super) struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: RawAddr,
    cmsg: CmsgBuf<TX_CMSG_SPACE>,
    meta: TxMeta,
    buf: Vec<u8>,
    /// Sent as a GSO batch (UDP_SEGMENT with a segment size below the length).
    gso_batch: bool,
    datagrams: usize,
}

impl UringDriver {
    /// (Re-)posts the receive of slot `key`.
    /// A slot of a retired socket is freed instead.
    pub(super) fn arm_recv(&mut self, key: usize) {
        let Some(Op::UdpRecv(slot)) = self.ops.get_mut(key) else {
            return;
        };
        // SAFETY: the slot is not in flight (fresh, or its CQE was reaped and delivered);
        // the slab entry owns it and we are its only user until the SQE below is submitted.
        let s = unsafe { slot.get() };
        if s.retired {
            if let Op::UdpRecv(slot) = self.ops.remove(key) {
                // SAFETY: as above, the kernel is done with the slot.
                unsafe { slot.free() };
            }
            return;
        }
        let fd = s.fd;
        s.name = RawAddr::zeroed();
        let (base, len) = s.buf.room();
        s.iov = libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        };
        s.hdr = zeroed_msghdr();
        s.hdr.msg_name = addr_of_mut!(s.name.storage).cast();
        s.hdr.msg_namelen = s.name.len;
        s.hdr.msg_iov = addr_of_mut!(s.iov);
        s.hdr.msg_iovlen = 1;
        s.hdr.msg_control = s.cmsg.0.as_mut_ptr().cast();
        s.hdr.msg_controllen = RX_CMSG_SPACE as _;
        let e = opcode::RecvMsg::new(types::Fd(fd), addr_of_mut!(s.hdr))
            .build()
            .user_data(key as u64);
        self.push(e);
    }

    /// Posts `recv_depth` receives on `socket` and makes it the one sends leave from; the
    /// socket it replaces keeps its receives, and the one before that is retired.
    pub(super) fn rebind_udp(&mut self, socket: UdpSocket) -> io::Result<()> {
        let local = socket.local_addr()?;
        if local.is_ipv6() != self.v6 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("rebind to {local}: not the family of {}", self.local),
            ));
        }
        socket.set_nonblocking(true)?;
        if self.gro {
            sys::enable_gro(socket.as_raw_fd());
        }
        if let Some(old) = self.previous.take() {
            let fd = old.as_raw_fd();
            let keys: Vec<usize> = self
                .ops
                .iter_mut()
                .filter_map(|(key, op)| match op {
                    Op::UdpRecv(slot) => {
                        let p = slot.ptr();
                        // SAFETY: the slot is alive (owned by its slab entry); only these two
                        // plain fields are read and written, through the raw pointer, and the
                        // kernel never touches them (it uses the header, buffer and address).
                        unsafe {
                            (std::ptr::addr_of!((*p).fd).read() == fd).then(|| {
                                addr_of_mut!((*p).retired).write(true);
                                key
                            })
                        }
                    }
                    _ => None,
                })
                .collect();
            for key in keys {
                self.push(
                    opcode::AsyncCancel::new(key as u64)
                        .build()
                        .user_data(IGNORE),
                );
            }
            // The receives still in the kernel hold the socket until they are cancelled.
            drop(old);
        }
        let fd = socket.as_raw_fd();
        self.previous = Some(std::mem::replace(&mut self.socket, socket));
        self.local = local;
        for _ in 0..self.recv_depth {
            let key = self.ops.insert(Op::UdpRecv(KBox::new(RecvSlot::new(fd))));
            self.arm_recv(key);
        }
        Ok(())
    }

    /// Hands a completed receive (`res` bytes) to `on`. False when nothing was delivered.
    pub(super) fn deliver(&mut self, key: usize, res: i32, on: &mut dyn FnMut(Event)) -> bool {
        let Some(Op::UdpRecv(slot)) = self.ops.get_mut(key) else {
            return false;
        };
        // SAFETY: this slot's CQE has been reaped and it is not re-armed yet: the kernel is
        // done with it until `arm_recv`.
        let s = unsafe { slot.get() };
        s.name.len = s.hdr.msg_namelen;
        let Some(peer) = s.name.socket_addr() else {
            return false;
        };
        let len = (res.max(0) as usize).min(GRO_BUF_SIZE);
        // SAFETY: the kernel filled this header's control buffer (and set msg_controllen)
        // in the receive that just completed.
        let meta = unsafe { sys::decode_rx(&s.hdr, peer, len) };
        self.stats.rx_batches += 1;
        self.stats.rx_bytes += len as u64;
        let segs = meta.segments() as u64;
        self.stats.rx_datagrams += segs;
        if segs > 1 {
            self.stats.rx_gro_batches += 1;
        }
        // SAFETY: the kernel wrote `len` bytes into the room `arm_recv` gave it.
        let rx = unsafe { s.buf.take(len) };
        on(Event::Udp { meta, rx });
        true
    }

    /// Starts queued sends while fewer than `send_depth` are in flight.
    pub(super) fn flush_tx(&mut self) {
        while self.tx_inflight < self.send_depth {
            let Some((meta, buf)) = self.tx_queue.pop_front() else {
                break;
            };
            self.start_send(meta, buf);
        }
    }

    fn start_send(&mut self, meta: TxMeta, buf: Vec<u8>) {
        let gso_batch = meta.segment_size.is_some_and(|s| s < buf.len());
        if gso_batch && self.gso && self.inject_gso_failure {
            // Testing: behave as if this batch's CQE had come back with EIO.
            self.inject_gso_failure = false;
            self.gso_failed(&io::Error::from_raw_os_error(libc::EIO));
        }
        if gso_batch && !self.gso {
            self.requeue_segments(meta, buf);
            return;
        }
        let datagrams = match meta.segment_size {
            Some(s) if gso_batch => buf.len().div_ceil(s),
            _ => 1,
        };
        let mut slot = KBox::new(SendSlot {
            hdr: zeroed_msghdr(),
            iov: empty_iovec(),
            name: RawAddr::new(meta.dest, self.v6),
            cmsg: CmsgBuf::new(),
            meta,
            buf,
            gso_batch,
            datagrams,
        });
        let hdr = {
            // SAFETY: the slot was just allocated and is not yet handed to the kernel.
            let s = unsafe { slot.get() };
            s.iov = libc::iovec {
                iov_base: s.buf.as_mut_ptr().cast(),
                iov_len: s.buf.len(),
            };
            s.hdr.msg_name = addr_of_mut!(s.name.storage).cast();
            s.hdr.msg_namelen = s.name.len;
            s.hdr.msg_iov = addr_of_mut!(s.iov);
            s.hdr.msg_iovlen = 1;
            // SAFETY: encode_tx_cmsgs points hdr.msg_control at `s.cmsg`; both live in the
            // slot, which the slab entry keeps until the CQE.
            unsafe { sys::encode_tx_cmsgs(&mut s.hdr, &mut s.cmsg, &s.meta, self.v6, self.gso) };
            addr_of_mut!(s.hdr)
        };
        let key = self.ops.insert(Op::UdpSend(slot));
        self.tx_inflight += 1;
        let e = opcode::SendMsg::new(types::Fd(self.socket.as_raw_fd()), hdr)
            .build()
            .user_data(key as u64);
        self.push(e);
    }

    /// Accounts for a send's CQE; the slot has been taken back from the slab.
    pub(super) fn send_done(&mut self, slot: SendSlot, res: i32) {
        let SendSlot {
            meta,
            buf,
            gso_batch,
            datagrams,
            ..
        } = slot;
        if res >= 0 {
            self.stats.tx_calls += 1;
            self.stats.tx_bytes += buf.len() as u64;
            if gso_batch {
                self.stats.tx_gso_batches += 1;
            }
            self.stats.tx_datagrams += datagrams as u64;
            self.recycle(buf);
            return;
        }
        let e = io::Error::from_raw_os_error(-res);
        if gso_batch && sys::is_gso_error(&e) {
            self.gso_failed(&e);
            self.requeue_segments(meta, buf);
        } else if e.kind() == io::ErrorKind::WouldBlock {
            // Socket buffer full: keep it, first in line.
            self.tx_queue.push_front((meta, buf));
        } else {
            self.stats.tx_errors += 1;
            tracing::debug!("UDP send to {} failed: {e}", meta.dest);
            self.recycle(buf);
        }
    }

    fn gso_failed(&mut self, e: &io::Error) {
        if self.gso {
            tracing::warn!(
                "GSO send failed on {} ({e}); GSO is now off for this socket",
                self.local
            );
            self.gso = false;
            self.stats.gso_disabled += 1;
        }
    }

    /// Puts the datagrams of a GSO batch at the front of the queue, one send each.
    fn requeue_segments(&mut self, meta: TxMeta, buf: Vec<u8>) {
        let single = TxMeta {
            segment_size: None,
            ..meta
        };
        let segs: Vec<Vec<u8>> = sys::segments(&buf, meta.segment_size)
            .map(|seg| {
                let mut v = self.tx_pool.pop().unwrap_or_default();
                v.clear();
                v.extend_from_slice(seg);
                v
            })
            .collect();
        for v in segs.into_iter().rev() {
            self.tx_queue.push_front((single, v));
        }
        self.recycle(buf);
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.tx_pool.len() < self.send_depth {
            buf.clear();
            self.tx_pool.push(buf);
        }
    }
}
