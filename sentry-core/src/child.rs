//! Starting one child process and watching it: [`spawn`] starts an entry's
//! command with the environment and credentials SPEC asks for (the clone
//! itself is [`crate::spawn`]'s); [`Monitor`] is the one thread per child that
//! polls its pidfd, its stdout and stderr pipes and a stop fd. The thread never
//! reaps: it tells the core that the child exited and the core reaps, so no
//! exit status can be lost. This module knows nothing of entries' slots or of
//! restart policy.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use crate::config::EntryConfig;
use crate::handoff::KeptFd;
use crate::lifecycle::ChildExit;
use crate::output::{LineSink, LineSplitter, Outbox};
use crate::spawn::{self, Credentials};
use crate::sys;

const READ_CHUNK: usize = 16 * 1024;
/// How long a monitor that has seen its child's exit (and written its
/// last lines) waits for the core's line about it — which can say more
/// than the exit status ("Cannot start …") — before it makes its own.
/// The core wakes it with the line only if it waits (the core is usually
/// first): in a burst of exits the core is late for most monitors, and
/// looks every few ms cost 3–4 wake-ups per exit (measured, 100 killed).
const CLOSING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// The most output pipes one monitor reads (a child's stdout and stderr).
const MAX_STREAMS: usize = 2;
/// At the end, how many chunks of a pipe are read at most.
const DRAIN_CHUNKS: usize = 1024;

/// What a monitor thread tells the core. `gen` is the monitor's generation,
/// given by the core at [`Monitor::start`] and never reused: a late note can
/// only ever concern the process it was about, even if its PID was reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildNote {
    /// The child exited and waits, unreaped, for the core to reap it.
    Exited { gen: u64 },
    /// The monitor has ended: both pipes reached end of file after the exit,
    /// or it was told to [`Monitor::finish`].
    Closed { gen: u64 },
}

pub(crate) use crate::spawn::Spawned;

/// Who tells a watched process's exit, and in which words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Teller {
    /// Nobody: a stray's or only pipes' (the log gets the monitor's own line).
    Nobody,
    /// An entry's process: `Exited at T with …`.
    Slot,
    /// An `exec` action's program: `Action program exited at T with …`.
    Helper,
}

/// What a monitor says of its process besides the process's own lines.
#[derive(Debug, Clone)]
pub(crate) struct Telling {
    /// The Unix time the core started it at, for the log's opening line
    /// (none for a process adopted across an exec).
    pub opening: Option<u64>,
    pub teller: Teller,
    /// Carried across an exec: the exit line the core told already, and
    /// whether the console showed it and the log has it.
    pub told: Option<String>,
    pub shown: bool,
    pub logged: bool,
}

impl Telling {
    /// A process whose exit is still to come.
    pub fn new(opening: Option<u64>, teller: Teller) -> Telling {
        // Nobody's exit has no console line to show.
        Telling { opening, teller, told: None, shown: teller == Teller::Nobody, logged: false }
    }
}

impl Teller {
    /// The exit line of `exit` at Unix time `at`, in this teller's words.
    pub fn exit_line(self, exit: ChildExit, at: u64) -> String {
        let text = crate::lifecycle::exit_text(exit, at);
        match self {
            Teller::Helper => text.replacen("Exited", "Action program exited", 1),
            Teller::Slot | Teller::Nobody => text,
        }
    }
}

/// Starts `entry`'s command in slot `index`, in the cgroup whose directory
/// is `cgroup` if one is given (see [`spawn::start`]).
pub(crate) fn spawn(
    entry: &EntryConfig,
    index: usize,
    cgroup: Option<BorrowedFd<'_>>,
    notify: Option<&str>,
) -> io::Result<Spawned> {
    let mut own: Vec<(OsString, OsString)> = entry.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    own.push(("SENTRY_ENTRY".into(), entry.name.clone().into()));
    own.push(("SENTRY_INDEX".into(), index.to_string().into()));
    // systemd's readiness protocol and watchdog (sd_notify(3), sd_watchdog_enabled(3)).
    if let Some(socket) = notify {
        own.push(("NOTIFY_SOCKET".into(), socket.into()));
        if let Some(d) = entry.watchdog {
            own.push(("WATCHDOG_USEC".into(), d.as_micros().to_string().into()));
        }
    }
    let (credentials, user) = credentials_of(entry)?;
    own.extend(login_env(&entry.env, user));
    let env = environment(&own);
    let process = spawn::Process {
        program: entry.command.as_ref(),
        args: &entry.args,
        env: &env,
        cwd: entry.cwd.as_ref(),
        credentials: credentials.as_ref(),
        cgroup,
        nofile: crate::budget::original_soft(),
    };
    spawn::start(&process)
}

/// Starts the program of an `exec` action (`argv` is not empty) for
/// `target`: never through a shell, in its own process group, with the same
/// clean state as a child and `SENTRY_ENTRY=target`.
pub(crate) fn spawn_helper(target: &str, argv: &[String], cgroup: Option<BorrowedFd<'_>>) -> io::Result<Spawned> {
    let own = [(OsString::from("SENTRY_ENTRY"), OsString::from(target))];
    let env = environment(&own);
    let process = spawn::Process {
        program: argv[0].as_ref(),
        args: &argv[1..],
        env: &env,
        cwd: None,
        credentials: None,
        cgroup,
        nofile: crate::budget::original_soft(),
    };
    spawn::start(&process)
}

