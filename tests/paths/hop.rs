//! Port hopping across a real redirect: the server namespace gets the nftables table of
//! `tuning/port-hopping.sh`, which sends UDP to any of `HOP_PORTS` ports to the one the
//! server binds (installed by the script, or by quelay's server itself, which removes it
//! when it exits); `quelay client` in the client namespace is given the whole range and hops
//! every second (the test-only floor, `QUELAY_TEST_MIN_HOP_INTERVAL`) while it downloads
//! `HOP_DOWNLOAD` bytes through a 400 Mbit/s path, so the download spans several hops. The
//! download must arrive intact (SHA-256) without a stall, and the client must have hopped.
//!
//! Against quelay's server (with two workers, on each I/O driver) its metrics must also show
//! that every hop was followed (`quelay_migrations_total`), that the datagrams of each new
//! port reached the connection's own worker through CID steering (nothing forwarded between
//! workers). Against every server the client must have kept its one connection throughout
//! (no reconnect: no stateless reset or other error ended it).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::MutexGuard;
use std::time::Duration;

use crate::support::{
    self, metric, pattern_sha256, scrape, HttpTarget, NetPath, NsProxyClient, NsQuelayServer,
    NsSingboxServer, PathSide, PathSpec, PoolStats, ServerOpts, MIB,
};
use crate::{download, serial};

/// Ports clients hop over: the bound one and 99 more.
const HOP_PORTS: u16 = 100;
const HOP_DOWNLOAD: usize = 256 * MIB;
/// The bottleneck: 256 MiB take about 5.5 s at 400 Mbit/s.
const HOP_RATE_MBIT: f64 = 400.0;

/// A range of `HOP_PORTS` ports free in the server namespace, as (first, last): the
/// namespace is the test's own, and its other sockets take ephemeral ports (above 32767).
fn port_range() -> (u16, u16) {
    let base = 20_000 + (std::process::id() % 10_000) as u16;
    (base, base + HOP_PORTS - 1)
}

