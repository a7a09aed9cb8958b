//! The running instance behind `NAME start`: the process-wide pieces an
//! embedded supervisor never touches — the pidfile lock, the listener and its
//! HTTP server, the token, signal handlers, the console, the reloader — and
//! the loop that runs the core on the main thread and, when the core
//! suspends for a reload, re-execs the new binary *from that same thread*
//! (children's PDEATHSIG is tied to it). The new image comes back here
//! through [`resume`], rebuilds the core from the snapshot and applies the
//! new configuration as a difference. If the exec fails, everything resumes
//! as before. If the snapshot cannot be read, [`resume`] adopts what /proc
//! shows and says so loudly.

use crate::listener::Listener;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::cgroup::{self, Fence};
use crate::config::Config;
use crate::core::{max_stop_wait, Command, Core, CoreExit, CoreOptions, FoundChild, Mailbox, Post, Suspended};
use crate::handoff::{self, Handoff, InfoSnapshot, InstanceSnapshot, KeptFd, HANDOFF_VERSION};
use crate::http::{ControlServer, Routes};
use crate::instance::{self, Paths, PidLock};
use crate::output::Console;
use crate::reload::{ExecPlan, Http, ReloadContext, Reloader};
use crate::signals::{self, SignalPipe, SignalThread};
use crate::status::ReloadOutcome;
use crate::supervisor::CoreHandle;
use crate::{budget, proc, sys, Error, Signal, Spec};

/// The signals an instance handles.
const HANDLED: [Signal; 4] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGUSR1];

