//! The state that crosses `execve` on a reload: plain, versioned serde data,
//! separate from the run-time types (the seed's TODO). Every field added
//! after version 1 must carry `#[serde(default)]`, so that a newer binary
//! reads an older snapshot. Instants become durations relative to the moment
//! of the snapshot; kept fds travel as numbers with their `(dev, ino)` so the
//! new image can verify them. Also: writing and reading the snapshot through
//! a memfd, and adopting a kept fd. Nothing here decides anything.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::Restart;
use crate::status::ReloadOutcome;

/// The snapshot format this binary writes; it reads this and every older one.
/// Version 2: rules travel as data ([`RuleSnapshot`]; version 1 had them as
/// text, still read), and the watches travel too ([`CoreSnapshot::watches`]).
/// A binary that reads only version 1 would drop the rules it cannot parse,
/// so the new binary's `check --handoff-version` must say 2 or more.
/// Version 3: cgroup containment (the instance's tree, each process's
/// cgroup) and watches' `.cgroup` filters and `treemem` rules; a binary
/// that reads only version 2 would drop the filter and let such a watch
/// match every process, so it is refused.
pub(crate) const HANDOFF_VERSION: u32 = 3;

/// Everything the new image needs to go on as if nothing happened.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Handoff {
    pub version: u32,
    pub instance: InstanceSnapshot,
    pub core: CoreSnapshot,
}

/// The CLI instance: files, listener, identity, reload bookkeeping.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InstanceSnapshot {
    pub name: String,
    #[serde(with = "os_path")]
    pub dir: PathBuf,
    #[serde(with = "os_path::option")]
    pub crate_dir: Option<PathBuf>,
    /// The binary Sentry was first started from (re-exec'd when there is no toolchain).
    #[serde(with = "os_path")]
    pub exe: PathBuf,
    pub token: String,
    pub pidfile: KeptFd,
    pub listener: KeptFd,
    /// The self-pipe of the signal handlers (read end, write end): signals
    /// that arrive during the exec window wait in it.
    pub signal_pipe: (KeptFd, KeptFd),
    /// The id the next build will get.
    pub next_reload_id: u64,
    /// A reload was asked for while the previous one was being exec'd.
    pub pending_reload: bool,
    /// What that reload asks for: `reload --exec PATH`'s PATH (none: a rebuild).
    #[serde(default, with = "os_path::option")]
    pub pending_exec: Option<PathBuf>,
    /// The build that produced the new image.
    pub reload_id: u64,
    /// When the old image called execve (Unix nanoseconds).
    #[serde(default)]
    pub exec_at_ns: u64,
    /// When the old image told its first monitor to stop (Unix
    /// nanoseconds; 0 from an image before this field): the new image
    /// reports how long the children were unwatched, up to its last
    /// monitor running again.
    #[serde(default)]
    pub unwatched_since_ns: u64,
    /// The old image wrote to `DIR/NAME.out` as a daemon (`start
    /// --daemon`): the new one rotates and reopens it too, even when
    /// logrotate has moved the file its standard output still is.
    #[serde(default)]
    pub daemon_output: bool,
    /// Console lines the old image dropped because standard output would
    /// not take them before the exec (the new image says so).
    #[serde(default)]
    pub console_dropped: u64,
    /// What the new image reports with the outcome when the binary was
    /// re-exec'd without being rebuilt.
    #[serde(default)]
    pub reload_note: Option<String>,
    /// The latest events and the next sequence number (`GET /events`'s
    /// numbers go on increasing); empty from an older image.
    #[serde(default)]
    pub events: crate::events::Ring,
    /// When the build of this reload started (Unix ns; 0: unknown).
    #[serde(default)]
    pub reload_started_ns: u64,
}

