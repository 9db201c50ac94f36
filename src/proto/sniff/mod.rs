//! Protocol sniffing (`sniff:`): the domain a proxied connection is really for, read from its
//! first bytes, so that a request for a bare IP can be routed (ACL domain and geosite rules,
//! the resolver) by the name inside it.
//!
//! This reproduces the official server's sniffer (`extras/sniff`), decision for decision:
//! - TCP: an HTTP/1.x request head (absolute-form URI, else `Host:`) or a TLS ClientHello
//!   (SNI) at the start of the stream.
//! - UDP: the SNI of a QUIC v1 or v2 client Initial, in the first datagram of a session only.
//!
//! Call order, for each TCP request and each new UDP session:
//! 1. [`Sniffer::wants`] decides whether the request is sniffed at all.
//! 2. TCP: the server answers the TCPRequest with OK at once (the official server does, so
//!    that the client sends its first bytes), then feeds everything read so far to a
//!    [`TcpSniffer`] after every read, until it answers [`TcpSniff::Found`] or
//!    [`TcpSniff::Nothing`], the stream ends, or [`Sniffer::timeout`] passes (the last two mean
//!    no change). Every byte read while sniffing is written to the target right after the
//!    connect, before relaying starts.
//!    UDP: [`quic_initial_sni`] on the session's first datagram.
//! 3. A sniffed host replaces the request's host; the request's port is always kept
//!    ([`join_host_port`] builds the new address). Resolver and ACL then see the new address.
//!
//! Nothing here reads a clock or a socket: the caller owns the deadline and the bytes.

mod http;
mod quic;
mod tls;

#[cfg(test)]
pub(crate) mod tests;

use std::net::IpAddr;
use std::time::Duration;

use super::PortSet;

pub use quic::{quic_initial_sni, MAX_CRYPTO_LEN};

/// How long a TCP request waits for sniffable bytes when `sniff.timeout` is unset or zero
/// (official `sniffDefaultTimeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4);

/// The most bytes of a TCP stream an HTTP request head is looked for in (official
/// `sniffMaxHTTPHeaderBytes`). A TLS record is at most 5 + 65535 bytes, well below it.
pub const MAX_TCP_SNIFF_LEN: usize = 256 * 1024;

/// The transport of a request, each with its own port list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A proxy stream (TCPRequest).
    Tcp,
    /// A UDP session.
    Udp,
}

/// The `sniff:` policy: which requests are sniffed and how long a TCP request may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sniffer {
    /// `sniff.timeout`; unset or zero means [`DEFAULT_TIMEOUT`].
    timeout: Option<Duration>,
    /// `sniff.rewriteDomain`: requests for a domain are sniffed too.
    rewrite_domain: bool,
    /// `sniff.tcpPorts`; `None` means every port.
    tcp_ports: Option<PortSet>,
    /// `sniff.udpPorts`; `None` means every port.
    udp_ports: Option<PortSet>,
}

impl Sniffer {
    /// A sniffer with the settings of `sniff:`; a `None` port list means every port.
    pub fn new(
        timeout: Option<Duration>,
        rewrite_domain: bool,
        tcp_ports: Option<PortSet>,
        udp_ports: Option<PortSet>,
    ) -> Self {
        Self {
            timeout,
            rewrite_domain,
            tcp_ports,
            udp_ports,
        }
    }

    /// How long a TCP request waits for its first bytes before it goes ahead unchanged:
    /// `sniff.timeout`, or [`DEFAULT_TIMEOUT`] when that is unset or zero.
    pub fn timeout(&self) -> Duration {
        match self.timeout {
            Some(t) if !t.is_zero() => t,
            _ => DEFAULT_TIMEOUT,
        }
    }

    /// Whether a request for `host` (without the port; an IPv6 literal with or without
    /// brackets) and `port` is sniffed: the host is not internal (`@…`, e.g. the speed test),
    /// it is an IP literal unless `rewriteDomain` is set, and the port is in the transport's
    /// list.
    pub fn wants(&self, host: &str, transport: Transport, port: u16) -> bool {
        if host.starts_with('@') {
            return false;
        }
        if !self.rewrite_domain && !is_ip_literal(host) {
            return false;
        }
        let ports = match transport {
            Transport::Tcp => &self.tcp_ports,
            Transport::Udp => &self.udp_ports,
        };
        ports.as_ref().is_none_or(|p| p.contains(port))
    }
}

/// Go's `net.ParseIP` on the host part of an address (so brackets are already gone there).
fn is_ip_literal(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok()
}

/// The request's new address once `host` was sniffed: the host with the request's own port,
/// an IPv6 literal in brackets (Go's `net.JoinHostPort`: brackets whenever the host has a
/// colon).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What the first bytes of a TCP stream say so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpSniff {
    /// Not decided yet: read more (until the timeout or the end of the stream, either of which
    /// means [`TcpSniff::Nothing`]).
    NeedMore,
    /// The stream is for this host (an HTTP host without its port, or a TLS SNI). Not checked
    /// beyond being non-empty UTF-8: the official server dials whatever it found, so a name no
    /// resolver knows fails the request there as it should here.
    Found(String),
    /// Not HTTP, not a TLS ClientHello, or no name in it: the request goes ahead unchanged.
    Nothing,
}

/// Which protocol the first three bytes announced, and how far reading it got.
#[derive(Debug)]
enum State {
    /// Fewer than three bytes seen.
    Start,
    /// Three ASCII letters: an HTTP/1.x request head, read line by line.
    Http(http::HeadReader),
    /// A TLS record header: waiting for the whole first record.
    Tls,
    /// Decided; every later call gives the same answer.
    Done(TcpSniff),
}

/// Sniffs the start of one TCP stream, fed everything read so far after every read.
///
/// The caller keeps all bytes it read (they are written to the target before relaying) and
/// hands the whole buffer to [`TcpSniffer::sniff`] each time; the sniffer remembers how far it
/// got, so feeding a stream in many small pieces costs no more than one large one. It decides
/// by the time [`MAX_TCP_SNIFF_LEN`] bytes are buffered, so the caller never holds more than
/// that plus one read.
#[derive(Debug)]
pub struct TcpSniffer {
    /// Advances as the first bytes arrive; [`State::Done`] once answered.
    state: State,
}

impl Default for TcpSniffer {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpSniffer {
    /// A sniffer that has seen nothing yet.
    pub fn new() -> Self {
        Self {
            state: State::Start,
        }
    }

    /// Looks at `buf`, every byte of the stream read so far (each call's buffer extends the
    /// previous one).
    pub fn sniff(&mut self, buf: &[u8]) -> TcpSniff {
        if let State::Start = self.state {
            let Some(head) = buf.get(..3) else {
                return TcpSniff::NeedMore;
            };
            self.state = if head.iter().all(u8::is_ascii_alphabetic) {
                State::Http(http::HeadReader::new())
            } else if tls::is_record_start(head) {
                State::Tls
            } else {
                State::Done(TcpSniff::Nothing)
            };
        }
        let answer = match &mut self.state {
            State::Start => TcpSniff::NeedMore,
            State::Http(reader) => reader.read(buf),
            State::Tls => tls::sniff_record(buf),
            State::Done(answer) => return answer.clone(),
        };
        if answer != TcpSniff::NeedMore {
            self.state = State::Done(answer.clone());
        }
        answer
    }
}

/// [`TcpSniffer`] in one call, for a buffer that is all there will be to look at.
pub fn tcp(buf: &[u8]) -> TcpSniff {
    TcpSniffer::new().sniff(buf)
}
