//! Socket set-up and control messages shared by both drivers.
//!
//! Features are probed once per socket and degrade quietly (quinn-udp's approach): a
//! kernel without UDP_GRO still receives, one datagram per call; without UDP_SEGMENT the
//! drivers send one datagram per call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use super::{Egress, RecvMeta, TxMeta};

// Not every libc version exports these; values from include/uapi/linux/udp.h.
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Bytes of control-message space a receive needs (GRO + TOS/TCLASS + PKTINFO, both families).
pub const RX_CMSG_SPACE: usize = 128;
/// Bytes of control-message space a send needs (GSO + ECN + source address).
pub const TX_CMSG_SPACE: usize = 96;

/// Socket buffer sizes obtained, and how.
#[derive(Clone, Copy, Debug)]
pub struct BufferReport {
    pub rcvbuf: usize,
    pub sndbuf: usize,
    /// True when SO_RCVBUFFORCE/SO_SNDBUFFORCE worked (CAP_NET_ADMIN); false when the
    /// sizes were capped by net.core.rmem_max / wmem_max.
    pub forced: bool,
}

/// Creates a non-blocking UDP socket bound to `addr`, with GRO, ECN and PKTINFO reception
/// switched on and large buffers.
///
/// `reuseport` makes it a member of a SO_REUSEPORT group: bind the members in worker
/// order, since a reuseport BPF program selects sockets by that position.
pub fn bind_udp(
    addr: SocketAddr,
    reuseport: bool,
    buffer: usize,
) -> io::Result<(UdpSocket, BufferReport)> {
    bind_udp_with(addr, reuseport, buffer, &SockOpts::default())
}

/// Socket options a QUIC socket may be asked for (the client's `quic.sockopts`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SockOpts {
    /// SO_BINDTODEVICE: the socket sends and receives through this interface only.
    pub device: Option<String>,
    /// SO_MARK: the mark its packets carry, for policy routing (CAP_NET_ADMIN).
    pub mark: Option<u32>,
}

/// [`bind_udp`] with `opts` applied before the bind; an option the kernel refuses fails it,
/// saying which.
pub fn bind_udp_with(
    addr: SocketAddr,
    reuseport: bool,
    buffer: usize,
    opts: &SockOpts,
) -> io::Result<(UdpSocket, BufferReport)> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too (dual stack), as the reference server's `:443` does.
        sock.set_only_v6(false)?;
    }
    if reuseport {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    if let Some(dev) = &opts.device {
        sock.bind_device(Some(dev.as_bytes())).map_err(|e| {
            io::Error::new(e.kind(), format!("failed to bind to interface {dev}: {e}"))
        })?;
    }
    if let Some(mark) = opts.mark {
        sock.set_mark(mark)
            .map_err(|e| io::Error::new(e.kind(), format!("failed to set fwmark {mark}: {e}")))?;
    }
    let report = set_buffers(sock.as_raw_fd(), buffer);
    configure_rx(sock.as_raw_fd(), addr.is_ipv6())?;
    sock.bind(&addr.into())?;
    Ok((sock.into(), report))
}

/// Creates the socket of a relayed UDP session: non-blocking, bound to `addr` (dual-stack
/// when IPv6), `buffer` bytes of buffers. No GRO or PKTINFO: it carries single datagrams
/// to and from arbitrary hosts, not QUIC.
pub fn udp_session_socket(
    addr: SocketAddr,
    device: Option<&str>,
    buffer: usize,
) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    set_buffers(sock.as_raw_fd(), buffer);
    if let Some(dev) = device {
        sock.bind_device(Some(dev.as_bytes()))?;
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// The address family of a socket: true for IPv6.
pub fn is_ipv6_socket(fd: RawFd) -> io::Result<bool> {
    Ok(getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)? == libc::AF_INET6)
}

/// Asks for `want` bytes of receive and send buffer, forcing past the sysctl maximum when
/// the process may (CAP_NET_ADMIN), otherwise taking what the maximum allows.
pub fn set_buffers(fd: RawFd, want: usize) -> BufferReport {
    let want = want.min(i32::MAX as usize / 2) as libc::c_int;
    let forced = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want).is_ok()
        & setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want).is_ok();
    if !forced {
        let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, want);
        let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, want);
    }
    // The kernel reports double the value set (bookkeeping overhead).
    let rcvbuf = getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0) as usize / 2;
    let sndbuf = getsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0) as usize / 2;
    BufferReport {
        rcvbuf,
        sndbuf,
        forced,
    }
}

