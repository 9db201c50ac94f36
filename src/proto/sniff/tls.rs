//! The SNI of a TLS ClientHello, on a TCP stream (the first TLS record) or in QUIC CRYPTO data.
//!
//! The official server parses the ClientHello with uTLS (`UnmarshalClientHello`, the Go
//! standard library's parser): the whole message must be well formed, and each extension that
//! parser knows is checked as strictly as it checks it. A hello it refuses gives no name, so
//! this parser refuses exactly the same ones.

use super::TcpSniff;

/// ContentType handshake (22) and application_data (23): the official sniffer takes either.
const RECORD_TYPES: [u8; 2] = [0x16, 0x17];
/// A record header: type, legacy version, u16 length.
const RECORD_HEADER_LEN: usize = 5;

// Extension types the Go parser checks (RFC 8446 §4.2 and the RFCs named beside each).
const SERVER_NAME: u16 = 0; // RFC 6066 §3
const STATUS_REQUEST: u16 = 5; // RFC 6066 §8
const SUPPORTED_GROUPS: u16 = 10; // RFC 8446 §4.2.7
const EC_POINT_FORMATS: u16 = 11; // RFC 8422 §5.1.2
const SIGNATURE_ALGORITHMS: u16 = 13; // RFC 8446 §4.2.3
const ALPN: u16 = 16; // RFC 7301 §3.1
const SCT: u16 = 18; // RFC 6962 §3.3.1
const EXTENDED_MASTER_SECRET: u16 = 23; // RFC 7627
const SESSION_TICKET: u16 = 35; // RFC 5077 §3.2
const PRE_SHARED_KEY: u16 = 41; // RFC 8446 §4.2.11
const EARLY_DATA: u16 = 42; // RFC 8446 §4.2.10
const SUPPORTED_VERSIONS: u16 = 43; // RFC 8446 §4.2.1
const COOKIE: u16 = 44; // RFC 8446 §4.2.2
const PSK_KEY_EXCHANGE_MODES: u16 = 45; // RFC 8446 §4.2.9
const SIGNATURE_ALGORITHMS_CERT: u16 = 50; // RFC 8446 §4.2.3
const KEY_SHARE: u16 = 51; // RFC 8446 §4.2.8
const QUIC_TRANSPORT_PARAMETERS: u16 = 57; // RFC 9001 §8.2
const ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d; // draft-ietf-tls-esni
const RENEGOTIATION_INFO: u16 = 0xff01; // RFC 5746 §3.2

/// Whether three bytes start a TLS record as the official sniffer recognises one: handshake
/// or application data, major version 3, minor version at most 9.
pub(super) fn is_record_start(head: &[u8]) -> bool {
    matches!(head, [t, 0x03, minor, ..] if RECORD_TYPES.contains(t) && *minor <= 0x09)
}

/// The answer for a stream that starts with a TLS record header: wait for the whole first
/// record, then read its payload as a ClientHello. A hello spread over several records does
/// not parse (its extensions run past the first record), as in the official server.
pub(super) fn sniff_record(buf: &[u8]) -> TcpSniff {
    let Some(&[hi, lo]) = buf.get(3..RECORD_HEADER_LEN) else {
        return TcpSniff::NeedMore;
    };
    let end = RECORD_HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
    match buf.get(RECORD_HEADER_LEN..end) {
        None => TcpSniff::NeedMore,
        Some(payload) => client_hello_sni(payload).map_or(TcpSniff::Nothing, TcpSniff::Found),
    }
}

