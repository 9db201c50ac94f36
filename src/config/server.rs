//! The validated server configuration: every value checked, every default filled in.
//! Built by [`super::parse_server`]; the defaults below are the official server's.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::proto::PortSet;

/// Official default listen port: HTTP/3's.
pub const DEFAULT_LISTEN_PORT: u16 = 443;
/// Official default stream receive window (8 MiB), initial and maximum.
pub const DEFAULT_STREAM_RECEIVE_WINDOW: u64 = 8_388_608;
/// Official default connection receive window: 5/2 of the stream window (20 MiB).
pub const DEFAULT_CONN_RECEIVE_WINDOW: u64 = DEFAULT_STREAM_RECEIVE_WINDOW * 5 / 2;
/// quelay's default ceiling for connection-window auto-tuning (64 MiB; the official default
/// equals the initial window, which turns tuning off): room to double past the initial
/// window and for five slow streams' windows beside the tuned part.
pub const DEFAULT_MAX_CONN_RECEIVE_WINDOW: u64 = 64 << 20;
/// Smallest receive window the official server accepts.
pub const MIN_RECEIVE_WINDOW: u64 = 16_384;
/// Largest value a QUIC varint (and so a flow-control limit) can carry.
pub const MAX_QUIC_VARINT: u64 = (1 << 62) - 1;
/// Official default `max_idle_timeout`.
pub const DEFAULT_MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Official allowed `max_idle_timeout` range.
pub const MAX_IDLE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(4), Duration::from_secs(120));
/// Official default concurrent bidirectional streams per connection.
pub const DEFAULT_MAX_INCOMING_STREAMS: u64 = 1024;
/// Fewest concurrent streams the official server accepts (HTTP/3 needs a few).
pub const MIN_INCOMING_STREAMS: u64 = 8;
/// Most streams a QUIC MAX_STREAMS frame can grant (RFC 9000 §4.6).
pub const MAX_INCOMING_STREAMS: u64 = 1 << 60;
/// Smallest non-zero `bandwidth.up`/`down` the official server accepts, bytes per second.
pub const MIN_BANDWIDTH: u64 = 65_536;
/// Official default UDP session idle timeout.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Official allowed UDP session idle timeout range.
pub const UDP_IDLE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(2), Duration::from_secs(600));
/// Official minimum Salamander password length, in bytes (`ErrPSKTooShort`).
pub const MIN_SALAMANDER_PASSWORD: usize = 4;
/// Official default interval between GeoIP/GeoSite database updates (one week).
pub const DEFAULT_GEO_UPDATE_INTERVAL: Duration = Duration::from_secs(168 * 3600);
/// Default `masquerade.string.statusCode`.
pub const DEFAULT_MASQUERADE_STATUS: u16 = 200;
/// Official default `resolver.<type>.timeout` (also when set to 0).
pub const DEFAULT_RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);

/// `listen` with a port list or range (port hopping).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenPorts {
    /// The list as written (`20000-50000`), for the share URI.
    pub text: String,
    /// Every port of it, sorted, each once, never 0.
    pub ports: Vec<u16>,
}

