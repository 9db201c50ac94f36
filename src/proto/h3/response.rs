//! Responses: encoding them on the server ([`response`], [`not_found_response`]) and reading
//! them on the client ([`ResponseReader`]).

use super::error::MessageError;
use super::frames::{data_frame, headers_frame};
use super::message::{self, Reader, Section, SectionKind};
use super::qpack::HuffmanPolicy;
use super::reader::{Message, MessageReader};

/// Body of Go's `http.NotFound`, the default masquerade.
pub const NOT_FOUND_BODY: &[u8] = b"404 page not found\n";

/// A response's header section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// `:status`.
    pub status: u16,
    /// Regular fields in order; names lower case, values lossily UTF-8.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// First value of the field `name`, compared case-insensitively (Go's `Header.Get`).
    pub fn header(&self, name: &str) -> Option<&str> {
        message::header_value(&self.headers, name)
    }
}

/// Encodes a complete response as quic-go's response writer would: a HEADERS frame with
/// `:status`, `headers` (names lower-cased) and a `content-length` if `headers` has none,
/// every literal Huffman-coded; then one DATA frame if `body` is not empty. The caller
/// sends FIN after it.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = response_head(status, headers, Some(body.len() as u64));
    if !body.is_empty() {
        out.extend(data_frame(body));
    }
    out
}

/// The HEADERS frame of [`response`]; `content-length: length` is added if `headers` has
/// none and `length` is known (a streamed body of unknown length goes without, as Go's).
pub fn response_head(status: u16, headers: &[(&str, &str)], length: Option<u64>) -> Vec<u8> {
    let status = status.to_string();
    let names: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    let content_length = length.map(|n| n.to_string());
    let mut fields: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 2);
    fields.push((":status", &status));
    fields.extend(
        names
            .iter()
            .zip(headers)
            .map(|(n, (_, v))| (n.as_str(), *v)),
    );
    if let Some(len) = &content_length {
        if !names.iter().any(|n| n == "content-length") {
            fields.push(("content-length", len));
        }
    }
    headers_frame(&fields, HuffmanPolicy::Always)
}

/// Go's `http.NotFound` through quic-go, the default masquerade: 404, `content-type:
/// text/plain; charset=utf-8`, `x-content-type-options: nosniff`, `date` if given (see
/// [`http_date`]; quic-go always adds it), `content-length: 19` and the body
/// `404 page not found\n`.
pub fn not_found_response(date: Option<&str>) -> Vec<u8> {
    let mut headers = vec![
        ("content-type", "text/plain; charset=utf-8"),
        ("x-content-type-options", "nosniff"),
    ];
    if let Some(date) = date {
        headers.push(("date", date));
    }
    response(404, &headers, NOT_FOUND_BODY)
}

