//! What the bench measures: the floor, Sentry (`tconf`'s `bench-stamp`)
//! and the peers found installed, each started in a session of its own
//! with N copies of the stamping child, and killed with everything it
//! started when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::soak::harness::{in_own_session, marked, session_pids, Instance, Outcome};

/// Everything a launch needs.
pub struct Ctx {
    pub stamp: PathBuf,
    pub floor: PathBuf,
    pub scan: PathBuf,
    pub hog: PathBuf,
    /// The floor of a re-exec with a thread per child.
    pub rethread: PathBuf,
    pub tconf: PathBuf,
    /// The bench's temporary directory.
    pub work: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Floor,
    Sentry,
    Runit,
    Daemontools,
    Supervisord,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Sentry => "sentry",
            Kind::Runit => "runit",
            Kind::Daemontools => "daemontools",
            Kind::Supervisord => "supervisord",
        }
    }
}

/// The peers this machine has (by their programs on PATH), and a sentence
/// for each one it has not.
pub fn peers() -> (Vec<Kind>, Vec<String>) {
    let wanted = [
        (Kind::Runit, &["runsvdir", "runsv"][..], "runit (runsvdir/runsv)"),
        (Kind::Daemontools, &["svscan", "supervise"][..], "daemontools (svscan/supervise)"),
        (Kind::Supervisord, &["supervisord"][..], "supervisord (pip install supervisor)"),
    ];
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (kind, programs, what) in wanted {
        let absent: Vec<&str> = programs.iter().copied().filter(|p| which(p).is_none()).collect();
        if absent.is_empty() {
            found.push(kind);
        } else {
            missing.push(format!("{what}: not found ({} not on PATH)", absent.join(", ")));
        }
    }
    (found, missing)
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
}

/// A supervisor running N stamping children; killed with its session when dropped.
pub enum Running {
    Sentry(Instance),
    Session(Session),
}

impl Running {
    /// The session leader: Sentry, the floor, runsvdir, svscan, supervisord.
    pub fn leader(&self) -> i32 {
        match self {
            Running::Sentry(i) => i.pid,
            Running::Session(s) => s.pid,
        }
    }

    /// The supervisor's own processes: its session but the stamping children.
    pub fn supervisors(&self, stamp: &Path) -> Vec<i32> {
        session_pids(self.leader()).into_iter().filter(|&p| !is_stamp(p, stamp)).collect()
    }

    pub fn sentry(&self) -> Option<&Instance> {
        match self {
            Running::Sentry(i) => Some(i),
            Running::Session(_) => None,
        }
    }
}

/// Whether `pid` runs the stamping program (its executable, not its name).
pub fn is_stamp(pid: i32, stamp: &Path) -> bool {
    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == stamp)
}

/// Starts `kind` with `n` children stamping into `stamps`.
pub fn launch(kind: Kind, ctx: &Ctx, n: usize, stamps: &Path) -> Outcome<Running> {
    let file = stamps.to_string_lossy().into_owned();
    match kind {
        Kind::Floor => {
            let mut cmd = Command::new(&ctx.floor);
            cmd.arg(n.to_string()).arg(&ctx.stamp).arg(stamps);
            Session::start(cmd, ctx, "floor").map(Running::Session)
        }
        Kind::Sentry => {
            let count = n.to_string();
            let stamp = ctx.stamp.to_string_lossy().into_owned();
            let envs = [("TCOUNT", count.as_str()), ("TSTAMP", stamp.as_str()), ("TSTAMPFILE", file.as_str())];
            let mut inst = Instance::start(&ctx.tconf, "bench-stamp", &envs)?;
            inst.keep = false;
            Ok(Running::Sentry(inst))
        }
        Kind::Runit | Kind::Daemontools => {
            // One service directory per child, whose `run` is the stamping
            // program itself (it finds its file in BENCH_STAMPS).
            let dir = fresh_dir(ctx, kind.name())?;
            for i in 0..n {
                let svc = dir.join(format!("s{i}"));
                fs::create_dir(&svc).map_err(|e| format!("cannot create {}: {e}", svc.display()))?;
                std::os::unix::fs::symlink(&ctx.stamp, svc.join("run")).map_err(|e| e.to_string())?;
            }
            let program = if kind == Kind::Runit { "runsvdir" } else { "svscan" };
            let mut cmd = Command::new(program);
            cmd.arg(&dir).env("BENCH_STAMPS", &file);
            Session::start(cmd, ctx, kind.name()).map(Running::Session)
        }
        Kind::Supervisord => {
            let dir = fresh_dir(ctx, "supervisord")?;
            let conf = dir.join("supervisord.conf");
            let text = format!(
                "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
                 childlogdir={d}\nminfds=8192\nminprocs=2000\n\n\
                 [program:stamp]\ncommand={stamp} {file}\nnumprocs={n}\nprocess_name=%(program_name)s_%(process_num)d\n\
                 autorestart=true\nstartsecs=0\nstartretries=1000000\nstdout_logfile=NONE\nstderr_logfile=NONE\n",
                d = dir.display(),
                stamp = ctx.stamp.display(),
            );
            fs::write(&conf, text).map_err(|e| e.to_string())?;
            let mut cmd = Command::new("supervisord");
            cmd.arg("-n").arg("-c").arg(&conf);
            Session::start(cmd, ctx, "supervisord").map(Running::Session)
        }
    }
}

fn fresh_dir(ctx: &Ctx, name: &str) -> Outcome<PathBuf> {
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let dir = ctx.work.join(format!("{name}-{nonce}"));
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// A program (not Sentry) in a session of its own, marked like the soak's
/// instances (`SOAK_MARK`) so that whatever leaves the session is found too.
pub struct Session {
    pub pid: i32,
    mark: String,
    child: Child,
}

impl Session {
    pub fn start(mut cmd: Command, ctx: &Ctx, what: &str) -> Outcome<Session> {
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let mark = format!("bench-{}-{nonce}", std::process::id());
        let log = fs::File::create(ctx.work.join(format!("{what}-{nonce}.out"))).map_err(|e| e.to_string())?;
        cmd.env("SOAK_MARK", &mark)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        in_own_session(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok(Session { pid: child.id() as i32, mark, child })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for _ in 0..3 {
            for pid in session_pids(self.pid).into_iter().chain(marked(&self.mark)) {
                // SAFETY: processes this bench started (its session or its mark).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = marked(&self.mark);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
