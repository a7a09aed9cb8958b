//! The validated configuration: what the supervisor is asked to run and watch.
//! [`Config::from_specs`] checks a whole list of [`Spec`]s and reports every
//! problem at once, each naming the offending text; past it, nothing downstream
//! re-validates. This module knows nothing of processes, threads or the CLI.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::handoff::EntryConfigSnapshot;
use crate::rule::{Action, Trigger};
use crate::spec::{EntryFields, Restart, Spec, SpecKind, MAX_COUNT, MAX_LINE_LIMIT, MIN_LINE_LIMIT};
use crate::{Error, Signal};

/// A validated configuration.
#[derive(Clone, Debug, Default)]
pub(crate) struct Config {
    pub entries: Vec<EntryConfig>,
    pub watches: Vec<WatchConfig>,
}

/// A validated entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EntryConfig {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub delay: Duration,
    pub count: usize,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: Restart,
    pub user: Option<String>,
    pub group: Option<String>,
    pub children: bool,
    pub rules: Vec<Rule>,
    /// The longest piece of an output line one log line holds.
    pub line_limit: usize,
}

/// A validated watch.
#[derive(Clone, Debug)]
pub(crate) struct WatchConfig {
    pub name: String,
    pub pattern: regex::Regex,
    pub children: bool,
    #[allow(dead_code)] // read by the watch scanner, which comes with watches
    pub every: Duration,
    pub rules: Vec<Rule>,
}

/// `when trigger holds, do action`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rule {
    pub trigger: Trigger,
    pub action: Action,
}

impl Config {
    /// Validates `specs`, collecting every problem before failing.
    pub fn from_specs(specs: &[Spec]) -> Result<Config, Error> {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        let mut config = Config::default();
        for spec in specs {
            let what = if spec.is_entry() { "entry" } else { "watch" };
            if !valid_name(&spec.name) {
                problems.push(format!("{what} name {:?} must be 1 to 64 characters from A-Z a-z 0-9 _ -", spec.name));
            } else if !seen.insert(spec.name.clone()) {
                problems.push(format!("name {:?} is used more than once", spec.name));
            }
            problems.extend(spec.problems.iter().cloned());
            let rules = validate_rules(spec, &mut problems);
            match &spec.kind {
                SpecKind::Entry(e) => {
                    validate_entry(&spec.name, e, &mut problems);
                    config.entries.push(EntryConfig {
                        name: spec.name.clone(),
                        command: e.command.clone(),
                        args: e.args.clone(),
                        delay: Duration::from_millis(e.delay_ms),
                        count: e.count,
                        env: e.env.clone(),
                        cwd: e.cwd.clone(),
                        stop_signal: e.stop_signal,
                        stop_timeout: e.stop_timeout,
                        restart: e.restart,
                        user: e.user.clone(),
                        group: e.group.clone(),
                        children: spec.children,
                        rules,
                        line_limit: e.line_limit,
                    });
                }
                SpecKind::Watch(w) => match regex::Regex::new(&w.pattern) {
                    Ok(pattern) => {
                        if w.every < Duration::from_millis(100) {
                            problems
                                .push(format!("watch {:?}: .every({:?}) is shorter than 100ms", spec.name, w.every));
                        }
                        config.watches.push(WatchConfig {
                            name: spec.name.clone(),
                            pattern,
                            children: spec.children,
                            every: w.every,
                            rules,
                        });
                    }
                    Err(e) => problems.push(format!(
                        "watch {:?}: invalid pattern {:?}: {}",
                        spec.name,
                        w.pattern,
                        first_line(&e.to_string())
                    )),
                },
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::InvalidConfig(problems))
        }
    }
}

impl EntryConfig {
    /// The configuration as data, to cross an exec.
    pub fn to_snapshot(&self) -> EntryConfigSnapshot {
        EntryConfigSnapshot {
            name: self.name.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            delay_ms: self.delay.as_millis() as u64,
            count: self.count,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            stop_signal: self.stop_signal as i32,
            stop_timeout_ms: self.stop_timeout.as_millis() as u64,
            restart: self.restart,
            user: self.user.clone(),
            group: self.group.clone(),
            children: self.children,
            rules: self.rules.iter().map(|r| (r.trigger.to_string(), r.action.to_string())).collect(),
            line_limit: self.line_limit,
        }
    }

    /// Back from data; `Err` if a rule no longer parses.
    pub fn from_snapshot(s: &EntryConfigSnapshot) -> Result<EntryConfig, String> {
        let rules = s
            .rules
            .iter()
            .map(|(t, a)| Ok(Rule { trigger: Trigger::parse(t)?, action: Action::parse(a)? }))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(EntryConfig {
            name: s.name.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            delay: Duration::from_millis(s.delay_ms),
            count: s.count,
            env: s.env.clone(),
            cwd: s.cwd.clone(),
            stop_signal: Signal::try_from(s.stop_signal).unwrap_or(Signal::SIGTERM),
            stop_timeout: Duration::from_millis(s.stop_timeout_ms),
            restart: s.restart,
            user: s.user.clone(),
            group: s.group.clone(),
            children: s.children,
            rules,
            line_limit: s.line_limit.clamp(MIN_LINE_LIMIT, MAX_LINE_LIMIT),
        })
    }

