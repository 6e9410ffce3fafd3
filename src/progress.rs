//! Progress: the line format a command reports through `LCRUN_PROGRESS` (the
//! counterpart of Dash's `set_progress`), reading it back, and reading it out
//! of output lines with `--progress-regex`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use regex::Regex;

/// A progress report: any part may be absent and then keeps its old value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    /// Units done.
    pub pos: Option<u64>,
    /// Units in all.
    pub total: Option<u64>,
    /// What the command is doing now.
    pub message: Option<String>,
}

/// The progress known so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Units done.
    pub pos: Option<u64>,
    /// Units in all, once known.
    pub total: Option<u64>,
    /// The latest message.
    pub message: String,
}

impl State {
    /// Applies an update.
    pub fn apply(&mut self, update: Update) {
        if update.pos.is_some() {
            self.pos = update.pos;
        }
        if update.total.is_some() {
            self.total = update.total;
        }
        if let Some(message) = update.message {
            self.message = message;
        }
    }

    /// `3/10 compiling`, `3 compiling`, `compiling` or empty.
    pub fn summary(&self) -> String {
        let count = match (self.pos, self.total) {
            (Some(pos), Some(total)) => format!("{pos}/{total}"),
            (Some(pos), None) => pos.to_string(),
            (None, _) => String::new(),
        };
        match (count.is_empty(), self.message.is_empty()) {
            (_, true) => count,
            (true, false) => self.message.clone(),
            (false, false) => format!("{count} {}", self.message),
        }
    }
}

/// A percentage is shown as a position out of this many.
const PERCENT_TOTAL: u64 = 100;

/// Parses one progress line: `POS/TOTAL [msg]`, `PCT% [msg]`, `POS [msg]`,
/// `msg TEXT` or a JSON object `{"pos":3,"total":10,"message":"..."}`.
/// Anything else is `None`: malformed lines are ignored, never fatal.
pub fn parse_line(line: &str) -> Option<Update> {
    let line = line.trim();
    if line.starts_with('{') {
        return parse_json(line);
    }
    let (head, rest) = match line.split_once(char::is_whitespace) {
        Some((head, rest)) => (head, Some(rest.trim())),
        None => (line, None),
    };
    let message = rest.filter(|m| !m.is_empty()).map(str::to_owned);
    if head == "msg" {
        return Some(Update {
            message: Some(message.unwrap_or_default()),
            ..Update::default()
        });
    }
    let (pos, total) = parse_position(head)?;
    Some(Update {
        pos: Some(pos),
        total,
        message,
    })
}

/// `POS`, `POS/TOTAL` or `PCT%` as (pos, total).
pub fn parse_position(text: &str) -> Option<(u64, Option<u64>)> {
    if let Some(pct) = text.strip_suffix('%') {
        let pct: f64 = pct
            .parse()
            .ok()
            .filter(|p: &f64| p.is_finite() && (0.0..=100.0).contains(p))?;
        return Some((pct.round() as u64, Some(PERCENT_TOTAL)));
    }
    match text.split_once('/') {
        Some((pos, total)) => Some((pos.parse().ok()?, Some(total.parse().ok()?))),
        None => Some((text.parse().ok()?, None)),
    }
}

fn parse_json(line: &str) -> Option<Update> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let object = value.as_object()?;
    let update = Update {
        pos: object.get("pos").and_then(serde_json::Value::as_u64),
        total: object.get("total").and_then(serde_json::Value::as_u64),
        message: object.get("message").and_then(|m| m.as_str()).map(str::to_owned),
    };
    (update != Update::default()).then_some(update)
}

/// The line `lcrun progress POSITION MESSAGE...` writes, newline included;
/// `None` when it is not a progress line. Line breaks in the message become
/// spaces, so one report is one line.
pub fn helper_line(position: &OsStr, message: &[OsString]) -> Option<Vec<u8>> {
    let mut line = position.as_bytes().to_vec();
    for word in message {
        line.push(b' ');
        line.extend(word.as_bytes().iter().map(|&b| match b {
            b'\n' | b'\r' => b' ',
            b => b,
        }));
    }
    parse_line(&String::from_utf8_lossy(&line))?;
    line.push(b'\n');
    Some(line)
}

/// Appends one line to the progress file at `path`; a failure is dropped, as
/// progress never matters more than the command. Opened non-blocking: an
/// `LCRUN_PROGRESS` that is a FIFO with no reader fails (ENXIO) instead of
/// blocking the command, and a full one drops the line.
pub fn append(path: &Path, line: &[u8]) {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    if let Ok(mut file) = file {
        // One write on an O_APPEND file: lines from parallel writers never mix.
        let _ = file.write_all(line);
    }
}

