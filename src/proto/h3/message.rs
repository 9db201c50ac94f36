//! What request and response streams share: framing (HEADERS, DATA, unknown frames), limits,
//! and the RFC 9114 §4.2–4.3 field checks quic-go applies (`parseHeaders`).

use super::error::{H3Error, MessageError};
use super::frames::{self, FrameHeader, PartialFrameHeader};
use super::qpack::{self, DecodeError, DecodeLimits, Field};

/// Memory bounds for one request or response stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest HEADERS payload buffered. quic-go allows 1 MiB (`http.DefaultMaxHeaderBytes`);
    /// a Hysteria auth request is under 3 KiB, and browsers send under 16 KiB.
    pub max_headers_frame: usize,
    /// Most field lines in a section.
    pub max_fields: usize,
    /// Most decoded section bytes (name + value + 32 per field, RFC 9114 §4.2.2).
    pub max_field_section_size: usize,
    /// Most body bytes read (discarded by [`super::RequestReader`], kept by
    /// [`super::ResponseReader`]).
    pub max_body: u64,
}

/// Default [`Limits::max_headers_frame`].
pub const DEFAULT_MAX_HEADERS_FRAME: usize = 16 * 1024;
/// Default [`Limits::max_fields`]: browsers send around 20.
pub const DEFAULT_MAX_FIELDS: usize = 128;
/// Default [`Limits::max_field_section_size`]: Huffman and static references expand a
/// 16 KiB frame, so allow more decoded than encoded.
pub const DEFAULT_MAX_FIELD_SECTION_SIZE: usize = 64 * 1024;
/// Default [`Limits::max_body`]: the auth exchange has no body, the masquerade's 404 is 19
/// bytes.
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_headers_frame: DEFAULT_MAX_HEADERS_FRAME,
            max_fields: DEFAULT_MAX_FIELDS,
            max_field_section_size: DEFAULT_MAX_FIELD_SECTION_SIZE,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

impl Limits {
    /// Decodes a HEADERS payload within these limits.
    pub(crate) fn decode(&self, section: &[u8]) -> Result<Vec<Field>, H3Error> {
        let limits = DecodeLimits {
            max_fields: self.max_fields,
            max_field_section_size: self.max_field_section_size,
        };
        qpack::decode_field_section(section, &limits).map_err(|e| match e {
            DecodeError::Qpack(e) => H3Error::Qpack(e),
            DecodeError::TooManyFields => H3Error::TooManyFields,
            DecodeError::TooLarge => H3Error::HeadersTooLarge,
        })
    }
}

/// Which end reads the stream: they differ only in how PUSH_PROMISE is refused. (`pub` for
/// [`super::reader::Message`]; this module is private to `h3`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// A server reading a request.
    Server,
    /// A client reading a response.
    Client,
}

/// A complete frame, or part of one, on a request stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StreamFrame<'a> {
    /// A complete HEADERS payload.
    Headers(&'a [u8]),
    /// Part of a DATA payload; an empty DATA frame gives one empty chunk.
    Data(&'a [u8]),
}

/// Framing state of a request stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames; part of the next header may be in `header`.
    FrameHeader,
    /// Collecting a HEADERS payload of `len` bytes.
    Headers { len: usize },
    /// Passing on a DATA payload.
    Data { remaining: u64 },
    /// Skipping an unknown frame's payload.
    Skip { remaining: u64 },
}

/// Splits a request stream into frames, buffering only frame headers and HEADERS payloads.
#[derive(Clone, Debug)]
pub(crate) struct StreamFramer {
    /// Who reads; decides the error for PUSH_PROMISE.
    reader: Reader,
    /// Largest HEADERS payload accepted.
    max_headers_frame: usize,
    /// Current state.
    state: State,
    /// Partial frame header.
    header: PartialFrameHeader,
    /// Partial HEADERS payload.
    headers: Vec<u8>,
}

impl StreamFramer {
    pub(crate) fn new(reader: Reader, max_headers_frame: usize) -> Self {
        Self {
            reader,
            max_headers_frame,
            state: State::FrameHeader,
            header: PartialFrameHeader::default(),
            headers: Vec::new(),
        }
    }

