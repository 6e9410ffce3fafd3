//! What one `lcrun` call does: an invocation becomes a key; the key meets the
//! store; a hit replays; a miss runs, streams and records. The cache never
//! breaks the command: when it fails, lcrun warns once and runs uncached.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::{CacheMode, Cli, RunArgs, Sub};
use crate::display::{Display, Style};
use crate::duration;
use crate::exit::Exit;
use crate::invocation::Invocation;
use crate::jobs::Jobs;
use crate::key::{Key, Resolved};
use crate::lock::KeyLock;
use crate::messages::{error, Messages};
use crate::output::{RawOut, Stream};
use crate::progress::{self, LineMatcher, ProgressFile};
use crate::runner::{self, Ending, Job, Observer, RunError};
use crate::store::{Entry, Recording, Store, StoreError};

/// How often a waiter checks whether an identical run has finished.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Runs one lcrun call; `Err` is lcrun's own error (status 125).
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.subcommand {
        Some(Sub::Progress { position, message }) => report_progress(&position, &message),
        None => run_command(&cli.run),
    }
}

/// `lcrun progress`: appends one line to `LCRUN_PROGRESS`. Outside lcrun, or
/// when the file is gone, it does nothing, so scripts run unchanged.
fn report_progress(position: &str, message: &[String]) -> anyhow::Result<Exit> {
    let Some(path) = std::env::var_os("LCRUN_PROGRESS") else {
        return Ok(Exit::Command(0));
    };
    let mut line = position.to_owned();
    for word in message {
        line.push(' ');
        line.push_str(word);
    }
    if progress::parse_line(&line).is_none() {
        anyhow::bail!("bad progress '{line}': expected POS, POS/TOTAL or PCT% and an optional message");
    }
    line.push('\n');
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(path) {
        // One write on an O_APPEND file: lines from parallel writers never mix.
        let _ = file.write_all(line.as_bytes());
    }
    Ok(Exit::Command(0))
}

fn run_command(args: &RunArgs) -> anyhow::Result<Exit> {
    let messages = Messages::new(args.quiet);
    let invocation = Invocation::new(args)?;
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
    };
    if mode == CacheMode::Off {
        if run.adds_nothing() {
            return Ok(run.exec_in_place());
        }
        return run.execute(None, None, None, None);
    }
    let (key, stdin) = invocation.key(args, &run.program)?;
    let mut cache = Cache::open(args.cache_dir.clone(), messages);

    if mode.reads() && !args.refresh {
        if let Some(exit) = cache
            .lookup(&key, args.expire)
            .and_then(|e| run.replay(&cache, &e))
        {
            // The process ends now: finalising statements and closing a
            // read-only connection was 10% of a hit's instructions, and an
            // exit without a close is what SQLite survives on any crash.
            std::mem::forget(cache);
            return Ok(exit);
        }
    }
    let mut lock = None;
    if mode.writes() {
        lock = cache.wait_for_key(&key, args.no_wait, &run);
        // An identical run may have stored the result while we waited.
        if lock.is_some() && mode.reads() && !args.refresh {
            if let Some(exit) = cache
                .lookup(&key, args.expire)
                .and_then(|e| run.replay(&cache, &e))
            {
                return Ok(exit);
            }
        }
    }
    if lock.is_some() {
        cache.prepare_write(&key);
    }
    let (recording, job) = match lock {
        Some(_) => (cache.begin(&key, &invocation), cache.job_start(&key, &invocation)),
        None => (None, None),
    };
    let exit = run.execute(stdin, recording, Some(&cache), job);
    drop(lock);
    exit
}

/// The parts of one call that running and replaying share.
struct Run<'a> {
    args: &'a RunArgs,
    invocation: &'a Invocation,
    program: PathBuf,
    messages: Messages,
    style: Style,
    matcher: Option<LineMatcher>,
}

