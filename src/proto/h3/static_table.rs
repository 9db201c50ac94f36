//! The QPACK static table (RFC 9204 Appendix A): 99 entries, indexed from 0.

/// `(name, value)` by static index.
pub const STATIC_TABLE: [(&str, &str); 99] = [
    (":authority", ""),
    (":path", "/"),
    ("age", "0"),
    ("content-disposition", ""),
    ("content-length", "0"),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("referer", ""),
    ("set-cookie", ""),
    (":method", "CONNECT"),
    (":method", "DELETE"),
    (":method", "GET"),
    (":method", "HEAD"),
    (":method", "OPTIONS"),
    (":method", "POST"),
    (":method", "PUT"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "103"),
    (":status", "200"),
    (":status", "304"),
    (":status", "404"),
    (":status", "503"),
    ("accept", "*/*"),
    ("accept", "application/dns-message"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-ranges", "bytes"),
    ("access-control-allow-headers", "cache-control"),
    ("access-control-allow-headers", "content-type"),
    ("access-control-allow-origin", "*"),
    ("cache-control", "max-age=0"),
    ("cache-control", "max-age=2592000"),
    ("cache-control", "max-age=604800"),
    ("cache-control", "no-cache"),
    ("cache-control", "no-store"),
    ("cache-control", "public, max-age=31536000"),
    ("content-encoding", "br"),
    ("content-encoding", "gzip"),
    ("content-type", "application/dns-message"),
    ("content-type", "application/javascript"),
    ("content-type", "application/json"),
    ("content-type", "application/x-www-form-urlencoded"),
    ("content-type", "image/gif"),
    ("content-type", "image/jpeg"),
    ("content-type", "image/png"),
    ("content-type", "text/css"),
    ("content-type", "text/html; charset=utf-8"),
    ("content-type", "text/plain"),
    ("content-type", "text/plain;charset=utf-8"),
    ("range", "bytes=0-"),
    ("strict-transport-security", "max-age=31536000"),
    (
        "strict-transport-security",
        "max-age=31536000; includesubdomains",
    ),
    (
        "strict-transport-security",
        "max-age=31536000; includesubdomains; preload",
    ),
    ("vary", "accept-encoding"),
    ("vary", "origin"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    (":status", "100"),
    (":status", "204"),
    (":status", "206"),
    (":status", "302"),
    (":status", "400"),
    (":status", "403"),
    (":status", "421"),
    (":status", "425"),
    (":status", "500"),
    ("accept-language", ""),
    ("access-control-allow-credentials", "FALSE"),
    ("access-control-allow-credentials", "TRUE"),
    ("access-control-allow-headers", "*"),
    ("access-control-allow-methods", "get"),
    ("access-control-allow-methods", "get, post, options"),
    ("access-control-allow-methods", "options"),
    ("access-control-expose-headers", "content-length"),
    ("access-control-request-headers", "content-type"),
    ("access-control-request-method", "get"),
    ("access-control-request-method", "post"),
    ("alt-svc", "clear"),
    ("authorization", ""),
    (
        "content-security-policy",
        "script-src 'none'; object-src 'none'; base-uri 'none'",
    ),
    ("early-data", "1"),
    ("expect-ct", ""),
    ("forwarded", ""),
    ("if-range", ""),
    ("origin", ""),
    ("purpose", "prefetch"),
    ("server", ""),
    ("timing-allow-origin", "*"),
    ("upgrade-insecure-requests", "1"),
    ("user-agent", ""),
    ("x-forwarded-for", ""),
    ("x-frame-options", "deny"),
    ("x-frame-options", "sameorigin"),
];

/// The static entry at `index`, if there is one.
pub fn get(index: u64) -> Option<(&'static str, &'static str)> {
    usize::try_from(index)
        .ok()
        .and_then(|i| STATIC_TABLE.get(i))
        .copied()
}

/// How the static table can represent a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaticMatch {
    /// Name and value both match this entry: an indexed field line.
    Exact(u8),
    /// Only the name matches; this is the first entry with that name (what quic-go uses).
    Name(u8),
    /// The name is not in the table.
    None,
}

/// Looks `name: value` up in the static table.
pub fn find(name: &str, value: &str) -> StaticMatch {
    let mut first_name = None;
    for (i, &(n, v)) in STATIC_TABLE.iter().enumerate() {
        if n == name {
            // The table has 99 entries, so the index always fits in a u8.
            let i = i as u8;
            if v == value {
                return StaticMatch::Exact(i);
            }
            first_name.get_or_insert(i);
        }
    }
    first_name.map_or(StaticMatch::None, StaticMatch::Name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_the_hysteria_exchange_uses() {
        assert_eq!(find(":authority", "hysteria"), StaticMatch::Name(0));
        assert_eq!(find(":path", "/auth"), StaticMatch::Name(1));
        assert_eq!(find("content-length", "0"), StaticMatch::Exact(4));
        assert_eq!(find("date", "x"), StaticMatch::Name(6));
        assert_eq!(find(":method", "POST"), StaticMatch::Exact(20));
        assert_eq!(find(":scheme", "https"), StaticMatch::Exact(23));
        assert_eq!(find(":status", "233"), StaticMatch::Name(24));
        assert_eq!(find(":status", "404"), StaticMatch::Exact(27));
        assert_eq!(find("accept-encoding", "gzip"), StaticMatch::Name(31));
        assert_eq!(
            find("content-type", "text/plain; charset=utf-8"),
            StaticMatch::Name(44)
        );
        assert_eq!(
            find("x-content-type-options", "nosniff"),
            StaticMatch::Exact(61)
        );
        assert_eq!(find("user-agent", "quic-go HTTP/3"), StaticMatch::Name(95));
        assert_eq!(find("hysteria-auth", "x"), StaticMatch::None);
        assert_eq!(get(98), Some(("x-frame-options", "sameorigin")));
        assert_eq!(get(99), None);
        assert_eq!(get(u64::MAX), None);
    }

    #[test]
    fn names_are_lowercase_tokens() {
        for (name, _) in STATIC_TABLE {
            let bare = name.strip_prefix(':').unwrap_or(name);
            assert!(
                bare.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name}"
            );
        }
    }
}
