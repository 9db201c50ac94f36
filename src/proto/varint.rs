//! QUIC variable-length integers (RFC 9000 §16).
//!
//! "The QUIC variable-length integer encoding reserves the two most significant bits of the
//! first byte to encode the base-2 logarithm of the integer encoding length in bytes."
//! Hysteria senders always use the shortest form; readers accept any valid one. The one
//! implementation for the Hysteria messages and for HTTP/3 framing (`h3`).

use super::ProtoError;

/// The largest value a varint can carry: 2^62 - 1.
pub const MAX: u64 = (1 << 62) - 1;

/// The longest encoding, in bytes.
pub const MAX_LEN: usize = 8;

/// Reads one varint from the start of `buf`: the value and the bytes used, or `None` when
/// `buf` holds only part of it. Every two-bit prefix is a valid length, so a complete varint
/// never fails.
pub fn decode(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let mut value = u64::from(first & 0x3f);
    for &b in &bytes[1..] {
        value = (value << 8) | u64::from(b);
    }
    Some((value, len))
}

/// The length of the shortest encoding of `v`; values above [`MAX`] report 8 but do not encode.
pub const fn encoded_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends the shortest encoding of `v` to `out`.
pub fn encode(v: u64, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    match encoded_len(v) {
        _ if v > MAX => return Err(ProtoError::VarintOutOfRange(v)),
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
    Ok(())
}

/// Appends the shortest encoding of `v`, or of [`MAX`] when `v` is above it. For HTTP/3
/// frame lengths, setting values and stream ids, where "as large as possible" is the meaning
/// and the caller has no error to report.
pub fn encode_saturating(v: u64, out: &mut Vec<u8>) {
    // In range after `min`, so `encode` cannot refuse it.
    let _ = encode(v.min(MAX), out);
}

/// Appends a length that the caller has already checked against a protocol limit far below
/// [`MAX`]; `usize` to `u64` never truncates on supported targets.
pub(crate) fn encode_len(len: usize, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    encode(len as u64, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(v, &mut out).unwrap();
        out
    }

    #[test]
    fn rfc9000_examples() {
        // RFC 9000 Appendix A.1 sample encodings.
        let cases: [(&[u8], u64); 5] = [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
            (&[0x40, 0x25], 37), // non-minimal two-byte form: accepted
        ];
        for (bytes, value) in cases {
            assert_eq!(decode(bytes), Some((value, bytes.len())));
        }
        assert_eq!(enc(151_288_809_941_952_652), cases[0].0);
        assert_eq!(enc(494_878_333), cases[1].0);
        assert_eq!(enc(15_293), cases[2].0);
        assert_eq!(enc(37), cases[3].0);
    }

    #[test]
    fn boundaries() {
        let cases: [(u64, &[u8]); 9] = [
            (0, &[0x00]),
            (63, &[0x3f]),
            (64, &[0x40, 0x40]),
            (0x401, &[0x44, 0x01]),
            (16_383, &[0x7f, 0xff]),
            (16_384, &[0x80, 0x00, 0x40, 0x00]),
            ((1 << 30) - 1, &[0xbf, 0xff, 0xff, 0xff]),
            (1 << 30, &[0xc0, 0, 0, 0, 0x40, 0, 0, 0]),
            (MAX, &[0xff; 8]),
        ];
        for (v, bytes) in cases {
            assert_eq!(enc(v), bytes, "encode {v}");
            assert_eq!(encoded_len(v), bytes.len());
            assert_eq!(decode(bytes), Some((v, bytes.len())), "decode {v}");
        }
    }

    #[test]
    fn non_minimal_forms_accepted() {
        assert_eq!(decode(&[0x40, 0x00]), Some((0, 2)));
        assert_eq!(decode(&[0x80, 0, 0, 0x05]), Some((5, 4)));
        assert_eq!(decode(&[0xc0, 0, 0, 0, 0, 0, 0x04, 0x01]), Some((0x401, 8)));
    }

    #[test]
    fn incomplete_and_trailing() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0x40]), None);
        assert_eq!(decode(&[0x80, 0, 0]), None);
        assert_eq!(decode(&[0xc0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[0x05, 0xff, 0xff]), Some((5, 1)));
    }

    #[test]
    fn out_of_range() {
        let mut out = Vec::new();
        assert_eq!(
            encode(MAX + 1, &mut out),
            Err(ProtoError::VarintOutOfRange(MAX + 1))
        );
        assert_eq!(
            encode(u64::MAX, &mut out),
            Err(ProtoError::VarintOutOfRange(u64::MAX))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn saturating_encode() {
        for v in [0, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, MAX] {
            let mut out = Vec::new();
            encode_saturating(v, &mut out);
            assert_eq!(out, enc(v));
        }
        // Above MAX: written as MAX rather than refused.
        let mut out = Vec::new();
        encode_saturating(u64::MAX, &mut out);
        assert_eq!(decode(&out), Some((MAX, 8)));
    }
}
