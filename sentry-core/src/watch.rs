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
//! What only some targets need is read in a step of its own between the
//! scan and the evaluation ([`measure`]): the cgroup path of the processes a
//! `.cgroup(regex)` watch's pattern matches, and `treemem` (PSS sums, or a
//! slot's cgroup memory) of the processes a target with a `treemem` rule
//! covers — never otherwise, as `smaps_rollup` reads are costly.
//! It knows nothing of slots, HTTP or re-exec.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
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
    /// The cgroup v2 path (`/proc/PID/cgroup`'s `0::` line), read by
    /// [`measure`] only for processes a `.cgroup` watch's pattern matches.
    pub cgroup: Option<Arc<str>>,
    /// Bytes of the whole tree, measured by [`measure`] only for processes
    /// a target with a `treemem` rule covers.
    pub treemem: Option<u64>,
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
    /// The cgroup path and the scan round it was read in; `None` until it
    /// is asked for, and again once the process execs.
    cgroup: Option<(u64, Option<Arc<str>>)>,
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
                                k.cgroup = None;
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
                                cgroup: None,
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
                cgroup: None,
                treemem: None,
            });
        }
        self.known.retain(|pid, _| seen.contains(pid));
        self.lineage = lineage(&samples, self.me).into_iter().map(|i| samples[i].pid).chain([self.me]).collect();
        samples
    }

    /// The cgroup v2 path of `pid`, a process of the last scan: read when
    /// first asked for, then kept for that (pid, starttime) until it execs,
    /// and read again in one scan of [`VERIFY_ONE_IN`] (staggered by PID),
    /// so that a process moved to another cgroup is seen there within as
    /// many scans. `None` for a process the last scan did not see, one that
    /// is gone, or a host without cgroup v2.
    pub fn cgroup(&mut self, pid: i32) -> Option<Arc<str>> {
        let round = self.round;
        let k = self.known.get_mut(&pid)?;
        match &k.cgroup {
            Some((read, path)) if *read == round || !(pid as u64 + round).is_multiple_of(VERIFY_ONE_IN) => path.clone(),
            _ => {
                let path: Option<Arc<str>> = proc::cgroup_v2(pid).map(Arc::from);
                k.cgroup = Some((round, path.clone()));
                path
            }
        }
    }
}

/// The fields of `/proc/PID/stat` a scan needs.
/// The arguments joined by single spaces ("" for kernel threads or when gone).
fn cmdline_of(pid: i32) -> String {
    proc::cmdline(pid).join(" ")
}

/// The entry a child of Sentry's is a slot process of: its `SENTRY_ENTRY`,
/// if it also has a `SENTRY_INDEX` (an `exec` helper has the entry it acts
/// for but no slot; an entry's rules must not see it, or a rule's own
/// helper would fire the rule again, without end).
fn entry_of(pid: i32) -> Option<Arc<str>> {
    let environ = proc::environ(pid);
    let has = |key: &str| environ.iter().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_string));
    has("SENTRY_INDEX")?;
    has("SENTRY_ENTRY").map(Arc::from)
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
    /// Watches only: `.cgroup(regex)`, which the cgroup path must match too.
    pub cgroup: Option<regex::Regex>,
    pub children: bool,
    pub every: Duration,
    pub rules: Vec<Rule>,
    /// Entries only: the instance's cgroup tree, when its slots run in
    /// cgroups of their own. An entry's process whose cgroup lies below it
    /// has its slot's cgroup memory as `treemem`.
    pub cgroup_root: Option<PathBuf>,
    /// Watches only: the instance's cgroup tree as `/proc/PID/cgroup`
    /// shows it: what runs there is Sentry's own (a daemon an entry's
    /// process double-forked included) and never matches.
    pub spare: Option<Arc<str>>,
}

impl Target {
    /// Whether a watch's pattern matches the process's command line (never
    /// an empty one: kernel threads).
    fn pattern_matches(&self, s: &Sample) -> bool {
        self.pattern.as_ref().is_some_and(|p| !s.cmdline.is_empty() && p.is_match(&s.cmdline))
    }

