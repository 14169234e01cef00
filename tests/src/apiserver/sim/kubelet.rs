//! The kubelets: start pods bound to their node (a sandbox, an address
//! from the node's current network, containers running), mark them Ready
//! after the configured delay, and follow the node's own readiness. A node
//! going NotReady takes its pods' readiness with it (the node lifecycle
//! controller's doing, without its grace period); coming back Ready is a
//! reboot: every pod on it gets a new sandbox, and with it a new address.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use serde_json::{Value, json};

use super::{
    Feed, Pass, PodPlacement, Runtime, State, addressing, events,
    world::{self, World},
};
use crate::{apiserver::store::Store, lab::plan::Network};

/// Writes `pod` (the same uid) changed by `f`; whether it was written.
fn update(store: &Store, pod: &Value, f: impl FnOnce(&mut Value)) -> bool {
    world::update_pod(store, pod, f).is_ok()
}

static CONTAINERS: AtomicU64 = AtomicU64::new(1);

fn runtime_id() -> String {
    let n = CONTAINERS.fetch_add(1, Ordering::Relaxed);
    format!("{:064x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Container statuses for the spec's containers; `state` is the
/// containers' state object, restart counts carry over.
fn containers(pod: &Value, ready: bool, state: Value) -> Value {
    let old = pod["status"]["containerStatuses"].as_array();
    let statuses: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let restarts = old
                .and_then(|o| o.iter().find(|s| s["name"] == c["name"]))
                .and_then(|s| s["restartCount"].as_i64())
                .unwrap_or(0);
            let running = state.get("running").is_some();
            let mut s = json!({
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": ready,
                "started": running,
                "restartCount": restarts,
                "state": state,
            });
            if running {
                s["containerID"] = json!(format!("containerd://{}", runtime_id()));
            }
            s
        })
        .collect();
    json!(statuses)
}

fn set_ready(pod: &mut Value, ready: bool) {
    let reason = (!ready).then_some("ContainersNotReady");
    world::set_condition(pod, "Ready", ready, reason);
    world::set_condition(pod, "ContainersReady", ready, reason);
    if let Some(cs) = pod["status"]["containerStatuses"].as_array_mut() {
        for c in cs {
            c["ready"] = json!(ready);
        }
    }
}

fn host_ip(status: &mut Value, node_ip: &str) {
    status["hostIP"] = json!(node_ip);
    status["hostIPs"] = json!([{ "ip": node_ip }]);
}

/// Sandbox up, address assigned, containers running but not yet Ready.
fn running(pod: &mut Value, node_ip: &str, ip: &str) {
    let statuses = containers(
        pod,
        false,
        json!({ "running": { "startedAt": world::now() } }),
    );
    let status = &mut pod["status"];
    status["phase"] = json!("Running");
    host_ip(status, node_ip);
    status["podIP"] = json!(ip);
    status["podIPs"] = json!([{ "ip": ip }]);
    if status["startTime"].is_null() {
        status["startTime"] = world::now();
    }
    status["containerStatuses"] = statuses;
    world::set_condition(pod, "PodReadyToStartContainers", true, None);
    world::set_condition(pod, "Initialized", true, None);
    world::set_condition(pod, "PodScheduled", true, None);
    set_ready(pod, false);
}

/// No sandbox (yet): Pending, containers waiting in ContainerCreating.
fn creating(pod: &mut Value, node_ip: Option<&str>) {
    let waiting = json!({ "waiting": { "reason": "ContainerCreating" } });
    let statuses = containers(pod, false, waiting);
    let status = &mut pod["status"];
    status["phase"] = json!("Pending");
    if let Some(ip) = node_ip {
        host_ip(status, ip);
    }
    if let Some(s) = status.as_object_mut() {
        s.remove("podIP");
        s.remove("podIPs");
    }
    status["containerStatuses"] = statuses;
    world::set_condition(pod, "PodReadyToStartContainers", false, None);
    world::set_condition(pod, "Initialized", true, None);
    world::set_condition(pod, "PodScheduled", true, None);
    set_ready(pod, false);
}

/// The kubelet's words when the CNI plugin has no address to give.
fn no_ips_message(network: Network, subnet: Option<ipnet::Ipv4Net>) -> String {
    let sandbox = runtime_id();
    let cause = match network {
        Network::Cilium => "plugin type=\"cilium-cni\" name=\"cilium\" failed (add): unable to \
             allocate IP via local cilium agent: [POST /ipam][502] postIpamFailure  No more IPs \
             available"
            .to_string(),
        Network::Legacy => {
            let range = subnet
                .map(|s| {
                    let hosts: Vec<_> = s.hosts().collect();
                    format!("{}-{}", hosts[0], hosts[hosts.len() - 1])
                })
                .unwrap_or_default();
            format!(
                "plugin type=\"flannel\" failed (add): failed to delegate add: failed to \
                 allocate for range 0: no IP addresses available in range set: {range}"
            )
        }
    };
    format!(
        "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup \
         network for sandbox \"{sandbox}\": {cause}"
    )
}

