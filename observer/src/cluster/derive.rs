//! The cluster shape, derived from what the API says: the legacy network
//! from the Nodes (podCIDRs, Flannel or Calico annotations), the Cilium
//! network from `cilium-config` and the CiliumNodes, every node's underlay
//! and overlay addresses. Every value says where it came from, and every
//! value can be overridden by a flag, because a cluster's truth sometimes
//! lives where the API cannot see it (a kube-controller-manager flag,
//! Flannel's net-conf).
use std::{collections::BTreeMap, net::Ipv4Addr, str::FromStr};

use clap::Args;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ConfigMap, Node as KubeNode, Pod};
use kube::api::DynamicObject;
use serde::Serialize;

use super::{calico, cilium::CiliumNode};
use crate::shape::{ClusterShape, Encapsulation, Network, Node, NodePodCidr, PodAddr, Role};

pub const FLANNEL_BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const FLANNEL_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const CALICO_VXLAN_ADDR: &str = "projectcalico.org/IPv4VXLANTunnelAddr";
/// `tunl0`'s address on a Calico node in IP-in-IP mode.
pub const CALICO_IPIP_ADDR: &str = "projectcalico.org/IPv4IPIPTunnelAddr";
pub const CILIUM_HOST_ANNOTATION: &str = "network.cilium.io/ipv4-cilium-host";
/// Flannel's VXLAN port on Linux; its annotations do not carry it.
pub const FLANNEL_VXLAN_PORT: u16 = 8472;
pub const CALICO_VXLAN_PORT: u16 = 4789;
/// A Node's `spec.providerID` on EC2: `aws:///ZONE/INSTANCE`.
pub const AWS_PROVIDER: &str = "aws://";

/// Flags that win over what the cluster says.
#[derive(Clone, Debug, Default, Args)]
pub struct ShapeOverrides {
    /// Legacy pod CIDR (repeatable). Default: the Nodes' spec.podCIDRs.
    #[arg(long = "legacy-cidr")]
    pub legacy_cidrs: Vec<Ipv4Net>,
    /// Legacy overlay: vxlan:PORT, geneve:PORT, ipip or native. Default:
    /// from Flannel or Calico node annotations.
    #[arg(long, value_parser = parse_encapsulation)]
    pub legacy_encapsulation: Option<Encapsulation>,
    /// Cilium pod CIDR (repeatable). Default: cilium-config's
    /// cluster-pool-ipv4-cidr, else the CiliumNodes' podCIDRs.
    #[arg(long = "cilium-cidr")]
    pub cilium_cidrs: Vec<Ipv4Net>,
    /// Cilium overlay: vxlan:PORT, geneve:PORT, ipip or native. Default: from
    /// cilium-config's routing-mode, tunnel-protocol and tunnel-port.
    #[arg(long, value_parser = parse_encapsulation)]
    pub cilium_encapsulation: Option<Encapsulation>,
}

pub fn parse_encapsulation(text: &str) -> Result<Encapsulation, String> {
    match text {
        "native" => return Ok(Encapsulation::Native),
        "ipip" => return Ok(Encapsulation::Ipip),
        _ => {}
    }
    let (kind, port) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected vxlan:PORT, geneve:PORT, ipip or native"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?}: {port:?} is not a UDP port (1-65535)"))?;
    match kind {
        "vxlan" => Ok(Encapsulation::Vxlan { port }),
        "geneve" => Ok(Encapsulation::Geneve { port }),
        _ => Err(format!(
            "{text:?}: unknown encapsulation {kind:?} (vxlan, geneve, ipip, native)"
        )),
    }
}

/// Where a derived value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Source {
    pub field: &'static str,
    pub from: String,
}

