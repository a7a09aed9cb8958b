//! Where Sentry's events go besides the console: a bounded ring of the
//! latest ones with increasing sequence numbers (what `GET /events` and
//! the dashboard read; it crosses re-execs), syslog (RFC 5424
//! datagrams, facility daemon, on `/dev/log` or `SENTRY_SYSLOG`) and the
//! systemd journal (its native protocol, with `SENTRY_ENTRY`, `SENTRY_PID`
//! and, for an exit, `SENTRY_EXIT_STATUS` or `SENTRY_EXIT_SIGNAL`). Both are
//! sent by one thread of their own behind a bounded queue: a missing, slow
//! or full receiver never blocks or crashes supervision — what does not fit
//! is dropped and counted, and said once. Nothing is set up in an embedded
//! supervisor: only `start` calls [`init`]. This module knows nothing of
//! the core; the console hands it what it shows.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crossbeam_channel::{bounded, Sender, TrySendError};

/// Events queued for the sender thread; beyond this they are dropped.
const BACKLOG: usize = 1024;

/// The environment variable that names the syslog socket (default `/dev/log`).
pub const SYSLOG_ENV: &str = "SENTRY_SYSLOG";
/// Set by `start --syslog` (and `--daemon`) so that re-exec'd images keep sending.
const SYSLOG_ON_ENV: &str = "SENTRY_SYSLOG_ON";

/// One event: the entry (if any), the process, the text, and how grave.
struct Event {
    entry: Option<String>,
    pid: i32,
    text: String,
    severity: syslog::Severity,
}

static QUEUE: OnceLock<Sender<Event>> = OnceLock::new();
/// Events go to the journal natively: the console (whose standard output
/// the journal also reads) leaves them out, so each is there once.
static JOURNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether events go to the journal (then not to standard output too).
pub(crate) fn to_journal() -> bool {
    JOURNAL.load(Ordering::Relaxed)
}
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Where events go, chosen at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Destinations {
    pub syslog: Option<PathBuf>,
    pub journal: bool,
}

impl Destinations {
    /// Syslog when asked (`--syslog`, a daemon, or an earlier image that
    /// was); the journal when standard error is the journal's stream
    /// (`JOURNAL_STREAM`, what systemd sets for a service).
    pub fn from_environment(syslog: bool) -> Destinations {
        let syslog = syslog || std::env::var_os(SYSLOG_ON_ENV).is_some();
        Destinations {
            syslog: syslog
                .then(|| std::env::var_os(SYSLOG_ENV).map_or_else(|| PathBuf::from("/dev/log"), PathBuf::from)),
            journal: systemd_journal_logger::connected_to_journal(),
        }
    }
}

/// Starts the sender thread for `to` (nothing when it names no
/// destination). Call once, from `start`.
pub(crate) fn init(to: Destinations) {
    if to.syslog.is_some() {
        // SAFETY: called at start, before the threads that read the environment.
        unsafe { std::env::set_var(SYSLOG_ON_ENV, "1") };
    }
    if to.syslog.is_none() && !to.journal {
        return;
    }
    let (tx, rx) = bounded::<Event>(BACKLOG);
    if QUEUE.set(tx).is_err() {
        return;
    }
    let journal = if to.journal { systemd_journal_logger::JournalLog::new().ok() } else { None };
    JOURNAL.store(journal.is_some(), Ordering::Relaxed);
    let journal = journal.map(|j| j.with_syslog_identifier(process_name()));
    let syslog = to.syslog.map(|path| {
        let socket = UnixDatagram::unbound().ok();
        if let Some(s) = &socket {
            let _ = s.set_nonblocking(true);
        }
        let formatter = syslog::Formatter5424 {
            facility: syslog::Facility::LOG_DAEMON,
            // RFC 5424 §6.2.4: the host's name ("-" would be the nil value).
            hostname: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
            process: process_name(),
            pid: std::process::id(),
        };
        (path, socket, formatter)
    });
    let spawned = std::thread::Builder::new().name("sentry-events".into()).stack_size(128 * 1024).spawn(move || {
        let mut warned = false;
        for event in rx {
            let mut failed = None;
            if let Some(j) = &journal {
                if let Err(e) = send_journal(j, &event) {
                    failed = Some(format!("the journal: {e}"));
                }
            }
            if let Some((path, Some(socket), formatter)) = &syslog {
                if let Err(e) = send_syslog(socket, path, formatter, &event) {
                    failed = Some(format!("syslog at {}: {e}", path.display()));
                }
            }
            match failed {
                Some(why) if !warned => {
                    warned = true;
                    // To stderr only: this logger's own events are not sent (no loop).
                    eprintln!("sentry: cannot send events to {why}; events that cannot be sent are dropped");
                }
                None if warned => warned = false,
                _ => {}
            }
        }
    });
    if spawned.is_err() {
        log::warn!("cannot start the thread that sends events to syslog or the journal");
    }
}

