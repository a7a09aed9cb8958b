//! The command line and the control interface, used as a user would: exit
//! codes, the pidfile lock, scale and restart, bad input over HTTP, `--daemon`,
//! and how CRATE and DIR are found.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// A raw HTTP/1.0 request; returns (status, body).
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let code = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

fn post(addr: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    http(addr, &format!("POST {path} HTTP/1.0\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len()))
}

fn tconf(args: &[&str], scenario: &str) -> std::process::Output {
    run(Command::new(TCONF).args(args).env("TCONF", scenario))
}

#[test]
fn check_reports_every_problem_with_its_text() {
    let ok = tconf(&["check"], "basic");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let bad = tconf(&["check"], "invalid");
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    for needle in [
        "\"bad name!\"",
        "\"twice\" is used more than once",
        "the command is empty",
        "(unclosed",
        ".stop_timeout() applies to entries only",
        "above the maximum",
        "rss > 1g",
        "stop",
        "applies to entries only",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
    }
}

#[test]
fn an_invalid_configuration_starts_nothing() {
    let mut s = Sentry::spawn(TCONF, "invalid", &[]);
    assert_eq!(s.wait_exit(), Some(1));
    assert!(s.console().contains("invalid configuration"), "{}", s.console());
    assert!(!s.file("tconf.pid").exists());
    assert!(children_of(s.pid()).is_empty());
}

#[test]
fn usage_errors_exit_64_and_help_works_everywhere() {
    for args in
        [&[][..], &["frobnicate"], &["start", "--bogus"], &["scale", "idle"], &["restart"], &["status", "extra"]]
    {
        let out = tconf(args, "basic");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(text(&out.stderr).contains("Usage:"), "{args:?}");
    }
    for args in [&["--help"][..], &["start", "--help"], &["scale", "--help"], &["reload", "--help"]] {
        let out = tconf(args, "basic");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).contains("scale ENTRY COUNT"));
    }
    // A command's own help first: its flags, then every command and the environment.
    let out = tconf(&["logs", "--help"], "basic");
    let help = text(&out.stdout);
    assert!(
        help.starts_with("Usage: tconf logs [ENTRY...]")
            && help.contains("--since T")
            && help.contains("SENTRY_SYSLOG"),
        "{help}"
    );
}

