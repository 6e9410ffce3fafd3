//! `--report FILE`: one JSON line per run, appended for CI dashboards (key,
//! command, hit and where from, status, duration, time saved, bytes out,
//! cancelled, timed out). Each line goes out in one write(2) on a file
//! opened `O_APPEND`, so lines of parallel runs never interleave.

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::exit::Exit;
use crate::messages::Messages;

/// Where a replayed result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// This machine's cache.
    Local,
}

/// One line of the report.
#[derive(Debug, Default, serde::Serialize)]
struct Line {
    /// When the call started, RFC 3339 in UTC.
    started: String,
    /// The cache key (hex), when one was derived.
    key: Option<String>,
    /// The command as lcrun shows it.
    command: String,
    /// Whether the result was replayed rather than run.
    hit: bool,
    /// Where a replayed result came from.
    from: Option<Source>,
    /// The exit status lcrun ended with.
    status: u8,
    /// Wall time of the whole call, in milliseconds.
    duration_ms: u64,
    /// On a hit, the recorded run's duration less the replay's.
    saved_ms: u64,
    /// Bytes written to stdout and stderr.
    bytes_out: u64,
    /// Cancelled by a signal.
    cancelled: bool,
    /// Ended by `--timeout`.
    timed_out: bool,
}

/// What one run has to report, gathered as it goes and written at its end.
#[derive(Debug)]
pub struct Report {
    path: PathBuf,
    started: Instant,
    line: RefCell<Line>,
}

impl Report {
    /// Starts gathering the report of a run that is to be appended to `path`.
    pub fn new(path: &Path) -> Report {
        Report {
            path: path.to_owned(),
            started: Instant::now(),
            line: RefCell::new(Line {
                started: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                ..Line::default()
            }),
        }
    }

    /// The command, as lcrun shows it.
    pub fn command(&self, label: &str) {
        self.line.borrow_mut().command = label.to_owned();
    }

    /// The run's cache key.
    pub fn key(&self, hex: &str) {
        self.line.borrow_mut().key = Some(hex.to_owned());
    }

    /// The result was replayed from `from`, `bytes` of output, saving `saved`.
    pub fn hit(&self, from: Source, saved: Duration, bytes: u64) {
        let mut line = self.line.borrow_mut();
        line.hit = true;
        line.from = Some(from);
        line.saved_ms = millis(saved);
        line.bytes_out = bytes;
    }

    /// The command ran and wrote `bytes` of output.
    pub fn ran(&self, bytes: u64) {
        self.line.borrow_mut().bytes_out = bytes;
    }

    /// Appends the line for a run that ended with `exit`. A report that
    /// cannot be written is one warning; the run's result stands.
    pub fn write(&self, exit: Exit, messages: Messages) {
        let bytes = {
            let mut line = self.line.borrow_mut();
            line.status = exit.code();
            line.cancelled = matches!(exit, Exit::Cancelled(_));
            line.timed_out = exit == Exit::TimedOut;
            line.duration_ms = millis(self.started.elapsed());
            let mut bytes = match serde_json::to_vec(&*line) {
                Ok(bytes) => bytes,
                Err(err) => {
                    messages.warn(format!("cannot write the report: {err}"));
                    return;
                }
            };
            bytes.push(b'\n');
            bytes
        };
        if let Err(err) = append(&self.path, &bytes) {
            messages.warn(format!(
                "cannot write the report to {}: {err}",
                self.path.display()
            ));
        }
    }
}

/// Appends `line` in a single write(2): with `O_APPEND` the kernel places it
/// whole at the end, whatever other writers do. A short write (a full disk)
/// is an error, not a second write that could land inside another line.
/// `O_NONBLOCK`: a FIFO that no one reads is an error, not a hang after the
/// command has ended.
fn append(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    let written = file.write(line)?;
    if written < line.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("only {written} of {} bytes written", line.len()),
        ));
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a hit says on stderr: which command, how old its result is, the
/// time it saved, and where it came from.
pub fn hit_line(command: &str, age: Duration, saved: Duration) -> String {
    format!(
        "replayed from cache (local, {} old, saved {}): {}",
        crate::duration::short(age),
        crate::duration::short(saved),
        crate::display::truncate(&crate::display::one_line(command), 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_and_a_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let report = Report::new(&path);
        report.command("make\ntest");
        report.key("ab");
        report.hit(Source::Local, Duration::from_millis(1500), 42);
        report.write(Exit::Command(0), Messages::new(true));
        report.write(Exit::TimedOut, Messages::new(true));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["command"], "make\ntest");
        assert_eq!(lines[0]["from"], "local");
        assert_eq!(lines[0]["saved_ms"], 1500);
        assert_eq!(lines[0]["bytes_out"], 42);
        assert_eq!(lines[1]["timed_out"], true);
        assert_eq!(lines[1]["status"], 124);
    }

    #[test]
    fn the_hit_line_is_one_line() {
        let line = hit_line("sh -c 'a\nb'", Duration::from_secs(7260), Duration::from_secs(3));
        assert_eq!(
            line,
            "replayed from cache (local, 2h01m old, saved 3.0s): sh -c 'a b'"
        );
    }
}
