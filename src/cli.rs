//! The whole command-line surface of lcrun: flags, their environment
//! fallbacks and subcommands. Doc comments here are the `--help` text, the man
//! page and the shell completions.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{FalseyValueParser, PossibleValue, TypedValueParser};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum, ValueHint};

use crate::duration;

/// Help headings: the run options grouped by purpose.
const CACHING: &str = "Caching";
const STORAGE: &str = "Storage";
const PROGRESS: &str = "Progress and reports";
const CANCELLATION: &str = "Cancellation";

/// The example block at the end of `lcrun --help` and in the man page.
const EXAMPLES: &str = "Examples:
  lcrun -c hash:src -- make test             # again only when src/ changes
  lcrun -e 1h -c git -- ./slow-report.sh     # at most hourly, per commit
  lcrun -e 1h -- bash -o pipefail -c 'curl -fsS https://example.org | wc -l'
  lcrun -q -c hash:data.csv -- ./report.sh > report.txt   # in a Makefile
  lcrun --interval 1m --report runs.jsonl -- cargo test   # in CI";

/// The kinds of cache-by expression, as completions offer them.
pub const CACHE_BY_KINDS: [&str; 8] = [
    "hash:", "mtime:", "git", "git:", "env:", "cmd:", "value:", "stdin",
];

/// Sections of the manual beyond the options, as (title, text): the same
/// text as the README's sections of those names (a test keeps them in
/// step). Paragraphs are separated by blank lines; a paragraph indented by
/// four spaces is an example; `code` is set in bold in the man page.
pub const MANUAL: &[(&str, &str)] = &[
    (
        "Pipes, terminals, signals and daemons",
        "Under lcrun a command behaves as it would bare. It runs in its caller's
process group and job: Ctrl-C, Ctrl-Z, `fg` and `bg` act on it directly,
and it can read the terminal from a pipeline (`lcrun ... | tee log`), a
redirection, or with lcrun as the session leader (`ssh -t`, `docker run
-it`, `script`). A signal sent to lcrun alone is passed on: INT, TERM and
HUP cancel the command's whole tree, daemons it started included (SIGKILL
after `--kill-after`, or at once on a second signal); QUIT, USR1 and USR2
go to the command. Signals lcrun was started with ignored (`nohup`, `&` in
a script) stay ignored, for lcrun and for the command.

When lcrun's output reader goes away (`lcrun -- cmd | head -1`), the
command's next write fails as it would bare (SIGPIPE), quietly, and nothing
is cached. A write error on lcrun's stdout or stderr (a full disk,
`/dev/full`) gives one `lcrun:` line, a failed status (the command's, else
1), and nothing is cached; the same on a replay. If lcrun is killed, its
command dies with it, and the next identical run first ends whatever is
left of it (the processes carrying `LCRUN_JOB=<id>` in their environment).

lcrun ends when the command ends: it reads what is left in the pipes for at
most 150 ms and stops. A daemon the command starts keeps running, but what
it writes afterwards is not captured, and its writes to the closed pipes
fail. Start one with its output redirected:

    lcrun --shell 'setsid my-server >/dev/null 2>&1 & echo started'",
    ),
    (
        "A busy cache",
        "A busy cache never delays the command or holds up its output: the result is
written by a thread of its own, and when another process (a `sqlite3` shell
left in a transaction, a stuck lcrun) holds the database locked for 500 ms
while the output waiting for it fills its 1 MiB queue, or still holds it 3 s
after the command ended, the result is dropped with one warning. Writers of
one cache take turns: a long store (a large output file) commits in
batches of at most 10 ms and, between two, stands aside for a writer
waiting for the lock (which says so with a shared lock on
`cache.db.waiting`), so `make -j` beside a large target stores every
result. A run that waits for an identical one stops waiting when that run
shows no sign of life for 10 s (stopped, hung, or a process that is not
lcrun holding its lock): it warns and runs the command uncached.
`--timeout` bounds the whole call: evaluating the cache-by expressions (a
`cmd:` still running is ended with its children), waiting for an identical
run, and the command, which gets what is left; when it expires lcrun exits
124 and nothing is cached. Once the command has ended, the store of its
result is lcrun's own work: a Ctrl-C (or SIGTERM, SIGHUP, SIGQUIT,
SIGUSR1, SIGUSR2) then stops it, takes away what it wrote, and ends lcrun
by that signal; the `--timeout` expiring then stops it too, with one
warning, and the command's status stands. A restore killed midway leaves
no temp file beside the outputs: each file is written unnamed and named
only when whole.",
    ),
];

