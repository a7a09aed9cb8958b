//! How a core changes hands: [`Core::suspend`] stops the monitors and the
//! watcher and describes the whole run-time state as a [`CoreSnapshot`];
//! [`Core::restore`] rebuilds a core from one (verifying every child and
//! adopting every kept pipe); [`Core::reconfigure`] applies a new
//! configuration as a difference; [`Core::adopt`] takes over children found
//! in /proc when no snapshot could be read, with the output pipes found among
//! the inherited fds. Split from the loop itself so
//! each reads in one pass; it knows nothing of how the state crosses exec.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Adoption, Core, CoreOptions, EntryRun, FoundChild, Mailbox, Post, Proc, Role, SlotRun, Suspended};
use crate::budget::later;
use crate::child::{Known, Quiesced, Stream};
use crate::config::{Config, EntryConfig, WatchConfig};
use crate::handoff::{
    CoreSnapshot, DrainingSnapshot, EntrySnapshot, ExitSnapshot, ExitedSnapshot, HelperSnapshot, KeptFd,
    NotifySnapshot, PhaseSnapshot, ProcessSnapshot, SlotSnapshot, StreamSnapshot,
};
use crate::lifecycle::{AfterStop, ChildExit, Event, Phase, Slot};
use crate::output::LineSplitter;
use crate::{proc, sys, watch, Signal};

impl Core {
    /// Takes over children a previous image left without a readable
    /// snapshot: each whose entry and command line match (and whose slot is
    /// free) runs on in its slot; every other is stopped and reaped.
    /// Returns a line per child saying which.
    pub fn adopt(&mut self, found: Vec<FoundChild>) -> Vec<String> {
        let now = Instant::now();
        let mut report = Vec::new();
        for child in found {
            let slot = self.entries.iter().position(|e| {
                let argv: Vec<&String> = std::iter::once(&e.config.command).chain(&e.config.args).collect();
                child.entry.as_deref() == Some(e.config.name.as_str())
                    && child.cmdline.iter().collect::<Vec<_>>() == argv
            });
            let placed = slot.and_then(|i| {
                let index = child.index?;
                let e = &mut self.entries[i];
                if index >= e.target || e.slots.contains_key(&index) {
                    return None;
                }
                e.slots.insert(
                    index,
                    SlotRun::with(
                        Slot { phase: Phase::Running { pid: child.pid, since: now }, crashes: 0 },
                        sys::unix_now(),
                        None,
                    ),
                );
                Some((e.config.name.clone(), index))
            });
            let (role, name) = match &placed {
                Some((name, index)) => (Role::Slot { entry: name.clone(), index: *index }, name.clone()),
                None => {
                    (Role::Stray { kill_at: later(now, Duration::from_secs(10)), killed: false }, "stray".to_string())
                }
            };
            // Its pipes, read on where the previous image stopped (the bytes
            // that image held are lost with its snapshot).
            let streams = child.pipes.into_iter().map(|fd| Stream::new(fd, LineSplitter::default())).collect();
            let gen = self.new_gen();
            let cgroup = self.cgroup_at(None, child.pid);
            if let Err(e) =
                self.adopt_process(gen, child.pid, role, streams, &name, cgroup, Known::default(), None, None, false)
            {
                report.push(format!("cannot watch {name}.{}: {e}", child.pid));
                if let Some((name, index)) = placed {
                    if let Some(e) = self.entries.iter_mut().find(|e| e.config.name == name) {
                        e.slots.remove(&index);
                    }
                }
                continue;
            }
            if placed.is_some() {
                report.push(format!("Adopted {name}.{} ({}).", child.pid, child.cmdline.join(" ")));
            } else {
                sys::signal_group(child.pid, Signal::SIGTERM);
                report.push(format!("Stopping {} ({}): it matches no free slot.", child.pid, child.cmdline.join(" ")));
            }
        }
        report
    }

