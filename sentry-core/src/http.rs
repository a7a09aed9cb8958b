//! The HTTP control interface: an acceptor thread on a listener it is
//! given, one short-lived thread per connection (at most
//! [`MAX_CONNECTIONS`] at once), request heads parsed with `httparse`, and
//! the routing of SPEC's requests onto a [`CoreHandle`]. It checks the
//! `Host` header (421 unless it names this server: DNS rebinding), the
//! bearer token (in constant time; on a non-loopback address for every
//! request) and the JSON content type of every request that changes
//! something, and answers bad input with a 4xx `{"error": …}` without
//! touching the core.
//!
//! No client can stall it: a request has [`REQUEST_DEADLINE`] to arrive
//! whole and its answer [`ANSWER_DEADLINE`] to leave; when the connection
//! cap is reached the oldest connection still sending its request is
//! dropped for the newcomer; every wait for the core is bounded
//! ([`STATUS_WAIT`], the settle bound of scale and restart) and ends at once
//! with 503 "shutting down" when the instance starts shutting down (the
//! `shutdown` receiver of [`Routes`] disconnects), after which nothing more
//! reaches the core; accept errors (EMFILE…) are backed off, 10 ms doubling
//! to 1 s. An answer is followed by a half-close and a short bounded drain,
//! so an error answer (413) is read by the client, not lost to a reset.
//!
//! [`ControlServer::stop`] stops accepting *without closing the listener*,
//! so connections that arrive meanwhile wait in the kernel's backlog for the
//! next server (after a re-exec) — no request is refused; connections still
//! sending their request get [`STOP_GRACE`] to finish, then are shut down.
//! It knows nothing of processes.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use crate::listener::{Listener, Stream};
use crate::spec::MAX_COUNT;
use crate::supervisor::CoreHandle;
use crate::{sys, Error};

/// Connections served at once (each has a thread of its own while it
/// lasts). Beyond it, the oldest connection still sending its request is
/// dropped for the newcomer.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// The whole request, head and body, must arrive within this.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// The whole answer must be taken by the client within this.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// After an answer: how long, and how many bytes, the rest of a request is
/// read and dropped before closing (closing with unread bytes resets the
/// connection, and the client loses the answer).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;
/// When the server stops (before an exec, at the end), connections still
/// sending their request get this long to finish: enough for a request in
/// flight on loopback, short, because new connections wait in the backlog
/// meanwhile (a trickling client must not hold the control interface shut).
const STOP_GRACE: Duration = Duration::from_millis(100);
/// How long a status waits for the core.
pub(crate) const STATUS_WAIT: Duration = Duration::from_secs(5);
/// Back-off of a failing `accept` (out of fds or memory).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The largest request head and body read; the most headers parsed.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// Stack of a connection thread.
const CONNECTION_STACK: usize = 256 * 1024;

/// Asks for a reload: `None` to rebuild, `Some(path)` to re-exec that binary.
/// Returns the ticket (the id of the build that will answer the request).
pub(crate) type ReloadHook = Arc<dyn Fn(Option<PathBuf>) -> u64 + Send + Sync>;

/// What the routes need.
#[derive(Clone)]
pub(crate) struct Routes {
    pub core: CoreHandle,
    pub token: String,
    pub reload: Option<ReloadHook>,
    /// The longest a scale or restart may take to settle (stop timeouts
    /// and the kill grace): the bound of those waits for the core.
    pub settle: Duration,
    /// Disconnected when the instance starts shutting down: from then on,
    /// every request (and every wait for the core) gets 503 "shutting down".
    pub shutdown: Receiver<()>,
}

impl Routes {
    fn shutting_down(&self) -> bool {
        matches!(self.shutdown.try_recv(), Err(TryRecvError::Disconnected))
    }
}

/// Where a connection is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Its request has not arrived whole.
    Reading,
    /// Routing, waiting for the core.
    Busy,
    /// Writing the answer, then draining.
    Answering,
}

