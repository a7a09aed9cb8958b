//! One entry's log file on disk, `DIR/log/ENTRY.log`: appends whole buffers
//! after reserving their space, rotates by size into `ENTRY.log.1` …
//! `ENTRY.log.K` (`.1` the newest, plain text) between two appends, and
//! reopens its path when asked (SIGUSR1 or `logs --reopen`, after logrotate
//! moved the file away). Every writer of one path in this process shares one
//! [`LogFile`], and what a writer owes the file (the rest of a line a short
//! write cut) lives in its [`LogState`], so a rotation or a reopen never
//! falls inside a line. This module knows nothing of lines' contents,
//! processes or the core; `output` decides what is whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

/// The default size at which a log is rotated: 10 MiB.
pub const LOG_SIZE: u64 = 10 << 20;
/// The default number of rotated files kept.
pub const LOG_KEEP: usize = 5;
/// Space reserved past the end of a log at once (bytes), so that most
/// appends find theirs reserved already and cost no `fallocate`.
const RESERVE_AHEAD: u64 = 64 * 1024;

/// Bumped by [`reopen_all`]; each file compares it with what it last saw.
static REOPENS: AtomicU64 = AtomicU64::new(0);

/// Asks every log file of this process to reopen its path before its next
/// write (what logrotate's `postrotate` asks with SIGUSR1).
pub(crate) fn reopen_all() {
    REOPENS.fetch_add(1, Ordering::SeqCst);
}

/// A log file shared by every writer of its path.
pub(crate) struct LogFile {
    path: PathBuf,
    /// Bytes at which the file is rotated; 0: never.
    size: AtomicU64,
    /// Rotated files kept; 0: the file is started afresh, nothing kept.
    keep: AtomicUsize,
    state: Mutex<LogState>,
}

/// What writers share about the file; held while writing.
pub(crate) struct LogState {
    file: File,
    /// The [`REOPENS`] count this file was last opened for.
    reopened: u64,
    /// The path could not be opened again after a rotation moved it: the
    /// old file (now `.1`) is written until it can.
    detached: bool,
    /// Whether a failed rotation was reported (once until one succeeds).
    rotation_failing: bool,
    /// The writer that owes the file the rest of a cut line: nobody else
    /// writes until it has.
    pub owed_by: Option<u64>,
    /// The rest of a line a short write cut that no writer owns: whoever
    /// writes next writes it first.
    pub orphan: Vec<u8>,
    /// Since when writing fails (one warning when it starts, one when it ends).
    pub failing_since: Option<Instant>,
    /// The space reserved in `file`: (the file's size after the last
    /// append, the end of the last reservation), in bytes. A file found
    /// smaller than that size was truncated: its reservation is gone.
    reserved: Option<(u64, u64)>,
}

impl LogFile {
    /// The shared log file at `path`, opened (created mode 0640) if no
    /// writer of this process has it open; `size` and `keep` are its
    /// rotation (they replace those of an earlier opening).
    pub fn open(path: &Path, size: u64, keep: usize) -> io::Result<Arc<LogFile>> {
        type Files = Vec<(PathBuf, Weak<LogFile>)>;
        static FILES: Mutex<Files> = Mutex::new(Vec::new());
        let mut files = FILES.lock().unwrap_or_else(|e| e.into_inner());
        files.retain(|(_, w)| w.strong_count() > 0);
        if let Some(log) = files.iter().find(|(p, _)| p == path).and_then(|(_, w)| w.upgrade()) {
            log.set_rotation(size, keep);
            return Ok(log);
        }
        let log = LogFile::on(path.to_path_buf(), open_log(path)?, size, keep);
        files.push((path.to_path_buf(), Arc::downgrade(&log)));
        Ok(log)
    }

    fn on(path: PathBuf, file: File, size: u64, keep: usize) -> Arc<LogFile> {
        let state = LogState {
            file,
            reopened: REOPENS.load(Ordering::SeqCst),
            detached: false,
            rotation_failing: false,
            owed_by: None,
            orphan: Vec::new(),
            failing_since: None,
            reserved: None,
        };
        Arc::new(LogFile { path, size: AtomicU64::new(size), keep: AtomicUsize::new(keep), state: Mutex::new(state) })
    }

