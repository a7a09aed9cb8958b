//! `treemem` and `.cgroup(regex)` end to end: a small parent whose children
//! hold the memory is caught by `treemem` (watched, and as an entry's
//! process) while `rmem` spares it; a watch restricted to a cgroup the test
//! made catches the process inside it and not its twin outside; `explain`
//! shows both figures. Each test uses its own marker (and cgroup name) so
//! that parallel tests never see each other's processes.

#[path = "support/mod.rs"]
mod support;

use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");
/// A small Python parent whose three children allocate 100 MiB each (as in tconf).
const FAMILY: &str = "import subprocess, sys, time\n\
    hog = \"x = b'x' * (100 * 2**20)\\nimport time\\ntime.sleep(1000)\"\n\
    kids = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(3)]\n\
    time.sleep(1000)\n";
/// Small, and sleeping.
const SMALL: &str = "import time; time.sleep(1000)";

/// A process tree the test started outside Sentry, in a process group of
/// its own: the whole group is SIGKILLed on drop (children a signal left
/// orphaned included) and the leader reaped.
struct Foreign(Child);

impl Foreign {
    fn spawn(cmd: &mut Command) -> Foreign {
        Foreign(cmd.stdin(Stdio::null()).process_group(0).spawn().expect("spawn"))
    }

