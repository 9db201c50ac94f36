//! The Hysteria2 peers as child processes: the sing-box client (SOCKS5/HTTP "mixed" inbound,
//! hysteria2 outbound), the sing-box server, and the quelay server. Servers implement
//! `Hy2Server`, so a scenario runs unchanged against quelay and against the reference.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{
    free_port, tempdir, udp_bound, udp_bound_at, wait_tcp_port, write_cert, Child, TempDir, SNI,
};

/// The password every test server accepts.
pub const PASSWORD: &str = "secret";
/// How long a peer may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A YAML double-quoted scalar (the JSON escapes are valid YAML).
pub(super) fn yaml_str(s: &str) -> String {
    json_str(s)
}

/// Options of the sing-box client.
#[derive(Clone, Debug)]
pub struct SbOpts {
    /// `up_mbps` and `down_mbps` of the outbound: Brutal congestion control at this rate.
    /// `None` leaves them out, and the client uses BBR.
    pub up_down_mbps: Option<u32>,
    /// Salamander obfuscation password.
    pub obfs: Option<String>,
    /// TLS server name.
    pub sni: String,
    /// A PEM root to verify the server's certificate against (for `sni`); `None` does not
    /// verify it.
    pub ca: Option<std::path::PathBuf>,
    /// sing-box log level: trace, debug, info, warn, error.
    pub log_level: String,
    /// Port hopping over the server's one port (`server_ports` of that port alone) at this
    /// `hop_interval`: a new local port each time, as NAT rebinding does to a client.
    pub rebind_every: Option<String>,
}

impl Default for SbOpts {
    fn default() -> Self {
        SbOpts {
            up_down_mbps: None,
            obfs: None,
            sni: SNI.to_owned(),
            ca: None,
            log_level: "info".to_owned(),
            rebind_every: None,
        }
    }
}

/// A sing-box Hysteria2 client with a SOCKS5/HTTP proxy on a free 127.0.0.1 port. Every
/// connection and UDP association it accepts is routed to the Hysteria2 server.
pub struct SingboxClient {
    child: Child,
    socks: SocketAddr,
    _dir: TempDir,
}