/// Reads progress out of output lines with a user's regex and its named
/// groups `pos`, `total`, `pct` and `msg`.
pub struct LineMatcher {
    regex: Regex,
}

impl LineMatcher {
    /// Compiles the regex; it must have at least one of the named groups.
    pub fn new(pattern: &str) -> Result<LineMatcher, String> {
        let regex = Regex::new(pattern).map_err(|err| {
            // The regex crate draws a multi-line caret diagram; its last line
            // names the problem.
            let text = err.to_string();
            let reason = text
                .lines()
                .last()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned();
            format!("bad --progress-regex '{pattern}': {reason}")
        })?;
        let names: Vec<_> = regex.capture_names().flatten().collect();
        if !names.iter().any(|n| ["pos", "total", "pct", "msg"].contains(n)) {
            return Err("--progress-regex needs a named group: (?P<pos>..), (?P<total>..), (?P<pct>..) or (?P<msg>..)".into());
        }
        Ok(LineMatcher { regex })
    }

    /// The progress one output line reports, if it matches.
    pub fn update(&self, line: &str) -> Option<Update> {
        let caps = self.regex.captures(line)?;
        let number = |name| {
            caps.name(name)
                .and_then(|m| m.as_str().trim().parse::<u64>().ok())
        };
        let mut update = Update {
            pos: number("pos"),
            total: number("total"),
            message: caps.name("msg").map(|m| m.as_str().trim().to_owned()),
        };
        if let Some(pct) = caps
            .name("pct")
            .and_then(|m| m.as_str().trim().trim_end_matches('%').parse::<f64>().ok())
        {
            if pct.is_finite() && (0.0..=100.0).contains(&pct) {
                update.pos = Some(pct.round() as u64);
                update.total = Some(PERCENT_TOTAL);
            }
        }
        (update != Update::default()).then_some(update)
    }
}

/// The longest progress line read; a longer one is skipped whole, so a
/// command that writes megabytes without a newline costs no memory.
const MAX_LINE: usize = 4096;

/// At most this much of the progress file is read per call. The call comes
/// from the loop that also acts on signals and timeouts, so a command
/// flooding the file (`yes 1/2 > "$LCRUN_PROGRESS"`) delays them by one
/// bounded read, not by the whole flood; the rest waits for the next call.
const READ_BUDGET: usize = 256 * 1024;

/// Follows the progress file a command appends to. Every complete line is
/// parsed, in order, in time linear in its length; only complete lines count.
pub struct ProgressFile {
    file: File,
    buf: Vec<u8>,
    /// The start of a line whose newline has not been read yet.
    partial: Vec<u8>,
    /// The line being read is longer than [`MAX_LINE`]: skip to its end.
    skipping: bool,
}

impl ProgressFile {
    /// Opens the file for following.
    pub fn open(path: &Path) -> io::Result<ProgressFile> {
        Ok(ProgressFile {
            file: File::open(path)?,
            buf: vec![0; 64 * 1024],
            partial: Vec::new(),
            skipping: false,
        })
    }

    /// The updates appended since the last call, merged into one (applying
    /// it is applying each in turn); `None` when there were none.
    pub fn update(&mut self) -> Option<Update> {
        let mut merged: Option<Update> = None;
        let mut read = 0;
        while read < READ_BUDGET {
            let n = match self.file.read(&mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            read += n;
            let mut rest = &self.buf[..n];
            while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                let line = &rest[..end];
                rest = &rest[end + 1..];
                if self.skipping || self.partial.len() + line.len() > MAX_LINE {
                    self.skipping = false;
                    self.partial.clear();
                    continue;
                }
                let update = if self.partial.is_empty() {
                    parse_line(&String::from_utf8_lossy(line))
                } else {
                    self.partial.extend_from_slice(line);
                    let update = parse_line(&String::from_utf8_lossy(&self.partial));
                    self.partial.clear();
                    update
                };
                if let Some(update) = update {
                    merged = Some(match merged {
                        Some(earlier) => earlier.then(update),
                        None => update,
                    });
                }
            }
            if !self.skipping {
                if self.partial.len() + rest.len() > MAX_LINE {
                    self.partial = Vec::new();
                    self.skipping = true;
                } else {
                    self.partial.extend_from_slice(rest);
                }
            }
        }
        merged
    }
}

