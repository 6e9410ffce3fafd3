//! The signals lcrun hears while a command runs, turned into records on a
//! pipe the run's loop polls beside the command's output. A signal lcrun
//! inherited as ignored (nohup's SIGHUP, SIGINT in a shell's `&` job) is left
//! ignored, so the command inherits it ignored too, as from a shell.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Signals that cancel the run.
pub const CANCEL: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Signals passed on to the command and otherwise left to it: sent to lcrun
/// alone they would kill it (their default action), and with it the command.
pub const PASS_ON: [i32; 3] = [libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

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

/// Handlers for [`CANCEL`], [`PASS_ON`] and SIGCHLD, in place until dropped.
pub struct Signals {
    read: OwnedFd,
    /// Kept open for the handler; closed after it is unhooked.
    _write: OwnedFd,
    /// Each signal handled and the action it had before.
    saved: Vec<(i32, libc::sigaction)>,
    /// lcrun was started with SIGCHLD ignored.
    sigchld_ignored: bool,
}

impl Signals {
    /// Installs the handlers. Signals found ignored stay ignored, except
    /// SIGCHLD: lcrun must wait for its child.
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
            sigchld_ignored: false,
        };
        for signal in CANCEL.into_iter().chain(PASS_ON).chain([libc::SIGCHLD]) {
            let old = current_action(signal)?;
            if old.sa_sigaction == libc::SIG_IGN {
                if signal != libc::SIGCHLD {
                    continue;
                }
                signals.sigchld_ignored = true;
            }
            // SAFETY: a zeroed sigaction is valid; the handler only calls
            // async-signal-safe functions.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
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

    /// Whether `signal` has a handler (it was not inherited ignored).
    pub fn handles(&self, signal: i32) -> bool {
        self.saved.iter().any(|(s, _)| *s == signal)
    }

    /// Whether the command must get SIGCHLD ignored back.
    pub fn sigchld_ignored(&self) -> bool {
        self.sigchld_ignored
    }

    /// The signals received since the last call, in order.
    pub fn take(&self) -> Vec<Caught> {
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
            caught.push(Caught {
                signal: record[0],
                by_kernel: record[1] == libc::SI_KERNEL,
            });
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        PIPE.store(-1, Ordering::SeqCst);
        for (signal, old) in &self.saved {
            // SAFETY: putting back the action this signal had.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
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
