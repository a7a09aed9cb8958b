//! What an instance leaves behind if it is SIGKILLed: PDEATHSIG reaches only
//! its direct children, so other members of their process groups (and,
//! under cgroup containment, everything in its cgroups) live on. While it
//! runs, an instance keeps `DIR/NAME.procs` — the identity of each process
//! group it owns, and its cgroup — up to date; the next `start` in the same
//! DIR reads it, finds the survivors by identity (or empties the recorded
//! cgroup, `cgroup::stop_recorded`) and stops them, and says so.
//! This module owns that file's format and the search; it knows nothing of
//! slots or of the core's tables.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{proc, sys, Signal};

/// Version of the `NAME.procs` format.
const VERSION: u32 = 1;
/// How long survivors get after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// The groups an instance owns, as written to `DIR/NAME.procs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    pub version: u32,
    /// The instance's session: its children's too (they never leave it by
    /// Sentry's doing).
    pub session: i32,
    pub groups: Vec<Group>,
    /// The instance's cgroup directory, under cgroup containment.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// One process group Sentry started: its leader's identity and its entry
/// (every member inherits `SENTRY_ENTRY=entry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Group {
    pub pgid: i32,
    pub starttime: u64,
    pub entry: String,
}

impl Ledger {
    pub fn new(groups: Vec<Group>, cgroup: Option<PathBuf>) -> Ledger {
        Ledger { version: VERSION, session: sys::own_session(), groups, cgroup }
    }
}

/// Replaces the file at `path` with `ledger` (written aside, then renamed,
/// so a reader never sees half of it); removes it when nothing is left to record.
pub(crate) fn write(path: &Path, ledger: &Ledger) -> io::Result<()> {
    if ledger.groups.is_empty() && ledger.cgroup.is_none() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let text = serde_json::to_string(ledger).map_err(io::Error::other)?;
    let aside = path.with_extension("procs.new");
    let written = std::fs::write(&aside, text).and_then(|()| std::fs::rename(&aside, path));
    if written.is_err() {
        // Half written (a full disk, a file-size limit): not left behind.
        let _ = std::fs::remove_file(&aside);
    }
    written
}

/// Reads the ledger a previous instance left at `path` (none if it ended
/// cleanly), stops every process that is still a member of one of its
/// groups — verified by session, group, start time and `SENTRY_ENTRY`, and
/// signalled through a pidfd — or, when it names a cgroup, everything in
/// that cgroup if it is the instance `name` of `dir`'s own
/// (`cgroup::stop_recorded`); and removes the file. A file someone else
/// could have written (not ours, or writable by group or others) is
/// trusted with nothing. One line per finding, and the cgroup it emptied.
pub(crate) fn stop_left(path: &Path, name: &str, dir: &Path) -> (Vec<String>, Option<PathBuf>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return (Vec::new(), None) };
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
        let line = format!(
            "{} is not a file of this user's that only it can write: not trusted, nothing was stopped",
            path.display()
        );
        return (vec![line], None);
    }
    let Ok(text) = std::fs::read_to_string(path) else { return (Vec::new(), None) };
    let _ = std::fs::remove_file(path);
    let ledger: Ledger = match serde_json::from_str(&text) {
        Ok(l) => l,
        Err(e) => return (vec![format!("{} is unreadable ({e}): nothing was stopped", path.display())], None),
    };
    match ledger.cgroup {
        // Every process of the instance was in its cgroup: that is where
        // they are looked for, and only there.
        Some(root) => crate::cgroup::stop_recorded(&root, name, dir),
        None => (stop_groups(&ledger), None),
    }
}

/// The cgroup a running instance records in its ledger at `path`, if any.
pub(crate) fn recorded_cgroup(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Ledger>(&text).ok()?.cgroup
}

