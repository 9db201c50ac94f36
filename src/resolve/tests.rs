//! The resolver against a DNS server of the test's own on loopback.

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Instant;

use super::*;

/// A DNS server on 127.0.0.1: A queries of `names` get their address, AAAA queries of them an
/// empty answer, names in `silent` no reply at all, anything else NXDOMAIN.
struct TinyDns {
    addr: SocketAddr,
    /// A queries received, by name.
    queries: Arc<Mutex<HashMap<String, u32>>>,
    stop: Arc<AtomicBool>,
}

impl TinyDns {
    fn start(names: &[(&str, Ipv4Addr)], silent: &[&str]) -> TinyDns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let names: HashMap<String, Ipv4Addr> =
            names.iter().map(|(n, a)| (n.to_string(), *a)).collect();
        let silent: Vec<String> = silent.iter().map(|s| s.to_string()).collect();
        let queries = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, st) = (queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some((name, qtype, end)) = question(&buf[..n]) else {
                    continue;
                };
                if qtype == 1 {
                    *q.lock().unwrap().entry(name.clone()).or_insert(0) += 1;
                }
                if silent.iter().any(|s| name.ends_with(s.as_str())) {
                    continue;
                }
                let addr = names.get(&name);
                let mut r = buf[..end].to_vec();
                let rcode = if addr.is_some() { 0 } else { 3 };
                r[2] = 0x81; // QR, RD
                r[3] = 0x80 | rcode; // RA
                let answer = addr.filter(|_| qtype == 1);
                r[6..8].copy_from_slice(&u16::from(answer.is_some()).to_be_bytes());
                r[8..12].fill(0);
                if let Some(ip) = answer {
                    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    r.extend_from_slice(&ip.octets());
                }
                let _ = sock.send_to(&r, from);
            }
        });
        TinyDns {
            addr,
            queries,
            stop,
        }
    }

    fn a_queries(&self, name: &str) -> u32 {
        self.queries.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    fn config(&self) -> config::Resolver {
        config::Resolver::Udp(config::DnsUpstream {
            addr: self.addr.to_string(),
            timeout: Duration::from_millis(300),
            sni: None,
            insecure: false,
        })
    }
}

impl Drop for TinyDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The question's name (lowercased), type, and where the question ends.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let t = q.get(pos..pos + 4)?;
    Some((labels.join("."), u16::from_be_bytes([t[0], t[1]]), pos + 4))
}

/// Starts a lookup whose outcome arrives on the returned channel.
fn ask(r: &Resolver, host: &str, port: u16) -> io::Result<mpsc::Receiver<Addrs>> {
    let (tx, rx) = mpsc::channel();
    r.lookup(
        host,
        port,
        Box::new(move |a| {
            let _ = tx.send(a);
        }),
    )?;
    Ok(rx)
}

fn wait(rx: &mpsc::Receiver<Addrs>) -> Addrs {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("an answer within 10 s")
}

#[test]
fn udp_upstream_answers_with_the_callers_port() {
    let dns = TinyDns::start(&[("fast.test", Ipv4Addr::new(192, 0, 2, 7))], &[]);
    let r = Resolver::start(&dns.config()).unwrap();
    assert_eq!(r.kind(), "udp");
    let got = wait(&ask(&r, "fast.test", 8080).unwrap()).unwrap();
    assert_eq!(got, vec!["192.0.2.7:8080".parse::<SocketAddr>().unwrap()]);
    // A name the server does not know has no addresses, and that is not an error.
    assert_eq!(wait(&ask(&r, "nothing.test", 1).unwrap()).unwrap(), vec![]);
    // IP literals are never sent to the server.
    let got = wait(&ask(&r, "[::1]", 443).unwrap()).unwrap();
    assert_eq!(got, vec!["[::1]:443".parse::<SocketAddr>().unwrap()]);
    assert_eq!(dns.a_queries("::1"), 0);
    assert!(r.stats().accepted.load(Ordering::Relaxed) >= 3);
}

