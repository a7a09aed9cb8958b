//! Health probes: what `.ready(probe)` and `.alive(probe)` are given
//! ([`exec`], [`tcp`], [`http`], [`notify`], [`func`] and the knobs of
//! [`Probe`]), how one check runs under its timeout (`check`), how
//! consecutive results become a state (`Tally`, pure), and the thread that
//! probes one process on schedule (`Prober`). It reports to whoever
//! started it through a callback and knows nothing of slots, the core or
//! HTTP serving. `notify()` probes are not run here: the child reports on
//! the notify socket (`notify` module).
//!
//! The knobs and their defaults follow Kubernetes' probes (`initialDelaySeconds`
//! 0, `timeoutSeconds` 1, `failureThreshold` 3, `successThreshold` 1), with a
//! period of 1 s instead of 10 s: a readiness probe gates the start of the
//! entries that come `.after` it, and a 10 s period would delay them by as much.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::spec::IntoArgs;

/// How long a check may take by default.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// How often a process is probed by default.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Consecutive failures that make a passing probe fail, by default.
pub const FAILURES: u32 = 3;
/// Consecutive successes that make a failing probe pass, by default.
pub const SUCCESSES: u32 = 1;

/// A health check of an entry's processes, given to `.ready(…)` or
/// `.alive(…)`. Made by [`exec`], [`tcp`], [`http`], [`notify`] or
/// [`func`]; its schedule is set with the builder methods, whose values are
/// checked with the rest of the configuration.
///
/// ```
/// use sentry_core::prelude::*;
/// let web = entry("web", "python3", ["-m", "http.server", "8000"], 500, 1)
///     .ready(probe::http("http://127.0.0.1:8000/").period(Duration::from_millis(200)))
///     .alive(probe::tcp("127.0.0.1:8000").failures(5));
/// assert!(web.is_entry());
/// ```
#[derive(Clone)]
pub struct Probe {
    pub(crate) check: Check,
    pub(crate) initial_delay: Duration,
    pub(crate) period: Duration,
    pub(crate) timeout: Duration,
    pub(crate) failures: u32,
    pub(crate) successes: u32,
}

