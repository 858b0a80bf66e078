//! `/dev/kmsg` as a wake-up source.
//!
//! sysfs never wakes poll() or inotify, but the kernel logs
//! "livepatch: '<patch>': patching complete" (or "unpatching complete") when a
//! transition ends, and a `/dev/kmsg` reader wakes within a scheduler tick.
//! Log text is not an ABI: a record is only a reason to look at sysfs again.
//! Missing, unreadable or overrun (EPIPE) logs degrade to polling.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;
use nix::unistd::{Whence, lseek, read};

use super::TransitionHints;

/// One `/dev/kmsg` record: "prio,seq,timestamp_us,flags[,...];message".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgRecord {
    pub seq: u64,
    /// Microseconds since boot, on the kernel's printk clock (CLOCK_MONOTONIC).
    pub timestamp_us: u64,
    pub message: String,
}

/// What a record says about a livepatch transition, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivepatchEvent {
    PatchingComplete { patch: String },
    UnpatchingComplete { patch: String },
}

pub fn parse_record(raw: &[u8]) -> Option<KmsgRecord> {
    let text = std::str::from_utf8(raw).ok()?;
    let (header, message) = text.split_once(';')?;
    let mut fields = header.split(',');
    let _prio = fields.next()?;
    let seq = fields.next()?.parse().ok()?;
    let timestamp_us = fields.next()?.parse().ok()?;
    // Continuation lines (" KEY=value") follow the first newline.
    let message = message.split('\n').next().unwrap_or_default().to_string();
    Some(KmsgRecord {
        seq,
        timestamp_us,
        message,
    })
}

/// Recognises the kernel's completion messages ("livepatch: 'name': patching complete").
pub fn livepatch_event(message: &str) -> Option<LivepatchEvent> {
    let rest = message.strip_prefix("livepatch: '")?;
    let (patch, tail) = rest.split_once("': ")?;
    let patch = patch.to_string();
    match tail.trim_end() {
        "patching complete" => Some(LivepatchEvent::PatchingComplete { patch }),
        "unpatching complete" => Some(LivepatchEvent::UnpatchingComplete { patch }),
        _ => None,
    }
}

/// `/dev/kmsg` opened non-blocking at its end: it reads only records logged
/// from now on.
#[derive(Debug)]
pub struct KmsgTail {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// What one [`KmsgTail::drain`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Reads that returned a record or an overrun.
    pub reads: usize,
    /// Overruns (EPIPE): records the kernel dropped before we read them.
    pub lost: usize,
}

impl KmsgTail {
    pub fn open(path: &Path) -> nix::Result<Self> {
        let fd = open(
            path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        lseek(fd.as_fd(), 0, Whence::SeekEnd)?;
        Ok(Self {
            fd,
            buf: vec![0; 8192],
        })
    }

    /// For poll().
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every pending record, handing each one that parses to `each`.
    pub fn drain(&mut self, mut each: impl FnMut(KmsgRecord)) -> nix::Result<Drained> {
        let mut drained = Drained::default();
        loop {
            match read(self.fd.as_fd(), &mut self.buf) {
                Ok(0) | Err(Errno::EAGAIN) => return Ok(drained),
                Ok(n) => {
                    drained.reads += 1;
                    if let Some(record) = parse_record(&self.buf[..n]) {
                        each(record);
                    }
                }
                // Overrun: the next read continues with the oldest record kept.
                Err(Errno::EPIPE) => {
                    drained.reads += 1;
                    drained.lost += 1;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Blocks in poll() on `/dev/kmsg`, positioned at its end so old records do not wake us.
#[derive(Debug)]
pub struct KmsgHints {
    tail: KmsgTail,
    last_event: Option<(KmsgRecord, LivepatchEvent)>,
}

impl KmsgHints {
    pub fn open(path: &Path) -> nix::Result<Self> {
        // Prove it is readable now rather than failing on the first wait.
        let mut hints = Self {
            tail: KmsgTail::open(path)?,
            last_event: None,
        };
        hints.drain()?;
        Ok(hints)
    }

    pub fn last_event(&self) -> Option<&(KmsgRecord, LivepatchEvent)> {
        self.last_event.as_ref()
    }

    /// Reads every pending record; returns how many were read.
    fn drain(&mut self) -> nix::Result<usize> {
        let last_event = &mut self.last_event;
        let drained = self.tail.drain(|record| {
            if let Some(event) = livepatch_event(&record.message) {
                *last_event = Some((record, event));
            }
        })?;
        Ok(drained.reads)
    }
}

impl TransitionHints for KmsgHints {
    fn wait(&mut self, timeout: Duration) -> bool {
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // poll() has millisecond resolution; round sub-millisecond waits up so we do not spin.
        let millis = if millis == 0 && !timeout.is_zero() {
            1
        } else {
            millis
        };
        let mut fds = [PollFd::new(self.tail.fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => false,
            Ok(_) => match self.drain() {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the kernel log failed");
                    false
                }
            },
            Err(Errno::EINTR) => false,
            Err(e) => {
                tracing::debug!(error = %e, "poll on the kernel log failed; sleeping instead");
                std::thread::sleep(Duration::from_millis(millis as u64));
                false
            }
        }
    }

    fn describe(&self) -> &'static str {
        "kernel log"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kmsg_records() {
        let r =
            parse_record(b"6,1234,5678901,-;livepatch: 'graft_demo': patching complete\n").unwrap();
        assert_eq!(r.seq, 1234);
        assert_eq!(r.timestamp_us, 5678901);
        assert_eq!(r.message, "livepatch: 'graft_demo': patching complete");
        let r = parse_record(b"4,9,10,c,extra;hello\n SUBSYSTEM=acpi\n").unwrap();
        assert_eq!(r.message, "hello");
        assert_eq!(parse_record(b"garbage"), None);
        assert_eq!(parse_record(b"6,x,1,-;m"), None);
    }

    #[test]
    fn recognises_completion_messages_only() {
        assert_eq!(
            livepatch_event("livepatch: 'graft_demo': patching complete"),
            Some(LivepatchEvent::PatchingComplete {
                patch: "graft_demo".into()
            })
        );
        assert_eq!(
            livepatch_event("livepatch: 'a': unpatching complete"),
            Some(LivepatchEvent::UnpatchingComplete { patch: "a".into() })
        );
        assert_eq!(
            livepatch_event("livepatch: 'a': starting patching transition"),
            None
        );
        assert_eq!(livepatch_event("random: crng init done"), None);
    }

    #[test]
    fn missing_log_is_an_error_not_a_panic() {
        assert!(KmsgHints::open(Path::new("/nonexistent/kmsg")).is_err());
    }

    /// A FIFO stands in for /dev/kmsg: a record written to it wakes the waiter.
    #[test]
    fn a_record_wakes_the_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("kmsg");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        // Keep a writer open so the reader does not see EOF, then open the reader.
        let writer_path = fifo.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(writer_path)
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            w.write_all(b"6,1,100,-;livepatch: 'p': patching complete\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        // Opening a FIFO read-only and non-blocking succeeds without a writer; lseek fails
        // on a FIFO (ESPIPE), so build the waiter by hand.
        let fd = open(&fifo, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).unwrap();
        let mut hints = KmsgHints {
            tail: KmsgTail {
                fd,
                buf: vec![0; 1024],
            },
            last_event: None,
        };
        let woke = hints.wait(Duration::from_secs(5));
        assert!(woke);
        assert_eq!(
            hints.last_event().map(|(_, e)| e.clone()),
            Some(LivepatchEvent::PatchingComplete { patch: "p".into() })
        );
        writer.join().unwrap();
    }
}
