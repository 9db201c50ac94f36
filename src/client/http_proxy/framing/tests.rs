use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
    pairs
        .iter()
        .map(|(name, value)| httparse::Header {
            name,
            value: value.as_bytes(),
        })
        .collect()
}

fn get() -> Exchange {
    Exchange::new(Body::Length(0), false)
}

/// Feeds `input` to the response side of `x` in pieces of `step` bytes; returns what the
/// app gets.
fn respond(x: &mut Exchange, input: &[u8], step: usize) -> String {
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        x.response_bytes(piece, &mut out);
    }
    String::from_utf8(out).expect("text")
}

const CHUNKED: &[u8] =
    b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Sum: 1\r\n\r\n";

#[test]
fn a_content_length_body_is_counted_across_reads() {
    let mut body = Body::Length(10);
    assert_eq!(body.take(b"0123"), Ok(4));
    assert!(!body.is_done());
    assert_eq!(body.take(b"456789GET"), Ok(6));
    assert!(body.is_done());
    assert_eq!(body.take(b"more"), Ok(0));
}

#[test]
fn a_chunked_body_ends_after_its_trailers_however_it_is_split() {
    let mut input = CHUNKED.to_vec();
    input.extend_from_slice(b"GET next");
    for cut in 0..=input.len() {
        let mut body = Body::Chunked(Chunked::default());
        let first = body.take(&input[..cut]).expect("valid");
        assert_eq!(first, cut.min(CHUNKED.len()), "cut at {cut}");
        let second = body.take(&input[first..]).expect("valid");
        assert_eq!(first + second, CHUNKED.len(), "cut at {cut}");
        assert!(body.is_done());
    }
    // A byte at a time, with bare LFs and no trailers.
    let lf = b"3\nabc\n0\n\n";
    let mut body = Body::Chunked(Chunked::default());
    for b in lf {
        assert_eq!(body.take(std::slice::from_ref(b)), Ok(1));
    }
    assert!(body.is_done());
}

#[test]
fn a_broken_chunked_body_is_an_error() {
    let err = |input: &[u8]| Body::Chunked(Chunked::default()).take(input).unwrap_err();
    assert_eq!(err(b"\r\n"), FramingError("no chunk size"));
    assert_eq!(err(b"x\r\n"), FramingError("no chunk size"));
    assert_eq!(err(b"4x\r\n"), FramingError("bad chunk size"));
    assert_eq!(err(b"4\rx"), FramingError("bad chunk size line"));
    assert_eq!(
        err(b"3\r\nabcd\r\n"),
        FramingError("chunk longer than its size")
    );
    assert_eq!(
        err(b"10000000000000000\r\n"),
        FramingError("chunk size too large")
    );
    let mut long = b"1;".to_vec();
    long.extend(std::iter::repeat_n(b'e', MAX_CHUNK_LINE));
    assert_eq!(
        err(&long),
        FramingError("chunk-size line or trailers too long")
    );
    let mut trailers = b"0\r\n".to_vec();
    trailers.extend(std::iter::repeat_n(b't', MAX_TRAILERS + 1));
    assert_eq!(
        err(&trailers),
        FramingError("chunk-size line or trailers too long")
    );
    // The largest size that fits is a size.
    let mut body = Body::Chunked(Chunked::default());
    assert_eq!(body.take(b"ffffffffffffffff\r\nab"), Ok(20));
}

#[test]
fn a_request_body_is_framed_only_when_its_end_is_certain() {
    let body = |pairs: &[(&str, &str)]| request_body(&fields(pairs));
    assert_eq!(body(&[]), Some(Body::Length(0)));
    assert_eq!(body(&[("Content-Length", "12")]), Some(Body::Length(12)));
    assert_eq!(
        body(&[("content-length", "5, 5"), ("Content-Length", "5")]),
        Some(Body::Length(5))
    );
    assert_eq!(
        body(&[("Transfer-Encoding", "gzip, Chunked")]),
        Some(Body::Chunked(Chunked::default()))
    );
    assert_eq!(body(&[("Content-Length", "5, 6")]), None);
    assert_eq!(body(&[("Content-Length", "+5")]), None);
    assert_eq!(body(&[("Content-Length", "")]), None);
    assert_eq!(body(&[("Content-Length", "99999999999999999999")]), None);
    assert_eq!(body(&[("Transfer-Encoding", "gzip")]), None);
    assert_eq!(
        body(&[("Transfer-Encoding", "chunked"), ("Content-Length", "3")]),
        None
    );
}

#[test]
fn a_response_head_gets_our_connection_and_its_body_is_counted() {
    let mut x = get();
    let got = respond(
        &mut x,
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
          Content-Length: 5\r\nServer: t\r\n\r\nhelloEXTRA",
        1000,
    );
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: t\r\nConnection: keep-alive\r\n\r\nhello"
    );
    assert!(x.response_done());
    assert!(x.keep_alive());
}

