//! Baseline to beat: a plain quinn (tokio) server and client speaking the raw QUIC bench
//! protocol that quelay's own bench tools speak.
//!
//! Protocol, per bidirectional stream: the client writes a 9-byte header, mode `u8` then `N`
//! as `u64` big-endian, and
//! - mode 0, echo: the server echoes every byte after the header until the client's FIN,
//!   then FINs;
//! - mode 1, upload: the server discards everything until FIN, then writes the byte count it
//!   received as `u64` big-endian and FINs;
//! - mode 2, download: the server writes `N` bytes of the pattern `byte[i] = i % 251` and FINs,
//!   discarding anything the client sends.
//!
//! ```text
//! quinn_pair server --listen 127.0.0.1:4433 [--threads 1]
//! quinn_pair client --server 127.0.0.1:4433 --mode upload|download|echo --bytes N \
//!     --connections C --streams S [--threads 1]
//! ```
//!
//! The client prints one JSON line; `bytes` counts payload in one direction (C·S·N), `secs` and
//! `cpu_secs` (this process, user + system) span from all connections established to the last
//! stream done. It exits non-zero on any error or content mismatch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::rustls;
use quinn::{congestion, Endpoint, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

const ALPN: &[u8] = b"quelay-bench";
/// Per-stream receive window: one stream can fill a fast loopback path on its own.
const STREAM_WINDOW: u32 = 8 << 20;
/// Connection receive (and send) window: a little over two streams' worth.
const CONNECTION_WINDOW: u32 = 20 << 20;
/// Concurrent bidi streams per connection, the Hysteria2 reference server's default.
const MAX_STREAMS: u32 = 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Safe for any path; MTU discovery raises it.
const INITIAL_MTU: u16 = 1200;
const HEADER_LEN: usize = 9;
/// Pattern period; prime, so the pattern does not line up with packet or chunk sizes.
const PERIOD: usize = 251;
/// Largest slice written or compared at once.
const CHUNK: usize = 128 << 10;
/// Application close code for a finished run.
const DONE: u32 = 0;

#[derive(Parser)]
#[command(about = "Plain quinn baseline for quelay's raw QUIC bench protocol")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Serve the bench protocol until killed.
    Server {
        #[arg(long)]
        listen: SocketAddr,
        /// 1 runs tokio's current_thread runtime, more a multi-thread one.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Run C connections × S concurrent streams of N bytes each and report one JSON line.
    Client {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long, value_enum)]
        mode: Mode,
        /// Bytes per stream.
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Echo,
    Upload,
    Download,
}

impl Mode {
    fn wire(self) -> u8 {
        match self {
            Mode::Echo => 0,
            Mode::Upload => 1,
            Mode::Download => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Upload => "upload",
            Mode::Download => "download",
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.role {
        Role::Server { threads, .. } | Role::Client { threads, .. } => *threads,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.role {
            Role::Server { listen, .. } => server(listen).await,
            Role::Client {
                server,
                mode,
                bytes,
                connections,
                streams,
                ..
            } => client(server, mode, bytes, connections, streams).await,
        }
    });
    if let Err(e) = result {
        eprintln!("quinn_pair: {e}");
        std::process::exit(1);
    }
}

/// `PERIOD` rotations of the pattern, long enough that any offset plus `CHUNK` fits.
fn pattern() -> Bytes {
    let len = (CHUNK / PERIOD + 2) * PERIOD;
    (0..len).map(|i| (i % PERIOD) as u8).collect()
}

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout")))
        .congestion_controller_factory(Arc::new(congestion::BbrConfig::default()))
        .initial_mtu(INITIAL_MTU)
        .mtu_discovery_config(Some(MtuDiscoveryConfig::default()));
    Arc::new(t)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

// ---------------------------------------------------------------------------------------------
// Server

async fn server(listen: SocketAddr) -> Result<()> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    let certs = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport());

    let endpoint = Endpoint::server(config, listen)?;
    println!("listening on {}", endpoint.local_addr()?);
    let pattern = pattern();
    while let Some(incoming) = endpoint.accept().await {
        let pattern = pattern.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let pattern = pattern.clone();
                tokio::spawn(async move {
                    // Resets and closes are the client's business; only protocol errors print.
                    if let Err(ServeError::Protocol(e)) = serve_stream(send, recv, pattern).await {
                        eprintln!("stream error: {e}");
                    }
                });
            }
        });
    }
    Ok(())
}

enum ServeError {
    /// The client broke the bench protocol.
    Protocol(String),
    /// The stream or connection went away.
    Transport,
}

impl<E: std::error::Error> From<E> for ServeError {
    fn from(_: E) -> Self {
        ServeError::Transport
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    pattern: Bytes,
) -> Result<(), ServeError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let n = u64::from_be_bytes(header[1..].try_into().expect("8 bytes"));
    match header[0] {
        0 => {
            let mut buf = vec![0u8; 64 << 10];
            while let Some(k) = recv.read(&mut buf).await? {
                send.write_all(&buf[..k]).await?;
            }
            send.finish()?;
        }
        1 => {
            let mut received = 0u64;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                received += chunk.bytes.len() as u64;
            }
            send.write_all(&received.to_be_bytes()).await?;
            send.finish()?;
        }
        2 => {
            let source = async {
                write_pattern(&mut send, &pattern, n).await?;
                send.finish()?;
                Ok::<_, ServeError>(())
            };
            let sink = async {
                while recv.read_chunk(usize::MAX, false).await?.is_some() {}
                Ok::<_, ServeError>(())
            };
            let (a, b) = tokio::join!(source, sink);
            a.and(b)?;
        }
        mode => return Err(ServeError::Protocol(format!("unknown mode {mode}"))),
    }
    Ok(())
}

