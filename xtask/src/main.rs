//! `cargo xtask …`: development chores for this workspace. `new` scaffolds a
//! configuration crate that depends on this checkout's `sentry-core` and
//! builds it with the same build logic a reload uses
//! (`sentry_core::build`). `soak` runs long storms against a real
//! configuration binary (see `soak`). `bench` measures Sentry against a
//! C floor and the peers installed (see `bench`).

mod bench;
mod soak;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask new NAME [--dir PARENT]   (default PARENT: ~/.sentry/conf)\n       \
                     cargo xtask soak [kill|reload|control|churn|all] [--kills N] [--reloads N] [--scales N] \
                     [--cycles N] [--seed S] [--quick]\n       \
                     cargo xtask bench [--quick] [--no-peers]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("new") => parse_new(&args[1..]).and_then(|(name, parent)| new(&name, &parent)),
        Some("soak") if args[1..].iter().any(|a| a == "--help" || a == "-h") => {
            println!("{}", soak::USAGE);
            return ExitCode::SUCCESS;
        }
        Some("soak") => match soak::main(&args[1..]) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Some("bench") if args[1..].iter().any(|a| a == "--help" || a == "-h") => {
            println!("{}", bench::USAGE);
            return ExitCode::SUCCESS;
        }
        Some("bench") => bench::main(&args[1..]),
        Some("--help" | "-h") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_new(args: &[String]) -> Result<(String, PathBuf), String> {
    let mut name = None;
    let mut parent = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => parent = Some(PathBuf::from(it.next().ok_or("--dir needs a value")?)),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}\n{USAGE}")),
            word if name.is_none() => name = Some(word.to_string()),
            extra => return Err(format!("unexpected argument {extra:?}\n{USAGE}")),
        }
    }
    let name = name.ok_or(USAGE)?;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(format!("{name:?} is not a valid name: a letter, then letters, digits, _ or - (64 at most)"));
    }
    let parent = match parent {
        Some(p) => p,
        None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set: give --dir")?).join(".sentry/conf"),
    };
    Ok((name, parent))
}

/// Creates `parent/name` and builds it once.
fn new(name: &str, parent: &Path) -> Result<(), String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace")?;
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
            workspace.join("sentry-core")
        ),
    )?;
    write(&dir.join("src/main.rs"), MAIN_RS)?;
    write(&dir.join(".gitignore"), "/target\n*.pid\n*.addr\n*.token\n*.out\n*.procs\n/log/\n")?;
    // The checkout's lock file pins the versions it is tested with.
    std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock"))
        .map_err(|e| format!("cannot copy Cargo.lock: {e}"))?;
    println!("Created {}. Building it once…", dir.display());
    let binary =
        sentry_core::build::build(&dir, name, false, sentry_core::build::BUILD_TIMEOUT).map_err(|e| e.to_string())?;
    println!(
        "Built {}.\n\nNext:\n  cd {} && cargo run -- start\n  # edit src/main.rs, then from anywhere:\n  {} reload",
        binary.display(),
        dir.display(),
        binary.display()
    );
    Ok(())
}

/// The recommended form: `sentry![…]` and the rule macros, so that
/// mistakes are compile errors (the function form and strings work too).
const MAIN_RS: &str = r#"//! A Sentry configuration: edit, then `reload` the running instance.
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
