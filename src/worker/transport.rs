//! From a config's transport sections (`quic`, `congestion`, `bandwidth`, `obfs`,
//! `engine.io`) to what the workers run: transport parameters, the receive-window policy,
//! the obfuscator and the I/O driver. One conversion for the server, the client and the
//! load generator.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, ClientQuic, Quic};
use crate::engine::IoKind;
use crate::limits::window::{self, WindowPolicy, WINDOW_FLOOR};
use crate::limits::Cap;
use crate::proto::salamander::{Salamander, SALT_LEN};
use crate::quic::{self, QuicParams};

// `limits.receiveWindowBudget` is checked against the config's copy of the floor.
const _: () = assert!(config::MIN_RECEIVE_WINDOW_BUDGET == WINDOW_FLOOR);

/// A config's `quic` section, of either end.
#[derive(Clone, Copy, Debug)]
pub enum QuicSection<'a> {
    /// The server's: clients may open `quic.maxIncomingStreams` streams; DATAGRAM frames are
    /// accepted when `udp` (`disableUDP` is false).
    Server { quic: &'a Quic, udp: bool },
    /// The client's: keep-alive PINGs; the server opens no proxy streams towards it.
    Client(&'a ClientQuic),
}

/// The keys both ends' `quic` sections share.
struct Shared {
    init_stream_window: u64,
    max_stream_window: u64,
    init_conn_window: u64,
    max_conn_window: u64,
    max_idle_timeout: Duration,
    mtu_discovery: bool,
}

/// The shared keys of either section type (the two have them under the same names).
macro_rules! shared {
    ($q:expr) => {
        Shared {
            init_stream_window: $q.init_stream_receive_window,
            max_stream_window: $q.max_stream_receive_window,
            init_conn_window: $q.init_conn_receive_window,
            max_conn_window: $q.max_conn_receive_window,
            max_idle_timeout: $q.max_idle_timeout,
            mtu_discovery: !$q.disable_path_mtu_discovery,
        }
    };
}

impl QuicSection<'_> {
    fn shared(&self) -> Shared {
        match *self {
            QuicSection::Server { quic, .. } => shared!(quic),
            QuicSection::Client(quic) => shared!(quic),
        }
    }
}

/// The transport parameters of a `quic` section, with the `congestion`, `bandwidth` and
/// `obfs` sections beside it. The handshake advertises the floor of the connection window:
/// the window itself is granted from the budget once the connection exists (see
/// [`window_policy`]), so workers run with `GroupConfig::windows` set.
pub fn quic_params(
    section: QuicSection,
    congestion: &config::Congestion,
    bandwidth: &config::Bandwidth,
    obfs: &config::Obfs,
) -> QuicParams {
    let q = section.shared();
    let (max_incoming_streams, keep_alive, datagrams) = match section {
        QuicSection::Server { quic, udp } => (quic.max_incoming_streams, None, udp),
        QuicSection::Client(quic) => (0, Some(quic.keep_alive_interval()), true),
    };
    QuicParams {
        init_stream_window: q.init_stream_window,
        max_stream_window: q.max_stream_window,
        init_conn_window: window::handshake_window(q.init_conn_window),
        max_conn_window: q.max_conn_window,
        max_idle_timeout: q.max_idle_timeout,
        max_incoming_streams,
        keep_alive,
        datagrams,
        mtu_discovery: q.mtu_discovery,
        congestion: match congestion.kind {
            config::CongestionKind::Bbr => quic::Congestion::Bbr,
            config::CongestionKind::Reno => quic::Congestion::NewReno,
            config::CongestionKind::Cubic => quic::Congestion::Cubic,
        },
        loss_compensation: !bandwidth.disable_loss_compensation,
        datagram_overhead: match obfs {
            config::Obfs::Salamander { .. } => SALT_LEN as u16,
            config::Obfs::Plain => 0,
        },
        ..QuicParams::default()
    }
}

/// Receive windows of a `quic` section, sized by consumption and reserved from `budget`.
pub fn window_policy(section: QuicSection, budget: Arc<Cap>) -> Arc<WindowPolicy> {
    let q = section.shared();
    WindowPolicy::new(
        q.init_conn_window,
        q.max_conn_window,
        q.init_stream_window,
        budget,
    )
}

/// The obfuscator every datagram goes through, if any. Errors name the key.
pub fn obfuscator(obfs: &config::Obfs) -> Result<Option<Arc<Salamander>>, String> {
    match obfs {
        config::Obfs::Salamander { password } => Salamander::new(password.as_bytes())
            .map(|s| Some(Arc::new(s)))
            .map_err(|e| format!("obfs.salamander.password: {e}")),
        config::Obfs::Plain => Ok(None),
    }
}

impl From<config::IoKind> for IoKind {
    fn from(kind: config::IoKind) -> IoKind {
        match kind {
            config::IoKind::Uring => IoKind::Uring,
            config::IoKind::Epoll => IoKind::Epoll,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each end's section maps to what that end's start-up used before the conversion was
    /// shared: the server takes the client's streams and datagrams, the client keeps alive.
    #[test]
    fn both_ends() {
        let server = config::Quic::default();
        let p = quic_params(
            QuicSection::Server {
                quic: &server,
                udp: false,
            },
            &config::Congestion::default(),
            &config::Bandwidth::default(),
            &config::Obfs::Plain,
        );
        assert_eq!(p.max_incoming_streams, server.max_incoming_streams);
        assert_eq!(p.keep_alive, None);
        assert!(!p.datagrams);
        assert_eq!(p.init_conn_window, WINDOW_FLOOR);
        assert_eq!(p.max_conn_window, server.max_conn_receive_window);

        let client = config::ClientQuic {
            max_idle_timeout: Duration::from_secs(5),
            disable_path_mtu_discovery: true,
            ..config::ClientQuic::default()
        };
        let p = quic_params(
            QuicSection::Client(&client),
            &config::Congestion {
                kind: config::CongestionKind::Reno,
                ..config::Congestion::default()
            },
            &config::Bandwidth {
                disable_loss_compensation: true,
                ..config::Bandwidth::default()
            },
            &config::Obfs::Salamander {
                password: "abcd".into(),
            },
        );
        assert_eq!(p.max_incoming_streams, 0);
        assert_eq!(p.keep_alive, Some(Duration::from_millis(2500)));
        assert!(p.datagrams);
        assert!(!p.mtu_discovery);
        assert_eq!(p.congestion, quic::Congestion::NewReno);
        assert!(!p.loss_compensation);
        assert_eq!(p.datagram_overhead, SALT_LEN as u16);
    }
}
