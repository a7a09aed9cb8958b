//! The rest of the HTTP interface, end to end on a real instance:
//! `GET /metrics` checked by `promtool`, `GET /events` (pages, long polls,
//! the event stream with `Last-Event-ID`, numbers that keep increasing
//! across a reload, `lost` once the ring has moved on), `GET /` and bad
//! requests to each.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

fn addr(s: &Sentry) -> String {
    std::fs::read_to_string(s.file("tconf.addr")).unwrap().trim().to_string()
}

/// `GET path` with `headers`: (status, the head, the body).
fn get(addr: &str, path: &str, headers: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

fn events(addr: &str, query: &str) -> Value {
    let (code, _, body) = get(addr, &format!("/events?{query}"), "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn seqs(page: &Value) -> Vec<u64> {
    page["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[test]
fn metrics_pass_promtool_and_name_what_runs() {
    let s = Sentry::start(TCONF, "basic", &[]);
    s.wait_pids("idle", 2);
    let a = addr(&s);
    let (code, head, body) = get(&a, "/metrics", "Accept: text/plain\r\n");
    assert_eq!(code, 200, "{body}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    for want in [
        "sentry_entry_processes_running{entry=\"idle\"} 2",
        "sentry_entry_processes_target{entry=\"idle\"} 2",
        "sentry_build_info{version=",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "sentry_reexecs_total 0",
        "sentry_process_cpu_seconds_total{entry=\"idle\",slot=\"0\"}",
    ] {
        assert!(body.contains(want), "{want} missing in\n{body}");
    }
    assert!(!body.contains(&format!("\"{}\"", s.pids("idle")[0])), "no PID as a label");
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{body}");
        }
        Err(e) => eprintln!("promtool not run ({e}): install Debian's prometheus package (.ci/run does)"),
    }
    let (code, _, body) = get(&a, "/metrics", "");
    assert_eq!(code, 200, "{body}");
    let post = Command::new("curl")
        .arg("-s")
        .arg("-o")
        .arg("/dev/null")
        .arg("-w")
        .arg("%{http_code}")
        .arg("-X")
        .arg("POST")
        .arg(format!("http://{a}/metrics"))
        .output();
    if let Ok(out) = post {
        assert_eq!(text(&out.stdout), "405");
    }
}

#[test]
fn events_page_wait_stream_and_survive_a_reload() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let pids = s.wait_pids("idle", 2);
    let a = addr(&s);
    let first = events(&a, "since=0");
    let started: Vec<&Value> =
        first["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "started" && e["entry"] == "idle").collect();
    assert_eq!(started.len(), 2, "{first}");
    assert!(pids.contains(&(started[0]["pid"].as_i64().unwrap() as i32)));
    assert_eq!(first["lost"], false);
    let next = first["next"].as_u64().unwrap();
    assert_eq!(Some(&next), seqs(&first).last());
    // Nothing newer: an empty page at once; with wait, the next event ends the wait.
    assert!(seqs(&events(&a, &format!("since={next}"))).is_empty());
    let a2 = a.clone();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        (events(&a2, &format!("since={next}&wait=30")), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.cli(&["scale", "idle", "3"]).status.success());
    let (page, took) = waiter.join().unwrap();
    assert!(took < Duration::from_secs(20), "the long poll ended with the event: {took:?}");
    assert_eq!(page["events"][0]["kind"], "scaled", "{page}");
    assert_eq!(page["events"][0]["text"], "Scaled from 2 to 3.");
    // The stream: from Last-Event-ID on, one `id`/`event`/`data` block each.
    let mut stream = TcpStream::connect(&a).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(stream, "GET /events HTTP/1.1\r\nHost: {a}\r\nAccept: text/event-stream\r\nLast-Event-ID: {next}\r\n\r\n")
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let line = lines.next().unwrap().unwrap();
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.parse::<u64>().unwrap());
        }
    }
    assert_eq!(ids[0], next + 1, "the stream goes on after Last-Event-ID");
    // Across a reload the numbers go on increasing, and old ones are still there.
    let before = seqs(&events(&a, "since=0"));
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = wait_for("the reload's event", || {
        let page = events(&a, "since=0");
        page["events"].as_array().unwrap().iter().any(|e| e["kind"] == "reloaded").then_some(page)
    });
    let all = seqs(&after);
    assert!(all.starts_with(&before), "the ring crossed the exec");
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "increasing, no gap: {all:?}");
    // A query is decoded as a form is, as client libraries encode it.
    let since_one = seqs(&events(&a, "since=1"));
    assert!(!since_one.is_empty());
    for q in ["since=%31", "%73ince=1", "since=1&", "since=1&wait=%30"] {
        assert_eq!(seqs(&events(&a, q)), since_one, "{q}");
    }
    // Bad requests: 400 with an error, nothing else.
    for q in [
        "since=-1",
        "since=abc",
        "wait=x",
        "nosuch=1",
        "since=99999999999999999999999",
        "since=%3",
        "since=%FF",
        "since=+1",
    ] {
        let (code, _, body) = get(&a, &format!("/events?{q}"), "");
        assert_eq!(code, 400, "{q}: {body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    }
    let (code, _, _) = get(&a, "/events?since=0", "Authorization: Bearer wrong\r\n");
    assert_eq!(code, 200, "reading needs no token on loopback");
}

#[test]
fn event_streams_are_capped_and_a_client_that_leaves_frees_its_place_at_once() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let a = addr(&s);
    let open = || {
        let mut stream = TcpStream::connect(&a).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(stream, "GET /events HTTP/1.1\r\nHost: {a}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        (stream, String::from_utf8_lossy(&head[9..12]).into_owned())
    };
    for round in 0..3 {
        let streams: Vec<(TcpStream, String)> = (0..16).map(|_| open()).collect();
        assert!(streams.iter().all(|(_, code)| code == "200"), "round {round}: 16 streams are served");
        let (_, code) = open();
        assert_eq!(code, "503", "round {round}: the 17th is refused");
        drop(streams);
        // Gone clients free their places within a moment, not at a write 15 s later.
        let t = Instant::now();
        wait_for("the places to be free", || {
            let (probe, code) = open();
            drop(probe);
            (code == "200").then_some(())
        });
        assert!(t.elapsed() < Duration::from_secs(5), "round {round}: freed in {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(s.cli(&["status"]).status.success());
}

#[test]
fn a_client_older_than_the_ring_is_told_it_lost_events() {
    let s = Sentry::start(TCONF, "basic", &[]);
    s.wait_pids("idle", 2);
    let a = addr(&s);
    // Over a thousand events: 600 starts and 600 exits.
    assert!(s.cli(&["scale", "idle", "600"]).status.success());
    s.wait_pids("idle", 600);
    assert!(s.cli(&["scale", "idle", "0"]).status.success());
    let page = wait_for("the ring to move on", || {
        let page = events(&a, "since=1");
        (page["lost"] == true).then_some(page)
    });
    assert!(seqs(&page).first().unwrap() > &2, "{}", page["events"][0]);
    let newest = events(&a, "since=0")["next"].as_u64().unwrap();
    assert_eq!(events(&a, &format!("since={newest}"))["lost"], false);
}

#[test]
fn the_dashboard_is_one_self_contained_page() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let a = addr(&s);
    let (code, head, body) = get(&a, "/", "");
    assert_eq!(code, 200);
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert!(head.contains("Content-Security-Policy: default-src 'self'"), "{head}");
    assert!(body.contains("<title>Sentry</title>") && body.contains("sessionStorage"), "the page");
    for outside in ["http://", "https://", "//cdn", "src=\"//"] {
        assert!(!body.contains(outside), "nothing loaded from another host: {outside}");
    }
    let (code, _, body) = get(&a, "/nosuch", "");
    assert_eq!(code, 404, "{body}");
}

#[test]
fn a_unix_socket_serves_its_owner_across_a_reload_and_goes_at_the_end() {
    let dir = TempDir::new("unix");
    let sock = dir.path().join("control.sock");
    let http = format!("unix:{}", sock.display());
    let mut s = Sentry::spawn_in(dir, TCONF, "basic", &["--http", &http]).waiting();
    s.wait_pids("idle", 2);
    let recorded = std::fs::read_to_string(s.file("tconf.addr")).unwrap();
    assert_eq!(recorded.trim(), format!("unix:{}", std::fs::canonicalize(&sock).unwrap().display()));
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // The CLI speaks over it, and so does any HTTP client.
    assert!(s.cli(&["scale", "idle", "3"]).status.success());
    let curl = Command::new("curl").args(["-s", "--unix-socket"]).arg(&sock).arg("http://localhost/status").output();
    if let Ok(out) = curl {
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["entries"][0]["count"], 3);
    }
    // Another user is refused by the peer check even when the mode lets it connect.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // Asked through the CLI itself, run as nobody (no interpreter needed).
    let other = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", TCONF, "status", "--dir"])
        .arg(s.dir.path())
        .env("TCONF", "basic")
        .output();
    match other {
        Ok(out) => {
            let said = text(&out.stderr);
            assert!(!out.status.success() && said.contains("only the owner of this socket"), "{said}");
        }
        Err(e) => eprintln!("setpriv not run ({e}): the peer check is not exercised"),
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Handed across a reload: the same socket, still answering.
    let inode = meta.ino();
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::metadata(&sock).unwrap().ino(), inode);
    assert_eq!(s.status()["reexec_count"], 1);
    // Bad input over it gets the same answers.
    assert_eq!(s.cli(&["scale", "idle", "x"]).status.code(), Some(1));
    assert!(s.cli(&["stop"]).status.success());
    assert_eq!(s.wait_exit(), Some(0));
    assert!(!sock.exists(), "the socket goes with the instance");
}

#[test]
fn a_unix_socket_left_by_a_killed_instance_is_replaced_and_a_file_never_is() {
    let dir = TempDir::new("unix-stale");
    let sock = dir.path().join("control.sock");
    let http = format!("unix:{}", sock.display());
    let mut first = Sentry::spawn_in(TempDir(dir.path().to_path_buf()), TCONF, "basic", &["--http", &http]).waiting();
    let pids = first.wait_pids("idle", 2);
    first.sigkill_taking_along(&pids);
    assert!(sock.exists(), "a SIGKILLed instance leaves its socket");
    let second = Sentry::spawn_in(dir, TCONF, "basic", &["--http", &http]).waiting();
    assert!(second.cli(&["status"]).status.success());
    drop(second);
    std::mem::forget(first);
    // A regular file where the socket should go: refused, untouched.
    let other = TempDir::new("unix-file");
    let file = other.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let out = run(Command::new(TCONF)
        .args(["start", "--dir"])
        .arg(other.path())
        .arg("--http")
        .arg(format!("unix:{}", file.display()))
        .env("TCONF", "basic"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// An exit told before a reload (its process group still being stopped)
/// is not told again after it: one `exited` event, one `Exited` line on the
/// console and in the log, one line about the leftover, with the exit's
/// own time.
#[test]
fn an_exit_told_before_a_reload_is_told_once() {
    let s = Sentry::start(TCONF, "lingerer", &[]);
    // Its leader exits at once: its PID is read off the console.
    let said = |what: &str| s.console().lines().filter(|l| l.contains(what)).map(str::to_string).collect::<Vec<_>>();
    let first = wait_for("the leftover said", || said(" left in its ").first().cloned());
    let tag = format!("{} ", first.split(' ').nth(1).unwrap());
    let pid: i64 = tag.trim().split('.').nth(1).unwrap().parse().unwrap();
    let mine = |text: &str, what: &str| text.lines().filter(|l| l.contains(&tag) && l.contains(what)).count();
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for("a replacement started", || (said("Started at ").len() >= 2).then_some(()));
    wait_for("the log's exit line", || (mine(&s.log("lingerer"), "Exited at ") == 1).then_some(()));
    let a = addr(&s);
    let told: Vec<Value> = events(&a, "since=0")["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pid"] == pid && e["kind"] == "exited")
        .cloned()
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    let console = s.console();
    assert_eq!(mine(&console, " Exited at "), 1, "{console}");
    assert_eq!(mine(&console, " left in its "), 1, "{console}");
    let at = told[0]["text"].as_str().unwrap();
    assert!(console.lines().any(|l| l.contains(&tag) && l.contains(at)), "the exit's own time: {at}\n{console}");
    assert_eq!(mine(&s.log("lingerer"), "Exited at "), 1);
}

/// Reloads back to back while processes exit all the time: every process
/// has exactly one `exited` event, one `Started` and one `Exited` line on
/// the console, and one of each in its log — none lost at an exec, none
/// told twice.
#[test]
fn reloads_among_exits_lose_and_double_no_start_or_exit() {
    let s = Sentry::start(TCONF, "storm", &[]);
    let count = |what: &str| s.console().lines().filter(|l| l.contains(what)).count();
    wait_for("a first round of exits", || (count(" Exited at ") >= 20).then_some(()));
    // Over about four seconds: each slot exits at least twice meanwhile.
    let until = Instant::now() + Duration::from_secs(4);
    let mut reloads = 0;
    while Instant::now() < until {
        let out = s.cli(&["reload", "--exec", TCONF]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        reloads += 1;
    }
    assert!(reloads >= 5, "{reloads} reloads");
    // One `exited` event per process (those of the stop itself are not in
    // `/events`: it answers 503 once the stop begins).
    let page = events(&addr(&s), "since=0");
    let mut exits: HashMap<i64, usize> = HashMap::new();
    for e in page["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "exited") {
        *exits.entry(e["pid"].as_i64().unwrap()).or_default() += 1;
    }
    assert!(exits.values().all(|&n| n == 1), "{exits:?}");
    assert!(s.cli(&["stop"]).status.success());
    let console = s.console();
    let log = s.log("storm");
    let started: Vec<String> = console
        .lines()
        .filter(|l| l.contains(" Started at "))
        .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
        .collect();
    assert!(started.len() >= 40, "{} processes", started.len());
    for tag in &started {
        let on = |text: &str, what: &str| {
            text.lines().filter(|l| l.contains(&format!(" {tag} ")) && l.contains(what)).count()
        };
        assert_eq!(on(&console, " Started at "), 1, "{tag} on the console:\n{console}");
        assert_eq!(on(&console, " Exited at "), 1, "{tag} on the console:\n{console}");
        assert_eq!(on(&log, "[sentry] Started at "), 1, "{tag} in the log:\n{log}");
        assert_eq!(on(&log, "[sentry] Exited at "), 1, "{tag} in the log:\n{log}");
    }
}

/// What is said of a leader's leftovers comes after its exit, on the
/// console and in its log: its output, `Exited`, then the leftover line.
#[test]
fn a_leftover_is_said_after_the_exit_that_left_it() {
    let s = Sentry::start(TCONF, "lingerer", &[]);
    let said = |what: &str| s.console().lines().filter(|l| l.contains(what)).map(str::to_string).collect::<Vec<_>>();
    let first = wait_for("the leftover said", || said(" left in its ").first().cloned());
    let tag = format!("{} ", first.split(' ').nth(1).unwrap());
    wait_for("the log's leftover line", || {
        s.log("lingerer").lines().any(|l| l.contains(&tag) && l.contains(" left in its ")).then_some(())
    });
    for (text, hi, exited) in [(s.console(), " hi", " Exited at "), (s.log("lingerer"), " hi", "[sentry] Exited at ")] {
        let mine: Vec<&str> = text.lines().filter(|l| l.contains(&tag)).collect();
        let at = |what: &str| mine.iter().position(|l| l.contains(what)).unwrap_or_else(|| panic!("{what}: {mine:?}"));
        assert!(at(hi) < at(exited) && at(exited) < at(" left in its "), "{mine:?}");
    }
}

/// Found by a hostile test: at a pids limit no thread could be made for a
/// connection, and the client saw it closed without an answer. It gets a
/// 503 that says why, and the next request, once a thread can start again,
/// is served. Needs the cgroup v1 `pids` controller (skipped elsewhere).
#[test]
fn a_connection_no_thread_can_be_made_for_is_answered_503() {
    let pids = std::path::Path::new("/sys/fs/cgroup/pids");
    let group = pids.join(format!("sentry-test-threads-{}", std::process::id()));
    if !pids.join("cgroup.procs").exists() || std::fs::create_dir(&group).is_err() {
        eprintln!("skipped: no cgroup v1 pids controller to limit threads with");
        return;
    }
    /// Lifts the limit and removes the group, even when the test fails
    /// (dropped after the instance, whose session is killed first).
    struct Group(std::path::PathBuf);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("pids.max"), "max");
            let by = Instant::now() + Duration::from_secs(10);
            while std::fs::remove_dir(&self.0).is_err() && Instant::now() < by {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let group = Group(group);
    let s = Sentry::start(TCONF, "basic", &[]);
    s.wait_pids("idle", 2);
    let addr = addr(&s);
    let group = &group.0;
    std::fs::write(group.join("cgroup.procs"), s.pid().to_string()).unwrap();
    // No new thread from now on: the limit is what the group holds.
    let current = std::fs::read_to_string(group.join("pids.current")).unwrap();
    std::fs::write(group.join("pids.max"), current.trim()).unwrap();
    let (code, head, body) = get(&addr, "/status", "");
    let cli = s.cli(&["status"]);
    std::fs::write(group.join("pids.max"), "max").unwrap();
    assert_eq!(code, 503, "{head}\n{body}");
    // Exit status 1, not 2 ("not running"): the instance runs.
    assert_eq!(cli.status.code(), Some(1), "{}", text(&cli.stderr));
    assert!(text(&cli.stderr).contains("no thread can be started"), "{}", text(&cli.stderr));
    assert!(body.contains("no thread can be started"), "{body}");
    let (code, _, body) = get(&addr, "/status", "");
    assert_eq!(code, 200, "served again once threads can start: {body}");
}
