//! Exit statuses lcrun returns, following the conventions of `timeout`, `env`
//! and `docker run` (SPEC §1). One type so every path agrees on the numbers.

use std::process::ExitStatus;

/// Why lcrun ends with the status it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command ran (live or replayed) and ended with this code.
    Command(u8),
    /// A signal cancelled the job: lcrun dies by it after its cleanup, and a
    /// shell reports 128 + the signal's number.
    Cancelled(i32),
    /// `--timeout` expired.
    TimedOut,
    /// lcrun's own error: bad option, bad cache-by expression, ...
    Usage,
    /// The command exists but cannot be executed.
    NotExecutable,
    /// The command does not exist.
    NotFound,
}

impl Exit {
    /// The numeric status a shell sees.
    pub fn code(self) -> u8 {
        match self {
            Exit::Command(code) => code,
            Exit::Cancelled(signal) => signal_status(signal),
            Exit::TimedOut => 124,
            Exit::Usage => 125,
            Exit::NotExecutable => 126,
            Exit::NotFound => 127,
        }
    }

    /// The status a finished child reports: its own code, or 128+N when signal
    /// N killed it.
    pub fn from_status(status: ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Command(code as u8),
            (None, Some(signal)) => Exit::Command(signal_status(signal)),
            (None, None) => Exit::Command(1),
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// Ends the process by `signal`, its default action restored and unblocked:
/// how a cancelled lcrun ends after its cleanup. Returns only if the signal
/// did not end the process.
pub fn die_by(signal: i32) {
    // SAFETY: restoring a default action, unblocking and raising a signal.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
}

/// `128 + signal`, saturating for the (non-Linux) case of huge signal numbers.
pub fn signal_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn table_of_spec_section_1() {
        assert_eq!(Exit::Cancelled(libc::SIGINT).code(), 130);
        assert_eq!(Exit::Cancelled(libc::SIGTERM).code(), 143);
        assert_eq!(Exit::Cancelled(libc::SIGHUP).code(), 129);
        assert_eq!(Exit::TimedOut.code(), 124);
        assert_eq!(Exit::Usage.code(), 125);
        assert_eq!(Exit::NotExecutable.code(), 126);
        assert_eq!(Exit::NotFound.code(), 127);
    }

    #[test]
    fn child_status_maps_to_code_or_128_plus_signal() {
        // A raw wait status: exit code in the high byte, signal in the low bits.
        assert_eq!(Exit::from_status(ExitStatus::from_raw(3 << 8)), Exit::Command(3));
        assert_eq!(
            Exit::from_status(ExitStatus::from_raw(libc::SIGKILL)),
            Exit::Command(137)
        );
    }
}
