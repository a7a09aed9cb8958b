//! The configuration language: [`entry`], [`watch`] and the builder methods of
//! [`Spec`]. Builders never fail — they record what they were given, mistakes
//! included — and [`crate::config::Config::from_specs`] validates a whole list
//! at once. This module knows nothing of processes or of the command line.

use std::path::PathBuf;
use std::time::Duration;

use crate::probe::Probe;
use crate::rule::{Action, ExecAction, Pattern, Trigger};
use crate::Signal;

/// The largest number of processes one entry may ask for.
pub const MAX_COUNT: usize = 10_000;

/// The default line limit: a line of a child's output longer than this is
/// written to its log in pieces of this size (see [`Spec::line_limit`]).
pub const LINE_LIMIT: usize = 64 * 1024;
/// The smallest line limit an entry may set.
pub const MIN_LINE_LIMIT: usize = 1024;
/// The largest line limit an entry may set.
pub const MAX_LINE_LIMIT: usize = 16 * 1024 * 1024;

/// When a child that exited is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Restart {
    /// After any exit (the default).
    Always,
    /// After a non-zero exit status or a death by signal.
    OnFailure,
    /// Never: the slot stays empty until the entry is scaled or restarted.
    Never,
}

/// One item of a configuration: an entry (processes Sentry starts and keeps
/// running) or a watch (processes found by a regex on their command line).
///
/// ```
/// use sentry_core::prelude::*;
/// let web = entry("web", "python3", ["-m", "http.server"], 500, 2)
///     .env("PYTHONUNBUFFERED", "1")
///     .stop_timeout(Duration::from_secs(5));
/// assert_eq!(web.name(), "web");
/// ```
#[derive(Clone, Debug)]
pub struct Spec {
    pub(crate) name: String,
    pub(crate) kind: SpecKind,
    pub(crate) children: bool,
    pub(crate) rules: Vec<RuleText>,
    /// Builder mistakes (such as an entry-only method on a watch), reported by validation.
    pub(crate) problems: Vec<String>,
}

#[derive(Clone, Debug)]
pub(crate) enum SpecKind {
    Entry(Box<EntryFields>),
    Watch(WatchFields),
}

/// What an entry declares, before validation.
#[derive(Clone, Debug)]
pub(crate) struct EntryFields {
    pub command: String,
    pub args: Vec<String>,
    pub delay_ms: u64,
    pub count: usize,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: Restart,
    pub user: Option<String>,
    pub group: Option<String>,
    pub line_limit: usize,
    pub log_size: u64,
    pub log_keep: usize,
    pub ready: Option<Probe>,
    pub alive: Option<Probe>,
    pub watchdog: Option<Duration>,
    pub after: Vec<String>,
    pub binds_to: Vec<String>,
    pub give_up: Option<(u32, Duration)>,
    pub success_codes: Option<Vec<i32>>,
    pub stop_codes: Vec<i32>,
}

/// What a watch declares, before validation.
#[derive(Clone, Debug)]
pub(crate) struct WatchFields {
    pub pattern: String,
    pub every: Duration,
    /// `.cgroup(regex)`: the cgroup v2 path must match too.
    pub cgroup: Option<String>,
}

/// A rule as given to `.on(trigger, action)`: parsed, or the reason it does not parse.
#[derive(Clone, Debug)]
pub(crate) struct RuleText {
    pub trigger: Result<Trigger, String>,
    pub action: Result<Action, String>,
}

/// Starts an entry: `count` copies of `command args…`, each restarted
/// `restart_delay_ms` milliseconds after it exits.
///
/// ```
/// use sentry_core::prelude::*;
/// let specs = vec![
///     entry("dummy", "sleep", ["4"], 1000, 1),
///     entry("idle", "sleep", vec!["infinity".to_string()], 0, 3),
///     entry("true", "true", [], 0, 0),
/// ];
/// assert_eq!(specs.len(), 3);
/// ```
pub fn entry(name: &str, command: &str, args: impl IntoArgs, restart_delay_ms: u64, count: usize) -> Spec {
    Spec {
        name: name.to_string(),
        kind: SpecKind::Entry(Box::new(EntryFields {
            command: command.to_string(),
            args: args.into_args(),
            delay_ms: restart_delay_ms,
            count,
            env: Vec::new(),
            cwd: None,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            restart: Restart::Always,
            user: None,
            group: None,
            line_limit: LINE_LIMIT,
            log_size: crate::logfile::LOG_SIZE,
            log_keep: crate::logfile::LOG_KEEP,
            ready: None,
            alive: None,
            watchdog: None,
            after: Vec::new(),
            binds_to: Vec::new(),
            give_up: None,
            success_codes: None,
            stop_codes: Vec::new(),
        })),
        children: false,
        rules: Vec::new(),
        problems: Vec::new(),
    }
}

