//! The shell completions in `completions/` (what `LCRUN_COMPLETE=<shell>
//! lcrun` prints) and the man pages in `man/` (one for lcrun, one per
//! subcommand, from the clap definition and the manual text in
//! `lcrun::cli::MANUAL`) are generated; this fails when they are stale.
//! Regenerate with `LCRUN_BLESS=1 cargo test --test cli packaging`.

use std::path::Path;

use clap_mangen::roff::{bold, roman, Inline, Roff};
use clap_mangen::Man;
use lcrun::cli::MANUAL;

use crate::util::*;

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

/// Each shell, by the name lcrun takes in `LCRUN_COMPLETE`, and where its
/// completion script is kept.
pub const COMPLETIONS: [(&str, &str); 5] = [
    ("bash", "completions/lcrun.bash"),
    ("zsh", "completions/_lcrun"),
    ("fish", "completions/lcrun.fish"),
    ("elvish", "completions/lcrun.elv"),
    ("powershell", "completions/_lcrun.ps1"),
];

#[test]
fn completions_are_current() {
    for (shell, file) in COMPLETIONS {
        check(file, completion(shell));
    }
}

/// What `LCRUN_COMPLETE=<shell> lcrun` prints: the script that makes the
/// shell ask lcrun for its completions.
pub fn completion(shell: &str) -> Vec<u8> {
    let out = Env::new().lcrun().env("LCRUN_COMPLETE", shell).output().unwrap();
    assert_code(&out, 0);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(!out.stdout.is_empty(), "no script for {shell}");
    out.stdout
}

/// Every man page: `lcrun.1` and `lcrun-SUBCOMMAND.1` for each subcommand.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    let cli = lcrun::cli::full_command();
    let mut pages = vec![("man/lcrun.1".to_owned(), main_page(&cli))];
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("lcrun-{}", sub.get_name());
        // clap takes `'static` names here (without its `string` feature).
        let static_name: &'static str = Box::leak(name.clone().into_boxed_str());
        let page = sub
            .clone()
            .name(static_name)
            .bin_name(format!("lcrun {}", sub.get_name()));
        let mut buf = Vec::new();
        Man::new(page)
            .source(format!("lcrun {}", env!("CARGO_PKG_VERSION")))
            .render(&mut buf)
            .unwrap();
        pages.push((format!("man/{name}.1"), buf));
    }
    pages
}

/// lcrun's page: clap's sections, the manual's, and the examples.
fn main_page(cli: &clap::Command) -> Vec<u8> {
    let man = Man::new(cli.clone());
    let mut buf = Vec::new();
    type Render = fn(&Man, &mut dyn std::io::Write) -> std::io::Result<()>;
    let sections: [Render; 6] = [
        Man::render_title,
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
        Man::render_subcommands_section,
    ];
    for render in sections {
        let mut piece = Vec::new();
        render(&man, &mut piece).unwrap();
        buf.extend_from_slice(without_prelude(&buf, &piece));
    }
    let mut roff = Roff::default();
    for (title, text) in MANUAL {
        roff.control("SH", [title.to_uppercase().as_str()]);
        for paragraph in text.split("\n\n") {
            if let Some(example) = paragraph.strip_prefix("    ") {
                roff.control("RS", ["4"]);
                roff.control("nf", []);
                roff.text([roman(example.replace("\n    ", "\n"))]);
                roff.control("fi", []);
                roff.control("RE", []);
            } else {
                roff.control("PP", []);
                roff.text(inline(&paragraph.replace('\n', " ")));
            }
        }
    }
    let examples = cli.get_after_help().unwrap().to_string();
    let examples = examples.strip_prefix("Examples:\n").unwrap();
    roff.control("SH", ["EXAMPLES"]);
    roff.control("nf", []);
    roff.text([roman(
        examples.lines().map(str::trim).collect::<Vec<_>>().join("\n"),
    )]);
    roff.control("fi", []);
    roff.control("SH", ["VERSION"]);
    roff.text([roman(format!("v{}", env!("CARGO_PKG_VERSION")))]);
    let mut piece = Vec::new();
    roff.to_writer(&mut piece).unwrap();
    buf.extend_from_slice(without_prelude(&buf, &piece));
    buf
}

/// Each piece of roff that clap_mangen renders starts with the definition
/// of the apostrophe string when it uses one; a page needs it once.
fn without_prelude<'p>(page: &[u8], piece: &'p [u8]) -> &'p [u8] {
    const PRELUDE: &[u8] = b".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    match piece.strip_prefix(PRELUDE) {
        Some(rest) if page.starts_with(PRELUDE) => rest,
        _ => piece,
    }
}

/// A paragraph with its `code` spans in bold.
fn inline(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { bold(part) } else { roman(part) })
        .collect()
}

#[test]
fn man_pages_are_current() {
    let pages = man_pages();
    assert!(pages.iter().any(|(path, _)| path == "man/lcrun-progress.1"));
    let mut names = Vec::new();
    for (path, page) in pages {
        names.push(path.trim_start_matches("man/").to_owned());
        check(&path, page);
    }
    // No page left behind for a subcommand that is gone.
    if std::env::var_os("LCRUN_BLESS").is_none() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let mut committed: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        committed.sort();
        names.sort();
        assert_eq!(committed, names, "man/ holds pages no subcommand has");
    }
}

/// The manual's sections say what the README's sections of the same name
/// say, word for word.
#[test]
fn manual_sections_match_the_readme() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    for (title, text) in MANUAL {
        let heading = format!("\n### {title}\n");
        let start = readme
            .find(&heading)
            .unwrap_or_else(|| panic!("README has no {heading:?}"))
            + heading.len();
        let end = readme[start..].find("\n#").map_or(readme.len(), |e| start + e);
        assert_eq!(
            words(&readme[start..end]),
            words(text),
            "README's {title:?} differs from cli::MANUAL"
        );
    }
}
