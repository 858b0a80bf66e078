//! Which nodes a LivePatch targets: Linux nodes, its `nodeSelector`, and the
//! kernel-release match that picks one of its modules. Pure functions.

use std::collections::BTreeMap;

use graft_crds::{KernelMatch, PatchModule};
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::LabelSelector};
use regex::Regex;

/// The well-known label with the node's operating system.
pub const OS_LABEL: &str = "kubernetes.io/os";

/// The well-known label with the node's zone (the first key of the rollout order).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Upper bound of a compiled `kernelReleaseRegex` (bytes of the compiled
/// program), so a hostile pattern cannot make the operator allocate without
/// limit.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Whether the node runs Linux: label `kubernetes.io/os=linux`, or
/// `status.nodeInfo.operatingSystem` is `linux`.
pub fn is_linux(node: &Node) -> bool {
    let by_label = node
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(OS_LABEL))
        .is_some_and(|os| os == "linux");
    let by_info = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .is_some_and(|info| info.operating_system == "linux");
    by_label || by_info
}

/// The node's kernel release as the kubelet reports it
/// (`status.nodeInfo.kernelVersion`, i.e. `uname -r`); `None` when unknown.
pub fn kernel_release(node: &Node) -> Option<&str> {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|info| info.kernel_version.as_str())
        .filter(|k| !k.is_empty())
}

/// The node's boot ID as the kubelet reports it (`status.nodeInfo.bootID`).
pub fn boot_id(node: &Node) -> Option<&str> {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|info| info.boot_id.as_str())
        .filter(|b| !b.is_empty())
}

/// The node's zone label, or `""` when it has none (such nodes come first).
pub fn zone(node: &Node) -> &str {
    node.metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(ZONE_LABEL))
        .map_or("", String::as_str)
}

/// Why a label selector cannot be evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSelector(pub String);

/// Whether `labels` satisfy `selector`, with Kubernetes' semantics: every
/// `matchLabels` pair and every `matchExpressions` requirement must hold
/// (`In`, `NotIn`, `Exists`, `DoesNotExist`; `NotIn` also matches when the key
/// is absent). No selector, or an empty one, matches everything. An unknown
/// operator, or `In`/`NotIn` without values, is an error (the caller treats
/// the selector as matching nothing).
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> Result<bool, InvalidSelector> {
    let Some(selector) = selector else {
        return Ok(true);
    };
    for (key, value) in selector.match_labels.iter().flatten() {
        if labels.get(key) != Some(value) {
            return Ok(false);
        }
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.as_deref().unwrap_or_default();
        let present = labels.get(&requirement.key);
        let holds = match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(InvalidSelector(format!(
                    "matchExpressions for key {:?}: operator {} needs at least one value",
                    requirement.key, requirement.operator
                )));
            }
            "In" => present.is_some_and(|v| values.contains(v)),
            "NotIn" => present.is_none_or(|v| !values.contains(v)),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(InvalidSelector(format!(
                    "matchExpressions for key {:?}: operator {} takes no values",
                    requirement.key, requirement.operator
                )));
            }
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            other => {
                return Err(InvalidSelector(format!(
                    "matchExpressions for key {:?}: unknown operator {other:?} (use In, NotIn, Exists or DoesNotExist)",
                    requirement.key
                )));
            }
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A LivePatch's module entries, ready to match kernel releases: regular
/// expressions compiled once (anchored at both ends).
#[derive(Debug)]
pub struct KernelMatcher {
    entries: Vec<(usize, Matcher)>,
    /// The entries whose `kernelReleaseRegex` does not compile, with the error.
    pub invalid: Vec<(usize, String)>,
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Regex(Regex),
}

impl KernelMatcher {
    /// Compiles the match rules of `modules`. Entries that set neither or
    /// both of `kernelRelease` and `kernelReleaseRegex` never match (the
    /// schema rejects them); regexes that do not compile are listed in
    /// [`Self::invalid`] and never match.
    pub fn new(modules: &[PatchModule]) -> Self {
        let mut entries = Vec::with_capacity(modules.len());
        let mut invalid = Vec::new();
        for (index, module) in modules.iter().enumerate() {
            match module.kernel_match() {
                Some(KernelMatch::Exact(release)) => {
                    entries.push((index, Matcher::Exact(release.to_owned())));
                }
                Some(m @ KernelMatch::Regex(_)) => {
                    let pattern = m.anchored_pattern().unwrap_or_default();
                    match regex::RegexBuilder::new(&pattern)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                    {
                        Ok(regex) => entries.push((index, Matcher::Regex(regex))),
                        Err(error) => invalid.push((index, error.to_string())),
                    }
                }
                None => {}
            }
        }
        Self { entries, invalid }
    }

