//! Masquerade responses are streamed with a bound: 128 requests for a 16 MiB file whose
//! clients read nothing cost the server a chunk each, not the file each; read later, they
//! arrive whole; and a file larger than any one buffer is served too. The proxy masquerade
//! passes HTTP/3 request bodies upstream and streams what the upstream answers.
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
    request(conn, "GET", path, b"").await
}

/// Sends `method path` with `body` (in two DATA frames) on a new stream and returns its
/// receive half, unread.
async fn request(
    conn: &quinn::Connection,
    method: &str,
    path: &str,
    body: &[u8],
) -> quinn::RecvStream {
    let length = body.len().to_string();
    let mut fields = vec![
        (":method", method),
        (":scheme", "https"),
        (":authority", support::SNI),
        (":path", path),
    ];
    if !body.is_empty() {
        fields.push(("content-length", &length));
    }
    let (mut send, recv) = conn.open_bi().await.expect("open a request stream");
    send.write_all(&h3::headers_frame(&fields, HuffmanPolicy::Always))
        .await
        .expect("write the request");
    let (a, b) = body.split_at(body.len() / 2);
    for part in [a, b].into_iter().filter(|p| !p.is_empty()) {
        send.write_all(&h3::data_frame(part))
            .await
            .expect("write the body");
    }
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

/// An upstream on 127.0.0.1 that answers each request with its method, its body's length
/// and the body, then `extra` bytes of pattern, in one HTTP/1.1 response, then closes.
fn upstream(extra: usize) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream address");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let method = line.split(' ').next().unwrap_or("").to_owned();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let mut answer = format!("{method} {length} ").into_bytes();
                answer.extend_from_slice(&body);
                answer.extend(pattern(extra));
                let mut conn = reader.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = conn.write_all(&answer);
            });
        }
    });
    addr
}

#[test]
fn the_proxy_masquerade_relays_request_bodies_and_streams_answers() {
    const EXTRA: usize = 3 << 20;
    let up = upstream(EXTRA);
    let (mut server, addr, _dir) = spawn_server(&format!(
        "masquerade: {{type: proxy, proxy: {{url: \"http://{up}/\"}}}}\n"
    ));
    let rt = runtime();
    let ep = rt.block_on(async { endpoint() });
    let form = b"name=quelay&note=a body over HTTP/3".to_vec();
    let (post, get) = rt.block_on(async {
        let conn = ep
            .connect(addr, support::SNI)
            .expect("connect starts")
            .await
            .expect("QUIC handshake");
        let post = read_response(request(&conn, "POST", "/form", &form).await, 4 << 20).await;
        let get = read_response(get(&conn, "/page").await, 4 << 20).await;
        conn.close(0u32.into(), b"done");
        (post, get)
    });
    rt.block_on(async { ep.wait_idle().await });
    server.assert_running();
    let mut want = format!("POST {} ", form.len()).into_bytes();
    want.extend_from_slice(&form);
    want.extend(pattern(EXTRA));
    assert_eq!(post.0, 200);
    assert!(
        post.1 == want,
        "the upstream saw the body, and its 3 MiB answer came back whole"
    );
    let mut want = b"GET 0 ".to_vec();
    want.extend(pattern(EXTRA));
    assert_eq!(get.0, 200);
    assert!(get.1 == want, "a GET goes without a body");
}
