//! Server crypto wrapper that lets quinn-proto send DATAGRAM frames to peers that omit the
//! `max_datagram_frame_size` transport parameter.
//!
//! Official Hysteria2 clients since v2.8.2 omit it but accept DATAGRAM frames; the official
//! server assumes 1200 for them (quic-go `AssumePeerMaxDatagramFrameSize`). quinn-proto refuses
//! to send datagrams to a peer without the parameter, so UDP replies would fail. Without forking
//! quinn-proto, we wrap the rustls session and, when the peer's parameters lack it, re-encode
//! them with the parameter added (DESIGN.md, "Known interop hazards").
//!
//! Only use this where every peer is known to accept DATAGRAM frames (the Hysteria2 ALPN):
//! RFC 9221 §3 makes a DATAGRAM frame to a peer that did not advertise support a
//! PROTOCOL_VIOLATION.
//!
//! The same wrapper makes the server's own transport parameters those of the reference
//! server (quic-go), which any client that completes a handshake can read
//! ([`AS_QUIC_GO`]); each new value only asks the peer for less than quinn-proto accepts.

use std::any::Any;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use quinn_proto::coding::Codec;
use quinn_proto::crypto::{
    self, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey, Session,
    UnsupportedVersion,
};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError, VarInt};

/// Largest Hysteria2 UDP message payload in one DATAGRAM frame: quic-go peers close the
/// connection on frames over 1200 bytes, and type (1) + length (2) + 1197 = 1200.
pub const ASSUMED_PEER_DATAGRAM_PAYLOAD: u16 = 1197;

/// Transport parameter ID of `max_datagram_frame_size` (RFC 9221 §3).
const MAX_DATAGRAM_FRAME_SIZE: u64 = 0x20;

/// How one of our own transport parameters is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rewrite {
    /// This value, if the parameter is sent at all.
    Replace(u64),
    /// This value, always.
    Set(u64),
    /// Not sent.
    Remove,
}

/// Our transport parameters as quic-go (the official server's and sing-box's QUIC stack)
/// sends them, where quinn-proto's differ (observed against sing-box 1.14.4, `tests/hy2_singbox/probe.rs`):
///
/// - `max_udp_payload_size` (0x03): quic-go's 1452 (`protocol.MaxPacketBufferSize`), not
///   quinn-proto's 1472; a peer then sends packets of at most 1452 bytes, which we take.
/// - `max_ack_delay` (0x0b): quic-go announces 26 ms (25 ms plus its timer granularity);
///   quinn-proto acknowledges within 25 ms and sends nothing (the default, 25). A longer
///   announced delay only makes the peer's loss detection wait a millisecond more.
/// - `active_connection_id_limit` (0x0e): quic-go's 4, not quinn-proto's 5; the peer then
///   issues us at most 4 connection IDs, which quinn-proto takes (it would take 5).
/// - `max_datagram_frame_size` (0x20): quic-go's 16383 (`protocol.MaxDatagramFrameSize`),
///   not 65535, and only when DATAGRAMs are on; no DATAGRAM fits a packet either way.
/// - `min_ack_delay` (0xff04de1b, draft ack-frequency): quic-go does not implement it, so
///   it is not sent; a peer then never sends ACK_FREQUENCY frames, which is what quinn-proto
///   does without them.
const AS_QUIC_GO: [(u64, Rewrite); 5] = [
    (0x03, Rewrite::Replace(1452)),
    (0x0b, Rewrite::Set(26)),
    (0x0e, Rewrite::Replace(4)),
    (MAX_DATAGRAM_FRAME_SIZE, Rewrite::Replace(16383)),
    (0xff04_de1b, Rewrite::Remove),
];

/// quinn-proto subtracts this worst-case frame overhead (type + 8-byte varint length) from the
/// peer's `max_datagram_frame_size` to get the largest payload it will send.
const QUINN_DATAGRAM_OVERHEAD: u16 = 1 + 8;

