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
    sentry_core::scaffold::check_name(&name)?;
    let parent = match parent {
        Some(p) => p,
        None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set: give --dir")?).join(".sentry/conf"),
    };
    Ok((name, parent))
}

/// Creates `parent/name` and builds it once.
fn new(name: &str, parent: &Path) -> Result<(), String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace")?;
    let dir = sentry_core::scaffold::create(
        parent,
        name,
        &workspace.join("sentry-core"),
        Some(&workspace.join("Cargo.lock")),
    )?;
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