    /// Applies a new configuration as a difference: unchanged entries keep
    /// their processes; a changed count scales (a run-time override survives
    /// while the configured count stays the same); a changed command, args,
    /// env, cwd, user or group restarts the entry's processes; delay, stop
    /// settings and rules change in place; removed entries stop; new ones start.
    pub fn reconfigure(&mut self, new: Config) {
        let now = Instant::now();
        for config in &new.entries {
            let Some(i) = self.entries.iter().position(|e| e.config.name == config.name) else {
                self.entries.push(EntryRun::new(config.clone()));
                continue;
            };
            let e = &mut self.entries[i];
            let restart = e.config.needs_restart_for(config);
            let changed = e.config != *config;
            if e.removed || config.count != e.config.count {
                e.target = config.count;
            }
            e.removed = false;
            e.config = config.clone();
            // A changed entry starts its `.give_up` count afresh.
            if changed {
                for run in e.slots.values_mut() {
                    run.clear_exits();
                }
            }
            if restart {
                let indexes: Vec<usize> = e.slots.keys().copied().collect();
                for index in indexes {
                    self.apply(i, index, Event::Restart { now });
                }
            }
            // A slot given up on gets another chance from a changed entry.
            if changed {
                let failed: Vec<usize> = self.entries[i]
                    .slots
                    .iter()
                    .filter(|(_, r)| r.slot.phase == Phase::Failed)
                    .map(|(k, _)| *k)
                    .collect();
                for index in failed {
                    self.apply(i, index, Event::Restart { now });
                }
            }
        }
        for e in &mut self.entries {
            e.removed = new.entries.iter().all(|c| c.name != e.config.name);
        }
        let order = |e: &EntryRun| new.entries.iter().position(|c| c.name == e.config.name).unwrap_or(usize::MAX);
        self.entries.sort_by_key(order);
        self.config = new;
        for i in 0..self.entries.len() {
            self.reconcile(i, now);
        }
        if self.watcher.is_some() {
            self.restart_watcher();
        }
        // Probes as the new configuration says, from the readiness each
        // process had.
        self.stop_probers(false);
        // The functions are the new configuration's.
        self.func_workers.clear();
        self.ensure_health();
    }

