//! The checks, each reading the live host.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::host;
use super::sysctl;
use super::{Finding, Status};
use crate::engine::{self, DriverConfig};
use crate::worker;

/// Below this many open files quelay cannot hold its sockets and a handful of streams.
const NOFILE_CRITICAL: u64 = 1024;
/// Below this a busy relay runs out of sockets (one per relayed stream or UDP session).
const NOFILE_WANTED: u64 = 65_536;
/// Buffer asked for by the steering test's sockets: they carry a few probes only.
const STEERING_TEST_BUFFER: usize = 64 << 10;

pub(super) fn all() -> Vec<Finding> {
    let want = DriverConfig::default().socket_buffer;
    let mut out = Vec::new();
    out.push(uring());
    match probe_udp(want) {
        Ok(f) => {
            out.push(Finding::ok(
                "UDP socket",
                "a worker's socket opens on loopback (PKTINFO, ECN, no fragmentation)",
            ));
            out.push(gso(f.gso));
            out.push(gro(f.gro));
            out.push(buffer_limits(want));
            out.push(buffer_force(&f.buffers, want));
        }
        Err(e) => out.push(Finding::not_ok(
            "UDP socket",
            Status::Fail,
            format!("cannot open a UDP socket on loopback: {e}"),
            "allow socket(AF_INET/AF_INET6, SOCK_DGRAM) and bind in the sandbox \
             (seccomp, SELinux/AppArmor, container network namespace)",
        )),
    }
    out.push(nofile());
    out.push(cpus());
    out.push(governor());
    out.push(steering());
    out.push(tuning_drift());
    out
}

fn probe_udp(want: usize) -> std::io::Result<engine::UdpFeatures> {
    engine::probe_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), want)
        .or_else(|_| engine::probe_udp(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)), want))
}

fn uring() -> Finding {
    let Err(reason) = engine::uring_available() else {
        return Finding::ok("io_uring", "available: workers use the io_uring driver");
    };
    let mut f = Finding::not_ok(
        "io_uring",
        Status::Warn,
        format!("{reason}; workers fall back to the epoll driver"),
        "",
    );
    let mut fixes = Vec::new();
    match host::read("/proc/sys/kernel/io_uring_disabled").as_deref() {
        Some("0") | None => {}
        Some(v) => {
            f.notes.push(format!(
                "kernel.io_uring_disabled = {v} (1: only kernel.io_uring_group, 2: nobody)"
            ));
            fixes.push("sysctl -w kernel.io_uring_disabled=0".to_string());
        }
    }
    let status = host::read("/proc/self/status").unwrap_or_default();
    match host::status_field(&status, "Seccomp") {
        Some("0") | None => {}
        Some(mode) => {
            f.notes.push(format!(
                "seccomp mode {mode}: a filter such as a container's default profile may \
                 refuse io_uring_setup"
            ));
            fixes.push(
                "run under a seccomp profile that allows io_uring_setup, io_uring_enter and \
                 io_uring_register"
                    .to_string(),
            );
        }
    }
    let limits = host::read("/proc/self/limits").unwrap_or_default();
    if let Some((soft, _)) = host::limit(&limits, "Max locked memory") {
        f.notes.push(format!(
            "RLIMIT_MEMLOCK soft limit {soft} bytes (kernels before 5.12 charge rings to it)"
        ));
        if !soft.at_least(1 << 20) {
            fixes.push("ulimit -l unlimited (LimitMEMLOCK=infinity in a unit)".to_string());
        }
    }
    if fixes.is_empty() {
        fixes.push("a kernel with io_uring (5.11 or newer), or keep the epoll driver".into());
    }
    f.fix = Some(fixes.join("; "));
    f
}

