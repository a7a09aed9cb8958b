//! The supervision core: one loop that owns every entry's slots, reads
//! [`Command`]s from a channel, feeds events through
//! [`lifecycle::step`](crate::lifecycle::step) and performs the effects —
//! spawning, signalling, reaping. It is the only place that forks children
//! and the only place that reaps them. It runs on whatever thread calls
//! [`Core::run`]: the main thread in CLI mode, a background thread when
//! embedded. It can *suspend* — stop its monitors and return its whole state
//! as a [`CoreSnapshot`] — be rebuilt from one with [`Core::restore`], and
//! apply a new configuration as a difference with [`Core::reconfigure`]. It
//! knows nothing of HTTP, the command line, pidfiles or re-exec; those talk
//! to it through [`Command`] and read [`Status`].
//!
//! Every process the core started is a row of one *process table*
//! ([`Proc`], keyed by a generation number that is never reused): slot
//! children, `exec` helpers, strays being stopped, pipes still draining. A
//! row's leader is reaped only once its process group has no live member, so
//! while a row exists its PID and group number cannot belong to anyone else:
//! signalling the group is always safe, and a note from a monitor names its
//! row by generation, never by a PID that may have been reused.

mod handover;
mod health;
mod mailbox;

pub(crate) use mailbox::{channel, Mailbox, Post};

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::budget::later;
use crate::cgroup::{self, Cgroup, Fence};
use crate::child::{self, ChildNote, Known, Monitor, Stream, Teller, Telling};
use crate::config::{Config, EntryConfig, Rule};
use crate::figures::{Reads, Unread};
use crate::handoff::{CoreSnapshot, ExitedSnapshot, InfoSnapshot};
use crate::lifecycle::{self, AfterStop, ChildExit, Effect, Event, Phase, Policy, Slot, KILL_GRACE};
use crate::logfile::{self, LogFile};
use crate::output::{ConsoleHandle, LineSink, LineSplitter};
use crate::status::{
    Containment, EntryState, EntryStatus, ExitStatus, ProcessStatus, ReloadOutcome, RuleStatus, SlotState, SlotStatus,
    Status, UnkillableStatus, WatchStatus, FLAPPING_EXITS,
};
use crate::watch::{self, Hands, Report, Watcher};
use crate::{leftovers, sys, Error, Signal, LINE_LIMIT};
use mailbox::Waited;

/// A request to the core. Replies travel on the channel inside the command.
pub(crate) enum Command {
    /// From a child's monitor thread.
    Child(ChildNote),
    /// Set an entry's number of processes; answered once the change is done.
    Scale { entry: String, count: usize, reply: Sender<Result<Unread<EntryStatus>, Error>> },
    /// Gracefully restart an entry's processes; answered once they are back.
    Restart { entry: String, reply: Sender<Result<Unread<EntryStatus>, Error>> },
    /// Report the state (an error once shutting down).
    Status { reply: Sender<Result<Unread<Status>, Error>> },
    /// Stop every child, then return from [`Core::run`].
    Shutdown,
    /// Record how a reload attempt ended (reported by status).
    ReloadOutcome(ReloadOutcome),
    /// Once pending requests are answered, stop the monitors and return the
    /// whole state from [`Core::run`]; the children keep running.
    Suspend,
    /// Run an `exec` action's program; its output goes to `target`'s log.
    /// `rule` (its key) holds a place in the [`watch::HelperGate`].
    RunHelper { target: String, rule: String, argv: Vec<String> },
    /// Gracefully restart the process (`pid`, `starttime`) of `entry` (a
    /// `restart` action); ignored if that process is no longer the slot's.
    RestartProcess { entry: String, pid: i32, starttime: u64 },
    /// A rule fired: say so on the console and in `target`'s log.
    Fired { target: String, pid: i32, text: String },
    /// A watched cgroup's `cgroup.events` changed: look at lingering trees now.
    TreesChanged,
    /// A probe of a process changed state.
    Probe(crate::probe::ProbeNote),
    /// A process sent an `sd_notify` message (`pid` as the kernel says).
    Notify { pid: i32, message: crate::notify::Message },
}

/// How long an `exec` action's program may run before it is killed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many processes are started per turn of the loop.
const SPAWN_BATCH: usize = 32;
/// Ended processes of an entry whose output may still be being written,
/// beyond its slot count, before its starts wait (see `Core::draining_over`).
const DRAIN_SLACK: usize = 16;
/// At most this many queued commands are handled per turn of the loop.
const COMMAND_BATCH: usize = 256;

/// How long an exited helper's or stray's group gets after SIGTERM.
const LOOSE_GRACE: Duration = Duration::from_secs(5);
/// First interval between looks for the live members of an exited leader's
/// process group; it doubles up to [`GROUP_CHECK_MAX`].
const GROUP_CHECK_MIN: Duration = Duration::from_millis(5);
const GROUP_CHECK_MAX: Duration = Duration::from_millis(250);

/// What a process in the table is to Sentry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The process of slot `index` of entry `entry`.
    Slot { entry: String, index: usize },
    /// An `exec` action's program, writing to `target`'s log; `rule` (its
    /// key) holds a place in the [`watch::HelperGate`] until it is reaped.
    Helper { target: String, rule: String, kill_at: Instant, killed: bool },
    /// A child found after an unreadable snapshot that fits no slot: stopped.
    Stray { kill_at: Instant, killed: bool },
    /// Reaped by an earlier image; only its output pipes are left to drain.
    Pipes { entry: String },
    /// What was slot `index`'s process: its cgroup outlived SIGKILL
    /// (uninterruptible sleep) and the slot went on in a fresh cgroup. It is
    /// reported until its cgroup is empty, then reaped.
    Stuck { entry: String, index: usize },
}

/// One row of the process table.
pub(crate) struct Proc {
    pub pid: i32,
    /// `/proc/PID/stat` starttime: (pid, starttime) is the process's
    /// identity. 0 until known: a new child's is read by its monitor
    /// thread, off the core's path (see [`Proc::starttime`]).
    starttime: std::cell::Cell<u64>,
    pub role: Role,
    /// The thread reading its pipes, until it says [`ChildNote::Closed`].
    pub monitor: Option<Monitor>,
    /// When its monitor saw the leader exit (and the Unix time of it); it
    /// stays unreaped (pinning its PID and group number) until no live
    /// process is left in its group.
    pub exited: Option<Instant>,
    pub exited_unix: u64,
    /// How the leader ended, as seen (not reaped) when it exited.
    pub exit: Option<ChildExit>,
    /// Taken out of the process table; the `wait` itself may still be
    /// pending, until the end of the round (`Core::finish_reaps`).
    pub reaped: bool,
    /// The next look for live members of its group, and the interval after it.
    pub check: Option<(Instant, Duration)>,
    /// The group was found with live members once already.
    pub lingering: bool,
    /// Its cgroup, under cgroup containment: then "its group" means this
    /// cgroup's processes, whatever their process group or session.
    pub cgroup: Option<Cgroup>,
    /// Why it never ran its program (learnt at its exit: starts do not
    /// wait for the exec, see `spawn`).
    pub start_error: Option<String>,
    /// The line its exit was told with (`tell_exit`), for a handover.
    pub told: Option<String>,
}

impl Proc {
    /// Its starttime: as its monitor read it, or else from `/proc` now —
    /// the PID is still ours then (unreaped), so the number is its own. 0
    /// for a reaped row, whose identity nothing asks for.
    pub fn starttime(&self) -> u64 {
        if self.starttime.get() == 0 {
            let read =
                self.monitor.as_ref().and_then(Monitor::starttime).or_else(|| {
                    (!self.reaped).then(|| crate::proc::identity(self.pid).map(|id| id.starttime)).flatten()
                });
            self.starttime.set(read.unwrap_or(0));
        }
        self.starttime.get()
    }

    /// A row for `pid` with its starttime, if known already (a restored
    /// child's, or a new one's from the clock around its clone); 0 to be
    /// learnt (see [`Proc::starttime`]).
    fn known(pid: i32, role: Role, starttime: u64) -> Proc {
        Proc {
            pid,
            starttime: std::cell::Cell::new(starttime),
            role,
            monitor: None,
            start_error: None,
            told: None,
            exited: None,
            exited_unix: 0,
            exit: None,
            reaped: false,
            check: None,
            lingering: false,
            cgroup: None,
        }
    }

    /// Sends `signal` to every process of its cgroup, or else to the
    /// process group the leader started, and to the leader itself through
    /// its pidfd if it has left that group. Safe because the row is
    /// unreaped: nobody else can hold this PID or this group number (and a
    /// cgroup's members are checked one by one).
    fn signal(&self, signal: Signal) {
        if self.reaped {
            return;
        }
        let pidfd = self.monitor.as_ref().and_then(Monitor::pidfd);
        if let Some(cgroup) = &self.cgroup {
            cgroup.signal(signal);
            // A leader that moved itself out of its leaf (root may) is
            // still ours, and reached through its pidfd.
            if let (Some(fd), false) = (pidfd, self.exited.is_some() || cgroup.holds(self.pid)) {
                let _ = sys::pidfd_send_signal(fd, signal);
            }
            return;
        }
        sys::signal_group(self.pid, signal);
        let left_its_group = crate::proc::stat(self.pid).is_some_and(|s| s.pgrp != self.pid);
        if let (true, Some(fd)) = (left_its_group, pidfd) {
            let _ = sys::pidfd_send_signal(fd, signal);
        }
    }
}

/// The watcher's way back into the core.
struct CoreHands {
    tx: Post,
}

