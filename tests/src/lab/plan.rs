//! The lab's address plan, after kind with Flannel and the migration guide:
//! node `j` (0-based) has underlay 172.18.0.(j+2)/16 on `eth0`, legacy pod
//! subnet 10.244.j.0/24 (`flannel.1` = 10.244.j.0, `cni0` = 10.244.j.1) and
//! Cilium pod subnet 10.245.j.0/24 (`cilium_host` = 10.245.j.1). A Calico
//! CrossSubnet lab splits the underlay in two /24s instead: node `j` is
//! 172.18.(j % 2).(j+2)/24, a router between them (see [`node_underlay`]).
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use observer::shape::Encapsulation;
use serde::{Deserialize, Serialize};

/// The most nodes the plan has addresses for (one octet of /24s).
pub const MAX_NODES: usize = 200;

/// Flannel's VXLAN port (`flannel.1`).
pub const LEGACY_PORT: u16 = 8472;
/// Calico's VXLAN port (`vxlan.calico`, Felix's `vxlanPort` default, the
/// IANA port).
pub const CALICO_PORT: u16 = 4789;
/// Calico's VXLAN VNI (Felix's `vxlanVNI` default).
pub const CALICO_VNI: u32 = 4096;
/// The MAC Calico gives the host end of every pod veth, so a pod's
/// neighbour entry for its gateway is the same on every node.
pub const CALICO_HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The gateway Calico writes into every pod; the host end answers its ARP
/// by proxy.
pub const CALICO_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const CILIUM_PORT: u16 = 8473;
pub const GENEVE_PORT: u16 = 6081;
/// Flannel's VNI. Real Cilium puts the source identity in the VNI; the lab
/// uses one, since crossover tells overlays apart by UDP port.
pub const LEGACY_VNI: u32 = 1;
pub const CILIUM_VNI: u32 = 2;
/// VXLAN's 50 bytes of headers under a 1500-byte underlay.
pub const OVERLAY_MTU: u32 = 1450;
/// IP-in-IP's 20 bytes under a 1500-byte underlay (`tunl0`).
pub const IPIP_MTU: u32 = 1480;
/// Policy routing table for the second pass from `cilium_net` into the
/// tunnel (real Cilium does that hop in BPF).
pub const TUNNEL_TABLE: u32 = 2004;

/// The CNI the cluster migrates away from: how the lab builds the legacy
/// side of every node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LegacyCni {
    /// `flannel.1` (VXLAN 8472), pods on `veth*` off the `cni0` bridge.
    #[default]
    Flannel,
    /// Calico in VXLAN mode: `vxlan.calico` (VXLAN 4789, VNI 4096), pods
    /// on `cali*` veths with /32 routes and proxy ARP, no bridge.
    CalicoVxlan,
    /// The AWS VPC CNI: pods take addresses from the nodes' own subnet,
    /// on `eni*` veths with /32 routes, routed natively (`aws.rs`).
    AwsNative,
    /// Calico with `vxlanMode: CrossSubnet`: as [`LegacyCni::CalicoVxlan`],
    /// but the nodes sit in two underlay subnets and a peer's block in the
    /// same subnet is routed natively through `eth0`, without the tunnel.
    CalicoCrossSubnet,
    /// Calico in IP-in-IP mode (`ipipMode: Always`): `tunl0` carries the
    /// pods' traffic between nodes as IPv4 protocol 4, MTU 1480, pods on
    /// `cali*` veths as in VXLAN mode. This kernel has no ipip driver:
    /// `tunl0` is a veth whose far end a TC stand-in encapsulates and
    /// decapsulates on (`tunl0.rs`).
    CalicoIpip,
    /// Calico with `ipipMode: CrossSubnet`: the two above composed. The
    /// nodes sit in two underlay subnets as in
    /// [`LegacyCni::CalicoCrossSubnet`]; a peer's block in the same subnet
    /// is routed natively through `eth0`, one across subnets through
    /// `tunl0` and the stand-in as in [`LegacyCni::CalicoIpip`].
    CalicoIpipCrossSubnet,
}

