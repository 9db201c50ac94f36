//! UDP proxying: one UDPMessage is the whole payload of one QUIC DATAGRAM frame.
//!
//! ```text
//! u32 session_id | u16 packet_id | u8 frag_id | u8 frag_count | varint addr_len | addr | payload
//! ```
//! Packets too big for one DATAGRAM frame are split by [`fragment`], with the full header
//! (address included) in every fragment, and joined again by a per-session [`Defragger`].

use bytes::Bytes;

pub use super::defrag::{Defragger, DEFAULT_MAX_BYTES, DEFAULT_MAX_PACKETS};
use super::tcp::MAX_ADDRESS_LENGTH;
use super::{varint, AddressError, ProtoError};

/// The `max_datagram_frame_size` Hysteria servers advertise (and assume for official clients).
pub const MAX_DATAGRAM: usize = 1200;
/// A UDPMessage this long always fits a DATAGRAM frame within [`MAX_DATAGRAM`]: quic-go closes
/// the whole connection on a larger frame, so sing-box uses `1200 - 3` and so do we.
pub const MAX_UDP_MESSAGE: usize = MAX_DATAGRAM - 3;
/// The largest UDP payload either implementation relays (`MaxUDPSize`).
pub const MAX_UDP_PAYLOAD: usize = 4096;
/// Session id, packet id, fragment id and fragment count.
const FIXED_HEADER_LEN: usize = 4 + 2 + 1 + 1;

/// One UDP packet, or one fragment of one, between client and server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpMessage {
    /// Chosen by the client; the server keeps one UDP socket per session.
    pub session_id: u32,
    /// Shared by the fragments of one packet; 0 when unfragmented (official).
    pub packet_id: u16,
    /// 0-based index of this fragment.
    pub frag_id: u8,
    /// Number of fragments; 0 or 1 means unfragmented.
    pub frag_count: u8,
    /// `host:port`: the destination (client to server) or the reply's source (server to client).
    /// Only its length and UTF-8 are checked here; see [`super::split_host_port`].
    pub addr: String,
    /// The UDP payload (or this fragment's share of it); never empty.
    pub payload: Bytes,
}

impl UdpMessage {
    /// Parses a whole DATAGRAM frame payload; the returned payload shares `datagram`'s memory.
    pub fn parse(datagram: Bytes) -> Result<Self, ProtoError> {
        let b = &datagram[..];
        let truncated = ProtoError::TruncatedDatagram(b.len());
        let Some(fixed) = b.get(..FIXED_HEADER_LEN) else {
            return Err(truncated);
        };
        let session_id = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
        let packet_id = u16::from_be_bytes([fixed[4], fixed[5]]);
        let (frag_id, frag_count) = (fixed[6], fixed[7]);
        let Some((len, n)) = varint::decode(&b[FIXED_HEADER_LEN..]) else {
            return Err(truncated);
        };
        check_address_len(len)?;
        let start = FIXED_HEADER_LEN + n;
        let end = start + len as usize;
        let Some(addr) = b.get(start..end) else {
            return Err(truncated);
        };
        let addr = std::str::from_utf8(addr)
            .map_err(|_| AddressError::NotUtf8)?
            .to_owned();
        if end == b.len() {
            return Err(ProtoError::EmptyPayload);
        }
        Ok(Self {
            session_id,
            packet_id,
            frag_id,
            frag_count,
            addr,
            payload: datagram.slice(end..),
        })
    }

    /// Bytes before the payload.
    pub fn header_len(&self) -> usize {
        header_len(self.addr.len())
    }

    /// Bytes [`Self::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Appends the message to `out`; `out` is untouched on error. Does not check sizes against
    /// [`MAX_UDP_MESSAGE`]: that is [`fragment`]'s job.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        check_address_len(self.addr.len() as u64)?;
        if self.payload.is_empty() {
            return Err(ProtoError::EmptyPayload);
        }
        out.reserve(self.encoded_len());
        write_header(
            out,
            self.session_id,
            self.packet_id,
            self.frag_id,
            self.frag_count,
            &self.addr,
        )?;
        out.extend_from_slice(&self.payload);
        Ok(())
    }
}

/// Bytes before the payload of a UDPMessage whose address is `addr_len` bytes.
pub fn header_len(addr_len: usize) -> usize {
    FIXED_HEADER_LEN + varint::encoded_len(addr_len as u64) + addr_len
}