fn gso(supported: bool) -> Finding {
    if supported {
        Finding::ok(
            "GSO",
            format!(
                "UDP_SEGMENT accepted: one send carries up to {} datagrams",
                engine::MAX_GSO_SEGMENTS
            ),
        )
    } else {
        Finding::not_ok(
            "GSO",
            Status::Warn,
            "UDP_SEGMENT refused: one datagram per send, several times the CPU per byte",
            "a kernel with UDP GSO (4.18 or newer)",
        )
    }
}

fn gro(supported: bool) -> Finding {
    if supported {
        Finding::ok("GRO", "UDP_GRO on: receives coalesce datagrams of one flow")
    } else {
        Finding::not_ok(
            "GRO",
            Status::Warn,
            "UDP_GRO refused: one datagram per receive",
            "a kernel with UDP GRO (5.0 or newer)",
        )
    }
}

/// net.core.rmem_max / wmem_max against the buffer workers ask for.
fn buffer_limits(want: usize) -> Finding {
    let read = |key: &str| host::sysctl(key).and_then(|v| v.parse::<usize>().ok());
    let (rmem, wmem) = (read("net.core.rmem_max"), read("net.core.wmem_max"));
    let show = |v: Option<usize>| v.map_or("unknown".to_string(), |v| v.to_string());
    let detail = format!(
        "net.core.rmem_max = {}, wmem_max = {}; workers ask for {want}",
        show(rmem),
        show(wmem)
    );
    if rmem.is_some_and(|r| r >= want) && wmem.is_some_and(|w| w >= want) {
        Finding::ok("buffer limits", detail)
    } else {
        Finding::not_ok(
            "buffer limits",
            Status::Warn,
            format!("{detail}: without CAP_NET_ADMIN buffers are capped there"),
            format!(
                "sysctl -w net.core.rmem_max={want} net.core.wmem_max={want} \
                 (tuning/apply.sh keeps it)"
            ),
        )
    }
}

/// Whether this process may force its buffers past the sysctl limits (CAP_NET_ADMIN).
fn buffer_force(got: &engine::BufferReport, want: usize) -> Finding {
    let sizes = format!(
        "{} KiB receive / {} KiB send of {} KiB asked",
        got.rcvbuf / 1024,
        got.sndbuf / 1024,
        want / 1024
    );
    if got.forced {
        Finding::ok(
            "SO_RCVBUFFORCE",
            format!("permitted (CAP_NET_ADMIN): {sizes}"),
        )
    } else if got.rcvbuf >= want && got.sndbuf >= want {
        Finding::ok(
            "SO_RCVBUFFORCE",
            format!("not permitted, not needed: {sizes}"),
        )
    } else {
        Finding::not_ok(
            "SO_RCVBUFFORCE",
            Status::Warn,
            format!("not permitted (no CAP_NET_ADMIN): {sizes}"),
            "raise net.core.rmem_max/wmem_max, or grant CAP_NET_ADMIN \
             (AmbientCapabilities in tuning/quelay.service)",
        )
    }
}

fn nofile() -> Finding {
    let limits = host::read("/proc/self/limits").unwrap_or_default();
    let Some((soft, hard)) = host::limit(&limits, "Max open files") else {
        return Finding::not_ok(
            "RLIMIT_NOFILE",
            Status::Warn,
            "cannot read /proc/self/limits",
            "check `ulimit -n` (want 65536 or more)",
        );
    };
    let detail = format!("soft {soft}, hard {hard}");
    let fix = "LimitNOFILE=1048576 in the unit (tuning/quelay.service), or `ulimit -n 1048576` \
               before starting";
    if !soft.at_least(NOFILE_CRITICAL) {
        Finding::not_ok(
            "RLIMIT_NOFILE",
            Status::Fail,
            format!("{detail}: below {NOFILE_CRITICAL}, too few for the workers' sockets"),
            fix,
        )
    } else if !soft.at_least(NOFILE_WANTED) {
        Finding::not_ok(
            "RLIMIT_NOFILE",
            Status::Warn,
            format!("{detail}: below {NOFILE_WANTED}; each relayed stream holds a socket"),
            fix,
        )
    } else {
        Finding::ok("RLIMIT_NOFILE", detail)
    }
}

