//! What systemd needs from an instance it runs: readiness notifications on
//! `NOTIFY_SOCKET` (`READY=1` once the first generation of children has
//! started, `RELOADING=1` … `READY=1` around each reload, the PID staying
//! the same across the re-exec, `STOPPING=1` at shutdown; sd_notify(3)),
//! and the unit `NAME systemd-unit` prints. Outside systemd (no
//! `NOTIFY_SOCKET`) every notification is nothing. Children never inherit
//! the socket (`spawn` removes `NOTIFY_SOCKET` from their environment).
//! This module knows nothing of the core.

use std::path::Path;

use sd_notify::NotifyState;

fn notify(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("cannot notify systemd: {e}");
    }
}

/// `READY=1`: the children are started (after a start, or a reload's re-exec or failure).
pub(crate) fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("supervising")]);
}

/// `RELOADING=1` with the monotonic time (what `Type=notify-reload` requires).
pub(crate) fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// `STOPPING=1`: every child is being stopped (said once).
pub(crate) fn stopping() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]));
}

/// `word` as one word of a unit's command line (systemd.service(5),
/// "Command lines"): `%` starts a specifier and `$` a variable, so both
/// are doubled; then it is quoted if it has blanks or quotes.
pub fn quote_for_unit(word: &str) -> String {
    let s = word.replace('%', "%%").replace('$', "$$");
    if s.contains([' ', '\t', '"', '\\', '\'']) {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

/// A service unit running configuration binary `exe` in `dir`
/// (systemd.service(5)): `Type=notify`, reload by `reload` (the PID stays),
/// `Delegate=yes` so that the cgroup containment can make its cgroups,
/// `KillMode=mixed` so that systemd's SIGTERM reaches Sentry alone and its
/// own stop runs, and a stop timeout above Sentry's own bound.
pub(crate) fn unit(name: &str, exe: &Path, dir: &Path, crate_dir: Option<&Path>, stop_secs: u64) -> String {
    let quote = |p: &Path| quote_for_unit(&p.display().to_string());
    let exe = quote(exe);
    let dir_arg = format!("--dir {}", quote(dir));
    let crate_arg = crate_dir.map(|c| format!(" --crate {}", quote(c))).unwrap_or_default();
    format!(
        "[Unit]
Description=Sentry configuration {name}
After=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exe} start {dir_arg}{crate_arg}
ExecReload={exe} reload {dir_arg}{crate_arg}
ExecStop={exe} stop {dir_arg}{crate_arg}
KillMode=mixed
Delegate=yes
TimeoutStopSec={stop_secs}
TimeoutStartSec=120
Restart=on-failure

[Install]
WantedBy=multi-user.target
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specifiers_and_variables_in_paths_are_escaped_and_blanks_quoted() {
        let unit = unit("n", Path::new("/opt/b in/conf"), Path::new("/srv/p%n$HOME"), None, 20);
        assert!(unit.contains("ExecStart=\"/opt/b in/conf\" start --dir /srv/p%%n$$HOME\n"), "{unit}");
        assert!(unit.contains("TimeoutStopSec=20"), "{unit}");
    }
}
