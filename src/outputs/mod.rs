//! Output files (`-o PATH`): what a command left at its declared paths,
//! captured into content-addressed blobs after a miss and restored on a hit.
//!
//! A declared path is checked before anything runs ([`declared`]); after a
//! successful run [`capture`] walks it into an [`OutputTree`]; on a hit
//! [`restore`] puts it back, never following a symlink and never writing
//! outside the declared path ([`beneath`] opens every component).
//!
//! How a run uses it: [`declare_all`] on the `-o` arguments before anything
//! runs (an error is lcrun's own, status 125), their canonical bytes in the
//! key; after a successful miss, [`capture`] into the entry (any error: one
//! warning, no entry, the command's status stands); on a hit, [`restore`]
//! before replaying stdout and stderr, so that when a blob fails it
//! (missing, damaged, or its file unwritable: a full disk) the command can
//! still run instead, once, and write every output itself, those restored
//! already included.

use crate::blob::{Contents, Digest};

mod beneath;
pub mod capture;
pub mod declared;
mod holes;
mod path_bytes;
pub mod restore;
#[cfg(test)]
mod tests;

pub use capture::{capture, CaptureError};
pub use declared::{declare_all, DeclareError, DeclaredPath};
pub use path_bytes::PathBytes;
pub use restore::{restore, RestoreCause, RestoreError};

/// Everything the declared outputs of one run held, in the order declared.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputTree {
    /// One per declared path.
    pub outputs: Vec<Output>,
}

/// One declared path and what was there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Output {
    /// The path as declared, in its canonical form ([`DeclaredPath::as_bytes`]).
    pub path: PathBytes,
    /// The declared path itself first (relative path empty), then, for a
    /// directory, everything inside it, depth first, names in byte order, so
    /// a directory always comes before its contents.
    pub entries: Vec<Entry>,
}

/// One file, directory or symlink of an output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Relative to the declared path, components joined by `/`; empty for
    /// the declared path itself.
    pub path: PathBytes,
    /// What it is.
    pub kind: Kind,
}

/// What an entry is: only these three can be outputs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File {
        /// Its bytes.
        contents: Contents,
        /// Whether anyone may execute it.
        executable: bool,
        /// Its permission bits (`0o777`: no set-id nor sticky bit), restored
        /// as they were, whatever the umask: a key the command made 0600
        /// stays private. Records from before it was stored have none, and
        /// get `executable` under the umask.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// A directory, kept even when empty.
    Dir,
    /// A symbolic link, kept as a link: its target is never followed.
    Symlink {
        /// The link's target, as stored in the link.
        target: PathBytes,
    },
}

impl OutputTree {
    /// Every blob the tree refers to, repeats included: what the store must
    /// keep alive for this entry and what a restore checks first.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.outputs
            .iter()
            .flat_map(|output| &output.entries)
            .filter_map(|entry| match &entry.kind {
                Kind::File { contents, .. } => Some(&contents.blobs),
                _ => None,
            })
            .flatten()
    }

    /// The total size of its files, in bytes.
    pub fn size(&self) -> u64 {
        self.outputs
            .iter()
            .flat_map(|output| &output.entries)
            .map(|entry| match &entry.kind {
                Kind::File { contents, .. } => contents.size,
                _ => 0,
            })
            .sum()
    }
}