impl Run<'_> {
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
        quiet_display && self.args.timeout.is_none() && self.matcher.is_none()
    }

    /// Replaces lcrun with the command; returns only if that fails.
    fn exec_in_place(self) -> Exit {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(&self.program)
            .arg0(&self.invocation.argv[0])
            .args(&self.invocation.argv[1..])
            .exec();
        spawn_failed(&self.invocation.argv[0], &err)
    }

    /// Replays a hit and exits with its recorded status. `None` when none of
    /// it went out and there is nothing to replay: its stored output proved
    /// damaged (the entry is dropped), or an identical run replaced it since
    /// the lookup. The command then goes the miss path.
    fn replay(&self, cache: &Cache, entry: &Entry) -> Option<Exit> {
        let started = Instant::now();
        let mut out = RawOut::new();
        let store = cache.store.as_ref()?;
        let mut started_output = false;
        let result = store.replay(entry, |stream, bytes| {
            started_output = true;
            out.write(stream, bytes)?;
            if out.stdout_closed() {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {}
            // Replaced by an identical run or a refresh since the lookup:
            // that run's result is what to show, and the miss path finds it.
            Err(StoreError::Gone) if !started_output => return None,
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
                        return None;
                    }
                    let what = if damaged {
                        "was damaged"
                    } else {
                        "could not be read"
                    };
                    self.messages
                        .warn(format!("cached output {what} ({err}); running the command"));
                    return None;
                }
                // Part of the output is out already: running the command now
                // would print it twice, so this is an error of our own.
                error(format!("cannot replay cached output: {err}"));
                return Some(Exit::Usage);
            }
        }
        let _ = store.record_hit(&entry.key);
        if self.style == Style::Bar && std::io::stderr().is_terminal() {
            let saved = entry.duration().saturating_sub(started.elapsed());
            self.messages.warn(format!(
                "replayed from cache ({} old, saved {})",
                duration::short(entry.age()),
                duration::short(saved)
            ));
        }
        Some(Exit::Command(entry.meta.status))
    }

    /// Runs the command live, recording it when `recording` is given.
    fn execute(
        self,
        stdin: Option<std::fs::File>,
        recording: Option<Recording<'_>>,
        cache: Option<&Cache>,
        job: Option<(Jobs, String)>,
    ) -> anyhow::Result<Exit> {
        let progress_file = tempfile::Builder::new()
            .prefix("lcrun-progress-")
            .tempfile()
            .context("cannot create the progress file")?;
        let mut observer = RunObserver {
            display: Display::new(
                self.style,
                &self.invocation.label(),
                self.args.interval,
                self.matcher,
            ),
            recording,
            progress: ProgressFile::open(progress_file.path()).ok(),
            messages: self.messages,
            job: job.as_ref().map(|(jobs, id)| Publisher::new(jobs, id)),
        };
        let spec = Job {
            program: self.program,
            argv: self.invocation.argv.clone(),
            stdin,
            env: vec![(
                "LCRUN_PROGRESS".into(),
                progress_file.path().as_os_str().to_owned(),
            )],
            timeout: self.args.timeout,
            kill_after: self.args.kill_after,
        };
        let started = Instant::now();
        let result = runner::run(spec, &mut observer);
        observer.tick();
        observer.display.finish();
        let duration = started.elapsed();
        let ending = match result {
            Ok(ending) => ending,
            Err(RunError::Spawn(err)) => {
                if let Some(recording) = observer.recording.take() {
                    let _ = recording.abandon();
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
        let (exit, storable) = match ending {
            Ending::Exited(status) => {
                let exit = Exit::from_status(status);
                let ok = status.code() == Some(0) || (self.args.cache_failures && status.code().is_some());
                (exit, ok)
            }
            Ending::Cancelled(signal) => {
                self.messages
                    .warn(format!("cancelled ({}); nothing cached", signal_name(signal)));
                (Exit::Cancelled(signal), false)
            }
            Ending::TimedOut => {
                let limit = self.args.timeout.map(duration::short).unwrap_or_default();
                self.messages
                    .warn(format!("timed out after {limit}; nothing cached"));
                (Exit::TimedOut, false)
            }
        };
        if let Some(recording) = observer.recording.take() {
            let result = if storable {
                recording.finish(exit.code(), duration)
            } else {
                recording.abandon()
            };
            if let (Err(err), Some(cache)) = (result, cache) {
                cache.store_failed(&err);
            }
        }
        if let Some((jobs, id)) = &job {
            let state = match ending {
                Ending::Exited(status) if status.success() => "done",
                Ending::Exited(_) => "failed",
                Ending::Cancelled(_) | Ending::TimedOut => "cancelled",
            };
            let _ = jobs.finish(id, state, exit.code());
        }
        Ok(exit)
    }
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
        _ => "signal",
    }
}

/// How often a running job's progress is published to its waiters.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

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
        if *state != self.published && self.at.elapsed() >= PUBLISH_EVERY {
            self.at = Instant::now();
            self.published = state.clone();
            let _ = self.jobs.progress(self.id, state);
        }
    }
}

/// Streams output to the display and into the recording.
struct RunObserver<'s> {
    display: Display,
    recording: Option<Recording<'s>>,
    progress: Option<ProgressFile>,
    messages: Messages,
    job: Option<Publisher<'s>>,
}

