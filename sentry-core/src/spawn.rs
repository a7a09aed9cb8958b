//! Starting a process without copying the supervisor. [`start`] runs a
//! [`Process`] the way Go's runtime and glibc's `posix_spawn` do on Linux:
//! `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)` on a small stack of
//! its own, so the child shares Sentry's memory until its `execve` instead of
//! copying page tables — a spawn costs the same with a thousand children
//! running as with none — and is born in its cgroup, which spares the
//! migration a write to `cgroup.procs` costs (an RCU grace period, 5–15 ms
//! when it is not one of many back to back). This module owns that one
//! unsafe step and the data it reads; it knows nothing of entries, slots,
//! cgroup naming or output.
//!
//! # Safety argument
//!
//! The child runs on the caller's memory, on [`Stack`], while the calling
//! thread is suspended (`CLONE_VFORK`: the kernel resumes it once the child
//! has exec'd or exited). So:
//!
//! - Everything the child reads — paths, argv, envp, credentials, fds — is
//!   prepared before the clone in [`Image`], which outlives it, and is only
//!   read. The child writes to memory only in [`Image::fail`] (two atomics)
//!   and its own stack.
//! - It allocates nothing, takes no lock, never unwinds: no Rust `std` call,
//!   only `libc` functions that are plain system calls. Credentials change by
//!   raw `setgroups`/`setgid`/`setuid` system calls: glibc's wrappers would,
//!   in a process it believes multi-threaded (the child sees Sentry's thread
//!   list), signal every thread of *Sentry* to change theirs too (`setxid`).
//! - Signals: the caller blocks them all before the clone; the child resets
//!   every handler Sentry installed (its handler table is a copy, no
//!   `CLONE_SIGHAND`) and SIGPIPE to the default, then empties its mask just
//!   before `execve`. A signal for the child in between stays pending for the
//!   new program, which never runs a Sentry handler in the child — a SIGTERM
//!   there would otherwise tell *Sentry* to stop.
//! - `errno` and the stack protector live in the suspended thread's TLS,
//!   which the child shares: harmless, the thread is not running.
//! - PDEATHSIG belongs to the forking thread (DESIGN): this runs on the core
//!   thread, as `fork` did.
//!
//! Where `clone3` is refused (`ENOSYS`: a seccomp filter such as Docker's
//! default, or a kernel before 5.3; `EINVAL` for `CLONE_INTO_CGROUP` before
//! 5.7), glibc's `clone` does the same without `CLONE_INTO_CGROUP` and the
//! child moves itself into its cgroup with a write to `cgroup.procs`; the
//! switch is made once per process and said in the log.

use std::cell::RefCell;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Who the child runs as: raw ids, looked up by the caller before the clone.
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
    pub env: &'a [(OsString, OsString)],
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
}

/// Which step of the child failed (`Image::stage`).
#[derive(Clone, Copy)]
#[repr(i32)]
enum Stage {
    None = 0,
    ProcessGroup,
    Cgroup,
    Stdio,
    Groups,
    Gid,
    Uid,
    Cwd,
    Limit,
    Parent,
    Exec,
}

impl Stage {
    fn from(n: i32) -> Stage {
        [
            Stage::None,
            Stage::ProcessGroup,
            Stage::Cgroup,
            Stage::Stdio,
            Stage::Groups,
            Stage::Gid,
            Stage::Uid,
            Stage::Cwd,
            Stage::Limit,
            Stage::Parent,
            Stage::Exec,
        ]
        .get(n as usize)
        .copied()
        .unwrap_or(Stage::Exec)
    }
}

/// The child's whole view of the world, prepared before the clone. Pointers
/// point into `Prepared`, which the caller keeps alive across the clone.
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
    /// The cgroup directory the child moves itself into (-1: none, or born there).
    place_in: RawFd,
    /// -1: leave the open-file limit.
    nofile: i64,
    /// Signals to reset to their default action.
    reset: libc::sigset_t,
    /// Written by the child when a step fails, then it exits.
    stage: AtomicI32,
    errno: AtomicI32,
}

impl Image {
    /// In the child: records why it cannot go on and exits.
    unsafe fn fail(&self, stage: Stage, errno: i32) -> ! {
        self.errno.store(errno, Ordering::SeqCst);
        self.stage.store(stage as i32, Ordering::SeqCst);
        libc::_exit(127)
    }
}

