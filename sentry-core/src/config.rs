//! The validated configuration: what the supervisor is asked to run and watch.
//! [`Config::from_specs`] checks a whole list of [`Spec`]s and reports every
//! problem at once, each naming the offending text; past it, nothing downstream
//! re-validates. This module knows nothing of processes, threads or the CLI.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::budget::MAX_DURATION;
use crate::handoff::{
    ActionSnapshot, EntryConfigSnapshot, OpSnapshot, PieceSnapshot, ProbeCheckSnapshot, ProbeSnapshot,
    QuantitySnapshot, RuleForm, RuleSnapshot, TriggerSnapshot, VarSnapshot, WatchConfigSnapshot,
};
use crate::lifecycle::ExitCodes;
use crate::probe::{Check, Probe};
use crate::rule::{Action, Comparison, Piece, Quantity, Trigger, Var, Word};
use crate::spec::{EntryFields, Restart, Spec, SpecKind, MAX_COUNT, MAX_LINE_LIMIT, MIN_LINE_LIMIT};

/// The smallest rotation size an entry may set (0 aside: no rotation).
const MIN_LOG_SIZE: u64 = 4096;
/// The most rotated log files an entry may keep.
const MAX_LOG_KEEP: usize = 1000;
use crate::{Error, Signal};

/// A validated configuration.
#[derive(Clone, Debug, Default)]
pub(crate) struct Config {
    pub entries: Vec<EntryConfig>,
    pub watches: Vec<WatchConfig>,
}

/// A validated entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EntryConfig {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub delay: Duration,
    pub count: usize,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: Restart,
    pub user: Option<String>,
    pub group: Option<String>,
    pub children: bool,
    pub rules: Vec<Rule>,
    /// The longest piece of an output line one log line holds.
    pub line_limit: usize,
    /// Bytes at which its log rotates (0: never).
    pub log_size: u64,
    /// Rotated log files kept.
    pub log_keep: usize,
    /// Health probes of each process (`.ready`, `.alive`).
    pub ready: Option<Probe>,
    pub alive: Option<Probe>,
    /// `.watchdog(interval)`: keep-alives expected at least this often.
    pub watchdog: Option<Duration>,
    /// Entries that must be ready before this one starts (`.after`, and
    /// `.binds_to`, which implies it), and those whose exits restart it.
    pub after: Vec<String>,
    pub binds_to: Vec<String>,
    /// `.give_up(exits, within)`.
    pub give_up: Option<(u32, Duration)>,
    pub success_codes: ExitCodes,
    pub stop_codes: ExitCodes,
}

/// A validated watch.
#[derive(Clone, Debug)]
pub(crate) struct WatchConfig {
    pub name: String,
    pub pattern: regex::Regex,
    pub children: bool,
    #[allow(dead_code)] // read by the watch scanner, which comes with watches
    pub every: Duration,
    pub rules: Vec<Rule>,
    /// `.cgroup(regex)`: the cgroup v2 path must match too.
    pub cgroup: Option<regex::Regex>,
}

/// `when trigger holds, do action`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rule {
    pub trigger: Trigger,
    pub action: Action,
}

impl Config {
    /// Validates `specs`, collecting every problem before failing.
    pub fn from_specs(specs: &[Spec]) -> Result<Config, Error> {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        let mut config = Config::default();
        for spec in specs {
            let what = if spec.is_entry() { "entry" } else { "watch" };
            if !valid_name(&spec.name) {
                problems.push(format!("{what} name {:?} must be 1 to 64 characters from A-Z a-z 0-9 _ -", spec.name));
            } else if !seen.insert(spec.name.clone()) {
                problems.push(format!("name {:?} is used more than once", spec.name));
            }
            problems.extend(spec.problems.iter().cloned());
            let rules = validate_rules(spec, &mut problems);
            match &spec.kind {
                SpecKind::Entry(e) => {
                    validate_entry(&spec.name, e, &mut problems);
                    validate_probes(&spec.name, e, &mut problems);
                    config.entries.push(EntryConfig {
                        name: spec.name.clone(),
                        command: e.command.clone(),
                        args: e.args.clone(),
                        delay: Duration::from_millis(e.delay_ms),
                        count: e.count,
                        env: e.env.clone(),
                        cwd: e.cwd.clone(),
                        stop_signal: e.stop_signal,
                        stop_timeout: e.stop_timeout,
                        restart: e.restart,
                        user: e.user.clone(),
                        group: e.group.clone(),
                        children: spec.children,
                        rules,
                        line_limit: e.line_limit,
                        log_size: e.log_size,
                        log_keep: e.log_keep,
                        ready: e.ready.clone(),
                        alive: e.alive.clone(),
                        watchdog: e.watchdog,
                        after: e.after.clone(),
                        binds_to: e.binds_to.clone(),
                        give_up: e.give_up,
                        success_codes: ExitCodes::of(e.success_codes.as_deref().unwrap_or(&[0])),
                        stop_codes: ExitCodes::of(&e.stop_codes),
                    });
                }
                SpecKind::Watch(w) => {
                    let compile = |what: &str, text: &str, problems: &mut Vec<String>| match regex::Regex::new(text) {
                        Ok(re) => Some(re),
                        Err(e) => {
                            let why = first_line(&e.to_string());
                            problems.push(format!("watch {:?}: invalid {what} {text:?}: {why}", spec.name));
                            None
                        }
                    };
                    let pattern = compile("pattern", &w.pattern, &mut problems);
                    let cgroup = match &w.cgroup {
                        None => Ok(None),
                        Some(c) => compile("cgroup pattern", c, &mut problems).map(Some).ok_or(()),
                    };
                    if w.every < Duration::from_millis(100) {
                        problems.push(format!("watch {:?}: .every({:?}) is shorter than 100ms", spec.name, w.every));
                    }
                    if w.every > MAX_DURATION {
                        problems.push(format!("watch {:?}: .every({:?}) is {TOO_LONG}", spec.name, w.every));
                    }
                    if let (Some(pattern), Ok(cgroup)) = (pattern, cgroup) {
                        config.watches.push(WatchConfig {
                            name: spec.name.clone(),
                            pattern,
                            children: spec.children,
                            every: w.every,
                            rules,
                            cgroup,
                        });
                    }
                }
            }
        }
        validate_order(&config, specs, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::InvalidConfig(problems))
        }
    }
}

