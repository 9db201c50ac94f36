//! Salamander obfuscation as the worker loop does it, once per UDP datagram: `encode` into a
//! reused buffer on send, `decode_in_place` on receive. Each costs one BLAKE2b-256 plus an XOR.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quelay::proto::salamander::SALT_LEN;
use quelay::proto::Salamander;

fn salamander(c: &mut Criterion) {
    let s = Salamander::new(b"correct horse battery staple").unwrap();
    let salt = [0x5a; SALT_LEN];
    let mut g = c.benchmark_group("salamander");
    // A small packet, a mid one, QUIC's minimum datagram, the largest IPv6 UDP payload at MTU 1500.
    for size in [64usize, 512, 1200, 1452] {
        let packet = vec![0x42u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::with_capacity(SALT_LEN + size);
        g.bench_with_input(BenchmarkId::new("obfuscate", size), &packet, |b, p| {
            b.iter(|| {
                out.clear();
                s.encode(black_box(salt), black_box(p), &mut out);
            })
        });
        let mut datagram = out.clone();
        g.bench_function(BenchmarkId::new("deobfuscate", size), |b| {
            // Decoding in place toggles the body; the salt stays, so every round is the same work.
            b.iter(|| s.decode_in_place(black_box(&mut datagram)).unwrap().len())
        });
    }
    g.finish();
}

criterion_group!(benches, salamander);
criterion_main!(benches);
