//! Feeds arbitrary bytes to the HTTP/3 request-stream reader in arbitrary splits, and checks
//! that the split never changes the outcome: the same request (exactly once), the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::proto::h3::{auth_request, H3Error, Limits, Request, RequestReader};

/// What a whole stream produced: the request, if any, and the first error, if any.
#[derive(Debug, PartialEq)]
struct Outcome {
    request: Option<Request>,
    error: Option<H3Error>,
    finish: Result<(), H3Error>,
    body_len: u64,
}

fn run(stream: &[u8], limits: Limits, chunk_lens: &[u8]) -> Outcome {
    let mut reader = RequestReader::with_limits(limits);
    let mut request = None;
    let mut error = None;
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() && error.is_none() {
        let n = if chunk_lens.is_empty() {
            rest.len()
        } else {
            (1 + usize::from(chunk_lens[i % chunk_lens.len()])).min(rest.len())
        };
        i += 1;
        match reader.push(&rest[..n]) {
            Ok(Some(req)) => {
                assert!(request.is_none(), "request returned twice");
                // The auth check must never panic either.
                let _ = auth_request(&req);
                let _ = req.url_path();
                request = Some(req);
            }
            Ok(None) => {}
            Err(e) => {
                // Errors stick.
                assert_eq!(reader.push(b"\x00"), Err(e));
                error = Some(e);
            }
        }
        rest = &rest[n..];
    }
    let finish = reader.finish();
    Outcome {
        request,
        error,
        finish,
        body_len: reader.body_len(),
    }
}

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the limits and the split; the rest is the stream.
    if data.len() < 2 {
        return;
    }
    let (ctrl, rest) = data.split_at(data.len().min(9));
    let limits = if ctrl[0] & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_headers_frame: 64,
            max_fields: 4,
            max_field_section_size: 200,
            max_body: 16,
        }
    };
    let whole = run(rest, limits, &[]);
    let split = run(rest, limits, &ctrl[1..]);
    if whole.error.is_some() {
        // A whole-stream push that fails after the HEADERS frame reports only the error, while
        // a split push may have returned the request first.
        assert_eq!(whole.error, split.error);
        assert_eq!(whole.finish, split.finish);
    } else {
        assert_eq!(whole, split);
    }
});