    fn python(code: &str, tag: &str) -> Foreign {
        Foreign::spawn(Command::new("python3").args(["-c", code, tag]))
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Waits for it to die and returns the signal that killed it.
    fn killed_by(&mut self) -> Option<i32> {
        let status = wait_for("the watched process to die", || self.0.try_wait().unwrap());
        status.signal()
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        // SAFETY: a kill of the process group this test made.
        unsafe { libc::killpg(self.pid(), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn marker(test: &str) -> String {
    format!("{test}{}", std::process::id())
}

fn kib(pid: i32, key: &str) -> u64 {
    proc_status(pid, key).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Waits until the children of `parent` hold more than `mib` MiB between them.
fn wait_for_children_to_hold(parent: i32, mib: u64) {
    wait_for("the children to allocate", || {
        let children = children_of(parent);
        let held: u64 = children.iter().map(|(pid, _)| kib(*pid, "VmRSS")).sum();
        (children.len() == 3 && held > mib << 10).then_some(())
    });
}

fn rules(status: &serde_json::Value, kind: &str, name: &str) -> Vec<serde_json::Value> {
    let target = status[kind].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap().clone();
    target["rules"].as_array().unwrap().clone()
}

#[test]
fn treemem_catches_a_small_parent_whose_children_hold_the_memory() {
    let m = marker("w");
    let mut family = Foreign::python(FAMILY, &format!("treemem-{m}"));
    wait_for_children_to_hold(family.pid(), 300);
    assert!(kib(family.pid(), "VmRSS") < 100 << 10, "the parent itself is small");

    // A dry run first: explain shows the figures and what would fire.
    let out = run(Command::new(TCONF).arg("explain").env("TCONF", "treemem-watch").env("TMARK", &m));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains(&format!("watch tree /treemem-{m}/: 1 processes")), "{report}");
    let line = report.lines().find(|l| l.trim_start().starts_with(&format!("{} ", family.pid()))).unwrap();
    let treemem = line.split("treemem").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or_default();
    let mib: u64 = treemem.strip_suffix('m').and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(mib > 300, "treemem of the tree, not of the parent alone: {line}");
    assert!(report.contains("cgroup /"), "its cgroup path is shown: {report}");
    assert!(report.contains("rule rmem > 200m => kill: would fire for no process"), "{report}");
    let rule = report.lines().find(|l| l.contains("rule treemem > 200m => term")).unwrap();
    assert!(rule.contains(&format!("would fire for {} (treemem ", family.pid())), "{report}");
    assert!(alive(family.pid()), "a dry run");

    let s = Sentry::spawn_with(TempDir::new("treemem"), TCONF, "treemem-watch", &[], &[("TMARK", &m)]).waiting();
    assert_eq!(family.killed_by(), Some(libc::SIGTERM), "term (treemem), not kill (rmem)");
    let rules = rules(&s.status(), "watches", "tree");
    assert_eq!((rules[0]["fired"].as_u64(), rules[1]["fired"].as_u64()), (Some(0), Some(1)), "{rules:?}");
    let console = s.console();
    let line = console.lines().find(|l| l.contains(&format!("tree.{}", family.pid()))).unwrap_or_default();
    assert!(line.contains("treemem ") && line.ends_with("> 200m: term."), "{console}");
}

#[test]
fn an_entry_is_restarted_by_its_tree_memory() {
    let s = Sentry::start(TCONF, "treemem-entry", &[]);
    let first = wait_for("the family", || s.pids("family").first().copied());
    let second =
        wait_for("a restart by the treemem rule", || s.pids("family").first().copied().filter(|p| *p != first));
    assert_ne!(second, first);
    let rules = rules(&s.status(), "entries", "family");
    assert_eq!(rules[0]["fired"].as_u64(), Some(0), "rmem of the parent stays small: {rules:?}");
    assert!(rules[1]["fired"].as_u64().is_some_and(|n| n >= 1), "{rules:?}");
    let console = s.console();
    assert!(
        console
            .lines()
            .any(|l| l.contains(&format!("family.{first}")) && l.contains("treemem ") && l.ends_with(": restart.")),
        "{console}"
    );
}

#[test]
fn an_entrys_tree_memory_counts_what_it_daemonized() {
    // The daemon left the leader's process tree (double fork, setsid); in
    // the slot's cgroup it is still the leader's: its 300 MiB count, the
    // rule restarts the slot, and the restart takes the daemon along.
    let mark = format!("tm{}", std::process::id());
    let s =
        Sentry::spawn_with(TempDir::new("treemem-daemon"), TCONF, "treemem-daemon", &[], &[("TMARK", &mark)]).waiting();
    if s.status()["containment"]["kind"] != "cgroup" {
        eprintln!("skipped: no cgroup containment here");
        return;
    }
    let first = wait_for("the leader", || s.pids("daemon").first().copied());
    let daemons = || processes_with(&format!("daemon-{mark}"));
    // The daemon: reparented away from the leader (the intermediate
    // processes are the leader's children until they exit).
    let away = |pid: &i32| stat_fields(*pid).is_some_and(|f| f[1] != first.to_string());
    let daemon = wait_for("the daemon", || daemons().into_iter().find(away));
    wait_for("a restart by the treemem rule", || s.pids("daemon").first().copied().filter(|p| *p != first));
    wait_for("the first daemon gone with its slot's cgroup", || (!daemons().contains(&daemon)).then_some(()));
    let rules = rules(&s.status(), "entries", "daemon");
    assert!(rules[0]["fired"].as_u64().is_some_and(|n| n >= 1), "{rules:?}");
}

/// Live processes whose command line contains `marker` (this test's own).
fn processes_with(marker: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains(marker) && !String::from_utf8_lossy(&c).starts_with("sh\0")
            })
        })
        .filter(|pid| stat_fields(*pid).is_some_and(|f| f[0] != "Z"))
        .collect()
}

/// A cgroup this test made directly under the cgroup v2 mount; on drop every
/// process in it is SIGKILLed (`cgroup.kill`) and the cgroup removed, even
/// when the test fails.
struct CgroupGuard {
    dir: PathBuf,
    name: String,
}

impl CgroupGuard {
    /// `None` (the test is skipped) where there is no writable cgroup v2.
    fn create(tag: &str) -> Option<CgroupGuard> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let mount = cgroup2_mount()?;
        let name = format!("sentry-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let dir = mount.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(CgroupGuard { dir, name }),
            Err(e) => {
                eprintln!("skipped: cannot create a cgroup under {}: {e}", mount.display());
                None
            }
        }
    }

