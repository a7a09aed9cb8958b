//! The trigger and action languages of Sentry's rules. This crate parses and displays
//! triggers (`rmem > 900m`, `cpu >= 90%`) and actions (`term`, `kill`,
//! `stop @ 10m`, `restart`, `exec [@ 1h] PROGRAM ARGS…`), evaluates a trigger
//! against a measured figure, and expands the words of an `exec` action into an
//! argument vector. It knows nothing about processes, `/proc`, signals or the
//! supervisor: callers measure the figures and carry out the actions.
//!
//! Expanding an `exec` action never involves a shell and never re-splits a
//! substituted value: whatever `$CMDLINE` of a (possibly hostile) watched
//! process contains stays inside the one argument it was written in.

use std::fmt;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Quantities and comparisons
// ---------------------------------------------------------------------------

/// A measured figure of a process that a [`Trigger`] compares with a threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    /// `rmem`: resident memory, in bytes.
    Rmem,
    /// `vmem`: virtual memory, in bytes.
    Vmem,
    /// `cpu`: CPU usage in percent of one core (above 100 on several cores).
    Cpu,
    /// `treemem`: the memory of a whole process tree, in bytes — for an
    /// entry's process its slot's cgroup memory where the memory controller
    /// exists, else the summed PSS of its processes; for a watch's process
    /// the summed PSS of it and its descendants. Measured only for targets
    /// that have a `treemem` rule (PSS reads are costly).
    Treemem,
}

impl Quantity {
    /// The keyword that names the quantity in a trigger.
    fn keyword(self) -> &'static str {
        match self {
            Quantity::Rmem => "rmem",
            Quantity::Vmem => "vmem",
            Quantity::Cpu => "cpu",
            Quantity::Treemem => "treemem",
        }
    }

    fn from_keyword(word: &str) -> Option<Quantity> {
        match word {
            "rmem" => Some(Quantity::Rmem),
            "vmem" => Some(Quantity::Vmem),
            "cpu" => Some(Quantity::Cpu),
            "treemem" => Some(Quantity::Treemem),
            _ => None,
        }
    }
}

/// How a measured figure is compared with a trigger's threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// `>`
    Greater,
    /// `>=`
    GreaterOrEqual,
    /// `<`
    Less,
    /// `<=`
    LessOrEqual,
}

impl Comparison {
    fn symbol(self) -> &'static str {
        match self {
            Comparison::Greater => ">",
            Comparison::GreaterOrEqual => ">=",
            Comparison::Less => "<",
            Comparison::LessOrEqual => "<=",
        }
    }

    fn from_symbol(symbol: &str) -> Option<Comparison> {
        match symbol {
            ">" => Some(Comparison::Greater),
            ">=" => Some(Comparison::GreaterOrEqual),
            "<" => Some(Comparison::Less),
            "<=" => Some(Comparison::LessOrEqual),
            _ => None,
        }
    }

    /// The comparison with its operands swapped: `a < b` is `b > a`.
    fn flipped(self) -> Comparison {
        match self {
            Comparison::Greater => Comparison::Less,
            Comparison::GreaterOrEqual => Comparison::LessOrEqual,
            Comparison::Less => Comparison::Greater,
            Comparison::LessOrEqual => Comparison::GreaterOrEqual,
        }
    }

    fn compare(self, left: u64, right: u64) -> bool {
        match self {
            Comparison::Greater => left > right,
            Comparison::GreaterOrEqual => left >= right,
            Comparison::Less => left < right,
            Comparison::LessOrEqual => left <= right,
        }
    }
}

// ---------------------------------------------------------------------------
// Triggers
// ---------------------------------------------------------------------------

/// The largest cpu threshold accepted, in percent (a thousand busy cores).
pub const MAX_CPU_PERCENT: u64 = 100_000;

/// A condition on one measured figure of a process, such as `rmem > 900m`.
///
/// The threshold is in bytes for `rmem`, `vmem` and `treemem` and in percent of one core
/// for `cpu`. Parsing normalises the `VALUE OP QUANTITY` form, so a trigger
/// always reads "measured `comparison` threshold":
///
/// ```text
/// "900m < vmem"  parses to  Trigger { quantity: Vmem, comparison: Greater, threshold: 943718400 }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// The figure being measured.
    pub quantity: Quantity,
    /// How the measured figure is compared with the threshold.
    pub comparison: Comparison,
    /// Bytes for `rmem`/`vmem`/`treemem`, percent for `cpu`.
    pub threshold: u64,
}

impl Trigger {
    /// Parses `QUANTITY OP VALUE` or `VALUE OP QUANTITY`, where OP is one of
    /// `> >= < <=`, byte values take an optional unit `k m g` (powers of 1024,
    /// either case) and cpu values end with `%`. Whitespace is optional.
    ///
    /// ```text
    /// rmem > 1g      900m < vmem      rmem>=512K      cpu > 90%      treemem > 2g
    /// ```
    ///
    /// # Errors
    ///
    /// A sentence for a user that quotes the whole text, e.g.
    /// `invalid trigger "rss > 1g": unknown quantity "rss" (expected rmem, vmem, cpu or treemem)`.
    pub fn parse(text: &str) -> Result<Trigger, String> {
        parse_trigger(text).map_err(|detail| format!("invalid trigger {text:?}: {detail}"))
    }

    /// Whether the trigger holds for `measured` (bytes or percent, like the
    /// threshold): `measured comparison threshold`.
    ///
    /// ```text
    /// rmem > 1k:  holds(1024) == false, holds(1025) == true
    /// 1k > rmem:  holds(1023) == true,  holds(1024) == false
    /// ```
    #[must_use]
    pub fn holds(&self, measured: u64) -> bool {
        self.comparison.compare(measured, self.threshold)
    }
}

/// Shows the canonical `QUANTITY OP VALUE` form, with the largest exact unit:
/// `rmem > 900m`, `vmem <= 1000`, `cpu >= 90%`. It parses back to an equal trigger.
impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = match self.quantity {
            Quantity::Cpu => format!("{}%", self.threshold),
            Quantity::Rmem | Quantity::Vmem | Quantity::Treemem => format_bytes(self.threshold),
        };
        write!(f, "{} {} {}", self.quantity.keyword(), self.comparison.symbol(), value)
    }
}

/// A lexical token of a trigger.
#[derive(Clone, Copy)]
enum TriggerToken<'a> {
    /// A run of `< > = !` characters.
    Operator(&'a str),
    /// A run of any other non-whitespace characters.
    Word(&'a str),
}

impl<'a> TriggerToken<'a> {
    fn text(self) -> &'a str {
        match self {
            TriggerToken::Operator(text) | TriggerToken::Word(text) => text,
        }
    }
}

/// One side of a comparison, before the value is interpreted.
enum Operand<'a> {
    Quantity(Quantity),
    Value(&'a str),
}

/// Parses a trigger; the error is the detail, without the quoted text.
fn parse_trigger(text: &str) -> Result<Trigger, String> {
    let tokens = lex_trigger(text);
    if tokens.is_empty() {
        return Err("empty trigger (expected e.g. rmem > 900m)".to_string());
    }
    let operator_at = find_operator(&tokens)?;
    let symbol = tokens[operator_at].text();
    let comparison = Comparison::from_symbol(symbol)
        .ok_or_else(|| format!("unknown comparison operator {symbol:?} (expected >, >=, < or <=)"))?;
    let left = side_operand(&tokens[..operator_at])?;
    let right = side_operand(&tokens[operator_at + 1..])?;
    let (quantity, comparison, value) = match (left, right) {
        (Some(Operand::Quantity(quantity)), Some(Operand::Value(value))) => (quantity, comparison, value),
        (Some(Operand::Value(value)), Some(Operand::Quantity(quantity))) => (quantity, comparison.flipped(), value),
        (left, right) => return Err(misplaced_operands(left, right, symbol)),
    };
    let threshold = match quantity {
        Quantity::Cpu => parse_percent(value)?,
        Quantity::Rmem | Quantity::Vmem | Quantity::Treemem => parse_bytes(value)?,
    };
    Ok(Trigger { quantity, comparison, threshold })
}

fn is_operator_char(c: char) -> bool {
    matches!(c, '<' | '>' | '=' | '!')
}