/// The supervision core's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct CoreSnapshot {
    pub info: InfoSnapshot,
    pub entries: Vec<EntrySnapshot>,
    /// Monitors of children already reaped whose pipes were still open.
    pub draining: Vec<DrainingSnapshot>,
    /// Written by images before process groups were pinned by their unreaped
    /// leader; read and ignored (such a group number may have been reused).
    #[serde(default)]
    pub leftovers: Vec<LeftoverSnapshot>,
    /// Rate-limit clocks and counters of rules.
    #[serde(default)]
    pub watch: WatchMemory,
    /// Running `exec` action programs.
    #[serde(default)]
    pub helpers: Vec<HelperSnapshot>,
    /// The watches of the configuration that ran (version 2; a version 1
    /// snapshot has none, and the new configuration brings them back).
    #[serde(default)]
    pub watches: Vec<WatchConfigSnapshot>,
    /// The instance's cgroup directory, under cgroup containment (older
    /// images: none, and the new image decides afresh).
    #[serde(default)]
    pub cgroup: Option<std::path::PathBuf>,
    /// The notify socket, if one was open.
    #[serde(default)]
    pub notify: Option<NotifySnapshot>,
}

/// A watch's configuration as data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WatchConfigSnapshot {
    pub name: String,
    /// The regex, as written.
    pub pattern: String,
    pub children: bool,
    pub every_ms: u64,
    pub rules: Vec<RuleSnapshot>,
    /// The `.cgroup(regex)` filter, as written (absent before it existed).
    #[serde(default)]
    pub cgroup: Option<String>,
}

/// A rule as data: `when trigger holds, do action`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RuleSnapshot {
    pub trigger: TriggerSnapshot,
    pub action: ActionSnapshot,
}

/// `measured OP value`: bytes for rmem and vmem, percent of one core for cpu.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TriggerSnapshot {
    pub quantity: QuantitySnapshot,
    pub op: OpSnapshot,
    pub value: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum QuantitySnapshot {
    Rmem,
    Vmem,
    Cpu,
    Treemem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OpSnapshot {
    #[serde(rename = ">")]
    Greater,
    #[serde(rename = ">=")]
    GreaterOrEqual,
    #[serde(rename = "<")]
    Less,
    #[serde(rename = "<=")]
    LessOrEqual,
}

/// What a rule does; durations in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum ActionSnapshot {
    Term,
    Kill,
    Stop {
        every_ms: u64,
    },
    Restart,
    /// Each word is a list of pieces: literal text or a variable.
    Exec {
        every_ms: Option<u64>,
        words: Vec<Vec<PieceSnapshot>>,
    },
}

/// A piece of an `exec` word.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PieceSnapshot {
    Text(String),
    /// `NAME`, `PID`, `RMEM`, `VMEM` or `CMDLINE`.
    Var(VarSnapshot),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum VarSnapshot {
    Name,
    Pid,
    Rmem,
    Vmem,
    Cmdline,
}

/// A rule as a version 2 snapshot has it (data), or as version 1 had it:
/// `[trigger, action]` as text, parsed again when read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum RuleForm {
    /// Version 1 (read only).
    Text(String, String),
    Data(RuleSnapshot),
}

/// The watcher's memory: when each (rule, process) last fired, and counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct WatchMemory {
    pub clocks: Vec<ClockSnapshot>,
    /// (rule key, times fired).
    pub fired: Vec<(String, u64)>,
    /// (rule key, firings skipped by the helper caps).
    #[serde(default)]
    pub skipped: Vec<(String, u64)>,
}

/// The rate-limit clock of one rule for one process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ClockSnapshot {
    /// `owner: trigger => action`.
    pub rule: String,
    pub pid: i32,
    pub starttime: u64,
    /// Unix milliseconds.
    pub last_fired_ms: Option<u64>,
    pub holding: bool,
}

/// A running `exec` action program.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HelperSnapshot {
    pub target: String,
    /// The key of the rule that ran it (its place under the helper caps).
    #[serde(default)]
    pub rule: String,
    pub pid: i32,
    pub starttime: u64,
    pub kill_in_ms: u64,
    pub streams: Vec<StreamSnapshot>,
    /// A child found in /proc that matched no slot, being stopped.
    #[serde(default)]
    pub stray: bool,
    /// SIGKILL was sent already.
    #[serde(default)]
    pub killed: bool,
    /// Its cgroup directory, under cgroup containment.
    #[serde(default)]
    pub cgroup: Option<std::path::PathBuf>,
    /// It was slot `stuck`'s process, whose cgroup outlived SIGKILL while
    /// the slot went on (not a helper: `target` is its entry).
    #[serde(default)]
    pub stuck: Option<usize>,
    /// Its pidfd, kept open across the exec (see [`ProcessSnapshot::pidfd`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfd: Option<KeptFd>,
    /// Its exit, told before the exec (see [`ProcessSnapshot::exited`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited: Option<ExitedSnapshot>,
    /// See [`ProcessSnapshot::exit_shown`].
    #[serde(default)]
    pub exit_shown: bool,
}

