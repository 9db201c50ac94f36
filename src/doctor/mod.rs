//! `quelay doctor`: checks this host for what the engine needs (io_uring, GSO/GRO, socket
//! buffers, file limits, CPUs, kernel CID steering, the sysctl values of `tuning/`) and
//! prints one finding per check, with the command that fixes it when it is not ok.
//!
//! Only a host where quelay cannot run at all fails (no UDP socket, RLIMIT_NOFILE below
//! 1024); anything that merely makes it slower, such as io_uring refused (the epoll driver
//! takes over), is a warning.

mod checks;
pub mod hopping;
pub mod host;
pub mod sysctl;

use std::fmt::Write as _;
use std::process::ExitCode;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    /// quelay runs, slower or with less headroom.
    Warn,
    /// quelay cannot run.
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What was checked: `io_uring`, `GSO`, `RLIMIT_NOFILE`, ...
    pub check: &'static str,
    pub status: Status,
    /// What was found, in one line.
    pub detail: String,
    /// Supporting lines: the reasons io_uring was refused, each sysctl that drifts.
    pub notes: Vec<String>,
    /// The command (or setting) that fixes it; `None` when ok.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            check,
            status: Status::Ok,
            detail: detail.into(),
            notes: Vec::new(),
            fix: None,
        }
    }

    fn not_ok(
        check: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            check,
            status,
            detail: detail.into(),
            notes: Vec::new(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check on this host.
pub fn findings() -> Vec<Finding> {
    checks::all()
}

/// Runs the checks (and those a server `config` adds), prints them (text, or JSON with
/// `json`), and returns the exit code: failure when some check failed.
pub fn run(json: bool, config: Option<&std::path::Path>) -> ExitCode {
    let mut found = findings();
    if let Some(path) = config {
        match crate::config::load_server(path) {
            Ok((cfg, _)) => {
                if let Some(ports) = &cfg.listen_ports {
                    found.push(hopping::check(cfg.listen.port(), ports));
                }
            }
            Err(e) => found.push(Finding::not_ok(
                "config",
                Status::Fail,
                e.to_string(),
                format!("fix {}", path.display()),
            )),
        }
    }
    if json {
        println!("{}", to_json(&found));
    } else {
        print!("{}", to_text(&found));
    }
    if found.iter().any(|f| f.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn count(found: &[Finding], status: Status) -> usize {
    found.iter().filter(|f| f.status == status).count()
}

/// One line per finding (`status  check  detail`), its notes and fix indented below.
pub fn to_text(found: &[Finding]) -> String {
    let width = found.iter().map(|f| f.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in found {
        let _ = writeln!(
            out,
            "{:<5} {:<width$}  {}",
            f.status.as_str(),
            f.check,
            f.detail
        );
        let indent = 5 + 1 + width + 2;
        for n in &f.notes {
            let _ = writeln!(out, "{:indent$}- {n}", "");
        }
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "{:indent$}fix: {fix}", "");
        }
    }
    let _ = writeln!(
        out,
        "{} ok, {} warn, {} fail",
        count(found, Status::Ok),
        count(found, Status::Warn),
        count(found, Status::Fail)
    );
    out
}

/// `{"findings": [{"check", "status", "detail", "notes", "fix"}], "ok", "warn", "fail"}`.
pub fn to_json(found: &[Finding]) -> String {
    let list: Vec<serde_json::Value> = found
        .iter()
        .map(|f| {
            serde_json::json!({
                "check": f.check,
                "status": f.status.as_str(),
                "detail": f.detail,
                "notes": f.notes,
                "fix": f.fix,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "findings": list,
        "ok": count(found, Status::Ok),
        "warn": count(found, Status::Warn),
        "fail": count(found, Status::Fail),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Finding> {
        let mut drift = Finding::not_ok(
            "sysctl",
            Status::Warn,
            "1 of 2 settings drift",
            "tuning/apply.sh",
        );
        drift.notes.push("net.core.rmem_max: have 1, want 2".into());
        vec![
            Finding::ok("io_uring", "available"),
            drift,
            Finding::not_ok("UDP socket", Status::Fail, "EPERM", "allow UDP"),
        ]
    }

    #[test]
    fn text_aligns_and_counts() {
        let text = to_text(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ok    io_uring    available");
        assert_eq!(lines[1], "warn  sysctl      1 of 2 settings drift");
        assert_eq!(
            lines[2],
            "                  - net.core.rmem_max: have 1, want 2"
        );
        assert_eq!(lines[3], "                  fix: tuning/apply.sh");
        assert_eq!(lines.last(), Some(&"1 ok, 1 warn, 1 fail"));
    }

    #[test]
    fn json_round_trips() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&sample())).unwrap();
        assert_eq!(v["fail"], 1);
        assert_eq!(v["findings"][0]["check"], "io_uring");
        assert_eq!(v["findings"][0]["status"], "ok");
        assert!(v["findings"][0]["fix"].is_null());
        assert_eq!(
            v["findings"][1]["notes"][0],
            "net.core.rmem_max: have 1, want 2"
        );
    }
}
