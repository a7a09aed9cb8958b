//! Children's output in the log, end to end: a full disk loses nothing and
//! makes the child wait, a long line comes out in marked, contiguous pieces,
//! and log files are private and never reached through a symbolic link.

#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// A small tmpfs mounted by the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `size` on `dir`, or says why not.
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out =
            run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"]).arg(dir));
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", text(&out.stderr).trim()));
        }
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.0));
    }
}

/// Whether util-linux's `prlimit` is there to start Sentry under a limit
/// (said when not: the test is skipped).
fn has_prlimit() -> bool {
    let there = Command::new("prlimit").arg("--version").output().is_ok_and(|o| o.status.success());
    if !there {
        eprintln!("skipped: no prlimit");
    }
    there
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The child's lines back from `log`: `+` pieces joined with what follows;
/// Sentry's own lines (`[sentry] Started …`) left out.
fn reassemble(log: &str, tag: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in log.lines().filter(|l| !l.contains(&format!(" {tag} [sentry] "))) {
        let (_, rest) =
            line.split_once(&format!(" {tag}")).unwrap_or_else(|| panic!("not a line of {tag}: {line:.200}"));
        if let Some(piece) = rest.strip_prefix("+ ") {
            current.push_str(piece);
        } else {
            current.push_str(rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space after {tag}: {line:.200}")));
            lines.push(std::mem::take(&mut current));
        }
    }
    lines
}

/// The counter's lines in `log`: each whole, numbered from 0 without a gap
/// or a double, and well past where it stalled.
fn assert_counted(log: &str, tag: &str, stalled: u64) {
    let pad = "0".repeat(150);
    let mut expected = 0u64;
    for line in reassemble(log, tag) {
        let Some(rest) = line.strip_prefix("n ") else { continue };
        let (n, p) = rest.split_once(' ').unwrap_or_else(|| panic!("cut line {line:?}"));
        assert_eq!(p, pad, "line {n} is not whole");
        assert_eq!(n.parse::<u64>().unwrap(), expected, "a line lost, doubled or out of order");
        expected += 1;
    }
    assert!(expected > stalled + 1000, "{expected} lines");
}

/// The `counter` scenario with its log directory on a small tmpfs, running
/// until its log has some lines; then the tmpfs is filled up and the child
/// waits until it blocks. Returns the mount, the instance, the child's PID,
/// the filler file, the side file (the last number the child wrote) and
/// that number. `None` (said why) where a tmpfs cannot be mounted.
struct FullDisk {
    mount: Mount,
    s: Sentry,
    pid: i32,
    filler: PathBuf,
    side: PathBuf,
    stalled: u64,
}

fn counter_on_a_full_disk(tag: &str, envs: &[(&str, &str)]) -> Option<FullDisk> {
    let dir = TempDir::new(tag);
    // The logs (only: the console file stays readable) go to a small tmpfs.
    let mount = match Mount::tmpfs(&dir.path().join("log"), "2m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return None;
        }
    };
    let side = dir.path().join("counter.txt");
    let mut all = vec![("TSIDE", side.to_str().unwrap())];
    all.extend_from_slice(envs);
    let s = Sentry::spawn_with(dir, TCONF, "counter", &[], &all).waiting();
    let pid = s.wait_pids("counter", 1)[0];
    wait_for("some lines in the log", || (s.log("counter").lines().count() > 200).then_some(()));
    let filler = mount.0.join("filler");
    let _ = run(Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", filler.display())));
    // The child blocks on its full pipe, its lines held in Sentry.
    let stalled = wait_for("the child to block on its pipe", || {
        let before = read_number(&side)?;
        std::thread::sleep(Duration::from_millis(700));
        (read_number(&side)? == before).then_some(before)
    });
    Some(FullDisk { mount, s, pid, filler, side, stalled })
}

#[test]
fn a_full_disk_makes_the_child_wait_and_loses_no_line() {
    let Some(FullDisk { mount, s, pid, filler, side, stalled }) = counter_on_a_full_disk("fulldisk", &[]) else {
        return;
    };
    let tag = format!("counter.{pid}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read_number(&side), Some(stalled), "the child kept writing into a full disk");
    assert!(s.console().matches("cannot write the log of counter").count() == 1, "{}", s.console());

    // Free the space: everything held comes out, and the child goes on.
    fs::remove_file(&filler).unwrap();
    wait_for("the child to go on", || (read_number(&side)? > stalled + 2000).then_some(()));
    let console = s.console();
    assert_counted(&s.log("counter"), &tag, stalled);
    assert_eq!(console.matches("cannot write the log of counter").count(), 1, "{console}");
    assert_eq!(console.matches("the log of counter is written again").count(), 1, "{console}");
    drop(s);
    drop(mount);
}

#[test]
fn a_full_disk_across_rotations_loses_no_line() {
    let Some(FullDisk { mount, s, pid, filler, side, stalled }) =
        counter_on_a_full_disk("fulldisk-rotate", &[("TLOGSIZE", "65536")])
    else {
        return;
    };
    let tag = format!("counter.{pid}");
    fs::remove_file(&filler).unwrap();
    wait_for("the child to go on", || (read_number(&side)? > stalled + 3000).then_some(()));
    // The files oldest first: counter.log.K … counter.log.1, counter.log.
    let mut rotated: Vec<(usize, PathBuf)> = fs::read_dir(&mount.0)
        .unwrap()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.strip_prefix("counter.log.")?.parse().ok()?, e.path())))
        .collect();
    assert!(rotated.len() >= 10, "the log rotated on the small disk: {} files", rotated.len());
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let log: String = rotated
        .iter()
        .map(|(_, p)| p.clone())
        .chain([mount.0.join("counter.log")])
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert_counted(&log, &tag, stalled);
    drop(s);
    drop(mount);
}

