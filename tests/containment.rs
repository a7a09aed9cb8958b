//! cgroup v2 containment end to end (issue 9): where Sentry can write the
//! cgroup v2 hierarchy (root here; the hybrid layout puts it at
//! `/sys/fs/cgroup/unified`), each slot's process and all its descendants —
//! `setsid` daemons included — live in a leaf
//! `<Sentry's cgroup>/sentry.tconf.<hash of DIR>/<ENTRY>/<SLOT>`; stop,
//! restart and a leader's exit reach the whole tree; a SIGKILLed instance's
//! survivors are stopped by the next start in the same DIR; two instances
//! in two DIRs never touch each other; a reload keeps everything where it
//! is; where the tree is not writable, process groups as before, and status
//! says which and why.
//!
//! The "servers" and "daemons" are copies of `sleep` in a directory of the
//! test's own (`TSRV`), so a test counts them by executable, whatever
//! session or group they are in. Every test removes its cgroups, even on
//! failure (`Sentry`'s Drop, `CgroupGuard`).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// Whether the machine lets this test process create cgroups (the tests
/// run as root here); says so when it does not.
fn cgroups_here() -> bool {
    let ok = cgroups_writable();
    if !ok {
        eprintln!("skipped: cgroup v2 is not writable here (not root, no delegation)");
    }
    ok
}

/// The numbers that follow `word ` in a log, in order.
fn numbers_after(log: &str, word: &str) -> Vec<i32> {
    log.lines().filter_map(|l| l.split(&format!("{word} ")).nth(1)?.split_whitespace().next()?.parse().ok()).collect()
}

fn slot(entry: &Value, index: u64) -> Value {
    entry["slots"].as_array().and_then(|a| a.iter().find(|s| s["index"] == index).cloned()).unwrap_or(Value::Null)
}

