//! The SNI of a QUIC client Initial (RFC 9000 §17.2.2, RFC 9001 §5, RFC 9369), read the way the
//! official sniffer (`extras/sniff/internal/quic`) reads it.
//!
//! Initial packets are protected with keys anyone can derive from the client's Destination
//! Connection ID, so a server can read the ClientHello in the first datagram. The header is
//! parsed, header protection removed and the payload decrypted with rustls' Initial keys (the
//! same code the QUIC stack runs); the CRYPTO frames are joined and their ClientHello parsed.
//! A ClientHello longer than the first datagram (large post-quantum key shares) gives no name.

use rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
use rustls::quic::Version;
use rustls::Side;

use super::tls::client_hello_sni;
use crate::proto::varint;

/// QUIC version 1 (RFC 9000).
const V1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
const V2: u32 = 0x6b33_43cf;

/// The fixed bit: "1 unless the packet is a Version Negotiation packet" (RFC 9000 §17.2).
const FIXED_BIT: u8 = 0x40;
/// Header protection samples 16 bytes, starting 4 bytes after the packet number's start,
/// as if the packet number were 4 bytes long (RFC 9001 §5.4.2).
const SAMPLE_OFFSET: usize = 4;
const SAMPLE_LEN: usize = 16;

/// Frame types allowed in the sniffed Initial; any other one means no name.
const PADDING: u64 = 0x00;
const PING: u64 = 0x01;
const CRYPTO: u64 = 0x06;
/// TLS handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 0x01;

/// The most CRYPTO data one frame may carry, and the furthest the joined data may reach
/// (official `maxCryptoFrameDataLen` and `maxCryptoPayloadLen`).
pub const MAX_CRYPTO_LEN: usize = 256 * 1024;

/// The server name in the ClientHello of a QUIC v1 or v2 client Initial, if `datagram` starts
/// with one that decrypts and carries a whole ClientHello naming a host in UTF-8.
///
/// Only the first packet of a coalesced datagram is read.
pub fn quic_initial_sni(datagram: &[u8]) -> Option<String> {
    let crypto = initial_crypto_data(datagram)?;
    if crypto.len() < 4 || crypto.first() != Some(&CLIENT_HELLO) {
        return None;
    }
    client_hello_sni(&crypto)
}

/// The CRYPTO stream data of the Initial at the start of `datagram`.
fn initial_crypto_data(datagram: &[u8]) -> Option<Vec<u8>> {
    let mut r = Cursor {
        buf: datagram,
        pos: 0,
    };
    let first = r.u8()?;
    let version = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    if version != 0 && first & FIXED_BIT == 0 {
        return None;
    }
    let dcid_len = r.u8()?;
    let dcid = r.take(usize::from(dcid_len))?;
    let scid_len = r.u8()?;
    r.take(usize::from(scid_len))?;
    // The long packet type bits name an Initial differently in v2 (RFC 9369 §3.2). Like the
    // official parser, a packet of another type is still tried (its token field is simply
    // not there); decryption with Initial keys then fails.
    let (quic_version, initial_type) = match version {
        V1 => (Version::V1, 0b00),
        V2 => (Version::V2, 0b01),
        _ => return None,
    };
    if (first >> 4) & 0b11 == initial_type {
        let token_len = usize::try_from(r.varint()?).ok()?;
        r.take(token_len)?;
    }
    let length = usize::try_from(r.varint()?).ok()?;
    if length == 0 {
        return None;
    }
    let pn_offset = r.pos;
    let packet = datagram.get(..pn_offset.checked_add(length)?)?;
    let payload = decrypt(quic_version, dcid, packet, pn_offset)?;
    join_crypto_frames(&payload)
}

/// Removes header protection from, and decrypts, the packet whose packet number starts at
/// `pn_offset`; the plaintext payload.
fn decrypt(version: Version, dcid: &[u8], packet: &[u8], pn_offset: usize) -> Option<Vec<u8>> {
    let keys = TLS13_AES_128_GCM_SHA256
        .tls13()?
        .quic_suite()?
        .keys(dcid, Side::Server, version);
    let sample_at = pn_offset.checked_add(SAMPLE_OFFSET)?;
    let sample: [u8; SAMPLE_LEN] = packet
        .get(sample_at..sample_at.checked_add(SAMPLE_LEN)?)?
        .try_into()
        .ok()?;
    let mut packet = packet.to_vec();
    let (head, rest) = packet.split_at_mut(pn_offset);
    let first = head.first_mut()?;
    // Unmasks the first byte, then as many packet number bytes as it says there are.
    keys.remote
        .header
        .decrypt_in_place(&sample, first, rest.get_mut(..SAMPLE_OFFSET)?)
        .ok()?;
    let pn_len = usize::from(*first & 0x03) + 1;
    let pn_bytes = rest.get(..pn_len)?;
    // The official sniffer expands the truncated number against a largest-acknowledged of 2,
    // which for every length leaves it as sent.
    let pn = pn_bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
    let (header, payload) = packet.split_at_mut(pn_offset + pn_len);
    let plain = keys
        .remote
        .packet
        .decrypt_in_place(pn, header, payload)
        .ok()?;
    Some(plain.to_vec())
}

/// The CRYPTO data of a decrypted Initial payload, joined by offset; `None` for any frame but
/// PADDING, PING and CRYPTO, a truncated frame, or frames that do not join.
///
/// As in the official sniffer, one frame is taken as it is, whatever its offset, and several
/// are sorted and must each start where the one before ends; data before the first offset is
/// zeros (which then fails the ClientHello type check).
fn join_crypto_frames(payload: &[u8]) -> Option<Vec<u8>> {
    let mut r = Cursor {
        buf: payload,
        pos: 0,
    };
    let mut frames: Vec<(usize, &[u8])> = Vec::new();
    while !r.is_empty() {
        match r.varint()? {
            PADDING | PING => {}
            CRYPTO => {
                // A varint is below 2^62, so an offset that does not fit a usize is far past
                // the limit anyway.
                let offset = usize::try_from(r.varint()?).unwrap_or(usize::MAX);
                let len = usize::try_from(r.varint()?).ok()?;
                if len > MAX_CRYPTO_LEN {
                    return None;
                }
                frames.push((offset, r.take(len)?));
            }
            _ => return None,
        }
    }
    match frames.as_slice() {
        [] => return None,
        [(_, data)] => return Some(data.to_vec()),
        _ => {}
    }
    frames.sort_by_key(|&(offset, _)| offset);
    let contiguous = frames
        .windows(2)
        .all(|w| matches!(w, [(a, da), (b, _)] if a.checked_add(da.len()) == Some(*b)));
    let &(last_offset, last) = frames.last()?;
    let end = last_offset.checked_add(last.len())?;
    if !contiguous || last_offset > MAX_CRYPTO_LEN || end > MAX_CRYPTO_LEN {
        return None;
    }
    let mut data = vec![0u8; end];
    for (offset, bytes) in frames {
        data.get_mut(offset..offset + bytes.len())?
            .copy_from_slice(bytes);
    }
    Some(data)
}

/// A read position in a datagram; every read returns `None` past the end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn varint(&mut self) -> Option<u64> {
        let (v, n) = varint::decode(self.buf.get(self.pos..)?)?;
        self.pos += n;
        Some(v)
    }
}
