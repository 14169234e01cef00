//! The cluster's shape as the kernel needs it: which address ranges are
//! legacy or Cilium pods, which UDP ports carry which overlay, and where the
//! nodes are. Written as JSON by hand (lab, no Kubernetes) or derived from
//! the API by the agent.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use observer_ebpf::{AddrInfo, AddrKind, Config, Encap, EncapPort, MAX_ENCAP_PORTS, Net, Overlay};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The side of the migration a network or address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Legacy,
    Cilium,
}

impl Role {
    pub fn net(self) -> Net {
        match self {
            Role::Legacy => Net::Legacy,
            Role::Cilium => Net::Cilium,
        }
    }

    pub fn overlay(self) -> Overlay {
        match self {
            Role::Legacy => Overlay::Legacy,
            Role::Cilium => Overlay::Cilium,
        }
    }
}

/// How a network's pods reach other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Encapsulation {
    Vxlan {
        port: u16,
    },
    Geneve {
        port: u16,
    },
    /// IP-in-IP, IPv4 protocol 4 (Calico's `ipipMode`, device `tunl0`).
    Ipip,
    /// Routed, no tunnel (AWS VPC CNI, Calico without encapsulation).
    Native,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub role: Role,
    pub cidrs: Vec<Ipv4Net>,
    pub encapsulation: Encapsulation,
    /// Calico's `CrossSubnet` modes: the tunnel only towards nodes in
    /// another subnet, native routing within one. The same network then
    /// reaches some peers encapsulated and others on the native overlay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cross_subnet: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePodCidr {
    pub role: Role,
    pub cidr: Ipv4Net,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    /// The node's InternalIP, the outer address of its tunnels.
    pub underlay: Ipv4Addr,
    /// Addresses SNAT rewrites cross-overlay sources to: `flannel.1`'s and
    /// `cilium_host`'s.
    #[serde(default)]
    pub overlay_addrs: Vec<Ipv4Addr>,
    /// The node's share of each network, so routed traffic names its peer.
    #[serde(default)]
    pub pod_cidrs: Vec<NodePodCidr>,
}

/// A pod whose address no range of the shape's networks covers (AWS VPC
/// CNI: pods take addresses from the nodes' own subnet), found in ADDRS as
/// a /32 naming the node that hosts it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodAddr {
    pub addr: Ipv4Addr,
    pub node: String,
    pub role: Role,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterShape {
    /// Name of the node this agent runs on; must be one of `nodes`.
    #[serde(default)]
    pub local_node: Option<String>,
    pub networks: Vec<Network>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// VXLAN ports recognised besides those of `networks`, with the overlay
    /// they carry (4789, Calico's VXLAN, by default).
    #[serde(default = "default_extra_vxlan")]
    pub extra_vxlan_ports: BTreeMap<u16, Role>,
    /// Nodes under migration, which every agent probes steadily on both
    /// overlays (the probe mesh's focus). With Kubernetes the agent takes
    /// them from the Nodes' `crossover.io/migrating` annotation instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrating: Vec<String>,
    /// Interface rules tried before the defaults (and after
    /// `--follow-pattern`): `{"pattern": "gke*", "hook": "pod"}`, or
    /// `"hook": "none"` to leave matching interfaces alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<crate::iface::Rule>,
    /// Pods whose addresses no network range covers, each a /32 entry
    /// naming its node (AWS VPC CNI). With Kubernetes the agent lists them
    /// from the Pods; the kernel takes at most `--pod-addr-capacity`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodAddr>,
}

fn default_extra_vxlan() -> BTreeMap<u16, Role> {
    BTreeMap::from([(4789, Role::Legacy)])
}

