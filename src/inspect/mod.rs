//! Looking into the cache without running anything: `lcrun explain`
//! ([`explain`]) and `lcrun cache` ([`cache`]).
//!
//! A cache directory that does not exist yet is an empty cache: every
//! answer is the empty one, and nothing is created. One that is not the
//! user's own (another owner, writable by others) is refused with status
//! 125, listings included: its records could have been planted to mislead,
//! and `clear` or `prune` would delete in someone else's directory.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::exit::Exit;
use crate::key::{hex, KeyInput};
use crate::store::{Store, StoreError};

pub mod cache;
pub mod explain;

/// Parses the arguments after lcrun's subcommand (always its first
/// argument) with the subcommand's own parser `P`. `Err` is the exit status
/// when there is nothing to run: help was printed (0), or the usage error
/// (125).
pub fn parse_own_args<P: clap::Parser>() -> Result<P, Exit> {
    let all: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = all.iter().skip(1).cloned();
    match crate::cli::parse_with::<P, _, _>(P::command(), args) {
        Ok(parsed) => Ok(parsed),
        Err(err) => match err.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                let _ = err.print();
                Err(Exit::Command(0))
            }
            _ => {
                crate::messages::error(crate::usage::one_line(&err, &[]));
                Err(Exit::Usage)
            }
        },
    }
}

/// The cache directory asked for, or the platform's.
pub fn cache_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir.or_else(|| dirs::cache_dir().map(|d| d.join("lcrun"))) {
        Some(dir) => Ok(dir),
        None => bail!("no cache directory (set LCRUN_CACHE_DIR or --cache-dir)"),
    }
}

/// The store in `dir`, or `None` when there is no cache there yet.
pub fn open_existing(dir: &Path) -> anyhow::Result<Option<Store>> {
    if std::fs::symlink_metadata(dir.join("cache.db")).is_err() {
        return Ok(None);
    }
    match Store::open(dir) {
        Ok(store) => Ok(Some(store)),
        Err(StoreError::Untrusted(why)) => {
            bail!("not reading the cache in {}: {why}", dir.display())
        }
        Err(err) => bail!("cannot open the cache in {}: {err}", dir.display()),
    }
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024,
/// an optional `B` or `iB` after it).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("'{text}' is not a size (expected e.g. 500M, 2G, 1048576)");
    let upper = text.trim().to_ascii_uppercase();
    let unit_start = upper.find(|c: char| !c.is_ascii_digit()).unwrap_or(upper.len());
    let (number, unit) = upper.split_at(unit_start);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).ok_or_else(bad)
}

/// How a stored key input reads in a listing: its digest, or for a secret
/// input only that it is sealed (its plain value or digest is never shown).
pub fn stored_value(input: &KeyInput) -> String {
    let short = &input.digest[..input.digest.len().min(16)];
    if input.secret {
        if short.is_empty() {
            "sealed (no secret)".to_owned()
        } else {
            format!("sealed {short}")
        }
    } else {
        short.to_owned()
    }
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// Bytes, compactly: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("2k").unwrap(), 2048);
        assert_eq!(parse_size("3MB").unwrap(), 3 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        for bad in ["", "x", "1Q", "-1", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