/// Stops the survivors of the ledger's process groups.
fn stop_groups(ledger: &Ledger) -> Vec<String> {
    // A group whose number now belongs to a process other than its recorded
    // leader was reused: while any member of ours lived, the number could not
    // be handed out again, so every process in it is someone else's.
    let groups: Vec<&Group> = ledger.groups.iter().filter(|g| !reused(g)).collect();
    let mut found: Vec<(OwnedFd, String)> = Vec::new();
    for pid in proc::pids() {
        let Some(g) = groups.iter().find(|g| member_of(pid, g, ledger.session)) else { continue };
        let Ok(fd) = sys::pidfd_open(pid) else { continue };
        // The pidfd pins the process: check it is still the one we verified.
        if !member_of(pid, g, ledger.session) {
            continue;
        }
        let cmdline = proc::cmdline(pid).join(" ");
        if sys::pidfd_send_signal(fd.as_fd(), Signal::SIGTERM).is_ok() {
            found.push((fd, format!("{pid} ({cmdline}) of {}", g.entry)));
        }
    }
    if found.is_empty() {
        return Vec::new();
    }
    let deadline = Instant::now() + GRACE;
    let mut killed = Vec::new();
    for (fd, what) in &found {
        if !exited_by(fd, deadline) {
            let _ = sys::pidfd_send_signal(fd.as_fd(), Signal::SIGKILL);
            killed.push(what.clone());
        }
    }
    let mut lines = vec![format!(
        "Found {} process{} left by a previous instance: {}; stopped.",
        found.len(),
        if found.len() == 1 { "" } else { "es" },
        found.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join(", ")
    )];
    if !killed.is_empty() {
        lines.push(format!("SIGKILLed after {} s: {}.", GRACE.as_secs(), killed.join(", ")));
    }
    lines
}

/// Whether the number of group `g` now names another process than its
/// leader (any state, a zombie too): the number was freed and reused.
fn reused(g: &Group) -> bool {
    proc::stat(g.pgid).is_some_and(|s| s.starttime != g.starttime)
}

/// Whether `pid` is a live member of group `g` started by an instance of
/// session `session`.
fn member_of(pid: i32, g: &Group, session: i32) -> bool {
    let Some(s) = proc::stat(pid) else { return false };
    let same_group = s.pgrp == g.pgid && s.session == session;
    !s.is_zombie()
        && same_group
        && s.starttime >= g.starttime
        && proc::environ_var(pid, "SENTRY_ENTRY").as_deref() == Some(g.entry.as_str())
}

/// Waits until the process behind `fd` exits, at most until `deadline`.
fn exited_by(fd: &OwnedFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    sys::poll(&mut fds, left).is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_round_trips_and_an_empty_one_removes_the_file() {
        let dir = std::env::temp_dir().join(format!("sentry-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.procs");
        let ledger = Ledger::new(vec![Group { pgid: 42, starttime: 7, entry: "web".into() }], None);
        write(&path, &ledger).unwrap();
        let back: Ledger = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, ledger);
        let tree = Ledger::new(vec![], Some("/sys/fs/cgroup/sentry.x.00000000".into()));
        write(&path, &tree).unwrap();
        assert!(path.exists(), "a cgroup alone is worth recording");
        write(&path, &Ledger::new(vec![], None)).unwrap();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_group_whose_number_names_another_leader_was_reused() {
        let me = proc::stat(std::process::id() as i32).unwrap();
        assert!(reused(&Group { pgid: me.pid, starttime: me.starttime + 1, entry: "q".into() }));
        assert!(!reused(&Group { pgid: me.pid, starttime: me.starttime, entry: "q".into() }));
    }

    #[test]
    fn a_stranger_with_the_groups_number_but_not_its_marks_is_left_alone() {
        // This test process: its own group and session, but no SENTRY_ENTRY.
        let me = proc::stat(std::process::id() as i32).unwrap();
        let g = Group { pgid: me.pgrp, starttime: 0, entry: "web".into() };
        assert!(!member_of(me.pid, &g, me.session));
    }
}
