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
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

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
    let head = String::from_utf8_lossy(&line[..line.len().min(40)]);
    let mut words = head.splitn(3, ' ');
    let (date, time) = (words.next()?, words.next()?);
    parse_time(&format!("{date} {time}"), false)
}

/// An entry's log files, oldest first: `ENTRY.log.K` … `ENTRY.log.1`, `ENTRY.log`.
fn files_of(dir: &Path, entry: &str) -> Vec<PathBuf> {
    let current = dir.join(format!("{entry}.log"));
    let mut rotated: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| {
            let name = d.file_name().into_string().ok()?;
            let k = name.strip_prefix(&format!("{entry}.log."))?.parse::<usize>().ok()?;
            Some((k, d.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    rotated.into_iter().map(|(_, p)| p).chain(current.exists().then_some(current)).collect()
}

/// One line, with the time it is sorted by (that of the last line that had one).
struct Line {
    at: i64,
    text: Vec<u8>,
}

/// The lines of one entry that `query` asks for, oldest first, reading
/// from the newest file back only as far as needed.
fn lines_of(dir: &Path, entry: &str, query: &Query) -> io::Result<Vec<Line>> {
    let mut files = files_of(dir, entry);
    let mut chunks: Vec<Vec<Line>> = Vec::new();
    let mut have = 0;
    while let Some(path) = files.pop() {
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))),
        }
        let mut at = i64::MIN;
        let lines: Vec<Line> = bytes
            .split_inclusive(|&b| b == b'\n')
            .map(|l| {
                if let Some(t) = line_time(l) {
                    at = t;
                }
                let mut text = l.to_vec();
                if text.last() != Some(&b'\n') {
                    text.push(b'\n');
                }
                Line { at, text }
            })
            .collect();
        let older_than_since = query.since_ms.is_some_and(|s| lines.first().is_some_and(|l| l.at < s));
        have += lines.len();
        chunks.push(lines);
        if older_than_since || query.lines.is_some_and(|n| have >= n) && query.since_ms.is_none() {
            break;
        }
    }
    let mut all: Vec<Line> = chunks.into_iter().rev().flatten().collect();
    if let Some(since) = query.since_ms {
        all.retain(|l| l.at >= since);
    }
    Ok(all)
}

/// Prints what `query` asks of `entries`' logs in `dir` to `out`; with
/// `follow`, goes on until the output is closed.
pub(crate) fn show(dir: &Path, entries: &[String], query: &Query, out: &mut impl Write) -> io::Result<()> {
    let mut all = Vec::new();
    for entry in entries {
        all.extend(lines_of(dir, entry, query)?);
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
    let mut tails: Vec<Tail> = entries.iter().map(|e| Tail::at_end(dir.join(format!("{e}.log")))).collect();
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let mut new = Vec::new();
        for t in &mut tails {
            t.read_new(&mut new);
        }
        new.sort_by_key(|l| l.at);
        for l in &new {
            out.write_all(&l.text)?;
        }
        out.flush()?;
    }
}

/// `tail -F` of one path: the file it has open, read to its end; a new
/// file at the path (a rotation, a logrotate) is read from its start once
/// the old one's rest has been read.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    /// An unfinished last line, kept until its newline comes.
    partial: Vec<u8>,
    at: i64,
}

impl Tail {
    fn at_end(path: PathBuf) -> Tail {
        let file = File::open(&path).ok().and_then(|mut f| f.seek(SeekFrom::End(0)).ok().map(|_| f));
        Tail { path, file, partial: Vec::new(), at: i64::MIN }
    }

    fn read_new(&mut self, out: &mut Vec<Line>) {
        self.drain(out);
        let moved = match (&self.file, std::fs::metadata(&self.path)) {
            (Some(f), Ok(now)) => f.metadata().is_ok_and(|m| (m.dev(), m.ino()) != (now.dev(), now.ino())),
            (None, Ok(_)) => true,
            _ => false,
        };
        if moved {
            self.file = File::open(&self.path).ok();
            self.drain(out);
        } else if let Some(f) = &mut self.file {
            // Truncated in place (logrotate's copytruncate): from the start.
            let (pos, len) = (f.stream_position().unwrap_or(0), f.metadata().map_or(0, |m| m.len()));
            if len < pos {
                let _ = f.seek(SeekFrom::Start(0));
                self.drain(out);
            }
        }
    }

    fn drain(&mut self, out: &mut Vec<Line>) {
        let Some(f) = &mut self.file else { return };
        let mut bytes = std::mem::take(&mut self.partial);
        let _ = f.read_to_end(&mut bytes);
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.partial = bytes.split_off(complete);
        for l in bytes.split_inclusive(|&b| b == b'\n') {
            if let Some(t) = line_time(l) {
                self.at = t;
            }
            out.push(Line { at: self.at, text: l.to_vec() });
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
}
