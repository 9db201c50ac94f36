//! `acme` against a real ACME CA: Debian's Pebble (`apt-get install pebble`), all on
//! loopback. Pebble resolves the test domain through a tiny DNS responder of the test's own
//! (every A query answered 127.0.0.1), validates the challenge on the port quelay's
//! `altPort` names, and signs; the test then completes a QUIC handshake with quelay and a
//! TLS handshake with its masquerade HTTPS listener, and verifies both chains to Pebble's
//! root.
//!
//! For DNS-01 the responder also serves the test zone's SOA and the TXT records a small fake
//! PowerDNS API (quelay's `pdns` provider) was given, and quelay's `resolver` asks it too.
//!
//! Each test fails with the installer's command when the `pebble` binary is missing
//! (`.ci/run` installs it).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// The name the certificates are issued for; only the test's DNS responder knows it.
const DOMAIN: &str = "acme.quelay.test";
/// The zone `DOMAIN` is in: the only name the test's DNS responder has an SOA for.
const ZONE: &str = "quelay.test";
/// The fake PowerDNS API's key.
const PDNS_KEY: &str = "pdns-test-key";
/// How long quelay gets to register, order, be validated and be issued a certificate.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(90);

/// The `pebble` binary; the test fails with how to install it when it is missing.
fn pebble_bin() -> PathBuf {
    ["/usr/bin/pebble", "/usr/local/bin/pebble"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("pebble is not installed: `apt-get install pebble` (.ci/run installs it)")
}

/// TXT records by lowercase name without the final dot, as PowerDNS content (quoted).
type TxtStore = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// Answers every DNS query on 127.0.0.1 with A 127.0.0.1 (and no AAAA), TXT from `txt`,
/// and SOA for `ZONE`, until dropped.
struct Dns {
    addr: SocketAddr,
    txt: TxtStore,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Dns {
    fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the DNS responder");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let txt = TxtStore::default();
        let records = txt.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = dns_answer(&buf[..n], &records) {
                    let _ = socket.send_to(&answer, peer);
                }
            }
        });
        Dns {
            addr,
            txt,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one query: its question echoed, and A 127.0.0.1 when it asks for A, the
/// stored values when it asks for TXT, an SOA when it asks for `ZONE`'s.
fn dns_answer(query: &[u8], txt: &TxtStore) -> Option<Vec<u8>> {
    if query.len() < 12 || query[4..6] != [0, 1] {
        return None;
    }
    let mut end = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(end)?);
        if len == 0 {
            end += 1;
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(end + 1..end + 1 + len)?).to_lowercase());
        end += 1 + len;
    }
    let name = labels.join(".");
    let question = query.get(12..end + 4)?;
    let qtype = u16::from_be_bytes([query[end], query[end + 1]]);
    let answers: Vec<(u16, Vec<u8>)> = match qtype {
        1 => vec![(1, vec![127, 0, 0, 1])],
        16 => txt
            .lock()
            .unwrap()
            .get(&name)
            .into_iter()
            .flatten()
            .map(|content| {
                let value = content.trim_matches('"').as_bytes();
                let mut rdata = vec![value.len() as u8];
                rdata.extend_from_slice(value);
                (16, rdata)
            })
            .collect(),
        6 if name == ZONE => {
            let mut rdata = dns_name(&format!("ns.{ZONE}"));
            rdata.extend(dns_name(&format!("hostmaster.{ZONE}")));
            for n in [1u32, 3600, 600, 86400, 0] {
                rdata.extend_from_slice(&n.to_be_bytes());
            }
            vec![(6, rdata)]
        }
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&[0x81, 0x80, 0, 1]);
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for (rtype, rdata) in answers {
        // The question's name, class IN, TTL 0 (nothing cached), the data.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}

/// `name` in DNS wire form, uncompressed.
fn dns_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A fake PowerDNS Authoritative API (the part dns-update uses) for `ZONE`, storing TXT
/// rrsets where the DNS responder serves them; serves until the test ends.
struct FakePdns {
    url: String,
    /// Each change as `REPLACE name` or `DELETE name`, in order.
    changes: Arc<Mutex<Vec<String>>>,
}

impl FakePdns {
    fn start(txt: TxtStore) -> FakePdns {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake PowerDNS API");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let changes = Arc::new(Mutex::new(Vec::new()));
        let log = changes.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = pdns_serve(stream, &txt, &log);
            }
        });
        FakePdns { url, changes }
    }
}

