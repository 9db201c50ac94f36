//! The server side of a request stream: [`RequestReader`] turns stream bytes into a
//! [`Request`].

use super::error::{H3Error, MessageError};
use super::frames;
use super::message::{self, Limits, Reader, SectionKind, StreamFrame, StreamFramer};

/// A request's header section. Pseudo-headers that were absent are empty strings: quic-go
/// makes no difference between absent and empty either.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `:method`.
    pub method: String,
    /// `:scheme` (absent on plain CONNECT).
    pub scheme: String,
    /// `:authority`, Go's `r.Host`; always non-empty.
    pub authority: String,
    /// `:path` as sent (absent on plain CONNECT).
    pub path: String,
    /// `:protocol`, only on extended CONNECT (RFC 9220).
    pub protocol: String,
    /// Regular fields in order; names lower case, values lossily UTF-8.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First value of the field `name`, compared case-insensitively (Go's `Header.Get`).
    pub fn header(&self, name: &str) -> Option<&str> {
        message::header_value(&self.headers, name)
    }

    /// The path part of `:path`, percent-decoded: Go's `r.URL.Path`. `None` for plain
    /// CONNECT and for targets Go's `url.ParseRequestURI` rejects.
    pub fn url_path(&self) -> Option<String> {
        if self.method == "CONNECT" && self.protocol.is_empty() {
            return None;
        }
        url_path(&self.path)
    }
}

/// Go's `url.ParseRequestURI(target).Path`, for the forms a request can carry: `*`,
/// origin-form (`/p?q`) and absolute-form (`scheme://host/p?q`). The query is dropped and
/// the path percent-decoded; an invalid escape, a control character or any other form is
/// `None`. (No fragment handling: `ParseRequestURI` keeps `#` in the path.)
pub fn url_path(target: &str) -> Option<String> {
    if target.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    if target == "*" {
        return Some("*".to_owned());
    }
    let without_query = target.split('?').next().unwrap_or("");
    let path = if without_query.starts_with('/') {
        without_query
    } else {
        // Absolute-form: a scheme (ALPHA *(ALPHA / DIGIT / "+" / "-" / ".")) and "//".
        let (scheme, rest) = without_query.split_once(':')?;
        let mut chars = scheme.bytes();
        if !chars.next()?.is_ascii_alphabetic()
            || !chars.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return None;
        }
        if let Some(after_slashes) = rest.strip_prefix("//") {
            after_slashes.find('/').map_or("", |i| &after_slashes[i..])
        } else if rest.starts_with('/') {
            rest
        } else {
            // Opaque URIs (`mailto:x`) are not request targets.
            return None;
        }
    };
    percent_decode(path)
}

fn percent_decode(s: &str) -> Option<String> {
    let hex = |b: Option<&u8>| char::from(*b?).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let value = hex(bytes.get(i + 1))? * 16 + hex(bytes.get(i + 2))?;
            // Two hex digits are at most 0xff.
            out.push(value as u8);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Where a request stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first HEADERS frame.
    Headers,
    /// Request returned; reading (and discarding) the body.
    Body,
    /// Trailers seen; only unknown frames may follow.
    Done,
}

/// Reads one request stream on the server, sans-IO: feed it the stream's bytes as they
/// arrive, then call [`finish`](Self::finish) at FIN.
///
/// RFC 9114 §4.1: a request is HEADERS, then any DATA frames, then optional trailers
/// (HEADERS); unknown frames may appear anywhere and are skipped. The request is returned as
/// soon as its HEADERS frame is complete; the body is counted and discarded.
#[derive(Clone, Debug)]
pub struct RequestReader {
    /// Frame splitter.
    framer: StreamFramer,
    /// Limits for the header section and the body.
    limits: Limits,
    /// Where the stream is; moves forward only.
    phase: Phase,
    /// `content-length` of the request, once known.
    content_length: Option<u64>,
    /// Body bytes seen so far.
    body_len: u64,
    /// The first error, returned again on every later call.
    failed: Option<H3Error>,
}

