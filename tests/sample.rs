//! The seed's example, end to end: `sample` is built by a real `cargo build`
//! of `conf-examples`, started, watched through two cycles of `sleep 4`, and
//! stopped with SIGINT as Ctrl-C would.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::*;

/// Builds `conf-examples`' `sample` with cargo and returns its path.
fn build_sample() -> PathBuf {
    build_example("sample")
}

/// Builds one of `conf-examples`' binaries with cargo and returns its path.
fn build_example(name: &str) -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = run(Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "conf-examples", "--bin", name, "--message-format=json"])
        .current_dir(&workspace));
    assert!(out.status.success(), "cargo build failed: {}", text(&out.stderr));
    let suffix = format!("/{name}");
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| m["executable"].as_str().filter(|e| e.ends_with(&suffix)).map(PathBuf::from))
        .expect("cargo reports the executable")
}

#[test]
fn the_macro_and_typed_examples_are_the_same_configuration() {
    // What `explain` says of their rules, order and probes (not of the
    // processes it finds, which come and go).
    let said = |name: &str| {
        let dir = TempDir::new(name);
        let out = run(Command::new(build_example(name)).args(["explain", "--dir"]).arg(dir.path()));
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter(|l| {
                l.contains(" rule ") || l.starts_with("Start order") || l.starts_with("entry ") && l.contains(':')
            })
            .map(|l| l.split(": would fire").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    };
    let (macros, typed) = (said("macros"), said("typed"));
    assert!(macros.len() >= 5, "{macros:?}");
    assert_eq!(macros, typed);
}

#[test]
fn sample_restarts_its_sleeper_and_says_bye_on_ctrl_c() {
    let bin = build_sample();
    let mut s = Sentry::start(bin.to_str().unwrap(), "sample", &[]);
    let console = wait_for_within("two runs of dummy", Duration::from_secs(40), || {
        let c = s.console();
        (c.matches("with ExitSuccess.").count() >= 2 && c.matches("Started at").count() >= 3).then_some(c)
    });
    let lines: Vec<&str> = console.lines().collect();
    assert!(lines[0].starts_with(&format!("Sentry started (PID: {} saved in ", s.pid())), "{console}");
    assert!(lines[0].ends_with("/sample.pid)."), "{console}");
    let started: Vec<&&str> = lines.iter().filter(|l| l.contains("Started at")).collect();
    // `20:17:51 dummy.1514      Started at 1334081871.`
    let words: Vec<&str> = started[0].split_whitespace().collect();
    assert_eq!(words[0].len(), 8, "{}", started[0]);
    assert!(words[1].starts_with("dummy."), "{}", started[0]);
    assert_eq!(&started[0][9..25].trim_end(), &words[1], "name.PID padded to 16 columns");
    // Never backed off: every restart waits the entry's 1 s, the state stays running.
    assert_eq!(s.entry("dummy")["state"], "running");
    let child = s.pids("dummy");
    unsafe { libc::kill(s.pid(), libc::SIGINT) };
    assert_eq!(s.wait_exit(), Some(0));
    let console = s.console();
    assert!(console.trim_end().ends_with("Bye."), "{console:?}");
    for pid in child {
        assert!(!alive(pid), "the child was stopped");
    }
}

/// The test hooks (`SENTRY_TEST_*`) are compiled into test configurations
/// only: `sample`, built as a user builds it, neither contains nor reads them —
/// a reload with `SENTRY_TEST_FAIL_EXEC` set in its environment just works.
#[test]
fn sample_is_built_without_the_test_hooks() {
    let bin = build_sample();
    let binary = std::fs::read(&bin).unwrap();
    for hook in [&b"SENTRY_TEST_FAIL_EXEC"[..], b"SENTRY_TEST_CORRUPT_HANDOFF"] {
        assert!(!binary.windows(hook.len()).any(|w| w == hook), "{} is in {}", text(hook), bin.display());
    }
    let hooks = [("SENTRY_TEST_FAIL_EXEC", "1"), ("SENTRY_TEST_CORRUPT_HANDOFF", "1")];
    let s = Sentry::spawn_with(TempDir::new("sample-hooks"), bin.to_str().unwrap(), "sample", &[], &hooks).waiting();
    let out = s.cli(&["reload", "--exec", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}{}\nconsole:\n{}", text(&out.stdout), text(&out.stderr), s.console());
    assert_eq!(s.status()["reexec_count"], 1);
    assert!(!s.console().contains("could not read its handed-over state"), "{}", s.console());
}
