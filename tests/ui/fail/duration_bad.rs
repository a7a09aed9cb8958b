use sentry_core::prelude::*;
fn main() {
    let _ = duration!(1y);
}
