//! An invocation: the command as the user asked for it, checked and resolved,
//! with everything its cache key is made of.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::cli::RunArgs;
use crate::key::{self, CacheBy, Key, KeyBuilder, Resolved};
use crate::outputs::{self, DeclaredPath};

/// A command ready to be keyed and run.
pub struct Invocation {
    /// The argv to execute (`/bin/sh -c STRING` for `--shell`).
    pub argv: Vec<OsString>,
    /// The `--shell` string, if that is how it was given.
    pub shell: Option<OsString>,
    /// The working directory.
    pub cwd: PathBuf,
    /// The parsed cache-by expressions, with their text.
    pub cache_by: Vec<(OsString, CacheBy)>,
    /// What `argv[0]` resolved to.
    pub program: Resolved,
    /// The declared output paths (`-o`), canonical, sorted, no repeats.
    pub outputs: Vec<DeclaredPath>,
}

impl Invocation {
    /// Checks the arguments: every error here is lcrun's own (status 125) and
    /// comes before anything runs.
    pub fn new(args: &RunArgs) -> anyhow::Result<Invocation> {
        let cache_by = args
            .cache_by
            .iter()
            .map(|expr| Ok((expr.clone(), CacheBy::parse(expr)?)))
            .collect::<Result<Vec<_>, key::KeyError>>()?;
        let argv = match &args.shell {
            Some(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
            None if args.command.is_empty() => {
                bail!(
                    "no command given; usage: lcrun [OPTIONS] -- COMMAND [ARGS...] or lcrun --shell 'STRING'"
                )
            }
            None => args.command.clone(),
        };
        for &index in &args.ignore_arg {
            let reason = if args.shell.is_some() {
                Some("cannot be used with --shell".to_owned())
            } else if index >= argv.len() {
                Some(format!("the command has only arguments 0 to {}", argv.len() - 1))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(key::KeyError::IgnoreArg { index, reason }.into());
            }
        }
        let outputs = outputs::declare_all(&args.output)?;
        let cwd = std::env::current_dir().context("cannot read the working directory")?;
        let program = key::resolve_program(&argv[0], &cwd);
        Ok(Invocation {
            argv,
            shell: args.shell.clone(),
            cwd,
            cache_by,
            program,
            outputs,
        })
    }

    /// The command as a shell would show it, for messages and listings.
    pub fn label(&self) -> String {
        match &self.shell {
            Some(script) => String::from_utf8_lossy(script.as_bytes()).into_owned(),
            None => self
                .argv
                .iter()
                .map(|a| shell_quote(&String::from_utf8_lossy(a.as_bytes())))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// Derives the key. Evaluates every cache-by expression in order; a
    /// `stdin` expression spools our stdin into the returned file. Past
    /// `deadline` no expression is started and a running `cmd:` is ended.
    pub fn key(
        &self,
        args: &RunArgs,
        program: &std::path::Path,
        deadline: Option<std::time::Instant>,
    ) -> Result<(Key, Option<File>), key::KeyError> {
        let mut builder = KeyBuilder::new();
        match &self.shell {
            Some(script) => builder.field("shell", script.as_bytes()),
            None => builder.field("argv", &key::encode_argv(&self.argv, &args.ignore_arg)),
        }
        let (identity, detail) = key::program_identity(program);
        builder.field("program", &identity);
        if let Some(detail) = detail {
            builder.detail(detail);
        }
        if self.shell.is_none() {
            if let Some(script) = key::interpreter_script(&self.argv) {
                builder.field("script", &key::script_identity(&self.cwd.join(script)));
            }
        }
        if !args.no_cwd {
            builder.field("cwd", self.cwd.as_os_str().as_bytes());
        }
        if let Some(scope) = &args.scope {
            builder.field("scope", scope.as_bytes());
        }
        // Only with -o, so the keys of runs without it stay as they were.
        if !self.outputs.is_empty() {
            let mut paths = Vec::new();
            for path in &self.outputs {
                paths.extend_from_slice(&(path.as_bytes().len() as u64).to_be_bytes());
                paths.extend_from_slice(path.as_bytes());
            }
            builder.field("outputs", &paths);
        }
        let mut stdin = None;
        for (text, expr) in &self.cache_by {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(key::KeyError::TimedOut {
                    expr: text.to_string_lossy().into_owned(),
                });
            }
            expr.add_to(text, &mut builder, &mut stdin, deadline)?;
        }
        Ok((builder.finish(), stdin))
    }
}

/// Quotes an argument for display when a shell would need it.
pub(crate) fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(shell_quote("make"), "make");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
