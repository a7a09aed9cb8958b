//! Supervision end to end: real children of a real configuration binary —
//! restarts, back-off, policies, output capture, graceful stop, leftovers,
//! the children's process state, PDEATHSIG, no zombies and no leaked fds.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

fn restarts(s: &Sentry, entry: &str) -> u64 {
    s.entry(entry)["restarts"].as_u64().unwrap()
}

#[test]
fn a_dead_child_is_restarted_with_a_new_pid() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let before = s.wait_pids("idle", 2);
    unsafe { libc::kill(before[1], libc::SIGKILL) };
    let after = wait_for("slot 1 to get a new process", || {
        let p = s.pids("idle");
        (p.len() == 2 && p[1] != before[1]).then_some(p)
    });
    assert_eq!(after[0], before[0], "slot 0 untouched");
    assert_eq!(restarts(&s, "idle"), 1);
    let console = wait_for("the exit on the console", || {
        let c = s.console();
        c.contains(&format!("idle.{}", before[1])).then_some(c)
    });
    assert!(console.contains("killed by SIGKILL."), "{console}");
    assert!(console.contains(&format!("idle.{}", after[1])), "{console}");
}

#[test]
fn a_crash_loop_is_backed_off() {
    let s = Sentry::start(TCONF, "crash", &[]);
    wait_for("the crash loop to show as backoff", || (s.entry("crash")["state"] == "backoff").then_some(()));
    // Without back-off a delay-0 `exit 3` restarts hundreds of times a second.
    // With it, the waits are 100, 200, 400, 800, 1600 ms…: few restarts in 2 s.
    std::thread::sleep(Duration::from_secs(2));
    let n = restarts(&s, "crash");
    assert!((2..=12).contains(&n), "{n} restarts in about 2 s");
    assert!(s.console().contains("with ExitFailure 3."), "{}", s.console());
}