/// What a probe does.
#[derive(Clone)]
pub(crate) enum Check {
    /// Runs `command args…`; exit status 0 passes.
    Exec { command: String, args: Vec<String> },
    /// Connects to `HOST:PORT`.
    Tcp(String),
    /// `GET` of a plain-HTTP URL; a 2xx status passes.
    Http(String),
    /// The child says `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// Calls the function on a thread of its own.
    Func(Arc<dyn Fn() -> bool + Send + Sync + 'static>),
    /// A function probe of a configuration that came across an exec as
    /// data (a function cannot): it cannot be run, and counts as passing.
    Lost,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl PartialEq for Probe {
    /// Two probes are equal when they do the same thing on the same
    /// schedule; two function probes are taken to be equal (a function
    /// cannot be compared), so a reload does not count them as a change.
    fn eq(&self, other: &Probe) -> bool {
        self.describe() == other.describe()
    }
}

/// Runs `command args…` (not through a shell) as the entry's processes
/// run: in its working directory, as its `.user`/`.group`, with the
/// environment they get plus `SENTRY_PID` (the probed process); exit status
/// 0 passes. Under cgroup containment it runs in a cgroup inside the probed
/// process's own (so it is counted, stopped and cleaned up with it), and
/// whatever it leaves behind is killed after each check (`cgroup.kill`);
/// elsewhere in a process group of its own, killed after each check.
pub fn exec(command: &str, args: impl IntoArgs) -> Probe {
    Probe::new(Check::Exec { command: command.to_string(), args: args.into_args() })
}

/// Connects to `addr`, `"HOST:PORT"`; a connection accepted within the
/// timeout passes.
pub fn tcp(addr: &str) -> Probe {
    Probe::new(Check::Tcp(addr.to_string()))
}

/// `GET url` over plain HTTP/1.1 (`http://HOST[:PORT][/PATH]`); a status
/// from 200 to 299 within the timeout passes. HTTPS is not spoken: probe a
/// plain-HTTP health endpoint, or use [`exec`] with `curl`.
pub fn http(url: &str) -> Probe {
    Probe::new(Check::Http(url.to_string()))
}

/// systemd's readiness protocol (`sd_notify(3)`): the child gets
/// `NOTIFY_SOCKET` and is ready once it (or, under cgroup containment, any
/// process of its cgroup) sends `READY=1`; `RELOADING=1` makes it not ready
/// until the next `READY=1`. For readiness only (`.ready`); keep-alives
/// (`WATCHDOG=1`) are asked for with `.watchdog(D)`. The schedule knobs do
/// not apply.
pub fn notify() -> Probe {
    Probe::new(Check::Notify)
}

/// Calls `f`; `true` passes. Each probe has a thread of its own that runs
/// the calls one at a time. A panic, or a call that has not returned by the
/// timeout, is a failure; a call still running at the next check is not
/// called again (that check fails), so a hung function holds at most one
/// thread, and it is reported.
///
/// ```
/// use sentry_core::prelude::*;
/// let q = entry("queue", "sleep", ["1000"], 0, 1)
///     .alive(probe::func(|| std::path::Path::new("/tmp").exists()).timeout(Duration::from_millis(500)));
/// assert!(q.is_entry());
/// ```
pub fn func(f: impl Fn() -> bool + Send + Sync + 'static) -> Probe {
    Probe::new(Check::Func(Arc::new(f)))
}

impl Probe {
    fn new(check: Check) -> Probe {
        Probe {
            check,
            initial_delay: Duration::ZERO,
            period: PERIOD,
            timeout: TIMEOUT,
            failures: FAILURES,
            successes: SUCCESSES,
        }
    }

    /// How long after the process starts the first check runs (default 0).
    pub fn initial_delay(mut self, delay: Duration) -> Probe {
        self.initial_delay = delay;
        self
    }

    /// The time from one check's start to the next's (default 1 s; at least 10 ms).
    pub fn period(mut self, period: Duration) -> Probe {
        self.period = period;
        self
    }

    /// How long one check may take (default 1 s; at least 1 ms, at most the period).
    pub fn timeout(mut self, timeout: Duration) -> Probe {
        self.timeout = timeout;
        self
    }

    /// Consecutive failures after which a passing probe fails (default 3; at least 1).
    pub fn failures(mut self, n: u32) -> Probe {
        self.failures = n;
        self
    }

    /// Consecutive successes after which a failing probe passes (default 1; at least 1).
    pub fn successes(mut self, n: u32) -> Probe {
        self.successes = n;
        self
    }

    /// What the probe does, in words (`check` and `explain` print it).
    pub(crate) fn what(&self) -> String {
        match &self.check {
            Check::Exec { command, args } => {
                format!(
                    "exec {}",
                    std::iter::once(command).chain(args).map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" ")
                )
            }
            Check::Tcp(addr) => format!("tcp {addr}"),
            Check::Http(url) => format!("http {url}"),
            Check::Notify => "notify (READY=1 on NOTIFY_SOCKET)".to_string(),
            Check::Func(_) => "func".to_string(),
            Check::Lost => "func (not carried across the exec: counts as passing)".to_string(),
        }
    }

    /// The probe and its schedule, in words.
    pub(crate) fn describe(&self) -> String {
        if matches!(self.check, Check::Notify) {
            return self.what();
        }
        let delay =
            if self.initial_delay.is_zero() { String::new() } else { format!(" from {:?}", self.initial_delay) };
        format!(
            "{}, every {:?}{delay}, timeout {:?}, {} failure(s) / {} success(es)",
            self.what(),
            self.period,
            self.timeout,
            self.failures,
            self.successes
        )
    }

    /// Whether the child reports itself (`notify`) rather than being probed.
    pub(crate) fn is_notify(&self) -> bool {
        matches!(self.check, Check::Notify)
    }

    /// What is wrong with the probe's values, if anything (for validation).
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.is_notify() {
            return problems;
        }
        let too_long = |d: Duration| d > crate::budget::MAX_DURATION;
        if self.period < Duration::from_millis(10) || too_long(self.period) {
            problems.push(format!(".period({:?}) must be from 10ms to 7 days", self.period));
        }
        if self.timeout < Duration::from_millis(1) || self.timeout > self.period {
            problems.push(format!(".timeout({:?}) must be from 1ms to the period ({:?})", self.timeout, self.period));
        }
        if too_long(self.initial_delay) {
            problems.push(format!(".initial_delay({:?}) is longer than 7 days", self.initial_delay));
        }
        if self.failures == 0 || self.successes == 0 {
            problems.push(".failures() and .successes() must be at least 1".to_string());
        }
        match &self.check {
            Check::Exec { command, .. } if command.is_empty() || command.contains('\0') => {
                problems.push(format!("exec probe: bad command {command:?}"));
            }
            Check::Tcp(addr) => {
                if let Err(e) = host_port(addr) {
                    problems.push(format!("tcp probe {addr:?}: {e}"));
                }
            }
            Check::Http(url) => {
                if let Err(e) = HttpTarget::parse(url) {
                    problems.push(format!("http probe {url:?}: {e}"));
                }
            }
            _ => {}
        }
        problems
    }
}

