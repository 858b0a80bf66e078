//! Feeds arbitrary bytes to the module file parser: what `graft-agent inspect`
//! and `apply` run on an untrusted `.ko` before any kernel call. It must
//! refuse garbage with an error, never panic, hang or allocate without bound.
#![no_main]

use std::path::Path;

use graft_agent::module_file::{inspect_bytes, parse_modinfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The whole file, as `inspect` sees it: ELF parsing, .modinfo lookup,
    // vermagic and name checks, sha256.
    if let Ok(info) = inspect_bytes(Path::new("fuzz.ko"), data) {
        // What the parser accepted must hold together.
        assert_eq!(info.size_bytes, data.len() as u64);
        assert!(!info.kernel_release.is_empty());
        assert!(!info.kernel_release.contains(char::is_whitespace));
        assert!(graft_agent::module_file::is_valid_module_name(&info.name));
    }
    // The same bytes as a raw .modinfo section.
    for (key, values) in parse_modinfo(data) {
        assert!(!key.is_empty() && !key.contains('\0') && !key.contains('='));
        assert!(!values.is_empty());
    }
});
