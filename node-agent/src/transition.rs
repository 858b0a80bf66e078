//! Following a livepatch transition until every task is in the new universe.
//!
//! sysfs never wakes poll() or inotify, so the watcher combines two things:
//! wake-up hints from the kernel log (a record arrives within a scheduler tick
//! of the kernel finishing) and a poll of `transition`. Every wake-up is
//! confirmed from sysfs (log text is not an ABI) with two small reads,
//! `enabled` and `transition`. With hints the poll is only a safety net, every
//! 500 ms: the kernel logs the end of every transition, so the record wakes us
//! within a tick however short the transition, and each extra look costs CPU
//! (about a millisecond under emulation). Without hints the poll starts at
//! 1 ms and doubles to 100 ms, so a short transition is still seen soon.
//! When no transition runs, nothing here runs either.

use std::time::{Duration, Instant};

use crate::kernel::{Kernel, NoHints, PatchProgress, ProgressReader, Target, TransitionHints};

/// Poll delays: start fast so a transition of a few milliseconds is seen in
/// milliseconds, back off so a long one costs next to nothing.
#[derive(Debug, Clone)]
pub struct AdaptivePoll {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl AdaptivePoll {
    /// First delay when polling is all we have.
    pub const MIN: Duration = Duration::from_millis(1);
    /// The fixed delay when kernel-log hints work: the poll is only a safety net then.
    pub const WITH_HINTS: Duration = Duration::from_millis(500);
    /// Ceiling when polling is all we have.
    pub const MAX_WITHOUT_HINTS: Duration = Duration::from_millis(100);

    /// The schedule for a watcher whose hints come from `hint_source`
    /// ([`TransitionHints::describe`]).
    pub fn for_hints(hint_source: &str) -> Self {
        if hint_source == NoHints.describe() {
            Self::new(Self::MIN, Self::MAX_WITHOUT_HINTS)
        } else {
            Self::new(Self::WITH_HINTS, Self::WITH_HINTS)
        }
    }

    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// The delay to wait now; the one after is twice as long, up to the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Something happened: look again soon.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// What one look at sysfs says about the transition we follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Still switching tasks in the direction we want.
    InProgress(PatchProgress),
    /// Every task switched: patched and enabled, or (unpatching) the directory gone
    /// or about to go.
    Complete,
    /// Someone reversed the transition (it now heads the other way).
    Reversed(PatchProgress),
    /// The patch's directory vanished while we were patching (superseded or removed).
    Vanished,
}

/// Reads the patch's `enabled` and `transition` and says where the transition stands.
pub fn observe(kernel: &dyn Kernel, patch: &str, target: Target) -> std::io::Result<Observation> {
    classify(kernel.patch_progress(patch)?, target)
}

/// [`observe`] through a [`Kernel::progress_reader`], for a watcher that looks many times.
pub fn observe_with(read: &mut ProgressReader<'_>, target: Target) -> std::io::Result<Observation> {
    classify(read()?, target)
}

fn classify(progress: Option<PatchProgress>, target: Target) -> std::io::Result<Observation> {
    let Some(sysfs) = progress else {
        return Ok(match target {
            Target::Unpatched => Observation::Complete,
            Target::Patched => Observation::Vanished,
        });
    };
    let heading = Target::from_enabled(sysfs.enabled);
    Ok(match (sysfs.transition, heading == target) {
        (true, true) => Observation::InProgress(sysfs),
        (false, true) => Observation::Complete,
        (_, false) => Observation::Reversed(sysfs),
    })
}

/// Sleeps until the next reason to look: a kernel-log hint, the next poll, or `deadline`.
pub struct Waiter {
    hints: Box<dyn TransitionHints>,
    poll: AdaptivePoll,
    pub wakeups: u64,
}

impl Waiter {
    pub fn new(kernel: &dyn Kernel) -> Self {
        let hints = kernel.transition_hints();
        let poll = AdaptivePoll::for_hints(hints.describe());
        Self::with_hints(hints, poll)
    }

    pub fn with_hints(hints: Box<dyn TransitionHints>, poll: AdaptivePoll) -> Self {
        Self {
            hints,
            poll,
            wakeups: 0,
        }
    }

    pub fn hint_source(&self) -> &'static str {
        self.hints.describe()
    }

    /// Waits for the next poll, a hint, or `deadline`, whichever comes first.
    pub fn wait(&mut self, deadline: Option<Instant>) {
        let mut delay = self.poll.next_delay();
        if let Some(deadline) = deadline {
            delay = delay.min(deadline.saturating_duration_since(Instant::now()));
        }
        self.wakeups += 1;
        let hinted = self.hints.wait(delay);
        tracing::trace!(
            delay_ms = delay.as_secs_f64() * 1e3,
            hinted,
            "transition watcher woke"
        );
        if hinted {
            self.poll.reset();
        }
    }

    /// Restarts the fast phase (a new transition begins).
    pub fn restart(&mut self) {
        self.poll.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_delays_double_up_to_the_ceiling_and_reset() {
        let mut p = AdaptivePoll::new(Duration::from_millis(1), Duration::from_millis(10));
        let delays: Vec<u128> = (0..6).map(|_| p.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        p.reset();
        assert_eq!(p.next_delay(), Duration::from_millis(1));
    }

    #[test]
    fn with_kernel_log_hints_the_poll_is_a_slow_fallback() {
        let mut with = AdaptivePoll::for_hints("kernel log");
        let delays: Vec<u128> = (0..5).map(|_| with.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![500, 500, 500, 500, 500]);
        let mut without = AdaptivePoll::for_hints(NoHints.describe());
        let delays: Vec<u128> = (0..8).map(|_| without.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 100]);
    }

    /// The watcher's look reads `enabled` and `transition` only: a patch
    /// directory with nothing else in it is enough.
    #[test]
    fn observing_needs_only_enabled_and_transition() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("kernel/livepatch/p");
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = crate::kernel::linux::LinuxKernel::with_roots(
            root.path(),
            root.path().join("proc"),
            root.path().join("kmsg"),
        );
        let set = |enabled: &str, transition: &str| {
            std::fs::write(dir.join("enabled"), enabled).unwrap();
            std::fs::write(dir.join("transition"), transition).unwrap();
        };
        set("1\n", "1\n");
        let progress = PatchProgress {
            enabled: true,
            transition: true,
        };
        assert_eq!(
            observe(&kernel, "p", Target::Patched).unwrap(),
            Observation::InProgress(progress)
        );
        assert_eq!(
            observe(&kernel, "p", Target::Unpatched).unwrap(),
            Observation::Reversed(progress)
        );
        set("1\n", "0\n");
        assert_eq!(
            observe(&kernel, "p", Target::Patched).unwrap(),
            Observation::Complete
        );
        set("0\n", "0\n");
        assert_eq!(
            observe(&kernel, "p", Target::Unpatched).unwrap(),
            Observation::Complete
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            observe(&kernel, "p", Target::Unpatched).unwrap(),
            Observation::Complete
        );
        assert_eq!(
            observe(&kernel, "p", Target::Patched).unwrap(),
            Observation::Vanished
        );
    }

    #[test]
    fn waiter_never_sleeps_past_the_deadline() {
        let mut w = Waiter::with_hints(
            Box::new(NoHints),
            AdaptivePoll::new(Duration::from_secs(5), Duration::from_secs(5)),
        );
        let start = Instant::now();
        w.wait(Some(start + Duration::from_millis(20)));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
