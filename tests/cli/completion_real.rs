//! Completion in a real interactive zsh (in tmux), loaded as the README
//! says: completions/_lcrun on `fpath`, then `compinit`. Needs `tmux` and
//! `zsh`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// A detached tmux session running an interactive zsh in `dir`.
struct Zsh {
    session: String,
}

impl Zsh {
    fn start(env: &Env) -> Zsh {
        let zdot = env.path("zdot");
        std::fs::create_dir_all(&zdot).unwrap();
        let completions = Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
        let rc = format!(
            "PS1='$ '\nfpath=({} $fpath)\nautoload -Uz compinit && compinit -u\n",
            completions.display()
        );
        std::fs::write(zdot.join(".zshrc"), rc).unwrap();
        let session = format!("lcrun-real-{}", std::process::id());
        let shell = format!(
            "env -i HOME={zdot} ZDOTDIR={zdot} TERM=xterm LANG=C.UTF-8 PATH='{path}' zsh -i",
            zdot = zdot.display(),
            path = path_with_lcrun(),
        );
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", "200", "-y", "20", "-c"])
            .arg(env.dir.path())
            .arg(shell)
            .status()
            .unwrap();
        assert!(status.success());
        let zsh = Zsh { session };
        zsh.wait_for(|screen| screen.lines().any(|l| l.trim_end() == "$"));
        zsh
    }

    fn keys(&self, args: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen once `done` holds for it (generous bound, polled).
    fn wait_for(&self, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) || start.elapsed() > Duration::from_secs(20) {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `line`, presses Tab once, then types `X`: the line as it reads
    /// then (the `X` shows where the cursor was left).
    fn tab_then_x(&self, line: &str) -> String {
        self.keys(&["C-u"]);
        self.keys(&["-l", line]);
        self.wait_for(|s| current(s) == line);
        self.keys(&["Tab"]);
        // The completion has run once the line grew.
        self.wait_for(|s| current(s).len() > line.len());
        self.keys(&["-l", "X"]);
        let typed = current(&self.wait_for(|s| current(s).contains('X')));
        self.keys(&["C-c"]);
        self.wait_for(|s| current(s).is_empty());
        typed
    }
}

/// The line being edited: after the last prompt on the screen.
fn current(screen: &str) -> String {
    screen
        .lines()
        .rfind(|l| l.starts_with("$ ") || *l == "$")
        .unwrap_or_default()
        .trim_start_matches('$')
        .trim()
        .to_owned()
}

impl Drop for Zsh {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

/// `lcrun -c hash:pla<Tab>` in zsh, `plain` a directory: the line must be
/// `hash:plain/` with the cursor right after the `/`, so that the next Tab
/// goes into the directory (as the static script of cb0ba67 did, and as
/// `lcrun -- cat pla<Tab>` does). lcrun replies `hash\:plain/` and the
/// script takes the value up to the first `:` (`${completion%%:*}`), so it
/// does not see a directory and adds a space: `hash:plain/ X`.
#[test]
fn zsh_directory_after_hash_kind_gets_no_trailing_space() {
    let env = Env::new();
    env.write("plain/sub/f.c", "x");
    let zsh = Zsh::start(&env);
    assert_eq!(zsh.tab_then_x("lcrun -- cat pla"), "lcrun -- cat plain/X");
    assert_eq!(zsh.tab_then_x("lcrun -c hash:pla"), "lcrun -c hash:plain/X");
}