/// One request on `stream`, answered, and the connection closed.
fn pdns_serve(
    mut stream: TcpStream,
    txt: &TxtStore,
    changes: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (method, target) = (
        words.next().unwrap_or("").to_owned(),
        words.next().unwrap_or("").to_owned(),
    );
    let (mut length, mut key) = (0usize, String::new());
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "x-api-key" => key = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let path = target.split('?').next().unwrap_or("");
    let zone_path = format!("/api/v1/servers/localhost/zones/{ZONE}.");
    let (status, answer) = if key != PDNS_KEY {
        ("401 Unauthorized", String::new())
    } else if path != zone_path {
        ("404 Not Found", String::new())
    } else if method == "GET" {
        let rrsets: Vec<serde_json::Value> = txt
            .lock()
            .unwrap()
            .iter()
            .map(|(name, contents)| {
                serde_json::json!({
                    "name": format!("{name}."),
                    "type": "TXT",
                    "ttl": 60,
                    "records": contents
                        .iter()
                        .map(|c| serde_json::json!({"content": c, "disabled": false}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let zone = serde_json::json!({"name": format!("{ZONE}."), "rrsets": rrsets});
        ("200 OK", zone.to_string())
    } else if method == "PATCH" {
        let patch: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        for rrset in patch["rrsets"].as_array().into_iter().flatten() {
            let name = rrset["name"]
                .as_str()
                .unwrap_or("")
                .trim_end_matches('.')
                .to_lowercase();
            let change = rrset["changetype"].as_str().unwrap_or("").to_owned();
            let mut store = txt.lock().unwrap();
            if change == "DELETE" {
                store.remove(&name);
            } else {
                let contents = rrset["records"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["content"].as_str().map(str::to_owned))
                    .collect();
                store.insert(name.clone(), contents);
            }
            changes.lock().unwrap().push(format!("{change} {name}"));
        }
        ("204 No Content", String::new())
    } else {
        ("405 Method Not Allowed", String::new())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}

/// A CA for Pebble's own HTTPS (what SSL_CERT_FILE points quelay at) and Pebble's serving
/// certificate for 127.0.0.1 signed by it: `(ca.pem, cert.pem, key.pem)`.
fn pebble_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "quelay test CA for Pebble");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("pebble.pem"),
        dir.join("pebble.key"),
    );
    fs::write(&paths.0, ca.pem()).unwrap();
    fs::write(&paths.1, cert.pem()).unwrap();
    fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A running Pebble and the DNS responder it asks.
struct Pebble {
    /// Killed on drop.
    _child: Child,
    /// The DNS responder Pebble asks.
    dns: Dns,
    /// `https://127.0.0.1:<port>/dir`.
    directory: String,
    /// The management interface, where the roots are.
    management: SocketAddr,
    /// The port Pebble's HTTP-01 validation connects to.
    http_port: u16,
    /// The port Pebble's TLS-ALPN-01 validation connects to.
    tls_port: u16,
    /// The CA of Pebble's own HTTPS.
    ca: PathBuf,
}

impl Pebble {
    /// `validity`: the lifetime of the certificates it issues, in seconds (`None`: Pebble's
    /// default of five years).
    fn start(bin: &Path, dir: &Path, validity: Option<u64>) -> Pebble {
        let dns = Dns::start();
        let (ca, cert, key) = pebble_tls(dir);
        // Free ports, and again if one was taken before Pebble bound it.
        let mut attempts = 0;
        let (child, listen, management, http_port, tls_port) = loop {
            attempts += 1;
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let (http_port, tls_port) = (free_port(), free_port());
            let mut config = serde_json::json!({
                "pebble": {
                    "listenAddress": listen.to_string(),
                    "managementListenAddress": management.to_string(),
                    "certificate": cert,
                    "privateKey": key,
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": false,
                }
            });
            if let Some(secs) = validity {
                config["pebble"]["certificateValidityPeriod"] = secs.into();
            }
            let config_path = dir.join("pebble.json");
            fs::write(&config_path, config.to_string()).unwrap();
            let mut cmd = Command::new(bin);
            cmd.arg("-config")
                .arg(&config_path)
                .arg("-dnsserver")
                .arg(dns.addr.to_string())
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .current_dir(dir);
            let mut child = Child::spawn("pebble", cmd, dir);
            let ready = child.wait_ready_or_port_taken(
                "ACME directory listening",
                Duration::from_secs(20),
                |_| TcpStream::connect(listen).is_ok() && TcpStream::connect(management).is_ok(),
            );
            if ready {
                break (child, listen, management, http_port, tls_port);
            }
            assert!(attempts < 5, "Pebble found a port taken {attempts} times");
        };
        Pebble {
            _child: child,
            dns,
            directory: format!("https://{listen}/dir"),
            management,
            http_port,
            tls_port,
            ca,
        }
    }

    /// Pebble's issuing root (it makes a new one at every start).
    fn root(&self) -> rustls::pki_types::CertificateDer<'static> {
        let pem = fs::read(&self.ca).unwrap();
        let ca = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .unwrap()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let body = https_get(self.management, "127.0.0.1", Arc::new(tls), "/roots/0")
            .expect("Pebble's root from its management interface");
        let root = rustls_pemfile::certs(&mut body.as_bytes())
            .next()
            .expect("a PEM root")
            .expect("a readable root");
        root
    }

    /// [`Self::root`] in a PEM file under `dir`, for sing-box.
    fn root_pem(&self, dir: &Path) -> PathBuf {
        use base64::Engine as _;
        let der = self.root();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        let path = dir.join("pebble-root.pem");
        fs::write(&path, pem).expect("write Pebble's root");
        path
    }
}

/// Whether a sing-box client that verifies the server against `ca` (as `DOMAIN`) relays
/// through quelay at `server` to a loopback echo.
fn singbox_relays(server: SocketAddr, ca: &Path) -> bool {
    let opts = SbOpts {
        sni: DOMAIN.to_owned(),
        ca: Some(ca.to_owned()),
        ..SbOpts::default()
    };
    let client = SingboxClient::start(server, "pw", &opts);
    let echo = TcpEcho::start();
    let Ok(mut s) = socks5_connect(client.socks_addr(), "127.0.0.1", echo.addr().port()) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut got).is_ok() && &got == b"ping"
}

/// A TLS handshake with `addr` as `sni` under `tls`, then `GET path`; the body.
fn https_get(
    addr: SocketAddr,
    sni: &str,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<String, String> {
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(tls, name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // Go servers close without close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// The leaf quelay serves as `DOMAIN` on its HTTPS listener, verified up to `root`.
fn served_leaf(
    https: SocketAddr,
    root: rustls::pki_types::CertificateDer<'static>,
) -> Result<rustls::pki_types::CertificateDer<'static>, String> {
    served_leaf_as(https, root, DOMAIN)
}

/// Waits for quelay's HTTPS listener and returns the leaf it serves as `DOMAIN`, which must
/// verify up to Pebble's `root`; fails with quelay's log otherwise.
fn issued_leaf(
    quelay: &Child,
    https: SocketAddr,
    root: &rustls::pki_types::CertificateDer<'static>,
) -> rustls::pki_types::CertificateDer<'static> {
    assert!(wait_tcp_port(https, Duration::from_secs(10)));
    served_leaf(https, root.clone()).unwrap_or_else(|e| {
        panic!(
            "quelay's certificate does not verify to Pebble's root: {e}\n{}",
            tail(&quelay.stderr(), 30)
        )
    })
}

/// The leaf quelay serves as `sni` on its HTTPS listener, verified up to `root` for `sni`.
fn served_leaf_as(
    https: SocketAddr,
    root: rustls::pki_types::CertificateDer<'static>,
    sni: &str,
) -> Result<rustls::pki_types::CertificateDer<'static>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).map_err(|e| e.to_string())?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(tls), name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(https).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no certificate".to_owned())
}

/// The leaf quelay serves as `DOMAIN` over QUIC on `server`, verified up to `root`.
fn quic_leaf(
    server: SocketAddr,
    root: rustls::pki_types::CertificateDer<'static>,
) -> Result<rustls::pki_types::CertificateDer<'static>, String> {
    let (rt, conn, leaf) = held_quic(server, root)?;
    conn.close(0u32.into(), b"");
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    Ok(leaf)
}

/// A QUIC connection to quelay at `server` as `DOMAIN`, verified up to `root` and kept
/// open, with the runtime that drives it and the leaf it was shown.
#[allow(clippy::type_complexity)]
fn held_quic(
    server: SocketAddr,
    root: rustls::pki_types::CertificateDer<'static>,
) -> Result<
    (
        tokio::runtime::Runtime,
        quinn::Connection,
        rustls::pki_types::CertificateDer<'static>,
    ),
    String,
> {
    use quelay::quic::{self, QuicParams, Verify};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).map_err(|e| e.to_string())?;
    let crypto = quic::client_crypto(Verify::Roots(roots), &[b"h3"]).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let conn = rt.block_on(async {
        let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| e.to_string())?;
        ep.set_default_client_config(quic::client_config(crypto, &QuicParams::default()));
        let connecting = ep.connect(server, DOMAIN).map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "QUIC handshake timed out".to_owned())?
            .map_err(|e| e.to_string())
    })?;
    let leaf = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().cloned())
        .ok_or_else(|| "no certificate".to_owned())?;
    Ok((rt, conn, leaf))
}

