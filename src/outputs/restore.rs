//! On a hit: putting an [`OutputTree`] back where it was declared.
//!
//! Each file is written to a temp file in its own directory and renamed into
//! place, so no reader sees half a file; it gets the current time as mtime,
//! as if the recipe had just run, so make sees it newer than its
//! prerequisites. A file already holding the same bytes is only touched.
//! Directories are created as needed and touched; what else they hold is
//! left alone (other recipes may write there too, and a cache never deletes
//! what it did not produce). A file or link in the way of a stored
//! directory is replaced; a directory in the way of a stored file is not.
//!
//! Safety: the record is checked before anything is written (its paths
//! must be the declared ones, entries plain relative names), every blob is
//! checked present, and every directory is opened with `O_NOFOLLOW` from the
//! one above it ([`super::beneath`]): a planted symlink is refused, never
//! followed, and nothing is written outside the declared path.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, UTIME_NOW};
use rustix::io::Errno;

use super::beneath::{self, display_path, Created, Step};
use super::{DeclaredPath, Entry, Kind, Output, OutputTree};
use crate::blob::{all_zero, stream_matches, zero_blob, BlobError, BlobStore, Contents, BLOB_BYTES};

/// Why a restore failed, and whether it changed anything on disk first.
#[derive(Debug, thiserror::Error)]
#[error("{}: {cause}{}", path.display(), if *written { "" } else { " (nothing was restored)" })]
pub struct RestoreError {
    /// Where it failed.
    pub path: PathBuf,
    /// What went wrong.
    pub cause: RestoreCause,
    written: bool,
}

impl RestoreError {
    /// True when no output was changed (directories this restore created
    /// were taken away again).
    pub fn nothing_written(&self) -> bool {
        !self.written
    }
}

/// What went wrong in a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreCause {
    /// A blob is missing or damaged (or could not be read, or the file
    /// could not be written).
    #[error(transparent)]
    Blob(BlobError),
    /// The record holds a path that is not a declared output or not a
    /// plain name inside it (`..`, absolute, empty): it is not obeyed.
    #[error("the cache entry holds {0}; refusing it")]
    BadRecord(&'static str),
    /// A symlink where a directory belongs.
    #[error("is a symlink where a directory belongs; refusing to follow it")]
    Symlink,
    /// A directory where a stored file or link belongs.
    #[error("is a directory where the cache holds a file or link; not replacing it")]
    DirInTheWay,
    /// Something else than a directory on the way to a declared path.
    #[error("is not a directory")]
    NotDir,
    /// The system said no.
    #[error(transparent)]
    Io(io::Error),
}

impl From<Errno> for RestoreCause {
    fn from(errno: Errno) -> RestoreCause {
        RestoreCause::Io(errno.into())
    }
}

/// Restores `tree` at the paths `declared` for this run (relative ones under
/// `cwd`, normally `.`), reading file contents from `store`.
///
/// The tree must hold exactly the declared paths: a record naming any other
/// path (`/etc/passwd` where `out.txt` was declared) is refused before
/// anything is written, as is a missing blob.
pub fn restore(
    cwd: &Path,
    declared: &[DeclaredPath],
    tree: &OutputTree,
    store: &dyn BlobStore,
) -> Result<(), RestoreError> {
    let mut restorer = Restorer {
        store,
        written: false,
        created: Vec::new(),
    };
    let result = restorer.all(cwd, declared, tree);
    if let Err(mut error) = result {
        if !restorer.written {
            restorer.take_back_created();
        }
        error.written = restorer.written;
        return Err(error);
    }
    Ok(())
}

/// One restore under way.
struct Restorer<'a> {
    store: &'a dyn BlobStore,
    /// Whether an output was changed: a file or link put in place or
    /// removed, a mode changed. Touching a file and creating a directory
    /// don't count; directories created are undone on failure.
    written: bool,
    created: Vec<Created>,
}

