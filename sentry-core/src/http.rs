//! The HTTP control interface: an acceptor thread on a listener it is
//! given, a few worker threads, a minimal HTTP/1.x request reader, and the
//! routing of SPEC's requests onto a [`CoreHandle`]. It checks the bearer
//! token and the JSON content type of every request that changes something,
//! and answers bad input with a 4xx `{"error": …}` without touching the core.
//! [`ControlServer::stop`] stops accepting *without closing the listener*, so
//! connections that arrive meanwhile wait in the kernel's backlog for the next
//! server (after a re-exec) — no request is refused. It knows nothing of
//! processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};

use crate::spec::MAX_COUNT;
use crate::supervisor::CoreHandle;
use crate::{sys, Error};

/// Requests handled at once; more wait in the queue, then in the backlog.
const WORKERS: usize = 4;
/// The largest request head and body read.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// A client that sends nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks for a reload: `None` to rebuild, `Some(path)` to re-exec that binary.
/// Returns the ticket (the id of the build that will answer the request).
pub(crate) type ReloadHook = Arc<dyn Fn(Option<PathBuf>) -> u64 + Send + Sync>;

/// What the routes need.
#[derive(Clone)]
pub(crate) struct Routes {
    pub core: CoreHandle,
    pub token: String,
    pub reload: Option<ReloadHook>,
}