/// The status of an HTTP/3 `GET /` on `conn` (the masquerade answers it).
async fn h3_status(conn: &quinn::Connection) -> Result<u16, String> {
    use quelay::proto::h3::{self, HuffmanPolicy};
    let fields = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", DOMAIN),
        (":path", "/"),
    ];
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&h3::headers_frame(&fields, HuffmanPolicy::Always))
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let bytes = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 16))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let resp = h3::ResponseReader::new()
        .push(&bytes)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no response head".to_owned())?;
    Ok(resp.status)
}

/// quelay's config with `acme` for `challenge` (`http` or `tls`).
fn quelay_config(
    pebble: &Pebble,
    dir: &Path,
    udp: SocketAddr,
    https: SocketAddr,
    challenge: &str,
) -> String {
    let port = match challenge {
        "http" => pebble.http_port,
        _ => pebble.tls_port,
    };
    format!(
        "listen: \"{udp}\"\n\
         auth: {{type: password, password: pw}}\n\
         acme:\n  domains: [{DOMAIN}]\n  email: test@quelay.test\n  ca: \"{}\"\n  \
         type: {challenge}\n  {challenge}: {{altPort: {port}}}\n  dir: \"{}\"\n  \
         listenHost: 127.0.0.1\n\
         outboundGuard: {{allowLoopback: true}}\n\
         masquerade:\n  listenHTTPS: \"{https}\"\n",
        pebble.directory,
        dir.join("acme").display(),
    )
}

