//! The registration scripts: clap's, each marking the runs it makes as a
//! Tab's ([`TAB`]), and those of bash and zsh with one change more; and
//! bash's completion, which reads the line itself.

use std::ffi::{OsStr, OsString};
use std::io;

use clap_complete::env::{Bash, Elvish, EnvCompleter, Fish, Powershell, Zsh};

use super::words::{self, Word};

/// The variable bash's script passes the line in.
pub const BASH_LINE: &str = "_LCRUN_COMP_LINE";

/// The words of the line bash passed, up to the cursor, split at blanks
/// that are not quoted or escaped (with an empty word last when the cursor
/// follows a blank); `None` when not completing for bash.
pub fn bash_words() -> Option<Vec<Word>> {
    let line = std::env::var_os(BASH_LINE).filter(|line| !line.is_empty())?;
    Some(words::split(line.as_encoded_bytes()))
}

/// A word's value as lcrun receives it.
pub fn value(word: &Word) -> OsString {
    // SAFETY: the bytes of an encoded OsStr, less ASCII quotes and
    // backslashes only.
    unsafe { OsStr::from_encoded_bytes_unchecked(&word.value) }.to_owned()
}

/// What lcrun does to clap's way with a shell: its registration script,
/// and the completion of a Tab.
pub trait Shell: EnvCompleter {
    /// clap's script, [`marked`], made ready for lcrun.
    fn patch(&self, script: String, _name: &str, _bin: &str) -> io::Result<String> {
        Ok(script)
    }

    /// Writes the candidates for a Tab.
    fn complete(
        &self,
        cmd: &mut clap::Command,
        args: Vec<OsString>,
        current_dir: Option<&std::path::Path>,
        buf: &mut dyn io::Write,
    ) -> io::Result<()> {
        self.write_complete(cmd, args, current_dir, buf)
    }
}

/// bash, as clap does it, but given the line as typed. bash splits the
/// words of a line at `:` and `=` as well as at blanks (`-c hash:src` is
/// `-c`, `hash`, `:`, `src`), which clap's completer cannot parse; so the
/// script also passes the line up to the cursor, lcrun splits it at blanks
/// only, and each candidate is cut to the part after bash's last break, the
/// part bash replaces.
impl Shell for Bash {
    fn patch(&self, script: String, _name: &str, _bin: &str) -> io::Result<String> {
        let pass = "        _CLAP_IFS=\"$IFS\" \\\n";
        if !script.contains(pass) {
            return Err(io::Error::other("clap's bash script changed"));
        }
        // Not past 30,000 characters (bash counts characters, and one takes
        // up to 4 bytes): one variable may not hold more than 128 KiB, and
        // the run of lcrun would fail in the shell. lcrun then takes clap's
        // words.
        let line = format!(
            "{pass}        {BASH_LINE}=\"${{COMP_LINE:0:COMP_POINT < 30000 ? COMP_POINT : 0}}\" \\\n"
        );
        Ok(script.replacen(pass, &line, 1))
    }

    fn complete(
        &self,
        cmd: &mut clap::Command,
        args: Vec<OsString>,
        current_dir: Option<&std::path::Path>,
        buf: &mut dyn io::Write,
    ) -> io::Result<()> {
        let Some(words) = bash_words() else {
            return self.write_complete(cmd, args, current_dir, buf);
        };
        let index: usize = std::env::var("_CLAP_COMPLETE_INDEX")
            .ok()
            .and_then(|i| i.parse().ok())
            .unwrap_or_default();
        // bash's own word under the cursor: what it will replace (after
        // its last `:` or `=`, inside a quote the cursor is in). bash gives
        // it as typed, or without the quote it is in: compared unquoted.
        let bash_word = args.get(index).cloned().unwrap_or_default();
        let bash_value = words::unquote(bash_word.as_encoded_bytes());
        let current = words.last().cloned().unwrap_or_default();
        let before = current.value.strip_suffix(&bash_value[..]).unwrap_or_default();
        let index = words.len() - 1;
        let values: Vec<OsString> = words.iter().map(value).collect();
        let candidates = clap_complete::engine::complete(cmd, values, index, current_dir)?;
        let ifs = std::env::var("_CLAP_IFS").unwrap_or_else(|_| "\n".to_owned());
        let mut first = true;
        for candidate in &candidates {
            let value = candidate.get_value().as_encoded_bytes();
            let rest = value.strip_prefix(before).unwrap_or(value);
            // bash inserts the reply as it is: quoted as it will read it.
            let reply = words::escape(rest, current.open);
            if reply.windows(ifs.len()).any(|w| w == ifs.as_bytes()) {
                // It would be split in two: a name bash cannot be given.
                continue;
            }
            if !first {
                buf.write_all(ifs.as_bytes())?;
            }
            first = false;
            buf.write_all(&reply)?;
        }
        Ok(())
    }
}

