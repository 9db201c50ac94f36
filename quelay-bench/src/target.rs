//! `quelay-bench target`: the TCP and UDP endpoint that Hysteria2 benchmark traffic reaches
//! through the server under test.
//!
//! TCP: each connection starts with a 9-byte header, a mode byte and a u64 big-endian
//! length `N`, then
//! - `u` upload: read and discard until EOF, then write the byte count (u64 BE) and close;
//! - `d` download: write `N` bytes of [`super::pattern`], then close;
//! - `e` echo: echo everything until EOF, then close;
//! - `r` request/response: read exactly `N` bytes, write `N` pattern bytes back, close.
//!
//! UDP (same port): every datagram is echoed to its sender.
//!
//! Each thread runs one mio (epoll) loop with its own SO_REUSEPORT listener and UDP socket,
//! so 10,000 concurrent connections cost a slab entry each, not a thread.

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use super::{pattern, CHUNK, HEADER_LEN};

/// Mode bytes of the TCP header.
pub const MODE_UPLOAD: u8 = b'u';
pub const MODE_DOWNLOAD: u8 = b'd';
pub const MODE_ECHO: u8 = b'e';
pub const MODE_REQUEST: u8 = b'r';

/// Listen backlog: the relay may open thousands of connections in a burst.
const BACKLOG: i32 = 4096;
/// Echo bytes buffered for a slow reader before the target stops reading.
const ECHO_BUFFER: usize = 256 * 1024;
const LISTENER: Token = Token(usize::MAX - 1);
const UDP: Token = Token(usize::MAX - 2);
/// How soon to retry accepting after running out of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(20);

/// The header the benchmark client writes first on every TCP connection.
pub fn header(mode: u8, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = mode;
    h[1..].copy_from_slice(&len.to_be_bytes());
    h
}

/// A started target: its address; its threads run for the life of the process.
pub struct Target {
    pub addr: SocketAddr,
}

/// Binds TCP and UDP on `listen` (port 0: one free port for both) with `threads` loops.
pub fn start(listen: SocketAddr, threads: usize) -> io::Result<Target> {
    let mut addr = listen;
    let mut loops = Vec::new();
    for _ in 0..threads.max(1) {
        let tcp = bind(addr, Type::STREAM, Protocol::TCP)?;
        tcp.listen(BACKLOG)?;
        if let Some(a) = tcp.local_addr()?.as_socket() {
            addr = a;
        }
        let udp = bind(addr, Type::DGRAM, Protocol::UDP)?;
        loops.push((tcp, udp));
    }
    for (i, (tcp, udp)) in loops.into_iter().enumerate() {
        let listener = TcpListener::from_std(tcp.into());
        let udp = UdpSocket::from_std(udp.into());
        std::thread::Builder::new()
            .name(format!("target-{i}"))
            .spawn(move || {
                if let Err(e) = run(listener, udp) {
                    tracing::error!("bench target loop {i} stopped: {e}");
                }
            })?;
    }
    Ok(Target { addr })
}

/// Serves until SIGTERM or SIGINT.
pub fn wait() -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn bind(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    if ty == Type::DGRAM {
        // Bursts of echoed datagrams should not overflow a default-sized buffer.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
    }
    s.bind(&addr.into())?;
    Ok(s)
}

/// What a connection does once its header is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Header,
    Upload,
    Download,
    Echo,
    Request,
}

struct Conn {
    sock: TcpStream,
    header: [u8; HEADER_LEN],
    /// Header bytes read so far.
    got: usize,
    phase: Phase,
    /// `N` from the header.
    len: u64,
    /// Payload bytes read (upload, request) so far.
    read: u64,
    /// Pattern bytes still to generate (download, request once read).
    to_send: u64,
    /// Pattern bytes generated so far: the offset of the next one.
    sent: u64,
    /// Bytes waiting to be written (echo data, the upload count).
    out: Vec<u8>,
    out_pos: usize,
    /// The peer sent EOF.
    eof: bool,
}

