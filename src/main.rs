//! `quelay`: parse arguments, start a role. No logic lives here.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mimalloc::MiMalloc;

use quelay::client;
use quelay::cluster;
use quelay::server;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(name = "quelay", version, about = "A Hysteria2-compatible QUIC relay")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Run a server.
    Server(ServerArgs),
    /// Run a client: local SOCKS5/HTTP proxies and forwarders over Hysteria2.
    Client(ClientArgs),
    /// Check this host for what quelay needs; print each finding and its fix.
    Doctor(DoctorArgs),
    /// Ask every node of a cluster: merged traffic and online users, or a kick.
    Cluster(ClusterArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// Config file (the reference server's YAML keys).
    #[arg(short = 'c', long = "config")]
    config: Option<std::path::PathBuf>,
    /// Validate the config file and exit.
    #[arg(long)]
    check: bool,
    /// On SIGTERM/SIGINT, seconds streams in progress get to finish before connections close.
    #[arg(long, default_value_t = server::run::DRAIN_TIMEOUT.as_secs())]
    drain_timeout: u64,
}

#[derive(Args)]
struct ClientArgs {
    /// A share URI (`hysteria2://auth@host:port/?sni=...`) instead of a config file.
    uri: Option<String>,
    /// Config file (the reference client's YAML keys).
    #[arg(short = 'c', long = "config", conflicts_with = "uri")]
    config: Option<std::path::PathBuf>,
    /// With a URI: serve SOCKS5 on this address.
    #[arg(long, requires = "uri")]
    socks5: Option<SocketAddr>,
    /// With a URI: serve an HTTP proxy on this address.
    #[arg(long, requires = "uri")]
    http: Option<SocketAddr>,
    /// Validate the config file and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
struct DoctorArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
    /// A server config: also check what it needs from the host (the port-hopping redirect
    /// of a `listen` range).
    #[arg(short = 'c', long = "config")]
    config: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct ClusterArgs {
    /// The cluster's node list: each node's traffic-stats API and secret.
    #[arg(short = 'c', long = "config")]
    config: std::path::PathBuf,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Every node's /traffic and /online, summed per user, and each node's state.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Reset each node's counters after reading them (the API's `?clear=1`).
        #[arg(long)]
        clear: bool,
    },
    /// Close these users' connections on every node (clients may reconnect).
    Kick {
        #[arg(required = true)]
        users: Vec<String>,
    },
}

fn main() -> ExitCode {
    quelay::worker::init_logging();
    let cli = Cli::parse();
    quelay::worker::exit_on_panic();
    let result = match cli.role {
        Role::Server(a) => serve(a),
        Role::Client(a) => run_client(a),
        Role::Doctor(a) => return quelay::doctor::run(a.json, a.config.as_deref()),
        Role::Cluster(a) => {
            let command = match a.command {
                ClusterCommand::Stats { json, clear } => cluster::Command::Stats { json, clear },
                ClusterCommand::Kick { users } => cluster::Command::Kick { users },
            };
            return cluster::run(&a.config, command);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quelay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(a: ServerArgs) -> Result<(), String> {
    let path = a
        .config
        .ok_or("a config file is needed: quelay server -c server.yaml")?;
    let cfg = server::run::load(&path)?;
    if a.check {
        println!("{}: OK", path.display());
        return Ok(());
    }
    let srv = server::run::start(&cfg)?;
    if let Some(uri) = &srv.share_uri {
        println!("no tls section: using a generated self-signed certificate");
        println!("share URI: {uri}");
    }
    println!("listening on {}", srv.addr);
    let drain = Duration::from_secs(a.drain_timeout);
    server::run::wait(srv, Some(&path), drain)
}

fn run_client(a: ClientArgs) -> Result<(), String> {
    let cfg = match (&a.config, &a.uri) {
        (Some(path), _) => client::run::load(path)?,
        (None, Some(uri)) => {
            let mut cfg =
                quelay::config::client_from_uri(uri, a.socks5).map_err(|e| e.to_string())?;
            if let Some(listen) = a.http {
                cfg.http = Some(quelay::config::HttpProxy {
                    listen,
                    auth: None,
                    realm: quelay::config::DEFAULT_HTTP_REALM.to_string(),
                });
            }
            cfg
        }
        (None, None) => {
            return Err(
                "a config file or a URI is needed: quelay client -c client.yaml, \
                        or quelay client hysteria2://... --socks5 127.0.0.1:1080"
                    .into(),
            )
        }
    };
    if a.check {
        match &a.config {
            Some(path) => println!("{}: OK", path.display()),
            None => println!("OK"),
        }
        return Ok(());
    }
    let c = client::run::start(&cfg)?;
    for l in &c.listening {
        println!("{l}");
    }
    client::run::wait(c)
}
