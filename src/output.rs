//! Writing the command's bytes to lcrun's own stdout and stderr: unbuffered,
//! binary safe, and quiet about a reader that went away.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

/// Which of the command's streams a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (fd 1).
    Stdout = 1,
    /// Standard error (fd 2).
    Stderr = 2,
}

impl Stream {
    /// The number stored in the database for this stream.
    pub fn tag(self) -> i64 {
        self as i64
    }

    /// The stream a stored tag names.
    pub fn from_tag(tag: i64) -> Option<Stream> {
        match tag {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// lcrun's stdout and stderr as raw files. `std::io::Stdout` is line buffered,
/// which would scan every byte for newlines and delay a partial line; we want
/// each read of the child to reach our reader as it is.
pub struct RawOut {
    files: [ManuallyDrop<File>; 2],
    broken: [bool; 2],
}

impl Default for RawOut {
    fn default() -> Self {
        Self::new()
    }
}

impl RawOut {
    /// Wraps fds 1 and 2 without taking ownership of them.
    pub fn new() -> RawOut {
        // SAFETY: fds 1 and 2 are open for the life of the process, and
        // ManuallyDrop keeps us from ever closing them.
        let files = unsafe {
            [
                ManuallyDrop::new(File::from_raw_fd(1)),
                ManuallyDrop::new(File::from_raw_fd(2)),
            ]
        };
        RawOut {
            files,
            broken: [false; 2],
        }
    }

    /// Writes all of `bytes` to `stream`. A closed reader (EPIPE) is remembered
    /// and later writes are dropped: the command keeps running and its output is
    /// still recorded, as `lcrun -- cmd | head` should behave.
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let i = stream as usize - 1;
        if self.broken[i] {
            return Ok(());
        }
        match self.files[i].write_all(bytes) {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.broken[i] = true;
                Ok(())
            }
            other => other,
        }
    }

    /// True once the reader of stdout has gone away.
    pub fn stdout_closed(&self) -> bool {
        self.broken[0]
    }
}
