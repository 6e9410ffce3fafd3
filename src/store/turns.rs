//! Turns at the cache's write lock. SQLite lets one writer in at a time
//! and wakes no one when it leaves: a waiting writer polls, and a writer
//! that commits and begins again at once (a long store of outputs, batch
//! after batch) takes the lock back before any poll finds it free. The
//! waiting writer then gave up after 3 s and stored nothing. So a writer
//! that waits says so, with a shared `flock` on `cache.db.waiting` held while
//! it waits, and a writer between two batches that sees one stands aside
//! until it has had its turn.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::trust;

/// The longest a writer stands aside between two batches.
const STAND_ASIDE: Duration = Duration::from_millis(50);

/// This process's mark, while one of its writers waits.
static WAITING: Mutex<Option<File>> = Mutex::new(None);

/// Since when this process's writer waits for the lock, in milliseconds
/// since [`epoch`] plus one; zero while it does not.
static SINCE: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The file the marks are locks on, beside the database (a cache the store
/// opened, so its directory is checked already).
fn mark(dir: &Path) -> Option<File> {
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).write(true);
    trust::open(&dir.join("cache.db.waiting"), &mut options)
        .ok()
        .map(|(file, _)| file)
}

/// Says that this process waits for the write lock of the cache in `dir`
/// (to the others too, when it knows the cache), from now unless already.
pub fn waiting(dir: Option<&Path>) {
    let now = epoch().elapsed().as_millis() as u64 + 1;
    let _ = SINCE.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    let Some(dir) = dir else { return };
    let Ok(mut waiting) = WAITING.lock() else { return };
    if waiting.is_none() {
        *waiting = mark(dir).filter(|file| file.try_lock_shared().is_ok());
    }
}

/// Says that it waits no longer: it has the lock, or gave up.
pub fn not_waiting() {
    SINCE.store(0, Ordering::SeqCst);
    if let Ok(mut waiting) = WAITING.lock() {
        waiting.take();
    }
}

/// How long it has been waiting, if it is.
pub fn waited() -> Duration {
    match SINCE.load(Ordering::SeqCst) {
        0 => Duration::ZERO,
        since => epoch().elapsed().saturating_sub(Duration::from_millis(since - 1)),
    }
}

/// Whether a writer of another process is waiting for the lock now.
pub(super) fn others_waiting(dir: &Path) -> bool {
    others_mark(dir).is_some_and(|file| waited_on(&file))
}

/// Between two batches of a long write: while another writer waits, leaves
/// it the lock, for [`STAND_ASIDE`] at most.
pub(super) fn stand_aside(dir: &Path) {
    let Some(file) = others_mark(dir) else { return };
    let start = Instant::now();
    while waited_on(&file) && start.elapsed() < STAND_ASIDE {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The mark file, to look for others' marks on: this process's own is
/// taken away first, as it is no other's.
fn others_mark(dir: &Path) -> Option<File> {
    if let Ok(mut waiting) = WAITING.lock() {
        waiting.take();
    }
    mark(dir)
}

/// Whether someone holds a mark on `file`: the lock of all is refused.
fn waited_on(file: &File) -> bool {
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}