/// A server crypto configuration that assumes peers accept DATAGRAM payloads of
/// `payload` bytes when they omit `max_datagram_frame_size`.
pub struct AssumePeerDatagrams {
    /// The wrapped configuration; everything is delegated to it.
    inner: Arc<dyn crypto::ServerConfig>,
    /// Value written as the peer's `max_datagram_frame_size` when absent.
    frame_size: u64,
}

impl AssumePeerDatagrams {
    /// Wrap `inner`; quinn-proto's `datagrams().max_size()` then reports at most `payload` for
    /// peers without the parameter.
    pub fn new(inner: Arc<dyn crypto::ServerConfig>, payload: u16) -> Self {
        Self {
            inner,
            frame_size: u64::from(payload) + u64::from(QUINN_DATAGRAM_OVERHEAD),
        }
    }
}

impl crypto::ServerConfig for AssumePeerDatagrams {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.inner.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.inner.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn Session> {
        let own = as_quic_go(params);
        Box::new(AssumeSession {
            inner: self.inner.clone().start_session(version, &own),
            frame_size: self.frame_size,
        })
    }
}

/// A server session whose view of the client's transport parameters always has
/// `max_datagram_frame_size`.
struct AssumeSession {
    /// The real TLS session.
    inner: Box<dyn Session>,
    /// Value to add when the client omitted the parameter.
    frame_size: u64,
}

impl Session for AssumeSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.inner.handshake_data()
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        self.inner.read_handshake(buf)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        Ok(self
            .inner
            .transport_parameters()?
            .map(|params| with_datagram_frame_size(params, self.frame_size)))
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.inner.write_handshake(buf)
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

/// `params` with `max_datagram_frame_size = frame_size` if it had none. The fields are private
/// to quinn-proto, so this goes through the wire encoding; anything unexpected leaves `params`
/// as it was.
fn with_datagram_frame_size(params: TransportParameters, frame_size: u64) -> TransportParameters {
    let mut buf = Vec::new();
    params.write(&mut buf);
    match has_parameter(&buf, MAX_DATAGRAM_FRAME_SIZE) {
        Some(false) => {}
        Some(true) | None => return params,
    }
    let Ok(value) = VarInt::from_u64(frame_size) else {
        return params;
    };
    let mut encoded = BytesMut::new();
    value.encode(&mut encoded);
    VarInt::from_u64(MAX_DATAGRAM_FRAME_SIZE)
        .unwrap_or(VarInt::MAX)
        .encode(&mut buf);
    VarInt::from_u64(encoded.len() as u64)
        .unwrap_or(VarInt::MAX)
        .encode(&mut buf);
    buf.extend_from_slice(&encoded);
    // The client's parameters are read as the server reads them.
    TransportParameters::read(Side::Server, &mut &buf[..]).unwrap_or(params)
}

/// Our parameters rewritten by [`AS_QUIC_GO`]. quinn-proto's fields are private, so this goes
/// through the wire encoding; anything unexpected leaves `params` as they were. The
/// re-encoding also drops quinn-proto's random order and its reserved (GREASE) parameter.
fn as_quic_go(params: &TransportParameters) -> TransportParameters {
    let mut buf = Vec::new();
    params.write(&mut buf);
    let Some(rewritten) = rewrite(&buf, &AS_QUIC_GO) else {
        return *params;
    };
    // Our own parameters, read as the client reads them.
    TransportParameters::read(Side::Client, &mut &rewritten[..]).unwrap_or(*params)
}