struct Conn {
    fd: RawFd,
    phase: Phase,
    /// Shut down to make room; its thread is on its way out.
    dropped: bool,
}

/// The connections alive, by age (ids increase).
#[derive(Default)]
struct Conns {
    next: u64,
    live: BTreeMap<u64, Conn>,
}

struct Shared {
    conns: Mutex<Conns>,
    /// Notified when a connection ends.
    ended: Condvar,
    /// Readable once the server stops.
    stop: OwnedFd,
    /// The TCP address bound (perhaps unspecified: 0.0.0.0); `None` on a
    /// unix socket, where the peer's user is checked instead.
    bound: Option<SocketAddr>,
    /// What clients connect to: `HOST:PORT` or `unix:PATH`.
    address: String,
    routes: Routes,
    /// Event streams being served.
    streams: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_phase(&self, id: u64, phase: Phase) {
        if let Some(c) = self.conns().live.get_mut(&id) {
            c.phase = phase;
        }
    }

    /// Admits a new connection, making room if needed; `None` if there is
    /// none to make (every connection is waiting for the core).
    fn admit(&self, fd: RawFd) -> Option<u64> {
        let mut conns = self.conns();
        let active = conns.live.values().filter(|c| !c.dropped).count();
        // Dropped ones leave within moments; never let their threads pile up.
        if conns.live.len() >= 2 * MAX_CONNECTIONS {
            return None;
        }
        if active >= MAX_CONNECTIONS {
            let victim = [Phase::Reading, Phase::Answering].iter().find_map(|&phase| {
                conns.live.iter().find(|(_, c)| !c.dropped && c.phase == phase).map(|(id, _)| *id)
            })?;
            let c = conns.live.get_mut(&victim).expect("just found");
            c.dropped = true;
            // SAFETY: the fd is open: its thread closes it only after
            // removing it from this table, under this lock.
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
        }
        let id = conns.next;
        conns.next += 1;
        conns.live.insert(id, Conn { fd, phase: Phase::Reading, dropped: false });
        Some(id)
    }

    fn forget(&self, id: u64) {
        let mut conns = self.conns();
        conns.live.remove(&id);
        if conns.live.is_empty() {
            self.ended.notify_all();
        }
    }
}

/// Removes a connection from the table when its thread ends, however it ends.
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

/// A running control server.
pub(crate) struct ControlServer {
    shared: Arc<Shared>,
    acceptor: JoinHandle<Listener>,
    /// Dropped by [`ControlServer::stop`]: ends the waits for settling.
    interrupt: crossbeam_channel::Sender<()>,
}

impl ControlServer {
    /// Serves `routes` on `listener`.
    pub fn start(listener: Listener, routes: Routes) -> Result<ControlServer, Error> {
        let io = |what: &str, e| Error::io(format!("cannot {what}"), e);
        let bound = listener.tcp_addr();
        let address = listener.address();
        listener.set_nonblocking(true).map_err(|e| io("configure the listener", e))?;
        let stop = sys::eventfd().map_err(|e| io("create an eventfd", e))?;
        let mut routes = routes;
        // A reload stops the server: scales and restarts still settling are
        // answered at once (they go on in the new image) rather than
        // holding the reload, and the interface, until they settle.
        let (interrupt, interrupted) = crossbeam_channel::bounded::<()>(0);
        routes.core =
            routes.core.bounded(STATUS_WAIT, routes.settle, routes.shutdown.clone()).interruptible(interrupted);
        let shared = Arc::new(Shared {
            conns: Mutex::default(),
            ended: Condvar::new(),
            stop,
            bound,
            address,
            routes,
            streams: std::sync::atomic::AtomicUsize::new(0),
        });
        let for_acceptor = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("sentry-http".into())
            .spawn(move || accept_loop(listener, for_acceptor))
            .map_err(|e| io("start the HTTP acceptor", e))?;
        Ok(ControlServer { shared, acceptor, interrupt })
    }

