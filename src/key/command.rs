//! The key inputs that come from a process: `cmd:SHELL_COMMAND`'s output and
//! lcrun's own stdin (`stdin`), both streamed through SHA-256.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

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
pub(super) fn output(command: &OsStr) -> Result<[u8; 32], String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run /bin/sh: {err}"))?;
    let mut hasher = Sha256::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    hash_reader(stdout, &mut hasher).map_err(|err| err.to_string())?;
    let status = child.wait().map_err(|err| err.to_string())?;
    hasher.update(b"\0status\0");
    hasher.update(format!("{status}").as_bytes());
    Ok(hasher.finalize().into())
}

/// `stdin`: hashes lcrun's stdin while spooling it to an unlinked temporary
/// file that becomes the command's stdin, so any size fits in bounded memory.
pub(super) fn spool_stdin() -> io::Result<([u8; 32], File)> {
    let mut file = crate::scratch::unnamed()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = io::stdin().lock();
    loop {
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
    Ok((hasher.finalize().into(), file))
}
