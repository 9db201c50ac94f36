//! Server, client and cluster configuration files, and the traffic-stats answers `quelay
//! cluster` reads from nodes: any text parses or gives an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = quelay::config::parse_server(text, "fuzz.yaml");
    let _ = quelay::config::parse_client(text, "fuzz.yaml");
    let _ = quelay::config::parse_cluster(text, "fuzz.yaml");
    let _ = quelay::cluster::parse_traffic(data);
    let _ = quelay::cluster::parse_online(data);
});
