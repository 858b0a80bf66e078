//! Watches of LivePatches, LivePatchNodes and Nodes into in-memory stores.
//!
//! Each watch lists and watches its kind as untyped objects and converts
//! them one by one, so one malformed object (one that does not deserialize
//! into its type) never stalls a watch: it is logged, counted, and its last
//! good version is kept. Nodes are slimmed (no managed fields, no image
//! list) and wake the reconcile loop only when something the planner reads
//! changed (not on every heartbeat).

use std::{
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::{FutureExt, StreamExt};
use graft_crds::{LivePatch, LivePatchNode};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject},
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::{error::Error, metrics::Metrics, plan::World};

/// Whether each watch has had its first complete list.
#[derive(Debug, Default)]
pub struct Readiness {
    live_patches: AtomicBool,
    live_patch_nodes: AtomicBool,
    nodes: AtomicBool,
}

impl Readiness {
    /// True once every watch has its first data.
    pub fn ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// Marks every watch as synced (tests of what depends on readiness).
    #[doc(hidden)]
    pub fn mark_all_ready_for_tests(&self) {
        for flag in [&self.live_patches, &self.live_patch_nodes, &self.nodes] {
            flag.store(true, Ordering::Release);
        }
    }

    /// The kinds whose first list has not arrived yet.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.live_patches.load(Ordering::Acquire) {
            missing.push("LivePatch");
        }
        if !self.live_patch_nodes.load(Ordering::Acquire) {
            missing.push("LivePatchNode");
        }
        if !self.nodes.load(Ordering::Acquire) {
            missing.push("Node");
        }
        missing
    }
}

/// The stores the planner reads.
#[derive(Clone)]
pub struct Stores {
    /// Every LivePatch.
    pub live_patches: Store<LivePatch>,
    /// Every LivePatchNode.
    pub live_patch_nodes: Store<LivePatchNode>,
    /// Every Node (slimmed).
    pub nodes: Store<Node>,
}

impl Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("live_patches", &self.live_patches.len())
            .field("live_patch_nodes", &self.live_patch_nodes.len())
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl Stores {
    /// A snapshot for the planner.
    pub fn world(&self, operator_node: Option<String>) -> World {
        World {
            live_patches: self.live_patches.state(),
            nodes: self.nodes.state(),
            live_patch_nodes: self.live_patch_nodes.state(),
            operator_node,
        }
    }

    /// The `resourceVersion` of a stored object (`None` when absent).
    pub fn resource_version(&self, kind: crate::apply::Kind, name: &str) -> Option<String> {
        use crate::apply::Kind;
        match kind {
            Kind::LivePatch => self
                .live_patches
                .get(&ObjectRef::new(name))
                .and_then(|o| o.metadata.resource_version.clone()),
            Kind::LivePatchNode => self
                .live_patch_nodes
                .get(&ObjectRef::new(name))
                .and_then(|o| o.metadata.resource_version.clone()),
            Kind::Node => self
                .nodes
                .get(&ObjectRef::new(name))
                .and_then(|o| o.metadata.resource_version.clone()),
        }
    }
}

/// Starts nothing: returns the stores and the three watch futures, which the
/// caller runs until shutdown. Each event that matters wakes `wake`.
pub fn watches(
    client: &Client,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
) -> (Stores, Vec<futures::future::BoxFuture<'static, ()>>) {
    let lp_writer = Writer::<LivePatch>::default();
    let lpn_writer = Writer::<LivePatchNode>::default();
    let node_writer = Writer::<Node>::default();
    let stores = Stores {
        live_patches: lp_writer.as_reader(),
        live_patch_nodes: lpn_writer.as_reader(),
        nodes: node_writer.as_reader(),
    };
    let api = |resource: ApiResource| Api::<DynamicObject>::all_with(client.clone(), &resource);
    let futures = vec![
        watch_kind(
            api(ApiResource::erase::<LivePatch>(&())),
            lp_writer,
            Kind {
                name: "LivePatch",
                slim: |_| {},
                relevant: |_, _| true,
                ready: |r| &r.live_patches,
            },
            readiness.clone(),
            metrics.clone(),
            wake.clone(),
        )
        .boxed(),
        watch_kind(
            api(ApiResource::erase::<LivePatchNode>(&())),
            lpn_writer,
            Kind {
                name: "LivePatchNode",
                slim: |o| o.metadata.managed_fields = None,
                relevant: |_, _| true,
                ready: |r| &r.live_patch_nodes,
            },
            readiness.clone(),
            metrics.clone(),
            wake.clone(),
        )
        .boxed(),
        watch_kind(
            api(ApiResource::erase::<Node>(&())),
            node_writer,
            Kind {
                name: "Node",
                slim: slim_node,
                relevant: node_changed,
                ready: |r| &r.nodes,
            },
            readiness,
            metrics,
            wake,
        )
        .boxed(),
    ];
    (stores, futures)
}

struct Kind<K> {
    name: &'static str,
    slim: fn(&mut DynamicObject),
    relevant: fn(&K, &K) -> bool,
    ready: fn(&Readiness) -> &AtomicBool,
}