/// `HOST:PORT` split, the port checked (`[v6]:port` too).
fn host_port(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) = addr.rsplit_once(':').ok_or("expected HOST:PORT")?;
    let port = port.parse::<u16>().map_err(|_| format!("bad port {port:?}"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    Ok((host, port))
}

/// Where an HTTP probe connects, and what it asks for.
#[derive(Debug, PartialEq, Eq)]
struct HttpTarget {
    /// `HOST:PORT` to connect to.
    addr: String,
    /// The `Host` header's value.
    host: String,
    path: String,
}

impl HttpTarget {
    fn parse(url: &str) -> Result<HttpTarget, String> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err("https is not spoken: probe a plain-HTTP endpoint, or use probe::exec with curl".into())
            }
            _ => return Err("expected http://HOST[:PORT][/PATH]".to_string()),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
        if authority.is_empty() || authority.contains('@') {
            return Err("expected http://HOST[:PORT][/PATH]".to_string());
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) || authority.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("spaces or control characters in the URL".to_string());
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let addr = if has_port { authority.to_string() } else { format!("{authority}:80") };
        host_port(&addr)?;
        Ok(HttpTarget { addr, host: authority.to_string(), path })
    }
}

/// What a probe of a process needs to know about it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Context {
    /// The probed process, and its entry's name.
    pub pid: i32,
    pub entry: String,
    /// What an exec probe runs with: the entry's environment additions,
    /// working directory, `.user` and `.group` (looked up by the probe's
    /// own thread, off the core's, see [`Context::as_entry`]).
    pub env: Vec<(String, String)>,
    pub cwd: Option<std::path::PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// The probed process's cgroup, under cgroup containment: an exec
    /// probe runs in a cgroup below it (`sentry-probe`), emptied with
    /// `cgroup.kill` after each check.
    pub cgroup: Option<std::path::PathBuf>,
}

impl Context {
    /// Who an exec probe runs as, and the environment that goes with it
    /// (`HOME`, `USER`, `LOGNAME` for a `.user`): looked up once per prober.
    pub fn as_entry(&self) -> RunAs {
        let (credentials, login) = crate::child::credentials_for(self.user.as_deref(), self.group.as_deref())
            .map_err(|e| format!("cannot run as the entry's user: {e}"))?;
        let mut env: Vec<(OsString, OsString)> = self.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        env.extend(crate::child::login_env(&self.env, login));
        Ok((credentials, env))
    }
}

