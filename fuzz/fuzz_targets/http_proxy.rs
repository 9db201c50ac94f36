//! The HTTP proxy front end (request heads from local applications): no panics, no head
//! longer than the limit is accepted, and fed in pieces a head reads as fed whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::client::http_proxy::{Limits, ProxyRequestReader};

const MAX_HEAD: usize = 1024;

/// How reading ended: the request (or error) as text, and the bytes after the head.
#[derive(Debug, PartialEq)]
enum Outcome {
    Incomplete,
    Request(String, Vec<u8>),
    Refused(String),
}

fn read(auth: bool, data: &[u8], piece: usize) -> Outcome {
    let creds = auth.then(|| ("user".to_string(), "pass".to_string()));
    let mut r = ProxyRequestReader::new(Limits { max_head: MAX_HEAD }, creds);
    let mut request = None;
    for chunk in data.chunks(piece.max(1)) {
        match r.feed(chunk) {
            Ok(None) => {}
            Ok(Some(req)) => request = Some(format!("{req:?}")),
            Err(e) => return Outcome::Refused(format!("{e:?} {}", e.status())),
        }
    }
    match request {
        Some(req) => Outcome::Request(req, r.leftover().to_vec()),
        None => Outcome::Incomplete,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let auth = flags & 1 == 1;
    let whole = read(auth, rest, rest.len());
    let pieces = read(auth, rest, usize::from(flags >> 1));
    // An error may be seen early in one split and only at the end of the head in another
    // (the request line is probed as bytes arrive); every other outcome must agree.
    match (&whole, &pieces) {
        (Outcome::Refused(_), Outcome::Incomplete) | (Outcome::Incomplete, Outcome::Refused(_)) => {}
        _ => assert_eq!(whole, pieces, "the same bytes in pieces read differently"),
    }
    if let Outcome::Request(_, leftover) = &whole {
        assert!(rest.len() - leftover.len() <= MAX_HEAD, "a head past the limit was accepted");
    }
});
