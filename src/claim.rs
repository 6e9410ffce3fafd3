//! Claiming a key: becoming the one process that runs it, or waiting, with
//! the running job's progress on screen, while an identical run holds it.
//! The wait is bounded: by `--timeout`, and by the holder's signs of life,
//! so a stuck holder (a stopped lcrun, a process that is not lcrun at all)
//! is not waited on forever.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::deadline::Deadline;
use crate::display::{Display, Style};
use crate::jobs::Jobs;
use crate::lock::{KeyLock, WaitMark};
use crate::messages::Messages;
use crate::store::now_ms;

/// How often a waiter tries the lock again.
const POLL: Duration = Duration::from_millis(50);

/// How often a waiter reads the running job's progress.
const READ_PROGRESS: Duration = Duration::from_millis(250);

/// How long the holder of a key may show no sign of life before a waiter
/// stops waiting and runs the command uncached. An owner lcrun refreshes its
/// job row about every second while its command runs (see
/// `app::HEARTBEAT`); ten missed in a row means it is stopped, hung, or not
/// an lcrun at all. Short against a user's patience, long against any
/// pause of a live owner (storing its result is bounded at 3 s).
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

/// How a waiter shows itself.
pub struct Waiting<'a> {
    /// The display style of the run.
    pub style: Style,
    /// The command, for the display.
    pub label: &'a str,
    /// The heartbeat interval, if any.
    pub interval: Option<Duration>,
    /// Where messages go.
    pub messages: Messages,
}

/// The result of claiming a key.
pub enum Claim {
    /// This process holds the key: an identical run may have left its
    /// outcome meanwhile; if not, it runs the command.
    Owner(KeyLock),
    /// `--no-wait` found the key held: run now, unrecorded.
    Busy,
    /// The holder showed no sign of life for [`STUCK_AFTER`]: run unrecorded.
    Stuck,
    /// `--timeout` expired while waiting.
    TimedOut,
    /// No lock could be had at all.
    Failed(std::io::Error),
}

/// Takes the lock on `key` in `dir`, waiting while an identical run holds
/// it and showing that run's progress.
pub fn claim(dir: &Path, key: &str, no_wait: bool, deadline: Deadline, how: &Waiting<'_>) -> Claim {
    let mut display: Option<Display> = None;
    let mut jobs: Option<Jobs> = None;
    // The first wait reads the job at once, then every READ_PROGRESS.
    let mut read_at: Option<Instant> = None;
    // The last sign of life of the holder: our arrival, at first.
    let started = Instant::now();
    let mut alive_ms = now_ms();
    let mut alive_at = started;
    let mut mark: Option<WaitMark> = None;
    let claim = loop {
        match KeyLock::try_acquire(dir, key) {
            Ok(Some(mut lock)) => {
                lock.keep_alive();
                break Claim::Owner(lock);
            }
            Ok(None) if no_wait => break Claim::Busy,
            Ok(None) => {}
            Err(err) => break Claim::Failed(err),
        }
        if mark.is_none() {
            // Tells the owner, when its run ends, to keep its outcome for
            // us even if it is not to be cached. Made after the first try,
            // so runs that never wait never make one: an owner that ends
            // in between is a run that ended as we arrived, and we run.
            mark = WaitMark::new(dir, key);
        }
        if deadline.expired() {
            break Claim::TimedOut;
        }
        let display = display.get_or_insert_with(|| {
            how.messages.warn("waiting for an identical run in progress");
            let label = format!("waiting: {}", how.label);
            Display::new(how.style, &label, how.interval, None).waiting()
        });
        if read_at.is_none_or(|at| at.elapsed() >= READ_PROGRESS) {
            read_at = Some(Instant::now());
            if jobs.is_none() {
                jobs = Jobs::open(dir).ok();
            }
            let job = jobs.as_ref().and_then(|j| j.running(key).ok().flatten());
            if let Some(job) = job {
                if job.updated_ms > alive_ms {
                    alive_ms = job.updated_ms;
                    alive_at = Instant::now();
                }
                display.set_state(job.progress);
            }
        }
        // The owner's heartbeat on its lock file: set by a thread of its
        // own, so it goes on while the owner is blocked writing output or
        // jobs.db is locked.
        if let Some(beat) = KeyLock::last_beat(dir, key) {
            let beat_ms = beat
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            if beat_ms > alive_ms {
                alive_ms = beat_ms;
                alive_at = Instant::now();
            }
        }
        if alive_at.elapsed() >= STUCK_AFTER {
            how.messages.warn(format!(
                "the identical run holding this command's lock showed no sign of life for {}; running uncached",
                crate::duration::short(STUCK_AFTER)
            ));
            break Claim::Stuck;
        }
        display.tick();
        let nap = deadline.remaining().map_or(POLL, |left| left.min(POLL));
        std::thread::sleep(nap);
    };
    // Held until the key is ours: by then an outcome kept for us is stored.
    if mark.take().is_some() {
        // The last waiter out removes the mark file.
        WaitMark::anyone_waiting(dir, key);
    }
    if let Some(mut display) = display {
        display.finish();
    }
    claim
}
