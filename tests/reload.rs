//! Reload end to end: temporary configuration crates, real `cargo` rebuilds,
//! real re-execs of the running supervisor — children that survive with the
//! same PIDs, the new configuration applied as a difference, failures that
//! change nothing, output that loses and doubles nothing, signals and HTTP
//! requests during the exec window, `reload --exec`, an unreadable snapshot.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::*;

/// A `main.rs` running `entries` (Rust expressions of `Spec`s).
fn main_rs(entries: &[&str]) -> String {
    format!(
        "use sentry_core::prelude::*;\n\nfn main() {{\n    sentry(vec![\n        {},\n    ]);\n}}\n",
        entries.join(",\n        ")
    )
}

fn reload(s: &Sentry) -> (i32, String) {
    let out = s.cli(&["reload"]);
    (out.status.code().unwrap_or(-1), format!("{}{}", text(&out.stdout), text(&out.stderr)))
}

fn reload_ok(s: &Sentry) {
    let (code, output) = reload(s);
    assert_eq!(code, 0, "reload failed: {output}\nconsole:\n{}", s.console());
}

#[test]
fn a_child_survives_twenty_reloads_with_the_same_pid() {
    let keep = r#"entry("keep", "sleep", ["100000"], 0, 1)"#;
    let c = ConfCrate::new(
        "rl_twenty",
        &main_rs(&[keep, r#"entry("a", "sleep", ["100001"], 0, 1)"#, r#"entry("b", "sleep", ["100002"], 0, 2)"#]),
    );
    let mut s = c.start(&[]);
    let pid = wait_for("keep to run", || s.pids("keep").first().copied());
    let supervisor = s.status()["pid"].clone();
    for round in 0..20 {
        // Every other round changes another entry's count: a real rebuild.
        let b = if round % 2 == 0 { 3 } else { 2 };
        c.write_main(&main_rs(&[
            keep,
            r#"entry("a", "sleep", ["100001"], 0, 1)"#,
            &format!(r#"entry("b", "sleep", ["100002"], 0, {b})"#),
        ]));
        reload_ok(&s);
        assert_eq!(s.pids("keep"), vec![pid], "round {round}");
        assert_eq!(s.pids("b").len(), b, "round {round}");
    }
    let st = s.status();
    assert_eq!(st["pid"], supervisor, "the same process throughout");
    assert_eq!(st["reexec_count"], 20);
    assert_eq!(st["last_reload"]["ok"], true);
    assert!(alive(pid));
    assert!(s.console().contains("successfully compiled."), "{}", s.console());
    assert!(s.console().contains("Sentry reexec'd. Initially started at"), "{}", s.console());
    let zombies = children_of(s.pid()).into_iter().filter(|(_, st)| st == "Z").count();
    assert_eq!(zombies, 0);
    // The fds kept across the execs are close-on-exec again (else they leak
    // into every `cargo build` and `check`).
    let inheritable = inheritable_fds(s.pid());
    assert!(inheritable.is_empty(), "fds without O_CLOEXEC after 20 re-execs: {inheritable:?}");
    // PDEATHSIG still holds after 20 re-execs: a SIGKILLed supervisor takes its children along.
    let children: Vec<i32> = ["keep", "a", "b"].iter().flat_map(|e| s.pids(e)).collect();
    s.sigkill_taking_along(&children);
}

#[test]
fn a_child_whose_name_is_cut_mid_character_survives_reloads_undoubled() {
    // The kernel keeps the first 15 bytes of "мониторинг": not UTF-8.
    let bin = TempDir::new("mon-bin");
    let exe = copy_of_sleep(bin.path(), "мониторинг");
    let c = ConfCrate::new(
        "rl_mon",
        &main_rs(&[&format!(r#"entry("mon", {:?}, ["100000"], 0, 1)"#, exe.to_str().unwrap())]),
    );
    let s = c.start(&[]);
    let pid = wait_for("mon to run", || s.pids("mon").first().copied());
    assert_eq!(processes_of(&exe), vec![pid]);
    for _ in 0..2 {
        reload_ok(&s);
    }
    assert_eq!(s.status()["reexec_count"], 2);
    assert_eq!(s.pids("mon"), vec![pid], "adopted as our child, not counted as an exit:\n{}", s.console());
    assert_eq!(processes_of(&exe), vec![pid], "exactly one such process, the same");
    assert!(!s.console().contains("no longer our child"), "{}", s.console());
}

#[test]
fn the_new_configuration_applies_as_a_difference() {
    let before = [
        r#"entry("same", "sleep", ["100000"], 0, 1)"#,
        r#"entry("scaled", "sleep", ["100001"], 0, 2)"#,
        r#"entry("cmd", "sleep", ["100002"], 0, 1)"#,
        r#"entry("envd", "sleep", ["100003"], 0, 1)"#,
        r#"entry("tuned", "sleep", ["100004"], 100, 1)"#,
        r#"entry("gone", "sleep", ["100005"], 0, 2)"#,
        r#"entry("override", "sleep", ["100006"], 0, 1)"#,
    ];
    let c = ConfCrate::new("rl_diff", &main_rs(&before));
    let s = c.start(&[]);
    wait_for("all running", || (s.pids("gone").len() == 2 && s.pids("override").len() == 1).then_some(()));
    assert!(s.cli(&["scale", "override", "3"]).status.success());
    let pids = |name: &str| s.pids(name);
    let (same, scaled, cmd, envd, tuned, gone, over) =
        (pids("same"), pids("scaled"), pids("cmd"), pids("envd"), pids("tuned"), pids("gone"), pids("override"));
    assert_eq!(over.len(), 3);

    c.write_main(&main_rs(&[
        r#"entry("same", "sleep", ["100000"], 0, 1)"#,
        r#"entry("scaled", "sleep", ["100001"], 0, 4)"#,
        r#"entry("cmd", "sleep", ["200002"], 0, 1)"#,
        r#"entry("envd", "sleep", ["100003"], 0, 1).env("NEW", "1")"#,
        r#"entry("tuned", "sleep", ["100004"], 2500, 1).stop_timeout(Duration::from_secs(3)).on("rmem > 1g", "restart")"#,
        r#"entry("override", "sleep", ["100006"], 0, 1)"#,
        r#"entry("fresh", "sleep", ["100007"], 0, 2)"#,
    ]));
    reload_ok(&s);
    assert_eq!(pids("same"), same, "unchanged entries keep their processes");
    let now_scaled = wait_for("scaled to 4", || Some(pids("scaled")).filter(|p| p.len() == 4));
    assert_eq!(&now_scaled[..2], &scaled[..], "a changed count scales by the difference");
    let new_cmd = wait_for("cmd restarted", || Some(pids("cmd")).filter(|p| p.len() == 1 && p != &cmd));
    assert_eq!(
        text(&std::fs::read(format!("/proc/{}/cmdline", new_cmd[0])).unwrap()).replace('\0', " ").trim(),
        "sleep 200002"
    );
    let new_env = wait_for("envd restarted", || Some(pids("envd")).filter(|p| p.len() == 1 && p != &envd));
    let environ = text(&std::fs::read(format!("/proc/{}/environ", new_env[0])).unwrap());
    assert!(environ.split('\0').any(|v| v == "NEW=1"));
    assert!(
        !gone.iter().any(|p| alive(*p))
            || wait_for("removed entry stopped", || gone.iter().all(|p| !alive(*p)).then_some(true))
    );
    wait_for("the removed entry to leave status", || s.entry("gone").is_null().then_some(()));
    assert_eq!(pids("tuned"), tuned, "delay, stop settings and rules change in place");
    let t = s.entry("tuned");
    assert_eq!(t["delay_ms"], 2500);
    assert_eq!(t["rules"][0]["action"], "restart");
    assert_eq!(pids("override"), over, "the override survives: configured count unchanged");
    assert_eq!(s.entry("override")["count"], 3);
    s.wait_pids("fresh", 2);

    // Changing the configured count replaces the override.
    c.write_main(&main_rs(&[
        r#"entry("same", "sleep", ["100000"], 0, 1)"#,
        r#"entry("override", "sleep", ["100006"], 0, 2)"#,
    ]));
    reload_ok(&s);
    s.wait_pids("override", 2);
    assert_eq!(pids("override"), over[..2].to_vec());
    assert_eq!(pids("same"), same);
    let names: Vec<String> = wait_for("removed entries gone", || {
        let st = s.status();
        let names: Vec<String> =
            st["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect();
        (names.len() == 2).then_some(names)
    });
    assert_eq!(names, ["same", "override"]);
}

#[test]
fn a_compile_error_or_a_failed_check_changes_nothing() {
    let good = main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 2)"#]);
    let c = ConfCrate::new("rl_fail", &good);
    let s = c.start(&[]);
    let pids = wait_for("running", || Some(s.pids("keep")).filter(|p| p.len() == 2));

    c.write_main(&good.replace("fn main() {", "fn main() {\n    let broken: u32 = \"not a number\";"));
    let (code, output) = reload(&s);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("error[E0308]") && output.contains("mismatched types"), "{output}");
    let st = s.status();
    assert_eq!(st["last_reload"]["ok"], false);
    assert!(st["last_reload"]["error"].as_str().unwrap().contains("E0308"));
    assert_eq!(st["reexec_count"], 0);
    assert_eq!(s.pids("keep"), pids);

    // Compiles, but the configuration is invalid: the new binary's check fails.
    c.write_main(&main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 2)"#, r#"entry("keep", "", [], 0, 1)"#]));
    let (code, output) = reload(&s);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("used more than once"), "{output}");
    assert_eq!(s.status()["reexec_count"], 0);
    assert_eq!(s.pids("keep"), pids);

    // A fixed configuration reloads fine afterwards.
    c.write_main(&good);
    reload_ok(&s);
    assert_eq!(s.pids("keep"), pids);
}

#[test]
fn output_across_ten_reloads_loses_and_doubles_nothing() {
    // Every 50th line pauses half-way, so a reload often finds a line begun
    // but not ended: its first half must cross the exec in the snapshot.
    let talker = r#"entry("talk", "python3", ["-u", "-c", "import time\ni = 0\nwhile True:\n    print('n', end=' ')\n    if i % 50 == 0:\n        time.sleep(0.005)\n    print(i)\n    i += 1"], 0, 1)"#;
    let c = ConfCrate::new("rl_output", &main_rs(&[talker]));
    let mut s = c.start(&[]);
    wait_for("output", || s.log("talk").contains("n 100\n").then_some(()));
    for _ in 0..10 {
        reload_ok(&s);
    }
    let pid = s.pids("talk")[0];
    assert!(s.cli(&["stop"]).status.success());
    s.wait_exit();
    let log = s.log("talk");
    let mut seen = HashSet::new();
    let mut last = None;
    // Sentry's own lines (`[sentry] Started …`) are not the child's.
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" [sentry] ")).collect();
    for (at, line) in lines.iter().enumerate() {
        let (_, text) = line.split_once(&format!("talk.{pid} ")).expect("a prefixed line");
        // `print` writes "n", " ", the number and "\n" separately, so the
        // stop may cut the very last line short; it is kept as it came.
        if at + 1 == lines.len() && last.is_some_and(|prev: u64| format!("n {}", prev + 1).starts_with(text)) {
            break;
        }
        let n = text.strip_prefix("n ").unwrap_or_else(|| panic!("a whole line: {line:?}"));
        let n: u64 = n.parse().unwrap_or_else(|_| panic!("a whole line: {line:?}"));
        assert!(seen.insert(n), "line {n} doubled");
        if let Some(prev) = last {
            assert_eq!(n, prev + 1, "lines lost between {prev} and {n}");
        }
        last = Some(n);
    }
    assert!(last.unwrap() > 1000, "thousands of lines: {last:?}");
    assert_eq!(seen.len() as u64, last.unwrap() + 1);
}

#[test]
fn sighups_during_the_exec_window_are_neither_lost_nor_fatal() {
    let c = ConfCrate::new("rl_sighup", &main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 1)"#]));
    let s = c.start(&[]);
    let pid = wait_for("keep", || s.pids("keep").first().copied());
    let done = Arc::new(AtomicBool::new(false));
    let supervisor = s.pid();
    let hup = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            while !done.load(Ordering::SeqCst) {
                unsafe { libc::kill(supervisor, libc::SIGHUP) };
                sent += 1;
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            sent
        })
    };
    for _ in 0..3 {
        reload_ok(&s);
    }
    done.store(true, Ordering::SeqCst);
    let sent = hup.join().unwrap();
    assert!(sent > 10);
    // The last SIGHUPs ask for one more reload; wait for things to settle.
    let count = wait_for("reloads to settle", || {
        let a = s.status()["reexec_count"].as_u64()?;
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let b = s.status()["reexec_count"].as_u64()?;
        (a == b).then_some(b)
    });
    assert!(count >= 4, "SIGHUPs caused reloads of their own: {count}");
    assert!(alive(supervisor), "a SIGHUP in the window did not kill the new image");
    assert_eq!(s.pids("keep"), vec![pid]);
    assert_eq!(s.status()["last_reload"]["ok"], true);
}

