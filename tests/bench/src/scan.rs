//! Speed of the blocking-task scan over a generated /proc tree.
//!
//! The tree has `tasks` threads spread over processes of 1 to 8 threads,
//! each with `patch_state`, `comm`, `stat`, `stack` and `cgroup` like procfs
//! shows them during a patching transition; one thread in a hundred has not
//! switched yet (a blocker). One scan is what the agent does when it looks at
//! a transition ([`graft_agent::patching`]'s census_and_blockers): read every
//! thread's `patch_state` through [`LinuxKernel::task_states`], count them
//! ([`census`]), and describe the first [`MAX_BLOCKING_REPORTED`] blockers
//! ([`describe_blockers`]: comm, stack, kthread flag, pod).

use std::fs;
use std::path::Path;
use std::time::Instant;

use graft_agent::kernel::linux::LinuxKernel;
use graft_agent::kernel::proc_scan::scan_threads;
use graft_agent::kernel::{Kernel, Target};
use graft_agent::patching::MAX_BLOCKING_REPORTED;
use graft_agent::tasks::{census, describe_blockers};
use serde::Serialize;

use crate::clock::process_cpu_ns;
use crate::stats::Summary;

/// Threads per process, cycling: 10,000 threads make 3,334 processes.
const THREADS: [u32; 6] = [1, 1, 2, 4, 1, 8];
const PATCHED: &[&str] = &["cmdline_proc_show"];

