//! Sentry's resource budget: what one child costs in file descriptors, how
//! many fit under the open-file limit, the open-file limit itself (raised
//! at start, given back to children), the caps on `exec` helpers, the
//! longest duration a configuration may ask for, and malloc's arenas.
//!
//! The fd budget of a configuration is
//!
//! ```text
//! FDS_PER_CHILD × (children + HELPERS_MAX) + entries + FD_RESERVE
//! ```
//!
//! (an entry's log file is one fd; the reserve covers the core's own: the
//! standard streams, the pidfile, the listener and its connections, the
//! signal pipe, a build's pipes, the transient pipes of a spawn, /proc
//! reads). It must not exceed the open-file limit: the hard limit for
//! `check` (what `start` raises to), the soft limit in force for `start`, a
//! `scale` and an embedded supervisor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::Error;

/// Fds held for one child: its pidfd, its stdout and stderr pipes, and the
/// stop eventfd of its monitor.
pub const FDS_PER_CHILD: u64 = 4;
/// Fds kept for the core's own use.
pub const FD_RESERVE: u64 = 64;
/// `exec` helpers running at once, all rules together.
pub const HELPERS_MAX: usize = 16;
/// `exec` helpers of one rule running at once.
pub const HELPERS_PER_RULE: usize = 4;
/// The longest stop timeout, restart delay, scan interval or rule `@`
/// duration a configuration may give: a week. Longer ones are refused by
/// validation, so no deadline computed from a configuration can overflow.
pub const MAX_DURATION: Duration = crate::rule::MAX_DURATION;

/// The soft open-file limit Sentry was given, once it raised its own
/// (0: not raised, children inherit the limit in force).
static ORIGINAL_SOFT: AtomicU64 = AtomicU64::new(0);
/// Where the original soft limit crosses a re-exec (Sentry's own variable:
/// children never see `SENTRY_*`).
const ORIGINAL_VAR: &str = "SENTRY_NOFILE_SOFT";

/// The open-file limit: (soft, hard).
pub fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (1024, 1024);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Raises the soft open-file limit to the hard one (CLI `start` only:
/// process-wide) and remembers the original for children. A fresh start's
/// original is the soft limit in force; a re-exec'd image's is the one its
/// first image was given (carried in the environment: the limit in force
/// is already raised). Call before any thread is started. Returns the soft
/// limit now in force.
pub(crate) fn raise_nofile(resumed: bool) -> u64 {
    let (soft, hard) = nofile();
    let inherited = std::env::var(ORIGINAL_VAR).ok().and_then(|v| v.parse::<u64>().ok());
    let original = match inherited {
        Some(v) if resumed && v > 0 => v.min(hard),
        _ => soft,
    };
    if !resumed || inherited.is_none() {
        // Before any thread exists (see above), so no getenv races with it.
        std::env::set_var(ORIGINAL_VAR, original.to_string());
    }
    ORIGINAL_SOFT.store(original, Ordering::SeqCst);
    if soft < hard {
        let r = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: a valid pointer to an rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            return hard;
        }
    }
    soft
}

/// The soft open-file limit children get, if Sentry raised its own.
pub fn original_soft() -> Option<u64> {
    Some(ORIGINAL_SOFT.load(Ordering::SeqCst)).filter(|&v| v > 0)
}

