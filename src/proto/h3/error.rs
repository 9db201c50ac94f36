//! HTTP/3 and QPACK error codes (RFC 9114 §8.1, RFC 9204 §6) and the errors this module
//! reports. Every error says which code to send and whether it ends the stream or the whole
//! connection; all of them are the peer's fault, since the parsers only ever see peer bytes.

use std::fmt;

/// No error: graceful close (the official server's normal connection close code).
pub const H3_NO_ERROR: u64 = 0x100;
/// Generic protocol error (the official client closes with it on auth failure).
pub const H3_GENERAL_PROTOCOL_ERROR: u64 = 0x101;
/// Internal error in the HTTP stack.
pub const H3_INTERNAL_ERROR: u64 = 0x102;
/// A stream was opened that the peer may not open (push from a client, second control stream).
pub const H3_STREAM_CREATION_ERROR: u64 = 0x103;
/// A control or QPACK stream was closed or reset.
pub const H3_CLOSED_CRITICAL_STREAM: u64 = 0x104;
/// A frame was not allowed in the current state or on this stream.
pub const H3_FRAME_UNEXPECTED: u64 = 0x105;
/// A frame's layout or size was invalid.
pub const H3_FRAME_ERROR: u64 = 0x106;
/// The peer generates excessive load (the official server also uses it to kick users).
pub const H3_EXCESSIVE_LOAD: u64 = 0x107;
/// A stream or push ID was used incorrectly.
pub const H3_ID_ERROR: u64 = 0x108;
/// A SETTINGS frame carried an invalid value.
pub const H3_SETTINGS_ERROR: u64 = 0x109;
/// The first frame on the control stream was not SETTINGS.
pub const H3_MISSING_SETTINGS: u64 = 0x10a;
/// The server rejected a request before processing it.
pub const H3_REQUEST_REJECTED: u64 = 0x10b;
/// The request or response is no longer needed.
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
/// The stream ended before the message was complete.
pub const H3_REQUEST_INCOMPLETE: u64 = 0x10d;
/// The HTTP message was malformed.
pub const H3_MESSAGE_ERROR: u64 = 0x10e;
/// The CONNECT tunnel failed.
pub const H3_CONNECT_ERROR: u64 = 0x10f;
/// Retry over HTTP/1.1.
pub const H3_VERSION_FALLBACK: u64 = 0x110;
/// A field section could not be decoded.
pub const QPACK_DECOMPRESSION_FAILED: u64 = 0x200;
/// The peer's QPACK encoder stream was invalid.
pub const QPACK_ENCODER_STREAM_ERROR: u64 = 0x201;
/// The peer's QPACK decoder stream was invalid.
pub const QPACK_DECODER_STREAM_ERROR: u64 = 0x202;

/// Why a QPACK field section (RFC 9204 §4.5) could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpackError {
    /// The section ended inside a field line or its prefix.
    Truncated,
    /// A prefix integer does not fit in 62 bits.
    IntegerOverflow,
    /// Required Insert Count is not 0: the peer uses a dynamic table we never allowed.
    DynamicTableUsed,
    /// A field line refers to the dynamic table (T=0, or a post-base form).
    DynamicReference,
    /// A static table index past the 99 entries.
    BadStaticIndex(u64),
    /// A Huffman-coded string is invalid.
    Huffman(HuffmanError),
}

/// Why a Huffman-coded string (RFC 7541 §5.2) is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HuffmanError {
    /// The EOS symbol appeared inside the string.
    EosInString,
    /// More than 7 bits of padding.
    PaddingTooLong,
    /// Padding that is not a prefix of EOS (all ones).
    BadPadding,
}

