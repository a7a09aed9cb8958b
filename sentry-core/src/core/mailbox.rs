//! The core's mailbox: the one channel every other thread sends the core
//! [`Command`]s through, and a wait that also ends when a watched child
//! exits — so that a restart starts from the child's exit itself, not from
//! its monitor thread's note a thread hop later (on this VM that hop, a
//! second cross-CPU wake-up on the respawn path, cost 0.3–0.6 ms).
//!
//! The monitors still wait on their children and still send
//! `ChildNote::Exited`; the core hears whichever comes first and the other
//! changes nothing (the core's handling is idempotent). A child whose
//! pidfd cannot be watched here is heard through its monitor only.
//!
//! How: an epoll set holds an eventfd (the bell) and each watched child's
//! pidfd, one-shot, with the child's row as its data. Senders ring the bell
//! only while the core sleeps (a flag the core raises before its last look
//! at the channel), so a busy core costs them no system call. This module
//! knows nothing of what commands mean.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, SendError, Sender, TryIter, TryRecvError};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::Command;

/// The bell's data in the epoll set; children's rows are generations, far below.
const BELL: u64 = u64::MAX;

/// A new mailbox and its first sender.
pub(crate) fn channel() -> io::Result<(Post, Mailbox)> {
    let (tx, rx) = unbounded();
    let bell = Arc::new(Bell {
        fd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
        sleeping: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
    });
    let epoll = ringing(&bell)?;
    Ok((Post { tx: Some(tx), bell: bell.clone() }, Mailbox { rx, bell, epoll: Arc::new(Mutex::new(epoll)) }))
}

/// An epoll set that holds the bell only.
fn ringing(bell: &Bell) -> io::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(bell.fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, BELL))?;
    Ok(epoll)
}

struct Bell {
    fd: EventFd,
    /// Raised by the core before its last look at the channel and lowered
    /// when it wakes: while it is up, a sender rings.
    sleeping: AtomicBool,
    /// How many [`Post`]s exist: the last one dropped rings.
    senders: AtomicUsize,
}

impl Bell {
    fn ring(&self) {
        // Pairs with the fence in `Mailbox::wait`: either the core's last
        // look sees what was sent, or this sees the core asleep.
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.fd.write(1);
        }
    }
}

/// A cloneable way to send the core a command.
pub(crate) struct Post {
    /// `None` only while dropping.
    tx: Option<Sender<Command>>,
    bell: Arc<Bell>,
}

impl Clone for Post {
    fn clone(&self) -> Post {
        self.bell.senders.fetch_add(1, Ordering::Relaxed);
        Post { tx: self.tx.clone(), bell: self.bell.clone() }
    }
}

impl Post {
    /// Queues `command`; an error gives it back when the core is gone.
    pub fn send(&self, command: Command) -> Result<(), SendError<Command>> {
        self.tx.as_ref().expect("only taken in drop").send(command)?;
        self.bell.ring();
        Ok(())
    }
}

impl Drop for Post {
    fn drop(&mut self) {
        // The last sender gone disconnects the channel: a sleeping core
        // must wake to see it.
        drop(self.tx.take());
        if self.bell.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.bell.ring();
        }
    }
}

/// The core's end. Cloneable so that the instance can give it to the
/// core that follows a failed exec; one core reads it at a time.
#[derive(Clone)]
pub(crate) struct Mailbox {
    rx: Receiver<Command>,
    bell: Arc<Bell>,
    /// Only the core that reads the mailbox uses it: never contended.
    epoll: Arc<Mutex<Epoll>>,
}

/// What ended a [`Mailbox::wait`].
pub(crate) enum Waited {
    Command(Command),
    /// Watched children exited: their rows are in the caller's list.
    Exits,
    /// The deadline passed.
    Timeout,
    /// Every sender is gone.
    Disconnected,
}

