//! Health, order and limits end to end: readiness probes gating the start
//! of the entries that come after, stop in reverse order, `.binds_to`
//! restarts, systemd's notify protocol and watchdog, a hung HTTP endpoint
//! failing liveness, probe functions that panic or never return, `.give_up`,
//! exit codes with a meaning, a cycle refused — and all of it across a
//! reload (`reload --exec` of the same binary).

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// A TCP port nothing listens on now.
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

fn start(scenario: &str, envs: &[(&str, &str)]) -> Sentry {
    Sentry::spawn_with(TempDir::new(scenario), TCONF, scenario, &[], envs).waiting()
}

fn slot(e: &Value, index: u64) -> Value {
    e["slots"].as_array().unwrap().iter().find(|s| s["index"] == index).cloned().unwrap_or(Value::Null)
}

fn reload_same_binary(s: &Sentry) {
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "reload: {}{}\n{}", text(&out.stdout), text(&out.stderr), s.console());
}

/// The console line index of the first line containing all of `words`.
fn line_of(console: &str, words: &[&str]) -> Option<usize> {
    console.lines().position(|l| words.iter().all(|w| l.contains(w)))
}

#[test]
fn a_dependent_waits_for_readiness_and_the_order_holds_at_shutdown_and_across_a_reload() {
    let port = free_port();
    let dir = TempDir::new("order");
    let side = dir.path().join("side.txt");
    let side_s = side.to_str().unwrap().to_string();
    let mut s = start_in(dir, "order", &[("TPORT", &port), ("TSIDE", &side_s)]);
    // db takes 3 s to listen: until then web waits and has no process.
    // While web waits, the loop sleeps: a held start is not on its clock.
    let cpu = || {
        let f = stat_fields(s.pid()).unwrap();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let (ticks, t0) = (cpu(), std::time::Instant::now());
    std::thread::sleep(Duration::from_millis(700));
    let (used, over) = (cpu() - ticks, t0.elapsed());
    let web = s.entry("web");
    assert_eq!(web["state"], "waiting", "{web}");
    assert!(
        (used as f64) < over.as_secs_f64() * 100.0 * 0.5,
        "{used} ticks of CPU in {over:?} while an entry waits: a busy loop"
    );
    assert_eq!(web["waiting_for"], serde_json::json!(["db"]));
    assert!(s.pids("web").is_empty());
    assert_eq!(slot(&s.entry("db"), 0)["ready"], false);
    assert_eq!(slot(&web, 0)["ready"], Value::Null, "no readiness probe: null");
    let db = s.wait_pids("db", 1)[0];
    wait_for("db to be ready", || (slot(&s.entry("db"), 0)["ready"] == true).then_some(()));
    let web_pid = s.wait_pids("web", 1)[0];
    let worker = s.wait_pids("worker", 1)[0];
    let console = s.console();
    let ready = line_of(&console, &[&format!("db.{db}"), "Ready."]).expect("db's Ready line");
    let started = line_of(&console, &[&format!("web.{web_pid}"), "Started"]).expect("web's Started line");
    assert!(ready < started, "web started before db was ready:\n{console}");
    assert!(console.contains("Waiting for db to be ready."), "{console}");
    assert_eq!(s.entry("web")["state"], "running");

    // Across a reload: the same processes, db still ready, nothing restarted.
    reload_same_binary(&s);
    let after = s.status();
    assert_eq!(after["reexec_count"], 1);
    assert_eq!(s.pids("db"), vec![db]);
    assert_eq!(s.pids("web"), vec![web_pid]);
    assert_eq!(slot(&s.entry("db"), 0)["ready"], true, "readiness crosses the reload");
    assert_eq!(s.entry("web")["restarts"], 0);

    // web's process dies: worker (binds_to web) is restarted with it.
    unsafe { libc::kill(web_pid, libc::SIGKILL) };
    let new_worker =
        wait_for("worker to be restarted with web", || s.pids("worker").first().copied().filter(|p| *p != worker));
    assert!(s.console().contains("Restarted with web (binds_to)"), "{}", s.console());
    assert_ne!(new_worker, worker);
    s.wait_pids("web", 1);

    // Shutdown: worker, then web, then db.
    std::fs::write(&side, "").unwrap();
    let out = s.cli(&["stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.wait_exit();
    let order = std::fs::read_to_string(&side).unwrap();
    assert_eq!(order.lines().collect::<Vec<_>>(), ["worker", "web", "db"], "{order}");
}

fn start_in(dir: TempDir, scenario: &str, envs: &[(&str, &str)]) -> Sentry {
    Sentry::spawn_with(dir, TCONF, scenario, &[], envs).waiting()
}

#[test]
fn notify_readiness_and_the_watchdog_work_and_cross_a_reload() {
    let s = start("notify", &[]);
    // Ready only once the child says READY=1 (after a second).
    assert_eq!(slot(&s.entry("notifier"), 0)["ready"], false);
    assert_eq!(s.entry("after-notify")["state"], "waiting");
    wait_for("READY=1 to be heard", || (slot(&s.entry("notifier"), 0)["ready"] == true).then_some(()));
    s.wait_pids("after-notify", 1);
    // A child that stops sending keep-alives is restarted; one that sends them is not.
    wait_for("the silent child to be restarted by its watchdog", || {
        (s.entry("silent")["restarts_requested"].as_u64().unwrap() >= 1).then_some(())
    });
    assert!(s.console().contains("Watchdog: no WATCHDOG=1 within 300ms; restarting it."), "{}", s.console());
    wait_for("WATCHDOG=trigger to restart its sender", || {
        (s.entry("trigger")["restarts_requested"].as_u64().unwrap() >= 1).then_some(())
    });
    assert!(s.console().contains("Watchdog: it sent WATCHDOG=trigger; restarting it."), "{}", s.console());
    let notifier = s.pids("notifier");
    reload_same_binary(&s);
    assert_eq!(slot(&s.entry("notifier"), 0)["ready"], true);
    // Keep-alives reach the new image through the socket it was handed.
    std::thread::sleep(Duration::from_millis(2000));
    let e = s.entry("notifier");
    assert_eq!(e["restarts"], 0, "the notifier was restarted: {}", s.console());
    assert_eq!(s.pids("notifier"), notifier);
    let env = std::fs::read(format!("/proc/{}/environ", notifier[0])).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(env.contains("WATCHDOG_USEC=800000"), "{env}");
    assert!(env.contains("NOTIFY_SOCKET=@sentry/"), "{env}");
}

#[test]
fn a_hung_http_endpoint_fails_liveness_and_is_restarted() {
    let port = free_port();
    let s = start("liveness", &[("TPORT", &port)]);
    wait_for("ready", || (slot(&s.entry("hangs"), 0)["ready"] == true).then_some(()));
    let first = s.wait_pids("hangs", 1)[0];
    // From 2 s on, its answers hang: the liveness probe times out twice.
    let second = wait_for("a restart after the liveness probe failed", || {
        s.pids("hangs").first().copied().filter(|p| *p != first)
    });
    assert_ne!(first, second);
    let e = s.entry("hangs");
    assert!(e["restarts_requested"].as_u64().unwrap() >= 1, "{e}");
    let console = s.console();
    assert!(console.contains("Liveness probe failed: no answer: timed out; restarting it."), "{console}");
    // The new process is probed afresh and becomes ready again.
    wait_for("the new process to be ready", || (slot(&s.entry("hangs"), 0)["ready"] == true).then_some(()));
    assert!(!alive(first), "the hung process is gone");
}

/// The threads of `pid` named `comm`.
fn threads_named(pid: i32, comm: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == comm)
        .count()
}

#[test]
fn a_probe_function_that_panics_or_never_returns_fails_without_harm() {
    let s = start("probe-fn", &[]);
    let stuck = s.wait_pids("stuck", 1)[0];
    // The function that never returns fails the liveness probe: restarted.
    wait_for("stuck to be restarted", || s.pids("stuck").first().copied().filter(|p| *p != stuck));
    wait_for("a second restart", || (s.entry("stuck")["restarts"].as_u64().unwrap() >= 2).then_some(()));
    let console = s.console();
    assert!(console.contains("Liveness probe failed: ") && console.contains("not return"), "{console}");
    // It was called once: one thread for it, however many restarts; one for the panicking one.
    assert_eq!(threads_named(s.pid(), "sentry-probe-fn"), 2);
    // The panicking readiness probe: never ready, never restarted, and the daemon answers.
    let panicky = s.entry("panicky");
    assert_eq!(slot(&panicky, 0)["ready"], false, "{panicky}");
    assert_eq!(panicky["restarts"], 0);
    assert_eq!(panicky["state"], "running");
}

#[test]
fn an_entry_that_keeps_exiting_is_given_up_on_until_restarted() {
    let dir = TempDir::new("flap");
    let stage = dir.path().join("stage").to_str().unwrap().to_string();
    let s = start_in(dir, "flap", &[("TSTAGE", &stage)]);
    wait_for("flap to be failed", || (s.entry("flap")["state"] == "failed").then_some(()));
    let e = s.entry("flap");
    assert_eq!(slot(&e, 0)["state"], "failed");
    assert_eq!(e["restarts"], 2, "3 exits: started 3 times");
    assert!(s.console().contains("Gave up on slot 0 after 3 exit(s) within 60s"), "{}", s.console());
    // A start that fails (no such program) counts too.
    wait_for("missing to be failed", || (s.entry("missing")["state"] == "failed").then_some(()));
    assert!(s.console().contains("missing.0"), "{}", s.console());
    // The history crosses a reload: slow-flap exited twice (3 s apart),
    // the reload comes before its third exit, which is the last.
    wait_for("slow-flap's second exit", || (s.entry("slow-flap")["restarts"] == 2).then_some(()));
    reload_same_binary(&s);
    let e = s.entry("flap");
    assert_eq!((e["state"].as_str(), e["restarts"].as_u64()), (Some("failed"), Some(2)), "stays down: {e}");
    wait_for("slow-flap's third exit to fail it", || (s.entry("slow-flap")["state"] == "failed").then_some(()));
    assert_eq!(s.entry("slow-flap")["restarts"], 2);
    // Restarts and scalings a user asks for never count.
    for _ in 0..3 {
        assert!(s.cli(&["restart", "steady"]).status.success());
    }
    assert!(s.cli(&["scale", "steady", "0"]).status.success());
    assert!(s.cli(&["scale", "steady", "1"]).status.success());
    let steady = s.entry("steady");
    assert_eq!(steady["state"], "running", "{steady}");
    s.wait_pids("steady", 1);
    // An entry that follows a one-shot job which succeeded runs.
    s.wait_pids("after-oneshot", 1);
    assert_eq!(s.entry("after-oneshot")["waiting_for"], serde_json::json!([]));
    // A reload that changes the entry gives it another chance.
    std::fs::write(&stage, "2").unwrap();
    reload_same_binary(&s);
    wait_for("the changed flap to run and fail again", || {
        let e = s.entry("flap");
        (e["restarts"].as_u64().unwrap() >= 5 && e["state"] == "failed").then_some(())
    });
    // So does a restart request.
    let out = s.cli(&["restart", "flap"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    wait_for("flap to be restarted and fail again", || {
        let e = s.entry("flap");
        (e["restarts"].as_u64().unwrap() >= 8 && e["state"] == "failed").then_some(())
    });
    // 143 is a success here, 125 a stop code: neither is restarted.
    for (name, code) in [("codes", 143), ("finish", 125)] {
        wait_for("an exit", || (s.entry(name)["state"] == "stopped").then_some(()));
        let e = s.entry(name);
        assert_eq!(e["restarts"], 0, "{e}");
        assert_eq!(e["last_exits"][0]["code"], code);
    }
}

#[test]
fn a_reload_applies_the_order_to_what_it_starts_and_stops() {
    let port = free_port();
    let dir = TempDir::new("staged");
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (stage, side, go) = (p("stage"), p("side.txt"), p("go"));
    std::fs::write(&stage, "1").unwrap();
    let envs = [("TPORT", port.as_str()), ("TSIDE", side.as_str()), ("TSTAGE", stage.as_str()), ("TGO", go.as_str())];
    let s = start_in(dir, "staged", &envs);
    let first = s.wait_pids("app", 1)[0];
    // Stage 2: app (changed) now comes after gate, which is not ready: its
    // restart is held; a new entry after gate waits too.
    std::fs::write(&stage, "2").unwrap();
    reload_same_binary(&s);
    wait_for("app's old process to be gone", || (!alive(first)).then_some(()));
    let app = s.entry("app");
    assert_eq!(app["state"], "waiting", "{app}");
    assert_eq!(app["waiting_for"], serde_json::json!(["gate"]));
    assert!(s.pids("app").is_empty() && s.pids("late").is_empty());
    assert_eq!(s.entry("late")["state"], "waiting");
    std::fs::write(&go, "").unwrap();
    let second = s.wait_pids("app", 1)[0];
    let late = s.wait_pids("late", 1)[0];
    assert_eq!(slot(&s.entry("gate"), 0)["ready"], true, "started once gate was ready");
    // Stage 3: gate and late are removed; late stops first, app runs on.
    std::fs::write(&side, "").unwrap();
    std::fs::write(&stage, "3").unwrap();
    reload_same_binary(&s);
    wait_for("the removed entries to be gone", || {
        let st = s.status();
        (st["entries"].as_array()?.len() == 1).then_some(())
    });
    assert!(!alive(late));
    let order = std::fs::read_to_string(&side).unwrap();
    assert_eq!(order.lines().collect::<Vec<_>>(), ["late", "gate"], "{order}");
    assert_eq!(s.pids("app"), vec![second]);
}

/// Processes whose command line is exactly `words`.
fn processes_running(words: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = words.iter().flat_map(|w| w.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

#[test]
fn an_exec_probe_runs_as_the_entry_in_its_cgroup_and_leaves_nothing_behind() {
    if !cgroups_writable() || unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root and a writable cgroup v2 (.ci/run has both)");
        return;
    }
    // A file the probe (as nobody) can write: in /tmp, not in the 0700 run directory.
    let side = std::env::temp_dir().join(format!("sentry-exec-probe-{}.txt", std::process::id()));
    std::fs::write(&side, "").unwrap();
    std::fs::set_permissions(&side, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(side.clone());
    let s = start("exec-probe", &[("TSIDE", side.to_str().unwrap())]);
    wait_for("ready", || (slot(&s.entry("probed"), 0)["ready"] == true).then_some(()));
    // As the entry's user (nobody), not as Sentry's root.
    let uid = wait_for("the probe's uid", || std::fs::read_to_string(&side).ok().filter(|u| !u.is_empty()));
    let nobody = std::process::Command::new("id").args(["-u", "nobody"]).output().unwrap();
    assert_eq!(uid.trim(), text(&nobody.stdout).trim());
    // Several checks later, what each left behind (setsid) is gone.
    let before = s.entry("probed")["restarts"].clone();
    std::thread::sleep(Duration::from_millis(1200));
    let left = processes_running(&["sleep", "7777.25"]);
    assert!(left.len() <= 1, "escaped probe processes pile up: {left:?}");
    for pid in &left {
        let cgroup = cgroup_of(*pid).unwrap_or_default();
        assert!(cgroup.ends_with("/probed/0/sentry-probe"), "a probe's process outside the slot's cgroup: {cgroup}");
    }
    assert_eq!(s.entry("probed")["restarts"], before);
    let out = s.cli(&["stop"]);
    assert!(out.status.success());
    wait_for("nothing of the probes left", || processes_running(&["sleep", "7777.25"]).is_empty().then_some(()));
}

#[test]
fn a_cycle_in_the_start_order_is_refused_by_check_and_start() {
    let dir = TempDir::new("cycle");
    for cmd in ["check", "start"] {
        let out = run(std::process::Command::new(TCONF).args([cmd, "--dir"]).arg(dir.path()).env("TCONF", "cycle"));
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = text(&out.stderr);
        assert!(err.contains("the start order has a cycle: a → b → c → a"), "{cmd}: {err}");
    }
}
