//! Every IP the cluster knows, and what it is: a pod, a node's underlay or
//! overlay address, a service, or outside. Flows name addresses; people
//! and the migration driver want pods and nodes.
use std::{collections::HashMap, net::Ipv4Addr};

use k8s_openapi::api::core::v1::{Pod, Service};
use serde::Serialize;

use crate::shape::{ClusterShape, Role};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Identity {
    Pod {
        namespace: String,
        name: String,
        node: String,
        /// `Kind/name` of the controller, e.g. `DaemonSet/goldpinger`.
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// Which CNI gave the address; none when it is in neither range.
        #[serde(skip_serializing_if = "Option::is_none")]
        network: Option<Role>,
    },
    NodeUnderlay {
        node: String,
    },
    NodeOverlay {
        node: String,
        /// `flannel.1` (legacy) or `cilium_host` (cilium).
        overlay: Role,
    },
    Service {
        namespace: String,
        name: String,
    },
    Outside,
}

#[derive(Default)]
pub struct IpIndex {
    by_ip: HashMap<Ipv4Addr, Identity>,
}

impl IpIndex {
    /// Nodes first, so a host-network pod (which shares its node's address)
    /// never hides the node.
    pub fn build<'a>(
        shape: &ClusterShape,
        pods: impl IntoIterator<Item = &'a Pod>,
        services: impl IntoIterator<Item = &'a Service>,
    ) -> Self {
        let mut by_ip = HashMap::new();
        for node in &shape.nodes {
            by_ip.insert(
                node.underlay,
                Identity::NodeUnderlay {
                    node: node.name.clone(),
                },
            );
            for addr in &node.overlay_addrs {
                let overlay = shape
                    .networks
                    .iter()
                    .find(|n| n.cidrs.iter().any(|c| c.contains(addr)))
                    .map_or(Role::Legacy, |n| n.role);
                by_ip.insert(
                    *addr,
                    Identity::NodeOverlay {
                        node: node.name.clone(),
                        overlay,
                    },
                );
            }
        }
        for pod in pods {
            let Some(identity) = pod_identity(shape, pod) else {
                continue;
            };
            for ip in pod_ips(pod) {
                by_ip.entry(ip).or_insert_with(|| identity.clone());
            }
        }
        for service in services {
            let meta = &service.metadata;
            let spec = service.spec.as_ref();
            let ips = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
            for ip in ips.iter().filter_map(|i| i.parse().ok()) {
                by_ip.entry(ip).or_insert_with(|| Identity::Service {
                    namespace: meta.namespace.clone().unwrap_or_default(),
                    name: meta.name.clone().unwrap_or_default(),
                });
            }
        }
        IpIndex { by_ip }
    }

    pub fn lookup(&self, ip: Ipv4Addr) -> Identity {
        self.by_ip.get(&ip).cloned().unwrap_or(Identity::Outside)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

/// A pod that holds its addresses: not host-network, not finished (a
/// finished pod's IP is free for the next one).
fn pod_identity(shape: &ClusterShape, pod: &Pod) -> Option<Identity> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = pod_ips(pod).next()?;
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{}/{}", o.kind, o.name));
    let network = shape
        .networks
        .iter()
        .find(|n| n.cidrs.iter().any(|c| c.contains(&ip)))
        .map(|n| n.role)
        // Outside every range: the network without ranges (AWS VPC CNI).
        .or_else(|| shape.rangeless_role());
    Some(Identity::Pod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        node: spec.node_name.clone().unwrap_or_default(),
        owner,
        network,
    })
}

/// The pod's IPv4 addresses (`podIPs`, or the older single `podIP`).
pub fn pod_ips(pod: &Pod) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let status = pod.status.as_ref();
    let listed = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|p| p.ip.as_str());
    let single = status.and_then(|s| s.pod_ip.as_deref());
    listed.chain(single).filter_map(|ip| ip.parse().ok())
}
