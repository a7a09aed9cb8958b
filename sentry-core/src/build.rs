//! Building a configuration crate and vetting a binary before anyone execs
//! it: `cargo build` with JSON messages (the new executable's path and the
//! rendered compiler errors), a timeout, the refusal of files other users
//! can write, and running a binary's `check`. The reload and `cargo xtask`
//! both use this module; it knows nothing of the supervisor.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a build may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a new binary's `check` may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a build or a check failed, ready to show to a user.
#[derive(Debug)]
pub enum BuildError {
    /// `cargo` could not be run at all (no toolchain on this host).
    NoToolchain(String),
    /// The build, or the check, failed; the text has the diagnostics.
    Failed(String),
    /// A file that would be built or run is writable by other users.
    Unsafe(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::NoToolchain(m) | BuildError::Failed(m) | BuildError::Unsafe(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for BuildError {}

/// The `cargo` to run: the one that ran us (`CARGO`), else `cargo` on PATH.
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("cargo"))
}

/// Whether `exe` is a release build (it lives in a `release` directory).
pub fn is_release(exe: &Path) -> bool {
    exe.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "release")
}

/// Builds binary `bin` of the crate in `crate_dir` and returns the path of
/// the new executable (as cargo reports it: not `/proc/self/exe`).
pub fn build(crate_dir: &Path, bin: &str, release: bool, timeout: Duration) -> Result<PathBuf, BuildError> {
    refuse_foreign_writable_tree(crate_dir)?;
    let mut cmd = Command::new(cargo());
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .args(["--bin", bin, "--message-format=json-render-diagnostics"])
        .current_dir(crate_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if release {
        cmd.arg("--release");
    }
    let child = cmd.spawn().map_err(|e| BuildError::NoToolchain(format!("cannot run {}: {e}", cargo().display())))?;
    let (status, stdout, stderr) = wait_with_output(child, timeout)
        .ok_or_else(|| BuildError::Failed(format!("cargo build of {} timed out", crate_dir.display())))?;
    let mut executable = None;
    let mut diagnostics = String::new();
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        match message["reason"].as_str() {
            Some("compiler-artifact") if message["target"]["name"] == bin => {
                if let Some(path) = message["executable"].as_str() {
                    executable = Some(PathBuf::from(path));
                }
            }
            Some("compiler-message") => {
                if let Some(text) = message["message"]["rendered"].as_str() {
                    diagnostics.push_str(text);
                }
            }
            _ => {}
        }
    }
    match (status, executable) {
        (true, Some(path)) => Ok(path),
        (ok, _) => {
            let cargo_errors: String =
                stderr.lines().filter(|l| !l.trim_start().starts_with("Compiling")).map(|l| format!("{l}\n")).collect();
            let what = if ok { "cargo reported no executable" } else { "the build failed" };
            Err(BuildError::Failed(format!("{what}:\n{diagnostics}{cargo_errors}").trim_end().to_string()))
        }
    }
}

/// Runs `binary check --handoff-version` and makes sure it reads snapshots of
/// at least version `needs`. The binary must not be writable by others.
pub fn check_binary(binary: &Path, extra_args: &[&str], needs: u32) -> Result<(), BuildError> {
    refuse_foreign_writable(binary)?;
    if let Some(dir) = binary.parent() {
        refuse_foreign_writable(dir)?;
    }
    let child = Command::new(binary)
        .args(["check", "--handoff-version"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| BuildError::Failed(format!("cannot run {}: {e}", binary.display())))?;
    let (ok, stdout, stderr) = wait_with_output(child, CHECK_TIMEOUT)
        .ok_or_else(|| BuildError::Failed(format!("{} check timed out", binary.display())))?;
    if !ok {
        return Err(BuildError::Failed(
            format!("{} check failed:\n{stderr}{stdout}", binary.display()).trim_end().to_string(),
        ));
    }
    let version =
        stdout.lines().find_map(|l| l.strip_prefix("handoff-version ")).and_then(|v| v.trim().parse::<u32>().ok());
    match version {
        Some(v) if v >= needs => Ok(()),
        Some(v) => Err(BuildError::Failed(format!(
            "{} reads handoff snapshots up to version {v}, this instance writes version {needs}",
            binary.display()
        ))),
        None => Err(BuildError::Failed(format!("{} did not say which handoff it reads", binary.display()))),
    }
}

/// Waits for `child` with a timeout (killing its process group then),
/// collecting its output; `None` on timeout.
fn wait_with_output(mut child: Child, timeout: Duration) -> Option<(bool, String, String)> {
    fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(r) = r {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            text
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                // SAFETY: the group of a child we started in its own group.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
        }
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    status.map(|s| (s.success(), out, err))
}

/// Refuses a file or directory that users other than its owner can write,
/// or that another unprivileged user owns.
fn refuse_foreign_writable(path: &Path) -> Result<(), BuildError> {
    let meta = std::fs::metadata(path).map_err(|e| BuildError::Failed(format!("{}: {e}", path.display())))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !sticky_dir {
        return Err(BuildError::Unsafe(format!(
            "refusing {}: it is writable by other users (mode {:o})",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(BuildError::Unsafe(format!("refusing {}: it belongs to uid {}", path.display(), meta.uid())));
    }
    Ok(())
}

/// Checks the crate directory, its manifest and every file under `src/`.
fn refuse_foreign_writable_tree(crate_dir: &Path) -> Result<(), BuildError> {
    refuse_foreign_writable(crate_dir)?;
    refuse_foreign_writable(&crate_dir.join("Cargo.toml"))?;
    let mut stack = vec![crate_dir.join("src")];
    while let Some(dir) = stack.pop() {
        refuse_foreign_writable(&dir)?;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                refuse_foreign_writable(&path)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_writable_by_others_are_refused() {
        let dir = std::env::temp_dir().join(format!("sentry-build-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.join("src"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "").unwrap();
        std::fs::write(dir.join("src/main.rs"), "").unwrap();
        std::fs::set_permissions(dir.join("src/main.rs"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.join("Cargo.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(refuse_foreign_writable_tree(&dir).is_ok());
        std::fs::set_permissions(dir.join("src/main.rs"), std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = refuse_foreign_writable_tree(&dir).unwrap_err().to_string();
        assert!(e.contains("main.rs") && e.contains("writable by other users"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_profile_follows_the_binary() {
        assert!(is_release(Path::new("/x/target/release/conf")));
        assert!(!is_release(Path::new("/x/target/debug/conf")));
    }
}