/// Starts a watch: the running processes whose command line (arguments joined
/// by single spaces) contains a match of `pattern`.
///
/// ```
/// use sentry_core::prelude::*;
/// let w = watch("conkeror", r"xulrunner-bin .*conkeror")
///     .children(true)
///     .on("rmem > 900m", "term");
/// assert_eq!(w.name(), "conkeror");
/// ```
pub fn watch(name: &str, pattern: impl IntoPattern) -> Spec {
    Spec {
        name: name.to_string(),
        kind: SpecKind::Watch(WatchFields {
            pattern: pattern.into_pattern(),
            every: Duration::from_secs(1),
            cgroup: None,
        }),
        children: false,
        rules: Vec::new(),
        problems: Vec::new(),
    }
}

impl Spec {
    /// The entry's or watch's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is an entry (as opposed to a watch).
    pub fn is_entry(&self) -> bool {
        matches!(self.kind, SpecKind::Entry(_))
    }

    /// Adds a rule: when `trigger` holds for a process, run `action`.
    pub fn on(mut self, trigger: impl IntoTrigger, action: impl IntoAction) -> Spec {
        self.rules.push(RuleText { trigger: trigger.into_trigger(), action: action.into_action() });
        self
    }

    /// Also apply the rules to every descendant of a matched process.
    pub fn children(mut self, yes: bool) -> Spec {
        self.children = yes;
        self
    }

    /// How often a watch scans `/proc` (default 1 s). Watches only.
    pub fn every(mut self, interval: Duration) -> Spec {
        match &mut self.kind {
            SpecKind::Watch(w) => w.every = interval,
            SpecKind::Entry(_) => {
                self.problems.push(format!("entry {:?}: .every() applies to watches only", self.name))
            }
        }
        self
    }

    /// Watches only: a process matches only if its cgroup v2 path also
    /// contains a match of `regex` (an unanchored search, like the pattern's,
    /// over the path `/proc/PID/cgroup` shows on its `0::` line, e.g.
    /// `/user.slice/user-1000.slice/app-firefox-1234.scope`). A process on a
    /// host without cgroup v2 has no path and matches no `.cgroup` watch.
    /// With `.children(true)`, the descendants of a matched process are
    /// covered wherever their own cgroup is.
    ///
    /// To select by cgroup alone, give the watch the empty pattern, which
    /// every command line matches (kernel threads, whose command line is
    /// empty, still never match; `".*"` is the same):
    ///
    /// ```
    /// use sentry_core::prelude::*;
    /// let w = watch("firefox", "")
    ///     .cgroup(r"/app-firefox-\d+\.scope$")
    ///     .on("treemem > 4g", "term");
    /// assert_eq!(w.name(), "firefox");
    /// ```
    ///
    /// The path of a process is read when its command line matches, then
    /// kept for as long as the process lives and runs the same program,
    /// re-read once every 8 scans: a process moved to another cgroup is seen
    /// there within 8 scans.
    pub fn cgroup(mut self, regex: impl IntoPattern) -> Spec {
        match &mut self.kind {
            SpecKind::Watch(w) => w.cgroup = Some(regex.into_pattern()),
            SpecKind::Entry(_) => {
                self.problems.push(format!("entry {:?}: .cgroup() applies to watches only", self.name))
            }
        }
        self
    }

    /// Sets an environment variable for the entry's processes (repeatable).
    pub fn env(self, key: &str, value: &str) -> Spec {
        let (key, value) = (key.to_string(), value.to_string());
        self.entry_only("env", |e| e.env.push((key, value)))
    }

    /// The working directory of the entry's processes.
    pub fn cwd(self, path: impl Into<PathBuf>) -> Spec {
        let path = path.into();
        self.entry_only("cwd", |e| e.cwd = Some(path))
    }

    /// The signal that asks the entry's processes to stop (default SIGTERM).
    pub fn stop_signal(self, signal: Signal) -> Spec {
        self.entry_only("stop_signal", |e| e.stop_signal = signal)
    }

    /// How long a process may take to stop before it is killed (default 10 s).
    pub fn stop_timeout(self, timeout: Duration) -> Spec {
        self.entry_only("stop_timeout", |e| e.stop_timeout = timeout)
    }

    /// When an exited process is started again (default [`Restart::Always`]).
    pub fn restart(self, policy: Restart) -> Spec {
        self.entry_only("restart", |e| e.restart = policy)
    }

    /// Runs the entry's processes as this user (Sentry must run as root).
    pub fn user(self, name: &str) -> Spec {
        let name = name.to_string();
        self.entry_only("user", |e| e.user = Some(name))
    }