impl Hands for CoreHands {
    fn run_helper(&self, target: &str, rule: &str, argv: Vec<String>) {
        let _ = self.tx.send(Command::RunHelper { target: target.to_string(), rule: rule.to_string(), argv });
    }

    fn restart(&self, entry: &str, pid: i32, starttime: u64) {
        let _ = self.tx.send(Command::RestartProcess { entry: entry.to_string(), pid, starttime });
    }

    fn say(&self, target: &str, pid: i32, text: &str) {
        let _ = self.tx.send(Command::Fired { target: target.to_string(), pid, text: text.to_string() });
    }
}

/// Why [`Core::run`] returned.
pub(crate) enum CoreExit {
    /// Every child was stopped and reaped.
    Shutdown,
    /// The state was handed over; the children still run.
    Suspended(Box<Suspended>),
}

/// A suspended core: its state, and the fds the snapshot refers to by number.
pub(crate) struct Suspended {
    pub snapshot: CoreSnapshot,
    pub fds: Vec<OwnedFd>,
    /// Unix time (ns) the first monitor was told to stop: from then on the
    /// children were unwatched.
    pub unwatched_since_ns: u64,
    /// The stopped monitors, whose threads wait for the exec to end them
    /// (after a failed exec, [`child::Parked::release`] does); they hold
    /// the pidfds the snapshot names ([`CoreSnapshot::pidfds`]).
    pub parked: Vec<child::Parked>,
}

/// A process to put in the process table and watch (see [`Core::adopt_all`]).
pub(crate) struct Adoption {
    pub gen: u64,
    pub pid: i32,
    pub role: Role,
    pub streams: Vec<Stream>,
    /// The entry its output is logged as.
    pub log_as: String,
    pub cgroup: Option<Cgroup>,
    /// What is known of it already (a restored child's pidfd and
    /// starttime, a new child's starttime); the rest is looked up.
    pub known: Known,
    /// The `[sentry]` line its monitor writes first to the log (a fresh
    /// start's `Started at T.`; none for a process adopted across an exec).
    pub opening: Option<u64>,
    /// Its exit, told by the image before an exec (not told again).
    pub exited: Option<ExitedSnapshot>,
    /// Its exit was shown on the console before the exec.
    pub exit_shown: bool,
}

/// A child found in /proc (after an unreadable snapshot), to adopt or stop.
pub(crate) struct FoundChild {
    pub pid: i32,
    pub cmdline: Vec<String>,
    /// Its `SENTRY_ENTRY` and `SENTRY_INDEX`.
    pub entry: Option<String>,
    pub index: Option<usize>,
    /// The output pipes it writes to, inherited from the previous image.
    pub pipes: Vec<OwnedFd>,
}

/// What the core needs from whoever runs it.
pub(crate) struct CoreOptions {
    /// Where `ENTRY.log` files go; `None` discards children's output.
    pub log_dir: Option<PathBuf>,
    pub console: ConsoleHandle,
    /// Start and re-exec times, last reload: reported by status.
    pub info: InfoSnapshot,
    /// Where the process groups the core owns are recorded for the next
    /// start, should this instance be SIGKILLed (`DIR/NAME.procs`).
    pub ledger: Option<PathBuf>,
    /// How each process's tree is fenced: a cgroup of its own, or its
    /// process group.
    pub fence: Fence,
    /// Called once the first children are started (the first round of a run).
    pub on_started: Option<fn()>,
}

/// An entry at run time: its configuration, target count and slots.
struct EntryRun {
    config: EntryConfig,
    /// The current target: the configured count or a run-time override.
    target: usize,
    restarts: u64,
    /// Of `restarts`, those asked for (not after an exit of its own).
    restarts_requested: u64,
    /// No longer in the configuration: stopping, then dropped.
    removed: bool,
    slots: BTreeMap<usize, SlotRun>,
    /// How each slot's last process ended (kept when the slot goes).
    last_exits: BTreeMap<usize, (u64, ChildExit)>,
    /// When recent non-success exits happened (for `flapping`).
    failures: VecDeque<Instant>,
    /// Shutting down or removed, its stop has begun: it waited for the
    /// entries that follow it (`.after`) to be stopped first.
    stop_begun: bool,
    /// Its held starts were announced ("Waiting for …"), until one starts.
    announced_wait: bool,
    /// Its due starts wait for ended processes' output to be written
    /// ([`Core::draining_over`]): looked at again when a monitor closes.
    drain_held: bool,
}

impl EntryRun {
    fn new(config: EntryConfig) -> EntryRun {
        EntryRun {
            target: config.count,
            restarts: 0,
            restarts_requested: 0,
            removed: false,
            slots: BTreeMap::new(),
            last_exits: BTreeMap::new(),
            failures: VecDeque::new(),
            stop_begun: false,
            announced_wait: false,
            drain_held: false,
            config,
        }
    }

    /// Remembers how slot `index`'s process ended.
    /// `at` is the Unix time the process exited (its group may have lingered);
    /// `asked`: Sentry stopped it (a stop, a restart, a scale-down), which
    /// does not count towards `flapping`.
    fn record_exit(&mut self, index: usize, exit: ChildExit, at: u64, asked: bool, now: Instant) {
        self.last_exits.insert(index, (at, exit));
        if !self.config.success_codes.contains(exit) && !asked {
            self.failures.push_back(now);
        }
        while self.failures.front().is_some_and(|t| now.saturating_duration_since(*t) > FLAPPING_WINDOW) {
            self.failures.pop_front();
        }
        while self.failures.len() > FLAPPING_EXITS {
            self.failures.pop_front();
        }
    }

    fn flapping(&self, now: Instant) -> bool {
        self.failures.iter().filter(|t| now.saturating_duration_since(**t) <= FLAPPING_WINDOW).count() >= FLAPPING_EXITS
    }
}

/// How soon the core looks again at launches still between clone and exec.
const LAUNCH_CHECK: Duration = Duration::from_millis(20);

/// The window of [`FLAPPING_EXITS`].
const FLAPPING_WINDOW: Duration = Duration::from_secs(60);

struct SlotRun {
    slot: Slot,
    /// Unix time the slot's current process started.
    started_at: u64,
    /// Why the last attempt to start a process failed, until one starts.
    error: Option<String>,
    /// Its process passed its readiness probe (false without a process).
    ready: bool,
    /// What only slots with probes, a watchdog or a `.give_up` limit need,
    /// boxed so that the others (thousands, maybe) do not pay for it.
    health: Option<Box<SlotHealth>>,
}

#[derive(Default)]
struct SlotHealth {
    /// Its recent exits, for `.give_up`.
    exits: VecDeque<Instant>,
    /// The thread probing its process, while it runs.
    prober: Option<crate::probe::Prober>,
    /// When its process's next keep-alive is due at the latest (`.watchdog`).
    watchdog_at: Option<Instant>,
}

impl SlotRun {
    fn new(now: Instant) -> SlotRun {
        SlotRun::with(Slot::new(now), 0, None)
    }

    fn with(slot: Slot, started_at: u64, error: Option<String>) -> SlotRun {
        SlotRun { slot, started_at, error, ready: false, health: None }
    }

    /// Its health state, made on first use.
    fn health(&mut self) -> &mut SlotHealth {
        self.health.get_or_insert_with(Box::default)
    }

    fn watchdog_at(&self) -> Option<Instant> {
        self.health.as_ref().and_then(|h| h.watchdog_at)
    }

    fn take_prober(&mut self) -> Option<crate::probe::Prober> {
        self.health.as_mut().and_then(|h| h.prober.take())
    }

    fn clear_exits(&mut self) {
        if let Some(h) = &mut self.health {
            h.exits.clear();
        }
    }
}

/// A command answered once its entry has settled.
struct Waiter {
    entry: String,
    reply: Sender<Result<Unread<EntryStatus>, Error>>,
}

/// The supervision core. Build with [`Core::new`], then [`Core::run`].
pub(crate) struct Core {
    config: Config,
    entries: Vec<EntryRun>,
    /// The process table, by generation.
    procs: BTreeMap<u64, Proc>,
    next_gen: u64,
    /// The table changed since the ledger was last written.
    ledger_dirty: bool,
    waiters: Vec<Waiter>,
    /// Monitors that said [`ChildNote::Closed`], to join.
    closed: Vec<Monitor>,
    /// Rows whose pidfds the mailbox does not hear yet (`watch_new`).
    to_watch: Vec<u64>,
    /// What `write_ledger` last wrote.
    ledger_written: Option<leftovers::Ledger>,
    /// Leaders taken out of the table this round, to reap at its end:
    /// (row, PID).
    reaps: Vec<(u64, i32)>,
    logs: HashMap<String, Arc<LogFile>>,
    shutting_down: bool,
    suspending: bool,
    /// The watch thread, while any watch or rule exists.
    watcher: Option<Watcher>,
    /// Rate-limit clocks and counters while no watcher runs.
    watch_state: watch::State,
    /// The `exec` helpers running, under the caps (shared with the watcher).
    helpers: Arc<watch::HelperGate>,
    /// Notice of lingering cgroups that change, under cgroup containment.
    events: Option<cgroup::EventWatch>,
    /// Where children send `sd_notify` messages, once an entry asks for it.
    notify: Option<crate::notify::NotifySocket>,
    /// Probe threads told to stop, joined once they have ended.
    old_probers: Vec<crate::probe::Prober>,
    /// The threads function probes are called on, by entry and probe.
    func_workers: HashMap<(String, crate::probe::Which), Arc<crate::probe::FuncWorker>>,
    options: CoreOptions,
    tx: Post,
    rx: Mailbox,
}