/// Splits a trigger into operator runs and words, dropping whitespace.
fn lex_trigger(text: &str) -> Vec<TriggerToken<'_>> {
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while let Some(first) = rest.chars().next() {
        let operator = is_operator_char(first);
        let end = rest.find(|c: char| c.is_whitespace() || is_operator_char(c) != operator).unwrap_or(rest.len());
        let (token, tail) = rest.split_at(end);
        tokens.push(if operator { TriggerToken::Operator(token) } else { TriggerToken::Word(token) });
        rest = tail.trim_start();
    }
    tokens
}

/// The index of the one operator token.
fn find_operator(tokens: &[TriggerToken<'_>]) -> Result<usize, String> {
    let mut operators = tokens
        .iter()
        .enumerate()
        .filter(|(_, token)| matches!(token, TriggerToken::Operator(_)))
        .map(|(index, _)| index);
    match (operators.next(), operators.next()) {
        (Some(index), None) => Ok(index),
        (None, _) => Err("missing comparison operator (expected >, >=, < or <=)".to_string()),
        (Some(_), Some(_)) => Err("more than one comparison operator".to_string()),
    }
}

/// The operand on one side of the operator: none, or exactly one word.
fn side_operand<'a>(tokens: &[TriggerToken<'a>]) -> Result<Option<Operand<'a>>, String> {
    match tokens {
        [] => Ok(None),
        [only] => classify_operand(only.text()).map(Some),
        [first, extra, ..] => Err(format!("unexpected {:?} after {:?}", extra.text(), first.text())),
    }
}

/// A word starting with a letter must be a quantity; anything else is a value.
fn classify_operand(word: &str) -> Result<Operand<'_>, String> {
    if !word.starts_with(|c: char| c.is_alphabetic()) {
        return Ok(Operand::Value(word));
    }
    Quantity::from_keyword(word)
        .map(Operand::Quantity)
        .ok_or_else(|| format!("unknown quantity {word:?} (expected rmem, vmem, cpu or treemem)"))
}

/// The error for operands that are not one quantity and one value.
fn misplaced_operands(left: Option<Operand<'_>>, right: Option<Operand<'_>>, symbol: &str) -> String {
    match (left, right) {
        (Some(Operand::Quantity(_)), Some(Operand::Quantity(_))) => {
            "two quantities (one side must be a value, e.g. rmem > 900m)".to_string()
        }
        (Some(Operand::Value(_)), Some(Operand::Value(_))) => {
            "two values (one side must be rmem, vmem, cpu or treemem)".to_string()
        }
        (Some(Operand::Quantity(_)), None) => format!("missing value after {symbol:?}"),
        (None, Some(Operand::Quantity(_))) => format!("missing value before {symbol:?}"),
        (None, None) => "missing quantity and value".to_string(),
        _ => "missing quantity (expected rmem, vmem, cpu or treemem)".to_string(),
    }
}

/// Splits a leading non-negative decimal integer from its suffix.
fn split_number(value: &str) -> Result<(u64, &str), String> {
    let digits_end = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (digits, suffix) = value.split_at(digits_end);
    if digits.is_empty() {
        return Err(if value.starts_with('-') {
            format!("negative numbers are not allowed ({value:?})")
        } else {
            format!("invalid value {value:?} (expected a whole number)")
        });
    }
    if suffix.starts_with(['.', ',']) {
        return Err(format!("fractional numbers are not allowed ({value:?})"));
    }
    let number = digits.parse::<u64>().map_err(|_| format!("value {value:?} is too large"))?;
    Ok((number, suffix))
}

/// Parses a byte count with an optional binary unit: `2097152`, `512K`, `1g`.
fn parse_bytes(value: &str) -> Result<u64, String> {
    let (number, unit) = split_number(value)?;
    let multiplier: u64 = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ if unit.contains('%') => {
            return Err(format!("a percent sign is only valid for cpu, not for memory ({value:?})"))
        }
        _ => return Err(format!("unknown unit {unit:?} in {value:?} (expected k, m or g)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("value {value:?} is too large"))
}

/// Parses a cpu percentage: `90%`, `250%`.
fn parse_percent(value: &str) -> Result<u64, String> {
    let (number, suffix) = split_number(value)?;
    match suffix {
        "%" => {}
        "" => return Err(format!("cpu values need a percent sign, e.g. cpu > {number}%")),
        _ => return Err(format!("invalid cpu value {value:?} (expected a percentage such as 90%)")),
    }
    if number > MAX_CPU_PERCENT {
        return Err(format!("cpu value {value:?} is too large (at most {MAX_CPU_PERCENT}%)"));
    }
    Ok(number)
}

/// Writes a byte count with the largest unit that divides it exactly.
fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)];
    match UNITS.iter().find(|(_, size)| bytes != 0 && bytes.is_multiple_of(*size)) {
        Some((unit, size)) => format!("{}{unit}", bytes / size),
        None => bytes.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// The longest duration accepted: a week — the longest rate limit, stop
/// timeout, restart delay or interval a configuration may give, so that no
/// deadline computed from one can overflow.
const MAX_DURATION_SECS: u64 = 7 * 86_400;

/// [`MAX_DURATION_SECS`] as a duration (7 days).
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_DURATION_SECS);

/// Parses a rate-limit duration: a positive integer immediately followed by one
/// unit `s`, `m`, `h` or `d` (seconds, minutes, hours, days), at most 7d.
///
/// ```text
/// 30s   10m   1h   2d
/// ```
///
/// # Errors
///
/// A sentence for a user that quotes the text, e.g.
/// `invalid duration "10": missing unit (expected s, m, h or d), e.g. 10m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    duration_seconds(text.trim())
        .map(Duration::from_secs)
        .map_err(|detail| format!("invalid duration {text:?}: {detail}"))
}

fn duration_seconds(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected a positive whole number and a unit s, m, h or d, e.g. 10m";
    if text.is_empty() {
        return Err(format!("empty ({EXPECTED})"));
    }
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(EXPECTED.to_string());
    }
    let unit_seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "" => return Err("missing unit (expected s, m, h or d), e.g. 10m".to_string()),
        _ if unit.starts_with(['.', ',']) => return Err("fractional numbers are not allowed".to_string()),
        _ if unit.starts_with(char::is_whitespace) => {
            return Err("the unit must follow the number immediately, e.g. 10m".to_string())
        }
        _ => return Err(format!("unknown unit {unit:?} (expected s, m, h or d)")),
    };
    let too_long = || "too long (at most 7d, a week)".to_string();
    let number = digits.parse::<u64>().map_err(|_| too_long())?;
    if number == 0 {
        return Err("must be positive (at least 1s)".to_string());
    }
    match number.checked_mul(unit_seconds) {
        Some(seconds) if seconds <= MAX_DURATION_SECS => Ok(seconds),
        _ => Err(too_long()),
    }
}

/// Writes a duration with the largest unit that divides it exactly. Durations
/// are written in whole seconds: a sub-second part cannot be expressed.
fn format_duration(duration: Duration) -> String {
    const UNITS: [(&str, u64); 3] = [("d", 86_400), ("h", 3_600), ("m", 60)];
    let seconds = duration.as_secs();
    match UNITS.iter().find(|(_, size)| seconds != 0 && seconds.is_multiple_of(*size)) {
        Some((unit, size)) => format!("{}{unit}", seconds / size),
        None => format!("{seconds}s"),
    }
}

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

/// What a rule does while (or when) its trigger holds.
///
/// ```text
/// term   kill   stop @ 10m   restart   exec [@ 1h] PROGRAM ARGS…
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `term`: send SIGTERM.
    Term,
    /// `kill`: send SIGKILL.
    Kill,
    /// `stop @ DURATION`: the stop action, carried out at most once per `every`.
    Stop {
        /// The rate limit.
        every: Duration,
    },
    /// `restart`: the restart action (entry-only, see [`Action::is_entry_only`]).
    Restart,
    /// `exec [@ DURATION] PROGRAM ARGS…`: run a program (never through a shell).
    Exec {
        /// The optional rate limit.
        every: Option<Duration>,
        /// The program and its arguments; never empty once parsed.
        words: Vec<Word>,
    },
}

/// How an action's text failed to parse, before the whole text is quoted.
enum ActionError {
    Invalid(String),
    /// An unknown `$VAR` or `${VAR}`, as written.
    UnknownVariable(String),
}

impl From<String> for ActionError {
    fn from(detail: String) -> ActionError {
        ActionError::Invalid(detail)
    }
}

impl From<&str> for ActionError {
    fn from(detail: &str) -> ActionError {
        ActionError::Invalid(detail.to_string())
    }
}

