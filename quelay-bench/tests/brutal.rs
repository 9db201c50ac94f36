//! Brutal congestion control enforces its rate (DESIGN.md: "quinn paces from window/RTT; a
//! Brutal controller that returns 2·rate·RTT as its window sends faster than the rate.
//! Verify the achieved rate in a test"). An echo server sends downloads with Brutal at a
//! fixed rate; the client measures goodput from the first payload byte to the last.
//!
//! The bounds check rate enforcement, not speed: Brutal must neither exceed its rate (quinn
//! alone would send at 2.5×) nor fall far short of it on an idle loopback.

use std::sync::Mutex;
use std::time::Duration;

use quelay_bench::echo::{self, EchoOptions};
use quelay_bench::run::{self, LoadOptions};
use quelay_bench::Mode;

/// Measurements share two cores; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Large enough that the first bursts (a fresh pacing bucket, a 10 KiB window before the
/// first RTT sample) are a small part of it.
const DOWNLOAD: u64 = 40 << 20;

/// Goodput in bytes/s of one download of `DOWNLOAD` bytes, the server sending with Brutal
/// at `rate` (None: BBR).
fn download(rate: Option<u64>) -> f64 {
    let srv = echo::start(&EchoOptions {
        workers: 1,
        pin: false,
        brutal_rate: rate,
        ..EchoOptions::default()
    })
    .expect("echo server starts");
    let mut o = LoadOptions::new(srv.addr);
    o.mode = Mode::Download;
    o.bytes = DOWNLOAD;
    o.timeout = Duration::from_secs(60);
    let r = run::run(&o).expect("load client runs");
    srv.group.stop();
    srv.group.join().unwrap();
    assert!(
        r.ok(),
        "errors: {:?} (timed out: {})",
        r.messages,
        r.timed_out
    );
    assert_eq!(r.bytes_received, DOWNLOAD);
    assert!(r.receive_secs > 0.0);
    let goodput = DOWNLOAD as f64 / r.receive_secs;
    eprintln!(
        "{}: {:.2} MB/s over {:.3} s",
        rate.map_or("bbr".to_string(), |r| format!(
            "brutal {} MB/s",
            r / 1_000_000
        )),
        goodput / 1e6,
        r.receive_secs
    );
    goodput
}

fn assert_enforced(rate: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let goodput = download(Some(rate));
    let ratio = goodput / rate as f64;
    assert!(
        (0.8..=1.1).contains(&ratio),
        "Brutal at {rate} B/s achieved {goodput:.0} B/s ({ratio:.2}×)"
    );
}

#[test]
fn brutal_holds_10_megabytes_per_second() {
    assert_enforced(10_000_000);
}

#[test]
fn brutal_holds_40_megabytes_per_second() {
    assert_enforced(40_000_000);
}

#[test]
fn bbr_is_not_held_to_a_rate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let brutal = download(Some(40_000_000));
    let bbr = download(None);
    assert!(
        bbr > 1.5 * brutal,
        "BBR {bbr:.0} B/s vs Brutal {brutal:.0} B/s"
    );
}