fn process_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "sentry".to_string())
}

/// Records an event of `entry`'s process `pid` (0: none) in the ring and
/// queues it for syslog and the journal; never waits for them.
pub(crate) fn emit(entry: Option<&str>, pid: i32, text: &str) {
    emit_kind(kind_of(text), entry, pid, text);
}

/// [`emit`] with its kind said (a rule that fired).
pub(crate) fn emit_kind(kind: &'static str, entry: Option<&str>, pid: i32, text: &str) {
    record(kind, entry, pid, text);
    let Some(tx) = QUEUE.get() else { return };
    let severity = if text.contains("killed by") || text.contains("ExitFailure") || text.starts_with("Cannot") {
        syslog::Severity::LOG_WARNING
    } else {
        syslog::Severity::LOG_NOTICE
    };
    queue(tx, Event { entry: entry.map(str::to_string), pid, text: text.to_string(), severity });
}

/// Hands `event` to the sender thread, or counts it dropped.
fn queue(tx: &Sender<Event>, event: Event) {
    if let Err(TrySendError::Full(_)) = tx.try_send(event) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Queues a warning or an error of Sentry's own (`log::warn!`, `log::error!`).
pub(crate) fn emit_problem(level: log::Level, text: &str) {
    record(if level == log::Level::Error { "error" } else { "warning" }, None, 0, text);
    let Some(tx) = QUEUE.get() else { return };
    let severity = if level == log::Level::Error { syslog::Severity::LOG_ERR } else { syslog::Severity::LOG_WARNING };
    queue(tx, Event { entry: None, pid: 0, text: text.to_string(), severity });
}

/// The kind of an event, from its text (the console's wording).
fn kind_of(text: &str) -> &'static str {
    const KINDS: [(&str, &str); 18] = [
        ("Started at", "started"),
        ("Exited at", "exited"),
        ("Action program exited", "action_exited"),
        ("Cannot start", "start_failed"),
        ("Cannot run", "action_failed"),
        ("Scaled from", "scaled"),
        ("Restart requested", "restart"),
        ("Sentry reexec'd", "reloaded"),
        ("Reload failed", "reload_failed"),
        ("Its process group outlived SIGKILL", "unkillable"),
        ("Ready.", "ready"),
        ("Not ready", "not_ready"),
        ("Liveness probe failed", "unhealthy"),
        ("Watchdog", "unhealthy"),
        ("Gave up", "failed"),
        ("Restarted with", "restart"),
        ("Waiting for", "waiting"),
        ("Flapping", "flapping"),
    ];
    KINDS.iter().find(|(prefix, _)| text.starts_with(prefix)).map_or("notice", |(_, kind)| kind)
}

/// One event as `GET /events` shows it (SPEC): `at` in Unix seconds;
/// `entry` and `pid` null where they do not apply. It crosses re-execs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at: u64,
    /// One of a fixed set (no allocation while it runs; owned when read back).
    pub kind: std::borrow::Cow<'static, str>,
    pub entry: Option<String>,
    pub pid: Option<i32>,
    pub text: String,
}

/// How many events the ring keeps.
pub(crate) const RING: usize = 1000;

/// The latest events and the next sequence number (1 is the first).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Ring {
    pub next: u64,
    pub events: std::collections::VecDeque<EventRecord>,
}

static THE_RING: std::sync::Mutex<Ring> =
    std::sync::Mutex::new(Ring { next: 1, events: std::collections::VecDeque::new() });
static NEWER: std::sync::Condvar = std::sync::Condvar::new();
/// Long polls waiting on [`NEWER`]: without any, recording an event makes
/// no wake-up system call (it happens on the core's restart path).
static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn ring() -> std::sync::MutexGuard<'static, Ring> {
    THE_RING.lock().unwrap_or_else(|p| p.into_inner())
}

