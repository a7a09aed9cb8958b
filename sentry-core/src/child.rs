//! Starting one child process and watching it: [`spawn`] forks and execs an
//! entry's command with the environment, process group, signal state and
//! credentials SPEC asks for; [`Monitor`] is the one thread per child that
//! polls its pidfd, its stdout and stderr pipes and a stop fd. The thread never
//! reaps: it tells the core that the child exited and the core reaps, so no
//! exit status can be lost. This module knows nothing of entries' slots or of
//! restart policy.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::config::EntryConfig;
use crate::output::{LineSink, LineSplitter, Outbox};
use crate::sys;

/// Stack size of a monitor thread (stacks are touched lazily; this bounds
/// VSZ). A monitor's deepest path (a log write with its formatting, a
/// console line) uses a few KiB; its read buffer is on the heap.
const MONITOR_STACK: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;
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

/// A freshly started child and the read ends of its output pipes.
pub(crate) struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Starts `entry`'s command in slot `index`, in the cgroup whose
/// `cgroup.procs` is `placement` if one is given (see [`start`]).
pub(crate) fn spawn(entry: &EntryConfig, index: usize, placement: Option<&OwnedFd>) -> io::Result<Spawned> {
    let mut cmd = Command::new(&entry.command);
    cmd.args(&entry.args)
        .envs(entry.env.iter().map(|(k, v)| (k, v)))
        .env("SENTRY_ENTRY", &entry.name)
        .env("SENTRY_INDEX", index.to_string());
    let credentials = Credentials::of(entry)?;
    if let Some((user, home)) = credentials.as_ref().and_then(|c| c.user.as_ref()) {
        // What login(1) sets, from the passwd entry, unless `.env` does.
        for (key, value) in [("HOME", home.as_os_str()), ("USER", user), ("LOGNAME", user)] {
            if !entry.env.iter().any(|(k, _)| k == key) {
                cmd.env(key, value);
            }
        }
    }
    // With credentials, the directory is entered after they change (`apply`).
    if let (Some(cwd), None) = (&entry.cwd, &credentials) {
        cmd.current_dir(cwd);
    }
    start(cmd, credentials, placement)
}

/// Starts the program of an `exec` action (`argv` is not empty) for
/// `target`: never through a shell, in its own process group, with the same
/// clean state as a child and `SENTRY_ENTRY=target`.
pub(crate) fn spawn_helper(target: &str, argv: &[String], placement: Option<&OwnedFd>) -> io::Result<Spawned> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env("SENTRY_ENTRY", target);
    start(cmd, None, placement)
}

