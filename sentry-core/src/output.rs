//! Where text goes: the console (events and children's lines, best effort,
//! never blocking the caller) and the per-entry log files (every line, whole,
//! written by the thread that read it so back-pressure lands on the child's
//! pipe). [`LineSplitter`] turns a byte stream into lines and keeps the
//! unfinished rest. This module knows nothing of the core or of processes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::logfile::{LogFile, LogState};
use crate::sys;

/// Lines waiting for the console writer; beyond this, console lines are dropped.
const CONSOLE_BACKLOG: usize = 4096;

/// Console lines dropped because the writer was [`CONSOLE_BACKLOG`] lines
/// behind, since the console last said so: said, and reset, each time the
/// writer has caught up (the logs have every line).
static CONSOLE_DROPPED: AtomicU64 = AtomicU64::new(0);

/// How long [`Console::close`] waits for what is queued to be written: a
/// standard output nobody reads (a full pipe) must not block an exec or a stop.
pub(crate) const CLOSE_PATIENCE: Duration = Duration::from_secs(1);

/// The console writer thread (or nothing, when embedded).
pub(crate) struct Console {
    tx: Option<Sender<Option<String>>>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the thread ends.
    done: Receiver<()>,
    /// Set when `close` gave up: the thread writes nothing more.
    abandoned: Arc<AtomicBool>,
    /// Lines sent and lines written, to tell an idle writer without waking it.
    counts: Arc<Counts>,
}

/// Lines queued by every handle of a console, and lines its thread has
/// written and flushed: equal when nothing is left to write.
#[derive(Debug, Default)]
struct Counts {
    /// Counted before a line is queued (and taken back if it is not).
    sent: AtomicU64,
    /// Counted once the line is on standard output (after the flush).
    written: AtomicU64,
}

/// `DIR/NAME.out` when this instance runs detached (`start --daemon`) and
/// its standard output and error are that file: rotated like an entry's
/// log (10 MiB × 5), reopened by SIGUSR1.
static DAEMON_OUTPUT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Takes `path` as the daemon's output if standard output is that very file.
pub(crate) fn adopt_daemon_output(path: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| (a.dev(), a.ino()) == (b.dev(), b.ino());
    // SAFETY: fstat of fd 1 into a File we never close.
    let stdout = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    if let (Ok(a), Ok(b)) = (stdout.metadata(), std::fs::metadata(path)) {
        if a.is_file() && same(&a, &b) {
            let _ = DAEMON_OUTPUT.set(path.to_path_buf());
        }
    }
}

/// Takes `path` as the daemon's output whatever standard output is now: the
/// image before this one wrote to it, and logrotate may have moved it
/// since (a reopen then points standard output at the path again).
pub(crate) fn keep_daemon_output(path: &std::path::Path) {
    let _ = DAEMON_OUTPUT.set(path.to_path_buf());
}

/// Whether this instance writes to its daemon output file (`start --daemon`).
pub(crate) fn is_daemon_output() -> bool {
    DAEMON_OUTPUT.get().is_some()
}

/// Points standard output and error at a fresh opening of the daemon's
/// output path (after logrotate moved it).
pub(crate) fn reopen_daemon_output() {
    if let Some(path) = DAEMON_OUTPUT.get() {
        if let Ok(file) = crate::logfile::open_log(path) {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto fds 1 and 2, which stay open throughout.
            unsafe {
                libc::dup2(file.as_raw_fd(), 1);
                libc::dup2(file.as_raw_fd(), 2);
            }
        }
    }
}

/// Rotates the daemon's output once it is past 10 MiB (`.out.1` the newest, 5 kept).
fn rotate_daemon_output() {
    let Some(path) = DAEMON_OUTPUT.get() else { return };
    // SAFETY: fstat of fd 1 through a File we never close.
    let stdout = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    if stdout.metadata().map_or(true, |m| m.len() < crate::logfile::LOG_SIZE) {
        return;
    }
    if crate::logfile::shift(path, crate::logfile::LOG_KEEP).is_ok() {
        reopen_daemon_output();
    }
}

/// A cheap handle to queue console lines.
#[derive(Default)]
pub(crate) struct ConsoleHandle {
    tx: Option<Sender<Option<String>>>,
    counts: Arc<Counts>,
    /// What a [`holding`](ConsoleHandle::holding) handle was told, kept
    /// until [`release`](ConsoleHandle::release) (at most [`CONSOLE_BACKLOG`]).
    held: Option<RefCell<Vec<Said>>>,
}

/// One console line as it was told, not yet formatted: a holding handle
/// formats and sends it only at the release, so that the work lies not
/// between a child's exit and its restart. (An event is recorded for
/// `/events` and syslog when told, as ever.)
enum Said {
    /// A line of its own ([`ConsoleHandle::say`]).
    Plain(String),
    /// `HH:MM:SS tag text` for the Unix time `at`; the tag is `name.pid`
    /// when `pid` is given.
    Tagged { name: String, pid: Option<i32>, text: String, at: u64 },
}

/// A clone sends at once, even of a holding handle.
impl Clone for ConsoleHandle {
    fn clone(&self) -> ConsoleHandle {
        ConsoleHandle { tx: self.tx.clone(), counts: self.counts.clone(), held: None }
    }
}

/// What is held is sent, not lost.
impl Drop for ConsoleHandle {
    fn drop(&mut self) {
        self.release();
    }
}

