//! The configurations the integration tests run, one per scenario, chosen by
//! the `TCONF` environment variable. Each is an ordinary compiled
//! configuration: the tests drive this binary exactly as a user drives theirs.

use sentry_core::prelude::*;

/// A small Python parent whose three children allocate 100 MiB each.
const FAMILY: &str = "import subprocess, sys, time\n\
    hog = \"x = b'x' * (100 * 2**20)\\nimport time\\ntime.sleep(1000)\"\n\
    kids = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(3)]\n\
    time.sleep(1000)\n";

fn specs(scenario: &str) -> Vec<Spec> {
    match scenario {
        // Two long sleepers and one that exits at once with a failure.
        "basic" => vec![
            entry("idle", "sleep", ["1000"], 0, 2),
            entry("other", "sleep", ["1000"], 0, 1),
        ],
        // A crash loop with no delay: must be backed off, not spin.
        "crash" => vec![entry("crash", "sh", ["-c", "exit 3"], 0, 1)],
        // A leader whose leftover outlives it and SIGTERM (tests/api.rs).
        "lingerer" => vec![entry("lingerer", "sh", ["-c", "echo hi; (trap '' TERM; sleep 3; echo late) & exit 0"], 1000, 1)
            .stop_timeout(Duration::from_secs(2))],
        // Exits all the time (runs of 1 to 1.95 s), for reloads to land among (tests/api.rs).
        "storm" => vec![entry("storm", "sh", ["-c", "echo a $$; sleep 1.$((SENTRY_INDEX * 5)); echo b $$; exit 1"], 0, 20)],
        // A console that cannot keep up (tests/logs.rs).
        "flood" => vec![entry(
            "flood",
            "sh",
            ["-c", "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done; exec sleep 100000"],
            0,
            3,
        )],
        // Console order (tests/logs.rs): lines right after the start and
        // right before the exit, and an answer to the stop signal.
        "ordered" => vec![
            entry("hello", "sh", ["-c", "echo hello $$ $SENTRY_INDEX; exit 1"], 0, 20),
            entry("steady", "sh", ["-c", "echo hello $$ $SENTRY_INDEX; sleep 1.05; echo bye $$; exit 1"], 0, 20),
            entry("polite", "sh", ["-c", "trap 'echo bye $$; exit 0' TERM; echo up $$; while :; do sleep 0.05; done"], 0, 4),
        ],
        // Restart policies.
        "policy" => vec![
            entry("ok-onfailure", "sh", ["-c", "exit 0"], 0, 1).restart(Restart::OnFailure),
            entry("bad-onfailure", "sh", ["-c", "sleep 0.2; exit 3"], 0, 1).restart(Restart::OnFailure),
            entry("bad-never", "sh", ["-c", "exit 3"], 0, 1).restart(Restart::Never),
        ],
        // Output: many lines fast, then a partial last line, then exit.
        "output" => vec![entry(
            "talk",
            "sh",
            ["-c", "i=0; while [ $i -lt 20000 ]; do echo \"line $i\"; i=$((i+1)); done; echo err-line >&2; printf partial; exec sleep 1000"],
            0,
            1,
        )],
        // Numbered lines, steadily; the last number written goes to TSIDE too,
        // if given (it stops advancing when the child blocks on its pipe).
        // Without TSIDE nothing else is written: the file is replaced by a
        // rename, which must never be tried on a device such as /dev/null.
        "counter" => {
            let side = match std::env::var("TSIDE") {
                Ok(side) => format!("echo $i > {side}.tmp && mv {side}.tmp {side}; "),
                Err(_) => String::new(),
            };
            let script = format!(
                "pad=$(printf '%0150d' 0); i=0; while :; do echo \"n $i $pad\"; {side}i=$((i+1)); if [ $((i % 20)) = 0 ]; then sleep 0.01; fi; done"
            );
            // TLOGSIZE: rotated at that size, every file kept.
            let counter = entry("counter", "sh", ["-c", script.as_str()], 0, 1);
            match std::env::var("TLOGSIZE").ok().and_then(|n| n.parse().ok()) {
                Some(size) => vec![counter.log_size(size).log_keep(1000)],
                None => vec![counter],
            }
        }
        // Three 200 KiB lines on stdout while stderr writes short lines.
        "long" => vec![entry(
            "long",
            "python3",
            [
                "-c",
                "import os, threading, time\n\
                 stop = False\n\
                 def chatter():\n    i = 0\n    while not stop:\n        os.write(2, b'err %d\\n' % i); i += 1; time.sleep(0.0005)\n\
                 t = threading.Thread(target=chatter); t.start()\n\
                 big = bytes(97 + i % 26 for i in range(200 * 1024))\n\
                 for k in range(3):\n    os.write(1, b'BIG%d:' % k + big + b'\\n'); time.sleep(0.05)\n\
                 stop = True; t.join(); os.write(1, b'done\\n'); time.sleep(1000)\n",
            ],
            0,
            1,
        )],
        // Two talkers: one log is planted as a symbolic link by the test.
        "logs" => vec![
            entry("linked", "sh", ["-c", "echo hello from linked; exec sleep 1000"], 0, 1),
            entry("plain", "sh", ["-c", "echo hello from plain; exec sleep 1000"], 0, 1),
        ],
        // A child that ignores the stop signal.
        "stubborn" => vec![entry("stubborn", "sh", ["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"], 0, 1)
            .stop_timeout(Duration::from_millis(1500))],
        // A child that leaves a member of its process group behind.
        "leftover" => vec![entry("parent", "sh", ["-c", "sleep 1000 & echo \"left $!\"; sleep 0.5; exit 0"], 60_000, 1)],
        // Children's environment and process state.
        "env" => vec![entry("probe", "sleep", ["1000"], 0, 1).env("GREETING", "hello world").cwd("/tmp")],
        // How a command is found and started (tests/spawn.rs). TBIN holds
        // `tsleep` (a copy of sleep), `badinterp` (`#!` a missing
        // interpreter), `script` (no `#!`), and `noexec/` a non-executable
        // `tsleep` and `tdenied`: execvp's search skips what it may not run.
        "spawn-path" => {
            let bin = std::env::var("TBIN").unwrap_or_default();
            vec![
                entry("found", "tsleep", ["1000"], 0, 1).env("PATH", &format!("/nonexistent:{bin}/noexec:{bin}")),
                entry("echo", "sh", ["-c", "echo hello from $SENTRY_INDEX; exec sleep 1000"], 0, 2),
                entry("denied", "tdenied", ["1000"], 60_000, 1).env("PATH", &format!("{bin}/noexec")),
                // Failures only the child meets, after the clone.
                entry("nowhere", "sleep", ["1000"], 60_000, 1).cwd("/nonexistent-sentry-dir"),
                entry("badinterp", &format!("{bin}/badinterp"), ["1000"], 60_000, 1),
                // A script without `#!`: run by /bin/sh, as execvp does.
                entry("script", &format!("{bin}/script"), [] as [&str; 0], 60_000, 1),
            ]
        }
        // Measurements: N sleepers (N from TCOUNT), and a restart-latency probe.
        "many" => {
            let n = std::env::var("TCOUNT").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
            vec![entry("sleepers", "sleep", ["100000"], 0, n)]
        }
        "latency" => vec![entry(
            "probe",
            "sh",
            ["-c", "echo start $(date +%s%N); sleep 1.1; echo end $(date +%s%N)"],
            0,
            1,
        )],
        // Credentials (the tests run as root).
        // TUSER: a user with supplementary groups, if the machine has one.
        "user" => {
            let member = std::env::var("TUSER").unwrap_or_else(|_| "nobody".to_string());
            vec![
                entry("as-nobody", "sleep", ["1000"], 0, 1).user("nobody").group("nogroup"),
                entry("as-ghost", "sleep", ["1000"], 0, 1).user("no-such-user-here"),
                entry("as-member", "sleep", ["1000"], 0, 1).user(member.as_str()).env("LOGNAME", "from-env"),
            ]
        }
        // Watches of processes the tests start, told apart by TMARK.
        "watch" => {
            let m = std::env::var("TMARK").unwrap_or_else(|_| "unset".to_string());
            let fast = Duration::from_millis(200);
            vec![
                // Sentry's own child, matched by the pattern of the watch below.
                entry("own", "python3", ["-c", "import time; time.sleep(1000)", &format!("own-{m}")], 0, 1),
                watch("mine", format!("own-{m}")).every(fast).on("vmem > 1m", "term"),
                watch("hog", format!("hog-{m}")).every(fast).on("rmem > 50m", "term"),
                watch("killer", format!("kill-{m}")).every(fast).on("50m < rmem", "kill"),
                watch("stopper", format!("stop-{m}")).every(fast).on("rmem > 50m", "stop @ 3s"),
                watch("runner", format!("exec-{m}")).every(fast).on("rmem > 50m", "exec @ 2s /bin/echo fired $NAME $PID $RMEM"),
                watch("once", format!("once-{m}")).every(fast).on("rmem > 50m", "exec /bin/echo crossing $PID"),
                watch("family", format!("family-{m}")).every(fast).children(true).on("rmem > 50m", "term"),
                watch("quoted", format!("inject-{m}")).every(fast).on("vmem > 1m", r#"exec /bin/echo "cmdline: $CMDLINE""#),
                // A process whose command name is not UTF-8 (cut mid-character).
                watch("cyrillic", format!("mon-{m}.*/мониторинг")).every(fast).on("vmem > 1m", "term"),
                // Matches the shell that started Sentry: an ancestor, never acted on.
                watch("elder", format!("anc-{m}")).every(fast).on("vmem > 1m", "term"),
            ]
        }
        // Five `exec` rules on huge-vmem processes marked cap-TMARK, each
        // helper a sleep whose length names its rule (21 to 25 s).
        "capped" => {
            let m = std::env::var("TMARK").unwrap_or_else(|_| "unset".to_string());
            let triggers = ["vmem > 4g", "vmem > 5g", "vmem > 6g", "vmem >= 4g", "4g < vmem"];
            let mut w = watch("capped", format!("cap-{m}")).every(Duration::from_millis(200));
            for (i, t) in triggers.iter().enumerate() {
                w = w.on(*t, format!("exec sleep {}", 21 + i).as_str());
            }
            vec![w]
        }
        // An entry that restarts itself when it grows.
        "fat" => vec![entry("fat", "python3", ["-c", "x = b'x' * (60 * 2**20)\nimport time\ntime.sleep(1000)"], 0, 1)
            .on("rmem > 30m", "restart")],
        // Tree memory (tests/treemem.rs): a small parent whose three
        // children hold 100 MiB each, watched by its marker (TMARK) on its
        // command line; the rmem rule must never fire, the treemem one must.
        "treemem-watch" => {
            let m = std::env::var("TMARK").unwrap_or_else(|_| "unset".to_string());
            vec![watch("tree", format!("treemem-{m}"))
                .every(Duration::from_millis(200))
                .on("rmem > 200m", "kill")
                .on("treemem > 200m", "term")]
        }
        // The same family as an entry's process: restarted by its treemem rule.
        "treemem-entry" => vec![entry("family", "python3", ["-c", FAMILY], 0, 1)
            .on("rmem > 200m", "kill")
            .on("200m < treemem", "restart")],
        // A small leader whose memory sits in a daemon it double-forked
        // (setsid, reparented away from it): only the slot's cgroup still
        // counts the daemon as the leader's tree. Marked by TMARK.
        "treemem-daemon" => {
            let m = std::env::var("TMARK").unwrap_or_else(|_| "unset".to_string());
            let daemon = format!(
                "import os, sys, time\n\
                 if os.fork(): os._exit(0)\n\
                 os.setsid()\n\
                 if os.fork(): os._exit(0)\n\
                 x = bytearray(300 * 2**20)\n\
                 for i in range(0, len(x), 4096): x[i] = 1\n\
                 time.sleep(1000)  # daemon-{m}\n"
            );
            vec![entry("daemon", "sh", ["-c", &format!("python3 -c '{daemon}' daemon-{m}; exec sleep 1000")], 0, 1)
                .on("treemem > 200m", "restart")]
        }
        // Watches restricted to the cgroup TCGROUP (a leaf name the test made
        // under the cgroup v2 mount): by marker and cgroup, and by cgroup alone.
        "cgroup-watch" => {
            let m = std::env::var("TMARK").unwrap_or_else(|_| "unset".to_string());
            let cg = std::env::var("TCGROUP").unwrap_or_else(|_| "no-such-cgroup-anywhere".to_string());
            let fast = Duration::from_millis(200);
            vec![
                watch("scoped", format!("cgwatch-{m}")).cgroup(format!("/{cg}$")).every(fast).on("vmem > 1m", "term"),
                watch("bycg", "").cgroup(format!("/{cg}$")).every(fast).on("vmem > 1m", "exec @ 1s /bin/echo bycg $PID"),
            ]
        }
        // Exact stops and restarts (tests/exact.rs).
        // Five processes in one group, all gone at once on SIGTERM.
        "workers" => vec![entry(
            "workers",
            "bash",
            ["-c", "for i in 1 2 3 4; do sleep 1000 & done; exec sleep 1000"],
            500,
            1,
        )],
        // A launcher whose server (TSRV, port TPORT) drains for 3 s on SIGTERM.
        "drain" => vec![entry("srv", "bash", ["-c", "trap 'exit 0' TERM; python3 -u \"$TSRV\" & wait"], 0, 1)],
        // A leader that exits at once, leaving a member that ignores SIGTERM
        // and ends by itself after 0.7 s.
        "linger" => vec![entry("linger", "sh", ["-c", "echo leader $$; sh -c 'trap \"\" TERM; exec sleep 0.7' & exit 0"], 60_000, 1)
            .stop_timeout(Duration::from_secs(4))],
        // First run: a descendant escapes the group with the pipes (3 s), the
        // leader fails; later runs stay up (TFLAG marks the first run).
        "escape-once" => vec![entry(
            "escape",
            "sh",
            ["-c", "echo leader $$; if [ -e \"$TFLAG\" ]; then exec sleep 1000; fi; touch \"$TFLAG\"; setsid sh -c 'sleep 3' & sleep 0.2; exit 1"],
            1000,
            1,
        )],
        // An escaping descendant at every run (runs of 1.2 s: no back-off).
        "escape-always" => vec![entry("escape", "sh", ["-c", "setsid sleep 1000 & sleep 1.2; exit 1"], 0, 1)],
        // A member of the group that outlives its leader's SIGKILLed supervisor.
        "orphans" => vec![entry("orphans", "sh", ["-c", "sleep 1000 & echo member $!; exec sleep 1000"], 0, 1)],
        // Short-lived processes, a failing spawn, a stubborn one (status fields, shutdown).
        "exits" => vec![
            entry("code", "sh", ["-c", "sleep 0.3; exit 3"], 60_000, 1),
            entry("signal", "sh", ["-c", "sleep 0.3; kill -9 $$"], 60_000, 1),
            entry("ghost", "/nonexistent/program", [], 0, 1),
            entry("slow", "sh", ["-c", "trap 'echo stopping; sleep 2; exit 0' TERM; while :; do sleep 0.1; done"], 0, 1),
        ],
        // Takes 17 s to stop, within its 30 s stop timeout.
        "slowstop" => vec![entry("slowstop", "sh", ["-c", "trap 'sleep 17; exit 0' TERM; echo ready; while :; do sleep 0.1; done"], 0, 1)
            .stop_timeout(Duration::from_secs(30))],
        // A shutdown that takes a while: TERM is ignored, SIGKILL comes after 3 s.
        "deafstop" => vec![
            entry("idle", "sleep", ["1000"], 0, 2),
            entry("deaf", "sh", ["-c", "trap '' TERM; while :; do sleep 0.2; done"], 0, 1)
                .stop_timeout(Duration::from_secs(3)),
        ],
        "frozen" => vec![entry("frozen", "sleep", ["1000"], 0, 1).stop_timeout(Duration::from_millis(500))],
        // tests/fence.rs: children that try to leave their cgroup, given the
        // cgroup v2 mount in TCGMOUNT. A leader that moves itself up into
        // the instance's own cgroup (root may):
        "fence-escape" => {
            let mount = std::env::var("TCGMOUNT").unwrap_or_else(|_| "/sys/fs/cgroup".to_string());
            let script = format!(
                "cg=$(sed -n 's/^0:://p' /proc/self/cgroup); echo $$ > {mount}${{cg%/*/*}}/cgroup.procs && exec sleep 1000"
            );
            vec![entry("escape", "sh", ["-c", script.as_str()], 0, 1)]
        }
        // A child that makes a cgroup of its own inside its leaf and moves
        // there; it says when it is ready and when SIGTERM reaches it.
        "fence-nest" => {
            let mount = std::env::var("TCGMOUNT").unwrap_or_else(|_| "/sys/fs/cgroup".to_string());
            let inner = "import os, signal, sys, time\n\
                 d = sys.argv[1]\n\
                 os.mkdir(d)\n\
                 open(d + '/cgroup.procs', 'w').write(str(os.getpid()))\n\
                 signal.signal(signal.SIGTERM, lambda *a: (print('inner-term', flush=True), sys.exit(0)))\n\
                 print('inner-ready', flush=True)\n\
                 time.sleep(1000)\n";
            let script = format!(
                "cg=$(sed -n 's/^0:://p' /proc/self/cgroup); python3 -c \"{inner}\" {mount}$cg/inner & exec sleep 1000"
            );
            vec![entry("nest", "sh", ["-c", script.as_str()], 0, 1)]
        }
        // A leader that moves itself into a cgroup it makes inside its
        // leaf, beside a sleeper that stays in the leaf.
        "fence-sub" => {
            let mount = std::env::var("TCGMOUNT").unwrap_or_else(|_| "/sys/fs/cgroup".to_string());
            let script = format!(
                "cg=$(sed -n 's/^0:://p' /proc/self/cgroup); sleep 1000 & mkdir {mount}$cg/sub && echo $$ > {mount}$cg/sub/cgroup.procs && echo moved && exec sleep 1000"
            );
            vec![entry("sub", "sh", ["-c", script.as_str()], 0, 1)]
        }
        // Processes whose stop takes the whole stop timeout (TERM ignored,
        // a child that outlives the leader): TSTOP seconds, 3 by default.
        "fence-slow" => {
            let secs: u64 = std::env::var("TSTOP").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
            vec![entry("t", "sh", ["-c", "trap '' TERM; sleep 100000 & wait"], 0, 2).stop_timeout(Duration::from_secs(secs))]
        }
        // An entry whose process daemonizes a marked sleep (TMARK), and a
        // watch on that marker: Sentry's own daemon must never match.
        "fence-spare" => {
            let m = std::env::var("TMARK").unwrap_or_else(|_| "unset".to_string());
            let script = format!("(setsid python3 -c 'import time; time.sleep(7777)' spare-{m} &); exec sleep 100000");
            vec![
                entry("dbl", "sh", ["-c", script.as_str()], 500, 1),
                watch("w", format!("spare-{m}")).every(Duration::from_millis(200)).on("rmem > 1k", "term"),
            ]
        }
        // An entry rule whose action is an `exec` helper: the helper is the
        // entry's (SENTRY_ENTRY) but no slot's, and must not fire the rule.
        "fence-helper" => vec![entry("hog", "sleep", ["1000"], 0, 1).on("rmem > 1k", "exec @ 1s sleep 3")],
        // cgroup containment (tests/containment.rs). TSRV is a copy of
        // `sleep` (a "server" the tests find by its executable).
        // A launcher that starts a `setsid` double-fork daemon (TSRV, no
        // pipes of Sentry's) and a plain member of its group, then stays.
        "cg-daemon" => vec![entry(
            "daemon",
            "sh",
            [
                "-c",
                r#"echo launcher $$; setsid sh -c '"$TSRV" 1000 </dev/null >/dev/null 2>&1 & echo daemon $!'; sleep 1000 & echo member $!; exec sleep 1000"#,
            ],
            0,
            1,
        )],
        // `run.sh start`: backgrounds a detached server (setsid TSRV), lives
        // 1.2 s (not a crash: no back-off) and exits 0.
        "cg-launcher" => vec![entry(
            "app",
            "sh",
            ["-c", r#"echo launcher $$; setsid "$TSRV" 1000 </dev/null >/dev/null 2>&1 & echo server $!; sleep 1.2; exit 0"#],
            0,
            1,
        )],
        // A leader with three background sleeps (one of them TSRV, in a
        // session of its own): four processes per slot, two slots.
        "cg-tree" => vec![entry(
            "fam",
            "sh",
            ["-c", r#"sleep 1000 & sleep 1000 & setsid "$TSRV" 1000 & echo started; wait"#],
            0,
            2,
        )],
        // Plain sleepers: a pool to scale and a single one.
        "cg-pool" => vec![
            entry("pool", "sleep", ["1000"], 0, 2),
            entry("solo", "sh", ["-c", "echo solo $$; exec sleep 1000"], 0, 1),
        ],
        // One slot restarted at once, each process saying its PID (tests/containment.rs).
        "cg-again" => vec![entry("again", "sh", ["-c", "echo run $$; exec sleep 1000"], 0, 1)
        .stop_timeout(Duration::from_millis(500))],
        // A process frozen by the test (cgroup v1 freezer) outlives cgroup.kill.
        "cg-frozen" => vec![entry("frozen", "sleep", ["1000"], 0, 1).stop_timeout(Duration::from_millis(500))],
        // `cargo xtask soak`, one scenario per phase (xtask/src/soak).
        // Kill storm: TCOUNT sleepers (default 5), restarted at once.
        "soak-kill" => {
            let n = std::env::var("TCOUNT").ok().and_then(|n| n.parse().ok()).unwrap_or(5);
            vec![entry("victim", "sleep", ["100000"], 0, n)]
        }
        // Reload storm: numbered lines `seq=N`, TRATE a second (default 2 000),
        // one write each, paced by the clock.
        "soak-reload" => {
            let rate = std::env::var("TRATE").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(2000);
            let script = format!(
                "import os, time\n\
                 t0 = time.monotonic(); i = 0\n\
                 while True:\n    due = int((time.monotonic() - t0) * {rate})\n    \
                 while i < due:\n        os.write(1, b'seq=%d\\n' % i); i += 1\n    time.sleep(0.002)\n"
            );
            vec![entry("writer", "python3", ["-c", script.as_str()], 0, 1)]
        }
        // Rotation: TLINES numbered lines (default 30 000) at TRATE lines/s
        // (default 6 000), then `done`; the log rotates every 64 KiB and
        // keeps every file.
        "rotate" => {
            let lines: u64 = std::env::var("TLINES").ok().and_then(|n| n.parse().ok()).unwrap_or(30_000);
            let rate: u64 = std::env::var("TRATE").ok().and_then(|n| n.parse().ok()).unwrap_or(6_000);
            let script = format!(
                "import os, time\n\
                 t0 = time.monotonic(); i = 0\n\
                 while i < {lines}:\n    due = min({lines}, int((time.monotonic() - t0) * {rate}) + 1)\n    \
                 while i < due:\n        os.write(1, b'seq=%d\\n' % i); i += 1\n    time.sleep(0.002)\n\
                 os.write(1, b'done\\n')\ntime.sleep(100000)\n"
            );
            vec![entry("writer", "python3", ["-c", script.as_str()], 0, 1).log_size(64 * 1024).log_keep(1000)]
        }
        // Control storm: a pool scaled by requests.
        "soak-control" => vec![entry("pool", "sleep", ["100000"], 0, 2)],
        // Churn: scaled 0 <-> 200 by the soak.
        "soak-churn" => vec![entry("churn", "sleep", ["100000"], 0, 0)],
        // `cargo xtask bench` (xtask/src/bench): TCOUNT copies (default 1)
        // of the bench's stamping program TSTAMP, which appends its PID and
        // CLOCK_MONOTONIC to TSTAMPFILE and sleeps; restarted at once.
        "bench-stamp" => {
            let n = std::env::var("TCOUNT").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
            match (std::env::var("TSTAMP"), std::env::var("TSTAMPFILE")) {
                (Ok(program), Ok(file)) => vec![entry("stamp", program.as_str(), [file.as_str()], 0, n)],
                _ => vec![entry("stamp", "sleep", ["100000"], 0, n)],
            }
        }
        // `cargo xtask bench`'s watch figures: one watch on the processes
        // whose command line matches TPATTERN, every TEVERY ms, that sends
        // SIGTERM to one above 32 MiB.
        "bench-watch" => {
            let pattern = std::env::var("TPATTERN").unwrap_or_else(|_| "^bench-hog-none$".to_string());
            let every = std::env::var("TEVERY").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
            vec![watch("hog", pattern.as_str()).every(Duration::from_millis(every)).on("rmem > 32m", "term")]
        }
        // Every kind of mistake at once.
        "invalid" => vec![
            entry("bad name!", "sleep", ["1"], 0, 1),
            entry("twice", "", [], 0, 1),
            watch("twice", "(unclosed").stop_timeout(Duration::from_secs(1)),
            entry("toomany", "sleep", ["1"], 0, 1_000_000).on("rss > 1g", "stop"),
            watch("w", "x").on("rmem > 1g", "restart").on("rmem > 1x", "term").on("rmem > 1g", "exec @ 5 echo")
                .on("rmem > 1g", "exec echo $FOO").on("cpu > 90", "term"),
        ],
        // Health, order and limits (tests/health.rs). TPORT: a free port;
        // TSIDE: a file each entry appends its name to when asked to stop.
        "order" => {
            let port = std::env::var("TPORT").unwrap_or_else(|_| "1".to_string());
            let fast = |p: probe::Probe| p.period(Duration::from_millis(100)).timeout(Duration::from_millis(100));
            vec![
                entry("web", "sh", ["-c", &stopper("web")], 0, 1).after(["db"]),
                entry("worker", "sh", ["-c", &stopper("worker")], 0, 1).binds_to(["web"]),
                entry("db", "python3", ["-c", SLOW_DB], 0, 1).ready(fast(probe::tcp(&format!("127.0.0.1:{port}")))),
            ]
        }
        "notify" => vec![
            entry("notifier", "python3", ["-c", NOTIFIER], 0, 1)
                .ready(probe::notify())
                .watchdog(Duration::from_millis(800)),
            entry("after-notify", "sleep", ["1000"], 0, 1).after(["notifier"]),
            entry("silent", "python3", ["-c", SILENT], 0, 1).watchdog(Duration::from_millis(300)),
            entry("trigger", "python3", ["-c", TRIGGER], 0, 1).watchdog(Duration::from_secs(60)),
        ],
        "liveness" => {
            let url = format!("http://127.0.0.1:{}/health", std::env::var("TPORT").unwrap_or_else(|_| "1".into()));
            let ms = Duration::from_millis;
            vec![entry("hangs", "python3", ["-c", HANGING_HTTP], 0, 1)
                .ready(probe::http(&url).period(ms(100)).timeout(ms(100)))
                // From 1 s: a Python slow to listen on a busy machine is not "hung".
                .alive(probe::http(&url).initial_delay(ms(1000)).period(ms(200)).timeout(ms(150)).failures(2))]
        }
        "probe-fn" => {
            let ms = Duration::from_millis;
            vec![
                entry("panicky", "sleep", ["1000"], 0, 1)
                    .ready(probe::func(|| panic!("a bug in the probe")).period(ms(100)).timeout(ms(100))),
                entry("stuck", "sleep", ["1000"], 0, 1).alive(
                    probe::func(|| loop {
                        std::thread::park();
                    })
                    .period(ms(200))
                    .timeout(ms(100))
                    .failures(2),
                ),
            ]
        }
        // Limits and exit codes. $TSTAGE (a file) holding 2 changes `flap`.
        "flap" => {
            let stage = std::env::var("TSTAGE").ok().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
            let minute = Duration::from_secs(60);
            let flap = entry("flap", "sh", ["-c", "exit 1"], 0, 1).give_up(3, minute);
            vec![
                if stage.trim() == "2" { flap.env("CHANGED", "yes") } else { flap },
                entry("codes", "sh", ["-c", "exit 143"], 0, 1).restart(Restart::OnFailure).success_codes([0, 143]),
                entry("finish", "sh", ["-c", "exit 125"], 0, 1).stop_codes([125]),
                entry("slow-flap", "sh", ["-c", "exit 1"], 3000, 1).give_up(3, minute),
                entry("missing", "/nonexistent/program", [], 0, 1).give_up(3, minute),
                entry("steady", "sleep", ["1000"], 0, 1).give_up(2, minute),
                entry("oneshot", "sh", ["-c", "exit 0"], 0, 1).restart(Restart::OnFailure),
                entry("after-oneshot", "sleep", ["1000"], 0, 1).after(["oneshot"]),
            ]
        }
        // The configuration in three stages ($TSTAGE holds 1, 2 or 3), for
        // reloads that add and remove dependencies. TGO: gate listens once
        // this file exists.
        "staged" => {
            let stage = std::env::var("TSTAGE").ok().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
            let port = std::env::var("TPORT").unwrap_or_else(|_| "1".to_string());
            let ms = Duration::from_millis;
            let gate = entry("gate", "python3", ["-c", GATE], 0, 1)
                .ready(probe::tcp(&format!("127.0.0.1:{port}")).period(ms(100)).timeout(ms(100)));
            match stage.trim() {
                "1" => vec![entry("app", "sleep", ["1000"], 0, 1)],
                "2" => vec![
                    entry("app", "sleep", ["1001"], 0, 1).after(["gate"]),
                    gate,
                    entry("late", "sh", ["-c", &stopper("late")], 0, 1).after(["gate"]),
                ],
                _ => vec![entry("app", "sleep", ["1001"], 0, 1)],
            }
        }
        // An exec probe that says who it runs as in $TSIDE and leaves an
        // escaped process behind at every check.
        "exec-probe" => vec![entry("probed", "sleep", ["1000"], 0, 1).user("nobody").ready(
            probe::exec("sh", ["-c", "id -u > \"$TSIDE\"; setsid sleep 7777.25 & exit 0"])
                .period(Duration::from_millis(200))
                .timeout(Duration::from_millis(150)),
        )],
        "cycle" => vec![
            entry("a", "sleep", ["1"], 0, 1).after(["b"]),
            entry("b", "sleep", ["1"], 0, 1).binds_to(["c"]),
            entry("c", "sleep", ["1"], 0, 1).after(["a"]),
        ],
        other => {
            eprintln!("tconf: unknown scenario {other:?}");
            std::process::exit(3)
        }
    }
}

/// A shell loop that appends NAME to $TSIDE when asked to stop.
fn stopper(name: &str) -> String {
    format!("trap 'echo {name} >> \"$TSIDE\"; exit 0' TERM; while :; do sleep 0.05; done")
}

/// A server that takes 3 s to listen on $TPORT, and says `db` in $TSIDE when asked to stop.
const SLOW_DB: &str = r#"import os, signal, socket, sys, time
def bye(*_):
    open(os.environ['TSIDE'], 'a').write('db\n'); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
time.sleep(3)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(os.environ['TPORT']))); s.listen(64)
while True:
    c, _ = s.accept(); c.close()
"#;

/// Listens on $TPORT once $TGO exists; says `gate` in $TSIDE when asked to stop.
const GATE: &str = r#"import os, signal, socket, sys, time
def bye(*_):
    open(os.environ['TSIDE'], 'a').write('gate\n'); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
while not os.path.exists(os.environ['TGO']):
    time.sleep(0.05)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(os.environ['TPORT']))); s.listen(64)