/// A "server" binary (a copy of `sleep`) in a directory of its own; every
/// process running it is SIGKILLed on drop (a daemon that escaped its
/// session — and, without containment, any cgroup — is found by its
/// executable, which only this test uses).
struct Server {
    dir: TempDir,
    exe: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        for _ in 0..3 {
            for pid in processes_of(&self.exe) {
                // SAFETY: SIGKILL to a process running this test's own copy of sleep.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = &self.dir;
    }
}

fn server(tag: &str) -> (Server, PathBuf) {
    let dir = TempDir::new(&format!("srv-{tag}"));
    let exe = copy_of_sleep(dir.path(), &format!("srv-{tag}"));
    (Server { dir, exe: exe.clone() }, exe)
}

/// Starts `scenario` in `dir` with `TSRV=exe` and more `envs`; waits until it answers.
fn start_in(dir: TempDir, scenario: &str, exe: &Path, envs: &[(&str, &str)]) -> Sentry {
    let mut all = vec![("TSRV", exe.to_str().unwrap())];
    all.extend_from_slice(envs);
    Sentry::spawn_with(dir, TCONF, scenario, &[], &all).waiting()
}

/// The instance cgroup of `s` (binary `tconf`): as /proc shows it, and as a directory.
fn instance(s: &Sentry) -> (String, PathBuf) {
    expected_instance_cgroup("tconf", s.dir.path())
}

/// Every process in the cgroup of `pid` and what it is, for messages.
fn describe(pids: &[i32]) -> String {
    pids.iter()
        .map(|p| {
            let cmd =
                std::fs::read(format!("/proc/{p}/cmdline")).map(|c| text(&c).replace('\0', " ")).unwrap_or_default();
            format!("{p} ({}) in {:?}", cmd.trim(), cgroup_of(*p))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The launcher, daemon and group member of a `cg-daemon` run: the
/// `n`-th run's (from 0), once the daemon runs the server binary.
fn daemon_run(s: &Sentry, exe: &Path, n: usize) -> (i32, i32, i32) {
    let log = wait_for(&format!("run {n} of the daemon scenario"), || {
        let log = s.log("daemon");
        let full = ["launcher", "daemon", "member"].iter().all(|w| numbers_after(&log, w).len() > n);
        full.then_some(log)
    });
    let (launcher, daemon, member) =
        (numbers_after(&log, "launcher")[n], numbers_after(&log, "daemon")[n], numbers_after(&log, "member")[n]);
    wait_for(&format!("the daemon {daemon} of run {n} to run the server"), || {
        processes_of(exe).contains(&daemon).then_some(())
    });
    (launcher, daemon, member)
}

#[test]
fn a_setsid_daemon_is_stopped_with_its_launcher_by_stop() {
    if !cgroups_here() {
        return;
    }
    let (_bin, exe) = server("stop");
    let mut s = start_in(TempDir::new("cg-daemon-stop"), "cg-daemon", &exe, &[]);
    let (launcher, daemon, member) = daemon_run(&s, &exe, 0);
    assert_eq!(s.wait_pids("daemon", 1), vec![launcher]);
    // The daemon really left its launcher's group and session.
    let (fl, fd) = (stat_fields(launcher).unwrap(), stat_fields(daemon).unwrap());
    assert_ne!(fd[3], fl[3], "the daemon should be in a session of its own");
    assert_ne!(fd[2], fl[2], "the daemon should be in a group of its own");
    // All three are in the slot's leaf, and status says which.
    let (rel, abs) = instance(&s);
    let leaf = format!("{rel}/daemon/0");
    for (what, pid) in [("launcher", launcher), ("daemon", daemon), ("member", member)] {
        assert_eq!(cgroup_of(pid).as_deref(), Some(leaf.as_str()), "the {what}'s cgroup");
    }
    let st = s.status();
    assert_eq!(st["containment"]["kind"], "cgroup", "{}", st["containment"]);
    assert_eq!(st["containment"]["cgroup"], abs.to_str().unwrap(), "{}", st["containment"]);
    assert_eq!(slot(&s.entry("daemon"), 0)["cgroup"], leaf.as_str());
    let mut in_leaf = cgroup_procs(&abs.join("daemon/0"));
    in_leaf.sort();
    let mut expected = vec![launcher, daemon, member];
    expected.sort();
    assert_eq!(in_leaf, expected, "the leaf holds exactly the slot's tree: {}", describe(&in_leaf));

    let out = s.cli(&["stop"]);
    assert!(out.status.success(), "stop: {}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(s.wait_exit(), Some(0));
    // `stop` returns once the whole tree is gone.
    for (what, pid) in [("launcher", launcher), ("daemon", daemon), ("member", member)] {
        assert!(!alive(pid), "the {what} survived the stop: {}", describe(&[pid]));
    }
    assert!(processes_of(&exe).is_empty(), "servers left: {}", describe(&processes_of(&exe)));
    assert!(!abs.exists(), "a clean stop leaves no cgroup of the instance: {} is still there", abs.display());
    assert!(instance_cgroups_of(s.dir.path()).is_empty(), "{:?}", instance_cgroups_of(s.dir.path()));
}

#[test]
fn a_setsid_daemon_is_stopped_with_its_launcher_by_restart() {
    if !cgroups_here() {
        return;
    }
    let (_bin, exe) = server("restart");
    let s = start_in(TempDir::new("cg-daemon-restart"), "cg-daemon", &exe, &[]);
    let (rel, _abs) = instance(&s);
    let leaf = format!("{rel}/daemon/0");
    let mut run = daemon_run(&s, &exe, 0);
    for round in 1..=3 {
        let (launcher, daemon, member) = run;
        let out = s.cli(&["restart", "daemon"]);
        assert!(out.status.success(), "restart {round}: {}{}", text(&out.stdout), text(&out.stderr));
        // The old tree is gone once the restart has happened.
        for (what, pid) in [("launcher", launcher), ("daemon", daemon), ("member", member)] {
            assert!(!alive(pid), "round {round}: the old {what} survived the restart: {}", describe(&[pid]));
        }
        run = daemon_run(&s, &exe, round);
        assert_eq!(s.wait_pids("daemon", 1), vec![run.0], "round {round}");
        // Exactly one server: the new daemon, in the slot's (empty, reused) leaf.
        assert_eq!(processes_of(&exe), vec![run.1], "round {round}: {}", describe(&processes_of(&exe)));
        assert_eq!(cgroup_of(run.1).as_deref(), Some(leaf.as_str()), "round {round}: the new daemon's cgroup");
    }
    assert_eq!(s.entry("daemon")["restarts"], 3);
}

#[test]
fn a_launcher_that_leaves_a_detached_server_never_accumulates_servers() {
    // `run.sh start`: backgrounds a detached server (setsid), lives 1.2 s
    // and exits 0. Each exit must stop the server it left before the next
    // launcher starts; then ten restarts on request too.
    if !cgroups_here() {
        return;
    }
    let (_bin, exe) = server("launcher");
    let s = start_in(TempDir::new("cg-launcher"), "cg-launcher", &exe, &[]);
    let (_rel, abs) = instance(&s);
    let restarts = |s: &Sentry| s.entry("app")["restarts"].as_u64().unwrap_or(0);
    let (mut most_servers, mut most_in_tree) = (0, 0);
    let mut worst = String::new();
    wait_for_within("ten exits and restarts of the launcher", Duration::from_secs(120), || {
        let servers = processes_of(&exe);
        let in_tree = cgroup_tree_procs(&abs);
        if servers.len() > most_servers {
            most_servers = servers.len();
            worst = describe(&servers);
        }
        // A launcher, its `sleep 1.2` and its server at most (and a moment's
        // fork in between).
        most_in_tree = most_in_tree.max(in_tree.len());
        (restarts(&s) >= 10).then_some(())
    });
    assert!(most_servers <= 1, "servers accumulated: up to {most_servers} at once: {worst}");
    assert!(most_in_tree <= 4, "the instance's tree held up to {most_in_tree} processes at once");
    // The console says what the exiting leader left.
    let console = s.console();
    assert!(
        console
            .lines()
            .any(|l| l.contains("app.") && l.contains("1 process is left in its cgroup") && l.contains("/app/0")),
        "no console line says that a process remained after the launcher's exit:\n{console}"
    );
    // Ten restarts on request, quickly, each within a launcher's life.
    for round in 1..=10 {
        let out = s.cli(&["restart", "app"]);
        assert!(out.status.success(), "restart {round}: {}{}", text(&out.stdout), text(&out.stderr));
        let servers = processes_of(&exe);
        assert!(servers.len() <= 1, "after restart {round}: {}", describe(&servers));
    }
    let servers = wait_for("one server", || Some(processes_of(&exe)).filter(|p| p.len() == 1));
    assert!(cgroup_of(servers[0]).is_some_and(|c| c.contains("/app/0")), "{}", describe(&servers));
    let marked = processes_with_cmdline(&exe);
    assert!(marked.len() <= 1, "processes running the server: {}", describe(&marked));
}

/// Live processes whose command line starts with `exe` (the server's marker).
fn processes_with_cmdline(exe: &Path) -> Vec<i32> {
    let marker = exe.to_str().unwrap();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| text(&c)).unwrap_or_default();
        if cmd.split('\0').next() == Some(marker) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn two_instances_in_two_dirs_never_touch_each_other() {
    if !cgroups_here() {
        return;
    }
    let (_bin_a, exe_a) = server("two-a");
    let (_bin_b, exe_b) = server("two-b");
    let dir_a = TempDir::new("cg-two-a");
    let path_a = dir_a.path().to_path_buf();
    let mut a = start_in(dir_a, "cg-daemon", &exe_a, &[]);
    let b = start_in(TempDir::new("cg-two-b"), "cg-daemon", &exe_b, &[]);
    let run_a = daemon_run(&a, &exe_a, 0);
    let run_b = daemon_run(&b, &exe_b, 0);
    let ((rel_a, abs_a), (rel_b, abs_b)) = (instance(&a), instance(&b));
    assert_ne!(abs_a, abs_b);
    assert_eq!(a.status()["containment"]["cgroup"], abs_a.to_str().unwrap());
    assert_eq!(b.status()["containment"]["cgroup"], abs_b.to_str().unwrap());
    assert_eq!(cgroup_of(run_a.1), Some(format!("{rel_a}/daemon/0")));
    assert_eq!(cgroup_of(run_b.1), Some(format!("{rel_b}/daemon/0")));
    let b_untouched = |when: &str| {
        for (what, pid) in [("launcher", run_b.0), ("daemon", run_b.1), ("member", run_b.2)] {
            assert!(alive(pid), "{when}: B's {what} {pid} was stopped");
            assert_eq!(cgroup_of(pid), Some(format!("{rel_b}/daemon/0")), "{when}: B's {what} moved");
        }
        assert_eq!(b.pids("daemon"), vec![run_b.0], "{when}");
        assert!(cgroup_populated(&abs_b.join("daemon/0")), "{when}: B's leaf");
        assert_eq!(processes_of(&exe_b), vec![run_b.1], "{when}: B's servers");
    };

    // A clean stop of A.
    assert!(a.cli(&["stop"]).status.success());
    assert_eq!(a.wait_exit(), Some(0));
    assert!(!alive(run_a.1), "A's daemon survived A's stop");
    assert!(!abs_a.exists(), "A's cgroup is still there after its stop");
    b_untouched("after A's stop");

    // A again in the same DIR, SIGKILLed: its daemon lives on in its leaf.
    let mut a2 = start_in(TempDir(path_a.clone()), "cg-daemon", &exe_a, &[]);
    // (The log of a DIR goes on across instances: this is its second run.)
    let run_a2 = daemon_run(&a2, &exe_a, 1);
    a2.sigkill_taking_along(&[run_a2.0]);
    b_untouched("after A's SIGKILL");
    assert!(alive(run_a2.1), "A's daemon should outlive the SIGKILLed instance until the next start");

    // A's next start stops what A left, and nothing of B's.
    let a3 = start_in(TempDir(path_a.clone()), "cg-daemon", &exe_a, &[]);
    wait_for("A's leftover daemon to be stopped", || (!alive(run_a2.1) && !alive(run_a2.2)).then_some(()));
    let run_a3 = daemon_run(&a3, &exe_a, 2);
    b_untouched("after A's start after its SIGKILL");
    let console = a3.console();
    for pid in [run_b.0, run_b.1, run_b.2] {
        assert!(!console.contains(&format!("{pid} (")), "A's start names B's process {pid}:\n{console}");
    }
    assert_eq!(processes_of(&exe_a), vec![run_a3.1]);
    // `a` is dropped last (declared first): it shares A's DIR with a2 and a3.
}

#[test]
fn the_next_start_stops_everything_a_sigkilled_instance_left_in_its_cgroups() {
    if !cgroups_here() {
        return;
    }
    let (_bin, exe) = server("sigkill");
    let dir = TempDir::new("cg-sigkill");
    let dir_path = dir.path().to_path_buf();
    let mut s = start_in(dir, "cg-daemon", &exe, &[]);
    let (launcher, daemon, member) = daemon_run(&s, &exe, 0);
    let (rel, abs) = instance(&s);
    let leaf = format!("{rel}/daemon/0");
    // The instance records its cgroup in DIR.
    let ledger: Value = serde_json::from_str(&std::fs::read_to_string(s.file("tconf.procs")).unwrap_or_default())
        .unwrap_or(Value::Null);
    assert_eq!(ledger["cgroup"], abs.to_str().unwrap(), "DIR/tconf.procs: {ledger}");

    s.sigkill_taking_along(&[launcher]);
    for (what, pid) in [("daemon", daemon), ("member", member)] {
        assert!(alive(pid), "the {what} should outlive the SIGKILLed supervisor (PDEATHSIG reaches only the launcher)");
        assert_eq!(cgroup_of(pid).as_deref(), Some(leaf.as_str()), "the {what} stays in its leaf");
    }

    let again = start_in(TempDir(dir_path.clone()), "cg-daemon", &exe, &[]);
    wait_for("the leftovers to be stopped", || (!alive(daemon) && !alive(member)).then_some(()));
    let console = wait_for("the console to say so", || {
        let c = again.console();
        c.contains("by a previous instance").then_some(c)
    });
    // Both — the daemon out of the group and session, and the group's
    // member — are found in the recorded cgroup, on one line.
    let line = console.lines().find(|l| l.contains("in the cgroup")).unwrap_or_default();
    assert!(line.contains("Found 2 processes"), "{line}");
    assert!(line.contains("by a previous instance"), "no line says what was left in the cgroup:\n{console}");
    assert!(line.contains(&abs.display().to_string()), "{line}");
    assert!(line.contains(&format!("{daemon} (")), "the daemon should be named: {line}");
    for (what, pid) in [("daemon", daemon), ("member", member)] {
        let said = console
            .lines()
            .any(|l| l.contains("by a previous instance") && l.contains(&format!(" {pid} (")) && l.contains("stopped"));
        assert!(said, "no console line says the {what} {pid} was stopped:\n{console}");
    }
    // The new run (the DIR's log goes on: its second) is in a leaf of the
    // same name, which holds nothing old.
    let (new_launcher, new_daemon, new_member) = daemon_run(&again, &exe, 1);
    assert_eq!(cgroup_of(new_launcher).as_deref(), Some(leaf.as_str()));
    let mut in_leaf = cgroup_procs(&abs.join("daemon/0"));
    in_leaf.sort();
    let mut expected = vec![new_launcher, new_daemon, new_member];
    expected.sort();
    assert_eq!(in_leaf, expected, "{}", describe(&in_leaf));
    assert_eq!(processes_of(&exe), vec![new_daemon], "no server of the earlier run remains");
    assert_eq!(cgroup_tree_procs(&abs).len(), 3, "{}", describe(&cgroup_tree_procs(&abs)));
}

#[test]
fn an_instance_without_processes_records_its_cgroup_too() {
    // A watch alone starts no process, yet the instance has its cgroup: it
    // is recorded from the first turn, so a SIGKILL leaves it to the next
    // start (and to whoever cleans up after the DIR) as for any other.
    if !cgroups_here() {
        return;
    }
    let s = Sentry::spawn(TCONF, "bench-watch", &[]).waiting();
    let (_, abs) = instance(&s);
    assert!(abs.is_dir(), "the instance's cgroup {}", abs.display());
    wait_for("DIR/tconf.procs to name it", || (recorded_cgroups(s.dir.path()) == vec![abs.clone()]).then_some(()));
}

/// A `main.rs` running `entries` (Rust expressions of `Spec`s).
fn main_rs(entries: &[String]) -> String {
    format!(
        "use sentry_core::prelude::*;\n\nfn main() {{\n    sentry(vec![\n        {},\n    ]);\n}}\n",
        entries.join(",\n        ")
    )
}

#[test]
fn a_reload_keeps_every_process_in_its_cgroup() {
    if !cgroups_here() {
        return;
    }
    let (_bin, exe) = server("reload");
    let daemon_entry = |extra: &str| {
        let script = format!(
            "echo launcher $$; setsid sh -c '{} 1000 </dev/null >/dev/null 2>&1 & echo daemon $!'; sleep 1000 & echo member $!; exec sleep 1000{extra}",
            exe.display()
        );
        format!(r#"entry("daemon", "sh", ["-c", {script:?}], 0, 1)"#)
    };
    let other = |n: usize| format!(r#"entry("other", "sleep", ["100000"], 0, {n})"#);
    let c = ConfCrate::new("cg_reload", &main_rs(&[daemon_entry(""), other(1)]));
    let mut s = c.start(&[]);
    let (launcher, daemon, member) = daemon_run(&s, &exe, 0);
    let other_pid = s.wait_pids("other", 1)[0];
    let (rel, abs) = expected_instance_cgroup("cg_reload", s.dir.path());
    let leaf = format!("{rel}/daemon/0");
    let before = s.status();
    assert_eq!(before["containment"]["kind"], "cgroup", "{}", before["containment"]);
    assert_eq!(before["containment"]["cgroup"], abs.to_str().unwrap());
    let cgroups = |pids: &[i32]| pids.iter().map(|p| cgroup_of(*p)).collect::<Vec<_>>();
    let watched = [launcher, daemon, member, other_pid];
    let was = cgroups(&watched);
    assert_eq!(was[1].as_deref(), Some(leaf.as_str()));
    assert_eq!(was[3], Some(format!("{rel}/other/0")));

    for (round, n) in [(1, 2), (2, 1)] {
        // A real rebuild: another entry's count changes.
        c.write_main(&main_rs(&[daemon_entry(""), other(n)]));
        let out = s.cli(&["reload"]);
        assert!(out.status.success(), "reload {round}: {}{}\n{}", text(&out.stdout), text(&out.stderr), s.console());
        assert_eq!(s.status()["reexec_count"], round);
        assert_eq!(s.pids("daemon"), vec![launcher], "round {round}");
        for pid in watched {
            assert!(alive(pid), "round {round}: {pid} died in the reload");
        }
        assert_eq!(cgroups(&watched), was, "round {round}: cgroup membership changed");
        let st = s.status();
        assert_eq!(st["containment"]["cgroup"], abs.to_str().unwrap(), "round {round}");
        assert_eq!(slot(&s.entry("daemon"), 0)["cgroup"], leaf.as_str(), "round {round}");
        let others = s.wait_pids("other", n);
        assert_eq!(others[0], other_pid, "round {round}");
    }
    assert_eq!(processes_of(&exe), vec![daemon]);

    // The daemon's command changes: the old tree is stopped whole (the
    // adopted daemon included) before the new one starts in the leaf.
    c.write_main(&main_rs(&[daemon_entry(" # changed"), other(1)]));
    let out = s.cli(&["reload"]);
    assert!(out.status.success(), "reload 3: {}{}", text(&out.stdout), text(&out.stderr));
    let (new_launcher, new_daemon, _) = daemon_run(&s, &exe, 1);
    for (what, pid) in [("launcher", launcher), ("daemon", daemon), ("member", member)] {
        assert!(!alive(pid), "the old {what} survived its entry's change: {}", describe(&[pid]));
    }
    assert_eq!(processes_of(&exe), vec![new_daemon], "{}", describe(&processes_of(&exe)));
    assert_eq!(cgroup_of(new_launcher).as_deref(), Some(leaf.as_str()));
    assert_eq!(cgroup_of(new_daemon).as_deref(), Some(leaf.as_str()));
    assert!(alive(other_pid));

    // The reloaded instance still owns its tree: a stop takes the daemon along.
    let out = s.cli(&["stop"]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    assert_eq!(s.wait_exit(), Some(0));
    assert!(!alive(new_daemon), "the daemon survived the stop after reloads");
    assert!(!abs.exists(), "{} is still there after the stop", abs.display());
}

#[test]
fn sentry_containment_process_group_falls_back_and_says_why() {
    if !cgroups_here() {
        return;
    }
    let s = Sentry::spawn_with(
        TempDir::new("cg-forced"),
        TCONF,
        "cg-pool",
        &[],
        &[("SENTRY_CONTAINMENT", "process-group")],
    )
    .waiting();
    let pool = s.wait_pids("pool", 2);
    let st = s.status();
    let c = &st["containment"];
    assert_eq!(c["kind"], "process-group", "{c}");
    assert!(c["reason"].as_str().is_some_and(|r| r.contains("SENTRY_CONTAINMENT")), "{c}");
    assert_eq!(c["cgroup"], Value::Null, "{c}");
    for e in st["entries"].as_array().unwrap() {
        for sl in e["slots"].as_array().unwrap() {
            assert_eq!(sl["cgroup"], Value::Null, "{sl}");
        }
    }
    // The children stay in Sentry's own cgroup; no instance cgroup exists.
    let own = cgroup_of(s.pid());
    assert!(own.is_some());
    for pid in &pool {
        assert_eq!(cgroup_of(*pid), own, "child {pid}");
    }
    assert!(instance_cgroups_of(s.dir.path()).is_empty(), "{:?}", instance_cgroups_of(s.dir.path()));
    let console = s.console();
    assert!(console.contains("Containment: a process group per process ("), "{console}");
    assert!(
        console
            .lines()
            .any(|l| l.contains("Containment: a process group per process (") && l.contains("SENTRY_CONTAINMENT")),
        "the start line should say why: {console}"
    );
    // `SENTRY_*` stays with Sentry.
    let environ = text(&std::fs::read(format!("/proc/{}/environ", pool[0])).unwrap_or_default());
    assert!(!environ.contains("SENTRY_CONTAINMENT"), "the variable reached a child");
}

#[test]
fn a_read_only_cgroup_tree_falls_back_to_process_groups_and_supervision_goes_on() {
    if !cgroups_here() {
        return;
    }
    let (mount, _) = cgroup2_mount().expect("a cgroup v2 mount");
    // Sentry in a mount namespace of its own where the v2 hierarchy is
    // mounted read-only (the same kernel refusal a non-delegated user gets).
    let script = format!("mount -o remount,bind,ro '{}' && exec \"$0\" \"$@\"", mount.display());
    let wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script.as_str()];
    let mut s = Sentry::spawn_wrapped(TempDir::new("cg-readonly"), TCONF, "cg-pool", &wrapper, &[], &[], None);
    let answered = wait_for_within("the instance to answer", PATIENCE, || {
        if s.cli(&["status", "--json"]).status.success() {
            return Some(true);
        }
        s.has_exited().then_some(false)
    });
    assert!(answered, "the wrapped instance ended:\n{}", s.console());
    let st = s.status();
    let c = &st["containment"];
    assert_eq!(c["kind"], "process-group", "{c}");
    let reason = c["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(reason.contains("read-only"), "the reason should say the tree is read-only: {c}");
    assert_eq!(c["cgroup"], Value::Null, "{c}");
    let console = s.console();
    assert!(console.contains("Containment: a process group per process ("), "{console}");
    assert!(instance_cgroups_of(s.dir.path()).is_empty(), "{:?}", instance_cgroups_of(s.dir.path()));

    // Supervision goes on: a restart on request, and a restart after a kill.
    let solo = s.wait_pids("solo", 1)[0];
    let own = cgroup_of(s.pid());
    assert_eq!(cgroup_of(solo), own, "the child stays in Sentry's cgroup");
    let out = s.cli(&["restart", "solo"]);
    assert!(out.status.success(), "restart: {}{}", text(&out.stdout), text(&out.stderr));
    let second = wait_for("a new solo", || s.pids("solo").first().copied().filter(|p| *p != solo));
    assert!(!alive(solo));
    // SAFETY: SIGKILL to a child of the instance this test started.
    unsafe { libc::kill(second, libc::SIGKILL) };
    wait_for("solo back after a kill", || s.pids("solo").first().copied().filter(|p| *p != second));
    s.wait_pids("pool", 2);
    let out = s.cli(&["stop"]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    assert_eq!(s.wait_exit(), Some(0));
}

#[test]
fn slots_going_away_and_a_clean_stop_leave_no_cgroup_behind() {
    if !cgroups_here() {
        return;
    }
    let mut s = Sentry::spawn_in(TempDir::new("cg-clean"), TCONF, "cg-pool", &[]).waiting();
    let pool = s.wait_pids("pool", 2);
    let solo = s.wait_pids("solo", 1)[0];
    let (rel, abs) = instance(&s);
    let console = wait_for("the containment line", || {
        let c = s.console();
        c.contains("Containment:").then_some(c)
    });
    assert!(console.contains(&format!("Containment: a cgroup per process, under {}.", abs.display())), "{console}");
    for (i, pid) in pool.iter().enumerate() {
        assert_eq!(cgroup_of(*pid), Some(format!("{rel}/pool/{i}")), "pool slot {i}");
        assert_eq!(cgroup_procs(&abs.join(format!("pool/{i}"))), vec![*pid]);
    }
    assert_eq!(cgroup_of(solo), Some(format!("{rel}/solo/0")));
    assert_eq!(instance_cgroups_of(s.dir.path()), vec![abs.clone()], "one instance cgroup for the DIR");

    // The ledger names the cgroup alone (the next start looks nowhere
    // else), so a restart does not rewrite it; the slot's fresh leaf has
    // the slot's name again.
    let ledger = || {
        use std::os::unix::fs::MetadataExt;
        let path = s.file("tconf.procs");
        let text = std::fs::read_to_string(&path).unwrap();
        (std::fs::metadata(&path).unwrap().ino(), serde_json::from_str::<Value>(&text).unwrap())
    };
    let (ino, record) = ledger();
    assert_eq!(record["cgroup"], abs.to_str().unwrap(), "{record}");
    assert_eq!(record["groups"], serde_json::json!([]), "{record}");
    // SAFETY: SIGKILL to this instance's own child, still unreaped by it.
    unsafe { libc::kill(solo, libc::SIGKILL) };
    let next = wait_for("solo's next process", || s.pids("solo").first().copied().filter(|&p| p != solo));
    assert_eq!(cgroup_of(next), Some(format!("{rel}/solo/0")));
    assert_eq!(ledger(), (ino, record), "the ledger was written again by a restart");

    // A slot that goes away takes its (empty) leaf along.
    let out = s.cli(&["scale", "pool", "1"]);
    assert!(out.status.success(), "scale: {}", text(&out.stderr));
    assert!(!alive(pool[1]));
    wait_for("pool/1 to be removed", || (!abs.join("pool/1").exists()).then_some(()));
    assert!(abs.join("pool/0").exists());
    // An entry without slots takes its directory along; others stay.
    let out = s.cli(&["scale", "pool", "0"]);
    assert!(out.status.success(), "scale: {}", text(&out.stderr));
    wait_for("pool to be removed", || (!abs.join("pool").exists()).then_some(()));
    assert!(abs.join("solo/0").exists());

    let out = s.cli(&["stop"]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    assert_eq!(s.wait_exit(), Some(0));
    let mut left = Vec::new();
    if abs.exists() {
        left.push(abs.clone());
    }
    left.extend(instance_cgroups_of(s.dir.path()));
    assert!(left.is_empty(), "a clean stop left cgroups of the instance: {left:?}");
}

#[test]
fn status_shows_each_slots_cgroup_and_the_figures_of_its_whole_tree() {
    if !cgroups_here() {
        return;
    }
    let (_bin, exe) = server("tree");
    let s = start_in(TempDir::new("cg-tree"), "cg-tree", &exe, &[]);
    let leaders = s.wait_pids("fam", 2);
    let (rel, abs) = instance(&s);
    // Each leader and its three sleeps (one of them setsid) in its slot's leaf.
    let entry = wait_for("four processes in each slot's tree", || {
        let e = s.entry("fam");
        let full = (0..2).all(|i| slot(&e, i)["tree"]["processes"] == 4);
        full.then_some(e)
    });
    let mut sums = (0u64, 0u64, 0u64);
    for (i, leader) in leaders.iter().enumerate() {
        let sl = slot(&entry, i as u64);
        let leaf = format!("{rel}/fam/{i}");
        assert_eq!(sl["cgroup"], leaf.as_str(), "{sl}");
        assert_eq!(cgroup_of(*leader).as_deref(), Some(leaf.as_str()));
        let members = cgroup_procs(&abs.join(format!("fam/{i}")));
        assert_eq!(members.len(), 4, "{}", describe(&members));
        assert!(members.contains(leader));
        for m in &members {
            assert_eq!(cgroup_of(*m).as_deref(), Some(leaf.as_str()));
        }
        let tree = &sl["tree"];
        assert!(tree["cpu_usec"].is_u64(), "{tree}");
        assert!(tree["memory_bytes"].as_u64().is_some_and(|m| m > 0), "summed PSS of four processes: {tree}");
        let controller = std::fs::read_to_string(abs.join("cgroup.subtree_control")).unwrap_or_default();
        if !controller.contains("memory") {
            assert_eq!(tree["memory_current"], false, "no memory controller here: {tree}");
        }
        sums.0 += tree["processes"].as_u64().unwrap();
        sums.1 += tree["cpu_usec"].as_u64().unwrap_or(0);
        sums.2 += tree["memory_bytes"].as_u64().unwrap_or(0);
    }
    let tree = &entry["tree"];
    assert_eq!(tree["processes"], 8, "the entry's tree sums its slots': {tree}");
    assert!(tree["cpu_usec"].as_u64().is_some_and(|c| c >= sums.1), "{tree} vs slots' {sums:?}");
    assert!(tree["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{tree}");

    // A descendant that ends is no longer counted.
    let members = cgroup_procs(&abs.join("fam/0"));
    let sleeper = *members.iter().find(|p| **p != leaders[0]).unwrap();
    // SAFETY: SIGKILL to a process of this test's instance's tree.
    unsafe { libc::kill(sleeper, libc::SIGKILL) };
    wait_for("slot 0's tree to count 3", || (slot(&s.entry("fam"), 0)["tree"]["processes"] == 3).then_some(()));
    assert_eq!(s.entry("fam")["tree"]["processes"], 7);
}

/// The read(2) calls made so far by thread `tid` of process `pid` (`syscr`
/// of its task's `io`).
fn reads_by_thread(pid: i32, tid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/io")).expect("task io accounting");
    io.lines().find_map(|l| l.strip_prefix("syscr: ")).and_then(|n| n.trim().parse().ok()).expect("syscr")
}

#[test]
fn status_figures_are_read_by_the_asker_not_by_the_core() {
    // A status shows each process's resident size and each slot's cgroup
    // figures: per process a statm, and a cgroup.procs, a cpu.stat and the
    // PSS of its members (or memory.current). At 1 000 children those reads
    // take ~150 ms; made by the core, every status held up every restart
    // that long. The core runs on the main thread (TID = PID): its read(2)
    // calls must not grow with the processes a status shows.
    let n = 60;
    let count = n.to_string();
    let s = Sentry::spawn_with(TempDir::new("figures"), TCONF, "many", &[], &[("TCOUNT", count.as_str())]).waiting();
    s.wait_pids("sleepers", n);
    // What was read for the statuses above is shown again for a second
    // without a read: let it go stale, so that the next status reads it all.
    std::thread::sleep(Duration::from_millis(1200));
    let core = s.pid();
    let before = reads_by_thread(core, core);
    let e = s.entry("sleepers");
    let after = reads_by_thread(core, core);
    let shown = e["processes"].as_array().unwrap();
    assert_eq!(shown.len(), n);
    assert!(shown.iter().all(|p| p["rss_bytes"].as_u64().is_some_and(|r| r > 0)), "every resident size is read: {e}");
    if cgroups_here() {
        assert!(e["slots"].as_array().unwrap().iter().all(|sl| sl["tree"]["processes"] == 1), "{e}");
        assert_eq!(e["tree"]["processes"], n, "{e}");
    }
    assert!(after - before < 10, "the core thread made {} reads for one status of {n} processes", after - before);
}

#[test]
fn a_process_that_outlives_cgroup_kill_leaves_its_leaf_to_a_fresh_one() {
    // A member frozen in a cgroup v1 freezer ignores even SIGKILL until it
    // is thawed: the slot is unkillable, the replacement starts in a fresh
    // leaf (`frozen/0.N`) while the old one stays until it empties.
    if !cgroups_here() {
        return;
    }
    let Some(freezer) = Freezer::new() else {
        eprintln!("skipped: no cgroup v1 freezer to hold a process in uninterruptible sleep");
        return;
    };
    let s = Sentry::start(TCONF, "cg-frozen", &[]);
    let (rel, abs) = instance(&s);
    let pid = s.wait_pids("frozen", 1)[0];
    assert_eq!(cgroup_of(pid), Some(format!("{rel}/frozen/0")));
    freezer.freeze(pid);
    let out = s.cli(&["restart", "frozen"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let new =
        wait_for("a replacement beside the frozen process", || s.pids("frozen").first().copied().filter(|p| *p != pid));
    let fresh = cgroup_of(new).unwrap_or_default();
    assert!(fresh.starts_with(&format!("{rel}/frozen/0.")), "the replacement's cgroup: {fresh} (restart said: {said})");
    assert_eq!(cgroup_of(pid), Some(format!("{rel}/frozen/0")), "the frozen one stays in its leaf");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // Status reports the old tree until it empties.
    let e = s.entry("frozen");
    let stuck = e["unkillable"].as_array().cloned().unwrap_or_default();
    assert_eq!(stuck.len(), 1, "{e}");
    assert_eq!(stuck[0]["index"], 0, "{e}");
    assert_eq!(stuck[0]["pid"], pid, "{e}");
    assert_eq!(stuck[0]["cgroup"], format!("{rel}/frozen/0"), "{e}");
    assert_eq!(stuck[0]["processes"], 1, "{e}");
    assert_eq!(slot(&e, 0)["cgroup"], fresh.as_str(), "{e}");
    freezer.thaw();
    wait_for("the frozen process to die once thawed", || (!alive(pid)).then_some(()));
    wait_for("its old leaf to be removed", || (!abs.join("frozen/0").exists()).then_some(()));
    wait_for("the old tree to leave status", || {
        s.entry("frozen")["unkillable"].as_array().is_some_and(|a| a.is_empty()).then_some(())
    });
    assert_eq!(s.pids("frozen"), vec![new]);
}

/// How long process `pid` has run (`/proc/PID/stat` starttime against `/proc/uptime`).
fn age(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks: f64 = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(19)?.parse().ok()).unwrap_or(0.0);
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64((uptime - ticks / hz).max(0.0))
}

/// The directory's inode: a cgroup made again has another.
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

#[test]
fn a_slots_next_process_gets_a_fresh_leaf_whatever_the_last_one_changed() {
    // A process (as root) can change its own leaf and the cgroups above
    // it. None of it reaches the slot's next process, which always starts
    // in a leaf as `mkdir` makes it, never the last one's (a leaf cannot be
    // checked cheaply for all a process could change in it: its type,
    // limits, every file's owner and mode, extended attributes, counters).
    // Each change is made while the leaf is empty and Sentry stopped, as
    // the process itself would just before it exits (a leaf can be made
    // threaded only empty). A limit on cgroups below the entry's or the
    // instance's cgroup is lifted, so the slot starts again.
    if !cgroups_here() {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Sentry::spawn_with(TempDir::new("cg-changed"), TCONF, "cg-again", &[], &[]).waiting();
    let (_, abs) = instance(&s);
    let group = abs.join("again");
    let leaf = group.join("0");
    let mut pid = s.wait_pids("again", 1)[0];
    let c_path = |path: &Path| std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let chown = |path: &Path| {
        // SAFETY: a valid NUL-terminated path; chown of this test's own instance's cgroup file.
        assert_eq!(unsafe { libc::chown(c_path(path).as_ptr(), 65534, 65534) }, 0, "chown {}", path.display());
    };
    const XATTR: &std::ffi::CStr = c"user.sentry-test";
    let has_xattr = |path: &Path| {
        let mut buf = [0u8; 16];
        // SAFETY: valid NUL-terminated strings and a buffer of the length given.
        unsafe { libc::getxattr(c_path(path).as_ptr(), XATTR.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) >= 0 }
    };
    let file = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default().trim().to_string();
    let write = |dir: &Path, name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    let stat = |name: &str| std::fs::metadata(leaf.join(name)).map(|m| (m.uid(), m.gid(), m.mode() & 0o7777)).ok();
    let made = (stat("."), stat("cgroup.kill"), stat("cgroup.freeze"));
    type Change<'a> = (&'a str, Box<dyn Fn() + 'a>, Box<dyn Fn() -> bool + 'a>);
    let cases: Vec<Change> = vec![
        (
            "made threaded",
            Box::new(|| write(&leaf, "cgroup.type", "threaded")),
            Box::new(|| file(&leaf, "cgroup.type") == "domain" && file(&group, "cgroup.type") == "domain"),
        ),
        (
            "no cgroups below it",
            Box::new(|| write(&leaf, "cgroup.max.descendants", "0")),
            Box::new(|| file(&leaf, "cgroup.max.descendants") == "max"),
        ),
        ("delegated by owner", Box::new(|| chown(&leaf)), Box::new(|| stat(".") == made.0)),
        (
            "cgroup.kill writable by all",
            Box::new(|| {
                std::fs::set_permissions(leaf.join("cgroup.kill"), std::fs::Permissions::from_mode(0o666)).unwrap()
            }),
            Box::new(|| stat("cgroup.kill") == made.1),
        ),
        (
            "cgroup.freeze given away",
            Box::new(|| chown(&leaf.join("cgroup.freeze"))),
            Box::new(|| stat("cgroup.freeze") == made.2),
        ),
        (
            "an extended attribute",
            Box::new(|| {
                let value = b"left";
                // SAFETY: valid NUL-terminated strings and a value of the length given.
                let r = unsafe {
                    libc::setxattr(c_path(&leaf).as_ptr(), XATTR.as_ptr(), value.as_ptr().cast(), value.len(), 0)
                };
                assert_eq!(r, 0, "setxattr");
            }),
            Box::new(|| !has_xattr(&leaf)),
        ),
        (
            "no cgroups below the entry's",
            Box::new(|| write(&group, "cgroup.max.descendants", "0")),
            Box::new(|| file(&group, "cgroup.max.descendants") == "max"),
        ),
        (
            "no depth below the instance's",
            Box::new(|| write(&abs, "cgroup.max.depth", "1")),
            Box::new(|| file(&abs, "cgroup.max.depth") == "max"),
        ),
        ("unchanged", Box::new(|| {}), Box::new(|| true)),
    ];
    for (what, change, as_made) in cases {
        // A run shorter than 1 s is a crash, restarted only after a back-off.
        std::thread::sleep(Duration::from_millis(1100).saturating_sub(age(pid)));
        let ino = inode(&leaf);
        // SAFETY: SIGSTOP, SIGKILL to its child and SIGCONT, all to this test's own instance.
        unsafe { libc::kill(s.pid(), libc::SIGSTOP) };
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_for("the leaf to be empty", || (!cgroup_populated(&leaf)).then_some(()));
        change();
        // SAFETY: as above.
        unsafe { libc::kill(s.pid(), libc::SIGCONT) };
        let old = pid;
        pid = wait_for(what, || s.pids("again").first().copied().filter(|&p| p != old));
        wait_for("it to say it runs", || s.log("again").contains(&format!("run {pid}")).then_some(()));
        assert_eq!(cgroup_procs(&leaf), vec![pid], "{what}: the next process is in the slot's leaf");
        assert_ne!(inode(&leaf), ino, "{what}: the leaf is made afresh");
        assert!(as_made(), "{what}: as mkdir makes it");
    }
    // An empty leaf of a slot's name left changed (by hand here; a leftover
    // nobody owns) is made afresh too.
    let leftover = group.join("1");
    std::fs::create_dir(&leftover).unwrap();
    write(&leftover, "cgroup.max.descendants", "0");
    chown(&leftover);
    let ino = inode(&leftover);
    let out = s.cli(&["scale", "again", "2"]);
    assert!(out.status.success(), "scale: {}", text(&out.stderr));
    let second = *s.wait_pids("again", 2).iter().find(|&&p| p != pid).unwrap();
    assert_eq!(cgroup_procs(&leftover), vec![second], "the second slot is in its leaf");
    assert_ne!(inode(&leftover), ino, "a changed leftover is made afresh");
    let owner = |path: &Path| std::fs::metadata(path).map(|m| (m.uid(), m.gid())).ok();
    assert_eq!((file(&leftover, "cgroup.max.descendants"), owner(&leftover)), ("max".to_string(), owner(&leaf)));
}

#[test]
fn check_says_which_containment_and_why_and_makes_no_cgroup() {
    if !cgroups_here() {
        return;
    }
    let dir = TempDir::new("cg-check");
    let _cgroups = CgroupGuard::for_dir(dir.path());
    let check = |envs: &[(&str, &str)]| {
        let out = run_within(
            Command::new(TCONF)
                .args(["check", "--dir"])
                .arg(dir.path())
                .env("TCONF", "cg-pool")
                .envs(envs.iter().copied()),
            PATIENCE,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let said = check(&[]);
    assert!(said.lines().any(|l| l.starts_with("Containment: a cgroup per process")), "{said}");
    let said = check(&[("SENTRY_CONTAINMENT", "process-group")]);
    assert!(said.contains("Containment: a process group per process (SENTRY_CONTAINMENT=process-group)."), "{said}");
    assert!(instance_cgroups_of(dir.path()).is_empty(), "check made {:?}", instance_cgroups_of(dir.path()));
}

#[test]
fn the_cgroup_helpers_find_an_instance_by_its_dir() {
    // The harness's own pieces: the name an instance's cgroup gets, and a
    // guard that kills and removes such a tree (so a failing test leaves
    // nothing).
    assert_eq!(fnv1a32(b""), 0x811c9dc5);
    assert_eq!(fnv1a32(b"a"), 0xe40c292c);
    assert_eq!(fnv1a32(b"foobar"), 0xbf9cf968);
    let dir = TempDir::new("cg-helpers");
    let name = instance_cgroup_name("tconf", dir.path());
    assert!(name.starts_with("sentry.tconf.") && name.len() == "sentry.tconf.".len() + 8, "{name}");
    if !cgroups_here() {
        return;
    }
    let (_rel, abs) = expected_instance_cgroup("tconf", dir.path());
    let guard = CgroupGuard::for_dir(dir.path());
    std::fs::create_dir_all(abs.join("e/0")).unwrap();
    // A detached sleeper placed in the leaf, as a daemon would be.
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let procs = std::fs::OpenOptions::new().write(true).open(abs.join("e/0/cgroup.procs")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
    // SAFETY: write and setsid are async-signal-safe; the fd (CLOEXEC)
    // stays open until after the spawn.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            Ok(())
        });
    }
    let (mut child, _g) = spawn_in_session(&mut cmd);
    drop(procs);
    let pid = child.id() as i32;
    assert!(cgroup_of(pid).is_some_and(|c| c.ends_with("/e/0")), "{:?}", cgroup_of(pid));
    assert_eq!(instance_cgroups_of(dir.path()), vec![abs.clone()]);
    drop(guard);
    let _ = child.wait();
    assert!(!alive(pid));
    assert!(!abs.exists(), "{} survived the guard", abs.display());
}
