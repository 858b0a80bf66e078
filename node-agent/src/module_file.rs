//! Inspecting a `.ko` file before the kernel ever sees it.
//!
//! Everything here is pure: it reads bytes and decides whether Graft may load
//! them. The kernel ignores the release in `vermagic` when CONFIG_MODVERSIONS
//! is on, so the release check is ours; and Graft loads livepatches only,
//! never an arbitrary module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::error::{AgentError, Result};

/// What `scripts/sign-file` appends after a module's signature.
pub const SIGNATURE_TRAILER: &[u8] = b"~Module signature appended~\n";

/// Larger files are not plausible livepatch modules (real ones are well under 1 MiB).
pub const MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;

/// The ELF section the simulated kernel reads to learn what a module patches.
/// Real kernels never look at it; `graft-agent sim build-module` writes it.
pub const SIM_SECTION: &str = ".graft.sim";

/// What a module file says about itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModuleInfo {
    pub path: PathBuf,
    /// The module's name as the kernel will know it (`name=` in `.modinfo`, else the file stem).
    pub name: String,
    pub vermagic: String,
    /// The kernel release the module was built for: the first word of `vermagic`.
    pub kernel_release: String,
    pub livepatch: bool,
    /// Whether the file ends with a module signature (`~Module signature appended~`).
    pub signed: bool,
    pub license: Option<String>,
    pub srcversion: Option<String>,
    pub depends: Vec<String>,
    /// The file's digest, when it was computed (see [`Digest`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub size_bytes: u64,
    /// Every `.modinfo` key, in file order of first appearance, for `inspect`.
    #[serde(skip)]
    pub modinfo: BTreeMap<String, Vec<String>>,
    /// The simulation description, when the file carries one.
    #[serde(skip)]
    pub sim_section: Option<Vec<u8>>,
}

/// Whether inspecting a file also computes its sha256. `inspect` shows it and
/// a pin needs it; a plain apply does not, and hashing a module that carries
/// debug information takes more CPU than everything else an apply does
/// before its kernel call (about 14 million instructions for 260 KB without
/// SHA extensions: tens of milliseconds under emulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Compute,
    Skip,
}