/// One check: `Ok` if it passed, else why not; `who`, what an exec probe
/// runs as ([`Context::as_entry`], looked up once per prober). Takes at
/// most about the probe's timeout (a function probe's call is abandoned then).
pub(crate) fn check(probe: &Probe, ctx: &Context, worker: Option<&Arc<FuncWorker>>, who: &RunAs) -> Result<(), String> {
    let deadline = Instant::now() + probe.timeout;
    match &probe.check {
        Check::Exec { command, args } => {
            let (credentials, env) = who.as_ref().map_err(String::clone)?;
            run_exec(command, args, ctx, credentials.as_ref(), env, deadline)
        }
        Check::Tcp(addr) => connect(addr, deadline).map(drop),
        Check::Http(url) => get(url, deadline),
        Check::Func(_) => match worker {
            Some(w) => w.call(probe.timeout),
            None => Err("no thread to call it on".to_string()),
        },
        Check::Notify | Check::Lost => Ok(()),
    }
}

fn left(deadline: Instant) -> Result<Duration, String> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err("timed out".to_string())
    } else {
        Ok(d)
    }
}

fn connect(addr: &str, deadline: Instant) -> Result<TcpStream, String> {
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(|e| format!("cannot resolve {addr}: {e}"))?.collect();
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, left(deadline)?) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
                return Err(format!("connect to {a}: timed out"))
            }
            Err(e) => last = format!("connect to {a}: {e}"),
        }
    }
    Err(last)
}

fn get(url: &str, deadline: Instant) -> Result<(), String> {
    let target = HttpTarget::parse(url)?;
    let mut s = connect(&target.addr, deadline)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sentry-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path, target.host
    );
    s.set_write_timeout(Some(left(deadline)?)).map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes()).map_err(|e| format!("send: {}", timed_out(e)))?;
    // The status line is all that is read (at most 1 KiB).
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        s.set_read_timeout(Some(left(deadline)?)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("no answer: {}", timed_out(e))),
        }
    }
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default()).trim_end().to_string();
    let mut words = line.split(' ');
    let code = match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    };
    match code {
        Some(200..=299) => Ok(()),
        Some(_) => Err(format!("answered {line:?}")),
        None if line.is_empty() => Err("closed without an answer".to_string()),
        None => Err(format!("not an HTTP answer: {:?}", line.chars().take(80).collect::<String>())),
    }
}

fn timed_out(e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => e.to_string(),
    }
}

/// Who an exec probe runs as, and its environment additions (or why not).
pub(crate) type RunAs = Result<(Option<crate::spawn::Credentials>, Vec<(OsString, OsString)>), String>;

