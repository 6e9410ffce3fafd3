//! lcrun's own messages: on stderr only, each line starting with `lcrun:`,
//! silenced by `-q` except for errors.

use std::io::Write;

/// Where lcrun's own messages go.
#[derive(Debug, Clone, Copy)]
pub struct Messages {
    quiet: bool,
}

impl Messages {
    /// Messages, silenced when `quiet`.
    pub fn new(quiet: bool) -> Messages {
        Messages { quiet }
    }

    /// Whether notes and warnings are shown.
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// A warning or note; dropped with `-q`.
    pub fn warn(&self, text: impl std::fmt::Display) {
        if !self.quiet {
            error(text);
        }
    }
}

/// An error: always shown, always one line.
pub fn error(text: impl std::fmt::Display) {
    let text = text.to_string();
    let line = text
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(std::io::stderr().lock(), "lcrun: {line}");
}
