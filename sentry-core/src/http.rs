//! The HTTP control interface: a tiny_http server on a listener it is given,
//! a few worker threads, and the routing of SPEC's requests onto a
//! [`CoreHandle`]. It checks the bearer token and the JSON content type of
//! every request that changes something, and answers bad input with a 4xx
//! `{"error": …}` without touching the core. It knows nothing of processes.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response};

use crate::spec::MAX_COUNT;
use crate::supervisor::CoreHandle;
use crate::Error;

/// Requests handled at once; more wait in tiny_http's queue.
const WORKERS: usize = 4;
/// The largest request body read.
const MAX_BODY: u64 = 64 * 1024;

/// A running control server.
pub(crate) struct ControlServer {
    server: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    closing: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl ControlServer {
    /// Serves on `listener`, driving `core`, accepting changes only with `token`.
    pub fn start(
        listener: TcpListener,
        core: CoreHandle,
        token: String,
    ) -> Result<ControlServer, Error> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the bound address", e))?;
        let server = tiny_http::Server::from_listener(listener, None).map_err(|e| {
            Error::io(
                "cannot start the HTTP server",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let server = Arc::new(server);
        let closing = Arc::new(AtomicBool::new(false));
        let token = Arc::new(token);
        let mut workers = Vec::new();
        for n in 0..WORKERS {
            let (server, closing, core, token) =
                (server.clone(), closing.clone(), core.clone(), token.clone());
            let worker = std::thread::Builder::new()
                .name(format!("sentry-http-{n}"))
                .spawn(move || {
                    while let Ok(request) = server.recv() {
                        if closing.load(Ordering::SeqCst) {
                            let _ = request.respond(json(503, &error_body("shutting down")));
                            continue;
                        }
                        serve(request, &core, &token);
                    }
                })
                .map_err(|e| Error::io("cannot start an HTTP worker", e))?;
            workers.push(worker);
        }
        Ok(ControlServer {
            server,
            workers,
            closing,
            addr,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes the requests in hand, joins the workers.
    pub fn stop(self) {
        self.closing.store(true, Ordering::SeqCst);
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// One request, start to answer.
fn serve(mut request: Request, core: &CoreHandle, token: &str) {
    let method = request.method().clone();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (code, body) = match (&method, segments.as_slice()) {
        (Method::Get, ["status"]) => match core.status() {
            Ok(status) => (200, serde_json::to_string(&status).unwrap_or_default()),
            Err(e) => (503, error_body(&e.to_string())),
        },
        (Method::Post, ["entries", name, action @ ("scale" | "restart")]) => {
            match authorize(&request, token).and_then(|()| read_body(&mut request)) {
                Err((code, message)) => (code, error_body(&message)),
                Ok(body) => change_entry(core, name, action, &body),
            }
        }
        (_, ["status"]) | (_, ["entries", _, "scale" | "restart"]) => {
            (405, error_body("method not allowed"))
        }
        _ => (404, error_body(&format!("no such resource: {path}"))),
    };
    let _ = request.respond(json(code, &body));
}

fn change_entry(core: &CoreHandle, name: &str, action: &str, body: &str) -> (u16, String) {
    let result = if action == "scale" {
        match parse_count(body) {
            Ok(count) => core.scale(name, count),
            Err(message) => return (400, error_body(&message)),
        }
    } else {
        core.restart(name)
    };
    match result {
        Ok(entry) => (200, serde_json::to_string(&entry).unwrap_or_default()),
        Err(e @ Error::UnknownEntry(_)) => (404, error_body(&e.to_string())),
        Err(e @ Error::BadCount(_)) => (400, error_body(&e.to_string())),
        Err(e) => (503, error_body(&e.to_string())),
    }
}

/// `{"count": N}` with `0 <= N <= MAX_COUNT`.
fn parse_count(body: &str) -> Result<usize, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let count = value.get("count").ok_or("the body has no \"count\"")?;
    match count.as_u64() {
        Some(n) if n <= MAX_COUNT as u64 => Ok(n as usize),
        _ => Err(format!(
            "bad count {count}: expected an integer from 0 to {MAX_COUNT}"
        )),
    }
}

fn authorize(request: &Request, token: &str) -> Result<(), (u16, String)> {
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().trim().to_string())
    };
    let expected = format!("Bearer {token}");
    if header("Authorization").as_deref() != Some(expected.as_str()) {
        return Err((401, "missing or wrong bearer token".to_string()));
    }
    let json_type = header("Content-Type").is_some_and(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/json")
    });
    if !json_type {
        return Err((415, "Content-Type must be application/json".to_string()));
    }
    Ok(())
}

fn read_body(request: &mut Request) -> Result<String, (u16, String)> {
    let mut body = String::new();
    let mut reader = request.as_reader().take(MAX_BODY + 1);
    reader
        .read_to_string(&mut body)
        .map_err(|e| (400, format!("cannot read the body: {e}")))?;
    if body.len() as u64 > MAX_BODY {
        return Err((413, "the body is too large".to_string()));
    }
    Ok(body)
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn json(code: u16, body: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes("Content-Type", "application/json").expect("a valid header");
    Response::from_string(body)
        .with_status_code(code)
        .with_header(header)
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_are_checked() {
        assert_eq!(parse_count(r#"{"count": 3}"#), Ok(3));
        assert_eq!(parse_count(r#"{"count": 0}"#), Ok(0));
        for bad in [
            r#"{"count": -1}"#,
            r#"{"count": 1.5}"#,
            r#"{"count": "2"}"#,
            r#"{}"#,
            "",
            "[",
            r#"{"count": 99999999}"#,
        ] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
    }
}
