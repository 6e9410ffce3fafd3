//! `lcrun cache list|show|stats|clear|prune`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use super::{cache_dir, human_bytes, open_existing, sha256_hex, stored_value};
use crate::cli::CacheAction;
use crate::duration::short;
use crate::exit::Exit;
use crate::output::Stream;
use crate::store::inspect::{Filter, Stats};
use crate::store::{now_ms, Store, StoreError};

/// Runs one `lcrun cache` subcommand. A reader that stops reading
/// (`lcrun cache list | head`) ends it quietly, with status 0: what was
/// asked for was given as far as it was wanted.
pub fn run(action: CacheAction, dir: Option<PathBuf>, json: bool) -> anyhow::Result<Exit> {
    match run_action(action, dir, json) {
        Err(err) if reader_went_away(&err) => Ok(Exit::Command(0)),
        result => result,
    }
}

fn reader_went_away(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let io =
            cause
                .downcast_ref::<std::io::Error>()
                .or_else(|| match cause.downcast_ref::<StoreError>() {
                    Some(StoreError::Io { source, .. }) => Some(source),
                    _ => None,
                });
        io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run_action(action: CacheAction, dir: Option<PathBuf>, json: bool) -> anyhow::Result<Exit> {
    let dir = cache_dir(dir)?;
    let store = open_existing(&dir)?;
    let mut out = std::io::stdout().lock();
    match action {
        CacheAction::List => list(store.as_ref(), json, &mut out)?,
        CacheAction::Show { key, stdout, stderr } => {
            let Some(store) = &store else {
                bail!(
                    "no entry with key {key} (the cache in {} is empty)",
                    dir.display()
                );
            };
            let key = resolve(store, &key)?;
            let stream = match (stdout, stderr) {
                (true, _) => Some(Stream::Stdout),
                (_, true) => Some(Stream::Stderr),
                _ => None,
            };
            show(store, &key, stream, json, &mut out)?;
        }
        CacheAction::Stats => {
            let stats = match &store {
                Some(store) => store.stats()?,
                None => Stats::default(),
            };
            print_stats(&stats, json, &mut out)?;
        }
        CacheAction::Clear {
            older_than,
            scope,
            keys,
        } => {
            let removed = match &store {
                Some(store) => {
                    let keys = keys
                        .iter()
                        .map(|k| resolve(store, k))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    store.clear(&Filter {
                        before_ms: older_than.map(before),
                        scope_digest: scope.map(|s| sha256_hex(std::os::unix::ffi::OsStrExt::as_bytes(&*s))),
                        keys,
                    })?
                }
                None if keys.is_empty() => 0,
                None => bail!("no entry with key {} (the cache is empty)", keys[0]),
            };
            if json {
                writeln!(out, "{}", serde_json::json!({ "removed": removed }))?;
            } else {
                writeln!(out, "removed {removed} {}", plural(removed))?;
            }
        }
        CacheAction::Prune { max_size, older_than } => {
            let (removed, left) = match &store {
                Some(store) => store.prune(max_size, older_than.map(before))?,
                None => (0, 0),
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "removed": removed, "stored_bytes": left })
                )?;
            } else {
                writeln!(
                    out,
                    "removed {removed} {}; {} stored",
                    plural(removed),
                    human_bytes(left)
                )?;
            }
        }
    }
    Ok(Exit::Command(0))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "entry"
    } else {
        "entries"
    }
}

/// The time `age` ago, in ms since the epoch.
fn before(age: Duration) -> i64 {
    now_ms().saturating_sub(age.as_millis() as i64)
}

/// The one key `prefix` names, as git names commits.
fn resolve(store: &Store, prefix: &str) -> anyhow::Result<String> {
    let mut keys = store.keys_with_prefix(prefix, 6)?;
    match keys.len() {
        0 => bail!("no entry with key {prefix}"),
        1 => Ok(keys.remove(0)),
        _ => {
            let shown: Vec<&str> = keys.iter().take(5).map(|k| &k[..16]).collect();
            let more = if keys.len() > 5 { ", ..." } else { "" };
            bail!("key {prefix} is ambiguous: {}{more}", shown.join(", "))
        }
    }
}

