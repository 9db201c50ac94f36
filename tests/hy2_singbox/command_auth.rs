//! `auth.type: command` with a real client: sing-box logs in through a shell script that
//! the in-process server runs once per login, with the client's address, its password and
//! its receive rate as arguments. The script's stdout is the user (`/online` of the traffic
//! API says so); a password it refuses relays nothing.

use super::support;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use support::{http_get, socks5_connect, HttpTarget, SbOpts, SingboxClient};

/// `GET /online` of the traffic API, whole (head and body).
fn online(api: SocketAddr, secret: &str) -> String {
    let mut s = TcpStream::connect(api).expect("connect to the traffic API");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /online HTTP/1.1\r\nHost: {api}\r\nAuthorization: {secret}\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send the request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn command_auth_logs_in_the_user_the_script_names_quelay() {
    let dir = support::tempdir();
    let script = dir.join("auth.sh");
    let log = dir.join("auth.log");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             printf '%s|%s|%s\\n' \"$1\" \"$2\" \"$3\" >> {log:?}\n\
             [ \"$2\" = letmein ] || exit 1\n\
             echo '  carol  '\n"
        ),
    )
    .expect("write the auth script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod the script");
    let (cert, key) = support::write_cert(&dir);
    let api = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let server = support::start_in_process(&format!(
        "listen: 127.0.0.1:0\n\
         tls: {{cert: {cert:?}, key: {key:?}}}\n\
         auth: {{type: command, command: {script:?}}}\n\
         outboundGuard: {{allowLoopback: true}}\n\
         trafficStats: {{listen: {api}, secret: s3cret}}\n\
         engine: {{workers: 1}}\n"
    ));
    assert!(
        support::wait_tcp_port(api, Duration::from_secs(10)),
        "the traffic API did not come up"
    );
    let target = HttpTarget::start();
    let path = "/bytes/100000";

    // The script's "yes": the request relays, as the user it printed.
    let mut good = SingboxClient::start(server.addr, "letmein", &SbOpts::default());
    let mut s = socks5_connect(good.socks_addr(), "127.0.0.1", target.addr().port())
        .unwrap_or_else(|e| {
            good.child().assert_running();
            panic!("SOCKS5 CONNECT through the logged-in client: {e}")
        });
    let (status, body) = http_get(&mut s, &target.addr().to_string(), path)
        .expect("a GET through the logged-in client");
    assert_eq!((status, body.len()), (200, 100_000));
    let online = online(api, "s3cret");
    assert!(
        online.contains("\"carol\":1"),
        "/online should list the user the script printed (trimmed): {online}"
    );

    // The script's "no": nothing relays.
    let mut bad = SingboxClient::start(server.addr, "wrong", &SbOpts::default());
    let start = Instant::now();
    let refused = match socks5_connect(bad.socks_addr(), "127.0.0.1", target.addr().port()) {
        Err(_) => true,
        Ok(mut s) => http_get(&mut s, &target.addr().to_string(), path).is_err(),
    };
    assert!(refused, "a password the script refuses relayed");
    bad.child().assert_running();

    // One run per login, with the client's address, its password and its receive rate
    // (sing-box without a bandwidth sends 0).
    let calls = fs::read_to_string(&log).expect("the script ran");
    let lines: Vec<&str> = calls.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("|letmein|0") && l.starts_with("127.0.0.1:")),
        "the script's arguments: {calls}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("|wrong|0")),
        "the refused login ran the script: {calls}"
    );
    eprintln!("auth script calls ({:.1?}):\n{calls}", start.elapsed());
    drop((good, bad));
    support::stop_in_process(server);
}
