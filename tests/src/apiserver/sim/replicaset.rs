//! The ReplicaSet controller: keeps `spec.replicas` live pods, creating
//! replacements (unscheduled, under new names) for pods evicted or deleted,
//! and keeps the ReplicaSet's status.
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use serde_json::{Value, json};

use super::{
    Pass,
    world::{self, World},
};
use crate::apiserver::{kinds::Gvr, store::Store};

fn replicas(rs: &Value) -> usize {
    rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize
}

fn pods<'a>(world: &'a World, rs: &'a Value) -> Vec<&'a Value> {
    world
        .owned("ReplicaSet", world::namespace_of(rs), world::name(rs))
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

pub(crate) fn reconcile(store: &Store, world: &World, pass: &mut Pass) {
    for rs in &world.replicasets {
        let mut pods = pods(world, rs);
        let want = replicas(rs);
        for _ in pods.len()..want {
            pass.wrote |= create_pod(store, rs);
        }
        let excess = pods.len().saturating_sub(want);
        if excess > 0 {
            // Scale down as the controller ranks pods: unscheduled, then
            // not Ready, then the newest, go first.
            pods.sort_by_key(|p| {
                (
                    world::pod_node(p).is_some(),
                    world::pod_ready(p),
                    std::cmp::Reverse(p["metadata"]["uid"].as_str().map(str::to_string)),
                )
            });
            for pod in pods.into_iter().take(excess) {
                pass.wrote |= super::delete_pod(store, pod);
            }
        }
    }
}

fn create_pod(store: &Store, rs: &Value) -> bool {
    let template = &rs["spec"]["template"];
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", world::name(rs)),
            "namespace": world::namespace_of(rs),
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"]["annotations"],
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": world::name(rs),
                "uid": world::uid(rs),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": template["spec"],
        "status": { "phase": "Pending" },
    });
    store
        .create(&Gvr::of::<Pod>(), Some(world::namespace_of(rs)), pod, false)
        .is_ok()
}

pub(crate) fn sync_status(store: &Store, world: &World, pass: &mut Pass) {
    for rs in &world.replicasets {
        let pods = pods(world, rs);
        let selector = &rs["spec"]["selector"];
        let labelled = pods
            .iter()
            .filter(|p| world::selector_matches(selector, p))
            .count();
        let ready = pods.iter().filter(|p| world::pod_ready(p)).count();
        let status = json!({
            "observedGeneration": rs["metadata"]["generation"],
            "replicas": pods.len(),
            "fullyLabeledReplicas": labelled,
            "readyReplicas": ready,
            "availableReplicas": ready,
        });
        pass.wrote |= super::write_status::<ReplicaSet>(store, rs, status);
    }
}