impl Update {
    /// This update followed by `later`, as one.
    fn then(self, later: Update) -> Update {
        Update {
            pos: later.pos.or(self.pos),
            total: later.total.or(self.total),
            message: later.message.or(self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(pos: Option<u64>, total: Option<u64>, message: Option<&str>) -> Option<Update> {
        Some(Update {
            pos,
            total,
            message: message.map(str::to_owned),
        })
    }

    #[test]
    fn parses_every_line_form() {
        assert_eq!(parse_line("3/10"), upd(Some(3), Some(10), None));
        assert_eq!(
            parse_line("3/10 compiling foo.c\n"),
            upd(Some(3), Some(10), Some("compiling foo.c"))
        );
        assert_eq!(
            parse_line("45% linking"),
            upd(Some(45), Some(100), Some("linking"))
        );
        assert_eq!(parse_line("12.6%"), upd(Some(13), Some(100), None));
        assert_eq!(parse_line("7 files"), upd(Some(7), None, Some("files")));
        assert_eq!(parse_line("msg warming up"), upd(None, None, Some("warming up")));
        assert_eq!(
            parse_line(r#"{"pos":3,"total":10,"message":"x"}"#),
            upd(Some(3), Some(10), Some("x"))
        );
        assert_eq!(parse_line(r#"{"message":"only"}"#), upd(None, None, Some("only")));
    }

    #[test]
    fn ignores_garbage() {
        for bad in [
            "",
            "   ",
            "hello",
            "3/",
            "/10",
            "a/b",
            "-1",
            "101%",
            "x%",
            "{",
            "{}",
            "[1,2]",
            r#"{"pos":-3}"#,
            "3/10/2",
            "\u{0}\u{1}",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn state_keeps_what_an_update_leaves_out() {
        let mut state = State::default();
        state.apply(parse_line("3/10 compiling").unwrap());
        state.apply(parse_line("4").unwrap());
        assert_eq!(state.summary(), "4/10 compiling");
        state.apply(parse_line("msg linking").unwrap());
        assert_eq!(state.summary(), "4/10 linking");
    }

    #[test]
    fn regex_reads_named_groups() {
        let m = LineMatcher::new(r"\[(?P<pos>\d+)/(?P<total>\d+)\] (?P<msg>.*)").unwrap();
        assert_eq!(
            m.update("[2/7] Building x.o"),
            upd(Some(2), Some(7), Some("Building x.o"))
        );
        assert_eq!(m.update("unrelated"), None);
        let pct = LineMatcher::new(r"(?P<pct>[\d.]+)%").unwrap();
        assert_eq!(pct.update(" 42.4% done"), upd(Some(42), Some(100), None));
        assert!(LineMatcher::new(r"(unclosed").is_err());
        assert!(LineMatcher::new(r"\d+").is_err());
    }

    #[test]
    fn progress_file_yields_each_complete_line_in_order() {
        use std::io::Write;
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        let mut follow = ProgressFile::open(tmp.path()).unwrap();
        write!(tmp, "1/3\ngarbage\n2/3").unwrap();
        assert_eq!(follow.update(), parse_line("1/3"));
        write!(tmp, " two\n3/3\n").unwrap();
        assert_eq!(follow.update(), upd(Some(3), Some(3), Some("two")));
        assert_eq!(follow.update(), None);
    }

    #[test]
    fn progress_file_skips_lines_too_long_to_be_progress() {
        use std::io::Write;
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        let mut follow = ProgressFile::open(tmp.path()).unwrap();
        tmp.write_all(&vec![b'7'; MAX_LINE - 10]).unwrap();
        assert_eq!(follow.update(), None);
        // The same line goes on past the limit, across reads.
        tmp.write_all(&vec![b'7'; 3 * MAX_LINE]).unwrap();
        assert_eq!(follow.update(), None);
        assert!(follow.partial.capacity() <= 2 * MAX_LINE);
        tmp.write_all(b"9\n4/5 next\n").unwrap();
        assert_eq!(follow.update(), upd(Some(4), Some(5), Some("next")));
    }

    #[test]
    fn progress_file_reads_a_flood_in_bounded_steps() {
        use std::io::Write;
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        let mut follow = ProgressFile::open(tmp.path()).unwrap();
        let lines = 2 * READ_BUDGET / 4;
        for _ in 0..lines {
            tmp.write_all(b"1/2\n").unwrap();
        }
        tmp.write_all(b"2/2 last\n").unwrap();
        assert_eq!(follow.update(), upd(Some(1), Some(2), None));
        let mut last = None;
        while let Some(update) = follow.update() {
            last = Some(update);
        }
        assert_eq!(last, upd(Some(2), Some(2), Some("last")));
    }
}
