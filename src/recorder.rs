//! Recording a run off the output path. The command's output goes to the
//! screen at once; a copy goes through a bounded queue to a thread that owns
//! the store and writes it there. So a cache that another process holds
//! locked (a `sqlite3` shell left in a transaction, a stuck lcrun) never
//! delays the command's start nor stalls its output: what cannot be stored
//! in time is dropped, and the caller warns once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::blob::{Cutter, BLOB_BYTES};
use crate::key::Key;
use crate::lock::{KeyLock, WaitMark};
use crate::messages::Messages;
use crate::output::Stream;
use crate::outputs::DeclaredPath;
use crate::store::{turns, Store, StoreError};

/// Output bytes that may wait for the store: the output of most short
/// commands, so a store that is briefly busy (parallel `make -j` runs take
/// turns in milliseconds) costs them nothing; small enough to keep a run's
/// memory bound (a 256 MiB miss peaked at 21 MiB with 4 MiB here, 17 MiB
/// with 1 MiB, 12 MiB recording on the output path).
const QUEUE_BYTES: usize = 1 << 20;

/// Blob buffers kept for reuse: as many as the queue and the two blobs
/// being filled hold.
const SPARE_BUFFERS: usize = QUEUE_BYTES / BLOB_BYTES + 2;

/// Interleaving runs held before they are sent without a blob: output
/// that switches streams at every read would otherwise hold them all.
const MAX_RUNS: usize = 4096;

/// With the queue full, how long the store may stay blocked behind another
/// process's lock before the recording is dropped rather than the command's
/// output held up.
const FULL_STALL: Duration = Duration::from_millis(500);

/// After the command ended, how long the store may stay blocked behind
/// another process's lock before the result is dropped. Writers among
/// parallel lcrun runs hold the lock for milliseconds; a lock held this long
/// is a stuck holder, and lcrun should not end much later than its command.
const END_STALL: Duration = Duration::from_secs(3);

/// After a cancel or the deadline, how long lcrun waits for the store's
/// thread to stop storing the outputs and take away what it wrote: a blob
/// takes it under a millisecond, the removal of a large store's rows some
/// tens. Past that it leaves, and the next writer removes the rest.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// What ended the wait for the store early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// A signal that cancels the run (SIGINT, SIGTERM, SIGHUP), or that
    /// would have ended the command, now gone (SIGQUIT, SIGUSR1, SIGUSR2).
    Signal(i32),
    /// The deadline of `--timeout`.
    Deadline,
}

/// Why a finished run was not stored.
#[derive(Debug, Clone)]
pub enum Unstored {
    /// The store failed, or the recording was dropped: why, to say.
    Failed(String),
    /// The wait was interrupted, and the store stopped and taken away.
    Interrupted(Interrupt),
}

/// What becomes of a finished recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Stored under its key, for every later run.
    Cache,
    /// Kept only for the runs that waited on this one (a failure policy does
    /// not cache).
    ForWaiters,
}

enum Msg {
    /// A blob of output, [`BLOB_BYTES`] long but a stream's last, if one
    /// is ready; the interleaving since the last message; and when the blob
    /// was complete.
    Write(Option<(Stream, Vec<u8>)>, Vec<(Stream, u64)>, Instant),
    /// Status, duration, how to keep it, and the declared output files
    /// (`-o`) to store with it.
    Finish(u8, Duration, Keep, Vec<DeclaredPath>),
    Abandon,
}

/// What the main thread and the store's thread share.
#[derive(Default)]
struct State {
    /// Bytes sent and not yet taken by the store's thread.
    queued: usize,
    /// Why the recording ended early, once it has.
    failed: Option<String>,
    /// Set when the store's thread is done with the final message.
    done: bool,
    /// Set when the store's thread has let go of its share of the key's lock.
    released: bool,
    /// Said by the store's thread for the caller to pass on (a damaged
    /// database moved aside): the thread does not write to the terminal.
    notes: Vec<String>,
    /// Buffers the store's thread is done with, for the next output: a
    /// buffer allocated on one thread and freed on the other kept memory
    /// in both threads' allocator arenas (5 MiB more peak memory per run).
    spare: Vec<Vec<u8>>,
}