/// What the API holds, as far as the shape is concerned.
#[derive(Default)]
pub struct ClusterObjects<'a> {
    pub nodes: Vec<&'a KubeNode>,
    pub cilium_nodes: Vec<&'a CiliumNode>,
    pub cilium_config: Option<&'a ConfigMap>,
    /// Calico's IPPools and BlockAffinities (`calico.rs`), when Calico's
    /// CRDs exist.
    pub ip_pools: Vec<&'a DynamicObject>,
    pub block_affinities: Vec<&'a DynamicObject>,
    /// Pods, for the addresses of a network without ranges (AWS VPC CNI);
    /// none needed otherwise.
    pub pods: Vec<&'a Pod>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Derived {
    pub shape: ClusterShape,
    pub sources: Vec<Source>,
    /// Values that fell back to a default, or objects that were skipped.
    pub warnings: Vec<String>,
}

pub fn derive(objects: &ClusterObjects, local_node: &str, overrides: &ShapeOverrides) -> Derived {
    let mut out = Derived {
        shape: ClusterShape {
            local_node: Some(local_node.to_string()),
            ..ClusterShape::default()
        },
        sources: Vec::new(),
        warnings: Vec::new(),
    };
    let config = cilium_config(objects.cilium_config);
    let pools = calico_pools(objects, overrides, &mut out);
    let blocks = calico_blocks(objects, !pools.is_empty(), &mut out);
    let legacy = match pools.is_empty() {
        true => vec![legacy_network(objects, overrides, &mut out)],
        false => pools,
    };
    let cilium = cilium_network(objects, &config, overrides, &mut out);
    let legacy_is_flannel = matches!(legacy[0].encapsulation, Encapsulation::Vxlan { port } if port == FLANNEL_VXLAN_PORT)
        && objects
            .nodes
            .iter()
            .any(|n| annotation(n, FLANNEL_BACKEND_TYPE).is_some());
    // The first legacy network, then Cilium's, then any other pools.
    let mut legacy = legacy.into_iter();
    out.shape.networks = legacy.next().into_iter().chain([cilium]).collect();
    out.shape.networks.extend(legacy);
    out.shape.extra_vxlan_ports = BTreeMap::new();

    let by_name: BTreeMap<&str, &CiliumNode> = objects
        .cilium_nodes
        .iter()
        .filter_map(|c| Some((c.metadata.name.as_deref()?, *c)))
        .collect();
    for node in &objects.nodes {
        if let Some(node) = shape_node(
            node,
            by_name.get(name(node)).copied(),
            legacy_is_flannel,
            blocks
                .as_ref()
                .map(|b| b.get(name(node)).cloned().unwrap_or_default()),
            &mut out.warnings,
        ) {
            out.shape.nodes.push(node);
        }
    }
    out.shape.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    // One bad Node must not keep every other change out of the kernel: a
    // node whose addresses clash with an earlier one's is left out, named.
    let conflicts = out.shape.node_conflicts();
    if !conflicts.is_empty() {
        let dropped: std::collections::BTreeSet<usize> =
            conflicts.iter().map(|(i, _)| *i).collect();
        for (_, problem) in conflicts {
            out.warnings
                .push(format!("{problem}; that node is left out"));
        }
        let mut i = 0;
        out.shape.nodes.retain(|_| {
            i += 1;
            !dropped.contains(&(i - 1))
        });
    }
    out.shape.pods = rangeless_pods(&out.shape, &objects.pods);
    if let Some(role) = out.shape.rangeless_role() {
        out.source(
            "pods",
            format!(
                "Pods' status.podIP and spec.nodeName ({role:?} network without ranges: a /32 each)"
            ),
        );
    }
    if !out.shape.nodes.iter().any(|n| n.name == local_node) {
        out.warnings.push(format!(
            "this node {local_node:?} is not among the Nodes with an InternalIP; peers cannot be named from here"
        ));
        out.shape.local_node = None;
    }
    out
}

