//! The reloader: one background thread that turns reload requests (the
//! `reload` command, `POST /reload`, SIGHUP) into a rebuild of the
//! configuration crate and a vetted binary, while supervision goes on.
//! Requests that arrive during a build are answered by the next build that
//! starts after them: each request gets a *ticket*, the id of the build that
//! will answer it, and `last_reload.id` tells when that build is done. On
//! success it stops the HTTP server (keeping its listener), leaves an
//! [`ExecPlan`] and asks the core to suspend; the main thread then execs.
//! It knows nothing of how the exec is done.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::build::{self, BuildError};
use crate::core::{Command, Post};
use crate::handoff::HANDOFF_VERSION;
use crate::http::ControlServer;
use crate::output::ConsoleHandle;
use crate::status::ReloadOutcome;
use crate::{instance, sys};

/// What the main thread must exec, once the core has suspended.
pub(crate) struct ExecPlan {
    pub binary: PathBuf,
    pub reload_id: u64,
    /// Said with the outcome when the binary was not rebuilt (no crate, no
    /// toolchain): the same binary is re-exec'd and an edit is not applied.
    pub note: Option<String>,
    /// When its build started (Unix ns).
    pub started_ns: u64,
}

/// The HTTP server, shared so the reloader can stop it before a suspend,
/// and its listener once stopped.
#[derive(Default)]
pub(crate) struct Http {
    pub server: Option<ControlServer>,
    pub listener: Option<crate::listener::Listener>,
}

/// Where the reloader finds what it builds and whom it tells.
pub(crate) struct ReloadContext {
    pub name: String,
    pub crate_dir: Option<PathBuf>,
    /// The binary Sentry was first started from: re-exec'd when nothing can be built.
    pub exe: PathBuf,
    pub core: Post,
    pub console: ConsoleHandle,
    pub http: Arc<Mutex<Http>>,
}

/// A handle to ask for reloads.
#[derive(Clone)]
pub(crate) struct Reloader {
    requests: Sender<Option<PathBuf>>,
    pending: Receiver<Option<PathBuf>>,
    /// What the last request asked for (the last word wins in a batch):
    /// what a queued request asks of the next image.
    last: Arc<Mutex<Option<PathBuf>>>,
    next_id: Arc<Mutex<u64>>,
    plan: Arc<Mutex<Option<ExecPlan>>>,
    resume: Sender<()>,
}

impl Reloader {
    /// Starts the reloader thread; builds get ids from `next_id` on.
    pub fn spawn(context: ReloadContext, next_id: u64) -> std::io::Result<Reloader> {
        let (requests, pending) = unbounded();
        let (resume, resumed) = unbounded();
        let reloader = Reloader {
            requests,
            pending: pending.clone(),
            last: Arc::new(Mutex::new(None)),
            next_id: Arc::new(Mutex::new(next_id)),
            plan: Arc::new(Mutex::new(None)),
            resume,
        };
        let this = reloader.clone();
        std::thread::Builder::new().name("sentry-reload".into()).spawn(move || this.run(context, pending, resumed))?;
        Ok(reloader)
    }

    /// Asks for a rebuild (`None`) or for a re-exec of `exec`; returns the
    /// ticket: the id of the build that will answer this request.
    pub fn request(&self, exec: Option<PathBuf>) -> u64 {
        let next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = exec.clone();
        let _ = self.requests.send(exec);
        *next
    }

    /// The id the next build will get.
    pub fn next_id(&self) -> u64 {
        *self.next_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether requests wait for a build that has not started.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// What the requests waiting for a build ask for: a rebuild (`None`)
    /// or that binary; only meaningful while [`Reloader::has_pending`].
    pub fn pending_exec(&self) -> Option<PathBuf> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The plan left by a successful build, for the main thread.
    pub fn take_plan(&self) -> Option<ExecPlan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// After a failed exec: go on serving requests.
    pub fn resume(&self) {
        let _ = self.resume.send(());
    }

    fn run(self, context: ReloadContext, pending: Receiver<Option<PathBuf>>, resumed: Receiver<()>) {
        while let Ok(first) = pending.recv() {
            let (id, exec) = {
                let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
                let id = *next;
                *next += 1;
                // Everything queued so far is answered by this build; the last word wins.
                (id, pending.try_iter().fold(first, |_, later| later))
            };
            crate::systemd::reloading();
            let started_ns = sys::unix_now_ns();
            match prepare(&context, exec) {
                Ok((binary, note)) => {
                    {
                        let mut http = context.http.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(server) = http.server.take() {
                            http.listener = server.stop();
                        }
                    }
                    *self.plan.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(ExecPlan { binary, reload_id: id, note, started_ns });
                    let _ = context.core.send(Command::Suspend);
                    // Returns only if the exec failed (or the instance is shutting down).
                    if resumed.recv().is_err() {
                        return;
                    }
                }
                Err(error) => {
                    context.console.say(&format!("Reload failed:\n{error}"));
                    crate::systemd::ready();
                    let duration_ms = Some(sys::unix_now_ns().saturating_sub(started_ns) / 1_000_000);
                    let outcome = ReloadOutcome { at: sys::unix_now(), ok: false, error: Some(error), id, duration_ms };
                    let _ = context.core.send(Command::ReloadOutcome(outcome));
                }
            }
        }
    }
}

/// Builds and vets the binary to exec; with a note when it is the same
/// binary again, not rebuilt.
fn prepare(context: &ReloadContext, exec: Option<PathBuf>) -> Result<(PathBuf, Option<String>), String> {
    let check = |binary: &Path| build::check_binary(binary, &[], HANDOFF_VERSION).map_err(|e| e.to_string());
    if let Some(binary) = exec {
        check(&binary)?;
        return Ok((binary, None));
    }
    let fallback = |why: String, hint: &str| {
        let mut said = why.clone();
        if let Some(first) = said.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        context.console.say(&format!("{said}: re-exec'ing {} after its check.", context.exe.display()));
        check(&context.exe)?;
        let note = format!(
            "NOT rebuilt: {why}. The same binary ({}) was re-exec'd without rebuilding, so an edit of the \
             configuration is not applied; {hint}.",
            context.exe.display()
        );
        Ok((context.exe.clone(), Some(note)))
    };
    if let Some(why) = instance::crate_problem(&context.name, context.crate_dir.as_deref()) {
        return fallback(why, instance::NAME_THE_CRATE);
    }
    let crate_dir = context.crate_dir.as_deref().unwrap_or(Path::new("."));
    match build::build(crate_dir, &context.name, build::is_release(&context.exe), build::BUILD_TIMEOUT) {
        Ok(binary) => {
            check(&binary)?;
            context.console.say(&format!("{} successfully compiled.", source_of(crate_dir, &context.name).display()));
            Ok((binary, None))
        }
        Err(BuildError::NoToolchain(why)) => {
            fallback(why, "install cargo, or build elsewhere and use reload --exec PATH")
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The source file of binary `name` in `crate_dir`, for the console.
fn source_of(crate_dir: &Path, name: &str) -> PathBuf {
    let bin = crate_dir.join(format!("src/bin/{name}.rs"));
    if bin.is_file() {
        bin
    } else {
        crate_dir.join("src/main.rs")
    }
}