impl Core {
    /// A core for `config`, reading commands from `rx` (`tx` is handed to monitors).
    /// Its console lines are held while it works and sent before it waits.
    pub fn new(config: Config, mut options: CoreOptions, tx: Post, rx: Mailbox) -> Core {
        // The spawn fd sets take the lowest free fds, before any child's.
        crate::spawn::reserve();
        options.console = options.console.holding();
        let entries = config.entries.iter().cloned().map(EntryRun::new).collect();
        Core {
            config,
            entries,
            procs: BTreeMap::new(),
            next_gen: 1,
            // Written at the first turn: the instance's cgroup is recorded
            // even while no process runs (a watch alone), so a SIGKILL then
            // still leaves the next start something to empty and remove.
            ledger_dirty: true,
            waiters: Vec::new(),
            closed: Vec::new(),
            reaps: Vec::new(),
            ledger_written: None,
            to_watch: Vec::new(),
            logs: HashMap::new(),
            shutting_down: false,
            suspending: false,
            watcher: None,
            watch_state: watch::State::default(),
            helpers: Arc::default(),
            events: None,
            notify: None,
            old_probers: Vec::new(),
            func_workers: HashMap::new(),
            options,
            tx,
            rx,
        }
    }

    /// Supervises until [`Command::Shutdown`] (or until every sender is
    /// gone), then stops every child and returns once all are reaped and every
    /// monitor thread is joined — or until [`Command::Suspend`].
    pub fn run(mut self) -> CoreExit {
        if let Some(dir) = &self.options.log_dir {
            if let Err(e) = std::fs::create_dir_all(dir) {
                log::warn!("cannot create the log directory {}: {e}", dir.display());
            }
        }
        if self.options.fence.tree().is_some() {
            let tx = self.tx.clone();
            match cgroup::EventWatch::start(move || {
                let _ = tx.send(Command::TreesChanged);
            }) {
                Ok(w) => self.events = Some(w),
                Err(e) => log::warn!("no inotify for cgroup events ({e}): lingering trees are looked at on a schedule"),
            }
        }
        self.ensure_health();
        for i in 0..self.entries.len() {
            self.reconcile(i, Instant::now());
        }
        if let Some(started) = self.options.on_started.take() {
            started();
        }
        self.restart_watcher();
        loop {
            let now = Instant::now();
            let procs = &self.procs;
            let stuck =
                |name: &str| procs.values().any(|p| matches!(&p.role, Role::Stuck { entry, .. } if entry == name));
            self.entries.retain(|e| !(e.removed && e.slots.is_empty() && !stuck(&e.config.name)));
            self.old_probers.retain_mut(|p| !p.reap());
            self.check_groups(now);
            self.fire_due(now);
            // After the groups were looked at: a follower that is gone now
            // lets what it follows stop in this round.
            self.stop_in_order(now);
            self.finish_reaps();
            self.join_closed();
            self.answer_waiters(now);
            if self.shutting_down && self.finished(now) {
                break;
            }
            if self.suspending && !self.shutting_down && self.waiters.is_empty() {
                if self.drain_before_suspend() {
                    continue;
                }
                self.events = None;
                self.rx.forget_children();
                let suspended = self.suspend();
                self.options.console.release();
                return CoreExit::Suspended(Box::new(suspended));
            }
            self.write_ledger();
            // Launches still between clone and exec are looked at again
            // shortly, not only at the next command (an idle core would
            // otherwise keep their fds and stacks until then).
            let tidy_at = crate::spawn::tidy().then(|| later(Instant::now(), LAUNCH_CHECK));
            let deadline = match (self.next_deadline(), tidy_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // What this round said reaches the console before the wait,
            // not in the middle of a restart.
            self.options.console.release();
            self.watch_new();
            let mut exits = Vec::new();
            let command = match self.rx.wait(deadline, &mut exits) {
                Waited::Command(c) => Some(c),
                Waited::Exits => {
                    let now = Instant::now();
                    for gen in exits {
                        self.leader_exited(gen, true, now);
                    }
                    None
                }
                Waited::Timeout => None,
                Waited::Disconnected => Some(Command::Shutdown),
            };
            if let Some(command) = command {
                self.handle(command);
            }
            // What else is queued, before the next look at groups and
            // deadlines: a thousand exits cost one /proc pass, not a thousand.
            for command in self.rx.try_iter().take(COMMAND_BATCH).collect::<Vec<_>>() {
                self.handle(command);
            }
        }
        self.stop_watcher();
        self.events = None;
        self.stop_probers(true);
        if let Some(mut n) = self.notify.take() {
            n.quiet();
        }
        self.close_monitors();
        if let Some(tree) = self.options.fence.tree() {
            // Whatever is still in the tree (moved out of its leaf, or left
            // by a row that could not be stopped) goes with the instance.
            if let Some(line) = tree.empty(KILL_GRACE, "still in the instance's cgroup") {
                self.options.console.say(&line);
            }
            match tree.remove() {
                // Nothing of the instance is left: the ledger need not name it.
                Ok(()) => self.options.fence = Fence::ProcessGroup("stopped".to_string()),
                Err(e) => self
                    .options
                    .console
                    .say(&format!("Cannot remove the cgroup {}: {e}; the next start will.", tree.root().display())),
            }
        }
        self.ledger_dirty = true;
        self.write_ledger();
        self.options.console.release();
        CoreExit::Shutdown
    }

    /// Records the process groups the core owns, if they changed.
    fn write_ledger(&mut self) {
        if !std::mem::take(&mut self.ledger_dirty) {
            return;
        }
        let Some(path) = &self.options.ledger else { return };
        let cgroup = self.options.fence.tree().map(|t| t.root().to_path_buf());
        // Under cgroup containment the next start looks in the cgroup only
        // (`leftovers::stop_left`): the groups would be written for nothing,
        // and the file would change at every restart.
        let groups = match cgroup {
            Some(_) => Vec::new(),
            None => self
                .procs
                .values()
                .filter(|p| !p.reaped)
                .filter_map(|p| {
                    let entry = match &p.role {
                        Role::Slot { entry, .. } | Role::Stuck { entry, .. } => entry,
                        Role::Helper { target, .. } => target,
                        Role::Stray { .. } | Role::Pipes { .. } => return None,
                    };
                    Some(leftovers::Group { pgid: p.pid, starttime: p.starttime(), entry: entry.clone() })
                })
                .collect(),
        };
        let ledger = leftovers::Ledger::new(groups, cgroup);
        if self.ledger_written.as_ref() == Some(&ledger) {
            return;
        }
        match leftovers::write(path, &ledger) {
            Ok(()) => self.ledger_written = Some(ledger),
            Err(e) => log::warn!("cannot record the process groups in {}: {e}", path.display()),
        }
    }

    /// Before suspending: stops the watcher (nothing more comes from it) and
    /// handles every command already queued — firing lines are written,
    /// `exec` programs started (the snapshot carries them as helpers),
    /// restarts begun, outcomes recorded, exits reaped — so that nothing sent
    /// just before the exec dies with the channel. Returns whether anything
    /// was handled (the loop then goes round again: waiters, a shutdown).
    fn drain_before_suspend(&mut self) -> bool {
        self.stop_watcher();
        let queued: Vec<Command> = self.rx.try_iter().collect();
        let handled = !queued.is_empty();
        for command in queued {
            self.handle(command);
        }
        handled
    }

    /// (Re)starts the watch thread for the current configuration, keeping clocks.
    fn restart_watcher(&mut self) {
        self.stop_watcher();
        let targets = watch::targets(&self.config, self.options.fence.tree().map(|t| t.root()));
        if targets.is_empty() {
            return;
        }
        let hands = CoreHands { tx: self.tx.clone() };
        let mut state = std::mem::take(&mut self.watch_state);
        state.gate = Some(self.helpers.clone());
        match Watcher::start(targets, state, hands) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => log::error!("cannot start the watch thread: {e}"),
        }
    }

    fn stop_watcher(&mut self) {
        if let Some(w) = self.watcher.take() {
            self.watch_state = w.stop();
        }
    }

    /// Starts an `exec` action's program, watched like a child and reaped by the core.
    fn run_helper(&mut self, target: &str, rule: String, argv: Vec<String>) {
        let gen = self.new_gen();
        let spawned = self.spawn_in(target, &format!("exec.{gen}"), gen, |fd| child::spawn_helper(target, &argv, fd));
        let (spawned, cgroup) = match spawned {
            Ok(s) => s,
            Err(e) => {
                self.helpers.release(&rule);
                self.options.console.entry_event(
                    target,
                    &format!("{target}.?"),
                    &format!("Cannot run {:?}: {e}.", argv[0]),
                );
                return;
            }
        };
        let pid = spawned.pid;
        let known = Known { starttime: spawned.starttime, ..Known::default() };
        let kill_at = later(Instant::now(), HELPER_TIMEOUT);
        let role = Role::Helper { target: target.to_string(), rule: rule.clone(), kill_at, killed: false };
        if let Err(e) =
            self.adopt_process(gen, pid, role, streams_of(spawned), target, cgroup, known, None, None, false)
        {
            self.helpers.release(&rule);
            log::error!("cannot watch helper {target}.{pid}: {e}");
        }
    }

