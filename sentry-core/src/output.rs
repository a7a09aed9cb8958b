//! Where text goes: the console (events and children's lines, best effort,
//! never blocking the caller) and the per-entry log files (every line, whole,
//! written by the thread that read it so back-pressure lands on the child's
//! pipe). [`LineSplitter`] turns a byte stream into lines and keeps the
//! unfinished rest. This module knows nothing of the core or of processes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::sys;

/// Lines waiting for the console writer; beyond this, console lines are dropped.
const CONSOLE_BACKLOG: usize = 4096;
/// A line longer than this is cut into pieces of this size.
pub(crate) const MAX_LINE: usize = 64 * 1024;

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
}

/// A cheap handle to queue console lines.
#[derive(Clone, Default)]
pub(crate) struct ConsoleHandle {
    tx: Option<Sender<Option<String>>>,
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
                while let Ok(Some(line)) = rx.recv() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Best effort: a closed or broken stdout must not stop anything.
                    let _ = out.write_all(line.as_bytes());
                    if rx.is_empty() {
                        let _ = out.flush();
                    }
                }
                let _ = out.flush();
            })
            .ok();
        Console { tx: thread.as_ref().map(|_| tx), thread, done, abandoned }
    }

    pub fn handle(&self) -> ConsoleHandle {
        ConsoleHandle { tx: self.tx.clone() }
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
        self.push(format!("{text}\n"));
    }

    /// Queues an event line in the seed's style: `HH:MM:SS name.PID      text`.
    pub fn event(&self, name: &str, pid: i32, text: &str) {
        if self.tx.is_some() {
            self.tagged(&format!("{name}.{pid}"), text);
        }
    }

    /// Queues an event line about `tag` (such as `name.PID` or `name.?`).
    pub fn tagged(&self, tag: &str, text: &str) {
        if self.tx.is_some() {
            self.say(&format!("{} {tag:<15} {text}", sys::local_hms(sys::unix_now())));
        }
    }

    fn push(&self, line: String) {
        if let Some(tx) = &self.tx {
            match tx.try_send(Some(line)) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    pub fn is_silent(&self) -> bool {
        self.tx.is_none()
    }
}

/// Splits a byte stream into lines; keeps an unfinished last line for later.
#[derive(Debug, Default, Clone)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// A splitter that starts with `rest` (bytes read earlier, not yet a line).
    pub fn with_remainder(rest: Vec<u8>) -> LineSplitter {
        LineSplitter { pending: rest }
    }

    /// Adds `chunk`; calls `emit` with each complete line (without `\n`).
    pub fn push(&mut self, chunk: &[u8], mut emit: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(n) = self.pending[start..].iter().position(|&b| b == b'\n') {
            emit(&self.pending[start..start + n]);
            start += n + 1;
        }
        while self.pending.len() - start >= MAX_LINE {
            emit(&self.pending[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        self.pending.drain(..start);
    }

    /// Emits the unfinished last line, if any (the stream has ended).
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
    }

    /// Takes the bytes read but not yet emitted.
    pub fn take_remainder(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Where one child's lines go: its entry's log file and the console.
#[derive(Clone)]
pub(crate) struct LineSink {
    pub entry: String,
    pub pid: i32,
    pub log: Option<Arc<File>>,
    pub console: ConsoleHandle,
}

impl LineSink {
    /// Writes `lines` to the log as one append (so lines of several children
    /// never interleave mid-line) and queues them for the console.
    pub fn write(&self, lines: &[Vec<u8>]) {
        if lines.is_empty() {
            return;
        }
        let now = sys::unix_now();
        if let Some(log) = &self.log {
            let prefix = format!("{} {}.{} ", sys::local_datetime(now), self.entry, self.pid);
            let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + prefix.len() + 1).sum());
            for line in lines {
                buf.extend_from_slice(prefix.as_bytes());
                buf.extend_from_slice(line);
                buf.push(b'\n');
            }
            // A failing disk is reported once per batch; the child keeps running.
            if let Err(e) = (&**log).write_all(&buf) {
                log::warn!("cannot write the log of {}: {e}", self.entry);
            }
        }
        if !self.console.is_silent() {
            for line in lines {
                self.console.event(&self.entry, self.pid, &String::from_utf8_lossy(line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        for c in chunks {
            s.push(c, |l| lines.push(String::from_utf8_lossy(l).into_owned()));
        }
        (lines, s.take_remainder())
    }

    #[test]
    fn lines_are_split_across_chunks_and_the_rest_is_kept() {
        let (lines, rest) = split(&[b"a\nb", b"c\n\nd", b"e"]);
        assert_eq!(lines, ["a", "bc", ""]);
        assert_eq!(rest, b"de");
    }

    #[test]
    fn a_remainder_is_prepended() {
        let mut s = LineSplitter::with_remainder(b"\xe2\x82".to_vec());
        let mut lines = Vec::new();
        s.push(b"\xac!\n", |l| lines.push(l.to_vec()));
        assert_eq!(lines, [b"\xe2\x82\xac!".to_vec()]);
    }

    #[test]
    fn finish_emits_a_partial_last_line() {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        s.push(b"x\ny", |l| lines.push(l.to_vec()));
        s.finish(|l| lines.push(l.to_vec()));
        assert_eq!(lines, [b"x".to_vec(), b"y".to_vec()]);
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

    #[test]
    fn very_long_lines_are_cut() {
        let long = vec![b'z'; MAX_LINE * 2 + 5];
        let (lines, rest) = split(&[&long]);
        assert_eq!(lines.len(), 2);
        assert_eq!(rest.len(), 5);
    }
}
