//! Temporary files lcrun needs for itself: the progress file a command
//! writes to, and a spooled stdin. None of them may stop the command from
//! running (`TMPDIR=/nonexistent` made every run fail with 125): when the
//! temporary directory is unusable they go elsewhere, and the caller runs
//! without the feature when nowhere will do.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// The always-there fallback after `TMPDIR` and the cache dir.
const TMP: &str = "/tmp";

/// A named file for the command to find through its path, in the temporary
/// directory, else in `cache_dir`, else in /tmp. `Ok` carries a note to show
/// when the temporary directory was not usable; `Err` says why none was.
/// The file is removed when the returned guard is dropped.
pub fn named(prefix: &str, cache_dir: Option<&Path>) -> Result<(NamedTempFile, Option<String>), String> {
    create(cache_dir, |dir| {
        tempfile::Builder::new().prefix(prefix).tempfile_in(dir)
    })
}

/// An unlinked file (nothing to clean up, whatever happens to lcrun), in the
/// temporary directory, else /tmp, else in memory (`memfd_create`), which
/// needs no directory at all.
pub fn unnamed() -> io::Result<File> {
    match create(None, |dir| tempfile::tempfile_in(dir)) {
        Ok((file, _)) => Ok(file),
        Err(_) => memfd(),
    }
}

/// Tries `make` in each place in turn.
fn create<T>(
    cache_dir: Option<&Path>,
    make: impl Fn(&Path) -> io::Result<T>,
) -> Result<(T, Option<String>), String> {
    let temp = std::env::temp_dir();
    let mut places: Vec<PathBuf> = vec![temp.clone()];
    places.extend(cache_dir.map(Path::to_path_buf));
    places.push(TMP.into());
    places.dedup();
    let mut first_err: Option<io::Error> = None;
    for dir in &places {
        match make(dir) {
            Ok(file) => {
                let note = first_err.map(|err| {
                    format!(
                        "cannot create temporary files in {} ({}); using {}",
                        temp.display(),
                        reason(&err),
                        dir.display()
                    )
                });
                return Ok((file, note));
            }
            Err(err) => {
                first_err.get_or_insert(err);
            }
        }
    }
    let err = first_err.map_or_else(String::new, |e| reason(&e));
    Err(format!(
        "cannot create temporary files in {} or {TMP} ({err})",
        temp.display()
    ))
}

/// The OS's reason alone: tempfile adds the random path it tried.
fn reason(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None => err.to_string(),
    }
}

fn memfd() -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: a constant name; the new descriptor is owned by the File.
    let fd = unsafe { libc::memfd_create(c"lcrun".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor no one else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_when_the_first_place_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = create(Some(dir.path()), |d| {
            if d == std::env::temp_dir() {
                Err(io::ErrorKind::NotFound.into())
            } else {
                tempfile::Builder::new().tempfile_in(d)
            }
        })
        .unwrap();
        assert!(file.path().starts_with(dir.path()) || file.path().starts_with(TMP));
    }

    #[test]
    fn memfd_is_a_file() {
        use std::io::{Read, Seek, Write};
        let mut file = memfd().unwrap();
        file.write_all(b"abc").unwrap();
        file.rewind().unwrap();
        let mut back = String::new();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "abc");
    }
}