/// Encodes a UDP packet as one UDPMessage if it fits in `max_message_size` bytes, else as
/// fragments of at most that size, each repeating the address.
///
/// Every message carries `packet_id`; receivers ignore it when `frag_count` is 1, so callers
/// may follow the official client (0 unless fragmented, then a random non-zero id) or
/// sing-box (a counter). Send the fragments of one packet back to back: the official
/// [`Defragger`] keeps only one packet under reassembly.
pub fn fragment(
    session_id: u32,
    packet_id: u16,
    addr: &str,
    payload: &[u8],
    max_message_size: usize,
) -> Result<Vec<Vec<u8>>, ProtoError> {
    check_address_len(addr.len() as u64)?;
    if payload.is_empty() {
        return Err(ProtoError::EmptyPayload);
    }
    if payload.len() > MAX_UDP_PAYLOAD {
        return Err(ProtoError::PayloadTooLarge(payload.len()));
    }
    let header_len = header_len(addr.len());
    let chunk = max_message_size.saturating_sub(header_len);
    if chunk == 0 {
        return Err(ProtoError::NoRoomForPayload {
            max_message_size,
            header_len,
        });
    }
    let count = payload.len().div_ceil(chunk);
    let frag_count = u8::try_from(count).map_err(|_| ProtoError::TooManyFragments(count))?;
    let mut out = Vec::with_capacity(count);
    for (frag_id, part) in (0..=u8::MAX).zip(payload.chunks(chunk)) {
        let mut msg = Vec::with_capacity(header_len + part.len());
        write_header(&mut msg, session_id, packet_id, frag_id, frag_count, addr)?;
        msg.extend_from_slice(part);
        out.push(msg);
    }
    Ok(out)
}

fn write_header(
    out: &mut Vec<u8>,
    session_id: u32,
    packet_id: u16,
    frag_id: u8,
    frag_count: u8,
    addr: &str,
) -> Result<(), ProtoError> {
    out.extend_from_slice(&session_id.to_be_bytes());
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.push(frag_id);
    out.push(frag_count);
    varint::encode_len(addr.len(), out)?;
    out.extend_from_slice(addr.as_bytes());
    Ok(())
}