/// A child's whole environment: what Sentry's own environment passes on,
/// then `own` (later entries win), sorted by name; borrowed from `own` and
/// from [`inherited`], so a start copies no variable.
pub(crate) fn environment(own: &[(OsString, OsString)]) -> Vec<(&OsStr, &OsStr)> {
    let own: BTreeMap<&OsStr, &OsStr> = own.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())).collect();
    let mut env: Vec<(&OsStr, &OsStr)> = inherited()
        .iter()
        .filter(|(k, _)| !own.contains_key(k.as_os_str()))
        .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
        .collect();
    env.extend(own);
    env.sort_unstable_by_key(|(k, _)| *k);
    env
}

/// The variables of Sentry's own environment that its children inherit
/// ([`passed_on`]), sorted by name: read at the first start and kept —
/// Sentry sets only its own (`SENTRY_*`) variables, which children never
/// get, so the list cannot change. (Measured: reading and sorting it at
/// every start was ~30 µs of a ~250 µs respawn on a 2-core VM.)
fn inherited() -> &'static [(OsString, OsString)] {
    static INHERITED: std::sync::OnceLock<Vec<(OsString, OsString)>> = std::sync::OnceLock::new();
    INHERITED.get_or_init(|| {
        // Through a map: an `environ` may name a variable twice (a raw
        // `execve` can), and the last one wins, as it always did here.
        let env: BTreeMap<OsString, OsString> = std::env::vars_os().filter(|(k, _)| passed_on(k.as_bytes())).collect();
        env.into_iter().collect()
    })
}

/// Whether a variable of Sentry's environment reaches its children: not
/// Sentry's own (`SENTRY_*`, its `NOTIFY_SOCKET`), nor cargo's and rustup's
/// run-time variables (`cargo run` sets them; a child would build with the
/// wrong toolchain or think it runs under cargo).
fn passed_on(key: &[u8]) -> bool {
    let dropped_prefix = [&b"SENTRY_"[..], b"CARGO_", b"RUSTUP_"].iter().any(|p| key.starts_with(p));
    let dropped = [&b"CARGO"[..], b"RUST_RECURSION_COUNT", b"NOTIFY_SOCKET"].contains(&key);
    !dropped_prefix && !dropped
}

/// A `.user`'s name and home directory.
pub(crate) type Login = (OsString, PathBuf);

/// What login(1) sets from the passwd entry — `HOME`, `USER`, `LOGNAME` —
/// except what `env` (the entry's `.env`) sets itself.
pub(crate) fn login_env(env: &[(String, String)], user: Option<Login>) -> Vec<(OsString, OsString)> {
    let Some((user, home)) = user else { return Vec::new() };
    [("HOME", home.into_os_string()), ("USER", user.clone()), ("LOGNAME", user)]
        .into_iter()
        .filter(|(key, _)| !env.iter().any(|(k, _)| k == key))
        .map(|(key, value)| (key.into(), value))
        .collect()
}

/// Who a child of `entry` runs as (see [`credentials_for`]).
pub(crate) fn credentials_of(entry: &EntryConfig) -> io::Result<(Option<Credentials>, Option<Login>)> {
    credentials_for(entry.user.as_deref(), entry.group.as_deref())
}

/// Who runs as `.user(user)` and `.group(group)`, looked up before the clone
/// (`getpwnam`, `getgrnam` and `getgrouplist` are not async-signal-safe):
/// its ids, and the user's name and home when a user is given (`None` with
/// only a group).
pub(crate) fn credentials_for(
    user: Option<&str>,
    group: Option<&str>,
) -> io::Result<(Option<Credentials>, Option<Login>)> {
    use nix::unistd::{getgrouplist, Group, User};
    let not_found =
        |what: &str, name: &str| io::Error::new(io::ErrorKind::NotFound, format!("no such {what} {name:?}"));
    let user = match user {
        Some(name) => Some(User::from_name(name).map_err(io::Error::from)?.ok_or_else(|| not_found("user", name))?),
        None => None,
    };
    let group = match group {
        Some(name) => Some(Group::from_name(name).map_err(io::Error::from)?.ok_or_else(|| not_found("group", name))?),
        None => None,
    };
    let Some(gid) = group.as_ref().map(|g| g.gid).or(user.as_ref().map(|u| u.gid)) else {
        return Ok((None, None));
    };
    let groups = match &user {
        Some(u) => {
            let name = CString::new(u.name.as_bytes()).map_err(io::Error::other)?;
            Some(getgrouplist(&name, gid).map_err(io::Error::from)?.iter().map(|g| g.as_raw()).collect())
        }
        None => None,
    };
    let credentials = Credentials { uid: user.as_ref().map(|u| u.uid.as_raw()), gid: gid.as_raw(), groups };
    Ok((Some(credentials), user.map(|u| (OsString::from(&u.name), u.dir))))
}

/// One output pipe of a child, with the bytes read from it that are not yet a line.
pub(crate) struct Stream {
    pub fd: OwnedFd,
    pub splitter: LineSplitter,
    /// The pipe's identity as a reload hands it over, once known: read by
    /// the monitor thread when it starts (or taken from the snapshot it
    /// came in), so that a reload does not `fstat` every pipe while the
    /// children are unwatched.
    pub kept: Option<KeptFd>,
}

