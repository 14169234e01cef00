//! Pods as network namespaces, wired the way each CNI wires them: a Flannel
//! pod is a veth on `cni0` with a /24 and `cni0` as gateway; a Calico pod a
//! `cali` veth with a /32 and `169.254.1.1` as gateway (`calico.rs`); an
//! AWS VPC CNI pod an `eni` veth with a /32 from the node's subnet
//! (`aws.rs`); a Cilium pod is an `lxc` veth with a /32, `cilium_host` as
//! gateway, and a /32 route on the node.
use std::net::Ipv4Addr;

use anyhow::{Result, bail};

use super::{
    aws, calico,
    exec::{IpBatch, run, sysctls},
    plan::{self, LegacyCni, Network},
    state::{LabState, Pod, PodKind},
};

/// Allocates an address on node `j`'s subnet of `network` and creates the
/// pod there. A full subnet fails as the CNI would: no more IPs.
pub fn create(
    lab: &mut LabState,
    j: usize,
    name: &str,
    kind: PodKind,
    network: Network,
) -> Result<Pod> {
    let node = &lab.nodes[j];
    if node.pods.iter().any(|p| p.name == name) {
        bail!("pod {name:?} already exists on {}", node.name);
    }
    let addr = allocate(lab, j, network)?;
    create_at(lab, j, name, kind, network, addr)
}

/// Creates the pod with an address chosen elsewhere (by the API server's
/// cluster sim, which plays the CNI's IPAM): it must lie in node `j`'s
/// subnet of `network`, off the node's own addresses, and be free.
pub fn create_at(
    lab: &mut LabState,
    j: usize,
    name: &str,
    kind: PodKind,
    network: Network,
    addr: Ipv4Addr,
) -> Result<Pod> {
    let node = &lab.nodes[j];
    if node.pods.iter().any(|p| p.name == name) {
        bail!("pod {name:?} already exists on {}", node.name);
    }
    let subnet = pod_subnet(lab.legacy, j, network);
    let reserved = [subnet.network(), subnet.broadcast(), plan::host(subnet, 1)];
    if !subnet.contains(&addr) || reserved.contains(&addr) {
        bail!("{addr} is not a pod address of {subnet} on {}", node.name);
    }
    if let Some(p) = node.pods.iter().find(|p| p.addr == addr) {
        bail!("{addr} is held by pod {:?} on {}", p.name, node.name);
    }
    let calico = network == Network::Legacy && lab.legacy.is_calico();
    let aws = network == Network::Legacy && lab.legacy == LegacyCni::AwsNative;
    let host_if = match network {
        Network::Legacy if calico => calico::veth_name(addr),
        Network::Legacy if aws => aws::veth_name(addr),
        Network::Legacy => format!("veth{:08x}", u32::from(addr)),
        Network::Cilium => format!("lxc{:08x}", u32::from(addr)),
    };
    let pod = Pod {
        name: name.into(),
        node: node.name.clone(),
        kind,
        network,
        addr,
        netns: lab.pod_ns(&node.name, name),
        host_if,
    };
    let node_ns = lab.node_ns(&node.name);
    run(&["ip", "netns", "add", &pod.netns])?;
    sysctls(
        &pod.netns,
        &[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            // Echo replies must come from every pod, whatever the defaults.
            ("net.ipv4.icmp_echo_ignore_all", "0"),
        ],
    )?;
    let pod_mac = plan::pod_mac(addr, 0);
    let host_mac = if calico {
        plan::CALICO_HOST_MAC.to_string()
    } else {
        plan::pod_mac(addr, 1)
    };
    let mut host = IpBatch::default();
    host.add(format!(
        "link add {} address {host_mac} type veth peer name eth0 address {pod_mac} netns {}",
        pod.host_if, pod.netns
    ));
    let mut inside = IpBatch::default();
    inside.add("link set lo up");
    match network {
        Network::Legacy if calico => calico::wire_pod(
            &mut host,
            &mut inside,
            &pod.host_if,
            addr,
            &pod_mac,
            lab.legacy.mtu(),
        ),
        Network::Legacy if aws => {
            aws::wire_pod(&mut host, &mut inside, &pod.host_if, addr, &host_mac)
        }
        Network::Legacy => {
            let gateway = plan::cni0_addr(j);
            host.add(format!(
                "link set {} master cni0 mtu {}",
                pod.host_if,
                plan::OVERLAY_MTU
            ))
            .add(format!("link set {} up", pod.host_if));
            inside
                .add(format!("link set eth0 mtu {} up", plan::OVERLAY_MTU))
                .add(format!("addr add {addr}/24 dev eth0"))
                .add(format!("route add default via {gateway} dev eth0"));
        }
        Network::Cilium => {
            let gateway = plan::cilium_host_addr(j);
            host.add(format!("link set {} up", pod.host_if))
                .add(format!(
                    "route add {addr}/32 dev {} scope link",
                    pod.host_if
                ))
                .add(format!(
                    "neigh add {addr} lladdr {pod_mac} dev {} nud permanent",
                    pod.host_if
                ));
            // Real Cilium answers the pod's ARP for its gateway in BPF on
            // the lxc device; the lab writes the answer down.
            inside
                .add("link set eth0 up")
                .add(format!("addr add {addr}/32 dev eth0"))
                .add(format!("route add {gateway} dev eth0 scope link"))
                .add(format!(
                    "route add default via {gateway} dev eth0 mtu {}",
                    plan::OVERLAY_MTU
                ))
                .add(format!(
                    "neigh add {gateway} lladdr {host_mac} dev eth0 nud permanent"
                ));
        }
    }
    host.run(&node_ns)?;
    if calico {
        calico::host_sysctls(&node_ns, &pod.host_if)?;
    }
    inside.run(&pod.netns)?;
    if aws {
        aws::fabric(lab, j, addr, true)?;
    }
    lab.nodes[j].pods.push(pod.clone());
    Ok(pod)
}

