use sentry_core::prelude::*;
fn main() {
    sentry![
        entry("a", "sleep", ["1"], 0, 1).after(["b"]),
        entry("b", "sleep", ["1"], 0, 1).after(vec!["a"]),
    ];
}
