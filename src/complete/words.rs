//! The words of a line as bash will pass them to lcrun: split at blanks
//! that are not quoted or escaped, with the quotes and backslashes taken
//! away; and a value written back the way bash reads it, a blank or a quote
//! escaped by a backslash.

/// One word of the line: what lcrun will receive, and how it was typed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word with its quoting undone.
    pub value: Vec<u8>,
    /// The word as typed.
    pub typed: Vec<u8>,
    /// The quote still open at its end (the cursor is inside it), if any.
    pub open: Option<u8>,
}

/// Splits `line` into words, the last one cut at the end of the line
/// (where the cursor is): an empty word when the line ends in a blank, an
/// open quote taken as closed.
pub fn split(line: &[u8]) -> Vec<Word> {
    scan(line, true)
}

/// `word` with its quoting undone, blanks and all: for a shell that passes
/// a word as typed (zsh's words, fish's word under the cursor).
pub fn unquote(word: &[u8]) -> Vec<u8> {
    scan(word, false).pop().map(|w| w.value).unwrap_or_default()
}

fn scan(line: &[u8], split_at_blanks: bool) -> Vec<Word> {
    let mut words = Vec::new();
    let mut word: Option<Word> = None;
    let mut quote: Option<u8> = None;
    let mut bytes = line.iter().copied();
    while let Some(b) = bytes.next() {
        if split_at_blanks && quote.is_none() && b.is_ascii_whitespace() {
            words.extend(word.take());
            continue;
        }
        let current = word.get_or_insert_with(Word::default);
        current.typed.push(b);
        match (quote, b) {
            (None, b'\'' | b'"') => quote = Some(b),
            (Some(q), _) if b == q => quote = None,
            (None, b'\\') | (Some(b'"'), b'\\') => {
                let Some(next) = bytes.next() else { break };
                current.typed.push(next);
                // In double quotes a backslash escapes only these.
                if quote.is_some() && !matches!(next, b'"' | b'\\' | b'$' | b'`') {
                    current.value.push(b'\\');
                }
                if next != b'\n' {
                    current.value.push(next);
                }
            }
            _ => current.value.push(b),
        }
    }
    let ends_in_blank = quote.is_none() && line.last().is_none_or(|b| b.is_ascii_whitespace());
    if let Some(mut last) = word {
        last.open = quote;
        words.push(last);
    }
    if ends_in_blank || words.is_empty() {
        words.push(Word::default());
    }
    words
}

/// `value` as bash reads it back as one word, after `open` (the quote the
/// cursor is in, if any): outside quotes each byte that would split, quote
/// or expand it escaped by a backslash, and a control character as
/// `$'\xHH'`; in double quotes only `"`, `\`, `$` and `` ` `` escaped; in
/// single quotes a `'` as `'\''`.
pub fn escape(value: &[u8], open: Option<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value {
        match open {
            Some(b'\'') if b == b'\'' => out.extend_from_slice(b"'\\''"),
            Some(b'\'') => out.push(b),
            Some(_) => {
                if matches!(b, b'"' | b'\\' | b'$' | b'`') {
                    out.push(b'\\');
                }
                out.push(b);
            }
            None if b.is_ascii_control() && b != b'\t' => {
                out.extend_from_slice(format!("$'\\x{b:02x}'").as_bytes());
            }
            None => {
                if b.is_ascii_whitespace() || b"\\'\"`$&|;<>()[]{}*?!#~^".contains(&b) {
                    out.push(b'\\');
                }
                out.push(b);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(line: &str) -> Vec<String> {
        split(line.as_bytes())
            .into_iter()
            .map(|w| String::from_utf8(w.value).unwrap_or_default())
            .collect()
    }

    #[test]
    fn splits_at_blanks_that_are_not_quoted_or_escaped() {
        assert_eq!(values("lcrun -c hash:src"), ["lcrun", "-c", "hash:src"]);
        assert_eq!(values("lcrun  cache show "), ["lcrun", "cache", "show", ""]);
        assert_eq!(values("a \"b c\" 'd e' f\\ g"), ["a", "b c", "d e", "f g"]);
        assert_eq!(values("a \"b\\\"c\\d\""), ["a", "b\"c\\d"]);
        // An open quote at the cursor: the word goes on to the end.
        assert_eq!(values("a 'b c"), ["a", "b c"]);
        assert_eq!(values("a \"b "), ["a", "b "]);
        assert_eq!(values(""), [""]);
    }

    #[test]
    fn keeps_each_word_as_typed() {
        let words = split(b"x hash:my\\ d");
        assert_eq!(words[1].typed, b"hash:my\\ d");
        assert_eq!(words[1].value, b"hash:my d");
    }

    #[test]
    fn escapes_what_bash_would_split_or_expand() {
        assert_eq!(escape(b"my dir/", None), b"my\\ dir/");
        assert_eq!(escape(b"a'b$c", None), b"a\\'b\\$c");
        assert_eq!(escape(b"plain-name_1.c:x=y/", None), b"plain-name_1.c:x=y/");
        // Each escaped value splits back into itself.
        for value in [&b"a b"[..], b"it's", b"\"q\"", b"back\\slash", b"tab\there"] {
            let words = split(&escape(value, None));
            assert_eq!(words.len(), 1);
            assert_eq!(words[0].value, value);
        }
    }
}
