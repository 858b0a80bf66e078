//! Reading every thread's `patch_state` under a procfs root: the bulk of a
//! blocking-task scan, 10,000 threads on a busy node.
//!
//! The cost is the kernel's, per thread: a path lookup, a file opened, read
//! and closed. So the scan makes only those calls: it opens each process's
//! `task` directory once and every `<tid>/patch_state` relative to it (no walk
//! from `/`), lists directories with getdents into one buffer per worker, reads
//! names from its bytes (no allocation per thread), and spreads the processes
//! over a few threads when there are enough of them to pay for the threads.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::{CWD, Mode, OFlags, RawDir, openat};

use super::TaskPatchState;
use super::linux::parse_patch_state;

/// Processes a scan thread gets at least: a tree of fewer than twice this is
/// scanned on the calling thread alone, where starting threads would cost
/// more than they save.
pub const MIN_PROCESSES_PER_SCAN_THREAD: usize = 128;
/// Threads beyond this add little: the scan is bound by the kernel's per-file work.
pub const MAX_SCAN_THREADS: usize = 8;
/// Processes a worker takes at a time from the shared list.
const BATCH: usize = 32;
/// getdents buffers: procfs's root lists in a few calls, a `task` directory in one.
const ROOT_DIR_BUFFER: usize = 32 * 1024;
const TASK_DIR_BUFFER: usize = 8 * 1024;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);
const FILE_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::CLOEXEC);

/// Reads every thread's `patch_state` under a procfs root, sorted by (pid,
/// tid) as procfs lists them. A process or thread that vanishes meanwhile, or
/// whose `patch_state` cannot be read or parsed, is left out; only an
/// unreadable root is an error.
pub fn scan_patch_states(proc_root: &Path) -> std::io::Result<Vec<TaskPatchState>> {
    scan_with(proc_root, scan_threads)
}

