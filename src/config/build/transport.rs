//! The sections the server and the client both have: `obfs`, `quic`, `congestion` and
//! `bandwidth`. One reader each serves both ends; [`End`] says where they differ.

use std::time::Duration;

use super::{client, lower, ranged, W};
use crate::config::client::{
    ClientQuic, SockOpts, DEFAULT_KEEP_ALIVE_PERIOD, KEEP_ALIVE_PERIOD_RANGE,
};
use crate::config::error::{fault, Fault, Warning};
use crate::config::reader::Section;
use crate::config::server::*;
use crate::config::units;

/// Which end a section is read for, where the server and the client read it differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    Server,
    Client,
}

/// `quic` as either end reads it; [`QuicKeys::server`] and [`QuicKeys::client`] keep what
/// that end has.
pub(super) struct QuicKeys {
    /// initStream, maxStream, initConn and maxConn receive windows.
    windows: [u64; 4],
    max_idle_timeout: Duration,
    /// `maxIncomingStreams` (server).
    max_incoming_streams: u64,
    /// `keepAlivePeriod` (client).
    keep_alive_period: Duration,
    disable_path_mtu_discovery: bool,
    /// `sockopts` (client).
    sockopts: SockOpts,
}

impl QuicKeys {
    pub(super) fn server(self) -> Quic {
        let [init_stream_receive_window, max_stream_receive_window, init_conn_receive_window, max_conn_receive_window] =
            self.windows;
        Quic {
            init_stream_receive_window,
            max_stream_receive_window,
            init_conn_receive_window,
            max_conn_receive_window,
            max_idle_timeout: self.max_idle_timeout,
            max_incoming_streams: self.max_incoming_streams,
            disable_path_mtu_discovery: self.disable_path_mtu_discovery,
        }
    }

    pub(super) fn client(self) -> ClientQuic {
        let [init_stream_receive_window, max_stream_receive_window, init_conn_receive_window, max_conn_receive_window] =
            self.windows;
        ClientQuic {
            init_stream_receive_window,
            max_stream_receive_window,
            init_conn_receive_window,
            max_conn_receive_window,
            max_idle_timeout: self.max_idle_timeout,
            keep_alive_period: self.keep_alive_period,
            disable_path_mtu_discovery: self.disable_path_mtu_discovery,
            sockopts: self.sockopts,
        }
    }
}

/// `quic`, both ends' keys and rules. The receive windows: 0 or absent is the default, at
/// least [`MIN_RECEIVE_WINDOW`], at most a QUIC varint. The server reads
/// `maxIncomingStreams`; the client `keepAlivePeriod`, and it refuses socket options it
/// cannot apply.
pub(super) fn quic(top: &mut Section, end: End, w: &mut W) -> Result<QuicKeys, Fault> {
    let mut s = top.section("quic")?;
    let mut window = |name: &str, default: u64| -> Result<u64, Fault> {
        match s.u64(name)? {
            None | Some(0) => Ok(default),
            Some(v) if v < MIN_RECEIVE_WINDOW => Err(fault(
                s.key(name),
                format!("{v} is below the minimum of {MIN_RECEIVE_WINDOW} bytes"),
            )),
            Some(v) if v > MAX_QUIC_VARINT => Err(fault(
                s.key(name),
                format!("{v} is above the QUIC maximum of {MAX_QUIC_VARINT}"),
            )),
            Some(v) => Ok(v),
        }
    };
    let windows = [
        window("initStreamReceiveWindow", DEFAULT_STREAM_RECEIVE_WINDOW)?,
        window("maxStreamReceiveWindow", DEFAULT_STREAM_RECEIVE_WINDOW)?,
        window("initConnReceiveWindow", DEFAULT_CONN_RECEIVE_WINDOW)?,
        window("maxConnReceiveWindow", DEFAULT_MAX_CONN_RECEIVE_WINDOW)?,
    ];
    let max_idle_timeout = ranged(
        &mut s,
        "maxIdleTimeout",
        DEFAULT_MAX_IDLE_TIMEOUT,
        MAX_IDLE_TIMEOUT_RANGE,
        "4s to 120s",
    )?;
    let mut keys = QuicKeys {
        windows,
        max_idle_timeout,
        max_incoming_streams: DEFAULT_MAX_INCOMING_STREAMS,
        keep_alive_period: DEFAULT_KEEP_ALIVE_PERIOD,
        disable_path_mtu_discovery: false,
        sockopts: SockOpts::default(),
    };
    match end {
        End::Server => {
            keys.max_incoming_streams = match s.u64("maxIncomingStreams")? {
                None | Some(0) => DEFAULT_MAX_INCOMING_STREAMS,
                Some(v) if v < MIN_INCOMING_STREAMS => {
                    return Err(fault(
                        s.key("maxIncomingStreams"),
                        format!("{v} is below the minimum of {MIN_INCOMING_STREAMS}"),
                    ))
                }
                Some(v) if v > MAX_INCOMING_STREAMS => {
                    return Err(fault(
                        s.key("maxIncomingStreams"),
                        format!("{v} is above the QUIC maximum of 2^60"),
                    ))
                }
                Some(v) => v,
            };
        }
        End::Client => {
            keys.keep_alive_period = ranged(
                &mut s,
                "keepAlivePeriod",
                DEFAULT_KEEP_ALIVE_PERIOD,
                KEEP_ALIVE_PERIOD_RANGE,
                "2s to 60s",
            )?;
        }
    }
    keys.disable_path_mtu_discovery = s.bool("disablePathMTUDiscovery")?;
    if end == End::Client {
        // quelay's handshake never imitates Chrome's, whatever this says.
        s.skip(&["disableChromeParrot"]);
        let mut sockopts = s.section("sockopts")?;
        let device_key = sockopts.key("bindInterface");
        let device = sockopts.string("bindInterface", w)?.unwrap_or_default();
        // IFNAMSIZ less the terminating NUL.
        if device.len() > 15 || device.contains(['/', ' ', '\0']) {
            return Err(fault(
                device_key,
                format!("{device:?} is not an interface name"),
            ));
        }
        let mark_key = sockopts.key("fwmark");
        let mark = match sockopts.u64("fwmark")? {
            None | Some(0) => None,
            Some(m) => Some(
                u32::try_from(m)
                    .map_err(|_| fault(mark_key, format!("{m} is not a 32-bit mark")))?,
            ),
        };
        keys.sockopts = SockOpts {
            bind_interface: Some(device).filter(|d| !d.is_empty()),
            fwmark: mark,
        };
        client::refuse(
            &mut sockopts,
            "fdControlUnixSocket",
            "socket option fdControlUnixSocket is not supported (it serves Android's VpnService)",
        )?;
        sockopts.finish(w);
    }
    s.finish(w);
    Ok(keys)
}

