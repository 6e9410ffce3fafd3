//! A path as the bytes the kernel knows it by, which need not be UTF-8.
//!
//! Serialized as a string that is the path itself wherever the path is
//! UTF-8, with `%` and each byte of an invalid UTF-8 sequence written `%XX`.
//! A record stays readable (`cache show` prints `out/café.txt`, not hex or
//! base64 of it), UTF-8 paths (nearly all) cost nothing, and every byte
//! string round-trips exactly; JSON itself escapes control characters.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A path or link target as raw bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathBytes(pub Vec<u8>);

impl PathBytes {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As a path, for the system calls and messages.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The escaped string form (see the module doc).
    pub fn escaped(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c == '%' {
                    out.push_str("%25");
                } else {
                    out.push(c);
                }
            }
            for byte in chunk.invalid() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }

    /// Reads the escaped form back; `None` for a `%` not followed by two hex
    /// digits.
    pub fn unescape(s: &str) -> Option<PathBytes> {
        let s = s.as_bytes();
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%' {
                let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        Some(PathBytes(out))
    }
}

impl From<&[u8]> for PathBytes {
    fn from(bytes: &[u8]) -> PathBytes {
        PathBytes(bytes.to_vec())
    }
}

impl fmt::Debug for PathBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.escaped())
    }
}

impl serde::Serialize for PathBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.escaped())
    }
}

impl<'de> serde::Deserialize<'de> for PathBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<PathBytes, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        PathBytes::unescape(&s).ok_or_else(|| serde::de::Error::custom("a bad %-escape in a stored path"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stays_readable_and_every_byte_string_round_trips() {
        let cases: &[(&[u8], &str)] = &[
            (b"out/caf\xc3\xa9.txt", "out/café.txt"),
            (b"100%", "100%25"),
            (b"caf\xe9", "caf%E9"),
            (b"\xff\xfe/%41", "%FF%FE/%2541"),
            (b"", ""),
        ];
        for (bytes, escaped) in cases {
            let path = PathBytes(bytes.to_vec());
            assert_eq!(path.escaped(), *escaped);
            assert_eq!(PathBytes::unescape(escaped), Some(path.clone()));
            let json = serde_json::to_string(&path).unwrap();
            assert_eq!(serde_json::from_str::<PathBytes>(&json).unwrap(), path);
        }
        let all: Vec<u8> = (0..=255).collect();
        let path = PathBytes(all);
        assert_eq!(PathBytes::unescape(&path.escaped()), Some(path));
    }

    #[test]
    fn a_broken_escape_is_refused() {
        for bad in ["%", "%4", "%G0", "a%zz"] {
            assert_eq!(PathBytes::unescape(bad), None, "{bad}");
        }
        assert!(serde_json::from_str::<PathBytes>("\"%4\"").is_err());
    }
}
