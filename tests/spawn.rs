//! How children are started (issue 10): a command is found as `execvp`
//! finds it, in the child's own `PATH`; under cgroup containment each child
//! is born in its leaf; and where `clone3` is refused — Docker's default
//! seccomp profile answers it with ENOSYS — children still start, each in
//! its cgroup, with their output captured.
//!
//! The seccomp wrapper is a small C program compiled by the test with `cc`.

#[path = "support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// Runs its arguments with `clone3` answered by ENOSYS (x86_64's number
/// 435), as Docker's default seccomp profile does; everything else allowed.
const NO_CLONE3: &str = r#"
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 435, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof filter / sizeof filter[0], filter };
    if (argc < 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("no-clone3");
        return 126;
    }
    execvp(argv[1], argv + 1);
    perror("no-clone3: exec");
    return 127;
}
"#;

/// `TBIN` for the `spawn-path` scenario: `tsleep` (a copy of sleep),
/// `badinterp` (its `#!` names a missing interpreter), `script` (a shell
/// script without `#!`), and in `noexec/` a `tsleep` and a `tdenied` that
/// may not be executed.
fn tbin(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(bin.join("noexec")).unwrap();
    copy_of_sleep(&bin, "tsleep");
    for (name, text) in [
        ("badinterp", "#!/nonexistent/sentry-interpreter\n"),
        ("script", "echo script-ran $SENTRY_INDEX\nexec sleep 1000\n"),
    ] {
        std::fs::write(bin.join(name), text).unwrap();
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for name in ["tsleep", "tdenied"] {
        let path = bin.join("noexec").join(name);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    bin
}

/// Whether this test process may create cgroups; says so when it may not.
fn cgroups_here() -> bool {
    let ok = cgroups_writable();
    if !ok {
        eprintln!("skipped: cgroup v2 is not writable here (not root, no delegation)");
    }
    ok
}

/// The `spawn-path` scenario running, with its `TBIN` (kept by the
/// returned directory) and the path of that `TBIN`.
fn spawn_path(tag: &str) -> (TempDir, PathBuf, Sentry) {
    let work = TempDir::new(&format!("{tag}-bin"));
    let bin = tbin(work.path());
    let s =
        Sentry::spawn_with(TempDir::new(tag), TCONF, "spawn-path", &[], &[("TBIN", bin.to_str().unwrap())]).waiting();
    (work, bin, s)
}

fn exe_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[test]
fn a_command_is_found_in_the_childs_path_skipping_what_it_may_not_run() {
    let (_work, bin, s) = spawn_path("spawn-path");
    let pid = s.wait_pids("found", 1)[0];
    assert_eq!(exe_of(pid), Some(bin.join("tsleep")), "the executable tsleep after the non-executable one");
    let console = wait_for("the denied entry's failed start", || {
        let c = s.console();
        c.contains("Cannot start \"tdenied\"").then_some(c)
    });
    assert!(
        console.contains("Permission denied"),
        "execvp says EACCES when only a non-executable was found: {console}"
    );
    assert!(s.pids("denied").is_empty());
}

/// Starts do not wait for the child's exec; what fails in the child after
/// the clone is still said as a failed start, with the step that failed,
/// and counts as a crash.
#[test]
fn a_start_that_fails_in_the_child_says_why() {
    let (_work, _bin, s) = spawn_path("spawn-late");
    let slot_error = |entry: &str| {
        let e = s.entry(entry);
        let slot = e["slots"][0].clone();
        slot["error"].as_str().map(|err| (err.to_string(), slot["state"].as_str().unwrap_or("").to_string()))
    };
    let (nowhere, state) = wait_for("nowhere's start error", || slot_error("nowhere"));
    assert!(nowhere.contains("cannot enter its working directory") && nowhere.contains("No such file"), "{nowhere}");
    assert_eq!(state, "backoff", "a failed start is a crash");
    let (badinterp, _) = wait_for("badinterp's start error", || slot_error("badinterp"));
    assert!(badinterp.contains("No such file or directory"), "{badinterp}");
    // Counted as a failed start before the clone is: no exit, no restart.
    let nowhere = s.entry("nowhere");
    assert_eq!(nowhere["restarts"], 0, "{nowhere}");
    assert_eq!(nowhere["last_exits"].as_array().map(Vec::len), Some(0), "{nowhere}");
    // A script without `#!` runs under /bin/sh, as execvp runs it.
    wait_for("the script's line", || s.log("script").contains("script-ran 0").then_some(()));
    let console = s.console();
    for (entry, said) in [("nowhere", "cannot enter its working directory"), ("badinterp", "No such file")] {
        let lines: Vec<&str> = console.lines().filter(|l| l.contains(&format!(" {entry}."))).collect();
        assert!(lines.iter().any(|l| l.contains("Cannot start") && l.contains(said)), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("Exited")), "a failed start is not an exit: {lines:?}");
    }
    // The child that failed was reaped and its cgroup, if any, removed: nothing left of it.
    assert!(s.pids("nowhere").is_empty() && s.pids("badinterp").is_empty());
}

/// Every child of a user entry gets that user's groups, however many start
/// at once: what the child reads is the launch's own copy, never the
/// caller's (which is gone before a child that does not wait may read it).
#[test]
fn every_child_of_a_user_entry_gets_its_groups() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let s = Sentry::spawn_with(TempDir::new("spawn-groups"), TCONF, "user", &[], &[("TUSER", "nobody")]).waiting();
    assert!(s.cli(&["scale", "as-nobody", "40"]).status.success());
    let pids = s.wait_pids("as-nobody", 40);
    let out = run(Command::new("id").args(["-G", "nobody"]));
    let want: Vec<String> = text(&out.stdout).split_whitespace().map(str::to_string).collect();
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let groups: Vec<String> = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .map(|g| g.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        assert_eq!(groups, want, "child {pid}");
    }
}

