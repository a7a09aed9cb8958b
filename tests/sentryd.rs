//! `sentryd` end to end: configurations made with `sentryd new`, built by
//! real `cargo` runs (sharing `target/sentryd-confs`, so sentry-core is
//! compiled once), started, listed, reloaded, controlled and stopped by
//! name; a stale pidfile and a configuration that does not compile shown by
//! `list`; the configuration binaries' exit codes passed through; the
//! foreground start that execs in place, as a systemd unit runs it.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::*;

/// The `sentryd` binary, built by cargo.
fn sentryd_binary() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = run(Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "sentryd", "--message-format=json"])
        .current_dir(&workspace));
    assert!(out.status.success(), "cargo build failed: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|m| m["executable"].as_str().filter(|e| e.ends_with("/sentryd")).map(PathBuf::from))
        .expect("cargo reports the sentryd executable")
}

/// Configurations in a directory of their own; every instance started
/// there is killed (with its session and cgroups) when it goes.
struct Confs {
    bin: PathBuf,
    dir: TempDir,
}

impl Confs {
    fn new(tag: &str) -> Confs {
        Confs { bin: sentryd_binary(), dir: TempDir::new(tag) }
    }

    /// `sentryd ARGS…` with this directory and none of the test's cargo
    /// variables (its configurations build in `DIR/.target`).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") || k.starts_with("SENTRY_") || k == "RUSTFLAGS" {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).env("SENTRY_CONF_DIR", self.dir.path()).stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "sentryd {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// `sentryd new NAME`, its entry made a long sleeper.
    fn make(&self, name: &str) -> PathBuf {
        self.ok(&["new", name]);
        let main = self.dir.path().join(name).join("src/main.rs");
        let text = std::fs::read_to_string(&main).unwrap().replace(r#"["4"], 1000, 1)"#, r#"["1000"], 1000, 1)"#);
        std::fs::write(&main, text).unwrap();
        self.dir.path().join(name)
    }

    fn list(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.ok(&["list", "--json"])).unwrap().as_array().unwrap().clone()
    }

    fn row(&self, name: &str) -> Value {
        self.list().into_iter().find(|r| r["name"] == name).unwrap_or(Value::Null)
    }
}

impl Drop for Confs {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = std::fs::read_to_string(entry.path().join(format!("{name}.pid")))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .filter(|pid| session_pids(*pid).contains(pid))
            {
                kill_session(pid);
            }
            CgroupGuard::for_dir(&entry.path()).clean();
        }
    }
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

trait Spawned {
    /// Starts the command with its output captured, in a session of its own.
    fn output_spawned(self) -> std::process::Child;
}

impl Spawned for Command {
    fn output_spawned(mut self) -> std::process::Child {
        self.stdout(Stdio::piped()).stderr(Stdio::piped());
        in_own_session(&mut self);
        self.spawn().unwrap()
    }
}

