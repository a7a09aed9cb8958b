//! The same configuration as `macros`, written with typed builders: plain
//! Rust, no macro and no string to parse; what the types cannot rule out
//! (an unknown `$VAR` in an exec word) `check` reports.
use sentry_core::prelude::*;

fn main() {
    sentry(vec![
        entry("db", "sleep", ["100000"], 1000, 1).ready(probe::exec("true", [])).stop_timeout(seconds(30)),
        entry("web", "sleep", ["100000"], 500, 2)
            .after(["db"])
            .on(rmem().gt(mib(900)), Action::Restart)
            .give_up(5, minutes(1)),
        watch("browser", r"xulrunner-bin .*conkeror")
            .children(true)
            .on(cpu().gt(90), Action::exec(["logger", &format!("{NAME} ({PID}) is busy")]).at_most_every(hours(1)))
            .on(treemem().gt(gib(4)), Action::stop(minutes(10))),
    ]);
}
