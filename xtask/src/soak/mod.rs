//! `cargo xtask soak [kill|reload|control|churn|all] [--kills N] [--reloads N]
//! [--scales N] [--cycles N] [--seed S] [--quick]`: long storms against a
//! real configuration binary (`tconf` of the tests crate, one `soak-*`
//! scenario per phase) with real processes. Each phase starts its own
//! instance in a session of its own and kills whatever it left, even when
//! it fails; a failed check prints the command line that replays it.

pub(crate) mod harness;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{age, kill_child, settle_figures, stat, wait_until, Figures, Instance, Outcome, Rng, Tolerance};

pub const USAGE: &str = "usage: cargo xtask soak [kill|reload|control|churn|all] [--kills N] [--reloads N] \
                         [--scales N] [--cycles N] [--seed S] [--quick]";

/// The sizes of a run. Defaults suit a 2-core machine; `--quick` is CI's.
#[derive(Clone, Debug)]
struct Sizes {
    kills: u64,
    reloads: u64,
    scales: u64,
    cycles: u64,
}

const FULL: Sizes = Sizes { kills: 1000, reloads: 100, scales: 1000, cycles: 50 };
const QUICK: Sizes = Sizes { kills: 200, reloads: 20, scales: 200, cycles: 10 };

/// Children in the kill storm; lines a second in the reload storm; the churn's peak.
const VICTIMS: usize = 5;
const LINES_PER_SECOND: u64 = 2000;
const CHURN_PEAK: usize = 200;
/// A child is killed only once it has run this long (so no back-off stretches the storm).
const KILL_AGE: Duration = Duration::from_millis(1050);
/// A zombie child of Sentry older than this is a failure.
const ZOMBIE_LIMIT: Duration = Duration::from_secs(2);
const STATUS_LIMIT: Duration = Duration::from_secs(1);

const PHASES: [&str; 4] = ["kill", "reload", "control", "churn"];

/// What a phase measured and what it found wrong.
struct Report {
    phase: &'static str,
    figures: Vec<String>,
    failures: Vec<String>,
    took: Duration,
}

impl Report {
    fn new(phase: &'static str) -> Report {
        Report { phase, figures: Vec::new(), failures: Vec::new(), took: Duration::ZERO }
    }

    fn figure(&mut self, text: impl Into<String>) {
        self.figures.push(text.into());
    }

    fn fail(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("soak {}: FAILED: {text}", self.phase);
        self.failures.push(text);
    }

    /// Records the error of a step that could not go on.
    fn check<T>(&mut self, result: Outcome<T>) -> Option<T> {
        result.map_err(|e| self.fail(e)).ok()
    }
}