fn run_exec(
    command: &str,
    args: &[String],
    ctx: &Context,
    credentials: Option<&crate::spawn::Credentials>,
    env: &[(OsString, OsString)],
    deadline: Instant,
) -> Result<(), String> {
    // The environment a child of the entry gets (Sentry's own variables
    // left out), plus the probed process's PID.
    let mut own = env.to_vec();
    own.push(("SENTRY_ENTRY".into(), ctx.entry.clone().into()));
    own.push(("SENTRY_PID".into(), ctx.pid.to_string().into()));
    // Its cgroup, made and opened before the fork: the child only writes
    // to an open fd before its exec.
    let cgroup = match &ctx.cgroup {
        Some(leaf) => Some(ProbeCgroup::open(leaf).map_err(|e| format!("cannot make its cgroup: {e}"))?),
        None => None,
    };
    let place = cgroup.as_ref().map(|c| c.procs.as_raw_fd());
    let credentials = credentials.cloned();
    let mut cmd = Command::new(command);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_clear()
        .envs(crate::child::environment(&own))
        .process_group(0);
    if let Some(cwd) = &ctx.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: only async-signal-safe system calls between fork and exec
    // (prctl, write, setgroups, setgid, setuid), on memory allocated before
    // the fork. The probe dies with its thread (this one), so a Sentry that
    // is SIGKILLed leaves no probe process behind (what it started is in
    // the probed process's cgroup, emptied by the next start).
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(fd) = place {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(c) = &credentials {
                if let Some(groups) = &c.groups {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::setgid(c.gid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(uid) = c.uid {
                    if libc::setuid(uid) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn().map_err(|e| format!("cannot run {command:?}: {e}"));
    let result = spawned.and_then(|child| wait_exec(child, command, deadline));
    if let Some(c) = cgroup {
        c.empty();
    }
    result
}

/// The cgroup an exec probe runs in: `sentry-probe` inside the probed
/// process's cgroup, its `cgroup.procs` open for the child to join.
struct ProbeCgroup {
    dir: std::path::PathBuf,
    procs: std::fs::File,
}

impl ProbeCgroup {
    fn open(leaf: &std::path::Path) -> io::Result<ProbeCgroup> {
        let dir = leaf.join("sentry-probe");
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let procs = std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
        Ok(ProbeCgroup { dir, procs })
    }

    /// Kills whatever the check left in it, and removes it once empty
    /// (left for the next check, or the probed process's end, otherwise).
    fn empty(self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..20 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Waits for an exec probe's process until `deadline`, then kills it.
fn wait_exec(mut child: std::process::Child, command: &str, deadline: Instant) -> Result<(), String> {
    use crate::lifecycle::ChildExit;
    use nix::sys::signal::Signal::SIGKILL;
    let pid = child.id() as i32;
    // Waited on through a pidfd, so the timeout needs no polling.
    let pidfd = crate::sys::pidfd_open(pid).ok();
    loop {
        // Looked at without reaping: while the exited leader is a zombie,
        // its PID and group number are still its own, so the group can be
        // signalled (whatever it left there goes too) without any risk of
        // hitting a stranger that got the number.
        if let Some(exit) = crate::sys::peek_exit(pid) {
            crate::sys::signal_group(pid, SIGKILL);
            let _ = child.wait();
            return match exit {
                ChildExit::Code(0) => Ok(()),
                ChildExit::Code(code) => Err(format!("{command:?} exited with {code}")),
                ChildExit::Signal(_) | ChildExit::Unknown => Err(format!("{command:?} was killed by a signal")),
            };
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            crate::sys::signal_group(pid, SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{command:?} did not finish within the timeout"));
        }
        match &pidfd {
            Some(fd) => {
                let mut fds = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
                let _ = crate::sys::poll(&mut fds, wait.as_millis().clamp(1, i32::MAX as u128) as i32);
            }
            None => std::thread::sleep(wait.min(Duration::from_millis(10))),
        }
    }
}

/// The thread a function probe's calls run on, one call at a time. One per
/// probe of an entry, shared by the probers of all its processes: a hung
/// call holds this one thread and no other.
pub(crate) struct FuncWorker {
    /// A call, with where its answer goes (dropped by a caller that gave
    /// up: a late answer goes nowhere).
    go: Sender<Sender<Result<(), String>>>,
    /// The turn to call: one token, taken by a caller and given back by
    /// the thread when the call returns — so callers take turns, and a
    /// call that never returns keeps it.
    turn: Receiver<()>,
    /// A hung call was reported already.
    reported: Mutex<bool>,
}

impl FuncWorker {
    /// A thread for `f`, named after `what`.
    pub fn start(f: Arc<dyn Fn() -> bool + Send + Sync + 'static>, what: &str) -> io::Result<FuncWorker> {
        quiet_probe_panics();
        let (go, calls) = bounded::<Sender<Result<(), String>>>(1);
        let (give_back, turn) = bounded::<()>(1);
        let _ = give_back.send(());
        let what_owned = what.to_string();
        std::thread::Builder::new().name(format!("sentry-probe-fn {what}")).spawn(move || {
            let mut told = false;
            for reply in calls.iter() {
                let result = match std::panic::catch_unwind(AssertUnwindSafe(|| f())) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("returned false".to_string()),
                    Err(panic) => {
                        let text = panic_text(&panic);
                        // Said once (the hook keeps every panic off stderr).
                        if !std::mem::replace(&mut told, true) {
                            log::warn!(
                                "the {what_owned} probe function panicked: {text} (each call counts as a failure)"
                            );
                        }
                        Err(format!("panicked: {text}"))
                    }
                };
                let _ = reply.try_send(result);
                let _ = give_back.send(());
            }
        })?;
        Ok(FuncWorker { go, turn, reported: Mutex::new(false) })
    }

    /// One call, once the call of another process's probe (if one runs)
    /// has returned, waited for at most `timeout` each. Never starts a
    /// second call while one is running.
    fn call(&self, timeout: Duration) -> Result<(), String> {
        if self.turn.recv_timeout(timeout).is_err() {
            return Err(format!("an earlier call has not returned within {timeout:?}; not called again"));
        }
        let (reply, answer) = bounded(1);
        if self.go.send(reply).is_err() {
            return Err("its thread is gone".to_string());
        }
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => {
                let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
                if !*reported {
                    *reported = true;
                    log::warn!("a probe function did not return within {timeout:?}: its call is abandoned and not repeated while it runs");
                }
                Err(format!("did not return within {timeout:?}"))
            }
        }
    }
}

/// Keeps a probe function's panics off standard error: they are failures,
/// said once per probe. Panics elsewhere go to the hook there was before.
fn quiet_probe_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let probe = std::thread::current().name().is_some_and(|n| n.starts_with("sentry-probe-fn"));
            if !probe {
                previous(info);
            }
        }));
    });
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Consecutive results of a probe, and the state they add up to. Pure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    pub passing: bool,
    streak: u32,
}