/// A whole server config (`quelay server -c FILE`), keys as in the official server.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// `listen`: the UDP address. `:PORT` becomes `[::]:PORT`, which the caller binds
    /// dual-stack (IPV6_V6ONLY off), as Go does. With port hopping, the lowest port.
    pub listen: SocketAddr,
    /// Port hopping: `listen` with a port list or range (`:20000-50000`). The server binds
    /// the lowest port; the others reach it through a redirect (`tuning/port-hopping.sh`'s
    /// table, which the server installs itself when it is missing).
    pub listen_ports: Option<ListenPorts>,
    /// `tls`. `None` when the file has no `tls` section: the caller generates a self-signed
    /// certificate (the official server would refuse to start).
    pub tls: Option<Tls>,
    /// `acme`: certificates obtained and renewed from an ACME CA. Never set together with
    /// `tls`.
    pub acme: Option<Acme>,
    /// `obfs`.
    pub obfs: Obfs,
    /// `quic`.
    pub quic: Quic,
    /// `congestion`: the controller used when Brutal is not.
    pub congestion: Congestion,
    /// `bandwidth`.
    pub bandwidth: Bandwidth,
    /// `ignoreClientBandwidth`: never use Brutal; answer `hysteria-cc-rx: auto`.
    pub ignore_client_bandwidth: bool,
    /// `speedTest`: serve the official speed-test pseudo-destination.
    pub speed_test: bool,
    /// `disableUDP`: refuse UDP relaying (`hysteria-udp: false`).
    pub disable_udp: bool,
    /// `udpIdleTimeout`: how long an idle UDP session keeps its socket.
    pub udp_idle_timeout: Duration,
    /// `auth`.
    pub auth: Auth,
    /// `sniff`; `None` unless `sniff.enable` is true.
    pub sniff: Option<Sniff>,
    /// `resolver`: how the names of relay targets are looked up.
    pub resolver: Resolver,
    /// `acl`; `None` when neither `acl.file` nor `acl.inline` is set.
    pub acl: Option<Acl>,
    /// `outbounds`, in order (ACL rules name them; without `acl` the first takes
    /// everything). Empty: the built-in direct outbound (mode auto) takes everything.
    pub outbounds: Vec<Outbound>,
    /// `trafficStats`; `None` when `trafficStats.listen` is not set.
    pub traffic_stats: Option<TrafficStats>,
    /// `masquerade`.
    pub masquerade: Masquerade,
    /// `outboundGuard` (quelay): which destinations clients may not reach.
    pub outbound_guard: OutboundGuard,
    /// `limits` (quelay): stream and connection caps.
    pub limits: Limits,
    /// `engine` (quelay): workers and I/O driver.
    pub engine: Engine,
    /// `metrics` (quelay); `None` when `metrics.listen` is not set.
    pub metrics: Option<Metrics>,
    /// `cluster` (quelay): this server is one node of several behind one address.
    pub cluster: Option<Cluster>,
}

/// `cluster`: one node of several behind a balancer that routes by connection ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// `cluster.nodeId` (0 to 255): the node byte of the server ID in every connection ID.
    pub node_id: u8,
    /// `cluster.configId` (0 to 6, default 0): QUIC-LB's config rotation bits.
    pub config_id: u8,
    /// `cluster.keyFile`: the secret every node shares (at least 32 bytes), read at start:
    /// the stateless-reset and token keys derive from it.
    pub key_file: PathBuf,
}

/// `tls`: certificate files and client checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// `tls.cert`: PEM chain, leaf first. Relative paths are relative to the working
    /// directory, as in the official server.
    pub cert: PathBuf,
    /// `tls.key`: PEM private key.
    pub key: PathBuf,
    /// `tls.sniGuard`.
    pub sni_guard: SniGuard,
    /// `tls.clientCA`: require client certificates signed by this PEM CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Let's Encrypt's production directory (`acme.ca: letsencrypt`, the default).
pub const LETSENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// ZeroSSL's directory (`acme.ca: zerossl`).
pub const ZEROSSL_DIRECTORY: &str = "https://acme.zerossl.com/v2/DV90";
/// Where ZeroSSL hands out the External Account Binding of an email address.
pub const ZEROSSL_EAB_URL: &str = "https://api.zerossl.com/acme/eab-credentials-email";
/// The HTTP-01 port the CA connects to when `acme.http.altPort` is 0 or absent.
pub const DEFAULT_ACME_HTTP_PORT: u16 = 80;
/// The TLS-ALPN-01 port the CA connects to when `acme.tls.altPort` is 0 or absent.
pub const DEFAULT_ACME_TLS_PORT: u16 = 443;