/// Starts a new instance in the foreground; returns after a clean stop.
pub(crate) fn start(specs: &[Spec], paths: &Paths, http: Option<String>, syslog: bool) -> Result<(), Error> {
    // Process-wide settings first, while this is the only thread. The
    // signals Sentry handles wait, blocked, until their handlers are in
    // place: a SIGTERM sent as soon as the pidfile names this process is a
    // clean stop, not a death by the default action (threads started
    // meanwhile keep them blocked; `forward` unblocks them on this one).
    signals::block(&HANDLED);
    sys::catch_sigxfsz();
    crate::events::init(crate::events::Destinations::from_environment(syslog));
    let limit = budget::raise_nofile(false);
    budget::limit_arenas();
    let config = Config::from_specs(specs)?;
    budget::check_config(&config, limit, "RLIMIT_NOFILE, raised to the hard limit")?;
    budget::reserve_fds(config.entries.iter().map(|e| e.count).sum(), config.entries.len());
    // What the caller left open (a shell's or cargo's jobserver fds) is not
    // passed on to builds, checks or the next image.
    sys::cloexec_inherited();
    std::fs::create_dir_all(&paths.dir).map_err(|e| Error::io(format!("cannot create {}", paths.dir.display()), e))?;
    let lock = PidLock::acquire(&paths.pidfile())?;
    let addr = http.or_else(|| std::env::var("SENTRY_HTTP").ok()).unwrap_or_else(|| "127.0.0.1:0".to_string());
    let prepared =
        Listener::bind(&addr).map_err(|source| Error::Bind { addr: addr.clone(), source }).and_then(|listener| {
            let token = sys::random_hex(16).map_err(|e| Error::io("cannot read /dev/urandom", e))?;
            instance::write_replacing(&paths.token_file(), &format!("{token}\n"), 0o600)?;
            Ok((listener, token))
        });
    let (listener, token) = match prepared {
        Ok(p) => p,
        Err(e) => {
            lock.release();
            return Err(e);
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(&paths.name));
    let settle = max_stop_wait(&config);
    let instance =
        match Instance::prepare(paths.clone(), exe, lock, token, listener, None, 1, settle).and_then(Instance::begin) {
            Ok(i) => i,
            Err((e, lock)) => {
                let _ = std::fs::remove_file(paths.token_file());
                lock.release();
                return Err(e);
            }
        };
    instance.say(&format!("Sentry started (PID: {} saved in {}).", std::process::id(), paths.pidfile().display()));
    instance.say(&format!(
        "Control interface on {} (token in {}).",
        instance.control_url(),
        paths.token_file().display()
    ));
    if let Some(why) = instance::crate_problem(&paths.name, paths.crate_dir.as_deref()) {
        instance.say(&format!(
            "Warning: {why}: `reload` will re-exec this binary without rebuilding it; {}.",
            instance::NAME_THE_CRATE
        ));
    }
    let (lines, emptied) = crate::leftovers::stop_left(&paths.ledger_file(), &paths.name, &canonical(&paths.dir));
    for line in lines {
        instance.say(&line);
    }
    let mut instance = instance;
    let (fence, lines) = containment(paths, Resume::Fresh { emptied: emptied.as_deref() });
    for line in lines {
        instance.say(&line);
    }
    instance.fence = fence;
    instance.say(&instance.fence.describe());
    let info = InfoSnapshot { started_at: sys::unix_now(), ..InfoSnapshot::default() };
    let core = Core::new(config, instance.options(info), instance.tx.clone(), instance.rx.clone());
    instance.supervise(core)
}

/// Continues an instance in a freshly exec'd image, from the snapshot in
/// the memfd `fd`.
pub(crate) fn resume(specs: &[Spec], paths: &Paths, fd: RawFd) -> Result<(), Error> {
    handoff::cloexec_all();
    sys::catch_sigxfsz();
    crate::events::init(crate::events::Destinations::from_environment(false));
    // The original soft limit comes from the first image, not the raised one in force.
    budget::raise_nofile(true);
    budget::limit_arenas();
    let handoff = match handoff::from_memfd(fd) {
        Ok(h) => h,
        Err(why) => return resume_without_snapshot(specs, paths, &why),
    };
    let entries = &handoff.core.entries;
    budget::reserve_fds(entries.iter().map(|e| e.slots.len()).sum::<usize>(), entries.len());
    let kept = handoff.instance;
    crate::events::restore_ring(kept.events.clone());
    let paths = Paths { name: kept.name.clone(), dir: kept.dir.clone(), crate_dir: kept.crate_dir.clone() };
    if kept.daemon_output {
        crate::output::keep_daemon_output(&paths.daemon_output());
    }
    let lock = match kept.pidfile.adopt() {
        Some(fd) => PidLock::adopt(fd, paths.pidfile()),
        None => PidLock::acquire(&paths.pidfile())?,
    };
    let listener = match kept.listener.adopt() {
        Some(fd) => Listener::from_fd(fd, &std::fs::read_to_string(paths.addr_file()).unwrap_or_default())
            .map_err(|e| Error::io("cannot take over the control socket", e))?,
        None => rebind(&paths)?,
    };
    let pipe = match (kept.signal_pipe.0.adopt(), kept.signal_pipe.1.adopt()) {
        (Some(read), Some(write)) => Some((read, write)),
        _ => None,
    };
    // Scale and restart may meet either configuration: the old one runs on
    // if the new one is invalid, and removed entries still stop.
    let old_stop = handoff.core.entries.iter().map(|e| e.config.stop_timeout_ms).max().unwrap_or(0);
    let settle = Config::from_specs(specs)
        .map(|c| max_stop_wait(&c))
        .unwrap_or_default()
        .max(max_stop_wait(&Config::default()) + Duration::from_millis(old_stop));
    // The control server and the signal thread start once every monitor
    // runs again: their threads are not made inside the unwatched window
    // (a request waits in the listener's backlog meanwhile; the handled
    // signals stay blocked, as across the exec).
    let instance = Instance::prepare(
        paths,
        kept.exe.clone(),
        lock,
        kept.token.clone(),
        listener,
        pipe,
        kept.next_reload_id,
        settle,
    )
    .map_err(|(e, _)| e)?;

    let now = sys::unix_now();
    let mut info = handoff.core.info.clone();
    let previous = info.reexeced_at.unwrap_or(info.started_at);
    info.reexec_count += 1;
    info.reexeced_at = Some(now);
    let duration_ms =
        (kept.reload_started_ns > 0).then(|| sys::unix_now_ns().saturating_sub(kept.reload_started_ns) / 1_000_000);
    info.last_reload =
        Some(ReloadOutcome { at: now, ok: true, error: kept.reload_note.clone(), id: kept.reload_id, duration_ms });
    let mut instance = instance;
    let (fence, lines) = match handoff.core.cgroup.as_deref() {
        Some(root) => containment(&instance.paths, Resume::Snapshot(root)),
        None => containment(&instance.paths, Resume::Adopt),
    };
    for line in lines {
        instance.say(&line);
    }
    instance.fence = fence;
    let (mut core, warnings) =
        Core::restore(handoff.core, instance.options(info.clone()), instance.tx.clone(), instance.rx.clone());
    // Every monitor runs again: the children were unwatched since the old
    // image stopped its first one (or, from an older image, since its exec).
    let since = if kept.unwatched_since_ns > 0 { kept.unwatched_since_ns } else { kept.exec_at_ns };
    let restored_ns = sys::unix_now_ns();
    let unwatched_ms = restored_ns.saturating_sub(since) as f64 / 1e6;
    let after_exec_ms = restored_ns.saturating_sub(kept.exec_at_ns) as f64 / 1e6;
    instance.serve()?;
    core.set_info(info.clone());
    match Config::from_specs(specs) {
        Ok(config) => core.reconfigure(config),
        Err(e) => instance.say(&format!("The new configuration is invalid, keeping the old one: {e}")),
    }
    instance.say(&format!(
        "Sentry reexec'd. Initially started at {} (Previously reexec'd at {previous}).",
        info.started_at
    ));
    if since > 0 {
        let adopted = match core.process_count() {
            1 => "1 child".to_string(),
            n => format!("{n} children"),
        };
        instance.say(&format!(
            "Handover took {unwatched_ms:.1} ms ({adopted} re-adopted; unwatched from the first monitor stopped to the last one running again, {after_exec_ms:.1} ms of it after execve)."
        ));
    }
    for w in warnings {
        instance.say(&format!("Warning: {w}"));
    }
    say_dropped(&instance, kept.console_dropped);
    if kept.pending_reload {
        instance.reloader.request(kept.pending_exec.clone());
    }
    instance.supervise(core)
}

/// The new image could not read its snapshot: keep the lock and listener
/// found among our fds, adopt the children that are ours and match an
/// entry, stop the others. Loud, but never fatal.
fn resume_without_snapshot(specs: &[Spec], paths: &Paths, why: &str) -> Result<(), Error> {
    let config = Config::from_specs(specs)?;
    let (lock_fd, listener_fd, mut pipes) = sort_out_inherited_fds(&paths.pidfile());
    let lock = match lock_fd {
        Some(fd) => PidLock::adopt(fd, paths.pidfile()),
        None => PidLock::acquire(&paths.pidfile())?,
    };
    let listener = match listener_fd {
        Some(fd) => Listener::from_fd(fd, &std::fs::read_to_string(paths.addr_file()).unwrap_or_default())
            .map_err(|e| Error::io("cannot take over the control socket", e))?,
        None => rebind(paths)?,
    };
    let token = std::fs::read_to_string(paths.token_file())
        .map(|t| t.trim().to_string())
        .or_else(|_| sys::random_hex(16))
        .map_err(|e| Error::io("cannot make a token", e))?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(&paths.name));
    // The build ids are lost with the snapshot: jump far ahead, so that the
    // waiting `reload` sees this outcome and later tickets stay unique.
    let id = u64::MAX / 2;
    let settle = max_stop_wait(&config);
    let instance = Instance::prepare(paths.clone(), exe, lock, token, listener, None, id + 1, settle)
        .and_then(Instance::begin)
        .map_err(|(e, _)| e)?;
    instance.say(&format!(
        "WARNING: Sentry reexec'd but could not read its handed-over state ({why}). \
         Adopting its children from /proc; output in flight may be lost."
    ));
    let now = sys::unix_now();
    let mut instance = instance;
    let (fence, lines) = containment(paths, Resume::Adopt);
    for line in lines {
        instance.say(&line);
    }
    instance.fence = fence;
    let error = format!("re-exec'd, but the handed-over state was unreadable ({why}); children adopted from /proc");
    let last_reload = Some(ReloadOutcome { at: now, ok: true, error: Some(error), id, duration_ms: None });
    let info =
        InfoSnapshot { started_at: now, reexec_count: 1, reexeced_at: Some(now), last_reload, reloads_failed: 0 };
    let mut core = Core::new(config, instance.options(info), instance.tx.clone(), instance.rx.clone());
    for line in core.adopt(our_children(&mut pipes)) {
        instance.say(&line);
    }
    // Pipes no child writes to any more (a draining monitor's, a helper's) are closed.
    drop(pipes);
    instance.supervise(core)
}