/// Reads and inspects a module file; refuses anything that is not a module.
pub fn inspect_file(path: &Path, digest: Digest) -> Result<ModuleInfo> {
    let unreadable = |source| AgentError::ModuleUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(AgentError::NotAModule {
            path: path.to_path_buf(),
            reason: "it is not a regular file".into(),
        });
    }
    if meta.len() > MAX_MODULE_BYTES {
        return Err(AgentError::NotAModule {
            path: path.to_path_buf(),
            reason: format!(
                "it is {} bytes, more than the {} a livepatch module can plausibly be",
                meta.len(),
                MAX_MODULE_BYTES
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    let mut info = inspect_bytes(path, &bytes)?;
    if digest == Digest::Compute {
        info.sha256 = Some(sha256_hex(&bytes));
    }
    Ok(info)
}

/// Inspects module bytes already in memory (fetched from a URL or a
/// ConfigMap), without their digest: the caller has its own.
pub fn inspect_bytes(path: &Path, bytes: &[u8]) -> Result<ModuleInfo> {
    let not_a_module = |reason: String| AgentError::NotAModule {
        path: path.to_path_buf(),
        reason,
    };
    let elf = object::File::parse(bytes)
        .map_err(|e| not_a_module(format!("it is not a valid ELF file ({e})")))?;
    if elf.format() != object::BinaryFormat::Elf {
        return Err(not_a_module("it is not an ELF file".into()));
    }
    let section = elf
        .section_by_name(".modinfo")
        .ok_or_else(|| not_a_module("it has no .modinfo section".into()))?;
    let data = section
        .data()
        .map_err(|e| not_a_module(format!("its .modinfo section cannot be read ({e})")))?;
    let modinfo = parse_modinfo(data);
    let first = |key: &str| modinfo.get(key).and_then(|v| v.first()).cloned();

    let vermagic =
        first("vermagic").ok_or_else(|| not_a_module("its .modinfo has no vermagic".into()))?;
    let kernel_release = vermagic
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if kernel_release.is_empty() {
        return Err(not_a_module("its vermagic is empty".into()));
    }
    let name = match first("name") {
        Some(n) if !n.is_empty() => n,
        _ => name_from_path(path),
    };
    if !is_valid_module_name(&name) {
        return Err(not_a_module(format!(
            "its module name {name:?} is not valid"
        )));
    }
    let depends = first("depends")
        .map(|d| {
            d.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let sim_section = elf
        .section_by_name(SIM_SECTION)
        .and_then(|s| s.data().ok())
        .map(<[u8]>::to_vec);

    Ok(ModuleInfo {
        path: path.to_path_buf(),
        name,
        livepatch: first("livepatch").as_deref() == Some("Y"),
        license: first("license"),
        srcversion: first("srcversion"),
        vermagic,
        kernel_release,
        depends,
        sha256: None,
        size_bytes: bytes.len() as u64,
        modinfo,
        sim_section,
        signed: bytes.ends_with(SIGNATURE_TRAILER),
    })
}

/// `.modinfo` is a run of NUL-terminated `key=value` strings, sometimes padded
/// with extra NULs between entries. Keys may repeat (`alias`, `parm`).
pub fn parse_modinfo(data: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in data.split(|&b| b == 0) {
        let Ok(text) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some((key, value)) = text.split_once('=')
            && !key.is_empty()
        {
            map.entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    map
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Accepts a pinned digest in any case, returns it lowercase; refuses anything
/// that is not 64 hex digits.
pub fn normalize_sha256(pinned: &str) -> Result<String> {
    let trimmed = pinned.trim();
    if trimmed.len() == 64 && trimmed.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(trimmed.to_ascii_lowercase())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "--sha256 must be 64 hexadecimal digits, got {pinned:?}"
        )))
    }
}

/// The checks Graft makes before any kernel call: a livepatch, for this
/// kernel release, with the pinned digest.
pub fn check_loadable(
    info: &ModuleInfo,
    kernel_release: &str,
    pinned_sha256: Option<&str>,
) -> Result<()> {
    if let Some(pinned) = pinned_sha256 {
        let expected = normalize_sha256(pinned)?;
        let actual = info
            .sha256
            .clone()
            .expect("a pinned module is inspected with Digest::Compute");
        if expected != actual {
            return Err(AgentError::Sha256Mismatch {
                path: info.path.clone(),
                expected,
                actual,
            });
        }
    }
    if !info.livepatch {
        return Err(AgentError::NotALivepatch {
            path: info.path.clone(),
        });
    }
    if info.kernel_release != kernel_release {
        return Err(AgentError::WrongKernelRelease {
            path: info.path.clone(),
            module_release: info.kernel_release.clone(),
            kernel_release: kernel_release.to_string(),
        });
    }
    Ok(())
}

/// The kernel turns '-' into '_' in module names; so do we, to match sysfs.
fn name_from_path(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".ko").unwrap_or(n))
        .unwrap_or_default()
        .replace('-', "_")
}

/// Module names become sysfs directory names: keep them to what the kernel uses.
pub fn is_valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 56
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Writes a minimal relocatable x86-64 ELF holding the given sections: the
/// shape of a `.ko` as far as inspection goes. The simulated kernel's
/// `build-module` and the tests use it; it is never loaded into a real kernel.
pub fn write_module_elf(sections: &[(&str, &[u8])]) -> Vec<u8> {
    use object::write::Object as WriteObject;
    let mut obj = WriteObject::new(
        object::BinaryFormat::Elf,
        object::Architecture::X86_64,
        object::Endianness::Little,
    );
    for (name, data) in sections {
        let id = obj.add_section(
            Vec::new(),
            name.as_bytes().to_vec(),
            object::SectionKind::Data,
        );
        obj.append_section_data(id, data, 1);
    }
    obj.write().expect("writing an in-memory ELF cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_with_sections(sections: &[(&str, &[u8])]) -> Vec<u8> {
        write_module_elf(sections)
    }

    const DEMO_MODINFO: &[u8] = b"livepatch=Y\0license=GPL\0description=demo\0\0\0depends=\0retpoline=Y\0\
name=graft_demo\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0srcversion=0A1B2C3D\0";

    #[test]
    fn parses_modinfo_with_padding_and_repeated_keys() {
        let map = parse_modinfo(b"alias=a\0\0\0alias=b\0parm=x:int\0garbage\0=novalue\0");
        assert_eq!(map["alias"], vec!["a", "b"]);
        assert_eq!(map["parm"], vec!["x:int"]);
        assert!(!map.contains_key(""));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn inspects_a_livepatch_module() {
        let elf = elf_with_sections(&[(".modinfo", DEMO_MODINFO)]);
        let info = inspect_bytes(Path::new("/m/graft-demo.ko"), &elf).unwrap();
        assert_eq!(info.name, "graft_demo");
        assert!(info.livepatch);
        assert_eq!(info.kernel_release, "6.1.0-56-amd64");
        assert_eq!(info.license.as_deref(), Some("GPL"));
        assert_eq!(info.srcversion.as_deref(), Some("0A1B2C3D"));
        assert!(info.depends.is_empty());
        assert_eq!(info.size_bytes, elf.len() as u64);
        assert_eq!(
            info.sha256, None,
            "the caller of inspect_bytes has its own digest"
        );
        let digest = sha256_hex(&elf);
        let info = ModuleInfo {
            sha256: Some(digest.clone()),
            ..info
        };
        check_loadable(&info, "6.1.0-56-amd64", Some(&digest.to_uppercase())).unwrap();
    }

    #[test]
    fn sees_whether_a_module_is_signed() {
        let elf = elf_with_sections(&[(".modinfo", DEMO_MODINFO)]);
        assert!(!inspect_bytes(Path::new("d.ko"), &elf).unwrap().signed);
        let mut signed = elf.clone();
        signed.extend_from_slice(b"\x01\x02signature bytes");
        signed.extend_from_slice(SIGNATURE_TRAILER);
        assert!(inspect_bytes(Path::new("d.ko"), &signed).unwrap().signed);
    }

    #[test]
    fn name_falls_back_to_file_stem() {
        let elf = elf_with_sections(&[(".modinfo", b"livepatch=Y\0vermagic=6.1.0 SMP\0")]);
        let info = inspect_bytes(Path::new("/x/my-patch.ko"), &elf).unwrap();
        assert_eq!(info.name, "my_patch");
    }

    #[test]
    fn refuses_non_elf_and_missing_modinfo() {
        let err = inspect_bytes(Path::new("a.ko"), b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(matches!(err, AgentError::NotAModule { .. }), "{err}");
        assert!(err.to_string().contains("not a valid ELF"));

        let elf = elf_with_sections(&[(".data", b"1234")]);
        let err = inspect_bytes(Path::new("a.ko"), &elf).unwrap_err();
        assert!(err.to_string().contains("no .modinfo section"), "{err}");

        let elf = elf_with_sections(&[(".modinfo", b"license=GPL\0")]);
        let err = inspect_bytes(Path::new("a.ko"), &elf).unwrap_err();
        assert!(err.to_string().contains("no vermagic"), "{err}");
    }

    #[test]
    fn refuses_plain_modules_other_releases_and_wrong_digests() {
        let plain = elf_with_sections(&[(".modinfo", b"name=ext4\0vermagic=6.1.0-56-amd64 SMP\0")]);
        let info = inspect_bytes(Path::new("ext4.ko"), &plain).unwrap();
        let err = check_loadable(&info, "6.1.0-56-amd64", None).unwrap_err();
        assert!(matches!(err, AgentError::NotALivepatch { .. }));
        assert_eq!(err.exit_code(), crate::error::exit_code::BAD_INPUT);

        let elf = elf_with_sections(&[(".modinfo", DEMO_MODINFO)]);
        let info = inspect_bytes(Path::new("d.ko"), &elf).unwrap();
        let err = check_loadable(&info, "6.12.95+deb12-amd64", None).unwrap_err();
        assert!(
            err.to_string().contains(
                "built for kernel 6.1.0-56-amd64, but this kernel is 6.12.95+deb12-amd64"
            ),
            "{err}"
        );

        let info = ModuleInfo {
            sha256: Some(sha256_hex(&elf)),
            ..info
        };
        let err = check_loadable(&info, "6.1.0-56-amd64", Some(&"0".repeat(64))).unwrap_err();
        assert!(matches!(err, AgentError::Sha256Mismatch { .. }));
        let err = check_loadable(&info, "6.1.0-56-amd64", Some("abc")).unwrap_err();
        assert!(err.to_string().contains("64 hexadecimal digits"));
    }

    #[test]
    fn a_file_is_hashed_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graft_demo.ko");
        let elf = elf_with_sections(&[(".modinfo", DEMO_MODINFO)]);
        std::fs::write(&path, &elf).unwrap();
        let hashed = inspect_file(&path, Digest::Compute).unwrap();
        assert_eq!(hashed.sha256, Some(sha256_hex(&elf)));
        let plain = inspect_file(&path, Digest::Skip).unwrap();
        assert_eq!(plain.sha256, None);
        assert_eq!(
            ModuleInfo {
                sha256: None,
                ..hashed
            },
            plain
        );
    }

    #[test]
    fn refuses_missing_file_and_directories() {
        let err = inspect_file(Path::new("/nonexistent/graft.ko"), Digest::Skip).unwrap_err();
        assert!(matches!(err, AgentError::ModuleUnreadable { .. }));
        let dir = tempfile::tempdir().unwrap();
        let err = inspect_file(dir.path(), Digest::Skip).unwrap_err();
        assert!(err.to_string().contains("not a regular file"));
    }

    proptest::proptest! {
        #[test]
        fn inspect_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let _ = inspect_bytes(Path::new("fuzz.ko"), &bytes);
        }

        #[test]
        fn modinfo_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1024)) {
            let _ = parse_modinfo(&bytes);
        }
    }
}
