//! `cargo xtask bench [--quick]`: Sentry against the floor — a ~60-line C
//! fork/exec/waitpid loop compiled in the same run — and against the peers
//! installed (runit, daemontools, supervisord), all running the same tiny
//! C child that stamps its PID and CLOCK_MONOTONIC into a file as its first
//! action. Sentry is `tconf`'s `bench-stamp` scenario, built in release.
//!
//! Figures, each over repeated samples (min / median / max): crash →
//! respawn with delay 0, 100 killed at once → all back, bring-up of 1, 100
//! and 1 000 children, the supervisor's RSS and PSS at those counts, idle
//! CPU and context switches with 100 children, and the reload pause Sentry
//! prints itself (`Handover took`) beside the floor of a re-exec with a
//! thread per child (N threads ended by an `execve` and made again). The respawn, mass
//! and idle samples are taken in three rounds, each supervisor in turn, so
//! that a slower minute of a shared machine weighs on all. A table on stdout,
//! JSON under `<target>/bench/`. Never run by `cargo test`: nothing here
//! is asserted.

mod programs;
mod targets;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::soak::harness::{stat, Outcome};
use targets::{is_stamp, launch, Ctx, Kind, Running};

pub const USAGE: &str = "usage: cargo xtask bench [--quick] [--no-peers] [--only GROUP,…]\n  \
    --quick     fewer samples, idle over 5 s, no reload at 1 000 children (a few minutes)\n  \
    --no-peers  measure only the floor and Sentry\n  \
    --only      measure only these groups: respawn, mass (with idle), bringup, reload, watch\n\
    Sentry inherits the environment: SENTRY_CONTAINMENT=process-group measures it without cgroups.";

/// How many samples of what. `--quick` is a smoke run.
struct Plan {
    respawns: usize,
    mass: usize,
    /// (children, samples) of the bring-up figures (memory is read there too).
    bringups: Vec<(usize, usize)>,
    idle: Duration,
    idle_samples: usize,
    /// (children, samples) of the reload pause.
    reloads: Vec<(usize, usize)>,
    /// Windows over which a scan's CPU is measured, and how long each is.
    scan_windows: usize,
    scan_window: Duration,
    /// Threshold crossings timed.
    triggers: usize,
}

fn plan(quick: bool) -> Plan {
    if quick {
        Plan {
            respawns: 7,
            mass: 3,
            bringups: vec![(1, 3), (100, 3), (1000, 3)],
            idle: Duration::from_secs(5),
            idle_samples: 1,
            reloads: vec![(10, 3), (100, 3)],
            scan_windows: 3,
            scan_window: Duration::from_secs(2),
            triggers: 5,
        }
    } else {
        Plan {
            respawns: 31,
            mass: 9,
            bringups: vec![(1, 5), (100, 7), (1000, 5)],
            idle: Duration::from_secs(30),
            idle_samples: 3,
            reloads: vec![(10, 7), (100, 7), (1000, 5)],
            scan_windows: 7,
            scan_window: Duration::from_secs(5),
            triggers: 15,
        }
    }
}

/// Children killed at once in the mass respawn; children while idle.
const MASS: usize = 100;
const IDLE_CHILDREN: usize = 100;
/// A child is killed only once it has run this long: Sentry counts a
/// shorter run as a crash and backs off (`lifecycle::CRASH_RUN`, 1 s).
const KILL_AGE_NS: u64 = 1_050_000_000;
/// Time given to a supervisor whose children have all stamped, before its
/// memory is read or an idle window starts.
const SETTLE: Duration = Duration::from_secs(1);

/// Samples by figure, then by target; figures in the order measured.
#[derive(Default)]
struct Results {
    order: Vec<(String, &'static str)>,
    samples: HashMap<String, BTreeMap<&'static str, Vec<f64>>>,
    errors: Vec<String>,
    notes: Vec<String>,
}

impl Results {
    fn add(&mut self, figure: &str, unit: &'static str, target: Kind, value: f64) {
        if !self.order.iter().any(|(f, _)| f == figure) {
            self.order.push((figure.to_string(), unit));
        }
        self.samples.entry(figure.to_string()).or_default().entry(target.name()).or_default().push(value);
    }