fn legacy_network(
    objects: &ClusterObjects,
    overrides: &ShapeOverrides,
    out: &mut Derived,
) -> Network {
    let cidrs = if overrides.legacy_cidrs.is_empty() {
        let shares: Vec<Ipv4Net> = objects
            .nodes
            .iter()
            .flat_map(|n| node_pod_cidrs(n))
            .collect();
        out.source("legacy.cidrs", "Nodes' spec.podCIDRs");
        Ipv4Net::aggregate(&shares)
    } else {
        out.source("legacy.cidrs", "--legacy-cidr");
        overrides.legacy_cidrs.clone()
    };
    let encapsulation = if let Some(e) = overrides.legacy_encapsulation {
        out.source("legacy.encapsulation", "--legacy-encapsulation");
        e
    } else if let Some(kind) = objects
        .nodes
        .iter()
        .find_map(|n| annotation(n, FLANNEL_BACKEND_TYPE))
    {
        out.source(
            "legacy.encapsulation",
            format!("{FLANNEL_BACKEND_TYPE}={kind}"),
        );
        match kind {
            "vxlan" => Encapsulation::Vxlan {
                port: FLANNEL_VXLAN_PORT,
            },
            "host-gw" => Encapsulation::Native,
            other => {
                out.warnings.push(format!(
                    "Flannel backend {other:?} is not VXLAN or host-gw; assuming VXLAN {FLANNEL_VXLAN_PORT}: set --legacy-encapsulation"
                ));
                Encapsulation::Vxlan {
                    port: FLANNEL_VXLAN_PORT,
                }
            }
        }
    } else if objects
        .nodes
        .iter()
        .any(|n| annotation(n, CALICO_VXLAN_ADDR).is_some())
    {
        out.source("legacy.encapsulation", CALICO_VXLAN_ADDR);
        Encapsulation::Vxlan {
            port: CALICO_VXLAN_PORT,
        }
    } else if objects
        .nodes
        .iter()
        .any(|n| annotation(n, CALICO_IPIP_ADDR).is_some())
    {
        out.source("legacy.encapsulation", CALICO_IPIP_ADDR);
        Encapsulation::Ipip
    } else if cidrs.is_empty()
        && !objects.nodes.is_empty()
        && objects.nodes.iter().all(|n| on_aws(n))
    {
        // No node range, no Flannel or Calico annotation, EC2 instances:
        // the AWS VPC CNI, pods routed natively in the VPC's subnets.
        out.source(
            "legacy.encapsulation",
            format!("Nodes' spec.providerID {AWS_PROVIDER} without spec.podCIDRs (AWS VPC CNI)"),
        );
        Encapsulation::Native
    } else {
        out.warnings.push(format!(
            "legacy overlay not recognised from node annotations; assuming Flannel VXLAN {FLANNEL_VXLAN_PORT}: set --legacy-encapsulation"
        ));
        out.source("legacy.encapsulation", "default");
        Encapsulation::Vxlan {
            port: FLANNEL_VXLAN_PORT,
        }
    };
    // A routed network needs no ranges: its pods are listed one by one.
    if cidrs.is_empty() && encapsulation != Encapsulation::Native {
        out.warnings
            .push("no Node has spec.podCIDRs: set --legacy-cidr".into());
    }
    Network {
        role: Role::Legacy,
        cidrs,
        encapsulation,
        cross_subnet: false,
    }
}

/// One legacy network per enabled IPv4 Calico IPPool, its range and
/// encapsulation (CrossSubnet included) from the pool; empty when there
/// are none, or when flags name the legacy network (they win).
fn calico_pools(
    objects: &ClusterObjects,
    overrides: &ShapeOverrides,
    out: &mut Derived,
) -> Vec<Network> {
    if objects.ip_pools.is_empty()
        || !overrides.legacy_cidrs.is_empty()
        || overrides.legacy_encapsulation.is_some()
    {
        return vec![];
    }
    let pools = calico::pools(&objects.ip_pools, CALICO_VXLAN_PORT);
    out.warnings.extend(
        pools
            .errors
            .into_iter()
            .map(|e| format!("{e}; that pool is left out")),
    );
    if !pools.pools.is_empty() {
        let names: Vec<&str> = pools.pools.iter().map(|p| p.name.as_str()).collect();
        let mut from = format!("IPPools' spec.cidr ({})", names.join(", "));
        if pools.skipped > 0 {
            from += &format!("; {} disabled or IPv6 left out", pools.skipped);
        }
        out.source("legacy.cidrs", from);
    }
    pools
        .pools
        .into_iter()
        .map(|pool| {
            out.source("legacy.encapsulation", pool.source);
            Network {
                role: Role::Legacy,
                cidrs: vec![pool.cidr],
                encapsulation: pool.encapsulation,
                cross_subnet: pool.cross_subnet,
            }
        })
        .collect()
}