    /// Stops every monitor (lines already complete are written; the rest is
    /// kept as bytes) and describes the whole state. The children run on.
    pub(super) fn suspend(&mut self) -> Suspended {
        self.stop_watcher();
        // Probe threads end by themselves (the exec ends any that lag);
        // the new image probes afresh from the readiness each slot had.
        self.stop_probers(false);
        self.finish_reaps();
        self.join_closed();
        let now = Instant::now();
        let rows = std::mem::take(&mut self.procs);
        // From here the children are unwatched: each monitor's pipes and
        // unwritten bytes are taken, and its thread stays parked, without
        // being woken, until the exec ends it (see `child::Shared`).
        let unwatched_since_ns = sys::unix_now_ns();
        let mut parked = Vec::new();
        // The pidfds of unreaped slots' children, kept open across the exec.
        let mut pidfds: HashMap<i32, KeptFd> = HashMap::new();
        let mut fds = Vec::new();
        let mut keep = |q: Option<Quiesced>| -> Vec<StreamSnapshot> {
            let streams = q.map(|q| q.streams).unwrap_or_default();
            streams
                .into_iter()
                .filter_map(|mut s| {
                    let fd = s.kept().ok()?;
                    let pending = s.splitter.take_remainder();
                    let unfinished = s.splitter.take_unfinished();
                    fds.push(s.fd);
                    Some(StreamSnapshot { fd, pending, unfinished })
                })
                .collect()
        };
        // Every monitor stops; the pipes of unreaped processes go with their
        // slot or helper, those of reaped ones are drained by the next image.
        let mut quiesced: HashMap<i32, Quiesced> = HashMap::new();
        let mut cgroups: HashMap<i32, std::path::PathBuf> = HashMap::new();
        let mut loose = Vec::new();
        let mut draining = Vec::new();
        let mut starttimes: HashMap<i32, u64> = HashMap::new();
        let mut exits: HashMap<i32, ExitedSnapshot> = HashMap::new();
        let mut shown: std::collections::HashSet<i32> = std::collections::HashSet::new();
        for (_, mut row) in rows {
            // Before the park: a new child's is held by its monitor.
            let starttime = row.starttime();
            let (q, pidfd) = match row.monitor.take() {
                Some(m) => {
                    let (q, p) = m.park();
                    let pidfd = p.pidfd_kept().filter(|_| !row.reaped);
                    parked.push(p);
                    (Some(q), pidfd)
                }
                None => (None, None),
            };
            let exited = exited_of(&row, q.as_ref(), now);
            // Shown by the monitor before the core heard of the exit.
            let exit_shown = q.as_ref().is_some_and(|q| q.exit_shown);
            // Lines of an exit the console or the log did not have yet.
            let owed = exited.as_ref().is_some_and(|x| !x.shown || !x.logged);
            if !row.reaped {
                starttimes.insert(row.pid, starttime);
            }
            let cgroup = row.cgroup.as_ref().map(|c| c.path().to_path_buf());
            match (&row.role, row.reaped) {
                (Role::Pipes { entry }, _) | (Role::Slot { entry, .. } | Role::Stuck { entry, .. }, true) => {
                    let streams = keep(q);
                    if !streams.is_empty() || owed {
                        draining.push(DrainingSnapshot { entry: entry.clone(), pid: row.pid, streams, exited });
                    }
                }
                (Role::Helper { target, .. }, true) => {
                    let streams = keep(q);
                    if !streams.is_empty() || owed {
                        draining.push(DrainingSnapshot { entry: target.clone(), pid: row.pid, streams, exited });
                    }
                }
                (Role::Stray { .. }, true) => {}
                (Role::Slot { .. }, false) => {
                    if let Some(q) = q {
                        quiesced.insert(row.pid, q);
                    }
                    if let Some(x) = exited {
                        exits.insert(row.pid, x);
                    }
                    if exit_shown {
                        shown.insert(row.pid);
                    }
                    if let Some(fd) = pidfd {
                        pidfds.insert(row.pid, fd);
                    }
                    if let Some(path) = cgroup {
                        cgroups.insert(row.pid, path);
                    }
                }
                (Role::Stuck { entry, index }, false) => loose.push(HelperSnapshot {
                    target: entry.clone(),
                    rule: String::new(),
                    pid: row.pid,
                    starttime,
                    kill_in_ms: 0,
                    streams: keep(q),
                    stray: false,
                    killed: true,
                    cgroup,
                    stuck: Some(*index),
                    pidfd,
                    exited,
                    exit_shown,
                }),
                (Role::Helper { kill_at, killed, .. } | Role::Stray { kill_at, killed }, false) => {
                    let target = match &row.role {
                        Role::Helper { target, .. } => target.clone(),
                        _ => "stray".to_string(),
                    };
                    let rule = match &row.role {
                        Role::Helper { rule, .. } => rule.clone(),
                        _ => String::new(),
                    };
                    loose.push(HelperSnapshot {
                        target,
                        rule,
                        pid: row.pid,
                        starttime,
                        kill_in_ms: kill_at.saturating_duration_since(now).as_millis() as u64,
                        streams: keep(q),
                        stray: matches!(row.role, Role::Stray { .. }),
                        killed: *killed,
                        cgroup,
                        stuck: None,
                        pidfd,
                        exited,
                        exit_shown,
                    })
                }
            }
        }
        let left = |at: Instant| at.saturating_duration_since(now).as_millis() as u64;
        let ago = |at: Instant| now.saturating_duration_since(at).as_millis() as u64;
        let mut process = |pid: i32, since: Instant| ProcessSnapshot {
            pid,
            starttime: starttimes.get(&pid).copied().unwrap_or(0),
            up_ms: now.saturating_duration_since(since).as_millis() as u64,
            pidfd: pidfds.remove(&pid),
            exited: exits.remove(&pid),
            exit_shown: shown.remove(&pid),
        };
        let exited_ms_ago = |then: AfterStop| match then {
            AfterStop::Policy { exited_at } => Some(ago(exited_at)),
            _ => None,
        };
        let recover = |then: AfterStop| match then {
            AfterStop::Recover { crashes } => Some(crashes),
            _ => None,
        };
        let mut entries = Vec::new();
        for e in &self.entries {
            let mut slots = Vec::new();
            for (index, run) in &e.slots {
                let phase = match run.slot.phase {
                    Phase::Idle => PhaseSnapshot::Idle,
                    Phase::Pending { due } => PhaseSnapshot::Pending { due_in_ms: left(due) },
                    Phase::Running { pid, since } => PhaseSnapshot::Running { process: process(pid, since) },
                    Phase::Stopping { pid, since, kill_at, then } => PhaseSnapshot::Stopping {
                        process: process(pid, since),
                        kill_in_ms: left(kill_at),
                        respawn: then == AfterStop::Respawn,
                        exited_ms_ago: exited_ms_ago(then),
                        recover: recover(then),
                    },
                    Phase::Killing { pid, since, give_up_at, then } => PhaseSnapshot::Killing {
                        process: process(pid, since),
                        respawn: then == AfterStop::Respawn,
                        exited_ms_ago: exited_ms_ago(then),
                        give_up_in_ms: left(give_up_at),
                        recover: recover(then),
                    },
                    Phase::Unkillable { pid, since, then } => PhaseSnapshot::Unkillable {
                        process: process(pid, since),
                        respawn: then == AfterStop::Respawn,
                        exited_ms_ago: exited_ms_ago(then),
                        recover: recover(then),
                    },
                    Phase::Failed => PhaseSnapshot::Failed,
                };
                let streams = run.slot.pid().map(|pid| keep(quiesced.remove(&pid))).unwrap_or_default();
                slots.push(SlotSnapshot {
                    index: *index,
                    crashes: run.slot.crashes,
                    started_at: run.started_at,
                    phase,
                    streams,
                    error: run.error.clone(),
                    cgroup: run.slot.pid().and_then(|pid| cgroups.remove(&pid)),
                    ready: Some(run.ready),
                    exits_ms_ago: run
                        .health
                        .as_ref()
                        .map(|h| h.exits.iter().map(|t| ago(*t)).collect())
                        .unwrap_or_default(),
                });
            }
            entries.push(EntrySnapshot {
                config: e.config.to_snapshot(),
                target: e.target,
                restarts: e.restarts,
                restarts_requested: e.restarts_requested,
                removed: e.removed,
                slots,
                last_exits: e
                    .last_exits
                    .iter()
                    .map(|(index, (at, exit))| ExitSnapshot { index: *index, at: *at, exit: *exit })
                    .collect(),
                failures_ms_ago: e.failures.iter().map(|t| ago(*t)).collect(),
            });
        }
        let notify = self.notify.take().and_then(|n| n.into_fd()).and_then(|(fd, name)| {
            let kept = KeptFd::of(&fd).ok()?;
            fds.push(fd);
            Some(NotifySnapshot { fd: kept, name })
        });
        let snapshot = CoreSnapshot {
            info: self.options.info.clone(),
            entries,
            draining,
            leftovers: Vec::new(),
            watch: self.watch_state.to_memory(),
            helpers: loose,
            watches: self.config.watches.iter().map(|w| w.to_snapshot()).collect(),
            cgroup: self.options.fence.tree().map(|t| t.root().to_path_buf()),
            notify,
        };
        Suspended { snapshot, fds, unwatched_since_ns, parked }
    }

