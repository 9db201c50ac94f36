//! Configuration: the official Hysteria2 server's and client's YAML keys, validated into
//! typed structs, and `hysteria2://` share URIs.
//!
//! Parsing goes text → YAML tree → [`ServerConfig`] or [`ClientConfig`]. The tree is walked
//! key by key with the official programs' rules (case-insensitive keys, weak scalar conversion, zero means
//! default) so that configs written for it load unchanged. Keys nobody reads become
//! [`Warning`]s rather than errors: a newer official key must not stop a server from
//! starting, but a misspelt one must not go unnoticed either.
//!
//! Nothing here touches the network; only [`load_server`] and [`load_client`] touch the
//! disk. The files a config names (certificates, keys, ACLs) are read by the role that
//! uses them, at start-up.

mod build;
mod client;
mod cluster;
mod error;
mod reader;
mod server;
mod units;
mod uri;

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;

use serde_norway::Value;

pub use client::*;
pub use cluster::{ClusterFile, ClusterNode, DEFAULT_NODE_TIMEOUT};
pub use error::{ConfigError, ErrorAt, Warning};
pub use server::*;
pub use units::{parse_bandwidth, parse_duration, parse_go_bool, parse_pin};
pub use uri::{parse_share_uri, ShareUri};

/// Largest config file read. Real ones are a few KiB; a big `auth.userpass` list is still
/// far below this.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Most `{` and `[` characters accepted in a config text (see [`parse_server`]).
pub const MAX_FLOW_COLLECTIONS: usize = 4096;

/// Read and validate a server config file. Errors and warnings name the file as given.
pub fn load_server(path: &Path) -> Result<(ServerConfig, Vec<Warning>), ConfigError> {
    let origin = path.display().to_string();
    let text = read_text(path, &origin)?;
    parse_server(&text, &origin)
}

/// Validate a server config held in memory; `origin` names it in errors (a file name).
pub fn parse_server(text: &str, origin: &str) -> Result<(ServerConfig, Vec<Warning>), ConfigError> {
    parse_with(text, origin, build::server)
}

/// Read and validate the node list of `quelay cluster`. Errors and warnings name the file.
pub fn load_cluster(path: &Path) -> Result<(ClusterFile, Vec<Warning>), ConfigError> {
    let origin = path.display().to_string();
    let text = read_text(path, &origin)?;
    parse_cluster(&text, &origin)
}

/// Validate a `quelay cluster` node list held in memory; `origin` names it in errors.
pub fn parse_cluster(text: &str, origin: &str) -> Result<(ClusterFile, Vec<Warning>), ConfigError> {
    parse_with(text, origin, cluster::cluster_file)
}

/// Read and validate a client config file. Errors and warnings name the file as given.
pub fn load_client(path: &Path) -> Result<(ClientConfig, Vec<Warning>), ConfigError> {
    let origin = path.display().to_string();
    let text = read_text(path, &origin)?;
    parse_client(&text, &origin)
}

/// Validate a client config held in memory; `origin` names it in errors (a file name).
pub fn parse_client(text: &str, origin: &str) -> Result<(ClientConfig, Vec<Warning>), ConfigError> {
    parse_with(text, origin, build::client)
}

/// `quelay client hysteria2://... --socks5 ADDR`: a client config from a share URI, with a
/// SOCKS5 proxy on `socks5_listen` and the official defaults for everything else. Errors
/// name `share URI` and the part at fault, never the URI itself (it holds the password);
/// without a listen address the error is the one for a config without a client mode.
pub fn client_from_uri(
    uri: &str,
    socks5_listen: Option<SocketAddr>,
) -> Result<ClientConfig, ConfigError> {
    build::client_from_uri(uri, socks5_listen)
}

/// Parses `text` and builds its config with `build`, naming `origin` in errors.
fn parse_with<T>(
    text: &str,
    origin: &str,
    build: impl FnOnce(&Value, &mut Vec<Warning>) -> Result<T, error::Fault>,
) -> Result<(T, Vec<Warning>), ConfigError> {
    let root = yaml_tree(text, origin)?;
    let mut warnings = Vec::new();
    let config = build(&root, &mut warnings).map_err(|f| f.in_file(origin))?;
    Ok((config, warnings))
}

/// The YAML tree of a config text, with tags stripped and merge keys applied.
fn yaml_tree(text: &str, origin: &str) -> Result<Value, ConfigError> {
    // Given a byte-order mark, the YAML parser reads everything after the first line as a
    // second document and refuses the file.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // libyaml's flow-collection scanner is quadratic in nesting depth: 100k nested '{' take
    // minutes. Real configs have a few dozen; no legitimate file comes near this.
    let flow_opens = text.bytes().filter(|&b| b == b'{' || b == b'[').count();
    if flow_opens > MAX_FLOW_COLLECTIONS {
        return Err(ConfigError::file(
            origin,
            format!("more than {MAX_FLOW_COLLECTIONS} '{{' and '[' characters; not a config file?"),
        ));
    }
    let mut root: Value = serde_norway::from_str(text).map_err(|e| yaml_error(origin, &e))?;
    reader::strip_tags(&mut root);
    // `<<: *anchor` merge keys, which the official server's YAML decoder applies too.
    root.apply_merge().map_err(|e| yaml_error(origin, &e))?;
    Ok(root)
}

fn read_text(path: &Path, origin: &str) -> Result<String, ConfigError> {
    let file =
        File::open(path).map_err(|e| ConfigError::file(origin, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ConfigError::file(origin, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::file(
            origin,
            format!(
                "larger than {} MiB; not a config file?",
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        ConfigError::file(
            origin,
            format!(
                "not UTF-8 text (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// A YAML parser error at its line and column, without the parser's own "at line L column
/// C" (the position is already in front).
fn yaml_error(origin: &str, e: &serde_norway::Error) -> ConfigError {
    let message = e.to_string();
    match e.location() {
        Some(loc) => {
            let (line, column) = (loc.line(), loc.column());
            let message = message.replacen(&format!(" at line {line} column {column}"), "", 1);
            ConfigError {
                origin: origin.to_owned(),
                at: ErrorAt::Position { line, column },
                reason: message,
            }
        }
        None => ConfigError::file(origin, message),
    }
}