/// Each node's blocks from the BlockAffinities, when the legacy network
/// is Calico's pools (`None` otherwise: the Nodes' spec.podCIDRs serve).
fn calico_blocks(
    objects: &ClusterObjects,
    from_pools: bool,
    out: &mut Derived,
) -> Option<BTreeMap<String, Vec<Ipv4Net>>> {
    if !from_pools {
        return None;
    }
    let blocks = calico::blocks(&objects.block_affinities);
    out.warnings.extend(
        blocks
            .errors
            .into_iter()
            .map(|e| format!("{e}; that block is left out")),
    );
    let mut from = "BlockAffinities' spec.cidr by spec.node (confirmed)".to_string();
    if blocks.skipped > 0 {
        from += &format!("; {} pending, deleted or IPv6 left out", blocks.skipped);
    }
    out.source("nodes[].pod_cidrs (legacy)", from);
    Some(blocks.by_node)
}

/// `cilium-config`'s data, or nothing when Cilium is not installed yet.
fn cilium_config(config: Option<&ConfigMap>) -> BTreeMap<String, String> {
    config.and_then(|c| c.data.clone()).unwrap_or_default()
}

fn cilium_network(
    objects: &ClusterObjects,
    config: &BTreeMap<String, String>,
    overrides: &ShapeOverrides,
    out: &mut Derived,
) -> Network {
    let cidrs = if !overrides.cilium_cidrs.is_empty() {
        out.source("cilium.cidrs", "--cilium-cidr");
        overrides.cilium_cidrs.clone()
    } else if let Some(pool) = config.get("cluster-pool-ipv4-cidr") {
        let (cidrs, bad) = parse_cidrs(pool.split([' ', ',']));
        for b in bad {
            out.warnings.push(format!(
                "cilium-config cluster-pool-ipv4-cidr: {b:?} is not an IPv4 CIDR"
            ));
        }
        out.source("cilium.cidrs", "cilium-config cluster-pool-ipv4-cidr");
        cidrs
    } else {
        let shares: Vec<Ipv4Net> = objects
            .cilium_nodes
            .iter()
            .flat_map(|c| parse_cidrs(&c.spec.ipam.pod_cidrs).0)
            .collect();
        out.source("cilium.cidrs", "CiliumNodes' spec.ipam.podCIDRs");
        Ipv4Net::aggregate(&shares)
    };
    let encapsulation = match overrides.cilium_encapsulation {
        Some(e) => {
            out.source("cilium.encapsulation", "--cilium-encapsulation");
            e
        }
        None => cilium_encapsulation(config, out),
    };
    Network {
        role: Role::Cilium,
        cidrs,
        encapsulation,
        cross_subnet: false,
    }
}