    fn error(&mut self, target: Kind, what: &str, e: String) {
        let line = format!("{} {what}: {e}", target.name());
        eprintln!("bench: {line}");
        self.errors.push(line);
    }
}

pub fn main(args: &[String]) -> Result<(), String> {
    let mut quick = false;
    let mut peers_wanted = true;
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-peers" => peers_wanted = false,
            "--only" => {
                let groups: Vec<String> =
                    it.next().ok_or("--only needs a value")?.split(',').map(|g| g.trim().to_string()).collect();
                if let Some(bad) = groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                    return Err(format!("unknown group {bad:?} (one of {})\n{USAGE}", GROUPS.join(", ")));
                }
                only = Some(groups);
            }
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    let plan = plan(quick);
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let work = std::env::temp_dir().join(format!("sentry-bench-{}-{}", std::process::id(), nonce.as_nanos()));
    fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let wanted = |g: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == g));
    let outcome = run(&plan, quick, peers_wanted, &wanted, &work, nonce.as_secs());
    let _ = fs::remove_dir_all(&work);
    outcome
}

/// In how many interleaved rounds the respawn, mass and idle samples are taken.
const ROUNDS: usize = 3;

/// Round `round`'s part of `total` samples (the first rounds take the rest).
fn share(total: usize, round: usize) -> usize {
    total / ROUNDS + usize::from(round < total % ROUNDS)
}

/// The groups of figures `--only` chooses from.
const GROUPS: [&str; 5] = ["respawn", "mass", "bringup", "reload", "watch"];

fn run(
    plan: &Plan,
    quick: bool,
    peers_wanted: bool,
    wanted: &dyn Fn(&str) -> bool,
    work: &Path,
    unix: u64,
) -> Result<(), String> {
    let progs = programs::build(work)?;
    println!(
        "bench: floor and child compiled with cc -O2 (child linked {})",
        if progs.static_stamp { "statically" } else { "dynamically" }
    );
    let (tconf, target_dir) = build_tconf_release()?;
    println!("bench: {} (release)", tconf.display());
    let ctx = Ctx {
        stamp: progs.stamp,
        floor: progs.floor,
        scan: progs.scan,
        hog: progs.hog,
        rethread: progs.rethread,
        tconf,
        work: work.to_path_buf(),
    };
    let (mut kinds, missing) = if peers_wanted { targets::peers() } else { (Vec::new(), Vec::new()) };
    for m in &missing {
        println!("bench: peer {m}");
    }
    kinds.insert(0, Kind::Sentry);
    kinds.insert(0, Kind::Floor);
    let mut res = Results::default();
    let mut reload_lines = Vec::new();
    let t0 = Instant::now();
    // The timed figures in rounds, each supervisor in turn: a machine that
    // is slower for a minute slows every one of them, not one alone.
    for round in 0..ROUNDS {
        for &kind in &kinds {
            println!("bench: round {}/{ROUNDS}: {} …", round + 1, kind.name());
            if wanted("respawn") {
                respawn(&ctx, kind, share(plan.respawns, round), &mut res);
            }
            if wanted("mass") {
                mass_and_idle(&ctx, kind, share(plan.mass, round), share(plan.idle_samples, round), plan, &mut res);
            }
        }
    }
    for &kind in &kinds {
        println!("bench: {} …", kind.name());
        if wanted("bringup") {
            bringups(&ctx, kind, plan, &mut res);
        }
        if kind == Kind::Sentry && wanted("reload") {
            reload_lines = reloads(&ctx, plan, &mut res);
        }
        if kind == Kind::Sentry && wanted("watch") {
            watches(&ctx, plan, &mut res);
        }
    }
    println!("bench: measured in {:.0} s\n", t0.elapsed().as_secs_f64());
    let names: Vec<&'static str> = kinds.iter().map(|k| k.name()).collect();
    print_table(&res, &names);
    if !reload_lines.is_empty() {
        println!("\nSentry's console around its last reload at each size:");
        for l in &reload_lines {
            println!("  {l}");
        }
    }
    for n in &res.notes {
        println!("note: {n}");
    }
    for e in &res.errors {
        println!("error: {e}");
    }
    for m in &missing {
        println!("not measured: {m}");
    }
    let json = to_json(&res, &names, &missing, &reload_lines, quick, unix, progs.static_stamp);
    let dir = target_dir.join("bench");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("bench-{unix}.json"));
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    fs::write(&path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("\nbench: wrote {}", path.display());
    if res.errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{} measurement(s) failed (see above)", res.errors.len()))
    }
}

