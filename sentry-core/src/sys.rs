//! Thin, safe wrappers over the Linux calls the rest of the crate needs and
//! that `std` does not offer: pidfds, waiting without reaping, reaping one PID,
//! process-group signals, eventfds and local time (reading /proc is `proc`'s;
//! the few /proc wrappers left here delegate to it). Each
//! function does one call and turns errno into `io::Error`; no policy lives here.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::killpg;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::lifecycle::ChildExit;
use crate::Signal;

/// `pidfd_open(pid, 0)`: an fd that polls readable when `pid` exits (CLOEXEC).
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(fd, signal, NULL, 0)`: signals exactly the process the
/// pidfd refers to, never a later process that reused its PID.
pub(crate) fn pidfd_send_signal(fd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    // SAFETY: a plain syscall; a null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How the child `pid` ended, if it has, without reaping it
/// (`waitid(P_PID, pid, WEXITED | WNOHANG | WNOWAIT)`): the zombie stays, and
/// with it the PID and process-group number, until [`reap`].
pub(crate) fn peek_exit(pid: i32) -> Option<ChildExit> {
    // SAFETY: siginfo_t is plain data; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointer to a zeroed siginfo_t.
        let r = unsafe {
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT | libc::WNOHANG)
        };
        if r == 0 {
            // SAFETY: waitid filled `info` (si_pid stays 0 when nothing exited).
            if unsafe { info.si_pid() } == 0 {
                return None;
            }
            // SAFETY: as above; si_status is valid for a CLD_* code.
            let status = unsafe { info.si_status() };
            return Some(match info.si_code {
                libc::CLD_EXITED => ChildExit::Code(status),
                libc::CLD_KILLED | libc::CLD_DUMPED => ChildExit::Signal(status),
                _ => ChildExit::Unknown,
            });
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Some(ChildExit::Unknown);
        }
    }
}

/// Reaps the child `pid` (which must have exited) and says how it ended.
pub(crate) fn reap(pid: i32) -> ChildExit {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return ChildExit::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return ChildExit::Signal(sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return ChildExit::Unknown,
        }
    }
}

/// Sends `signal` to the process group `pgid`. A missing group is fine.
///
/// Only call it while the number cannot have been reused: while the group's
/// leader is our unreaped child (its zombie holds the number), or a member
/// Sentry verified is still in it.
pub(crate) fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// A non-blocking eventfd, used to wake a thread blocked in `poll`.
/// Marks every fd above 2 close-on-exec: at a fresh start, for what the
/// caller left open; in a forked child, before its exec (async-signal-safe).
pub(crate) fn cloexec_inherited() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
}

/// Restores the default SIGPIPE disposition, which Rust's runtime sets to
/// ignore: a short-lived command whose output goes to a closed pipe
/// (`status | head -1`) then ends quietly, as Unix tools do, rather than
/// panicking in `println!`. Never for the supervisor itself.
pub(crate) fn default_sigpipe() {
    // SAFETY: setting a signal disposition to its default has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Catches SIGXFSZ in the supervisor with a handler that does nothing: a
/// write past the file-size limit (`RLIMIT_FSIZE`, a unit's
/// `LimitFSIZE=`) then fails with EFBIG, which the log handles, instead of
/// killing Sentry and every child with it (setrlimit(2)). A handler, not
/// `SIG_IGN`: every `execve` — children, probes, builds — resets it to the
/// default (execve(2)), where an ignored signal would be handed on.
pub(crate) fn catch_sigxfsz() {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: the handler is async-signal-safe (it does nothing); the
    // sigaction struct is zeroed (empty mask) and then filled.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGXFSZ, &action, std::ptr::null_mut());
    }
}

pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes an eventfd readable.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64.
    unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}

/// Reads and resets an eventfd's counter: how many times it was signalled
/// since (0 if never).
pub(crate) fn eventfd_take(fd: BorrowedFd<'_>) -> u64 {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64; the fd is non-blocking.
    let n = unsafe { libc::read(fd.as_raw_fd(), &mut value as *mut u64 as *mut libc::c_void, 8) };
    if n == 8 {
        value
    } else {
        0
    }
}

/// `poll` on `fds`, retrying on EINTR; `timeout_ms` < 0 waits forever.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: `fds` is a valid slice of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// This process's real user id.
pub(crate) fn own_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn unix_now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `HH:MM:SS` of a Unix time, in local time.
pub(crate) fn local_hms(unix: u64) -> String {
    match local_tm(unix) {
        Some(tm) => format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec),
        None => "??:??:??".to_string(),
    }
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time, in local time.
pub(crate) fn local_datetime(unix: u64) -> String {
    match local_tm(unix) {
        Some(tm) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        ),
        None => "????-??-?? ??:??:??".to_string(),
    }
}

/// A log line's time: `YYYY-MM-DD HH:MM:SS.mmm+HH:MM` of `unix_ns`, in
/// local time with its offset from UTC (RFC 3339 with a space between date
/// and time, which RFC 3339 §5.6 allows), so that lines from several logs
/// sort and filter by instant (`logs --since`).
pub(crate) fn log_time(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let ms = (unix_ns / 1_000_000) % 1000;
    match local_tm(secs) {
        Some(tm) => {
            let off = tm.tm_gmtoff;
            let (sign, off) = if off < 0 { ('-', -off) } else { ('+', off) };
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{ms:03}{sign}{:02}:{:02}",
                tm.tm_year + 1900,
                tm.tm_mon + 1,
                tm.tm_mday,
                tm.tm_hour,
                tm.tm_min,
                tm.tm_sec,
                off / 3600,
                (off % 3600) / 60
            )
        }
        None => "????-??-?? ??:??:??.???+00:00".to_string(),
    }
}

fn local_tm(unix: u64) -> Option<libc::tm> {
    let t = unix as libc::time_t;
    // SAFETY: tm is plain data; localtime_r writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    let ok = !unsafe { libc::localtime_r(&t, &mut tm) }.is_null();
    ok.then_some(tm)
}

/// Reads the time zone once, so that `local_hms` uses it.
pub(crate) fn init_local_time() {
    extern "C" {
        fn tzset();
    }
    // SAFETY: called once at start, before threads that format time.
    unsafe { tzset() };
}

/// `n` random bytes from the kernel, as lowercase hex.
pub(crate) fn random_hex(n: usize) -> io::Result<String> {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `getsid(0)`: the session Sentry (and so every child) belongs to.
pub(crate) fn own_session() -> i32 {
    // SAFETY: getsid has no preconditions.
    unsafe { libc::getsid(0) }
}
