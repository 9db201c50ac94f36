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
