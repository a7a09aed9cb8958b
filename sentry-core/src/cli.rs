//! The command line of a configuration binary: [`sentry`] parses the
//! arguments and runs one subcommand. `start` owns the process-wide things an
//! embedded supervisor must never touch — the pidfile lock, the control
//! files, signal handlers, stdout — and runs the core on the main thread;
//! the other subcommands talk to a running instance through its pidfile and
//! control interface. Exit codes follow SPEC's table.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;

use crate::client::Client;
use crate::config::Config;
use crate::core::{max_stop_wait, Command, Core, CoreOptions};
use crate::http::{ControlServer, Routes};
use crate::instance::{self, Paths, PidLock};
use crate::output::Console;
use crate::spec::MAX_COUNT;
use crate::status::Status;
use crate::supervisor::CoreHandle;
use crate::{signals, sys, Error, Signal, Spec};

const EXIT_OK: i32 = 0;
const EXIT_FAIL: i32 = 1;
const EXIT_NOT_RUNNING: i32 = 2;
const EXIT_USAGE: i32 = 64;

/// Runs the configuration `specs` as a command-line program: parses the
/// arguments (`start`, `stop`, `status`, …; see `--help`), runs the
/// subcommand and exits the process with its status.
///
/// ```no_run
/// use sentry_core::prelude::*;
/// fn main() {
///     sentry(vec![entry("dummy", "sleep", ["4"], 1000, 1)]);
/// }
/// ```
pub fn sentry(specs: Vec<Spec>) -> ! {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).try_init();
    sys::init_local_time();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match parse(&args) {
        Ok(Invocation::Help) => {
            print!("{}", usage());
            EXIT_OK
        }
        Ok(Invocation::Run { command, dir, crate_dir }) => {
            let paths = Paths::resolve(dir, crate_dir);
            run(command, specs, &paths)
        }
        Err(message) => {
            eprintln!("{}: {message}\n\n{}", program(), usage());
            EXIT_USAGE
        }
    };
    std::process::exit(code)
}

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Invocation {
    Help,
    Run { command: Subcommand, dir: Option<PathBuf>, crate_dir: Option<PathBuf> },
}

#[derive(Debug, PartialEq, Eq)]
enum Subcommand {
    Start { http: Option<String>, daemon: bool },
    Stop,
    Reload { exec: Option<PathBuf> },
    Status { json: bool },
    Scale { entry: String, count: String },
    Restart { entry: String },
    Check,
    Explain,
}

fn program() -> String {
    std::env::args()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "sentry".to_string())
}

fn usage() -> String {
    let name = program();
    format!(
        "Usage: {name} COMMAND [--dir DIR] [--crate CRATE]

Commands:
  start [--http ADDR] [--daemon]  run the supervisor (in the foreground unless --daemon)
  stop                            stop the running instance and wait for it
  reload [--exec PATH]            rebuild this configuration and re-exec in place
  status [--json]                 show the state of the running instance
  scale ENTRY COUNT               set the number of processes of an entry
  restart ENTRY                   gracefully restart an entry's processes
  check                           validate the configuration
  explain                         show what watches and rules match now

Options:
  --dir DIR      run directory (pidfile, control files, log/); default: the crate
  --crate CRATE  the configuration crate's directory
  --help         this text
"
    )
}

fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut dir = None;
    let mut crate_dir = None;
    let mut http = None;
    let mut exec = None;
    let (mut daemon, mut json) = (false, false);
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value =
            |name: &str| inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| format!("{name} needs a value"));
        match flag {
            "--help" | "-h" => return Ok(Invocation::Help),
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            "--crate" => crate_dir = Some(PathBuf::from(value("--crate")?)),
            "--http" => http = Some(value("--http")?),
            "--exec" => exec = Some(PathBuf::from(value("--exec")?)),
            "--daemon" => daemon = true,
            "--json" => json = true,
            f if f.starts_with('-') && f.len() > 1 && !f[1..].starts_with(|c: char| c.is_ascii_digit()) => {
                return Err(format!("unknown option {arg:?}"))
            }
            _ => words.push(arg.clone()),
        }
    }
    let mut words = words.into_iter();
    let name = words.next().ok_or("missing command")?;
    let mut positional = |what: &str| words.next().ok_or_else(|| format!("{name}: missing {what}"));
    let command = match name.as_str() {
        "start" => Subcommand::Start { http: http.take(), daemon },
        "stop" => Subcommand::Stop,
        "reload" => Subcommand::Reload { exec: exec.take() },
        "status" => Subcommand::Status { json },
        "scale" => Subcommand::Scale { entry: positional("ENTRY")?, count: positional("COUNT")? },
        "restart" => Subcommand::Restart { entry: positional("ENTRY")? },
        "check" => Subcommand::Check,
        "explain" => Subcommand::Explain,
        other => return Err(format!("unknown command {other:?}")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("{name}: unexpected argument {extra:?}"));
    }
    let misplaced = match &command {
        Subcommand::Start { .. } => (exec.is_some() || json).then_some("--exec/--json"),
        Subcommand::Reload { .. } => (http.is_some() || daemon || json).then_some("--http/--daemon/--json"),
        Subcommand::Status { .. } => (http.is_some() || daemon || exec.is_some()).then_some("--http/--daemon/--exec"),
        _ => (http.is_some() || daemon || exec.is_some() || json).then_some("--http/--daemon/--exec/--json"),
    };
    if let Some(flags) = misplaced {
        return Err(format!("{name} does not take {flags}"));
    }
    Ok(Invocation::Run { command, dir, crate_dir })
}

fn run(command: Subcommand, specs: Vec<Spec>, paths: &Paths) -> i32 {
    let result = match command {
        Subcommand::Check => check(&specs),
        Subcommand::Explain => explain(&specs),
        Subcommand::Start { http, daemon: false } => start(&specs, paths, http),
        Subcommand::Start { http, daemon: true } => start_daemon(&specs, paths, http),
        Subcommand::Stop => stop(&specs, paths),
        Subcommand::Status { json } => status(paths, json),
        Subcommand::Scale { entry, count } => scale(paths, &entry, &count),
        Subcommand::Restart { entry } => restart(paths, &entry),
        Subcommand::Reload { .. } => Err((EXIT_FAIL, "reload is not available in this version yet".to_string())),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err((code, message)) => {
            eprintln!("{}: {message}", program());
            code
        }
    }
}

/// A failure with its exit status.
type Outcome = Result<(), (i32, String)>;

fn fail(e: Error) -> (i32, String) {
    let code = match e {
        Error::NotRunning { .. } => EXIT_NOT_RUNNING,
        _ => EXIT_FAIL,
    };
    (code, e.to_string())
}

fn check(specs: &[Spec]) -> Outcome {
    let config = Config::from_specs(specs).map_err(fail)?;
    println!("The configuration is valid: {} entries, {} watches.", config.entries.len(), config.watches.len());
    Ok(())
}

fn explain(specs: &[Spec]) -> Outcome {
    let config = Config::from_specs(specs).map_err(fail)?;
    for w in &config.watches {
        println!("watch {} /{}/ ({} rules)", w.name, w.pattern.as_str(), w.rules.len());
    }
    for e in config.entries.iter().filter(|e| !e.rules.is_empty()) {
        println!("entry {} ({} rules)", e.name, e.rules.len());
    }
    println!("Matching and firing are not available in this version yet.");
    Ok(())
}

