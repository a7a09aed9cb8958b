//! The life of one slot of an entry, as a pure function: [`step`] takes a
//! [`Slot`], the entry's [`Policy`] and an [`Event`] and returns the next slot
//! and the [`Effect`]s to perform. It owns the restart policy, crash-loop
//! back-off and graceful stop; it knows nothing of processes, threads, clocks
//! or I/O — time arrives inside events, and the core performs the effects.
//!
//! A slot's process is *gone* ([`Event::Exited`]) only once its leader has
//! exited **and** its process group is empty: a leader that exits on its own
//! while members of its group live on ([`Event::LeaderExited`]) puts the slot
//! in `Stopping` (stop signal, then SIGKILL at the stop timeout), and the
//! restart policy applies when the last member is gone — so a replacement
//! never starts on top of its predecessor's group. A group that survives
//! SIGKILL for [`KILL_GRACE`] makes the slot `Unkillable`. Deadlines
//! saturate ([`later`]): no duration, however long, makes a step panic.

use std::time::{Duration, Instant};

use crate::budget::later;
use crate::spec::Restart;
use crate::Signal;

/// A run shorter than this counts as a crash.
pub(crate) const CRASH_RUN: Duration = Duration::from_secs(1);
/// A run at least this long forgets earlier crashes.
pub(crate) const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// First back-off step after one crash; doubles with each further crash.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest back-off.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long a process group may outlive SIGKILL before its slot is reported
/// `unkillable` (a process in uninterruptible sleep, a frozen cgroup) and the
/// requests waiting on it are answered.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);

/// How one entry's processes are restarted and stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub restart: Restart,
    pub delay: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// Exit codes that are a success (`.success_codes`, default 0).
    pub success: ExitCodes,
    /// Exit codes after which the slot stays down (`.stop_codes`).
    pub stop_codes: ExitCodes,
}

/// A set of exit codes (0 to 255), small enough to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct ExitCodes([u64; 4]);

impl ExitCodes {
    /// The codes of `codes` that are exit codes (0 to 255).
    pub fn of(codes: &[i32]) -> ExitCodes {
        let mut set = ExitCodes::default();
        for c in codes.iter().filter(|c| (0..=255).contains(*c)) {
            set.0[*c as usize / 64] |= 1 << (*c as usize % 64);
        }
        set
    }

    /// Whether `exit` is an exit with one of these codes.
    pub fn contains(&self, exit: ChildExit) -> bool {
        match exit {
            ChildExit::Code(c) if (0..=255).contains(&c) => self.0[c as usize / 64] & (1 << (c as usize % 64)) != 0,
            _ => false,
        }
    }

    /// The codes, in order.
    pub fn list(&self) -> Vec<i32> {
        (0..=255).filter(|c| self.contains(ChildExit::Code(*c))).collect()
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChildExit {
    /// It exited with this status.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
    /// It was gone without a status we could read (e.g. reaped elsewhere).
    Unknown,
}

impl ChildExit {
    /// Whether the exit counts as a success for [`Restart::OnFailure`].
    pub fn success(self) -> bool {
        self == ChildExit::Code(0)
    }
}

/// What happens once a stopping process has exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterStop {
    /// Start a new process in the slot (a restart).
    Respawn,
    /// Remove the slot (a scale-down, an entry removed, or shutdown).
    Vacate,
    /// The leader exited on its own at `exited_at` and the rest of its group
    /// is being stopped: once it is gone, apply the restart policy as if the
    /// process had ended then.
    Policy { exited_at: Instant },
    /// A restart by a rule or a failed liveness probe: start again after
    /// the back-off of `crashes` (none for 0), the slot's crash count then.
    Recover { crashes: u32 },
}

/// Why a process is restarted on Sentry's own initiative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// A rule's `restart` action: at once, not a crash.
    Rule,
    /// A failed liveness probe or watchdog: backed off like a crash loop
    /// (each one in a row is one more step), unless the process had passed
    /// its probe for [`HEALTHY_RUN`] (`reset`), which starts the count again.
    Liveness { reset: bool },
}

/// Where a slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No process and none due (policy said not to restart).
    Idle,
    /// A process is to be started at `due`.
    Pending { due: Instant },
    /// A process is running.
    Running { pid: i32, since: Instant },
    /// The stop signal was sent; SIGKILL follows at `kill_at`.
    Stopping { pid: i32, since: Instant, kill_at: Instant, then: AfterStop },
    /// SIGKILL was sent; waiting for the group to be gone until `give_up_at`.
    Killing { pid: i32, since: Instant, give_up_at: Instant, then: AfterStop },
    /// The group outlived SIGKILL by [`KILL_GRACE`]; still waited for.
    Unkillable { pid: i32, since: Instant, then: AfterStop },
    /// Given up on (`.give_up`): no process until a restart is asked for.
    Failed,
}