    /// The address the server listens on: `HOST:PORT` or `unix:PATH`.
    pub fn addr(&self) -> String {
        self.shared.address.clone()
    }

    /// Stops accepting, lets connections still sending their request finish
    /// within [`STOP_GRACE`] (then shuts them down), lets those with a whole
    /// request have their answer (every wait for the core is bounded, and
    /// ends at once in a shutdown), and gives the listener back, still open
    /// and listening.
    pub fn stop(self) -> Option<Listener> {
        drop(self.interrupt);
        sys::eventfd_signal(self.shared.stop.as_fd());
        let listener = self.acceptor.join().ok();
        let bound = STOP_GRACE + ANSWER_DEADLINE + LINGER + self.shared.routes.settle.max(STATUS_WAIT);
        let deadline = Instant::now() + bound;
        let mut conns = self.shared.conns();
        while !conns.live.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!("{} HTTP connection(s) still open after {bound:?}: left behind", conns.live.len());
                break;
            }
            conns = self.shared.ended.wait_timeout(conns, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        listener
    }
}

/// Accepts until told to stop; backs off when `accept` fails for want of
/// fds or memory (the listener stays readable: retrying at once would spin).
fn accept_loop(listener: Listener, shared: Arc<Shared>) -> Listener {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut pause: Option<Duration> = None;
    loop {
        let mut fds = [
            libc::pollfd { fd: shared.stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // While paused, only the stop fd is watched.
        let (watched, timeout) = match pause.take() {
            Some(p) => (1, p.as_millis() as i32),
            None => (2, -1),
        };
        if sys::poll(&mut fds[..watched], timeout).is_err() || fds[0].revents != 0 {
            break;
        }
        match listener.accept() {
            Ok(stream) => {
                backoff = ACCEPT_BACKOFF_MIN;
                serve_connection(stream, &shared);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                if backoff == ACCEPT_BACKOFF_MIN {
                    log::warn!("cannot accept a control connection: {e}; backing off");
                }
                // EMFILE, ENFILE, ENOBUFS, ENOMEM — or anything else: never spin.
                pause = Some(backoff);
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    listener
}

/// Registers `stream` and serves it on a thread of its own.
fn serve_connection(stream: Stream, shared: &Arc<Shared>) {
    let Some(id) = shared.admit(stream.as_raw_fd()) else {
        return; // closed: every connection is busy with the core
    };
    let for_thread = shared.clone();
    // Taken back if no thread can be made for it.
    let handed = Arc::new(Mutex::new(Some(stream)));
    let for_thread_stream = handed.clone();
    let spawned =
        std::thread::Builder::new().name("sentry-http-conn".into()).stack_size(CONNECTION_STACK).spawn(move || {
            let shared = &*for_thread;
            let Some(stream) = for_thread_stream.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
            // Declared after the stream, so dropped before it: the fd leaves
            // the table before it is closed (never shut down once reused).
            let _registration = Registration { shared, id };
            serve(&stream, id, shared);
        });
    if let Err(e) = spawned {
        shared.forget(id);
        if let Some(stream) = handed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if !REFUSING.swap(true, Ordering::Relaxed) {
                log::warn!("cannot start a thread for a control connection: {e}; answering 503 until one starts");
            }
            refuse(&stream, shared);
        }
    } else {
        REFUSING.store(false, Ordering::Relaxed);
    }
}

/// Whether connections are being refused for want of threads (warned once).
static REFUSING: AtomicBool = AtomicBool::new(false);

/// How long the accept loop spends on a connection it cannot serve.
const REFUSE_DEADLINE: Duration = Duration::from_millis(20);

/// Answers 503 on the accept loop's own thread, without reading the
/// request, when no thread could be made for the connection (EAGAIN at a
/// tasks or pids limit): the client hears why instead of a closed
/// connection, and can try again. Bounded by [`REFUSE_DEADLINE`].
fn refuse(stream: &Stream, shared: &Shared) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut conn =
        Socket { stream, stop: shared.stop.as_raw_fd(), deadline: Instant::now() + REFUSE_DEADLINE, stopping: false };
    // What the request has sent so far: unread, it would reset the connection at the close.
    let mut sink = [0u8; 8192];
    let _ = conn.read(&mut sink);
    let body = error_body("no thread can be started to serve this request now (a tasks limit?); try again");
    let answer = format!(
        "HTTP/1.1 503 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
         Retry-After: 1\r\nCache-Control: no-store\r\n\r\n{body}",
        reason(503),
        body.len()
    );
    if conn.write_all(answer.as_bytes()).is_ok() {
        stream.shutdown_write();
        let _ = conn.read(&mut sink);
    }
}

/// A socket with a deadline, cut short when the server stops.
struct Socket<'a> {
    stream: &'a Stream,
    stop: RawFd,
    deadline: Instant,
    stopping: bool,
}

impl Socket<'_> {
    /// Waits until the socket is ready for `events`; `false` at the deadline.
    fn wait(&mut self, events: libc::c_short) -> bool {
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return false;
            }
            let left = self.deadline - now;
            let mut fds = [
                libc::pollfd { fd: self.stream.as_raw_fd(), events, revents: 0 },
                libc::pollfd { fd: self.stop, events: libc::POLLIN, revents: 0 },
            ];
            let watched = if self.stopping { 1 } else { 2 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            if sys::poll(&mut fds[..watched], ms).is_err() {
                return false;
            }
            if fds[0].revents != 0 {
                return true;
            }
            if watched == 2 && fds[1].revents != 0 {
                self.stopping = true;
                self.deadline = self.deadline.min(Instant::now() + STOP_GRACE);
            }
        }
    }

    /// Reads some bytes: `Ok(0)` at the end, `Err` at the deadline or on error.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        loop {
            match (&*self.stream).read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if !self.wait(libc::POLLIN) {
                        return Err(());
                    }
                }
                Err(_) => return Err(()),
            }
        }
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), ()> {
        while !bytes.is_empty() {
            match (&*self.stream).write(bytes) {
                Ok(0) => return Err(()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if !self.wait(libc::POLLOUT) {
                        return Err(());
                    }
                }
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    /// What followed `?` in the target (undecoded).
    query: String,
    headers: Vec<(String, String)>,
    body: String,
    /// The address this connection reached.
    local: Option<SocketAddr>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why no request was read.
enum Unread {
    /// Nothing to answer: the client left, was dropped, or sent nothing.
    Gone,
    /// Answer this 4xx.
    Answer(u16, String),
}

/// Reads one request within the connection's deadline.
fn read_request(conn: &mut Socket<'_>) -> Result<Request, Unread> {
    let bad = |m: &str| Unread::Answer(400, m.to_string());
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    let (head_len, mut request) = loop {
        let room = (MAX_HEAD + MAX_BODY - buf.len()).min(chunk.len());
        let n = match conn.read(&mut chunk[..room]) {
            Ok(0) if buf.is_empty() => return Err(Unread::Gone),
            Ok(0) => return Err(bad("incomplete request head")),
            Ok(n) => n,
            Err(()) if conn.stopping || buf.is_empty() => return Err(Unread::Gone),
            Err(()) => return Err(Unread::Answer(408, "the request did not arrive in time".into())),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let request = Request {
                    method: parsed.method.unwrap_or_default().to_string(),
                    path: parsed.path.unwrap_or_default().split('?').next().unwrap_or("").to_string(),
                    query: parsed
                        .path
                        .unwrap_or_default()
                        .split_once('?')
                        .map(|(_, q)| q.to_string())
                        .unwrap_or_default(),
                    headers: parsed
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string()))
                        .collect(),
                    body: String::new(),
                    local: conn.stream.local_addr(),
                };
                break (len, request);
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(Unread::Answer(431, "the request head is too large".into()))
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(Unread::Answer(431, "too many header fields".into())),
            Err(e) => return Err(bad(&format!("malformed request: {e}"))),
        }
    };
    if request.header("Transfer-Encoding").is_some() {
        return Err(Unread::Answer(411, "send the body with a Content-Length".into()));
    }
    let lengths: Vec<&str> = request
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let length: usize = match lengths.as_slice() {
        [] => 0,
        [one, rest @ ..] if rest.iter().all(|r| r == one) => digits(one).ok_or_else(|| bad("bad Content-Length"))?,
        _ => return Err(bad("conflicting Content-Length headers")),
    };
    if length > MAX_BODY {
        return Err(Unread::Answer(413, format!("the body is too large (at most {MAX_BODY} bytes)")));
    }
    while buf.len() < head_len + length {
        let room = (head_len + length - buf.len()).min(chunk.len());
        match conn.read(&mut chunk[..room]) {
            Ok(0) => return Err(bad("incomplete body")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(()) if conn.stopping => return Err(Unread::Gone),
            Err(()) => return Err(Unread::Answer(408, "the request did not arrive in time".into())),
        }
    }
    request.body =
        String::from_utf8(buf[head_len..head_len + length].to_vec()).map_err(|_| bad("the body is not UTF-8"))?;
    Ok(request)
}

/// One connection, start to answer.
fn serve(stream: &Stream, id: u64, shared: &Shared) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut conn =
        Socket { stream, stop: shared.stop.as_raw_fd(), deadline: Instant::now() + REQUEST_DEADLINE, stopping: false };
    // A unix socket answers its owner and root only (unix(7) SO_PEERCRED).
    let peer_refused = stream.is_unix() && stream.peer_uid().is_none_or(|uid| uid != 0 && uid != sys::own_uid());
    let Reply { code, content_type, body } = match read_request(&mut conn) {
        Ok(_) if peer_refused => Reply::json(403, error_body("only the owner of this socket, or root, may use it")),
        Ok(request) => {
            shared.set_phase(id, Phase::Busy);
            match route(&request, shared) {
                Routed::Reply(reply) => reply,
                Routed::EventStream { since, _place } => {
                    shared.set_phase(id, Phase::Answering);
                    return stream_events(&mut conn, since, shared);
                }
            }
        }
        Err(Unread::Gone) => return,
        Err(Unread::Answer(code, message)) => Reply::json(code, error_body(&message)),
    };
    shared.set_phase(id, Phase::Answering);
    let mut answer = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        reason(code),
        body.len()
    );
    if content_type.starts_with("text/html") {
        // The dashboard: nothing from another origin, and never in a frame.
        answer.push_str(
            "Content-Security-Policy: default-src 'self'; script-src 'self' 'unsafe-inline'; \
             style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'\r\n\
             X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n",
        );
    }
    if code == 401 {
        answer.push_str("WWW-Authenticate: Bearer\r\n");
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    conn.deadline = Instant::now() + ANSWER_DEADLINE;
    if conn.stopping {
        conn.deadline = conn.deadline.min(Instant::now() + STOP_GRACE);
    }
    if conn.write_all(answer.as_bytes()).is_err() {
        return;
    }
    // Half-close, then read what the client still sends until it closes
    // (bounded): closing with unread bytes would reset the connection and
    // could destroy the answer before the client reads it.
    stream.shutdown_write();
    conn.deadline = conn.deadline.min(Instant::now() + LINGER);
    let mut drained = 0;
    let mut sink = [0u8; 8192];
    while drained < LINGER_BYTES {
        match conn.read(&mut sink) {
            Ok(0) | Err(()) => break,
            Ok(n) => drained += n,
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// An answer: its status, type and body.
struct Reply {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn json(code: u16, body: String) -> Reply {
        Reply { code, content_type: "application/json", body }
    }
}

/// What a request leads to: an answer, or a stream of events.
enum Routed<'a> {
    Reply(Reply),
    /// `GET /events` with `Accept: text/event-stream`: after `since`, in
    /// one of the [`MAX_STREAMS`] places.
    EventStream {
        since: u64,
        _place: StreamPlace<'a>,
    },
}

/// One of the places for event streams, given back when dropped.
struct StreamPlace<'a>(&'a std::sync::atomic::AtomicUsize);

impl StreamPlace<'_> {
    /// A place, if one is free.
    fn take(streams: &std::sync::atomic::AtomicUsize) -> Option<StreamPlace<'_>> {
        use std::sync::atomic::Ordering::SeqCst;
        streams.fetch_update(SeqCst, SeqCst, |n| (n < MAX_STREAMS).then_some(n + 1)).ok().map(|_| StreamPlace(streams))
    }
}

