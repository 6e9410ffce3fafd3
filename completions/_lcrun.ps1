
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'lcrun' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'lcrun'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'lcrun' {
            [CompletionResult]::new('--shell', '--shell', [CompletionResultType]::ParameterName, 'Run this string through /bin/sh -c instead of a command after `--`')
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin')
            [CompletionResult]::new('--cache-by', '--cache-by', [CompletionResultType]::ParameterName, 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored')
            [CompletionResult]::new('--ignore-arg', '--ignore-arg', [CompletionResultType]::ParameterName, 'Leave argument N of the command out of the key (the command is 0)')
            [CompletionResult]::new('--scope', '--scope', [CompletionResultType]::ParameterName, 'Add a namespace to the key')
            [CompletionResult]::new('-e', '-e', [CompletionResultType]::ParameterName, 'Entries older than this are misses (90s, 10m, 2h, 7d)')
            [CompletionResult]::new('--expire', '--expire', [CompletionResultType]::ParameterName, 'Entries older than this are misses (90s, 10m, 2h, 7d)')
            [CompletionResult]::new('--cache-mode', '--cache-mode', [CompletionResultType]::ParameterName, 'What the cache may do: rw, ro (never store), wo (never replay), off')
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Where the cache lives [default: the platform cache dir /lcrun]')
            [CompletionResult]::new('--max-size', '--max-size', [CompletionResultType]::ParameterName, 'Keep the cache under SIZE (500M, 2G): after a result is stored, the least recently used entries go. Checked now and then, not on every write, so the cache may pass SIZE by about 1/32 of it for a while')
            [CompletionResult]::new('--report', '--report', [CompletionResultType]::ParameterName, 'Append one JSON line per run to FILE: key, command, hit and where from, status, duration, time saved, bytes out, cancelled, timed out')
            [CompletionResult]::new('--progress', '--progress', [CompletionResultType]::ParameterName, 'How to show progress: auto, bar, plain or none')
            [CompletionResult]::new('--interval', '--interval', [CompletionResultType]::ParameterName, 'Print a plain heartbeat line this often when stderr is not a terminal (the command, elapsed time, progress, last output line); also makes a hit say what it replayed')
            [CompletionResult]::new('--progress-regex', '--progress-regex', [CompletionResultType]::ParameterName, 'Read progress from output lines; named groups pos, total, pct, msg')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Cancel the command after this long and exit 124')
            [CompletionResult]::new('--kill-after', '--kill-after', [CompletionResultType]::ParameterName, 'After cancelling, wait this long before SIGKILL [default: 5s]')
            [CompletionResult]::new('--no-cwd', '--no-cwd', [CompletionResultType]::ParameterName, 'Leave the working directory out of the key')
            [CompletionResult]::new('--refresh', '--refresh', [CompletionResultType]::ParameterName, 'Run even on a hit and replace the entry')
            [CompletionResult]::new('--no-cache', '--no-cache', [CompletionResultType]::ParameterName, 'Same as --cache-mode off')
            [CompletionResult]::new('--cache-failures', '--cache-failures', [CompletionResultType]::ParameterName, 'Store results with a non-zero exit status too')
            [CompletionResult]::new('--no-wait', '--no-wait', [CompletionResultType]::ParameterName, 'Don''t wait for an identical run in progress: run the command now')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print lcrun''s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print lcrun''s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('progress', 'progress', [CompletionResultType]::ParameterValue, 'Report progress from inside a command that lcrun runs (a no-op outside lcrun)')
            [CompletionResult]::new('explain', 'explain', [CompletionResultType]::ParameterValue, 'Say whether a run would hit the cache, and for a miss which input changed since the closest earlier entry of the same command. Runs nothing (cmd: expressions are evaluated: the key needs them; stdin is read only for -c stdin)')
            [CompletionResult]::new('cache', 'cache', [CompletionResultType]::ParameterValue, 'Look into the cache: list its entries, show one, count hits and misses, remove entries')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'lcrun;progress' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'lcrun;explain' {
            [CompletionResult]::new('--shell', '--shell', [CompletionResultType]::ParameterName, 'Run this string through /bin/sh -c instead of a command after `--`')
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin')
            [CompletionResult]::new('--cache-by', '--cache-by', [CompletionResultType]::ParameterName, 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored')
            [CompletionResult]::new('--ignore-arg', '--ignore-arg', [CompletionResultType]::ParameterName, 'Leave argument N of the command out of the key (the command is 0)')
            [CompletionResult]::new('--scope', '--scope', [CompletionResultType]::ParameterName, 'Add a namespace to the key')
            [CompletionResult]::new('-e', '-e', [CompletionResultType]::ParameterName, 'Entries older than this are misses (90s, 10m, 2h, 7d)')
            [CompletionResult]::new('--expire', '--expire', [CompletionResultType]::ParameterName, 'Entries older than this are misses (90s, 10m, 2h, 7d)')
            [CompletionResult]::new('--cache-mode', '--cache-mode', [CompletionResultType]::ParameterName, 'What the cache may do: rw, ro (never store), wo (never replay), off')
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Where the cache lives [default: the platform cache dir /lcrun]')
            [CompletionResult]::new('--max-size', '--max-size', [CompletionResultType]::ParameterName, 'Keep the cache under SIZE (500M, 2G): after a result is stored, the least recently used entries go. Checked now and then, not on every write, so the cache may pass SIZE by about 1/32 of it for a while')
            [CompletionResult]::new('--report', '--report', [CompletionResultType]::ParameterName, 'Append one JSON line per run to FILE: key, command, hit and where from, status, duration, time saved, bytes out, cancelled, timed out')
            [CompletionResult]::new('--progress', '--progress', [CompletionResultType]::ParameterName, 'How to show progress: auto, bar, plain or none')
            [CompletionResult]::new('--interval', '--interval', [CompletionResultType]::ParameterName, 'Print a plain heartbeat line this often when stderr is not a terminal (the command, elapsed time, progress, last output line); also makes a hit say what it replayed')
            [CompletionResult]::new('--progress-regex', '--progress-regex', [CompletionResultType]::ParameterName, 'Read progress from output lines; named groups pos, total, pct, msg')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Cancel the command after this long and exit 124')
            [CompletionResult]::new('--kill-after', '--kill-after', [CompletionResultType]::ParameterName, 'After cancelling, wait this long before SIGKILL [default: 5s]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print a JSON object instead of text')
            [CompletionResult]::new('--no-cwd', '--no-cwd', [CompletionResultType]::ParameterName, 'Leave the working directory out of the key')
            [CompletionResult]::new('--refresh', '--refresh', [CompletionResultType]::ParameterName, 'Run even on a hit and replace the entry')
            [CompletionResult]::new('--no-cache', '--no-cache', [CompletionResultType]::ParameterName, 'Same as --cache-mode off')
            [CompletionResult]::new('--cache-failures', '--cache-failures', [CompletionResultType]::ParameterName, 'Store results with a non-zero exit status too')
            [CompletionResult]::new('--no-wait', '--no-wait', [CompletionResultType]::ParameterName, 'Don''t wait for an identical run in progress: run the command now')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print lcrun''s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print lcrun''s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'lcrun;cache' {
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Where the cache lives [default: the platform cache dir /lcrun]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON instead of text')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'The entries, newest first: key (a short unique prefix), command, age, stored size, exit status, hits')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'One entry: its key inputs, timings, sizes and outputs')
            [CompletionResult]::new('stats', 'stats', [CompletionResultType]::ParameterValue, 'Entries, bytes on disk, hits, misses, hit rate, time saved')
            [CompletionResult]::new('clear', 'clear', [CompletionResultType]::ParameterValue, 'Remove entries: those named (by key prefix), or those matching --older-than and --scope; with nothing, all of them')
            [CompletionResult]::new('prune', 'prune', [CompletionResultType]::ParameterValue, 'Remove the least recently used entries until the cache fits SIZE')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'lcrun;cache;list' {
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Where the cache lives [default: the platform cache dir /lcrun]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON instead of text')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'lcrun;cache;show' {
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Where the cache lives [default: the platform cache dir /lcrun]')
            [CompletionResult]::new('--stdout', '--stdout', [CompletionResultType]::ParameterName, 'Print the stored stdout bytes exactly, and nothing else')
            [CompletionResult]::new('--stderr', '--stderr', [CompletionResultType]::ParameterName, 'Print the stored stderr bytes exactly, and nothing else')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON instead of text')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'lcrun;cache;stats' {
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Where the cache lives [default: the platform cache dir /lcrun]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON instead of text')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'lcrun;cache;clear' {
            [CompletionResult]::new('--older-than', '--older-than', [CompletionResultType]::ParameterName, 'Only entries stored longer ago than this (90s, 10m, 2h, 7d)')
            [CompletionResult]::new('--scope', '--scope', [CompletionResultType]::ParameterName, 'Only entries of this --scope')
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Where the cache lives [default: the platform cache dir /lcrun]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON instead of text')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'lcrun;cache;prune' {
            [CompletionResult]::new('--max-size', '--max-size', [CompletionResultType]::ParameterName, 'The size to bring the cache under (bytes, or with K, M, G)')
            [CompletionResult]::new('--older-than', '--older-than', [CompletionResultType]::ParameterName, 'Also remove every entry stored longer ago than this')
            [CompletionResult]::new('--cache-dir', '--cache-dir', [CompletionResultType]::ParameterName, 'Where the cache lives [default: the platform cache dir /lcrun]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON instead of text')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'lcrun;cache;help' {
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'The entries, newest first: key (a short unique prefix), command, age, stored size, exit status, hits')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'One entry: its key inputs, timings, sizes and outputs')
            [CompletionResult]::new('stats', 'stats', [CompletionResultType]::ParameterValue, 'Entries, bytes on disk, hits, misses, hit rate, time saved')
            [CompletionResult]::new('clear', 'clear', [CompletionResultType]::ParameterValue, 'Remove entries: those named (by key prefix), or those matching --older-than and --scope; with nothing, all of them')
            [CompletionResult]::new('prune', 'prune', [CompletionResultType]::ParameterValue, 'Remove the least recently used entries until the cache fits SIZE')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'lcrun;cache;help;list' {
            break
        }
        'lcrun;cache;help;show' {
            break
        }
        'lcrun;cache;help;stats' {
            break
        }
        'lcrun;cache;help;clear' {
            break
        }
        'lcrun;cache;help;prune' {
            break
        }
        'lcrun;cache;help;help' {
            break
        }
        'lcrun;help' {
            [CompletionResult]::new('progress', 'progress', [CompletionResultType]::ParameterValue, 'Report progress from inside a command that lcrun runs (a no-op outside lcrun)')
            [CompletionResult]::new('explain', 'explain', [CompletionResultType]::ParameterValue, 'Say whether a run would hit the cache, and for a miss which input changed since the closest earlier entry of the same command. Runs nothing (cmd: expressions are evaluated: the key needs them; stdin is read only for -c stdin)')
            [CompletionResult]::new('cache', 'cache', [CompletionResultType]::ParameterValue, 'Look into the cache: list its entries, show one, count hits and misses, remove entries')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'lcrun;help;progress' {
            break
        }
        'lcrun;help;explain' {
            break
        }
        'lcrun;help;cache' {
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'The entries, newest first: key (a short unique prefix), command, age, stored size, exit status, hits')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'One entry: its key inputs, timings, sizes and outputs')
            [CompletionResult]::new('stats', 'stats', [CompletionResultType]::ParameterValue, 'Entries, bytes on disk, hits, misses, hit rate, time saved')
            [CompletionResult]::new('clear', 'clear', [CompletionResultType]::ParameterValue, 'Remove entries: those named (by key prefix), or those matching --older-than and --scope; with nothing, all of them')
            [CompletionResult]::new('prune', 'prune', [CompletionResultType]::ParameterValue, 'Remove the least recently used entries until the cache fits SIZE')
            break
        }
        'lcrun;help;cache;list' {
            break
        }
        'lcrun;help;cache;show' {
            break
        }
        'lcrun;help;cache;stats' {
            break
        }
        'lcrun;help;cache;clear' {
            break
        }
        'lcrun;help;cache;prune' {
            break
        }
        'lcrun;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