    /// A log on an already open file (a pipe, in tests), never rotated.
    #[cfg(test)]
    pub fn of_file(file: File) -> Arc<LogFile> {
        LogFile::on(PathBuf::from("/nonexistent/sentry-test-log"), file, 0, 0)
    }

    /// Changes the rotation (a reload's new configuration); never waits.
    pub fn set_rotation(&self, size: u64, keep: usize) {
        self.size.store(size, Ordering::Relaxed);
        self.keep.store(keep, Ordering::Relaxed);
    }

    /// Takes the file for writing (waits for the writer that has it).
    pub fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the file if nobody writes it now.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, LogState>> {
        match self.state.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Appends `buf` with as few writes as the file allows, after reserving
    /// the space (so that a full disk fails the reservation, not half a
    /// write). `whole`: `buf` starts a line and nothing is owed to the
    /// current file, so a rotation or a reopen may come first. Under a
    /// file-size limit (`RLIMIT_FSIZE`, setrlimit(2)) no write passes it:
    /// what does not fit goes to a fresh file after a rotation — cut after
    /// the last whole line that fits, or, for a line longer than a whole
    /// file may be, where the limit falls (the one case where a rotation
    /// comes inside a line). Returns how much was written and the error
    /// that stopped it.
    pub fn append(&self, state: &mut LogState, buf: &[u8], whole: bool) -> (usize, Option<io::Error>) {
        let whole = whole && state.orphan.is_empty() && state.owed_by.is_none();
        if whole {
            self.reopen_if_asked(state);
        }
        let mut size = match state.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return (0, Some(e)),
        };
        let limit = self.size.load(Ordering::Relaxed);
        let fsize = file_size_limit();
        // Reserved ahead no further than either limit.
        let cap = if limit > 0 {
            limit.min(fsize)
        } else if fsize < u64::MAX {
            fsize
        } else {
            0
        };
        let mut n = 0;
        while n < buf.len() {
            let rest = &buf[n..];
            let end = size + rest.len() as u64;
            // Past the file-size limit a write would stop short (with
            // SIGXFSZ, which an instance catches): rotated first, as at `limit`.
            let over_limit = whole && n == 0 && limit > 0 && end > limit;
            if size > 0 && (over_limit || end > fsize) && (whole || n > 0 || size >= fsize) {
                match self.rotate(state) {
                    Ok(()) => size = 0,
                    Err(e) => {
                        if !state.rotation_failing {
                            state.rotation_failing = true;
                            log::warn!("cannot rotate {}: {e}; it grows until it can", self.path.display());
                        }
                        if end > fsize {
                            return (n, Some(e));
                        }
                    }
                }
            }
            let room = fsize.saturating_sub(size);
            let take = if rest.len() as u64 <= room {
                rest.len()
            } else {
                let room = room as usize;
                rest[..room].iter().rposition(|&b| b == b'\n').map_or(room, |i| i + 1)
            };
            if take == 0 {
                return (n, Some(io::Error::from_raw_os_error(libc::EFBIG)));
            }
            if let Err(e) = state.reserve(size, take as u64, cap) {
                return (n, Some(e));
            }
            let mut k = 0;
            while k < take {
                match (&state.file).write(&rest[k..take]) {
                    Ok(0) => return (n + k, Some(io::ErrorKind::WriteZero.into())),
                    Ok(w) => k += w,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return (n + k, Some(e)),
                }
            }
            n += take;
            size += take as u64;
        }
        (n, None)
    }

    /// Opens the path again if [`reopen_all`] asked since the last opening
    /// or an earlier rotation could not.
    fn reopen_if_asked(&self, state: &mut LogState) {
        let asked = REOPENS.load(Ordering::SeqCst);
        if asked == state.reopened && !state.detached {
            return;
        }
        match open_log(&self.path) {
            Ok(file) => {
                state.file = file;
                state.reserved = None;
                state.reopened = asked;
                state.detached = false;
            }
            Err(e) => {
                if asked != state.reopened {
                    log::warn!("cannot reopen {}: {e}; the open file is written on", self.path.display());
                }
                state.reopened = asked;
            }
        }
    }

