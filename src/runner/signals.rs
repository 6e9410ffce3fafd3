//! The signals lcrun hears while a command runs, turned into records on a
//! pipe the run's loop polls beside the command's output. A signal lcrun
//! inherited as ignored (nohup's SIGHUP, SIGINT in a shell's `&` job) is left
//! ignored, so the command inherits it ignored too, as from a shell.
//!
//! A write to a reader that stopped reading blocks lcrun as it would block
//! the bare command; yet a signal to lcrun, or the timeout, must still end
//! the run as it would end the bare command. So the cancelling signals and
//! SIGALRM interrupt such a write (no `SA_RESTART`), and [`must_act`] tells
//! the writer to give up on that output rather than try again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Signals that cancel the run.
pub const CANCEL: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Signals passed on to the command and otherwise left to it: sent to lcrun
/// alone they would kill it (their default action), and with it the command.
pub const PASS_ON: [i32; 3] = [libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// Signals lcrun needs for itself, that the command gets as lcrun found
/// them: SIGCHLD to wait for the command, SIGALRM to interrupt a blocked
/// write when lcrun must act.
const OWN: [i32; 2] = [libc::SIGCHLD, libc::SIGALRM];

/// While a write is blocked and lcrun must act, SIGALRM repeats this often.
const NUDGE: Duration = Duration::from_millis(100);

/// A cancelling signal arrived that the loop has not taken yet.
static CANCEL_PENDING: AtomicBool = AtomicBool::new(false);

/// When lcrun must act next (a timeout, the end of a grace period), in
/// nanoseconds since [`epoch`]; `u64::MAX` for never.
static ACT_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// The write end of the current [`Signals`] pipe, for the handler; -1 when
/// none is installed.
static PIPE: AtomicI32 = AtomicI32::new(-1);

/// Whether lcrun was started with SIGPIPE ignored (see [`inherit_sigpipe`]).
static SIGPIPE_IGNORED: AtomicBool = AtomicBool::new(false);

/// Notes how lcrun found SIGPIPE at start-up, before ignoring it for itself:
/// a command started with SIGPIPE ignored gets it ignored again, as it would
/// bare; otherwise it gets the default back.
pub fn inherit_sigpipe(ignored: bool) {
    SIGPIPE_IGNORED.store(ignored, Ordering::Relaxed);
}

/// Whether the command must be started with SIGPIPE ignored.
pub fn sigpipe_ignored() -> bool {
    SIGPIPE_IGNORED.load(Ordering::Relaxed)
}

/// One signal lcrun received.
#[derive(Debug, Clone, Copy)]
pub struct Caught {
    /// Its number.
    pub signal: i32,
    /// Sent by the kernel (a terminal's Ctrl-C, a hangup), not by a process.
    pub by_kernel: bool,
}

/// Whether a blocked write should give up: a cancelling signal or a
/// deadline is waiting for the run's loop.
pub fn must_act() -> bool {
    CANCEL_PENDING.load(Ordering::Relaxed) || nanos(Instant::now()) >= ACT_AT.load(Ordering::Relaxed)
}

/// While output is written: when the loop must act next (`None`: only on a
/// signal). A write still blocked then is interrupted by SIGALRM, every
/// [`NUDGE`], until it gives up.
pub fn act_at(when: Option<Instant>) {
    ACT_AT.store(when.map_or(u64::MAX, nanos), Ordering::Relaxed);
    let first = when.map(|t| {
        t.saturating_duration_since(Instant::now())
            .max(Duration::from_micros(1))
    });
    arm(first, NUDGE);
}

/// Sets the real-time interval timer; `None` disarms it.
fn arm(first: Option<Duration>, every: Duration) {
    let timeval = |d: Duration| libc::timeval {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_value: timeval(first.unwrap_or_default()),
        it_interval: timeval(if first.is_some() { every } else { Duration::ZERO }),
    };
    // SAFETY: setitimer reads the struct given.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
}

/// Monotonic nanoseconds since the first call, for the atomics.
fn nanos(at: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_secs(1));
    at.saturating_duration_since(epoch)
        .as_nanos()
        .min(u64::MAX as u128 - 1) as u64
}

/// Handlers for [`CANCEL`], [`PASS_ON`], SIGCHLD and SIGALRM, in place until
/// dropped.
pub struct Signals {
    read: OwnedFd,
    /// Kept open for the handler; closed after it is unhooked.
    _write: OwnedFd,
    /// Each signal handled and the action it had before.
    saved: Vec<(i32, libc::sigaction)>,
    /// Signals lcrun handles for itself that it was started with ignored.
    ignored: Vec<i32>,
}