/// Says how many console lines were dropped since it was last said, if any.
fn say_dropped(out: &mut impl Write) {
    let dropped = CONSOLE_DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = writeln!(
            out,
            "Sentry: {dropped} console line{} dropped: the console could not keep up (the logs have every line).",
            if dropped == 1 { "" } else { "s" }
        );
    }
}

impl Console {
    /// A console that writes to standard output from its own thread.
    pub fn stdout() -> Console {
        Console::writing_to(1)
    }

    /// A console writing to `fd`, which must stay open as long as the process.
    fn writing_to(fd: std::os::fd::RawFd) -> Console {
        let (tx, rx) = bounded::<Option<String>>(CONSOLE_BACKLOG);
        let (done_tx, done) = bounded::<()>(0);
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = abandoned.clone();
        let counts = Arc::new(Counts::default());
        let progress = counts.clone();
        let thread = std::thread::Builder::new()
            .name("sentry-console".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _done = done_tx;
                // fd 1 itself, not `std::io::stdout()`: a write stuck on a
                // full pipe must not hold std's global stdout lock, which a
                // later console (after a failed exec) would wait for.
                // SAFETY: the fd stays open for the life of the process; never closed here.
                let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
                let mut out = BufWriter::new(&*file);
                let mut lines = 0;
                while let Ok(Some(line)) = rx.recv() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Best effort: a closed or broken stdout must not stop anything.
                    let _ = out.write_all(line.as_bytes());
                    lines += 1;
                    if rx.is_empty() {
                        say_dropped(&mut out);
                        let _ = out.flush();
                        rotate_daemon_output();
                        // After the rotation too: an exec must not end
                        // this thread between its rename and its dup2.
                        progress.written.store(lines, Ordering::SeqCst);
                    }
                }
                say_dropped(&mut out);
                let _ = out.flush();
            })
            .ok();
        Console { tx: thread.as_ref().map(|_| tx), thread, done, abandoned, counts }
    }

    pub fn handle(&self) -> ConsoleHandle {
        ConsoleHandle { tx: self.tx.clone(), counts: self.counts.clone(), held: None }
    }

    /// [`Console::close`] just before an `execve`, which ends the thread
    /// anyway: when every line sent so far is written and flushed (and no
    /// dropped line is owed a notice), the thread is told to end but not
    /// woken and waited for — that round trip to a thread asleep on
    /// another CPU cost 0.5–2.5 ms of a reload's unwatched window, measured
    /// here. Otherwise as `close`. Returns how many queued lines were dropped.
    pub fn close_before_exec(mut self) -> usize {
        let idle = self.counts.written.load(Ordering::SeqCst) == self.counts.sent.load(Ordering::SeqCst);
        if !idle || CONSOLE_DROPPED.load(Ordering::Relaxed) > 0 {
            return self.close();
        }
        // Nothing of ours is written from here on: a line sent meanwhile is
        // a line said after the close, which `close` would not write either.
        self.abandoned.store(true, Ordering::Relaxed);
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(None);
        }
        // Detached: it ends when it wakes, or with the exec.
        drop(self.thread.take());
        0
    }

    /// Writes what is queued, then stops the writer thread — within
    /// [`CLOSE_PATIENCE`]: if standard output does not take it all by then
    /// (a pipe nobody reads), the rest is dropped and the thread, stuck in a
    /// write, is left behind (an exec ends it). Returns how many queued
    /// lines were dropped.
    pub fn close(self) -> usize {
        self.close_within(CLOSE_PATIENCE)
    }

    fn close_within(mut self, patience: Duration) -> usize {
        let deadline = Instant::now() + patience;
        let Some(tx) = self.tx.take() else { return 0 };
        let sent = tx.send_deadline(None, deadline).is_ok();
        if sent && self.done.recv_deadline(deadline) == Err(RecvTimeoutError::Disconnected) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            return 0;
        }
        self.abandoned.store(true, Ordering::Relaxed);
        // The line being written counts too: it may never be whole.
        tx.len().saturating_sub(usize::from(sent)) + 1
    }
}

impl ConsoleHandle {
    /// Queues `text` plus a newline; drops it if the console is far behind.
    pub fn say(&self, text: &str) {
        if self.tx.is_some() {
            crate::events::emit(None, 0, text);
            if !crate::events::to_journal() {
                self.tell(Said::Plain(text.to_string()));
            }
        }
    }

    /// Queues an event line in the seed's style: `HH:MM:SS name.PID      text`
    /// (and sends it to syslog or the journal, where set up).
    pub fn event(&self, name: &str, pid: i32, text: &str) {
        self.record(name, pid, text);
        self.show_event(name, pid, text);
    }

    /// The half of [`ConsoleHandle::event`] that records it (`/events`,
    /// syslog or the journal), for an event whose console line the
    /// process's monitor shows in order with the process's own lines.
    pub fn record(&self, name: &str, pid: i32, text: &str) {
        if self.tx.is_some() {
            crate::events::emit(Some(name), pid, text);
        }
    }

    /// The other half: the console line of an event recorded elsewhere
    /// (none where events go to the journal, as for [`ConsoleHandle::event`]).
    pub fn show_event(&self, name: &str, pid: i32, text: &str) {
        if self.tx.is_some() && !crate::events::to_journal() {
            let at = sys::unix_now();
            self.tell(Said::Tagged { name: name.to_string(), pid: Some(pid), text: text.to_string(), at });
        }
    }