/// How many threads scan `processes` processes: one for a small tree, else
/// one per core the process may use (its CPU affinity and cgroup quota), at
/// most [`MAX_SCAN_THREADS`], each with at least
/// [`MIN_PROCESSES_PER_SCAN_THREAD`] processes.
pub fn scan_threads(processes: usize) -> usize {
    if processes < 2 * MIN_PROCESSES_PER_SCAN_THREAD {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    cores
        .min(MAX_SCAN_THREADS)
        .min(processes / MIN_PROCESSES_PER_SCAN_THREAD)
}

/// [`scan_patch_states`] with the number of threads chosen by `threads(processes)`.
fn scan_with(
    proc_root: &Path,
    threads: impl FnOnce(usize) -> usize,
) -> std::io::Result<Vec<TaskPatchState>> {
    let root = openat(CWD, proc_root, DIR_FLAGS, Mode::empty())?;
    let processes = list_processes(&root);
    let threads = threads(processes.len()).max(1);
    let next = AtomicUsize::new(0);
    let mut states = if threads == 1 {
        scan_processes(&root, &processes, &next)
    } else {
        std::thread::scope(|s| {
            // The calling thread is one of the workers. A thread that cannot
            // be started leaves its share to the others: they take processes
            // from one list until it runs out.
            let workers: Vec<_> = (1..threads)
                .filter_map(|_| {
                    std::thread::Builder::new()
                        .name("graft-scan".into())
                        .spawn_scoped(s, || scan_processes(&root, &processes, &next))
                        .ok()
                })
                .collect();
            let mut states = scan_processes(&root, &processes, &next);
            for worker in workers {
                match worker.join() {
                    Ok(found) => states.extend(found),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            states
        })
    };
    states.sort_unstable_by_key(|s| (s.pid, s.tid));
    Ok(states)
}

/// The processes under the root: each one's pid, and its `<pid>/task` path
/// relative to the root, all paths in one buffer.
#[derive(Debug, Default)]
struct Processes {
    paths: Vec<u8>,
    /// pid and the end of its path in `paths` (it starts where the previous ends).
    entries: Vec<(u32, usize)>,
}

impl Processes {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The `i`th process: pid and `task` directory path.
    fn get(&self, i: usize) -> (u32, &[u8]) {
        let start = i.checked_sub(1).map_or(0, |p| self.entries[p].1);
        let (pid, end) = self.entries[i];
        (pid, &self.paths[start..end])
    }
}

/// The numeric entries of the root. An error part-way through ends the
/// list where it is (as it ends a `std::fs::read_dir`).
fn list_processes(root: &OwnedFd) -> Processes {
    let mut processes = Processes::default();
    let mut buf = Vec::with_capacity(ROOT_DIR_BUFFER);
    let mut dir = RawDir::new(root.as_fd(), buf.spare_capacity_mut());
    while let Some(Ok(entry)) = dir.next() {
        let name = entry.file_name().to_bytes();
        if let Some(pid) = parse_id(name) {
            processes.paths.extend_from_slice(name);
            processes.paths.extend_from_slice(b"/task");
            processes.entries.push((pid, processes.paths.len()));
        }
    }
    processes
}

/// Takes processes in batches from `processes` (the next one at `next`) until
/// none are left, reading their threads' `patch_state`.
fn scan_processes(
    root: &OwnedFd,
    processes: &Processes,
    next: &AtomicUsize,
) -> Vec<TaskPatchState> {
    let mut states = Vec::new();
    let mut dir_buf: Vec<u8> = Vec::with_capacity(TASK_DIR_BUFFER);
    let mut path = Vec::with_capacity(32);
    loop {
        let start = next.fetch_add(BATCH, Ordering::Relaxed);
        if start >= processes.len() {
            return states;
        }
        for i in start..processes.len().min(start + BATCH) {
            let (pid, task_dir) = processes.get(i);
            // A process can exit at any moment: a vanished directory is not an error.
            let Ok(tasks) = openat(root, task_dir, DIR_FLAGS, Mode::empty()) else {
                continue;
            };
            let mut dir = RawDir::new(&tasks, dir_buf.spare_capacity_mut());
            while let Some(Ok(entry)) = dir.next() {
                let name = entry.file_name().to_bytes();
                let Some(tid) = parse_id(name) else { continue };
                path.clear();
                path.extend_from_slice(name);
                path.extend_from_slice(b"/patch_state");
                if let Some(state) = read_patch_state(&tasks, &path) {
                    states.push(TaskPatchState { pid, tid, state });
                }
            }
        }
    }
}

/// One thread's `patch_state`, `None` when it is gone or unreadable.
fn read_patch_state(tasks: &OwnedFd, path: &[u8]) -> Option<i8> {
    let file = openat(tasks, path, FILE_FLAGS, Mode::empty()).ok()?;
    let mut buf = [0u8; 8];
    let n = rustix::io::read(&file, &mut buf).ok()?;
    parse_patch_state(&buf[..n])
}

/// A pid or tid directory name; anything else (`self`, `net`, `.`) is `None`.
fn parse_id(name: &[u8]) -> Option<u32> {
    std::str::from_utf8(name).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn triples(states: &[TaskPatchState]) -> Vec<(u32, u32, i8)> {
        states.iter().map(|s| (s.pid, s.tid, s.state)).collect()
    }

    #[test]
    fn scans_patch_states_of_every_thread() {
        let root = tempfile::tempdir().unwrap();
        write(&root.path().join("1/task/1/patch_state"), "1\n");
        write(&root.path().join("42/task/42/patch_state"), "0\n");
        write(&root.path().join("42/task/43/patch_state"), "1\n");
        write(&root.path().join("self/task/9/patch_state"), "0\n");
        fs::create_dir_all(root.path().join("77/task/77")).unwrap();
        let states = scan_patch_states(root.path()).unwrap();
        assert_eq!(triples(&states), vec![(1, 1, 1), (42, 42, 0), (42, 43, 1)]);
    }

    #[test]
    fn an_unreadable_root_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let err = scan_patch_states(&root.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        write(&root.path().join("file"), "");
        assert!(scan_patch_states(&root.path().join("file")).is_err());
    }

    /// A tree of `processes` processes of 1 to 3 threads (pid 1000 + 10 i,
    /// tids from the pid), with the odd cases procfs can show around them;
    /// returns it and what a scan must find.
    fn tree(processes: u32) -> (tempfile::TempDir, Vec<(u32, u32, i8)>) {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mut expected = Vec::new();
        for i in 0..processes {
            let pid = 1000 + 10 * i;
            for t in 0..=i % 3 {
                let tid = pid + t;
                let state = ((i + t) % 3) as i8 - 1;
                write(
                    &r.join(format!("{pid}/task/{tid}/patch_state")),
                    &format!("{state}\n"),
                );
                expected.push((pid, tid, state));
            }
            // Not threads: procfs names only threads with numbers.
            write(&r.join(format!("{pid}/task/children/patch_state")), "1\n");
        }
        // Not processes.
        for name in ["self", "thread-self", "net", "sys"] {
            write(&r.join(format!("{name}/task/5/patch_state")), "1\n");
        }
        write(&r.join("uptime"), "");
        // A process that exited between the listing and the read: no task directory.
        fs::create_dir_all(r.join("7")).unwrap();
        // A thread that exited: its directory without patch_state.
        fs::create_dir_all(r.join("8/task/8")).unwrap();
        write(&r.join("8/task/9/patch_state"), "1\n");
        expected.push((8, 9, 1));
        // Contents that are not a patch state.
        for (tid, content) in [(21, "2\n"), (22, ""), (23, "x\n"), (24, "\u{ff}")] {
            write(&r.join(format!("20/task/{tid}/patch_state")), content);
        }
        // A numeric file, not a directory, at the root and in a task directory.
        write(&r.join("30"), "");
        write(&r.join("31/task/32"), "");
        expected.sort_unstable();
        (root, expected)
    }

    #[test]
    fn skips_what_is_gone_unnumbered_or_unparsable() {
        let (root, expected) = tree(5);
        let states = scan_patch_states(root.path()).unwrap();
        assert_eq!(triples(&states), expected);
    }

    #[test]
    fn threads_find_what_one_thread_finds() {
        // Enough processes for the threaded path where there are cores.
        let (root, expected) = tree(300);
        assert_eq!(expected.len(), 100 * (1 + 2 + 3) + 1);
        let processes =
            list_processes(&openat(CWD, root.path(), DIR_FLAGS, Mode::empty()).unwrap());
        // 300 processes and 5 odd numeric entries (7, 8, 20, 30, 31).
        assert_eq!(processes.len(), 305);
        assert_eq!(triples(&scan_patch_states(root.path()).unwrap()), expected);
        for threads in [1, 2, 3, MAX_SCAN_THREADS, 400] {
            let mut asked = 0;
            let states = scan_with(root.path(), |n| {
                asked = n;
                threads
            })
            .unwrap();
            assert_eq!(asked, 305);
            assert_eq!(triples(&states), expected, "{threads} threads");
        }
    }

    #[test]
    fn small_trees_stay_on_one_thread() {
        assert_eq!(scan_threads(0), 1);
        assert_eq!(scan_threads(2 * MIN_PROCESSES_PER_SCAN_THREAD - 1), 1);
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(
            scan_threads(2 * MIN_PROCESSES_PER_SCAN_THREAD),
            cores.min(2)
        );
        assert_eq!(scan_threads(1_000_000), cores.min(MAX_SCAN_THREADS));
    }

    #[test]
    fn listing_keeps_each_process_path() {
        let root = tempfile::tempdir().unwrap();
        for pid in ["5", "0042", "123456"] {
            fs::create_dir_all(root.path().join(pid).join("task")).unwrap();
        }
        let processes =
            list_processes(&openat(CWD, root.path(), DIR_FLAGS, Mode::empty()).unwrap());
        let mut got: Vec<_> = (0..processes.len())
            .map(|i| {
                let (pid, path) = processes.get(i);
                (pid, String::from_utf8(path.to_vec()).unwrap())
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (5, "5/task".to_string()),
                (42, "0042/task".to_string()),
                (123456, "123456/task".to_string()),
            ]
        );
    }
}