/// Why a decoded header section is not a valid HTTP message (RFC 9114 §4.1.2, §4.2, §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// A field name with upper-case letters.
    UppercaseName,
    /// A field name that is empty or not an HTTP token.
    InvalidName,
    /// A field value with control characters other than tab.
    InvalidValue,
    /// A pseudo-header after a regular field.
    PseudoAfterRegular,
    /// A pseudo-header that is not defined, or not defined for this kind of message.
    UnknownPseudo,
    /// The same pseudo-header twice.
    DuplicatePseudo,
    /// A pseudo-header the message needs is missing or empty.
    MissingPseudo,
    /// `:path` is set on a plain CONNECT.
    PathOnConnect,
    /// `:protocol` outside an extended CONNECT.
    ProtocolWithoutConnect,
    /// `:path` is not a request target Go's `url.ParseRequestURI` accepts.
    InvalidPath,
    /// `:status` is not a three-digit code.
    InvalidStatus,
    /// A connection-specific field (`connection`, `upgrade`, ...) that HTTP/3 forbids.
    ConnectionSpecific,
    /// `te` with a value other than `trailers`.
    InvalidTe,
    /// Two `content-length` fields that differ.
    ContradictingContentLength,
    /// A `content-length` that is not a decimal below 2^63.
    InvalidContentLength,
    /// The body is longer or shorter than `content-length` said.
    ContentLengthMismatch,
    /// A pseudo-header in trailers.
    PseudoInTrailers,
}

/// An HTTP/3 protocol error found in peer bytes, with the code to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H3Error {
    /// A frame type this stream may not carry here (also the reserved HTTP/2 types 0x02,
    /// 0x06, 0x08, 0x09 anywhere, and a first request frame other than HEADERS).
    FrameUnexpected {
        /// The offending frame type.
        frame_type: u64,
    },
    /// A frame whose payload does not match its type's layout.
    MalformedFrame {
        /// The offending frame type.
        frame_type: u64,
    },
    /// A frame longer than this implementation buffers.
    FrameTooLarge {
        /// The offending frame type.
        frame_type: u64,
        /// Its announced payload length.
        len: u64,
    },
    /// The stream ended inside a frame.
    TruncatedFrame,
    /// The control stream did not start with SETTINGS.
    MissingSettings,
    /// A SETTINGS frame with a duplicate, HTTP/2-only or out-of-range setting.
    InvalidSetting {
        /// The setting identifier.
        id: u64,
    },
    /// The peer closed its control stream.
    ClosedCriticalStream,
    /// The peer opened a uni stream it may not open (a second control/QPACK stream, or a
    /// push stream towards a server).
    StreamCreation {
        /// The stream type varint.
        stream_type: u64,
    },
    /// A PUSH_PROMISE or push stream although we never sent MAX_PUSH_ID.
    PushNotAllowed,
    /// A HEADERS frame, or its decoded field section, over the configured limits.
    HeadersTooLarge,
    /// More field lines than the configured limit.
    TooManyFields,
    /// More body bytes than the configured limit.
    BodyTooLarge,
    /// The stream ended before a complete header section arrived.
    Incomplete,
    /// The field section could not be decoded.
    Qpack(QpackError),
    /// The header section decoded but is not a valid HTTP message.
    Message(MessageError),
}

impl H3Error {
    /// The application error code to send (RESET_STREAM/STOP_SENDING or CONNECTION_CLOSE).
    pub fn code(&self) -> u64 {
        match self {
            Self::FrameUnexpected { .. } => H3_FRAME_UNEXPECTED,
            Self::MalformedFrame { .. } | Self::TruncatedFrame => H3_FRAME_ERROR,
            Self::FrameTooLarge { .. }
            | Self::HeadersTooLarge
            | Self::TooManyFields
            | Self::BodyTooLarge => H3_EXCESSIVE_LOAD,
            Self::MissingSettings => H3_MISSING_SETTINGS,
            Self::InvalidSetting { .. } => H3_SETTINGS_ERROR,
            Self::ClosedCriticalStream => H3_CLOSED_CRITICAL_STREAM,
            Self::StreamCreation { .. } => H3_STREAM_CREATION_ERROR,
            Self::PushNotAllowed => H3_ID_ERROR,
            Self::Incomplete => H3_REQUEST_INCOMPLETE,
            Self::Qpack(_) => QPACK_DECOMPRESSION_FAILED,
            Self::Message(_) => H3_MESSAGE_ERROR,
        }
    }

