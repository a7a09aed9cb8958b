//! cgroup v2 containment: the instance's own cgroup tree and the leaf
//! cgroup each process of it runs in. Where Sentry can write the cgroup v2
//! hierarchy (root, or a delegated subtree), an instance owns
//! `<its own cgroup>/sentry.<NAME>.<hash of the canonical DIR>` and makes one
//! leaf per process below it (`<ENTRY>/<SLOT>` for a slot, `<TARGET>/exec.<N>`
//! for an `exec` helper). A child is moved into its leaf between fork and
//! exec (a write of `0` to the leaf's `cgroup.procs`, opened before the
//! fork), so none of its code, and none of its descendants, ever runs
//! outside it. "Gone" means the leaf's `cgroup.events` says `populated 0`;
//! the stop signal reaches every member through a pidfd, after the member's
//! `/proc/PID/cgroup` was checked (a PID read from `cgroup.procs` may be
//! reused by the time it is signalled); SIGKILL is `cgroup.kill`.
//!
//! Facts from the kernel's cgroup-v2 documentation and checked on these
//! machines (DESIGN.md): the v2 mount is found in `/proc/self/mountinfo`
//! (type `cgroup2`, at `/sys/fs/cgroup/unified` in the hybrid layout); a
//! zombie is no longer a member (`populated 0` while Sentry's leader waits
//! unreaped); `cgroup.kill` exists since Linux 5.14; a change of
//! `cgroup.events` raises an inotify `IN_MODIFY`.
//!
//! This module knows nothing of slots, entries' policies or the core's
//! tables; it reads `/proc` only through [`crate::proc`].

use std::fs;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{proc, sys, Signal};

/// The prefix of every instance cgroup's name.
const PREFIX: &str = "sentry.";

/// How the processes of a slot are fenced, and why.
#[derive(Clone, Debug)]
pub(crate) enum Fence {
    /// One cgroup per process, below the instance's tree.
    Cgroup(std::sync::Arc<Tree>),
    /// One process group per process; the reason cgroups are not used.
    ProcessGroup(String),
}

impl Fence {
    /// The tree, when cgroups are in use.
    pub fn tree(&self) -> Option<&std::sync::Arc<Tree>> {
        match self {
            Fence::Cgroup(t) => Some(t),
            Fence::ProcessGroup(_) => None,
        }
    }

    /// One line for the console and `check`: which containment and why.
    pub fn describe(&self) -> String {
        match self {
            Fence::Cgroup(t) => format!("Containment: a cgroup per process, under {}.", t.root.display()),
            Fence::ProcessGroup(why) => format!("Containment: a process group per process ({why})."),
        }
    }
}

/// The variable that turns cgroup containment off: `SENTRY_CONTAINMENT=process-group`.
pub(crate) const CONTAINMENT_VAR: &str = "SENTRY_CONTAINMENT";

/// Why process groups are asked for instead of cgroups, if they are
/// (`SENTRY_CONTAINMENT=process-group` in the environment).
pub(crate) fn refused_by_environment() -> Option<String> {
    std::env::var_os(CONTAINMENT_VAR)
        .is_some_and(|v| v == "process-group")
        .then(|| format!("{CONTAINMENT_VAR}=process-group"))
}

/// What `start` would use here, found without leaving anything behind (a
/// probe cgroup is made and removed): for `check`.
pub(crate) fn probe() -> Fence {
    if let Some(why) = refused_by_environment() {
        return Fence::ProcessGroup(why);
    }
    let name = format!("probe-{}", std::process::id());
    match Tree::create(&name, Path::new("/"), &|_| false) {
        Ok((tree, _)) => {
            let _ = fs::remove_dir(&tree.root);
            Fence::Cgroup(std::sync::Arc::new(tree))
        }
        Err(why) => Fence::ProcessGroup(why),
    }
}

/// An instance's cgroup: `<Sentry's cgroup>/sentry.<NAME>.<hash>`.
#[derive(Debug)]
pub(crate) struct Tree {
    /// Where the v2 hierarchy is mounted.
    mount: PathBuf,
    /// The mount's root within the hierarchy (`/` unless bind-mounted).
    mount_root: String,
    /// The instance's cgroup, as a directory.
    root: PathBuf,
    /// The memory controller is enabled for the leaves (`memory.current`).
    memory: bool,
}

