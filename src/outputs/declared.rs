//! Checking `-o PATH` before anything runs, and the one canonical form of a
//! declared path that goes into the key and the record.
//!
//! A relative path is relative to the working directory and must stay inside
//! it: an output elsewhere is given absolute, so the key says where it goes.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::PathBytes;

/// Why a declared output path is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeclareError {
    /// `-o ''`.
    #[error("-o needs a path")]
    Empty,
    /// A relative path whose `..` leads out of the working directory.
    #[error("-o {}: outside the working directory; give it as an absolute path", .0.display())]
    OutsideCwd(PathBuf),
    /// A relative path that names the working directory itself.
    #[error("-o {}: is the working directory itself; name the files or directories the command writes", .0.display())]
    WorkingDir(PathBuf),
    /// `/`.
    #[error("-o {}: the root directory cannot be an output", .0.display())]
    Root(PathBuf),
    /// An absolute path with `..`, whose meaning depends on the links along
    /// it.
    #[error("-o {}: an absolute output path must not contain '..'", .0.display())]
    DotDotInAbsolute(PathBuf),
}

/// A declared output path in canonical form: no empty, `.` or `..`
/// components, no trailing slash; relative (to the working directory) or
/// absolute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeclaredPath(PathBytes);

impl DeclaredPath {
    /// Checks one `-o` argument. Pure: it looks at no file.
    ///
    /// `a/./b/`, `a//b` and `x/../a/b` all become `a/b`: a relative path is
    /// resolved by its words alone, which is what restoring does too, since
    /// it refuses links on the way.
    pub fn parse(arg: &OsStr) -> Result<DeclaredPath, DeclareError> {
        let bytes = arg.as_bytes();
        let given = || PathBuf::from(arg);
        if bytes.is_empty() {
            return Err(DeclareError::Empty);
        }
        let absolute = bytes[0] == b'/';
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in bytes.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." if absolute => return Err(DeclareError::DotDotInAbsolute(given())),
                b".." => {
                    if parts.pop().is_none() {
                        return Err(DeclareError::OutsideCwd(given()));
                    }
                }
                _ => parts.push(part),
            }
        }
        if parts.is_empty() {
            return Err(if absolute {
                DeclareError::Root(given())
            } else {
                DeclareError::WorkingDir(given())
            });
        }
        let mut canonical = Vec::with_capacity(bytes.len());
        for part in parts {
            if absolute || !canonical.is_empty() {
                canonical.push(b'/');
            }
            canonical.extend_from_slice(part);
        }
        Ok(DeclaredPath(PathBytes(canonical)))
    }

    /// The canonical form: what the key hashes and the record stores.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// As a path.
    pub fn as_path(&self) -> &Path {
        self.0.as_path()
    }

    /// Whether it is absolute (else relative to the working directory).
    pub fn is_absolute(&self) -> bool {
        self.as_bytes().first() == Some(&b'/')
    }

    /// Its components, none empty, `.` or `..`.
    pub(super) fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.as_bytes()
            .split(|&b| b == b'/')
            .filter(|part| !part.is_empty())
    }
}

/// Checks every `-o` argument and returns them sorted and without repeats,
/// so `-o a -o b`, `-o b -o a` and `-o a -o ./a -o b` key alike.
pub fn declare_all(args: &[OsString]) -> Result<Vec<DeclaredPath>, DeclareError> {
    let mut declared = args
        .iter()
        .map(|arg| DeclaredPath::parse(arg))
        .collect::<Result<Vec<_>, _>>()?;
    declared.sort();
    declared.dedup();
    Ok(declared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(arg: &[u8]) -> Result<Vec<u8>, DeclareError> {
        DeclaredPath::parse(OsStr::from_bytes(arg)).map(|d| d.as_bytes().to_vec())
    }

    #[test]
    fn paths_become_canonical() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"out.txt", b"out.txt"),
            (b"./a//b/", b"a/b"),
            (b"x/../a/./b", b"a/b"),
            (b"/abs//dir/./f", b"/abs/dir/f"),
            (b"//abs", b"/abs"),
            (b"caf\xe9", b"caf\xe9"),
        ];
        for (arg, want) in cases {
            assert_eq!(
                canonical(arg).as_deref(),
                Ok(*want),
                "{:?}",
                OsStr::from_bytes(arg)
            );
        }
        assert!(DeclaredPath::parse(OsStr::new("/a")).unwrap().is_absolute());
        assert!(!DeclaredPath::parse(OsStr::new("a")).unwrap().is_absolute());
    }

    #[test]
    fn escaping_or_empty_paths_are_refused_with_the_fix() {
        for arg in ["..", "../x", "a/../../x", "a/../.."] {
            let err = canonical(arg.as_bytes()).unwrap_err();
            assert_eq!(err, DeclareError::OutsideCwd(arg.into()));
            assert!(err.to_string().contains("give it as an absolute path"), "{err}");
        }
        for arg in [".", "./", "a/.."] {
            assert_eq!(
                canonical(arg.as_bytes()),
                Err(DeclareError::WorkingDir(arg.into()))
            );
        }
        assert_eq!(canonical(b""), Err(DeclareError::Empty));
        assert_eq!(canonical(b"/"), Err(DeclareError::Root("/".into())));
        assert_eq!(
            canonical(b"/a/../b"),
            Err(DeclareError::DotDotInAbsolute("/a/../b".into()))
        );
    }

    #[test]
    fn a_set_of_outputs_is_sorted_and_deduplicated() {
        let args: Vec<OsString> = ["b", "./a", "a", "/z"].iter().map(OsString::from).collect();
        let declared = declare_all(&args).unwrap();
        let forms: Vec<&[u8]> = declared.iter().map(DeclaredPath::as_bytes).collect();
        assert_eq!(forms, [&b"/z"[..], b"a", b"b"]);
        let bad: Vec<OsString> = ["a", "../b"].iter().map(OsString::from).collect();
        assert!(declare_all(&bad).is_err());
    }
}