/// The canonical form of DIR (what names an instance), or DIR as given.
fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// Where an image's containment comes from.
enum Resume<'a> {
    /// A fresh start: a leftover tree of this DIR is emptied first (unless
    /// the ledger's pass `emptied` it already).
    Fresh { emptied: Option<&'a Path> },
    /// The tree a previous image handed over.
    Snapshot(&'a Path),
    /// A previous image's tree, without its snapshot: its children are adopted.
    Adopt,
}

/// How this instance fences its processes: its own cgroup tree where cgroup
/// v2 is writable — the one an earlier image made (`resume`), else a fresh
/// one — or process groups, with the reason. `SENTRY_CONTAINMENT=process-group`
/// asks for process groups.
/// Also returns what it found to say (a leftover tree it emptied).
fn containment(paths: &Paths, resume: Resume) -> (Fence, Vec<String>) {
    if let Some(why) = cgroup::refused_by_environment() {
        return (Fence::ProcessGroup(why), Vec::new());
    }
    let resumed = match resume {
        Resume::Snapshot(root) => cgroup::Tree::resume(root).ok(),
        Resume::Fresh { .. } | Resume::Adopt => None,
    };
    // A value that is not understood is said, not silently taken for "cgroup".
    let odd = std::env::var_os(cgroup::CONTAINMENT_VAR).filter(|v| v != "cgroup").map(|v| {
        format!(
            "Warning: {}={} is not understood (`process-group` or `cgroup`): cgroups are used where they can be.",
            cgroup::CONTAINMENT_VAR,
            v.to_string_lossy()
        )
    });
    let tree = match resumed {
        Some(tree) => Ok((tree, Vec::new())),
        // A reload never stops its own children: only a fresh start empties a leftover.
        None => cgroup::Tree::create(&paths.name, &canonical(&paths.dir), &|root| match resume {
            Resume::Fresh { emptied } => emptied == Some(root),
            Resume::Snapshot(_) | Resume::Adopt => true,
        }),
    };
    match tree {
        Ok((tree, lines)) => (Fence::Cgroup(std::sync::Arc::new(tree)), odd.into_iter().chain(lines).collect()),
        Err(why) => (Fence::ProcessGroup(why), odd.into_iter().collect()),
    }
}

/// Says that console lines were dropped when the console was closed for an exec.
fn say_dropped(instance: &Instance, dropped: u64) {
    if dropped > 0 {
        instance.say(&format!(
            "Warning: {dropped} console line(s) dropped before the exec: standard output is not being read."
        ));
    }
}

/// Binds the address recorded in `NAME.addr` again (or a new ephemeral port).
fn rebind(paths: &Paths) -> Result<Listener, Error> {
    let addr = std::fs::read_to_string(paths.addr_file()).map(|a| a.trim().to_string()).unwrap_or_default();
    let addr = if addr.is_empty() { "127.0.0.1:0".to_string() } else { addr };
    Listener::bind(&addr).map_err(|source| Error::Bind { addr, source })
}

/// Among the fds a previous image left open: the pidfile's and a listening
/// socket are kept, and every pipe, by inode (the children's output pipes,
/// matched to them by [`our_children`]); every other one is closed.
fn sort_out_inherited_fds(pidfile: &Path) -> (Option<OwnedFd>, Option<OwnedFd>, HashMap<u64, OwnedFd>) {
    let (mut lock, mut listener, mut pipes) = (None, None, HashMap::new());
    for (fd, target) in proc::own_fds().into_iter().filter(|(fd, _)| *fd > 2) {
        if handoff::set_cloexec(fd, true).is_err() {
            continue;
        }
        // SAFETY: the fd is open (just checked) and nobody in this fresh image owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if target == pidfile && lock.is_none() {
            lock = Some(owned);
        } else if target.to_string_lossy().starts_with("socket:") && listener.is_none() && is_listening(fd) {
            listener = Some(owned);
        } else if target.to_string_lossy().starts_with("pipe:") {
            if let Ok(kept) = KeptFd::of(&owned) {
                pipes.insert(kept.ino, owned);
            }
        }
    }
    (lock, listener, pipes)
}

