complete --keep-order --exclusive --command lcrun --arguments "(LCRUN_COMPLETE=fish lcrun -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