impl Observer for RunObserver<'_> {
    fn output(&mut self, stream: Stream, bytes: &[u8]) {
        self.display.output(stream, bytes);
        if let Some(recording) = &mut self.recording {
            if let Err(err) = recording.write(stream, bytes) {
                // A full disk, say: the command goes on, uncached.
                self.messages.warn(format!(
                    "cannot store the result ({err}); the command goes on uncached"
                ));
                if let Some(recording) = self.recording.take() {
                    let _ = recording.abandon();
                }
            }
        }
    }

    fn tick(&mut self) {
        if let Some(progress) = &mut self.progress {
            for update in progress.updates() {
                self.display.progress(update);
            }
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
    store: Option<Store>,
    messages: Messages,
    warned: std::cell::Cell<bool>,
}

impl Cache {
    fn open(dir: Option<PathBuf>, messages: Messages) -> Cache {
        let mut cache = Cache {
            store: None,
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
                cache.store = Some(store);
            }
            Err(StoreError::Untrusted(why)) => {
                cache.warn(&format!("not using the cache in {}: {why}", dir.display()));
            }
            Err(err) => cache.warn(&format!("cannot open the cache in {}: {err}", dir.display())),
        }
        cache
    }

    /// Reports a failure to store the result; a damaged database is moved
    /// aside, so the next run starts a new one.
    fn store_failed(&self, err: &StoreError) {
        let note = match &self.store {
            Some(store) if err.is_corrupt() => store.set_aside(err),
            _ => None,
        };
        match note {
            Some(note) => self.messages.warn(note),
            None => self.warn(&format!("cannot store the result: {err}")),
        }
    }

    /// Warns, once per run, that the cache is not used.
    fn warn(&self, what: &str) {
        if !self.warned.replace(true) {
            self.messages.warn(format!("{what}; running uncached"));
        }
    }

    fn dir(&self) -> Option<&Path> {
        self.store.as_ref().map(Store::dir)
    }

    /// The fresh entry for `key`, if any.
    fn lookup(&mut self, key: &Key, expire: Option<Duration>) -> Option<Entry> {
        let store = self.store.as_ref()?;
        match store.lookup(&key.hex) {
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
                self.store = None;
                None
            }
        }
    }

    /// Moves a database that `err` showed damaged aside and opens a new one
    /// (or, when another process did that first, opens its new one).
    fn recover(&mut self, err: &StoreError) {
        let Some(store) = self.store.take() else {
            return;
        };
        match store.recover(err) {
            Ok((store, note)) => {
                if let Some(note) = note {
                    self.messages.warn(note);
                }
                self.store = Some(store);
            }
            Err(again) => self.warn(&format!("cache database is damaged ({again})")),
        }
    }

    /// Becomes the one process that runs `key`, waiting while an identical
    /// run holds it, and showing that run's progress. `None` means run
    /// unrecorded: `--no-wait` found it busy, or no lock could be had at all.
    fn wait_for_key(&mut self, key: &Key, no_wait: bool, run: &Run<'_>) -> Option<KeyLock> {
        let dir = self.dir()?.to_owned();
        let mut display: Option<Display> = None;
        let mut polled = Instant::now() - PUBLISH_EVERY;
        let mut jobs: Option<Jobs> = None;
        let claim = loop {
            match KeyLock::try_acquire(&dir, &key.hex) {
                Ok(Some(lock)) => break Some(lock),
                Ok(None) if no_wait => break None,
                Ok(None) => {
                    let display = display.get_or_insert_with(|| {
                        self.messages.warn("waiting for an identical run in progress");
                        let label = format!("waiting: {}", run.invocation.label());
                        Display::new(run.style, &label, run.args.interval, None).waiting()
                    });
                    if polled.elapsed() >= PUBLISH_EVERY {
                        polled = Instant::now();
                        if jobs.is_none() {
                            jobs = Jobs::open(&dir).ok();
                        }
                        let job = jobs.as_ref().and_then(|j| j.running(&key.hex).ok().flatten());
                        if let Some(job) = job {
                            display.set_state(job.progress);
                        }
                    }
                    display.tick();
                    std::thread::sleep(WAIT_POLL);
                }
                Err(err) => {
                    self.warn(&format!("cannot lock the cache entry: {err}"));
                    self.store = None;
                    break None;
                }
            }
        };
        if let Some(mut display) = display {
            display.finish();
        }
        claim
    }

    /// Registers this process as the one running `key`.
    fn job_start(&self, key: &Key, invocation: &Invocation) -> Option<(Jobs, String)> {
        let jobs = Jobs::open(self.dir()?).ok()?;
        let id = jobs.start(&key.hex, &invocation.label()).ok()?;
        Some((jobs, id))
    }

    /// Readies the store for a recording of `key` (see
    /// [`Store::clean_abandoned`]); a damaged database found on the way is
    /// recovered, and the work done again on the new one.
    fn prepare_write(&mut self, key: &Key) {
        let Some(store) = &self.store else {
            return;
        };
        match store.clean_abandoned(&key.hex) {
            Err(err) if err.is_corrupt() => {
                self.recover(&err);
                if let Some(store) = &self.store {
                    let _ = store.clean_abandoned(&key.hex);
                }
            }
            // A failure here is met again, and reported, by `begin`.
            _ => {}
        }
    }

    /// Starts recording, or warns and returns `None`.
    fn begin(&self, key: &Key, invocation: &Invocation) -> Option<Recording<'_>> {
        let store = self.store.as_ref()?;
        match store.begin(key, &invocation.label(), &invocation.cwd.to_string_lossy()) {
            Ok(recording) => Some(recording),
            Err(err) => {
                self.warn(&format!("cannot write the cache: {err}"));
                None
            }
        }
    }
}
