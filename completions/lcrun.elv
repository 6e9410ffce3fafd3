
use builtin;
use str;

set edit:completion:arg-completer[lcrun] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'lcrun'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'lcrun'= {
            cand --shell 'Run this string through /bin/sh -c instead of a command after `--`'
            cand -c 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin'
            cand --cache-by 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin'
            cand -o 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored'
            cand --output 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored'
            cand --ignore-arg 'Leave argument N of the command out of the key (the command is 0)'
            cand --scope 'Add a namespace to the key'
            cand -e 'Entries older than this are misses (90s, 10m, 2h, 7d)'
            cand --expire 'Entries older than this are misses (90s, 10m, 2h, 7d)'
            cand --cache-mode 'What the cache may do: rw, ro (never store), wo (never replay), off'
            cand --cache-dir 'Where the cache lives [default: the platform cache dir /lcrun]'
            cand --max-size 'Keep the cache under SIZE (500M, 2G): after a result is stored, the least recently used entries go. Checked now and then, not on every write, so the cache may pass SIZE by about 1/32 of it for a while'
            cand --report 'Append one JSON line per run to FILE: key, command, hit and where from, status, duration, time saved, bytes out, cancelled, timed out'
            cand --progress 'How to show progress: auto, bar, plain or none'
            cand --interval 'Print a plain heartbeat line this often when stderr is not a terminal (the command, elapsed time, progress, last output line); also makes a hit say what it replayed'
            cand --progress-regex 'Read progress from output lines; named groups pos, total, pct, msg'
            cand --timeout 'Cancel the command after this long and exit 124'
            cand --kill-after 'After cancelling, wait this long before SIGKILL [default: 5s]'
            cand --no-cwd 'Leave the working directory out of the key'
            cand --refresh 'Run even on a hit and replace the entry'
            cand --no-cache 'Same as --cache-mode off'
            cand --cache-failures 'Store results with a non-zero exit status too'
            cand --no-wait 'Don''t wait for an identical run in progress: run the command now'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -v 'Print lcrun''s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)'
            cand --verbose 'Print lcrun''s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand progress 'Report progress from inside a command that lcrun runs (a no-op outside lcrun)'
            cand explain 'Say whether a run would hit the cache, and for a miss which input changed since the closest earlier entry of the same command. Runs nothing (cmd: expressions are evaluated: the key needs them; stdin is read only for -c stdin)'
            cand cache 'Look into the cache: list its entries, show one, count hits and misses, remove entries'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'lcrun;progress'= {
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'lcrun;explain'= {
            cand --shell 'Run this string through /bin/sh -c instead of a command after `--`'
            cand -c 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin'
            cand --cache-by 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin'
            cand -o 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored'
            cand --output 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored'
            cand --ignore-arg 'Leave argument N of the command out of the key (the command is 0)'
            cand --scope 'Add a namespace to the key'
            cand -e 'Entries older than this are misses (90s, 10m, 2h, 7d)'
            cand --expire 'Entries older than this are misses (90s, 10m, 2h, 7d)'
            cand --cache-mode 'What the cache may do: rw, ro (never store), wo (never replay), off'
            cand --cache-dir 'Where the cache lives [default: the platform cache dir /lcrun]'
            cand --max-size 'Keep the cache under SIZE (500M, 2G): after a result is stored, the least recently used entries go. Checked now and then, not on every write, so the cache may pass SIZE by about 1/32 of it for a while'
            cand --report 'Append one JSON line per run to FILE: key, command, hit and where from, status, duration, time saved, bytes out, cancelled, timed out'
            cand --progress 'How to show progress: auto, bar, plain or none'
            cand --interval 'Print a plain heartbeat line this often when stderr is not a terminal (the command, elapsed time, progress, last output line); also makes a hit say what it replayed'
            cand --progress-regex 'Read progress from output lines; named groups pos, total, pct, msg'
            cand --timeout 'Cancel the command after this long and exit 124'
            cand --kill-after 'After cancelling, wait this long before SIGKILL [default: 5s]'
            cand --json 'Print a JSON object instead of text'
            cand --no-cwd 'Leave the working directory out of the key'
            cand --refresh 'Run even on a hit and replace the entry'
            cand --no-cache 'Same as --cache-mode off'
            cand --cache-failures 'Store results with a non-zero exit status too'
            cand --no-wait 'Don''t wait for an identical run in progress: run the command now'
            cand -q 'Print only errors'
            cand --quiet 'Print only errors'
            cand -v 'Print lcrun''s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)'
            cand --verbose 'Print lcrun''s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'lcrun;cache'= {
            cand --cache-dir 'Where the cache lives [default: the platform cache dir /lcrun]'
            cand --json 'Print JSON instead of text'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand list 'The entries, newest first: key (a short unique prefix), command, age, stored size, exit status, hits'
            cand show 'One entry: its key inputs, timings, sizes and outputs'
            cand stats 'Entries, bytes on disk, hits, misses, hit rate, time saved'
            cand clear 'Remove entries: those named (by key prefix), or those matching --older-than and --scope; with nothing, all of them'
            cand prune 'Remove the least recently used entries until the cache fits SIZE'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'lcrun;cache;list'= {
            cand --cache-dir 'Where the cache lives [default: the platform cache dir /lcrun]'
            cand --json 'Print JSON instead of text'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'lcrun;cache;show'= {
            cand --cache-dir 'Where the cache lives [default: the platform cache dir /lcrun]'
            cand --stdout 'Print the stored stdout bytes exactly, and nothing else'
            cand --stderr 'Print the stored stderr bytes exactly, and nothing else'
            cand --json 'Print JSON instead of text'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'lcrun;cache;stats'= {
            cand --cache-dir 'Where the cache lives [default: the platform cache dir /lcrun]'
            cand --json 'Print JSON instead of text'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'lcrun;cache;clear'= {
            cand --older-than 'Only entries stored longer ago than this (90s, 10m, 2h, 7d)'
            cand --scope 'Only entries of this --scope'
            cand --cache-dir 'Where the cache lives [default: the platform cache dir /lcrun]'
            cand --json 'Print JSON instead of text'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'lcrun;cache;prune'= {
            cand --max-size 'The size to bring the cache under (bytes, or with K, M, G)'
            cand --older-than 'Also remove every entry stored longer ago than this'
            cand --cache-dir 'Where the cache lives [default: the platform cache dir /lcrun]'
            cand --json 'Print JSON instead of text'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'lcrun;cache;help'= {
            cand list 'The entries, newest first: key (a short unique prefix), command, age, stored size, exit status, hits'
            cand show 'One entry: its key inputs, timings, sizes and outputs'
            cand stats 'Entries, bytes on disk, hits, misses, hit rate, time saved'
            cand clear 'Remove entries: those named (by key prefix), or those matching --older-than and --scope; with nothing, all of them'
            cand prune 'Remove the least recently used entries until the cache fits SIZE'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'lcrun;cache;help;list'= {
        }
        &'lcrun;cache;help;show'= {
        }
        &'lcrun;cache;help;stats'= {
        }
        &'lcrun;cache;help;clear'= {
        }
        &'lcrun;cache;help;prune'= {
        }
        &'lcrun;cache;help;help'= {
        }
        &'lcrun;help'= {
            cand progress 'Report progress from inside a command that lcrun runs (a no-op outside lcrun)'
            cand explain 'Say whether a run would hit the cache, and for a miss which input changed since the closest earlier entry of the same command. Runs nothing (cmd: expressions are evaluated: the key needs them; stdin is read only for -c stdin)'
            cand cache 'Look into the cache: list its entries, show one, count hits and misses, remove entries'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'lcrun;help;progress'= {
        }
        &'lcrun;help;explain'= {
        }
        &'lcrun;help;cache'= {
            cand list 'The entries, newest first: key (a short unique prefix), command, age, stored size, exit status, hits'
            cand show 'One entry: its key inputs, timings, sizes and outputs'
            cand stats 'Entries, bytes on disk, hits, misses, hit rate, time saved'
            cand clear 'Remove entries: those named (by key prefix), or those matching --older-than and --scope; with nothing, all of them'
            cand prune 'Remove the least recently used entries until the cache fits SIZE'
        }
        &'lcrun;help;cache;list'= {
        }
        &'lcrun;help;cache;show'= {
        }
        &'lcrun;help;cache;stats'= {
        }
        &'lcrun;help;cache;clear'= {
        }
        &'lcrun;help;cache;prune'= {
        }
        &'lcrun;help;help'= {
        }
    ]
    $completions[$command]
}

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
            put hash: mtime: git git: env: cmd: value: stdin
        }
    } else {
        lcrun-clap $@words
    }
}