    /// The index of the first module entry that matches `release`.
    pub fn find(&self, release: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(_, m)| match m {
                Matcher::Exact(exact) => exact == release,
                Matcher::Regex(regex) => regex.is_match(release),
            })
            .map(|(index, _)| *index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graft_crds::ModuleSource;
    use k8s_openapi::{
        api::core::v1::{NodeStatus, NodeSystemInfo},
        apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta},
    };

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn selector(
        match_labels: &[(&str, &str)],
        exprs: Vec<LabelSelectorRequirement>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn no_selector_and_empty_selector_match_every_node() {
        assert_eq!(selector_matches(None, &labels(&[])), Ok(true));
        assert_eq!(
            selector_matches(Some(&LabelSelector::default()), &labels(&[("a", "b")])),
            Ok(true)
        );
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = selector(&[("pool", "web"), ("tier", "1")], vec![]);
        assert_eq!(
            selector_matches(Some(&s), &labels(&[("pool", "web"), ("tier", "1")])),
            Ok(true)
        );
        assert_eq!(
            selector_matches(Some(&s), &labels(&[("pool", "web")])),
            Ok(false)
        );
        assert_eq!(
            selector_matches(Some(&s), &labels(&[("pool", "db"), ("tier", "1")])),
            Ok(false)
        );
    }

    #[test]
    fn match_expressions_follow_kubernetes_semantics() {
        type Case = (
            LabelSelectorRequirement,
            &'static [(&'static str, &'static str)],
            bool,
        );
        let cases: &[Case] = &[
            (
                expr("pool", "In", &["web", "api"]),
                &[("pool", "api")],
                true,
            ),
            (
                expr("pool", "In", &["web", "api"]),
                &[("pool", "db")],
                false,
            ),
            (expr("pool", "In", &["web"]), &[], false),
            (expr("pool", "NotIn", &["db"]), &[("pool", "web")], true),
            (expr("pool", "NotIn", &["db"]), &[("pool", "db")], false),
            (expr("pool", "NotIn", &["db"]), &[], true),
            (expr("gpu", "Exists", &[]), &[("gpu", "")], true),
            (expr("gpu", "Exists", &[]), &[], false),
            (expr("gpu", "DoesNotExist", &[]), &[], true),
            (expr("gpu", "DoesNotExist", &[]), &[("gpu", "yes")], false),
        ];
        for (requirement, node_labels, expected) in cases {
            let s = selector(&[], vec![requirement.clone()]);
            assert_eq!(
                selector_matches(Some(&s), &labels(node_labels)),
                Ok(*expected),
                "{requirement:?} on {node_labels:?}"
            );
        }
    }

    #[test]
    fn labels_and_expressions_combine_with_and() {
        let s = selector(
            &[("env", "prod")],
            vec![
                expr("pool", "In", &["web"]),
                expr("canary", "DoesNotExist", &[]),
            ],
        );
        assert_eq!(
            selector_matches(Some(&s), &labels(&[("env", "prod"), ("pool", "web")])),
            Ok(true)
        );
        assert_eq!(
            selector_matches(
                Some(&s),
                &labels(&[("env", "prod"), ("pool", "web"), ("canary", "1")])
            ),
            Ok(false)
        );
    }

    #[test]
    fn malformed_requirements_are_errors() {
        for requirement in [
            expr("k", "Gt", &["1"]),
            expr("k", "In", &[]),
            expr("k", "Exists", &["v"]),
        ] {
            let s = selector(&[], vec![requirement.clone()]);
            assert!(
                selector_matches(Some(&s), &labels(&[("k", "v")])).is_err(),
                "{requirement:?}"
            );
        }
    }

    fn module(release: Option<&str>, regex: Option<&str>) -> PatchModule {
        PatchModule {
            kernel_release: release.map(str::to_owned),
            kernel_release_regex: regex.map(str::to_owned),
            source: ModuleSource::host_path("/m.ko"),
            sha256: None,
        }
    }

    #[test]
    fn kernel_match_is_exact_or_anchored_regex_and_first_wins() {
        let matcher = KernelMatcher::new(&[
            module(Some("6.1.0-18-amd64"), None),
            module(None, Some(r"6\.1\.0-.*")),
            module(None, Some(r"6\.1")),
            module(None, Some(r".*")),
        ]);
        assert!(matcher.invalid.is_empty());
        assert_eq!(matcher.find("6.1.0-18-amd64"), Some(0));
        assert_eq!(matcher.find("6.1.0-20-amd64"), Some(1));
        // Anchored: "6\.1" alone does not match a longer release...
        assert_eq!(matcher.find("6.12.0"), Some(3));
        // ...but matches exactly "6.1".
        assert_eq!(matcher.find("6.1"), Some(2));
        assert_eq!(
            KernelMatcher::new(&[module(None, Some("a|b"))]).find("ab"),
            None
        );
    }

    #[test]
    fn bad_regex_and_ambiguous_entries_never_match() {
        let matcher = KernelMatcher::new(&[
            module(None, Some("6.1.(")),
            module(Some("6.1"), Some("6.1")),
            module(None, None),
        ]);
        assert_eq!(matcher.invalid.len(), 1);
        assert_eq!(matcher.invalid[0].0, 0);
        assert_eq!(matcher.find("6.1"), None);
    }

    #[test]
    fn linux_by_label_or_node_info() {
        let mut node = Node {
            metadata: ObjectMeta {
                labels: Some(labels(&[(OS_LABEL, "linux")])),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        assert!(is_linux(&node));
        node.metadata.labels = Some(labels(&[(OS_LABEL, "windows")]));
        assert!(!is_linux(&node));
        node.metadata.labels = None;
        node.status = Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                operating_system: "linux".into(),
                kernel_version: "6.1.0".into(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        });
        assert!(is_linux(&node));
        assert_eq!(kernel_release(&node), Some("6.1.0"));
        assert_eq!(boot_id(&node), None);
        assert_eq!(zone(&node), "");
    }
}