    /// Puts `pid` (our unreaped child) in the process table as row `gen`,
    /// with its cgroup if it has one, and starts its monitor. Without a
    /// monitor nobody would see it exit: then it is killed and reaped at
    /// once, and the error returned.
    #[allow(clippy::too_many_arguments)]
    fn adopt_process(
        &mut self,
        gen: u64,
        pid: i32,
        role: Role,
        streams: Vec<Stream>,
        log_as: &str,
        cgroup: Option<Cgroup>,
        known: Known,
        opening: Option<u64>,
        exited: Option<ExitedSnapshot>,
        exit_shown: bool,
    ) -> std::io::Result<u64> {
        let log_as = log_as.to_string();
        let adoption = Adoption { gen, pid, role, streams, log_as, cgroup, known, opening, exited, exit_shown };
        self.adopt_all(vec![adoption]).pop().map_or(Ok(gen), |(_, e)| Err(e))
    }

    /// [`Core::adopt_process`] for many processes at once (a restored
    /// core's): their monitor threads are made by two threads, on two CPUs,
    /// since the children are unwatched until the last one runs. Returns the
    /// adoptions that failed, by generation, with why (those processes were
    /// killed and reaped).
    fn adopt_all(&mut self, adoptions: Vec<Adoption>) -> Vec<(u64, std::io::Error)> {
        let mut rows = Vec::with_capacity(adoptions.len());
        let mut starts = Vec::with_capacity(adoptions.len());
        for a in adoptions {
            // The core tells these rows' exits (`leader_exited`).
            let teller = match a.role {
                Role::Slot { .. } => Teller::Slot,
                Role::Helper { .. } => Teller::Helper,
                Role::Stray { .. } | Role::Pipes { .. } | Role::Stuck { .. } => Teller::Nobody,
            };
            let known = a.known;
            let mut row = Proc::known(a.pid, a.role, known.starttime.unwrap_or(0));
            row.cgroup = a.cgroup;
            let mut telling = Telling::new(a.opening, teller);
            telling.shown |= a.exit_shown;
            if let Some(x) = a.exited {
                // Told by the image before: as it was, not again.
                let now = Instant::now();
                row.exited = Some(now.checked_sub(Duration::from_millis(x.ago_ms)).unwrap_or(now));
                row.exited_unix = x.at;
                row.exit = Some(x.exit);
                row.check = Some((now, GROUP_CHECK_MIN));
                row.lingering = x.lingering;
                row.told = Some(x.text.clone());
                telling.told = Some(x.text);
                telling.shown |= x.shown;
                telling.logged = x.logged;
            }
            let sink = self.sink(&a.log_as, a.pid);
            let notify = self.notifier();
            starts.push(move || Monitor::start(a.gen, a.pid, known, a.streams, sink, false, telling, notify));
            rows.push((a.gen, row));
        }
        // What was said so far (a `Started` line) reaches the console before
        // anything a monitor shows of its process.
        self.options.console.release();
        fn run<F: FnOnce() -> std::io::Result<Monitor>>(starts: Vec<F>) -> Vec<std::io::Result<Monitor>> {
            starts.into_iter().map(|start| start()).collect()
        }
        // Below this many, a second thread costs more than it saves.
        const SHARED_FROM: usize = 64;
        let monitors = if starts.len() < SHARED_FROM {
            run(starts)
        } else {
            // Handed over through a lock, so that a second thread that
            // cannot be made (EAGAIN at a tasks limit) loses nothing: this
            // thread then makes them all.
            let second = std::sync::Mutex::new(Some(starts.split_off(starts.len() / 2)));
            let take = || second.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
            std::thread::scope(|scope| {
                let other = std::thread::Builder::new().name("sentry-adopt".into()).spawn_scoped(scope, || run(take()));
                let mut first = run(starts);
                match other.map(|o| o.join()) {
                    Ok(Ok(rest)) => first.extend(rest),
                    Ok(Err(panic)) => std::panic::resume_unwind(panic),
                    Err(_) => first.extend(run(take())),
                }
                first
            })
        };
        let mut failed = Vec::new();
        for ((gen, mut row), monitor) in rows.into_iter().zip(monitors) {
            match monitor {
                Ok(m) => {
                    row.monitor = Some(m);
                    self.to_watch.push(gen);
                    self.procs.insert(gen, row);
                    self.ledger_dirty = true;
                }
                Err(e) => {
                    let pid = row.pid;
                    row.signal(Signal::SIGKILL);
                    sys::signal_group(pid, Signal::SIGKILL);
                    // The child itself, too: it may not have made its process
                    // group yet (starts do not wait for the exec), and the reap
                    // below must not wait on a child nobody signalled. It is
                    // our unreaped child, so the PID is its own.
                    // SAFETY: kill of our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    sys::reap(pid);
                    crate::spawn::reaped(pid);
                    failed.push((gen, e));
                }
            }
        }
        failed
    }

    /// Runs `spawn` with the placement of a fresh leaf `<group>/<name>` for
    /// row `gen` (under cgroup containment; none otherwise); the leaf is
    /// removed again if the start fails.
    fn spawn_in(
        &self,
        group: &str,
        name: &str,
        gen: u64,
        spawn: impl FnOnce(Option<BorrowedFd<'_>>) -> std::io::Result<child::Spawned>,
    ) -> std::io::Result<(child::Spawned, Option<Cgroup>)> {
        let (cgroup, placement) = self.leaf(group, name, gen)?;
        match spawn(placement.as_ref().map(|fd| fd.as_fd())) {
            Ok(spawned) => Ok((spawned, cgroup)),
            Err(e) => {
                if let Some(c) = cgroup {
                    let _ = c.remove();
                }
                Err(e)
            }
        }
    }

    /// Under cgroup containment, a fresh leaf `<group>/<name>` for row
    /// `gen` and its directory open for the child to be started in;
    /// nothing otherwise.
    fn leaf(&self, group: &str, name: &str, gen: u64) -> std::io::Result<(Option<Cgroup>, Option<OwnedFd>)> {
        let Some(tree) = self.options.fence.tree() else { return Ok((None, None)) };
        let taken =
            |path: &std::path::Path| self.procs.values().any(|p| p.cgroup.as_ref().is_some_and(|c| c.path() == path));
        let leaf = tree
            .leaf(group, name, gen, &taken)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot make its cgroup: {e}")))?;
        match leaf.placement() {
            Ok(fd) => Ok((Some(leaf), Some(fd))),
            Err(e) => {
                let _ = leaf.remove();
                Err(std::io::Error::new(e.kind(), format!("cannot open its cgroup: {e}")))
            }
        }
    }

    /// The cgroup of our child `pid` under cgroup containment: the one
    /// recorded for it (a snapshot's), else the one `/proc` shows, if
    /// either is a leaf of the instance's tree.
    fn cgroup_at(&self, recorded: Option<&std::path::Path>, pid: i32) -> Option<Cgroup> {
        let tree = self.options.fence.tree()?;
        match recorded {
            Some(path) => tree.existing(path),
            None => tree.existing(&cgroup::directory_of_process(pid)?),
        }
    }

    /// Removes a row's empty cgroup, and its group's directory once no
    /// process is wanted there any more (an entry scaled to 0 or removed, a
    /// watch's helpers): a restart does not remove and remake it.
    fn remove_cgroup(&mut self, cgroup: Cgroup, removed: bool) {
        if let Err(e) = if removed { Ok(()) } else { cgroup.remove() } {
            self.options.console.say(&format!("Cannot remove the cgroup {}: {e}.", cgroup.path().display()));
        }
        let Some(tree) = self.options.fence.tree() else { return };
        let Some(name) = cgroup.path().parent().and_then(|g| g.file_name()).and_then(|n| n.to_str()) else { return };
        let wanted =
            !self.shutting_down && self.entries.iter().any(|e| e.config.name == name && !e.removed && e.target > 0);
        if !wanted {
            tree.remove_group(name);
        }
    }

    /// A generation number for a new row: never given out before.
    fn new_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen - 1
    }

    /// Keeps draining the pipes of a process reaped by an earlier image.
    /// `exited`: its exit as the image before told it, if the console or
    /// the log did not have it yet.
    fn drain_pipes(
        &mut self,
        entry: &str,
        pid: i32,
        streams: Vec<Stream>,
        exited: Option<ExitedSnapshot>,
    ) -> std::io::Result<()> {
        let gen = self.new_gen();
        let sink = self.sink(entry, pid);
        let mut telling = Telling::new(None, Teller::Nobody);
        if let Some(x) = exited {
            telling.told = Some(x.text);
            telling.shown = x.shown;
            telling.logged = x.logged;
        }
        let monitor = Monitor::start(gen, pid, Known::default(), streams, sink, true, telling, self.notifier())?;
        let mut row = Proc::known(pid, Role::Pipes { entry: entry.to_string() }, 0);
        row.reaped = true;
        row.monitor = Some(monitor);
        self.procs.insert(gen, row);
        Ok(())
    }

    /// The unreaped row of `pid`, if it has one.
    fn row_of(&self, pid: i32) -> Option<u64> {
        self.procs.iter().find(|(_, p)| p.pid == pid && !p.reaped).map(|(gen, _)| *gen)
    }

