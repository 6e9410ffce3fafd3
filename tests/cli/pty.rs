//! A program on a pseudo-terminal, for the tests whose behaviour depends on
//! one: the bar, Ctrl-C, Ctrl-Z and job control, reading the terminal.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};

use crate::util::*;

/// A program in a pseudo-terminal that is its controlling terminal, as a
/// login shell has one.
pub struct Term {
    _master: Box<dyn MasterPty + Send>,
    writer: Box<dyn Write + Send>,
    output: Arc<Mutex<Vec<u8>>>,
    pub child: Box<dyn Child + Send + Sync>,
}

impl Term {
    pub fn spawn(env: &Env, argv: &[&str]) -> Term {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 30,
                cols: 200,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        let mut cmd = CommandBuilder::new(argv[0]);
        cmd.args(&argv[1..]);
        cmd.cwd(env.dir.path());
        cmd.env("PATH", path_with_lcrun());
        cmd.env("LCRUN_CACHE_DIR", &env.cache);
        cmd.env("TERM", "xterm-256color");
        cmd.env("PS1", "$ ");
        cmd.env_remove("NO_COLOR");
        let child = pair.slave.spawn_command(cmd).expect("spawn in pty");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("reader");
        let writer = pair.master.take_writer().expect("writer");
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term {
            _master: pair.master,
            writer,
            output,
            child,
        }
    }

    /// `sh -c LINE` on the terminal.
    pub fn sh(env: &Env, line: &str) -> Term {
        Term::spawn(env, &["/bin/sh", "-c", line])
    }

    /// `LINE` run by `/bin/sh` on the terminal, as a script on a terminal
    /// would run it; the shell prints `EXIT=<status>` at the end. It is in
    /// the terminal's foreground group with lcrun and hears a Ctrl-C too; a
    /// trap lets it report lcrun's status rather than stop with it. Read
    /// the status with [`Term::exit_status`].
    pub fn script(env: &Env, line: &str) -> Term {
        Term::sh(env, &format!("trap : INT; {line}; echo EXIT=$?"))
    }

    /// Waits for the shell of [`Term::script`] to report lcrun's status.
    #[track_caller]
    pub fn exit_status(&mut self, within: Duration) -> i32 {
        self.expect("EXIT=", within);
        let _ = self.child.wait();
        let text = self.text();
        let tail = &text[text.rfind("EXIT=").unwrap() + 5..];
        tail.trim()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the terminal has shown `needle` `times` times.
    #[track_caller]
    pub fn expect_n(&self, needle: &str, times: usize, within: Duration) {
        let start = Instant::now();
        while self.text().matches(needle).count() < times {
            assert!(
                start.elapsed() < within,
                "terminal never showed {needle:?} {times} times; it shows:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[track_caller]
    pub fn expect(&self, needle: &str, within: Duration) {
        self.expect_n(needle, 1, within);
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to pty");
        self.writer.flush().expect("flush pty");
    }

    /// Waits for the program on the terminal to end.
    #[track_caller]
    pub fn ended(&mut self, within: Duration) {
        let start = Instant::now();
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(
                start.elapsed() < within,
                "the terminal's program did not end; it shows:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
