//! A verified module held in a sealed memory file.
//!
//! The cluster mode fetches modules (from a ConfigMap, a URL or the host) into
//! memory and verifies their digest there. To load exactly those bytes, and
//! without writing anything to a filesystem (the agent's root filesystem can
//! stay read-only), they go into a `memfd` that is then sealed against any
//! change; the kernel reads it through `/proc/self/fd/N` with the same
//! `finit_module` call as any other module file ([`crate::kernel::Kernel::load_module`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// Module bytes in a sealed memory file; the file goes when this is dropped.
#[derive(Debug)]
pub struct SealedModule {
    file: File,
    path: PathBuf,
}

impl SealedModule {
    /// Copies `bytes` into a new memory file named after the module and seals it.
    pub fn new(name: &str, bytes: &[u8]) -> io::Result<Self> {
        let fd = memfd_create(
            format!("graft:{name}").as_str(),
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let mut file = File::from(fd);
        file.write_all(bytes)?;
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Ok(Self { file, path })
    }

    /// A path that opens the sealed file (valid in this process only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open memory file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_bytes_and_refuses_changes() {
        let module = SealedModule::new("graft_demo", b"\x7fELF module bytes").unwrap();
        assert_eq!(
            std::fs::read(module.path()).unwrap(),
            b"\x7fELF module bytes"
        );
        // Sealed: no writer can change what the kernel will read.
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(module.path())
            .and_then(|mut f| f.write_all(b"evil"))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EPERM as i32));
        assert_eq!(
            std::fs::read(module.path()).unwrap(),
            b"\x7fELF module bytes"
        );
    }
}