impl Stream {
    /// A pipe whose identity is not read yet.
    pub fn new(fd: OwnedFd, splitter: LineSplitter) -> Stream {
        Stream { fd, splitter, kept: None }
    }

    /// What a reload hands over for this pipe.
    pub fn kept(&self) -> io::Result<KeptFd> {
        match self.kept {
            Some(k) => Ok(k),
            None => KeptFd::of(&self.fd),
        }
    }
}

/// What a monitor hands back when it is stopped before the end of its child.
pub(crate) struct Quiesced {
    /// Output pipes still open, with their unwritten bytes.
    pub streams: Vec<Stream>,
    pub sink: Option<LineSink>,
    /// Whether the thread had written the process's closing line.
    pub closed: bool,
    /// Whether its console exit line was shown (or is nobody's to show).
    pub exit_shown: bool,
    /// The exit line the thread made from its own look at the exit.
    pub own_exit: Option<String>,
}

impl Quiesced {
    /// What a thread that has ended hands back: nothing left to read or say.
    fn ended(sink: Option<LineSink>) -> Quiesced {
        Quiesced { streams: Vec::new(), sink, closed: true, exit_shown: true, own_exit: None }
    }

    /// Writes whatever the pipes hold right now and the unfinished last
    /// lines, then closes the pipes (the end of supervision: nothing lost).
    /// A log that cannot take them is tried a few more times, for at most
    /// about half a second, and then said so once.
    /// Then `closing`, the log's last line, and `shown`, the console's exit line.
    pub fn drain_and_finish(self, closing: Option<String>, shown: Option<String>, notes: Vec<String>) {
        let Some(sink) = self.sink else { return };
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = Outbox::default();
        for (i, mut stream) in self.streams.into_iter().enumerate() {
            out.resume(&sink, i, &mut stream.splitter);
            drain_now(i, &mut stream, &mut buf, &sink, &mut out);
            write_last_line(i, &mut stream, &sink, &mut out);
        }
        if let Some(text) = shown {
            sink.console.show_event(&sink.entry, sink.pid, &text);
            notes.iter().for_each(|n| sink.console.show_event(&sink.entry, sink.pid, n));
        }
        if let Some(text) = closing {
            out.add_own(&text);
            notes.iter().for_each(|n| out.add_own(n));
        }
        out.flush_last(&sink);
    }
}

/// What is known of a child before its monitor starts (see [`Monitor::start`]).
#[derive(Default)]
pub(crate) struct Known {
    pub pidfd: Option<OwnedFd>,
    pub starttime: Option<u64>,
    pub pidfd_kept: Option<KeptFd>,
}

impl Known {
    /// A child an earlier image handed over: its starttime, and its pidfd
    /// (with what the snapshot recorded of it) if that fd is still the
    /// recorded file.
    pub fn handed_over(starttime: u64, pidfd: Option<KeptFd>) -> Known {
        let fd = pidfd.and_then(KeptFd::adopt);
        Known { pidfd_kept: pidfd.filter(|_| fd.is_some()), pidfd: fd, starttime: Some(starttime) }
    }
}

/// The thread watching one child.
pub(crate) struct Monitor {
    /// The child's pidfd, shared with the thread (none when only pipes are left).
    pidfd: Option<Arc<OwnedFd>>,
    /// The eventfd that interrupts the thread's poll, shared with it: one
    /// fd, not a clone each (a monitor costs the pidfd, two pipes and this).
    stop: Arc<OwnedFd>,
    /// Set before `stop` is signalled: read what is left, then end.
    finish: Arc<AtomicBool>,
    /// What the thread works on between two polls, which the core can take.
    shared: Arc<Shared>,
    thread: crate::thread::Thread<Quiesced>,
    /// The child's starttime once known (0 before).
    starttime: Arc<AtomicU64>,
    /// The pidfd's identity as a reload hands it over, once known (read
    /// by the thread when it starts, or set from the snapshot it came in).
    pidfd_kept: Arc<OnceLock<KeptFd>>,
}

/// A monitor's state, shared by the core and the thread. The thread holds
/// the lock only while it handles what one poll returned, never while it
/// waits; so the core can take the pipes and their unwritten bytes
/// ([`Monitor::park`]) without waking the thread at all.
///
/// A thread whose work was taken never reads or writes again: it waits,
/// holding nothing but its child's pidfd, until the `execve` ends it (the
/// kernel ends a process's other threads at once) or [`Parked::release`]
/// does. Measured on a 2-core machine with 1 000 monitors: waking every
/// thread to hand over and end cost ~55 ms (threads ending one by one in
/// user space), waking them only to hand over ~10 ms; taking the work
/// under each lock costs well under 1 ms, and the kernel ends the threads
/// within the exec in ~9 ms.
struct Shared {
    state: Mutex<Hand>,
    changed: Condvar,
    /// The exit line from the core ([`Monitor::set_closing`]): a lock of
    /// its own, never held across I/O, so that the core does not wait for
    /// a thread that writes to a stuck disk under `state`.
    closing: Mutex<Told>,
    /// Set before the thread is woken to stop wherever it is
    /// ([`Monitor::quiesce`]); a wake-up without it (or `finish`) only
    /// brings the core's exit line.
    halt: AtomicBool,
}

