//! The macros as a user's crate sees them (`trybuild`): the passing forms
//! compile and mean what their strings mean; each mistake is a compile
//! error with the message in `ui/fail/NAME.stderr`, pointed at its token.

#[test]
fn macros_compile_or_fail_with_their_messages() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