pub fn main(args: &[String]) -> Result<bool, String> {
    let (phases, sizes, seed) = parse(args)?;
    let bin = harness::build_tconf(false)?;
    println!("soak: {} with {sizes:?}, seed {seed}, binary {}", phases.join(", "), bin.display());
    let mut reports = Vec::new();
    for phase in &phases {
        // One generator per phase: replaying one phase makes the same choices.
        let k = PHASES.iter().position(|p| p == phase).unwrap_or(0) as u64 + 1;
        let mut rng = Rng::new(seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let t0 = Instant::now();
        let mut report = match *phase {
            "kill" => kill_storm(&bin, &sizes, &mut rng),
            "reload" => reload_storm(&bin, &sizes, &mut rng),
            "control" => control_storm(&bin, &sizes, &mut rng),
            _ => churn(&bin, &sizes, &mut rng),
        };
        report.took = t0.elapsed();
        print_report(&report);
        reports.push(report);
    }
    let failed: Vec<&str> = reports.iter().filter(|r| !r.failures.is_empty()).map(|r| r.phase).collect();
    let total: Duration = reports.iter().map(|r| r.took).sum();
    if failed.is_empty() {
        println!("soak: all {} phase(s) passed in {:.1} s", reports.len(), total.as_secs_f64());
        return Ok(true);
    }
    println!("soak: FAILED: {} ({:.1} s). To replay:", failed.join(", "), total.as_secs_f64());
    for phase in failed {
        println!(
            "  cargo xtask soak {phase} --kills {} --reloads {} --scales {} --cycles {} --seed {seed}",
            sizes.kills, sizes.reloads, sizes.scales, sizes.cycles
        );
    }
    Ok(false)
}

fn parse(args: &[String]) -> Result<(Vec<&'static str>, Sizes, u64), String> {
    let mut phase: Option<&'static str> = None;
    let (mut kills, mut reloads, mut scales, mut cycles, mut seed, mut quick) = (None, None, None, None, None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut number = |flag: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{flag} needs a value\n{USAGE}"))?;
            v.parse().map_err(|_| format!("{flag} {v:?}: not a number\n{USAGE}"))
        };
        match a.as_str() {
            "--kills" => kills = Some(number("--kills")?),
            "--reloads" => reloads = Some(number("--reloads")?),
            "--scales" => scales = Some(number("--scales")?),
            "--cycles" => cycles = Some(number("--cycles")?),
            "--seed" => seed = Some(number("--seed")?),
            "--quick" => quick = true,
            "all" if phase.is_none() => phase = Some("all"),
            p if phase.is_none() && PHASES.contains(&p) => phase = PHASES.iter().copied().find(|q| *q == p),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    let base = if quick { QUICK } else { FULL };
    let sizes = Sizes {
        kills: kills.unwrap_or(base.kills),
        reloads: reloads.unwrap_or(base.reloads),
        scales: scales.unwrap_or(base.scales),
        cycles: cycles.unwrap_or(base.cycles).max(1),
    };
    let seed = seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (t.as_nanos() as u64 ^ std::process::id() as u64) % 1_000_000_000
    });
    let phases = match phase.unwrap_or("all") {
        "all" => PHASES.to_vec(),
        one => vec![one],
    };
    Ok((phases, sizes, seed))
}

fn print_report(r: &Report) {
    let verdict = if r.failures.is_empty() { "ok" } else { "FAILED" };
    println!("== soak {}: {verdict} in {:.1} s", r.phase, r.took.as_secs_f64());
    for f in &r.figures {
        println!("   {f}");
    }
    for f in &r.failures {
        println!("   FAILED: {f}");
    }
}

/// Fds and threads come back exactly, give or take a connection in flight.
const FLAT: Tolerance = Tolerance { fds: 3, threads: 2, rss_percent: 25, rss_kib: 4096 };

/// Checks Sentry's figures against `before`; adds both to the report.
fn check_flat(r: &mut Report, inst: &Instance, before: &Figures, what: &str) -> Figures {
    let (after, flat) = settle_figures(inst.pid, before, &FLAT, Duration::from_secs(5));
    r.figure(format!("Sentry {what}: {before}; after: {after}"));
    if !flat {
        r.fail(format!("Sentry's figures grew: {before} {what}, {after} after (tolerance: +{} fds, +{} threads, +{}% + {} KiB RSS)",
            FLAT.fds, FLAT.threads, FLAT.rss_percent, FLAT.rss_kib));
    }
    after
}

/// Zombie children of Sentry, each with when it was first seen.
#[derive(Default)]
struct ZombieWatch {
    seen: HashMap<i32, Instant>,
    longest: Duration,
    reported: HashSet<i32>,
}

impl ZombieWatch {
    fn look(&mut self, r: &mut Report, inst: &Instance) {
        let now = Instant::now();
        let zombies: HashSet<i32> = inst.zombies().into_iter().collect();
        self.seen.retain(|pid, _| zombies.contains(pid));
        for pid in zombies {
            let since = *self.seen.entry(pid).or_insert(now);
            self.longest = self.longest.max(now - since);
            if now - since > ZOMBIE_LIMIT && self.reported.insert(pid) {
                r.fail(format!("child {pid} of Sentry has been a zombie for more than {ZOMBIE_LIMIT:?}"));
            }
        }
    }
}

/// The end of every phase: nothing escaped, a clean stop.
fn finish(r: &mut Report, inst: &mut Instance) {
    let escaped = inst.escaped();
    if !escaped.is_empty() {
        r.fail(format!("processes escaped Sentry's session: {escaped:?}"));
    }
    if let Some(took) = r.check(inst.stop()) {
        r.figure(format!("clean stop (SIGTERM) in {:.2} s", took.as_secs_f64()));
    }
}

