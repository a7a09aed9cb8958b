//! Watches and rules: one pass over `/proc` per interval ([`Scanner`]),
//! matching each watch's regex (and, with `.children(true)`, every
//! descendant) and each entry's processes, evaluating triggers per process,
//! and deciding which actions fire under their rate limits ([`evaluate`], a
//! pure function over a scan). The [`Watcher`] thread performs the signals
//! itself and asks the core for what only the core may do (spawning an
//! `exec` helper, restarting an entry's process). A process is identified by
//! (pid, starttime), never pid alone, and signalled through a pidfd. Sentry's
//! own process tree and its ancestors never match a watch. Every /proc read
//! goes through [`crate::proc`]; this module decides only which to make when.
//! It knows nothing of slots, HTTP or re-exec.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, Rule};
use crate::handoff::{ClockSnapshot, WatchMemory};
use crate::proc::{self, ProcessId};
use crate::rule::{Action, Comparison, ExecVars, Quantity};
use crate::status::MatchedProcess;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

/// One process as a scan saw it.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub pid: i32,
    pub starttime: u64,
    pub ppid: i32,
    /// Arguments joined by single spaces ("" for kernel threads).
    pub cmdline: Arc<str>,
    /// `SENTRY_ENTRY` of Sentry's direct children.
    pub entry: Option<Arc<str>>,
    pub rss: u64,
    pub vmem: u64,
    /// Percent of one core since the previous scan (None on first sight).
    pub cpu: Option<u64>,
}

/// What a process looked like on first sight, and its last reading.
struct Known {
    starttime: u64,
    ppid: i32,
    /// The executable's name (`comm`): it changes when the process execs.
    comm: Box<[u8]>,
    /// Scans left during which it is re-read whatever: a process seen between
    /// its fork and its exec still shows its parent's command line.
    young: u8,
    cmdline: Arc<str>,
    entry: Option<Arc<str>>,
    rss: u64,
    vmem: u64,
    ticks: u64,
    at: Instant,
}

/// How many scans a new process is re-read in (to see it exec).
const YOUNG_SCANS: u8 = 3;

/// Known processes re-read per scan even when no rule covers them, as a
/// share (1 in N): a PID reused between two scans is noticed within N scans.
const VERIFY_ONE_IN: u64 = 8;

/// Scans `/proc`: one directory listing per pass; `/proc/PID/stat` for new
/// processes, for the processes some target covers, and for a rotating
/// share of the rest; the command line when a process is first seen, for
/// its first few scans, and whenever a `stat` read shows a new `comm` (it
/// exec'd): at once while covered or young, else within [`VERIFY_ONE_IN`]
/// scans. (Reading one `stat` costs ~16 µs of kernel time on these
/// machines: reading all of 2 000 each second would cost 33 ms.)
pub(crate) struct Scanner {
    me: i32,
    known: HashMap<i32, Known>,
    round: u64,
    page_size: u64,
    ticks_per_second: u64,
    /// One path and buffer for every `stat` read.
    reader: proc::StatReader,
    /// Sentry and its ancestors as of the last scan: re-read every scan, so
    /// that their `ppid` (the chain walked by [`lineage`]) is always fresh.
    lineage: HashSet<i32>,
}

impl Scanner {
    /// A scanner for the supervisor `me` (whose children carry entries).
    pub fn new(me: i32) -> Scanner {
        Scanner {
            me,
            known: HashMap::new(),
            round: 0,
            page_size: proc::page_size(),
            ticks_per_second: proc::ticks_per_second(),
            reader: proc::StatReader::default(),
            lineage: HashSet::new(),
        }
    }