fn configure_rx(fd: RawFd, v6: bool) -> io::Result<()> {
    // ECN and the local address of every datagram; IPv4 options also apply to the IPv4
    // traffic of a dual-stack IPv6 socket.
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1)?;
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    // Do not fragment: QUIC does its own path MTU discovery.
    setsockopt(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    )?;
    if v6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1)?;
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
    }
    Ok(())
}

/// Switches UDP_GRO on; false when the kernel does not have it.
pub fn enable_gro(fd: RawFd) -> bool {
    setsockopt(fd, SOL_UDP, UDP_GRO, 1).is_ok()
}

/// Whether the kernel accepts UDP_SEGMENT on this socket.
pub fn gso_supported(fd: RawFd) -> bool {
    getsockopt(fd, SOL_UDP, UDP_SEGMENT).is_ok()
}

fn setsockopt(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: `v` lives on this stack frame for the duration of the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A socket address in the kernel's layout.
#[derive(Clone, Copy)]
pub struct RawAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl RawAddr {
    pub fn zeroed() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
        RawAddr {
            storage: unsafe { zeroed() },
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// Encodes `addr` for a socket of family `v6_socket` (IPv4 peers of a dual-stack
    /// socket are written as IPv4-mapped IPv6).
    pub fn new(addr: SocketAddr, v6_socket: bool) -> Self {
        let mut raw = RawAddr::zeroed();
        let addr = match addr {
            SocketAddr::V4(a) if v6_socket => {
                SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
            }
            a => a,
        };
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { *(&mut raw.storage as *mut _ as *mut libc::sockaddr_in) = sin };
                raw.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { *(&mut raw.storage as *mut _ as *mut libc::sockaddr_in6) = sin6 };
                raw.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        raw
    }

    /// Decodes the address; IPv4-mapped IPv6 comes back as IPv4.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.storage.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                let port = u16::from_be(sin6.sin6_port);
                Some(match ip.to_ipv4_mapped() {
                    Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                    None => SocketAddr::V6(SocketAddrV6::new(
                        ip,
                        port,
                        sin6.sin6_flowinfo,
                        sin6.sin6_scope_id,
                    )),
                })
            }
            _ => None,
        }
    }
}

/// The `msghdr` of one datagram on a UDP session socket: its address and one `iovec`, no
/// control messages. Self-referential once [`DgramMsg::link`]ed: it must not move while
/// the kernel uses it (the io_uring driver boxes it, the epoll driver keeps it on the
/// stack of one syscall).
pub struct DgramMsg {
    pub hdr: libc::msghdr,
    pub iov: libc::iovec,
    /// Destination of a send; the source the kernel writes on a receive.
    pub name: RawAddr,
}

impl DgramMsg {
    pub fn new(name: RawAddr) -> Self {
        DgramMsg {
            // SAFETY: msghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
            hdr: unsafe { zeroed() },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            name,
        }
    }

    /// Points the header at `self.name` and at `len` bytes from `data` (through
    /// `self.iov`), and returns it for the syscall or SQE.
    pub fn link(&mut self, data: *mut u8, len: usize) -> *mut libc::msghdr {
        self.iov = libc::iovec {
            iov_base: data.cast(),
            iov_len: len,
        };
        self.hdr.msg_name = std::ptr::addr_of_mut!(self.name.storage).cast();
        self.hdr.msg_namelen = self.name.len;
        self.hdr.msg_iov = std::ptr::addr_of_mut!(self.iov);
        self.hdr.msg_iovlen = 1;
        std::ptr::addr_of_mut!(self.hdr)
    }