fn start(specs: &[Spec], paths: &Paths, http: Option<String>) -> Outcome {
    let config = Config::from_specs(specs).map_err(fail)?;
    std::fs::create_dir_all(&paths.dir)
        .map_err(|e| fail(Error::io(format!("cannot create {}", paths.dir.display()), e)))?;
    let lock = PidLock::acquire(&paths.pidfile()).map_err(fail)?;
    let addr = http.or_else(|| std::env::var("SENTRY_HTTP").ok()).unwrap_or_else(|| "127.0.0.1:0".to_string());
    let prepared =
        TcpListener::bind(&addr).map_err(|source| Error::Bind { addr: addr.clone(), source }).and_then(|listener| {
            let token = sys::random_hex(16).map_err(|e| Error::io("cannot read /dev/urandom", e))?;
            instance::write_private(&paths.token_file(), &format!("{token}\n"), 0o600)?;
            Ok((listener, token))
        });
    let (listener, token) = match prepared {
        Ok(p) => p,
        Err(e) => {
            lock.release();
            return Err(fail(e));
        }
    };

    let console = Console::stdout();
    let (tx, rx) = unbounded();
    let deliver = tx.clone();
    let say = console.handle();
    let installed = signals::forward(&[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP], move |signal| {
        if signal == Signal::SIGHUP {
            say.say("SIGHUP received: reload is not available in this version yet.");
        } else {
            let _ = deliver.send(Command::Shutdown);
        }
    });
    let server = installed.map_err(|e| Error::io("cannot install signal handlers", e)).and_then(|()| {
        ControlServer::start(listener, Routes { core: CoreHandle::new(tx.clone()), token, reload: None })
    });
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            console.close();
            let _ = std::fs::remove_file(paths.token_file());
            lock.release();
            return Err(fail(e));
        }
    };
    let bound = server.addr().to_string();
    let wrote_addr = instance::write_private(&paths.addr_file(), &format!("{bound}\n"), 0o644);
    if let Err(e) = wrote_addr {
        log::error!("{e}");
    }
    let say = console.handle();
    say.say(&format!("Sentry started (PID: {} saved in {}).", std::process::id(), paths.pidfile().display()));
    say.say(&format!("Control interface on http://{bound}/ (token in {}).", paths.token_file().display()));

    let options = CoreOptions {
        log_dir: Some(paths.log_dir()),
        console: console.handle(),
        info: crate::handoff::InfoSnapshot { started_at: sys::unix_now(), ..Default::default() },
    };
    Core::new(config, options, tx, rx).run();

    server.stop();
    let _ = std::fs::remove_file(paths.addr_file());
    let _ = std::fs::remove_file(paths.token_file());
    say.say("Bye.");
    console.close();
    lock.release();
    Ok(())
}