/// The name of the cgroup of the instance called `name` whose DIR is
/// `dir` (canonical): `sentry.<name>.<8 hex digits>`. Two instances of one
/// binary in two DIRs get two names; the name's characters are kept to
/// `[A-Za-z0-9_-]` (others become `_`) and at most 64.
pub(crate) fn instance_name(name: &str, dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let clean: String = name
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    format!("{PREFIX}{clean}.{:08x}", fnv1a32(dir.as_os_str().as_bytes()))
}

/// FNV-1a, 32 bits (stable across builds and Rust versions, unlike `std`'s hasher).
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ *b as u32).wrapping_mul(0x0100_0193))
}

/// The directory of the cgroup that process `pid` is in, under `mount`
/// (whose root in the hierarchy is `mount_root`), or why there is none.
fn directory_of(mount: &Path, mount_root: &str, pid: i32) -> Result<PathBuf, String> {
    let own = proc::cgroup_v2(pid).ok_or("this process shows no cgroup v2 membership")?;
    if own.ends_with(" (deleted)") {
        return Err(format!("this process's cgroup {own} was removed"));
    }
    let below = if mount_root == "/" { Some(own.as_str()) } else { own.strip_prefix(mount_root) };
    match below {
        Some(rel) if rel.is_empty() || rel.starts_with('/') => Ok(mount.join(rel.trim_start_matches('/'))),
        _ => Err(format!("its cgroup {own} is outside the cgroup v2 mount at {}", mount.display())),
    }
}