#[test]
fn where_clone3_is_refused_children_still_start_in_their_cgroups() {
    if !cgroups_here() {
        return;
    }
    let work = TempDir::new("spawn-noclone3-bin");
    let bin = tbin(work.path());
    let wrapper = work.path().join("no-clone3");
    let source = work.path().join("no-clone3.c");
    std::fs::write(&source, NO_CLONE3).unwrap();
    let out = run(Command::new("cc").arg("-O2").arg("-o").arg(&wrapper).arg(&source));
    assert!(out.status.success(), "cc: {}", text(&out.stderr));
    // The wrapper works: a clone3 under it fails with ENOSYS (glibc's own
    // thread creation falls back, so Sentry itself runs).
    let probe = run(Command::new(&wrapper).args(["python3", "-c", CLONE3_PROBE]));
    assert_eq!(text(&probe.stdout).trim(), "38", "clone3 answers ENOSYS under the wrapper: {}", text(&probe.stderr));

    let dir = TempDir::new("spawn-noclone3");
    let (instance, _) = expected_instance_cgroup("tconf", dir.path());
    let envs = [("TBIN", bin.to_str().unwrap())];
    let s = Sentry::spawn_wrapped(dir, TCONF, "spawn-path", &[wrapper.to_str().unwrap()], &[], &envs, None).waiting();
    // Without clone3 a child moves itself into its cgroup before its exec
    // (it starts in Sentry's): once it runs its program, it is there.
    wait_for("both echo lines in the log", || {
        let log = s.log("echo");
        (log.contains("hello from 0") && log.contains("hello from 1")).then_some(())
    });
    let tsleep = bin.join("tsleep");
    wait_for("found to run tsleep", || {
        s.pids("found").first().filter(|&&p| exe_of(p) == Some(tsleep.clone())).copied()
    });
    for (entry, count) in [("found", 1), ("echo", 2)] {
        let pids = s.wait_pids(entry, count);
        for (slot, pid) in pids.iter().enumerate() {
            let cgroup = cgroup_of(*pid);
            let slots: Vec<String> = (0..count).map(|i| format!("{instance}/{entry}/{i}")).collect();
            assert!(cgroup.as_ref().is_some_and(|c| slots.contains(c)), "{entry} #{slot} (pid {pid}) in {cgroup:?}");
        }
    }
    // A restart, too, is born in its slot's cgroup.
    let old = s.wait_pids("found", 1)[0];
    // SAFETY: SIGKILL to the child this test's Sentry started.
    unsafe { libc::kill(old, libc::SIGKILL) };
    let new = wait_for("found restarted and running tsleep", || {
        s.pids("found").first().copied().filter(|&p| p != old && exe_of(p) == Some(tsleep.clone()))
    });
    assert_eq!(cgroup_of(new), Some(format!("{instance}/found/0")));
}

/// Prints the errno of a raw `clone3` with an invalid (too small) size: 38
/// (ENOSYS) under the wrapper, 22 (EINVAL) without it.
const CLONE3_PROBE: &str = "import ctypes, os\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
r = libc.syscall(435, None, 0)\n\
print(ctypes.get_errno() if r < 0 else 0)\n";

/// The cgroup-v1 `pids` hierarchy, if mounted (the hybrid layout here).
fn pids_v1() -> Option<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup/pids");
    root.join("cgroup.procs").exists().then_some(root)
}

/// A `pids` cgroup of the test's own with a low `pids.max`; whatever is
/// still in it is SIGKILLed and the cgroup removed on drop.
struct PidsLimit(PathBuf);