/// Run a command as a long callback: live output, progress, clean
/// cancellation, and a cache that replays identical runs instantly.
#[derive(Debug, Parser)]
#[command(
    name = "lcrun",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "SUBCOMMAND",
    subcommand_help_heading = "Subcommands",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// A helper subcommand instead of running a command.
    #[command(subcommand)]
    pub subcommand: Option<Sub>,

    /// How to run and cache the command.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Helper subcommands.
#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Report progress from inside a command that lcrun runs (a no-op
    /// outside lcrun).
    ///
    /// Outside lcrun it does nothing and exits 0 whatever its arguments, so
    /// scripts run unchanged without lcrun. Everything after the position is
    /// the message, hyphens included: `lcrun progress 1/2 -O2 build`.
    Progress {
        /// POS, POS/TOTAL or PCT% (required inside lcrun).
        #[arg(value_name = "POSITION", allow_hyphen_values = true)]
        position: Option<OsString>,
        /// A message to show beside the bar.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        message: Vec<OsString>,
    },
    /// Say whether a run would hit the cache, and for a miss which input
    /// changed since the closest earlier entry of the same command.
    ///
    /// Takes exactly the options of a run. Exit status: 0 when the run would
    /// hit, 1 when it would miss, 125 on error.
    #[command(
        disable_help_flag = true,
        override_usage = "lcrun explain [--json] [RUN OPTIONS] -- COMMAND [ARGS...]"
    )]
    Explain {
        /// Parsed by `lcrun explain` itself (see [`ExplainCli`]).
        #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Look into the cache: list, show, stats, clear, prune.
    #[command(
        disable_help_flag = true,
        override_usage = "lcrun cache [--json] [--cache-dir DIR] list|show|stats|clear|prune"
    )]
    Cache {
        /// Parsed by `lcrun cache` itself (see [`CacheCli`]).
        #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

// The options of `explain` and `cache` are parsed by those subcommands
// themselves: clap builds the definitions of every option of the command
// tree on each call, and declaring them in `Sub` (a second copy of the run
// options for `explain`, the tree of `cache`) cost every cache hit 75k
// instructions (516k to 591k, callgrind). [`full_command`] has them all, for
// help pages and completions.

/// Say whether a run would hit the cache, and for a miss which input
/// changed since the closest earlier entry of the same command. Runs
/// nothing (cmd: expressions are evaluated: the key needs them; stdin is
/// read only for -c stdin).
///
/// For a miss it names each input that differs from the closest earlier
/// entry of the same command (same argv or shell string), down to the
/// files of a hash: input and the commits of a git one. Secret inputs
/// (env:, cmd:, stdin) are shown only sealed, never in clear.
///
/// Exit status: 0 when the run would hit, 1 when it would miss or the entry
/// expired, 125 on error.
#[derive(Debug, Parser)]
#[command(name = "explain", bin_name = "lcrun explain")]
pub struct ExplainCli {
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// The options of the run to explain, and its command.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Look into the cache: list its entries, show one, count hits and misses,
/// remove entries.
///
/// A cache directory that does not exist yet is an empty cache. One that is
/// not the user's own is refused (status 125): its records could have been
/// planted to mislead.
#[derive(Debug, Parser)]
#[command(
    name = "cache",
    bin_name = "lcrun cache",
    subcommand_value_name = "SUBCOMMAND"
)]
pub struct CacheCli {
    /// What to do.
    #[command(subcommand)]
    pub action: CacheAction,

    /// Where the cache lives [default: $XDG_CACHE_HOME/lcrun, else ~/.cache/lcrun].
    #[arg(long, env = "LCRUN_CACHE_DIR", value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// lcrun's whole command line, the options of `explain` and `cache`
/// included: for help pages and completions, not for parsing a run.
pub fn full_command() -> clap::Command {
    Cli::command()
        .mut_subcommand("explain", |_| ExplainCli::command())
        .mut_subcommand("cache", |_| CacheCli::command())
}

/// `lcrun cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// The entries, newest first: key (a short unique prefix), command,
    /// age, stored size, exit status, hits.
    List,
    /// One entry: its key inputs, timings, sizes and outputs.
    Show {
        /// The key, or any unique prefix of it.
        key: String,
        /// Print the stored stdout bytes exactly, and nothing else.
        #[arg(long, conflicts_with = "stderr")]
        stdout: bool,
        /// Print the stored stderr bytes exactly, and nothing else.
        #[arg(long)]
        stderr: bool,
    },
    /// Entries, bytes on disk, hits, misses, hit rate, time saved.
    Stats,
    /// Remove entries: those named (by key prefix), or those matching
    /// --older-than and --scope; with nothing, all of them.
    Clear {
        /// Only entries stored longer ago than this (90s, 10m, 2h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        older_than: Option<Duration>,
        /// Only entries of this --scope.
        #[arg(long, value_name = "NAME")]
        scope: Option<OsString>,
        /// Keys, or unique prefixes of keys.
        keys: Vec<String>,
    },
    /// Remove the least recently used entries until the cache fits SIZE.
    Prune {
        /// The size to bring the cache under (bytes, or with K, M, G).
        #[arg(long, env = "LCRUN_MAX_SIZE", value_name = "SIZE", value_parser = crate::inspect::parse_size)]
        max_size: u64,
        /// Also remove every entry stored longer ago than this.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        older_than: Option<Duration>,
    },
}

