//! `quelay-bench`: parse arguments, start a load generator or an endpoint it measures
//! against. No logic lives here.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mimalloc::MiMalloc;

use quelay::engine::{DriverConfig, IoKind};
use quelay_bench::echo::{self, EchoOptions, Steering};
use quelay_bench::hy2::{Hy2Options, Scenario as Hy2Scenario};
use quelay_bench::{self as bench, run::LoadOptions, Mode};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "quelay-bench",
    version,
    about = "Load generators for quelay and the endpoints they measure against"
)]
struct Cli {
    #[command(subcommand)]
    kind: BenchKind,
}

#[derive(Args, Clone)]
struct EngineArgs {
    /// Worker threads (default: one per online CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// I/O driver: uring or epoll (default: uring when the host allows it).
    #[arg(long)]
    io: Option<IoKind>,
    /// Send one datagram per syscall instead of GSO batches.
    #[arg(long)]
    no_gso: bool,
    /// Do not ask the kernel to coalesce received datagrams (GRO).
    #[arg(long)]
    no_gro: bool,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    no_pin: bool,
}

impl EngineArgs {
    fn driver(&self) -> DriverConfig {
        DriverConfig {
            gso: !self.no_gso,
            gro: !self.no_gro,
            ..DriverConfig::default()
        }
    }
}

#[derive(Subcommand)]
enum BenchKind {
    /// Raw QUIC load against `quelay-bench echo` (or examples/quinn_pair).
    Quic(QuicBenchArgs),
    /// Hysteria2 load against any Hysteria2 server, towards `quelay-bench target`.
    Hy2(Hy2BenchArgs),
    /// The TCP/UDP endpoint behind the server under test (runs until killed).
    Target(TargetArgs),
    /// Serve the raw QUIC workload (echo / sink / source) used to measure the engine.
    Echo(EchoArgs),
}