impl ClusterShape {
    /// The documented migration defaults: Flannel 10.244.0.0/16 on VXLAN
    /// 8472, Cilium 10.245.0.0/16 on VXLAN 8473, Geneve 6081 also Cilium.
    pub fn migration_defaults() -> Self {
        ClusterShape {
            local_node: None,
            networks: vec![
                Network {
                    role: Role::Legacy,
                    cidrs: vec!["10.244.0.0/16".parse().expect("literal")],
                    encapsulation: Encapsulation::Vxlan { port: 8472 },
                    cross_subnet: false,
                },
                Network {
                    role: Role::Cilium,
                    cidrs: vec!["10.245.0.0/16".parse().expect("literal")],
                    encapsulation: Encapsulation::Vxlan { port: 8473 },
                    cross_subnet: false,
                },
                Network {
                    role: Role::Cilium,
                    cidrs: vec![],
                    encapsulation: Encapsulation::Geneve { port: 6081 },
                    cross_subnet: false,
                },
            ],
            nodes: vec![],
            extra_vxlan_ports: default_extra_vxlan(),
            migrating: vec![],
            interfaces: vec![],
            pods: vec![],
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let shape: ClusterShape =
            serde_json::from_str(text).map_err(|e| Error::Shape(format!("invalid JSON: {e}")))?;
        shape.validate()?;
        Ok(shape)
    }

    /// Rejects what the kernel could not represent or what contradicts
    /// itself, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let mut cidrs: Vec<(Ipv4Net, String)> = Vec::new();
        for (i, network) in self.networks.iter().enumerate() {
            for cidr in &network.cidrs {
                let here = format!("networks[{i}].cidrs ({cidr})");
                if let Some(problem) = host_bits(cidr, &here) {
                    return Err(Error::Shape(problem));
                }
                if let Some((_, there)) = cidrs.iter().find(|(c, _)| overlaps(c, cidr)) {
                    return Err(Error::Shape(format!("{here} overlaps {there}")));
                }
                cidrs.push((*cidr, here));
            }
            if let Encapsulation::Vxlan { port: 0 } | Encapsulation::Geneve { port: 0 } =
                network.encapsulation
            {
                return Err(Error::Shape(format!("networks[{i}].encapsulation: port 0")));
            }
            if network.cross_subnet && network.encapsulation == Encapsulation::Native {
                return Err(Error::Shape(format!(
                    "networks[{i}].cross_subnet: a native network has no tunnel to use across subnets"
                )));
            }
        }
        self.encap_ports()?;
        self.ipip_overlay()?;
        self.interface_rules(&[])?;
        let mut names = std::collections::BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.name.is_empty() {
                return Err(Error::Shape(format!("nodes[{i}].name is empty")));
            }
            if !names.insert(node.name.as_str()) {
                return Err(Error::Shape(format!(
                    "nodes[{i}].name {:?} appears twice",
                    node.name
                )));
            }
        }
        self.validate_nodes()?;
        self.validate_pods(&names)?;
        if let Some(local) = &self.local_node
            && !names.contains(local.as_str())
        {
            return Err(Error::Shape(format!(
                "local_node {local:?} is not in nodes"
            )));
        }
        for (i, name) in self.migrating.iter().enumerate() {
            if !names.contains(name.as_str()) {
                return Err(Error::Shape(format!(
                    "migrating[{i}] {name:?} is not in nodes"
                )));
            }
        }
        Ok(())
    }

    /// Each listed pod on a node of the shape, once, on no node's own
    /// address and in no other role's range.
    fn validate_pods(&self, names: &std::collections::BTreeSet<&str>) -> Result<()> {
        let node_addrs: std::collections::BTreeSet<Ipv4Addr> = self
            .nodes
            .iter()
            .flat_map(|n| std::iter::once(n.underlay).chain(n.overlay_addrs.iter().copied()))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let here = format!("pods[{i}] ({}, {})", pod.addr, pod.node);
            if !names.contains(pod.node.as_str()) {
                return Err(Error::Shape(format!("{here}: the node is not in nodes")));
            }
            if !seen.insert(pod.addr) {
                return Err(Error::Shape(format!("{here}: the address is listed twice")));
            }
            if node_addrs.contains(&pod.addr) {
                return Err(Error::Shape(format!("{here}: the address is a node's own")));
            }
            if let Some(network) = self
                .networks
                .iter()
                .find(|n| n.role != pod.role && n.cidrs.iter().any(|c| c.contains(&pod.addr)))
            {
                return Err(Error::Shape(format!(
                    "{here}: a {:?} pod inside a {:?} range",
                    pod.role, network.role
                )));
            }
        }
        Ok(())
    }

    fn validate_nodes(&self) -> Result<()> {
        match self.node_conflicts().into_iter().next() {
            Some((_, problem)) => Err(Error::Shape(problem)),
            None => Ok(()),
        }
    }

    /// What would make an address name two things, node by node: one
    /// underlay on two nodes, an overlay address that is also an underlay,
    /// one pod range on two nodes, a node's range outside its network,
    /// host bits in a range. Each message names both sides; the later node
    /// (in list order) is the one named. O(nodes log nodes).
    pub fn node_conflicts(&self) -> Vec<(usize, String)> {
        let mut problems = Vec::new();
        let mut underlays: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            match underlays.get(&node.underlay) {
                Some(&j) => problems.push((
                    i,
                    format!(
                        "nodes[{i}] ({}) and nodes[{j}] ({}) have the same underlay {}",
                        node.name, self.nodes[j].name, node.underlay
                    ),
                )),
                None => {
                    underlays.insert(node.underlay, i);
                }
            }
        }
        let mut shares = RangeSet::default();
        for (i, node) in self.nodes.iter().enumerate() {
            if problems.iter().any(|(k, _)| *k == i) {
                continue;
            }
            if let Some(problem) = self.node_conflict(i, node, &underlays, &mut shares) {
                problems.push((i, problem));
            }
        }
        problems.sort_by_key(|(i, _)| *i);
        problems
    }

    fn node_conflict(
        &self,
        i: usize,
        node: &Node,
        underlays: &BTreeMap<Ipv4Addr, usize>,
        shares: &mut RangeSet,
    ) -> Option<String> {
        for addr in &node.overlay_addrs {
            if let Some(&j) = underlays.get(addr) {
                return Some(format!(
                    "nodes[{i}].overlay_addrs ({addr}) is nodes[{j}] ({})'s underlay: \
                     SNAT to it could not be told from node-to-node traffic",
                    self.nodes[j].name
                ));
            }
        }
        let mut mine = Vec::new();
        for (k, share) in node.pod_cidrs.iter().enumerate() {
            let here = format!("nodes[{i}].pod_cidrs[{k}] ({}, {})", node.name, share.cidr);
            if let Some(problem) = host_bits(&share.cidr, &here) {
                return Some(problem);
            }
            if let Some(there) = shares.overlapping(&share.cidr) {
                return Some(format!("{here} overlaps {there}"));
            }
            // A role without cluster-wide ranges (AWS VPC CNI: pods in the
            // nodes' subnet) is made of its nodes' shares.
            let networks: Vec<&Ipv4Net> = self
                .networks
                .iter()
                .filter(|n| n.role == share.role)
                .flat_map(|n| &n.cidrs)
                .collect();
            if !networks.is_empty() && !networks.iter().any(|n| n.contains(&share.cidr)) {
                let list: Vec<String> = networks.iter().map(|n| n.to_string()).collect();
                return Some(format!(
                    "{here} lies outside every {:?} network ({})",
                    share.role,
                    list.join(", ")
                ));
            }
            mine.push((share.cidr, here));
        }
        for (cidr, here) in mine {
            shares.insert(cidr, here);
        }
        None
    }

    /// The port table of the kernel config: each network's tunnel port,
    /// then the extra VXLAN ports. A port claimed twice is an error.
    pub fn encap_ports(&self) -> Result<Vec<EncapPort>> {
        let mut ports: Vec<EncapPort> = Vec::new();
        let mut add = |port: u16, encap: Encap, role: Role, what: String| {
            if let Some(seen) = ports.iter().find(|p| p.port == port) {
                if seen.encap != encap.wire() || seen.overlay != role.overlay().wire() {
                    return Err(Error::Shape(format!(
                        "{what}: UDP port {port} is already used by another overlay"
                    )));
                }
                return Ok(());
            }
            ports.push(EncapPort {
                port,
                encap: encap.wire(),
                overlay: role.overlay().wire(),
            });
            Ok(())
        };
        for (i, network) in self.networks.iter().enumerate() {
            let what = format!("networks[{i}].encapsulation");
            match network.encapsulation {
                Encapsulation::Vxlan { port } => add(port, Encap::Vxlan, network.role, what)?,
                Encapsulation::Geneve { port } => add(port, Encap::Geneve, network.role, what)?,
                Encapsulation::Ipip | Encapsulation::Native => {}
            }
        }
        for (&port, &role) in &self.extra_vxlan_ports {
            add(
                port,
                Encap::Vxlan,
                role,
                format!("extra_vxlan_ports[{port}]"),
            )?;
        }
        if ports.len() > MAX_ENCAP_PORTS {
            return Err(Error::Shape(format!(
                "{} tunnel ports configured, the kernel program knows at most {MAX_ENCAP_PORTS}",
                ports.len()
            )));
        }
        Ok(ports)
    }

    /// The rules for following interfaces: `first` (flags), then this
    /// shape's, then the defaults.
    pub fn interface_rules(&self, first: &[crate::iface::Rule]) -> Result<crate::iface::Rules> {
        let shape = self.interfaces.iter().cloned().map(|mut rule| {
            rule.source = "shape file";
            rule
        });
        crate::iface::Rules::with_overrides(first.iter().cloned().chain(shape))
    }

    /// ADDRS capacity for this shape: `asked` (`--addr-capacity`), else
    /// room for the cluster to double and at least the default. The map is
    /// sized once, at load: a shape that outgrows it later is refused with
    /// an error naming the flag.
    pub fn addr_capacity(&self, asked: Option<u32>) -> Result<u32> {
        let needed = u32::try_from(self.kernel_addrs().len()).unwrap_or(u32::MAX);
        match asked {
            Some(asked) if asked < needed.max(1) => Err(Error::Shape(format!(
                "--addr-capacity {asked} is below the {needed} address ranges this shape needs"
            ))),
            Some(asked) => Ok(asked),
            None => Ok(needed
                .saturating_mul(2)
                .max(observer_ebpf::DEFAULT_ADDR_CAPACITY)),
        }
    }

    /// The overlay that travels as IP-in-IP, if any network does. IPv4
    /// protocol 4 carries no port to tell two overlays apart: two roles
    /// claiming it is an error.
    pub fn ipip_overlay(&self) -> Result<Option<Overlay>> {
        let mut found: Option<(Role, usize)> = None;
        for (i, network) in self.networks.iter().enumerate() {
            if network.encapsulation != Encapsulation::Ipip {
                continue;
            }
            match found {
                Some((role, j)) if role != network.role => {
                    return Err(Error::Shape(format!(
                        "networks[{i}].encapsulation: IP-in-IP is already used by networks[{j}] ({role:?}); \
                         IPv4 protocol 4 has no port to tell two overlays apart"
                    )));
                }
                Some(_) => {}
                None => found = Some((network.role, i)),
            }
        }
        Ok(found.map(|(role, _)| role.overlay()))
    }

    pub fn local(&self) -> Option<&Node> {
        let name = self.local_node.as_ref()?;
        self.nodes.iter().find(|n| &n.name == name)
    }

    /// The CONFIG map entry.
    pub fn kernel_config(&self) -> Result<Config> {
        let mut config = Config::default();
        for (slot, port) in config.encap_ports.iter_mut().zip(self.encap_ports()?) {
            *slot = port;
        }
        config.local_node = self.local().map_or(0, |n| wire_addr(n.underlay));
        config.ipip_overlay = self.ipip_overlay()?.unwrap_or(Overlay::None).wire();
        Ok(config)
    }

    /// Every ADDRS entry: (prefix, info). Longest prefix wins in the
    /// kernel, so a node's /32 overlay address inside a pod CIDR is found
    /// as the node's, and a node's /24 share names that node.
    pub fn kernel_addrs(&self) -> Vec<(Ipv4Net, AddrInfo)> {
        let mut out = Vec::new();
        let info = |net: Net, kind: AddrKind, node: u32| AddrInfo {
            net: net.wire(),
            kind: kind.wire(),
            _pad: [0; 2],
            node,
        };
        for network in &self.networks {
            for cidr in &network.cidrs {
                out.push((*cidr, info(network.role.net(), AddrKind::PodNetwork, 0)));
            }
        }
        for node in &self.nodes {
            let id = wire_addr(node.underlay);
            for share in &node.pod_cidrs {
                out.push((share.cidr, info(share.role.net(), AddrKind::PodNetwork, id)));
            }
            out.push((
                host(node.underlay),
                info(Net::Host, AddrKind::NodeUnderlay, id),
            ));
            for addr in &node.overlay_addrs {
                out.push((host(*addr), info(Net::Host, AddrKind::NodeOverlay, id)));
            }
        }
        out
    }

    /// The ADDRS entries of the listed pods, in the shape's order: a /32
    /// naming the pod's network and node. Kept apart from
    /// [`ClusterShape::kernel_addrs`]: the kernel takes at most
    /// `--pod-addr-capacity` of them, the ranges all or none.
    pub fn pod_entries(&self) -> Vec<(Ipv4Net, AddrInfo)> {
        let ids: BTreeMap<&str, u32> = self
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), wire_addr(n.underlay)))
            .collect();
        self.pods
            .iter()
            .map(|pod| {
                let info = AddrInfo {
                    net: pod.role.net().wire(),
                    kind: AddrKind::PodNetwork.wire(),
                    _pad: [0; 2],
                    node: ids.get(pod.node.as_str()).copied().unwrap_or(0),
                };
                (host(pod.addr), info)
            })
            .collect()
    }

    /// The role whose pods need an entry each: a routed network without
    /// cluster-wide ranges (AWS VPC CNI), if the shape has one.
    pub fn rangeless_role(&self) -> Option<Role> {
        self.networks
            .iter()
            .find(|n| n.cidrs.is_empty() && n.encapsulation == Encapsulation::Native)
            .map(|n| n.role)
    }

    /// This shape without its pod list, for showing: the list is as long
    /// as the cluster has pods.
    pub fn without_pods(&self) -> ClusterShape {
        ClusterShape {
            local_node: self.local_node.clone(),
            networks: self.networks.clone(),
            nodes: self.nodes.clone(),
            extra_vxlan_ports: self.extra_vxlan_ports.clone(),
            migrating: self.migrating.clone(),
            interfaces: self.interfaces.clone(),
            pods: Vec::new(),
        }
    }

    /// The overlays traffic between nodes can travel on: those with a tunnel
    /// (a port or IP-in-IP), and native when a network is routed, or
    /// routed within a subnet (CrossSubnet).
    pub fn peer_overlays(&self) -> Result<Vec<Overlay>> {
        let mut overlays: Vec<Overlay> = Vec::new();
        let tunnels = self
            .encap_ports()?
            .into_iter()
            .map(|port| Overlay::from_wire(port.overlay).unwrap_or(Overlay::None))
            .chain(self.ipip_overlay()?);
        for overlay in tunnels {
            if !overlays.contains(&overlay) {
                overlays.push(overlay);
            }
        }
        if self
            .networks
            .iter()
            .any(|n| n.encapsulation == Encapsulation::Native || n.cross_subnet)
        {
            overlays.push(Overlay::Native);
        }
        Ok(overlays)
    }

    /// Node name by underlay address, for naming peers.
    pub fn node_by_underlay(&self, addr: Ipv4Addr) -> Option<&Node> {
        self.nodes.iter().find(|n| n.underlay == addr)
    }
}