    /// Row `gen`'s leader exited — its pidfd became readable (`from_pidfd`,
    /// see `mailbox`) or its monitor said so, whichever comes first; the
    /// other changes nothing. Say so now, and look for what is left of its
    /// group at once.
    fn leader_exited(&mut self, gen: u64, from_pidfd: bool, now: Instant) {
        let Some(row) = self.procs.get_mut(&gen) else { return };
        if row.reaped || row.exited.is_some() {
            return;
        }
        let exit = match sys::peek_exit(row.pid) {
            Some(exit) => exit,
            // A pidfd is readable only at the exit; should it not be, listen again.
            None if from_pidfd => {
                if let Some(pidfd) = row.monitor.as_ref().and_then(|m| m.pidfd()) {
                    let _ = self.rx.watch(pidfd, gen);
                }
                return;
            }
            None => ChildExit::Unknown,
        };
        row.exited = Some(now);
        row.exited_unix = sys::unix_now();
        row.exit = Some(exit);
        row.check = Some((now, GROUP_CHECK_MIN));
        let (pid, at) = (row.pid, row.exited_unix);
        // A start that failed after the clone ends with 127 (`spawn`).
        let failed = if exit == ChildExit::Code(127) { crate::spawn::failure(pid) } else { None };
        row.start_error = failed.as_ref().map(|(_, e)| e.to_string());
        match &row.role {
            Role::Slot { entry, .. } => {
                let entry = entry.clone();
                let text = match &failed {
                    Some((program, e)) => format!("Cannot start {program:?}: {e}."),
                    None => Teller::Slot.exit_line(exit, at),
                };
                tell_exit(&self.options.console, row, &entry, text);
            }
            Role::Helper { target, .. } => {
                let text = match &failed {
                    Some((program, e)) => format!("Cannot run {program:?}: {e}."),
                    None => Teller::Helper.exit_line(exit, at),
                };
                let target = target.clone();
                tell_exit(&self.options.console, row, &target, text);
            }
            Role::Stray { .. } | Role::Pipes { .. } | Role::Stuck { .. } => {}
        }
    }

    /// Looks, once for every row that is due, for live members of exited
    /// leaders' groups: an empty group's leader is reaped and its slot told;
    /// a lingering one is stopped (once) and looked at again later.
    fn check_groups(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .procs
            .iter()
            .filter(|(_, p)| !p.reaped && p.check.is_some_and(|(at, _)| at <= now))
            .map(|(gen, _)| *gen)
            .collect();
        if due.is_empty() {
            return;
        }
        // One /proc pass for every process group due; a cgroup is one file.
        let mut live = None;
        for gen in due {
            let Some(row) = self.procs.get_mut(&gen) else { continue };
            // An empty leaf goes at once, its rmdir being the look (EBUSY
            // while a process is in it, or a cgroup below it).
            let removed = row.cgroup.as_ref().is_some_and(Cgroup::remove_if_empty);
            let empty = removed
                || match &row.cgroup {
                    Some(cgroup) => !cgroup.populated(),
                    None => !live.get_or_insert_with(crate::proc::live_groups).contains(&row.pid),
                };
            if empty {
                self.group_gone(gen, removed, now);
                continue;
            }
            let (_, step) = row.check.unwrap_or((now, GROUP_CHECK_MIN));
            row.check = Some((later(now, step), (step * 2).min(GROUP_CHECK_MAX)));
            if std::mem::replace(&mut row.lingering, true) {
                continue;
            }
            // From now on a change of the cgroup wakes the loop (the
            // schedule above stays, for a change before the watch began).
            if let (Some(events), Some(cgroup)) = (&self.events, &row.cgroup) {
                events.watch(cgroup);
            }
            let exited_at = row.exited.unwrap_or(now);
            let (pid, remain) = (row.pid, row.cgroup.as_ref().map(|c| (c.pids().len(), c.name().to_string())));
            match row.role.clone() {
                Role::Slot { entry, index } => {
                    let text = match remain {
                        Some((n, name)) => format!(
                            "{n} process{} left in its cgroup {name}: stopping {}.",
                            if n == 1 { " is" } else { "es are" },
                            if n == 1 { "it" } else { "them" }
                        ),
                        None => "Members of its process group are left: stopping them.".to_string(),
                    };
                    // After the process's Exited line, on the console and in its log.
                    match &row.monitor {
                        Some(m) if m.note_after_exit(&text) => self.options.console.record(&entry, pid, &text),
                        _ => self.options.console.event(&entry, pid, &text),
                    }
                    if let Some(i) = self.entries.iter().position(|e| e.config.name == entry) {
                        self.apply(i, index, Event::LeaderExited { now: exited_at });
                    }
                }
                Role::Helper { .. } | Role::Stray { .. } => {
                    row.signal(Signal::SIGTERM);
                    if let Role::Helper { kill_at, .. } | Role::Stray { kill_at, .. } = &mut row.role {
                        *kill_at = (*kill_at).min(later(now, LOOSE_GRACE));
                    }
                }
                Role::Pipes { .. } | Role::Stuck { .. } => {}
            }
        }
    }

    /// The leader of row `gen` exited and its group is empty: take it out
    /// of the table, tell its slot (which may start the next process at
    /// once) and, at the end of the round, reap it and let its monitor
    /// drain and close the pipes (`finish_reaps`). `removed`: its cgroup
    /// is gone already.
    fn group_gone(&mut self, gen: u64, removed: bool, now: Instant) {
        let Some(row) = self.procs.get_mut(&gen) else { return };
        let exit = match row.exit {
            Some(exit) if exit != ChildExit::Unknown => {
                self.reaps.push((gen, row.pid));
                exit
            }
            _ => {
                let exit = sys::reap(row.pid);
                crate::spawn::reaped(row.pid);
                if let Some(m) = &row.monitor {
                    m.finish();
                }
                exit
            }
        };
        row.reaped = true;
        row.check = None;
        let (pid, role, exited_unix) = (row.pid, row.role.clone(), row.exited_unix);
        let start_error = row.start_error.take();
        let cgroup = row.cgroup.take();
        if let Role::Helper { rule, .. } = &role {
            self.helpers.release(rule);
        }
        self.ledger_dirty = true;
        if row.monitor.is_none() {
            self.procs.remove(&gen);
        }
        if let Some(cgroup) = cgroup {
            if let Role::Stuck { entry, .. } = &role {
                let text = format!("What outlived SIGKILL in the cgroup {} is gone.", cgroup.name());
                self.options.console.event(entry, pid, &text);
            }
            self.remove_cgroup(cgroup, removed);
        }
        if let Role::Slot { entry, index } = role {
            let Some(i) = self.entries.iter().position(|e| e.config.name == entry) else { return };
            let e = &mut self.entries[i];
            if e.slots.get(&index).and_then(|s| s.slot.pid()) != Some(pid) {
                return;
            }
            // A stop Sentry asked for is no failure of the process's own.
            let then = e.slots.get(&index).and_then(|s| match s.slot.phase {
                Phase::Stopping { then, .. } | Phase::Killing { then, .. } | Phase::Unkillable { then, .. } => {
                    Some(then)
                }
                _ => None,
            });
            let asked = then.is_some_and(|t| !matches!(t, AfterStop::Policy { .. }));
            // What `.give_up` counts: exits of its own, and restarts by a
            // rule or a liveness probe; not what a user asked for.
            let counted = !matches!(then, Some(AfterStop::Respawn | AfterStop::Vacate));
            // A start that failed in the child is a failed start, as one
            // refused before the clone: no exit recorded, no restart counted.
            let running = e.slots.get(&index).is_some_and(|s| matches!(s.slot.phase, Phase::Running { .. }));
            if let (Some(error), Some(run), true) = (&start_error, e.slots.get_mut(&index), running) {
                run.error = Some(format!("cannot start {:?}: {error}", e.config.command));
                self.apply(i, index, Event::SpawnFailed { now });
                self.count_towards_give_up(i, index, now);
                return;
            }
            let was_flapping = e.flapping(now);
            e.record_exit(index, exit, exited_unix, asked, now);
            if !was_flapping && e.flapping(now) {
                let text = format!("Flapping: {FLAPPING_EXITS} or more failed exits within the last minute.");
                self.options.console.entry_event(&entry, &entry, &text);
            }
            let last = counted && self.give_up_due(i, index, now);
            self.apply(i, index, if last { Event::LastExit { exit, now } } else { Event::Exited { exit, now } });
            if last {
                self.gave_up(i, index);
            }
            if then != Some(AfterStop::Vacate) {
                self.restart_bound(&entry, pid, now);
            }
        }
    }

