//! A process and everything it started, found through /proc: what lcrun
//! ends when a helper it runs (a `cmd:` cache-by) outlives its time limit.
//! The helper stays in lcrun's process group, so a Ctrl-C on the terminal
//! reaches it as it would reach the bare command.

use std::collections::HashMap;

/// Sends SIGKILL to `pid` and to every descendant it has now. The tree is
/// read first and killed after, so children re-parented by their parent's
/// death are not missed.
pub fn kill(pid: libc::pid_t) {
    let mut doomed = vec![pid];
    let children = children_by_parent();
    let mut next = 0;
    while next < doomed.len() {
        if let Some(kids) = children.get(&doomed[next]) {
            doomed.extend(kids);
        }
        next += 1;
    }
    for pid in doomed {
        // SAFETY: sending a signal to a process we found as our descendant.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Every process's children, from the parent field of /proc/PID/stat.
fn children_by_parent() -> HashMap<libc::pid_t, Vec<libc::pid_t>> {
    let mut children: HashMap<libc::pid_t, Vec<libc::pid_t>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The name field may hold spaces and parentheses: the fields after
        // it start after the last ')'. They are: state, then the parent.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(pid);
        }
    }
    children
}

#[cfg(test)]
mod tests {
    #[test]
    fn kills_grandchildren() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 60 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: libc::pid_t = line.trim().parse().unwrap();
        super::kill(child.id() as libc::pid_t);
        child.wait().unwrap();
        let start = std::time::Instant::now();
        // SAFETY: signal 0 only checks existence; a zombie of init's may
        // linger briefly, so poll.
        while unsafe { libc::kill(grandchild, 0) } == 0
            && std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
