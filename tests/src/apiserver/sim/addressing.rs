//! Which network a node's new pods join, and the node-local IPAM that
//! hands out their addresses.
//!
//! A node's CNI is whatever config file its kubelet finds first in
//! `/etc/cni/net.d`. The Cilium agent writes `05-cilium.conflist` when it
//! becomes Ready on a node the `cilium-default` CiliumNodeConfig selects
//! (the migration label), so the switch happens at the agent's restart,
//! not at the label; and an agent restarting without the label (a
//! rollback) leaves the legacy config in charge again. Pods keep the
//! address they were created with until their sandbox is recreated.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use serde_json::Value;

use super::{
    super::fixtures::MIGRATION_LABEL,
    world::{self, World},
};
use crate::lab::plan::Network;

/// Whether the node carries `io.cilium.migration/cilium-default=true`.
pub(crate) fn labelled(node: &Value) -> bool {
    world::label(node, MIGRATION_LABEL) == Some("true")
}

/// The network an agent becoming Ready now on `node` leaves in charge.
pub(crate) fn network_after_agent_start(world: &World, node: &Value) -> Network {
    if labelled(node) || !world.custom_cni_conf {
        Network::Cilium
    } else {
        Network::Legacy
    }
}

/// The node's subnet on `network`: `spec.podCIDR` for the legacy CNI, the
/// CiliumNode's `spec.ipam.podCIDRs[0]` for Cilium.
pub(crate) fn subnet(world: &World, node: &str, network: Network) -> Option<Ipv4Net> {
    let cidr = match network {
        Network::Legacy => world.node(node)?["spec"]["podCIDR"].as_str()?,
        Network::Cilium => world.cilium_node(node)?["spec"]["ipam"]["podCIDRs"][0].as_str()?,
    };
    cidr.parse::<Ipv4Net>().ok().map(|n| n.trunc())
}

/// Addresses of the subnet no pod gets: the network and broadcast
/// addresses, the gateway (`.1`: `cni0` on legacy, `cilium_host` on
/// Cilium, as the lab's plan has them) and Cilium's own (the
/// CiliumInternalIP and health endpoint the CiliumNode names).
fn reserved(world: &World, node: &str, net: Ipv4Net, network: Network) -> HashSet<Ipv4Addr> {
    let first = u32::from(net.network());
    let mut out: HashSet<Ipv4Addr> = [
        net.network(),
        net.broadcast(),
        Ipv4Addr::from(first.wrapping_add(1)),
    ]
    .into();
    if network == Network::Cilium
        && let Some(cn) = world.cilium_node(node)
    {
        let addrs = cn["spec"]["addresses"].as_array().into_iter().flatten();
        out.extend(addrs.filter_map(|a| a["ip"].as_str()?.parse::<Ipv4Addr>().ok()));
        out.extend(
            cn["spec"]["health"]["ipv4"]
                .as_str()
                .and_then(|s| s.parse::<Ipv4Addr>().ok()),
        );
    }
    out
}

/// Node-local allocation as host-local IPAM does it: the next free address
/// after the last one handed out, wrapping, so an address just released is
/// not reused at once.
#[derive(Default)]
pub(crate) struct Ipam {
    last: HashMap<(String, Network), u32>,
}

impl Ipam {
    /// An address on `node`'s `network` that no live pod holds, or `None`
    /// when the subnet is full (or missing).
    pub fn allocate(
        &mut self,
        world: &World,
        node: &str,
        network: Network,
        taken: &HashSet<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let net = subnet(world, node, network)?;
        let reserved = reserved(world, node, net, network);
        let base = u32::from(net.network());
        let size = 1u32.checked_shl(32 - u32::from(net.prefix_len()))?;
        let last = self.last.entry((node.to_string(), network)).or_insert(0);
        for step in 1..=size {
            let offset = (*last + step) % size;
            let addr = Ipv4Addr::from(base + offset);
            if !reserved.contains(&addr) && !taken.contains(&addr) {
                *last = offset;
                return Some(addr);
            }
        }
        None
    }
}

/// Every address a live pod holds now.
pub(crate) fn taken(world: &World) -> HashSet<Ipv4Addr> {
    world
        .pods
        .iter()
        .filter(|p| !world::pod_terminal(p) && !world::host_network(p))
        .filter_map(world::pod_ip)
        .collect()
}

/// Which of the node's networks an address belongs to (`None`: neither,
/// e.g. the node's own address for a host-network pod).
pub(crate) fn network_of_addr(world: &World, node: &str, ip: Ipv4Addr) -> Option<Network> {
    [Network::Legacy, Network::Cilium]
        .into_iter()
        .find(|n| subnet(world, node, *n).is_some_and(|s| s.contains(&ip)))
}
