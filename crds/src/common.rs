//! Types shared by `LivePatch` and `LivePatchNode`: where a module comes from,
//! the desired state of a patch, and the transition (stall) policy.

use std::{fmt, time::Duration};

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::{DURATION_PATTERN, DurationError, parse_duration};

/// The OpenAPI `pattern` of a SHA-256 digest: 64 lowercase hex digits.
pub const SHA256_PATTERN: &str = "^[0-9a-f]{64}$";

/// Where the agent reads a livepatch module (`.ko`) from. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.hostPath) ? 1 : 0) + (has(self.url) ? 1 : 0) + (has(self.configMap) ? 1 : 0) == 1"
).message(
    "source must set exactly one of hostPath, url or configMap; remove the others (or add one if none is set)"
))]
pub struct ModuleSource {
    /// Absolute path of the module file on the node's own filesystem, e.g.
    /// `/var/lib/graft/modules/livepatch-cve-2024-1234.ko`. Use it when the
    /// module is already installed on the nodes (by an image, a package or
    /// configuration management). `sha256` is optional for hostPath but
    /// recommended: when set the agent refuses a file whose digest differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..')")
        .message("hostPath must be an absolute path without '..' components, e.g. /var/lib/graft/modules/patch.ko"))]
    pub host_path: Option<String>,

    /// An `https://` URL the agent downloads the module from (size-capped, with
    /// a timeout). `sha256` is required: the agent verifies the download
    /// before it does anything else with it. Plain `http` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') && isURL(self)")
        .message("url must be an https:// URL (plain http and other schemes are refused), e.g. https://example.com/patches/patch.ko"))]
    pub url: Option<String>,

    /// A key of a ConfigMap in Graft's own namespace whose `binaryData` holds
    /// the module. `sha256` is required. Create it with, for example,
    /// `kubectl -n graft-system create configmap my-patch --from-file=patch.ko`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKey>,
}

/// A view of a [`ModuleSource`] with exactly one variant, for code that acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceRef<'a> {
    /// [`ModuleSource::host_path`].
    HostPath(&'a str),
    /// [`ModuleSource::url`].
    Url(&'a str),
    /// [`ModuleSource::config_map`].
    ConfigMap(&'a ConfigMapKey),
}

impl ModuleSource {
    /// A module file on the node itself.
    pub fn host_path(path: impl Into<String>) -> Self {
        Self {
            host_path: Some(path.into()),
            ..Self::default()
        }
    }

    /// A module downloaded over https.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// A module stored in a ConfigMap key (`binaryData`) in Graft's namespace.
    pub fn config_map(name: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            config_map: Some(ConfigMapKey {
                name: name.into(),
                key: key.into(),
            }),
            ..Self::default()
        }
    }

    /// The one source that is set, or `None` when zero or several are set
    /// (the schema rejects both, so this only happens for objects that never
    /// went through the API server).
    pub fn get(&self) -> Option<SourceRef<'_>> {
        match (&self.host_path, &self.url, &self.config_map) {
            (Some(path), None, None) => Some(SourceRef::HostPath(path)),
            (None, Some(url), None) => Some(SourceRef::Url(url)),
            (None, None, Some(cm)) => Some(SourceRef::ConfigMap(cm)),
            _ => None,
        }
    }

    /// Whether the schema requires a `sha256` next to this source (url and
    /// configMap: the content comes from outside the node).
    pub fn requires_sha256(&self) -> bool {
        self.url.is_some() || self.config_map.is_some()
    }
}

/// A key in a ConfigMap in Graft's own namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKey {
    /// Name of the ConfigMap, in the namespace Graft is installed in.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key under the ConfigMap's `binaryData` that holds the module bytes.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Whether a patch should be on the nodes.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum DesiredState {
    /// Load and enable the patch.
    #[default]
    Enabled,
    /// Disable (revert) the patch and unload its module.
    Disabled,
}

impl DesiredState {
    /// Every value, in declaration order.
    pub const ALL: [Self; 2] = [Self::Enabled, Self::Disabled];

    /// The value as it appears in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
        }
    }
}

/// What happens when a transition has not finished after `stallAfter`.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum OnStall {
    /// Cordon the node so no new work lands on it, and keep waiting.
    #[default]
    Cordon,
    /// Cancel the transition: the tasks move back and the module is unloaded.
    Revert,
    /// Cordon the node and cancel the transition.
    CordonAndRevert,
    /// Force the transition to finish (needs `allowForce: true`). Dangerous:
    /// it breaks the consistency model, the module can never be unloaded
    /// again, and the node should be rebooted soon.
    Force,
}

impl OnStall {
    /// Every value, in declaration order.
    pub const ALL: [Self; 4] = [
        Self::Cordon,
        Self::Revert,
        Self::CordonAndRevert,
        Self::Force,
    ];

    /// The value as it appears in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cordon => "Cordon",
            Self::Revert => "Revert",
            Self::CordonAndRevert => "CordonAndRevert",
            Self::Force => "Force",
        }
    }

    /// Whether the operator cordons a node whose transition stalled.
    pub const fn cordons(self) -> bool {
        matches!(self, Self::Cordon | Self::CordonAndRevert)
    }

    /// Whether a stalled transition is cancelled.
    pub const fn reverts(self) -> bool {
        matches!(self, Self::Revert | Self::CordonAndRevert)
    }

    /// Whether a stalled transition is forced.
    pub const fn forces(self) -> bool {
        matches!(self, Self::Force)
    }
}

