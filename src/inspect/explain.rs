//! `lcrun explain`: what the key of a run would be made of, whether it would
//! hit, and for a miss, which inputs differ from the closest earlier entry
//! of the same command (found through the store's per-command key list, not
//! by reading every record).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use anyhow::bail;

use super::{cache_dir, open_existing, stored_value};
use crate::cli::RunArgs;
use crate::duration::short;
use crate::exit::Exit;
use crate::invocation::Invocation;
use crate::key::{interpreter_script, Detail, KeyInput, Resolved, Secret};
use crate::store::Entry;

/// Whether the run would replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Hit,
    Miss,
    Expired,
}

/// One key input as shown.
#[derive(serde::Serialize)]
struct Shown {
    label: String,
    /// What it stands for now (never an `env:` value).
    value: String,
    /// The digest as stored: sealed for a secret input.
    digest: String,
}

#[derive(serde::Serialize)]
struct Explained {
    key: String,
    verdict: Verdict,
    inputs: Vec<Shown>,
    /// The entry compared with, for a miss.
    closest: Option<String>,
    /// Why it would not hit, in words.
    reasons: Vec<String>,
}

/// Explains a run of `args`.
pub fn run(args: &RunArgs, json: bool) -> anyhow::Result<Exit> {
    let invocation = Invocation::new(args)?;
    let program = match &invocation.program {
        Resolved::Found(path) => path.clone(),
        Resolved::NotExecutable(path) => bail!("{}: permission denied", path.display()),
        Resolved::NotFound => bail!("{}: command not found", invocation.argv[0].to_string_lossy()),
    };
    let (key, _stdin) = invocation.key(args, &program, None)?;
    let dir = cache_dir(args.cache_dir.clone())?;
    let store = open_existing(&dir)?;
    let sealed = key.sealed(|| Secret::load_or_create(store.as_ref()?.dir()).ok());
    let context = Context {
        invocation: &invocation,
        program: &program,
        args,
    };
    let mut explained = Explained {
        key: key.hex.clone(),
        verdict: Verdict::Miss,
        inputs: sealed.inputs.iter().map(|i| context.show(i)).collect(),
        closest: None,
        reasons: Vec::new(),
    };
    let mode = args.effective_cache_mode();
    let found = match &store {
        Some(store) => store.lookup(&key.hex)?,
        None => None,
    };
    if !mode.reads() {
        explained.reasons.push(format!(
            "the cache mode ({}) never replays",
            format!("{mode:?}").to_lowercase()
        ));
    } else if args.refresh {
        explained
            .reasons
            .push("--refresh always runs the command".to_owned());
    } else if let Some(entry) = &found {
        match args.expire.filter(|max| entry.age() > *max) {
            Some(max) => {
                explained.verdict = Verdict::Expired;
                explained.reasons.push(format!(
                    "expired {} ago (--expire {})",
                    short(entry.age() - max),
                    short(max)
                ));
            }
            None => explained.verdict = Verdict::Hit,
        }
    }
    if found.is_none() && mode.reads() && !args.refresh {
        let earlier = match &store {
            Some(store) => store.earlier_entries(&sealed.inputs)?,
            None => Vec::new(),
        };
        // The closest: the fewest differing inputs; the newest among those.
        let closest = earlier
            .iter()
            .map(|entry| (context.differences(&sealed.inputs, entry), entry))
            .min_by_key(|(reasons, _)| reasons.len());
        match closest {
            Some((reasons, entry)) => {
                explained.closest = Some(entry.key.clone());
                explained.reasons = if reasons.is_empty() {
                    vec!["no input differs from the closest entry, which was removed".to_owned()]
                } else {
                    reasons
                };
            }
            None => explained
                .reasons
                .push("no earlier entry of this command".to_owned()),
        }
    }
    print(&explained, json, found.as_ref())?;
    Ok(Exit::Command(if explained.verdict == Verdict::Hit {
        0
    } else {
        1
    }))
}

fn print(explained: &Explained, json: bool, found: Option<&Entry>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, explained)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "key inputs:")?;
    let width = explained.inputs.iter().map(|i| i.label.len()).max().unwrap_or(0);
    for input in &explained.inputs {
        writeln!(out, "  {:width$}  {}", input.label, input.value)?;
    }
    writeln!(out, "key: {}", explained.key)?;
    let verdict = match explained.verdict {
        Verdict::Hit => "hit",
        Verdict::Miss => "miss",
        Verdict::Expired => "expired",
    };
    match (explained.verdict, found) {
        (Verdict::Hit, Some(entry)) => writeln!(
            out,
            "{verdict}: stored {} ago, would save {}",
            short(entry.age()),
            short(entry.duration())
        )?,
        _ => writeln!(out, "{verdict}")?,
    }
    if let Some(closest) = &explained.closest {
        writeln!(out, "closest earlier entry: {}", &closest[..12])?;
    }
    for reason in &explained.reasons {
        writeln!(out, "  {reason}")?;
    }
    Ok(())
}

/// What naming an input needs.
struct Context<'a> {
    invocation: &'a Invocation,
    program: &'a std::path::Path,
    args: &'a RunArgs,
}

