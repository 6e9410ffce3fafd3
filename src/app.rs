//! What one `lcrun` call does: an invocation becomes a key; the key meets the
//! store; a hit replays; a miss runs, streams and records. The cache never
//! breaks the command: when it fails, lcrun warns once and runs uncached.

use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::blob::BlobError;
use crate::claim::{self, Claim, Waiting};
use crate::cli::{CacheMode, Cli, ProgressMode, RunArgs, Sub};
use crate::deadline::Deadline;
use crate::display::{Display, Style};
use crate::duration;
use crate::exit::Exit;
use crate::invocation::Invocation;
use crate::jobs::Jobs;
use crate::key::{Key, KeyError, Resolved, Secret};
use crate::lock::KeyLock;
use crate::messages::{error, Messages};
use crate::output::{reader_gone, RawOut, Stream};
use crate::outputs::RestoreCause;
use crate::progress::{self, LineMatcher, ProgressFile};
use crate::recorder::{Interrupt, Keep, Recorder, Unstored};
use crate::report::{self, Report};
use crate::runner::signals::{Caught, Signals, CANCEL, PASS_ON};
use crate::runner::{self, Delivery, Ending, Job, Observer, RunError};
use crate::scratch;
use crate::store::chain::Tiers;
use crate::store::{now_ms, Entry, Store, StoreError};

/// Runs one lcrun call; `Err` is lcrun's own error (status 125).
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.subcommand {
        Some(Sub::Progress { position, message }) => report_progress(position.as_deref(), &message),
        Some(Sub::Explain { .. }) => crate::inspect::parse_own_args::<crate::cli::ExplainCli>()
            .map_or_else(Ok, |cli| crate::inspect::explain::run(&cli.run, cli.json)),
        Some(Sub::Cache { .. }) => crate::inspect::parse_own_args::<crate::cli::CacheCli>()
            .map_or_else(Ok, |cli| {
                crate::inspect::cache::run(cli.action, cli.cache_dir, cli.json)
            }),
        None => run_command(&cli.run),
    }
}

/// `lcrun progress`: appends one line to `LCRUN_PROGRESS`. Outside lcrun (no
/// `LCRUN_PROGRESS`, or an empty one) it does nothing and succeeds whatever
/// its arguments, so scripts run unchanged without lcrun.
fn report_progress(position: Option<&OsStr>, message: &[OsString]) -> anyhow::Result<Exit> {
    let Some(path) = std::env::var_os("LCRUN_PROGRESS").filter(|p| !p.is_empty()) else {
        return Ok(Exit::Command(0));
    };
    let Some(position) = position else {
        anyhow::bail!(
            "progress: missing POSITION (POS, POS/TOTAL or PCT%); usage: lcrun progress POSITION [MESSAGE...]"
        );
    };
    let Some(line) = progress::helper_line(position, message) else {
        anyhow::bail!(
            "progress: bad POSITION '{}': expected POS, POS/TOTAL or PCT% and an optional message",
            position.to_string_lossy()
        );
    };
    progress::append(Path::new(&path), &line);
    Ok(Exit::Command(0))
}

/// Runs the command, and appends its line to `--report` when asked.
fn run_command(args: &RunArgs) -> anyhow::Result<Exit> {
    let Some(path) = &args.report else {
        return run_reported(args, None);
    };
    let report = Report::new(path);
    let result = run_reported(args, Some(&report));
    let exit = match &result {
        Ok(exit) => *exit,
        Err(_) => Exit::Usage,
    };
    report.write(exit, Messages::new(args.quiet));
    result
}

