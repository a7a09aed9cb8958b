//! A new configuration crate: what `cargo xtask new` and `sentryd new`
//! write — `Cargo.toml` (depending by path on these sentry-core sources: the
//! name `sentry-core` on crates.io belongs to an unrelated project),
//! `src/main.rs` in the recommended form, `.gitignore`, and the workspace's
//! `Cargo.lock` so the versions are the ones Sentry is tested with. It
//! builds nothing and knows nothing of the supervisor.

use std::path::{Path, PathBuf};

/// The recommended form: `sentry![…]` and the rule macros, so that mistakes
/// are compile errors (the function form and strings work too).
pub const MAIN_RS: &str = r#"//! A Sentry configuration: edit, then `reload` the running instance.
//! `sentry![…]` checks names at compile time; `trigger!`, `action!`,
//! `pattern!` and `duration!` check rules the same way.
use sentry_core::prelude::*;

fn main() {
    sentry![
        // name, command, arguments, restart delay (ms), number of processes
        entry("dummy", "sleep", ["4"], 1000, 1),
        // watch("browser", pattern!("firefox")).on(trigger!(rmem > 4g), action!(stop @ 10m)),
    ];
}
"#;

/// What a configuration crate's name may be (it names the binary, its
/// files and its directory): a letter, then letters, digits, `_` or `-`, at
/// most 64.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid name: a letter, then letters, digits, _ or - (64 at most)"))
    }
}

/// Creates the crate `parent/name` depending on the sentry-core at
/// `sentry_core` (a directory); `lock`, a `Cargo.lock` to start from.
/// Refuses an existing directory. Returns the crate's directory.
pub fn create(parent: &Path, name: &str, sentry_core: &Path, lock: Option<&Path>) -> Result<PathBuf, String> {
    check_name(name)?;
    let parent = if parent.is_absolute() {
        parent.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| e.to_string())?.join(parent)
    };
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir.join("src")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write(
        &dir.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
             [dependencies]\nsentry-core = {{ path = {:?} }}\n\n\
             # A configuration crate stands alone, outside any other workspace.\n[workspace]\n",
            sentry_core
        ),
    )?;
    write(&dir.join("src/main.rs"), MAIN_RS)?;
    write(&dir.join(".gitignore"), "/target\n*.pid\n*.addr\n*.token\n*.out\n*.procs\n/log/\n/.sentryd/\n")?;
    if let Some(lock) = lock.filter(|l| l.is_file()) {
        std::fs::copy(lock, dir.join("Cargo.lock")).map_err(|e| format!("cannot copy Cargo.lock: {e}"))?;
    }
    Ok(dir)
}
