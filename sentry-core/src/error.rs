//! The crate's error type: every fallible public call returns [`Error`], a value
//! that carries enough context (which entry, which file, which text) to be shown
//! to a user as is. This module knows nothing of how errors are reported.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What went wrong, with the context a user needs to act on it.
#[derive(Debug)]
pub enum Error {
    /// The configuration is invalid; each string names one offending item.
    InvalidConfig(Vec<String>),
    /// No entry of that name exists.
    UnknownEntry(String),
    /// A process count outside `0..=MAX_COUNT`, or not a number.
    BadCount(String),
    /// Another instance holds the pidfile lock.
    AlreadyRunning { pidfile: PathBuf, pid: Option<u32> },
    /// No instance is running for this run directory.
    NotRunning { pidfile: PathBuf },
    /// A locked pidfile names a process other than the lock's holder (it was
    /// edited by hand): nothing is signalled on its word.
    PidfileMismatch { pidfile: PathBuf, pid: u32 },
    /// The control address could not be bound.
    Bind { addr: String, source: io::Error },
    /// An I/O operation on a file or a process failed.
    Io { context: String, source: io::Error },
    /// The control interface answered with an error.
    Control { status: u16, message: String },
    /// The supervisor core is gone (it shut down or panicked).
    CoreGone,
    /// The supervisor is stopping every child: it takes no more requests.
    ShuttingDown,
    /// A reload began while a scale or restart was settling: it was taken and
    /// goes on in the new image (its state crosses the exec); HTTP 202.
    Interrupted,
    /// Processes of `entry` outlived SIGKILL (uninterruptible sleep, a frozen
    /// cgroup): their slots are `unkillable`, and what was asked is not done.
    Unkillable { entry: String, pids: Vec<u32> },
    /// The supervisor did not answer a request within this time.
    NoAnswer(std::time::Duration),
    /// The processes asked for cannot fit under the open-file limit (the
    /// text names the limit and how many fit).
    OverBudget(String),
    /// Not every process of an entry could be started (the first reason given).
    Incomplete { entry: String, running: usize, target: usize, error: String },
}

impl Error {
    /// Wraps an I/O error with a sentence saying what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(problems) => {
                write!(f, "invalid configuration:")?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
            Error::UnknownEntry(name) => write!(f, "unknown entry {name:?}"),
            Error::BadCount(text) => {
                write!(f, "bad count {text:?}: expected an integer from 0 to {}", crate::spec::MAX_COUNT)
            }
            Error::AlreadyRunning { pidfile, pid } => match pid {
                Some(pid) => write!(f, "already running (PID {pid}, {})", pidfile.display()),
                None => write!(f, "already running ({} is locked)", pidfile.display()),
            },
            Error::NotRunning { pidfile } => {
                write!(f, "not running (no live instance holds {})", pidfile.display())
            }
            Error::PidfileMismatch { pidfile, pid } => {
                write!(f, "{} names PID {pid}, which does not hold its lock: nothing was signalled", pidfile.display())
            }
            Error::Bind { addr, source } => write!(f, "cannot bind {addr}: {source}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Control { status: 0, message } => write!(f, "{message}"),
            Error::Control { status, message } => write!(f, "{message} (HTTP {status})"),
            Error::CoreGone => write!(f, "the supervisor has shut down"),
            Error::ShuttingDown => write!(f, "shutting down"),
            Error::Interrupted => {
                write!(f, "accepted; a reload began before it settled: it goes on in the new image (see status)")
            }
            Error::Unkillable { entry, pids } => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                write!(
                    f,
                    "{entry}: PID {} outlived SIGKILL (uninterruptible sleep?); its slot is unkillable and waits for it",
                    pids.join(", ")
                )
            }
            Error::NoAnswer(waited) => write!(f, "the supervisor did not answer within {} s", waited.as_secs_f64()),
            Error::OverBudget(text) => write!(f, "{text}"),
            Error::Incomplete { entry, running, target, error } => {
                write!(f, "entry {entry:?}: only {running} of {target} processes run ({error})")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
