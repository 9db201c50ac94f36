//! HTTP/3 frames (RFC 9114 §7) and unidirectional stream types (§6.2).
//!
//! A frame is `type (varint) | length (varint) | payload`. Unknown types, GREASE included,
//! are skipped; the HTTP/2 types that HTTP/3 reserves are a connection error.

use super::error::H3Error;
use super::qpack::{self, HuffmanPolicy};
use crate::proto::varint;

/// DATA: a chunk of message body.
pub const DATA: u64 = 0x00;
/// HEADERS: an encoded field section.
pub const HEADERS: u64 = 0x01;
/// CANCEL_PUSH (control stream only).
pub const CANCEL_PUSH: u64 = 0x03;
/// SETTINGS (control stream only, first frame there).
pub const SETTINGS: u64 = 0x04;
/// PUSH_PROMISE (server to client, request streams only).
pub const PUSH_PROMISE: u64 = 0x05;
/// GOAWAY (control stream only).
pub const GOAWAY: u64 = 0x07;
/// MAX_PUSH_ID (client to server, control stream only).
pub const MAX_PUSH_ID: u64 = 0x0d;

/// Control stream type.
pub const STREAM_CONTROL: u64 = 0x00;
/// Push stream type (server to client only).
pub const STREAM_PUSH: u64 = 0x01;
/// QPACK encoder stream type.
pub const STREAM_QPACK_ENCODER: u64 = 0x02;
/// QPACK decoder stream type.
pub const STREAM_QPACK_DECODER: u64 = 0x03;

/// SETTINGS_QPACK_MAX_TABLE_CAPACITY (RFC 9204 §5).
pub const SETTING_QPACK_MAX_TABLE_CAPACITY: u64 = 0x01;
/// SETTINGS_MAX_FIELD_SECTION_SIZE (RFC 9114 §7.2.4.1).
pub const SETTING_MAX_FIELD_SECTION_SIZE: u64 = 0x06;
/// SETTINGS_QPACK_BLOCKED_STREAMS (RFC 9204 §5).
pub const SETTING_QPACK_BLOCKED_STREAMS: u64 = 0x07;
/// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 9220 §3); the Go server sends 1.
pub const SETTING_ENABLE_CONNECT_PROTOCOL: u64 = 0x08;
/// SETTINGS_H3_DATAGRAM (RFC 9297 §2.1.1); sent by Hysteria before v2.4.3, ignored since.
pub const SETTING_H3_DATAGRAM: u64 = 0x33;

/// Longest encoding of a frame header: two 8-byte varints.
pub const MAX_FRAME_HEADER_LEN: usize = 2 * varint::MAX_LEN;
/// Largest SETTINGS payload we buffer; quic-go refuses more than 8 KiB, and real ones are
/// a few bytes.
pub const MAX_SETTINGS_LEN: u64 = 16 * 1024;

/// A parsed frame header; the payload follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame type.
    pub ty: u64,
    /// Payload length in bytes.
    pub len: u64,
}

/// True for the HTTP/2 frame types HTTP/3 reserves (RFC 9114 §7.2.8): PRIORITY, PING,
/// WINDOW_UPDATE and CONTINUATION.
pub fn is_reserved_http2(ty: u64) -> bool {
    matches!(ty, 0x02 | 0x06 | 0x08 | 0x09)
}

/// True for GREASE values `0x1f * N + 0x21` (RFC 9114 §7.2.8, §6.2.3, §7.2.4.1).
pub fn is_grease(value: u64) -> bool {
    value >= 0x21 && (value - 0x21) % 0x1f == 0
}

impl FrameHeader {
    /// Parses a frame header from the front of `buf`: `Ok(None)` if `buf` ends inside it,
    /// otherwise the header and its encoded length. Reserved HTTP/2 types are
    /// [`H3Error::FrameUnexpected`] wherever they appear.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, H3Error> {
        let Some((ty, ty_len)) = varint::decode(buf) else {
            return Ok(None);
        };
        // RFC 9114 §7.2.8: "Receipt of any of these frames MUST be treated as a connection
        // error of type H3_FRAME_UNEXPECTED."
        if is_reserved_http2(ty) {
            return Err(H3Error::FrameUnexpected { frame_type: ty });
        }
        let Some((len, len_len)) = varint::decode(&buf[ty_len..]) else {
            return Ok(None);
        };
        Ok(Some((Self { ty, len }, ty_len + len_len)))
    }

    /// Appends this header.
    pub fn encode(&self, out: &mut Vec<u8>) {
        varint::encode_saturating(self.ty, out);
        varint::encode_saturating(self.len, out);
    }
}

