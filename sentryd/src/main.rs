//! `sentryd`: start, list and control every Sentry configuration by name.
//! A configuration is a crate `CONF_DIR/NAME` (`~/.sentry/conf` by default)
//! whose binary `NAME` is Sentry with its configuration compiled in;
//! `sentryd` builds it when its binary is missing or older than its
//! sources, and hands every command over to it (`exec`, so behaviour and
//! exit codes are the binary's, as SPEC says). Only `new`, `list`, `start`
//! and the all-configurations `status` are its own. It never signals a
//! process itself, and believes a pidfile only while it is locked.

mod confs;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use confs::{Conf, State};

/// `EX_USAGE` (sysexits.h), as the configuration binaries use.
const EX_USAGE: u8 = 64;

const USAGE: &str = "\
usage: sentryd [--conf-dir DIR] COMMAND [-c NAME] [ARGS…]

  new NAME                     scaffold a configuration crate CONF_DIR/NAME
  start [-c NAME] [--foreground]
                               build it if needed, then start it detached
                               (--foreground: exec it in place, for systemd)
  list [--json]                every configuration and its state
  status                       one table for every running configuration
  stop | reload | status | scale | restart | logs | check | explain | systemd-unit
       [-c NAME] [ARGS…]       the configuration binary's own command

NAME defaults to `sentry`. CONF_DIR: --conf-dir, SENTRY_CONF_DIR, or ~/.sentry/conf.
";

/// What the command line asks for.
struct Request {
    conf_dir: Option<PathBuf>,
    command: String,
    name: Option<String>,
    foreground: bool,
    json: bool,
    /// Everything else, passed on to the configuration binary.
    rest: Vec<OsString>,
}