/// The host_name a ClientHello handshake message (with its 4-byte header) asks for, if the
/// message parses and names one in UTF-8.
///
/// Like the Go parser, the handshake type and length bytes are skipped unread, and the
/// extensions must end exactly where `msg` ends.
pub(super) fn client_hello_sni(msg: &[u8]) -> Option<String> {
    let mut s = Reader(msg);
    s.take(4)?; // msg_type, uint24 length
    s.take(2)?; // legacy_version
    s.take(32)?; // random
    s.u8_prefixed()?; // legacy_session_id
    let suites = s.u16_prefixed()?;
    if suites.len() % 2 != 0 {
        return None;
    }
    s.u8_prefixed()?; // legacy_compression_methods
    if s.is_empty() {
        return None; // no extensions, so no server_name
    }
    let mut exts = s.u16_prefixed()?;
    if !s.is_empty() {
        return None;
    }

    let mut seen = Vec::new();
    let mut name: Option<&[u8]> = None;
    while !exts.is_empty() {
        let ty = exts.u16()?;
        let mut data = exts.u16_prefixed()?;
        seen.push(ty);
        match ty {
            SERVER_NAME => {
                let mut list = data.u16_prefixed().filter(|l| !l.is_empty())?;
                while !list.is_empty() {
                    let name_type = list.u8()?;
                    let host = list.u16_prefixed().filter(|h| !h.is_empty())?.0;
                    if name_type != 0 {
                        continue;
                    }
                    // One host_name only, and without a trailing dot (RFC 6066 §3).
                    if name.is_some() || host.ends_with(b".") {
                        return None;
                    }
                    name = Some(host);
                }
            }
            STATUS_REQUEST => {
                data.u8()?; // status_type
                data.u16_prefixed()?; // responder_id_list
                data.u16_prefixed()?; // request_extensions
            }
            SUPPORTED_GROUPS | SIGNATURE_ALGORITHMS | SIGNATURE_ALGORITHMS_CERT => {
                data.u16_prefixed()
                    .filter(|l| !l.is_empty() && l.len() % 2 == 0)?;
            }
            EC_POINT_FORMATS => {
                data.u8_prefixed().filter(|l| !l.is_empty())?;
            }
            SESSION_TICKET | QUIC_TRANSPORT_PARAMETERS | ENCRYPTED_CLIENT_HELLO => {
                data.take_rest();
            }
            RENEGOTIATION_INFO | PSK_KEY_EXCHANGE_MODES => {
                data.u8_prefixed()?;
            }
            // Flags: their data must be empty.
            EXTENDED_MASTER_SECRET | SCT | EARLY_DATA => {}
            ALPN => {
                let mut list = data.u16_prefixed().filter(|l| !l.is_empty())?;
                while !list.is_empty() {
                    list.u8_prefixed().filter(|p| !p.is_empty())?;
                }
            }
            SUPPORTED_VERSIONS => {
                data.u8_prefixed()
                    .filter(|l| !l.is_empty() && l.len() % 2 == 0)?;
            }
            COOKIE => {
                data.u16_prefixed().filter(|c| !c.is_empty())?;
            }
            KEY_SHARE => {
                let mut shares = data.u16_prefixed()?;
                while !shares.is_empty() {
                    shares.u16()?; // group
                    shares.u16_prefixed().filter(|k| !k.is_empty())?;
                }
            }
            PRE_SHARED_KEY => {
                // "The pre_shared_key extension MUST be the last extension" (RFC 8446 §4.2.11).
                if !exts.is_empty() {
                    return None;
                }
                let mut identities = data.u16_prefixed().filter(|l| !l.is_empty())?;
                while !identities.is_empty() {
                    let label = identities.u16_prefixed()?;
                    identities.take(4)?; // obfuscated_ticket_age
                    if label.is_empty() {
                        return None;
                    }
                }
                let mut binders = data.u16_prefixed().filter(|l| !l.is_empty())?;
                while !binders.is_empty() {
                    binders.u8_prefixed().filter(|b| !b.is_empty())?;
                }
            }
            _ => continue, // unknown extensions are skipped unread
        }
        if !data.is_empty() {
            return None;
        }
    }
    // "There MUST NOT be more than one extension of the same type" (RFC 8446 §4.2).
    seen.sort_unstable();
    if seen.windows(2).any(|w| matches!(w, [a, b] if a == b)) {
        return None;
    }
    String::from_utf8(name?.to_vec()).ok()
}

/// A cursor over TLS-encoded bytes; every read returns `None` past the end.
#[derive(Clone, Copy)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        match *self.take(2)? {
            [hi, lo] => Some(u16::from_be_bytes([hi, lo])),
            _ => None,
        }
    }

    fn u8_prefixed(&mut self) -> Option<Reader<'a>> {
        let n = self.u8()?;
        self.take(usize::from(n)).map(Reader)
    }

    fn u16_prefixed(&mut self) -> Option<Reader<'a>> {
        let n = self.u16()?;
        self.take(usize::from(n)).map(Reader)
    }
}
