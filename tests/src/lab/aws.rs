//! The legacy side of a node as the AWS VPC CNI builds it (docs/lab.md
//! says where each detail comes from): no tunnel and no bridge; pods take
//! secondary addresses of the node's ENI, inside the VPC subnet the nodes
//! are in (the lab's underlay), on `eni*` veths with a /32 route on the
//! node and `169.254.1.1` as gateway inside; traffic between nodes is
//! routed natively; `AWS-SNAT-CHAIN-0` rewrites pod traffic leaving the
//! VPC to the node's primary address.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;

use super::{
    exec::{IpBatch, in_ns},
    plan,
    state::LabState,
};

/// The VPC's CIDR: the subnet every node's primary ENI is in.
pub fn vpc_cidr() -> Ipv4Net {
    Ipv4Net::new(plan::underlay_addr(0), 16)
        .expect("/16 is valid")
        .trunc()
}

/// Node `j`'s warm pool: the secondary addresses its ENI holds, handed to
/// pods. EC2 picks them anywhere in the subnet; the lab gives each node
/// its own /24 of the underlay's /16 (off the nodes' own 172.18.0.x) so an
/// address says its node to a person. Nothing in crossover's shape names
/// these ranges: every pod is its own /32 there, as on AWS.
pub fn pool(j: usize) -> Ipv4Net {
    let [a, b, _, _] = plan::underlay_addr(0).octets();
    let third = u8::try_from(j + 1).expect("the plan has at most 200 nodes");
    Ipv4Net::new(Ipv4Addr::new(a, b, third, 0), 24).expect("/24 is valid")
}

/// The host end's name: the CNI plugin's is `eni` (its default
/// `AWS_VPC_K8S_CNI_VETHPREFIX`) and 11 hex digits of a SHA-1 of the
/// pod's namespace and name; the lab's come from the pod's address,
/// unique per lab.
pub fn veth_name(addr: Ipv4Addr) -> String {
    format!("eni{:011x}", u32::from(addr))
}

/// The gateway the plugin writes into every pod (link-local, answered by
/// the static ARP entry alone).
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The rule the plugin adds for every pod (`toContainerRulePriority`):
/// traffic to the pod looks up the main table, before any ENI's table.
const TO_POD_RULE: u32 = 512;

/// Wires a legacy pod's veth as the CNI plugin does: the host end up, a
/// /32 route to the pod and the to-pod rule; inside, the address as a
/// /32, `169.254.1.1` on-link, the default route through it and a static
/// ARP entry for it with the host end's MAC. The host resolves the pod by
/// ARP: the plugin writes no neighbour on the host side.
pub fn wire_pod(
    host: &mut IpBatch,
    inside: &mut IpBatch,
    host_if: &str,
    addr: Ipv4Addr,
    host_mac: &str,
) {
    let gateway = GATEWAY;
    host.add(format!("link set {host_if} up"))
        .add(format!("route add {addr}/32 dev {host_if} scope link"))
        .add(format!(
            "rule add to {addr}/32 lookup main pref {TO_POD_RULE}"
        ));
    inside
        .add("link set eth0 up")
        .add(format!("addr add {addr}/32 dev eth0"))
        .add(format!("route add {gateway} dev eth0 scope link"))
        .add(format!("route add default via {gateway} dev eth0"))
        .add(format!(
            "neigh add {gateway} lladdr {host_mac} dev eth0 nud permanent"
        ));
}

/// What the pod's removal leaves on its node: the to-pod rule (the route
/// goes with the veth).
pub fn unwire_pod(host: &mut IpBatch, addr: Ipv4Addr) {
    host.add(format!(
        "rule del to {addr}/32 lookup main pref {TO_POD_RULE}"
    ));
}

/// The VPC fabric's part, which the lab has no router for: EC2 delivers a
/// packet for a secondary address to the instance whose ENI holds it. On
/// every other node a /32 route to the pod via its node's primary address
/// stands in (the frame leaves `eth0` for that node's MAC, as the fabric
/// delivers it); `add` false removes them.
pub fn fabric(lab: &LabState, j: usize, addr: Ipv4Addr, add: bool) -> Result<()> {
    let via = plan::underlay_addr(j);
    for (k, node) in lab.nodes.iter().enumerate().filter(|(k, _)| *k != j) {
        let mut ip = IpBatch::default();
        if add {
            ip.add(format!("route add {addr}/32 via {via} dev eth0"));
        } else {
            ip.add(format!("route del {addr}/32 via {via} dev eth0"));
        }
        ip.run(&lab.node_ns(&node.name))
            .with_context(|| format!("the VPC fabric's route to {addr} on node {k}"))?;
    }
    Ok(())
}

