//! `NAME logs`: shows entries' logs from `DIR/log/` — the rotated files and
//! the current one, merged by the time at the start of each line when there
//! are several entries, the last N lines or those since a time, and with
//! `--follow` what is written next, across rotations (like `tail -F`). It
//! reads files only: it needs no running instance and knows nothing of the
//! core. The line format it reads is `output`'s:
//! `YYYY-MM-DD HH:MM:SS.mmm+HH:MM ENTRY.PID TEXT`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    /// At most this many lines (the last ones); `None`: all that match.
    pub lines: Option<usize>,
    /// Only lines at or after this time, in milliseconds since the epoch.
    pub since_ms: Option<i64>,
    pub follow: bool,
}

/// How long `--follow` waits between two looks at the files.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// `--since T`: a duration back from `now_ms` (`10m`, as the rule language
/// writes them) or an RFC 3339 time (`2026-12-07T10:00:00Z`,
/// `2026-12-07 10:00:00.5+01:00`).
pub(crate) fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(d) = crate::rule::parse_duration(text) {
        return Ok(now_ms - d.as_millis() as i64);
    }
    parse_time(text.trim(), true).ok_or_else(|| {
        format!("--since {text:?}: expected a duration such as 10m or an RFC 3339 time such as 2026-12-07T10:00:00Z")
    })
}

