//! The server side of SOCKS5 (RFC 1928) with username/password auth (RFC 1929), sans-IO.
//!
//! The client role offers a local SOCKS5 proxy; each accepted TCP connection gets one
//! [`Socks5Server`], which turns the bytes the SOCKS client sends into [`Step`]s. Nothing here
//! opens a socket or reads the clock, and no input makes it panic.
//!
//! Call order, per accepted connection:
//! 1. [`Socks5Server::new`] with the configured credentials, if any.
//! 2. After every read, [`Socks5Server::feed`] the bytes read. On [`Step::Reply`] write the
//!    bytes and call `feed(&[])` again: clients may pipeline their next message behind the
//!    last, and it is already buffered. On [`Step::NeedMore`] read again.
//! 3. On [`Step::Request`]:
//!    - [`Command::Connect`]: open a Hysteria2 stream with a TCPRequest for
//!      [`Destination::to_host_port`], write [`reply`]`(Succeeded, bind)` or the failure code,
//!      then relay, starting with [`Socks5Server::take_leftover`].
//!    - [`Command::UdpAssociate`]: bind a UDP socket, write [`reply`]`(Succeeded, its address)`
//!      and keep the TCP connection open for the association's lifetime. Datagrams from the
//!      SOCKS client go through [`parse_udp`], answers back through [`encode_udp`].
//! 4. On `Err(e)`: write [`ErrorReply::bytes`] of [`Socks5Error::reply`], if any, then close.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::proto::{split_host_port, Host, ProtoError};

/// VER of the greeting, the method selection, the request and the reply.
const VERSION: u8 = 0x05;
/// VER of the RFC 1929 username/password sub-negotiation.
const AUTH_VERSION: u8 = 0x01;
/// METHOD: no authentication required.
const METHOD_NO_AUTH: u8 = 0x00;
/// METHOD: username/password (RFC 1929).
const METHOD_USER_PASS: u8 = 0x02;
/// METHOD: "NO ACCEPTABLE METHODS"; the client must then close the connection.
const METHOD_NONE: u8 = 0xFF;
/// Sub-negotiation STATUS: success. Any other value is a failure.
const AUTH_SUCCESS: u8 = 0x00;
/// Sub-negotiation STATUS we send on failure.
const AUTH_FAILURE: u8 = 0x01;
const CMD_CONNECT: u8 = 0x01;
const CMD_UDP_ASSOCIATE: u8 = 0x03;
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// The longest username, password or domain name: each has a one-byte length on the wire.
/// Configured credentials longer than this (or empty) can never match.
pub const MAX_FIELD_LEN: usize = 255;

/// What the caller does next, returned by [`Socks5Server::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The current message is incomplete: read more bytes and feed them.
    NeedMore,
    /// Write these bytes to the client (method selection or auth status), then call
    /// `feed(&[])`: the client's next message may already be buffered.
    Reply(Vec<u8>),
    /// The request is complete; the handshake is over. Bytes the client sent after the request
    /// are in [`Socks5Server::leftover`]. The caller answers with [`reply`].
    Request {
        /// What the client asks for.
        cmd: Command,
        /// CONNECT: where to connect. UDP ASSOCIATE: where the client will send datagrams
        /// from (RFC 1928 §4), often all zeros when the client does not know yet.
        dest: Destination,
    },
}

/// The SOCKS5 commands this server carries; BIND is refused with
/// [`ReplyCode::CommandNotSupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CONNECT (0x01): a TCP connection, carried as a Hysteria2 TCPRequest stream.
    Connect,
    /// UDP ASSOCIATE (0x03): a UDP relay, carried as Hysteria2 UDPMessages.
    UdpAssociate,
}

/// A SOCKS5 address: DST in requests and UDP headers, the source of UDP replies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// ATYP 0x01 or 0x04.
    Ip(SocketAddr),
    /// ATYP 0x03: a name of 1..=255 bytes of UTF-8, left for the Hysteria2 server to resolve.
    Domain(String, u16),
}

impl Destination {
    /// `host:port` for a Hysteria2 TCPRequest or UDPMessage, formatted like Go's
    /// `net.JoinHostPort`: IPv6 (and any host with a colon) in brackets, no IPv6 zone.
    pub fn to_host_port(&self) -> String {
        match self {
            Self::Ip(SocketAddr::V4(a)) => format!("{}:{}", a.ip(), a.port()),
            Self::Ip(SocketAddr::V6(a)) => format!("[{}]:{}", a.ip(), a.port()),
            Self::Domain(host, port) if host.contains(':') => format!("[{host}]:{port}"),
            Self::Domain(host, port) => format!("{host}:{port}"),
        }
    }

