use sentry_core::prelude::*;
fn main() {
    let _ = action!(fire @ 10m);
}
