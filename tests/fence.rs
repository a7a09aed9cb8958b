//! The edges of cgroup containment that a hostile user found: a recorded
//! cgroup that is not the instance's, a name taken by another DIR's
//! instance, a tree left without a record, a leader that moves out of its
//! leaf, a child that nests a cgroup inside its leaf, and an entry's own
//! `exec` helper. Each test skips (saying so) where Sentry has no cgroup
//! containment, and removes every cgroup it made, even on failure.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// The cgroup v2 mount point (support's `cgroup2_mount` without the root).
fn cgroup2_mount() -> Option<PathBuf> {
    support::cgroup2_mount().map(|(mount, _)| mount)
}

/// The instance's cgroup directory, if it has cgroup containment.
fn instance_cgroup(s: &Sentry) -> Option<PathBuf> {
    let status = s.status();
    status["containment"]["cgroup"].as_str().map(PathBuf::from)
}

/// A cgroup the test made, holding processes the test started: on drop
/// they are SIGKILLed (`cgroup.kill`) and the cgroup (and what is below)
/// removed.
struct Victim {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Victim {
    fn new(dir: PathBuf) -> Victim {
        std::fs::create_dir_all(&dir).expect("make the victim's cgroup");
        Victim { dir, children: Vec::new() }
    }

    /// Starts `sleep 1000` in it (moved in before it execs).
    fn sleeper(&mut self) -> i32 {
        let procs = self.dir.join("cgroup.procs");
        let child = Command::new("sh")
            .args(["-c", "echo $$ > \"$1\" && exec sleep 1000", "sh"])
            .arg(&procs)
            .stdin(Stdio::null())
            .spawn()
            .expect("start a sleeper");
        let pid = child.id() as i32;
        self.children.push(child);
        wait_for("the sleeper in its cgroup", || {
            std::fs::read_to_string(&procs).ok()?.lines().any(|l| l == pid.to_string()).then_some(())
        });
        pid
    }

