//! Preflight checks: is this cluster ready for a live migration to Cilium?
//!
//! `crossover migrate plan` changes nothing: it [`gather`]s what the API
//! says into [`Facts`], runs the pure [`checks`] over them and prints
//! [`render`]. Every requirement of Cilium's documented dual-overlay
//! migration (`docs/migrate.md`, "Preflight") is one named check with a
//! status, the values it saw and, when not passing, a remedy the SRE can
//! paste. A check that cannot be decided (no `cilium-config` yet, a value
//! that does not parse) never passes.
mod calico;
mod cilium;
mod cluster;
mod facts;
mod gather;
mod network;
mod networks;
mod objects;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::cluster::derive::ShapeOverrides;

pub use facts::{
    AgentHooks, AgentPod, CalicoInstallation, CalicoIpPool, DriverPlace, Facts, FlannelConfig,
    NodeAddressAutodetection, NodeConfigs, ServiceCidr,
};
pub use gather::gather;
pub use objects::PodAddresses;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        // Upper case where the eye must stop.
        match self {
            Status::Pass => "pass",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was read and from where, so a reader can verify it.
    pub detail: String,
    /// Commands to paste; `None` when passing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
            remedy: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            remedy: Some(remedy.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            remedy: Some(remedy.into()),
        }
    }
}

/// The loss the agents measured before anything changed, as the driver
/// judged it against its threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// Why not (no agents yet, `--skip-baseline`, ...).
    NotMeasured(String),
    Under {
        summary: String,
    },
    /// One line per node pair and overlay over the threshold.
    Over {
        breaches: Vec<String>,
    },
}

/// Where to look and what the flags say.
#[derive(Clone, Debug)]
pub struct PreflightOptions {
    /// Namespace of Cilium's agent, `cilium-config` and CiliumNodeConfigs.
    pub cilium_namespace: String,
    /// Namespace and label selector of the crossover agent pods
    /// (`manifests/base/agent-daemonset.yaml`).
    pub agent_namespace: String,
    pub agent_selector: String,
    /// The Service CIDR(s), which most clusters do not publish in the API.
    pub service_cidrs: Vec<Ipv4Net>,
    /// CIDR and overlay flags, winning over what the cluster says.
    pub overrides: ShapeOverrides,
    /// A label selector of the nodes to migrate; `None`: all. Nodes left
    /// out still need an agent (probes go to every node) and are only
    /// warned about when NotReady.
    pub node_selector: Option<String>,
}

impl Default for PreflightOptions {
    fn default() -> Self {
        PreflightOptions {
            cilium_namespace: "kube-system".into(),
            agent_namespace: "crossover".into(),
            agent_selector: "app.kubernetes.io/name=crossover-agent".into(),
            service_cidrs: Vec::new(),
            overrides: ShapeOverrides::default(),
            node_selector: None,
        }
    }
}

/// Every check, in the order an SRE would fix them: Cilium's settings,
/// the address plan, the per-node config, the legacy side, then the
/// cluster's health.
pub fn checks(facts: &Facts, baseline: &Baseline) -> Vec<Check> {
    let net = networks::Networks::of(facts);
    vec![
        cilium::ipam(facts),
        network::cilium_cidr_vs_legacy(facts, &net),
        network::cilium_cidr_vs_service(facts, &net),
        network::overlays(facts, &net),
        cilium::node_config(facts),
        cilium::policy(facts),
        cilium::host_legacy_routing(facts),
        cilium::cni(facts),
        cilium::unmanaged_pod_watcher(facts),
        calico::autodetection(facts, &net),
        objects::objects(facts),
        cluster::nodes_ready(facts),
        cluster::agents(facts),
        cluster::hooks_first(facts),
        cluster::driver_network(facts),
        cluster::baseline(baseline),
    ]
}

/// True when any check fails: `migrate run` must not start.
pub fn blocking(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

/// A table for humans: one row per check, its remedy indented below its
/// detail; columns named as the JSON's fields.
pub fn render(checks: &[Check]) -> String {
    let mut table = crate::table::new(&["name", "status", "detail"], 3);
    for c in checks {
        let mut detail = c.detail.clone();
        if let Some(remedy) = &c.remedy {
            // One missing prerequisite (no Cilium yet) fails several checks
            // with the same remedy: print it once.
            match checks.iter().find(|o| o.remedy.as_ref() == Some(remedy)) {
                Some(first) if first.name != c.name => {
                    detail += &format!("\nremedy: as for {}", first.name);
                }
                _ => {
                    detail += "\nremedy:";
                    for line in remedy.lines() {
                        detail += &format!("\n  {line}");
                    }
                }
            }
        }
        table.add_row([c.name, c.status.label(), detail.as_str()]);
    }
    let mut out = crate::table::render(&table);
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let _ = writeln!(
        out,
        "\n{} checks: {} pass, {} warn, {} fail{}",
        checks.len(),
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
        if blocking(checks) {
            ": the migration cannot start"
        } else {
            ""
        }
    );
    out
}

/// `helm upgrade` of the release `cilium` keeping its values, then the
/// restart that makes the pods read the new ConfigMap (they read it only
/// at start).
fn helm_set(namespace: &str, sets: &[&str], restart: &str) -> String {
    let sets: String = sets.iter().map(|s| format!(" --set {s}")).collect();
    format!(
        "helm upgrade cilium cilium/cilium -n {namespace} --reuse-values{sets}\n\
         kubectl -n {namespace} rollout restart {restart}"
    )
}
