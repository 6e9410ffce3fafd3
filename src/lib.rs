//! lcrun runs a command as a *long callback*: it streams the command's
//! output, shows its progress, turns Ctrl-C into a clean cancellation, and
//! memoizes the result in SQLite so that an identical run is replayed.
//!
//! The data flow: an [`invocation`] becomes a [`key::Key`]; the key meets the
//! [`store`]; a miss runs through the [`runner`] and is recorded; a hit is
//! replayed.

pub mod app;
pub mod blob;
pub mod claim;
pub mod cli;
pub mod complete;
pub mod compress;
pub mod db;
pub mod deadline;
pub mod display;
pub mod duration;
pub mod exit;
pub mod inspect;
pub mod invocation;
pub mod jobs;
pub mod key;
pub mod lock;
pub mod messages;
pub mod output;
pub mod outputs;
pub mod progress;
pub mod recorder;
pub mod report;
pub mod runner;
pub mod scratch;
pub mod store;
pub mod trust;
pub mod usage;

pub use app::run;
pub use exit::Exit;