impl Restorer<'_> {
    fn all(&mut self, cwd: &Path, declared: &[DeclaredPath], tree: &OutputTree) -> Result<(), RestoreError> {
        let mut outputs = Vec::with_capacity(tree.outputs.len());
        for path in declared {
            let output = tree
                .outputs
                .iter()
                .find(|output| output.path.as_bytes() == path.as_bytes())
                .ok_or_else(|| bad(path.as_path(), &[], "no record of this output"))?;
            check(path.as_path(), output)?;
            outputs.push((path, output));
        }
        if tree.outputs.len() != declared.len() {
            return Err(bad(
                Path::new("-o"),
                &[],
                "another set of outputs than was declared",
            ));
        }
        self.check_blobs(&outputs)?;
        for (path, output) in outputs {
            self.output(cwd, path, output)?;
        }
        Ok(())
    }

    /// Every blob is there before the first byte is written, so a blob gone
    /// from the store drops the entry instead of leaving half the outputs.
    fn check_blobs(&self, outputs: &[(&DeclaredPath, &Output)]) -> Result<(), RestoreError> {
        let mut seen = HashSet::new();
        for (path, output) in outputs {
            for entry in &output.entries {
                let Kind::File { contents, .. } = &entry.kind else {
                    continue;
                };
                for digest in &contents.blobs {
                    if !seen.insert(*digest) {
                        continue;
                    }
                    match self.store.has(digest) {
                        Ok(true) => {}
                        Ok(false) => {
                            return Err(at(
                                path.as_path(),
                                entry,
                                RestoreCause::Blob(BlobError::Missing(*digest)),
                            ))
                        }
                        Err(e) => return Err(at(path.as_path(), entry, RestoreCause::Blob(e))),
                    }
                }
            }
        }
        Ok(())
    }

    fn output(&mut self, cwd: &Path, declared: &DeclaredPath, output: &Output) -> Result<(), RestoreError> {
        let shown = declared.as_path();
        let (parent, leaf) =
            beneath::open_parent(cwd, declared, Some(&mut self.created)).map_err(|(path, step)| {
                let cause = match step {
                    Step::Symlink => RestoreCause::Symlink,
                    Step::NotDir => RestoreCause::NotDir,
                    Step::NotFound => RestoreCause::Io(io::ErrorKind::NotFound.into()),
                    Step::Io(e) => RestoreCause::Io(e),
                };
                RestoreError {
                    path,
                    cause,
                    written: false,
                }
            })?;
        let (root, inside) = output
            .entries
            .split_first()
            .ok_or_else(|| bad(shown, &[], "an empty output"))?;
        let root_dir = match &root.kind {
            Kind::Dir => self
                .dir(parent.as_fd(), leaf, true)
                .map_err(|cause| at(shown, root, cause))?,
            kind => {
                return self
                    .leaf(parent.as_fd(), leaf, kind)
                    .map_err(|cause| at(shown, root, cause))
            }
        };
        // Entries come grouped by directory; keep the last one open.
        let mut last: Option<(&[u8], OwnedFd)> = None;
        for entry in inside {
            let rel = entry.path.as_bytes();
            let (dir_rel, name) = match rel.iter().rposition(|&b| b == b'/') {
                Some(slash) => (&rel[..slash], &rel[slash + 1..]),
                None => (&rel[..0], rel),
            };
            let dir = if dir_rel.is_empty() {
                root_dir.as_fd()
            } else {
                if last.as_ref().is_none_or(|(path, _)| *path != dir_rel) {
                    let fd = self
                        .walk(root_dir.as_fd(), dir_rel)
                        .map_err(|cause| at(shown, entry, cause))?;
                    last = Some((dir_rel, fd));
                }
                match &last {
                    Some((_, fd)) => fd.as_fd(),
                    None => root_dir.as_fd(),
                }
            };
            match &entry.kind {
                Kind::Dir => self.dir(dir, name, true).map(drop),
                kind => self.leaf(dir, name, kind),
            }
            .map_err(|cause| at(shown, entry, cause))?;
        }
        Ok(())
    }

    /// Opens the directory `rel` below `root`, creating what is missing.
    fn walk(&mut self, root: BorrowedFd<'_>, rel: &[u8]) -> Result<OwnedFd, RestoreCause> {
        let mut parts = rel.split(|&b| b == b'/');
        let first = parts.next().unwrap_or_default();
        let mut dir = self.dir(root, first, false)?;
        for part in parts {
            dir = self.dir(dir.as_fd(), part, false)?;
        }
        Ok(dir)
    }

    fn leaf(&mut self, dir: BorrowedFd<'_>, name: &[u8], kind: &Kind) -> Result<(), RestoreCause> {
        match kind {
            Kind::File {
                contents,
                executable,
                mode,
            } => self.file(dir, name, contents, Perms::of(*executable, *mode)),
            Kind::Symlink { target } => self.symlink(dir, name, target.as_bytes()),
            Kind::Dir => self.dir(dir, name, true).map(drop),
        }
    }

    /// Opens directory `name` in `parent`, creating it if missing; a file or
    /// link to a file in the way is replaced, a symlink is refused.
    fn dir(&mut self, parent: BorrowedFd<'_>, name: &[u8], touch: bool) -> Result<OwnedFd, RestoreCause> {
        let fd = match beneath::child_dir(parent, name, Some(&mut self.created)) {
            Ok(fd) => fd,
            Err(Step::Symlink) => return Err(RestoreCause::Symlink),
            Err(Step::NotDir) => {
                rfs::unlinkat(parent, name, AtFlags::empty())?;
                self.written = true;
                match beneath::child_dir(parent, name, Some(&mut self.created)) {
                    Ok(fd) => fd,
                    Err(Step::Symlink) => return Err(RestoreCause::Symlink),
                    Err(Step::NotDir) => return Err(RestoreCause::NotDir),
                    Err(Step::NotFound) => return Err(RestoreCause::Io(io::ErrorKind::NotFound.into())),
                    Err(Step::Io(e)) => return Err(RestoreCause::Io(e)),
                }
            }
            Err(Step::NotFound) => return Err(RestoreCause::Io(io::ErrorKind::NotFound.into())),
            Err(Step::Io(e)) => return Err(RestoreCause::Io(e)),
        };
        if touch {
            rfs::futimens(&fd, &NOW)?;
        }
        Ok(fd)
    }

    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        contents: &Contents,
        perms: Perms,
    ) -> Result<(), RestoreCause> {
        match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
                // Size first: reading the file is only worth it when it may match.
                FileType::RegularFile
                    if stat.st_size as u64 == contents.size
                        && self.same_file(dir, name, contents, perms)? =>
                {
                    return Ok(());
                }
                FileType::Directory => return Err(RestoreCause::DirInTheWay),
                _ => {}
            },
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let (temp, mut file) = Temp::file(dir, Mode::from_bits_truncate(perms.create()))?;
        if let Perms::Exact(mode) = perms {
            // Past the umask: the bits as the command left them.
            rfs::fchmod(&file, Mode::from_bits_truncate(mode))?;
        }
        let sparse = contents.blobs.contains(zero_blob());
        if contents.size > BLOB_BYTES as u64 && !sparse {
            // The file's blocks reserved at once, not page by page as the
            // writes arrive: writing 1 GiB took 0.16-0.17 s instead of
            // 0.22-0.24 s on ext4. Where the filesystem cannot, the writes
            // reserve them as before (and a full disk fails them as before).
            let _ = rfs::fallocate(&file, rfs::FallocateFlags::KEEP_SIZE, 0, contents.size);
        }
        // Blocks of zeros are skipped, not written: a sparse file (a disk
        // image, a database) comes back sparse, not as its full size.
        self.store
            .get_stream(contents, &mut |bytes| {
                if sparse && bytes.len() >= HOLE_BYTES && all_zero(bytes) {
                    file.seek(SeekFrom::Current(bytes.len() as i64)).map(drop)
                } else {
                    file.write_all(bytes)
                }
            })
            .map_err(RestoreCause::Blob)?;
        if sparse {
            // A hole at the end is the file's size too.
            // Failing as a write would (a full disk): a blob's failure.
            file.set_len(contents.size)
                .map_err(|e| RestoreCause::Blob(BlobError::Io(e)))?;
        }
        temp.place_file(file, name)?;
        self.written = true;
        Ok(())
    }

    /// Whether the regular file `name` already holds `contents`; if so it is
    /// touched and its permissions set as stored.
    fn same_file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        contents: &Contents,
        perms: Perms,
    ) -> Result<bool, RestoreCause> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let Ok(fd) = rfs::openat(dir, name, flags, Mode::empty()) else {
            return Ok(false);
        };
        let stat = rfs::fstat(&fd)?;
        // A file with other names too (a hard link) is not changed in
        // place: its mode and time are the other names' too. It is
        // replaced under this name instead, the others left alone.
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || stat.st_nlink > 1 {
            return Ok(false);
        }
        // Another size is another file, without a read; a sparse file's
        // holes are compared without reading them.
        let file = File::from(fd);
        if stat.st_size as u64 != contents.size
            || !stream_matches(super::holes::Sparse::new(&file, contents.size), contents)
                .map_err(RestoreCause::Io)?
        {
            return Ok(false);
        }
        let now = stat.st_mode & 0o7777;
        let wanted = perms.of_existing(now);
        if wanted != now {
            if rfs::fchmod(&file, Mode::from_bits_truncate(wanted)).is_err() {
                return Ok(false);
            }
            self.written = true;
        }
        // Not ours to touch (another owner, read-only): write it afresh.
        Ok(rfs::futimens(&file, &NOW).is_ok())
    }

    fn symlink(&mut self, dir: BorrowedFd<'_>, name: &[u8], target: &[u8]) -> Result<(), RestoreCause> {
        match rfs::readlinkat(dir, name, Vec::new()) {
            Ok(existing) if existing.as_bytes() == target => {
                rfs::utimensat(dir, name, &NOW, AtFlags::SYMLINK_NOFOLLOW)?;
                return Ok(());
            }
            Ok(_) | Err(Errno::NOENT) => {}
            Err(Errno::INVAL) => {
                let stat = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                    return Err(RestoreCause::DirInTheWay);
                }
            }
            Err(e) => return Err(e.into()),
        }
        // Nothing in the way: made in place, with no temp name to leave
        // behind should lcrun be killed here; else made beside and renamed.
        match rfs::symlinkat(target, dir, name) {
            Ok(()) => {}
            Err(Errno::EXIST) => Temp::symlink(dir, target)?.rename_to(name)?,
            Err(e) => return Err(e.into()),
        }
        self.written = true;
        Ok(())
    }

    /// Removes the directories this restore created, deepest first; a
    /// directory something else wrote into meanwhile stays.
    fn take_back_created(&mut self) {
        for created in self.created.drain(..).rev() {
            let _ = rfs::unlinkat(&created.parent, created.name.as_slice(), AtFlags::REMOVEDIR);
        }
    }
}