impl EntryConfig {
    /// The configuration as data, to cross an exec.
    pub fn to_snapshot(&self) -> EntryConfigSnapshot {
        EntryConfigSnapshot {
            name: self.name.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            delay_ms: self.delay.as_millis() as u64,
            count: self.count,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            stop_signal: self.stop_signal as i32,
            stop_timeout_ms: self.stop_timeout.as_millis() as u64,
            restart: self.restart,
            user: self.user.clone(),
            group: self.group.clone(),
            children: self.children,
            rules: self.rules.iter().map(|r| RuleForm::Data(r.to_snapshot())).collect(),
            line_limit: self.line_limit,
            log_size: self.log_size,
            log_keep: self.log_keep,
            ready: self.ready.as_ref().map(probe_snapshot),
            alive: self.alive.as_ref().map(probe_snapshot),
            watchdog_ms: self.watchdog.map(|d| d.as_millis() as u64),
            after: self.after.clone(),
            binds_to: self.binds_to.clone(),
            give_up: self.give_up.map(|(n, d)| (n, d.as_millis() as u64)),
            success_codes: Some(self.success_codes.list()),
            stop_codes: self.stop_codes.list(),
        }
    }

    /// The entries this one starts after (`.after` and `.binds_to`).
    pub fn follows(&self) -> impl Iterator<Item = &String> {
        self.after.iter().chain(&self.binds_to)
    }

    /// Whether any of its processes is to get `NOTIFY_SOCKET`.
    pub fn uses_notify(&self) -> bool {
        self.watchdog.is_some() || self.ready.as_ref().is_some_and(Probe::is_notify)
    }

    /// Back from data; `Err` if a rule of a version 1 snapshot (text) no
    /// longer parses.
    pub fn from_snapshot(s: &EntryConfigSnapshot) -> Result<EntryConfig, String> {
        let rules = s.rules.iter().map(Rule::from_form).collect::<Result<Vec<_>, String>>()?;
        Ok(EntryConfig {
            name: s.name.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            delay: bounded_ms(s.delay_ms),
            count: s.count,
            env: s.env.clone(),
            cwd: s.cwd.clone(),
            stop_signal: Signal::try_from(s.stop_signal).unwrap_or(Signal::SIGTERM),
            stop_timeout: bounded_ms(s.stop_timeout_ms),
            restart: s.restart,
            user: s.user.clone(),
            group: s.group.clone(),
            children: s.children,
            rules,
            line_limit: s.line_limit.clamp(MIN_LINE_LIMIT, MAX_LINE_LIMIT),
            log_size: if s.log_size == 0 { 0 } else { s.log_size.max(MIN_LOG_SIZE) },
            log_keep: s.log_keep.min(MAX_LOG_KEEP),
            ready: s.ready.as_ref().map(probe_from_snapshot),
            alive: s.alive.as_ref().map(probe_from_snapshot),
            watchdog: s.watchdog_ms.map(bounded_ms),
            after: s.after.clone(),
            binds_to: s.binds_to.clone(),
            give_up: s.give_up.map(|(n, ms)| (n.max(1), bounded_ms(ms))),
            success_codes: ExitCodes::of(s.success_codes.as_deref().unwrap_or(&[0])),
            stop_codes: ExitCodes::of(&s.stop_codes),
        })
    }

    /// Whether a change from `self` to `new` needs the processes restarted
    /// (what the process is made of changed; not delay, stop settings or rules).
    pub fn needs_restart_for(&self, new: &EntryConfig) -> bool {
        (&self.command, &self.args, &self.env, &self.cwd, &self.user, &self.group)
            != (&new.command, &new.args, &new.env, &new.cwd, &new.user, &new.group)
    }
}

impl WatchConfig {
    /// The configuration as data, to cross an exec.
    pub fn to_snapshot(&self) -> WatchConfigSnapshot {
        WatchConfigSnapshot {
            name: self.name.clone(),
            pattern: self.pattern.as_str().to_string(),
            children: self.children,
            every_ms: self.every.as_millis() as u64,
            rules: self.rules.iter().map(Rule::to_snapshot).collect(),
            cgroup: self.cgroup.as_ref().map(|c| c.as_str().to_string()),
        }
    }

    /// Back from data; `Err` if the pattern or the cgroup pattern no longer compiles.
    pub fn from_snapshot(s: &WatchConfigSnapshot) -> Result<WatchConfig, String> {
        let pattern = regex::Regex::new(&s.pattern).map_err(|e| first_line(&e.to_string()))?;
        let cgroup = s.cgroup.as_deref().map(regex::Regex::new).transpose().map_err(|e| first_line(&e.to_string()))?;
        Ok(WatchConfig {
            name: s.name.clone(),
            pattern,
            children: s.children,
            every: bounded_ms(s.every_ms).max(Duration::from_millis(100)),
            rules: s.rules.iter().map(Rule::from_snapshot).collect(),
            cgroup,
        })
    }
}

