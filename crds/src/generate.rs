//! The CustomResourceDefinitions as YAML files: what `crdgen` writes, and
//! what the drift test compares with the committed files.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{LivePatch, LivePatchNode};

/// The command that regenerates the committed CRD files (run from the
/// repository root).
pub const REGENERATE_COMMAND: &str = "cargo run -p graft-crds --bin crdgen -- --out-dir crds";

/// One CRD and the file it is written to.
#[derive(Clone, Debug)]
pub struct CrdFile {
    /// File name inside the output directory, e.g. `livepatch.yaml`.
    pub file_name: &'static str,
    /// The CustomResourceDefinition.
    pub crd: CustomResourceDefinition,
}

impl CrdFile {
    /// The YAML text of the file: a header comment, then the CRD.
    pub fn render(&self) -> String {
        let yaml = serde_yaml::to_string(&self.crd)
            .expect("a CustomResourceDefinition always serializes to YAML");
        format!(
            "# Generated from the Rust types in crds/src by `crdgen`; do not edit by hand.\n\
             # Regenerate with: {REGENERATE_COMMAND}\n\
             {yaml}"
        )
    }
}

/// Every CRD of Graft's API, in a fixed order.
pub fn crd_files() -> Vec<CrdFile> {
    vec![
        CrdFile {
            file_name: "livepatch.yaml",
            crd: LivePatch::crd(),
        },
        CrdFile {
            file_name: "livepatchnode.yaml",
            crd: LivePatchNode::crd(),
        },
    ]
}

/// All CRDs as one multi-document YAML stream (what `crdgen` prints).
pub fn render_all() -> String {
    crd_files()
        .iter()
        .map(CrdFile::render)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Writes every CRD file into `dir` (created if missing); returns the paths
/// written. Files whose content is already right are left untouched.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for file in crd_files() {
        let path = dir.join(file.file_name);
        let text = file.render();
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            fs::write(&path, text)?;
        }
        written.push(path);
    }
    Ok(written)
}

/// A CRD file in a directory that does not match the Rust types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// The stale or missing file.
    pub path: PathBuf,
    /// `None` when the file is missing, else the first differing line (1-based).
    pub first_difference: Option<usize>,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first_difference {
            None => write!(f, "{} is missing", self.path.display()),
            Some(line) => write!(
                f,
                "{} differs from the Rust types (first at line {line})",
                self.path.display()
            ),
        }
    }
}

/// Compares the CRD files in `dir` with what the Rust types generate now.
pub fn check_dir(dir: &Path) -> Vec<Drift> {
    crd_files()
        .into_iter()
        .filter_map(|file| {
            let path = dir.join(file.file_name);
            let expected = file.render();
            match fs::read_to_string(&path) {
                Err(_) => Some(Drift {
                    path,
                    first_difference: None,
                }),
                Ok(actual) if actual == expected => None,
                Ok(actual) => {
                    let line = actual
                        .lines()
                        .zip(expected.lines())
                        .position(|(a, e)| a != e)
                        .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
                    Some(Drift {
                        path,
                        first_difference: Some(line + 1),
                    })
                }
            }
        })
        .collect()
}