fn run_reported(args: &RunArgs, report: Option<&Report>) -> anyhow::Result<Exit> {
    // `--timeout` bounds the whole call, from here.
    let deadline = Deadline::after(args.timeout);
    let messages = Messages::new(args.quiet);
    let invocation = Invocation::new(args)?;
    if let Some(report) = report {
        report.command(&invocation.label());
    }
    let matcher = args
        .progress_regex
        .as_deref()
        .map(LineMatcher::new)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let program = match &invocation.program {
        Resolved::Found(path) => path.clone(),
        Resolved::NotExecutable(path) => {
            error(format!("{}: permission denied", path.display()));
            return Ok(Exit::NotExecutable);
        }
        Resolved::NotFound => {
            error(format!(
                "{}: command not found",
                invocation.argv[0].to_string_lossy()
            ));
            return Ok(Exit::NotFound);
        }
    };
    let mode = args.effective_cache_mode();
    let style = Style::choose(args.progress, args.quiet);
    let run = Run {
        args,
        invocation: &invocation,
        program,
        messages,
        style,
        matcher,
        report,
        deadline,
    };
    if mode == CacheMode::Off {
        if run.adds_nothing() {
            return Ok(run.exec_in_place());
        }
        return run.execute(None, None, None, None);
    }
    let (key, stdin) = match invocation.key(args, &run.program, deadline.at()) {
        Ok(keyed) => keyed,
        Err(KeyError::TimedOut { expr }) => {
            return Ok(run.timed_out(&format!("while evaluating cache-by '{expr}'")));
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(report) = report {
        report.key(&key.hex);
    }
    let mut cache = Cache::open(args.cache_dir.clone(), messages);

    // Whether to look for an entry to replay: not once a replay found it
    // could not be done (the command runs instead, once).
    let mut look = mode.reads() && !args.refresh;
    if look {
        if let Some(entry) = cache.lookup(&key, args.expire) {
            match run.replay(&mut cache, &entry) {
                Replayed::Done(exit) => {
                    // The process ends now: finalising statements and closing
                    // a read-only connection was 10% of a hit's instructions,
                    // and an exit without a close is what SQLite survives on
                    // any crash.
                    std::mem::forget(cache);
                    return Ok(exit);
                }
                Replayed::Gone => {}
                Replayed::RunInstead => look = false,
            }
        }
    }
    if !mode.writes() {
        cache.note_miss(mode, args);
        return run.execute(stdin, None, Some(&cache), None);
    }
    // Outcomes that identical runs leave from now on are ours to share.
    let arrived_ms = now_ms();
    // A replay that finds its entry gone (replaced since the lookup) claims
    // again; twice is plenty, each time a newer entry was there.
    for _ in 0..3 {
        let lock = match cache.claim(&key, &run) {
            Claimed::Owner(lock) => lock,
            Claimed::Uncached => {
                cache.note_miss(mode, args);
                return run.execute(stdin, None, Some(&cache), None);
            }
            Claimed::TimedOut => {
                return Ok(run.timed_out("while waiting for an identical run"));
            }
        };
        // An identical run may have finished while we claimed the key: its
        // outcome is ours too, failure included (a singleflight).
        if look {
            let entry = cache
                .lookup(&key, args.expire)
                .or_else(|| cache.outcome_since(&key, arrived_ms));
            if let Some(entry) = entry {
                // The others waiting may replay it side by side.
                drop(lock);
                match run.replay(&mut cache, &entry) {
                    Replayed::Done(exit) => return Ok(exit),
                    Replayed::Gone => continue,
                    Replayed::RunInstead => {
                        look = false;
                        continue;
                    }
                }
            }
        }
        cache.note_miss(mode, args);
        let job = cache.job_start(&key, &invocation);
        // The key stays locked until both the command has ended and the
        // recorder is done with its recording (stored or dropped): the
        // recorder holds a share of the lock of its own.
        let lock = Arc::new(lock);
        let recorder = cache.record(&key, &invocation, &lock, args.max_size);
        let exit = run.execute(stdin, recorder, Some(&cache), job);
        drop(lock);
        return exit;
    }
    run.execute(stdin, None, Some(&cache), None)
}

/// How a replay of a hit went.
enum Replayed {
    /// It went out (or failed partway, which is lcrun's own error).
    Done(Exit),
    /// Replaced by an identical run since the lookup: look again.
    Gone,
    /// Nothing went out and it cannot be replayed: the command runs.
    RunInstead,
}

/// The parts of one call that running and replaying share.
struct Run<'a> {
    args: &'a RunArgs,
    invocation: &'a Invocation,
    program: PathBuf,
    messages: Messages,
    style: Style,
    matcher: Option<LineMatcher>,
    report: Option<&'a Report>,
    /// `--timeout`, counted from the start of the call.
    deadline: Deadline,
}

impl Run<'_> {
    /// Says that `--timeout` expired before the command ran, and why.
    fn timed_out(&self, when: &str) -> Exit {
        let limit = self.deadline.limit().map(duration::short).unwrap_or_default();
        self.messages
            .warn(format!("timed out after {limit} {when}; nothing cached"));
        Exit::TimedOut
    }

    /// With no cache, no bar, no heartbeat, no timeout and no regex, lcrun
    /// has nothing to add to the command: it becomes the command, so a
    /// `--no-cache` run costs one exec, and signals reach the command as if
    /// lcrun were not there.
    fn adds_nothing(&self) -> bool {
        let quiet_display = match self.style {
            Style::Silent => true,
            Style::Plain => self.args.interval.is_none(),
            Style::Bar => false,
        };
        // An explicit --kill-after asks for lcrun's cancellation (a grace
        // period, then SIGKILL; a second signal kills at once), which only a
        // supervising lcrun gives.
        quiet_display
            && self.args.timeout.is_none()
            && self.args.kill_after.is_none()
            && self.matcher.is_none()
            && self.report.is_none()
    }

    /// Whether stderr is a terminal. `--progress auto` has asked already
    /// (its bar is for terminals), and a hit makes no second syscall.
    fn on_terminal(&self) -> bool {
        match self.args.progress {
            ProgressMode::Auto if !self.args.quiet => self.style == Style::Bar,
            _ => std::io::stderr().is_terminal(),
        }
    }

    /// Replaces lcrun with the command; returns only if that fails.
    fn exec_in_place(self) -> Exit {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(&self.program);
        command
            .arg0(&self.invocation.argv[0])
            .args(&self.invocation.argv[1..])
            // Nothing shows progress, but a command that writes to the file
            // directly (`> "$LCRUN_PROGRESS"`) must find one, and must not
            // write into an outer lcrun's.
            .env("LCRUN_PROGRESS", "/dev/null");
        if runner::signals::sigpipe_ignored() {
            // std gives the command the default SIGPIPE; its caller ignored it.
            // SAFETY: signal(2) is async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let err = command.exec();
        spawn_failed(&self.invocation.argv[0], &err)
    }

    /// Replays a hit and exits with its recorded status, unless none of it
    /// went out: then the command goes the miss path, to replay what an
    /// identical run replaced it with since the lookup ([`Replayed::Gone`]),
    /// or to run ([`Replayed::RunInstead`]: the stored output proved damaged,
    /// and the entry is dropped, or could not be read or written).
    fn replay(&self, cache: &mut Cache, entry: &Entry) -> Replayed {
        let started = Instant::now();
        let Some(store) = cache.store() else {
            return Replayed::RunInstead;
        };
        // Output files first: while none is written, a failure is a miss.
        if let Err(err) = store.restore(entry, Path::new("."), &self.invocation.outputs) {
            // Before any of its output went out: the command makes the
            // files afresh, those restored already too. A blob missing or
            // damaged drops the entry; outputs that could not be written
            // (their disk full) leave it for a later run. A record or a
            // tree lcrun must not obey (a planted symlink, a `..`) is
            // refused.
            if matches!(err.cause, RestoreCause::Blob(_)) {
                if matches!(
                    err.cause,
                    RestoreCause::Blob(BlobError::Missing(_) | BlobError::Damaged(_))
                ) {
                    let _ = store.forget(entry);
                }
                self.messages.warn(format!(
                    "cannot restore cached outputs ({err}); running the command"
                ));
                return Replayed::RunInstead;
            }
            error(format!("{err}"));
            return Replayed::Done(Exit::Usage);
        }
        let mut out = RawOut::new();
        let mut started_output = false;
        let result = store.replay(entry, |stream, bytes| {
            started_output = true;
            out.write(stream, bytes)
        });
        let fault = [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .find_map(|stream| out.fault(stream).map(|err| (stream, err)));
        match fault {
            // As the command would have died, writing into a closed pipe; or,
            // when lcrun's caller ignores SIGPIPE, failed with EPIPE as
            // coreutils do (status 1), as a live run's command would.
            Some((_, err)) if reader_gone(err) => {
                if runner::signals::sigpipe_ignored() {
                    return Replayed::Done(Exit::Command(1));
                }
                return Replayed::Done(Exit::Command(crate::exit::signal_status(libc::SIGPIPE)));
            }
            Some((stream, err)) => return Replayed::Done(write_failed(stream, err, entry.record.status)),
            None => {}
        }
        match result {
            Ok(()) => {}
            // Replaced by an identical run or a refresh since the lookup:
            // that run's result is what to show, and the miss path finds it.
            Err(StoreError::Gone) if !started_output => return Replayed::Gone,
            Err(err) => {
                let damaged = err.is_damaged_entry();
                if damaged {
                    let _ = store.forget(entry);
                }
                if !started_output {
                    // Nothing went out: the command runs instead. A damaged
                    // database is moved aside for the next run (by this
                    // process, which says so, or already by another).
                    if err.is_corrupt() {
                        if let Some(note) = store.set_aside(&err) {
                            self.messages.warn(note);
                        }
                        // The connection still reads the file moved aside:
                        // this run goes on uncached, having said why once.
                        cache.tiers = None;
                        cache.warned.set(true);
                        return Replayed::RunInstead;
                    }
                    let what = if damaged {
                        "was damaged"
                    } else {
                        "could not be read"
                    };
                    self.messages
                        .warn(format!("cached output {what} ({err}); running the command"));
                    return Replayed::RunInstead;
                }
                // Part of the output is out already: running the command now
                // would print it twice, so this is an error of our own.
                error(format!("cannot replay cached output: {err}"));
                return Replayed::Done(Exit::Usage);
            }
        }
        let _ = store.record_hit(&entry.key);
        let saved = entry.duration().saturating_sub(started.elapsed());
        if let Some(report) = self.report {
            let bytes = entry.record.stdout.size + entry.record.stderr.size;
            report.hit(report::Source::Local, saved, bytes);
        }
        // Wherever lcrun's own lines go: a terminal, or a log that asked
        // for them. Never with -q.
        let args = self.args;
        if !self.messages.quiet() && (args.verbose || args.interval.is_some() || self.on_terminal()) {
            self.messages
                .warn(report::hit_line(&self.invocation.label(), entry.age(), saved));
        }
        Replayed::Done(Exit::Command(entry.record.status))
    }

    /// Runs the command live, recording it when `recording` is given.
    fn execute(
        self,
        stdin: Option<std::fs::File>,
        recording: Option<Recorder>,
        cache: Option<&Cache>,
        job: Option<(Jobs, String)>,
    ) -> anyhow::Result<Exit> {
        if self.deadline.expired() {
            if let Some((jobs, id)) = &job {
                let _ = jobs.finish(id, "cancelled", Exit::TimedOut.code());
            }
            if let Some(recording) = recording {
                recording.abandon();
            }
            return Ok(self.timed_out("before the command could start"));
        }
        // A guard: the file is removed when it drops, on every way out of
        // here, so a cancelled lcrun may re-raise its signal only after
        // `execute` has returned.
        let progress_file = progress_file(cache, self.messages);
        let mut observer = RunObserver {
            display: Display::new(
                self.style,
                &self.invocation.label(),
                self.args.interval,
                self.matcher,
            ),
            recording,
            progress: progress_file
                .as_ref()
                .and_then(|file| ProgressFile::open(file.path()).ok()),
            job: job.as_ref().map(|(jobs, id)| Publisher::new(jobs, id)),
            bytes_out: 0,
            messages: self.messages,
        };
        let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = progress_file
            .iter()
            .map(|file| ("LCRUN_PROGRESS".into(), file.path().as_os_str().to_owned()))
            .collect();
        if let Some((_, id)) = &job {
            env.push((runner::JOB_VAR.into(), id.into()));
        }
        let spec = Job {
            program: self.program,
            argv: self.invocation.argv.clone(),
            stdin,
            env,
            // What the cache-by evaluation and the wait left of it.
            timeout: self.deadline.remaining(),
            kill_after: self.args.kill_after(),
        };
        // Kept until the outputs are stored: a Ctrl-C then still cancels
        // cleanly, and does not kill lcrun halfway through its own work.
        let signals = match Signals::install() {
            Ok(signals) => signals,
            Err(err) => return Err(err).context("while running the command"),
        };
        let started = Instant::now();
        let result = run_as_execvp(spec, &signals, &mut observer);
        observer.tick();
        observer.display.finish();
        let duration = started.elapsed();
        if let Some(report) = self.report {
            report.ran(observer.bytes_out);
        }
        let ending = match result {
            Ok(ending) => ending,
            Err(RunError::Spawn(err)) => {
                if let Some(recording) = observer.recording.take() {
                    recording.abandon();
                }
                let exit = spawn_failed(&self.invocation.argv[0], &err);
                if let Some((jobs, id)) = &job {
                    // Else the job would stay listed as running until the
                    // next run of its key marked it lost.
                    let _ = jobs.finish(id, "failed", exit.code());
                }
                return Ok(exit);
            }
            Err(RunError::Io(err)) => return Err(err).context("while running the command"),
        };
        // Output that could not be delivered (a reader gone, a full disk) is
        // a run not to keep, and a write error is the run's failure. A result
        // policy does not cache (a failure without --cache-failures) is still
        // kept for the identical runs waiting on this one: they share its
        // outcome. A cancelled run hands the work to one of them instead.
        let fault = [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .find_map(|stream| observer.display.fault(stream).map(|err| (stream, err)));
        let (mut exit, keep) = match ending {
            Ending::Exited(status) => {
                let exit = Exit::from_status(status);
                let ok = status.code() == Some(0) || (self.args.cache_failures && status.code().is_some());
                let keep = if ok { Keep::Cache } else { Keep::ForWaiters };
                match fault {
                    // The command met the closed pipe, and its status says so.
                    Some((_, err)) if reader_gone(err) => (exit, None),
                    Some((stream, err)) => (write_failed(stream, err, exit.code()), None),
                    None => (exit, Some(keep)),
                }
            }
            Ending::Cancelled(signal) => {
                self.messages
                    .warn(format!("cancelled ({}); nothing cached", signal_name(signal)));
                (Exit::Cancelled(signal), None)
            }
            Ending::TimedOut => {
                let limit = self.deadline.limit().map(duration::short).unwrap_or_default();
                self.messages
                    .warn(format!("timed out after {limit}; nothing cached"));
                (Exit::TimedOut, None)
            }
        };
        // Storing the result (its outputs, mostly) can take a while. A
        // signal that cancels a run, or that would end the bare command
        // (SIGQUIT, SIGUSR1, SIGUSR2: the command is gone), stops it and
        // ends lcrun by that signal, as does one that comes as the store
        // ends: a shell loop or make must see the Ctrl-C. The deadline
        // stops the store too, but the command did its work in time.
        let already = matches!(exit, Exit::Cancelled(_));
        let seen = std::cell::Cell::new(None);
        let take_signal = || {
            if seen.get().is_none() && !already {
                seen.set(ending_lcrun(signals.take()));
            }
            seen.get()
        };
        let mut interrupted = || match take_signal() {
            Some(signal) => Some(Interrupt::Signal(signal)),
            None => self.deadline.expired().then_some(Interrupt::Deadline),
        };
        let mut stopped = false;
        if let Some(recording) = observer.recording.take() {
            let result = match keep {
                Some(keep) => recording.finish(
                    exit.code(),
                    duration,
                    keep,
                    &self.invocation.outputs,
                    &mut interrupted,
                ),
                None => {
                    recording.abandon();
                    Ok(())
                }
            };
            match result {
                Ok(()) => {}
                Err(Unstored::Failed(why)) => {
                    if let Some(cache) = cache {
                        cache.warn_dropped(&why);
                    }
                }
                Err(Unstored::Interrupted(Interrupt::Signal(_))) => stopped = true,
                Err(Unstored::Interrupted(Interrupt::Deadline)) => {
                    let limit = self.deadline.limit().map(duration::short).unwrap_or_default();
                    self.messages.warn(format!(
                        "timed out after {limit} while storing the result; it is not cached"
                    ));
                }
            }
        }
        if seen.get().is_none() && !already {
            // One that came as the store ended and no one asked since.
            seen.set(ending_lcrun(signals.close()));
        }
        if let Some(signal) = seen.get() {
            let when = if stopped {
                "while storing the result; nothing cached"
            } else {
                "after the command ended"
            };
            self.messages
                .warn(format!("cancelled ({}) {when}", signal_name(signal)));
            exit = Exit::Cancelled(signal);
        }
        if let Some((jobs, id)) = &job {
            let state = match ending {
                _ if seen.get().is_some() => "cancelled",
                Ending::Exited(status) if status.success() => "done",
                Ending::Exited(_) => "failed",
                Ending::Cancelled(_) | Ending::TimedOut => "cancelled",
            };
            let _ = jobs.finish(id, state, exit.code());
        }
        Ok(exit)
    }
}

/// The file the command reports progress to (`LCRUN_PROGRESS`), in the
/// temporary directory, else the cache dir, else /tmp; without one the
/// command runs all the same, only without the variable.
fn progress_file(cache: Option<&Cache>, messages: Messages) -> Option<tempfile::NamedTempFile> {
    match scratch::named("lcrun-progress-", cache.and_then(Cache::dir)) {
        Ok((file, note)) => {
            if let Some(note) = note {
                messages.warn(note);
            }
            Some(file)
        }
        Err(err) => {
            messages.warn(format!("{err}; the command runs without LCRUN_PROGRESS"));
            None
        }
    }
}

/// Among signals caught after the command ended, the first that ends lcrun:
/// one that cancels a run, or one that would have ended the command.
fn ending_lcrun(caught: Vec<Caught>) -> Option<i32> {
    caught
        .into_iter()
        .map(|caught| caught.signal)
        .find(|signal| CANCEL.contains(signal) || PASS_ON.contains(signal))
}

/// Starts `job` as `execvp` would, which is how a shell, `env` and
/// `--no-cache` (an exec in place) start it: a file the kernel refuses to
/// execute (ENOEXEC: a script without `#!`) is run by `/bin/sh FILE ARGS...`.
fn run_as_execvp(job: Job, signals: &Signals, observer: &mut dyn Observer) -> Result<Ending, RunError> {
    // The first attempt consumes the stdin file even when it fails to start.
    let again = copy_of(&job)?;
    let mut argv = vec!["/bin/sh".into(), job.program.clone().into_os_string()];
    argv.extend_from_slice(&job.argv[1..]);
    let by_shell = Job {
        program: "/bin/sh".into(),
        argv,
        ..copy_of(&job)?
    };
    match runner::run(job, signals, observer) {
        Err(RunError::Spawn(err)) if err.raw_os_error() == Some(libc::ENOEXEC) => {
            runner::run(by_shell, signals, observer)
        }
        Err(RunError::Spawn(err))
            if err.raw_os_error() == Some(libc::EAGAIN) && observer.give_up_threads() =>
        {
            // A limit of tasks (a container's pids limit, `ulimit -u`) that
            // lcrun's own threads filled: the command comes first. A thread
            // that was told to end may take a moment to be gone.
            let mut job = again;
            for _ in 0..50 {
                let next = copy_of(&job)?;
                match runner::run(job, signals, observer) {
                    Err(RunError::Spawn(err)) if err.raw_os_error() == Some(libc::EAGAIN) => {
                        std::thread::sleep(Duration::from_millis(10));
                        job = next;
                    }
                    other => return other,
                }
            }
            runner::run(job, signals, observer)
        }
        Err(err) => Err(err),
        ok => ok,
    }
}

/// Another `job` like this one, its stdin file opened again.
fn copy_of(job: &Job) -> Result<Job, RunError> {
    Ok(Job {
        program: job.program.clone(),
        argv: job.argv.clone(),
        stdin: job.stdin.as_ref().map(std::fs::File::try_clone).transpose()?,
        env: job.env.clone(),
        timeout: job.timeout,
        kill_after: job.kill_after,
    })
}

/// A write error on lcrun's `stream` (ENOSPC, EIO) is never swallowed: one
/// line, and the run fails with the command's status, or 1 if it succeeded
/// (what coreutils do when their output fails).
fn write_failed(stream: Stream, err: &std::io::Error, status: u8) -> Exit {
    error(format!("cannot write to {}: {err}", stream.name()));
    Exit::Command(status.max(1))
}

/// Says why the command could not be started: 127 when it is gone (removed
/// since it was resolved), else 126.
fn spawn_failed(name: &std::ffi::OsStr, err: &std::io::Error) -> Exit {
    error(format!("{}: {err}", name.to_string_lossy()));
    match err.kind() {
        std::io::ErrorKind::NotFound => Exit::NotFound,
        _ => Exit::NotExecutable,
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// How often a running job's progress is published to its waiters.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// How often a running job shows its waiters it is alive, progress or not
/// (see [`claim::STUCK_AFTER`]).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Publishes a running job's progress in the jobs table, for waiters.
struct Publisher<'s> {
    jobs: &'s Jobs,
    id: &'s str,
    published: progress::State,
    at: Instant,
}

impl<'s> Publisher<'s> {
    fn new(jobs: &'s Jobs, id: &'s str) -> Publisher<'s> {
        Publisher {
            jobs,
            id,
            published: progress::State::default(),
            at: Instant::now(),
        }
    }

    fn publish(&mut self, state: &progress::State) {
        let due = self.at.elapsed();
        if (*state != self.published && due >= PUBLISH_EVERY) || due >= HEARTBEAT {
            self.at = Instant::now();
            self.published = state.clone();
            let _ = self.jobs.progress(self.id, state);
        }
    }
}

/// Streams output to the display and into the recording.
struct RunObserver<'s> {
    display: Display,
    recording: Option<Recorder>,
    progress: Option<ProgressFile>,
    job: Option<Publisher<'s>>,
    /// Bytes delivered to stdout and stderr, for `--report`.
    bytes_out: u64,
    messages: Messages,
}

impl RunObserver<'_> {
    /// Whether `stream`'s output failed to reach its reader. Nothing is
    /// kept of such a run, and nothing more is written to the cache for it.
    fn refused(&mut self, stream: Stream) -> bool {
        if self.display.fault(stream).is_none() {
            return false;
        }
        if let Some(recording) = self.recording.take() {
            recording.abandon();
        }
        true
    }
}

impl Observer for RunObserver<'_> {
    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Delivery {
        self.display.output(stream, bytes);
        if self.refused(stream) {
            return Delivery::Refused;
        }
        self.bytes_out += bytes.len() as u64;
        // Never blocks on the store: see `Recorder`. Why a recording was
        // dropped is said once, at the end.
        if let Some(recording) = &mut self.recording {
            recording.write(stream, bytes);
        }
        Delivery::Delivered
    }

    fn room(&mut self, stream: Stream) -> Option<&mut [u8]> {
        self.recording.as_mut()?.room(stream)
    }

    fn output_in_room(&mut self, stream: Stream, n: usize) -> Delivery {
        let Some(recording) = &mut self.recording else {
            return Delivery::Delivered;
        };
        self.display.output(stream, recording.in_room(stream, n));
        if self.refused(stream) {
            return Delivery::Refused;
        }
        self.bytes_out += n as u64;
        if let Some(recording) = &mut self.recording {
            recording.commit(stream, n);
        }
        Delivery::Delivered
    }

    fn give_up_threads(&mut self) -> bool {
        let Some(recording) = self.recording.take() else {
            return false;
        };
        recording.give_up_threads();
        self.messages
            .warn("no task left to record the result (a limit of processes); running uncached");
        true
    }

    fn tick(&mut self) {
        if let Some(update) = self.progress.as_mut().and_then(ProgressFile::update) {
            self.display.progress(update);
        }
        self.display.tick();
        if let Some(job) = &mut self.job {
            job.publish(self.display.state());
        }
    }
}