/// The inode of the pipe `/proc/PID/fd/FD` is (`pipe:[INODE]`).
fn pipe_inode(pid: i32, fd: i32) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    target.to_str()?.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

fn is_listening(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid pointers to an int and its length.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, &mut value as *mut _ as *mut libc::c_void, &mut len)
    };
    r == 0 && value != 0
}

/// Our children as /proc shows them, each with the inherited pipes (taken
/// from `pipes`) its stdout and stderr write to: its monitor goes on reading
/// them, so it does not die of SIGPIPE at its next line.
fn our_children(pipes: &mut HashMap<u64, OwnedFd>) -> Vec<FoundChild> {
    let me = std::process::id() as i32;
    let mut reader = proc::StatReader::default();
    let mut found = Vec::new();
    for pid in proc::pids() {
        if reader.read(pid).map(|s| s.ppid) != Some(me) {
            continue;
        }
        let environ = proc::environ(pid);
        let var = |key: &str| environ.iter().find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string));
        found.push(FoundChild {
            pid,
            cmdline: proc::cmdline(pid),
            entry: var("SENTRY_ENTRY"),
            index: var("SENTRY_INDEX").and_then(|i| i.parse().ok()),
            pipes: [1, 2].iter().filter_map(|&fd| pipes.remove(&pipe_inode(pid, fd)?)).collect(),
        });
    }
    found
}