impl Mailbox {
    /// Wakes [`Mailbox::wait`] once when the child whose pidfd this is
    /// exits, with `gen` in the list. A pidfd watched before (by a core
    /// before a failed exec) is watched again.
    pub fn watch(&self, pidfd: BorrowedFd<'_>, gen: u64) -> io::Result<()> {
        let event = || EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, gen);
        let epoll = self.epoll();
        match epoll.add(pidfd, event()) {
            Err(Errno::EEXIST) => Ok(epoll.modify(pidfd, &mut event())?),
            other => Ok(other?),
        }
    }

    /// Hears no child any more (their exits reach the core through their
    /// monitors' notes only). Before an exec: the set is emptied now, not
    /// by the `execve` that closes it, while the children are unwatched.
    pub fn forget_children(&self) {
        match ringing(&self.bell) {
            Ok(fresh) => drop(std::mem::replace(&mut *self.epoll(), fresh)),
            Err(e) => log::warn!("cannot make a new epoll set ({e}): the old one is emptied by the exec"),
        }
    }

    fn epoll(&self) -> std::sync::MutexGuard<'_, Epoll> {
        self.epoll.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The commands queued now, without waiting.
    pub fn try_iter(&self) -> TryIter<'_, Command> {
        self.rx.try_iter()
    }

    /// How many commands are queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Waits for a command, a watched child's exit (its row pushed on
    /// `exits`) or the `deadline`, whichever comes first.
    pub fn wait(&self, deadline: Option<Instant>, exits: &mut Vec<u64>) -> Waited {
        let mut events = [EpollEvent::empty(); 64];
        let before = exits.len();
        loop {
            match self.rx.try_recv() {
                Ok(command) => return Waited::Command(command),
                Err(TryRecvError::Disconnected) => return Waited::Disconnected,
                Err(TryRecvError::Empty) => {}
            }
            self.bell.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            match self.rx.try_recv() {
                Ok(command) => {
                    self.bell.sleeping.store(false, Ordering::SeqCst);
                    return Waited::Command(command);
                }
                Err(TryRecvError::Disconnected) => return Waited::Disconnected,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if deadline.is_some_and(|at| at <= now) {
                self.bell.sleeping.store(false, Ordering::SeqCst);
                return Waited::Timeout;
            }
            // Whole milliseconds, rounded up: never a wake-up before the deadline.
            let timeout = match deadline {
                None => EpollTimeout::NONE,
                Some(at) => {
                    let us = at.duration_since(now).as_micros().div_ceil(1000);
                    EpollTimeout::try_from(us.min(i32::MAX as u128) as i32).unwrap_or(EpollTimeout::MAX)
                }
            };
            let n = match self.epoll().wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    // Nothing to wait on but the channel itself.
                    log::error!("epoll_wait: {e}; waiting on the command channel only");
                    self.bell.sleeping.store(false, Ordering::SeqCst);
                    let got = match deadline {
                        Some(at) => self.rx.recv_deadline(at).map_err(|e| e.is_disconnected()),
                        None => self.rx.recv().map_err(|_| true),
                    };
                    return match got {
                        Ok(command) => Waited::Command(command),
                        Err(true) => Waited::Disconnected,
                        Err(false) => Waited::Timeout,
                    };
                }
            };
            self.bell.sleeping.store(false, Ordering::SeqCst);
            for event in &events[..n] {
                match event.data() {
                    BELL => {
                        let _ = self.bell.fd.read();
                    }
                    gen => exits.push(gen),
                }
            }
            if exits.len() > before {
                return Waited::Exits;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_command_sent_to_a_sleeping_core_wakes_it() {
        let (post, mailbox) = channel().unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            post.send(Command::Shutdown).unwrap();
            post
        });
        let mut exits = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(matches!(mailbox.wait(Some(deadline), &mut exits), Waited::Command(Command::Shutdown)));
        assert!(Instant::now() < deadline);
        // The last sender dropped: a wait ends at once.
        drop(sender.join().unwrap());
        assert!(matches!(mailbox.wait(Some(deadline), &mut exits), Waited::Disconnected));
    }

    #[test]
    fn a_wait_ends_at_its_deadline_not_before() {
        let (_post, mailbox) = channel().unwrap();
        let t = Instant::now();
        assert!(matches!(mailbox.wait(Some(t + Duration::from_millis(30)), &mut Vec::new()), Waited::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    /// A child that exits after 50 ms (it ends by itself, whatever the
    /// test does), watched as row `gen`; its pidfd.
    fn watched_sleeper(mailbox: &Mailbox, gen: u64) -> (std::process::Child, std::os::fd::OwnedFd) {
        let child = std::process::Command::new("sleep").arg("0.05").spawn().unwrap();
        let pidfd = crate::sys::pidfd_open(child.id() as i32).unwrap();
        mailbox.watch(pidfd.as_fd(), gen).unwrap();
        (child, pidfd)
    }

    #[test]
    fn a_watched_child_that_exits_wakes_the_wait_once_with_its_row() {
        let (_post, mailbox) = channel().unwrap();
        let (mut child, pidfd) = watched_sleeper(&mailbox, 7);
        let mut exits = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(matches!(mailbox.wait(Some(deadline), &mut exits), Waited::Exits));
        assert_eq!(exits, [7]);
        // One-shot: the exited child does not wake the next wait.
        let t = Instant::now();
        assert!(matches!(mailbox.wait(Some(t + Duration::from_millis(30)), &mut exits), Waited::Timeout));
        // Watched again (as a core after a failed exec does): heard again.
        mailbox.watch(pidfd.as_fd(), 8).unwrap();
        assert!(matches!(mailbox.wait(Some(deadline), &mut exits), Waited::Exits));
        assert_eq!(exits, [7, 8]);
        child.wait().unwrap();
    }

    #[test]
    fn a_forgotten_child_wakes_nothing_and_commands_still_do() {
        let (post, mailbox) = channel().unwrap();
        let (mut child, _pidfd) = watched_sleeper(&mailbox, 7);
        mailbox.forget_children();
        child.wait().unwrap();
        let mut exits = Vec::new();
        let t = Instant::now();
        assert!(matches!(mailbox.wait(Some(t + Duration::from_millis(50)), &mut exits), Waited::Timeout));
        assert!(exits.is_empty());
        post.send(Command::Shutdown).unwrap();
        assert!(matches!(mailbox.wait(None, &mut exits), Waited::Command(Command::Shutdown)));
    }
}
