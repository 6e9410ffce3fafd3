//! Looking into the local tier, for `lcrun explain` and `lcrun cache`:
//! listing, totals, finding a key by prefix, the earlier entries of a
//! command, and removing entries through the one delete path (so a blob
//! shared by entries goes only with its last user).
//!
//! Two append-only files beside the database keep what the entries table
//! does not, so that neither a hit nor a lookup gains a SQLite write or a
//! schema change (every connection parses the schema before its first
//! statement, and that parse is a hit's largest cost):
//! - `commands/<digest of argv or shell string>`: the keys stored for that
//!   command, one per line, appended when a record is committed. `explain`
//!   reads the tail of one file instead of scanning every record.
//! - `misses.log`: one fixed-width line per lookup that missed, so the count
//!   is the file's size, exact under parallel runs (one `O_APPEND` write).

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{hits::HIT_LOG, now_ms, Entry, Record, Store, StoreError, BLOB_DIR, OUTCOME_PREFIX};
use crate::key::KeyInput;
use crate::trust;

/// The directory of per-command key lists.
const COMMANDS_DIR: &str = "commands";
/// One line per miss: 13 digits of ms since the epoch and a newline.
pub const MISS_LOG: &str = "misses.log";
const MISS_LINE: u64 = 14;
/// How much of a command's key list `explain` reads (its newest keys).
const COMMAND_TAIL: u64 = 32 * 65;
/// A command's key list is cut back to its tail past this size.
const COMMAND_LIST_MAX: u64 = 64 * 1024;

/// The labels of the inputs that name the command itself.
fn command_digest(inputs: &[KeyInput]) -> Option<&str> {
    inputs
        .iter()
        .find(|i| i.label == "argv" || i.label == "shell")
        .map(|i| &i.digest[..32.min(i.digest.len())])
}

/// Counts a lookup that missed, in `dir`'s miss log. Best effort: a count
/// lost is better than a run stopped.
pub fn note_miss(dir: &Path) {
    let path = dir.join(MISS_LOG);
    if let Ok((mut log, _)) = trust::open(&path, OpenOptions::new().create(true).append(true)) {
        let _ = log.write_all(format!("{:013}\n", now_ms()).as_bytes());
    }
}

/// One line of `cache list`.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    /// The full key.
    pub key: String,
    /// The shortest prefix no other key shares (at least 8 digits).
    pub short: String,
    /// The command as written.
    pub command: String,
    /// When it was stored (ms since the epoch).
    pub created_ms: i64,
    /// When it was last stored or replayed (ms since the epoch).
    pub last_used_ms: i64,
    /// Bytes it stored.
    pub bytes: i64,
    /// Its exit status.
    pub status: i64,
    /// Times replayed.
    pub hits: i64,
}

/// `cache stats`.
#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Complete entries.
    pub entries: i64,
    /// Bytes of the database files (records and small blobs).
    pub record_bytes: u64,
    /// Bytes of the blob files.
    pub blob_bytes: u64,
    /// Replays of the entries there are.
    pub hits: i64,
    /// Lookups that missed.
    pub misses: u64,
    /// hits / (hits + misses), when there were any.
    pub hit_rate: Option<f64>,
    /// The recorded durations of the replayed runs (ms).
    pub time_saved_ms: i64,
    /// The first miss or entry counted (ms since the epoch).
    pub since_ms: Option<i64>,
}

/// The fields of a record that listings and totals need.
#[derive(Default, serde::Deserialize)]
struct Brief {
    #[serde(default)]
    command: String,
    #[serde(default)]
    status: i64,
    #[serde(default)]
    duration_ms: u64,
}

/// Which entries `cache clear` removes.
#[derive(Debug, Default)]
pub struct Filter {
    /// Only those stored before this (ms since the epoch).
    pub before_ms: Option<i64>,
    /// Only those whose `scope` input has this digest.
    pub scope_digest: Option<String>,
    /// Only these keys (empty: any).
    pub keys: Vec<String>,
}

impl Store {
    /// Has writes keep the cache under `max` bytes (`--max-size`).
    pub fn set_max_size(&self, max: Option<u64>) {
        self.max_size.set(max);
    }

