//! The server side of a request stream: [`RequestReader`] turns stream bytes into a
//! [`Request`].

use super::error::MessageError;
use super::message::{self, Reader, Section, SectionKind};
use super::reader::{Message, MessageReader};

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

/// Reads one request stream on the server: the request is returned as soon as its HEADERS
/// frame is complete; the body is counted and discarded.
pub type RequestReader = MessageReader<Request>;

impl Message for Request {
    const READER: Reader = Reader::Server;
    const SECTION: SectionKind = SectionKind::Request;
    const KEEPS_BODY: bool = false;

    fn from_section(section: Section) -> Result<Option<Self>, MessageError> {
        request_from_section(section).map(Some)
    }
}

/// quic-go's `requestFromHeaders` checks on the pseudo-headers.
fn request_from_section(s: Section) -> Result<Request, MessageError> {
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
    use crate::proto::h3::frames;
    use crate::proto::h3::qpack::{encode_field_section, HuffmanPolicy};
    use crate::proto::h3::{H3Error, Limits};

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
