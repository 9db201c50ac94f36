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
        Box::new(AssumeSession {
            inner: self.inner.clone().start_session(version, params),
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