    /// Feeds bytes; calls `on_frame` for each HEADERS payload and DATA chunk they complete.
    pub(crate) fn push(
        &mut self,
        mut data: &[u8],
        on_frame: &mut dyn FnMut(StreamFrame<'_>) -> Result<(), H3Error>,
    ) -> Result<(), H3Error> {
        while !data.is_empty() {
            match self.state {
                State::FrameHeader => {
                    let Some((hdr, used)) = self.header.push(data)? else {
                        return Ok(());
                    };
                    data = &data[used..];
                    self.start_frame(hdr, on_frame)?;
                }
                State::Headers { len } => {
                    let take = data.len().min(len - self.headers.len());
                    self.headers.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.headers.len() == len {
                        self.state = State::FrameHeader;
                        let payload = std::mem::take(&mut self.headers);
                        on_frame(StreamFrame::Headers(&payload))?;
                    }
                }
                State::Data { remaining } | State::Skip { remaining } => {
                    let take = data
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let remaining = remaining - take as u64;
                    let is_data = matches!(self.state, State::Data { .. });
                    self.state = match (remaining, is_data) {
                        (0, _) => State::FrameHeader,
                        (_, true) => State::Data { remaining },
                        (_, false) => State::Skip { remaining },
                    };
                    if is_data {
                        on_frame(StreamFrame::Data(&data[..take]))?;
                    }
                    data = &data[take..];
                }
            }
        }
        Ok(())
    }

    fn start_frame(
        &mut self,
        hdr: FrameHeader,
        on_frame: &mut dyn FnMut(StreamFrame<'_>) -> Result<(), H3Error>,
    ) -> Result<(), H3Error> {
        match hdr.ty {
            frames::HEADERS => {
                let len = usize::try_from(hdr.len)
                    .ok()
                    .filter(|&len| len <= self.max_headers_frame)
                    .ok_or(H3Error::HeadersTooLarge)?;
                if len == 0 {
                    // An empty section is missing its prefix: let QPACK say so.
                    self.state = State::FrameHeader;
                    return on_frame(StreamFrame::Headers(&[]));
                }
                // The buffer grows with what arrives, never to what the header declares.
                self.headers.clear();
                self.state = State::Headers { len };
            }
            frames::DATA => {
                if hdr.len == 0 {
                    self.state = State::FrameHeader;
                    return on_frame(StreamFrame::Data(&[]));
                }
                self.state = State::Data { remaining: hdr.len };
            }
            // RFC 9114 §7.2.5: "A client MUST NOT send a PUSH_PROMISE frame. A server MUST
            // treat the receipt of a PUSH_PROMISE frame as a connection error of type
            // H3_FRAME_UNEXPECTED." A client never allowed pushes (no MAX_PUSH_ID), so any
            // push ID is invalid (§4.6: H3_ID_ERROR).
            frames::PUSH_PROMISE if self.reader == Reader::Client => {
                return Err(H3Error::PushNotAllowed)
            }
            // §7.2.3, 7.2.4, 7.2.6, 7.2.7: control-stream frames on a request stream are
            // H3_FRAME_UNEXPECTED.
            frames::PUSH_PROMISE
            | frames::CANCEL_PUSH
            | frames::SETTINGS
            | frames::GOAWAY
            | frames::MAX_PUSH_ID => return Err(H3Error::FrameUnexpected { frame_type: hdr.ty }),
            // §9: "Implementations MUST discard frames ... that have unknown or unsupported
            // types." This includes 0x401 before authentication (Hysteria §3.4).
            _ => {
                self.state = if hdr.len == 0 {
                    State::FrameHeader
                } else {
                    State::Skip { remaining: hdr.len }
                };
            }
        }
        Ok(())
    }

    /// The stream ended. §7.1: "if the last frame on the stream was truncated, this MUST be
    /// treated as a connection error of type H3_FRAME_ERROR."
    pub(crate) fn finish(&self) -> Result<(), H3Error> {
        if self.state == State::FrameHeader && self.header.is_empty() {
            Ok(())
        } else {
            Err(H3Error::TruncatedFrame)
        }
    }
}

/// Which message a header section belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionKind {
    /// Request headers: `:method`, `:scheme`, `:authority`, `:path`, `:protocol` allowed.
    Request,
    /// Response headers: `:status` allowed.
    Response,
    /// Trailers: no pseudo-headers.
    Trailers,
}

/// A header section after the generic checks, pseudo-headers pulled out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// `:method`, empty if absent.
    pub method: String,
    /// `:scheme`, empty if absent.
    pub scheme: String,
    /// `:authority`, empty if absent.
    pub authority: String,
    /// `:path`, empty if absent.
    pub path: String,
    /// `:protocol`, empty if absent.
    pub protocol: String,
    /// `:status`, empty if absent.
    pub status: String,
    /// Regular fields in order, values converted lossily to UTF-8.
    pub headers: Vec<(String, String)>,
    /// The deduplicated `content-length`, if any.
    pub content_length: Option<u64>,
}

/// Connection-specific fields HTTP/3 forbids (RFC 9114 §4.2).
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Go's `httpguts.ValidHeaderFieldValue`: no control characters except tab.
fn is_valid_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Go's `strconv.ParseUint(s, 10, 63)`: digits only, below 2^63.
fn parse_content_length(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|&v| v < 1 << 63)
}

