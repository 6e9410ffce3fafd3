//! What the user sees while a command runs: its output, byte for byte, and
//! lcrun's progress. On a terminal an indicatif spinner becomes a bar once
//! progress is reported, and output lines print above it; elsewhere no escape
//! codes at all, only an optional plain heartbeat line.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::ProgressMode;
use crate::duration;
use crate::output::{RawOut, Stream};
use crate::progress::{LineMatcher, State, Update};

/// How long a partial output line (a prompt, say) waits for its newline
/// before the bar steps aside to show it.
const PARTIAL_LINE_WAIT: Duration = Duration::from_millis(150);

/// The longest output line kept for the spinner and the regex.
const MAX_LINE: usize = 4096;

/// The most output held back for its newline while the bar is drawn; past
/// it the bar steps aside at once, as for a partial line that waited too
/// long. A stream without newlines held 71-104 MB for the 150 ms wait.
const MAX_HELD: usize = 64 * 1024;

/// How progress is shown for this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// An indicatif bar on stderr.
    Bar,
    /// Plain heartbeat lines every interval, when one is given.
    Plain,
    /// Nothing but the command's output.
    Silent,
}

impl Style {
    /// Chooses the style from `--progress`, `-q` and whether stderr is a terminal.
    pub fn choose(mode: ProgressMode, quiet: bool) -> Style {
        match mode {
            _ if quiet => Style::Silent,
            ProgressMode::None => Style::Silent,
            ProgressMode::Bar => Style::Bar,
            ProgressMode::Plain => Style::Plain,
            ProgressMode::Auto if std::io::stderr().is_terminal() => Style::Bar,
            ProgressMode::Auto => Style::Plain,
        }
    }
}

/// The live view of one run.
pub struct Display {
    out: RawOut,
    style: Style,
    label: String,
    /// The command, as heartbeats name it.
    name: String,
    started: Instant,
    state: State,
    bar: Option<ProgressBar>,
    /// The style the bar is drawn with now; a style is set only when this
    /// changes, not on every chunk of output.
    shape: Option<Shape>,
    /// Partial lines held back while the bar is drawn, per stream.
    held: [Vec<u8>; 2],
    held_since: Option<Instant>,
    /// The bar stepped aside for a partial line and waits for its newline.
    exposed: bool,
    last_line: String,
    line: [Vec<u8>; 2],
    matcher: Option<LineMatcher>,
    interval: Option<Duration>,
    next_heartbeat: Option<Instant>,
    verb: &'static str,
    /// The terminal this display draws on, locked (see [`TerminalClaim`]).
    _claim: Option<TerminalClaim>,
}

