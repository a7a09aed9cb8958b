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
        let child = cmd.spawn().expect("start the configuration binary");
        drop(spare);
        Sentry { dir, bin: bin.into(), scenario: scenario.into(), child }
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

    /// The PIDs of an entry's processes, in slot order.
    pub fn pids(&self, name: &str) -> Vec<i32> {
        let entry = self.entry(name);
        let mut procs: Vec<(u64, i32)> = entry["processes"]
            .as_array()
            .map(|a| a.iter().map(|p| (p["index"].as_u64().unwrap(), p["pid"].as_i64().unwrap() as i32)).collect())
            .unwrap_or_default();
        procs.sort();
        procs.into_iter().map(|(_, pid)| pid).collect()
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
/// compiles the dependencies).
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
                 [dependencies]\nsentry-core = {{ path = {:?}, features = [\"test-hooks\"] }}\n\n[workspace]\n",
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
