//! The client's local front ends: a SOCKS5 handshake and an HTTP proxy request head, each
//! parsed from scratch per accepted connection.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use quelay::client::http_proxy::{Limits, ProxyRequestReader};
use quelay::client::socks5::{Socks5Server, Step};

fn socks5(c: &mut Criterion) {
    let mut g = c.benchmark_group("socks5");
    let greeting = [5u8, 1, 0];
    // CONNECT www.example.com:443 (domain address type).
    let mut connect = vec![5u8, 1, 0, 3, 15];
    connect.extend_from_slice(b"www.example.com");
    connect.extend_from_slice(&443u16.to_be_bytes());
    g.bench_function("connect_no_auth", |b| {
        b.iter(|| {
            let mut s = Socks5Server::new(None);
            assert!(matches!(s.feed(black_box(&greeting)), Ok(Step::Reply(_))));
            s.feed(black_box(&connect)).unwrap()
        })
    });
    // The same with RFC 1929 username/password.
    let greeting_auth = [5u8, 1, 2];
    let mut login = vec![1u8, 5];
    login.extend_from_slice(b"alice");
    login.push(6);
    login.extend_from_slice(b"secret");
    let creds = || Some(("alice".to_owned(), "secret".to_owned()));
    g.bench_function("connect_user_pass", |b| {
        b.iter(|| {
            let mut s = Socks5Server::new(creds());
            assert!(matches!(s.feed(&greeting_auth), Ok(Step::Reply(_))));
            assert!(matches!(s.feed(black_box(&login)), Ok(Step::Reply(_))));
            s.feed(black_box(&connect)).unwrap()
        })
    });
    g.finish();
}

fn http_proxy(c: &mut Criterion) {
    let mut g = c.benchmark_group("http_proxy");
    let connect = b"CONNECT www.example.com:443 HTTP/1.1\r\n\
        Host: www.example.com:443\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
        Proxy-Connection: keep-alive\r\n\r\n";
    g.bench_function("connect", |b| {
        b.iter(|| {
            let mut r = ProxyRequestReader::new(Limits::default(), None);
            r.feed(black_box(connect)).unwrap().unwrap()
        })
    });
    // An absolute-form GET as a browser sends it; the reader rewrites the head for the origin.
    let get = b"GET http://www.example.com/index.html?q=1 HTTP/1.1\r\n\
        Host: www.example.com\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
        Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
        Accept-Language: en-US,en;q=0.5\r\n\
        Accept-Encoding: gzip, deflate\r\n\
        Proxy-Connection: keep-alive\r\n\
        Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\
        Cookie: session=0123456789abcdef; theme=dark\r\n\
        Upgrade-Insecure-Requests: 1\r\n\r\n";
    g.bench_function("forward_get_basic_auth", |b| {
        b.iter(|| {
            let auth = Some(("alice".to_owned(), "secret".to_owned()));
            let mut r = ProxyRequestReader::new(Limits::default(), auth);
            r.feed(black_box(get)).unwrap().unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, socks5, http_proxy);
criterion_main!(benches);