/// `acme`: one certificate for `domains`, from an ACME CA, kept in `dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acme {
    /// `acme.domains`: the names of the certificate, lowercase, at least one.
    pub domains: Vec<String>,
    /// `acme.email`: the account's contact ("" for none; ZeroSSL needs one).
    pub email: String,
    /// `acme.ca`: which CA.
    pub ca: AcmeCa,
    /// `acme.dir`: storage for the account and certificate. `None`: `$HYSTERIA_ACME_DIR`,
    /// else `./acme`, resolved when the server starts.
    pub dir: Option<PathBuf>,
    /// `acme.listenHost`: where the challenge listeners bind (`None`: every interface).
    pub listen_host: Option<std::net::IpAddr>,
    /// The HTTP-01 listener's port (`acme.http.altPort`, legacy `altHTTPPort`); `None`
    /// when HTTP-01 is not offered.
    pub http_port: Option<u16>,
    /// The TLS-ALPN-01 listener's TCP port (`acme.tls.altPort`, legacy `altTLSALPNPort`);
    /// `None` when TLS-ALPN-01 is not offered.
    pub tls_port: Option<u16>,
    /// `acme.dns` (`acme.type: dns`): DNS-01 through a DNS provider's API; `None` when
    /// DNS-01 is not offered. The only challenge that proves wildcard names.
    pub dns: Option<AcmeDns>,
}

/// `acme.dns`: where DNS-01's TXT records are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeDns {
    /// `acme.dns.name` and the provider's keys of `acme.dns.config`.
    pub provider: DnsProvider,
    /// `acme.dns.config.zone` (quelay): the zone the records go in, lowercase without the
    /// final dot; `None`: found by asking for SOA records up the name.
    pub zone: Option<String>,
}

/// A credential from the config; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The production endpoint of Namecheap's XML API, the only one quelay's DNS client talks to.
pub const NAMECHEAP_API_ENDPOINT: &str = "https://api.namecheap.com/xml.response";
/// `rfc2136_tsig_algorithm` when absent.
pub const DEFAULT_TSIG_ALGORITHM: &str = "hmac-sha256";

/// `acme.dns.name`, with the keys of `acme.dns.config` it uses (named as there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsProvider {
    /// `cloudflare`: `cloudflare_api_token`.
    Cloudflare { api_token: Secret },
    /// `duckdns`: `duckdns_api_token`, `duckdns_override_domain` (the DuckDNS name the
    /// `_acme-challenge` records are CNAMEs to).
    DuckDns {
        api_token: Secret,
        override_domain: Option<String>,
    },
    /// `gandi` (LiveDNS v5): `gandi_api_token`, a personal access token.
    Gandi { api_token: Secret },
    /// `godaddy`: `godaddy_api_token`, `KEY:SECRET` as libdns takes it.
    GoDaddy { api_key: Secret, api_secret: Secret },
    /// `namecheap`: `namecheap_api_key`, `namecheap_api_user`, `namecheap_client_ip`
    /// (`None`: this host's public IPv4, asked of ipify at each order), and
    /// `namecheap_api_endpoint` (only [`NAMECHEAP_API_ENDPOINT`]).
    Namecheap {
        api_key: Secret,
        api_user: String,
        client_ip: Option<std::net::IpAddr>,
    },
    /// `porkbun`: `porkbun_api_key`, `porkbun_api_secret_key`.
    Porkbun { api_key: Secret, secret_key: Secret },
    /// `vultr`: `vultr_api_token`.
    Vultr { api_token: Secret },
    /// `pdns` (quelay): the PowerDNS Authoritative HTTP API: `pdns_api_url` (e.g.
    /// `http://127.0.0.1:8081`), `pdns_api_key`, `pdns_server_id` (default `localhost`).
    Pdns {
        api_url: String,
        api_key: Secret,
        server_id: Option<String>,
    },
    /// `rfc2136` (quelay): dynamic updates (RFC 2136) signed with TSIG: `rfc2136_server`
    /// (`[udp://|tcp://]IP[:PORT]`), `rfc2136_tsig_key_name`, `rfc2136_tsig_key` (base64),
    /// `rfc2136_tsig_algorithm` (default [`DEFAULT_TSIG_ALGORITHM`]).
    Rfc2136 {
        /// `udp://IP:PORT` or `tcp://IP:PORT`.
        server: String,
        key_name: String,
        key: Secret,
        /// Lowercase, e.g. `hmac-sha256`.
        algorithm: String,
    },
}

