//! The figures of a `quelay-bench hy2` run: a progress line, a summary table, or one JSON object
//! (the contract comparison scripts read).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use super::stats::Stats;
use super::{Hy2Options, Scenario};

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub server: String,
    pub connections: usize,
    pub streams: usize,
    pub concurrency: usize,
    /// Payload bytes moved in the measured direction (both directions for rr).
    pub bytes: u64,
    pub secs: f64,
    pub goodput_bps: f64,
    /// Completed bulk streams or request/responses.
    pub requests: u64,
    pub rps: f64,
    /// Request latency (rr), setup latency (connect) or round-trip time (udp).
    pub latency_us: Option<Latency>,
    pub handshakes: u64,
    pub handshakes_per_sec: f64,
    pub streams_opened_per_sec: f64,
    pub streams_closed_per_sec: f64,
    pub udp_sent: u64,
    pub udp_received: u64,
    /// Percent of UDP packets without an echo.
    pub udp_loss: f64,
    pub errors: u64,
    pub error_messages: Vec<String>,
    /// The run ended early (a fatal error or the timeout): figures cover what was done.
    pub partial: bool,
}

impl Report {
    /// The figures so far, over `elapsed` (rates of timed scenarios use at most
    /// `--duration`).
    pub fn collect(o: &Hy2Options, s: &Stats, elapsed: Duration, partial: bool) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let window = if o.scenario.timed() {
            secs.min(o.duration.as_secs_f64().max(1e-9))
        } else {
            secs
        };
        let sent = Stats::get(&s.bytes_sent);
        let received = Stats::get(&s.bytes_received);
        let bytes = match o.scenario {
            Scenario::BulkUp => sent,
            Scenario::BulkDown => received,
            _ => sent + received,
        };
        let requests = Stats::get(&s.completed);
        let handshakes = Stats::get(&s.handshakes);
        let h = s.latency();
        let latency_us = (!h.is_empty()).then(|| Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        });
        let udp_sent = Stats::get(&s.udp_sent);
        let udp_received = Stats::get(&s.udp_received);
        let udp_loss = if udp_sent == 0 {
            0.0
        } else {
            100.0 * udp_sent.saturating_sub(udp_received) as f64 / udp_sent as f64
        };
        Report {
            scenario: o.scenario.name().to_owned(),
            server: o.server.to_string(),
            connections: match o.scenario {
                Scenario::Connect => 0,
                _ => o.connections,
            },
            streams: o.streams,
            concurrency: o.concurrency,
            bytes,
            secs,
            goodput_bps: bytes as f64 * 8.0 / window,
            requests,
            rps: requests as f64 / window,
            latency_us,
            handshakes,
            handshakes_per_sec: handshakes as f64 / window,
            streams_opened_per_sec: Stats::get(&s.streams_opened) as f64 / window,
            streams_closed_per_sec: Stats::get(&s.streams_closed) as f64 / window,
            udp_sent,
            udp_received,
            udp_loss,
            errors: Stats::get(&s.errors),
            error_messages: s.messages(),
            partial,
        }
    }

    pub fn ok(&self) -> bool {
        self.errors == 0 && !self.partial
    }

    pub fn to_json(&self) -> String {
        let lat = self
            .latency_us
            .map(|l| json!({"p50": l.p50, "p90": l.p90, "p99": l.p99, "max": l.max}));
        json!({
            "scenario": self.scenario,
            "server": self.server,
            "connections": self.connections,
            "streams": self.streams,
            "concurrency": self.concurrency,
            "bytes": self.bytes,
            "secs": round(self.secs, 4),
            "goodput_bps": round(self.goodput_bps, 0),
            "requests": self.requests,
            "rps": round(self.rps, 1),
            "latency_us": lat,
            "handshakes": self.handshakes,
            "handshakes_per_sec": round(self.handshakes_per_sec, 1),
            "streams_opened_per_sec": round(self.streams_opened_per_sec, 1),
            "streams_closed_per_sec": round(self.streams_closed_per_sec, 1),
            "udp": {
                "sent": self.udp_sent,
                "received": self.udp_received,
                "loss": round(self.udp_loss, 3),
            },
            "errors": self.errors,
            "error_messages": self.error_messages,
            "partial": self.partial,
        })
        .to_string()
    }

    /// One line for a terminal, rewritten every second.
    pub fn progress_line(&self) -> String {
        let mut l = format!("[{:5.1} s] {}", self.secs, self.scenario);
        match self.scenario.as_str() {
            "bulk-up" | "bulk-down" => {
                let _ = write!(
                    l,
                    "  {}  {} streams done",
                    human_bits(self.goodput_bps),
                    self.requests
                );
            }
            "rr" => {
                let _ = write!(l, "  {} req  {:.0} req/s", self.requests, self.rps);
            }
            "connect" => {
                let _ = write!(
                    l,
                    "  {} handshakes  {:.0}/s",
                    self.handshakes, self.handshakes_per_sec
                );
            }
            _ => {
                let _ = write!(l, "  sent {}  echoed {}", self.udp_sent, self.udp_received);
            }
        }
        let _ = write!(l, "  errors {}", self.errors);
        l
    }

    /// The summary table printed at the end.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            ("scenario", self.scenario.clone()),
            ("server", self.server.clone()),
        ];
        let lat = |rows: &mut Vec<(&str, String)>, what: &'static str| {
            if let Some(l) = self.latency_us {
                rows.push((
                    what,
                    format!(
                        "p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
                        l.p50, l.p90, l.p99, l.max
                    ),
                ));
            }
        };
        match self.scenario.as_str() {
            "bulk-up" | "bulk-down" => {
                rows.push((
                    "shape",
                    format!("{} conn × {} streams", self.connections, self.streams),
                ));
                rows.push((
                    "bytes",
                    format!("{} ({})", self.bytes, human_bytes(self.bytes)),
                ));
                rows.push(("duration", format!("{:.3} s", self.secs)));
                rows.push(("goodput", human_bits(self.goodput_bps)));
                rows.push(("streams done", self.requests.to_string()));
            }
            "rr" => {
                rows.push((
                    "shape",
                    format!(
                        "{} in flight over {} conn",
                        self.concurrency, self.connections
                    ),
                ));
                rows.push(("duration", format!("{:.3} s", self.secs)));
                rows.push(("requests", self.requests.to_string()));
                rows.push(("requests/s", format!("{:.0}", self.rps)));
                lat(&mut rows, "latency");
                rows.push((
                    "streams/s",
                    format!(
                        "opened {:.0}, closed {:.0}",
                        self.streams_opened_per_sec, self.streams_closed_per_sec
                    ),
                ));
            }
            "connect" => {
                rows.push(("in flight", self.concurrency.to_string()));
                rows.push(("duration", format!("{:.3} s", self.secs)));
                rows.push(("handshakes", self.handshakes.to_string()));
                rows.push(("handshakes/s", format!("{:.0}", self.handshakes_per_sec)));
                lat(&mut rows, "setup");
            }
            _ => {
                rows.push(("duration", format!("{:.3} s", self.secs)));
                rows.push(("sent", self.udp_sent.to_string()));
                rows.push(("received", self.udp_received.to_string()));
                rows.push(("loss", format!("{:.2} %", self.udp_loss)));
                rows.push((
                    "echoes/s",
                    format!("{:.0}", self.udp_received as f64 / self.secs),
                ));
                lat(&mut rows, "rtt");
            }
        }
        rows.push(("errors", self.errors.to_string()));
        if self.partial {
            rows.push(("partial", "yes: the run ended early".into()));
        }
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:>14}  {v}");
        }
        for m in &self.error_messages {
            let _ = writeln!(out, "{:>14}  {m}", "error");
        }
        out
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn human_bits(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.3} Gbit/s", bps / 1e9)
    } else {
        format!("{:.1} Mbit/s", bps / 1e6)
    }
}

fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_contract_keys() {
        let r = Report {
            scenario: "rr".into(),
            latency_us: Some(Latency {
                p50: 1,
                p90: 2,
                p99: 3,
                max: 4,
            }),
            partial: true,
            ..Report::default()
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for k in [
            "scenario",
            "server",
            "connections",
            "streams",
            "concurrency",
            "bytes",
            "secs",
            "goodput_bps",
            "requests",
            "rps",
            "latency_us",
            "handshakes_per_sec",
            "udp",
            "errors",
            "error_messages",
            "partial",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert_eq!(v["latency_us"]["p99"], 3);
        assert_eq!(v["udp"]["loss"], 0.0);
        assert_eq!(v["partial"], true);
    }
}
