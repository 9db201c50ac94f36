//! Sniffing: arbitrary stream starts and datagrams never panic, and a stream fed in two
//! pieces gets the answer it gets in one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::proto::sniff::{quic_initial_sni, tcp, TcpSniff, TcpSniffer, MAX_TCP_SNIFF_LEN};

fuzz_target!(|data: &[u8]| {
    let whole = tcp(data);
    let split = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let mut sniffer = TcpSniffer::new();
    let first = sniffer.sniff(&data[..split]);
    let second = sniffer.sniff(data);
    // An answer given on a prefix is final.
    assert!(first == TcpSniff::NeedMore || first == whole);
    assert_eq!(second, whole);
    match &whole {
        TcpSniff::NeedMore => assert!(data.len() < MAX_TCP_SNIFF_LEN),
        TcpSniff::Found(host) => assert!(!host.is_empty()),
        TcpSniff::Nothing => {}
    }
    if let Some(name) = quic_initial_sni(data) {
        assert!(!name.is_empty());
    }
});
