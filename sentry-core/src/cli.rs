//! The command line of a configuration binary: [`sentry`] parses the
//! arguments and runs one subcommand. `start` owns the process-wide things an
//! embedded supervisor must never touch — the pidfile lock, the control
//! files, signal handlers, stdout — and runs the core on the main thread;
//! the other subcommands talk to a running instance through its pidfile and
//! control interface. Exit codes follow SPEC's table.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::config::Config;
use crate::core::{max_stop_wait, max_stop_wait_for};
use crate::instance::{self, Paths};
use crate::spec::MAX_COUNT;
use crate::status::Status;
use crate::{run, sys, Error, Signal, Spec};

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
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(crate::events::Logger { inner })).is_ok() {
        log::set_max_level(max);
    }
    sys::init_local_time();
    let invocation = parse(std::env::args_os().skip(1));
    if !matches!(invocation, Ok(Invocation::Run { command: Subcommand::Start { daemon: false, .. }, .. })) {
        sys::default_sigpipe();
    }
    let code = match invocation {
        Ok(Invocation::Help(command)) => {
            print!("{}", command.as_deref().and_then(command_help).unwrap_or_else(usage));
            EXIT_OK
        }
        Ok(Invocation::Run { command, dir, crate_dir }) => {
            let paths = Paths::resolve(dir, crate_dir);
            run(command, specs, &paths)
        }
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "{}: {message}\n\n{}", program(), usage());
            EXIT_USAGE
        }
    };
    std::process::exit(code)
}

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Invocation {
    /// `--help`, for the command named (if any).
    Help(Option<String>),
    Run {
        command: Subcommand,
        dir: Option<PathBuf>,
        crate_dir: Option<PathBuf>,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Subcommand {
    Start { http: Option<String>, daemon: bool, handoff: Option<i32>, syslog: bool },
    Stop,
    Reload { exec: Option<PathBuf> },
    Status { json: bool },
    Scale { entry: String, count: String },
    Restart { entry: String },
    Check { handoff_version: bool },
    Explain,
    Logs { entries: Vec<String>, query: crate::logs::Query, since: Option<String>, reopen: bool },
    SystemdUnit,
}

fn program() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "sentry".to_string())
}

fn usage() -> String {
    let name = program();
    format!(
        "Usage: {name} COMMAND [--dir DIR] [--crate CRATE]

Commands:
  start [--http ADDR] [--daemon] [--syslog]
                                  run the supervisor (in the foreground unless --daemon)
  stop                            stop the running instance and wait for it
  reload [--exec PATH]            rebuild this configuration and re-exec in place
  status [--json]                 show the state of the running instance
  scale ENTRY COUNT               set the number of processes of an entry
  restart ENTRY                   gracefully restart an entry's processes
  logs [ENTRY...] [-f] [-n N] [--since T] [--reopen]
                                  show the entries' logs (merged by time)
  check                           validate the configuration
  explain                         show what watches and rules match now
  systemd-unit                    print a systemd service unit for this configuration

Options:
  --dir DIR      run directory (pidfile, control files, log/); default: the crate
  --crate CRATE  the configuration crate's directory
  --help         this text; COMMAND --help: that command's
{ENVIRONMENT}"
    )
}

/// The environment variables every command reads.
const ENVIRONMENT: &str = "
Environment:
  SENTRY_DIR     the run directory, as --dir
  SENTRY_CRATE   the configuration crate, as --crate
  SENTRY_HTTP    the control address, as start --http (HOST:PORT or unix:PATH)
  SENTRY_SYSLOG  the syslog socket events go to with --syslog or --daemon (default /dev/log)
  NOTIFY_SOCKET  set by systemd: readiness, reload and stop are notified there
  JOURNAL_STREAM set by systemd: events also go to the journal, with SENTRY_ENTRY=…
  RUST_LOG       how much Sentry logs about itself (default warn)
";

