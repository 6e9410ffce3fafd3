//! The shell completions in `completions/` and the man page in `man/` are
//! generated from the clap definition; this fails when they are stale.
//! Regenerate with `LCRUN_BLESS=1 cargo test --test cli packaging`.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;
use lcrun::cli::Cli;

fn check(path: &str, fresh: Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var_os("LCRUN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: run LCRUN_BLESS=1 cargo test --test cli packaging",
        path.display()
    );
}

#[test]
fn completions_are_current() {
    for (shell, file) in [
        (Shell::Bash, "completions/lcrun.bash"),
        (Shell::Zsh, "completions/_lcrun"),
        (Shell::Fish, "completions/lcrun.fish"),
        (Shell::Elvish, "completions/lcrun.elv"),
        (Shell::PowerShell, "completions/_lcrun.ps1"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "lcrun", &mut buf);
        check(file, buf);
    }
}

#[test]
fn man_page_is_current() {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf).unwrap();
    check("man/lcrun.1", buf);
}
