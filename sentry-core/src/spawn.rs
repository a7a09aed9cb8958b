//! Starting a process without copying the supervisor. [`start`] runs a
//! [`Process`] the way Go's runtime and glibc's `posix_spawn` do on Linux:
//! `clone3(CLONE_VM | CLONE_FILES | CLONE_INTO_CGROUP)` on a small stack of its own, so
//! the child shares Sentry's memory until its `execve` instead of copying
//! page tables — a spawn costs the same with a thousand children running as
//! with none — and is born in its cgroup, which spares the migration a write
//! to `cgroup.procs` costs (an RCU grace period, 5–15 ms when it is not one
//! of many back to back). Unlike `vfork`, the caller does not wait for the
//! child's `execve`: [`start`] returns at once, and a start that fails after
//! the clone is learnt from the child's exit ([`failure`]), so a hundred
//! restarts are not done one after another's exec. This module owns that one
//! unsafe step and the data it reads; it knows nothing of entries, slots,
//! cgroup naming or output.
//!
//! # Safety argument
//!
//! The child runs on the caller's memory, on a [`Stack`] of its own, at the
//! same time as the caller. So:
//!
//! - Everything it reads — paths, argv, envp, credentials, fds — is prepared
//!   before the clone in an [`Image`] that nothing changes or frees while
//!   the launch is in flight: the [`Inflight`] record owns it, with the
//!   stack, until the read end of the exec fence reports hang-up. The
//!   fence's write end is close-on-exec and only the child holds it, so the
//!   hang-up comes once the child has a memory of its own (its `execve`
//!   replaced it) or has exited; nothing of ours is touched after that.
//! - It writes to no memory but its own stack, two atomics (its launch's
//!   `unshared`, the process's count of them) and one pointer of its own
//!   launch's shell argv: what went wrong goes to
//!   the fence pipe (8 bytes: step and errno) before it exits.
//! - It calls nothing but system calls, made directly ([`raw`]): no `libc`
//!   wrapper, so no `errno` — which lives in the calling thread's TLS, shared
//!   with a thread that is running — no lock, no allocation, no unwinding.
//!   Credentials change by raw `setgroups`/`setgid`/`setuid`: glibc's
//!   wrappers would, in a process it believes multi-threaded, signal every
//!   thread of *Sentry* to change theirs too (`setxid`).
//! - Signals: the caller blocks them all around the clone; every handler
//!   Sentry installed starts at the default in the child (`clone3`'s
//!   `CLONE_CLEAR_SIGHAND`; after glibc's `clone` the child resets each one:
//!   its handler table is a copy, no `CLONE_SIGHAND`), the child sets SIGPIPE
//!   and every signal Sentry was started with ignored to the default, then empties its mask just before `execve`. A signal for the child in between stays pending for the
//!   new program; a Sentry handler never runs in the child — a SIGTERM there
//!   would otherwise tell *Sentry* to stop.
//! - Its fd table is Sentry's (`CLONE_FILES`) only until its first step,
//!   `close_range(top + 1, ~0, CLOSE_RANGE_UNSHARE)`, which leaves it a table
//!   of its own with the fds below `top` (see [`FdSet`]); it touches no fd
//!   before that. Its `dup3`s onto 0, 1 and 2 come after, on its own table.
//!   The caller leaves the set's fds alone until the child has said it
//!   unshared (an atomic in its `Image`; it also counts itself in a
//!   process-wide counter, a futex that a start waiting for a set waits
//!   on, bounded) or has been reaped. Without a free set the table is
//!   copied at the clone, as by `fork`.
//! - PDEATHSIG belongs to the forking thread (DESIGN): this runs on the core
//!   thread, as `fork` did.
//!
//! Where `clone3` is refused (`ENOSYS`: a seccomp filter such as Docker's
//! default, or a kernel before 5.3; `EINVAL` for `CLONE_INTO_CGROUP` before
//! 5.7), glibc's `clone` does the same without `CLONE_INTO_CGROUP` and the
//! child moves itself into its cgroup with a write to `cgroup.procs`; the
//! switch is made once per process and said in the log. On other
//! architectures than x86_64 the caller waits for the exec (`CLONE_VFORK`),
//! which makes the libc system-call wrapper safe there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Who the child runs as: raw ids, looked up by the caller before the clone.
#[derive(Clone, Debug)]
pub(crate) struct Credentials {
    pub uid: Option<libc::uid_t>,
    pub gid: libc::gid_t,
    /// Supplementary groups (`initgroups`), when a user is given.
    pub groups: Option<Vec<libc::gid_t>>,
}

/// What to start: the program (a path, or a name looked up in the `PATH`
/// of `env`, as `execvp(3)` does), its arguments after `argv[0]` (which is
/// `program`), the whole environment, and the process state to give it.
pub(crate) struct Process<'a> {
    pub program: &'a OsStr,
    pub args: &'a [String],
    pub env: &'a [(&'a OsStr, &'a OsStr)],
    /// Entered after the credentials change (so as that user, as `su` does).
    pub cwd: Option<&'a PathBuf>,
    pub credentials: Option<&'a Credentials>,
    /// The directory of the cgroup to start it in (any fd to it, `O_PATH` will do).
    pub cgroup: Option<BorrowedFd<'a>>,
    /// The soft open-file limit to give it, if Sentry raised its own.
    pub nofile: Option<libc::rlim_t>,
}

/// A freshly started child and the read ends of its output pipes.
pub(crate) struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Its `/proc/PID/stat` starttime, when the clock around the clone
    /// says it ([`crate::proc::starttime_between`]).
    pub starttime: Option<u64>,
}

/// Which step of the child failed (the first word of its fence message).
#[derive(Clone, Copy)]
#[repr(i32)]
enum Stage {
    ProcessGroup = 1,
    Cgroup,
    Stdio,
    Groups,
    Gid,
    Uid,
    Cwd,
    Limit,
    Parent,
    Signals,
    Exec,
}

