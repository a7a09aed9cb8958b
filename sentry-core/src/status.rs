//! The state a supervisor reports: [`Status`], the exact shape of
//! `GET /status`, returned by [`crate::Supervisor::status`] and printed by
//! `NAME status`. Plain serde data: it knows nothing of how it was gathered.

use serde::{Deserialize, Serialize};

/// The whole state of a supervisor. Times are Unix seconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub pid: u32,
    pub started_at: u64,
    pub reexec_count: u64,
    pub reexeced_at: Option<u64>,
    pub last_reload: Option<ReloadOutcome>,
    /// Reloads that failed (a build, a check or an exec); those that
    /// worked are `reexec_count`.
    #[serde(default)]
    pub reloads_failed: u64,
    pub entries: Vec<EntryStatus>,
    /// What a slot's process tree is fenced by.
    #[serde(default)]
    pub containment: Containment,
    pub watches: Vec<WatchStatus>,
}

/// How the processes of a slot are held together: `kind` is `"cgroup"` or
/// `"process-group"`; `reason` says why, when it is not a cgroup; `cgroup`
/// is the instance's cgroup directory when it is.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Containment {
    pub kind: String,
    pub reason: Option<String>,
    #[serde(default)]
    pub cgroup: Option<String>,
}

/// What one cgroup (a slot's process tree), or the sum of an entry's,
/// holds and has used.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeStatus {
    /// Live processes in the tree.
    pub processes: usize,
    /// CPU time the tree used (`cpu.stat` `usage_usec`), microseconds.
    pub cpu_usec: u64,
    /// Memory of the tree in bytes: `memory.current` where the memory
    /// controller is enabled, else the summed PSS of its processes.
    pub memory_bytes: u64,
    /// Whether `memory_bytes` is `memory.current` (not summed PSS).
    pub memory_current: bool,
}

/// Processes of a slot that outlived SIGKILL in their cgroup (uninterruptible
/// sleep) while the slot went on in a fresh one; reported until they are gone.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnkillableStatus {
    pub index: usize,
    /// The slot's process that was (its zombie waits, unreaped).
    pub pid: u32,
    pub cgroup: String,
    /// How many processes are still in that cgroup.
    pub processes: usize,
}

/// How the last reload ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReloadOutcome {
    pub at: u64,
    pub ok: bool,
    pub error: Option<String>,
    /// The build's number; `reload` waits for the one its request got.
    #[serde(default)]
    pub id: u64,
    /// From the request's build starting to the outcome (the new image
    /// running, or the failure), ms; `null` where not measured.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// One entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EntryStatus {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub delay_ms: u64,
    /// How long a stop waits before SIGKILL (ms); `stop` waits accordingly.
    #[serde(default)]
    pub stop_timeout_ms: u64,
    /// The current target, run-time override included.
    pub count: usize,
    /// What the configuration says.
    pub configured_count: usize,
    /// Every restart: after an exit, on request, by a rule.
    pub restarts: u64,
    /// Of `restarts`, those that were asked for (a restart request, a
    /// rule, a changed configuration) rather than after an exit.
    #[serde(default)]
    pub restarts_requested: u64,
    pub state: EntryState,
    /// At least 5 non-success exits within the last minute.
    #[serde(default)]
    pub flapping: bool,
    pub processes: Vec<ProcessStatus>,
    /// The last exit of each slot that has had one, by slot index.
    #[serde(default)]
    pub last_exits: Vec<ExitStatus>,
    /// Every slot, by index.
    #[serde(default)]
    pub slots: Vec<SlotStatus>,
    pub rules: Vec<RuleStatus>,
    /// The sum of the slots' trees; `null` without cgroup containment.
    #[serde(default)]
    pub tree: Option<TreeStatus>,
    /// Trees that outlived SIGKILL while their slots went on.
    #[serde(default)]
    pub unkillable: Vec<UnkillableStatus>,
    /// The entries it starts after (`.after`, `.binds_to`).
    #[serde(default)]
    pub after: Vec<String>,
    /// Of those, the ones not ready yet (while its state is `waiting`).
    #[serde(default)]
    pub waiting_for: Vec<String>,
}

/// Non-success exits within a minute that make an entry `flapping`.
pub const FLAPPING_EXITS: usize = 5;

/// How a slot's last process ended: `code` for an exit status, `signal`
/// (the number) for a killing signal; both `null` when unknown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExitStatus {
    pub index: usize,
    /// Unix seconds.
    pub at: u64,
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// One slot of an entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SlotStatus {
    pub index: usize,
    pub state: SlotState,
    /// The slot's process while it has one (running, stopping, unkillable).
    pub pid: Option<u32>,
    /// Readiness; `null` without a readiness probe.
    pub ready: Option<bool>,
    /// Why the last attempt to start a process failed, if it did.
    pub error: Option<String>,
    /// The cgroup of its process, as `/proc/PID/cgroup` shows it; `null`
    /// without one.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// What that cgroup holds and has used; `null` without one.
    #[serde(default)]
    pub tree: Option<TreeStatus>,
}

/// Where a slot is in its life.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Its process runs.
    Running,
    /// A process is due (first start, or a restart after the delay).
    Pending,
    /// A process is due after a crash loop's back-off.
    Backoff,
    /// Its process (or what is left of its process group) is being stopped.
    Stopping,
    /// Its process group outlived SIGKILL (uninterruptible sleep); still waited for.
    Unkillable,
    /// Given up on (after `.give_up`).
    Failed,
    /// No process and none due (the restart policy said no).
    Idle,
}

/// A summary of an entry's slots.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Processes are running or starting, none backed off.
    Running,
    /// At least one slot waits after a crash loop.
    Backoff,
    /// No process runs and none is due.
    Stopped,
    /// Its starts wait for the entries it comes `.after` to be ready.
    Waiting,
    /// A slot was given up on (`.give_up`).
    Failed,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Running => "running",
            EntryState::Backoff => "backoff",
            EntryState::Stopped => "stopped",
            EntryState::Waiting => "waiting",
            EntryState::Failed => "failed",
        }
    }
}

/// One running process of an entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessStatus {
    pub pid: u32,
    pub index: usize,
    pub started_at: u64,
    pub rss_bytes: Option<u64>,
}

/// One rule and how often its action ran.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RuleStatus {
    pub trigger: String,
    pub action: String,
    pub fired: u64,
    /// Times it was due but its `exec` helper was not run (the helper caps).
    #[serde(default)]
    pub skipped: u64,
}

/// One watch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WatchStatus {
    pub name: String,
    pub pattern: String,
    pub children: bool,
    pub matched: Vec<MatchedProcess>,
    pub rules: Vec<RuleStatus>,
}

/// A process a watch matches now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MatchedProcess {
    pub pid: u32,
    pub rss_bytes: u64,
    pub vmem_bytes: u64,
}
