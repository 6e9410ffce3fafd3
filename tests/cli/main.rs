//! Integration tests: the real `lcrun` binary against real processes, files,
//! SQLite databases, git repositories and terminals.

mod util;

mod foundation;
mod terminal;
mod concurrency;
