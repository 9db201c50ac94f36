//! The client half of Hysteria2 authentication on one QUIC connection: our HTTP/3
//! SETTINGS, the `POST /auth` request, and reading the server's answer. Shared by the
//! client role's pool and the load generator.

use quinn_proto::{Connection, Dir, StreamId};

use crate::proto::h3::{self, AuthOk, ResponseReader};
use crate::quic::stream::{self, ReadEnd};

/// Largest auth response read (the server's padding is at most 2 KiB).
const MAX_RESPONSE: usize = 64 * 1024;

/// Why authentication did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The server answered with this HTTP status instead of 233 (a wrong password).
    Refused(u16),
    /// The exchange itself failed (stream closed, malformed answer).
    Failed(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Refused(status) => {
                write!(f, "authentication refused (HTTP status {status})")
            }
            AuthError::Failed(why) => f.write_str(why),
        }
    }
}

/// An auth request in flight on one stream.
pub struct AuthExchange {
    id: StreamId,
    reader: ResponseReader,
}

impl AuthExchange {
    /// Sends our control stream and the auth request (`cc_rx`: our receive rate in bytes
    /// per second, 0 = unknown). `None` when the server grants no stream for it.
    pub fn start(qc: &mut Connection, auth: &str, cc_rx: u64) -> Option<Self> {
        if let Some(id) = qc.streams().open(Dir::Uni) {
            let _ = qc.send_stream(id).write(&h3::client_control_stream());
        }
        let id = qc.streams().open(Dir::Bi)?;
        let padding = h3::auth_padding(&mut rand::thread_rng());
        let mut s = qc.send_stream(id);
        let _ = s.write(&h3::auth_request_headers(auth, cc_rx, &padding));
        let _ = s.finish();
        Some(Self::new(id))
    }

    /// An exchange whose request went out on `id` (the caller opened and wrote it).
    pub fn new(id: StreamId) -> Self {
        AuthExchange {
            id,
            reader: ResponseReader::new(),
        }
    }

    /// The auth request's stream.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Reads what the stream has: `None` while the answer is incomplete.
    pub fn read(&mut self, qc: &mut Connection) -> Option<Result<AuthOk, AuthError>> {
        let mut data = Vec::new();
        // One byte past the limit is enough to tell that the answer is too long.
        let r = stream::read_into(qc, self.id, &mut data, MAX_RESPONSE + 1);
        let fin = r.end == ReadEnd::Fin;
        self.push(&data, fin)
    }

    /// Takes bytes of the answer (`fin`: the server finished the stream): `None` while the
    /// answer is incomplete.
    pub fn push(&mut self, data: &[u8], fin: bool) -> Option<Result<AuthOk, AuthError>> {
        match self.reader.push(data) {
            Ok(Some(resp)) => {
                Some(h3::parse_auth_response(&resp).map_err(|e| AuthError::Refused(e.0)))
            }
            Ok(None) if fin => Some(Err(AuthError::Failed(
                "the server closed the auth stream".into(),
            ))),
            Ok(None) => None,
            Err(e) => Some(Err(AuthError::Failed(format!(
                "malformed auth response: {e}"
            )))),
        }
    }
}
