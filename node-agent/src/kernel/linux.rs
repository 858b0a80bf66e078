//! The real kernel: syscalls, sysfs and procfs.
//!
//! Roots are configurable so the same code reads fake trees in tests and
//! benchmarks. Only attributes that exist are read: kernels differ
//! (`patched` 6.1+, `replace` 6.11+, `stack_order` 6.14+, `signal` 4.15–5.0).

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::proc_scan::scan_patch_states;
use super::{
    Kernel, KernelKind, KernelResult, LoadedModule, PatchProgress, PatchSysfs, PatchedFunction,
    PatchedObject, ProgressReader, TaskPatchState, TransitionHints, kmsg::KmsgHints,
};
use crate::module_file::ModuleInfo;

/// PF_KTHREAD in `/proc/<pid>/stat`'s flags field.
const PF_KTHREAD: u64 = 0x0020_0000;

#[derive(Debug, Clone)]
pub struct LinuxKernel {
    sys: PathBuf,
    proc: PathBuf,
    kmsg: PathBuf,
}

impl Default for LinuxKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl LinuxKernel {
    pub fn new() -> Self {
        Self::with_roots("/sys", "/proc", "/dev/kmsg")
    }

    /// A kernel whose sysfs, procfs and log device live elsewhere (tests, benchmarks).
    pub fn with_roots(
        sys: impl Into<PathBuf>,
        proc: impl Into<PathBuf>,
        kmsg: impl Into<PathBuf>,
    ) -> Self {
        Self {
            sys: sys.into(),
            proc: proc.into(),
            kmsg: kmsg.into(),
        }
    }

    fn livepatch_dir(&self) -> PathBuf {
        self.sys.join("kernel/livepatch")
    }

    fn module_dir(&self, name: &str) -> PathBuf {
        self.sys.join("module").join(name)
    }

    fn read_module(&self, dir: &Path, name: &str) -> KernelResult<Option<LoadedModule>> {
        // A module being removed can vanish between two reads.
        match self.read_module_dir(dir, name) {
            Err(e) if gone(&e) => Ok(None),
            other => other,
        }
    }

    fn read_module_dir(&self, dir: &Path, name: &str) -> KernelResult<Option<LoadedModule>> {
        // Built-in "modules" also have a /sys/module directory, but no refcnt.
        let refcnt = match read_trimmed(&dir.join("refcnt")) {
            Ok(r) => r.parse().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(LoadedModule {
            name: name.to_string(),
            refcnt,
            srcversion: read_optional(&dir.join("srcversion"))?,
            livepatch: read_optional(&dir.join("taint"))?.is_some_and(|t| t.contains('K')),
            live: read_optional(&dir.join("initstate"))?.is_none_or(|s| s == "live"),
        }))
    }

    /// Reads `/sys/kernel/livepatch/<name>/` whole. Any of its reads can find
    /// the directory gone ([`gone`]); [`Kernel::patch`] turns that into `None`.
    fn read_patch_dir(&self, name: &str) -> io::Result<Option<PatchSysfs>> {
        let dir = self.livepatch_dir().join(name);
        let enabled = read_trimmed(&dir.join("enabled"))? == "1";
        let transition = read_trimmed(&dir.join("transition"))? == "1";
        let replace = read_optional(&dir.join("replace"))?.map(|v| v == "1");
        let stack_order = read_optional(&dir.join("stack_order"))?.and_then(|v| v.parse().ok());
        let signal_supported = dir.join("signal").exists();
        let mut objects = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let object_dir = entry.path();
            let mut functions = Vec::new();
            for func in fs::read_dir(&object_dir)? {
                let func = func?;
                if !func.file_type()?.is_dir() {
                    continue;
                }
                if let Some(f) = parse_function_dir(&func.file_name().to_string_lossy()) {
                    functions.push(f);
                }
            }
            functions.sort_by(|a, b| a.name.cmp(&b.name));
            objects.push(PatchedObject {
                name: entry.file_name().to_string_lossy().into_owned(),
                patched: read_optional(&object_dir.join("patched"))?.map(|v| v == "1"),
                functions,
            });
        }
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(PatchSysfs {
            name: name.to_string(),
            enabled,
            transition,
            replace,
            stack_order,
            signal_supported,
            objects,
        }))
    }
}

