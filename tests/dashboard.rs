//! The dashboard in a real browser: headless Chromium driven through
//! ChromeDriver's W3C WebDriver protocol (plain HTTP on loopback) against a
//! running instance — enter the token, scale +1 (the page shows the new
//! count and the process really runs), restart (the PID changes on the
//! page), and the event list shows both. A screenshot is saved under
//! `target/` for a person to look at. Skipped, saying why, where Chromium
//! or ChromeDriver is not installed (`.ci/run` installs them).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const TCONF: &str = env!("CARGO_BIN_EXE_tconf");
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session on a ChromeDriver of our own.
struct Browser {
    port: u16,
    session: String,
    _driver: Driver,
    _profile: TempDir,
}

impl Browser {
    fn start() -> Result<Browser, String> {
        for program in ["chromium", "chromedriver"] {
            if Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
                return Err(format!("{program} is not installed"));
            }
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let profile = TempDir::new("chromium-profile");
        let log = profile.path().join("chromedriver.log");
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}")).arg(format!("--log-path={}", log.display()));
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = in_own_session(&mut cmd).spawn().map_err(|e| e.to_string())?;
        let driver = Driver(child);
        wait_for("chromedriver to listen", || TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()));
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--window-size=1400,900".to_string(),
            format!("--user-data-dir={}", profile.path().join("profile").display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let answer = call(port, "POST", "/session", Some(&caps)).map_err(|e| {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String =
                said.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            format!("no browser session: {e}\nchromedriver said:\n{tail}")
        })?;
        let session = answer["sessionId"].as_str().ok_or(format!("no session: {answer}"))?.to_string();
        Ok(Browser { port, session, _driver: driver, _profile: profile })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        call(self.port, method, &format!("/session/{}{path}", self.session), body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The element `css` selects, waiting for it to appear.
    fn find(&self, css: &str) -> String {
        wait_for(&format!("an element {css}"), || {
            let v = call(
                self.port,
                "POST",
                &format!("/session/{}/element", self.session),
                Some(&json!({"using": "css selector", "value": css})),
            );
            v.ok()?[ELEMENT].as_str().map(str::to_string)
        })
    }

    /// Clicks what `css` selects, as a user would (the entries are drawn
    /// afresh every few seconds, so the element is looked up at the click).
    fn click(&self, css: &str) {
        let script =
            format!("const e = document.querySelector({css:?}); if (!e) return false; e.click(); return true;");
        wait_for(&format!("{css} to click"), || (self.eval(&script) == Value::Bool(true)).then_some(()));
    }

    fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.call("POST", &format!("/element/{el}/value"), Some(&json!({ "text": text })));
    }

    /// What `script` (a function body) returns in the page.
    fn eval(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(&json!({ "script": script, "args": [] })))
    }

    fn screenshot(&self, path: &PathBuf) {
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64(png.as_str().unwrap_or_default());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// ChromeDriver in a session of its own: that session (Chromium with it)
/// is killed, and ChromeDriver reaped, when it goes.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        kill_session(self.0.id() as i32);
        let _ = self.0.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(self.port, "DELETE", &format!("/session/{}", self.session), None);
    }
}

/// One WebDriver request over plain HTTP/1.1; its `value`.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    // By its Content-Length: ChromeDriver may keep the connection open.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 65536];
    let body = loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before the whole answer".into());
        }
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let length = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .ok_or("no Content-Length")?;
        if body.len() >= length {
            break body[..length].to_string();
        }
    };
    let v: Value = serde_json::from_str(body.trim()).map_err(|e| format!("{e}: {body:.300}"))?;
    match v["value"].get("error") {
        Some(e) => Err(format!("{e}: {}", v["value"]["message"])),
        None => Ok(v["value"].clone()),
    }
}

/// Standard base64 (RFC 4648 §4), as WebDriver sends screenshots.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.bytes().filter_map(value).collect();
    digits
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().fold(0u32, |n, &d| n << 6 | u32::from(d)) << (6 * (4 - c.len()));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(c.len().saturating_sub(1))
        })
        .collect()
}

/// A browser, or `None` (said) where chromium and its driver are missing.
fn browser() -> Option<Browser> {
    Browser::start()
        .map_err(|why| eprintln!("skipped: {why} (Debian's chromium and chromium-driver; .ci/run installs them)"))
        .ok()
}

