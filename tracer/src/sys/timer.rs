//! A one-shot monotonic timer the runtime waits on as a file descriptor (timerfd).
//!
//! tokio's timers reach a deadline more than 64 ms away in two wake-ups: its wheel wakes at
//! the coarse slot first, then sleeps the rest. The agent drains every 100 ms and ticks every
//! second, so that doubled its wake-ups — and on a busy origin each wake-up is a preemption
//! of the server (measured: an upload over a veth loses ~2 % per 100 wake-ups a second). A
//! timerfd fires once, at the deadline.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use tokio::io::{unix::AsyncFd, Interest};

pub struct Timer {
    fd: AsyncFd<OwnedFd>,
}

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd lives inside the AsyncFd, so the fd stays open for as long as
        // it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Timer { fd })
    }

    /// Resolves at `at` (at once when it has passed).
    pub async fn sleep_until(&mut self, at: Instant) -> io::Result<()> {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        self.arm(left)?;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 from our own timerfd.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    (&raw mut expirations).cast(),
                    size_of::<u64>(),
                )
            };
            if n == size_of::<u64>() as isize {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            guard.clear_ready();
        }
    }

    /// Sets the timer to fire once, `after` from now (a new setting replaces the old one, and
    /// an expiry not yet read is cleared with it).
    fn arm(&self, after: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                // Never zero with zero seconds: that would disarm it (`after` is not zero).
                tv_nsec: after.subsec_nanos().max(u32::from(after.as_secs() == 0)) as _,
            },
        };
        // SAFETY: our own timerfd, a valid itimerspec, no old value wanted.
        let r = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                0,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_once_at_the_deadline_and_again_when_rearmed() {
        let mut t = Timer::new().unwrap();
        let start = Instant::now();
        t.sleep_until(start + Duration::from_millis(30))
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(30));
        // A passed deadline resolves at once; a new one waits again.
        t.sleep_until(start).await.unwrap();
        let again = Instant::now();
        t.sleep_until(again + Duration::from_millis(20))
            .await
            .unwrap();
        assert!(again.elapsed() >= Duration::from_millis(20));
    }
}