/// Writes the tree under `root` (`root/proc`, `root/sys`); returns (processes, threads, blockers).
pub fn generate(root: &Path, tasks: u32) -> std::io::Result<(u32, u32, u32)> {
    let proc = root.join("proc");
    fs::create_dir_all(root.join("sys/kernel/livepatch"))?;
    // Non-numeric entries procfs has at its root.
    for name in [
        "self",
        "thread-self",
        "sys",
        "net",
        "irq",
        "bus",
        "driver",
        "tty",
    ] {
        fs::create_dir_all(proc.join(name))?;
    }
    for name in ["cmdline", "meminfo", "stat", "uptime", "version", "loadavg"] {
        fs::write(proc.join(name), "")?;
    }
    let (mut made, mut pid, mut procs, mut blockers) = (0u32, 100u32, 0u32, 0u32);
    while made < tasks {
        let n = THREADS[procs as usize % THREADS.len()].min(tasks - made);
        let pdir = proc.join(pid.to_string());
        let kthread = procs % 10 == 0;
        let comm = if kthread {
            format!("kworker/{procs}")
        } else {
            format!("app-{procs}")
        };
        let flags = if kthread { 0x0020_8040u32 } else { 0x0040_0100 };
        fs::create_dir_all(&pdir)?;
        fs::write(
            pdir.join("stat"),
            format!(
                "{pid} ({comm}) S 1 {pid} {pid} 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 {n} 0 100 0 0\n"
            ),
        )?;
        fs::write(
            pdir.join("cgroup"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{:08x}_1111_2222_3333_444455556666.slice/cri-containerd-{}.scope\n",
                procs,
                "ab".repeat(32)
            ),
        )?;
        for t in 0..n {
            let tid = pid + t;
            let tdir = pdir.join("task").join(tid.to_string());
            fs::create_dir_all(&tdir)?;
            let blocker = (made + t) % 100 == 37;
            blockers += u32::from(blocker);
            fs::write(
                tdir.join("patch_state"),
                if blocker { "0\n" } else { "1\n" },
            )?;
            fs::write(tdir.join("comm"), format!("{comm}\n"))?;
            let stack = if blocker {
                "[<0>] __schedule+0x2d1/0x8a0\n[<0>] schedule+0x5e/0xd0\n[<0>] seq_read_iter+0x120/0x440\n[<0>] cmdline_proc_show+0x1c/0x30\n[<0>] vfs_read+0x1a4/0x2c0\n"
            } else {
                "[<0>] __schedule+0x2d1/0x8a0\n[<0>] schedule+0x5e/0xd0\n[<0>] do_nanosleep+0x8c/0x1a0\n"
            };
            fs::write(tdir.join("stack"), stack)?;
        }
        made += n;
        procs += 1;
        pid += n + 3;
    }
    Ok((procs, made, blockers))
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanResult {
    pub tasks: u32,
    pub processes: u32,
    pub blockers: u32,
    pub runs: usize,
    /// The first scan after generating the tree (caches warm from writing it).
    pub first_ms: f64,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub p90_ms: f64,
    /// The `patch_state` pass alone (median).
    pub states_median_ms: f64,
    /// CPU time of a scan (median), of every thread of the process: below the
    /// wall time when the machine is busy, above it when the scan runs on
    /// several threads.
    pub cpu_median_ms: f64,
    /// Threads the `patch_state` pass runs on for this tree on this machine.
    pub scan_threads: usize,
    pub described: usize,
    /// Where the tree was: "tmpfs" (like procfs, in memory) or "disk".
    pub tree_fs: String,
    /// Reference: the machine's real /proc — threads, and the median cost per
    /// thread of opening and reading its `comm` (a file procfs serves like
    /// `patch_state`, through single_open) — scaled to `tasks`.
    pub real_proc_threads: usize,
    pub real_proc_us_per_task: f64,
    pub real_proc_scaled_ms: f64,
}

/// Median µs per thread to open and read `/proc/<pid>/task/<tid>/comm` over
/// the machine's threads; (threads, µs).
pub fn real_proc_reference(runs: usize) -> (usize, f64) {
    let mut per_task = Vec::new();
    let mut threads = 0;
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        let mut n = 0usize;
        let mut buf = [0u8; 64];
        let Ok(procs) = fs::read_dir("/proc") else {
            return (0, f64::NAN);
        };
        for p in procs.flatten() {
            if p.file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                .is_none()
            {
                continue;
            }
            let Ok(tasks) = fs::read_dir(p.path().join("task")) else {
                continue;
            };
            for t in tasks.flatten() {
                if let Ok(mut f) = fs::File::open(t.path().join("comm")) {
                    use std::io::Read;
                    if f.read(&mut buf).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        if n > 0 {
            per_task.push(t0.elapsed().as_secs_f64() * 1e6 / n as f64);
            threads = n;
        }
    }
    (
        threads,
        Summary::of(&per_task).map_or(f64::NAN, |s| s.median),
    )
}

/// Whether `dir` is on a tmpfs.
pub fn on_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Generates the tree under `root` and times `runs` scans (after one first scan).
pub fn run(root: &Path, tasks: u32, runs: usize) -> anyhow::Result<ScanResult> {
    let _ = fs::remove_dir_all(root);
    let (processes, made, blockers) = generate(root, tasks)?;
    let kernel = LinuxKernel::with_roots(root.join("sys"), root.join("proc"), root.join("kmsg"));
    let scan = || -> anyhow::Result<(f64, f64, usize, usize, f64)> {
        let cpu0 = process_cpu_ns();
        let t0 = Instant::now();
        let states = kernel.task_states()?;
        let t1 = Instant::now();
        let c = census(&states, Target::Patched);
        let described = describe_blockers(&kernel, &c.blockers, PATCHED, MAX_BLOCKING_REPORTED);
        let total = t0.elapsed().as_secs_f64() * 1e3;
        let cpu = process_cpu_ns();
        Ok((
            total,
            (t1 - t0).as_secs_f64() * 1e3,
            c.total,
            described.len(),
            cpu.saturating_sub(cpu0) as f64 / 1e6,
        ))
    };
    let (first_ms, _, seen, _, _) = scan()?;
    if seen != made as usize {
        anyhow::bail!("the scan saw {seen} tasks, the tree has {made}");
    }
    let mut totals = Vec::new();
    let mut states = Vec::new();
    let mut cpus = Vec::new();
    let mut described = 0;
    for _ in 0..runs.max(1) {
        let (t, s, _, d, c) = scan()?;
        totals.push(t);
        states.push(s);
        cpus.push(c);
        described = d;
    }
    let tree_fs = if root.parent().is_some_and(on_tmpfs) {
        "tmpfs"
    } else {
        "disk"
    };
    let _ = fs::remove_dir_all(root);
    let s = Summary::of(&totals).expect("at least one run");
    let (real_proc_threads, real_proc_us_per_task) = real_proc_reference(runs);
    Ok(ScanResult {
        tasks: made,
        processes,
        blockers,
        runs: totals.len(),
        first_ms,
        median_ms: s.median,
        min_ms: s.min,
        max_ms: s.max,
        p90_ms: s.p90,
        states_median_ms: Summary::of(&states).map(|s| s.median).unwrap_or(f64::NAN),
        cpu_median_ms: Summary::of(&cpus).map(|s| s.median).unwrap_or(f64::NAN),
        scan_threads: scan_threads(processes as usize),
        described,
        tree_fs: tree_fs.into(),
        real_proc_threads,
        real_proc_us_per_task,
        real_proc_scaled_ms: real_proc_us_per_task * made as f64 / 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tree_has_the_asked_threads_and_blockers() {
        let dir = tempfile::tempdir().unwrap();
        let (procs, threads, blockers) = generate(dir.path(), 250).unwrap();
        assert_eq!(threads, 250);
        assert!(procs > 50 && procs < 250);
        assert_eq!(blockers, 3);
        let kernel = LinuxKernel::with_roots(
            dir.path().join("sys"),
            dir.path().join("proc"),
            dir.path().join("kmsg"),
        );
        let states = kernel.task_states().unwrap();
        let c = census(&states, Target::Patched);
        assert_eq!((c.total, c.remaining()), (250, 3));
        let d = describe_blockers(&kernel, &c.blockers, PATCHED, 50);
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|b| b.in_patched_function));
        assert!(d.iter().all(|b| b.pod.is_some()));
    }
}
