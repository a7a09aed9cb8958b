use sentry_core::prelude::*;
fn main() {
    let _ = action!(exec @ 1h "notify-send" "$NAME uses $FOO");
}
