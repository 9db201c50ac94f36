//! Salamander obfuscation: every UDP datagram of the QUIC connection becomes
//! `salt || packet XOR BLAKE2b-256(psk || salt)`, the 32-byte hash repeated as a keystream.
//!
//! The hash is BLAKE2b with a 32-byte digest-length *parameter* (Go `blake2b.Sum256`), which
//! differs from the first 32 bytes of BLAKE2b-512. There is no integrity check: a wrong key
//! yields garbage that QUIC discards.

use std::fmt;

use blake2::{Blake2b256, Digest};

use super::ProtoError;

/// Random bytes in front of every obfuscated datagram.
pub const SALT_LEN: usize = 8;
/// The official server refuses shorter passwords (`ErrPSKTooShort`); sing-box needs only one
/// byte, so a relay that accepts both must ask for four.
pub const MIN_PSK_LEN: usize = 4;
/// Keystream block: one BLAKE2b-256 digest.
const KEY_LEN: usize = 32;

/// A Salamander obfuscator for one pre-shared key; cheap to share between threads.
#[derive(Clone)]
pub struct Salamander {
    /// BLAKE2b-256 state with the PSK already absorbed; cloned for each salt.
    keyed: Blake2b256,
}

impl fmt::Debug for Salamander {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salamander { .. }")
    }
}

impl Salamander {
    /// An obfuscator keyed by the raw bytes of the configured password.
    pub fn new(psk: &[u8]) -> Result<Self, ProtoError> {
        if psk.len() < MIN_PSK_LEN {
            return Err(ProtoError::PskTooShort(psk.len()));
        }
        let mut keyed = Blake2b256::new();
        keyed.update(psk);
        Ok(Self { keyed })
    }

    /// The keystream block for `salt`: BLAKE2b-256(psk || salt).
    pub fn key(&self, salt: &[u8; SALT_LEN]) -> [u8; KEY_LEN] {
        let mut h = self.keyed.clone();
        h.update(salt);
        h.finalize().into()
    }

    /// Appends `salt || packet XOR key(salt)` to `out`. `salt` should be fresh random bytes.
    pub fn encode(&self, salt: [u8; SALT_LEN], packet: &[u8], out: &mut Vec<u8>) {
        out.reserve(SALT_LEN + packet.len());
        out.extend_from_slice(&salt);
        let start = out.len();
        out.extend_from_slice(packet);
        xor_keystream(&mut out[start..], &self.key(&salt));
    }

    /// Obfuscates the packet in `buf` in place, inserting the salt at the front.
    pub fn encode_in_place(&self, salt: [u8; SALT_LEN], buf: &mut Vec<u8>) {
        xor_keystream(buf, &self.key(&salt));
        buf.splice(0..0, salt);
    }

    /// Appends the packet inside an obfuscated `datagram` to `out`.
    ///
    /// Datagrams of 8 bytes or fewer are refused, as the official implementation drops them.
    pub fn decode(&self, datagram: &[u8], out: &mut Vec<u8>) -> Result<(), ProtoError> {
        let (salt, body) = split_salt(datagram)?;
        let start = out.len();
        out.extend_from_slice(body);
        xor_keystream(&mut out[start..], &self.key(&salt));
        Ok(())
    }

    /// Decodes `buf` in place and returns the packet (the bytes after the salt).
    pub fn decode_in_place<'a>(&self, buf: &'a mut [u8]) -> Result<&'a mut [u8], ProtoError> {
        let (salt, _) = split_salt(buf)?;
        let body = &mut buf[SALT_LEN..];
        xor_keystream(body, &self.key(&salt));
        Ok(body)
    }
}

fn split_salt(datagram: &[u8]) -> Result<([u8; SALT_LEN], &[u8]), ProtoError> {
    match datagram.split_first_chunk::<SALT_LEN>() {
        Some((salt, body)) if !body.is_empty() => Ok((*salt, body)),
        _ => Err(ProtoError::DatagramTooShort(datagram.len())),
    }
}

/// XORs `data` with `key` repeated, a 32-byte block (four u64 words) at a time.
fn xor_keystream(data: &mut [u8], key: &[u8; KEY_LEN]) {
    let mut words = [0u64; KEY_LEN / 8];
    for (w, k) in words.iter_mut().zip(key.chunks_exact(8)) {
        *w = load(k);
    }
    let mut blocks = data.chunks_exact_mut(KEY_LEN);
    for block in &mut blocks {
        for (chunk, w) in block.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&(load(chunk) ^ w).to_ne_bytes());
        }
    }
    for (b, k) in blocks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// An 8-byte chunk as a native-endian word (the XOR does not care about byte order).
