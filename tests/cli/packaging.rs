//! The shell completions in `completions/` and the man pages in `man/` (one
//! for lcrun, one per subcommand) are generated from the clap definition and
//! the manual text in `lcrun::cli::MANUAL`; this fails when they are stale.
//! Regenerate with `LCRUN_BLESS=1 cargo test --test cli packaging`.

use std::path::Path;

use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Inline, Roff};
use clap_mangen::Man;
use lcrun::cli::{CACHE_BY_KINDS, MANUAL};

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

/// Each shell, and where its completion script is kept.
pub const COMPLETIONS: [(Shell, &str); 5] = [
    (Shell::Bash, "completions/lcrun.bash"),
    (Shell::Zsh, "completions/_lcrun"),
    (Shell::Fish, "completions/lcrun.fish"),
    (Shell::Elvish, "completions/lcrun.elv"),
    (Shell::PowerShell, "completions/_lcrun.ps1"),
];

#[test]
fn completions_are_current() {
    for (shell, file) in COMPLETIONS {
        check(file, completion(shell).into_bytes());
    }
}

/// clap's script for `shell`, with `-c/--cache-by` completing the kinds of
/// expression and then, after `hash:`, `mtime:` and `git:`, paths. clap
/// completes either a list of values or paths, not both; the bash, zsh and
/// fish and elvish scripts get a small function of their own for it.
pub fn completion(shell: Shell) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut lcrun::cli::full_command(), "lcrun", &mut buf);
    let script = String::from_utf8(buf).unwrap();
    let kinds = CACHE_BY_KINDS.join(" ");
    match shell {
        Shell::Bash => {
            let script = replace(
                &script,
                "complete -F _lcrun ",
                "complete -F _lcrun_cache_by_or_clap ",
                2,
            );
            let hook = "if [[ \"${BASH_VERSINFO[0]}\" -eq 4 &&";
            replace(
                &script,
                hook,
                &format!("{}\n{hook}", BASH.replace("KINDS", &kinds)),
                1,
            )
        }
        Shell::Zsh => {
            let escaped = CACHE_BY_KINDS.map(|k| k.replace(':', "\\:")).join(" ");
            let script = replace(
                &script,
                &format!(":EXPR:({escaped})'"),
                ":EXPR:_lcrun_cache_by'",
                // `lcrun`'s own options, and those of `lcrun explain`.
                4,
            );
            let with_colon: Vec<&str> = CACHE_BY_KINDS.into_iter().filter(|k| k.ends_with(':')).collect();
            let bare: Vec<&str> = CACHE_BY_KINDS.into_iter().filter(|k| !k.ends_with(':')).collect();
            let function = ZSH
                .replace("WITH_COLON", &with_colon.join(" "))
                .replace("BARE", &bare.join(" "));
            let hook = "if [ \"$funcstack[1]\" = \"_lcrun\" ]; then";
            replace(&script, hook, &format!("{function}\n{hook}"), 1)
        }
        Shell::Fish => {
            let listed: Vec<String> = CACHE_BY_KINDS.iter().map(|k| format!("{k}\\t''")).collect();
            let listed = format!("-a \"{}\"", listed.join("\n"));
            let script = replace(&script, &listed, "-a \"(__fish_lcrun_cache_by)\"", 2);
            format!("{script}{}", FISH.replace("KINDS", &kinds))
        }
        Shell::Elvish => format!("{script}{}", ELVISH.replace("KINDS", &kinds)),
        _ => script,
    }
}

/// `text` with `from` replaced; it must occur `times` times, so a change in
/// clap's output fails here rather than leaving a script without the patch.
fn replace(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(text.matches(from).count(), times, "{from:?} in:\n{text}");
    text.replace(from, to)
}

const BASH: &str = r#"# -c/--cache-by: the kinds of expression, then paths after hash:, mtime:
# and git:. bash splits words at ':', so the word is read from the line.
_lcrun_cache_by() {
    local line="${COMP_LINE:0:COMP_POINT}" words=() cur="" prev="" kind f
    read -ra words <<< "$line"
    if [[ "$line" == *[[:space:]] ]]; then
        prev="${words[${#words[@]}-1]}"
    elif [[ ${#words[@]} -ge 2 ]]; then
        cur="${words[${#words[@]}-1]}"
        prev="${words[${#words[@]}-2]}"
    fi
    [[ "$prev" == -c || "$prev" == --cache-by ]] || return 1
    local candidates=()
    case "$cur" in
        hash:*|mtime:*|git:*)
            kind="${cur%%:*}"
            while IFS= read -r f; do
                [[ -d "$f" ]] && f="$f/"
                candidates+=("$kind:$f")
            done < <(compgen -f -- "${cur#*:}")
            ;;
        *)
            while IFS= read -r f; do
                candidates+=("$f")
            done < <(compgen -W "KINDS" -- "$cur")
            ;;
    esac
    # bash replaces only what follows the word's last ':'.
    if [[ "$COMP_WORDBREAKS" == *:* && "$cur" == *:* ]]; then
        local typed="${cur%"${cur##*:}"}"
        candidates=("${candidates[@]#"$typed"}")
    fi
    COMPREPLY=("${candidates[@]}")
    for f in "${COMPREPLY[@]}"; do
        [[ "$f" == *[:/] ]] && compopt -o nospace 2>/dev/null
    done
    return 0
}

_lcrun_cache_by_or_clap() {
    _lcrun_cache_by || _lcrun "$@"
}
"#;

const ZSH: &str = r#"# -c/--cache-by: the kinds of expression, then paths after hash:, mtime:
# and git:.
(( $+functions[_lcrun_cache_by] )) ||
_lcrun_cache_by() {
    if compset -P '(hash|mtime|git):'; then
        _files
    else
        compadd -S '' -- WITH_COLON
        compadd -- BARE
    fi
}
"#;

const FISH: &str = r#"
# -c/--cache-by: the kinds of expression, then paths after hash:, mtime:
# and git:.
# (clap's lines complete an option's value only in the --opt=value form.)
function __fish_lcrun_after_cache_by
    set -l words (commandline -opc)
    contains -- $words[-1] -c --cache-by
end

function __fish_lcrun_cache_by
    set -l cur (string replace -r '^--cache-by=' '' -- (commandline -ct))
    if string match -qr '^(hash|mtime|git):' -- $cur
        set -l kind (string split -m1 : -- $cur)[1]
        for path in (__fish_complete_path (string replace -r '^[^:]*:' '' -- $cur))
            printf '%s:%s\n' $kind $path
        end
    else
        printf '%s\n' KINDS
    end
end

complete -c lcrun -n __fish_lcrun_after_cache_by -f -a "(__fish_lcrun_cache_by)"
"#;

const ELVISH: &str = r#"
# -c/--cache-by: the kinds of expression, then paths after hash:, mtime:
# and git:.
use re
var lcrun-clap~ = $edit:completion:arg-completer[lcrun]
set edit:completion:arg-completer[lcrun] = {|@words|
    if (and (> (count $words) 2) (has-value [-c --cache-by] $words[-2])) {
        var cur = $words[-1]
        var found = [(re:find '^(hash|mtime|git):(.*)$' $cur)]
        if (> (count $found) 0) {
            var kind = $found[0][groups][1][text]
            edit:complete-filename $found[0][groups][2][text] | each {|c|
                edit:complex-candidate $kind':'$c[stem] &code-suffix=$c[code-suffix]
            }
        } else {
            put KINDS
        }
    } else {
        lcrun-clap $@words
    }
}
"#;

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