/// The process-wide pieces of a running instance.
struct Instance {
    paths: Paths,
    /// The binary first started (re-exec'd when nothing can be built).
    exe: PathBuf,
    lock: PidLock,
    token: String,
    console: Option<Console>,
    tx: Post,
    rx: Mailbox,
    http: Arc<Mutex<Http>>,
    reloader: Reloader,
    signals: Option<SignalThread>,
    /// The self-pipe while no thread reads it (during an exec attempt).
    idle_pipe: Option<SignalPipe>,
    /// The control socket until [`Instance::serve`] serves it.
    unserved: Option<Listener>,
    /// The longest a scale or restart may take to settle.
    settle: Duration,
    /// Dropped when a shutdown begins, which disconnects `shutdown`: from
    /// then on the HTTP interface answers 503 and waits for the core no more.
    closing: Arc<Mutex<Option<Sender<()>>>>,
    shutdown: Receiver<()>,
    /// How children are fenced (decided once the instance runs).
    fence: Fence,
}

impl Instance {
    /// Serves a [`prepare`](Instance::prepare)d instance at once. On
    /// failure the lock is given back so the caller can release it.
    fn begin(mut self) -> Result<Instance, (Error, PidLock)> {
        match self.serve() {
            Ok(()) => Ok(self),
            Err(e) => Err((e, self.lock)),
        }
    }

