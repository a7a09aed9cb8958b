//! Turning Unix signals into calls on an ordinary thread, for the CLI only:
//! a handler that writes the signal number into a pipe (the self-pipe trick,
//! async-signal-safe) and a thread that reads it and calls back. Embedded
//! supervisors never come here. This module knows nothing of what a signal means.

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

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

/// Installs handlers for `signals`, unblocks them (a re-exec may leave them
/// blocked), and calls `deliver` on a dedicated thread for each one received.
/// Call once, from the main thread, before other threads start.
pub(crate) fn forward(signals: &[Signal], deliver: impl Fn(Signal) + Send + 'static) -> io::Result<()> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).map_err(io::Error::from)?;
    // The write end lives as long as the process: the handler may run at any time.
    WRITE_FD.store(write.into_raw_fd(), Ordering::Relaxed);
    // Reads block: only the write end is non-blocking (a full pipe drops a signal, never blocks a handler).
    nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty())).map_err(io::Error::from)?;
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    let mut set = SigSet::empty();
    for &signal in signals {
        // SAFETY: the handler only does async-signal-safe work.
        unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
        set.add(signal);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None).map_err(io::Error::from)?;
    std::thread::Builder::new()
        .name("sentry-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || read_loop(read, deliver))?;
    Ok(())
}

fn read_loop(read: OwnedFd, deliver: impl Fn(Signal)) {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(&read, &mut byte) {
            Ok(1) => {
                if let Ok(signal) = Signal::try_from(byte[0] as i32) {
                    deliver(signal);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            _ => {
                log::error!("the signal pipe {} closed", read.as_raw_fd());
                return;
            }
        }
    }
}