/// The verbs of the action language.
#[derive(Clone, Copy)]
enum Verb {
    Term,
    Kill,
    Stop,
    Restart,
    Exec,
}

impl Verb {
    fn from_word(word: &str) -> Option<Verb> {
        match word {
            "term" => Some(Verb::Term),
            "kill" => Some(Verb::Kill),
            "stop" => Some(Verb::Stop),
            "restart" => Some(Verb::Restart),
            "exec" => Some(Verb::Exec),
            _ => None,
        }
    }
}

const KNOWN_VARIABLES: &str = "$NAME, $PID, $RMEM, $VMEM, $CMDLINE";

impl Action {
    /// Parses `term`, `kill`, `stop @ DURATION`, `restart` or
    /// `exec [@ DURATION] PROGRAM ARGS…`. Only `stop` (mandatory) and `exec`
    /// (optional) take a rate limit; whitespace around `@` is optional.
    ///
    /// The words of `exec` are split with shell-like quoting (`'…'` literal,
    /// `"…"` grouping with `\"`, `\\`, `\$` escapes and variables, `\x` outside
    /// quotes) and may contain `$NAME`, `$PID`, `$RMEM`, `$VMEM`, `$CMDLINE` or
    /// their braced forms `${NAME}` etc.
    ///
    /// ```text
    /// stop @ 10m
    /// exec @ 1h logger "$NAME ($PID) is using too much ram"
    /// ```
    ///
    /// # Errors
    ///
    /// A sentence for a user that quotes the whole text, e.g.
    /// `invalid action "stop": stop needs a rate limit, e.g. stop @ 10m`, or
    /// `unknown variable $FOO in exec action "exec echo $FOO" (known: $NAME, …)`.
    pub fn parse(text: &str) -> Result<Action, String> {
        parse_action(text).map_err(|error| match error {
            ActionError::Invalid(detail) => format!("invalid action {text:?}: {detail}"),
            ActionError::UnknownVariable(variable) => {
                format!("unknown variable {variable} in exec action {text:?} (known: {KNOWN_VARIABLES})")
            }
        })
    }

    /// The rate limit: mandatory for `stop`, optional for `exec`, else `None`.
    #[must_use]
    pub fn every(&self) -> Option<Duration> {
        match self {
            Action::Stop { every } => Some(*every),
            Action::Exec { every, .. } => *every,
            Action::Term | Action::Kill | Action::Restart => None,
        }
    }

    /// Whether the action is entry-only: true for `restart` and for no other
    /// action. What entry-only implies is the supervisor's business; this
    /// module only classifies.
    #[must_use]
    pub fn is_entry_only(&self) -> bool {
        matches!(self, Action::Restart)
    }

    /// For `exec`, the argument vector with variables substituted (the program
    /// first); `None` for every other action. Each word expands to exactly one
    /// argument whatever the substituted values contain.
    ///
    /// ```text
    /// exec logger "$NAME: $CMDLINE"   with name "web", cmdline "a; rm -rf /"
    ///   → Some(["logger", "web: a; rm -rf /"])
    /// ```
    #[must_use]
    pub fn argv(&self, vars: &ExecVars) -> Option<Vec<String>> {
        match self {
            Action::Exec { words, .. } => Some(words.iter().map(|word| word.expand(vars)).collect()),
            Action::Term | Action::Kill | Action::Stop { .. } | Action::Restart => None,
        }
    }
}

/// Shows the canonical text of the action, which parses back to an equal
/// action: `stop @ 10m`, `exec @ 1h logger "$NAME ($PID) is using too much ram"`.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Term => f.write_str("term"),
            Action::Kill => f.write_str("kill"),
            Action::Restart => f.write_str("restart"),
            Action::Stop { every } => write!(f, "stop @ {}", format_duration(*every)),
            Action::Exec { every, words } => {
                f.write_str("exec")?;
                if let Some(every) = every {
                    write!(f, " @ {}", format_duration(*every))?;
                }
                words.iter().try_for_each(|word| write!(f, " {word}"))
            }
        }
    }
}

/// Parses an action; the error is the detail, without the quoted text.
fn parse_action(text: &str) -> Result<Action, ActionError> {
    let text = text.trim_start();
    if text.trim_end().is_empty() {
        return Err("empty action (expected term, kill, stop @ DURATION, restart or exec)".into());
    }
    let verb_end = text.find(|c: char| c.is_whitespace() || c == '@').unwrap_or(text.len());
    let (word, rest) = text.split_at(verb_end);
    let verb = Verb::from_word(word).ok_or_else(|| {
        format!(
            "unknown action {word:?} (expected term, kill, stop @ DURATION, restart \
             or exec [@ DURATION] PROGRAM ARGS…)"
        )
    })?;
    match verb {
        Verb::Term => plain_action(Action::Term, word, rest),
        Verb::Kill => plain_action(Action::Kill, word, rest),
        Verb::Restart => plain_action(Action::Restart, word, rest),
        Verb::Stop => parse_stop(rest),
        Verb::Exec => parse_exec(rest),
    }
}

/// An action without arguments or rate limit: nothing may follow the verb.
fn plain_action(action: Action, verb: &str, rest: &str) -> Result<Action, ActionError> {
    let rest = rest.trim();
    if rest.starts_with('@') {
        return Err(format!("{verb} does not take a rate limit (only stop and exec do)").into());
    }
    if !rest.is_empty() {
        return Err(format!("unexpected {rest:?} after {verb}").into());
    }
    Ok(action)
}

fn parse_stop(rest: &str) -> Result<Action, ActionError> {
    let (every, rest) = split_rate_limit(rest)?;
    let every = every.ok_or("stop needs a rate limit, e.g. stop @ 10m")?;
    let rest = rest.trim();
    if !rest.is_empty() {
        return Err(format!("unexpected {rest:?} after the rate limit").into());
    }
    Ok(Action::Stop { every })
}

fn parse_exec(rest: &str) -> Result<Action, ActionError> {
    let (every, rest) = split_rate_limit(rest)?;
    let words = split_words(rest)?;
    match words.first() {
        None => Err("exec needs a program to run, e.g. exec logger \"$NAME is too big\"".into()),
        Some(program) if program.0.is_empty() => Err("the program name is empty".into()),
        Some(_) => Ok(Action::Exec { every, words }),
    }
}

/// Splits an optional leading `@ DURATION` from the rest of an action.
fn split_rate_limit(rest: &str) -> Result<(Option<Duration>, &str), ActionError> {
    let rest = rest.trim_start();
    let Some(after_at) = rest.strip_prefix('@') else {
        return Ok((None, rest));
    };
    let after_at = after_at.trim_start();
    let end = after_at.find(char::is_whitespace).unwrap_or(after_at.len());
    let (duration, tail) = after_at.split_at(end);
    if duration.is_empty() {
        return Err("missing duration after @, e.g. @ 10m".into());
    }
    Ok((Some(parse_duration(duration)?), tail))
}

// ---------------------------------------------------------------------------
// Exec words
// ---------------------------------------------------------------------------

/// One word of an exec command line, made of literal text and variables.
///
/// Parsed words are normalised: no empty `Text` piece and no two adjacent
/// `Text` pieces, so the empty word `""` is `Word(vec![])`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Word(pub Vec<Piece>);

/// A part of a [`Word`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Literal text, used verbatim.
    Text(String),
    /// A variable, replaced by its value when the action runs.
    Var(Var),
}

/// A variable of exec words, written `$NAME` or `${NAME}` etc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// `$NAME`: the entry's name.
    Name,
    /// `$PID`: the process id.
    Pid,
    /// `$RMEM`: resident memory, in decimal bytes.
    Rmem,
    /// `$VMEM`: virtual memory, in decimal bytes.
    Vmem,
    /// `$CMDLINE`: the process's command line (untrusted text).
    Cmdline,
}

impl Var {
    fn name(self) -> &'static str {
        match self {
            Var::Name => "NAME",
            Var::Pid => "PID",
            Var::Rmem => "RMEM",
            Var::Vmem => "VMEM",
            Var::Cmdline => "CMDLINE",
        }
    }

    fn from_name(name: &str) -> Option<Var> {
        match name {
            "NAME" => Some(Var::Name),
            "PID" => Some(Var::Pid),
            "RMEM" => Some(Var::Rmem),
            "VMEM" => Some(Var::Vmem),
            "CMDLINE" => Some(Var::Cmdline),
            _ => None,
        }
    }
}

