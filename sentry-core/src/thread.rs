//! Threads for the one-per-child monitors: POSIX threads on stacks from a
//! pool of this module's own, each stack with a guard page below it, joined
//! for a value like `std::thread`'s. It knows nothing of what the threads do.
//!
//! Why not `std::thread`: a thread is made for every child at every start,
//! and for every child again after a reload's exec, where the children are
//! unwatched until the last one runs. Measured on a 2-core machine, making
//! 1 000 threads that then wait cost ~25 ms with `std::thread` (glibc maps
//! and guards each stack, std maps and guards an alternate signal stack in
//! each new thread, all under the address space's lock that the new
//! threads' page faults also take), ~17 ms with plain `pthread_create`, and
//! 13–15 ms on stacks mapped (and guarded) beforehand.
//!
//! What changes for the code that runs on them: a panic is caught and
//! returned by [`Thread::join`], as std does; a stack overflow hits the
//! guard page and ends the process with SIGSEGV (std would print a message
//! first); `std::thread::current()` works but has no name (the kernel's
//! thread name, `comm`, is set).

use std::ffi::c_void;
use std::io;
use std::sync::{Arc, Mutex};

/// Usable size of every stack (bytes). glibc keeps a thread's static TLS
/// and its descriptor at the top of a stack it is given (about 2 KiB here).
pub(crate) const STACK_SIZE: usize = 64 * 1024;
/// Stacks mapped at once when the pool is empty.
const CHUNK: usize = 32;

/// A running thread, to [`Thread::join`]. Dropped unjoined, it is detached
/// and its stack is never reused.
pub(crate) struct Thread<T> {
    id: libc::pthread_t,
    packet: Arc<Packet<T>>,
    stack: Option<usize>,
}

struct Packet<T> {
    result: Mutex<Option<std::thread::Result<T>>>,
}

/// What the new thread starts with (leaked by `spawn`, taken back by it).
struct Start<T> {
    f: Box<dyn FnOnce() -> T + Send>,
    packet: Arc<Packet<T>>,
    /// At most 15 bytes and a NUL (`PR_SET_NAME`, prctl(2)).
    name: [u8; 16],
}

/// Starts `f` on a new thread named `name` (cut to 15 bytes).
///
/// # Errors
/// The stack cannot be mapped (ENOMEM), or `pthread_create` fails (EAGAIN
/// at the process or thread limit).
pub(crate) fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<Thread<T>> {
    let stack = stacks::take()?;
    let packet = Arc::new(Packet { result: Mutex::new(None) });
    let mut short = [0u8; 16];
    let n = name.len().min(15);
    short[..n].copy_from_slice(&name.as_bytes()[..n]);
    let start = Box::into_raw(Box::new(Start { f: Box::new(f), packet: packet.clone(), name: short }));
    let mut id: libc::pthread_t = 0;
    // SAFETY: the attribute object is initialised before use and destroyed
    // after; the stack is ours alone (taken from the pool, returned only
    // after the thread is joined); `start` is given to the new thread, or
    // taken back here when no thread was made.
    let rc = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstack(&mut attr, stack as *mut c_void, STACK_SIZE);
        let rc = libc::pthread_create(&mut id, &attr, trampoline::<T>, start.cast());
        libc::pthread_attr_destroy(&mut attr);
        rc
    };
    if rc != 0 {
        // SAFETY: no thread was made, so `start` is still only ours.
        drop(unsafe { Box::from_raw(start) });
        stacks::give(stack);
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(Thread { id, packet, stack: Some(stack) })
}

extern "C" fn trampoline<T>(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `spawn` leaked this box for this thread alone.
    let start = unsafe { Box::from_raw(arg.cast::<Start<T>>()) };
    // SAFETY: a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, start.name.as_ptr()) };
    let Start { f, packet, .. } = *start;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    *packet.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
    std::ptr::null_mut()
}

impl<T> Thread<T> {
    /// Waits for the thread to end: its value, or the payload of its panic.
    pub fn join(mut self) -> std::thread::Result<T> {
        // SAFETY: a thread made by `spawn`, neither joined nor detached
        // (`self` is consumed; `Drop` sees `stack` taken).
        unsafe { libc::pthread_join(self.id, std::ptr::null_mut()) };
        // The thread no longer runs on its stack once joined (the kernel
        // wakes the joiner after the thread's last user instruction).
        if let Some(stack) = self.stack.take() {
            stacks::give(stack);
        }
        self.packet
            .result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Err(Box::new("no result")))
    }
}

impl<T> Drop for Thread<T> {
    fn drop(&mut self) {
        if self.stack.take().is_some() {
            // SAFETY: not joined (join takes the stack first). The stack is
            // not returned: the thread may still run on it.
            unsafe { libc::pthread_detach(self.id) };
        }
    }
}