/// Outcome of driving a connection.
enum Drive {
    Open,
    Close,
}

impl Conn {
    fn new(sock: TcpStream) -> Self {
        Conn {
            sock,
            header: [0; HEADER_LEN],
            got: 0,
            phase: Phase::Header,
            len: 0,
            read: 0,
            to_send: 0,
            sent: 0,
            out: Vec::new(),
            out_pos: 0,
            eof: false,
        }
    }

    /// Makes all the progress the socket allows (edge-triggered: until it would block).
    fn drive(&mut self, scratch: &mut [u8]) -> io::Result<Drive> {
        loop {
            let progress = match self.phase {
                Phase::Header => self.read_header()?,
                Phase::Upload => {
                    let mut p = false;
                    if !self.eof {
                        p = self.read_some(scratch, usize::MAX, false)?;
                        if self.eof {
                            self.out = self.read.to_be_bytes().to_vec();
                        }
                    }
                    p | self.flush()?
                }
                Phase::Echo => {
                    let mut p = self.flush()?;
                    if !self.eof && self.out.len() - self.out_pos < ECHO_BUFFER {
                        p |= self.read_some(scratch, usize::MAX, true)?;
                    }
                    p
                }
                Phase::Request => {
                    let want = (self.len - self.read).min(usize::MAX as u64) as usize;
                    let mut p = false;
                    if want > 0 && !self.eof {
                        p = self.read_some(scratch, want, false)?;
                        if self.read == self.len {
                            self.to_send = self.len;
                        }
                    } else if want > 0 {
                        return Ok(Drive::Close); // EOF before the whole request
                    }
                    p | self.generate()?
                }
                Phase::Download => self.generate()?,
            };
            if self.finished() {
                return Ok(Drive::Close);
            }
            if !progress {
                return Ok(Drive::Open);
            }
        }
    }

    fn finished(&self) -> bool {
        let flushed = self.out_pos == self.out.len();
        match self.phase {
            Phase::Header => self.eof,
            Phase::Upload | Phase::Echo => self.eof && flushed,
            Phase::Download => self.to_send == 0,
            Phase::Request => self.read == self.len && self.to_send == 0,
        }
    }

