//! The agent's one error type. Every variant says what failed and what to do,
//! has a bounded `category()` (a metric label and Event reason) and a stable
//! process exit code for the host command.

use std::path::PathBuf;

/// Exit codes of `graft-agent`: stable, documented in the README and `--help`.
pub mod exit_code {
    /// Done, or nothing needed to change.
    pub const OK: i32 = 0;
    /// The kernel refused, the transition failed, or the patch was reverted by policy.
    pub const KERNEL_REFUSED: i32 = 1;
    /// Bad input: refused before any call that changes the kernel.
    pub const BAD_INPUT: i32 = 2;
    /// Still stalled or transitioning when `--timeout` passed; the kernel carries on.
    pub const TIMED_OUT: i32 = 3;
    /// Another transition is in progress and did not end within `--timeout`.
    pub const BUSY: i32 = 4;
    /// The transition was forced: the patch is active but the module can never be
    /// unloaded and the node should be rebooted.
    pub const FORCED: i32 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read module file {path}: {source}")]
    ModuleUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a kernel module: {reason}")]
    NotAModule { path: PathBuf, reason: String },
    #[error(
        "{path} is not a livepatch module (its .modinfo has no livepatch=Y); \
         graft-agent only loads livepatches"
    )]
    NotALivepatch { path: PathBuf },
    #[error(
        "{path} was built for kernel {module_release}, but this kernel is {kernel_release}; \
         use the module built for {kernel_release}"
    )]
    WrongKernelRelease {
        path: PathBuf,
        module_release: String,
        kernel_release: String,
    },
    #[error(
        "sha256 mismatch for {path}: expected {expected}, file has {actual}; the file is not the one you pinned"
    )]
    Sha256Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(
        "patch {patch} is already loaded from a different build (loaded srcversion {loaded}, \
         file srcversion {file}); revert it first with `graft-agent revert {patch}`"
    )]
    DifferentBuildLoaded {
        patch: String,
        loaded: String,
        file: String,
    },
    #[error("this kernel does not support livepatch (no /sys/kernel/livepatch)")]
    LivepatchUnsupported,
    #[error("the kernel refused to load {module}: {reason}")]
    LoadRefused {
        module: String,
        reason: LoadRefusal,
        errno: i32,
    },
    #[error("the kernel refused to {action} patch {patch}: {detail}")]
    KernelWriteFailed {
        patch: String,
        action: &'static str,
        detail: String,
    },
    #[error("could not unload module {module}: {detail}")]
    UnloadFailed { module: String, detail: String },
    #[error(
        "another transition is in progress (patch {patch}); the kernel runs one at a time, try again when it has finished"
    )]
    Busy { patch: String },
    #[error("another graft-agent operation holds {lock}; try again when it has finished")]
    AgentLocked { lock: PathBuf },
    #[error("no livepatch named {patch} is loaded")]
    NoSuchPatch { patch: String },
    #[error("kernel interface error: {context}: {source}")]
    Kernel {
        context: String,
        source: std::io::Error,
    },
    #[error("simulated kernel: {0}")]
    Simulation(String),
}

/// Why `finit_module` said no, in words a person can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadRefusal {
    AlreadyLoaded,
    TransitionInProgress,
    SignatureRequired,
    NotPermitted,
    BadModule,
    UnknownSymbol,
    Other,
}

