//! The control interface's listening socket: TCP (`HOST:PORT`) or a unix
//! socket (`unix:PATH`, SPEC), and the connections it accepts. A unix
//! socket is created mode 0600 without a moment of wider access (bound in
//! a private directory, then renamed into place), refuses to replace
//! anything but a stale socket, is told apart from a TCP one when an exec
//! hands it over (`SO_DOMAIN`), and says who connected (`SO_PEERCRED`).
//! This module knows nothing of HTTP.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A listening socket.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix { listener: UnixListener, path: PathBuf },
}

/// An accepted connection.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    /// Binds `addr`: `unix:PATH` or what `TcpListener::bind` takes.
    pub fn bind(addr: &str) -> io::Result<Listener> {
        match addr.strip_prefix("unix:") {
            Some(path) => bind_unix(Path::new(path)),
            None => TcpListener::bind(addr).map(Listener::Tcp),
        }
    }

    /// A listening socket handed over by an earlier image; `recorded` is
    /// the address it wrote (`NAME.addr`), which names a unix socket's path
    /// (its own address names where it was bound before the rename).
    pub fn from_fd(fd: OwnedFd, recorded: &str) -> io::Result<Listener> {
        let mut domain: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int of the size given.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut domain as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        if domain == libc::AF_UNIX {
            let path =
                recorded.trim().strip_prefix("unix:").map(PathBuf::from).ok_or_else(|| {
                    io::Error::other(format!("a unix socket, but the address recorded is {recorded:?}"))
                })?;
            Ok(Listener::Unix { listener: UnixListener::from(fd), path })
        } else {
            Ok(Listener::Tcp(TcpListener::from(fd)))
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(on),
            Listener::Unix { listener, .. } => listener.set_nonblocking(on),
        }
    }

    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix { listener, .. } => listener.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    /// The TCP address bound (`None` for a unix socket).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }

    /// What `NAME.addr` holds and clients connect to: `HOST:PORT` or `unix:PATH`.
    pub fn address(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }

    /// At the end of the instance: a unix socket's file goes.
    pub fn remove_file(&self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix { listener, .. } => listener.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Binds a unix socket at `path`, mode 0600 from its first moment: bound
/// in a new directory of mode 0700 next to it, then renamed over `path`. A
/// socket already at `path` is replaced only if nobody listens on it;
/// anything else there is an error.
fn bind_unix(path: &Path) -> io::Result<Listener> {
    if path.as_os_str().is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "unix: needs a path"));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "something listens on that socket"));
            }
        }
        Ok(_) => return Err(io::Error::new(io::ErrorKind::AlreadyExists, "something that is not a socket is there")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let private = parent.join(format!(".sentry-bind-{}-{}", std::process::id(), crate::sys::unix_now_ns()));
    std::fs::create_dir(&private)?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
    let temporary = private.join(name);
    let bound = UnixListener::bind(&temporary).and_then(|l| {
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&temporary, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&temporary);
    let _ = std::fs::remove_dir(&private);
    let listener = bound?;
    // The socket's address names the temporary path; the real one is kept.
    Ok(Listener::Unix { listener, path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()) })
}

impl Stream {
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    pub fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }

    /// The TCP address this connection reached.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Unix(_) => None,
        }
    }

    /// The user id of a unix socket's peer (`SO_PEERCRED`, unix(7)).
    pub fn peer_uid(&self) -> Option<u32> {
        let Stream::Unix(s) = self else { return None };
        let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt into a ucred of the size given.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(cred.uid)
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_socket_is_private_refuses_a_live_one_and_replaces_a_stale_one() {
        let dir = std::env::temp_dir().join(format!("sentry-listener-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let first = Listener::bind(&format!("unix:{}", path.display())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(first.address().starts_with("unix:/") && first.address().ends_with("ctl.sock"));
        let e = Listener::bind(&format!("unix:{}", path.display())).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // Handed over: still a unix socket, with its path.
        let fd: OwnedFd = match first {
            Listener::Unix { listener, .. } => listener.into(),
            Listener::Tcp(_) => unreachable!(),
        };
        let recorded = format!("unix:{}\n", path.display());
        let again = Listener::from_fd(fd.try_clone().unwrap(), &recorded).unwrap();
        assert_eq!(again.address(), recorded.trim());
        drop(again);
        drop(fd);
        // Nobody listens now: a stale socket is replaced.
        assert!(Listener::bind(&format!("unix:{}", path.display())).is_ok());
        std::fs::write(dir.join("file"), "x").unwrap();
        assert!(Listener::bind(&format!("unix:{}", dir.join("file").display())).is_err(), "a file is never replaced");
        assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "x");
        let tcp = Listener::bind("127.0.0.1:0").unwrap();
        let fd: OwnedFd = match tcp {
            Listener::Tcp(l) => l.into(),
            Listener::Unix { .. } => unreachable!(),
        };
        assert!(matches!(Listener::from_fd(fd, "").unwrap(), Listener::Tcp(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
