use sentry_core::prelude::*;
fn main() {
    let _ = trigger!(rmem >);
}