/// Milliseconds since the epoch of `YYYY-MM-DD[T ]HH:MM:SS[.fff][Z|±HH:MM]`.
/// Without a zone (`needs_zone` false: lines of older versions) it is
/// local time.
pub(crate) fn parse_time(text: &str, needs_zone: bool) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok())?
    };
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut ms = 0;
    if b.get(at) == Some(&b'.') {
        let end = at + 1 + b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let frac = &text[at + 1..end];
        if frac.is_empty() {
            return None;
        }
        ms = format!("{:0<3}", &frac[..frac.len().min(3)]).parse::<i64>().ok()?;
        at = end;
    }
    let offset_s = match &b[at..] {
        [] if !needs_zone => None,
        [b'Z' | b'z'] => Some(0),
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(at + 1..at + 3)?, num(at + 4..at + 6)?);
            let s = h * 3600 + m * 60;
            Some(if *sign == b'-' { -s } else { s })
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let local = days * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = match offset_s {
        Some(off) => local - off,
        None => local_to_utc(year, month, day, hour, minute, second)?,
    };
    Some(secs * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, <https://howardhinnant.github.io/date_algorithms.html>).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of a local wall-clock time (`mktime`).
fn local_to_utc(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    // SAFETY: tm is plain data; mktime reads and normalises it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = (y - 1900) as i32;
    tm.tm_mon = (mo - 1) as i32;
    tm.tm_mday = d as i32;
    tm.tm_hour = h as i32;
    tm.tm_min = mi as i32;
    tm.tm_sec = s as i32;
    tm.tm_isdst = -1;
    // SAFETY: a valid pointer to an initialised tm.
    let t = unsafe { libc::mktime(&mut tm) };
    (t != -1).then_some(t)
}

/// The time at the start of a log line (its first two words).
fn line_time(line: &[u8]) -> Option<i64> {
    // The first two words, `DATE TIME`, with the space between them.
    let head = &line[..line.len().min(40)];
    let second = head.iter().position(|&b| b == b' ')? + 1;
    let end = second + head[second..].iter().position(|&b| b == b' ' || b == b'\n').unwrap_or(head.len() - second);
    parse_time(std::str::from_utf8(&head[..end]).ok()?, false)
}

/// The longest line `logs` keeps whole: a longer one is shown in pieces of
/// this size (so that memory stays bounded whatever a file holds).
const MAX_LINE: usize = 1 << 20;

/// A file's identity.
type FileId = (u64, u64);

/// Opens a log file to read: never through a symbolic link, never waiting
/// (a FIFO planted there), regular files only.
fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

fn id_of(file: &File) -> Option<FileId> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// An entry's log files, oldest first — `ENTRY.log.K` … `ENTRY.log.1`,
/// `ENTRY.log` — those that are regular files (not followed through links),
/// with their identities. Names shift while a rotation renames them, so the
/// order is that of the files' last writes (then of their names), and the
/// directory is read until two readings agree (at most a few times).
fn chain(dir: &Path, entry: &str) -> Vec<(PathBuf, FileId)> {
    let mut last = listing(dir, entry);
    for _ in 0..5 {
        let again = listing(dir, entry);
        if again == last {
            break;
        }
        last = again;
    }
    last
}

fn listing(dir: &Path, entry: &str) -> Vec<(PathBuf, FileId)> {
    let prefix = format!("{entry}.log.");
    let mut rotated: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| {
            let name = d.file_name().into_string().ok()?;
            let k = name.strip_prefix(&prefix)?.parse::<usize>().ok()?;
            Some((k, d.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let current = dir.join(format!("{entry}.log"));
    let mut seen = std::collections::HashSet::new();
    let mut files: Vec<(i128, usize, PathBuf, FileId)> = rotated
        .into_iter()
        .map(|(_, p)| p)
        .chain([current])
        .enumerate()
        .filter_map(|(order, p)| {
            let m = std::fs::symlink_metadata(&p).ok()?;
            let id = (m.dev(), m.ino());
            let written = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            (m.is_file() && seen.insert(id)).then_some((written, order, p, id))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, _, p, id)| (p, id)).collect()
}

/// Opens the file `id` of the entry's logs, found at `path` by a listing:
/// a rotation may have renamed it since (to the next number), so the file
/// opened must be that one, else it is looked for again by its identity.
/// `NotFound` when it is gone (past the files kept).
fn open_file(dir: &Path, entry: &str, path: &Path, id: FileId) -> io::Result<File> {
    let mut path = path.to_path_buf();
    for _ in 0..5 {
        match open_regular(&path) {
            Ok(f) if id_of(&f) == Some(id) => return Ok(f),
            Ok(_) => {}
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        match chain(dir, entry).into_iter().find(|(_, i)| *i == id) {
            Some((p, _)) => path = p,
            None => break,
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "rotated away"))
}

/// One line, with the time it is sorted by (that of the last line that had one).
struct Line {
    at: i64,
    text: Vec<u8>,
}

/// Reads `file` from where it is to its end in chunks, calling `each` with
/// every whole line (newline included); `partial` holds an unfinished last
/// line across calls (a line past [`MAX_LINE`] comes out in pieces).
fn read_lines(file: &mut File, partial: &mut Vec<u8>, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = &buf[..n];
        while let Some(i) = memchr_newline(chunk) {
            partial.extend_from_slice(&chunk[..=i]);
            each(partial);
            partial.clear();
            chunk = &chunk[i + 1..];
        }
        partial.extend_from_slice(chunk);
        while partial.len() >= MAX_LINE {
            let mut piece: Vec<u8> = partial.drain(..MAX_LINE).collect();
            piece.push(b'\n');
            each(&piece);
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Lines of one file, with their times; at most `keep` of them (the last).
struct FileLines {
    lines: std::collections::VecDeque<Line>,
    first_at: Option<i64>,
}

fn collect(file: &mut File, partial: &mut Vec<u8>, keep: Option<usize>, since: Option<i64>) -> io::Result<FileLines> {
    let mut at = i64::MIN;
    let mut lines = std::collections::VecDeque::new();
    let mut first_at = None;
    read_lines(file, partial, |l| {
        if let Some(t) = line_time(l) {
            at = t;
            first_at.get_or_insert(t);
        }
        if since.is_some_and(|s| at < s) || keep == Some(0) {
            return;
        }
        if keep.is_some_and(|k| lines.len() == k) {
            lines.pop_front();
        }
        lines.push_back(Line { at, text: l.to_vec() });
    })?;
    Ok(FileLines { lines, first_at })
}

/// The lines of one entry that `query` asks for, oldest first — reading
/// from the newest file back only as far as needed, at most the lines
/// asked for in memory — and, to follow it, the current file, open where
/// the lines stop.
fn lines_of(dir: &Path, entry: &str, query: &Query, warn: &mut dyn FnMut(String)) -> (Vec<Line>, Tail) {
    let path = dir.join(format!("{entry}.log"));
    let mut tail = Tail {
        dir: dir.to_path_buf(),
        entry: entry.to_string(),
        file: None,
        partial: Vec::new(),
        at: i64::MIN,
        read: std::collections::HashSet::new(),
    };
    let mut chunks: Vec<std::collections::VecDeque<Line>> = Vec::new();
    let mut have = 0;
    let need = |have: usize| query.lines.map(|n| n.saturating_sub(have));
    let mut current_id = None;
    match open_regular(&path) {
        Ok(mut f) => {
            current_id = id_of(&f);
            match collect(&mut f, &mut tail.partial, need(0), query.since_ms) {
                Ok(got) => {
                    have += got.lines.len();
                    tail.at = got.lines.back().map_or(i64::MIN, |l| l.at);
                    chunks.push(got.lines);
                }
                Err(e) => warn(format!("cannot read {}: {e}", path.display())),
            }
            tail.file = Some(f);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn(format!("{} is skipped: {e}", path.display())),
    }
    let older: Vec<(PathBuf, FileId)> =
        chain(dir, entry).into_iter().filter(|(p, id)| *p != path && Some(*id) != current_id).collect();
    // Every file there now is read (or left for good) by the listing: the
    // follow never reads one of them again.
    tail.read.extend(older.iter().map(|(_, id)| *id));
    for (p, id) in older.into_iter().rev() {
        if need(have) == Some(0) {
            break;
        }
        let mut f = match open_file(dir, entry, &p, id) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                warn(format!("{} is skipped: {e}", p.display()));
                continue;
            }
        };
        let mut partial = Vec::new();
        let got = match collect(&mut f, &mut partial, need(have), query.since_ms) {
            Ok(got) => got,
            Err(e) => {
                warn(format!("cannot read {}: {e}", p.display()));
                continue;
            }
        };
        let mut lines = got.lines;
        if !partial.is_empty() && need(have + lines.len()) != Some(0) {
            partial.push(b'\n');
            lines.push_back(Line { at: lines.back().map_or(i64::MIN, |l| l.at), text: partial });
        }
        have += lines.len();
        chunks.push(lines);
        if query.since_ms.is_some_and(|s| got.first_at.is_some_and(|t| t < s)) {
            break;
        }
    }
    if !query.follow && !tail.partial.is_empty() {
        // The current file's last line, unfinished: shown as it is.
        let mut text = std::mem::take(&mut tail.partial);
        text.push(b'\n');
        if chunks.is_empty() {
            chunks.push(std::collections::VecDeque::new());
        }
        chunks[0].push_back(Line { at: tail.at, text });
    }
    (chunks.into_iter().rev().flatten().collect(), tail)
}

/// Prints what `query` asks of `entries`' logs in `dir` to `out` (files
/// that cannot be read are said on standard error and skipped); with
/// `follow`, goes on until the output is closed.
pub(crate) fn show(dir: &Path, entries: &[String], query: &Query, out: &mut impl Write) -> io::Result<()> {
    let mut warn = |w: String| eprintln!("logs: {w}");
    let mut all = Vec::new();
    let mut tails = Vec::new();
    for entry in entries {
        let (lines, tail) = lines_of(dir, entry, query, &mut warn);
        all.extend(lines);
        tails.push(tail);
    }
    // Stable: lines of one entry keep their order within a millisecond.
    all.sort_by_key(|l| l.at);
    let skip = query.lines.map_or(0, |n| all.len().saturating_sub(n));
    for l in &all[skip..] {
        out.write_all(&l.text)?;
    }
    out.flush()?;
    if !query.follow {
        return Ok(());
    }
    drop(all);
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let mut new = Vec::new();
        for t in &mut tails {
            t.read_new(&mut new, &mut warn);
        }
        new.sort_by_key(|l| l.at);
        for l in &new {
            out.write_all(&l.text)?;
        }
        out.flush()?;
    }
}

/// `tail -F` of one entry's log: the file it has open, read to its end;
/// when the path holds another file (rotations, a logrotate), the files
/// rotated since — however many — then the new one, each from its start.
struct Tail {
    dir: PathBuf,
    entry: String,
    file: Option<File>,
    /// An unfinished last line, kept until its newline comes.
    partial: Vec<u8>,
    at: i64,
    /// The files read to their end (or shown before the follow began):
    /// never read again, whatever a rotation's renames make a listing say.
    read: std::collections::HashSet<FileId>,
}

impl Tail {
    fn read_new(&mut self, out: &mut Vec<Line>, warn: &mut dyn FnMut(String)) {
        let path = self.dir.join(format!("{}.log", self.entry));
        let now = std::fs::symlink_metadata(&path).ok().filter(|m| m.is_file()).map(|m| (m.dev(), m.ino()));
        let ours = self.file.as_ref().and_then(id_of);
        if ours.is_some() && now == ours {
            // Truncated in place (logrotate's copytruncate): from the start.
            if let Some(f) = &mut self.file {
                let (pos, len) = (f.stream_position().unwrap_or(0), f.metadata().map_or(0, |m| m.len()));
                if len < pos {
                    let _ = f.seek(SeekFrom::Start(0));
                }
            }
            self.drain(out);
            return;
        }
        if now.is_none() {
            self.drain(out);
            return;
        }
        // The path holds another file: ours to its end (its last lines came
        // before the rotation), then every file newer than ours, in order.
        self.drain(out);
        self.end_line(out);
        self.read.extend(ours);
        let files = chain(&self.dir, &self.entry);
        let newer: Vec<&(PathBuf, FileId)> = match ours.and_then(|id| files.iter().position(|(_, i)| *i == id)) {
            Some(k) => files[k + 1..].iter().collect(),
            // Ours is gone (past the files kept), or there was none: the
            // files not read yet.
            None => files.iter().collect(),
        };
        let newer: Vec<&(PathBuf, FileId)> = newer.into_iter().filter(|(_, id)| !self.read.contains(id)).collect();
        let last = newer.len().saturating_sub(1);
        for (k, (p, id)) in newer.into_iter().enumerate() {
            match open_file(&self.dir, &self.entry, p, *id) {
                Ok(f) => {
                    self.file = Some(f);
                    self.drain(out);
                    if k < last {
                        self.end_line(out);
                        self.read.insert(*id);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn(format!("{} is skipped: {e}", p.display())),
            }
        }
    }

    fn drain(&mut self, out: &mut Vec<Line>) {
        let Some(f) = &mut self.file else { return };
        let at = &mut self.at;
        let _ = read_lines(f, &mut self.partial, |l| {
            if let Some(t) = line_time(l) {
                *at = t;
            }
            out.push(Line { at: *at, text: l.to_vec() });
        });
    }

    /// A file that will not grow again ended without a newline: its last line as it is.
    fn end_line(&mut self, out: &mut Vec<Line>) {
        if !self.partial.is_empty() {
            let mut text = std::mem::take(&mut self.partial);
            text.push(b'\n');
            out.push(Line { at: self.at, text });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_zones_fractions_and_both_separators() {
        let z = parse_time("2026-12-07T10:00:00Z", true).unwrap();
        assert_eq!(z, 1_796_637_600_000);
        assert_eq!(parse_time("2026-12-07 11:00:00+01:00", true), Some(z));
        assert_eq!(parse_time("2026-12-07 09:30:00.250-00:30", true), Some(z + 250));
        assert_eq!(parse_time("2026-12-07 10:00:00.5Z", true), Some(z + 500));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", true), Some(0));
        assert_eq!(parse_time("2000-02-29T00:00:00Z", true), Some(951_782_400_000));
        for bad in
            ["2026-12-07T10:00:00", "2026-13-07T10:00:00Z", "2026-12-07T10:00Z", "yesterday", "2026-12-07T10:00:00.Z"]
        {
            assert_eq!(parse_time(bad, true), None, "{bad}");
        }
        assert!(parse_time("2026-12-07 10:00:00", false).is_some(), "a line of an older version: local time");
        assert_eq!(parse_since("10m", 1_000_000).unwrap(), 1_000_000 - 600_000);
        assert!(parse_since("10 minutes", 0).unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn several_entries_merge_by_time_and_n_takes_the_last() {
        let dir = std::env::temp_dir().join(format!("sentry-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let line = |s: u32, e: &str, t: &str| format!("2026-12-07 10:00:{s:02}.000+00:00 {e}.1 {t}\n");
        std::fs::write(dir.join("a.log.1"), line(1, "a", "one") + &line(3, "a", "three")).unwrap();
        std::fs::write(dir.join("a.log"), line(5, "a", "five")).unwrap();
        std::fs::write(dir.join("b.log"), line(2, "b", "two") + &line(4, "b", "four") + "no time\n").unwrap();
        let entries = ["a".to_string(), "b".to_string()];
        let run = |q: Query| {
            let mut out = Vec::new();
            show(&dir, &entries, &q, &mut out).unwrap();
            String::from_utf8(out)
                .unwrap()
                .lines()
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let all = Query { lines: None, since_ms: None, follow: false };
        assert_eq!(run(all.clone()), ["one", "two", "three", "four", "time", "five"]);
        assert_eq!(run(Query { lines: Some(2), ..all.clone() }), ["time", "five"]);
        let since = parse_time("2026-12-07T10:00:03Z", true);
        assert_eq!(run(Query { since_ms: since, ..all }), ["three", "four", "time", "five"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn fresh(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sentry-logs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn append(path: &Path, from: u32, to: u32) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        for i in from..to {
            writeln!(f, "2026-12-07 10:00:00.000+00:00 w.1 seq={i}").unwrap();
        }
    }

    fn numbers(lines: &[Line]) -> Vec<u32> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.text).trim_end().rsplit("seq=").next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn following_goes_on_where_the_lines_stopped_and_through_several_rotations_at_once() {
        let dir = fresh("follow");
        let log = dir.join("w.log");
        append(&log, 0, 10);
        let q = Query { lines: Some(3), since_ms: None, follow: true };
        let (shown, mut tail) = lines_of(&dir, "w", &q, &mut |w| panic!("{w}"));
        assert_eq!(numbers(&shown), [7, 8, 9]);
        // Written after the lines were read, then rotated three times before the next look.
        append(&log, 10, 12);
        for k in 0..3u32 {
            for j in (1..=3).rev() {
                let _ = std::fs::rename(dir.join(format!("w.log.{j}")), dir.join(format!("w.log.{}", j + 1)));
            }
            std::fs::rename(&log, dir.join("w.log.1")).unwrap();
            append(&log, 12 + k * 5, 17 + k * 5);
        }
        let mut got = Vec::new();
        tail.read_new(&mut got, &mut |w| panic!("{w}"));
        assert_eq!(numbers(&got), (10..27).collect::<Vec<_>>(), "nothing lost or doubled");
        append(&log, 27, 29);
        let mut more = Vec::new();
        tail.read_new(&mut more, &mut |w| panic!("{w}"));
        assert_eq!(numbers(&more), [27, 28]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_fifos_directories_and_endless_lines_are_skipped_or_bounded() {
        let dir = fresh("hostile");
        append(&dir.join("w.log"), 0, 2);
        std::os::unix::fs::symlink("/etc/passwd", dir.join("w.log.1")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("w.log.2")).unwrap();
        nix::unistd::mkfifo(&dir.join("w.log.3"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(dir.join("w.log.4")).unwrap();
        // 3 MiB without a newline: shown in pieces of at most MAX_LINE.
        std::fs::write(dir.join("w.log.5"), vec![b'x'; (3 << 20) + 100]).unwrap();
        let mut warnings = Vec::new();
        let q = Query { lines: None, since_ms: None, follow: false };
        let (lines, _) = lines_of(&dir, "w", &q, &mut |w| warnings.push(w));
        assert_eq!(lines.len(), 2 + 4, "3 MiB in 1 MiB pieces (the last one short), then the two lines");
        assert!(lines.iter().all(|l| l.text.len() <= MAX_LINE + 1));
        assert!(lines.iter().all(|l| !String::from_utf8_lossy(&l.text).contains("root:")), "a link was followed");
        assert!(warnings.is_empty(), "links, FIFOs and directories are not log files: {warnings:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_renamed_between_the_listing_and_the_opening_is_found_by_its_identity() {
        let dir = fresh("renamed");
        append(&dir.join("w.log.2"), 0, 1);
        append(&dir.join("w.log.1"), 1, 2);
        append(&dir.join("w.log"), 2, 3);
        let listed = chain(&dir, "w");
        assert_eq!(listed.len(), 3);
        // A rotation now: every name moves up by one.
        std::fs::rename(dir.join("w.log.2"), dir.join("w.log.3")).unwrap();
        std::fs::rename(dir.join("w.log.1"), dir.join("w.log.2")).unwrap();
        std::fs::rename(dir.join("w.log"), dir.join("w.log.1")).unwrap();
        append(&dir.join("w.log"), 3, 4);
        let mut seen = Vec::new();
        for (path, id) in &listed {
            let mut f = open_file(&dir, "w", path, *id).unwrap();
            let mut text = String::new();
            f.read_to_string(&mut text).unwrap();
            seen.push(text.trim_end().rsplit("seq=").next().unwrap().to_string());
        }
        assert_eq!(seen, ["0", "1", "2"], "each listed file, not whatever took its name");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