/// `cargo build --release -p sentry-tests --bin tconf`; the binary and the
/// target directory it went to.
fn build_tconf_release() -> Result<(PathBuf, PathBuf), String> {
    let tconf = crate::soak::harness::build_tconf(true)?;
    // <target>/release/tconf
    let target = tconf.parent().and_then(Path::parent).map(Path::to_path_buf).ok_or("odd path for tconf")?;
    Ok((tconf, target))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the children stamp with.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The stamps file of one supervisor run, read as it grows.
struct Stamps {
    path: PathBuf,
    offset: u64,
    rest: Vec<u8>,
    /// Every stamp so far, in file order.
    all: Vec<(i32, u64)>,
    /// The PIDs that stamped.
    distinct: HashSet<i32>,
}

impl Stamps {
    fn new(ctx: &Ctx, what: &str) -> Stamps {
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        Stamps {
            path: ctx.work.join(format!("stamps-{what}-{nonce}")),
            offset: 0,
            rest: Vec::new(),
            all: Vec::new(),
            distinct: HashSet::new(),
        }
    }

    /// Reads what was appended since the last look.
    fn poll(&mut self) {
        let Ok(mut f) = fs::File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else { return };
        self.offset += n as u64;
        self.rest.extend_from_slice(&buf);
        while let Some(end) = self.rest.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.rest.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let mut words = text.split_whitespace();
            if let (Some(Ok(pid)), Some(Ok(ns))) = (words.next().map(str::parse), words.next().map(str::parse)) {
                self.all.push((pid, ns));
                self.distinct.insert(pid);
            }
        }
    }

    /// Stamped processes still alive (running the stamping program), each
    /// with its latest stamp.
    fn live(&mut self, ctx: &Ctx) -> Vec<(i32, u64)> {
        self.poll();
        let mut latest: HashMap<i32, u64> = HashMap::new();
        for &(pid, ns) in &self.all {
            latest.insert(pid, ns);
        }
        let mut live: Vec<(i32, u64)> = latest
            .into_iter()
            .filter(|&(pid, _)| stat(pid).is_some_and(|s| s.state != 'Z') && is_stamp(pid, &ctx.stamp))
            .collect();
        live.sort();
        live
    }

    /// Waits until `n` stamped processes are alive; them. /proc is read
    /// only once `n` PIDs have stamped, so that the bench's own polling
    /// costs the supervisor next to nothing while it starts them.
    fn wait_live(&mut self, ctx: &Ctx, n: usize, patience: Duration) -> Outcome<Vec<(i32, u64)>> {
        let deadline = Instant::now() + patience;
        loop {
            self.poll();
            let live = if self.distinct.len() >= n { self.live(ctx) } else { Vec::new() };
            if live.len() >= n {
                return Ok(live);
            }
            if Instant::now() > deadline {
                let alive = self.live(ctx).len();
                return Err(format!("only {alive} of {n} children alive after {patience:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `n` processes other than `old` stamped after `since`
    /// (looking at stamps from the `from`-th on: those read before the
    /// kill cannot be); the latest of their stamps.
    fn wait_new(&mut self, n: usize, from: usize, since: u64, old: &HashSet<i32>, patience: Duration) -> Outcome<u64> {
        let deadline = Instant::now() + patience;
        loop {
            self.poll();
            let fresh: HashMap<i32, u64> = self.all[from.min(self.all.len())..]
                .iter()
                .copied()
                .filter(|(pid, ns)| *ns >= since && !old.contains(pid))
                .collect();
            if fresh.len() >= n {
                return Ok(fresh.values().copied().max().unwrap_or(since));
            }
            if Instant::now() > deadline {
                return Err(format!("only {} of {n} replacements stamped after {patience:?}", fresh.len()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Sleeps until every process in `live` has run `KILL_AGE_NS`.
fn wait_age(live: &[(i32, u64)]) {
    let youngest = live.iter().map(|&(_, ns)| ns).max().unwrap_or(0);
    let now = mono_ns();
    if youngest + KILL_AGE_NS > now {
        std::thread::sleep(Duration::from_nanos(youngest + KILL_AGE_NS - now));
    }
}

/// SIGKILLs these stamped children at once, through pidfds opened (and the
/// processes checked) beforehand; the CLOCK_MONOTONIC time just before the
/// first signal.
fn kill_all(ctx: &Ctx, pids: &[i32]) -> Outcome<u64> {
    let mut fds = Vec::with_capacity(pids.len());
    let close = |fds: &[i32]| {
        for &fd in fds {
            // SAFETY: fds opened below, closed once.
            unsafe { libc::close(fd) };
        }
    };
    for &pid in pids {
        // SAFETY: a plain syscall on a PID.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        if fd < 0 || !is_stamp(pid, &ctx.stamp) || stat(pid).is_none_or(|s| s.state == 'Z') {
            if fd >= 0 {
                fds.push(fd);
            }
            close(&fds);
            return Err(format!("child {pid} is gone before its kill"));
        }
        fds.push(fd);
    }
    let t = mono_ns();
    for &fd in &fds {
        // SAFETY: a pidfd of a child just checked; no siginfo.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0)
        };
    }
    close(&fds);
    Ok(t)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// (1) Crash → respawn, delay 0: one child, SIGKILLed at T; the replacement's stamp − T.
fn respawn(ctx: &Ctx, kind: Kind, samples: usize, res: &mut Results) {
    if samples == 0 {
        return;
    }
    let mut stamps = Stamps::new(ctx, "respawn");
    let outcome = (|| -> Outcome<()> {
        let running = launch(kind, ctx, 1, &stamps.path)?;
        if let Some(inst) = running.sentry() {
            // How Sentry contains its children (cgroups or process groups): its start says.
            let console = fs::read_to_string(inst.dir.join("console.txt")).unwrap_or_default();
            let said = console.lines().find(|l| l.contains("Containment:"));
            res.notes.push(format!("Sentry's start said: {}", said.unwrap_or("(nothing about containment)")));
        }
        for _ in 0..samples {
            let live = stamps.wait_live(ctx, 1, Duration::from_secs(30))?;
            wait_age(&live);
            let old: HashSet<i32> = live.iter().map(|&(p, _)| p).collect();
            let from = stamps.all.len();
            let t = kill_all(ctx, &[live[0].0])?;
            let back = stamps.wait_new(1, from, t, &old, Duration::from_secs(30))?;
            res.add("crash → respawn, delay 0", "ms", kind, ms(back - t));
        }
        drop(running);
        Ok(())
    })();
    if let Err(e) = outcome {
        res.error(kind, "respawn", e);
    }
}

/// (2) 100 children SIGKILLed at once → all replacements stamped; then
/// (5) idle CPU and context switches of the supervisor with 100 children.
fn mass_and_idle(ctx: &Ctx, kind: Kind, mass: usize, idle_samples: usize, plan: &Plan, res: &mut Results) {
    if mass + idle_samples == 0 {
        return;
    }
    let mut stamps = Stamps::new(ctx, "mass");
    let outcome = (|| -> Outcome<()> {
        let running = launch(kind, ctx, MASS.max(IDLE_CHILDREN), &stamps.path)?;
        let secs = plan.idle.as_secs();
        for _ in 0..idle_samples {
            stamps.wait_live(ctx, IDLE_CHILDREN, Duration::from_secs(60))?;
            std::thread::sleep(SETTLE);
            let (cpu, switches) = idle(&running, ctx, plan.idle);
            res.add(&format!("idle CPU, {IDLE_CHILDREN} children, {secs} s"), "ms", kind, cpu);
            res.add(&format!("idle context switches, {IDLE_CHILDREN} children, {secs} s"), "", kind, switches);
        }
        for _ in 0..mass {
            let live = stamps.wait_live(ctx, MASS, Duration::from_secs(60))?;
            wait_age(&live);
            let old: HashSet<i32> = live.iter().map(|&(p, _)| p).collect();
            let pids: Vec<i32> = live.iter().map(|&(p, _)| p).take(MASS).collect();
            let from = stamps.all.len();
            let t = kill_all(ctx, &pids)?;
            let back = stamps.wait_new(pids.len(), from, t, &old, Duration::from_secs(60))?;
            res.add(&format!("{MASS} SIGKILLed at once → all back"), "ms", kind, ms(back - t));
        }
        drop(running);
        Ok(())
    })();
    if let Err(e) = outcome {
        res.error(kind, "mass respawn / idle", e);
    }
}

/// CPU time (utime + stime, ms) and context switches (voluntary and not,
/// of every thread) of the supervisor's processes over `window`.
fn idle(running: &Running, ctx: &Ctx, window: Duration) -> (f64, f64) {
    let pids = running.supervisors(&ctx.stamp);
    let before: Vec<(u64, u64)> = pids.iter().map(|&p| cost(p)).collect();
    std::thread::sleep(window);
    let after: Vec<(u64, u64)> = pids.iter().map(|&p| cost(p)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = before.iter().zip(&after).map(|(b, a)| a.0.saturating_sub(b.0)).sum();
    let switches: u64 = before.iter().zip(&after).map(|(b, a)| a.1.saturating_sub(b.1)).sum();
    (ticks as f64 * 1000.0 / hz, switches as f64)
}

/// (utime + stime in clock ticks, context switches summed over threads).
fn cost(pid: i32) -> (u64, u64) {
    let ticks = fs::read(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|b| {
            let rest = b.get(b.iter().rposition(|&c| c == b')')? + 2..)?.to_vec();
            let f: Vec<u64> =
                String::from_utf8_lossy(&rest).split_whitespace().map(|w| w.parse().unwrap_or(0)).collect();
            Some(f.get(11)? + f.get(12)?)
        })
        .unwrap_or(0);
    let mut switches = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let text = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in text.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    (ticks, switches)
}

/// RSS and PSS (KiB) of these processes, from `smaps_rollup`.
fn memory(pids: &[i32]) -> (u64, u64) {
    let mut rss = 0;
    let mut pss = 0;
    for pid in pids {
        let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        for line in text.lines() {
            let value = |l: &str| l.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if let Some(v) = line.strip_prefix("Rss:") {
                rss += value(v);
            } else if let Some(v) = line.strip_prefix("Pss:") {
                pss += value(v);
            }
        }
    }
    (rss, pss)
}

/// (3) Bring-up of N children, from the supervisor's start to the last
/// stamp; (4) its RSS and PSS once they all run.
fn bringups(ctx: &Ctx, kind: Kind, plan: &Plan, res: &mut Results) {
    for &(n, samples) in &plan.bringups {
        for _ in 0..samples {
            let mut stamps = Stamps::new(ctx, "bringup");
            let outcome = (|| -> Outcome<()> {
                let t = mono_ns();
                let running = launch(kind, ctx, n, &stamps.path)?;
                let patience = Duration::from_secs(60 + n as u64 / 5);
                let live = stamps.wait_live(ctx, n, patience)?;
                let last = live.iter().map(|&(_, ns)| ns).max().unwrap_or(t);
                res.add(&format!("bring-up of {n}"), "ms", kind, ms(last.saturating_sub(t)));
                std::thread::sleep(SETTLE);
                let (rss, pss) = memory(&running.supervisors(&ctx.stamp));
                let at = if n == 1 { "1 child".to_string() } else { format!("{n} children") };
                res.add(&format!("supervisor RSS at {at}"), "MiB", kind, rss as f64 / 1024.0);
                res.add(&format!("supervisor PSS at {at}"), "MiB", kind, pss as f64 / 1024.0);
                drop(running);
                Ok(())
            })();
            if let Err(e) = outcome {
                res.error(kind, &format!("bring-up of {n}"), e);
                break;
            }
        }
    }
}

/// (6) `tconf reload --exec <tconf>` at N children; what Sentry prints
/// (`Handover took X ms`) and how long the command took; beside it, the
/// floor of a re-exec with a thread per child (`rethread`: N threads ended
/// by an `execve` and made again). The console lines of the last reload at
/// each size.
fn reloads(ctx: &Ctx, plan: &Plan, res: &mut Results) -> Vec<String> {
    let mut lines = Vec::new();
    for &(n, samples) in &plan.reloads {
        match rethread(ctx, n, samples) {
            Ok(v) => v.into_iter().for_each(|ms| res.add(&handover_figure(n), "ms", Kind::Floor, ms)),
            Err(e) => res.error(Kind::Floor, &format!("rethread at {n}"), e),
        }
        let mut stamps = Stamps::new(ctx, "reload");
        let outcome = (|| -> Outcome<Vec<String>> {
            let running = launch(Kind::Sentry, ctx, n, &stamps.path)?;
            let inst = running.sentry().ok_or("not Sentry")?;
            stamps.wait_live(ctx, n, Duration::from_secs(60 + n as u64 / 5))?;
            std::thread::sleep(SETTLE);
            let console = inst.dir.join("console.txt");
            let mut last = Vec::new();
            for _ in 0..samples {
                let seen = fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
                let t0 = Instant::now();
                let out = Command::new(&inst.bin)
                    .arg("reload")
                    .arg("--exec")
                    .arg(&inst.bin)
                    .arg("--dir")
                    .arg(&inst.dir)
                    .env("TCONF", "bench-stamp")
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run reload: {e}"))?;
                let took = t0.elapsed();
                if !out.status.success() {
                    return Err(format!(
                        "reload failed: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let handover = crate::soak::harness::wait_until(
                    "Sentry's \"Handover took\" line",
                    Duration::from_secs(10),
                    || {
                        let text = fs::read(&console).unwrap_or_default();
                        let new = String::from_utf8_lossy(text.get(seen as usize..).unwrap_or_default()).into_owned();
                        Ok(new.lines().find_map(handover_ms).map(|v| (v, new.clone())))
                    },
                )?;
                res.add(&handover_figure(n), "ms", Kind::Sentry, handover.0);
                res.add(
                    &format!("reload: `reload --exec` command at {n} children"),
                    "ms",
                    Kind::Sentry,
                    took.as_secs_f64() * 1000.0,
                );
                last = handover.1.lines().map(|l| format!("[{n}] {l}")).collect();
            }
            // Nothing restarted: the same children still run.
            let live = stamps.live(ctx).len();
            if live != n {
                return Err(format!("{live} children alive after the reloads, not {n}"));
            }
            drop(running);
            Ok(last)
        })();
        match outcome {
            Ok(l) => lines.extend(l),
            Err(e) => res.error(Kind::Sentry, &format!("reload at {n}"), e),
        }
    }
    lines
}

/// The reload figure at `n` children.
fn handover_figure(n: usize) -> String {
    format!("reload: \"Handover took\" at {n} children")
}

/// `samples` runs of the re-exec floor with `n` threads (ms each).
fn rethread(ctx: &Ctx, n: usize, samples: usize) -> Outcome<Vec<f64>> {
    let out = Command::new(&ctx.rethread)
        .arg(n.to_string())
        .arg(samples.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ctx.rethread.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let values: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if !out.status.success() || values.len() != samples {
        return Err(format!(
            "{} gave {text:?} ({}): {}",
            ctx.rethread.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(values)
}

/// Processes running beside a watch while its scans are measured.
const WATCH_EXTRA: usize = 2000;
/// The watch's interval in the watch figures (ms).
const WATCH_EVERY_MS: u64 = 100;

/// (7) Watches, Sentry only (the floor's one-pass scan beside it): the CPU
/// one scan costs with [`WATCH_EXTRA`] more processes running (the watch
/// matches none of them), and the time from a threshold crossed — a
/// process that has just touched 64 MiB, under `rmem > 32m` — to the
/// SIGTERM it is sent arriving, with scans every [`WATCH_EVERY_MS`] ms.
fn watches(ctx: &Ctx, plan: &Plan, res: &mut Results) {
    let scan_figure = format!("CPU per watch scan, {WATCH_EXTRA} extra processes");
    let trigger_figure = format!("threshold crossed → SIGTERM delivered, scans every {WATCH_EVERY_MS} ms");
    let outcome = (|| -> Outcome<()> {
        let mut crowd_cmd = Command::new("sh");
        crowd_cmd
            .arg("-c")
            .arg(format!("i=0; while [ $i -lt {WATCH_EXTRA} ]; do sleep 100000 & i=$((i+1)); done; wait"));
        let crowd = targets::Session::start(crowd_cmd, ctx, "crowd")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while session_of(crowd.pid).len() < WATCH_EXTRA {
            if Instant::now() > deadline {
                return Err(format!("only {} of {WATCH_EXTRA} extra processes started", session_of(crowd.pid).len()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = Command::new(&ctx.scan).arg("20").output().map_err(|e| format!("cannot run the scan floor: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let us: f64 =
            text.split_whitespace().next().and_then(|v| v.parse().ok()).ok_or("the scan floor said nothing")?;
        res.add(&scan_figure, "ms", Kind::Floor, us / 1000.0);

        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let tag = format!("bench-hog-{nonce}");
        let every = WATCH_EVERY_MS.to_string();
        let mut inst = crate::soak::harness::Instance::start(
            &ctx.tconf,
            "bench-watch",
            &[("TPATTERN", tag.as_str()), ("TEVERY", every.as_str())],
        )?;
        // The first scans read every command line once; later ones only /proc/PID/stat.
        std::thread::sleep(Duration::from_secs(2));
        for _ in 0..plan.scan_windows {
            let before = run_ns(inst.pid);
            std::thread::sleep(plan.scan_window);
            let after = run_ns(inst.pid);
            let scans = plan.scan_window.as_millis() as f64 / WATCH_EVERY_MS as f64;
            res.add(&scan_figure, "ms", Kind::Sentry, (after.saturating_sub(before)) as f64 / 1e6 / scans);
        }
        for i in 0..plan.triggers {
            let file = ctx.work.join(format!("hog-{nonce}-{i}.txt"));
            let mut cmd = Command::new(&ctx.hog);
            cmd.arg(&file).arg(&tag);
            let hog = targets::Session::start(cmd, ctx, "hog")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let (crossed, signalled) = loop {
                let text = fs::read_to_string(&file).unwrap_or_default();
                let at = |w: &str| text.lines().find_map(|l| l.strip_prefix(w)?.trim().parse::<u64>().ok());
                if let (Some(c), Some(s)) = (at("crossed "), at("signalled ")) {
                    break (c, s);
                }
                if Instant::now() > deadline {
                    return Err(format!("the hog was not signalled within 10 s: {text:?}"));
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            drop(hog);
            if signalled < crossed {
                res.notes.push("a SIGTERM came before its crossing was stamped: sample left out".to_string());
                continue;
            }
            res.add(&trigger_figure, "ms", Kind::Sentry, ms(signalled - crossed));
        }
        inst.keep = false;
        drop(inst);
        drop(crowd);
        Ok(())
    })();
    if let Err(e) = outcome {
        res.error(Kind::Sentry, "watches", e);
    }
}

/// The PIDs of session `sid`.
fn session_of(sid: i32) -> Vec<i32> {
    crate::soak::harness::session_pids(sid)
}

/// Time every thread of `pid` has run on a CPU (ns, `/proc/PID/task/*/schedstat`).
fn run_ns(pid: i32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| {
            fs::read_to_string(t.path().join("schedstat")).ok()?.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// `Handover took 12.3 ms (…)` → 12.3.
fn handover_ms(line: &str) -> Option<f64> {
    let rest = &line[line.find("Handover took ")? + "Handover took ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

struct Summary {
    min: f64,
    median: f64,
    max: f64,
}

fn summary(v: &[f64]) -> Option<Summary> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 { s[mid] } else { (s[mid - 1] + s[mid]) / 2.0 };
    Some(Summary { min: s[0], median, max: s[s.len() - 1] })
}

/// Three significant figures or so.
fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(v: Option<&Vec<f64>>) -> String {
    match v.and_then(|v| summary(v)) {
        Some(s) if s.min == s.max => num(s.median),
        Some(s) => format!("{} / {} / {}", num(s.min), num(s.median), num(s.max)),
        None => "—".to_string(),
    }
}

fn print_table(res: &Results, names: &[&'static str]) {
    let mut header = vec!["figure (min / median / max)".to_string()];
    header.extend(names.iter().map(|n| n.to_string()));
    header.push("sentry ÷ floor (medians)".to_string());
    let mut rows = vec![header];
    for (figure, unit) in &res.order {
        let by = &res.samples[figure];
        let label = if unit.is_empty() { figure.clone() } else { format!("{figure} ({unit})") };
        let mut row = vec![label];
        row.extend(names.iter().map(|n| cell(by.get(n))));
        let med = |n: &str| by.get(n).and_then(|v| summary(v)).map(|s| s.median);
        row.push(match (med("sentry"), med("floor")) {
            (Some(s), Some(f)) if f > 0.0 => format!("{s:.2}×", s = s / f),
            (Some(s), Some(f)) if f == 0.0 && s == 0.0 => "=".to_string(),
            _ => "—".to_string(),
        });
        rows.push(row);
    }
    let cols = rows[0].len();
    let width: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> =
            r.iter().enumerate().map(|(c, s)| format!("{s}{}", " ".repeat(width[c] - s.chars().count()))).collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
            println!("| {} |", rule.join(" | "));
        }
    }
}

fn to_json(
    res: &Results,
    names: &[&'static str],
    missing: &[String],
    reload_lines: &[String],
    quick: bool,
    unix: u64,
    static_stamp: bool,
) -> Value {
    let figures: Vec<Value> = res
        .order
        .iter()
        .map(|(figure, unit)| {
            let by = &res.samples[figure];
            let mut targets = serde_json::Map::new();
            for n in names {
                if let Some(v) = by.get(n) {
                    let s = summary(v);
                    targets.insert(
                        n.to_string(),
                        json!({
                            "samples": v,
                            "min": s.as_ref().map(|s| s.min),
                            "median": s.as_ref().map(|s| s.median),
                            "max": s.as_ref().map(|s| s.max),
                        }),
                    );
                }
            }
            json!({ "figure": figure, "unit": unit, "targets": targets })
        })
        .collect();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    json!({
        "unix_time": unix,
        "quick": quick,
        "build": "release",
        "machine": { "cpus": cpus, "kernel": kernel, "loadavg_at_end": load },
        "child": { "program": "stamp.c", "linked": if static_stamp { "static" } else { "dynamic" } },
        "targets": names,
        "not_found": missing,
        "figures": figures,
        "reload_console": reload_lines,
        "errors": res.errors,
    })
}
