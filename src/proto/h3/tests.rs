//! End-to-end tests over whole streams: exact bytes, truncation, splitting and garbage.

use rand::{Rng, RngCore, SeedableRng};

use super::frames::{self, FrameHeader};
use super::*;

const PADDING: &str = "Zq3xR8pLmN2vB7kT";

/// The seven fields of a minimal Hysteria auth request, in quic-go's order.
fn minimal_fields<'a>(auth: &'a str, cc_rx: &'a str) -> [(&'a str, &'a str); 7] {
    [
        (":authority", "hysteria"),
        (":method", "POST"),
        (":path", "/auth"),
        (":scheme", "https"),
        ("hysteria-auth", auth),
        ("hysteria-cc-rx", cc_rx),
        ("hysteria-padding", PADDING),
    ]
}

fn read_request(bytes: &[u8]) -> Request {
    let mut reader = RequestReader::new();
    let req = reader.push(bytes).unwrap().expect("complete request");
    reader.finish().unwrap();
    req
}

#[test]
fn minimal_client_auth_request_exact_bytes() {
    let frame = headers_frame(&minimal_fields("secret", "0"), HuffmanPolicy::Never);
    let mut section = vec![0x00, 0x00];
    section.extend_from_slice(&[0x50, 0x08]);
    section.extend_from_slice(b"hysteria");
    section.push(0xd4);
    section.extend_from_slice(&[0x51, 0x05]);
    section.extend_from_slice(b"/auth");
    section.push(0xd7);
    // 13-byte name: 3-bit prefix full (0x27), then 13 - 7 = 6.
    section.extend_from_slice(&[0x27, 0x06]);
    section.extend_from_slice(b"hysteria-auth");
    section.push(0x06);
    section.extend_from_slice(b"secret");
    section.extend_from_slice(&[0x27, 0x07]);
    section.extend_from_slice(b"hysteria-cc-rx");
    section.push(0x01);
    section.extend_from_slice(b"0");
    section.extend_from_slice(&[0x27, 0x09]);
    section.extend_from_slice(b"hysteria-padding");
    section.push(PADDING.len() as u8);
    section.extend_from_slice(PADDING.as_bytes());
    let mut expect = vec![0x01, 0x40 | (section.len() >> 8) as u8, section.len() as u8];
    if section.len() < 64 {
        expect = vec![0x01, section.len() as u8];
    }
    expect.extend_from_slice(&section);
    assert_eq!(frame, expect);

    let req = read_request(&frame);
    assert_eq!(
        auth_request(&req),
        Some(AuthRequest {
            auth: "secret".into(),
            cc_rx: 0
        })
    );
}

#[test]
fn quic_go_style_request_all_huffman() {
    let bytes = auth_request_headers("user:pass", 1_250_000, PADDING);
    let (hdr, used) = FrameHeader::parse(&bytes).unwrap().unwrap();
    assert_eq!(hdr.ty, frames::HEADERS);
    let section = &bytes[used..];
    assert_eq!(section.len() as u64, hdr.len);
    // Prefix, then `:authority` as a static name reference (0x50) with a Huffman value
    // (H=1, length 6) whose bytes were worked out by hand from RFC 7541 Appendix B.
    assert_eq!(
        section[..10],
        [0x00, 0x00, 0x50, 0x86, 0x9f, 0xd2, 0x12, 0x5b, 0x0c, 0x3f]
    );
    // `:method POST`, then `:path` as a name reference with a Huffman value.
    assert_eq!(section[10], 0xd4);
    assert_eq!(section[11], 0x51);
    assert_eq!(section[12] & 0x80, 0x80);
    // Every literal name has H=1 (0010 1xxx).
    let req = read_request(&bytes);
    assert_eq!(
        auth_request(&req),
        Some(AuthRequest {
            auth: "user:pass".into(),
            cc_rx: 1_250_000
        })
    );
    assert_eq!(req.header("hysteria-padding"), Some(PADDING));
}