/// The owned data behind an [`Image`].
struct Prepared {
    _strings: Vec<CString>,
    candidates: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

/// Whether `clone3` was refused once; then glibc's `clone` is used from then on.
static CLONE3_REFUSED: AtomicBool = AtomicBool::new(false);

/// Starts `process` with stdin from `/dev/null`, stdout and stderr to fresh
/// pipes, in a process group of its own, every signal at its default and
/// unblocked (SIGPIPE too; what Sentry was started with `SIG_IGN` stays
/// ignored, as across any exec), PDEATHSIG SIGKILL, and only fds 0–2 open
/// across the exec. Returns once the child runs the new program (`execve`
/// has replaced its memory) or has failed; a failed child is reaped here and
/// its error names the step (`cannot move into its cgroup: …`), except a
/// failed `execve`, whose error is the system's (`No such file or directory
/// (os error 2)`), as with `std::process::Command`.
pub(crate) fn start(process: &Process<'_>) -> io::Result<Spawned> {
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in argument"));
    let mut strings = Vec::new();
    let mut candidates = Vec::new();
    for path in candidates_of(process.program, process.env) {
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
    let prepared = Prepared {
        candidates: pointers(&candidates),
        argv: pointers(&argv),
        envp: pointers(&envp),
        _strings: Vec::new(),
    };
    let prepared = Prepared { _strings: strings, ..prepared };

    let stdin = above_stdio(open_null()?)?;
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let (out_write, err_write) = (above_stdio(out_write)?, above_stdio(err_write)?);
    let credentials = process.credentials;
    let groups = credentials.and_then(|c| c.groups.as_ref());
    let mut image = Image {
        candidates: prepared.candidates.as_ptr(),
        argv: prepared.argv.as_ptr(),
        envp: prepared.envp.as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        has_credentials: credentials.is_some(),
        groups: groups.map_or(std::ptr::null(), |g| g.as_ptr()),
        groups_len: groups.map_or(-1, |g| g.len() as isize),
        gid: credentials.map_or(0, |c| c.gid),
        uid: credentials.and_then(|c| c.uid).map_or(-1, i64::from),
        stdio: [stdin.as_raw_fd(), out_write.as_raw_fd(), err_write.as_raw_fd()],
        place_in: -1,
        nofile: process.nofile.map_or(-1, |n| n.min(i64::MAX as u64) as i64),
        reset: handled_signals(),
        stage: AtomicI32::new(Stage::None as i32),
        errno: AtomicI32::new(0),
    };
    let pid = STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        if stack.is_none() {
            *stack = Some(Stack::new()?);
        }
        let stack = stack.as_ref().expect("allocated above");
        let _blocked = BlockedSignals::all();
        if let Some(cgroup) = process.cgroup {
            if !CLONE3_REFUSED.load(Ordering::Relaxed) {
                // SAFETY: see the module's safety argument; `image` and
                // `prepared` live until after the clone returns.
                match unsafe { clone3_into(cgroup, stack, &image) } {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG)) => {
                        CLONE3_REFUSED.store(true, Ordering::Relaxed);
                        log::warn!("clone3 with CLONE_INTO_CGROUP is refused here ({e}): children move into their cgroups themselves");
                    }
                    other => return other,
                }
            }
            image.place_in = cgroup.as_raw_fd();
        }
        // SAFETY: as above.
        unsafe { clone_vfork(stack, &image) }
    })?;
    drop(prepared);
    let errno = image.errno.load(Ordering::SeqCst);
    if errno != 0 {
        // The child has exited (CLONE_VFORK resumed us): reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let e = io::Error::from_raw_os_error(errno);
        let what = match Stage::from(image.stage.load(Ordering::SeqCst)) {
            Stage::Exec | Stage::None => return Err(e),
            Stage::ProcessGroup => "cannot make its process group",
            Stage::Cgroup => "cannot move into its cgroup",
            Stage::Stdio => "cannot set up its stdin, stdout and stderr",
            Stage::Groups => "cannot set its supplementary groups",
            Stage::Gid => "cannot change its group",
            Stage::Uid => "cannot change its user",
            Stage::Cwd => "cannot enter its working directory",
            Stage::Limit => "cannot set its open-file limit",
            Stage::Parent => "cannot ask to die with Sentry",
        };
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(Spawned { pid, stdout: out_read, stderr: err_read })
}

/// The paths `execvp(3)` would try for `program`, in order: `program` itself
/// if it holds a `/`, else each directory of the `PATH` in `env` (glibc's
/// default `/bin:/usr/bin` without one; an empty entry is the current directory).
fn candidates_of(program: &OsStr, env: &[(OsString, OsString)]) -> Vec<Vec<u8>> {
    let name = program.as_bytes();
    if name.contains(&b'/') || name.is_empty() {
        return vec![name.to_vec()];
    }
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map_or(&b"/bin:/usr/bin"[..], |(_, v)| v.as_bytes());
    path.split(|&b| b == b':')
        .map(|dir| match dir {
            b"" => name.to_vec(),
            _ => [dir, if dir.ends_with(b"/") { b"" } else { b"/" }, name].concat(),
        })
        .collect()
}

