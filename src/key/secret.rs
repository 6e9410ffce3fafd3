//! The per-cache secret: 32 random bytes in `secret` (0600) in the cache
//! directory, the HMAC-SHA256 key under which the digests of secret inputs
//! (`env:`, `stdin`, `cmd:`) are stored, so a low-entropy value such as a
//! PIN cannot be found by hashing guesses. Read only on a miss, when an
//! entry is written; never on a hit.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The file's name in the cache directory.
const NAME: &str = "secret";

/// The per-cache HMAC key.
pub struct Secret([u8; 32]);

impl Secret {
    /// A secret with the given bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Secret {
        Secret(bytes)
    }

    /// Reads the secret of the cache in `dir`, creating it on first use. A
    /// file that is not a regular file of ours that only we can read, or not
    /// 32 bytes, is refused: a secret others could read or plant is none.
    pub fn load_or_create(dir: &Path) -> io::Result<Secret> {
        match read(&dir.join(NAME)) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                create(dir)?;
                read(&dir.join(NAME))
            }
            found => found,
        }
    }

    /// HMAC-SHA256 of `message` under this secret (RFC 2104).
    pub fn mac(&self, message: &[u8]) -> [u8; 32] {
        const BLOCK: usize = 64;
        let mut inner_pad = [0x36u8; BLOCK];
        let mut outer_pad = [0x5cu8; BLOCK];
        for (i, byte) in self.0.iter().enumerate() {
            inner_pad[i] ^= byte;
            outer_pad[i] ^= byte;
        }
        let inner = Sha256::new()
            .chain_update(inner_pad)
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(outer_pad)
            .chain_update(inner)
            .finalize()
            .into()
    }
}

/// Opens the secret without following a link and checks it before reading.
fn read(path: &Path) -> io::Result<Secret> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != euid || meta.mode() & 0o077 != 0 || meta.len() != 32 {
        return Err(io::Error::other(format!(
            "{} is not a private 32-byte file of this user",
            path.display()
        )));
    }
    let mut bytes = [0u8; 32];
    file.read_exact(&mut bytes)?;
    Ok(Secret(bytes))
}

/// Creates the secret atomically: written whole to a fresh private file
/// (`O_EXCL`, `O_NOFOLLOW`), then linked into place, which fails if another
/// process got there first; then its file is the one everybody reads.
fn create(dir: &Path) -> io::Result<()> {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes)?;
    let temp = dir.join(format!(
        ".{NAME}.{}.{}",
        std::process::id(),
        super::hex(&bytes[..8])
    ));
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)?;
    let written = file.write_all(&bytes).and_then(|()| file.sync_all());
    let linked = written.and_then(|()| fs::hard_link(&temp, dir.join(NAME)));
    let _ = fs::remove_file(&temp);
    match linked {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Err(err),
        _ => Ok(()),
    }
}

/// Fills `buf` from the kernel's random source.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn mac_is_hmac_sha256() {
        // RFC 4231, test case 2 has a 4-byte key; ours are 32 bytes, so the
        // key is zero-padded as HMAC pads it: the same result.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = Secret(key).mac(b"what do ya want for nothing?");
        assert_eq!(
            mac.to_vec(),
            unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn created_once_private_and_then_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let first = Secret::load_or_create(dir.path()).unwrap();
        let second = Secret::load_or_create(dir.path()).unwrap();
        assert_eq!(first.0, second.0);
        let meta = fs::symlink_metadata(dir.path().join(NAME)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn refuses_a_link_or_a_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, [1u8; 32]).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(NAME)).unwrap();
        assert!(Secret::load_or_create(dir.path()).is_err());
        fs::remove_file(dir.path().join(NAME)).unwrap();
        fs::write(dir.path().join(NAME), [1u8; 32]).unwrap();
        fs::set_permissions(
            dir.path().join(NAME),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        assert!(Secret::load_or_create(dir.path()).is_err());
    }
}
