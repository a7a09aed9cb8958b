//! The one way Sentry reads `/proc`: `/proc/PID/{stat,statm,status,cmdline,
//! environ,fd,fdinfo,cgroup,smaps_rollup}`, `/proc/self/mountinfo` and the list of PIDs, for every user — the watch
//! scanner, handover verification and adoption, status figures and the
//! pidfile lock check. Parsing of `stat` and `statm` is `procfs-core`'s (the
//! parser half of procfs); the bytes are read here, into a reused buffer
//! where the caller scans many processes ([`StatReader`]).
//!
//! Every read is of a process that may vanish at any moment: a failed read
//! is `None` (or empty), never an error to abort on. Nothing here assumes
//! UTF-8: `comm` is whatever bytes `prctl(PR_SET_NAME)` was given, cut by the
//! kernel at 15 bytes (possibly mid-character), and may hold spaces, `(`,
//! `)`, newlines and invalid UTF-8; it is kept as bytes.
//!
//! This module knows nothing of watches, slots, rules or policy: it only
//! says what the kernel shows.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;

use procfs_core::FromRead;

/// A process: a PID alone is never trusted (PIDs are reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ProcessId {
    pub pid: i32,
    /// Clock ticks after boot at which it started (`stat` field 22).
    pub starttime: u64,
}

/// The fields of `/proc/PID/stat` Sentry uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: i32,
    /// The command name, as raw bytes (at most 15).
    pub comm: Vec<u8>,
    /// `R`, `S`, `D`, `Z`, `T`, …
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// CPU time in clock ticks, user and system.
    pub utime: u64,
    pub stime: u64,
    pub starttime: u64,
    /// Virtual memory size in bytes.
    pub vsize: u64,
    /// Resident set size in pages.
    pub rss_pages: u64,
}

impl ProcStat {
    pub fn id(&self) -> ProcessId {
        ProcessId { pid: self.pid, starttime: self.starttime }
    }

    /// Whether it is a zombie (exited, not yet reaped).
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// The fields of `/proc/PID/statm`, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStatm {
    pub size: u64,
    pub resident: u64,
}

/// Parses the bytes of `/proc/PID/stat`. The command name is taken as bytes
/// between the first `(` and the *last* `)`; the fields after it are
/// procfs-core's. `None` for anything that is not a stat line (checked here
/// first: procfs-core slices the line by offsets and would panic on some
/// malformed input, such as a line that ends right after the `)`).
pub(crate) fn parse_stat(bytes: &[u8]) -> Option<ProcStat> {
    let open = bytes.iter().position(|&b| b == b'(')?;
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let head = bytes.get(..open)?;
    // "PID (": digits, then one space.
    if head.len() < 2 || head[head.len() - 1] != b' ' || !head[..head.len() - 1].iter().all(u8::is_ascii_digit) {
        return None;
    }
    // " S …": at least one field after the name.
    let tail = bytes.get(close + 1..)?;
    if tail.first() != Some(&b' ') || tail[1..].iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let s = procfs_core::process::Stat::from_read(bytes).ok()?;
    Some(ProcStat {
        pid: s.pid,
        comm: bytes.get(open + 1..close)?.to_vec(),
        state: s.state,
        ppid: s.ppid,
        pgrp: s.pgrp,
        session: s.session,
        utime: s.utime,
        stime: s.stime,
        starttime: s.starttime,
        vsize: s.vsize,
        rss_pages: s.rss,
    })
}

/// The starttime (field 22 of `/proc/PID/stat`, in clock ticks since
/// boot; proc_pid_stat(5)) of `pid`, read without touching the heap: a
/// monitor thread calls it, and a thread's first `malloc` costs it an
/// arena (with 1 000 monitors, ~5 MiB of PSS).
pub(crate) fn starttime_of(pid: i32) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut path = [0u8; 32];
    let mut at = &mut path[..];
    std::io::Write::write_fmt(&mut at, format_args!("/proc/{pid}/stat")).ok()?;
    let len = 32 - at.len();
    // std turns a short path into a C string on the stack.
    let mut file = File::open(std::ffi::OsStr::from_bytes(&path[..len])).ok()?;
    let mut buf = [0u8; 1024];
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    starttime_in(&buf[..n])
}