impl LoadRefusal {
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc_errno::EEXIST => Self::AlreadyLoaded,
            libc_errno::EBUSY => Self::TransitionInProgress,
            libc_errno::EKEYREJECTED => Self::SignatureRequired,
            libc_errno::EPERM => Self::NotPermitted,
            libc_errno::ENOEXEC | libc_errno::EINVAL => Self::BadModule,
            libc_errno::ENOENT => Self::UnknownSymbol,
            _ => Self::Other,
        }
    }

    /// A bounded label for metrics (`graft_module_load_failures_total{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyLoaded => "already_loaded",
            Self::TransitionInProgress => "busy",
            Self::SignatureRequired => "signature_required",
            Self::NotPermitted => "not_permitted",
            Self::BadModule => "bad_module",
            Self::UnknownSymbol => "unknown_symbol",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for LoadRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AlreadyLoaded => "a module with this name is already loaded (EEXIST)",
            Self::TransitionInProgress => {
                "another livepatch transition is in progress (EBUSY); wait for it to finish"
            }
            Self::SignatureRequired => {
                "the kernel requires signed modules (EKEYREJECTED): the module must be signed \
                 with a key the kernel trusts, or boot without module.sig_enforce"
            }
            Self::NotPermitted => {
                "operation not permitted (EPERM): the kernel is locked down, or the agent lacks \
                 CAP_SYS_MODULE"
            }
            Self::BadModule => {
                "the kernel rejected the module as invalid (ENOEXEC/EINVAL): it was built for \
                 another kernel build or is corrupt; rebuild it against this kernel's headers"
            }
            Self::UnknownSymbol => {
                "unknown symbol or missing object (ENOENT): the function or module the patch \
                 targets is not in this kernel; check the patch was built for this kernel"
            }
            Self::Other => "unexpected error from finit_module",
        })
    }
}

/// The errno values we name, spelled out once so that no `libc` dependency is needed.
pub(crate) mod libc_errno {
    use nix::errno::Errno;
    pub const EPERM: i32 = Errno::EPERM as i32;
    pub const ENOENT: i32 = Errno::ENOENT as i32;
    pub const ENOEXEC: i32 = Errno::ENOEXEC as i32;
    pub const EEXIST: i32 = Errno::EEXIST as i32;
    pub const EBUSY: i32 = Errno::EBUSY as i32;
    pub const EINVAL: i32 = Errno::EINVAL as i32;
    pub const EKEYREJECTED: i32 = Errno::EKEYREJECTED as i32;
    pub const EAGAIN: i32 = Errno::EAGAIN as i32;
}

impl AgentError {
    pub fn kernel(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Kernel {
            context: context.into(),
            source,
        }
    }

    /// Bounded label for metrics and Kubernetes Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::ModuleUnreadable { .. } => "ModuleUnreadable",
            Self::NotAModule { .. } => "NotAModule",
            Self::NotALivepatch { .. } => "NotALivepatch",
            Self::WrongKernelRelease { .. } => "WrongKernelRelease",
            Self::Sha256Mismatch { .. } => "Sha256Mismatch",
            Self::InvalidArgument(_) => "InvalidArgument",
            Self::DifferentBuildLoaded { .. } => "DifferentBuildLoaded",
            Self::LivepatchUnsupported => "LivepatchUnsupported",
            Self::LoadRefused { .. } => "LoadRefused",
            Self::KernelWriteFailed { .. } => "KernelWriteFailed",
            Self::UnloadFailed { .. } => "UnloadFailed",
            Self::Busy { .. } => "TransitionBusy",
            Self::AgentLocked { .. } => "AgentBusy",
            Self::NoSuchPatch { .. } => "NoSuchPatch",
            Self::Kernel { .. } => "KernelInterface",
            Self::Simulation(_) => "Simulation",
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Self::ModuleUnreadable { .. }
            | Self::NotAModule { .. }
            | Self::NotALivepatch { .. }
            | Self::WrongKernelRelease { .. }
            | Self::Sha256Mismatch { .. }
            | Self::InvalidArgument(_)
            | Self::DifferentBuildLoaded { .. }
            | Self::NoSuchPatch { .. } => exit_code::BAD_INPUT,
            Self::Busy { .. } | Self::AgentLocked { .. } => exit_code::BUSY,
            Self::LivepatchUnsupported
            | Self::LoadRefused { .. }
            | Self::KernelWriteFailed { .. }
            | Self::UnloadFailed { .. }
            | Self::Kernel { .. }
            | Self::Simulation(_) => exit_code::KERNEL_REFUSED,
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
