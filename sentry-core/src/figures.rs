//! What a status shows that is read from the system — each process's
//! resident size (`/proc/PID/statm`) and each slot's cgroup figures
//! (`cgroup.procs`, `cpu.stat`, and `memory.current` or the PSS of every
//! process in it from `smaps_rollup`) — read on the thread that asked for
//! the status, never on the core's. At 1 000 children those reads take
//! ~150 ms on a 2-core VM; made by the core, every `status`, dashboard
//! refresh or metrics scrape held up every restart for that long.
//!
//! The core answers with an [`Unread`] status: everything it knows, and
//! the cgroups to read by name. [`Cache`] reads them, at most once a second
//! per process and per cgroup, one asker at a time: a flood of requests
//! costs one round of reads at a time however many ask. The figures are
//! read just after the state was taken: a process that ends in between
//! shows what is left of it (a zombie's resident size is 0, an emptied
//! cgroup counts no process). This module knows the status types and the
//! files; nothing of slots, HTTP or the core.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cgroup::{self, Cgroup};
use crate::status::{EntryStatus, Status, TreeStatus};

/// How long a figure read for a status is shown again without reading it anew.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

/// A status as the core knows it, with the figures still to read.
pub(crate) struct Unread<T> {
    shown: T,
    reads: Reads,
}

/// The cgroups a status names, to be read.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    /// `memory.current` is there to read (the memory controller is on).
    memory: bool,
    /// By the name a status shows (`/proc/PID/cgroup`'s): the row's
    /// generation (which keys the cache: a slot's next process gets a leaf
    /// of the same name) and the directory.
    cgroups: HashMap<String, (u64, PathBuf)>,
}

impl Reads {
    pub fn new(memory: bool) -> Reads {
        Reads { memory, cgroups: HashMap::new() }
    }

    /// Names `cgroup`, the cgroup of row `gen`, for reading; its name as a status shows it.
    pub fn name(&mut self, gen: u64, cgroup: &Cgroup) -> String {
        let name = cgroup.name().to_string();
        self.cgroups.insert(name.clone(), (gen, cgroup.path().to_path_buf()));
        name
    }
}

impl<T: Shown> Unread<T> {
    pub fn new(shown: T, reads: Reads) -> Unread<T> {
        Unread { shown, reads }
    }

    /// The status with its figures, read through `cache`. A figure counts
    /// as fresh by its age when the status was asked for, not when the
    /// lock was got: whoever waited behind another asker's reads takes
    /// what those reads found, even when a round of reads takes longer
    /// than [`FRESH`] (thousands of mappings per process make each PSS
    /// read slow), so a flood costs one round at a time and an asker waits
    /// for at most the round under way and its own.
    pub fn read(mut self, cache: &Cache) -> T {
        let asked = Instant::now();
        let mut state = cache.state.lock().unwrap_or_else(|p| p.into_inner());
        state.asked = asked;
        state.prune(self.shown.rows());
        self.shown.fill(&self.reads, &mut state);
        self.shown
    }

    /// The status without figures (`rss_bytes` and `tree` null, no process counted).
    #[cfg(test)]
    pub fn unread(self) -> T {
        self.shown
    }
}

/// A status whose figures can be filled in.
pub(crate) trait Shown {
    /// How many figures it shows (for the cache's pruning).
    fn rows(&self) -> usize;
    fn fill(&mut self, reads: &Reads, state: &mut State);
}

impl Shown for EntryStatus {
    fn rows(&self) -> usize {
        self.processes.len() + self.slots.len() + self.unkillable.len()
    }

    fn fill(&mut self, reads: &Reads, state: &mut State) {
        for p in &mut self.processes {
            p.rss_bytes = state.rss(p.pid as i32);
        }
        let mut sum = None;
        for s in &mut self.slots {
            let Some(tree) = s.cgroup.as_ref().and_then(|name| state.tree(reads, name)) else { continue };
            s.tree = Some(tree);
            let total = sum.get_or_insert(TreeStatus::default());
            *total = TreeStatus {
                processes: total.processes + tree.processes,
                cpu_usec: total.cpu_usec + tree.cpu_usec,
                memory_bytes: total.memory_bytes + tree.memory_bytes,
                memory_current: tree.memory_current,
            };
        }
        self.tree = sum;
        for u in &mut self.unkillable {
            u.processes = state.tree(reads, &u.cgroup).map_or(0, |t| t.processes);
        }
    }
}