/// Kill storm: SIGKILL children that have run at least 1 s, spread over
/// five; none lost, no zombie, Sentry's fds and threads flat.
fn kill_storm(bin: &Path, sizes: &Sizes, rng: &mut Rng) -> Report {
    let mut r = Report::new("kill");
    let count = VICTIMS.to_string();
    let Some(mut inst) = r.check(Instance::start(bin, "soak-kill", &[("TCOUNT", &count)])) else { return r };
    if r.check(inst.wait_settled("victim", VICTIMS, Duration::from_secs(30))).is_none() {
        return r;
    }
    let before = inst.figures();
    let restarts0 = inst.entry("victim").map(|e| e["restarts"].as_u64().unwrap_or(0)).unwrap_or(0);
    let mut zombies = ZombieWatch::default();
    let mut killed = HashSet::new();
    let mut per_slot = std::collections::BTreeMap::new();
    // At most five kills a second can be due: allow twice that, plus a minute.
    let budget = Duration::from_secs_f64(sizes.kills as f64 / VICTIMS as f64 * 2.0 + 60.0);
    let t0 = Instant::now();
    while (killed.len() as u64) < sizes.kills && r.failures.is_empty() {
        if t0.elapsed() > budget {
            r.fail(format!("only {} kills in {budget:?}: children do not come back", killed.len()));
            break;
        }
        let Some((procs, _)) = r.check(inst.processes("victim")) else { break };
        let mut pids = procs;
        // A seeded order: which of the due children dies first.
        for i in (1..pids.len()).rev() {
            pids.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (slot, pid) in pids {
            if killed.len() as u64 >= sizes.kills {
                break;
            }
            let Some(s) = stat(pid).filter(|s| s.ppid == inst.pid && s.state != 'Z') else { continue };
            if age(&s) >= KILL_AGE && kill_child(pid, inst.pid, s.starttime) {
                killed.insert(pid);
                *per_slot.entry(slot).or_insert(0u64) += 1;
            }
        }
        zombies.look(&mut r, &inst);
        std::thread::sleep(Duration::from_millis(20));
    }
    let storm = t0.elapsed();
    r.figure(format!(
        "{} SIGKILLs over {VICTIMS} children in {:.1} s ({:.2} kills/s)",
        killed.len(),
        storm.as_secs_f64(),
        killed.len() as f64 / storm.as_secs_f64()
    ));
    r.figure(format!("kills by slot: {per_slot:?}"));
    // Every slot back, with a new process; the count of restarts right.
    if let Some(pids) = r.check(inst.wait_settled("victim", VICTIMS, Duration::from_secs(30))) {
        if let Some(old) = pids.iter().find(|p| killed.contains(p)) {
            r.fail(format!("slot still shows killed process {old}"));
        }
    }
    let restarts = inst.entry("victim").map(|e| e["restarts"].as_u64().unwrap_or(0)).unwrap_or(0);
    r.figure(format!("restarts counted: {} (kills: {})", restarts - restarts0, killed.len()));
    if restarts - restarts0 != killed.len() as u64 {
        r.fail(format!("{} kills but {} restarts counted", killed.len(), restarts - restarts0));
    }
    let alive: Vec<i32> = killed.iter().copied().filter(|&p| stat(p).is_some_and(|s| s.ppid == inst.pid)).collect();
    if !alive.is_empty() {
        r.fail(format!("killed children still there (zombies?): {alive:?}"));
    }
    zombies.look(&mut r, &inst);
    r.figure(format!("longest-lived zombie seen: {} ms", zombies.longest.as_millis()));
    check_flat(&mut r, &inst, &before, "before the storm");
    finish(&mut r, &mut inst);
    inst.keep = !r.failures.is_empty();
    r
}

/// Reload storm: reloads (re-exec of the same binary) while a child writes
/// numbered lines; the child is never restarted, its log has every line
/// exactly once, in order.
fn reload_storm(bin: &Path, sizes: &Sizes, rng: &mut Rng) -> Report {
    let mut r = Report::new("reload");
    let rate = LINES_PER_SECOND.to_string();
    let Some(mut inst) = r.check(Instance::start(bin, "soak-reload", &[("TRATE", &rate)])) else { return r };
    let Some(pids) = r.check(inst.wait_settled("writer", 1, Duration::from_secs(30))) else { return r };
    let writer = pids[0];
    let t0 = Instant::now();
    let mut reexecs = 0;
    let mut longest = Duration::ZERO;
    for i in 0..sizes.reloads {
        let t = Instant::now();
        let Some(ticket) = r.check(inst.reload()) else { break };
        let Some(status) = r.check(inst.wait_reload(ticket, Duration::from_secs(60))) else { break };
        longest = longest.max(t.elapsed());
        reexecs = status["reexec_count"].as_u64().unwrap_or(0);
        if status["pid"].as_i64() != Some(inst.pid as i64) {
            r.fail(format!("reload {i}: Sentry's PID changed to {}", status["pid"]));
        }
        let now = inst.processes("writer").map(|(p, _)| p.iter().map(|(_, pid)| *pid).collect::<Vec<_>>());
        if now.as_deref() != Ok(&[writer][..]) {
            r.fail(format!("reload {i}: the writer was {writer}, now {now:?}"));
            break;
        }
        // Let some lines through between reloads (0 to 100 ms).
        std::thread::sleep(Duration::from_millis(rng.below(101)));
    }
    let storm = t0.elapsed();
    r.figure(format!(
        "{reexecs} re-execs in {:.1} s ({:.1} reloads/s, slowest {} ms), writer {writer} kept",
        storm.as_secs_f64(),
        reexecs as f64 / storm.as_secs_f64(),
        longest.as_millis()
    ));
    if reexecs != sizes.reloads {
        r.fail(format!("{} reloads asked, re-exec count {reexecs}", sizes.reloads));
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = inst.log_path("writer");
    finish(&mut r, &mut inst);
    // After a clean stop the log is whole: check every number.
    match std::fs::read(&log) {
        Ok(bytes) => check_numbered(&mut r, &bytes),
        Err(e) => r.fail(format!("cannot read {}: {e}", log.display())),
    }
    inst.keep = !r.failures.is_empty();
    r
}

/// Every `seq=N` exactly once, in order from 0; only the last line may be partial.
fn check_numbered(r: &mut Report, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if text.ends_with('\n') {
        lines.pop();
    } else {
        lines.pop(); // partial: allowed, not checked
    }
    let (mut next, mut checked, mut problems) = (0u64, 0u64, Vec::new());
    for line in lines {
        if line.contains("[sentry]") {
            continue;
        }
        let n = line.split_once("seq=").and_then(|(_, n)| n.trim().parse::<u64>().ok());
        match n {
            Some(n) if n == next => {}
            Some(n) if n > next => problems.push(format!("lines {next}..{} lost", n - 1)),
            Some(n) => problems.push(format!("line {n} again after {}", next - 1)),
            None => problems.push(format!("unexpected line {line:?}")),
        }
        if let Some(n) = n {
            next = n + 1;
            checked += 1;
        }
    }
    r.figure(format!("{checked} numbered lines checked: {} lost, doubled or out of order", problems.len()));
    if checked == 0 {
        r.fail("no numbered line in the log");
    }
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(10).collect();
        r.fail(format!("{} problems in the log: {shown:?}", problems.len()));
    }
}

/// Control storm: slow clients, a flood of `GET /status` and `scale`
/// requests interleaved with kills and reloads; the last request's count
/// wins and status answers within a second throughout.
fn control_storm(bin: &Path, sizes: &Sizes, rng: &mut Rng) -> Report {
    const TRICKLERS: usize = 8;
    const FLOODERS: usize = 8;
    const MAX_COUNT: u64 = 8;
    let mut r = Report::new("control");
    let Some(mut inst) = r.check(Instance::start(bin, "soak-control", &[])) else { return r };
    if r.check(inst.wait_settled("pool", 2, Duration::from_secs(30))).is_none() {
        return r;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let addr = inst.addr().to_string();
    let prober = {
        let (stop, addr) = (stop.clone(), addr.clone());
        std::thread::spawn(move || {
            let (mut max, mut slowest, mut n, mut errors) = (Duration::ZERO, Instant::now(), 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match harness::http(&addr, "GET", "/status", None, None) {
                    Ok((200, _)) => {}
                    Ok((code, body)) => errors.push(format!("{code} {body}")),
                    Err(e) => errors.push(e),
                }
                if t.elapsed() > max {
                    (max, slowest) = (t.elapsed(), t);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (max, slowest, n, errors)
        })
    };
    let flooded = Arc::new(AtomicU64::new(0));
    let flood_errors = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (stop, addr, done, errors) = (stop.clone(), addr.clone(), flooded.clone(), flood_errors.clone());
            std::thread::spawn(move || {
                let (mut max, mut slowest) = (Duration::ZERO, Instant::now());
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match harness::http(&addr, "GET", "/status", None, None) {
                        Ok((200, _)) => done.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    if t.elapsed() > max {
                        (max, slowest) = (t.elapsed(), t);
                    }
                }
                (max, slowest)
            })
        })
        .collect();
    let trickled = Arc::new(AtomicU64::new(0));
    let tricklers: Vec<_> = (0..TRICKLERS)
        .map(|_| {
            let (stop, addr, conns) = (stop.clone(), addr.clone(), trickled.clone());
            std::thread::spawn(move || trickle(&stop, &addr, &conns))
        })
        .collect();
    // The requests, with a kill every 20 and a reload every 50.
    let t0 = Instant::now();
    let (mut last, mut kills, mut tickets, mut asked) = (None, 0, Vec::new(), Vec::new());
    for i in 1..=sizes.scales {
        let n = rng.below(MAX_COUNT + 1) as usize;
        if r.check(inst.scale("pool", n)).is_none() {
            break;
        }
        last = Some(n);
        if i % 20 == 0 && kill_oldest(&inst, "pool") {
            kills += 1;
        }
        if i % 50 == 0 {
            asked.push(Instant::now());
            match inst.reload() {
                Ok(t) => tickets.push(t),
                Err(e) => r.fail(e),
            }
        }
    }
    let storm = t0.elapsed();
    if let Some(&ticket) = tickets.last() {
        r.check(inst.wait_reload(ticket, Duration::from_secs(60)));
    }
    stop.store(true, Ordering::Relaxed);
    let (max, slowest, probes, errors) = prober.join().unwrap_or((Duration::ZERO, t0, 0, Vec::new()));
    let (flood_max, flood_slowest) =
        flooders.into_iter().filter_map(|t| t.join().ok()).max().unwrap_or((Duration::ZERO, t0));
    for t in tricklers {
        let _ = t.join();
    }
    r.figure(format!(
        "{} scale requests in {:.1} s ({:.0}/s), {kills} kills, {} reloads",
        sizes.scales,
        storm.as_secs_f64(),
        sizes.scales as f64 / storm.as_secs_f64(),
        tickets.len()
    ));
    r.figure(format!(
        "flood: {} GET /status answered ({} failed) by {FLOODERS} clients; {} slow connections by {TRICKLERS} tricklers",
        flooded.load(Ordering::Relaxed),
        flood_errors.load(Ordering::Relaxed),
        trickled.load(Ordering::Relaxed)
    ));
    // Where a slow answer fell: how long after the last reload asked before it.
    let after_reload = |at: Instant| {
        asked
            .iter()
            .enumerate()
            .rev()
            .find(|(_, a)| **a <= at)
            .map(|(k, a)| format!(", sent {} ms after reload #{} was asked", (at - *a).as_millis(), k + 1))
            .unwrap_or_default()
    };
    // The prober every 100 ms, and the flood's own requests (back to back,
    // so some land at the worst moment of each reload): all are GET /status.
    let prober = format!("prober ({probes} requests)");
    for (who, max, at) in [(prober.as_str(), max, slowest), ("flood", flood_max, flood_slowest)] {
        let when = after_reload(at);
        r.figure(format!("status {who}: max latency {} ms{when}", max.as_millis()));
        if max >= STATUS_LIMIT {
            r.fail(format!("a GET /status of the {who} took {} ms (limit {STATUS_LIMIT:?}){when}", max.as_millis()));
        }
    }
    if !errors.is_empty() {
        r.fail(format!("{} status probes failed, first: {}", errors.len(), errors[0]));
    }
    if let Some(n) = last {
        match inst.wait_settled("pool", n, Duration::from_secs(60)) {
            Ok(_) => r.figure(format!("final state: {n} process(es), the last request's count")),
            Err(e) => r.fail(format!("after the last request (count {n}): {e}")),
        }
        let count = inst.entry("pool").map(|e| e["count"].as_u64());
        if count != Ok(Some(n as u64)) {
            r.fail(format!("pool's count is {count:?}, the last request said {n}"));
        }
    }
    finish(&mut r, &mut inst);
    inst.keep = !r.failures.is_empty();
    r
}

/// A slow client: sends a request head one byte every 200 ms, never
/// finishing it; starts over when the server drops it.
fn trickle(stop: &AtomicBool, addr: &str, conns: &AtomicU64) {
    let head = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}", "z".repeat(1000));
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        conns.fetch_add(1, Ordering::Relaxed);
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        for b in head.bytes() {
            if stop.load(Ordering::Relaxed) || s.write_all(&[b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// SIGKILLs the oldest process of an entry; whether one was killed.
fn kill_oldest(inst: &Instance, name: &str) -> bool {
    let Ok((procs, _)) = inst.processes(name) else { return false };
    let oldest = procs
        .iter()
        .filter_map(|(_, p)| stat(*p).filter(|s| s.ppid == inst.pid && s.state != 'Z').map(|s| (s.starttime, *p)))
        .min();
    oldest.is_some_and(|(start, pid)| kill_child(pid, inst.pid, start))
}

/// Churn: scale 0 ↔ 200; Sentry's fds, threads and memory flat (against
/// the end of the first cycle), no zombie, no child left.
fn churn(bin: &Path, sizes: &Sizes, _rng: &mut Rng) -> Report {
    let mut r = Report::new("churn");
    let Some(mut inst) = r.check(Instance::start(bin, "soak-churn", &[])) else { return r };
    let fresh = inst.figures();
    let mut first = None;
    let mut zombies = ZombieWatch::default();
    let (mut up, mut down) = (Duration::ZERO, Duration::ZERO);
    let t0 = Instant::now();
    for cycle in 0..sizes.cycles {
        let t = Instant::now();
        if r.check(inst.scale("churn", CHURN_PEAK)).is_none() {
            break;
        }
        if r.check(inst.wait_settled("churn", CHURN_PEAK, Duration::from_secs(60))).is_none() {
            break;
        }
        up = up.max(t.elapsed());
        zombies.look(&mut r, &inst);
        let t = Instant::now();
        if r.check(inst.scale("churn", 0)).is_none() {
            break;
        }
        let none = wait_until("no child of Sentry at all", Duration::from_secs(60), || {
            Ok(harness::children_of(inst.pid).is_empty().then_some(()))
        });
        if r.check(inst.wait_settled("churn", 0, Duration::from_secs(60)).and(none)).is_none() {
            break;
        }
        down = down.max(t.elapsed());
        if cycle == 0 {
            std::thread::sleep(Duration::from_millis(300));
            first = Some(inst.figures());
        }
    }
    let storm = t0.elapsed();
    r.figure(format!(
        "{} cycles 0 -> {CHURN_PEAK} -> 0 in {:.1} s (slowest up {} ms, down {} ms)",
        sizes.cycles,
        storm.as_secs_f64(),
        up.as_millis(),
        down.as_millis()
    ));
    r.figure(format!("Sentry fresh: {fresh}"));
    zombies.look(&mut r, &inst);
    r.figure(format!("longest-lived zombie seen: {} ms", zombies.longest.as_millis()));
    if let Some(first) = first {
        check_flat(&mut r, &inst, &first, "after the first cycle");
    }
    finish(&mut r, &mut inst);
    inst.keep = !r.failures.is_empty();
    r
}
