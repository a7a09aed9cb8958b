use sentry_core::prelude::*;
fn main() {
    let _ = trigger!(rmem > -5m);
    let _ = trigger!(rmem > 1.5g);
}