/// What `status` reports about the instance's history.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct InfoSnapshot {
    pub started_at: u64,
    pub reexec_count: u64,
    pub reexeced_at: Option<u64>,
    pub last_reload: Option<ReloadOutcome>,
    #[serde(default)]
    pub reloads_failed: u64,
}

/// One entry: its (old) configuration and run-time state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EntrySnapshot {
    pub config: EntryConfigSnapshot,
    pub target: usize,
    pub restarts: u64,
    #[serde(default)]
    pub restarts_requested: u64,
    pub removed: bool,
    pub slots: Vec<SlotSnapshot>,
    /// The last exit of each slot.
    #[serde(default)]
    pub last_exits: Vec<ExitSnapshot>,
    /// How long ago each recent non-success exit was (ms), for `flapping`.
    #[serde(default)]
    pub failures_ms_ago: Vec<u64>,
}

/// How a slot's last process ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct ExitSnapshot {
    pub index: usize,
    /// Unix seconds.
    pub at: u64,
    pub exit: crate::lifecycle::ChildExit,
}

/// An entry's configuration as data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EntryConfigSnapshot {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub delay_ms: u64,
    pub count: usize,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stop_signal: i32,
    pub stop_timeout_ms: u64,
    pub restart: Restart,
    pub user: Option<String>,
    pub group: Option<String>,
    pub children: bool,
    /// Data since version 2; text in version 1.
    pub rules: Vec<RuleForm>,
    /// Bytes; older images did not record it.
    #[serde(default = "default_line_limit")]
    pub line_limit: usize,
    /// Bytes; older images did not rotate.
    #[serde(default = "default_log_size")]
    pub log_size: u64,
    #[serde(default = "default_log_keep")]
    pub log_keep: usize,
    /// Health, order and limits (absent before them).
    #[serde(default)]
    pub ready: Option<ProbeSnapshot>,
    #[serde(default)]
    pub alive: Option<ProbeSnapshot>,
    #[serde(default)]
    pub watchdog_ms: Option<u64>,
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub binds_to: Vec<String>,
    /// (exits, within ms).
    #[serde(default)]
    pub give_up: Option<(u32, u64)>,
    /// None: the default, `[0]`.
    #[serde(default)]
    pub success_codes: Option<Vec<i32>>,
    #[serde(default)]
    pub stop_codes: Vec<i32>,
}

/// A probe as data. A function cannot cross an exec: it is recorded as
/// [`ProbeCheckSnapshot::Func`] and comes back as a probe that passes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ProbeSnapshot {
    pub check: ProbeCheckSnapshot,
    pub initial_delay_ms: u64,
    pub period_ms: u64,
    pub timeout_ms: u64,
    pub failures: u32,
    pub successes: u32,
}

/// What a probe does, as data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ProbeCheckSnapshot {
    Exec { command: String, args: Vec<String> },
    Tcp { addr: String },
    Http { url: String },
    Notify,
    Func,
}

/// The socket children send `sd_notify` messages to (kept open across the
/// exec, so a message sent meanwhile waits in it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NotifySnapshot {
    pub fd: KeptFd,
    /// `NOTIFY_SOCKET`'s value, as the children have it.
    pub name: String,
}

fn default_log_size() -> u64 {
    crate::logfile::LOG_SIZE
}

fn default_log_keep() -> usize {
    crate::logfile::LOG_KEEP
}

fn default_line_limit() -> usize {
    crate::spec::LINE_LIMIT
}

/// One slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SlotSnapshot {
    pub index: usize,
    pub crashes: u32,
    pub started_at: u64,
    pub phase: PhaseSnapshot,
    /// The running process's output pipes.
    pub streams: Vec<StreamSnapshot>,
    /// The last spawn error, if the last attempt failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Its process's cgroup directory, under cgroup containment.
    #[serde(default)]
    pub cgroup: Option<std::path::PathBuf>,
    /// Whether its process passed its readiness probe (none: not known).
    #[serde(default)]
    pub ready: Option<bool>,
    /// How long ago its recent exits were (for `.give_up`).
    #[serde(default)]
    pub exits_ms_ago: Vec<u64>,
}