impl Drop for StreamPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The longest `GET /events?wait=S` waits, and the longest an event stream
/// lasts before the client reconnects (with `Last-Event-ID`, losing nothing).
const EVENTS_WAIT_MAX: Duration = Duration::from_secs(60);
const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// Event streams served at once (each holds a connection and its thread).
const MAX_STREAMS: usize = 16;
/// Events in one answer.
const EVENTS_PAGE: usize = 500;

fn route<'a>(request: &Request, shared: &'a Shared) -> Routed<'a> {
    let routes = &shared.routes;
    let reply = |code, body| Routed::Reply(Reply::json(code, body));
    if routes.shutting_down() {
        return reply(503, error_body(&Error::ShuttingDown.to_string()));
    }
    if request.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("Host")).count() > 1 {
        return reply(400, error_body("more than one Host header"));
    }
    // On a unix socket no web page can reach us (DNS rebinding needs TCP):
    // the Host header is whatever the client says.
    if let Some(bound) = shared.bound {
        let host = request.header("Host");
        if !host_allowed(host, bound, request.local) {
            let host = host.unwrap_or_default();
            return reply(421, error_body(&format!("this server does not answer for Host {host:?}")));
        }
        // Off loopback, anyone on the network could read the state: the token is
        // needed for every request.
        if !bound.ip().is_loopback() && !has_token(request, &routes.token) {
            return reply(401, error_body("missing or wrong bearer token"));
        }
    }
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", [""]) => Routed::Reply(Reply {
            code: 200,
            content_type: "text/html; charset=utf-8",
            body: crate::dashboard::PAGE.to_string(),
        }),
        ("GET", ["metrics"]) => match crate::metrics::render(&routes.core) {
            Ok(text) => Routed::Reply(Reply { code: 200, content_type: crate::metrics::CONTENT_TYPE, body: text }),
            Err(e) => {
                let (code, body) = unavailable(e);
                reply(code, body)
            }
        },
        ("GET", ["events"]) => events(request, shared),
        (_, [""]) | (_, ["metrics"]) | (_, ["events"]) => reply(405, error_body("method not allowed")),
        _ => {
            let (code, body) = route_json(request, segments.as_slice(), routes);
            reply(code, body)
        }
    }
}

