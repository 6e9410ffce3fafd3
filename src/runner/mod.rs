//! Running the command as it would run bare: in the caller's process group
//! and job, so the terminal's signals, job control (Ctrl-Z, `fg`, `bg`) and
//! terminal reads reach it with no help from lcrun, which never moves the
//! terminal. One loop on the calling thread polls the command's stdout and
//! stderr and lcrun's signals, hands output in arrival order to one observer
//! (which streams it live and records it), and reaps what ends.
//!
//! When lcrun itself must end the command's tree (timeout, `--kill-after`, a
//! second Ctrl-C, a signal sent to lcrun alone) it finds the tree in /proc
//! ([`tree`]); the signals it hears are in [`signals`].

pub mod signals;
pub mod tree;

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::output::Stream;
use signals::{Caught, Signals};

/// The variable that marks every process of a job with its id, so that a
/// run taking over from an owner that died can end what the owner left.
pub const JOB_VAR: &str = "LCRUN_JOB";

/// How often the observer's tick runs while the command is quiet: the
/// latency of progress updates and heartbeats.
const TICK: Duration = Duration::from_millis(50);

/// Size of one read from the command's pipes.
const READ_BYTES: usize = 256 * 1024;

/// Pipe capacity asked for: fewer wake-ups of the command and of us per
/// megabyte than the default 64 KiB (Linux lets anyone have 1 MiB).
const PIPE_BYTES: libc::c_int = 1024 * 1024;

/// After the command has exited, how long lcrun waits for output still on
/// its way to the pipes (a background `echo` of a script that just ended).
/// A daemon that keeps the pipes open does not hold lcrun longer; what it
/// writes later is not captured. What the pipes already hold is always read
/// to the end, however slowly lcrun's own reader takes it (a paused
/// `| less`): see [`DRAIN_BYTES`].
const DRAIN: Duration = Duration::from_millis(150);

/// Past [`DRAIN`], lcrun reads on while the pipes have data, up to this
/// much after the command's exit: what both pipes can hold, and a read
/// that was in hand. Only a daemon writing on could bring more.
const DRAIN_BYTES: usize = 2 * (PIPE_BYTES as usize + READ_BYTES);

/// A cancelling signal repeated within this time is the same request, not a
/// second one that kills at once: `timeout(1)` and `kill 0` signal lcrun
/// both directly and through its process group.
const SAME_REQUEST: Duration = Duration::from_millis(200);

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

/// Whether output handed to the observer could go on to its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// It went out; keep reading.
    Delivered,
    /// Its reader is gone or failed: lcrun closes its end of the command's
    /// pipe, so the command's next write fails as it would bare (SIGPIPE).
    Refused,
}

/// What the runner tells the caller while the command runs. Calls come on the
/// caller's thread, in the order the bytes were read.
pub trait Observer {
    /// A chunk of the command's output.
    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Delivery;
    /// Where the next read of `stream` may go instead of the runner's own
    /// buffer, to spare a copy; what is read there is handed back to
    /// [`Observer::output_in_room`]. None: the runner's buffer, and
    /// [`Observer::output`].
    fn room(&mut self, _stream: Stream) -> Option<&mut [u8]> {
        None
    }
    /// The next `n` bytes of the command's output, read into
    /// [`Observer::room`].
    fn output_in_room(&mut self, _stream: Stream, _n: usize) -> Delivery {
        Delivery::Delivered
    }
    /// Called at least every 50 ms (the loop's tick) while the command runs.
    fn tick(&mut self) {}
    /// The command could not start for a limit of tasks (EAGAIN): ends the
    /// threads the observer runs for itself, so the command may take their
    /// place. Whether there was any.
    fn give_up_threads(&mut self) -> bool {
        false
    }
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

/// Runs `job` to its end, reporting output to `observer`. `signals` are
/// the caller's, installed before this is called so that no signal falls
/// between the spawn and the loop (exec resets the handlers in the child,
/// and leaves what was ignored ignored), and kept by it after the command's
/// end, for lcrun's own work then (storing the outputs).
pub fn run(mut job: Job, signals: &Signals, observer: &mut dyn Observer) -> Result<Ending, RunError> {
    tree::become_subreaper();
    let stdin = job.stdin.take();
    let child = spawn(&job, stdin, signals).map_err(RunError::Spawn)?;
    let started = Instant::now();
    let mut run = Supervision {
        me: std::process::id() as libc::pid_t,
        child: child.pid,
        status: None,
        exited_at: None,
        cancel: None,
        deadline: job.timeout.map(|t| started + t),
        kill_after: job.kill_after,
        // SAFETY: plain queries of our own process.
        session_leader: unsafe { libc::getsid(0) == libc::getpid() },
    };
    let mut pipes = child.pipes;
    let mut buf = vec![0u8; READ_BYTES];
    // Bytes read since the command exited.
    let mut drained = 0usize;
    let mut next_tick = Instant::now() + TICK;
    loop {
        let wake = [
            Some(next_tick),
            run.deadline.filter(|_| run.cancel.is_none()),
            run.cancel.as_ref().filter(|c| !c.killed).map(|c| c.kill_at),
            run.exited_at.map(|t| t + DRAIN),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next_tick);
        let ready = poll(signals, &pipes, wake)?;
        let now = Instant::now();

        // Signals first: the one that ended the command arrives with its exit.
        // Children are reaped on SIGCHLD, with the tick as a fallback.
        let mut reap = now >= next_tick;
        if ready.signals {
            for caught in signals.take() {
                reap |= caught.signal == libc::SIGCHLD;
                run.on_signal(caught);
            }
        }
        if reap {
            run.reap()?;
        }
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            if !ready.pipes[i] {
                continue;
            }
            let Some(pipe) = &pipes[i] else { continue };
            let room = observer.room(stream);
            let in_room = room.is_some();
            let into = room.unwrap_or(&mut buf);
            // SAFETY: reads into a buffer we hold from a pipe we own.
            let n = unsafe { libc::read(pipe.as_raw_fd(), into.as_mut_ptr().cast(), into.len()) };
            match n {
                0 => pipes[i] = None,
                n if n > 0 => {
                    if run.exited_at.is_some() {
                        drained += n as usize;
                    }
                    // A reader that stopped reading blocks the write, and
                    // must not keep the loop from a deadline.
                    let act_at = run.act_at();
                    if act_at.is_some() {
                        signals::act_at(act_at);
                    }
                    let delivery = if in_room {
                        observer.output_in_room(stream, n as usize)
                    } else {
                        observer.output(stream, &buf[..n as usize])
                    };
                    if act_at.is_some() {
                        signals::act_at(None);
                    }
                    if delivery == Delivery::Refused {
                        pipes[i] = None;
                    }
                }
                _ => match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                    _ => pipes[i] = None,
                },
            }
        }