/// Applies the checks every HTTP/3 header section needs, in quic-go's order.
pub(crate) fn check_section(
    fields: Vec<Field>,
    kind: SectionKind,
) -> Result<Section, MessageError> {
    let mut section = Section::default();
    let mut seen_pseudo: u8 = 0;
    let mut regular = false;
    let mut content_length: Option<String> = None;
    for Field { name, value } in fields {
        // RFC 9114 §4.2: "Characters in field names MUST be converted to lowercase prior to
        // their encoding. A request or response containing uppercase characters in field
        // names MUST be treated as malformed."
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err(MessageError::UppercaseName);
        }
        if !is_valid_value(&value) {
            return Err(MessageError::InvalidValue);
        }
        let value = String::from_utf8_lossy(&value).into_owned();
        if let Some(pseudo) = name.strip_prefix(b":") {
            if kind == SectionKind::Trailers {
                return Err(MessageError::PseudoInTrailers);
            }
            // §4.3: "All pseudo-header fields MUST appear in the header section before
            // regular header fields."
            if regular {
                return Err(MessageError::PseudoAfterRegular);
            }
            let (bit, slot, is_request) = match pseudo {
                b"method" => (1, &mut section.method, true),
                b"scheme" => (2, &mut section.scheme, true),
                b"authority" => (4, &mut section.authority, true),
                b"path" => (8, &mut section.path, true),
                b"protocol" => (16, &mut section.protocol, true),
                b"status" => (32, &mut section.status, false),
                _ => return Err(MessageError::UnknownPseudo),
            };
            if is_request != (kind == SectionKind::Request) {
                return Err(MessageError::UnknownPseudo);
            }
            if seen_pseudo & bit != 0 {
                return Err(MessageError::DuplicatePseudo);
            }
            seen_pseudo |= bit;
            *slot = value;
            continue;
        }
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err(MessageError::InvalidName);
        }
        regular = true;
        // Only tchars remain, so the name is ASCII.
        let name = String::from_utf8_lossy(&name).into_owned();
        if CONNECTION_SPECIFIC.contains(&name.as_str()) {
            return Err(MessageError::ConnectionSpecific);
        }
        if name == "te" && value != "trailers" {
            return Err(MessageError::InvalidTe);
        }
        if name == "content-length" {
            match &content_length {
                Some(first) if *first != value => {
                    return Err(MessageError::ContradictingContentLength)
                }
                Some(_) => continue,
                None => content_length = Some(value.clone()),
            }
        }
        section.headers.push((name, value));
    }
    if let Some(cl) = content_length {
        // quic-go only parses a non-empty value.
        if !cl.is_empty() {
            section.content_length =
                Some(parse_content_length(&cl).ok_or(MessageError::InvalidContentLength)?);
        }
    }
    Ok(section)
}

