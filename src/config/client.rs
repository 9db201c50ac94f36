//! The validated client configuration: every value checked, every default filled in.
//! Built by [`super::parse_client`] or [`super::client_from_uri`]; the defaults below are
//! the official client's (`app/cmd/client.go`, `core/client/config.go`) unless marked quelay.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::server::{
    Bandwidth, Congestion, Engine, Obfs, DEFAULT_CONN_RECEIVE_WINDOW,
    DEFAULT_MAX_CONN_RECEIVE_WINDOW, DEFAULT_MAX_IDLE_TIMEOUT, DEFAULT_STREAM_RECEIVE_WINDOW,
};
use crate::proto::Host;

/// Official default server port when `server` has none: HTTP/3's.
pub const DEFAULT_SERVER_PORT: u16 = 443;
/// Official default interval between keep-alive PINGs.
pub const DEFAULT_KEEP_ALIVE_PERIOD: Duration = Duration::from_secs(10);
/// Official allowed `quic.keepAlivePeriod` range.
pub const KEEP_ALIVE_PERIOD_RANGE: (Duration, Duration) =
    (Duration::from_secs(2), Duration::from_secs(60));
/// Official default idle timeout of a UDP forwarding session.
pub const DEFAULT_UDP_FORWARDING_TIMEOUT: Duration = Duration::from_secs(60);
/// Official `http.realm` when none is given (sent in `Proxy-Authenticate`).
pub const DEFAULT_HTTP_REALM: &str = "Hysteria";
/// quelay: most connections to the server per worker by default. The pool opens what the
/// waiting requests need; this bound is past what a client runs into first: at the
/// official server's 1024 streams per connection it is a million streams, and even at 16
/// streams per connection more than the local sockets a process may hold by default.
pub const DEFAULT_POOL_MAX_CONNECTIONS: usize = 4096;
/// quelay: the highest `pool.maxConnections`.
pub const MAX_POOL_CONNECTIONS: usize = 65536;
/// quelay: how long a request may wait for stream credit before another connection opens.
pub const DEFAULT_OPEN_WAIT_THRESHOLD: Duration = Duration::from_millis(200);
/// quelay: how long a request may wait for a stream at all before it is refused.
pub const DEFAULT_STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// quelay: allowed `pool.streamOpenTimeout` range. Below a second a handshake on a slow
/// path cannot finish; above two minutes the application has long given up.
pub const STREAM_OPEN_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(120));

/// A whole client config (`quelay client -c FILE`), keys as in the official client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// `server`: where the Hysteria2 server listens (UDP). Host names are resolved when
    /// connecting, not here. With port hopping, the port is the lowest of the set.
    pub server: HostPort,
    /// Port hopping: `server` with a port list or range (`host:20000-50000`, or a share
    /// URI's port part or `mport`), and `transport.udp`'s intervals.
    pub hop: Option<PortHopping>,
    /// `auth`: the `hysteria-auth` value, a password or `user:pass`. May be empty.
    pub auth: String,
    /// `obfs`.
    pub obfs: Obfs,
    /// `tls`.
    pub tls: ClientTls,
    /// `quic`.
    pub quic: ClientQuic,
    /// `congestion`: the controller used when Brutal is not.
    pub congestion: Congestion,
    /// `bandwidth`.
    pub bandwidth: ClientBandwidth,
    /// `fastOpen`: answer the local application before the server has confirmed the
    /// TCPRequest (the confirmation is read with the first reply bytes).
    pub fast_open: bool,
    /// `lazy`: connect to the server on the first request, not at start-up.
    pub lazy: bool,
    /// `socks5`: a SOCKS5 proxy server for local applications.
    pub socks5: Option<Socks5>,
    /// `http`: an HTTP proxy server (CONNECT and plain requests).
    pub http: Option<HttpProxy>,
    /// `tcpForwarding`: local TCP ports relayed to fixed destinations.
    pub tcp_forwarding: Vec<TcpForwarding>,
    /// `udpForwarding`: local UDP ports relayed to fixed destinations.
    pub udp_forwarding: Vec<UdpForwarding>,
    /// `pool` (quelay): how many connections carry the streams.
    pub pool: Pool,
    /// `engine` (quelay): workers and I/O driver.
    pub engine: Engine,
}