        if run.status.is_some() {
            if run.exited_at.is_none() && run.cancel.is_some() {
                // The command is gone; what it leaves of a cancelled job
                // goes too, and with it the pipes' last writers.
                run.kill_tree();
            }
            let exited_at = *run.exited_at.get_or_insert(now);
            // Time spent blocked writing to a slow reader is no reason to
            // leave bytes the command wrote behind in the pipes: past the
            // drain time, stop only once they are empty (or only a daemon
            // could still be filling them).
            let settled = || {
                drained > DRAIN_BYTES
                    || poll(signals, &pipes, Instant::now()).is_ok_and(|r| !r.pipes.iter().any(|&p| p))
            };
            if pipes.iter().all(Option::is_none) || (now >= exited_at + DRAIN && settled()) {
                break;
            }
        }
        if run.cancel.is_none() && run.deadline.is_some_and(|d| now >= d) {
            run.cancel = Some(Cancel::new(Ending::TimedOut, run.kill_after));
            run.signal_tree(libc::SIGTERM);
        }
        if let Some(c) = &mut run.cancel {
            if !c.killed && now >= c.kill_at {
                c.killed = true;
                run.kill_tree();
            }
        }
        if now >= next_tick {
            next_tick = now + TICK;
            observer.tick();
        }
    }
    if run.cancel.is_some() {
        // Whatever forked since the kill above.
        run.kill_tree();
        run.reap()?;
    }
    Ok(match (run.cancel, run.status) {
        (Some(c), _) => c.ending,
        (None, Some(status)) => Ending::Exited(status),
        (None, None) => return Err(io::Error::other("the command's status was lost").into()),
    })
}

/// The started command: its pid and lcrun's ends of its stdout and stderr.
struct Child {
    pid: libc::pid_t,
    pipes: [Option<OwnedFd>; 2],
}