impl Tree {
    /// Creates the instance's cgroup `instance_name(name, dir)` beside
    /// Sentry's own, marked as DIR's (the `user.sentry.dir` extended
    /// attribute holds the canonical DIR), or says why it cannot (no v2
    /// hierarchy, not writable: an unprivileged user without delegation, a
    /// read-only mount). Nothing is left behind on failure. A cgroup of
    /// that name marked as this DIR's is a predecessor's leftover (its
    /// record lost): what is in it is stopped (the returned lines say so)
    /// and it is taken over — or, where `keep` says so (an image of this
    /// very instance whose snapshot was unreadable adopts its children; a
    /// tree the ledger's pass just emptied, whose rest outlived SIGKILL),
    /// taken over as it is. One marked as another DIR's (the name's hash
    /// collided) or unmarked and busy is left alone: `.2`, `.3`, … are tried.
    pub fn create(name: &str, dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<(Tree, Vec<String>), String> {
        let (mount, mount_root) = proc::cgroup2_mount().ok_or("no cgroup v2 hierarchy is mounted")?;
        let parent = directory_of(&mount, &mount_root, std::process::id() as i32)?;
        // A child moves from Sentry's cgroup to its leaf: the writer needs
        // write access to the common ancestor's cgroup.procs (cgroup-v2,
        // "Delegation Containment").
        if let Err(e) = fs::OpenOptions::new().write(true).open(parent.join("cgroup.procs")) {
            return Err(format!("cannot move processes out of {}: {e}", parent.display()));
        }
        let base = instance_name(name, dir);
        let mut lines = Vec::new();
        for k in 1..=9 {
            let root = match k {
                1 => parent.join(&base),
                k => parent.join(format!("{base}.{k}")),
            };
            match fs::create_dir(&root) {
                Ok(()) => {
                    let _ = set_owner(&root, dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let tree = Tree {
                        mount: mount.clone(),
                        mount_root: mount_root.clone(),
                        root: root.clone(),
                        memory: false,
                    };
                    match owner(&root) {
                        Some(Some(d)) if d == dir.as_os_str().as_encoded_bytes() && keep(&root) => {}
                        Some(Some(d)) if d == dir.as_os_str().as_encoded_bytes() => {
                            lines.extend(
                                tree.empty(
                                    LEFTOVER_GRACE,
                                    "left by a previous instance (its record lost) in the cgroup",
                                ),
                            );
                            let _ = remove_tree(&root);
                            fs::create_dir(&root).or_else(|e| match e.kind() {
                                io::ErrorKind::AlreadyExists => Ok(()),
                                _ => Err(format!("cannot create a cgroup in {}: {e}", parent.display())),
                            })?;
                            let _ = set_owner(&root, dir);
                        }
                        Some(None) | None if !tree.populated() => {
                            let _ = remove_tree(&root);
                            if fs::create_dir(&root).is_err() {
                                continue;
                            }
                            let _ = set_owner(&root, dir);
                        }
                        _ => continue,
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Err(format!(
                        "cannot create a cgroup in {}: its cgroup.max.descendants or cgroup.max.depth is reached",
                        parent.display()
                    ))
                }
                Err(e) => return Err(format!("cannot create a cgroup in {}: {e}", parent.display())),
            }
            let memory = enable_memory(&root);
            return Ok((Tree { mount, mount_root, root, memory }, lines));
        }
        Err(format!("every name for this instance's cgroup in {} is taken", parent.display()))
    }

    /// Whether anything lives in the tree.
    fn populated(&self) -> bool {
        fs::read_to_string(self.root.join("cgroup.events")).is_ok_and(|t| events_populated(&t))
    }

    /// Stops whatever is in the tree: SIGTERM to each process, `grace` to
    /// go, then `cgroup.kill` of the whole tree (and 5 s more). Says what
    /// was found, if anything: "Found N processes {where_} DIR: …".
    pub fn empty(&self, grace: Duration, where_: &str) -> Option<String> {
        let found: Vec<String> =
            pids_in(&self.root).into_iter().map(|pid| format!("{pid} ({})", proc::cmdline(pid).join(" "))).collect();
        if found.is_empty() {
            return None;
        }
        let rel = self.cgroup(self.root.clone()).rel;
        signal_members(&self.root, &rel, Signal::SIGTERM);
        let mut text = format!(
            "Found {} process{} {where_} {}: {}; stopped.",
            found.len(),
            if found.len() == 1 { "" } else { "es" },
            self.root.display(),
            found.join(", ")
        );
        if !wait_empty(&self.root, Instant::now() + grace) {
            let _ = fs::write(self.root.join("cgroup.kill"), "1");
            text.push_str(&format!(" What was left after {} s was SIGKILLed.", grace.as_secs()));
            if !wait_empty(&self.root, Instant::now() + Duration::from_secs(5)) {
                text.push_str(" Some processes outlived SIGKILL.");
            }
        }
        Some(text)
    }

    /// The tree an earlier image of this instance made at `root` (from its
    /// snapshot), if it is still there.
    pub fn resume(root: &Path) -> Result<Tree, String> {
        let (mount, mount_root) = proc::cgroup2_mount().ok_or("no cgroup v2 hierarchy is mounted")?;
        if !root.starts_with(&mount) || !root.join("cgroup.procs").exists() {
            return Err(format!("the instance's cgroup {} is gone", root.display()));
        }
        let memory = subtree_has_memory(root);
        Ok(Tree { mount, mount_root, root: root.to_path_buf(), memory })
    }

    /// The instance's cgroup directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether leaves have `memory.current` (else memory is summed PSS).
    pub fn has_memory(&self) -> bool {
        self.memory
    }

    /// Makes a leaf `<group>/<name>` for one process — or, if a leaf of
    /// that name still holds processes or is `taken` (another row's, its
    /// zombie not yet reaped), `<group>/<name>.<gen>` (then `.<gen>.<k>`).
    /// An empty leftover that nobody owns is removed and made again: a
    /// leaf is always as `mkdir` makes it, never one a process could have
    /// changed (its type, limits, files' owners and modes, extended
    /// attributes, counters). A limit on cgroups below the instance's or
    /// the group's cgroup (`cgroup.max.descendants`, `cgroup.max.depth`:
    /// `mkdir` fails with EAGAIN), which only a process of the tree running
    /// as root could have set, is lifted (`max`) and the `mkdir` tried again.
    pub fn leaf(&self, group: &str, name: &str, gen: u64, taken: &dyn Fn(&Path) -> bool) -> io::Result<Cgroup> {
        let dir = self.root.join(group);
        // Mostly the group is there (a restart) and the leaf name is free: one mkdir.
        let first = dir.join(name);
        let mkdir = |path: &Path| match fs::create_dir(path) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                for cgroup in [&self.root, &dir] {
                    let _ = fs::write(cgroup.join("cgroup.max.descendants"), "max");
                    let _ = fs::write(cgroup.join("cgroup.max.depth"), "max");
                }
                fs::create_dir(path)
            }
            other => other,
        };
        if mkdir(&first).is_ok() {
            return Ok(self.cgroup(first));
        }
        let mut made = mkdir(&dir);
        if made.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
            // The instance's own cgroup was removed while empty (by hand):
            // make it again, as at the start.
            match fs::create_dir(&self.root) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            if self.memory {
                let _ = fs::write(self.root.join("cgroup.subtree_control"), "+memory");
            }
            made = mkdir(&dir);
        }
        match made {
            Ok(()) if self.memory => {
                let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory");
            }
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let candidates =
            [name.to_string(), format!("{name}.{gen}")].into_iter().chain((1..=8).map(|k| format!("{name}.{gen}.{k}")));
        for candidate in candidates {
            let path = dir.join(&candidate);
            match mkdir(&path) {
                Ok(()) => return Ok(self.cgroup(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let leaf = self.cgroup(path);
                    if !taken(&leaf.path) && !leaf.populated() && leaf.remove().is_ok() {
                        match mkdir(&leaf.path) {
                            Ok(()) => return Ok(leaf),
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("every name for {}/{name} is taken", dir.display())))
    }

    /// A leaf of this tree by its directory (from a snapshot); `None` if
    /// the path is not below the tree.
    pub fn existing(&self, path: &Path) -> Option<Cgroup> {
        (path.starts_with(&self.root) && path != self.root).then(|| self.cgroup(path.to_path_buf()))
    }

    fn cgroup(&self, path: PathBuf) -> Cgroup {
        let rel = rel_path(&self.mount, &self.mount_root, &path).unwrap_or_else(|| path.display().to_string());
        Cgroup { path, rel }
    }

    /// Removes `<group>` if it is empty (its last leaf went away).
    pub fn remove_group(&self, group: &str) {
        let _ = fs::remove_dir(self.root.join(group));
    }

    /// Removes every empty cgroup of the tree and the tree itself; says
    /// what could not be removed (a cgroup that still holds processes).
    pub fn remove(&self) -> io::Result<()> {
        remove_tree(&self.root)
    }
}

/// Turns on the memory controller for `root`'s children if `root` may have
/// it (its parent enables it); whether it is on.
fn enable_memory(root: &Path) -> bool {
    let offered = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if !offered.split_whitespace().any(|c| c == "memory") {
        return false;
    }
    subtree_has_memory(root) || fs::write(root.join("cgroup.subtree_control"), "+memory").is_ok()
}

fn subtree_has_memory(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.subtree_control")).is_ok_and(|s| s.split_whitespace().any(|c| c == "memory"))
}

/// Removes the cgroups of the tree at `dir`, deepest first. A cgroup with
/// no child cgroup (a slot's leaf, mostly) goes in one `rmdir`.
fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // Not empty (child cgroups) or busy: take the tree apart below.
        Err(_) => {}
    }
    let subdirs: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => {
            entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut first_error = None;
    for sub in subdirs {
        if let Err(e) = remove_tree(&sub) {
            first_error.get_or_insert(e);
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(first_error.unwrap_or(e)),
        _ => first_error.map_or(Ok(()), Err),
    }
}

/// One leaf cgroup: the whole tree of one process Sentry started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cgroup {
    /// Its directory.
    path: PathBuf,
    /// Its path as `/proc/PID/cgroup` shows it.
    rel: String,
}

/// What a cgroup holds and has used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Figures {
    /// Live processes in it and in cgroups below it (`cgroup.procs`).
    pub processes: usize,
    /// CPU time used by everything that ever ran in it (`cpu.stat`
    /// `usage_usec`), in microseconds.
    pub cpu_usec: u64,
    /// Its memory in bytes: `memory.current` where the memory controller
    /// is enabled, else the summed PSS of its processes.
    pub memory_bytes: u64,
    /// `memory.current` was read (not summed PSS).
    pub memory_current: bool,
}

impl Cgroup {
    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its path within the hierarchy, as `/proc/PID/cgroup` shows it.
    pub fn name(&self) -> &str {
        &self.rel
    }

    /// Its directory, opened (`O_PATH`) for a child to be started in it
    /// (`CLONE_INTO_CGROUP`, see `spawn`).
    pub fn placement(&self) -> io::Result<OwnedFd> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&self.path)?;
        Ok(file.into())
    }

    /// Whether any live process is in it (`cgroup.events`); a cgroup that
    /// is gone or unreadable holds nothing.
    pub fn populated(&self) -> bool {
        // One read of a small file (it holds two short lines): no size query.
        let mut buf = [0u8; 128];
        let read = fs::File::open(self.path.join("cgroup.events")).and_then(|mut f| io::Read::read(&mut f, &mut buf));
        read.is_ok_and(|n| events_populated(&String::from_utf8_lossy(&buf[..n])))
    }

    /// The PIDs of its live processes now.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.path)
    }

