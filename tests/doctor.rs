//! `quelay doctor` run as a process on this host, which has io_uring enabled and UDP GSO.

use std::process::{Command, Output};

fn doctor(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_quelay"))
        .arg("doctor")
        .args(args)
        .output()
        .expect("cannot run quelay doctor");
    assert!(
        out.status.success(),
        "quelay doctor {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn text_reports_io_uring_and_gso_available() {
    let out = doctor(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |check: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no {check} line:\n{text}"))
            .to_string()
    };
    assert!(line("io_uring").starts_with("ok "), "{text}");
    assert!(line("GSO").starts_with("ok "), "{text}");
    assert!(line("GRO").starts_with("ok "), "{text}");
    for check in [
        "RLIMIT_NOFILE",
        "CPUs",
        "cpufreq",
        "sysctl",
        "SO_RCVBUFFORCE",
    ] {
        line(check);
    }
    assert!(
        text.lines().any(|l| l.ends_with(" 0 fail")),
        "no summary:\n{text}"
    );
}

#[test]
fn json_lists_every_finding() {
    let out = doctor(&["--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("quelay doctor --json prints JSON");
    let findings = v["findings"].as_array().expect("findings array");
    let status = |check: &str| {
        findings
            .iter()
            .find(|f| f["check"] == check)
            .unwrap_or_else(|| panic!("no {check} finding: {v}"))["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status("io_uring"), "ok");
    assert_eq!(status("GSO"), "ok");
    assert_eq!(status("UDP socket"), "ok");
    assert_eq!(v["fail"], 0);
    for f in findings {
        let ok = f["status"] == "ok";
        assert_eq!(f["fix"].is_null(), ok, "a fix exactly when not ok: {f}");
    }
}

/// Port hopping: `doctor -c` warns while the range's redirect is missing and reports it ok
/// once `tuning/port-hopping.sh` installed it, in a network namespace of the test's own
/// (root, `ip` and `nft`; the test fails saying so without them).
#[test]
fn config_check_finds_the_port_hopping_redirect() {
    let ns = format!("qd-{}", std::process::id());
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "`ip {}` failed (needs root and iproute2): {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run ip (install iproute2): {e}"),
        }
    };
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    ip(&["netns", "add", &ns]);
    let _ns = Netns(ns.clone());
    let dir = std::env::temp_dir().join(format!("quelay-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let cfg = dir.join("server.yaml");
    std::fs::write(
        &cfg,
        "listen: \":20000-20010,20020\"\nauth: {type: password, password: p}\n",
    )
    .expect("write server.yaml");
    let in_ns = |prog: &str, args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns, prog])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {prog} in {ns}: {e}"))
    };
    let finding = || {
        let out = in_ns(
            env!("CARGO_BIN_EXE_quelay"),
            &["doctor", "--json", "-c", cfg.to_str().expect("utf-8 path")],
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("quelay doctor --json prints JSON");
        v["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .find(|f| f["check"] == "port hopping")
            .unwrap_or_else(|| panic!("no port hopping finding: {v}"))
            .clone()
    };
    let before = finding();
    assert_eq!(before["status"], "warn", "{before}");
    assert!(
        before["fix"]
            .as_str()
            .unwrap_or("")
            .contains("tuning/port-hopping.sh 20000-20010,20020 20000"),
        "{before}"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/port-hopping.sh");
    let out = in_ns(script, &["20000-20010,20020", "20000"]);
    assert!(
        out.status.success(),
        "port-hopping.sh failed (needs nftables: apt-get install nftables): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = finding();
    assert_eq!(after["status"], "ok", "{after}");
    // Part of the range only: a warning again.
    assert!(in_ns(script, &["20000-20005", "20000"]).status.success());
    assert_eq!(finding()["status"], "warn");
    assert!(in_ns(script, &["--revert", "20000"]).status.success());
    assert_eq!(finding()["status"], "warn");
    let _ = std::fs::remove_dir_all(&dir);
}
