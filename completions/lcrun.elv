
set edit:completion:arg-completer[lcrun] = { |@words|
    var index = (count $words)
    set index = (- $index 1)

    put (env _CLAP_IFS="\n" _CLAP_COMPLETE_INDEX=(to-string $index) LCRUN_COMPLETE="elvish" _LCRUN_TAB=1 lcrun -- $@words) | to-lines
}