/// One slot (`SENTRY_INDEX`) of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub phase: Phase,
    /// Consecutive crashes (runs shorter than [`CRASH_RUN`]).
    pub crashes: u32,
}

/// Something that happened to a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Time passed; `now` may be at or past the slot's deadline.
    Due { now: Instant },
    /// The core started the process asked for by [`Effect::Spawn`].
    Spawned { pid: i32, now: Instant },
    /// The core could not start it: refused before the clone (from
    /// `Pending`), or its process exited before running the program and
    /// was reaped (from `Running`).
    SpawnFailed { now: Instant },
    /// The slot's process exited, its process group is empty, and the
    /// process was reaped.
    Exited { exit: ChildExit, now: Instant },
    /// The slot's process exited but members of its process group live on.
    LeaderExited { now: Instant },
    /// Stop the process and remove the slot.
    Stop { now: Instant },
    /// Stop the process gracefully, then start it again.
    Restart { now: Instant },
    /// The slot is wanted after all (a scale up while a scale down is
    /// stopping it): once its process is gone, start another instead of
    /// removing the slot.
    Keep,
    /// Stop the process gracefully and start it again, on Sentry's own
    /// initiative (counted towards `.give_up`, see [`Recovery`]).
    Recover { now: Instant, why: Recovery },
    /// Too many exits within the `.give_up` window: a slot about to start
    /// again is `Failed` instead.
    GiveUp,
    /// [`Event::Exited`] that reaches the `.give_up` limit: where the slot
    /// would start again, it is `Failed` instead (no restart counted).
    LastExit { exit: ChildExit, now: Instant },
}

/// What the core must do after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Start a process now and report [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn,
    /// Send `signal` to the process group of `pid`.
    Signal { pid: i32, signal: Signal },
    /// Count one restart of the entry, after its process exited by itself.
    CountRestart,
    /// Count one restart that was asked for (a restart request, a rule, a
    /// changed configuration).
    CountRequestedRestart,
    /// The slot is finished: remove it.
    Vacate,
}

impl Slot {
    /// A new slot whose first process is due at `now`.
    pub fn new(now: Instant) -> Slot {
        Slot { phase: Phase::Pending { due: now }, crashes: 0 }
    }