/// Starts `quelay server -c config` trusting Pebble's HTTPS; ready once its UDP socket is
/// bound, which is after the certificate is there.
fn start_quelay(name: &str, dir: &Path, config: &Path, pebble: &Pebble, udp: SocketAddr) -> Child {
    let mut cmd = Command::new(quelay_bin());
    cmd.arg("server")
        .arg("-c")
        .arg(config)
        .env("QUELAY_LOG", "info")
        .env("SSL_CERT_FILE", &pebble.ca)
        .env_remove("SSL_CERT_DIR")
        .current_dir(dir);
    // The DNS provider's HTTP client would honour a proxy; everything here is loopback.
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        cmd.env_remove(var);
    }
    let mut child = Child::spawn(name, cmd, dir);
    child.wait_ready("certificate obtained and UDP bound", ISSUE_TIMEOUT, |c| {
        udp_bound_at(udp) && c.stderr().contains("Hysteria2 server on")
    });
    child
}

fn issued_and_served(challenge: &str) {
    let bin = pebble_bin();
    let dir = tempdir();
    let pebble = Pebble::start(&bin, &dir, None);
    let udp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.join("server.yaml");
    fs::write(&config, quelay_config(&pebble, &dir, udp, https, challenge)).unwrap();
    let mut quelay = start_quelay("quelay", &dir, &config, &pebble, udp);
    let root = pebble.root();
    let leaf = issued_leaf(&quelay, https, &root);
    let err = quelay.stderr();
    assert!(err.contains("issued by"), "{}", tail(&err, 30));
    let over_quic = quic_leaf(udp, root.clone()).unwrap_or_else(|e| {
        panic!(
            "QUIC: quelay's certificate does not verify to Pebble's root: {e}\n{}",
            tail(&quelay.stderr(), 30)
        )
    });
    assert_eq!(over_quic, leaf, "QUIC and TCP serve the same certificate");
    // The clients people run verify it too: sing-box with Pebble's root relays, and with
    // another root (the CA of Pebble's own HTTPS) it does not.
    assert!(
        singbox_relays(udp, &pebble.root_pem(&dir)),
        "sing-box verifying against Pebble's root does not relay\n{}",
        tail(&quelay.stderr(), 30)
    );
    assert!(
        !singbox_relays(udp, &pebble.ca),
        "sing-box relays with a root that did not sign the certificate"
    );

    // Stored owner-only, and used again at the next start without a new order.
    let stored: Vec<PathBuf> = walk(&dir.join("acme"));
    assert!(stored.iter().any(|p| p.ends_with("cert.pem")), "{stored:?}");
    assert!(
        stored.iter().any(|p| p.ends_with("account.json")),
        "{stored:?}"
    );
    for p in &stored {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{}", p.display());
    }
    quelay.kill();
    let mut again = start_quelay("quelay-again", &dir, &config, &pebble, udp);
    let err = again.stderr();
    assert!(err.contains("loaded from"), "{}", tail(&err, 30));
    let leaf_again = served_leaf(https, root).unwrap();
    assert_eq!(leaf, leaf_again, "the stored certificate is served again");
    again.assert_running();
    drop(again);
    drop(pebble);
}

