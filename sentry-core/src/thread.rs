//! Threads for the one-per-child monitors: POSIX threads on stacks from a
//! pool of this module's own, each stack with a guard page below it, each
//! thread running one closure at a time, joined for a value like
//! `std::thread`'s. A thread whose closure ended waits for the next one
//! (at most 5 s, at most 256 waiting, named `sentry-idle`) while a core
//! runs, so a restart does not make and end a thread; when a core ends,
//! the waiting threads are ended and joined, and when the last one ends,
//! every thread of the pool. It knows nothing of what the threads do.
//!
//! Why not `std::thread`: a thread is made for every child at every start,
//! and for every child again after a reload's exec, where the children are
//! unwatched until the last one runs. Measured on a 2-core machine, making
//! 1 000 threads that then wait cost ~25 ms with `std::thread` (glibc maps
//! and guards each stack, std maps and guards an alternate signal stack in
//! each new thread, all under the address space's lock that the new
//! threads' page faults also take), ~17 ms with plain `pthread_create`, and
//! 13–15 ms on stacks mapped (and guarded) beforehand. Kept for the next
//! closure, 100 children SIGKILLed at once cost the process ~7 % less CPU
//! (no thread's start and end, no stack's pages given back and faulted in).
//!
//! What changes for the code that runs on them: a panic is caught and
//! returned by [`Thread::join`], as std does; a stack overflow hits the
//! guard page and ends the process with SIGSEGV (std would print a message
//! first); `std::thread::current()` works but has no name (the kernel's
//! thread name, `comm`, is set for each closure); a closure's thread-locals
//! outlive it, for the thread's next closure.

use std::ffi::c_void;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Usable size of every stack (bytes). glibc keeps a thread's static TLS
/// and its descriptor at the top of a stack it is given (about 2 KiB here).
pub(crate) const STACK_SIZE: usize = 64 * 1024;
/// Stacks mapped at once when the pool is empty.
const CHUNK: usize = 32;
/// Threads kept waiting for their next closure at most (a thread coming
/// back to a full pool ends).
const MAX_IDLE: usize = 256;
/// How long a thread waits for its next closure before it ends.
const IDLE_LIFE: Duration = Duration::from_secs(5);
/// The name of a thread waiting for its next closure.
const IDLE_NAME: &[u8; 12] = b"sentry-idle\0";
/// How long retiring the pool waits for threads still running a closure.
const RETIRE_WAIT: Duration = Duration::from_secs(2);

/// A closure running on a pool thread, to [`Thread::join`]. Dropped
/// unjoined, the closure runs on and its value is dropped.
pub(crate) struct Thread<T> {
    packet: Arc<Packet<T>>,
}

struct Packet<T> {
    result: Mutex<Option<std::thread::Result<T>>>,
    done: Condvar,
}

/// A closure and where its value goes, its type erased.
trait Task: Send {
    /// Runs the closure (once), catching its panic.
    fn run(&mut self);
    /// Gives its value (or panic) to [`Thread::join`].
    fn give(self: Box<Self>);
}

struct Closure<F, T> {
    f: Option<F>,
    value: Option<std::thread::Result<T>>,
    packet: Arc<Packet<T>>,
}

impl<F: FnOnce() -> T + Send, T: Send> Task for Closure<F, T> {
    fn run(&mut self) {
        if let Some(f) = self.f.take() {
            // What `f` captured is dropped when it returns.
            self.value = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        }
    }

    fn give(self: Box<Self>) {
        *self.packet.result.lock().unwrap_or_else(|p| p.into_inner()) = self.value;
        self.packet.done.notify_all();
    }
}

type Job = Box<dyn Task>;

/// What a waiting thread is told.
enum Order {
    Wait,
    Run(Job, [u8; 16]),
    End,
}

/// One pool thread, as the pool knows it.
struct Worker {
    order: Mutex<Order>,
    given: Condvar,
    /// Set (under the pool's lock) when the thread has ended.
    ended: AtomicBool,
}

/// The process's pool (see [`Pool`]).
static POOL: Pool = Pool::new(IDLE_LIFE);