/// The local cache as this run sees it: a store, or none after a failure
/// that has been reported once.
struct Cache {
    /// The local tier and those behind it; the run path talks to these.
    tiers: Option<Tiers>,
    /// The directory of a store lent to a recorder.
    lent: Option<PathBuf>,
    messages: Messages,
    warned: std::cell::Cell<bool>,
}

impl Cache {
    fn open(dir: Option<PathBuf>, messages: Messages) -> Cache {
        let mut cache = Cache {
            tiers: None,
            lent: None,
            messages,
            warned: false.into(),
        };
        let Some(dir) = dir.or_else(|| dirs::cache_dir().map(|d| d.join("lcrun"))) else {
            cache.warn("no cache directory (set LCRUN_CACHE_DIR or --cache-dir)");
            return cache;
        };
        match Store::open_or_recover(&dir) {
            Ok((store, note)) => {
                if let Some(note) = note {
                    messages.warn(note);
                }
                cache.tiers = Some(Tiers::new(store));
            }
            Err(StoreError::Untrusted(why)) => {
                cache.warn(&format!("not using the cache in {}: {why}", dir.display()));
            }
            Err(err) => cache.warn(&format!("cannot open the cache in {}: {err}", dir.display())),
        }
        cache
    }

    /// Warns, once per run, that the cache is not used.
    fn warn(&self, what: &str) {
        if !self.warned.replace(true) {
            self.messages.warn(format!("{what}; running uncached"));
        }
    }