    /// `.K-1` → `.K`, …, `.1` → `.2`, the file → `.1`, and a new file;
    /// with `keep` 0 the file is removed and started afresh.
    fn rotate(&self, state: &mut LogState) -> io::Result<()> {
        shift(&self.path, self.keep.load(Ordering::Relaxed))?;
        state.rotation_failing = false;
        match open_log(&self.path) {
            Ok(file) => {
                state.file = file;
                state.reserved = None;
                Ok(())
            }
            Err(e) => {
                // The old file, moved, is written on until the path opens.
                state.detached = true;
                Err(e)
            }
        }
    }
}

/// Moves `path` aside as `path.1` (the newest), `.1` to `.2`, … keeping
/// `keep` rotated files; with `keep` 0, `path` is removed. Only the files
/// there are moved (`.1` up to the first gap), so the renames, and the
/// moment names shift, stay short.
pub(crate) fn shift(path: &Path, keep: usize) -> io::Result<()> {
    let numbered = |k: usize| {
        let mut p = path.as_os_str().to_os_string();
        p.push(format!(".{k}"));
        PathBuf::from(p)
    };
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    if keep == 0 {
        return ignore_missing(fs::remove_file(path));
    }
    let top = (1..keep).take_while(|&k| fs::symlink_metadata(numbered(k)).is_ok()).last().unwrap_or(0);
    for k in (1..=top).rev() {
        ignore_missing(fs::rename(numbered(k), numbered(k + 1)))?;
    }
    // Moved away already (logrotate's `create` without our reopen): nothing to move.
    ignore_missing(fs::rename(path, numbered(1)))
}

/// Opens a log file for appending, creating it with mode 0640 (children's
/// output often holds secrets). A symbolic link there is not followed and
/// anything but a regular file is refused. An existing file keeps its mode.
pub(crate) fn open_log(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        // O_NONBLOCK: a FIFO planted there must not block the opening.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other("it is a symbolic link, which is not followed"),
            // A FIFO without a reader.
            Some(libc::ENXIO) => io::Error::other("it is not a regular file"),
            _ => e,
        })?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(file)
}

impl LogState {
    /// Makes sure the `len` bytes after the end (`size`) of the file are
    /// allocated, reserving [`RESERVE_AHEAD`] at once (not past the
    /// rotation size `limit`, when there is one) — or, when the disk or
    /// the file-size limit has not that much room, just `len`. A file that
    /// shrank since (truncated by someone else, its blocks freed) is
    /// reserved again.
    fn reserve(&mut self, size: u64, len: u64, limit: u64) -> io::Result<()> {
        let end = size.saturating_add(len);
        if let Some((seen, to)) = &mut self.reserved {
            if *seen <= size && end <= *to {
                *seen = end;
                return Ok(());
            }
        }
        let mut ahead = len.max(RESERVE_AHEAD);
        if limit > 0 {
            ahead = ahead.min(limit.saturating_sub(size)).max(len);
        }
        let reserved = match reserve(&self.file, size, ahead) {
            // Not that much room, on the disk or under the file-size limit.
            Err(e) if ahead > len && matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EFBIG)) => {
                reserve(&self.file, size, len).map(|()| len)
            }
            other => other.map(|()| ahead),
        };
        self.reserved = match reserved {
            Ok(n) => Some((end, size.saturating_add(n))),
            Err(_) => None,
        };
        reserved.map(|_| ())
    }
}

/// The file-size limit in bytes (`RLIMIT_FSIZE`, setrlimit(2); a unit's
/// `LimitFSIZE=`), read at every append: `prlimit` can change it.
fn file_size_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    limit.rlim_cur
}

