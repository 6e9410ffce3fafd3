//! Running the command: spawned as the leader of its own process group so a
//! cancellation reaches every process it started; its stdout and stderr read
//! by two threads and handed, in arrival order, to one observer on the calling
//! thread (which streams them live and records them); SIGINT, SIGTERM and
//! SIGHUP turned into a cancellation with a grace period before SIGKILL.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::exfiltrator::origin::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;

use crate::output::Stream;

/// How often the loop wakes when the command is quiet: the latency of
/// reacting to a signal, a timeout or a progress update.
const TICK: Duration = Duration::from_millis(50);

/// Size of one read from the command's pipes.
const READ_BYTES: usize = 256 * 1024;

/// Pipe capacity asked for: fewer wake-ups of the command and of us per
/// megabyte than the default 64 KiB (Linux lets anyone have 1 MiB).
const PIPE_BYTES: libc::c_int = 1024 * 1024;

/// Reads in flight between the pipe readers and the observer; with
/// [`READ_BYTES`] this bounds the memory a fast command can make us hold.
const CHANNEL_DEPTH: usize = 8;

/// How often the loop looks for signals while output streams in.
const SIGNAL_POLL: Duration = Duration::from_millis(10);

/// After a cancelled command's leader has exited, how long stragglers that
/// escaped its process group may keep its pipes open before we stop reading.
const DRAIN_AFTER_CANCEL: Duration = Duration::from_secs(2);

/// What to run and how.
pub struct Job {
    /// The resolved program to execute.
    pub program: PathBuf,
    /// The full argv, `argv[0]` as the user wrote it.
    pub argv: Vec<OsString>,
    /// A file to feed as stdin (a spooled `stdin` cache-by); else ours.
    pub stdin: Option<File>,
    /// Extra environment for the command.
    pub env: Vec<(OsString, OsString)>,
    /// Cancel after this long.
    pub timeout: Option<Duration>,
    /// Grace period between the cancelling signal and SIGKILL.
    pub kill_after: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The command ended by itself.
    Exited(ExitStatus),
    /// A signal to lcrun cancelled it.
    Cancelled(i32),
    /// `--timeout` expired.
    TimedOut,
}

/// What the runner tells the caller while the command runs. Calls come on the
/// caller's thread, in the order the bytes were read.
pub trait Observer {
    /// A chunk of the command's output.
    fn output(&mut self, stream: Stream, bytes: &[u8]);
    /// Called at least every 50 ms (the loop's tick) while the command runs.
    fn tick(&mut self) {}
}

