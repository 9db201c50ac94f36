//! Three nodes behind one address: the server namespace holds three `quelay server` nodes
//! (`cluster`, one shared key file) on addresses of their own, and a stateless nftables
//! balancer that steers each datagram for the service address to one of them, as an L4
//! balancer in front of a QUIC service would. Clients in the
//! client namespace change their source port while they download (a new local socket: NAT
//! rebinding, as port hopping over a single port does) every 5 s, the reference's and
//! sing-box's shortest hop interval, and the 150 Mbit/s path makes each transfer last over
//! 10 s, so each client moves at least twice mid-transfer.
//!
//! With the connection-ID rule (a short header goes to the node its DCID's server-ID byte
//! names; long headers by a hash of the 4-tuple), every transfer arrives intact, no stateless
//! reset is sent, and no node sees another's packets. With the 4-tuple hash alone, a client's
//! new port lands on a node that does not own its connection: the nodes count those
//! datagrams, and transfers stall.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::Duration;

use crate::serial;
use crate::support::{
    metric, pattern_sha256, run_tool, scrape, socks_download, tempdir, HttpTarget, NetPath,
    NsProxyClient, NsQuelayServer, PathSide, PathSpec, SbOpts, MIB,
};

const NODES: u8 = 3;
/// Clients: half quelay's, half sing-box's.
const CLIENTS: usize = 30;
const PER_CLIENT: usize = 8 * MIB;
/// 30 x 8 MiB take about 13 s through it.
const RATE_MBIT: f64 = 150.0;
/// The bottleneck's queue, each way: room for every client's connection to hold a minimum
/// congestion window (4 datagrams) twice over. The default for a path without delay is tbf's
/// 64 KiB, about 45 datagrams for 30 connections whose minimum windows alone add up to 120:
/// such a queue overflows whatever the senders do, a connection can lose every probe of
/// several backed-off probe timeouts in a row, and its transfer then stalls for seconds on
/// congestion, which says nothing about routing.
const QUEUE: u64 = CLIENTS as u64 * 4 * 1500 * 2;
/// The service port clients dial.
const SERVICE_PORT: u16 = 443;
/// The longest a transfer may go without a byte: a client on a node that does not own its
/// connection waits longer than this for its next port change.
const STALL: Duration = Duration::from_secs(4);

fn node_ip(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, k)
}

/// The balancer's ruleset: the CID rule (when `by_cid`), then the 4-tuple hash. Stateless,
/// as a QUIC-LB balancer is: every datagram is steered on its own (`notrack`, the
/// destination rewritten in place) and the nodes' replies leave with the service address as
/// their source. Conntrack NAT would pin a 4-tuple to the node its first datagram chose for
/// as long as the entry lives, so a client port reused by another connection would be
/// steered by the old one's entry.
fn balancer(service: Ipv4Addr, by_cid: bool) -> String {
    let to_service = format!("ip daddr {service} udp dport {SERVICE_PORT}");
    let mut steer = String::new();
    if by_cid {
        // UDP payload bit 0 clear: a short header; payload byte 2 (the DCID's second byte,
        // bits 80..88 from the UDP header) is the node of a QUIC-LB CID. A rewritten
        // datagram no longer matches `to_service`.
        for k in 1..=NODES {
            steer.push_str(&format!(
                "    {to_service} @th,64,1 0 @th,80,8 {k} ip daddr set {}\n",
                node_ip(k)
            ));
        }
    }
    let map: Vec<String> = (1..=NODES)
        .map(|k| format!("{} : {}", k - 1, node_ip(k)))
        .collect();
    steer.push_str(&format!(
        "    {to_service} ip daddr set jhash ip saddr . udp sport mod {NODES} seed 0x5eed map \
         {{ {} }}\n",
        map.join(", ")
    ));
    let nodes = format!("{}/24", node_ip(0));
    format!(
        "table ip quelay_lb {{\n  chain prerouting {{\n    type filter hook prerouting \
         priority raw; policy accept;\n    {to_service} notrack\n{steer}  }}\n  chain output \
         {{\n    type filter hook output priority raw; policy accept;\n    ip saddr {nodes} \
         udp sport {SERVICE_PORT} notrack ip saddr set {service}\n  }}\n}}\n"
    )
}

/// Runs `args`, failing the test with the tool's message when it fails.
fn run(args: &[&str]) {
    run_tool(args[0], &args[1..])
        .unwrap_or_else(|e| panic!("{e} (the cluster test needs iproute2 and nftables)"));
}

struct Outcome {
    failed: Vec<String>,
    other_node: u64,
    resets: u64,
    /// Connections each node accepted.
    accepted: Vec<u64>,
    migrations: u64,
}

