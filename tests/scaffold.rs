//! The newcomer's path: `cargo xtask new NAME --dir PARENT`, then
//! `cd PARENT/NAME && cargo run -- start`, an edit, and
//! `./target/debug/NAME reload` from another directory — with cargo's
//! default target layout (so this test pays for one cold build).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::*;

/// A command with none of the test's cargo variables.
fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") || k.starts_with("SENTRY_") || k == "RUSTFLAGS" {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn a_scaffolded_crate_starts_and_reloads_from_anywhere() {
    let parent = TempDir::new("scaffold");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out =
        run(clean(env!("CARGO")).args(["xtask", "new", "myconf", "--dir"]).arg(parent.path()).current_dir(workspace));
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let dir = parent.path().join("myconf");
    for f in ["Cargo.toml", "src/main.rs", ".gitignore", "target/debug/myconf"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let again =
        run(clean(env!("CARGO")).args(["xtask", "new", "myconf", "--dir"]).arg(parent.path()).current_dir(workspace));
    assert!(!again.status.success(), "an existing crate is never overwritten");

    let console = std::fs::File::create(parent.path().join("console.txt")).unwrap();
    let mut start = clean(env!("CARGO"));
    start
        .args(["run", "--quiet", "--", "start"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console);
    in_own_session(&mut start);
    let mut cargo_run = start.spawn().unwrap();
    let _cgroups = CgroupGuard::for_dir(&dir);
    let _cleanup = SessionGuard(cargo_run.id() as i32);
    let bin = dir.join("target/debug/myconf");
    let cli = |args: &[&str]| run(clean(&bin).args(args).current_dir("/"));
    let status = |args: &[&str]| -> serde_json::Value {
        let out = cli(args);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let procs = |s: &serde_json::Value| s["entries"][0]["processes"].as_array().map(|a| a.len()).unwrap_or(0);
    wait_for("the instance started by cargo run", || (procs(&status(&["status", "--json"])) == 1).then_some(()));
    assert!(dir.join("myconf.pid").exists(), "DIR is the crate");

    let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
    std::fs::write(dir.join("src/main.rs"), main.replace("1000, 1)", "1000, 2)")).unwrap();
    let out = cli(&["reload"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let st = status(&["status", "--json"]);
    assert_eq!(st["reexec_count"], 1);
    wait_for("two processes", || (procs(&status(&["status", "--json"])) == 2).then_some(()));
    assert!(cli(&["stop"]).status.success());
    assert!(cargo_run.wait().unwrap().success());
}