fn record(kind: &'static str, entry: Option<&str>, pid: i32, text: &str) {
    let mut ring = ring();
    let seq = ring.next.max(1);
    ring.next = seq + 1;
    if ring.events.len() == RING {
        ring.events.pop_front();
    }
    let at = crate::sys::unix_now();
    let text = text.lines().next().unwrap_or_default().chars().take(4096).collect();
    ring.events.push_back(EventRecord {
        seq,
        at,
        kind: std::borrow::Cow::Borrowed(kind),
        entry: entry.map(str::to_string),
        pid: (pid > 0).then_some(pid),
        text,
    });
    drop(ring);
    if WAITING.load(Ordering::SeqCst) > 0 {
        NEWER.notify_all();
    }
}

/// What `GET /events?since=SEQ` answers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventsPage {
    pub events: Vec<EventRecord>,
    /// The sequence number to ask `since` next: the last one returned (or,
    /// when none is newer, the newest there is).
    pub next: u64,
    /// Events after `since` have already left the ring.
    pub lost: bool,
}

impl Ring {
    /// The events after `since`, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> EventsPage {
        let newest = self.next.saturating_sub(1);
        let events: Vec<EventRecord> = self.events.iter().filter(|e| e.seq > since).take(limit).cloned().collect();
        let oldest_kept = self.events.front().map_or(self.next, |e| e.seq);
        let lost = since < newest && since + 1 < oldest_kept;
        let next = events.last().map_or(since.min(newest), |e| e.seq);
        EventsPage { events, next, lost }
    }
}

