//! The control interface under clients that misbehave: no client — slow,
//! flooding or hostile — can stall supervision, a reload or a shutdown.
//! Real sockets on 127.0.0.1, a real instance (`tconf`), real signals.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");

/// How fast a status must answer while misbehaving clients are connected
/// (it takes milliseconds when all is well; generous for a busy machine).
const PROMPT: Duration = Duration::from_secs(2);

fn addr(s: &Sentry) -> String {
    std::fs::read_to_string(s.file("tconf.addr")).unwrap().trim().to_string()
}

fn token(s: &Sentry) -> String {
    std::fs::read_to_string(s.file("tconf.token")).unwrap().trim().to_string()
}

/// Sends `request` raw and reads the whole answer within `patience`:
/// (status, body), or why not.
fn exchange(addr: &str, request: &[u8], patience: Duration) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(patience)).unwrap();
    stream.set_write_timeout(Some(patience)).unwrap();
    stream.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| format!("read: {e} (after {} bytes)", answer.len()))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(format!("no status: {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

fn get_status(addr: &str, headers: &str) -> (u16, String) {
    let request = format!("GET /status HTTP/1.1\r\n{headers}Connection: close\r\n\r\n");
    exchange(addr, request.as_bytes(), PATIENCE).expect("an answer")
}

/// A status over raw HTTP, timed.
fn timed_status(addr: &str) -> (Result<(u16, String), String>, Duration) {
    let t = Instant::now();
    let got = exchange(addr, format!("GET /status HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(), PATIENCE);
    (got, t.elapsed())
}

fn scale(addr: &str, auth: &str, count: usize) -> (u16, String) {
    let body = format!("{{\"count\": {count}}}");
    let request = format!(
        "POST /entries/idle/scale HTTP/1.0\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, request.as_bytes(), PATIENCE).expect("an answer")
}

/// CPU time (user + system) of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let f = stat_fields(pid).expect("stat");
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> u64 {
    // SAFETY: plain sysconf.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as u64 }
}

#[test]
fn shutdown_never_hangs_under_clients_polling_status() {
    let mut s = Sentry::start(TCONF, "deafstop", &[]);
    let addr = addr(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, shutting_down) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            let (answered, shutting_down) = (answered.clone(), shutting_down.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let request = format!("GET /status HTTP/1.0\r\nHost: {addr}\r\n\r\n");
                    match exchange(&addr, request.as_bytes(), Duration::from_secs(60)) {
                        Ok((200, _)) => answered.fetch_add(1, Ordering::Relaxed),
                        Ok((503, body)) => {
                            assert!(body.contains("shutting down"), "{body}");
                            shutting_down.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok((code, body)) => panic!("unexpected answer {code}: {body}"),
                        // Refused once the listener is gone, or cut at the very end.
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    wait_for("the clients to be answered", || (answered.load(Ordering::Relaxed) > 40).then_some(()));
    let children = s.pids("idle");
    // SAFETY: SIGTERM to the instance this test started.
    unsafe { libc::kill(s.pid(), libc::SIGTERM) };
    // The shutdown takes 3 s (a child ignores SIGTERM): clients meet it.
    let t = Instant::now();
    let code = s.wait_exit();
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client panicked");
    }
    eprintln!("shutdown under 8 polling clients took {took:?}");
    assert_eq!(code, Some(0), "console:\n{}", s.console());
    assert!(took < Duration::from_secs(15), "the shutdown took {took:?}");
    assert!(shutting_down.load(Ordering::Relaxed) > 0, "no client met the shutdown with a 503");
    assert!(s.console().contains("Bye."), "{}", s.console());
    for pid in children {
        assert!(!alive(pid), "child {pid} survived");
    }

    // The pidfile is free: a new instance starts in the same directory.
    let dir = std::mem::replace(&mut s.dir, TempDir::new("spare"));
    let again = Sentry::spawn_in(dir, TCONF, "basic", &[]).waiting();
    let out = again.cli(&["stop"]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
}

#[test]
fn trickling_clients_stall_neither_status_nor_a_reload() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let addr = addr(&s);
    // Four tokenless clients sending one byte every 4 s.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let tricklers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop, started) = (addr.clone(), stop.clone(), started.clone());
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).expect("connect");
                for byte in b"GET /status HTTP/1.0\r\n".iter().cycle() {
                    if stream.write_all(&[*byte]).is_err() {
                        break; // dropped by the server: fine
                    }
                    started.fetch_add(1, Ordering::Relaxed);
                    let next = Instant::now() + Duration::from_secs(4);
                    while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            })
        })
        .collect();
    wait_for("the tricklers to connect", || (started.load(Ordering::Relaxed) >= 4).then_some(()));
    // Status stays prompt while they trickle (sampled over ~6 s).
    let mut worst = Duration::ZERO;
    for _ in 0..4 {
        let (got, took) = timed_status(&addr);
        assert_eq!(got.as_ref().map(|(c, _)| *c), Ok(200), "{got:?}");
        worst = worst.max(took);
        std::thread::sleep(Duration::from_millis(1500));
    }
    eprintln!("worst status latency under 4 tricklers: {worst:?}");
    assert!(worst < PROMPT, "status took {worst:?} under trickling clients");

    // A reload (re-exec of the same binary) is not held back by them.
    let t = Instant::now();
    let out = s.cli(&["reload", "--exec", TCONF]);
    let took = t.elapsed();
    assert!(out.status.success(), "reload: {}{}", text(&out.stdout), text(&out.stderr));
    eprintln!("reload under 4 tricklers took {took:?}");
    // About 1 s (the tricklers' grace at the server's stop); it was never, before.
    assert!(took < Duration::from_secs(12), "the reload took {took:?}");
    assert_eq!(s.status()["reexec_count"], 1);
    let (got, took) = timed_status(&addr);
    assert_eq!(got.map(|(c, _)| c), Ok(200));
    assert!(took < PROMPT, "{took:?}");
    stop.store(true, Ordering::Relaxed);
    for t in tricklers {
        t.join().unwrap();
    }
}

#[test]
fn a_flood_of_idle_connections_does_not_lock_out_a_real_client() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let addr = addr(&s);
    // Twice the cap of connections that send half a request and then nothing.
    let idle: Vec<TcpStream> = (0..128)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).expect("connect");
            c.write_all(b"GET /sta").unwrap();
            c
        })
        .collect();
    let (got, took) = timed_status(&addr);
    assert_eq!(got.map(|(c, _)| c), Ok(200));
    eprintln!("status behind 128 idle connections: {took:?}");
    assert!(took < PROMPT, "status took {took:?} behind idle connections");
    // The oldest idle ones were dropped to make room.
    let mut first = &idle[0];
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the oldest idle connection got an answer: {:?}", String::from_utf8_lossy(&buf[..n]));
    drop(idle);
    // Supervision went on.
    assert_eq!(s.pids("idle").len(), 2);
}