    /// Queues an event line about `tag` (such as `name.PID` or `name.?`).
    /// (A child's line, say: not an event, not sent to syslog.)
    pub fn tagged(&self, tag: &str, text: &str) {
        if self.tx.is_some() {
            self.tell(Said::Tagged { name: tag.to_string(), pid: None, text: text.to_string(), at: sys::unix_now() });
        }
    }

    /// An event of entry `entry` about `tag` (`name.?`, or the entry's
    /// name alone): shown like [`ConsoleHandle::tagged`] and sent to syslog
    /// or the journal where set up.
    pub fn entry_event(&self, entry: &str, tag: &str, text: &str) {
        if self.tx.is_some() {
            crate::events::emit(Some(entry), 0, text);
            if !crate::events::to_journal() {
                self.tagged(tag, text);
            }
        }
    }

    /// Holds `said` (a holding handle with room left) or sends it now.
    fn tell(&self, said: Said) {
        if let Some(held) = &self.held {
            let mut held = held.borrow_mut();
            if held.len() < CONSOLE_BACKLOG {
                held.push(said);
            }
            return;
        }
        self.out(said);
    }

    /// Formats `said` and queues the line.
    fn out(&self, said: Said) {
        let line = match said {
            Said::Plain(text) => format!("{text}\n"),
            Said::Tagged { name, pid: Some(pid), text, at } => {
                format!("{} {:<15} {text}\n", sys::local_hms(at), format!("{name}.{pid}"))
            }
            Said::Tagged { name, pid: None, text, at } => format!("{} {name:<15} {text}\n", sys::local_hms(at)),
        };
        self.send(line);
    }

    /// The same console, but lines are kept until [`ConsoleHandle::release`]:
    /// the core's, so that waking the console thread (and being preempted
    /// by it) happens after a restart, not in its middle.
    pub fn holding(mut self) -> ConsoleHandle {
        self.held = Some(RefCell::new(Vec::new()));
        self
    }

    /// Sends the lines held so far, in order.
    pub fn release(&self) {
        let Some(held) = &self.held else { return };
        let said = std::mem::take(&mut *held.borrow_mut());
        for said in said {
            self.out(said);
        }
    }

    fn send(&self, line: String) {
        if let Some(tx) = &self.tx {
            self.counts.sent.fetch_add(1, Ordering::SeqCst);
            match tx.try_send(Some(line)) {
                Err(TrySendError::Full(_)) => {
                    self.counts.sent.fetch_sub(1, Ordering::SeqCst);
                    CONSOLE_DROPPED.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.counts.sent.fetch_sub(1, Ordering::SeqCst);
                }
                Ok(()) => {}
            }
        }
    }

    pub fn is_silent(&self) -> bool {
        self.tx.is_none()
    }
}

/// How much of one unfinished line a stream holds, at most, before writing
/// its pieces: every line up to this long has all its pieces in one write.
const HOLD: usize = 1 << 20;
/// The first wait before writing a log is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// At the very end (shutdown), how often held lines are tried once more.
const LAST_TRIES: [Duration; 3] = [Duration::ZERO, Duration::from_millis(100), Duration::from_millis(300)];

/// How much of an unfinished line is held before its pieces are written:
/// a whole number of pieces, at least one.
fn hold_for(limit: usize) -> usize {
    (HOLD / limit).max(1) * limit
}

/// How a [`Record`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// A newline ended it (the newline is not part of the text).
    Newline,
    /// The stream ended without a newline.
    Eof,
    /// The line goes on: the stream gave more than the hold without a newline.
    Open,
    /// A line Sentry itself writes (a process started or exited, a rule
    /// fired): marked `[sentry]` in the log, never part of a stream.
    Own,
}

/// A line read from a stream (or, for a line longer than the hold, its part so far).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub text: Vec<u8>,
    pub end: End,
}

impl Record {
    /// Appends the bytes of the stream this record was made of.
    fn raw_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.text);
        if self.end == End::Newline {
            out.push(b'\n');
        }
    }

    /// Its pieces of at most `limit` bytes, each with whether the line goes on after it.
    fn pieces(&self, limit: usize) -> impl Iterator<Item = (&[u8], bool)> {
        let n = self.text.len().div_ceil(limit).max(1);
        (0..n).map(move |k| {
            let piece = &self.text[(k * limit).min(self.text.len())..((k + 1) * limit).min(self.text.len())];
            (piece, k + 1 < n || self.end == End::Open)
        })
    }
}

/// Splits a byte stream into lines; keeps an unfinished last line for later,
/// and (across a stop of its monitor) what a short write of the log left owed.
#[derive(Debug, Default, Clone)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
    /// How many leading bytes of `pending` are known to hold no newline.
    scanned: usize,
    /// The formatted rest of a log line a short write cut: owed to the log
    /// before anything else.
    unfinished: Vec<u8>,
}

impl LineSplitter {
    /// A splitter that starts with `rest` (bytes read earlier, not yet
    /// written) and the rest of a cut log line (see [`LineSplitter::take_unfinished`]).
    pub fn resume(rest: Vec<u8>, unfinished: Vec<u8>) -> LineSplitter {
        LineSplitter { pending: rest, scanned: 0, unfinished }
    }

