//! Which tasks have switched to the new universe, and which block it.
//!
//! During a transition every thread's `patch_state` is 0 (unpatched) or 1
//! (patched); the ones whose state differs from the target block it. For
//! those only, we read the name, the stack (to find the patched function they
//! sleep in) and the cgroup (to name the pod).

use serde::Serialize;

use crate::kernel::{Kernel, Target, TaskPatchState};
use crate::pods::{PodRef, pod_from_cgroup};

/// How far a node has moved to the new universe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskCensus {
    /// Threads taking part in the transition (patch_state 0 or 1).
    pub total: usize,
    /// Threads already on the target side.
    pub switched: usize,
    #[serde(skip)]
    pub blockers: Vec<TaskPatchState>,
}

impl TaskCensus {
    pub fn remaining(&self) -> usize {
        self.total - self.switched
    }
}

/// Counts switched and blocking threads. `-1` means no transition runs for that
/// thread (the kernel reports -1 for everyone outside a transition).
pub fn census(states: &[TaskPatchState], target: Target) -> TaskCensus {
    let target = target as i8;
    let mut census = TaskCensus::default();
    for task in states.iter().filter(|t| t.state >= 0) {
        census.total += 1;
        if task.state == target {
            census.switched += 1;
        } else {
            census.blockers.push(*task);
        }
    }
    census
}

/// A task that keeps a transition from finishing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockingTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Kernel threads are not freed by the kernel's fake signals.
    pub kthread: bool,
    /// The function it sleeps in: a function the patch replaces when one is on
    /// its stack, else the innermost frame that is not the scheduler's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Whether `function` is one the patch replaces.
    pub in_patched_function: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

/// Reads the details of up to `limit` blocking tasks. A task that exits
/// meanwhile is skipped: it no longer blocks anything.
pub fn describe_blockers(
    kernel: &dyn Kernel,
    blockers: &[TaskPatchState],
    patched_functions: &[&str],
    limit: usize,
) -> Vec<BlockingTask> {
    let mut described = Vec::new();
    for task in blockers {
        if described.len() >= limit {
            break;
        }
        let Ok(comm) = kernel.task_comm(task.pid, task.tid) else {
            continue;
        };
        let stack = kernel.task_stack(task.pid, task.tid).unwrap_or_default();
        let frames = stack_functions(&stack);
        let patched = frames
            .iter()
            .find(|f| patched_functions.contains(f))
            .map(|f| f.to_string());
        let in_patched_function = patched.is_some();
        let function = patched.or_else(|| {
            frames
                .iter()
                .find(|f| !is_scheduler_frame(f))
                .map(|f| f.to_string())
        });
        described.push(BlockingTask {
            pid: task.pid,
            tid: task.tid,
            comm,
            kthread: kernel.task_is_kthread(task.pid).unwrap_or(false),
            function,
            in_patched_function,
            pod: kernel
                .task_cgroup(task.pid)
                .ok()
                .and_then(|c| pod_from_cgroup(&c)),
        });
    }
    described
}

/// Function names from `/proc/<pid>/task/<tid>/stack`, innermost first.
/// Lines look like `[<0>] graft_rig_hold+0x1c/0x30 [graft_stall_rig]`
/// (older kernels print the address instead of `0`).
pub fn stack_functions(stack: &str) -> Vec<&str> {
    stack
        .lines()
        .filter_map(|line| {
            let symbol = line.trim().split_once("] ")?.1;
            let name = symbol.split(['+', ' ']).next()?;
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Frames every sleeping task has; they say nothing about why it blocks.
fn is_scheduler_frame(name: &str) -> bool {
    const GENERIC: [&str; 12] = [
        "__schedule",
        "schedule",
        "schedule_timeout",
        "schedule_hrtimeout_range",
        "schedule_hrtimeout_range_clock",
        "io_schedule",
        "preempt_schedule",
        "do_nanosleep",
        "hrtimer_nanosleep",
        "wait_woken",
        "__switch_to",
        "__switch_to_asm",
    ];
    GENERIC.contains(&name) || name.starts_with("__sched_text")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pid: u32, state: i8) -> TaskPatchState {
        TaskPatchState {
            pid,
            tid: pid,
            state,
        }
    }

    #[test]
    fn census_counts_only_tasks_in_the_transition() {
        let states = [t(1, 1), t(2, 1), t(3, 0), t(4, -1)];
        let c = census(&states, Target::Patched);
        assert_eq!((c.total, c.switched, c.remaining()), (3, 2, 1));
        assert_eq!(c.blockers, vec![t(3, 0)]);

        // Reversing: the target is unpatched, so the patched ones block.
        let c = census(&states, Target::Unpatched);
        assert_eq!((c.total, c.switched), (3, 1));
        assert_eq!(c.blockers.len(), 2);

        let idle = [t(1, -1), t(2, -1)];
        let c = census(&idle, Target::Patched);
        assert_eq!((c.total, c.switched), (0, 0));
    }

    #[test]
    fn parses_stacks_of_old_and_new_kernels() {
        let stack = "[<0>] __schedule+0x2d1/0x8a0\n[<0>] schedule+0x5e/0xd0\n\
                     [<0>] graft_rig_hold+0x3a/0x60 [graft_stall_rig]\n\
                     [<0>] graft_rig_thread+0x1b/0x40 [graft_stall_rig]\n[<0>] kthread+0xe8/0x110\n";
        assert_eq!(
            stack_functions(stack),
            vec![
                "__schedule",
                "schedule",
                "graft_rig_hold",
                "graft_rig_thread",
                "kthread"
            ]
        );
        let old =
            "[<ffffffff810a5b2c>] do_wait+0x1bc/0x230\n[<ffffffff8106c4d3>] SyS_wait4+0x83/0x100\n";
        assert_eq!(stack_functions(old), vec!["do_wait", "SyS_wait4"]);
        assert!(stack_functions("").is_empty());
        assert!(stack_functions("garbage\n").is_empty());
    }

    #[test]
    fn scheduler_frames_are_skipped_when_naming_a_function() {
        let frames = stack_functions(
            "[<0>] __schedule+0x1/0x2\n[<0>] do_nanosleep+0x1/0x2\n[<0>] hrtimer_nanosleep+0x1/0x2\n[<0>] __x64_sys_nanosleep+0x1/0x2\n",
        );
        let first = frames.iter().find(|f| !is_scheduler_frame(f)).copied();
        assert_eq!(first, Some("__x64_sys_nanosleep"));
    }
}