impl Rule {
    /// The rule as data (no text to parse back).
    pub fn to_snapshot(&self) -> RuleSnapshot {
        let t = &self.trigger;
        let trigger = TriggerSnapshot {
            quantity: match t.quantity {
                Quantity::Rmem => QuantitySnapshot::Rmem,
                Quantity::Vmem => QuantitySnapshot::Vmem,
                Quantity::Cpu => QuantitySnapshot::Cpu,
                Quantity::Treemem => QuantitySnapshot::Treemem,
            },
            op: match t.comparison {
                Comparison::Greater => OpSnapshot::Greater,
                Comparison::GreaterOrEqual => OpSnapshot::GreaterOrEqual,
                Comparison::Less => OpSnapshot::Less,
                Comparison::LessOrEqual => OpSnapshot::LessOrEqual,
            },
            value: t.threshold,
        };
        let ms = |d: Duration| d.as_millis() as u64;
        let action = match &self.action {
            Action::Term => ActionSnapshot::Term,
            Action::Kill => ActionSnapshot::Kill,
            Action::Restart => ActionSnapshot::Restart,
            Action::Stop { every } => ActionSnapshot::Stop { every_ms: ms(*every) },
            Action::Exec { every, words } => ActionSnapshot::Exec {
                every_ms: every.map(ms),
                words: words
                    .iter()
                    .map(|w| {
                        w.0.iter()
                            .map(|p| match p {
                                Piece::Text(t) => PieceSnapshot::Text(t.clone()),
                                Piece::Var(v) => PieceSnapshot::Var(match v {
                                    Var::Name => VarSnapshot::Name,
                                    Var::Pid => VarSnapshot::Pid,
                                    Var::Rmem => VarSnapshot::Rmem,
                                    Var::Vmem => VarSnapshot::Vmem,
                                    Var::Cmdline => VarSnapshot::Cmdline,
                                }),
                            })
                            .collect()
                    })
                    .collect(),
            },
        };
        RuleSnapshot { trigger, action }
    }