/// Every file and directory under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn acme_http01_with_pebble() {
    issued_and_served("http");
}

#[test]
fn acme_tlsalpn01_with_pebble() {
    issued_and_served("tls");
}

/// A challenge the CA cannot reach: start-up fails, naming the domain, the challenge and
/// the CA's answer.
#[test]
fn acme_failure_names_domain_challenge_and_answer() {
    let bin = pebble_bin();
    let dir = tempdir();
    let pebble = Pebble::start(&bin, &dir, None);
    let udp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The responder listens where Pebble does not look.
    let config = quelay_config(&pebble, &dir, udp, https, "http").replace(
        &format!("altPort: {}", pebble.http_port),
        &format!("altPort: {}", free_port()),
    );
    let path = dir.join("server.yaml");
    fs::write(&path, config).unwrap();
    let mut cmd = Command::new(quelay_bin());
    cmd.arg("server")
        .arg("-c")
        .arg(&path)
        .env("QUELAY_LOG", "info")
        .env("SSL_CERT_FILE", &pebble.ca)
        .current_dir(&*dir);
    let mut quelay = Child::spawn("quelay", cmd, &dir);
    let deadline = Instant::now() + ISSUE_TIMEOUT;
    while quelay.is_running() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !quelay.is_running(),
        "quelay still running with no certificate"
    );
    let err = quelay.stderr();
    let want = format!(
        "acme.domains: {DOMAIN}: http-01 challenge failed; {} answered:",
        pebble.directory
    );
    assert!(
        err.contains(&want),
        "wanted {want:?} in:\n{}",
        tail(&err, 20)
    );
    drop(pebble);
}

