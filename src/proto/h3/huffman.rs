//! HPACK/QPACK static Huffman code (RFC 7541 §5.2 and Appendix B).
//!
//! Written here rather than taken from a crate: the crates with a standalone Huffman API
//! either have no encoder (`hpack`, `fluke-hpack`), keep it private (`h2`, `h3`), or accept
//! padding that RFC 7541 says MUST be rejected (`httlib-huffman` 0.3.4 decodes `0x18` as "a"
//! with `000` padding). The table was checked against two independent copies, and the tests
//! check that it is a complete prefix code and round-trip every symbol.

use super::error::HuffmanError;

/// `(code, bit length)` for symbols 0..=255 and EOS (256), right-aligned, from Appendix B.
#[rustfmt::skip]
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6),
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7),
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7),
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13),
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5),
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15),
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    (0x3fffffff, 30),
];

const EOS: u16 = 256;
/// Marks a tree edge that ends in a symbol; the low 9 bits are the symbol.
const LEAF: u16 = 0x8000;

/// The code as a binary tree: `TREE[node][bit]` is the next internal node, or `LEAF | symbol`.
/// 257 leaves need exactly 256 internal nodes; node 0 is the root, so 0 never appears as a
/// child. Built at compile time, so a table typo that breaks the tree fails the build.
static TREE: [[u16; 2]; 256] = build_tree();

const fn build_tree() -> [[u16; 2]; 256] {
    let mut tree = [[0u16; 2]; 256];
    let mut next = 1usize;
    let mut sym = 0usize;
    while sym < CODES.len() {
        let (code, len) = CODES[sym];
        let mut node = 0usize;
        let mut bit = len - 1;
        while bit > 0 {
            let b = ((code >> bit) & 1) as usize;
            if tree[node][b] == 0 {
                tree[node][b] = next as u16;
                next += 1;
            }
            node = tree[node][b] as usize;
            bit -= 1;
        }
        tree[node][(code & 1) as usize] = LEAF | sym as u16;
        sym += 1;
    }
    tree
}

/// Length in bytes of the Huffman encoding of `src`, padding included.
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src
        .iter()
        .map(|&b| usize::from(CODES[usize::from(b)].1))
        .sum();
    bits.div_ceil(8)
}