    /// Adds `chunk`; calls `emit` with each complete line and, when more than
    /// the hold for `limit` has come without a newline, with that much of it.
    pub fn push(&mut self, chunk: &[u8], limit: usize, mut emit: impl FnMut(Record)) {
        let hold = hold_for(limit);
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(n) = self.pending[from..].iter().position(|&b| b == b'\n') {
            let end = from + n;
            start = self.emit_open(start, end, hold, &mut emit);
            emit(Record { text: self.pending[start..end].to_vec(), end: End::Newline });
            start = end + 1;
            from = start;
        }
        start = self.emit_open(start, self.pending.len(), hold, &mut emit);
        self.pending.drain(..start);
        self.scanned = self.pending.len();
    }

    /// Emits `pending[start..end]` (no newline in it) as records of `hold`
    /// bytes while more than `hold` is left; returns where the rest starts.
    fn emit_open(&self, start: usize, end: usize, hold: usize, emit: &mut impl FnMut(Record)) -> usize {
        let mut at = start;
        while end - at > hold {
            emit(Record { text: self.pending[at..at + hold].to_vec(), end: End::Open });
            at += hold;
        }
        at
    }

    /// Emits the unfinished last line, if any (the stream has ended).
    pub fn finish(&mut self, limit: usize, mut emit: impl FnMut(Record)) {
        self.push(&[], limit, &mut emit);
        if !self.pending.is_empty() {
            emit(Record { text: std::mem::take(&mut self.pending), end: End::Eof });
        }
        self.scanned = 0;
    }

    /// Takes the bytes read but not yet written.
    pub fn take_remainder(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.pending)
    }

    /// Takes the rest of a log line cut by a short write (written before anything else).
    pub fn take_unfinished(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.unfinished)
    }

    /// Puts back, in front of what it holds, bytes read but not written.
    fn put_back(&mut self, mut raw: Vec<u8>, unfinished: Vec<u8>) {
        raw.append(&mut self.pending);
        self.pending = raw;
        self.scanned = 0;
        self.unfinished = unfinished;
    }
}

/// Where one child's lines go: its entry's log file and the console.
#[derive(Clone)]
pub(crate) struct LineSink {
    pub entry: String,
    pub pid: i32,
    pub log: Option<Arc<LogFile>>,
    pub console: ConsoleHandle,
    /// The longest piece of a line one log line holds.
    pub line_limit: usize,
}

impl LineSink {
    pub fn new(
        entry: &str,
        pid: i32,
        log: Option<Arc<LogFile>>,
        console: ConsoleHandle,
        line_limit: usize,
    ) -> LineSink {
        let line_limit = line_limit.clamp(crate::spec::MIN_LINE_LIMIT, crate::spec::MAX_LINE_LIMIT);
        LineSink { entry: entry.to_string(), pid, log, console, line_limit }
    }

    /// The log lines of `record`: `DATE TIME ENTRY.PID TEXT`, with `ENTRY.PID+`
    /// on every piece after which the line goes on.
    fn format_into(&self, record: &Record, date: &str, out: &mut Vec<u8>) {
        for (piece, more) in record.pieces(self.line_limit) {
            out.extend_from_slice(date.as_bytes());
            // Written in place: no allocation per line on the hot path.
            use std::io::Write as _;
            let _ = write!(out, " {}.{}{} ", self.entry, self.pid, if more { "+" } else { "" });
            if record.end == End::Own {
                out.extend_from_slice(b"[sentry] ");
            }
            out.extend_from_slice(piece);
            out.push(b'\n');
        }
    }

    /// Writes `lines` (Sentry's own, such as a rule that fired) to the log,
    /// marked `[sentry]`, if it can take them now, and to the console; never
    /// waits: a log another writer has, or that fails, does not get them.
    pub fn write(&self, lines: &[Vec<u8>]) {
        for l in lines {
            crate::events::emit(Some(&self.entry), self.pid, &String::from_utf8_lossy(l));
        }
        let records: Vec<Record> = lines.iter().map(|l| Record { text: l.clone(), end: End::Own }).collect();
        records.iter().for_each(|r| self.show(r));
        let Some(log) = &self.log else { return };
        let Some(mut state) = log.try_lock() else { return };
        if state.owed_by.is_some() || state.failing_since.is_some() || write_orphan(log, &mut state).is_err() {
            return;
        }
        let date = sys::log_time(sys::unix_now_ns());
        let mut buf = Vec::new();
        records.iter().for_each(|r| self.format_into(r, &date, &mut buf));
        let (n, _) = log.append(&mut state, &buf, true);
        if n > 0 && n < buf.len() {
            state.orphan = buf[n..].to_vec();
        }
    }

    /// Queues `record` for the console (best effort), marked the same way.
    fn show(&self, record: &Record) {
        if self.console.is_silent() {
            return;
        }
        for (piece, more) in record.pieces(self.line_limit) {
            let tag = format!("{}.{}{}", self.entry, self.pid, if more { "+" } else { "" });
            self.console.tagged(&tag, &String::from_utf8_lossy(piece));
        }
    }
}

/// The stream number of Sentry's own lines in an [`Outbox`]: never a pipe's.
const OWN_STREAM: usize = usize::MAX;

/// Writes the rest of a cut line nobody owns, if any.
fn write_orphan(log: &LogFile, state: &mut LogState) -> io::Result<()> {
    if state.orphan.is_empty() {
        return Ok(());
    }
    let orphan = std::mem::take(&mut state.orphan);
    let (n, error) = log.append(state, &orphan, false);
    state.orphan = orphan[n..].to_vec();
    error.map_or(Ok(()), Err)
}