/// Writes `n` bytes of the pattern as zero-copy slices of `pattern`.
async fn write_pattern(
    send: &mut quinn::SendStream,
    pattern: &Bytes,
    n: u64,
) -> Result<(), quinn::WriteError> {
    let mut pos = 0u64;
    while pos < n {
        let start = (pos % PERIOD as u64) as usize;
        let len = (n - pos).min(CHUNK as u64) as usize;
        send.write_chunk(pattern.slice(start..start + len)).await?;
        pos += len as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Client

async fn client(
    server: SocketAddr,
    mode: Mode,
    bytes: u64,
    connections: usize,
    streams: usize,
) -> Result<()> {
    if connections == 0 || streams == 0 || streams > MAX_STREAMS as usize {
        return Err(format!(
            "need connections >= 1 and 1 <= streams <= {MAX_STREAMS}, got {connections} x {streams}"
        )
        .into());
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(InsecureVerifier(provider())))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport());

    // One endpoint (socket) per connection: distinct source ports, so a reuseport server
    // spreads the connections over its workers as real clients would.
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
        SocketAddr::V6(_) => "[::]:0".parse()?,
    };
    let mut handshakes = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let mut endpoint = Endpoint::client(bind)?;
        endpoint.set_default_client_config(config.clone());
        let connecting = endpoint.connect(server, "localhost")?;
        handshakes.spawn(async move { Ok::<_, BoxError>((endpoint, connecting.await?)) });
    }
    let mut conns = Vec::with_capacity(connections);
    while let Some(joined) = handshakes.join_next().await {
        conns.push(joined?.map_err(|e| format!("handshake: {e}"))?);
    }

    let pattern = pattern();
    let cpu_start = cpu_secs();
    let start = Instant::now();
    let mut transfers = tokio::task::JoinSet::new();
    for (_, conn) in &conns {
        for _ in 0..streams {
            let conn = conn.clone();
            let pattern = pattern.clone();
            transfers.spawn(async move { transfer(&conn, mode, bytes, &pattern).await });
        }
    }
    let mut errors = 0u64;
    let mut first_error = None;
    while let Some(joined) = transfers.join_next().await {
        let outcome = joined.map_err(BoxError::from).and_then(|r| r);
        if let Err(e) = outcome {
            errors += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu_start;

    for (endpoint, conn) in &conns {
        conn.close(VarInt::from_u32(DONE), b"done");
        endpoint.close(VarInt::from_u32(DONE), b"done");
    }
    for (endpoint, _) in &conns {
        // Bounded: lets the CONNECTION_CLOSE go out so the server frees its state at once.
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }

    let total = bytes * (connections * streams) as u64;
    println!(
        "{{\"mode\":\"{}\",\"connections\":{connections},\"streams\":{streams},\"bytes\":{total},\
         \"secs\":{secs:.6},\"gbps\":{:.3},\"cpu_secs\":{cpu:.3},\"errors\":{errors}}}",
        mode.name(),
        total as f64 * 8.0 / secs / 1e9,
    );
    match first_error {
        None => Ok(()),
        Some(e) => Err(format!("{errors} stream(s) failed, first: {e}").into()),
    }
}

/// One stream of the run: header, then the mode's transfer, with content checked.
async fn transfer(conn: &quinn::Connection, mode: Mode, n: u64, pattern: &Bytes) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut header = [0u8; HEADER_LEN];
    header[0] = mode.wire();
    header[1..].copy_from_slice(&n.to_be_bytes());
    send.write_all(&header).await?;
    match mode {
        Mode::Upload => {
            write_pattern(&mut send, pattern, n).await?;
            send.finish()?;
            let mut count = [0u8; 8];
            recv.read_exact(&mut count).await?;
            let count = u64::from_be_bytes(count);
            if count != n {
                return Err(format!("upload: server counted {count} bytes, sent {n}").into());
            }
            if recv.read_chunk(1, true).await?.is_some() {
                return Err("upload: data after the count".into());
            }
        }
        Mode::Download => {
            send.finish()?;
            check_pattern(&mut recv, pattern, n, "download").await?;
        }
        Mode::Echo => {
            let source = async {
                write_pattern(&mut send, pattern, n).await?;
                send.finish()?;
                Ok::<_, BoxError>(())
            };
            let (a, b) = tokio::join!(source, check_pattern(&mut recv, pattern, n, "echo"));
            a.and(b)?;
        }
    }
    Ok(())
}

/// Reads the stream to its FIN and checks it is exactly `n` bytes of the pattern.
async fn check_pattern(
    recv: &mut quinn::RecvStream,
    pattern: &Bytes,
    n: u64,
    what: &str,
) -> Result<()> {
    let mut pos = 0u64;
    while let Some(chunk) = recv.read_chunk(CHUNK, true).await? {
        let data = &chunk.bytes[..];
        if pos + data.len() as u64 > n {
            return Err(format!("{what}: more than the {n} bytes asked for").into());
        }
        let start = (pos % PERIOD as u64) as usize;
        if data != &pattern[start..start + data.len()] {
            let at = data
                .iter()
                .zip(&pattern[start..])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!("{what}: content mismatch at byte {}", pos + at as u64).into());
        }
        pos += data.len() as u64;
    }
    if pos != n {
        return Err(format!("{what}: stream ended after {pos} of {n} bytes").into());
    }
    Ok(())
}

/// User + system CPU time of this process.
fn cpu_secs() -> f64 {
    // SAFETY: `usage` is a zeroed local owned by this frame; getrusage only writes into it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return f64::NAN;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Accepts any certificate but still checks the handshake signature against it, so the TLS
/// code paths (and their cost) are those of a verifying client.
#[derive(Debug)]
struct InsecureVerifier(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
