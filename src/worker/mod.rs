//! Thread-per-core workers. Each worker is pinned to one CPU and owns, without locks, its
//! driver (ring + UDP socket), its quinn-proto `Endpoint`, its connections and timers.
//! Workers meet only through the forwarding channels (datagrams that reached the wrong
//! socket) and the shared stop flag.

pub mod app;
mod event_loop;
mod hop;
pub mod pipe;
pub mod route;
pub mod sockets;
mod table;
pub mod transport;

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::BytesMut;
use crossbeam_channel::{bounded, Sender};
use quinn_proto::{ClientConfig, Endpoint, EndpointConfig, ServerConfig};

pub use app::{App, Io};
pub use hop::HopPlan;
pub use sockets::{bind_group, bind_listeners, Listener, SocketGroup, Steering};
pub use table::ConnTable;
pub use transport::{obfuscator, quic_params, window_policy, QuicSection};

use crate::engine::{self, DriverConfig, IoKind, Waker};
use crate::limits::handshake::{HandshakeGate, HandshakeLimits};
use crate::limits::window::WindowPolicy;
use crate::metrics::{self, Snapshot, WorkerCounters};
use crate::proto::salamander::Salamander;

/// A worker's index: its position in the SO_REUSEPORT group and byte 0 of its CIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkerId(pub u8);

/// Most workers a group may have: the worker index must fit in a CID byte.
pub const MAX_WORKERS: usize = 128;
// `engine.workers` is checked against the config's copy of this bound.
const _: () = assert!(MAX_WORKERS == crate::config::MAX_WORKERS);

/// The default worker count of every role: one worker per online CPU.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
/// Datagrams queued for one worker by the others before new ones are dropped.
const FORWARD_QUEUE: usize = 8192;

/// A datagram handed from the worker whose socket received it to the worker that owns it.
pub struct Forwarded {
    pub peer: SocketAddr,
    pub dst_ip: Option<IpAddr>,
    pub ecn: u8,
    pub data: BytesMut,
}

/// What workers of one group share.
pub struct Shared {
    pub counters: Vec<Arc<WorkerCounters>>,
    pub forward: Vec<Sender<Forwarded>>,
    pub wakers: Vec<Waker>,
    pub stop: AtomicBool,
    /// Refuse new connections (a server draining before it stops); live ones go on.
    pub refuse_new: AtomicBool,
    pub io_kinds: Vec<IoKind>,
}

/// How to start one worker.
pub struct WorkerSpec {
    pub socket: UdpSocket,
    pub endpoint_config: Arc<EndpointConfig>,
    pub server_config: Option<Arc<ServerConfig>>,
    pub client_config: Option<ClientConfig>,
    /// Where this server's CIDs carry the worker (and, in a cluster, the node).
    pub layout: crate::quic::cid::CidLayout,
}

/// Options common to a group.
#[derive(Clone, Debug, Default)]
pub struct GroupConfig {
    /// `None`: io_uring when available, else epoll.
    pub io: Option<IoKind>,
    pub driver: DriverConfig,
    /// Pin worker i to CPU i (modulo the CPUs there are).
    pub pin: bool,
    /// Salamander obfuscation of every datagram, when configured.
    pub obfs: Option<Arc<Salamander>>,
    /// Receive windows sized by consumption under a budget; `None`: quinn-proto's fixed
    /// windows from the transport config.
    pub windows: Option<Arc<WindowPolicy>>,
    /// A server's admission of new handshakes, per worker (Retry under load, a rate);
    /// `None`: every handshake starts.
    pub handshakes: Option<HandshakeLimits>,
    /// Client port hopping, when the server gives several ports.
    pub hop: Option<HopPlan>,
}

/// A running group of workers.
pub struct Group {
    pub shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
}

