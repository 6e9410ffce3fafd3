//! Shell completion, computed by lcrun itself for every shell (bash, zsh,
//! fish, elvish, PowerShell) through clap's dynamic completion: the script
//! a shell loads (`LCRUN_COMPLETE=bash lcrun`) only registers lcrun as its
//! own completer, and each Tab runs `lcrun` with the words of the line.
//!
//! What clap cannot know is completed here: `-c/--cache-by` offers the kinds
//! of expression and then, after `hash:`, `mtime:` and `git:`, paths; `cache
//! show` and `cache clear` offer the keys in the cache (see
//! [`crate::store::keys`]). Completing never prints an error into the shell
//! and never creates or writes anything.

mod shells;
mod words;

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::OnceLock;

use clap::Arg;
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate, PathCompleter, ValueCompleter};
use clap_complete::env::{Bash, CompleteEnv, Elvish, Fish, Powershell, Shells, Zsh};

use shells::Lcrun;

use crate::cli::{full_command, RunArgs, CACHE_BY_KINDS};
use crate::exit::Exit;

/// The variable that asks lcrun for completion instead of a run: set to a
/// shell's name, lcrun prints that shell's registration script; the script
/// sets it again on each Tab. lcrun's own prefix, so that an unrelated
/// `COMPLETE` in a user's environment cannot turn a run into a script.
pub const VAR: &str = "LCRUN_COMPLETE";

/// The name the registration scripts run lcrun by: found on `PATH`, so
/// that the committed scripts do not depend on where they were made.
pub const BIN: &str = "lcrun";

/// Whether lcrun was started to complete: [`VAR`] is set and not empty or
/// `0` (clap's way to switch it off). One `getenv`, without allocating: this
/// is on every run's path, a cache hit's included.
pub fn requested() -> bool {
    // SAFETY: getenv of a constant name; the pointer is only read at once,
    // before anything in lcrun could change the environment.
    let value = unsafe { libc::getenv(c"LCRUN_COMPLETE".as_ptr()) };
    if value.is_null() {
        return false;
    }
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    let value = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
    !value.is_empty() && value != b"0"
}

/// Prints the registration script (`LCRUN_COMPLETE=SHELL lcrun`, no
/// arguments) or, for a Tab (the scripts also set [`shells::TAB`]), the
/// candidates for the words after `--`. `None` for anything else: the
/// variable was left in the environment, and this is a run. A failure
/// prints nothing but a status: a shell shows whatever a completer writes,
/// in the middle of the line.
pub fn run() -> Option<Exit> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.len() > 1 && std::env::var_os(shells::TAB).is_none_or(|mark| mark != "1") {
        return None;
    }
    Some(complete(args))
}

static BASH: Lcrun<Bash> = Lcrun(Bash);
static ELVISH: Lcrun<Elvish> = Lcrun(Elvish);
static FISH: Lcrun<Fish> = Lcrun(Fish);
static POWERSHELL: Lcrun<Powershell> = Lcrun(Powershell);
static ZSH: Lcrun<Zsh> = Lcrun(Zsh);

fn complete(args: Vec<OsString>) -> Exit {
    let shells = Shells(&[&BASH, &ELVISH, &FISH, &POWERSHELL, &ZSH]);
    // Only a person sets a wrong name (the scripts set a right one): say so.
    let name = std::env::var_os(VAR).unwrap_or_default();
    if name.to_str().and_then(|n| shells.completer(n)).is_none() {
        let names: Vec<&str> = shells.names().collect();
        crate::messages::error(format!(
            "{VAR}={}: not a shell lcrun completes for (expected {})",
            name.to_string_lossy(),
            names.join(", ")
        ));
        return Exit::Usage;
    }
    let args = unquoted(name.to_str(), args);
    let line = LINE.get_or_init(|| Line::read(&args));
    let factory = || {
        if line.in_command || line.is_run {
            command_only()
        } else {
            command()
        }
    };
    let current_dir = std::env::current_dir().ok();
    let env = CompleteEnv::with_factory(factory)
        .var(VAR)
        .completer(BIN)
        .shells(shells);
    let registering = line.words.is_empty();
    match env.try_complete(args, current_dir.as_deref()) {
        Ok(_) => Exit::Command(0),
        // Printing the script is asked for by a person: say why it failed.
        Err(err) if registering => {
            crate::messages::error(format!("{VAR}: {err}"));
            Exit::Usage
        }
        Err(_) => Exit::Usage,
    }
}