/// What the cache may do on this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Replay hits and store new results.
    Rw,
    /// Replay hits, never store (for untrusted builds).
    Ro,
    /// Always run, store the result.
    Wo,
    /// No cache at all.
    Off,
}

impl CacheMode {
    /// Whether a stored entry may be replayed.
    pub fn reads(self) -> bool {
        matches!(self, CacheMode::Rw | CacheMode::Ro)
    }

    /// Whether a new result may be stored.
    pub fn writes(self) -> bool {
        matches!(self, CacheMode::Rw | CacheMode::Wo)
    }
}

/// How progress is shown while the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// The bar on a terminal; elsewhere plain lines, as `plain`.
    Auto,
    /// A spinner naming the command, its elapsed time and last output line;
    /// a bar (pos/total, percent, rate, ETA, message) once progress is
    /// reported. Drawn even when stderr is not a terminal.
    Bar,
    /// No escape codes: with --interval, one heartbeat line per interval
    /// naming the command, its elapsed time, progress and last output line.
    Plain,
    /// No progress at all; lcrun's messages still print unless -q.
    None,
}

/// The options of a run, and the command itself.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run this string through /bin/sh -c instead of a command after `--`.
    #[arg(long, value_name = "STRING", conflicts_with = "command")]
    pub shell: Option<OsString>,

    /// Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB,
    /// git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin.
    #[arg(short = 'c', long = "cache-by", value_name = "EXPR", value_parser = CacheByParser, value_hint = ValueHint::AnyPath, hide_possible_values = true, help_heading = CACHING)]
    pub cache_by: Vec<OsString>,

    /// Store PATH (a file, or a directory with everything in it) with the
    /// result and restore it on a hit (repeatable). Relative paths are under
    /// the working directory; a path outside it must be absolute. The paths
    /// are part of the key. A declared output the command did not create:
    /// a warning, and nothing is stored.
    #[arg(short = 'o', long = "output", value_name = "PATH", value_hint = ValueHint::AnyPath, help_heading = CACHING)]
    pub output: Vec<OsString>,

    /// Leave argument N of the command out of the key (the command is 0).
    #[arg(long, value_name = "N", help_heading = CACHING)]
    pub ignore_arg: Vec<usize>,

    /// Leave the working directory out of the key.
    #[arg(long, help_heading = CACHING)]
    pub no_cwd: bool,

    /// Add a namespace to the key.
    #[arg(long, value_name = "NAME", help_heading = CACHING)]
    pub scope: Option<OsString>,

    /// Entries older than this are misses (90s, 10m, 2h, 7d).
    #[arg(short, long, env = "LCRUN_EXPIRE", value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true, help_heading = CACHING)]
    pub expire: Option<Duration>,

    /// Run even on a hit and replace the entry.
    #[arg(long, help_heading = CACHING)]
    pub refresh: bool,

    /// What the cache may do: rw, ro (never store), wo (never replay), off.
    #[arg(long, env = "LCRUN_CACHE_MODE", value_name = "MODE", default_value = "rw", help_heading = STORAGE)]
    pub cache_mode: CacheMode,

    /// Same as --cache-mode off.
    #[arg(long, help_heading = STORAGE)]
    pub no_cache: bool,

    /// Store results with a non-zero exit status too.
    #[arg(long, help_heading = CACHING)]
    pub cache_failures: bool,

    /// Where the cache lives [default: $XDG_CACHE_HOME/lcrun, else ~/.cache/lcrun].
    #[arg(long, env = "LCRUN_CACHE_DIR", value_name = "DIR", help_heading = STORAGE)]
    pub cache_dir: Option<PathBuf>,

    /// Keep the cache under SIZE (500M, 2G): after a result is stored, the
    /// least recently used entries go. Checked now and then, not on every
    /// write, so the cache may pass SIZE by about 1/32 of it for a while.
    #[arg(long, env = "LCRUN_MAX_SIZE", value_name = "SIZE", value_parser = crate::inspect::parse_size, help_heading = STORAGE)]
    pub max_size: Option<u64>,

    /// Don't wait for an identical run in progress: run the command now.
    #[arg(long, help_heading = CACHING)]
    pub no_wait: bool,

    /// Print only errors.
    #[arg(short, long, env = "LCRUN_QUIET", value_parser = FalseyValueParser::new(), help_heading = PROGRESS)]
    pub quiet: bool,

    /// Print lcrun's own lines even when stderr is not a terminal: a hit
    /// says what it replayed (-q wins).
    #[arg(short, long, help_heading = PROGRESS)]
    pub verbose: bool,

    /// Append one JSON line per run to FILE: key, command, hit and where
    /// from, status, duration, time saved, bytes out, cancelled, timed out.
    #[arg(long, env = "LCRUN_REPORT", value_name = "FILE", help_heading = PROGRESS)]
    pub report: Option<PathBuf>,

    /// How to show progress: auto, bar, plain or none.
    #[arg(long, value_name = "MODE", default_value = "auto", help_heading = PROGRESS)]
    pub progress: ProgressMode,

    /// Print a plain heartbeat line this often when stderr is not a terminal
    /// (the command, elapsed time, progress, last output line); also makes
    /// a hit say what it replayed.
    #[arg(long, env = "LCRUN_INTERVAL", value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true, help_heading = PROGRESS)]
    pub interval: Option<Duration>,

    /// Read progress from output lines; named groups pos, total, pct, msg.
    #[arg(long, value_name = "REGEX", help_heading = PROGRESS)]
    pub progress_regex: Option<String>,

    /// Cancel the command after this long and exit 124.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true, help_heading = CANCELLATION)]
    pub timeout: Option<Duration>,

    /// After cancelling, wait this long before SIGKILL [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true, help_heading = CANCELLATION)]
    pub kill_after: Option<Duration>,

    /// The command and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