#[test]
fn http_requests_during_reloads_are_all_answered() {
    let c = ConfCrate::new("rl_http", &main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 2)"#]));
    let s = c.start(&[]);
    s.wait_pids("keep", 2);
    let addr = std::fs::read_to_string(s.file(&format!("{}.addr", c.name))).unwrap().trim().to_string();
    let token = std::fs::read_to_string(s.file(&format!("{}.token", c.name))).unwrap().trim().to_string();
    let done = Arc::new(AtomicBool::new(false));
    let hammer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut answered = 0;
            let mut failures = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let request = if answered % 2 == 0 {
                    "GET /status HTTP/1.0\r\n\r\n".to_string()
                } else {
                    let body = r#"{"count": 2}"#;
                    format!("POST /entries/keep/scale HTTP/1.0\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                };
                let result = TcpStream::connect(&addr).and_then(|mut conn| {
                    conn.write_all(request.as_bytes())?;
                    let mut answer = String::new();
                    conn.read_to_string(&mut answer)?;
                    Ok(answer)
                });
                match result {
                    // 202: a scale a reload interrupted was taken all the same.
                    Ok(a) if a.starts_with("HTTP/1.1 200") || a.starts_with("HTTP/1.1 202") => answered += 1,
                    other => failures.push(format!("{other:?}")),
                }
            }
            (answered, failures)
        })
    };
    for _ in 0..3 {
        reload_ok(&s);
    }
    done.store(true, Ordering::SeqCst);
    let (answered, failures) = hammer.join().unwrap();
    assert!(failures.is_empty(), "{} requests failed, e.g. {:?}", failures.len(), failures.first());
    assert!(answered > 20, "{answered}");
}