/// lcrun's whole command line with the completers clap cannot derive. Only
/// for completion: a run parses with [`crate::cli::Cli`] alone.
pub fn command() -> clap::Command {
    let keys = |arg: Arg| arg.add(ArgValueCompleter::new(keys));
    with_run_completers(full_command())
        .mut_subcommand("explain", with_run_completers)
        .mut_subcommand("cache", |cache| {
            cache
                .mut_subcommand("show", |show| show.mut_arg("key", keys))
                .mut_subcommand("clear", |clear| clear.mut_arg("keys", keys))
        })
}

/// lcrun's options without its subcommands: after `lcrun ... --`, where
/// `cache` or `progress` is a command's name, not lcrun's subcommand.
fn command_only() -> clap::Command {
    with_run_completers(<RunArgs as clap::Args>::augment_args(clap::Command::new("lcrun")))
}

/// `command` with the completers of a run's `-c` and of its command.
fn with_run_completers(command: clap::Command) -> clap::Command {
    command
        .mut_arg("cache_by", |arg| arg.add(ArgValueCompleter::new(cache_by)))
        .mut_arg("command", |arg| arg.add(ArgValueCompleter::new(command_words)))
}

/// `-c/--cache-by`: the kinds of expression that start with what was typed;
/// after `hash:`, `mtime:` or `git:`, the paths that do.
fn cache_by(current: &OsStr) -> Vec<CompletionCandidate> {
    let bytes = current.as_encoded_bytes();
    for kind in ["hash:", "mtime:", "git:"] {
        if let Some(path) = bytes.strip_prefix(kind.as_bytes()) {
            // SAFETY: split after an ASCII prefix of an encoded OsStr.
            let path = unsafe { OsStr::from_encoded_bytes_unchecked(path) };
            return PathCompleter::any()
                .complete(path)
                .into_iter()
                .map(|candidate| candidate.add_prefix(kind))
                .collect();
        }
    }
    CACHE_BY_KINDS
        .iter()
        .filter(|kind| kind.as_bytes().starts_with(bytes))
        .map(CompletionCandidate::new)
        .collect()
}