/// Node readiness: NotReady takes pods' readiness; NotReady to Ready is a
/// reboot. Also records the network of nodes seen for the first time: a
/// node already labelled is taken as already switched.
pub(crate) fn follow_nodes(store: &Store, state: &mut State, world: &World, pass: &mut Pass) {
    for node in &world.nodes {
        let name = world::name(node);
        state
            .networks
            .entry(name.to_string())
            .or_insert_with(|| addressing::network_after_agent_start(world, node));
        let ready = world::node_ready(node);
        let was = state.node_ready.insert(name.to_string(), ready);
        if !ready {
            for pod in world.pods_on(name).filter(|p| world::pod_ready(p)) {
                pass.wrote |= update(store, pod, |p| set_ready(p, false));
            }
            for pod in world.pods_on(name) {
                if let Some(rt) = state.runtimes.get_mut(world::uid(pod)) {
                    rt.ready_at = None;
                }
            }
        } else if was == Some(false) {
            reboot(store, state, world, name, pass);
        }
    }
}

/// Every pod on the node loses its sandbox; [`start`] gives it a new one.
fn reboot(store: &Store, state: &mut State, world: &World, node: &str, pass: &mut Pass) {
    let node_ip = world.node(node).and_then(world::internal_ip);
    for pod in world.pods_on(node) {
        state.runtimes.remove(world::uid(pod));
        if let Some(ip) = world::pod_ip(pod).filter(|_| !world::host_network(pod)) {
            pass.feed
                .push(Feed::Removed(PodPlacement::of(world, pod, node, ip)));
        }
        pass.wrote |= update(store, pod, |p| {
            if let Some(cs) = p["status"]["containerStatuses"].as_array_mut() {
                for c in cs {
                    let n = c["restartCount"].as_i64().unwrap_or(0);
                    c["restartCount"] = json!(n + 1);
                }
            }
            creating(p, node_ip.map(|i| i.to_string()).as_deref());
        });
    }
}

/// Gives every bound pod without a sandbox one: an address from its
/// node's current network (the node's own for host-network pods), or,
/// when IPAM has none, a Warning `FailedCreatePodSandBox` and Pending
/// until an address frees up. Pods that were running before the sim
/// (an address and no record here) are left as they are.
pub(crate) fn start(store: &Store, state: &mut State, world: &World, pass: &mut Pass) {
    let mut taken = addressing::taken(world);
    for pod in &world.pods {
        let Some(node_name) = world::pod_node(pod) else {
            continue;
        };
        if world::pod_terminal(pod) || !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        match state.runtimes.get(world::uid(pod)) {
            Some(rt) if rt.started => continue,
            None if world::pod_ip(pod).is_some() => continue,
            _ => {}
        }
        let Some(node) = world.node(node_name).filter(|n| world::node_ready(n)) else {
            continue;
        };
        let node_ip = world::internal_ip(node).map(|i| i.to_string());
        let network = *state
            .networks
            .entry(node_name.to_string())
            .or_insert_with(|| addressing::network_after_agent_start(world, node));
        let ip = if world::host_network(pod) {
            world::internal_ip(node)
        } else if state.exhausted.contains(node_name) {
            None
        } else {
            state.ipam.allocate(world, node_name, network, &taken)
        };
        let uid = world::uid(pod).to_string();
        let rt = state.runtimes.entry(uid).or_default();
        let (Some(ip), Some(node_ip)) = (ip, &node_ip) else {
            if !rt.sandbox_failed {
                rt.sandbox_failed = true;
                let message =
                    no_ips_message(network, addressing::subnet(world, node_name, network));
                pass.wrote |= update(store, pod, |p| creating(p, node_ip.as_deref()));
                events::record(
                    store,
                    pod,
                    "Warning",
                    "FailedCreatePodSandBox",
                    &message,
                    events::Source {
                        component: "kubelet",
                        host: Some(node_name),
                    },
                );
            }
            continue;
        };
        // A pod deleted meanwhile is not written, and not placed.
        if update(store, pod, |p| running(p, node_ip, &ip.to_string())) {
            taken.insert(ip);
            *rt = Runtime {
                started: true,
                ..Runtime::default()
            };
            pass.wrote = true;
            pass.feed
                .push(Feed::Placed(PodPlacement::of(world, pod, node_name, ip)));
        }
    }
}

/// Marks started pods Ready once their delay has passed. A Cilium agent
/// becoming Ready writes (or, without the label, does not write) its CNI
/// config: from then on the node's new pods join that network.
pub(crate) fn readiness(store: &Store, state: &mut State, world: &World, pass: &mut Pass) {
    let now = Instant::now();
    for pod in &world.pods {
        let Some(node) = world::pod_node(pod).and_then(|n| world.node(n)) else {
            continue;
        };
        let agent = state.is_agent(pod);
        let stuck = agent && state.agent_stuck.contains(world::name(node));
        let delay = if agent {
            state.options.agent_ready_delay
        } else {
            state.options.pod_ready_delay
        };
        let Some(rt) = state.runtimes.get_mut(world::uid(pod)) else {
            continue;
        };
        if !rt.started || world::pod_ready(pod) || world::pod_terminal(pod) {
            continue;
        }
        if stuck || !world::node_ready(node) {
            rt.ready_at = None;
            continue;
        }
        let at = *rt.ready_at.get_or_insert(now + delay);
        if now < at {
            pass.deadline = Some(pass.deadline.map_or(at, |d| d.min(at)));
            continue;
        }
        if update(store, pod, |p| set_ready(p, true)) {
            pass.wrote = true;
            if agent {
                let network = addressing::network_after_agent_start(world, node);
                state
                    .networks
                    .insert(world::name(node).to_string(), network);
            }
        }
    }
}