impl Group {
    /// Counters summed over all workers.
    pub fn totals(&self) -> Snapshot {
        metrics::total(&self.shared.counters)
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Asks every worker to close its connections and leave its loop.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in &self.shared.wakers {
            w.wake();
        }
    }

    /// Waits for every worker to leave its loop (they leave on `stop` or when their app
    /// is done).
    pub fn join(self) -> io::Result<()> {
        let mut failed = 0;
        for h in self.handles {
            if h.join().is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            return Err(io::Error::other(format!("{failed} worker(s) panicked")));
        }
        Ok(())
    }

    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }
}

/// Starts one worker per spec. Each thread opens its own driver (an io_uring must be
/// set up by the thread that submits to it), then runs its loop with `make_app(id)`.
pub fn spawn<A, F>(specs: Vec<WorkerSpec>, cfg: &GroupConfig, make_app: F) -> io::Result<Group>
where
    A: App,
    F: Fn(WorkerId) -> A,
{
    let n = specs.len();
    if n == 0 || n > MAX_WORKERS {
        return Err(io::Error::other(format!(
            "worker count {n} out of range 1..={MAX_WORKERS}"
        )));
    }
    let cores = if cfg.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (fwd_tx, fwd_rx): (Vec<_>, Vec<_>) = (0..n).map(|_| bounded(FORWARD_QUEUE)).unzip();
    let counters: Vec<_> = (0..n)
        .map(|_| Arc::new(WorkerCounters::default()))
        .collect();
    let local_addrs = specs
        .iter()
        .map(|s| s.socket.local_addr())
        .collect::<io::Result<Vec<_>>>()?;

    // Threads open their drivers, report back, then wait for the shared state.
    let mut handles = Vec::with_capacity(n);
    let mut ready = Vec::with_capacity(n);
    let mut go = Vec::with_capacity(n);
    for (i, (spec, fwd_rx)) in specs.into_iter().zip(fwd_rx).enumerate() {
        let (ready_tx, ready_rx) = bounded::<io::Result<(Waker, IoKind)>>(1);
        let (go_tx, go_rx) = bounded::<Option<(Arc<Shared>, A)>>(1);
        let core = cores.get(i % cores.len().max(1)).copied();
        let io = cfg.io;
        let dcfg = cfg.driver.clone();
        let counters = counters[i].clone();
        let obfs = cfg.obfs.clone();
        let windows = cfg.windows.clone();
        let handshakes = cfg.handshakes;
        let hop = cfg.hop.clone();
        let h = std::thread::Builder::new()
            .name(format!("quelay-w{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                crate::quic::warm_up_rng();
                let driver = match engine::open(spec.socket, io, &dcfg) {
                    Ok(d) => {
                        let _ = ready_tx.send(Ok((d.waker(), d.kind())));
                        d
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let Ok(Some((shared, app))) = go_rx.recv() else {
                    return;
                };
                let id = WorkerId(i as u8);
                let endpoint =
                    Endpoint::new(spec.endpoint_config, spec.server_config.clone(), true, None);
                let worker = event_loop::Worker {
                    id,
                    driver,
                    forwarded: fwd_rx,
                    state: event_loop::State {
                        id,
                        workers: n,
                        endpoint,
                        server_config: spec.server_config,
                        client_config: spec.client_config,
                        layout: spec.layout,
                        conns: ConnTable::new(windows),
                        app,
                        shared,
                        counters,
                        obfs,
                        obfs_buf: Vec::new(),
                        response_buf: Vec::new(),
                        responses: Vec::new(),
                        sock_done: Vec::new(),
                        window_scan: std::time::Instant::now(),
                        gate: handshakes.map(|l| HandshakeGate::new(l, std::time::Instant::now())),
                        handshaking: Vec::new(),
                        hop: hop.and_then(|p| hop::Hop::new(p, std::time::Instant::now())),
                    },
                };
                // Fault injection for the panic policy's test (see `exit_on_panic`).
                if std::env::var(FAULT_PANIC_ENV).is_ok_and(|w| w == i.to_string()) {
                    panic!("{FAULT_PANIC_ENV}={i}: this worker panics on request");
                }
                worker.run();
            })?;
        handles.push(h);
        ready.push(ready_rx);
        go.push(go_tx);
    }
    let mut wakers = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut first_err = None;
    for r in ready {
        match r.recv() {
            Ok(Ok((w, k))) => {
                wakers.push(w);
                kinds.push(k);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(io::Error::other("worker thread died during start-up"));
            }
        }
    }
    if let Some(e) = first_err {
        for g in go {
            let _ = g.send(None);
        }
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }
    let shared = Arc::new(Shared {
        counters,
        forward: fwd_tx,
        wakers,
        stop: AtomicBool::new(false),
        refuse_new: AtomicBool::new(false),
        io_kinds: kinds,
    });
    for (i, g) in go.into_iter().enumerate() {
        let _ = g.send(Some((shared.clone(), make_app(WorkerId(i as u8)))));
    }
    Ok(Group {
        shared,
        handles,
        local_addrs,
    })
}

/// Specs for `n` client workers talking to `remote`: each its own UDP socket on an
/// ephemeral port of `remote`'s family (`buffer` bytes of buffers, options `opts`), random
/// CIDs, the same client configuration.
pub fn client_specs(
    remote: SocketAddr,
    n: usize,
    config: &ClientConfig,
    buffer: usize,
    opts: &engine::SockOpts,
) -> io::Result<Vec<WorkerSpec>> {
    let bind = if remote.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    (0..n)
        .map(|_| client_spec(bind, config, buffer, opts))
        .collect()
}

/// Specs for `n` client workers whose server may be at an address of either family (a
/// name looked up for each connection): dual-stack `[::]` sockets, which reach IPv4
/// addresses as IPv4-mapped ones; IPv4 sockets on a host without IPv6.
pub fn client_specs_any_family(
    n: usize,
    config: &ClientConfig,
    buffer: usize,
    opts: &engine::SockOpts,
) -> io::Result<Vec<WorkerSpec>> {
    (0..n)
        .map(|_| {
            client_spec(SocketAddr::from(([0u16; 8], 0)), config, buffer, opts).or_else(|e| {
                tracing::debug!("no dual-stack UDP socket ({e}): IPv4 only");
                client_spec(SocketAddr::from(([0, 0, 0, 0], 0)), config, buffer, opts)
            })
        })
        .collect()
}

fn client_spec(
    bind: SocketAddr,
    config: &ClientConfig,
    buffer: usize,
    opts: &engine::SockOpts,
) -> io::Result<WorkerSpec> {
    let (socket, _) = engine::bind_udp_with(bind, false, buffer, opts)?;
    Ok(WorkerSpec {
        socket,
        endpoint_config: Arc::new(crate::quic::client_endpoint_config()),
        server_config: None,
        client_config: Some(config.clone()),
        layout: Default::default(),
    })
}

/// Names the worker that panics at start (fault injection for tests only).
pub const FAULT_PANIC_ENV: &str = "QUELAY_FAULT_PANIC_WORKER";

/// Exit status of a process that a panic took down (EX_SOFTWARE).
pub const PANIC_EXIT: i32 = 70;

/// Logs to stderr at the level `QUELAY_LOG` names (default `info`), for every binary of the
/// project.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUELAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into files, pipes or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The panic policy of the relay processes: a panic in any thread (a worker, a helper
/// thread) ends the process with one clear log line and exit status [`PANIC_EXIT`], so the
/// service manager restarts it whole. A worker that died alone would leave its socket
/// closed, the BPF steering indices shifted and its connections stranded, while the
/// process looked alive.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(
            "thread {name} panicked: {info}; exiting with status {PANIC_EXIT} so that the \
             service manager restarts quelay"
        );
        std::process::exit(PANIC_EXIT);
    }));
}
