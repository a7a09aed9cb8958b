//! Turning Unix signals into calls on an ordinary thread, for the CLI only:
//! a handler that writes the signal number into a pipe (the self-pipe trick,
//! async-signal-safe) and a thread that reads it and calls back. The pipe
//! outlives the thread, so it can cross a re-exec with the signals that
//! arrived meanwhile still in it. Embedded supervisors never come here. This
//! module knows nothing of what a signal means.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;

use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};

use crate::Signal;

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: errno is thread-local; write is async-signal-safe. Saving
        // errno keeps the interrupted code's view of it intact.
        unsafe {
            let errno = *libc::__errno_location();
            let byte = signal as u8;
            libc::write(fd, &byte as *const u8 as *const libc::c_void, 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// The thread that reads the self-pipe.
pub(crate) struct SignalThread {
    write: OwnedFd,
    thread: JoinHandle<OwnedFd>,
}

/// The self-pipe, (read end, write end).
pub(crate) type SignalPipe = (OwnedFd, OwnedFd);

/// Installs handlers for `signals`, unblocks them (a re-exec leaves them
/// blocked), and calls `deliver` on a dedicated thread for each one
/// received. `pipe` is the self-pipe handed over by a previous image (its
/// unread signals are delivered first), or `None` for a new one. Call from
/// the main thread.
pub(crate) fn forward(
    pipe: Option<SignalPipe>,
    signals: &[Signal],
    deliver: impl Fn(Signal) + Send + 'static,
) -> io::Result<SignalThread> {
    let (read, write) = match pipe {
        Some(p) => p,
        None => nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?,
    };
    // Only the write end is non-blocking: a full pipe drops a signal rather
    // than block a handler; the reader blocks.
    nix::fcntl::fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    nix::fcntl::fcntl(&read, FcntlArg::F_SETFL(OFlag::empty())).map_err(io::Error::from)?;
    WRITE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    let mut set = SigSet::empty();
    for &signal in signals {
        // SAFETY: the handler only does async-signal-safe work.
        unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
        set.add(signal);
    }
    let thread = std::thread::Builder::new()
        .name("sentry-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || read_loop(read, deliver))?;
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None).map_err(io::Error::from)?;
    Ok(SignalThread { write, thread })
}

/// Blocks `signals` in the calling thread (before an exec: they stay
/// pending until the new image has its handlers).
pub(crate) fn block(signals: &[Signal]) {
    let mut set = SigSet::empty();
    for &s in signals {
        set.add(s);
    }
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
}

impl SignalThread {
    /// Stops the reader. The handlers stay: signals arriving from now on
    /// wait in the pipe, which is returned for the next reader.
    pub fn stop(self) -> SignalPipe {
        let stop = [0u8];
        let _ = nix::unistd::write(&self.write, &stop);
        let read = self.thread.join().expect("the signal thread does not panic");
        (read, self.write)
    }
}

fn read_loop(read: OwnedFd, deliver: impl Fn(Signal)) -> OwnedFd {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(&read, &mut byte) {
            Ok(1) if byte[0] == 0 => return read,
            Ok(1) => {
                if let Ok(signal) = Signal::try_from(byte[0] as i32) {
                    deliver(signal);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // End of file: the instance is going away.
            Ok(_) => return read,
            Err(e) => {
                log::error!("cannot read the signal pipe {}: {e}", read.as_raw_fd());
                return read;
            }
        }
    }
}