    /// Runs the entry's processes with this group (Sentry must run as root).
    pub fn group(self, name: &str) -> Spec {
        let name = name.to_string();
        self.entry_only("group", |e| e.group = Some(name))
    }

    /// The longest piece of one output line a log line holds (default
    /// [`LINE_LIMIT`], 64 KiB; from [`MIN_LINE_LIMIT`] to [`MAX_LINE_LIMIT`]).
    /// A longer line is written as several log lines, one after the other;
    /// each but the last has `+` right after `ENTRY.PID`.
    pub fn line_limit(self, bytes: usize) -> Spec {
        self.entry_only("line_limit", |e| e.line_limit = bytes)
    }

    /// Rotates the entry's log, `DIR/log/ENTRY.log`, once it would grow
    /// past `bytes` (default 10 MiB; 0: never rotated, as supervisord's
    /// `logfile_maxbytes=0`). Rotation happens between whole lines; the
    /// rotated files are `ENTRY.log.1` (the newest) … `ENTRY.log.K`.
    pub fn log_size(self, bytes: u64) -> Spec {
        self.entry_only("log_size", |e| e.log_size = bytes)
    }

    /// How many rotated files of the entry's log are kept (default 5; at
    /// most 1 000; 0: the log starts afresh at each rotation).
    pub fn log_keep(self, files: usize) -> Spec {
        self.entry_only("log_keep", |e| e.log_keep = files)
    }

    /// The readiness probe of each process: until it passes, the process
    /// is not ready (`slots[].ready` is `false`) and the entries that come
    /// [`.after`](Spec::after) this one do not start. See [`crate::probe`].
    pub fn ready(self, probe: Probe) -> Spec {
        self.entry_only("ready", |e| e.ready = Some(probe))
    }

    /// The liveness probe of each process: once it fails (`.failures(n)`
    /// checks in a row), the process is restarted gracefully — counted as a
    /// requested restart, towards [`.give_up`](Spec::give_up), and backed
    /// off when it happens again to the next process. Not `probe::notify()`:
    /// keep-alives are [`.watchdog`](Spec::watchdog).
    pub fn alive(self, probe: Probe) -> Spec {
        self.entry_only("alive", |e| e.alive = Some(probe))
    }

    /// systemd's watchdog (`sd_watchdog_enabled(3)`): each process gets
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC`, and must send `WATCHDOG=1` at
    /// least once per `interval` once it is ready (at its start without a
    /// `notify()` readiness probe); a missed keep-alive, or `WATCHDOG=trigger`,
    /// restarts it as a failed liveness probe does.
    pub fn watchdog(self, interval: Duration) -> Spec {
        self.entry_only("watchdog", |e| e.watchdog = Some(interval))
    }

    /// Start order: the entry's processes start only once every entry named
    /// here is ready (each of its processes passes its readiness probe, or
    /// runs if it has none, or exited with success and is not restarted),
    /// and at shutdown they stop before those entries do. A name no entry
    /// has, or a cycle, is a configuration error.
    ///
    /// ```
    /// use sentry_core::prelude::*;
    /// let specs = vec![
    ///     entry("db", "sleep", ["1000"], 0, 1).ready(probe::tcp("127.0.0.1:5432")),
    ///     entry("web", "sleep", ["1000"], 0, 2).after(["db"]),
    /// ];
    /// assert_eq!(specs.len(), 2);
    /// ```
    pub fn after<I>(self, names: I) -> Spec
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let names = owned(names);
        self.entry_only("after", |e| e.after.extend(names))
    }

    /// Like [`.after`](Spec::after), and more: whenever a process of an entry
    /// named here exits (it crashed, was restarted or stopped), this entry's
    /// processes are restarted too, and start again once that entry is
    /// ready (systemd's `BindsTo=` with `After=`).
    pub fn binds_to<I>(self, names: I) -> Spec
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let names = owned(names);
        self.entry_only("binds_to", |e| e.binds_to.extend(names))
    }

    /// A bound on restart loops (systemd's `StartLimitBurst=` within
    /// `StartLimitIntervalSec=`): once a slot's processes have exited
    /// `exits` times within `within` — crashes, clean exits, and restarts by
    /// a rule or a liveness probe alike; not restarts, scalings or reloads
    /// asked for by a user — the slot is `failed` and stays down until
    /// `restart ENTRY`, `POST /entries/ENTRY/restart`, or a reload that
    /// changes the entry.
    pub fn give_up(self, exits: u32, within: Duration) -> Spec {
        self.entry_only("give_up", |e| e.give_up = Some((exits, within)))
    }

    /// The exit codes that count as success (default `[0]`): for
    /// [`Restart::OnFailure`], and for `flapping`. A process killed by a
    /// signal never succeeded (a shell reports SIGTERM as 143: list it here
    /// to accept that).
    pub fn success_codes<I>(self, codes: I) -> Spec
    where
        I: IntoIterator,
        I::Item: std::borrow::Borrow<i32>,
    {
        let codes = integers(codes);
        self.entry_only("success_codes", |e| e.success_codes = Some(codes))
    }

    /// Exit codes after which the slot stays down whatever the restart
    /// policy (like s6's `finish` exit code 125): the process says it must
    /// not be started again. `restart ENTRY` starts it again.
    pub fn stop_codes<I>(self, codes: I) -> Spec
    where
        I: IntoIterator,
        I::Item: std::borrow::Borrow<i32>,
    {
        let codes = integers(codes);
        self.entry_only("stop_codes", |e| e.stop_codes.extend(codes))
    }

    fn entry_only(mut self, method: &str, set: impl FnOnce(&mut EntryFields)) -> Spec {
        match &mut self.kind {
            SpecKind::Entry(e) => set(e),
            SpecKind::Watch(_) => {
                self.problems.push(format!("watch {:?}: .{method}() applies to entries only", self.name))
            }
        }
        self
    }
}