while True:
    c, _ = s.accept(); c.close()
"#;

/// Says READY=1 after a second, then WATCHDOG=1 every 100 ms (sd_notify(3)).
const NOTIFIER: &str = r#"import os, socket, time
a = os.environ['NOTIFY_SOCKET']
a = '\0' + a[1:] if a.startswith('@') else a
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
time.sleep(1)
s.sendto(b'STATUS=up\nREADY=1', a)
while True:
    time.sleep(0.1); s.sendto(b'WATCHDOG=1', a)
"#;

/// Sends one keep-alive, then none.
const SILENT: &str = r#"import os, socket, time
a = os.environ['NOTIFY_SOCKET']
a = '\0' + a[1:] if a.startswith('@') else a
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'WATCHDOG=1', a)
time.sleep(1000)
"#;

/// Asks to be treated as hung (WATCHDOG=trigger) once, then waits.
const TRIGGER: &str = r#"import os, socket, time
a = os.environ['NOTIFY_SOCKET']
a = '\0' + a[1:] if a.startswith('@') else a
time.sleep(0.3)
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'WATCHDOG=trigger', a)
time.sleep(1000)
"#;

/// An HTTP server on $TPORT whose answers hang from 2 s after its start.
const HANGING_HTTP: &str = r#"import http.server, os, time
start = time.time()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if time.time() - start > 2: time.sleep(1000)
        self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['TPORT'])), H).serve_forever()
"#;

fn main() {
    let scenario = std::env::var("TCONF").unwrap_or_else(|_| "basic".to_string());
    sentry(specs(&scenario));
}