/// Formats seconds since the Unix epoch as an HTTP date (Go's `http.TimeFormat`,
/// "Mon, 02 Jan 2006 15:04:05 GMT"). The caller reads the clock.
pub fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Civil date from day count (H. Hinnant's algorithm, days since 1970-01-01).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Reads one response stream on the client. Interim 1xx responses are skipped; the body is
/// kept (up to [`Limits::max_body`](super::Limits::max_body)) for
/// [`body`](MessageReader::body).
pub type ResponseReader = MessageReader<Response>;

impl Message for Response {
    const READER: Reader = Reader::Client;
    const SECTION: SectionKind = SectionKind::Response;
    const KEEPS_BODY: bool = true;

    fn from_section(section: Section) -> Result<Option<Self>, MessageError> {
        let status = parse_status(&section.status)?;
        let response = Response {
            status,
            headers: section.headers,
        };
        Ok((status >= 200).then_some(response))
    }
}

/// RFC 9110 §15: a status code is three digits, 100 to 599 in use; quic-go only needs an
/// integer, but anything else is no HTTP server.
fn parse_status(s: &str) -> Result<u16, MessageError> {
    if s.is_empty() {
        return Err(MessageError::MissingPseudo);
    }
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MessageError::InvalidStatus);
    }
    s.parse::<u16>()
        .ok()
        .filter(|&v| v >= 100)
        .ok_or(MessageError::InvalidStatus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::h3::frames;
    use crate::proto::h3::qpack::{decode_field_section, DecodeLimits};
    use crate::proto::h3::{H3Error, Limits};

    fn read_all(bytes: &[u8]) -> (Response, Vec<u8>) {
        let mut reader = ResponseReader::new();
        let resp = reader.push(bytes).unwrap().unwrap();
        reader.finish().unwrap();
        (resp, reader.body().to_vec())
    }

    #[test]
    fn not_found_matches_go() {
        let bytes = not_found_response(Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        let (resp, body) = read_all(&bytes);
        assert_eq!(resp.status, 404);
        assert_eq!(
            resp.header("Content-Type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(resp.header("date"), Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(resp.header("content-length"), Some("19"));
        assert_eq!(body, NOT_FOUND_BODY);
        // quic-go's encoder: `:status 404` is static entry 27 (0xdb), nosniff entry 61 (0xfd),
        // content-type a name reference to 44 (4-bit prefix: 0x5f, then 44 - 15).
        let (hdr, used) = frames::FrameHeader::parse(&bytes).unwrap().unwrap();
        assert_eq!(hdr.ty, frames::HEADERS);
        let section = &bytes[used..used + hdr.len as usize];
        assert_eq!(section[..5], [0x00, 0x00, 0xdb, 0x5f, 44 - 15]);
        assert!(section.contains(&0xfd));
        let limits = DecodeLimits {
            max_fields: 10,
            max_field_section_size: 1000,
        };
        assert_eq!(decode_field_section(section, &limits).unwrap().len(), 5);
        assert_eq!(bytes[used + section.len()..], data_frame(NOT_FOUND_BODY));
    }

    #[test]
    fn generic_response() {
        let (resp, body) = read_all(&response(
            200,
            &[("X-Custom", "v"), ("content-length", "2")],
            b"hi",
        ));
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.headers,
            [
                ("x-custom".into(), "v".into()),
                ("content-length".into(), "2".into())
            ]
        );
        assert_eq!(body, b"hi");
        let (resp, body) = read_all(&response(204, &[], b""));
        assert_eq!(resp.status, 204);
        assert_eq!(resp.header("content-length"), Some("0"));
        assert!(body.is_empty());
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut bytes = headers_frame(
            &[(":status", "103"), ("link", "</a>")],
            HuffmanPolicy::Never,
        );
        bytes.extend(response(200, &[], b"ok"));
        let (resp, body) = read_all(&bytes);
        assert_eq!((resp.status, body.as_slice()), (200, &b"ok"[..]));
    }

    #[test]
    fn response_errors() {
        let push = |bytes: &[u8]| ResponseReader::new().push(bytes);
        let status = |s: &str| push(&headers_frame(&[(":status", s)], HuffmanPolicy::Never));
        let err = |e: MessageError| Err(H3Error::Message(e));
        assert_eq!(status("2000"), err(MessageError::InvalidStatus));
        assert_eq!(status("+20"), err(MessageError::InvalidStatus));
        assert_eq!(status("099"), err(MessageError::InvalidStatus));
        assert_eq!(status(""), err(MessageError::MissingPseudo));
        assert_eq!(
            push(&headers_frame(&[("a", "b")], HuffmanPolicy::Never)),
            err(MessageError::MissingPseudo)
        );
        assert_eq!(
            push(&headers_frame(
                &[(":status", "200"), (":path", "/")],
                HuffmanPolicy::Never
            )),
            err(MessageError::UnknownPseudo)
        );
        assert_eq!(
            push(&data_frame(b"x")),
            Err(H3Error::FrameUnexpected { frame_type: 0 })
        );
        let mut short = ResponseReader::new();
        short
            .push(&headers_frame(
                &[(":status", "200"), ("content-length", "5")],
                HuffmanPolicy::Never,
            ))
            .unwrap();
        assert_eq!(
            short.finish(),
            Err(MessageError::ContentLengthMismatch.into())
        );
        let mut big = ResponseReader::with_limits(Limits {
            max_body: 1,
            ..Limits::default()
        });
        assert_eq!(
            big.push(&response(200, &[], b"xx")),
            Err(H3Error::BodyTooLarge)
        );
        assert_eq!(ResponseReader::new().finish(), Err(H3Error::Incomplete));
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(http_date(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
        // Never panics, even far out.
        let _ = http_date(u64::MAX);
    }
}
