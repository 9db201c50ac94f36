//! Server and client configuration files: any text parses or gives a config error, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = quelay::config::parse_server(text, "fuzz.yaml");
    let _ = quelay::config::parse_client(text, "fuzz.yaml");
});
