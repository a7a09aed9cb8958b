use sentry_core::prelude::*;
fn main() {
    let _ = watch("w", pattern!(r"xulrunner-bin (.*conkeror"));
}