impl Stage {
    /// What the step was, for an error message; `None` for the exec itself,
    /// whose error speaks for itself.
    fn what(n: i32) -> Option<&'static str> {
        Some(match n {
            1 => "cannot make its process group",
            2 => "cannot move into its cgroup",
            3 => "cannot set up its stdin, stdout and stderr",
            4 => "cannot set its supplementary groups",
            5 => "cannot change its group",
            6 => "cannot change its user",
            7 => "cannot enter its working directory",
            8 => "cannot set its open-file limit",
            9 => "cannot ask to die with Sentry",
            10 => "cannot reset its signals",
            _ => return None,
        })
    }
}

/// The child's whole view of the world, prepared before the clone. Every
/// pointer points into the [`Inflight`] record that owns this, alive until
/// the child has exec'd or exited — never into the caller's data, which may
/// be gone by the time the child reads it.
#[repr(C)]
struct Image {
    /// Null-terminated arrays of C strings.
    candidates: *const *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    has_credentials: bool,
    groups: *const libc::gid_t,
    /// -1: leave the supplementary groups.
    groups_len: isize,
    gid: libc::gid_t,
    /// -1: leave the user.
    uid: i64,
    stdio: [RawFd; 3],
    /// The write end of the exec fence (close-on-exec).
    fence: RawFd,
    /// The cgroup directory the child moves itself into (-1: none, or born there).
    place_in: RawFd,
    /// -1: leave the open-file limit.
    nofile: i64,
    /// Signals to reset to their default action (bit `n - 1` for signal `n`):
    /// the ignored ones after `clone3`, whose `CLONE_CLEAR_SIGHAND` resets
    /// every handled one; the ignored and the handled after glibc's `clone`.
    reset: u64,
    /// With a shared fd table (`CLONE_FILES`, see [`FdSet`]): the first fd
    /// the child's table leaves out when it unshares (-1: not shared).
    unshare_from: i32,
    /// [`SHARED`], or [`UNSHARED`], which the child stores once its fd
    /// table is its own (then it counts itself in [`UNSHARED_COUNT`]): the
    /// [`FdSet`] may then be reused.
    unshared: std::sync::atomic::AtomicU32,
    /// Sentry's PID: a child whose parent is already gone by the time it
    /// asks for PDEATHSIG exits instead.
    parent: libc::pid_t,
    /// `/bin/sh`, then a free place for the script's path, then the
    /// arguments: what a file without `#!` is run with, as `execvp` does.
    /// The child writes the one place (this launch's memory, no one else's).
    shell_argv: *mut *const libc::c_char,
}

/// A launch whose child may still run on our memory: everything it reads,
/// and the fence that says when it no longer does.
struct Inflight {
    pid: i32,
    /// The low fds its child's ends sit in until its table is its own.
    set: Option<FdSet>,
    /// The program, as the caller named it (for messages).
    program: String,
    fence: OwnedFd,
    stack: Stack,
    image: Box<Image>,
    _strings: Vec<CString>,
    _pointers: [Vec<*const libc::c_char>; 3],
    _cwd: Option<CString>,
    _groups: Option<Vec<libc::gid_t>>,
    _shell: (CString, Vec<*const libc::c_char>),
}

/// [`Image::unshared`]: the child still shares Sentry's fd table.
const SHARED: u32 = 0;
/// [`Image::unshared`]: the child's fd table is its own.
const UNSHARED: u32 = 1;

