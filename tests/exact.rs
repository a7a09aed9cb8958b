//! Exact supervision end to end: stops and restarts that take as long as
//! the processes need and no longer, a replacement never started on top of
//! its predecessor's process group, process-group numbers and PIDs reused by
//! strangers never signalled or confused (PID reuse is forced through
//! `ns_last_pid` inside a PID namespace of the test's own), escaped
//! descendants that cost nothing per restart, leftovers of a SIGKILLed
//! instance stopped by the next start, a slot that outlives SIGKILL, and a
//! status that tells each slot's truth.

#[path = "support/mod.rs"]
mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// The environment that makes an instance use process groups even where it
/// could use cgroups: the tests of what process groups alone must get right
/// (reused group numbers, escaped descendants, the group ledger, a frozen
/// group leader) keep testing that path; tests/containment.rs tests cgroups.
const PROCESS_GROUPS: (&str, &str) = ("SENTRY_CONTAINMENT", "process-group");

/// The numbers that follow `word ` in a log, in order.
fn numbers_after(log: &str, word: &str) -> Vec<i32> {
    log.lines().filter_map(|l| l.split(&format!("{word} ")).nth(1)?.split_whitespace().next()?.parse().ok()).collect()
}

/// Whether `pid` exists at all (a zombie too).
fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn slot(entry: &Value, index: u64) -> Value {
    entry["slots"].as_array().and_then(|a| a.iter().find(|s| s["index"] == index).cloned()).unwrap_or(Value::Null)
}

#[test]
fn stop_returns_as_soon_as_the_whole_group_is_gone() {
    // Five processes in one group, all of which die at once on SIGTERM:
    // the stop must not wait for the 10 s stop timeout (zombies of the
    // members, not yet reaped by their new parent, are not "left").
    let mut s = Sentry::start(TCONF, "workers", &[]);
    let leader = s.wait_pids("workers", 1)[0];
    let members: Vec<i32> = wait_for("the four members", || {
        let m: Vec<i32> = session_pids(s.pid())
            .into_iter()
            .filter(|p| *p != leader && stat_fields(*p).is_some_and(|f| f[2] == leader.to_string()))
            .collect();
        (m.len() == 4).then_some(m)
    });
    let began = Instant::now();
    let out = s.cli(&["stop"]);
    let took = began.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(5), "stop took {took:?}; the stop timeout is 10 s");
    assert_eq!(s.wait_exit(), Some(0));
    for pid in members.iter().chain([&leader]) {
        assert!(!alive(*pid), "{pid} survived the stop");
    }
}

#[test]
fn a_replacement_starts_only_once_its_predecessors_group_is_empty() {
    // A launcher shell whose server holds a TCP port and drains for 3 s on
    // SIGTERM, while the shell itself exits at once: a replacement started
    // when the shell exits would die with "address in use".
    let (_dir, s) = start_draining_server();
    wait_for("the server to listen", || (numbers_after(&s.log("srv"), "listening").len() == 1).then_some(()));
    for round in 1..=3 {
        let out = s.cli(&["restart", "srv"]);
        assert!(out.status.success(), "restart {round}: {}", text(&out.stderr));
        let log = wait_for("the new server to listen", || {
            let log = s.log("srv");
            (numbers_after(&log, "listening").len() == round + 1).then_some(log)
        });
        assert!(!log.contains("bind failed"), "a replacement started on top of its predecessor:\n{log}");
        // The old server had drained completely before the new one bound.
        let drained = log.find(&format!("drained {}", numbers_after(&log, "listening")[round - 1]));
        let listening = log.rfind("listening");
        assert!(drained.is_some() && drained < listening, "{log}");
    }
    assert_eq!(s.entry("srv")["restarts"], 3);
}