/// A run being recorded by a thread of its own.
pub struct Recorder {
    tx: Option<mpsc::Sender<Msg>>,
    /// Output is cut into blobs here, as it is copied once from the read
    /// buffer (see `Recording::write_blob`).
    cutter: Cutter,
    /// The interleaving not yet sent: (stream, bytes) in order.
    runs: Vec<(Stream, u64)>,
    /// The cache directory and the key, to look for waiters.
    dir: std::path::PathBuf,
    key: String,
    shared: Arc<(Mutex<State>, Condvar)>,
    /// Why the recording was dropped on this side, if it was.
    dropped: Option<String>,
    /// Where the store's thread's notes are said, by this thread.
    messages: Messages,
    /// The key's lock, whose heartbeat thread goes with the recorder's
    /// under a limit of tasks (see [`Recorder::give_up_threads`]).
    lock: Arc<KeyLock>,
}

/// The cache the recorder writes, for the busy handler to say it waits
/// (see `store::turns`). One recorder per process, so these are
/// process-wide, as SQLite's busy handler is a plain function.
static CACHE_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
/// Set when the main thread stops waiting: the busy handler then gives up.
static GIVE_UP: AtomicBool = AtomicBool::new(false);

/// SQLite's busy handler for the recording's connection: waits for the
/// lock, noting since when (see `turns::waiting`), until told to give up.
fn on_busy(count: i32) -> bool {
    if count == 0 {
        turns::waiting(CACHE_DIR.get().map(|dir| dir.as_path()));
    }
    if GIVE_UP.load(Ordering::SeqCst) {
        return false;
    }
    // A writer between two batches stands aside for a waiting one (see
    // `turns`) for as long as it takes to notice: polled every millisecond,
    // not SQLite's growing sleeps, it takes its turn at once.
    thread::sleep(Duration::from_millis(1));
    true
}

impl Recorder {
    /// Starts recording a run of `key` into `store`, on a thread that owns
    /// it and a share of the key's `lock`. Returns at once: even the pending
    /// row is written there. The thread keeps its share until the recording
    /// is committed or abandoned, and the caller keeps its own until the
    /// command has ended: the lock is what tells other writers that the
    /// pending row is alive (see `Store::clean_abandoned`), and other runs
    /// that the command is (see `Cache::job_start` in `app`).
    pub fn start(
        store: Store,
        lock: Arc<KeyLock>,
        key: &Key,
        command: String,
        cwd: String,
        messages: Messages,
    ) -> Recorder {
        let began = Instant::now();
        let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let dir = store.dir().to_owned();
        let _ = CACHE_DIR.set(dir.clone());
        let hex = key.hex.clone();
        let key = key.clone();
        let theirs = Arc::clone(&shared);
        let ours = Arc::clone(&lock);
        let spawned = thread::Builder::new()
            .name("lcrun-recorder".into())
            .spawn(move || {
                record(store, &key, &command, &cwd, began, &rx, &theirs);
                // Released after the store is done with the recording, and
                // before the caller is told so.
                drop(lock);
                let (state, cond) = &*theirs;
                if let Ok(mut state) = state.lock() {
                    state.released = true;
                }
                cond.notify_all();
            });
        let mut recorder = Recorder {
            tx: Some(tx),
            cutter: Cutter::default(),
            runs: Vec::new(),
            dir,
            key: hex,
            shared,
            dropped: None,
            messages,
            lock: ours,
        };
        if let Err(err) = spawned {
            recorder.drop_with(format!("cannot start the recorder: {err}"));
        }
        recorder
    }