fn cluster_transfers(by_cid: bool) -> Outcome {
    NetPath::check_available();
    let _serial = serial();
    let path = NetPath::new(PathSpec::new(Some(RATE_MBIT), Duration::ZERO, 0.0).with_queue(QUEUE));
    let ns = path.ns(PathSide::Server).to_owned();
    let service = path.ip(PathSide::Server);
    let dir = tempdir();
    let key = dir.join("cluster.key");
    fs::write(
        &key,
        "6d1f0a4c2b9e8d7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f\n",
    )
    .expect("write the cluster key");
    let target = path.in_ns(PathSide::Server, HttpTarget::start);
    let mut metrics = Vec::new();
    let mut nodes = Vec::new();
    for k in 1..=NODES {
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/32", node_ip(k)),
            "dev",
            "lo",
        ]);
        let m = SocketAddr::from(([127, 0, 0, 1], path.free_port(PathSide::Server)));
        let addr = SocketAddr::from((node_ip(k), SERVICE_PORT));
        let yaml = format!(
            "cluster:\n  nodeId: {k}\n  keyFile: {}\nmetrics:\n  listen: {m}\nengine:\n  \
             workers: 2\n",
            key.display()
        );
        nodes.push(NsQuelayServer::start_listen(
            &path,
            &addr.to_string(),
            addr,
            &yaml,
            None,
        ));
        metrics.push(m);
    }
    let rules = dir.join("balancer.nft");
    fs::write(&rules, balancer(service, by_cid)).expect("write the balancer's rules");
    let rules = rules.to_str().expect("a UTF-8 path");
    run(&["ip", "netns", "exec", &ns, "nft", "-f", rules]);

    let server = format!("{service}:{SERVICE_PORT}");
    let rebinding = format!("{server}-{SERVICE_PORT}");
    let quelay_yaml = "transport:\n  udp:\n    hopInterval: 5s\nengine:\n  workers: 1\n";
    let sb = SbOpts {
        rebind_every: Some("5s".into()),
        log_level: "warn".into(),
        ..SbOpts::default()
    };
    let clients: Vec<NsProxyClient> = (0..CLIENTS)
        .map(|i| {
            if i % 2 == 0 {
                NsProxyClient::quelay_to(&path, &rebinding, quelay_yaml, &[])
            } else {
                NsProxyClient::singbox(&path, SocketAddr::from((service, SERVICE_PORT)), &sb)
            }
        })
        .collect();
    let port = target.addr().port();
    let socks: Vec<SocketAddr> = clients.iter().map(NsProxyClient::socks_addr).collect();
    // Each client connects first, one after another (a 1 KiB request), so that 30 QUIC
    // handshakes do not queue behind each other on 2 cores; then all download at once.
    let mut failed: Vec<String> = path.in_ns(PathSide::Client, || {
        socks
            .iter()
            .enumerate()
            .filter_map(|(i, &socks)| {
                let d = socks_download(socks, port, 1024, STALL, Duration::from_secs(30));
                d.error.map(|e| format!("client {i}, first request: {e}"))
            })
            .collect()
    });
    failed.extend(path.in_ns(PathSide::Client, || {
        thread::scope(|s| {
            let handles: Vec<_> = socks
                .iter()
                .enumerate()
                .map(|(i, &socks)| {
                    s.spawn(move || {
                        let d =
                            socks_download(socks, port, PER_CLIENT, STALL, Duration::from_secs(90));
                        let kind = if i % 2 == 0 { "quelay" } else { "sing-box" };
                        match d.error {
                            Some(e) => Some(format!("client {i} ({kind}): {e}")),
                            None if d.sha256 != pattern_sha256(PER_CLIENT) => {
                                Some(format!("client {i} ({kind}): SHA-256 mismatch"))
                            }
                            None => None,
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().expect("download thread"))
                .collect::<Vec<String>>()
        })
    }));
    // What a failed client said about it.
    for f in &mut failed {
        let i: usize = f
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.trim_end_matches(',').parse().ok())
            .unwrap_or(0);
        if let Some(c) = clients.get(i) {
            f.push_str(&format!("\n    its log: {}", c.stderr_tail(5)));
        }
    }
    let pages: Vec<String> = metrics
        .iter()
        .map(|&m| path.in_ns(PathSide::Server, || scrape(m)))
        .collect();
    for n in &mut nodes {
        n.child().assert_running();
    }
    let sum = |series: &str| pages.iter().map(|p| metric(p, series) as u64).sum::<u64>();
    let outcome = Outcome {
        failed,
        other_node: sum("quelay_other_node_dropped_total"),
        resets: sum("quelay_stateless_resets_total"),
        accepted: pages
            .iter()
            .map(|p| metric(p, "quelay_connections_total") as u64)
            .collect(),
        migrations: sum("quelay_migrations_total"),
    };
    eprintln!(
        "cluster by_cid={by_cid} clients={CLIENTS} failed={} other_node_dropped={} \
         stateless_resets={} accepted_per_node={:?} migrations={}",
        outcome.failed.len(),
        outcome.other_node,
        outcome.resets,
        outcome.accepted,
        outcome.migrations
    );
    drop(clients);
    outcome
}

#[test]
fn three_nodes_behind_a_cid_balancer_keep_every_connection_through_rebinding() {
    let o = cluster_transfers(true);
    assert!(o.failed.is_empty(), "failed transfers: {:#?}", o.failed);
    assert_eq!(o.resets, 0, "stateless resets sent");
    assert_eq!(o.other_node, 0, "datagrams reached a node not owning them");
    assert!(
        o.accepted.iter().all(|&n| n > 0),
        "every node served connections: {:?}",
        o.accepted
    );
    assert!(
        o.migrations >= CLIENTS as u64,
        "clients changed ports mid-transfer ({} address changes followed)",
        o.migrations
    );
}

#[test]
fn the_same_nodes_behind_a_4_tuple_balancer_lose_connections() {
    let o = cluster_transfers(false);
    assert!(
        o.other_node > 0,
        "a rebinding client's datagrams reached a node that does not own its connection"
    );
    assert!(
        !o.failed.is_empty(),
        "with the 4-tuple hash alone some transfer must stall ({} datagrams misrouted)",
        o.other_node
    );
    assert_eq!(o.resets, 0, "no node resets another's connection");
}