#[test]
fn two_configurations_are_listed_started_reloaded_and_stopped_by_name() {
    let c = Confs::new("sentryd-two");
    let alpha = c.make("sdalpha");
    c.make("sdbeta");
    assert_eq!(c.row("sdalpha")["state"], "not built");
    c.ok(&["start", "-c", "sdalpha"]);
    c.ok(&["start", "-c", "sdbeta"]);
    let rows = c.list();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r["state"], "running", "{r}");
        assert_eq!((r["processes"].as_u64(), r["target"].as_u64()), (Some(1), Some(1)), "{r}");
        assert!(r["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
    }
    let pid = c.row("sdalpha")["pid"].as_u64().unwrap();
    let table = c.ok(&["status"]);
    assert!(table.contains("sdalpha") && table.contains("sdbeta") && table.contains("dummy"), "{table}");
    // A second start is refused; the binaries' exit codes pass through.
    assert_eq!(code(&c.run(&["start", "-c", "sdalpha"])), Some(1));
    assert_eq!(code(&c.run(&["scale", "-c", "sdalpha", "nosuch", "2"])), Some(1), "unknown entry");
    assert_eq!(code(&c.run(&["status", "-c", "sdnone"])), Some(1), "unknown configuration");
    assert_eq!(code(&c.run(&["check", "-c", "sdalpha"])), Some(0));
    assert_eq!(code(&c.run(&["restart", "-c", "sdalpha", "dummy"])), Some(0));
    // Edit, reload by name: the same instance runs the new configuration.
    let main = alpha.join("src/main.rs");
    let text = std::fs::read_to_string(&main).unwrap().replace(r#"["1000"], 1000, 1)"#, r#"["1000"], 1000, 2)"#);
    std::fs::write(&main, text).unwrap();
    c.ok(&["reload", "-c", "sdalpha"]);
    let r = c.row("sdalpha");
    assert_eq!((r["pid"].as_u64(), r["processes"].as_u64()), (Some(pid), Some(2)), "{r}");
    c.ok(&["stop", "-c", "sdalpha"]);
    c.ok(&["stop", "-c", "sdbeta"]);
    assert!(c.list().iter().all(|r| r["state"] == "stopped"), "{:?}", c.list());
    assert_eq!(code(&c.run(&["status", "-c", "sdbeta"])), Some(2), "not running");
    assert_eq!(code(&c.run(&["stop", "-c", "sdbeta"])), Some(0), "stop of a stopped one");
}

#[test]
fn a_stale_pidfile_and_a_configuration_that_does_not_build_are_shown_and_nothing_is_touched() {
    let c = Confs::new("sentryd-bad");
    let stale = c.make("sdstale");
    // A pidfile nobody locks, naming a process of ours: never signalled.
    let mut bystander = Command::new("sleep").arg("1000").spawn().unwrap();
    std::fs::write(stale.join("sdstale.pid"), format!("{}\n", bystander.id())).unwrap();
    let broken = c.make("sdbroken");
    std::fs::write(broken.join("src/main.rs"), "fn main() { this is not rust }\n").unwrap();
    let out = c.run(&["start", "-c", "sdbroken"]);
    assert_eq!(code(&out), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("does not build") && err.contains("error"), "{err}");
    assert!(err.contains("src/main.rs:1"), "the compiler's diagnostics: {err}");
    assert_eq!(c.row("sdbroken")["state"], "does not build");
    assert_eq!(c.row("sdstale")["state"], "stale pidfile");
    for command in ["stop", "restart"] {
        let args: &[&str] =
            if command == "restart" { &["restart", "-c", "sdstale", "dummy"] } else { &["stop", "-c", "sdstale"] };
        let _ = c.run(args);
    }
    assert!(alive(bystander.id() as i32), "a process named by a stale pidfile was signalled");
    // A pidfile that is a FIFO (an open would wait) or a symbolic link
    // (written through, it would overwrite its target) is not used, and
    // nothing hangs.
    let odd = c.make("sdodd");
    let fifo = std::ffi::CString::new(odd.join("sdodd.pid").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert_eq!(c.row("sdodd")["state"], "stale pidfile");
    assert_eq!(code(&c.run(&["start", "-c", "sdodd"])), Some(1));
    std::fs::remove_file(odd.join("sdodd.pid")).unwrap();
    let victim = c.dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, odd.join("sdodd.pid")).unwrap();
    assert_eq!(code(&c.run(&["start", "-c", "sdodd"])), Some(1));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    // Two starts at once: one instance, and the other start says so.
    let both: Vec<_> = (0..2).map(|_| c.command(&["start", "-c", "sdstale"]).output_spawned()).collect();
    let codes: Vec<Option<i32>> = both.into_iter().map(|h| h.wait_with_output().unwrap().status.code()).collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![Some(0), Some(1)], "{codes:?}");
    c.ok(&["stop", "-c", "sdstale"]);
    assert!(alive(bystander.id() as i32));
    let _ = bystander.kill();
    let _ = bystander.wait();
    // Fixed, it builds and shows as stopped.
    std::fs::write(
        broken.join("src/main.rs"),
        "use sentry_core::prelude::*;\nfn main() { sentry![entry(\"e\", \"true\", [], 0, 0)]; }\n",
    )
    .unwrap();
    assert_eq!(code(&c.run(&["check", "-c", "sdbroken"])), Some(0));
    assert_eq!(c.row("sdbroken")["state"], "stopped");
}

#[test]
fn start_in_the_foreground_becomes_the_instance() {
    let c = Confs::new("sentryd-fg");
    let dir = c.make("sdfg");
    c.ok(&["check", "-c", "sdfg"]);
    // The unit it prints runs it through `sentryd start --foreground`.
    let unit = c.ok(&["systemd-unit", "-c", "sdfg"]);
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap_or_default();
    assert!(exec.contains("sentryd") && exec.ends_with("start -c sdfg --foreground"), "{unit}");
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload="), "{unit}");
    let console = std::fs::File::create(c.dir.path().join("console.txt")).unwrap();
    let mut cmd = c.command(&["start", "-c", "sdfg", "--foreground"]);
    cmd.stdout(console.try_clone().unwrap()).stderr(console);
    in_own_session(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let _session = SessionGuard(child.id() as i32);
    let _cgroups = CgroupGuard::for_dir(&dir);
    let pid = wait_for("the instance to run", || c.row("sdfg")["pid"].as_u64());
    assert_eq!(pid, u64::from(child.id()), "sentryd execs the configuration in place: same PID");
    // SAFETY: plain kill of the process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(c.row("sdfg")["state"], "stopped");
}