    /// Rebuilds a core from a snapshot taken by a previous image (or by this
    /// one, when an exec failed): verifies each child (still our child, same
    /// starttime), adopts its pipes and bytes in hand, and watches it again.
    /// A child that is gone counts as an exit. Returns what could not be kept.
    pub fn restore(snapshot: CoreSnapshot, mut options: CoreOptions, tx: Post, rx: Mailbox) -> (Core, Vec<String>) {
        let now = Instant::now();
        let mut warnings = Vec::new();
        options.info = snapshot.info.clone();
        let notify = snapshot.notify.clone();
        let mut core = Core::new(Config::default(), options, tx, rx);
        if let Some(n) = notify {
            match n.fd.adopt().map(|fd| crate::notify::NotifySocket::adopt(fd, n.name.clone())) {
                Some(Ok(socket)) => core.notify = Some(socket),
                Some(Err(e)) => warnings.push(format!("the notify socket: {e}; a new one is opened")),
                None => warnings.push("the notify socket was not handed over; a new one is opened".to_string()),
            }
        }
        let me = std::process::id() as i32;
        let mut gone = Vec::new();
        // The slots' processes, watched all at once below.
        let mut adoptions = Vec::new();
        let mut slot_of: HashMap<u64, (usize, usize)> = HashMap::new();
        for (i, es) in snapshot.entries.into_iter().enumerate() {
            let config = EntryConfig::from_snapshot(&es.config).unwrap_or_else(|e| {
                warnings.push(format!("entry {}: {e}; its rules are dropped", es.config.name));
                let mut bare = es.config.clone();
                bare.rules.clear();
                EntryConfig::from_snapshot(&bare).expect("an entry without rules always parses")
            });
            let name = config.name.clone();
            let mut run = EntryRun::new(config);
            run.target = es.target;
            run.restarts = es.restarts;
            run.restarts_requested = es.restarts_requested;
            run.removed = es.removed;
            run.last_exits = es.last_exits.iter().map(|x| (x.index, (x.at, x.exit))).collect();
            run.failures =
                es.failures_ms_ago.iter().rev().filter_map(|ms| now.checked_sub(Duration::from_millis(*ms))).collect();
            core.entries.push(run);
            for ss in es.slots {
                let at = |ms: u64| later(now, Duration::from_millis(ms));
                let since = |p: &ProcessSnapshot| now.checked_sub(Duration::from_millis(p.up_ms)).unwrap_or(now);
                let then = |respawn: bool, exited_ms_ago: Option<u64>, recover: Option<u32>| match exited_ms_ago {
                    Some(ms) => {
                        AfterStop::Policy { exited_at: now.checked_sub(Duration::from_millis(ms)).unwrap_or(now) }
                    }
                    None if recover.is_some() => AfterStop::Recover { crashes: recover.unwrap_or(0) },
                    None if respawn => AfterStop::Respawn,
                    None => AfterStop::Vacate,
                };
                let (phase, process) = match &ss.phase {
                    PhaseSnapshot::Idle => (Phase::Idle, None),
                    PhaseSnapshot::Failed => (Phase::Failed, None),
                    PhaseSnapshot::Pending { due_in_ms } => (Phase::Pending { due: at(*due_in_ms) }, None),
                    PhaseSnapshot::Running { process: p } => {
                        (Phase::Running { pid: p.pid, since: since(p) }, Some(p.clone()))
                    }
                    PhaseSnapshot::Stopping { process: p, kill_in_ms, respawn, exited_ms_ago, recover } => (
                        Phase::Stopping {
                            pid: p.pid,
                            since: since(p),
                            kill_at: at(*kill_in_ms),
                            then: then(*respawn, *exited_ms_ago, *recover),
                        },
                        Some(p.clone()),
                    ),
                    PhaseSnapshot::Killing { process: p, respawn, exited_ms_ago, give_up_in_ms, recover } => (
                        Phase::Killing {
                            pid: p.pid,
                            since: since(p),
                            give_up_at: at(*give_up_in_ms),
                            then: then(*respawn, *exited_ms_ago, *recover),
                        },
                        Some(p.clone()),
                    ),
                    PhaseSnapshot::Unkillable { process: p, respawn, exited_ms_ago, recover } => (
                        Phase::Unkillable {
                            pid: p.pid,
                            since: since(p),
                            then: then(*respawn, *exited_ms_ago, *recover),
                        },
                        Some(p.clone()),
                    ),
                };
                let mut run = SlotRun::with(Slot { phase, crashes: ss.crashes }, ss.started_at, ss.error);
                run.ready = ss.ready.unwrap_or(false);
                if !ss.exits_ms_ago.is_empty() {
                    run.health().exits = ss
                        .exits_ms_ago
                        .iter()
                        .rev()
                        .filter_map(|ms| now.checked_sub(Duration::from_millis(*ms)))
                        .collect();
                }
                core.entries[i].slots.insert(ss.index, run);
                let streams = adopt_streams(&ss.streams, &mut warnings);
                let Some(p) = process else { continue };
                // A kept pidfd is the process itself (our child: only we
                // reap it); without one, (ppid, starttime) is checked.
                let known = Known::handed_over(p.starttime, p.pidfd);
                let ours = known.pidfd.is_some()
                    || proc::stat(p.pid).is_some_and(|s| (s.ppid, s.starttime) == (me, p.starttime));
                if !ours {
                    warnings.push(format!("{name}.{} is no longer our child: counted as an exit", p.pid));
                    gone.push((i, ss.index));
                    if !streams.is_empty() {
                        if let Err(e) = core.drain_pipes(&name, p.pid, streams, p.exited.clone()) {
                            warnings.push(format!("cannot drain {name}.{}: {e}", p.pid));
                        }
                    }
                    continue;
                }
                let role = Role::Slot { entry: name.clone(), index: ss.index };
                let gen = core.new_gen();
                let cgroup = core.cgroup_at(ss.cgroup.as_deref(), p.pid);
                adoptions.push(Adoption {
                    gen,
                    pid: p.pid,
                    role,
                    streams,
                    log_as: name.clone(),
                    cgroup,
                    known,
                    opening: None,
                    exited: p.exited.clone(),
                    exit_shown: p.exit_shown,
                });
                slot_of.insert(gen, (i, ss.index));
            }
        }
        for (gen, e) in core.adopt_all(adoptions) {
            let (i, index) = slot_of[&gen];
            let name = &core.entries[i].config.name;
            let pid = core.entries[i].slots.get(&index).and_then(|s| s.slot.pid()).unwrap_or(0);
            warnings.push(format!("cannot watch {name}.{pid}: {e}; it was stopped"));
            gone.push((i, index));
        }
        for d in snapshot.draining {
            let streams = adopt_streams(&d.streams, &mut warnings);
            if let Err(e) = core.drain_pipes(&d.entry, d.pid, streams, d.exited) {
                warnings.push(format!("cannot drain {}.{}: {e}", d.entry, d.pid));
            }
        }
        for h in snapshot.helpers {
            let streams = adopt_streams(&h.streams, &mut warnings);
            let known = Known::handed_over(h.starttime, h.pidfd);
            let ours =
                known.pidfd.is_some() || proc::stat(h.pid).is_some_and(|s| (s.ppid, s.starttime) == (me, h.starttime));
            if !ours {
                if !streams.is_empty() {
                    let _ = core.drain_pipes(&h.target, h.pid, streams, h.exited.clone());
                }
                continue;
            }
            let kill_at = later(now, Duration::from_millis(h.kill_in_ms));
            let role = if let Some(index) = h.stuck {
                Role::Stuck { entry: h.target.clone(), index }
            } else if h.stray {
                Role::Stray { kill_at, killed: h.killed }
            } else {
                // It holds its place under the caps until it is reaped.
                core.helpers.hold(&h.rule);
                Role::Helper { target: h.target.clone(), rule: h.rule.clone(), kill_at, killed: h.killed }
            };
            let stuck = matches!(role, Role::Stuck { .. });
            let gen = core.new_gen();
            let cgroup = core.cgroup_at(h.cgroup.as_deref(), h.pid);
            if let Err(e) = core.adopt_process(
                gen,
                h.pid,
                role,
                streams,
                &h.target,
                cgroup,
                known,
                None,
                h.exited.clone(),
                h.exit_shown,
            ) {
                if !h.stray && !stuck {
                    core.helpers.release(&h.rule);
                }
                warnings.push(format!("cannot watch {}.{}: {e}; it was stopped", h.target, h.pid));
            }
        }
        if !snapshot.leftovers.is_empty() {
            warnings.push(format!(
                "{} process group(s) left by an older image are not signalled: their numbers may have been reused",
                snapshot.leftovers.len()
            ));
        }
        core.watch_state = watch::State::from_memory(snapshot.watch);
        core.config.entries = core.entries.iter().map(|e| e.config.clone()).collect();
        // The watches come back with the entries: after a failed exec (or an
        // invalid new configuration) the old configuration runs on whole.
        core.config.watches = snapshot
            .watches
            .iter()
            .filter_map(|w| {
                WatchConfig::from_snapshot(w).map_err(|e| warnings.push(format!("watch {}: {e}; dropped", w.name))).ok()
            })
            .collect();
        for (i, index) in gone {
            core.apply(i, index, Event::Exited { exit: ChildExit::Unknown, now });
        }
        (core, warnings)
    }
}