/// What the core told a monitor of its process's end.
#[derive(Default)]
struct Told {
    /// The exit line ([`Monitor::set_closing`]).
    text: Option<String>,
    /// Lines about what came after the exit ([`Monitor::note_after_exit`]),
    /// for the log; shown on the console with the exit line.
    notes: Vec<String>,
    /// The console's exit line was shown: a later note is the core's to show.
    shown: bool,
    /// The thread waits for `text`: [`Monitor::set_closing`] wakes it.
    awaiting: bool,
}

// One per monitor, inside its `Arc`: boxing `Work` would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Hand {
    /// The thread watches.
    Watching(Work),
    /// Taken by the core; the thread waits for the exec or a release.
    Taken,
    Released,
    /// The thread has ended some other way (its child's end, a stop, a panic).
    Ended,
}

/// What a monitor thread carries from one poll to the next.
struct Work {
    streams: Vec<Stream>,
    /// Lines read and not yet written; while it holds any, no stream is read.
    out: Outbox,
    /// Streams at end of file (kept, not polled, until their lines are written).
    ended: [bool; MAX_STREAMS],
    sink: LineSink,
    /// The `[sentry]` line that ends the process's part of the log (its
    /// exit), from the thread's own look at the exit (else the core's, in
    /// [`Shared::closing`]); and whether it was queued.
    closing: Option<String>,
    closed: bool,
    /// Whether the console's exit line was shown (see [`run`]).
    exit_shown: bool,
    /// The exit was status 127, which may be a start that failed after
    /// the clone: only the core can tell ([`Monitor::set_closing`]).
    exit_unsure: bool,
}

impl Work {
    /// Each stream still open, or ended with lines unwritten, goes back
    /// with those lines in front of its splitter's remainder.
    fn give_back(self) -> Quiesced {
        let Work { streams, ended, mut out, sink, closed, exit_shown, closing, .. } = self;
        let mut kept = Vec::new();
        for (i, mut stream) in streams.into_iter().enumerate() {
            if !ended[i] || out.holds(i) {
                out.give_back(&sink, i, &mut stream.splitter);
                kept.push(stream);
            }
        }
        Quiesced { streams: kept, sink: Some(sink), closed, exit_shown, own_exit: closing }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Hand> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The thread's end once its work was taken: waits for the release.
    fn wait_released(&self, mut state: std::sync::MutexGuard<'_, Hand>) -> Quiesced {
        while !matches!(*state, Hand::Released) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        Quiesced::ended(None)
    }
}

/// Marks the state [`Hand::Ended`] if the thread unwinds while watching.
struct EndsWatching(Arc<Shared>);

impl Drop for EndsWatching {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if matches!(*state, Hand::Watching(_)) {
            *state = Hand::Ended;
        }
    }
}

/// A monitor whose work the core took (see [`Monitor::park`]): its thread
/// waits until the exec ends it or [`Parked::release`] does.
pub(crate) struct Parked {
    pidfd: Option<Arc<OwnedFd>>,
    stop: Arc<OwnedFd>,
    shared: Arc<Shared>,
    thread: Option<crate::thread::Thread<Quiesced>>,
    pidfd_kept: Arc<OnceLock<KeptFd>>,
}

impl Parked {
    /// What a reload hands over for the child's pidfd (kept open across
    /// the exec: the next image's identity of the child), if there is one.
    pub fn pidfd_kept(&self) -> Option<KeptFd> {
        let fd = self.pidfd.as_ref()?;
        self.pidfd_kept.get().copied().or_else(|| KeptFd::of(&**fd).ok())
    }

    /// After a failed exec: lets the thread end, waits for it, and gives
    /// back the pidfd (the snapshot names it by number).
    pub fn release(mut self) -> Option<OwnedFd> {
        self.end_thread();
        self.pidfd.take().and_then(|fd| Arc::try_unwrap(fd).ok())
    }

    fn end_thread(&mut self) {
        if let Some(thread) = self.thread.take() {
            *self.shared.lock() = Hand::Released;
            self.shared.changed.notify_all();
            // It may still be in its poll.
            sys::eventfd_signal(self.stop.as_fd());
            let _ = thread.join();
        }
    }
}

/// A parked monitor that is dropped (not released, not ended by an exec)
/// does not leave its thread waiting forever.
impl Drop for Parked {
    fn drop(&mut self) {
        self.end_thread();
    }
}

