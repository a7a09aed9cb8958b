use sentry_core::prelude::*;
fn main() {
    let _ = duration!(8d);
    let _ = action!(stop @ 30d);
}