#[test]
fn a_run_directory_that_is_not_utf8_works_and_text_that_is_not_is_a_usage_error() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let mut name = format!("sentry-test-not-utf8-{}-", std::process::id()).into_bytes();
    name.extend_from_slice(b"caf\xe9\xff");
    let dir = std::env::temp_dir().join(OsStr::from_bytes(&name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = Sentry::spawn_in(TempDir(dir.clone()), TCONF, "basic", &[]);
    wait_for("the instance to answer", || s.cli(&["status", "--json"]).status.success().then_some(()));
    assert_eq!(s.wait_pids("idle", 2).len(), 2);
    assert_eq!(std::fs::read_to_string(dir.join("tconf.pid")).unwrap(), format!("{}\n", s.pid()));
    let table = s.cli(&["status"]);
    assert!(text(&table.stdout).contains("idle"), "{}", text(&table.stderr));

    // A count (or an entry) that is not text is a usage error, not a panic.
    let not_text = OsStr::from_bytes(b"\xff");
    for args in [&[OsStr::new("scale"), OsStr::new("idle"), not_text][..], &[OsStr::new("restart"), not_text]] {
        let out = run(Command::new(TCONF).args(args).arg("--dir").arg(&dir).env("TCONF", "basic"));
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("Usage:") && !text(&out.stderr).contains("panicked"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(s.entry("idle")["count"], 2, "nothing changed");
    let weird_exec =
        run(Command::new(TCONF).args([OsStr::new("reload"), OsStr::new("--exec"), not_text]).arg("--dir").arg(&dir));
    assert_eq!(weird_exec.status.code(), Some(64), "{}", text(&weird_exec.stderr));
    assert!(!text(&weird_exec.stderr).contains("panicked"), "{}", text(&weird_exec.stderr));

    // The run directory crosses a reload (the handoff carries it as bytes).
    let pids = s.wait_pids("idle", 2);
    let reload = s.cli(&["reload", "--exec", TCONF]);
    assert_eq!(reload.status.code(), Some(0), "{}{}\n{}", text(&reload.stdout), text(&reload.stderr), s.console());
    assert_eq!(s.status()["reexec_count"], 1);
    assert_eq!(s.pids("idle"), pids, "the children were handed over");

    let stop = s.cli(&["stop"]);
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop.stderr));
    assert_eq!(s.wait_exit(), Some(0));
    assert!(!dir.join("tconf.pid").exists(), "the files were removed at the end");
    assert_eq!(s.cli(&["status"]).status.code(), Some(2));
}

#[test]
fn output_to_a_closed_pipe_ends_a_command_quietly() {
    for args in [&["--help"][..], &["check"], &["explain"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(TCONF).args(args).env("TCONF", "watch").stdout(writer).output().unwrap();
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {out:?}");
        assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
    }
}

#[test]
fn commands_without_an_instance_say_not_running() {
    let dir = TempDir::new("idle");
    let d = dir.path().to_str().unwrap();
    // A stale pidfile naming a live process (this test) is never signalled.
    std::fs::write(dir.path().join("tconf.pid"), format!("{}\n", std::process::id())).unwrap();
    assert_eq!(tconf(&["stop", "--dir", d], "basic").status.code(), Some(0));
    assert_eq!(tconf(&["status", "--dir", d], "basic").status.code(), Some(2));
    assert_eq!(tconf(&["scale", "idle", "3", "--dir", d], "basic").status.code(), Some(2));
    assert_eq!(tconf(&["restart", "idle", "--dir", d], "basic").status.code(), Some(2));
}

#[test]
fn the_pidfile_lock_refuses_a_second_instance_and_replaces_a_stale_one() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let pidfile = std::fs::read_to_string(s.file("tconf.pid")).unwrap();
    assert_eq!(pidfile, format!("{}\n", s.pid()));
    let again = s.cli(&["start"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already running"), "{}", text(&again.stderr));
    assert_eq!(s.status()["pid"], s.pid(), "the first instance is untouched");
    assert_eq!(std::fs::metadata(s.file("tconf.token")).unwrap().permissions().mode() & 0o777, 0o600);

    // A locked pidfile edited by hand to name another process: `stop` signals nobody.
    let (mut decoy, _decoy_guard) = spawn_in_session(Command::new("sleep").arg("1000"));
    std::fs::write(s.file("tconf.pid"), format!("{}\n", decoy.id())).unwrap();
    let stop = s.cli(&["stop"]);
    assert_eq!(stop.status.code(), Some(1));
    assert!(text(&stop.stderr).contains("nothing was signalled"), "{}", text(&stop.stderr));
    assert!(decoy.try_wait().unwrap().is_none(), "the decoy was not signalled");
    assert_eq!(s.status()["pid"], s.pid(), "the instance is untouched and still answers");
    decoy.kill().unwrap();
    decoy.wait().unwrap();

    // A stale pidfile (nobody holds its lock) is replaced.
    let stale = TempDir::new("stale");
    std::fs::write(stale.path().join("tconf.pid"), "1\n").unwrap();
    let mut s2 = Sentry::spawn_in(stale, TCONF, "basic", &[]);
    wait_for("the second instance", || s2.cli(&["status"]).status.success().then_some(()));
    assert_eq!(std::fs::read_to_string(s2.file("tconf.pid")).unwrap(), format!("{}\n", s2.pid()));
    assert_eq!(s2.cli(&["stop"]).status.code(), Some(0));
    assert_eq!(s2.wait_exit(), Some(0));
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn a_sigterm_as_soon_as_the_pidfile_names_the_instance_is_a_clean_stop() {
    // What a service manager may do: read the pidfile the moment it has a
    // PID and send SIGTERM. The signal waits until Sentry's handlers are in
    // place (blocked from the first instruction of `start`), so it is a
    // clean stop with exit code 0, never a death by SIGTERM's default action.
    for round in 0..5 {
        let mut s = Sentry::spawn(TCONF, "basic", &[]);
        let (pidfile, pid) = (s.file("tconf.pid"), s.pid().to_string());
        // Read without a pause (a 20 ms poll would mostly miss the moment).
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&pidfile).map_or(true, |t| t.trim() != pid) {
            assert!(Instant::now() < deadline, "round {round}: no pidfile naming {pid}");
        }
        // SAFETY: SIGTERM to the instance this test started.
        unsafe { libc::kill(s.pid(), libc::SIGTERM) };
        assert_eq!(s.wait_exit(), Some(0), "round {round}: {}", s.console());
    }
}

#[test]
fn scale_up_and_down_keeps_the_lowest_slots() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let first = s.wait_pids("idle", 2);
    let out = s.cli(&["scale", "idle", "4"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let four = s.pids("idle");
    assert_eq!(four.len(), 4, "scale returns once the processes run");
    assert_eq!(&four[..2], &first[..]);
    let entry = s.entry("idle");
    assert_eq!((entry["count"].as_u64(), entry["configured_count"].as_u64()), (Some(4), Some(2)));

    assert!(s.cli(&["scale", "idle", "1"]).status.success());
    assert_eq!(s.pids("idle"), vec![first[0]], "the highest slots stopped first");
    for pid in &four[1..] {
        assert!(!alive(*pid), "scale-down waits for the stop");
    }
    assert!(s.cli(&["scale", "idle", "0"]).status.success());
    assert_eq!(s.entry("idle")["state"], "stopped");

    for (args, code) in [
        (&["scale", "idle", "-1"][..], 1),
        (&["scale", "idle", "many"], 1),
        (&["scale", "idle", "99999999"], 1),
        (&["scale", "nope", "1"], 1),
        (&["restart", "nope"], 1),
    ] {
        let out = s.cli(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(s.entry("idle")["count"], 0, "bad input changed nothing");
}

#[test]
fn restart_replaces_every_process_gracefully() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let before = s.wait_pids("idle", 2);
    let out = s.cli(&["restart", "idle"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = s.pids("idle");
    assert_eq!(after.len(), 2);
    assert!(before.iter().all(|p| !after.contains(p) && !alive(*p)));
    assert_eq!(s.entry("idle")["restarts"], 2);
    assert_eq!(s.pids("other").len(), 1, "other entries untouched");
    let console = s.console();
    assert!(console.contains("killed by SIGTERM."), "{console}");
}

#[test]
fn bad_http_requests_get_4xx_and_change_nothing() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let addr = std::fs::read_to_string(s.file("tconf.addr")).unwrap().trim().to_string();
    let token = std::fs::read_to_string(s.file("tconf.token")).unwrap().trim().to_string();
    let auth = format!("Authorization: Bearer {token}\r\n");
    let json = "Content-Type: application/json\r\n";
    let both = format!("{auth}{json}");
    let cases: Vec<(String, String, &str, u16)> = vec![
        ("/entries/idle/scale".into(), json.into(), r#"{"count": 5}"#, 401),
        ("/entries/idle/scale".into(), format!("Authorization: Bearer wrong\r\n{json}"), r#"{"count": 5}"#, 401),
        ("/entries/idle/scale".into(), auth.clone(), r#"{"count": 5}"#, 415),
        ("/entries/idle/scale".into(), both.clone(), "not json", 400),
        ("/entries/idle/scale".into(), both.clone(), r#"{"count": -2}"#, 400),
        ("/entries/idle/scale".into(), both.clone(), r#"{"count": 1e9}"#, 400),
        ("/entries/idle/scale".into(), both.clone(), r#"{"cont": 5}"#, 400),
        ("/entries/nope/scale".into(), both.clone(), r#"{"count": 5}"#, 404),
        ("/entries/nope/restart".into(), both.clone(), "{}", 404),
        ("/nothing".into(), both.clone(), "{}", 404),
    ];
    for (path, headers, body, want) in cases {
        let (code, answer) = post(&addr, &path, &headers, body);
        assert_eq!(code, want, "{path} {headers:?} {body}: {answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).expect("a JSON error");
        assert!(v["error"].is_string(), "{answer}");
    }
    let (code, _) = http(&addr, "GET /entries/idle/scale HTTP/1.0\r\n\r\n");
    assert_eq!(code, 405);
    let (code, _) = http(&addr, "garbage\r\n\r\n");
    assert!((400..500).contains(&code), "{code}");
    assert_eq!(s.entry("idle")["count"], 2, "nothing changed");
    assert_eq!(s.pids("idle").len(), 2);

    // And the good request works.
    let (code, answer) = post(&addr, "/entries/idle/scale", &both, r#"{"count": 3}"#);
    assert_eq!(code, 200, "{answer}");
    let entry: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(entry["count"], 3);
    assert_eq!(entry["processes"].as_array().unwrap().len(), 3);
}

#[test]
fn status_has_the_spec_fields() {
    let s = Sentry::start(TCONF, "basic", &[]);
    s.wait_pids("idle", 2);
    let st = s.status();
    for key in ["pid", "started_at", "reexec_count", "reexeced_at", "last_reload", "entries", "watches"] {
        assert!(st.get(key).is_some(), "{key} missing from {st}");
    }
    let e = s.entry("idle");
    for key in
        ["name", "command", "args", "delay_ms", "count", "configured_count", "restarts", "state", "processes", "rules"]
    {
        assert!(e.get(key).is_some(), "{key} missing from {e}");
    }
    let p = &e["processes"][0];
    for key in ["pid", "index", "started_at", "rss_bytes"] {
        assert!(p.get(key).is_some(), "{key} missing from {p}");
    }
    assert!(p["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(e["args"], serde_json::json!(["1000"]));
    let table = text(&s.cli(&["status"]).stdout);
    assert!(table.contains("idle") && table.contains("running"), "{table}");
}

#[test]
fn start_says_where_the_control_interface_and_its_token_are() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let addr = std::fs::read_to_string(s.file("tconf.addr")).unwrap().trim().to_string();
    let want = format!("Control interface on http://{addr}/ (token in {}).", s.file("tconf.token").display());
    let console = wait_for("the control line", || Some(s.console()).filter(|c| c.contains(&want)));
    let lines: Vec<&str> = console.lines().collect();
    assert!(lines[0].starts_with("Sentry started (PID: "), "{console}");
    assert_eq!(lines[1], want, "{console}");
    // The crate was found (CARGO_MANIFEST_DIR names the package of tconf): no warning.
    assert!(!console.contains("Warning"), "{console}");
}

#[test]
fn an_address_in_use_fails_before_any_child_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut s = Sentry::spawn(TCONF, "basic", &["--http", &addr]);
    assert_eq!(s.wait_exit(), Some(1));
    assert!(s.console().contains("cannot bind"), "{}", s.console());
    assert!(!s.file("tconf.pid").exists(), "the lock was released and the file removed");
    assert!(!s.console().contains("Started at"));
}

#[test]
fn daemon_mode_returns_once_the_instance_answers() {
    let dir = TempDir::new("daemon");
    // The daemon is in no session of the test's: its cgroups go on drop.
    let _cgroups = CgroupGuard::for_dir(dir.path());
    let d = dir.path().to_str().unwrap();
    let out = tconf(&["start", "--daemon", "--dir", d], "basic");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let pid: i32 = std::fs::read_to_string(dir.path().join("tconf.pid")).unwrap().trim().parse().unwrap();
    let _cleanup = SessionGuard(pid);
    assert_eq!(stat_fields(pid).unwrap()[3], pid.to_string(), "the daemon leads its own session");
    assert_eq!(tconf(&["status", "--dir", d], "basic").status.code(), Some(0));
    assert_eq!(tconf(&["stop", "--dir", d], "basic").status.code(), Some(0));
    wait_for("the daemon to exit", || (!alive(pid)).then_some(()));
    assert_eq!(tconf(&["status", "--dir", d], "basic").status.code(), Some(2));
}

/// A throwaway workspace whose member `conf` defines the binary `tconf`,
/// with a copy of the binary at `target/debug/tconf`.
fn fake_workspace(root: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(root.join("conf/src/bin")).unwrap();
    std::fs::create_dir_all(root.join("target/debug")).unwrap();
    std::fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = [\"conf\"]\nresolver = \"2\"\n").unwrap();
    std::fs::write(
        root.join("conf/Cargo.toml"),
        "[package]\nname = \"conf\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(root.join("conf/src/bin/tconf.rs"), "fn main() {}\n").unwrap();
    let bin = root.join("target/debug/tconf");
    std::fs::copy(TCONF, &bin).unwrap();
    bin
}

#[test]
fn crate_and_dir_are_found_from_the_binary_or_cargo_run() {
    let root = TempDir::new("ws");
    let bin = fake_workspace(root.path());
    let member = root.path().join("conf");
    let clean = |cmd: &mut Command| {
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") || k.starts_with("SENTRY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("TCONF", "basic").current_dir("/");
    };
    // Walking up from target/debug/tconf to the workspace, then its member.
    let mut start = Command::new(&bin);
    start.arg("start");
    clean(&mut start);
    in_own_session(&mut start);
    // A copied binary can be "text file busy" while another test's fork still
    // holds the copy's write fd: retry then.
    let mut child =
        wait_for("the copied binary to start", || match start.stdout(std::process::Stdio::null()).spawn() {
            Ok(c) => Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => None,
            Err(e) => panic!("{e}"),
        });
    let sid = child.id() as i32;
    let _cgroups = CgroupGuard::for_dir(&member);
    let _cleanup = SessionGuard(sid);
    wait_for("the pidfile in the member crate", || member.join("tconf.pid").exists().then_some(()));
    let mut status = Command::new(&bin);
    status.arg("status");
    clean(&mut status);
    wait_for("status from another directory", || run(&mut status).status.success().then_some(()));
    // `cargo run` sets CARGO_MANIFEST_DIR: it names the same crate.
    let mut via_cargo = Command::new(TCONF);
    via_cargo.arg("status");
    clean(&mut via_cargo);
    via_cargo.env("CARGO_MANIFEST_DIR", &member);
    assert!(run(&mut via_cargo).status.success());
    // SENTRY_DIR overrides it.
    let elsewhere = TempDir::new("elsewhere");
    let mut other = Command::new(&bin);
    other.arg("status");
    clean(&mut other);
    other.env("SENTRY_DIR", elsewhere.path());
    assert_eq!(run(&mut other).status.code(), Some(2));
    let mut stop = Command::new(&bin);
    stop.arg("stop");
    clean(&mut stop);
    assert!(run(&mut stop).status.success());
    assert!(child.wait().unwrap().success());
}

#[test]
fn start_warns_when_it_cannot_find_its_crate() {
    // A copy of the binary far from any Cargo.toml, as with CARGO_TARGET_DIR
    // or build.target-dir elsewhere, and no hint from the environment.
    let home = TempDir::new("nocrate");
    let bin = home.path().join("tconf");
    std::fs::copy(TCONF, &bin).unwrap();
    let run_dir = home.path().join("run");
    let console = home.path().join("console.txt");
    let mut start = Command::new(&bin);
    start.arg("start").arg("--dir").arg(&run_dir).env("TCONF", "basic").current_dir("/");
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") || k.starts_with("SENTRY_") {
            start.env_remove(k);
        }
    }
    in_own_session(&mut start);
    let out = std::fs::File::create(&console).unwrap();
    // A copied binary can be "text file busy" while another test's fork still
    // holds the copy's write fd: retry then.
    let mut child = wait_for("the copied binary to start", || {
        match start.stdout(out.try_clone().unwrap()).stderr(out.try_clone().unwrap()).spawn() {
            Ok(c) => Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => None,
            Err(e) => panic!("{e}"),
        }
    });
    let _cgroups = CgroupGuard::for_dir(&run_dir);
    let _cleanup = SessionGuard(child.id() as i32);
    let said = wait_for("the warning", || {
        Some(std::fs::read_to_string(&console).unwrap_or_default()).filter(|c| c.contains("when starting Sentry."))
    });
    assert!(said.contains("Warning: no configuration crate found for tconf"), "{said}");
    assert!(said.contains(&format!("above {}", bin.display())), "{said}");
    assert!(said.contains("without rebuilding") && said.contains("--crate CRATE or SENTRY_CRATE=CRATE"), "{said}");
    let stop = run(Command::new(&bin).arg("stop").arg("--dir").arg(&run_dir).env("TCONF", "basic"));
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop.stderr));
    assert!(child.wait().unwrap().success());
}
