//! One configuration's instance on disk: finding CRATE (the configuration
//! crate) and DIR (the run directory) as SPEC orders them, and the files in
//! DIR — `NAME.pid` under an exclusive `flock` for the instance's whole life,
//! `NAME.addr`, `NAME.token`. Nothing is ever signalled on the word of a
//! pidfile nobody holds locked. This module knows nothing of the core.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;

/// Where one configuration lives and runs.
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    /// The configuration binary's name (`NAME`).
    pub name: String,
    /// The configuration crate, if it could be found.
    pub crate_dir: Option<PathBuf>,
    /// The run directory.
    pub dir: PathBuf,
}

impl Paths {
    /// Resolves CRATE and DIR from flags, the environment and the executable's path.
    pub fn resolve(dir_flag: Option<PathBuf>, crate_flag: Option<PathBuf>) -> Paths {
        let exe = executable();
        let name = exe
            .as_deref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().trim_end_matches(" (deleted)").to_string())
            .unwrap_or_else(|| "sentry".to_string());
        let crate_dir = crate_flag
            .or_else(|| env_path("SENTRY_CRATE"))
            .map(absolute)
            .or_else(|| env_path("CARGO_MANIFEST_DIR").filter(|d| defines_bin(d, &name)))
            .or_else(|| exe.as_deref().and_then(|e| crate_above(e, &name)));
        let dir = dir_flag
            .or_else(|| env_path("SENTRY_DIR"))
            .map(absolute)
            .or_else(|| crate_dir.clone())
            .or_else(|| exe.as_deref().and_then(|e| e.parent()).map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        Paths { name, crate_dir, dir }
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.join(format!("{}.pid", self.name))
    }

    pub fn addr_file(&self) -> PathBuf {
        self.dir.join(format!("{}.addr", self.name))
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join(format!("{}.token", self.name))
    }

    /// `DIR/NAME.procs`: the process groups the instance owns (see `leftovers`).
    pub fn ledger_file(&self) -> PathBuf {
        self.dir.join(format!("{}.procs", self.name))
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// `DIR/NAME.out`: the daemon's standard output and error (`start --daemon`).
    pub fn daemon_output(&self) -> PathBuf {
        self.dir.join(format!("{}.out", self.name))
    }
}

/// How a user names the configuration crate when it cannot be found.
pub(crate) const NAME_THE_CRATE: &str = "name it with --crate CRATE or SENTRY_CRATE=CRATE when starting Sentry";

/// Why `reload` cannot rebuild from `crate_dir` (as found by
/// [`Paths::resolve`]), if it cannot: no crate was found (usual when
/// `CARGO_TARGET_DIR` or `build.target-dir` put the binary away from its
/// crate), or the one named has no `Cargo.toml`.
pub(crate) fn crate_problem(name: &str, crate_dir: Option<&Path>) -> Option<String> {
    match crate_dir {
        None => Some(format!(
            "no configuration crate found for {name} (no --crate or SENTRY_CRATE, no CARGO_MANIFEST_DIR \
             defining {name}, no Cargo.toml defining it above {})",
            executable().map(|e| e.display().to_string()).unwrap_or_else(|| "the executable".into())
        )),
        Some(dir) if !dir.join("Cargo.toml").is_file() => Some(format!("no Cargo.toml in {}", dir.display())),
        Some(_) => None,
    }
}

fn executable() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let text = exe.to_string_lossy();
    Some(match text.strip_suffix(" (deleted)") {
        Some(live) => PathBuf::from(live),
        None => exe,
    })
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir().map(|d| d.join(&path)).unwrap_or(path)
    }
}

