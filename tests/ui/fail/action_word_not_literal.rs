use sentry_core::prelude::*;
fn main() {
    let _ = action!(exec notify-send "hi");
    let _ = action!(exec "logger" "ok"junk);
    let _ = action!(exec "x" @ 1h);
}