/// The reference's default hop interval.
pub const DEFAULT_HOP_INTERVAL: Duration = Duration::from_secs(30);
/// The reference's shortest hop interval.
pub const MIN_HOP_INTERVAL: Duration = Duration::from_secs(5);
/// Tests only: a shorter floor for the hop interval (a duration such as `1s`), so that a
/// test sees many hops in a few seconds.
pub const TEST_MIN_HOP_INTERVAL_ENV: &str = "QUELAY_TEST_MIN_HOP_INTERVAL";

/// Port hopping: the server's ports and how often to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHopping {
    /// Sorted, each once, never 0.
    pub ports: Vec<u16>,
    /// `transport.udp.hopInterval` (both the same), or `minHopInterval`/`maxHopInterval`:
    /// each interval is drawn uniformly from `min..=max`.
    pub min_interval: Duration,
    pub max_interval: Duration,
}

impl ClientConfig {
    /// The TLS server name to send: `tls.sni`, or else the host of `server` (as the
    /// official client does; an IP address host sends no SNI).
    pub fn server_name(&self) -> String {
        match &self.tls.sni {
            Some(sni) => sni.clone(),
            None => host_text(&self.server.host),
        }
    }
}

/// A `host:port` that is dialled by name or address: `server`, forwarding `remote`s.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// A domain (resolved when used) or an IP address.
    pub host: Host,
    /// Never 0.
    pub port: u16,
}

impl fmt::Display for HostPort {
    /// `host:port`, with brackets around IPv6 literals: the form TCPRequest carries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            host => write!(f, "{}:{}", host_text(host), self.port),
        }
    }
}

fn host_text(host: &Host) -> String {
    match host {
        Host::Ip(ip) => ip.to_string(),
        Host::Domain(name) => name.clone(),
    }
}

/// `tls`: how the server's certificate is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// `tls.sni`; `None` = the host of `server` (see [`ClientConfig::server_name`]).
    pub sni: Option<String>,
    /// `tls.insecure`: do not verify the certificate chain or name.
    pub insecure: bool,
    /// `tls.pinSHA256`: SHA-256 of a certificate the server presents (DER); the official
    /// client accepts a match on any certificate of the chain. It is checked on top of
    /// chain verification, or instead of it with `insecure`.
    pub pin_sha256: Option<[u8; 32]>,
    /// `tls.ca`: PEM file of roots to verify against instead of the system's.
    pub ca: Option<PathBuf>,
}

/// `quic`: transport parameters. Zero in the file means the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientQuic {
    /// `quic.initStreamReceiveWindow`, bytes.
    pub init_stream_receive_window: u64,
    /// `quic.maxStreamReceiveWindow`, bytes (auto-tuning ceiling).
    pub max_stream_receive_window: u64,
    /// `quic.initConnReceiveWindow`, bytes.
    pub init_conn_receive_window: u64,
    /// `quic.maxConnReceiveWindow`, bytes.
    pub max_conn_receive_window: u64,
    /// `quic.maxIdleTimeout`, 4 s to 120 s.
    pub max_idle_timeout: Duration,
    /// `quic.keepAlivePeriod`, 2 s to 60 s.
    pub keep_alive_period: Duration,
    /// `quic.disablePathMTUDiscovery`.
    pub disable_path_mtu_discovery: bool,
    /// `quic.sockopts`: applied to every UDP socket the client opens for QUIC.
    pub sockopts: SockOpts,
}