/// How many children have made their fd table their own: each child adds
/// one, and wakes the starts waiting for a set ([`SET_WAITERS`]) — any
/// child's step frees a set, not only the oldest's.
static UNSHARED_COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Starts waiting on [`UNSHARED_COUNT`] (a child wakes them only if any).
static SET_WAITERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The launches of this thread (the core's): those in flight, stacks free
/// for reuse, and failures not yet asked for (by PID).
#[derive(Default)]
struct Launches {
    inflight: Vec<Inflight>,
    free: Vec<Stack>,
    failed: HashMap<i32, (String, io::Error)>,
    /// [`UNSHARED_COUNT`] when a wait for a set last ran out with none: no
    /// start waits again until another child has taken its step (children
    /// that never will — frozen, stopped, killed before it — would
    /// otherwise cost every start the whole wait).
    fruitless: Option<u32>,
}

/// Whether a start that found no free set waits for one: only while sets
/// are held by children of its own thread, and not again after a wait
/// that ran out until some child has taken its first step since
/// (`unshared`: [`UNSHARED_COUNT`] now).
fn wait_for_set(held_by_ours: bool, unshared: u32, fruitless: Option<u32>) -> bool {
    held_by_ours && fruitless != Some(unshared)
}

/// Free stacks kept for reuse.
const SPARE_STACKS: usize = 16;
/// Failures kept for [`failure`] (one per child that failed and was not asked about yet).
const FAILURES_KEPT: usize = 4096;

thread_local! {
    static LAUNCHES: RefCell<Launches> = RefCell::new(Launches::default());
}

impl Launches {
    /// Ends every launch whose child has exec'd or exited (without waiting;
    /// for `pid`, waiting up to `patience`), keeping what failures they tell.
    fn settle(&mut self, pid: Option<i32>, patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            // A child with a table of its own no longer needs its set; the
            // fence can hang up only once the set no longer holds its end.
            self.reclaim_sets();
            let mut fds: Vec<libc::pollfd> = self
                .inflight
                .iter()
                .map(|l| libc::pollfd { fd: l.fence.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            let waiting = pid.is_some_and(|p| self.inflight.iter().any(|l| l.pid == p));
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = if waiting { left.as_millis().min(i32::MAX as u128) as i32 } else { 0 };
            if fds.is_empty() {
                return;
            }
            // SAFETY: valid pollfds for fds we own.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n > 0 {
                let mut kept = Vec::with_capacity(self.inflight.len());
                for (launch, fd) in std::mem::take(&mut self.inflight).into_iter().zip(&fds) {
                    if fd.revents == 0 {
                        kept.push(launch);
                        continue;
                    }
                    match read_fence(&launch.fence) {
                        Fence::Open => kept.push(launch),
                        Fence::Exec => self.retire(launch),
                        // The child may still run on its stack until it has
                        // exited: its memory is freed at the hang-up, not here.
                        Fence::Failed(e) => {
                            if self.failed.len() < FAILURES_KEPT {
                                self.failed.insert(launch.pid, (launch.program.clone(), e));
                            }
                            kept.push(launch);
                        }
                    }
                }
                self.inflight = kept;
            }
            let still = pid.is_some_and(|p| self.inflight.iter().any(|l| l.pid == p));
            if !still || Instant::now() >= deadline {
                return;
            }
        }
    }

    /// Gives back the fd sets of the children whose tables are their own.
    fn reclaim_sets(&mut self) {
        for launch in &mut self.inflight {
            if launch.set.is_some() && launch.image.unshared.load(Ordering::Acquire) == UNSHARED {
                give_back(launch.set.take());
            }
        }
    }

    /// A free fd set; when every set is held by a child of this thread not
    /// yet past its first step, waits up to [`SET_PATIENCE`] for any of
    /// them to take it (that step is its first system call, so the wait
    /// is for a child to get a CPU — which the waiting core gives it), but
    /// not again after such a wait came to nothing until some child has
    /// taken its step since ([`wait_for_set`]). `None` if no set came: the
    /// child then gets a copy of the whole table, as with `fork`.
    fn take_set(&mut self) -> Option<FdSet> {
        self.reclaim_sets();
        if let Some(set) = SetPool::take() {
            return Some(set);
        }
        let held_by_ours = self.inflight.iter().any(|l| l.set.is_some());
        if !wait_for_set(held_by_ours, UNSHARED_COUNT.load(Ordering::SeqCst), self.fruitless) {
            return None;
        }
        let deadline = Instant::now() + SET_PATIENCE;
        SET_WAITERS.fetch_add(1, Ordering::SeqCst);
        let set = loop {
            let seen = UNSHARED_COUNT.load(Ordering::SeqCst);
            self.reclaim_sets();
            if let Some(set) = SetPool::take() {
                break Some(set);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.fruitless = Some(UNSHARED_COUNT.load(Ordering::SeqCst));
                break None;
            }
            futex_wait(&UNSHARED_COUNT, seen, left);
        };
        SET_WAITERS.fetch_sub(1, Ordering::SeqCst);
        set
    }

    fn retire(&mut self, mut launch: Inflight) {
        give_back(launch.set.take());
        drop(launch.fence);
        if self.free.len() < SPARE_STACKS {
            self.free.push(launch.stack);
        }
    }

    /// The child `pid` has exited (whether or not it had unshared its fd
    /// table): nothing runs on its launch's memory any more.
    fn ended(&mut self, pid: i32) {
        if let Some(at) = self.inflight.iter().position(|l| l.pid == pid) {
            let mut launch = self.inflight.swap_remove(at);
            give_back(launch.set.take());
            // What it said before it died, if anything.
            if let Fence::Failed(e) = read_fence(&launch.fence) {
                if self.failed.len() < FAILURES_KEPT {
                    self.failed.insert(pid, (launch.program.clone(), e));
                }
            }
            self.retire(launch);
        }
    }
}

/// At most this many launches share Sentry's fd table at once: the fd
/// sets made, 5 fds each, once per process image.
const MAX_SETS: usize = 8;

/// How long a start waits for a set held by a child not yet past its first
/// step, before it copies the whole fd table instead.
const SET_PATIENCE: Duration = Duration::from_millis(5);

/// The process's free fd sets. They are made together, once ([`reserve`]),
/// at the lowest free fd numbers, and kept: a set made later, when the
/// low numbers hold children's pipes, would sit thousands of fds up and
/// its child would copy every fd below it. A set whose fds cannot be
/// reset to `/dev/null` is dropped for good.
struct SetPool {
    free: Vec<FdSet>,
    made: bool,
}

static SETS: std::sync::Mutex<SetPool> = std::sync::Mutex::new(SetPool { free: Vec::new(), made: false });

impl SetPool {
    fn lock() -> std::sync::MutexGuard<'static, SetPool> {
        SETS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take() -> Option<FdSet> {
        let mut pool = Self::lock();
        pool.fill();
        pool.free.pop()
    }

    /// Makes the sets, the first time only.
    fn fill(&mut self) {
        if std::mem::replace(&mut self.made, true) || !unshare_range_supported() {
            return;
        }
        let Ok(null) = open_null() else { return };
        for _ in 0..MAX_SETS {
            match FdSet::new(null.as_fd()) {
                Ok(set) => self.free.push(set),
                Err(_) => break,
            }
        }
    }
}

/// Makes the process's fd sets now, at the lowest free fd numbers, if they
/// are not made yet (the core calls it before it opens any child's fds).
pub(crate) fn reserve() {
    SetPool::lock().fill();
}

/// Puts `set` back in the pool, emptied.
fn give_back(set: Option<FdSet>) {
    if let Some(set) = set.and_then(FdSet::release) {
        SetPool::lock().free.push(set);
    }
}

/// Waits until `flag` is no longer `expected`, at most `timeout` (a
/// spurious or early return is harmless: the caller checks again).
fn futex_wait(flag: &std::sync::atomic::AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: a futex wait on an aligned u32 of ours, with a valid timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            flag.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Five fds reserved at the lowest numbers free when made (each
/// `/dev/null`, close-on-exec; see [`SetPool`]), for one launch at a time. A child's stdin,
/// stdout, stderr, fence and cgroup directory are moved into them before a
/// clone that shares Sentry's fd table (`CLONE_FILES`); the child's first
/// step, `close_range(top + 1, ~0, CLOSE_RANGE_UNSHARE)`, gives it a table
/// of its own with only the fds below that — not the thousands Sentry holds
/// with many children, which a clone would otherwise copy and the child's
/// exec close again, one by one. Until the child says it has unshared (or
/// has ended), the set belongs to its launch.
struct FdSet {
    fds: [OwnedFd; 5],
}

impl FdSet {
    /// Five copies of `null`, each at the lowest free number above 2.
    fn new(null: BorrowedFd<'_>) -> io::Result<FdSet> {
        let one = || dup_above_stdio(null);
        Ok(FdSet { fds: [one()?, one()?, one()?, one()?, one()?] })
    }

    /// The highest fd of the set.
    fn top(&self) -> RawFd {
        self.fds.iter().map(|f| f.as_raw_fd()).max().unwrap_or(2)
    }

    /// Puts `fd` in place `i` (close-on-exec), dropping what was there.
    fn put(&self, i: usize, fd: RawFd) -> io::Result<()> {
        // SAFETY: dup3 onto an fd this set owns; `fd` is open.
        if unsafe { libc::dup3(fd, self.fds[i].as_raw_fd(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn raw(&self, i: usize) -> RawFd {
        self.fds[i].as_raw_fd()
    }

    /// Back to `/dev/null` in every place (what it held is closed): ready
    /// for the next launch; `None` if that fails (the set is then dropped).
    fn release(self) -> Option<FdSet> {
        let null = null().ok()?;
        for i in 0..self.fds.len() {
            self.put(i, null.as_raw_fd()).ok()?;
        }
        Some(self)
    }
}

/// Whether `close_range` knows `CLOSE_RANGE_UNSHARE` (Linux 5.9).
fn unshare_range_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // SAFETY: uname fills a plain struct; its `release` is NUL-terminated.
        let release = unsafe {
            let mut names: libc::utsname = std::mem::zeroed();
            if libc::uname(&mut names) != 0 {
                return false;
            }
            std::ffi::CStr::from_ptr(names.release.as_ptr()).to_string_lossy().into_owned()
        };
        let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (5, 9)
    })
}

impl Drop for Launches {
    /// The thread ends (an embedded supervisor's core): children still
    /// between clone and exec get a moment, then what they may still read
    /// is leaked rather than freed under them.
    fn drop(&mut self) {
        self.settle(None, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(pid) = self.inflight.first().map(|l| l.pid) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.settle(Some(pid), left);
            if self.inflight.first().is_some_and(|l| l.pid == pid) {
                break;
            }
        }
        for launch in self.inflight.drain(..) {
            std::mem::forget(launch);
        }
    }
}

/// What the fence says.
enum Fence {
    /// The child has not exec'd or exited yet.
    Open,
    /// It exec'd (end of file, nothing written).
    Exec,
    Failed(io::Error),
}

fn read_fence(fence: &OwnedFd) -> Fence {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into `buf`; the fd is non-blocking.
    let n = unsafe { libc::read(fence.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    match n {
        0 => Fence::Exec,
        8 => {
            let stage = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let e = io::Error::from_raw_os_error(errno);
            Fence::Failed(match Stage::what(stage) {
                Some(what) => io::Error::new(e.kind(), format!("{what}: {e}")),
                None => e,
            })
        }
        // The child writes its 8 bytes at once (a pipe write that small is atomic).
        n if n > 0 => Fence::Failed(io::Error::other("a start failed in an unknown way")),
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Fence::Open,
        _ => Fence::Exec,
    }
}

/// Why the child `pid` of an earlier [`start`] could not run its program
/// (the program as named, and the error), if it could not; asked once it
/// has exited (its exit status is then 127). Waits at most a few
/// milliseconds for its fence, which an exited child has closed.
pub(crate) fn failure(pid: i32) -> Option<(String, io::Error)> {
    LAUNCHES.with(|l| {
        let mut l = l.borrow_mut();
        l.settle(Some(pid), Duration::from_millis(50));
        l.ended(pid);
        l.failed.remove(&pid)
    })
}

/// The child `pid` of an earlier [`start`] was reaped: whatever its launch
/// still held is freed (a child killed before its exec never closes its
/// fence by itself while its fd set holds the write end).
pub(crate) fn reaped(pid: i32) {
    LAUNCHES.with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.ended(pid);
            l.failed.remove(&pid);
        }
    })
}

/// Frees what launches whose child has exec'd or exited held (their stack,
/// fence and fd set), without waiting: the core calls it when it has
/// nothing to do. Whether launches are still in flight (then the core calls
/// it again soon).
pub(crate) fn tidy() -> bool {
    LAUNCHES.with(|l| match l.try_borrow_mut() {
        Ok(mut l) => {
            if !l.inflight.is_empty() {
                l.settle(None, Duration::ZERO);
            }
            !l.inflight.is_empty()
        }
        Err(_) => false,
    })
}

/// Whether `clone3` was refused once; then glibc's `clone` is used from then on.
static CLONE3_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether the caller waits for the child's exec (`CLONE_VFORK`): only
/// where the child cannot make its system calls without `libc`.
const WAIT_FOR_EXEC: bool = !cfg!(target_arch = "x86_64");

/// Starts `process` with stdin from `/dev/null`, stdout and stderr to fresh
/// pipes, in a process group of its own, every signal at its default and
/// unblocked (SIGPIPE too, and what Sentry was started with `SIG_IGN`),
/// PDEATHSIG SIGKILL, and only fds 0–2 open
/// across the exec. Returns once the child exists, not waiting for its
/// exec. A program found nowhere (`execvp`'s search, by file type and
/// permission bits) is an error here (`No such file or directory (os error
/// 2)`, `Permission denied (os error 13)`, as `std::process::Command` says);
/// whatever fails in the child after the clone makes it exit with status 127,
/// and [`failure`] then tells why, naming the step (`cannot move into its
/// cgroup: …`) unless it is the exec itself.
pub(crate) fn start(process: &Process<'_>) -> io::Result<Spawned> {
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in argument"));
    let paths = candidates_of(process.program, process.env);
    findable(&paths, process.cwd)?;
    let mut strings = Vec::new();
    let mut candidates = Vec::new();
    for path in paths {
        candidates.push(strings.len());
        strings.push(c(&path)?);
    }
    let mut argv = vec![strings.len()];
    strings.push(c(process.program.as_bytes())?);
    for a in process.args {
        argv.push(strings.len());
        strings.push(c(a.as_bytes())?);
    }
    let mut envp = Vec::new();
    for (k, v) in process.env {
        if k.is_empty() || k.as_bytes().contains(&b'=') {
            continue;
        }
        envp.push(strings.len());
        strings.push(c(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
    }
    let cwd = process.cwd.map(|d| c(d.as_os_str().as_bytes())).transpose()?;
    let pointers = |at: &[usize]| -> Vec<*const libc::c_char> {
        at.iter().map(|&i| strings[i].as_ptr()).chain([std::ptr::null()]).collect()
    };
    let pointers = [pointers(&candidates), pointers(&argv), pointers(&envp)];
    let shell = c(b"/bin/sh")?;
    let mut shell_argv: Vec<*const libc::c_char> = [shell.as_ptr(), std::ptr::null()]
        .into_iter()
        .chain(argv[1..].iter().map(|&i| strings[i].as_ptr()))
        .chain([std::ptr::null()])
        .collect();

    let stdin = null()?;
    let (out_read, out_write) = pipe(0)?;
    let (err_read, err_write) = pipe(0)?;
    // Non-blocking at both ends: the child's one 8-byte write never waits
    // on an empty pipe, and the core only ever polls the read end.
    let (fence_read, fence_write) = pipe(libc::O_NONBLOCK)?;
    let (out_write, err_write, fence_write) =
        (above_stdio(out_write)?, above_stdio(err_write)?, above_stdio(fence_write)?);
    let mut set = LAUNCHES.with(|l| l.borrow_mut().take_set());
    if let Some(s) = &set {
        let placed = [stdin.as_raw_fd(), out_write.as_raw_fd(), err_write.as_raw_fd(), fence_write.as_raw_fd()]
            .into_iter()
            .chain(process.cgroup.map(|c| c.as_raw_fd()))
            .enumerate()
            .try_for_each(|(i, fd)| s.put(i, fd));
        if placed.is_err() {
            give_back(set.take());
        }
    }
    let credentials = process.credentials;
    // Copied: the caller's `Credentials` may be gone before the child reads them.
    let groups: Option<Vec<libc::gid_t>> = credentials.and_then(|c| c.groups.clone());
    let mut image = Box::new(Image {
        candidates: pointers[0].as_ptr(),
        argv: pointers[1].as_ptr(),
        envp: pointers[2].as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        has_credentials: credentials.is_some(),
        groups: groups.as_ref().map_or(std::ptr::null(), |g| g.as_ptr()),
        groups_len: groups.as_ref().map_or(-1, |g| g.len() as isize),
        gid: credentials.map_or(0, |c| c.gid),
        uid: credentials.and_then(|c| c.uid).map_or(-1, i64::from),
        stdio: match &set {
            Some(s) => [s.raw(0), s.raw(1), s.raw(2)],
            None => [stdin.as_raw_fd(), out_write.as_raw_fd(), err_write.as_raw_fd()],
        },
        fence: set.as_ref().map_or(fence_write.as_raw_fd(), |s| s.raw(3)),
        place_in: -1,
        unshare_from: set.as_ref().map_or(-1, |s| s.top() + 1),
        unshared: std::sync::atomic::AtomicU32::new(SHARED),
        nofile: process.nofile.map_or(-1, |n| n.min(i64::MAX as u64) as i64),
        reset: ignored_signals(),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        shell_argv: shell_argv.as_mut_ptr(),
    });
    LAUNCHES.with(|launches| {
        let mut launches = launches.borrow_mut();
        launches.settle(None, Duration::ZERO);
        let stack = match launches.free.pop().map_or_else(Stack::new, Ok) {
            Ok(stack) => stack,
            Err(e) => {
                give_back(set);
                return Err(e);
            }
        };
        let mut clocked = (0, 0);
        let pid = {
            let _blocked = BlockedSignals::all();
            clocked.0 = crate::proc::boottime_ns();
            let mut cloned = None;
            if let Some(cgroup) = process.cgroup {
                if !CLONE3_REFUSED.load(Ordering::Relaxed) {
                    // SAFETY: see the module's safety argument; `image`, the
                    // strings and the stack are kept in `Inflight` below.
                    match unsafe { clone3_into(cgroup, &stack, &image, set.is_some()) } {
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG)) => {
                            CLONE3_REFUSED.store(true, Ordering::Relaxed);
                            log::warn!(
                                "clone3 with CLONE_INTO_CGROUP is refused here ({e}): children move into their cgroups themselves"
                            );
                        }
                        other => cloned = Some(other),
                    }
                }
                if cloned.is_none() {
                    image.place_in = set.as_ref().map_or(cgroup.as_raw_fd(), |s| s.raw(4));
                }
            }
            match cloned {
                Some(cloned) => cloned,
                None => {
                    // No CLONE_CLEAR_SIGHAND: the child resets them one by one.
                    image.reset = handled_signals() | ignored_signals();
                    // SAFETY: as above.
                    unsafe { clone_glibc(&stack, &image, set.is_some()) }
                }
            }
        };
        clocked.1 = crate::proc::boottime_ns();
        let pid = match pid {
            Ok(pid) => pid,
            Err(e) => {
                launches.free.push(stack);
                give_back(set);
                return Err(e);
            }
        };
        // The child has its own copies (or, sharing the table, the set's
        // until it unshares); a failed or finished child must leave the
        // fence at end of file.
        drop((out_write, err_write, fence_write));
        launches.inflight.push(Inflight {
            pid,
            set,
            program: process.program.to_string_lossy().into_owned(),
            fence: fence_read,
            stack,
            image,
            _strings: strings,
            _pointers: pointers,
            _cwd: cwd,
            _groups: groups,
            _shell: (shell, shell_argv),
        });
        let starttime = crate::proc::starttime_between(clocked.0, clocked.1, crate::proc::ticks_per_second());
        Ok(Spawned { pid, stdout: out_read, stderr: err_read, starttime })
    })
}

/// The paths `execvp(3)` would try for `program`, in order: `program` itself
/// if it holds a `/`, else each directory of the `PATH` in `env` (glibc's
/// default `/bin:/usr/bin` without one; an empty entry is the current directory).
fn candidates_of(program: &OsStr, env: &[(&OsStr, &OsStr)]) -> Vec<Vec<u8>> {
    let name = program.as_bytes();
    if name.contains(&b'/') || name.is_empty() {
        return vec![name.to_vec()];
    }
    let path = env.iter().rev().find(|(k, _)| *k == "PATH").map_or(&b"/bin:/usr/bin"[..], |(_, v)| v.as_bytes());
    path.split(|&b| b == b':')
        .map(|dir| match dir {
            b"" => name.to_vec(),
            _ => [dir, if dir.ends_with(b"/") { b"" } else { b"/" }, name].concat(),
        })
        .collect()
}

/// Whether one of `paths` (relative ones from `cwd`) may be what the exec
/// runs: a file with an execute bit. Otherwise the error `execvp` would
/// end with — EACCES if only something not executable was there, else the
/// last "not there" error (ENOENT, ENOTDIR), or at once any other (ELOOP,
/// ENAMETOOLONG) — so that the most common mistake is said at once. The
/// child's own search decides the rest.
fn findable(paths: &[Vec<u8>], cwd: Option<&PathBuf>) -> io::Result<()> {
    let mut denied = false;
    let mut last = libc::ENOENT;
    for path in paths {
        let path = Path::new(OsStr::from_bytes(path));
        let path = match cwd {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(()),
            Ok(_) => denied = true,
            Err(e) => match e.raw_os_error() {
                Some(n @ (libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT)) => last = n,
                // Not ours to judge (a directory Sentry's user may not search).
                Some(libc::EACCES) | None => return Ok(()),
                Some(_) => return Err(e),
            },
        }
    }
    Err(io::Error::from_raw_os_error(if denied { libc::EACCES } else { last }))
}

/// A system call made directly, without `libc`'s wrapper and its `errno`:
/// the result, or `-errno`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn raw(n: libc::c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    std::arch::asm!(
        "syscall",
        inlateout("rax") n as isize => ret,
        in("rdi") a[0],
        in("rsi") a[1],
        in("rdx") a[2],
        in("r10") a[3],
        in("r8") a[4],
        in("r9") a[5],
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

/// Elsewhere the caller waits for the exec, so `libc`'s wrapper is safe.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn raw(n: libc::c_long, a: [usize; 6]) -> isize {
    let r = libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]);
    if r < 0 {
        -(*libc::__errno_location()) as isize
    } else {
        r as isize
    }
}

