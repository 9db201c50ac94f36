//! The HTTP/3 subset Hysteria 2 needs, sans-IO: no sockets, no clock, no randomness of its
//! own (padding comes from the caller's RNG).
//!
//! Hysteria authenticates with one HTTP/3 request on the first bidi stream, and towards
//! everyone else must look like an ordinary HTTP/3 web server. So this module speaks just
//! enough HTTP/3 (RFC 9114) and QPACK (RFC 9204, static table only) to do both:
//!
//! * Server, per connection: open a uni stream and write [`server_control_stream`]; give
//!   each peer uni stream's type to [`PeerUniStreams::accept`] and the control stream's
//!   bytes to a [`ControlStreamReader`].
//! * Server, per request stream: feed bytes to a [`RequestReader`] until it returns a
//!   [`Request`]; [`auth_request`] says whether it is the Hysteria auth request. Answer with
//!   [`auth_ok_response`] or, for everything else, the masquerade ([`not_found_response`] or
//!   [`response`]), then FIN. Call [`RequestReader::finish`] at the peer's FIN.
//! * Client: [`client_control_stream`], then [`auth_request_headers`] and FIN on stream 0;
//!   feed the reply to a [`ResponseReader`] and check it with [`parse_auth_response`].
//!
//! Every parser returns `Ok(None)` while input is incomplete and a specific [`H3Error`] when
//! it is malformed; [`H3Error::code`] and [`H3Error::is_connection_error`] tell the caller
//! how to end the stream or connection. Memory per stream is bounded by [`Limits`].
//!
//! Encoders copy what quic-go sends (static-table choices, Huffman on every literal), so the
//! bytes on the wire look like the Go implementations'.

/// ALPN of Hysteria2: it runs over HTTP/3.
pub const ALPN: &[u8] = b"h3";

mod auth;
mod control;
pub mod error;
pub mod frames;
mod huffman;
mod message;
pub mod qpack;
mod reader;
mod request;
mod response;
mod static_table;

#[cfg(test)]
mod tests;

pub use auth::{
    auth_ok_response, auth_padding, auth_request, auth_request_headers, parse_auth_response,
    AuthFailed, AuthOk, AuthRequest, CcRx, AUTH_HOST, AUTH_PADDING_LEN, AUTH_PATH, GO_USER_AGENT,
    HEADER_AUTH, HEADER_CC_RX, HEADER_PADDING, HEADER_UDP, STATUS_AUTH_OK,
};
pub use control::{ControlEvent, ControlStreamReader, PeerUniStreams, Role, UniStreamAction};
pub use error::{H3Error, HuffmanError, MessageError, QpackError};
pub use frames::{
    client_control_stream, data_frame, goaway_frame, headers_frame, peek_frame_type,
    server_control_stream, FrameHeader, Settings, UniStreamType,
};
pub use message::Limits;
pub use qpack::HuffmanPolicy;
pub use request::{url_path, Request, RequestReader};
pub use response::{
    http_date, not_found_response, response, response_head, Response, ResponseReader,
    NOT_FOUND_BODY,
};

/// Huffman coding of header strings (RFC 7541 Appendix B), for tests and fuzzing.
pub mod huffman_code {
    pub use super::huffman::{decode, encode, encoded_len};
}