impl Tally {
    /// A readiness tally starts failing (not ready until a check passes); a
    /// liveness one passing.
    pub fn new(passing: bool) -> Tally {
        Tally { passing, streak: 0 }
    }

    /// Adds a result; returns the new state when it changes: after
    /// `successes` passes in a row for a failing probe, `failures` failures
    /// in a row for a passing one.
    pub fn record(&mut self, ok: bool, successes: u32, failures: u32) -> Option<bool> {
        if ok == self.passing {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { successes } else { failures };
        if self.streak >= needed.max(1) {
            self.passing = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// Which of an entry's probes a note is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Which {
    Ready,
    Alive,
}

impl Which {
    pub fn as_str(self) -> &'static str {
        match self {
            Which::Ready => "readiness",
            Which::Alive => "liveness",
        }
    }
}

/// A change of a probe's state, for the process it probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProbeNote {
    /// The process-table row of the probed process, and its PID.
    pub gen: u64,
    pub pid: i32,
    pub which: Which,
    pub passing: bool,
    /// The last check's failure, when it failed.
    pub why: Option<String>,
}

/// The thread that probes one process with its entry's readiness and
/// liveness probes (those that are not `notify`), on their schedules, and
/// reports each change of state. Stopped by [`Prober::stop`] or by being
/// dropped; it ends within about a timeout (an exec probe is killed, a
/// function call abandoned).
pub(crate) struct Prober {
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Starts probing row `gen`'s process; `ready_passing`: the readiness
    /// state it starts from (a process adopted across a reload keeps its
    /// own). A function probe calls through `workers` (its entry's, by
    /// [`Which`]).
    pub fn start(
        gen: u64,
        ready: Option<Probe>,
        alive: Option<Probe>,
        ready_passing: bool,
        ctx: Context,
        workers: [Option<Arc<FuncWorker>>; 2],
        report: impl Fn(ProbeNote) + Send + 'static,
    ) -> io::Result<Prober> {
        let mut probes = Vec::new();
        let start = Instant::now();
        let [ready_worker, alive_worker] = workers;
        for (which, probe, passing, worker) in
            [(Which::Ready, ready, ready_passing, ready_worker), (Which::Alive, alive, true, alive_worker)]
        {
            let Some(probe) = probe.filter(|p| !p.is_notify()) else { continue };
            let due = start + probe.initial_delay;
            probes.push(Scheduled { which, probe, worker, due, tally: Tally::new(passing) });
        }
        let (stop, stopped) = bounded::<()>(1);
        let thread = std::thread::Builder::new().name("sentry-probe".into()).spawn(move || {
            let mut probes = probes;
            // Looked up here, once, not on the core's thread at each start.
            let who = if probes.iter().any(|p| matches!(p.probe.check, Check::Exec { .. })) {
                ctx.as_entry()
            } else {
                Ok((None, Vec::new()))
            };
            loop {
                let Some(next) = probes.iter().map(|p| p.due).min() else { return };
                match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let now = Instant::now();
                for p in probes.iter_mut().filter(|p| p.due <= now) {
                    p.due = crate::budget::later(p.due, p.probe.period).max(now);
                    let result = check(&p.probe, &ctx, p.worker.as_ref(), &who);
                    // Stopped meanwhile (the sender is dropped): nothing more is said.
                    if !matches!(stopped.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
                        return;
                    }
                    let (successes, failures) = (p.probe.successes, p.probe.failures);
                    if let Some(passing) = p.tally.record(result.is_ok(), successes, failures) {
                        report(ProbeNote { gen, pid: ctx.pid, which: p.which, passing, why: result.err() });
                    }
                }
            }
        })?;
        Ok(Prober { stop: Some(stop), thread: Some(thread) })
    }