    /// Whether a change from `self` to `new` needs the processes restarted
    /// (what the process is made of changed; not delay, stop settings or rules).
    pub fn needs_restart_for(&self, new: &EntryConfig) -> bool {
        (&self.command, &self.args, &self.env, &self.cwd, &self.user, &self.group)
            != (&new.command, &new.args, &new.env, &new.cwd, &new.user, &new.group)
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn first_line(text: &str) -> String {
    // regex errors are multi-line drawings; the last line says what is wrong.
    text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(text).trim().to_string()
}

fn validate_entry(name: &str, e: &EntryFields, problems: &mut Vec<String>) {
    if e.command.trim().is_empty() {
        problems.push(format!("entry {name:?}: the command is empty"));
    }
    if e.command.contains('\0') || e.args.iter().any(|a| a.contains('\0')) {
        problems.push(format!("entry {name:?}: the command or an argument contains a NUL byte"));
    }
    if e.count > MAX_COUNT {
        problems.push(format!("entry {name:?}: count {} is above the maximum of {MAX_COUNT}", e.count));
    }
    for (key, value) in &e.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            problems.push(format!("entry {name:?}: invalid environment variable {key:?}"));
        }
    }
    if !(MIN_LINE_LIMIT..=MAX_LINE_LIMIT).contains(&e.line_limit) {
        problems.push(format!(
            "entry {name:?}: .line_limit({}) is outside {MIN_LINE_LIMIT}..={MAX_LINE_LIMIT} bytes",
            e.line_limit
        ));
    }
    for (what, value) in [("user", &e.user), ("group", &e.group)] {
        if let Some(v) = value {
            if v.is_empty() || v.contains('\0') {
                problems.push(format!("entry {name:?}: invalid {what} name {v:?}"));
            }
        }
    }
}

fn validate_rules(spec: &Spec, problems: &mut Vec<String>) -> Vec<Rule> {
    let mut rules = Vec::new();
    for rule in &spec.rules {
        match (&rule.trigger, &rule.action) {
            (Ok(trigger), Ok(action)) => {
                if action.is_entry_only() && !spec.is_entry() {
                    problems.push(format!(
                        "watch {:?}: action {:?} applies to entries only",
                        spec.name,
                        action.to_string()
                    ));
                }
                rules.push(Rule { trigger: trigger.clone(), action: action.clone() });
            }
            (trigger, action) => {
                for e in [trigger.as_ref().err(), action.as_ref().err()].into_iter().flatten() {
                    problems.push(format!("{:?}: {e}", spec.name));
                }
            }
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    fn problems(specs: Vec<Spec>) -> Vec<String> {
        match Config::from_specs(&specs) {
            Ok(_) => Vec::new(),
            Err(Error::InvalidConfig(p)) => p,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn the_sample_is_valid() {
        let config = Config::from_specs(&[entry("dummy", "sleep", ["4"], 1000, 1)]).unwrap();
        assert_eq!(config.entries[0].delay, Duration::from_millis(1000));
        assert_eq!(config.entries[0].args, vec!["4"]);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_text() {
        let p = problems(vec![
            entry("bad name", "sleep", ["1"], 0, 1),
            entry("dup", "", [], 0, MAX_COUNT + 1),
            watch("dup", "(unclosed").env("A", "b"),
            entry("rules", "true", [], 0, 1).on("rss > 1g", "term").on("rmem > 1g", "stop"),
            watch("w", "x").on("rmem > 1g", "restart"),
        ]);
        let all = p.join("\n");
        for needle in [
            "\"bad name\"",
            "\"dup\" is used more than once",
            "the command is empty",
            "above the maximum",
            "(unclosed",
            ".env() applies to entries only",
            "rss > 1g",
            "stop",
            "applies to entries only",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
        assert!(p.len() >= 8, "{p:#?}");
    }

    #[test]
    fn the_line_limit_is_checked_and_crosses_exec() {
        let p = problems(vec![
            entry("small", "sleep", ["1"], 0, 1).line_limit(100),
            entry("huge", "sleep", ["1"], 0, 1).line_limit(64 << 20),
            watch("w", "x").line_limit(4096),
        ]);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains(".line_limit(100) is outside"), "{p:?}");
        let config = Config::from_specs(&[entry("ok", "sleep", ["1"], 0, 1).line_limit(4096)]).unwrap();
        assert_eq!(config.entries[0].line_limit, 4096);
        assert_eq!(EntryConfig::from_snapshot(&config.entries[0].to_snapshot()).unwrap(), config.entries[0]);
        let default = Config::from_specs(&[entry("d", "sleep", ["1"], 0, 1)]).unwrap();
        assert_eq!(default.entries[0].line_limit, crate::LINE_LIMIT);
    }

    #[test]
    fn names_follow_the_rule() {
        assert!(valid_name("a-Z_0"));
        assert!(valid_name(&"x".repeat(64)));
        assert!(!valid_name(&"x".repeat(65)));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("é"));
    }
}