/// A short-lived certificate is renewed while the server runs, and the new one is served
/// to new handshakes without a restart. The masquerade's TCP listeners hold the challenge
/// port once the server runs (`listenHTTP` for HTTP-01, `listenHTTPS` for TLS-ALPN-01), so
/// renewals are answered there.
fn renewal_swaps_the_certificate(challenge: &str) {
    let bin = pebble_bin();
    let dir = tempdir();
    // Renewal is due with a third of the lifetime left: 10 s after issuance.
    let pebble = Pebble::start(&bin, &dir, Some(15));
    let udp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.join("server.yaml");
    let (https, text, listener) = match challenge {
        "http" => {
            let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let text = quelay_config(&pebble, &dir, udp, https, "http")
                + &format!("  listenHTTP: \"127.0.0.1:{}\"\n", pebble.http_port);
            (https, text, "http-01 on masquerade.listenHTTP")
        }
        _ => {
            let https = SocketAddr::from(([127, 0, 0, 1], pebble.tls_port));
            let text = quelay_config(&pebble, &dir, udp, https, "tls");
            (https, text, "tls-alpn-01 on masquerade.listenHTTPS")
        }
    };
    fs::write(&config, text).unwrap();
    let mut quelay = start_quelay("quelay", &dir, &config, &pebble, udp);
    let root = pebble.root();
    let first = served_leaf(https, root.clone()).unwrap();
    // A connection opened before the renewal, kept through it.
    let (rt, held, held_leaf) = held_quic(udp, root.clone()).expect("a QUIC connection");
    assert_eq!(held_leaf, first);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        quelay.assert_running();
        let now = served_leaf(https, root.clone())
            .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", tail(&quelay.stderr(), 30)));
        if now != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal within 40 s:\n{}",
            tail(&quelay.stderr(), 30)
        );
        thread::sleep(Duration::from_millis(250));
    }
    // The connection from before still works on its certificate; a new one gets the new.
    assert_eq!(
        rt.block_on(h3_status(&held)),
        Ok(404),
        "the held connection answers"
    );
    let renewed = served_leaf(https, root.clone()).unwrap();
    assert_eq!(
        quic_leaf(udp, root).unwrap(),
        renewed,
        "a new QUIC connection"
    );
    assert_ne!(renewed, first);
    held.close(0u32.into(), b"");
    let err = quelay.stderr();
    assert!(
        err.contains("renewed certificate in use"),
        "{}",
        tail(&err, 30)
    );
    assert!(
        err.contains(&format!("answering {listener}")),
        "{}",
        tail(&err, 30)
    );
}

#[test]
fn acme_renewal_swaps_the_certificate() {
    renewal_swaps_the_certificate("http");
}

/// The same with TLS-ALPN-01 answered by the masquerade's HTTPS listener, which serves the
/// site to every other handshake meanwhile.
#[test]
fn acme_tlsalpn01_renewal_on_the_masquerade_https_listener() {
    renewal_swaps_the_certificate("tls");
}

