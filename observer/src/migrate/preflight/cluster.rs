//! The cluster's health before anything changes: nodes Ready, a crossover
//! agent on each, and the loss those agents measure.
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node as KubeNode;

use super::{AgentHooks, Baseline, Check, DriverPlace, Facts};
use crate::cluster::derive;

fn ready(node: &KubeNode) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn names(nodes: &[&KubeNode]) -> String {
    let v: Vec<&str> = nodes.iter().map(|n| derive::name(n)).collect();
    v.join(", ")
}

/// Selected nodes are drained and rebooted, so they must be Ready; others
/// only receive probes, and a NotReady one shows up as loss.
pub fn nodes_ready(facts: &Facts) -> Check {
    const NAME: &str = "nodes-ready";
    if facts.nodes.is_empty() {
        return Check::fail(NAME, "the API lists no Nodes", "kubectl get nodes");
    }
    let selected: Vec<&KubeNode> = facts
        .nodes
        .iter()
        .filter(|n| facts.is_selected(derive::name(n)))
        .collect();
    if selected.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "the node selector picks none of the {} Nodes",
                facts.nodes.len()
            ),
            "kubectl get nodes --show-labels  # and fix the selector",
        );
    }
    let (down, up): (Vec<&KubeNode>, Vec<&KubeNode>) = facts.nodes.iter().partition(|n| !ready(n));
    let down_selected: Vec<&KubeNode> = down
        .iter()
        .copied()
        .filter(|n| facts.is_selected(derive::name(n)))
        .collect();
    let describe = |nodes: &[&KubeNode]| -> String {
        nodes
            .iter()
            .map(|n| format!("kubectl describe node {}", derive::name(n)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if !down_selected.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "NotReady: {} (of {} to migrate): a node must be Ready to drain, reboot and verify",
                names(&down_selected),
                selected.len()
            ),
            describe(&down_selected),
        );
    }
    if !down.is_empty() {
        return Check::warn(
            NAME,
            format!(
                "NotReady, not to be migrated: {}: probes to them will count as loss",
                names(&down)
            ),
            describe(&down),
        );
    }
    Check::pass(
        NAME,
        format!("{} Nodes Ready, {} to migrate", up.len(), selected.len()),
    )
}

/// Probes go from every node to every node, and loss is only known where
/// an agent counts it.
pub fn agents(facts: &Facts) -> Check {
    const NAME: &str = "agents-everywhere";
    let with_agent: BTreeSet<&str> = facts
        .agents
        .iter()
        .filter(|a| a.ready)
        .filter_map(|a| a.node.as_deref())
        .collect();
    let missing: Vec<&KubeNode> = facts
        .nodes
        .iter()
        .filter(|n| !with_agent.contains(derive::name(n)))
        .collect();
    let ns = &facts.agent_namespace;
    let sel = &facts.agent_selector;
    if facts.nodes.is_empty() {
        return Check::fail(NAME, "the API lists no Nodes", "kubectl get nodes");
    }
    if facts.agents.is_empty() {
        return Check::fail(
            NAME,
            format!("no crossover agent pod in namespace {ns} with labels {sel}"),
            "kubectl apply -k manifests/\nkubectl -n crossover rollout status ds/crossover-agent",
        );
    }
    if missing.is_empty() {
        return Check::pass(
            NAME,
            format!(
                "a Ready crossover agent on each of the {} Nodes",
                facts.nodes.len()
            ),
        );
    }
    let mut remedy = format!("kubectl -n {ns} get pods -l {sel} -o wide");
    for n in &missing {
        remedy.push_str(&format!(
            "\nkubectl describe node {}  # taints the agent does not tolerate?",
            derive::name(n)
        ));
    }
    Check::fail(
        NAME,
        format!(
            "no Ready crossover agent on {} of {} Nodes: {}",
            missing.len(),
            facts.nodes.len(),
            names(&missing)
        ),
        remedy,
    )
}