    fn handle(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Child(ChildNote::Exited { gen }) => self.leader_exited(gen, false, now),
            Command::Child(ChildNote::Closed { gen }) => {
                let Some(row) = self.procs.get_mut(&gen) else { return };
                // Joined after this round's group checks and starts: a
                // respawn does not wait for the old monitor's thread to end.
                self.closed.extend(row.monitor.take());
                if row.reaped {
                    self.procs.remove(&gen);
                }
            }
            Command::Scale { reply, .. } | Command::Restart { reply, .. } if self.shutting_down => {
                let _ = reply.send(Err(Error::ShuttingDown));
            }
            Command::Scale { entry, count, reply } => {
                let Some(i) = self.index_of(&entry) else {
                    let _ = reply.send(Err(Error::UnknownEntry(entry)));
                    return;
                };
                if count > crate::spec::MAX_COUNT {
                    let _ = reply.send(Err(Error::BadCount(count.to_string())));
                    return;
                }
                if count > self.entries[i].target {
                    let others: usize = self
                        .entries
                        .iter()
                        .enumerate()
                        .filter(|(j, e)| *j != i && !e.removed)
                        .map(|(_, e)| e.target)
                        .sum();
                    let limit = crate::budget::nofile().0;
                    if let Err(e) =
                        crate::budget::check(others + count, self.entries.len(), limit, "the soft RLIMIT_NOFILE")
                    {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    crate::budget::reserve_fds(others + count, self.entries.len());
                }
                let before = self.entries[i].target;
                if before != count {
                    self.options.console.entry_event(&entry, &entry, &format!("Scaled from {before} to {count}."));
                }
                self.entries[i].target = count;
                self.reconcile(i, now);
                self.waiters.push(Waiter { entry, reply });
            }
            Command::Restart { entry, reply } => {
                let Some(i) = self.index_of(&entry) else {
                    let _ = reply.send(Err(Error::UnknownEntry(entry)));
                    return;
                };
                let indexes: Vec<usize> = self.entries[i].slots.keys().copied().collect();
                for run in self.entries[i].slots.values_mut() {
                    run.clear_exits();
                }
                let text =
                    format!("Restart requested: {} process(es) stopped gracefully, then started.", indexes.len());
                self.options.console.entry_event(&entry, &entry, &text);
                for index in indexes {
                    self.apply(i, index, Event::Restart { now });
                }
                self.reconcile(i, now);
                self.waiters.push(Waiter { entry, reply });
            }
            Command::Status { reply } => {
                // Only what the core knows: the asker reads the figures.
                let _ = reply.send(if self.shutting_down { Err(Error::ShuttingDown) } else { Ok(self.status()) });
            }
            Command::Shutdown => self.begin_shutdown(now),
            Command::ReloadOutcome(outcome) => self.record_reload(outcome),
            Command::Suspend => {
                // Nobody can wait across the exec: what was asked goes on
                // in the new image (the slots' phases cross it).
                for w in self.waiters.drain(..) {
                    let _ = w.reply.send(Err(Error::Interrupted));
                }
                self.suspending = true;
            }
            Command::RunHelper { target, rule, argv } => {
                if !self.shutting_down && !argv.is_empty() {
                    self.run_helper(&target, rule, argv);
                } else {
                    self.helpers.release(&rule);
                }
            }
            Command::Probe(note) => self.probe_changed(note, now),
            Command::Notify { pid, message } => self.notified(pid, message, now),
            Command::TreesChanged => {
                for row in self.procs.values_mut().filter(|p| !p.reaped && p.exited.is_some() && p.cgroup.is_some()) {
                    row.check = Some((now, GROUP_CHECK_MIN));
                }
            }
            Command::Fired { target, pid, text } => {
                let sink = self.sink(&target, pid);
                sink.write(&[text.into_bytes()]);
            }
            Command::RestartProcess { entry, pid, starttime } => {
                let Some(i) = self.index_of(&entry) else { return };
                let same = self.row_of(pid).is_some_and(|gen| self.procs[&gen].starttime() == starttime);
                let slot = self.entries[i].slots.iter().find(|(_, s)| s.slot.pid() == Some(pid)).map(|(k, _)| *k);
                if let (true, Some(index)) = (same, slot) {
                    self.apply(i, index, Event::Recover { now, why: lifecycle::Recovery::Rule });
                }
            }
        }
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        if self.shutting_down {
            return None;
        }
        self.entries.iter().position(|e| e.config.name == name)
    }