/// Appends the Huffman encoding of `src`, padded with the most significant bits of EOS (ones).
pub fn encode(src: &[u8], out: &mut Vec<u8>) {
    out.reserve(encoded_len(src));
    // At most 7 pending bits plus one 30-bit code: fits in a u64.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in src {
        let (code, len) = CODES[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
}

/// Appends the decoding of the Huffman string `src` to `out`.
///
/// RFC 7541 §5.2: "A padding strictly longer than 7 bits MUST be treated as a decoding
/// error. A padding not corresponding to the most significant bits of the code for the EOS
/// symbol MUST be treated as a decoding error. A Huffman-encoded string literal containing
/// the EOS symbol MUST be treated as a decoding error."
pub fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    // The shortest code is 5 bits, so the output is at most 8/5 of the input.
    out.reserve(src.len() + src.len() / 2);
    let mut node = 0usize;
    // Bits read since the last complete symbol, and whether all of them were ones.
    let mut pending = 0u32;
    let mut all_ones = true;
    for &byte in src {
        for shift in (0..8).rev() {
            let bit = usize::from((byte >> shift) & 1);
            let next = TREE[node][bit];
            pending += 1;
            all_ones &= bit == 1;
            if next & LEAF != 0 {
                let sym = next & !LEAF;
                if sym == EOS {
                    return Err(HuffmanError::EosInString);
                }
                out.push(sym as u8);
                node = 0;
                pending = 0;
                all_ones = true;
            } else {
                node = usize::from(next);
            }
        }
    }
    if pending > 7 {
        Err(HuffmanError::PaddingTooLong)
    } else if !all_ones {
        Err(HuffmanError::BadPadding)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(s, &mut out);
        assert_eq!(out.len(), encoded_len(s));
        out
    }

    fn dec(s: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(s, &mut out).map(|()| out)
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn table_is_a_complete_prefix_code() {
        // Kraft equality: sum of 2^-len over all codes is exactly 1 (scaled by 2^30).
        let kraft: u64 = CODES.iter().map(|&(_, len)| 1u64 << (30 - len)).sum();
        assert_eq!(kraft, 1 << 30);
        for &(code, len) in &CODES {
            assert!((5..=30).contains(&len));
            assert!(u64::from(code) < 1u64 << len);
        }
        // Every internal node has both children, and each symbol is reached exactly once.
        let mut seen = [false; 257];
        for (i, node) in TREE.iter().enumerate() {
            for &child in node {
                assert_ne!(child, 0, "node {i} has a missing child");
                if child & LEAF != 0 {
                    let sym = usize::from(child & !LEAF);
                    assert!(!seen[sym]);
                    seen[sym] = true;
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
        // EOS is thirty ones, so padding with ones never completes a symbol.
        assert_eq!(CODES[256], (0x3fff_ffff, 30));
    }

    #[test]
    fn every_symbol_round_trips() {
        for b in 0..=255u8 {
            for s in [vec![b], vec![b, b, b], vec![b'a', b, b'Z', b]] {
                assert_eq!(dec(&enc(&s)).unwrap(), s, "symbol {b:#x}");
            }
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(dec(&enc(&all)).unwrap(), all);
        assert_eq!(enc(b""), b"");
        assert_eq!(dec(b"").unwrap(), b"");
    }

    #[test]
    fn rfc7541_appendix_c4_requests() {
        assert_eq!(
            enc(b"www.example.com"),
            hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")
        );
        assert_eq!(enc(b"no-cache"), hex("a8eb 1064 9cbf"));
        assert_eq!(enc(b"custom-key"), hex("25a8 49e9 5ba9 7d7f"));
        assert_eq!(enc(b"custom-value"), hex("25a8 49e9 5bb8 e8b4 bf"));
        for s in ["www.example.com", "no-cache", "custom-key", "custom-value"] {
            assert_eq!(dec(&enc(s.as_bytes())).unwrap(), s.as_bytes());
        }
    }

    #[test]
    fn rfc7541_appendix_c6_responses() {
        let cases = [
            ("302", "6402"),
            ("private", "aec3 771a 4b"),
            ("Mon, 21 Oct 2013 20:13:21 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"),
            ("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
            ("307", "640e ff"),
            ("Mon, 21 Oct 2013 20:13:22 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff"),
            ("gzip", "9bd9 ab"),
            (
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ),
        ];
        for (text, bytes) in cases {
            assert_eq!(enc(text.as_bytes()), hex(bytes), "{text}");
            assert_eq!(dec(&hex(bytes)).unwrap(), text.as_bytes(), "{text}");
        }
    }

    #[test]
    fn hysteria_authority_by_hand() {
        // From Appendix B: h=100111 y=1111010 s=01000 t=01001 e=00101 r=101100 i=00110
        // a=00011, then 1111 padding:
        // 10011111 11010010 00010010 01011011 00001100 00111111 = 9f d2 12 5b 0c 3f.
        assert_eq!(enc(b"hysteria"), [0x9f, 0xd2, 0x12, 0x5b, 0x0c, 0x3f]);
    }

    #[test]
    fn invalid_padding_is_rejected() {
        // "a" is 00011; padding 000 is not a prefix of EOS.
        assert_eq!(dec(&[0x1f]).unwrap(), b"a");
        assert_eq!(dec(&[0x18]), Err(HuffmanError::BadPadding));
        // A whole byte of ones after a complete symbol is 8 bits of padding.
        assert_eq!(dec(&[0x1f, 0xff]), Err(HuffmanError::PaddingTooLong));
        // EOS (thirty ones) in the string.
        assert_eq!(
            dec(&[0xff, 0xff, 0xff, 0xff]),
            Err(HuffmanError::EosInString)
        );
        // A lone 0 byte: "0" (00000) then 000 padding.
        assert_eq!(dec(&[0x00]), Err(HuffmanError::BadPadding));
    }

    #[test]
    fn every_valid_short_input_is_the_encoding_of_its_decoding() {
        // Valid input is codes plus under 8 bits of ones, exactly what `encode` writes, so
        // decode must be the inverse of encode on every input it accepts.
        for a in 0..=255u8 {
            if let Ok(s) = dec(&[a]) {
                assert_eq!(enc(&s), [a]);
            }
            for b in 0..=255u8 {
                if let Ok(s) = dec(&[a, b]) {
                    assert_eq!(enc(&s), [a, b]);
                }
            }
        }
    }
}
