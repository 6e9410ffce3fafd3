//! The key inputs that come from a process: `cmd:SHELL_COMMAND`'s output and
//! lcrun's own stdin (`stdin`), both streamed through SHA-256.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::runner::tree;

/// Streams a reader into SHA-256.
pub(super) fn hash_reader(mut reader: impl Read, hasher: &mut Sha256) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// `cmd:SHELL_COMMAND`: its stdout and exit status. Its stderr goes to ours.
/// `None` when it was still running at `deadline`: it and everything it
/// started are killed, and nothing is hashed.
pub(super) fn output(command: &OsStr, deadline: Option<Instant>) -> Result<Option<[u8; 32]>, String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run /bin/sh: {err}"))?;
    let mut hasher = Sha256::new();
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut buf = vec![0u8; 64 * 1024];
    let end = |mut child: std::process::Child| {
        let root = child.id() as libc::pid_t;
        tree::kill_until_none(|| {
            let mut tree = tree::descendants(root);
            tree.push(root);
            tree
        });
        let _ = child.wait();
        Ok(None)
    };
    loop {
        if !readable_before(stdout.as_raw_fd(), deadline) {
            return end(child);
        }
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.to_string()),
        }
    }
    // The output is complete; a command that closed its stdout and runs on
    // is still bounded by the deadline.
    let status = loop {
        match child.try_wait().map_err(|err| err.to_string())? {
            Some(status) => break status,
            None if deadline.is_some_and(|d| Instant::now() >= d) => return end(child),
            None if deadline.is_some() => std::thread::sleep(Duration::from_millis(5)),
            None => break child.wait().map_err(|err| err.to_string())?,
        }
    };
    hasher.update(b"\0status\0");
    hasher.update(format!("{status}").as_bytes());
    Ok(Some(hasher.finalize().into()))
}

/// Waits until `fd` has data or its end to read, no later than `deadline`;
/// false when the deadline came first. Without a deadline, true at once.
fn readable_before(fd: RawFd, deadline: Option<Instant>) -> bool {
    let Some(deadline) = deadline else {
        return true;
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on one pollfd, for at most `ms`.
        match unsafe { libc::poll(&mut poll, 1, ms) } {
            0 => return false,
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            // Readable, at its end, or an error the read will report.
            _ => return true,
        }
    }
}

/// `stdin`: hashes lcrun's stdin while spooling it to an unlinked temporary
/// file that becomes the command's stdin, so any size fits in bounded memory.
/// `None` when stdin was not complete at `deadline`.
pub(super) fn spool_stdin(deadline: Option<Instant>) -> io::Result<Option<([u8; 32], File)>> {
    let mut file = crate::scratch::unnamed()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = io::stdin().lock();
    loop {
        if !readable_before(libc::STDIN_FILENO, deadline) {
            return Ok(None);
        }
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])?;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    use std::io::Seek;
    file.rewind()?;
    Ok(Some((hasher.finalize().into(), file)))
}