    /// True when RFC 9114 makes this a connection error (close the whole connection with
    /// [`code`](Self::code)); false when resetting the one stream is enough.
    pub fn is_connection_error(&self) -> bool {
        !matches!(
            self,
            Self::HeadersTooLarge
                | Self::TooManyFields
                | Self::BodyTooLarge
                | Self::Incomplete
                | Self::Message(_)
        )
    }
}

impl From<QpackError> for H3Error {
    fn from(e: QpackError) -> Self {
        Self::Qpack(e)
    }
}

impl From<MessageError> for H3Error {
    fn from(e: MessageError) -> Self {
        Self::Message(e)
    }
}

impl From<HuffmanError> for QpackError {
    fn from(e: HuffmanError) -> Self {
        Self::Huffman(e)
    }
}

impl fmt::Display for HuffmanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EosInString => "EOS symbol inside a Huffman string",
            Self::PaddingTooLong => "Huffman padding longer than 7 bits",
            Self::BadPadding => "Huffman padding is not a prefix of EOS",
        })
    }
}

impl fmt::Display for QpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("field section ends inside a field line"),
            Self::IntegerOverflow => f.write_str("prefix integer overflows 62 bits"),
            Self::DynamicTableUsed => f.write_str("non-zero Required Insert Count"),
            Self::DynamicReference => f.write_str("reference to the dynamic table"),
            Self::BadStaticIndex(i) => write!(f, "static table index {i} out of range"),
            Self::Huffman(e) => e.fmt(f),
        }
    }
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UppercaseName => "upper-case field name",
            Self::InvalidName => "invalid field name",
            Self::InvalidValue => "invalid field value",
            Self::PseudoAfterRegular => "pseudo-header after a regular field",
            Self::UnknownPseudo => "unknown pseudo-header",
            Self::DuplicatePseudo => "duplicate pseudo-header",
            Self::MissingPseudo => "missing pseudo-header",
            Self::PathOnConnect => ":path on a CONNECT request",
            Self::ProtocolWithoutConnect => ":protocol outside extended CONNECT",
            Self::InvalidPath => "invalid :path",
            Self::InvalidStatus => "invalid :status",
            Self::ConnectionSpecific => "connection-specific field",
            Self::InvalidTe => "te other than trailers",
            Self::ContradictingContentLength => "contradicting content-length fields",
            Self::InvalidContentLength => "invalid content-length",
            Self::ContentLengthMismatch => "body length differs from content-length",
            Self::PseudoInTrailers => "pseudo-header in trailers",
        })
    }
}

impl fmt::Display for H3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameUnexpected { frame_type } => {
                write!(f, "unexpected frame type {frame_type:#x}")
            }
            Self::MalformedFrame { frame_type } => {
                write!(f, "malformed frame of type {frame_type:#x}")
            }
            Self::FrameTooLarge { frame_type, len } => {
                write!(f, "frame of type {frame_type:#x} too large ({len} bytes)")
            }
            Self::TruncatedFrame => f.write_str("stream ended inside a frame"),
            Self::MissingSettings => f.write_str("control stream did not start with SETTINGS"),
            Self::InvalidSetting { id } => write!(f, "invalid setting {id:#x}"),
            Self::ClosedCriticalStream => f.write_str("critical stream closed"),
            Self::StreamCreation { stream_type } => {
                write!(f, "peer may not open a uni stream of type {stream_type:#x}")
            }
            Self::PushNotAllowed => f.write_str("server push without MAX_PUSH_ID"),
            Self::HeadersTooLarge => f.write_str("header section too large"),
            Self::TooManyFields => f.write_str("too many header fields"),
            Self::BodyTooLarge => f.write_str("body too large"),
            Self::Incomplete => f.write_str("stream ended before the header section"),
            Self::Qpack(e) => write!(f, "QPACK: {e}"),
            Self::Message(e) => write!(f, "malformed message: {e}"),
        }
    }
}

impl std::error::Error for H3Error {}
impl std::error::Error for QpackError {}
impl std::error::Error for HuffmanError {}
impl std::error::Error for MessageError {}
