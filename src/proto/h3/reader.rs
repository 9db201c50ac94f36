//! One reader for the messages of HTTP/3 request streams: the request a server reads and the
//! response a client reads.
//!
//! RFC 9114 §4.1: a message is HEADERS, then any DATA frames, then optional trailers
//! (HEADERS); unknown frames may appear anywhere and are skipped. The reader frames the
//! stream ([`StreamFramer`]), decodes each header section within its [`Limits`], applies the
//! checks every section needs, and counts the body against `content-length` and
//! [`Limits::max_body`]. What differs between a request and a response is the [`Message`]
//! trait: which pseudo-headers the section may carry, how it becomes the message, and
//! whether the body is kept.

use std::marker::PhantomData;

use super::error::{H3Error, MessageError};
use super::frames;
use super::message::{self, Limits, Reader, Section, SectionKind, StreamFrame, StreamFramer};

/// A message a [`MessageReader`] reads: [`super::Request`] or [`super::Response`]. Sealed in
/// effect: the types it names live in a module private to `h3`.
pub trait Message: Sized {
    /// Who reads it; decides how PUSH_PROMISE is refused.
    const READER: Reader;
    /// The pseudo-headers its header section may carry.
    const SECTION: SectionKind;
    /// Whether the body is kept for [`MessageReader::body`], or only counted.
    const KEEPS_BODY: bool;

    /// The message from a checked header section, or `None` for an interim (1xx) response,
    /// which the reader skips.
    fn from_section(section: Section) -> Result<Option<Self>, MessageError>;
}

/// Where a message stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the (final) HEADERS.
    Headers,
    /// Message returned; reading the body.
    Body,
    /// Trailers seen; only unknown frames may follow.
    Done,
}

/// Reads one message stream, sans-IO: feed it the stream's bytes as they arrive, then call
/// [`finish`](Self::finish) at FIN. The message is returned as soon as its HEADERS frame is
/// complete; the body is counted, and kept if the message kind keeps it.
#[derive(Clone, Debug)]
pub struct MessageReader<M> {
    /// Frame splitter.
    framer: StreamFramer,
    /// Limits for the header section and the body.
    limits: Limits,
    /// Where the stream is; moves forward only.
    phase: Phase,
    /// `content-length` of the message, once known.
    content_length: Option<u64>,
    /// Body bytes seen so far.
    body_len: u64,
    /// The body, if `M` keeps it.
    body: Vec<u8>,
    /// Whether DATA is kept (responses always; requests when asked for).
    keep_body: bool,
    /// The first error, returned again on every later call.
    failed: Option<H3Error>,
    /// What is read.
    kind: PhantomData<fn() -> M>,
}

impl<M: Message> Default for MessageReader<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Message> MessageReader<M> {
    /// A reader with [`Limits::default`].
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A reader with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            framer: StreamFramer::new(M::READER, limits.max_headers_frame),
            limits,
            phase: Phase::Headers,
            content_length: None,
            body_len: 0,
            body: Vec::new(),
            keep_body: M::KEEPS_BODY,
            failed: None,
            kind: PhantomData,
        }
    }

    /// Keeps the body (up to [`Limits::max_body`]) for [`Self::body`], as a response's is.
    pub fn keeping_body(mut self) -> Self {
        self.keep_body = true;
        self
    }

    /// Feeds the next bytes of the stream. Returns the message once, when its HEADERS frame
    /// completes; `Ok(None)` before and after. Errors stick: see [`H3Error::code`] and
    /// [`H3Error::is_connection_error`] for how to end the stream or connection.
    pub fn push(&mut self, data: &[u8]) -> Result<Option<M>, H3Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut complete = None;
        let Self {
            framer,
            limits,
            phase,
            content_length,
            body_len,
            body,
            keep_body,
            ..
        } = self;
        let result = framer.push(data, &mut |frame| match (frame, *phase) {
            (StreamFrame::Headers(section), Phase::Headers) => {
                let fields = limits.decode(section)?;
                let section = message::check_section(fields, M::SECTION)?;
                let length = section.content_length;
                // RFC 9114 §4.1: "zero or more interim responses (1xx) ... followed by
                // exactly one final response".
                if let Some(m) = M::from_section(section)? {
                    *content_length = length;
                    complete = Some(m);
                    *phase = Phase::Body;
                }
                Ok(())
            }
            (StreamFrame::Headers(section), Phase::Body) => {
                let fields = limits.decode(section)?;
                message::check_section(fields, SectionKind::Trailers)?;
                *phase = Phase::Done;
                Ok(())
            }
            (StreamFrame::Data(chunk), Phase::Body) => {
                *body_len = body_len.saturating_add(chunk.len() as u64);
                if content_length.is_some_and(|cl| *body_len > cl) {
                    return Err(MessageError::ContentLengthMismatch.into());
                }
                if *body_len > limits.max_body {
                    return Err(H3Error::BodyTooLarge);
                }
                if *keep_body {
                    body.extend_from_slice(chunk);
                }
                Ok(())
            }
            // §4.1: "Receipt of an invalid sequence of frames MUST be treated as a connection
            // error of type H3_FRAME_UNEXPECTED." quic-go: "expected first frame to be a
            // HEADERS frame".
            (StreamFrame::Data(_), Phase::Headers | Phase::Done) => Err(H3Error::FrameUnexpected {
                frame_type: frames::DATA,
            }),
            (StreamFrame::Headers(_), Phase::Done) => Err(H3Error::FrameUnexpected {
                frame_type: frames::HEADERS,
            }),
        });
        match result {
            Ok(()) => Ok(complete),
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// The peer finished the stream (FIN). Errors if the stream ended inside a frame, before
    /// the message's HEADERS, or with a body shorter than its `content-length`.
    pub fn finish(&mut self) -> Result<(), H3Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let result = self.framer.finish().and_then(|()| {
            if self.phase == Phase::Headers {
                Err(H3Error::Incomplete)
            } else if self.content_length.is_some_and(|cl| cl != self.body_len) {
                Err(MessageError::ContentLengthMismatch.into())
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            self.failed = Some(e);
        }
        result
    }

    /// Body bytes read so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// The body received so far: empty for a message that does not keep it (a request not
    /// read [`Self::keeping_body`]).
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}