impl DnsProvider {
    /// The name `acme.dns.name` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            DnsProvider::Cloudflare { .. } => "cloudflare",
            DnsProvider::DuckDns { .. } => "duckdns",
            DnsProvider::Gandi { .. } => "gandi",
            DnsProvider::GoDaddy { .. } => "godaddy",
            DnsProvider::Namecheap { .. } => "namecheap",
            DnsProvider::Porkbun { .. } => "porkbun",
            DnsProvider::Vultr { .. } => "vultr",
            DnsProvider::Pdns { .. } => "pdns",
            DnsProvider::Rfc2136 { .. } => "rfc2136",
        }
    }
}

/// `acme.ca`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcmeCa {
    /// `letsencrypt`, `le` or empty.
    LetsEncrypt,
    /// `zerossl` or `zero`: External Account Binding fetched for `acme.email` first.
    ZeroSsl,
    /// An `https://` directory URL (Pebble, step-ca, a private CA).
    Directory(String),
}

impl AcmeCa {
    /// The directory URL.
    pub fn directory(&self) -> &str {
        match self {
            AcmeCa::LetsEncrypt => LETSENCRYPT_DIRECTORY,
            AcmeCa::ZeroSsl => ZEROSSL_DIRECTORY,
            AcmeCa::Directory(url) => url,
        }
    }
}

/// `tls.sniGuard`: whether a client's SNI must match the certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SniGuard {
    /// `dns-san` (default): if the certificate has DNS SANs, the SNI must match one.
    #[default]
    DnsSan,
    /// `strict`: the SNI must always match.
    Strict,
    /// `disable`: no check.
    Disable,
}

/// `obfs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Obfs {
    /// No obfuscation (`type` absent or `plain`).
    #[default]
    Plain,
    /// Salamander; the password's UTF-8 bytes are the key (at least 4).
    Salamander {
        /// `obfs.salamander.password`.
        password: String,
    },
}

/// `quic`: transport parameters. Zero in the file means the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quic {
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
    /// `quic.maxIncomingStreams`: concurrent bidirectional streams per connection.
    pub max_incoming_streams: u64,
    /// `quic.disablePathMTUDiscovery`.
    pub disable_path_mtu_discovery: bool,
}

impl Default for Quic {
    fn default() -> Self {
        Self {
            init_stream_receive_window: DEFAULT_STREAM_RECEIVE_WINDOW,
            max_stream_receive_window: DEFAULT_STREAM_RECEIVE_WINDOW,
            init_conn_receive_window: DEFAULT_CONN_RECEIVE_WINDOW,
            max_conn_receive_window: DEFAULT_MAX_CONN_RECEIVE_WINDOW,
            max_idle_timeout: DEFAULT_MAX_IDLE_TIMEOUT,
            max_incoming_streams: DEFAULT_MAX_INCOMING_STREAMS,
            disable_path_mtu_discovery: false,
        }
    }
}

/// `congestion`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Congestion {
    /// `congestion.type`.
    pub kind: CongestionKind,
    /// `congestion.bbrProfile`.
    pub bbr_profile: BbrProfile,
}

/// `congestion.type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CongestionKind {
    /// `bbr` (default).
    #[default]
    Bbr,
    /// `reno`.
    Reno,
    /// `cubic` (quelay): quinn-proto's CUBIC.
    Cubic,
}

