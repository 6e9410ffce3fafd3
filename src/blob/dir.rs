//! A [`BlobStore`] for tests: one file per blob in a directory, named by the
//! digest's hex, verified on every read. Enough to exercise code written
//! against the interface on real files, without the cache's database.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{BlobError, BlobStore, Digest, BLOB_BYTES};

/// Blobs as files in one directory.
pub struct DirBlobs {
    dir: PathBuf,
}

impl DirBlobs {
    /// Blobs in `dir`, created if needed.
    pub fn new(dir: &Path) -> DirBlobs {
        fs::create_dir_all(dir).expect("blob dir");
        DirBlobs { dir: dir.to_owned() }
    }

    /// The file that holds `digest`, for tests that damage or remove it.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// How many blobs are stored.
    pub fn count(&self) -> usize {
        fs::read_dir(&self.dir).expect("blob dir").count()
    }
}

impl BlobStore for DirBlobs {
    fn has(&self, digest: &Digest) -> Result<bool, BlobError> {
        Ok(self.path_of(digest).exists())
    }

    fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), BlobError> {
        assert!(bytes.len() <= BLOB_BYTES, "a blob is at most BLOB_BYTES");
        assert_eq!(Digest::of(bytes), *digest, "put under its own digest");
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        fs::write(tmp.path(), bytes)?;
        tmp.persist(self.path_of(digest)).map_err(|e| e.error)?;
        Ok(())
    }

    fn get(&self, digest: &Digest, buf: &mut Vec<u8>) -> Result<(), BlobError> {
        buf.clear();
        match fs::File::open(self.path_of(digest)) {
            Ok(mut file) => io::Read::read_to_end(&mut file, buf)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobError::Missing(*digest)),
            Err(e) => return Err(e.into()),
        };
        if Digest::of(buf) != *digest {
            return Err(BlobError::Damaged(*digest));
        }
        Ok(())
    }
}
