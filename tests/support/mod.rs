//! Shared helpers of the integration tests: temporary directories, starting
//! a configuration binary in its own session, polling with deadlines, reading
//! /proc, and killing every process of a test's session on drop — even when
//! the test fails. Included with `#[path]` by each test file.
#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The fd every started Sentry inherits without CLOEXEC (see [`Sentry::spawn_with`]).
pub const INHERITED_FD: i32 = 200;

/// How long any condition may take on a slow, busy machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sentry-test-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Polls `probe` until it returns `Some`, or panics after `PATIENCE` saying `what`.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    wait_for_within(what, PATIENCE, &mut probe)
}

pub fn wait_for_within<T>(what: &str, patience: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {patience:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fields of `/proc/PID/stat` after the command name: [state, ppid, pgrp, session, …].
/// (Read as bytes: the command name may be any bytes, not UTF-8.)
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let bytes = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let rest = bytes.get(bytes.iter().rposition(|&b| b == b')')? + 2..)?;
    Some(String::from_utf8_lossy(rest).split_whitespace().map(String::from).collect())
}

/// A copy of `/bin/sleep` named `name` in `dir` (e.g. `мониторинг`, whose
/// first 15 bytes — all the kernel keeps of a command name — end mid-character).
pub fn copy_of_sleep(dir: &Path, name: &str) -> PathBuf {
    let exe = dir.join(name);
    fs::copy("/bin/sleep", &exe).expect("copy /bin/sleep");
    exe
}

/// All live processes whose executable is `exe`.
pub fn processes_of(exe: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` is alive (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] != "Z")
}

/// Every process of session `sid`.
pub fn session_pids(sid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if stat_fields(pid).is_some_and(|f| f[3] == sid.to_string()) {
            pids.push(pid);
        }
    }
    pids
}

/// Children (any state) whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<(i32, String)> {
    let mut kids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if f[1] == ppid.to_string() {
                kids.push((pid, f[0].clone()));
            }
        }
    }
    kids
}

/// SIGKILLs every process of session `sid`, by PID.
pub fn kill_session(sid: i32) {
    for _ in 0..3 {
        for pid in session_pids(sid) {
            // SAFETY: plain kill of a PID our test started (its session).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Kills every process of a session on drop (for sessions a test started
/// other than through [`Sentry`]).
pub struct SessionGuard(pub i32);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        kill_session(self.0);
    }
}

/// The fds above 2 of a process that lack O_CLOEXEC, with what they are.
pub fn inheritable_fds(pid: i32) -> Vec<(i32, PathBuf)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    let mut open = Vec::new();
    for fd in dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter(|&fd| fd > 2) {
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { continue };
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).map(|f| f.trim().to_string());
        let flags = flags.and_then(|f| i64::from_str_radix(&f, 8).ok()).unwrap_or(0);
        if flags & libc::O_CLOEXEC as i64 == 0 {
            open.push((fd, fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default()));
        }
    }
    open
}

/// Makes `cmd` start a session of its own (so [`kill_session`] can find
/// every process it leaves behind).
pub fn in_own_session(cmd: &mut Command) -> &mut Command {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    }
}

/// Runs `script` with `sh` inside the PID and mount namespaces of `init`
/// (so `/proc` is the namespace's); its trimmed standard output.
pub fn in_namespace(init: i32, script: &str) -> String {
    let out = run_within(
        Command::new("nsenter").args(["--target", &init.to_string(), "--pid", "--mount", "--", "sh", "-c", script]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{script}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// Starts a command in a session of its own, with no output (so nothing
/// holds the harness's pipes), killed with its session when the guard drops.
pub fn spawn_in_session(cmd: &mut Command) -> (Child, SessionGuard) {
    in_own_session(cmd);
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let guard = SessionGuard(child.id() as i32);
    (child, guard)
}

/// A line of `/proc/PID/status`, such as `SigBlk`.
pub fn proc_status(pid: i32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_string()))
}

/// Number of open fds of `pid`.
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A configuration binary running `start` in a session of its own.
pub struct Sentry {
    pub dir: TempDir,
    pub bin: PathBuf,
    pub scenario: String,
    child: Child,
    /// Removes the cgroups an instance in this DIR made (after the session
    /// is killed). Two `Sentry`s in one DIR share them: drop the earlier
    /// (SIGKILLed) one only after the later one, as scopes do.
    cgroups: CgroupGuard,
}

impl Sentry {
    /// Starts `bin start --dir TMP ARGS…` with `TCONF=scenario`; waits until it answers.
    pub fn start(bin: &str, scenario: &str, args: &[&str]) -> Sentry {
        let sentry = Sentry::spawn(bin, scenario, args);
        wait_for("the instance to answer", || {
            let out = sentry.cli(&["status", "--json"]);
            out.status.success().then_some(())
        });
        sentry
    }

    /// Starts it without waiting.
    pub fn spawn(bin: &str, scenario: &str, args: &[&str]) -> Sentry {
        Sentry::spawn_in(TempDir::new(scenario), bin, scenario, args)
    }

    /// Starts it without waiting, in a run directory prepared by the caller.
    pub fn spawn_in(dir: TempDir, bin: &str, scenario: &str, args: &[&str]) -> Sentry {
        Sentry::spawn_with(dir, bin, scenario, args, &[])
    }

    /// Same, with extra environment variables.
    pub fn spawn_with(dir: TempDir, bin: &str, scenario: &str, args: &[&str], envs: &[(&str, &str)]) -> Sentry {
        Sentry::spawn_wrapped(dir, bin, scenario, &[], args, envs, None)
    }

    /// Starts it in a PID namespace of its own (`unshare --pid --fork
    /// --mount-proc`, under a shell as the namespace's init), so a test may
    /// steer PID reuse through `ns_last_pid` without touching the machine's
    /// PIDs, and every process it leaves — escaped ones included — dies with
    /// the namespace. PIDs in status and logs are the namespace's.
    pub fn spawn_in_pid_namespace(bin: &str, scenario: &str, envs: &[(&str, &str)]) -> Sentry {
        let wrapper = ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", "\"$0\" \"$@\"; exit $?"];
        let s = Sentry::spawn_wrapped(TempDir::new(scenario), bin, scenario, &wrapper, &[], envs, None);
        s.waiting()
    }

    /// The namespace's init (a shell) as PID 1, seen from outside.
    pub fn namespace_init(&self) -> i32 {
        wait_for("the namespace's init", || children_of(self.pid()).first().map(|(pid, _)| *pid))
    }

    /// Makes the next PID the namespace allocates `next` (root only).
    pub fn set_next_pid(&self, next: i32) {
        in_namespace(self.namespace_init(), &format!("echo {} > /proc/sys/kernel/ns_last_pid", next - 1));
    }

    /// Same, with standard output going to `stdout` instead of
    /// `console.txt` (standard error still goes there).
    pub fn spawn_with_stdout(
        dir: TempDir,
        bin: &str,
        scenario: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        stdout: Option<Stdio>,
    ) -> Sentry {
        Sentry::spawn_wrapped(dir, bin, scenario, &[], args, envs, stdout)
    }

    /// `WRAPPER… BIN start --dir DIR ARGS…`, with the console in
    /// DIR/console.txt (standard output in `stdout`, if given).
    pub fn spawn_wrapped(
        dir: TempDir,
        bin: &str,
        scenario: &str,
        wrapper: &[&str],
        args: &[&str],
        envs: &[(&str, &str)],
        stdout: Option<Stdio>,
    ) -> Sentry {
        let console = fs::File::create(dir.path().join("console.txt")).expect("console file");
        let stdout = stdout.unwrap_or_else(|| console.try_clone().expect("dup").into());
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("start")
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .env("TCONF", scenario)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(console);
        // Like a shell's spare fds or cargo's jobserver: an fd left open
        // without CLOEXEC, which Sentry must not pass on.
        let spare = fs::File::open("/dev/null").expect("/dev/null");
        let spare_fd = std::os::fd::AsRawFd::as_raw_fd(&spare);
        // SAFETY: dup2 is async-signal-safe.
        unsafe {
            in_own_session(&mut cmd).pre_exec(move || {
                libc::dup2(spare_fd, INHERITED_FD);
                Ok(())
            });
        }
        let cgroups = CgroupGuard::for_dir(dir.path());
        let child = cmd.spawn().expect("start the configuration binary");
        drop(spare);
        Sentry { dir, bin: bin.into(), scenario: scenario.into(), child, cgroups }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until the instance answers.
    pub fn waiting(self) -> Sentry {
        wait_for("the instance to answer", || self.cli(&["status", "--json"]).status.success().then_some(()));
        self
    }

    /// Runs `bin ARGS… --dir DIR` with the same scenario.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_within(
            Command::new(&self.bin).args(args).arg("--dir").arg(self.dir.path()).env("TCONF", &self.scenario),
            Duration::from_secs(120),
        )
    }

    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    pub fn entry(&self, name: &str) -> Value {
        let status = self.status();
        status["entries"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap_or(Value::Null)
    }

    /// The PIDs of an entry's processes that run their program, in slot
    /// order. Sentry does not wait for a child's exec, so `status` may name
    /// a child that still runs Sentry's own image for a moment: it is left
    /// out until it has exec'd (what a test then reads of it — environment,
    /// credentials, fds — is the program's).
    pub fn pids(&self, name: &str) -> Vec<i32> {
        let entry = self.entry(name);
        let mut procs: Vec<(u64, i32)> = entry["processes"]
            .as_array()
            .map(|a| a.iter().map(|p| (p["index"].as_u64().unwrap(), p["pid"].as_i64().unwrap() as i32)).collect())
            .unwrap_or_default();
        procs.sort();
        let own = fs::read_link(format!("/proc/{}/exe", self.pid())).ok();
        let before_exec = |pid: i32| own.is_some() && fs::read_link(format!("/proc/{pid}/exe")).ok() == own;
        procs.into_iter().map(|(_, pid)| pid).filter(|&pid| !before_exec(pid)).collect()
    }

    /// Waits until entry `name` has exactly `n` processes; their PIDs by slot.
    pub fn wait_pids(&self, name: &str, n: usize) -> Vec<i32> {
        wait_for(&format!("{n} processes of {name}"), || Some(self.pids(name)).filter(|p| p.len() == n))
    }

    /// SIGKILLs the supervisor and waits for each of `children` to die with
    /// it (PDEATHSIG).
    pub fn sigkill_taking_along(&mut self, children: &[i32]) {
        // SAFETY: plain kill of the supervisor this test started.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        self.wait_exit();
        for &pid in children {
            wait_for(&format!("PDEATHSIG to kill child {pid}"), || (!alive(pid)).then_some(()));
        }
    }

    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.path().join("console.txt")).unwrap_or_default()
    }

    pub fn log(&self, entry: &str) -> String {
        fs::read_to_string(self.dir.path().join("log").join(format!("{entry}.log"))).unwrap_or_default()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Whether the supervisor process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Waits for the supervisor process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("the supervisor did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sentry {
    fn drop(&mut self) {
        kill_session(self.pid());
        let _ = self.child.wait();
        // What escaped the session (setsid, daemons) is still in the
        // instance's cgroups: killed and removed with them.
        self.cgroups.clean();
    }
}

/// Runs `cmd` and returns its output, with stdin closed.
/// How long a command the tests run may take (cold cargo builds included)
/// before it counts as hung.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// Runs a command to completion in a session of its own and returns its
/// output; a command still running after [`COMMAND_LIMIT`] fails the test,
/// with every process of its session killed (a `start` that should have
/// been refused must not hang the suite).
pub fn run(cmd: &mut Command) -> Output {
    run_within(cmd, COMMAND_LIMIT)
}

pub fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    in_own_session(cmd);
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run a command");
    let sid = child.id() as i32;
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    if finished.recv_timeout(limit).is_err() {
        kill_session(sid);
        let output = waiter.join().unwrap().expect("wait for a command");
        panic!("{cmd:?} still running after {limit:?}; its output:\n{}{}", text(&output.stdout), text(&output.stderr));
    }
    waiter.join().unwrap().expect("wait for a command")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A configuration crate in a temporary directory, depending on this
/// checkout's sentry-core by path (with its `test-hooks` feature) and built
/// into a target directory shared by all tests (so only the first build
/// compiles the dependencies). Built with line tables only and without
/// incremental data, to spare a CI machine's disk: with full debug info
/// each binary was ~80 MiB, and the reload tests build dozens.
pub struct ConfCrate {
    pub dir: TempDir,
    pub name: String,
}

impl ConfCrate {
    /// A crate whose binary is `name`, with `main` as its `src/main.rs`.
    pub fn new(name: &str, main: &str) -> ConfCrate {
        let dir = TempDir::new(name);
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        fs::create_dir_all(dir.path().join("src")).unwrap();
        fs::write(
            dir.path().join("Cargo.toml"),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
                 [dependencies]\nsentry-core = {{ path = {:?}, features = [\"test-hooks\"] }}\n\n[workspace]\n\n\
                 [profile.dev]\ndebug = \"line-tables-only\"\nincremental = false\n",
                workspace.join("sentry-core")
            ),
        )
        .unwrap();
        // The workspace's lock file pins the same dependency versions: no resolution, shared artifacts.
        fs::copy(workspace.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
        let c = ConfCrate { dir, name: name.to_string() };
        c.write_main(main);
        c
    }

    pub fn write_main(&self, main: &str) {
        fs::write(self.dir.path().join("src/main.rs"), main).unwrap();
    }

    pub fn target_dir() -> PathBuf {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("conf-crates")
    }

    /// `cargo build`; returns the binary.
    pub fn build(&self) -> PathBuf {
        let out = run(Command::new(env!("CARGO"))
            .args(["build", "--quiet"])
            .current_dir(self.dir.path())
            .env("CARGO_TARGET_DIR", ConfCrate::target_dir()));
        assert!(out.status.success(), "cargo build of {} failed: {}", self.name, text(&out.stderr));
        ConfCrate::target_dir().join("debug").join(&self.name)
    }

    /// Builds and starts it in its own session, with DIR = CRATE.
    pub fn start(&self, envs: &[(&str, &str)]) -> Sentry {
        self.start_with_stdout(envs, None)
    }

    /// Same, with standard output going to `stdout` (see [`Sentry::spawn_with_stdout`]).
    pub fn start_with_stdout(&self, envs: &[(&str, &str)], stdout: Option<Stdio>) -> Sentry {
        let bin = self.build();
        let crate_dir = self.dir.path().to_str().unwrap().to_string();
        let target = ConfCrate::target_dir();
        let mut all: Vec<(&str, &str)> = vec![("CARGO_TARGET_DIR", target.to_str().unwrap())];
        all.extend_from_slice(envs);
        let run_dir = TempDir::new(&format!("{}-run", self.name));
        let s = Sentry::spawn_with_stdout(run_dir, bin.to_str().unwrap(), "-", &["--crate", &crate_dir], &all, stdout);
        wait_for("the instance to answer", || s.cli(&["status", "--json"]).status.success().then_some(()));
        s
    }
}

// ---------------------------------------------------------------------------
// cgroup v2 (tests/containment.rs; every Sentry's Drop cleans up with these)
// ---------------------------------------------------------------------------

/// Where the cgroup v2 hierarchy is mounted (`/proc/self/mountinfo`, type
/// `cgroup2`), and the mount's root within the hierarchy.
pub fn cgroup2_mount() -> Option<(PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        Some((PathBuf::from(unescape_mountinfo(fields.get(4)?)), unescape_mountinfo(fields.get(3)?)))
    })
}

/// mountinfo writes a space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path of `pid` (the `0::` line of `/proc/PID/cgroup`).
pub fn cgroup_of(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// The directory of a cgroup path as `/proc/PID/cgroup` shows it.
pub fn cgroup_dir(rel: &str) -> Option<PathBuf> {
    let (mount, root) = cgroup2_mount()?;
    let below = if root == "/" { rel } else { rel.strip_prefix(root.as_str())? };
    Some(mount.join(below.trim_start_matches('/')))
}

/// FNV-1a, 32 bits.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ *b as u32).wrapping_mul(0x0100_0193))
}

/// The 8 hex digits an instance in `dir` puts in its cgroup's name
/// (FNV-1a 32 of the canonical path's bytes).
pub fn dir_hash(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let canonical = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    format!("{:08x}", fnv1a32(canonical.as_os_str().as_bytes()))
}

/// `sentry.NAME.HASH` for the instance of binary `name` in `dir`.
pub fn instance_cgroup_name(name: &str, dir: &Path) -> String {
    format!("sentry.{name}.{}", dir_hash(dir))
}

/// Where an instance started by this test process puts its cgroup: beside
/// the test's own (a child Sentry starts in its parent's cgroup), as the
/// path `/proc/PID/cgroup` shows and as a directory.
pub fn expected_instance_cgroup(name: &str, dir: &Path) -> (String, PathBuf) {
    let own = cgroup_of(std::process::id() as i32).expect("the test process's cgroup v2 path");
    let rel = format!("{}/{}", own.trim_end_matches('/'), instance_cgroup_name(name, dir));
    let abs = cgroup_dir(&rel).expect("the cgroup v2 mount");
    (rel, abs)
}

/// Whether this process may create cgroups beside its own (root, or a
/// delegated subtree): the precondition of cgroup containment.
pub fn cgroups_writable() -> bool {
    let Some(own) = cgroup_of(std::process::id() as i32) else { return false };
    let Some(dir) = cgroup_dir(&own) else { return false };
    let probe = dir.join(
        format!("sentry-test-probe-{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], ""),
    );
    let ok = fs::create_dir(&probe).is_ok();
    let _ = fs::remove_dir(&probe);
    ok && fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs")).is_ok()
}

/// The live PIDs in the cgroup at `dir` (its own `cgroup.procs`, not its descendants').
pub fn cgroup_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// `populated` of the cgroup at `dir` (it or a descendant holds a live process).
pub fn cgroup_populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|t| t.lines().any(|l| l.trim() == "populated 1"))
}

/// Every live PID in the cgroup at `dir` and below it.
pub fn cgroup_tree_procs(dir: &Path) -> Vec<i32> {
    let mut pids = cgroup_procs(dir);
    for sub in subdirs(dir) {
        pids.extend(cgroup_tree_procs(&sub));
    }
    pids
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Every cgroup named `sentry.*.HASH` (an instance's, for the DIR whose
/// hash that is) below the cgroup v2 mount: depth-first from the mount,
/// not descending into other instances' trees.
pub fn instance_cgroups_with_hash(hash: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, suffix: &str, depth: usize, out: &mut Vec<PathBuf>) {
        for sub in subdirs(dir) {
            let name = sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with("sentry.") && name.ends_with(suffix) {
                out.push(sub);
            } else if !name.starts_with("sentry.") && depth < 12 {
                walk(&sub, suffix, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some((mount, _)) = cgroup2_mount() {
        walk(&mount, &format!(".{hash}"), 0, &mut out);
    }
    out
}

/// The instance cgroups of `dir`: found by name, and as recorded in any
/// `DIR/*.procs` (field `cgroup`), if that names a `sentry.*` cgroup.
pub fn instance_cgroups_of(dir: &Path) -> Vec<PathBuf> {
    let mut found = instance_cgroups_with_hash(&dir_hash(dir));
    for recorded in recorded_cgroups(dir) {
        if !found.contains(&recorded) {
            found.push(recorded);
        }
    }
    found
}

/// The `cgroup` fields of `DIR/*.procs` that name a `sentry.*` directory
/// below the cgroup v2 mount.
pub fn recorded_cgroups(dir: &Path) -> Vec<PathBuf> {
    let Some((mount, _)) = cgroup2_mount() else { return Vec::new() };
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().ends_with(".procs") {
            continue;
        }
        let Ok(text) = fs::read_to_string(e.path()) else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
        let Some(cg) = v["cgroup"].as_str() else { continue };
        let p = PathBuf::from(cg);
        let named = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sentry."));
        if named && p.starts_with(&mount) && !cg.contains("/../") && p.is_dir() {
            out.push(p);
        }
    }
    out
}

/// Kills every process in the cgroup tree at `dir` (`cgroup.kill`), waits
/// (bounded) until it holds none, and removes its cgroups, deepest first.
/// Returns what could not be removed.
pub fn remove_cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    if !dir.join("cgroup.procs").exists() {
        return Vec::new();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = fs::write(dir.join("cgroup.kill"), "1");
        if !cgroup_populated(dir) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fn rmdir_deepest_first(dir: &Path, left: &mut Vec<PathBuf>) {
        for sub in subdirs(dir) {
            rmdir_deepest_first(&sub, left);
        }
        // A cgroup may still be busy for a moment after its last process died.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => {
                    left.push(dir.to_path_buf());
                    return;
                }
            }
        }
    }
    let mut left = Vec::new();
    rmdir_deepest_first(dir, &mut left);
    left
}

/// Removes, on drop (or on [`CgroupGuard::clean`]), every cgroup an
/// instance in one DIR made — found by the DIR's hash (computed at once,
/// while DIR exists) and by what DIR records — killing what is in them.
/// For instances started other than through [`Sentry`] (whose Drop does it).
pub struct CgroupGuard {
    dir: PathBuf,
    hash: String,
}

impl CgroupGuard {
    pub fn for_dir(dir: &Path) -> CgroupGuard {
        CgroupGuard { dir: dir.to_path_buf(), hash: dir_hash(dir) }
    }

    pub fn clean(&self) {
        let mut found = instance_cgroups_with_hash(&self.hash);
        for recorded in recorded_cgroups(&self.dir) {
            if !found.contains(&recorded) {
                found.push(recorded);
            }
        }
        for tree in found {
            let left = remove_cgroup_tree(&tree);
            if !left.is_empty() {
                eprintln!("warning: cgroups left behind (still busy): {left:?}");
            }
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        self.clean();
    }
}

/// A cgroup v1 freezer group the test owns (these machines have the hybrid
/// layout): a process frozen in it sleeps uninterruptibly, so SIGKILL
/// cannot end it until it is thawed. Thawed and removed on drop.
pub struct Freezer(pub PathBuf);

impl Freezer {
    /// `None` where there is no v1 freezer (the test then skips).
    pub fn new() -> Option<Freezer> {
        let root = Path::new("/sys/fs/cgroup/freezer");
        if !root.join("cgroup.procs").exists() {
            return None;
        }
        let dir = root.join(
            format!("sentry-test-{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], ""),
        );
        fs::create_dir_all(&dir).ok()?;
        Some(Freezer(dir))
    }

    pub fn freeze(&self, pid: i32) {
        fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into the freezer");
        fs::write(self.0.join("freezer.state"), "FROZEN").expect("freeze");
    }

    pub fn thaw(&self) {
        let _ = fs::write(self.0.join("freezer.state"), "THAWED");
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.thaw();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