    /// Back from data; never fails.
    pub fn from_snapshot(s: &RuleSnapshot) -> Rule {
        let t = &s.trigger;
        let trigger = Trigger {
            quantity: match t.quantity {
                QuantitySnapshot::Rmem => Quantity::Rmem,
                QuantitySnapshot::Vmem => Quantity::Vmem,
                QuantitySnapshot::Cpu => Quantity::Cpu,
                QuantitySnapshot::Treemem => Quantity::Treemem,
            },
            comparison: match t.op {
                OpSnapshot::Greater => Comparison::Greater,
                OpSnapshot::GreaterOrEqual => Comparison::GreaterOrEqual,
                OpSnapshot::Less => Comparison::Less,
                OpSnapshot::LessOrEqual => Comparison::LessOrEqual,
            },
            threshold: t.value,
        };
        let action = match &s.action {
            ActionSnapshot::Term => Action::Term,
            ActionSnapshot::Kill => Action::Kill,
            ActionSnapshot::Restart => Action::Restart,
            ActionSnapshot::Stop { every_ms } => Action::Stop { every: bounded_ms(*every_ms) },
            ActionSnapshot::Exec { every_ms, words } => Action::Exec {
                every: every_ms.map(bounded_ms),
                words: words
                    .iter()
                    .map(|w| {
                        Word(
                            w.iter()
                                .map(|p| match p {
                                    PieceSnapshot::Text(t) => Piece::Text(t.clone()),
                                    PieceSnapshot::Var(v) => Piece::Var(match v {
                                        VarSnapshot::Name => Var::Name,
                                        VarSnapshot::Pid => Var::Pid,
                                        VarSnapshot::Rmem => Var::Rmem,
                                        VarSnapshot::Vmem => Var::Vmem,
                                        VarSnapshot::Cmdline => Var::Cmdline,
                                    }),
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            },
        };
        Rule { trigger, action }
    }

    /// A rule as a snapshot of any version carries it.
    fn from_form(form: &RuleForm) -> Result<Rule, String> {
        match form {
            RuleForm::Data(data) => Ok(Rule::from_snapshot(data)),
            RuleForm::Text(t, a) => Ok(Rule { trigger: Trigger::parse(t)?, action: Action::parse(a)? }),
        }
    }
}

/// How a duration above [`MAX_DURATION`] is refused.
const TOO_LONG: &str = "longer than the maximum of 7 days (a week)";

/// A duration read from a snapshot (an older binary may not have bounded it).
fn bounded_ms(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_DURATION)
}

/// Whether `name` may name an entry or a watch: `[A-Za-z0-9_-]{1,64}` (SPEC).
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn first_line(text: &str) -> String {
    // regex errors are multi-line drawings; the last line says what is wrong.
    text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(text).trim().to_string()
}

fn validate_entry(name: &str, e: &EntryFields, problems: &mut Vec<String>) {
    if e.command.trim().is_empty() {
        problems.push(format!("entry {name:?}: the command is empty"));
    }
    if e.command.contains('\0') || e.args.iter().any(|a| a.contains('\0')) {
        problems.push(format!("entry {name:?}: the command or an argument contains a NUL byte"));
    }
    if e.stop_timeout > MAX_DURATION {
        problems.push(format!("entry {name:?}: .stop_timeout({:?}) is {TOO_LONG}", e.stop_timeout));
    }
    if Duration::from_millis(e.delay_ms) > MAX_DURATION {
        problems.push(format!("entry {name:?}: the restart delay of {} ms is {TOO_LONG}", e.delay_ms));
    }
    if e.count > MAX_COUNT {
        problems.push(format!("entry {name:?}: count {} is above the maximum of {MAX_COUNT}", e.count));
    }
    for (key, value) in &e.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            problems.push(format!("entry {name:?}: invalid environment variable {key:?}"));
        }
    }
    if !(MIN_LINE_LIMIT..=MAX_LINE_LIMIT).contains(&e.line_limit) {
        problems.push(format!(
            "entry {name:?}: .line_limit({}) is outside {MIN_LINE_LIMIT}..={MAX_LINE_LIMIT} bytes",
            e.line_limit
        ));
    }
    if e.log_size != 0 && e.log_size < MIN_LOG_SIZE {
        problems.push(format!(
            "entry {name:?}: .log_size({}) is below {MIN_LOG_SIZE} bytes (0 turns rotation off)",
            e.log_size
        ));
    }
    if e.log_keep > MAX_LOG_KEEP {
        problems.push(format!("entry {name:?}: .log_keep({}) is above {MAX_LOG_KEEP} files", e.log_keep));
    }
    if let Some(cwd) = &e.cwd {
        use std::os::unix::ffi::OsStrExt;
        if cwd.as_os_str().is_empty() || cwd.as_os_str().as_bytes().contains(&0) {
            problems.push(format!("entry {name:?}: invalid .cwd({cwd:?}): empty or with a NUL byte"));
        }
    }
    for (what, value) in [("user", &e.user), ("group", &e.group)] {
        if let Some(v) = value {
            if v.is_empty() || v.contains('\0') {
                problems.push(format!("entry {name:?}: invalid {what} name {v:?}"));
            }
        }
    }
}

/// Checks `.after` and `.binds_to`: every name is another entry's, and the
/// order has no cycle (named, as `a → b → a`).
fn validate_order(config: &Config, specs: &[Spec], problems: &mut Vec<String>) {
    let entries: HashSet<&str> = config.entries.iter().map(|e| e.name.as_str()).collect();
    let watches: HashSet<&str> = specs.iter().filter(|s| !s.is_entry()).map(|s| s.name.as_str()).collect();
    let mut known = true;
    for e in &config.entries {
        for (method, names) in [("after", &e.after), ("binds_to", &e.binds_to)] {
            for n in names {
                if n == &e.name {
                    problems.push(format!("entry {:?}: .{method}({n:?}) names the entry itself", e.name));
                    known = false;
                } else if watches.contains(n.as_str()) {
                    problems.push(format!("entry {:?}: .{method}({n:?}) names a watch, not an entry", e.name));
                    known = false;
                } else if !entries.contains(n.as_str()) {
                    problems.push(format!("entry {:?}: .{method}({n:?}): no entry has that name", e.name));
                    known = false;
                }
            }
        }
    }
    if known {
        if let Some(cycle) = config.order_cycle() {
            problems.push(format!("the start order has a cycle: {}", cycle.join(" → ")));
        }
    }
}

fn validate_probes(name: &str, e: &EntryFields, problems: &mut Vec<String>) {
    for (method, probe) in [("ready", &e.ready), ("alive", &e.alive)] {
        let Some(probe) = probe else { continue };
        for p in probe.problems() {
            problems.push(format!("entry {name:?}: .{method}({}): {p}", probe.what()));
        }
    }
    if e.alive.as_ref().is_some_and(Probe::is_notify) {
        problems.push(format!(
            "entry {name:?}: .alive(probe::notify()): notify is for readiness; ask for keep-alives with .watchdog(interval)"
        ));
    }
    if let Some(d) = e.watchdog {
        if d < Duration::from_millis(10) || d > MAX_DURATION {
            problems.push(format!("entry {name:?}: .watchdog({d:?}) must be from 10ms to 7 days"));
        }
    }
    if let Some((exits, within)) = e.give_up {
        if exits == 0 {
            problems.push(format!("entry {name:?}: .give_up(0, …): give up after at least 1 exit"));
        }
        if within.is_zero() || within > MAX_DURATION {
            problems.push(format!("entry {name:?}: .give_up(_, {within:?}): the window must be from 1ns to 7 days"));
        }
    }
    let codes = e.success_codes.iter().flatten().chain(&e.stop_codes);
    for c in codes.filter(|c| !(0..=255).contains(*c)) {
        problems.push(format!("entry {name:?}: exit code {c} is outside 0..=255"));
    }
    if e.success_codes.as_ref().is_some_and(|c| c.is_empty()) {
        problems.push(format!("entry {name:?}: .success_codes([]) leaves no exit a success"));
    }
}

impl Config {
    /// A cycle in the start order, as the names along it (first = last).
    pub fn order_cycle(&self) -> Option<Vec<String>> {
        // Depth-first, colouring: 0 unseen, 1 on the path, 2 done.
        fn visit<'a>(
            config: &'a Config,
            index: &std::collections::HashMap<&'a str, usize>,
            name: &'a str,
            colour: &mut std::collections::HashMap<&'a str, u8>,
            path: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            match colour.get(name) {
                Some(1) => {
                    let from = path.iter().position(|n| *n == name).unwrap_or(0);
                    let mut cycle: Vec<String> = path[from..].iter().map(|n| n.to_string()).collect();
                    cycle.push(name.to_string());
                    return Some(cycle);
                }
                Some(_) => return None,
                None => {}
            }
            colour.insert(name, 1);
            path.push(name);
            if let Some(e) = index.get(name).map(|i| &config.entries[*i]) {
                for next in e.follows() {
                    if let Some(c) = visit(config, index, next, colour, path) {
                        return Some(c);
                    }
                }
            }
            path.pop();
            colour.insert(name, 2);
            None
        }
        let index = self.entries.iter().enumerate().map(|(i, e)| (e.name.as_str(), i)).collect();
        let mut colour = std::collections::HashMap::new();
        for e in &self.entries {
            if let Some(c) = visit(self, &index, &e.name, &mut colour, &mut Vec::new()) {
                return Some(c);
            }
        }
        None
    }

    /// The entries in an order that starts each after those it follows
    /// (ties in configuration order); a cycle's members last.
    pub fn start_order(&self) -> Vec<&EntryConfig> {
        // Kahn's algorithm, taking the first ready entry in configuration
        // order each time (a heap of indexes): O((n + edges) log n).
        let index: std::collections::HashMap<&str, usize> =
            self.entries.iter().enumerate().map(|(i, e)| (e.name.as_str(), i)).collect();
        let mut waiting_on = vec![0usize; self.entries.len()];
        let mut followers: Vec<Vec<usize>> = vec![Vec::new(); self.entries.len()];
        for (i, e) in self.entries.iter().enumerate() {
            let mut deps: Vec<usize> = e.follows().filter_map(|n| index.get(n.as_str()).copied()).collect();
            deps.sort_unstable();
            deps.dedup();
            waiting_on[i] = deps.len();
            for d in deps {
                followers[d].push(i);
            }
        }
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> =
            (0..self.entries.len()).filter(|i| waiting_on[*i] == 0).map(std::cmp::Reverse).collect();
        let mut placed = Vec::with_capacity(self.entries.len());
        let mut done = vec![false; self.entries.len()];
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            placed.push(&self.entries[i]);
            done[i] = true;
            for &f in &followers[i] {
                waiting_on[f] -= 1;
                if waiting_on[f] == 0 {
                    ready.push(std::cmp::Reverse(f));
                }
            }
        }
        // A cycle's members (refused by validation) last, in configuration order.
        placed.extend(self.entries.iter().enumerate().filter(|(i, _)| !done[*i]).map(|(_, e)| e));
        placed
    }

