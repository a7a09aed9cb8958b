//! The small API through which every outer layer drives the core:
//! [`CoreHandle`] (a command channel plus typed requests, used by the HTTP
//! interface and the CLI) and [`Supervisor`], the public embedding API that
//! runs the core on a background thread. Nothing here takes a signal handler,
//! a pidfile or stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{after, bounded, never, select, Receiver, TryRecvError};

use crate::config::Config;
use crate::core::{Command, Core, CoreOptions, Post};
use crate::figures;
use crate::handoff::InfoSnapshot;
use crate::output::ConsoleHandle;
use crate::status::{EntryStatus, Status};
use crate::{sys, Error, Spec};

/// A cloneable way to talk to a running core.
///
/// A plain handle waits for the core's answer as long as it takes (the
/// embedding API: the core outlives the [`Supervisor`]). A
/// [`bounded`](CoreHandle::bounded) one, which the HTTP interface uses,
/// waits at most a given time, and not at all once its `cancel` receiver
/// disconnects (the instance is shutting down and the core may never read
/// the request): `Error::ShuttingDown`, or `Error::NoAnswer` after the time.
#[derive(Clone)]
pub(crate) struct CoreHandle {
    tx: Post,
    /// The longest wait for a status, and for a scale or restart to settle.
    status_wait: Option<Duration>,
    settle_wait: Option<Duration>,
    cancel: Receiver<()>,
    /// Disconnected when the waits for a scale or restart to settle must
    /// end (the control server stops for a reload): `Error::Interrupted`.
    interrupt: Receiver<()>,
    /// What its answers show of processes and cgroups, read here, on the
    /// asking thread, not by the core; shared by the handle's clones.
    figures: Arc<figures::Cache>,
}

impl CoreHandle {
    pub fn new(tx: Post) -> CoreHandle {
        let figures = Arc::default();
        CoreHandle { tx, status_wait: None, settle_wait: None, cancel: never(), interrupt: never(), figures }
    }

    /// The same core, with bounded waits cut short when `cancel` disconnects.
    pub fn bounded(self, status: Duration, settle: Duration, cancel: Receiver<()>) -> CoreHandle {
        CoreHandle { status_wait: Some(status), settle_wait: Some(settle), cancel, ..self }
    }

    /// The same core, with waits for a scale or restart to settle cut
    /// short when `interrupt` disconnects.
    pub fn interruptible(self, interrupt: Receiver<()>) -> CoreHandle {
        CoreHandle { interrupt, ..self }
    }

    pub fn status(&self) -> Result<Status, Error> {
        let (reply, answer) = bounded(1);
        let unread = self.ask(Command::Status { reply }, answer, self.status_wait, &never())?;
        Ok(unread.read(&self.figures))
    }

    pub fn scale(&self, entry: &str, count: usize) -> Result<EntryStatus, Error> {
        let (reply, answer) = bounded(1);
        let unread = self.ask(
            Command::Scale { entry: entry.to_string(), count, reply },
            answer,
            self.settle_wait,
            &self.interrupt,
        )?;
        Ok(unread.read(&self.figures))
    }

    pub fn restart(&self, entry: &str) -> Result<EntryStatus, Error> {
        let (reply, answer) = bounded(1);
        let unread =
            self.ask(Command::Restart { entry: entry.to_string(), reply }, answer, self.settle_wait, &self.interrupt)?;
        Ok(unread.read(&self.figures))
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }

    /// Sends `command` and waits for its answer, within `wait` if given.
    fn ask<T>(
        &self,
        command: Command,
        answer: Receiver<Result<T, Error>>,
        wait: Option<Duration>,
        interrupt: &Receiver<()>,
    ) -> Result<T, Error> {
        if matches!(self.cancel.try_recv(), Err(TryRecvError::Disconnected)) {
            return Err(Error::ShuttingDown);
        }
        self.tx.send(command).map_err(|_| Error::CoreGone)?;
        let timer = wait.map(after).unwrap_or_else(never);
        select! {
            recv(answer) -> got => got.map_err(|_| Error::CoreGone)?,
            recv(self.cancel) -> _ => Err(Error::ShuttingDown),
            // A change that settles at once (a scale to the count it has)
            // still gets its answer; one that is settling is taken.
            recv(interrupt) -> _ => match answer.recv_timeout(INTERRUPT_GRACE) {
                Ok(got) => got,
                Err(_) => Err(Error::Interrupted),
            },
            recv(timer) -> _ => Err(Error::NoAnswer(wait.unwrap_or_default())),
        }
    }
}

/// How long a scale or restart interrupted by a reload still waits for its
/// answer before it is answered "accepted".
const INTERRUPT_GRACE: Duration = Duration::from_millis(200);

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
        let (tx, rx) = crate::core::channel().map_err(|e| Error::io("cannot make the core's mailbox", e))?;
        let core_options = CoreOptions {
            log_dir: options.log_dir,
            console: ConsoleHandle::default(),
            info: InfoSnapshot { started_at: sys::unix_now(), ..InfoSnapshot::default() },
            ledger: None,
            // Cgroups are an instance's, recorded in its DIR, which an
            // embedded supervisor does not have.
            fence: crate::cgroup::Fence::ProcessGroup(
                "an embedded Supervisor has no instance directory to record cgroups in".to_string(),
            ),
            on_started: None,
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
            reloads_failed: 0,
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crossbeam_channel::bounded;

    use super::CoreHandle;
    use crate::Error;

    #[test]
    fn bounded_waits_end_in_time_or_at_once_in_a_shutdown() {
        // A core that never reads its channel (it has returned).
        let (tx, rx) = crate::core::channel().unwrap();
        let (closing, cancel) = bounded::<()>(1);
        let handle = CoreHandle::new(tx).bounded(Duration::from_millis(100), Duration::from_millis(200), cancel);
        let t = Instant::now();
        assert!(matches!(handle.status(), Err(Error::NoAnswer(_))));
        assert!(t.elapsed() >= Duration::from_millis(100));
        let t = Instant::now();
        assert!(matches!(handle.scale("x", 1), Err(Error::NoAnswer(_))));
        assert!(t.elapsed() >= Duration::from_millis(200));
        // A wait in progress ends when the shutdown begins.
        let waiting = std::thread::spawn({
            let handle = handle.clone();
            move || handle.restart("x")
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while rx.len() < 3 && Instant::now() < deadline {
            std::thread::yield_now(); // until the restart is sent and waited for
        }
        assert_eq!(rx.len(), 3);
        drop(closing);
        assert!(matches!(waiting.join().unwrap(), Err(Error::ShuttingDown)));
        // And nothing more is sent to the core.
        let queued = rx.len();
        assert!(matches!(handle.status(), Err(Error::ShuttingDown)));
        assert_eq!(rx.len(), queued);
    }
}
