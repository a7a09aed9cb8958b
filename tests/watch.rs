//! Watches end to end: memory hogs started by the test outside Sentry, found
//! by regex (and as descendants), and the actions fired on them — term, kill,
//! stop with its rate limit, exec with variables — plus an entry restarted by
//! its own rule, a hostile command line that injects nothing, and `explain`.
//! Each test uses its own marker so that parallel tests never see each
//! other's processes.

#[path = "support/mod.rs"]
mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");
/// Allocates 100 MiB, then sleeps.
const HOG: &str = "x = b'x' * (100 * 2**20)\nimport time\ntime.sleep(1000)";
/// Small, and on one line (so that `$CMDLINE` echoes as one line).
const SMALL: &str = "import time; time.sleep(1000)";

/// A process the test started outside Sentry; killed and reaped on drop.
struct Foreign(Child);

impl Foreign {
    fn python(code: &str, tag: &str) -> Foreign {
        Foreign(Command::new("python3").args(["-c", code, tag]).stdin(Stdio::null()).spawn().expect("python3"))
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn rss_above(&self, mib: u64) -> bool {
        // VmRSS in KiB.
        proc_status(self.pid(), "VmRSS")
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .is_some_and(|kb| kb > mib * 1024)
    }

    /// Waits for it to die and returns the signal that killed it.
    fn killed_by(&mut self) -> Option<i32> {
        let status = wait_for("the watched process to die", || self.0.try_wait().unwrap());
        status.signal()
    }

    fn state(&self) -> String {
        stat_fields(self.pid()).map(|f| f[0].clone()).unwrap_or_default()
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn marker(test: &str) -> String {
    format!("{test}{}", std::process::id())
}

fn start(mark: &str) -> Sentry {
    Sentry::spawn_with(TempDir::new("watch"), TCONF, "watch", &[], &[("TMARK", mark)]).waiting()
}

fn watch_status(s: &Sentry, name: &str) -> serde_json::Value {
    s.status()["watches"].as_array().unwrap().iter().find(|w| w["name"] == name).cloned().unwrap()
}

#[test]
fn term_hits_the_hog_and_spares_the_innocent() {
    let m = marker("t");
    let s = start(&m);
    let small = Foreign::python(SMALL, &format!("hog-{m}-small"));
    let mut hog = Foreign::python(HOG, &format!("hog-{m}"));
    assert_eq!(hog.killed_by(), Some(libc::SIGTERM));
    let w = watch_status(&s, "hog");
    assert_eq!(w["rules"][0]["fired"], 1, "{w}");
    let matched = w["matched"].as_array().unwrap();
    let entry = matched.iter().find(|p| p["pid"] == small.pid()).expect("the innocent is matched");
    assert!(entry["rss_bytes"].as_u64().unwrap() > 0 && entry["vmem_bytes"].as_u64().unwrap() > 0);
    assert!(alive(small.pid()), "under the threshold: untouched");
    let console = s.console();
    let line = console.lines().find(|l| l.contains(&format!("hog.{}", hog.pid()))).unwrap_or_default();
    assert!(line.contains("rmem ") && line.ends_with("> 50m: term."), "{console}");
    let log = s.log("hog");
    assert!(
        log.lines().any(|l| l.contains(&format!("hog.{} [sentry] rmem ", hog.pid())) && l.ends_with(": term.")),
        "{log}"
    );
}

#[test]
fn no_watch_thread_runs_without_watches_or_rules() {
    let thread_names = |pid: i32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect()
    };
    let plain = Sentry::start(TCONF, "basic", &[]);
    assert!(!thread_names(plain.pid()).contains(&"sentry-watch".to_string()), "no periodic wake-ups without rules");
    let m = marker("n");
    let watching = start(&m);
    assert!(thread_names(watching.pid()).contains(&"sentry-watch".to_string()));
}

#[test]
fn sentrys_own_tree_never_matches_a_watch() {
    let m = marker("o");
    let s = start(&m);
    let own = wait_for("the entry", || s.pids("own").first().copied());
    // A foreign process with the same command line is caught: the watch works.
    let mut foreign = Foreign::python(SMALL, &format!("own-{m}"));
    assert_eq!(foreign.killed_by(), Some(libc::SIGTERM));
    assert_eq!(s.pids("own"), vec![own]);
    assert_eq!(s.entry("own")["restarts"], 0);
    let matched = watch_status(&s, "mine")["matched"].clone();
    let pids: Vec<i64> = matched.as_array().unwrap().iter().filter_map(|p| p["pid"].as_i64()).collect();
    assert!(!pids.contains(&(own as i64)) && !pids.contains(&(s.pid() as i64)), "{matched}");
}

#[test]
fn kill_sends_sigkill() {
    let m = marker("k");
    let _s = start(&m);
    let mut hog = Foreign::python(HOG, &format!("kill-{m}"));
    assert_eq!(hog.killed_by(), Some(libc::SIGKILL));
}

#[test]
fn stop_is_rate_limited_even_after_a_sigcont() {
    let m = marker("s");
    let s = start(&m);
    let hog = Foreign::python(HOG, &format!("stop-{m}"));
    wait_for("the first stop", || (hog.state() == "T").then_some(()));
    let first = Instant::now();
    unsafe { libc::kill(hog.pid(), libc::SIGCONT) };
    wait_for("it to run again", || (hog.state() != "T").then_some(()));
    // Within the 3 s the same process is not stopped again, although it still qualifies.
    while first.elapsed() < Duration::from_millis(2300) {
        assert_ne!(hog.state(), "T", "stopped again after {:?}", first.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for("the second stop, after the rate limit", || (hog.state() == "T").then_some(()));
    assert!(first.elapsed() >= Duration::from_millis(2500), "{:?}", first.elapsed());
    assert_eq!(watch_status(&s, "stopper")["rules"][0]["fired"], 2);
    unsafe { libc::kill(hog.pid(), libc::SIGCONT) };
}

#[test]
fn exec_runs_with_the_variables_and_its_rate_limit() {
    let m = marker("e");
    let s = start(&m);
    // The first firing comes after the hog started: bound the count from there.
    let t0 = Instant::now();
    let hog = Foreign::python(HOG, &format!("exec-{m}"));
    let once = Foreign::python(HOG, &format!("once-{m}"));
    wait_for("the first exec", || s.log("runner").contains("fired runner").then_some(()));
    std::thread::sleep(Duration::from_millis(4500));
    let elapsed = t0.elapsed();
    let log = s.log("runner");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("fired runner")).collect();
    // At most once per 2 s: the first, then one at ~2 s and ~4 s after it.
    let most = 1 + elapsed.as_millis() as usize / 2000;
    assert!((2..=most).contains(&lines.len()), "{} firings in {elapsed:?}:\n{log}", lines.len());
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    let (pid, rmem): (i32, u64) = (words[words.len() - 2].parse().unwrap(), words[words.len() - 1].parse().unwrap());
    assert_eq!(pid, hog.pid());
    assert!(rmem > 50 << 20, "$RMEM in bytes: {rmem}");
    // Without `@`, a rule fires once per crossing: the hog stays above, so once.
    let crossings = s.log("once").lines().filter(|l| l.contains(&format!("crossing {}", once.pid()))).count();
    assert_eq!(crossings, 1, "{}", s.log("once"));
    assert!(alive(hog.pid()) && alive(once.pid()));
    assert!(s.console().contains("Action program exited"), "the helpers are reaped: {}", s.console());
    // A helper may be exiting right now: none stays a zombie.
    wait_for("no zombie", || children_of(s.pid()).iter().all(|(_, st)| st != "Z").then_some(()));
}

#[test]
fn children_of_a_match_are_watched_too() {
    let m = marker("c");
    let s = start(&m);
    let dir = TempDir::new("family");
    let pidfile = dir.path().join("hog.pid");
    // The small parent matches; its hog child does not, but is a descendant.
    let script = format!("python3 -c \"$1\" & echo $! > {}; wait; exec sleep 1000", pidfile.display());
    let parent = Foreign(
        Command::new("sh").args(["-c", &script, &format!("family-{m}"), HOG]).stdin(Stdio::null()).spawn().unwrap(),
    );
    let hog: i32 = wait_for("the hog's PID", || std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok());
    wait_for("the descendant to be terminated", || s.console().contains(&format!("family.{hog}")).then_some(()));
    let console = s.console();
    assert!(console.lines().any(|l| l.contains(&format!("family.{hog}")) && l.ends_with(": term.")), "{console}");
    wait_for("the hog to be gone", || (!alive(hog)).then_some(()));
    assert!(alive(parent.pid()), "the small parent is spared");
    assert!(!console.contains(&format!("family.{} ", parent.pid())), "{console}");
}

#[test]
fn a_hostile_command_line_injects_nothing() {
    let m = marker("i");
    let dir = TempDir::new("inject");
    let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let hostile =
        format!("inject-{m} $(touch {}) `touch {}`; touch {} \"q\" 'r' && touch {}", f("a"), f("b"), f("c"), f("d"));
    let s = start(&m);
    let victim = Foreign::python(SMALL, &hostile);
    let log = wait_for("the exec action", || {
        let log = s.log("quoted");
        log.lines().any(|l| l.contains("cmdline: ") && l.contains(&format!("inject-{m}"))).then_some(log)
    });
    assert!(
        log.contains(&format!(" -c {SMALL} {hostile}\n")),
        "the command line arrives verbatim, as one word:\n{log}"
    );
    std::thread::sleep(Duration::from_millis(500));
    for name in ["a", "b", "c", "d"] {
        assert!(!dir.path().join(name).exists(), "{name} was created: injection");
    }
    assert!(alive(victim.pid()));
}

#[test]
fn an_entry_over_its_threshold_is_restarted() {
    let s = Sentry::start(TCONF, "fat", &[]);
    let first = wait_for("fat", || s.pids("fat").first().copied());
    let second = wait_for("a restart by the rule", || s.pids("fat").first().copied().filter(|p| *p != first));
    assert!(!alive(first));
    assert_ne!(second, first);
    let e = s.entry("fat");
    assert!(e["restarts"].as_u64().unwrap() >= 1);
    assert!(e["rules"][0]["fired"].as_u64().unwrap() >= 1, "{e}");
    assert!(s.console().contains(": restart."), "{}", s.console());
}

#[test]
fn explain_lists_matches_and_would_fire_without_acting() {
    let m = marker("x");
    let hog = Foreign::python(HOG, &format!("hog-{m}"));
    let small = Foreign::python(SMALL, &format!("hog-{m}-small"));
    wait_for("the hog to grow", || hog.rss_above(60).then_some(()));
    let out = run(Command::new(TCONF).arg("explain").env("TCONF", "watch").env("TMARK", &m));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains(&format!("watch hog /hog-{m}/: 2 processes")), "{report}");
    assert!(report.contains(&hog.pid().to_string()) && report.contains(&small.pid().to_string()), "{report}");
    let rule = report.lines().find(|l| l.contains("rule rmem > 50m => term")).unwrap();
    assert!(
        rule.contains(&format!("would fire for {}", hog.pid())) && !rule.contains(&small.pid().to_string()),
        "{report}"
    );
    assert!(report.contains("nothing was signalled"));
    assert!(alive(hog.pid()), "a dry run");
}

#[test]
fn a_process_whose_name_is_cut_mid_character_is_really_signalled() {
    let m = marker("r");
    let s = start(&m);
    let dir = TempDir::new(&format!("mon-{m}"));
    let exe = copy_of_sleep(dir.path(), "мониторинг");
    // A copy just written may be "busy" while a fork elsewhere in this test
    // process still holds the writing fd: retry.
    let child =
        wait_for("the copy of sleep to start", || match Command::new(&exe).arg("1000").stdin(Stdio::null()).spawn() {
            Ok(c) => Some(c),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => None,
            Err(e) => panic!("{e}"),
        });
    let mut mon = Foreign(child);
    // The name changes a moment after `spawn` returns (the kernel closes the
    // CLOEXEC fds, which `spawn` waits for, before it renames the process).
    let cut = [&"мониторинг".as_bytes()[..15], b"\n"].concat();
    wait_for("the kernel to cut the name mid-character", || {
        (std::fs::read(format!("/proc/{}/comm", mon.pid())).ok()? == cut).then_some(())
    });
    assert_eq!(mon.killed_by(), Some(libc::SIGTERM), "the term rule delivers SIGTERM, not only counts it");
    assert_eq!(watch_status(&s, "cyrillic")["rules"][0]["fired"], 1);
}

#[test]
fn sentrys_ancestors_are_never_acted_on_and_explain_says_so() {
    let m = marker("a");
    let dir = TempDir::new("ancestor");
    let console = std::fs::File::create(dir.path().join("console.txt")).unwrap();
    let bin_dir = dir.path().join("run");
    let tag = format!("anc-{m}");
    // The shell that starts Sentry carries the marker on its command line
    // (as $0), and outlives it (`; true`: no exec of the last command).
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "\"$1\" start --dir \"$2\"; true", &tag, TCONF, bin_dir.to_str().unwrap()])
        .env("TCONF", "watch")
        .env("TMARK", &m)
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console);
    in_own_session(&mut cmd);
    // Dropped after the session is killed: the instance's cgroups go too.
    let _cgroups = CgroupGuard::for_dir(&bin_dir);
    let mut shell = cmd.spawn().expect("sh");
    let _guard = SessionGuard(shell.id() as i32);
    let shell_pid = shell.id() as i32;
    let cli = |args: &[&str]| {
        run_within(
            Command::new(TCONF).args(args).arg("--dir").arg(&bin_dir).env("TCONF", "watch").env("TMARK", &m),
            Duration::from_secs(120),
        )
    };
    let status: serde_json::Value = wait_for("the instance to answer", || {
        let out = cli(&["status", "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
    });
    let sentry = status["pid"].as_i64().unwrap() as i32;
    assert_eq!(stat_fields(sentry).unwrap()[1], shell_pid.to_string(), "the shell is Sentry's parent");
    // A foreign process with the same marker is caught: the watch works.
    let mut foreign = Foreign::python(SMALL, &tag);
    assert_eq!(foreign.killed_by(), Some(libc::SIGTERM));
    std::thread::sleep(Duration::from_millis(1000)); // five more scans
    assert!(shell.try_wait().unwrap().is_none() && alive(shell_pid), "the parent shell was signalled");
    let out = cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let elder = status["watches"].as_array().unwrap().iter().find(|w| w["name"] == "elder").unwrap().clone();
    let matched: Vec<i64> = elder["matched"].as_array().unwrap().iter().filter_map(|p| p["pid"].as_i64()).collect();
    assert!(!matched.contains(&(shell_pid as i64)), "{elder}");
    assert_eq!(elder["rules"][0]["fired"], 1, "only the foreign process: {elder}");
    let out = cli(&["explain"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    let line = report.lines().find(|l| l.contains(&format!("(would also match {shell_pid} sh -c")));
    assert!(
        line.is_some_and(|l| l.ends_with(", an ancestor of Sentry: never acted on)")),
        "explain names the spared ancestor:\n{report}"
    );
    assert!(alive(shell_pid));
}

#[test]
fn exec_helpers_are_capped_per_rule_and_in_all_and_skips_are_counted() {
    // 30 processes with an 8 GiB PROT_NONE mapping (huge vmem, costs
    // nothing) and five rules on them: 150 helpers wanted at once.
    let mark = marker("cap");
    let tag = format!("cap-{mark}");
    let code = "import mmap, time\nm = mmap.mmap(-1, 8 << 30, flags=mmap.MAP_PRIVATE, prot=0)\ntime.sleep(1000)";
    let hogs: Vec<Foreign> = (0..30).map(|_| Foreign::python(code, &tag)).collect();
    for h in &hogs {
        wait_for("the mapping", || {
            proc_status(h.pid(), "VmSize")
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .filter(|kb| *kb > 8 << 20)
        });
    }
    let s = Sentry::spawn_with(TempDir::new("watch"), TCONF, "capped", &[], &[("TMARK", &mark)]).waiting();
    let (mut most, mut most_per_rule) = (0, 0);
    let rules = wait_for("every rule to skip a firing", || {
        // Helpers are Sentry's only children: `sleep 21` … `sleep 25`.
        let helpers = children_of(s.pid());
        let per_rule = (21..=25)
            .map(|n| {
                helpers
                    .iter()
                    .filter(|(pid, _)| {
                        std::fs::read(format!("/proc/{pid}/cmdline"))
                            .is_ok_and(|c| c == format!("sleep\0{n}\0").as_bytes())
                    })
                    .count()
            })
            .max()
            .unwrap_or(0);
        most = most.max(helpers.len());
        most_per_rule = most_per_rule.max(per_rule);
        let rules = watch_status(&s, "capped")["rules"].as_array().unwrap().clone();
        rules.iter().all(|r| r["skipped"].as_u64().is_some_and(|n| n > 0)).then_some(rules)
    });
    // The core ran what the watcher asked before it answered status: the 16 run now.
    most = most.max(children_of(s.pid()).len());
    assert_eq!(children_of(s.pid()).len(), 16);
    assert!(most <= 16, "{most} helpers ran at once");
    assert!(most_per_rule <= 4, "{most_per_rule} helpers of one rule ran at once");
    let fired: u64 = rules.iter().map(|r| r["fired"].as_u64().unwrap()).sum();
    let skipped: u64 = rules.iter().map(|r| r["skipped"].as_u64().unwrap()).sum();
    assert_eq!(fired, 16, "{rules:?}");
    assert_eq!(fired + skipped, 150, "each firing is run or skipped: {rules:?}");
    assert!(s.console().contains("skipped ("), "{}", s.console());
}