    fn read_header(&mut self) -> io::Result<bool> {
        match self.sock.read(&mut self.header[self.got..]) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.got += n;
                if self.got == HEADER_LEN {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(&self.header[1..]);
                    self.len = u64::from_be_bytes(len);
                    self.phase = match self.header[0] {
                        MODE_UPLOAD => Phase::Upload,
                        MODE_DOWNLOAD => {
                            self.to_send = self.len;
                            Phase::Download
                        }
                        MODE_ECHO => Phase::Echo,
                        MODE_REQUEST => Phase::Request,
                        m => {
                            return Err(io::Error::new(
                                ErrorKind::InvalidData,
                                format!("unknown mode byte {m:#04x}"),
                            ))
                        }
                    };
                }
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// One read of at most `max` bytes: counted, and kept for echo when `keep`.
    fn read_some(&mut self, scratch: &mut [u8], max: usize, keep: bool) -> io::Result<bool> {
        let n = scratch.len().min(max);
        match self.sock.read(&mut scratch[..n]) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.read += n as u64;
                if keep {
                    if self.out_pos == self.out.len() {
                        self.out.clear();
                        self.out_pos = 0;
                    } else if self.out_pos >= ECHO_BUFFER {
                        self.out.drain(..self.out_pos);
                        self.out_pos = 0;
                    }
                    self.out.extend_from_slice(&scratch[..n]);
                }
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Writes buffered bytes.
    fn flush(&mut self) -> io::Result<bool> {
        if self.out_pos == self.out.len() {
            return Ok(false);
        }
        match self.sock.write(&self.out[self.out_pos..]) {
            Ok(n) => {
                self.out_pos += n;
                Ok(n > 0)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Writes pattern bytes.
    fn generate(&mut self) -> io::Result<bool> {
        if self.to_send == 0 {
            return Ok(false);
        }
        let n = self.to_send.min(CHUNK as u64) as usize;
        match self.sock.write(pattern(self.sent, n)) {
            Ok(n) => {
                self.sent += n as u64;
                self.to_send -= n as u64;
                Ok(n > 0)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// One loop: accept, drive connections, echo datagrams. Returns only on a poll failure.
fn run(mut listener: TcpListener, mut udp: UdpSocket) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    poll.registry()
        .register(&mut udp, UDP, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut conns: Slab<Conn> = Slab::new();
    let mut scratch = vec![0u8; CHUNK];
    let mut accept_later = false;
    loop {
        let timeout = accept_later.then_some(ACCEPT_RETRY);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if std::mem::take(&mut accept_later) {
            accept_later = accept(&listener, &poll, &mut conns, &mut scratch);
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => accept_later = accept(&listener, &poll, &mut conns, &mut scratch),
                UDP => echo_datagrams(&udp, &mut scratch),
                Token(key) => drive(&poll, &mut conns, key, &mut scratch),
            }
        }
    }
}

/// Accepts until the backlog is empty. True when out of descriptors: retry soon.
fn accept(listener: &TcpListener, poll: &Poll, conns: &mut Slab<Conn>, scratch: &mut [u8]) -> bool {
    loop {
        match listener.accept() {
            Ok((mut sock, _)) => {
                let _ = sock.set_nodelay(true);
                let entry = conns.vacant_entry();
                let key = entry.key();
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(e) = poll.registry().register(&mut sock, Token(key), interest) {
                    tracing::warn!("bench target: cannot register a connection: {e}");
                    continue;
                }
                entry.insert(Conn::new(sock));
                drive(poll, conns, key, scratch);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(24) || e.raw_os_error() == Some(23) => {
                // EMFILE / ENFILE: leave the rest in the backlog until descriptors free up.
                tracing::warn!("bench target: accept: {e}");
                return true;
            }
            Err(e) => {
                tracing::debug!("bench target: accept: {e}");
                continue;
            }
        }
    }
}

fn drive(poll: &Poll, conns: &mut Slab<Conn>, key: usize, scratch: &mut [u8]) {
    let Some(c) = conns.get_mut(key) else { return };
    let close = match c.drive(scratch) {
        Ok(Drive::Open) => false,
        Ok(Drive::Close) => true,
        Err(e) => {
            tracing::debug!("bench target: connection: {e}");
            true
        }
    };
    if close {
        let mut c = conns.remove(key);
        let _ = poll.registry().deregister(&mut c.sock);
        // Dropping the socket closes it: a FIN after the data still in its send buffer.
    }
}

fn echo_datagrams(udp: &UdpSocket, buf: &mut [u8]) {
    loop {
        match udp.recv_from(buf) {
            Ok((n, peer)) => {
                // A full send buffer drops the echo, as a real network would.
                let _ = udp.send_to(&buf[..n], peer);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return, // WouldBlock, or an ICMP error for an earlier send
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream, UdpSocket};

    fn target() -> SocketAddr {
        start("127.0.0.1:0".parse().unwrap(), 1).unwrap().addr
    }

    #[test]
    fn modes() {
        let addr = target();
        // Download.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&header(MODE_DOWNLOAD, 100_000)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 100_000);
        assert!(got
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c == pattern(i as u64 * 1000, c.len())));
        // Upload.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&header(MODE_UPLOAD, 0)).unwrap();
        s.write_all(&[7u8; 300_000]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, 300_000u64.to_be_bytes());
        // Echo.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&header(MODE_ECHO, 0)).unwrap();
        s.write_all(b"hello").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        // Request/response, without EOF from the client.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&header(MODE_REQUEST, 1024)).unwrap();
        s.write_all(&[1u8; 1024]).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, pattern(0, 1024));
        // UDP echo.
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        u.send_to(b"ping", addr).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = u.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], addr));
    }

    #[test]
    fn bad_mode_closes() {
        let addr = target();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&header(b'x', 5)).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.is_empty());
    }
}
