//! The program that runs, as part of the key: where `argv[0]` resolves, its
//! size and mtime, and, when it is an interpreter (`python3 tiny.py`,
//! `sh -e job.sh`), the script it runs, which is as much the program as the
//! interpreter is.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::push_item;

/// Where `argv[0]` resolves, as `execvp` would find it.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// An executable file.
    Found(PathBuf),
    /// Something exists there but cannot be executed.
    NotExecutable(PathBuf),
    /// Nothing by that name.
    NotFound,
}

/// Resolves a program name: a name with a slash is a path from `cwd`, any
/// other name is looked up in `PATH`.
pub fn resolve_program(name: &OsStr, cwd: &Path) -> Resolved {
    if name.is_empty() {
        return Resolved::NotFound;
    }
    if name.as_bytes().contains(&b'/') {
        let path = cwd.join(name);
        return match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Resolved::Found(path),
            Ok(_) => Resolved::NotExecutable(path),
            Err(_) => Resolved::NotFound,
        };
    }
    // With no PATH, glibc's execvp searches its default, `confstr(_CS_PATH)`.
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    let mut not_executable = None;
    for dir in std::env::split_paths(&search) {
        let path = cwd.join(dir).join(name);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Resolved::Found(path);
            }
            not_executable.get_or_insert(path);
        }
    }
    not_executable.map_or(Resolved::NotFound, Resolved::NotExecutable)
}

/// The identity of the program that runs: its path, size and mtime, so an
/// edited script or an upgraded tool is a miss.
pub fn program_identity(path: &Path) -> (Vec<u8>, Option<super::Detail>) {
    let mut buf = Vec::new();
    push_item(&mut buf, path.as_os_str().as_bytes());
    match fs::metadata(path) {
        Ok(meta) => {
            buf.extend_from_slice(b"present");
            buf.extend_from_slice(&meta.size().to_be_bytes());
            buf.extend_from_slice(&meta.mtime().to_be_bytes());
            buf.extend_from_slice(&meta.mtime_nsec().to_be_bytes());
            let detail = super::Detail::Program {
                size: meta.size(),
                mtime: meta.mtime(),
                nsec: meta.mtime_nsec(),
            };
            (buf, Some(detail))
        }
        Err(_) => {
            buf.extend_from_slice(b"missing");
            (buf, None)
        }
    }
}

/// How an interpreter reads its command line, as far as finding its script
/// goes. Options not listed here take no value.
struct Interpreter {
    /// Options after which there is no script file: the program comes from
    /// the option's value or from stdin (`sh -c`, `python3 -m`, `node -e`).
    inline: &'static [&'static str],
    /// Options whose value is the next argument (`sh -o nounset`).
    valued: &'static [&'static str],
    /// Options whose value is the script itself (`php -f file`).
    script: &'static [&'static str],
    /// A subcommand that may come before the script (`deno run x.ts`).
    subcommand: Option<&'static str>,
}

const SHELL: Interpreter = Interpreter {
    inline: &["-c", "-s"],
    valued: &["-o", "+o", "-O", "+O", "--rcfile", "--init-file"],
    script: &[],
    subcommand: None,
};
const PYTHON: Interpreter = Interpreter {
    inline: &["-c", "-m"],
    valued: &["-W", "-X", "--check-hash-based-pycs"],
    script: &[],
    subcommand: None,
};
const NODE: Interpreter = Interpreter {
    inline: &["-e", "--eval", "-p", "--print", "-i", "--interactive"],
    valued: &[
        "-r",
        "--require",
        "--import",
        "--loader",
        "--experimental-loader",
        "-C",
        "--conditions",
        "--input-type",
        "--env-file",
        "--title",
    ],
    script: &[],
    subcommand: None,
};
const DENO: Interpreter = Interpreter {
    inline: &["-e", "--eval"],
    valued: &[
        "-c",
        "--config",
        "--import-map",
        "--lock",
        "-L",
        "--log-level",
        "--cert",
        "--location",
        "--seed",
        "--env-file",
        "--preload",
        "-r",
        "--cwd",
    ],
    script: &[],
    subcommand: Some("run"),
};
const RUBY: Interpreter = Interpreter {
    inline: &["-e"],
    valued: &["-r", "-I", "-C", "-E", "--encoding"],
    script: &[],
    subcommand: None,
};
const PERL: Interpreter = Interpreter {
    inline: &["-e", "-E"],
    valued: &["-I"],
    script: &[],
    subcommand: None,
};
const PHP: Interpreter = Interpreter {
    inline: &["-r", "-a", "-S", "-B", "-R", "-F", "-E"],
    valued: &["-c", "-d", "-z", "-t"],
    script: &["-f"],
    subcommand: None,
};
const RSCRIPT: Interpreter = Interpreter {
    inline: &["-e"],
    valued: &[],
    script: &[],
    subcommand: None,
};
const LUA: Interpreter = Interpreter {
    // `lua -e STAT script.lua` runs both: `-e` takes a value and the script
    // still follows.
    inline: &[],
    valued: &["-e", "-l"],
    script: &[],
    subcommand: None,
};