/// Removes a pod: its namespace (and with it the veth) goes, and so does
/// the node's /32 route, which the kernel drops with the device.
pub fn delete(lab: &mut LabState, j: usize, name: &str) -> Result<()> {
    let Some(at) = lab.nodes[j].pods.iter().position(|p| p.name == name) else {
        bail!("no pod {name:?} on {}", lab.nodes[j].name);
    };
    let pod = lab.nodes[j].pods.remove(at);
    if pod.network == Network::Legacy && lab.legacy == LegacyCni::AwsNative {
        let mut host = IpBatch::default();
        aws::unwire_pod(&mut host, pod.addr);
        host.run(&lab.node_ns(&lab.nodes[j].name))?;
        aws::fabric(lab, j, pod.addr, false)?;
    }
    super::kill_and_delete_netns(&pod.netns)
}

/// Where node `j`'s pods of `network` take addresses: its share of the
/// network, or for the AWS VPC CNI its ENI's warm pool in the VPC subnet.
fn pod_subnet(cni: LegacyCni, j: usize, network: Network) -> ipnet::Ipv4Net {
    match (cni, network) {
        (LegacyCni::AwsNative, Network::Legacy) => aws::pool(j),
        _ => plan::pod_cidr(j, network),
    }
}

fn allocate(lab: &mut LabState, j: usize, network: Network) -> Result<Ipv4Addr> {
    let slot = network as usize;
    let subnet = pod_subnet(lab.legacy, j, network);
    // .0 and .1 are the node's (flannel.1 / cni0, cilium_host); .255 is
    // broadcast on the legacy bridge.
    for _ in 0..253 {
        let n = lab.nodes[j].next_host[slot].max(2);
        lab.nodes[j].next_host[slot] = if n >= 254 { 2 } else { n + 1 };
        let addr = plan::host(subnet, n);
        if !lab.nodes[j].pods.iter().any(|p| p.addr == addr) {
            return Ok(addr);
        }
    }
    bail!(
        "no more IPs available in {subnet} on {} (every address is held by a pod)",
        lab.nodes[j].name
    )
}
