//! An action record: what one run of a key produced, small enough to read
//! in one row, naming its content by digest. The bytes themselves are blobs
//! (see [`crate::blob`]), which any number of records may share.

use crate::blob::Contents;
use crate::key::KeyInput;
use crate::output::Stream;
use crate::outputs::OutputTree;

/// The record layout this build writes (the `v` field); a record of another
/// layout is damage, never misread.
pub const RECORD_VERSION: u32 = 1;

/// One run's result: its status and timings, its command and key inputs,
/// and references to its content. Stored as JSON, so new facts need no
/// migration.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The layout ([`RECORD_VERSION`]).
    #[serde(default)]
    pub v: u32,
    /// The command as the user wrote it, for listings.
    pub command: String,
    /// The working directory it ran in.
    pub cwd: String,
    /// The key's inputs, as digests.
    pub inputs: Vec<KeyInput>,
    /// How long the command ran (ms).
    pub duration_ms: u64,
    /// The command's exit status.
    pub status: u8,
    /// The stdout bytes.
    #[serde(default)]
    pub stdout: Contents,
    /// The stderr bytes.
    #[serde(default)]
    pub stderr: Contents,
    /// How the two streams interleaved: runs of bytes of one stream, in
    /// output order, consecutive runs of one stream coalesced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order: Vec<Run>,
    /// The declared output files (`-o`), if any were declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<OutputTree>,
    /// While pending: the key it will be stored under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_key: Option<String>,
    /// While pending: a random token of the recording, which makes its
    /// pending record unique: each of its writes checks that the row still
    /// holds that record, so it never writes into a row id reused by another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A run of output bytes of one stream: `[tag, length]` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Run(pub u8, pub u64);

impl Run {
    /// The stream, if the tag names one.
    pub fn stream(self) -> Option<Stream> {
        Stream::from_tag(i64::from(self.0))
    }
}

impl Record {
    /// The contents of `stream`.
    pub fn contents(&self, stream: Stream) -> &Contents {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    /// Every blob the record refers to, repeats included.
    pub fn blobs(&self) -> impl Iterator<Item = &crate::blob::Digest> {
        self.stdout
            .blobs
            .iter()
            .chain(&self.stderr.blobs)
            .chain(self.outputs.iter().flat_map(OutputTree::blobs))
    }

    /// Appends `len` bytes of `stream` to the interleaving.
    pub fn push_run(&mut self, stream: Stream, len: u64) {
        match self.order.last_mut() {
            Some(Run(tag, n)) if *tag == stream as u8 => *n += len,
            _ => self.order.push(Run(stream as u8, len)),
        }
    }

    /// Whether the interleaving accounts for every byte of both streams,
    /// and nothing more: a record that fails this is damaged.
    pub fn is_consistent(&self) -> bool {
        let mut sums = [0u64; 2];
        for run in &self.order {
            match run.stream() {
                Some(stream) => sums[stream as usize - 1] += run.1,
                None => return false,
            }
        }
        self.v == RECORD_VERSION
            && sums == [self.stdout.size, self.stderr.size]
            && self.stdout.is_whole()
            && self.stderr.is_whole()
    }
}
