//! Prometheus text exposition (format 0.0.4) of the workers' counters and the caps, and the
//! `GET /metrics` endpoint serving it (`metrics.listen`) on the admin HTTP server, off the
//! data path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, Request};

use super::http::{self, Handler, Response, TEXT};
use super::{Snapshot, WorkerCounters};
use crate::limits::Limits;

/// The text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// (name, type, help, value) of each per-worker series.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Snapshot) -> u64,
);

/// (name, type, help, value) of each per-user series.
type UserSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::limits::User) -> u64,
);

const WORKER_SERIES: &[Series] = &[
    (
        "quelay_rx_datagrams_total",
        "counter",
        "UDP datagrams received (GRO segments counted one by one).",
        |s| s.rx_datagrams,
    ),
    (
        "quelay_rx_bytes_total",
        "counter",
        "UDP bytes received.",
        |s| s.rx_bytes,
    ),
    (
        "quelay_rx_gro_batches_total",
        "counter",
        "Receives that coalesced more than one datagram (GRO).",
        |s| s.rx_gro_batches,
    ),
    (
        "quelay_tx_datagrams_total",
        "counter",
        "UDP datagrams sent.",
        |s| s.tx_datagrams,
    ),
    ("quelay_tx_bytes_total", "counter", "UDP bytes sent.", |s| {
        s.tx_bytes
    }),
    (
        "quelay_tx_gso_batches_total",
        "counter",
        "Sends carrying a GSO batch.",
        |s| s.tx_gso_batches,
    ),
    (
        "quelay_tx_errors_total",
        "counter",
        "Sends that failed (QUIC retransmits).",
        |s| s.tx_errors,
    ),
    (
        "quelay_gso_disabled_total",
        "counter",
        "Times GSO was switched off after a send failure.",
        |s| s.gso_disabled,
    ),
    (
        "quelay_rx_malformed_total",
        "counter",
        "Datagrams too short or malformed to route.",
        |s| s.rx_malformed,
    ),
    (
        "quelay_rx_dropped_total",
        "counter",
        "Datagrams QUIC dropped (undecryptable, unknown connection).",
        |s| s.rx_dropped,
    ),
    (
        "quelay_stateless_resets_total",
        "counter",
        "Stateless resets sent (short-header datagrams for no connection of their worker).",
        |s| s.stateless_resets,
    ),
    (
        "quelay_other_node_dropped_total",
        "counter",
        "Short-header datagrams for another node of the cluster, dropped without a reset.",
        |s| s.other_node,
    ),
    (
        "quelay_migrations_total",
        "counter",
        "Peer address changes connections followed (NAT rebinding, port hopping).",
        |s| s.migrations,
    ),
    (
        "quelay_hops_total",
        "counter",
        "Port hops of the client: a new local port and a new server port.",
        |s| s.hops,
    ),
    (
        "quelay_forwarded_out_total",
        "counter",
        "Datagrams handed to the worker that owns their connection.",
        |s| s.forwarded_out,
    ),
    (
        "quelay_forwarded_in_total",
        "counter",
        "Datagrams received from other workers.",
        |s| s.forwarded_in,
    ),
    (
        "quelay_forward_dropped_total",
        "counter",
        "Forwarded datagrams lost to a full queue.",
        |s| s.forward_dropped,
    ),
    (
        "quelay_connections",
        "gauge",
        "QUIC connections held.",
        |s| s.connections,
    ),
    (
        "quelay_connections_total",
        "counter",
        "QUIC connections accepted.",
        |s| s.connections_total,
    ),
    (
        "quelay_accept_errors_total",
        "counter",
        "Incoming connections refused during set-up.",
        |s| s.accept_errors,
    ),
    (
        "quelay_handshakes_retried_total",
        "counter",
        "Initials answered with a Retry: address validation under load or over the handshake rate.",
        |s| s.handshakes_retried,
    ),
    (
        "quelay_handshakes_dropped_total",
        "counter",
        "Validated Initials dropped over the handshake rate (their clients send them again).",
        |s| s.handshakes_dropped,
    ),
    (
        "quelay_loops_total",
        "counter",
        "Worker loop iterations (load: compare with waits).",
        |s| s.loops,
    ),
    (
        "quelay_waits_total",
        "counter",
        "Worker loop iterations that blocked waiting for I/O.",
        |s| s.waits,
    ),
    (
        "quelay_streams_relayed_total",
        "counter",
        "Proxy streams relayed.",
        |s| s.streams_relayed,
    ),
    (
        "quelay_streams_open",
        "gauge",
        "Proxy streams relayed now.",
        |s| s.streams_open,
    ),
    (
        "quelay_streams_parked",
        "gauge",
        "Proxy streams waiting for a permit at a cap.",
        |s| s.streams_parked,
    ),
    (
        "quelay_credit_withheld_total",
        "counter",
        "Times a connection's stream credit was withheld at a cap.",
        |s| s.credit_withheld,
    ),
    (
        "quelay_streams_refused_total",
        "counter",
        "Proxy streams refused (malformed, outbound guard).",
        |s| s.streams_refused,
    ),
    (
        "quelay_acl_rejected_total",
        "counter",
        "Proxy streams and UDP destinations refused by an ACL reject rule.",
        |s| s.acl_rejected,
    ),
    (
        "quelay_sniffed_total",
        "counter",
        "Requests routed by the name sniffed from their first bytes.",
        |s| s.sniffed,
    ),
    (
        "quelay_window_updates_total",
        "counter",
        "Flow-control window updates sent (MAX_DATA, MAX_STREAM_DATA).",
        |s| s.window_updates_closed + s.window_updates_live,
    ),
    (
        "quelay_data_blocked_received_total",
        "counter",
        "DATA_BLOCKED frames received: times peers waited on connection credit.",
        |s| s.data_blocked_closed + s.data_blocked_live,
    ),
    (
        "quelay_receive_window_bytes",
        "gauge",
        "Connection receive windows advertised now, summed over connections.",
        |s| s.recv_window_bytes,
    ),
    (
        "quelay_receive_window_doublings_total",
        "counter",
        "Times auto-tuning doubled a connection's receive window.",
        |s| s.recv_window_doublings,
    ),
    (
        "quelay_receive_window_budget_short_total",
        "counter",
        "Times a connection's receive window stayed below its target for want of budget.",
        |s| s.recv_window_budget_short,
    ),
    (
        "quelay_streams_stalled",
        "gauge",
        "Streams whose buffer toward TCP is full (their reader is slow).",
        |s| s.streams_stalled,
    ),
    (
        "quelay_relay_buffered_bytes",
        "gauge",
        "Bytes held in relay buffers between QUIC streams and TCP sockets.",
        |s| s.relay_buffered,
    ),
    (
        "quelay_udp_sessions",
        "gauge",
        "UDP sessions open (one outbound socket each).",
        |s| s.udp_sessions,
    ),
    (
        "quelay_udp_sessions_opened_total",
        "counter",
        "UDP sessions opened.",
        |s| s.udp_sessions_opened,
    ),
    (
        "quelay_udp_sessions_refused_total",
        "counter",
        "UDP sessions refused at the outbound-socket budget.",
        |s| s.udp_sessions_refused,
    ),
    (
        "quelay_udp_datagrams_in_total",
        "counter",
        "Hysteria2 UDP messages received from clients.",
        |s| s.udp_datagrams_in,
    ),
    (
        "quelay_udp_datagrams_out_total",
        "counter",
        "Hysteria2 UDP messages sent to clients.",
        |s| s.udp_datagrams_out,
    ),
    (
        "quelay_udp_dropped_total",
        "counter",
        "Client UDP messages dropped (malformed, undeliverable, refused by the guard).",
        |s| s.udp_dropped,
    ),
    (
        "quelay_auth_failures_total",
        "counter",
        "Auth requests refused (wrong credentials, or the HTTP backend said no).",
        |s| s.auth_failures,
    ),
];