    /// Reads the outcome of a receive made with `MSG_TRUNC` into a buffer of `cap` bytes
    /// that returned `len`: the datagram's length and source. A datagram longer than the
    /// buffer is an EMSGSIZE error (its tail is lost).
    pub fn received(&mut self, len: usize, cap: usize) -> io::Result<(usize, SocketAddr)> {
        if len > cap {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        self.name.len = self.hdr.msg_namelen;
        match self.name.socket_addr() {
            Some(peer) => Ok((len, peer)),
            None => Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
        }
    }
}

/// Control-message buffer, aligned as `cmsghdr` requires.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct CmsgBuf<const N: usize>(pub [u8; N]);

impl<const N: usize> CmsgBuf<N> {
    pub fn new() -> Self {
        CmsgBuf([0; N])
    }
}

impl<const N: usize> Default for CmsgBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Fills `hdr.msg_control` (pointing at `buf`) with the control messages a send needs and
/// sets `msg_controllen`. `gso` is false when GSO is off for the socket.
///
/// # Safety
/// `hdr.msg_control` must point at `buf`, which must stay alive while `hdr` is used.
pub unsafe fn encode_tx_cmsgs(
    hdr: &mut libc::msghdr,
    buf: &mut CmsgBuf<TX_CMSG_SPACE>,
    meta: &TxMeta,
    v6_socket: bool,
    gso: bool,
) {
    hdr.msg_control = buf.0.as_mut_ptr() as *mut libc::c_void;
    hdr.msg_controllen = TX_CMSG_SPACE as _;
    let mut len = 0usize;
    // SAFETY: msg_control/msg_controllen describe `buf`, which is large enough for the
    // three messages below (checked by the CMSG_SPACE sum in the test `tx_space_fits`).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        let mut push = |level: libc::c_int, ty: libc::c_int, data: &[u8]| {
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = ty;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
            std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
            len += libc::CMSG_SPACE(data.len() as u32) as usize;
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        };
        // IPv4 destinations (also when mapped on a dual-stack socket) take IPv4 options.
        let dest_v4 = meta.dest.is_ipv4();
        if meta.ecn != 0 {
            let tos = meta.ecn as libc::c_int;
            if dest_v4 {
                push(libc::IPPROTO_IP, libc::IP_TOS, &tos.to_ne_bytes());
            } else {
                push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &tos.to_ne_bytes());
            }
        }
        if let (true, Some(seg)) = (gso, meta.segment_size) {
            push(SOL_UDP, UDP_SEGMENT, &(seg as u16).to_ne_bytes());
        }
        match meta.src_ip {
            Some(IpAddr::V4(ip)) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(ip.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                push(libc::IPPROTO_IP, libc::IP_PKTINFO, as_bytes(&info));
            }
            Some(IpAddr::V6(ip)) if v6_socket => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, as_bytes(&info));
            }
            _ => {}
        }
    }
    hdr.msg_controllen = len as _;
    if len == 0 {
        hdr.msg_control = std::ptr::null_mut();
    }
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain C struct without padding-dependent meaning; we only copy its bytes.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }
}

/// Reads GRO stride, ECN and destination address from a received message's control data.
/// `len` is the datagram byte count of the receive.
///
/// # Safety
/// `hdr.msg_control`/`msg_controllen` must describe control data the kernel filled in.
pub unsafe fn decode_rx(hdr: &libc::msghdr, peer: SocketAddr, len: usize) -> RecvMeta {
    let mut meta = RecvMeta {
        peer,
        len,
        stride: len,
        ecn: 0,
        dst_ip: None,
    };
    if hdr.msg_control.is_null() {
        return meta;
    }
    // SAFETY: the caller guarantees the control buffer is the kernel's output; the CMSG
    // macros stay inside msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (SOL_UDP, UDP_GRO) => {
                    let s = std::ptr::read_unaligned(data as *const u16) as usize;
                    if s > 0 {
                        meta.stride = s;
                    }
                }
                (libc::IPPROTO_IP, libc::IP_TOS) => {
                    meta.ecn = *data & 0b11;
                }
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                    meta.ecn = (std::ptr::read_unaligned(data as *const libc::c_int) & 0b11) as u8;
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                    meta.dst_ip = Some(IpAddr::V4(Ipv4Addr::from(
                        info.ipi_addr.s_addr.to_ne_bytes(),
                    )));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                    let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                    meta.dst_ip = Some(match ip.to_ipv4_mapped() {
                        Some(v4) => IpAddr::V4(v4),
                        None => IpAddr::V6(ip),
                    });
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    meta
}

/// Whether a send error means "this socket cannot do GSO here" (quinn-udp's rule).
pub fn is_gso_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

/// Splits a GSO buffer into its datagrams (used when GSO has to be switched off).
pub fn segments(buf: &[u8], segment_size: Option<usize>) -> impl Iterator<Item = &[u8]> {
    let size = segment_size.unwrap_or(buf.len()).max(1);
    buf.chunks(size)
}

/// Wakes a worker blocked in its driver's `wait`: an eventfd both drivers watch.
#[derive(Clone)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned by the OwnedFd below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Waker(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live stack value to our eventfd. EAGAIN (counter
        // saturated) means a wakeup is already pending, which is all we need.
        unsafe {
            libc::write(
                self.fd(),
                &one as *const u64 as *const libc::c_void,
                size_of::<u64>(),
            );
        }
    }

    /// Resets the counter after a wakeup was seen (epoll driver).
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live stack value; non-blocking.
        unsafe {
            libc::read(
                self.fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                size_of::<u64>(),
            );
        }
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Creates a non-blocking TCP socket toward `addr`, set up as `egress` says (source
/// address, device, fast open), not yet connected.
pub fn tcp_socket(addr: SocketAddr, egress: &Egress) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    sock.set_nodelay(true)?;
    egress_setup(&sock, egress)?;
    if egress.fast_open {
        // The SYN leaves with the first write, carrying its data when the target has given
        // us a cookie; connect completes at once.
        setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN_CONNECT,
            1,
        )?;
    }
    Ok(sock)
}