    /// Sends `signal` to each of its processes, each through a pidfd opened
    /// before its membership is checked (so a PID that was reused by then
    /// is left alone); SIGKILL is `cgroup.kill`, which also catches what
    /// forks meanwhile. Returns how many processes were signalled (for
    /// SIGKILL: how many were there).
    pub fn signal(&self, signal: Signal) -> usize {
        if signal == Signal::SIGKILL && fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return self.pids().len();
        }
        signal_members(&self.path, &self.rel, signal)
    }

    /// Whether process `pid` is in it (or below it) now.
    pub fn holds(&self, pid: i32) -> bool {
        proc::cgroup_v2(pid).is_some_and(|c| within(&c, &self.rel))
    }

    /// Removes it if nothing is in it — no live process, no cgroup below
    /// (rmdir(2) fails with EBUSY otherwise); whether it is gone.
    pub fn remove_if_empty(&self) -> bool {
        match fs::remove_dir(&self.path) {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        }
    }

    /// Removes it and whatever cgroups its processes made inside it (all
    /// must be empty).
    pub fn remove(&self) -> io::Result<()> {
        remove_tree(&self.path)
    }
}

/// What the cgroup at `dir` holds and has used; `memory` says whether to
/// read `memory.current` (the controller is on) or sum the PSS.
pub(crate) fn figures_of(dir: &Path, memory: bool) -> Figures {
    let pids = pids_in(dir);
    let cpu_usec =
        fs::read_to_string(dir.join("cpu.stat")).ok().and_then(|t| stat_value(&t, "usage_usec")).unwrap_or(0);
    let current = memory.then(|| fs::read_to_string(dir.join("memory.current")).ok()?.trim().parse().ok()).flatten();
    let memory_bytes = current.unwrap_or_else(|| pids.iter().filter_map(|p| proc::pss_bytes(*p)).sum());
    Figures { processes: pids.len(), cpu_usec, memory_bytes, memory_current: current.is_some() }
}

