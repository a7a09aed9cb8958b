//! Procedural macros that turn Sentry configuration mistakes into compile
//! errors, pointed at the offending token: `trigger!`, `action!`,
//! `pattern!`, `duration!` and the `sentry![…]` form of `sentry(vec![…])`.
//! They are re-exported by `sentry_core::prelude`; use them from there.
//!
//! The languages are parsed by `sentry-rules`, the very parsers `sentry-core`
//! uses for the string forms at run time, so a macro and a string can never
//! disagree: the macro turns its tokens back into the text of the language,
//! parses it, and writes the parsed value out as Rust (the typed values of
//! `sentry_core::rule`). It knows nothing of processes or of the supervisor.

use proc_macro::TokenStream;
use proc_macro2::{Delimiter, Spacing, Span, TokenStream as Tokens, TokenTree};
use quote::quote;
use sentry_rules::{Action, Comparison, Piece, Quantity, Trigger, Var, Word};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Lit, LitStr, Token};

/// A trigger, checked at compile time: `QUANTITY OP VALUE` or
/// `VALUE OP QUANTITY`, exactly as in `.on("rmem > 500m", …)`.
///
/// ```
/// use sentry_core::prelude::*;
/// let t = trigger!(rmem > 500m);
/// assert_eq!(t, Trigger::parse("rmem > 500m").unwrap());
/// // It expands to the value itself:
/// // sentry_core::rule::Trigger { quantity: Quantity::Rmem, comparison: Comparison::Greater, threshold: 524288000 }
/// let _ = (trigger!(900m < vmem), trigger!(cpu > 90%), trigger!(treemem >= 2g));
/// ```
///
/// `trigger!(rss > 1g)` does not compile: ``unknown quantity "rss" (expected
/// rmem, vmem, cpu or treemem)``, at `rss`.
#[proc_macro]
pub fn trigger(input: TokenStream) -> TokenStream {
    let input = Tokens::from(input);
    let text = Text::of(input.clone());
    match sentry_rules::detail::trigger(&text.text) {
        Ok(t) => trigger_tokens(&t).into(),
        Err(detail) => text.error(&format!("invalid trigger: {detail}"), &input).into(),
    }
}

/// An action, checked at compile time: `term`, `kill`, `restart`,
/// `stop @ DURATION`, `exec [@ DURATION] "PROGRAM" "ARG"…` — each word of
/// `exec` a string literal (`$NAME`, `$PID`, `$RMEM`, `$VMEM`, `$CMDLINE`
/// expand inside it; it is never split).
///
/// ```
/// use sentry_core::prelude::*;
/// let a = action!(exec @ 1h "notify-send" "$NAME ($PID) is big");
/// assert_eq!(a, Action::parse(r#"exec @ 1h notify-send "$NAME ($PID) is big""#).unwrap());
/// // It expands to the value itself:
/// // Action::Exec { every: Some(Duration::from_secs(3600)), words: vec![Word(…), Word(…)] }
/// let _ = (action!(term), action!(kill), action!(restart), action!(stop @ 10m));
/// ```
///
/// `action!(stop)` does not compile: `stop needs a rate limit, e.g. stop @ 10m`.
#[proc_macro]
pub fn action(input: TokenStream) -> TokenStream {
    let input = Tokens::from(input);
    // `exec [@ DURATION]` is the language's head; each word after it is a
    // string literal, made a word as `Action::exec` makes one
    // (`Word::template`), then written in the language's quoting, which
    // parses back to the same word.
    let trees: Vec<TokenTree> = input.clone().into_iter().collect();
    let exec = matches!(trees.first(), Some(TokenTree::Ident(i)) if i == "exec");
    let head_len = match (exec, trees.get(1)) {
        (false, _) => trees.len(),
        (true, Some(TokenTree::Punct(p))) if p.as_char() == '@' => 3.min(trees.len()),
        (true, _) => 1,
    };
    let head: Tokens = trees[..head_len].iter().cloned().collect();
    let mut words = Vec::new();
    for tree in &trees[head_len..] {
        let word = match tree {
            TokenTree::Literal(l) => match syn::parse_str::<LitStr>(&l.to_string()) {
                Ok(s) if s.suffix().is_empty() => Word::template(&s.value()).map_err(|e| (l.span(), e)),
                _ => Err((l.span(), "each word of exec is a plain string literal, e.g. \"notify-send\"".to_string())),
            },
            other => Err((other.span(), "each word of exec is a string literal, e.g. \"notify-send\"".to_string())),
        };
        match word {
            Ok(w) => words.push(w.to_string()),
            Err((span, e)) => return syn::Error::new(span, format!("invalid action: {e}")).to_compile_error().into(),
        }
    }
    let text = Text::of(head);
    let full = std::iter::once(text.text.clone()).chain(words).collect::<Vec<_>>().join(" ");
    match sentry_rules::detail::action(&full) {
        Ok(a) => action_tokens(&a).into(),
        Err(detail) => text.error(&format!("invalid action: {detail}"), &input).into(),
    }
}