    /// One pass. `covered` are the PIDs whose figures must be fresh (`None`:
    /// all of them). Processes that vanish mid-scan are skipped.
    pub fn scan(&mut self, covered: Option<&HashSet<i32>>) -> Vec<Sample> {
        let now = Instant::now();
        self.round += 1;
        let mut seen = HashSet::new();
        let mut samples = Vec::new();
        for pid in proc::pids() {
            let due = covered.is_none_or(|c| c.contains(&pid))
                || self.lineage.contains(&pid)
                || (pid as u64 + self.round).is_multiple_of(VERIFY_ONE_IN);
            let cpu = match self.known.get_mut(&pid) {
                Some(k) if !due && k.young == 0 => {
                    seen.insert(pid);
                    None
                }
                known => {
                    let Some(stat) = self.reader.read(pid) else { continue };
                    seen.insert(pid);
                    let ticks = stat.utime + stat.stime;
                    let (rss, vmem) = (stat.rss_pages * self.page_size, stat.vsize);
                    match known {
                        Some(k) if k.starttime == stat.starttime => {
                            k.young = k.young.saturating_sub(1);
                            if *k.comm != *stat.comm {
                                // It exec'd: what it is now is what counts.
                                k.comm = stat.comm.into_boxed_slice();
                                k.cmdline = cmdline_of(pid).into();
                                k.entry = (stat.ppid == self.me).then(|| entry_of(pid)).flatten();
                            }
                            let elapsed = now.duration_since(k.at).as_secs_f64();
                            let used = ticks.saturating_sub(k.ticks) as f64 / self.ticks_per_second as f64;
                            (k.rss, k.vmem, k.ticks, k.at, k.ppid) = (rss, vmem, ticks, now, stat.ppid);
                            (elapsed > 0.0).then(|| (used / elapsed * 100.0).round() as u64)
                        }
                        _ => {
                            // New, or a reused PID: another process.
                            let cmdline: Arc<str> = cmdline_of(pid).into();
                            let entry = (stat.ppid == self.me).then(|| entry_of(pid)).flatten();
                            let k = Known {
                                starttime: stat.starttime,
                                ppid: stat.ppid,
                                comm: stat.comm.into_boxed_slice(),
                                young: YOUNG_SCANS,
                                cmdline,
                                entry,
                                rss,
                                vmem,
                                ticks,
                                at: now,
                            };
                            self.known.insert(pid, k);
                            None
                        }
                    }
                }
            };
            let k = &self.known[&pid];
            samples.push(Sample {
                pid,
                starttime: k.starttime,
                ppid: k.ppid,
                cmdline: k.cmdline.clone(),
                entry: k.entry.clone(),
                rss: k.rss,
                vmem: k.vmem,
                cpu,
            });
        }
        self.known.retain(|pid, _| seen.contains(pid));
        self.lineage = lineage(&samples, self.me).into_iter().map(|i| samples[i].pid).chain([self.me]).collect();
        samples
    }
}

/// The fields of `/proc/PID/stat` a scan needs.
/// The arguments joined by single spaces ("" for kernel threads or when gone).
fn cmdline_of(pid: i32) -> String {
    proc::cmdline(pid).join(" ")
}

/// `SENTRY_ENTRY` from a child's environment.
fn entry_of(pid: i32) -> Option<Arc<str>> {
    proc::environ_var(pid, "SENTRY_ENTRY").map(Arc::from)
}

/// Whose rules: a watch, or an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Watch,
    Entry,
}

/// A watch or an entry with rules, as the watcher needs it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub name: String,
    pub owner: Owner,
    /// Watches only.
    pub pattern: Option<regex::Regex>,
    pub children: bool,
    pub every: Duration,
    pub rules: Vec<Rule>,
}

/// Every watch, and every entry that has rules.
pub(crate) fn targets(config: &Config) -> Vec<Target> {
    let watches = config.watches.iter().map(|w| Target {
        name: w.name.clone(),
        owner: Owner::Watch,
        pattern: Some(w.pattern.clone()),
        children: w.children,
        every: w.every,
        rules: w.rules.clone(),
    });
    let entries = config.entries.iter().filter(|e| !e.rules.is_empty()).map(|e| Target {
        name: e.name.clone(),
        owner: Owner::Entry,
        pattern: None,
        children: e.children,
        every: Duration::from_secs(1),
        rules: e.rules.clone(),
    });
    watches.chain(entries).collect()
}

/// The name of a rule that survives reloads while the rule is unchanged.
fn rule_key(owner: &str, rule: &Rule) -> String {
    format!("{owner}: {} => {}", rule.trigger, rule.action)
}

/// Rate-limit state of one (rule, process).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Clock {
    /// When the action last ran (Unix ms).
    pub last_fired_ms: Option<u64>,
    /// Whether the condition held at the last evaluation (for rules without `@`).
    pub holding: bool,
}

/// The `exec` helpers running (asked for and not yet reaped), per rule and
/// in all, under [`HELPERS_PER_RULE`](crate::budget::HELPERS_PER_RULE) and
/// [`HELPERS_MAX`](crate::budget::HELPERS_MAX): the watcher takes a place
/// when it decides to run one, the core gives it back when the helper is
/// reaped (or could not start). So no crowd of matching processes can make
/// Sentry fork more than the caps allow.
#[derive(Debug, Default)]
pub(crate) struct HelperGate {
    running: Mutex<HashMap<String, usize>>,
}

