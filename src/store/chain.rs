//! The tiers a run talks to, in order: the local tier first, then the
//! others (none yet; a remote tier is added here). A lookup that misses
//! locally asks the others; a record found there is copied into the local
//! tier, its blobs verified by SHA-256 against their names on the way (a
//! local read only checks XXH3: the local tier is ours alone), so the
//! replay that follows is a local one. Writes go to the local tier.

use super::tier::{ActionCache, Tier};
use super::{Entry, Store, StoreError};
use crate::blob::{BlobError, BlobStore, Digest};

/// The local tier and the others behind it.
pub struct Tiers {
    local: Store,
    others: Vec<Box<dyn Tier>>,
}

impl Tiers {
    /// Only the local tier.
    pub fn new(local: Store) -> Tiers {
        Tiers {
            local,
            others: Vec::new(),
        }
    }

    /// Adds a tier behind the ones there are.
    pub fn push(&mut self, tier: Box<dyn Tier>) {
        self.others.push(tier);
    }

    /// The local tier: recordings, replays and upkeep go there.
    pub fn local(&self) -> &Store {
        &self.local
    }

    /// Gives the local tier back (to replace a damaged database).
    pub fn into_parts(self) -> (Store, Vec<Box<dyn Tier>>) {
        (self.local, self.others)
    }

    /// Puts the parts back together.
    pub fn from_parts(local: Store, others: Vec<Box<dyn Tier>>) -> Tiers {
        Tiers { local, others }
    }

    /// The record stored under `key` in the first tier that has it, as a
    /// local entry. A tier that fails is skipped: another tier's trouble
    /// never stops the run.
    pub fn lookup(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        if let Some(entry) = self.local.lookup(key)? {
            return Ok(Some(entry));
        }
        for other in &self.others {
            let Ok(Some(record)) = other.get_record(key) else {
                continue;
            };
            if self.copy_blobs(other.as_ref(), record.blobs()).is_err() {
                continue;
            }
            if self.local.put_record(key, &record).is_ok() {
                return self.local.lookup(key);
            }
        }
        Ok(None)
    }

    /// Copies blobs into the local tier, each verified against its name.
    fn copy_blobs<'d>(
        &self,
        from: &dyn Tier,
        digests: impl Iterator<Item = &'d Digest>,
    ) -> Result<(), BlobError> {
        let mut buf = Vec::new();
        // One writer for all of them: their large blobs share one pack.
        let local = self.local.blobs();
        for digest in digests {
            if local.has(digest)? {
                continue;
            }
            from.get(digest, &mut buf)?;
            if Digest::of(&buf) != *digest {
                return Err(BlobError::Damaged(*digest));
            }
            local.put(digest, &buf)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::output::Stream;
    use crate::store::Record;

    /// A second tier in memory: what a remote backend file would be.
    #[derive(Default)]
    struct MemTier {
        records: RefCell<HashMap<String, Record>>,
        blobs: RefCell<HashMap<Digest, Vec<u8>>>,
    }

    impl ActionCache for MemTier {
        fn get_record(&self, key: &str) -> Result<Option<Record>, StoreError> {
            Ok(self.records.borrow().get(key).cloned())
        }
        fn put_record(&self, key: &str, record: &Record) -> Result<(), StoreError> {
            self.records.borrow_mut().insert(key.to_owned(), record.clone());
            Ok(())
        }
    }

    impl BlobStore for MemTier {
        fn has(&self, digest: &Digest) -> Result<bool, BlobError> {
            Ok(self.blobs.borrow().contains_key(digest))
        }
        fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), BlobError> {
            self.blobs.borrow_mut().insert(*digest, bytes.to_vec());
            Ok(())
        }
        fn get(&self, digest: &Digest, buf: &mut Vec<u8>) -> Result<(), BlobError> {
            let blobs = self.blobs.borrow();
            let bytes = blobs.get(digest).ok_or(BlobError::Missing(*digest))?;
            buf.clear();
            buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// A tier holding one result of `out` (over several blobs), recorded
    /// through a local store and copied out of it.
    fn remote_with(out: &[u8]) -> (MemTier, crate::key::Key) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = crate::key::KeyBuilder::new().finish();
        let mut recording = store.begin(&key, "cmd", "/").unwrap();
        recording.write(Stream::Stdout, out).unwrap();
        recording.finish(0, Duration::ZERO).unwrap();
        let remote = MemTier::default();
        let record = store.get_record(&key.hex).unwrap().unwrap();
        let local = store.blobs();
        let mut buf = Vec::new();
        for digest in record.blobs() {
            local.get(digest, &mut buf).unwrap();
            remote.put(digest, &buf).unwrap();
        }
        remote.put_record(&key.hex, &record).unwrap();
        (remote, key)
    }

    fn output(store: &Store, entry: &Entry) -> Vec<u8> {
        let mut out = Vec::new();
        store
            .replay(entry, |_, bytes| {
                out.extend_from_slice(bytes);
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn a_miss_in_the_local_tier_is_served_by_the_next_and_copied_in() {
        let out: Vec<u8> = (0..600_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (remote, key) = remote_with(&out);
        let dir = tempfile::tempdir().unwrap();
        let mut tiers = Tiers::new(Store::open(dir.path()).unwrap());
        tiers.push(Box::new(remote));
        let entry = tiers.lookup(&key.hex).unwrap().expect("found in the second tier");
        assert!(output(tiers.local(), &entry) == out);
        // Copied: the local tier alone has it now.
        let (local, _) = tiers.into_parts();
        let entry = local
            .lookup(&key.hex)
            .unwrap()
            .expect("copied into the local tier");
        assert!(output(&local, &entry) == out);
    }

    #[test]
    fn bytes_from_another_tier_that_fail_their_digest_are_not_used() {
        let (remote, key) = remote_with(b"the real output\n");
        for bytes in remote.blobs.borrow_mut().values_mut() {
            bytes[0] ^= 1;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut tiers = Tiers::new(Store::open(dir.path()).unwrap());
        tiers.push(Box::new(remote));
        assert!(tiers.lookup(&key.hex).unwrap().is_none());
        assert!(tiers.local().lookup(&key.hex).unwrap().is_none());
    }
}