/// The interpreter a program name stands for: its base name without a
/// version suffix (`python3.11`, `ruby3.2`, `lua5.4`).
fn interpreter(program: &OsStr) -> Option<&'static Interpreter> {
    let base = program.as_bytes().rsplit(|&b| b == b'/').next()?;
    let name = match base.iter().rposition(|b| !(b.is_ascii_digit() || *b == b'.')) {
        Some(last) => &base[..=last],
        None => return None,
    };
    Some(match name {
        b"sh" | b"bash" | b"zsh" | b"dash" | b"ksh" | b"mksh" => &SHELL,
        b"python" | b"pypy" => &PYTHON,
        b"node" | b"nodejs" => &NODE,
        b"deno" | b"bun" => &DENO,
        b"ruby" => &RUBY,
        b"perl" => &PERL,
        b"php" => &PHP,
        b"Rscript" => &RSCRIPT,
        b"lua" | b"luajit" => &LUA,
        _ => return None,
    })
}

/// The script an interpreter in `argv` would run: its first argument that
/// is not an option or an option's value. `None` when `argv[0]` is no
/// interpreter, or its program comes from an option or stdin.
pub fn interpreter_script(argv: &[OsString]) -> Option<&OsStr> {
    let argv = unwrapped(argv)?;
    let rules = interpreter(argv.first()?)?;
    let mut args = argv[1..].iter().map(|a| a.as_bytes());
    let mut subcommand = rules.subcommand;
    while let Some(arg) = args.next() {
        let word = |list: &[&str]| list.iter().any(|o| o.as_bytes() == arg);
        if arg == b"--" {
            return args.next().filter(|a| *a != b"-").map(OsStr::from_bytes);
        }
        if arg == b"-" {
            return None;
        }
        if subcommand.is_some_and(|s| s.as_bytes() == arg) {
            subcommand = None;
            continue;
        }
        if !(arg.starts_with(b"-") || (arg.starts_with(b"+") && rules.valued.contains(&"+o"))) {
            return Some(OsStr::from_bytes(arg));
        }
        subcommand = None;
        if word(rules.script) {
            return args.next().map(OsStr::from_bytes);
        }
        if word(rules.inline) {
            return None;
        }
        if word(rules.valued) {
            args.next();
            continue;
        }
        if arg.starts_with(b"--") {
            // `--opt=value` carries its value; other long options take none.
            continue;
        }
        // A cluster of one-letter options (`-ec`, `-uW error`): an inline
        // letter ends the search, a valued letter takes the rest of the
        // cluster or, when it is last, the next argument.
        let sign = arg[0];
        for (i, &letter) in arg.iter().enumerate().skip(1) {
            let option = [sign, letter];
            let is = |list: &[&str]| list.iter().any(|o| o.as_bytes() == option);
            if is(rules.inline) {
                return None;
            }
            if is(rules.script) {
                return match &arg[i + 1..] {
                    [] => args.next().map(OsStr::from_bytes),
                    rest => Some(OsStr::from_bytes(rest)),
                };
            }
            if is(rules.valued) {
                if i + 1 == arg.len() {
                    args.next();
                }
                break;
            }
        }
    }
    None
}

