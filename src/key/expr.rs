//! Cache-by expressions (`-c/--cache-by`, Dash's `cache_by`): parsing, and
//! adding each one's value to a key. Paths, names and commands are bytes, as
//! the OS gives them.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::{command, files, git, KeyBuilder, KeyError};

/// A `-c/--cache-by` expression (Dash's `cache_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheBy {
    /// Modification time and size of a path.
    Mtime(PathBuf),
    /// Contents of a path, or of every file matching a glob when no such
    /// path exists; directories recurse.
    Hash(PathBuf),
    /// HEAD of a git repository plus its uncommitted changes.
    Git(Option<PathBuf>),
    /// The value of an environment variable (only ever stored keyed).
    Env(OsString),
    /// The stdout (and exit status) of a shell command.
    Cmd(OsString),
    /// A literal string.
    Value(OsString),
    /// lcrun's stdin, which is then fed to the command.
    Stdin,
}

const KINDS: &str = "mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:COMMAND, value:STRING, stdin";

impl CacheBy {
    /// Parses an expression; everything after `KIND:` is taken as bytes.
    pub fn parse(expr: &OsStr) -> Result<CacheBy, KeyError> {
        let bytes = expr.as_bytes();
        let malformed = |reason: &str| KeyError::Malformed {
            expr: expr.to_string_lossy().into_owned(),
            reason: reason.to_owned(),
        };
        let (kind, arg) = match bytes.iter().position(|&b| b == b':') {
            Some(colon) => (&bytes[..colon], Some(&bytes[colon + 1..])),
            None => (bytes, None),
        };
        let kind = String::from_utf8_lossy(kind);
        let required = |arg: Option<&[u8]>, what: &str| match arg {
            Some(a) if !a.is_empty() => Ok(OsString::from_vec(a.to_vec())),
            _ => Err(malformed(&format!("'{kind}:' needs {what}"))),
        };
        match &*kind {
            "mtime" => Ok(CacheBy::Mtime(required(arg, "a path")?.into())),
            "hash" => Ok(CacheBy::Hash(required(arg, "a path or glob")?.into())),
            "git" => match arg {
                None => Ok(CacheBy::Git(None)),
                Some(dir) => Ok(CacheBy::Git(Some(required(Some(dir), "a directory")?.into()))),
            },
            "env" => {
                let name = required(arg, "a variable name")?;
                if name.as_bytes().contains(&b'=') || name.as_bytes().contains(&0) {
                    return Err(malformed("a variable name cannot contain '=' or NUL"));
                }
                Ok(CacheBy::Env(name))
            }
            "cmd" => Ok(CacheBy::Cmd(required(arg, "a shell command")?)),
            "value" => match arg {
                Some(value) => Ok(CacheBy::Value(OsString::from_vec(value.to_vec()))),
                None => Err(malformed("'value' needs ':STRING'")),
            },
            "stdin" if arg.is_none() => Ok(CacheBy::Stdin),
            "stdin" => Err(malformed("'stdin' takes no argument")),
            _ => Err(malformed(&format!(
                "unknown kind '{kind}' (expected one of {KINDS})"
            ))),
        }
    }

    /// Computes the expression's value and adds it to `key`. `stdin_spool`
    /// receives lcrun's stdin when the expression is `stdin`. A `cmd:` still
    /// running at `deadline` is ended with all it started, and stdin is read
    /// no longer than that.
    pub fn add_to(
        &self,
        expr: &OsStr,
        key: &mut KeyBuilder,
        stdin_spool: &mut Option<File>,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), KeyError> {
        let mut label = b"cache-by ".to_vec();
        label.extend_from_slice(expr.as_bytes());
        let eval = |reason: String| KeyError::Eval {
            expr: expr.to_string_lossy().into_owned(),
            reason,
        };
        let timed_out = || KeyError::TimedOut {
            expr: expr.to_string_lossy().into_owned(),
        };
        match self {
            CacheBy::Mtime(path) => key.field(&label, &files::mtime(path).map_err(|e| eval(e.to_string()))?),
            CacheBy::Hash(path) => {
                let (digest, seen) = files::hash(path).map_err(|e| eval(e.to_string()))?;
                key.digest_field(&label, digest);
                if let Some(seen) = seen {
                    key.detail(super::Detail::Files(seen));
                }
            }
            CacheBy::Git(dir) => {
                let dir = dir.clone().unwrap_or_else(|| PathBuf::from("."));
                let (digest, detail) = git::state(&dir).map_err(eval)?;
                key.digest_field(&label, digest);
                key.detail(detail);
            }
            CacheBy::Env(name) => {
                let value = match std::env::var_os(name) {
                    Some(value) => [b"set:", value.as_bytes()].concat(),
                    None => b"unset".to_vec(),
                };
                key.secret_field(&label, Sha256::digest(&value).into())
            }
            CacheBy::Cmd(command) => match command::output(command, deadline).map_err(eval)? {
                Some(digest) => key.secret_field(&label, digest),
                None => return Err(timed_out()),
            },
            CacheBy::Value(value) => key.field(&label, value.as_bytes()),
            CacheBy::Stdin => {
                let Some((digest, file)) =
                    command::spool_stdin(deadline).map_err(|e| eval(format!("reading stdin: {e}")))?
                else {
                    return Err(timed_out());
                };
                *stdin_spool = Some(file);
                key.secret_field(&label, digest)
            }
        }
        Ok(())
    }
}

impl FromStr for CacheBy {
    type Err = KeyError;

    fn from_str(expr: &str) -> Result<CacheBy, KeyError> {
        CacheBy::parse(OsStr::new(expr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(expr: &str) -> Result<CacheBy, KeyError> {
        expr.parse()
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(parse("mtime:a/b").unwrap(), CacheBy::Mtime("a/b".into()));
        assert_eq!(
            parse("hash:src/**/*.rs").unwrap(),
            CacheBy::Hash("src/**/*.rs".into())
        );
        // Whether it is a glob is decided when the path is looked at.
        assert_eq!(parse("hash:x[").unwrap(), CacheBy::Hash("x[".into()));
        assert_eq!(parse("git").unwrap(), CacheBy::Git(None));
        assert_eq!(parse("git:..").unwrap(), CacheBy::Git(Some("..".into())));
        assert_eq!(parse("env:HOME").unwrap(), CacheBy::Env("HOME".into()));
        assert_eq!(parse("cmd:date +%F").unwrap(), CacheBy::Cmd("date +%F".into()));
        assert_eq!(parse("value:a:b").unwrap(), CacheBy::Value("a:b".into()));
        assert_eq!(parse("value:").unwrap(), CacheBy::Value(OsString::new()));
        assert_eq!(parse("stdin").unwrap(), CacheBy::Stdin);
    }

    #[test]
    fn takes_paths_as_bytes() {
        let expr = OsStr::from_bytes(b"hash:caf\xe9");
        assert_eq!(
            CacheBy::parse(expr).unwrap(),
            CacheBy::Hash(OsStr::from_bytes(b"caf\xe9").into())
        );
    }

    #[test]
    fn rejects_malformed_expressions() {
        for bad in [
            "", "mtime", "mtime:", "hash:", "env:", "env:A=B", "cmd:", "value", "stdin:x", "git:", "time:x",
            "MTIME:x",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
    }
}
