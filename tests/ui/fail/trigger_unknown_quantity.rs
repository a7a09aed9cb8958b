use sentry_core::prelude::*;
fn main() {
    let _ = trigger!(rss > 1g);
}
