//! The same configuration as `typed`, written with the macros: every name,
//! trigger, action, regex and duration is checked by the compiler, and a
//! mistake is an error pointed at its token (`trigger!(rss > 1g)`:
//! unknown quantity "rss").
use sentry_core::prelude::*;

fn main() {
    sentry![
        entry("db", "sleep", ["100000"], 1000, 1).ready(probe::exec("true", [])).stop_timeout(duration!(30s)),
        entry("web", "sleep", ["100000"], 500, 2)
            .after(["db"])
            .on(trigger!(rmem > 900m), action!(restart))
            .give_up(5, duration!(1m)),
        watch("browser", pattern!(r"xulrunner-bin .*conkeror"))
            .children(true)
            .on(trigger!(cpu > 90%), action!(exec @ 1h "logger" "$NAME ($PID) is busy"))
            .on(trigger!(treemem > 4g), action!(stop @ 10m)),
    ];
}