/// A running control server.
pub(crate) struct ControlServer {
    stop: OwnedFd,
    acceptor: JoinHandle<TcpListener>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl ControlServer {
    /// Serves `routes` on `listener`.
    pub fn start(listener: TcpListener, routes: Routes) -> Result<ControlServer, Error> {
        let io = |what: &str, e| Error::io(format!("cannot {what}"), e);
        let addr = listener.local_addr().map_err(|e| io("read the bound address", e))?;
        listener.set_nonblocking(true).map_err(|e| io("configure the listener", e))?;
        let stop = sys::eventfd().map_err(|e| io("create an eventfd", e))?;
        let stop_for_acceptor = stop.try_clone().map_err(|e| io("duplicate an eventfd", e))?;
        let (tx, rx) = bounded::<TcpStream>(64);
        let mut workers = Vec::new();
        for n in 0..WORKERS {
            let (rx, routes): (Receiver<TcpStream>, Routes) = (rx.clone(), routes.clone());
            let worker = std::thread::Builder::new()
                .name(format!("sentry-http-{n}"))
                .spawn(move || {
                    for stream in rx {
                        serve(stream, &routes);
                    }
                })
                .map_err(|e| io("start an HTTP worker", e))?;
            workers.push(worker);
        }
        let acceptor = std::thread::Builder::new()
            .name("sentry-http".into())
            .spawn(move || {
                loop {
                    let mut fds = [
                        libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                        libc::pollfd { fd: stop_for_acceptor.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                    ];
                    if sys::poll(&mut fds, -1).is_err() || fds[1].revents != 0 {
                        break;
                    }
                    if let Ok((stream, _)) = listener.accept() {
                        if tx.send(stream).is_err() {
                            break;
                        }
                    }
                }
                listener
            })
            .map_err(|e| io("start the HTTP acceptor", e))?;
        Ok(ControlServer { stop, acceptor, workers, addr })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, answers the requests already accepted, joins every
    /// thread, and gives the listener back, still open and listening.
    pub fn stop(self) -> Option<TcpListener> {
        sys::eventfd_signal(self.stop.as_fd());
        let listener = self.acceptor.join().ok();
        for w in self.workers {
            let _ = w.join();
        }
        listener
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `Err` is the 4xx to answer.
fn read_request(stream: &TcpStream) -> Result<Request, (u16, String)> {
    let bad = |m: &str| (400, m.to_string());
    let mut reader = BufReader::new(stream.take((MAX_HEAD + MAX_BODY) as u64));
    let mut line = String::new();
    let mut head_len = 0;
    let mut read_line = |line: &mut String| -> Result<(), (u16, String)> {
        line.clear();
        let n = reader.read_line(line).map_err(|_| bad("cannot read the request"))?;
        head_len += n;
        if n == 0 || head_len > MAX_HEAD {
            return Err(bad("incomplete or oversized request head"));
        }
        Ok(())
    };
    read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("only HTTP/1.x is spoken here"));
    }
    let (method, path) = (method.to_string(), target.split('?').next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    loop {
        read_line(&mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("malformed header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut request = Request { method, path, headers, body: String::new() };
    let length: usize = match request.header("Content-Length") {
        Some(v) => v.parse().map_err(|_| bad("bad Content-Length"))?,
        None => 0,
    };
    if length > MAX_BODY {
        return Err((413, "the body is too large".to_string()));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|_| bad("incomplete body"))?;
    request.body = String::from_utf8(body).map_err(|_| bad("the body is not UTF-8"))?;
    Ok(request)
}

/// One connection, start to answer.
fn serve(stream: TcpStream, routes: &Routes) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let (code, body) = match read_request(&stream) {
        Ok(request) => route(&request, routes),
        Err((code, message)) => (code, error_body(&message)),
    };
    let reason = match code {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        _ => "Service Unavailable",
    };
    let answer = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.flush();
}

fn route(request: &Request, routes: &Routes) -> (u16, String) {
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["status"]) => match routes.core.status() {
            Ok(status) => (200, serde_json::to_string(&status).unwrap_or_default()),
            Err(e) => unavailable(e),
        },
        ("POST", ["entries", name, action @ ("scale" | "restart")]) => match authorize(request, &routes.token) {
            Err((code, message)) => (code, error_body(&message)),
            Ok(()) => change_entry(&routes.core, name, action, &request.body),
        },
        ("POST", ["reload"]) => match authorize(request, &routes.token) {
            Err((code, message)) => (code, error_body(&message)),
            Ok(()) => reload(routes, &request.body),
        },
        (_, ["status"]) | (_, ["reload"]) | (_, ["entries", _, "scale" | "restart"]) => {
            (405, error_body("method not allowed"))
        }
        _ => (404, error_body(&format!("no such resource: {}", request.path))),
    }
}

/// `POST /reload` with an optional `{"exec": PATH}`.
fn reload(routes: &Routes, body: &str) -> (u16, String) {
    let Some(hook) = &routes.reload else {
        return (503, error_body("this supervisor cannot reload (embedded)"));
    };
    let exec = if body.trim().is_empty() {
        None
    } else {
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(v) if v.is_object() => match &v["exec"] {
                serde_json::Value::Null => None,
                serde_json::Value::String(p) if !p.is_empty() => Some(PathBuf::from(p)),
                other => return (400, error_body(&format!("bad \"exec\": {other}"))),
            },
            _ => return (400, error_body("the body must be a JSON object")),
        }
    };
    let ticket = hook(exec);
    (202, serde_json::json!({ "reload": ticket }).to_string())
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
        Err(e @ (Error::BadCount(_) | Error::OverBudget(_))) => (400, error_body(&e.to_string())),
        Err(e @ Error::Incomplete { .. }) => (500, error_body(&e.to_string())),
        Err(e) => unavailable(e),
    }
}

/// 503 for a core that is stopping or gone: `{"error": "shutting down"}` (SPEC).
fn unavailable(e: Error) -> (u16, String) {
    match e {
        Error::ShuttingDown | Error::CoreGone => (503, error_body(&Error::ShuttingDown.to_string())),
        other => (503, error_body(&other.to_string())),
    }
}

/// `{"count": N}` with `0 <= N <= MAX_COUNT`.
fn parse_count(body: &str) -> Result<usize, String> {
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let count = value.get("count").ok_or("the body has no \"count\"")?;
    match count.as_u64() {
        Some(n) if n <= MAX_COUNT as u64 => Ok(n as usize),
        _ => Err(format!("bad count {count}: expected an integer from 0 to {MAX_COUNT}")),
    }
}

fn authorize(request: &Request, token: &str) -> Result<(), (u16, String)> {
    let expected = format!("Bearer {token}");
    if request.header("Authorization") != Some(expected.as_str()) {
        return Err((401, "missing or wrong bearer token".to_string()));
    }
    let json_type = request
        .header("Content-Type")
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err((415, "Content-Type must be application/json".to_string()));
    }
    Ok(())
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_are_checked() {
        assert_eq!(parse_count(r#"{"count": 3}"#), Ok(3));
        assert_eq!(parse_count(r#"{"count": 0}"#), Ok(0));
        for bad in
            [r#"{"count": -1}"#, r#"{"count": 1.5}"#, r#"{"count": "2"}"#, r#"{}"#, "", "[", r#"{"count": 99999999}"#]
        {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
    }
}