impl LegacyCni {
    pub const ALL: [LegacyCni; 6] = [
        LegacyCni::Flannel,
        LegacyCni::CalicoVxlan,
        LegacyCni::AwsNative,
        LegacyCni::CalicoCrossSubnet,
        LegacyCni::CalicoIpip,
        LegacyCni::CalicoIpipCrossSubnet,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LegacyCni::Flannel => "flannel",
            LegacyCni::CalicoVxlan => "calico-vxlan",
            LegacyCni::AwsNative => "aws-native",
            LegacyCni::CalicoCrossSubnet => "calico-crosssubnet",
            LegacyCni::CalicoIpip => "calico-ipip",
            LegacyCni::CalicoIpipCrossSubnet => "calico-ipip-crosssubnet",
        }
    }

    /// The device legacy pods' traffic leaves a node by: the legacy
    /// overlay's tunnel device, or `eth0` where it is routed natively.
    pub fn device(self) -> &'static str {
        match self {
            LegacyCni::Flannel => "flannel.1",
            LegacyCni::CalicoVxlan | LegacyCni::CalicoCrossSubnet => "vxlan.calico",
            LegacyCni::AwsNative => "eth0",
            LegacyCni::CalicoIpip | LegacyCni::CalicoIpipCrossSubnet => "tunl0",
        }
    }

    /// The legacy pods' traffic between nodes is tunnelled (VXLAN or
    /// IP-in-IP).
    pub fn tunnelled(self) -> bool {
        self != LegacyCni::AwsNative
    }

    /// The legacy tunnel is IP-in-IP (`tunl0`) rather than VXLAN.
    pub fn ipip(self) -> bool {
        matches!(
            self,
            LegacyCni::CalicoIpip | LegacyCni::CalicoIpipCrossSubnet
        )
    }

    /// The legacy overlay's VXLAN port; 0 where it is not VXLAN.
    pub fn port(self) -> u16 {
        match self {
            LegacyCni::Flannel => LEGACY_PORT,
            LegacyCni::CalicoVxlan | LegacyCni::CalicoCrossSubnet => CALICO_PORT,
            LegacyCni::AwsNative | LegacyCni::CalicoIpip | LegacyCni::CalicoIpipCrossSubnet => 0,
        }
    }

    pub fn vni(self) -> u32 {
        match self {
            LegacyCni::Flannel => LEGACY_VNI,
            LegacyCni::CalicoVxlan | LegacyCni::CalicoCrossSubnet => CALICO_VNI,
            LegacyCni::AwsNative | LegacyCni::CalicoIpip | LegacyCni::CalicoIpipCrossSubnet => 0,
        }
    }

    /// How the shape names the legacy network's encapsulation.
    pub fn encapsulation(self) -> Encapsulation {
        match self {
            LegacyCni::CalicoIpip | LegacyCni::CalicoIpipCrossSubnet => Encapsulation::Ipip,
            LegacyCni::AwsNative => Encapsulation::Native,
            _ => Encapsulation::Vxlan { port: self.port() },
        }
    }

    /// What an nftables rule matches the legacy tunnel's packets by on the
    /// wire, beside the outer addresses; `None` where nothing is
    /// tunnelled.
    pub fn wire_match(self) -> Option<String> {
        match self.encapsulation() {
            Encapsulation::Vxlan { port } => Some(format!("udp dport {port}")),
            // By number: /etc/protocols names 4 `ipencap`; its `ipip` is 94.
            Encapsulation::Ipip => Some("ip protocol 4".into()),
            Encapsulation::Geneve { .. } | Encapsulation::Native => None,
        }
    }

    /// The MTU of the legacy tunnel device and of the legacy pods' veths:
    /// VXLAN's 50 bytes or IP-in-IP's 20 under a 1500-byte underlay
    /// (Calico's `vethMTU` follows the encapsulation).
    pub fn mtu(self) -> u32 {
        if self.ipip() { IPIP_MTU } else { OVERLAY_MTU }
    }

    /// Which of [`mac`]'s kinds the legacy tunnel device's MAC is.
    pub fn vtep_mac_kind(self) -> u8 {
        match self {
            LegacyCni::Flannel => MAC_FLANNEL,
            LegacyCni::CalicoVxlan | LegacyCni::CalicoCrossSubnet | LegacyCni::AwsNative => {
                MAC_CALICO_VXLAN
            }
            LegacyCni::CalicoIpip | LegacyCni::CalicoIpipCrossSubnet => MAC_CALICO_TUNL0,
        }
    }

    /// crossover's name for the overlay legacy pods' traffic between
    /// nodes travels on.
    pub fn overlay_label(self) -> &'static str {
        if self.tunnelled() { "legacy" } else { "native" }
    }

    /// Prefix of the host end of a legacy pod's veth.
    pub fn veth_prefix(self) -> &'static str {
        match self {
            LegacyCni::Flannel => "veth",
            LegacyCni::CalicoVxlan
            | LegacyCni::CalicoCrossSubnet
            | LegacyCni::CalicoIpip
            | LegacyCni::CalicoIpipCrossSubnet => "cali",
            LegacyCni::AwsNative => "eni",
        }
    }

    /// Calico's node build (no bridge, `cali*` veths, Felix's NAT).
    pub fn is_calico(self) -> bool {
        matches!(
            self,
            LegacyCni::CalicoVxlan
                | LegacyCni::CalicoCrossSubnet
                | LegacyCni::CalicoIpip
                | LegacyCni::CalicoIpipCrossSubnet
        )
    }

    /// Whether the legacy network tunnels only across underlay subnets
    /// (Calico's `CrossSubnet` modes) and the lab's nodes sit in two.
    pub fn cross_subnet(self) -> bool {
        matches!(
            self,
            LegacyCni::CalicoCrossSubnet | LegacyCni::CalicoIpipCrossSubnet
        )
    }
}