    /// Counts a lookup that missed and is about to run the command, for
    /// `lcrun cache stats` (a `--refresh` or write-only run looked nothing up).
    fn note_miss(&self, mode: CacheMode, args: &RunArgs) {
        if mode.reads() && !args.refresh {
            if let Some(dir) = self.dir() {
                crate::store::inspect::note_miss(dir);
            }
        }
    }

    /// The local tier: replays go there, and recordings.
    fn store(&self) -> Option<&Store> {
        self.tiers.as_ref().map(Tiers::local)
    }

    fn dir(&self) -> Option<&Path> {
        self.store().map(Store::dir).or(self.lent.as_deref())
    }

    /// The fresh entry for `key`, if any.
    fn lookup(&mut self, key: &Key, expire: Option<Duration>) -> Option<Entry> {
        let tiers = self.tiers.as_ref()?;
        match tiers.lookup(&key.hex) {
            Ok(entry) => entry.filter(|e| expire.is_none_or(|max| e.age() <= max)),
            Err(err) if err.is_corrupt() => {
                self.recover(&err);
                None
            }
            Err(err) if err.is_damaged_entry() => {
                self.messages
                    .warn(format!("a cache entry was damaged ({err}); running the command"));
                None
            }
            Err(err) => {
                self.warn(&format!("cannot read the cache: {err}"));
                self.tiers = None;
                None
            }
        }
    }