#[derive(Args)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// How datagrams reach their worker: bpf (kernel, by CID) or hash (4-tuple + forwarding).
    #[arg(long, default_value = "bpf")]
    steering: Steering,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct TargetArgs {
    /// Address for both TCP and UDP.
    #[arg(long)]
    listen: SocketAddr,
    /// Event-loop threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Args)]
struct Hy2BenchArgs {
    /// The Hysteria2 server.
    #[arg(long)]
    server: SocketAddr,
    /// The password (or user:pass) the server expects.
    #[arg(long)]
    auth: String,
    /// Where the server connects: `quelay-bench target`'s address (host:port).
    #[arg(long)]
    target: String,
    /// bulk-up, bulk-down, rr, connect or udp.
    #[arg(long)]
    scenario: Hy2Scenario,
    /// TLS server name (default: none, the server's IP). Certificates are not verified.
    #[arg(long)]
    sni: Option<String>,
    /// Salamander obfuscation password.
    #[arg(long)]
    obfs: Option<String>,
    /// Client worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// QUIC connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Bulk: concurrent streams per connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Bulk: bytes per stream.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// rr: streams in flight in all; connect: handshakes in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// rr: bytes each way; udp: packet size.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// udp: packets per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// rr, connect, udp: seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Give up (with a partial report) after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// QUIC idle timeout in seconds: how soon a silent server counts as gone.
    #[arg(long, default_value_t = 5.0)]
    idle_timeout: f64,
    /// I/O driver: uring or epoll (default: uring when the host allows it).
    #[arg(long)]
    io: Option<IoKind>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct QuicBenchArgs {
    #[arg(long)]
    server: SocketAddr,
    /// echo, upload or download.
    #[arg(long, default_value = "upload")]
    mode: Mode,
    /// Bytes per stream.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

fn main() -> ExitCode {
    quelay::worker::init_logging();
    let cli = Cli::parse();
    quelay::worker::exit_on_panic();
    let result = match cli.kind {
        BenchKind::Quic(a) => bench_quic(a),
        BenchKind::Hy2(a) => bench_hy2(a),
        BenchKind::Target(a) => bench_target(a),
        BenchKind::Echo(a) => serve_echo(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quelay-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_echo(a: EchoArgs) -> Result<(), String> {
    let opts = EchoOptions {
        listen: a.listen,
        workers: a
            .engine
            .workers
            .unwrap_or_else(quelay::worker::default_workers),
        io: a.engine.io,
        driver: a.engine.driver(),
        steering: a.steering,
        pin: !a.engine.no_pin,
        ..EchoOptions::default()
    };
    let server = echo::start(&opts).map_err(|e| format!("cannot start: {e}"))?;
    println!("listening on {}", server.addr);
    server.group.join().map_err(|e| e.to_string())
}

fn bench_quic(a: QuicBenchArgs) -> Result<(), String> {
    let mut opts = LoadOptions::new(a.server);
    opts.mode = a.mode;
    opts.bytes = a.bytes;
    opts.connections = a.connections;
    opts.streams = a.streams;
    opts.workers = a.engine.workers.unwrap_or(1);
    opts.io = a.engine.io;
    opts.driver = a.engine.driver();
    opts.pin = !a.engine.no_pin;
    opts.timeout = Duration::from_secs(a.timeout);
    let cpu0 = bench::run::cpu_seconds();
    let r = bench::run::run(&opts).map_err(|e| e.to_string())?;
    let cpu = bench::run::cpu_seconds() - cpu0;
    let bytes = r.goodput_bytes(a.mode);
    let gbps = bytes as f64 * 8.0 / r.secs / 1e9;
    if a.json {
        println!(
            "{{\"impl\":\"quelay\",\"io\":\"{}\",\"gso\":{},\"mode\":\"{:?}\",\"connections\":{},\
             \"streams\":{},\"bytes\":{},\"secs\":{:.4},\"gbps\":{:.4},\"cpu_secs\":{:.4},\
             \"errors\":{}}}",
            r.io,
            !a.engine.no_gso,
            a.mode,
            a.connections,
            a.streams,
            bytes,
            r.secs,
            gbps,
            cpu,
            r.errors + u64::from(r.timed_out)
        );
    } else {
        println!(
            "{:?} {}x{}: {} bytes in {:.2} s = {:.3} Gbit/s, client CPU {:.2} s, {} driver, {} errors",
            a.mode, a.connections, a.streams, bytes, r.secs, gbps, cpu, r.io, r.errors
        );
    }
    tracing::debug!("client counters: {:?}", r.client);
    for m in &r.messages {
        eprintln!("error: {m}");
    }
    if r.timed_out {
        return Err(format!("timed out after {} s", a.timeout));
    }
    if r.errors > 0 {
        return Err(format!("{} error(s)", r.errors));
    }
    Ok(())
}

fn secs(what: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("{what}: {e}"))
}

fn bench_hy2(a: Hy2BenchArgs) -> Result<(), String> {
    let mut o = Hy2Options::new(a.server, &a.auth, &a.target, a.scenario);
    o.sni = a.sni;
    o.obfs = a.obfs;
    o.workers = a.workers;
    o.connections = a.connections;
    o.streams = a.streams;
    o.bytes = a.bytes;
    o.concurrency = a.concurrency;
    o.size = a.size;
    o.rate = a.rate;
    o.duration = secs("--duration", a.duration)?;
    o.timeout = secs("--timeout", a.timeout)?;
    o.idle_timeout = secs("--idle-timeout", a.idle_timeout)?;
    o.io = a.io;
    o.progress = !a.json;
    let r = bench::hy2::run(&o)?;
    if a.json {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.table());
    }
    if r.partial {
        let why = r.error_messages.first().map_or("", String::as_str);
        return Err(format!("the run ended early: {why}"));
    }
    if r.errors > 0 {
        return Err(format!("{} error(s)", r.errors));
    }
    Ok(())
}

fn bench_target(a: TargetArgs) -> Result<(), String> {
    let t = bench::target::start(a.listen, a.threads)
        .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    println!("listening on {} (tcp and udp)", t.addr);
    bench::target::wait()
}