/// The kernel's `struct sigaction` on x86_64 and most others (handler,
/// flags, restorer, mask): all zero is SIG_DFL.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// The code of the child, on its own stack; never returns. Only [`raw`]
/// system calls (see the module's safety argument).
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Image` the parent keeps alive until the fence
    // closes; every call below is a plain system call on its data.
    unsafe {
        let image = &*(arg as *const Image);
        let fail = |stage: Stage, ret: isize| -> ! {
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(stage as i32).to_ne_bytes());
            msg[4..].copy_from_slice(&(-ret as i32).to_ne_bytes());
            raw(libc::SYS_write, [image.fence as usize, msg.as_ptr() as usize, 8, 0, 0, 0]);
            raw(libc::SYS_exit_group, [127, 0, 0, 0, 0, 0]);
            #[allow(clippy::empty_loop)]
            loop {}
        };
        if image.unshare_from >= 0 {
            // A table of its own with only the fds below the set's top.
            let flags = libc::CLOSE_RANGE_UNSHARE as usize;
            let r = raw(libc::SYS_close_range, [image.unshare_from as usize, u32::MAX as usize, flags, 0, 0, 0]);
            if r < 0 {
                fail(Stage::Stdio, r);
            }
            image.unshared.store(UNSHARED, Ordering::SeqCst);
            UNSHARED_COUNT.fetch_add(1, Ordering::SeqCst);
            if SET_WAITERS.load(Ordering::SeqCst) != 0 {
                let count = UNSHARED_COUNT.as_ptr() as usize;
                let op = (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize;
                raw(libc::SYS_futex, [count, op, i32::MAX as usize, 0, 0, 0]);
            }
        }
        let default = KernelSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 };
        for sig in 1..=64usize {
            if image.reset & (1 << (sig - 1)) != 0 {
                let r = raw(libc::SYS_rt_sigaction, [sig, &default as *const _ as usize, 0, 8, 0, 0]);
                if r < 0 {
                    fail(Stage::Signals, r);
                }
            }
        }
        let r = raw(libc::SYS_setpgid, [0; 6]);
        if r < 0 {
            fail(Stage::ProcessGroup, r);
        }
        if image.place_in >= 0 {
            let name = c"cgroup.procs";
            let flags = (libc::O_WRONLY | libc::O_CLOEXEC) as usize;
            let procs = raw(libc::SYS_openat, [image.place_in as usize, name.as_ptr() as usize, flags, 0, 0, 0]);
            if procs < 0 {
                fail(Stage::Cgroup, procs);
            }
            let r = raw(libc::SYS_write, [procs as usize, b"0".as_ptr() as usize, 1, 0, 0, 0]);
            if r < 0 {
                fail(Stage::Cgroup, r);
            }
            raw(libc::SYS_close, [procs as usize, 0, 0, 0, 0, 0]);
        }
        for (target, &fd) in image.stdio.iter().enumerate() {
            // dup3 without flags: the copy is not close-on-exec; the sources are all above 2.
            let r = raw(libc::SYS_dup3, [fd as usize, target, 0, 0, 0, 0]);
            if r < 0 {
                fail(Stage::Stdio, r);
            }
        }
        if image.has_credentials {
            // Without CAP_SETGID (Sentry not root) the groups cannot change;
            // setgid/setuid below then say whether the user can.
            if image.groups_len >= 0 {
                let r = raw(libc::SYS_setgroups, [image.groups_len as usize, image.groups as usize, 0, 0, 0, 0]);
                if r < 0 && r != -(libc::EPERM as isize) {
                    fail(Stage::Groups, r);
                }
            }
            let r = raw(libc::SYS_setgid, [image.gid as usize, 0, 0, 0, 0, 0]);
            if r < 0 {
                fail(Stage::Gid, r);
            }
            if image.uid >= 0 {
                let r = raw(libc::SYS_setuid, [image.uid as usize, 0, 0, 0, 0, 0]);
                if r < 0 {
                    fail(Stage::Uid, r);
                }
            }
        }
        if !image.cwd.is_null() {
            let r = raw(libc::SYS_chdir, [image.cwd as usize, 0, 0, 0, 0, 0]);
            if r < 0 {
                fail(Stage::Cwd, r);
            }
        }
        // Fds Sentry inherited without CLOEXEC (a jobserver, a shell's
        // spare fds) must not reach children: only 0, 1, 2 cross exec.
        raw(libc::SYS_close_range, [3, u32::MAX as usize, libc::CLOSE_RANGE_CLOEXEC as usize, 0, 0, 0]);
        if image.nofile >= 0 {
            let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            let nofile = libc::RLIMIT_NOFILE as usize;
            if raw(libc::SYS_prlimit64, [0, nofile, 0, &mut old as *mut libc::rlimit as usize, 0, 0]) == 0 {
                let new =
                    libc::rlimit { rlim_cur: (image.nofile as libc::rlim_t).min(old.rlim_max), rlim_max: old.rlim_max };
                let e = raw(libc::SYS_prlimit64, [0, nofile, &new as *const libc::rlimit as usize, 0, 0, 0]);
                if e < 0 {
                    fail(Stage::Limit, e);
                }
            }
        }
        // After the change of credentials above, which clears PDEATHSIG.
        let r = raw(libc::SYS_prctl, [libc::PR_SET_PDEATHSIG as usize, libc::SIGKILL as usize, 0, 0, 0, 0]);
        if r < 0 {
            fail(Stage::Parent, r);
        }
        // Sentry died before that: no signal will come, so go now.
        if raw(libc::SYS_getppid, [0; 6]) != image.parent as isize {
            raw(libc::SYS_exit_group, [127, 0, 0, 0, 0, 0]);
        }
        let empty: u64 = 0;
        raw(libc::SYS_rt_sigprocmask, [libc::SIG_SETMASK as usize, &empty as *const u64 as usize, 0, 8, 0, 0]);
        // execvp's search: EACCES is remembered and the search goes on, as
        // do "not there" errors; any other error ends it.
        let mut failure = -(libc::ENOENT as isize);
        let mut denied = false;
        let mut at = image.candidates;
        while !(*at).is_null() {
            failure = raw(libc::SYS_execve, [*at as usize, image.argv as usize, image.envp as usize, 0, 0, 0]);
            if -failure as i32 == libc::ENOEXEC {
                // A script without `#!`: the shell runs it, as execvp does.
                *image.shell_argv.add(1) = *at;
                let sh = *image.shell_argv;
                failure = raw(libc::SYS_execve, [sh as usize, image.shell_argv as usize, image.envp as usize, 0, 0, 0]);
                break;
            }
            match -failure as i32 {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => break,
            }
            at = at.add(1);
        }
        if denied && matches!(-failure as i32, libc::ENOENT | libc::ENOTDIR) {
            failure = -(libc::EACCES as isize);
        }
        fail(Stage::Exec, failure)
    }
}

