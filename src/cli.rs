//! The whole command-line surface of lcrun: flags, their environment
//! fallbacks and subcommands. Doc comments here are the `--help` text, the man
//! page and the shell completions.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::duration;

/// Run a command as a long callback: live output, progress, clean
/// cancellation, and a cache that replays identical runs instantly.
#[derive(Debug, Parser)]
#[command(
    name = "lcrun",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_value_name = "SUBCOMMAND",
    subcommand_help_heading = "Subcommands",
    after_help = "Examples:\n  \
        lcrun -c hash:src -- make test\n  \
        lcrun -e 1h -c git -- ./slow-report.sh\n  \
        lcrun --shell 'curl -s https://example.org | wc -l'"
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
    /// changed since the closest earlier entry of the same command. Runs
    /// nothing (cmd: expressions are evaluated: the key needs them).
    ///
    /// Exit status: 0 when the run would hit, 1 when it would miss, 125 on
    /// error.
    Explain {
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The options of the run to explain, and its command.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Look into the cache: list, show, stats, clear, prune.
    Cache {
        /// What to do.
        #[command(subcommand)]
        action: CacheAction,
        /// Where the cache lives [default: the platform cache dir /lcrun].
        #[arg(long, env = "LCRUN_CACHE_DIR", value_name = "DIR", global = true)]
        cache_dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
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
        #[arg(long, value_name = "SIZE", value_parser = crate::inspect::parse_size)]
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
    /// A bar on a terminal, plain heartbeat lines otherwise.
    Auto,
    /// Always draw the bar.
    Bar,
    /// Plain lines, no escape codes.
    Plain,
    /// Nothing.
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
    #[arg(short = 'c', long = "cache-by", value_name = "EXPR")]
    pub cache_by: Vec<OsString>,

    /// Store PATH (a file, or a directory with everything in it) with the
    /// result and restore it on a hit (repeatable). Relative paths are under
    /// the working directory; a path outside it must be absolute. The paths
    /// are part of the key. A declared output the command did not create:
    /// a warning, and nothing is stored.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Vec<OsString>,

    /// Leave argument N of the command out of the key (the command is 0).
    #[arg(long, value_name = "N")]
    pub ignore_arg: Vec<usize>,

    /// Leave the working directory out of the key.
    #[arg(long)]
    pub no_cwd: bool,

    /// Add a namespace to the key.
    #[arg(long, value_name = "NAME")]
    pub scope: Option<OsString>,

    /// Entries older than this are misses (90s, 10m, 2h, 7d).
    #[arg(short, long, env = "LCRUN_EXPIRE", value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
    pub expire: Option<Duration>,

    /// Run even on a hit and replace the entry.
    #[arg(long)]
    pub refresh: bool,

    /// What the cache may do: rw, ro (never store), wo (never replay), off.
    #[arg(long, env = "LCRUN_CACHE_MODE", value_name = "MODE", default_value = "rw")]
    pub cache_mode: CacheMode,

    /// Same as --cache-mode off.
    #[arg(long)]
    pub no_cache: bool,

    /// Store results with a non-zero exit status too.
    #[arg(long)]
    pub cache_failures: bool,

    /// Where the cache lives [default: the platform cache dir /lcrun].
    #[arg(long, env = "LCRUN_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Don't wait for an identical run in progress: run the command now.
    #[arg(long)]
    pub no_wait: bool,

    /// Print only errors.
    #[arg(short, long, env = "LCRUN_QUIET", value_parser = FalseyValueParser::new())]
    pub quiet: bool,

    /// How to show progress.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub progress: ProgressMode,

    /// Print a plain heartbeat line this often when stderr is not a terminal.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
    pub interval: Option<Duration>,

    /// Read progress from output lines; named groups pos, total, pct, msg.
    #[arg(long, value_name = "REGEX")]
    pub progress_regex: Option<String>,

    /// Cancel the command after this long and exit 124.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
    pub timeout: Option<Duration>,

    /// After cancelling, wait this long before SIGKILL [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
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
        let is_empty = |arg: &clap::Arg| {
            arg.get_env()
                .is_some_and(|name| std::env::var_os(name).is_some_and(|v| v.is_empty()))
        };
        let mut command = Cli::command();
        // Rebuilt only when needed: a cache hit is measured in instructions.
        if command.get_arguments().any(is_empty) {
            command = command.mut_args(|arg| if is_empty(&arg) { arg.env(None) } else { arg });
        }
        let mut matches = command.try_get_matches_from_mut(args)?;
        Cli::from_arg_matches_mut(&mut matches).map_err(|err| err.format(&mut command))
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