    /// Sets up console, reloader and core channel, keeping the listener
    /// for [`Instance::serve`]. On failure the lock is given back so the
    /// caller can release it.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        paths: Paths,
        exe: PathBuf,
        lock: PidLock,
        token: String,
        listener: Listener,
        pipe: Option<SignalPipe>,
        next_reload_id: u64,
        settle: Duration,
    ) -> Result<Instance, (Error, PidLock)> {
        crate::output::adopt_daemon_output(&paths.daemon_output());
        let console = Console::stdout();
        let (tx, rx) = match crate::core::channel() {
            Ok(pair) => pair,
            Err(e) => return Err((Error::io("cannot make the core's mailbox", e), lock)),
        };
        let http = Arc::new(Mutex::new(Http::default()));
        let (closing, shutdown) = bounded(1);
        let context = ReloadContext {
            name: paths.name.clone(),
            crate_dir: paths.crate_dir.clone(),
            exe: exe.clone(),
            core: tx.clone(),
            console: console.handle(),
            http: http.clone(),
        };
        let reloader = match Reloader::spawn(context, next_reload_id) {
            Ok(r) => r,
            Err(e) => return Err((Error::io("cannot start the reloader", e), lock)),
        };
        Ok(Instance {
            paths,
            exe,
            lock,
            token,
            console: Some(console),
            tx,
            rx,
            http,
            reloader,
            signals: None,
            idle_pipe: pipe,
            unserved: Some(listener),
            settle,
            closing: Arc::new(Mutex::new(Some(closing))),
            shutdown,
            fence: Fence::ProcessGroup("not decided yet".to_string()),
        })
    }

    /// Serves the control interface on the listener [`Instance::prepare`]
    /// kept and forwards the handled signals. On failure, the server and the
    /// console are stopped.
    fn serve(&mut self) -> Result<(), Error> {
        let Some(listener) = self.unserved.take() else { return Ok(()) };
        if let Err(e) = self.listen(listener).and_then(|()| self.forward_signals()) {
            if let Some(server) = self.http.lock().unwrap_or_else(|p| p.into_inner()).server.take() {
                server.stop();
            }
            if let Some(c) = self.console.take() {
                let _ = c.close();
            }
            return Err(e);
        }
        Ok(())
    }

    /// Where the control interface listens, as a user would reach it.
    fn control_url(&self) -> String {
        let http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        match http.server.as_ref().map(|s| s.addr().to_string()) {
            Some(unix) if unix.starts_with("unix:") => unix,
            Some(addr) => format!("http://{addr}/"),
            None => "(none)".to_string(),
        }
    }

    fn say(&self, text: &str) {
        if let Some(c) = &self.console {
            c.handle().say(text);
        }
    }

    fn options(&self, info: InfoSnapshot) -> CoreOptions {
        let console = self.console.as_ref().map(Console::handle).unwrap_or_default();
        CoreOptions {
            log_dir: Some(self.paths.log_dir()),
            console,
            info,
            ledger: Some(self.paths.ledger_file()),
            fence: self.fence.clone(),
            on_started: Some(crate::systemd::ready),
        }
    }

    /// Serves the control interface on `listener` and records its address.
    fn listen(&mut self, listener: Listener) -> Result<(), Error> {
        let reloader = self.reloader.clone();
        let routes = Routes {
            core: CoreHandle::new(self.tx.clone()),
            token: self.token.clone(),
            reload: Some(Arc::new(move |exec| reloader.request(exec))),
            settle: self.settle,
            shutdown: self.shutdown.clone(),
        };
        let server = ControlServer::start(listener, routes)?;
        let bound = format!("{}\n", server.addr());
        // An image after a reload serves the same listener: its address is
        // written already, and a full disk must not end the instance.
        let addr_file = self.paths.addr_file();
        if std::fs::read_to_string(&addr_file).ok().as_deref() != Some(bound.as_str()) {
            instance::write_replacing(&addr_file, &bound, 0o644)?;
        }
        self.http.lock().unwrap_or_else(|p| p.into_inner()).server = Some(server);
        Ok(())
    }

    fn forward_signals(&mut self) -> Result<(), Error> {
        let (tx, reloader, closing) = (self.tx.clone(), self.reloader.clone(), self.closing.clone());
        let thread = signals::forward(self.idle_pipe.take(), &HANDLED, move |signal| {
            if signal == Signal::SIGHUP {
                reloader.request(None);
            } else if signal == Signal::SIGUSR1 {
                // logrotate's postrotate: every log file opens its path again.
                crate::logfile::reopen_all();
                crate::output::reopen_daemon_output();
            } else {
                // The HTTP interface first: nothing new reaches the core, and
                // requests waiting for it get 503 at once.
                closing.lock().unwrap_or_else(|p| p.into_inner()).take();
                crate::systemd::stopping();
                let _ = tx.send(Command::Shutdown);
            }
        })
        .map_err(|e| Error::io("cannot install signal handlers", e))?;
        self.signals = Some(thread);
        Ok(())
    }

    /// Runs the core on this (the main) thread until shutdown, re-exec'ing
    /// whenever it suspends for a reload.
    fn supervise(mut self, mut core: Core) -> Result<(), Error> {
        loop {
            match core.run() {
                CoreExit::Shutdown => {
                    crate::systemd::stopping();
                    break;
                }
                CoreExit::Suspended(suspended) => {
                    let suspended = *suspended;
                    let (why, suspended, reload_id) = match self.reloader.take_plan() {
                        Some(plan) => {
                            let id = plan.reload_id;
                            let (why, suspended) = self.reexec(suspended, plan);
                            (why, suspended, id)
                        }
                        None => ("nothing to exec".to_string(), suspended, 0),
                    };
                    core = self.recover(suspended, &why, reload_id);
                }
            }
        }
        self.finish();
        Ok(())
    }

    /// Hands everything to `plan.binary` and execs it. Returns only if that
    /// could not happen, with the reason and the state to resume from.
    fn reexec(&mut self, suspended: Suspended, plan: ExecPlan) -> (String, Suspended) {
        signals::block(&HANDLED);
        self.idle_pipe = self.signals.take().map(SignalThread::stop);
        if self.rx.try_iter().any(|c| matches!(c, Command::Shutdown)) {
            let _ = self.tx.send(Command::Shutdown);
            return ("a shutdown was asked for".to_string(), suspended);
        }
        let listener = self.http.lock().unwrap_or_else(|p| p.into_inner()).listener.take();
        let (Some(listener), Some(pipe)) = (listener, self.idle_pipe.as_ref()) else {
            return ("the listener or the signal pipe is missing".to_string(), suspended);
        };
        let kept = (|| -> std::io::Result<InstanceSnapshot> {
            Ok(InstanceSnapshot {
                name: self.paths.name.clone(),
                dir: self.paths.dir.clone(),
                crate_dir: self.paths.crate_dir.clone(),
                exe: self.exe.clone(),
                token: self.token.clone(),
                pidfile: KeptFd::of(self.lock.file())?,
                listener: KeptFd::of(&listener)?,
                signal_pipe: (KeptFd::of(&pipe.0)?, KeptFd::of(&pipe.1)?),
                next_reload_id: self.reloader.next_id(),
                pending_reload: self.reloader.has_pending(),
                pending_exec: self.reloader.has_pending().then(|| self.reloader.pending_exec()).flatten(),
                reload_id: plan.reload_id,
                exec_at_ns: 0,
                unwatched_since_ns: suspended.unwatched_since_ns,
                daemon_output: crate::output::is_daemon_output(),
                console_dropped: 0,
                reload_note: plan.note.clone(),
                events: crate::events::Ring::default(),
                reload_started_ns: plan.started_ns,
            })
        })();
        let kept = match kept {
            Ok(k) => k,
            Err(e) => {
                self.http.lock().unwrap_or_else(|p| p.into_inner()).listener = Some(listener);
                return (format!("cannot describe the kept fds: {e}"), suspended);
            }
        };
        let fds: Vec<RawFd> = [kept.pidfile.fd, kept.listener.fd, kept.signal_pipe.0.fd, kept.signal_pipe.1.fd]
            .into_iter()
            .chain(suspended.fds.iter().map(|f| f.as_raw_fd()))
            .chain(suspended.snapshot.pidfds())
            .collect();
        let Suspended { snapshot, fds: owned, unwatched_since_ns, parked } = suspended;
        // Everything said so far must reach the console before the exec —
        // within a deadline: a stdout nobody reads must not block it. That
        // wait is before the exec, and counted so ("Handover took … of it
        // after execve").
        let console_dropped = self.console.take().map(Console::close_before_exec).unwrap_or(0) as u64;
        let exec_at_ns = sys::unix_now_ns();
        let events = crate::events::ring_snapshot();
        let kept = InstanceSnapshot { exec_at_ns, console_dropped, events, ..kept };
        let handoff = Handoff { version: HANDOFF_VERSION, instance: kept, core: snapshot };
        let memfd = if let Some(corrupt) = test_hooks::corrupt_handoff() {
            // Test hook: exercise the new image's fallback for an unreadable snapshot.
            corrupt
        } else {
            handoff::to_memfd(&handoff)
        };
        let error = match memfd {
            Err(e) => format!("cannot write the handoff: {e}"),
            Ok(memfd) => {
                for &fd in &fds {
                    let _ = handoff::set_cloexec(fd, false);
                }
                let error = if let Some(failed) = test_hooks::fail_exec() {
                    // Test hook: exercise the path of an execve that fails.
                    failed
                } else {
                    exec(&plan.binary, &self.paths, memfd.as_raw_fd())
                };
                for &fd in &fds {
                    let _ = handoff::set_cloexec(fd, true);
                }
                format!("cannot exec {}: {error}", plan.binary.display())
            }
        };
        self.console = Some(Console::stdout());
        say_dropped(self, console_dropped);
        self.http.lock().unwrap_or_else(|p| p.into_inner()).listener = Some(listener);
        (error, Suspended { snapshot: handoff.core, fds: owned, unwatched_since_ns, parked })
    }

    /// Resumes after a failed exec: the same core state, the old configuration.
    fn recover(&mut self, suspended: Suspended, why: &str, reload_id: u64) -> Core {
        // The snapshot refers to these fds by number; restore takes them back.
        for fd in suspended.fds {
            let _ = fd.into_raw_fd();
        }
        let named: std::collections::HashSet<RawFd> = suspended.snapshot.pidfds().into_iter().collect();
        for p in suspended.parked {
            if let Some(fd) = p.release().filter(|fd| named.contains(&fd.as_raw_fd())) {
                let _ = fd.into_raw_fd();
            }
        }
        let (mut core, warnings) =
            Core::restore(suspended.snapshot, self.options(InfoSnapshot::default()), self.tx.clone(), self.rx.clone());
        for w in warnings {
            self.say(&format!("Warning: {w}"));
        }
        self.say(&format!("Reload failed: {why}"));
        core.record_reload(ReloadOutcome {
            at: sys::unix_now(),
            ok: false,
            error: Some(why.to_string()),
            id: reload_id,
            duration_ms: None,
        });
        if let Err(e) = self.forward_signals() {
            self.say(&format!("Warning: {e}"));
        }
        let listener = self.http.lock().unwrap_or_else(|p| p.into_inner()).listener.take();
        if let Some(listener) = listener {
            if let Err(e) = self.listen(listener) {
                self.say(&format!("Warning: the control interface is down: {e}"));
            }
        }
        self.reloader.resume();
        core
    }

    /// After the core has stopped every child: remove the files, say bye.
    fn finish(mut self) {
        let mut http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        let listener = http.server.take().and_then(ControlServer::stop).or_else(|| http.listener.take());
        drop(http);
        // A unix socket's file goes with the instance (a TCP port has none).
        if let Some(l) = listener {
            l.remove_file();
        }
        let _ = std::fs::remove_file(self.paths.addr_file());
        let _ = std::fs::remove_file(self.paths.token_file());
        self.say("Bye.");
        if let Some(c) = self.console.take() {
            let _ = c.close();
        }
        self.lock.release();
    }
}