    /// The next instant at which [`Event::Due`] changes something.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Pending { due } => Some(due),
            Phase::Stopping { kill_at, .. } => Some(kill_at),
            Phase::Killing { give_up_at, .. } => Some(give_up_at),
            _ => None,
        }
    }

    /// The slot's process, if one is alive.
    pub fn pid(&self) -> Option<i32> {
        match self.phase {
            Phase::Running { pid, .. }
            | Phase::Stopping { pid, .. }
            | Phase::Killing { pid, .. }
            | Phase::Unkillable { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

/// The delay before starting again after `crashes` consecutive crashes.
pub(crate) fn restart_delay(delay: Duration, crashes: u32) -> Duration {
    if crashes == 0 {
        return delay;
    }
    let backoff = BACKOFF_BASE
        .checked_mul(1u32.checked_shl(crashes - 1).unwrap_or(u32::MAX))
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP);
    delay.max(backoff)
}

/// The transition function: `slot × event → slot + effects`.
pub(crate) fn step(slot: Slot, policy: &Policy, event: Event) -> (Slot, Vec<Effect>) {
    use Phase::*;
    let Slot { phase, crashes } = slot;
    let same = (slot, Vec::new());
    match (phase, event) {
        (Pending { due }, Event::Due { now }) if now >= due => (slot, vec![Effect::Spawn]),
        (Pending { .. }, Event::Spawned { pid, now }) => {
            (Slot { phase: Running { pid, since: now }, crashes }, Vec::new())
        }
        // Refused before the clone, or (from Running) failed in the child
        // before its exec: a crash, no restart counted.
        (Pending { .. } | Running { .. }, Event::SpawnFailed { now }) => {
            let crashes = crashes.saturating_add(1);
            let due = later(now, restart_delay(policy.delay, crashes));
            (Slot { phase: Pending { due }, crashes }, Vec::new())
        }
        (Running { since, .. }, Event::Exited { exit, now }) => after_exit(crashes, since, exit, now, policy),
        (Running { pid, since }, Event::LeaderExited { now }) => (
            Slot {
                phase: Stopping {
                    pid,
                    since,
                    kill_at: later(now, policy.stop_timeout),
                    then: AfterStop::Policy { exited_at: now },
                },
                crashes,
            },
            vec![Effect::Signal { pid, signal: policy.stop_signal }],
        ),
        (
            Stopping { since, then, .. } | Killing { since, then, .. } | Unkillable { since, then, .. },
            Event::Exited { exit, now },
        ) => match then {
            AfterStop::Respawn => {
                (Slot { phase: Pending { due: now }, crashes: 0 }, vec![Effect::CountRequestedRestart])
            }
            AfterStop::Vacate => (Slot { phase: Idle, crashes }, vec![Effect::Vacate]),
            AfterStop::Policy { exited_at } => after_exit(crashes, since, exit, exited_at, policy),
            AfterStop::Recover { crashes } => {
                let due = if crashes == 0 { now } else { later(now, restart_delay(policy.delay, crashes)) };
                (Slot { phase: Pending { due }, crashes }, vec![Effect::CountRequestedRestart])
            }
        },
        (Running { pid, since }, Event::Stop { now } | Event::Restart { now }) => {
            let then = if matches!(event, Event::Stop { .. }) { AfterStop::Vacate } else { AfterStop::Respawn };
            let kill_at = later(now, policy.stop_timeout);
            (
                Slot { phase: Stopping { pid, since, kill_at, then }, crashes },
                vec![Effect::Signal { pid, signal: policy.stop_signal }],
            )
        }
        (Stopping { pid, since, kill_at, then }, Event::Due { now }) if now >= kill_at => (
            Slot { phase: Killing { pid, since, give_up_at: later(now, KILL_GRACE), then }, crashes },
            vec![Effect::Signal { pid, signal: Signal::SIGKILL }],
        ),
        (Killing { pid, since, give_up_at, then }, Event::Due { now }) if now >= give_up_at => {
            (Slot { phase: Unkillable { pid, since, then }, crashes }, Vec::new())
        }
        // A stop asked for while one is in progress: the process is not
        // started again, whatever was planned.
        (Stopping { .. } | Killing { .. } | Unkillable { .. }, Event::Stop { .. }) => {
            (Slot { phase: with_then(phase, AfterStop::Vacate), crashes }, Vec::new())
        }
        // A restart asked for while the group of a process that exited on
        // its own is being stopped: start again as soon as it is gone.
        (
            Stopping { then: AfterStop::Policy { .. }, .. } | Killing { then: AfterStop::Policy { .. }, .. },
            Event::Restart { .. },
        )
        | (Unkillable { then: AfterStop::Policy { .. }, .. }, Event::Restart { .. }) => {
            (Slot { phase: with_then(phase, AfterStop::Respawn), crashes }, Vec::new())
        }
        (
            Stopping { then: AfterStop::Vacate, .. }
            | Killing { then: AfterStop::Vacate, .. }
            | Unkillable { then: AfterStop::Vacate, .. },
            Event::Keep,
        ) => (Slot { phase: with_then(phase, AfterStop::Respawn), crashes }, Vec::new()),
        (Idle | Pending { .. }, Event::Stop { .. }) => (Slot { phase: Idle, crashes }, vec![Effect::Vacate]),
        (Idle, Event::Restart { now }) => {
            (Slot { phase: Pending { due: now }, crashes: 0 }, vec![Effect::CountRequestedRestart])
        }
        (Pending { .. }, Event::Restart { now }) => (Slot { phase: Pending { due: now }, crashes: 0 }, Vec::new()),
        (Running { pid, since }, Event::Recover { now, why }) => {
            let crashes = match why {
                Recovery::Rule => 0,
                Recovery::Liveness { reset: true } => 1,
                Recovery::Liveness { reset: false } => crashes.saturating_add(1),
            };
            let kill_at = later(now, policy.stop_timeout);
            (
                Slot {
                    phase: Stopping { pid, since, kill_at, then: AfterStop::Recover { crashes } },
                    crashes: slot.crashes,
                },
                vec![Effect::Signal { pid, signal: policy.stop_signal }],
            )
        }
        (Pending { .. }, Event::GiveUp) => (Slot { phase: Failed, crashes }, Vec::new()),
        (_, Event::LastExit { exit, now }) => {
            let (next, effects) = step(slot, policy, Event::Exited { exit, now });
            match next.phase {
                Pending { .. } => (
                    Slot { phase: Failed, crashes: next.crashes },
                    effects
                        .into_iter()
                        .filter(|e| !matches!(e, Effect::CountRestart | Effect::CountRequestedRestart))
                        .collect(),
                ),
                _ => (next, effects),
            }
        }
        (Failed, Event::Restart { now }) => {
            (Slot { phase: Pending { due: now }, crashes: 0 }, vec![Effect::CountRequestedRestart])
        }
        (Failed, Event::Stop { .. }) => (Slot { phase: Failed, crashes }, vec![Effect::Vacate]),
        _ => same,
    }
}

/// The restart policy, applied to a process that ran from `since` to `ended`.
fn after_exit(crashes: u32, since: Instant, exit: ChildExit, ended: Instant, policy: &Policy) -> (Slot, Vec<Effect>) {
    let run = ended.saturating_duration_since(since);
    let crashes = if run < CRASH_RUN {
        crashes.saturating_add(1)
    } else if run >= HEALTHY_RUN {
        0
    } else {
        crashes
    };
    let again = !policy.stop_codes.contains(exit)
        && match policy.restart {
            Restart::Always => true,
            Restart::OnFailure => !policy.success.contains(exit),
            Restart::Never => false,
        };
    if again {
        let due = later(ended, restart_delay(policy.delay, crashes));
        (Slot { phase: Phase::Pending { due }, crashes }, vec![Effect::CountRestart])
    } else {
        (Slot { phase: Phase::Idle, crashes }, Vec::new())
    }
}

/// Whether a liveness restart starts the back-off anew: the process ran
/// `run` in all, the last `failing` of it failing its probe, so it had been
/// healthy for the rest — [`HEALTHY_RUN`] or more resets, as a run of its
/// own that long would.
pub(crate) fn liveness_reset(run: Duration, failing: Duration) -> bool {
    run.saturating_sub(failing) >= HEALTHY_RUN
}

/// Adds an exit at `now` to a slot's recent exits (kept to the window of
/// `limit`, `.give_up(exits, within)`) and says whether the slot gives up:
/// `exits` of them fall within `within`. Without a limit nothing is kept.
pub(crate) fn gives_up(
    history: &mut std::collections::VecDeque<Instant>,
    now: Instant,
    limit: Option<(u32, Duration)>,
) -> bool {
    let Some((exits, within)) = limit else {
        history.clear();
        return false;
    };
    history.push_back(now);
    while history.front().is_some_and(|t| now.saturating_duration_since(*t) > within) {
        history.pop_front();
    }
    while history.len() > exits.max(1) as usize {
        history.pop_front();
    }
    history.len() >= exits.max(1) as usize
}

/// `phase` (a stop in progress) with what follows it replaced.
fn with_then(phase: Phase, then: AfterStop) -> Phase {
    match phase {
        Phase::Stopping { pid, since, kill_at, .. } => Phase::Stopping { pid, since, kill_at, then },
        Phase::Killing { pid, since, give_up_at, .. } => Phase::Killing { pid, since, give_up_at, then },
        Phase::Unkillable { pid, since, .. } => Phase::Unkillable { pid, since, then },
        other => other,
    }
}

/// The seed's exit line: `Exited at T with ExitSuccess.`
pub(crate) fn exit_text(exit: ChildExit, at: u64) -> String {
    match exit {
        ChildExit::Code(0) => format!("Exited at {at} with ExitSuccess."),
        ChildExit::Code(code) => format!("Exited at {at} with ExitFailure {code}."),
        ChildExit::Signal(sig) => {
            let name =
                Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {sig}"));
            format!("Exited at {at}, killed by {name}.")
        }
        ChildExit::Unknown => format!("Exited at {at} with an unknown status."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(restart: Restart, delay_ms: u64) -> Policy {
        Policy {
            restart,
            delay: Duration::from_millis(delay_ms),
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            success: ExitCodes::of(&[0]),
            stop_codes: ExitCodes::default(),
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// Runs a child for `run_ms` and lets it exit with `exit`; returns the slot after.
    fn run_and_exit(p: &Policy, slot: Slot, t: Instant, run_ms: u64, exit: ChildExit) -> (Slot, Vec<Effect>) {
        let (slot, fx) = step(slot, p, Event::Due { now: t });
        assert_eq!(fx, vec![Effect::Spawn]);
        let (slot, _) = step(slot, p, Event::Spawned { pid: 42, now: t });
        step(slot, p, Event::Exited { exit, now: ms(t, run_ms) })
    }

    #[test]
    fn restart_policy_table() {
        let t0 = Instant::now();
        let table = [
            (Restart::Always, ChildExit::Code(0), true),
            (Restart::Always, ChildExit::Code(3), true),
            (Restart::Always, ChildExit::Signal(9), true),
            (Restart::OnFailure, ChildExit::Code(0), false),
            (Restart::OnFailure, ChildExit::Code(3), true),
            (Restart::OnFailure, ChildExit::Signal(15), true),
            (Restart::OnFailure, ChildExit::Unknown, true),
            (Restart::Never, ChildExit::Code(3), false),
            (Restart::Never, ChildExit::Code(0), false),
        ];
        for (restart, exit, again) in table {
            let p = policy(restart, 1000);
            let (slot, fx) = run_and_exit(&p, Slot::new(t0), t0, 4000, exit);
            if again {
                assert_eq!(slot.phase, Phase::Pending { due: ms(t0, 5000) }, "{restart:?} {exit:?}");
                assert_eq!(fx, vec![Effect::CountRestart]);
            } else {
                assert_eq!(slot.phase, Phase::Idle, "{restart:?} {exit:?}");
                assert!(fx.is_empty());
            }
        }
    }

    #[test]
    fn the_sample_is_never_backed_off() {
        let p = policy(Restart::Always, 1000);
        let t0 = Instant::now();
        let mut slot = Slot::new(t0);
        let mut t = t0;
        for _ in 0..20 {
            let (next, _) = run_and_exit(&p, slot, t, 4000, ChildExit::Code(0));
            let Phase::Pending { due } = next.phase else { panic!() };
            assert_eq!(due, ms(t, 5000));
            assert_eq!(next.crashes, 0);
            slot = next;
            t = due;
        }
    }

    #[test]
    fn crash_loop_backs_off_exponentially_then_caps_and_resets() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        let mut slot = Slot::new(t0);
        let mut t = t0;
        let mut delays = Vec::new();
        for _ in 0..12 {
            let (next, _) = run_and_exit(&p, slot, t, 5, ChildExit::Code(3));
            let Phase::Pending { due } = next.phase else { panic!() };
            delays.push(due.duration_since(ms(t, 5)).as_millis() as u64);
            slot = next;
            t = due;
        }
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]);
        // A run between 1 s and 10 s keeps the count; 10 s of uptime resets it.
        let (kept, _) = run_and_exit(&p, slot, t, 2000, ChildExit::Code(3));
        assert_eq!(kept.crashes, slot.crashes);
        let (reset, _) = run_and_exit(&p, slot, t, 10_000, ChildExit::Code(3));
        assert_eq!(reset.crashes, 0);
        assert_eq!(reset.phase, Phase::Pending { due: ms(t, 10_000) });
    }

    #[test]
    fn backoff_is_at_least_the_entry_delay() {
        assert_eq!(restart_delay(Duration::from_secs(5), 1), Duration::from_secs(5));
        assert_eq!(restart_delay(Duration::from_secs(60), 30), Duration::from_secs(60));
        assert_eq!(restart_delay(Duration::ZERO, u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn graceful_stop_then_kill_then_vacate() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        let slot = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: 0 };
        let (slot, fx) = step(slot, &p, Event::Stop { now: ms(t0, 100) });
        assert_eq!(fx, vec![Effect::Signal { pid: 7, signal: Signal::SIGTERM }]);
        assert_eq!(slot.deadline(), Some(ms(t0, 10_100)));
        assert!(matches!(slot.phase, Phase::Stopping { .. }));
        // Not yet due: nothing happens.
        let (slot, fx) = step(slot, &p, Event::Due { now: ms(t0, 5000) });
        assert!(fx.is_empty());
        let (slot, fx) = step(slot, &p, Event::Due { now: ms(t0, 10_100) });
        assert_eq!(fx, vec![Effect::Signal { pid: 7, signal: Signal::SIGKILL }]);
        assert_eq!(slot.deadline(), Some(ms(t0, 10_100) + KILL_GRACE));
        let (slot, fx) = step(slot, &p, Event::Exited { exit: ChildExit::Signal(9), now: ms(t0, 10_101) });
        assert_eq!(fx, vec![Effect::Vacate]);
        assert_eq!(slot.phase, Phase::Idle);
    }

    #[test]
    fn restart_stops_then_starts_at_once_and_counts() {
        let p = policy(Restart::Never, 1000);
        let t0 = Instant::now();
        let slot = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: 3 };
        let (slot, fx) = step(slot, &p, Event::Restart { now: t0 });
        assert_eq!(fx, vec![Effect::Signal { pid: 7, signal: Signal::SIGTERM }]);
        let (slot, fx) = step(slot, &p, Event::Exited { exit: ChildExit::Signal(15), now: ms(t0, 20) });
        assert_eq!(fx, vec![Effect::CountRequestedRestart], "asked for, not after an exit of its own");
        assert_eq!(slot, Slot { phase: Phase::Pending { due: ms(t0, 20) }, crashes: 0 });
    }

    #[test]
    fn stop_wins_over_a_restart_in_progress() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        let slot = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: 0 };
        let (slot, _) = step(slot, &p, Event::Restart { now: t0 });
        let (slot, fx) = step(slot, &p, Event::Stop { now: t0 });
        assert!(fx.is_empty(), "no second signal");
        let (_, fx) = step(slot, &p, Event::Exited { exit: ChildExit::Code(0), now: t0 });
        assert_eq!(fx, vec![Effect::Vacate]);
    }

    #[test]
    fn stopping_an_idle_or_pending_slot_vacates_it_at_once() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        for phase in [Phase::Idle, Phase::Pending { due: ms(t0, 500) }] {
            let (_, fx) = step(Slot { phase, crashes: 0 }, &p, Event::Stop { now: t0 });
            assert_eq!(fx, vec![Effect::Vacate]);
        }
    }

    #[test]
    fn restart_of_an_idle_or_backed_off_slot_starts_now() {
        let p = policy(Restart::Never, 0);
        let t0 = Instant::now();
        // An idle slot counts a restart; a pending one had counted it already.
        for (phase, counted) in [(Phase::Idle, true), (Phase::Pending { due: ms(t0, 30_000) }, false)] {
            let (slot, fx) = step(Slot { phase, crashes: 9 }, &p, Event::Restart { now: t0 });
            assert_eq!(slot, Slot { phase: Phase::Pending { due: t0 }, crashes: 0 });
            assert_eq!(fx.contains(&Effect::CountRequestedRestart), counted);
        }
    }

    #[test]
    fn a_failed_spawn_counts_as_a_crash() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        let (slot, fx) = step(Slot::new(t0), &p, Event::SpawnFailed { now: t0 });
        assert_eq!(slot, Slot { phase: Phase::Pending { due: ms(t0, 100) }, crashes: 1 });
        assert!(fx.is_empty());
        // A start that failed in the child (its process ran no program):
        // the same crash, from Running, and no restart counted.
        let running = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: 2 };
        let (slot, fx) = step(running, &p, Event::SpawnFailed { now: t0 });
        assert_eq!(slot, Slot { phase: Phase::Pending { due: ms(t0, 400) }, crashes: 3 });
        assert!(fx.is_empty(), "{fx:?}");
    }

    #[test]
    fn events_that_do_not_apply_change_nothing() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        let pending = Slot { phase: Phase::Pending { due: ms(t0, 50) }, crashes: 0 };
        assert_eq!(step(pending, &p, Event::Due { now: t0 }), (pending, vec![]));
        let idle = Slot { phase: Phase::Idle, crashes: 0 };
        assert_eq!(step(idle, &p, Event::Due { now: t0 }), (idle, vec![]));
        let running = Slot { phase: Phase::Running { pid: 1, since: t0 }, crashes: 0 };
        assert_eq!(step(running, &p, Event::Due { now: ms(t0, 99_999) }), (running, vec![]));
    }
    #[test]
    fn a_leader_that_leaves_its_group_behind_is_restarted_only_once_the_group_is_gone() {
        let p = policy(Restart::Always, 500);
        let t0 = Instant::now();
        let slot = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: 0 };
        // The leader exits after 4 s; members of its group live on.
        let (slot, fx) = step(slot, &p, Event::LeaderExited { now: ms(t0, 4000) });
        assert_eq!(fx, vec![Effect::Signal { pid: 7, signal: Signal::SIGTERM }]);
        assert_eq!(slot.deadline(), Some(ms(t0, 14_000)));
        assert_eq!(slot.pid(), Some(7), "the slot still holds the process");
        // A second report changes nothing.
        assert_eq!(step(slot, &p, Event::LeaderExited { now: ms(t0, 4001) }), (slot, vec![]));
        // The group is gone at 7 s: the policy applies as of the leader's exit.
        let (slot, fx) = step(slot, &p, Event::Exited { exit: ChildExit::Code(0), now: ms(t0, 7000) });
        assert_eq!(fx, vec![Effect::CountRestart]);
        assert_eq!(slot, Slot { phase: Phase::Pending { due: ms(t0, 4500) }, crashes: 0 });
    }

    #[test]
    fn a_short_run_whose_group_lingers_is_still_a_crash() {
        let p = policy(Restart::OnFailure, 0);
        let t0 = Instant::now();
        let slot = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: 2 };
        let (slot, _) = step(slot, &p, Event::LeaderExited { now: ms(t0, 300) });
        let (slot, _) = step(slot, &p, Event::Exited { exit: ChildExit::Code(1), now: ms(t0, 5000) });
        assert_eq!(slot, Slot { phase: Phase::Pending { due: ms(t0, 700) }, crashes: 3 });
        // A success under OnFailure leaves the slot idle, however long the group took.
        let slot = Slot { phase: Phase::Running { pid: 8, since: t0 }, crashes: 0 };
        let (slot, _) = step(slot, &p, Event::LeaderExited { now: ms(t0, 300) });
        let (slot, fx) = step(slot, &p, Event::Exited { exit: ChildExit::Code(0), now: ms(t0, 900) });
        assert_eq!((slot.phase, fx), (Phase::Idle, vec![]));
    }

    #[test]
    fn stop_and_restart_requests_while_a_group_drains() {
        let p = policy(Restart::Never, 0);
        let t0 = Instant::now();
        let running = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: 0 };
        let (draining, _) = step(running, &p, Event::LeaderExited { now: t0 });
        // restart: start again as soon as the group is gone (Never does not apply).
        let (slot, fx) = step(draining, &p, Event::Restart { now: t0 });
        assert!(fx.is_empty(), "no second signal");
        let (slot, fx) = step(slot, &p, Event::Exited { exit: ChildExit::Code(0), now: ms(t0, 50) });
        assert_eq!((slot.phase, fx), (Phase::Pending { due: ms(t0, 50) }, vec![Effect::CountRequestedRestart]));
        // stop: vacate once gone.
        let (slot, _) = step(draining, &p, Event::Stop { now: t0 });
        let (_, fx) = step(slot, &p, Event::Exited { exit: ChildExit::Code(0), now: ms(t0, 50) });
        assert_eq!(fx, vec![Effect::Vacate]);
    }

    #[test]
    fn a_group_that_outlives_sigkill_makes_the_slot_unkillable_until_it_is_gone() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        let slot = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: 0 };
        let (slot, _) = step(slot, &p, Event::Stop { now: t0 });
        let (slot, _) = step(slot, &p, Event::Due { now: ms(t0, 10_000) });
        let give_up = ms(t0, 10_000) + KILL_GRACE;
        let (slot, fx) = step(slot, &p, Event::Due { now: give_up });
        assert!(fx.is_empty());
        assert!(matches!(slot.phase, Phase::Unkillable { pid: 7, then: AfterStop::Vacate, .. }));
        assert_eq!(slot.deadline(), None, "nothing more to do but wait");
        assert_eq!(slot.pid(), Some(7));
        let (_, fx) = step(slot, &p, Event::Exited { exit: ChildExit::Signal(9), now: ms(t0, 60_000) });
        assert_eq!(fx, vec![Effect::Vacate]);
    }

    #[test]
    fn a_slot_being_stopped_for_good_is_kept_when_wanted_again() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        let running = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: 0 };
        let (stopping, _) = step(running, &p, Event::Stop { now: ms(t0, 1_000) });
        let (kept, fx) = step(stopping, &p, Event::Keep);
        assert!(fx.is_empty(), "nothing to do until the process is gone");
        assert!(matches!(kept.phase, Phase::Stopping { pid: 7, then: AfterStop::Respawn, .. }), "{kept:?}");
        let (after, fx) = step(kept, &p, Event::Exited { exit: ChildExit::Signal(15), now: ms(t0, 1_500) });
        assert!(matches!(after.phase, Phase::Pending { .. }), "started again, not vacated: {after:?}");
        assert!(!fx.contains(&Effect::Vacate));
        // Keep changes nothing for a slot that is not being stopped for good.
        for slot in [running, Slot { phase: Phase::Idle, crashes: 0 }] {
            assert_eq!(step(slot, &p, Event::Keep), (slot, Vec::new()));
        }
        let (restarting, _) = step(running, &p, Event::Restart { now: ms(t0, 1_000) });
        assert_eq!(step(restarting, &p, Event::Keep), (restarting, Vec::new()));
    }

    #[test]
    fn success_and_stop_codes() {
        let t0 = Instant::now();
        let mut p = policy(Restart::OnFailure, 0);
        p.success = ExitCodes::of(&[0, 143]);
        p.stop_codes = ExitCodes::of(&[125]);
        // (policy, exit, restarted)
        let table = [
            (Restart::OnFailure, ChildExit::Code(143), false),
            (Restart::OnFailure, ChildExit::Code(0), false),
            (Restart::OnFailure, ChildExit::Code(1), true),
            (Restart::OnFailure, ChildExit::Signal(15), true),
            (Restart::OnFailure, ChildExit::Code(125), false),
            (Restart::Always, ChildExit::Code(125), false),
            (Restart::Always, ChildExit::Code(124), true),
        ];
        for (restart, exit, again) in table {
            p.restart = restart;
            let (slot, _) = run_and_exit(&p, Slot::new(t0), t0, 4000, exit);
            assert_eq!(matches!(slot.phase, Phase::Pending { .. }), again, "{restart:?} {exit:?}");
        }
        assert_eq!(ExitCodes::of(&[0, 143, 300, -1]).list(), vec![0, 143]);
        assert!(!ExitCodes::of(&[9]).contains(ChildExit::Signal(9)));
    }

    #[test]
    fn recovery_restarts_count_and_liveness_backs_off() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        // (crashes before, why, crashes after, due after the exit)
        let table = [
            (3, Recovery::Rule, 0, 0),
            (0, Recovery::Liveness { reset: false }, 1, 100),
            (2, Recovery::Liveness { reset: false }, 3, 400),
            (5, Recovery::Liveness { reset: true }, 1, 100),
        ];
        for (before, why, after, due_ms) in table {
            let slot = Slot { phase: Phase::Running { pid: 7, since: t0 }, crashes: before };
            let (slot, fx) = step(slot, &p, Event::Recover { now: t0, why });
            assert_eq!(fx, vec![Effect::Signal { pid: 7, signal: Signal::SIGTERM }]);
            let (slot, fx) = step(slot, &p, Event::Exited { exit: ChildExit::Signal(15), now: ms(t0, 50) });
            assert_eq!(fx, vec![Effect::CountRequestedRestart], "{why:?}");
            assert_eq!(slot, Slot { phase: Phase::Pending { due: ms(t0, 50 + due_ms) }, crashes: after }, "{why:?}");
        }
        // Only a running process is recovered.
        for phase in [Phase::Idle, Phase::Pending { due: t0 }, Phase::Failed] {
            let slot = Slot { phase, crashes: 0 };
            assert_eq!(step(slot, &p, Event::Recover { now: t0, why: Recovery::Rule }), (slot, vec![]));
        }
    }

    #[test]
    fn a_slot_that_gives_up_is_failed_until_restarted() {
        let p = policy(Restart::Always, 0);
        let t0 = Instant::now();
        let (slot, _) = run_and_exit(&p, Slot::new(t0), t0, 4000, ChildExit::Code(1));
        let (failed, fx) = step(slot, &p, Event::GiveUp);
        assert_eq!((failed.phase, fx), (Phase::Failed, vec![]));
        assert_eq!(failed.deadline(), None);
        assert_eq!(step(failed, &p, Event::Due { now: ms(t0, 99_000) }), (failed, vec![]));
        let (again, fx) = step(failed, &p, Event::Restart { now: ms(t0, 5000) });
        assert_eq!(again, Slot { phase: Phase::Pending { due: ms(t0, 5000) }, crashes: 0 });
        assert_eq!(fx, vec![Effect::CountRequestedRestart]);
        let (_, fx) = step(failed, &p, Event::Stop { now: t0 });
        assert_eq!(fx, vec![Effect::Vacate]);
        // The last exit: failed at once, no restart counted; with a policy
        // that does not restart, the slot is idle as usual.
        let running = Slot { phase: Phase::Running { pid: 1, since: t0 }, crashes: 0 };
        let (slot, fx) = step(running, &p, Event::LastExit { exit: ChildExit::Code(1), now: ms(t0, 5000) });
        assert_eq!((slot.phase, fx), (Phase::Failed, vec![]));
        let never = policy(Restart::Never, 0);
        let (slot, _) = step(running, &never, Event::LastExit { exit: ChildExit::Code(1), now: ms(t0, 5000) });
        assert_eq!(slot.phase, Phase::Idle);
        // Give up applies only to a slot about to start again.
        let running = Slot { phase: Phase::Running { pid: 1, since: t0 }, crashes: 0 };
        assert_eq!(step(running, &p, Event::GiveUp), (running, vec![]));
    }

    #[test]
    fn liveness_back_off_starts_anew_after_a_healthy_run() {
        let s = Duration::from_secs;
        // (ran, failing for, reset)
        for (run, failing, reset) in
            [(s(3), s(3), false), (s(12), s(3), false), (s(13), s(3), true), (s(60), s(0), true), (s(2), s(9), false)]
        {
            assert_eq!(liveness_reset(run, failing), reset, "{run:?} {failing:?}");
        }
    }

    #[test]
    fn give_up_counts_exits_within_the_window() {
        let t0 = Instant::now();
        let limit = Some((3, Duration::from_secs(10)));
        let mut h = std::collections::VecDeque::new();
        // (exit at ms, gives up)
        for (at, gives_up_now) in [(0, false), (4000, false), (11_000, false), (12_000, true)] {
            assert_eq!(gives_up(&mut h, ms(t0, at), limit), gives_up_now, "at {at}");
        }
        let mut h = std::collections::VecDeque::new();
        assert!(!gives_up(&mut h, t0, None));
        assert!(h.is_empty());
        assert!(gives_up(&mut h, t0, Some((1, Duration::from_secs(1)))), "one exit is enough for give_up(1, …)");
    }

    /// The longest durations, at the latest instants: no step panics and
    /// every deadline is at or after its event.
    #[test]
    fn extreme_durations_saturate() {
        let t0 = Instant::now();
        let far = crate::budget::later(t0, Duration::MAX);
        for (delay, stop_timeout) in [
            (Duration::MAX, Duration::MAX),
            (Duration::ZERO, Duration::MAX),
            (Duration::MAX, Duration::ZERO),
            (crate::budget::MAX_DURATION, crate::budget::MAX_DURATION),
        ] {
            let p = Policy {
                restart: Restart::Always,
                delay,
                stop_signal: Signal::SIGTERM,
                stop_timeout,
                success: ExitCodes::of(&[0]),
                stop_codes: ExitCodes::default(),
            };
            for now in [t0, far] {
                let mut slot = Slot::new(now);
                let events = [
                    Event::Due { now },
                    Event::Spawned { pid: 7, now },
                    Event::LeaderExited { now },
                    Event::Due { now: far },
                    Event::Due { now: far },
                    Event::Restart { now },
                    Event::Exited { exit: ChildExit::Code(1), now },
                    Event::SpawnFailed { now },
                    Event::Due { now: far },
                    Event::Spawned { pid: 8, now: far },
                    Event::Stop { now: far },
                    Event::Exited { exit: ChildExit::Signal(9), now: far },
                ];
                for event in events {
                    let (next, _) = step(slot, &p, event);
                    if let Some(d) = next.deadline() {
                        assert!(d >= now.min(far), "{next:?} after {event:?}");
                    }
                    slot = next;
                }
                // A crash loop at the far end: back-off saturates too.
                let crashing = Slot { phase: Phase::Running { pid: 9, since: far }, crashes: u32::MAX };
                let (next, _) = step(crashing, &p, Event::Exited { exit: ChildExit::Code(3), now: far });
                assert!(matches!(next.phase, Phase::Pending { due } if due >= far));
            }
        }
    }
}
