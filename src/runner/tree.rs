//! The command's process tree, found rather than grouped. The command stays
//! in its caller's process group (so the terminal treats it as the bare
//! command), and lcrun is a child subreaper: every process the command
//! starts, daemons that called `setsid` included, stays a descendant of
//! lcrun, found by walking the parent links in /proc.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How many times a kill walks the tree again for processes forked while it
/// walked; each round finds only children of processes not yet killed.
const KILL_ROUNDS: usize = 50;

/// How long ending a dead owner's command may wait for its processes to go.
const GONE_WITHIN: Duration = Duration::from_secs(2);

/// Makes orphaned descendants reparent to lcrun instead of init, so they stay
/// in the tree lcrun can end (and lcrun must reap them).
pub fn become_subreaper() {
    // SAFETY: a prctl on our own process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Every live process under `root`, nearest first.
pub fn descendants(root: libc::pid_t) -> Vec<libc::pid_t> {
    let all = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            all.iter()
                .filter(|p| p.ppid == parent && !p.zombie)
                .map(|p| p.pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Ends what is left of a job whose lcrun died without ending it (SIGKILL,
/// a crash): every process that carries `marker` (`LCRUN_JOB=<id>`) in its
/// environment. Returns once they are gone, or after [`GONE_WITHIN`].
pub fn end_marked(marker: &[u8]) {
    let me = std::process::id() as libc::pid_t;
    let marked = || {
        processes()
            .into_iter()
            .filter(|p| p.pid != me && !p.zombie && carries(p.pid, marker))
            .map(|p| p.pid)
            .collect()
    };
    let killed = kill_until_none(marked);
    let start = Instant::now();
    while start.elapsed() < GONE_WITHIN && killed.iter().any(|&pid| alive(pid)) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs what `find` returns, and again what it returns then that was
/// not killed yet (forked meanwhile), until it finds nothing new.
pub fn kill_until_none(mut find: impl FnMut() -> Vec<libc::pid_t>) -> HashSet<libc::pid_t> {
    let mut killed = HashSet::new();
    for _ in 0..KILL_ROUNDS {
        let fresh: Vec<_> = find().into_iter().filter(|p| !killed.contains(p)).collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            // SAFETY: killing a process of the tree being ended.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.insert(pid);
        }
    }
    killed
}

struct Process {
    pid: libc::pid_t,
    ppid: libc::pid_t,
    zombie: bool,
}

/// A snapshot of the processes /proc shows.
fn processes() -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
            let (ppid, state) = parse_stat(&stat)?;
            Some(Process {
                pid,
                ppid,
                zombie: matches!(state, b'Z' | b'X'),
            })
        })
        .collect()
}

/// The parent pid and state of a /proc/PID/stat line. The command name
/// before them is in parentheses and may hold anything, `)` included, so
/// the fields are read after its last `)`.
fn parse_stat(stat: &[u8]) -> Option<(libc::pid_t, u8)> {
    let end = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat[end + 1..].split(|&b| b == b' ').filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    let ppid = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    Some((ppid, state))
}

fn alive(pid: libc::pid_t) -> bool {
    std::fs::read(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .is_some_and(|(_, state)| !matches!(state, b'Z' | b'X'))
}

fn carries(pid: libc::pid_t, marker: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| environ.split(|&b| b == 0).any(|var| var == marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_come_after_the_last_parenthesis() {
        assert_eq!(parse_stat(b"42 (a) b) S 7 42 42 0"), Some((7, b'S')));
        assert_eq!(parse_stat(b"42 (sh) Z 1 0"), Some((1, b'Z')));
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn a_grandchild_is_a_descendant_and_is_killed() {
        use std::os::unix::process::ExitStatusExt;
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait $!"])
            .spawn()
            .expect("sh");
        let pid = shell.id() as libc::pid_t;
        let start = Instant::now();
        while descendants(pid).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10), "no sleep under sh");
            std::thread::sleep(Duration::from_millis(10));
        }
        kill_until_none(|| descendants(pid));
        // `wait` returns the killed sleep's status, and sh exits with it.
        let status = shell.wait().expect("wait");
        assert_eq!(
            (status.code(), status.signal()),
            (Some(128 + libc::SIGKILL), None)
        );
    }
}
