//! Reading `/dev/kmsg` for the benchmark: the kernel's own transition records
//! and the alignment of printk timestamps with CLOCK_MONOTONIC.
//!
//! printk stamps records with the kernel's local clock, not CLOCK_MONOTONIC.
//! Writing a marker line to `/dev/kmsg` between two CLOCK_MONOTONIC readings
//! pins the offset between the two clocks: the record's stamp was taken
//! between the readings. Boot with `printk.devkmsg=on`, or user writes are
//! rate-limited (10 per 5 s per open file) and silently dropped.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use graft_agent::kernel::kmsg::{KmsgRecord, KmsgTail, LivepatchEvent, livepatch_event};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::clock::mono_ns;

/// What a kernel record says about a livepatch transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionLog {
    /// "livepatch: '<patch>': starting patching transition" (or unpatching).
    Start { patch: String, patching: bool },
    /// "livepatch: '<patch>': patching complete" (or unpatching).
    End { patch: String, patching: bool },
}

pub fn transition_log(message: &str) -> Option<TransitionLog> {
    match livepatch_event(message) {
        Some(LivepatchEvent::PatchingComplete { patch }) => {
            return Some(TransitionLog::End {
                patch,
                patching: true,
            });
        }
        Some(LivepatchEvent::UnpatchingComplete { patch }) => {
            return Some(TransitionLog::End {
                patch,
                patching: false,
            });
        }
        None => {}
    }
    let rest = message.strip_prefix("livepatch: '")?;
    let (patch, tail) = rest.split_once("': ")?;
    let patching = match tail.trim_end() {
        "starting patching transition" => true,
        "starting unpatching transition" => false,
        _ => return None,
    };
    Some(TransitionLog::Start {
        patch: patch.to_string(),
        patching,
    })
}

/// A non-blocking reader positioned at the end of the log (the agent's
/// [`KmsgTail`]), which also writes the alignment markers.
#[derive(Debug)]
pub struct KmsgReader {
    tail: KmsgTail,
    path: std::path::PathBuf,
    /// Records lost to overruns (EPIPE).
    pub lost: u64,
}

impl KmsgReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            tail: KmsgTail::open(path)?,
            path: path.to_path_buf(),
            lost: 0,
        })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.tail.fd()
    }

    /// Every record written since the last call.
    pub fn drain(&mut self) -> io::Result<Vec<KmsgRecord>> {
        let mut records = Vec::new();
        let drained = self.tail.drain(|r| records.push(r))?;
        self.lost += drained.lost as u64;
        Ok(records)
    }

    /// Blocks until a record arrives or `timeout` passes; true when readable.
    pub fn wait(&self, timeout: Duration) -> bool {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.tail.fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)), Ok(n) if n > 0)
    }

    /// Writes marker lines and returns the offset CLOCK_MONOTONIC − printk
    /// clock (the tightest of `attempts`). Records other than the markers that
    /// show up meanwhile are returned too, so none is lost.
    pub fn align(&mut self, tag: &str, attempts: u32) -> io::Result<(Alignment, Vec<KmsgRecord>)> {
        let mut best: Option<Alignment> = None;
        let mut others = Vec::new();
        for attempt in 0..attempts {
            let text = format!("graft-bench: marker {tag}.{attempt}");
            // A fresh file each time: rate limits (without printk.devkmsg=on) count per open file.
            let mut w = OpenOptions::new().write(true).open(&self.path)?;
            let before = mono_ns();
            // The newline ends the record: without it the record stays open for a
            // continuation and readers only see it once the next record arrives.
            w.write_all(format!("{text}\n").as_bytes())?;
            let after = mono_ns();
            let mut found = None;
            for _ in 0..50 {
                for r in self.drain()? {
                    if r.message == text {
                        found = Some(r);
                    } else {
                        others.push(r);
                    }
                }
                if found.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let Some(record) = found else {
                return Err(io::Error::other(format!(
                    "the marker {text:?} written to {} never came back: boot with printk.devkmsg=on",
                    self.path.display()
                )));
            };
            let a = Alignment {
                offset_ns: (before + after) / 2 - record.timestamp_us as i64 * 1000,
                // Half the bracket, plus the printk stamp's microsecond resolution.
                uncertainty_ns: (after - before) / 2 + 500,
            };
            if best.is_none_or(|b| a.uncertainty_ns < b.uncertainty_ns) {
                best = Some(a);
            }
        }
        Ok((best.expect("at least one attempt"), others))
    }
}

/// CLOCK_MONOTONIC = printk time + `offset_ns`, known to ± `uncertainty_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alignment {
    pub offset_ns: i64,
    pub uncertainty_ns: i64,
}

impl Alignment {
    pub fn to_mono_ns(&self, timestamp_us: u64) -> i64 {
        timestamp_us as i64 * 1000 + self.offset_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_start_and_end_records() {
        assert_eq!(
            transition_log("livepatch: 'graft_demo': starting patching transition"),
            Some(TransitionLog::Start {
                patch: "graft_demo".into(),
                patching: true
            })
        );
        assert_eq!(
            transition_log("livepatch: 'graft_demo': starting unpatching transition"),
            Some(TransitionLog::Start {
                patch: "graft_demo".into(),
                patching: false
            })
        );
        assert_eq!(
            transition_log("livepatch: 'graft_demo': unpatching complete"),
            Some(TransitionLog::End {
                patch: "graft_demo".into(),
                patching: false
            })
        );
        assert_eq!(
            transition_log("livepatch: enabling patch 'graft_demo'"),
            None
        );
        assert_eq!(
            transition_log("livepatch: 'graft_demo': initializing patching transition"),
            None
        );
    }

    #[test]
    fn alignment_maps_printk_to_monotonic() {
        let a = Alignment {
            offset_ns: 2_500,
            uncertainty_ns: 10,
        };
        assert_eq!(a.to_mono_ns(1_000), 1_002_500);
    }
}
