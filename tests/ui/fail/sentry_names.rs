use sentry_core::prelude::*;
fn main() {
    sentry![
        entry("db", "sleep", ["1000"], 0, 1),
        entry("web", "sleep", ["1000"], 0, 1).after(["dbb"]),
        entry("db", "sleep", ["1000"], 0, 1),
        entry("bad name", "sleep", ["1000"], 0, 1),
        watch("w", "x"),
        entry("api", "sleep", ["1000"], 0, 1).binds_to(&["w"]),
    ];
}