/// Without `type` both challenges are offered; a taken TLS-ALPN-01 port leaves HTTP-01 to
/// do the work (the masquerade's HTTPS listener on 443 would take it so).
#[test]
fn acme_legacy_keys_fall_back_to_the_free_challenge() {
    let bin = pebble_bin();
    let dir = tempdir();
    let pebble = Pebble::start(&bin, &dir, None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let udp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = quelay_config(&pebble, &dir, udp, https, "http").replace(
        &format!("type: http\n  http: {{altPort: {}}}", pebble.http_port),
        &format!(
            "altHTTPPort: {}\n  altTLSALPNPort: {taken_port}",
            pebble.http_port
        ),
    );
    assert!(config.contains("altTLSALPNPort"), "{config}");
    let path = dir.join("server.yaml");
    fs::write(&path, config).unwrap();
    let quelay = start_quelay("quelay", &dir, &path, &pebble, udp);
    let err = quelay.stderr();
    assert!(
        err.contains("tls-alpn-01") && err.contains("trying the other challenge"),
        "{}",
        tail(&err, 30)
    );
    served_leaf(https, pebble.root()).unwrap();
    drop(taken);
}

/// DNS-01 through quelay's `pdns` provider: the fake PowerDNS API gets the TXT records, the
/// responder serves them to Pebble and to quelay's `resolver`, which also finds the zone by
/// its SOA; the certificate covers a wildcard, and the records are gone afterwards.
#[test]
fn acme_dns01_with_pebble() {
    let bin = pebble_bin();
    let dir = tempdir();
    let pebble = Pebble::start(&bin, &dir, None);
    let api = FakePdns::start(pebble.dns.txt.clone());
    let udp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.join("server.yaml");
    let text = format!(
        "listen: \"{udp}\"\n\
         auth: {{type: password, password: pw}}\n\
         acme:\n  domains: [{DOMAIN}, \"*.{DOMAIN}\"]\n  email: test@quelay.test\n  ca: \"{}\"\n  \
         type: dns\n  dns:\n    name: pdns\n    config:\n      pdns_api_url: \"{}\"\n      \
         pdns_api_key: {PDNS_KEY}\n  dir: \"{}\"\n\
         resolver: {{type: udp, udp: {{addr: \"{}\"}}}}\n\
         outboundGuard: {{allowLoopback: true}}\n\
         masquerade:\n  listenHTTPS: \"{https}\"\n",
        pebble.directory,
        api.url,
        dir.join("acme").display(),
        pebble.dns.addr,
    );
    fs::write(&config, text).unwrap();
    assert!(!dir.join("acme").exists(), "no certificate to start with");
    let mut quelay = start_quelay("quelay", &dir, &config, &pebble, udp);
    let root = pebble.root();
    let leaf = issued_leaf(&quelay, https, &root);
    let wild = served_leaf_as(https, root.clone(), &format!("any.{DOMAIN}"))
        .expect("the wildcard name verifies too");
    assert_eq!(wild, leaf);
    assert_eq!(quic_leaf(udp, root).unwrap(), leaf, "QUIC serves it too");
    let err = quelay.stderr();
    assert!(err.contains("issued by"), "{}", tail(&err, 30));
    assert!(err.contains("dns-01"), "{}", tail(&err, 30));

    // Both values went into the one record name, and the records were removed before the
    // server started (the order's end comes first).
    let record = format!("_acme-challenge.{DOMAIN}");
    let changes = api.changes.lock().unwrap().clone();
    assert!(
        changes.contains(&format!("REPLACE {record}")),
        "{changes:?}"
    );
    assert_eq!(
        changes.last(),
        Some(&format!("DELETE {record}")),
        "{changes:?}\n{}",
        tail(&err, 30)
    );
    assert!(
        pebble.dns.txt.lock().unwrap().is_empty(),
        "TXT records left: {:?}",
        pebble.dns.txt.lock().unwrap()
    );
    assert!(err.contains("removed"), "{}", tail(&err, 30));
    quelay.assert_running();
}