/// A list of integers: `[0, 143]`, `&[125]`, `vec![1]`.
fn integers<I>(codes: I) -> Vec<i32>
where
    I: IntoIterator,
    I::Item: std::borrow::Borrow<i32>,
{
    use std::borrow::Borrow;
    codes.into_iter().map(|c| *c.borrow()).collect()
}

/// A list of names as owned strings.
fn owned<I>(names: I) -> Vec<String>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    names.into_iter().map(|n| n.as_ref().to_string()).collect()
}

/// Anything that can be the argument list of an entry:
/// `["4"]`, `[]`, `&["a", "b"]`, `vec!["a"]`, `Vec<String>`.
pub trait IntoArgs {
    /// The arguments as owned strings.
    fn into_args(self) -> Vec<String>;
}

impl<const N: usize> IntoArgs for [&str; N] {
    fn into_args(self) -> Vec<String> {
        self.iter().map(|s| s.to_string()).collect()
    }
}

impl<const N: usize> IntoArgs for &[&str; N] {
    fn into_args(self) -> Vec<String> {
        self.iter().map(|s| s.to_string()).collect()
    }
}

impl IntoArgs for &[&str] {
    fn into_args(self) -> Vec<String> {
        self.iter().map(|s| s.to_string()).collect()
    }
}

impl IntoArgs for Vec<&str> {
    fn into_args(self) -> Vec<String> {
        self.into_iter().map(str::to_string).collect()
    }
}

impl IntoArgs for Vec<String> {
    fn into_args(self) -> Vec<String> {
        self
    }
}

/// Anything that can be a watch's pattern: a regex as `&str` or `String`.
pub trait IntoPattern {
    /// The regex source text.
    fn into_pattern(self) -> String;
}

impl IntoPattern for &str {
    fn into_pattern(self) -> String {
        self.to_string()
    }
}

impl IntoPattern for String {
    fn into_pattern(self) -> String {
        self
    }
}

/// The `pattern!` macro's value (its regex checked at compile time).
impl IntoPattern for Pattern {
    fn into_pattern(self) -> String {
        self.as_str().to_string()
    }
}

/// Anything that can be a rule's trigger: trigger text such as `"rmem > 900m"`,
/// or an already parsed [`Trigger`].
pub trait IntoTrigger {
    /// The trigger, or why the text is not one.
    fn into_trigger(self) -> Result<Trigger, String>;
}

impl IntoTrigger for &str {
    fn into_trigger(self) -> Result<Trigger, String> {
        Trigger::parse(self)
    }
}

impl IntoTrigger for String {
    fn into_trigger(self) -> Result<Trigger, String> {
        Trigger::parse(&self)
    }
}

impl IntoTrigger for Trigger {
    fn into_trigger(self) -> Result<Trigger, String> {
        Ok(self)
    }
}

/// Anything that can be a rule's action: action text such as `"stop @ 10m"`,
/// or an already parsed [`Action`].
pub trait IntoAction {
    /// The action, or why the text is not one.
    fn into_action(self) -> Result<Action, String>;
}

impl IntoAction for &str {
    fn into_action(self) -> Result<Action, String> {
        Action::parse(self)
    }
}

impl IntoAction for String {
    fn into_action(self) -> Result<Action, String> {
        Action::parse(&self)
    }
}

impl IntoAction for Action {
    fn into_action(self) -> Result<Action, String> {
        Ok(self)
    }
}

/// `Action::exec([…]).at_most_every(…)`, whose mistakes (an unknown `$VAR`)
/// validation reports.
impl IntoAction for ExecAction {
    fn into_action(self) -> Result<Action, String> {
        self.build()
    }
}