/// A frame header arriving in pieces, as stream readers see it: holds the first bytes of one
/// until it is complete.
#[derive(Clone, Debug, Default)]
pub(crate) struct PartialFrameHeader {
    /// Bytes of the header so far.
    bytes: [u8; MAX_FRAME_HEADER_LEN],
    /// How many of `bytes` are used; 0 between frames.
    len: usize,
}

impl PartialFrameHeader {
    /// Takes bytes from the front of `data`: once the header is complete, the header and how
    /// many bytes of `data` it took; `Ok(None)` when all of `data` was taken and more is
    /// needed.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<Option<(FrameHeader, usize)>, H3Error> {
        let old = self.len;
        let take = data.len().min(MAX_FRAME_HEADER_LEN - old);
        self.bytes[old..old + take].copy_from_slice(&data[..take]);
        self.len += take;
        let Some((header, used)) = FrameHeader::parse(&self.bytes[..self.len])? else {
            return Ok(None);
        };
        self.len = 0;
        // The first `old` bytes were incomplete on their own, so `used > old`.
        Ok(Some((header, used.saturating_sub(old))))
    }

    /// True between frames: no part of a header is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The first varint of a new bidi stream, without consuming anything: Hysteria's server
/// takes a stream over as a TCP proxy stream only if the connection is authenticated and
/// this is 0x401 (protocol notes §3.4); otherwise the whole stream, these bytes included,
/// goes to a [`super::RequestReader`]. `None` until the varint is complete.
pub fn peek_frame_type(buf: &[u8]) -> Option<u64> {
    varint::decode(buf).map(|(ty, _)| ty)
}

/// Appends a whole frame.
pub fn encode_frame(ty: u64, payload: &[u8], out: &mut Vec<u8>) {
    FrameHeader {
        ty,
        len: payload.len() as u64,
    }
    .encode(out);
    out.extend_from_slice(payload);
}

/// A HEADERS frame carrying `fields` (lower-case names), QPACK-encoded with the static
/// table only.
pub fn headers_frame(fields: &[(&str, &str)], policy: HuffmanPolicy) -> Vec<u8> {
    let mut section = Vec::new();
    qpack::encode_field_section(fields, policy, &mut section);
    let mut out = Vec::with_capacity(section.len() + 4);
    encode_frame(HEADERS, &section, &mut out);
    out
}

/// A DATA frame carrying `payload`.
pub fn data_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 9);
    encode_frame(DATA, payload, &mut out);
    out
}

/// A GOAWAY frame carrying `id` (a stream ID from a server, a push ID from a client).
pub fn goaway_frame(id: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8);
    varint::encode_saturating(id, &mut payload);
    let mut out = Vec::with_capacity(10);
    encode_frame(GOAWAY, &payload, &mut out);
    out
}

/// Decodes a payload that must be exactly one varint (GOAWAY, MAX_PUSH_ID, CANCEL_PUSH).
pub fn decode_single_varint(frame_type: u64, payload: &[u8]) -> Result<u64, H3Error> {
    match varint::decode(payload) {
        Some((v, used)) if used == payload.len() => Ok(v),
        _ => Err(H3Error::MalformedFrame { frame_type }),
    }
}

/// The SETTINGS this implementation understands; everything else is ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// QPACK dynamic table capacity the sender allows us; we never use it.
    pub qpack_max_table_capacity: u64,
    /// Largest field section the sender accepts (None: unlimited).
    pub max_field_section_size: Option<u64>,
    /// QPACK streams the sender allows to block; we never block.
    pub qpack_blocked_streams: u64,
    /// Extended CONNECT is enabled (RFC 9220).
    pub enable_connect_protocol: bool,
    /// HTTP Datagrams are enabled (RFC 9297); Hysteria never uses them.
    pub h3_datagram: bool,
}