/// The path of the cgroup directory `dir` as `/proc/PID/cgroup` shows it
/// (relative to the v2 mount's root), if it is below the v2 mount.
pub(crate) fn name_of(dir: &Path) -> Option<String> {
    let (mount, mount_root) = proc::cgroup2_mount()?;
    rel_path(&mount, &mount_root, dir)
}

/// `dir`, below `mount` (whose root in the hierarchy is `mount_root`), as
/// `/proc/PID/cgroup` shows it.
fn rel_path(mount: &Path, mount_root: &str, dir: &Path) -> Option<String> {
    let below = dir.strip_prefix(mount).ok()?.to_string_lossy().into_owned();
    Some(match mount_root {
        "/" => format!("/{below}"),
        r => format!("{r}/{below}"),
    })
}

/// The cgroup directory of process `pid`, if cgroup v2 is mounted here.
pub(crate) fn directory_of_process(pid: i32) -> Option<PathBuf> {
    let (mount, root) = proc::cgroup2_mount()?;
    directory_of(&mount, &root, pid).ok()
}

/// The live processes of the cgroup at `dir` and of every cgroup below it
/// (a child may make cgroups of its own inside its leaf).
fn pids_in(dir: &Path) -> Vec<i32> {
    let mut dirs = Vec::new();
    collect_dirs(dir, &mut dirs);
    dirs.iter()
        .flat_map(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
                .unwrap_or_default()
        })
        .collect()
}