    /// What `check` and `explain` say about start order, probes and limits:
    /// one line for the order (when any entry follows another), one per
    /// entry that has a probe, a watchdog, a limit or exit codes of its own.
    pub fn health_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.entries.iter().any(|e| e.follows().next().is_some()) {
            let order: Vec<String> = self
                .start_order()
                .iter()
                .map(|e| {
                    let mut s = e.name.clone();
                    if !e.after.is_empty() {
                        s += &format!(" (after {})", e.after.join(", "));
                    }
                    if !e.binds_to.is_empty() {
                        s += &format!(" (binds to {})", e.binds_to.join(", "));
                    }
                    s
                })
                .collect();
            lines.push(format!("Start order: {}; stopped in reverse.", order.join(" → ")));
        }
        for e in &self.entries {
            let mut what = Vec::new();
            if let Some(p) = &e.ready {
                what.push(format!("ready: {}", p.describe()));
            }
            if let Some(p) = &e.alive {
                what.push(format!("alive: {}", p.describe()));
            }
            if let Some(d) = e.watchdog {
                what.push(format!("watchdog: WATCHDOG=1 at least every {d:?}"));
            }
            if let Some((n, within)) = e.give_up {
                what.push(format!("gives up after {n} exit(s) within {within:?}"));
            }
            if e.success_codes != ExitCodes::of(&[0]) {
                what.push(format!("success codes {:?}", e.success_codes.list()));
            }
            if e.stop_codes != ExitCodes::default() {
                what.push(format!("stays down after exit codes {:?}", e.stop_codes.list()));
            }
            if !what.is_empty() {
                lines.push(format!("entry {}: {}", e.name, what.join("; ")));
            }
        }
        lines
    }

    /// The longest sum of stop timeouts along a chain of entries that
    /// stop one after the other (the reverse of the start order).
    pub fn longest_stop_chain(&self) -> Duration {
        let nodes: Vec<(&str, Duration, Vec<&str>)> = self
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.stop_timeout, e.follows().map(String::as_str).collect()))
            .collect();
        longest_chain(&nodes)
    }
}

/// The longest sum of durations along a chain of `(name, duration, names
/// it follows)`: in start order (Kahn's, iterative), a chain ending at a
/// node is its own duration plus the longest of those it follows. Names
/// that are no node's are ignored; so are the members of a cycle (which a
/// valid configuration has none of, but a status answer could).
pub(crate) fn longest_chain(nodes: &[(&str, Duration, Vec<&str>)]) -> Duration {
    let index: std::collections::HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.0, i)).collect();
    let mut waiting_on = vec![0usize; nodes.len()];
    let mut followers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, (_, _, follows)) in nodes.iter().enumerate() {
        let mut deps: Vec<usize> = follows.iter().filter_map(|n| index.get(n).copied()).collect();
        deps.sort_unstable();
        deps.dedup();
        waiting_on[i] = deps.len();
        for d in deps {
            followers[d].push(i);
        }
    }
    let mut before = vec![Duration::ZERO; nodes.len()];
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|i| waiting_on[*i] == 0).collect();
    let mut longest = Duration::ZERO;
    while let Some(i) = ready.pop() {
        let chain = before[i].saturating_add(nodes[i].1);
        longest = longest.max(chain);
        for &f in &followers[i] {
            before[f] = before[f].max(chain);
            waiting_on[f] -= 1;
            if waiting_on[f] == 0 {
                ready.push(f);
            }
        }
    }
    longest
}

fn probe_snapshot(p: &Probe) -> ProbeSnapshot {
    let ms = |d: Duration| d.as_millis() as u64;
    ProbeSnapshot {
        check: match &p.check {
            Check::Exec { command, args } => ProbeCheckSnapshot::Exec { command: command.clone(), args: args.clone() },
            Check::Tcp(addr) => ProbeCheckSnapshot::Tcp { addr: addr.clone() },
            Check::Http(url) => ProbeCheckSnapshot::Http { url: url.clone() },
            Check::Notify => ProbeCheckSnapshot::Notify,
            Check::Func(_) | Check::Lost => ProbeCheckSnapshot::Func,
        },
        initial_delay_ms: ms(p.initial_delay),
        period_ms: ms(p.period),
        timeout_ms: ms(p.timeout),
        failures: p.failures,
        successes: p.successes,
    }
}