#[test]
fn every_truncation_is_incomplete_and_every_split_agrees() {
    let mut stream = auth_request_headers("pw", 42, PADDING);
    stream.extend(data_frame(b""));
    let whole = read_request(&stream);
    for cut in 0..stream.len() {
        let mut reader = RequestReader::new();
        let first = reader.push(&stream[..cut]).unwrap();
        let rest = reader.push(&stream[cut..]).unwrap();
        // The request comes out exactly once, whichever push completes the HEADERS frame.
        match (first, rest) {
            (Some(req), None) | (None, Some(req)) => assert_eq!(req, whole),
            other => panic!("cut {cut}: {other:?}"),
        }
        reader.finish().unwrap();
        // FIN at the cut: before the end of HEADERS the request never appeared.
        let mut reader = RequestReader::new();
        let got = reader.push(&stream[..cut]).unwrap();
        let fin = reader.finish();
        if got.is_none() {
            assert!(fin.is_err(), "cut {cut}");
        }
    }
}

#[test]
fn random_splits_agree() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x4833);
    let mut stream = vec![0x21, 0x02, 0xaa, 0xbb];
    // No content-length here (the Go client sends 0), since this request has a body.
    stream.extend(headers_frame(
        &minimal_fields("pw", "42"),
        HuffmanPolicy::Always,
    ));
    stream.extend_from_slice(&[0x21, 0x00]);
    stream.extend(data_frame(b"ignored body"));
    let whole = read_request(&stream);
    for _ in 0..200 {
        let mut reader = RequestReader::new();
        let mut got = None;
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let n = rng.gen_range(1..=rest.len().min(64));
            if let Some(req) = reader.push(&rest[..n]).unwrap() {
                assert!(got.replace(req).is_none());
            }
            rest = &rest[n..];
        }
        reader.finish().unwrap();
        assert_eq!(got.as_ref(), Some(&whole));
        assert_eq!(reader.body_len(), 12);
    }
}

#[test]
fn masquerade_cases_are_not_auth() {
    let with = |authority: &str, method: &str, path: &str| {
        let frame = headers_frame(
            &[
                (":authority", authority),
                (":method", method),
                (":path", path),
                (":scheme", "https"),
                ("hysteria-auth", "pw"),
            ],
            HuffmanPolicy::Always,
        );
        auth_request(&read_request(&frame))
    };
    assert!(with("hysteria", "POST", "/auth").is_some());
    assert_eq!(with("hysteria:443", "POST", "/auth"), None);
    assert_eq!(with("example.com", "POST", "/auth"), None);
    assert_eq!(with("hysteria", "GET", "/auth"), None);
    assert_eq!(with("hysteria", "PUT", "/auth"), None);
    assert_eq!(with("hysteria", "POST", "/"), None);
    assert_eq!(with("hysteria", "POST", "/auth2"), None);
}

#[test]
fn refusals() {
    let headers_with_section = |section: &[u8]| {
        let mut out = Vec::new();
        frames::encode_frame(frames::HEADERS, section, &mut out);
        RequestReader::new().push(&out)
    };
    // Non-zero Required Insert Count.
    assert_eq!(
        headers_with_section(&[0x01, 0x00, 0xd4]),
        Err(H3Error::Qpack(QpackError::DynamicTableUsed))
    );
    // Dynamic and post-base references.
    assert_eq!(
        headers_with_section(&[0x00, 0x00, 0x80]),
        Err(H3Error::Qpack(QpackError::DynamicReference))
    );
    // Empty HEADERS payload.
    assert_eq!(
        headers_with_section(&[]),
        Err(H3Error::Qpack(QpackError::Truncated))
    );
    // Reserved HTTP/2 frame types, before or after HEADERS.
    for ty in [0x02u8, 0x06, 0x08, 0x09] {
        let e = Err(H3Error::FrameUnexpected {
            frame_type: ty.into(),
        });
        assert_eq!(RequestReader::new().push(&[ty, 0x00]), e);
        let mut stream = auth_request_headers("pw", 0, PADDING);
        stream.extend_from_slice(&[ty, 0x00]);
        assert_eq!(RequestReader::new().push(&stream), e);
    }
    // DATA first.
    assert_eq!(
        RequestReader::new().push(&data_frame(b"x")),
        Err(H3Error::FrameUnexpected { frame_type: 0 })
    );
    // Oversized HEADERS is refused from its header alone.
    assert_eq!(
        RequestReader::new().push(&[0x01, 0x80, 0x01, 0x00, 0x00]),
        Err(H3Error::HeadersTooLarge)
    );
    assert!(H3Error::HeadersTooLarge.code() == error::H3_EXCESSIVE_LOAD);
    assert!(!H3Error::Message(MessageError::InvalidPath).is_connection_error());
    assert!(H3Error::FrameUnexpected { frame_type: 2 }.is_connection_error());
}

