//! A SOCKS5 client (RFC 1928): "no authentication" or username/password (RFC 1929), CONNECT,
//! and UDP ASSOCIATE with the UDP request header of section 7.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Connect, read and write timeout of every SOCKS5 stream: long enough for a Hysteria2
/// handshake (sing-box gives its own 15 s), short enough to bound a stuck test.
pub const SOCKS_TIMEOUT: Duration = Duration::from_secs(30);

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const USER_PASS: u8 = 2;
pub const CMD_CONNECT: u8 = 1;
pub const CMD_BIND: u8 = 2;
pub const CMD_UDP_ASSOCIATE: u8 = 3;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

fn proto_err(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The text of a SOCKS5 reply code (RFC 1928 section 6).
pub fn reply_text(rep: u8) -> &'static str {
    match rep {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

/// Appends ATYP, DST.ADDR and DST.PORT: an IP literal as an address, anything else as a
/// domain name.
pub fn push_addr(buf: &mut Vec<u8>, host: &str, port: u16) -> io::Result<()> {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            buf.push(ATYP_V4);
            buf.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            buf.push(ATYP_V6);
            buf.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            let len = u8::try_from(host.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "domain over 255 bytes")
            })?;
            buf.push(ATYP_DOMAIN);
            buf.push(len);
            buf.extend_from_slice(host.as_bytes());
        }
    }
    buf.extend_from_slice(&port.to_be_bytes());
    Ok(())
}

/// An address as SOCKS5 carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocksAddr {
    Ip(SocketAddr),
    Domain(String, u16),
}

/// Reads ATYP, ADDR and PORT.
fn read_addr(r: &mut impl Read) -> io::Result<SocksAddr> {
    let mut atyp = [0];
    r.read_exact(&mut atyp)?;
    let ip = match atyp[0] {
        ATYP_V4 => {
            let mut a = [0; 4];
            r.read_exact(&mut a)?;
            IpAddr::V4(Ipv4Addr::from(a))
        }
        ATYP_V6 => {
            let mut a = [0; 16];
            r.read_exact(&mut a)?;
            IpAddr::V6(Ipv6Addr::from(a))
        }
        ATYP_DOMAIN => {
            let mut len = [0];
            r.read_exact(&mut len)?;
            let mut name = vec![0; usize::from(len[0])];
            r.read_exact(&mut name)?;
            let mut port = [0; 2];
            r.read_exact(&mut port)?;
            let name =
                String::from_utf8(name).map_err(|_| proto_err("domain is not UTF-8".into()))?;
            return Ok(SocksAddr::Domain(name, u16::from_be_bytes(port)));
        }
        other => return Err(proto_err(format!("unknown address type {other}"))),
    };
    let mut port = [0; 2];
    r.read_exact(&mut port)?;
    Ok(SocksAddr::Ip(SocketAddr::new(ip, u16::from_be_bytes(port))))
}

/// Opens a TCP connection to the proxy with `SOCKS_TIMEOUT` read and write timeouts.
fn dial(proxy: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&proxy, SOCKS_TIMEOUT)?;
    s.set_read_timeout(Some(SOCKS_TIMEOUT))?;
    s.set_write_timeout(Some(SOCKS_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Offers the one method `method` and checks the proxy chose it.
fn negotiate(s: &mut TcpStream, method: u8) -> io::Result<()> {
    s.write_all(&[VERSION, 1, method])?;
    let mut choice = [0; 2];
    s.read_exact(&mut choice)?;
    if choice != [VERSION, method] {
        return Err(proto_err(format!(
            "proxy refused method {method:#04x}: answered {choice:02x?}"
        )));
    }
    Ok(())
}

/// Opens a TCP connection to the proxy and negotiates "no authentication".
fn open(proxy: SocketAddr) -> io::Result<TcpStream> {
    let mut s = dial(proxy)?;
    negotiate(&mut s, NO_AUTH)?;
    Ok(s)
}

/// A connection to the proxy that has negotiated "no authentication" and is ready for a
/// request (`socks5_request`); `SOCKS_TIMEOUT` read and write timeouts.
pub fn socks5_greet(proxy: SocketAddr) -> io::Result<TcpStream> {
    open(proxy)
}

/// Like `socks5_greet`, with username/password authentication (RFC 1929). A STATUS other
/// than 0 is a `PermissionDenied` error naming it.
pub fn socks5_greet_auth(proxy: SocketAddr, user: &str, pass: &str) -> io::Result<TcpStream> {
    let mut s = dial(proxy)?;
    negotiate(&mut s, USER_PASS)?;
    let status = socks5_auth(&mut s, user, pass)?;
    if status != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("username/password refused: status {status:#04x}"),
        ));
    }
    Ok(s)
}

/// Sends the RFC 1929 sub-negotiation and returns the proxy's STATUS (0 = success).
pub fn socks5_auth(s: &mut TcpStream, user: &str, pass: &str) -> io::Result<u8> {
    let (ulen, plen) = (
        u8::try_from(user.len()).expect("username under 256 bytes"),
        u8::try_from(pass.len()).expect("password under 256 bytes"),
    );
    let mut msg = vec![1, ulen];
    msg.extend_from_slice(user.as_bytes());
    msg.push(plen);
    msg.extend_from_slice(pass.as_bytes());
    s.write_all(&msg)?;
    let mut reply = [0; 2];
    s.read_exact(&mut reply)?;
    if reply[0] != 1 {
        return Err(proto_err(format!("auth reply version {}", reply[0])));
    }
    Ok(reply[1])
}

