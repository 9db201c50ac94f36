//! The `command` authenticator (`auth.type: command`): one process per login, as the
//! reference server runs it. The program gets the client's address, its `hysteria-auth`
//! value and its `hysteria-cc-rx` (bytes per second, as sent) as its three arguments, with no
//! shell in between, an empty stdin and the server's environment and working directory. Exit
//! status 0 accepts the client, and all of stdout, trimmed, is its auth ID (it may be
//! empty); anything else refuses it.
//!
//! It runs on the auth room's threads, off the data path. Unlike the reference, which waits
//! for as long as the program runs, a program still running at the timeout is killed, with
//! every process it started (it leads a process group of its own), and the login refused.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most bytes of stdout read: an auth ID, not a document. A program that writes more is not
/// refused for it; the rest is not read.
const MAX_STDOUT: u64 = 64 * 1024;

/// How often a running program is checked on.
const POLL: Duration = Duration::from_millis(5);

/// Runs `program addr auth tx` and waits up to `timeout`. `Ok(Some(id))` accepts;
/// `Ok(None)` is the program's "no" (a non-zero exit, or death by a signal); `Err` says why it
/// could not decide (it could not start, or ran out of time and was killed). Either refusal
/// gets the client the masquerade.
pub fn command_auth(
    program: &str,
    addr: SocketAddr,
    auth: &str,
    tx: u64,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .arg(addr.to_string())
        .arg(auth)
        .arg(tx.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("auth command {program}: {e}"))?;
    // stdout is read beside the wait, so that a program that writes more than a pipe holds
    // is not blocked by it; its reader ends when every holder of the pipe has closed it.
    let (tx_out, rx_out) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.take(MAX_STDOUT).read_to_end(&mut out);
            let _ = tx_out.send(out);
        });
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // The whole group: a script's `sleep` or `curl` would outlive it otherwise.
                if crate::engine::kill_process_group(child.id()).is_err() {
                    let _ = child.kill();
                }
                let _ = child.wait();
                return Err(format!(
                    "auth command {program}: still running after {timeout:?}, killed"
                ));
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => return Err(format!("auth command {program}: {e}")),
        }
    };
    if !status.success() {
        return Ok(None);
    }
    // A child of the program may still hold stdout: what came until the deadline counts.
    let left = deadline.saturating_duration_since(Instant::now());
    let out = rx_out.recv_timeout(left).unwrap_or_default();
    Ok(Some(String::from_utf8_lossy(&out).trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// An executable shell script in a fresh directory; the directory lives as long as the
    /// returned guard.
    fn script(body: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("auth.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
        (dir, path.to_string_lossy().into_owned())
    }

    fn addr() -> SocketAddr {
        "[2001:db8::7]:4433".parse().expect("literal")
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn exit_zero_accepts_with_the_trimmed_stdout_as_the_id() {
        let (_d, s) = script(r#"printf '  %s|%s|%s\n\n' "$1" "$2" "$3""#);
        let id = command_auth(&s, addr(), "pass word;$(rm -rf /)", 125_000, T);
        assert_eq!(
            id,
            Ok(Some(
                "[2001:db8::7]:4433|pass word;$(rm -rf /)|125000".into()
            )),
            "the arguments arrive verbatim, with no shell in between"
        );
        let (_d, s) = script("exit 0");
        assert_eq!(command_auth(&s, addr(), "x", 0, T), Ok(Some(String::new())));
    }

    #[test]
    fn a_non_zero_exit_or_a_signal_refuses() {
        let (_d, s) = script("echo alice; exit 1");
        assert_eq!(command_auth(&s, addr(), "x", 0, T), Ok(None));
        let (_d, s) = script("kill -9 $$");
        assert_eq!(command_auth(&s, addr(), "x", 0, T), Ok(None));
    }

    #[test]
    fn a_program_that_cannot_start_refuses_with_the_reason() {
        let e = command_auth("/nonexistent/auth", addr(), "x", 0, T).unwrap_err();
        assert!(e.contains("/nonexistent/auth"), "{e}");
    }

    #[test]
    fn a_program_still_running_at_the_timeout_is_killed_with_its_children_and_refuses() {
        // The script starts a child, writes its pid, and waits for it.
        let (dir, s) = script("sleep 30 & echo $! > \"$0.child\"; wait; touch \"$0.done\"");
        let start = Instant::now();
        let e = command_auth(&s, addr(), "x", 0, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(!dir.path().join("auth.sh.done").exists());
        let child = std::fs::read_to_string(dir.path().join("auth.sh.child"))
            .expect("the script started its child");
        // Killed: gone, or a zombie until whoever inherited it reaps it.
        let stat = format!("/proc/{}/stat", child.trim());
        let alive = || std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z "));
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !alive(),
            "the script's child {} outlived the timeout",
            child.trim()
        );
    }

    #[test]
    fn much_output_neither_blocks_the_program_nor_the_login() {
        let (_d, s) = script("head -c 1000000 /dev/zero | tr '\\0' a; exit 0");
        let id = command_auth(&s, addr(), "x", 0, T).expect("accepted");
        assert_eq!(id.map(|i| i.len()), Some(MAX_STDOUT as usize));
    }
}