impl Context<'_> {
    /// An input as `explain` and `cache show` list it.
    fn show(&self, input: &KeyInput) -> Shown {
        let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let value = match input.label.as_str() {
            "argv" | "shell" => self.invocation.label(),
            "program" => self.program.display().to_string(),
            "script" => self.script(),
            "cwd" => self.invocation.cwd.display().to_string(),
            "scope" => self
                .args
                .scope
                .as_deref()
                .map(|s| lossy(s.as_bytes()))
                .unwrap_or_default(),
            "outputs" => self
                .invocation
                .outputs
                .iter()
                .map(|p| lossy(p.as_bytes()))
                .collect::<Vec<_>>()
                .join(" "),
            label => match label.strip_prefix("cache-by env:") {
                Some(name) => {
                    let set = std::env::var_os(name).is_some();
                    format!("{}, {}", if set { "set" } else { "unset" }, stored_value(input))
                }
                None => stored_value(input),
            },
        };
        Shown {
            label: input.label.clone(),
            value,
            digest: input.digest.clone(),
        }
    }

    fn script(&self) -> String {
        interpreter_script(&self.invocation.argv)
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
            .unwrap_or_default()
    }

    /// Each input of `now` that differs from `entry`'s, in words.
    fn differences(&self, now: &[KeyInput], entry: &Entry) -> Vec<String> {
        let before = &entry.record.inputs;
        let mut reasons = Vec::new();
        for input in now {
            match before.iter().find(|b| b.label == input.label) {
                None => reasons.push(format!("{} added", name(&input.label))),
                Some(old) if old.digest != input.digest => reasons.push(self.changed(input, old, entry)),
                Some(_) => {}
            }
        }
        for old in before {
            if !now.iter().any(|i| i.label == old.label) {
                reasons.push(format!("{} removed", name(&old.label)));
            }
        }
        reasons
    }

    fn changed(&self, input: &KeyInput, old: &KeyInput, entry: &Entry) -> String {
        match input.label.as_str() {
            "argv" | "shell" => "command differs (--ignore-arg)".to_owned(),
            "program" => match (&old.detail, &input.detail) {
                (
                    Some(Detail::Program {
                        size: s0,
                        mtime: m0,
                        nsec: n0,
                    }),
                    Some(Detail::Program { size, mtime, nsec }),
                ) => {
                    let mut what = Vec::new();
                    if s0 != size {
                        what.push("size");
                    }
                    if (m0, n0) != (mtime, nsec) {
                        what.push("mtime");
                    }
                    format!("program {} changed ({})", self.program.display(), what.join(", "))
                }
                _ => format!("program {} changed", self.program.display()),
            },
            "script" => format!("script {} changed", self.script()),
            "cwd" => format!("cwd differs (was {})", entry.record.cwd),
            "scope" => "scope differs".to_owned(),
            "outputs" => "declared outputs differ".to_owned(),
            label => {
                let expr = name(label);
                if let (Some(before), Some(now)) = (&old.detail, &input.detail) {
                    if let Some(words) = detail_change(before, now) {
                        return format!("{expr}: {words}");
                    }
                }
                if input.secret && (input.digest.is_empty() || old.digest.is_empty()) {
                    format!("{expr} may have changed (no cache secret to compare with)")
                } else {
                    format!("{expr} changed")
                }
            }
        }
    }
}

/// How a `git` or `hash:` input changed, from its details.
fn detail_change(before: &Detail, now: &Detail) -> Option<String> {
    match (before, now) {
        (Detail::Git { head: h0, dirty: d0 }, Detail::Git { head, dirty }) => {
            let mut words = Vec::new();
            if h0 != head {
                let short = |h: &Option<String>| {
                    h.as_deref()
                        .map_or("(no commit)".to_owned(), |h| h[..h.len().min(6)].to_owned())
                };
                words.push(format!("HEAD moved {} → {}", short(h0), short(head)));
            }
            if *dirty {
                words.push("uncommitted changes".to_owned());
            } else if *d0 {
                words.push("uncommitted changes gone".to_owned());
            }
            (!words.is_empty()).then(|| words.join(", "))
        }
        (Detail::Files(f0), Detail::Files(files)) => {
            let old: std::collections::HashMap<&str, &str> =
                f0.iter().map(|(p, d)| (p.as_str(), d.as_str())).collect();
            let new: std::collections::HashMap<&str, &str> =
                files.iter().map(|(p, d)| (p.as_str(), d.as_str())).collect();
            let changed: Vec<&str> = files
                .iter()
                .filter(|(p, d)| old.get(p.as_str()).is_some_and(|o| o != d))
                .map(|(p, _)| p.as_str())
                .collect();
            let added: Vec<&str> = files
                .iter()
                .map(|(p, _)| p.as_str())
                .filter(|p| !old.contains_key(p))
                .collect();
            let removed: Vec<&str> = f0
                .iter()
                .map(|(p, _)| p.as_str())
                .filter(|p| !new.contains_key(p))
                .collect();
            let mut words = Vec::new();
            if !changed.is_empty() {
                words.push(format!("{} changed", some_of(&changed)));
            }
            for (list, what) in [(&added, "added"), (&removed, "removed")] {
                if !list.is_empty() {
                    let files = if list.len() == 1 { "file" } else { "files" };
                    words.push(format!("{} {files} {what} ({})", list.len(), some_of(list)));
                }
            }
            (!words.is_empty()).then(|| words.join(", "))
        }
        _ => None,
    }
}

/// Up to five names, and how many more.
fn some_of(names: &[&str]) -> String {
    let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    match names.len() {
        n if n > 5 => format!("{shown} and {} more", n - 5),
        _ => shown,
    }
}

/// An input's name in messages: the expression for a cache-by.
fn name(label: &str) -> &str {
    label.strip_prefix("cache-by ").unwrap_or(label)
}
