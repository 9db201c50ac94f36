//! The HTTP proxy keeps a client's connection open across plain (non-CONNECT) requests:
//! a hundred keep-alive requests on one TCP connection, each relayed on a stream of its own,
//! all answered in full and in order, pipelined ones too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{fail, pair};
use crate::support::{
    pattern_byte, read_head, sha256_hex, test_name, ClientOpts, ProxyOpts, QuelayServer,
};

/// Requests sent one after another on the one connection.
const REQUESTS: usize = 100;

/// Reads one response from `r`: its status, its `Connection` field and its body (by
/// Content-Length).
fn response(r: &mut impl BufRead) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let head = read_head(r)
        .map_err(|e| format!("response head: {e}"))?
        .ok_or("the proxy closed the connection")?;
    let status = head
        .status()
        .ok_or(format!("status line {:?}", head.start))?;
    let len = head
        .content_length()
        .ok_or(format!("no Content-Length in {head:?}"))?;
    let mut body = Vec::new();
    r.take(len)
        .read_to_end(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    if body.len() as u64 != len {
        return Err(format!("body ended after {} of {len} bytes", body.len()));
    }
    Ok((status, head.header("connection").map(str::to_owned), body))
}

fn get(target: SocketAddr, len: usize) -> String {
    format!(
        "GET http://{target}/bytes/{len} HTTP/1.1\r\nHost: {target}\r\n\
         Connection: keep-alive\r\n\r\n"
    )
}

fn post(target: SocketAddr, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST http://{target}/sha256 HTTP/1.1\r\nHost: {target}\r\n\
         Connection: keep-alive\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// The `i`th request: mostly GETs of varied sizes (one large enough to fill the relay's
/// buffers), every tenth a POST with a body. Returns the request and the body it must get.
fn request(target: SocketAddr, i: usize) -> (Vec<u8>, Vec<u8>) {
    if i % 10 == 9 {
        let body: Vec<u8> = (0..i * 97).map(|k| (k % 251) as u8).collect();
        return (post(target, &body), sha256_hex(&body).into_bytes());
    }
    let len = match i {
        50 => 3 << 20,
        _ => (i * 1237) % 20_000,
    };
    let want = (0..len as u64).map(pattern_byte).collect();
    (get(target, len).into_bytes(), want)
}

fn check(
    i: usize,
    got: Result<(u16, Option<String>, Vec<u8>), String>,
    want: &[u8],
) -> Result<(), String> {
    let (status, connection, body) = got.map_err(|e| format!("request {i}: {e}"))?;
    if status != 200 {
        return Err(format!("request {i}: status {status}"));
    }
    if connection.as_deref() != Some("keep-alive") {
        return Err(format!("request {i}: Connection: {connection:?}"));
    }
    if body != want {
        return Err(format!(
            "request {i}: {} bytes, not the {} expected (or not the same)",
            body.len(),
            want.len()
        ));
    }
    Ok(())
}

fn keep_alive_requests(proxy: SocketAddr, target: SocketAddr) -> Result<(), String> {
    let s = TcpStream::connect(proxy).map_err(|e| format!("connect to the proxy: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::with_capacity(64 * 1024, s);
    for i in 0..REQUESTS {
        let (req, want) = request(target, i);
        w.write_all(&req)
            .map_err(|e| format!("request {i}: write: {e}"))?;
        check(i, response(&mut r), &want)?;
    }
    // Pipelined: three requests in one write, answered in order.
    let mut batch = Vec::new();
    let mut wants = Vec::new();
    for i in [REQUESTS, REQUESTS + 9, REQUESTS + 1] {
        let (req, want) = request(target, i);
        batch.extend_from_slice(&req);
        wants.push((i, want));
    }
    w.write_all(&batch)
        .map_err(|e| format!("pipelined requests: write: {e}"))?;
    for (i, want) in wants {
        check(i, response(&mut r), &want)?;
    }
    Ok(())
}

#[test]
fn http_proxy_serves_keep_alive_requests_on_one_connection_quelay() {
    let target = crate::support::HttpTarget::start();
    let (mut server, mut client) = pair::<QuelayServer>(
        None,
        ClientOpts {
            socks5: None,
            http: Some(ProxyOpts::default()),
            ..ClientOpts::default()
        },
    );
    let t = Instant::now();
    if let Err(e) = keep_alive_requests(client.http_addr(), target.addr()) {
        fail(&mut server, &mut client, e);
    }
    eprintln!(
        "{}: {} requests on one connection in {:.2?}; the target saw {} requests on {} \
         connections",
        test_name(),
        REQUESTS + 3,
        t.elapsed(),
        target.requests(),
        target.connections()
    );
    assert_eq!(target.requests(), REQUESTS + 3);
}
