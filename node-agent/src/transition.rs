//! Following a livepatch transition until every task is in the new universe.
//!
//! sysfs never wakes poll() or inotify, so the watcher combines two things:
//! wake-up hints from the kernel log (a record arrives within a scheduler tick
//! of the kernel finishing) and an adaptive poll of `transition` (1 ms,
//! doubling to a ceiling) that catches fast transitions and covers kernels
//! whose log says nothing. Every wake-up is confirmed from sysfs: log text is
//! not an ABI. When no transition runs, nothing here runs either.

use std::time::{Duration, Instant};

use crate::kernel::{Kernel, PatchSysfs, Target, TransitionHints};

/// Poll delays: start fast so a transition of a few milliseconds is seen in
/// milliseconds, back off so a long one costs next to nothing.
#[derive(Debug, Clone)]
pub struct AdaptivePoll {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl AdaptivePoll {
    pub const MIN: Duration = Duration::from_millis(1);
    /// Ceiling when kernel-log hints work: the poll is only a fallback then.
    pub const MAX_WITH_HINTS: Duration = Duration::from_millis(500);
    /// Ceiling when polling is all we have.
    pub const MAX_WITHOUT_HINTS: Duration = Duration::from_millis(100);

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
    InProgress(PatchSysfs),
    /// Every task switched: patched and enabled, or (unpatching) the directory gone
    /// or about to go.
    Complete,
    /// Someone reversed the transition (it now heads the other way).
    Reversed(PatchSysfs),
    /// The patch's directory vanished while we were patching (superseded or removed).
    Vanished,
}

/// Reads the patch's sysfs state and says where the transition stands.
pub fn observe(kernel: &dyn Kernel, patch: &str, target: Target) -> std::io::Result<Observation> {
    let Some(sysfs) = kernel.patch(patch)? else {
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
        let max = if hints.describe() == "polling only" {
            AdaptivePoll::MAX_WITHOUT_HINTS
        } else {
            AdaptivePoll::MAX_WITH_HINTS
        };
        Self::with_hints(hints, AdaptivePoll::new(AdaptivePoll::MIN, max))
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
        if self.hints.wait(delay) {
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
    use crate::kernel::NoHints;

    #[test]
    fn poll_delays_double_up_to_the_ceiling_and_reset() {
        let mut p = AdaptivePoll::new(Duration::from_millis(1), Duration::from_millis(10));
        let delays: Vec<u128> = (0..6).map(|_| p.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        p.reset();
        assert_eq!(p.next_delay(), Duration::from_millis(1));
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
