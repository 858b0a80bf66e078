//! When a child entered the system call that hands its module to the kernel.
//!
//! Everything the kernel does for an apply happens inside `finit_module`
//! (or `init_module`): copying and relocating the module, resolving the
//! patched functions through kallsyms, registering ftrace, and only then
//! logging "starting patching transition". Under qemu TCG that takes about
//! 90 ms on Debian's 6.1, so the time from the start record to the end record
//! leaves out kernel work that no loader can avoid. The kernel's tracing
//! events `syscalls/sys_enter_finit_module` and `sys_enter_init_module`, with
//! the trace clock set to `mono` (CLOCK_MONOTONIC), give the moment the
//! kernel's work began, on the same clock as the rest of the trial.

use std::path::{Path, PathBuf};

const EVENTS: [&str; 2] = [
    "syscalls/sys_enter_finit_module",
    "syscalls/sys_enter_init_module",
];

/// The kernel's trace buffer, set up for module-loading system calls.
pub struct SyscallTrace {
    dir: PathBuf,
}

impl SyscallTrace {
    /// Sets the trace clock and enables the events; `Err` says what is missing
    /// (no tracefs, no CONFIG_FTRACE_SYSCALLS, not root). The benchmark then
    /// runs without the column.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let write = |file: &str, value: &str| {
            std::fs::write(dir.join(file), value)
                .map_err(|e| format!("writing {value:?} to {}: {e}", dir.join(file).display()))
        };
        write("trace_clock", "mono")?;
        for event in EVENTS {
            write(&format!("events/{event}/enable"), "1")?;
        }
        write("tracing_on", "1")?;
        let trace = Self {
            dir: dir.to_path_buf(),
        };
        trace.clear();
        Ok(trace)
    }

    /// Empties the buffer (writing to `trace` with O_TRUNC does).
    pub fn clear(&self) {
        let _ = std::fs::write(self.dir.join("trace"), "");
    }

    /// CLOCK_MONOTONIC ns at which `pid` entered a module-loading call since
    /// the last clear; clears the buffer.
    pub fn take_module_call(&self, pid: u32) -> Option<i64> {
        let text = std::fs::read_to_string(self.dir.join("trace")).ok()?;
        self.clear();
        first_module_call(&text, pid)
    }
}

/// The timestamp of `pid`'s first `sys_finit_module(` or `sys_init_module(`
/// line in a trace buffer, e.g.
/// `  graft-agent-101 [001] ...1.  4.201966: sys_finit_module(fd: 4, ...)`.
pub fn first_module_call(trace: &str, pid: u32) -> Option<i64> {
    let task = format!("-{pid}");
    trace
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.contains("sys_finit_module(") || l.contains("sys_init_module("))
        // The task column, before "[cpu]", is "comm-pid"; comm may contain '-'.
        .filter(|l| {
            l.split('[')
                .next()
                .is_some_and(|t| t.trim_end().ends_with(&task))
        })
        .find_map(|l| {
            let (before, _) = l.split_once(": sys_")?;
            let stamp = before.rsplit(' ').next()?;
            let (secs, frac) = stamp.split_once('.')?;
            let secs: i64 = secs.parse().ok()?;
            // Microseconds with the mono clock; pad or cut to nanoseconds.
            let mut ns = frac.to_string();
            ns.truncate(9);
            while ns.len() < 9 {
                ns.push('0');
            }
            Some(secs * 1_000_000_000 + ns.parse::<i64>().ok()?)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
# tracer: nop
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
     graft-agent-1011    [001] ...1.     4.201900: sys_finit_module(fd: 4, uargs: 55556ef4a110, flags: 0)
     graft-agent-101     [001] ...1.     4.201966: sys_finit_module(fd: 4, uargs: 55556ef4a110, flags: 0)
     graft-bench-107     [000] ...1.    17.656895: sys_init_module(umod: 7f00, len: 3f798, uargs: 0)
";

    #[test]
    fn finds_the_pid_s_call_and_converts_to_ns() {
        assert_eq!(first_module_call(TRACE, 101), Some(4_201_966_000));
        assert_eq!(first_module_call(TRACE, 1011), Some(4_201_900_000));
        assert_eq!(first_module_call(TRACE, 107), Some(17_656_895_000));
    }

    #[test]
    fn other_pids_and_other_calls_are_not_taken() {
        assert_eq!(first_module_call(TRACE, 10), None);
        assert_eq!(first_module_call(TRACE, 1), None);
        let exit = "  graft-agent-101 [001] .N.1.  4.288743: sys_finit_module -> 0x0\n";
        assert_eq!(first_module_call(exit, 101), None);
        assert_eq!(first_module_call("", 101), None);
    }
}
