_lcrun() {
    local i cur prev opts cmd
    COMPREPLY=()
    if [[ "${BASH_VERSINFO[0]}" -ge 4 ]]; then
        cur="$2"
    else
        cur="${COMP_WORDS[COMP_CWORD]}"
    fi
    prev="$3"
    cmd=""
    opts=""

    for i in "${COMP_WORDS[@]:0:COMP_CWORD}"
    do
        case "${cmd},${i}" in
            ",$1")
                cmd="lcrun"
                ;;
            lcrun,cache)
                cmd="lcrun__subcmd__cache"
                ;;
            lcrun,explain)
                cmd="lcrun__subcmd__explain"
                ;;
            lcrun,help)
                cmd="lcrun__subcmd__help"
                ;;
            lcrun,progress)
                cmd="lcrun__subcmd__progress"
                ;;
            lcrun__subcmd__cache,clear)
                cmd="lcrun__subcmd__cache__subcmd__clear"
                ;;
            lcrun__subcmd__cache,help)
                cmd="lcrun__subcmd__cache__subcmd__help"
                ;;
            lcrun__subcmd__cache,list)
                cmd="lcrun__subcmd__cache__subcmd__list"
                ;;
            lcrun__subcmd__cache,prune)
                cmd="lcrun__subcmd__cache__subcmd__prune"
                ;;
            lcrun__subcmd__cache,show)
                cmd="lcrun__subcmd__cache__subcmd__show"
                ;;
            lcrun__subcmd__cache,stats)
                cmd="lcrun__subcmd__cache__subcmd__stats"
                ;;
            lcrun__subcmd__cache__subcmd__help,clear)
                cmd="lcrun__subcmd__cache__subcmd__help__subcmd__clear"
                ;;
            lcrun__subcmd__cache__subcmd__help,help)
                cmd="lcrun__subcmd__cache__subcmd__help__subcmd__help"
                ;;
            lcrun__subcmd__cache__subcmd__help,list)
                cmd="lcrun__subcmd__cache__subcmd__help__subcmd__list"
                ;;
            lcrun__subcmd__cache__subcmd__help,prune)
                cmd="lcrun__subcmd__cache__subcmd__help__subcmd__prune"
                ;;
            lcrun__subcmd__cache__subcmd__help,show)
                cmd="lcrun__subcmd__cache__subcmd__help__subcmd__show"
                ;;
            lcrun__subcmd__cache__subcmd__help,stats)
                cmd="lcrun__subcmd__cache__subcmd__help__subcmd__stats"
                ;;
            lcrun__subcmd__help,cache)
                cmd="lcrun__subcmd__help__subcmd__cache"
                ;;
            lcrun__subcmd__help,explain)
                cmd="lcrun__subcmd__help__subcmd__explain"
                ;;
            lcrun__subcmd__help,help)
                cmd="lcrun__subcmd__help__subcmd__help"
                ;;
            lcrun__subcmd__help,progress)
                cmd="lcrun__subcmd__help__subcmd__progress"
                ;;
            lcrun__subcmd__help__subcmd__cache,clear)
                cmd="lcrun__subcmd__help__subcmd__cache__subcmd__clear"
                ;;
            lcrun__subcmd__help__subcmd__cache,list)
                cmd="lcrun__subcmd__help__subcmd__cache__subcmd__list"
                ;;
            lcrun__subcmd__help__subcmd__cache,prune)
                cmd="lcrun__subcmd__help__subcmd__cache__subcmd__prune"
                ;;
            lcrun__subcmd__help__subcmd__cache,show)
                cmd="lcrun__subcmd__help__subcmd__cache__subcmd__show"
                ;;
            lcrun__subcmd__help__subcmd__cache,stats)
                cmd="lcrun__subcmd__help__subcmd__cache__subcmd__stats"
                ;;
            *)
                ;;
        esac
    done

    case "${cmd}" in
        lcrun)
            opts="-c -o -e -q -v -h -V --shell --cache-by --output --ignore-arg --no-cwd --scope --expire --refresh --cache-mode --no-cache --cache-failures --cache-dir --max-size --no-wait --quiet --verbose --report --progress --interval --progress-regex --timeout --kill-after --help --version progress explain cache help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 1 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --shell)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cache-by)
                    COMPREPLY=($(compgen -W "hash: mtime: git git: env: cmd: value: stdin" -- "${cur}"))
                    return 0
                    ;;
                -c)
                    COMPREPLY=($(compgen -W "hash: mtime: git git: env: cmd: value: stdin" -- "${cur}"))
                    return 0
                    ;;
                --output)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -o)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ignore-arg)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --scope)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --expire)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -e)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cache-mode)
                    COMPREPLY=($(compgen -W "rw ro wo off" -- "${cur}"))
                    return 0
                    ;;
                --cache-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --max-size)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --report)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --progress)
                    COMPREPLY=($(compgen -W "auto bar plain none" -- "${cur}"))
                    return 0
                    ;;
                --interval)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --progress-regex)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --timeout)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --kill-after)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache)
            opts="-h --cache-dir --json --help list show stats clear prune help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --cache-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__clear)
            opts="-h --older-than --scope --cache-dir --json --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --older-than)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --scope)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cache-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__help)
            opts="list show stats clear prune help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__help__subcmd__clear)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__help__subcmd__list)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__help__subcmd__prune)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__help__subcmd__show)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__help__subcmd__stats)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__list)
            opts="-h --cache-dir --json --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --cache-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__prune)
            opts="-h --max-size --older-than --cache-dir --json --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --max-size)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --older-than)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cache-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__show)
            opts="-h --stdout --stderr --cache-dir --json --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --cache-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__cache__subcmd__stats)
            opts="-h --cache-dir --json --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --cache-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__explain)
            opts="-c -o -e -q -v -h --json --shell --cache-by --output --ignore-arg --no-cwd --scope --expire --refresh --cache-mode --no-cache --cache-failures --cache-dir --max-size --no-wait --quiet --verbose --report --progress --interval --progress-regex --timeout --kill-after --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                --shell)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cache-by)
                    COMPREPLY=($(compgen -W "hash: mtime: git git: env: cmd: value: stdin" -- "${cur}"))
                    return 0
                    ;;
                -c)
                    COMPREPLY=($(compgen -W "hash: mtime: git git: env: cmd: value: stdin" -- "${cur}"))
                    return 0
                    ;;
                --output)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -o)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --ignore-arg)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --scope)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --expire)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                -e)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --cache-mode)
                    COMPREPLY=($(compgen -W "rw ro wo off" -- "${cur}"))
                    return 0
                    ;;
                --cache-dir)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --max-size)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --report)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --progress)
                    COMPREPLY=($(compgen -W "auto bar plain none" -- "${cur}"))
                    return 0
                    ;;
                --interval)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --progress-regex)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --timeout)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                --kill-after)
                    COMPREPLY=($(compgen -f "${cur}"))
                    return 0
                    ;;
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help)
            opts="progress explain cache help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help__subcmd__cache)
            opts="list show stats clear prune"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help__subcmd__cache__subcmd__clear)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help__subcmd__cache__subcmd__list)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help__subcmd__cache__subcmd__prune)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help__subcmd__cache__subcmd__show)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help__subcmd__cache__subcmd__stats)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 4 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help__subcmd__explain)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help__subcmd__help)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__help__subcmd__progress)
            opts=""
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 3 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
        lcrun__subcmd__progress)
            opts="-h --help"
            if [[ ${cur} == -* || ${COMP_CWORD} -eq 2 ]] ; then
                COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
                return 0
            fi
            case "${prev}" in
                *)
                    COMPREPLY=()
                    ;;
            esac
            COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
            return 0
            ;;
    esac
}

# -c/--cache-by: the kinds of expression, then paths after hash:, mtime:
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
            done < <(compgen -W "hash: mtime: git git: env: cmd: value: stdin" -- "$cur")
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

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _lcrun_cache_by_or_clap -o nosort -o bashdefault -o default lcrun
else
    complete -F _lcrun_cache_by_or_clap -o bashdefault -o default lcrun
fi
