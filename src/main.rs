//! The `lcrun` binary: parses the command line, runs, and turns every failure
//! into one `lcrun: ...` line and the right exit status.
//!
//! `main` is the C entry point, not Rust's. Rust's start-up looks up the main
//! thread's stack by parsing /proc/self/maps and installs stack-overflow
//! handlers on an alternate signal stack: about a tenth of the instructions
//! of a whole cache hit. Of what it does, lcrun needs two things, done in
//! [`start_up`]; `lcrun` itself is the ordinary `run` that returns a status.
#![no_main]

use std::ffi::{c_char, c_int};
use std::io::Write;

use clap::error::ErrorKind;
use lcrun::cli::Cli;
use lcrun::messages::error;
use lcrun::usage;
use lcrun::Exit;

/// The process's entry point, called by the C runtime.
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    start_up();
    let exit = lcrun();
    // Rust's own exit path would flush stdout; help and version text go
    // through its buffer.
    let _ = std::io::stdout().flush();
    if let Exit::Cancelled(signal) = exit {
        // Cleaned up: now die by the signal, so the caller (a shell loop,
        // make) sees a signal death and stops, as with the bare command.
        lcrun::exit::die_by(signal);
    }
    c_int::from(exit.code())
}

/// What Rust's start-up does that lcrun relies on.
fn start_up() {
    // A closed standard descriptor would be handed to the next file lcrun
    // opens (a lock, a data file), and output meant for the terminal would
    // land in it. Each closed one is filled with /dev/null, opened the other
    // way round (stdin write-only, stdout and stderr read-only), so that
    // using it still fails with EBADF, as the closed descriptor did: output
    // written to a closed stdout is a write error (`lcrun -- seq 3 >&-`
    // fails and caches nothing, as `seq 3 >&-` fails), not a success.
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes exactly the three pollfd structs given.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } >= 0 {
        for pollfd in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
            // SAFETY: a plain open of a constant path. The lowest free
            // descriptor is the closed one; lcrun has opened nothing yet.
            let flags = if pollfd.fd == 0 {
                libc::O_WRONLY
            } else {
                libc::O_RDONLY
            };
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), flags) };
            debug_assert!(fd < 0 || fd == pollfd.fd);
        }
    }
    // A reader that goes away (`lcrun ... | head`) is an EPIPE lcrun handles
    // (it closes the command's pipe so the command meets it too, and keeps
    // nothing), not a signal that kills it before it can clean up. Commands
    // get the disposition lcrun was given back: std resets SIGPIPE to the
    // default in every child, and the runner ignores it again when lcrun's
    // caller had it ignored.
    // SAFETY: setting a standard signal to be ignored.
    let inherited = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    lcrun::runner::signals::inherit_sigpipe(inherited == libc::SIG_IGN);
}

/// Parses the command line and runs it.
fn lcrun() -> Exit {
    // A shell asking for completions (one getenv on every other run).
    if lcrun::complete::requested() {
        if let Some(exit) = lcrun::complete::run() {
            return exit;
        }
    }
    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) if outside_lcrun_progress(&err) => return Exit::Command(0),
        Err(err) => return usage_error(err),
    };
    match lcrun::run(cli) {
        Ok(exit) => exit,
        Err(err) => {
            error(format!("{err:#}"));
            Exit::Usage
        }
    }
}

/// `lcrun progress` outside lcrun does nothing and exits 0 whatever its
/// arguments, even when a run option's variable (`LCRUN_EXPIRE=bogus`)
/// makes the command line as a whole unparsable: scripts that report
/// progress must run unchanged without lcrun.
fn outside_lcrun_progress(err: &clap::Error) -> bool {
    let helper = std::env::args_os().nth(1).is_some_and(|a| a == "progress");
    let outside = std::env::var_os("LCRUN_PROGRESS").is_none_or(|p| p.is_empty());
    helper && outside && !matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
}

/// Help and version print as usual; any other parse error becomes one line
/// and status 125, so it cannot be mistaken for the command's own status.
fn usage_error(err: clap::Error) -> Exit {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            Exit::Command(0)
        }
        _ => {
            let args: Vec<_> = std::env::args_os().collect();
            error(usage::one_line(&err, &args));
            Exit::Usage
        }
    }
}
