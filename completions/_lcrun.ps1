
Register-ArgumentCompleter -Native -CommandName lcrun -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $prev = $env:LCRUN_COMPLETE;
    $env:LCRUN_COMPLETE = "powershell";
    $env:_LCRUN_TAB = "1";

    $args = $commandAst.Extent.Text
    $args = $args.Substring(0, [math]::Min($cursorPosition, $args.Length));
    if ($wordToComplete -eq "") {
        $args += " ''";
    }

    $results = Invoke-Expression @"
& lcrun -- $args
"@;
    Remove-Item Env:\_LCRUN_TAB;
    if ($null -eq $prev) {
        Remove-Item Env:\LCRUN_COMPLETE;
    } else {
        $env:LCRUN_COMPLETE = $prev;
    }
    $results | ForEach-Object {
        $split = $_.Split("`t");
        $cmd = $split[0];

        if ($split.Length -eq 2) {
            $help = $split[1];
        }
        else {
            $help = $split[0];
        }

        [System.Management.Automation.CompletionResult]::new($cmd, $cmd, 'ParameterValue', $help)
    }
};
        