/// `congestion.bbrProfile`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BbrProfile {
    /// `standard` (default).
    #[default]
    Standard,
    /// `conservative`.
    Conservative,
    /// `aggressive`.
    Aggressive,
}

/// `bandwidth`, in **bytes** per second (the file says bits per second with units). The
/// server's and the client's sections have the same keys; only the server sets a minimum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bandwidth {
    /// `bandwidth.up`: on the server, the cap on what it sends per client (at least
    /// [`MIN_BANDWIDTH`]); on the client, its upload rate: uploads then use Brutal at this
    /// rate, or at the server's `hysteria-cc-rx` if lower and non-zero. `None` = unlimited
    /// (the client uses BBR).
    pub up: Option<u64>,
    /// `bandwidth.down`: what this end tells the other it can receive (`hysteria-cc-rx`);
    /// `None` = unlimited (sent as 0). On the server at least [`MIN_BANDWIDTH`] when set.
    pub down: Option<u64>,
    /// `bandwidth.disableLossCompensation`: Brutal does not raise its rate to make up for loss.
    pub disable_loss_compensation: bool,
}

/// `auth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `type: password`: the whole `hysteria-auth` value must equal this (non-empty). The
    /// auth ID is `user`.
    Password(String),
    /// `type: userpass`: `hysteria-auth` is `user:pass`, split at the first `:`. Keys are
    /// user names already folded with [`Auth::user_key`]; the folded name is the auth ID.
    UserPass(BTreeMap<String, String>),
    /// `type: http`: POST `{"addr","auth","tx"}` to `url`, expect `{"ok","id"}`.
    Http {
        /// `auth.http.url` (http or https).
        url: String,
        /// `auth.http.insecure`: do not verify the backend's certificate.
        insecure: bool,
    },
    /// `type: command` (or `cmd`): runs `command` with the client's address, its
    /// `hysteria-auth` value and its `hysteria-cc-rx` as arguments, no shell; exit status 0
    /// accepts, and the trimmed stdout is the auth ID.
    Command(String),
}

impl Auth {
    /// Fold a user name the way the official server does (user names are case-insensitive).
    /// Apply it to the name a client presents before looking it up in [`Auth::UserPass`].
    pub fn user_key(name: &str) -> String {
        name.to_lowercase()
    }

    /// The `userpass` users that `new` no longer has (a reload closes their connections).
    /// A changed password, or a change of auth type, removes nobody: connections already
    /// authenticated stay, as with `type: password`.
    pub fn removed_users(&self, new: &Auth) -> Vec<String> {
        match (self, new) {
            (Auth::UserPass(old), Auth::UserPass(new)) => old
                .keys()
                .filter(|u| !new.contains_key(*u))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// `sniff` (when enabled): read the TLS SNI / HTTP Host of proxied streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sniff {
    /// `sniff.timeout`; `None` = the implementation's default.
    pub timeout: Option<Duration>,
    /// `sniff.rewriteDomain`: replace a requested domain with the sniffed one.
    pub rewrite_domain: bool,
    /// `sniff.tcpPorts`; `None` = all ports.
    pub tcp_ports: Option<PortSet>,
    /// `sniff.udpPorts`; `None` = all ports.
    pub udp_ports: Option<PortSet>,
}

/// `resolver`: where names are looked up. Only the section of the chosen type is used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Resolver {
    /// `system` (default, also an empty type): the operating system's lookup (getaddrinfo:
    /// /etc/hosts, then resolv.conf).
    #[default]
    System,
    /// `udp`: plain DNS over UDP.
    Udp(DnsUpstream),
    /// `tcp`: plain DNS over TCP.
    Tcp(DnsUpstream),
    /// `tls` (alias `tcp-tls`): DNS over TLS.
    Tls(DnsUpstream),
    /// `https` (alias `http`): DNS over HTTPS (RFC 8484).
    Https(DnsUpstream),
}

impl Resolver {
    /// The type's name as the file spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Resolver::System => "system",
            Resolver::Udp(_) => "udp",
            Resolver::Tcp(_) => "tcp",
            Resolver::Tls(_) => "tls",
            Resolver::Https(_) => "https",
        }
    }
}

