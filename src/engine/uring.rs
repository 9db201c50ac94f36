//! io_uring driver (being written).
use super::*;

pub struct UringDriver;

impl UringDriver {
    pub fn new(_socket: std::net::UdpSocket, _cfg: &DriverConfig) -> io::Result<Self> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

pub fn probe() -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

impl Driver for UringDriver {
    fn kind(&self) -> IoKind {
        IoKind::Uring
    }
    fn local_addr(&self) -> SocketAddr {
        unreachable!()
    }
    fn gso_enabled(&self) -> bool {
        unreachable!()
    }
    fn send(&mut self, _meta: TxMeta, _buf: Vec<u8>) {
        unreachable!()
    }
    fn can_send(&self) -> bool {
        unreachable!()
    }
    fn tx_buf(&mut self) -> Vec<u8> {
        unreachable!()
    }
    fn wait(&mut self, _timeout: Option<Duration>) -> io::Result<()> {
        unreachable!()
    }
    fn reap(&mut self, _max_udp: usize, _on: &mut dyn FnMut(Event<'_>)) -> usize {
        unreachable!()
    }
    fn waker(&self) -> Waker {
        unreachable!()
    }
    fn stats(&self) -> EngineStats {
        unreachable!()
    }
    fn tcp_connect(&mut self, _addr: SocketAddr, _token: u64) -> io::Result<()> {
        unreachable!()
    }
    fn tcp_recv(&mut self, _fd: RawFd, _buf: Vec<u8>, _token: u64) {
        unreachable!()
    }
    fn tcp_send(&mut self, _fd: RawFd, _buf: Vec<u8>, _token: u64) {
        unreachable!()
    }
    fn tcp_close(&mut self, _fd: RawFd, _token: u64) {
        unreachable!()
    }
}
