# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_lcrun_global_optspecs
    string join \n shell= c/cache-by= o/output= ignore-arg= no-cwd scope= e/expire= refresh cache-mode= no-cache cache-failures cache-dir= max-size= no-wait q/quiet v/verbose report= progress= interval= progress-regex= timeout= kill-after= h/help V/version
end

function __fish_lcrun_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_lcrun_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_lcrun_using_subcommand
    set -l cmd (__fish_lcrun_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c lcrun -n "__fish_lcrun_needs_command" -l shell -d 'Run this string through /bin/sh -c instead of a command after `--`' -r
complete -c lcrun -n "__fish_lcrun_needs_command" -s c -l cache-by -d 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin' -r -f -a "(__fish_lcrun_cache_by)"
complete -c lcrun -n "__fish_lcrun_needs_command" -s o -l output -d 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored' -r -F
complete -c lcrun -n "__fish_lcrun_needs_command" -l ignore-arg -d 'Leave argument N of the command out of the key (the command is 0)' -r
complete -c lcrun -n "__fish_lcrun_needs_command" -l scope -d 'Add a namespace to the key' -r
complete -c lcrun -n "__fish_lcrun_needs_command" -s e -l expire -d 'Entries older than this are misses (90s, 10m, 2h, 7d)' -r
complete -c lcrun -n "__fish_lcrun_needs_command" -l cache-mode -d 'What the cache may do: rw, ro (never store), wo (never replay), off' -r -f -a "rw\t'Replay hits and store new results'
ro\t'Replay hits, never store (for untrusted builds)'
wo\t'Always run, store the result'
off\t'No cache at all'"
complete -c lcrun -n "__fish_lcrun_needs_command" -l cache-dir -d 'Where the cache lives [default: the platform cache dir /lcrun]' -r -F
complete -c lcrun -n "__fish_lcrun_needs_command" -l max-size -d 'Keep the cache under SIZE (500M, 2G): after a result is stored, the least recently used entries go. Checked now and then, not on every write, so the cache may pass SIZE by about 1/32 of it for a while' -r
complete -c lcrun -n "__fish_lcrun_needs_command" -l report -d 'Append one JSON line per run to FILE: key, command, hit and where from, status, duration, time saved, bytes out, cancelled, timed out' -r -F
complete -c lcrun -n "__fish_lcrun_needs_command" -l progress -d 'How to show progress: auto, bar, plain or none' -r -f -a "auto\t'The bar on a terminal; elsewhere plain lines, as `plain`'
bar\t'A spinner naming the command, its elapsed time and last output line; a bar (pos/total, percent, rate, ETA, message) once progress is reported. Drawn even when stderr is not a terminal'
plain\t'No escape codes: with --interval, one heartbeat line per interval naming the command, its elapsed time, progress and last output line'
none\t'No progress at all; lcrun\'s messages still print unless -q'"
complete -c lcrun -n "__fish_lcrun_needs_command" -l interval -d 'Print a plain heartbeat line this often when stderr is not a terminal (the command, elapsed time, progress, last output line); also makes a hit say what it replayed' -r
complete -c lcrun -n "__fish_lcrun_needs_command" -l progress-regex -d 'Read progress from output lines; named groups pos, total, pct, msg' -r
complete -c lcrun -n "__fish_lcrun_needs_command" -l timeout -d 'Cancel the command after this long and exit 124' -r
complete -c lcrun -n "__fish_lcrun_needs_command" -l kill-after -d 'After cancelling, wait this long before SIGKILL [default: 5s]' -r
complete -c lcrun -n "__fish_lcrun_needs_command" -l no-cwd -d 'Leave the working directory out of the key'
complete -c lcrun -n "__fish_lcrun_needs_command" -l refresh -d 'Run even on a hit and replace the entry'
complete -c lcrun -n "__fish_lcrun_needs_command" -l no-cache -d 'Same as --cache-mode off'
complete -c lcrun -n "__fish_lcrun_needs_command" -l cache-failures -d 'Store results with a non-zero exit status too'
complete -c lcrun -n "__fish_lcrun_needs_command" -l no-wait -d 'Don\'t wait for an identical run in progress: run the command now'
complete -c lcrun -n "__fish_lcrun_needs_command" -s q -l quiet -d 'Print only errors'
complete -c lcrun -n "__fish_lcrun_needs_command" -s v -l verbose -d 'Print lcrun\'s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)'
complete -c lcrun -n "__fish_lcrun_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcrun -n "__fish_lcrun_needs_command" -s V -l version -d 'Print version'
complete -c lcrun -n "__fish_lcrun_needs_command" -a "progress" -d 'Report progress from inside a command that lcrun runs (a no-op outside lcrun)'
complete -c lcrun -n "__fish_lcrun_needs_command" -a "explain" -d 'Say whether a run would hit the cache, and for a miss which input changed since the closest earlier entry of the same command. Runs nothing (cmd: expressions are evaluated: the key needs them; stdin is read only for -c stdin)'
complete -c lcrun -n "__fish_lcrun_needs_command" -a "cache" -d 'Look into the cache: list its entries, show one, count hits and misses, remove entries'
complete -c lcrun -n "__fish_lcrun_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lcrun -n "__fish_lcrun_using_subcommand progress" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l shell -d 'Run this string through /bin/sh -c instead of a command after `--`' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -s c -l cache-by -d 'Add EXPR to the cache key (repeatable): mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:SHELL_COMMAND, value:STRING, stdin' -r -f -a "(__fish_lcrun_cache_by)"
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -s o -l output -d 'Store PATH (a file, or a directory with everything in it) with the result and restore it on a hit (repeatable). Relative paths are under the working directory; a path outside it must be absolute. The paths are part of the key. A declared output the command did not create: a warning, and nothing is stored' -r -F
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l ignore-arg -d 'Leave argument N of the command out of the key (the command is 0)' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l scope -d 'Add a namespace to the key' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -s e -l expire -d 'Entries older than this are misses (90s, 10m, 2h, 7d)' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l cache-mode -d 'What the cache may do: rw, ro (never store), wo (never replay), off' -r -f -a "rw\t'Replay hits and store new results'
ro\t'Replay hits, never store (for untrusted builds)'
wo\t'Always run, store the result'
off\t'No cache at all'"
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l cache-dir -d 'Where the cache lives [default: the platform cache dir /lcrun]' -r -F
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l max-size -d 'Keep the cache under SIZE (500M, 2G): after a result is stored, the least recently used entries go. Checked now and then, not on every write, so the cache may pass SIZE by about 1/32 of it for a while' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l report -d 'Append one JSON line per run to FILE: key, command, hit and where from, status, duration, time saved, bytes out, cancelled, timed out' -r -F
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l progress -d 'How to show progress: auto, bar, plain or none' -r -f -a "auto\t'The bar on a terminal; elsewhere plain lines, as `plain`'
bar\t'A spinner naming the command, its elapsed time and last output line; a bar (pos/total, percent, rate, ETA, message) once progress is reported. Drawn even when stderr is not a terminal'
plain\t'No escape codes: with --interval, one heartbeat line per interval naming the command, its elapsed time, progress and last output line'
none\t'No progress at all; lcrun\'s messages still print unless -q'"
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l interval -d 'Print a plain heartbeat line this often when stderr is not a terminal (the command, elapsed time, progress, last output line); also makes a hit say what it replayed' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l progress-regex -d 'Read progress from output lines; named groups pos, total, pct, msg' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l timeout -d 'Cancel the command after this long and exit 124' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l kill-after -d 'After cancelling, wait this long before SIGKILL [default: 5s]' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l json -d 'Print a JSON object instead of text'
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l no-cwd -d 'Leave the working directory out of the key'
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l refresh -d 'Run even on a hit and replace the entry'
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l no-cache -d 'Same as --cache-mode off'
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l cache-failures -d 'Store results with a non-zero exit status too'
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -l no-wait -d 'Don\'t wait for an identical run in progress: run the command now'
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -s q -l quiet -d 'Print only errors'
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -s v -l verbose -d 'Print lcrun\'s own lines even when stderr is not a terminal: a hit says what it replayed (-q wins)'
complete -c lcrun -n "__fish_lcrun_using_subcommand explain" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and not __fish_seen_subcommand_from list show stats clear prune help" -l cache-dir -d 'Where the cache lives [default: the platform cache dir /lcrun]' -r -F
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and not __fish_seen_subcommand_from list show stats clear prune help" -l json -d 'Print JSON instead of text'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and not __fish_seen_subcommand_from list show stats clear prune help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and not __fish_seen_subcommand_from list show stats clear prune help" -f -a "list" -d 'The entries, newest first: key (a short unique prefix), command, age, stored size, exit status, hits'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and not __fish_seen_subcommand_from list show stats clear prune help" -f -a "show" -d 'One entry: its key inputs, timings, sizes and outputs'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and not __fish_seen_subcommand_from list show stats clear prune help" -f -a "stats" -d 'Entries, bytes on disk, hits, misses, hit rate, time saved'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and not __fish_seen_subcommand_from list show stats clear prune help" -f -a "clear" -d 'Remove entries: those named (by key prefix), or those matching --older-than and --scope; with nothing, all of them'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and not __fish_seen_subcommand_from list show stats clear prune help" -f -a "prune" -d 'Remove the least recently used entries until the cache fits SIZE'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and not __fish_seen_subcommand_from list show stats clear prune help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from list" -l cache-dir -d 'Where the cache lives [default: the platform cache dir /lcrun]' -r -F
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of text'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from show" -l cache-dir -d 'Where the cache lives [default: the platform cache dir /lcrun]' -r -F
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from show" -l stdout -d 'Print the stored stdout bytes exactly, and nothing else'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from show" -l stderr -d 'Print the stored stderr bytes exactly, and nothing else'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from show" -l json -d 'Print JSON instead of text'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from stats" -l cache-dir -d 'Where the cache lives [default: the platform cache dir /lcrun]' -r -F
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from stats" -l json -d 'Print JSON instead of text'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from clear" -l older-than -d 'Only entries stored longer ago than this (90s, 10m, 2h, 7d)' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from clear" -l scope -d 'Only entries of this --scope' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from clear" -l cache-dir -d 'Where the cache lives [default: the platform cache dir /lcrun]' -r -F
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from clear" -l json -d 'Print JSON instead of text'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from clear" -s h -l help -d 'Print help'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from prune" -l max-size -d 'The size to bring the cache under (bytes, or with K, M, G)' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from prune" -l older-than -d 'Also remove every entry stored longer ago than this' -r
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from prune" -l cache-dir -d 'Where the cache lives [default: the platform cache dir /lcrun]' -r -F
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from prune" -l json -d 'Print JSON instead of text'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from prune" -s h -l help -d 'Print help'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "list" -d 'The entries, newest first: key (a short unique prefix), command, age, stored size, exit status, hits'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "show" -d 'One entry: its key inputs, timings, sizes and outputs'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Entries, bytes on disk, hits, misses, hit rate, time saved'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "clear" -d 'Remove entries: those named (by key prefix), or those matching --older-than and --scope; with nothing, all of them'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "prune" -d 'Remove the least recently used entries until the cache fits SIZE'
complete -c lcrun -n "__fish_lcrun_using_subcommand cache; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lcrun -n "__fish_lcrun_using_subcommand help; and not __fish_seen_subcommand_from progress explain cache help" -f -a "progress" -d 'Report progress from inside a command that lcrun runs (a no-op outside lcrun)'
complete -c lcrun -n "__fish_lcrun_using_subcommand help; and not __fish_seen_subcommand_from progress explain cache help" -f -a "explain" -d 'Say whether a run would hit the cache, and for a miss which input changed since the closest earlier entry of the same command. Runs nothing (cmd: expressions are evaluated: the key needs them; stdin is read only for -c stdin)'
complete -c lcrun -n "__fish_lcrun_using_subcommand help; and not __fish_seen_subcommand_from progress explain cache help" -f -a "cache" -d 'Look into the cache: list its entries, show one, count hits and misses, remove entries'
complete -c lcrun -n "__fish_lcrun_using_subcommand help; and not __fish_seen_subcommand_from progress explain cache help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lcrun -n "__fish_lcrun_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "list" -d 'The entries, newest first: key (a short unique prefix), command, age, stored size, exit status, hits'
complete -c lcrun -n "__fish_lcrun_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "show" -d 'One entry: its key inputs, timings, sizes and outputs'
complete -c lcrun -n "__fish_lcrun_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "stats" -d 'Entries, bytes on disk, hits, misses, hit rate, time saved'
complete -c lcrun -n "__fish_lcrun_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "clear" -d 'Remove entries: those named (by key prefix), or those matching --older-than and --scope; with nothing, all of them'
complete -c lcrun -n "__fish_lcrun_using_subcommand help; and __fish_seen_subcommand_from cache" -f -a "prune" -d 'Remove the least recently used entries until the cache fits SIZE'

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
        printf '%s\n' hash: mtime: git git: env: cmd: value: stdin
    end
end

complete -c lcrun -n __fish_lcrun_after_cache_by -f -a "(__fish_lcrun_cache_by)"