fn parse(args: Vec<OsString>) -> Result<Request, String> {
    let mut r = Request {
        conf_dir: None,
        command: String::new(),
        name: None,
        foreground: false,
        json: false,
        rest: Vec::new(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_str().map(str::to_string);
        let mut value = |what: &str| args.next().ok_or_else(|| format!("{what} needs a value"));
        match text.as_deref() {
            Some("--conf-dir") => r.conf_dir = Some(PathBuf::from(value("--conf-dir")?)),
            Some(s) if s.starts_with("--conf-dir=") => r.conf_dir = Some(PathBuf::from(&s["--conf-dir=".len()..])),
            Some("-c" | "--config") => {
                let v = value("-c")?;
                r.name = Some(v.into_string().map_err(|_| "NAME is not text".to_string())?);
            }
            Some(s) if s.starts_with("--config=") => r.name = Some(s["--config=".len()..].to_string()),
            Some(s) if s.starts_with("-c=") => r.name = Some(s["-c=".len()..].to_string()),
            Some(s) if s.starts_with("-c") && s.len() > 2 && !s.starts_with("--") => r.name = Some(s[2..].to_string()),
            Some("-h" | "--help") if r.command.is_empty() || matches!(r.command.as_str(), "new" | "list" | "start") => {
                r.command = "help".to_string()
            }
            Some(s) if r.command.is_empty() && !s.starts_with('-') => r.command = s.to_string(),
            Some("--foreground") if r.command == "start" => r.foreground = true,
            Some("--json") if r.command == "list" || r.command == "status" => {
                r.json = true;
                r.rest.push(arg);
            }
            _ if r.command.is_empty() => return Err(format!("unknown option {:?}", arg.to_string_lossy())),
            _ => r.rest.push(arg),
        }
    }
    if r.command.is_empty() {
        return Err("no command".to_string());
    }
    Ok(r)
}

fn main() -> ExitCode {
    let request = match parse(std::env::args_os().skip(1).collect()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sentryd: {e}\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match run(request) {
        Ok(code) => code,
        Err(e) => match e.strip_prefix(USAGE_MARK) {
            Some(e) => {
                eprintln!("sentryd: {e}");
                ExitCode::from(EX_USAGE)
            }
            None => {
                eprintln!("sentryd: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn run(r: Request) -> Result<ExitCode, String> {
    if r.command == "help" {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let dir = confs::conf_dir(r.conf_dir.clone())?;
    // Every build of these configurations — sentryd's and their instances'
    // own reloads — goes to the directory's build directory. Set before
    // any thread exists.
    std::env::set_var("CARGO_TARGET_DIR", confs::target_dir(&dir));
    let name = r.name.clone().unwrap_or_else(|| "sentry".to_string());
    match r.command.as_str() {
        "new" => {
            let name = match (&r.name, r.rest.as_slice()) {
                (Some(n), []) => n.clone(),
                (None, [n]) => n.to_string_lossy().into_owned(),
                _ => return Err(usage("new takes one NAME")),
            };
            new(&dir, &name)
        }
        "list" if r.rest.iter().all(|a| a == "--json") => list(&dir, r.json),
        "list" => Err(usage("list takes only --json")),
        "status" if r.name.is_none() && r.rest.iter().all(|a| a == "--json") => status_all(&dir, r.json),
        "start" => start(&confs::find(&dir, &name)?, r.foreground, &r.rest),
        "systemd-unit" => systemd_unit(&dir, &confs::find(&dir, &name)?),
        "stop" | "reload" | "status" | "scale" | "restart" | "logs" | "check" | "explain" => {
            pass_through(&confs::find(&dir, &name)?, &r.command, &r.rest)
        }
        other => Err(usage(&format!("unknown command {other:?}"))),
    }
}

/// A usage error: said with the usage, exit 64 (`EX_USAGE`, as the
/// configuration binaries do).
fn usage(what: &str) -> String {
    format!("{USAGE_MARK}{what}\n{USAGE}")
}

const USAGE_MARK: &str = "\u{0}usage:";

/// The sentry-core sources this `sentryd` was built from, which a new
/// configuration depends on by path, and their workspace's lock file.
fn sources() -> (PathBuf, PathBuf) {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = here.parent().map(PathBuf::from).unwrap_or(here);
    (workspace.join("sentry-core"), workspace.join("Cargo.lock"))
}

fn new(dir: &std::path::Path, name: &str) -> Result<ExitCode, String> {
    let (core, lock) = sources();
    if !core.join("Cargo.toml").is_file() {
        return Err(format!("the sentry-core sources this sentryd was built from are gone ({})", core.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let created = sentry_core::scaffold::create(dir, name, &core, Some(&lock))?;
    println!(
        "Created {}.\n\nNext:\n  sentryd start -c {name}\n  # edit {}/src/main.rs, then:\n  sentryd reload -c {name}",
        created.display(),
        created.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Builds if needed, then `NAME start --daemon` (or, in the foreground,
/// becomes `NAME start`: same PID, for a service manager).
fn start(conf: &Conf, foreground: bool, rest: &[OsString]) -> Result<ExitCode, String> {
    if let State::Running { pid } = conf.state() {
        eprintln!("sentryd: {} is already running (PID {pid}).", conf.name);
        return Ok(ExitCode::from(1));
    }
    let binary = conf.built().map_err(|e| format!("{} does not build; nothing was started.\n{e}", conf.name))?;
    let mut cmd = Command::new(&binary);
    cmd.arg("start").args(rest).args(conf.place_args());
    if foreground {
        let e = cmd.exec();
        return Err(format!("cannot run {}: {e}", binary.display()));
    }
    cmd.arg("--daemon");
    let status = cmd.status().map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    Ok(ExitCode::from(status.code().map_or(1, |c| c.clamp(0, 255) as u8)))
}

/// The unit the configuration prints, started through `sentryd start
/// --foreground` (which execs the configuration in place: the same PID
/// for `Type=notify`, and a build first if the sources changed).
fn systemd_unit(dir: &std::path::Path, conf: &Conf) -> Result<ExitCode, String> {
    let binary = conf.built()?;
    let out = Command::new(&binary)
        .arg("systemd-unit")
        .args(conf.place_args())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        return Ok(ExitCode::from(out.status.code().map_or(1, |c| c.clamp(0, 255) as u8)));
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot find sentryd itself: {e}"))?;
    let q = |s: &str| sentry_core::quote_for_unit(s);
    // systemd's own PATH has no cargo (~/.cargo/bin): the unit gets this one.
    let path = std::env::var("PATH").unwrap_or_default();
    let start = format!(
        "ExecStart={} --conf-dir {} start -c {} --foreground",
        q(&me.to_string_lossy()),
        q(&dir.to_string_lossy()),
        q(&conf.name)
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with("ExecStart=") {
            println!("Environment={}", q(&format!("PATH={path}")));
            println!("{start}");
        } else {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `NAME COMMAND ARGS… --dir D --crate D`, in place of this process.
fn pass_through(conf: &Conf, command: &str, rest: &[OsString]) -> Result<ExitCode, String> {
    let binary = match command {
        // These need the configuration as it is now.
        "check" | "explain" | "logs" => conf.built()?,
        _ => {
            let b = conf.binary();
            if !b.is_file() {
                // Without a binary nothing of it can be running.
                let running = matches!(conf.state(), State::Running { .. });
                if !running {
                    eprintln!("sentryd: {} is not running.", conf.name);
                    return Ok(ExitCode::from(if command == "stop" { 0 } else { 2 }));
                }
                conf.built()?
            } else {
                b
            }
        }
    };
    let e = Command::new(&binary).arg(command).args(rest).args(conf.place_args()).exec();
    Err(format!("cannot run {}: {e}", binary.display()))
}

/// What `list` shows of one configuration.
fn summary(conf: &Conf) -> serde_json::Value {
    let state = conf.state();
    let mut row = serde_json::json!({
        "name": conf.name,
        "dir": conf.dir,
        "state": state.as_str(),
        "pid": null, "started_at": null, "uptime_s": null,
        "processes": null, "target": null, "restarts": null,
        "address": null,
    });
    if let State::Running { pid } = state {
        row["pid"] = pid.into();
        row["address"] = conf.files().control_address().into();
        if let Some(s) = conf.status() {
            let entries = s["entries"].as_array().cloned().unwrap_or_default();
            let sum = |f: &dyn Fn(&serde_json::Value) -> u64| entries.iter().map(f).sum::<u64>();
            row["processes"] = sum(&|e| e["processes"].as_array().map_or(0, |p| p.len() as u64)).into();
            row["target"] = sum(&|e| e["count"].as_u64().unwrap_or(0)).into();
            row["restarts"] = sum(&|e| e["restarts"].as_u64().unwrap_or(0)).into();
            row["started_at"] = s["started_at"].clone();
            if let Some(at) = s["started_at"].as_u64() {
                row["uptime_s"] = now().saturating_sub(at).into();
            }
        }
    }
    row
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `3d 4h`, `2h 5m`, `7m 3s`, `12s`.
fn human(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn list(dir: &std::path::Path, json: bool) -> Result<ExitCode, String> {
    let rows: Vec<serde_json::Value> = confs::all(dir)?.iter().map(summary).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("No configuration in {} (sentryd new NAME makes one).", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut table = vec![["NAME", "STATE", "PID", "UPTIME", "PROCS", "RESTARTS", "ADDRESS"].map(String::from).to_vec()];
    for r in &rows {
        let procs = match (r["processes"].as_u64(), r["target"].as_u64()) {
            (Some(p), Some(t)) => format!("{p}/{t}"),
            _ => "-".to_string(),
        };
        let uptime = r["uptime_s"].as_u64().map(human).unwrap_or_else(|| "-".to_string());
        table.push(vec![
            text(&r["name"]),
            text(&r["state"]),
            text(&r["pid"]),
            uptime,
            procs,
            text(&r["restarts"]),
            text(&r["address"]),
        ]);
    }
    print_table(&table);
    Ok(ExitCode::SUCCESS)
}

/// One table of every running configuration's entries (`--json`: each
/// one's `GET /status`, by name).
fn status_all(dir: &std::path::Path, json: bool) -> Result<ExitCode, String> {
    let mut table = vec![["CONFIG", "PID", "ENTRY", "STATE", "PROCS", "RESTARTS"].map(String::from).to_vec()];
    let mut all = serde_json::Map::new();
    for conf in confs::all(dir)? {
        let State::Running { pid } = conf.state() else { continue };
        let Some(s) = conf.status() else { continue };
        if json {
            all.insert(conf.name.clone(), s);
            continue;
        }
        for e in s["entries"].as_array().into_iter().flatten() {
            let procs =
                format!("{}/{}", e["processes"].as_array().map_or(0, Vec::len), e["count"].as_u64().unwrap_or(0));
            table.push(vec![
                conf.name.clone(),
                pid.to_string(),
                e["name"].as_str().unwrap_or("?").to_string(),
                e["state"].as_str().unwrap_or("?").to_string(),
                procs,
                e["restarts"].to_string(),
            ]);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    } else if table.len() == 1 {
        println!("No configuration is running.");
    } else {
        print_table(&table);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