#[test]
fn reload_exec_runs_a_binary_built_elsewhere_after_its_check() {
    let c = ConfCrate::new("rl_exec", &main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 1)"#]));
    let s = c.start(&[]);
    let pid = wait_for("keep", || s.pids("keep").first().copied());
    let other = ConfCrate::new(
        "rl_exec_other",
        &main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 1)"#, r#"entry("extra", "sleep", ["100001"], 0, 1)"#]),
    );
    let bin = other.build();
    let out = s.cli(&["reload", "--exec", bin.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(s.pids("keep"), vec![pid]);
    s.wait_pids("extra", 1);
    let exe = std::fs::read_link(format!("/proc/{}/exe", s.pid())).unwrap();
    assert!(exe.ends_with("rl_exec_other"), "{exe:?}");
    // The pause is said as the whole window the children were unwatched,
    // which holds the part after execve.
    let line =
        wait_for("the handover line", || s.console().lines().find(|l| l.contains("Handover took")).map(str::to_string));
    let number = |after: &str| -> f64 {
        let rest = &line[line.find(after).unwrap_or_else(|| panic!("{after:?} in {line}")) + after.len()..];
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap()
    };
    let (window, after_exec) = (number("Handover took "), number("running again, "));
    assert!(line.contains("2 children re-adopted") || line.contains("1 child re-adopted"), "{line}");
    assert!(window >= after_exec && after_exec > 0.0, "{line}");

    // A binary other users can write is refused, and nothing changes.
    let unsafe_copy = other.dir.path().join("world-writable");
    std::fs::copy(&bin, &unsafe_copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&unsafe_copy, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = s.cli(&["reload", "--exec", unsafe_copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("writable by other users"), "{}", text(&out.stderr));
    // A binary whose check fails is refused too.
    let out = s.cli(&["reload", "--exec", "/bin/false"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(s.status()["reexec_count"], 1);
    assert_eq!(s.pids("keep"), vec![pid]);
}

#[test]
fn an_unreadable_snapshot_adopts_the_children_and_says_so() {
    let c = ConfCrate::new("rl_corrupt", &main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 2)"#]));
    let s = c.start(&[("SENTRY_TEST_CORRUPT_HANDOFF", "1")]);
    let pids = wait_for("running", || Some(s.pids("keep")).filter(|p| p.len() == 2));
    let supervisor = s.pid();
    // The new image cannot tell the outcome from its snapshot, so `reload` may
    // not see it: ask over HTTP, then watch the console.
    let out = s.cli(&["reload"]);
    // Should it never come, what `reload` said tells why.
    let said = format!("the loud warning (reload said: {}{})", text(&out.stdout), text(&out.stderr));
    wait_for(&said, || s.console().contains("could not read its handed-over state").then_some(()));
    assert!(alive(supervisor));
    let now = wait_for("the children adopted", || Some(s.pids("keep")).filter(|p| p.len() == 2));
    assert_eq!(now, pids, "same slots, same PIDs");
    assert!(s.console().contains("Adopted keep."), "{}", s.console());
}

#[test]
fn without_a_crate_reload_re_execs_the_started_binary_after_its_check() {
    let tconf = env!("CARGO_BIN_EXE_tconf");
    let s = Sentry::start(tconf, "basic", &["--crate", "/nonexistent-sentry-crate"]);
    let pids = wait_for("running", || Some(s.pids("idle")).filter(|p| p.len() == 2));
    // `start` warns at once that a reload will not rebuild, and how to name the crate.
    let warning = "Warning: no Cargo.toml in /nonexistent-sentry-crate: `reload` will re-exec this binary without \
                   rebuilding it; name it with --crate CRATE or SENTRY_CRATE=CRATE when starting Sentry.";
    wait_for("the warning at start", || s.console().contains(warning).then_some(()));
    let out = s.cli(&["reload"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(s.console().contains("No Cargo.toml in /nonexistent-sentry-crate: re-exec'ing"), "{}", s.console());
    assert_eq!(s.status()["reexec_count"], 1);
    assert_eq!(s.pids("idle"), pids);
    // `reload` says plainly that nothing was rebuilt, and what to do.
    let said = text(&out.stdout);
    let want = format!(
        "NOT rebuilt: no Cargo.toml in /nonexistent-sentry-crate. The same binary ({tconf}) was re-exec'd \
         without rebuilding, so an edit of the configuration is not applied; name it with --crate CRATE or \
         SENTRY_CRATE=CRATE when starting Sentry."
    );
    assert!(said.contains(&want), "{said}");
    let last = &s.status()["last_reload"];
    assert_eq!((last["ok"].as_bool(), last["error"].as_str()), (Some(true), Some(want.as_str())), "{last}");
}

#[test]
fn rate_limit_clocks_and_counts_survive_a_reload() {
    let mark = format!("clk{}", std::process::id());
    let rule = format!(
        r#"watch("w", "{mark}").every(Duration::from_millis(200)).on("rmem > 50m", "exec @ 1h /bin/echo fired $PID")"#
    );
    let c = ConfCrate::new("rl_clocks", &main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 1)"#, &rule]));
    let s = c.start(&[]);
    let mut hog = std::process::Command::new("python3")
        .args(["-c", "x = b'x' * (100 * 2**20)\nimport time\ntime.sleep(1000)", &mark])
        .spawn()
        .unwrap();
    struct Reap<'a>(&'a mut std::process::Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let hog = Reap(&mut hog);
    let line = format!("fired {}", hog.0.id());
    wait_for("the first firing", || s.log("w").contains(&line).then_some(()));
    reload_ok(&s);
    reload_ok(&s);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(s.log("w").matches(&line).count(), 1, "fired again after a reload:\n{}", s.log("w"));
    let w = s.status()["watches"][0].clone();
    assert_eq!(w["rules"][0]["fired"], 1, "{w}");
    assert_eq!(w["matched"].as_array().unwrap().len(), 1, "{w}");
}

#[test]
fn a_failed_exec_resumes_everything_as_before() {
    let talker = r#"entry("talk", "sh", ["-c", "i=0; while :; do echo \"n $i\"; i=$((i+1)); sleep 0.01; done"], 0, 1)"#;
    let c = ConfCrate::new("rl_noexec", &main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 2)"#, talker]));
    let mut s = c.start(&[("SENTRY_TEST_FAIL_EXEC", "1")]);
    let pids = wait_for("running", || Some(s.pids("keep")).filter(|p| p.len() == 2));
    let talk = s.pids("talk");
    let (code, output) = reload(&s);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("cannot exec"), "{output}");
    let st = s.status();
    assert_eq!((st["reexec_count"].as_u64(), st["last_reload"]["ok"].as_bool()), (Some(0), Some(false)));
    assert_eq!(s.pids("keep"), pids, "the children run on");
    assert_eq!(s.pids("talk"), talk);
    // Supervision, output, the control interface and signals all resumed.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    wait_for("a replacement", || Some(s.pids("keep")).filter(|p| p.len() == 2 && p[0] != pids[0]));
    assert!(s.cli(&["scale", "keep", "3"]).status.success());
    let before = s.log("talk").lines().count();
    wait_for("more output", || (s.log("talk").lines().count() > before + 20).then_some(()));
    assert!(s.cli(&["stop"]).status.success(), "SIGTERM is handled again");
    assert_eq!(s.wait_exit(), Some(0));
    let log = s.log("talk");
    let numbers: Vec<u64> = log.lines().filter_map(|l| l.rsplit_once("n ")?.1.parse().ok()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "no line lost or doubled around the failed exec");
}

/// A process the test starts whose command line carries `mark`, using
/// 100 MB of resident memory; killed and reaped on drop (its session too).
struct Hog {
    child: std::process::Child,
    _session: SessionGuard,
}

impl Hog {
    fn start(mark: &str) -> Hog {
        let (child, guard) = spawn_in_session(std::process::Command::new("python3").args([
            "-c",
            "x = b'x' * (100 * 2**20)\nimport time\ntime.sleep(1000)",
            mark,
        ]));
        Hog { child, _session: guard }
    }

    /// Waits until it is killed by `signal`.
    fn wait_killed_by(&mut self, signal: i32) {
        use std::os::unix::process::ExitStatusExt;
        let status = wait_for("the hog to be stopped by the watch", || self.child.try_wait().unwrap());
        assert_eq!(status.signal(), Some(signal), "{status:?}");
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_failed_exec_keeps_watches_rules_and_their_counts() {
    let mark = format!("fxw{}", std::process::id());
    let rule = format!(r#"watch("w", "{mark}").every(Duration::from_millis(200)).on("rmem > 50m", "term")"#);
    let c = ConfCrate::new("rl_noexec_watch", &main_rs(&[r#"entry("keep", "sleep", ["100000"], 0, 1)"#, &rule]));
    let s = c.start(&[("SENTRY_TEST_FAIL_EXEC", "1")]);
    let pid = wait_for("keep", || s.pids("keep").first().copied());
    Hog::start(&mark).wait_killed_by(libc::SIGTERM);
    let fired = |s: &Sentry| s.status()["watches"][0]["rules"][0]["fired"].as_u64();
    wait_for("the firing counted", || (fired(&s) == Some(1)).then_some(()));

    let (code, output) = reload(&s);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("cannot exec"), "{output}");
    let st = s.status();
    assert_eq!(st["last_reload"]["ok"], false);
    let w = &st["watches"][0];
    assert_eq!(w["name"], "w", "the watch survives the failed exec: {st}");
    assert_eq!(w["pattern"], mark);
    assert_eq!(w["rules"][0]["trigger"], "rmem > 50m");
    assert_eq!(w["rules"][0]["action"], "term");
    assert_eq!(w["rules"][0]["fired"], 1, "the count is kept: {w}");
    // ...and it still acts.
    Hog::start(&mark).wait_killed_by(libc::SIGTERM);
    wait_for("the second firing counted", || (fired(&s) == Some(2)).then_some(()));
    assert_eq!(s.pids("keep"), vec![pid]);
}

#[test]
fn an_unreadable_snapshot_keeps_the_adopted_childrens_output_pipes() {
    let talker = r#"entry("talk", "sh", ["-c", "i=0; while :; do echo \"n $i\"; i=$((i+1)); sleep 0.1; done"], 0, 1)"#;
    let c = ConfCrate::new("rl_corrupt_pipes", &main_rs(&[talker]));
    let s = c.start(&[("SENTRY_TEST_CORRUPT_HANDOFF", "1")]);
    let pid = wait_for("talk", || s.pids("talk").first().copied());
    wait_for("output", || s.log("talk").contains("n 5\n").then_some(()));
    let out = s.cli(&["reload"]);
    // Should it never come, what `reload` said tells why.
    let said = format!("the loud warning (reload said: {}{})", text(&out.stdout), text(&out.stderr));
    wait_for(&said, || s.console().contains("could not read its handed-over state").then_some(()));
    let lines = |s: &Sentry| s.log("talk").lines().filter(|l| l.contains(&format!("talk.{pid} n "))).count();
    let after_reload = lines(&s);
    wait_for("more lines of the same child after the reload", || (lines(&s) >= after_reload + 10).then_some(()));
    assert!(alive(pid), "the adopted child was not killed by SIGPIPE");
    assert_eq!(s.pids("talk"), vec![pid], "same slot, same PID");
    assert!(!s.console().contains("killed by SIGPIPE"), "{}", s.console());
}

#[test]
fn a_console_nobody_reads_never_blocks_a_reload() {
    let chatty = r#"entry("chatty", "sh", ["-c", "i=0; while [ $i -lt 20000 ]; do echo \"chatter line $i\"; i=$((i+1)); done; exec sleep 100000"], 0, 1)"#;
    let c = ConfCrate::new("rl_full_stdout", &main_rs(&[chatty]));
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned by nobody else.
    let (read_end, write_end) = unsafe {
        use std::os::fd::FromRawFd;
        (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    };
    let s = c.start_with_stdout(&[], Some(write_end.into()));
    let pid = wait_for("chatty", || s.pids("chatty").first().copied());
    wait_for("all lines logged", || s.log("chatty").contains("chatter line 19999\n").then_some(()));
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes an int.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&read_end), libc::FIONREAD, &mut n) };
        n
    };
    // Full: the console thread waits in a pipe write (how full in bytes
    // depends on how the writes filled the pipe's pages).
    let console_blocked = || {
        std::fs::read_dir(format!("/proc/{}/task", s.pid())).into_iter().flatten().flatten().any(|t| {
            let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
            read("comm").trim() == "sentry-console" && read("wchan").contains("pipe_write")
        })
    };
    wait_for("the stdout pipe to be full", || (queued() > 0 && console_blocked()).then_some(()));
    let out = run_within(std::process::Command::new(&s.bin).args(["reload", "--dir"]).arg(s.dir.path()), PATIENCE * 2);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let st = s.status();
    assert_eq!(st["reexec_count"], 1);
    assert_eq!(s.pids("chatty"), vec![pid]);
    drop(read_end);
}

#[test]
fn a_reload_asked_for_during_another_execs_the_binary_it_named() {
    const TCONF: &str = env!("CARGO_BIN_EXE_tconf");
    let s = Sentry::start(TCONF, "basic", &[]);
    let pid = s.wait_pids("idle", 2);
    let second = s.dir.path().join("tconf-second");
    std::fs::copy(TCONF, &second).unwrap();
    let addr = std::fs::read_to_string(s.file("tconf.addr")).unwrap().trim().to_string();
    let token = std::fs::read_to_string(s.file("tconf.token")).unwrap().trim().to_string();
    let post = |path: &std::path::Path| {
        let body = serde_json::json!({ "exec": path }).to_string();
        let mut c = TcpStream::connect(&addr).unwrap();
        write!(
            c,
            "POST /reload HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    };
    // The first reload's check runs while the second is asked for: the
    // second waits for the next build, in whichever image that is.
    post(std::path::Path::new(TCONF));
    std::thread::sleep(std::time::Duration::from_millis(15));
    post(&second);
    wait_for("the second binary to run", || {
        let exe = std::fs::read_link(format!("/proc/{}/exe", s.pid())).ok()?;
        exe.ends_with("tconf-second").then_some(())
    });
    assert_eq!(s.pids("idle"), pid, "the children went on");
}
