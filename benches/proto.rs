//! Stream-side wire format: QUIC varints and the TCPRequest/TCPResponse a proxy stream opens with.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quelay::proto::{varint, TcpRequest, TcpResponse};

fn varints(c: &mut Criterion) {
    let mut g = c.benchmark_group("varint");
    // One value per encoded length: 1, 2, 4 and 8 bytes.
    for v in [37u64, 15_293, 494_878_333, 151_288_809_941_952_652] {
        let mut enc = Vec::new();
        varint::encode(v, &mut enc).unwrap();
        let len = enc.len();
        g.bench_with_input(BenchmarkId::new("decode", len), &enc, |b, enc| {
            b.iter(|| varint::decode(black_box(enc)))
        });
        let mut out = Vec::with_capacity(varint::MAX_LEN);
        g.bench_with_input(BenchmarkId::new("encode", len), &v, |b, &v| {
            b.iter(|| {
                out.clear();
                varint::encode(black_box(v), &mut out).unwrap();
            })
        });
    }
    g.finish();
}

fn tcp(c: &mut Criterion) {
    let mut g = c.benchmark_group("tcp");
    // A typical request: a domain target with the official client's padding (64..512 bytes).
    let mut req = Vec::new();
    TcpRequest::encode("www.example.com:443", &[b'p'; 256], &mut req).unwrap();
    let req_len = req.len();
    g.throughput(Throughput::Elements(1));
    g.bench_function("request_parse", |b| {
        b.iter(|| TcpRequest::parse(black_box(&req)).unwrap().unwrap())
    });
    // The client coalesces the first payload (here a 517-byte TLS ClientHello) behind the request.
    let mut coalesced = req.clone();
    coalesced.extend_from_slice(&[0x16; 517]);
    g.bench_function("request_parse_with_payload", |b| {
        b.iter(|| {
            let (r, used) = TcpRequest::parse(black_box(&coalesced)).unwrap().unwrap();
            assert_eq!(used, req_len);
            (r, black_box(&coalesced[used..]))
        })
    });
    let mut resp = Vec::new();
    TcpResponse::encode(0, "Connected", &[b'p'; 512], &mut resp).unwrap();
    g.bench_function("response_parse", |b| {
        b.iter(|| TcpResponse::parse(black_box(&resp)).unwrap().unwrap())
    });
    g.finish();
}

criterion_group!(benches, varints, tcp);
criterion_main!(benches);