/// The signals Sentry handles (bit `n - 1` for signal `n`), which the child
/// resets where `CLONE_CLEAR_SIGHAND` is not there to: a handler of Sentry's
/// must never run in the child.
fn handled_signals() -> u64 {
    signals_where(|handler| handler != libc::SIG_DFL && handler != libc::SIG_IGN)
}

/// The signals ignored in Sentry (bit `n - 1` for signal `n`), which the
/// child resets to the default as systemd does for a service: SIGPIPE,
/// which Rust's runtime ignores, and whatever Sentry was started with
/// ignored — `cmd &` in a script ignores SIGINT and SIGQUIT, `nohup` SIGHUP
/// — which `execve` would otherwise hand on (execve(2): "the dispositions
/// of ignored signals are left unchanged"). Read once: Sentry itself
/// ignores nothing after its start.
fn ignored_signals() -> u64 {
    static IGNORED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *IGNORED.get_or_init(|| signals_where(|handler| handler == libc::SIG_IGN) | 1 << (libc::SIGPIPE - 1))
}

/// The signals whose current disposition `keep` accepts (bit `n - 1` for
/// signal `n`); SIGKILL and SIGSTOP, which have none to change, never. Read
/// with the raw system call: glibc's `sigaction` refuses 32 and 33, which it
/// keeps for itself, but a process may be started with them ignored.
fn signals_where(keep: impl Fn(libc::sighandler_t) -> bool) -> u64 {
    let mut set = 0u64;
    for sig in (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP) {
        let mut old = KernelSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 };
        // SAFETY: rt_sigaction with a null new action only writes `old`, of the kernel's layout.
        let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<KernelSigaction>(), &mut old, 8) };
        if r == 0 && keep(old.handler) {
            set |= 1 << (sig - 1);
        }
    }
    set
}