/// Takes back kept pipes; a pipe that is not what was recorded is dropped.
fn adopt_streams(snapshots: &[StreamSnapshot], warnings: &mut Vec<String>) -> Vec<Stream> {
    snapshots
        .iter()
        .filter_map(|s| match s.fd.adopt() {
            Some(fd) => Some(Stream {
                fd,
                splitter: LineSplitter::resume(s.pending.clone(), s.unfinished.clone()),
                kept: Some(s.fd),
            }),
            None => {
                warnings.push(format!("output pipe fd {} did not survive: dropped", s.fd.fd));
                None
            }
        })
        .collect()
}

/// The exit `row`'s process was told with (`tell_exit`) before the exec,
/// and how far its monitor (`q`, as parked) had got with it.
fn exited_of(row: &Proc, q: Option<&Quiesced>, now: Instant) -> Option<ExitedSnapshot> {
    let exited = row.exited?;
    let (shown, logged) = q.map_or((true, true), |q| (q.exit_shown, q.closed));
    Some(ExitedSnapshot {
        exit: row.exit.unwrap_or(ChildExit::Unknown),
        at: row.exited_unix,
        ago_ms: now.saturating_duration_since(exited).as_millis() as u64,
        lingering: row.lingering,
        text: row.told.clone()?,
        shown,
        logged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Command, CoreExit};
    use crate::handoff::InfoSnapshot;
    use crate::output::ConsoleHandle;
    use crate::prelude::*;
    use crate::Spec;

    fn core_for(specs: &[Spec], log_dir: Option<std::path::PathBuf>) -> (Core, Post, Mailbox) {
        let (tx, rx) = crate::core::channel().unwrap();
        let options = options(log_dir);
        let config = Config::from_specs(specs).unwrap();
        (Core::new(config, options, tx.clone(), rx.clone()), tx, rx)
    }

    /// A core's options for a unit test: no ledger, no cgroups.
    fn options(log_dir: Option<std::path::PathBuf>) -> CoreOptions {
        CoreOptions {
            log_dir,
            console: ConsoleHandle::default(),
            info: InfoSnapshot::default(),
            ledger: None,
            fence: crate::cgroup::Fence::ProcessGroup("a unit test".to_string()),
            on_started: None,
        }
    }

    #[test]
    fn a_restored_core_has_the_watches_and_rules_it_suspended_with() {
        let specs = [
            entry("e", "true", [], 0, 0).on("rmem > 1g", "restart"),
            watch("w", "^x").every(Duration::from_millis(250)).on("cpu > 90%", "exec @ 1h echo $NAME"),
        ];
        let (mut core, tx, rx) = core_for(&specs, None);
        let suspended = core.suspend();
        let json = serde_json::to_string(&suspended.snapshot).unwrap();
        let options = options(None);
        let (back, warnings) = Core::restore(serde_json::from_str(&json).unwrap(), options, tx, rx);
        assert!(warnings.is_empty(), "{warnings:?}");
        let status = back.status().unread();
        assert_eq!(status.watches.len(), 1);
        let w = &status.watches[0];
        assert_eq!((w.name.as_str(), w.pattern.as_str()), ("w", "^x"));
        assert_eq!((w.rules[0].trigger.as_str(), w.rules[0].action.as_str()), ("cpu > 90%", "exec @ 1h echo $NAME"));
        assert_eq!(back.config.watches[0].every, Duration::from_millis(250));
        assert_eq!(status.entries[0].rules[0].action, "restart");
        assert_eq!(watch::targets(&back.config, None).len(), 2, "the watcher will cover both again");
    }

    #[test]
    fn commands_queued_behind_a_suspend_are_not_lost() {
        let dir = std::env::temp_dir().join(format!("sentry-drain-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (core, tx, _rx) = core_for(&[watch("w", "^x").on("rmem > 1g", "exec echo hi")], Some(dir.clone()));
        // What the watcher sent just before it was stopped, behind the Suspend.
        tx.send(Command::Suspend).unwrap();
        tx.send(Command::Fired { target: "w".into(), pid: 4242, text: "rmem 2g > 1g: exec.".into() }).unwrap();
        tx.send(Command::RunHelper { target: "w".into(), rule: "r".into(), argv: vec!["sleep".into(), "5".into()] })
            .unwrap();
        let CoreExit::Suspended(suspended) = core.run() else { panic!("the core did not suspend") };
        let log = std::fs::read_to_string(dir.join("w.log")).unwrap_or_default();
        assert!(log.contains("w.4242 [sentry] rmem 2g > 1g: exec."), "the firing line reached the log: {log:?}");
        let helpers = &suspended.snapshot.helpers;
        assert_eq!(helpers.len(), 1, "the requested program runs and is handed over");
        assert_eq!(helpers[0].target, "w");
        sys::signal_group(helpers[0].pid, Signal::SIGKILL);
        sys::reap(helpers[0].pid);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn durations_from_a_snapshot_saturate_instead_of_panicking() {
        let (mut core, tx, rx) = core_for(&[entry("e", "sleep", ["1000"], 0, 0)], None);
        let suspended = core.suspend();
        let mut json = serde_json::to_value(&suspended.snapshot).unwrap();
        // An older binary, or a damaged snapshot: durations far past what an Instant can hold.
        let e = &mut json["entries"][0];
        e["config"]["stop_timeout_ms"] = u64::MAX.into();
        e["config"]["delay_ms"] = u64::MAX.into();
        e["target"] = 1.into();
        e["failures_ms_ago"] = serde_json::json!([u64::MAX, 0]);
        e["slots"] = serde_json::json!([{
            "index": 0, "crashes": u32::MAX, "started_at": 0,
            "phase": {"Pending": {"due_in_ms": u64::MAX}}, "streams": []
        }]);
        let options = options(None);
        let (back, _) = Core::restore(serde_json::from_value(json).unwrap(), options, tx, rx);
        let c = &back.entries[0].config;
        assert!(c.stop_timeout <= crate::budget::MAX_DURATION && c.delay <= crate::budget::MAX_DURATION);
        let due = back.entries[0].slots[&0].slot.deadline().unwrap();
        assert!(due > Instant::now() + Duration::from_secs(86_400), "due far in the future, not now");
        assert!(back.next_deadline().is_some());
        assert_eq!(back.status().unread().entries[0].state, crate::EntryState::Backoff);
    }
}