/// Cilium's own rules: `routing-mode: native` means no tunnel; the protocol
/// is `tunnel-protocol` (or the older `tunnel` key), VXLAN by default; the
/// port is `tunnel-port`, else the protocol's standard port.
fn cilium_encapsulation(config: &BTreeMap<String, String>, out: &mut Derived) -> Encapsulation {
    if config.is_empty() {
        out.warnings.push("cilium-config not found; assuming the migration's VXLAN 8473: set --cilium-encapsulation".into());
        out.source("cilium.encapsulation", "default (migration guide)");
        return Encapsulation::Vxlan { port: 8473 };
    }
    let legacy_key = config.get("tunnel").map(String::as_str);
    if config.get("routing-mode").map(String::as_str) == Some("native")
        || legacy_key == Some("disabled")
    {
        out.source("cilium.encapsulation", "cilium-config routing-mode");
        return Encapsulation::Native;
    }
    let protocol = config
        .get("tunnel-protocol")
        .map(String::as_str)
        .or(legacy_key)
        .unwrap_or("vxlan");
    let port = match config.get("tunnel-port").map(|p| p.parse::<u16>()) {
        Some(Ok(port)) if port != 0 => Some(port),
        Some(_) => {
            out.warnings.push(format!(
                "cilium-config tunnel-port {:?} is not a UDP port; using the protocol's default",
                config["tunnel-port"]
            ));
            None
        }
        None => None,
    };
    out.source(
        "cilium.encapsulation",
        "cilium-config tunnel-protocol, tunnel-port",
    );
    match protocol {
        "geneve" => Encapsulation::Geneve {
            port: port.unwrap_or(6081),
        },
        "vxlan" => Encapsulation::Vxlan {
            port: port.unwrap_or(8472),
        },
        other => {
            out.warnings.push(format!(
                "cilium-config tunnel-protocol {other:?} is unknown; assuming VXLAN"
            ));
            Encapsulation::Vxlan {
                port: port.unwrap_or(8472),
            }
        }
    }
}

/// `calico_blocks`: the node's Calico blocks when the legacy network is
/// Calico's (they, not the Node's spec.podCIDRs, are where its pods are).
fn shape_node(
    node: &KubeNode,
    cilium: Option<&CiliumNode>,
    flannel: bool,
    calico_blocks: Option<Vec<Ipv4Net>>,
    warnings: &mut Vec<String>,
) -> Option<Node> {
    let name = name(node).to_string();
    let underlay = internal_ip(node)
        .or_else(|| annotation(node, FLANNEL_PUBLIC_IP).and_then(|a| a.parse().ok()));
    let Some(underlay) = underlay else {
        warnings.push(format!("Node {name:?} has no IPv4 InternalIP: left out"));
        return None;
    };
    let legacy_shares = calico_blocks.unwrap_or_else(|| node_pod_cidrs(node));
    let mut overlay_addrs = Vec::new();
    // flannel.1 holds the network address of the node's share.
    if flannel && let Some(share) = legacy_shares.first() {
        overlay_addrs.push(share.network());
    }
    // Calico SNATs to its tunnel device's address: vxlan.calico's or tunl0's.
    for key in [CALICO_VXLAN_ADDR, CALICO_IPIP_ADDR] {
        if let Some(addr) = annotation(node, key).and_then(|a| a.parse().ok()) {
            overlay_addrs.push(addr);
        }
    }
    let cilium_host = cilium
        .and_then(|c| c.internal_ip())
        .or_else(|| annotation(node, CILIUM_HOST_ANNOTATION))
        .and_then(|a| a.parse::<Ipv4Addr>().ok());
    overlay_addrs.extend(cilium_host);
    let cilium_shares = cilium
        .map(|c| parse_cidrs(&c.spec.ipam.pod_cidrs).0)
        .unwrap_or_default();
    let pod_cidrs = legacy_shares
        .into_iter()
        .map(|cidr| NodePodCidr {
            role: Role::Legacy,
            cidr,
        })
        .chain(cilium_shares.into_iter().map(|cidr| NodePodCidr {
            role: Role::Cilium,
            cidr,
        }))
        .collect();
    Some(Node {
        name,
        underlay,
        overlay_addrs,
        pod_cidrs,
    })
}

/// The node is an EC2 instance.
fn on_aws(node: &KubeNode) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .is_some_and(|p| p.starts_with(AWS_PROVIDER))
}