/// Field 22 of a `stat` line; the command (field 2) may hold spaces and
/// parentheses, so the fields are counted from its last `)`.
fn starttime_in(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let field = stat[close + 1..].split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(19)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Reads `stat` files with one path string and one buffer, reused: for a
/// scan over many processes.
pub(crate) struct StatReader {
    path: String,
    buf: Vec<u8>,
}

impl Default for StatReader {
    fn default() -> StatReader {
        StatReader { path: String::with_capacity(32), buf: Vec::with_capacity(1024) }
    }
}

impl StatReader {
    /// `/proc/PID/stat`, or `None` if the process is gone.
    pub fn read(&mut self, pid: i32) -> Option<ProcStat> {
        read_into(&mut self.path, &mut self.buf, pid, "stat")?;
        parse_stat(&self.buf)
    }
}

/// Reads `/proc/PID/FILE` whole into `buf` (cleared first).
fn read_into(path: &mut String, buf: &mut Vec<u8>, pid: i32, file: &str) -> Option<()> {
    path.clear();
    let _ = write!(path, "/proc/{pid}/{file}");
    buf.clear();
    File::open(&*path).ok()?.read_to_end(buf).ok()?;
    Some(())
}

fn read(pid: i32, file: &str) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    read_into(&mut String::new(), &mut buf, pid, file)?;
    Some(buf)
}

/// `/proc/PID/stat`, or `None` if the process is gone.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    StatReader::default().read(pid)
}

/// The identity of `pid` now, or `None` if there is no such process.
pub(crate) fn identity(pid: i32) -> Option<ProcessId> {
    stat(pid).map(|s| s.id())
}

/// `/proc/PID/statm`.
pub(crate) fn statm(pid: i32) -> Option<ProcStatm> {
    let s = procfs_core::process::StatM::from_read(&read(pid, "statm")?[..]).ok()?;
    Some(ProcStatm { size: s.size, resident: s.resident })
}

/// Resident set size in bytes, from `statm`.
pub(crate) fn rss_bytes(pid: i32) -> Option<u64> {
    Some(statm(pid)?.resident * page_size())
}

/// The size of a page in bytes.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Clock ticks per second (the unit of `utime`, `stime`, `starttime`).
pub(crate) fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    hz.max(1) as u64
}

/// `CLOCK_BOOTTIME` now, in ns: the clock a new task's start is stamped
/// with (`start_boottime`, set by the kernel during its `clone`).
pub(crate) fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `starttime` `/proc/PID/stat` shows for a process cloned between two
/// reads of [`boottime_ns`] (`before`, `after`), when both fall within one
/// clock tick; `None` when a tick began in between (then it must be read).
/// The kernel shows `start_boottime` in clock ticks, divided down
/// (`nsec_to_clock_t`, fs/proc/array.c; proc_pid_stat(5)), and stamps it
/// during the `clone` — so after `before` and before `after`. Reading the
/// file instead costs ~50 µs (an open of a fresh `/proc/PID` and the
/// formatting of fifty fields) at every start.
pub(crate) fn starttime_between(before: u64, after: u64, ticks_per_second: u64) -> Option<u64> {
    let tick = 1_000_000_000 / ticks_per_second.max(1);
    (before <= after && before / tick == after / tick).then_some(before / tick)
}

/// When the machine booted (`btime` of `/proc/stat`), Unix seconds.
pub(crate) fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The number of threads of this process (`Threads:` of its status).
pub(crate) fn threads_of_self() -> Option<u64> {
    status_value(std::process::id() as i32, "Threads").and_then(|v| v.trim().parse().ok())
}

/// The NUL-separated words of a file, decoded lossily, empty words dropped.
fn words(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect()
}

