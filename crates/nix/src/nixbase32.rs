//! Nix's base-32 encoding (SPEC §3 "nixbase32").
//!
//! Not RFC 4648 base32: a different alphabet, and the characters are emitted
//! from the most significant 5-bit group of a little-endian number first.
//! Pure functions only; no allocation beyond the returned string or vector.

use thiserror::Error;

/// The 32 symbols, without `e`, `o`, `u` and `t`.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A string that is not the nixbase32 form of the expected number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The string has the wrong length for the requested byte count.
    #[error("nixbase32 string has {found} characters, expected {expected}")]
    Length {
        /// Characters expected.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// A character outside the alphabet.
    #[error("invalid nixbase32 character {0:?}")]
    Character(char),
    /// The string encodes bits beyond the decoded length.
    #[error("nixbase32 string has non-zero bits beyond its length")]
    Overflow,
}

/// Number of characters needed to encode `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    (len * 8).div_ceil(5)
}

/// Number of bytes a string of `len` characters decodes to.
pub const fn decoded_len(len: usize) -> usize {
    len * 5 / 8
}

/// Encodes `bytes` as nixbase32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let i = bit / 8;
        let j = bit % 8;
        let low = bytes[i] >> j;
        let high = if j > 3 {
            bytes.get(i + 1).map_or(0, |b| b << (8 - j))
        } else {
            0
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

fn symbol_value(c: u8) -> Option<u8> {
    // A 256-entry table would be faster, but decoding is never on a hot path.
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Decodes a nixbase32 string into exactly `out.len()` bytes.
pub fn decode_into(s: &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
    let expected = encoded_len(out.len());
    if s.len() != expected {
        return Err(DecodeError::Length {
            expected,
            found: s.len(),
        });
    }
    out.fill(0);
    for (k, &c) in s.iter().enumerate() {
        let digit = symbol_value(c).ok_or(DecodeError::Character(c as char))?;
        let n = s.len() - 1 - k;
        let bit = n * 5;
        let i = bit / 8;
        let j = bit % 8;
        out[i] |= digit << j;
        let carry = if j > 3 { digit >> (8 - j) } else { 0 };
        match out.get_mut(i + 1) {
            Some(next) => *next |= carry,
            None if carry != 0 => return Err(DecodeError::Overflow),
            None => {}
        }
    }
    Ok(())
}

/// Decodes a nixbase32 string of any valid length into a vector.
pub fn decode(s: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = vec![0; decoded_len(s.len())];
    decode_into(s, &mut out)?;
    Ok(out)
}

/// Decodes into a fixed-size array, e.g. the 20 bytes of a store path hash.
pub fn decode_array<const N: usize>(s: &[u8]) -> Result<[u8; N], DecodeError> {
    let mut out = [0; N];
    decode_into(s, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        // sha256("") as nix-hash --type sha256 --to-base32 prints it.
        let empty_sha256 = data_encoding::HEXLOWER
            .decode(b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            .unwrap();
        assert_eq!(
            encode(&empty_sha256),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(
            decode(b"0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").unwrap(),
            empty_sha256
        );
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            decode_array::<20>(b"abc"),
            Err(DecodeError::Length {
                expected: 32,
                found: 3
            })
        );
        assert_eq!(decode(b"0e"), Err(DecodeError::Character('e')));
        // 52 characters carry 260 bits; the top 4 must be zero for 32 bytes.
        let mut s = vec![b'0'; 52];
        s[0] = b'z';
        assert_eq!(decode(&s), Err(DecodeError::Overflow));
    }

    proptest! {
        #[test]
        fn roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(s.as_bytes()).unwrap(), bytes);
        }
    }
}
