//! `GET /metrics`: the state as Prometheus metrics, in the classic text
//! format (0.0.4) written by the `prometheus` crate's encoder, built afresh
//! from a [`Status`] at each scrape. Names follow Prometheus' conventions
//! (<https://prometheus.io/docs/practices/naming/>): a `sentry_` prefix,
//! base units (bytes, seconds), `_total` on counters; Sentry's own process
//! is described by the standard `process_*` family. Labels are bounded:
//! entry, watch and rule names, slot indexes, a fixed set of states and
//! causes — never a PID. This module reads the status and `/proc`; it knows
//! nothing of HTTP.

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::status::{SlotState, Status};
use crate::supervisor::CoreHandle;
use crate::Error;

/// The classic text exposition format (what `promtool check metrics` reads).
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics of the instance behind `core`, as text.
pub(crate) fn render(core: &CoreHandle) -> Result<String, Error> {
    let status = core.status()?;
    Ok(text(&status))
}

/// Every slot state, so that each entry reports each (0 included).
const SLOT_STATES: [(SlotState, &str); 7] = [
    (SlotState::Running, "running"),
    (SlotState::Pending, "pending"),
    (SlotState::Backoff, "backoff"),
    (SlotState::Stopping, "stopping"),
    (SlotState::Unkillable, "unkillable"),
    (SlotState::Failed, "failed"),
    (SlotState::Idle, "idle"),
];

