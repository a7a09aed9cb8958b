//! A property test: no configuration that validation accepts may panic
//! anything. Random configurations (a deterministic generator: no crate
//! needed, and a failing seed is reproduced by its number) — names, counts,
//! delays, stop timeouts and scan intervals up to the extremes, restart
//! policies, rules — are driven through the embedded `Supervisor` with real,
//! cheap processes: start, status, scale, restart, shutdown. Any panic, on
//! any thread, fails the test, and so does a shutdown that does not return.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use sentry_core::prelude::*;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const WEEK: Duration = Duration::from_secs(7 * 86_400);

fn name(rng: &mut Rng) -> String {
    const CHARS: &[u8] = b"abcXYZ019_-";
    // Now and then an invalid one (empty, too long, a space).
    match rng.below(20) {
        0 => String::new(),
        1 => "x".repeat(65),
        2 => "a b".to_string(),
        _ => (0..1 + rng.below(8)).map(|_| CHARS[rng.below(CHARS.len())] as char).collect(),
    }
}

/// A stop timeout: mostly valid ones up to the bound, now and then beyond.
fn duration(rng: &mut Rng) -> Duration {
    if rng.below(8) == 0 {
        return rng.pick(&[WEEK + Duration::from_secs(1), Duration::from_secs(u64::MAX / 2), Duration::MAX]);
    }
    rng.pick(&[Duration::ZERO, Duration::from_millis(1), Duration::from_millis(100), Duration::from_secs(2), WEEK])
}

/// Triggers and actions for an entry's rules (they act on its own
/// processes only) or a watch's (its pattern matches nothing).
fn rule(rng: &mut Rng, entry: bool) -> (&'static str, &'static str) {
    let trigger = rng.pick(&["rmem > 1k", "vmem > 1k", "cpu >= 0%", "rmem < 1g", "vmem > 100g"]);
    let actions: &[&str] = if entry {
        &["term", "kill", "restart", "stop @ 1s", "exec true", "exec @ 7d true", "exec @ 1s true", "exec @ 1h true"]
    } else {
        &["term", "kill", "stop @ 7d", "exec true $PID", "exec @ 1s true"]
    };
    (trigger, rng.pick(actions))
}

fn config(rng: &mut Rng, marker: &str) -> Vec<Spec> {
    let mut specs = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let n = name(rng);
        if rng.below(4) == 0 {
            let pattern = format!("^no-such-process-{marker}$");
            let mut w = watch(&n, pattern.as_str()).every(rng.pick(&[
                Duration::from_millis(100),
                Duration::from_secs(1),
                WEEK,
                WEEK,
                WEEK,
                Duration::MAX,
            ]));
            for _ in 0..rng.below(3) {
                let (t, a) = rule(rng, false);
                w = w.on(t, a);
            }
            specs.push(w);
            continue;
        }
        let (command, args): (&str, &[&str]) = rng.pick(&[
            ("true", &[][..]),
            ("sleep", &["0.1"][..]),
            ("sh", &["-c", "exit 3"][..]),
            ("sleep", &["1000"][..]),
        ]);
        let delay_ms = if rng.below(8) == 0 {
            rng.pick(&[WEEK.as_millis() as u64 + 1, u64::MAX])
        } else {
            rng.pick(&[0, 1, 100, 10_000, WEEK.as_millis() as u64])
        };
        let mut e = entry(&n, command, args, delay_ms, rng.below(4))
            .stop_timeout(duration(rng))
            .stop_signal(rng.pick(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGKILL, Signal::SIGHUP]))
            .restart(rng.pick(&[Restart::Always, Restart::OnFailure, Restart::Never]));
        for _ in 0..rng.below(3) {
            let (t, a) = rule(rng, true);
            e = e.on(t, a);
        }
        specs.push(e);
    }
    specs
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on a thread of its own, failing if it takes longer than `limit`.
fn within<T: Send + 'static>(what: &str, limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

#[test]
fn no_configuration_that_validation_accepts_panics_anything() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    // Stop signals are drawn from SIGTERM, SIGINT, SIGKILL and SIGHUP with
    // stop timeouts of up to a week: a signal this process was started
    // ignoring (a background job ignores SIGINT and SIGQUIT) stays ignored
    // in the children, as in any exec'd program, and a stop would wait that
    // week. The test is about configurations, not about its caller.
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM] {
        // SAFETY: resets a disposition to the default; no handler is involved.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let marker = format!("prop{}", std::process::id());
    let (mut accepted, mut refused, mut processes) = (0, 0, 0);
    for seed in 0..80u64 {
        let mut rng = Rng(seed);
        let specs = config(&mut rng, &marker);
        let sup = match Supervisor::start(specs) {
            Ok(s) => s,
            Err(Error::InvalidConfig(_)) => {
                refused += 1;
                continue;
            }
            Err(e) => panic!("seed {seed}: {e}"),
        };
        accepted += 1;
        processes += sup.status().entries.iter().map(|e| e.count).sum::<usize>();
        let ops = rng.below(6);
        let mut plan = Vec::new();
        for _ in 0..ops {
            plan.push((rng.below(3), rng.next(), rng.below(3)));
        }
        let outcome =
            within(&format!("seed {seed}: the operations and shutdown"), Duration::from_secs(60), move || {
                let entries: Vec<String> = sup.status().entries.iter().map(|e| e.name.clone()).collect();
                for (op, which, count) in plan {
                    let name = if entries.is_empty() || which % 5 == 0 {
                        "no-such-entry".to_string()
                    } else {
                        entries[which as usize % entries.len()].clone()
                    };
                    let result = match op {
                        0 => sup.scale(&name, count),
                        1 => sup.restart(&name),
                        _ => {
                            let _ = sup.status();
                            Ok(())
                        }
                    };
                    // An unknown entry, or processes that could not all start, are
                    // fine answers; a core that is gone is not.
                    if let Err(e @ (Error::CoreGone | Error::ShuttingDown)) = result {
                        return Err(format!("{op} {name} {count}: {e}"));
                    }
                }
                let status = sup.status();
                if status.entries.len() != entries.len() {
                    return Err(format!("the core is gone: {} entries of {}", status.entries.len(), entries.len()));
                }
                sup.shutdown();
                Ok(())
            });
        if let Err(e) = outcome {
            panic!("seed {seed}: {e}");
        }
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "seed {seed}: a thread panicked (see above)");
    }
    eprintln!("{accepted} configurations accepted ({processes} processes asked for), {refused} refused");
    assert!(
        accepted >= 20 && refused >= 10 && processes >= 20,
        "{accepted} accepted, {refused} refused: the generator needs tuning"
    );
}
