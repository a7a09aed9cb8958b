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

mod handover;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::child::{self, ChildNote, Monitor, Stream};
use crate::config::{Config, EntryConfig, Rule};
use crate::handoff::{CoreSnapshot, InfoSnapshot};
use crate::lifecycle::{self, ChildExit, Effect, Event, Phase, Policy, Slot};
use crate::output::{ConsoleHandle, LineSink, LineSplitter};
use crate::status::{EntryState, EntryStatus, ProcessStatus, ReloadOutcome, RuleStatus, Status, WatchStatus};
use crate::watch::{self, Hands, Report, Watcher};
use crate::{sys, Error, Signal};

/// A request to the core. Replies travel on the channel inside the command.
pub(crate) enum Command {
    /// From a child's monitor thread.
    Child(ChildNote),
    /// Set an entry's number of processes; answered once the change is done.
    Scale { entry: String, count: usize, reply: Sender<Result<EntryStatus, Error>> },
    /// Gracefully restart an entry's processes; answered once they are back.
    Restart { entry: String, reply: Sender<Result<EntryStatus, Error>> },
    /// Report the state.
    Status { reply: Sender<Status> },
    /// Stop every child, then return from [`Core::run`].
    Shutdown,
    /// Record how a reload attempt ended (reported by status).
    ReloadOutcome(ReloadOutcome),
    /// Once pending requests are answered, stop the monitors and return the
    /// whole state from [`Core::run`]; the children keep running.
    Suspend,
    /// Run an `exec` action's program; its output goes to `target`'s log.
    RunHelper { target: String, argv: Vec<String> },
    /// Gracefully restart the process `pid` of `entry` (a `restart` action).
    RestartProcess { entry: String, pid: i32 },
    /// A rule fired: say so on the console and in `target`'s log.
    Fired { target: String, pid: i32, text: String },
}

/// How long an `exec` action's program may run before it is killed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `exec` action program.
struct Helper {
    pid: i32,
    target: String,
    kill_at: Instant,
}

/// The watcher's way back into the core.
struct CoreHands {
    tx: Sender<Command>,
}

impl Hands for CoreHands {
    fn run_helper(&self, target: &str, argv: Vec<String>) {
        let _ = self.tx.send(Command::RunHelper { target: target.to_string(), argv });
    }

