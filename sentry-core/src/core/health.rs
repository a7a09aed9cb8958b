//! Health, order and limits in the core: the probe threads and the notify
//! socket of each slot's process and what their reports change (readiness,
//! a liveness restart, a missed keep-alive), when an entry's starts are held
//! back (`.after`, an entry that is ending), the order in which entries stop
//! (those that follow first), restarts that follow a bound entry
//! (`.binds_to`), and giving up on a slot (`.give_up`). The decisions
//! themselves are pure (`lifecycle`, `probe::Tally`, `Config`'s order); this
//! is the part that looks them up and applies them.

use std::time::{Duration, Instant};

use std::sync::Arc;

use super::{Command, Core, Role};
use crate::lifecycle::{self, Event, Phase, Recovery};
use crate::notify::{Message, NotifySocket};
use crate::probe::{Check, Context, FuncWorker, Probe, ProbeNote, Prober, Which};

impl Core {
    /// Opens the notify socket if an entry needs one and starts reading
    /// it, and starts the probes of running processes that have none (a
    /// restored core's, a changed configuration's). Idempotent.
    pub(super) fn ensure_health(&mut self) {
        if self.entries.iter().any(|e| e.config.uses_notify()) {
            let _ = self.notify_name();
        }
        if let Some(n) = &mut self.notify {
            let tx = self.tx.clone();
            if let Err(e) = n.listen(move |pid, message| {
                let _ = tx.send(Command::Notify { pid, message });
            }) {
                log::warn!("cannot read the notify socket: {e}");
            }
        }
        let now = Instant::now();
        let mut start = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            for (index, run) in &e.slots {
                let probed = run.health.as_ref().is_some_and(|h| h.prober.is_some());
                if let (Phase::Running { pid, .. }, false) = (run.slot.phase, probed) {
                    start.push((i, *index, pid, run.ready));
                }
            }
        }
        for (i, index, pid, ready) in start {
            let Some(gen) = self.row_of(pid) else { continue };
            self.start_health(i, index, gen, pid, ready, now);
        }
    }

    /// `NOTIFY_SOCKET` for the children: the socket, opened on first use.
    pub(super) fn notify_name(&mut self) -> Option<String> {
        if self.notify.is_none() {
            match NotifySocket::open() {
                Ok(n) => self.notify = Some(n),
                Err(e) => {
                    log::warn!(
                        "cannot open a notify socket: {e}; notify probes and watchdogs will not hear their processes"
                    );
                    return None;
                }
            }
        }
        self.notify.as_ref().map(|n| n.name().to_string())
    }

    /// Starts the probes of slot `index`'s new process (row `gen`, `pid`),
    /// from readiness `ready`, and its keep-alive clock.
    pub(super) fn start_health(&mut self, i: usize, index: usize, gen: u64, pid: i32, ready: bool, now: Instant) {
        let config = &self.entries[i].config;
        let watchdog = config.watchdog;
        let notify_ready = config.ready.as_ref().is_some_and(|p| p.is_notify());
        let probed = |p: &Option<crate::probe::Probe>| p.clone().filter(|p| !p.is_notify());
        let (ready_probe, alive_probe) = (probed(&config.ready), probed(&config.alive));
        // An exec probe runs as the entry's processes do, in their cgroup.
        let cgroup = self.procs.get(&gen).and_then(|r| r.cgroup.as_ref()).map(|c| c.path().to_path_buf());
        let ctx = Context {
            pid,
            entry: config.name.clone(),
            env: config.env.clone(),
            cwd: config.cwd.clone(),
            user: config.user.clone(),
            group: config.group.clone(),
            cgroup,
        };
        let name = config.name.clone();
        let workers = [(Which::Ready, &ready_probe), (Which::Alive, &alive_probe)].map(|(which, p)| match p {
            Some(Probe { check: Check::Func(f), .. }) => self.func_worker(&name, which, f),
            _ => None,
        });
        let config = &self.entries[i].config;
        let prober = if ready_probe.is_some() || alive_probe.is_some() {
            let tx = self.tx.clone();
            match Prober::start(gen, ready_probe, alive_probe, ready, ctx, workers, move |note| {
                let _ = tx.send(Command::Probe(note));
            }) {
                Ok(p) => Some(p),
                Err(e) => {
                    log::warn!("cannot start the probes of {}.{pid}: {e}", config.name);
                    None
                }
            }
        } else {
            None
        };
        let Some(run) = self.entries[i].slots.get_mut(&index) else { return };
        run.ready = ready;
        let old = match prober {
            Some(p) => run.health().prober.replace(p),
            None => run.take_prober(),
        };
        if let Some(mut old) = old {
            old.stop();
            self.old_probers.push(old);
        }
        // The watchdog runs once the process is ready (a notify one says
        // so itself), as systemd's does.
        let at = watchdog.filter(|_| !notify_ready || ready).map(|d| crate::budget::later(now, d));
        if at.is_some() || run.health.is_some() {
            run.health().watchdog_at = at;
        }
    }

    /// The thread entry `name`'s function probe `which` is called on:
    /// one per probe, made on first use.
    fn func_worker(
        &mut self,
        name: &str,
        which: Which,
        f: &Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Option<Arc<FuncWorker>> {
        let key = (name.to_string(), which);
        if let Some(w) = self.func_workers.get(&key) {
            return Some(w.clone());
        }
        match FuncWorker::start(f.clone(), &format!("{name} {}", which.as_str())) {
            Ok(w) => {
                let w = Arc::new(w);
                self.func_workers.insert(key, w.clone());
                Some(w)
            }
            Err(e) => {
                log::warn!("cannot start the thread of {name}'s {} probe: {e}", which.as_str());
                None
            }
        }
    }

    /// Stops every probe thread; `wait`: and waits for them (each ends
    /// within about its timeout; a hung function call is left behind).
    pub(super) fn stop_probers(&mut self, wait: bool) {
        let mut all = std::mem::take(&mut self.old_probers);
        for e in &mut self.entries {
            for run in e.slots.values_mut() {
                all.extend(run.take_prober());
            }
        }
        for p in &mut all {
            p.stop();
        }
        if wait {
            let longest = self
                .entries
                .iter()
                .flat_map(|e| [&e.config.ready, &e.config.alive])
                .flatten()
                .map(|p| p.timeout)
                .max()
                .unwrap_or_default();
            let until = Instant::now() + longest.min(Duration::from_secs(10)) + Duration::from_millis(500);
            for p in all {
                p.stop_and_join(until.saturating_duration_since(Instant::now()));
            }
        }
    }

    /// The slot whose process is row `gen` with `pid` and still running.
    fn running_slot(&self, gen: u64, pid: i32) -> Option<(usize, usize)> {
        let row = self.procs.get(&gen).filter(|r| r.pid == pid && !r.reaped)?;
        let Role::Slot { entry, index } = &row.role else { return None };
        let i = self.entries.iter().position(|e| &e.config.name == entry)?;
        let run = self.entries[i].slots.get(index)?;
        matches!(run.slot.phase, Phase::Running { pid: p, .. } if p == pid).then_some((i, *index))
    }

    /// A probe changed state: readiness is recorded; a failed liveness
    /// probe restarts the process.
    pub(super) fn probe_changed(&mut self, note: ProbeNote, now: Instant) {
        let Some((i, index)) = self.running_slot(note.gen, note.pid) else { return };
        let name = self.entries[i].config.name.clone();
        let why = note.why.as_deref().unwrap_or("no reason given");
        match (note.which, note.passing) {
            (Which::Ready, ready) => {
                self.set_ready(i, index, ready, now);
                let text = if ready { "Ready.".to_string() } else { format!("Not ready: {why}.") };
                self.options.console.event(&name, note.pid, &text);
            }
            (Which::Alive, true) => {}
            (Which::Alive, false) => {
                let text = format!("Liveness probe failed: {why}; restarting it.");
                self.unhealthy(i, index, note.pid, &text, now);
            }
        }
    }

    fn set_ready(&mut self, i: usize, index: usize, ready: bool, now: Instant) {
        let watchdog = self.entries[i].config.watchdog;
        let notify_ready = self.entries[i].config.ready.as_ref().is_some_and(|p| p.is_notify());
        let Some(run) = self.entries[i].slots.get_mut(&index) else { return };
        run.ready = ready;
        if let (true, true, None, Some(d)) = (ready, notify_ready, run.watchdog_at(), watchdog) {
            run.health().watchdog_at = Some(crate::budget::later(now, d));
        }
    }

    /// Restarts slot `index`'s process `pid` for failing its liveness probe
    /// or watchdog, saying `text`.
    fn unhealthy(&mut self, i: usize, index: usize, pid: i32, text: &str, now: Instant) {
        let name = self.entries[i].config.name.clone();
        self.options.console.event(&name, pid, text);
        let Some(run) = self.entries[i].slots.get(&index) else { return };
        let Phase::Running { since, .. } = run.slot.phase else { return };
        // A process that was healthy long enough starts the back-off anew.
        let alive = &self.entries[i].config.alive;
        let failing_for = alive.as_ref().map_or(Duration::ZERO, |p| p.period.saturating_mul(p.failures));
        let reset = lifecycle::liveness_reset(now.saturating_duration_since(since), failing_for);
        self.apply(i, index, Event::Recover { now, why: Recovery::Liveness { reset } });
    }

    /// An `sd_notify` message from `pid`: from a slot's process or, under
    /// cgroup containment, from any process of its cgroup.
    pub(super) fn notified(&mut self, pid: i32, message: Message, now: Instant) {
        let gen = self.row_of(pid).or_else(|| {
            let path = crate::cgroup::directory_of_process(pid)?;
            self.procs
                .iter()
                .find(|(_, p)| !p.reaped && p.cgroup.as_ref().is_some_and(|c| c.path() == path))
                .map(|(g, _)| *g)
        });
        let Some(gen) = gen else { return };
        let leader = self.procs[&gen].pid;
        let Some((i, index)) = self.running_slot(gen, leader) else { return };
        let config = &self.entries[i].config;
        let (notify_ready, watchdog) = (config.ready.as_ref().is_some_and(|p| p.is_notify()), config.watchdog);
        let name = config.name.clone();
        if let (Some(ready), true) = (message.ready, notify_ready) {
            let was = self.entries[i].slots.get(&index).is_some_and(|r| r.ready);
            if was != ready {
                self.set_ready(i, index, ready, now);
                let text = if ready { "Ready." } else { "Not ready: it said RELOADING=1 or STOPPING=1." };
                self.options.console.event(&name, leader, text);
            }
        }
        if let Some(d) = watchdog {
            if message.trigger {
                self.unhealthy(i, index, leader, "Watchdog: it sent WATCHDOG=trigger; restarting it.", now);
                return;
            }
            if message.keepalive {
                if let Some(run) = self.entries[i].slots.get_mut(&index) {
                    run.health().watchdog_at = Some(crate::budget::later(now, d));
                }
            }
        }
    }

    /// Restarts the running processes of entry `i` whose keep-alive is late.
    pub(super) fn watchdog_due(&mut self, i: usize, now: Instant) {
        let Some(d) = self.entries[i].config.watchdog else { return };
        let late: Vec<(usize, i32)> = self.entries[i]
            .slots
            .iter()
            .filter_map(|(index, run)| match run.slot.phase {
                Phase::Running { pid, .. } if run.watchdog_at().is_some_and(|at| at <= now) => Some((*index, pid)),
                _ => None,
            })
            .collect();
        for (index, pid) in late {
            let text = format!("Watchdog: no WATCHDOG=1 within {d:?}; restarting it.");
            self.unhealthy(i, index, pid, &text, now);
        }
    }

    /// Whether entry `name` is ready for those that follow it: it has a
    /// process to run (an entry scaled to 0, for maintenance say, is not
    /// ready), and every slot up to its target runs and is ready (or has no
    /// readiness probe), or exited with success and is not restarted. An
    /// entry no longer configured holds nothing back.
    pub(super) fn entry_ready(&self, name: &str) -> bool {
        let Some(e) = self.entries.iter().find(|e| e.config.name == name && !e.removed) else { return true };
        let probed = e.config.ready.is_some();
        e.target > 0
            && (0..e.target).all(|index| match e.slots.get(&index).map(|r| (r, r.slot.phase)) {
                Some((r, Phase::Running { .. })) => !probed || r.ready,
                Some((_, Phase::Idle)) => {
                    e.last_exits.get(&index).is_some_and(|(_, x)| e.config.success_codes.contains(*x))
                }
                _ => false,
            })
    }

    /// The entries entry `i` waits for (`.after`, `.binds_to`) that are not ready.
    pub(super) fn waiting_for(&self, i: usize) -> Vec<String> {
        self.entries[i].config.follows().filter(|n| !self.entry_ready(n)).cloned().collect()
    }

    /// Whether entry `i`'s due starts are held back: it is ending (shut
    /// down, removed), or an entry it follows is not ready.
    pub(super) fn held(&self, i: usize) -> bool {
        let e = &self.entries[i];
        self.shutting_down || e.removed || e.config.follows().any(|n| !self.entry_ready(n))
    }

    /// Says once, until the entry starts a process, what its due starts wait for.
    pub(super) fn announce_wait(&mut self, i: usize) {
        if self.shutting_down || self.entries[i].removed || self.entries[i].announced_wait {
            return;
        }
        let waiting = self.waiting_for(i);
        if waiting.is_empty() {
            return;
        }
        self.entries[i].announced_wait = true;
        let name = self.entries[i].config.name.clone();
        self.options.console.entry_event(&name, &name, &format!("Waiting for {} to be ready.", waiting.join(", ")));
    }

    /// Whether entry `i`, which is ending, may stop now: no entry that
    /// follows it still has a process (one that outlived SIGKILL aside).
    pub(super) fn may_stop(&self, i: usize) -> bool {
        let name = &self.entries[i].config.name;
        self.entries.iter().enumerate().all(|(j, e)| {
            j == i
                || !e.config.follows().any(|n| n == name)
                || e.slots.values().all(|s| matches!(s.slot.phase, Phase::Unkillable { .. }))
        })
    }

    /// Begins the stop of every ending entry whose followers are stopped.
    pub(super) fn stop_in_order(&mut self, now: Instant) {
        for i in 0..self.entries.len() {
            let e = &self.entries[i];
            if (self.shutting_down || e.removed) && !e.stop_begun && self.may_stop(i) {
                self.reconcile(i, now);
            }
        }
    }

    /// Records a failed start of slot `index` (now pending again) for
    /// `.give_up`; at the limit, the slot is failed.
    pub(super) fn count_towards_give_up(&mut self, i: usize, index: usize, now: Instant) {
        if self.give_up_due(i, index, now) {
            self.apply(i, index, Event::GiveUp);
            self.gave_up(i, index);
        }
    }

    /// Records an exit or failed start of slot `index` for `.give_up`;
    /// says whether this one reaches the limit.
    pub(super) fn give_up_due(&mut self, i: usize, index: usize, now: Instant) -> bool {
        let limit = self.entries[i].config.give_up;
        let Some(run) = self.entries[i].slots.get_mut(&index) else { return false };
        if limit.is_none() {
            run.clear_exits();
            return false;
        }
        lifecycle::gives_up(&mut run.health().exits, now, limit)
    }

    /// Says so if slot `index` was given up on.
    pub(super) fn gave_up(&mut self, i: usize, index: usize) {
        let e = &self.entries[i];
        let (Some((exits, within)), Some(Phase::Failed)) =
            (e.config.give_up, e.slots.get(&index).map(|r| r.slot.phase))
        else {
            return;
        };
        let name = e.config.name.clone();
        let text = format!(
            "Gave up on slot {index} after {exits} exit(s) within {within:?}: it stays down until restarted (restart {name})."
        );
        self.options.console.entry_event(&name, &format!("{name}.{index}"), &text);
    }

    /// A process of entry `dependency` (`pid`) exited: the entries bound
    /// to it (`.binds_to`) restart their running processes, which start
    /// again once it is ready.
    pub(super) fn restart_bound(&mut self, dependency: &str, pid: i32, now: Instant) {
        if self.shutting_down {
            return;
        }
        for i in 0..self.entries.len() {
            let e = &self.entries[i];
            if e.removed || !e.config.binds_to.iter().any(|n| n == dependency) {
                continue;
            }
            let running: Vec<usize> = e
                .slots
                .iter()
                .filter(|(_, r)| matches!(r.slot.phase, Phase::Running { .. }))
                .map(|(k, _)| *k)
                .collect();
            if running.is_empty() {
                continue;
            }
            let name = e.config.name.clone();
            let text = format!("Restarted with {dependency} (binds_to): its process {pid} exited.");
            self.options.console.entry_event(&name, &name, &text);
            for index in running {
                self.apply(i, index, Event::Restart { now });
            }
        }
    }
}
