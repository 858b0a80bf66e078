//! Which Kubernetes pod and container a task belongs to, from `/proc/<pid>/cgroup`.
//!
//! The kubelet puts every pod in a cgroup named after its UID and every
//! container in a child named after its ID. Spellings differ by cgroup driver
//! (systemd: `kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`;
//! cgroupfs: `kubepods/burstable/pod<uid>/<id>`), by runtime (containerd,
//! CRI-O, Docker) and by cgroup version (v2: one `0::` line; v1: one line per
//! hierarchy). Nested setups (kind, k3d) add a prefix; we look at the whole path.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodRef {
    /// The pod's UID, with dashes, as `kubectl get pod -o jsonpath='{.metadata.uid}'` shows it.
    pub pod_uid: String,
    /// The container's ID (64 hex digits), when the task is inside a container's cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The runtime named by the cgroup (`containerd`, `cri-o`, `docker`), when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
}

impl PodRef {
    /// The container ID in the form Kubernetes writes in pod status (`containerd://<id>`).
    pub fn kubernetes_container_id(&self) -> Option<String> {
        let id = self.container_id.as_ref()?;
        Some(match self.runtime {
            Some(runtime) => format!("{runtime}://{id}"),
            None => id.clone(),
        })
    }
}

/// Reads a `/proc/<pid>/cgroup` text; `None` for tasks outside any pod.
pub fn pod_from_cgroup(cgroup_file: &str) -> Option<PodRef> {
    // v2 has a single "0::<path>" line; v1 repeats the path per hierarchy.
    // Any line that names a pod will do; prefer the unified one.
    let mut paths: Vec<&str> = cgroup_file
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .collect();
    paths.sort_by_key(|p| !cgroup_file.contains(&format!("0::{p}")));
    paths.into_iter().find_map(pod_from_path)
}

fn pod_from_path(path: &str) -> Option<PodRef> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // The last component that names a pod: nested setups can have several kubepods levels.
    let (index, pod_uid) = components
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, c)| pod_uid_from_component(c).map(|uid| (i, uid)))?;
    let (container_id, runtime) = components
        .get(index + 1)
        .and_then(|c| container_from_component(c))
        .map_or((None, None), |(id, rt)| (Some(id), rt));
    Some(PodRef {
        pod_uid,
        container_id,
        runtime,
    })
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_from_component(component: &str) -> Option<String> {
    let base = component.strip_suffix(".slice").unwrap_or(component);
    let start = if base.starts_with("pod") {
        0
    } else {
        base.rfind("-pod")? + 1
    };
    // Only the kubelet's own names count, not any directory that happens to start with "pod".
    if start > 0 && !base.contains("kubepods") {
        return None;
    }
    let uid = base[start + 3..].replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// Pod UIDs are RFC 4122 UUIDs; static (mirror) pods use a 32-digit hex hash.
fn is_pod_uid(uid: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    let parts: Vec<&str> = uid.split('-').collect();
    match parts.as_slice() {
        [a, b, c, d, e] => hex(a, 8) && hex(b, 4) && hex(c, 4) && hex(d, 4) && hex(e, 12),
        [single] => hex(single, 32),
        _ => false,
    }
}

fn container_from_component(component: &str) -> Option<(String, Option<&'static str>)> {
    let base = component.strip_suffix(".scope").unwrap_or(component);
    const PREFIXES: [(&str, &str); 5] = [
        ("cri-containerd-", "containerd"),
        ("crio-conmon-", "cri-o"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("containerd-", "containerd"),
    ];
    let (id, runtime) = PREFIXES
        .iter()
        .find_map(|(prefix, rt)| base.strip_prefix(prefix).map(|id| (id, Some(*rt))))
        .unwrap_or((base, None));
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| (id.to_string(), runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "7f3c1a2e-9b4d-4c2a-8f1e-0123456789ab";
    const UID_: &str = "7f3c1a2e_9b4d_4c2a_8f1e_0123456789ab";
    const CID: &str = "4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f";

    fn expect(file: &str, runtime: Option<&str>) {
        let pod = pod_from_cgroup(file).unwrap_or_else(|| panic!("no pod found in {file}"));
        assert_eq!(pod.pod_uid, UID, "{file}");
        assert_eq!(pod.container_id.as_deref(), Some(CID), "{file}");
        assert_eq!(pod.runtime, runtime, "{file}");
    }

    #[test]
    fn cgroup_v2_systemd_containerd() {
        expect(
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
            ),
            Some("containerd"),
        );
    }

    #[test]
    fn cgroup_v2_systemd_crio_guaranteed() {
        expect(
            &format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope\n"),
            Some("cri-o"),
        );
    }

    #[test]
    fn cgroup_v2_cgroupfs_containerd() {
        expect(&format!("0::/kubepods/besteffort/pod{UID}/{CID}\n"), None);
    }

    #[test]
    fn cgroup_v1_systemd_and_cgroupfs() {
        let v1_systemd = format!(
            "12:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope\n\
             11:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope\n"
        );
        expect(&v1_systemd, Some("docker"));
        let v1_cgroupfs = format!(
            "11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n10:memory:/kubepods/burstable/pod{UID}/{CID}\n"
        );
        expect(&v1_cgroupfs, None);
    }

    #[test]
    fn nested_kind_node() {
        expect(
            &format!(
                "0::/system.slice/docker-aaaa.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
            ),
            Some("containerd"),
        );
    }

    #[test]
    fn crio_conmon_counts_as_the_pod() {
        let pod = pod_from_cgroup(&format!(
            "0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope\n"
        ))
        .unwrap();
        assert_eq!(pod.pod_uid, UID);
        assert_eq!(pod.runtime, Some("cri-o"));
        assert_eq!(
            pod.kubernetes_container_id().as_deref(),
            Some(format!("cri-o://{CID}").as_str())
        );
    }

    #[test]
    fn pod_level_cgroup_without_container() {
        let pod = pod_from_cgroup(&format!("0::/kubepods/pod{UID}\n")).unwrap();
        assert_eq!(pod.pod_uid, UID);
        assert_eq!(pod.container_id, None);
    }

    #[test]
    fn static_pod_hash_uid() {
        let hash = "0123456789abcdef0123456789abcdef";
        let pod = pod_from_cgroup(&format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{CID}.scope\n"
        ))
        .unwrap();
        assert_eq!(pod.pod_uid, hash);
    }

    #[test]
    fn host_tasks_are_not_in_a_pod() {
        for file in [
            "0::/init.scope\n",
            "0::/system.slice/containerd.service\n",
            "0::/\n",
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/system.slice/podman-1234.scope\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "",
            "garbage",
        ] {
            assert_eq!(pod_from_cgroup(file), None, "{file:?}");
        }
    }
}