/// At most two malloc arenas (glibc makes up to 8 per core for a program
/// with many threads; a thousand monitors would spread over all of them).
/// Process-wide: CLI `start` only.
pub(crate) fn limit_arenas() {
    // SAFETY: mallopt only sets a tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The fds a configuration of `children` processes over `entries` entries needs.
pub fn fds_needed(children: usize, entries: usize) -> u64 {
    FDS_PER_CHILD * (children as u64 + HELPERS_MAX as u64) + entries as u64 + FD_RESERVE
}

/// How many processes fit under `limit` with `entries` entries.
pub fn max_children(limit: u64, entries: usize) -> usize {
    let fixed = fds_needed(0, entries);
    (limit.saturating_sub(fixed) / FDS_PER_CHILD) as usize
}

/// Refuses `children` processes over `entries` entries that cannot fit
/// under `limit` (`what`: which limit it is, for the message).
pub(crate) fn check(children: usize, entries: usize, limit: u64, what: &str) -> Result<(), Error> {
    let needed = fds_needed(children, entries);
    if needed <= limit {
        return Ok(());
    }
    Err(Error::OverBudget(format!(
        "{children} processes need about {needed} file descriptors ({FDS_PER_CHILD} each, plus {} for Sentry \
         itself), above the open-file limit of {limit} ({what}): at most {} processes fit",
        needed - FDS_PER_CHILD * children as u64,
        max_children(limit, entries)
    )))
}

/// Refuses a configuration whose processes cannot fit under `limit`.
pub(crate) fn check_config(config: &Config, limit: u64, what: &str) -> Result<(), Error> {
    let children = config.entries.iter().map(|e| e.count).sum();
    check(children, config.entries.len(), limit, what)
}

/// Grows this process's fd table at once to hold [`fds_needed`] for
/// `children` processes over `entries` entries (at most up to the soft
/// open-file limit), so that opening them later never grows it.
///
/// The kernel doubles a full table, and a table shared by several threads
/// (or by a child that has not yet unshared it, see `spawn`) grows only
/// after an RCU grace period (`expand_fdtable` in `fs/file.c`): 5–15 ms
/// each on these machines. A supervisor reaching 4 000 fds one at a time,
/// its monitor threads running, paid six of them; one `F_DUPFD` to the
/// last number needed pays at most one, before the threads exist. Best
/// effort: a failure leaves the table to grow as it would have.
pub(crate) fn reserve_fds(children: usize, entries: usize) {
    let last = fds_needed(children, entries).min(nofile().0).saturating_sub(1);
    if last < 256 {
        return;
    }
    // SAFETY: F_DUPFD_CLOEXEC of stderr (or of whichever of the standard
    // fds is open) to a new number, closed at once; no fd is taken over.
    unsafe {
        for source in 0..3 {
            let fd = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, last as libc::c_int);
            if fd >= 0 {
                libc::close(fd);
                return;
            }
        }
    }
}

/// `at + d`, or a far future if that cannot be represented: deadlines
/// saturate instead of panicking.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or_else(|| far_future(at))
}

/// An instant later than any deadline Sentry computes from `at` (about 30
/// years on), or the latest one that can be represented.
pub(crate) fn far_future(at: Instant) -> Instant {
    let mut step = Duration::from_secs(30 * 365 * 86_400);
    loop {
        if let Some(t) = at.checked_add(step) {
            return t;
        }
        if step.is_zero() {
            return at;
        }
        step /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fd table's size (`FDSize` of /proc/self/status).
    fn fd_table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status.lines().find_map(|l| l.strip_prefix("FDSize:")).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn the_fd_table_is_grown_once_to_what_the_children_will_need() {
        let children = 1000;
        let wanted = fds_needed(children, 1).min(nofile().0);
        if wanted < 512 {
            eprintln!("skipped: the soft open-file limit ({}) is too low to show a reservation", nofile().0);
            return;
        }
        reserve_fds(children, 1);
        assert!(fd_table_size() >= wanted, "FDSize {} < {wanted}", fd_table_size());
        // The probe fd was closed again: a new fd still gets a low number.
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!((std::os::fd::AsRawFd::as_raw_fd(&f) as u64) < 256);
    }

    #[test]
    fn the_budget_formula() {
        assert_eq!(fds_needed(0, 1), 4 * 16 + 1 + 64);
        assert_eq!(fds_needed(100, 2), 4 * 116 + 2 + 64);
        let max = max_children(1024, 1);
        assert!(fds_needed(max, 1) <= 1024 && fds_needed(max + 1, 1) > 1024, "{max}");
        assert_eq!(max_children(10, 1), 0);
        assert!(check(max, 1, 1024, "x").is_ok());
        let e = check(max + 1, 1, 1024, "the hard limit").unwrap_err().to_string();
        assert!(e.contains("1024") && e.contains("the hard limit") && e.contains(&format!("at most {max}")), "{e}");
    }

    #[test]
    fn later_saturates() {
        let now = Instant::now();
        assert_eq!(later(now, Duration::from_secs(1)), now + Duration::from_secs(1));
        let far = later(now, Duration::MAX);
        assert!(far > now + MAX_DURATION * 1000);
        assert!(later(far, Duration::MAX) >= far);
    }
}