/// `GET /events?since=SEQ[&wait=S]`, or its stream.
fn events<'a>(request: &Request, shared: &'a Shared) -> Routed<'a> {
    let reply = |code, body| Routed::Reply(Reply::json(code, body));
    let mut since = 0;
    let mut wait = Duration::ZERO;
    // Decoded as a form is (`%31` is `1`, `+` a space): what a client library sends.
    for (key, value) in form_urlencoded::parse(request.query.as_bytes()) {
        let value = value.as_ref();
        match key.as_ref() {
            "since" => match digits(value).map(|n| n as u64) {
                Some(n) => since = n,
                None => return reply(400, error_body(&format!("since must be a sequence number, not {value:?}"))),
            },
            "wait" => match digits(value) {
                Some(s) => wait = Duration::from_secs(s as u64).min(EVENTS_WAIT_MAX),
                None => return reply(400, error_body(&format!("wait must be whole seconds, not {value:?}"))),
            },
            _ => return reply(400, error_body(&format!("unknown parameter {key:?} (since, wait)"))),
        }
    }
    // An EventSource that reconnects says where it was.
    if let Some(last) = request.header("Last-Event-ID").and_then(digits) {
        since = last as u64;
    }
    if request.header("Accept").is_some_and(|a| a.contains("text/event-stream")) {
        return match StreamPlace::take(&shared.streams) {
            Some(_place) => Routed::EventStream { since, _place },
            None => reply(503, error_body(&format!("too many event streams (at most {MAX_STREAMS})"))),
        };
    }
    let stopping = || shared.routes.shutting_down() || stop_signalled(shared);
    let page = crate::events::events_since(since, EVENTS_PAGE, Instant::now() + wait, &stopping);
    reply(200, serde_json::to_string(&page).unwrap_or_default())
}