/// Starts the instance as a detached process and returns once it answers.
fn start_daemon(specs: &[Spec], paths: &Paths, http: Option<String>) -> Outcome {
    use std::os::unix::process::CommandExt;
    Config::from_specs(specs).map_err(fail)?;
    if let Ok(pid) = instance::live_pid(&paths.pidfile()) {
        return Err(fail(Error::AlreadyRunning { pidfile: paths.pidfile(), pid: Some(pid) }));
    }
    std::fs::create_dir_all(&paths.dir)
        .map_err(|e| fail(Error::io(format!("cannot create {}", paths.dir.display()), e)))?;
    let out_path = paths.dir.join(format!("{}.out", paths.name));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(|e| fail(Error::io(format!("cannot open {}", out_path.display()), e)))?;
    let exe = std::env::current_exe().map_err(|e| fail(Error::io("cannot find this executable", e)))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("start").arg("--dir").arg(&paths.dir);
    if let Some(c) = &paths.crate_dir {
        cmd.arg("--crate").arg(c);
    }
    if let Some(h) = http {
        cmd.arg("--http").arg(h);
    }
    let err = out.try_clone().map_err(|e| fail(Error::io("cannot duplicate the output file", e)))?;
    cmd.stdin(std::process::Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| fail(Error::io("cannot start the daemon", e)))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err((EXIT_FAIL, format!("the daemon exited ({status}); see {}", out_path.display())));
        }
        if instance::live_pid(&paths.pidfile()).is_ok() && client(paths).and_then(|c| c.get("/status")).is_ok() {
            println!("Sentry started in the background (PID: {}; output in {}).", child.id(), out_path.display());
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err((EXIT_FAIL, format!("the daemon did not answer in time; see {}", out_path.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(specs: &[Spec], paths: &Paths) -> Outcome {
    let pidfile = paths.pidfile();
    let pid = match instance::live_pid(&pidfile) {
        Ok(pid) => pid,
        Err(Error::NotRunning { .. }) => {
            println!("Not running.");
            return Ok(());
        }
        Err(e) => return Err(fail(e)),
    };
    // The lock is held, so the PID is the live instance's.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
    let wait = Config::from_specs(specs).map(|c| max_stop_wait(&c)).unwrap_or(Duration::from_secs(20));
    let deadline = Instant::now() + wait;
    while instance::is_locked(&pidfile) {
        if Instant::now() > deadline {
            return Err((EXIT_FAIL, format!("PID {pid} is still running after {}s", wait.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("Stopped (PID {pid}).");
    Ok(())
}

/// A client for the live instance, or `NotRunning`.
fn client(paths: &Paths) -> Result<Client, Error> {
    instance::live_pid(&paths.pidfile())?;
    let read = |path: PathBuf| std::fs::read_to_string(&path).map(|t| t.trim().to_string());
    let addr = read(paths.addr_file()).map_err(|_| Error::NotRunning { pidfile: paths.pidfile() })?;
    let token = read(paths.token_file()).ok();
    Ok(Client { addr, token })
}

fn answer<T: serde::de::DeserializeOwned>(code: u16, body: &str) -> Result<T, Error> {
    if code == 200 {
        return serde_json::from_str(body).map_err(|e| Error::Control { status: code, message: e.to_string() });
    }
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    Err(Error::Control { status: code, message })
}

fn status(paths: &Paths, json: bool) -> Outcome {
    let (code, body) = client(paths).and_then(|c| c.get("/status")).map_err(fail)?;
    if json {
        answer::<serde_json::Value>(code, &body).map_err(fail)?;
        println!("{body}");
        return Ok(());
    }
    let status: Status = answer(code, &body).map_err(fail)?;
    print!("{}", status_table(&status));
    Ok(())
}

fn status_table(s: &Status) -> String {
    let mut out = format!(
        "PID {}, started at {} ({}), reexec'd {} times.\n",
        s.pid,
        sys::local_datetime(s.started_at),
        s.started_at,
        s.reexec_count
    );
    let rows: Vec<[String; 5]> = s
        .entries
        .iter()
        .map(|e| {
            let pids: Vec<String> = e.processes.iter().map(|p| format!("{}:{}", p.index, p.pid)).collect();
            [
                e.name.clone(),
                e.state.as_str().to_string(),
                format!("{}/{}", e.processes.len(), e.count),
                e.restarts.to_string(),
                pids.join(" "),
            ]
        })
        .collect();
    let header = ["ENTRY", "STATE", "PROCS", "RESTARTS", "SLOT:PID"].map(String::from);
    let widths: Vec<usize> =
        (0..4).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for row in [&header].into_iter().chain(&rows) {
        for (i, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}  ", row[i], w = w));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    for w in &s.watches {
        out.push_str(&format!("watch {} /{}/: {} matched\n", w.name, w.pattern, w.matched.len()));
    }
    out
}

fn scale(paths: &Paths, entry: &str, count: &str) -> Outcome {
    let n: usize = match count.parse() {
        Ok(n) if n <= MAX_COUNT => n,
        _ => return Err(fail(Error::BadCount(count.to_string()))),
    };
    let c = client(paths).map_err(fail)?;
    let body = serde_json::json!({ "count": n }).to_string();
    let (code, body) = c.post(&format!("/entries/{entry}/scale"), &body).map_err(fail)?;
    let e: crate::status::EntryStatus = answer(code, &body).map_err(fail)?;
    println!("{}: {} processes.", e.name, e.count);
    Ok(())
}

fn restart(paths: &Paths, entry: &str) -> Outcome {
    let c = client(paths).map_err(fail)?;
    let (code, body) = c.post(&format!("/entries/{entry}/restart"), "{}").map_err(fail)?;
    let e: crate::status::EntryStatus = answer(code, &body).map_err(fail)?;
    println!("{}: restarted ({} restarts in all).", e.name, e.restarts);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn commands_and_flags_parse() {
        assert_eq!(
            parse(&args("start --http 127.0.0.1:0 --dir /d")),
            Ok(Invocation::Run {
                command: Subcommand::Start { http: Some("127.0.0.1:0".into()), daemon: false },
                dir: Some("/d".into()),
                crate_dir: None
            })
        );
        assert_eq!(
            parse(&args("--crate=/c scale web 3")),
            Ok(Invocation::Run {
                command: Subcommand::Scale { entry: "web".into(), count: "3".into() },
                dir: None,
                crate_dir: Some("/c".into())
            })
        );
        assert_eq!(parse(&args("status --help")), Ok(Invocation::Help));
    }

    #[test]
    fn usage_errors_are_refused() {
        for bad in
            ["", "frobnicate", "start --bogus", "scale web", "restart", "stop extra", "status --http x", "start --dir"]
        {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
