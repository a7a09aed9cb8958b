use sentry_core::prelude::*;
fn main() {
    sentry![
        entry("x", "sleep", ["1"], 0, 1).after(["a"]),
        entry("a", "sleep", ["1"], 0, 1).after(["b"]),
        entry("b", "sleep", ["1"], 0, 1).binds_to(vec!["a"]),
    ];
}
