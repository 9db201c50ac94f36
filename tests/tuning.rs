//! tuning/apply.sh, check.sh and nic.sh run by bash against a scratch root holding fake
//! /proc/sys files: nothing on this host is read or changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The values the fake kernel starts with: all below tuning/sysctl.conf, tab-separated like
/// the real files.
const LOW: &[(&str, &str)] = &[
    ("net.core.rmem_max", "212992"),
    ("net.core.wmem_max", "212992"),
    ("net.core.rmem_default", "212992"),
    ("net.core.wmem_default", "212992"),
    ("net.core.optmem_max", "20480"),
    ("net.ipv4.udp_mem", "1000\t2000\t3000"),
    ("net.core.netdev_max_backlog", "1000"),
    ("net.core.somaxconn", "128"),
    ("net.ipv4.ip_local_port_range", "32768\t60999"),
    ("net.ipv4.tcp_rmem", "4096\t87380\t6291456"),
    ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
    ("fs.file-max", "100000"),
    ("fs.nr_open", "65536"),
    ("kernel.io_uring_disabled", "2"),
];

/// A scratch directory removed on drop (tests/support is not shared with this file).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "quelay-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn proc_path(root: &Path, key: &str) -> PathBuf {
    root.join("proc/sys").join(key.replace('.', "/"))
}

/// A root whose /proc/sys holds `LOW`.
fn fake_root() -> TempDir {
    let t = TempDir::new("tuning");
    for (key, value) in LOW {
        let p = proc_path(t.path(), key);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("{value}\n")).unwrap();
    }
    t
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn read_key(root: &Path, key: &str) -> String {
    words(&fs::read_to_string(proc_path(root, key)).unwrap())
}