/// Every signal blocked on this thread until dropped (then the old mask).
struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    fn all() -> BlockedSignals {
        // SAFETY: sigset_t is plain data; pthread_sigmask only writes `old`.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            BlockedSignals(old)
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `all`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// An `mmap`ed stack with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

/// Usable size: the child's few frames (`execve` needs no more than a
/// system call's) with a wide margin for unoptimised builds.
const STACK_SIZE: usize = 64 * 1024;
const GUARD: usize = 4096;

impl Stack {
    fn new() -> io::Result<Stack> {
        let len = STACK_SIZE + GUARD;
        // SAFETY: a fresh anonymous mapping; the guard page is made inaccessible.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            if libc::mprotect(base, GUARD, libc::PROT_NONE) != 0 {
                let e = io::Error::last_os_error();
                libc::munmap(base, len);
                return Err(e);
            }
            Ok(Stack { base, len })
        }
    }

    /// The lowest usable address (the stack grows down from `top`).
    fn bottom(&self) -> usize {
        self.base as usize + GUARD
    }

    fn top(&self) -> usize {
        self.base as usize + self.len
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no child uses it any more (its fence closed).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// `struct clone_args` of `clone3(2)`, up to `cgroup` (Linux 5.7).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// Every signal the parent handles starts at its default action in the
/// child; ignored ones stay ignored (Linux 5.5, clone(2)). It spares the
/// parent asking the kernel about each of 64 signals before every start.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

/// `clone3(CLONE_VM | CLONE_INTO_CGROUP | CLONE_CLEAR_SIGHAND)` running [`child`] on `stack`.
/// The child's PID, or the clone's error.
///
/// # Safety
/// `image` and what it points to, and `stack`, must stay valid and
/// unchanged until the child has exec'd or exited; see the module's safety
/// argument.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_into(cgroup: BorrowedFd<'_>, stack: &Stack, image: &Image, share_files: bool) -> io::Result<i32> {
    let files = if share_files { libc::CLONE_FILES as u64 } else { 0 };
    let mut args = CloneArgs {
        flags: libc::CLONE_VM as u64 | CLONE_INTO_CGROUP | CLONE_CLEAR_SIGHAND | files,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.bottom() as u64,
        stack_size: (stack.top() - stack.bottom()) as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.as_raw_fd() as u64,
    };
    let entry: extern "C" fn(*mut libc::c_void) -> libc::c_int = child;
    let ret: i64;
    // The child resumes after `syscall` with rax = 0 and rsp at the top of
    // its stack (16-byte aligned, as `call` expects); r12 and r13 survive
    // the system call. It calls `child`, which never returns.
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "mov rdi, r12",
        "call r13",
        "ud2",
        "2:",
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") &mut args as *mut CloneArgs,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") image as *const Image as *mut libc::c_void,
        in("r13") entry,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(ret as i32)
}