    /// Reads the `host:port` of a Hysteria2 UDPMessage (the source of a UDP reply), for
    /// [`encode_udp`].
    pub fn from_host_port(addr: &str) -> Result<Self, ProtoError> {
        Ok(match split_host_port(addr)? {
            (Host::Ip(ip), port) => Self::Ip(SocketAddr::new(ip, port)),
            (Host::Domain(name), port) => Self::Domain(name, port),
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(a) => a.port(),
            Self::Domain(_, port) => *port,
        }
    }

    /// Appends ATYP, ADDR and PORT; `out` is untouched on error.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Reason> {
        match self {
            Self::Ip(a) => encode_socket_addr(*a, out),
            Self::Domain(name, port) => {
                let len =
                    u8::try_from(name.len()).map_err(|_| Reason::DomainTooLong(name.len()))?;
                if len == 0 {
                    return Err(Reason::EmptyDomain);
                }
                out.extend_from_slice(&[ATYP_DOMAIN, len]);
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&port.to_be_bytes());
            }
        }
        Ok(())
    }

    /// Reads ATYP, ADDR and PORT from the start of `b`: `Ok(None)` while `b` is a prefix.
    fn parse(b: &[u8]) -> Result<Option<(Self, usize)>, Reason> {
        let Some((&atyp, rest)) = b.split_first() else {
            return Ok(None);
        };
        let host = match atyp {
            ATYP_IPV4 => rest
                .split_first_chunk::<4>()
                .map(|(ip, rest)| (Host::Ip(Ipv4Addr::from(*ip).into()), rest)),
            ATYP_IPV6 => rest
                .split_first_chunk::<16>()
                .map(|(ip, rest)| (Host::Ip(Ipv6Addr::from(*ip).into()), rest)),
            ATYP_DOMAIN => match rest.split_first() {
                None => None,
                Some((0, _)) => return Err(Reason::EmptyDomain),
                Some((&len, rest)) => match rest.split_at_checked(usize::from(len)) {
                    None => None,
                    Some((name, rest)) => {
                        let name = std::str::from_utf8(name).map_err(|_| Reason::DomainNotUtf8)?;
                        Some((Host::Domain(name.to_owned()), rest))
                    }
                },
            },
            other => return Err(Reason::UnsupportedAddressType(other)),
        };
        let Some((host, rest)) = host else {
            return Ok(None);
        };
        let Some((port, _)) = rest.split_first_chunk::<2>() else {
            return Ok(None);
        };
        let port = u16::from_be_bytes(*port);
        let used = b.len() - rest.len() + 2;
        let dest = match host {
            Host::Ip(ip) => Self::Ip(SocketAddr::new(ip, port)),
            Host::Domain(name) => Self::Domain(name, port),
        };
        Ok(Some((dest, used)))
    }
}

impl From<SocketAddr> for Destination {
    fn from(a: SocketAddr) -> Self {
        Self::Ip(a)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_host_port())
    }
}

fn encode_socket_addr(a: SocketAddr, out: &mut Vec<u8>) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// REP of a reply to a request (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    /// The connection or association is up.
    Succeeded = 0x00,
    /// General SOCKS server failure; also what a malformed request gets.
    GeneralFailure = 0x01,
    /// Connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// Network unreachable.
    NetworkUnreachable = 0x03,
    /// Host unreachable.
    HostUnreachable = 0x04,
    /// Connection refused.
    ConnectionRefused = 0x05,
    /// TTL expired.
    TtlExpired = 0x06,
    /// Command not supported: BIND, or an unknown CMD.
    CommandNotSupported = 0x07,
    /// Address type not supported: an unknown ATYP.
    AddressTypeNotSupported = 0x08,
}

/// Encodes a reply to a request: `VER REP RSV ATYP BND.ADDR BND.PORT`.
///
/// `bind` is the local address of the outgoing connection for CONNECT, the UDP relay's address
/// for UDP ASSOCIATE, and `0.0.0.0:0` for failures.
pub fn reply(code: ReplyCode, bind: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 16 + 2);
    out.extend_from_slice(&[VERSION, code as u8, 0x00]);
    encode_socket_addr(bind, &mut out);
    out
}

/// What the caller sends before closing, after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReply {
    /// The method selection `05 FF` (no acceptable methods), then close.
    NoAcceptableMethod,
    /// The RFC 1929 status `01 01` (failure), then close.
    AuthFailure,
    /// [`reply`] with this code and `0.0.0.0:0`, then close.
    Request(ReplyCode),
    /// Nothing: drop the UDP datagram and keep the association.
    DropDatagram,
    /// Nothing: the caller misused the API, or the connection already ended.
    Nothing,
}

impl ErrorReply {
    /// The bytes to write to the client, if any.
    pub fn bytes(self) -> Option<Vec<u8>> {
        match self {
            Self::NoAcceptableMethod => Some(vec![VERSION, METHOD_NONE]),
            Self::AuthFailure => Some(vec![AUTH_VERSION, AUTH_FAILURE]),
            Self::Request(code) => Some(reply(code, (Ipv4Addr::UNSPECIFIED, 0).into())),
            Self::DropDatagram | Self::Nothing => None,
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAcceptableMethod => f.write_str("send method 0xFF and close"),
            Self::AuthFailure => f.write_str("send auth status 0x01 and close"),
            Self::Request(code) => {
                write!(f, "send reply {:#04x} ({code:?}) and close", *code as u8)
            }
            Self::DropDatagram => f.write_str("drop the datagram"),
            Self::Nothing => f.write_str("send nothing"),
        }
    }
}

