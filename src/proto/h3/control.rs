//! The peer's unidirectional streams: which ones to accept (RFC 9114 §6.2) and what its
//! control stream says (§6.2.1, §7.2).

use super::error::H3Error;
use super::frames::{self, FrameHeader, PartialFrameHeader, Settings, UniStreamType};

/// Which end of the connection we are; push rules differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection.
    Server,
    /// We opened the connection.
    Client,
}

/// What to do with a new uni stream from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniStreamAction {
    /// Feed the rest of the stream to a [`ControlStreamReader`].
    Control,
    /// A QPACK encoder or decoder stream: read and discard (no dynamic table is ever
    /// allowed, so there is nothing to act on), but keep it open.
    Drain,
    /// An unknown type: RFC 9114 §6.2 says the recipient "MUST either abort reading of the
    /// stream or discard incoming data"; send STOP_SENDING with this code.
    StopSending(u64),
}

/// The uni streams the peer has opened so far; each critical type may appear once.
#[derive(Clone, Copy, Debug)]
pub struct PeerUniStreams {
    /// Our role.
    role: Role,
    /// Set when the peer's control stream arrives.
    control: bool,
    /// Set when the peer's QPACK encoder stream arrives.
    qpack_encoder: bool,
    /// Set when the peer's QPACK decoder stream arrives.
    qpack_decoder: bool,
}

impl PeerUniStreams {
    /// No streams seen yet.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            control: false,
            qpack_encoder: false,
            qpack_decoder: false,
        }
    }

    /// Decides what to do with a new uni stream of type `ty`. Errors are connection errors.
    pub fn accept(&mut self, ty: UniStreamType) -> Result<UniStreamAction, H3Error> {
        let duplicate = H3Error::StreamCreation {
            stream_type: ty.value(),
        };
        let seen = match ty {
            UniStreamType::Control => &mut self.control,
            UniStreamType::QpackEncoder => &mut self.qpack_encoder,
            UniStreamType::QpackDecoder => &mut self.qpack_decoder,
            UniStreamType::Push => {
                // §6.2.2: "Only servers can push; if a server receives a client-initiated
                // push stream, this MUST be treated as a connection error of type
                // H3_STREAM_CREATION_ERROR." A client never sends MAX_PUSH_ID, so a push
                // stream towards it has an invalid push ID (§4.6: H3_ID_ERROR).
                return Err(match self.role {
                    Role::Server => duplicate,
                    Role::Client => H3Error::PushNotAllowed,
                });
            }
            UniStreamType::Unknown(_) => {
                return Ok(UniStreamAction::StopSending(
                    super::error::H3_STREAM_CREATION_ERROR,
                ))
            }
        };
        // §6.2.1/RFC 9204 §4.2: a second control or QPACK stream is
        // H3_STREAM_CREATION_ERROR.
        if *seen {
            return Err(duplicate);
        }
        *seen = true;
        Ok(if ty == UniStreamType::Control {
            UniStreamAction::Control
        } else {
            UniStreamAction::Drain
        })
    }
}

/// Something the peer's control stream said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlEvent {
    /// The peer's SETTINGS (always the first event).
    Settings(Settings),
    /// GOAWAY: the peer will not process streams (server) or pushes (client) from this ID on.
    GoAway(u64),
}

/// Parsing state of the control stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames; part of the next header may be in `header`.
    FrameHeader,
    /// Collecting the payload of a SETTINGS/GOAWAY/MAX_PUSH_ID/CANCEL_PUSH frame.
    Payload { ty: u64, len: usize },
    /// Skipping the payload of an unknown frame.
    Skip { remaining: u64 },
}

/// Reads the peer's control stream, after its stream-type byte.
#[derive(Clone, Debug)]
pub struct ControlStreamReader {
    /// Our role, which decides whether MAX_PUSH_ID is allowed.
    role: Role,
    /// Current parsing state.
    state: State,
    /// Partial frame header.
    header: PartialFrameHeader,
    /// Partial payload of the frame being collected.
    payload: Vec<u8>,
    /// Set once SETTINGS arrived; anything before it is H3_MISSING_SETTINGS.
    got_settings: bool,
    /// The first error, returned again on every later call.
    failed: Option<H3Error>,
}

