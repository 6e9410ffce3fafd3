//! Writing the command's bytes to lcrun's own stdout and stderr: unbuffered,
//! binary safe, and remembering the first failure of each (a reader that
//! went away, a full disk) so that nothing more is written there and the
//! caller can act as the command would have bare.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use crate::runner::signals;

/// Which of the command's streams a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (fd 1).
    Stdout = 1,
    /// Standard error (fd 2).
    Stderr = 2,
}

impl Stream {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

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
    faults: [Option<io::Error>; 2],
    /// lcrun gave up on a reader that stopped reading, to act on a signal
    /// or a deadline: what is left for it is dropped.
    abandoned: [bool; 2],
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
            faults: [None, None],
            abandoned: [false; 2],
        }
    }

    /// Writes all of `bytes` to `stream`. The first failure (EPIPE when the
    /// reader went away, ENOSPC, EIO) is kept and returned again, and nothing
    /// more is written to that stream. A write blocked by a reader that
    /// stopped reading gives up, dropping the rest, when a signal or a
    /// deadline needs lcrun (see [`signals::must_act`]).
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let i = stream as usize - 1;
        if let Some(fault) = &self.faults[i] {
            return Err(copy(fault));
        }
        let mut rest = bytes;
        while !rest.is_empty() && !self.abandoned[i] {
            match self.files[i].write(rest) {
                Ok(0) => return Err(self.fail(i, io::ErrorKind::WriteZero.into())),
                Ok(n) => rest = &rest[n..],
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.fail(i, err)),
            }
            // A short write or EINTR: a signal interrupted a blocked write.
            if !rest.is_empty() && signals::must_act() {
                self.abandoned[i] = true;
            }
        }
        Ok(())
    }

    fn fail(&mut self, i: usize, err: io::Error) -> io::Error {
        let returned = copy(&err);
        self.faults[i] = Some(err);
        returned
    }

    /// The failure that stopped writes to `stream`, if one did.
    pub fn fault(&self, stream: Stream) -> Option<&io::Error> {
        self.faults[stream as usize - 1].as_ref()
    }
}

/// Whether a write failure only means that the reader went away (EPIPE),
/// which is quiet, as a command's death by SIGPIPE is.
pub fn reader_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe
}

fn copy(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}
