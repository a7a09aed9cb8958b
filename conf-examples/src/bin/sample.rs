//! The seed's example configuration: one `sleep 4`, restarted 1 s after it exits.
use sentry_core::prelude::*;

fn main() {
    sentry(vec![entry("dummy", "sleep", ["4"], 1000, 1)]);
}
