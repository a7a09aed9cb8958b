//! `GET /`: the dashboard, one HTML page with its CSS and JavaScript
//! embedded in the binary (no build step, nothing from another host). It
//! reads `GET /status` and the `GET /events` stream, and scales, restarts
//! and reloads through the same requests as the CLI, with the token the
//! user gives once (kept in `sessionStorage`, never in a URL). It knows
//! nothing of the core: it is the HTTP interface's client.

/// The page.
pub(crate) const PAGE: &str = include_str!("dashboard.html");
