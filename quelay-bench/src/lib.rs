//! quelay-bench: the load generators and the endpoints they measure against, outside the
//! relay. It uses the relay only through the `quelay` library's public API.
//!
//! A raw QUIC workload that exercises the engine without Hysteria2 on top: an echo /
//! sink / source server ([`echo::start`] with [`echo::EchoApp`], `quelay-bench echo`) and a
//! load client ([`load::LoadApp`], `quelay-bench quic`).
//!
//! Wire format, per bidirectional stream (also spoken by `examples/quinn_pair.rs`, the
//! plain quinn baseline): the client first writes a 9-byte header, mode (u8) and N (u64
//! big-endian), then
//! - mode 0, echo: the server echoes every byte back until the client's FIN, then FINs;
//! - mode 1, upload: the server discards everything until FIN, then writes the byte count
//!   (u64 BE) and FINs;
//! - mode 2, download: the server writes N bytes of the pattern, then FINs.
//!
//! `quelay-bench target` ([`target`]) and `quelay-bench hy2` ([`hy2`]) are the Hysteria2
//! workload: a TCP/UDP endpoint behind the server under test, and a load client that speaks
//! Hysteria2 itself, so it drives any Hysteria2 server.
//!
//! The pattern is `byte[i] = i % 251`, so every byte's position is checked.

pub mod echo;
pub mod hy2;
pub mod load;
pub mod run;
pub mod target;

/// ALPN of the raw workload.
pub const ALPN: &[u8] = b"quelay-bench";
/// Header bytes: mode + u64 length.
pub const HEADER_LEN: usize = 9;
/// Largest chunk read or generated at once.
pub const CHUNK: usize = 64 * 1024;
const PERIOD: usize = 251;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo = 0,
    Upload = 1,
    Download = 2,
}

impl Mode {
    pub fn from_byte(b: u8) -> Option<Mode> {
        match b {
            0 => Some(Mode::Echo),
            1 => Some(Mode::Upload),
            2 => Some(Mode::Download),
            _ => None,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo" => Ok(Mode::Echo),
            "upload" => Ok(Mode::Upload),
            "download" => Ok(Mode::Download),
            _ => Err(format!("unknown mode {s:?} (echo, upload, download)")),
        }
    }
}

pub fn header(mode: Mode, n: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = mode as u8;
    h[1..].copy_from_slice(&n.to_be_bytes());
    h
}

/// The pattern bytes starting at stream offset `offset`, `len <= CHUNK` long.
pub fn pattern(offset: u64, len: usize) -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect());
    let start = (offset % PERIOD as u64) as usize;
    &t[start..start + len.min(CHUNK)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_position_dependent() {
        assert_eq!(pattern(0, 3), &[0, 1, 2]);
        assert_eq!(pattern(250, 3), &[250, 0, 1]);
        assert_eq!(pattern(251 * 1000 + 5, 1), &[5]);
        assert_eq!(pattern(7, CHUNK).len(), CHUNK);
    }
}
