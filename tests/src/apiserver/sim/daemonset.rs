//! The DaemonSet controller: one pod per eligible node, replacements under
//! new names, rolling updates when the template changes (`kubectl rollout
//! restart` stamps an annotation on it), and the status `kubectl rollout
//! status` waits on.
//!
//! The real controller binds its pods through the scheduler with a node
//! affinity; this one sets `spec.nodeName` itself, which the kubelet sees
//! the same way.
use std::collections::HashMap;

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use serde_json::{Value, json};

use super::{
    Pass, State,
    world::{self, World},
};
use crate::apiserver::{kinds::Gvr, status::ApiError, store::Store};

const HASH_LABEL: &str = "controller-revision-hash";

/// Tolerations the controller adds to every DaemonSet pod, so node
/// conditions and a cordon never keep node agents off a node.
fn auto_tolerations(host_network: bool) -> Vec<Value> {
    let mut out: Vec<Value> = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
    .into_iter()
    .map(|(key, effect)| json!({ "key": key, "operator": "Exists", "effect": effect }))
    .collect();
    if host_network {
        out.push(json!({ "key": "node.kubernetes.io/network-unavailable",
                         "operator": "Exists", "effect": "NoSchedule" }));
    }
    out
}

/// The pod spec the controller creates: the template's, with the
/// automatic tolerations.
fn pod_spec(ds: &Value) -> Value {
    let mut spec = ds["spec"]["template"]["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    tolerations.extend(auto_tolerations(world::host_network(
        &json!({ "spec": spec }),
    )));
    spec["tolerations"] = json!(tolerations);
    spec
}

/// A stable digest of the pod template, what `controller-revision-hash`
/// names (FNV-1a; serde_json writes object keys sorted).
fn template_hash(ds: &Value) -> String {
    let text = ds["spec"]["template"].to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{:x}", h & 0xff_ffff_ffff)
}

fn eligible(spec: &Value, node: &Value) -> bool {
    world::node_selector_matches(spec, node) && world::tolerates_node(spec, node)
}

struct View<'a> {
    ds: &'a Value,
    hash: String,
    /// The revision of pods that carry no hash label: the template as the
    /// sim first saw it (fixture pods predate the sim).
    adopted: String,
    /// Eligible node names, and each node's pods of this DaemonSet.
    eligible: Vec<&'a str>,
    pods: HashMap<&'a str, Vec<&'a Value>>,
}

impl View<'_> {
    fn revision<'p>(&'p self, pod: &'p Value) -> &'p str {
        world::label(pod, HASH_LABEL).unwrap_or(&self.adopted)
    }
}

fn view<'a>(state: &mut State, world: &'a World, ds: &'a Value) -> View<'a> {
    let spec = pod_spec(ds);
    let hash = template_hash(ds);
    let key = (
        world::namespace_of(ds).to_string(),
        world::name(ds).to_string(),
    );
    let adopted = state
        .ds_adopted
        .entry(key)
        .or_insert_with(|| hash.clone())
        .clone();
    let mut pods: HashMap<&str, Vec<&Value>> = HashMap::new();
    for pod in world.owned("DaemonSet", world::namespace_of(ds), world::name(ds)) {
        if let Some(node) = world::pod_node(pod) {
            pods.entry(node).or_default().push(pod);
        }
    }
    let eligible = world
        .nodes
        .iter()
        .filter(|n| eligible(&spec, n))
        .map(world::name)
        .collect();
    View {
        ds,
        hash,
        adopted,
        eligible,
        pods,
    }
}