    /// Adds missing slots below the target and stops those at or above it.
    fn reconcile(&mut self, i: usize, now: Instant) {
        let e = &self.entries[i];
        let ending = self.shutting_down || e.removed;
        // An entry that is going away stops after those that follow it
        // (`stop_in_order` comes back to it).
        if ending && !self.may_stop(i) {
            return;
        }
        self.entries[i].stop_begun = ending;
        let e = &self.entries[i];
        let target = if ending { 0 } else { e.target };
        for index in 0..target {
            match self.entries[i].slots.entry(index) {
                // Being stopped for good by an earlier scale down: kept.
                std::collections::btree_map::Entry::Occupied(_) => self.apply(i, index, Event::Keep),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(SlotRun::new(now));
                }
            }
        }
        let extra: Vec<usize> = self.entries[i].slots.range(target..).map(|(k, _)| *k).collect();
        for index in extra.into_iter().rev() {
            self.apply(i, index, Event::Stop { now });
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.stop_watcher();
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(Error::ShuttingDown));
        }
        for row in self.procs.values_mut() {
            if let Role::Helper { kill_at, killed: false, .. } | Role::Stray { kill_at, killed: false } = &mut row.role
            {
                *kill_at = (*kill_at).min(later(now, LOOSE_GRACE));
                row.signal(Signal::SIGTERM);
            }
        }
        for i in 0..self.entries.len() {
            self.reconcile(i, now);
        }
    }

    /// Shutdown is done when every slot is gone — or has outlived SIGKILL,
    /// since nothing more can be done for it — and so is every helper.
    fn finished(&self, now: Instant) -> bool {
        let slots_done = self
            .entries
            .iter()
            .flat_map(|e| e.slots.values())
            .all(|s| matches!(s.slot.phase, Phase::Unkillable { .. }));
        let loose_done = self.procs.values().all(|p| match p.role {
            Role::Helper { kill_at, .. } | Role::Stray { kill_at, .. } => p.reaped || now >= later(kill_at, KILL_GRACE),
            _ => true,
        });
        slots_done && loose_done
    }

    fn next_deadline(&self) -> Option<Instant> {
        // A start held back (waiting for `.after`, or the entry ending)
        // is looked at again when something changes, not on a clock.
        let slots = self.entries.iter().enumerate().flat_map(|(i, e)| {
            let held = self.held(i) || e.drain_held;
            e.slots.values().filter_map(move |s| match s.slot.phase {
                Phase::Pending { .. } if held => None,
                Phase::Running { .. } => s.watchdog_at(),
                _ => s.slot.deadline(),
            })
        });
        let rows = self.procs.values().filter(|p| !p.reaped).flat_map(|p| {
            let kill = match p.role {
                Role::Helper { kill_at, killed, .. } | Role::Stray { kill_at, killed } => {
                    Some(if killed { later(kill_at, KILL_GRACE) } else { kill_at })
                }
                _ => None,
            };
            p.check.map(|(at, _)| at).into_iter().chain(kill)
        });
        slots.chain(rows).min()
    }

    fn fire_due(&mut self, now: Instant) {
        // Spawns come in batches: a scale to thousands must not keep the
        // loop from answering status and notes in between.
        let mut spawns = 0;
        for i in 0..self.entries.len() {
            let held = self.held(i);
            let due: Vec<(usize, bool)> = self.entries[i]
                .slots
                .iter()
                .filter(|(_, s)| s.slot.deadline().is_some_and(|d| d <= now))
                .map(|(k, s)| (*k, matches!(s.slot.phase, Phase::Pending { .. })))
                .collect();
            self.watchdog_due(i, now);
            if held && due.iter().any(|(_, spawn)| *spawn) {
                self.announce_wait(i);
            }
            let drain_held = !held && due.iter().any(|(_, spawn)| *spawn) && self.draining_over(i);
            if drain_held && !self.entries[i].drain_held {
                let name = self.entries[i].config.name.clone();
                let text = "Waiting for the output of ended processes to be written before starting more.";
                self.options.console.entry_event(&name, &name, text);
            }
            self.entries[i].drain_held = drain_held;
            for (index, spawn) in due {
                if spawn && (held || drain_held) {
                    continue;
                }
                if spawn {
                    if spawns == SPAWN_BATCH {
                        continue;
                    }
                    spawns += 1;
                }
                self.apply(i, index, Event::Due { now });
            }
        }
        for row in self.procs.values_mut().filter(|p| !p.reaped) {
            if let Role::Helper { kill_at, killed, .. } | Role::Stray { kill_at, killed } = &mut row.role {
                if *kill_at <= now && !*killed {
                    *killed = true;
                    *kill_at = now;
                    row.signal(Signal::SIGKILL);
                }
            }
        }
    }

    /// Whether more of entry `i`'s ended processes still have output being
    /// written (their monitors not closed: the log cannot take it, a full
    /// disk) than it has slots, plus [`DRAIN_SLACK`]: its starts then wait,
    /// so that a restarting entry does not keep a thread and two pipes
    /// for every process it ever ran while its log is stuck. A burst of
    /// exits of every slot at once stays below it.
    fn draining_over(&self, i: usize) -> bool {
        let e = &self.entries[i];
        let name = e.config.name.as_str();
        let draining = self
            .procs
            .values()
            .filter(|p| p.reaped && p.monitor.is_some())
            .filter(|p| matches!(&p.role, Role::Slot { entry, .. } | Role::Pipes { entry } if entry == name))
            .count();
        draining > e.target + DRAIN_SLACK
    }

    /// Feeds `event` to slot `index` of entry `i` and performs the effects.
    fn apply(&mut self, i: usize, index: usize, event: Event) {
        let entry = &mut self.entries[i];
        let Some(run) = entry.slots.get_mut(&index) else {
            return;
        };
        let policy = policy_of(&entry.config);
        let (next, effects) = lifecycle::step(run.slot, &policy, event);
        let became_unkillable = !matches!(run.slot.phase, Phase::Unkillable { .. });
        if matches!(run.slot.phase, Phase::Running { .. }) && !matches!(next.phase, Phase::Running { .. }) {
            // Probes and keep-alives are for running processes only.
            run.ready = false;
            if let Some(h) = &mut run.health {
                h.watchdog_at = None;
            }
            if let Some(mut p) = run.take_prober() {
                p.stop();
                self.old_probers.push(p);
            }
        }
        run.slot = next;
        if let (true, Phase::Unkillable { pid, then, .. }) = (became_unkillable, next.phase) {
            self.unkillable(i, index, pid, then);
        }
        for effect in effects {
            match effect {
                Effect::Spawn => {
                    let event = self.spawn(i, index);
                    let failed = matches!(event, Event::SpawnFailed { .. });
                    self.apply(i, index, event);
                    if failed {
                        self.count_towards_give_up(i, index, Instant::now());
                    }
                }
                Effect::Signal { pid, signal } => match self.row_of(pid) {
                    Some(gen) => {
                        // What was said of the stop goes before what the process says of it.
                        self.options.console.release();
                        self.procs[&gen].signal(signal)
                    }
                    None => log::error!("no process table row for {pid}: {signal} not sent"),
                },
                Effect::CountRestart => self.entries[i].restarts += 1,
                Effect::CountRequestedRestart => {
                    self.entries[i].restarts += 1;
                    self.entries[i].restarts_requested += 1;
                }
                Effect::Vacate => {
                    self.entries[i].slots.remove(&index);
                }
            }
        }
    }

    /// Slot `index` of entry `i` became unkillable: its process's tree
    /// outlived SIGKILL. Under cgroup containment, unless the slot is going
    /// away anyway, the tree is left in its cgroup (reported, reaped when it
    /// empties) and the slot goes on as after an exit: its next process
    /// starts in a fresh cgroup. A process group cannot be set aside like
    /// that, so without cgroups the slot waits.
    fn unkillable(&mut self, i: usize, index: usize, pid: i32, then: AfterStop) {
        let name = self.entries[i].config.name.clone();
        let Some(gen) = self.row_of(pid) else { return };
        let row = self.procs.get_mut(&gen).expect("row_of found it");
        let Some(cgroup) = &row.cgroup else {
            self.options.console.event(&name, pid, "Its process group outlived SIGKILL: waiting for it.");
            return;
        };
        let n = cgroup.pids().len();
        let cgroup_name = cgroup.name().to_string();
        if then == AfterStop::Vacate {
            let text = format!("{n} process(es) in its cgroup {cgroup_name} outlived SIGKILL: waiting for them.");
            self.options.console.event(&name, pid, &text);
            return;
        }
        row.role = Role::Stuck { entry: name.clone(), index };
        let text = format!(
            "{n} process(es) in its cgroup {cgroup_name} outlived SIGKILL: left there, and the slot goes on in a fresh cgroup."
        );
        self.options.console.event(&name, pid, &text);
        let now = Instant::now();
        let e = &mut self.entries[i];
        e.record_exit(index, ChildExit::Unknown, sys::unix_now(), then == AfterStop::Respawn, now);
        let last = then != AfterStop::Respawn && self.give_up_due(i, index, now);
        let exit = ChildExit::Unknown;
        self.apply(i, index, if last { Event::LastExit { exit, now } } else { Event::Exited { exit, now } });
        if last {
            self.gave_up(i, index);
        }
        self.restart_bound(&name, pid, now);
    }

    /// Starts slot `index` of entry `i` and says how that went.
    fn spawn(&mut self, i: usize, index: usize) -> Event {
        let gen = self.new_gen();
        let config = &self.entries[i].config;
        let name = config.name.clone();
        let notify = if config.uses_notify() { self.notify_name() } else { None };
        let config = &self.entries[i].config;
        let spawned =
            self.spawn_in(&name, &index.to_string(), gen, |fd| child::spawn(config, index, fd, notify.as_deref()));
        let (spawned, cgroup) = match spawned {
            Ok(s) => s,
            Err(e) => {
                let command = config.command.clone();
                self.options.console.entry_event(
                    &name,
                    &format!("{name}.?"),
                    &format!("Cannot start {command:?}: {e}."),
                );
                if let Some(run) = self.entries[i].slots.get_mut(&index) {
                    run.error = Some(format!("cannot start {command:?}: {e}"));
                }
                return Event::SpawnFailed { now: Instant::now() };
            }
        };
        let pid = spawned.pid;
        // Its starttime from the clock around the clone, mostly: the monitor
        // then does not read `/proc/PID/stat` (it does when this is `None`).
        let known = Known { starttime: spawned.starttime, ..Known::default() };
        let started_at = sys::unix_now();
        let now = Instant::now();
        if let Some(run) = self.entries[i].slots.get_mut(&index) {
            run.started_at = started_at;
            run.error = None;
        }
        let started = format!("Started at {started_at}.");
        self.options.console.event(&name, pid, &started);
        let role = Role::Slot { entry: name.clone(), index };
        if let Err(e) =
            self.adopt_process(gen, pid, role, streams_of(spawned), &name, cgroup, known, Some(started_at), None, false)
        {
            log::error!("cannot watch {name}.{pid}: {e}");
            if let Some(run) = self.entries[i].slots.get_mut(&index) {
                run.error = Some(format!("cannot watch the process: {e}"));
            }
            return Event::SpawnFailed { now };
        }
        self.start_health(i, index, gen, pid, false, now);
        self.entries[i].announced_wait = false;
        Event::Spawned { pid, now }
    }

    /// How a monitor tells the core what it saw.
    fn notifier(&self) -> impl Fn(ChildNote) + Send + 'static {
        let tx = self.tx.clone();
        move |note| {
            let _ = tx.send(Command::Child(note));
        }
    }

    fn sink(&mut self, entry: &str, pid: i32) -> LineSink {
        let limit = self.entries.iter().find(|e| e.config.name == entry).map_or(LINE_LIMIT, |e| e.config.line_limit);
        LineSink::new(entry, pid, self.log_of(entry), self.options.console.clone(), limit)
    }

    fn log_of(&mut self, entry: &str) -> Option<Arc<LogFile>> {
        let dir = self.options.log_dir.as_ref()?;
        let (size, keep) = self
            .entries
            .iter()
            .find(|e| e.config.name == entry)
            .map_or((logfile::LOG_SIZE, logfile::LOG_KEEP), |e| (e.config.log_size, e.config.log_keep));
        if let Some(f) = self.logs.get(entry) {
            f.set_rotation(size, keep);
            return Some(f.clone());
        }
        let path = dir.join(format!("{entry}.log"));
        match LogFile::open(&path, size, keep) {
            Ok(f) => {
                self.logs.insert(entry.to_string(), f.clone());
                Some(f)
            }
            Err(e) => {
                log::warn!("cannot open {}: {e}", path.display());
                None
            }
        }
    }

    fn answer_waiters(&mut self, now: Instant) {
        if self.waiters.is_empty() {
            return;
        }
        let report = self.watcher.as_ref().map(Watcher::report).unwrap_or_default();
        let mut waiting = std::mem::take(&mut self.waiters);
        waiting.retain(|w| {
            let Some(i) = self.entries.iter().position(|e| e.config.name == w.entry) else {
                let _ = w.reply.send(Err(Error::UnknownEntry(w.entry.clone())));
                return false;
            };
            let e = &self.entries[i];
            // A start held back for `.after` is where it will stay for now:
            // answered, with the entry `waiting`.
            let held = self.held(i) || e.drain_held;
            let settled = e.slots.values().all(|s| match s.slot.phase {
                Phase::Stopping { .. } | Phase::Killing { .. } => false,
                Phase::Pending { due } => due > now || held,
                _ => true,
            });
            if settled {
                let unkillable: Vec<u32> = e
                    .slots
                    .values()
                    .filter_map(|s| match s.slot.phase {
                        Phase::Unkillable { pid, .. } => Some(pid as u32),
                        _ => None,
                    })
                    .collect();
                let failed = e.slots.values().find_map(|s| s.error.as_ref().filter(|_| s.slot.pid().is_none()));
                let answer = match failed {
                    _ if !unkillable.is_empty() => {
                        Err(Error::Unkillable { entry: e.config.name.clone(), pids: unkillable })
                    }
                    Some(error) => Err(Error::Incomplete {
                        entry: w.entry.clone(),
                        running: e.slots.values().filter(|s| s.slot.pid().is_some()).count(),
                        target: e.target,
                        error: error.clone(),
                    }),
                    _ => {
                        let figures = self.figures();
                        let shown = entry_status(e, &report, &figures, self.waiting_for(i));
                        Ok(Unread::new(shown, figures.reads.into_inner()))
                    }
                };
                let _ = w.reply.send(answer);
            }
            !settled
        });
        self.waiters = waiting;
    }

    /// Waits for the monitors that said [`ChildNote::Closed`] (their threads
    /// are ending, if not gone already).
    /// Lets the mailbox hear the exits of the processes adopted since the
    /// last wait (once their monitors run: a child that exited before is
    /// heard at once). Not done at each start: off a restart's path and out
    /// of a reload's unwatched window.
    fn watch_new(&mut self) {
        for gen in std::mem::take(&mut self.to_watch) {
            let Some(row) = self.procs.get(&gen) else { continue };
            let Some(pidfd) = row.monitor.as_ref().and_then(|m| m.pidfd()) else { continue };
            if row.reaped || row.exited.is_some() {
                continue;
            }
            if let Err(e) = self.rx.watch(pidfd, gen) {
                log::warn!("cannot watch the pidfd of {}: {e}; its monitor will tell", row.pid);
            }
        }
    }

    /// Reaps the leaders that `group_gone` took out of the table this
    /// round, after the restarts it led to, and lets their monitors drain
    /// and end. Each PID is reaped once, here: until then its zombie keeps
    /// the PID from being given to anyone else.
    fn finish_reaps(&mut self) {
        for (gen, pid) in std::mem::take(&mut self.reaps) {
            sys::reap(pid);
            crate::spawn::reaped(pid);
            if let Some(m) = self.procs.get(&gen).and_then(|row| row.monitor.as_ref()) {
                m.finish();
            }
        }
    }

    fn join_closed(&mut self) {
        for m in self.closed.drain(..) {
            m.join();
        }
    }

    /// Stops monitors whose pipes are still held open (by escaped
    /// grandchildren) and writes what they had read, so no line is lost.
    fn close_monitors(&mut self) {
        self.finish_reaps();
        self.join_closed();
        for (_, row) in std::mem::take(&mut self.procs) {
            if let Some(monitor) = row.monitor {
                monitor.end();
            }
        }
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(Error::CoreGone));
        }
    }

    /// How many children the slots hold.
    pub fn process_count(&self) -> usize {
        self.entries.iter().flat_map(|e| e.slots.values()).filter(|s| s.slot.pid().is_some()).count()
    }

    /// Replaces what status reports about the instance's history.
    pub fn set_info(&mut self, info: InfoSnapshot) {
        self.options.info = info;
    }

    /// Records how a reload attempt ended.
    pub fn record_reload(&mut self, outcome: ReloadOutcome) {
        if !outcome.ok {
            self.options.info.reloads_failed += 1;
        }
        self.options.info.last_reload = Some(outcome);
    }

    /// What status names of each process, to be read by the asker (see `figures`).
    fn figures(&self) -> Figures<'_> {
        let rows = self.procs.iter().filter(|(_, p)| !p.reaped).map(|(gen, p)| (p.pid, *gen)).collect();
        let memory = self.options.fence.tree().is_some_and(|t| t.has_memory());
        Figures { core: self, rows, reads: RefCell::new(Reads::new(memory)) }
    }

    /// The whole state, as `GET /status` shows it, with its figures still
    /// to read ([`Unread::read`], on the asker's thread).
    pub fn status(&self) -> Unread<Status> {
        let info = &self.options.info;
        let report = self.watcher.as_ref().map(Watcher::report).unwrap_or_default();
        let figures = self.figures();
        let entries = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| entry_status(e, &report, &figures, self.waiting_for(i)))
            .collect();
        let status = Status {
            pid: std::process::id(),
            started_at: info.started_at,
            reexec_count: info.reexec_count,
            reexeced_at: info.reexeced_at,
            last_reload: info.last_reload.clone(),
            reloads_failed: info.reloads_failed,
            entries,
            containment: match &self.options.fence {
                Fence::Cgroup(tree) => Containment {
                    kind: "cgroup".to_string(),
                    reason: None,
                    cgroup: Some(tree.root().display().to_string()),
                },
                Fence::ProcessGroup(why) => {
                    Containment { kind: "process-group".to_string(), reason: Some(why.clone()), cgroup: None }
                }
            },
            watches: self
                .config
                .watches
                .iter()
                .map(|w| WatchStatus {
                    name: w.name.clone(),
                    pattern: w.pattern.as_str().to_string(),
                    children: w.children,
                    matched: report.matched.get(&w.name).cloned().unwrap_or_default(),
                    rules: rule_status(&w.name, &w.rules, &report),
                })
                .collect(),
        };
        Unread::new(status, figures.reads.into_inner())
    }
}