impl Cli {
    /// Parses lcrun's command line. An environment fallback set to the empty
    /// string counts as unset (`LCRUN_EXPIRE=` in a CI file that leaves it
    /// blank), as a shell's `${VAR:-default}` would have it; clap would read
    /// it as an empty value and refuse it.
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        parse_with(Cli::command(), args)
    }
}

/// Parses `args` with `command`, an empty environment fallback counting as
/// unset (see [`Cli::parse_args`]).
pub fn parse_with<P, I, T>(mut command: clap::Command, args: I) -> Result<P, clap::Error>
where
    P: FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let is_empty = |arg: &clap::Arg| {
        arg.get_env()
            .is_some_and(|name| std::env::var_os(name).is_some_and(|v| v.is_empty()))
    };
    // Rebuilt only when needed: a cache hit is measured in instructions.
    if command.get_arguments().any(is_empty) {
        command = command.mut_args(|arg| if is_empty(&arg) { arg.env(None) } else { arg });
    }
    let mut matches = command.try_get_matches_from_mut(args)?;
    let parsed = P::from_arg_matches_mut(&mut matches).map_err(|err| err.format(&mut command));
    // Parsed once per process, which ends soon: freeing clap's definitions
    // and matches piece by piece was 14k of a cache hit's 530k instructions.
    std::mem::forget(command);
    std::mem::forget(matches);
    parsed
}

/// Takes any cache-by expression as given (they are checked later, with a
/// message that names the expression), and names the kinds, so shell
/// completions offer them.
#[derive(Debug, Clone, Copy)]
struct CacheByParser;

impl TypedValueParser for CacheByParser {
    type Value = OsString;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<OsString, clap::Error> {
        Ok(value.to_owned())
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(CACHE_BY_KINDS.iter().map(PossibleValue::new)))
    }
}

/// The grace period between a cancelling signal and SIGKILL when
/// `--kill-after` is not given.
pub const DEFAULT_KILL_AFTER: Duration = Duration::from_secs(5);

impl RunArgs {
    /// `--kill-after`, or its default.
    pub fn kill_after(&self) -> Duration {
        self.kill_after.unwrap_or(DEFAULT_KILL_AFTER)
    }

    /// The cache mode after `--no-cache`.
    pub fn effective_cache_mode(&self) -> CacheMode {
        if self.no_cache {
            CacheMode::Off
        } else {
            self.cache_mode
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn command_after_double_dash() {
        let cli = Cli::try_parse_from(["lcrun", "-c", "value:x", "--", "echo", "-c"]).unwrap();
        assert_eq!(cli.run.command, ["echo", "-c"]);
        assert_eq!(cli.run.cache_by, ["value:x"]);
    }

    #[test]
    fn progress_message_takes_hyphens() {
        let cli = Cli::try_parse_from(["lcrun", "progress", "1/2", "-O2", "--x", "build"]).unwrap();
        let Some(Sub::Progress { position, message }) = cli.subcommand else {
            panic!("not progress")
        };
        assert_eq!(position.unwrap(), "1/2");
        assert_eq!(message, ["-O2", "--x", "build"]);
    }
}
