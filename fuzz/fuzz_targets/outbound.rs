//! What an upstream proxy says to the outbounds' handshakes (SOCKS5 CONNECT and UDP
//! ASSOCIATE, HTTP CONNECT), and the datagrams of a SOCKS5 association: no panics; fed in
//! pieces, a handshake ends as fed whole; an unwrapped datagram re-wraps to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::proto::outbound::{socks5_udp_unwrap, socks5_udp_wrap, Handshake, Step};

/// Runs a handshake over `answer` cut at `cut`, sending when asked as the caller does:
/// the step it ends with (a leftover followed by the bytes not fed yet, as the caller would
/// read them next) and the bound address, or "more" if it wants more bytes.
fn run(mut h: Handshake, answer: &[u8], cut: usize) -> String {
    let _ = h.start();
    let cut = cut.min(answer.len());
    for (piece, after) in [(&answer[..cut], &answer[cut..]), (&answer[cut..], &[][..])] {
        let mut input = piece;
        loop {
            match h.received(input) {
                Step::Send(_) => input = &[],
                Step::Recv => break,
                Step::Done { mut leftover } => {
                    leftover.extend_from_slice(after);
                    return format!("done {leftover:?} {:?}", h.bound());
                }
                step => return format!("{step:?}"),
            }
        }
    }
    "more".into()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(selector >> 2);
    let auth = (selector & 1 == 1).then(|| ("user".to_string(), "pass".to_string()));
    let make = |which: u8| match which {
        0 => Handshake::socks5("example.com", 443, auth.clone()).expect("a short name"),
        1 => Handshake::socks5_udp(auth.clone()),
        _ => Handshake::http("example.com", 443, auth.clone()),
    };
    let which = (selector >> 1) & 1 | u8::from(selector & 0x80 != 0) << 1;
    let pieces = run(make(which), rest, cut);
    // Cut anywhere, an answer ends as it does whole.
    let whole = run(make(which), rest, rest.len());
    assert_eq!(pieces, whole, "cut at {cut}");

    if let Some((from, payload)) = socks5_udp_unwrap(rest) {
        let again = socks5_udp_wrap(&from.ip().to_string(), from.port(), payload)
            .expect("an IP address always fits");
        assert_eq!(socks5_udp_unwrap(&again), Some((from, payload)));
    }
});