/// Whether a `/proc/PID/cgroup` path is `rel` or below it.
pub(crate) fn within(path: &str, rel: &str) -> bool {
    let rel = rel.trim_end_matches('/');
    path.strip_prefix(rel).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Signals every process of the cgroup at `dir` (`rel` as /proc shows it)
/// and below it that is still there once its pidfd is open.
fn signal_members(dir: &Path, rel: &str, signal: Signal) -> usize {
    pids_in(dir)
        .into_iter()
        .filter(|pid| {
            let Ok(fd) = sys::pidfd_open(*pid) else { return false };
            proc::cgroup_v2(*pid).is_some_and(|c| within(&c, rel)) && sys::pidfd_send_signal(fd.as_fd(), signal).is_ok()
        })
        .count()
}

/// `populated` of a `cgroup.events` text.
fn events_populated(text: &str) -> bool {
    stat_value(text, "populated").is_some_and(|v| v != 0)
}

/// The value of `key` in a flat keyed file (`key value` lines).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the cgroup at `dir` holds no process, at most until
/// `deadline`, woken by the kernel's notification on `cgroup.events`
/// (`poll` with `POLLPRI`; no busy loop). Whether it is empty.
pub(crate) fn wait_empty(dir: &Path, deadline: Instant) -> bool {
    let Ok(mut file) = fs::File::open(dir.join("cgroup.events")) else { return true };
    let mut text = String::new();
    loop {
        text.clear();
        if file.rewind().is_err() || file.read_to_string(&mut text).is_err() || !events_populated(&text) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLPRI, revents: 0 }];
        if sys::poll(&mut fds, ms).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Tells the core when a watched cgroup's `cgroup.events` changes (an
/// inotify `IN_MODIFY`, cgroup-v2), so that a tree that empties is noticed
/// at once rather than at the next look. One inotify fd and one small
/// thread for the whole instance; a watch goes away by itself when its
/// cgroup is removed. Without it (no inotify) the core still looks on its
/// own schedule.
pub(crate) struct EventWatch {
    inotify: std::sync::Arc<nix::sys::inotify::Inotify>,
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventWatch {
    /// Starts the thread; `changed` is called after each batch of events.
    pub fn start(changed: impl Fn() + Send + 'static) -> io::Result<EventWatch> {
        use nix::sys::inotify::{InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(io::Error::from)?;
        let inotify = std::sync::Arc::new(inotify);
        let stop = sys::eventfd()?;
        let (for_thread, stop_raw) = (inotify.clone(), stop.as_raw_fd());
        let thread =
            std::thread::Builder::new().name("sentry-cgroups".into()).stack_size(64 * 1024).spawn(move || loop {
                let mut fds = [
                    libc::pollfd { fd: for_thread.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: stop_raw, events: libc::POLLIN, revents: 0 },
                ];
                if sys::poll(&mut fds, -1).is_err() || fds[1].revents != 0 {
                    return;
                }
                if fds[0].revents != 0 {
                    while for_thread.read_events().is_ok_and(|e| !e.is_empty()) {}
                    changed();
                }
            })?;
        Ok(EventWatch { inotify, stop, thread: Some(thread) })
    }

    /// Watches `cgroup`'s `cgroup.events`; a failure (a cgroup already
    /// gone, no watches left) only means no early notice.
    pub fn watch(&self, cgroup: &Cgroup) {
        use nix::sys::inotify::AddWatchFlags;
        let _ = self.inotify.add_watch(&cgroup.path.join("cgroup.events"), AddWatchFlags::IN_MODIFY);
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        sys::eventfd_signal(self.stop.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long what a previous instance left gets after SIGTERM.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// The extended attribute that marks an instance's cgroup as DIR's.
const OWNER_XATTR: &std::ffi::CStr = c"user.sentry.dir";

/// Marks the cgroup `root` as the instance of `dir`'s.
fn set_owner(root: &Path, dir: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let value = dir.as_os_str().as_encoded_bytes();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::setxattr(path.as_ptr(), OWNER_XATTR.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The DIR that marked the cgroup `root`: `Some(Some(dir))`; `Some(None)`
/// when it has no mark; `None` when marks cannot be read here.
fn owner(root: &Path) -> Option<Option<Vec<u8>>> {
    let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe { libc::getxattr(path.as_ptr(), OWNER_XATTR.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 {
        buf.truncate(n as usize);
        return Some(Some(buf));
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENODATA) => Some(None),
        _ => None,
    }
}

/// What a SIGKILLed instance left in its cgroup `root` (recorded in its
/// DIR): every process in it gets SIGTERM, then, 5 s later, the whole tree
/// gets `cgroup.kill`; then its cgroups are removed. Only a cgroup below the
/// v2 mount, named as the instance called `name` names its cgroups, and
/// marked as `dir`'s own (or, where marks cannot be read, exactly where
/// this instance puts its cgroup) is touched: an edited record cannot aim
/// this at anyone else's processes. One line per finding, for the console,
/// and `root` if it was emptied (some of it may have outlived SIGKILL).
pub(crate) fn stop_recorded(root: &Path, name: &str, dir: &Path) -> (Vec<String>, Option<PathBuf>) {
    let Some((mount, mount_root)) = proc::cgroup2_mount() else { return (Vec::new(), None) };
    if !root.join("cgroup.procs").exists() {
        return (Vec::new(), None);
    }
    let own = directory_of(&mount, &mount_root, std::process::id() as i32).ok();
    let recorded = Recorded { root, mount: &mount, mark: owner(root), own_parent: own.as_deref() };
    if !recorded.is_instance(name, dir) {
        return (vec![format!("The recorded cgroup {} is not this instance's: left alone.", root.display())], None);
    }
    let tree = Tree { mount, mount_root, root: root.to_path_buf(), memory: false };
    let mut lines: Vec<String> =
        tree.empty(LEFTOVER_GRACE, "left by a previous instance in the cgroup").into_iter().collect();
    if let Err(e) = remove_tree(root) {
        lines.push(format!("Cannot remove the cgroup {}: {e}.", root.display()));
    }
    (lines, Some(root.to_path_buf()))
}

/// A cgroup path read from a ledger, with what the system says about it.
struct Recorded<'a> {
    root: &'a Path,
    /// The cgroup v2 mount.
    mount: &'a Path,
    /// Its `user.sentry.dir` mark (see [`owner`]).
    mark: Option<Option<Vec<u8>>>,
    /// The directory of Sentry's own cgroup, if known.
    own_parent: Option<&'a Path>,
}

impl Recorded<'_> {
    /// Whether it is the cgroup of the instance `name` of `dir`: a plain
    /// path strictly below the mount, named `sentry.<name>.<hash>` (or that
    /// with `.2` … `.9`), marked with `dir` — or, where marks cannot be
    /// read, exactly where this instance puts its cgroup.
    fn is_instance(&self, name: &str, dir: &Path) -> bool {
        let base = instance_name(name, dir);
        let named = self.root.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n == base
                || n.strip_prefix(&base)
                    .and_then(|k| k.strip_prefix('.'))
                    .is_some_and(|k| matches!(k, "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9"))
        });
        let plain = self
            .root
            .components()
            .all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
        let below = self.root.starts_with(self.mount) && self.root != self.mount;
        let marked = match &self.mark {
            Some(mark) => mark.as_deref() == Some(dir.as_os_str().as_encoded_bytes()),
            None => self.own_parent.is_some_and(|p| p.join(&base) == self.root),
        };
        named && plain && below && marked
    }
}

/// `dir` and every cgroup below it.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_differ_by_dir_and_keep_to_safe_characters() {
        let a = instance_name("conf", Path::new("/srv/a"));
        let b = instance_name("conf", Path::new("/srv/b"));
        assert_ne!(a, b);
        assert!(a.starts_with("sentry.conf.") && a.len() == "sentry.conf.".len() + 8, "{a}");
        assert_eq!(a, instance_name("conf", Path::new("/srv/a")), "stable");
        let odd = instance_name("my conf/../x", Path::new("/d"));
        assert!(odd.starts_with("sentry.my_conf____x."), "{odd}");
        assert!(!odd.contains('/'));
    }

    #[test]
    fn only_a_recorded_cgroup_named_placed_and_marked_as_this_instances_is_its() {
        let dir = Path::new("/srv/conf");
        let name = instance_name("conf", dir);
        let mount = Path::new("/sys/fs/cgroup");
        let mine = mount.join(&name);
        let mark = |d: &str| Some(Some(d.as_bytes().to_vec()));
        let own = Some(Path::new("/sys/fs/cgroup"));
        type Mark = Option<Option<Vec<u8>>>;
        let cases: Vec<(PathBuf, Mark, bool, &str)> = vec![
            (mine.clone(), mark("/srv/conf"), true, "named, below, marked"),
            (mount.join("user.slice").join(&name), mark("/srv/conf"), true, "elsewhere below the mount, marked"),
            (mount.join(format!("{name}.2")), mark("/srv/conf"), true, "a second name"),
            (mount.join(format!("{name}.10")), mark("/srv/conf"), false, "not a name Sentry gives"),
            (mount.join(format!("{name}x")), mark("/srv/conf"), false, "another name"),
            (mine.clone(), mark("/srv/other"), false, "another DIR's mark"),
            (mine.clone(), Some(None), false, "no mark"),
            (mine.clone(), None, true, "marks unreadable: exactly where this instance puts it"),
            (mount.join("x").join(&name), None, false, "marks unreadable, elsewhere"),
            (PathBuf::from("/tmp").join(&name), mark("/srv/conf"), false, "outside the mount"),
            (mount.join("a/../").join(&name), mark("/srv/conf"), false, "not a plain path"),
            (mount.to_path_buf(), mark("/srv/conf"), false, "the mount itself"),
        ];
        for (root, m, ours, why) in cases {
            let r = Recorded { root: &root, mount, mark: m, own_parent: own };
            assert_eq!(r.is_instance("conf", dir), ours, "{why}: {}", root.display());
        }
    }

    #[test]
    fn sigkill_is_cgroup_kill_not_one_signal_per_member() {
        // A fixture shaped like a cgroup whose member (a sleep of this
        // test's) does not show the fixture's path in /proc: SIGKILL must go
        // through cgroup.kill (written), not through the members one by one.
        let dir = std::env::temp_dir().join(format!("sentry-cgroup-kill-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut sleep = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        fs::write(dir.join("cgroup.procs"), format!("{}\n", sleep.id())).unwrap();
        let leaf = Cgroup { path: dir.clone(), rel: "/not/where/the/sleep/is".to_string() };
        assert_eq!(leaf.signal(Signal::SIGKILL), 1);
        assert_eq!(fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "1");
        assert!(sleep.try_wait().unwrap().is_none(), "not signalled one by one");
        // SIGTERM goes member by member, and only to members.
        assert_eq!(leaf.signal(Signal::SIGTERM), 0, "its /proc path is elsewhere: left alone");
        assert!(sleep.try_wait().unwrap().is_none());
        sleep.kill().unwrap();
        sleep.wait().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fnv1a_matches_its_reference_values() {
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn flat_keyed_files_parse() {
        assert!(events_populated("populated 1\nfrozen 0\n"));
        assert!(!events_populated("populated 0\nfrozen 0\n"));
        assert!(!events_populated(""));
        let cpu = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(stat_value(cpu, "usage_usec"), Some(123456));
        assert_eq!(stat_value(cpu, "user_usec"), Some(100000));
        assert_eq!(stat_value(cpu, "usage"), None, "whole keys only");
    }

    #[test]
    fn the_v2_line_and_mount_are_found_in_proc_texts() {
        let hybrid = b"12:pids:/\n4:memory:/x\n1:name=systemd:/\n0::/user.slice/app.scope\n";
        assert_eq!(proc::parse_cgroup_v2(hybrid).as_deref(), Some("/user.slice/app.scope"));
        assert_eq!(proc::parse_cgroup_v2(b"4:memory:/x\n"), None, "v1 only");
        let mountinfo = b"35 26 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
41 31 0:38 / /sys/fs/cgroup/my\\040tree rw,relatime - cgroup2 cgroup2 rw\n";
        let (mount, root) = proc::parse_cgroup2_mount(mountinfo).unwrap();
        assert_eq!(mount, Path::new("/sys/fs/cgroup/my tree"));
        assert_eq!(root, "/");
    }

    #[test]
    fn a_cgroup_outside_the_mount_root_is_refused() {
        let me = std::process::id() as i32;
        let own = proc::cgroup_v2(me).unwrap_or_default();
        if own.is_empty() {
            eprintln!("skipped: no cgroup v2 here");
            return;
        }
        let elsewhere = directory_of(Path::new("/m"), "/nowhere-like-this", me);
        assert!(elsewhere.unwrap_err().contains("outside"));
        let here = directory_of(Path::new("/m"), "/", me).unwrap();
        assert_eq!(here, Path::new("/m").join(own.trim_start_matches('/')));
    }

    #[test]
    fn memory_is_memory_current_when_there_else_summed_pss() {
        // A fixture directory shaped like a cgroup: the memory controller's
        // file is read when asked for; without it, the PSS of the listed
        // processes (this test's own) is summed.
        let dir = std::env::temp_dir().join(format!("sentry-cgroup-fixture-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        fs::write(dir.join("cgroup.procs"), format!("{me}\n")).unwrap();
        fs::write(dir.join("cpu.stat"), "usage_usec 4200\nuser_usec 4000\nsystem_usec 200\n").unwrap();
        fs::write(dir.join("memory.current"), "7340032\n").unwrap();
        let with = figures_of(&dir, true);
        assert_eq!(with, Figures { processes: 1, cpu_usec: 4200, memory_bytes: 7_340_032, memory_current: true });
        let without = figures_of(&dir, false);
        let pss = proc::pss_bytes(me as i32).unwrap();
        assert!(!without.memory_current);
        assert!(without.memory_bytes > 0 && without.memory_bytes.abs_diff(pss) < 64 << 20, "{without:?} vs {pss}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
