//! A UDP relay on 127.0.0.1 that delays every datagram, both ways, by a fixed time: a long
//! path for flow-control tests without touching the host's network settings. Each client
//! address gets its own upstream socket (as a NAT would), so several clients may share it.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A datagram waiting for its time: when, from which socket, to whom.
type Delayed = (Instant, Arc<UdpSocket>, SocketAddr, Vec<u8>);

pub struct UdpDelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

/// Socket buffers large enough for a burst of a fast sender.
const BUFFER: usize = 8 << 20;

fn socket(bind: &str) -> Arc<UdpSocket> {
    let s = UdpSocket::bind(bind).expect("bind the delay relay");
    let s2 = socket2::SockRef::from(&s);
    let _ = s2.set_recv_buffer_size(BUFFER);
    let _ = s2.set_send_buffer_size(BUFFER);
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    Arc::new(s)
}

/// Sends each datagram once its time has come; datagrams arrive in order of their times.
fn sender(rx: Receiver<Delayed>) {
    for (at, sock, to, data) in rx {
        let now = Instant::now();
        if at > now {
            thread::sleep(at - now);
        }
        let _ = sock.send_to(&data, to);
    }
}

impl UdpDelay {
    /// Relays datagrams to and from `upstream`, each held `one_way` before it goes on.
    pub fn start(upstream: SocketAddr, one_way: Duration) -> UdpDelay {
        let front = socket("127.0.0.1:0");
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel::<Delayed>();
        thread::spawn(move || sender(rx));
        let uplinks: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let stop2 = stop.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, client)) = front.recv_from(&mut buf) else {
                    continue;
                };
                let up = uplinks
                    .lock()
                    .unwrap()
                    .entry(client)
                    .or_insert_with(|| {
                        let up = socket("127.0.0.1:0");
                        spawn_downlink(
                            up.clone(),
                            front.clone(),
                            client,
                            tx.clone(),
                            &stop2,
                            one_way,
                        );
                        up
                    })
                    .clone();
                let _ = tx.send((Instant::now() + one_way, up, upstream, buf[..n].to_vec()));
            }
        });
        UdpDelay { addr, stop }
    }

    /// Where clients send instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Relays what the upstream answers on `up` back to `client` through `front`.
fn spawn_downlink(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    tx: Sender<Delayed>,
    stop: &Arc<AtomicBool>,
    one_way: Duration,
) {
    let stop = stop.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, _)) = up.recv_from(&mut buf) {
                let _ = tx.send((
                    Instant::now() + one_way,
                    front.clone(),
                    client,
                    buf[..n].to_vec(),
                ));
            }
        }
    });
}

impl Drop for UdpDelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