impl Monitor {
    /// Starts watching `pid` (which must be our unreaped child), or only
    /// its pipes when `reaped` (the child is gone, its pipes may not be).
    /// Its notes carry `gen`. `known` is what the caller has already of the
    /// child (kept across an exec): its pidfd, starttime and the pidfd's
    /// identity; otherwise a pidfd is opened, and the thread reads the
    /// others (off the core's path; see [`Monitor::starttime`]).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        gen: u64,
        pid: i32,
        known: Known,
        streams: Vec<Stream>,
        sink: LineSink,
        reaped: bool,
        telling: Telling,
        notify: impl Fn(ChildNote) + Send + 'static,
    ) -> io::Result<Monitor> {
        let Known { pidfd, starttime, pidfd_kept } = known;
        let starttime = Arc::new(AtomicU64::new(starttime.unwrap_or(0)));
        let starttime_for_thread = starttime.clone();
        let pidfd_kept = Arc::new(pidfd_kept.map_or_else(OnceLock::new, OnceLock::from));
        let pidfd_kept_for_thread = pidfd_kept.clone();
        let pidfd = match (reaped, pidfd) {
            (true, _) => None,
            (false, Some(fd)) => Some(Arc::new(fd)),
            (false, None) => Some(Arc::new(sys::pidfd_open(pid)?)),
        };
        let pidfd_for_thread = pidfd.clone();
        let stop = Arc::new(sys::eventfd()?);
        let stop_for_thread = stop.clone();
        let finish = Arc::new(AtomicBool::new(false));
        let finish_for_thread = finish.clone();
        let name = format!("sentry-{}.{pid}", sink.entry);
        if streams.len() > MAX_STREAMS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a monitor reads at most two pipes"));
        }
        let ended = [false; MAX_STREAMS];
        let mut out = Outbox::default();
        // Here, not in the thread: a monitor parked for an exec before its
        // thread first ran still hands the line over.
        if let Some(started_at) = telling.opening {
            out.set_opening(started_at);
        }
        let work = Work {
            streams,
            out,
            ended,
            sink,
            closing: None,
            closed: telling.logged,
            exit_shown: telling.shown,
            exit_unsure: false,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(Hand::Watching(work)),
            changed: Condvar::new(),
            closing: Mutex::new(Told {
                text: telling.told.clone(),
                notes: Vec::new(),
                shown: telling.shown,
                awaiting: false,
            }),
            halt: AtomicBool::new(false),
        });
        let ends = EndsWatching(shared.clone());
        // A monitor's deepest path (a log write with its formatting, a
        // console line) uses a few KiB of its stack; its read buffer is on the heap.
        let thread = crate::thread::spawn(&name, move || {
            // Mostly the child is still unreaped here, so the number is its
            // own. If it exited and was reaped first, the number may be a
            // stranger's, but nothing asks a reaped row for its identity
            // (`Proc::starttime`).
            if !reaped && starttime_for_thread.load(Ordering::Relaxed) == 0 {
                if let Some(t) = crate::proc::starttime_of(pid) {
                    starttime_for_thread.store(t, Ordering::Relaxed);
                }
            }
            // What a reload would otherwise read in its unwatched window.
            if let Some(fd) = &pidfd_for_thread {
                if pidfd_kept_for_thread.get().is_none() {
                    if let Ok(k) = KeptFd::of(&**fd) {
                        let _ = pidfd_kept_for_thread.set(k);
                    }
                }
            }
            if let Hand::Watching(work) = &mut *ends.0.lock() {
                for stream in work.streams.iter_mut().filter(|s| s.kept.is_none()) {
                    stream.kept = KeptFd::of(&stream.fd).ok();
                }
            }
            let stop = Ends { gen, stop: stop_for_thread, finish: finish_for_thread };
            run(pid, pidfd_for_thread, stop, &ends.0, telling.teller, notify)
        })?;
        Ok(Monitor { pidfd, stop, finish, shared, thread, starttime, pidfd_kept })
    }

    /// Takes the thread's pipes and their unwritten bytes without waking
    /// it, and leaves it parked (see [`Shared`]). A thread that has ended
    /// some other way is joined instead.
    pub fn park(self) -> (Quiesced, Parked) {
        let Monitor { pidfd, stop, shared, thread, pidfd_kept, .. } = self;
        let taken = std::mem::replace(&mut *shared.lock(), Hand::Taken);
        match taken {
            Hand::Watching(work) => {
                (work.give_back(), Parked { pidfd, stop, shared, thread: Some(thread), pidfd_kept })
            }
            other => {
                *shared.lock() = other;
                let quiesced = thread.join().unwrap_or(Quiesced::ended(None));
                (quiesced, Parked { pidfd, stop, shared, thread: None, pidfd_kept })
            }
        }
    }

    /// The child's `/proc/PID/stat` starttime, once the thread has read it.
    pub fn starttime(&self) -> Option<u64> {
        Some(self.starttime.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// The child's pidfd, for signals that must reach exactly this process.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| fd.as_fd())
    }

    /// Stops the thread wherever it is and takes back the open pipes and
    /// their unwritten bytes. Lines already complete have been written.
    pub fn quiesce(self) -> Quiesced {
        self.shared.halt.store(true, Ordering::SeqCst);
        sys::eventfd_signal(self.stop.as_fd());
        self.join()
    }

    /// The end of supervision: stops the thread wherever it is, writes
    /// what the pipes still hold and then, if the thread had not, the exit
    /// line the core told ([`Quiesced::drain_and_finish`]).
    pub fn end(self) {
        let shared = self.shared.clone();
        let quiesced = self.quiesce();
        let told = std::mem::take(&mut *shared.closing.lock().unwrap_or_else(|p| p.into_inner()));
        let line = told.text.or(quiesced.own_exit.clone());
        let closing = if quiesced.closed { None } else { line.clone() };
        let shown = if quiesced.exit_shown { None } else { line };
        quiesced.drain_and_finish(closing, shown, told.notes);
    }

    /// Tells the thread that the child and its process group are gone: it
    /// takes what the pipes hold now and the unfinished last lines, writes
    /// them (retrying while the log cannot take them, as ever), closes the
    /// pipes — whoever else still holds their write ends (a descendant that
    /// left the group) gets EPIPE — and says [`ChildNote::Closed`]. So no
    /// thread and no fd outlives a slot's process by more than that.
    pub fn finish(&self) {
        self.finish.store(true, Ordering::SeqCst);
        sys::eventfd_signal(self.stop.as_fd());
    }

    /// The `[sentry]` line that ends the process's part of its log
    /// (`Exited at … with …`), written after its last output line — unless
    /// the thread saw the exit itself first and has its own.
    pub fn set_closing(&self, closing: String) {
        let mut told = self.shared.closing.lock().unwrap_or_else(|p| p.into_inner());
        told.text.get_or_insert(closing);
        let waits = std::mem::take(&mut told.awaiting);
        drop(told);
        if waits {
            sys::eventfd_signal(self.stop.as_fd());
        }
    }

    /// A line about what came after the exit (its process group outlived
    /// it): shown on the console after the exit line and written to the log
    /// after it. Returns `false` when the console's exit line was shown
    /// already: the caller shows `note` itself (it is then in order).
    pub fn note_after_exit(&self, note: &str) -> bool {
        let mut told = self.shared.closing.lock().unwrap_or_else(|p| p.into_inner());
        told.notes.push(note.to_string());
        !told.shown
    }

    /// Waits for a monitor that said [`ChildNote::Closed`].
    pub fn join(self) -> Quiesced {
        self.thread.join().unwrap_or(Quiesced::ended(None))
    }
}