/// The encoded list `buf` with `rules` applied (replaced in place, set ones appended when
/// absent); `None` if it does not parse.
fn rewrite(mut buf: &[u8], rules: &[(u64, Rewrite)]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(buf.len() + 8);
    let mut seen = Vec::new();
    let put = |out: &mut Vec<u8>, id: u64, value: &[u8]| -> Option<()> {
        let mut b = BytesMut::new();
        VarInt::from_u64(id).ok()?.encode(&mut b);
        VarInt::from_u64(value.len() as u64).ok()?.encode(&mut b);
        out.extend_from_slice(&b);
        out.extend_from_slice(value);
        Some(())
    };
    let varint_bytes = |v: u64| -> Option<Vec<u8>> {
        let mut b = BytesMut::new();
        VarInt::from_u64(v).ok()?.encode(&mut b);
        Some(b.to_vec())
    };
    while buf.has_remaining() {
        let id = VarInt::decode(&mut buf).ok()?.into_inner();
        let len = usize::try_from(VarInt::decode(&mut buf).ok()?.into_inner()).ok()?;
        if len > buf.remaining() {
            return None;
        }
        let value = &buf[..len];
        buf.advance(len);
        seen.push(id);
        match rules.iter().find(|(r, _)| *r == id).map(|(_, how)| *how) {
            None => put(&mut out, id, value)?,
            Some(Rewrite::Remove) => {}
            Some(Rewrite::Replace(v) | Rewrite::Set(v)) => put(&mut out, id, &varint_bytes(v)?)?,
        }
    }
    for (id, how) in rules {
        if let Rewrite::Set(v) = how {
            if !seen.contains(id) {
                put(&mut out, *id, &varint_bytes(*v)?)?;
            }
        }
    }
    Some(out)
}

/// Whether the encoded parameter list holds `id`; `None` if it does not parse.
fn has_parameter(mut buf: &[u8], id: u64) -> Option<bool> {
    while buf.has_remaining() {
        let this = VarInt::decode(&mut buf).ok()?.into_inner();
        let len = usize::try_from(VarInt::decode(&mut buf).ok()?.into_inner()).ok()?;
        if len > buf.remaining() {
            return None;
        }
        if this == id {
            return Some(true);
        }
        buf.advance(len);
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replaced where present, set where absent, removed, others kept byte for byte.
    #[test]
    fn rewrite_applies_each_rule() {
        // 0x0e = 5, 0x20 = 65535 (4-byte varint), 0x01 = 30000, 0xff04de1b = 1000
        let buf = [
            0x0e, 0x01, 0x05, 0x20, 0x04, 0x80, 0x00, 0xff, 0xff, 0x01, 0x02, 0x75, 0x30, 0xc0,
            0x00, 0x00, 0x00, 0xff, 0x04, 0xde, 0x1b, 0x02, 0x43, 0xe8,
        ];
        let out = rewrite(&buf, &AS_QUIC_GO).unwrap();
        // 0x0e = 4, 0x20 = 16383 (2-byte varint 0x7fff), 0x01 kept, 0x0b = 26 appended.
        assert_eq!(
            out,
            [0x0e, 0x01, 0x04, 0x20, 0x02, 0x7f, 0xff, 0x01, 0x02, 0x75, 0x30, 0x0b, 0x01, 26]
        );
        // Without DATAGRAMs, max_datagram_frame_size stays absent.
        let out = rewrite(&[0x0e, 0x01, 0x05], &AS_QUIC_GO).unwrap();
        assert_eq!(out, [0x0e, 0x01, 0x04, 0x0b, 0x01, 26]);
        assert_eq!(rewrite(&[0x0e, 0x05, 0x05], &AS_QUIC_GO), None);
    }

    #[test]
    fn has_parameter_walks_tlvs() {
        // id 0x01 len 1 [0x05], id 0x20 len 2 [0x44, 0xb0]
        let buf = [0x01, 0x01, 0x05, 0x20, 0x02, 0x44, 0xb0];
        assert_eq!(has_parameter(&buf, 0x20), Some(true));
        assert_eq!(has_parameter(&buf, 0x01), Some(true));
        assert_eq!(has_parameter(&buf[..3], 0x20), Some(false));
        assert_eq!(has_parameter(&[], 0x20), Some(false));
        // Truncated value.
        assert_eq!(has_parameter(&buf[..6], 0x33), None);
        // Truncated length varint.
        assert_eq!(has_parameter(&[0x01, 0x40], 0x20), None);
    }
}
