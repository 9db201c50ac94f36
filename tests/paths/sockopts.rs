//! The client's `quic.sockopts` on a real path: `quelay client` in the client namespace,
//! its sockets bound to the namespace's veth (`bindInterface: vc`) and marked
//! (`fwmark: 77`), downloads through quelay's server. nftables counters on the client
//! namespace's output hook must see every datagram to the server carry the mark.

use std::process::Command;
use std::time::Duration;

use crate::support::{
    pattern_sha256, HttpTarget, NetPath, NsProxyClient, NsQuelayServer, PathSide, PathSpec, MIB,
};
use crate::{download, serial};

const LEN: usize = 16 * MIB;
const MARK: u32 = 77;

/// Runs `nft` in `side`'s namespace with `args`; its stdout.
fn nft(path: &NetPath, side: PathSide, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", path.ns(side), "nft"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nft (apt-get install nftables): {e}"));
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The packet count of the rule whose text contains `rule` in `listing`.
fn packets(listing: &str, rule: &str) -> u64 {
    let line = listing
        .lines()
        .find(|l| l.contains(rule) && l.contains("counter packets"))
        .unwrap_or_else(|| panic!("no rule {rule:?} in:\n{listing}"));
    line.split("counter packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {line:?}"))
}

#[test]
fn client_sockets_carry_the_fwmark_through_the_bound_interface() {
    NetPath::check_available();
    let _serial = serial();
    let path = NetPath::new(PathSpec::new(None, Duration::ZERO, 0.0));
    let target = path.in_ns(PathSide::Server, HttpTarget::start);
    let mut server = NsQuelayServer::start(&path, "");
    let fwd = path.forwarder(server.addr());
    let port = fwd.addr().port().to_string();
    nft(&path, PathSide::Client, &["add", "table", "inet", "qs"]);
    nft(
        &path,
        PathSide::Client,
        &["add chain inet qs out { type filter hook output priority 0; policy accept; }"],
    );
    for cond in [format!("meta mark {MARK}"), format!("meta mark != {MARK}")] {
        let rule = format!("add rule inet qs out udp dport {port} {cond} counter");
        nft(&path, PathSide::Client, &[&rule]);
    }

    let yaml = format!("quic:\n  sockopts:\n    bindInterface: vc\n    fwmark: {MARK}\n");
    let mut client = NsProxyClient::quelay(&path, fwd.addr(), &yaml);
    let (socks, target_port) = (client.socks_addr(), target.addr().port());
    let got = path
        .in_ns(PathSide::Client, || download(socks, target_port, LEN))
        .unwrap_or_else(|e| {
            client.child().assert_running();
            server.child().assert_running();
            panic!(
                "download through the marked client: {e}\nclient:\n{}",
                client.stderr_tail(30)
            )
        });
    assert_eq!(got.bytes, LEN);
    assert_eq!(got.sha256, pattern_sha256(LEN), "SHA-256 of the download");

    let listing = nft(&path, PathSide::Client, &["list", "table", "inet", "qs"]);
    let marked = packets(&listing, &format!("meta mark 0x{MARK:08x}"));
    let unmarked = packets(&listing, &format!("meta mark != 0x{MARK:08x}"));
    eprintln!("to the server: {marked} datagrams marked {MARK}, {unmarked} not");
    assert!(
        marked > 100,
        "the client's datagrams carry fwmark {MARK}: {marked}"
    );
    assert_eq!(unmarked, 0, "datagrams to the server without the mark");
}
