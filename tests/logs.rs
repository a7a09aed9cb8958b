//! Running it for real on a server, end to end: log rotation under a fast
//! writer across a reload (every line exactly once, whole), `logs` with
//! `-n`, `--since` and `-f` across rotations, `logs --reopen` (logrotate),
//! events as RFC 5424 datagrams on a syslog socket and as native journal
//! records, systemd's readiness protocol, and the printed unit.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// `writer.log.K` … `writer.log.1`, `writer.log`: oldest first.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let log = dir.join("log");
    let mut rotated: Vec<(usize, PathBuf)> = fs::read_dir(&log)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.strip_prefix("writer.log.")?.parse().ok()?, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    rotated.into_iter().map(|(_, p)| p).chain([log.join("writer.log")]).collect()
}

/// One log line, checked for its shape: `DATE TIME.mmm±HH:MM writer.PID TEXT`.
fn parse_line(line: &str) -> (i32, &str) {
    let (date, rest) = line.split_once(' ').unwrap_or_else(|| panic!("no date: {line:?}"));
    let (time, rest) = rest.split_once(' ').unwrap_or_else(|| panic!("no time: {line:?}"));
    assert!(date.len() == 10 && date.as_bytes()[4] == b'-', "date: {line:?}");
    let b = time.as_bytes();
    assert!(b.len() == 18 && b[8] == b'.' && matches!(b[12], b'+' | b'-') && b[15] == b':', "time: {line:?}");
    let (tag, text) = rest.split_once(' ').unwrap_or_else(|| panic!("no tag: {line:?}"));
    let pid = tag.strip_prefix("writer.").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("tag: {line:?}"));
    (pid, text)
}

/// Every `seq=N` of the text, in order.
fn seqs(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.rsplit_once(" seq=").and_then(|(_, n)| n.parse().ok())).collect()
}