/// First value of the field `name` (ASCII case-insensitive), like Go's `Header.Get`.
pub(crate) fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter()
            .map(|&(n, v)| Field {
                name: n.as_bytes().to_vec(),
                value: v.as_bytes().to_vec(),
            })
            .collect()
    }

    fn check(list: &[(&str, &str)], kind: SectionKind) -> Result<Section, MessageError> {
        check_section(fields(list), kind)
    }

    #[test]
    fn section_checks() {
        use MessageError::*;
        let req = SectionKind::Request;
        let ok = check(&[(":method", "GET"), (":path", "/"), ("a", "b")], req).unwrap();
        assert_eq!((ok.method.as_str(), ok.path.as_str()), ("GET", "/"));
        assert_eq!(ok.headers, [("a".to_owned(), "b".to_owned())]);
        assert_eq!(check(&[("A", "b")], req), Err(UppercaseName));
        assert_eq!(check(&[(":Path", "/")], req), Err(UppercaseName));
        assert_eq!(check(&[("a b", "c")], req), Err(InvalidName));
        assert_eq!(check(&[("", "c")], req), Err(InvalidName));
        assert_eq!(check(&[("a", "b\r\nc")], req), Err(InvalidValue));
        assert_eq!(check(&[("a", "b\u{7f}")], req), Err(InvalidValue));
        assert!(check(&[("a", "tab\there")], req).is_ok());
        assert_eq!(
            check(&[("a", "b"), (":path", "/")], req),
            Err(PseudoAfterRegular)
        );
        assert_eq!(check(&[(":foo", "x")], req), Err(UnknownPseudo));
        assert_eq!(check(&[(":status", "200")], req), Err(UnknownPseudo));
        assert_eq!(
            check(&[(":path", "/")], SectionKind::Response),
            Err(UnknownPseudo)
        );
        assert_eq!(
            check(&[(":path", "/"), (":path", "/")], req),
            Err(DuplicatePseudo)
        );
        assert_eq!(
            check(&[(":path", ""), (":path", "/")], req),
            Err(DuplicatePseudo)
        );
        assert_eq!(
            check(&[(":status", "200")], SectionKind::Trailers),
            Err(PseudoInTrailers)
        );
        assert_eq!(
            check(&[("connection", "close")], req),
            Err(ConnectionSpecific)
        );
        assert_eq!(check(&[("upgrade", "h2c")], req), Err(ConnectionSpecific));
        assert_eq!(check(&[("te", "gzip")], req), Err(InvalidTe));
        assert!(check(&[("te", "trailers")], req).is_ok());
        let cl = check(&[("content-length", "5"), ("content-length", "5")], req).unwrap();
        assert_eq!(cl.content_length, Some(5));
        assert_eq!(cl.headers.len(), 1);
        assert_eq!(
            check(&[("content-length", "5"), ("content-length", "6")], req),
            Err(ContradictingContentLength)
        );
        assert_eq!(
            check(&[("content-length", "-1")], req),
            Err(InvalidContentLength)
        );
        assert_eq!(
            check(&[("content-length", "+1")], req),
            Err(InvalidContentLength)
        );
        assert_eq!(
            check(&[("content-length", "9223372036854775808")], req),
            Err(InvalidContentLength)
        );
        assert_eq!(
            check(&[("content-length", "")], req)
                .unwrap()
                .content_length,
            None
        );
        // Non-UTF-8 values are kept, lossily.
        let s = check_section(
            vec![Field {
                name: b"x".to_vec(),
                value: vec![b'a', 0xff],
            }],
            req,
        )
        .unwrap();
        assert_eq!(s.headers[0].1, "a\u{fffd}");
    }

    fn collect(framer: &mut StreamFramer, data: &[u8]) -> Result<Vec<(bool, Vec<u8>)>, H3Error> {
        let mut out = Vec::new();
        framer.push(data, &mut |f| {
            out.push(match f {
                StreamFrame::Headers(p) => (true, p.to_vec()),
                StreamFrame::Data(p) => (false, p.to_vec()),
            });
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn framer_splits_and_skips() {
        let mut stream = Vec::new();
        frames::encode_frame(0x21, b"grease", &mut stream);
        frames::encode_frame(frames::HEADERS, b"\x00\x00\xd1", &mut stream);
        frames::encode_frame(0x401, b"", &mut stream);
        frames::encode_frame(frames::DATA, b"", &mut stream);
        frames::encode_frame(frames::DATA, b"body", &mut stream);
        let mut whole = StreamFramer::new(Reader::Server, 100);
        let got = collect(&mut whole, &stream).unwrap();
        assert_eq!(
            got,
            [
                (true, b"\x00\x00\xd1".to_vec()),
                (false, vec![]),
                (false, b"body".to_vec())
            ]
        );
        assert_eq!(whole.finish(), Ok(()));
        // Byte by byte: same frames, DATA in one-byte chunks.
        let mut split = StreamFramer::new(Reader::Server, 100);
        let mut got = Vec::new();
        for b in &stream {
            got.extend(collect(&mut split, std::slice::from_ref(b)).unwrap());
        }
        let body: Vec<u8> = got.iter().skip(1).flat_map(|(_, p)| p.clone()).collect();
        assert_eq!(got[0], (true, b"\x00\x00\xd1".to_vec()));
        assert_eq!(body, b"body");
        assert_eq!(split.finish(), Ok(()));
        // Truncated frames.
        let mut part = StreamFramer::new(Reader::Server, 100);
        collect(&mut part, &stream[..stream.len() - 1]).unwrap();
        assert_eq!(part.finish(), Err(H3Error::TruncatedFrame));
        let mut part = StreamFramer::new(Reader::Server, 100);
        collect(&mut part, &[0x40]).unwrap();
        assert_eq!(part.finish(), Err(H3Error::TruncatedFrame));
    }

    #[test]
    fn framer_refuses() {
        let err =
            |reader, bytes: &[u8]| collect(&mut StreamFramer::new(reader, 100), bytes).unwrap_err();
        for ty in [0x02u8, 0x03, 0x04, 0x06, 0x07, 0x08, 0x09, 0x0d] {
            assert_eq!(
                err(Reader::Server, &[ty, 0x00]),
                H3Error::FrameUnexpected {
                    frame_type: ty.into()
                }
            );
        }
        assert_eq!(
            err(Reader::Server, &[0x05, 0x00]),
            H3Error::FrameUnexpected { frame_type: 5 }
        );
        assert_eq!(err(Reader::Client, &[0x05, 0x00]), H3Error::PushNotAllowed);
        assert_eq!(
            err(Reader::Server, &[0x01, 0x40, 0x65]),
            H3Error::HeadersTooLarge
        );
        let huge = [0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(err(Reader::Server, &huge), H3Error::HeadersTooLarge);
    }
}