    /// Takes output for the store, sending it on blob by blob. It waits
    /// only while the queue is full and the store is working; a store
    /// blocked behind another process's lock has the recording dropped
    /// instead.
    pub fn write(&mut self, stream: Stream, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let Some(room) = self.room(stream) else { return };
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.commit(stream, n);
            bytes = &bytes[n..];
        }
    }

    /// Where the next output of `stream` may be read: straight into the
    /// blob being filled, which spares copying each byte once (about 3% of
    /// a 1 GiB miss's CPU time, `perf record`). None once dropped.
    pub fn room(&mut self, stream: Stream) -> Option<&mut [u8]> {
        if self.dropped.is_some() {
            return None;
        }
        let shared = &self.shared;
        Some(self.cutter.room(stream, || spare_buffer(shared)))
    }

    /// The `n` bytes of `stream` just read into [`Recorder::room`].
    pub fn in_room(&self, stream: Stream, n: usize) -> &[u8] {
        self.cutter.in_room(stream, n)
    }

    /// Takes the `n` bytes of `stream` read into [`Recorder::room`] for the
    /// store, as [`Recorder::write`] takes bytes.
    pub fn commit(&mut self, stream: Stream, n: usize) {
        if self.dropped.is_some() || n == 0 {
            return;
        }
        self.interleave(stream, n);
        if let Some(blob) = self.cutter.advance(stream, n) {
            self.send(Some((stream, blob)));
            if self.dropped.is_some() {
                return;
            }
        }
        self.bound_runs();
    }

    /// Notes `len` more bytes of `stream` in the interleaving.
    fn interleave(&mut self, stream: Stream, len: usize) {
        match self.runs.last_mut() {
            Some((last, run)) if *last == stream => *run += len as u64,
            _ => self.runs.push((stream, len as u64)),
        }
    }

    /// Output that switches streams at every read: its interleaving goes on
    /// without waiting for a blob.
    fn bound_runs(&mut self) {
        if self.runs.len() >= MAX_RUNS {
            self.send(None);
        }
    }

    /// Queues a blob (if any) and the interleaving for the store's thread.
    fn send(&mut self, blob: Option<(Stream, Vec<u8>)>) {
        let len = blob.as_ref().map_or(0, |(_, bytes)| bytes.len());
        let shared = Arc::clone(&self.shared);
        let (lock, cond) = &*shared;
        let Ok(mut state) = lock.lock() else {
            return self.drop_with("the recorder failed".into());
        };
        loop {
            if let Some(why) = state.failed.clone() {
                drop(state);
                return self.drop_with(why);
            }
            if state.queued == 0 || state.queued + len <= QUEUE_BYTES {
                break;
            }
            // How long the store's thread has waited for the lock in one
            // stretch (a long store that gets its turns between batches is
            // not waiting in between): a busy store, not a slow one.
            if turns::waited() >= FULL_STALL {
                drop(state);
                return self.drop_with(locked_too_long(FULL_STALL));
            }
            state = match cond.wait_timeout(state, Duration::from_millis(10)) {
                Ok((state, _)) => state,
                Err(_) => return self.drop_with("the recorder failed".into()),
            };
        }
        state.queued += len;
        drop(state);
        let runs = std::mem::take(&mut self.runs);
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Msg::Write(blob, runs, Instant::now())).is_ok());
        if !sent {
            self.drop_with("the recorder failed".into());
        }
    }

    /// Sends what is left of the output: each stream's last, short blob
    /// and the rest of the interleaving.
    fn send_rest(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = self.cutter.rest(stream);
            if !rest.is_empty() && self.dropped.is_none() {
                self.send(Some((stream, rest)));
            }
        }
        if !self.runs.is_empty() && self.dropped.is_none() {
            self.send(None);
        }
    }

    /// Ends the recording as `keep` says and waits for the store, no longer
    /// than it works: `Err` says why the result was not stored.
    /// `outputs` are stored with the result (captured on the store's
    /// thread, relative ones under the working directory). While it waits,
    /// `interrupted` is asked every few milliseconds whether to stop: then
    /// the store is stopped and what it wrote taken away.
    pub fn finish(
        mut self,
        status: u8,
        duration: Duration,
        keep: Keep,
        outputs: &[DeclaredPath],
        interrupted: &mut dyn FnMut() -> Option<Interrupt>,
    ) -> Result<(), Unstored> {
        self.send_rest();
        if let Some(why) = self.dropped.take() {
            return Err(Unstored::Failed(why));
        }
        // An outcome kept for waiters when none waits would only take space.
        let msg = if keep == Keep::ForWaiters && !WaitMark::anyone_waiting(&self.dir, &self.key) {
            Msg::Abandon
        } else {
            Msg::Finish(status, duration, keep, outputs.to_vec())
        };
        self.wait_for(msg, Some(interrupted))
    }

    /// Ends lcrun's own threads for a command that could not start for a
    /// limit of tasks (a container's pids limit, `ulimit -u`): the
    /// recording is dropped, and the key's heartbeat stops.
    pub fn give_up_threads(self) {
        let lock = Arc::clone(&self.lock);
        self.abandon();
        lock.stop_beating();
    }

    /// Drops the recording (a cancelled run): nothing of it is kept.
    pub fn abandon(mut self) {
        if self.dropped.is_none() {
            // Said already if it fails: the next write cleans up after it.
            let _ = self.wait_for(Msg::Abandon, None);
        }
    }

    /// Sends the last message and waits for the store's thread to act on
    /// it, no longer than it works, nor past an `interrupted`.
    fn wait_for(
        &mut self,
        msg: Msg,
        mut interrupted: Option<&mut dyn FnMut() -> Option<Interrupt>>,
    ) -> Result<(), Unstored> {
        let failed = || Unstored::Failed("the recorder failed".into());
        let sent = self.tx.take().is_some_and(|tx| tx.send(msg).is_ok());
        if !sent {
            return Err(failed());
        }
        let (lock, cond) = &*self.shared;
        let mut state = lock.lock().map_err(|_| failed())?;
        // Once told to give up: why, and since when.
        let mut stopped: Option<(Unstored, Instant)> = None;
        loop {
            for note in std::mem::take(&mut state.notes) {
                self.messages.warn(note);
            }
            if state.done && state.released {
                // Stored, the interruption too late to stop it (and then no
                // warning says it was not).
                return Ok(());
            }
            if let Some((why, at)) = &stopped {
                // What was stored so far is taken away by the store's
                // thread (`record`), which then says it failed.
                if state.failed.is_some() || at.elapsed() >= STOP_WAIT {
                    return Err(why.clone());
                }
            } else if let Some(why) = &state.failed {
                return Err(Unstored::Failed(why.clone()));
            } else if let Some(interrupt) = interrupted.as_mut().and_then(|ask| ask()) {
                // The capture of the outputs stops at its next read, and a
                // wait for another process's lock at once.
                GIVE_UP.store(true, Ordering::SeqCst);
                stopped = Some((Unstored::Interrupted(interrupt), Instant::now()));
                continue;
            } else if turns::waited() >= END_STALL {
                // Its pending row stays behind; whoever writes next removes
                // it. Unless the lock came just now: then it is stored.
                GIVE_UP.store(true, Ordering::SeqCst);
                stopped = Some((Unstored::Failed(locked_too_long(END_STALL)), Instant::now()));
                continue;
            }
            state = cond
                .wait_timeout(state, Duration::from_millis(10))
                .map_err(|_| failed())?
                .0;
        }
    }

    fn drop_with(&mut self, why: String) {
        self.dropped.get_or_insert(why);
        // The store's thread sees the queue end without a finish and
        // abandons what it wrote; if it is blocked on a lock, it gives up.
        self.tx = None;
        GIVE_UP.store(true, Ordering::SeqCst);
    }
}