/// Spawns `cmd` with the environment and process state every child gets.
/// With a `placement` (a cgroup's `cgroup.procs`, open for writing), the
/// child moves itself into that cgroup first thing after the fork, before
/// its credentials change and before any code of its own runs: whatever it
/// and its descendants do later, they stay in it. A failed move is a failed
/// start.
fn start(mut cmd: Command, credentials: Option<Credentials>, placement: Option<&OwnedFd>) -> io::Result<Spawned> {
    let placement = placement.map(|fd| fd.as_raw_fd());
    let inherited: Vec<_> = std::env::vars_os().filter(|(k, _)| passed_on(k.as_bytes())).collect();
    // The command's own variables (set above) win over inherited ones.
    let own: Vec<_> = cmd.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
    cmd.env_clear().envs(inherited);
    for (k, v) in own {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (write to the cgroup's fd, which the caller
    // keeps open until `spawn` returns, setgroups, setgid, setuid, chdir, sigprocmask,
    // signal, prctl, close_range); it allocates nothing: the credentials were
    // computed before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = placement {
                crate::cgroup::place_self(BorrowedFd::borrow_raw(fd))?;
            }
            if let Some(c) = &credentials {
                c.apply()?;
            }
            let empty: libc::sigset_t = {
                let mut set = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                set
            };
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            // Fds Sentry inherited without CLOEXEC (a jobserver, a shell's
            // spare fds) must not reach children: only 0, 1, 2 cross exec.
            sys::cloexec_inherited();
            // The soft open-file limit Sentry was given, not the one it raised.
            crate::budget::restore_nofile_in_child();
            // After the change of credentials above, which clears PDEATHSIG.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    // The pipes were asked for above, so they are there.
    let stdout = child.stdout.take().expect("piped stdout").into();
    let stderr = child.stderr.take().expect("piped stderr").into();
    // Dropping `child` neither waits nor kills: the core reaps by PID.
    drop(child);
    Ok(Spawned { pid, stdout, stderr })
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

/// Who a child runs as, looked up before the fork (`getpwnam`, `getgrnam`
/// and `getgrouplist` are not async-signal-safe) and applied between fork
/// and exec: supplementary groups, then the group, then the user, then the
/// working directory (entered as that user, so a directory the user may not
/// enter is a failed start, as with `su`).
struct Credentials {
    /// The user's name and home (`None`: only `.group`).
    user: Option<(OsString, PathBuf)>,
    uid: Option<libc::uid_t>,
    gid: libc::gid_t,
    /// The user's groups (`initgroups`), when a user is given.
    groups: Option<Vec<libc::gid_t>>,
    cwd: Option<CString>,
}

impl Credentials {
    /// The credentials `.user` and `.group` ask for, if any.
    fn of(entry: &EntryConfig) -> io::Result<Option<Credentials>> {
        use nix::unistd::{getgrouplist, Group, User};
        let not_found =
            |what: &str, name: &str| io::Error::new(io::ErrorKind::NotFound, format!("no such {what} {name:?}"));
        let user = match &entry.user {
            Some(name) => Some(User::from_name(name).map_err(io::Error::from)?.ok_or_else(|| not_found("user", name))?),
            None => None,
        };
        let group = match &entry.group {
            Some(name) => {
                Some(Group::from_name(name).map_err(io::Error::from)?.ok_or_else(|| not_found("group", name))?)
            }
            None => None,
        };
        let Some(gid) = group.as_ref().map(|g| g.gid).or(user.as_ref().map(|u| u.gid)) else {
            return Ok(None);
        };
        let groups = match &user {
            Some(u) => {
                let name = CString::new(u.name.as_bytes()).map_err(io::Error::other)?;
                Some(getgrouplist(&name, gid).map_err(io::Error::from)?.iter().map(|g| g.as_raw()).collect())
            }
            None => None,
        };
        let cwd = match &entry.cwd {
            Some(dir) => Some(CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?),
            None => None,
        };
        Ok(Some(Credentials {
            user: user.as_ref().map(|u| (OsString::from(&u.name), u.dir.clone())),
            uid: user.as_ref().map(|u| u.uid.as_raw()),
            gid: gid.as_raw(),
            groups,
            cwd,
        }))
    }

    /// Between fork and exec: async-signal-safe calls only, no allocation.
    fn apply(&self) -> io::Result<()> {
        let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
        // SAFETY: plain syscalls on data owned by `self`.
        unsafe {
            if let Some(groups) = &self.groups {
                // Without CAP_SETGID (Sentry not root) the groups cannot
                // change; setgid/setuid below then say whether the user can.
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
                {
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::setgid(self.gid))?;
            if let Some(uid) = self.uid {
                check(libc::setuid(uid))?;
            }
            if let Some(cwd) = &self.cwd {
                check(libc::chdir(cwd.as_ptr()))?;
            }
        }
        Ok(())
    }
}

/// One output pipe of a child, with the bytes read from it that are not yet a line.
pub(crate) struct Stream {
    pub fd: OwnedFd,
    pub splitter: LineSplitter,
}

/// What a monitor hands back when it is stopped before the end of its child.
pub(crate) struct Quiesced {
    /// Output pipes still open, with their unwritten bytes.
    pub streams: Vec<Stream>,
    pub sink: Option<LineSink>,
}

impl Quiesced {
    /// Writes whatever the pipes hold right now and the unfinished last
    /// lines, then closes the pipes (the end of supervision: nothing lost).
    /// A log that cannot take them is tried a few more times, for at most
    /// about half a second, and then said so once.
    pub fn drain_and_finish(self) {
        let Some(sink) = self.sink else { return };
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = Outbox::default();
        for (i, mut stream) in self.streams.into_iter().enumerate() {
            out.resume(&sink, i, &mut stream.splitter);
            drain_now(i, &mut stream, &mut buf, &sink, &mut out);
            write_last_line(i, &mut stream, &sink, &mut out);
        }
        out.flush_last(&sink);
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
    thread: JoinHandle<Quiesced>,
}

impl Monitor {
    /// Starts watching `pid` (which must be our unreaped child), or only
    /// its pipes when `reaped` (the child is gone, its pipes may not be).
    /// Its notes carry `gen`.
    pub fn start(
        gen: u64,
        pid: i32,
        streams: Vec<Stream>,
        sink: LineSink,
        reaped: bool,
        notify: impl Fn(ChildNote) + Send + 'static,
    ) -> io::Result<Monitor> {
        let pidfd = if reaped { None } else { Some(Arc::new(sys::pidfd_open(pid)?)) };
        let pidfd_for_thread = pidfd.clone();
        let stop = Arc::new(sys::eventfd()?);
        let stop_for_thread = stop.clone();
        let finish = Arc::new(AtomicBool::new(false));
        let finish_for_thread = finish.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sentry-{}.{pid}", sink.entry))
            .stack_size(MONITOR_STACK)
            .spawn(move || {
                let ends = Ends { gen, stop: stop_for_thread, finish: finish_for_thread };
                run(pid, pidfd_for_thread, streams, ends, sink, notify)
            })?;
        Ok(Monitor { pidfd, stop, finish, thread })
    }

    /// The child's pidfd, for signals that must reach exactly this process.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| fd.as_fd())
    }

    /// Stops the thread wherever it is and takes back the open pipes and
    /// their unwritten bytes. Lines already complete have been written.
    pub fn quiesce(self) -> Quiesced {
        sys::eventfd_signal(self.stop.as_fd());
        self.join()
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

    /// Waits for a monitor that said [`ChildNote::Closed`].
    pub fn join(self) -> Quiesced {
        self.thread.join().unwrap_or(Quiesced { streams: Vec::new(), sink: None })
    }
}

/// How a monitor thread is told to end, and what it signs its notes with.
struct Ends {
    gen: u64,
    stop: Arc<OwnedFd>,
    finish: Arc<AtomicBool>,
}

fn run(
    pid: i32,
    pidfd: Option<Arc<OwnedFd>>,
    mut streams: Vec<Stream>,
    ends: Ends,
    sink: LineSink,
    notify: impl Fn(ChildNote),
) -> Quiesced {
    let Ends { gen, stop, finish } = ends;
    let mut exited = pidfd.is_none();
    // Allocated at the first read: a quiet child (most of a thousand) costs no buffer.
    let mut buf = Vec::new();
    // Lines read and not yet written; while it holds any, no stream is read.
    let mut out = Outbox::default();
    // Streams at end of file (kept, not polled, until their lines are written).
    let mut ended = vec![false; streams.len()];
    // What an earlier monitor left: a cut line's rest, whole lines it could not write.
    for (i, stream) in streams.iter_mut().enumerate() {
        out.resume(&sink, i, &mut stream.splitter);
    }
    out.flush(&sink);
    loop {
        let done = |i: usize, out: &Outbox| ended[i] && !out.holds(i);
        if exited && (0..streams.len()).all(|i| done(i, &out)) {
            notify(ChildNote::Closed { gen });
            return Quiesced { streams: Vec::new(), sink: Some(sink) };
        }
        // Back-pressure: while lines wait for the log, the pipes are not read.
        let reading: Vec<usize> =
            if out.is_holding() { Vec::new() } else { (0..streams.len()).filter(|&i| !ended[i]).collect() };
        let mut fds: Vec<libc::pollfd> = reading
            .iter()
            .map(|&i| pollfd(streams[i].fd.as_raw_fd()))
            .chain([pollfd(stop.as_raw_fd())])
            .chain(pidfd.as_ref().filter(|_| !exited).map(|p| pollfd(p.as_raw_fd())))
            .collect();
        if sys::poll(&mut fds, out.timeout_ms(Instant::now())).is_err() {
            continue;
        }
        if fds[reading.len()].revents != 0 {
            // One count per request: `finish` (flag set first) and/or a stop.
            let requests = sys::eventfd_take(stop.as_fd());
            let finishing = finish.swap(false, Ordering::SeqCst);
            if !finishing || requests > 1 {
                return give_back(streams, &ended, out, sink);
            }
            // The child and its group are gone: take what the pipes hold
            // now, then end once every line is written — however long a
            // full disk makes that take (a stop still ends it at once).
            for i in 0..streams.len() {
                if !ended[i] {
                    drain_now(i, &mut streams[i], &mut buf, &sink, &mut out);
                    write_last_line(i, &mut streams[i], &sink, &mut out);
                    ended[i] = true;
                }
            }
            out.flush(&sink);
            exited = true;
            continue;
        }
        if out.is_holding() {
            if out.is_due(Instant::now()) {
                out.flush(&sink);
            }
        } else {
            // Pipes before the exit, so a child's last lines come before "Exited".
            for (k, &i) in reading.iter().enumerate() {
                if fds[k].revents == 0 {
                    continue;
                }
                if read_lines(i, &mut streams[i], &mut buf, &sink, &mut out) == Read::End {
                    write_last_line(i, &mut streams[i], &sink, &mut out);
                    ended[i] = true;
                }
            }
            // One write for what all pipes gave this round.
            out.flush(&sink);
        }
        if !exited && pidfd.is_some() && fds.last().is_some_and(|p| p.revents != 0) && sys::has_exited(pid) {
            exited = true;
            notify(ChildNote::Exited { gen });
        }
    }
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

/// The monitor stops: each stream still open, or ended with lines unwritten,
/// goes back with those lines in front of its splitter's remainder.
fn give_back(streams: Vec<Stream>, ended: &[bool], mut out: Outbox, sink: LineSink) -> Quiesced {
    let mut kept = Vec::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        if !ended[i] || out.holds(i) {
            out.give_back(&sink, i, &mut stream.splitter);
            kept.push(stream);
        }
    }
    let streams = kept;
    Quiesced { streams, sink: Some(sink) }
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
