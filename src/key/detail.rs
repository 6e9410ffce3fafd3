//! What a key input was, beyond its digest, kept with the record so that
//! `lcrun explain` can say how it changed: the commit a `git` input was at,
//! the files a `hash:` input covered, the size and mtime of the program.
//! Only inputs that are never secret carry one.

/// The detail of one key input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detail {
    /// A `git` input: HEAD (none before the first commit) and whether
    /// there were uncommitted changes or untracked files.
    Git {
        /// HEAD's commit, hex.
        head: Option<String>,
        /// Anything uncommitted.
        dirty: bool,
    },
    /// A `hash:` input: each path it covered with a short digest of its
    /// entry (name, kind, contents); left out past [`MAX_FILES`] paths, so a
    /// record stays small enough to read on every hit.
    Files(Vec<(String, String)>),
    /// The program: its size and modification time (s, ns).
    Program {
        /// Bytes.
        size: u64,
        /// Seconds since the epoch.
        mtime: i64,
        /// Nanoseconds.
        nsec: i64,
    },
}

/// How many paths of a `hash:` input are named in its detail.
pub const MAX_FILES: usize = 256;

/// The digest of one path's entry, as kept in [`Detail::Files`].
pub fn file_digest(item: &[u8]) -> String {
    use sha2::Digest;
    super::hex(&sha2::Sha256::digest(item)[..8])
}
