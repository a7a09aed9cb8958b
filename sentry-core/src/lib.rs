//! Sentry: a process supervisor for Linux whose configuration is a compiled
//! Rust program.
//!
//! A configuration is a tiny `main` that calls [`sentry`] with a list of
//! [`Spec`]s; the resulting binary is the supervisor and its own command line
//! (`start`, `stop`, `status`, `scale`, `restart`, `check`, …):
//!
//! ```no_run
//! use sentry_core::prelude::*;
//!
//! fn main() {
//!     sentry(vec![
//!         entry("dummy", "sleep", ["4"], 1000, 1),
//!         entry("web", "python3", ["-m", "http.server"], 500, 2)
//!             .env("PYTHONUNBUFFERED", "1"),
//!     ]);
//! }
//! ```
//!
//! The same core can be embedded with [`Supervisor::start`].
//!
//! # Layout
//!
//! - `spec`, `config`, `rule`: the configuration language, its validation,
//!   and the trigger/action languages of rules.
//! - `lifecycle`: the life of one slot as a pure function.
//! - `core`: the loop that owns all run-time state and performs effects;
//!   `child`: spawning one child and the thread that watches it;
//!   `output`: console and log files.
//! - `proc`: the one reader of `/proc` (stat, statm, status, cmdline,
//!   environ, fd, fdinfo), for everyone.
//! - `watch`: the /proc scanner, matching, triggers, rate limits and the
//!   watcher thread.
//! - `supervisor`: the command channel every outer layer uses, and the
//!   embedding API; `http`: the control interface; `cli`, `instance`,
//!   `client`, `signals`: the command line and its files.
//! - `run`: the running instance (`start`): the core on the main thread,
//!   re-exec and resume; `reload`: the reloader thread; [`build`]: cargo
//!   builds and binary checks; `handoff`: the versioned state that crosses
//!   `execve`.
//!
//! # Theory of operation
//!
//! One core loop owns every entry's slots and reads commands from a channel.
//! Each child has one monitor thread that polls its pidfd, its output pipes
//! and a stop fd; it writes output lines to the log itself (so a slow disk
//! slows the child, not the core) and, when the child exits, tells the core
//! *without reaping*. The core reaps, feeds the exit to the slot's pure
//! transition function and performs the effects (spawn, signal, vacate).
//! In CLI mode the core runs on the main thread, which is the only thread
//! that forks children — and, on a reload, the thread that execs the new
//! binary once the core has returned its state as a snapshot.

pub mod budget;
pub mod build;
mod cgroup;
mod child;
mod cli;
mod client;
mod config;
mod core;
mod dashboard;
mod error;
mod events;
mod figures;
mod handoff;
mod http;
mod instance;
mod leftovers;
mod lifecycle;
mod listener;
pub mod locate;
mod logfile;
mod logs;
mod metrics;
mod notify;
mod output;
pub mod probe;
mod proc;
mod reload;
/// The trigger and action languages (the `sentry-rules` crate).
pub use sentry_rules as rule;
mod run;
pub mod scaffold;
mod signals;
mod spawn;
mod spec;
mod status;
mod supervisor;
mod sys;
mod systemd;
mod thread;
mod watch;

pub use cli::sentry;
pub use error::Error;
pub use lifecycle::ChildExit;
pub use nix::sys::signal::Signal;
pub use spec::{
    entry, watch, IntoAction, IntoArgs, IntoPattern, IntoTrigger, Restart, Spec, LINE_LIMIT, MAX_COUNT, MAX_LINE_LIMIT,
    MIN_LINE_LIMIT,
};
pub use status::{
    EntryState, EntryStatus, MatchedProcess, ProcessStatus, ReloadOutcome, RuleStatus, Status, WatchStatus,
};
pub use supervisor::{Options, Supervisor};
/// One word of a systemd unit's command line, escaped (for tools that write units).
pub use systemd::quote_for_unit;

/// Everything a configuration's `main.rs` needs.
pub mod prelude {
    pub use crate::{entry, probe, sentry, watch, Error, Restart, Signal, Spec, Status, Supervisor};
    // The checked forms (compile errors) and the typed builders of rules.
    pub use crate::rule::{
        cpu, days, gib, hours, kib, mib, minutes, rmem, seconds, treemem, vmem, Action, Pattern, Trigger, CMDLINE,
        NAME, PID, RMEM, VMEM,
    };
    pub use sentry_macros::{action, duration, pattern, sentry, trigger};
    pub use std::time::Duration;
}