/// A slot's phase, with instants as durations from the snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum PhaseSnapshot {
    Idle,
    Pending {
        due_in_ms: u64,
    },
    Running {
        process: ProcessSnapshot,
    },
    /// `exited_ms_ago`: the leader exited on its own that long ago and its
    /// group is being stopped; the restart policy applies once it is gone.
    Stopping {
        process: ProcessSnapshot,
        kill_in_ms: u64,
        respawn: bool,
        #[serde(default)]
        exited_ms_ago: Option<u64>,
        /// A restart by a rule or a liveness probe, with the crash count to start again with.
        #[serde(default)]
        recover: Option<u32>,
    },
    Killing {
        process: ProcessSnapshot,
        respawn: bool,
        #[serde(default)]
        exited_ms_ago: Option<u64>,
        #[serde(default)]
        give_up_in_ms: u64,
        #[serde(default)]
        recover: Option<u32>,
    },
    Unkillable {
        process: ProcessSnapshot,
        respawn: bool,
        exited_ms_ago: Option<u64>,
        #[serde(default)]
        recover: Option<u32>,
    },
    /// Given up on (`.give_up`).
    Failed,
}

impl PhaseSnapshot {
    /// The slot's process, if it has one.
    pub fn process(&self) -> Option<&ProcessSnapshot> {
        match self {
            PhaseSnapshot::Idle | PhaseSnapshot::Pending { .. } | PhaseSnapshot::Failed => None,
            PhaseSnapshot::Running { process }
            | PhaseSnapshot::Stopping { process, .. }
            | PhaseSnapshot::Killing { process, .. }
            | PhaseSnapshot::Unkillable { process, .. } => Some(process),
        }
    }
}

impl CoreSnapshot {
    /// The numbers of the children's pidfds it names: kept open across the exec.
    pub fn pidfds(&self) -> Vec<RawFd> {
        let slots = self.entries.iter().flat_map(|e| &e.slots).filter_map(|s| s.phase.process()?.pidfd);
        slots.chain(self.helpers.iter().filter_map(|h| h.pidfd)).map(|k| k.fd).collect()
    }
}

/// A child process, identified by (pid, starttime).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ProcessSnapshot {
    pub pid: i32,
    /// `/proc/PID/stat` starttime (clock ticks after boot).
    pub starttime: u64,
    pub up_ms: u64,
    /// Its pidfd, kept open across the exec: the new image watches the
    /// same process without looking it up again (absent before 2026-12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfd: Option<KeptFd>,
    /// Its exit, when it was told before the exec but its process group
    /// was not gone yet (absent before 2026-12-07: told again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited: Option<ExitedSnapshot>,
    /// Its monitor had shown its exit on the console before the core told
    /// it: the next image's monitor does not show it again.
    #[serde(default)]
    pub exit_shown: bool,
}

/// An exit the core had told (recorded as an event) before the exec, and
/// how far its monitor had got with it: the next image neither tells it
/// again nor loses its console or log line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ExitedSnapshot {
    pub exit: crate::lifecycle::ChildExit,
    /// Unix seconds of the exit.
    pub at: u64,
    pub ago_ms: u64,
    /// Its group outlived it, and that was said.
    pub lingering: bool,
    /// The line told (`Exited at …`, `Cannot start …`).
    pub text: String,
    /// Whether the console had shown it.
    pub shown: bool,
    /// Whether the log had it.
    pub logged: bool,
}

/// One output pipe and the bytes read from it that are not yet a line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StreamSnapshot {
    pub fd: KeptFd,
    /// Bytes read and not written (whole lines included, when the log could not take them).
    pub pending: Vec<u8>,
    /// The rest of a log line a short write cut, written before anything else.
    #[serde(default)]
    pub unfinished: Vec<u8>,
}

