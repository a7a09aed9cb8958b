//! A tree that outlives SIGKILL under cgroup containment: the slot goes on
//! in a fresh cgroup while the old one is reported until it empties. A
//! process is held in uninterruptible sleep by a cgroup v1 freezer group
//! (these machines have the hybrid layout), which SIGKILL cannot wake.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// A cgroup v1 freezer group the test owns, thawed and removed on drop.
struct Freezer(PathBuf);

impl Freezer {
    fn new() -> Option<Freezer> {
        let root = Path::new("/sys/fs/cgroup/freezer");
        if !root.join("cgroup.procs").exists() {
            return None;
        }
        let dir = root.join(format!("sentry-stuck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        Some(Freezer(dir))
    }

    fn freeze(&self, pid: i32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into the freezer");
        std::fs::write(self.0.join("freezer.state"), "FROZEN").expect("freeze");
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.thaw();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn slot(entry: &Value, index: u64) -> Value {
    entry["slots"].as_array().and_then(|a| a.iter().find(|s| s["index"] == index).cloned()).unwrap_or(Value::Null)
}

#[test]
fn a_tree_that_outlives_sigkill_is_set_aside_and_the_slot_goes_on_in_a_fresh_cgroup() {
    let Some(freezer) = Freezer::new() else {
        eprintln!("skipped: no cgroup v1 freezer to hold a process in uninterruptible sleep");
        return;
    };
    let s = Sentry::start(TCONF, "frozen", &[]);
    let status = s.status();
    if status["containment"]["kind"] != "cgroup" {
        eprintln!("skipped: no cgroup containment here ({})", status["containment"]);
        return;
    }
    let root = PathBuf::from(status["containment"]["cgroup"].as_str().unwrap());
    let pid = s.wait_pids("frozen", 1)[0];
    let first = slot(&s.entry("frozen"), 0)["cgroup"].as_str().unwrap().to_string();
    assert!(first.ends_with("/frozen/0"), "{first}");
    freezer.freeze(pid);
    // restart: SIGTERM, cgroup.kill after 0.5 s, 5 s of grace; then the
    // slot starts again beside the frozen tree, and the answer says so.
    let began = Instant::now();
    let out = s.cli(&["restart", "frozen"]);
    assert!(began.elapsed() < Duration::from_secs(20), "restart took {:?}", began.elapsed());
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let e = s.entry("frozen");
    let now = slot(&e, 0);
    assert_eq!(now["state"], "running", "{e}");
    assert_ne!(now["pid"], pid, "{e}");
    let fresh = now["cgroup"].as_str().unwrap().to_string();
    assert!(fresh.starts_with(&format!("{first}.")), "a fresh cgroup beside the stuck one: {fresh}");
    let stuck = &e["unkillable"][0];
    assert_eq!((stuck["index"].as_u64(), stuck["pid"].as_i64()), (Some(0), Some(pid as i64)), "{e}");
    assert_eq!((stuck["cgroup"].as_str(), stuck["processes"].as_u64()), (Some(first.as_str()), Some(1)), "{e}");
    assert!(s.console().contains("outlived SIGKILL"), "{}", s.console());
    let stuck_dir = root.join("frozen/0");
    assert!(stuck_dir.exists());
    // Once it can die, it is reaped, its cgroup removed, and it is no longer reported.
    freezer.thaw();
    wait_for("the stuck tree to be gone", || s.entry("frozen")["unkillable"].as_array()?.is_empty().then_some(()));
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    wait_for("its cgroup removed", || (!stuck_dir.exists()).then_some(()));
    assert_eq!(slot(&s.entry("frozen"), 0)["state"], "running");
}