/// Every hook of every agent runs crossover first (docs/hooks.md): a hook
/// behind another program counts what that program lets through, not what
/// crossed it. A blind underlay fails (every loss signal is counted
/// there; such an agent also refuses readings, so it is missing from the
/// baseline too); blind pod, overlay or host hooks warn: the loss figures
/// stand, the node's flows and connections through them do not.
pub fn hooks_first(facts: &Facts) -> Check {
    const NAME: &str = "hooks-seen-first";
    const DOCS: &str = "# see docs/hooks.md; list what runs on a hook, on its node:\n\
         bpftool net show dev IFACE\n\
         tc filter show dev IFACE ingress; tc filter show dev IFACE egress";
    let (answered, blind) = match &facts.hooks {
        AgentHooks::NotRead(why) => {
            return Check::warn(
                NAME,
                format!("the agents' hooks were not read: {why}"),
                "crossover migrate plan  # again once every agent is Ready",
            );
        }
        AgentHooks::Read { answered: 0, .. } => {
            return Check::warn(
                NAME,
                "the agents' hooks were not read: no agent answered",
                "crossover migrate plan  # again once every agent is Ready",
            );
        }
        AgentHooks::Read { answered, blind } => (answered, blind),
    };
    if blind.is_empty() {
        return Check::pass(
            NAME,
            format!("crossover runs first on every hook of the {answered} agents that answered"),
        );
    }
    let mut detail = String::new();
    for b in blind {
        detail += &format!("{b}\n  {}: {}\n", b.node, b.rows_affected());
    }
    let detail = detail.trim_end().to_owned();
    if blind.iter().any(|b| b.hooks.underlay()) {
        Check::fail(NAME, detail, DOCS)
    } else {
        Check::warn(NAME, detail, DOCS)
    }
}

pub fn baseline(baseline: &Baseline) -> Check {
    const NAME: &str = "baseline-loss";
    match baseline {
        Baseline::Under { summary } => Check::pass(NAME, summary.clone()),
        Baseline::NotMeasured(why) => Check::warn(
            NAME,
            format!("baseline loss not measured: {why}"),
            "crossover migrate plan  # again once every agent is Ready, to measure it",
        ),
        Baseline::Over { breaches } => Check::fail(
            NAME,
            format!(
                "loss over the threshold before anything changed:\n{}",
                breaches.join("\n")
            ),
            "# find and fix the lossy pairs first; the migration would be judged against this noise\n\
             kubectl -n crossover get pods -o wide",
        ),
    }
}

/// The driver's own connections (to the API server and the agents) must
/// not be judged by its gate. The agents' port is left out in the datapath
/// wherever it is read from; the API server's is not, so a driver in a pod
/// on the pod network has its requests to the API server counted like any
/// pod's wherever the CNI carries pod-to-node traffic unmasqueraded
/// (Cilium's tunnel does).
pub fn driver_network(facts: &Facts) -> Check {
    const NAME: &str = "driver-host-network";
    const REMEDY: &str = "run the driver from a workstation or a node, or give its pod\n\
         spec.hostNetwork: true and spec.dnsPolicy: ClusterFirstWithHostNet";
    match &facts.driver {
        DriverPlace::Outside => Check::pass(
            NAME,
            "the driver runs outside the cluster's pods: its own connections are host or \
             external traffic, never judged",
        ),
        DriverPlace::Pod {
            pod,
            host_network: true,
        } => Check::pass(
            NAME,
            format!("the driver runs in pod {pod} on its node's host network: never judged"),
        ),
        DriverPlace::Pod {
            pod,
            host_network: false,
        } => Check::warn(
            NAME,
            format!(
                "the driver runs in pod {pod} on the pod network: its readings of the agents are \
                 left out of the gate (the agents' port), its requests to the API server are \
                 not, and a lost segment of theirs counts as the pod network's"
            ),
            REMEDY,
        ),
        DriverPlace::Unknown { pod, reason } => Check::warn(
            NAME,
            format!("the driver runs in pod {pod}, which could not be read ({reason})"),
            REMEDY,
        ),
    }
}