#[test]
fn accept_errors_back_off_and_recover() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let addr = addr(&s);
    let pid = s.pid();
    // Leave Sentry room for a few more fds only.
    let limit = fd_count(pid) + 6;
    let out = run(Command::new("prlimit").arg(format!("--pid={pid}")).arg(format!("--nofile={limit}:{limit}")));
    assert!(out.status.success(), "prlimit: {}", text(&out.stderr));
    // Idle connections until accept fails (the rest wait in the backlog).
    let mut idle: Vec<TcpStream> = Vec::new();
    wait_for("Sentry to run out of fds", || {
        idle.push(TcpStream::connect(&addr).expect("connect"));
        (fd_count(pid) >= limit).then_some(())
    });
    for _ in 0..10 {
        idle.push(TcpStream::connect(&addr).expect("connect"));
    }
    let before = cpu_ticks(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2)); // a measurement window, not a synchronisation
    let spent = (cpu_ticks(pid) - before) as f64 / ticks_per_second() as f64;
    let window = t.elapsed().as_secs_f64();
    eprintln!("CPU while accept fails: {spent:.2} s over {window:.2} s");
    assert!(spent < 0.3 * window, "Sentry spent {spent:.2} s of CPU in {window:.2} s while accept failed");
    // Once the connections close, it answers again.
    drop(idle);
    wait_for("a status once fds are free", || {
        let (got, _) = timed_status(&addr);
        matches!(got, Ok((200, _))).then_some(())
    });
}