    /// Asks the thread to end; it is joined by [`Prober::reap`] once done.
    pub fn stop(&mut self) {
        self.stop.take();
    }

    /// Joins the thread if it has ended (after [`Prober::stop`]); returns
    /// whether it has.
    pub fn reap(&mut self) -> bool {
        match &self.thread {
            Some(t) if t.is_finished() => {
                let _ = self.thread.take().map(|t| t.join());
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Stops the thread and waits for it at most `bound`; past it, the
    /// thread is left to end on its own.
    pub fn stop_and_join(mut self, bound: Duration) {
        self.stop();
        let until = Instant::now() + bound;
        while !self.reap() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

struct Scheduled {
    which: Which,
    probe: Probe,
    worker: Option<Arc<FuncWorker>>,
    due: Instant,
    tally: Tally,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn tally_table() {
        // (starting state, results, successes, failures, changes seen)
        type Row<'a> = (bool, &'a [bool], u32, u32, &'a [Option<bool>]);
        let table: &[Row] = &[
            (false, &[true], 1, 3, &[Some(true)]),
            (false, &[true, false, true, true], 2, 3, &[None, None, None, Some(true)]),
            (true, &[false, false, true, false, false, false], 1, 3, &[None, None, None, None, None, Some(false)]),
            (true, &[false], 1, 1, &[Some(false)]),
            (true, &[true, true], 1, 3, &[None, None]),
        ];
        for (start, results, successes, failures, changes) in table {
            let mut t = Tally::new(*start);
            let seen: Vec<_> = results.iter().map(|ok| t.record(*ok, *successes, *failures)).collect();
            assert_eq!(&seen, changes, "{start} {results:?}");
        }
    }

    #[test]
    fn http_targets() {
        let t = HttpTarget::parse("http://127.0.0.1:8080/health?x=1").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "127.0.0.1:8080", "/health?x=1")
        );
        let t = HttpTarget::parse("http://localhost").unwrap();
        assert_eq!((t.addr.as_str(), t.path.as_str()), ("localhost:80", "/"));
        let t = HttpTarget::parse("http://[::1]:9/x").unwrap();
        assert_eq!(t.addr, "[::1]:9");
        for bad in ["https://x/", "ftp://x", "x:80", "http://", "http://a b/", "http://h:99999/", "http://u@h/"] {
            assert!(HttpTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probe_values_are_checked() {
        assert!(tcp("127.0.0.1:80").problems().is_empty());
        assert!(!tcp("127.0.0.1").problems().is_empty());
        assert!(!tcp("127.0.0.1:80").period(Duration::from_millis(1)).problems().is_empty());
        assert!(!tcp("127.0.0.1:80").timeout(Duration::from_secs(5)).problems().is_empty());
        assert!(!exec("true", []).failures(0).problems().is_empty());
        assert!(notify().period(Duration::ZERO).problems().is_empty(), "knobs do not apply to notify");
    }

    #[test]
    fn a_function_that_hangs_is_called_once_and_reported_as_failing() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (release, hold) = bounded::<()>(0);
        let c = calls.clone();
        let w = FuncWorker::start(
            Arc::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
                let _ = hold.recv();
                true
            }),
            "test",
        )
        .unwrap();
        assert!(w.call(Duration::from_millis(50)).unwrap_err().contains("did not return"));
        assert!(w.call(Duration::from_millis(50)).unwrap_err().contains("not called again"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        release.send(()).unwrap();
        drop(release);
        // Free again once it returned: the next call runs (and ends at once: `hold` is closed).
        assert_eq!(w.call(Duration::from_secs(10)), Ok(()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn callers_take_turns_and_a_slow_healthy_function_never_fails() {
        use std::sync::atomic::AtomicU32;
        // Three processes' probes call one 30 ms function at the same moments.
        let running = Arc::new(AtomicU32::new(0));
        let r = running.clone();
        let w = Arc::new(
            FuncWorker::start(
                Arc::new(move || {
                    assert_eq!(r.fetch_add(1, Ordering::SeqCst), 0, "two calls at once");
                    std::thread::sleep(Duration::from_millis(30));
                    r.fetch_sub(1, Ordering::SeqCst);
                    true
                }),
                "test",
            )
            .unwrap(),
        );
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || (0..5).map(|_| w.call(Duration::from_millis(500))).collect::<Vec<_>>())
            })
            .collect();
        for c in callers {
            assert!(c.join().unwrap().iter().all(|r| r.is_ok()));
        }
    }

    #[test]
    fn a_function_that_panics_fails_and_the_next_call_runs() {
        let w = FuncWorker::start(Arc::new(|| panic!("boom")), "test").unwrap();
        let e = w.call(Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("panicked: boom"), "{e}");
        assert!(w.call(Duration::from_secs(10)).unwrap_err().contains("boom"));
    }

    #[test]
    fn exec_tcp_and_http_checks_against_real_things() {
        let ctx = Context::default();
        let who = ctx.as_entry();
        assert_eq!(check(&exec("true", []), &ctx, None, &who), Ok(()));
        assert!(check(&exec("false", []), &ctx, None, &who).unwrap_err().contains("exited with 1"));
        // At the timeout the probe is killed, with what it started in its group.
        let pidfile = std::env::temp_dir().join(format!("sentry-probe-pid-{}", std::process::id()));
        let script = format!("sleep 5 & echo $! > {}; wait", pidfile.display());
        let slow = exec("sh", ["-c", script.as_str()]).timeout(Duration::from_millis(300));
        assert!(check(&slow, &ctx, None, &who).unwrap_err().contains("timeout"));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let _ = std::fs::remove_file(&pidfile);
        let gone = || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone(), "the probe's own child {pid} outlived its timeout");
        // A listener that accepts but never answers: tcp passes, http times out.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert_eq!(check(&tcp(&addr), &ctx, None, &who), Ok(()));
        let hung = http(&format!("http://{addr}/")).timeout(Duration::from_millis(100));
        assert!(check(&hung, &ctx, None, &who).unwrap_err().contains("timed out"));
        // One that answers 200, then one that answers 503.
        for (status, ok) in [("200 OK", true), ("503 Service Unavailable", false)] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap().to_string();
            let server = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
            });
            assert_eq!(check(&http(&format!("http://{addr}/h")), &ctx, None, &who).is_ok(), ok);
            server.join().unwrap();
        }
        drop(l);
    }
}
