//! Finding a configuration's running instance from outside, exactly as the
//! configuration binary itself does — for tools such as `sentryd` that
//! manage many configurations. The files are `DIR/NAME.pid` (flocked by
//! the instance), `DIR/NAME.addr` and `DIR/NAME.token`; nothing is
//! signalled, and a pidfile nobody holds locked is never believed.

use std::path::PathBuf;

/// Where an instance of configuration `name` keeps its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceFiles {
    /// The run directory (`--dir`).
    pub dir: PathBuf,
    /// The configuration binary's name.
    pub name: String,
}

/// What is found in a run directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// An instance holds the pidfile's lock: its PID (checked in
    /// `/proc/PID/fdinfo` to be the holder).
    Running { pid: u32 },
    /// No pidfile.
    Stopped,
    /// A pidfile nobody holds locked (an instance that was SIGKILLed, or a
    /// file copied from elsewhere): what it says, never acted on.
    StalePidfile { says: Option<String> },
}

impl InstanceFiles {
    /// The files of `name` in `dir`.
    pub fn new(dir: impl Into<PathBuf>, name: &str) -> InstanceFiles {
        InstanceFiles { dir: dir.into(), name: name.to_string() }
    }

    /// `DIR/NAME.pid`.
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join(format!("{}.pid", self.name))
    }

    /// Whether an instance runs, by the pidfile's lock.
    pub fn state(&self) -> InstanceState {
        let pidfile = self.pidfile();
        match crate::instance::live_pid(&pidfile) {
            Ok(pid) => InstanceState::Running { pid },
            Err(_) if crate::instance::is_locked(&pidfile) => {
                // Locked, but its holder did not say who it is yet.
                InstanceState::Running { pid: 0 }
            }
            Err(_) if pidfile.symlink_metadata().is_ok() => InstanceState::StalePidfile {
                // Read only if it is a plain file (a FIFO's read would wait).
                says: pidfile
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_file())
                    .then(|| {
                        use std::io::Read;
                        let mut text = String::new();
                        std::fs::File::open(&pidfile).ok()?.take(64).read_to_string(&mut text).ok()?;
                        Some(text.trim().chars().take(20).collect())
                    })
                    .flatten(),
            },
            Err(_) => InstanceState::Stopped,
        }
    }

    /// The control address a running instance wrote (`HOST:PORT` or
    /// `unix:PATH`), if any.
    pub fn control_address(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(format!("{}.addr", self.name))).ok()?;
        Some(text.trim().to_string()).filter(|a| !a.is_empty())
    }
}