impl Settings {
    /// What a Go Hysteria server sends: ENABLE_CONNECT_PROTOCOL = 1 and nothing else.
    pub fn go_server() -> Self {
        Self {
            enable_connect_protocol: true,
            ..Self::default()
        }
    }

    /// Decodes a SETTINGS payload.
    ///
    /// RFC 9114 §7.2.4: identifiers of HTTP/2 settings (0x02..=0x05) and duplicates are
    /// H3_SETTINGS_ERROR; unknown and GREASE identifiers "MUST be ignored". RFC 9220 and 9297
    /// allow only 0 and 1 for their booleans, as quic-go enforces.
    pub fn decode(payload: &[u8]) -> Result<Self, H3Error> {
        let malformed = H3Error::MalformedFrame {
            frame_type: SETTINGS,
        };
        let mut settings = Self::default();
        let mut seen: Vec<u64> = Vec::new();
        let mut pos = 0;
        while pos < payload.len() {
            let (id, used) = varint::decode(&payload[pos..]).ok_or(malformed)?;
            pos += used;
            let (value, used) = varint::decode(&payload[pos..]).ok_or(malformed)?;
            pos += used;
            if matches!(id, 0x02..=0x05) || seen.contains(&id) {
                return Err(H3Error::InvalidSetting { id });
            }
            // Payload is capped by the caller, so this list stays small.
            seen.push(id);
            let flag = |value: u64| match value {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(H3Error::InvalidSetting { id }),
            };
            match id {
                SETTING_QPACK_MAX_TABLE_CAPACITY => settings.qpack_max_table_capacity = value,
                SETTING_MAX_FIELD_SECTION_SIZE => settings.max_field_section_size = Some(value),
                SETTING_QPACK_BLOCKED_STREAMS => settings.qpack_blocked_streams = value,
                SETTING_ENABLE_CONNECT_PROTOCOL => settings.enable_connect_protocol = flag(value)?,
                SETTING_H3_DATAGRAM => settings.h3_datagram = flag(value)?,
                _ => {}
            }
        }
        Ok(settings)
    }

    /// Appends a SETTINGS frame. Settings at their default are left out, in identifier
    /// order, so [`Settings::go_server`] encodes as `04 02 08 01` and the default as `04 00`.
    pub fn encode_frame(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::new();
        let mut put = |id: u64, value: u64| {
            varint::encode_saturating(id, &mut payload);
            varint::encode_saturating(value, &mut payload);
        };
        if self.qpack_max_table_capacity != 0 {
            put(
                SETTING_QPACK_MAX_TABLE_CAPACITY,
                self.qpack_max_table_capacity,
            );
        }
        if let Some(size) = self.max_field_section_size {
            put(SETTING_MAX_FIELD_SECTION_SIZE, size);
        }
        if self.qpack_blocked_streams != 0 {
            put(SETTING_QPACK_BLOCKED_STREAMS, self.qpack_blocked_streams);
        }
        if self.enable_connect_protocol {
            put(SETTING_ENABLE_CONNECT_PROTOCOL, 1);
        }
        if self.h3_datagram {
            put(SETTING_H3_DATAGRAM, 1);
        }
        encode_frame(SETTINGS, &payload, out);
    }
}

/// Opening bytes of the server's control stream, as the Go server sends them: stream type
/// 0x00, then SETTINGS with ENABLE_CONNECT_PROTOCOL = 1 (`00 04 02 08 01`).
pub fn server_control_stream() -> Vec<u8> {
    let mut out = vec![STREAM_CONTROL as u8];
    Settings::go_server().encode_frame(&mut out);
    out
}

/// Opening bytes of the client's control stream, as the Go client sends them: stream type
/// 0x00, then an empty SETTINGS (`00 04 00`).
pub fn client_control_stream() -> Vec<u8> {
    let mut out = vec![STREAM_CONTROL as u8];
    Settings::default().encode_frame(&mut out);
    out
}