#[test]
fn the_dashboard_scales_restarts_and_shows_events_in_a_real_browser() {
    let Some(browser) = browser() else { return };
    let s = Sentry::start(TCONF, "basic", &[]);
    s.wait_pids("idle", 2);
    let addr = std::fs::read_to_string(s.file("tconf.addr")).unwrap().trim().to_string();
    let token = std::fs::read_to_string(s.file("tconf.token")).unwrap().trim().to_string();
    browser.go(&format!("http://{addr}/"));
    browser.find("[data-entry=\"idle\"]");
    // The token, once: kept for the tab, never in the URL.
    browser.type_into("#token", &token);
    browser.click("#save-token");
    let count =
        |b: &Browser| b.eval("return document.querySelector('[data-entry=\"idle\"] [data-count]').dataset.count;");
    assert_eq!(count(&browser), "2");
    browser.click("[data-entry=\"idle\"] button[data-act=\"scale-up\"]");
    wait_for("the page to show 3", || (count(&browser) == "3").then_some(()));
    let pids = s.wait_pids("idle", 3);
    assert!(pids.iter().all(|&p| alive(p)), "the third process really runs");
    let shown = |b: &Browser| -> Vec<i32> {
        let v = b.eval("return [...document.querySelectorAll('[data-entry=\"idle\"] tr[data-pid]')].map(r => Number(r.dataset.pid));");
        v.as_array().unwrap().iter().map(|p| p.as_i64().unwrap() as i32).collect()
    };
    wait_for("the three PIDs on the page", || (shown(&browser).len() == 3).then_some(()));
    let before = shown(&browser);
    browser.click("[data-entry=\"idle\"] button[data-act=\"restart\"]");
    wait_for("new PIDs on the page", || {
        let now = shown(&browser);
        (now.len() == 3 && now.iter().all(|p| !before.contains(p))).then_some(())
    });
    let kinds = |b: &Browser| b.eval("return [...document.querySelectorAll('#events li')].map(l => l.dataset.kind);");
    wait_for("both in the event list", || {
        let k = kinds(&browser);
        let k: Vec<&str> = k.as_array()?.iter().filter_map(Value::as_str).collect();
        (k.contains(&"scaled") && k.contains(&"restart")).then_some(())
    });
    let url = browser.call("GET", "/url", None);
    assert!(!url.as_str().unwrap_or_default().contains(&token), "the token is never in the URL");
    let stored = browser.eval("return sessionStorage.getItem('sentry-token');");
    assert_eq!(stored, token.as_str());
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    browser.screenshot(&shot);
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"), "a PNG at {}", shot.display());
}

#[test]
fn the_dashboard_shows_health_order_and_failures() {
    let Some(browser) = browser() else { return };
    let s = Sentry::start(TCONF, "flap", &[]);
    wait_for("flap to be given up on", || (s.entry("flap")["state"] == "failed").then_some(()));
    let addr = std::fs::read_to_string(s.file("tconf.addr")).unwrap().trim().to_string();
    let token = std::fs::read_to_string(s.file("tconf.token")).unwrap().trim().to_string();
    browser.go(&format!("http://{addr}/"));
    browser.find("[data-entry=\"flap\"]");
    browser.type_into("#token", &token);
    browser.click("#save-token");
    let shown = |b: &Browser| -> String {
        b.eval("const e = document.querySelector('[data-entry=\"flap\"]'); return e.querySelector('.pill').textContent + ' | ' + (e.querySelector('[data-order]') || {}).textContent;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_for("the failure on the page", || {
        let t = shown(&browser);
        (t.starts_with("failed | ") && t.contains("given up on slot 0")).then_some(())
    });
    // Restart brings it back: the page shows it leave `failed`.
    browser.click("[data-entry=\"flap\"] button[data-act=\"restart\"]");
    wait_for("the restart to reach the instance", || (s.entry("flap")["restarts"].as_u64()? >= 3).then_some(()));
    let kinds = browser.eval("return [...document.querySelectorAll('#events li')].map(l => l.dataset.kind);");
    assert!(kinds.as_array().unwrap().iter().any(|k| k == "failed"), "{kinds}");
}