/// A monitor of a reaped child whose pipes are still open.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DrainingSnapshot {
    pub entry: String,
    pub pid: i32,
    pub streams: Vec<StreamSnapshot>,
    /// Its exit line, if the console had not shown it or the log did not
    /// have it yet (absent before 2026-12-07).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited: Option<ExitedSnapshot>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct LeftoverSnapshot {
    pub pgid: i32,
    pub kill_in_ms: u64,
}

/// An fd kept open across exec, with what it must still be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeptFd {
    pub fd: RawFd,
    pub dev: u64,
    pub ino: u64,
}

impl KeptFd {
    /// Describes `fd` for the other side.
    pub fn of(fd: &impl AsRawFd) -> io::Result<KeptFd> {
        let st = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) })
            .map_err(io::Error::from)?;
        Ok(KeptFd { fd: fd.as_raw_fd(), dev: st.st_dev, ino: st.st_ino })
    }

    /// Takes ownership of the fd if it still is what was recorded, and
    /// makes it close-on-exec again (already done if [`cloexec_all`] was).
    /// `None` leaves the number open and not owned.
    pub fn adopt(self) -> Option<OwnedFd> {
        // SAFETY: only fstat and fcntl on a number; ownership is taken only
        // once the (dev, ino) pair proves it is the recorded file.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        let st = nix::sys::stat::fstat(borrowed).ok()?;
        if (st.st_dev, st.st_ino) != (self.dev, self.ino) {
            return None;
        }
        if !ALL_CLOEXEC.load(std::sync::atomic::Ordering::Relaxed) {
            set_cloexec(self.fd, true).ok()?;
        }
        // SAFETY: verified above; the previous image handed it to us.
        Some(unsafe { OwnedFd::from_raw_fd(self.fd) })
    }
}

/// Whether [`cloexec_all`] made every fd above 2 close-on-exec.
static ALL_CLOEXEC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every fd above 2 close-on-exec in one system call
/// (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`, Linux 5.11, close_range(2)):
/// what a new image does first, so that what the old one handed over —
/// three fds per child at a reload — need not be flagged one `fcntl` at a
/// time by [`KeptFd::adopt`], and whatever else came across the exec (fds
/// Sentry itself inherited) is not handed to the next one. Where the kernel
/// refuses it, each adopted fd is flagged by itself.
pub(crate) fn cloexec_all() {
    // SAFETY: a plain system call on the fd table; it only sets flags.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    ALL_CLOEXEC.store(r == 0, std::sync::atomic::Ordering::Relaxed);
}

/// Sets or clears `FD_CLOEXEC`, in one `fcntl`: it is the only fd flag
/// (fcntl(2)), so there is nothing else to keep. A reload flips it on
/// every kept fd twice, three per child.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: fcntl on an fd number; failure is reported.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A path of any bytes, in JSON: a string when it is UTF-8 (as every
/// version wrote it), else its bytes as an array of numbers; both are read.
mod os_path {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Bytes(Vec<u8>),
    }

    fn form(path: &Path) -> Form {
        match path.to_str() {
            Some(text) => Form::Text(text.to_string()),
            None => Form::Bytes(path.as_os_str().as_bytes().to_vec()),
        }
    }

    fn path(form: Form) -> PathBuf {
        match form {
            Form::Text(text) => PathBuf::from(text),
            Form::Bytes(bytes) => PathBuf::from(OsString::from_vec(bytes)),
        }
    }

    pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        form(p).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Form::deserialize(d).map(path)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
            p.as_deref().map(form).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
            Option::<Form>::deserialize(d).map(|f| f.map(path))
        }
    }
}

/// Writes `handoff` into a new memfd that survives exec (no CLOEXEC).
pub(crate) fn to_memfd(handoff: &Handoff) -> io::Result<OwnedFd> {
    let json = serde_json::to_vec(handoff).map_err(io::Error::other)?;
    // SAFETY: a plain syscall with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"sentry-handoff".as_ptr(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(&json)?;
    file.rewind()?;
    Ok(file.into())
}