/// `AWS-SNAT-CHAIN-0` as aws-node writes it with its defaults
/// (`AWS_VPC_K8S_CNI_EXTERNALSNAT=false`, no excluded CIDRs): traffic to
/// the VPC returns untouched, anything else not for a local address and
/// not leaving by a `vlan` device is SNATed to the node's primary address.
pub fn snat_rules(j: usize) -> String {
    let vpc = vpc_cidr();
    let primary = plan::underlay_addr(j);
    format!(
        r#":AWS-SNAT-CHAIN-0 - [0:0]
-A POSTROUTING -m comment --comment "AWS SNAT CHAIN" -j AWS-SNAT-CHAIN-0
-A AWS-SNAT-CHAIN-0 -d {vpc} -m comment --comment "AWS SNAT CHAIN" -j RETURN
-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment "AWS, SNAT" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {primary} --random-fully
"#
    )
}

/// Mark of what real Cilium moves in BPF: from its tunnel, and from its
/// pods to other Cilium pods (a bit no CNI here uses).
const MOVED_BY_CILIUM: &str = "0x200/0x200";

/// Keeps `AWS-SNAT-CHAIN-0` off what Cilium moves between its pods and
/// its tunnel. Real Cilium hands a packet from `cilium_vxlan` to the pod's
/// `lxc`, and a pod's packet for another node's Cilium pod to the tunnel,
/// in BPF, past netfilter; the lab routes both through the kernel, where
/// the chain (which matches any source, for anything leaving the VPC)
/// would SNAT them. The node's own traffic into Cilium's range takes the
/// kernel's path on a real node too, and is SNATed there as here.
pub fn cilium_delivery_rules() -> String {
    let lab = r#"-m comment --comment "crossover lab: Cilium moves this in BPF, past netfilter""#;
    let cilium = plan::cluster_cidr(plan::Network::Cilium);
    format!(
        "*mangle\n\
         -A PREROUTING -i cilium_vxlan {lab} -j MARK --set-xmark {MOVED_BY_CILIUM}\n\
         -A PREROUTING -i lxc+ -d {cilium} {lab} -j MARK --set-xmark {MOVED_BY_CILIUM}\n\
         COMMIT\n\
         *nat\n\
         -I POSTROUTING 1 -m mark --mark {MOVED_BY_CILIUM} {lab} -j RETURN\n\
         COMMIT\n"
    )
}

/// What an nftables rule on node `j`'s bridge port matches of the native
/// path from `j` to `k`: frames for `k`'s `eth0` that are not node `j` to
/// node `k` (those are tunnels, or the nodes' own traffic).
pub fn native_wire_match(lab: &LabState, j: usize, k: usize) -> Result<String> {
    let ns = lab.node_ns(&lab.nodes[k].name);
    let mac = in_ns(&ns, &["cat", "/sys/class/net/eth0/address"])?;
    Ok(format!(
        "ether daddr {} ip saddr . ip daddr != {{ {} . {} }}",
        mac.trim(),
        plan::underlay_addr(j),
        plan::underlay_addr(k)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_lie_in_the_vpc_off_the_nodes_and_apart() {
        let vpc = vpc_cidr();
        assert_eq!(vpc.to_string(), "172.18.0.0/16");
        for j in 0..plan::MAX_NODES {
            let pool = pool(j);
            assert!(vpc.contains(&pool), "{pool}");
            assert!(
                (0..plan::MAX_NODES).all(|k| !pool.contains(&plan::underlay_addr(k))),
                "{pool} holds a node's primary address"
            );
            assert!(j == 0 || !pool.contains(&pool_of(j - 1)), "{pool}");
        }
        assert_eq!(veth_name(Ipv4Addr::new(172, 18, 1, 3)).len(), 14);
        assert!(!plan::LegacyCni::AwsNative.tunnelled());
        assert_eq!(plan::LegacyCni::AwsNative.overlay_label(), "native");
    }

    fn pool_of(j: usize) -> Ipv4Addr {
        pool(j).network()
    }
}