fn list(store: Option<&Store>, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let now = now_ms();
    let age = |ms: i64| short(Duration::from_millis(now.saturating_sub(ms).max(0) as u64));
    if json {
        // An array written as it is read: memory stays bounded.
        write!(out, "[")?;
    } else {
        writeln!(
            out,
            "{:<10} {:>7} {:>10} {:>6} {:>5}  COMMAND",
            "KEY", "AGE", "SIZE", "STATUS", "HITS"
        )?;
    }
    let mut first = true;
    if let Some(store) = store {
        store.list(|entry| {
            if json {
                let sep = if std::mem::take(&mut first) { "" } else { "," };
                writeln!(out, "{sep}")?;
                serde_json::to_writer(&mut *out, &entry)?;
                Ok(())
            } else {
                writeln!(
                    out,
                    "{:<10} {:>7} {:>10} {:>6} {:>5}  {}",
                    entry.short,
                    age(entry.created_ms),
                    human_bytes(entry.bytes.max(0) as u64),
                    entry.status,
                    entry.hits,
                    entry.command
                )
            }
        })?;
    }
    if json {
        writeln!(out, "{}]", if first { "" } else { "\n" })?;
    }
    Ok(())
}

fn show(
    store: &Store,
    key: &str,
    stream: Option<Stream>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let Some(entry) = store.lookup(key)? else {
        bail!("no entry with key {key}");
    };
    if let Some(wanted) = stream {
        store.replay(&entry, |stream, bytes| {
            if stream == wanted {
                out.write_all(bytes)?;
            }
            Ok(())
        })?;
        out.flush()?;
        return Ok(());
    }
    let (hits, stored) = store.usage_of(key)?;
    let record = &entry.record;
    let outputs: Vec<String> = record
        .outputs
        .iter()
        .flat_map(|tree| &tree.outputs)
        .map(|o| String::from_utf8_lossy(o.path.as_bytes()).into_owned())
        .collect();
    if json {
        let inputs: Vec<_> = record
            .inputs
            .iter()
            .map(|i| serde_json::json!({ "label": i.label, "digest": i.digest, "secret": i.secret }))
            .collect();
        let value = serde_json::json!({
            "key": entry.key,
            "command": record.command,
            "cwd": record.cwd,
            "created_ms": entry.created_ms,
            "duration_ms": record.duration_ms,
            "status": record.status,
            "stdout_bytes": record.stdout.size,
            "stderr_bytes": record.stderr.size,
            "stored_bytes": stored,
            "hits": hits,
            "inputs": inputs,
            "outputs": outputs,
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    writeln!(out, "key:      {}", entry.key)?;
    writeln!(out, "command:  {}", record.command)?;
    writeln!(out, "cwd:      {}", record.cwd)?;
    writeln!(out, "stored:   {} ago", short(entry.age()))?;
    writeln!(out, "ran for:  {}", short(entry.duration()))?;
    writeln!(out, "status:   {}", record.status)?;
    writeln!(
        out,
        "output:   stdout {}, stderr {} ({} stored)",
        human_bytes(record.stdout.size),
        human_bytes(record.stderr.size),
        human_bytes(stored.max(0) as u64)
    )?;
    writeln!(out, "hits:     {hits}")?;
    if !outputs.is_empty() {
        writeln!(out, "outputs:  {}", outputs.join(" "))?;
    }
    writeln!(out, "key inputs:")?;
    let width = record.inputs.iter().map(|i| i.label.len()).max().unwrap_or(0);
    for input in &record.inputs {
        writeln!(out, "  {:width$}  {}", input.label, stored_value(input))?;
    }
    Ok(())
}

fn print_stats(stats: &Stats, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, stats)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "entries:     {}", stats.entries)?;
    writeln!(
        out,
        "on disk:     {} ({} records, {} blobs)",
        human_bytes(stats.record_bytes + stats.blob_bytes),
        human_bytes(stats.record_bytes),
        human_bytes(stats.blob_bytes)
    )?;
    writeln!(out, "hits:        {}", stats.hits)?;
    writeln!(out, "misses:      {}", stats.misses)?;
    match stats.hit_rate {
        Some(rate) => writeln!(out, "hit rate:    {:.1}%", rate * 100.0)?,
        None => writeln!(out, "hit rate:    -")?,
    }
    writeln!(
        out,
        "time saved:  {}",
        short(Duration::from_millis(stats.time_saved_ms.max(0) as u64))
    )?;
    if let Some(since) = stats.since_ms {
        let ago = Duration::from_millis(now_ms().saturating_sub(since).max(0) as u64);
        writeln!(out, "since:       {} ago", short(ago))?;
    }
    Ok(())
}