/// Starts the `drain` scenario: a launcher shell and its server, which holds
/// a TCP port, prints `listening PID`, and on SIGTERM drains for 3 s.
fn start_draining_server() -> (TempDir, Sentry) {
    let dir = TempDir::new("drain-srv");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let srv = dir.path().join("srv.py");
    std::fs::write(
        &srv,
        "import os, signal, socket, sys, time\n\
         s = socket.socket()\n\
         try:\n    s.bind(('127.0.0.1', int(os.environ['TPORT'])))\n\
         except OSError as e:\n    print('bind failed:', e, flush=True)\n    sys.exit(1)\n\
         s.listen()\n\
         def drain(*_):\n    print('draining', os.getpid(), flush=True)\n    time.sleep(3)\n    print('drained', os.getpid(), flush=True)\n    sys.exit(0)\n\
         signal.signal(signal.SIGTERM, drain)\n\
         print('listening', os.getpid(), flush=True)\n\
         while True:\n    time.sleep(1)\n",
    )
    .unwrap();
    let envs = [("TSRV", srv.to_str().unwrap()), ("TPORT", port.as_str())];
    let s = Sentry::spawn_with(TempDir::new("drain"), TCONF, "drain", &[], &envs).waiting();
    (dir, s)
}

#[test]
fn a_leader_that_dies_first_leaves_no_server_to_collide_with() {
    // Another case of the same kind: the launcher is killed outright, its
    // server lives on holding the port. Sentry must stop the rest of the
    // group (the server drains for 3 s) before it starts the replacement.
    let (_dir, s) = start_draining_server();
    let server = wait_for("the server to listen", || numbers_after(&s.log("srv"), "listening").first().copied());
    let launcher = s.wait_pids("srv", 1)[0];
    // SAFETY: SIGKILL to the launcher this test's Sentry started.
    unsafe { libc::kill(launcher, libc::SIGKILL) };
    let log = wait_for("a second server to listen", || {
        let log = s.log("srv");
        (numbers_after(&log, "listening").len() == 2).then_some(log)
    });
    assert!(!log.contains("bind failed"), "the replacement started on top of the old server:\n{log}");
    assert!(log.find(&format!("drained {server}")) < log.rfind("listening"), "{log}");
    assert!(!alive(server));
    let e = s.entry("srv");
    assert_eq!(e["last_exits"][0]["signal"], 9, "the slot's exit is the launcher's: {e}");
}

#[test]
fn a_reused_process_group_number_is_never_signalled() {
    // The leader exits at once; a member of its group ignores SIGTERM and
    // ends by itself after 0.7 s, well before the 4 s stop timeout. Its
    // group number is then free, and is given to an unrelated process that
    // makes itself a session (and group) leader. Sentry must not SIGKILL it
    // when the stop timeout comes.
    let s = Sentry::spawn_in_pid_namespace(TCONF, "linger", &[PROCESS_GROUPS]);
    let leader = wait_for("the leader's PID", || numbers_after(&s.log("linger"), "leader").first().copied());
    let init = s.namespace_init();
    // The leader is reaped once the member has gone: its PID is free.
    let free = format!(
        "test -e /proc/{leader} && echo busy && exit; cat /proc/[0-9]*/stat 2>/dev/null | awk '{{print $5}}' | grep -qx {leader} && echo busy || echo free"
    );
    wait_for("the group to be empty and its leader reaped", || (in_namespace(init, &free) == "free").then_some(()));
    // A stranger gets the number and makes itself a session and group leader.
    let stranger: i32 = in_namespace(
        init,
        &format!("echo {} > /proc/sys/kernel/ns_last_pid; setsid sleep 1000 > /dev/null 2>&1 & echo $!", leader - 1),
    )
    .parse()
    .expect("the stranger's PID");
    assert_eq!(stranger, leader, "the stranger did not get the freed number (a process raced it)");
    // Past the stop timeout (4 s from the leader's exit) and some margin.
    std::thread::sleep(Duration::from_secs(6));
    let state =
        in_namespace(init, &format!("grep -q '^State:.*[RS]' /proc/{stranger}/status && echo alive || echo dead"));
    assert_eq!(state, "alive", "the stranger in the reused group was signalled");
}

