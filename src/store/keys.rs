//! The keys a shell completes after `lcrun cache show` and `cache clear`:
//! those starting with what was typed, each as the short unique prefix
//! `lcrun cache list` shows, with its command.
//!
//! A shell runs this on every Tab, so it reads only: the database is opened
//! read-only, nothing is created (no cache directory, no database), the hit
//! log is not folded in, and only the rows of the index range the typed
//! prefix names are read, at most [`MAX_CANDIDATES`] of them and their two
//! neighbours, however many entries the cache holds.

use std::fs;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;
use crate::{db, trust};

/// At most this many keys are offered: enough to see what is there, few
/// enough that a Tab in a cache of 100,000 entries answers at once.
pub const MAX_CANDIDATES: usize = 100;

/// A key offered for completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCandidate {
    /// The shortest unique prefix of the key (8 characters at least, as
    /// `cache list` shows it), or longer where what was typed is longer.
    pub text: String,
    /// The entry's command, as `cache list` shows it.
    pub command: String,
}

/// The entries of the cache in `dir` whose keys start with `typed`, in key
/// order. A cache that does not exist yet has none; one that is not the
/// user's own is an error (the caller offers nothing).
pub fn candidates(dir: &Path, typed: &str) -> Result<Vec<KeyCandidate>, StoreError> {
    if !typed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Vec::new());
    }
    let typed = typed.to_ascii_lowercase();
    let Some(dir) = trusted_existing_dir(dir)? else {
        return Ok(Vec::new());
    };
    let Some(conn) = db::open_read_only(&dir.join("cache.db"))? else {
        return Ok(Vec::new());
    };
    let (keys, before, after) = window(&conn, &typed)?;
    let mut found = Vec::with_capacity(keys.len());
    for (i, (key, meta)) in keys.iter().enumerate() {
        let prev = if i == 0 {
            before.as_deref()
        } else {
            Some(keys[i - 1].0.as_str())
        };
        let next = keys.get(i + 1).map(|(k, _)| k.as_str()).or(after.as_deref());
        let shared = [prev, next]
            .into_iter()
            .flatten()
            .map(|other| common_prefix(key, other))
            .max()
            .unwrap_or(0);
        let len = (shared + 1).clamp(8, key.len()).max(typed.len().min(key.len()));
        let command = serde_json::from_str::<Brief>(meta)
            .map(|b| b.command)
            .unwrap_or_default();
        found.push(KeyCandidate {
            text: key[..len].to_owned(),
            command,
        });
    }
    Ok(found)
}

/// The record's field shown beside a key.
#[derive(serde::Deserialize)]
struct Brief {
    #[serde(default)]
    command: String,
}

/// The keys starting with `typed` (up to [`MAX_CANDIDATES`], with their
/// records), the key just before them and the one just after the last:
/// the neighbours that decide how short each prefix can be. Every query is
/// a range on the key's index. Keys of outcomes (`~...`) sort after every
/// hex key and are left out, as `cache list` leaves them out.
type Window = (Vec<(String, String)>, Option<String>, Option<String>);

fn window(conn: &Connection, typed: &str) -> Result<Window, StoreError> {
    let end = format!("{typed}g");
    let mut stmt = conn.prepare(
        "SELECT key, coalesce(meta, '') FROM entries WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
    )?;
    let keys = stmt
        .query_map(rusqlite::params![typed, end, MAX_CANDIDATES as i64], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let before = conn
        .query_row(
            "SELECT key FROM entries WHERE key < ?1 ORDER BY key DESC LIMIT 1",
            [typed],
            |row| row.get(0),
        )
        .optional()?;
    let last = keys.last().map_or(end, |(k, _)| k.clone());
    let after = conn
        .query_row(
            "SELECT key FROM entries WHERE key > ?1 AND key < '~' ORDER BY key LIMIT 1",
            [last],
            |row| row.get(0),
        )
        .optional()?;
    Ok((keys, before, after))
}

/// `dir` checked as the store checks it, without creating it: `None` when
/// there is no such directory.
fn trusted_existing_dir(dir: &Path) -> Result<Option<std::path::PathBuf>, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io(err)),
    };
    let (dir, meta) = if meta.file_type().is_symlink() {
        let real = fs::canonicalize(dir).map_err(io)?;
        let meta = fs::metadata(&real).map_err(io)?;
        (real, meta)
    } else {
        (dir.to_owned(), meta)
    };
    trust::check(&dir, &meta, true)?;
    Ok(Some(dir))
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}