/// Elsewhere glibc's `clone` is used (the child places itself).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_into(_: BorrowedFd<'_>, _: &Stack, _: &Image, _: bool) -> io::Result<i32> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// glibc's `clone(CLONE_VM)` running [`child`] on `stack` (with
/// `CLONE_VFORK` where the caller must wait for the exec).
///
/// # Safety
/// As [`clone3_into`].
unsafe fn clone_glibc(stack: &Stack, image: &Image, share_files: bool) -> io::Result<i32> {
    let vfork = if WAIT_FOR_EXEC { libc::CLONE_VFORK } else { 0 };
    let files = if share_files { libc::CLONE_FILES } else { 0 };
    let pid = libc::clone(
        child,
        stack.top() as *mut libc::c_void,
        libc::CLONE_VM | vfork | files | libc::SIGCHLD,
        image as *const Image as *mut libc::c_void,
    );
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// A close-on-exec pipe, with `flags` (`O_NONBLOCK`) on both ends.
fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `/dev/null`, opened once (above the standard fds) and shared by every
/// launch as its child's stdin.
fn null() -> io::Result<BorrowedFd<'static>> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(std::os::fd::AsFd::as_fd(fd));
    }
    let fd = above_stdio(open_null()?)?;
    Ok(std::os::fd::AsFd::as_fd(NULL.get_or_init(|| fd)))
}