/// Allocates `len` bytes after the end (`size`) of `file` without changing
/// its size; file systems that cannot are written to without.
fn reserve(file: &File, size: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on an fd we own, with plain integer arguments.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, size as i64, len as i64) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV | libc::EPERM | libc::ESPIPE) => Ok(()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sentry-logfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_lines(log: &LogFile, from: usize, to: usize) {
        for i in from..to {
            let mut st = log.lock();
            let line = format!("line {i:06}\n");
            let (n, e) = log.append(&mut st, line.as_bytes(), true);
            assert_eq!((n, e.map(|e| e.to_string())), (line.len(), None));
        }
    }

    /// Bytes the file has allocated (`st_blocks` are 512 bytes, stat(2)).
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn space_is_reserved_ahead_again_after_a_truncation_and_not_past_the_rotation_size() {
        let d = dir("reserve");
        let path = d.join("r.log");
        let probe = d.join("probe");
        let file = File::create(&probe).unwrap();
        if reserve(&file, 0, RESERVE_AHEAD).is_err() || allocated(&probe) < RESERVE_AHEAD {
            eprintln!("skipped: {} reserves no space (fallocate)", d.display());
            return;
        }
        let log = LogFile::open(&path, 0, 0).unwrap();
        write_lines(&log, 0, 1);
        assert!(allocated(&path) >= RESERVE_AHEAD, "the first append reserves ahead");
        // Later appends find their space reserved: no new reservation.
        let before = log.lock().reserved.map(|(_, to)| to);
        write_lines(&log, 1, 100);
        assert_eq!(
            log.lock().reserved,
            Some((1200, before.unwrap())),
            "what the first append reserved holds 1 200 bytes"
        );
        // Truncated by someone else (copytruncate): its blocks are freed, and reserved again.
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        assert!(allocated(&path) < RESERVE_AHEAD);
        write_lines(&log, 100, 101);
        assert!(allocated(&path) >= RESERVE_AHEAD, "reserved again after the truncation");
        assert_eq!(fs::read_to_string(&path).unwrap(), "line 000100\n");
        // Never past the rotation size: 2 000 bytes, not 64 KiB.
        let small = d.join("s.log");
        let log = LogFile::open(&small, 2000, 1).unwrap();
        write_lines(&log, 0, 1);
        assert!(allocated(&small) < RESERVE_AHEAD, "{} bytes allocated", allocated(&small));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn rotation_keeps_k_files_newest_first_and_every_line_once() {
        let d = dir("rotate");
        let path = d.join("w.log");
        let log = LogFile::open(&path, 1000, 3).unwrap();
        write_lines(&log, 0, 400);
        let text = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        let current = text(&path);
        let first = text(&d.join("w.log.1"));
        assert!(current.len() <= 1000 && first.len() <= 1000 && !first.is_empty());
        assert!(!d.join("w.log.4").exists(), "only 3 rotated files are kept");
        // Newest first: .3 < .2 < .1 < the file, each line whole.
        let all: String = ["w.log.3", "w.log.2", "w.log.1", "w.log"].iter().map(|f| text(&d.join(f))).collect();
        let numbers: Vec<usize> = all.lines().map(|l| l.strip_prefix("line ").unwrap().parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order, none doubled or lost");
        assert_eq!(*numbers.last().unwrap(), 399);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn nothing_rotates_inside_an_owed_line_or_with_size_zero() {
        let d = dir("owed");
        let path = d.join("w.log");
        let log = LogFile::open(&path, 10, 2).unwrap();
        let mut st = log.lock();
        st.owed_by = Some(7);
        log.append(&mut st, b"0123456789abcdef", true);
        log.append(&mut st, b"rest\n", true);
        assert!(!d.join("w.log.1").exists(), "the owed rest went to the same file");
        st.owed_by = None;
        log.append(&mut st, b"next\n", true);
        assert_eq!(fs::read_to_string(d.join("w.log.1")).unwrap(), "0123456789abcdefrest\n");
        drop(st);
        log.set_rotation(0, 2);
        write_lines(&log, 0, 50);
        assert!(!d.join("w.log.2").exists(), "size 0: never rotated");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_reopen_follows_a_moved_file() {
        let d = dir("reopen");
        let path = d.join("w.log");
        let log = LogFile::open(&path, 0, 0).unwrap();
        write_lines(&log, 0, 2);
        fs::rename(&path, d.join("moved")).unwrap();
        write_lines(&log, 2, 3);
        reopen_all();
        write_lines(&log, 3, 4);
        assert_eq!(fs::read_to_string(d.join("moved")).unwrap(), "line 000000\nline 000001\nline 000002\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "line 000003\n");
        fs::remove_dir_all(&d).unwrap();
    }
}
