//! quinn-proto transport, server, client and endpoint configurations.
//!
//! Defaults follow the official Hysteria2 server so that clients see the limits they expect
//! (see `reference/hysteria2-protocol.md` §1.2).

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::congestion::{ControllerFactory, CubicConfig, NewRenoConfig};
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{
    ClientConfig, ConnectionIdGenerator, EndpointConfig, IdleTimeout, MtuDiscoveryConfig,
    ServerConfig, TransportConfig, VarInt,
};
use rand::RngCore;

use super::bbr::BbrConfig;
use super::cid::{CidLayout, ShardedCidGenerator};
use super::congestion::AdaptiveConfig;

/// Hysteria2 `quic.initStreamReceiveWindow`: 8 MiB lets one stream fill ~670 Mbit/s at 100 ms.
pub const INIT_STREAM_WINDOW: u64 = 8 << 20;
/// Hysteria2 `quic.maxStreamReceiveWindow`: same as the initial one, so no auto-tuning by default.
pub const MAX_STREAM_WINDOW: u64 = 8 << 20;
/// Hysteria2 `quic.initConnReceiveWindow`: 2.5 stream windows, so one stream cannot take it all.
pub const INIT_CONN_WINDOW: u64 = 20 << 20;
/// Hysteria2 `quic.maxConnReceiveWindow`: same as the initial one.
pub const MAX_CONN_WINDOW: u64 = 20 << 20;
/// Hysteria2 `quic.maxIdleTimeout` (RFC 9308 §3.2 recommends 30 s as well).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Hysteria2 `quic.maxIncomingStreams`: concurrent TCP relays per connection (quinn's 100 is
/// what makes clients fail with "too many open streams").
pub const MAX_INCOMING_STREAMS: u64 = 1024;
/// quic-go's default, which Hysteria2 keeps: HTTP/3 needs only 1–3 uni streams per side.
pub const MAX_INCOMING_UNI_STREAMS: u64 = 100;
/// Hysteria2 servers send no keep-alives; clients keep the connection alive themselves.
pub const KEEP_ALIVE: Option<Duration> = None;
/// Hysteria2 relays UDP in DATAGRAM frames, so they are on unless UDP is disabled.
pub const DATAGRAMS: bool = true;
/// Received DATAGRAM bytes buffered per connection until the relay drains them: about 870
/// full-size (1200-byte) Hysteria2 UDP messages.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 1 << 20;
/// Initial (and minimum) QUIC packet size: RFC 9000's floor, safe on every path; MTU discovery
/// raises it.
pub const INITIAL_MTU: u16 = 1200;

/// Congestion controller for new connections, until an app switches one to Brutal
/// (`Io::set_send_rate`; every choice here allows that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// Model-based (ours, `quic::bbr`); the default, as it keeps throughput on lossy
    /// long-haul paths.
    #[default]
    Bbr,
    /// Loss-based, quinn's own default.
    Cubic,
    /// Loss-based, the RFC 9002 reference.
    NewReno,
}

/// QUIC knobs that Hysteria2 exposes under `quic:` in its config files, plus our own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicParams {
    /// Receive window a stream starts with (`initial_max_stream_data_*`).
    pub init_stream_window: u64,
    /// Ceiling for stream window auto-tuning (done above quinn-proto).
    pub max_stream_window: u64,
    /// Receive window a connection starts with (`initial_max_data`).
    pub init_conn_window: u64,
    /// Ceiling for connection window auto-tuning (done above quinn-proto).
    pub max_conn_window: u64,
    /// Idle timeout we advertise; zero disables it.
    pub max_idle_timeout: Duration,
    /// Concurrent bidirectional streams the peer may open.
    pub max_incoming_streams: u64,
    /// Concurrent unidirectional streams the peer may open.
    pub max_incoming_uni_streams: u64,
    /// PING interval to keep the connection (and NAT bindings) alive; `None` sends none.
    pub keep_alive: Option<Duration>,
    /// Whether to accept DATAGRAM frames (advertise `max_datagram_frame_size`).
    pub datagrams: bool,
    /// Congestion controller for new connections.
    pub congestion: Congestion,
    /// Path MTU discovery (Hysteria2 `quic.disablePathMTUDiscovery` inverted).
    pub mtu_discovery: bool,
    /// Bytes every UDP datagram carries besides the QUIC packet (8 with Salamander):
    /// discovered MTUs are lowered by this much so datagrams still fit the path.
    pub datagram_overhead: u16,
    /// Brutal raises its send rate by up to 1.25× to make up for lost packets (Hysteria2
    /// `bandwidth.disableLossCompensation` inverted).
    pub loss_compensation: bool,
}