/// The command a chain of wrappers runs (`env A=1 nice -n 5 python3 x.py`
/// runs `python3 x.py`), so the script behind them counts as well. `None`
/// when a wrapper's options make the command unknowable here (`env -S`
/// splits a string, `env -C` moves the working directory).
fn unwrapped(mut argv: &[OsString]) -> Option<&[OsString]> {
    loop {
        let Some(first) = argv.first() else {
            return Some(argv);
        };
        let base = first.as_bytes().rsplit(|&b| b == b'/').next()?;
        // For each wrapper: its options that take a value, its options that
        // make the command unknowable, and how many operands precede the
        // command (`timeout DURATION CMD`).
        let (valued, unknowable, operands): (&[&[u8]], &[&[u8]], usize) = match base {
            b"env" => (
                &[b"-u", b"--unset"],
                &[b"-S", b"--split-string", b"-C", b"--chdir"],
                0,
            ),
            b"nice" => (&[b"-n", b"--adjustment"], &[], 0),
            b"nohup" | b"setsid" => (&[], &[], 0),
            b"time" => (&[b"-f", b"--format", b"-o", b"--output"], &[], 0),
            b"timeout" => (&[b"-s", b"--signal", b"-k", b"--kill-after"], &[], 1),
            b"stdbuf" => (
                &[b"-i", b"-o", b"-e", b"--input", b"--output", b"--error"],
                &[],
                0,
            ),
            b"ionice" => (&[b"-c", b"--class", b"-n", b"--classdata"], &[], 0),
            _ => return Some(argv),
        };
        let mut rest = &argv[1..];
        while let Some(arg) = rest.first().map(|a| a.as_bytes()) {
            let name = arg.split(|&b| b == b'=').next().unwrap_or(arg);
            if unknowable
                .iter()
                .any(|o| name == *o || (o.len() == 2 && arg.starts_with(o)))
            {
                return None;
            }
            if arg == b"--" {
                rest = &rest[1..];
                break;
            }
            if base == b"env" && !arg.starts_with(b"-") && arg.contains(&b'=') {
                rest = &rest[1..]; // NAME=VALUE
                continue;
            }
            if !arg.starts_with(b"-") || arg == b"-" && base != b"env" {
                break;
            }
            rest = &rest[1..];
            // `-n 5` takes the next argument; `-n5`, `--adjustment=5` and
            // `-5` (nice) carry theirs.
            if valued.contains(&arg) {
                rest = rest.get(1..)?;
            }
        }
        argv = rest.get(operands..)?;
    }
}