#[test]
fn a_response_split_at_every_byte_gives_the_same_bytes() {
    let mut input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    input.extend_from_slice(CHUNKED);
    let whole = respond(&mut get(), &input, input.len());
    assert!(whole.starts_with(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n4\r\n"
    ));
    assert!(whole.ends_with("0\r\nX-Sum: 1\r\n\r\n"));
    for step in 1..8 {
        let mut x = get();
        assert_eq!(respond(&mut x, &input, step), whole, "step {step}");
        assert!(x.keep_alive());
    }
}

#[test]
fn a_response_without_length_runs_until_the_origin_closes_and_closes_the_connection() {
    let mut x = get();
    let got = respond(&mut x, b"HTTP/1.0 200 OK\r\nServer: t\r\n\r\nsome", 7);
    assert_eq!(
        got,
        "HTTP/1.0 200 OK\r\nServer: t\r\nConnection: close\r\n\r\nsome"
    );
    assert!(!x.response_done());
    let mut out = Vec::new();
    x.response_bytes(b" more", &mut out);
    assert_eq!(out, b" more");
    x.response_ended(&mut out);
    assert!(x.response_done());
    assert!(!x.keep_alive());
}

#[test]
fn responses_without_a_body() {
    // HEAD: the length describes what a GET would get.
    let mut x = Exchange::new(Body::Length(0), true);
    let got = respond(&mut x, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 5);
    assert!(got.ends_with("Content-Length: 100\r\nConnection: keep-alive\r\n\r\n"));
    assert!(x.keep_alive());
    for head in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ] {
        let mut x = get();
        respond(&mut x, head, 3);
        assert!(x.keep_alive(), "{head:?}");
    }
}

#[test]
fn interim_responses_pass_and_the_final_one_is_framed() {
    let mut x = Exchange::new(Body::Length(3), false);
    assert_eq!(x.request_bytes(b"abcGET /"), 3);
    assert!(x.request_done());
    let got = respond(
        &mut x,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
          HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        4,
    );
    assert_eq!(
        got,
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
         HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    );
    assert!(x.keep_alive());
}

#[test]
fn what_cannot_be_framed_is_relayed_as_it_is_and_closes() {
    for input in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd"[..],
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01 not http",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw",
    ] {
        let mut x = get();
        let mut out = Vec::new();
        x.response_bytes(input, &mut out);
        x.response_bytes(b"+", &mut out);
        let mut want = input.to_vec();
        want.push(b'+');
        if input.ends_with(b"raw") {
            // Framed head, unframed body.
            assert!(out.ends_with(b"Connection: close\r\n\r\nraw+"), "{out:?}");
        } else if input.starts_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked") {
            assert!(out.ends_with(b"\r\n\r\nzz\r\n+"), "{out:?}");
        } else {
            assert_eq!(out, want);
        }
        x.response_ended(&mut out);
        assert!(!x.keep_alive(), "{input:?}");
    }
    // A head longer than the limit.
    let mut x = get();
    let mut out = Vec::new();
    let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'y', MAX_RESPONSE_HEAD));
    x.response_bytes(&big, &mut out);
    assert_eq!(out, big);
    x.response_ended(&mut out);
    assert!(!x.keep_alive());
}

#[test]
fn a_response_cut_short_or_before_the_request_ends_closes_the_connection() {
    let mut x = get();
    let mut out = Vec::new();
    x.response_bytes(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        &mut out,
    );
    x.response_ended(&mut out);
    assert!(x.response_done());
    assert!(!x.keep_alive());
    // The origin answered before the whole request body came.
    let mut x = Exchange::new(Body::Length(100), false);
    assert_eq!(x.request_bytes(b"partial"), 7);
    respond(
        &mut x,
        b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n",
        64,
    );
    assert!(x.response_done());
    assert!(!x.keep_alive());
    // A broken request body: every later byte goes to the stream, and the connection closes.
    let mut x = Exchange::new(Body::Chunked(Chunked::default()), false);
    assert_eq!(x.request_bytes(b"zz\r\nGET / HTTP/1.1"), 18);
    assert_eq!(x.request_bytes(b"more"), 4);
    respond(&mut x, b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n", 64);
    assert!(!x.keep_alive());
}

#[test]
fn random_responses_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x6b65_6570);
    let valid: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ];
    for round in 0..3000 {
        let mut input = valid[round % valid.len()].to_vec();
        for _ in 0..rng.gen_range(0..6) {
            let i = rng.gen_range(0..input.len());
            input[i] = rng.gen();
        }
        let mut x = Exchange::new(Body::Chunked(Chunked::default()), round % 2 == 0);
        let _ = x.request_bytes(&input);
        let mut out = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rng.gen_range(1..=rest.len()));
            rest = tail;
            x.response_bytes(piece, &mut out);
        }
        x.response_ended(&mut out);
        assert!(x.response_done());
        assert!(out.len() <= input.len() + 64, "{round}");
    }
}
