//! The default scheduler, reduced to the filters a drain exercises: the
//! node is Ready, not cordoned, its NoSchedule/NoExecute taints tolerated
//! and its labels match `nodeSelector`; among those, the node with the
//! fewest pods wins (ties by name), which spreads replacements out.
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::{
    Pass, events,
    world::{self, World},
};
use crate::apiserver::{kinds::Gvr, status::ApiError, store::Store};

/// Why a node was filtered out, in the scheduler's words.
fn reject(pod: &Value, node: &Value) -> Option<String> {
    let spec = &pod["spec"];
    if !world::node_ready(node) {
        return Some("node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into());
    }
    if world::node_unschedulable(node) {
        return Some("node(s) were unschedulable".into());
    }
    if !world::tolerates_node(spec, node) {
        let taint = node["spec"]["taints"]
            .as_array()
            .and_then(|ts| ts.first())
            .map(|t| {
                format!(
                    "{}: {}",
                    t["key"].as_str().unwrap_or_default(),
                    t["value"].as_str().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        return Some(format!("node(s) had untolerated taint {{{taint}}}"));
    }
    if !world::node_selector_matches(spec, node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    None
}

pub(crate) fn schedule(store: &Store, world: &World, pass: &mut Pass) {
    let mut load: HashMap<&str, usize> = world
        .nodes
        .iter()
        .map(|n| (world::name(n), world.pods_on(world::name(n)).count()))
        .collect();
    let pending = world.pods.iter().filter(|p| {
        world::pod_node(p).is_none()
            && !world::pod_terminal(p)
            && p["metadata"]["deletionTimestamp"].is_null()
            && p["spec"]["schedulerName"]
                .as_str()
                .is_none_or(|s| s == "default-scheduler")
    });
    for pod in pending {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<&str> = None;
        for node in &world.nodes {
            let name = world::name(node);
            match reject(pod, node) {
                Some(why) => *reasons.entry(why).or_default() += 1,
                None if best.is_none_or(|b| (load[name], name) < (load[b], b)) => {
                    best = Some(name);
                }
                None => {}
            }
        }
        match best {
            Some(node) => {
                if bind(store, pod, node).is_ok() {
                    *load.get_mut(node).expect("a listed node") += 1;
                    pass.wrote = true;
                }
            }
            None => pass.wrote |= unschedulable(store, pod, world.nodes.len(), &reasons),
        }
    }
}

fn bind(store: &Store, pod: &Value, node: &str) -> Result<Value, ApiError> {
    let uid = world::uid(pod).to_string();
    let gvr = Gvr::of::<Pod>();
    store.mutate(
        &gvr,
        Some(world::namespace_of(pod)),
        world::name(pod),
        false,
        |cur| {
            let mut pod = cur
                .filter(|p| world::uid(p) == uid && world::pod_node(p).is_none())
                .cloned()
                .ok_or_else(|| ApiError::conflict(&gvr, &uid))?;
            pod["spec"]["nodeName"] = json!(node);
            world::set_condition(&mut pod, "PodScheduled", true, None);
            Ok(Some(pod))
        },
    )
}

/// Marks the pod unschedulable and records FailedScheduling, once per
/// episode: nothing is written while the condition already says so.
fn unschedulable(
    store: &Store,
    pod: &Value,
    nodes: usize,
    reasons: &BTreeMap<String, usize>,
) -> bool {
    let already = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "PodScheduled" && c["status"] == "False");
    if already {
        return false;
    }
    let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let message = format!(
        "0/{nodes} nodes are available: {}. preemption: 0/{nodes} nodes are available: \
         {nodes} Preemption is not helpful for scheduling.",
        detail.join(", ")
    );
    let written = world::update_pod(store, pod, |pod| {
        world::set_condition(pod, "PodScheduled", false, Some("Unschedulable"));
        if let Some(c) = pod["status"]["conditions"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "PodScheduled"))
        {
            c["message"] = json!(message);
        }
    });
    if let Ok(pod) = &written {
        events::record(
            store,
            pod,
            "Warning",
            "FailedScheduling",
            &message,
            events::Source {
                component: "default-scheduler",
                host: None,
            },
        );
    }
    written.is_ok()
}
