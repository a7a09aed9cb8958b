//! The socket children send systemd's readiness messages to
//! (`sd_notify(3)`: `READY=1`, `RELOADING=1`, `WATCHDOG=1`,
//! `WATCHDOG=trigger`), for `probe::notify()` and `.watchdog(D)`. It owns the
//! socket and the thread that reads it, and reports each message with the
//! sender's PID as the kernel vouches for it (`SCM_CREDENTIALS`, unix(7));
//! which slot a PID belongs to is the core's business, not this module's.
//!
//! The socket is a datagram socket in the abstract namespace (its
//! `NOTIFY_SOCKET` value starts with `@`, which libsystemd, the `sd-notify`
//! crate and python-systemd all accept): it needs no file that a child
//! running as another user could not write to, and leaves none behind. It
//! crosses a reload as an fd (the children keep its name), so a message sent
//! during the exec waits in it.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};

/// What a message asked for; a message may say several things at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Message {
    /// `READY=1` (true) or `RELOADING=1` / `STOPPING=1` (false).
    pub ready: Option<bool>,
    /// `WATCHDOG=1`.
    pub keepalive: bool,
    /// `WATCHDOG=trigger`: the process asks to be treated as hung.
    pub trigger: bool,
}

impl Message {
    /// Reads a datagram: newline-separated `KEY=VALUE` assignments; what is
    /// not understood is ignored (sd_notify(3) allows many more keys).
    pub fn parse(data: &[u8]) -> Message {
        let mut m = Message::default();
        for line in data.split(|b| *b == b'\n') {
            match line {
                b"READY=1" => m.ready = Some(true),
                b"RELOADING=1" | b"STOPPING=1" => m.ready = Some(false),
                b"WATCHDOG=1" => m.keepalive = true,
                b"WATCHDOG=trigger" => m.trigger = true,
                _ => {}
            }
        }
        m
    }

    /// `later` said after this one: the later readiness wins; keep-alives
    /// and triggers add up.
    pub fn merge(&mut self, later: Message) {
        self.ready = later.ready.or(self.ready);
        self.keepalive |= later.keepalive;
        self.trigger |= later.trigger;
    }

    /// Whether it says anything Sentry acts on.
    pub fn is_empty(&self) -> bool {
        *self == Message::default()
    }
}

/// The open socket, with its reading thread while one runs.
pub(crate) struct NotifySocket {
    /// Shared with the reading thread; always `Some` until [`NotifySocket::into_fd`].
    fd: Option<Arc<OwnedFd>>,
    /// The `NOTIFY_SOCKET` value (`@` and the abstract name).
    name: String,
    reader: Option<(OwnedFd, JoinHandle<()>)>,
}

/// The largest datagram read; the rest of a longer one is cut off.
const MAX_MESSAGE: usize = 4096;
/// The most fds one message can pass (`SCM_MAX_FD`, include/net/scm.h).
const SCM_MAX_FD: usize = 253;
/// The most senders merged in one look at the socket (the rest wait).
const MAX_SENDERS: usize = 256;

impl NotifySocket {
    /// A new socket with a name no other instance has.
    pub fn open() -> io::Result<NotifySocket> {
        let fd =
            socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
        let name = format!("sentry/{}/{}/notify", std::process::id(), crate::sys::random_hex(8)?);
        bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name.as_bytes())?)?;
        setsockopt(&fd, sockopt::PassCred, &true)?;
        Ok(NotifySocket { fd: Some(Arc::new(fd)), name: format!("@{name}"), reader: None })
    }

    /// The socket a previous image kept open, named `name`.
    pub fn adopt(fd: OwnedFd, name: String) -> io::Result<NotifySocket> {
        setsockopt(&fd, sockopt::PassCred, &true)?;
        Ok(NotifySocket { fd: Some(Arc::new(fd)), name, reader: None })
    }

    /// `NOTIFY_SOCKET`'s value for the children.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the thread that reads the socket and calls `deliver(pid,
    /// message)` for each message that says something. Idempotent.
    pub fn listen(&mut self, deliver: impl Fn(i32, Message) + Send + 'static) -> io::Result<()> {
        if self.reader.is_some() {
            return Ok(());
        }
        let stop = crate::sys::eventfd()?;
        let stop_read = stop.try_clone()?;
        let Some(fd) = self.fd.clone() else { return Ok(()) };
        let thread = std::thread::Builder::new().name("sentry-notify".into()).spawn(move || {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let mut fds = [
                    libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: stop_read.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                ];
                if crate::sys::poll(&mut fds, -1).is_err() {
                    continue;
                }
                if fds[1].revents != 0 {
                    return;
                }
                // Everything queued, merged by sender (a child that floods
                // the socket costs the core one message per look), then
                // back to the wait.
                let mut batch: Vec<(i32, Message)> = Vec::new();
                while let Some((pid, message)) = receive(fd.as_fd(), &mut buf) {
                    let (Some(pid), false) = (pid, message.is_empty()) else { continue };
                    match batch.iter_mut().find(|(p, _)| *p == pid) {
                        Some((_, m)) => m.merge(message),
                        None => batch.push((pid, message)),
                    }
                    if batch.len() >= MAX_SENDERS {
                        break;
                    }
                }
                for (pid, message) in batch {
                    deliver(pid, message);
                }
            }
        })?;
        self.reader = Some((stop, thread));
        Ok(())
    }

    /// Stops the reading thread (what arrives meanwhile waits in the socket).
    pub fn quiet(&mut self) {
        if let Some((stop, thread)) = self.reader.take() {
            crate::sys::eventfd_signal(stop.as_fd());
            let _ = thread.join();
        }
    }

    /// The socket itself, to keep open across an exec (the thread stopped).
    pub fn into_fd(mut self) -> Option<(OwnedFd, String)> {
        self.quiet();
        let fd = Arc::try_unwrap(self.fd.take()?).ok()?;
        Some((fd, std::mem::take(&mut self.name)))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.quiet();
    }
}