    /// Moves a database that `err` showed damaged aside and opens a new one
    /// (or, when another process did that first, opens its new one).
    fn recover(&mut self, err: &StoreError) {
        let Some(tiers) = self.tiers.take() else {
            return;
        };
        let (store, others) = tiers.into_parts();
        match store.recover(err) {
            Ok((store, note)) => {
                if let Some(note) = note {
                    self.messages.warn(note);
                }
                self.tiers = Some(Tiers::from_parts(store, others));
            }
            Err(again) => self.warn(&format!("cache database is damaged ({again})")),
        }
    }

    /// Warns, once, that the result of this run is not stored, and why.
    fn warn_dropped(&self, why: &str) {
        if !self.warned.replace(true) {
            self.messages.warn(format!("{why}; the result is not stored"));
        }
    }

    /// The outcome an identical run left for its waiters since `since_ms`.
    fn outcome_since(&self, key: &Key, since_ms: i64) -> Option<Entry> {
        let store = self.store()?;
        store.lookup_outcome(&key.hex, since_ms).ok().flatten()
    }

    /// Becomes the one process that runs `key`, waiting (boundedly) while
    /// an identical run holds it.
    fn claim(&mut self, key: &Key, run: &Run<'_>) -> Claimed {
        let Some(dir) = self.dir().map(Path::to_owned) else {
            return Claimed::Uncached;
        };
        let label = run.invocation.label();
        let how = Waiting {
            style: run.style,
            label: &label,
            interval: run.args.interval,
            messages: self.messages,
        };
        match claim::claim(&dir, &key.hex, run.args.no_wait, run.deadline, &how) {
            Claim::Owner(lock) => Claimed::Owner(lock),
            Claim::TimedOut => Claimed::TimedOut,
            // Said by the claim already.
            Claim::Busy | Claim::Stuck => Claimed::Uncached,
            Claim::Failed(err) => {
                self.warn(&format!("cannot lock the cache entry: {err}"));
                self.tiers = None;
                Claimed::Uncached
            }
        }
    }