/// The identity of a script: the SHA-256 of its contents, or a marker when
/// it is missing or not a regular file (never read then: `sh /dev/stdin`
/// must leave stdin to the command).
///
/// Contents, not size and mtime: a script is small, so a hit pays one open
/// and one read for it, and in return an edit that keeps the size within
/// one timestamp tick (a few ms on Linux, a second on some file systems), or
/// a copy that keeps the mtime (`cp -p`, `rsync -a`, `tar x`), is a miss as
/// it must be.
pub fn script_identity(path: &Path) -> Vec<u8> {
    let read = || -> io::Result<Vec<u8>> {
        if !fs::metadata(path)?.is_file() {
            return Ok(b"not a file".to_vec());
        }
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let mut hasher = Sha256::new();
        // On the stack: a hit reads the script, and `hash_reader`'s 64 KiB
        // heap buffer costs more to allocate and clear than a script costs
        // to hash.
        let mut buf = [0u8; 8192];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok([&b"file"[..], &hasher.finalize()].concat())
    };
    read().unwrap_or_else(|_| b"unreadable".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(argv: &[&str]) -> Option<String> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        interpreter_script(&argv).map(|s| s.to_string_lossy().into_owned())
    }

    #[test]
    fn finds_the_script_behind_wrappers() {
        assert_eq!(script(&["env", "python3", "x.py"]).as_deref(), Some("x.py"));
        assert_eq!(
            script(&["env", "-i", "A=1", "sh", "s.sh"]).as_deref(),
            Some("s.sh")
        );
        assert_eq!(
            script(&["nice", "-n", "5", "sh", "s.sh"]).as_deref(),
            Some("s.sh")
        );
        assert_eq!(script(&["nice", "-5", "sh", "s.sh"]).as_deref(), Some("s.sh"));
        assert_eq!(
            script(&["/usr/bin/env", "-u", "X", "perl", "p.pl"]).as_deref(),
            Some("p.pl")
        );
        assert_eq!(
            script(&["timeout", "-s", "KILL", "5", "bash", "b.sh"]).as_deref(),
            Some("b.sh")
        );
        assert_eq!(
            script(&["nohup", "nice", "env", "node", "a.js"]).as_deref(),
            Some("a.js")
        );
        assert_eq!(script(&["env", "-S", "python3 x.py"]), None);
        assert_eq!(script(&["env", "-C", "dir", "python3", "x.py"]), None);
        assert_eq!(script(&["env"]), None);
        assert_eq!(script(&["nice", "ls", "x"]), None);
    }

    #[test]
    fn finds_the_script_an_interpreter_runs() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(script(&["python3", "tiny.py"]), some("tiny.py"));
        assert_eq!(
            script(&["/usr/bin/python3.11", "-u", "tiny.py", "-c"]),
            some("tiny.py")
        );
        assert_eq!(script(&["python3", "-W", "error", "tiny.py"]), some("tiny.py"));
        assert_eq!(script(&["python3", "-Werror", "tiny.py"]), some("tiny.py"));
        assert_eq!(script(&["python3", "-m", "mod"]), None);
        assert_eq!(script(&["python3", "-uc", "print(1)"]), None);
        assert_eq!(script(&["python3"]), None);
        assert_eq!(script(&["sh", "-c", "echo", "name"]), None);
        assert_eq!(script(&["bash", "-ec", "echo"]), None);
        assert_eq!(script(&["bash", "-s", "arg"]), None);
        assert_eq!(script(&["sh", "-e", "-o", "nounset", "job.sh"]), some("job.sh"));
        assert_eq!(script(&["sh", "+o", "nounset", "job.sh"]), some("job.sh"));
        assert_eq!(script(&["sh", "--", "-job.sh"]), some("-job.sh"));
        assert_eq!(script(&["sh", "-"]), None);
        assert_eq!(script(&["node", "-e", "1", "x.js"]), None);
        assert_eq!(script(&["node", "--require", "m", "x.js"]), some("x.js"));
        assert_eq!(script(&["node", "--inspect=9229", "x.js"]), some("x.js"));
        assert_eq!(script(&["deno", "run", "--allow-net", "x.ts"]), some("x.ts"));
        assert_eq!(script(&["bun", "x.ts"]), some("x.ts"));
        assert_eq!(script(&["ruby3.2", "-I", "lib", "x.rb"]), some("x.rb"));
        assert_eq!(script(&["perl", "-e", "print 1", "x.pl"]), None);
        assert_eq!(script(&["perl", "-w", "x.pl"]), some("x.pl"));
        assert_eq!(script(&["php", "-f", "x.php"]), some("x.php"));
        assert_eq!(script(&["php", "-r", "echo 1;"]), None);
        assert_eq!(script(&["Rscript", "--vanilla", "x.R"]), some("x.R"));
        assert_eq!(script(&["lua5.4", "-e", "x=1", "x.lua"]), some("x.lua"));
        // Not interpreters.
        assert_eq!(script(&["cat", "x"]), None);
        assert_eq!(script(&["3", "x"]), None);
        assert_eq!(script(&["shellcheck", "x"]), None);
        assert_eq!(script(&["python-config", "x"]), None);
    }

    #[test]
    fn resolves_like_execvp() {
        let cwd = std::env::current_dir().unwrap();
        assert!(matches!(
            resolve_program(OsStr::new("sh"), &cwd),
            Resolved::Found(_)
        ));
        assert_eq!(
            resolve_program(OsStr::new("no-such-program-lcrun"), &cwd),
            Resolved::NotFound
        );
        let plain = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            resolve_program(plain.path().as_os_str(), &cwd),
            Resolved::NotExecutable(_)
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/"), &cwd),
            Resolved::NotExecutable(_)
        ));
    }
}
