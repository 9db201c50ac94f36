//! ACL matching: the cost of routing one request with 10 and with 10,000 rules (names,
//! suffixes, CIDRs, IPv6 prefixes, wildcards), which the compiled indices keep nearly equal.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use quelay::acl::{Acl, GeoBytes, Host, Protocol};

/// `n` rules of five kinds (four without wildcards), then `default(all)`.
fn rules(n: u32, wildcards: bool) -> String {
    let mut text = String::new();
    for i in 0..n / 5 {
        text.push_str(&format!("ob1(d{i}.example, tcp/443)\n"));
        text.push_str(&format!("ob2(suffix:s{i}.example)\n"));
        text.push_str(&format!("reject(10.{}.{}.0/24)\n", i / 256 % 256, i % 256));
        if wildcards {
            text.push_str(&format!("ob1(w{i}-*.example, udp)\n"));
        }
        text.push_str(&format!("ob2(2001:db8:{i:x}::/48)\n"));
    }
    text.push_str("default(all)\n");
    text
}

fn acl(c: &mut Criterion) {
    let mut g = c.benchmark_group("acl");
    for (n, wildcards) in [(10u32, true), (10_000, true), (10_000, false)] {
        let n_name = if wildcards {
            n.to_string()
        } else {
            format!("{n}_no_wildcards")
        };
        let acl = Acl::compile(
            &rules(n, wildcards),
            "bench",
            &["ob0", "ob1", "ob2"],
            &mut GeoBytes::default(),
        )
        .expect("bench rules compile");
        let name = Host::new("www.s1.example");
        let unmatched =
            Host::new("www.nothing.test").with_addresses(Some([192, 0, 2, 1].into()), None);
        let addr = Host::new("10.0.1.7");
        g.bench_function(format!("route_suffix_{n_name}"), |b| {
            b.iter(|| acl.route(black_box(&name), Protocol::Tcp, 443))
        });
        g.bench_function(format!("route_default_{n_name}"), |b| {
            b.iter(|| acl.route(black_box(&unmatched), Protocol::Udp, 443))
        });
        g.bench_function(format!("route_cidr_{n_name}"), |b| {
            b.iter(|| acl.route(black_box(&addr), Protocol::Tcp, 443))
        });
        g.bench_function(format!("host_new_and_route_{n_name}"), |b| {
            b.iter(|| acl.route(&Host::new(black_box("WWW.S1.Example.")), Protocol::Tcp, 443))
        });
    }
    g.finish();
}

criterion_group!(benches, acl);
criterion_main!(benches);