/// The metrics of `status` and of this process, as text.
pub(crate) fn text(status: &Status) -> String {
    let registry = Registry::new();
    let m = Metrics::new(&registry);
    m.fill(status);
    own_process(&registry);
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

struct Metrics {
    build_info: IntGaugeVec,
    target: IntGaugeVec,
    running: IntGaugeVec,
    slots: IntGaugeVec,
    restarts: IntCounterVec,
    flapping: IntGaugeVec,
    ready: IntGaugeVec,
    entry_state: IntGaugeVec,
    last_exit_time: IntGaugeVec,
    last_exit_code: IntGaugeVec,
    last_exit_signal: IntGaugeVec,
    rss: IntGaugeVec,
    cpu: prometheus::CounterVec,
    started: IntGaugeVec,
    fired: IntCounterVec,
    skipped: IntCounterVec,
    matched: IntGaugeVec,
    reloads: IntCounterVec,
    last_reload_time: IntGauge,
    last_reload_duration: Gauge,
    last_reload_ok: IntGauge,
    reexecs: IntCounter,
    events_dropped: IntCounter,
    threads: IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    fn new(r: &Registry) -> Metrics {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone())).expect("metric names are unique");
            m
        }
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntGaugeVec::new(opts(name, help), labels).expect("valid metric"))
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntCounterVec::new(opts(name, help), labels).expect("valid metric"))
        };
        let entry = &["entry"];
        let slot = &["entry", "slot"];
        let rule = &["kind", "owner", "rule"];
        Metrics {
            build_info: gauges("sentry_build_info", "Sentry's version; always 1.", &["version"]),
            target: gauges("sentry_entry_processes_target", "Processes the entry should have (run-time count).", entry),
            running: gauges("sentry_entry_processes_running", "Processes of the entry running now.", entry),
            slots: gauges("sentry_entry_slots", "The entry's slots by state (backoff: waiting after a crash loop).", &[
                "entry", "state",
            ]),
            restarts: counters(
                "sentry_entry_restarts_total",
                "Restarts of the entry's processes, by cause: exit (it ended by itself) or requested (a restart, a rule, a reload).",
                &["entry", "cause"],
            ),
            flapping: gauges("sentry_entry_flapping", "1 when the entry had 5 or more failed exits within 60 s.", entry),
            ready: gauges(
                "sentry_process_ready",
                "1 when the slot's process passes its readiness probe (or runs, without one), else 0.",
                slot,
            ),
            entry_state: gauges(
                "sentry_entry_state",
                "1 for the entry's state (running, backoff, stopped, waiting for .after, failed after .give_up), 0 for the others.",
                &["entry", "state"],
            ),
            last_exit_time: gauges(
                "sentry_entry_last_exit_timestamp_seconds",
                "When the entry's latest exit happened (Unix time).",
                entry,
            ),
            last_exit_code: gauges(
                "sentry_entry_last_exit_code",
                "Exit status of the entry's latest exit; -1 when a signal ended it or it is unknown.",
                entry,
            ),
            last_exit_signal: gauges(
                "sentry_entry_last_exit_signal",
                "Number of the signal that ended the entry's latest exit; 0 when none did.",
                entry,
            ),
            rss: gauges(
                "sentry_process_resident_memory_bytes",
                "Resident memory of the slot's process, bytes.",
                slot,
            ),
            cpu: reg(
                r,
                prometheus::CounterVec::new(
                    opts("sentry_process_cpu_seconds_total", "CPU time of the slot's process (user and system), seconds."),
                    slot,
                )
                .expect("valid metric"),
            ),
            started: gauges(
                "sentry_process_start_time_seconds",
                "When the slot's process started (Unix time).",
                slot,
            ),
            fired: counters("sentry_rule_firings_total", "Times the rule's action ran.", rule),
            skipped: counters(
                "sentry_rule_skipped_firings_total",
                "Times the rule was due but its exec helper was not run (the helper caps).",
                rule,
            ),
            matched: gauges("sentry_watch_matched_processes", "Processes the watch matches now.", &["watch"]),
            reloads: counters(
                "sentry_reloads_total",
                "Reloads of this instance by outcome: ok (re-exec'd) or failed (build, check or exec).",
                &["outcome"],
            ),
            last_reload_time: reg(
                r,
                IntGauge::with_opts(opts(
                    "sentry_last_reload_timestamp_seconds",
                    "When the latest reload ended (Unix time); 0 before any.",
                ))
                .expect("valid metric"),
            ),
            last_reload_duration: reg(
                r,
                Gauge::with_opts(opts(
                    "sentry_last_reload_duration_seconds",
                    "How long the latest reload took, from its build's start to its outcome, seconds.",
                ))
                .expect("valid metric"),
            ),
            last_reload_ok: reg(
                r,
                IntGauge::with_opts(opts("sentry_last_reload_success", "1 when the latest reload worked, 0 when not."))
                    .expect("valid metric"),
            ),
            reexecs: reg(
                r,
                IntCounter::with_opts(opts("sentry_reexecs_total", "Times this instance re-exec'd itself in place."))
                    .expect("valid metric"),
            ),
            events_dropped: reg(
                r,
                IntCounter::with_opts(opts(
                    "sentry_events_dropped_total",
                    "Events not sent to syslog or the journal because their queue was full.",
                ))
                .expect("valid metric"),
            ),
            threads: reg(
                r,
                IntGauge::with_opts(opts("sentry_threads", "Threads of Sentry's own process.")).expect("valid metric"),
            ),
        }
    }

    fn fill(&self, status: &Status) {
        self.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for e in &status.entries {
            let name = e.name.as_str();
            self.target.with_label_values(&[name]).set(e.count as i64);
            self.running.with_label_values(&[name]).set(e.processes.len() as i64);
            for (state, label) in SLOT_STATES {
                let n = e.slots.iter().filter(|s| s.state == state).count();
                self.slots.with_label_values(&[name, label]).set(n as i64);
            }
            let requested = e.restarts_requested.min(e.restarts);
            self.restarts.with_label_values(&[name, "exit"]).inc_by(e.restarts - requested);
            self.restarts.with_label_values(&[name, "requested"]).inc_by(requested);
            self.flapping.with_label_values(&[name]).set(i64::from(e.flapping));
            for state in ["running", "backoff", "stopped", "waiting", "failed"] {
                self.entry_state.with_label_values(&[name, state]).set(i64::from(e.state.as_str() == state));
            }
            for s in &e.slots {
                let ready = s.ready.unwrap_or(s.state == SlotState::Running);
                self.ready.with_label_values(&[name, &s.index.to_string()]).set(i64::from(ready));
            }
            if let Some(last) = e.last_exits.iter().max_by_key(|x| x.at) {
                self.last_exit_time.with_label_values(&[name]).set(last.at as i64);
                self.last_exit_code.with_label_values(&[name]).set(last.code.map_or(-1, i64::from));
                self.last_exit_signal.with_label_values(&[name]).set(last.signal.map_or(0, i64::from));
            }
            for p in &e.processes {
                let index = p.index.to_string();
                let labels = [name, index.as_str()];
                if let Some(rss) = p.rss_bytes {
                    self.rss.with_label_values(&labels).set(rss as i64);
                }
                self.started.with_label_values(&labels).set(p.started_at as i64);
                if let Some(stat) = crate::proc::stat(p.pid as i32) {
                    let ticks = crate::proc::ticks_per_second() as f64;
                    self.cpu.with_label_values(&labels).inc_by((stat.utime + stat.stime) as f64 / ticks);
                }
            }
            for r in &e.rules {
                let rule = format!("{} -> {}", r.trigger, r.action);
                self.fired.with_label_values(&["entry", name, &rule]).inc_by(r.fired);
                self.skipped.with_label_values(&["entry", name, &rule]).inc_by(r.skipped);
            }
        }
        for w in &status.watches {
            self.matched.with_label_values(&[&w.name]).set(w.matched.len() as i64);
            for r in &w.rules {
                let rule = format!("{} -> {}", r.trigger, r.action);
                self.fired.with_label_values(&["watch", &w.name, &rule]).inc_by(r.fired);
                self.skipped.with_label_values(&["watch", &w.name, &rule]).inc_by(r.skipped);
            }
        }
        self.reloads.with_label_values(&["ok"]).inc_by(status.reexec_count);
        self.reloads.with_label_values(&["failed"]).inc_by(status.reloads_failed);
        if let Some(last) = &status.last_reload {
            self.last_reload_time.set(last.at as i64);
            self.last_reload_ok.set(i64::from(last.ok));
            if let Some(ms) = last.duration_ms {
                self.last_reload_duration.set(ms as f64 / 1000.0);
            }
        }
        self.reexecs.inc_by(status.reexec_count);
        self.events_dropped.inc_by(crate::events::dropped());
        self.threads.set(crate::proc::threads_of_self().unwrap_or(0) as i64);
    }
}

