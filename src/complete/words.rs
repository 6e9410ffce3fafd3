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
}

/// Splits `line` into words, the last one cut at the end of the line
/// (where the cursor is): an empty word when the line ends in a blank, an
/// open quote taken as closed.
pub fn split(line: &[u8]) -> Vec<Word> {
    let mut words = Vec::new();
    let mut word: Option<Word> = None;
    let mut quote: Option<u8> = None;
    let mut bytes = line.iter().copied();
    while let Some(b) = bytes.next() {
        if quote.is_none() && b.is_ascii_whitespace() {
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
    words.extend(word);
    if ends_in_blank {
        words.push(Word::default());
    }
    words
}

/// `value` as bash reads it back as one word: each byte that would split
/// it, quote it or expand in it escaped by a backslash.
pub fn escape(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value {
        if b.is_ascii_whitespace() || b"\\'\"`$&|;<>()[]{}*?!#~^".contains(&b) {
            out.push(b'\\');
        }
        out.push(b);
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
        assert_eq!(escape(b"my dir/"), b"my\\ dir/");
        assert_eq!(escape(b"a'b$c"), b"a\\'b\\$c");
        assert_eq!(escape(b"plain-name_1.c:x=y/"), b"plain-name_1.c:x=y/");
        // Each escaped value splits back into itself.
        for value in [&b"a b"[..], b"it's", b"\"q\"", b"back\\slash", b"tab\there"] {
            let words = split(&escape(value));
            assert_eq!(words.len(), 1);
            assert_eq!(words[0].value, value);
        }
    }
}