/// `execv(binary, [binary, start, --dir, DIR, (--crate, CRATE), --handoff-fd, FD])`;
/// returns only on failure.
fn exec(binary: &Path, paths: &Paths, memfd: RawFd) -> std::io::Error {
    let c = |s: &[u8]| CString::new(s).map_err(std::io::Error::other);
    let mut words: Vec<Vec<u8>> = vec![binary.as_os_str().as_bytes().to_vec(), b"start".to_vec(), b"--dir".to_vec()];
    words.push(paths.dir.as_os_str().as_bytes().to_vec());
    if let Some(crate_dir) = &paths.crate_dir {
        words.push(b"--crate".to_vec());
        words.push(crate_dir.as_os_str().as_bytes().to_vec());
    }
    words.push(b"--handoff-fd".to_vec());
    words.push(memfd.to_string().into_bytes());
    let argv: Result<Vec<CString>, _> = words.iter().map(|w| c(w)).collect();
    let argv = match argv {
        Ok(a) => a,
        Err(e) => return e,
    };
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated strings and a NULL-terminated array that outlive the call.
    unsafe { libc::execv(ptrs[0], ptrs.as_ptr()) };
    std::io::Error::last_os_error()
}

/// Hooks that make a reload fail on purpose, for the integration tests.
/// They exist only with the `test-hooks` feature: without it they are
/// compiled out, and the `SENTRY_TEST_*` variables are never read.
mod test_hooks {
    use std::os::fd::OwnedFd;

