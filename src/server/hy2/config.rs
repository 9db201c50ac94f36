//! What the Hysteria2 server does, shared by all workers and replaced on reload: who may
//! use the relay, what unauthenticated visitors see, and the server's caps and switches.
//! Its own module so that `server::ops` (which carries a reload to the workers) and the
//! application (which takes commands from `server::ops`) do not import each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::limits::Limits;
use crate::proto::h3;
use crate::proto::sniff::Sniffer;
use crate::server::guard::OutboundGuard;
use crate::server::route::Router;

/// Who may use the relay.
#[derive(Clone, Debug)]
pub enum Authenticator {
    /// One shared password; the user ID is "user".
    Password(String),
    /// user → password; user names compared case-insensitively (stored lowercased).
    UserPass(HashMap<String, String>),
    /// An HTTP backend decides (`auth.type: http`), off the data path.
    Http { url: String, insecure: bool },
    /// A program decides (`auth.type: command`), off the data path.
    Command(String),
}

impl Authenticator {
    /// The user ID for `auth`, or `None` when it is wrong.
    pub fn check(&self, auth: &str) -> Option<String> {
        match self {
            Authenticator::Password(p) => crate::secret::eq(auth, p).then(|| "user".to_string()),
            Authenticator::UserPass(users) => {
                let (user, pass) = auth.split_once(':')?;
                let user = user.to_lowercase();
                let expected = users.get(&user)?;
                crate::secret::eq(pass, expected).then_some(user)
            }
            Authenticator::Http { .. } | Authenticator::Command(_) => None,
        }
    }
}

pub use crate::server::masquerade::Masquerade;

impl Masquerade {
    /// The HTTP/3 answer for the kinds that need no I/O.
    pub(in crate::server::hy2) fn response(&self) -> Vec<u8> {
        match self.canned() {
            Some(reply) => reply.into_h3().0,
            // Answered off the data path; never reached.
            None => h3::response(500, &[], b""),
        }
    }
}

/// Server behaviour shared by all workers.
#[derive(Clone, Debug)]
pub struct Hy2Config {
    pub auth: Authenticator,
    pub masquerade: Masquerade,
    pub guard: OutboundGuard,
    /// The ACL and the outbounds: where each request goes.
    pub router: Arc<Router>,
    /// `sniff`: which requests have their first bytes read for a name; `None` when off.
    pub sniffer: Option<Sniffer>,
    pub udp: bool,
    pub udp_idle_timeout: Duration,
    /// `bandwidth.up` in bytes/s (0: unlimited): caps the Brutal rate we send at.
    pub bandwidth_up: u64,
    /// `bandwidth.down` in bytes/s (0: unlimited): what we tell clients we can receive.
    pub bandwidth_down: u64,
    pub ignore_client_bandwidth: bool,
    /// Answer the official speed test (`speedTest`).
    pub speed_test: bool,
    /// Stream and connection caps, shared by all workers.
    pub limits: Arc<Limits>,
    /// `quic.maxIncomingStreams`: the stream credit of a connection whose caps have room.
    pub max_incoming_streams: u64,
    /// Connections not authenticated this long after their handshake are closed.
    pub auth_timeout: Duration,
    /// Caps on connections waiting to authenticate: over the server, per source.
    pub max_unauthenticated: u64,
    pub max_unauthenticated_per_source: u32,
}
