//! The sockets a worker group runs on: the QUIC socket group (one UDP socket per worker in
//! one SO_REUSEPORT group, kernel CID steering and its self-test), the client's local
//! listener groups, and the specs that hand each worker its socket.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use super::WorkerSpec;
use crate::engine::{self, BufferReport};
use crate::quic::cid::CidLayout;

/// How datagrams reach the worker that owns their connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steering {
    /// Kernel BPF picks the socket from the CID; the user-space forwarder catches the rest.
    Bpf,
    /// The kernel's 4-tuple hash only; the user-space forwarder routes by CID.
    Hash,
}

/// A bound QUIC socket group: one socket per worker, in worker order.
pub struct SocketGroup {
    /// The sockets; socket i belongs to worker i.
    pub sockets: Vec<UdpSocket>,
    /// The address bound (its port, when the one asked for was 0).
    pub addr: SocketAddr,
    /// The buffers the kernel granted the first socket.
    pub buffers: BufferReport,
    /// Steering in effect: [`Steering::Bpf`] only when the program attached and passed its
    /// self-test; otherwise the forwarder routes what the kernel's hash misplaces.
    pub steering: Steering,
}

impl SocketGroup {
    /// Binds `n` sockets on `addr` in worker order (port 0 picks one port for all), asking
    /// for `buffer` bytes of socket buffers, and attaches `steering` when there is more than
    /// one worker. A steering program the kernel refuses is logged and leaves
    /// [`Steering::Hash`]; the buffers granted are logged too.
    /// `layout`: where the CIDs carry the worker (for the steering program).
    pub fn bind(
        addr: SocketAddr,
        n: usize,
        buffer: usize,
        steering: Steering,
        layout: CidLayout,
    ) -> io::Result<SocketGroup> {
        let (sockets, buffers) = bind_group(addr, n, buffer)?;
        let addr = sockets
            .first()
            .ok_or_else(|| io::Error::other("no sockets"))?
            .local_addr()?;
        log_buffers(&buffers, buffer);
        let bpf = n > 1 && steering == Steering::Bpf && attach_steering(&sockets, layout);
        Ok(SocketGroup {
            sockets,
            addr,
            buffers,
            steering: if bpf { Steering::Bpf } else { Steering::Hash },
        })
    }

    /// One worker spec per socket, all serving `server_config`; `cluster`: the node's CID
    /// layout and the cluster's stateless-reset key (`None`: a lone server, a random key).
    pub fn specs(
        self,
        server_config: &Arc<quinn_proto::ServerConfig>,
        cluster: Option<(CidLayout, [u8; 64])>,
    ) -> Vec<WorkerSpec> {
        worker_specs(self.sockets, server_config, cluster)
    }
}

/// Binds `n` sockets of one SO_REUSEPORT group on `addr`, in worker order (a reuseport
/// BPF program picks members by that position). Port 0 picks one port for all.
pub fn bind_group(
    addr: SocketAddr,
    n: usize,
    buffer: usize,
) -> io::Result<(Vec<UdpSocket>, BufferReport)> {
    let mut report = None;
    let (socks, _) = bind_each(addr, n, |addr| {
        let (s, r) = engine::bind_udp(addr, true, buffer)?;
        report.get_or_insert(r);
        let bound = s.local_addr()?;
        Ok((s, bound))
    })?;
    let report = report.ok_or_else(|| io::Error::other("no sockets"))?;
    Ok((socks, report))
}

/// Binds `n` sockets with `bind`, the first on `addr` and the others on the address the
/// first one got (port 0 picks one port for all). Returns them and that address.
fn bind_each<T>(
    addr: SocketAddr,
    n: usize,
    mut bind: impl FnMut(SocketAddr) -> io::Result<(T, SocketAddr)>,
) -> io::Result<(Vec<T>, SocketAddr)> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, bound) = bind(addr)?;
        addr.set_port(bound.port());
        out.push(s);
    }
    Ok((out, addr))
}

/// One worker spec per socket of the group: all share the server config and one stateless
/// reset key (the cluster's, or a random one); each issues CIDs that name it.
pub fn worker_specs(
    socks: Vec<UdpSocket>,
    server_config: &Arc<quinn_proto::ServerConfig>,
    cluster: Option<(CidLayout, [u8; 64])>,
) -> Vec<WorkerSpec> {
    let n = socks.len();
    let (layout, reset_key) = cluster.unwrap_or_else(|| {
        let mut key = [0u8; 64];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
        (CidLayout::default(), key)
    });
    socks
        .into_iter()
        .enumerate()
        .map(|(i, socket)| WorkerSpec {
            socket,
            endpoint_config: Arc::new(crate::quic::endpoint_config(
                &reset_key, i as u8, n as u8, layout,
            )),
            server_config: Some(server_config.clone()),
            client_config: None,
            layout,
        })
        .collect()
}

/// Attaches kernel CID steering to the group and self-tests it; false (logged) when the
/// kernel refuses, leaving routing to the user-space forwarder.
pub fn attach_steering(socks: &[UdpSocket], layout: CidLayout) -> bool {
    // The worker byte's offset in a short header's UDP payload: after the first byte.
    match engine::steer_group(socks, 1 + layout.worker_byte() as u32) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("CID steering unavailable ({e}); relying on user-space forwarding");
            false
        }
    }
}

/// Logs the socket buffers the kernel granted against the `want` asked for.
pub fn log_buffers(r: &BufferReport, want: usize) {
    if r.forced {
        tracing::info!(
            "socket buffers forced to {} KiB (SO_RCVBUFFORCE)",
            r.rcvbuf / 1024
        );
    } else if r.rcvbuf < want {
        tracing::warn!(
            "socket buffers capped at {} KiB receive / {} KiB send by net.core.rmem_max/wmem_max \
             (wanted {} KiB; see tuning/)",
            r.rcvbuf / 1024,
            r.sndbuf / 1024,
            want / 1024
        );
    } else {
        tracing::info!("socket buffers {} KiB", r.rcvbuf / 1024);
    }
}

/// What a local listener group accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// TCP connections, with this accept backlog.
    Tcp { backlog: i32 },
    /// UDP datagrams.
    Udp,
}

/// Binds a local listener group: `n` SO_REUSEPORT sockets on `addr`, one per worker (port
/// 0: the first one's port for all). An IPv6 `addr` serves IPv4 too, as Go's listeners do.
/// Returns the sockets and the address bound.
pub fn bind_listeners(
    addr: SocketAddr,
    n: usize,
    kind: Listener,
) -> io::Result<(Vec<OwnedFd>, SocketAddr)> {
    bind_each(addr, n, |addr| {
        let s = listener(addr, kind)?;
        let bound = s.local_addr()?.as_socket().unwrap_or(addr);
        Ok((OwnedFd::from(s), bound))
    })
}

fn listener(addr: SocketAddr, kind: Listener) -> io::Result<Socket> {
    let (ty, protocol) = match kind {
        Listener::Tcp { .. } => (Type::STREAM, Protocol::TCP),
        Listener::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if let Listener::Tcp { .. } = kind {
        s.set_reuse_address(true)?;
    }
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    s.bind(&addr.into())?;
    if let Listener::Tcp { backlog } = kind {
        s.listen(backlog)?;
    }
    Ok(s)
}