impl Shown for Status {
    fn rows(&self) -> usize {
        self.entries.iter().map(Shown::rows).sum()
    }

    fn fill(&mut self, reads: &Reads, state: &mut State) {
        for e in &mut self.entries {
            e.fill(reads, state);
        }
    }
}

/// Figures read lately, shared by everything that asks a core for its
/// status (one per [`CoreHandle`](crate::supervisor::CoreHandle) and its clones).
#[derive(Debug, Default)]
pub(crate) struct Cache {
    state: Mutex<State>,
}

/// The figures behind [`Cache`]'s lock, each with when it was read.
#[derive(Debug)]
pub(crate) struct State {
    rss: HashMap<i32, (Instant, Option<u64>)>,
    trees: HashMap<u64, (Instant, cgroup::Figures)>,
    /// When the status being filled was asked for.
    asked: Instant,
}

impl Default for State {
    fn default() -> State {
        State { rss: HashMap::new(), trees: HashMap::new(), asked: Instant::now() }
    }
}

impl State {
    /// Whether a figure read at `at` is fresh for the status being filled.
    fn fresh(&self, at: Instant) -> bool {
        self.asked.saturating_duration_since(at) < FRESH
    }

    /// Forgets stale figures once there are many more than a status shows.
    fn prune(&mut self, rows: usize) {
        let asked = self.asked;
        if self.rss.len() > 2 * rows + 64 {
            self.rss.retain(|_, (at, _)| asked.saturating_duration_since(*at) < FRESH);
        }
        if self.trees.len() > 2 * rows + 64 {
            self.trees.retain(|_, (at, _)| asked.saturating_duration_since(*at) < FRESH);
        }
    }

    /// The resident size of `pid` in bytes, read at most once per [`FRESH`].
    fn rss(&mut self, pid: i32) -> Option<u64> {
        match self.rss.get(&pid) {
            Some((at, rss)) if self.fresh(*at) => *rss,
            _ => {
                let rss = crate::proc::rss_bytes(pid);
                self.rss.insert(pid, (Instant::now(), rss));
                rss
            }
        }
    }

    /// The figures of the cgroup a status names `name`, read at most once per [`FRESH`].
    fn tree(&mut self, reads: &Reads, name: &str) -> Option<TreeStatus> {
        let (gen, dir) = reads.cgroups.get(name)?;
        let f = match self.trees.get(gen) {
            Some((at, f)) if self.fresh(*at) => *f,
            _ => {
                let f = cgroup::figures_of(dir, reads.memory);
                self.trees.insert(*gen, (Instant::now(), f));
                f
            }
        };
        Some(TreeStatus {
            processes: f.processes,
            cpu_usec: f.cpu_usec,
            memory_bytes: f.memory_bytes,
            memory_current: f.memory_current,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ProcessStatus, SlotState, SlotStatus, UnkillableStatus};

    fn entry(slots: Vec<SlotStatus>, unkillable: Vec<UnkillableStatus>) -> EntryStatus {
        let mut e: EntryStatus = serde_json::from_value(serde_json::json!({
            "name": "e", "command": "sleep", "args": [], "delay_ms": 0, "count": 1, "configured_count": 1,
            "restarts": 0, "state": "running", "processes": [], "rules": [], "tree": null, "unkillable": []
        }))
        .unwrap();
        e.slots = slots;
        e.unkillable = unkillable;
        e
    }

    fn slot(index: usize, cgroup: Option<&str>) -> SlotStatus {
        let cgroup = cgroup.map(str::to_string);
        SlotStatus { index, state: SlotState::Running, pid: None, ready: None, error: None, cgroup, tree: None }
    }

    /// A cgroup directory of the test's own: `cgroup.procs` and `cpu.stat`
    /// are plain files there, as `figures_of` reads them.
    fn fake_cgroup(dir: &std::path::Path, pids: &str, usec: u64) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pids).unwrap();
        std::fs::write(dir.join("cpu.stat"), format!("usage_usec {usec}\n")).unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        dir.to_path_buf()
    }