/// Binds `sock` to the egress's device and source address (port 0), as set.
fn egress_setup(sock: &Socket, egress: &Egress) -> io::Result<()> {
    if let Some(dev) = &egress.device {
        sock.bind_device(Some(dev.as_bytes()))?;
    }
    if let Some(ip) = egress.bind {
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    Ok(())
}

/// Creates a non-blocking TCP socket and starts connecting it. Returns the fd and whether
/// the connect is still in progress.
pub fn tcp_connect_start(addr: SocketAddr, egress: &Egress) -> io::Result<(OwnedFd, bool)> {
    let sock = tcp_socket(addr, egress)?;
    let pending = match sock.connect(&addr.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) => return Err(e),
    };
    Ok((sock.into(), pending))
}

/// Takes a socket bound elsewhere for a driver: makes it non-blocking and returns it with,
/// for a UDP socket, its family from getsockname (true for IPv6, whose IPv4 destinations
/// are mapped); `None` for anything else (a listening TCP socket).
pub fn adopt(sock: OwnedFd) -> io::Result<(OwnedFd, Option<bool>)> {
    let sock = Socket::from(sock);
    sock.set_nonblocking(true)?;
    let udp_v6 = match sock.r#type()? {
        Type::DGRAM => Some(sock.local_addr()?.is_ipv6()),
        _ => None,
    };
    Ok((sock.into(), udp_v6))
}

/// Sets TCP_NODELAY on an accepted socket; a socket that is not TCP (unix) keeps going.
pub fn set_nodelay(fd: RawFd) {
    let _ = setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
}

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` with TCP_NODELAY set: the new socket and its
/// peer (IPv4-mapped IPv6 reported as IPv4; `None` for a unix peer).
pub fn accept(listener: RawFd) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
    let mut peer = RawAddr::zeroed();
    // SAFETY: the kernel writes at most `peer.len` bytes into `peer.storage` and the
    // length into `peer.len`, both alive on this stack frame for the call.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::addr_of_mut!(peer.storage).cast(),
            &mut peer.len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    set_nodelay(fd);
    Ok((sock, peer.socket_addr()))
}

/// The pending error of a socket (SO_ERROR), as a connect completes.
pub fn take_socket_error(fd: RawFd) -> io::Result<()> {
    match getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR)? {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `shutdown(fd, SHUT_WR)`.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor the caller owns; no memory is passed.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends SIGKILL to every process of the process group `pgid` (a child started as the
/// leader of a group of its own, with whatever it started since).
pub fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|&p| p > 1)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes plain integers; a negative pid names the process group.
    if unsafe { libc::kill(-pgid, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU seconds (user + system) this process has used.
pub fn cpu_seconds_self() -> f64 {
    // SAFETY: rusage is plain old data written by the kernel into our stack value.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: `ru` is valid for writes for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_space_fits() {
        // SAFETY: CMSG_SPACE is a pure computation.
        let need = unsafe {
            libc::CMSG_SPACE(4)
                + libc::CMSG_SPACE(2)
                + libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32)
        } as usize;
        assert!(need <= TX_CMSG_SPACE, "{need}");
    }

    #[test]
    fn raw_addr_round_trip() {
        for a in ["127.0.0.1:443", "[::1]:8443", "[fe80::1%2]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(RawAddr::new(a, a.is_ipv6()).socket_addr(), Some(a));
        }
        let v4: SocketAddr = "10.0.0.1:53".parse().unwrap();
        let raw = RawAddr::new(v4, true);
        assert_eq!(raw.storage.ss_family as i32, libc::AF_INET6);
        assert_eq!(raw.socket_addr(), Some(v4));
    }

    #[test]
    fn bind_reports_buffers() {
        let (s, report) = bind_udp("127.0.0.1:0".parse().unwrap(), false, 4 << 20).unwrap();
        assert!(report.rcvbuf > 0 && report.sndbuf > 0);
        assert!(s.local_addr().unwrap().port() != 0);
        assert!(enable_gro(s.as_raw_fd()));
        assert!(gso_supported(s.as_raw_fd()));
    }
}