impl ControlStreamReader {
    /// A reader for the control stream opened by the peer of `role`.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            state: State::FrameHeader,
            header: PartialFrameHeader::default(),
            payload: Vec::new(),
            got_settings: false,
            failed: None,
        }
    }

    /// Feeds the next bytes of the stream; returns what they completed. Errors are
    /// connection errors and stick.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<ControlEvent>, H3Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut events = Vec::new();
        let result = self.push_inner(data, &mut events);
        match result {
            Ok(()) => Ok(events),
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// The peer ended its control stream. RFC 9114 §6.2.1: "If either control stream is
    /// closed at any point, this MUST be treated as a connection error of type
    /// H3_CLOSED_CRITICAL_STREAM."
    pub fn finish(&self) -> H3Error {
        H3Error::ClosedCriticalStream
    }

    fn push_inner(
        &mut self,
        mut data: &[u8],
        events: &mut Vec<ControlEvent>,
    ) -> Result<(), H3Error> {
        while !data.is_empty() {
            match self.state {
                State::FrameHeader => {
                    let Some((hdr, used)) = self.header.push(data)? else {
                        return Ok(());
                    };
                    data = &data[used..];
                    self.start_frame(hdr)?;
                    if let State::Payload { ty, len: 0 } = self.state {
                        self.end_frame(ty, events)?;
                    }
                }
                State::Payload { ty, len } => {
                    let take = data.len().min(len - self.payload.len());
                    self.payload.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.payload.len() == len {
                        self.end_frame(ty, events)?;
                    }
                }
                State::Skip { remaining } => {
                    let take = data
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    data = &data[take..];
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::FrameHeader
                    } else {
                        State::Skip { remaining }
                    };
                }
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, hdr: FrameHeader) -> Result<(), H3Error> {
        let first = !self.got_settings;
        // §6.2.1: "If the first frame of the control stream is any other frame type, this
        // MUST be treated as a connection error of type H3_MISSING_SETTINGS."
        if first && hdr.ty != frames::SETTINGS {
            return Err(H3Error::MissingSettings);
        }
        let max_len = match hdr.ty {
            frames::SETTINGS if first => frames::MAX_SETTINGS_LEN,
            // §7.2.4: a second SETTINGS is H3_FRAME_UNEXPECTED.
            frames::SETTINGS => return Err(H3Error::FrameUnexpected { frame_type: hdr.ty }),
            frames::GOAWAY | frames::CANCEL_PUSH => 8,
            // §7.2.7: "A server MUST NOT send a MAX_PUSH_ID frame. A client MUST treat the
            // receipt of a MAX_PUSH_ID frame as a connection error of type
            // H3_FRAME_UNEXPECTED."
            frames::MAX_PUSH_ID if self.role == Role::Server => 8,
            // DATA, HEADERS, PUSH_PROMISE and MAX_PUSH_ID towards a client are not allowed
            // on a control stream.
            frames::DATA | frames::HEADERS | frames::PUSH_PROMISE | frames::MAX_PUSH_ID => {
                return Err(H3Error::FrameUnexpected { frame_type: hdr.ty })
            }
            _ => {
                self.state = if hdr.len == 0 {
                    State::FrameHeader
                } else {
                    State::Skip { remaining: hdr.len }
                };
                return Ok(());
            }
        };
        if hdr.len > max_len {
            return Err(if hdr.ty == frames::SETTINGS {
                H3Error::FrameTooLarge {
                    frame_type: hdr.ty,
                    len: hdr.len,
                }
            } else {
                H3Error::MalformedFrame { frame_type: hdr.ty }
            });
        }
        // Bounded by `max_len` above.
        let len = hdr.len as usize;
        // The buffer grows with what arrives, never to what the header declares.
        self.payload.clear();
        self.state = State::Payload { ty: hdr.ty, len };
        Ok(())
    }

    fn end_frame(&mut self, ty: u64, events: &mut Vec<ControlEvent>) -> Result<(), H3Error> {
        self.state = State::FrameHeader;
        let payload = std::mem::take(&mut self.payload);
        match ty {
            frames::SETTINGS => {
                self.got_settings = true;
                events.push(ControlEvent::Settings(Settings::decode(&payload)?));
            }
            frames::GOAWAY => {
                events.push(ControlEvent::GoAway(frames::decode_single_varint(
                    ty, &payload,
                )?));
            }
            // MAX_PUSH_ID and CANCEL_PUSH: we never push, so only their layout matters.
            _ => {
                frames::decode_single_varint(ty, &payload)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(
        reader: &mut ControlStreamReader,
        bytes: &[u8],
    ) -> Result<Vec<ControlEvent>, H3Error> {
        let mut events = Vec::new();
        for b in bytes {
            events.extend(reader.push(std::slice::from_ref(b))?);
        }
        Ok(events)
    }

    #[test]
    fn go_server_control_stream_is_read() {
        let stream = frames::server_control_stream();
        let (ty, used) = UniStreamType::parse(&stream).unwrap();
        assert_eq!(
            PeerUniStreams::new(Role::Client).accept(ty),
            Ok(UniStreamAction::Control)
        );
        let mut reader = ControlStreamReader::new(Role::Client);
        assert_eq!(
            reader.push(&stream[used..]),
            Ok(vec![ControlEvent::Settings(Settings::go_server())])
        );
        // Byte by byte gives the same result.
        let mut reader = ControlStreamReader::new(Role::Client);
        assert_eq!(
            feed_split(&mut reader, &stream[used..]),
            Ok(vec![ControlEvent::Settings(Settings::go_server())])
        );
    }

    #[test]
    fn frames_after_settings() {
        let mut bytes = vec![0x04, 0x00];
        // GREASE frame with a payload, then an empty unknown frame, then MAX_PUSH_ID, GOAWAY.
        bytes.extend_from_slice(&[0x21, 0x03, 1, 2, 3, 0x40, 0x40, 0x00, 0x0d, 0x01, 0x00]);
        bytes.extend_from_slice(&frames::goaway_frame(8));
        let expect = vec![
            ControlEvent::Settings(Settings::default()),
            ControlEvent::GoAway(8),
        ];
        assert_eq!(
            ControlStreamReader::new(Role::Server).push(&bytes),
            Ok(expect.clone())
        );
        assert_eq!(
            feed_split(&mut ControlStreamReader::new(Role::Server), &bytes),
            Ok(expect)
        );
        // A client may not receive MAX_PUSH_ID.
        assert_eq!(
            ControlStreamReader::new(Role::Client).push(&bytes),
            Err(H3Error::FrameUnexpected { frame_type: 0x0d })
        );
    }

    #[test]
    fn control_stream_errors() {
        let err = |bytes: &[u8]| {
            ControlStreamReader::new(Role::Server)
                .push(bytes)
                .unwrap_err()
        };
        assert_eq!(err(&[0x07, 0x01, 0x00]), H3Error::MissingSettings);
        assert_eq!(err(&[0x21, 0x00]), H3Error::MissingSettings);
        assert_eq!(
            err(&[0x04, 0x00, 0x04, 0x00]),
            H3Error::FrameUnexpected { frame_type: 4 }
        );
        assert_eq!(
            err(&[0x04, 0x00, 0x00, 0x00]),
            H3Error::FrameUnexpected { frame_type: 0 }
        );
        assert_eq!(
            err(&[0x04, 0x00, 0x01, 0x00]),
            H3Error::FrameUnexpected { frame_type: 1 }
        );
        assert_eq!(
            err(&[0x04, 0x00, 0x06, 0x00]),
            H3Error::FrameUnexpected { frame_type: 6 }
        );
        assert_eq!(
            err(&[0x04, 0x00, 0x07, 0x00]),
            H3Error::MalformedFrame { frame_type: 7 }
        );
        assert_eq!(
            err(&[0x04, 0x00, 0x07, 0x09]),
            H3Error::MalformedFrame { frame_type: 7 }
        );
        assert_eq!(
            err(&[0x04, 0x80, 0x01, 0x00, 0x00]),
            H3Error::FrameTooLarge {
                frame_type: 4,
                len: 0x10000
            }
        );
        assert_eq!(
            err(&[0x04, 0x02, 0x02, 0x00]),
            H3Error::InvalidSetting { id: 2 }
        );
        // Errors stick.
        let mut reader = ControlStreamReader::new(Role::Server);
        assert_eq!(reader.push(&[0x00]), Ok(vec![]));
        assert_eq!(reader.push(&[0x00]), Err(H3Error::MissingSettings));
        assert!(reader.push(&[0x04, 0x00]).is_err());
        assert_eq!(reader.finish(), H3Error::ClosedCriticalStream);
    }

    #[test]
    fn uni_stream_admission() {
        let mut server = PeerUniStreams::new(Role::Server);
        assert_eq!(
            server.accept(UniStreamType::Control),
            Ok(UniStreamAction::Control)
        );
        assert_eq!(
            server.accept(UniStreamType::QpackEncoder),
            Ok(UniStreamAction::Drain)
        );
        assert_eq!(
            server.accept(UniStreamType::QpackDecoder),
            Ok(UniStreamAction::Drain)
        );
        for ty in [
            UniStreamType::Control,
            UniStreamType::QpackEncoder,
            UniStreamType::QpackDecoder,
        ] {
            assert_eq!(
                server.accept(ty),
                Err(H3Error::StreamCreation {
                    stream_type: ty.value()
                })
            );
        }
        assert_eq!(
            server.accept(UniStreamType::Push),
            Err(H3Error::StreamCreation { stream_type: 1 })
        );
        assert_eq!(
            server.accept(UniStreamType::Unknown(0x21)),
            Ok(UniStreamAction::StopSending(0x103))
        );
        let mut client = PeerUniStreams::new(Role::Client);
        assert_eq!(
            client.accept(UniStreamType::Push),
            Err(H3Error::PushNotAllowed)
        );
    }
}
