//! Port hopping, server side: the server binds the lowest port of a `listen` range and the
//! rest reach it through the nftables table `tuning/port-hopping.sh` installs (or the
//! server itself, `server::hopping`). This check reads that table and says whether every
//! port of the range is redirected to the bound one.

use std::ops::RangeInclusive;
use std::process::Command;

use super::{Finding, Status};
use crate::config::ListenPorts;

const CHECK: &str = "port hopping";

/// The table `tuning/port-hopping.sh` names after the bound port.
pub fn table(port: u16) -> String {
    format!("quelay_hop_{port}")
}

/// Whether UDP to every port of `ports` reaches `port` (the one the server binds).
pub fn check(port: u16, ports: &ListenPorts) -> Finding {
    let fix = format!("tuning/port-hopping.sh {} {port}", ports.text);
    let listing = Command::new("nft")
        .args(["list", "table", "inet", &table(port)])
        .output();
    let out = match listing {
        Err(e) => {
            return Finding::not_ok(
                CHECK,
                Status::Warn,
                format!(
                    "cannot run nft ({e}): the redirect of ports {} is unknown",
                    ports.text
                ),
                format!("apt-get install nftables; {fix}"),
            )
        }
        Ok(out) if !out.status.success() => {
            let why = String::from_utf8_lossy(&out.stderr);
            return Finding::not_ok(
                CHECK,
                Status::Warn,
                format!(
                    "no table inet {} ({}): UDP to ports {} other than {port} reaches nothing",
                    table(port),
                    why.lines().next().unwrap_or("nft failed").trim(),
                    ports.text
                ),
                fix,
            );
        }
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    let redirected = redirected_ports(&out, port);
    let missing = ports
        .ports
        .iter()
        .filter(|&&p| p != port && !redirected.iter().any(|r| r.contains(&p)))
        .count();
    if missing == 0 {
        Finding::ok(
            CHECK,
            format!(
                "UDP to ports {} reaches {port} (table inet {})",
                ports.text,
                table(port)
            ),
        )
    } else {
        Finding::not_ok(
            CHECK,
            Status::Warn,
            format!(
                "table inet {} redirects only part of {}: {missing} port(s) reach nothing",
                table(port),
                ports.text
            ),
            fix,
        )
    }
}

/// The port ranges an `nft list table` output's prerouting rules redirect to `port`
/// (`udp dport { 20000-20100, 30000 } ... redirect to :443`, or a single item; or, for a
/// listen address of its own, `... dnat ip to 192.0.2.1:443`).
fn redirected_ports(listing: &str, port: u16) -> Vec<RangeInclusive<u16>> {
    let target = format!("redirect to :{port}");
    let dnat_port = format!(":{port}");
    let mut in_prerouting = false;
    let mut out = Vec::new();
    for line in listing.lines().map(str::trim) {
        if line.starts_with("chain ") {
            in_prerouting = line.starts_with("chain prerouting");
            continue;
        }
        let to_port =
            line.ends_with(&target) || (line.contains(" dnat ") && line.ends_with(&dnat_port));
        if !in_prerouting || !to_port {
            continue;
        }
        let Some((_, after)) = line.split_once("udp dport ") else {
            continue;
        };
        let items = match after.strip_prefix('{') {
            Some(set) => set.split_once('}').map_or("", |(s, _)| s),
            None => after.split_whitespace().next().unwrap_or(""),
        };
        for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let range = match item.split_once('-') {
                Some((a, b)) => a.parse().ok().zip(b.parse().ok()).map(|(a, b)| a..=b),
                None => item.parse().ok().map(|p| p..=p),
            };
            out.extend(range);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "table inet quelay_hop_443 {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		udp dport { 20000-20010, 30000 } counter packets 0 bytes 0 redirect to :443
	}

	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local udp dport { 40000 } counter packets 0 bytes 0 redirect to :443
	}
}";

    #[test]
    fn reads_a_dnat_to_the_listen_address() {
        let listing = "table inet quelay_hop_443 {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 192.0.2.1 udp dport { 20000-20010 } counter packets 0 bytes 0 dnat ip to 192.0.2.1:443
		ip6 daddr 2001:db8::1 udp dport 30000 counter packets 0 bytes 0 dnat ip6 to [2001:db8::1]:443
		udp dport 40000 counter packets 0 bytes 0 dnat ip to 192.0.2.1:4430
	}
}";
        assert_eq!(
            redirected_ports(listing, 443),
            vec![20000..=20010, 30000..=30000]
        );
    }

    #[test]
    fn reads_the_sets_nft_prints() {
        assert_eq!(
            redirected_ports(LISTING, 443),
            vec![20000..=20010, 30000..=30000]
        );
        assert!(redirected_ports(LISTING, 8443).is_empty());
        let single =
            "chain prerouting {\n iifname \"eth0\" udp dport 5000-5002 counter redirect to :443\n}";
        assert_eq!(redirected_ports(single, 443), vec![5000..=5002]);
    }
}
