//! Integration tests: the real `lcrun` binary against real processes, files,
//! SQLite databases, git repositories and terminals.

// Tests panic on what they cannot set up; that is their way of failing.
#![allow(clippy::unwrap_used)]

mod util;

mod complete;
mod completion_edges;
mod completion_more;
mod completion_real;
mod concurrency;
mod foundation;
mod inputs;
mod inspect;
mod interrupted;
mod keys;
mod outputs;
mod packaging;
mod port;
mod pty;
mod report;
mod review;
mod runner;
mod store;
mod terminal;
mod threads;
mod trust;
mod waits;