fn spawn(job: &Job, stdin: Option<File>, signals: &Signals) -> io::Result<Child> {
    let mut command = Command::new(&job.program);
    command
        .arg0(&job.argv[0])
        .args(&job.argv[1..])
        .envs(job.env.iter().map(|(k, v)| (k, v)));
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(stdin.map_or_else(Stdio::inherit, Stdio::from));
    // SAFETY: plain query of our own pid.
    let parent = unsafe { libc::getpid() };
    let sigpipe_ignored = signals::sigpipe_ignored();
    let ignored = signals.ignored().to_vec();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // The command dies with lcrun (a SIGKILLed owner must not leave
            // it running while a waiter starts a second copy). If lcrun died
            // before the prctl, the command is an orphan already.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != parent {
                libc::_exit(128 + libc::SIGKILL);
            }
            // std gives every child the default SIGPIPE; a command whose
            // caller ignored it gets it ignored, as it would bare.
            if sigpipe_ignored {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            }
            for &signal in &ignored {
                libc::signal(signal, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pipes = [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ];
    for pipe in pipes.iter().flatten() {
        let fd = pipe.as_raw_fd();
        // SAFETY: fcntl on pipes we own. The pipe size is a wish; non-blocking
        // reads let one thread serve both pipes and the signals.
        unsafe {
            libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES);
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    // The child is reaped by `Supervision::reap`, never through std's handle.
    Ok(Child {
        pid: child.id() as libc::pid_t,
        pipes,
    })
}

/// What [`poll`] found ready: readable, closed or failed.
struct Ready {
    signals: bool,
    pipes: [bool; 2],
}

/// Waits until a pipe or the signal pipe is ready, or until `wake`.
fn poll(signals: &Signals, pipes: &[Option<OwnedFd>; 2], wake: Instant) -> io::Result<Ready> {
    let mut fds = [signals.fd(), -1, -1].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    for (i, pipe) in pipes.iter().enumerate() {
        // A negative fd is skipped by poll.
        fds[i + 1].fd = pipe.as_ref().map_or(-1, AsRawFd::as_raw_fd);
    }
    let timeout = wake.saturating_duration_since(Instant::now());
    // Rounded up, so the loop does not spin through the last millisecond.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: poll reads and writes exactly the three pollfd structs given.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, ms) } < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
        // A signal's handler ran: its record is in the pipe.
        return Ok(Ready {
            signals: true,
            pipes: [false; 2],
        });
    }
    Ok(Ready {
        signals: fds[0].revents != 0,
        pipes: [fds[1].revents != 0, fds[2].revents != 0],
    })
}

/// What the loop knows of the command while it runs.
struct Supervision {
    me: libc::pid_t,
    child: libc::pid_t,
    status: Option<ExitStatus>,
    exited_at: Option<Instant>,
    cancel: Option<Cancel>,
    deadline: Option<Instant>,
    kill_after: Duration,
    session_leader: bool,
}

impl Supervision {
    /// The command's processes: lcrun's descendants, and the command itself
    /// until it is reaped, should /proc be unreadable.
    fn tree(&self) -> Vec<libc::pid_t> {
        let mut pids = tree::descendants(self.me);
        if self.status.is_none() && !pids.contains(&self.child) {
            pids.push(self.child);
        }
        pids
    }

    fn signal_tree(&self, signal: i32) {
        for pid in self.tree() {
            // SAFETY: signalling a process of the command's tree.
            unsafe { libc::kill(pid, signal) };
        }
    }

    fn kill_tree(&self) {
        tree::kill_until_none(|| self.tree());
    }

    /// When the loop must act next, whatever else happens.
    fn act_at(&self) -> Option<Instant> {
        match &self.cancel {
            None => self.deadline,
            Some(cancel) if !cancel.killed => Some(cancel.kill_at),
            Some(_) => None,
        }
    }

    fn on_signal(&mut self, caught: Caught) {
        let signal = caught.signal;
        if signal == libc::SIGCHLD {
            return; // reaped after every wake-up
        }
        // A terminal's signals (Ctrl-C, Ctrl-\) went to its foreground process
        // group, which the command shares with lcrun: it has them already. A
        // hangup is the exception when lcrun leads the session: the kernel
        // sends it to the session's leader alone, as it would the command bare.
        let reached_command = caught.by_kernel && !(signal == libc::SIGHUP && self.session_leader);
        if signals::PASS_ON.contains(&signal) {
            if !reached_command && self.status.is_none() {
                // SAFETY: signalling our own child, not yet reaped.
                unsafe { libc::kill(self.child, signal) };
            }
            return;
        }
        match &mut self.cancel {
            None => {
                self.cancel = Some(Cancel::new(Ending::Cancelled(signal), self.kill_after));
                if !reached_command {
                    self.signal_tree(signal);
                }
            }
            Some(cancel)
                if cancel.ending == Ending::Cancelled(signal) && cancel.at.elapsed() < SAME_REQUEST => {}
            // A second signal: no more grace.
            Some(cancel) => {
                cancel.killed = true;
                self.kill_tree();
            }
        }
    }

    /// Reaps every child that ended: the command, and the orphans that
    /// reparented to lcrun, so that none stays a zombie in a long run.
    fn reap(&mut self) -> io::Result<()> {
        loop {
            let mut raw = 0;
            // SAFETY: waitpid writes the status it is given.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            match pid {
                0 => return Ok(()),
                pid if pid > 0 => {
                    if pid == self.child {
                        self.status = Some(ExitStatus::from_raw(raw));
                    }
                }
                _ => {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::ECHILD) => return Ok(()),
                        Some(libc::EINTR) => {}
                        _ => return Err(err),
                    }
                }
            }
        }
    }
}

struct Cancel {
    ending: Ending,
    at: Instant,
    kill_at: Instant,
    killed: bool,
}

impl Cancel {
    fn new(ending: Ending, grace: Duration) -> Cancel {
        let at = Instant::now();
        Cancel {
            ending,
            at,
            kill_at: at + grace,
            killed: false,
        }
    }
}