/// Disjoint address ranges, each with what it is, found by address.
#[derive(Default)]
struct RangeSet(BTreeMap<u32, (u32, String)>);

impl RangeSet {
    fn bounds(cidr: &Ipv4Net) -> (u32, u32) {
        (u32::from(cidr.network()), u32::from(cidr.broadcast()))
    }

    /// What an inserted range overlapping `cidr` is.
    fn overlapping(&self, cidr: &Ipv4Net) -> Option<&str> {
        let (start, end) = Self::bounds(cidr);
        // The last range starting at or before `end` is the only one that
        // can overlap: the ranges are disjoint.
        let (_, (last_end, what)) = self.0.range(..=end).next_back()?;
        (*last_end >= start).then_some(what.as_str())
    }

    fn insert(&mut self, cidr: Ipv4Net, what: String) {
        let (start, end) = Self::bounds(&cidr);
        self.0.insert(start, (end, what));
    }
}

/// `10.244.0.5/24` is ambiguous: meant as 10.244.0.0/24, or a typo?
fn host_bits(cidr: &Ipv4Net, what: &str) -> Option<String> {
    (cidr.addr() != cidr.network())
        .then(|| format!("{what} has host bits set: write {}", cidr.trunc()))
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn host(addr: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(addr, 32).expect("/32 is valid")
}

/// An address as the kernel ABI holds it: octets in network order.
pub fn wire_addr(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`wire_addr`].
pub fn addr_from_wire(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

/// A shape file, or the migration's defaults without one.
pub fn load(path: Option<&std::path::Path>) -> crate::Result<ClusterShape> {
    match path {
        None => Ok(ClusterShape::migration_defaults()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                crate::Error::io(format!("reading shape file {}", path.display()), e)
            })?;
            ClusterShape::from_json(&text)
                .map_err(|e| crate::Error::Shape(format!("{}: {e}", path.display())))
        }
    }
}