/// The kind of a unidirectional stream, from its first varint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniStreamType {
    /// 0x00: the peer's control stream.
    Control,
    /// 0x01: a server push stream.
    Push,
    /// 0x02: the peer's QPACK encoder stream.
    QpackEncoder,
    /// 0x03: the peer's QPACK decoder stream.
    QpackDecoder,
    /// Anything else, GREASE included.
    Unknown(u64),
}

impl UniStreamType {
    /// Parses the stream type at the start of a uni stream: `None` until the varint is
    /// complete, then the type and its encoded length.
    pub fn parse(buf: &[u8]) -> Option<(Self, usize)> {
        let (ty, used) = varint::decode(buf)?;
        let kind = match ty {
            STREAM_CONTROL => Self::Control,
            STREAM_PUSH => Self::Push,
            STREAM_QPACK_ENCODER => Self::QpackEncoder,
            STREAM_QPACK_DECODER => Self::QpackDecoder,
            other => Self::Unknown(other),
        };
        Some((kind, used))
    }

    /// The stream type varint.
    pub fn value(&self) -> u64 {
        match *self {
            Self::Control => STREAM_CONTROL,
            Self::Push => STREAM_PUSH,
            Self::QpackEncoder => STREAM_QPACK_ENCODER,
            Self::QpackDecoder => STREAM_QPACK_DECODER,
            Self::Unknown(ty) => ty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_stream_bytes_match_go() {
        assert_eq!(server_control_stream(), [0x00, 0x04, 0x02, 0x08, 0x01]);
        assert_eq!(client_control_stream(), [0x00, 0x04, 0x00]);
    }

    #[test]
    fn frame_header_parse() {
        assert_eq!(
            FrameHeader::parse(&[0x01, 0x40, 0x80, 0xaa]),
            Ok(Some((
                FrameHeader {
                    ty: HEADERS,
                    len: 128
                },
                3
            )))
        );
        assert_eq!(FrameHeader::parse(&[]), Ok(None));
        assert_eq!(FrameHeader::parse(&[0x01]), Ok(None));
        assert_eq!(FrameHeader::parse(&[0x01, 0x40]), Ok(None));
        assert_eq!(FrameHeader::parse(&[0x40]), Ok(None));
        // 0x401, the Hysteria TCP request type, is just an unknown frame here.
        assert_eq!(
            FrameHeader::parse(&[0x44, 0x01, 0x05]),
            Ok(Some((FrameHeader { ty: 0x401, len: 5 }, 3)))
        );
        for ty in [0x02, 0x06, 0x08, 0x09] {
            assert_eq!(
                FrameHeader::parse(&[ty, 0x00]),
                Err(H3Error::FrameUnexpected {
                    frame_type: u64::from(ty)
                })
            );
            // Rejected as soon as the type is known, even before the length.
            assert!(FrameHeader::parse(&[ty]).is_err());
        }
        let mut out = Vec::new();
        FrameHeader {
            ty: 0x21,
            len: 70_000,
        }
        .encode(&mut out);
        assert_eq!(
            FrameHeader::parse(&out),
            Ok(Some((
                FrameHeader {
                    ty: 0x21,
                    len: 70_000
                },
                out.len()
            )))
        );
    }

    #[test]
    fn peek() {
        assert_eq!(peek_frame_type(&[0x44, 0x01, 0x09]), Some(0x401));
        assert_eq!(peek_frame_type(&[0x44]), None);
        assert_eq!(peek_frame_type(&[0x01, 0x10]), Some(HEADERS));
    }

    #[test]
    fn grease() {
        assert!(is_grease(0x21));
        assert!(is_grease(0x40));
        assert!(is_grease(0x21 + 0x1f * 1000));
        assert!(!is_grease(0x20));
        assert!(!is_grease(0x22));
        // Hysteria's TCP request type 0x401 is itself a GREASE value (0x1f * 32 + 0x21), so
        // any HTTP/3 stack skips it as an unknown frame.
        assert!(is_grease(0x401));
    }

    #[test]
    fn settings_decode() {
        assert_eq!(Settings::decode(&[]), Ok(Settings::default()));
        assert_eq!(Settings::decode(&[0x08, 0x01]), Ok(Settings::go_server()));
        // Pre-v2.4.3 Hysteria: H3_DATAGRAM = 1 (0x33 is a 1-byte varint).
        let s = Settings::decode(&[0x08, 0x01, 0x33, 0x01]).unwrap();
        assert!(s.h3_datagram && s.enable_connect_protocol);
        // Unknown and GREASE identifiers are ignored, whatever their values.
        let s = Settings::decode(&[
            0x21, 0x80, 0, 0, 0x05, 0x40, 0x40, 0x40, 0x00, 0x06, 0x44, 0x00,
        ])
        .unwrap();
        assert_eq!(s.max_field_section_size, Some(0x400));
        // HTTP/2 identifiers, duplicates and non-boolean booleans are errors.
        for id in 2..=5u8 {
            assert_eq!(
                Settings::decode(&[id, 0]),
                Err(H3Error::InvalidSetting { id: id.into() })
            );
        }
        assert_eq!(
            Settings::decode(&[0x08, 0x01, 0x08, 0x01]),
            Err(H3Error::InvalidSetting { id: 0x08 })
        );
        assert_eq!(
            Settings::decode(&[0x21, 0x01, 0x21, 0x01]),
            Err(H3Error::InvalidSetting { id: 0x21 })
        );
        assert_eq!(
            Settings::decode(&[0x08, 0x02]),
            Err(H3Error::InvalidSetting { id: 0x08 })
        );
        assert_eq!(
            Settings::decode(&[0x33, 0x02]),
            Err(H3Error::InvalidSetting { id: 0x33 })
        );
        // Truncated pairs.
        let malformed = Err(H3Error::MalformedFrame {
            frame_type: SETTINGS,
        });
        assert_eq!(Settings::decode(&[0x08]), malformed);
        assert_eq!(Settings::decode(&[0x08, 0x40]), malformed);
    }

    #[test]
    fn settings_round_trip() {
        let all = Settings {
            qpack_max_table_capacity: 4096,
            max_field_section_size: Some(1 << 20),
            qpack_blocked_streams: 16,
            enable_connect_protocol: true,
            h3_datagram: true,
        };
        for s in [Settings::default(), Settings::go_server(), all] {
            let mut out = Vec::new();
            s.encode_frame(&mut out);
            let (hdr, used) = FrameHeader::parse(&out).unwrap().unwrap();
            assert_eq!(hdr.ty, SETTINGS);
            assert_eq!(Settings::decode(&out[used..]), Ok(s));
        }
    }

    #[test]
    fn goaway() {
        let f = goaway_frame(4);
        assert_eq!(f, [0x07, 0x01, 0x04]);
        assert_eq!(decode_single_varint(GOAWAY, &f[2..]), Ok(4));
        let malformed = Err(H3Error::MalformedFrame { frame_type: GOAWAY });
        assert_eq!(decode_single_varint(GOAWAY, &[]), malformed);
        assert_eq!(decode_single_varint(GOAWAY, &[0x04, 0x00]), malformed);
        assert_eq!(decode_single_varint(GOAWAY, &[0x40]), malformed);
    }

    #[test]
    fn uni_stream_types() {
        assert_eq!(
            UniStreamType::parse(&[0x00]),
            Some((UniStreamType::Control, 1))
        );
        assert_eq!(
            UniStreamType::parse(&[0x01, 0xff]),
            Some((UniStreamType::Push, 1))
        );
        assert_eq!(
            UniStreamType::parse(&[0x02]),
            Some((UniStreamType::QpackEncoder, 1))
        );
        assert_eq!(
            UniStreamType::parse(&[0x03]),
            Some((UniStreamType::QpackDecoder, 1))
        );
        assert_eq!(
            UniStreamType::parse(&[0x40, 0x21]),
            Some((UniStreamType::Unknown(0x21), 2))
        );
        assert_eq!(UniStreamType::parse(&[0x40]), None);
        assert_eq!(UniStreamType::Unknown(0x54).value(), 0x54);
    }
}