#[test]
fn garbage_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9a7ba9e);
    let valid = auth_request_headers("pw", 1, PADDING);
    for round in 0..3000 {
        let mut buf = if round % 2 == 0 {
            let mut b = vec![0u8; rng.gen_range(0..300)];
            rng.fill_bytes(&mut b);
            b
        } else {
            // A valid request with a few bytes changed.
            let mut b = valid.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            b
        };
        if round % 3 == 0 {
            buf.insert(0, 0x01);
        }
        let mut reader = RequestReader::new();
        let _ = reader.push(&buf);
        let _ = reader.finish();
        let mut reader = ResponseReader::new();
        let _ = reader.push(&buf);
        let _ = reader.finish();
        let mut control = ControlStreamReader::new(Role::Server);
        let _ = control.push(&buf);
        let _ = Settings::decode(&buf);
        let _ = qpack::decode_field_section(
            &buf,
            &qpack::DecodeLimits {
                max_fields: 64,
                max_field_section_size: 4096,
            },
        );
    }
    // Plain garbage is an error, not "incomplete": a HEADERS frame whose section is junk.
    assert!(RequestReader::new()
        .push(&[0x01, 0x04, 0xff, 0xff, 0xff, 0xff])
        .is_err());
}

#[test]
fn full_exchange() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Client -> server.
    let request = auth_request_headers("pw", 10_000_000, &auth_padding(&mut rng));
    let req = read_request(&request);
    let auth = auth_request(&req).unwrap();
    assert_eq!((auth.auth.as_str(), auth.cc_rx), ("pw", 10_000_000));
    // Server -> client, success.
    let reply = auth_ok_response(true, CcRx::Bps(5_000_000), &auth_padding(&mut rng));
    let mut reader = ResponseReader::new();
    let resp = reader.push(&reply).unwrap().unwrap();
    reader.finish().unwrap();
    assert_eq!(
        parse_auth_response(&resp),
        Ok(AuthOk {
            udp: true,
            cc_rx: CcRx::Bps(5_000_000)
        })
    );
    // Server -> client, failure: the masquerade 404.
    let mut reader = ResponseReader::new();
    let resp = reader
        .push(&not_found_response(Some(&http_date(0))))
        .unwrap()
        .unwrap();
    reader.finish().unwrap();
    assert_eq!(parse_auth_response(&resp), Err(AuthFailed(404)));
    assert_eq!(reader.body(), NOT_FOUND_BODY);
}

/// The 233 response pinned byte for byte where clients look: HEADERS frame, QPACK prefix
/// `00 00` (no dynamic table), then `:status` as a literal with static name reference 24
/// (`0101 1111`, 24 − 15 = 9) and the Huffman-coded value "233": '2' = 00010, '3' =
/// 011001 (RFC 7541 Appendix B), so 00010 011001 011001 + EOS padding 1111111 = 13 2c ff,
/// length 3 with the H bit = 0x83.
#[test]
fn auth_ok_response_status_line_bytes() {
    let reply = auth_ok_response(false, CcRx::Auto, "abc");
    let (hdr, n) = FrameHeader::parse(&reply).unwrap().unwrap();
    assert_eq!(hdr.ty, 0x01, "a HEADERS frame");
    assert_eq!(
        hdr.len as usize,
        reply.len() - n,
        "one frame, nothing after it"
    );
    assert_eq!(
        &reply[n..n + 8],
        &[0x00, 0x00, 0x5f, 0x09, 0x83, 0x13, 0x2c, 0xff]
    );
    let mut reader = ResponseReader::new();
    let resp = reader.push(&reply).unwrap().unwrap();
    assert_eq!(resp.status, 233);
    assert_eq!(resp.header("hysteria-udp"), Some("false"));
    assert_eq!(resp.header("hysteria-cc-rx"), Some("auto"));
    assert_eq!(resp.header("hysteria-padding"), Some("abc"));
}
