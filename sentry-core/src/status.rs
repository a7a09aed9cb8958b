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
    pub entries: Vec<EntryStatus>,
    pub watches: Vec<WatchStatus>,
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
}

/// One entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EntryStatus {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub delay_ms: u64,
    /// The current target, run-time override included.
    pub count: usize,
    /// What the configuration says.
    pub configured_count: usize,
    pub restarts: u64,
    pub state: EntryState,
    pub processes: Vec<ProcessStatus>,
    pub rules: Vec<RuleStatus>,
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
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Running => "running",
            EntryState::Backoff => "backoff",
            EntryState::Stopped => "stopped",
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
