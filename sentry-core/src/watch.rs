//! Watches and rules: one pass over `/proc` per interval ([`Scanner`]),
//! matching each watch's regex (and, with `.children(true)`, every
//! descendant) and each entry's processes, evaluating triggers per process,
//! and deciding which actions fire under their rate limits ([`evaluate`], a
//! pure function over a scan). The [`Watcher`] thread performs the signals
//! itself and asks the core for what only the core may do (spawning an
//! `exec` helper, restarting an entry's process). A process is identified by
//! (pid, starttime), never pid alone. Sentry's own process tree never matches
//! a watch. This module knows nothing of slots, HTTP or re-exec.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, Rule};
use crate::handoff::{ClockSnapshot, WatchMemory};
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

/// What a process looked like on first sight, and its last CPU reading.
struct Known {
    cmdline: Arc<str>,
    entry: Option<Arc<str>>,
    ticks: u64,
    at: Instant,
}

/// Scans `/proc`, reading a process's command line only the first time it is seen.
pub(crate) struct Scanner {
    me: i32,
    known: HashMap<(i32, u64), Known>,
    page_size: u64,
    ticks_per_second: u64,
}

impl Scanner {
    /// A scanner for the supervisor `me` (whose children carry entries).
    pub fn new(me: i32) -> Scanner {
        Scanner {
            me,
            known: HashMap::new(),
            page_size: procfs::page_size(),
            ticks_per_second: procfs::ticks_per_second().max(1),
        }
    }

    /// One pass; processes that vanish mid-scan are skipped.
    pub fn scan(&mut self) -> Vec<Sample> {
        let now = Instant::now();
        let mut seen = HashSet::new();
        let mut samples = Vec::new();
        let Ok(all) = procfs::process::all_processes() else { return samples };
        for process in all.flatten() {
            let Ok(stat) = process.stat() else { continue };
            let key = (stat.pid, stat.starttime);
            seen.insert(key);
            let ticks = stat.utime + stat.stime;
            let cpu = match self.known.get_mut(&key) {
                Some(k) => {
                    let elapsed = now.duration_since(k.at).as_secs_f64();
                    let used = ticks.saturating_sub(k.ticks) as f64 / self.ticks_per_second as f64;
                    k.ticks = ticks;
                    k.at = now;
                    (elapsed > 0.0).then(|| (used / elapsed * 100.0).round() as u64)
                }
                None => {
                    let cmdline: Arc<str> = process.cmdline().map(|c| c.join(" ")).unwrap_or_default().into();
                    let entry = (stat.ppid == self.me).then(|| entry_of(stat.pid)).flatten();
                    self.known.insert(key, Known { cmdline, entry, ticks, at: now });
                    None
                }
            };
            let known = &self.known[&key];
            samples.push(Sample {
                pid: stat.pid,
                starttime: stat.starttime,
                ppid: stat.ppid,
                cmdline: known.cmdline.clone(),
                entry: known.entry.clone(),
                rss: stat.rss * self.page_size,
                vmem: stat.vsize,
                cpu,
            });
        }
        self.known.retain(|k, _| seen.contains(k));
        samples
    }
}

/// `SENTRY_ENTRY` from a child's environment.
fn entry_of(pid: i32) -> Option<Arc<str>> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"SENTRY_ENTRY="))
        .map(|v| String::from_utf8_lossy(v).into())
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

/// An action to perform now.
#[derive(Clone, Debug)]
pub(crate) struct Firing {
    pub target: String,
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
}

impl Report {
    /// How often the rule `index` of `target` fired.
    pub fn fired(&self, target: &str, rule: &Rule) -> u64 {
        self.fired.get(&rule_key(target, rule)).copied().unwrap_or(0)
    }
}

/// The rate-limit clocks and counters, while the watcher runs.
#[derive(Default)]
pub(crate) struct State {
    clocks: HashMap<(String, i32, u64), Clock>,
    fired: HashMap<String, u64>,
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
        }
    }
}