    /// After a write of `written` bytes: with `--max-size`, prunes the
    /// least recently used entries if the cache is over it. Measuring the
    /// cache reads every row, so it is done on a write with a chance of
    /// `written` in 1/32 of the limit: about once per 1/32 of the limit
    /// written, so the cache overshoots by about that much, and a write
    /// costs no scan on average whatever the cache holds.
    pub(super) fn prune_now_and_then(&self, written: u64) {
        let Some(max) = self.max_size.get() else {
            return;
        };
        // Each write adds a record too, even when its bytes were all shared.
        let weight = written.saturating_add(1024).saturating_mul(32);
        let roll = u64::from_str_radix(&super::recording::new_token()[..16], 16).unwrap_or(0);
        if max == 0 || roll % max < weight {
            let _ = self.prune(max, None);
        }
    }

    /// Notes that `key` was stored for its record's command.
    pub(super) fn note_command(&self, key: &str, inputs: &[KeyInput]) {
        if key.starts_with(OUTCOME_PREFIX) {
            return;
        }
        let Some(digest) = command_digest(inputs) else {
            return;
        };
        let dir = self.dir.join(COMMANDS_DIR);
        if super::create_trusted_dir(&dir).is_err() {
            return;
        }
        let path = dir.join(digest);
        let Ok((mut list, meta)) = trust::open(&path, OpenOptions::new().create(true).append(true)) else {
            return;
        };
        let _ = list.write_all(format!("{key}\n").as_bytes());
        // A command run over and over keeps only its newest keys: the list
        // is rewritten from its tail (a key lost to a race only means one
        // candidate fewer for `explain`).
        if meta.len() > COMMAND_LIST_MAX {
            if let Ok(tail) = read_tail(&path, COMMAND_TAIL) {
                let _ = fs::write(&path, tail);
            }
        }
    }

    /// The entries stored earlier for the command whose inputs these are,
    /// newest first, at most the 32 newest.
    pub fn earlier_entries(&self, inputs: &[KeyInput]) -> Result<Vec<Entry>, StoreError> {
        let Some(digest) = command_digest(inputs) else {
            return Ok(Vec::new());
        };
        let path = self.dir.join(COMMANDS_DIR).join(digest);
        let tail = match read_tail(&path, COMMAND_TAIL) {
            Ok(tail) => tail,
            Err(_) => return Ok(Vec::new()),
        };
        let text = String::from_utf8_lossy(&tail);
        let mut seen = std::collections::HashSet::new();
        let mut found = Vec::new();
        for key in text.lines().rev().filter(|k| k.len() == 64) {
            if !seen.insert(key.to_owned()) {
                continue;
            }
            if let Ok(Some(entry)) = self.lookup(key) {
                found.push(entry);
            }
        }
        Ok(found)
    }

    /// Calls `each` with every complete entry, newest first, one row at a
    /// time (memory stays bounded whatever the cache holds).
    pub fn list(&self, mut each: impl FnMut(Listed) -> std::io::Result<()>) -> Result<(), StoreError> {
        self.fold_hits()?;
        // Each key's neighbours in key order give its shortest unique prefix.
        let mut stmt = self.conn.prepare(
            "SELECT key, created_ms, last_used_ms, bytes, hits, meta, \
             lag(key) OVER (ORDER BY key), lead(key) OVER (ORDER BY key) \
             FROM entries WHERE key IS NOT NULL AND key NOT LIKE '~%' \
             ORDER BY created_ms DESC, id DESC",
        )?;
        let mut rows = stmt.query([])?;
        // A value of the wrong type (damage, a planted row) does not stop the
        // listing: a key that is not text is left out, a number shows as 0.
        let number = super::number_or_zero;
        let text = |value: rusqlite::types::ValueRef<'_>| value.as_str().ok().map(str::to_owned);
        while let Some(row) = rows.next()? {
            let Some(key) = text(row.get_ref(0)?) else {
                continue;
            };
            let prev = text(row.get_ref(6)?);
            let next = text(row.get_ref(7)?);
            // Only the two fields listed are decoded, not the whole record.
            let brief: Brief =
                serde_json::from_str(row.get_ref(5)?.as_str().unwrap_or("")).unwrap_or_default();
            let shared = [prev, next]
                .iter()
                .flatten()
                .map(|other| common_prefix(&key, other))
                .max()
                .unwrap_or(0);
            // Keys are hex; a damaged one may be short or not ASCII.
            let end = (shared + 1).max(8).min(key.len());
            let short = String::from_utf8_lossy(&key.as_bytes()[..end]).into_owned();
            let listed = Listed {
                short,
                command: brief.command,
                created_ms: number(row.get_ref(1)?),
                last_used_ms: number(row.get_ref(2)?),
                bytes: number(row.get_ref(3)?),
                hits: number(row.get_ref(4)?),
                status: brief.status,
                key,
            };
            if let Err(err) = each(listed) {
                return Err(StoreError::Io {
                    path: "standard output".into(),
                    source: err,
                });
            }
        }
        Ok(())
    }