/// Values substituted into exec words.
#[derive(Clone, Copy, Debug)]
pub struct ExecVars<'a> {
    /// The entry's name (`$NAME`).
    pub name: &'a str,
    /// The process id (`$PID`).
    pub pid: u32,
    /// Resident memory in bytes (`$RMEM`).
    pub rmem: u64,
    /// Virtual memory in bytes (`$VMEM`).
    pub vmem: u64,
    /// The process's command line (`$CMDLINE`), possibly hostile.
    pub cmdline: &'a str,
}

impl Word {
    /// The word with its variables replaced; values are inserted verbatim.
    fn expand(&self, vars: &ExecVars) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(Var::Name) => out.push_str(vars.name),
                Piece::Var(Var::Pid) => out.push_str(&vars.pid.to_string()),
                Piece::Var(Var::Rmem) => out.push_str(&vars.rmem.to_string()),
                Piece::Var(Var::Vmem) => out.push_str(&vars.vmem.to_string()),
                Piece::Var(Var::Cmdline) => out.push_str(vars.cmdline),
            }
        }
        out
    }
}

/// Shows the word quoted so that it parses back to an equal word: bare when
/// it only holds plain characters and variables (`$NAME.log`), single-quoted
/// for literal text with `$`, `"` or `\` (`'$HOME'`), double-quoted otherwise
/// (`"$NAME ($PID) is using too much ram"`), `""` when empty.
impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Quoting::of(&self.0) {
            Quoting::Bare => write_pieces(f, &self.0, false),
            Quoting::Single => {
                f.write_str("'")?;
                write_pieces(f, &self.0, false)?;
                f.write_str("'")
            }
            Quoting::Double => {
                f.write_str("\"")?;
                write_pieces(f, &self.0, true)?;
                f.write_str("\"")
            }
        }
    }
}

/// How a word is quoted when displayed.
enum Quoting {
    Bare,
    Single,
    Double,
}

impl Quoting {
    fn of(pieces: &[Piece]) -> Quoting {
        if pieces.is_empty() {
            return Quoting::Double;
        }
        if pieces.iter().all(|piece| texts_only(piece, is_plain_char)) {
            return Quoting::Bare;
        }
        let literal = pieces.iter().all(|piece| matches!(piece, Piece::Text(_)));
        let has_single_quote = pieces.iter().any(|piece| !texts_only(piece, |c| c != '\''));
        let needs_escapes = !pieces.iter().all(|piece| texts_only(piece, |c| !needs_escape(c)));
        if literal && !has_single_quote && needs_escapes {
            Quoting::Single
        } else {
            Quoting::Double
        }
    }
}

/// Characters that never need quoting in an exec word.
fn is_plain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_./:,+=%^~".contains(c)
}

/// Characters that need a backslash inside double quotes.
fn needs_escape(c: char) -> bool {
    matches!(c, '"' | '\\' | '$')
}

/// Characters that may follow `$` in a variable name.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// True for variables, and for text whose every character passes `allowed`.
fn texts_only(piece: &Piece, allowed: impl Fn(char) -> bool) -> bool {
    match piece {
        Piece::Text(text) => text.chars().all(allowed),
        Piece::Var(_) => true,
    }
}

/// Writes pieces in order: text as is or with `"`, `\`, `$` escaped, and
/// variables as `$NAME`, or `${NAME}` when a name character follows.
fn write_pieces(f: &mut fmt::Formatter<'_>, pieces: &[Piece], escape: bool) -> fmt::Result {
    for (index, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Text(text) if escape => write_escaped(f, text)?,
            Piece::Text(text) => f.write_str(text)?,
            Piece::Var(var) => {
                let name_follows = matches!(
                    pieces.get(index + 1),
                    Some(Piece::Text(next)) if next.starts_with(is_name_char)
                );
                if name_follows {
                    write!(f, "${{{}}}", var.name())?;
                } else {
                    write!(f, "${}", var.name())?;
                }
            }
        }
    }
    Ok(())
}

fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if needs_escape(c) {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    Ok(())
}

/// Builds one word while the command line is being split.
#[derive(Default)]
struct WordBuilder {
    pieces: Vec<Piece>,
    /// Set once anything, even an empty quoted string, belongs to the word.
    started: bool,
}

impl WordBuilder {
    fn start(&mut self) {
        self.started = true;
    }

    fn push_char(&mut self, c: char) {
        self.started = true;
        match self.pieces.last_mut() {
            Some(Piece::Text(text)) => text.push(c),
            _ => self.pieces.push(Piece::Text(c.to_string())),
        }
    }

    fn push_var(&mut self, var: Var) {
        self.started = true;
        self.pieces.push(Piece::Var(var));
    }

    /// Ends the current word, if one was started.
    fn finish_into(&mut self, words: &mut Vec<Word>) {
        if self.started {
            words.push(Word(std::mem::take(&mut self.pieces)));
            self.started = false;
        }
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Splits the command line of an exec action into words (see [`Action::parse`]).
fn split_words(text: &str) -> Result<Vec<Word>, ActionError> {
    let mut chars = text.chars().peekable();
    let mut words = Vec::new();
    let mut word = WordBuilder::default();
    while let Some(c) = chars.next() {
        match c {
            '\'' => read_single_quoted(&mut chars, &mut word)?,
            '"' => read_double_quoted(&mut chars, &mut word)?,
            '$' => read_variable(&mut chars, &mut word)?,
            '\\' => {
                let escaped = chars.next().ok_or("trailing backslash (nothing to escape)")?;
                word.push_char(escaped);
            }
            c if c.is_whitespace() => word.finish_into(&mut words),
            c => word.push_char(c),
        }
    }
    word.finish_into(&mut words);
    Ok(words)
}

/// Reads up to the closing `'`; everything inside is literal.
fn read_single_quoted(chars: &mut Chars<'_>, word: &mut WordBuilder) -> Result<(), ActionError> {
    word.start();
    for c in chars.by_ref() {
        if c == '\'' {
            return Ok(());
        }
        word.push_char(c);
    }
    Err("unterminated single quote".into())
}

/// Reads up to the closing `"`, with `\"`, `\\`, `\$` escapes and variables.
fn read_double_quoted(chars: &mut Chars<'_>, word: &mut WordBuilder) -> Result<(), ActionError> {
    word.start();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Ok(()),
            '$' => read_variable(chars, word)?,
            '\\' => match chars.next_if(|next| matches!(next, '"' | '\\' | '$')) {
                Some(escaped) => word.push_char(escaped),
                None => word.push_char('\\'),
            },
            c => word.push_char(c),
        }
    }
    Err("unterminated double quote".into())
}

/// Reads what follows a `$`: a variable name, a braced name, or nothing (a
/// literal `$`).
fn read_variable(chars: &mut Chars<'_>, word: &mut WordBuilder) -> Result<(), ActionError> {
    if chars.next_if_eq(&'{').is_some() {
        let name = take_name(chars);
        if name.is_empty() || chars.next_if_eq(&'}').is_none() {
            return Err(format!("invalid variable reference \"${{{name}\" (expected e.g. ${{NAME}})").into());
        }
        let var = Var::from_name(&name).ok_or(ActionError::UnknownVariable(format!("${{{name}}}")))?;
        word.push_var(var);
        return Ok(());
    }
    let name = take_name(chars);
    if name.is_empty() {
        word.push_char('$');
        return Ok(());
    }
    let var = Var::from_name(&name).ok_or(ActionError::UnknownVariable(format!("${name}")))?;
    word.push_var(var);
    Ok(())
}

/// Takes the longest run of `[A-Za-z0-9_]`.
fn take_name(chars: &mut Chars<'_>) -> String {
    let mut name = String::new();
    while let Some(c) = chars.next_if(|c| is_name_char(*c)) {
        name.push(c);
    }
    name
}

// ---------------------------------------------------------------------------
// The same languages without text: typed builders
// ---------------------------------------------------------------------------

/// A quantity to compare, from [`rmem`], [`vmem`], [`cpu`] or [`treemem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measure(Quantity);

/// Resident memory (bytes), as `rmem` in a trigger: `rmem().gt(gib(1))` is `rmem > 1g`.
pub fn rmem() -> Measure {
    Measure(Quantity::Rmem)
}

/// Virtual memory (bytes), as `vmem`.
pub fn vmem() -> Measure {
    Measure(Quantity::Vmem)
}

