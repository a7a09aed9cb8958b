//! Resource budgets end to end: the open-file limit (raised for Sentry,
//! given back to children, across a re-exec), counts that cannot fit under
//! it refused by `check`, `start` and `scale`, and a `scale` whose processes
//! cannot all start said so.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// `prlimit --nofile=SOFT:HARD`, as a wrapper of the configuration binary.
fn nofile(soft: u64, hard: u64) -> String {
    format!("--nofile={soft}:{hard}")
}

/// The soft and hard "Max open files" of `pid`.
fn open_files_limit(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[3].parse().unwrap(), words[4].parse().unwrap())
}

/// `tconf ARGS…` for scenario `many` with `TCOUNT=count`, under an open-file limit.
fn many_under(limit: &str, count: usize, args: &[&str]) -> std::process::Output {
    run(Command::new("prlimit").arg(limit).arg(TCONF).args(args).env("TCONF", "many").env("TCOUNT", count.to_string()))
}

#[test]
fn counts_that_cannot_fit_under_the_open_file_limit_are_refused_and_those_that_fit_all_run() {
    // Hard limit 1024 too, so raising the soft one cannot help. Four fds a
    // child, 64 kept for Sentry and 64 for helpers: 223 fit, 300 do not.
    let limit = nofile(1024, 1024);
    let dir = TempDir::new("budget-check");
    let d = dir.path().to_str().unwrap();
    let out = many_under(&limit, 300, &["check", "--dir", d]);
    assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("open-file limit of 1024") && said.contains("at most 223"), "{said}");
    let out = many_under(&limit, 220, &["check", "--dir", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // `start` refuses before starting anything.
    let out = many_under(&limit, 300, &["start", "--dir", d]);
    assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("open-file limit of 1024"), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("Started at"), "{}", text(&out.stdout));

    // 100 at start, then 220: all run (five fds a child allowed about 200).
    let s = Sentry::spawn_wrapped(
        TempDir::new("budget-scale"),
        TCONF,
        "many",
        &["prlimit", &limit],
        &[],
        &[("TCOUNT", "100")],
        None,
    )
    .waiting();
    s.wait_pids("sleepers", 100);
    let out = s.cli(&["scale", "sleepers", "220"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let pids = s.wait_pids("sleepers", 220);
    assert!(s.console().matches("Cannot start").count() == 0, "{}", s.console());
    assert_eq!(open_files_limit(pids[0]), (1024, 1024));

    // 300 cannot fit: refused, naming the limit; the 220 run on.
    let out = s.cli(&["scale", "sleepers", "300"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("open-file limit of 1024"), "{}", text(&out.stderr));
    assert_eq!(s.entry("sleepers")["count"], 220);
    assert_eq!(s.pids("sleepers").len(), 220);
}

#[test]
fn sentry_raises_its_soft_open_file_limit_and_children_get_the_original_even_after_a_reexec() {
    let limit = nofile(512, 4096);
    let s = Sentry::spawn_wrapped(TempDir::new("budget-nofile"), TCONF, "basic", &["prlimit", &limit], &[], &[], None)
        .waiting();
    assert_eq!(open_files_limit(s.pid()), (4096, 4096), "Sentry's own limit is raised to the hard one");
    let pids = s.wait_pids("idle", 2);
    assert_eq!(open_files_limit(pids[0]), (512, 4096), "a child gets the soft limit Sentry was given");

    // A re-exec (of the same binary) must not take the raised limit for the original.
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(s.pids("idle"), pids, "the children stay");
    unsafe { libc::kill(pids[1], libc::SIGKILL) };
    let after = wait_for("slot 1 to get a new process", || {
        let p = s.pids("idle");
        (p.len() == 2 && p[1] != pids[1]).then_some(p)
    });
    assert_eq!(open_files_limit(after[1]), (512, 4096), "after the re-exec too");
    assert_eq!(open_files_limit(s.pid()), (4096, 4096));
}

#[test]
fn a_scale_whose_processes_cannot_start_says_how_many_run() {
    let s = Sentry::start(TCONF, "exits", &[]);
    let out = s.cli(&["scale", "ghost", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("only 0 of 3 processes run") && said.contains("/nonexistent/program"), "{said}");
}