impl HelperGate {
    /// Takes a place for a helper of `rule`, or says how many of its own
    /// and in all run when there is none.
    pub fn try_take(&self, rule: &str) -> Result<(), (usize, usize)> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = running.values().sum();
        let mine = running.get(rule).copied().unwrap_or(0);
        if mine >= crate::budget::HELPERS_PER_RULE || total >= crate::budget::HELPERS_MAX {
            return Err((mine, total));
        }
        *running.entry(rule.to_string()).or_default() += 1;
        Ok(())
    }

    /// A helper of `rule` already running (one adopted across an exec).
    pub fn hold(&self, rule: &str) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()).entry(rule.to_string()).or_default() += 1;
    }

    /// A helper of `rule` is gone (or never started).
    pub fn release(&self, rule: &str) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(rule) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(rule);
            }
        }
    }

    /// Helpers running in all.
    #[cfg(test)]
    pub fn total(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }
}

/// An action to perform now.
#[derive(Clone, Debug)]
pub(crate) struct Firing {
    pub target: String,
    /// The rule's key (what [`HelperGate`] counts by).
    pub rule_key: String,
    /// The rule's position in its target.
    pub rule: usize,
    pub pid: i32,
    pub starttime: u64,
    pub action: Action,
    /// The console line, e.g. `rmem 912m > 900m: term.`
    pub description: String,
    /// `exec` arguments, expanded.
    pub argv: Option<Vec<String>>,
}

/// What a scan found: for status and `explain`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    pub matched: HashMap<String, Vec<MatchedProcess>>,
    pub fired: HashMap<String, u64>,
    /// Firings of `exec` rules not run: the helper caps were reached.
    pub skipped: HashMap<String, u64>,
    /// Every PID some target covers (their figures must stay fresh).
    pub covered: HashSet<i32>,
}

impl Report {
    /// How often the rule `index` of `target` fired.
    pub fn fired(&self, target: &str, rule: &Rule) -> u64 {
        self.fired.get(&rule_key(target, rule)).copied().unwrap_or(0)
    }

    /// How often the rule was due but its helper not run (caps).
    pub fn skipped(&self, target: &str, rule: &Rule) -> u64 {
        self.skipped.get(&rule_key(target, rule)).copied().unwrap_or(0)
    }
}

/// The rate-limit clocks and counters, while the watcher runs.
#[derive(Default)]
pub(crate) struct State {
    clocks: HashMap<(String, i32, u64), Clock>,
    fired: HashMap<String, u64>,
    skipped: HashMap<String, u64>,
    /// The caps on `exec` helpers (none for a dry run).
    pub gate: Option<Arc<HelperGate>>,
}

impl State {
    /// Back from a snapshot.
    pub fn from_memory(m: WatchMemory) -> State {
        State {
            clocks: m
                .clocks
                .into_iter()
                .map(|c| ((c.rule, c.pid, c.starttime), Clock { last_fired_ms: c.last_fired_ms, holding: c.holding }))
                .collect(),
            fired: m.fired.into_iter().collect(),
            skipped: m.skipped.into_iter().collect(),
            gate: None,
        }
    }

    /// For a snapshot.
    pub fn to_memory(&self) -> WatchMemory {
        WatchMemory {
            clocks: self
                .clocks
                .iter()
                .map(|((rule, pid, starttime), c)| ClockSnapshot {
                    rule: rule.clone(),
                    pid: *pid,
                    starttime: *starttime,
                    last_fired_ms: c.last_fired_ms,
                    holding: c.holding,
                })
                .collect(),
            fired: self.fired.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            skipped: self.skipped.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

/// The ancestors of `me` in `samples` (indices, parent first, PID 1
/// included): the shell or service manager that started Sentry, and theirs.
/// The scanner re-reads them every scan, so the chain is that of this scan.
pub(crate) fn lineage(samples: &[Sample], me: i32) -> Vec<usize> {
    let index: HashMap<i32, usize> = samples.iter().enumerate().map(|(i, s)| (s.pid, i)).collect();
    let mut out = Vec::new();
    let mut pid = index.get(&me).map(|&i| samples[i].ppid);
    while let Some(&i) = pid.filter(|&p| p > 0).and_then(|p| index.get(&p)) {
        if out.contains(&i) {
            break; // not a tree: never loop
        }
        out.push(i);
        pid = (samples[i].pid != 1).then_some(samples[i].ppid);
    }
    out
}

/// How a process is kin to Sentry, which spares it from every watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kin {
    /// Sentry itself, its children (entries' processes, `exec` helpers) and theirs.
    OwnTree,
    /// A process Sentry descends from.
    Ancestor,
}

/// Sentry's kin in `samples`: its own tree and its ancestors.
fn kin(samples: &[Sample], me: i32, children: &HashMap<i32, Vec<usize>>) -> HashMap<usize, Kin> {
    let mut out: HashMap<usize, Kin> = lineage(samples, me).into_iter().map(|i| (i, Kin::Ancestor)).collect();
    let mut stack: Vec<usize> = samples.iter().position(|s| s.pid == me).into_iter().collect();
    while let Some(i) = stack.pop() {
        if out.insert(i, Kin::OwnTree) == Some(Kin::OwnTree) {
            continue;
        }
        stack.extend(children.get(&samples[i].pid).into_iter().flatten().copied());
    }
    out
}

fn children_index(samples: &[Sample]) -> HashMap<i32, Vec<usize>> {
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        children.entry(s.ppid).or_default().push(i);
    }
    children
}

/// Which processes each target covers in `samples`. `me` is Sentry's PID:
/// its tree and its ancestors never match a watch; its direct children
/// carry the entries.
pub(crate) fn match_targets(targets: &[Target], samples: &[Sample], me: i32) -> Vec<Vec<usize>> {
    let children = children_index(samples);
    let descendants = |roots: Vec<usize>| -> Vec<usize> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = roots;
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            out.push(i);
            stack.extend(children.get(&samples[i].pid).into_iter().flatten().copied());
        }
        out.sort_unstable();
        out
    };
    let spared = kin(samples, me, &children);
    targets
        .iter()
        .map(|t| {
            let roots: Vec<usize> = match (&t.owner, &t.pattern) {
                (Owner::Watch, Some(pattern)) => (0..samples.len())
                    .filter(|i| !spared.contains_key(i))
                    .filter(|&i| !samples[i].cmdline.is_empty() && pattern.is_match(&samples[i].cmdline))
                    .collect(),
                _ => (0..samples.len())
                    .filter(|&i| samples[i].ppid == me && samples[i].entry.as_deref() == Some(t.name.as_str()))
                    .collect(),
            };
            let covered = if t.children { descendants(roots) } else { roots };
            match t.owner {
                Owner::Watch => covered.into_iter().filter(|i| !spared.contains_key(i)).collect(),
                Owner::Entry => covered,
            }
        })
        .collect()
}