/// How a monitor thread is told to end, and what it signs its notes with.
struct Ends {
    gen: u64,
    stop: Arc<OwnedFd>,
    finish: Arc<AtomicBool>,
}

/// `teller`: who tells the exit.
///
/// A told exit is shown on the console as soon as the exit is seen and
/// the pipes hold nothing more (so after everything the process wrote
/// before it exited, and before its replacement starts, in most cases),
/// in the core's words if they are there ([`Monitor::set_closing`]), else
/// in the thread's own ([`Teller::exit_line`]) — except a status 127,
/// which may be a failed start that only the core can tell: for that the
/// core's words are waited for. The log gets the line after the pipes'
/// last one, in the core's words. Waits for them end after [`CLOSING_WAIT`].
fn run(
    pid: i32,
    pidfd: Option<Arc<OwnedFd>>,
    ends: Ends,
    shared: &Shared,
    teller: Teller,
    notify: impl Fn(ChildNote),
) -> Quiesced {
    let Ends { gen, stop, finish } = ends;
    let told_exit = teller != Teller::Nobody;
    // Until when the exit's line is waited for from the core, once all
    // else is done.
    let mut closing_by: Option<Instant> = None;
    let mut exited = pidfd.is_none();
    // The pidfd said the child is gone but the core had reaped it first:
    // not polled again; the core's finish follows.
    let mut pidfd_done = false;
    // Allocated at the first read: a quiet child (most of a thousand) costs no buffer.
    let mut buf = Vec::new();
    // What an earlier monitor left: a cut line's rest, whole lines it could not write.
    if let Hand::Watching(w) = &mut *shared.lock() {
        for (i, stream) in w.streams.iter_mut().enumerate() {
            w.out.resume(&w.sink, i, &mut stream.splitter);
        }
        w.out.flush(&w.sink);
    }
    loop {
        let mut state = shared.lock();
        let Hand::Watching(w) = &mut *state else { return shared.wait_released(state) };
        let done = |i: usize, w: &Work| w.ended[i] && !w.out.holds(i);
        let mut awaiting_closing = false;
        let told = || shared.closing.lock().unwrap_or_else(|p| p.into_inner()).text.clone();
        if exited && !w.exit_shown && !w.out.is_holding() && pipes_quiet(w) {
            let now = Instant::now();
            let by = *closing_by.get_or_insert(now + CLOSING_WAIT);
            let text = match told() {
                Some(text) => Some(text),
                None if w.exit_unsure && now < by => {
                    awaiting_closing = true;
                    None
                }
                None => w.closing.clone(),
            };
            if !awaiting_closing {
                w.exit_shown = true;
                // Under the lock: a note the core adds meanwhile is either
                // shown here or by the core, after this line either way.
                let mut told = shared.closing.lock().unwrap_or_else(|p| p.into_inner());
                told.shown = true;
                if let Some(text) = text {
                    w.sink.console.show_event(&w.sink.entry, w.sink.pid, &text);
                }
                told.notes.iter().for_each(|n| w.sink.console.show_event(&w.sink.entry, w.sink.pid, n));
            }
        }
        if exited && (0..w.streams.len()).all(|i| done(i, w)) {
            if !w.closed {
                let from_core = told();
                let now = Instant::now();
                let by = *closing_by.get_or_insert(now + CLOSING_WAIT);
                let text = match from_core {
                    Some(text) => Some(text),
                    None if told_exit && now < by => {
                        awaiting_closing = true;
                        None
                    }
                    None => w.closing.take(),
                };
                if !awaiting_closing {
                    w.closed = true;
                    w.out.opening_due();
                    if let Some(text) = text {
                        w.out.add_own(&text);
                    }
                    let notes = std::mem::take(&mut shared.closing.lock().unwrap_or_else(|p| p.into_inner()).notes);
                    notes.iter().for_each(|n| w.out.add_own(n));
                    w.out.flush(&w.sink);
                }
            }
            if w.closed && !w.out.is_holding() {
                notify(ChildNote::Closed { gen });
                let Hand::Watching(w) = std::mem::replace(&mut *state, Hand::Ended) else { unreachable!() };
                return Quiesced::ended(Some(w.sink));
            }
        }
        // Back-pressure: while lines wait for the log, the pipes are not read.
        // On the stack: a quiet child's monitor never allocates, so its
        // thread never gets a malloc cache of its own (glibc makes one,
        // ~0.6 KiB, at a thread's first allocation).
        let mut reading = [0usize; MAX_STREAMS];
        let mut n_reading = 0;
        if !w.out.is_holding() {
            for i in (0..w.streams.len()).filter(|&i| !w.ended[i]) {
                reading[n_reading] = i;
                n_reading += 1;
            }
        }
        let reading = &reading[..n_reading];
        let mut all_fds = [pollfd(-1); MAX_STREAMS + 2];
        for (k, &i) in reading.iter().enumerate() {
            all_fds[k] = pollfd(w.streams[i].fd.as_raw_fd());
        }
        all_fds[n_reading] = pollfd(stop.as_raw_fd());
        let mut n_fds = n_reading + 1;
        if let Some(p) = pidfd.as_ref().filter(|_| !exited && !pidfd_done) {
            all_fds[n_fds] = pollfd(p.as_raw_fd());
            n_fds += 1;
        }
        let fds = &mut all_fds[..n_fds];
        let now = Instant::now();
        let mut timeout = w.out.timeout_ms(now);
        if awaiting_closing {
            // Said under the lock the core sets the line under: either it
            // is there now, or the core sees this and wakes the thread.
            let mut told = shared.closing.lock().unwrap_or_else(|p| p.into_inner());
            if told.text.is_some() {
                continue;
            }
            told.awaiting = true;
            drop(told);
            let left = closing_by.map_or(0, |by| by.saturating_duration_since(now).as_millis() as i32 + 1);
            timeout = if timeout < 0 { left } else { timeout.min(left) };
        }
        // The wait, without the lock: the core may take the work meanwhile.
        drop(state);
        let polled = sys::poll(fds, timeout);
        let mut state = shared.lock();
        let Hand::Watching(w) = &mut *state else { return shared.wait_released(state) };
        if polled.is_err() {
            continue;
        }
        if fds[reading.len()].revents != 0 {
            // A stop (`halt`), a finish, or the core's exit line: each
            // flag is set before its wake-up, so none is missed.
            sys::eventfd_take(stop.as_fd());
            let finishing = finish.swap(false, Ordering::SeqCst);
            if shared.halt.load(Ordering::SeqCst) {
                let Hand::Watching(w) = std::mem::replace(&mut *state, Hand::Ended) else { unreachable!() };
                return w.give_back();
            }
            if !finishing {
                continue;
            }
            // The child and its group are gone: take what the pipes hold
            // now, then end once every line is written — however long a
            // full disk makes that take (a stop still ends it at once).
            let Work { streams, out, ended, sink, .. } = w;
            for i in 0..streams.len() {
                if !ended[i] {
                    drain_now(i, &mut streams[i], &mut buf, sink, out);
                    write_last_line(i, &mut streams[i], sink, out);
                    ended[i] = true;
                }
            }
            out.flush(sink);
            exited = true;
            continue;
        }
        let Work { streams, out, ended, sink, closing, exit_unsure, .. } = w;
        if out.is_holding() {
            if out.is_due(Instant::now()) {
                out.flush(sink);
            }
        } else {
            // Pipes before the exit, so a child's last lines come before "Exited".
            for (k, &i) in reading.iter().enumerate() {
                if fds[k].revents == 0 {
                    continue;
                }
                if read_lines(i, &mut streams[i], &mut buf, sink, out) == Read::End {
                    write_last_line(i, &mut streams[i], sink, out);
                    ended[i] = true;
                }
            }
            // One write for what all pipes gave this round.
            out.flush(sink);
        }
        let pidfd_polled = pidfd.is_some() && !exited && !pidfd_done;
        if pidfd_polled && fds.last().is_some_and(|p| p.revents != 0) {
            match sys::peek_exit(pid) {
                // ECHILD: the core reaped it first and finishes this thread next.
                Some(ChildExit::Unknown) => pidfd_done = true,
                Some(exit) => {
                    exited = true;
                    closing.get_or_insert_with(|| teller.exit_line(exit, sys::unix_now()));
                    *exit_unsure = exit == ChildExit::Code(127);
                    notify(ChildNote::Exited { gen });
                }
                None => {}
            }
        }
    }
}

