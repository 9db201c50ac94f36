//! Routing, with sing-box 1.14.4 as the client: `quelay server`'s ACL sends each request
//! where its rules say (reject, a hijacked address, an outbound of a given IP family), and
//! sniffing turns a request for an IP into one for the name its first bytes carry, so that
//! name's rules apply.
//!
//! Names resolve through a hosts file the server's resolver reads first
//! (`QUELAY_TEST_HOSTS`), never through the system's files. Every target is on loopback;
//! the dual-stack [`WhoTarget`] tells which family a connection arrived over.

use super::support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use support::{
    free_port, http_get, metric, scrape, socks5_connect, tempdir, HttpTarget, Hy2Server,
    QuelayServer, SbOpts, SingboxClient, TcpEcho, TempDir, UdpService, PASSWORD,
};

/// How long a proxied exchange may take before the test calls it lost.
const EXCHANGE: Duration = Duration::from_secs(10);

/// A TCP target on `[::]` (IPv4 clients arrive as `::ffff:a.b.c.d`) that reads one line and
/// answers with the address the connection came from, then closes.
struct WhoTarget {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WhoTarget {
    fn start() -> WhoTarget {
        let listener = TcpListener::bind("[::]:0").expect("bind a dual-stack listener on [::]");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        thread::spawn(move || answer_who(s, peer));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        WhoTarget {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

fn answer_who(s: TcpStream, peer: SocketAddr) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(EXCHANGE));
    let mut line = String::new();
    let mut r = BufReader::new(&s);
    if r.read_line(&mut line).is_ok() {
        let _ = (&s).write_all(format!("{}\n", peer.ip()).as_bytes());
    }
}

impl Drop for WhoTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A protobuf field: `tag` with a length-delimited value.
fn pb_bytes(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag << 3 | 2];
    let mut len = value.len();
    while len >= 0x80 {
        out.push(len as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(value);
    out
}

/// A v2ray geosite.dat with one list, `code`, of one domain (and its subdomains).
fn geosite_dat(code: &str, domain: &str) -> Vec<u8> {
    // Domain { type = 2 (RootDomain), value }
    let mut d = vec![1 << 3, 2];
    d.extend(pb_bytes(2, domain.as_bytes()));
    let mut site = pb_bytes(1, code.as_bytes());
    site.extend(pb_bytes(2, &d));
    pb_bytes(1, &site)
}

/// A v2ray geoip.dat with one list, `code`, of one IPv4 network.
fn geoip_dat(code: &str, net: [u8; 4], prefix: u8) -> Vec<u8> {
    let mut cidr = pb_bytes(1, &net);
    cidr.extend([2 << 3, prefix]);
    let mut ip = pb_bytes(1, code.as_bytes());
    ip.extend(pb_bytes(2, &cidr));
    pb_bytes(1, &ip)
}

/// A hosts file (`IP name` per line) for the server's resolver.
fn hosts_file(dir: &TempDir, lines: &[&str]) -> PathBuf {
    let path = dir.join("hosts");
    fs::write(&path, lines.join("\n") + "\n").expect("write the hosts file");
    path
}

/// Opens `host:port` through the client's SOCKS5 port, sends `send`, and returns every
/// byte that comes back until the far end closes. A refused request comes back empty.
fn exchange(client: &SingboxClient, host: &str, port: u16, send: &[u8]) -> Vec<u8> {
    let mut s = match socks5_connect(client.socks_addr(), host, port) {
        Ok(s) => s,
        // sing-box may refuse at the SOCKS step when the server's answer is already in.
        Err(_) => return Vec::new(),
    };
    s.set_read_timeout(Some(EXCHANGE)).expect("read timeout");
    let _ = s.write_all(send);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{host}:{port}: no answer and no close within {EXCHANGE:?}: {e}"),
    }
    got
}

/// Sends `send` and reads until the echo has returned as many bytes (the echo target does
/// not close on its own).
fn echo_exchange(client: &SingboxClient, host: &str, port: u16, send: &[u8]) -> Vec<u8> {
    let mut s = match socks5_connect(client.socks_addr(), host, port) {
        Ok(s) => s,
        Err(_) => return Vec::new(),
    };
    s.set_read_timeout(Some(EXCHANGE)).expect("read timeout");
    let _ = s.write_all(send);
    let mut got = vec![0; send.len()];
    let mut n = 0;
    while n < got.len() {
        match s.read(&mut got[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    got.truncate(n);
    got
}

/// `quelay_acl_rejected_total` once it reaches `want` (workers publish their counters
/// from their loops, a moment after the fact), or what it is after 5 s.
fn rejected(metrics: SocketAddr, want: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = metric(&scrape(metrics), "quelay_acl_rejected_total");
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `reject` ends the request with nothing relayed; a hijack sends it to the rule's address
/// on the requested port; an outbound with `mode: 4` or `mode: 6` connects over that family
/// to a name that has both; geosite and geoip rules match through small generated `.dat`
/// files; what no rule names falls to the last rule.
#[test]
fn acl_routes_each_request_by_its_rules_quelay() {
    let web = HttpTarget::start();
    let who = WhoTarget::start();
    let dir = tempdir();
    let hosts = hosts_file(
        &dir,
        &[
            "127.0.0.1 dual4.test",
            "::1 dual4.test",
            "127.0.0.1 dual6.test",
            "::1 dual6.test",
            "::1 fallback.test",
            "127.0.0.1 fallback.test",
        ],
    );
    let geosite = dir.join("geosite.dat");
    fs::write(&geosite, geosite_dat("blocklist", "geo.test")).expect("write geosite.dat");
    let geoip = dir.join("geoip.dat");
    fs::write(&geoip, geoip_dat("second", [127, 0, 0, 2], 32)).expect("write geoip.dat");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut server = QuelayServer::start_with_hosts(
        &format!(
            "metrics: {{listen: {metrics}}}\n\
             outbounds:\n\
             \x20 - {{name: v4, type: direct, direct: {{mode: 4}}}}\n\
             \x20 - {{name: v6, type: direct, direct: {{mode: 6}}}}\n\
             \x20 - {{name: p64, type: direct, direct: {{mode: 64}}}}\n\
             acl:\n\
             \x20 geosite: {geosite}\n\
             \x20 geoip: {geoip}\n\
             \x20 inline:\n\
             \x20   - reject(blocked.test)\n\
             \x20   - reject(geosite:blocklist)\n\
             \x20   - direct(moved.test, tcp/{web_port}, 127.0.0.1)\n\
             \x20   - v4(dual4.test)\n\
             \x20   - v6(dual6.test)\n\
             \x20   - p64(fallback.test)\n\
             \x20   - direct(geoip:second)\n\
             \x20   - reject(all)\n",
            web_port = web.addr().port(),
            geosite = geosite.display(),
            geoip = geoip.display(),
        ),
        &hosts,
    );
    let mut client = SingboxClient::start(server.addr(), PASSWORD, &SbOpts::default());

    let got = exchange(
        &client,
        "blocked.test",
        web.addr().port(),
        b"GET / HTTP/1.1\r\n\r\n",
    );
    assert!(
        got.is_empty(),
        "reject(blocked.test) relayed {} bytes",
        got.len()
    );
    assert_eq!(rejected(metrics, 1.0), 1.0, "one rejection counted");

    let mut s = socks5_connect(client.socks_addr(), "moved.test", web.addr().port())
        .expect("SOCKS5 CONNECT moved.test");
    s.set_read_timeout(Some(EXCHANGE)).expect("read timeout");
    let (status, _body) = http_get(&mut s, "moved.test", "/bytes/1000").unwrap_or_else(|e| {
        client.child().assert_running();
        server.child().assert_running();
        panic!("GET through the hijack to 127.0.0.1: {e}")
    });
    assert_eq!(status, 200, "the hijacked request reached the web target");

    let v4 = exchange(&client, "dual4.test", who.port, b"who\n");
    assert_eq!(
        String::from_utf8_lossy(&v4).trim(),
        "::ffff:127.0.0.1",
        "mode 4 connects over IPv4"
    );
    let v6 = exchange(&client, "dual6.test", who.port, b"who\n");
    assert_eq!(
        String::from_utf8_lossy(&v6).trim(),
        "::1",
        "mode 6 connects over IPv6"
    );

    // Mode 64 tries ::1 first, where nothing listens on the IPv4-only echo's port, then
    // falls back to 127.0.0.1.
    let echo = TcpEcho::start();
    let back = echo_exchange(&client, "fallback.test", echo.addr().port(), b"ping\n");
    assert_eq!(
        back, b"ping\n",
        "mode 64 falls back to IPv4 when IPv6 refuses"
    );

    let geo = exchange(&client, "sub.geo.test", who.port, b"who\n");
    assert!(
        geo.is_empty(),
        "reject(geosite:blocklist) relayed {:?}",
        String::from_utf8_lossy(&geo)
    );
    assert_eq!(rejected(metrics, 2.0), 2.0, "two rejections counted");
    let second = exchange(&client, "127.0.0.2", who.port, b"who\n");
    assert!(
        String::from_utf8_lossy(&second).starts_with("::ffff:127."),
        "direct(geoip:second) lets 127.0.0.2 through: {:?}",
        String::from_utf8_lossy(&second)
    );

    let other = exchange(&client, "127.0.0.1", who.port, b"who\n");
    assert!(
        other.is_empty(),
        "reject(all) relayed {:?}",
        String::from_utf8_lossy(&other)
    );
    assert_eq!(rejected(metrics, 3.0), 3.0, "three rejections counted");
}

/// A TLS ClientHello record (TLS 1.3 offered) naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    fn u16be(v: usize) -> [u8; 2] {
        (v as u16).to_be_bytes()
    }
    let name = sni.as_bytes();
    let mut list = vec![0];
    list.extend(u16be(name.len()));
    list.extend(name);
    let mut ext = vec![0, 0];
    ext.extend(u16be(list.len() + 2));
    ext.extend(u16be(list.len()));
    ext.extend(&list);
    // supported_versions: TLS 1.3.
    ext.extend([0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0x00, 0x02, 0x13, 0x01]);
    body.extend([0x01, 0x00]);
    body.extend(u16be(ext.len()));
    body.extend(&ext);
    let mut hs = vec![0x01, 0];
    hs.extend(u16be(body.len()));
    hs.extend(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16be(hs.len()));
    record.extend(&hs);
    record
}

/// With `sniff` on, a request for 127.0.0.1 that opens with a ClientHello for `echo.test`
/// is routed as `echo.test` (allowed, resolved by the server) and the hello reaches the
/// target intact; one for `blocked.test` is rejected by that name's rule; a request whose
/// first bytes name nothing stays an IP request and falls to `reject(all)`. An HTTP request
/// is routed by its Host.
#[test]
fn sniffing_routes_an_ip_request_by_the_name_it_carries_quelay() {
    let echo = TcpEcho::start();
    let web = HttpTarget::start();
    let dir = tempdir();
    let hosts = hosts_file(&dir, &["127.0.0.1 echo.test", "127.0.0.1 web.test"]);
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut server = QuelayServer::start_with_hosts(
        &format!(
            "metrics: {{listen: {metrics}}}\n\
             sniff: {{enable: true, timeout: 2s}}\n\
             acl:\n\
             \x20 inline:\n\
             \x20   - reject(blocked.test)\n\
             \x20   - direct(echo.test)\n\
             \x20   - direct(web.test)\n\
             \x20   - reject(all)\n"
        ),
        &hosts,
    );
    let mut client = SingboxClient::start(server.addr(), PASSWORD, &SbOpts::default());
    let port = echo.addr().port();

    let hello = client_hello("echo.test");
    let back = echo_exchange(&client, "127.0.0.1", port, &hello);
    if back != hello {
        client.child().assert_running();
        server.child().assert_running();
        panic!(
            "the ClientHello for echo.test came back as {} of {} bytes",
            back.len(),
            hello.len()
        );
    }

    let got = exchange(&client, "127.0.0.1", port, &client_hello("blocked.test"));
    assert!(
        got.is_empty(),
        "a hello for blocked.test relayed {} bytes",
        got.len()
    );
    assert_eq!(rejected(metrics, 1.0), 1.0, "one rejection counted");

    let got = exchange(
        &client,
        "127.0.0.1",
        port,
        b"\x01\x02\x03 nothing to sniff\n",
    );
    assert!(
        got.is_empty(),
        "an unnamed request relayed {} bytes",
        got.len()
    );
    assert_eq!(rejected(metrics, 2.0), 2.0, "two rejections counted");

    let mut s = socks5_connect(client.socks_addr(), "127.0.0.1", web.addr().port())
        .expect("SOCKS5 CONNECT 127.0.0.1");
    s.set_read_timeout(Some(EXCHANGE)).expect("read timeout");
    let (status, _) = http_get(&mut s, "web.test", "/bytes/100")
        .unwrap_or_else(|e| panic!("GET with Host: web.test: {e}"));
    assert_eq!(status, 200, "the request was routed by its Host");
}

/// A proxy from Debian's packages, run by the test on a free loopback port; its outgoing
/// connections leave from `bind`, so a target can tell it was reached through the proxy.
struct RealProxy {
    child: support::Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl RealProxy {
    fn need(bin: &str, package: &str) {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
        assert!(
            found,
            "{bin} is not installed: `apt-get install {package}` (.ci/run installs it)"
        );
    }

    /// microsocks, with a username and password, connecting from `bind`.
    fn microsocks(user: &str, pass: &str, bind: &str) -> RealProxy {
        Self::need("microsocks", "microsocks");
        let dir = tempdir();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = std::process::Command::new("microsocks");
        cmd.args(["-i", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(["-u", user, "-P", pass, "-b", bind]);
        Self::spawn("microsocks", cmd, addr, dir)
    }

    /// tinyproxy, with Basic credentials, connecting from `bind`.
    fn tinyproxy(user: &str, pass: &str, bind: &str) -> RealProxy {
        Self::need("tinyproxy", "tinyproxy");
        let dir = tempdir();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let conf = dir.join("tinyproxy.conf");
        fs::write(
            &conf,
            format!(
                "Port {}\nListen 127.0.0.1\nBind {bind}\nTimeout 60\n\
                 LogFile \"{}\"\nLogLevel Connect\nBasicAuth {user} {pass}\nAllow 127.0.0.1\n",
                addr.port(),
                dir.join("tinyproxy.log").display(),
            ),
        )
        .expect("write tinyproxy.conf");
        let mut cmd = std::process::Command::new("tinyproxy");
        cmd.arg("-d").arg("-c").arg(&conf);
        Self::spawn("tinyproxy", cmd, addr, dir)
    }

    fn spawn(name: &str, cmd: std::process::Command, addr: SocketAddr, dir: TempDir) -> RealProxy {
        let mut child = support::Child::spawn(name, cmd, &dir);
        child.wait_ready(
            &format!("{name} listening on {addr}"),
            Duration::from_secs(10),
            |_| support::wait_tcp_port(addr, Duration::from_millis(100)),
        );
        RealProxy {
            child,
            addr,
            _dir: dir,
        }
    }
}

/// Rules send requests to a SOCKS5 outbound (microsocks, username and password) and an
/// HTTP CONNECT outbound (tinyproxy, Basic auth): the target sees each arrive from the
/// address its proxy connects from. A proxy that refuses the credentials ends the request.
#[test]
fn proxy_outbounds_carry_requests_through_real_proxies_quelay() {
    let who = WhoTarget::start();
    let mut socks = RealProxy::microsocks("alice", "s0cks", "127.0.0.2");
    let mut http = RealProxy::tinyproxy("bob", "h77p", "127.0.0.3");
    let mut server = QuelayServer::start(&format!(
        "outbounds:\n\
         \x20 - {{name: sox, type: socks5, socks5: {{addr: \"{socks}\", username: alice, password: s0cks}}}}\n\
         \x20 - {{name: web, type: http, http: {{url: \"http://bob:h77p@{http}\"}}}}\n\
         \x20 - {{name: badsox, type: socks5, socks5: {{addr: \"{socks}\", username: alice, password: wrong}}}}\n\
         acl:\n\
         \x20 inline:\n\
         \x20   - sox(via-socks.test, *, 127.0.0.1)\n\
         \x20   - web(via-http.test, *, 127.0.0.1)\n\
         \x20   - badsox(bad-socks.test, *, 127.0.0.1)\n\
         \x20   - reject(all)\n",
        socks = socks.addr,
        http = http.addr,
    ));
    let mut client = SingboxClient::start(server.addr(), PASSWORD, &SbOpts::default());

    let via_socks = exchange(&client, "via-socks.test", who.port, b"who\n");
    let via_http = exchange(&client, "via-http.test", who.port, b"who\n");
    let bad = exchange(&client, "bad-socks.test", who.port, b"who\n");
    let seen = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    if seen(&via_socks) != "::ffff:127.0.0.2" || seen(&via_http) != "::ffff:127.0.0.3" {
        socks.child.assert_running();
        http.child.assert_running();
        client.child().assert_running();
        server.child().assert_running();
    }
    assert_eq!(seen(&via_socks), "::ffff:127.0.0.2", "through microsocks");
    assert_eq!(seen(&via_http), "::ffff:127.0.0.3", "through tinyproxy");
    assert!(
        bad.is_empty(),
        "wrong SOCKS5 credentials relayed {:?}",
        seen(&bad)
    );
}

impl RealProxy {
    /// Dante (danted), without authentication, relaying UDP (UDP ASSOCIATE) and TCP from
    /// `external`.
    fn dante(external: &str) -> RealProxy {
        Self::need("danted", "dante-server");
        let dir = tempdir();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let conf = dir.join("danted.conf");
        fs::write(
            &conf,
            format!(
                "logoutput: stderr\n\
                 internal: 127.0.0.1 port = {port}\n\
                 external: {external}\n\
                 clientmethod: none\n\
                 socksmethod: none\n\
                 user.privileged: root\n\
                 user.unprivileged: nobody\n\
                 client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
                 socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 \
                 command: connect udpassociate udpreply }}\n",
                port = addr.port(),
            ),
        )
        .expect("write danted.conf");
        let mut cmd = std::process::Command::new("danted");
        cmd.arg("-f").arg(&conf).arg("-N").arg("1");
        Self::spawn("danted", cmd, addr, dir)
    }
}

/// A UDP target on 127.0.0.1 that answers each datagram with the address it came from and
/// the datagram itself.
fn udp_who() -> UdpService {
    UdpService::start("udp-who", "127.0.0.1:0", |d, from| {
        let mut answer = format!("{} ", from.ip()).into_bytes();
        answer.extend_from_slice(d);
        Some(answer)
    })
}

/// A UDP session that rules send to a SOCKS5 outbound leaves through a UDP ASSOCIATE with
/// Dante: the target sees the datagrams arrive from Dante's external address, and its
/// answers come back to the client labelled with the target's address. A session routed
/// `direct` reaches the same target from loopback itself.
#[test]
fn udp_routed_to_a_socks5_outbound_goes_through_its_association_quelay() {
    let (proxied, direct) = (udp_who(), udp_who());
    let mut dante = RealProxy::dante("127.0.0.5");
    let mut server = QuelayServer::start(&format!(
        "outbounds:\n\
         \x20 - {{name: sox, type: socks5, socks5: {{addr: \"{socks}\"}}}}\n\
         acl:\n\
         \x20 inline:\n\
         \x20   - sox(all, udp/{port})\n\
         \x20   - direct(all)\n",
        socks = dante.addr,
        port = proxied.addr().port(),
    ));
    let mut client = SingboxClient::start(server.addr(), PASSWORD, &SbOpts::default());
    // One UDP session per target: each leaves the way its first destination is routed.
    let ask = |target: SocketAddr| {
        let udp = support::Socks5Udp::associate(client.socks_addr()).expect("UDP ASSOCIATE");
        (0..3)
            .map(|i| {
                let payload = format!("datagram {i}");
                udp.send_to(target, payload.as_bytes()).expect("send");
                match udp.recv_from(EXCHANGE) {
                    Ok((from, answer)) => (from, String::from_utf8_lossy(&answer).into_owned()),
                    Err(e) => (target, format!("no answer: {e}")),
                }
            })
            .collect::<Vec<_>>()
    };
    let via_dante = ask(proxied.addr());
    let straight = ask(direct.addr());
    if via_dante
        .iter()
        .chain(&straight)
        .any(|(_, a)| a.starts_with("no answer"))
    {
        dante.child.assert_running();
        client.child().assert_running();
        server.child().assert_running();
    }
    for (answers, target, source) in [
        (&via_dante, proxied.addr(), "127.0.0.5"),
        (&straight, direct.addr(), "127.0.0.1"),
    ] {
        for (i, (from, answer)) in answers.iter().enumerate() {
            assert_eq!(*from, target, "the answer is labelled with the target");
            assert_eq!(answer, &format!("{source} datagram {i}"));
        }
    }
}
