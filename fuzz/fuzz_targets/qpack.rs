//! Decodes arbitrary bytes as a QPACK field section and as a Huffman string. Whatever
//! decodes must re-encode to something that decodes the same (and, for Huffman, to the very
//! same bytes: a valid Huffman string has exactly one encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quelay::proto::h3::huffman_code;
use quelay::proto::h3::qpack::{
    decode_field_section, encode_field_section, DecodeLimits, HuffmanPolicy,
};

const LIMITS: DecodeLimits = DecodeLimits {
    max_fields: 256,
    max_field_section_size: 64 * 1024,
};

fuzz_target!(|data: &[u8]| {
    let mut decoded = Vec::new();
    if huffman_code::decode(data, &mut decoded).is_ok() {
        let mut again = Vec::new();
        huffman_code::encode(&decoded, &mut again);
        assert_eq!(again, data);
        assert_eq!(huffman_code::encoded_len(&decoded), data.len());
    }

    let Ok(fields) = decode_field_section(data, &LIMITS) else {
        return;
    };
    let Ok(strings) = fields
        .iter()
        .map(|f| {
            Ok((
                std::str::from_utf8(&f.name)?,
                std::str::from_utf8(&f.value)?,
            ))
        })
        .collect::<Result<Vec<(&str, &str)>, std::str::Utf8Error>>()
    else {
        return;
    };
    for policy in [
        HuffmanPolicy::Never,
        HuffmanPolicy::Always,
        HuffmanPolicy::WhenShorter,
    ] {
        let mut section = Vec::new();
        encode_field_section(&strings, policy, &mut section);
        let roomy = DecodeLimits {
            max_fields: usize::MAX,
            max_field_section_size: usize::MAX,
        };
        assert_eq!(decode_field_section(&section, &roomy).as_ref(), Ok(&fields));
    }
});