#[test]
fn a_too_large_body_gets_its_413() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let (addr, token) = (addr(&s), token(&s));
    let body = vec![b' '; 512 * 1024];
    let mut request = format!(
        "POST /entries/idle/scale HTTP/1.0\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    for round in 0..5 {
        let got = exchange(&addr, &request, PATIENCE);
        let (code, answer) = got.unwrap_or_else(|e| panic!("round {round}: no 413 read: {e}"));
        assert_eq!(code, 413, "{answer}");
        assert!(answer.contains("too large"), "{answer}");
    }
    assert_eq!(s.entry("idle")["count"], 2, "nothing changed");
}

#[test]
fn a_host_that_is_not_this_server_gets_421() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let addr = addr(&s);
    let port = addr.rsplit_once(':').unwrap().1.to_string();
    for host in [format!("evil.example:{port}"), "evil.example".into(), format!("localhost.evil.example:{port}")] {
        let (code, body) = get_status(&addr, &format!("Host: {host}\r\n"));
        assert_eq!(code, 421, "Host {host}: {body}");
        assert!(body.contains("error"), "{body}");
    }
    for host in [
        addr.clone(),
        format!("localhost:{port}"),
        "localhost".into(),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (code, body) = get_status(&addr, &format!("Host: {host}\r\n"));
        assert_eq!(code, 200, "Host {host}: {body}");
    }
    let (code, body) = exchange(&addr, b"GET /status HTTP/1.0\r\n\r\n", PATIENCE).unwrap();
    assert_eq!(code, 200, "no Host: {body}");
    // A hostile Host changes nothing, even with the token.
    let auth = format!("Host: evil.example:{port}\r\nAuthorization: Bearer {}\r\n", token(&s));
    assert_eq!(scale(&addr, &auth, 3).0, 421);
    assert_eq!(s.entry("idle")["count"], 2);
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_the_token_must_match() {
    let s = Sentry::start(TCONF, "basic", &[]);
    let (addr, token) = (addr(&s), token(&s));
    for (n, scheme) in ["Bearer", "bearer", "BEARER"].iter().enumerate() {
        let (code, body) = scale(&addr, &format!("Authorization: {scheme} {token}\r\n"), 3 + n);
        assert_eq!(code, 200, "{scheme}: {body}");
    }
    // A wrong token of the same length, first or last byte off.
    let flip = |i: usize| {
        let mut t = token.clone().into_bytes();
        t[i] = if t[i] == b'0' { b'1' } else { b'0' };
        String::from_utf8(t).unwrap()
    };
    for wrong in [flip(0), flip(token.len() - 1)] {
        assert_eq!(wrong.len(), token.len());
        let (code, body) = scale(&addr, &format!("Authorization: Bearer {wrong}\r\n"), 1);
        assert_eq!(code, 401, "{body}");
    }
    let (code, _) = scale(&addr, &format!("Authorization: Basic {token}\r\n"), 1);
    assert_eq!(code, 401);
    assert_eq!(s.entry("idle")["count"], 5);
}

#[test]
fn off_loopback_every_request_needs_the_token() {
    let s = Sentry::start(TCONF, "basic", &["--http", "0.0.0.0:0"]);
    let bound = addr(&s);
    let port = bound.rsplit_once(':').unwrap().1.to_string();
    let addr = format!("127.0.0.1:{port}");
    let (code, body) = get_status(&addr, "");
    assert_eq!(code, 401, "{body}");
    let (code, body) = get_status(&addr, &format!("Authorization: bearer {}\r\n", token(&s)));
    assert_eq!(code, 200, "{body}");
    // The CLI sends the token with every request.
    let out = s.cli(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