impl SingboxClient {
    /// Starts the client and waits until its proxy port accepts connections. The client only
    /// dials the server when the first request comes, so this says nothing about the server.
    pub fn start(server: SocketAddr, password: &str, opts: &SbOpts) -> SingboxClient {
        let bin = super::singbox();
        let dir = tempdir();
        let socks = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut out = vec![
            r#""type": "hysteria2""#.to_owned(),
            r#""tag": "hy2-out""#.to_owned(),
            format!(r#""server": {}"#, json_str(&server.ip().to_string())),
            format!(r#""server_port": {}"#, server.port()),
            format!(r#""password": {}"#, json_str(password)),
            match &opts.ca {
                None => format!(
                    r#""tls": {{"enabled": true, "server_name": {}, "insecure": true, "alpn": ["h3"]}}"#,
                    json_str(&opts.sni)
                ),
                Some(ca) => format!(
                    r#""tls": {{"enabled": true, "server_name": {}, "certificate_path": {}, "alpn": ["h3"]}}"#,
                    json_str(&opts.sni),
                    json_str(&ca.display().to_string())
                ),
            },
        ];
        if let Some(mbps) = opts.up_down_mbps {
            out.push(format!(r#""up_mbps": {mbps}, "down_mbps": {mbps}"#));
        }
        if let Some(pw) = &opts.obfs {
            out.push(format!(
                r#""obfs": {{"type": "salamander", "password": {}}}"#,
                json_str(pw)
            ));
        }
        let config = format!(
            r#"{{
  "log": {{"level": {level}, "timestamp": true}},
  "inbounds": [{{"type": "mixed", "tag": "mixed-in", "listen": "127.0.0.1", "listen_port": {port}}}],
  "outbounds": [{{
    {out}
  }}],
  "route": {{"final": "hy2-out"}}
}}
"#,
            level = json_str(&opts.log_level),
            port = socks.port(),
            out = out.join(",\n    "),
        );
        let path = dir.join("client.json");
        fs::write(&path, config).expect("write client.json");
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("-c").arg(&path).current_dir(dir.path());
        let mut child = Child::spawn("sing-box-client", cmd, dir.path());
        child.wait_ready(
            &format!("SOCKS port {socks} accepting"),
            START_TIMEOUT,
            |_| wait_tcp_port(socks, Duration::from_millis(100)),
        );
        SingboxClient {
            child,
            socks,
            _dir: dir,
        }
    }

    /// The SOCKS5 (and HTTP proxy) address.
    pub fn socks_addr(&self) -> SocketAddr {
        self.socks
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// Options every test server understands.
#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    /// Salamander obfuscation password.
    pub obfs: Option<String>,
    /// The server's own bandwidth (up and down, Mbit/s); `None` leaves it unlimited.
    pub up_down_mbps: Option<u32>,
}

/// A Hysteria2 server for the scenarios, accepting `PASSWORD`, with its certificate for
/// hy2.test / 127.0.0.1, reaching loopback targets.
pub trait Hy2Server {
    /// The suffix of the tests that run against it.
    const NAME: &'static str;
    /// Starts a server and waits until its UDP port is bound.
    fn launch(opts: &ServerOpts) -> Self;
    /// The UDP address clients dial.
    fn addr(&self) -> SocketAddr;
    fn child(&mut self) -> &mut Child;
}

/// The sing-box Hysteria2 server (inbound) with a direct outbound: the reference peer.
pub struct SingboxServer {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl SingboxServer {
    pub fn start(password: &str, opts: &ServerOpts) -> SingboxServer {
        let bin = super::singbox();
        let dir = tempdir();
        let (cert, key) = write_cert(&dir);
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut inb = vec![
            r#""type": "hysteria2""#.to_owned(),
            r#""tag": "hy2-in""#.to_owned(),
            r#""listen": "127.0.0.1""#.to_owned(),
            format!(r#""listen_port": {}"#, addr.port()),
            format!(
                r#""users": [{{"name": "u", "password": {}}}]"#,
                json_str(password)
            ),
            format!(
                r#""tls": {{"enabled": true, "alpn": ["h3"], "certificate_path": {}, "key_path": {}}}"#,
                json_str(&cert.to_string_lossy()),
                json_str(&key.to_string_lossy())
            ),
        ];
        if let Some(mbps) = opts.up_down_mbps {
            inb.push(format!(r#""up_mbps": {mbps}, "down_mbps": {mbps}"#));
        }
        if let Some(pw) = &opts.obfs {
            inb.push(format!(
                r#""obfs": {{"type": "salamander", "password": {}}}"#,
                json_str(pw)
            ));
        }
        let config = format!(
            r#"{{
  "log": {{"level": "info", "timestamp": true}},
  "inbounds": [{{
    {inb}
  }}],
  "outbounds": [{{"type": "direct", "tag": "direct"}}]
}}
"#,
            inb = inb.join(",\n    "),
        );
        let path = dir.join("server.json");
        fs::write(&path, config).expect("write server.json");
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("-c").arg(&path).current_dir(dir.path());
        let mut child = Child::spawn("sing-box-server", cmd, dir.path());
        child.wait_ready(
            &format!("UDP port {} bound", addr.port()),
            START_TIMEOUT,
            |_| udp_bound(addr.port()),
        );
        SingboxServer {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Hy2Server for SingboxServer {
    const NAME: &'static str = "sing-box";

    fn launch(opts: &ServerOpts) -> Self {
        SingboxServer::start(PASSWORD, opts)
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// `quelay server -c server.yaml`, configured with the official Hysteria2 server keys. It can
/// be killed and started again on the same port with the same certificate and config.
pub struct QuelayServer {
    child: Child,
    addr: SocketAddr,
    config: PathBuf,
    /// Starts so far, to give each run's output files their own names.
    runs: u32,
    dir: TempDir,
    /// RLIMIT_NOFILE the server runs with, if set.
    nofile: Option<u64>,
    /// The hosts file its resolver answers from first (`QUELAY_TEST_HOSTS`), if set.
    hosts: Option<PathBuf>,
}

impl QuelayServer {
    /// Writes `server.yaml` (listen, tls, password auth with `PASSWORD`, loopback allowed,
    /// then `yaml_extra` verbatim at top level) and starts the server with QUELAY_LOG=info.
    /// Ready when its UDP port is bound; a server that exits first fails the test with its
    /// output.
    pub fn start(yaml_extra: &str) -> QuelayServer {
        Self::start_with_nofile(yaml_extra, None)
    }

    /// `start`, with RLIMIT_NOFILE set to `nofile` (through util-linux's `prlimit`) when
    /// given: the server derives its outbound-socket budget from it.
    pub fn start_with_nofile(yaml_extra: &str, nofile: Option<u64>) -> QuelayServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::start_on(addr, yaml_extra, nofile)
    }

    /// `start`, with the server's resolver answering the names listed in `hosts` (a file in
    /// /etc/hosts format, read again at every lookup) before asking the system.
    pub fn start_with_hosts(yaml_extra: &str, hosts: &Path) -> QuelayServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::start_full(addr, yaml_extra, None, Some(hosts.to_owned()))
    }

    /// `start_with_nofile`, listening on `addr`: a loopback address of either family, and a
    /// port that may be bound on the other family already (ready when `addr` itself is bound).
    pub fn start_on(addr: SocketAddr, yaml_extra: &str, nofile: Option<u64>) -> QuelayServer {
        Self::start_full(addr, yaml_extra, nofile, None)
    }

    fn start_full(
        addr: SocketAddr,
        yaml_extra: &str,
        nofile: Option<u64>,
        hosts: Option<PathBuf>,
    ) -> QuelayServer {
        let dir = tempdir();
        let (cert, key) = write_cert(&dir);
        let mut config = format!(
            "listen: {}\n\
             tls:\n  cert: {}\n  key: {}\n\
             auth:\n  type: password\n  password: {}\n\
             outboundGuard:\n  allowLoopback: true\n",
            yaml_str(&addr.to_string()),
            yaml_str(&cert.to_string_lossy()),
            yaml_str(&key.to_string_lossy()),
            yaml_str(PASSWORD),
        );
        config.push_str(yaml_extra);
        if !config.ends_with('\n') {
            config.push('\n');
        }
        let path = dir.join("server.yaml");
        fs::write(&path, config).expect("write server.yaml");
        let child = Self::spawn("quelay-server", &path, addr, &dir, nofile, hosts.as_deref());
        QuelayServer {
            child,
            addr,
            config: path,
            runs: 1,
            dir,
            nofile,
            hosts,
        }
    }

    fn spawn(
        name: &str,
        config: &Path,
        addr: SocketAddr,
        dir: &Path,
        nofile: Option<u64>,
        hosts: Option<&Path>,
    ) -> Child {
        let quelay = super::quelay_bin();
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(quelay);
                c
            }
            None => Command::new(quelay),
        };
        cmd.arg("server")
            .arg("-c")
            .arg(config)
            .env("QUELAY_LOG", "info")
            .current_dir(dir);
        if let Some(hosts) = hosts {
            cmd.env(quelay::resolve::TEST_HOSTS_ENV, hosts);
        }
        let mut child = Child::spawn(name, cmd, dir);
        child.wait_ready(&format!("UDP {addr} bound"), START_TIMEOUT, |_| {
            udp_bound_at(addr)
        });
        child
    }

    /// SIGKILL: the server vanishes without a word to its clients.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Kills the server if it still runs, then starts it again with the same config (same
    /// port, certificate and password) and waits until its UDP port is bound. Its output
    /// goes to `quelay-server.N.std{out,err}`.
    pub fn restart(&mut self) {
        self.child.kill();
        self.runs += 1;
        let name = format!("quelay-server.{}", self.runs);
        self.child = Self::spawn(
            &name,
            &self.config,
            self.addr,
            &self.dir,
            self.nofile,
            self.hosts.as_deref(),
        );
    }

    /// The YAML `ServerOpts` stand for.
    pub fn yaml_for(opts: &ServerOpts) -> String {
        let mut y = String::new();
        if let Some(pw) = &opts.obfs {
            let _ = writeln!(
                y,
                "obfs:\n  type: salamander\n  salamander:\n    password: {}",
                yaml_str(pw)
            );
        }
        if let Some(mbps) = opts.up_down_mbps {
            let _ = writeln!(y, "bandwidth:\n  up: {mbps} mbps\n  down: {mbps} mbps");
        }
        y
    }
}

impl Hy2Server for QuelayServer {
    const NAME: &'static str = "quelay";

    fn launch(opts: &ServerOpts) -> Self {
        QuelayServer::start(&QuelayServer::yaml_for(opts))
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}
