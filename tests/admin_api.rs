//! The admin HTTP endpoints against hostile clients, in process on loopback: idle
//! connections, a trickled body and an oversized one must not stall the traffic-stats API,
//! and idle connections are closed at the header timeout.

// Each test binary uses a subset of the shared helpers.
#[allow(unused_imports)]
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use quelay::metrics::http::{BODY_DEADLINE, HEADER_TIMEOUT};

const SECRET: &str = "s3cret";

/// An in-process server with the traffic-stats API on a free port.
fn server_with_api() -> (quelay::server::run::Server, SocketAddr) {
    let api: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .expect("address");
    let server = support::start_in_process(&format!(
        "listen: 127.0.0.1:0\n\
         auth: {{type: userpass, userpass: {{alice: pa}}}}\n\
         trafficStats: {{listen: \"{api}\", secret: {SECRET}}}\n\
         engine: {{workers: 1}}\n"
    ));
    (server, api)
}

/// One request on a connection of its own, answered within `within`: (status, body).
fn request(api: SocketAddr, head: &str, within: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&api, within)?;
    s.set_read_timeout(Some(within))?;
    s.write_all(head.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {out:?}")))?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(mut s: &TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
    }
}

/// 500 idle TCP connections, and one `POST /kick` whose 2 KiB body trickles in at a byte a
/// second: `GET /traffic` still answers within a second, five times in a row. The trickled
/// request is answered 408 at the body deadline, and the idle connections are closed at the
/// header timeout.
///
/// On the tiny_http server this replaced (a thread per connection, the requests served in
/// turn by one thread, no timeouts) the API stalled: against the release binary of that
/// code, with the same 500 idle connections and trickled body, all five `GET /traffic`
/// went unanswered within their second; this server answered each in about 1 ms.
#[test]
fn idle_connections_and_a_trickled_body_do_not_stall_the_api() {
    const IDLE: usize = 500;
    support::raise_open_files(4 * IDLE as u64);
    let (server, api) = server_with_api();

    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect_timeout(&api, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();

    let trickle = std::thread::spawn(move || {
        let mut s = TcpStream::connect(api).expect("connect the trickler");
        let head = format!(
            "POST /kick HTTP/1.1\r\nHost: localhost\r\nAuthorization: {SECRET}\r\n\
             Content-Length: 2048\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("send the /kick head");
        let started = Instant::now();
        // A byte, then a second's wait for an answer; bounded well past the body deadline.
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("read timeout");
        let mut answer = Vec::new();
        for _ in 0..BODY_DEADLINE.as_secs() + 5 {
            if s.write_all(b" ").is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )
    });

    // Let the trickle start, then ask five times while it goes on.
    std::thread::sleep(Duration::from_millis(500));
    let get = format!(
        "GET /traffic HTTP/1.1\r\nHost: localhost\r\nAuthorization: {SECRET}\r\n\
         Connection: close\r\n\r\n"
    );
    for i in 0..5 {
        let t = Instant::now();
        let answer = request(api, &get, Duration::from_secs(1));
        let took = t.elapsed();
        let (status, body) =
            answer.unwrap_or_else(|e| panic!("GET /traffic #{i} after {took:?}: {e}"));
        assert_eq!(status, 200, "GET /traffic #{i}: {body}");
        assert!(body.starts_with('{'), "GET /traffic #{i}: {body}");
        assert!(
            took < Duration::from_secs(1),
            "GET /traffic #{i} took {took:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let (answer, took) = trickle.join().expect("the trickler");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "the trickled /kick after {took:?}: {answer:?}"
    );
    assert!(
        took < BODY_DEADLINE + Duration::from_secs(2),
        "the trickled /kick was answered after {took:?}"
    );

    // The idle connections are closed at the header timeout.
    let first = idle.first().expect("an idle connection");
    assert!(
        closed_within(first, HEADER_TIMEOUT + Duration::from_secs(3)),
        "an idle connection still open {:?} after it was opened",
        opened.elapsed()
    );
    let open = idle
        .iter()
        .filter(|s| !closed_within(s, Duration::from_secs(2)))
        .count();
    assert_eq!(
        open, 0,
        "idle connections still open after the header timeout"
    );

    support::stop_in_process(server);
}

/// An idle connection is closed at the header timeout, not before; a body past the bound is
/// refused at once, unread; a request without the secret gets a 401 before its body is read;
/// the API still answers after all of them.
#[test]
fn idle_closed_at_the_header_timeout_and_bodies_refused_unread() {
    let (server, api) = server_with_api();
    let idle = TcpStream::connect(api).expect("connect an idle connection");
    let opened = Instant::now();
    assert!(
        !closed_within(&idle, HEADER_TIMEOUT - Duration::from_secs(1)),
        "an idle connection was closed after {:?}, before the header timeout",
        opened.elapsed()
    );
    assert!(
        closed_within(&idle, Duration::from_secs(3)),
        "an idle connection still open {:?} after it was opened",
        opened.elapsed()
    );

    let within = Duration::from_secs(2);
    let big = "POST /kick HTTP/1.1\r\nHost: localhost\r\nAuthorization: s3cret\r\n\
               Content-Length: 2097152\r\n\r\n[";
    let (status, body) = request(api, big, within).expect("the oversized /kick");
    assert_eq!(status, 413, "{body}");
    let stranger = "POST /kick HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2048\r\n\r\n[";
    let (status, body) = request(api, stranger, within).expect("the /kick without secret");
    assert_eq!(status, 401, "{body}");
    let get = format!(
        "GET /online HTTP/1.1\r\nHost: localhost\r\nAuthorization: {SECRET}\r\n\
         Connection: close\r\n\r\n"
    );
    let (status, body) = request(api, &get, within).expect("GET /online");
    assert_eq!((status, body.as_str()), (200, "{}"));
    support::stop_in_process(server);
}