/// The pool: stacks mapped [`CHUNK`] at a time and never unmapped (their
/// number is bounded by the most monitors ever running at once, itself
/// bounded by the fd budget); a returned stack's pages are given back to
/// the kernel, so an idle pool holds no memory.
///
/// A chunk is one mapping, and each stack's guard page is a guard region
/// (`MADV_GUARD_INSTALL`, Linux 6.13, madvise(2)) that leaves it one: made
/// by `mprotect`, the 1 000 guards of a reload split it into 2 000 mappings,
/// each split under the address space's write lock (2.5–3 ms against
/// 0.8–0.9 ms for the guard regions, measured here), and every later
/// page fault, `execve` and `smaps_rollup` read walks them. Where the
/// kernel refuses it (EINVAL), `mprotect(PROT_NONE)` makes the guard.
mod stacks {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    /// `MADV_GUARD_INSTALL` (not in every libc yet).
    const MADV_GUARD_INSTALL: libc::c_int = 102;
    /// Whether guard regions are to be tried (until the kernel refuses one).
    static GUARD_REGIONS: AtomicBool = AtomicBool::new(true);

    /// Makes the page at `at` a guard: any access to it is SIGSEGV.
    fn guard(at: usize, len: usize) -> bool {
        // SAFETY: `at..at + len` is a page of a mapping of this pool that
        // no stack covers; madvise and mprotect only change how it faults.
        unsafe {
            if GUARD_REGIONS.load(Ordering::Relaxed) {
                if libc::madvise(at as *mut c_void, len, MADV_GUARD_INSTALL) == 0 {
                    return true;
                }
                GUARD_REGIONS.store(false, Ordering::Relaxed);
            }
            libc::mprotect(at as *mut c_void, len, libc::PROT_NONE) == 0
        }
    }

    fn page() -> usize {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            p as usize
        } else {
            4096
        }
    }

    /// A stack's lowest address (its guard page is just below).
    pub(super) fn take() -> io::Result<usize> {
        let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stack) = free.pop() {
            return Ok(stack);
        }
        let guard = page();
        let each = guard + STACK_SIZE;
        // SAFETY: a fresh private anonymous mapping; nothing else refers
        // to it, and no stack in it is handed out before its guard is made.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                each * CHUNK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base as usize;
        for i in 0..CHUNK {
            if !self::guard(base + i * each, guard) {
                break;
            }
            free.push(base + i * each + guard);
        }
        free.pop().ok_or_else(io::Error::last_os_error)
    }

    pub(super) fn give(stack: usize) {
        // SAFETY: a stack of the pool whose thread has ended; its pages read
        // as zeroes again.
        unsafe { libc::madvise(stack as *mut c_void, STACK_SIZE, libc::MADV_DONTNEED) };
        FREE.lock().unwrap_or_else(|p| p.into_inner()).push(stack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_panics_names_and_reused_stacks() {
        let t = spawn("sentry-test", || {
            let mut comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            comm.pop();
            comm
        })
        .unwrap();
        assert_eq!(t.join().unwrap(), "sentry-test");
        let p = spawn("sentry-panic", || -> u32 { panic!("on purpose") }).unwrap();
        assert!(p.join().is_err(), "a panic is returned, not propagated");
        // Deep enough to need most of the stack, on reused stacks.
        for _ in 0..3 * CHUNK {
            let t = spawn("sentry-deep", || {
                let buf = [7u8; STACK_SIZE / 2];
                std::hint::black_box(&buf).iter().map(|&b| b as u64).sum::<u64>()
            })
            .unwrap();
            assert_eq!(t.join().unwrap(), 7 * (STACK_SIZE as u64 / 2));
        }
    }

    /// What a process forked here gets reading `at`: 0, or the signal that ended it.
    fn reading(at: usize) -> i32 {
        // SAFETY: the child only reads one byte and exits; the parent waits for it.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                std::ptr::read_volatile(at as *const u8);
                libc::_exit(0);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            if libc::WIFSIGNALED(status) {
                libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            }
        }
    }

    #[test]
    fn below_every_stack_is_a_guard_page() {
        let taken: Vec<usize> = (0..CHUNK + 1).map(|_| stacks::take().unwrap()).collect();
        for &stack in &taken {
            assert_eq!(reading(stack), 0, "the stack's lowest byte is readable");
            assert_eq!(reading(stack + STACK_SIZE - 1), 0, "and its highest");
            assert_eq!(reading(stack - 1), libc::SIGSEGV, "the page below it is a guard");
        }
        taken.into_iter().for_each(stacks::give);
    }
}
