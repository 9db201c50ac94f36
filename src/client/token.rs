//! The client role's engine tokens: what an operation belongs to (a listener, a local
//! connection, a UDP socket), the slab key of its entry and the entry's generation, so a
//! completion for an entry that was removed (and its key reused) is recognised as stale.

use crate::engine::Token;

/// Whose socket operation a token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Nobody's: a close whose completion nobody waits for.
    Orphan,
    Listener,
    Local,
    Udp,
}

impl TokenKind {
    fn code(self) -> u8 {
        match self {
            TokenKind::Orphan => 0,
            TokenKind::Listener => 1,
            TokenKind::Local => 2,
            TokenKind::Udp => 3,
        }
    }
}

/// Generations wrap within this mask (28 bits above the key's 32 in the token's id).
pub const GEN_MASK: u32 = 0x0fff_ffff;

/// A token for the entry `key` of generation `gen` (the key's low 32 bits, the
/// generation's low 28 bits).
pub fn token(kind: TokenKind, key: usize, gen: u32) -> Token {
    let id = u64::from(gen & GEN_MASK) << 32 | (key as u64 & 0xffff_ffff);
    Token::new(kind.code(), id)
}

/// The kind, key and generation of a token built by [`token`]; any other is an orphan's.
pub fn split(t: Token) -> (TokenKind, usize, u32) {
    let kind = match t.kind() {
        1 => TokenKind::Listener,
        2 => TokenKind::Local,
        3 => TokenKind::Udp,
        _ => TokenKind::Orphan,
    };
    let id = t.id();
    (
        kind,
        (id & 0xffff_ffff) as usize,
        (id >> 32) as u32 & GEN_MASK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for kind in [
            TokenKind::Orphan,
            TokenKind::Listener,
            TokenKind::Local,
            TokenKind::Udp,
        ] {
            for (key, gen) in [(0, 0), (7, 1), (0xffff_ffff, GEN_MASK)] {
                assert_eq!(split(token(kind, key, gen)), (kind, key, gen));
            }
        }
    }

    #[test]
    fn generations_wrap_and_keys_keep_apart() {
        assert_eq!(split(token(TokenKind::Local, 3, GEN_MASK + 2)).2, 1);
        assert_ne!(
            token(TokenKind::Local, 3, 1),
            token(TokenKind::Local, 3, 2),
            "a new generation makes a new token"
        );
        assert_ne!(token(TokenKind::Local, 3, 1), token(TokenKind::Udp, 3, 1));
    }
}