/// zsh, as clap does it, but also as a file on `fpath` (`_lcrun`, loaded by
/// compinit on the first Tab): clap's script only registers its function,
/// so that first Tab would complete nothing. Run as `_lcrun`, it completes
/// at once, as clap's static zsh scripts do.
impl Shell for Zsh {
    fn patch(&self, script: String, name: &str, bin: &str) -> io::Result<String> {
        // clap escapes a `:` in a value (`hash\:src/`) but its script cut
        // the value at the first `:`, escaped or not: a directory after
        // `hash:` was not seen to end in `/`, and got a space after it.
        if script.matches(ZSH_CUT).count() != 1 {
            return Err(io::Error::other("clap's zsh script changed"));
        }
        let script = script.replacen(ZSH_CUT, ZSH_CUT_AT_UNESCAPED, 1);
        let function = format!("_clap_dynamic_completer_{}", name.replace('-', "_"));
        let register = format!("compdef {function} {bin}\n");
        let Some(body) = script.strip_suffix(&register) else {
            return Err(io::Error::other("clap's zsh script changed"));
        };
        let either = format!(
            "if [ \"$funcstack[1]\" = \"_{bin}\" ]; then\n    {function} \"$@\"\nelse\n    {register}fi\n"
        );
        Ok(format!("{body}{either}"))
    }
}

impl Shell for Elvish {}
impl Shell for Fish {}
impl Shell for Powershell {}

/// A shell as lcrun completes for it: clap's, with [`Shell`]'s changes.
pub struct Lcrun<S: 'static>(pub S);

impl<S: Shell> EnvCompleter for Lcrun<S> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn is(&self, name: &str) -> bool {
        self.0.is(name)
    }

    fn write_registration(
        &self,
        var: &str,
        name: &str,
        bin: &str,
        completer: &str,
        buf: &mut dyn io::Write,
    ) -> io::Result<()> {
        let mut script = Vec::new();
        self.0
            .write_registration(var, name, bin, completer, &mut script)?;
        let script = marked(self.name(), var, &String::from_utf8_lossy(&script))?;
        buf.write_all(self.0.patch(script, name, bin)?.as_bytes())
    }

    fn write_complete(
        &self,
        cmd: &mut clap::Command,
        args: Vec<OsString>,
        current_dir: Option<&std::path::Path>,
        buf: &mut dyn io::Write,
    ) -> io::Result<()> {
        self.0.complete(cmd, args, current_dir, buf)
    }
}

/// The variable each registration script sets, beside `LCRUN_COMPLETE`,
/// when a Tab runs lcrun. `LCRUN_COMPLETE` alone, left exported in a
/// user's environment, must not turn `lcrun -- make` into a completion:
/// without this mark lcrun runs the command (see [`super::run`]).
pub const TAB: &str = "_LCRUN_TAB";

/// `script` (clap's registration for `shell`, setting `var`) with [`TAB`]
/// set where `var` is set for the run of lcrun.
fn marked(shell: &str, var: &str, script: &str) -> io::Result<String> {
    let (find, mark) = match shell {
        "bash" | "zsh" => (
            format!("        {var}=\"{shell}\" \\\n"),
            format!("        {TAB}=1 \\\n"),
        ),
        "elvish" => (format!("{var}=\"elvish\" "), format!("{TAB}=1 ")),
        "fish" => (format!("{var}=fish "), format!("{TAB}=1 ")),
        "powershell" => (
            format!("    $env:{var} = \"powershell\";\n"),
            format!("    $env:{TAB} = \"1\";\n"),
        ),
        _ => return Err(io::Error::other(format!("no mark for {shell}"))),
    };
    if script.matches(&find).count() != 1 {
        return Err(io::Error::other(format!("clap's {shell} script changed")));
    }
    let script = match shell {
        // bash and zsh pass it as a prefix of the command; elvish and fish
        // after the variable in theirs.
        "bash" | "zsh" => script.replacen(&find, &format!("{mark}{find}"), 1),
        "powershell" => {
            // Set beside the variable, and removed after the run.
            let ran = "\"@;\n";
            if script.matches(ran).count() != 1 {
                return Err(io::Error::other("clap's powershell script changed"));
            }
            script.replacen(&find, &format!("{find}{mark}"), 1).replacen(
                ran,
                &format!("{ran}    Remove-Item Env:\\{TAB};\n"),
                1,
            )
        }
        _ => script.replacen(&find, &format!("{find}{mark}"), 1),
    };
    Ok(script)
}

/// How clap's zsh script splits a reply into its value and description.
const ZSH_CUT: &str = r#"            local value="${completion%%:*}"
            if [[ "$value" == */ ]]; then
                local dir_no_slash="${value%/}"
                if [[ "$completion" == *:* ]]; then
                    local desc="${completion#*:}"
"#;

/// The same at the first `:` that is not escaped.
const ZSH_CUT_AT_UNESCAPED: &str = r#"            local sep=$'\1'
            local unescaped="${completion//\\:/$sep}"
            local value="${${unescaped%%:*}//$sep/\\:}"
            if [[ "$value" == */ ]]; then
                local dir_no_slash="${value%/}"
                if [[ "$unescaped" == *:* ]]; then
                    local desc="${${unescaped#*:}//$sep/\\:}"
"#;