/// The arguments (lossy UTF-8); empty for kernel threads, zombies and
/// processes that are gone.
pub(crate) fn cmdline(pid: i32) -> Vec<String> {
    read(pid, "cmdline").map(|raw| words(&raw)).unwrap_or_default()
}

/// The environment as `KEY=VALUE` words (lossy UTF-8); empty when unreadable.
pub(crate) fn environ(pid: i32) -> Vec<String> {
    read(pid, "environ").map(|raw| words(&raw)).unwrap_or_default()
}

/// One variable of the environment.
pub(crate) fn environ_var(pid: i32, key: &str) -> Option<String> {
    let raw = read(pid, "environ")?;
    let prefix = [key.as_bytes(), b"="].concat();
    raw.split(|b| *b == 0).find_map(|w| w.strip_prefix(&prefix[..]).map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// The value of one line of `/proc/PID/status` (e.g. `VmRSS`), trimmed and
/// lossy. Read as bytes: its `Name:` line shows the command name with only
/// some bytes escaped, so the file need not be UTF-8 (procfs-core's parser
/// reads it as text and would fail on such a process).
pub(crate) fn status_value(pid: i32, key: &str) -> Option<String> {
    let raw = read(pid, "status")?;
    raw.split(|b| *b == b'\n').find_map(|line| {
        let value = line.strip_prefix(key.as_bytes())?.strip_prefix(b":")?;
        Some(String::from_utf8_lossy(value).trim().to_string())
    })
}

/// The cgroup v2 path of `pid` (the `0::PATH` line of `/proc/PID/cgroup`,
/// relative to the v2 mount's root as the reader's cgroup namespace sees
/// it), parsed by procfs-core. `None` if the process is gone or has no v2
/// line. A cgroup removed since shows with a ` (deleted)` suffix, kept.
pub(crate) fn cgroup_v2(pid: i32) -> Option<String> {
    let raw = read(pid, "cgroup")?;
    parse_cgroup_v2(&raw)
}

/// The v2 line of a `/proc/PID/cgroup` text (see [`cgroup_v2`]).
pub(crate) fn parse_cgroup_v2(raw: &[u8]) -> Option<String> {
    let groups = procfs_core::ProcessCGroups::from_read(raw).ok()?;
    groups.0.into_iter().find(|g| g.hierarchy == 0 && g.controllers.is_empty()).map(|g| g.pathname)
}

/// Where the cgroup v2 hierarchy is mounted, as `/proc/self/mountinfo`
/// says (filesystem type `cgroup2`), with the mount's root within the
/// hierarchy: `(mount point, root)`. The first such mount wins.
pub(crate) fn cgroup2_mount() -> Option<(std::path::PathBuf, String)> {
    let raw = fs::read("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&raw)
}

/// The cgroup2 mount of a mountinfo text (see [`cgroup2_mount`]).
pub(crate) fn parse_cgroup2_mount(raw: &[u8]) -> Option<(std::path::PathBuf, String)> {
    let mounts = procfs_core::process::MountInfos::from_read(raw).ok()?;
    mounts.0.into_iter().find(|m| m.fs_type == "cgroup2").map(|m| (unescape_octal(&m.mount_point), m.root))
}

/// mountinfo writes a space, tab, newline and backslash in a path as `\ooo`.
fn unescape_octal(path: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bytes = path.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::path::PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The proportional set size of `pid` in bytes (`Pss` of
/// `/proc/PID/smaps_rollup`, parsed by procfs-core): its resident memory
/// with shared pages divided among their sharers, so a tree's PSS values
/// add up without counting a shared page twice. `None` if unreadable.
pub(crate) fn pss_bytes(pid: i32) -> Option<u64> {
    let raw = read(pid, "smaps_rollup")?;
    let rollup = procfs_core::process::SmapsRollup::from_read(&raw[..]).ok()?;
    rollup.memory_map_rollup.0.first()?.extension.map.get("Pss").copied()
}

/// Every PID in `/proc` now (processes, not threads), in directory order.
pub(crate) fn pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).collect()
}

/// The process-group numbers of every live (not zombie) process, from one
/// pass over `/proc/*/stat`. A group whose leader is Sentry's unreaped
/// zombie is empty exactly when its number is absent here.
pub(crate) fn live_groups() -> std::collections::HashSet<i32> {
    let mut reader = StatReader::default();
    pids().into_iter().filter_map(|pid| reader.read(pid)).filter(|s| !s.is_zombie()).map(|s| s.pgrp).collect()
}

/// The ancestors of `pid`, parent first, up to and including PID 1 (by
/// following `ppid`). Empty if `pid` is gone; cut short where a parent
/// vanished mid-walk.
#[cfg(test)]
pub(crate) fn ancestors(pid: i32) -> Vec<ProcessId> {
    let mut reader = StatReader::default();
    let mut out: Vec<ProcessId> = Vec::new();
    let mut next = reader.read(pid).map(|s| s.ppid);
    while let Some(ppid) = next.filter(|&p| p > 0) {
        if out.iter().any(|a| a.pid == ppid) {
            break; // cannot happen in a tree; never loop
        }
        let Some(s) = reader.read(ppid) else { break };
        out.push(s.id());
        next = (ppid != 1).then_some(s.ppid);
    }
    out
}

/// The fds listed in `dir` (a `/proc/…/fd`) with what each refers to.
fn fds_in(dir: &str) -> Vec<(i32, std::path::PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let fds: Vec<i32> = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    fds.into_iter().filter_map(|fd| Some((fd, fs::read_link(format!("{dir}/{fd}")).ok()?))).collect()
}

/// This process's open fds with what each refers to (`/proc/self/fd`),
/// those that close while being listed left out.
pub(crate) fn own_fds() -> Vec<(i32, std::path::PathBuf)> {
    fds_in("/proc/self/fd")
}

/// Whether process `pid` holds a `flock` on the file (`dev`, `ino`): one of
/// its fds (`/proc/PID/fd`) is that file and its `fdinfo` shows the lock.
pub(crate) fn holds_flock(pid: u32, dev: u64, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
            && fs::read(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())).is_ok_and(|info| {
                info.split(|b| *b == b'\n')
                    .any(|l| l.starts_with(b"lock:") && l.windows(b" FLOCK ".len()).any(|w| w == b" FLOCK "))
            })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_starttime_is_known_from_the_clock_only_within_one_tick() {
        let ms = 1_000_000;
        let cases = [
            (5 * ms, 6 * ms, 100, Some(0)),
            (10 * ms, 19 * ms, 100, Some(1)),
            (9 * ms, 10 * ms, 100, None),
            (1_234 * ms, 1_234 * ms, 100, Some(123)),
            (7 * ms, 6 * ms, 100, None),
            (999 * ms, 1_000 * ms, 1000, None),
            (999 * ms, 999 * ms + 1, 1000, Some(999)),
        ];
        for (before, after, hz, want) in cases {
            assert_eq!(super::starttime_between(before, after, hz), want, "{before}..{after} at {hz} Hz");
        }
    }

    #[test]
    fn starttime_of_reads_what_the_full_parse_reads() {
        let me = std::process::id() as i32;
        assert_eq!(super::starttime_of(me), super::identity(me).map(|id| id.starttime));
        let odd = b"42 (a) b) c (d) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        assert_eq!(super::starttime_in(odd), Some(987654));
        assert_eq!(super::starttime_in(b"42 (x) S 1"), None);
        assert_eq!(super::starttime_of(i32::MAX), None);
    }

    use super::*;

    /// A stat line with `comm`, the fields after it made up.
    fn line(comm: &[u8]) -> Vec<u8> {
        let mut l = b"4242 (".to_vec();
        l.extend_from_slice(comm);
        l.extend_from_slice(
            b") S 1 4240 4239 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123456 10485760 256 \
              18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
        );
        l
    }

    #[test]
    fn hostile_command_names_parse_as_bytes() {
        let cut = &"мониторинг".as_bytes()[..15];
        assert!(std::str::from_utf8(cut).is_err(), "cut mid-character");
        let names: [&[u8]; 9] =
            [b"sleep", b"a) b", b"(a) b)", b"( )", b"", b"\xff\xfe", cut, b"x\ny) S 1 2 3", b") ) ) ) )"];
        for name in names {
            let s = parse_stat(&line(name)).unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(name)));
            assert_eq!(s.comm, name);
            assert_eq!((s.pid, s.state, s.ppid, s.pgrp, s.session), (4242, 'S', 1, 4240, 4239));
            assert_eq!((s.utime, s.stime, s.starttime, s.vsize, s.rss_pages), (7, 3, 123456, 10485760, 256));
        }
    }

    #[test]
    fn what_is_not_a_stat_line_is_none_not_a_panic() {
        for bad in [
            &b""[..],
            b"garbage",
            b"(x) S 1",
            b"1 (x)",
            b"1 (x) ",
            b"1 (x)\n",
            b"1 (x) S",
            b"1 (x) S 1 2",
            b"x1 (x) S 1 2 3",
            b"1 (x)S 1 2 3",
        ] {
            assert_eq!(parse_stat(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// A child renamed by `prctl(PR_SET_NAME)` to `name`, then pausing.
    fn renamed_child(name: &[u8]) -> i32 {
        let mut c = [0u8; 16];
        c[..name.len()].copy_from_slice(name);
        // SAFETY: the child only calls async-signal-safe functions, then _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0);
                libc::sleep(30);
                libc::_exit(0);
            }
            pid
        }
    }

    #[test]
    fn a_real_process_renamed_to_hostile_bytes_reads_back() {
        let cut = &"мониторинг".as_bytes()[..15];
        let names: [&[u8]; 5] = [cut, b"(a) b)", b"x\ny) S 1 2\xff", b"( )", b"\xff"];
        for name in names {
            let pid = renamed_child(name);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let seen = loop {
                let s = stat(pid).expect("the child's stat");
                if s.comm == name || std::time::Instant::now() > deadline {
                    break s;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            };
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            assert_eq!(seen.comm, name, "{:?}", String::from_utf8_lossy(&seen.comm));
            assert_eq!(seen.ppid, std::process::id() as i32);
            assert!(seen.starttime > 0);
            assert_eq!(identity(pid), None, "reaped");
        }
    }

    #[test]
    fn the_kernel_cuts_names_at_fifteen_bytes_mid_character() {
        let pid = renamed_child("мониторинг".as_bytes().get(..15).unwrap());
        let comm = stat(pid).map(|s| s.comm);
        // SAFETY: our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert_eq!(comm.map(|c| c.len()), Some(15));
    }

    #[test]
    fn this_process_reads_back() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.rss_pages > 0 && s.vsize > 0);
        let m = statm(me).unwrap();
        assert!(m.resident > 0 && m.size >= m.resident);
        assert!(rss_bytes(me).unwrap() >= page_size());
        assert!(!cmdline(me).is_empty());
        assert!(environ(me).iter().any(|kv| kv.starts_with("PATH=")) == environ_var(me, "PATH").is_some());
        assert_eq!(status_value(me, "Pid").as_deref(), Some(me.to_string().as_str()));
        assert!(pids().contains(&me));
        let up = ancestors(me);
        assert_eq!(up.last().map(|a| a.pid), Some(1), "{up:?}");
        assert_eq!(up.first().map(|a| a.pid), Some(s.ppid));
        assert!(live_groups().contains(&s.pgrp));
        let file = File::open("/proc/self/stat").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert!(own_fds().iter().any(|(f, target)| *f == fd && target.ends_with("stat")));
    }

    #[test]
    fn a_group_without_live_members_is_empty() {
        // A zombie is not a member.
        let child = renamed_child(b"zombie");
        // SAFETY: setpgid on our own child; kill it, reap later.
        unsafe {
            libc::setpgid(child, child);
            libc::kill(child, libc::SIGKILL);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stat(child).is_some_and(|s| !s.is_zombie()) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(!live_groups().contains(&child));
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    }
}