/// Lines of one child read and not yet in its log, in the order they were
/// read (from any of its streams). While it holds any, its monitor reads no
/// more (the child waits on its pipe) and tries again with back-off.
pub(crate) struct Outbox {
    id: u64,
    queue: VecDeque<(usize, Record)>,
    /// The rest of a log line a short write cut (and the stream it came from).
    cut: Option<(usize, Vec<u8>)>,
    /// When to try again, and the wait that led there.
    retry: Option<(Instant, Duration)>,
    /// Why the last try failed.
    error: Option<io::Error>,
    /// The process's `[sentry] Started` line, kept as (Unix seconds the
    /// core started it at, Unix ns its monitor began): two numbers, no
    /// allocation, for a thousand quiet children. Written, with the time it
    /// started, before its first output, or with its exit when it says
    /// nothing (so a start costs no log write on its path); and whether it
    /// is due now.
    opening: Option<(u64, u64)>,
    opening_due: bool,
}

impl Default for Outbox {
    fn default() -> Outbox {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Outbox {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            queue: VecDeque::new(),
            cut: None,
            retry: None,
            error: None,
            opening: None,
            opening_due: false,
        }
    }
}

impl Outbox {
    /// Takes over what a stopped monitor of `stream` left: the rest of a cut
    /// line (owed to the log first) and the lines in the splitter's remainder.
    pub fn resume(&mut self, sink: &LineSink, stream: usize, splitter: &mut LineSplitter) {
        let unfinished = splitter.take_unfinished();
        if !unfinished.is_empty() {
            self.cut = Some((stream, unfinished));
            if let Some(log) = &sink.log {
                log.lock().owed_by = Some(self.id);
            }
        }
        splitter.push(&[], sink.line_limit, |r| self.add(sink, stream, r));
    }

    /// Queues `record` of `stream` (and shows it on the console at once).
    pub fn add(&mut self, sink: &LineSink, stream: usize, record: Record) {
        sink.show(&record);
        self.queue.push_back((stream, record));
    }

    /// Keeps `Started at STARTED_AT.` as the process's first log line,
    /// with the time now, to be written before anything else of it.
    pub fn set_opening(&mut self, started_at: u64) {
        self.opening = Some((started_at, sys::unix_now_ns()));
    }

    /// The opening line, formatted.
    fn opening_line(sink: &LineSink, (started_at, ns): (u64, u64)) -> Vec<u8> {
        let mut line = Vec::new();
        let record = Record { text: format!("Started at {started_at}.").into_bytes(), end: End::Own };
        sink.format_into(&record, &sys::log_time(ns), &mut line);
        line
    }

    /// The process is done: its opening line is written now if it has
    /// not been (with what follows it).
    pub fn opening_due(&mut self) {
        self.opening_due = true;
    }

    /// Queues a line of Sentry's own for the log (marked `[sentry]`; the
    /// console has its event already), in order with the child's lines.
    pub fn add_own(&mut self, text: &str) {
        self.queue.push_back((OWN_STREAM, Record { text: text.as_bytes().to_vec(), end: End::Own }));
    }

    /// Whether lines wait to be written.
    pub fn is_holding(&self) -> bool {
        !self.queue.is_empty() || self.cut.is_some() || (self.opening_due && self.opening.is_some())
    }

    /// Whether lines of `stream` wait to be written.
    pub fn holds(&self, stream: usize) -> bool {
        self.queue.iter().any(|(s, _)| *s == stream) || self.cut.as_ref().is_some_and(|(s, _)| *s == stream)
    }

    /// Milliseconds until the next try, for `poll` (-1: none is due).
    pub fn timeout_ms(&self, now: Instant) -> i32 {
        match self.retry {
            Some((at, _)) if self.is_holding() => at.saturating_duration_since(now).as_millis().min(60_000) as i32,
            _ => -1,
        }
    }

    /// Whether it is time to try again.
    pub fn is_due(&self, now: Instant) -> bool {
        self.retry.is_none_or(|(at, _)| at <= now)
    }

    /// Writes what it holds to the log, whole lines only: a short write's
    /// rest is owed first, nothing is written twice. Says `true` when all is
    /// written; otherwise keeps the rest and plans the next try.
    pub fn flush(&mut self, sink: &LineSink) -> bool {
        if !self.is_holding() {
            self.retry = None;
            return true;
        }
        let Some(log) = &sink.log else {
            // No log (an embedded supervisor without one): nothing is owed,
            // the opening line included — else a closing monitor would wait
            // for it for ever.
            self.queue.clear();
            self.cut = None;
            self.opening = None;
            return true;
        };
        let mut state = log.lock();
        match self.write_held(sink, log, &mut state) {
            Ok(()) => {
                self.retry = None;
                self.error = None;
                if let Some(since) = state.failing_since.take() {
                    log::warn!(
                        "the log of {} is written again after {:.1} s; no line was lost",
                        sink.entry,
                        since.elapsed().as_secs_f64()
                    );
                }
                true
            }
            Err(e) => {
                // Another writer owes the file the rest of a line: not a failure of the disk.
                if e.kind() != io::ErrorKind::WouldBlock && state.failing_since.is_none() {
                    state.failing_since = Some(Instant::now());
                    log::warn!(
                        "cannot write the log of {}: {e}; its output is held (the child waits on its pipe) and tried again",
                        sink.entry
                    );
                }
                let wait = self.retry.map_or(RETRY_FIRST, |(_, w)| (w * 2).min(RETRY_MAX));
                self.retry = Some((Instant::now() + wait, wait));
                self.error = Some(e);
                false
            }
        }
    }