/// `COMMAND --help`.
fn command_help(command: &str) -> Option<String> {
    let name = program();
    let (synopsis, text) = match command {
        "start" => (
            "start [--http ADDR] [--daemon] [--syslog]",
            "Runs the supervisor in the foreground until SIGINT or SIGTERM (exit 0 after a clean stop;
1 if already running, the configuration is invalid or the address cannot be bound).
  --http ADDR  the control interface: HOST:PORT (default 127.0.0.1:0) or unix:PATH
  --daemon     detach; return once the instance answers; output to DIR/NAME.out
               (rotated at 10 MiB, 5 kept); events also to syslog
  --syslog     send events to syslog too (RFC 5424, facility daemon)
Signals: SIGHUP reloads, SIGUSR1 reopens every log file (after logrotate).",
        ),
        "stop" => ("stop", "Stops the running instance and waits for it (0 stopped or not running; 1 still running)."),
        "reload" => (
            "reload [--exec PATH]",
            "Rebuilds the configuration crate and re-execs the running instance in place (or re-execs
PATH after its check). 0 re-exec'd; 1 build or check failed; 2 not running.",
        ),
        "status" => {
            ("status [--json]", "Shows the running instance's state (--json: as GET /status). 2 if not running.")
        }
        "scale" => ("scale ENTRY COUNT", "Sets an entry's number of processes at run time."),
        "restart" => ("restart ENTRY", "Gracefully restarts an entry's processes."),
        "logs" => (
            "logs [ENTRY...] [-f] [-n N] [--since T] [--reopen]",
            "Shows DIR/log/ENTRY.log and its rotated files (ENTRY.log.1 the newest), every entry when
none is named, merged in time order.
  -n, --lines N  the last N lines (default 10; all with --since)
  --since T      lines since T: a duration back from now (30s, 10m, 2h, 1d) or an
                 RFC 3339 time (2026-12-07T10:00:00Z, 2026-12-07 11:00:00+01:00)
  -f, --follow   go on showing what is written, across rotations
  --reopen       ask the running instance to reopen its log files (what SIGUSR1
                 does; for logrotate's postrotate); 2 if not running",
        ),
        "check" => ("check", "Validates the configuration without starting anything (0 valid, 1 invalid)."),
        "explain" => ("explain", "A dry run: what each watch and rule matches now and what would fire."),
        "systemd-unit" => (
            "systemd-unit",
            "Prints a systemd service unit (Type=notify) that runs this configuration in DIR.
Install it as /etc/systemd/system/NAME.service (or ~/.config/systemd/user/ with --user),
then: systemctl daemon-reload && systemctl enable --now NAME.",
        ),
        _ => return None,
    };
    Some(format!("Usage: {name} {synopsis} [--dir DIR] [--crate CRATE]\n\n{text}\n\n{}", usage()))
}

