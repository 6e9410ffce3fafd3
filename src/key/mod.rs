//! The cache key: what identifies a run. An invocation (argv or shell string,
//! the program's identity, cwd, scope, cache-by values) is encoded field by
//! field, each field hashed, and the key is SHA-256 over the versioned list of
//! labelled field digests, so no two different inputs share an encoding.
//!
//! The parts: [`expr`] parses and evaluates cache-by expressions, [`files`]
//! hashes paths, [`git`] a work tree, [`program`] finds the program and the
//! script it runs, [`command`] runs `cmd:` and spools stdin, and [`secret`]
//! keys the stored digests of secret inputs.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

use sha2::{Digest, Sha256};

mod command;
pub mod detail;
pub mod expr;
mod files;
mod git;
pub mod program;
pub mod secret;

pub use detail::Detail;
pub use expr::CacheBy;
pub use program::{interpreter_script, program_identity, resolve_program, script_identity, Resolved};
pub use secret::Secret;

/// Bumped whenever the encoding changes, so old entries become misses instead
/// of being confused with new ones. v2: `hash:` takes existing paths
/// literally, follows named links and marks directories and special files;
/// `git` hashes untracked links as links and recurses into submodules; an
/// interpreter's script is a field of its own.
const KEY_VERSION: &[u8] = b"lcrun-key-v2";

/// Why a cache-by expression could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The expression does not parse.
    #[error("bad cache-by expression '{expr}': {reason}")]
    Malformed {
        /// The expression as given.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The expression parsed but could not be evaluated. It reads as
    /// `hash:secret.txt: permission denied`: the expression names the path.
    #[error("{expr}: {reason}")]
    Eval {
        /// The expression as given.
        expr: String,
        /// What went wrong.
        reason: String,
    },
    /// `--timeout` expired while the expression was being evaluated.
    #[error("cache-by '{expr}' was still running when the time limit expired")]
    TimedOut {
        /// The expression as given.
        expr: String,
    },
    /// `--ignore-arg` named an argument that cannot be ignored.
    #[error("--ignore-arg {index}: {reason}")]
    IgnoreArg {
        /// The index given.
        index: usize,
        /// Why it is refused.
        reason: String,
    },
}

/// One labelled input of the key, kept (as a digest only) with the entry so a
/// later miss can say which input changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyInput {
    /// What the input is: `argv`, `program`, `cwd`, `cache-by hash:src`, ...
    pub label: String,
    /// Hex SHA-256 of the input's canonical bytes; for a secret input, once
    /// sealed, the HMAC of that with the cache's secret (empty when the
    /// secret could not be had).
    pub digest: String,
    /// The value may be a secret (`env:`, `stdin`, `cmd:`): its plain digest
    /// is part of the key but never stored (see [`Key::sealed`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// What the input was, for `lcrun explain` (see [`Detail`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
}

/// A derived cache key with the inputs it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Hex SHA-256; the name of the entry in every tier.
    pub hex: String,
    /// The labelled inputs, in key order.
    pub inputs: Vec<KeyInput>,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex)
    }
}

impl Key {
    /// The key as it may be stored: the digest of every secret input keyed
    /// with the cache's `secret` (HMAC-SHA256), so a low-entropy value (a
    /// PIN) cannot be found by hashing guesses. Without a secret those
    /// digests are left out. The key itself is unchanged: it must be the
    /// same on every machine. `secret` is asked for only when there is a
    /// secret input: most keys have none, and their misses need not read
    /// (or, in a new cache, create and fsync) the secret's file.
    pub fn sealed(&self, secret: impl FnOnce() -> Option<Secret>) -> Key {
        let secret = if self.inputs.iter().any(|input| input.secret) {
            secret()
        } else {
            None
        };
        let secret = secret.as_ref();
        let inputs = self
            .inputs
            .iter()
            .map(|input| match (input.secret, secret) {
                (false, _) => input.clone(),
                (true, Some(secret)) => KeyInput {
                    digest: hex(&secret.mac(input.digest.as_bytes())),
                    ..input.clone()
                },
                (true, None) => KeyInput {
                    digest: String::new(),
                    ..input.clone()
                },
            })
            .collect();
        Key {
            hex: self.hex.clone(),
            inputs,
        }
    }
}

/// Builds a key from labelled fields. Each field's bytes are hashed on their
/// own; the key hashes the version and each (length-prefixed label, digest)
/// pair, so labels and values can never run into each other.
#[derive(Default)]
pub struct KeyBuilder {
    inputs: Vec<KeyInput>,
    hasher: Sha256,
}

impl KeyBuilder {
    /// An empty builder for the current key version.
    pub fn new() -> KeyBuilder {
        let mut hasher = Sha256::new();
        hasher.update(KEY_VERSION);
        KeyBuilder {
            inputs: Vec::new(),
            hasher,
        }
    }

    /// Adds a field whose canonical bytes are `bytes`. The label is hashed
    /// as given (a path in it may be any bytes) and kept lossily for
    /// listings.
    pub fn field(&mut self, label: impl AsRef<[u8]>, bytes: &[u8]) {
        self.digest_field(label, Sha256::digest(bytes).into());
    }

    /// Adds a field whose canonical bytes were already hashed.
    pub fn digest_field(&mut self, label: impl AsRef<[u8]>, digest: [u8; 32]) {
        self.push(label.as_ref(), digest, false);
    }