/// How long a transition may take and what to do when it stalls.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.onStall) || self.onStall != 'Force' || (has(self.allowForce) && self.allowForce)"
).message(
    "onStall: Force marks every task as switched, breaks the livepatch consistency model and makes the module impossible to unload; set allowForce: true to confirm, or choose Cordon, Revert or CordonAndRevert"
).reason(Reason::FieldValueForbidden).field_path(".onStall"))]
pub struct TransitionPolicy {
    /// How long a transition may run before it counts as stalled, as a
    /// duration such as `60s`, `5m` or `1h30m` (units ms, s, m, h; at least
    /// 1s). The kernel retries the switch every second and, since Linux 5.1,
    /// signals the remaining tasks about every 15 s, so most transitions end
    /// in seconds; one that is still running after this long usually waits
    /// for a task that sleeps in a patched function.
    #[serde(default = "default_stall_after")]
    #[schemars(length(min = 1, max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(min_duration_rule("1s"))
        .message("stallAfter must be at least 1s; write a duration such as 60s, 5m or 1h30m"))]
    pub stall_after: String,

    /// After how long the agent writes the patch's `signal` attribute, which
    /// sends a fake signal to the tasks still blocking the transition. Used
    /// only on kernels that have the attribute (Linux 4.15 to 5.0); newer
    /// kernels signal by themselves. Same duration syntax as `stallAfter`.
    /// Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(min_duration_rule("1s"))
        .message("signalAfter must be at least 1s; write a duration such as 15s or 1m, or leave it unset"))]
    pub signal_after: Option<String>,

    /// What to do once the transition counts as stalled: `Cordon` (default)
    /// cordons the node and keeps waiting; `Revert` cancels the transition
    /// and unloads the module; `CordonAndRevert` does both; `Force` forces
    /// the transition to finish and requires `allowForce: true`.
    #[serde(default)]
    pub on_stall: OnStall,

    /// Confirms that `onStall: Force` is intended. Forcing marks every task
    /// as switched although some still run unpatched code: it breaks the
    /// consistency model, the module can never be removed afterwards, and the
    /// node should be rebooted. Default false.
    #[serde(default)]
    pub allow_force: bool,

    /// Uncordon the node once nothing on it is stalled any more, if Graft
    /// cordoned it (a node that someone else cordoned stays cordoned).
    /// Default true.
    #[serde(default = "default_true")]
    pub uncordon_on_recovery: bool,
}

/// A CEL rule: the duration string is at least `min`. Strings that do not
/// match [`DURATION_PATTERN`] pass this rule (the `pattern` reports them), so
/// the user sees one clear error and no CEL evaluation error.
fn min_duration_rule(min: &str) -> String {
    format!("!self.matches('{DURATION_PATTERN}') || duration(self) >= duration('{min}')")
}

/// The default of [`TransitionPolicy::stall_after`].
pub const DEFAULT_STALL_AFTER: &str = "60s";

fn default_stall_after() -> String {
    DEFAULT_STALL_AFTER.to_owned()
}

fn default_true() -> bool {
    true
}

impl Default for TransitionPolicy {
    fn default() -> Self {
        Self {
            stall_after: default_stall_after(),
            signal_after: None,
            on_stall: OnStall::default(),
            allow_force: false,
            uncordon_on_recovery: true,
        }
    }
}

impl TransitionPolicy {
    /// [`Self::stall_after`] as a [`Duration`].
    pub fn stall_after(&self) -> Result<Duration, DurationError> {
        parse_duration(&self.stall_after)
    }

    /// [`Self::signal_after`] as a [`Duration`]; `Ok(None)` when unset.
    pub fn signal_after(&self) -> Result<Option<Duration>, DurationError> {
        self.signal_after.as_deref().map(parse_duration).transpose()
    }

    /// The stall action that may actually be taken: `Force` without
    /// `allowForce` degrades to `Cordon` (the schema rejects that combination,
    /// this is a second line of defence for objects built in code).
    pub fn effective_on_stall(&self) -> OnStall {
        match self.on_stall {
            OnStall::Force if !self.allow_force => OnStall::Cordon,
            other => other,
        }
    }
}

/// Implements `Display` (the API spelling) and `FromStr` for a unit enum with `ALL` and `as_str`.
macro_rules! api_enum_strings {
    ($($ty:ident),* $(,)?) => {$(
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::common::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::common::UnknownValue {
                        kind: stringify!($ty),
                        value: s.to_owned(),
                        allowed: Self::ALL.iter().map(|v| v.as_str()).collect(),
                    })
            }
        }
    )*};
}
pub(crate) use api_enum_strings;

api_enum_strings!(DesiredState, OnStall);

/// A string that is not one of an API enum's values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    pub(crate) kind: &'static str,
    pub(crate) value: String,
    pub(crate) allowed: Vec<&'static str>,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a valid {}; use one of {}",
            self.value,
            self.kind,
            self.allowed.join(", ")
        )
    }
}

impl std::error::Error for UnknownValue {}