/// Walks up from the executable to a `Cargo.toml`: that package if it defines
/// `name`, else the workspace member that does — read from the manifests
/// (see [`member_defining`]), or, where they leave it open, asked of
/// `cargo metadata` (which costs ~20 ms of every command and start).
fn crate_above(exe: &Path, name: &str) -> Option<PathBuf> {
    let manifest_dir = exe.ancestors().skip(1).find(|d| d.join("Cargo.toml").is_file())?;
    if defines_bin(manifest_dir, name) {
        return Some(manifest_dir.to_path_buf());
    }
    match member_defining(manifest_dir, name) {
        Members::Found(dir) => return Some(dir),
        Members::NoWorkspace => return None,
        Members::Unsure => {}
    }
    let output = std::process::Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    metadata["packages"].as_array()?.iter().find_map(|package| {
        let defines = package["targets"]
            .as_array()?
            .iter()
            .any(|t| t["name"] == name && t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")));
        let manifest = PathBuf::from(package["manifest_path"].as_str()?);
        defines.then(|| manifest.parent().map(Path::to_path_buf)).flatten()
    })
}

/// What the workspace manifest in `root` says about binary `name`.
#[derive(Debug, PartialEq, Eq)]
enum Members {
    /// The one member that defines it.
    Found(PathBuf),
    /// `root` is no workspace: nothing else can define it.
    NoWorkspace,
    /// Patterns this reading does not expand, no member, or two: cargo decides.
    Unsure,
}

/// The member of the workspace whose manifest is in `root` that defines
/// binary `name`: its `workspace.members` — plain paths, or a directory's
/// every subdirectory (`dir/*`) — less `workspace.exclude`.
fn member_defining(root: &Path, name: &str) -> Members {
    let Some(manifest) = manifest(root) else { return Members::Unsure };
    let Some(workspace) = manifest.get("workspace").and_then(toml::Value::as_table) else {
        return Members::NoWorkspace;
    };
    let strings = |key: &str| -> Vec<String> {
        let list = workspace.get(key).and_then(toml::Value::as_array);
        list.into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
    };
    let excluded: Vec<PathBuf> = strings("exclude").iter().map(|e| root.join(e)).collect();
    let mut dirs = Vec::new();
    for pattern in strings("members") {
        match pattern.strip_suffix("/*") {
            Some(parent) if !parent.contains(['*', '?', '[']) => {
                let Ok(entries) = fs::read_dir(root.join(parent)) else { continue };
                dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.join("Cargo.toml").is_file()));
            }
            _ if pattern.contains(['*', '?', '[']) => return Members::Unsure,
            _ => dirs.push(root.join(pattern)),
        }
    }
    let mut found = dirs.into_iter().filter(|d| !excluded.iter().any(|e| d.starts_with(e)) && defines_bin(d, name));
    match (found.next(), found.next()) {
        (Some(dir), None) => Members::Found(dir),
        _ => Members::Unsure,
    }
}

/// The `Cargo.toml` in `dir`, parsed.
fn manifest(dir: &Path) -> Option<toml::Table> {
    fs::read_to_string(dir.join("Cargo.toml")).ok()?.parse().ok()
}

/// Whether the package in `dir` builds a binary called `name` (by cargo's
/// conventions — `src/main.rs` named after the package, `src/bin/NAME.rs`,
/// `src/bin/NAME/main.rs` — or a `[[bin]]` naming it).
fn defines_bin(dir: &Path, name: &str) -> bool {
    let Some(manifest) = manifest(dir) else { return false };
    if dir.join(format!("src/bin/{name}.rs")).is_file() || dir.join(format!("src/bin/{name}/main.rs")).is_file() {
        return true;
    }
    let bins = manifest.get("bin").and_then(toml::Value::as_array).into_iter().flatten();
    if bins.filter_map(|b| b.get("name")?.as_str()).any(|b| b == name) {
        return true;
    }
    let package = manifest.get("package").and_then(|p| p.get("name")).and_then(toml::Value::as_str);
    package == Some(name) && dir.join("src/main.rs").is_file()
}

