//! The Hysteria2 wire protocol, sans-IO: byte layouts in, byte layouts out.
//!
//! Nothing here opens a socket, reads the clock or draws random numbers of its own: salts and
//! padding come in as arguments. Every parser takes bytes from the network and returns a
//! [`ProtoError`] naming what is wrong instead of panicking.
//!
//! Stream parsers ([`TcpRequest::parse`], [`TcpResponse::parse`]) return
//! `Ok(None)` while the buffer holds only a prefix of a valid message, `Ok(Some((msg, used)))`
//! once it is complete (bytes past `used` are relay payload), and `Err` as soon as the prefix
//! can no longer become valid. Datagram parsers ([`UdpMessage::parse`], [`Salamander::decode`])
//! see whole datagrams, so a short one is an error.
//!
//! Layout of a connection, in call order:
//! 1. [`Salamander`] (optional) wraps every UDP datagram of the QUIC connection.
//! 2. The first bidi stream carries the HTTP/3 auth exchange (`h3`).
//! 3. Each later bidi stream: [`StreamStart::classify`]; a proxy stream begins with a
//!    [`TcpRequest`], the server answers with a [`TcpResponse`], then raw bytes both ways.
//! 4. QUIC DATAGRAM frames carry one [`UdpMessage`] each; [`fragment`] splits outgoing
//!    packets and a per-session [`Defragger`] joins incoming ones.
//!
//! With `sniff:` on, [`sniff`] reads the name a proxied stream or UDP session is really for
//! from its first bytes (HTTP Host, TLS or QUIC SNI) before the request is routed.

mod addr;
mod defrag;
pub mod h3;
pub mod outbound;
pub mod salamander;
pub mod sniff;
pub mod speedtest;
pub mod tcp;
pub mod udp;
pub mod varint;

pub use addr::PortSet;
pub use salamander::Salamander;
pub use tcp::{split_host_port, Host, StreamStart, TcpRequest, TcpResponse};
pub use udp::{fragment, Defragger, UdpMessage};

use std::fmt;

/// What is wrong with bytes handed to a parser, or with arguments handed to an encoder.
///
/// Parse errors are the peer's fault (drop the datagram or reset the stream); the variants
/// marked "encode" are the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// Encode: a varint value above [`varint::MAX`].
    VarintOutOfRange(u64),
    /// A stream did not start with the TCPRequest type 0x401.
    UnexpectedType(u64),
    /// Address length 0 (TCPRequest or UDPMessage); the protocol requires 1..=2048.
    EmptyAddress,
    /// Address length above [`tcp::MAX_ADDRESS_LENGTH`].
    AddressTooLong(u64),
    /// Padding length above [`tcp::MAX_PADDING_LENGTH`].
    PaddingTooLong(u64),
    /// TCPResponse message length above [`tcp::MAX_MESSAGE_LENGTH`].
    MessageTooLong(u64),
    /// The address is not a `host:port` this relay can dial.
    BadAddress(AddressError),
    /// A datagram ended inside the UDPMessage header.
    TruncatedDatagram(usize),
    /// A UDPMessage without payload; the official server drops these, so they are never sent.
    EmptyPayload,
    /// Encode: a UDP payload above [`udp::MAX_UDP_PAYLOAD`].
    PayloadTooLarge(usize),
    /// Encode: `max_message_size` leaves no room for payload after a header of this length.
    NoRoomForPayload {
        /// The message size the caller allowed.
        max_message_size: usize,
        /// The UDPMessage header length for this address.
        header_len: usize,
    },
    /// Encode: splitting would need more than 255 fragments.
    TooManyFragments(usize),
    /// A fragment whose id is not below its count.
    FragmentOutOfRange {
        /// The fragment's id.
        frag_id: u8,
        /// The fragment's count.
        frag_count: u8,
    },
    /// A fragmented packet would need more than the [`Defragger`]'s byte budget; it was dropped.
    ReassemblyTooLarge {
        /// The packet's id.
        packet_id: u16,
        /// Bytes the packet would have held after this fragment.
        bytes: usize,
    },
    /// Salamander PSK shorter than [`salamander::MIN_PSK_LEN`] (the official server's minimum).
    PskTooShort(usize),
    /// A Salamander datagram of this length has no payload after the salt.
    DatagramTooShort(usize),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VarintOutOfRange(v) => write!(f, "varint value {v} above 2^62-1"),
            Self::UnexpectedType(t) => write!(f, "unexpected frame type {t:#x}"),
            Self::EmptyAddress => f.write_str("empty address"),
            Self::AddressTooLong(n) => write!(f, "address length {n} above 2048"),
            Self::PaddingTooLong(n) => write!(f, "padding length {n} above 4096"),
            Self::MessageTooLong(n) => write!(f, "message length {n} above 2048"),
            Self::BadAddress(e) => write!(f, "bad address: {e}"),
            Self::TruncatedDatagram(n) => write!(f, "datagram of {n} bytes ends inside the header"),
            Self::EmptyPayload => f.write_str("empty UDP payload"),
            Self::PayloadTooLarge(n) => write!(f, "UDP payload of {n} bytes above 4096"),
            Self::NoRoomForPayload {
                max_message_size,
                header_len,
            } => write!(
                f,
                "message size {max_message_size} leaves no room after a {header_len}-byte header"
            ),
            Self::TooManyFragments(n) => write!(f, "{n} fragments needed, at most 255 allowed"),
            Self::FragmentOutOfRange {
                frag_id,
                frag_count,
            } => write!(f, "fragment id {frag_id} not below count {frag_count}"),
            Self::ReassemblyTooLarge { packet_id, bytes } => {
                write!(
                    f,
                    "packet {packet_id} needs {bytes} bytes, above the reassembly budget"
                )
            }
            Self::PskTooShort(n) => write!(f, "salamander PSK of {n} bytes, at least 4 needed"),
            Self::DatagramTooShort(n) => {
                write!(f, "obfuscated datagram of {n} bytes, at least 9 needed")
            }
        }
    }
}

impl std::error::Error for ProtoError {}

/// Why an address is not a dialable `host:port` (Go `net.SplitHostPort` plus a numeric port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// No `:port` (or `[v6]` without one).
    MissingPort,
    /// A colon in an unbracketed host: an IPv6 literal must be written `[v6]:port`.
    TooManyColons,
    /// Unbalanced or misplaced `[` / `]`.
    BadBrackets,
    /// The port is empty, not decimal, or above 65535.
    BadPort,
    /// The host is empty.
    EmptyHost,
    /// The text in brackets is not an IP address.
    BadIpLiteral,
    /// The host is neither an IP address nor a plausible domain name.
    BadDomain,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotUtf8 => "not UTF-8",
            Self::MissingPort => "missing port",
            Self::TooManyColons => "too many colons (IPv6 needs brackets)",
            Self::BadBrackets => "misplaced brackets",
            Self::BadPort => "port is not a decimal number in 0..=65535",
            Self::EmptyHost => "empty host",
            Self::BadIpLiteral => "bracketed host is not an IP address",
            Self::BadDomain => "host is not a valid domain name",
        })
    }
}

impl From<AddressError> for ProtoError {
    fn from(e: AddressError) -> Self {
        Self::BadAddress(e)
    }
}