impl Kernel for LinuxKernel {
    fn kind(&self) -> KernelKind {
        KernelKind::Linux
    }

    fn release(&self) -> KernelResult<String> {
        read_trimmed(&self.proc.join("sys/kernel/osrelease"))
    }

    fn boot_id(&self) -> KernelResult<String> {
        read_trimmed(&self.proc.join("sys/kernel/random/boot_id"))
    }

    fn livepatch_supported(&self) -> bool {
        self.livepatch_dir().is_dir()
    }

    fn signatures_enforced(&self) -> bool {
        read_optional(&self.sys.join("module/module/parameters/sig_enforce"))
            .ok()
            .flatten()
            .is_some_and(|v| v == "Y")
    }

    fn patch_names(&self) -> KernelResult<Vec<String>> {
        let mut names = Vec::new();
        match fs::read_dir(self.livepatch_dir()) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    if entry.path().is_dir() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        names.sort();
        Ok(names)
    }

    fn patch(&self, name: &str) -> KernelResult<Option<PatchSysfs>> {
        // The directory can vanish between any two reads (the unpatch ended):
        // whatever read finds it gone, the patch is gone.
        match self.read_patch_dir(name) {
            Err(e) if gone(&e) => Ok(None),
            other => other,
        }
    }

    fn patch_progress(&self, name: &str) -> KernelResult<Option<PatchProgress>> {
        let dir = self.livepatch_dir().join(name);
        let mut flags = [false; 2];
        for (flag, attr) in flags.iter_mut().zip(["enabled", "transition"]) {
            *flag = match read_trimmed(&dir.join(attr)) {
                Ok(v) => v == "1",
                // The directory goes away when an unpatching transition ends.
                Err(e) if gone(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
        }
        Ok(Some(PatchProgress {
            enabled: flags[0],
            transition: flags[1],
        }))
    }

    /// Opens `enabled` and `transition` once and re-reads them with pread:
    /// sysfs regenerates an attribute on every read at offset 0, so each look
    /// is two syscalls instead of six path lookups, opens and closes. Once the
    /// directory is removed the open files read ENODEV (gone); the files are
    /// then opened afresh at the next call.
    fn progress_reader<'k>(&'k self, name: &str) -> ProgressReader<'k> {
        let dir = self.livepatch_dir().join(name);
        let mut files: Option<(File, File)> = None;
        Box::new(move || {
            if files.is_none() {
                let open = |attr: &str| File::open(dir.join(attr));
                match open("enabled").and_then(|e| Ok((e, open("transition")?))) {
                    Ok(pair) => files = Some(pair),
                    Err(e) if gone(&e) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            let (enabled, transition) = files.as_ref().expect("opened above");
            let mut buf = [0u8; 8];
            let mut flag = |f: &File| -> io::Result<bool> {
                let n = f.read_at(&mut buf, 0)?;
                Ok(buf[..n].first() == Some(&b'1'))
            };
            match flag(enabled).and_then(|e| Ok((e, flag(transition)?))) {
                Ok((enabled, transition)) => Ok(Some(PatchProgress {
                    enabled,
                    transition,
                })),
                Err(e) if gone(&e) => {
                    files = None;
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn set_enabled(&self, name: &str, enabled: bool) -> KernelResult<()> {
        let value = if enabled { "1" } else { "0" };
        fs::write(self.livepatch_dir().join(name).join("enabled"), value)
    }

    fn force(&self, name: &str) -> KernelResult<()> {
        fs::write(self.livepatch_dir().join(name).join("force"), "1")
    }

    fn signal(&self, name: &str) -> KernelResult<()> {
        fs::write(self.livepatch_dir().join(name).join("signal"), "1")
    }

    fn load_module(&self, path: &Path, _info: &ModuleInfo) -> KernelResult<()> {
        let file = File::open(path)?;
        let no_params = CString::default();
        nix::kmod::finit_module(&file, &no_params, nix::kmod::ModuleInitFlags::empty())
            .map_err(io::Error::from)
    }

    fn unload_module(&self, name: &str) -> KernelResult<()> {
        let name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in module name"))?;
        nix::kmod::delete_module(&name, nix::kmod::DeleteModuleFlags::O_NONBLOCK)
            .map_err(io::Error::from)
    }

    fn loaded_module(&self, name: &str) -> KernelResult<Option<LoadedModule>> {
        self.read_module(&self.module_dir(name), name)
    }

    fn loaded_livepatch_modules(&self) -> KernelResult<Vec<LoadedModule>> {
        // One read of /proc/modules rather than a look into every /sys/module
        // entry (hundreds of built-ins): this runs after every apply.
        match fs::read_to_string(self.proc.join("modules")) {
            Ok(text) => {
                let mut found = parse_proc_modules(&text);
                found.retain(|m| m.livepatch);
                for m in &mut found {
                    m.srcversion = read_optional(&self.module_dir(&m.name).join("srcversion"))?;
                }
                found.sort_by(|a, b| a.name.cmp(&b.name));
                return Ok(found);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(self.sys.join("module"))? {
            let entry = entry?;
            // Not every entry is a module: 6.12 has a plain file, /sys/module/compression.
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(m) = self.read_module(&entry.path(), &name)?
                && m.livepatch
            {
                found.push(m);
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn task_states(&self) -> KernelResult<Vec<TaskPatchState>> {
        scan_patch_states(&self.proc)
    }

    fn task_comm(&self, pid: u32, tid: u32) -> KernelResult<String> {
        read_trimmed(&self.proc.join(format!("{pid}/task/{tid}/comm")))
    }

    fn task_stack(&self, pid: u32, tid: u32) -> KernelResult<String> {
        fs::read_to_string(self.proc.join(format!("{pid}/task/{tid}/stack")))
    }

    fn task_cgroup(&self, pid: u32) -> KernelResult<String> {
        fs::read_to_string(self.proc.join(format!("{pid}/cgroup")))
    }

    fn task_is_kthread(&self, pid: u32) -> KernelResult<bool> {
        let stat = fs::read_to_string(self.proc.join(format!("{pid}/stat")))?;
        Ok(stat_flags(&stat).is_some_and(|f| f & PF_KTHREAD != 0))
    }

    fn transition_hints(&self) -> Box<dyn TransitionHints> {
        match KmsgHints::open(&self.kmsg) {
            Ok(h) => Box::new(h),
            Err(e) => {
                tracing::debug!(path = %self.kmsg.display(), error = %e,
                    "kernel log not readable; following transitions by polling only");
                Box::new(super::NoHints)
            }
        }
    }
}

/// `/proc/modules`: "name size refcnt deps state address [(taints)]" per
/// module, e.g. "graft_demo 16384 1 - Live 0xffffffffc0a3c000 (OEK)". Taint K
/// marks a livepatch. `srcversion` is not in it (left `None`).
pub fn parse_proc_modules(text: &str) -> Vec<LoadedModule> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (name, refcnt, state) = (fields.first()?, fields.get(2)?, fields.get(4)?);
            let taints = fields
                .last()
                .filter(|f| f.starts_with('(') && f.ends_with(')'));
            Some(LoadedModule {
                name: name.to_string(),
                refcnt: refcnt.parse().unwrap_or(0),
                srcversion: None,
                livepatch: taints.is_some_and(|t| t.contains('K')),
                live: *state == "Live",
            })
        })
        .collect()
}

/// `patch_state` reads "-1\n", "0\n" or "1\n".
pub fn parse_patch_state(bytes: &[u8]) -> Option<i8> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    match text.parse::<i8>().ok()? {
        s @ -1..=1 => Some(s),
        _ => None,
    }
}

/// A function directory is `<function>,<sympos>`.
pub fn parse_function_dir(name: &str) -> Option<PatchedFunction> {
    let (func, pos) = name.rsplit_once(',')?;
    if func.is_empty() {
        return None;
    }
    Some(PatchedFunction {
        name: func.to_string(),
        sympos: pos.parse().ok()?,
    })
}

/// The flags field (9th) of `/proc/<pid>/stat`. The comm field may hold
/// spaces and parentheses, so fields are counted from the last ')'.
pub fn stat_flags(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp session tty_nr tpgid flags
    after_comm.split_whitespace().nth(6)?.parse().ok()
}

/// Whether a read failed because the file or its directory is gone: ENOENT,
/// or ENODEV from sysfs when the directory is being removed while we read
/// (the end of an unpatching transition, a module unloading).
pub fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32)
}

fn read_trimmed(path: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(path)?.trim().to_string())
}

fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match read_trimmed(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn parses_patch_state_values() {
        assert_eq!(parse_patch_state(b"-1\n"), Some(-1));
        assert_eq!(parse_patch_state(b"0\n"), Some(0));
        assert_eq!(parse_patch_state(b"1"), Some(1));
        assert_eq!(parse_patch_state(b"2\n"), None);
        assert_eq!(parse_patch_state(b""), None);
        assert_eq!(parse_patch_state(b"\xff"), None);
    }

    #[test]
    fn parses_function_directories() {
        assert_eq!(
            parse_function_dir("cmdline_proc_show,1"),
            Some(PatchedFunction {
                name: "cmdline_proc_show".into(),
                sympos: 1
            })
        );
        assert_eq!(parse_function_dir("a,b,0").unwrap().name, "a,b");
        assert_eq!(parse_function_dir("patched"), None);
        assert_eq!(parse_function_dir(",1"), None);
    }

    #[test]
    fn reads_kthread_flag_even_with_odd_comm() {
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0";
        assert_eq!(stat_flags(kthread), Some(2129984));
        assert!(stat_flags(kthread).unwrap() & PF_KTHREAD != 0);
        let user = "812 (my (odd) proc) S 1 812 812 0 -1 4194560 100 0 0 0 1 2 0 0 20 0";
        assert_eq!(stat_flags(user), Some(4194560));
        assert!(stat_flags(user).unwrap() & PF_KTHREAD == 0);
        assert_eq!(stat_flags("garbage"), None);
    }

    /// A sysfs tree as Debian's 6.1 shows it: no `replace`, no `stack_order`.
    #[test]
    fn reads_only_attributes_that_exist() {
        let root = tempfile::tempdir().unwrap();
        let lp = root.path().join("sys/kernel/livepatch/graft_demo");
        write(&lp.join("enabled"), "1\n");
        write(&lp.join("transition"), "0\n");
        write(&lp.join("vmlinux/patched"), "1\n");
        fs::create_dir_all(lp.join("vmlinux/cmdline_proc_show,1")).unwrap();
        let kernel = LinuxKernel::with_roots(
            root.path().join("sys"),
            root.path().join("proc"),
            root.path().join("kmsg"),
        );
        assert!(kernel.livepatch_supported());
        assert!(!kernel.signatures_enforced());
        write(
            &root.path().join("sys/module/module/parameters/sig_enforce"),
            "Y\n",
        );
        assert!(kernel.signatures_enforced());
        assert_eq!(kernel.patch_names().unwrap(), vec!["graft_demo"]);
        let patch = kernel.patch("graft_demo").unwrap().unwrap();
        assert!(patch.enabled && !patch.transition);
        assert_eq!(patch.replace, None);
        assert_eq!(patch.stack_order, None);
        assert!(!patch.signal_supported);
        assert_eq!(patch.objects.len(), 1);
        assert_eq!(patch.objects[0].patched, Some(true));
        assert_eq!(
            patch.function_names().collect::<Vec<_>>(),
            vec!["cmdline_proc_show"]
        );
        assert_eq!(kernel.patch("other").unwrap(), None);

        // 6.12 adds `replace`; 6.14 adds `stack_order`.
        write(&lp.join("replace"), "1\n");
        write(&lp.join("stack_order"), "2\n");
        let patch = kernel.patch("graft_demo").unwrap().unwrap();
        assert_eq!(patch.replace, Some(true));
        assert_eq!(patch.stack_order, Some(2));
    }

    #[test]
    fn kernel_without_livepatch_reports_unsupported() {
        let root = tempfile::tempdir().unwrap();
        let kernel = LinuxKernel::with_roots(root.path(), root.path(), root.path().join("k"));
        assert!(!kernel.livepatch_supported());
        assert!(kernel.patch_names().unwrap().is_empty());
    }

    #[test]
    fn finds_livepatch_modules_by_taint_and_skips_builtins() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("module");
        write(&m.join("graft_demo/refcnt"), "0\n");
        write(&m.join("graft_demo/taint"), "OEK\n");
        write(&m.join("graft_demo/initstate"), "live\n");
        write(&m.join("graft_demo/srcversion"), "ABC\n");
        write(&m.join("ext4/refcnt"), "2\n");
        write(&m.join("ext4/taint"), "\n");
        write(&m.join("printk/parameters/time"), "Y\n");
        write(&m.join("compression"), "zstd\n");
        let kernel = LinuxKernel::with_roots(root.path(), root.path(), root.path().join("k"));
        let found = kernel.loaded_livepatch_modules().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "graft_demo");
        assert_eq!(found[0].srcversion.as_deref(), Some("ABC"));
        assert!(found[0].live);
        assert_eq!(kernel.loaded_module("printk").unwrap(), None);
        assert_eq!(kernel.loaded_module("ext4").unwrap().unwrap().refcnt, 2);
    }

    #[test]
    fn a_directory_being_removed_counts_as_gone() {
        assert!(gone(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(gone(&io::Error::from_raw_os_error(
            nix::errno::Errno::ENODEV as i32
        )));
        assert!(!gone(&io::Error::from_raw_os_error(
            nix::errno::Errno::EACCES as i32
        )));
    }

    /// A patch directory that loses an object directory mid-read (removal in
    /// progress) reads as gone, not as an error.
    #[test]
    fn a_patch_without_its_attributes_reads_as_gone() {
        let root = tempfile::tempdir().unwrap();
        let lp = root.path().join("kernel/livepatch/p");
        write(&lp.join("enabled"), "0\n");
        let kernel = LinuxKernel::with_roots(root.path(), root.path(), root.path().join("k"));
        assert_eq!(kernel.patch("p").unwrap(), None);
        assert_eq!(kernel.patch_progress("p").unwrap(), None);
    }

    /// The reader re-reads the same open files: a change shows at the next call.
    #[test]
    fn progress_reader_rereads_the_attributes_in_place() {
        let root = tempfile::tempdir().unwrap();
        let lp = root.path().join("kernel/livepatch/p");
        let kernel = LinuxKernel::with_roots(root.path(), root.path(), root.path().join("k"));
        let mut read = kernel.progress_reader("p");
        assert_eq!(read().unwrap(), None, "no directory yet");
        write(&lp.join("enabled"), "1\n");
        write(&lp.join("transition"), "1\n");
        let progress = |enabled, transition| {
            Some(PatchProgress {
                enabled,
                transition,
            })
        };
        assert_eq!(read().unwrap(), progress(true, true));
        // Rewrite in place (sysfs regenerates; a plain file keeps its inode this way).
        fs::OpenOptions::new()
            .write(true)
            .open(lp.join("transition"))
            .unwrap()
            .write_all_at(b"0\n", 0)
            .unwrap();
        assert_eq!(read().unwrap(), progress(true, false));
    }

    #[test]
    fn parses_proc_modules() {
        let text = "graft_demo 16384 1 - Live 0xffffffffc0a3c000 (OEK)\n\
                    graft_cumulative 16384 0 - Unloading 0xffffffffc0a40000 (OEK)\n\
                    ext4 1015808 2 mbcache,jbd2, Live 0xffffffffc0400000\n\
                    garbage\n";
        let m = parse_proc_modules(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].name.as_str(), m[0].refcnt, m[0].livepatch, m[0].live),
            ("graft_demo", 1, true, true)
        );
        assert!(m[1].livepatch && !m[1].live);
        assert!(!m[2].livepatch && m[2].live);
    }

    /// With /proc/modules the livepatch modules come from it, their srcversion from sysfs.
    #[test]
    fn finds_livepatch_modules_in_proc_modules() {
        let root = tempfile::tempdir().unwrap();
        write(
            &root.path().join("proc/modules"),
            "graft_demo 16384 1 - Live 0xffffffffc0a3c000 (OEK)\next4 1015808 2 - Live 0xffffffffc0400000\n",
        );
        write(
            &root.path().join("sys/module/graft_demo/srcversion"),
            "ABC\n",
        );
        let kernel = LinuxKernel::with_roots(
            root.path().join("sys"),
            root.path().join("proc"),
            root.path().join("k"),
        );
        let found = kernel.loaded_livepatch_modules().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "graft_demo");
        assert_eq!(found[0].srcversion.as_deref(), Some("ABC"));
        assert_eq!(found[0].refcnt, 1);
    }
}