/// `resolver.<type>`: one upstream DNS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsUpstream {
    /// `addr`. udp, tcp and tls: `host:port`, the port defaulted (53, or 853 for tls) and an
    /// IPv6 literal bracketed. https: the URL; an `addr` without `https://` becomes
    /// `https://ADDR/dns-query`.
    pub addr: String,
    /// `timeout` of one query (default 2 s).
    pub timeout: Duration,
    /// `sni` (tls, https): the TLS server name; `None` = the host of `addr`.
    pub sni: Option<String>,
    /// `insecure` (tls, https): do not verify the server's certificate.
    pub insecure: bool,
}

/// `acl`: routing rules; their syntax is checked by whoever compiles them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    /// `acl.file` or `acl.inline` (exactly one).
    pub rules: AclRules,
    /// `acl.geoip`: GeoIP database path; `None` = download when a rule needs it.
    pub geoip: Option<PathBuf>,
    /// `acl.geosite`: GeoSite database path; `None` = download when a rule needs it.
    pub geosite: Option<PathBuf>,
    /// `acl.geoUpdateInterval`: a downloaded geo file older than this is fetched again
    /// (default, and for 0, one week).
    pub geo_update_interval: Duration,
    /// `acl.geoipURL` (quelay): where geoip.dat is downloaded from when `geoip` is unset;
    /// `None` = the reference's jsDelivr URL.
    pub geoip_url: Option<String>,
    /// `acl.geositeURL` (quelay): as `geoip_url`, for geosite.dat.
    pub geosite_url: Option<String>,
}

/// Where ACL rules come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclRules {
    /// `acl.file`.
    File(PathBuf),
    /// `acl.inline`, one rule per entry.
    Inline(Vec<String>),
}

/// `outbounds[i]`: a named way out for relayed traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// `name`, as written (ACL rules match it case-insensitively).
    pub name: String,
    /// `type` and its section.
    pub kind: OutboundKind,
}

/// `outbounds[i].type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundKind {
    /// `direct`: connect from this host.
    Direct(DirectOutbound),
    /// `socks5`: through a SOCKS5 proxy (RFC 1928, user/password of RFC 1929).
    Socks5(Socks5Outbound),
    /// `http`: through an HTTP CONNECT proxy (TCP only).
    Http(HttpOutbound),
}

/// `direct`: how the server connects to destinations itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectOutbound {
    /// `direct.mode`.
    pub mode: DirectMode,
    /// `direct.bindIPv4`/`bindIPv6`/`bindDevice`.
    pub bind: OutboundBind,
    /// `direct.fastOpen`: TCP Fast Open to destinations.
    pub fast_open: bool,
}

/// `socks5`: a SOCKS5 proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socks5Outbound {
    /// `socks5.addr`: `host:port`.
    pub addr: String,
    /// `socks5.username` and `socks5.password`, when both are set (method 02 is offered
    /// only then, as in the reference).
    pub auth: Option<(String, String)>,
}

/// `http`: an HTTP CONNECT proxy, from `http.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpOutbound {
    /// The proxy's host (a name or an IP literal, without brackets).
    pub host: String,
    /// The proxy's port (default 80, or 443 for `https`).
    pub port: u16,
    /// `https://`: TLS to the proxy, SNI the host.
    pub tls: bool,
    /// `http.insecure`: do not verify the proxy's certificate.
    pub insecure: bool,
    /// The URL's userinfo, sent as `Proxy-Authorization: Basic`.
    pub auth: Option<(String, String)>,
}

