//! Connection-ID sharding: finding a packet's worker from its destination CID, and the
//! generator quinn-proto calls to issue and validate CIDs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use quelay::quic::{long_header_dcid, short_header_dcid, worker_of, ShardedCidGenerator, CID_LEN};
use quinn_proto::ConnectionIdGenerator;

const WORKERS: usize = 2;

fn cid(c: &mut Criterion) {
    let mut g = c.benchmark_group("cid");
    // 1-RTT packet to worker 1: flags, 8-byte DCID, then protected bytes.
    let mut short = vec![0x41, 1, 2, 3, 4, 5, 6, 7, 8];
    short.resize(1200, 0);
    g.bench_function("route_short_header", |b| {
        b.iter(|| worker_of(short_header_dcid(black_box(&short))?, WORKERS))
    });
    // Handshake packet to worker 1: flags, version 1, DCID length 8, DCID, ...
    let mut long = vec![0xe0, 0, 0, 0, 1, CID_LEN as u8, 1, 2, 3, 4, 5, 6, 7, 8];
    long.resize(1200, 0);
    g.bench_function("route_long_header", |b| {
        b.iter(|| worker_of(long_header_dcid(black_box(&long))?, WORKERS))
    });
    let mut gen = ShardedCidGenerator::new(1, WORKERS as u8);
    g.bench_function("generate", |b| b.iter(|| gen.generate_cid()));
    let own = gen.generate_cid();
    let other = ShardedCidGenerator::new(0, WORKERS as u8).generate_cid();
    g.bench_function("validate_own", |b| {
        b.iter(|| gen.validate(black_box(&own)).is_ok())
    });
    g.bench_function("validate_other", |b| {
        b.iter(|| gen.validate(black_box(&other)).is_ok())
    });
    g.finish();
}

criterion_group!(benches, cid);
criterion_main!(benches);
