//! The registration scripts of bash and zsh: clap's, each with one change
//! (the rest of the shells take clap's as they are).

use std::ffi::{OsStr, OsString};

use clap_complete::env::EnvCompleter;

/// bash, as clap does it, but given the line as typed. bash splits the
/// words of a line at `:` and `=` as well as at blanks (`-c hash:src` is
/// `-c`, `hash`, `:`, `src`), which clap's completer cannot parse; so the
/// script also passes the line up to the cursor, lcrun splits it at blanks
/// only, and each candidate is cut to the part after bash's last break, the
/// part bash replaces.
pub struct Bash;

/// The variable bash's script passes the line in.
pub const BASH_LINE: &str = "_LCRUN_COMP_LINE";

/// The words of the line bash passed, up to the cursor, split at blanks
/// (with an empty word last when the cursor follows a blank); `None` when
/// not completing for bash.
pub fn bash_words() -> Option<Vec<OsString>> {
    let line = std::env::var_os(BASH_LINE)?;
    let bytes = line.as_encoded_bytes();
    let mut words: Vec<OsString> = bytes
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        // SAFETY: split at ASCII bytes of an encoded OsStr.
        .map(|w| unsafe { OsStr::from_encoded_bytes_unchecked(w) }.to_owned())
        .collect();
    if bytes.last().is_none_or(|b| b.is_ascii_whitespace()) {
        words.push(OsString::new());
    }
    Some(words)
}

impl EnvCompleter for Bash {
    fn name(&self) -> &'static str {
        clap_complete::env::Bash.name()
    }

    fn is(&self, name: &str) -> bool {
        clap_complete::env::Bash.is(name)
    }

    fn write_registration(
        &self,
        var: &str,
        name: &str,
        bin: &str,
        completer: &str,
        buf: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let mut script = Vec::new();
        clap_complete::env::Bash.write_registration(var, name, bin, completer, &mut script)?;
        let script = String::from_utf8_lossy(&script);
        let pass = "        _CLAP_IFS=\"$IFS\" \\\n";
        if !script.contains(pass) {
            return Err(std::io::Error::other("clap's bash script changed"));
        }
        let line = format!("{pass}        {BASH_LINE}=\"${{COMP_LINE:0:COMP_POINT}}\" \\\n");
        buf.write_all(script.replacen(pass, &line, 1).as_bytes())
    }

    fn write_complete(
        &self,
        cmd: &mut clap::Command,
        args: Vec<OsString>,
        current_dir: Option<&std::path::Path>,
        buf: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let Some(words) = bash_words() else {
            return clap_complete::env::Bash.write_complete(cmd, args, current_dir, buf);
        };
        let index: usize = std::env::var("_CLAP_COMPLETE_INDEX")
            .ok()
            .and_then(|i| i.parse().ok())
            .unwrap_or_default();
        // bash's own word under the cursor: what it will replace.
        let bash_word = args.get(index).cloned().unwrap_or_default();
        let current = words.last().cloned().unwrap_or_default();
        let typed = current.as_encoded_bytes();
        let cut = if typed.ends_with(bash_word.as_encoded_bytes()) {
            typed.len() - bash_word.len()
        } else {
            0
        };
        let index = words.len() - 1;
        let candidates = clap_complete::engine::complete(cmd, words, index, current_dir)?;
        let ifs = std::env::var("_CLAP_IFS").unwrap_or_else(|_| "\n".to_owned());
        for (i, candidate) in candidates.iter().enumerate() {
            if i != 0 {
                buf.write_all(ifs.as_bytes())?;
            }
            let value = candidate.get_value().as_encoded_bytes();
            buf.write_all(value.get(cut..).unwrap_or(value))?;
        }
        Ok(())
    }
}

/// zsh, as clap does it, but also as a file on `fpath` (`_lcrun`, loaded by
/// compinit on the first Tab): clap's script only registers its function,
/// so that first Tab would complete nothing. Run as `_lcrun`, it completes
/// at once, as clap's static zsh scripts do.
pub struct Zsh;

impl EnvCompleter for Zsh {
    fn name(&self) -> &'static str {
        clap_complete::env::Zsh.name()
    }

    fn is(&self, name: &str) -> bool {
        clap_complete::env::Zsh.is(name)
    }

    fn write_registration(
        &self,
        var: &str,
        name: &str,
        bin: &str,
        completer: &str,
        buf: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let mut script = Vec::new();
        clap_complete::env::Zsh.write_registration(var, name, bin, completer, &mut script)?;
        let script = String::from_utf8_lossy(&script);
        let function = format!("_clap_dynamic_completer_{}", name.replace('-', "_"));
        let register = format!("compdef {function} {bin}\n");
        if !script.ends_with(&register) {
            return Err(std::io::Error::other("clap's zsh script changed"));
        }
        let body = &script[..script.len() - register.len()];
        let either = format!(
            "if [ \"$funcstack[1]\" = \"_{bin}\" ]; then\n    {function} \"$@\"\nelse\n    {register}fi\n"
        );
        buf.write_all(format!("{body}{either}").as_bytes())
    }

    fn write_complete(
        &self,
        cmd: &mut clap::Command,
        args: Vec<OsString>,
        current_dir: Option<&std::path::Path>,
        buf: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        clap_complete::env::Zsh.write_complete(cmd, args, current_dir, buf)
    }
}