/// `direct.mode`: which address families to use for destinations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirectMode {
    /// `auto` (default): happy eyeballs.
    #[default]
    Auto,
    /// `64`: IPv6 if available, else IPv4.
    Prefer6,
    /// `46`: IPv4 if available, else IPv6.
    Prefer4,
    /// `6`: IPv6 only.
    Only6,
    /// `4`: IPv4 only.
    Only4,
}

/// What outgoing sockets bind to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OutboundBind {
    /// Whatever the kernel picks.
    #[default]
    Any,
    /// `bindIPv4` / `bindIPv6` (at least one set).
    Addresses {
        /// Source for IPv4 destinations.
        v4: Option<Ipv4Addr>,
        /// Source for IPv6 destinations.
        v6: Option<Ipv6Addr>,
    },
    /// `bindDevice` (SO_BINDTODEVICE).
    Device(String),
}

/// `trafficStats`: the official HTTP API (`/traffic`, `/kick`, `/online`, `/dump/streams`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficStats {
    /// `trafficStats.listen` (TCP).
    pub listen: SocketAddr,
    /// `trafficStats.secret`: required `Authorization` header value; empty = no check.
    pub secret: String,
}

/// `masquerade`: what non-auth HTTP/3 requests (and failed auths) get.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Masquerade {
    /// `masquerade.type` and its section.
    pub handler: MasqueradeHandler,
    /// `masquerade.listenHTTP`: also serve the handler over TCP HTTP (needs `listenHTTPS`).
    pub listen_http: Option<SocketAddr>,
    /// `masquerade.listenHTTPS`: also serve it over TCP HTTPS, with the QUIC certificate.
    pub listen_https: Option<SocketAddr>,
    /// `masquerade.forceHTTPS`: the HTTP listener only redirects (301) to HTTPS.
    pub force_https: bool,
}

/// `masquerade.type`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MasqueradeHandler {
    /// `404` (default): Go's `http.NotFound`.
    #[default]
    NotFound,
    /// `file`: a static file server.
    File {
        /// `masquerade.file.dir`.
        dir: PathBuf,
    },
    /// `proxy`: a reverse proxy; upstream errors give 502.
    Proxy {
        /// `masquerade.proxy.url` (http or https).
        url: String,
        /// `masquerade.proxy.rewriteHost`: send the upstream's host instead of the client's.
        rewrite_host: bool,
        /// `masquerade.proxy.xForwarded`: add `X-Forwarded-*` headers.
        x_forwarded: bool,
        /// `masquerade.proxy.insecure`: do not verify the upstream's certificate.
        insecure: bool,
    },
    /// `string`: a fixed response.
    String {
        /// `masquerade.string.content` (non-empty).
        content: String,
        /// `masquerade.string.headers`, names lowercased (HTTP/3 wants them so).
        headers: BTreeMap<String, String>,
        /// `masquerade.string.statusCode`: 200 to 599 except 233, default 200.
        status_code: u16,
    },
}

/// `outboundGuard` (quelay): destinations refused unless allowed. Both default to refused,
/// so a relay on a host cannot be used to reach that host's local services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboundGuard {
    /// `outboundGuard.allowLoopback`: allow 127.0.0.0/8 and ::1.
    pub allow_loopback: bool,
    /// `outboundGuard.allowLinkLocal`: allow 169.254.0.0/16 and fe80::/10.
    pub allow_link_local: bool,
}

