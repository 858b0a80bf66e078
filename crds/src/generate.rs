//! The CustomResourceDefinitions as YAML files: what `crdgen` writes, and
//! what the drift test compares with the committed files.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

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

/// Every CRD of Graft's API, in a fixed order, as installed: prefer these to
/// `LivePatch::crd()` when installing CRDs from code (see [`installable`]).
pub fn crd_files() -> Vec<CrdFile> {
    vec![
        CrdFile {
            file_name: "livepatch.yaml",
            crd: installable(LivePatch::crd()),
        },
        CrdFile {
            file_name: "livepatchnode.yaml",
            crd: installable(LivePatchNode::crd()),
        },
    ]
}

/// Turns a derived CRD into the installed one: field descriptions, which
/// come from `///` comments wrapped at 100 columns, are unwrapped into
/// paragraphs so that `kubectl explain` can wrap them to the terminal.
pub fn installable(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes to JSON");
    if let Some(versions) = value
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for version in versions {
            if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
                unwrap_descriptions(schema);
            }
        }
    }
    serde_json::from_value(value).expect("unwrapping descriptions keeps the CRD valid")
}

fn unwrap_descriptions(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(text) if key == "description" => *text = unwrap_paragraphs(text),
                    // Property names are keys of `properties`, never "description" values.
                    _ => unwrap_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// Joins the lines of each paragraph with spaces; blank lines separate
/// paragraphs and are kept.
fn unwrap_paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_unwrapped_into_paragraphs() {
        assert_eq!(
            unwrap_paragraphs("one\ntwo\n\nthree\n  four"),
            "one two\n\nthree four"
        );
        assert_eq!(unwrap_paragraphs("single line"), "single line");
    }

    #[test]
    fn installed_crds_have_no_wrapped_descriptions() {
        for file in crd_files() {
            let text = file.render();
            assert!(!text.contains("description: |-"), "{}", file.file_name);
        }
    }
}