/// What was wrong. Unless marked "caller", the SOCKS client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// VER of the greeting or request is not 5 (a SOCKS4 or HTTP client, say).
    BadVersion(u8),
    /// The greeting lists no methods.
    NoMethods,
    /// None of the offered methods is the one required.
    NoAcceptableMethod {
        /// The METHODS the client offered.
        offered: Vec<u8>,
        /// The method this server requires (0x00 without credentials, 0x02 with).
        required: u8,
    },
    /// VER of the username/password sub-negotiation is not 1.
    BadAuthVersion(u8),
    /// ULEN 0: RFC 1929 allows 1..=255.
    EmptyUsername,
    /// PLEN 0: RFC 1929 allows 1..=255.
    EmptyPassword,
    /// Username or password does not match.
    BadCredentials,
    /// CMD is BIND (0x02) or unknown.
    UnsupportedCommand(u8),
    /// ATYP is not 0x01, 0x03 or 0x04.
    UnsupportedAddressType(u8),
    /// A domain of length 0 (or, for the caller, an empty [`Destination::Domain`]).
    EmptyDomain,
    /// A domain that is not UTF-8, so not expressible as a Hysteria2 address.
    DomainNotUtf8,
    /// Caller: a [`Destination::Domain`] above 255 bytes, which has no SOCKS5 encoding.
    DomainTooLong(usize),
    /// A UDP datagram with FRAG != 0.
    FragmentedUdp(u8),
    /// A UDP datagram of this length ends inside its header.
    TruncatedDatagram(usize),
    /// Caller: `feed` after the handshake ended in a request or an error.
    Finished,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadVersion(v) => write!(f, "SOCKS version {v}, expected 5"),
            Self::NoMethods => f.write_str("greeting offers no authentication methods"),
            Self::NoAcceptableMethod { offered, required } => write!(
                f,
                "client offered methods {offered:02x?}, this server requires {required:#04x}"
            ),
            Self::BadAuthVersion(v) => write!(f, "username/password version {v}, expected 1"),
            Self::EmptyUsername => f.write_str("empty username"),
            Self::EmptyPassword => f.write_str("empty password"),
            Self::BadCredentials => f.write_str("wrong username or password"),
            Self::UnsupportedCommand(c) => write!(f, "unsupported command {c:#04x}"),
            Self::UnsupportedAddressType(t) => write!(f, "unsupported address type {t:#04x}"),
            Self::EmptyDomain => f.write_str("empty domain name"),
            Self::DomainNotUtf8 => f.write_str("domain name is not UTF-8"),
            Self::DomainTooLong(n) => write!(f, "domain name of {n} bytes, at most 255 allowed"),
            Self::FragmentedUdp(n) => {
                write!(f, "fragmented SOCKS5 UDP is not supported (FRAG {n})")
            }
            Self::TruncatedDatagram(n) => {
                write!(f, "SOCKS5 UDP datagram of {n} bytes ends inside its header")
            }
            Self::Finished => f.write_str("feed called after the SOCKS5 handshake ended"),
        }
    }
}

/// A SOCKS5 failure: what was wrong, and what to send before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks5Error {
    reason: Reason,
    reply: ErrorReply,
}

impl Socks5Error {
    fn new(reason: Reason, reply: ErrorReply) -> Self {
        Self { reason, reply }
    }

    /// What was wrong.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// What the caller must send; see [`ErrorReply::bytes`].
    pub fn reply(&self) -> ErrorReply {
        self.reply
    }
}

impl fmt::Display for Socks5Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.reason, self.reply)
    }
}

impl std::error::Error for Socks5Error {}

/// Which message the server expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `VER NMETHODS METHODS`.
    Greeting,
    /// `VER ULEN UNAME PLEN PASSWD` (RFC 1929), only when credentials are configured.
    Auth,
    /// `VER CMD RSV ATYP DST.ADDR DST.PORT`.
    Request,
    /// The request was returned; what follows is payload.
    Done,
    /// An error was returned; the connection is to be closed.
    Failed,
}

/// The handshake of one SOCKS5 client connection; see the module docs for the call order.
#[derive(Debug, Clone)]
pub struct Socks5Server {
    /// Username and password a client must present (method 0x02), or `None` for method 0x00.
    /// Fixed at construction.
    credentials: Option<(Vec<u8>, Vec<u8>)>,
    /// The message expected next: advances on each [`Step::Reply`] and [`Step::Request`],
    /// and becomes `Failed` on the first error.
    phase: Phase,
    /// Bytes fed but not yet used by a complete message: grows on `feed`, loses its front when a
    /// message completes. Once `Done`, the payload the client sent after its request.
    buf: Vec<u8>,
}

impl Socks5Server {
    /// A server for one connection. `None` accepts only method 0x00 (no auth); `Some` requires
    /// method 0x02 with exactly this username and password (see [`MAX_FIELD_LEN`]).
    pub fn new(auth: Option<(String, String)>) -> Self {
        Self {
            credentials: auth.map(|(user, pass)| (user.into_bytes(), pass.into_bytes())),
            phase: Phase::Greeting,
            buf: Vec::new(),
        }
    }

    /// Buffers `input` and advances by at most one message. Once a message can no longer
    /// become valid, returns the error at once without waiting for the rest of it.
    pub fn feed(&mut self, input: &[u8]) -> Result<Step, Socks5Error> {
        if matches!(self.phase, Phase::Done | Phase::Failed) {
            return Err(Socks5Error::new(Reason::Finished, ErrorReply::Nothing));
        }
        self.buf.extend_from_slice(input);
        let step = self.advance();
        if step.is_err() {
            self.phase = Phase::Failed;
            self.buf = Vec::new();
        }
        step
    }

    /// Bytes the client sent after its request: payload to relay first. Empty before
    /// [`Step::Request`].
    pub fn leftover(&self) -> &[u8] {
        if self.phase == Phase::Done {
            &self.buf
        } else {
            &[]
        }
    }