/// The exposition of `workers` and, for a server, its caps.
pub fn render(workers: &[Arc<WorkerCounters>], limits: Option<&Limits>) -> String {
    let snaps: Vec<Snapshot> = workers.iter().map(|w| w.snapshot()).collect();
    let mut out = String::with_capacity(8192);
    for (name, ty, help, get) in WORKER_SERIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
        for (i, s) in snaps.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", get(s));
        }
    }
    if let Some(l) = limits {
        render_limits(&mut out, l);
    }
    out
}

fn render_limits(out: &mut String, l: &Limits) {
    let caps = l.caps();
    let cap = |c: Option<u64>| c.map_or(-1.0, |c| c as f64);
    let b = &l.window_budget;
    let u = &l.unauthenticated;
    let (udp_cap, sockets_cap) = l.per_user_socket_caps(&caps);
    let server: [(&str, &str, &str, f64); 17] = [
        (
            "quelay_streams_cap",
            "gauge",
            "Cap on proxy streams over the server (-1: none).",
            cap(l.streams.cap()),
        ),
        (
            "quelay_streams_held",
            "gauge",
            "Stream permits held over the server.",
            l.streams.held() as f64,
        ),
        (
            "quelay_streams_peak",
            "gauge",
            "Most stream permits held at once over the server.",
            l.streams.peak() as f64,
        ),
        (
            "quelay_streams_cap_hits_total",
            "counter",
            "Stream permits refused at the server's cap.",
            l.streams.hits() as f64,
        ),
        (
            "quelay_sockets_budget",
            "gauge",
            "Outbound sockets (relayed streams, UDP sessions) the server may hold (-1: none).",
            cap(l.sockets.cap()),
        ),
        (
            "quelay_sockets_held",
            "gauge",
            "Outbound sockets held now.",
            l.sockets.held() as f64,
        ),
        (
            "quelay_sockets_peak",
            "gauge",
            "Most outbound sockets held at once.",
            l.sockets.peak() as f64,
        ),
        (
            "quelay_sockets_budget_hits_total",
            "counter",
            "Streams parked and UDP sessions refused at the socket budget.",
            l.sockets.hits() as f64,
        ),
        (
            "quelay_receive_window_budget_bytes",
            "gauge",
            "Budget for the receive windows of all connections (-1: none).",
            cap(b.cap()),
        ),
        (
            "quelay_receive_window_reserved_bytes",
            "gauge",
            "Receive-window bytes reserved from the budget now.",
            b.held() as f64,
        ),
        (
            "quelay_receive_window_reserved_peak_bytes",
            "gauge",
            "Most receive-window bytes reserved at once.",
            b.peak() as f64,
        ),
        (
            "quelay_receive_window_budget_hits_total",
            "counter",
            "Connections whose receive window was granted or grown short of its target.",
            b.hits() as f64,
        ),
        (
            "quelay_user_streams_cap",
            "gauge",
            "Cap on each user's streams (-1: none).",
            cap(caps.streams_per_user),
        ),
        (
            "quelay_user_udp_sessions_cap",
            "gauge",
            "Cap on each user's UDP sessions (-1: none).",
            cap(udp_cap),
        ),
        (
            "quelay_user_sockets_cap",
            "gauge",
            "Cap on each user's outbound sockets, TCP and UDP (-1: none).",
            cap(sockets_cap),
        ),
        (
            "quelay_unauthenticated_connections",
            "gauge",
            "Connections past their handshake that have not authenticated yet.",
            u.held() as f64,
        ),
        (
            "quelay_unauthenticated_refused_total",
            "counter",
            "Connections closed at once for the caps on unauthenticated connections.",
            u.refused() as f64,
        ),
    ];
    for (name, ty, help, value) in server {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {value}"
        );
    }
    let users = l.users();
    let per_user: [UserSeries; 9] = [
        (
            "quelay_user_streams_open",
            "gauge",
            "Streams relayed now for the user.",
            |u| u.streams.held(),
        ),
        (
            "quelay_user_streams_peak",
            "gauge",
            "Most streams relayed at once for the user.",
            |u| u.streams.peak(),
        ),
        (
            "quelay_user_stream_cap_hits_total",
            "counter",
            "Stream permits refused at the user's cap.",
            |u| u.streams.hits(),
        ),
        (
            "quelay_user_connections",
            "gauge",
            "Connections of the user holding a connection permit.",
            |u| u.connections.held(),
        ),
        (
            "quelay_user_connection_cap_hits_total",
            "counter",
            "Connection permits refused at the user's cap.",
            |u| u.connections.hits(),
        ),
        (
            "quelay_user_udp_sessions",
            "gauge",
            "UDP sessions of the user now.",
            |u| u.udp_sessions.held(),
        ),
        (
            "quelay_user_udp_session_cap_hits_total",
            "counter",
            "UDP sessions refused at the user's cap (their datagrams dropped).",
            |u| u.udp_sessions.hits(),
        ),
        (
            "quelay_user_sockets",
            "gauge",
            "Outbound sockets of the user now (relayed TCP streams and UDP sessions).",
            |u| u.sockets.held(),
        ),
        (
            "quelay_user_socket_cap_hits_total",
            "counter",
            "TCP requests (answered with an error) and UDP sessions refused at the user's socket cap.",
            |u| u.sockets.hits(),
        ),
    ];
    for (name, ty, help, get) in per_user {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
        for u in &users {
            let _ = writeln!(out, "{name}{{user=\"{}\"}} {}", escape(&u.name), get(u));
        }
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` on `listen` from a thread of its own ([`super::http`]); `render`
/// builds the page.
pub fn serve(
    listen: SocketAddr,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> Result<(), String> {
    http::serve(listen, "metrics.listen", "quelay-metrics", Page(render))
}

struct Page<F>(F);

impl<F: Fn() -> String + Send + Sync + 'static> Handler for Page<F> {
    /// The endpoint takes no body.
    const MAX_BODY: usize = 0;

    fn handle(&self, req: &Request<Bytes>) -> Response {
        if req.uri().path() == "/metrics" && req.method() == Method::GET {
            Response::new(200, CONTENT_TYPE, (self.0)())
        } else {
            Response::new(404, TEXT, "not found\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Caps;

    #[test]
    fn every_series_has_help_type_and_samples() {
        let w = vec![
            Arc::new(WorkerCounters::default()),
            Arc::new(WorkerCounters::default()),
        ];
        WorkerCounters::add(&w[1].streams_relayed, 7);
        let limits = Limits::new(
            Caps {
                streams_per_user: Some(100),
                ..Caps::default()
            },
            None,
        );
        let u = limits.user("al\"ice");
        let _p = limits.acquire_stream(&u, true);
        let text = render(&w, Some(&limits));
        assert!(text.contains("quelay_streams_relayed_total{worker=\"1\"} 7"));
        assert!(text.contains("quelay_user_streams_open{user=\"al\\\"ice\"} 1"));
        assert!(text.contains("quelay_user_streams_cap 100"));
        assert!(text.contains("quelay_streams_cap -1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or("");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
