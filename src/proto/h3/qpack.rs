//! QPACK field sections (RFC 9204) with the static table only.
//!
//! Neither Hysteria peer ever allows a dynamic table (SETTINGS_QPACK_MAX_TABLE_CAPACITY stays
//! 0), so every section starts with Required Insert Count 0 and only these field lines can be
//! valid (§4.5):
//!
//! ```text
//! 1 T index(6)               indexed field line; T=1 static (T=0 dynamic: error)
//! 0 1 N T index(4) H len(7)  literal with name reference; T=1 static (T=0: error)
//! 0 0 1 N H len(3) H len(7)  literal with literal name
//! 0 0 0 1 ...                indexed post-base: error
//! 0 0 0 0 N ...              literal with post-base name reference: error
//! ```

use super::error::QpackError;
use super::huffman;
use super::static_table::{self, StaticMatch};

/// One decoded field line. Names and values are bytes: HTTP allows obs-text in values and
/// this layer does not judge; [`super::message`] validates them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Field name as sent (HTTP/3 requires lower case; checked later).
    pub name: Vec<u8>,
    /// Field value.
    pub value: Vec<u8>,
}

/// Limits applied while decoding, so a small section cannot expand into a large one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most field lines in one section.
    pub max_fields: usize,
    /// Most decoded bytes, counted as RFC 9114 §4.2.2 does: name + value + 32 per field.
    pub max_field_section_size: usize,
}

/// Why [`decode_field_section`] failed: a malformed section, or one over the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The section is not valid QPACK.
    Qpack(QpackError),
    /// More field lines than [`DecodeLimits::max_fields`].
    TooManyFields,
    /// More decoded bytes than [`DecodeLimits::max_field_section_size`].
    TooLarge,
}

impl From<QpackError> for DecodeError {
    fn from(e: QpackError) -> Self {
        Self::Qpack(e)
    }
}

/// When string literals are Huffman-coded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HuffmanPolicy {
    /// Plain literals.
    Never,
    /// Huffman-code every literal, even when longer: what quic-go's encoder does, and so what
    /// a Go peer's bytes look like on the wire.
    Always,
    /// Huffman-code a literal only when that makes it shorter.
    WhenShorter,
}

/// Per-field overhead in the RFC 9114 §4.2.2 field section size.
const FIELD_OVERHEAD: usize = 32;
/// Continuation bytes beyond which a prefix integer cannot fit in 62 bits anyway.
const MAX_INT_CONTINUATION: usize = 9;

/// Decodes a prefix integer (RFC 7541 §5.1) whose first byte is `buf[0]`, using its low
/// `prefix` bits. Returns the value and the bytes used.
/// `prefix` is 1 to 8 (other values are clamped into that range).
pub fn decode_int(buf: &[u8], prefix: u8) -> Result<(u64, usize), QpackError> {
    let first = *buf.first().ok_or(QpackError::Truncated)?;
    let max_prefix = (1u64 << prefix.clamp(1, 8)) - 1;
    let mut value = u64::from(first) & max_prefix;
    if value < max_prefix {
        return Ok((value, 1));
    }
    let mut shift = 0u32;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        if i > MAX_INT_CONTINUATION {
            return Err(QpackError::IntegerOverflow);
        }
        let add = u64::from(b & 0x7f)
            .checked_shl(shift)
            .filter(|v| v >> shift == u64::from(b & 0x7f))
            .ok_or(QpackError::IntegerOverflow)?;
        value = value
            .checked_add(add)
            .filter(|&v| v <= crate::proto::varint::MAX)
            .ok_or(QpackError::IntegerOverflow)?;
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
        shift += 7;
    }
    Err(QpackError::Truncated)
}