/// The events after `since` (at most `limit`); if there are none, waits
/// for one until `deadline` or until `stop` says to give up, whichever
/// comes first (a long poll; `stop` is asked every 100 ms).
pub(crate) fn events_since(
    since: u64,
    limit: usize,
    deadline: std::time::Instant,
    stop: &dyn Fn() -> bool,
) -> EventsPage {
    let mut ring = ring();
    loop {
        let page = ring.since(since, limit);
        let now = std::time::Instant::now();
        if !page.events.is_empty() || now >= deadline || stop() {
            return page;
        }
        let wait = (deadline - now).min(std::time::Duration::from_millis(100));
        WAITING.fetch_add(1, Ordering::SeqCst);
        ring = NEWER.wait_timeout(ring, wait).unwrap_or_else(|p| p.into_inner()).0;
        WAITING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The ring, for the next image.
pub(crate) fn ring_snapshot() -> Ring {
    ring().clone()
}

/// The ring an earlier image handed over, before anything of this one
/// (events of this image so far come after it, renumbered).
pub(crate) fn restore_ring(old: Ring) {
    let mut ring = ring();
    let mine: Vec<EventRecord> = ring.events.drain(..).collect();
    *ring = old;
    ring.next = ring.next.max(ring.events.back().map_or(1, |e| e.seq + 1));
    for mut e in mine {
        e.seq = ring.next;
        ring.next += 1;
        if ring.events.len() == RING {
            ring.events.pop_front();
        }
        ring.events.push_back(e);
    }
}

/// Events dropped because the queue was full.
#[allow(dead_code)] // read by metrics, which come with the metrics issue
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// `SENTRY_EXIT_STATUS` or `SENTRY_EXIT_SIGNAL` of an exit line (`… with
/// ExitFailure 3.`, `… killed by SIGTERM.`, `… with ExitSuccess.`).
fn exit_fields(text: &str) -> Option<(&'static str, String)> {
    if text.contains("with ExitSuccess") {
        return Some(("SENTRY_EXIT_STATUS", "0".to_string()));
    }
    if let Some(rest) = text.split("with ExitFailure ").nth(1) {
        return Some(("SENTRY_EXIT_STATUS", rest.trim_end_matches('.').to_string()));
    }
    let rest = text.split("killed by ").nth(1)?;
    Some(("SENTRY_EXIT_SIGNAL", rest.trim_end_matches('.').to_string()))
}

/// The event's structured fields, for both destinations.
fn fields(event: &Event) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    if let Some(entry) = &event.entry {
        fields.push(("SENTRY_ENTRY", entry.clone()));
    }
    if event.pid > 0 {
        fields.push(("SENTRY_PID", event.pid.to_string()));
    }
    fields.extend(exit_fields(&event.text));
    fields
}

fn send_journal(journal: &systemd_journal_logger::JournalLog, event: &Event) -> std::io::Result<()> {
    let level = match event.severity {
        syslog::Severity::LOG_ERR => log::Level::Error,
        syslog::Severity::LOG_WARNING => log::Level::Warn,
        _ => log::Level::Info,
    };
    let fields = fields(event);
    let kvs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let message = match &event.entry {
        Some(entry) if event.pid > 0 => format!("{entry}.{} {}", event.pid, event.text),
        _ => event.text.clone(),
    };
    journal.journal_send(
        &log::Record::builder().args(format_args!("{message}")).level(level).target("sentry").key_values(&kvs).build(),
    )
}

fn send_syslog(
    socket: &UnixDatagram,
    path: &std::path::Path,
    formatter: &syslog::Formatter5424,
    event: &Event,
) -> std::io::Result<()> {
    use syslog::LogFormat;
    let mut data = std::collections::BTreeMap::new();
    let fields = fields(event);
    if !fields.is_empty() {
        // An SD-ID with an `@` and a private number is what RFC 5424 §7.2.2
        // allows for names of one's own; 32473 is the number RFC 5612 sets
        // aside for documentation and examples.
        let params = fields.iter().map(|(k, v)| (k.trim_start_matches("SENTRY_").to_lowercase(), v.clone())).collect();
        data.insert("sentry@32473".to_string(), params);
    }
    let mut buf = Vec::new();
    formatter
        .format(&mut buf, event.severity, (0u32, data, &event.text))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    socket.send_to(&buf, path).map(|_| ())
}

/// The logger `start` installs: `env_logger`'s output, and warnings and
/// errors also sent as events.
pub(crate) struct Logger {
    pub inner: env_logger::Logger,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if self.inner.matches(record) {
            self.inner.log(record);
            if record.level() <= log::Level::Warn {
                emit_problem(record.level(), &record.args().to_string());
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(n: u64) -> Ring {
        let events = (1..=n)
            .map(|seq| EventRecord { seq, at: 0, kind: "notice".into(), entry: None, pid: None, text: seq.to_string() })
            .collect();
        Ring { next: n + 1, events }
    }

    #[test]
    fn a_page_says_what_is_newer_and_whether_some_left_the_ring() {
        let mut ring = ring_of(10);
        let seqs = |p: &EventsPage| p.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let page = ring.since(7, 100);
        assert_eq!((seqs(&page), page.next, page.lost), (vec![8, 9, 10], 10, false));
        let page = ring.since(10, 100);
        assert_eq!((seqs(&page), page.next, page.lost), (vec![], 10, false));
        // A client from the future (a sequence never given): told where things are.
        assert_eq!(ring.since(99, 100).next, 10);
        ring.events.drain(..5);
        let page = ring.since(2, 100);
        assert_eq!((seqs(&page), page.lost), (vec![6, 7, 8, 9, 10], true));
        assert!(!ring.since(5, 100).lost, "6 is the first after 5, and it is there");
        assert_eq!(seqs(&ring.since(0, 2)), vec![6, 7]);
    }

    #[test]
    fn kinds_come_from_the_consoles_wording() {
        assert_eq!(kind_of("Started at 1."), "started");
        assert_eq!(kind_of("Exited at 1, killed by SIGTERM."), "exited");
        assert_eq!(kind_of("Scaled from 1 to 3."), "scaled");
        assert_eq!(kind_of("Sentry reexec'd. Initially started at 1"), "reloaded");
        assert_eq!(kind_of("anything else"), "notice");
    }

    #[test]
    fn exit_lines_give_their_status_or_signal() {
        assert_eq!(exit_fields("Exited at 1 with ExitSuccess."), Some(("SENTRY_EXIT_STATUS", "0".into())));
        assert_eq!(exit_fields("Exited at 1 with ExitFailure 3."), Some(("SENTRY_EXIT_STATUS", "3".into())));
        assert_eq!(exit_fields("Exited at 1, killed by SIGTERM."), Some(("SENTRY_EXIT_SIGNAL", "SIGTERM".into())));
        assert_eq!(exit_fields("Started at 1."), None);
    }
}