impl Default for RequestReader {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestReader {
    /// A reader with [`Limits::default`].
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A reader with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            framer: StreamFramer::new(Reader::Server, limits.max_headers_frame),
            limits,
            phase: Phase::Headers,
            content_length: None,
            body_len: 0,
            failed: None,
        }
    }

    /// Feeds the next bytes of the stream. Returns the request once, when its HEADERS frame
    /// completes; `Ok(None)` before and after. Errors stick: see [`H3Error::code`] and
    /// [`H3Error::is_connection_error`] for how to end the stream or connection.
    pub fn push(&mut self, data: &[u8]) -> Result<Option<Request>, H3Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut request = None;
        let Self {
            framer,
            limits,
            phase,
            content_length,
            body_len,
            ..
        } = self;
        let result = framer.push(data, &mut |frame| match (frame, *phase) {
            (StreamFrame::Headers(section), Phase::Headers) => {
                let fields = limits.decode(section)?;
                let section = message::check_section(fields, SectionKind::Request)?;
                *content_length = section.content_length;
                request = Some(request_from_section(section)?);
                *phase = Phase::Body;
                Ok(())
            }
            (StreamFrame::Headers(section), Phase::Body) => {
                let fields = limits.decode(section)?;
                message::check_section(fields, SectionKind::Trailers)?;
                *phase = Phase::Done;
                Ok(())
            }
            // §4.1: "Receipt of an invalid sequence of frames MUST be treated as a connection
            // error of type H3_FRAME_UNEXPECTED." quic-go: "expected first frame to be a
            // HEADERS frame".
            (StreamFrame::Data(_), Phase::Headers) => Err(H3Error::FrameUnexpected {
                frame_type: frames::DATA,
            }),
            (StreamFrame::Data(chunk), Phase::Body) => {
                *body_len = body_len.saturating_add(chunk.len() as u64);
                if content_length.is_some_and(|cl| *body_len > cl) {
                    return Err(MessageError::ContentLengthMismatch.into());
                }
                if *body_len > limits.max_body {
                    return Err(H3Error::BodyTooLarge);
                }
                Ok(())
            }
            (StreamFrame::Headers(_), Phase::Done) => Err(H3Error::FrameUnexpected {
                frame_type: frames::HEADERS,
            }),
            (StreamFrame::Data(_), Phase::Done) => Err(H3Error::FrameUnexpected {
                frame_type: frames::DATA,
            }),
        });
        match result {
            Ok(()) => Ok(request),
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// The peer finished the stream (FIN). Errors if the stream ended inside a frame, before
    /// the request's HEADERS, or with a body shorter than its `content-length`.
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

    /// Body bytes read and discarded so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }
}