#[test]
fn a_name_that_never_answers_times_out_and_blocks_nothing_else() {
    let dns = TinyDns::start(
        &[("fast.test", Ipv4Addr::new(192, 0, 2, 8))],
        &["never.test"],
    );
    let r = Resolver::start(&dns.config()).unwrap();
    // Many lookups of names that never answer, all pending at once.
    let slow: Vec<_> = (0..100)
        .map(|i| ask(&r, &format!("n{i}.never.test"), 80).unwrap())
        .collect();
    let started = Instant::now();
    let got = wait(&ask(&r, "fast.test", 80).unwrap()).unwrap();
    assert_eq!(got, vec!["192.0.2.8:80".parse::<SocketAddr>().unwrap()]);
    // The fast name was answered while the slow ones were still pending.
    for rx in &slow {
        assert!(
            rx.try_recv().is_err(),
            "a slow name was answered before its deadline ({:?} in)",
            started.elapsed()
        );
    }
    // Each slow lookup ends with a timeout error.
    for rx in &slow {
        let e = wait(rx).expect_err("no answer is an error");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }
    assert_eq!(r.stats().timed_out.load(Ordering::Relaxed), 100);
    assert_eq!(r.stats().in_flight.load(Ordering::Relaxed), 0);
}

#[test]
fn lookups_of_a_name_in_flight_share_one_query() {
    let dns = TinyDns::start(&[], &["never.test"]);
    let r = Resolver::start(&dns.config()).unwrap();
    let all: Vec<_> = (0..50)
        .map(|i| ask(&r, "Same.Never.Test", i).unwrap())
        .collect();
    for rx in &all {
        assert!(wait(rx).is_err());
    }
    assert_eq!(r.stats().coalesced.load(Ordering::Relaxed), 49);
    // One lookup: its A query, tried at most twice.
    let q = dns.a_queries("same.never.test");
    assert!((1..=2).contains(&q), "{q} A queries");
}

#[test]
fn a_full_queue_fails_at_once() {
    let dns = TinyDns::start(&[], &["never.test"]);
    let bounds = Bounds {
        queue: 2,
        in_flight: 1,
        system_deadline: Duration::from_secs(10),
    };
    let r = Resolver::start_with(&dns.config(), bounds).unwrap();
    let mut pending = Vec::new();
    let mut refused = 0;
    // One in flight, one taken by the thread waiting for a slot, two in the queue: the rest
    // are refused at once, without blocking the caller.
    for i in 0..20 {
        match ask(&r, &format!("q{i}.never.test"), 1) {
            Ok(rx) => pending.push(rx),
            Err(e) => {
                assert_eq!(e.to_string(), "resolver queue full");
                refused += 1;
            }
        }
        // Lets the thread take what it can.
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(refused >= 16, "{refused} refused");
    assert_eq!(r.stats().queue_full.load(Ordering::Relaxed), refused);
    for rx in &pending {
        assert!(wait(rx).is_err());
    }
}

#[test]
fn system_keeps_getaddrinfo_semantics() {
    let r = Resolver::start(&config::Resolver::System).unwrap();
    assert_eq!(r.kind(), "system");
    // /etc/hosts names `localhost`.
    let got = wait(&ask(&r, "localhost", 9).unwrap()).unwrap();
    assert!(!got.is_empty() && got.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
}

#[test]
fn a_test_hosts_file_answers_the_names_it_lists() {
    let text = "# moved by the test\n\
                127.0.0.1 one.test Other.Test\n\
                ::1\tone.test   # comment\n\
                not-an-ip one.test\n\
                127.0.0.1 one.test\n\
                192.0.2.1\n";
    let one: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    assert_eq!(hosts_entries(text, "one.test"), one);
    assert_eq!(
        hosts_entries(text, "other.test"),
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );
    assert!(
        hosts_entries(text, "moved").is_empty(),
        "comments name nothing"
    );
    assert!(hosts_entries(text, "absent.test").is_empty());
}