/// Parses the arguments (without the program name). Arguments are
/// `OsString`s: paths (`--dir`, `--crate`, `--exec`) pass through whole,
/// whatever their bytes; a word that must be text (a command, an entry, a
/// count, an address) and is not valid UTF-8 is a usage error. Options may
/// come before or after the command, as `--flag VALUE` or `--flag=VALUE`.
fn parse(args: impl IntoIterator<Item = impl Into<OsString>>) -> Result<Invocation, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut dir = None;
    let mut crate_dir = None;
    let mut http = None;
    let mut exec = None;
    let (mut daemon, mut json, mut handoff_version) = (false, false, false);
    let (mut help, mut follow, mut reopen, mut syslog) = (false, false, false, false);
    let (mut lines, mut since) = (None, None);
    let mut handoff = None;
    let mut words: Vec<OsString> = Vec::new();
    loop {
        // A negative number (`scale web -1`) is a word, not a cluster of
        // short options: the count check refuses it with its own message.
        if let Some(mut raw) = parser.try_raw_args() {
            if raw.peek().is_some_and(is_negative_number) {
                words.extend(raw.next());
                continue;
            }
        }
        let Some(arg) = parser.next().map_err(|e| e.to_string())? else { break };
        match arg {
            Short('h') | Long("help") => help = true,
            Short('f') | Long("follow") => follow = true,
            Short('n') | Long("lines") => {
                let n = text(value(&mut parser)?, "-n N")?;
                lines = Some(n.parse::<usize>().map_err(|_| format!("-n needs a number of lines, not {n:?}"))?);
            }
            Long("since") => since = Some(text(value(&mut parser)?, "--since T")?),
            Long("reopen") => reopen = true,
            Long("syslog") => syslog = true,
            Long("dir") => dir = Some(PathBuf::from(value(&mut parser)?)),
            Long("crate") => crate_dir = Some(PathBuf::from(value(&mut parser)?)),
            Long("http") => http = Some(text(value(&mut parser)?, "--http ADDR")?),
            Long("exec") => exec = Some(PathBuf::from(value(&mut parser)?)),
            Long("daemon") => daemon = true,
            // Internal: how a re-exec'd image finds its snapshot, and how a
            // reload asks a new binary which snapshots it reads.
            Long("handoff-fd") => {
                handoff =
                    Some(value(&mut parser)?.parse::<i32>().map_err(|_| "--handoff-fd needs a number".to_string())?)
            }
            Long("handoff-version") => handoff_version = true,
            Long("json") => json = true,
            Value(word) => words.push(word),
            other => return Err(other.unexpected().to_string()),
        }
    }
    if help {
        return Ok(Invocation::Help(words.first().and_then(|w| w.to_str()).map(str::to_string)));
    }
    let mut words = words.into_iter();
    let name = words.next().ok_or("missing command")?;
    let Some(name) = name.to_str().map(str::to_string) else {
        return Err(format!("unknown command {name:?}"));
    };
    let mut positional = |what: &str| {
        let word = words.next().ok_or_else(|| format!("{name}: missing {what}"))?;
        text(word, what).map_err(|e| format!("{name}: {e}"))
    };
    let command = match name.as_str() {
        "start" => Subcommand::Start { http: http.take(), daemon, handoff, syslog },
        "stop" => Subcommand::Stop,
        "reload" => Subcommand::Reload { exec: exec.take() },
        "status" => Subcommand::Status { json },
        "scale" => Subcommand::Scale { entry: positional("ENTRY")?, count: positional("COUNT")? },
        "restart" => Subcommand::Restart { entry: positional("ENTRY")? },
        "check" => Subcommand::Check { handoff_version },
        "explain" => Subcommand::Explain,
        "systemd-unit" => Subcommand::SystemdUnit,
        "logs" => {
            let entries = words.by_ref().map(|w| text(w, "ENTRY")).collect::<Result<Vec<_>, _>>()?;
            let query = crate::logs::Query { lines, since_ms: None, follow };
            Subcommand::Logs { entries, query, since: since.take(), reopen }
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("{name}: unexpected argument {extra:?}"));
    }
    if handoff.is_some() && !matches!(command, Subcommand::Start { daemon: false, .. }) {
        return Err(format!("{name} does not take --handoff-fd"));
    }
    if handoff_version && !matches!(command, Subcommand::Check { .. }) {
        return Err(format!("{name} does not take --handoff-version"));
    }
    let logs = matches!(command, Subcommand::Logs { .. });
    if !logs && (follow || reopen || lines.is_some() || since.is_some()) {
        return Err(format!("{name} does not take -f/-n/--since/--reopen"));
    }
    if syslog && !matches!(command, Subcommand::Start { .. }) {
        return Err(format!("{name} does not take --syslog"));
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

/// The value of the option just read.
fn value(parser: &mut lexopt::Parser) -> Result<OsString, String> {
    parser.value().map_err(|e| e.to_string())
}

/// `-` followed by digits only: a negative number, not options.
fn is_negative_number(arg: &OsStr) -> bool {
    arg.as_bytes().strip_prefix(b"-").is_some_and(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
}

/// A word that must be text.
fn text(word: OsString, what: &str) -> Result<String, String> {
    word.into_string().map_err(|w| format!("{what} must be valid UTF-8, not {w:?}"))
}

fn run(command: Subcommand, specs: Vec<Spec>, paths: &Paths) -> i32 {
    let result = match command {
        Subcommand::Check { handoff_version } => check(&specs, handoff_version),
        Subcommand::Explain => explain(&specs, paths),
        Subcommand::Start { handoff: Some(fd), .. } => run::resume(&specs, paths, fd).map_err(fail),
        Subcommand::Start { http, daemon: false, syslog, .. } => run::start(&specs, paths, http, syslog).map_err(fail),
        Subcommand::Start { http, daemon: true, .. } => start_daemon(&specs, paths, http),
        Subcommand::Stop => stop(&specs, paths),
        Subcommand::Status { json } => status(paths, json),
        Subcommand::Scale { entry, count } => scale(paths, &entry, &count),
        Subcommand::Restart { entry } => restart(paths, &entry),
        Subcommand::Reload { exec } => reload(paths, exec),
        Subcommand::Logs { entries, query, since, reopen } => logs(&specs, paths, entries, query, since, reopen),
        Subcommand::SystemdUnit => systemd_unit(&specs, paths),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err((code, message)) => {
            // Not `eprintln!`, which panics when standard error cannot be
            // written (a full disk, a file-size limit): the exit status says it.
            let _ = writeln!(std::io::stderr(), "{}: {message}", program());
            code
        }
    }
}

/// A failure with its exit status.
type Outcome = Result<(), (i32, String)>;

fn fail(e: Error) -> (i32, String) {
    let code = match e {
        Error::NotRunning { .. } | Error::ShuttingDown | Error::CoreGone => EXIT_NOT_RUNNING,
        // The instance answered that it is shutting down (a 503 for
        // anything else — no thread to serve it — is a failure of its own).
        Error::Control { status: 503, ref message } if *message == Error::ShuttingDown.to_string() => EXIT_NOT_RUNNING,
        _ => EXIT_FAIL,
    };
    (code, e.to_string())
}

fn check(specs: &[Spec], handoff_version: bool) -> Outcome {
    let config = Config::from_specs(specs).map_err(fail)?;
    // `start` raises the soft open-file limit to the hard one: that is what
    // the processes must fit under.
    crate::budget::check_config(&config, crate::budget::nofile().1, "the hard RLIMIT_NOFILE").map_err(fail)?;
    if handoff_version {
        println!("handoff-version {}", crate::handoff::HANDOFF_VERSION);
    }
    println!("The configuration is valid: {} entries, {} watches.", config.entries.len(), config.watches.len());
    for line in config.health_lines() {
        println!("{line}");
    }
    println!(
        "{}",
        match crate::cgroup::probe() {
            crate::cgroup::Fence::Cgroup(tree) => format!(
                "Containment: a cgroup per process, under {}/sentry.NAME.HASH (cgroup v2 is writable here).",
                tree.root().parent().unwrap_or(tree.root()).display()
            ),
            other => other.describe(),
        }
    );
    Ok(())
}

/// A dry run: what each watch and rule matches now, and what would fire.
fn explain(specs: &[Spec], paths: &Paths) -> Outcome {
    use crate::watch::{evaluate, human_bytes, measure, LiveProbe, Scanner, State};
    let config = Config::from_specs(specs).map_err(fail)?;
    // Entries' processes are the running instance's children, if it runs.
    let live = instance::live_pid(&paths.pidfile()).ok().map(|p| p as i32);
    let me = live.unwrap_or(std::process::id() as i32);
    // The running instance's cgroup tree, where its slots run in cgroups
    // of their own: as it records it in DIR.
    let cgroup_root = live.and_then(|_| crate::leftovers::recorded_cgroup(&paths.ledger_file()));
    let targets = crate::watch::targets(&config, cgroup_root.as_deref());
    for line in config.health_lines() {
        println!("{line}");
    }
    if targets.is_empty() {
        println!("No watches and no rules: nothing to explain.");
        return Ok(());
    }
    let mut scanner = Scanner::new(me);
    scanner.scan(None);
    std::thread::sleep(Duration::from_millis(500)); // so that cpu has an interval
    let mut samples = scanner.scan(None);
    let all_due = vec![true; targets.len()];
    measure(&targets, &all_due, &mut samples, me, &mut LiveProbe(&mut scanner));
    let now_ms = sys::unix_now_ns() / 1_000_000;
    let (firings, _) = evaluate(&targets, &all_due, &samples, me, now_ms, &mut State::default(), false);
    let matched = crate::watch::match_targets(&targets, &samples, me);
    let spared = crate::watch::spared_matches(&targets, &samples, me);
    for ((t, covered), spared) in targets.iter().zip(&matched).zip(&spared) {
        match &t.pattern {
            Some(p) => println!(
                "watch {} /{}/{}{}: {} processes",
                t.name,
                p.as_str(),
                t.cgroup.as_ref().map(|c| format!(" in cgroups /{}/", c.as_str())).unwrap_or_default(),
                if t.children { " with children" } else { "" },
                covered.len()
            ),
            None => println!("entry {}: {} processes", t.name, covered.len()),
        }
        for &i in covered {
            let s = &samples[i];
            let cpu = s.cpu.map(|c| format!("{c}%")).unwrap_or_else(|| "?".into());
            let cmdline: String = s.cmdline.chars().take(60).collect();
            let treemem = s.treemem.map(|m| format!("  treemem {:>6}", human_bytes(m))).unwrap_or_default();
            let cgroup = s.cgroup.as_deref().map(str::to_string).or_else(|| crate::proc::cgroup_v2(s.pid));
            println!(
                "  {:>7}  rmem {:>6}  vmem {:>6}  cpu {:>4}{treemem}  {cmdline}",
                s.pid,
                human_bytes(s.rss),
                human_bytes(s.vmem),
                cpu
            );
            println!("           cgroup {}", cgroup.as_deref().unwrap_or("(none: no cgroup v2)"));
        }
        for &(i, kin) in spared {
            let s = &samples[i];
            let cmdline: String = s.cmdline.chars().take(60).collect();
            let who = match kin {
                crate::watch::Kin::Ancestor => "an ancestor of Sentry",
                crate::watch::Kin::OwnTree if s.pid == me => "Sentry itself",
                crate::watch::Kin::OwnTree => "one of Sentry's own processes",
            };
            println!("  (would also match {} {cmdline}, {who}: never acted on)", s.pid);
        }
        for (index, rule) in t.rules.iter().enumerate() {
            let fires: Vec<String> = firings
                .iter()
                .filter(|f| f.target == t.name && f.rule == index)
                .map(|f| format!("{} ({})", f.pid, f.description))
                .collect();
            if fires.is_empty() {
                println!("  rule {} => {}: would fire for no process", rule.trigger, rule.action);
            } else {
                println!("  rule {} => {}: would fire for {}", rule.trigger, rule.action, fires.join(", "));
            }
        }
    }
    println!("(A dry run: nothing was signalled or run.)");
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
    let out_path = paths.daemon_output();
    use std::os::unix::fs::OpenOptionsExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
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
    // Detached, its events go to syslog too (the seed's "syslogged events").
    cmd.arg("--syslog");
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
            if let Ok(pid) = instance::live_pid(&paths.pidfile()) {
                return Err(fail(Error::AlreadyRunning { pidfile: paths.pidfile(), pid: Some(pid) }));
            }
            return Err((EXIT_FAIL, format!("the daemon exited ({status}); see {}", out_path.display())));
        }
        // Started only if the instance that answers is our own child: one
        // started at the same moment by someone else is not ours, and ours
        // will say it found it running.
        let ours = instance::live_pid(&paths.pidfile()).is_ok_and(|pid| pid == child.id());
        if ours && client(paths).and_then(|c| c.get("/status")).is_ok() {
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
    let wait = stop_wait(specs, paths);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = crate::budget::later(Instant::now(), wait);
    while instance::is_locked(&pidfile) {
        if Instant::now() > deadline {
            return Err((EXIT_FAIL, format!("PID {pid} is still running after {}s", wait.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("Stopped (PID {pid}).");
    Ok(())
}

/// How long `stop` waits: the longest stop timeout, plus the grace of a
/// group that outlives SIGKILL and a margin — of this binary's configuration
/// or of the one the instance runs (it may have been edited and rebuilt
/// since, without a reload), whichever is longer.
fn stop_wait(specs: &[Spec], paths: &Paths) -> Duration {
    let own = Config::from_specs(specs).map(|c| max_stop_wait(&c)).unwrap_or(Duration::from_secs(20));
    let running = client(paths)
        .and_then(|c| c.get("/status"))
        .and_then(|(code, body)| answer::<Status>(code, &body))
        .map(|s| longest_stop_chain(&s))
        .map(max_stop_wait_for)
        .unwrap_or_default();
    own.max(running)
}

/// The longest sum of stop timeouts along the running instance's `.after`
/// chains (entries stop one after the other along them).
fn longest_stop_chain(status: &Status) -> Duration {
    let nodes: Vec<(&str, Duration, Vec<&str>)> = status
        .entries
        .iter()
        .map(|e| {
            (e.name.as_str(), Duration::from_millis(e.stop_timeout_ms), e.after.iter().map(String::as_str).collect())
        })
        .collect();
    crate::config::longest_chain(&nodes)
}

/// A client for the live instance, or `NotRunning`. (It signals nothing,
/// so the lock alone says the instance lives; its PID is not needed.)
fn client(paths: &Paths) -> Result<Client, Error> {
    if !instance::is_locked(&paths.pidfile()) {
        return Err(Error::NotRunning { pidfile: paths.pidfile() });
    }
    let read = |path: PathBuf| std::fs::read_to_string(&path).map(|t| t.trim().to_string());
    let addr = read(paths.addr_file()).map_err(|_| Error::NotRunning { pidfile: paths.pidfile() })?;
    let token = read(paths.token_file()).ok();
    Ok(Client { addr, token })
}

fn answer<T: serde::de::DeserializeOwned>(code: u16, body: &str) -> Result<T, Error> {
    if code == 200 {
        return serde_json::from_str(body).map_err(|e| Error::Control { status: code, message: e.to_string() });
    }
    Err(answer_error(code, body))
}

fn answer_error(code: u16, body: &str) -> Error {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    Error::Control { status: code, message }
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
    if let Some(note) = accepted(code, &body) {
        println!("{entry}: {n} processes ({note}).");
        return Ok(());
    }
    let e: crate::status::EntryStatus = answer(code, &body).map_err(fail)?;
    println!("{}: {} processes.", e.name, e.count);
    Ok(())
}

/// The note of a 202 answer to a scale or restart: taken, and settling in
/// the image a reload is starting.
fn accepted(code: u16, body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    (code == 202).then(|| v["note"].as_str().unwrap_or("accepted").to_string())
}

/// Asks for a reload and waits for the build that answers it.
fn reload(paths: &Paths, exec: Option<PathBuf>) -> Outcome {
    let c = client(paths).map_err(fail)?;
    let exec = exec.map(|p| if p.is_absolute() { p } else { std::env::current_dir().unwrap_or_default().join(p) });
    // JSON carries text: a path that is not UTF-8 cannot be asked for.
    let exec = match exec.map(|p| p.into_os_string().into_string()) {
        Some(Err(p)) => return Err((EXIT_USAGE, format!("--exec {p:?}: the path must be valid UTF-8"))),
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let body = serde_json::json!({ "exec": exec }).to_string();
    let (code, accepted) = c.post("/reload", &body).map_err(fail)?;
    if code != 202 {
        return Err(fail(answer_error(code, &accepted)));
    }
    let ticket =
        serde_json::from_str::<serde_json::Value>(&accepted).ok().and_then(|v| v["reload"].as_u64()).unwrap_or(0);
    println!("Reloading…");
    let deadline = Instant::now() + crate::build::BUILD_TIMEOUT + Duration::from_secs(60);
    loop {
        // During the exec the listener is kept: a connection waits in its backlog.
        let status =
            client(paths).and_then(|c| c.get("/status")).and_then(|(code, body)| answer::<Status>(code, &body));
        let status = match status {
            // The instance stopped, or is stopping: no reload will come.
            Err(e @ (Error::NotRunning { .. } | Error::Control { status: 503, .. })) => {
                return Err((EXIT_NOT_RUNNING, format!("no reload: {}", fail(e).1)))
            }
            other => other,
        };
        if let Some((outcome, status)) =
            status.ok().and_then(|s| Some((s.last_reload.clone().filter(|o| o.id >= ticket)?, s)))
        {
            if outcome.ok {
                println!("Reloaded: PID {} re-exec'd (re-exec #{}).", status.pid, status.reexec_count);
                if let Some(warning) = outcome.error {
                    println!("Warning: {warning}");
                }
                return Ok(());
            }
            let error = outcome.error.unwrap_or_default();
            return Err((EXIT_FAIL, format!("reload failed; the old configuration runs on:\n{error}")));
        }
        if Instant::now() > deadline {
            return Err((EXIT_FAIL, "no reload outcome in time".to_string()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `logs`: reads the files; `--reopen` signals the instance, found by its
/// locked pidfile only.
fn logs(
    specs: &[Spec],
    paths: &Paths,
    entries: Vec<String>,
    mut query: crate::logs::Query,
    since: Option<String>,
    reopen: bool,
) -> Outcome {
    if reopen {
        let pid = instance::live_pid(&paths.pidfile()).map_err(fail)?;
        // SAFETY: kill of the PID whose pidfile lock is held: the live instance.
        if unsafe { libc::kill(pid as i32, libc::SIGUSR1) } != 0 {
            return Err((EXIT_FAIL, format!("cannot signal PID {pid}: {}", std::io::Error::last_os_error())));
        }
        println!("Asked PID {pid} to reopen its log files.");
        return Ok(());
    }
    let dir = paths.log_dir();
    let known: Vec<String> = specs.iter().filter(|s| s.is_entry()).map(|s| s.name().to_string()).collect();
    let mut entries = if entries.is_empty() { known.clone() } else { entries };
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.clone()));
    for e in &entries {
        // A name, not a path: what entries may be called.
        if !crate::config::valid_name(e) {
            return Err((EXIT_FAIL, format!("{e:?} is not an entry name ([A-Za-z0-9_-], 1 to 64 characters)")));
        }
        if !known.contains(e) && !dir.join(format!("{e}.log")).exists() {
            return Err((EXIT_FAIL, format!("unknown entry {e:?} (and no {e}.log in {})", dir.display())));
        }
    }
    if let Some(t) = since {
        let now_ms = (sys::unix_now_ns() / 1_000_000) as i64;
        query.since_ms = Some(crate::logs::parse_since(&t, now_ms).map_err(|e| (EXIT_FAIL, e))?);
    } else if query.lines.is_none() {
        query.lines = Some(10);
    }
    let mut out = std::io::stdout().lock();
    match crate::logs::show(&dir, &entries, &query, &mut out) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err((EXIT_FAIL, e.to_string())),
    }
}

/// `systemd-unit`: the unit for this binary and DIR.
fn systemd_unit(specs: &[Spec], paths: &Paths) -> Outcome {
    let config = Config::from_specs(specs).map_err(fail)?;
    let exe = std::env::current_exe().map_err(|e| fail(Error::io("cannot find this executable", e)))?;
    let dir = std::fs::canonicalize(&paths.dir).unwrap_or_else(|_| paths.dir.clone());
    let stop = max_stop_wait(&config).as_secs() + 10;
    print!("{}", crate::systemd::unit(&paths.name, &exe, &dir, paths.crate_dir.as_deref(), stop));
    Ok(())
}

fn restart(paths: &Paths, entry: &str) -> Outcome {
    let c = client(paths).map_err(fail)?;
    let (code, body) = c.post(&format!("/entries/{entry}/restart"), "{}").map_err(fail)?;
    if let Some(note) = accepted(code, &body) {
        println!("{entry}: restarting ({note}).");
        return Ok(());
    }
    let e: crate::status::EntryStatus = answer(code, &body).map_err(fail)?;
    if e.waiting_for.is_empty() {
        println!("{}: restarted ({} restarts in all).", e.name, e.restarts);
    } else {
        // Stopped; its start is held for `.after`.
        println!(
            "{}: stopped; it starts once {} {} ready.",
            e.name,
            e.waiting_for.join(", "),
            if e.waiting_for.len() == 1 { "is" } else { "are" }
        );
    }
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
            parse(args("start --http 127.0.0.1:0 --dir /d")),
            Ok(Invocation::Run {
                command: Subcommand::Start {
                    http: Some("127.0.0.1:0".into()),
                    daemon: false,
                    handoff: None,
                    syslog: false
                },
                dir: Some("/d".into()),
                crate_dir: None
            })
        );
        assert_eq!(
            parse(args("--crate=/c scale web 3")),
            Ok(Invocation::Run {
                command: Subcommand::Scale { entry: "web".into(), count: "3".into() },
                dir: None,
                crate_dir: Some("/c".into())
            })
        );
        assert_eq!(parse(args("status --help")), Ok(Invocation::Help(Some("status".into()))));
    }

    #[test]
    fn usage_errors_are_refused() {
        for bad in
            ["", "frobnicate", "start --bogus", "scale web", "restart", "stop extra", "status --http x", "start --dir"]
        {
            assert!(parse(args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_are_os_strings_and_text_must_be_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(b"/tmp/caf\xe9-\xff".to_vec());
        let line = |words: &[&OsStr]| parse(words.iter().map(|w| w.to_os_string()).collect::<Vec<_>>());
        assert_eq!(
            line(&["stop".as_ref(), "--dir".as_ref(), &odd]),
            Ok(Invocation::Run { command: Subcommand::Stop, dir: Some(PathBuf::from(&odd)), crate_dir: None })
        );
        let mut inline = OsString::from("--crate=");
        inline.push(&odd);
        assert_eq!(
            line(&["reload".as_ref(), &inline, "--exec".as_ref(), &odd]),
            Ok(Invocation::Run {
                command: Subcommand::Reload { exec: Some(PathBuf::from(&odd)) },
                dir: None,
                crate_dir: Some(PathBuf::from(&odd))
            })
        );
        let not_text = OsStr::from_bytes(b"\xff");
        for bad in [
            line(&["scale".as_ref(), "web".as_ref(), not_text]),
            line(&["scale".as_ref(), not_text, "1".as_ref()]),
            line(&["restart".as_ref(), not_text]),
            line(&[not_text]),
            line(&["start".as_ref(), "--http".as_ref(), not_text]),
            line(&["start".as_ref(), "--handoff-fd".as_ref(), not_text]),
        ] {
            assert!(bad.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_negative_count_is_a_word_and_flags_take_inline_values() {
        assert_eq!(
            parse(args("scale web -1")),
            Ok(Invocation::Run {
                command: Subcommand::Scale { entry: "web".into(), count: "-1".into() },
                dir: None,
                crate_dir: None
            })
        );
        assert_eq!(
            parse(args("start --http=127.0.0.1:1 --daemon")),
            Ok(Invocation::Run {
                command: Subcommand::Start {
                    http: Some("127.0.0.1:1".into()),
                    daemon: true,
                    handoff: None,
                    syslog: false
                },
                dir: None,
                crate_dir: None
            })
        );
        for bad in ["start --daemon=yes", "start -x", "status --json=1", "check --handoff-fd 3"] {
            assert!(parse(args(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(parse(args("-h")), Ok(Invocation::Help(None)));
        assert!(command_help("logs").unwrap().contains("--since T"));
        assert!(command_help("nope").is_none());
    }
}
