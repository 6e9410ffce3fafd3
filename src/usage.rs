//! A command-line mistake as one `lcrun:` line that says all of it: clap
//! renders an error over several lines (what is wrong, the missing argument
//! or the valid values, a tip, the usage), and its first line alone said
//! "the following required arguments were not provided:" with nothing listed.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};

use crate::cli::Cli;
use crate::invocation::shell_quote;

/// The one line for `err`, which parsing `args` (lcrun's whole argv) gave.
pub fn one_line(err: &clap::Error, args: &[OsString]) -> String {
    let rendered = err.render().to_string();
    let mut parts: Vec<String> = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        let line = line.trim_start_matches("error: ");
        match parts.last_mut() {
            // "...not provided:" and the list under it, "invalid value ..."
            // and its "[possible values: ...]": one clause.
            Some(last) if last.ends_with(':') || line.starts_with('[') || line.starts_with('<') => {
                last.push(' ');
                last.push_str(line);
            }
            _ => parts.push(line.to_owned()),
        }
    }
    if let Some(fixed) = command_without_separator(err, args) {
        parts.push(format!("to run a command, put it after '--': {fixed}"));
    } else {
        parts.push("see 'lcrun --help'".to_owned());
    }
    parts.join("; ")
}

/// `lcrun echo hi` means `lcrun -- echo hi`: when the argument clap did not
/// expect is a word, not an option, and `--` before it makes the whole line
/// valid, that line, as it would be typed.
fn command_without_separator(err: &clap::Error, args: &[OsString]) -> Option<String> {
    if !matches!(
        err.kind(),
        ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand
    ) {
        return None;
    }
    let word = [ContextKind::InvalidArg, ContextKind::InvalidSubcommand]
        .into_iter()
        .find_map(|kind| match err.get(kind) {
            Some(ContextValue::String(word)) => Some(word.clone()),
            _ => None,
        })?;
    if word.starts_with('-') || args.iter().any(|a| a == "--") {
        return None;
    }
    // The word may also be an option's value earlier on (`-c echo echo hi`):
    // the first place where a `--` makes the line parse is the right one.
    (1..args.len())
        .filter(|&i| args[i] == word.as_str())
        .map(|i| [&args[..i], &["--".into()], &args[i..]].concat())
        .find(|fixed| Cli::parse_args(fixed).is_ok())
        .map(|fixed| {
            let mut words = vec!["lcrun".to_owned()];
            words.extend(fixed[1..].iter().map(|a| shell_quote(&a.to_string_lossy())));
            words.join(" ")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn line_for(args: &[&str]) -> String {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let err = Cli::try_parse_from(&args).expect_err("a usage error");
        one_line(&err, &args)
    }

    #[test]
    fn invalid_value_lists_the_valid_ones() {
        let line = line_for(&["lcrun", "--cache-mode", "bogus", "--", "true"]);
        assert!(line.contains("'bogus'"), "{line}");
        assert!(line.contains("rw, ro, wo, off"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn missing_value_is_named() {
        let line = line_for(&["lcrun", "--cache-dir"]);
        assert!(line.contains("--cache-dir <DIR>"), "{line}");
    }

    #[test]
    fn a_command_without_separator_gets_one() {
        let line = line_for(&["lcrun", "echo", "hi"]);
        assert!(line.contains("lcrun -- echo hi"), "{line}");
        let line = line_for(&["lcrun", "-c", "echo", "echo", "it's"]);
        assert!(line.contains(r"lcrun -c echo -- echo 'it'\''s'"), "{line}");
        let line = line_for(&["lcrun", "--bogus"]);
        assert!(!line.contains("after '--'"), "{line}");
    }
}