impl Drop for PidsLimit {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && std::time::Instant::now() < deadline {
            let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: SIGKILL to a process in this test's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// When a child's monitor cannot start (here: the pids limit refuses the
/// thread), the child is killed and reaped and the supervisor goes on
/// answering — also under process-group containment, where the child may
/// not have made its process group yet when this happens (starts do not
/// wait for the exec), so signalling only the group would reach nothing and
/// the reap would wait forever.
#[test]
fn a_monitor_that_cannot_start_never_stalls_the_supervisor() {
    let Some(pids) = pids_v1().filter(|_| unsafe { libc::geteuid() } == 0) else {
        eprintln!("skipped: needs root and the cgroup-v1 pids controller");
        return;
    };
    let limit = PidsLimit(pids.join(format!("sentry-test-pids-{}", std::process::id())));
    std::fs::create_dir(&limit.0).unwrap();
    std::fs::write(limit.0.join("pids.max"), "40").unwrap();
    let script = format!("echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"", limit.0.display());
    let envs = [("SENTRY_CONTAINMENT", "process-group"), ("TCOUNT", "60")];
    let mut s = Sentry::spawn_wrapped(
        TempDir::new("spawn-pids"),
        TCONF,
        "bench-stamp",
        &["sh", "-c", &script],
        &[],
        &envs,
        None,
    );
    // A stalled core never gets to say it: it waits on the child first.
    wait_for("Sentry to say a monitor was refused", || s.console().contains("cannot watch").then_some(()));
    // The core still handles what it is sent: a SIGTERM stops everything.
    // (A status request needs a thread, which the limit may refuse.)
    // SAFETY: SIGTERM to the supervisor this test started.
    unsafe { libc::kill(s.pid(), libc::SIGTERM) };
    s.wait_exit();
    assert!(s.console().contains("Bye."), "{}", s.console());
}

/// After a burst of starts, an idle supervisor lets go of what its launches
/// held (the children's pipe ends and cgroup directories it kept for them
/// until they had a fd table of their own) without being sent anything.
#[test]
fn an_idle_supervisor_keeps_nothing_of_finished_launches() {
    if !cgroups_here() {
        return;
    }
    let dir = TempDir::new("spawn-idle");
    let (_, instance_dir) = expected_instance_cgroup("tconf", dir.path());
    let s = Sentry::spawn_with(dir, TCONF, "bench-stamp", &[], &[("TCOUNT", "200")]);
    // Counted in the cgroups, not asked of Sentry: no command wakes it.
    wait_for("200 children", || (cgroup_tree_procs(&instance_dir).len() >= 200).then_some(()));
    let held = || -> Vec<PathBuf> {
        std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.starts_with(&instance_dir))
            .collect()
    };
    wait_for_within("Sentry to hold no cgroup directory of a child", std::time::Duration::from_secs(5), || {
        held().is_empty().then_some(())
    });
}

/// A child's fd table is made of the few fds it needs, not copied from
/// Sentry's — which holds three or four per child (pipes, pidfd, eventfd):
/// a copy costs the start time with every fd and the exec closes each one
/// again. What shows it from outside is `FDSize` in `/proc/PID/status`
/// (proc(5): the fd slots allocated), which the exec keeps: 64, the
/// smallest table, when the child had only Sentry's few lowest fds (its
/// `close_range(…, CLOSE_RANGE_UNSHARE)` keeps the fds below the
/// highest it needs). It holds in a burst of starts — a bring-up, half of
/// them killed at once — where more children are between clone and exec
/// than there are sets of low fds to go round. A few may still get a copy
/// (a start waits only so long for a set), hence the tenth allowed.
#[test]
fn a_child_gets_a_fd_table_of_its_own_not_a_copy_of_sentrys() {
    const N: usize = 300;
    let count = N.to_string();
    let s =
        Sentry::spawn_with(TempDir::new("spawn-fdsize"), TCONF, "bench-stamp", &[], &[("TCOUNT", &count)]).waiting();
    let copied = |pids: &[i32]| -> Vec<(i32, u32)> {
        pids.iter()
            .filter_map(|&p| Some((p, proc_status(p, "FDSize")?.parse::<u32>().ok()?)))
            .filter(|&(_, slots)| slots > 64)
            .collect()
    };
    let first = s.wait_pids("stamp", N);
    assert!(fd_count(s.pid()) > 3 * N, "Sentry holds {} fds", fd_count(s.pid()));
    let big = copied(&first);
    assert!(big.len() <= N / 10, "children of the bring-up with Sentry's fds copied (PID, FDSize): {big:?}");

    let killed: Vec<i32> = first.iter().copied().step_by(2).collect();
    for &pid in &killed {
        // SAFETY: SIGKILL to a child of the supervisor this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let again = wait_for("every killed child replaced", || {
        Some(s.pids("stamp")).filter(|p| p.len() == N && !p.iter().any(|pid| killed.contains(pid)))
    });
    let fresh: Vec<i32> = again.into_iter().filter(|p| !first.contains(p)).collect();
    let big = copied(&fresh);
    assert!(big.len() <= N / 20, "replacements with Sentry's fds copied (PID, FDSize): {big:?}");
}