impl std::str::FromStr for LegacyCni {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        LegacyCni::ALL
            .into_iter()
            .find(|c| c.label() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = LegacyCni::ALL.iter().map(|c| c.label()).collect();
                format!(
                    "unknown legacy CNI {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for LegacyCni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A pod's network: which CNI gave it its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Legacy,
    Cilium,
}

/// What carries a packet between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlay {
    Legacy,
    Cilium,
    /// Crafted Geneve datagrams: the kernel here has no Geneve module.
    Geneve,
    /// Crafted IP-in-IP (Calico's legacy overlay in IPIP mode): the kernel
    /// here has no ipip module.
    Ipip,
    /// No tunnel: pod traffic routed between two nodes of one underlay
    /// subnet (a CrossSubnet lab).
    Native,
}

impl Overlay {
    pub const ALL: [Overlay; 5] = [
        Overlay::Legacy,
        Overlay::Cilium,
        Overlay::Geneve,
        Overlay::Ipip,
        Overlay::Native,
    ];

    /// What an nftables rule matches this overlay's packets by on the
    /// wire, in a lab whose legacy CNI is `legacy` and tunnelled, beside
    /// the outer addresses; `None` for the native overlay, which has no
    /// outer header (a native path is matched by addresses:
    /// `aws::native_wire_match`).
    pub fn nft_match(self, legacy: LegacyCni) -> Option<String> {
        match self {
            Overlay::Legacy => legacy.wire_match(),
            Overlay::Cilium => Some(format!("udp dport {CILIUM_PORT}")),
            Overlay::Geneve => Some(format!("udp dport {GENEVE_PORT}")),
            // By number: /etc/protocols names 4 `ipencap`; its `ipip` is 94.
            Overlay::Ipip => Some("ip protocol 4".into()),
            Overlay::Native => None,
        }
    }

    /// The nftables match for this overlay's packets from node `j` to node
    /// `k` of a lab whose legacy CNI is `legacy`. A tunnel's: from `j`'s to
    /// `k`'s underlay address on its port or protocol. The native
    /// overlay's, as crossover classifies it: unencapsulated, with a pod of
    /// `j` or `k` at one end and `j` and `k` (a pod or the node itself) at
    /// the two; node to node alone is no overlay's.
    pub fn nft_path(self, legacy: LegacyCni, j: usize, k: usize) -> String {
        let (from, to) = (
            node_underlay(legacy, j).addr(),
            node_underlay(legacy, k).addr(),
        );
        match self.nft_match(legacy) {
            Some(wire) => format!("ip saddr {from} ip daddr {to} {wire}"),
            None => {
                let pods = |n: usize| [pod_cidr(n, Network::Legacy), pod_cidr(n, Network::Cilium)];
                let mut pairs = Vec::new();
                for src in pods(j) {
                    for dst in pods(k) {
                        pairs.push(format!("{src} . {dst}"));
                    }
                    pairs.push(format!("{src} . {to}"));
                }
                for dst in pods(k) {
                    pairs.push(format!("{from} . {dst}"));
                }
                format!("ip saddr . ip daddr {{ {} }}", pairs.join(", "))
            }
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Overlay::Legacy => "legacy",
            Overlay::Cilium => "cilium",
            Overlay::Geneve => "geneve",
            Overlay::Ipip => "ipip",
            Overlay::Native => "native",
        }
    }
}

impl std::str::FromStr for Overlay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Overlay::ALL
            .into_iter()
            .find(|o| o.label() == s)
            .ok_or_else(|| {
                format!("unknown overlay {s:?}; expected legacy, cilium, geneve, ipip or native")
            })
    }
}