fn probe_from_snapshot(s: &ProbeSnapshot) -> Probe {
    let check = match &s.check {
        ProbeCheckSnapshot::Exec { command, args } => Check::Exec { command: command.clone(), args: args.clone() },
        ProbeCheckSnapshot::Tcp { addr } => Check::Tcp(addr.clone()),
        ProbeCheckSnapshot::Http { url } => Check::Http(url.clone()),
        ProbeCheckSnapshot::Notify => Check::Notify,
        ProbeCheckSnapshot::Func => Check::Lost,
    };
    let period = bounded_ms(s.period_ms).max(Duration::from_millis(10));
    Probe {
        check,
        initial_delay: bounded_ms(s.initial_delay_ms),
        period,
        timeout: bounded_ms(s.timeout_ms).clamp(Duration::from_millis(1), period),
        failures: s.failures.max(1),
        successes: s.successes.max(1),
    }
}

fn validate_rules(spec: &Spec, problems: &mut Vec<String>) -> Vec<Rule> {
    let mut rules = Vec::new();
    for rule in &spec.rules {
        match (&rule.trigger, &rule.action) {
            (Ok(trigger), Ok(action)) => {
                if action.every().is_some_and(|d| d > MAX_DURATION) {
                    problems.push(format!(
                        "{:?}: action {:?}: the duration is {TOO_LONG}",
                        spec.name,
                        action.to_string()
                    ));
                }
                // What the text forms cannot say but typed values can.
                if let Some(d) = action.every().filter(|d| *d < Duration::from_secs(1) || d.subsec_nanos() != 0) {
                    problems.push(format!("{:?}: the rate limit {d:?} must be whole seconds, at least 1s", spec.name));
                }
                if let Action::Exec { words, .. } = action {
                    let nul = words.iter().flat_map(|w| &w.0).any(|p| matches!(p, Piece::Text(t) if t.contains('\0')));
                    if nul {
                        problems.push(format!("{:?}: an exec word contains a NUL byte", spec.name));
                    }
                }
                if trigger.quantity == Quantity::Cpu && trigger.threshold > crate::rule::MAX_CPU_PERCENT {
                    problems.push(format!(
                        "{:?}: trigger {:?}: at most {}%",
                        spec.name,
                        trigger.to_string(),
                        crate::rule::MAX_CPU_PERCENT
                    ));
                }
                if action.is_entry_only() && !spec.is_entry() {
                    problems.push(format!(
                        "watch {:?}: action {:?} applies to entries only",
                        spec.name,
                        action.to_string()
                    ));
                }
                rules.push(Rule { trigger: trigger.clone(), action: action.clone() });
            }
            (trigger, action) => {
                for e in [trigger.as_ref().err(), action.as_ref().err()].into_iter().flatten() {
                    problems.push(format!("{:?}: {e}", spec.name));
                }
            }
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    fn problems(specs: Vec<Spec>) -> Vec<String> {
        match Config::from_specs(&specs) {
            Ok(_) => Vec::new(),
            Err(Error::InvalidConfig(p)) => p,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn start_order_names_and_cycles() {
        let e = |n: &str| entry(n, "sleep", ["1"], 0, 1);
        // (specs, a problem containing this, or none)
        let table: Vec<(Vec<Spec>, Option<&str>)> = vec![
            (vec![e("db"), e("web").after(["db"])], None),
            (vec![e("web").after(["db"])], Some(r#".after("db"): no entry has that name"#)),
            (vec![e("web").binds_to(["web"])], Some("names the entry itself")),
            (vec![e("web").after(["w"]), watch("w", "x")], Some("names a watch")),
            (vec![e("a").after(["b"]), e("b").after(["c"]), e("c").after(["a"])], Some("cycle: a → b → c → a")),
            (vec![e("a").after(["b"]), e("b").binds_to(["a"])], Some("cycle: a → b → a")),
            (vec![e("a").after(&["b", "c"]), e("b").after(vec!["c"]), e("c")], None),
        ];
        for (specs, want) in table {
            let got = problems(specs);
            match want {
                None => assert!(got.is_empty(), "{got:?}"),
                Some(w) => assert!(got.iter().any(|p| p.contains(w)), "{w:?} not in {got:?}"),
            }
        }
    }

    #[test]
    fn the_longest_chain_ignores_cycles_and_unknown_names() {
        let s = Duration::from_secs;
        // As a status answer could have it: a cycle, and a name no entry has.
        let nodes = [("a", s(5), vec!["b"]), ("b", s(5), vec!["a"]), ("c", s(3), vec!["gone"]), ("d", s(2), vec!["c"])];
        assert_eq!(longest_chain(&nodes), s(5));
    }

    #[test]
    fn a_long_chain_is_ordered_in_linear_time() {
        // 3 000 entries, each after the previous one, given in reverse.
        let specs: Vec<Spec> = (0..3000)
            .rev()
            .map(|i| {
                let e = entry(&format!("e{i}"), "sleep", ["1"], 0, 0);
                if i == 0 {
                    e
                } else {
                    e.after([format!("e{}", i - 1)])
                }
            })
            .collect();
        let c = Config::from_specs(&specs).unwrap();
        let order: Vec<&str> = c.start_order().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(order.first(), Some(&"e0"));
        assert_eq!(order.last(), Some(&"e2999"));
        assert_eq!(c.longest_stop_chain(), Duration::from_secs(10 * 3000));
    }

    #[test]
    fn start_order_and_stop_chain() {
        let e = |n: &str, stop: u64| entry(n, "sleep", ["1"], 0, 1).stop_timeout(Duration::from_secs(stop));
        let c = Config::from_specs(&[
            e("web", 5).after(["db", "cache"]),
            e("cache", 1),
            e("worker", 2).binds_to(["web"]),
            e("db", 10),
        ])
        .unwrap();
        let order: Vec<&str> = c.start_order().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(order, ["cache", "db", "web", "worker"]);
        assert_eq!(c.longest_stop_chain(), Duration::from_secs(17), "worker, then web, then db");
        assert!(
            c.health_lines()[0].starts_with("Start order: cache → db → web (after db, cache) → worker (binds to web)")
        );
    }

    #[test]
    #[allow(clippy::needless_borrows_for_generic_args)] // `&[…]` is one of the forms SPEC promises
    fn probe_and_limit_values_are_checked() {
        let e = || entry("e", "sleep", ["1"], 0, 1);
        let table: Vec<(Spec, Option<&str>)> = vec![
            (e().ready(probe::tcp("127.0.0.1:80")).alive(probe::http("http://127.0.0.1/h")), None),
            (e().ready(probe::tcp("localhost")), Some("expected HOST:PORT")),
            (e().alive(probe::http("https://x/")), Some("https is not spoken")),
            (e().alive(probe::notify()), Some("ask for keep-alives with .watchdog")),
            (e().ready(probe::exec("", [])), Some("bad command")),
            (e().ready(probe::func(|| true).timeout(Duration::from_secs(2))), Some("from 1ms to the period")),
            (e().give_up(0, Duration::from_secs(1)), Some("at least 1 exit")),
            (e().success_codes([0, 256]), Some("exit code 256 is outside")),
            (e().stop_codes(&[-1]), Some("exit code -1 is outside")),
            (e().success_codes(Vec::<i32>::new()), Some("leaves no exit a success")),
            (e().watchdog(Duration::from_millis(1)), Some(".watchdog(1ms)")),
            (watch("w", "x").ready(probe::notify()), Some(".ready() applies to entries only")),
            (e().on(cpu().gt(200_000), Action::Term), Some("at most 100000%")),
            (e().on(rmem().gt(1), Action::stop(Duration::from_millis(1500))), Some("must be whole seconds")),
            (e().on(rmem().gt(1), Action::exec(["echo", "a\0b"])), Some("NUL byte")),
            (e().on(rmem().gt(1), Action::exec(["echo", "$FOO"])), Some("unknown variable \"$FOO\"")),
        ];
        for (spec, want) in table {
            let got = problems(vec![spec]);
            match want {
                None => assert!(got.is_empty(), "{got:?}"),
                Some(w) => assert!(got.iter().any(|p| p.contains(w)), "{w:?} not in {got:?}"),
            }
        }
    }

    #[test]
    fn the_sample_is_valid() {
        let config = Config::from_specs(&[entry("dummy", "sleep", ["4"], 1000, 1)]).unwrap();
        assert_eq!(config.entries[0].delay, Duration::from_millis(1000));
        assert_eq!(config.entries[0].args, vec!["4"]);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_text() {
        let p = problems(vec![
            entry("bad name", "sleep", ["1"], 0, 1),
            entry("dup", "", [], 0, MAX_COUNT + 1),
            watch("dup", "(unclosed").env("A", "b"),
            entry("rules", "true", [], 0, 1).on("rss > 1g", "term").on("rmem > 1g", "stop"),
            watch("w", "x").on("rmem > 1g", "restart"),
        ]);
        let all = p.join("\n");
        for needle in [
            "\"bad name\"",
            "\"dup\" is used more than once",
            "the command is empty",
            "above the maximum",
            "(unclosed",
            ".env() applies to entries only",
            "rss > 1g",
            "stop",
            "applies to entries only",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
        assert!(p.len() >= 8, "{p:#?}");
    }

    #[test]
    fn log_rotation_is_checked_and_crosses_exec() {
        let Err(Error::InvalidConfig(p)) = Config::from_specs(&[
            entry("tiny", "sleep", ["1"], 0, 1).log_size(100),
            entry("many", "sleep", ["1"], 0, 1).log_keep(5000),
            watch("w", "x").log_size(1 << 20),
        ]) else {
            panic!("accepted")
        };
        assert!(p[0].contains(".log_size(100) is below 4096 bytes (0 turns rotation off)"), "{p:?}");
        assert!(p[1].contains(".log_keep(5000) is above 1000 files"), "{p:?}");
        assert!(p[2].contains(".log_size() applies to entries only"), "{p:?}");
        let config = Config::from_specs(&[entry("ok", "sleep", ["1"], 0, 1).log_size(0).log_keep(0)]).unwrap();
        let back = EntryConfig::from_snapshot(&config.entries[0].to_snapshot()).unwrap();
        assert_eq!((back.log_size, back.log_keep), (0, 0));
        let default = Config::from_specs(&[entry("d", "sleep", ["1"], 0, 1)]).unwrap();
        assert_eq!((default.entries[0].log_size, default.entries[0].log_keep), (10 << 20, 5));
    }

    #[test]
    fn the_line_limit_is_checked_and_crosses_exec() {
        let p = problems(vec![
            entry("small", "sleep", ["1"], 0, 1).line_limit(100),
            entry("huge", "sleep", ["1"], 0, 1).line_limit(64 << 20),
            watch("w", "x").line_limit(4096),
        ]);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains(".line_limit(100) is outside"), "{p:?}");
        let config = Config::from_specs(&[entry("ok", "sleep", ["1"], 0, 1).line_limit(4096)]).unwrap();
        assert_eq!(config.entries[0].line_limit, 4096);
        assert_eq!(EntryConfig::from_snapshot(&config.entries[0].to_snapshot()).unwrap(), config.entries[0]);
        let default = Config::from_specs(&[entry("d", "sleep", ["1"], 0, 1)]).unwrap();
        assert_eq!(default.entries[0].line_limit, crate::LINE_LIMIT);
    }

    #[test]
    fn a_cwd_with_a_nul_byte_or_empty_is_refused() {
        let p =
            problems(vec![entry("a", "sleep", ["1"], 0, 1).cwd("/tmp\0x"), entry("b", "sleep", ["1"], 0, 1).cwd("")]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains(".cwd(") && p[0].contains("NUL"), "{p:?}");
    }

    #[test]
    fn rules_and_watches_cross_as_data_and_come_back_equal() {
        let specs = [
            watch("w", "a(b|c)")
                .every(Duration::from_millis(300))
                .children(true)
                .on("900m < vmem", "kill")
                .on("cpu >= 90%", r#"exec @ 1h logger "$NAME ($PID) uses ${RMEM}b" '$HOME' "" x\ y"#),
            entry("e", "true", [], 0, 1).on("rmem > 1k", "stop @ 10m").on("rmem <= 2g", "restart"),
        ];
        let config = Config::from_specs(&specs).unwrap();
        let w = &config.watches[0];
        let json = serde_json::to_string(&w.to_snapshot()).unwrap();
        assert!(!json.contains("logger \""), "words are data, not a command line: {json}");
        let back = WatchConfig::from_snapshot(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!((back.name.as_str(), back.pattern.as_str(), back.children), ("w", "a(b|c)", true));
        assert_eq!((back.every, &back.rules), (w.every, &w.rules));
        let e = &config.entries[0];
        let json = serde_json::to_string(&e.to_snapshot()).unwrap();
        assert_eq!(&EntryConfig::from_snapshot(&serde_json::from_str(&json).unwrap()).unwrap(), e);
    }

    #[test]
    fn cgroup_patterns_are_checked_like_patterns_and_only_on_watches() {
        let p = problems(vec![
            watch("w", "x").cgroup("(unclosed"),
            watch("both", "[z-a]").cgroup(r"\p{Nope}"),
            entry("e", "true", [], 0, 1).cgroup("app"),
            watch("fine", "").cgroup(r"app-.*\.scope$").on("treemem > 1g", "term"),
        ]);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with(r#"watch "w": invalid cgroup pattern "(unclosed": "#), "{p:#?}");
        assert!(p[1].starts_with(r#"watch "both": invalid pattern "[z-a]": "#), "{p:#?}");
        assert!(p[2].starts_with(r#"watch "both": invalid cgroup pattern "\\p{Nope}": "#), "{p:#?}");
        assert_eq!(p[3], r#"entry "e": .cgroup() applies to watches only"#);
        let config = Config::from_specs(&[watch("w", "").cgroup("app")]).unwrap();
        assert_eq!(config.watches[0].cgroup.as_ref().map(regex::Regex::as_str), Some("app"));
        let config = Config::from_specs(&[watch("w", "x")]).unwrap();
        assert!(config.watches[0].cgroup.is_none());
    }

    #[test]
    fn a_cgroup_pattern_and_treemem_rules_cross_exec() {
        let specs = [watch("w", "").cgroup(r"/app-\d+\.scope$").on("200m < treemem", "term")];
        let config = Config::from_specs(&specs).unwrap();
        let snapshot = config.watches[0].to_snapshot();
        let json = serde_json::to_string(&snapshot).unwrap();
        assert!(json.contains(r#""quantity":"treemem""#), "{json}");
        let back = WatchConfig::from_snapshot(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back.cgroup.as_ref().map(regex::Regex::as_str), Some(r"/app-\d+\.scope$"));
        assert_eq!(back.rules, config.watches[0].rules);
        assert_eq!(back.rules[0].trigger.to_string(), "treemem > 200m");
        // A snapshot from before .cgroup existed has none.
        let old = r#"{"name":"w","pattern":"x","children":false,"every_ms":1000,"rules":[]}"#;
        assert!(WatchConfig::from_snapshot(&serde_json::from_str(old).unwrap()).unwrap().cgroup.is_none());
        let bad = crate::handoff::WatchConfigSnapshot { cgroup: Some("(".into()), ..snapshot };
        assert!(WatchConfig::from_snapshot(&bad).is_err());
    }

    #[test]
    fn a_version_1_entry_with_rules_as_text_is_still_read() {
        let v1 = r#"{"name":"e","command":"true","args":[],"delay_ms":0,"count":1,"env":[],"cwd":null,
            "stop_signal":15,"stop_timeout_ms":10000,"restart":"Always","user":null,"group":null,
            "children":false,"rules":[["rmem > 1g","exec @ 1h echo $PID"]]}"#;
        let e = EntryConfig::from_snapshot(&serde_json::from_str(v1).unwrap()).unwrap();
        assert_eq!(e.rules.len(), 1);
        assert_eq!(e.rules[0].action.to_string(), "exec @ 1h echo $PID");
    }

    #[test]
    fn names_follow_the_rule() {
        assert!(valid_name("a-Z_0"));
        assert!(valid_name(&"x".repeat(64)));
        assert!(!valid_name(&"x".repeat(65)));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("é"));
    }

    #[test]
    fn durations_are_bounded_to_a_week() {
        let week = crate::budget::MAX_DURATION;
        let p = problems(vec![
            entry("stop", "sleep", ["1"], 0, 1).stop_timeout(Duration::MAX),
            entry("delay", "sleep", ["1"], u64::MAX, 1),
            watch("scan", "x").every(week + Duration::from_secs(1)),
            entry("rule", "true", [], 0, 1).on("rmem > 1g", "exec @ 8d echo").on("rmem > 2g", "stop @ 36500d"),
        ]);
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(p.iter().all(|p| p.contains("maximum of 7 days") || p.contains("at most 7d")), "{p:#?}");
        assert!(p[0].contains("\"stop\"") && p[2].contains("\"scan\""), "{p:#?}");
        let fine = [
            entry("stop", "sleep", ["1"], week.as_millis() as u64, 1).stop_timeout(week).on("rmem > 1g", "stop @ 7d"),
            watch("scan", "x").every(week).on("rmem > 1g", "exec @ 168h echo"),
        ];
        assert!(Config::from_specs(&fine).is_ok());
    }
}
