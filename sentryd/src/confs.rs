//! The configurations under the configuration directory: which there are,
//! where each one's binary is, whether it must be built (its binary is
//! missing or older than its sources), building it (with what a failed
//! build said kept in `.sentryd/`), and what state its instance is in —
//! found exactly as the configuration binary finds it (`sentry_core::locate`:
//! DIR is the crate's directory, the pidfile's lock decides). Nothing here
//! signals anything.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sentry_core::locate::{InstanceFiles, InstanceState};

/// One configuration crate: `CONF_DIR/NAME`, binary `NAME`.
#[derive(Clone, Debug)]
pub struct Conf {
    pub name: String,
    /// The crate's directory, which is also its run directory (DIR).
    pub dir: PathBuf,
    /// Where its builds go: `CONF_DIR/.target`, shared by the directory's
    /// configurations (one sentry-core build for all; their names, the
    /// directory's entries, cannot collide).
    pub target: PathBuf,
}

/// The build directory of the configurations in `conf_dir` (see [`Conf::target`]).
pub fn target_dir(conf_dir: &Path) -> PathBuf {
    conf_dir.join(".target")
}

/// Where the configurations are: `--conf-dir`, `SENTRY_CONF_DIR`, else `~/.sentry/conf`.
pub fn conf_dir(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(d) = flag.or_else(|| std::env::var_os("SENTRY_CONF_DIR").filter(|v| !v.is_empty()).map(PathBuf::from)) {
        return Ok(absolute(d));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or("HOME is not set: give --conf-dir")?;
    Ok(PathBuf::from(home).join(".sentry/conf"))
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

/// Every configuration crate in `dir` (a directory with a `Cargo.toml`),
/// by name; none if `dir` does not exist, an error if it cannot be read.
pub fn all(dir: &Path) -> Result<Vec<Conf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let target = target_dir(dir);
    let mut confs: Vec<Conf> = entries
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .filter_map(|e| Some(Conf { name: e.file_name().to_str()?.to_string(), dir: e.path(), target: target.clone() }))
        .filter(|c| sentry_core::scaffold::check_name(&c.name).is_ok())
        .collect();
    confs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(confs)
}

/// The configuration `name` in `dir`, or why there is none.
pub fn find(dir: &Path, name: &str) -> Result<Conf, String> {
    sentry_core::scaffold::check_name(name)?;
    let crate_dir = dir.join(name);
    if !crate_dir.join("Cargo.toml").is_file() {
        return Err(format!("no configuration {name:?} in {} (sentryd new {name} makes one)", dir.display()));
    }
    Ok(Conf { name: name.to_string(), dir: crate_dir, target: target_dir(dir) })
}

/// What `list` says of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Running {
        pid: u32,
    },
    Stopped,
    StalePidfile,
    /// Its last build, of the sources as they are, failed.
    DoesNotBuild,
    NotBuilt,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Running { .. } => "running",
            State::Stopped => "stopped",
            State::StalePidfile => "stale pidfile",
            State::DoesNotBuild => "does not build",
            State::NotBuilt => "not built",
        }
    }
}

impl Conf {
    fn own(&self) -> PathBuf {
        self.dir.join(".sentryd")
    }

    /// Its instance's files (DIR is the crate's directory).
    pub fn files(&self) -> InstanceFiles {
        InstanceFiles::new(&self.dir, &self.name)
    }

    /// Its binary, in the directory's build directory.
    pub fn binary(&self) -> PathBuf {
        self.target.join("debug").join(&self.name)
    }

    /// The newest modification time of its sources (`Cargo.toml`,
    /// `Cargo.lock`, everything under `src/` and `build.rs`).
    pub fn sources_changed(&self) -> Option<SystemTime> {
        fn newest(path: &Path, depth: usize) -> Option<SystemTime> {
            let meta = std::fs::symlink_metadata(path).ok()?;
            let own = meta.modified().ok();
            if !meta.is_dir() || depth > 16 {
                return own;
            }
            let below = std::fs::read_dir(path).ok()?.flatten().filter_map(|e| newest(&e.path(), depth + 1)).max();
            own.max(below)
        }
        ["Cargo.toml", "Cargo.lock", "build.rs", "src"].iter().filter_map(|f| newest(&self.dir.join(f), 0)).max()
    }

    /// Whether its binary is missing or older than its sources.
    pub fn needs_build(&self) -> bool {
        let built = std::fs::metadata(self.binary()).and_then(|m| m.modified()).ok();
        match (built, self.sources_changed()) {
            (None, _) => true,
            (Some(b), Some(s)) => b < s,
            (Some(_), None) => false,
        }
    }

    /// Builds it; on failure the compiler's diagnostics, also kept in
    /// `.sentryd/build-error` for `list`.
    pub fn build(&self) -> Result<PathBuf, String> {
        let _ = std::fs::create_dir_all(self.own());
        // `CARGO_TARGET_DIR` is set to the directory's build directory for
        // sentryd and what it starts (see `main`), so an instance's own
        // reloads build there too.
        match sentry_core::build::build(&self.dir, &self.name, false, sentry_core::build::BUILD_TIMEOUT) {
            Ok(binary) => {
                let _ = std::fs::remove_file(self.own().join("build-error"));
                Ok(binary)
            }
            // What the sources are worth is known only from a build that ran.
            Err(e @ sentry_core::build::BuildError::Failed(_)) => {
                let text = e.to_string();
                let _ = std::fs::write(self.own().join("build-error"), &text);
                Err(text)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The binary, built first if it is missing or older than the sources.
    pub fn built(&self) -> Result<PathBuf, String> {
        if self.needs_build() {
            eprintln!("sentryd: building {} …", self.name);
            self.build()
        } else {
            Ok(self.binary())
        }
    }

    /// Its state, by the pidfile's lock, then by its last build.
    pub fn state(&self) -> State {
        match self.files().state() {
            InstanceState::Running { pid } => State::Running { pid },
            InstanceState::StalePidfile { .. } => State::StalePidfile,
            InstanceState::Stopped => {
                let error = std::fs::metadata(self.own().join("build-error")).and_then(|m| m.modified()).ok();
                let failed_now = match (error, self.sources_changed()) {
                    (Some(e), Some(s)) => e >= s,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if failed_now {
                    State::DoesNotBuild
                } else if !self.binary().is_file() {
                    State::NotBuilt
                } else {
                    State::Stopped
                }
            }
        }
    }

    /// The arguments every command of its binary gets: its run directory
    /// and crate, so the instance is found wherever the binary lives.
    pub fn place_args(&self) -> Vec<std::ffi::OsString> {
        vec!["--dir".into(), self.dir.clone().into(), "--crate".into(), self.dir.clone().into()]
    }

    /// `GET /status` of its running instance, through its binary.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = std::process::Command::new(self.binary())
            .arg("status")
            .arg("--json")
            .args(self.place_args())
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}