/// The standard `process_*` family of Sentry's own process (what the
/// official clients export: CPU, memory, fds, start time).
fn own_process(r: &Registry) {
    let me = std::process::id() as i32;
    let add_gauge = |name: &str, help: &str, value: f64| {
        let g = Gauge::with_opts(opts(name, help)).expect("valid metric");
        g.set(value);
        let _ = r.register(Box::new(g));
    };
    if let Some(stat) = crate::proc::stat(me) {
        let ticks = crate::proc::ticks_per_second() as f64;
        let cpu = prometheus::Counter::with_opts(opts(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("valid metric");
        cpu.inc_by((stat.utime + stat.stime) as f64 / ticks);
        let _ = r.register(Box::new(cpu));
        if let Some(boot) = crate::proc::boot_time() {
            add_gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + stat.starttime as f64 / ticks,
            );
        }
        add_gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", stat.vsize as f64);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
        add_gauge("process_resident_memory_bytes", "Resident memory size in bytes.", stat.rss_pages as f64 * page);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        add_gauge("process_open_fds", "Number of open file descriptors.", fds.count() as f64);
    }
    add_gauge("process_max_fds", "Maximum number of open file descriptors.", crate::budget::nofile().0 as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_by_convention_and_counters_end_in_total() {
        let status: Status = serde_json::from_value(serde_json::json!({
            "pid": 1, "started_at": 1, "reexec_count": 2, "reexeced_at": 3,
            "last_reload": {"at": 5, "ok": false, "error": "x", "id": 3, "duration_ms": 1500},
            "reloads_failed": 1,
            "entries": [{"name": "web", "command": "c", "args": [], "delay_ms": 0, "count": 2,
                         "configured_count": 1, "restarts": 5, "restarts_requested": 2, "state": "running",
                         "processes": [], "last_exits": [{"index": 0, "at": 9, "code": null, "signal": 9}],
                         "slots": [], "rules": [{"trigger": "rmem > 1g", "action": "restart", "fired": 4, "skipped": 0}]}],
            "watches": [{"name": "w", "pattern": "x", "children": false, "matched": [], "rules": []}]
        }))
        .unwrap();
        let text = text(&status);
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split(' ').skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert!(name.starts_with("sentry_") || name.starts_with("process_"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
        for want in [
            "sentry_entry_restarts_total{cause=\"exit\",entry=\"web\"} 3",
            "sentry_entry_restarts_total{cause=\"requested\",entry=\"web\"} 2",
            "sentry_entry_last_exit_signal{entry=\"web\"} 9",
            "sentry_entry_last_exit_code{entry=\"web\"} -1",
            "sentry_reloads_total{outcome=\"failed\"} 1",
            "sentry_last_reload_duration_seconds 1.5",
            "sentry_rule_firings_total{kind=\"entry\",owner=\"web\",rule=\"rmem > 1g -> restart\"} 4",
            "sentry_entry_slots{entry=\"web\",state=\"backoff\"} 0",
            "sentry_watch_matched_processes{watch=\"w\"} 0",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
