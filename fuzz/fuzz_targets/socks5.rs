//! The SOCKS5 front end (bytes from local applications) and SOCKS5 UDP datagrams: no
//! panics; fed in pieces, a handshake ends as fed whole; a parsed datagram re-encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::client::socks5::{encode_udp, parse_udp, Socks5Server, Step};

/// Feeds `data` in pieces cut at `cuts`, answering replies with `feed(&[])` as the caller
/// does. Returns the request or error the handshake ended with, and its leftover.
fn handshake(auth: bool, data: &[u8], cuts: &[usize]) -> (String, Vec<u8>) {
    let creds = auth.then(|| ("user".to_string(), "pass".to_string()));
    let mut s = Socks5Server::new(creds);
    let mut pieces = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.clamp(at, data.len());
        pieces.push(&data[at..c]);
        at = c;
    }
    pieces.push(&data[at..]);
    let mut fed = 0;
    for piece in pieces {
        fed += piece.len();
        let mut input = piece;
        loop {
            match s.feed(input) {
                Ok(Step::NeedMore) => break,
                Ok(Step::Reply(_)) => input = &[],
                Ok(step @ Step::Request { .. }) => {
                    // The payload: what was buffered after the request, then what was not fed.
                    let mut rest = s.leftover().to_vec();
                    rest.extend_from_slice(&data[fed..]);
                    return (format!("{step:?}"), rest);
                }
                Err(e) => return (format!("{:?}", e.reason()), Vec::new()),
            }
        }
    }
    ("incomplete".into(), Vec::new())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let auth = flags & 1 == 1;
    let whole = handshake(auth, rest, &[]);
    let cuts: Vec<usize> = rest.iter().take(4).map(|&b| usize::from(b)).collect();
    let cut = handshake(auth, rest, &cuts);
    if whole.0 != "incomplete" && cut.0 != "incomplete" {
        assert_eq!(whole, cut, "the same bytes in pieces ended differently");
    }

    if let Ok((dst, payload)) = parse_udp(rest) {
        let mut out = Vec::new();
        encode_udp(&dst, payload, &mut out).expect("a parsed datagram encodes");
        let (dst2, payload2) = parse_udp(&out).expect("an encoded datagram parses");
        assert_eq!(dst2, dst);
        assert_eq!(payload2, payload);
    }
});