/// For each target: the processes of Sentry's kin its pattern matches —
/// spared, never acted on (for `explain`).
pub(crate) fn spared_matches(targets: &[Target], samples: &[Sample], me: i32) -> Vec<Vec<(usize, Kin)>> {
    let spared = kin(samples, me, &children_index(samples));
    let mut sorted: Vec<(usize, Kin)> = spared.into_iter().collect();
    sorted.sort_unstable_by_key(|(i, _)| samples[*i].pid);
    targets
        .iter()
        .map(|t| match (&t.owner, &t.pattern) {
            (Owner::Watch, Some(pattern)) => sorted
                .iter()
                .filter(|(i, _)| !samples[*i].cmdline.is_empty() && pattern.is_match(&samples[*i].cmdline))
                .copied()
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// Evaluates every rule of the `due` targets for every covered process and
/// returns what fires now (updating clocks and counters in `state` when `act`).
pub(crate) fn evaluate(
    targets: &[Target],
    due: &[bool],
    samples: &[Sample],
    me: i32,
    now_ms: u64,
    state: &mut State,
    act: bool,
) -> (Vec<Firing>, Report) {
    let matched = match_targets(targets, samples, me);
    let mut firings = Vec::new();
    let mut report = Report::default();
    for ((t, covered), due) in targets.iter().zip(&matched).zip(due) {
        report.covered.extend(covered.iter().map(|&i| samples[i].pid));
        if t.owner == Owner::Watch {
            report.matched.insert(
                t.name.clone(),
                covered
                    .iter()
                    .map(|&i| MatchedProcess {
                        pid: samples[i].pid as u32,
                        rss_bytes: samples[i].rss,
                        vmem_bytes: samples[i].vmem,
                    })
                    .collect(),
            );
        }
        if !due {
            continue;
        }
        for (rule_index, rule) in t.rules.iter().enumerate() {
            let key = rule_key(&t.name, rule);
            for &i in covered {
                let s = &samples[i];
                let measured = match rule.trigger.quantity {
                    Quantity::Rmem => Some(s.rss),
                    Quantity::Vmem => Some(s.vmem),
                    Quantity::Cpu => s.cpu,
                };
                let holds = measured.is_some_and(|m| rule.trigger.holds(m));
                let clock_key = (key.clone(), s.pid, s.starttime);
                let clock = state.clocks.get(&clock_key).cloned().unwrap_or_default();
                let fire = holds
                    && match rule.action.every() {
                        Some(every) => clock
                            .last_fired_ms
                            .is_none_or(|last| now_ms.saturating_sub(last) >= every.as_millis() as u64),
                        None => !clock.holding,
                    };
                let m = measured.unwrap_or(0);
                let vars =
                    ExecVars { name: &t.name, pid: s.pid as u32, rmem: s.rss, vmem: s.vmem, cmdline: &s.cmdline };
                let argv = if fire { rule.action.argv(&vars) } else { None };
                // A helper over the caps is skipped: the firing is used up
                // (its clock moves on) and counted as skipped, not fired.
                let refused = match (&argv, &state.gate) {
                    (Some(_), Some(gate)) if act => gate.try_take(&key).err(),
                    _ => None,
                };
                if act {
                    let mut next = Clock { holding: holds, ..clock };
                    if fire {
                        next.last_fired_ms = Some(now_ms);
                        let counter = if refused.is_some() { &mut state.skipped } else { &mut state.fired };
                        *counter.entry(key.clone()).or_default() += 1;
                    }
                    state.clocks.insert(clock_key, next);
                }
                if fire {
                    let description = match refused {
                        Some((mine, all)) => format!(
                            "{}: {} skipped ({mine} of this rule's helpers and {all} in all running; at most {} and {}).",
                            describe(rule, m),
                            rule.action,
                            crate::budget::HELPERS_PER_RULE,
                            crate::budget::HELPERS_MAX
                        ),
                        None => format!("{}: {}.", describe(rule, m), rule.action),
                    };
                    firings.push(Firing {
                        target: t.name.clone(),
                        rule_key: key.clone(),
                        rule: rule_index,
                        pid: s.pid,
                        starttime: s.starttime,
                        action: rule.action.clone(),
                        description,
                        argv: if refused.is_some() { None } else { argv },
                    });
                }
            }
        }
    }
    if act {
        // Forget the clocks of processes that are gone.
        let alive: HashSet<(i32, u64)> = samples.iter().map(|s| (s.pid, s.starttime)).collect();
        state.clocks.retain(|(_, pid, start), _| alive.contains(&(*pid, *start)));
    }
    report.fired = state.fired.clone();
    report.skipped = state.skipped.clone();
    (firings, report)
}

/// `rmem 912m > 900m`: the measured figure against the trigger.
fn describe(rule: &Rule, measured: u64) -> String {
    let t = &rule.trigger;
    let (name, value, threshold) = match t.quantity {
        Quantity::Rmem => ("rmem", human_bytes(measured), human_bytes(t.threshold)),
        Quantity::Vmem => ("vmem", human_bytes(measured), human_bytes(t.threshold)),
        Quantity::Cpu => ("cpu", format!("{measured}%"), format!("{}%", t.threshold)),
    };
    let op = match t.comparison {
        Comparison::Greater => ">",
        Comparison::GreaterOrEqual => ">=",
        Comparison::Less => "<",
        Comparison::LessOrEqual => "<=",
    };
    format!("{name} {value} {op} {threshold}")
}

/// Bytes in the units of the trigger language, rounded: `912m`, `1.5g`, `300k`.
pub(crate) fn human_bytes(n: u64) -> String {
    const K: u64 = 1024;
    match n {
        n if n >= K * K * K => format!("{:.1}g", n as f64 / (K * K * K) as f64),
        n if n >= K * K => format!("{}m", (n as f64 / (K * K) as f64).round()),
        n if n >= K => format!("{}k", (n as f64 / K as f64).round()),
        n => n.to_string(),
    }
}

/// What the watcher asks of whoever owns the children.
pub(crate) trait Hands: Send + 'static {
    /// Run an `exec` helper for `target` (its output goes to the target's log).
    /// `rule` is the rule's key: its place in the [`HelperGate`] is taken.
    fn run_helper(&self, target: &str, rule: &str, argv: Vec<String>);
    /// Gracefully restart entry `entry`'s process `pid`, if it is still the
    /// process that started at `starttime`.
    fn restart(&self, entry: &str, pid: i32, starttime: u64);
    /// Say something on the console about `target`'s process `pid`.
    fn say(&self, target: &str, pid: i32, text: &str);
}

/// The watcher thread.
pub(crate) struct Watcher {
    stop: Sender<()>,
    thread: JoinHandle<State>,
    report: Arc<Mutex<Report>>,
}

impl Watcher {
    /// Starts scanning for `targets` (which must not be empty), remembering `state`.
    pub fn start(targets: Vec<Target>, state: State, hands: impl Hands) -> std::io::Result<Watcher> {
        let (stop, stopped) = bounded(1);
        let report = Arc::new(Mutex::new(Report::default()));
        let shared = report.clone();
        let thread = std::thread::Builder::new()
            .name("sentry-watch".into())
            .spawn(move || run(targets, state, hands, stopped, shared))?;
        Ok(Watcher { stop, thread, report })
    }

    /// The latest report.
    pub fn report(&self) -> Report {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the thread and returns its clocks and counters.
    pub fn stop(self) -> State {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

fn run(
    targets: Vec<Target>,
    mut state: State,
    hands: impl Hands,
    stopped: Receiver<()>,
    report: Arc<Mutex<Report>>,
) -> State {
    let me = std::process::id() as i32;
    let mut scanner = Scanner::new(me);
    let start = Instant::now();
    let mut next_due: Vec<Instant> = targets.iter().map(|_| start).collect();
    let mut covered = HashSet::new();
    loop {
        let now = Instant::now();
        let due: Vec<bool> = next_due.iter().map(|d| *d <= now).collect();
        if due.iter().any(|d| *d) {
            let samples = scanner.scan(Some(&covered));
            let (firings, fresh) =
                evaluate(&targets, &due, &samples, me, crate::sys::unix_now_ns() / 1_000_000, &mut state, true);
            for f in firings {
                perform(&f, &hands);
            }
            covered = fresh.covered.clone();
            *report.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
            for (d, t) in next_due.iter_mut().zip(&targets) {
                if *d <= now {
                    *d = crate::budget::later(now, t.every);
                }
            }
        }
        let wake = next_due.iter().min().copied().unwrap_or_else(|| crate::budget::later(now, Duration::from_secs(1)));
        match stopped.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return state,
        }
    }
}

/// Performs one firing; signals go only to the very process that was measured.
fn perform(f: &Firing, hands: &impl Hands) {
    hands.say(&f.target, f.pid, &f.description);
    let signal = match &f.action {
        Action::Term => Some(crate::Signal::SIGTERM),
        Action::Kill => Some(crate::Signal::SIGKILL),
        Action::Stop { .. } => Some(crate::Signal::SIGSTOP),
        Action::Restart => {
            hands.restart(&f.target, f.pid, f.starttime);
            None
        }
        Action::Exec { .. } => {
            if let Some(argv) = f.argv.clone() {
                hands.run_helper(&f.target, &f.rule_key, argv);
            }
            None
        }
    };
    if let Some(signal) = signal {
        if let Err(e) = signal_exactly(ProcessId { pid: f.pid, starttime: f.starttime }, signal) {
            log::debug!("{} not signalled ({signal}): {e}", f.pid);
        }
    }
}

/// Sends `signal` to the process `id` and to no other: a pidfd pins the
/// process behind the PID, and its starttime, read after the pidfd was
/// opened, says that it is still the one measured (PIDs are reused).
fn signal_exactly(id: ProcessId, signal: crate::Signal) -> std::io::Result<()> {
    use std::os::fd::AsFd as _;
    let fd = crate::sys::pidfd_open(id.pid)?;
    if proc::identity(id.pid) != Some(id) {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "another process now has that PID"));
    }
    crate::sys::pidfd_send_signal(fd.as_fd(), signal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::Trigger;

    fn sample(pid: i32, ppid: i32, cmdline: &str, rss_m: u64) -> Sample {
        Sample {
            pid,
            starttime: pid as u64 * 10,
            ppid,
            cmdline: cmdline.into(),
            entry: None,
            rss: rss_m << 20,
            vmem: rss_m << 21,
            cpu: Some(0),
        }
    }

    fn watch(name: &str, pattern: &str, children: bool, rules: &[(&str, &str)]) -> Target {
        Target {
            name: name.into(),
            owner: Owner::Watch,
            pattern: Some(regex::Regex::new(pattern).unwrap()),
            children,
            every: Duration::from_secs(1),
            rules: rules
                .iter()
                .map(|(t, a)| Rule { trigger: Trigger::parse(t).unwrap(), action: Action::parse(a).unwrap() })
                .collect(),
        }
    }

    const ME: i32 = 100;

    fn world() -> Vec<Sample> {
        vec![
            sample(1, 0, "/sbin/init", 5),
            sample(2, 0, "", 0), // a kernel thread
            sample(ME, 1, "myconf start browser", 10),
            sample(101, ME, "sleep browser", 1),
            sample(200, 1, "browser --main", 50),
            sample(201, 200, "renderer", 900),
            sample(202, 201, "gpu-helper", 20),
            sample(300, 1, "other thing", 2000),
        ]
    }

    fn pids(samples: &[Sample], covered: &[usize]) -> Vec<i32> {
        covered.iter().map(|&i| samples[i].pid).collect()
    }

    #[test]
    fn matching_is_unanchored_and_children_are_added_recursively() {
        let s = world();
        let m = match_targets(&[watch("b", "rowse", false, &[]), watch("bt", "^browser", true, &[])], &s, ME);
        assert_eq!(pids(&s, &m[0]), [200], "Sentry's own tree and its children never match");
        assert_eq!(pids(&s, &m[1]), [200, 201, 202]);
    }

    #[test]
    fn kernel_threads_never_match() {
        let s = world();
        let m = match_targets(&[watch("all", ".*", false, &[])], &s, ME);
        assert_eq!(pids(&s, &m[0]), [200, 201, 202, 300], "nor does PID 1, Sentry's parent here");
    }

    #[test]
    fn rules_fire_per_process_and_spare_the_small() {
        let s = world();
        let t = [watch("b", "^browser", true, &[("rmem > 500m", "term")])];
        let mut state = State::default();
        let (f, report) = evaluate(&t, &[true], &s, ME, 0, &mut state, true);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].pid, f[0].description.as_str()), (201, "rmem 900m > 500m: term."));
        assert_eq!(report.matched["b"].len(), 3);
        assert_eq!(report.fired, HashMap::from([("b: rmem > 500m => term".to_string(), 1)]));
    }

    #[test]
    fn without_a_rate_limit_a_rule_fires_once_per_crossing() {
        let mut s = world();
        let t = [watch("o", "other", false, &[("rmem > 1g", "kill")])];
        let mut state = State::default();
        let count = |s: &[Sample], state: &mut State, ms| evaluate(&t, &[true], s, ME, ms, state, true).0.len();
        assert_eq!(count(&s, &mut state, 0), 1);
        assert_eq!(count(&s, &mut state, 1000), 0, "still above: no new crossing");
        s[7].rss = 1 << 20;
        assert_eq!(count(&s, &mut state, 2000), 0);
        s[7].rss = 3 << 30;
        assert_eq!(count(&s, &mut state, 3000), 1, "crossed again");
    }

    #[test]
    fn a_rate_limit_holds_per_process_even_when_the_condition_flickers() {
        let mut s = world();
        let t = [watch("o", "other", false, &[("rmem > 1g", "stop @ 10m")])];
        let mut state = State::default();
        let minute = 60_000;
        let count = |s: &[Sample], state: &mut State, ms| evaluate(&t, &[true], s, ME, ms, state, true).0.len();
        assert_eq!(count(&s, &mut state, 0), 1);
        s[7].rss = 0; // e.g. the user sent SIGCONT and it freed memory
        assert_eq!(count(&s, &mut state, minute), 0);
        s[7].rss = 3 << 30;
        assert_eq!(count(&s, &mut state, 2 * minute), 0, "not within 10 minutes");
        assert_eq!(count(&s, &mut state, 10 * minute), 1);
        // A new process with the same PID is another process.
        s[7].starttime += 1;
        assert_eq!(count(&s, &mut state, 10 * minute + 1), 1);
    }

    #[test]
    fn exec_words_get_the_process_figures() {
        let s = world();
        let t = [watch("b", "renderer", false, &[("rmem > 1m", "exec notify $NAME $PID $RMEM \"$CMDLINE\"")])];
        let (f, _) = evaluate(&t, &[true], &s, ME, 0, &mut State::default(), true);
        assert_eq!(f[0].argv.as_deref().unwrap(), ["notify", "b", "201", &(900u64 << 20).to_string(), "renderer"]);
    }

    #[test]
    fn dry_runs_change_no_clock() {
        let s = world();
        let t = [watch("o", "other", false, &[("rmem > 1g", "term")])];
        let mut state = State::default();
        for _ in 0..3 {
            assert_eq!(evaluate(&t, &[true], &s, ME, 0, &mut state, false).0.len(), 1);
        }
        assert!(state.clocks.is_empty() && state.fired.is_empty());
    }

    #[test]
    fn entry_rules_cover_sentrys_children_of_that_entry() {
        let mut s = world();
        s[3].entry = Some("sleeper".into());
        let mut t = watch("sleeper", "unused", false, &[("rmem > 0", "restart")]);
        t.owner = Owner::Entry;
        t.pattern = None;
        let m = match_targets(&[t], &s, ME);
        assert_eq!(pids(&s, &m[0]), [101]);
    }

    #[test]
    fn sentrys_ancestors_never_match_a_watch() {
        let mut s = world();
        s.push(sample(400, 1, "sudo browser-launcher", 1));
        s.push(sample(401, 400, "bash -c browser-launcher; true", 1));
        s[2].ppid = 401; // Sentry was started by that shell
        s.push(sample(402, 400, "browser-launcher sibling", 1));
        let t = [watch("b", "browser-launcher|init", true, &[("rmem > 0", "term")])];
        let m = match_targets(&t, &s, ME);
        assert_eq!(pids(&s, &m[0]), [402], "ancestors (PID 1 included) are spared; a sibling is not");
        assert_eq!(pids(&s, &lineage(&s, ME)), [401, 400, 1]);
        let spared = spared_matches(&t, &s, ME);
        let spared: Vec<(i32, Kin)> = spared[0].iter().map(|(i, k)| (s[*i].pid, *k)).collect();
        assert_eq!(spared, [(1, Kin::Ancestor), (400, Kin::Ancestor), (401, Kin::Ancestor)]);
        let (f, _) = evaluate(&t, &[true], &s, ME, 0, &mut State::default(), true);
        assert_eq!(f.iter().map(|f| f.pid).collect::<Vec<_>>(), [402]);
        let own = spared_matches(&[watch("o", "browser", false, &[])], &s, ME);
        assert!(own[0].iter().any(|(i, k)| s[*i].pid == ME && *k == Kin::OwnTree), "{own:?}");
    }

    #[test]
    fn a_real_scan_finds_this_process_and_its_command_line() {
        let me = std::process::id() as i32;
        let mut scanner = Scanner::new(1);
        let samples = scanner.scan(None);
        let mine = samples.iter().find(|s| s.pid == me).expect("this test process");
        assert!(mine.rss > 0 && mine.vmem >= mine.rss);
        assert!(!mine.cmdline.is_empty());
        assert_eq!(mine.cpu, None, "no CPU figure on first sight");
        let again = scanner.scan(None);
        assert!(again.iter().find(|s| s.pid == me).unwrap().cpu.is_some());
    }

    #[test]
    fn a_process_that_execs_is_seen_as_what_it_became() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read go; exec sleep 7.5"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let comm_is = |want: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != want {
                assert!(std::time::Instant::now() < deadline, "{pid} never became {want}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let mut scanner = Scanner::new(1);
        let nobody = HashSet::new();
        let cmdline = |samples: Vec<Sample>| samples.into_iter().find(|s| s.pid == pid).map(|s| s.cmdline.to_string());
        comm_is("sh");
        // Past the scans that re-read every young process.
        let before: Vec<_> = (0..4).map(|_| cmdline(scanner.scan(Some(&nobody)))).collect();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        comm_is("sleep");
        // Uncovered and no longer young, its stat is read once in
        // VERIFY_ONE_IN scans: by then its new comm has been noticed.
        let after: Vec<_> = (0..VERIFY_ONE_IN).map(|_| cmdline(scanner.scan(Some(&nobody)))).collect();
        let _ = child.kill();
        let _ = child.wait();
        assert!(before.iter().all(|b| b.as_deref() == Some("sh -c read go; exec sleep 7.5")), "{before:?}");
        assert_eq!(after.last().unwrap().as_deref(), Some("sleep 7.5"), "even though no rule covers it: {after:?}");
    }

    #[test]
    fn bytes_are_shown_in_trigger_units() {
        assert_eq!(human_bytes(912 << 20), "912m");
        assert_eq!(human_bytes(3 << 29), "1.5g");
        assert_eq!(human_bytes(2048), "2k");
        assert_eq!(human_bytes(10), "10");
    }

    #[test]
    fn exec_helpers_over_the_caps_are_skipped_and_counted() {
        use crate::budget::{HELPERS_MAX, HELPERS_PER_RULE};
        let t = vec![Target {
            name: "w".into(),
            owner: Owner::Watch,
            pattern: Some(regex::Regex::new("hog").unwrap()),
            children: false,
            every: Duration::from_secs(1),
            rules: vec![Rule {
                trigger: Trigger::parse("vmem > 1m").unwrap(),
                action: crate::rule::Action::parse("exec sleep 100").unwrap(),
            }],
        }];
        let s: Vec<Sample> = (0..10).map(|i| sample(1000 + i, 1, "hog", 10)).collect();
        let gate = Arc::new(HelperGate::default());
        let mut state = State { gate: Some(gate.clone()), ..State::default() };
        let (f, report) = evaluate(&t, &[true], &s, ME, 0, &mut state, true);
        let run: Vec<&Firing> = f.iter().filter(|f| f.argv.is_some()).collect();
        assert_eq!(run.len(), HELPERS_PER_RULE, "at most the per-rule cap runs");
        assert!(f.iter().filter(|f| f.argv.is_none()).all(|f| f.description.contains("skipped")));
        assert_eq!(report.fired(&t[0].name, &t[0].rules[0]), HELPERS_PER_RULE as u64);
        assert_eq!(report.skipped(&t[0].name, &t[0].rules[0]), 10 - HELPERS_PER_RULE as u64);
        // Places come back when helpers are reaped; the global cap holds across rules.
        for _ in 0..HELPERS_PER_RULE {
            gate.release(&run[0].rule_key);
        }
        assert_eq!(gate.total(), 0);
        for i in 0..HELPERS_MAX {
            assert!(gate.try_take(&format!("rule {i}")).is_ok());
        }
        assert_eq!(gate.try_take("one more"), Err((0, HELPERS_MAX)));
        // Skips survive an exec.
        let back = State::from_memory(state.to_memory());
        assert_eq!(back.skipped, state.skipped);
    }
}