    /// Totals for `cache stats`. Hits still in the hit log are counted
    /// from it, without folding it (a read-only look).
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let (entries, first) = self.conn.query_row(
            "SELECT count(*), min(created_ms) FROM entries WHERE key IS NOT NULL AND key NOT LIKE '~%'",
            [],
            |row| Ok((row.get::<_, i64>(0)?, row.get_ref(1)?.as_i64().ok())),
        )?;
        let mut stats = Stats {
            entries,
            since_ms: first,
            ..Stats::default()
        };
        // Only the records of entries replayed at least once are read.
        {
            let mut stmt = self.conn.prepare(
                "SELECT hits, meta FROM entries WHERE hits > 0 AND key IS NOT NULL AND key NOT LIKE '~%'",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let hits = super::number_or_zero(row.get_ref(0)?);
                let brief: Brief =
                    serde_json::from_str(row.get_ref(1)?.as_str().unwrap_or("")).unwrap_or_default();
                stats.hits += hits;
                stats.time_saved_ms += hits * brief.duration_ms as i64;
            }
        }
        // Hits logged but not yet folded in.
        if let Ok((mut log, _)) = trust::open(&self.dir.join(HIT_LOG), OpenOptions::new().read(true)) {
            let mut text = String::new();
            let _ = log.read_to_string(&mut text);
            let mut meta = self
                .conn
                .prepare_cached("SELECT meta FROM entries WHERE key = ?1")?;
            let keys = text.lines().filter_map(|l| l.split_once(' ')).map(|(k, _)| k);
            for key in keys.filter(|k| !k.starts_with(OUTCOME_PREFIX)) {
                let found = meta.query_row([key], |row| Ok(super::text_or_empty(row.get_ref(0)?)));
                if let Some(text) = found.optional()? {
                    let brief: Brief = serde_json::from_str(&text).unwrap_or_default();
                    stats.hits += 1;
                    stats.time_saved_ms += brief.duration_ms as i64;
                }
            }
        }
        if let Ok((mut log, meta)) = trust::open(&self.dir.join(MISS_LOG), OpenOptions::new().read(true)) {
            stats.misses = meta.len() / MISS_LINE;
            let mut first = [0u8; 13];
            if log.read_exact(&mut first).is_ok() {
                let ms = std::str::from_utf8(&first)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok());
                stats.since_ms = match (stats.since_ms, ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        let total = stats.hits as u64 + stats.misses;
        if total > 0 {
            stats.hit_rate = Some(stats.hits as f64 / total as f64);
        }
        for name in ["cache.db", "cache.db-wal", "cache.db-shm"] {
            stats.record_bytes += fs::symlink_metadata(self.dir.join(name)).map_or(0, |m| m.len());
        }
        if let Ok(files) = fs::read_dir(self.dir.join(BLOB_DIR)) {
            for file in files.flatten() {
                stats.blob_bytes += file.metadata().map_or(0, |m| m.len());
            }
        }
        Ok(stats)
    }

    /// The keys starting with `prefix` (lower-case hex), at most `limit`.
    pub fn keys_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Vec::new());
        }
        let prefix = prefix.to_ascii_lowercase();
        // A range on the key's index: every hex digit sorts below 'g'.
        let keys = self
            .conn
            .prepare("SELECT key FROM entries WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3")?
            .query_map(params![prefix, format!("{prefix}g"), limit as i64], |row| {
                row.get(0)
            })?
            .collect::<Result<_, _>>()?;
        Ok(keys)
    }

    /// The hits of `key` so far (the hit log folded in first) and the
    /// bytes it stored.
    pub fn usage_of(&self, key: &str) -> Result<(i64, i64), StoreError> {
        self.fold_hits()?;
        Ok(self
            .conn
            .query_row("SELECT hits, bytes FROM entries WHERE key = ?1", [key], |r| {
                Ok((
                    super::number_or_zero(r.get_ref(0)?),
                    super::number_or_zero(r.get_ref(1)?),
                ))
            })
            .optional()?
            .unwrap_or((0, 0)))
    }

    /// Removes the complete entries `filter` picks; returns how many.
    pub fn clear(&self, filter: &Filter) -> Result<usize, StoreError> {
        self.fold_hits()?;
        let everything =
            filter.before_ms.is_none() && filter.scope_digest.is_none() && filter.keys.is_empty();
        let mut ids = Vec::new();
        {
            let mut stmt = self.conn.prepare(
                "SELECT id, key, created_ms, meta FROM entries WHERE key IS NOT NULL AND key NOT LIKE '~%'",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                // A key or meta of the wrong type (damage, a planted row)
                // reads as empty: such a row goes with a clear of all, or of
                // all older, and matches no key or scope.
                let key = super::text_or_empty(row.get_ref(1)?);
                if !filter.keys.is_empty() && !filter.keys.contains(&key) {
                    continue;
                }
                if filter
                    .before_ms
                    .is_some_and(|before| row.get::<_, i64>(2).is_ok_and(|c| c >= before))
                {
                    continue;
                }
                if let Some(scope) = &filter.scope_digest {
                    let meta = super::text_or_empty(row.get_ref(3)?);
                    let in_scope = serde_json::from_str::<Record>(&meta)
                        .ok()
                        .is_some_and(|r| r.inputs.iter().any(|i| i.label == "scope" && &i.digest == scope));
                    if !in_scope {
                        continue;
                    }
                }
                ids.push(row.get::<_, i64>(0)?);
            }
        }
        self.delete_ids(&ids)?;
        if everything {
            let _ = fs::remove_dir_all(self.dir.join(COMMANDS_DIR));
            let _ = fs::remove_file(self.dir.join(MISS_LOG));
        }
        Ok(ids.len())
    }

    /// Removes entries stored before `before_ms`, then the least recently
    /// used until the stored bytes (records and blobs) are at most `max`.
    /// Returns how many went, and the stored bytes left.
    pub fn prune(&self, max: u64, before_ms: Option<i64>) -> Result<(usize, u64), StoreError> {
        self.fold_hits()?;
        let mut removed = 0;
        if let Some(before) = before_ms {
            let ids: Vec<i64> = self
                .conn
                .prepare("SELECT id FROM entries WHERE key IS NOT NULL AND created_ms < ?1")?
                .query_map([before], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            self.delete_ids(&ids)?;
            removed += ids.len();
        }
        let mut size = self.stored_bytes()?;
        if size <= max {
            return Ok((removed, size));
        }
        let lru: Vec<(i64, i64)> = self
            .conn
            .prepare("SELECT id, bytes + length(meta) FROM entries WHERE key IS NOT NULL ORDER BY last_used_ms, id")?
            .query_map([], |r| Ok((r.get(0)?, super::number_or_zero(r.get_ref(1)?))))?
            .collect::<Result<_, _>>()?;
        // One at a time, least recently used first, counting down what each
        // put; a blob it shares stays, so the exact size is counted again
        // whenever the estimate says the cache fits.
        let mut estimate = size;
        let mut batch = Vec::new();
        for (id, bytes) in lru {
            batch.push(id);
            estimate = estimate.saturating_sub(bytes.max(0) as u64);
            if estimate <= max {
                self.delete_ids(&batch)?;
                removed += batch.len();
                batch.clear();
                size = self.stored_bytes()?;
                if size <= max {
                    break;
                }
                estimate = size;
            }
        }
        if !batch.is_empty() {
            self.delete_ids(&batch)?;
            removed += batch.len();
            size = self.stored_bytes()?;
        }
        Ok((removed, size))
    }

    /// The bytes records and blobs take: records' JSON, blobs' stored bytes.
    pub fn stored_bytes(&self) -> Result<u64, StoreError> {
        let bytes: i64 = self.conn.query_row(
            "SELECT (SELECT coalesce(sum(length(meta)), 0) FROM entries) + \
             (SELECT coalesce(sum(coalesce(length(data), len)), 0) FROM blobs)",
            [],
            |r| r.get(0),
        )?;
        Ok(bytes.max(0) as u64)
    }

    fn delete_ids(&self, ids: &[i64]) -> Result<(), StoreError> {
        for batch in ids.chunks(256) {
            let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
            self.delete_rows(&tx, batch)?;
            tx.commit()?;
        }
        self.tidy_wal();
        Ok(())
    }
}

/// How many leading bytes two keys share.
fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// The last `len` bytes of a file, from a line start.
fn read_tail(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    let (mut file, meta) = trust::open(path, OpenOptions::new().read(true)).map_err(|e| match e {
        trust::OpenError::Io { source, .. } => source,
        trust::OpenError::Untrusted(why) => std::io::Error::other(why.to_string()),
    })?;
    let start = meta.len().saturating_sub(len);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if start > 0 {
        let cut = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| p + 1);
        bytes.drain(..cut);
    }
    Ok(bytes)
}
