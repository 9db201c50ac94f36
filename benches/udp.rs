//! UDP relaying: splitting a packet into UDPMessages, and parsing + reassembling them.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quelay::proto::udp::MAX_UDP_MESSAGE;
use quelay::proto::{fragment, Defragger, UdpMessage};

const ADDR: &str = "203.0.113.7:443";

fn udp(c: &mut Criterion) {
    let mut g = c.benchmark_group("udp");
    // 100: a DNS query; 1200: one QUIC packet, already two fragments; 4000: near the maximum.
    for size in [100usize, 1200, 4000] {
        let payload = vec![0xabu8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("fragment", size), &payload, |b, p| {
            b.iter(|| fragment(1, 7, ADDR, black_box(p), MAX_UDP_MESSAGE).unwrap())
        });
        let frags: Vec<Bytes> = fragment(1, 7, ADDR, &payload, MAX_UDP_MESSAGE)
            .unwrap()
            .into_iter()
            .map(Bytes::from)
            .collect();
        // What a receiver does per DATAGRAM frame: parse it, hand it to the session's defragger.
        let mut defrag = Defragger::new();
        g.bench_with_input(
            BenchmarkId::new("parse_defrag", size),
            &frags,
            |b, frags| {
                b.iter(|| {
                    let mut whole = None;
                    for f in frags {
                        let msg = UdpMessage::parse(black_box(f.clone())).unwrap();
                        whole = defrag.feed(msg).unwrap();
                    }
                    assert_eq!(whole.as_ref().map(|m| m.payload.len()), Some(size));
                    whole
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, udp);
criterion_main!(benches);