#[test]
fn a_long_line_comes_out_in_marked_contiguous_pieces() {
    let s = Sentry::start(TCONF, "long", &[]);
    let pid = s.wait_pids("long", 1)[0];
    let tag = format!("long.{pid}");
    let log = wait_for("the long lines", || {
        let log = s.log("long");
        log.contains(&format!("{tag} done\n")).then_some(log)
    });
    let big: String = (0..200 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let lines = reassemble(&log, &tag);
    for k in 0..3 {
        let want = format!("BIG{k}:{big}");
        assert_eq!(lines.iter().filter(|l| **l == want).count(), 1, "long line {k} not whole");
    }
    let errs: Vec<&String> = lines.iter().filter(|l| l.starts_with("err ")).collect();
    assert!(errs.len() > 10, "stderr was not busy: {} lines", errs.len());
    for (i, e) in errs.iter().enumerate() {
        assert_eq!(**e, format!("err {i}"), "a short line was glued or cut");
    }
    assert_eq!(lines.len(), 3 + errs.len() + 1);
    // Each piece is at most the limit (64 KiB), and pieces are marked.
    assert!(log.lines().filter(|l| l.contains(&format!(" {tag}+ "))).count() >= 9);
    assert!(log.lines().all(|l| l.len() < 64 * 1024 + 100));
}

#[test]
fn logs_are_private_and_a_planted_symlink_is_not_followed() {
    let dir = TempDir::new("logs");
    fs::create_dir_all(dir.path().join("log")).unwrap();
    let target = dir.path().join("precious.txt");
    fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("log/linked.log")).unwrap();
    let s = Sentry::spawn_in(dir, TCONF, "logs", &[]).waiting();
    s.wait_pids("linked", 1);
    s.wait_pids("plain", 1);
    wait_for("plain's line", || s.log("plain").contains("hello from plain").then_some(()));
    let console = wait_for("linked's line on the console", || {
        let c = s.console();
        c.contains("hello from linked").then_some(c)
    });
    assert!(console.contains("symbolic link"), "{console}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert!(fs::symlink_metadata(s.file("log/linked.log")).unwrap().file_type().is_symlink());
    let mode = fs::metadata(s.file("log/plain.log")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn a_restart_while_the_disk_is_full_loses_none_of_the_old_processs_lines() {
    let Some(FullDisk { mount, s, pid: old, filler, side: _, stalled }) = counter_on_a_full_disk("fullrestart", &[])
    else {
        return;
    };
    // Restart it while the disk is still full: what it wrote must survive.
    let out = s.cli(&["restart", "counter"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let new = wait_for("a new process", || s.pids("counter").first().copied().filter(|p| *p != old));
    std::thread::sleep(Duration::from_secs(1));
    fs::remove_file(&filler).unwrap();
    let tag = format!("counter.{old}");
    let numbers = wait_for("every line of the old process", || {
        let log = s.log("counter");
        let mine: String = log
            .lines()
            .filter(|l| l.contains(&format!(" {tag} ")) || l.contains(&format!(" {tag}+ ")))
            .map(|l| format!("{l}\n"))
            .collect();
        let numbers: Vec<u64> = reassemble(&mine, &tag)
            .iter()
            .filter_map(|l| l.strip_prefix("n ")?.split(' ').next()?.parse().ok())
            .collect();
        (numbers.last() == Some(&stalled)).then_some(numbers)
    });
    assert_eq!(numbers, (0..=stalled).collect::<Vec<u64>>(), "lines of {old} lost or doubled");
    assert!(s.log("counter").contains(&format!("counter.{new} n 0 ")), "the new process's lines follow");
    drop(s);
    drop(mount);
}

/// Found by a hostile test: the image after a reload rewrote the address
/// file, and a full disk ended the instance and every child with it.
#[test]
fn a_reload_with_the_instances_directory_on_a_full_disk_keeps_every_child() {
    let dir = TempDir::new("fullreload");
    let mount = match Mount::tmpfs(dir.path(), "4m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let s = Sentry::spawn_in(dir, TCONF, "basic", &[]).waiting();
    let before = s.wait_pids("idle", 2);
    let _ =
        run(Command::new("dd").args(["if=/dev/zero", "bs=4k"]).arg(format!("of={}", mount.0.join("filler").display())));
    let out = s.cli(&["reload", "--exec", TCONF]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(s.pids("idle"), before, "the same children, still running");
    let status = s.cli(&["status", "--json"]);
    assert!(status.status.success(), "the instance answers after the reload: {}", text(&status.stderr));
    assert!(!mount.0.join("tconf.tmp").exists(), "no half-written file left");
    drop(s);
    drop(mount);
}

/// Found by a hostile test: under a file-size limit (`RLIMIT_FSIZE`, a
/// unit's `LimitFSIZE=`) below the rotation size, the log's next append
/// raised SIGXFSZ, which killed Sentry and every child, its last line cut.
/// The log is rotated instead, every line whole and in order, and the
/// child runs on.
#[test]
fn a_file_size_limit_rotates_the_log_instead_of_ending_sentry() {
    const LIMIT: u64 = 100 * 1024;
    if !has_prlimit() {
        return;
    }
    let dir = TempDir::new("fsize");
    let side = dir.path().join("counter.txt");
    let log_dir = dir.path().join("log");
    let limit = format!("--fsize={LIMIT}");
    // Rotated at 10 MiB, every rotated file kept: only the limit rotates it here.
    let envs = [("TSIDE", side.to_str().unwrap()), ("TLOGSIZE", "10485760")];
    let mut s = Sentry::spawn_wrapped(dir, TCONF, "counter", &["prlimit", &limit], &[], &envs, None).waiting();
    let pid = s.wait_pids("counter", 1)[0];
    wait_for("the log to be rotated three times", || log_dir.join("counter.log.3").exists().then_some(()));
    let written = wait_for("the child to go on", || read_number(&side).filter(|&n| n > 2000));
    assert!(!s.has_exited(), "Sentry lives");
    assert_eq!(s.pids("counter"), vec![pid], "and its child");
    let mut files: Vec<(usize, PathBuf)> = fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.strip_prefix("counter.log.")?.parse().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut log = String::new();
    for path in files.into_iter().map(|(_, p)| p).chain([log_dir.join("counter.log")]) {
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 <= LIMIT, "{} is over the limit", path.display());
        assert!(text.is_empty() || text.ends_with('\n'), "{} ends in a cut line", path.display());
        log.push_str(&text);
    }
    assert_counted(&log, &format!("counter.{pid}"), written.saturating_sub(1100).min(1000));
}

/// Found by a hostile test: with its log's disk full, an entry that keeps
/// restarting left every ended process's monitor holding its unwritten
/// lines — a thread and two pipes each, ~14 more threads a second, without
/// end. Its starts now wait once more ended processes are draining than it
/// has slots (plus a few), and go on when the disk has room again.
#[test]
fn a_restarting_entry_whose_log_is_stuck_waits_instead_of_piling_up_monitors() {
    let dir = TempDir::new("stuck-storm");
    let log_dir = dir.path().join("log");
    let mount = match Mount::tmpfs(&log_dir, "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let filler = mount.0.join("filler");
    let _ = run(Command::new("dd").args(["if=/dev/zero", "bs=4k"]).arg(format!("of={}", filler.display())));
    // 20 slots, each process printing a line, living 1–2 s, exiting 1.
    let s = Sentry::spawn_in(dir, TCONF, "storm", &[]).waiting();
    let threads = || fs::read_dir(format!("/proc/{}/task", s.pid())).map(|d| d.count()).unwrap_or(0);
    wait_for("the starts to wait for the output", || {
        s.console().contains("Waiting for the output of ended processes to be written").then_some(())
    });
    // 20 running, at most 20 + 16 draining, and Sentry's own few.
    let bound = 20 + 36 + 12;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let n = threads();
        assert!(n <= bound, "{n} threads with the log stuck");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before: std::collections::HashSet<i32> = s.pids("storm").into_iter().collect();
    fs::remove_file(&filler).unwrap();
    wait_for("new starts once the log has room", || s.pids("storm").iter().any(|p| !before.contains(p)).then_some(()));
    wait_for("the ended processes' monitors to close", || (threads() <= 20 + 12).then_some(()));
    drop(s);
    drop(mount);
}

/// Found by a hostile test: under a file-size limit, one write bigger than
/// the room left (a long line's pieces, a batch of lines) was cut at the
/// limit, and the rest, owed to the full file, kept the log stuck for good.
/// What does not fit goes to a fresh file after a rotation, cut after the
/// last whole piece that fits; the child is never stuck.
#[test]
fn a_write_bigger_than_the_room_under_a_file_size_limit_goes_on_in_the_next_file() {
    const LIMIT: usize = 100_000;
    if !has_prlimit() {
        return;
    }
    let dir = TempDir::new("fsize-long");
    let log_dir = dir.path().join("log");
    let limit = format!("--fsize={LIMIT}");
    // Three 200 KiB lines (64 KiB pieces) on stdout while stderr writes short lines.
    let s = Sentry::spawn_wrapped(dir, TCONF, "long", &["prlimit", &limit], &[], &[], None).waiting();
    let pid = s.wait_pids("long", 1)[0];
    let tag = format!("long.{pid}");
    wait_for("the child's last line in the log", || s.log("long").contains(&format!("{tag} done\n")).then_some(()));
    for e in fs::read_dir(&log_dir).unwrap().flatten() {
        let text = fs::read_to_string(e.path()).unwrap();
        assert!(text.len() <= LIMIT, "{} is over the limit", e.path().display());
        assert!(text.is_empty() || text.ends_with('\n'), "{} ends in a cut line", e.path().display());
        for line in text.lines() {
            assert!(
                line.contains(&format!(" {tag} ")) || line.contains(&format!(" {tag}+ ")),
                "a cut line: {line:.200}"
            );
        }
    }
}

/// Found by a hostile test: a first start on a full disk left an empty
/// pidfile, and with `--daemon` the daemon panicked (status 101) printing
/// its error to the full disk. It fails with status 1 and leaves no pidfile.
#[test]
fn a_start_on_a_full_disk_fails_cleanly() {
    let dir = TempDir::new("fullstart");
    let mount = match Mount::tmpfs(dir.path(), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let _ =
        run(Command::new("dd").args(["if=/dev/zero", "bs=4k"]).arg(format!("of={}", mount.0.join("filler").display())));
    let instance = mount.0.join("d");
    for daemon in [false, true] {
        let mut cmd = Command::new(TCONF);
        cmd.arg("start").args(daemon.then_some("--daemon")).arg("--dir").arg(&instance).env("TCONF", "basic");
        let out = run_within(in_own_session(&mut cmd), Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(1), "daemon {daemon}: {}", text(&out.stderr));
        if daemon {
            assert!(text(&out.stderr).contains("exit status: 1)"), "the daemon did not panic: {}", text(&out.stderr));
        }
        assert!(!instance.join("tconf.pid").exists(), "daemon {daemon}: a pidfile was left");
    }
    drop(mount);
}