    fn write_held(&mut self, sink: &LineSink, log: &LogFile, state: &mut LogState) -> io::Result<()> {
        if state.owed_by.is_some_and(|id| id != self.id) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "another writer owes the rest of a line"));
        }
        write_orphan(log, state)?;
        if let Some((_, rest)) = &mut self.cut {
            let (n, error) = log.append(state, rest, false);
            rest.drain(..n);
            if let Some(e) = error {
                return Err(e);
            }
            self.cut = None;
            state.owed_by = None;
        }
        if let Some(opening) = self.opening.filter(|_| self.opening_due || !self.queue.is_empty()) {
            let line = Outbox::opening_line(sink, opening);
            let (n, error) = log.append(state, &line, true);
            if n > 0 {
                self.opening = None;
            }
            if n > 0 && n < line.len() {
                // Its rest is owed first, as any cut line's.
                self.cut = Some((OWN_STREAM, line[n..].to_vec()));
                state.owed_by = Some(self.id);
            }
            if let Some(e) = error {
                return Err(e);
            }
        }
        if self.queue.is_empty() {
            return Ok(());
        }
        let date = sys::log_time(sys::unix_now_ns());
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(self.queue.len());
        for (_, record) in &self.queue {
            sink.format_into(record, &date, &mut buf);
            ends.push(buf.len());
        }
        let (n, error) = log.append(state, &buf, true);
        let done = ends.iter().take_while(|&&end| end <= n).count();
        let written_to = if done == 0 { 0 } else { ends[done - 1] };
        if done < ends.len() && n > written_to {
            // A short write ended inside this record: its rest goes first, as is.
            self.cut = Some((self.queue[done].0, buf[n..ends[done]].to_vec()));
            state.owed_by = Some(self.id);
            self.queue.drain(..=done);
        } else {
            self.queue.drain(..done);
        }
        error.map_or(Ok(()), Err)
    }

    /// The end of supervision: tries a few more times within a bounded time,
    /// then says once what could not be written.
    pub fn flush_last(&mut self, sink: &LineSink) {
        for wait in LAST_TRIES {
            std::thread::sleep(wait);
            if self.flush(sink) {
                return;
            }
        }
        let lines = self.queue.len() + usize::from(self.cut.is_some());
        let why = self.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
        log::warn!("{lines} line(s) of {}.{} could not be written to its log ({why}): lost", sink.entry, sink.pid);
        if self.cut.take().is_some() {
            if let Some(log) = &sink.log {
                log.lock().owed_by = None;
            }
        }
        self.queue.clear();
    }

    /// Hands back what `stream` holds to its splitter (the monitor stops):
    /// unwritten lines go in front of its remainder, a cut line's rest with it.
    pub fn give_back(&mut self, sink: &LineSink, stream: usize, splitter: &mut LineSplitter) {
        // An opening line not yet written goes with the first stream given
        // back, as a whole line owed to the log before anything else.
        if self.cut.is_none() && splitter.unfinished.is_empty() {
            if let Some(opening) = self.opening.take() {
                self.cut = Some((stream, Outbox::opening_line(sink, opening)));
            }
        }
        let mut raw = Vec::new();
        self.queue.retain(|(s, record)| {
            if *s == stream {
                record.raw_into(&mut raw);
            }
            *s != stream
        });
        let unfinished = match self.cut.take() {
            Some((s, rest)) if s == stream => {
                if let Some(log) = &sink.log {
                    log.lock().owed_by = None;
                }
                rest
            }
            other => {
                self.cut = other;
                Vec::new()
            }
        };
        splitter.put_back(raw, unfinished);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LINE_LIMIT;

    fn split_with(limit: usize, chunks: &[&[u8]]) -> (Vec<Record>, Vec<u8>) {
        let mut s = LineSplitter::default();
        let mut records = Vec::new();
        for c in chunks {
            s.push(c, limit, |r| records.push(r));
        }
        (records, s.take_remainder())
    }

    fn split(chunks: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
        let (records, rest) = split_with(LINE_LIMIT, chunks);
        (records.iter().map(|r| String::from_utf8_lossy(&r.text).into_owned()).collect(), rest)
    }

    #[test]
    fn lines_are_split_across_chunks_and_the_rest_is_kept() {
        let (lines, rest) = split(&[b"a\nb", b"c\n\nd", b"e"]);
        assert_eq!(lines, ["a", "bc", ""]);
        assert_eq!(rest, b"de");
    }

    #[test]
    fn a_remainder_is_prepended() {
        let mut s = LineSplitter::resume(b"\xe2\x82".to_vec(), Vec::new());
        let mut lines = Vec::new();
        s.push(b"\xac!\n", LINE_LIMIT, |r| lines.push(r.text));
        assert_eq!(lines, [b"\xe2\x82\xac!".to_vec()]);
    }

    #[test]
    fn finish_emits_a_partial_last_line() {
        let mut s = LineSplitter::default();
        let mut records = Vec::new();
        s.push(b"x\ny", LINE_LIMIT, |r| records.push(r));
        s.finish(LINE_LIMIT, |r| records.push(r));
        assert_eq!(records[0], Record { text: b"x".to_vec(), end: End::Newline });
        assert_eq!(records[1], Record { text: b"y".to_vec(), end: End::Eof });
        assert!(s.take_remainder().is_empty());
    }

    #[test]
    fn closing_a_console_whose_stdout_is_full_gives_up_in_time() {
        // A console writing to a pipe nobody reads, filled up.
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let console = Console::writing_to(fds[1]);
        let line = "x".repeat(1000);
        for _ in 0..200 {
            console.handle().say(&line);
        }
        let started = Instant::now();
        let dropped = console.close_within(Duration::from_millis(300));
        let took = started.elapsed();
        // The write end stays open: the abandoned thread may still be in a write.
        // SAFETY: closing the read end this test owns; the stuck write then fails.
        unsafe { libc::close(fds[0]) };
        assert!(took < Duration::from_secs(2), "close blocked for {took:?}");
        assert!((100..=200).contains(&dropped), "{dropped} of 200 lines of 1000 bytes dropped (a pipe holds 64 KiB)");
    }

    /// What arrives on the pipe `fd` until it holds `want`, or 10 s have passed.
    fn read_until(fd: std::os::fd::RawFd, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(want) && Instant::now() < deadline {
            let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            let mut buf = [0u8; 4096];
            // SAFETY: poll and read on the pipe's read end this test owns.
            let n = unsafe {
                libc::poll(&mut poll, 1, 100);
                if poll.revents & libc::POLLIN == 0 {
                    continue;
                }
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
            };
            got.extend_from_slice(&buf[..n.max(0) as usize]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn before_an_exec_every_line_said_is_written_whether_the_writer_is_idle_or_not() {
        for round in 0..20 {
            let mut fds = [0; 2];
            // SAFETY: pipe2 fills the array.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            let console = Console::writing_to(fds[1]);
            for i in 0..50 {
                console.handle().say(&format!("line {i}"));
            }
            let mut out = String::new();
            if round % 2 == 1 {
                // Idle: every line is out, nothing is left for the thread.
                out = read_until(fds[0], "line 49\n");
                // The writer counts a line once its flush has returned.
                let counts = &console.counts;
                let deadline = Instant::now() + Duration::from_secs(10);
                while counts.written.load(Ordering::SeqCst) != counts.sent.load(Ordering::SeqCst) {
                    assert!(Instant::now() < deadline, "the writer never counted its lines written");
                    std::thread::yield_now();
                }
            }
            // Otherwise at once, lines still in flight: they are waited for.
            assert_eq!(console.close_before_exec(), 0);
            if out.is_empty() {
                out = read_until(fds[0], "line 49\n");
            }
            let want: String = (0..50).map(|i| format!("line {i}\n")).collect();
            assert_eq!(out, want, "round {round}");
            // SAFETY: the pipe's ends are this test's; the thread writes nothing more.
            unsafe { (libc::close(fds[0]), libc::close(fds[1])) };
        }
    }

    #[test]
    fn without_a_log_nothing_is_owed_not_even_the_opening_line() {
        // An embedded supervisor without a log directory: a process's end
        // must not leave its monitor waiting to write its Started line.
        let sink = LineSink::new("e", 7, None, ConsoleHandle::default(), 1024);
        let mut out = Outbox::default();
        out.set_opening(1);
        out.add(&sink, 0, Record { text: b"a line".to_vec(), end: End::Newline });
        out.opening_due();
        assert!(out.is_holding());
        assert!(out.flush(&sink));
        assert!(!out.is_holding());
    }

    #[test]
    fn a_holding_handle_keeps_its_lines_until_released_or_dropped_and_its_clones_do_not() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let console = Console::writing_to(fds[1]);
        let held = console.handle().holding();
        held.say("first said, held");
        held.event("web", 42, "Exited at 0 with 1.");
        held.entry_event("web", "web.?", "Cannot start \"x\".");
        held.clone().say("said by a clone, at once");
        held.release();
        held.say("held until the drop");
        drop(held);
        assert_eq!(console.close(), 0);
        // SAFETY: the write end's thread has ended (`close` returned 0).
        unsafe { libc::close(fds[1]) };
        let mut out = String::new();
        // SAFETY: the read end is this test's, handed to the File.
        std::io::Read::read_to_string(&mut unsafe { File::from_raw_fd(fds[0]) }, &mut out).unwrap();
        // An event line is `HH:MM:SS tag text`, the tag padded to 15; the
        // time is the call's (here shown as `T`).
        let out: String = out
            .lines()
            .map(|l| match l.as_bytes().get(..9) {
                Some([h, h2, b':', m, m2, b':', s, s2, b' '])
                    if [h, h2, m, m2, s, s2].iter().all(|c| c.is_ascii_digit()) =>
                {
                    format!("T {}\n", &l[9..])
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let event = |tag: &str, text: &str| format!("T {tag:<15} {text}\n");
        let want = [
            "said by a clone, at once\n".to_string(),
            "first said, held\n".to_string(),
            event("web.42", "Exited at 0 with 1."),
            event("web.?", "Cannot start \"x\"."),
            "held until the drop\n".to_string(),
        ]
        .concat();
        assert_eq!(out, want);
    }

    #[test]
    fn a_long_line_is_held_whole_up_to_the_hold() {
        let limit = 1024;
        let hold = hold_for(limit);
        assert_eq!(hold, HOLD);
        // Below the hold: nothing is emitted until the newline, then one record.
        let mut long = vec![b'z'; hold - 1];
        let (records, rest) = split_with(limit, &[&long]);
        assert!(records.is_empty());
        assert_eq!(rest.len(), hold - 1);
        long.push(b'\n');
        let (records, _) = split_with(limit, &[&long[..10], &long[10..]]);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].text.len(), hold - 1);
        // Past the hold: held parts of `hold` bytes go out as open records.
        let (records, rest) = split_with(limit, &[&vec![b'y'; 2 * hold + 5]]);
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.end == End::Open && r.text.len() == hold));
        assert_eq!(rest.len(), 5);
    }

    #[test]
    fn pieces_are_marked_but_the_last() {
        let r = Record { text: b"abcdefg".to_vec(), end: End::Newline };
        let pieces: Vec<(&[u8], bool)> = r.pieces(3).collect();
        assert_eq!(pieces, [(&b"abc"[..], true), (&b"def"[..], true), (&b"g"[..], false)]);
        let r = Record { text: b"abcdef".to_vec(), end: End::Open };
        assert!(r.pieces(3).all(|(_, more)| more));
        let r = Record { text: Vec::new(), end: End::Newline };
        assert_eq!(r.pieces(3).collect::<Vec<_>>(), [(&b""[..], false)]);
    }

    /// Joins a log's lines back into the child's lines.
    fn reassemble(log: &str, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut current = String::new();
        for line in log.lines() {
            let (_, rest) = line.split_once(&format!(" {tag}")).unwrap_or_else(|| panic!("prefixed: {line:?}"));
            if let Some(piece) = rest.strip_prefix("+ ") {
                current.push_str(piece);
            } else {
                current.push_str(rest.strip_prefix(' ').expect("a space after the tag"));
                lines.push(std::mem::take(&mut current));
            }
        }
        assert!(current.is_empty(), "a piece marked + ends the log");
        lines
    }

    #[test]
    fn a_short_write_is_finished_before_anything_else_and_nothing_is_doubled() {
        // A pipe takes what fits (64 KiB) and then refuses: a short write.
        let (reader, writer) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        let mut reader = File::from(reader);
        let sink = LineSink::new("e", 7, Some(LogFile::of_file(File::from(writer))), ConsoleHandle::default(), 1024);
        let sent: Vec<String> = (0..3000).map(|i| format!("line {i} {}", "x".repeat(i % 50))).collect();
        let mut out = Outbox::default();
        let mut splitter = LineSplitter::default();
        let mut got = Vec::new();
        let mut held_back = 0;
        let mut cuts = 0;
        let mut buf = vec![0u8; 7000];
        for (k, chunk) in sent.chunks(700).enumerate() {
            let bytes: Vec<u8> = chunk.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            splitter.push(&bytes, sink.line_limit, |r| out.add(&sink, 0, r));
            while !out.flush(&sink) {
                held_back += 1;
                cuts += usize::from(out.cut.is_some());
                assert!(out.is_holding());
                // A stop of the monitor here: all goes back into the splitter and comes out again.
                if (k + held_back) % 2 == 0 {
                    out.give_back(&sink, 0, &mut splitter);
                    assert!(!out.is_holding());
                    let mut resumed = LineSplitter::resume(splitter.take_remainder(), splitter.take_unfinished());
                    out = Outbox::default();
                    out.resume(&sink, 0, &mut resumed);
                    splitter = resumed;
                }
                // Some space frees up: the reader takes a little.
                let n = std::io::Read::read(&mut reader, &mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                out.retry = None;
            }
        }
        nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        while let Ok(n @ 1..) = nix::unistd::read(&reader, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        assert!(cuts > 0, "no write was short");
        assert!(held_back > 0, "the pipe never filled");
        assert_eq!(reassemble(&String::from_utf8(got).unwrap(), "e.7"), sent);
    }

    #[test]
    fn a_long_line_is_written_in_marked_pieces_in_one_go() {
        let dir = std::env::temp_dir().join(format!("sentry-output-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("e.log");
        let _ = std::fs::remove_file(&path);
        let sink = LineSink::new("e", 3, Some(LogFile::open(&path, 0, 0).unwrap()), ConsoleHandle::default(), 1024);
        let long: String = (0..5000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let mut out = Outbox::default();
        out.add(&sink, 0, Record { text: long.clone().into_bytes(), end: End::Newline });
        out.add(&sink, 1, Record { text: b"short".to_vec(), end: End::Newline });
        assert!(out.flush(&sink));
        let log = std::fs::read_to_string(&path).unwrap();
        assert_eq!(log.lines().count(), 6, "{log}");
        assert_eq!(log.lines().filter(|l| l.contains(" e.3+ ")).count(), 4);
        assert_eq!(reassemble(&log, "e.3"), [long, "short".to_string()]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640 & !umask());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn umask() -> u32 {
        // SAFETY: umask is always safe; set back at once.
        unsafe {
            let old = libc::umask(0o022);
            libc::umask(old);
            old
        }
    }

    #[test]
    fn a_log_path_that_is_a_symlink_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("sentry-output-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("target"), "precious\n").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("e.log")).unwrap();
        let e = crate::logfile::open_log(&dir.join("e.log")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.join("target")).unwrap(), "precious\n");
        nix::unistd::mkfifo(&dir.join("f.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(crate::logfile::open_log(&dir.join("f.log")).unwrap_err().to_string().contains("not a regular file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