/// A duration in the rules' language (`30s`, `10m`, `1h`, `2d`), as a
/// `std::time::Duration`.
///
/// ```
/// use sentry_core::prelude::*;
/// assert_eq!(duration!(10m), Duration::from_secs(600)); // expands to Duration::from_secs(600)
/// ```
///
/// `duration!(1y)` does not compile: `unknown unit "y" (expected s, m, h or d)`.
#[proc_macro]
pub fn duration(input: TokenStream) -> TokenStream {
    let input = Tokens::from(input);
    let text = Text::of(input.clone());
    match sentry_rules::detail::duration(&text.text) {
        Ok(d) => duration_tokens(d).into(),
        Err(detail) => text.error(&format!("invalid duration: {detail}"), &input).into(),
    }
}

/// A watch's pattern, its regex compiled at build time (by the `regex`
/// crate, as it will be at run time).
///
/// ```
/// use sentry_core::prelude::*;
/// let w = watch("conkeror", pattern!(r"xulrunner-bin .*conkeror"));
/// // pattern!(…) expands to sentry_core::rule::Pattern::from_checked("xulrunner-bin .*conkeror")
/// assert_eq!(w.name(), "conkeror");
/// ```
///
/// `pattern!("a(")` does not compile: the regex error, at the literal.
#[proc_macro]
pub fn pattern(input: TokenStream) -> TokenStream {
    let lit = match syn::parse::<LitStr>(input) {
        Ok(l) => l,
        Err(e) => {
            return syn::Error::new(e.span(), "pattern! takes one string literal, a regex").to_compile_error().into()
        }
    };
    if !lit.suffix().is_empty() {
        return syn::Error::new(lit.span(), "pattern! takes a plain string literal (no suffix)")
            .to_compile_error()
            .into();
    }
    let source = lit.value();
    match regex::Regex::new(&source) {
        Ok(_) => quote!(::sentry_core::rule::Pattern::from_checked(#source)).into(),
        Err(e) => syn::Error::new(lit.span(), format!("invalid regex {source:?}: {e}")).to_compile_error().into(),
    }
}

/// `sentry(vec![…])`, with the literal names checked at compile time: each
/// entry's and watch's name matches `[A-Za-z0-9_-]{1,64}` and is used once,
/// and every name in `.after([…])` and `.binds_to([…])` is another entry's,
/// with no cycle. What is not a literal is left to `check` at run time.
///
/// ```no_run
/// use sentry_core::prelude::*;
/// fn main() {
///     sentry![
///         entry("db", "postgres", ["-D", "/var/lib/pg"], 1000, 1),
///         entry("web", "./web", [], 500, 2).after(["db"]),
///     ];
/// }
/// ```
///
/// `.after(["dbb"])` does not compile: `no entry is named "dbb"`, at `"dbb"`.
#[proc_macro]
pub fn sentry(input: TokenStream) -> TokenStream {
    let parser = Punctuated::<Expr, Token![,]>::parse_terminated;
    let specs = match syn::parse::Parser::parse(parser, input) {
        Ok(s) => s,
        Err(e) => return e.to_compile_error().into(),
    };
    let items: Vec<Item> = specs.iter().map(Item::of).collect();
    let mut errors: Option<syn::Error> = None;
    let mut fail = |span: Span, message: String| {
        let e = syn::Error::new(span, message);
        match &mut errors {
            Some(all) => all.combine(e),
            None => errors = Some(e),
        }
    };
    let mut seen: Vec<&str> = Vec::new();
    for item in &items {
        let Some((name, span)) = &item.name else { continue };
        // Under `#[cfg(…)]` two items may share a name: one is compiled.
        if item.conditional {
            continue;
        }
        let what = if item.entry { "entry" } else { "watch" };
        if !valid_name(name) {
            fail(*span, format!("{what} name {name:?} must be 1 to 64 characters from A-Z a-z 0-9 _ -"));
        } else if seen.contains(&name.as_str()) {
            fail(*span, format!("name {name:?} is used more than once"));
        }
        seen.push(name);
    }
    // The order's names, when every name is known.
    if items.iter().all(|i| i.name.is_some()) {
        let entry = |n: &str| items.iter().any(|i| i.entry && i.name.as_ref().is_some_and(|(x, _)| x == n));
        let watch = |n: &str| items.iter().any(|i| !i.entry && i.name.as_ref().is_some_and(|(x, _)| x == n));
        for item in &items {
            let Some((own, _)) = &item.name else { continue };
            for (method, name, span) in &item.follows {
                if name == own {
                    fail(*span, format!(".{method}({name:?}) names the entry itself"));
                } else if watch(name) {
                    fail(*span, format!(".{method}({name:?}) names a watch, not an entry"));
                } else if !entry(name) {
                    fail(*span, format!("no entry is named {name:?}"));
                }
            }
        }
        if let Some((cycle, span)) = cycle(&items) {
            fail(span, format!("the start order has a cycle: {}", cycle.join(" → ")));
        }
    }
    if let Some(e) = errors {
        return e.to_compile_error().into();
    }
    let specs = specs.iter();
    quote!(::sentry_core::sentry(::std::vec![#(#specs),*])).into()
}

/// What `sentry![…]` knows of one item: `entry("NAME", …)` or
/// `watch("NAME", …)` at the start of a chain of builder calls.
struct Item {
    entry: bool,
    /// It has attributes (`#[cfg(…)]`): it may not be compiled.
    conditional: bool,
    /// The name, if a literal.
    name: Option<(String, Span)>,
    /// `.after` and `.binds_to` names that are literals: (method, name, span).
    follows: Vec<(String, String, Span)>,
}

impl Item {
    fn of(expr: &Expr) -> Item {
        let conditional = match expr {
            Expr::MethodCall(m) => !m.attrs.is_empty(),
            Expr::Call(c) => !c.attrs.is_empty(),
            Expr::Paren(p) => !p.attrs.is_empty(),
            _ => false,
        };
        let mut item = Item::chain(expr);
        item.conditional = conditional;
        item
    }

    fn chain(expr: &Expr) -> Item {
        let mut follows = Vec::new();
        let mut e = expr;
        loop {
            match e {
                Expr::MethodCall(m) => {
                    let method = m.method.to_string();
                    if method == "after" || method == "binds_to" {
                        if let Some(arg) = m.args.first() {
                            for (name, span) in literal_list(arg) {
                                follows.push((method.clone(), name, span));
                            }
                        }
                    }
                    e = &m.receiver;
                }
                Expr::Call(c) => {
                    let func = match &*c.func {
                        Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
                        _ => None,
                    };
                    let entry = func.as_deref() == Some("entry");
                    if !entry && func.as_deref() != Some("watch") {
                        return Item { entry: false, conditional: false, name: None, follows };
                    }
                    let name = match c.args.first() {
                        Some(Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. })) => Some((s.value(), s.span())),
                        _ => None,
                    };
                    return Item { entry, conditional: false, name, follows };
                }
                Expr::Paren(p) => e = &p.expr,
                Expr::Group(g) => e = &g.expr,
                _ => return Item { entry: false, conditional: false, name: None, follows },
            }
        }
    }
}

/// The string literals of `["a", "b"]`, `&["a"]` or `vec!["a"]`.
fn literal_list(arg: &Expr) -> Vec<(String, Span)> {
    let elems: Vec<Expr> = match arg {
        Expr::Array(a) => a.elems.iter().cloned().collect(),
        Expr::Reference(r) => return literal_list(&r.expr),
        Expr::Macro(m) if m.mac.path.is_ident("vec") => m
            .mac
            .parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated)
            .map(|p| p.into_iter().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    elems
        .iter()
        .filter_map(|e| match e {
            Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => Some((s.value(), s.span())),
            _ => None,
        })
        .collect()
}

/// A cycle among the items' `.after`/`.binds_to` names, and where to say so.
fn cycle(items: &[Item]) -> Option<(Vec<String>, Span)> {
    fn visit<'a>(
        items: &'a [Item],
        name: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == name) {
            let mut c: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            c.push(name.to_string());
            return Some(c);
        }
        if done.contains(&name) {
            return None;
        }
        path.push(name);
        let item = items.iter().find(|i| i.name.as_ref().is_some_and(|(n, _)| n == name));
        for (_, next, _) in item.map(|i| i.follows.as_slice()).unwrap_or_default() {
            if let Some(c) = visit(items, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(name);
        None
    }
    let mut done = Vec::new();
    for item in items {
        let Some((name, span)) = &item.name else { continue };
        if let Some(c) = visit(items, name, &mut Vec::new(), &mut done) {
            // Said at the first member of the cycle.
            let first = items.iter().find_map(|i| i.name.as_ref().filter(|(n, _)| *n == c[0]).map(|(_, s)| *s));
            return Some((c, first.unwrap_or(*span)));
        }
    }
    None
}

/// The names `check` accepts (SPEC).
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A macro's tokens as the text of the language, with where each token is
/// in it (to point an error at the token the parser names).
struct Text {
    text: String,
    /// (start, end, span) of each token in `text`.
    tokens: Vec<(usize, usize, Span)>,
}

impl Text {
    /// Tokens joined by single spaces, except after a joint punctuation
    /// (`>=`), after `$` and `-` (`-5m`) and before `%` (`90%`): Rust's
    /// tokens carry no spaces, so `cpu > 90 %` is `cpu > 90%`.
    fn of(input: Tokens) -> Text {
        let mut text = Text { text: String::new(), tokens: Vec::new() };
        let mut glue = true;
        text.push_all(input, &mut glue);
        text
    }

    fn push_all(&mut self, input: Tokens, glue: &mut bool) {
        for tree in input {
            match tree {
                TokenTree::Group(g) if g.delimiter() == Delimiter::None => self.push_all(g.stream(), glue),
                TokenTree::Group(g) => {
                    // Not part of either language: kept so the parser names it.
                    let (open, close) = match g.delimiter() {
                        Delimiter::Parenthesis => ("(", ")"),
                        Delimiter::Brace => ("{", "}"),
                        _ => ("[", "]"),
                    };
                    self.push(open, g.span_open(), glue);
                    self.push_all(g.stream(), glue);
                    self.push(close, g.span_close(), glue);
                }
                TokenTree::Punct(p) => {
                    let c = p.as_char().to_string();
                    if c == "%" {
                        *glue = true;
                    }
                    self.push(&c, p.span(), glue);
                    // `$NAME`, `-5m` (refused as negative), `-t`.
                    *glue = p.spacing() == Spacing::Joint || c == "$" || c == "-";
                }
                TokenTree::Ident(i) => self.push(&i.to_string(), i.span(), glue),
                TokenTree::Literal(l) => self.push(&l.to_string(), l.span(), glue),
            }
        }
    }

    fn push(&mut self, token: &str, span: Span, glue: &mut bool) {
        if !*glue && !self.text.is_empty() {
            self.text.push(' ');
        }
        let start = self.text.len();
        self.text.push_str(token);
        self.tokens.push((start, self.text.len(), span));
        *glue = false;
    }

    /// A `compile_error!` with `message`, at the token the message quotes
    /// (a token that is that text, else one that holds it, else where it
    /// starts in the text), or over the whole input.
    fn error(&self, message: &str, input: &Tokens) -> Tokens {
        let fragments = quoted(message);
        let token = |(s, e, _): &&(usize, usize, Span)| &self.text[*s..*e];
        // A token that is a quoted piece, else one that holds one, else
        // where the last such text is (what is wrong comes after what is not).
        let exact = fragments.iter().find_map(|q| self.tokens.iter().find(|t| token(t) == q).map(|t| t.2));
        let span = exact.or_else(|| fragments.iter().find_map(|q| self.span_of(q))).unwrap_or_else(|| {
            if input.is_empty() {
                Span::call_site()
            } else {
                input.span()
            }
        });
        syn::Error::new(span, message).to_compile_error()
    }

    fn span_of(&self, fragment: &str) -> Option<Span> {
        let token = |(s, e, _): &&(usize, usize, Span)| &self.text[*s..*e];
        if let Some(t) = self.tokens.iter().find(|t| !fragment.is_empty() && token(t).contains(fragment)) {
            return Some(t.2);
        }
        let at = self.text.rfind(fragment)?;
        self.tokens.iter().find(|(s, e, _)| (*s..*e.max(&(s + 1))).contains(&at)).map(|t| t.2)
    }
}

/// The `"…"` pieces a parser's message quotes (Rust's `{:?}` form).
fn quoted(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = message.chars();
    while chars.by_ref().any(|c| c == '"') {
        let mut piece = String::new();
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => piece.extend(chars.next()),
                '"' => {
                    closed = true;
                    break;
                }
                c => piece.push(c),
            }
        }
        if closed {
            out.push(piece);
        }
    }
    out
}

fn trigger_tokens(t: &Trigger) -> Tokens {
    let quantity = match t.quantity {
        Quantity::Rmem => quote!(Rmem),
        Quantity::Vmem => quote!(Vmem),
        Quantity::Cpu => quote!(Cpu),
        Quantity::Treemem => quote!(Treemem),
    };
    let comparison = match t.comparison {
        Comparison::Greater => quote!(Greater),
        Comparison::GreaterOrEqual => quote!(GreaterOrEqual),
        Comparison::Less => quote!(Less),
        Comparison::LessOrEqual => quote!(LessOrEqual),
    };
    let threshold = t.threshold;
    quote!(::sentry_core::rule::Trigger {
        quantity: ::sentry_core::rule::Quantity::#quantity,
        comparison: ::sentry_core::rule::Comparison::#comparison,
        threshold: #threshold,
    })
}

fn duration_tokens(d: std::time::Duration) -> Tokens {
    let secs = d.as_secs();
    quote!(::std::time::Duration::from_secs(#secs))
}

fn action_tokens(a: &Action) -> Tokens {
    match a {
        Action::Term => quote!(::sentry_core::rule::Action::Term),
        Action::Kill => quote!(::sentry_core::rule::Action::Kill),
        Action::Restart => quote!(::sentry_core::rule::Action::Restart),
        Action::Stop { every } => {
            let every = duration_tokens(*every);
            quote!(::sentry_core::rule::Action::Stop { every: #every })
        }
        Action::Exec { every, words } => {
            let every = match every {
                Some(d) => {
                    let d = duration_tokens(*d);
                    quote!(::std::option::Option::Some(#d))
                }
                None => quote!(::std::option::Option::None),
            };
            let words = words.iter().map(word_tokens);
            quote!(::sentry_core::rule::Action::Exec { every: #every, words: ::std::vec![#(#words),*] })
        }
    }
}

fn word_tokens(w: &Word) -> Tokens {
    let pieces = w.0.iter().map(|p| match p {
        Piece::Text(t) => quote!(::sentry_core::rule::Piece::Text(::std::string::String::from(#t))),
        Piece::Var(v) => {
            let v = match v {
                Var::Name => quote!(Name),
                Var::Pid => quote!(Pid),
                Var::Rmem => quote!(Rmem),
                Var::Vmem => quote!(Vmem),
                Var::Cmdline => quote!(Cmdline),
            };
            quote!(::sentry_core::rule::Piece::Var(::sentry_core::rule::Var::#v))
        }
    });
    quote!(::sentry_core::rule::Word(::std::vec![#(#pieces),*]))
}