/// Appends `value` as a prefix integer: `flags` holds the bits above the `prefix`-bit field.
/// `prefix` is 1 to 8 (other values are clamped into that range).
pub fn encode_int(value: u64, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let max_prefix = (1u64 << prefix.clamp(1, 8)) - 1;
    if value < max_prefix {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Decodes a string literal whose H bit is `huffman_bit` in the first byte and whose length
/// uses the `prefix` bits below it. Returns the string and the bytes used.
fn decode_string(buf: &[u8], huffman_bit: u8, prefix: u8) -> Result<(Vec<u8>, usize), QpackError> {
    let first = *buf.first().ok_or(QpackError::Truncated)?;
    let (len, used) = decode_int(buf, prefix)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| used.checked_add(len))
        .filter(|&end| end <= buf.len())
        .ok_or(QpackError::Truncated)?;
    let raw = &buf[used..end];
    let s = if first & huffman_bit != 0 {
        let mut out = Vec::new();
        huffman::decode(raw, &mut out)?;
        out
    } else {
        raw.to_vec()
    };
    Ok((s, end))
}

/// Appends a string literal: the first byte carries `flags`, the H bit `huffman_bit` and a
/// `prefix`-bit length.
fn encode_string(
    s: &[u8],
    flags: u8,
    huffman_bit: u8,
    prefix: u8,
    policy: HuffmanPolicy,
    out: &mut Vec<u8>,
) {
    let huffman_len = huffman::encoded_len(s);
    let use_huffman = match policy {
        HuffmanPolicy::Never => false,
        HuffmanPolicy::Always => true,
        HuffmanPolicy::WhenShorter => huffman_len < s.len(),
    };
    if use_huffman {
        encode_int(huffman_len as u64, prefix, flags | huffman_bit, out);
        huffman::encode(s, out);
    } else {
        encode_int(s.len() as u64, prefix, flags, out);
        out.extend_from_slice(s);
    }
}

/// Decodes a complete encoded field section (the payload of one HEADERS frame).
///
/// The section is complete, so running out of bytes inside it is malformed
/// ([`QpackError::Truncated`]), never "wait for more".
pub fn decode_field_section(
    section: &[u8],
    limits: &DecodeLimits,
) -> Result<Vec<Field>, DecodeError> {
    let (required_insert_count, used) = decode_int(section, 8)?;
    // RFC 9204 §2.2.1: with no dynamic table, a non-zero Required Insert Count can never be
    // satisfied; quic-go rejects it the same way.
    if required_insert_count != 0 {
        return Err(QpackError::DynamicTableUsed.into());
    }
    let mut pos = used;
    // Delta Base (sign bit and 7-bit prefix) only matters for dynamic references; parse it
    // for its length and ignore it.
    let (_delta_base, used) = decode_int(&section[pos..], 7)?;
    pos += used;

    let mut fields = Vec::new();
    let mut size = 0usize;
    while pos < section.len() {
        let rest = &section[pos..];
        let first = rest[0];
        let (field, used) = if first & 0x80 != 0 {
            // Indexed field line.
            if first & 0x40 == 0 {
                return Err(QpackError::DynamicReference.into());
            }
            let (index, used) = decode_int(rest, 6)?;
            let (name, value) =
                static_table::get(index).ok_or(QpackError::BadStaticIndex(index))?;
            let field = Field {
                name: name.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            };
            (field, used)
        } else if first & 0x40 != 0 {
            // Literal field line with name reference.
            if first & 0x10 == 0 {
                return Err(QpackError::DynamicReference.into());
            }
            let (index, used) = decode_int(rest, 4)?;
            let (name, _) = static_table::get(index).ok_or(QpackError::BadStaticIndex(index))?;
            let (value, value_used) = decode_string(&rest[used..], 0x80, 7)?;
            let field = Field {
                name: name.as_bytes().to_vec(),
                value,
            };
            (field, used + value_used)
        } else if first & 0x20 != 0 {
            // Literal field line with literal name.
            let (name, used) = decode_string(rest, 0x08, 3)?;
            let (value, value_used) = decode_string(&rest[used..], 0x80, 7)?;
            (Field { name, value }, used + value_used)
        } else {
            // Indexed post-base, or literal with post-base name reference.
            return Err(QpackError::DynamicReference.into());
        };
        pos += used;
        if fields.len() >= limits.max_fields {
            return Err(DecodeError::TooManyFields);
        }
        size = size
            .saturating_add(field.name.len())
            .saturating_add(field.value.len())
            .saturating_add(FIELD_OVERHEAD);
        if size > limits.max_field_section_size {
            return Err(DecodeError::TooLarge);
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Appends an encoded field section for `fields`, which should have lower-case names.
///
/// As quic-go does: an indexed line where the static table has the exact field, a literal
/// with a static name reference (the first entry with that name) where it has the name, and
/// a literal name otherwise. Never references a dynamic table.
pub fn encode_field_section(fields: &[(&str, &str)], policy: HuffmanPolicy, out: &mut Vec<u8>) {
    // Required Insert Count 0, Delta Base 0.
    out.extend_from_slice(&[0x00, 0x00]);
    for &(name, value) in fields {
        match static_table::find(name, value) {
            StaticMatch::Exact(index) => encode_int(u64::from(index), 6, 0xc0, out),
            StaticMatch::Name(index) => {
                // 01NT: N=0, T=1 (static).
                encode_int(u64::from(index), 4, 0x50, out);
                encode_string(value.as_bytes(), 0x00, 0x80, 7, policy, out);
            }
            StaticMatch::None => {
                // 001N H: N=0.
                encode_string(name.as_bytes(), 0x20, 0x08, 3, policy, out);
                encode_string(value.as_bytes(), 0x00, 0x80, 7, policy, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_fields: 64,
        max_field_section_size: 16 * 1024,
    };

    fn decode(section: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
        decode_field_section(section, &LIMITS).map(|fields| {
            fields
                .into_iter()
                .map(|f| {
                    (
                        String::from_utf8(f.name).unwrap(),
                        String::from_utf8(f.value).unwrap(),
                    )
                })
                .collect()
        })
    }

    fn encode(fields: &[(&str, &str)], policy: HuffmanPolicy) -> Vec<u8> {
        let mut out = Vec::new();
        encode_field_section(fields, policy, &mut out);
        out
    }

    fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|&(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn rfc7541_c1_integers() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42, 8 bits.
        let cases: [(u64, u8, &[u8]); 3] = [
            (10, 5, &[0x0a]),
            (1337, 5, &[0x1f, 0x9a, 0x0a]),
            (42, 8, &[0x2a]),
        ];
        for (value, prefix, bytes) in cases {
            let mut out = Vec::new();
            encode_int(value, prefix, 0, &mut out);
            assert_eq!(out, bytes);
            assert_eq!(decode_int(bytes, prefix), Ok((value, bytes.len())));
        }
        // Flag bits above the prefix are ignored on decode and kept on encode.
        assert_eq!(decode_int(&[0xea], 5), Ok((10, 1)));
        let mut out = Vec::new();
        encode_int(1337, 5, 0xe0, &mut out);
        assert_eq!(out, [0xff, 0x9a, 0x0a]);
    }

    #[test]
    fn integer_round_trips_and_limits() {
        for prefix in 1..=8 {
            for value in [
                0,
                1,
                30,
                31,
                127,
                128,
                255,
                256,
                16_383,
                1 << 40,
                crate::proto::varint::MAX,
            ] {
                let mut out = Vec::new();
                encode_int(value, prefix, 0, &mut out);
                assert_eq!(
                    decode_int(&out, prefix),
                    Ok((value, out.len())),
                    "{value} {prefix}"
                );
            }
        }
        assert_eq!(decode_int(&[], 5), Err(QpackError::Truncated));
        assert_eq!(decode_int(&[0x1f], 5), Err(QpackError::Truncated));
        assert_eq!(
            decode_int(&[0x1f, 0x80, 0x80], 5),
            Err(QpackError::Truncated)
        );
        let mut huge = vec![0xff];
        huge.extend_from_slice(&[0xff; 9]);
        huge.push(0x01);
        assert_eq!(decode_int(&huge, 8), Err(QpackError::IntegerOverflow));
        // 2^63 does not fit in 62 bits.
        let mut out = Vec::new();
        encode_int(1 << 63, 8, 0, &mut out);
        assert_eq!(decode_int(&out, 8), Err(QpackError::IntegerOverflow));
        // Redundant zero continuation bytes are legal but bounded.
        assert_eq!(decode_int(&[0x1f, 0x80, 0x00], 5), Ok((31, 3)));
        let mut long = vec![0x1f];
        long.extend_from_slice(&[0x80; 12]);
        long.push(0x00);
        assert_eq!(decode_int(&long, 5), Err(QpackError::IntegerOverflow));
    }

    #[test]
    fn minimal_auth_request_plain_layout() {
        let fields = [
            (":authority", "hysteria"),
            (":method", "POST"),
            (":path", "/auth"),
            (":scheme", "https"),
            ("hysteria-auth", "secret"),
        ];
        let section = encode(&fields, HuffmanPolicy::Never);
        let mut expect = vec![0x00, 0x00, 0x50, 0x08];
        expect.extend_from_slice(b"hysteria");
        expect.push(0xd4);
        expect.extend_from_slice(&[0x51, 0x05]);
        expect.extend_from_slice(b"/auth");
        expect.push(0xd7);
        expect.extend_from_slice(&[0x27, 0x06]);
        expect.extend_from_slice(b"hysteria-auth");
        expect.push(0x06);
        expect.extend_from_slice(b"secret");
        assert_eq!(section, expect);
        assert_eq!(decode(&section).unwrap(), owned(&fields));
    }

    #[test]
    fn huffman_layout_as_quic_go_writes_it() {
        let section = encode(&[(":authority", "hysteria")], HuffmanPolicy::Always);
        // 0101 0000, then H=1 with length 6, then the hand-checked Huffman bytes.
        assert_eq!(
            section,
            [0x00, 0x00, 0x50, 0x86, 0x9f, 0xd2, 0x12, 0x5b, 0x0c, 0x3f]
        );
        // Literal name with H=1: 0010 1xxx.
        let section = encode(&[("hysteria-udp", "true")], HuffmanPolicy::Always);
        assert_eq!(section[2] & 0xf8, 0x28);
        assert_eq!(
            decode(&section).unwrap(),
            owned(&[("hysteria-udp", "true")])
        );
        // quic-go Huffman-codes empty strings too: H=1, length 0.
        let section = encode(&[("x-empty", "")], HuffmanPolicy::Always);
        assert_eq!(*section.last().unwrap(), 0x80);
        assert_eq!(decode(&section).unwrap(), owned(&[("x-empty", "")]));
    }

    #[test]
    fn policies_round_trip() {
        let fields = [
            (":status", "233"),
            (":status", "404"),
            ("content-length", "0"),
            ("content-length", "19"),
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
            ("hysteria-padding", "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
            ("x-odd", "\u{1}\u{7f}~~~~{}|\\^"),
            ("long-name-over-the-three-bit-prefix-and-then-some", ""),
        ];
        for policy in [
            HuffmanPolicy::Never,
            HuffmanPolicy::Always,
            HuffmanPolicy::WhenShorter,
        ] {
            assert_eq!(decode(&encode(&fields, policy)).unwrap(), owned(&fields));
        }
        // WhenShorter keeps "~~~~" plain (13 bits a character), Always does not.
        let shorter = encode(&[("x", "~~~~")], HuffmanPolicy::WhenShorter);
        assert!(shorter.ends_with(b"~~~~"));
        let always = encode(&[("x", "~~~~")], HuffmanPolicy::Always);
        assert!(always.len() > shorter.len());
    }

    #[test]
    fn static_indexed_and_name_reference_lines() {
        // :status 404 is an indexed line (0xc0 | 27); :status 233 a name reference to 24,
        // whose 4-bit prefix overflows: 0x5f then 24 - 15 = 9.
        assert_eq!(
            encode(&[(":status", "404")], HuffmanPolicy::Never),
            [0, 0, 0xdb]
        );
        assert_eq!(
            encode(&[(":status", "233")], HuffmanPolicy::Never),
            [0, 0, 0x5f, 0x09, 0x03, b'2', b'3', b'3']
        );
        // Index 98, the last entry: 6-bit prefix overflow.
        assert_eq!(
            decode(&[0, 0, 0xff, 98 - 63]).unwrap(),
            owned(&[("x-frame-options", "sameorigin")])
        );
        // The N (never-index) bit is accepted.
        assert_eq!(
            decode(&[0, 0, 0x70, 0x01, b'x']).unwrap(),
            owned(&[(":authority", "x")])
        );
        assert_eq!(
            decode(&[0, 0, 0x31, b'x', 0x00]).unwrap(),
            owned(&[("x", "")])
        );
        // A Delta Base with the sign bit set is ignored.
        assert_eq!(
            decode(&[0, 0x80, 0xd4]).unwrap(),
            owned(&[(":method", "POST")])
        );
        // An empty section is valid.
        assert_eq!(decode(&[0, 0]).unwrap(), []);
    }

    #[test]
    fn dynamic_table_is_refused() {
        let q = |e| Err(DecodeError::Qpack(e));
        assert_eq!(decode(&[0x01, 0x00, 0xd4]), q(QpackError::DynamicTableUsed));
        assert_eq!(
            decode(&[0xff, 0x00, 0x00, 0xd4]),
            q(QpackError::DynamicTableUsed)
        );
        assert_eq!(decode(&[0x00, 0x00, 0x80]), q(QpackError::DynamicReference));
        assert_eq!(
            decode(&[0x00, 0x00, 0x40, 0x00]),
            q(QpackError::DynamicReference)
        );
        assert_eq!(decode(&[0x00, 0x00, 0x10]), q(QpackError::DynamicReference));
        assert_eq!(
            decode(&[0x00, 0x00, 0x00, 0x00]),
            q(QpackError::DynamicReference)
        );
        assert_eq!(
            decode(&[0x00, 0x00, 0x08, 0x00]),
            q(QpackError::DynamicReference)
        );
        assert_eq!(
            decode(&[0x00, 0x00, 0xff, 0x24]),
            q(QpackError::BadStaticIndex(99))
        );
        assert_eq!(
            decode(&[0x00, 0x00, 0x5f, 0x54, 0x00]),
            q(QpackError::BadStaticIndex(99))
        );
    }

    #[test]
    fn malformed_sections() {
        let q = |e| Err(DecodeError::Qpack(e));
        assert_eq!(decode(&[]), q(QpackError::Truncated));
        assert_eq!(decode(&[0x00]), q(QpackError::Truncated));
        // Value length past the end of the section.
        assert_eq!(decode(&[0, 0, 0x50, 0x05, b'a']), q(QpackError::Truncated));
        // Name reference with no value.
        assert_eq!(decode(&[0, 0, 0x50]), q(QpackError::Truncated));
        // Literal name with no value.
        assert_eq!(decode(&[0, 0, 0x21, b'a']), q(QpackError::Truncated));
        // Huffman value with bad padding ("a" then 000).
        assert_eq!(
            decode(&[0, 0, 0x50, 0x81, 0x18]),
            q(QpackError::Huffman(
                crate::proto::h3::error::HuffmanError::BadPadding
            ))
        );
        // A length that overflows usize arithmetic.
        let mut huge = vec![0, 0, 0x50, 0xff];
        huge.extend_from_slice(&[0xff; 8]);
        huge.push(0x3f);
        assert!(decode(&huge).is_err());
    }

    #[test]
    fn limits_bound_expansion() {
        // Ten one-byte indexed lines that each decode to a 69-byte field.
        let mut section = vec![0, 0];
        section.extend_from_slice(&[0xc0 | 58; 10]);
        let tight = DecodeLimits {
            max_fields: 9,
            max_field_section_size: 1 << 20,
        };
        assert_eq!(
            decode_field_section(&section, &tight),
            Err(DecodeError::TooManyFields)
        );
        let small = DecodeLimits {
            max_fields: 100,
            max_field_section_size: 500,
        };
        assert_eq!(
            decode_field_section(&section, &small),
            Err(DecodeError::TooLarge)
        );
        assert_eq!(decode_field_section(&section, &LIMITS).unwrap().len(), 10);
    }

    #[test]
    fn every_prefix_and_every_byte_flip_is_handled() {
        let fields = [
            (":authority", "hysteria"),
            (":method", "POST"),
            ("hysteria-padding", "Zz09"),
        ];
        for policy in [HuffmanPolicy::Never, HuffmanPolicy::Always] {
            let section = encode(&fields, policy);
            for end in 0..section.len() {
                let _ = decode(&section[..end]);
            }
            for i in 0..section.len() {
                for flip in 0..=255u8 {
                    let mut s = section.clone();
                    s[i] ^= flip;
                    let _ = decode_field_section(&s, &LIMITS);
                }
            }
        }
    }
}