impl Default for QuicParams {
    fn default() -> Self {
        Self {
            init_stream_window: INIT_STREAM_WINDOW,
            max_stream_window: MAX_STREAM_WINDOW,
            init_conn_window: INIT_CONN_WINDOW,
            max_conn_window: MAX_CONN_WINDOW,
            max_idle_timeout: MAX_IDLE_TIMEOUT,
            max_incoming_streams: MAX_INCOMING_STREAMS,
            max_incoming_uni_streams: MAX_INCOMING_UNI_STREAMS,
            keep_alive: KEEP_ALIVE,
            datagrams: DATAGRAMS,
            congestion: Congestion::default(),
            mtu_discovery: true,
            datagram_overhead: 0,
            loss_compensation: true,
        }
    }
}

/// quinn-proto's default ceiling for path MTU discovery (Ethernet 1500 less IPv6 and UDP).
const MTU_UPPER_BOUND: u16 = 1452;

/// A VarInt, saturating at the largest encodable value (2^62 - 1) instead of failing.
fn varint(v: u64) -> VarInt {
    VarInt::from_u64(v).unwrap_or(VarInt::MAX)
}

/// The transport configuration for `p`. Out-of-range values saturate rather than fail.
pub fn transport_config(p: &QuicParams) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_receive_window(varint(p.init_stream_window))
        .receive_window(varint(p.init_conn_window))
        // Sending is bounded by the peer's window; ours only has to not be the bottleneck.
        .send_window(p.max_conn_window.saturating_mul(2))
        .max_concurrent_bidi_streams(varint(p.max_incoming_streams))
        .max_concurrent_uni_streams(varint(p.max_incoming_uni_streams))
        .max_idle_timeout(idle_timeout(p.max_idle_timeout))
        .keep_alive_interval(p.keep_alive)
        .datagram_receive_buffer_size(p.datagrams.then_some(DATAGRAM_RECEIVE_BUFFER))
        .initial_mtu(INITIAL_MTU)
        .min_mtu(INITIAL_MTU)
        .mtu_discovery_config(p.mtu_discovery.then(|| {
            let mut m = MtuDiscoveryConfig::default();
            m.upper_bound(MTU_UPPER_BOUND.saturating_sub(p.datagram_overhead));
            m
        }))
        .enable_segmentation_offload(true);
    let adaptive = |fallback: Arc<dyn ControllerFactory + Send + Sync>| {
        AdaptiveConfig::new(fallback, p.loss_compensation)
    };
    let cc = match p.congestion {
        Congestion::Bbr => adaptive(Arc::new(BbrConfig::default())).pace_fallback(),
        Congestion::Cubic => adaptive(Arc::new(CubicConfig::default())),
        Congestion::NewReno => adaptive(Arc::new(NewRenoConfig::default())),
    };
    t.congestion_controller_factory(Arc::new(cc));
    t
}

/// Zero disables the idle timeout, as in the transport parameter; too large saturates.
fn idle_timeout(d: Duration) -> Option<IdleTimeout> {
    if d.is_zero() {
        return None;
    }
    Some(IdleTimeout::try_from(d).unwrap_or_else(|_| IdleTimeout::from(VarInt::MAX)))
}

/// The server configuration every worker shares (one token key, so retry and NEW_TOKEN tokens
/// validate on any worker).
///
/// `crypto` is usually [`super::server_crypto`]'s result, possibly wrapped in
/// [`super::AssumePeerDatagrams`]. `token_key` is the master key for address-validation tokens; `None` draws a random one, which
/// is right for a single process (tokens then do not survive a restart).
pub fn server_config(
    crypto: Arc<dyn quinn_proto::crypto::ServerConfig>,
    p: &QuicParams,
    token_key: Option<&[u8; 64]>,
) -> Arc<ServerConfig> {
    let mut master = [0u8; 64];
    match token_key {
        Some(k) => master = *k,
        None => rand::thread_rng().fill_bytes(&mut master),
    }
    let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, &[]).extract(&master);
    let mut config = ServerConfig::new(crypto, Arc::new(prk));
    config
        .transport_config(Arc::new(transport_config(p)))
        .migration(true);
    Arc::new(config)
}