/// `limits` (quelay). `None` (absent or 0) = no cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `limits.maxStreamsPerUser`: concurrent streams over all of one user's connections.
    pub max_streams_per_user: Option<u64>,
    /// `limits.maxStreams`: concurrent streams over the whole relay.
    pub max_streams: Option<u64>,
    /// `limits.maxConnectionsPerUser`: concurrent connections of one user.
    pub max_connections_per_user: Option<u64>,
    /// `limits.maxUdpSessionsPerUser`: concurrent UDP sessions of one user. Unlike the caps
    /// above, absent (`None`) = a default (half the user's socket cap) and `Some(0)` = no cap.
    pub max_udp_sessions_per_user: Option<u64>,
    /// `limits.maxSocketsPerUser`: outbound sockets of one user (relayed TCP streams and UDP
    /// sessions). Absent (`None`) = half the server's socket budget, `Some(0)` = no cap.
    pub max_sockets_per_user: Option<u64>,
    /// `limits.receiveWindowBudget`: bytes of QUIC receive window all connections together
    /// may hold; `None` = a quarter of physical memory.
    pub receive_window_budget: Option<u64>,
    /// `limits.authTimeout`: a connection that has not authenticated this long after its
    /// handshake is closed; `None` = [`DEFAULT_AUTH_TIMEOUT`].
    pub auth_timeout: Option<Duration>,
    /// `limits.maxUnauthenticated`: connections waiting to authenticate, over the whole
    /// server; `None` = [`DEFAULT_MAX_UNAUTHENTICATED`].
    pub max_unauthenticated: Option<u64>,
    /// `limits.maxUnauthenticatedPerSource`: the same from one source address (an IPv6
    /// source by its /64); `None` = [`DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE`].
    pub max_unauthenticated_per_source: Option<u64>,
    /// `limits.maxUnvalidatedHandshakes`: handshakes in progress over the whole server from
    /// which a client that has not proved its address gets a QUIC Retry first (quic-go's
    /// `MaxUnvalidatedHandshakes`); `None` = [`DEFAULT_MAX_UNVALIDATED_HANDSHAKES`].
    pub max_unvalidated_handshakes: Option<u64>,
    /// `limits.handshakesPerSecond`: handshakes the whole server starts per second;
    /// `None` = [`DEFAULT_HANDSHAKES_PER_SECOND_PER_WORKER`] per worker.
    pub handshakes_per_second: Option<u64>,
}

/// A web server closes a visitor's idle connection after about a minute (nginx's
/// `keepalive_timeout` is 75 s), so the masquerade may too; a Hysteria2 client
/// authenticates within its first round trip.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// Far above what real clients hold (each authenticates within a round trip), far below
/// what a flood would need to exhaust memory.
pub const DEFAULT_MAX_UNAUTHENTICATED: u64 = 10_000;
/// A browser opens one or two connections to a site, but one client's pool may open a burst
/// of connections at once (a few hundred when thousands of streams wait), and many users
/// share an address behind a NAT; each authenticates within a round trip.
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_SOURCE: u64 = 256;

/// quic-go's default `Transport.MaxUnvalidatedHandshakes`.
pub const DEFAULT_MAX_UNVALIDATED_HANDSHAKES: u64 = 128;
/// Above what one core completes (about 3,400 whole Hysteria2 logins a second on this
/// project's 2-core VM), so the rate binds only on a flood, and keeps it to part of a core.
pub const DEFAULT_HANDSHAKES_PER_SECOND_PER_WORKER: u64 = 2_000;

/// `engine` (quelay).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Engine {
    /// `engine.workers`; `None` (absent or 0) = one per online CPU.
    pub workers: Option<usize>,
    /// `engine.io`: `uring`, `epoll` or `auto` (`None`: io_uring when the host allows it).
    pub io: Option<IoKind>,
}

/// `engine.io`: the I/O driver the workers run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// `uring` (also `io_uring`, `io-uring`).
    Uring,
    /// `epoll`.
    Epoll,
}

/// Most workers `engine.workers` allows: a worker's index is one byte of its connection IDs.
pub const MAX_WORKERS: usize = 128;

/// Smallest `limits.receiveWindowBudget`: the least receive window one connection gets,
/// budget or not (64 KiB; the worker checks that its window floor agrees).
pub const MIN_RECEIVE_WINDOW_BUDGET: u64 = 64 * 1024;

/// `metrics` (quelay): Prometheus text over HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// `metrics.listen` (TCP).
    pub listen: SocketAddr,
}