/// A buffer for a blob: one the store's thread is done with, if any.
fn spare_buffer(shared: &(Mutex<State>, Condvar)) -> Vec<u8> {
    let spare = shared.0.lock().ok().and_then(|mut state| state.spare.pop());
    spare.unwrap_or_else(|| Vec::with_capacity(BLOB_BYTES))
}

fn locked_too_long(bound: Duration) -> String {
    format!(
        "another process held the cache locked for over {}",
        crate::duration::short(bound)
    )
}

/// The store's thread: readies the store, begins the entry, stores what
/// arrives, and finishes or abandons it.
fn record(
    store: Store,
    key: &Key,
    command: &str,
    cwd: &str,
    began: Instant,
    rx: &mpsc::Receiver<Msg>,
    shared: &(Mutex<State>, Condvar),
) {
    let (lock, cond) = shared;
    let fail = |why: String| {
        if let Ok(mut state) = lock.lock() {
            state.failed.get_or_insert(why);
        }
        cond.notify_all();
    };
    let note = |note: String| {
        if let Ok(mut state) = lock.lock() {
            state.notes.push(note);
        }
    };
    let store = match ready(store, key, &note) {
        Ok(store) => store,
        Err(err) => return fail(format!("cannot write the cache: {err}")),
    };
    let mut recording = match store.begin(key, command, cwd) {
        Ok(recording) => recording,
        Err(err) => return fail(failure(&store, "cannot write the cache", &err)),
    };
    recording.output_began(began);
    turns::not_waiting();
    loop {
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {
                // Nothing more to store for the moment: what is stored is
                // committed, so no other writer waits on this one.
                let settled = recording.settle();
                turns::not_waiting();
                if let Err(err) = settled {
                    let _ = recording.abandon();
                    return fail(failure(&store, "cannot store the result", &err));
                }
                match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            }
        };
        match msg {
            Msg::Write(blob, runs, arrived) => {
                recording.push_runs(&runs);
                let (result, len) = match blob {
                    Some((stream, bytes)) => {
                        let len = bytes.len();
                        (recording.write_blob(stream, bytes, arrived), len)
                    }
                    None => (Ok(()), 0),
                };
                turns::not_waiting();
                if let Ok(mut state) = lock.lock() {
                    state.queued -= len;
                    // As many as the queue and the blobs being filled hold;
                    // not cleared: a full-length buffer is read into again
                    // without being zeroed (see `Cutter::room`).
                    while state.spare.len() < SPARE_BUFFERS {
                        let Some(spare) = recording.spare_buffer() else {
                            break;
                        };
                        state.spare.push(spare);
                    }
                }
                cond.notify_all();
                if let Err(err) = result {
                    // A full disk, say: what was written goes at once, and
                    // the command goes on, uncached.
                    let _ = recording.abandon();
                    return fail(failure(&store, "cannot store the result", &err));
                }
            }
            Msg::Finish(..) | Msg::Abandon => {
                if let Msg::Finish(_, _, keep, outputs) = &msg {
                    if !outputs.is_empty() {
                        let stop = || GIVE_UP.load(Ordering::SeqCst);
                        if let Err(err) = recording.capture(Path::new("."), outputs, &stop) {
                            let _ = recording.abandon();
                            turns::not_waiting();
                            // Unless the store was stopped, which the
                            // caller must hear of.
                            if *keep == Keep::ForWaiters && !GIVE_UP.load(Ordering::SeqCst) {
                                // A failed run that left no outputs: its
                                // waiters run the command themselves, and
                                // nothing needs saying.
                                if let Ok(mut state) = lock.lock() {
                                    state.done = true;
                                }
                                cond.notify_all();
                                return;
                            }
                            // Names the output: one warning, nothing stored.
                            return fail(err.to_string());
                        }
                    }
                }
                let result = match msg {
                    Msg::Finish(status, duration, Keep::Cache, _) => recording.finish(status, duration),
                    Msg::Finish(status, duration, Keep::ForWaiters, _) => recording.share(status, duration),
                    _ => recording.abandon(),
                };
                turns::not_waiting();
                match result {
                    Ok(()) => {
                        if let Ok(mut state) = lock.lock() {
                            state.done = true;
                        }
                        cond.notify_all();
                    }
                    Err(err) => fail(failure(&store, "cannot store the result", &err)),
                }
                return;
            }
        }
    }
    // The queue ended with no finish: a cancelled run, or a recording
    // dropped on the other side.
    let _ = recording.abandon();
}

/// Readies the store for a recording of `key`: the recorder's busy
/// handler, and the pending rows of dead writers removed (see
/// [`Store::clean_abandoned`]). A database found damaged on the way is
/// moved aside (by one process, under a lock) and the work done again on
/// the new one.
fn ready(store: Store, key: &Key, note: &dyn Fn(String)) -> Result<Store, StoreError> {
    store.set_busy_handler(on_busy)?;
    let err = match store.clean_abandoned(&key.hex) {
        Err(err) if err.is_corrupt() => err,
        // Any other failure is met again, and reported, by `begin`.
        _ => return Ok(store),
    };
    let (store, moved) = store.recover(&err)?;
    if let Some(moved) = moved {
        note(moved);
    }
    store.set_busy_handler(on_busy)?;
    let _ = store.clean_abandoned(&key.hex);
    Ok(store)
}

/// Why the recording failed, for the caller to say. A damaged database is
/// moved aside (the next run starts a new one), and that is what is said.
fn failure(store: &Store, what: &str, err: &StoreError) -> String {
    match err.is_corrupt().then(|| store.set_aside(err)).flatten() {
        Some(moved) => moved,
        None => format!("{what}: {err}"),
    }
}