/// Drops what the planner never reads from a Node: managed fields, the image
/// list and volume lists, which are most of a Node's size.
pub fn slim_node(node: &mut DynamicObject) {
    node.metadata.managed_fields = None;
    if let Some(status) = node.data.get_mut("status").and_then(|s| s.as_object_mut()) {
        for field in ["images", "volumesInUse", "volumesAttached", "conditions"] {
            status.remove(field);
        }
    }
}

/// Whether a Node changed in a way the planner sees (labels, cordon,
/// annotations, kernel, boot, OS), as opposed to a heartbeat.
pub fn node_changed(old: &Node, new: &Node) -> bool {
    old.metadata.uid != new.metadata.uid
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
        || old.spec.as_ref().and_then(|s| s.unschedulable)
            != new.spec.as_ref().and_then(|s| s.unschedulable)
        || old.status.as_ref().and_then(|s| s.node_info.as_ref())
            != new.status.as_ref().and_then(|s| s.node_info.as_ref())
}

/// Converts an untyped object; `Err` names what does not fit.
fn parse<K: Resource + DeserializeOwned>(
    kind: &'static str,
    object: DynamicObject,
) -> Result<K, Error> {
    let name = object.metadata.name.clone().unwrap_or_default();
    object.try_parse::<K>().map_err(|e| Error::MalformedObject {
        kind,
        name,
        message: e.to_string(),
    })
}

async fn watch_kind<K>(
    api: Api<DynamicObject>,
    mut writer: Writer<K>,
    kind: Kind<K>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
) where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + Sync + 'static,
{
    let reader = writer.as_reader();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let last_good = |object: &DynamicObject| {
        object
            .metadata
            .name
            .as_deref()
            .and_then(|name| reader.get(&ObjectRef::new(name)))
    };
    let malformed = |error: Error| {
        metrics.error(&error);
        warn!(%error, "ignoring a malformed object");
    };
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(source) => {
                let error = Error::Watch {
                    kind: kind.name,
                    source,
                };
                metrics.error(&error);
                warn!(%error, "watch error");
                continue;
            }
        };
        let mut wake_up = true;
        let typed = match event {
            watcher::Event::Init => Some(watcher::Event::Init),
            watcher::Event::InitDone => {
                (kind.ready)(&readiness).store(true, Ordering::Release);
                debug!(kind = kind.name, count = reader.len(), "watch synced");
                Some(watcher::Event::InitDone)
            }
            watcher::Event::InitApply(mut object) => {
                (kind.slim)(&mut object);
                let previous = last_good(&object);
                match parse::<K>(kind.name, object) {
                    Ok(typed) => Some(watcher::Event::InitApply(typed)),
                    Err(error) => {
                        malformed(error);
                        previous.map(|p| watcher::Event::InitApply(p.as_ref().clone()))
                    }
                }
            }
            watcher::Event::Apply(mut object) => {
                (kind.slim)(&mut object);
                let previous = last_good(&object);
                match parse::<K>(kind.name, object) {
                    Ok(typed) => {
                        wake_up = previous.is_none_or(|p| (kind.relevant)(&p, &typed));
                        Some(watcher::Event::Apply(typed))
                    }
                    Err(error) => {
                        malformed(error);
                        None
                    }
                }
            }
            watcher::Event::Delete(object) => {
                let previous = last_good(&object);
                match parse::<K>(kind.name, object) {
                    Ok(typed) => Some(watcher::Event::Delete(typed)),
                    Err(_) => previous.map(|p| watcher::Event::Delete(p.as_ref().clone())),
                }
            }
        };
        if let Some(typed) = typed {
            writer.apply_watcher_event(&typed);
            if wake_up && !matches!(typed, watcher::Event::Init | watcher::Event::InitApply(_)) {
                wake.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_malformed_object_is_reported_with_its_name() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "graft.dev/v1alpha1",
            "kind": "LivePatch",
            "metadata": { "name": "broken" },
            "spec": { "modules": "not a list" },
        }))
        .unwrap();
        let error = parse::<LivePatch>("LivePatch", object).unwrap_err();
        assert_eq!(error.category(), "MalformedObject");
        assert!(error.to_string().contains("\"broken\""), "{error}");
    }

    #[test]
    fn slim_nodes_keep_what_the_planner_reads() {
        let mut object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": "n1", "labels": { "kubernetes.io/os": "linux" } },
            "spec": { "unschedulable": true },
            "status": {
                "images": [{ "names": ["a"], "sizeBytes": 1 }],
                "nodeInfo": {
                    "kernelVersion": "6.1.0", "bootID": "b", "operatingSystem": "linux",
                    "architecture": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
                    "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""
                }
            }
        }))
        .unwrap();
        slim_node(&mut object);
        let node: Node = parse("Node", object).unwrap();
        assert_eq!(node.status.as_ref().unwrap().images, None);
        assert_eq!(crate::select::kernel_release(&node), Some("6.1.0"));
        assert_eq!(node.spec.unwrap().unschedulable, Some(true));
    }

    #[test]
    fn heartbeats_do_not_wake_the_planner() {
        let old = Node::default();
        let mut new = old.clone();
        new.metadata.resource_version = Some("2".into());
        assert!(!node_changed(&old, &new));
        new.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
        assert!(node_changed(&old, &new));
    }
}