/// Creates, deletes and replaces DaemonSet pods.
pub(crate) fn reconcile(store: &Store, state: &mut State, world: &World, pass: &mut Pass) {
    for ds in &world.daemonsets {
        let v = view(state, world, ds);
        let mut deletions: Vec<&Value> = Vec::new();
        for (node, pods) in &v.pods {
            if !v.eligible.contains(node) {
                deletions.extend(pods.iter().copied());
            } else if pods.len() > 1 {
                // Keep the Ready (then the oldest) one.
                let mut sorted = pods.clone();
                sorted.sort_by_key(|p| (!world::pod_ready(p), world::uid(p).to_string()));
                deletions.extend(sorted.into_iter().skip(1));
            }
        }
        for node in &v.eligible {
            if v.pods.get(node).is_none_or(Vec::is_empty) {
                pass.wrote |= create_pod(store, &v, node).is_ok();
            }
        }
        deletions.extend(rolling_update(&v));
        for pod in deletions {
            pass.wrote |= super::delete_pod(store, pod);
        }
    }
}

/// Outdated pods to delete now: as many as `maxUnavailable` (default 1)
/// leaves room for, not-Ready ones first.
fn rolling_update<'a>(v: &View<'a>) -> Vec<&'a Value> {
    let strategy = &v.ds["spec"]["updateStrategy"];
    if strategy["type"] == "OnDelete" {
        return Vec::new();
    }
    let desired = v.eligible.len() as i32;
    let max = &strategy["rollingUpdate"]["maxUnavailable"];
    let max = if max.is_null() {
        1
    } else {
        super::eviction::scaled(max, desired).unwrap_or(1).max(1)
    };
    let unavailable = v
        .eligible
        .iter()
        .filter(|n| {
            !v.pods
                .get(*n)
                .is_some_and(|ps| ps.iter().any(|p| world::pod_ready(p)))
        })
        .count() as i32;
    let mut outdated: Vec<&Value> = v
        .eligible
        .iter()
        .filter_map(|n| v.pods.get(n))
        .flatten()
        .filter(|p| v.revision(p) != v.hash)
        .copied()
        .collect();
    outdated.sort_by_key(|p| (world::pod_ready(p), world::pod_node(p).map(str::to_string)));
    let not_ready = outdated.iter().filter(|p| !world::pod_ready(p)).count() as i32;
    let room = (max - unavailable).max(0) + not_ready;
    outdated.into_iter().take(room as usize).collect()
}

fn create_pod(store: &Store, v: &View, node: &str) -> Result<Value, ApiError> {
    let ds = v.ds;
    let template = &ds["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[HASH_LABEL] = json!(v.hash);
    let generation = ds["metadata"]["generation"].as_i64().unwrap_or(1);
    labels["pod-template-generation"] = json!(generation.to_string());
    let mut spec = pod_spec(ds);
    spec["nodeName"] = json!(node);
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", world::name(ds)),
            "namespace": world::namespace_of(ds),
            "labels": labels,
            "annotations": template["metadata"]["annotations"],
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": world::name(ds),
                "uid": world::uid(ds),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
        "status": { "phase": "Pending" },
    });
    store.create(&Gvr::of::<Pod>(), Some(world::namespace_of(ds)), pod, false)
}

/// Writes each DaemonSet's status where it changed.
pub(crate) fn sync_status(store: &Store, state: &mut State, world: &World, pass: &mut Pass) {
    for ds in &world.daemonsets {
        let v = view(state, world, ds);
        let on_eligible = || {
            v.eligible
                .iter()
                .filter_map(|n| v.pods.get(n))
                .flatten()
                .copied()
        };
        let desired = v.eligible.len() as i64;
        let current = v
            .eligible
            .iter()
            .filter(|n| v.pods.get(*n).is_some_and(|ps| !ps.is_empty()))
            .count() as i64;
        let ready = on_eligible().filter(|p| world::pod_ready(p)).count() as i64;
        let updated = on_eligible().filter(|p| v.revision(p) == v.hash).count() as i64;
        let misscheduled = v
            .pods
            .iter()
            .filter(|(n, _)| !v.eligible.contains(n))
            .count() as i64;
        let status = json!({
            "observedGeneration": ds["metadata"]["generation"],
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": desired - ready,
            "updatedNumberScheduled": updated,
        });
        pass.wrote |= super::write_status::<DaemonSet>(store, ds, status);
    }
}