/// Node `j`'s underlay address in the default plan (every lab but a
/// CrossSubnet one, see [`node_underlay`]).
pub fn underlay_addr(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 18, 0, octet(j) + 2)
}

/// Underlay subnets of a CrossSubnet lab: nodes alternate between them,
/// so the control plane and even workers share one and odd workers the
/// other.
pub const UNDERLAY_SUBNETS: usize = 2;

/// Which underlay subnet node `j` is in (always 0 but in a CrossSubnet lab).
pub fn underlay_subnet(legacy: LegacyCni, j: usize) -> usize {
    if legacy.cross_subnet() {
        j % UNDERLAY_SUBNETS
    } else {
        0
    }
}

/// Whether node `j` reaches node `k`'s block natively through `eth0`
/// rather than through the legacy tunnel: in a CrossSubnet lab, the two
/// share an underlay subnet (Felix's `SameSubnet` routes).
pub fn native_within_subnet(legacy: LegacyCni, j: usize, k: usize) -> bool {
    legacy.cross_subnet() && underlay_subnet(legacy, j) == underlay_subnet(legacy, k)
}

/// Node `j`'s underlay address with its subnet's prefix: 172.18.0.(j+2)/16
/// on one segment, or in a CrossSubnet lab 172.18.s.(j+2)/24 with `s` its
/// [`underlay_subnet`] (the host octet stays the node's).
pub fn node_underlay(legacy: LegacyCni, j: usize) -> Ipv4Net {
    let addr = underlay_addr(j);
    if !legacy.cross_subnet() {
        return Ipv4Net::new(addr, 16).expect("/16 is valid");
    }
    let [a, b, _, d] = addr.octets();
    let subnet = underlay_subnet(legacy, j) as u8;
    Ipv4Net::new(Ipv4Addr::new(a, b, subnet, d), 24).expect("/24 is valid")
}

/// The router's address in underlay subnet `s` of a CrossSubnet lab: the
/// underlay namespace routes between the subnets (as the network between
/// two racks or availability zones would).
pub fn underlay_gateway(s: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(172, 18, s as u8, 254), 24).expect("/24 is valid")
}

/// The bridge of underlay subnet `s`, in the underlay namespace.
pub fn underlay_bridge(s: usize) -> String {
    match s {
        0 => "underlay".into(),
        s => format!("underlay{s}"),
    }
}

pub fn pod_cidr(j: usize, network: Network) -> Ipv4Net {
    let second = match network {
        Network::Legacy => 244,
        Network::Cilium => 245,
    };
    Ipv4Net::new(Ipv4Addr::new(10, second, octet(j), 0), 24).expect("/24 is valid")
}

pub fn cluster_cidr(network: Network) -> Ipv4Net {
    let cidr = pod_cidr(0, network);
    Ipv4Net::new(cidr.network(), 16)
        .expect("/16 is valid")
        .trunc()
}

/// The legacy overlay device's address, the network address of the node's
/// subnet: `flannel.1`'s, or `vxlan.calico`'s tunnel address (Calico's
/// IPAM gives the tunnel the block's first free address, which is it).
pub fn flannel_addr(j: usize) -> Ipv4Addr {
    pod_cidr(j, Network::Legacy).network()
}

/// `cni0`'s address, the legacy pods' gateway.
pub fn cni0_addr(j: usize) -> Ipv4Addr {
    host(pod_cidr(j, Network::Legacy), 1)
}

/// `cilium_host`'s address (the CiliumInternalIP), the Cilium pods' gateway.
pub fn cilium_host_addr(j: usize) -> Ipv4Addr {
    host(pod_cidr(j, Network::Cilium), 1)
}

/// Host `n` of a subnet.
pub fn host(net: Ipv4Net, n: u8) -> Ipv4Addr {
    let [a, b, c, _] = net.network().octets();
    Ipv4Addr::new(a, b, c, n)
}

/// Locally administered MACs, stable per node and device, so FDB and
/// neighbour entries can be written before the peer exists.
pub fn mac(kind: u8, j: usize) -> String {
    format!("02:c0:00:{kind:02x}:00:{:02x}", octet(j))
}
pub const MAC_FLANNEL: u8 = 1;
pub const MAC_CILIUM_VXLAN: u8 = 2;
pub const MAC_CILIUM_NET: u8 = 3;
pub const MAC_CALICO_VXLAN: u8 = 4;
pub const MAC_CALICO_TUNL0: u8 = 5;