/// Threads that run one closure after another: a thread whose closure
/// ended waits (at most its idle life) for the next one instead of ending,
/// so a child's restart does not make and end a thread — while some core
/// uses the pool ([`Users`]).
struct Pool {
    state: Mutex<PoolState>,
    /// Signalled when a thread ends.
    ended: Condvar,
    idle_life: Duration,
}

struct PoolState {
    /// Threads waiting for a closure, the latest to come back last.
    idle: Vec<Arc<Worker>>,
    /// Threads alive (running a closure or waiting), not yet ended.
    alive: usize,
    /// Threads that ended, with their stacks: joined (and the stacks
    /// reused) by the next [`spawn`] or retirement.
    ended: Vec<(libc::pthread_t, usize)>,
    /// Holders of [`Users`]: with none, a thread coming back ends at once.
    users: usize,
}

/// Held by each core while it runs (and by a suspended one): its monitors'
/// threads are kept for the next ones. When a holder drops it, every
/// waiting thread is ended and joined — a core's monitors have all ended
/// by then, and each thread waits among the others before its closure's
/// value is given — so that an embedding host that shut one supervisor
/// down has no thread of it left, even while another runs; when the last
/// holder drops it, threads still running a closure are waited for (at
/// most [`RETIRE_WAIT`]) and joined too.
pub(crate) struct Users(&'static Pool);

impl Users {
    pub fn enter() -> Users {
        POOL.enter()
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.users -= 1;
        let last = state.users == 0;
        self.0.retire(state, last);
    }
}

/// Runs `f` on a thread named `name` (cut to 15 bytes): one that ran an
/// earlier closure and waits for the next, or a new one.
///
/// # Errors
/// The stack cannot be mapped (ENOMEM), or `pthread_create` fails (EAGAIN
/// at the process or thread limit).
pub(crate) fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<Thread<T>> {
    POOL.spawn(name, f)
}

impl Pool {
    const fn new(idle_life: Duration) -> Pool {
        Pool {
            state: Mutex::new(PoolState { idle: Vec::new(), alive: 0, ended: Vec::new(), users: 0 }),
            ended: Condvar::new(),
            idle_life,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&'static self) -> Users {
        self.lock().users += 1;
        Users(self)
    }

    fn spawn<T: Send + 'static>(
        &'static self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<Thread<T>> {
        let packet = Arc::new(Packet { result: Mutex::new(None), done: Condvar::new() });
        let mut short = [0u8; 16];
        let n = name.len().min(15);
        short[..n].copy_from_slice(&name.as_bytes()[..n]);
        let job: Job = Box::new(Closure { f: Some(f), value: None, packet: packet.clone() });
        let waiting = {
            let mut state = self.lock();
            join_ended(&mut state);
            state.idle.pop()
        };
        match waiting {
            Some(worker) => {
                *worker.order.lock().unwrap_or_else(|p| p.into_inner()) = Order::Run(job, short);
                worker.given.notify_one();
            }
            None => self.start_worker(job, short)?,
        }
        Ok(Thread { packet })
    }

    fn start_worker(&'static self, job: Job, name: [u8; 16]) -> io::Result<()> {
        let stack = stacks::take()?;
        let start = Box::into_raw(Box::new(Start { pool: self, job, name, stack }));
        self.lock().alive += 1;
        let mut id: libc::pthread_t = 0;
        // SAFETY: the attribute object is initialised before use and
        // destroyed after; the stack is ours alone (taken from the pool,
        // returned only after the thread is joined); `start` is given to
        // the new thread, or taken back here when no thread was made.
        let rc = unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            libc::pthread_attr_init(&mut attr);
            libc::pthread_attr_setstack(&mut attr, stack as *mut c_void, STACK_SIZE);
            let rc = libc::pthread_create(&mut id, &attr, trampoline, start.cast());
            libc::pthread_attr_destroy(&mut attr);
            rc
        };
        if rc != 0 {
            self.lock().alive -= 1;
            // SAFETY: no thread was made, so `start` is still only ours.
            drop(unsafe { Box::from_raw(start) });
            stacks::give(stack);
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Puts the calling pool thread among the waiting ones, unless it is
    /// to end (no core uses the pool, or it is full); whether it was.
    fn come_back(&self, me: &Arc<Worker>) -> bool {
        let mut state = self.lock();
        if state.users == 0 || state.idle.len() >= MAX_IDLE {
            return false;
        }
        state.idle.push(me.clone());
        true
    }

    /// Waits for the calling pool thread's next closure: `None` when it
    /// is to end (the pool was retired, or nothing came within its idle life).
    fn next(&self, me: &Arc<Worker>) -> Option<(Job, [u8; 16])> {
        let mut order = me.order.lock().unwrap_or_else(|p| p.into_inner());
        let by = Instant::now() + self.idle_life;
        loop {
            match std::mem::replace(&mut *order, Order::Wait) {
                Order::Run(job, name) => return Some((job, name)),
                Order::End => return None,
                Order::Wait => {}
            }
            let left = by.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(order);
                // Taken out of the waiting ones here, it ends; if `spawn`
                // or a retirement took it first, its order is on the way.
                let mut state = self.lock();
                if let Some(i) = state.idle.iter().position(|w| Arc::ptr_eq(w, me)) {
                    state.idle.swap_remove(i);
                    return None;
                }
                drop(state);
                order = me.order.lock().unwrap_or_else(|p| p.into_inner());
                while matches!(*order, Order::Wait) {
                    order = me.given.wait(order).unwrap_or_else(|p| p.into_inner());
                }
                continue;
            }
            order = me.given.wait_timeout(order, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Ends and joins every waiting thread, and with `all` every thread
    /// of the pool (those running a closure once it ends, for at most
    /// [`RETIRE_WAIT`]).
    fn retire(&self, mut state: MutexGuard<'_, PoolState>, all: bool) {
        let waiting = std::mem::take(&mut state.idle);
        for worker in &waiting {
            *worker.order.lock().unwrap_or_else(|p| p.into_inner()) = Order::End;
            worker.given.notify_one();
        }
        let by = Instant::now() + RETIRE_WAIT;
        let busy = |state: &PoolState| {
            if all {
                state.alive > 0
            } else {
                waiting.iter().any(|w| !w.ended.load(Ordering::Relaxed))
            }
        };
        while busy(&state) {
            let left = by.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.ended.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        join_ended(&mut state);
    }
}

/// Joins the threads that ended and returns their stacks to the pool.
fn join_ended(state: &mut PoolState) {
    for (id, stack) in state.ended.drain(..) {
        // SAFETY: a thread of this module that said it ended, joined once
        // (taken from `ended`). Joined, it no longer runs on its stack.
        unsafe { libc::pthread_join(id, std::ptr::null_mut()) };
        stacks::give(stack);
    }
}

/// What a new thread starts with (leaked by `start_worker`, taken back by it).
struct Start {
    pool: &'static Pool,
    job: Job,
    name: [u8; 16],
    stack: usize,
}

extern "C" fn trampoline(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `start_worker` leaked this box for this thread alone.
    let Start { pool, job, name, stack } = *unsafe { Box::from_raw(arg.cast::<Start>()) };
    let me = Arc::new(Worker { order: Mutex::new(Order::Wait), given: Condvar::new(), ended: AtomicBool::new(false) });
    let mut next = Some((job, name));
    while let Some((mut job, name)) = next.take() {
        // SAFETY: a NUL-terminated name of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        job.run();
        // Back among the waiting ones before the value is given: a spawn
        // right after the join finds this thread. Named for no child meanwhile.
        let waits = pool.come_back(&me);
        if waits {
            // SAFETY: a NUL-terminated name of at most 16 bytes.
            unsafe { libc::prctl(libc::PR_SET_NAME, IDLE_NAME.as_ptr()) };
        }
        job.give();
        if waits {
            next = pool.next(&me);
        }
    }
    let mut state = pool.lock();
    state.alive -= 1;
    me.ended.store(true, Ordering::Relaxed);
    // SAFETY: pthread_self has no preconditions.
    state.ended.push((unsafe { libc::pthread_self() }, stack));
    pool.ended.notify_all();
    std::ptr::null_mut()
}

impl<T> Thread<T> {
    /// Waits for the closure to end: its value, or the payload of its
    /// panic. What it captured is dropped by then.
    pub fn join(self) -> std::thread::Result<T> {
        let mut result = self.packet.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = result.take() {
                return r;
            }
            result = self.packet.done.wait(result).unwrap_or_else(|p| p.into_inner());
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

    fn tid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    fn alive(tid: i32) -> bool {
        std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let by = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < by, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A pool of its own, so that other tests' threads do not take its.
    fn own_pool(idle_life: Duration) -> &'static Pool {
        Box::leak(Box::new(Pool::new(idle_life)))
    }

    #[test]
    fn a_thread_runs_the_next_closure_while_the_pool_is_used_and_is_joined_when_it_no_longer_is() {
        let pool = own_pool(Duration::from_secs(60));
        let users = pool.enter();
        let first = pool.spawn("sentry-one", tid).unwrap().join().unwrap();
        // Back among the waiting ones before its value was given.
        assert_eq!(pool.lock().idle.len(), 1);
        let (second, name) = pool
            .spawn("sentry-two", || (tid(), std::fs::read_to_string("/proc/thread-self/comm").unwrap()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(second, first, "the thread that ran the first closure runs the second");
        assert_eq!(name, "sentry-two\n", "named for the closure it runs");
        assert!(pool.spawn("sentry-panic", || -> u32 { panic!("on purpose") }).unwrap().join().is_err());
        assert_eq!(pool.spawn("sentry-three", tid).unwrap().join().unwrap(), first, "a panic does not end the thread");
        // Two at once need two threads; both wait afterwards.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let held = pool.spawn("sentry-held", move || (tid(), rx.recv())).unwrap();
        let other = pool.spawn("sentry-other", tid).unwrap().join().unwrap();
        tx.send(()).unwrap();
        let (held, _) = held.join().unwrap();
        assert_ne!(held, other);
        assert_eq!(pool.lock().idle.len(), 2, "both threads wait");
        assert!(alive(held) && alive(other));
        assert_eq!(pool.lock().alive, 2);
        // A closure still running when the last user leaves is waited for.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let running = pool.spawn("sentry-late", move || (tid(), rx.recv())).unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            tx.send(()).unwrap();
        });
        drop(users);
        let (last, _) = running.join().unwrap();
        assert!(!alive(held) && !alive(other) && !alive(last), "every thread ended and was joined");
        let state = pool.lock();
        assert_eq!((state.alive, state.idle.len(), state.ended.len()), (0, 0, 0));
        drop(state);
        late.join().unwrap();
        // Unused, a thread ends after its closure.
        let once = pool.spawn("sentry-once", tid).unwrap().join().unwrap();
        wait_until("an unused pool's thread to end", || !alive(once));
    }

    #[test]
    fn a_user_leaving_ends_the_waiting_threads_but_not_those_still_running() {
        let pool = own_pool(Duration::from_secs(60));
        let (first_user, second_user) = (pool.enter(), pool.enter());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let running = pool.spawn("sentry-busy", move || (tid(), rx.recv())).unwrap();
        let waiting = pool.spawn("sentry-done", tid).unwrap().join().unwrap();
        let name = std::fs::read_to_string(format!("/proc/self/task/{waiting}/comm")).unwrap();
        assert_eq!(name, "sentry-idle\n", "a waiting thread is named for no child");
        drop(first_user);
        assert!(!alive(waiting), "the waiting thread was ended and joined");
        tx.send(()).unwrap();
        let (busy, _) = running.join().unwrap();
        assert!(alive(busy), "the running one was left to its closure, and waits now");
        drop(second_user);
        assert!(!alive(busy));
    }

    #[test]
    fn a_waiting_thread_ends_after_its_idle_life() {
        let pool = own_pool(Duration::from_millis(100));
        let users = pool.enter();
        let first = pool.spawn("sentry-idle", tid).unwrap().join().unwrap();
        wait_until("the idle thread to end", || !alive(first));
        assert_eq!(pool.lock().alive, 0);
        let next = pool.spawn("sentry-new", tid).unwrap().join().unwrap();
        assert_ne!(next, first, "a new thread, on the old one's stack");
        assert!(pool.lock().ended.is_empty(), "the ended thread was joined by the next spawn");
        drop(users);
        assert!(!alive(next));
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