/// Every file under `root` with its contents, to show a run changed nothing.
fn snapshot(root: &Path) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push((p.clone(), String::new()));
                walk(&p, out);
            } else {
                out.push((p.clone(), fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

fn script(name: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tuning")
        .join(name);
    Command::new("bash")
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", path.display()))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The settings of tuning/sysctl.conf as (key, value), read by the parser `quelay doctor`
/// uses: the scripts and the doctor must agree on them.
fn wanted() -> Vec<(String, String)> {
    quelay::doctor::sysctl::tuning()
        .expect("tuning/sysctl.conf parses")
        .into_iter()
        .map(|s| (s.key, s.want))
        .collect()
}

#[test]
fn apply_check_revert() {
    let t = fake_root();
    let root = t.path().to_str().unwrap();
    let installed = t.path().join("etc/sysctl.d/90-quelay.conf");
    let previous = t.path().join("var/lib/quelay/sysctl.previous");
    let want = wanted();
    assert_eq!(
        want.len(),
        LOW.len(),
        "every key of tuning/sysctl.conf needs a fake"
    );

    // Before: check.sh sees the drift.
    let o = script("check.sh", &["--root", root]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "check.sh on low values:\n{}",
        stdout(&o)
    );

    // Dry run: names every key, changes nothing.
    let before = snapshot(t.path());
    let o = script("apply.sh", &["--root", root, "--dry-run"]);
    assert_ok(&o, "apply.sh --dry-run");
    let out = stdout(&o);
    for (key, _) in &want {
        assert!(
            out.contains(key.as_str()),
            "dry run does not name {key}:\n{out}"
        );
    }
    assert!(out.contains("would"), "{out}");
    assert_eq!(snapshot(t.path()), before, "--dry-run changed files");

    // Apply: values set, file installed, previous values recorded.
    let o = script("apply.sh", &["--root", root]);
    assert_ok(&o, "apply.sh");
    for (key, value) in &want {
        assert_eq!(&read_key(t.path(), key), value, "{key} after apply");
    }
    let conf = fs::read_to_string(&installed).expect("installed sysctl.d file");
    for (key, value) in &want {
        assert!(
            conf.contains(&format!("{key} = {value}\n")),
            "{key} missing:\n{conf}"
        );
    }
    let recorded = fs::read_to_string(&previous).expect("previous values file");
    for (key, value) in LOW {
        assert!(
            recorded.contains(&format!("{key} = {}\n", words(value))),
            "{key} not recorded:\n{recorded}"
        );
    }

    // Again: nothing to do, the record keeps the original values.
    let o = script("apply.sh", &["--root", root]);
    assert_ok(&o, "second apply.sh");
    assert_eq!(fs::read_to_string(&previous).unwrap(), recorded);
    assert_eq!(fs::read_to_string(&installed).unwrap(), conf);

    let o = script("check.sh", &["--root", root]);
    assert_ok(&o, "check.sh after apply");

    // A larger value of a floor is not drift; a lowered one is, and is named.
    fs::write(proc_path(t.path(), "net.core.rmem_max"), "67108864\n").unwrap();
    let o = script("check.sh", &["--root", root]);
    assert_ok(&o, "check.sh with a larger rmem_max");
    fs::write(proc_path(t.path(), "net.core.somaxconn"), "512\n").unwrap();
    let o = script("check.sh", &["--root", root]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("net.core.somaxconn: have 512, want 4096"),
        "{}",
        stdout(&o)
    );
    // An exact key drifts either way.
    fs::write(proc_path(t.path(), "net.core.somaxconn"), "4096\n").unwrap();
    fs::write(proc_path(t.path(), "kernel.io_uring_disabled"), "1\n").unwrap();
    let o = script("check.sh", &["--root", root]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("kernel.io_uring_disabled: have 1, want 0"));

    // Revert: every original value back, the installed file and the record gone.
    let o = script("apply.sh", &["--root", root, "--revert"]);
    assert_ok(&o, "apply.sh --revert");
    for (key, value) in LOW {
        assert_eq!(read_key(t.path(), key), words(value), "{key} after revert");
    }
    assert!(!installed.exists(), "installed file left after revert");
    assert!(!previous.exists(), "record left after revert");
}

#[test]
fn apply_keeps_larger_values_of_floors() {
    let t = fake_root();
    let root = t.path().to_str().unwrap();
    fs::write(proc_path(t.path(), "net.core.rmem_max"), "67108864\n").unwrap();
    fs::write(
        proc_path(t.path(), "net.ipv4.tcp_rmem"),
        "4096\t131072\t33554432\n",
    )
    .unwrap();
    fs::remove_file(proc_path(t.path(), "kernel.io_uring_disabled")).unwrap();
    let o = script("apply.sh", &["--root", root]);
    assert_ok(&o, "apply.sh");
    assert!(
        stdout(&o).contains("kernel.io_uring_disabled: not in this kernel"),
        "{}",
        stdout(&o)
    );
    assert_eq!(read_key(t.path(), "net.core.rmem_max"), "67108864");
    assert_eq!(
        read_key(t.path(), "net.ipv4.tcp_rmem"),
        "4096 131072 33554432"
    );
    let recorded = fs::read_to_string(t.path().join("var/lib/quelay/sysctl.previous")).unwrap();
    assert!(!recorded.contains("net.core.rmem_max"), "{recorded}");
    let o = script("check.sh", &["--root", root]);
    assert_ok(&o, "check.sh");
}

#[test]
fn scripts_refuse_bad_arguments() {
    let o = script("apply.sh", &["--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let t = TempDir::new("tuning-empty");
    let o = script("check.sh", &["--root", t.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("proc/sys does not exist"));
    let o = script("nic.sh", &["--dry-run", "--workers", "0"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn nic_dry_run_prints_and_changes_nothing() {
    let t = TempDir::new("nic");
    let root = t.path();
    fs::create_dir_all(root.join("proc/irq")).unwrap();
    fs::create_dir_all(root.join("sys/devices/system/cpu")).unwrap();
    fs::write(root.join("sys/devices/system/cpu/online"), "0-3\n").unwrap();
    fs::write(
        root.join("proc/interrupts"),
        "           CPU0       CPU1       CPU2       CPU3\n\
         \x2024:          1          0          0          0  IO-APIC   5-edge   ACPI:Ged\n\
         \x2050:          0          0          0          0  PCI-MSI 1-edge      eth0-TxRx-0\n\
         \x2051:          0          0          0          0  PCI-MSI 2-edge      eth0-TxRx-1\n\
         \x2052:          0          0          0          0  PCI-MSI 3-edge      eth0-TxRx-2\n\
         \x2053:          0          0          0          0  PCI-MSI 4-edge      eth1-TxRx-0\n\
         NMI:          0          0          0          0   Non-maskable interrupts\n",
    )
    .unwrap();
    let before = snapshot(root);
    let o = script(
        "nic.sh",
        &[
            "--dry-run",
            "--iface",
            "eth0",
            "--workers",
            "2",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_ok(&o, "nic.sh --dry-run");
    let out = stdout(&o);
    for line in [
        "would run: ethtool -K eth0 gro on gso on tx-udp-segmentation on rx-udp-gro-forwarding on",
        "would run: ethtool -N eth0 rx-flow-hash udp4 sdfn",
        "would run: ethtool -N eth0 rx-flow-hash udp6 sdfn",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?}:\n{out}");
    }
    // Queue i goes to worker i mod 2's CPU; eth1 is left alone.
    let irq = |n: u32, cpu: u32| {
        format!(
            "would run: echo {cpu} > {}/proc/irq/{n}/smp_affinity_list",
            root.display()
        )
    };
    for (n, cpu) in [(50, 0), (51, 1), (52, 0)] {
        assert!(out.lines().any(|l| l == irq(n, cpu)), "IRQ {n}:\n{out}");
    }
    assert!(!out.contains("/proc/irq/53/"), "{out}");
    assert!(
        out.contains("interface eth0 not found"),
        "missing interface not reported:\n{out}"
    );
    for l in out.lines() {
        assert!(
            l.starts_with("would run: ") || l.starts_with("note: "),
            "dry run did more than print: {l}"
        );
    }
    assert_eq!(snapshot(root), before, "--dry-run changed files");
}

#[test]
fn nic_dry_run_on_this_host() {
    // The host's own /proc and /sys, whatever NIC it has: still only prints.
    let o = script(
        "nic.sh",
        &["--dry-run", "--iface", "eth0", "--workers", "2"],
    );
    assert_ok(&o, "nic.sh --dry-run on this host");
    let out = stdout(&o);
    assert!(
        out.contains("would run: ethtool -K eth0 gro on gso on"),
        "{out}"
    );
    assert!(
        out.contains("would run: ethtool -N eth0 rx-flow-hash udp4 sdfn"),
        "{out}"
    );
    assert!(!out.contains("running: "), "{out}");
}

#[test]
fn port_hopping_dry_run_prints_the_redirect_and_bad_input_fails() {
    let o = script(
        "port-hopping.sh",
        &["--dry-run", "20000-20100,30000,25-20", "443"],
    );
    assert_ok(&o, "port-hopping.sh --dry-run");
    let out = stdout(&o);
    assert!(out.contains("table inet quelay_hop_443 {"), "{out}");
    assert!(
        out.contains("udp dport { 20000-20100, 30000, 20-25 } counter redirect to :443"),
        "{out}"
    );
    assert!(out.contains("fib daddr type local udp dport"), "{out}");
    let o = script(
        "port-hopping.sh",
        &["--dry-run", "--iface", "eth0", "5000", "443"],
    );
    assert_ok(&o, "port-hopping.sh --iface");
    assert!(
        stdout(&o).contains("iifname \"eth0\" udp dport { 5000 }"),
        "{}",
        stdout(&o)
    );
    // A listen address of its own: matched and sent to, as the server's own rules do.
    let o = script(
        "port-hopping.sh",
        &["--dry-run", "--addr", "192.0.2.7", "5000-5001", "443"],
    );
    assert_ok(&o, "port-hopping.sh --addr");
    let out = stdout(&o);
    assert!(
        out.contains("ip daddr 192.0.2.7 udp dport { 5000-5001 } counter dnat ip to 192.0.2.7:443"),
        "{out}"
    );
    assert!(!out.contains("redirect") && !out.contains("fib"), "{out}");
    let o = script(
        "port-hopping.sh",
        &["--dry-run", "--addr", "2001:db8::7", "5000", "443"],
    );
    assert_ok(&o, "port-hopping.sh --addr (IPv6)");
    assert!(
        stdout(&o).contains(
            "ip6 daddr 2001:db8::7 udp dport { 5000 } counter dnat ip6 to [2001:db8::7]:443"
        ),
        "{}",
        stdout(&o)
    );
    let o = script("port-hopping.sh", &["--dry-run", "--revert", "443"]);
    assert_ok(&o, "port-hopping.sh --revert --dry-run");
    assert!(stdout(&o).contains("nft delete table inet quelay_hop_443"));
    for bad in [
        &["--dry-run", "20000-", "443"][..],
        &["--dry-run", "http", "443"],
        &["--dry-run", "20000", "70000"],
        &["--dry-run", "20000"],
        &["--dry-run", "--addr", "example.com", "20000", "443"],
    ] {
        let o = script("port-hopping.sh", bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stdout(&o));
    }
}
