use sentry_core::prelude::*;
fn main() {
    let _ = action!(stop @ 1y);
}