/// CPU in percent of one core, as `cpu`: `cpu().gt(90)` is `cpu > 90%`.
pub fn cpu() -> Measure {
    Measure(Quantity::Cpu)
}

/// The memory of a process tree (bytes), as `treemem`.
pub fn treemem() -> Measure {
    Measure(Quantity::Treemem)
}

impl Measure {
    fn trigger(self, comparison: Comparison, threshold: u64) -> Trigger {
        Trigger { quantity: self.0, comparison, threshold }
    }

    /// `QUANTITY > threshold` (bytes, or percent for [`cpu`]).
    pub fn gt(self, threshold: u64) -> Trigger {
        self.trigger(Comparison::Greater, threshold)
    }

    /// `QUANTITY >= threshold`.
    pub fn ge(self, threshold: u64) -> Trigger {
        self.trigger(Comparison::GreaterOrEqual, threshold)
    }

    /// `QUANTITY < threshold`.
    pub fn lt(self, threshold: u64) -> Trigger {
        self.trigger(Comparison::Less, threshold)
    }

    /// `QUANTITY <= threshold`.
    pub fn le(self, threshold: u64) -> Trigger {
        self.trigger(Comparison::LessOrEqual, threshold)
    }
}

/// `n` KiB in bytes (the trigger language's `k`), saturating.
pub const fn kib(n: u64) -> u64 {
    n.saturating_mul(1 << 10)
}

/// `n` MiB in bytes (`m`), saturating.
pub const fn mib(n: u64) -> u64 {
    n.saturating_mul(1 << 20)
}

/// `n` GiB in bytes (`g`), saturating.
pub const fn gib(n: u64) -> u64 {
    n.saturating_mul(1 << 30)
}

/// `n` seconds (the duration language's `s`).
pub const fn seconds(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `n` minutes (`m`), saturating.
pub const fn minutes(n: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(60))
}

/// `n` hours (`h`), saturating.
pub const fn hours(n: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(3_600))
}

/// `n` days (`d`), saturating.
pub const fn days(n: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(86_400))
}

/// `$NAME` in a word of [`Action::exec`]: the entry's or watch's name.
pub const NAME: &str = "$NAME";
/// `$PID`: the process id.
pub const PID: &str = "$PID";
/// `$RMEM`: resident memory in bytes.
pub const RMEM: &str = "$RMEM";
/// `$VMEM`: virtual memory in bytes.
pub const VMEM: &str = "$VMEM";
/// `$CMDLINE`: the process's command line.
pub const CMDLINE: &str = "$CMDLINE";

impl Action {
    /// `stop @ every`.
    pub fn stop(every: Duration) -> Action {
        Action::Stop { every }
    }

    /// `exec PROGRAM ARGS…`, one word per item, never split further (see
    /// [`Word::template`]: `$NAME`, `${PID}` — or [`NAME`], [`PID`] … — are
    /// variables, `$$` a dollar sign, everything else literal).
    ///
    /// ```
    /// use sentry_rules::{hours, Action, NAME, PID};
    /// let a = Action::exec(["logger", NAME, PID]).at_most_every(hours(1)).build().unwrap();
    /// assert_eq!(a, Action::parse("exec @ 1h logger $NAME $PID").unwrap());
    /// ```
    pub fn exec<I>(words: I) -> ExecAction
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let words = words.into_iter().map(|w| Word::template(w.as_ref())).collect::<Result<Vec<_>, _>>();
        let words = match words {
            Ok(w) if w.is_empty() => Err("exec needs a program to run".to_string()),
            Ok(w) if w[0].0.is_empty() => Err("the program name is empty".to_string()),
            other => other,
        };
        ExecAction { words, every: None }
    }
}

/// An `exec` action being built by [`Action::exec`]; its mistakes (an
/// unknown `$VAR`, no program) are reported when it is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecAction {
    words: Result<Vec<Word>, String>,
    every: Option<Duration>,
}

impl ExecAction {
    /// Runs at most once per `every` (`exec @ every …`).
    pub fn at_most_every(mut self, every: Duration) -> ExecAction {
        self.every = Some(every);
        self
    }

    /// The action, or what is wrong with it.
    pub fn build(self) -> Result<Action, String> {
        let every = self.every;
        self.words.map(|words| Action::Exec { every, words }).map_err(|e| format!("invalid exec action: {e}"))
    }
}

impl Word {
    /// One word from `text`, as `action!`'s string literals and
    /// [`Action::exec`]'s items are: `$VAR` and `${VAR}` are variables, `$$`
    /// is a dollar sign, everything else is literal — spaces, quotes and
    /// backslashes included (`a\.b` stays `a\.b`); never split.
    pub fn template(text: &str) -> Result<Word, String> {
        let mut chars = text.chars().peekable();
        let mut word = WordBuilder::default();
        word.start();
        while let Some(c) = chars.next() {
            let step = match c {
                '$' if chars.next_if_eq(&'$').is_some() => {
                    word.push_char('$');
                    Ok(())
                }
                '$' => read_variable(&mut chars, &mut word),
                c => {
                    word.push_char(c);
                    Ok(())
                }
            };
            step.map_err(|e| match e {
                ActionError::Invalid(detail) => detail,
                ActionError::UnknownVariable(v) => format!("unknown variable {v:?} (known: {KNOWN_VARIABLES})"),
            })?;
        }
        Ok(Word(word.pieces))
    }
}

/// A watch's pattern (a regex), checked where it was written — by the
/// `pattern!` macro at compile time; validation checks it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern whose regex was checked already (what `pattern!` expands to).
    #[doc(hidden)]
    pub fn from_checked(source: &str) -> Pattern {
        Pattern(source.to_string())
    }

    /// The regex, as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The parsers as the macros use them: the error is what is wrong alone,
/// quoting the offending piece (`unknown quantity "rss" …`), without the
/// whole text around it — the macro points at the token instead.
pub mod detail {
    use super::*;

    /// [`Trigger::parse`]'s detail.
    pub fn trigger(text: &str) -> Result<Trigger, String> {
        parse_trigger(text)
    }

    /// [`Action::parse`]'s detail.
    pub fn action(text: &str) -> Result<Action, String> {
        parse_action(text).map_err(|e| match e {
            ActionError::Invalid(detail) => detail,
            ActionError::UnknownVariable(v) => format!("unknown variable {v:?} (known: {KNOWN_VARIABLES})"),
        })
    }