    #[test]
    fn figures_are_read_for_what_the_core_named_and_summed_per_entry() {
        let tmp = std::env::temp_dir().join(format!("sentry-figures-{}", std::process::id()));
        let me = std::process::id();
        let a = fake_cgroup(&tmp.join("a"), &format!("{me}\n"), 100);
        let b = fake_cgroup(&tmp.join("b"), "", 20);
        let mut reads = Reads::new(true);
        reads.cgroups.insert("/x/a".into(), (1, a));
        reads.cgroups.insert("/x/b".into(), (2, b));
        let mut e = entry(
            vec![slot(0, Some("/x/a")), slot(1, Some("/x/b")), slot(2, None), slot(3, Some("/x/unnamed"))],
            vec![UnkillableStatus { index: 1, pid: 7, cgroup: "/x/a".into(), processes: 0 }],
        );
        e.processes.push(ProcessStatus { pid: me, index: 0, started_at: 0, rss_bytes: None });
        let e = Unread::new(e, reads).read(&Cache::default());
        let a = TreeStatus { processes: 1, cpu_usec: 100, memory_bytes: 4096, memory_current: true };
        let b = TreeStatus { processes: 0, cpu_usec: 20, memory_bytes: 4096, memory_current: true };
        assert_eq!(e.slots.iter().map(|s| s.tree).collect::<Vec<_>>(), vec![Some(a), Some(b), None, None]);
        assert_eq!(e.tree, Some(TreeStatus { processes: 1, cpu_usec: 120, memory_bytes: 8192, memory_current: true }));
        assert_eq!(e.unkillable[0].processes, 1);
        assert!(e.processes[0].rss_bytes.is_some_and(|r| r > 0), "this process's own resident size");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_figure_is_read_again_only_once_it_is_stale() {
        let tmp = std::env::temp_dir().join(format!("sentry-figures-fresh-{}", std::process::id()));
        let dir = fake_cgroup(&tmp, "", 5);
        let cache = Cache::default();
        let read = |gen: u64| {
            let mut reads = Reads::new(false);
            reads.cgroups.insert("/x".into(), (gen, dir.clone()));
            let e = Unread::new(entry(vec![slot(0, Some("/x"))], vec![]), reads).read(&cache);
            e.slots[0].tree.unwrap().cpu_usec
        };
        assert_eq!(read(1), 5);
        std::fs::write(dir.join("cpu.stat"), "usage_usec 9\n").unwrap();
        assert_eq!(read(1), 5, "fresh: not read again");
        assert_eq!(read(2), 9, "another row's cgroup of the same name is read anew");
        cache.state.lock().unwrap().trees.get_mut(&1).unwrap().0 -= FRESH;
        assert_eq!(read(1), 9, "stale: read again");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn an_asker_that_waited_behind_a_long_round_takes_what_it_read() {
        let tmp = std::env::temp_dir().join(format!("sentry-figures-waited-{}", std::process::id()));
        let dir = fake_cgroup(&tmp, "", 9);
        let mut reads = Reads::new(false);
        reads.cgroups.insert("/x".into(), (1, dir));
        let now = Instant::now();
        let figures = |usec| cgroup::Figures { processes: 0, cpu_usec: usec, memory_bytes: 0, memory_current: false };
        let fill = |asked: Instant, read_at: Instant| {
            let mut state = State { asked, ..State::default() };
            state.trees.insert(1, (read_at, figures(5)));
            let mut e = entry(vec![slot(0, Some("/x"))], vec![]);
            e.fill(&reads, &mut state);
            e.slots[0].tree.unwrap().cpu_usec
        };
        // Asked 3 s ago, behind a round of reads that took longer than
        // FRESH: a figure that round read 1.5 s ago is taken as it is.
        assert_eq!(fill(now - 3 * FRESH, now - 3 * FRESH / 2), 5);
        // One read before the asker asked, and by then stale: read again.
        assert_eq!(fill(now - FRESH / 2, now - 2 * FRESH), 9);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
