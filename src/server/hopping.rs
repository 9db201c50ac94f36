//! Port hopping, server side: with a port list or range in `listen` the server binds the
//! lowest port, and an nftables table redirects UDP sent to the others to it: the table
//! `tuning/port-hopping.sh` writes, `inet quelay_hop_PORT`. Like the reference server, which
//! installs its own redirect, `quelay server` installs that table when it finds it missing,
//! and removes what it installed when it exits cleanly. A table already there (the script
//! run from the unit, say) is used as it is and left in place. Without nft or the right to
//! change the ruleset (CAP_NET_ADMIN), the server says so and serves the bound port alone.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::config::ListenPorts;
use crate::doctor::hopping::{check, table};

/// A redirect this server installed; dropping it removes the table.
#[derive(Debug)]
pub struct Redirect {
    table: String,
}

impl Drop for Redirect {
    fn drop(&mut self) {
        match nft(&["delete", "table", "inet", &self.table], None) {
            Ok(()) => tracing::info!("port hopping: removed table inet {}", self.table),
            Err(e) => tracing::warn!("port hopping: removing table inet {}: {e}", self.table),
        }
    }
}

/// Makes UDP to every port of `ports` reach `listen`, the bound address: checks for the
/// table, installs it if it is missing or partial. `Some` when this server installed it.
pub fn ensure(listen: SocketAddr, ports: &ListenPorts) -> Option<Redirect> {
    let port = listen.port();
    let found = check(port, ports);
    let Some(fix) = found.fix else {
        tracing::info!("port hopping: {}", found.detail);
        return None;
    };
    let table = table(port);
    match nft(&["-f", "-"], Some(&ruleset(listen, ports))) {
        Ok(()) => {
            tracing::info!(
                "port hopping: installed table inet {table}: UDP to ports {} reaches {port} \
                 (removed when the server exits)",
                ports.text
            );
            Some(Redirect { table })
        }
        Err(e) => {
            tracing::warn!(
                "port hopping: {}; installing the redirect failed ({e}); run {fix}",
                found.detail
            );
            None
        }
    }
}

/// The table `tuning/port-hopping.sh PORTS PORT` installs (on every interface), declared,
/// deleted and defined in one transaction, so that a partial table is replaced. For a
/// `listen` address of its own (not `[::]` or `0.0.0.0`) the rules match that address and
/// send to it (`dnat`), as the reference's do: `redirect` would send to the receiving
/// interface's first address, which need not be it.
pub fn ruleset(listen: SocketAddr, ports: &ListenPorts) -> String {
    let set = ranges(&ports.ports).join(", ");
    let port = listen.port();
    let table = table(port);
    // The prerouting rule's and the output rule's match, and where both send.
    let (pre, out, to) = match listen.ip() {
        ip if ip.is_unspecified() => (
            String::new(),
            "fib daddr type local ".to_owned(),
            format!("redirect to :{port}"),
        ),
        ip => {
            let family = if ip.is_ipv4() { "ip" } else { "ip6" };
            let daddr = format!("{family} daddr {ip} ");
            (daddr.clone(), daddr, format!("dnat {family} to {listen}"))
        }
    };
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \x20   chain prerouting {{\n\
         \x20       type nat hook prerouting priority dstnat; policy accept;\n\
         \x20       {pre}udp dport {{ {set} }} counter {to}\n\
         \x20   }}\n\
         \x20   chain output {{\n\
         \x20       type nat hook output priority -100; policy accept;\n\
         \x20       {out}udp dport {{ {set} }} counter {to}\n\
         \x20   }}\n\
         }}\n"
    )
}

/// Sorted, distinct ports as nft set items: runs become `A-B`.
fn ranges(ports: &[u16]) -> Vec<String> {
    let mut out = Vec::new();
    let mut run: Option<(u16, u16)> = None;
    for &p in ports {
        run = match run {
            Some((a, b)) if b.checked_add(1) == Some(p) => Some((a, p)),
            Some(done) => {
                out.push(item(done));
                Some((p, p))
            }
            None => Some((p, p)),
        };
    }
    out.extend(run.map(item));
    out
}

fn item((a, b): (u16, u16)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// Runs `nft args`, with `input` on its standard input; the error is nft's own message.
fn nft(args: &[&str], input: Option<&str>) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr);
    Err(why.lines().next().unwrap_or("nft failed").trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(text: &str, ports: &[u16]) -> ListenPorts {
        ListenPorts {
            text: text.into(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn runs_of_ports_become_ranges() {
        let all: Vec<u16> = (20000..=20010)
            .chain([30000, 30002, 30003, 65535])
            .collect();
        assert_eq!(
            ranges(&all),
            ["20000-20010", "30000", "30002-30003", "65535"]
        );
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn a_listen_address_of_its_own_is_matched_and_sent_to() {
        let p = ports("20000-20001", &[20000, 20001]);
        let v4 = ruleset("192.0.2.1:20000".parse().unwrap(), &p);
        assert!(v4.contains(
            "ip daddr 192.0.2.1 udp dport { 20000-20001 } counter dnat ip to 192.0.2.1:20000\n"
        ));
        let v6 = ruleset("[2001:db8::1]:20000".parse().unwrap(), &p);
        assert!(v6.contains(
            "ip6 daddr 2001:db8::1 udp dport { 20000-20001 } counter dnat ip6 to [2001:db8::1]:20000\n"
        ));
        assert!(!v6.contains("redirect"));
    }

    #[test]
    fn the_ruleset_is_the_scripts() {
        let text = ruleset(
            "[::]:20000".parse().unwrap(),
            &ports("20000-20002,30000", &[20000, 20001, 20002, 30000]),
        );
        assert!(
            text.starts_with("table inet quelay_hop_20000\ndelete table inet quelay_hop_20000\n")
        );
        assert!(
            text.contains("        udp dport { 20000-20002, 30000 } counter redirect to :20000\n")
        );
        assert!(text.contains(
            "fib daddr type local udp dport { 20000-20002, 30000 } counter redirect to :20000\n"
        ));
        assert!(text.contains("type nat hook prerouting priority dstnat; policy accept;"));
    }
}
