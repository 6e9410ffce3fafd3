//! The `lcrun` binary: parses the command line, runs, and turns every failure
//! into one `lcrun: ...` line and the right exit status.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use lcrun::cli::Cli;
use lcrun::messages::error;
use lcrun::Exit;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    match lcrun::run(cli) {
        Ok(exit) => exit.into(),
        Err(err) => {
            error(format!("{err:#}"));
            Exit::Usage.into()
        }
    }
}

/// Help and version print as usual; any other parse error becomes one line
/// and status 125, so it cannot be mistaken for the command's own status.
fn usage_error(err: clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        _ => {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or("bad arguments");
            error(format!(
                "{} (see 'lcrun --help')",
                first.trim_start_matches("error: ")
            ));
            Exit::Usage.into()
        }
    }
}
