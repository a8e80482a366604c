//! Hex digests (fingerprints, argument hashes) kept as bytes, and hex encoding.

use serde::{Deserialize, Serialize};

/// A hex digest (a fingerprint or an argument hash) kept as its bytes rather than its text:
/// `N` bytes inline instead of a string and its heap allocation, in every record the broker
/// and the consoles keep. Serialised as the lowercase hex string it was made from, so the wire
/// and store formats are unchanged; any other text is kept as it came.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digest<const N: usize> {
    /// Lowercase hex of `len` characters (at most `2 * N`), packed two to a byte.
    Hex {
        /// Number of hex characters.
        len: u8,
        /// The nibbles, high first; unused ones are zero.
        bytes: [u8; N],
    },
    /// Anything else (written by hand, or by some other tool), unchanged.
    Text(Box<str>),
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes` (digests, checksums).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// The bytes written as exactly `2 * N` hex digits (either case, surrounding whitespace
/// ignored), e.g. a SHA-256 from a config file or the token file.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim().as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = nibble(text[2 * i])? << 4 | nibble(text[2 * i + 1])?;
    }
    Some(out)
}

/// An exact or shape fingerprint: 16 hex characters.
pub type Fingerprint = Digest<8>;
/// A SHA-256 of canonical arguments: 64 hex characters.
pub type ArgsHash = Digest<32>;

impl<const N: usize> Default for Digest<N> {
    fn default() -> Self {
        Digest::Hex {
            len: 0,
            bytes: [0; N],
        }
    }
}

impl<const N: usize> Digest<N> {
    /// No digest (older records, calls that were never fingerprinted).
    pub fn is_empty(&self) -> bool {
        match self {
            Digest::Hex { len, .. } => *len == 0,
            Digest::Text(t) => t.is_empty(),
        }
    }

    /// Whether this is the digest written as `text`.
    pub fn is(&self, text: &str) -> bool {
        *self == Digest::from(text)
    }

    fn write_hex<'b>(len: u8, bytes: &[u8; N], buf: &'b mut [u8; 64]) -> &'b str {
        let len = usize::from(len);
        for (i, out) in buf.iter_mut().enumerate().take(len) {
            let b = bytes[i / 2];
            *out = HEX[usize::from(if i % 2 == 0 { b >> 4 } else { b & 15 })];
        }
        // Only ASCII hex digits were written.
        std::str::from_utf8(&buf[..len]).unwrap_or_default()
    }
}

impl<const N: usize> From<&str> for Digest<N> {
    fn from(text: &str) -> Self {
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut bytes = [0u8; N];
        if text.len() <= 2 * N.min(32) {
            let mut ok = true;
            for (i, c) in text.bytes().enumerate() {
                match nibble(c) {
                    Some(v) => bytes[i / 2] |= if i % 2 == 0 { v << 4 } else { v },
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                return Digest::Hex {
                    len: text.len() as u8,
                    bytes,
                };
            }
        }
        Digest::Text(text.into())
    }
}

impl<const N: usize> From<String> for Digest<N> {
    fn from(text: String) -> Self {
        Digest::from(text.as_str())
    }
}

impl<const N: usize> std::fmt::Display for Digest<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Digest::Hex { len, bytes } => f.write_str(Self::write_hex(*len, bytes, &mut [0; 64])),
            Digest::Text(t) => f.write_str(t),
        }
    }
}

impl<const N: usize> std::fmt::Debug for Digest<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl<const N: usize> Serialize for Digest<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Digest::Hex { len, bytes } => {
                s.serialize_str(Self::write_hex(*len, bytes, &mut [0; 64]))
            }
            Digest::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de, const N: usize> Deserialize<'de> for Digest<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> serde::de::Visitor<'_> for V<N> {
            type Value = Digest<N>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a hex digest string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Digest<N>, E> {
                Ok(Digest::from(v))
            }
        }
        d.deserialize_str(V::<N>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn unhex_reads_back_exactly_n_bytes() {
        assert_eq!(unhex::<3>(" 000FA5 "), Some([0x00, 0x0f, 0xa5]));
        assert_eq!(unhex::<2>(&hex(&[0xab, 0x01])), Some([0xab, 0x01]));
        assert_eq!(unhex::<2>("abc"), None, "too short");
        assert_eq!(unhex::<2>("abcdef"), None, "too long");
        assert_eq!(unhex::<2>("zz00"), None, "not hex");
        assert_eq!(unhex::<1>("é"), None, "not ASCII");
    }

    #[test]
    fn digests_keep_their_text() {
        for text in [
            "",
            "0",
            "ab",
            "0123456789abcdef",
            "abc",
            "ABCDEF",
            "sh-delete",
            "0123456789abcdef0",
        ] {
            let d = Fingerprint::from(text);
            assert_eq!(d.to_string(), text);
            assert!(d.is(text));
            assert_eq!(d.is_empty(), text.is_empty());
            let json = serde_json::to_string(&d).expect("serialize");
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(
                serde_json::from_str::<Fingerprint>(&json).expect("deserialize"),
                d
            );
        }
        // Lowercase hex that fits is packed; anything else is kept as text.
        assert!(matches!(
            Fingerprint::from("0123456789abcdef"),
            Digest::Hex { len: 16, .. }
        ));
        assert!(matches!(Fingerprint::from("ABCDEF"), Digest::Text(_)));
        assert!(matches!(
            Fingerprint::from("0123456789abcdef0"),
            Digest::Text(_)
        ));
        let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(ArgsHash::from(sha).to_string(), sha);
        assert!(matches!(ArgsHash::from(sha), Digest::Hex { len: 64, .. }));
        assert!(!Fingerprint::from("ab").is("abc"));
    }
}
