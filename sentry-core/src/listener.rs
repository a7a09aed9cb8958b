//! The control interface's listening socket: TCP (`HOST:PORT`) or a unix
//! socket (`unix:PATH`, SPEC), and the connections it accepts. A unix
//! socket is created mode 0600 without a moment of wider access (the
//! socket's mode is set before `bind` makes its file), refuses to replace
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
    /// the address it wrote (`NAME.addr`), which names a unix socket's
    /// canonical path (its own address keeps the path as it was given).
    pub fn from_fd(fd: OwnedFd, recorded: &str) -> io::Result<Listener> {
        use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
        let bound: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(io::Error::from)?;
        if bound.family() == Some(AddressFamily::Unix) {
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

/// Binds a unix socket at `path`, mode 0600 from its first moment: the
/// socket's own mode is set before `bind` creates the file, which takes it
/// (Linux's `unix_bind` creates the file with the socket inode's mode less
/// the umask), and the file is checked after. A socket already at `path`
/// is replaced only if nobody listens on it; anything else there is an
/// error.
fn bind_unix(path: &Path) -> io::Result<Listener> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "unix: needs a path"));
    }
    // sockaddr_un's sun_path: 108 bytes with the terminating NUL (unix(7)).
    const SUN_PATH: usize = 108;
    if bytes.len() >= SUN_PATH || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a unix socket's path is at most {} bytes, without NUL", SUN_PATH - 1),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "something listens on that socket"));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => return Err(io::Error::new(io::ErrorKind::AlreadyExists, "something that is not a socket is there")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(io::Error::from)?;
    nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(io::Error::from)?).map_err(io::Error::from)?;
    let wider = std::fs::symlink_metadata(path).map(|m| m.permissions().mode() & 0o077 != 0).unwrap_or(true);
    if wider {
        let _ = std::fs::remove_file(path);
        return Err(io::Error::other("the socket could not be made private (mode 0600)"));
    }
    if let Err(e) = listen(&fd, Backlog::MAXCONN) {
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(Listener::Unix { listener: UnixListener::from(fd), path })
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
        nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials).ok().map(|c| c.uid())
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
        let long = dir.join("l".repeat(107 - dir.as_os_str().len() - 1));
        assert_eq!(long.as_os_str().len(), 107);
        assert!(Listener::bind(&format!("unix:{}", long.display())).is_ok(), "107 bytes is the longest path");
        let e = Listener::bind(&format!("unix:{}x", long.display())).err().unwrap();
        assert!(e.to_string().contains("at most 107 bytes"), "{e}");
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