    /// Takes [`Self::leftover`], leaving it empty.
    pub fn take_leftover(&mut self) -> Vec<u8> {
        if self.phase == Phase::Done {
            std::mem::take(&mut self.buf)
        } else {
            Vec::new()
        }
    }

    fn advance(&mut self) -> Result<Step, Socks5Error> {
        let (step, used, next) = match self.phase {
            Phase::Greeting => {
                let required = match self.credentials {
                    Some(_) => METHOD_USER_PASS,
                    None => METHOD_NO_AUTH,
                };
                let Some(used) = parse_greeting(&self.buf, required)? else {
                    return Ok(Step::NeedMore);
                };
                let next = match required {
                    METHOD_USER_PASS => Phase::Auth,
                    _ => Phase::Request,
                };
                (Step::Reply(vec![VERSION, required]), used, next)
            }
            Phase::Auth => {
                let Some((user, pass)) = &self.credentials else {
                    // Unreachable: only a server with credentials enters `Auth`.
                    return Err(Socks5Error::new(Reason::Finished, ErrorReply::Nothing));
                };
                let Some(used) = parse_auth(&self.buf, user, pass)? else {
                    return Ok(Step::NeedMore);
                };
                let step = Step::Reply(vec![AUTH_VERSION, AUTH_SUCCESS]);
                (step, used, Phase::Request)
            }
            Phase::Request => {
                let Some((cmd, dest, used)) = parse_request(&self.buf)? else {
                    return Ok(Step::NeedMore);
                };
                (Step::Request { cmd, dest }, used, Phase::Done)
            }
            Phase::Done | Phase::Failed => {
                return Err(Socks5Error::new(Reason::Finished, ErrorReply::Nothing));
            }
        };
        self.buf.drain(..used);
        self.phase = next;
        Ok(step)
    }
}

/// `VER NMETHODS METHODS`: `Some(used)` once complete and offering `required`.
fn parse_greeting(b: &[u8], required: u8) -> Result<Option<usize>, Socks5Error> {
    let refuse = |reason| Socks5Error::new(reason, ErrorReply::NoAcceptableMethod);
    let Some(&version) = b.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(refuse(Reason::BadVersion(version)));
    }
    let Some(&n) = b.get(1) else {
        return Ok(None);
    };
    if n == 0 {
        return Err(refuse(Reason::NoMethods));
    }
    // NMETHODS is one byte, so a greeting never needs more than 257 bytes of buffer.
    let end = 2 + usize::from(n);
    let Some(methods) = b.get(2..end) else {
        return Ok(None);
    };
    if !methods.contains(&required) {
        let offered = methods.to_vec();
        return Err(refuse(Reason::NoAcceptableMethod { offered, required }));
    }
    Ok(Some(end))
}

/// `VER ULEN UNAME PLEN PASSWD`: `Some(used)` once complete and matching.
fn parse_auth(b: &[u8], user: &[u8], pass: &[u8]) -> Result<Option<usize>, Socks5Error> {
    let fail = |reason| Socks5Error::new(reason, ErrorReply::AuthFailure);
    let Some(&version) = b.first() else {
        return Ok(None);
    };
    if version != AUTH_VERSION {
        return Err(fail(Reason::BadAuthVersion(version)));
    }
    let Some((uname, plen_at)) = length_prefixed(b, 1) else {
        return Ok(None);
    };
    if uname.is_empty() {
        return Err(fail(Reason::EmptyUsername));
    }
    let Some((passwd, end)) = length_prefixed(b, plen_at) else {
        // Refuse PLEN 0 before waiting for a password that cannot come.
        return match b.get(plen_at) {
            Some(0) => Err(fail(Reason::EmptyPassword)),
            _ => Ok(None),
        };
    };
    if passwd.is_empty() {
        return Err(fail(Reason::EmptyPassword));
    }
    // Both compared in full, so the timing does not tell which one was wrong.
    if !(constant_time_eq(uname, user) & constant_time_eq(passwd, pass)) {
        return Err(fail(Reason::BadCredentials));
    }
    Ok(Some(end))
}

/// The field whose one-byte length is at `at`, and the offset just past it.
fn length_prefixed(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let start = at + 1;
    let end = start + usize::from(*b.get(at)?);
    Some((b.get(start..end)?, end))
}

/// Equality whose running time depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `VER CMD RSV ATYP DST.ADDR DST.PORT`: `Some((cmd, dest, used))` once complete.
fn parse_request(b: &[u8]) -> Result<Option<(Command, Destination, usize)>, Socks5Error> {
    let fail = |reason, code| Socks5Error::new(reason, ErrorReply::Request(code));
    let Some(&version) = b.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(fail(Reason::BadVersion(version), ReplyCode::GeneralFailure));
    }
    let cmd = match b.get(1) {
        None => return Ok(None),
        Some(&CMD_CONNECT) => Command::Connect,
        Some(&CMD_UDP_ASSOCIATE) => Command::UdpAssociate,
        Some(&other) => {
            let reason = Reason::UnsupportedCommand(other);
            return Err(fail(reason, ReplyCode::CommandNotSupported));
        }
    };
    // RSV (b[2]) is ignored, as the common servers do.
    let Some(addr) = b.get(3..) else {
        return Ok(None);
    };
    match Destination::parse(addr) {
        Ok(Some((dest, used))) => Ok(Some((cmd, dest, 3 + used))),
        Ok(None) => Ok(None),
        Err(reason @ Reason::UnsupportedAddressType(_)) => {
            Err(fail(reason, ReplyCode::AddressTypeNotSupported))
        }
        Err(reason) => Err(fail(reason, ReplyCode::GeneralFailure)),
    }
}