fn load(chunk: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(chunk);
    u64::from_ne_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blake2::Blake2b512;

    const SALT: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn key_is_blake2b_with_32_byte_digest_parameter() {
        let s = Salamander::new(b"obfspass").unwrap();
        let key = s.key(&SALT);
        // Python: hashlib.blake2b(b"obfspass" + bytes(range(8)), digest_size=32).
        let expected = hex("56af82020a2f51ff37a7b73c5c0c6367ae647c8ff3f59e7b6777f41b5f6b9534");
        assert_eq!(key[..], expected[..]);

        // The same computed in one go by the crate, on the concatenated input.
        let mut input = b"obfspass".to_vec();
        input.extend_from_slice(&SALT);
        assert_eq!(key[..], Blake2b256::digest(&input)[..]);
        // The crate's BLAKE2b-256 matches the published digest of the empty string.
        let empty = hex("0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");
        assert_eq!(Blake2b256::digest(b"")[..], empty[..]);

        // Not the first half of BLAKE2b-512: the digest length is part of the parameter block.
        assert_ne!(key[..], Blake2b512::digest(&input)[..32]);
    }

    #[test]
    fn known_answer_datagram() {
        let s = Salamander::new(b"obfspass").unwrap();
        let packet = b"\xc0\x00\x00\x00\x01hello quic";
        let mut out = Vec::new();
        s.encode(SALT, packet, &mut out);
        assert_eq!(out, hex("000102030405060796af82020b4734935bc8974d296500"));
        let mut back = Vec::new();
        s.decode(&out, &mut back).unwrap();
        assert_eq!(back, packet);
    }

    #[test]
    fn round_trip_all_lengths() {
        let s = Salamander::new(b"a longer password, over one 32-byte block").unwrap();
        for len in 1..200usize {
            let packet: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let salt = [len as u8; 8];
            let mut wire = Vec::new();
            s.encode(salt, &packet, &mut wire);
            assert_eq!(wire.len(), len + SALT_LEN);
            assert_eq!(wire[..SALT_LEN], salt);

            let mut in_place = packet.clone();
            s.encode_in_place(salt, &mut in_place);
            assert_eq!(in_place, wire);

            let mut back = Vec::new();
            s.decode(&wire, &mut back).unwrap();
            assert_eq!(back, packet);
            assert_eq!(s.decode_in_place(&mut wire).unwrap(), &packet[..]);
        }
    }

    #[test]
    fn keystream_repeats_every_32_bytes() {
        let s = Salamander::new(b"obfspass").unwrap();
        let mut out = Vec::new();
        s.encode(SALT, &[0u8; 100], &mut out);
        let key = s.key(&SALT);
        for (i, b) in out[SALT_LEN..].iter().enumerate() {
            assert_eq!(*b, key[i % 32]);
        }
    }

    #[test]
    fn wrong_key_gives_garbage() {
        let (a, b) = (
            Salamander::new(b"pass1").unwrap(),
            Salamander::new(b"pass2").unwrap(),
        );
        let mut wire = Vec::new();
        a.encode(SALT, b"hello world", &mut wire);
        let mut back = Vec::new();
        b.decode(&wire, &mut back).unwrap();
        assert_ne!(back, b"hello world");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            Salamander::new(b"abc").unwrap_err(),
            ProtoError::PskTooShort(3)
        );
        assert_eq!(
            Salamander::new(b"").unwrap_err(),
            ProtoError::PskTooShort(0)
        );
        assert!(Salamander::new(b"abcd").is_ok());
        let s = Salamander::new(b"obfspass").unwrap();
        let mut out = Vec::new();
        for n in 0..=SALT_LEN {
            let d = vec![0u8; n];
            assert_eq!(s.decode(&d, &mut out), Err(ProtoError::DatagramTooShort(n)));
            let mut d = d;
            assert_eq!(
                s.decode_in_place(&mut d),
                Err(ProtoError::DatagramTooShort(n))
            );
        }
        assert!(out.is_empty());
        assert_eq!(format!("{s:?}"), "Salamander { .. }");
    }
}