fn check_address_len(len: u64) -> Result<(), ProtoError> {
    match len {
        0 => Err(ProtoError::EmptyAddress),
        n if n > MAX_ADDRESS_LENGTH as u64 => Err(ProtoError::AddressTooLong(n)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference §4.1: `00 00 00 01 | 00 00 | 00 | 01 | 0a "1.1.1.1:53" | payload`.
    fn example() -> Vec<u8> {
        let mut v = vec![0, 0, 0, 1, 0, 0, 0, 1, 0x0a];
        v.extend_from_slice(b"1.1.1.1:53");
        v.extend_from_slice(b"\x12\x34dns query");
        v
    }

    #[test]
    fn reference_example() {
        let bytes = example();
        let msg = UdpMessage::parse(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(
            msg,
            UdpMessage {
                session_id: 1,
                packet_id: 0,
                frag_id: 0,
                frag_count: 1,
                addr: "1.1.1.1:53".into(),
                payload: Bytes::from_static(b"\x12\x34dns query"),
            }
        );
        assert_eq!(msg.header_len(), 19);
        let mut out = Vec::new();
        msg.encode(&mut out).unwrap();
        assert_eq!(out, bytes);
        let frags = fragment(1, 0, "1.1.1.1:53", b"\x12\x34dns query", MAX_UDP_MESSAGE).unwrap();
        assert_eq!(frags, vec![bytes]);
    }

    #[test]
    fn payload_shares_the_datagram() {
        let datagram = Bytes::from(example());
        let msg = UdpMessage::parse(datagram.clone()).unwrap();
        assert_eq!(msg.payload.as_ptr(), datagram[19..].as_ptr());
    }

    #[test]
    fn parse_errors() {
        let bytes = example();
        // Cut inside the header: truncated; cut right after the address: empty payload.
        for n in 0..19 {
            assert_eq!(
                UdpMessage::parse(Bytes::copy_from_slice(&bytes[..n])),
                Err(ProtoError::TruncatedDatagram(n)),
                "prefix {n}"
            );
        }
        assert_eq!(
            UdpMessage::parse(Bytes::copy_from_slice(&bytes[..19])),
            Err(ProtoError::EmptyPayload)
        );
        let with_len = |len: &[u8]| {
            let mut v = vec![0; 8];
            v.extend_from_slice(len);
            v.extend_from_slice(&[b'a'; 64]);
            UdpMessage::parse(Bytes::from(v))
        };
        assert_eq!(with_len(&[0x00]), Err(ProtoError::EmptyAddress));
        assert_eq!(
            with_len(&[0x48, 0x01]),
            Err(ProtoError::AddressTooLong(2049))
        );
        assert_eq!(
            with_len(&[0xff; 8]),
            Err(ProtoError::AddressTooLong(varint::MAX))
        );
        let mut v = vec![0; 8];
        v.extend_from_slice(b"\x03\xff:1payload");
        assert_eq!(
            UdpMessage::parse(Bytes::from(v)),
            Err(AddressError::NotUtf8.into())
        );
    }

    #[test]
    fn encode_refuses() {
        let mut msg = UdpMessage::parse(Bytes::from(example())).unwrap();
        let mut out = Vec::new();
        msg.payload = Bytes::new();
        assert_eq!(msg.encode(&mut out), Err(ProtoError::EmptyPayload));
        msg.payload = Bytes::from_static(b"x");
        msg.addr = String::new();
        assert_eq!(msg.encode(&mut out), Err(ProtoError::EmptyAddress));
        msg.addr = "a".repeat(2049);
        assert_eq!(msg.encode(&mut out), Err(ProtoError::AddressTooLong(2049)));
        assert!(out.is_empty());
    }

    #[test]
    fn fragment_sizes() {
        let addr = "example.com:443";
        let header = header_len(addr.len());
        assert_eq!(header, 8 + 1 + 15);
        let payload: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();

        // Exactly fits: one message.
        let whole = fragment(
            7,
            9,
            addr,
            &payload[..MAX_UDP_MESSAGE - header],
            MAX_UDP_MESSAGE,
        )
        .unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].len(), MAX_UDP_MESSAGE);

        // One byte more: two fragments, each within the limit, address in both.
        let frags = fragment(
            7,
            9,
            addr,
            &payload[..MAX_UDP_MESSAGE - header + 1],
            MAX_UDP_MESSAGE,
        )
        .unwrap();
        assert_eq!(frags.len(), 2);
        let msgs: Vec<_> = frags
            .iter()
            .map(|f| UdpMessage::parse(Bytes::copy_from_slice(f)).unwrap())
            .collect();
        assert_eq!((msgs[0].frag_id, msgs[0].frag_count), (0, 2));
        assert_eq!((msgs[1].frag_id, msgs[1].frag_count), (1, 2));
        assert!(msgs
            .iter()
            .all(|m| m.addr == addr && m.packet_id == 9 && m.session_id == 7));
        assert_eq!(msgs[1].payload.len(), 1);

        // The largest payload: 4 fragments.
        let frags = fragment(7, 9, addr, &payload, MAX_UDP_MESSAGE).unwrap();
        assert_eq!(frags.len(), 4096usize.div_ceil(MAX_UDP_MESSAGE - header));
        assert!(frags.iter().all(|f| f.len() <= MAX_UDP_MESSAGE));
        let joined: Vec<u8> = frags.iter().flat_map(|f| f[header..].to_vec()).collect();
        assert_eq!(joined, payload);
    }

    #[test]
    fn fragment_refuses() {
        let p = [1u8; 300];
        assert_eq!(
            fragment(0, 0, "a:1", &[], 1197),
            Err(ProtoError::EmptyPayload)
        );
        assert_eq!(fragment(0, 0, "", &p, 1197), Err(ProtoError::EmptyAddress));
        assert_eq!(
            fragment(0, 0, "a:1", &[0; 4097], 1197),
            Err(ProtoError::PayloadTooLarge(4097))
        );
        assert_eq!(
            fragment(0, 0, "a:1", &p, 12),
            Err(ProtoError::NoRoomForPayload {
                max_message_size: 12,
                header_len: 12
            })
        );
        assert_eq!(
            fragment(0, 0, "a:1", &p, 0),
            Err(ProtoError::NoRoomForPayload {
                max_message_size: 0,
                header_len: 12
            })
        );
        // One payload byte per fragment: 255 fragments fit, 256 do not.
        assert_eq!(fragment(0, 0, "a:1", &p[..255], 13).unwrap().len(), 255);
        assert_eq!(
            fragment(0, 0, "a:1", &p[..256], 13),
            Err(ProtoError::TooManyFragments(256))
        );
    }
}