#[test]
fn a_late_note_about_an_old_process_never_touches_its_pid_successor() {
    // The first run leaves a descendant (in a session of its own) holding
    // the output pipes for 3 s and fails; its replacement is forced to get
    // the same PID and stays up. When the descendant finally closes the old
    // pipes, nothing may happen to the new process or to supervision.
    let flag = TempDir::new("escape-flag");
    let flag_file = flag.path().join("ran");
    let s =
        Sentry::spawn_in_pid_namespace(TCONF, "escape-once", &[("TFLAG", flag_file.to_str().unwrap()), PROCESS_GROUPS]);
    let first = wait_for("the first leader", || numbers_after(&s.log("escape"), "leader").first().copied());
    wait_for("the first leader to exit", || {
        s.console()
            .lines()
            .any(|l| l.contains(&format!("escape.{first} ")) && l.contains("ExitFailure 1"))
            .then_some(())
    });
    // The respawn comes 1 s after the exit: make it get the same PID.
    s.set_next_pid(first);
    let second = wait_for("the second leader", || numbers_after(&s.log("escape"), "leader").get(1).copied());
    assert_eq!(second, first, "the replacement did not get the reused PID (a process raced it)");
    // The escaped descendant ends 3 s after the first run began.
    std::thread::sleep(Duration::from_secs(4));
    // Supervision goes on: status answers, and the new process is the slot's.
    let began = Instant::now();
    let pids = s.pids("escape");
    assert!(began.elapsed() < Duration::from_secs(5), "status stalled");
    assert_eq!(pids, vec![second]);
    assert_eq!(slot(&s.entry("escape"), 0)["state"], "running");
    let out = s.cli(&["restart", "escape"]);
    assert!(out.status.success(), "restart after the late note: {}", text(&out.stderr));
    wait_for("a third leader", || (numbers_after(&s.log("escape"), "leader").len() == 3).then_some(()));
}

#[test]
fn escaped_descendants_cost_no_thread_and_no_fd_per_restart() {
    // `setsid sleep 1000 &` keeps the pipes open forever: a monitor per
    // escaped descendant would pile up threads and fds at every restart.
    let s = Sentry::spawn_in_pid_namespace(TCONF, "escape-always", &[PROCESS_GROUPS]);
    let init = s.namespace_init();
    let sentry = wait_for("Sentry's own PID", || {
        children_of(init)
            .into_iter()
            .map(|(p, _)| p)
            .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "tconf"))
    });
    let restarts = |s: &Sentry| s.entry("escape")["restarts"].as_u64().unwrap_or(0);
    let threads = |pid: i32| proc_status(pid, "Threads").and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
    wait_for_within("3 restarts", Duration::from_secs(60), || (restarts(&s) >= 3).then_some(()));
    let (t0, f0) = (threads(sentry), fd_count(sentry));
    wait_for_within("30 restarts", Duration::from_secs(120), || (restarts(&s) >= 30).then_some(()));
    let (t1, f1) = (threads(sentry), fd_count(sentry));
    assert!(t1 <= t0 + 2, "threads grew from {t0} to {t1} over 27 restarts");
    assert!(f1 <= f0 + 4, "fds grew from {f0} to {f1} over 27 restarts");
}

#[test]
fn the_next_start_stops_what_a_sigkilled_instance_left() {
    let dir = TempDir::new("orphans");
    let dir_path = dir.path().to_path_buf();
    let mut s = Sentry::spawn_with(dir, TCONF, "orphans", &[], &[PROCESS_GROUPS]).waiting();
    let leader = s.wait_pids("orphans", 1)[0];
    let member = wait_for("the member's PID", || numbers_after(&s.log("orphans"), "member").first().copied());
    s.sigkill_taking_along(&[leader]);
    assert!(alive(member), "the member should outlive the SIGKILLed supervisor (PDEATHSIG reaches only the leader)");
    // The next start in the same DIR finds it, stops it and says so.
    let again = Sentry::spawn_with(TempDir(dir_path.clone()), TCONF, "orphans", &[], &[PROCESS_GROUPS]).waiting();
    wait_for("the leftover member to be stopped", || (!alive(member)).then_some(()));
    let console = again.console();
    assert!(console.contains(&member.to_string()) && console.contains("left by a previous instance"), "{console}");
    // The new instance's own children are untouched.
    let new_leader = again.wait_pids("orphans", 1)[0];
    assert!(alive(new_leader));
}

