//! The soak's small harness: a Sentry instance in a session of its own
//! (killed with every process it left when dropped, escaped ones included),
//! a loopback HTTP/1.0 client, figures from /proc, signals through pidfds,
//! a seeded random generator, and polling with deadlines.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub type Outcome<T> = Result<T, String>;

/// A configuration binary running `start` in a session of its own.
pub struct Instance {
    pub pid: i32,
    pub dir: PathBuf,
    pub bin: PathBuf,
    addr: String,
    token: String,
    /// `SOAK_MARK=…`, inherited by every child: how escaped processes are found.
    mark: String,
    child: Child,
    /// Keep the run directory (console, logs) for a look after a failure:
    /// true until a phase says it passed.
    pub keep: bool,
}

impl Instance {
    /// `BIN start --dir DIR` with `TCONF=scenario`; waits until it answers.
    pub fn start(bin: &Path, scenario: &str, envs: &[(&str, &str)]) -> Outcome<Instance> {
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = std::env::temp_dir().join(format!("sentry-soak-{scenario}-{}-{nonce}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let console = fs::File::create(dir.join("console.txt")).map_err(|e| e.to_string())?;
        let mark = format!("{}-{nonce}", std::process::id());
        let mut cmd = Command::new(bin);
        cmd.arg("start")
            .arg("--dir")
            .arg(&dir)
            .env("TCONF", scenario)
            .env("SOAK_MARK", &mark)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(console.try_clone().map_err(|e| e.to_string())?)
            .stderr(console);
        in_own_session(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut inst = Instance {
            pid: child.id() as i32,
            dir,
            bin: bin.to_path_buf(),
            addr: String::new(),
            token: String::new(),
            mark,
            child,
            keep: true,
        };
        let (addr, token) = wait_until("the instance to write its address and token", Duration::from_secs(30), || {
            let addr = fs::read_to_string(inst.dir.join("tconf.addr")).ok();
            let token = fs::read_to_string(inst.dir.join("tconf.token")).ok();
            Ok(addr.zip(token).filter(|(a, t)| a.ends_with('\n') && !t.trim().is_empty()))
        })?;
        inst.addr = addr.trim().to_string();
        inst.token = token.trim().to_string();
        wait_until("the instance to answer", Duration::from_secs(30), || Ok(inst.status().ok()))?;
        Ok(inst)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn get(&self, path: &str) -> Outcome<(u16, String)> {
        http(&self.addr, "GET", path, None, None)
    }

    pub fn post(&self, path: &str, body: &str) -> Outcome<(u16, String)> {
        http(&self.addr, "POST", path, Some(&self.token), Some(body))
    }

    pub fn status(&self) -> Outcome<Value> {
        let (code, body) = self.get("/status")?;
        if code != 200 {
            return Err(format!("GET /status: {code} {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET /status: not JSON ({e})"))
    }

    pub fn entry(&self, name: &str) -> Outcome<Value> {
        let status = self.status()?;
        let entries = status["entries"].as_array().cloned().unwrap_or_default();
        entries.into_iter().find(|e| e["name"] == name).ok_or_else(|| format!("no entry {name} in status"))
    }

    /// `POST /entries/NAME/scale`; an answer other than 200 is an error.
    pub fn scale(&self, name: &str, count: usize) -> Outcome<()> {
        let (code, body) = self.post(&format!("/entries/{name}/scale"), &format!("{{\"count\": {count}}}"))?;
        match code {
            // 202: taken while a reload began; it settles in the new image.
            200 | 202 => Ok(()),
            _ => Err(format!("scale {name} {count}: {code} {body}")),
        }
    }

    /// `POST /reload` re-exec'ing this same binary (after its `check`); the ticket.
    pub fn reload(&self) -> Outcome<u64> {
        let body = serde_json::json!({ "exec": self.bin.to_string_lossy() }).to_string();
        let (code, answer) = self.post("/reload", &body)?;
        if code != 202 {
            return Err(format!("POST /reload: {code} {answer}"));
        }
        let v: Value = serde_json::from_str(&answer).map_err(|e| format!("POST /reload: not JSON ({e})"))?;
        v["reload"].as_u64().ok_or_else(|| format!("POST /reload: no ticket in {answer}"))
    }

    /// Waits for the outcome of reload `ticket`; an error if it failed.
    pub fn wait_reload(&self, ticket: u64, patience: Duration) -> Outcome<Value> {
        let status = wait_until(&format!("the outcome of reload #{ticket}"), patience, || {
            Ok(self.status().ok().filter(|s| s["last_reload"]["id"].as_u64().is_some_and(|id| id >= ticket)))
        })?;
        match status["last_reload"]["ok"].as_bool() {
            Some(true) => Ok(status),
            _ => Err(format!("reload #{ticket} failed: {}", status["last_reload"])),
        }
    }

    /// The PIDs of an entry's processes by slot, and whether every slot runs.
    pub fn processes(&self, name: &str) -> Outcome<(Vec<(u64, i32)>, bool)> {
        let entry = self.entry(name)?;
        let mut procs: Vec<(u64, i32)> = entry["processes"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| Some((p["index"].as_u64()?, p["pid"].as_i64()? as i32))).collect())
            .unwrap_or_default();
        procs.sort();
        let all_running = entry["slots"].as_array().is_some_and(|s| s.iter().all(|s| s["state"] == "running"));
        Ok((procs, all_running))
    }

    /// Waits until entry `name` runs exactly `n` processes in slots `0..n`,
    /// every slot running, and Sentry has no other child.
    pub fn wait_settled(&self, name: &str, n: usize, patience: Duration) -> Outcome<Vec<i32>> {
        wait_until(&format!("{n} running processes of {name}, slots 0..{n}"), patience, || {
            let (procs, running) = self.processes(name)?;
            let slots_right = procs.iter().map(|(i, _)| *i).eq(0..n as u64);
            let pids: Vec<i32> = procs.iter().map(|(_, p)| *p).collect();
            let kids: HashSet<i32> =
                children_of(self.pid).into_iter().filter(|(_, s)| *s != 'Z').map(|(p, _)| p).collect();
            let same = kids == pids.iter().copied().collect::<HashSet<_>>();
            Ok((slots_right && running && same).then_some(pids))
        })
    }

    pub fn figures(&self) -> Figures {
        Figures::of(self.pid)
    }

    /// Children of Sentry that are zombies now.
    pub fn zombies(&self) -> Vec<i32> {
        children_of(self.pid).into_iter().filter(|(_, s)| *s == 'Z').map(|(p, _)| p).collect()
    }

    pub fn log_path(&self, entry: &str) -> PathBuf {
        self.dir.join("log").join(format!("{entry}.log"))
    }

    /// Live processes carrying this instance's mark outside its session.
    pub fn escaped(&self) -> Vec<i32> {
        marked(&self.mark).into_iter().filter(|&p| stat(p).is_some_and(|s| s.session != self.pid)).collect()
    }

    /// SIGTERM, as a user's ^C would; waits for a clean exit (status 0)
    /// that leaves nothing behind.
    pub fn stop(&mut self) -> Outcome<Duration> {
        let t0 = Instant::now();
        // SAFETY: a plain kill of the process this harness started, still unreaped.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let code = wait_until("Sentry to exit after SIGTERM", Duration::from_secs(60), || {
            self.child.try_wait().map_err(|e| e.to_string())
        })?;
        let took = t0.elapsed();
        if !code.success() {
            return Err(format!("Sentry exited with {code} after SIGTERM"));
        }
        let left = marked(&self.mark);
        if !left.is_empty() {
            return Err(format!("processes left after a clean stop: {left:?}"));
        }
        Ok(took)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Everything of the session, then whatever escaped it, by PID.
        for _ in 0..3 {
            for pid in session_pids(self.pid).into_iter().chain(marked(&self.mark)) {
                // SAFETY: processes this harness started (its session or its mark).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !marked(&self.mark).is_empty() && Instant::now() < deadline {
            for pid in marked(&self.mark) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_recorded_cgroups(&self.dir);
        if self.keep {
            eprintln!("soak: kept the run directory {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// One request over loopback HTTP/1.0; the status code and body. Every
/// step has a deadline (10 s), so a stuck server is an error, not a hang.
pub fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Outcome<(u16, String)> {
    let context = |e: std::io::Error| format!("{method} {path}: {e}");
    let sock = addr.parse().map_err(|e| format!("bad address {addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(10)).map_err(context)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(context)?;
    stream.set_write_timeout(Some(Duration::from_secs(10))).map_err(context)?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes()).map_err(context)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(context)?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or(format!("{method} {path}: no answer head"))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let code =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(format!("{method} {path}: bad head"))?;
    Ok((code, String::from_utf8_lossy(&answer[split + 4..]).into_owned()))
}

/// Polls `probe` every 20 ms until it gives `Some`; an error after `patience`.
pub fn wait_until<T>(what: &str, patience: Duration, mut probe: impl FnMut() -> Outcome<Option<T>>) -> Outcome<T> {
    let deadline = Instant::now() + patience;
    let mut last_error = None;
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            let why = last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
            return Err(format!("timed out after {patience:?} waiting for {what}{why}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sentry's own resource figures, from /proc/PID.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
}

impl Figures {
    pub fn of(pid: i32) -> Figures {
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Figures { fds, threads: field("Threads:") as usize, rss_kib: field("VmRSS:") }
    }

    /// Whether `self` (after) is within the tolerance of `before`.
    pub fn flat_against(&self, before: &Figures, tol: &Tolerance) -> bool {
        self.fds <= before.fds + tol.fds
            && self.threads <= before.threads + tol.threads
            && self.rss_kib <= before.rss_kib + before.rss_kib * tol.rss_percent / 100 + tol.rss_kib
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} fds, {} threads, {} KiB RSS", self.fds, self.threads, self.rss_kib)
    }
}

/// How much a figure may grow and still count as flat.
pub struct Tolerance {
    pub fds: usize,
    pub threads: usize,
    pub rss_percent: u64,
    pub rss_kib: u64,
}

/// Waits (up to `patience`) for Sentry's figures to come back within the
/// tolerance of `before` (connections and threads of finished requests
/// take a moment to go); the last figures read, and whether they are flat.
pub fn settle_figures(pid: i32, before: &Figures, tol: &Tolerance, patience: Duration) -> (Figures, bool) {
    let deadline = Instant::now() + patience;
    loop {
        let now = Figures::of(pid);
        if now.flat_against(before, tol) {
            return (now, true);
        }
        if Instant::now() > deadline {
            return (now, false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `/proc/PID/stat` says of a process (the fields the soak uses).
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub session: i32,
    /// Clock ticks since boot.
    pub starttime: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    let bytes = fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold anything, `)` included: the fields follow the last one.
    let rest = bytes.get(bytes.iter().rposition(|&b| b == b')')? + 2..)?;
    let f: Vec<String> = String::from_utf8_lossy(rest).split_whitespace().map(String::from).collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        starttime: f.get(19)?.parse().ok()?,
    })
}

/// How long a process has run, from its start time and the system's uptime.
pub fn age(s: &Stat) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let uptime: f64 =
        fs::read_to_string("/proc/uptime").ok().and_then(|u| u.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
    Duration::from_secs_f64((uptime - s.starttime as f64 / hz).max(0.0))
}

fn pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Children (any state) of `ppid`, with their state letter.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    pids().filter_map(|p| stat(p).filter(|s| s.ppid == ppid).map(|s| (p, s.state))).collect()
}

/// Every process of session `sid`.
pub fn session_pids(sid: i32) -> Vec<i32> {
    pids().filter(|&p| stat(p).is_some_and(|s| s.session == sid)).collect()
}

/// Live processes whose environment holds `SOAK_MARK=mark`.
pub fn marked(mark: &str) -> Vec<i32> {
    let needle = format!("SOAK_MARK={mark}");
    pids()
        .filter(|&p| {
            fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .filter(|&p| stat(p).is_some_and(|s| s.state != 'Z'))
        .collect()
}

/// SIGKILLs `pid` only if it is still the child of `parent` it was: through
/// a pidfd opened before the check, so a reused PID is never signalled.
pub fn kill_child(pid: i32, parent: i32, starttime: u64) -> bool {
    // SAFETY: plain syscalls on a PID; the fd is closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            return false;
        }
        let same = stat(pid).is_some_and(|s| s.ppid == parent && s.starttime == starttime && s.state != 'Z');
        let sent = same
            && libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0)
                == 0;
        libc::close(fd);
        sent
    }
}

/// A small seeded generator (splitmix64): the same seed, the same choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Makes `cmd` start a session of its own, so that everything it starts
/// can be found (its session's PIDs), and die with this process should it
/// end without cleaning up (^C).
pub fn in_own_session(cmd: &mut Command) {
    // SAFETY: setsid and prctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// `cargo build [--release] -p sentry-tests --bin tconf`; the binary's path.
pub fn build_tconf(release: bool) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace")?;
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    let out = Command::new(cargo)
        .args(["build", "--quiet", "-p", "sentry-tests", "--bin", "tconf", "--message-format=json-render-diagnostics"])
        .args(profile)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build {}-p sentry-tests --bin tconf failed",
            if release { "--release " } else { "" }
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "tconf")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo did not say where tconf is".to_string())
}

/// Empties (`cgroup.kill`) and removes, deepest first, the cgroup an
/// instance recorded in `dir` (`*.procs`, field `cgroup`): a killed
/// instance leaves it behind.
fn remove_recorded_cgroups(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "procs")) {
        let Ok(text) = fs::read_to_string(e.path()) else { continue };
        let Ok(record) = serde_json::from_str::<Value>(&text) else { continue };
        let Some(root) = record["cgroup"].as_str().map(PathBuf::from) else { continue };
        if !root.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sentry.")) {
            continue;
        }
        let _ = fs::write(root.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(root.join("cgroup.events")).is_ok_and(|t| t.contains("populated 1"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_cgroup_tree(&root);
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}