fn policy_of(c: &EntryConfig) -> Policy {
    Policy {
        restart: c.restart,
        delay: c.delay,
        stop_signal: c.stop_signal,
        stop_timeout: c.stop_timeout,
        success: c.success_codes,
        stop_codes: c.stop_codes,
    }
}

fn rule_status(owner: &str, rules: &[Rule], report: &Report) -> Vec<RuleStatus> {
    rules
        .iter()
        .map(|r| RuleStatus {
            trigger: r.trigger.to_string(),
            action: r.action.to_string(),
            fired: report.fired(owner, r),
            skipped: report.skipped(owner, r),
        })
        .collect()
}

/// What status names of processes and their cgroups, for one answer: the
/// reading is left to the asker (see `figures`), never done by the core.
struct Figures<'a> {
    core: &'a Core,
    /// Unreaped rows by PID.
    rows: HashMap<i32, u64>,
    /// The cgroups named so far.
    reads: RefCell<Reads>,
}

impl Figures<'_> {
    /// The name of the cgroup of `pid`'s row, named for reading.
    fn cgroup(&self, pid: i32) -> Option<String> {
        let gen = *self.rows.get(&pid)?;
        let cgroup = self.core.procs.get(&gen)?.cgroup.as_ref()?;
        Some(self.reads.borrow_mut().name(gen, cgroup))
    }

    /// The stuck trees of entry `entry` (their processes counted by the asker).
    fn unkillable(&self, entry: &str) -> Vec<UnkillableStatus> {
        self.core
            .procs
            .iter()
            .filter_map(|(gen, p)| match &p.role {
                Role::Stuck { entry: e, index } if e == entry && !p.reaped => {
                    let cgroup = self.reads.borrow_mut().name(*gen, p.cgroup.as_ref()?);
                    Some(UnkillableStatus { index: *index, pid: p.pid as u32, cgroup, processes: 0 })
                }
                _ => None,
            })
            .collect()
    }
}

/// `waiting_for`: the entries it follows that are not ready, while its starts are held for them.
fn entry_status(e: &EntryRun, report: &Report, figures: &Figures, waiting_for: Vec<String>) -> EntryStatus {
    let now = Instant::now();
    let cgroups: BTreeMap<usize, String> =
        e.slots.iter().filter_map(|(index, s)| Some((*index, figures.cgroup(s.slot.pid()?)?))).collect();
    let pending = e.slots.values().any(|s| matches!(s.slot.phase, Phase::Pending { .. }));
    let state = if e.slots.values().any(|s| matches!(s.slot.phase, Phase::Failed)) {
        EntryState::Failed
    } else if pending && !waiting_for.is_empty() {
        EntryState::Waiting
    } else if e.slots.values().any(|s| matches!(s.slot.phase, Phase::Pending { .. }) && s.slot.crashes > 0) {
        EntryState::Backoff
    } else if e.slots.values().any(|s| !matches!(s.slot.phase, Phase::Idle)) {
        EntryState::Running
    } else {
        EntryState::Stopped
    };
    EntryStatus {
        name: e.config.name.clone(),
        command: e.config.command.clone(),
        args: e.config.args.clone(),
        delay_ms: e.config.delay.as_millis() as u64,
        stop_timeout_ms: e.config.stop_timeout.as_millis() as u64,
        count: e.target,
        configured_count: e.config.count,
        restarts: e.restarts,
        restarts_requested: e.restarts_requested,
        state,
        flapping: e.flapping(now),
        processes: e
            .slots
            .iter()
            .filter_map(|(index, s)| {
                let Phase::Running { pid, .. } = s.slot.phase else { return None };
                Some(ProcessStatus { pid: pid as u32, index: *index, started_at: s.started_at, rss_bytes: None })
            })
            .collect(),
        last_exits: e
            .last_exits
            .iter()
            .map(|(index, (at, exit))| {
                let (code, signal) = match exit {
                    ChildExit::Code(c) => (Some(*c), None),
                    ChildExit::Signal(s) => (None, Some(*s)),
                    ChildExit::Unknown => (None, None),
                };
                ExitStatus { index: *index, at: *at, code, signal }
            })
            .collect(),
        slots: e
            .slots
            .iter()
            .map(|(index, s)| SlotStatus {
                index: *index,
                state: slot_state(&s.slot),
                pid: s.slot.pid().map(|p| p as u32),
                ready: e.config.ready.as_ref().map(|_| s.ready && matches!(s.slot.phase, Phase::Running { .. })),
                error: s.error.clone(),
                cgroup: cgroups.get(index).cloned(),
                tree: None,
            })
            .collect(),
        rules: rule_status(&e.config.name, &e.config.rules, report),
        tree: None,
        unkillable: figures.unkillable(&e.config.name),
        after: e.config.follows().cloned().collect(),
        waiting_for: if pending { waiting_for } else { Vec::new() },
    }
}

fn slot_state(slot: &Slot) -> SlotState {
    match slot.phase {
        Phase::Idle => SlotState::Idle,
        Phase::Pending { .. } if slot.crashes > 0 => SlotState::Backoff,
        Phase::Pending { .. } => SlotState::Pending,
        Phase::Running { .. } => SlotState::Running,
        Phase::Stopping { .. } | Phase::Killing { .. } => SlotState::Stopping,
        Phase::Unkillable { .. } => SlotState::Unkillable,
        Phase::Failed => SlotState::Failed,
    }
}

/// Tells the exit of `row`'s process: `text` (`Exited at …`, or `Cannot
/// start …` in its place) is recorded as an event now; its monitor shows
/// it on the console after the process's last output line and ends the
/// log with it (see `child::run`). Without a monitor, the core shows it.
fn tell_exit(console: &ConsoleHandle, row: &mut Proc, name: &str, text: String) {
    match &row.monitor {
        Some(m) => {
            console.record(name, row.pid, &text);
            m.set_closing(text.clone());
        }
        None => console.event(name, row.pid, &text),
    }
    row.told = Some(text);
}

/// The pipes of a freshly spawned process, nothing read yet.
fn streams_of(spawned: child::Spawned) -> Vec<Stream> {
    vec![Stream::new(spawned.stdout, LineSplitter::default()), Stream::new(spawned.stderr, LineSplitter::default())]
}

/// How long a stop of every child may take: the largest stop timeout, plus margin.
/// Entries stop one after the other along `.after` chains: the longest
/// chain's stop timeouts add up.
pub(crate) fn max_stop_wait(config: &Config) -> Duration {
    max_stop_wait_for(config.longest_stop_chain())
}

/// How long a stop may take whose longest stop timeout is `stop_timeout`:
/// that, then the grace of a group that outlives SIGKILL, plus 10 s.
pub(crate) fn max_stop_wait_for(stop_timeout: Duration) -> Duration {
    stop_timeout.saturating_add(KILL_GRACE).saturating_add(Duration::from_secs(10))
}