enum Msg {
    /// A buffer from the pool and how many of its bytes were read.
    Data(Stream, Vec<u8>, usize),
    Eof,
    Exited(io::Result<ExitStatus>),
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command could not be started.
    #[error("{0}")]
    Spawn(io::Error),
    /// Something failed while it ran.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Runs `job` to its end, reporting output to `observer`.
pub fn run(job: Job, observer: &mut dyn Observer) -> Result<Ending, RunError> {
    // Registered before the spawn so no signal falls between; exec resets
    // the handlers in the child.
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP])?;
    let terminal = Terminal::claimable();

    let mut command = Command::new(&job.program);
    command
        .arg0(&job.argv[0])
        .args(&job.argv[1..])
        .envs(job.env.iter().map(|(k, v)| (k, v)));
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(match job.stdin {
        Some(file) => Stdio::from(file),
        None => Stdio::inherit(),
    });
    if terminal.is_some() {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::setpgid(0, 0);
                // Take the terminal so an interactive command can read it;
                // ignore SIGTTOU for the call, as a job-control shell does.
                let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpid());
                libc::signal(libc::SIGTTOU, old);
                Ok(())
            });
        }
    } else {
        command.process_group(0);
    }
    let started = Instant::now();
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    for fd in [
        child.stdout.as_ref().map(|p| p.as_raw_fd()),
        child.stderr.as_ref().map(|p| p.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        // SAFETY: fcntl on a pipe we own; failure just keeps the default size.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
    }
    let group = Group::new(child.id() as i32, terminal);

    let (tx, rx) = mpsc::sync_channel(CHANNEL_DEPTH);
    let pool: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    for (stream, pipe) in [
        (
            Stream::Stdout,
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Stream::Stderr,
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        if let Some(pipe) = pipe {
            spawn_reader(stream, pipe, tx.clone(), Arc::clone(&pool));
        }
    }
    spawn_waiter(child, tx);

    let deadline = job.timeout.map(|t| started + t);
    let mut cancel: Option<Cancel> = None;
    let mut status: Option<ExitStatus> = None;
    let mut exited_at: Option<Instant> = None;
    let mut open_pipes = 2;
    let mut last_tick = Instant::now();
    let mut last_signal_check = Instant::now();
    let mut leftovers_killed = false;
    loop {
        let msg = match rx.recv_timeout(TICK) {
            Ok(Msg::Data(stream, buf, len)) => {
                observer.output(stream, &buf[..len]);
                if let Ok(mut pool) = pool.lock() {
                    pool.push(buf);
                }
                // The rest of the loop is periodic work, and looking for
                // signals costs a syscall: while output streams in, it runs
                // every SIGNAL_POLL, not after every read (11,000 reads for
                // 100 MB written by `head -c`).
                if last_signal_check.elapsed() < SIGNAL_POLL {
                    continue;
                }
                Err(RecvTimeoutError::Timeout)
            }
            other => other,
        };
        last_signal_check = Instant::now();
        // Signals first: the one that killed the command arrives with its exit.
        for origin in signals.pending() {
            if origin.process.is_some_and(|p| p.pid == std::process::id() as i32) {
                continue; // our own forward, delivered to us as a group member
            }
            match &cancel {
                None => {
                    cancel = Some(Cancel::new(Ending::Cancelled(origin.signal), job.kill_after));
                    // A terminal's Ctrl-C already reached the command's group
                    // when it owns the terminal; anything else is forwarded.
                    if !(group.owns_terminal() && matches!(origin.cause, Cause::Kernel)) {
                        group.signal(origin.signal);
                    }
                }
                Some(_) => group.kill(), // a second signal: no more grace
            }
        }
        match msg {
            // Data was handed on above.
            Ok(Msg::Data(..)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Msg::Eof) => open_pipes -= 1,
            Ok(Msg::Exited(result)) => {
                status = Some(result?);
                exited_at = Some(Instant::now());
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if cancel.is_some() && status.is_some() && !leftovers_killed {
            // The command is gone; whatever it left in its group is an
            // orphan of a cancelled job.
            leftovers_killed = true;
            group.kill();
        }
        if status.is_some() && open_pipes == 0 {
            break;
        }
        if cancel.is_none() && deadline.is_some_and(|d| Instant::now() >= d) {
            cancel = Some(Cancel::new(Ending::TimedOut, job.kill_after));
            group.signal(SIGTERM);
        }
        if let Some(c) = &mut cancel {
            if !c.killed && Instant::now() >= c.kill_at {
                c.killed = true;
                group.kill();
            }
            if exited_at.is_some_and(|t| t.elapsed() >= DRAIN_AFTER_CANCEL) {
                break;
            }
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            observer.tick();
        }
    }
    drop(group);
    Ok(match (cancel, status) {
        (Some(c), _) => c.ending,
        (None, Some(status)) => Ending::Exited(status),
        (None, None) => return Err(io::Error::other("the command's status was lost").into()),
    })
}

struct Cancel {
    ending: Ending,
    kill_at: Instant,
    killed: bool,
}

impl Cancel {
    fn new(ending: Ending, grace: Duration) -> Cancel {
        Cancel {
            ending,
            kill_at: Instant::now() + grace,
            killed: false,
        }
    }
}

fn spawn_reader(
    stream: Stream,
    mut pipe: Box<dyn Read + Send>,
    tx: mpsc::SyncSender<Msg>,
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    thread::spawn(move || {
        loop {
            // Pooled buffers keep their full length, so they are zeroed once,
            // when made, not after every read: a command writing a line at a
            // time made a 256 KiB memset per line.
            let mut buf = pool
                .lock()
                .ok()
                .and_then(|mut p| p.pop())
                .unwrap_or_else(|| vec![0; READ_BYTES]);
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Msg::Data(stream, buf, n)).is_err() {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(Msg::Eof);
    });
}

fn spawn_waiter(mut child: Child, tx: mpsc::SyncSender<Msg>) {
    thread::spawn(move || {
        let _ = tx.send(Msg::Exited(child.wait()));
    });
}

/// lcrun's place on a terminal it may hand to the command.
#[derive(Clone, Copy)]
struct Terminal {
    /// lcrun's process group when it started.
    own_group: libc::pid_t,
}

impl Terminal {
    /// The terminal is ours to hand over when stdin and stdout are one and
    /// our process group is its foreground group. When lcrun's stdout is a
    /// pipe (`lcrun -- cmd | less`), the reader at its end may need the
    /// terminal, so it is left alone.
    fn claimable() -> Option<Terminal> {
        use std::io::IsTerminal;
        if !(io::stdin().is_terminal() && io::stdout().is_terminal()) {
            return None;
        }
        // SAFETY: plain queries of our own process state.
        let (own_group, foreground, session, pid) = unsafe {
            (
                libc::getpgrp(),
                libc::tcgetpgrp(0),
                libc::getsid(0),
                libc::getpid(),
            )
        };
        // A session leader cannot join another process group, so it could not
        // hear the terminal's Ctrl-C once the command owned the terminal.
        (foreground == own_group && session != pid).then_some(Terminal { own_group })
    }
}

/// The command's process group. When lcrun handed it the terminal, lcrun
/// joins it too, so a Ctrl-C on the terminal reaches lcrun as well as every
/// process of the command; on drop the terminal goes back to lcrun's group.
struct Group {
    id: libc::pid_t,
    terminal: Option<Terminal>,
    joined: std::cell::Cell<bool>,
}

impl Group {
    fn new(leader: libc::pid_t, terminal: Option<Terminal>) -> Group {
        let group = Group {
            id: leader,
            terminal,
            joined: false.into(),
        };
        if terminal.is_some() {
            // SAFETY: process-group calls on our child and ourselves. The
            // child also made itself leader; doing it here too closes the
            // race with our join, as shells do.
            unsafe {
                libc::setpgid(leader, leader);
                if libc::setpgid(0, leader) == 0 {
                    group.joined.set(true);
                }
                with_sigttou_ignored(|| libc::tcsetpgrp(0, leader));
            }
        }
        group
    }

    fn owns_terminal(&self) -> bool {
        self.terminal.is_some()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling a process group we created.
        unsafe { libc::killpg(self.id, signal) };
    }

    /// SIGKILL for the whole group. lcrun first leaves it, if it joined.
    fn kill(&self) {
        self.leave();
        self.signal(libc::SIGKILL);
    }

    fn leave(&self) {
        if let (true, Some(terminal)) = (self.joined.get(), self.terminal) {
            // SAFETY: moving ourselves back to the group we came from (or a
            // new one of our own when it no longer exists) and giving it the
            // terminal back.
            unsafe {
                if libc::setpgid(0, terminal.own_group) != 0 {
                    libc::setpgid(0, 0);
                }
                let own = libc::getpgrp();
                with_sigttou_ignored(|| libc::tcsetpgrp(0, own));
            }
            self.joined.set(false);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Runs a terminal call that a background process group may make, with
/// SIGTTOU ignored so the kernel doesn't stop us for it.
unsafe fn with_sigttou_ignored<T>(call: impl FnOnce() -> T) -> T {
    // SAFETY: swapping a signal disposition and restoring it.
    let old = unsafe { libc::signal(libc::SIGTTOU, libc::SIG_IGN) };
    let result = call();
    unsafe { libc::signal(libc::SIGTTOU, old) };
    result
}