/// Reads and closes the memfd `fd`. Any failure means an unreadable snapshot.
pub(crate) fn from_memfd(fd: RawFd) -> Result<Handoff, String> {
    // SAFETY: the previous image passed this fd number for us to consume;
    // fstat first so that a bad number is reported, not adopted blindly.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let size = nix::sys::stat::fstat(borrowed).map_err(|e| format!("handoff fd {fd}: {e}"))?.st_size;
    let mut file = unsafe { File::from_raw_fd(fd) };
    // Its size known, the bytes are read in one go, not into a buffer
    // doubled (and copied) a dozen times.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1));
    file.read_to_end(&mut bytes).map_err(|e| format!("cannot read the handoff: {e}"))?;
    // Straight into its types, in one pass: no intermediate JSON tree, and
    // the version is looked for alone only when that fails (each pass over
    // the ~0.5 MB of 1 000 children costs milliseconds of the reload's
    // unwatched window). A version this binary does not read is refused
    // whether or not its snapshot happened to parse.
    #[derive(Deserialize)]
    struct Probe {
        version: Option<u64>,
    }
    let readable = |version: u64| {
        if version > HANDOFF_VERSION as u64 || version == 0 {
            return Err(format!("handoff version {version} is not one this binary reads (1..={HANDOFF_VERSION})"));
        }
        Ok(())
    };
    match serde_json::from_slice::<Handoff>(&bytes) {
        Ok(handoff) => readable(handoff.version as u64).map(|()| handoff),
        Err(e) => {
            let probe: Probe = serde_json::from_slice(&bytes).map_err(|e| format!("the handoff is not JSON: {e}"))?;
            readable(probe.version.ok_or("the handoff has no version")?)?;
            Err(format!("the handoff does not parse: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handoff {
        let fd = KeptFd { fd: 3, dev: 1, ino: 2 };
        Handoff {
            version: HANDOFF_VERSION,
            instance: InstanceSnapshot {
                name: "x".into(),
                dir: "/d".into(),
                crate_dir: None,
                exe: "/e".into(),
                token: "t".into(),
                pidfile: fd,
                listener: fd,
                signal_pipe: (fd, fd),
                next_reload_id: 4,
                pending_reload: false,
                pending_exec: None,
                reload_id: 3,
                exec_at_ns: 0,
                unwatched_since_ns: 0,
                daemon_output: false,
                console_dropped: 0,
                reload_note: None,
                events: crate::events::Ring::default(),
                reload_started_ns: 0,
            },
            core: CoreSnapshot {
                entries: vec![EntrySnapshot {
                    config: EntryConfigSnapshot {
                        name: "e".into(),
                        command: "sleep".into(),
                        args: vec!["1".into()],
                        delay_ms: 0,
                        count: 1,
                        env: vec![],
                        cwd: None,
                        stop_signal: 15,
                        stop_timeout_ms: 10_000,
                        restart: Restart::Always,
                        user: None,
                        group: None,
                        children: false,
                        rules: vec![],
                        line_limit: 4096,
                        log_size: 1 << 20,
                        log_keep: 2,
                        ready: Some(ProbeSnapshot {
                            check: ProbeCheckSnapshot::Tcp { addr: "127.0.0.1:1".into() },
                            initial_delay_ms: 0,
                            period_ms: 1000,
                            timeout_ms: 1000,
                            failures: 3,
                            successes: 1,
                        }),
                        alive: None,
                        watchdog_ms: None,
                        after: vec!["d".into()],
                        binds_to: vec![],
                        give_up: Some((3, 60_000)),
                        success_codes: Some(vec![0, 143]),
                        stop_codes: vec![125],
                    },
                    target: 2,
                    restarts: 1,
                    restarts_requested: 0,
                    removed: false,
                    slots: vec![SlotSnapshot {
                        index: 0,
                        crashes: 0,
                        started_at: 5,
                        phase: PhaseSnapshot::Running {
                            process: ProcessSnapshot {
                                pid: 9,
                                starttime: 7,
                                up_ms: 8,
                                pidfd: None,
                                exited: None,
                                exit_shown: false,
                            },
                        },
                        streams: vec![StreamSnapshot { fd, pending: vec![0xe2, 0x82], unfinished: b"t\n".to_vec() }],
                        error: None,
                        cgroup: Some("/sys/fs/cgroup/sentry.t.0/e/0".into()),
                        ready: Some(true),
                        exits_ms_ago: vec![5, 10],
                    }],
                    last_exits: vec![],
                    failures_ms_ago: vec![],
                }],
                ..CoreSnapshot::default()
            },
        }
    }

    #[test]
    fn a_snapshot_round_trips_through_a_memfd() {
        let fd = to_memfd(&sample()).unwrap();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        let back = from_memfd(raw).unwrap();
        assert_eq!(back.core.entries[0].target, 2);
        assert_eq!(back.core.entries[0].slots[0].streams[0].pending, vec![0xe2, 0x82]);
        assert_eq!(back.instance.next_reload_id, 4);
        assert_eq!(back.core.entries[0].slots[0].ready, Some(true));
        assert_eq!(back.core.entries[0].config.after, vec!["d".to_string()]);
        assert_eq!(back.core.entries[0].config.give_up, Some((3, 60_000)));
    }

    #[test]
    fn paths_of_any_bytes_cross_and_text_paths_stay_strings() {
        use std::os::unix::ffi::OsStringExt;
        let odd = PathBuf::from(std::ffi::OsString::from_vec(b"/tmp/caf\xe9\xff".to_vec()));
        let mut h = sample();
        h.instance.dir = odd.clone();
        h.instance.crate_dir = Some(odd.clone());
        h.instance.reload_note = Some("not rebuilt".into());
        let raw = std::os::fd::IntoRawFd::into_raw_fd(to_memfd(&h).unwrap());
        let back = from_memfd(raw).unwrap();
        assert_eq!((back.instance.dir, back.instance.crate_dir), (odd.clone(), Some(odd)));
        assert_eq!(back.instance.reload_note.as_deref(), Some("not rebuilt"));
        // UTF-8 paths are written as strings, as older images write and read them.
        let json = serde_json::to_value(&sample().instance).unwrap();
        assert_eq!((json["dir"].as_str(), json["exe"].as_str()), (Some("/d"), Some("/e")));
        assert!(json["crate_dir"].is_null());
    }

    #[test]
    fn unreadable_or_future_snapshots_are_refused() {
        let mut h = sample();
        h.version = HANDOFF_VERSION + 1;
        let raw = std::os::fd::IntoRawFd::into_raw_fd(to_memfd(&h).unwrap());
        assert!(from_memfd(raw).unwrap_err().contains("not one this binary reads"));
        assert!(from_memfd(9999).is_err());
        // Whatever the rest is: the version decides first, then the shape.
        let memfd = |bytes: &[u8]| {
            // SAFETY: a plain syscall with a NUL-terminated name.
            let fd = unsafe { libc::memfd_create(c"t".as_ptr(), 0) };
            // SAFETY: fresh fd owned by nobody else.
            let mut file = unsafe { File::from_raw_fd(fd) };
            file.write_all(bytes).unwrap();
            file.rewind().unwrap();
            std::os::fd::IntoRawFd::into_raw_fd(file)
        };
        let future = format!(r#"{{"version":{},"instance":1,"core":[]}}"#, HANDOFF_VERSION + 1);
        assert!(from_memfd(memfd(future.as_bytes())).unwrap_err().contains("not one this binary reads"));
        let zero = serde_json::to_vec(&Handoff { version: 0, ..sample() }).unwrap();
        assert!(from_memfd(memfd(&zero)).unwrap_err().contains("not one this binary reads"));
        let current = format!(r#"{{"version":{HANDOFF_VERSION},"instance":1,"core":[]}}"#);
        assert!(from_memfd(memfd(current.as_bytes())).unwrap_err().contains("does not parse"));
        assert!(from_memfd(memfd(br#"{"instance":1}"#)).unwrap_err().contains("has no version"));
        assert!(from_memfd(memfd(b"\x00 not json")).unwrap_err().contains("is not JSON"));
    }

    #[test]
    fn a_kept_fd_is_adopted_only_if_it_is_the_same_file() {
        let file = tempfile_in_tmp();
        let kept = KeptFd::of(&file).unwrap();
        let wrong = KeptFd { ino: kept.ino + 1, ..kept };
        assert!(wrong.adopt().is_none());
        set_cloexec(kept.fd, false).unwrap();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(file);
        let owned = KeptFd { fd: raw, ..kept }.adopt().expect("same file");
        let flags = unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "CLOEXEC set again");
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!("sentry-handoff-test-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