/// Whether no open pipe of `w` has anything to read right now.
fn pipes_quiet(w: &Work) -> bool {
    let mut fds = [pollfd(-1); MAX_STREAMS];
    let mut n = 0;
    for i in (0..w.streams.len()).filter(|&i| !w.ended[i]) {
        fds[n] = pollfd(w.streams[i].fd.as_raw_fd());
        n += 1;
    }
    n == 0 || sys::poll(&mut fds[..n], 0).is_ok_and(|ready| ready == 0)
}

/// Reads what `stream` holds right now, without waiting (bounded: a writer
/// that never stops must not hold the end up), into `out`.
fn drain_now(i: usize, stream: &mut Stream, buf: &mut Vec<u8>, sink: &LineSink, out: &mut Outbox) {
    if nix::fcntl::fcntl(&stream.fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).is_err() {
        return;
    }
    for _ in 0..DRAIN_CHUNKS {
        if read_lines(i, stream, buf, sink, out) != Read::Data {
            break;
        }
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

/// The stream has ended: queues its unfinished last line, if any.
fn write_last_line(i: usize, stream: &mut Stream, sink: &LineSink, out: &mut Outbox) {
    stream.splitter.finish(sink.line_limit, |r| out.add(sink, i, r));
}

#[derive(PartialEq, Eq)]
enum Read {
    Data,
    Empty,
    End,
}

/// Reads one chunk of stream `i` and queues its complete lines.
fn read_lines(i: usize, stream: &mut Stream, buf: &mut Vec<u8>, sink: &LineSink, out: &mut Outbox) -> Read {
    if buf.len() < READ_CHUNK {
        buf.resize(READ_CHUNK, 0);
    }
    let n = loop {
        match nix::unistd::read(&stream.fd, &mut buf[..]) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Read::Empty,
            Err(_) => break 0,
        }
    };
    if n == 0 {
        return Read::End;
    }
    stream.splitter.push(&buf[..n], sink.line_limit, |r| out.add(sink, i, r));
    Read::Data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Voluntary context switches of this process's thread named `comm`.
    fn switches_of(comm: &str) -> Option<u64> {
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            if std::fs::read_to_string(task.path().join("comm")).ok()?.trim_end() == comm {
                let status = std::fs::read_to_string(task.path().join("status")).ok()?;
                let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
                return line.split_whitespace().nth(1)?.parse().ok();
            }
        }
        None
    }

    #[test]
    fn a_monitor_waiting_for_the_cores_exit_line_sleeps_until_the_core_gives_it() {
        use std::sync::mpsc;
        use std::time::Duration;
        let dir = std::env::temp_dir().join(format!("sentry-monitor-wait-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.log");
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let out = OwnedFd::from(child.stdout.take().unwrap());
        let log = crate::logfile::LogFile::open(&path, 0, 0).unwrap();
        let sink = LineSink::new("w", pid, Some(log), crate::output::ConsoleHandle::default(), 1024);
        let (tx, rx) = mpsc::channel();
        let notify = move |note: ChildNote| {
            let _ = tx.send(note);
        };
        let streams = vec![Stream::new(out, LineSplitter::default())];
        let telling = Telling::new(None, Teller::Slot);
        let monitor = Monitor::start(1, pid, Known::default(), streams, sink, false, telling, notify).unwrap();
        child.kill().unwrap();
        let note = rx.recv_timeout(Duration::from_secs(10)).expect("the monitor saw the exit");
        assert!(matches!(note, ChildNote::Exited { gen: 1 }));
        // Its pipe at end of file, the thread waits for the core's words.
        let by = Instant::now() + Duration::from_secs(10);
        while !monitor.shared.closing.lock().unwrap().awaiting {
            assert!(Instant::now() < by, "the monitor never waited for the core's exit line");
            std::thread::sleep(Duration::from_millis(5));
        }
        let comm = format!("sentry-w.{pid}");
        let before = switches_of(&comm).expect("the monitor thread");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(switches_of(&comm), Some(before), "it looked for the line instead of waiting to be woken");
        monitor.set_closing("Exited with the core's words.".to_string());
        let note = rx.recv_timeout(Duration::from_secs(10)).expect("the monitor ended once given the line");
        assert!(matches!(note, ChildNote::Closed { gen: 1 }));
        monitor.join();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.trim_end().ends_with("Exited with the core's words."), "{text}");
        child.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_childs_environment_is_sentrys_passed_on_then_its_own_sorted_with_the_last_word_winning() {
        let own: Vec<(OsString, OsString)> =
            [("PATH", "/own"), ("ZZ_OWN", "1"), ("ZZ_OWN", "2"), ("SENTRY_ENTRY", "web")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
        let env = environment(&own);
        let keys: Vec<&OsStr> = env.iter().map(|(k, _)| *k).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "sorted, each name once");
        let value = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_str().unwrap());
        assert_eq!(value("PATH"), Some("/own"), "the entry's own value wins over Sentry's");
        assert_eq!(value("ZZ_OWN"), Some("2"), "the later of two own values wins");
        assert_eq!(value("SENTRY_ENTRY"), Some("web"), "Sentry's own variables are set by Sentry, not inherited");
        // `cargo test` runs this with CARGO_* variables of its own: never passed on.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some(), "run under cargo");
        assert!(!keys.iter().any(|k| k.as_bytes().starts_with(b"CARGO_")), "{keys:?}");
        // What Sentry's environment passes on is there, unchanged.
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(env.iter().find(|(k, _)| *k == "HOME").map(|(_, v)| *v), Some(home.as_os_str()));
        }
        // A second start sees the same (the inherited part is read once).
        assert_eq!(environment(&own), env);
    }
}