/// The right to draw a bar on stderr's terminal. Several lcrun on one
/// terminal (`make -j`, `xargs -P`) would redraw over each other's bars and
/// lines; the one holding an `flock` on the terminal device draws, and the
/// others print their lines untouched.
struct TerminalClaim(#[allow(dead_code)] std::fs::File);

impl TerminalClaim {
    /// Claims stderr's terminal, or `None` when another process draws on it.
    /// A terminal whose device cannot be opened is not shared knowingly:
    /// drawing goes ahead.
    fn take() -> Option<Option<TerminalClaim>> {
        use std::os::unix::fs::OpenOptionsExt;
        let Ok(path) = std::fs::read_link("/proc/self/fd/2") else {
            return Some(None);
        };
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
        else {
            return Some(None);
        };
        match file.try_lock() {
            Ok(()) => Some(Some(TerminalClaim(file))),
            Err(std::fs::TryLockError::WouldBlock) => None,
            Err(std::fs::TryLockError::Error(_)) => Some(None),
        }
    }
}

impl Display {
    /// A view for a command shown as `label`.
    pub fn new(
        style: Style,
        label: &str,
        interval: Option<Duration>,
        matcher: Option<LineMatcher>,
    ) -> Display {
        let started = Instant::now();
        let mut style = style;
        let mut claim = None;
        if style == Style::Bar && std::io::stderr().is_terminal() {
            match TerminalClaim::take() {
                Some(taken) => claim = taken,
                None => style = Style::Plain,
            }
        }
        let mut display = Display {
            out: RawOut::new(),
            style,
            label: truncate(label, 40),
            name: truncate(&one_line(label), 60),
            started,
            state: State::default(),
            bar: None,
            shape: None,
            held: [Vec::new(), Vec::new()],
            held_since: None,
            exposed: false,
            last_line: String::new(),
            line: [Vec::new(), Vec::new()],
            matcher,
            interval: interval.filter(|i| !i.is_zero()),
            next_heartbeat: None,
            verb: "running",
            _claim: claim,
        };
        display.next_heartbeat = display.interval.map(|i| started + i);
        if style == Style::Bar {
            display.show_bar();
        }
        display
    }

    /// The command's output: written out now, progress read from its lines.
    pub fn output(&mut self, stream: Stream, bytes: &[u8]) {
        if self.matcher.is_some() || self.bar.is_some() || self.exposed || self.beats() {
            self.scan_lines(stream, bytes);
        }
        let Some(bar) = self.bar.clone() else {
            self.write(stream, bytes);
            if self.exposed && self.held_since.is_none() && bytes.last() == Some(&b'\n') {
                self.exposed = false;
                self.show_bar();
            }
            return;
        };
        // Only whole lines go out while the bar is drawn, so it never splits one.
        let i = stream as usize - 1;
        match bytes.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                let held = std::mem::take(&mut self.held[i]);
                let out = &mut self.out;
                bar.suspend(|| {
                    let _ = out.write(stream, &held);
                    let _ = out.write(stream, &bytes[..=end]);
                });
                self.held[i].extend_from_slice(&bytes[end + 1..]);
            }
            None => self.held[i].extend_from_slice(bytes),
        }
        if self.held.iter().map(Vec::len).sum::<usize>() > MAX_HELD {
            self.expose();
            return;
        }
        self.held_since = if self.held.iter().all(Vec::is_empty) {
            None
        } else {
            self.held_since.or(Some(Instant::now()))
        };
        self.refresh();
    }

    /// A progress report from the command.
    pub fn progress(&mut self, update: Update) {
        self.state.apply(update);
        self.refresh();
    }

    /// Called regularly: heartbeats, and letting a waiting partial line out.
    pub fn tick(&mut self) {
        if self.held_since.is_some_and(|t| t.elapsed() >= PARTIAL_LINE_WAIT) {
            self.expose();
        }
        if let (Some(next), Some(interval)) = (self.next_heartbeat, self.interval) {
            if Instant::now() >= next {
                self.next_heartbeat = Some(next + interval);
                if self.style == Style::Plain {
                    self.heartbeat();
                }
            }
        }
    }

    /// Makes heartbeats say `waiting on` rather than `running`; the bar
    /// keeps the label it was given.
    pub fn waiting(mut self) -> Display {
        self.verb = "waiting on";
        if let Some(name) = self.name.strip_prefix("waiting: ") {
            self.name = name.to_owned();
        }
        self
    }

    /// Whether plain heartbeat lines are printed, which carry the last line.
    fn beats(&self) -> bool {
        self.style == Style::Plain && self.interval.is_some()
    }

    /// Replaces the progress shown (a waiter showing another run's progress).
    pub fn set_state(&mut self, state: State) {
        if state != self.state {
            self.state = state;
            self.refresh();
        }
    }

    /// The progress seen so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The failure that stopped output to `stream`, if one did.
    pub fn fault(&self, stream: Stream) -> Option<&std::io::Error> {
        self.out.fault(stream)
    }

    /// Clears the bar and lets out anything held back.
    pub fn finish(&mut self) {
        self.hide_bar();
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let held = std::mem::take(&mut self.held[i]);
            self.write(stream, &held);
        }
    }

    /// Hides the bar and lets the held partial lines out; the bar comes
    /// back after the next newline.
    fn expose(&mut self) {
        self.hide_bar();
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let held = std::mem::take(&mut self.held[i]);
            self.write(stream, &held);
        }
        self.held_since = None;
        self.exposed = true;
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        if !bytes.is_empty() {
            let _ = self.out.write(stream, bytes);
        }
    }

    /// `lcrun: running make -j4 for 5m00s, 3/10 compiling; last line: cc a.c`:
    /// the command, how long, its progress, and the last line it printed.
    fn heartbeat(&mut self) {
        let elapsed = duration::short(self.started.elapsed());
        let mut line = format!("lcrun: {} {} for {elapsed}", self.verb, self.name);
        let summary = self.state.summary();
        if !summary.is_empty() {
            line.push_str(", ");
            line.push_str(&truncate(&one_line(&summary), 80));
        }
        if !self.last_line.is_empty() {
            line.push_str("; last line: ");
            line.push_str(&truncate(&one_line(&self.last_line), 80));
        }
        line.push('\n');
        self.write(Stream::Stderr, line.as_bytes());
    }

    fn scan_lines(&mut self, stream: Stream, bytes: &[u8]) {
        let i = stream as usize - 1;
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = &mut self.line[i];
            if line.len() < MAX_LINE {
                line.extend_from_slice(&rest[..end.min(MAX_LINE - line.len())]);
            }
            let text = String::from_utf8_lossy(line).trim_end_matches('\r').to_string();
            line.clear();
            rest = &rest[end + 1..];
            if let Some(update) = self.matcher.as_ref().and_then(|m| m.update(&text)) {
                self.state.apply(update);
            }
            if !text.trim().is_empty() {
                self.last_line = text;
            }
        }
        let line = &mut self.line[i];
        if line.len() < MAX_LINE {
            line.extend_from_slice(&rest[..rest.len().min(MAX_LINE - line.len())]);
        }
    }

    fn show_bar(&mut self) {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            // --progress bar on something that is not a terminal: draw anyway.
            ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::stderr()), 10)
        };
        let bar = ProgressBar::with_draw_target(None, target)
            .with_prefix(self.label.clone())
            .with_elapsed(self.started.elapsed());
        bar.enable_steady_tick(Duration::from_millis(100));
        self.bar = Some(bar);
        self.shape = None;
        self.refresh();
    }

    fn hide_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn refresh(&mut self) {
        let Some(bar) = self.bar.clone() else { return };
        let shape = match (self.state.pos, self.state.total) {
            (Some(_), Some(_)) => Shape::Bar,
            (Some(_), None) => Shape::Counter,
            (None, _) => Shape::Spinner,
        };
        if self.shape != Some(shape) {
            self.shape = Some(shape);
            bar.set_style(match shape {
                Shape::Bar => bar_style(),
                Shape::Counter => spinner_style(true),
                Shape::Spinner => spinner_style(false),
            });
        }
        match (self.state.total, shape) {
            (Some(total), Shape::Bar) if bar.length() != Some(total) => bar.set_length(total),
            (_, Shape::Counter | Shape::Spinner) if bar.length().is_some() => bar.unset_length(),
            _ => {}
        }
        if let Some(pos) = self.state.pos {
            bar.set_position(pos);
        }
        let message = if self.state.message.is_empty() {
            &self.last_line
        } else {
            &self.state.message
        };
        bar.set_message(truncate(message, 200));
    }
}

/// What the bar shows: a spinner, a spinner with a count, or a real bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Spinner,
    Counter,
    Bar,
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {percent}% {rate} ETA {eta} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/s", state.per_sec());
            },
        )
        .progress_chars("=> ")
}

fn spinner_style(with_pos: bool) -> ProgressStyle {
    let template = if with_pos {
        "{spinner} {prefix} {elapsed} {pos} {wide_msg}"
    } else {
        "{spinner} {prefix} {elapsed} {wide_msg}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// `text` on one line, as a log line carries it: each run of white space
/// and control characters (the newlines of a script, the escape byte of a
/// colour code) becomes one space.
pub fn one_line(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