/// Zeros left as a hole rather than written, at least: a filesystem block.
const HOLE_BYTES: usize = 4096;

/// The permissions a restored file gets.
#[derive(Clone, Copy)]
enum Perms {
    /// The bits stored (0o777 at most), past the umask.
    Exact(u32),
    /// A record without them: executable or not, under the umask.
    Executable(bool),
}

impl Perms {
    fn of(executable: bool, mode: Option<u32>) -> Perms {
        mode.map_or(Perms::Executable(executable), |mode| Perms::Exact(mode & 0o777))
    }

    /// The mode to create the file with (the umask applies).
    fn create(self) -> u32 {
        match self {
            Perms::Exact(mode) => mode,
            Perms::Executable(true) => 0o777,
            Perms::Executable(false) => 0o666,
        }
    }

    /// The mode a file already there with mode `now` should have.
    fn of_existing(self, now: u32) -> u32 {
        match self {
            Perms::Exact(mode) => mode,
            Perms::Executable(true) if now & 0o111 == 0 => now | (now & 0o444) >> 2,
            Perms::Executable(false) => now & !0o111,
            Perms::Executable(true) => now,
        }
    }
}

/// Both times "now", as the kernel reads the clock.
const NOW: Timestamps = Timestamps {
    last_access: Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_NOW,
    },
    last_modification: Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_NOW,
    },
};

