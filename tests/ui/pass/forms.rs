// The three spellings of a rule — macros, strings, typed builders — mean the same.
use sentry_core::prelude::*;
use sentry_core::rule::Trigger;

fn main() {
    let table = [
        (trigger!(rmem > 500m), "rmem > 500m", rmem().gt(mib(500))),
        (trigger!(900m < vmem), "900m < vmem", vmem().gt(mib(900))),
        (trigger!(cpu > 90%), "cpu > 90%", cpu().gt(90)),
        (trigger!(treemem >= 2g), "treemem >= 2g", treemem().ge(gib(2))),
    ];
    for (macro_form, text, typed) in table {
        assert_eq!(macro_form, Trigger::parse(text).unwrap(), "{text}");
        assert_eq!(typed, macro_form, "{text}");
    }
    let actions = [
        (action!(term), "term", Action::Term),
        (action!(kill), "kill", Action::Kill),
        (action!(restart), "restart", Action::Restart),
        (action!(stop @ 10m), "stop @ 10m", Action::stop(minutes(10))),
        (
            action!(exec @ 1h "notify-send" "$NAME ($PID) is big"),
            r#"exec @ 1h notify-send "$NAME ($PID) is big""#,
            Action::exec(["notify-send", "$NAME ($PID) is big"]).at_most_every(hours(1)).build().unwrap(),
        ),
        (
            action!(exec "logger" "a \"quoted\" word" r"back\slash"),
            r#"exec logger "a \"quoted\" word" 'back\slash'"#,
            Action::exec(["logger", "a \"quoted\" word", "back\\slash"]).build().unwrap(),
        ),
        (action!(exec "echo" "$$5"), "exec echo '$5'", Action::exec(["echo", "$$5"]).build().unwrap()),
        (
            action!(exec "grep" r"a\.b" "${NAME}x"),
            r"exec grep 'a\.b' ${NAME}x",
            Action::exec(["grep", "a\\.b", "${NAME}x"]).build().unwrap(),
        ),
    ];
    for (macro_form, text, typed) in actions {
        assert_eq!(macro_form, Action::parse(text).unwrap(), "{text}");
        assert_eq!(typed, macro_form, "{text}");
    }
    assert_eq!(duration!(10m), Duration::from_secs(600));
    assert_eq!(duration!(2d), days(2));
    // Both forms of a watch compile and carry the same rule.
    let a = watch("w", pattern!(r"xulrunner-bin .*conkeror")).on(trigger!(rmem > 1g), action!(term));
    let b = watch("w", r"xulrunner-bin .*conkeror").on("rmem > 1g", "term");
    let c = watch("w", "xulrunner-bin .*conkeror").on(rmem().gt(gib(1)), Action::Term);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(format!("{a:?}"), format!("{c:?}"));
}

// The macro form of `sentry(vec![…])` compiles with names that are right
// (not run: it would start the command line).
#[allow(dead_code)]
fn configuration() {
    sentry![
        entry("db", "sleep", ["1000"], 0, 1),
        entry("web", "sleep", ["1000"], 0, 2).after(["db"]),
        entry("worker", "sleep", ["1000"], 0, 1).binds_to(vec!["web"]).after(&["db"]),
        watch("firefox", pattern!("firefox")).on(trigger!(rmem > 4g), action!(term)),
        // One of the two is compiled: not a duplicate.
        #[cfg(debug_assertions)]
        entry("mode", "sleep", ["1"], 0, 1),
        #[cfg(not(debug_assertions))]
        entry("mode", "sleep", ["2"], 0, 1),
    ];
}