/// Parses the header of a datagram from the SOCKS client to the UDP relay (RFC 1928 §7):
/// `RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA`. Returns the destination and the payload.
///
/// Every error is [`ErrorReply::DropDatagram`]; fragments (FRAG != 0) are refused, as the
/// RFC allows a server that does not reassemble.
pub fn parse_udp(datagram: &[u8]) -> Result<(Destination, &[u8]), Socks5Error> {
    let drop = |reason| Socks5Error::new(reason, ErrorReply::DropDatagram);
    let truncated = || drop(Reason::TruncatedDatagram(datagram.len()));
    let Some(&frag) = datagram.get(2) else {
        return Err(truncated());
    };
    if frag != 0 {
        return Err(drop(Reason::FragmentedUdp(frag)));
    }
    match Destination::parse(&datagram[3..]) {
        Ok(Some((dest, used))) => Ok((dest, &datagram[3 + used..])),
        Ok(None) => Err(truncated()),
        Err(reason) => Err(drop(reason)),
    }
}

/// Appends a datagram for the SOCKS client: the RFC 1928 §7 header naming `src`, where the
/// payload came from, then the payload. `out` is untouched on error (a [`Destination::Domain`]
/// that is empty or above 255 bytes, the caller's fault: [`ErrorReply::Nothing`]).
pub fn encode_udp(src: &Destination, payload: &[u8], out: &mut Vec<u8>) -> Result<(), Socks5Error> {
    let start = out.len();
    out.extend_from_slice(&[0x00, 0x00, 0x00]);
    if let Err(reason) = src.encode(out) {
        out.truncate(start);
        return Err(Socks5Error::new(reason, ErrorReply::Nothing));
    }
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const GREETING_NO_AUTH: &[u8] = &[5, 1, 0];
    const GREETING_USER_PASS: &[u8] = &[5, 2, 0, 2];
    const CONNECT_V4: &[u8] = &[5, 1, 0, 1, 1, 2, 3, 4, 0, 80];
    const CONNECT_DOMAIN: &[u8] = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb";
    const AUTH_OK: &[u8] = b"\x01\x04user\x06secret";

    fn creds() -> Option<(String, String)> {
        Some(("user".to_owned(), "secret".to_owned()))
    }

    /// What a whole conversation produced: replies written, the request, leftover payload.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        written: Vec<u8>,
        result: Result<(Command, Destination), Socks5Error>,
        leftover: Vec<u8>,
    }

    /// Drives a server the way the module docs tell callers to.
    fn drive<'a>(
        auth: Option<(String, String)>,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Outcome {
        let mut server = Socks5Server::new(auth);
        let mut written = Vec::new();
        let mut chunks = chunks.into_iter();
        while let Some(chunk) = chunks.next() {
            let mut input = chunk;
            loop {
                match server.feed(input) {
                    Ok(Step::NeedMore) => break,
                    Ok(Step::Reply(bytes)) => written.extend_from_slice(&bytes),
                    Ok(Step::Request { cmd, dest }) => {
                        // The rest of the stream is payload, whichever read it arrives in.
                        let mut leftover = server.take_leftover();
                        leftover.extend(chunks.flatten());
                        return Outcome {
                            written,
                            result: Ok((cmd, dest)),
                            leftover,
                        };
                    }
                    Err(e) => {
                        written.extend(e.reply().bytes().unwrap_or_default());
                        return Outcome {
                            written,
                            result: Err(e),
                            leftover: Vec::new(),
                        };
                    }
                }
                input = &[];
            }
        }
        panic!("conversation incomplete; wrote {written:02x?}");
    }

    fn whole(auth: Option<(String, String)>, bytes: &[u8]) -> Outcome {
        drive(auth, [bytes])
    }

    fn request(outcome: &Outcome) -> (Command, Destination) {
        outcome.result.clone().expect("a request")
    }

    fn error(outcome: &Outcome) -> &Reason {
        outcome.result.as_ref().expect_err("an error").reason()
    }

    fn failure_reply(code: ReplyCode) -> Vec<u8> {
        let mut r = vec![5, code as u8, 0, 1];
        r.extend_from_slice(&[0; 6]);
        r
    }

    #[test]
    fn no_auth_connect_ipv4() {
        let mut server = Socks5Server::new(None);
        assert_eq!(server.feed(GREETING_NO_AUTH), Ok(Step::Reply(vec![5, 0])));
        assert_eq!(server.feed(&[]), Ok(Step::NeedMore));
        let dest = Destination::Ip("1.2.3.4:80".parse().unwrap());
        assert_eq!(
            server.feed(CONNECT_V4),
            Ok(Step::Request {
                cmd: Command::Connect,
                dest: dest.clone()
            })
        );
        assert_eq!(dest.to_host_port(), "1.2.3.4:80");
        assert_eq!(server.leftover(), b"");
        let again = server.feed(&[]).unwrap_err();
        assert_eq!(
            (again.reason(), again.reply()),
            (&Reason::Finished, ErrorReply::Nothing)
        );
    }

    #[test]
    fn no_auth_connect_ipv6() {
        let mut req = vec![5, 1, 0, 4];
        req.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        req.extend_from_slice(&443u16.to_be_bytes());
        let out = drive(None, [GREETING_NO_AUTH, &req]);
        assert_eq!(out.written, [5, 0]);
        let (cmd, dest) = request(&out);
        assert_eq!(cmd, Command::Connect);
        assert_eq!(dest, Destination::Ip("[2001:db8::1]:443".parse().unwrap()));
        assert_eq!(dest.to_host_port(), "[2001:db8::1]:443");
    }

    #[test]
    fn no_auth_connect_domain() {
        let out = drive(None, [GREETING_NO_AUTH, CONNECT_DOMAIN]);
        assert_eq!(out.written, [5, 0]);
        let (cmd, dest) = request(&out);
        assert_eq!(cmd, Command::Connect);
        assert_eq!(dest, Destination::Domain("example.com".to_owned(), 443));
        assert_eq!(dest.to_host_port(), "example.com:443");
    }

    #[test]
    fn user_pass_success() {
        let mut server = Socks5Server::new(creds());
        assert_eq!(server.feed(GREETING_USER_PASS), Ok(Step::Reply(vec![5, 2])));
        assert_eq!(server.feed(AUTH_OK), Ok(Step::Reply(vec![1, 0])));
        let step = server.feed(CONNECT_DOMAIN).unwrap();
        let dest = Destination::Domain("example.com".to_owned(), 443);
        assert_eq!(
            step,
            Step::Request {
                cmd: Command::Connect,
                dest
            }
        );
    }

    #[test]
    fn user_pass_failure() {
        let wrong_pass = b"\x01\x04user\x06secreT";
        let out = drive(creds(), [GREETING_USER_PASS, wrong_pass]);
        assert_eq!(out.written, [5, 2, 1, 1]);
        assert_eq!(error(&out), &Reason::BadCredentials);
        assert_eq!(out.result.unwrap_err().reply(), ErrorReply::AuthFailure);

        let wrong_user = b"\x01\x05users\x06secret";
        let out = drive(creds(), [GREETING_USER_PASS, wrong_user]);
        assert_eq!(
            (out.written.as_slice(), error(&out)),
            (&[5, 2, 1, 1][..], &Reason::BadCredentials)
        );

        // Failures known before the message ends are reported at once.
        let out = drive(creds(), [GREETING_USER_PASS, &[1, 0]]);
        assert_eq!(
            (out.written.as_slice(), error(&out)),
            (&[5, 2, 1, 1][..], &Reason::EmptyUsername)
        );
        let out = drive(creds(), [GREETING_USER_PASS, b"\x01\x04user\x00"]);
        assert_eq!(
            (out.written.as_slice(), error(&out)),
            (&[5, 2, 1, 1][..], &Reason::EmptyPassword)
        );
        let out = drive(creds(), [GREETING_USER_PASS, &[5]]);
        assert_eq!(
            (out.written.as_slice(), error(&out)),
            (&[5, 2, 1, 1][..], &Reason::BadAuthVersion(5))
        );
    }

    #[test]
    fn auth_required_but_only_no_auth_offered() {
        let out = whole(creds(), GREETING_NO_AUTH);
        assert_eq!(out.written, [5, 0xFF]);
        let required = METHOD_USER_PASS;
        assert_eq!(
            error(&out),
            &Reason::NoAcceptableMethod {
                offered: vec![0],
                required
            }
        );
    }

    #[test]
    fn udp_associate() {
        let req = [5, 3, 0, 1, 0, 0, 0, 0, 0, 0];
        let out = drive(None, [GREETING_NO_AUTH, &req]);
        let dest = Destination::Ip("0.0.0.0:0".parse().unwrap());
        assert_eq!(request(&out), (Command::UdpAssociate, dest));
    }

    #[test]
    fn bind_is_command_not_supported() {
        let out = drive(None, [GREETING_NO_AUTH, &[5, 2, 0, 1, 1, 2, 3, 4, 0, 80]]);
        assert_eq!(
            out.written,
            [&[5, 0][..], &failure_reply(ReplyCode::CommandNotSupported)].concat()
        );
        assert_eq!(out.written[2..], [5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(error(&out), &Reason::UnsupportedCommand(2));
        let out = drive(None, [GREETING_NO_AUTH, &[5, 9]]);
        assert_eq!(
            out.written[2..],
            failure_reply(ReplyCode::CommandNotSupported)
        );
    }

    #[test]
    fn bad_version() {
        let out = whole(None, &[4, 1, 0, 80, 1, 2, 3, 4, 0]);
        assert_eq!(
            (out.written.as_slice(), error(&out)),
            (&[5, 0xFF][..], &Reason::BadVersion(4))
        );
        let out = whole(None, b"GET / HTTP/1.1\r\n");
        assert_eq!(
            (out.written.as_slice(), error(&out)),
            (&[5, 0xFF][..], &Reason::BadVersion(b'G'))
        );
        let out = drive(None, [GREETING_NO_AUTH, &[4, 1]]);
        assert_eq!(out.written[2..], failure_reply(ReplyCode::GeneralFailure));
        assert_eq!(error(&out), &Reason::BadVersion(4));
    }

    #[test]
    fn no_acceptable_method() {
        let out = whole(None, &[5, 2, 2, 1]);
        assert_eq!(out.written, [5, 0xFF]);
        let offered = vec![2, 1];
        assert_eq!(
            error(&out),
            &Reason::NoAcceptableMethod {
                offered,
                required: 0
            }
        );
        let out = whole(None, &[5, 0]);
        assert_eq!(
            (out.written.as_slice(), error(&out)),
            (&[5, 0xFF][..], &Reason::NoMethods)
        );
        // The most methods a greeting can hold is fine; only the chosen one matters.
        let mut greeting = vec![5, 255];
        greeting.extend([1; 255]);
        let out = whole(creds(), &greeting);
        assert_eq!(out.written, [5, 0xFF]);
        greeting[3] = 2;
        let mut server = Socks5Server::new(creds());
        assert_eq!(server.feed(&greeting), Ok(Step::Reply(vec![5, 2])));
    }

    #[test]
    fn unknown_address_type() {
        let out = drive(None, [GREETING_NO_AUTH, &[5, 1, 0, 9]]);
        assert_eq!(out.written[2..], [5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(error(&out), &Reason::UnsupportedAddressType(9));
        let out = drive(None, [GREETING_NO_AUTH, &[5, 1, 0, 3, 0]]);
        assert_eq!(
            (&out.written[2..], error(&out)),
            (
                &failure_reply(ReplyCode::GeneralFailure)[..],
                &Reason::EmptyDomain
            )
        );
        let out = drive(None, [GREETING_NO_AUTH, &[5, 1, 0, 3, 1, 0xFF, 0, 80]]);
        assert_eq!(error(&out), &Reason::DomainNotUtf8);
    }

    #[test]
    fn every_split_gives_the_same_result() {
        let flows = [
            (None, [GREETING_NO_AUTH, CONNECT_DOMAIN, b"GET /"].concat()),
            (
                creds(),
                [GREETING_USER_PASS, AUTH_OK, CONNECT_V4, b"payload"].concat(),
            ),
            (
                creds(),
                [GREETING_USER_PASS, b"\x01\x04user\x06secreT"].concat(),
            ),
            (None, [GREETING_NO_AUTH, &[5, 1, 0, 7, 1, 2, 3]].concat()),
        ];
        for (auth, bytes) in flows {
            let expected = whole(auth.clone(), &bytes);
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    let chunks = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                    assert_eq!(drive(auth.clone(), chunks), expected, "split at {i}, {j}");
                }
            }
            assert_eq!(
                drive(auth.clone(), bytes.chunks(1)),
                expected,
                "byte at a time"
            );
        }
    }

    #[test]
    fn leftover_payload_is_kept() {
        let all = [GREETING_NO_AUTH, CONNECT_V4, b"GET / HTTP/1.1\r\n"].concat();
        let out = whole(None, &all);
        assert_eq!(out.written, [5, 0]);
        assert_eq!(out.leftover, b"GET / HTTP/1.1\r\n");

        let mut server = Socks5Server::new(creds());
        assert_eq!(
            server.feed(&[GREETING_USER_PASS, &AUTH_OK[..3]].concat()),
            Ok(Step::Reply(vec![5, 2]))
        );
        assert_eq!(
            server.leftover(),
            b"",
            "nothing is leftover before the request"
        );
        assert_eq!(server.feed(&AUTH_OK[3..]), Ok(Step::Reply(vec![1, 0])));
        let tail = [CONNECT_DOMAIN, b"\x16\x03\x01"].concat();
        assert!(matches!(server.feed(&tail), Ok(Step::Request { .. })));
        assert_eq!(server.leftover(), b"\x16\x03\x01");
        assert_eq!(server.take_leftover(), b"\x16\x03\x01");
        assert_eq!(server.leftover(), b"");
    }

    #[test]
    fn reply_bytes() {
        assert_eq!(
            reply(ReplyCode::Succeeded, "10.0.0.1:1080".parse().unwrap()),
            [5, 0, 0, 1, 10, 0, 0, 1, 0x04, 0x38]
        );
        let mut v6 = vec![5, 5, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x01, 0xBB]);
        assert_eq!(
            reply(ReplyCode::ConnectionRefused, "[::1]:443".parse().unwrap()),
            v6
        );
        assert_eq!(ErrorReply::NoAcceptableMethod.bytes(), Some(vec![5, 0xFF]));
        assert_eq!(ErrorReply::AuthFailure.bytes(), Some(vec![1, 1]));
        assert_eq!(ErrorReply::DropDatagram.bytes(), None);
        let codes = [
            ReplyCode::Succeeded,
            ReplyCode::GeneralFailure,
            ReplyCode::NotAllowed,
            ReplyCode::NetworkUnreachable,
            ReplyCode::HostUnreachable,
            ReplyCode::ConnectionRefused,
            ReplyCode::TtlExpired,
            ReplyCode::CommandNotSupported,
            ReplyCode::AddressTypeNotSupported,
        ];
        for (n, code) in codes.into_iter().enumerate() {
            assert_eq!(reply(code, "0.0.0.0:0".parse().unwrap())[1], n as u8);
        }
    }

    #[test]
    fn host_port() {
        let dom = |s: &str, p| Destination::Domain(s.to_owned(), p);
        assert_eq!(
            dom("::1", 53).to_host_port(),
            "[::1]:53",
            "Go JoinHostPort brackets colons"
        );
        let scoped = SocketAddr::V6(std::net::SocketAddrV6::new(Ipv6Addr::LOCALHOST, 80, 0, 3));
        assert_eq!(Destination::Ip(scoped).to_host_port(), "[::1]:80");
        for s in ["1.2.3.4:80", "[2001:db8::1]:443", "example.com:8443"] {
            let d = Destination::from_host_port(s).unwrap();
            assert_eq!(
                (d.to_host_port(), d.to_string()),
                (s.to_owned(), s.to_owned())
            );
        }
        assert_eq!(
            Destination::from_host_port("example.com:8443").unwrap(),
            dom("example.com", 8443)
        );
        assert!(Destination::from_host_port("example.com").is_err());
    }

    #[test]
    fn udp_round_trips() {
        let dests = [
            Destination::Ip("8.8.8.8:53".parse().unwrap()),
            Destination::Ip("[2001:4860:4860::8888]:53".parse().unwrap()),
            Destination::Domain("dns.google".to_owned(), 853),
            Destination::Domain("d".repeat(255), 1),
        ];
        for dest in dests {
            for payload in [&b""[..], b"x", &[0xAB; 1500]] {
                let mut out = vec![0xEE];
                encode_udp(&dest, payload, &mut out).unwrap();
                assert_eq!(parse_udp(&out[1..]), Ok((dest.clone(), payload)));
            }
        }
        let mut out = Vec::new();
        encode_udp(
            &Destination::Ip("1.2.3.4:5".parse().unwrap()),
            b"hi",
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0, 0, 0, 1, 1, 2, 3, 4, 0, 5, b'h', b'i']);
    }

    #[test]
    fn udp_errors() {
        let e = parse_udp(&[0, 0, 1, 1, 1, 2, 3, 4, 0, 5, b'x']).unwrap_err();
        assert_eq!(
            (e.reason(), e.reply()),
            (&Reason::FragmentedUdp(1), ErrorReply::DropDatagram)
        );
        assert!(
            e.to_string()
                .starts_with("fragmented SOCKS5 UDP is not supported"),
            "{e}"
        );
        for short in [
            &[][..],
            &[0, 0, 0],
            &[0, 0, 0, 1, 1, 2, 3, 4, 0],
            &[0, 0, 0, 3, 5, b'a'],
        ] {
            let e = parse_udp(short).unwrap_err();
            assert_eq!(e.reason(), &Reason::TruncatedDatagram(short.len()));
        }
        let e = parse_udp(&[0, 0, 0, 2, 1]).unwrap_err();
        assert_eq!(
            (e.reason(), e.reply()),
            (&Reason::UnsupportedAddressType(2), ErrorReply::DropDatagram)
        );

        let mut out = vec![7];
        let too_long = Destination::Domain("d".repeat(256), 1);
        let e = encode_udp(&too_long, b"x", &mut out).unwrap_err();
        assert_eq!(
            (e.reason(), e.reply()),
            (&Reason::DomainTooLong(256), ErrorReply::Nothing)
        );
        let e = encode_udp(&Destination::Domain(String::new(), 1), b"x", &mut out).unwrap_err();
        assert_eq!(e.reason(), &Reason::EmptyDomain);
        assert_eq!(out, [7], "untouched on error");
    }

    #[test]
    fn errors_say_what_to_send() {
        let out = drive(None, [GREETING_NO_AUTH, &[5, 2]]);
        let e = out.result.unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported command 0x02; send reply 0x07 (CommandNotSupported) and close"
        );
        let e = whole(None, &[4]).result.unwrap_err();
        assert_eq!(
            e.to_string(),
            "SOCKS version 4, expected 5; send method 0xFF and close"
        );
    }

    /// Random bytes, random chunking, and random damage to valid flows: never a panic, and the
    /// server always ends in a step the caller can act on.
    #[test]
    fn random_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x50c55);
        let valid = [
            [GREETING_NO_AUTH, CONNECT_DOMAIN, b"tail"].concat(),
            [GREETING_USER_PASS, AUTH_OK, CONNECT_V4].concat(),
        ];
        for round in 0..20_000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                let len = rng.gen_range(0..64);
                (0..len).map(|_| rng.gen()).collect()
            } else {
                valid[rng.gen_range(0..valid.len())].clone()
            };
            for _ in 0..rng.gen_range(0..4) {
                if !bytes.is_empty() {
                    let at = rng.gen_range(0..bytes.len());
                    // Small values hit the interesting cases (versions, lengths, ATYPs).
                    bytes[at] = if rng.gen() {
                        rng.gen_range(0..6)
                    } else {
                        rng.gen()
                    };
                }
            }
            if rng.gen_range(0..4) == 0 {
                bytes.truncate(rng.gen_range(0..=bytes.len()));
            }
            let auth = if rng.gen() { creds() } else { None };
            let mut server = Socks5Server::new(auth);
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.len());
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let mut input = chunk;
                let stop = loop {
                    match server.feed(input) {
                        Ok(Step::Reply(_)) => input = &[],
                        Ok(Step::NeedMore) => break false,
                        Ok(Step::Request { .. }) => break true,
                        Err(e) => {
                            let _ = (e.to_string(), e.reply().bytes());
                            break true;
                        }
                    }
                };
                if stop {
                    assert!(server.feed(&[1]).is_err());
                    break;
                }
            }
            if let Ok((dest, payload)) = parse_udp(&bytes) {
                let mut out = Vec::new();
                encode_udp(&dest, payload, &mut out).unwrap();
                assert_eq!(parse_udp(&out), Ok((dest, payload)));
            }
        }
    }
}