/// A file or link being made beside its final place: a file without a
/// name (`O_TMPFILE`) until it is whole, so an lcrun killed while writing
/// it (SIGKILL, a Ctrl-C that ends it) leaves nothing in the user's
/// directory, where no sweep of lcrun's would ever find it; where the
/// filesystem or a missing /proc cannot do that, a temp name, removed
/// unless renamed into place.
struct Temp<'d> {
    dir: BorrowedFd<'d>,
    /// The temp name; `None` while the file has none.
    name: Option<String>,
    renamed: bool,
}

/// Makes temp names unique within the process; the pid across processes.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl<'d> Temp<'d> {
    /// Creates something under a fresh temp name with `create`, which says
    /// `EEXIST` when the name is taken.
    fn create<T>(
        dir: BorrowedFd<'d>,
        mut create: impl FnMut(&str) -> Result<T, Errno>,
    ) -> Result<(Temp<'d>, T), RestoreCause> {
        for _ in 0..100 {
            let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let name = format!(".lcrun-{}-{seq}.tmp", std::process::id());
            match create(&name) {
                Ok(made) => {
                    let temp = Temp {
                        dir,
                        name: Some(name),
                        renamed: false,
                    };
                    return Ok((temp, made));
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Errno::EXIST.into())
    }

    /// A new empty file of `mode` (under the umask, as the command's own).
    fn file(dir: BorrowedFd<'d>, mode: Mode) -> Result<(Temp<'d>, File), RestoreCause> {
        if unnamed_files() {
            let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
            if let Ok(fd) = rfs::openat(dir, ".", flags, mode) {
                let temp = Temp {
                    dir,
                    name: None,
                    renamed: false,
                };
                return Ok((temp, File::from(fd)));
            }
        }
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let (temp, fd) = Temp::create(dir, |name| rfs::openat(dir, name, flags, mode))?;
        Ok((temp, File::from(fd)))
    }

    /// A new symlink to `target`.
    fn symlink(dir: BorrowedFd<'d>, target: &[u8]) -> Result<Temp<'d>, RestoreCause> {
        Temp::create(dir, |name| rfs::symlinkat(target, dir, name)).map(|(temp, ())| temp)
    }

    /// Puts the file (`file`, written whole) in place of `name`, atomically:
    /// an unnamed one is given a temp name first, for the rename.
    fn place_file(mut self, file: File, name: &[u8]) -> Result<(), RestoreCause> {
        if self.name.is_none() {
            let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
            let dir = self.dir;
            // Nothing in the way (a clean build): named in place at once,
            // so there is never a temp name to leave behind.
            match rfs::linkat(rfs::CWD, fd.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW) {
                Ok(()) => {
                    self.renamed = true;
                    return Ok(());
                }
                Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let (named, ()) = Temp::create(dir, |temp| {
                rfs::linkat(rfs::CWD, fd.as_str(), dir, temp, AtFlags::SYMLINK_FOLLOW)
            })?;
            // The named one removes the link if the rename fails.
            self.renamed = true;
            self = named;
        }
        drop(file);
        self.rename_to(name)
    }

    /// Puts it in place of `name`, atomically.
    fn rename_to(mut self, name: &[u8]) -> Result<(), RestoreCause> {
        if let Some(temp) = &self.name {
            rfs::renameat(self.dir, temp.as_str(), self.dir, name)?;
        }
        self.renamed = true;
        Ok(())
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if let (false, Some(name)) = (self.renamed, &self.name) {
            let _ = rfs::unlinkat(self.dir, name.as_str(), AtFlags::empty());
        }
    }
}

/// Whether files can be made without a name and named later: /proc is
/// there to name them by (`linkat` of /proc/self/fd/N). Where it is not
/// (a chroot, a bare container), temp names are used.
fn unnamed_files() -> bool {
    static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROC.get_or_init(|| rfs::access("/proc/self/fd", rfs::Access::EXISTS).is_ok())
}

/// An error at `entry` of the output declared as `declared`.
fn at(declared: &Path, entry: &Entry, cause: RestoreCause) -> RestoreError {
    RestoreError {
        path: display_path(declared, entry.path.as_bytes()),
        cause,
        written: false,
    }
}

fn bad(declared: &Path, rel: &[u8], what: &'static str) -> RestoreError {
    RestoreError {
        path: display_path(declared, rel),
        cause: RestoreCause::BadRecord(what),
        written: false,
    }
}

/// Checks the shape of a stored output before any of it is obeyed: the
/// declared path itself first, then (for a directory only) entries whose
/// paths are plain relative names, none `..`.
fn check(declared: &Path, output: &Output) -> Result<(), RestoreError> {
    let Some((root, inside)) = output.entries.split_first() else {
        return Err(bad(declared, &[], "an empty output"));
    };
    if !root.path.as_bytes().is_empty() {
        return Err(bad(
            declared,
            root.path.as_bytes(),
            "an output without its own entry",
        ));
    }
    if !matches!(root.kind, Kind::Dir) && !inside.is_empty() {
        return Err(bad(
            declared,
            &[],
            "entries inside something that is not a directory",
        ));
    }
    for entry in &output.entries {
        let rel = entry.path.as_bytes();
        if rel.first() == Some(&b'/') {
            return Err(bad(declared, rel, "an absolute path inside an output"));
        }
        let inner = !std::ptr::eq(entry, root);
        if inner
            && rel
                .split(|&b| b == b'/')
                .any(|part| matches!(part, b"" | b"." | b".."))
        {
            return Err(bad(
                declared,
                rel,
                "a path with '..', '.' or an empty name inside an output",
            ));
        }
        if rel.contains(&0) {
            return Err(bad(declared, rel, "a path with a NUL byte"));
        }
        if let Kind::Symlink { target } = &entry.kind {
            if target.as_bytes().is_empty() || target.as_bytes().contains(&0) {
                return Err(bad(declared, rel, "a symlink with an empty or NUL target"));
            }
        }
    }
    Ok(())
}
