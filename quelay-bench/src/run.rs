//! `quelay-bench quic`: runs [`LoadApp`] on a group of client workers and reports.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::load::{LoadApp, LoadConfig, LoadStats};
use super::{Mode, ALPN};
use quelay::engine::{self, DriverConfig, IoKind};
use quelay::metrics::Snapshot;
use quelay::quic::{self, QuicParams, Verify};
use quelay::worker::{self, GroupConfig};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub server: SocketAddr,
    pub server_name: String,
    pub mode: Mode,
    pub bytes: u64,
    pub connections: usize,
    pub streams: usize,
    pub workers: usize,
    pub io: Option<IoKind>,
    pub driver: DriverConfig,
    pub pin: bool,
    pub timeout: Duration,
    pub quic: QuicParams,
    /// Send with Brutal at this rate (bytes/s) on every connection; `None` keeps
    /// `quic.congestion`.
    pub brutal_rate: Option<u64>,
}

impl LoadOptions {
    pub fn new(server: SocketAddr) -> Self {
        LoadOptions {
            server,
            server_name: "localhost".into(),
            mode: Mode::Echo,
            bytes: 1 << 20,
            connections: 1,
            streams: 1,
            workers: 1,
            io: None,
            driver: DriverConfig::default(),
            pin: false,
            timeout: Duration::from_secs(120),
            quic: QuicParams::default(),
            brutal_rate: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadReport {
    pub secs: f64,
    /// From the first payload byte received to the last (0 if fewer than two arrived).
    pub receive_secs: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub streams_done: u64,
    pub connections_done: u64,
    pub errors: u64,
    pub messages: Vec<String>,
    pub timed_out: bool,
    pub client: Snapshot,
    pub io: IoKind,
}

impl LoadReport {
    /// Payload bytes of the direction the mode measures.
    pub fn goodput_bytes(&self, mode: Mode) -> u64 {
        match mode {
            Mode::Upload => self.bytes_sent,
            Mode::Download | Mode::Echo => self.bytes_received,
        }
    }

    pub fn ok(&self) -> bool {
        self.errors == 0 && !self.timed_out
    }
}

/// Runs the workload and waits for it (or the timeout).
pub fn run(opts: &LoadOptions) -> io::Result<LoadReport> {
    let n = opts.workers.clamp(1, worker::MAX_WORKERS);
    let crypto = quic::client_crypto(Verify::Insecure, &[ALPN]).map_err(io::Error::other)?;
    let client_config = quic::client_config(crypto, &opts.quic);
    let specs = worker::client_specs(
        opts.server,
        n,
        &client_config,
        opts.driver.socket_buffer,
        &Default::default(),
    )?;
    let stats = Arc::new(LoadStats::default());
    let cfg = GroupConfig {
        io: opts.io,
        driver: opts.driver.clone(),
        pin: opts.pin,
        obfs: None,
        windows: None,
        handshakes: None,
        hop: None,
    };
    let start = Instant::now();
    let group = worker::spawn(specs, &cfg, |id| {
        // Spread connections over workers, the first ones taking the remainder.
        let i = id.0 as usize;
        let share = opts.connections / n + usize::from(i < opts.connections % n);
        LoadApp::new(
            LoadConfig {
                server: opts.server,
                server_name: opts.server_name.clone(),
                mode: opts.mode,
                bytes: opts.bytes,
                connections: share,
                streams: opts.streams,
                brutal_rate: opts.brutal_rate,
            },
            stats.clone(),
        )
    })?;
    let io_kind = group.shared.io_kinds[0];
    let mut timed_out = false;
    while !group.is_finished() {
        if start.elapsed() > opts.timeout {
            timed_out = true;
            group.stop();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    let client = group.totals();
    group.join()?;
    let messages = stats
        .messages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let receive_secs = stats.receive_span().map_or(0.0, |d| d.as_secs_f64());
    Ok(LoadReport {
        secs,
        receive_secs,
        bytes_sent: stats.bytes_sent.load(Relaxed),
        bytes_received: stats.bytes_received.load(Relaxed),
        streams_done: stats.streams_done.load(Relaxed),
        connections_done: stats.connections_done.load(Relaxed),
        errors: stats.errors.load(Relaxed),
        messages,
        timed_out,
        client,
        io: io_kind,
    })
}

/// CPU seconds used by this process so far.
pub fn cpu_seconds() -> f64 {
    engine::cpu_seconds_self()
}
