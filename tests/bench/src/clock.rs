//! Clock readings in nanoseconds, and the offsets between the clocks.

use nix::time::{ClockId, clock_gettime};

fn read(clock: ClockId) -> i64 {
    let ts = clock_gettime(clock).expect("clock_gettime cannot fail for a standard clock");
    ts.tv_sec() * 1_000_000_000 + ts.tv_nsec()
}

/// CLOCK_MONOTONIC, ns.
pub fn mono_ns() -> i64 {
    read(ClockId::CLOCK_MONOTONIC)
}

/// CPU time of the whole process (every thread, finished ones too), ns.
pub fn process_cpu_ns() -> u64 {
    read(ClockId::CLOCK_PROCESS_CPUTIME_ID) as u64
}

/// CLOCK_REALTIME, ns since the epoch.
pub fn real_ns() -> i64 {
    read(ClockId::CLOCK_REALTIME)
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC: add it to a monotonic time to get a
/// wall-clock one. Taken as the tightest of several realtime/monotonic/realtime
/// triples; returns (offset, uncertainty), both in ns.
pub fn realtime_offset() -> (i64, i64) {
    let mut best = (0, i64::MAX);
    for _ in 0..20 {
        let r0 = real_ns();
        let m = mono_ns();
        let r1 = real_ns();
        let gap = r1 - r0;
        if gap < best.1 {
            best = ((r0 + r1) / 2 - m, gap);
        }
    }
    best
}

/// The first field of a schedstat file: CPU time the task has run, in ns.
/// `/proc/thread-self/schedstat` for the calling thread, `/proc/<pid>/schedstat`
/// for a (single-threaded) child.
pub fn schedstat_ns(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_offset_is_tight_and_plausible() {
        let (offset, uncertainty) = realtime_offset();
        assert!(uncertainty < 1_000_000, "{uncertainty} ns");
        // The wall clock is decades past the monotonic clock's start.
        assert!(offset > 1_000_000_000 * 86_400 * 365);
    }

    #[test]
    fn own_thread_cpu_time_is_readable() {
        let a = schedstat_ns("/proc/thread-self/schedstat").expect("schedstat");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = schedstat_ns("/proc/thread-self/schedstat").unwrap();
        assert!(b > a);
    }
}
