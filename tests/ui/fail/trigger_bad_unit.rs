use sentry_core::prelude::*;
fn main() {
    let _ = trigger!(rmem > 5q);
}
fn more() {
    let _ = trigger!(vmem > 5v);
}
