//! The agent's picture of the cluster: the shape the kernel was given, who
//! the peers are, and what every IP is. Rebuilt whole when the cluster
//! changes and swapped in, so readers never see half an update.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use serde::Serialize;

use super::State;
use crate::{
    cluster::{Cluster, PeerAgent, ProbePod, derive::Derived, index::IpIndex},
    shape::{ClusterShape, Node},
};

pub struct View {
    pub shape: ClusterShape,
    names: BTreeMap<Ipv4Addr, String>,
    pub index: IpIndex,
    /// Agents whose counters this one compares its sends with.
    pub peers: Vec<PeerAgent>,
    pub probe_pods: Vec<ProbePod>,
    /// Nodes under migration, which this agent probes steadily on both
    /// overlays: the Nodes annotated `crossover.io/migrating=true`, or the
    /// shape file's `migrating`.
    pub focus: BTreeSet<String>,
    /// How the shape was derived (Kubernetes only).
    pub derived: Option<Derived>,
    /// The newest derived shape, when the kernel refused it; the previous
    /// one stays in force.
    pub rejected: Option<String>,
}

impl View {
    /// From a config file: every other node of the shape runs an agent at
    /// its underlay address.
    pub fn from_shape(shape: ClusterShape) -> Self {
        let peers = shape
            .nodes
            .iter()
            .filter(|n| Some(&n.name) != shape.local_node.as_ref())
            .map(|n| PeerAgent {
                node: n.name.clone(),
                addr: n.underlay,
                ready: true,
            })
            .collect();
        let index = IpIndex::build(&shape, [], []);
        View {
            names: names(&shape),
            focus: shape.migrating.iter().cloned().collect(),
            shape,
            index,
            peers,
            probe_pods: Vec::new(),
            derived: None,
            rejected: None,
        }
    }

    pub fn local(&self) -> Option<&Node> {
        self.shape.local()
    }

    /// A peer's name for labels; its address when the shape has no node
    /// with that underlay.
    pub fn node_name(&self, addr: Ipv4Addr) -> String {
        self.names
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string())
    }

    /// True when `addr` is a node's underlay address.
    pub fn is_node(&self, addr: Ipv4Addr) -> bool {
        self.names.contains_key(&addr)
    }

    /// True when `ip` is this node's: one of its addresses or in one of its
    /// pod CIDRs. Decides which connections this node opened.
    pub fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.local().is_some_and(|n| {
            n.underlay == ip
                || n.overlay_addrs.contains(&ip)
                || n.pod_cidrs.iter().any(|c| c.cidr.contains(&ip))
                || self
                    .shape
                    .pods
                    .iter()
                    .any(|p| p.addr == ip && p.node == n.name)
        })
    }
}

fn names(shape: &ClusterShape) -> BTreeMap<Ipv4Addr, String> {
    shape
        .nodes
        .iter()
        .map(|n| (n.underlay, n.name.clone()))
        .collect()
}

/// Waits for the API to settle after a change, so a burst of pod events
/// (a drain) is one rebuild.
const SETTLE: Duration = Duration::from_millis(250);

/// Keeps the view and the kernel's shape current with the cluster until
/// the process ends.
pub async fn follow_cluster(state: Arc<State>, cluster: Arc<Cluster>) {
    let mut changes = cluster.changed();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(SETTLE).await;
        changes.mark_unchanged();
        let state = state.clone();
        let cluster = cluster.clone();
        let rebuilt = tokio::task::spawn_blocking(move || rebuild(&state, &cluster)).await;
        if let Err(err) = rebuilt {
            eprintln!("crossover: rebuilding the cluster view failed: {err}");
        }
    }
}

/// One rebuild: derive, hand the kernel a changed shape, swap the view.
pub fn rebuild(state: &State, cluster: &Cluster) {
    let derived = cluster.derive();
    let current = state.view();
    let mut rejected = None;
    let shape = if derived.shape == current.shape {
        current.shape.clone()
    } else {
        let applied = super::lock(&state.observer).configure(&derived.shape);
        match applied {
            Ok(()) => derived.shape.clone(),
            Err(err) => {
                state.count(&err);
                rejected = Some(err.to_string());
                current.shape.clone()
            }
        }
    };
    let view = View {
        names: names(&shape),
        index: cluster.index(&shape),
        peers: cluster.peer_agents(),
        probe_pods: cluster.probe_pods(),
        focus: cluster.migrating_nodes(),
        shape,
        derived: Some(derived),
        rejected,
    };
    state.set_view(view);
}

/// What `/api/v1/status` says about the view.
#[derive(Serialize)]
pub struct ViewStatus<'a> {
    /// Without its pod list, which grows with the cluster: `pod_addrs`
    /// counts it.
    pub shape: ClusterShape,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derived: Option<DerivedStatus<'a>>,
    /// The shape's pods, and how many of them the kernel's address table
    /// holds.
    pub pod_addrs: PodAddrStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<&'a str>,
    pub peers: &'a [PeerAgent],
    pub probe_pods: &'a [ProbePod],
    /// Nodes under migration (the probe mesh's focus).
    pub focus: &'a BTreeSet<String>,
    pub indexed_addresses: usize,
}

/// How the shape was derived, as `/api/v1/status` shows it: the derived
/// shape (the one in force, or the one rejected) without its pod list.
#[derive(Serialize)]
pub struct DerivedStatus<'a> {
    pub shape: ClusterShape,
    pub sources: &'a [crate::cluster::derive::Source],
    pub warnings: &'a [String],
}

#[derive(Serialize)]
pub struct PodAddrStatus {
    /// Pods the shape lists (from the Pods, or the shape file).
    pub listed: usize,
    #[serde(flatten)]
    pub table: crate::datapath::PodAddrStats,
}

impl View {
    pub fn status(&self, pods: crate::datapath::PodAddrStats) -> ViewStatus<'_> {
        ViewStatus {
            shape: self.shape.without_pods(),
            derived: self.derived.as_ref().map(|d| DerivedStatus {
                shape: d.shape.without_pods(),
                sources: &d.sources,
                warnings: &d.warnings,
            }),
            pod_addrs: PodAddrStatus {
                listed: self.shape.pods.len(),
                table: pods,
            },
            rejected: self.rejected.as_deref(),
            peers: &self.peers,
            probe_pods: &self.probe_pods,
            focus: &self.focus,
            indexed_addresses: self.index.len(),
        }
    }
}
