//! The legacy side of a node as Calico builds it in VXLAN mode (docs/lab.md
//! says where each detail comes from): no bridge; Felix's `vxlan.calico`
//! with the node's tunnel address; pods on `cali*` veths with a /32 route
//! on the node, proxy ARP and a permanent neighbour on the host end, and
//! `169.254.1.1` as gateway inside; Felix's `natOutgoing` masquerade.
use std::net::Ipv4Addr;

use anyhow::Result;

use super::{
    exec::{IpBatch, sysctls},
    plan::{self, LegacyCni, Network},
};

/// Beside `vxlan.calico` (created with Flannel's device in `node.rs`:
/// Felix's VNI 4096 and UDP 4789): the blackhole route Felix keeps for the
/// node's own block, so an address no pod holds goes nowhere instead of
/// back out.
pub fn node(ip: &mut IpBatch, j: usize) {
    ip.add(format!(
        "route add blackhole {} proto 80",
        plan::pod_cidr(j, Network::Legacy)
    ));
}

/// Felix's `natOutgoing` for the pool (`cali-nat-outgoing`: from the pool,
/// to anywhere outside every pool; Felix matches both with ipsets, the lab
/// has one pool and writes it inline) and its rule masquerading host
/// traffic into the tunnel (`vxlan.calico` or `tunl0`, `cni.device()`)
/// from an address not on it.
pub fn masquerade_rules(cni: LegacyCni) -> String {
    let tunnel = cni.device();
    let pool = plan::cluster_cidr(Network::Legacy);
    let felix = r#"-m comment --comment "calico felix""#;
    format!(
        r#":cali-POSTROUTING - [0:0]
:cali-nat-outgoing - [0:0]
-A POSTROUTING {felix} -j cali-POSTROUTING
-A cali-POSTROUTING {felix} -j cali-nat-outgoing
-A cali-POSTROUTING -o {tunnel} -m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL {felix} -j MASQUERADE
-A cali-nat-outgoing -s {pool} ! -d {pool} {felix} -j MASQUERADE --random-fully
"#
    )
}

/// Wires a legacy pod's veth as the Calico CNI plugin does (`mtu`: Felix's
/// `vethMTU`, the tunnel's): host end
/// `ee:ee:ee:ee:ee:ee`, up, a /32 route to the pod and a permanent
/// neighbour for it (Felix's static ARP entry); inside, the address as a
/// /32, `169.254.1.1` on-link and the default route through it.
pub fn wire_pod(
    host: &mut IpBatch,
    inside: &mut IpBatch,
    host_if: &str,
    addr: Ipv4Addr,
    pod_mac: &str,
    mtu: u32,
) {
    let gateway = plan::CALICO_GATEWAY;
    host.add(format!("link set {host_if} mtu {mtu} up"))
        .add(format!("route add {addr}/32 dev {host_if} scope link"))
        .add(format!(
            "neigh add {addr} lladdr {pod_mac} dev {host_if} nud permanent"
        ));
    // The host end answers the pod's ARP for 169.254.1.1 by proxy on a
    // real node, whose default route makes the gateway routable. The
    // lab's nodes have no default route, so proxy ARP would find none:
    // the pod gets the answer proxy ARP gives, written down.
    inside
        .add(format!("link set eth0 mtu {mtu} up"))
        .add(format!("addr add {addr}/32 dev eth0"))
        .add(format!("route add {gateway} dev eth0 scope link"))
        .add(format!("route add default via {gateway} dev eth0"))
        .add(format!(
            "neigh add {gateway} lladdr {} dev eth0 nud permanent",
            plan::CALICO_HOST_MAC
        ));
}

/// The CNI plugin's sysctls on the host end: proxy ARP without delay,
/// forwarding.
pub fn host_sysctls(node_ns: &str, host_if: &str) -> Result<()> {
    let keys = [
        (format!("net.ipv4.conf.{host_if}.proxy_arp"), "1"),
        (format!("net.ipv4.neigh.{host_if}.proxy_delay"), "0"),
        (format!("net.ipv4.conf.{host_if}.forwarding"), "1"),
    ];
    let pairs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    sysctls(node_ns, &pairs)
}

/// The host end's name: Calico's is `cali` and 11 hex digits of a hash of
/// the workload; the lab's come from the pod's address, unique per lab.
pub fn veth_name(addr: Ipv4Addr) -> String {
    format!("cali{:011x}", u32::from(addr))
}