/// Installs the redirect of `first..=last` to `first` in the server namespace with the
/// script operators run.
fn redirect(path: &NetPath, first: u16, last: u16) {
    let script = support::root().join("tuning/port-hopping.sh");
    let out = Command::new("ip")
        .args(["netns", "exec", path.ns(PathSide::Server)])
        .arg(&script)
        .arg(format!("{first}-{last}"))
        .arg(first.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "tuning/port-hopping.sh failed (port hopping needs nftables: apt-get install \
         nftables): {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Stops the client; returns its pool's figures from its exit line (printed too).
fn stop_client(client: &mut NsProxyClient) -> PoolStats {
    client
        .child()
        .stop_with(libc::SIGTERM, Duration::from_secs(10));
    let stderr = client.child().stderr();
    if let Some(line) = stderr.lines().find(|l| l.starts_with("pool stats:")) {
        eprintln!("{line}");
    }
    PoolStats::parse(&stderr)
}

/// Downloads through a hopping client (one worker) dialling `server` (`ip:first-last`),
/// checking the bytes; returns the client's hop count and the transfer's duration.
fn hop_download(path: &NetPath, target: &HttpTarget, server: &str, io: &str) -> (u64, Duration) {
    let env = [("QUELAY_TEST_MIN_HOP_INTERVAL", "1s")];
    let yaml =
        format!("transport:\n  udp:\n    hopInterval: 1s\nengine:\n  workers: 1\n  io: {io}\n");
    let mut client = NsProxyClient::quelay_to(path, server, &yaml, &env);
    let (socks, port) = (client.socks_addr(), target.addr().port());
    let got = path.in_ns(PathSide::Client, || download(socks, port, HOP_DOWNLOAD));
    let got = got.unwrap_or_else(|e| {
        client.child().assert_running();
        panic!(
            "download through the hopping client ({io}): {e}\nclient:\n{}",
            client.stderr_tail(30)
        )
    });
    assert_eq!(got.bytes, HOP_DOWNLOAD);
    assert_eq!(got.sha256, pattern_sha256(HOP_DOWNLOAD), "SHA-256 ({io})");
    let stats = stop_client(&mut client);
    let hops = stats.get("hops");
    // A stateless reset (or anything else) that ended the connection would show as a
    // second connect: every hop must keep the one connection.
    assert_eq!(
        (stats.get("connects"), stats.get("reconnects")),
        (1, 0),
        "the hopping client ({io}) lost its connection: (connects, reconnects)"
    );
    eprintln!(
        "hop io={io} server={server} seconds={:.2} mbit_s={:.0} hops={hops}",
        got.transfer.as_secs_f64(),
        got.bytes as f64 * 8.0 / 1e6 / got.transfer.as_secs_f64()
    );
    assert!(
        hops >= 3,
        "the client hopped {hops} times in a {:.1?} download at one hop a second",
        got.transfer
    );
    (hops, got.transfer)
}

/// Who installs the redirect of the hopping ports.
#[derive(Clone, Copy, PartialEq)]
enum RedirectBy {
    /// `tuning/port-hopping.sh`, before the server starts.
    Script,
    /// quelay's server itself, finding none at start-up.
    Server,
}

/// Whether the server namespace has the table of the redirect to `first`.
fn redirect_table_exists(path: &NetPath, first: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", path.ns(PathSide::Server)])
        .args([
            "nft",
            "list",
            "table",
            "inet",
            &format!("quelay_hop_{first}"),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A path with a target in the server namespace (and the redirect, if the script installs
/// it): what every hopping test starts from. Holds the tests' serial lock.
struct HopPath {
    path: NetPath,
    target: HttpTarget,
    /// The server's address in its namespace.
    ip: Ipv4Addr,
    first: u16,
    last: u16,
    _serial: MutexGuard<'static, ()>,
}

impl HopPath {
    fn new(by: RedirectBy) -> HopPath {
        NetPath::check_available();
        let serial = serial();
        let path = NetPath::new(PathSpec::new(Some(HOP_RATE_MBIT), Duration::ZERO, 0.0));
        let (first, last) = port_range();
        if by == RedirectBy::Script {
            redirect(&path, first, last);
        }
        let target = path.in_ns(PathSide::Server, HttpTarget::start);
        let ip = path.ip(PathSide::Server);
        HopPath {
            path,
            target,
            ip,
            first,
            last,
            _serial: serial,
        }
    }

    /// What a hopping client dials: the server's address with the whole port range.
    fn dial(&self) -> String {
        format!("{}:{}-{}", self.ip, self.first, self.last)
    }

    /// Downloads through a hopping client on `io`; see [`hop_download`].
    fn download(&self, io: &str) -> (u64, Duration) {
        hop_download(&self.path, &self.target, &self.dial(), io)
    }
}

fn hop_against_quelay(io: &str, by: RedirectBy) {
    let hop = HopPath::new(by);
    let path = &hop.path;
    let metrics = SocketAddr::from(([127, 0, 0, 1], path.free_port(PathSide::Server)));
    // The server's own redirect is for its own address (a dnat to it); the script's for
    // every address.
    let listen_ip = match by {
        RedirectBy::Server => hop.ip.to_string(),
        RedirectBy::Script => "0.0.0.0".to_owned(),
    };
    let mut server = NsQuelayServer::start_listen(
        path,
        &format!("{listen_ip}:{}-{}", hop.first, hop.last),
        SocketAddr::from((hop.ip, hop.first)),
        &format!("engine:\n  workers: 2\n  io: {io}\nmetrics:\n  listen: {metrics}\n"),
        // quinn-proto says why it sent a stateless reset, and to which CID and address.
        Some("info,quinn_proto::endpoint=debug"),
    );
    let (hops, took) = hop.download(io);
    let page = path.in_ns(PathSide::Server, || scrape(metrics));
    server.child().assert_running();
    let m = |series: &str| metric(&page, series) as u64;
    // Each hop that carried traffic is one address change; hops while the connection was
    // idle (before the request, after the download) show at its next datagram or never.
    let migrations = m("quelay_migrations_total");
    let busy_hops = took.as_secs().saturating_sub(1);
    assert!(
        (busy_hops..=hops).contains(&migrations),
        "the server followed {migrations} address changes: {hops} hops, {busy_hops} of them \
         in the {took:.1?} download"
    );
    assert_eq!(
        m("quelay_forwarded_out_total"),
        0,
        "datagrams of a new port reached another worker (CID steering)"
    );
    // A stateless reset answers a datagram whose CID no connection of its worker holds: one
    // aimed at the client's connection would have ended it (see `hop_download`). One that
    // was not (a straggler of the client's teardown, say) harms nobody; print what the
    // server says of each, for whoever reads this output.
    let resets = m("quelay_stateless_resets_total");
    if resets > 0 {
        let log = server.child().stderr();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("stateless reset"))
            .collect();
        eprintln!("{resets} stateless reset(s) sent:\n{}", lines.join("\n"));
    }
    let said = match by {
        RedirectBy::Script => "port hopping: UDP to ports".to_owned(),
        RedirectBy::Server => format!(
            "port hopping: installed table inet quelay_hop_{}",
            hop.first
        ),
    };
    assert!(
        server.child().stderr().contains(&said),
        "the server should say \"{said}\""
    );
    // A clean exit removes what the server installed, and leaves the script's table.
    server
        .child()
        .stop_with(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(
        redirect_table_exists(path, hop.first),
        by == RedirectBy::Script,
        "the redirect's table after the server exited (installed by the {})",
        match by {
            RedirectBy::Script => "script: it stays",
            RedirectBy::Server => "server: it goes",
        }
    );
}

/// The server installs the redirect itself, as the reference server does (listening on
/// its veth address: a dnat to it).
#[test]
fn hopping_client_downloads_intact_from_quelay_uring() {
    hop_against_quelay("uring", RedirectBy::Server);
}

/// The script installed the redirect: the server finds it and leaves it.
#[test]
fn hopping_client_downloads_intact_from_quelay_epoll() {
    hop_against_quelay("epoll", RedirectBy::Script);
}

#[test]
fn hopping_client_downloads_intact_from_singbox() {
    let hop = HopPath::new(RedirectBy::Script);
    let mut server = NsSingboxServer::start_on(
        &hop.path,
        SocketAddr::from((hop.ip, hop.first)),
        &ServerOpts::default(),
    );
    hop.download("uring");
    server.child().assert_running();
}