    /// Whether a watch matches the process: its pattern the command line
    /// and, with `.cgroup`, its cgroup regex the cgroup path [`measure`]
    /// read (a process without one, as on a host without cgroup v2, does
    /// not match).
    fn matches(&self, s: &Sample) -> bool {
        self.pattern_matches(s)
            && self.cgroup.as_ref().is_none_or(|re| s.cgroup.as_deref().is_some_and(|c| re.is_match(c)))
            && !self.spares(s)
    }

    /// Whether the process runs in the instance's own cgroup tree.
    fn spares(&self, s: &Sample) -> bool {
        match (&self.spare, &s.cgroup) {
            (Some(own), Some(c)) => crate::cgroup::within(c, own),
            _ => false,
        }
    }

    /// Whether the process's cgroup path is needed to match it.
    fn needs_cgroup(&self) -> bool {
        self.cgroup.is_some() || self.spare.is_some()
    }

    /// Whether some rule compares `treemem` (which is measured only then).
    pub fn uses_treemem(&self) -> bool {
        self.rules.iter().any(|r| r.trigger.quantity == Quantity::Treemem)
    }
}

/// Every watch, and every entry that has rules. `cgroup_root` is the
/// instance's cgroup tree when its slots run in cgroups of their own
/// (`None` where they run in process groups): entries' `treemem` is then
/// their slot's cgroup memory.
pub(crate) fn targets(config: &Config, cgroup_root: Option<&Path>) -> Vec<Target> {
    let spare: Option<Arc<str>> = cgroup_root.and_then(crate::cgroup::name_of).map(Arc::from);
    let watches = config.watches.iter().map(|w| Target {
        spare: spare.clone(),
        name: w.name.clone(),
        owner: Owner::Watch,
        pattern: Some(w.pattern.clone()),
        cgroup: w.cgroup.clone(),
        children: w.children,
        every: w.every,
        rules: w.rules.clone(),
        cgroup_root: None,
    });
    let entries = config.entries.iter().filter(|e| !e.rules.is_empty()).map(|e| Target {
        name: e.name.clone(),
        owner: Owner::Entry,
        pattern: None,
        cgroup: None,
        children: e.children,
        every: Duration::from_secs(1),
        rules: e.rules.clone(),
        cgroup_root: cgroup_root.map(Path::to_path_buf),
        spare: None,
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
            let roots: Vec<usize> = match t.owner {
                Owner::Watch => {
                    (0..samples.len()).filter(|i| !spared.contains_key(i)).filter(|&i| t.matches(&samples[i])).collect()
                }
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
        .map(|t| match t.owner {
            Owner::Watch => sorted.iter().filter(|(i, _)| t.matches(&samples[*i])).copied().collect(),
            Owner::Entry => Vec::new(),
        })
        .collect()
}

/// The reads [`measure`] makes, behind a trait so that it can be tested
/// without processes.
pub(crate) trait Probe {
    /// The cgroup v2 path of a process of this scan.
    fn cgroup(&mut self, pid: i32) -> Option<Arc<str>>;
    /// Its proportional set size in bytes.
    fn pss(&mut self, pid: i32) -> Option<u64>;
    /// The memory of the process's cgroup, if that cgroup lies below `root`
    /// (an instance's tree): `None` for a process outside it.
    fn slot_memory(&mut self, pid: i32, root: &Path) -> Option<u64>;
}

/// The reads of a live scan: cgroup paths cached by the [`Scanner`], PSS
/// from `smaps_rollup`, a slot's memory from its cgroup.
pub(crate) struct LiveProbe<'a>(pub &'a mut Scanner);

impl Probe for LiveProbe<'_> {
    fn cgroup(&mut self, pid: i32) -> Option<Arc<str>> {
        self.0.cgroup(pid)
    }

    fn pss(&mut self, pid: i32) -> Option<u64> {
        proc::pss_bytes(pid)
    }

    fn slot_memory(&mut self, pid: i32, root: &Path) -> Option<u64> {
        let dir = crate::cgroup::directory_of_process(pid)?;
        (dir.starts_with(root) && dir != root).then(|| crate::cgroup::figures_of(&dir, true).memory_bytes)
    }
}

/// Reads into the samples of one scan what some targets need, before
/// [`evaluate`]: the cgroup path of every process whose command line a
/// `.cgroup` watch's pattern matches (so that matching can check it), and,
/// for the `due` targets with a `treemem` rule, the `treemem` of every
/// process they cover: for an entry's process (a child of Sentry) whose
/// cgroup lies below the target's `cgroup_root`, its slot's cgroup memory
/// (`memory.current`, or the summed PSS of its members without the memory
/// controller); for any other, the summed PSS of it and its descendants in
/// this scan (`None` when its own PSS cannot be read; a descendant whose
/// PSS cannot be read — gone, or not readable by Sentry — counts 0). No
/// other target costs a read.
pub(crate) fn measure(targets: &[Target], due: &[bool], samples: &mut [Sample], me: i32, probe: &mut impl Probe) {
    for t in targets.iter().filter(|t| t.needs_cgroup()) {
        for s in samples.iter_mut() {
            if s.cgroup.is_none() && t.pattern_matches(s) {
                s.cgroup = probe.cgroup(s.pid);
            }
        }
    }
    if !targets.iter().zip(due).any(|(t, due)| *due && t.uses_treemem()) {
        return;
    }
    let matched = match_targets(targets, samples, me);
    let children = children_index(samples);
    let mut pss: HashMap<i32, Option<u64>> = HashMap::new();
    let mut done: HashSet<usize> = HashSet::new();
    for ((t, covered), due) in targets.iter().zip(&matched).zip(due) {
        if !*due || !t.uses_treemem() {
            continue;
        }
        for &i in covered {
            if !done.insert(i) {
                continue;
            }
            let pid = samples[i].pid;
            let slot = match (&samples[i].entry, &t.cgroup_root) {
                (Some(_), Some(root)) if samples[i].ppid == me => probe.slot_memory(pid, root),
                _ => None,
            };
            samples[i].treemem = slot.or_else(|| tree_pss(samples, &children, i, &mut pss, probe));
        }
    }
}

/// The summed PSS of `samples[root]` and its descendants (see [`measure`]).
fn tree_pss(
    samples: &[Sample],
    children: &HashMap<i32, Vec<usize>>,
    root: usize,
    pss: &mut HashMap<i32, Option<u64>>,
    probe: &mut impl Probe,
) -> Option<u64> {
    let mut read = |pid: i32| *pss.entry(pid).or_insert_with(|| probe.pss(pid));
    let mut total = read(samples[root].pid)?;
    let mut seen = HashSet::from([root]);
    let mut stack: Vec<usize> = children.get(&samples[root].pid).cloned().unwrap_or_default();
    while let Some(i) = stack.pop() {
        if !seen.insert(i) {
            continue; // not a tree: never loop
        }
        total = total.saturating_add(read(samples[i].pid).unwrap_or(0));
        stack.extend(children.get(&samples[i].pid).into_iter().flatten().copied());
    }
    Some(total)
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
                    Quantity::Treemem => s.treemem,
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
        Quantity::Treemem => ("treemem", human_bytes(measured), human_bytes(t.threshold)),
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
        // Until the first scan ends, the counts are those remembered (a
        // status right after a reload must not show them as 0).
        let first = Report { fired: state.fired.clone(), skipped: state.skipped.clone(), ..Report::default() };
        let report = Arc::new(Mutex::new(first));
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
            let mut samples = scanner.scan(Some(&covered));
            measure(&targets, &due, &mut samples, me, &mut LiveProbe(&mut scanner));
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
            cgroup: None,
            treemem: None,
        }
    }

    fn watch(name: &str, pattern: &str, children: bool, rules: &[(&str, &str)]) -> Target {
        Target {
            name: name.into(),
            owner: Owner::Watch,
            pattern: Some(regex::Regex::new(pattern).unwrap()),
            cgroup: None,
            children,
            every: Duration::from_secs(1),
            rules: rules
                .iter()
                .map(|(t, a)| Rule { trigger: Trigger::parse(t).unwrap(), action: Action::parse(a).unwrap() })
                .collect(),
            cgroup_root: None,
            spare: None,
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

    /// A [`Probe`] over made-up figures, recording what was asked.
    #[derive(Default)]
    struct Fake {
        cgroups: HashMap<i32, &'static str>,
        pss: HashMap<i32, u64>,
        /// pid → (its cgroup directory, that cgroup's memory)
        slots: HashMap<i32, (&'static str, u64)>,
        asked: Vec<(&'static str, i32)>,
    }

    impl Probe for Fake {
        fn cgroup(&mut self, pid: i32) -> Option<Arc<str>> {
            self.asked.push(("cgroup", pid));
            self.cgroups.get(&pid).map(|c| Arc::from(*c))
        }

        fn pss(&mut self, pid: i32) -> Option<u64> {
            self.asked.push(("pss", pid));
            self.pss.get(&pid).copied()
        }

        fn slot_memory(&mut self, pid: i32, root: &Path) -> Option<u64> {
            self.asked.push(("slot", pid));
            let (dir, bytes) = self.slots.get(&pid)?;
            let dir = Path::new(dir);
            (dir.starts_with(root) && dir != root).then_some(*bytes)
        }
    }

    const M: u64 = 1 << 20;

    /// The world's PSS: the renderer holds most of the browser's memory.
    fn fake_pss() -> Fake {
        let pss = [(1, 4), (ME, 8), (101, 1), (200, 30), (201, 700), (202, 15), (300, 1500)];
        Fake { pss: pss.into_iter().map(|(p, m)| (p, m * M)).collect(), ..Fake::default() }
    }

    fn treemems(s: &[Sample]) -> Vec<(i32, Option<u64>)> {
        s.iter().filter(|s| s.treemem.is_some()).map(|s| (s.pid, s.treemem.map(|m| m / M))).collect()
    }

    #[test]
    fn treemem_sums_the_pss_of_a_process_and_its_descendants() {
        // (children, expected treemem in MiB per covered process)
        type Row = (bool, &'static [(i32, Option<u64>)]);
        let table: [Row; 2] =
            [(false, &[(200, Some(745))]), (true, &[(200, Some(745)), (201, Some(715)), (202, Some(15))])];
        for (children, expected) in table {
            let t = [watch("b", "^browser", children, &[("treemem > 500m", "term")])];
            let mut s = world();
            let mut probe = fake_pss();
            measure(&t, &[true], &mut s, ME, &mut probe);
            assert_eq!(treemems(&s), expected, "children {children}");
            let mut read: Vec<i32> = probe.asked.iter().map(|(what, pid)| (assert_eq!(*what, "pss"), *pid).1).collect();
            read.sort_unstable();
            assert_eq!(read, [200, 201, 202], "each PSS read once per scan, only in the tree");
        }
    }

    #[test]
    fn nothing_is_read_unless_a_due_target_compares_treemem() {
        let table: [(&[(&str, &str)], bool); 4] = [
            (&[], true),
            (&[("rmem > 1m", "term"), ("cpu > 90%", "kill"), ("vmem > 1g", "exec logger $RMEM")], true),
            (&[("treemem > 1m", "term")], false),
            (&[("rmem > 1m", "term"), ("treemem > 1m", "term")], true),
        ];
        for (rules, due) in table {
            let t = [watch("b", "^browser", true, rules)];
            let mut s = world();
            let mut probe = fake_pss();
            measure(&t, &[due], &mut s, ME, &mut probe);
            let uses = t[0].uses_treemem();
            assert_eq!(!probe.asked.is_empty(), uses && due, "{rules:?} due {due}: {:?}", probe.asked);
            assert_eq!(treemems(&s).is_empty(), !(uses && due));
        }
    }

    #[test]
    fn an_unreadable_pss_makes_treemem_unknown_at_the_root_and_zero_below() {
        let t = [watch("b", "^browser", true, &[("treemem > 1m", "term")])];
        let mut s = world();
        let mut probe = fake_pss();
        probe.pss.remove(&201); // e.g. another user's, or gone
        measure(&t, &[true], &mut s, ME, &mut probe);
        assert_eq!(treemems(&s), [(200, Some(45)), (202, Some(15))]);
        assert_eq!(s[5].treemem, None, "201: unknown, so no rule on it holds");
    }

    #[test]
    fn an_entrys_process_has_its_slot_cgroup_memory_when_in_the_instance_tree() {
        let root = "/sys/fs/cgroup/x/sentry.conf.0a1b2c3d";
        // (instance root, the process's cgroup, expected treemem in MiB, a PSS sum was read)
        let table = [
            (Some(root), "/sys/fs/cgroup/x/sentry.conf.0a1b2c3d/sleeper/0", 333, false),
            (Some(root), "/sys/fs/cgroup/x", 1 + 2, true), // outside the tree: process groups
            (Some(root), root, 1 + 2, true),               // the tree itself is no slot's
            (Some(root), "/sys/fs/cgroup/x/sentry.conf.0a1b2c3dzz/sleeper/0", 1 + 2, true),
            (None, "/sys/fs/cgroup/x/sentry.conf.0a1b2c3d/sleeper/0", 1 + 2, true),
        ];
        for (cgroup_root, dir, expected, summed) in table {
            let mut s = world();
            s[3].entry = Some("sleeper".into());
            s.push(sample(102, 101, "sleep helper", 1)); // the slot process's child
            let mut t = watch("sleeper", "unused", false, &[("treemem > 300m", "restart")]);
            (t.owner, t.pattern, t.cgroup_root) = (Owner::Entry, None, cgroup_root.map(PathBuf::from));
            let mut probe = fake_pss();
            probe.pss.insert(102, 2 * M);
            probe.slots.insert(101, (dir, 333 * M));
            let t = [t];
            measure(&t, &[true], &mut s, ME, &mut probe);
            assert_eq!(treemems(&s), [(101, Some(expected))], "{cgroup_root:?} {dir}");
            assert_eq!(probe.asked.iter().any(|(what, _)| *what == "pss"), summed, "{dir}: {:?}", probe.asked);
            let (f, _) = evaluate(&t, &[true], &s, ME, 0, &mut State::default(), true);
            assert_eq!(f.len(), usize::from(expected > 300), "{dir}");
        }
    }

    #[test]
    fn treemem_rules_compare_the_measured_tree() {
        // (trigger, treemem of 200 in MiB, fires)
        let table = [
            ("treemem > 500m", Some(745), true),
            ("treemem > 500m", Some(500), false),
            ("treemem >= 500m", Some(500), true),
            ("500m < treemem", Some(501), true),
            ("treemem < 100m", Some(50), true),
            ("treemem < 100m", None, false),
            ("treemem > 0", None, false),
        ];
        for (trigger, treemem, fires) in table {
            let t = [watch("b", "^browser --main", false, &[(trigger, "term"), ("rmem > 500m", "kill")])];
            let mut s = world();
            s[4].treemem = treemem.map(|m| m * M);
            let (f, _) = evaluate(&t, &[true], &s, ME, 0, &mut State::default(), true);
            let descriptions: Vec<&str> = f.iter().map(|f| f.description.as_str()).collect();
            let expected = format!("treemem {}m {}: term.", treemem.unwrap_or(0), &trigger.replace("treemem ", "")[..]);
            if fires {
                assert_eq!(f.len(), 1, "{trigger} at {treemem:?}: {descriptions:?}");
                assert_eq!((f[0].pid, f[0].rule), (200, 0), "rmem 50m > 500m never fires");
                if trigger.starts_with("treemem") {
                    assert_eq!(descriptions, [expected.as_str()]);
                }
            } else {
                assert!(f.is_empty(), "{trigger} at {treemem:?}: {descriptions:?}");
            }
        }
    }

    #[test]
    fn a_cgroup_watch_matches_by_path_and_reads_only_what_its_pattern_matched() {
        let scope = "/user.slice/user-1000.slice/app-browser-1234.scope";
        let cgroups = [(1, "/init.scope"), (200, scope), (201, scope), (202, "/elsewhere"), (300, "/system.slice/x")];
        // (pattern, cgroup regex, children, matched, cgroups read)
        type Row = (&'static str, &'static str, bool, &'static [i32], &'static [i32]);
        let table: [Row; 6] = [
            ("^browser|renderer", r"app-browser-\d+\.scope$", false, &[200, 201], &[200, 201]),
            ("^browser", r"app-browser-\d+\.scope$", true, &[200, 201, 202], &[200]),
            ("gpu", r"app-browser", false, &[], &[202]),
            ("", r"app-browser", false, &[200, 201], &[1, ME, 101, 200, 201, 202, 300]),
            (".*", r"^/system\.slice/", false, &[300], &[1, ME, 101, 200, 201, 202, 300]),
            ("other", r"^/nowhere$", true, &[], &[300]),
        ];
        for (pattern, cgroup, children, matched, read) in table {
            let mut t = watch("w", pattern, children, &[("rmem > 0", "term")]);
            t.cgroup = Some(regex::Regex::new(cgroup).unwrap());
            let t = [t];
            let mut s = world();
            let mut probe = Fake { cgroups: cgroups.into_iter().collect(), ..Fake::default() };
            measure(&t, &[true], &mut s, ME, &mut probe);
            let asked: Vec<i32> = probe.asked.iter().map(|(_, pid)| *pid).collect();
            assert_eq!(asked, read, "{pattern:?} /{cgroup}/: the kernel thread (2) is never read");
            let m = match_targets(&t, &s, ME);
            assert_eq!(pids(&s, &m[0]), matched, "{pattern:?} /{cgroup}/");
            let (f, _) = evaluate(&t, &[true], &s, ME, 0, &mut State::default(), true);
            assert_eq!(f.iter().map(|f| f.pid).collect::<Vec<_>>(), matched);
        }
        // Without .cgroup, nothing is read and the path plays no part.
        let t = [watch("w", "^browser", false, &[])];
        let mut s = world();
        let mut probe = Fake::default();
        measure(&t, &[true], &mut s, ME, &mut probe);
        assert!(probe.asked.is_empty());
        assert_eq!(pids(&s, &match_targets(&t, &s, ME)[0]), [200]);
    }

    #[test]
    fn the_scanner_reads_a_cgroup_path_once_per_process() {
        let me = std::process::id() as i32;
        let mut scanner = Scanner::new(1);
        scanner.scan(None);
        let first = scanner.cgroup(me);
        assert_eq!(first.as_deref(), proc::cgroup_v2(me).as_deref());
        assert_eq!(scanner.cgroup(me), first);
        assert_eq!(scanner.cgroup(-5), None, "not a process of the scan");
    }

    #[test]
    fn exec_helpers_over_the_caps_are_skipped_and_counted() {
        use crate::budget::{HELPERS_MAX, HELPERS_PER_RULE};
        let t = vec![Target {
            name: "w".into(),
            owner: Owner::Watch,
            pattern: Some(regex::Regex::new("hog").unwrap()),
            cgroup: None,
            children: false,
            every: Duration::from_secs(1),
            rules: vec![Rule {
                trigger: Trigger::parse("vmem > 1m").unwrap(),
                action: crate::rule::Action::parse("exec sleep 100").unwrap(),
            }],
            cgroup_root: None,
            spare: None,
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