/// One datagram: the sender's PID (from its credentials) and what it says;
/// `None` once nothing is queued.
fn receive(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> Option<(Option<i32>, Message)> {
    // Room for the credentials and for as many fds as one message can pass
    // (SCM_MAX_FD, 253: include/net/scm.h), so the control data is never
    // cut short: every fd anyone sends is seen, and closed at once.
    let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials, [std::os::fd::RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = match recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(nix::errno::Errno::EINTR) => return Some((None, Message::default())),
        Err(_) => return None,
    };
    let mut pid = None;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        // Cannot happen with the room above; if it did, the fds installed
        // could not be read back to close them: say so.
        log::warn!("a notify message's control data was cut short");
    }
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                // Passed fds (FDSTORE=1) are not kept: closed at once.
                ControlMessageOwned::ScmRights(fds) => {
                    for fd in fds {
                        // SAFETY: the kernel just gave us this fd; nobody else holds it.
                        unsafe { libc::close(fd) };
                    }
                }
                _ => {}
            }
        }
    }
    let n = msg.bytes;
    Some((pid, Message::parse(&buf[..n.min(buf.len())])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_passed_with_a_message_are_closed() {
        use std::os::fd::AsRawFd;
        let mut s = NotifySocket::open().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        s.listen(move |pid, m| {
            let _ = tx.send((pid, m));
        })
        .unwrap();
        // A file of its own, so that other tests' fds do not count.
        let path = std::env::temp_dir().join(format!("sentry-notify-fds-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let count = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter(|e| e.as_ref().is_ok_and(|e| std::fs::read_link(e.path()).ok().as_ref() == Some(&path)))
                .count()
        };
        let fds = vec![file.as_raw_fd(); 200];
        let before = count();
        let client = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).unwrap();
        let addr = UnixAddr::new_abstract(&s.name().as_bytes()[1..]).unwrap();
        for _ in 0..20 {
            let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
            nix::sys::socket::sendmsg(
                client.as_raw_fd(),
                &[std::io::IoSlice::new(b"READY=1")],
                &cmsg,
                MsgFlags::empty(),
                Some(&addr),
            )
            .unwrap();
        }
        // Merged by sender: one delivery (or a few) for the twenty.
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap().1.ready, Some(true));
        // 4 000 fds were passed; none is left open.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while count() > before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(count(), before, "fds of the file left open");
        drop(file);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn messages() {
        let table: &[(&[u8], Message)] = &[
            (b"READY=1", Message { ready: Some(true), ..Default::default() }),
            (b"STATUS=warming up\nREADY=1\n", Message { ready: Some(true), ..Default::default() }),
            (b"RELOADING=1\nMONOTONIC_USEC=5", Message { ready: Some(false), ..Default::default() }),
            (b"WATCHDOG=1", Message { keepalive: true, ..Default::default() }),
            (b"WATCHDOG=trigger", Message { trigger: true, ..Default::default() }),
            (b"READY=0\nREADY=11\nready=1", Message::default()),
        ];
        for (data, want) in table {
            assert_eq!(&Message::parse(data), want, "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn a_message_arrives_with_the_senders_pid() {
        let mut s = NotifySocket::open().unwrap();
        assert!(s.name().starts_with('@'));
        let (tx, rx) = crossbeam_channel::unbounded();
        s.listen(move |pid, m| {
            let _ = tx.send((pid, m));
        })
        .unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&s.name().as_bytes()[1..]).unwrap();
        client.send_to_addr(b"READY=1", &addr).unwrap();
        let (pid, m) = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert_eq!(m.ready, Some(true));
        s.quiet();
        // Sent while nobody reads: waits in the socket for the next reader.
        client.send_to_addr(b"WATCHDOG=1", &addr).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        s.listen(move |pid, m| {
            let _ = tx.send((pid, m));
        })
        .unwrap();
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap().1.keepalive);
    }
}