/// The code of the child, on [`Stack`]; never returns. Only system calls.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Image` the parent prepared and keeps alive; see
    // the module's safety argument for what may run here.
    unsafe {
        let image = &*(arg as *const Image);
        let errno = || *libc::__errno_location();
        // Handlers first (signals are blocked until the end).
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..65 {
            if libc::sigismember(&image.reset, sig) == 1 {
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            image.fail(Stage::ProcessGroup, errno());
        }
        if image.place_in >= 0 {
            let procs = libc::openat(image.place_in, c"cgroup.procs".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if procs < 0 || libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                image.fail(Stage::Cgroup, errno());
            }
            libc::close(procs);
        }
        for (target, &fd) in image.stdio.iter().enumerate() {
            // dup2 clears CLOEXEC on the copy; the sources are all above 2.
            if libc::dup2(fd, target as i32) < 0 {
                image.fail(Stage::Stdio, errno());
            }
        }
        if image.has_credentials {
            // Raw system calls: see the module's safety argument.
            // Without CAP_SETGID (Sentry not root) the groups cannot change;
            // setgid/setuid below then say whether the user can.
            if image.groups_len >= 0
                && libc::syscall(libc::SYS_setgroups, image.groups_len as libc::size_t, image.groups) != 0
                && errno() != libc::EPERM
            {
                image.fail(Stage::Groups, errno());
            }
            if libc::syscall(libc::SYS_setgid, image.gid) != 0 {
                image.fail(Stage::Gid, errno());
            }
            if image.uid >= 0 && libc::syscall(libc::SYS_setuid, image.uid as libc::uid_t) != 0 {
                image.fail(Stage::Uid, errno());
            }
        }
        if !image.cwd.is_null() && libc::chdir(image.cwd) != 0 {
            image.fail(Stage::Cwd, errno());
        }
        // Fds Sentry inherited without CLOEXEC (a jobserver, a shell's
        // spare fds) must not reach children: only 0, 1, 2 cross exec.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        if image.nofile >= 0 {
            let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
                r.rlim_cur = (image.nofile as libc::rlim_t).min(r.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    image.fail(Stage::Limit, errno());
                }
            }
        }
        // After the change of credentials above, which clears PDEATHSIG.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            image.fail(Stage::Parent, errno());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // execvp's search: EACCES is remembered and the search goes on, as
        // do "not there" errors; any other error ends it.
        let mut failure = libc::ENOENT;
        let mut denied = false;
        let mut at = image.candidates;
        while !(*at).is_null() {
            libc::execve(*at, image.argv, image.envp);
            failure = errno();
            match failure {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => break,
            }
            at = at.add(1);
        }
        if denied && matches!(failure, libc::ENOENT | libc::ENOTDIR) {
            failure = libc::EACCES;
        }
        image.fail(Stage::Exec, failure)
    }
}

/// The signals whose disposition the child resets to the default: those
/// Sentry handles (a handler of Sentry's must never run in the child), and
/// SIGPIPE, which Rust's runtime ignores.
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigaction with a null new action only reads.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in 1..65 {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if sig == libc::SIGPIPE || (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN) {
                libc::sigaddset(&mut set, sig);
            }
        }
        set
    }
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

thread_local! {
    /// The child's stack, made at the first spawn of a thread and reused:
    /// `CLONE_VFORK` keeps the caller suspended while a child uses it.
    static STACK: RefCell<Option<Stack>> = const { RefCell::new(None) };
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
        // SAFETY: our own mapping; no child uses it once `start` returned.
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

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)` running [`child`]
/// on `stack`. The child's PID, or the clone's error.
///
/// # Safety
/// `image` must stay valid and unchanged until this returns; see the
/// module's safety argument.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_into(cgroup: BorrowedFd<'_>, stack: &Stack, image: &Image) -> io::Result<i32> {
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
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
unsafe fn clone3_into(_: BorrowedFd<'_>, _: &Stack, _: &Image) -> io::Result<i32> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// glibc's `clone(CLONE_VM | CLONE_VFORK)` running [`child`] on `stack`.
///
/// # Safety
/// As [`clone3_into`].
unsafe fn clone_vfork(stack: &Stack, image: &Image) -> io::Result<i32> {
    let pid = libc::clone(
        child,
        stack.top() as *mut libc::c_void,
        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
        image as *const Image as *mut libc::c_void,
    );
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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

    fn env(path: Option<&str>) -> Vec<(OsString, OsString)> {
        path.map(|p| vec![(OsString::from("PATH"), OsString::from(p))]).unwrap_or_default()
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
}
