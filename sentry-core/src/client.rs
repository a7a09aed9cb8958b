//! The CLI's side of the control interface: a minimal HTTP/1.0 client over
//! loopback that sends one request, with the bearer token read from
//! `NAME.token` (on every request: off loopback, all need it), and returns the status code and body. It knows the wire
//! format and nothing else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::Error;

/// A connection to `HOST:PORT` or `unix:PATH`.
enum Connection {
    Tcp(TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Connection {
    fn to(addr: &str) -> std::io::Result<Connection> {
        match addr.strip_prefix("unix:") {
            Some(path) => std::os::unix::net::UnixStream::connect(path).map(Connection::Unix),
            None => TcpStream::connect(addr).map(Connection::Tcp),
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Connection::Tcp(s) => s.set_read_timeout(t),
            Connection::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Connection::Tcp(s) => s.set_write_timeout(t),
            Connection::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Tcp(s) => s.read(buf),
            Connection::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Tcp(s) => s.write(buf),
            Connection::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long a `GET` may wait for its answer.
const GET_PATIENCE: Duration = Duration::from_secs(30);
/// How long a `POST` (scale, restart: answered once stops are done) may wait.
const POST_PATIENCE: Duration = Duration::from_secs(600);

/// The address and token of a running instance.
pub(crate) struct Client {
    pub addr: String,
    pub token: Option<String>,
}

impl Client {
    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<(u16, String), Error> {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body, authorized.
    pub fn post(&self, path: &str, body: &str) -> Result<(u16, String), Error> {
        self.request("POST", path, Some(body))
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), Error> {
        let context = |what: &str| format!("cannot {what} the control interface at {}", self.addr);
        let mut stream = Connection::to(&self.addr).map_err(|e| Error::io(context("reach"), e))?;
        // A status comes at once (the server bounds its wait on the core);
        // scale and restart answer once stops are done: allow for long stop
        // timeouts. Either way, a connection that is never accepted (an
        // instance out of fds) does not hang the command for ever.
        let patience = if body.is_none() { GET_PATIENCE } else { POST_PATIENCE };
        let _ = stream.set_read_timeout(Some(patience));
        let _ = stream.set_write_timeout(Some(GET_PATIENCE));
        let host = if self.addr.starts_with("unix:") { "localhost" } else { self.addr.as_str() };
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n");
        // Every request carries the token: off loopback, even `GET /status` needs it.
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or(""));
        stream.write_all(head.as_bytes()).map_err(|e| Error::io(context("write to"), e))?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(|e| Error::io(context("read from"), e))?;
        parse_response(&answer).ok_or_else(|| Error::Control {
            status: 0,
            message: match answer.is_empty() {
                // The instance went away mid-request (stopped, or killed).
                true => format!("{} closed the connection without answering: did the instance stop?", self.addr),
                false => format!("malformed answer from {}", self.addr),
            },
        })
    }
}

/// Splits an HTTP response into status code and body (de-chunking if needed).
fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = &raw[split + 4..];
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Some((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn plain_and_chunked_answers_are_read() {
        let plain = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((404, "{}".to_string())));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, "abcde".to_string())));
        assert_eq!(parse_response(b"garbage"), None);
    }
}
