//! Masquerade responses are streamed with a bound: 128 requests for a 16 MiB file whose
//! clients read nothing cost the server a chunk each, not the file each; read later, they
//! arrive whole; and a file larger than any one buffer is served too.
//!
//! The clients are plain quinn connections with 64 KiB stream windows that speak HTTP/3 by
//! hand, and never authenticate: what a prober or a browser would be.

use std::time::Duration;

use quelay::proto::h3::{self, HuffmanPolicy};
use quelay::quic::{self, QuicParams, Verify};

use super::{rss, runtime, spawn_server, support};

const CONNS: usize = 8;
const STREAMS: usize = 16;
const FILE: usize = 16 << 20;
const BIG: usize = 48 << 20;
const WINDOW: u64 = 64 * 1024;

/// Byte `i` of the served files: a pattern that shows a misplaced or repeated chunk.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn endpoint() -> quinn::Endpoint {
    let crypto = quic::client_crypto(Verify::Insecure, &[b"h3"]).expect("client TLS config");
    let params = QuicParams {
        init_stream_window: WINDOW,
        max_stream_window: WINDOW,
        ..QuicParams::default()
    };
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal")).expect("client endpoint");
    ep.set_default_client_config(quic::client_config(crypto, &params));
    ep
}

/// Sends `GET path` on a new stream and returns its receive half, unread.
async fn get(conn: &quinn::Connection, path: &str) -> quinn::RecvStream {
    let fields = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", support::SNI),
        (":path", path),
    ];
    let (mut send, recv) = conn.open_bi().await.expect("open a request stream");
    send.write_all(&h3::headers_frame(&fields, HuffmanPolicy::Always))
        .await
        .expect("write the request");
    send.finish().expect("finish the request");
    recv
}

/// Reads a response to its end: the status and the body.
async fn read_response(mut recv: quinn::RecvStream, limit: usize) -> (u16, Vec<u8>) {
    let bytes = tokio::time::timeout(Duration::from_secs(60), recv.read_to_end(limit + 4096))
        .await
        .expect("the response within 60 s")
        .expect("read the response");
    let mut reader = h3::ResponseReader::with_limits(h3::Limits {
        max_body: limit as u64,
        ..h3::Limits::default()
    });
    let resp = reader
        .push(&bytes)
        .expect("an HTTP/3 response")
        .expect("a whole response");
    reader.finish().expect("a complete body");
    (resp.status, reader.body().to_vec())
}

#[test]
fn masquerade_responses_are_streamed_with_a_bound() {
    let www = support::tempdir();
    std::fs::write(www.path().join("file.bin"), pattern(FILE)).expect("write file.bin");
    std::fs::write(www.path().join("big.bin"), pattern(BIG)).expect("write big.bin");
    let (mut server, addr, _dir) = spawn_server(&format!(
        "masquerade: {{type: file, file: {{dir: \"{}\"}}}}\n\
         limits: {{authTimeout: 60s, maxUnauthenticatedPerSource: 1000}}\n",
        www.path().display()
    ));
    let rt = runtime();
    let ep = rt.block_on(async { endpoint() });
    let rss_before = rss(server.id());
    let (rss_stalled, stalled_whole, big) = rt.block_on(async {
        let mut conns = Vec::new();
        let mut stalled = Vec::new();
        for _ in 0..CONNS {
            let conn = ep
                .connect(addr, support::SNI)
                .expect("connect starts")
                .await
                .expect("QUIC handshake");
            for _ in 0..STREAMS {
                stalled.push(get(&conn, "/file.bin").await);
            }
            conns.push(conn);
        }
        // Every response has filled its stream's window by now, and waits for credit.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_stalled = rss(server.id());
        // Read later, a stalled response arrives whole; one let go of frees its place.
        let mut whole = 0;
        let want = pattern(FILE);
        for (i, mut recv) in stalled.into_iter().enumerate() {
            if i % 32 != 0 {
                let _ = recv.stop(0u32.into());
                continue;
            }
            let (status, body) = read_response(recv, FILE).await;
            assert_eq!(status, 200);
            assert!(
                body == want,
                "a stalled response, read later, differs from the file"
            );
            whole += 1;
        }
        let big = read_response(get(&conns[0], "/big.bin").await, BIG).await;
        for conn in conns {
            conn.close(0u32.into(), b"done");
        }
        (rss_stalled, whole, big)
    });
    rt.block_on(async { ep.wait_idle().await });
    server.assert_running();
    let growth = rss_stalled.saturating_sub(rss_before);
    eprintln!(
        "server RSS {} MiB before, {} MiB with {} stalled 16 MiB responses",
        rss_before >> 20,
        rss_stalled >> 20,
        CONNS * STREAMS
    );
    assert!(
        growth < 64 << 20,
        "server memory grew by {} MiB for {} stalled responses: they are held whole",
        growth >> 20,
        CONNS * STREAMS
    );
    assert_eq!(stalled_whole, CONNS * STREAMS / 32);
    assert_eq!(big.0, 200, "a 48 MiB file is served");
    assert!(
        big.1 == pattern(BIG),
        "the 48 MiB file arrives whole and in order"
    );
}
