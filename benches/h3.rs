//! The HTTP/3 auth exchange: QPACK-decoding the client's auth request, and the Huffman
//! decoding that dominates it (quic-go Huffman-codes every literal, padding included).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quelay::proto::h3::{auth_request, auth_request_headers, huffman_code, RequestReader};

/// Alphanumeric padding like the official client's (256..2048 characters), fixed for repeatability.
fn padding(len: usize) -> String {
    let chars = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|i| char::from(chars[(i * 7 + i / 3) % chars.len()]))
        .collect()
}

fn auth(c: &mut Criterion) {
    let mut g = c.benchmark_group("h3");
    let frame = auth_request_headers("f3b6c9e2a1d84075", 0, &padding(1024));
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("auth_request_decode", |b| {
        b.iter(|| {
            let req = RequestReader::new()
                .push(black_box(&frame))
                .unwrap()
                .unwrap();
            auth_request(&req).unwrap()
        })
    });
    g.finish();
}

fn huffman(c: &mut Criterion) {
    let mut g = c.benchmark_group("huffman");
    // 16: an auth token; 1024: a padding header.
    for len in [16usize, 1024] {
        let mut encoded = Vec::new();
        huffman_code::encode(padding(len).as_bytes(), &mut encoded);
        g.throughput(Throughput::Bytes(len as u64));
        let mut out = Vec::with_capacity(len);
        g.bench_with_input(BenchmarkId::new("decode", len), &encoded, |b, enc| {
            b.iter(|| {
                out.clear();
                huffman_code::decode(black_box(enc), &mut out).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, auth, huffman);
criterion_main!(benches);