/// The command after `--`: its name first (a program on `PATH`, or a
/// path when it has a `/`), then its arguments (paths).
fn command_words(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = current.as_encoded_bytes();
    let Some(line) = LINE.get().filter(|line| line.escaped) else {
        // Before `--` the command cannot start.
        return Vec::new();
    };
    if !line.command_name || typed.contains(&b'/') {
        return PathCompleter::any().complete(current);
    }
    let dirs = std::env::var_os("PATH").map_or_else(Vec::new, |path| std::env::split_paths(&path).collect());
    let mut names: Vec<OsString> = dirs
        .into_iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().as_encoded_bytes().starts_with(typed))
        .filter(|entry| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|entry| entry.file_name())
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// `cache show KEY`, `cache clear KEY...`: the keys in the cache starting
/// with what was typed, each with its command. Nothing when there is no
/// cache or it cannot be read.
fn keys(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(typed) = current.to_str() else {
        return Vec::new();
    };
    let dir = LINE.get().and_then(|line| line.cache_dir.clone()).or_else(|| {
        std::env::var_os("LCRUN_CACHE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    });
    let Ok(dir) = crate::inspect::cache_dir(dir) else {
        return Vec::new();
    };
    crate::store::keys::candidates(&dir, typed)
        .unwrap_or_default()
        .into_iter()
        .map(|c| CompletionCandidate::new(c.text).help(Some(c.command.into())))
        .collect()
}

/// What the completers need to know of the line beyond the word itself.
static LINE: OnceLock<Line> = OnceLock::new();

/// The line being completed, up to the cursor.
#[derive(Debug, Default)]
struct Line {
    /// The words up to the cursor, `lcrun` first; none when the script is
    /// asked for.
    words: Vec<OsString>,
    /// The word is after lcrun's `--`.
    escaped: bool,
    /// The word is part of the command to run: after `--`, in a run (not
    /// after `lcrun cache` or `lcrun explain`'s own words).
    in_command: bool,
    /// The word is the command's name: right after `--`.
    command_name: bool,
    /// lcrun's first word is not a subcommand: this line is a run.
    is_run: bool,
    /// `--cache-dir DIR` or `--cache-dir=DIR`, if given.
    cache_dir: Option<PathBuf>,
}

impl Line {
    /// Reads lcrun's arguments as the registration scripts give them:
    /// `lcrun -- lcrun WORD... CURRENT [WORDS AFTER THE CURSOR]`, with the
    /// index of the current word in `_CLAP_COMPLETE_INDEX` where the shell
    /// passes words after the cursor (zsh; bash passes the line, see
    /// [`shells::bash_words`]).
    fn read(args: &[OsString]) -> Line {
        let mut words: Vec<OsString> = match shells::bash_words() {
            Some(words) => words.iter().map(shells::value).collect(),
            None => args.iter().skip_while(|a| *a != "--").skip(1).cloned().collect(),
        };
        let index = std::env::var("_CLAP_COMPLETE_INDEX")
            .ok()
            .and_then(|i| i.parse::<usize>().ok());
        if let Some(index) =
            index.filter(|_| std::env::var_os(shells::BASH_LINE).is_none_or(|l| l.is_empty()))
        {
            words.truncate(index + 1);
        }
        let Some((_current, before)) = words.split_last() else {
            return Line::default();
        };
        let escape = before.iter().position(|w| w == "--");
        let subcommand = before
            .get(1)
            .and_then(|w| w.to_str())
            .is_some_and(|w| full_command().find_subcommand(w).is_some());
        let mut cache_dir = None;
        let mut rest = before.iter().skip(1).peekable();
        while let Some(word) = rest.next() {
            let bytes = word.as_encoded_bytes();
            if bytes == b"--cache-dir" {
                // The shell expands a `~` that starts a word.
                cache_dir = rest.peek().map(|dir| home_expanded(dir));
            } else if let Some(dir) = bytes.strip_prefix(b"--cache-dir=") {
                // SAFETY: split after an ASCII prefix of an encoded OsStr.
                cache_dir = Some(PathBuf::from(unsafe { OsStr::from_encoded_bytes_unchecked(dir) }));
            }
        }
        // A run's options come before its command: no subcommand after them.
        let is_run = before.len() > 1 && !subcommand;
        Line {
            escaped: escape.is_some(),
            words: words.clone(),
            in_command: escape.is_some() && !subcommand,
            is_run,
            command_name: escape.is_some_and(|e| e + 1 == before.len()),
            cache_dir,
        }
    }
}

/// `dir` with a leading `~` or `~/` made the home directory, as the shell
/// does for a word it passes.
fn home_expanded(dir: &OsStr) -> PathBuf {
    let bytes = dir.as_encoded_bytes();
    let rest = match bytes {
        [b'~'] => Some(&b""[..]),
        [b'~', b'/', rest @ ..] => Some(rest),
        _ => None,
    };
    match (rest, std::env::var_os("HOME")) {
        // SAFETY: split after an ASCII prefix of an encoded OsStr.
        (Some(rest), Some(home)) => {
            PathBuf::from(home).join(unsafe { OsStr::from_encoded_bytes_unchecked(rest) })
        }
        _ => PathBuf::from(dir),
    }
}

/// The words after `--` as lcrun would receive them: zsh passes each word
/// as typed, fish the word under the cursor, quotes and backslashes kept
/// (`hash:my\ dir/`, `'a b'`). bash's line is read apart (see
/// [`shells::bash_words`]); elvish and PowerShell pass values.
fn unquoted(shell: Option<&str>, mut args: Vec<OsString>) -> Vec<OsString> {
    let Some(escape) = args.iter().position(|a| a == "--") else {
        return args;
    };
    let from = match shell {
        Some("zsh") => escape + 1,
        Some("fish") => args.len().saturating_sub(1).max(escape + 1),
        _ => return args,
    };
    for arg in args.iter_mut().skip(from) {
        let value = words::unquote(arg.as_encoded_bytes());
        // SAFETY: the bytes of an encoded OsStr less ASCII quotes and
        // backslashes.
        *arg = unsafe { OsString::from_encoded_bytes_unchecked(value) };
    }
    args
}
