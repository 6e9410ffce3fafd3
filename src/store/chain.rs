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