#[test]
fn status_tells_each_slots_truth() {
    let s = Sentry::spawn_with(TempDir::new("exits"), TCONF, "exits", &[], &[PROCESS_GROUPS]).waiting();
    let code = wait_for("code's exit", || {
        let e = s.entry("code");
        let any = e["last_exits"].as_array().is_some_and(|a| !a.is_empty());
        any.then_some(e)
    });
    assert_eq!(code["last_exits"][0]["index"], 0);
    assert_eq!(code["last_exits"][0]["code"], 3);
    assert_eq!(code["last_exits"][0]["signal"], Value::Null);
    assert!(code["last_exits"][0]["at"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(slot(&code, 0)["state"], "backoff", "a run under 1 s is a crash: {code}");
    assert_eq!(slot(&code, 0)["pid"], Value::Null);
    let signal = wait_for("signal's exit", || {
        let e = s.entry("signal");
        let any = e["last_exits"].as_array().is_some_and(|a| !a.is_empty());
        any.then_some(e)
    });
    assert_eq!(signal["last_exits"][0]["signal"], 9);
    assert_eq!(signal["last_exits"][0]["code"], Value::Null);
    let ghost = wait_for("ghost's spawn error", || {
        let e = s.entry("ghost");
        slot(&e, 0)["error"].as_str().map(|_| e)
    });
    let error = slot(&ghost, 0)["error"].as_str().unwrap().to_string();
    assert!(error.contains("/nonexistent/program"), "{error}");
    assert!(["backoff", "pending"].contains(&slot(&ghost, 0)["state"].as_str().unwrap()), "{ghost}");
    let slow = s.entry("slow");
    assert_eq!(slot(&slow, 0)["state"], "running");
    assert_eq!(slot(&slow, 0)["pid"], slow["processes"][0]["pid"]);
    assert_eq!(slot(&slow, 0)["ready"], Value::Null);
    // Every restart counts: on request too.
    let before = s.entry("code")["restarts"].as_u64().unwrap();
    assert!(s.cli(&["restart", "code"]).status.success());
    wait_for("the requested restart to count", || {
        (s.entry("code")["restarts"].as_u64().unwrap() > before).then_some(())
    });
    let status = s.status();
    assert_eq!(status["containment"]["kind"], "process-group");
    assert!(
        status["containment"]["reason"].as_str().is_some_and(|r| r.contains("SENTRY_CONTAINMENT")),
        "{}",
        status["containment"]
    );
    assert_eq!(status["containment"]["cgroup"], Value::Null);
    assert_eq!(slot(&s.entry("slow"), 0)["cgroup"], Value::Null);
    assert_eq!(s.entry("slow")["tree"], Value::Null);
    assert_eq!(s.entry("slow")["flapping"], false);
}

#[test]
fn requests_during_shutdown_are_refused_as_such() {
    // `slow` takes 2 s to stop: requests in that window meet a shutdown.
    let mut s = Sentry::start(TCONF, "exits", &[]);
    s.wait_pids("slow", 1);
    // SAFETY: SIGTERM to the supervisor this test started.
    unsafe { libc::kill(s.pid(), libc::SIGTERM) };
    wait_for("the stop to reach slow", || s.log("slow").contains("stopping").then_some(()));
    let out = s.cli(&["restart", "slow"]);
    assert_eq!(out.status.code(), Some(2), "restart during shutdown: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("shutting down"), "{}", text(&out.stderr));
    let out = s.cli(&["scale", "slow", "2"]);
    assert_eq!(out.status.code(), Some(2), "scale during shutdown: {}", text(&out.stderr));
    let out = s.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "reload during shutdown: {}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(s.wait_exit(), Some(0));
}

#[test]
fn stop_waits_as_long_as_the_running_configuration_needs() {
    // The instance runs a child that takes 17 s to stop (timeout 30 s); the
    // `stop` command is this binary with another configuration (stop
    // timeout 0.5 s), as after an edit and a rebuild without a reload.
    let mut s = Sentry::start(TCONF, "slowstop", &[]);
    wait_for("the child to be ready", || s.log("slowstop").contains("ready").then_some(()));
    let out = run_within(
        std::process::Command::new(TCONF).args(["stop", "--dir"]).arg(s.dir.path()).env("TCONF", "frozen"),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "stop gave up early: {}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(s.wait_exit(), Some(0));
}

#[test]
fn leftovers_of_a_killed_instance_never_include_another_instances_reused_group() {
    // Two instances of one configuration in one session and PID namespace.
    // A is SIGKILLed; B's next child is made to get the number of one of A's
    // recorded groups (same session, same entry name). A's next start must
    // leave it alone: that number was reused.
    // The namespace's init reaps whatever is orphaned (numbers must free up).
    let reaper = "import os, time\nwhile True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        time.sleep(0.05)\n";
    let (mut init_child, _guard) =
        spawn_in_session(Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "python3", "-c", reaper]));
    let outer = init_child.id() as i32;
    let init = wait_for("the namespace's init", || children_of(outer).first().map(|(p, _)| *p));
    let (a, b) = (TempDir::new("reuse-a"), TempDir::new("reuse-b"));
    let start = |dir: &TempDir| {
        let console = std::fs::File::create(dir.path().join("console.txt")).unwrap();
        Command::new("nsenter")
            .args(["--target", &init.to_string(), "--pid", "--mount", "--"])
            .arg(TCONF)
            .args(["start", "--dir"])
            .arg(dir.path())
            .env("TCONF", "basic")
            .env(PROCESS_GROUPS.0, PROCESS_GROUPS.1)
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("start inside the namespace")
    };
    let cli = |dir: &TempDir, args: &[&str]| {
        run_within(Command::new(TCONF).args(args).arg("--dir").arg(dir.path()).env("TCONF", "basic"), PATIENCE)
    };
    let status = |dir: &TempDir| -> Value {
        serde_json::from_slice(&cli(dir, &["status", "--json"]).stdout).unwrap_or(Value::Null)
    };
    let idle = |dir: &TempDir| -> Vec<i64> {
        status(dir)["entries"][0]["processes"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["pid"].as_i64()).collect())
            .unwrap_or_default()
    };
    let mut a_proc = start(&a);
    wait_for("A's children", || (idle(&a).len() == 2).then_some(()));
    let mut b_proc = start(&b);
    wait_for("B's children", || (idle(&b).len() == 2).then_some(()));
    let ledger: Value = serde_json::from_str(&std::fs::read_to_string(a.path().join("tconf.procs")).unwrap()).unwrap();
    let target =
        ledger["groups"].as_array().unwrap().iter().find(|g| g["entry"] == "idle").unwrap()["pgid"].as_i64().unwrap();
    let _ = a_proc.kill();
    let _ = a_proc.wait();
    // The pidfile names the PID the namespace sees.
    let a_pid: i32 = std::fs::read_to_string(a.path().join("tconf.pid")).unwrap().trim().parse().unwrap();
    in_namespace(init, &format!("kill -9 {a_pid}; while test -d /proc/{target}; do sleep 0.05; done"));
    // B's third child gets the freed number.
    let mut got = None;
    let mut seen = Vec::new();
    // Threads take numbers too (the control server's thread for this very
    // request, the new child's monitor): try offsets below the target.
    // (In a fresh namespace the numbers are small: never below 1.) Other
    // threads' numbers vary with timing on a busy machine: a few rounds.
    let offsets = (0..3).flat_map(|_| 1..=6).filter(|o| target - o >= 1);
    for offset in offsets {
        in_namespace(init, &format!("echo {} > /proc/sys/kernel/ns_last_pid", target - offset));
        assert!(cli(&b, &["scale", "idle", "3"]).status.success());
        let pids = idle(&b);
        if pids.contains(&target) {
            got = Some(target);
            break;
        }
        seen.push((offset, pids));
        assert!(cli(&b, &["scale", "idle", "2"]).status.success());
    }
    assert_eq!(got, Some(target), "B's child never got the reused number: {seen:?}");
    // A starts again in its DIR and looks for what it left.
    let mut a_again = start(&a);
    wait_for("A again", || (idle(&a).len() == 2).then_some(()));
    let console = std::fs::read_to_string(a.path().join("console.txt")).unwrap_or_default();
    assert!(idle(&b).contains(&target), "A's start stopped B's child:\n{console}");
    assert!(!console.contains(&format!("{target} (sleep")), "{console}");
    for p in [&mut a_again, &mut b_proc] {
        let _ = p.kill();
        let _ = p.wait();
    }
    let _ = init_child.kill();
    let _ = init_child.wait();
}

#[test]
fn a_restart_that_cannot_start_its_processes_says_so() {
    // `ghost`'s program does not exist: a restart cannot bring it back.
    let s = Sentry::start(TCONF, "exits", &[]);
    wait_for("ghost's spawn error", || slot(&s.entry("ghost"), 0)["error"].as_str().map(|_| ()));
    let out = s.cli(&["restart", "ghost"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("only 0 of 1"), "{}", text(&out.stderr));
}

#[test]
fn status_answers_while_hundreds_of_processes_start_and_stop() {
    // Spawning 1 000 processes, then stopping them, takes the core a while:
    // status must keep answering meanwhile, and a plain stop of plain
    // processes is never mistaken for an unkillable one.
    let s = Sentry::spawn_with(TempDir::new("many"), TCONF, "many", &[], &[("TCOUNT", "10")]).waiting();
    s.wait_pids("sleepers", 10);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (bin, dir, done) = (s.bin.clone(), s.dir.path().to_path_buf(), done.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut failures = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let began = Instant::now();
                let out = run_within(
                    Command::new(&bin).args(["status", "--json", "--dir"]).arg(&dir).env("TCONF", "many"),
                    PATIENCE,
                );
                worst = worst.max(began.elapsed());
                if !out.status.success() {
                    failures.push(text(&out.stderr));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (worst, failures)
        })
    };
    for count in ["1000", "0"] {
        let out = s.cli(&["scale", "sleepers", count]);
        assert!(out.status.success(), "scale {count}: {}{}", text(&out.stdout), text(&out.stderr));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (worst, failures) = prober.join().unwrap();
    assert!(failures.is_empty(), "status failed during the scale: {failures:?}");
    // Generous for a busy 2-core machine: before, status got 504 after 5 s.
    assert!(worst < Duration::from_secs(4), "status took {worst:?} during the scale");
    assert_eq!(s.entry("sleepers")["flapping"], false, "stops Sentry asked for are not failures");
}

#[test]
fn a_process_that_survives_sigkill_makes_its_slot_unkillable_and_answers_stay_bounded() {
    let Some(freezer) = Freezer::new() else {
        eprintln!("skipped: no cgroup v1 freezer to hold a process in uninterruptible sleep");
        return;
    };
    let s = Sentry::spawn_with(TempDir::new("frozen"), TCONF, "frozen", &[], &[PROCESS_GROUPS]).waiting();
    let pid = s.wait_pids("frozen", 1)[0];
    freezer.freeze(pid);
    // restart: SIGTERM, SIGKILL after 0.5 s, then 5 s of grace: the answer
    // comes, bounded, and the slot says what is going on.
    let began = Instant::now();
    let out = s.cli(&["restart", "frozen"]);
    assert!(began.elapsed() < Duration::from_secs(20), "restart took {:?}", began.elapsed());
    assert_eq!(out.status.code(), Some(1), "a restart that could not happen is an error");
    assert!(text(&out.stderr).contains("unkillable"), "{}", text(&out.stderr));
    let e = s.entry("frozen");
    assert_eq!(slot(&e, 0)["state"], "unkillable", "{e}");
    assert_eq!(slot(&e, 0)["pid"], pid);
    assert!(exists(pid));
    // Once it can die, it is reaped and the slot starts again.
    freezer.thaw();
    let new = wait_for("a new process after the thaw", || s.pids("frozen").first().copied().filter(|p| *p != pid));
    assert!(!alive(pid) && new != pid);
    assert_eq!(slot(&s.entry("frozen"), 0)["state"], "running");
}