impl Signals {
    /// Installs the handlers. Signals found ignored stay ignored, except
    /// SIGCHLD and SIGALRM, which lcrun needs (see [`Signals::ignored`]).
    pub fn install() -> io::Result<Signals> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two descriptors it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just made and are owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        PIPE.store(write.as_raw_fd(), Ordering::SeqCst);
        let mut signals = Signals {
            read,
            _write: write,
            saved: Vec::new(),
            ignored: Vec::new(),
        };
        nanos(Instant::now());
        for signal in CANCEL.into_iter().chain(PASS_ON).chain(OWN) {
            let old = current_action(signal)?;
            if old.sa_sigaction == libc::SIG_IGN {
                if !OWN.contains(&signal) {
                    continue;
                }
                signals.ignored.push(signal);
            }
            // Cancelling signals and SIGALRM interrupt a blocked write; the
            // others let the calls they interrupt go on.
            let interrupts = CANCEL.contains(&signal) || signal == libc::SIGALRM;
            // SAFETY: a zeroed sigaction is valid; the handler only calls
            // async-signal-safe functions.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | if interrupts { 0 } else { libc::SA_RESTART };
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            signals.saved.push((signal, old));
        }
        Ok(signals)
    }

    /// The descriptor that becomes readable when a signal arrived.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Signals lcrun handles that it was started with ignored: the command
    /// must get them ignored again.
    pub fn ignored(&self) -> &[i32] {
        &self.ignored
    }

    /// The signals received since the last call, in order.
    pub fn take(&self) -> Vec<Caught> {
        CANCEL_PENDING.store(false, Ordering::Relaxed);
        let mut caught = Vec::new();
        let mut record = [0i32; 2];
        loop {
            let size = std::mem::size_of_val(&record);
            // SAFETY: reads at most `size` bytes into `record`.
            let n = unsafe { libc::read(self.fd(), record.as_mut_ptr().cast(), size) };
            if n != size as isize {
                // Empty (EAGAIN): records are written whole, one per write.
                return caught;
            }
            if record[0] == libc::SIGALRM {
                continue; // it only interrupted a write
            }
            caught.push(Caught {
                signal: record[0],
                by_kernel: record[1] == libc::SI_KERNEL,
            });
        }
    }
}

impl Signals {
    /// Puts back the actions the signals had, then returns those that came
    /// and were not taken yet: from here on a signal has its own action
    /// (SIGINT ends lcrun), and none that came before is lost.
    pub fn close(mut self) -> Vec<Caught> {
        self.restore();
        self.take()
    }

    fn restore(&mut self) {
        ACT_AT.store(u64::MAX, Ordering::Relaxed);
        // SIGALRM comes last: the timer is disarmed once no handler can arm
        // it again, so no alarm outlives its handler and kills lcrun.
        for (signal, old) in std::mem::take(&mut self.saved) {
            if signal == libc::SIGALRM {
                arm(None, Duration::ZERO);
            }
            // SAFETY: putting back the action this signal had.
            unsafe { libc::sigaction(signal, &old, std::ptr::null_mut()) };
        }
        // Only now: a signal the handler took while the actions were put
        // back still goes to the pipe (which `close` reads), not nowhere.
        PIPE.store(-1, Ordering::SeqCst);
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.restore();
        CANCEL_PENDING.store(false, Ordering::Relaxed);
    }
}

fn current_action(signal: i32) -> io::Result<libc::sigaction> {
    // SAFETY: sigaction with no new action only reads the current one.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(old)
    }
}

/// The handler: one record (signal, si_code) per signal, written whole to
/// the pipe; nothing else, since only async-signal-safe calls are allowed.
extern "C" fn on_signal(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: errno is thread-local; it is put back so the interrupted code
    // never sees the handler's.
    let errno = unsafe { *libc::__errno_location() };
    if CANCEL.contains(&signal) {
        CANCEL_PENDING.store(true, Ordering::Relaxed);
        // Should the signal come just before a write that then blocks, the
        // write is interrupted a second later (alarm is async-signal-safe).
        // SAFETY: see above.
        unsafe { libc::alarm(1) };
    }
    let fd = PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
        let code = if info.is_null() {
            0
        } else {
            unsafe { (*info).si_code }
        };
        let record = [signal, code];
        // SAFETY: write(2) is async-signal-safe; a full pipe drops the record
        // (thousands of signals pending: the loop is behind anyway).
        unsafe { libc::write(fd, record.as_ptr().cast(), std::mem::size_of_val(&record)) };
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}
