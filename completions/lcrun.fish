complete --keep-order --exclusive --command lcrun --arguments "(LCRUN_COMPLETE=fish _LCRUN_TAB=1 lcrun -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