    fn restart(&self, entry: &str, pid: i32) {
        let _ = self.tx.send(Command::RestartProcess { entry: entry.to_string(), pid });
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
}

/// An entry at run time: its configuration, target count and slots.
struct EntryRun {
    config: EntryConfig,
    /// The current target: the configured count or a run-time override.
    target: usize,
    restarts: u64,
    /// No longer in the configuration: stopping, then dropped.
    removed: bool,
    slots: BTreeMap<usize, SlotRun>,
}

impl EntryRun {
    fn new(config: EntryConfig) -> EntryRun {
        EntryRun { target: config.count, restarts: 0, removed: false, slots: BTreeMap::new(), config }
    }
}

struct SlotRun {
    slot: Slot,
    /// Unix time the slot's current process started.
    started_at: u64,
}

/// A process group whose leader exited with members left: SIGKILL at `kill_at`.
struct Leftover {
    pgid: i32,
    kill_at: Instant,
}

/// A command answered once its entry has settled.
struct Waiter {
    entry: String,
    reply: Sender<Result<EntryStatus, Error>>,
}

/// The supervision core. Build with [`Core::new`], then [`Core::run`].
pub(crate) struct Core {
    config: Config,
    entries: Vec<EntryRun>,
    monitors: HashMap<i32, Monitor>,
    leftovers: Vec<Leftover>,
    waiters: Vec<Waiter>,
    logs: HashMap<String, Arc<File>>,
    shutting_down: bool,
    suspending: bool,
    /// The watch thread, while any watch or rule exists.
    watcher: Option<Watcher>,
    /// Rate-limit clocks and counters while no watcher runs.
    watch_state: watch::State,
    helpers: Vec<Helper>,
    options: CoreOptions,
    tx: Sender<Command>,
    rx: Receiver<Command>,
}

impl Core {
    /// A core for `config`, reading commands from `rx` (`tx` is handed to monitors).
    pub fn new(config: Config, options: CoreOptions, tx: Sender<Command>, rx: Receiver<Command>) -> Core {
        let entries = config.entries.iter().cloned().map(EntryRun::new).collect();
        Core {
            config,
            entries,
            monitors: HashMap::new(),
            leftovers: Vec::new(),
            waiters: Vec::new(),
            logs: HashMap::new(),
            shutting_down: false,
            suspending: false,
            watcher: None,
            watch_state: watch::State::default(),
            helpers: Vec::new(),
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
        for i in 0..self.entries.len() {
            self.reconcile(i, Instant::now());
        }
        self.restart_watcher();
        loop {
            let now = Instant::now();
            self.entries.retain(|e| !(e.removed && e.slots.is_empty()));
            self.fire_due(now);
            self.answer_waiters(now);
            if self.shutting_down && self.finished() {
                break;
            }
            if self.suspending && !self.shutting_down && self.waiters.is_empty() {
                if self.drain_before_suspend() {
                    continue;
                }
                return CoreExit::Suspended(Box::new(self.suspend()));
            }
            let command = match self.next_deadline() {
                Some(at) => match self.rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => Some(Command::Shutdown),
                },
                None => Some(self.rx.recv().unwrap_or(Command::Shutdown)),
            };
            if let Some(command) = command {
                self.handle(command);
            }
        }
        self.stop_watcher();
        self.close_monitors();
        CoreExit::Shutdown
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
        let targets = watch::targets(&self.config);
        if targets.is_empty() {
            return;
        }
        let hands = CoreHands { tx: self.tx.clone() };
        match Watcher::start(targets, std::mem::take(&mut self.watch_state), hands) {
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
    fn run_helper(&mut self, target: &str, argv: Vec<String>) {
        let spawned = match child::spawn_helper(&argv) {
            Ok(s) => s,
            Err(e) => {
                self.options.console.tagged(&format!("{target}.?"), &format!("Cannot run {:?}: {e}.", argv[0]));
                return;
            }
        };
        let pid = spawned.pid;
        let sink = self.sink(target, pid);
        let streams = vec![
            Stream { fd: spawned.stdout, splitter: LineSplitter::default() },
            Stream { fd: spawned.stderr, splitter: LineSplitter::default() },
        ];
        if let Err(e) = self.watch(pid, streams, sink, false) {
            log::error!("cannot watch helper {target}.{pid}: {e}");
            sys::signal_group(pid, Signal::SIGKILL);
            sys::reap(pid);
            return;
        }
        self.helpers.push(Helper { pid, target: target.to_string(), kill_at: Instant::now() + HELPER_TIMEOUT });
    }

    fn handle(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Child(ChildNote::Exited { pid }) => self.child_exited(pid, now),
            Command::Child(ChildNote::Closed { pid }) => {
                if let Some(m) = self.monitors.remove(&pid) {
                    m.join();
                }
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
                for index in indexes {
                    self.apply(i, index, Event::Restart { now });
                }
                self.reconcile(i, now);
                self.waiters.push(Waiter { entry, reply });
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown => self.begin_shutdown(now),
            Command::ReloadOutcome(outcome) => self.options.info.last_reload = Some(outcome),
            Command::Suspend => self.suspending = true,
            Command::RunHelper { target, argv } => {
                if !self.shutting_down && !argv.is_empty() {
                    self.run_helper(&target, argv);
                }
            }
            Command::Fired { target, pid, text } => {
                let sink = self.sink(&target, pid);
                sink.write(&[text.into_bytes()]);
            }
            Command::RestartProcess { entry, pid } => {
                let Some(i) = self.index_of(&entry) else { return };
                let slot = self.entries[i].slots.iter().find(|(_, s)| s.slot.pid() == Some(pid)).map(|(k, _)| *k);
                if let Some(index) = slot {
                    self.apply(i, index, Event::Restart { now });
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
        let target = if self.shutting_down || e.removed { 0 } else { e.target };
        for index in 0..target {
            self.entries[i].slots.entry(index).or_insert(SlotRun { slot: Slot::new(now), started_at: 0 });
        }
        let extra: Vec<usize> = self.entries[i].slots.range(target..).map(|(k, _)| *k).collect();
        for index in extra.into_iter().rev() {
            self.apply(i, index, Event::Stop { now });
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        self.stop_watcher();
        for h in &mut self.helpers {
            sys::signal_group(h.pid, Signal::SIGTERM);
            h.kill_at = h.kill_at.min(now + Duration::from_secs(5));
        }
        for i in 0..self.entries.len() {
            self.reconcile(i, now);
        }
    }

    fn finished(&self) -> bool {
        self.entries.iter().all(|e| e.slots.is_empty()) && self.leftovers.is_empty() && self.helpers.is_empty()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let slots = self.entries.iter().flat_map(|e| e.slots.values()).filter_map(|s| s.slot.deadline());
        let leftovers = self.leftovers.iter().map(|l| l.kill_at);
        let helpers = self.helpers.iter().map(|h| h.kill_at);
        slots.chain(leftovers).chain(helpers).min()
    }

    fn fire_due(&mut self, now: Instant) {
        for i in 0..self.entries.len() {
            let due: Vec<usize> = self.entries[i]
                .slots
                .iter()
                .filter(|(_, s)| s.slot.deadline().is_some_and(|d| d <= now))
                .map(|(k, _)| *k)
                .collect();
            for index in due {
                self.apply(i, index, Event::Due { now });
            }
        }
        for h in self.helpers.iter_mut().filter(|h| h.kill_at <= now) {
            sys::signal_group(h.pid, Signal::SIGKILL);
            h.kill_at = now + Duration::from_secs(3600);
        }
        self.leftovers.retain(|l| {
            if l.kill_at > now {
                return true;
            }
            sys::signal_group(l.pgid, Signal::SIGKILL);
            false
        });
    }

    /// Feeds `event` to slot `index` of entry `i` and performs the effects.
    fn apply(&mut self, i: usize, index: usize, event: Event) {
        let entry = &mut self.entries[i];
        let Some(run) = entry.slots.get_mut(&index) else {
            return;
        };
        let policy = policy_of(&entry.config);
        let (next, effects) = lifecycle::step(run.slot, &policy, event);
        run.slot = next;
        for effect in effects {
            match effect {
                Effect::Spawn => {
                    let event = self.spawn(i, index);
                    self.apply(i, index, event);
                }
                Effect::Signal { pid, signal } => sys::signal_group(pid, signal),
                Effect::CountRestart => self.entries[i].restarts += 1,
                Effect::Vacate => {
                    self.entries[i].slots.remove(&index);
                }
            }
        }
    }

    /// Starts slot `index` of entry `i` and says how that went.
    fn spawn(&mut self, i: usize, index: usize) -> Event {
        let config = &self.entries[i].config;
        let name = config.name.clone();
        let spawned = match child::spawn(config, index) {
            Ok(s) => s,
            Err(e) => {
                self.options.console.tagged(&format!("{name}.?"), &format!("Cannot start {:?}: {e}.", config.command));
                return Event::SpawnFailed { now: Instant::now() };
            }
        };
        let pid = spawned.pid;
        let started_at = sys::unix_now();
        let now = Instant::now();
        if let Some(run) = self.entries[i].slots.get_mut(&index) {
            run.started_at = started_at;
        }
        self.options.console.event(&name, pid, &format!("Started at {started_at}."));
        let sink = self.sink(&name, pid);
        let streams = vec![
            Stream { fd: spawned.stdout, splitter: LineSplitter::default() },
            Stream { fd: spawned.stderr, splitter: LineSplitter::default() },
        ];
        match self.watch(pid, streams, sink, false) {
            Ok(()) => {}
            Err(e) => {
                // Without a monitor nobody would notice the exit: stop it now.
                log::error!("cannot watch {name}.{pid}: {e}");
                sys::signal_group(pid, Signal::SIGKILL);
                sys::reap(pid);
                return Event::SpawnFailed { now };
            }
        }
        Event::Spawned { pid, now }
    }

    /// Starts the monitor of `pid` and remembers it.
    fn watch(&mut self, pid: i32, streams: Vec<Stream>, sink: LineSink, reaped: bool) -> std::io::Result<()> {
        let tx = self.tx.clone();
        let monitor = Monitor::start(pid, streams, sink, reaped, move |note| {
            let _ = tx.send(Command::Child(note));
        })?;
        self.monitors.insert(pid, monitor);
        Ok(())
    }

    fn sink(&mut self, entry: &str, pid: i32) -> LineSink {
        LineSink { entry: entry.to_string(), pid, log: self.log_of(entry), console: self.options.console.clone() }
    }

    fn log_of(&mut self, entry: &str) -> Option<Arc<File>> {
        let dir = self.options.log_dir.as_ref()?;
        if let Some(f) = self.logs.get(entry) {
            return Some(f.clone());
        }
        let path = dir.join(format!("{entry}.log"));
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => {
                let f = Arc::new(f);
                self.logs.insert(entry.to_string(), f.clone());
                Some(f)
            }
            Err(e) => {
                log::warn!("cannot open {}: {e}", path.display());
                None
            }
        }
    }

    /// Reaps `pid`, tells its slot, and stops what is left of its process group.
    fn child_exited(&mut self, pid: i32, now: Instant) {
        let exit = sys::reap(pid);
        let owner =
            self.entries.iter().enumerate().find_map(|(i, e)| {
                e.slots.iter().find(|(_, s)| s.slot.pid() == Some(pid)).map(|(index, _)| (i, *index))
            });
        let Some((i, index)) = owner else {
            if let Some(at) = self.helpers.iter().position(|h| h.pid == pid) {
                let helper = self.helpers.remove(at);
                let text = exit_text(exit, sys::unix_now()).replacen("Exited", "Action program exited", 1);
                self.options.console.event(&helper.target, pid, &text);
                if sys::group_exists(pid) {
                    sys::signal_group(pid, Signal::SIGKILL);
                }
            }
            return;
        };
        let config = &self.entries[i].config;
        let (name, stop_signal, stop_timeout) = (config.name.clone(), config.stop_signal, config.stop_timeout);
        self.options.console.event(&name, pid, &exit_text(exit, sys::unix_now()));
        if sys::group_exists(pid) {
            sys::signal_group(pid, stop_signal);
            self.leftovers.push(Leftover { pgid: pid, kill_at: now + stop_timeout });
        }
        self.apply(i, index, Event::Exited { exit, now });
    }

    fn answer_waiters(&mut self, now: Instant) {
        if self.waiters.is_empty() {
            return;
        }
        let report = self.watcher.as_ref().map(Watcher::report).unwrap_or_default();
        let mut waiting = std::mem::take(&mut self.waiters);
        waiting.retain(|w| {
            let Some(e) = self.entries.iter().find(|e| e.config.name == w.entry) else {
                let _ = w.reply.send(Err(Error::UnknownEntry(w.entry.clone())));
                return false;
            };
            let settled = e.slots.values().all(|s| match s.slot.phase {
                Phase::Stopping { .. } | Phase::Killing { .. } => false,
                Phase::Pending { due } => due > now,
                _ => true,
            });
            if settled {
                let _ = w.reply.send(Ok(entry_status(e, &report)));
            }
            !settled
        });
        self.waiters = waiting;
    }

    /// Stops monitors whose pipes are still held open (by escaped
    /// grandchildren) and writes what they had read, so no line is lost.
    fn close_monitors(&mut self) {
        for (_, monitor) in self.monitors.drain() {
            monitor.quiesce().drain_and_finish();
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
        self.options.info.last_reload = Some(outcome);
    }

    /// The whole state, as `GET /status` shows it.
    pub fn status(&self) -> Status {
        let info = &self.options.info;
        let report = self.watcher.as_ref().map(Watcher::report).unwrap_or_default();
        Status {
            pid: std::process::id(),
            started_at: info.started_at,
            reexec_count: info.reexec_count,
            reexeced_at: info.reexeced_at,
            last_reload: info.last_reload.clone(),
            entries: self.entries.iter().map(|e| entry_status(e, &report)).collect(),
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
        }
    }
}

fn policy_of(c: &EntryConfig) -> Policy {
    Policy { restart: c.restart, delay: c.delay, stop_signal: c.stop_signal, stop_timeout: c.stop_timeout }
}

fn rule_status(owner: &str, rules: &[Rule], report: &Report) -> Vec<RuleStatus> {
    rules
        .iter()
        .map(|r| RuleStatus {
            trigger: r.trigger.to_string(),
            action: r.action.to_string(),
            fired: report.fired(owner, r),
        })
        .collect()
}

fn entry_status(e: &EntryRun, report: &Report) -> EntryStatus {
    let state = if e.slots.values().any(|s| matches!(s.slot.phase, Phase::Pending { .. }) && s.slot.crashes > 0) {
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
        count: e.target,
        configured_count: e.config.count,
        restarts: e.restarts,
        state,
        processes: e
            .slots
            .iter()
            .filter_map(|(index, s)| {
                let pid = s.slot.pid()?;
                Some(ProcessStatus {
                    pid: pid as u32,
                    index: *index,
                    started_at: s.started_at,
                    rss_bytes: sys::rss_bytes(pid),
                })
            })
            .collect(),
        rules: rule_status(&e.config.name, &e.config.rules, report),
    }
}

/// The seed's exit line: `Exited at T with ExitSuccess.`
pub(crate) fn exit_text(exit: ChildExit, at: u64) -> String {
    match exit {
        ChildExit::Code(0) => format!("Exited at {at} with ExitSuccess."),
        ChildExit::Code(code) => format!("Exited at {at} with ExitFailure {code}."),
        ChildExit::Signal(sig) => {
            let name =
                Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {sig}"));
            format!("Exited at {at}, killed by {name}.")
        }
        ChildExit::Unknown => format!("Exited at {at} with an unknown status."),
    }
}

/// How long a stop of every child may take: the largest stop timeout, plus margin.
pub(crate) fn max_stop_wait(config: &Config) -> Duration {
    config.entries.iter().map(|e| e.stop_timeout).max().unwrap_or_default() + Duration::from_secs(10)
}