/// With a routed network without ranges (AWS VPC CNI), every pod that
/// holds an address on a node of the shape, outside every range and off
/// the nodes' own addresses: a /32 each, in address order (one entry per
/// address: the first pod listed keeps a reused one). O((pods + ranges)
/// log ranges).
fn rangeless_pods(shape: &ClusterShape, pods: &[&Pod]) -> Vec<PodAddr> {
    let Some(role) = shape.rangeless_role() else {
        return Vec::new();
    };
    let nodes: std::collections::BTreeSet<&str> =
        shape.nodes.iter().map(|n| n.name.as_str()).collect();
    let node_addrs: std::collections::BTreeSet<Ipv4Addr> = shape
        .nodes
        .iter()
        .flat_map(|n| std::iter::once(n.underlay).chain(n.overlay_addrs.iter().copied()))
        .collect();
    // Every range, merged into disjoint ones in address order: one binary
    // search a pod, never a scan of the nodes.
    let all: Vec<Ipv4Net> = shape
        .networks
        .iter()
        .flat_map(|n| n.cidrs.iter().copied())
        .chain(
            shape
                .nodes
                .iter()
                .flat_map(|n| n.pod_cidrs.iter().map(|c| c.cidr)),
        )
        .collect();
    let mut ranges = Ipv4Net::aggregate(&all);
    ranges.sort();
    let in_range = |ip: &Ipv4Addr| {
        let after = ranges.partition_point(|r| r.network() <= *ip);
        after > 0 && ranges[after - 1].contains(ip)
    };
    let mut out: BTreeMap<Ipv4Addr, PodAddr> = BTreeMap::new();
    for pod in pods {
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if spec.host_network == Some(true) || matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(node) = spec.node_name.as_deref().filter(|n| nodes.contains(n)) else {
            continue;
        };
        for addr in super::index::pod_ips(pod) {
            if node_addrs.contains(&addr) || in_range(&addr) {
                continue;
            }
            out.entry(addr).or_insert_with(|| PodAddr {
                addr,
                node: node.to_string(),
                role,
            });
        }
    }
    out.into_values().collect()
}

pub fn name(node: &KubeNode) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

pub fn annotation<'a>(node: &'a KubeNode, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The node's IPv4 InternalIP, the outer address of its tunnels.
pub fn internal_ip(node: &KubeNode) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// The node's IPv4 pod CIDRs (`podCIDRs`, or the older single `podCIDR`).
pub fn node_pod_cidrs(node: &KubeNode) -> Vec<Ipv4Net> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let listed = spec.pod_cidrs.iter().flatten();
    parse_cidrs(listed.chain(spec.pod_cidr.iter()))
        .0
        .into_iter()
        .fold(Vec::new(), |mut v, c| {
            if !v.contains(&c) {
                v.push(c);
            }
            v
        })
}

/// IPv4 CIDRs, and what did not parse as one. IPv6 entries of dual-stack
/// clusters are neither: crossover's datapath is IPv4.
fn parse_cidrs<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> (Vec<Ipv4Net>, Vec<String>) {
    let mut cidrs = Vec::new();
    let mut bad = Vec::new();
    for item in items {
        let item = item.as_ref().trim();
        if item.is_empty() || item.contains(':') {
            continue;
        }
        match Ipv4Net::from_str(item) {
            Ok(c) => cidrs.push(c.trunc()),
            Err(_) => bad.push(item.to_string()),
        }
    }
    (cidrs, bad)
}