#[test]
fn restart_policies_are_followed() {
    let s = Sentry::start(TCONF, "policy", &[]);
    wait_for("bad-onfailure to restart twice", || (restarts(&s, "bad-onfailure") >= 2).then_some(()));
    for name in ["ok-onfailure", "bad-never"] {
        wait_for("a finished entry to show as stopped", || (s.entry(name)["state"] == "stopped").then_some(()));
        assert_eq!(restarts(&s, name), 0, "{name}");
        assert!(s.pids(name).is_empty(), "{name}");
    }
    // A restart request starts a slot that policy left empty.
    let out = s.cli(&["restart", "bad-never"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(restarts(&s, "bad-never"), 1);
}

#[test]
fn output_is_captured_whole_and_in_order() {
    let s = Sentry::start(TCONF, "output", &[]);
    let log = wait_for("all lines", || {
        let log = s.log("talk");
        (log.contains("line 19999\n") && log.contains("err-line")).then_some(log)
    });
    let pid = s.pids("talk")[0];
    let mut expected = 0;
    for line in log.lines() {
        let text = line.split_once(&format!("talk.{pid} ")).expect("prefixed line").1;
        if let Some(n) = text.strip_prefix("line ") {
            assert_eq!(n.parse::<usize>().unwrap(), expected, "lines lost or reordered");
            expected += 1;
        }
    }
    assert_eq!(expected, 20_000);
    assert!(!log.contains("partial"), "an unfinished line waits for its end");
    // The stream ends when the child is stopped: the partial line is written then.
    let mut s = s;
    assert!(s.cli(&["stop"]).status.success());
    assert_eq!(s.wait_exit(), Some(0));
    let log = s.log("talk");
    let mut own = log.lines().rev().take_while(|l| l.contains(&format!("talk.{pid} [sentry] ")));
    assert!(own.next().is_some_and(|l| l.contains("[sentry] Exited at")), "the exit is the last line: {log:.300}");
    let output = log.lines().rev().find(|l| !l.contains(" [sentry] ")).unwrap();
    assert!(output.ends_with(&format!("talk.{pid} partial")), "{output}");
}

#[test]
fn a_stubborn_child_is_killed_after_the_stop_timeout() {
    let mut s = Sentry::start(TCONF, "stubborn", &[]);
    wait_for("the child to trap TERM", || s.log("stubborn").contains("ready").then_some(()));
    let pid = s.pids("stubborn")[0];
    let out = s.cli(&["stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!alive(pid), "stop returns only once the child is gone");
    assert_eq!(s.wait_exit(), Some(0));
    let console = s.console();
    assert!(console.contains("killed by SIGKILL."), "{console}");
    assert!(console.trim_end().ends_with("Bye."), "{console}");
    for f in ["tconf.pid", "tconf.addr", "tconf.token"] {
        assert!(!s.file(f).exists(), "{f} removed");
    }
}

#[test]
fn what_is_left_of_a_process_group_is_stopped() {
    let s = Sentry::start(TCONF, "leftover", &[]);
    let left: i32 = wait_for("the background sleep's PID", || {
        let log = s.log("parent");
        let word = log.split("left ").nth(1)?.split_whitespace().next()?.to_string();
        word.parse().ok()
    });
    wait_for("the parent to exit", || s.console().contains("with ExitSuccess").then_some(()));
    wait_for("the leftover sleep to be stopped", || (!alive(left)).then_some(()));
}

#[test]
fn children_get_a_clean_process_state() {
    // Sentry's own SENTRY_* and NOTIFY_SOCKET, and cargo's and rustup's
    // run-time variables stay with it; a name that only looks alike is passed on.
    let probes = [
        ("SENTRY_LEAK_PROBE", "1"),
        ("CARGO_LEAK_PROBE", "1"),
        ("CARGO", "/leak/cargo"),
        ("RUSTUP_TOOLCHAIN", "leak"),
        ("RUST_RECURSION_COUNT", "1"),
        ("NOTIFY_SOCKET", "/leak/notify"),
        ("CARGOLIKE_KEPT", "1"),
    ];
    // Started the way `cmd &` in a script and `nohup` start it, with
    // signals ignored, which an exec hands on unless Sentry resets them.
    let ignoring = ["sh", "-c", "trap '' INT QUIT HUP USR2 TSTP; exec \"$0\" \"$@\""];
    let s = Sentry::spawn_wrapped(TempDir::new("env"), TCONF, "env", &ignoring, &[], &probes, None).waiting();
    let sentry_ignores = u64::from_str_radix(&proc_status(s.pid(), "SigIgn").unwrap(), 16).unwrap();
    assert_ne!(sentry_ignores & (1 << (libc::SIGQUIT - 1)), 0, "the test's premise: Sentry ignores SIGQUIT");
    let sentry_catches = u64::from_str_radix(&proc_status(s.pid(), "SigCgt").unwrap(), 16).unwrap();
    assert_ne!(sentry_catches & (1 << (libc::SIGXFSZ - 1)), 0, "and catches SIGXFSZ, as every instance does");
    let pid = wait_for("the probe", || s.pids("probe").first().copied());
    let f = stat_fields(pid).unwrap();
    assert_eq!(f[2], pid.to_string(), "own process group");
    assert_eq!(proc_status(pid, "SigBlk").unwrap(), "0000000000000000", "clean signal mask");
    let ignored = u64::from_str_radix(&proc_status(pid, "SigIgn").unwrap(), 16).unwrap();
    assert_eq!(ignored, 0, "every signal at its default, SIGPIPE and what Sentry was started with ignored too");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap().to_str(), Some("/dev/null"));
    assert_eq!(fd_count(pid), 3, "no fd leaked into the child");
    assert!(std::fs::read_link(format!("/proc/{}/fd/{INHERITED_FD}", s.pid())).is_ok(), "Sentry inherited it");
    assert_eq!(inheritable_fds(s.pid()), vec![], "inherited fds are close-on-exec in Sentry too");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap().to_str(), Some("/tmp"));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<String> = environ.split(|&b| b == 0).map(text).filter(|v| !v.is_empty()).collect();
    for want in ["SENTRY_ENTRY=probe", "SENTRY_INDEX=0", "GREETING=hello world", "CARGOLIKE_KEPT=1"] {
        assert!(vars.iter().any(|v| v == want), "{want} missing from {vars:?}");
    }
    let leaked: Vec<&String> = vars
        .iter()
        .filter(|v| {
            (v.starts_with("SENTRY_") && !v.starts_with("SENTRY_ENTRY=") && !v.starts_with("SENTRY_INDEX="))
                || ["CARGO_", "RUSTUP_"].iter().any(|p| v.starts_with(p))
                || ["CARGO", "RUST_RECURSION_COUNT", "NOTIFY_SOCKET"].iter().any(|k| v.starts_with(&format!("{k}=")))
        })
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    assert!(vars.iter().any(|v| v == "TCONF=env"), "Sentry's own environment is passed on");
}

#[test]
fn children_die_with_a_sigkilled_supervisor() {
    let mut s = Sentry::start(TCONF, "basic", &[]);
    let pids: Vec<i32> = s.pids("idle").into_iter().chain(s.pids("other")).collect();
    assert_eq!(pids.len(), 3);
    s.sigkill_taking_along(&pids);
}

#[test]
fn no_zombie_and_no_fd_leak_across_many_restarts() {
    let s = Sentry::start(TCONF, "basic", &[]);
    wait_for("three processes", || (s.pids("idle").len() == 2 && s.pids("other").len() == 1).then_some(()));
    let fds_before = fd_count(s.pid());
    // Quick deaths back off (up to 30 s), so most rounds are graceful restarts.
    for round in 0..15 {
        let pid = s.pids("other")[0];
        if round % 5 == 0 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        } else {
            assert!(s.cli(&["restart", "other"]).status.success());
        }
        wait_for("a replacement", || {
            let p = s.pids("other");
            (p.len() == 1 && p[0] != pid).then_some(())
        });
        assert_eq!(restarts(&s, "other"), round + 1);
    }
    wait_for("no zombie children", || {
        let zombies: Vec<_> = children_of(s.pid()).into_iter().filter(|(_, st)| st == "Z").collect();
        zombies.is_empty().then_some(())
    });
    assert_eq!(children_of(s.pid()).len(), 3, "exactly the three supervised children");
    wait_for("the fd count to settle", || (fd_count(s.pid()) <= fds_before).then_some(()));
    let threads: usize = proc_status(s.pid(), "Threads").unwrap().parse().unwrap();
    // main, console, signals, 4 HTTP workers, tiny_http's acceptor and pool, one monitor per child.
    assert!(threads <= 3 + 4 + 6 + 3, "{threads} threads");
}

#[test]
fn user_and_group_drop_privileges_and_keep_pdeathsig() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    // A user who is a member of some group besides their own, if there is one.
    let member = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(3))
        .flat_map(|members| members.split(',').map(str::to_string).collect::<Vec<_>>())
        .find(|u| !u.is_empty() && passwd(u).is_some())
        .unwrap_or_else(|| "nobody".to_string());
    let mut s = Sentry::spawn_with(TempDir::new("user"), TCONF, "user", &[], &[("TUSER", &member)]).waiting();
    let pid = wait_for("the unprivileged child", || s.pids("as-nobody").first().copied());
    let uid = proc_status(pid, "Uid").unwrap();
    let gid = proc_status(pid, "Gid").unwrap();
    assert!(uid.split_whitespace().all(|u| u == "65534"), "{uid}");
    assert!(gid.split_whitespace().all(|g| g == "65534"), "{gid}");
    // The user's groups (initgroups), not root's, nor none; HOME, USER and
    // LOGNAME from the passwd entry, unless `.env` sets them.
    assert_eq!(groups(&proc_status(pid, "Groups").unwrap_or_default()), id_groups("nobody"), "nobody's groups");
    let env = environ(pid);
    let home = passwd("nobody").unwrap()[5].clone();
    for want in [format!("HOME={home}"), "USER=nobody".into(), "LOGNAME=nobody".into()] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    let other = wait_for("the member's child", || s.pids("as-member").first().copied());
    assert_eq!(groups(&proc_status(other, "Groups").unwrap_or_default()), id_groups(&member), "{member}'s groups");
    let env = environ(other);
    let home = passwd(&member).unwrap()[5].clone();
    for want in [format!("HOME={home}"), format!("USER={member}"), "LOGNAME=from-env".into()] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    // An unknown user is a failed start (backed off), not a crash of Sentry.
    wait_for("the unknown user to be reported", || s.console().contains("no such user").then_some(()));
    assert_eq!(s.entry("as-ghost")["state"], "backoff");
    // PDEATHSIG survives the change of credentials.
    s.sigkill_taking_along(&[pid, other]);
}

/// The fields of `user`'s line in /etc/passwd.
fn passwd(user: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(user))?;
    Some(line.split(':').map(str::to_string).collect())
}

/// A list of group numbers, sorted.
fn groups(list: &str) -> Vec<u32> {
    let mut g: Vec<u32> = list.split_whitespace().map(|n| n.parse().unwrap()).collect();
    g.sort();
    g.dedup();
    g
}

/// `id -G user`: the user's groups as the system sees them.
fn id_groups(user: &str) -> Vec<u32> {
    let out = run(std::process::Command::new("id").args(["-G", user]));
    assert!(out.status.success(), "id -G {user}: {}", text(&out.stderr));
    groups(&text(&out.stdout))
}

/// The environment of `pid`, one `KEY=VALUE` each.
fn environ(pid: i32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    bytes.split(|&b| b == 0).map(text).filter(|v| !v.is_empty()).collect()
}