    /// Registers this process as the one running `key`.
    fn job_start(&self, key: &Key, invocation: &Invocation) -> Option<(Jobs, String)> {
        let jobs = Jobs::open(self.dir()?).ok()?;
        // We hold the key's lock, so a job still marked running for the key
        // lost its owner (SIGKILL, a crash). What its command left running
        // ends first: two copies of one command never run at once.
        if let Ok(Some(lost)) = jobs.running(&key.hex) {
            let marker = format!("{}={}", runner::JOB_VAR, lost.id);
            runner::tree::end_marked(marker.as_bytes());
        }
        let id = jobs.start(&key.hex, &invocation.label()).ok()?;
        Some((jobs, id))
    }

    /// Starts recording on a thread of its own, which takes the store and
    /// a share of the key's `lock`.
    fn record(
        &mut self,
        key: &Key,
        invocation: &Invocation,
        lock: &Arc<KeyLock>,
        max_size: Option<u64>,
    ) -> Option<Recorder> {
        // The local tier goes to the recorder's thread; lookups are done.
        let (store, _) = self.tiers.take()?.into_parts();
        store.set_max_size(max_size);
        self.lent = Some(store.dir().to_owned());
        // Only a miss with secret inputs reads the secret, to key their
        // stored digests. One refused (not a private file of ours) keys
        // none: the run is stored without them, and says so.
        let messages = self.messages;
        let key = key.sealed(|| {
            Secret::load_or_create(store.dir())
                .map_err(|err| {
                    messages.warn(format!(
                        "cannot use the cache's secret ({err}); the digests of secret inputs are not stored"
                    ))
                })
                .ok()
        });
        let cwd = invocation.cwd.to_string_lossy().into_owned();
        Some(Recorder::start(
            store,
            Arc::clone(lock),
            &key,
            invocation.label(),
            cwd,
            self.messages,
        ))
    }
}

/// What claiming a key came to, for this run.
enum Claimed {
    /// This process holds the key.
    Owner(KeyLock),
    /// Run the command unrecorded.
    Uncached,
    /// `--timeout` expired while waiting.
    TimedOut,
}