    /// [`parse_duration`]'s detail.
    pub fn duration(text: &str) -> Result<Duration, String> {
        duration_seconds(text.trim()).map(Duration::from_secs)
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_builders_mean_what_the_text_means() {
        let table = [
            (rmem().gt(gib(1)), "rmem > 1g"),
            (vmem().le(mib(900)), "vmem <= 900m"),
            (cpu().ge(90), "cpu >= 90%"),
            (treemem().lt(kib(512)), "treemem < 512k"),
        ];
        for (typed, text) in table {
            assert_eq!(typed, Trigger::parse(text).unwrap(), "{text}");
        }
        let actions = [
            (Action::stop(minutes(10)), "stop @ 10m"),
            (
                Action::exec(["logger", NAME, PID]).at_most_every(hours(1)).build().unwrap(),
                "exec @ 1h logger $NAME $PID",
            ),
            (
                Action::exec(["notify-send", "$NAME ($PID) is big"]).build().unwrap(),
                "exec notify-send \"$NAME ($PID) is big\"",
            ),
            (Action::exec(["echo", "$$5"]).build().unwrap(), "exec echo '$5'"),
            (Action::exec(["grep", "a\\.b", "C:\\dir"]).build().unwrap(), r"exec grep 'a\.b' 'C:\dir'"),
        ];
        for (typed, text) in actions {
            assert_eq!(typed, Action::parse(text).unwrap(), "{text}");
        }
        assert!(Action::exec(["echo", "$FOO"]).build().unwrap_err().contains("unknown variable \"$FOO\""));
        assert!(Action::exec(Vec::<String>::new()).build().is_err());
        assert_eq!(days(2), Duration::from_secs(172_800));
    }

    #[test]
    fn details_quote_the_offending_piece() {
        assert!(detail::trigger("rss > 1g").unwrap_err().contains("\"rss\""));
        assert!(detail::trigger("rmem >> 1g").unwrap_err().contains("\">>\""));
        assert!(detail::trigger("rmem > 5q").unwrap_err().contains("\"q\""));
        assert!(detail::action("exec echo $FOO").unwrap_err().contains("\"$FOO\""));
        assert!(detail::duration("1y").unwrap_err().contains("\"y\""));
    }

    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;

    fn trigger(quantity: Quantity, comparison: Comparison, threshold: u64) -> Trigger {
        Trigger { quantity, comparison, threshold }
    }

    fn text(s: &str) -> Piece {
        Piece::Text(s.to_string())
    }

    fn plain(s: &str) -> Word {
        Word(vec![text(s)])
    }

    fn exec(every: Option<Duration>, words: Vec<Word>) -> Action {
        Action::Exec { every, words }
    }

    fn minutes(n: u64) -> Duration {
        Duration::from_secs(60 * n)
    }

    // ----- triggers -----

    #[test]
    fn valid_triggers() {
        use Comparison::*;
        use Quantity::*;
        let table = [
            ("rmem > 1g", trigger(Rmem, Greater, G)),
            ("rmem>1g", trigger(Rmem, Greater, G)),
            ("rmem > 900m", trigger(Rmem, Greater, 900 * M)),
            ("900m < vmem", trigger(Vmem, Greater, 900 * M)),
            ("rmem > 2097152", trigger(Rmem, Greater, 2_097_152)),
            ("rmem >= 512K", trigger(Rmem, GreaterOrEqual, 512 * K)),
            ("cpu > 90%", trigger(Cpu, Greater, 90)),
            ("cpu>250%", trigger(Cpu, Greater, 250)),
            ("cpu <= 100000%", trigger(Cpu, LessOrEqual, 100_000)),
            ("  rmem   <=   0  ", trigger(Rmem, LessOrEqual, 0)),
            ("\trmem\t<\t1M\n", trigger(Rmem, Less, M)),
            ("vmem < 4G", trigger(Vmem, Less, 4 * G)),
            ("90% <= cpu", trigger(Cpu, GreaterOrEqual, 90)),
            ("1k > rmem", trigger(Rmem, Less, K)),
            ("10 >= rmem", trigger(Rmem, LessOrEqual, 10)),
            ("1g<=vmem", trigger(Vmem, GreaterOrEqual, G)),
            ("rmem > 17179869183g", trigger(Rmem, Greater, 17_179_869_183 * G)),
            ("treemem > 2g", trigger(Treemem, Greater, 2 * G)),
            ("treemem>200m", trigger(Treemem, Greater, 200 * M)),
            ("treemem >= 512K", trigger(Treemem, GreaterOrEqual, 512 * K)),
            ("treemem <= 1048576", trigger(Treemem, LessOrEqual, M)),
            ("200m < treemem", trigger(Treemem, Greater, 200 * M)),
            ("1g >= treemem", trigger(Treemem, LessOrEqual, G)),
            ("0<treemem", trigger(Treemem, Greater, 0)),
        ];
        for (input, expected) in table {
            assert_eq!(Trigger::parse(input), Ok(expected), "parsing {input:?}");
        }
    }

    #[test]
    fn invalid_triggers() {
        let table = [
            ("", "empty trigger"),
            ("   ", "empty trigger"),
            ("rss > 1g", "unknown quantity \"rss\" (expected rmem, vmem, cpu or treemem)"),
            ("Rmem > 1g", "unknown quantity"),
            ("rmem > 1x", "unknown unit \"x\""),
            ("rmem > 1gb", "unknown unit \"gb\""),
            ("rmem >", "missing value"),
            ("900m <", "missing quantity"),
            ("> 1g", "missing quantity"),
            ("< rmem", "missing value"),
            (">", "missing quantity and value"),
            ("rmem > vmem", "two quantities"),
            ("1g > 2g", "two values"),
            ("rmem > 1g junk", "unexpected \"junk\" after \"1g\""),
            ("rmem vmem > 1g", "unexpected \"vmem\""),
            ("rmem > 1g 2g", "unexpected \"2g\""),
            ("rmem > -1g", "negative"),
            ("rmem > 1.5g", "fractional"),
            ("cpu > 90", "percent sign"),
            ("cpu > 90.5%", "fractional"),
            ("cpu > 90k", "invalid cpu value"),
            ("cpu > 100001%", "too large"),
            ("rmem > 90%", "percent sign is only valid for cpu"),
            ("rmem > 99999999999999999999", "too large"),
            ("rmem > 17179869184g", "too large"),
            ("rmem 1g", "missing comparison operator"),
            ("rmem", "missing comparison operator"),
            ("rmem => 1g", "unknown comparison operator \"=>\""),
            ("rmem == 1g", "unknown comparison operator"),
            ("rmem = 1g", "unknown comparison operator"),
            ("rmem > > 1g", "more than one comparison operator"),
            ("1g < rmem < 2g", "more than one comparison operator"),
            ("rmem > %", "invalid value"),
            ("treemem > 90%", "percent sign is only valid for cpu"),
            ("treemem > 1t", "unknown unit \"t\""),
            ("treemem > 1.5g", "fractional"),
            ("treemem > -1", "negative"),
            ("treemem >", "missing value"),
            ("> treemem", "missing value before"),
            ("treemem > rmem", "two quantities"),
            ("Treemem > 1g", "unknown quantity \"Treemem\""),
            ("tree_mem > 1g", "unknown quantity"),
            ("treemem > 17179869184g", "too large"),
            ("treemem => 1g", "unknown comparison operator"),
            ("1g < treemem < 2g", "more than one comparison operator"),
        ];
        for (input, fragment) in table {
            let error = Trigger::parse(input).expect_err(input);
            assert!(error.contains(fragment), "{input:?}: {error:?} lacks {fragment:?}");
            let quoted = format!("invalid trigger {input:?}: ");
            assert!(error.starts_with(&quoted), "{input:?}: {error:?} does not quote the text");
        }
    }

    #[test]
    fn trigger_error_message_is_exact() {
        assert_eq!(
            Trigger::parse("rss > 1g"),
            Err(r#"invalid trigger "rss > 1g": unknown quantity "rss" (expected rmem, vmem, cpu or treemem)"#
                .to_string())
        );
    }

    #[test]
    fn holds_at_and_around_the_threshold() {
        // (trigger, [holds(99), holds(100), holds(101)])
        let table = [
            ("rmem > 100", [false, false, true]),
            ("rmem >= 100", [false, true, true]),
            ("rmem < 100", [true, false, false]),
            ("rmem <= 100", [true, true, false]),
            ("100 < rmem", [false, false, true]),
            ("100 <= rmem", [false, true, true]),
            ("100 > rmem", [true, false, false]),
            ("100 >= rmem", [true, true, false]),
            ("cpu > 100%", [false, false, true]),
            ("100% >= cpu", [true, true, false]),
            ("treemem > 100", [false, false, true]),
            ("100 >= treemem", [true, true, false]),
        ];
        for (input, expected) in table {
            let parsed = Trigger::parse(input).expect(input);
            let actual = [parsed.holds(99), parsed.holds(100), parsed.holds(101)];
            assert_eq!(actual, expected, "{input:?}");
        }
    }

    #[test]
    fn holds_with_units_and_extremes() {
        let parsed = Trigger::parse("900m < vmem").expect("valid");
        assert!(!parsed.holds(900 * M));
        assert!(parsed.holds(900 * M + 1));
        let zero = Trigger::parse("rmem >= 0").expect("valid");
        assert!(zero.holds(0) && zero.holds(u64::MAX));
        let below_zero = Trigger::parse("rmem < 0").expect("valid");
        assert!(!below_zero.holds(0));
    }

    #[test]
    fn trigger_display() {
        let table = [
            ("rmem > 1g", "rmem > 1g"),
            ("rmem>1G", "rmem > 1g"),
            ("900m < vmem", "vmem > 900m"),
            ("rmem > 2097152", "rmem > 2m"),
            ("rmem > 1024m", "rmem > 1g"),
            ("rmem >= 1000", "rmem >= 1000"),
            ("rmem > 1536k", "rmem > 1536k"),
            ("rmem <= 0", "rmem <= 0"),
            ("90% <= cpu", "cpu >= 90%"),
            ("cpu < 0%", "cpu < 0%"),
            ("200m < treemem", "treemem > 200m"),
            ("treemem>=2048M", "treemem >= 2g"),
            ("treemem < 1000", "treemem < 1000"),
        ];
        for (input, canonical) in table {
            let parsed = Trigger::parse(input).expect(input);
            assert_eq!(parsed.to_string(), canonical, "{input:?}");
            assert_eq!(Trigger::parse(canonical), Ok(parsed), "{canonical:?}");
        }
    }

    // ----- durations -----

    #[test]
    fn valid_durations() {
        let table = [
            ("10m", 600),
            ("1h", 3_600),
            ("30s", 30),
            ("2d", 172_800),
            ("1s", 1),
            (" 5m ", 300),
            ("007s", 7),
            ("7d", MAX_DURATION_SECS),
            ("168h", MAX_DURATION_SECS),
        ];
        for (input, seconds) in table {
            assert_eq!(parse_duration(input), Ok(Duration::from_secs(seconds)), "{input:?}");
        }
    }

    #[test]
    fn invalid_durations() {
        let table = [
            ("", "empty"),
            ("10", "missing unit"),
            ("10x", "unknown unit \"x\""),
            ("10ms", "unknown unit \"ms\""),
            ("10M", "unknown unit \"M\""),
            ("0s", "positive"),
            ("0d", "positive"),
            ("m", "expected a positive whole number"),
            ("-5m", "expected a positive whole number"),
            ("1.5h", "fractional"),
            ("10 m", "immediately"),
            ("99999999999999999999s", "too long"),
            ("36501d", "too long"),
            ("213503982334601d", "too long"),
        ];
        for (input, fragment) in table {
            let error = parse_duration(input).expect_err(input);
            assert!(error.contains(fragment), "{input:?}: {error:?} lacks {fragment:?}");
            assert!(error.starts_with(&format!("invalid duration {input:?}: ")), "{error:?}");
        }
    }

    #[test]
    fn duration_display() {
        let table =
            [(30, "30s"), (60, "1m"), (90, "90s"), (600, "10m"), (3_600, "1h"), (5_400, "90m"), (172_800, "2d")];
        for (seconds, canonical) in table {
            let duration = Duration::from_secs(seconds);
            assert_eq!(format_duration(duration), canonical);
            assert_eq!(parse_duration(canonical), Ok(duration));
        }
    }

    // ----- actions -----

    #[test]
    fn valid_actions() {
        let hour = Some(Duration::from_secs(3_600));
        let too_much =
            Word(vec![Piece::Var(Var::Name), text(" ("), Piece::Var(Var::Pid), text(") is using too much ram")]);
        let table = [
            ("term", Action::Term),
            ("kill", Action::Kill),
            ("restart", Action::Restart),
            ("  term  ", Action::Term),
            ("stop @ 10m", Action::Stop { every: minutes(10) }),
            ("stop @10m", Action::Stop { every: minutes(10) }),
            ("stop@ 10m", Action::Stop { every: minutes(10) }),
            ("stop   @   10m", Action::Stop { every: minutes(10) }),
            ("stop@10m", Action::Stop { every: minutes(10) }),
            (
                r#"exec notify-send "$NAME ($PID) is using too much ram""#,
                exec(None, vec![plain("notify-send"), too_much.clone()]),
            ),
            (
                r#"exec @ 1h logger "$NAME ($PID) is using too much ram""#,
                exec(hour, vec![plain("logger"), too_much.clone()]),
            ),
            (
                r#"exec logger "program is using too much ram""#,
                exec(None, vec![plain("logger"), plain("program is using too much ram")]),
            ),
            ("exec@1h logger x", exec(hour, vec![plain("logger"), plain("x")])),
            ("exec @1h   logger   x  ", exec(hour, vec![plain("logger"), plain("x")])),
            (r#"exec a"b c"'d'"#, exec(None, vec![plain("ab cd")])),
            (r#"exec echo """#, exec(None, vec![plain("echo"), Word(vec![])])),
            (r"exec echo '' x", exec(None, vec![plain("echo"), Word(vec![]), plain("x")])),
            (r"exec echo \$PID", exec(None, vec![plain("echo"), plain("$PID")])),
            (r"exec echo '$PID'", exec(None, vec![plain("echo"), plain("$PID")])),
            (r"exec echo a\ b", exec(None, vec![plain("echo"), plain("a b")])),
            (r#"exec echo "\$PID \" \\ \n""#, exec(None, vec![plain("echo"), plain(r#"$PID " \ \n"#)])),
            (
                r"exec echo ${NAME}x $NAME.log",
                exec(
                    None,
                    vec![
                        plain("echo"),
                        Word(vec![Piece::Var(Var::Name), text("x")]),
                        Word(vec![Piece::Var(Var::Name), text(".log")]),
                    ],
                ),
            ),
            (
                r#"exec echo $ a$ "$" $"x""#,
                exec(None, vec![plain("echo"), plain("$"), plain("a$"), plain("$"), plain("$x")]),
            ),
            (
                r"exec echo ${RMEM}${VMEM}$CMDLINE",
                exec(
                    None,
                    vec![
                        plain("echo"),
                        Word(vec![Piece::Var(Var::Rmem), Piece::Var(Var::Vmem), Piece::Var(Var::Cmdline)]),
                    ],
                ),
            ),
            (r#"exec "@x""#, exec(None, vec![plain("@x")])),
        ];
        for (input, expected) in table {
            assert_eq!(Action::parse(input), Ok(expected), "parsing {input:?}");
        }
    }

    #[test]
    fn invalid_actions() {
        let table = [
            ("", "empty action"),
            ("   ", "empty action"),
            ("stop", "stop needs a rate limit, e.g. stop @ 10m"),
            ("stop 10m", "stop needs a rate limit"),
            ("stop @", "missing duration"),
            ("stop@", "missing duration"),
            ("stop @ 10x", "invalid duration \"10x\""),
            ("stop @ 0s", "positive"),
            ("stop @ 10m extra", "unexpected \"extra\""),
            ("stop @ 10m @ 5m", "unexpected"),
            ("term @ 5m", "term does not take a rate limit"),
            ("kill @ 1m", "kill does not take a rate limit"),
            ("restart @ 1h", "restart does not take a rate limit"),
            ("term@5m", "does not take a rate limit"),
            ("term now", "unexpected \"now\" after term"),
            ("exec", "exec needs a program"),
            ("exec   ", "exec needs a program"),
            ("exec @ 1h", "exec needs a program"),
            ("exec @ 1h ", "exec needs a program"),
            ("exec ''", "program name is empty"),
            ("reboot", "unknown action \"reboot\""),
            ("Term", "unknown action"),
            ("@ 10m", "unknown action \"\""),
            ("exec\"x\"", "unknown action"),
            (r#"exec echo "abc"#, "unterminated double quote"),
            (r#"exec echo "abc\""#, "unterminated double quote"),
            ("exec echo 'abc", "unterminated single quote"),
            (r"exec echo abc\", "trailing backslash"),
            ("exec echo ${NAME", "invalid variable reference"),
            (r#"exec echo "${}""#, "invalid variable reference"),
            ("exec echo ${NAME-x}", "invalid variable reference"),
        ];
        for (input, fragment) in table {
            let error = Action::parse(input).expect_err(input);
            assert!(error.contains(fragment), "{input:?}: {error:?} lacks {fragment:?}");
            let quoted = format!("invalid action {input:?}: ");
            assert!(error.starts_with(&quoted), "{input:?}: {error:?} does not quote the text");
        }
    }

    #[test]
    fn unknown_variables_are_named() {
        let table = [
            ("exec echo $FOO", "$FOO"),
            ("exec echo $PIDx", "$PIDx"),
            ("exec echo \"$name\"", "$name"),
            ("exec echo ${FOO}", "${FOO}"),
            ("exec echo $1", "$1"),
        ];
        for (input, variable) in table {
            let expected = format!(
                "unknown variable {variable} in exec action {input:?} \
                 (known: $NAME, $PID, $RMEM, $VMEM, $CMDLINE)"
            );
            assert_eq!(Action::parse(input), Err(expected));
        }
    }

    #[test]
    fn every_and_entry_only() {
        let table = [
            ("term", None, false),
            ("kill", None, false),
            ("restart", None, true),
            ("stop @ 10m", Some(minutes(10)), false),
            ("exec logger x", None, false),
            ("exec @ 2d logger x", Some(Duration::from_secs(172_800)), false),
        ];
        for (input, every, entry_only) in table {
            let action = Action::parse(input).expect(input);
            assert_eq!(action.every(), every, "{input:?}");
            assert_eq!(action.is_entry_only(), entry_only, "{input:?}");
        }
    }

    #[test]
    fn action_display() {
        let table = [
            ("term", "term"),
            ("  kill ", "kill"),
            ("restart", "restart"),
            ("stop@600s", "stop @ 10m"),
            ("stop @ 3600s", "stop @ 1h"),
            ("stop @ 48h", "stop @ 2d"),
            ("stop @ 90s", "stop @ 90s"),
            (
                r#"exec notify-send "$NAME ($PID) is using too much ram""#,
                r#"exec notify-send "$NAME ($PID) is using too much ram""#,
            ),
            (
                r#"exec  @1h  logger "$NAME ($PID) is using too much ram""#,
                r#"exec @ 1h logger "$NAME ($PID) is using too much ram""#,
            ),
            (r#"exec logger "program is using too much ram""#, r#"exec logger "program is using too much ram""#),
            (r#"exec a"b c"'d'"#, r#"exec "ab cd""#),
            (r#"exec echo "" ''"#, r#"exec echo "" """#),
            (r"exec echo \$PID", r"exec echo '$PID'"),
            (r#"exec echo "it's \$5""#, r#"exec echo "it's \$5""#),
            ("exec echo ${NAME}x $NAME.log", "exec echo ${NAME}x $NAME.log"),
            (r#"exec echo "${NAME}_1 $PID""#, r#"exec echo "${NAME}_1 $PID""#),
            (r#"exec "@x" $"#, r#"exec "@x" '$'"#),
            ("exec echo 'été'", r#"exec echo "été""#),
        ];
        for (input, canonical) in table {
            let parsed = Action::parse(input).expect(input);
            assert_eq!(parsed.to_string(), canonical, "{input:?}");
            assert_eq!(Action::parse(canonical), Ok(parsed), "{canonical:?}");
        }
    }

    #[test]
    fn display_of_hand_built_words_round_trips() {
        let words = vec![
            plain("prog"),
            plain("a'b\"c\\d$e f"),
            plain("'"),
            plain("\n\t"),
            Word(vec![Piece::Var(Var::Cmdline), text("'$x'"), Piece::Var(Var::Pid)]),
            Word(vec![text("x"), Piece::Var(Var::Rmem), text("_"), Piece::Var(Var::Vmem)]),
            Word(vec![]),
        ];
        let action = exec(Some(Duration::from_secs(45)), words);
        assert_eq!(Action::parse(&action.to_string()), Ok(action));
    }

    // ----- expansion -----

    const HOSTILE: &str = r#"x; rm -rf / $(touch /tmp/pwned) `id` "q" 'r'"#;

    fn vars() -> ExecVars<'static> {
        ExecVars { name: "web", pid: 42, rmem: 1_048_576, vmem: 4_194_304, cmdline: HOSTILE }
    }

    #[test]
    fn expansion_keeps_a_hostile_cmdline_in_one_argument() {
        let action =
            Action::parse(r#"exec logger "$NAME ($PID) uses $RMEM/$VMEM bytes: $CMDLINE" $CMDLINE ${CMDLINE}"#)
                .expect("valid");
        let argv = action.argv(&vars()).expect("exec has an argv");
        assert_eq!(
            argv,
            vec![
                "logger".to_string(),
                format!("web (42) uses 1048576/4194304 bytes: {HOSTILE}"),
                HOSTILE.to_string(),
                HOSTILE.to_string(),
            ]
        );
    }

    #[test]
    fn expansion_of_literals_and_empty_words() {
        let action = Action::parse(r#"exec printf '%s $PID' "" \$NAME ${PID}x"#).expect("valid");
        let argv = action.argv(&vars()).expect("exec has an argv");
        assert_eq!(argv, vec!["printf", "%s $PID", "", "$NAME", "42x"]);
    }

    #[test]
    fn argv_is_none_for_other_actions() {
        for input in ["term", "kill", "restart", "stop @ 1m"] {
            let action = Action::parse(input).expect(input);
            assert_eq!(action.argv(&vars()), None, "{input:?}");
        }
    }

    // ----- property-style fuzzing -----

    /// xorshift64: a tiny deterministic pseudo-random generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const ALPHABET: &str = "rmemvcpuukgKMGsdhx0123456789012   <>=>=%@@$$\"\"''\\\\{}{}\
                            tesxNAMEPIDRVCLkilopr-._;()\t\né";

    const SEEDS: &[&str] = &[
        "rmem > 1g",
        "treemem >= 2g",
        "900m < vmem",
        "cpu > 90%",
        "rmem>=512K",
        "10 >= rmem",
        "10m",
        "1h",
        "30s",
        "2d",
        "term",
        "kill",
        "restart",
        "stop @ 10m",
        "exec notify-send \"$NAME ($PID) is using too much ram\"",
        "exec @ 1h logger \"$NAME ($PID) is using too much ram\"",
        "exec logger \"program is using too much ram\"",
        "exec a\"b c\"'d' \\$PID ${NAME}x '' \"\\\"\\\\\\$\"",
    ];

    fn random_string(rng: &mut Rng, alphabet: &[char]) -> String {
        let length = rng.below(24);
        (0..length).map(|_| *rng.pick(alphabet)).collect()
    }

    fn mutate(rng: &mut Rng, alphabet: &[char]) -> String {
        let mut chars: Vec<char> = rng.pick(SEEDS).chars().collect();
        for _ in 0..=rng.below(3) {
            let at = rng.below(chars.len() + 1);
            match rng.below(3) {
                0 => chars.insert(at, *rng.pick(alphabet)),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ if at < chars.len() => chars[at] = *rng.pick(alphabet),
                _ => chars.push(*rng.pick(alphabet)),
            }
        }
        chars.into_iter().collect()
    }

    /// Parses `input` with every parser; whatever parses must round-trip.
    /// Returns how many of the three parsers accepted it.
    fn check_round_trips(input: &str) -> [bool; 3] {
        let trigger = Trigger::parse(input);
        if let Ok(parsed) = &trigger {
            let shown = parsed.to_string();
            assert_eq!(Trigger::parse(&shown).as_ref(), Ok(parsed), "{input:?} → {shown:?}");
        }
        let action = Action::parse(input);
        if let Ok(parsed) = &action {
            let shown = parsed.to_string();
            assert_eq!(Action::parse(&shown).as_ref(), Ok(parsed), "{input:?} → {shown:?}");
        }
        let duration = parse_duration(input);
        if let Ok(parsed) = duration {
            let shown = format_duration(parsed);
            assert_eq!(parse_duration(&shown), Ok(parsed), "{input:?} → {shown:?}");
        }
        [trigger.is_ok(), action.is_ok(), duration.is_ok()]
    }

    #[test]
    fn random_inputs_never_panic_and_round_trip() {
        let alphabet: Vec<char> = ALPHABET.chars().collect();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut accepted = [0usize; 3];
        for round in 0..20_000 {
            let input = if round % 2 == 0 { random_string(&mut rng, &alphabet) } else { mutate(&mut rng, &alphabet) };
            for (count, ok) in accepted.iter_mut().zip(check_round_trips(&input)) {
                *count += usize::from(ok);
            }
        }
        // The generator must reach the valid parts of each language.
        assert!(accepted.iter().all(|&count| count > 50), "accepted counts: {accepted:?}");
    }

    fn random_word(rng: &mut Rng, alphabet: &[char]) -> Word {
        const VARS: [Var; 5] = [Var::Name, Var::Pid, Var::Rmem, Var::Vmem, Var::Cmdline];
        let mut pieces: Vec<Piece> = Vec::new();
        for _ in 0..rng.below(4) {
            if rng.below(3) == 0 {
                pieces.push(Piece::Var(*rng.pick(&VARS)));
                continue;
            }
            let fresh = random_string(rng, alphabet);
            match pieces.last_mut() {
                _ if fresh.is_empty() => {}
                Some(Piece::Text(text)) => text.push_str(&fresh),
                _ => pieces.push(Piece::Text(fresh)),
            }
        }
        Word(pieces)
    }

    #[test]
    fn random_exec_actions_round_trip_through_display() {
        let alphabet: Vec<char> = ALPHABET.chars().chain("@#&|*?!`; ".chars()).collect();
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..5_000 {
            let mut words = vec![plain("prog")];
            words.extend((0..rng.below(5)).map(|_| random_word(&mut rng, &alphabet)));
            let seconds = rng.below(3) as u64 * 3_600;
            let every = (seconds > 0).then(|| Duration::from_secs(seconds));
            let action = exec(every, words);
            let shown = action.to_string();
            assert_eq!(Action::parse(&shown), Ok(action), "{shown:?}");
        }
    }
}