/// How long a starting instance retries a pidfile lock that is held: a
/// client's probe holds a shared lock for microseconds; an instance, forever.
const PROBE_GRACE: Duration = Duration::from_millis(500);

/// The pidfile, held under an exclusive `flock` while the instance lives.
pub(crate) struct PidLock {
    file: File,
    path: PathBuf,
}

impl PidLock {
    /// Takes the lock and writes our PID, or says who holds it.
    pub fn acquire(path: &Path) -> Result<PidLock, Error> {
        // Never through a symbolic link (written through, it would let
        // whoever made it choose a file for us to overwrite), never a FIFO
        // (an open would wait for a writer).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::io(format!("cannot open {} (it must be a plain file)", path.display()), e))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(Error::io(
                format!("cannot use {}", path.display()),
                io::Error::new(io::ErrorKind::InvalidInput, "not a plain file"),
            ));
        }
        let deadline = Instant::now() + PROBE_GRACE;
        loop {
            match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Error::AlreadyRunning { pidfile: path.to_path_buf(), pid: read_pid(path) });
                }
                Err(e) => return Err(Error::io(format!("cannot lock {}", path.display()), e)),
            }
        }
        let mut lock = PidLock { file, path: path.to_path_buf() };
        if let Err(e) = lock.write_pid() {
            // Locked, so ours to remove: no empty pidfile left (a full disk).
            lock.release();
            return Err(Error::io(format!("cannot write {}", path.display()), e));
        }
        Ok(lock)
    }

    fn write_pid(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        (&self.file).write_all(format!("{}\n", std::process::id()).as_bytes())
    }

    /// Takes over a lock handed across exec (the same open file, still locked).
    pub fn adopt(fd: std::os::fd::OwnedFd, path: PathBuf) -> PidLock {
        PidLock { file: File::from(fd), path }
    }

    /// The locked file, to keep across exec.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Removes the pidfile while still holding the lock, then lets go.
    pub fn release(self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn flock(file: &File, how: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid open fd.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens an existing pidfile to look at: never through a symbolic link,
/// never blocking (a FIFO), only a plain file.
fn open_pidfile(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain file"))
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    open_pidfile(path).ok()?.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The PID of the live instance whose pidfile is `path`: only if some process
/// holds the pidfile's lock, and only if that process is the one the file
/// names. A pidfile nobody holds is stale.
pub(crate) fn live_pid(path: &Path) -> Result<u32, Error> {
    use std::os::unix::fs::MetadataExt;
    let not_running = || Error::NotRunning { pidfile: path.to_path_buf() };
    let file = open_pidfile(path).map_err(|_| not_running())?;
    if !is_held(&file) {
        return Err(not_running());
    }
    let meta = file.metadata().map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    // The holder writes its PID right after locking: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(pid) = read_pid(path) {
            return match holds_lock(pid, meta.dev(), meta.ino()) {
                true => Ok(pid),
                false if !is_held(&file) => Err(not_running()),
                false => Err(Error::PidfileMismatch { pidfile: path.to_path_buf(), pid }),
            };
        }
        if Instant::now() > deadline {
            return Err(not_running());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether some process holds the lock of the pidfile `path`.
pub(crate) fn is_locked(path: &Path) -> bool {
    open_pidfile(path).is_ok_and(|file| is_held(&file))
}

/// Whether another open file holds a lock on `file`, by a trial shared lock
/// released at once. (An instance starting at that very moment retries its
/// own lock for [`PROBE_GRACE`], so a probe never makes it refuse to run.)
fn is_held(file: &File) -> bool {
    match flock(file, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(()) => {
            let _ = flock(file, libc::LOCK_UN);
            false
        }
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// Whether process `pid` holds a flock on the file (`dev`, `ino`): one of its
/// fds is that file and its fdinfo shows the lock. Read per process, so it
/// cannot miss the lock the way a read of /proc/locks can while other locks
/// come and go.
fn holds_lock(pid: u32, dev: u64, ino: u64) -> bool {
    crate::proc::holds_flock(pid, dev, ino)
}

/// Writes `text` to `path` with `mode`, replacing it whole (through a
/// rename, so a reader never sees half a file).
pub(crate) fn write_replacing(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
    let written = file
        .write_all(text.as_bytes())
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(format!("cannot create {}", path.display()), e)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sentry-instance-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn probing_a_pidfile_never_refuses_an_instance_that_starts_meanwhile() {
        let dir = temp_dir("probe");
        let path = dir.join("x.pid");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let prober = {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = is_locked(&path);
                }
            })
        };
        for round in 0..300 {
            let lock = PidLock::acquire(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
            lock.release();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        prober.join().unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_held_pidfile_is_live_and_refuses_a_second_lock() {
        let dir = temp_dir("lock");
        let path = dir.join("x.pid");
        let lock = PidLock::acquire(&path).unwrap();
        assert_eq!(live_pid(&path).unwrap(), std::process::id());
        assert!(matches!(PidLock::acquire(&path), Err(Error::AlreadyRunning { .. })));
        // Edited in place to name another process: refused, naming the holder.
        fs::write(&path, "1\n").unwrap();
        assert!(matches!(live_pid(&path), Err(Error::PidfileMismatch { pid: 1, .. })));
        lock.release();
        assert!(matches!(live_pid(&path), Err(Error::NotRunning { .. })));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_stale_pidfile_is_not_live_and_is_replaced() {
        let dir = temp_dir("stale");
        let path = dir.join("x.pid");
        fs::write(&path, "1\n").unwrap();
        assert!(matches!(live_pid(&path), Err(Error::NotRunning { .. })));
        let lock = PidLock::acquire(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        lock.release();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn binaries_are_found_by_cargo_conventions() {
        let dir = temp_dir("bins");
        fs::create_dir_all(dir.join("src/bin")).unwrap();
        fs::write(dir.join("Cargo.toml"), "[package]\nname = \"conf\"\n\n[[bin]]\nname = \"other\"\npath = \"x.rs\"\n")
            .unwrap();
        fs::write(dir.join("src/main.rs"), "").unwrap();
        fs::write(dir.join("src/bin/tool.rs"), "").unwrap();
        for (name, yes) in [("conf", true), ("other", true), ("tool", true), ("nope", false)] {
            assert_eq!(defines_bin(&dir, name), yes, "{name}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn workspace_members_are_read_from_the_manifests() {
        let root = temp_dir("workspace");
        let package = |dir: &Path, name: &str| {
            fs::create_dir_all(dir.join("src")).unwrap();
            fs::write(dir.join("Cargo.toml"), format!("[package] # a comment\nname = '{name}'\n")).unwrap();
            fs::write(dir.join("src/main.rs"), "").unwrap();
        };
        fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers = [\n  \"conf\",\n  \"crates/*\", # all of them\n]\nexclude = [\"crates/old\"]\n",
        )
        .unwrap();
        package(&root.join("conf"), "myconf");
        package(&root.join("crates/tool"), "tool");
        package(&root.join("crates/old"), "old");
        package(&root.join("elsewhere"), "stray");
        assert_eq!(member_defining(&root, "myconf"), Members::Found(root.join("conf")));
        assert_eq!(member_defining(&root, "tool"), Members::Found(root.join("crates/tool")));
        assert_eq!(member_defining(&root, "old"), Members::Unsure, "excluded: cargo decides");
        assert_eq!(member_defining(&root, "stray"), Members::Unsure, "not a member");
        fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = [\"c*f\"]\n").unwrap();
        assert_eq!(member_defining(&root, "myconf"), Members::Unsure, "a glob it does not expand");
        assert_eq!(member_defining(&root.join("conf"), "myconf"), Members::NoWorkspace);
        fs::remove_dir_all(root).unwrap();
    }
}