/// `quic.sockopts` (Linux), as the reference applies them to each QUIC socket, those of port
/// hopping included. Unset (`""`, 0) is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SockOpts {
    /// `bindInterface`: SO_BINDTODEVICE.
    pub bind_interface: Option<String>,
    /// `fwmark`: SO_MARK, for policy routing (CAP_NET_ADMIN).
    pub fwmark: Option<u32>,
}

impl ClientQuic {
    /// The PING interval to run with: `keep_alive_period`, but at most half the idle
    /// timeout, as quic-go does, so that `maxIdleTimeout: 5s` with the default 10 s
    /// keep-alive does not let the connection idle out.
    pub fn keep_alive_interval(&self) -> Duration {
        self.keep_alive_period.min(self.max_idle_timeout / 2)
    }
}

impl Default for ClientQuic {
    fn default() -> Self {
        Self {
            init_stream_receive_window: DEFAULT_STREAM_RECEIVE_WINDOW,
            max_stream_receive_window: DEFAULT_STREAM_RECEIVE_WINDOW,
            init_conn_receive_window: DEFAULT_CONN_RECEIVE_WINDOW,
            max_conn_receive_window: DEFAULT_MAX_CONN_RECEIVE_WINDOW,
            max_idle_timeout: DEFAULT_MAX_IDLE_TIMEOUT,
            keep_alive_period: DEFAULT_KEEP_ALIVE_PERIOD,
            disable_path_mtu_discovery: false,
            sockopts: SockOpts::default(),
        }
    }
}

/// `bandwidth`: the same keys as the server's, without its minimum rate.
pub type ClientBandwidth = Bandwidth;

/// User name and password that local applications must present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyAuth {
    /// `username`, non-empty.
    pub username: String,
    /// `password`, non-empty.
    pub password: String,
}

/// `socks5`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socks5 {
    /// `socks5.listen` (TCP, and UDP for UDP ASSOCIATE).
    pub listen: SocketAddr,
    /// `socks5.username` and `socks5.password`; `None` = no authentication.
    pub auth: Option<ProxyAuth>,
    /// `socks5.disableUDP`: refuse UDP ASSOCIATE.
    pub disable_udp: bool,
}

/// `http`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProxy {
    /// `http.listen` (TCP).
    pub listen: SocketAddr,
    /// `http.username` and `http.password` (Basic); `None` = no authentication.
    pub auth: Option<ProxyAuth>,
    /// `http.realm`, default [`DEFAULT_HTTP_REALM`].
    pub realm: String,
}

/// One `tcpForwarding` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpForwarding {
    /// `listen`: the local TCP address.
    pub listen: SocketAddr,
    /// `remote`: where the server connects each accepted connection.
    pub remote: HostPort,
}

/// One `udpForwarding` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpForwarding {
    /// `listen`: the local UDP address.
    pub listen: SocketAddr,
    /// `remote`: where the server sends each local peer's datagrams.
    pub remote: HostPort,
    /// `timeout`: a local peer's session ends after this long without traffic.
    pub timeout: Duration,
}

/// `pool` (quelay): streams are spread over as many connections to the server as the
/// waiting requests need, because one connection's stream credit
/// (`initial_max_streams_bidi`, 1024 on the official server) can be the bottleneck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// `pool.maxConnections`: the most connections per worker, 1 to
    /// [`MAX_POOL_CONNECTIONS`].
    pub max_connections: usize,
    /// `pool.openWaitThreshold`: before the pool knows how many streams the server grants
    /// a connection, a request waiting longer than this opens another connection. Shorter
    /// than `stream_open_timeout`.
    pub open_wait_threshold: Duration,
    /// `pool.streamOpenTimeout`: a request still without a stream after this is refused
    /// (SOCKS5/HTTP error, forwarded connection closed).
    pub stream_open_timeout: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_POOL_MAX_CONNECTIONS,
            open_wait_threshold: DEFAULT_OPEN_WAIT_THRESHOLD,
            stream_open_timeout: DEFAULT_STREAM_OPEN_TIMEOUT,
        }
    }
}