fn open_null() -> io::Result<OwnedFd> {
    // SAFETY: a plain open of a static path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fd` itself if it is above 2, else a copy that is: the child's `dup2`s
/// onto 0, 1 and 2 must not overwrite a source before it is copied.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    dup_above_stdio(fd.as_fd())
}

/// A close-on-exec copy of `fd` at the lowest free number above 2.
fn dup_above_stdio(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new fd owned by nobody else.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(path: Option<&str>) -> Vec<(&OsStr, &OsStr)> {
        path.map(|p| vec![(OsStr::new("PATH"), OsStr::new(p))]).unwrap_or_default()
    }

    #[test]
    fn candidates_follow_execvp() {
        let cases: &[(&str, Option<&str>, &[&str])] = &[
            ("/bin/true", Some("/x"), &["/bin/true"]),
            ("./run", Some("/x"), &["./run"]),
            ("true", Some("/a:/b/"), &["/a/true", "/b/true"]),
            ("true", Some("/a::/b"), &["/a/true", "true", "/b/true"]),
            ("true", None, &["/bin/true", "/usr/bin/true"]),
            ("true", Some(""), &["true"]),
        ];
        for (program, path, want) in cases {
            let got = candidates_of(OsStr::new(program), &env(*path));
            let want: Vec<Vec<u8>> = want.iter().map(|w| w.as_bytes().to_vec()).collect();
            assert_eq!(got, want, "{program} with PATH {path:?}");
        }
    }

    #[test]
    fn a_start_waits_for_a_set_only_while_children_have_moved_on() {
        // (held by ours, unshared count now, count when a wait last ran out) → wait
        let cases = [
            (true, 10, None, true),
            (true, 10, Some(9), true),
            (true, 10, Some(10), false),
            (false, 10, None, false),
            (false, 10, Some(3), false),
        ];
        for (held, now, fruitless, want) in cases {
            assert_eq!(wait_for_set(held, now, fruitless), want, "{held} {now} {fruitless:?}");
        }
    }

    /// The starttime a start reports from its clock is the one /proc shows
    /// (a wrong clock or unit would make the supervisor's identity of
    /// every child wrong). Children made back to back cross clock ticks,
    /// so both outcomes of the bracket occur.
    #[test]
    fn a_started_childs_starttime_is_what_proc_shows() {
        let mut known = 0;
        for _ in 0..200 {
            let process = Process {
                program: OsStr::new("/bin/sleep"),
                args: &["5".to_string()],
                env: &[],
                cwd: None,
                credentials: None,
                cgroup: None,
                nofile: None,
            };
            let spawned = start(&process).expect("start /bin/sleep");
            let pid = spawned.pid;
            let shown = crate::proc::starttime_of(pid).expect("its /proc/PID/stat");
            // SAFETY: our own child, killed and reaped here.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            reaped(pid);
            if let Some(t) = spawned.starttime {
                assert_eq!(t, shown, "child {pid}");
                known += 1;
            }
        }
        assert!(known > 150, "only {known} of 200 starttimes known from the clock");
    }
}