    /// Adds a field whose value may be a secret; its digest is never stored
    /// as it is (see [`Key::sealed`]).
    pub fn secret_field(&mut self, label: impl AsRef<[u8]>, digest: [u8; 32]) {
        self.push(label.as_ref(), digest, true);
    }

    fn push(&mut self, label: &[u8], digest: [u8; 32], secret: bool) {
        self.hasher.update((label.len() as u64).to_be_bytes());
        self.hasher.update(label);
        self.hasher.update(digest);
        self.inputs.push(KeyInput {
            label: String::from_utf8_lossy(label).into_owned(),
            digest: hex(&digest),
            secret,
            detail: None,
        });
    }

    /// Attaches what the last input added was (never to a secret one).
    pub fn detail(&mut self, detail: Detail) {
        if let Some(input) = self.inputs.last_mut().filter(|i| !i.secret) {
            input.detail = Some(detail);
        }
    }

    /// The finished key.
    pub fn finish(self) -> Key {
        Key {
            hex: hex(&self.hasher.finalize()),
            inputs: self.inputs,
        }
    }
}

/// Appends a length-prefixed byte string: the canonical form of one item in a
/// list-valued field.
pub fn push_item(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The canonical bytes of an argv with some positions left out. A left-out
/// argument keeps its position (a length no real argument can have), so
/// `cmd X b` and `cmd b` never collide.
pub fn encode_argv(argv: &[OsString], ignored: &[usize]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (i, arg) in argv.iter().enumerate() {
        if ignored.contains(&i) {
            buf.extend_from_slice(&u64::MAX.to_be_bytes());
        } else {
            push_item(&mut buf, arg.as_bytes());
        }
    }
    buf
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    // Not `write!(out, "{b:02x}")`: a hit hexes three digests, and going
    // through the formatter was 22k of its 532k instructions (callgrind).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0x10, 0xa5, 0xff]), "000f10a5ff");
        assert_eq!(hex(&[]), "");
    }

    fn key_of(fields: &[(&str, &[u8])]) -> String {
        let mut builder = KeyBuilder::new();
        for (label, bytes) in fields {
            builder.field(label, bytes);
        }
        builder.finish().hex
    }

    #[test]
    fn different_inputs_never_share_an_encoding() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert_ne!(
            encode_argv(&args(&["ab", "c"]), &[]),
            encode_argv(&args(&["a", "bc"]), &[])
        );
        assert_ne!(
            encode_argv(&args(&["a", ""]), &[]),
            encode_argv(&args(&["a"]), &[])
        );
        assert_ne!(
            encode_argv(&args(&["a", "x", "b"]), &[1]),
            encode_argv(&args(&["a", "b"]), &[])
        );
        assert_eq!(
            encode_argv(&args(&["a", "x", "b"]), &[1]),
            encode_argv(&args(&["a", "y", "b"]), &[1])
        );
        // Label and value boundaries cannot shift.
        assert_ne!(key_of(&[("ab", b"c")]), key_of(&[("a", b"bc")]));
        // Order matters, and so does presence.
        assert_ne!(
            key_of(&[("a", b"1"), ("b", b"2")]),
            key_of(&[("b", b"2"), ("a", b"1")])
        );
        assert_ne!(key_of(&[("a", b"1")]), key_of(&[("a", b"1"), ("cwd", b"")]));
        assert_eq!(key_of(&[("a", b"1")]), key_of(&[("a", b"1")]));
    }

    #[test]
    fn key_is_stable_across_releases() {
        // The key names entries on disk and on remote servers: changing it
        // silently would orphan every cache. When the encoding changes on
        // purpose, bump KEY_VERSION and update these literals with it.
        assert_eq!(KEY_VERSION, b"lcrun-key-v2");
        let argv = encode_argv(&[OsString::from("echo"), OsString::from("hi")], &[]);
        assert_eq!(argv, b"\0\0\0\0\0\0\0\x04echo\0\0\0\0\0\0\0\x02hi");
        assert_eq!(
            key_of(&[("argv", &argv), ("cwd", b"/tmp")]),
            "511fd53d552f21e14f51f0ed3dbf505246d34e80937608a1782c615e6462dfb8"
        );
        assert_eq!(key_of(&[]), hex(&Sha256::digest(KEY_VERSION)));
    }

    #[test]
    fn sealing_keys_secret_digests_and_keeps_the_key() {
        let mut builder = KeyBuilder::new();
        builder.field("argv", b"x");
        builder.secret_field("cache-by env:PIN", Sha256::digest(b"set:1234").into());
        let key = builder.finish();
        let sealed = key.sealed(|| Some(Secret::from_bytes([7; 32])));
        assert_eq!(sealed.hex, key.hex);
        assert_eq!(sealed.inputs[0], key.inputs[0]);
        assert_ne!(sealed.inputs[1].digest, key.inputs[1].digest);
        assert_eq!(sealed.inputs[1].digest.len(), 64);
        assert_eq!(key.sealed(|| None).inputs[1].digest, "");
        let other = key.sealed(|| Some(Secret::from_bytes([8; 32])));
        assert_ne!(other.inputs[1].digest, sealed.inputs[1].digest);
    }

    #[test]
    fn a_key_without_secret_inputs_never_asks_for_the_secret() {
        let mut builder = KeyBuilder::new();
        builder.field("argv", b"x");
        let key = builder.finish();
        let sealed = key.sealed(|| panic!("the secret was asked for"));
        assert_eq!(sealed.inputs, key.inputs);
    }
}