pub(super) fn obfs(top: &mut Section, w: &mut W) -> Result<Obfs, Fault> {
    let mut s = top.section("obfs")?;
    let type_key = s.key("type");
    let kind = lower(s.string("type", w)?);
    let mut sal = s.section("salamander")?;
    let password_key = sal.key("password");
    let password = sal.string("password", w)?;
    sal.finish(w);
    s.skip_section("gecko", &["password", "minPacketSize", "maxPacketSize"], w)?;
    s.finish(w);
    match kind.as_str() {
        "" | "plain" => {
            if kind.is_empty() && password.is_some_and(|p| !p.is_empty()) {
                w.push(Warning::new(
                    password_key,
                    "set, but obfs.type is not salamander: obfuscation is off",
                ));
            }
            Ok(Obfs::Plain)
        }
        "salamander" => {
            let password = password.unwrap_or_default();
            if password.len() < MIN_SALAMANDER_PASSWORD {
                return Err(fault(
                    password_key,
                    format!(
                        "must be at least {MIN_SALAMANDER_PASSWORD} bytes (got {})",
                        password.len()
                    ),
                ));
            }
            Ok(Obfs::Salamander { password })
        }
        "gecko" => Err(fault(
            type_key,
            "gecko obfuscation is not supported; use salamander",
        )),
        other => Err(fault(
            type_key,
            format!("unsupported obfuscation type {other:?} (use salamander or plain)"),
        )),
    }
}

pub(super) fn congestion(top: &mut Section, w: &mut W) -> Result<Congestion, Fault> {
    let mut s = top.section("congestion")?;
    let kind = match lower(s.string("type", w)?).as_str() {
        "" | "bbr" => CongestionKind::Bbr,
        "reno" => CongestionKind::Reno,
        "cubic" => CongestionKind::Cubic,
        other => {
            return Err(fault(
                s.key("type"),
                format!("unsupported congestion type {other:?} (use bbr, reno or cubic)"),
            ))
        }
    };
    let bbr_profile = match lower(s.string("bbrProfile", w)?).as_str() {
        "" | "standard" => BbrProfile::Standard,
        "conservative" => BbrProfile::Conservative,
        "aggressive" => BbrProfile::Aggressive,
        other => {
            return Err(fault(
                s.key("bbrProfile"),
                format!(
                    "unsupported BBR profile {other:?} (use standard, conservative or aggressive)"
                ),
            ))
        }
    };
    s.finish(w);
    Ok(Congestion { kind, bbr_profile })
}

/// `bandwidth`. The server refuses a rate below [`MIN_BANDWIDTH`]; the official client sets
/// no minimum.
pub(super) fn bandwidth(top: &mut Section, end: End, w: &mut W) -> Result<Bandwidth, Fault> {
    let mut s = top.section("bandwidth")?;
    let mut rate = |name: &str, w: &mut W| -> Result<Option<u64>, Fault> {
        let key = s.key(name);
        let Some(text) = s.string(name, w)?.filter(|t| !t.trim().is_empty()) else {
            return Ok(None);
        };
        match units::parse_bandwidth(&text).map_err(|e| fault(key.clone(), e))? {
            0 => Ok(None),
            bytes if end == End::Server && bytes < MIN_BANDWIDTH => Err(fault(
                key,
                format!(
                    "{} is {bytes} bytes/s, below the minimum of {MIN_BANDWIDTH} bytes/s (524288 bps)",
                    text.trim()
                ),
            )),
            bytes => Ok(Some(bytes)),
        }
    };
    let up = rate("up", w)?;
    let down = rate("down", w)?;
    let disable_loss_compensation = s.bool("disableLossCompensation")?;
    s.finish(w);
    Ok(Bandwidth {
        up,
        down,
        disable_loss_compensation,
    })
}