/// Sends a request on a negotiated connection and reads the reply, whatever its REP:
/// returns REP and BND.ADDR:BND.PORT (`None` for a failure reply whose address did not
/// arrive whole: the proxy closes after a failure).
pub fn socks5_request(
    s: &mut TcpStream,
    cmd: u8,
    host: &str,
    port: u16,
) -> io::Result<(u8, Option<SocksAddr>)> {
    let mut req = vec![VERSION, cmd, 0];
    push_addr(&mut req, host, port)?;
    s.write_all(&req)?;
    let mut head = [0; 3];
    s.read_exact(&mut head)?;
    if head[0] != VERSION {
        return Err(proto_err(format!("reply version {}", head[0])));
    }
    let bind = read_addr(s);
    match head[1] {
        0 => Ok((0, Some(bind?))),
        rep => Ok((rep, bind.ok())),
    }
}

/// Sends a request and reads the reply; returns BND.ADDR:BND.PORT. A failure reply is a
/// `ConnectionRefused` error naming the code.
fn request(s: &mut TcpStream, cmd: u8, host: &str, port: u16) -> io::Result<SocksAddr> {
    match socks5_request(s, cmd, host, port)? {
        (0, Some(bind)) => Ok(bind),
        (rep, _) => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("SOCKS5 reply {rep}: {}", reply_text(rep)),
        )),
    }
}

/// A TCP stream to `host:port` through the SOCKS5 proxy at `proxy` (CONNECT). `host` goes as
/// an IPv4/IPv6 address if it is an IP literal, else as a domain name. The stream has
/// `SOCKS_TIMEOUT` read and write timeouts.
pub fn socks5_connect(proxy: SocketAddr, host: &str, port: u16) -> io::Result<TcpStream> {
    let mut s = open(proxy)?;
    request(&mut s, CMD_CONNECT, host, port)?;
    Ok(s)
}

/// A UDP association through a SOCKS5 proxy. The TCP control connection stays open for the
/// association's lifetime, as RFC 1928 requires.
pub struct Socks5Udp {
    _control: TcpStream,
    socket: UdpSocket,
    /// Where the proxy relays datagrams from (BND.ADDR:BND.PORT of the reply).
    relay: SocketAddr,
}

impl Socks5Udp {
    pub fn associate(proxy: SocketAddr) -> io::Result<Socks5Udp> {
        let socket = UdpSocket::bind(SocketAddr::new(proxy.ip(), 0))?;
        let local = socket.local_addr()?;
        let mut control = open(proxy)?;
        let relay = match request(
            &mut control,
            CMD_UDP_ASSOCIATE,
            &local.ip().to_string(),
            local.port(),
        )? {
            // An unspecified BND.ADDR means "the address you reached me on".
            SocksAddr::Ip(a) if a.ip().is_unspecified() => SocketAddr::new(proxy.ip(), a.port()),
            SocksAddr::Ip(a) => a,
            SocksAddr::Domain(d, p) => {
                return Err(proto_err(format!("UDP relay given as a domain: {d}:{p}")))
            }
        };
        Ok(Socks5Udp {
            _control: control,
            socket,
            relay,
        })
    }

    pub fn relay_addr(&self) -> SocketAddr {
        self.relay
    }

    /// Sends `payload` to `target` through the proxy (RSV, FRAG 0, the address, the payload).
    pub fn send_to(&self, target: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let mut pkt = vec![0, 0, 0];
        push_addr(&mut pkt, &target.ip().to_string(), target.port())?;
        pkt.extend_from_slice(payload);
        self.socket.send_to(&pkt, self.relay)?;
        Ok(())
    }

    /// The next datagram relayed back, as (source, payload). Datagrams from anywhere but the
    /// relay, fragments and domain sources are skipped. `TimedOut` after `timeout`.
    pub fn recv_from(&self, timeout: Duration) -> io::Result<(SocketAddr, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.socket.set_read_timeout(Some(left))?;
            let (n, from) = match self.socket.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(io::ErrorKind::TimedOut.into())
                }
                Err(e) => return Err(e),
            };
            if from != self.relay || n < 4 || buf[2] != 0 {
                continue;
            }
            let mut r = &buf[3..n];
            if let Ok(SocksAddr::Ip(src)) = read_addr(&mut r) {
                return Ok((src, r.to_vec()));
            }
        }
    }
}

/// Bytes of the answer to `socks5_connect_send` when the proxy replies with an IPv4
/// BND.ADDR (as quelay does, success or failure): the method choice and the reply.
pub const CONNECT_ANSWER_LEN: usize = 2 + 10;

/// Opens a connection to the proxy and sends the greeting ("no authentication") and a
/// CONNECT to `host:port` in one write, without waiting for either answer: many requests
/// can be in flight at once. The answer is `CONNECT_ANSWER_LEN` bytes whose fourth is REP.
pub fn socks5_connect_send(proxy: SocketAddr, host: &str, port: u16) -> io::Result<TcpStream> {
    let mut s = dial(proxy)?;
    let mut msg = vec![VERSION, 1, NO_AUTH, VERSION, CMD_CONNECT, 0];
    push_addr(&mut msg, host, port)?;
    s.write_all(&msg)?;
    Ok(s)
}