/// quic-go's `requestFromHeaders` checks on the pseudo-headers.
fn request_from_section(s: message::Section) -> Result<Request, MessageError> {
    let is_connect = s.method == "CONNECT";
    let extended_connect = is_connect && !s.protocol.is_empty();
    if extended_connect {
        if s.scheme.is_empty() || s.path.is_empty() || s.authority.is_empty() {
            return Err(MessageError::MissingPseudo);
        }
    } else if is_connect {
        if !s.path.is_empty() {
            return Err(MessageError::PathOnConnect);
        }
        if s.authority.is_empty() {
            return Err(MessageError::MissingPseudo);
        }
    } else if s.path.is_empty() || s.authority.is_empty() || s.method.is_empty() {
        return Err(MessageError::MissingPseudo);
    }
    if !extended_connect && !s.protocol.is_empty() {
        return Err(MessageError::ProtocolWithoutConnect);
    }
    if (!is_connect || extended_connect) && url_path(&s.path).is_none() {
        return Err(MessageError::InvalidPath);
    }
    Ok(Request {
        method: s.method,
        scheme: s.scheme,
        authority: s.authority,
        path: s.path,
        protocol: s.protocol,
        headers: s.headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::h3::qpack::{encode_field_section, HuffmanPolicy};

    fn headers_frame(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut section = Vec::new();
        encode_field_section(fields, HuffmanPolicy::Always, &mut section);
        let mut out = Vec::new();
        frames::encode_frame(frames::HEADERS, &section, &mut out);
        out
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "example.com"),
        (":path", "/index.html?x=1"),
    ];

    #[test]
    fn url_paths_like_go() {
        assert_eq!(url_path("/auth").as_deref(), Some("/auth"));
        assert_eq!(url_path("/auth?x=1").as_deref(), Some("/auth"));
        assert_eq!(url_path("/%61uth").as_deref(), Some("/auth"));
        assert_eq!(url_path("/a%2Fb").as_deref(), Some("/a/b"));
        assert_eq!(url_path("/auth#frag").as_deref(), Some("/auth#frag"));
        assert_eq!(url_path("//x/y").as_deref(), Some("//x/y"));
        assert_eq!(url_path("*").as_deref(), Some("*"));
        assert_eq!(
            url_path("https://hysteria/auth?q").as_deref(),
            Some("/auth")
        );
        assert_eq!(url_path("https://hysteria").as_deref(), Some(""));
        assert_eq!(url_path("https:/auth").as_deref(), Some("/auth"));
        assert_eq!(url_path("/%zz"), None);
        assert_eq!(url_path("/%4"), None);
        assert_eq!(url_path("/%+1"), None);
        assert_eq!(url_path("auth"), None);
        assert_eq!(url_path("1http://x/"), None);
        assert_eq!(url_path("mailto:x"), None);
        assert_eq!(url_path("/a\nb"), None);
        assert_eq!(url_path(""), None);
    }

    #[test]
    fn get_with_body_and_trailers() {
        let mut stream = headers_frame(&GET);
        frames::encode_frame(frames::DATA, b"hello", &mut stream);
        frames::encode_frame(0x21, b"grease", &mut stream);
        frames::encode_frame(frames::DATA, b" world", &mut stream);
        stream.extend(headers_frame(&[("x-trailer", "1")]));
        frames::encode_frame(0x40, b"", &mut stream);
        let mut reader = RequestReader::new();
        let req = reader.push(&stream).unwrap().unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.scheme, "https");
        assert_eq!(req.authority, "example.com");
        assert_eq!(req.path, "/index.html?x=1");
        assert_eq!(req.url_path().as_deref(), Some("/index.html"));
        assert!(req.headers.is_empty());
        assert_eq!(reader.body_len(), 11);
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn frame_sequence_errors() {
        let mut data_first = Vec::new();
        frames::encode_frame(frames::DATA, b"x", &mut data_first);
        data_first.extend(headers_frame(&GET));
        let unexpected = |ty| Err(H3Error::FrameUnexpected { frame_type: ty });
        assert_eq!(RequestReader::new().push(&data_first), unexpected(0));
        // Unknown frames before HEADERS are fine.
        let mut grease_first = vec![0x21, 0x00];
        grease_first.extend(headers_frame(&GET));
        assert!(RequestReader::new().push(&grease_first).unwrap().is_some());
        // Anything but unknown frames after trailers.
        let mut after_trailers = headers_frame(&GET);
        after_trailers.extend(headers_frame(&[("x", "1")]));
        frames::encode_frame(frames::DATA, b"", &mut after_trailers);
        assert_eq!(RequestReader::new().push(&after_trailers), unexpected(0));
        // Pseudo-headers in trailers.
        let mut pseudo_trailers = headers_frame(&GET);
        pseudo_trailers.extend(headers_frame(&[(":path", "/")]));
        assert_eq!(
            RequestReader::new().push(&pseudo_trailers),
            Err(MessageError::PseudoInTrailers.into())
        );
        // Errors stick, and FIN before HEADERS is incomplete.
        let mut reader = RequestReader::new();
        assert!(reader.push(&data_first).is_err());
        assert!(reader.push(&headers_frame(&GET)).is_err());
        assert_eq!(RequestReader::new().finish(), Err(H3Error::Incomplete));
    }

    #[test]
    fn pseudo_header_rules() {
        let push = |fields: &[(&str, &str)]| RequestReader::new().push(&headers_frame(fields));
        let err = |e: MessageError| Err(H3Error::Message(e));
        assert_eq!(
            push(&[(":method", "GET"), (":path", "/")]),
            err(MessageError::MissingPseudo)
        );
        assert_eq!(
            push(&[(":authority", "a"), (":path", "/")]),
            err(MessageError::MissingPseudo)
        );
        assert_eq!(
            push(&[(":method", "GET"), (":authority", "a")]),
            err(MessageError::MissingPseudo)
        );
        assert_eq!(
            push(&[(":method", "GET"), (":authority", "a"), (":path", "x")]),
            err(MessageError::InvalidPath)
        );
        assert_eq!(
            push(&[
                (":method", "GET"),
                (":authority", "a"),
                (":path", "/"),
                (":protocol", "ws")
            ]),
            err(MessageError::ProtocolWithoutConnect)
        );
        // CONNECT: authority only.
        let connect = push(&[(":method", "CONNECT"), (":authority", "a:443")])
            .unwrap()
            .unwrap();
        assert_eq!(connect.url_path(), None);
        assert_eq!(
            push(&[(":method", "CONNECT"), (":authority", "a"), (":path", "/")]),
            err(MessageError::PathOnConnect)
        );
        assert_eq!(
            push(&[(":method", "CONNECT")]),
            err(MessageError::MissingPseudo)
        );
        // Extended CONNECT (we advertise ENABLE_CONNECT_PROTOCOL, as Go does).
        let wt = [
            (":method", "CONNECT"),
            (":protocol", "webtransport"),
            (":scheme", "https"),
            (":authority", "a"),
            (":path", "/wt"),
        ];
        assert_eq!(push(&wt).unwrap().unwrap().protocol, "webtransport");
        assert_eq!(push(&wt[..4]), err(MessageError::MissingPseudo));
    }

    #[test]
    fn body_limits() {
        let limits = Limits {
            max_body: 4,
            ..Limits::default()
        };
        let mut stream = headers_frame(&GET);
        frames::encode_frame(frames::DATA, b"12345", &mut stream);
        let mut reader = RequestReader::with_limits(limits);
        assert_eq!(reader.push(&stream), Err(H3Error::BodyTooLarge));

        let mut with_cl = GET.to_vec();
        with_cl.push(("content-length", "3"));
        let mut stream = headers_frame(&with_cl);
        frames::encode_frame(frames::DATA, b"12", &mut stream);
        let mut reader = RequestReader::new();
        assert!(reader.push(&stream).unwrap().is_some());
        assert_eq!(
            reader.finish(),
            Err(MessageError::ContentLengthMismatch.into())
        );
        let mut reader = RequestReader::new();
        reader.push(&stream).unwrap();
        assert_eq!(
            reader.push(&[0x00, 0x02, b'3', b'4']),
            Err(MessageError::ContentLengthMismatch.into())
        );
    }
}
