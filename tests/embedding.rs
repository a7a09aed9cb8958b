//! Sentry embedded as a library: `Supervisor::start` runs the core on
//! background threads of this test process — no pidfile, no signal handler,
//! nothing printed — and `shutdown` (or drop) stops every child and joins
//! every thread. One test function, so that thread counts are not disturbed
//! by other tests running in parallel in this process.

#[path = "support/mod.rs"]
mod support;

use sentry_core::prelude::*;
use sentry_core::{Options, MAX_COUNT};
use support::*;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn pids(sup: &Supervisor, name: &str) -> Vec<i32> {
    let status = sup.status();
    let entry = status.entries.iter().find(|e| e.name == name).expect("entry");
    let mut procs: Vec<_> = entry.processes.iter().map(|p| (p.index, p.pid as i32)).collect();
    procs.sort();
    procs.into_iter().map(|(_, pid)| pid).collect()
}

#[test]
fn an_embedded_supervisor_runs_scales_restarts_and_cleans_up() {
    let me = std::process::id() as i32;
    let baseline = threads();

    // Invalid input is an error value, and starts nothing.
    match Supervisor::start(vec![entry("x", "", [], 0, 1), entry("x", "true", [], 0, 1)]) {
        Err(Error::InvalidConfig(problems)) => assert_eq!(problems.len(), 2, "{problems:?}"),
        other => panic!("expected InvalidConfig, got {:?}", other.map(|_| ())),
    }
    assert_eq!(threads(), baseline);

    let logs = TempDir::new("embed");
    let sup = Supervisor::start_with(
        vec![
            entry("idle", "sleep", ["1000"], 0, 2),
            entry("talk", "sh", ["-c", "echo hello from $SENTRY_ENTRY.$SENTRY_INDEX; exec sleep 1000"], 0, 1),
        ],
        Options { log_dir: Some(logs.path().to_path_buf()) },
    )
    .expect("start");
    let two = wait_for("two idle children", || {
        let p = pids(&sup, "idle");
        (p.len() == 2).then_some(p)
    });
    wait_for("the output in the log", || {
        std::fs::read_to_string(logs.path().join("talk.log")).ok()?.contains("hello from talk.0").then_some(())
    });
    assert!(two.iter().all(|p| stat_fields(*p).unwrap()[1] == me.to_string()), "children of this process");

    sup.scale("idle", 3).unwrap();
    assert_eq!(pids(&sup, "idle").len(), 3);
    assert!(matches!(sup.scale("nope", 1), Err(Error::UnknownEntry(_))));
    assert!(matches!(sup.scale("idle", MAX_COUNT + 1), Err(Error::BadCount(_))));
    assert!(matches!(sup.restart("nope"), Err(Error::UnknownEntry(_))));
    sup.restart("idle").unwrap();
    let after = pids(&sup, "idle");
    assert_eq!(after.len(), 3);
    assert!(two.iter().all(|p| !after.contains(p)));
    let status = sup.status();
    assert_eq!(status.entries[0].restarts, 3);
    assert_eq!(status.pid as i32, me);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["entries"][0]["state"], "running");

    let all: Vec<i32> = after.iter().copied().chain(pids(&sup, "talk")).collect();
    sup.shutdown();
    for pid in &all {
        assert!(!alive(*pid), "shutdown returns once every child is gone");
    }
    assert!(children_of(me).is_empty(), "no zombie left: every child was reaped");
    assert_eq!(threads(), baseline, "shutdown joins every thread");

    // Dropping does the same as shutdown.
    let dropped = Supervisor::start(vec![entry("idle", "sleep", ["1000"], 0, 2)]).unwrap();
    let p = wait_for("children", || {
        let p = pids(&dropped, "idle");
        (p.len() == 2).then_some(p)
    });
    drop(dropped);
    assert!(p.iter().all(|p| !alive(*p)));
    assert!(children_of(me).is_empty());
    assert_eq!(threads(), baseline, "shutdown joins every thread");

    // Two at once: one's shutdown joins its threads while the other runs.
    let other = Supervisor::start(vec![entry("other", "sleep", ["1000"], 0, 1)]).unwrap();
    let kept = wait_for("the other's child", || pids(&other, "other").first().copied());
    let with_other = wait_for("the other's threads to settle", || {
        let n = threads();
        std::thread::sleep(std::time::Duration::from_millis(100));
        (threads() == n).then_some(n)
    });
    let first = Supervisor::start(vec![entry("many", "sleep", ["1000"], 0, 20)]).unwrap();
    wait_for("twenty children", || (pids(&first, "many").len() == 20).then_some(()));
    first.restart("many").unwrap();
    assert_eq!(pids(&first, "many").len(), 20);
    first.shutdown();
    assert_eq!(threads(), with_other, "every thread of the one shut down is joined, the other's run on");
    assert_eq!(pids(&other, "other"), vec![kept]);
    other.shutdown();
    assert_eq!(threads(), baseline);
}