    /// Starts `cmd` inside the cgroup: the child moves itself in before it
    /// execs, so nothing of it ever runs outside.
    fn spawn(&self, cmd: &mut Command) -> Foreign {
        let procs = std::fs::OpenOptions::new().write(true).open(self.dir.join("cgroup.procs")).unwrap();
        let fd = procs.as_raw_fd();
        // SAFETY: one write(2) of a static byte between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = Foreign::spawn(cmd);
        drop(procs);
        child
    }

    fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events")).is_ok_and(|t| t.contains("populated 1"))
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if std::fs::write(self.dir.join("cgroup.kill"), "1").is_err() {
            for pid in std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default().lines() {
                // SAFETY: a kill of a process in the cgroup this test made.
                unsafe { libc::kill(pid.trim().parse().unwrap_or(-1), libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + PATIENCE;
        while self.populated() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("cannot remove the test cgroup {}: {e}", self.dir.display());
        }
    }
}

/// Where cgroup v2 is mounted (support's `cgroup2_mount`), or why the test skips.
fn cgroup2_mount() -> Option<PathBuf> {
    let mount = support::cgroup2_mount().map(|(mount, _)| mount);
    if mount.is_none() {
        eprintln!("skipped: no cgroup v2 hierarchy is mounted");
    }
    mount
}

#[test]
fn a_cgroup_watch_catches_the_process_inside_and_spares_its_twin_outside() {
    let Some(cg) = CgroupGuard::create("cgwatch") else { return };
    let m = marker("c");
    let tag = format!("cgwatch-{m}");
    let mut inside = cg.spawn(Command::new("python3").args(["-c", SMALL, &tag]));
    let witness = cg.spawn(Command::new("sleep").arg("1000"));
    let outside = Foreign::python(SMALL, &tag);
    let path = cgroup_of(inside.pid()).unwrap_or_default();
    assert!(path.ends_with(&format!("/{}", cg.name)), "{path}");
    assert_eq!(cgroup_of(witness.pid()).unwrap_or_default(), path);
    assert_ne!(cgroup_of(outside.pid()).unwrap_or_default(), path);
    assert!(Path::new(&cg.dir).join("cgroup.procs").exists());
    let envs = [("TMARK", m.as_str()), ("TCGROUP", cg.name.as_str())];

    // explain: the twins' cgroups are shown; only the one inside matches.
    let out = run(Command::new(TCONF).arg("explain").env("TCONF", "cgroup-watch").envs(envs));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    let head = format!("watch scoped /{tag}/ in cgroups //{}$/: 1 processes", cg.name);
    assert!(report.contains(&head), "{report}");
    let after_pid = report.split(&format!("\n  {:>7}  ", inside.pid())).nth(1).unwrap_or_default();
    assert!(after_pid.lines().nth(1).is_some_and(|l| l.trim() == format!("cgroup {path}")), "{report}");
    assert!(!report.contains(&format!(" {} ", outside.pid())), "the twin outside is not listed: {report}");

    let s = Sentry::spawn_with(TempDir::new("cgwatch"), TCONF, "cgroup-watch", &[], &envs).waiting();
    assert_eq!(inside.killed_by(), Some(libc::SIGTERM));
    // The watch by cgroup alone keeps firing for the witness, once a
    // second: two firings are at least five scans after the first.
    let witnessed = format!("bycg {}", witness.pid());
    wait_for("two firings for the witness", || (s.log("bycg").matches(&witnessed).count() >= 2).then_some(()));
    assert!(alive(outside.pid()), "same command line, another cgroup: spared");
    let status = s.status();
    let scoped = status["watches"].as_array().unwrap().iter().find(|w| w["name"] == "scoped").unwrap().clone();
    assert_eq!(scoped["rules"][0]["fired"], 1, "{scoped}");
    let matched: Vec<i64> = scoped["matched"].as_array().unwrap().iter().filter_map(|p| p["pid"].as_i64()).collect();
    assert!(!matched.contains(&(outside.pid() as i64)), "{scoped}");
    let log = s.log("bycg");
    assert!(!log.contains(&format!("bycg {}\n", outside.pid())), "{log}");
    assert!(alive(witness.pid()));
}