#[test]
fn rotation_under_a_fast_writer_keeps_every_line_once_across_a_reload_and_logs_follows_it() {
    const LINES: u64 = 30_000;
    let s = Sentry::spawn_with(TempDir::new("rotate"), TCONF, "rotate", &[], &[("TLINES", "30000"), ("TRATE", "6000")])
        .waiting();
    let pid = s.wait_pids("writer", 1)[0];
    wait_for("5 000 lines written", || {
        let all: String = log_files(s.dir.path()).iter().map(|p| fs::read_to_string(p).unwrap_or_default()).collect();
        (seqs(&all).len() > 5_000).then_some(())
    });
    // `logs -f` of everything so far, then on through every rotation and the reload.
    let mut follow = Command::new(TCONF);
    follow.args(["logs", "-f", "-n", "100000000", "writer", "--dir"]).arg(s.dir.path()).env("TCONF", "rotate");
    follow.stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null());
    let mut follower = in_own_session(&mut follow).spawn().unwrap();
    let _guard = SessionGuard(follower.id() as i32);
    let mut follower_out = follower.stdout.take().unwrap();
    let followed = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 65536];
        // Until `done` has come, or the follower is killed.
        while let Ok(n @ 1..) = follower_out.read(&mut buf) {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains(" done\n") {
                break;
            }
        }
        text
    });
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "reload: {}{}", text(&out.stdout), text(&out.stderr));
    let log = s.dir.path().join("log/writer.log");
    wait_for_within("the writer to finish", Duration::from_secs(60), || {
        fs::read_to_string(&log).unwrap_or_default().contains(" done\n").then_some(())
    });
    assert_eq!(s.pids("writer"), vec![pid], "the writer kept running across the reload");
    // Every file: whole lines of the expected shape, none past its size by more than a batch.
    let files = log_files(s.dir.path());
    assert!(files.len() > 10, "the log rotated: {} files", files.len());
    let mut numbers = Vec::new();
    for (k, path) in files.iter().enumerate() {
        let text = fs::read_to_string(path).unwrap();
        assert!(text.ends_with('\n'), "{} ends inside a line", path.display());
        if k + 1 < files.len() {
            assert!(text.len() <= 64 * 1024, "{} is {} bytes", path.display(), text.len());
        }
        for line in text.lines() {
            let (p, body) = parse_line(line);
            assert_eq!(p, pid, "{line:?}");
            assert!(
                body == "done" || body.starts_with("[sentry] ") || body.starts_with("seq="),
                "glued or cut: {line:?}"
            );
            if let Some(n) = body.strip_prefix("seq=") {
                numbers.push(n.parse::<u64>().unwrap_or_else(|_| panic!("glued: {line:?}")));
            }
        }
    }
    assert_eq!(numbers, (0..LINES).collect::<Vec<_>>(), "every line once, in order");
    let first = fs::read_to_string(&files[0]).unwrap();
    assert!(first.contains(&format!("writer.{pid} [sentry] Started at ")), "the start is marked in the log");
    // What `logs -f` showed: every line once, in order, up to done.
    wait_for_within("the follower to see done", Duration::from_secs(30), || followed.is_finished().then_some(()));
    let shown = followed.join().unwrap();
    let got = seqs(&shown);
    assert_eq!(got, (0..LINES).collect::<Vec<_>>(), "logs -f lost or doubled a line, at its start or across rotations");
    let _ = follower.kill();
    let _ = follower.wait();
    // `logs -n 3`: the last three lines; `--since` in the future: nothing.
    let out = s.cli(&["logs", "-n", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last: Vec<String> = text(&out.stdout).lines().map(|l| parse_line(l).1.to_string()).collect();
    assert_eq!(last, [format!("seq={}", LINES - 2), format!("seq={}", LINES - 1), "done".to_string()]);
    let out = s.cli(&["logs", "writer", "--since", "2999-01-01T00:00:00Z"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", text(&out.stdout));
    let out = s.cli(&["logs", "writer", "--since", "1h"]);
    assert_eq!(seqs(&text(&out.stdout)).len() as u64, LINES, "--since 1h shows every kept line");
    for bad in [
        &["logs", "nosuch"][..],
        &["logs", "--since", "yesterday"],
        &["logs", "-n", "x"],
        &["logs", "../../../var/log/dpkg"],
    ] {
        let out = s.cli(bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(!text(&out.stderr).is_empty(), "{bad:?} said nothing");
    }
}

#[test]
fn logs_reopen_follows_a_file_logrotate_moved() {
    let s = Sentry::spawn_with(TempDir::new("reopen"), TCONF, "rotate", &[], &[("TLINES", "3")]).waiting();
    let log = s.dir.path().join("log/writer.log");
    wait_for("the first run's lines", || {
        fs::read_to_string(&log).unwrap_or_default().contains(" done\n").then_some(())
    });
    let moved = s.dir.path().join("log/writer.log-20261207");
    fs::rename(&log, &moved).unwrap();
    let out = s.cli(&["logs", "--reopen"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = fs::read_to_string(&moved).unwrap();
    let out = s.cli(&["restart", "writer"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let new = wait_for("the new process's lines in a new writer.log", || {
        let t = fs::read_to_string(&log).ok()?;
        t.contains(" done\n").then_some(t)
    });
    assert!(new.contains("[sentry] Started at"), "{new}");
    // The old process's exit went where its file was open at the time, or
    // to the new file: never lost, never in both.
    let moved_now = fs::read_to_string(&moved).unwrap();
    let exits = |t: &str| t.lines().filter(|l| l.contains("[sentry] Exited at")).count();
    assert_eq!(exits(&moved_now) + exits(&new), 1, "one exit line: {moved_now}\n---\n{new}");
    assert!(moved_now.starts_with(&before));
    assert_eq!(seqs(&moved_now), [0, 1, 2]);
    // Not running: exit 2.
    let stopped = s.cli(&["stop"]);
    assert!(stopped.status.success());
    assert_eq!(s.cli(&["logs", "--reopen"]).status.code(), Some(2));
}

/// A datagram socket bound at `path`, reading with a timeout.
fn bind(path: &Path) -> UnixDatagram {
    let _ = fs::remove_file(path);
    let socket = UnixDatagram::bind(path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    socket
}

/// Datagrams received on `socket` until `done` holds of them (or a minute passes).
fn receive_until(socket: &UnixDatagram, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !done(&got) {
        assert!(Instant::now() < deadline, "{what}: got {got:#?}");
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn events_go_to_syslog_as_rfc5424_and_a_missing_or_stuck_syslog_changes_nothing() {
    let dir = TempDir::new("syslog");
    let sock = dir.path().join("syslog.sock");
    let socket = bind(&sock);
    let s = Sentry::spawn_with(
        dir,
        TCONF,
        "rotate",
        &["--syslog"],
        &[("TLINES", "1"), ("SENTRY_SYSLOG", sock.to_str().unwrap())],
    )
    .waiting();
    let pid = s.wait_pids("writer", 1)[0];
    let started = receive_until(&socket, "the start", |g| g.iter().any(|d| d.contains("Started at")));
    let d = started.iter().find(|d| d.contains("Started at")).unwrap();
    // <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG (RFC 5424 §6), facility daemon (3), notice (5).
    let fields: Vec<&str> = d.splitn(7, ' ').collect();
    assert_eq!(fields[0], "<29>1", "{d}");
    assert!(fields[1].contains('T') && fields[1].len() >= 20, "timestamp: {d}");
    assert_eq!(fields[3], "tconf", "{d}");
    assert_eq!(fields[4], s.pid().to_string(), "{d}");
    assert!(fields[6].starts_with(&format!("[sentry@32473 entry=\"writer\" pid=\"{pid}\"] Started at ")), "{d}");
    assert!(s.cli(&["restart", "writer"]).status.success());
    let got = receive_until(&socket, "the exit", |g| g.iter().any(|d| d.contains("killed by SIGTERM")));
    let exit = got.iter().find(|d| d.contains("killed by SIGTERM")).unwrap();
    assert!(exit.starts_with("<28>1 ") && exit.contains("exit_signal=\"SIGTERM\""), "warning, with the signal: {exit}");
    assert!(s.cli(&["scale", "writer", "2"]).status.success());
    let more = receive_until(&socket, "the scale", |g| g.iter().any(|d| d.contains("Scaled from 1 to 2.")));
    // Events only: the children's own lines (`done`) are not syslogged.
    let all: Vec<&String> = started.iter().chain(&got).chain(&more).collect();
    assert!(all.iter().all(|d| !d.ends_with(" done")), "a child's line went to syslog: {all:#?}");
    drop(s);

    // Nobody reads the socket (its queue fills) or there is none: supervision goes on.
    let dir = TempDir::new("syslog-stuck");
    let stuck = dir.path().join("stuck.sock");
    let _never_read = bind(&stuck);
    let s = Sentry::spawn_with(
        dir,
        TCONF,
        "rotate",
        &["--syslog"],
        &[("TLINES", "1"), ("SENTRY_SYSLOG", stuck.to_str().unwrap())],
    )
    .waiting();
    for n in [60, 0, 60, 1] {
        let out = s.cli(&["scale", "writer", &n.to_string()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        s.wait_pids("writer", n);
    }
    drop(s);
    let dir = TempDir::new("syslog-missing");
    let missing = dir.path().join("nothing-here.sock");
    let s = Sentry::spawn_with(
        dir,
        TCONF,
        "rotate",
        &["--syslog"],
        &[("TLINES", "1"), ("SENTRY_SYSLOG", missing.to_str().unwrap())],
    )
    .waiting();
    s.wait_pids("writer", 1);
    assert!(s.console().contains("cannot send events"), "said once: {}", s.console());
}

#[test]
fn under_systemd_events_go_to_the_journal_with_their_fields() {
    let path = Path::new("/run/systemd/journal/socket");
    if path.exists() {
        eprintln!("skipped: {} exists (a journald may listen there)", path.display());
        return;
    }
    if fs::create_dir_all(path.parent().unwrap()).is_err() {
        eprintln!("skipped: cannot create {} (not root?)", path.parent().unwrap().display());
        return;
    }
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    let socket = bind(path);
    let _remove = Remove(path);
    // systemd's JOURNAL_STREAM: the device and inode of the service's stderr.
    let dir = TempDir::new("journal");
    let stderr_path = dir.path().join("stderr.txt");
    let stderr = fs::File::create(&stderr_path).unwrap();
    let m = stderr.metadata().unwrap();
    let stream = format!("{}:{}", m.dev(), m.ino());
    let mut cmd = Command::new(TCONF);
    cmd.args(["start", "--dir"]).arg(dir.path()).env("TCONF", "rotate").env("TLINES", "1");
    cmd.env("JOURNAL_STREAM", &stream).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
    // Dropped last: the session is gone by then, and the instance's cgroups are removed.
    let _cgroups = CgroupGuard::for_dir(dir.path());
    let mut child = in_own_session(&mut cmd).spawn().unwrap();
    let _guard = SessionGuard(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = vec![0u8; 65536];
    let fields = loop {
        assert!(Instant::now() < deadline, "no journal record of the start");
        let Ok(n) = socket.recv(&mut buf) else { continue };
        let fields = journal_fields(&buf[..n]);
        if fields.get("MESSAGE").is_some_and(|m| m.contains("Started at")) {
            break fields;
        }
    };
    assert_eq!(fields.get("SENTRY_ENTRY").map(String::as_str), Some("writer"), "{fields:?}");
    assert!(fields.get("SENTRY_PID").is_some_and(|p| p.parse::<i32>().is_ok()), "{fields:?}");
    assert_eq!(fields.get("PRIORITY").map(String::as_str), Some("5"), "{fields:?}");
    // SAFETY: SIGTERM to the instance this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// The fields of a journal datagram (the native protocol: `KEY=value\n`, or
/// `KEY\n`, a 64-bit little-endian length, the value and `\n`).
fn journal_fields(mut bytes: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !bytes.is_empty() {
        let end = bytes.iter().position(|&b| b == b'\n' || b == b'=').expect("a key");
        let key = String::from_utf8_lossy(&bytes[..end]).into_owned();
        if bytes[end] == b'=' {
            let rest = &bytes[end + 1..];
            let nl = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            fields.insert(key, String::from_utf8_lossy(&rest[..nl]).into_owned());
            bytes = &rest[(nl + 1).min(rest.len())..];
        } else {
            let rest = &bytes[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            bytes = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    fields
}

#[test]
fn readiness_reload_and_stop_are_notified_and_children_do_not_inherit_the_socket() {
    let dir = TempDir::new("notify");
    let sock = dir.path().join("notify.sock");
    let socket = bind(&sock);
    let s =
        Sentry::spawn_with(dir, TCONF, "rotate", &[], &[("TLINES", "1"), ("NOTIFY_SOCKET", sock.to_str().unwrap())])
            .waiting();
    let ready = receive_until(&socket, "READY=1", |g| g.iter().any(|d| d.lines().any(|l| l == "READY=1")));
    assert_eq!(ready.iter().filter(|d| d.lines().any(|l| l == "READY=1")).count(), 1, "{ready:?}");
    let pid = s.wait_pids("writer", 1)[0];
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(!environ.split(|&b| b == 0).any(|v| v.starts_with(b"NOTIFY_SOCKET=")), "the child got NOTIFY_SOCKET");
    assert!(s.cli(&["reload", "--exec", TCONF]).status.success());
    let got = receive_until(&socket, "RELOADING=1 then READY=1", |g| {
        let r = g.iter().position(|d| d.lines().any(|l| l == "RELOADING=1"));
        r.is_some_and(|r| g[r + 1..].iter().any(|d| d.lines().any(|l| l == "READY=1")))
    });
    let reloading = got.iter().find(|d| d.contains("RELOADING=1")).unwrap();
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading}");
    assert!(s.cli(&["stop"]).status.success());
    receive_until(&socket, "STOPPING=1", |g| g.iter().any(|d| d.lines().any(|l| l == "STOPPING=1")));
}

#[test]
fn the_printed_unit_runs_this_binary_in_this_dir_and_verifies() {
    let dir = TempDir::new("unit");
    let out = run(Command::new(TCONF).args(["systemd-unit", "--dir"]).arg(dir.path()).env("TCONF", "rotate"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit = text(&out.stdout);
    let dir_abs = fs::canonicalize(dir.path()).unwrap();
    for want in [
        "Type=notify".to_string(),
        format!("ExecStart={TCONF} start --dir {}", dir_abs.display()),
        format!("ExecReload={TCONF} reload --dir {}", dir_abs.display()),
        "Delegate=yes".to_string(),
        "KillMode=mixed".to_string(),
    ] {
        assert!(unit.contains(&want), "{want:?} missing:\n{unit}");
    }
    let path = dir.path().join("tconf-test.service");
    fs::write(&path, &unit).unwrap();
    match Command::new("systemd-analyze").arg("verify").arg(&path).output() {
        Ok(out) => assert!(out.status.success(), "systemd-analyze verify: {}{}", text(&out.stdout), text(&out.stderr)),
        Err(e) => eprintln!("systemd-analyze not run ({e}): only the unit's lines were checked"),
    }
}

#[test]
fn a_daemon_rotates_its_output_file_and_reopens_it_on_request() {
    let dir = TempDir::new("daemon");
    // Dropped last: the session is gone by then, and the instance's cgroups are removed.
    let _cgroups = CgroupGuard::for_dir(dir.path());
    let sock = dir.path().join("syslog.sock");
    let socket = bind(&sock);
    let out = run(Command::new(TCONF)
        .args(["start", "--daemon", "--dir"])
        .arg(dir.path())
        .env("TCONF", "rotate")
        .env("TLINES", "1")
        .env("SENTRY_SYSLOG", &sock));
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let pid: i32 = fs::read_to_string(dir.path().join("tconf.pid")).unwrap().trim().parse().unwrap();
    let _guard = SessionGuard(pid);
    receive_until(&socket, "a daemon's events in syslog", |g| g.iter().any(|d| d.contains("Started at")));
    let out_file = dir.path().join("tconf.out");
    wait_for("the daemon's output", || fs::read_to_string(&out_file).ok()?.contains("Started at").then_some(()));
    let moved = dir.path().join("tconf.out.old");
    fs::rename(&out_file, &moved).unwrap();
    let cli = |args: &[&str]| run(Command::new(TCONF).args(args).arg("--dir").arg(dir.path()).env("TCONF", "rotate"));
    assert!(cli(&["logs", "--reopen"]).status.success());
    assert!(cli(&["restart", "writer"]).status.success());
    wait_for("the restart in a new tconf.out", || {
        fs::read_to_string(&out_file).ok()?.contains("Started at").then_some(())
    });
    assert!(cli(&["reload", "--exec", TCONF]).status.success(), "reload in daemon mode");
    wait_for("the reload in tconf.out", || fs::read_to_string(&out_file).ok()?.contains("reexec'd").then_some(()));
    // logrotate moves the file, a reload comes before its postrotate's
    // reopen: the new image still reopens, though its output is no longer
    // at the path.
    fs::rename(&out_file, dir.path().join("tconf.out.older")).unwrap();
    assert!(cli(&["reload", "--exec", TCONF]).status.success(), "reload after the move");
    assert!(cli(&["logs", "--reopen"]).status.success());
    assert!(cli(&["restart", "writer"]).status.success());
    wait_for("a new tconf.out after a reload and a reopen", || {
        fs::read_to_string(&out_file).ok()?.contains("Started at").then_some(())
    });
    assert!(cli(&["stop"]).status.success());
}

#[test]
fn a_quiet_process_gets_its_started_line_with_its_start_time_even_across_a_reload() {
    let mut s = Sentry::start(TCONF, "basic", &[]);
    let pids = s.wait_pids("idle", 2);
    std::thread::sleep(Duration::from_millis(1100));
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.cli(&["stop"]).status.success());
    assert_eq!(s.wait_exit(), Some(0));
    let log = s.log("idle");
    for pid in pids {
        let mine: Vec<&str> = log.lines().filter(|l| l.contains(&format!(" idle.{pid} "))).collect();
        assert_eq!(mine.len(), 2, "a Started and an Exited line for {pid}: {log}");
        assert!(mine[0].contains("[sentry] Started at") && mine[1].contains("[sentry] Exited at"), "{mine:?}");
        // Written together at the end, but the first carries the start's time.
        let time = |l: &str| l.split(' ').take(2).collect::<Vec<_>>().join(" ");
        assert!(time(mine[0]) < time(mine[1]), "{mine:?}");
    }
}

/// On the console, each process's lines come in the order they happened:
/// its `Started` line, then what it printed, then its `Exited` line — for
/// a process that prints at once and exits at once (in a crash loop of 20
/// slots), for runs restarted at once, and for a process that answers the
/// stop signal of a restart.
#[test]
fn the_console_shows_each_process_from_its_start_through_its_output_to_its_exit() {
    let s = Sentry::start(TCONF, "ordered", &[]);
    let count = |c: &str, what: &str| c.lines().filter(|l| l.contains(what)).count();
    wait_for("many short runs", || (count(&s.console(), " hello ") >= 120).then_some(()));
    // Runs of over a second are restarted at once (no back-off).
    wait_for("two rounds of longer runs", || (count(&s.console(), " bye ") >= 40).then_some(()));
    for _ in 0..3 {
        let before = s.wait_pids("polite", 4);
        let out = s.cli(&["restart", "polite"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        wait_for("new processes", || (s.pids("polite").iter().all(|p| !before.contains(p))).then_some(()));
    }
    assert!(s.cli(&["stop"]).status.success());
    let console = s.console();
    // `HH:MM:SS name.PID text`: each process's lines in console order.
    let mut of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in console.lines() {
        let mut words = line.splitn(3, ' ');
        let (_, Some(tag), Some(rest)) = (words.next(), words.next(), words.next()) else { continue };
        if tag.starts_with("hello.") || tag.starts_with("polite.") || tag.starts_with("steady.") {
            of.entry(tag).or_default().push(rest.trim_start());
        }
    }
    let (mut short, mut answered) = (0, 0);
    for (tag, lines) in &of {
        let pid = tag.split('.').nth(1).unwrap();
        let at = |what: &str| lines.iter().position(|l| l.starts_with(what));
        let said = if tag.starts_with("hello.") { format!("hello {pid}") } else { format!("bye {pid}") };
        if tag.starts_with("steady.") && !lines.iter().any(|l| l.starts_with(&said)) {
            continue; // stopped at the end before it could say it
        }
        let (Some(started), Some(exited)) = (at("Started at "), at("Exited at ")) else {
            panic!("{tag}: no Started or no Exited line: {lines:?}\n{console}");
        };
        if tag.starts_with("polite.") {
            let up = at(&format!("up {pid}")).unwrap_or_else(|| panic!("{tag}: {lines:?}"));
            assert!(started < up, "{tag}: {lines:?}");
        }
        let Some(output) = at(&said) else {
            // Only a process stopped before it could print may lack it.
            assert!(tag.starts_with("polite."), "{tag} never said {said:?}: {lines:?}");
            continue;
        };
        assert!(started < output && output < exited, "{tag}: {lines:?}");
        if tag.starts_with("hello.") {
            short += 1
        } else if tag.starts_with("polite.") {
            answered += 1
        }
    }
    assert!(short >= 80 && answered >= 12, "{short} short runs and {answered} answered stops checked");
}

/// A console that falls behind drops lines (it is best effort; the logs
/// have them all) and says how many once it has caught up: every line is
/// either shown or counted.
#[test]
fn a_console_that_falls_behind_says_how_many_lines_it_dropped() {
    let s = Sentry::start(TCONF, "flood", &[]);
    let pids = s.wait_pids("flood", 3);
    for pid in &pids {
        wait_for("a whole flood logged", || s.log("flood").contains(&format!("flood.{pid} line19999\n")).then_some(()));
    }
    let expected = 3 * (20000 + 1); // each process's lines and its Started line
    let (shown, dropped) = wait_for("every line shown or counted", || {
        let console = s.console();
        let shown = console.lines().filter(|l| l.split(' ').nth(1).is_some_and(|t| t.starts_with("flood."))).count();
        let dropped: usize =
            console.lines().filter_map(|l| l.strip_prefix("Sentry: ")?.split(' ').next()?.parse::<usize>().ok()).sum();
        (shown + dropped == expected).then_some((shown, dropped))
    });
    eprintln!("{shown} shown, {dropped} dropped");
}