/// A client configuration for `p` (QUIC v1).
pub fn client_config(crypto: Arc<QuicClientConfig>, p: &QuicParams) -> ClientConfig {
    let mut config = ClientConfig::new(crypto);
    config.transport_config(Arc::new(transport_config(p)));
    config
}

/// The endpoint configuration of server worker `worker` out of `workers`.
///
/// All workers must pass the same `reset_key`, so a stateless reset token issued by one worker
/// is the one any other worker would send for that CID.
/// In a cluster every node passes the same `reset_key` too (derived from the cluster key),
/// and `layout` names the node in each CID.
pub fn endpoint_config(
    reset_key: &[u8; 64],
    worker: u8,
    workers: u8,
    layout: CidLayout,
) -> EndpointConfig {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, reset_key);
    let mut config = EndpointConfig::new(Arc::new(key));
    config
        .cid_generator(move || -> Box<dyn ConnectionIdGenerator> {
            Box::new(ShardedCidGenerator::new(worker, workers).with_layout(layout))
        })
        .supported_versions(vec![1])
        // Not advertising grease_quic_bit keeps the fixed bit set in every packet peers send us,
        // which the CID routers (kernel BPF and `cid::short_header_dcid`) rely on.
        .grease_quic_bit(false);
    config
}

/// Shortest cluster secret accepted: 256 bits.
pub const MIN_CLUSTER_SECRET: usize = 32;

/// The keys every node of a cluster derives from the secret they share: the stateless-reset
/// key (so the token a node gives for its CID is the one any node would compute) and the
/// address-validation token key (so a Retry or NEW_TOKEN token of one node is accepted by
/// another). HKDF-SHA256 with labels of their own; the secret itself is never used as a key.
pub fn cluster_keys(secret: &[u8]) -> ([u8; 64], [u8; 64]) {
    struct Len;
    impl aws_lc_rs::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            64
        }
    }
    let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, b"quelay cluster v1")
        .extract(secret);
    let derive = |label: &[u8]| {
        let mut out = [0u8; 64];
        // 64 bytes are far below HKDF-SHA256's limit of 8160: neither step can fail.
        if let Ok(okm) = prk.expand(&[label], Len) {
            let _ = okm.fill(&mut out);
        }
        out
    };
    (
        derive(b"stateless reset"),
        derive(b"address validation token"),
    )
}

/// The endpoint configuration of a client: random 8-byte CIDs, random reset key.
pub fn client_endpoint_config() -> EndpointConfig {
    EndpointConfig::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_hysteria2() {
        let p = QuicParams::default();
        assert_eq!(p.init_stream_window, 8_388_608);
        assert_eq!(p.init_conn_window, 20_971_520);
        assert_eq!(p.max_idle_timeout, Duration::from_secs(30));
        assert_eq!(p.max_incoming_streams, 1024);
        assert_eq!(p.max_incoming_uni_streams, 100);
        assert_eq!(p.keep_alive, None);
        assert!(p.datagrams);
        assert_eq!(p.congestion, Congestion::Bbr);
    }

    #[test]
    fn extreme_values_saturate() {
        let p = QuicParams {
            init_stream_window: u64::MAX,
            max_stream_window: u64::MAX,
            init_conn_window: u64::MAX,
            max_conn_window: u64::MAX,
            max_idle_timeout: Duration::MAX,
            max_incoming_streams: u64::MAX,
            max_incoming_uni_streams: u64::MAX,
            keep_alive: Some(Duration::from_secs(10)),
            datagrams: false,
            congestion: Congestion::NewReno,
            mtu_discovery: false,
            loss_compensation: false,
            datagram_overhead: 0,
        };
        let _ = transport_config(&p);
        assert!(idle_timeout(Duration::ZERO).is_none());
        assert_eq!(
            idle_timeout(Duration::MAX),
            Some(IdleTimeout::from(VarInt::MAX))
        );
        for c in [Congestion::Bbr, Congestion::Cubic, Congestion::NewReno] {
            let _ = transport_config(&QuicParams {
                congestion: c,
                ..QuicParams::default()
            });
        }
    }

    #[test]
    fn endpoint_config_uses_v1_only() {
        let config = endpoint_config(&[7; 64], 1, 2, CidLayout::default());
        let dbg = format!("{config:?}");
        assert!(dbg.contains("supported_versions: [1]"), "{dbg}");
        assert!(dbg.contains("grease_quic_bit: false"), "{dbg}");
    }
}