impl Derived {
    fn source(&mut self, field: &'static str, from: impl Into<String>) {
        self.sources.push(Source {
            field,
            from: from.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    use super::*;

    fn node(name: &str, ip: &str, pod_cidr: &str) -> KubeNode {
        KubeNode {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(pod_cidr.into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_node_clashing_with_another_is_left_out_named_and_the_rest_applied() {
        let nodes = [
            node("a", "192.168.1.1", "10.244.0.0/24"),
            node("b", "192.168.1.1", "10.244.1.0/24"),
            node("c", "192.168.1.3", "10.244.0.0/25"),
            node("d", "192.168.1.4", "10.244.3.0/24"),
        ];
        let objects = ClusterObjects {
            nodes: nodes.iter().collect(),
            ..ClusterObjects::default()
        };
        let derived = derive(&objects, "a", &ShapeOverrides::default());
        let names: Vec<&str> = derived
            .shape
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(names, vec!["a", "d"]);
        let left_out: Vec<&String> = derived
            .warnings
            .iter()
            .filter(|w| w.ends_with("that node is left out"))
            .collect();
        assert_eq!(left_out.len(), 2, "{:#?}", derived.warnings);
        assert!(left_out[0].contains("nodes[1] (b) and nodes[0] (a) have the same underlay"));
        assert!(left_out[1].contains("(c, 10.244.0.0/25) overlaps"));
        derived.shape.validate().unwrap();
    }

    /// A Calico cluster: the legacy network from its IPPool (VXLAN
    /// CrossSubnet), each node's share from its BlockAffinities (not the
    /// Node's spec.podCIDR, which Calico's IPAM ignores), each value's
    /// source named; a bad block is left out, named, and the rest applies.
    #[test]
    fn calico_pools_and_blocks_make_the_legacy_network_and_the_nodes_shares() {
        let nodes = [
            node("a", "192.168.1.1", "10.96.0.0/24"),
            node("b", "192.168.2.1", "10.96.1.0/24"),
        ];
        let pool = super::calico::ip_pool_resource();
        let block = super::calico::block_affinity_resource();
        let object = |r: &kube::api::ApiResource, name: &str, spec: serde_json::Value| {
            DynamicObject::new(name, r).data(serde_json::json!({ "spec": spec }))
        };
        let pools = [object(
            &pool,
            "default-ipv4-ippool",
            serde_json::json!({"cidr": "10.244.0.0/16", "vxlanMode": "CrossSubnet"}),
        )];
        let blocks = [
            object(
                &block,
                "a-1",
                serde_json::json!({"cidr": "10.244.0.0/26", "node": "a", "state": "confirmed"}),
            ),
            object(
                &block,
                "b-1",
                serde_json::json!({"cidr": "10.244.0.64/26", "node": "b", "state": "confirmed"}),
            ),
            object(
                &block,
                "b-bad",
                serde_json::json!({"cidr": "10.244.300.0/26", "node": "b"}),
            ),
        ];
        let objects = ClusterObjects {
            nodes: nodes.iter().collect(),
            ip_pools: pools.iter().collect(),
            block_affinities: blocks.iter().collect(),
            ..ClusterObjects::default()
        };
        let derived = derive(&objects, "a", &ShapeOverrides::default());
        let legacy = &derived.shape.networks[0];
        assert_eq!(
            (
                legacy.role,
                legacy.cidrs.clone(),
                legacy.encapsulation,
                legacy.cross_subnet
            ),
            (
                Role::Legacy,
                vec!["10.244.0.0/16".parse().unwrap()],
                Encapsulation::Vxlan { port: 4789 },
                true
            )
        );
        assert_eq!(derived.shape.networks[1].role, Role::Cilium);
        let shares: Vec<(String, Vec<String>)> = derived
            .shape
            .nodes
            .iter()
            .map(|n| {
                let cidrs = n.pod_cidrs.iter().map(|c| c.cidr.to_string()).collect();
                (n.name.clone(), cidrs)
            })
            .collect();
        assert_eq!(
            shares,
            [
                ("a".to_string(), vec!["10.244.0.0/26".to_string()]),
                ("b".to_string(), vec!["10.244.0.64/26".to_string()]),
            ]
        );
        let from = |field: &str| {
            derived
                .sources
                .iter()
                .filter(|s| s.field == field)
                .map(|s| s.from.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            from("legacy.encapsulation"),
            ["IPPool default-ipv4-ippool spec.vxlanMode=CrossSubnet"]
        );
        assert_eq!(
            from("legacy.cidrs"),
            ["IPPools' spec.cidr (default-ipv4-ippool)"]
        );
        assert!(
            derived.warnings.iter().any(|w| w
                == "BlockAffinity \"b-bad\" spec.cidr: \"10.244.300.0/26\" is not an IPv4 CIDR; that block is left out"),
            "{:?}",
            derived.warnings
        );
        derived.shape.validate().unwrap();
        // Flags still win: --legacy-encapsulation leaves the pools unread.
        let flagged = derive(
            &objects,
            "a",
            &ShapeOverrides {
                legacy_encapsulation: Some(Encapsulation::Ipip),
                ..ShapeOverrides::default()
            },
        );
        assert_eq!(flagged.shape.networks[0].encapsulation, Encapsulation::Ipip);
        assert!(!flagged.shape.networks[0].cross_subnet);
    }

    fn ec2(name: &str, ip: &str) -> KubeNode {
        let mut n = node(name, ip, "");
        let spec = n.spec.as_mut().unwrap();
        spec.pod_cidr = None;
        spec.provider_id = Some(format!("aws:///eu-west-1a/i-{name}"));
        n
    }

    fn pod(node: &str, ip: &str, host_network: bool, phase: &str) -> Pod {
        use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
        Pod {
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                host_network: Some(host_network),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn aws_nodes_make_a_native_legacy_network_of_their_pods() {
        let nodes = [ec2("a", "172.31.0.10"), ec2("b", "172.31.0.11")];
        let pods: Vec<Pod> = [
            ("a", "172.31.5.23", false, "Running"),
            ("b", "172.31.9.40", false, "Pending"),
            // The same address again (a pod gone, its successor there):
            // one entry, the first one's.
            ("b", "172.31.5.23", false, "Running"),
            // Host network, finished, on no known node, a node's own
            // address: none of them a pod address of the network.
            ("a", "172.31.0.10", true, "Running"),
            ("a", "172.31.5.99", false, "Succeeded"),
            ("ghost", "172.31.5.77", false, "Running"),
            ("b", "172.31.0.10", false, "Running"),
            // Cilium's: its range covers it.
            ("a", "10.245.1.5", false, "Running"),
        ]
        .into_iter()
        .map(|(node, ip, host, phase)| pod(node, ip, host, phase))
        .collect();
        let objects = ClusterObjects {
            nodes: nodes.iter().collect(),
            pods: pods.iter().collect(),
            ..ClusterObjects::default()
        };
        let overrides = ShapeOverrides {
            cilium_cidrs: vec!["10.245.0.0/16".parse().unwrap()],
            ..ShapeOverrides::default()
        };
        let derived = derive(&objects, "a", &overrides);
        let legacy = &derived.shape.networks[0];
        assert_eq!(
            (legacy.encapsulation, legacy.cidrs.len()),
            (Encapsulation::Native, 0)
        );
        assert!(
            derived
                .sources
                .iter()
                .any(|s| s.field == "legacy.encapsulation" && s.from.contains("providerID")),
            "{:#?}",
            derived.sources
        );
        assert!(
            !derived.warnings.iter().any(|w| w.contains("podCIDRs")),
            "no range is expected: {:#?}",
            derived.warnings
        );
        let listed: Vec<(String, &str)> = derived
            .shape
            .pods
            .iter()
            .map(|p| (p.addr.to_string(), p.node.as_str()))
            .collect();
        assert_eq!(
            listed,
            vec![("172.31.5.23".into(), "a"), ("172.31.9.40".into(), "b")]
        );
        derived.shape.validate().unwrap();

        // With ranges (Flannel's podCIDRs), no pod is listed.
        let flannel = [node("a", "172.31.0.10", "10.244.0.0/24")];
        let objects = ClusterObjects {
            nodes: flannel.iter().collect(),
            pods: pods.iter().collect(),
            ..ClusterObjects::default()
        };
        assert!(
            derive(&objects, "a", &ShapeOverrides::default())
                .shape
                .pods
                .is_empty()
        );
    }
}