    fn mark(&self, owner: &str) {
        let out = Command::new("python3")
            .args(["-c", "import os, sys; os.setxattr(sys.argv[1], 'user.sentry.dir', sys.argv[2].encode())"])
            .arg(&self.dir)
            .arg(owner)
            .output()
            .expect("python3");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for c in &mut self.children {
            let _ = c.wait();
        }
        let left = remove_cgroup_tree(&self.dir);
        assert!(left.is_empty() || std::thread::panicking(), "cgroups left: {left:?}");
    }
}

fn slot(entry: &Value, index: u64) -> Value {
    entry["slots"].as_array().and_then(|a| a.iter().find(|s| s["index"] == index).cloned()).unwrap_or(Value::Null)
}

#[test]
fn a_recorded_cgroup_that_is_not_the_instances_is_left_alone_and_an_unrecorded_leftover_is_emptied() {
    let dir = TempDir::new("fence-ledger");
    let dir_path = dir.path().to_path_buf();
    let mut s = Sentry::spawn_in(dir, TCONF, "escape-always", &[]).waiting();
    let Some(root) = instance_cgroup(&s) else {
        eprintln!("skipped: no cgroup containment here");
        return;
    };
    // A setsid'd sleeper of the first run survives its Sentry's SIGKILL.
    let leader = s.wait_pids("escape", 1)[0];
    let escaped = wait_for("the escaped sleeper", || {
        let procs = std::fs::read_to_string(root.join("escape/0/cgroup.procs")).ok()?;
        procs
            .lines()
            .filter_map(|l| l.parse::<i32>().ok())
            .find(|p| *p != leader && stat_fields(*p).is_some_and(|f| f[3] == p.to_string()))
    });
    s.sigkill_taking_along(&[leader]);
    assert!(alive(escaped));
    // Someone edits the record to name a cgroup of the same name elsewhere,
    // holding an innocent process.
    let mount = cgroup2_mount().unwrap();
    let parent = Victim::new(mount.join(format!("sentry-test-victim-{}", std::process::id())));
    let mut victim = Victim::new(parent.dir.join(root.file_name().unwrap()));
    let innocent = victim.sleeper();
    let ledger = dir_path.join("tconf.procs");
    let mut record: Value = serde_json::from_str(&std::fs::read_to_string(&ledger).unwrap()).unwrap();
    record["cgroup"] = Value::String(victim.dir.display().to_string());
    std::fs::write(&ledger, record.to_string()).unwrap();
    let again = Sentry::spawn_in(TempDir(dir_path.clone()), TCONF, "escape-always", &[]).waiting();
    let console = again.console();
    assert!(console.contains("is not this instance's: left alone"), "{console}");
    assert!(alive(innocent), "the innocent process lives: {console}");
    // The instance's own tree, whose record was lost, is emptied by its mark.
    assert!(console.contains("its record lost"), "{console}");
    wait_for("the escaped sleeper of the first run gone", || (!alive(escaped)).then_some(()));
    assert_eq!(instance_cgroup(&again), Some(root));
    drop(victim);
    let mut again = again;
    again.cli(&["stop"]);
    again.wait_exit();
    drop(parent);
}

#[test]
fn a_cgroup_name_taken_by_another_dirs_instance_is_not_shared() {
    let mut s = Sentry::start(TCONF, "basic", &[]);
    let Some(root) = instance_cgroup(&s) else {
        eprintln!("skipped: no cgroup containment here");
        return;
    };
    let dir_path = s.dir.path().to_path_buf();
    assert!(s.cli(&["stop"]).status.success());
    s.wait_exit();
    assert!(!root.exists(), "a clean stop removes the instance's cgroup");
    // The name is taken (as if another DIR's name hashed the same), by a
    // cgroup marked as another DIR's, with a process in it.
    let mut other = Victim::new(root.clone());
    other.mark("/some/other/dir");
    let stranger = other.sleeper();
    let again = Sentry::spawn_in(TempDir(dir_path), TCONF, "basic", &[]).waiting();
    let mine = instance_cgroup(&again).expect("still cgroup containment");
    assert_eq!(mine, PathBuf::from(format!("{}.2", root.display())), "another name");
    again.wait_pids("idle", 2);
    let mut again = again;
    assert!(again.cli(&["stop"]).status.success());
    again.wait_exit();
    assert!(alive(stranger), "the other instance's process was never touched");
    assert!(!mine.exists());
}

#[test]
fn a_leader_that_moves_up_out_of_its_leaf_is_still_stopped() {
    let Some(mount) = cgroup2_mount() else {
        eprintln!("skipped: no cgroup v2");
        return;
    };
    let envs = [("TCGMOUNT", mount.to_str().unwrap())];
    let s = Sentry::spawn_with(TempDir::new("fence-escape"), TCONF, "fence-escape", &[], &envs).waiting();
    let Some(root) = instance_cgroup(&s) else {
        eprintln!("skipped: no cgroup containment here");
        return;
    };
    let leader = s.wait_pids("escape", 1)[0];
    let rel = format!("/{}", root.strip_prefix(&mount).unwrap().display());
    wait_for("the leader in the instance's own cgroup", || {
        let line = std::fs::read_to_string(format!("/proc/{leader}/cgroup")).ok()?;
        line.lines().any(|l| l == format!("0::{rel}")).then_some(())
    });
    let out = s.cli(&["restart", "escape"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!alive(leader), "the old leader was stopped through its pidfd");
    let e = s.entry("escape");
    assert_eq!(e["processes"].as_array().map(Vec::len), Some(1), "no second copy: {e}");
    assert_eq!(e["unkillable"].as_array().map(Vec::len), Some(0), "{e}");
}

#[test]
fn a_cgroup_nested_inside_a_leaf_is_counted_and_stopped_gracefully() {
    let Some(mount) = cgroup2_mount() else {
        eprintln!("skipped: no cgroup v2");
        return;
    };
    let envs = [("TCGMOUNT", mount.to_str().unwrap())];
    let s = Sentry::spawn_with(TempDir::new("fence-nest"), TCONF, "fence-nest", &[], &envs).waiting();
    if instance_cgroup(&s).is_none() {
        eprintln!("skipped: no cgroup containment here");
        return;
    }
    wait_for("the inner process ready", || s.log("nest").contains("inner-ready").then_some(()));
    let tree = wait_for("both processes counted", || {
        let slot = slot(&s.entry("nest"), 0);
        (slot["tree"]["processes"] == 2).then_some(slot)
    });
    assert!(tree["tree"]["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{tree}");
    let out = s.cli(&["restart", "nest"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(s.log("nest").contains("inner-term"), "the inner process got the stop signal: {}", s.log("nest"));
    wait_for("the new process's inner one", || (s.log("nest").matches("inner-ready").count() == 2).then_some(()));
}

#[test]
fn an_entrys_rules_never_fire_on_its_own_exec_helpers() {
    let s = Sentry::start(TCONF, "fence-helper", &[]);
    let pid = s.wait_pids("hog", 1)[0];
    let firings = |console: &str| -> Vec<i32> {
        console
            .lines()
            .filter(|l| l.contains("rmem") && l.contains(": exec"))
            .filter_map(|l| l.split("hog.").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    };
    // Three firings: each helper (sleep 3) lives through the next ones.
    wait_for("three firings", || (firings(&s.console()).len() >= 3).then_some(()));
    let fired = firings(&s.console());
    assert!(fired.iter().all(|p| *p == pid), "only the slot's process: {fired:?} (slot {pid})\n{}", s.console());
}

/// The threads of process `pid`, by name.
fn thread_names(pid: i32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

#[test]
fn lingering_cgroups_are_watched_by_one_thread_only_under_cgroup_containment() {
    let s = Sentry::start(TCONF, "basic", &[]);
    if instance_cgroup(&s).is_none() {
        eprintln!("skipped: no cgroup containment here");
        return;
    }
    let names = wait_for("the cgroup events thread", || {
        let names = thread_names(s.pid());
        names.iter().any(|n| n == "sentry-cgroups").then_some(names)
    });
    assert_eq!(names.iter().filter(|n| *n == "sentry-cgroups").count(), 1, "{names:?}");
    let groups = Sentry::spawn_with(TempDir::new("fence-pg"), TCONF, "basic", &[], &[PROCESS_GROUPS]).waiting();
    groups.wait_pids("idle", 2);
    assert!(!thread_names(groups.pid()).iter().any(|n| n == "sentry-cgroups"), "{:?}", thread_names(groups.pid()));
}

const PROCESS_GROUPS: (&str, &str) = ("SENTRY_CONTAINMENT", "process-group");

#[test]
fn a_ledger_others_could_write_is_trusted_with_nothing() {
    for (case, tamper) in [("writable by all", 0), ("a symbolic link", 1)] {
        let dir = TempDir::new("fence-trust");
        let dir_path = dir.path().to_path_buf();
        let mut s = Sentry::spawn_with(dir, TCONF, "orphans", &[], &[PROCESS_GROUPS]).waiting();
        let leader = s.wait_pids("orphans", 1)[0];
        let member = wait_for("the member", || {
            s.log("orphans").lines().find_map(|l| l.split("member ").nth(1)?.trim().parse::<i32>().ok())
        });
        s.sigkill_taking_along(&[leader]);
        let ledger = dir_path.join("tconf.procs");
        if tamper == 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o666)).unwrap();
        } else {
            let elsewhere = dir_path.join("elsewhere.json");
            std::fs::rename(&ledger, &elsewhere).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &ledger).unwrap();
        }
        let again = Sentry::spawn_with(TempDir(dir_path.clone()), TCONF, "orphans", &[], &[PROCESS_GROUPS]).waiting();
        again.wait_pids("orphans", 1);
        let console = again.console();
        assert!(console.contains("not trusted, nothing was stopped"), "{case}: {console}");
        assert!(alive(member), "{case}: the member was left alone");
        // SAFETY: the member of this test's own first instance.
        unsafe { libc::kill(member, libc::SIGKILL) };
    }
}

#[test]
fn a_reload_keeps_each_slots_cgroup_even_when_its_leader_moved_deeper() {
    let Some(mount) = cgroup2_mount() else {
        eprintln!("skipped: no cgroup v2");
        return;
    };
    let envs = [("TCGMOUNT", mount.to_str().unwrap())];
    let s = Sentry::spawn_with(TempDir::new("fence-sub"), TCONF, "fence-sub", &[], &envs).waiting();
    let Some(root) = instance_cgroup(&s) else {
        eprintln!("skipped: no cgroup containment here");
        return;
    };
    let pid = s.wait_pids("sub", 1)[0];
    wait_for("the leader moved", || s.log("sub").contains("moved").then_some(()));
    let leaf = format!("/{}/sub/0", root.strip_prefix(&mount).unwrap().display());
    assert_eq!(slot(&s.entry("sub"), 0)["cgroup"].as_str(), Some(leaf.as_str()));
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    wait_for("the re-exec", || (s.status()["reexec_count"] == 1).then_some(()));
    let after = slot(&s.entry("sub"), 0);
    assert_eq!(after["pid"], pid, "{after}");
    assert_eq!(after["cgroup"].as_str(), Some(leaf.as_str()), "the slot's leaf crossed the exec: {after}");
    assert_eq!(after["tree"]["processes"], 2, "the leader below and the sleeper in the leaf: {after}");
}

#[test]
fn a_scale_up_while_a_scale_down_is_stopping_keeps_the_slots() {
    let s = Sentry::start(TCONF, "fence-slow", &[]);
    let before = s.wait_pids("t", 2);
    let down = {
        let (bin, dir) = (s.bin.clone(), s.dir.path().to_path_buf());
        std::thread::spawn(move || {
            run_within(
                Command::new(bin).args(["scale", "t", "0", "--dir"]).arg(dir).env("TCONF", "fence-slow"),
                PATIENCE,
            )
        })
    };
    wait_for("both slots stopping", || {
        let e = s.entry("t");
        let slots = e["slots"].as_array()?.clone();
        (slots.len() == 2 && slots.iter().all(|s| s["state"] == "stopping")).then_some(())
    });
    let out = s.cli(&["scale", "t", "2"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let _ = down.join();
    let after = wait_for("two processes again", || {
        let pids = s.pids("t");
        (pids.len() == 2 && pids.iter().all(|p| !before.contains(p))).then_some(pids)
    });
    assert_eq!(after.len(), 2);
    assert_eq!(s.entry("t")["state"], "running");
}

#[test]
fn a_reload_answers_a_restart_still_settling_instead_of_waiting_for_it() {
    // The restart takes the whole stop timeout (30 s); the reload must not
    // wait for it, and the interface must answer meanwhile.
    let s = Sentry::spawn_with(TempDir::new("fence-reload"), TCONF, "fence-slow", &[], &[("TSTOP", "30")]).waiting();
    let before = s.wait_pids("t", 2);
    let restart = {
        let (bin, dir) = (s.bin.clone(), s.dir.path().to_path_buf());
        std::thread::spawn(move || {
            run_within(Command::new(bin).args(["restart", "t", "--dir"]).arg(dir).env("TCONF", "fence-slow"), PATIENCE)
        })
    };
    wait_for("the restart stopping both", || {
        let slots = s.entry("t")["slots"].as_array()?.clone();
        slots.iter().all(|s| s["state"] == "stopping").then_some(())
    });
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let restarted = restart.join().unwrap();
    assert!(restarted.status.success(), "{}", text(&restarted.stderr));
    assert!(text(&restarted.stdout).contains("a reload began before it settled"), "{}", text(&restarted.stdout));
    let status = s.status();
    assert_eq!(status["reexec_count"], 1);
    let slots = status["entries"][0]["slots"].as_array().unwrap().clone();
    assert!(slots.iter().all(|s| s["state"] == "stopping"), "the restart goes on in the new image: {slots:?}");
    assert!(before.iter().all(|p| alive(*p)), "still within their stop timeout");
}

#[test]
fn watches_never_match_what_runs_in_the_instances_own_cgroups() {
    let mark = format!("sp{}", std::process::id());
    let s = Sentry::spawn_with(TempDir::new("fence-spare"), TCONF, "fence-spare", &[], &[("TMARK", &mark)]).waiting();
    if instance_cgroup(&s).is_none() {
        eprintln!("skipped: no cgroup containment here");
        return;
    }
    s.wait_pids("dbl", 1);
    let marked = |m: &str| -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(m))
            })
            .collect()
    };
    let daemon = wait_for("the entry's daemon", || marked(&format!("spare-{mark}")).first().copied());
    // A stranger with the same marker, outside: the watch acts on it, which
    // shows the watch has scanned while the daemon ran.
    let mut stranger = Command::new("python3")
        .args(["-c", "import time; time.sleep(7777)", &format!("spare-{mark}")])
        .spawn()
        .unwrap();
    let ended = wait_for("the watch to stop the stranger", || stranger.try_wait().ok()?);
    assert!(!ended.success());
    assert!(alive(daemon), "Sentry's own daemon (in its entry's cgroup) was spared");
    let fired = s.status()["watches"][0]["rules"][0]["fired"].as_u64();
    assert_eq!(fired, Some(1), "only the stranger");
}

#[test]
fn a_containment_setting_that_is_not_understood_is_said() {
    let s =
        Sentry::spawn_with(TempDir::new("fence-odd"), TCONF, "basic", &[], &[("SENTRY_CONTAINMENT", "process_group")])
            .waiting();
    let console = wait_for("the containment lines", || {
        let c = s.console();
        c.contains("Containment:").then_some(c)
    });
    assert!(console.contains("SENTRY_CONTAINMENT=process_group is not understood"), "{console}");
}

#[test]
fn a_leftover_that_outlives_sigkill_is_emptied_once_at_the_next_start() {
    let dir = TempDir::new("fence-stuck-left");
    let dir_path = dir.path().to_path_buf();
    let mut first = Sentry::spawn_in(dir, TCONF, "frozen", &[]).waiting();
    if instance_cgroup(&first).is_none() {
        eprintln!("skipped: no cgroup containment here");
        return;
    }
    let Some(freezer) = Freezer::new() else {
        eprintln!("skipped: no cgroup v1 freezer to hold a process in uninterruptible sleep");
        return;
    };
    let pid = first.wait_pids("frozen", 1)[0];
    freezer.freeze(pid);
    // SAFETY: the supervisor this test started.
    unsafe { libc::kill(first.pid(), libc::SIGKILL) };
    first.wait_exit();
    // The record's pass empties the tree (SIGTERM, then cgroup.kill, which
    // the frozen process outlives); the tree is then taken over as it is,
    // not emptied a second time as a leftover "whose record was lost".
    let again = Sentry::spawn_in(TempDir(dir_path), TCONF, "frozen", &[]).waiting();
    again.wait_pids("frozen", 1);
    let console = again.console();
    assert_eq!(console.matches("left by a previous instance").count(), 1, "{console}");
    assert!(!console.contains("record lost"), "{console}");
    assert!(console.contains(&format!("{pid} (sleep 1000)")) && console.contains("outlived SIGKILL"), "{console}");
    drop(freezer);
    wait_for("the thawed process to die", || (!alive(pid)).then_some(()));
}
