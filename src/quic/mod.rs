//! quinn-proto glue: TLS and transport configuration, and connection IDs that name their worker.
//!
//! Everything here builds configuration for the sans-IO `quinn_proto::Endpoint` each worker
//! owns; nothing reads the clock or touches a socket.

pub mod bbr;
pub mod cid;
pub mod compat;
pub mod congestion;
pub mod sni;
pub mod stream;
pub mod tls;
pub mod transport;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use cid::{long_header_dcid, short_header_dcid, worker_of, ShardedCidGenerator, CID_LEN};
pub use compat::{AssumePeerDatagrams, ASSUMED_PEER_DATAGRAM_PAYLOAD};
pub use congestion::{take_last_built, AdaptiveConfig, BrutalPacer, CcHandle};
pub use sni::SniGuard;
pub use tls::{
    client_crypto, load_pem, parse_pin, pin_sha256, self_signed, server_crypto,
    server_crypto_swappable, tcp_server_tls, warm_up_rng, CertKey, CertSwap, TlsError, Verify,
};
pub use transport::{
    client_config, client_endpoint_config, cluster_keys, endpoint_config, server_config,
    transport_config, Congestion, QuicParams, MIN_CLUSTER_SECRET,
};
