//! The small API through which every outer layer drives the core:
//! [`CoreHandle`] (a command channel plus typed requests, used by the HTTP
//! interface and the CLI) and [`Supervisor`], the public embedding API that
//! runs the core on a background thread. Nothing here takes a signal handler,
//! a pidfile or stdout.

use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Sender};

use crate::config::Config;
use crate::core::{Command, Core, CoreOptions};
use crate::handoff::InfoSnapshot;
use crate::output::ConsoleHandle;
use crate::status::{EntryStatus, Status};
use crate::{sys, Error, Spec};

/// A cloneable way to talk to a running core.
#[derive(Clone)]
pub(crate) struct CoreHandle {
    tx: Sender<Command>,
}

impl CoreHandle {
    pub fn new(tx: Sender<Command>) -> CoreHandle {
        CoreHandle { tx }
    }

    pub fn status(&self) -> Result<Status, Error> {
        let (reply, answer) = bounded(1);
        self.tx.send(Command::Status { reply }).map_err(|_| Error::CoreGone)?;
        answer.recv().map_err(|_| Error::CoreGone)?
    }

    pub fn scale(&self, entry: &str, count: usize) -> Result<EntryStatus, Error> {
        let (reply, answer) = bounded(1);
        let command = Command::Scale { entry: entry.to_string(), count, reply };
        self.tx.send(command).map_err(|_| Error::CoreGone)?;
        answer.recv().map_err(|_| Error::CoreGone)?
    }

    pub fn restart(&self, entry: &str) -> Result<EntryStatus, Error> {
        let (reply, answer) = bounded(1);
        let command = Command::Restart { entry: entry.to_string(), reply };
        self.tx.send(command).map_err(|_| Error::CoreGone)?;
        answer.recv().map_err(|_| Error::CoreGone)?
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

/// Options of an embedded supervisor.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where each entry's output is appended, as `ENTRY.log`. `None` (the
    /// default) reads the output and discards it.
    pub log_dir: Option<PathBuf>,
}

/// A supervisor embedded in the calling program: the same core as the
/// command line, on a background thread, with no CLI, pidfile, signal
/// handler or printing.
///
/// ```no_run
/// use sentry_core::prelude::*;
/// let sup = Supervisor::start(vec![entry("idle", "sleep", ["1000"], 0, 2)])?;
/// sup.scale("idle", 3)?;
/// assert_eq!(sup.status().entries[0].count, 3);
/// sup.shutdown(); // stops every child and joins every thread
/// # Ok::<(), sentry_core::Error>(())
/// ```
pub struct Supervisor {
    handle: CoreHandle,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Validates `specs` and starts supervising them.
    pub fn start(specs: Vec<Spec>) -> Result<Supervisor, Error> {
        Supervisor::start_with(specs, Options::default())
    }

    /// Like [`Supervisor::start`], with [`Options`].
    pub fn start_with(specs: Vec<Spec>, options: Options) -> Result<Supervisor, Error> {
        let config = Config::from_specs(&specs)?;
        // Embedded, the limit is the host's business: it is not raised.
        crate::budget::check_config(&config, crate::budget::nofile().0, "the soft RLIMIT_NOFILE")?;
        let (tx, rx) = unbounded();
        let core_options = CoreOptions {
            log_dir: options.log_dir,
            console: ConsoleHandle::default(),
            info: InfoSnapshot { started_at: sys::unix_now(), ..InfoSnapshot::default() },
            ledger: None,
        };
        let core = Core::new(config, core_options, tx.clone(), rx);
        let thread = std::thread::Builder::new()
            .name("sentry-core".into())
            .spawn(move || {
                // Embedded cores are never suspended: only shutdown ends them.
                core.run();
            })
            .map_err(|e| Error::io("cannot start the supervisor thread", e))?;
        Ok(Supervisor { handle: CoreHandle::new(tx), thread: Some(thread) })
    }

    /// The current state (the shape of `GET /status`).
    pub fn status(&self) -> Status {
        self.handle.status().unwrap_or_else(|_| Status {
            pid: std::process::id(),
            started_at: 0,
            reexec_count: 0,
            reexeced_at: None,
            last_reload: None,
            entries: Vec::new(),
            containment: Default::default(),
            watches: Vec::new(),
        })
    }

    /// Sets the number of processes of entry `name`; returns once the new
    /// processes are started or the extra ones have stopped.
    pub fn scale(&self, name: &str, count: usize) -> Result<(), Error> {
        self.handle.scale(name, count).map(drop)
    }

    /// Gracefully restarts entry `name`'s processes; returns once they are back.
    pub fn restart(&self, name: &str) -> Result<(), Error> {
        self.handle.restart(name).map(drop)
    }

    /// Stops every child and joins every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.shutdown();
            let _ = thread.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}