/// Whether the client of `fd` has closed its end or the connection broke.
fn peer_gone(fd: RawFd) -> bool {
    let mut fds = [libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 }];
    sys::poll(&mut fds, 0).is_ok_and(|n| n > 0)
        && fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Whether the server has been told to stop (its eventfd is readable).
fn stop_signalled(shared: &Shared) -> bool {
    let mut fds = [libc::pollfd { fd: shared.stop.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    sys::poll(&mut fds, 0).is_ok_and(|n| n > 0)
}

/// Streams events (`text/event-stream`: `id`, `event` and `data` lines)
/// until the client leaves, the server stops or [`STREAM_LIFETIME`] is
/// up; a comment every 15 s keeps the connection alive.
fn stream_events(conn: &mut Socket<'_>, mut since: u64, shared: &Shared) {
    let ends = Instant::now() + STREAM_LIFETIME;
    conn.deadline = Instant::now() + ANSWER_DEADLINE;
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n: events\n\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    // The client leaving frees its place at once, not at the next write.
    let fd = conn.stream.as_raw_fd();
    let stopping = || shared.routes.shutting_down() || stop_signalled(shared) || peer_gone(fd);
    while Instant::now() < ends && !stopping() {
        let page = crate::events::events_since(since, EVENTS_PAGE, Instant::now() + Duration::from_secs(15), &stopping);
        let mut text = String::new();
        if page.lost {
            text.push_str(&format!("event: lost\ndata: {{\"lost\": true, \"since\": {since}}}\n\n"));
        }
        for e in &page.events {
            let data = serde_json::to_string(e).unwrap_or_default();
            text.push_str(&format!("id: {}\nevent: {}\ndata: {data}\n\n", e.seq, e.kind));
        }
        if text.is_empty() {
            text.push_str(": keep-alive\n\n");
        }
        since = page.next.max(since);
        conn.deadline = Instant::now() + ANSWER_DEADLINE;
        if conn.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// SPEC's JSON requests.
fn route_json(request: &Request, segments: &[&str], routes: &Routes) -> (u16, String) {
    match (request.method.as_str(), segments) {
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

/// Whether `Host` names this server: missing, the bound address, the address
/// this connection reached, `localhost`, or a loopback literal (127.0.0.0/8,
/// `[::1]`) — with this server's port (plain digits, no sign), or none. Anything else is a name a
/// web page could have rebound to 127.0.0.1 (DNS rebinding).
fn host_allowed(host: Option<&str>, bound: SocketAddr, local: Option<SocketAddr>) -> bool {
    let Some(host) = host else { return true };
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else { return false };
        match after {
            "" => (inside, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (inside, Some(p)),
                None => return false,
            },
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if digits(port).and_then(|p| u16::try_from(p).ok()) != Some(bound.port()) {
            return false;
        }
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // IPv6 literals are bracketed; a bare IPv4 literal is not.
    let bracketed = host.starts_with('[');
    let ip: Option<IpAddr> = name.parse().ok().filter(|ip: &IpAddr| ip.is_ipv6() == bracketed);
    let Some(ip) = ip else { return false };
    ip.is_loopback() || ip == bound.ip() || local.is_some_and(|l| l.ip() == ip)
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
        // Taken, not yet settled: it goes on in the new image.
        Err(e @ Error::Interrupted) => {
            (202, serde_json::json!({ "accepted": true, "note": e.to_string() }).to_string())
        }
        Err(e @ Error::UnknownEntry(_)) => (404, error_body(&e.to_string())),
        Err(e @ (Error::BadCount(_) | Error::OverBudget(_))) => (400, error_body(&e.to_string())),
        Err(e @ Error::Unkillable { .. }) => (409, error_body(&e.to_string())),
        Err(e @ Error::Incomplete { .. }) => (500, error_body(&e.to_string())),
        Err(e) => unavailable(e),
    }
}

/// 503 for a core that is stopping or gone: `{"error": "shutting down"}`
/// (SPEC); 504 for one that did not answer in time.
fn unavailable(e: Error) -> (u16, String) {
    match e {
        Error::ShuttingDown | Error::CoreGone => (503, error_body(&Error::ShuttingDown.to_string())),
        e @ Error::NoAnswer(_) => (504, error_body(&e.to_string())),
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

/// `Authorization: Bearer TOKEN`, the scheme in any case (RFC 7235), the
/// token compared in constant time.
fn has_token(request: &Request, token: &str) -> bool {
    let Some(value) = request.header("Authorization") else { return false };
    let value = value.trim();
    let Some((scheme, credentials)) = value.split_once([' ', '\t']) else { return false };
    scheme.eq_ignore_ascii_case("Bearer") && same_secret(credentials.trim().as_bytes(), token.as_bytes())
}

/// Compares a secret without an early exit: the time taken does not tell
/// how many leading bytes were right (only whether the length is).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let diff = given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

fn authorize(request: &Request, token: &str) -> Result<(), (u16, String)> {
    if !has_token(request, token) {
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
    use super::*;

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

    #[test]
    fn hosts_are_checked() {
        let bound: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let ok = |h: Option<&str>| host_allowed(h, bound, Some(bound));
        for good in [
            None,
            Some("127.0.0.1:4000"),
            Some("127.0.0.1"),
            Some("127.3.2.1:4000"),
            Some("localhost"),
            Some("LocalHost:4000"),
            Some("[::1]"),
            Some("[::1]:4000"),
        ] {
            assert!(ok(good), "{good:?}");
        }
        for bad in [
            "evil.example:4000",
            "evil.example",
            "localhost:4001",
            "127.0.0.1:4001",
            "10.0.0.1:4000",
            "::1",
            "[127.0.0.1]",
            "[::1]x",
            "localhost.evil.example",
            "",
        ] {
            assert!(!ok(Some(bad)), "{bad}");
        }
        // On 0.0.0.0, the address a connection reached is this server.
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let lan: SocketAddr = "192.168.1.5:4000".parse().unwrap();
        assert!(host_allowed(Some("192.168.1.5:4000"), any, Some(lan)));
        assert!(host_allowed(Some("0.0.0.0:4000"), any, Some(lan)));
        assert!(!host_allowed(Some("192.168.1.6:4000"), any, Some(lan)));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abcd", b"abcd"));
        assert!(!same_secret(b"abce", b"abcd"));
        assert!(!same_secret(b"xbcd", b"abcd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"abcd"));
    }
}

/// A decimal number written as HTTP writes numbers (RFC 9110: `1*DIGIT`):
/// no sign, no spaces (`str::parse` would take `+12`).
fn digits(text: &str) -> Option<usize> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod digit_tests {
    #[test]
    fn numbers_are_plain_digits() {
        assert_eq!(super::digits("12"), Some(12));
        assert_eq!(super::digits("007"), Some(7));
        for bad in ["+12", "-1", " 1", "1 ", "", "0x10", "1e3"] {
            assert_eq!(super::digits(bad), None, "{bad:?}");
        }
    }
}