    /// `SENTRY_TEST_CORRUPT_HANDOFF`: a memfd that holds no snapshot.
    #[cfg(feature = "test-hooks")]
    pub(super) fn corrupt_handoff() -> Option<std::io::Result<OwnedFd>> {
        std::env::var_os("SENTRY_TEST_CORRUPT_HANDOFF").map(|_| super::corrupt_memfd())
    }

    /// `SENTRY_TEST_FAIL_EXEC`: the error an execve that fails would give.
    #[cfg(feature = "test-hooks")]
    pub(super) fn fail_exec() -> Option<std::io::Error> {
        std::env::var_os("SENTRY_TEST_FAIL_EXEC").map(|_| std::io::Error::from_raw_os_error(libc::ENOEXEC))
    }

    #[cfg(not(feature = "test-hooks"))]
    pub(super) fn corrupt_handoff() -> Option<std::io::Result<OwnedFd>> {
        None
    }

    #[cfg(not(feature = "test-hooks"))]
    pub(super) fn fail_exec() -> Option<std::io::Error> {
        None
    }

    #[cfg(all(test, not(feature = "test-hooks")))]
    #[test]
    fn without_the_feature_the_hooks_ignore_their_variables() {
        std::env::set_var("SENTRY_TEST_CORRUPT_HANDOFF", "1");
        std::env::set_var("SENTRY_TEST_FAIL_EXEC", "1");
        assert!(corrupt_handoff().is_none());
        assert!(fail_exec().is_none());
        std::env::remove_var("SENTRY_TEST_CORRUPT_HANDOFF");
        std::env::remove_var("SENTRY_TEST_FAIL_EXEC");
    }

    #[cfg(all(test, feature = "test-hooks"))]
    #[test]
    fn with_the_feature_the_hooks_read_their_variables() {
        std::env::set_var("SENTRY_TEST_FAIL_EXEC", "1");
        assert_eq!(fail_exec().and_then(|e| e.raw_os_error()), Some(libc::ENOEXEC));
        std::env::remove_var("SENTRY_TEST_FAIL_EXEC");
    }
}

#[cfg(feature = "test-hooks")]
fn corrupt_memfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = unsafe { libc::memfd_create(c"sentry-handoff".as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::unistd::write(&owned, b"{ this is not a snapshot").map_err(std::io::Error::from)?;
    nix::unistd::lseek(&owned, 0, nix::unistd::Whence::SeekSet).map_err(std::io::Error::from)?;
    Ok(owned)
}