/// Which processes each target covers in `samples`. `me` is Sentry's PID:
/// its tree never matches a watch; its direct children carry the entries.
pub(crate) fn match_targets(targets: &[Target], samples: &[Sample], me: i32) -> Vec<Vec<usize>> {
    let index: HashMap<i32, usize> = samples.iter().enumerate().map(|(i, s)| (s.pid, i)).collect();
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        children.entry(s.ppid).or_default().push(i);
    }
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
    let own_tree: HashSet<usize> = descendants(index.get(&me).copied().into_iter().collect()).into_iter().collect();
    targets
        .iter()
        .map(|t| {
            let roots: Vec<usize> = match (&t.owner, &t.pattern) {
                (Owner::Watch, Some(pattern)) => (0..samples.len())
                    .filter(|i| !own_tree.contains(i))
                    .filter(|&i| !samples[i].cmdline.is_empty() && pattern.is_match(&samples[i].cmdline))
                    .collect(),
                _ => (0..samples.len())
                    .filter(|&i| samples[i].ppid == me && samples[i].entry.as_deref() == Some(t.name.as_str()))
                    .collect(),
            };
            let covered = if t.children { descendants(roots) } else { roots };
            match t.owner {
                Owner::Watch => covered.into_iter().filter(|i| !own_tree.contains(i)).collect(),
                Owner::Entry => covered,
            }
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
                if act {
                    let mut next = Clock { holding: holds, ..clock };
                    if fire {
                        next.last_fired_ms = Some(now_ms);
                        *state.fired.entry(key.clone()).or_default() += 1;
                    }
                    state.clocks.insert(clock_key, next);
                }
                if fire {
                    let m = measured.unwrap_or(0);
                    let vars =
                        ExecVars { name: &t.name, pid: s.pid as u32, rmem: s.rss, vmem: s.vmem, cmdline: &s.cmdline };
                    firings.push(Firing {
                        target: t.name.clone(),
                        rule: rule_index,
                        pid: s.pid,
                        starttime: s.starttime,
                        action: rule.action.clone(),
                        description: format!("{}: {}.", describe(rule, m), rule.action),
                        argv: rule.action.argv(&vars),
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
    fn run_helper(&self, target: &str, argv: Vec<String>);
    /// Gracefully restart entry `entry`'s process `pid`.
    fn restart(&self, entry: &str, pid: i32);
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
    loop {
        let now = Instant::now();
        let due: Vec<bool> = next_due.iter().map(|d| *d <= now).collect();
        if due.iter().any(|d| *d) {
            let samples = scanner.scan();
            let (firings, fresh) =
                evaluate(&targets, &due, &samples, me, crate::sys::unix_now_ns() / 1_000_000, &mut state, true);
            for f in firings {
                perform(&f, &hands);
            }
            *report.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
            for (d, t) in next_due.iter_mut().zip(&targets) {
                if *d <= now {
                    *d = now + t.every;
                }
            }
        }
        let wake = next_due.iter().min().copied().unwrap_or(now + Duration::from_secs(1));
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
        Action::Term => Some(libc::SIGTERM),
        Action::Kill => Some(libc::SIGKILL),
        Action::Stop { .. } => Some(libc::SIGSTOP),
        Action::Restart => {
            hands.restart(&f.target, f.pid);
            None
        }
        Action::Exec { .. } => {
            if let Some(argv) = f.argv.clone() {
                hands.run_helper(&f.target, argv);
            }
            None
        }
    };
    if let Some(signal) = signal {
        // The PID must still be the process we measured (PIDs are reused).
        if crate::sys::parent_and_starttime(f.pid).map(|(_, t)| t) == Some(f.starttime) {
            // SAFETY: plain kill of a verified PID.
            unsafe { libc::kill(f.pid, signal) };
        }
    }
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
        assert_eq!(pids(&s, &m[0]), [1, 200, 201, 202, 300]);
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
        let mut count = |s: &[Sample], state: &mut State, ms| evaluate(&t, &[true], s, ME, ms, state, true).0.len();
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
        let mut count = |s: &[Sample], state: &mut State, ms| evaluate(&t, &[true], s, ME, ms, state, true).0.len();
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
    fn bytes_are_shown_in_trigger_units() {
        assert_eq!(human_bytes(912 << 20), "912m");
        assert_eq!(human_bytes(3 << 29), "1.5g");
        assert_eq!(human_bytes(2048), "2k");
        assert_eq!(human_bytes(10), "10");
    }
}