fn cpus() -> Finding {
    let online = host::read("/sys/devices/system/cpu/online")
        .and_then(|l| host::cpu_list_len(&l))
        .map_or("unknown".to_string(), |n| n.to_string());
    let usable = worker::default_workers();
    Finding::ok(
        "CPUs",
        format!("{online} online, {usable} usable: one worker each by default"),
    )
}

fn governor() -> Finding {
    let mut governors: Vec<(String, usize)> = Vec::new();
    let entries = fs::read_dir("/sys/devices/system/cpu")
        .into_iter()
        .flatten();
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_cpu = name
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        if let Some(g) = host::read(e.path().join("cpufreq/scaling_governor")) {
            match governors.iter_mut().find(|(name, _)| *name == g) {
                Some((_, n)) => *n += 1,
                None => governors.push((g, 1)),
            }
        }
    }
    governors.sort();
    let list = governors
        .iter()
        .map(|(g, n)| format!("{g} on {n} CPU{}", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ");
    if governors.is_empty() {
        Finding::ok(
            "cpufreq",
            "no cpufreq: fixed clock, or frequency managed by the host",
        )
    } else if governors.iter().all(|(g, _)| g == "performance") {
        Finding::ok("cpufreq", list)
    } else {
        Finding::not_ok(
            "cpufreq",
            Status::Warn,
            format!("{list}: clocks ramp up late for bursts of packets"),
            "cpupower frequency-set -g performance \
             (or: echo performance | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)",
        )
    }
}

/// Binds a loopback reuseport group like the server's and attaches CID steering to it.
fn steering() -> Finding {
    let n = worker::default_workers().clamp(2, worker::MAX_WORKERS);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let result = worker::bind_group(addr, n, STEERING_TEST_BUFFER)
        .and_then(|(socks, _)| engine::steer_group(&socks, engine::WORKER_OFFSET));
    match result {
        Ok(()) => Finding::ok(
            "CID steering",
            format!("reuseport BPF attached and self-tested on {n} sockets"),
        ),
        Err(e) => Finding::not_ok(
            "CID steering",
            Status::Warn,
            format!(
                "{e}: packets reach workers by the kernel's 4-tuple hash and are forwarded \
                 between workers"
            ),
            "a kernel with SO_ATTACH_REUSEPORT_CBPF (4.6 or newer), not blocked by seccomp",
        ),
    }
}

/// The running kernel against tuning/sysctl.conf.
fn tuning_drift() -> Finding {
    let settings = match sysctl::tuning() {
        Ok(s) => s,
        Err(e) => {
            return Finding::not_ok("sysctl", Status::Warn, e, "fix tuning/sysctl.conf");
        }
    };
    let mut notes = Vec::new();
    let mut fixes = Vec::new();
    let mut present = 0;
    for s in &settings {
        let Some(have) = host::sysctl(&s.key) else {
            continue;
        };
        present += 1;
        if !s.satisfied_by(&have) {
            notes.push(format!("{}: have {have}, want {}", s.key, s.wanted()));
            if s.want.contains(' ') {
                fixes.push(format!("{}=\"{}\"", s.key, s.want));
            } else {
                fixes.push(format!("{}={}", s.key, s.want));
            }
        }
    }
    if notes.is_empty() {
        return Finding::ok(
            "sysctl",
            format!("all {present} settings of tuning/sysctl.conf in place"),
        );
    }
    let mut f = Finding::not_ok(
        "sysctl",
        Status::Warn,
        format!(
            "{} of {present} settings of tuning/sysctl.conf differ",
            notes.len()
        ),
        format!(
            "tuning/apply.sh (persists them), or now: sysctl -w {}",
            fixes.join(" ")
        ),
    );
    f.notes = notes;
    f
}