/// A pod interface's MAC, from its address: `side` 0 is the pod's `eth0`,
/// 1 the host end.
pub fn pod_mac(addr: Ipv4Addr, side: u8) -> String {
    let [_, b, c, d] = addr.octets();
    format!("02:{:02x}:{b:02x}:{c:02x}:{d:02x}:00", 0xd0 + side)
}

fn octet(j: usize) -> u8 {
    assert!(j < MAX_NODES, "node index {j} beyond the address plan");
    j as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_matches_the_documented_layout() {
        assert_eq!(flannel_addr(1).to_string(), "10.244.1.0");
        assert_eq!(cni0_addr(1).to_string(), "10.244.1.1");
        assert_eq!(cilium_host_addr(2).to_string(), "10.245.2.1");
        assert_eq!(cluster_cidr(Network::Cilium).to_string(), "10.245.0.0/16");
        assert_eq!(underlay_addr(0).to_string(), "172.18.0.2");
        assert_eq!(
            node_underlay(LegacyCni::CalicoVxlan, 3).to_string(),
            "172.18.0.5/16"
        );
        let split: Vec<String> = (0..4)
            .map(|j| node_underlay(LegacyCni::CalicoCrossSubnet, j).to_string())
            .collect();
        assert_eq!(
            split,
            [
                "172.18.0.2/24",
                "172.18.1.3/24",
                "172.18.0.4/24",
                "172.18.1.5/24"
            ]
        );
        assert_ne!(
            pod_mac(host(pod_cidr(0, Network::Legacy), 5), 0),
            pod_mac(host(pod_cidr(0, Network::Legacy), 5), 1)
        );
    }

    #[test]
    fn legacy_cnis_parse_by_name_and_keep_their_ports() {
        for cni in LegacyCni::ALL {
            assert_eq!(cni.label().parse::<LegacyCni>(), Ok(cni));
        }
        assert_eq!(LegacyCni::default(), LegacyCni::Flannel);
        assert_eq!(
            Overlay::Legacy.nft_match(LegacyCni::CalicoVxlan).as_deref(),
            Some("udp dport 4789")
        );
        assert_eq!(
            Overlay::Legacy.nft_match(LegacyCni::Flannel).as_deref(),
            Some("udp dport 8472")
        );
        assert_eq!(
            Overlay::Legacy.nft_path(LegacyCni::CalicoCrossSubnet, 0, 3),
            "ip saddr 172.18.0.2 ip daddr 172.18.1.5 udp dport 4789"
        );
        assert_eq!(
            Overlay::Legacy.nft_path(LegacyCni::CalicoIpip, 0, 2),
            "ip saddr 172.18.0.2 ip daddr 172.18.0.4 ip protocol 4"
        );
        assert_eq!(
            LegacyCni::CalicoIpip.encapsulation(),
            Encapsulation::Ipip,
            "the shape's legacy network"
        );
        assert_eq!(
            (LegacyCni::CalicoIpip.device(), LegacyCni::CalicoIpip.mtu()),
            ("tunl0", 1480)
        );
        assert_eq!(LegacyCni::AwsNative.wire_match(), None);
        let native = Overlay::Native.nft_path(LegacyCni::CalicoCrossSubnet, 0, 2);
        assert!(
            native.contains("10.244.0.0/24 . 10.244.2.0/24")
                && native.contains("172.18.0.2 . 10.244.2.0/24")
                && native.contains("10.244.0.0/24 . 172.18.0.4")
                && !native.contains("172.18.0.2 . 172.18.0.4"),
            "{native}"
        );
        let ipipx = LegacyCni::CalicoIpipCrossSubnet;
        assert_eq!(
            (ipipx.encapsulation(), ipipx.device(), ipipx.mtu()),
            (Encapsulation::Ipip, "tunl0", 1480)
        );
        assert_eq!(
            Overlay::Legacy.nft_path(ipipx, 0, 3),
            "ip saddr 172.18.0.2 ip daddr 172.18.1.5 ip protocol 4"
        );
        assert!(native_within_subnet(ipipx, 0, 2) && native_within_subnet(ipipx, 1, 3));
        assert!(!native_within_subnet(ipipx, 0, 1) && !native_within_subnet(ipipx, 2, 3));
        assert!(!native_within_subnet(LegacyCni::CalicoIpip, 0, 2));
        let err = "weave".parse::<LegacyCni>().unwrap_err();
        assert!(
            err.contains(
                "flannel, calico-vxlan, aws-native, calico-crosssubnet, calico-ipip, \
                 calico-ipip-crosssubnet"
            ),
            "{err}"
        );
    }
}
