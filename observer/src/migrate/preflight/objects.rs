//! The objects crossover's shape and index are read from, every field it
//! uses checked: a malformed Node, CiliumNode or Pod is named with its field
//! and value, never skipped in silence (the agent would leave it out, and a
//! node left out is a node whose loss nobody measures).
use std::net::IpAddr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};

use super::{Check, Facts};
use crate::cluster::derive;

const NAME: &str = "cluster-objects";
/// Problems listed in full; the rest are counted.
const LISTED: usize = 20;
/// Malformed Pods remembered while listing every Pod.
pub const MAX_MALFORMED_PODS: usize = 100;

/// What the Pods' addresses looked like, gathered page by page (only the
/// malformed are kept, so a cluster of 100k Pods costs no more memory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodAddresses {
    pub checked: u64,
    /// "Pod ns/name status.podIPs[i].ip ...", at most [`MAX_MALFORMED_PODS`].
    pub malformed: Vec<String>,
    /// Malformed beyond those listed.
    pub more: u64,
    /// The list stopped at the bound before the last page.
    pub truncated: bool,
}

impl PodAddresses {
    pub fn check(&mut self, pod: &Pod) {
        self.checked += 1;
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(status) = &pod.status else {
            return;
        };
        let single = status
            .pod_ip
            .iter()
            .map(|ip| ("status.podIP".to_string(), ip));
        let listed = status
            .pod_ips
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, ip)| (format!("status.podIPs[{i}].ip"), &ip.ip));
        for (field, value) in single.chain(listed) {
            if value.parse::<IpAddr>().is_err() {
                if self.malformed.len() < MAX_MALFORMED_PODS {
                    self.malformed
                        .push(format!("Pod {name} {field} {value:?} is not an IP address"));
                } else {
                    self.more += 1;
                }
            }
        }
    }
}

/// Fails on a field that cannot be read (crossover would misplace or drop
/// the object), warns on one that is missing or suspicious.
pub fn objects(facts: &Facts) -> Check {
    let mut fails = Vec::new();
    let mut warns = Vec::new();
    for node in &facts.nodes {
        node_problems(node, &mut fails, &mut warns);
    }
    for cn in &facts.cilium_nodes {
        let name = cn.metadata.name.as_deref().unwrap_or_default();
        for (i, address) in cn.spec.addresses.iter().enumerate() {
            if address.ip.parse::<IpAddr>().is_err() {
                fails.push(format!(
                    "CiliumNode {name} spec.addresses[{i}].ip {:?} is not an IP address",
                    address.ip
                ));
            }
        }
        for (i, cidr) in cn.spec.ipam.pod_cidrs.iter().enumerate() {
            if !cidr.contains(':') && cidr.parse::<Ipv4Net>().is_err() {
                fails.push(format!(
                    "CiliumNode {name} spec.ipam.podCIDRs[{i}] {cidr:?} is not a CIDR"
                ));
            }
        }
    }
    let pods = &facts.pods;
    fails.extend(pods.malformed.iter().cloned());
    let read = format!(
        "{} Nodes, {} CiliumNodes, {} Pods read{}",
        facts.nodes.len(),
        facts.cilium_nodes.len(),
        pods.checked,
        if pods.truncated {
            " (the Pod list stopped at its bound)"
        } else {
            ""
        }
    );
    let remedy = "fix or delete each object named (kubectl edit node NAME; kubectl edit \
                  ciliumnode NAME; a Pod's status comes from its kubelet and CNI: check \
                  that node's CNI), then run plan again";
    if !fails.is_empty() {
        let more = pods.more as usize;
        return Check::fail(NAME, listing(&read, &fails, &warns, more), remedy);
    }
    if !warns.is_empty() {
        return Check::warn(NAME, listing(&read, &fails, &warns, 0), remedy);
    }
    Check::pass(NAME, format!("{read}; every field crossover uses parses"))
}

fn node_problems(node: &KubeNode, fails: &mut Vec<String>, warns: &mut Vec<String>) {
    let name = derive::name(node);
    if derive::internal_ip(node).is_none() {
        warns.push(format!(
            "Node {name} has no IPv4 InternalIP in status.addresses: crossover leaves it out \
             (no peer, no probes)"
        ));
    }
    let Some(spec) = &node.spec else {
        return;
    };
    let cidrs: Vec<(String, &String)> = spec
        .pod_cidr
        .iter()
        .map(|c| ("spec.podCIDR".to_string(), c))
        .chain(
            spec.pod_cidrs
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c)),
        )
        .collect();
    if cidrs.is_empty() {
        warns.push(format!(
            "Node {name} has no spec.podCIDR: routed pod traffic towards it cannot name its \
             node (and Flannel needs one)"
        ));
    }
    for (field, cidr) in cidrs {
        if cidr.contains(':') {
            continue;
        }
        match cidr.parse::<Ipv4Net>() {
            Err(_) => fails.push(format!("Node {name} {field} {cidr:?} is not a CIDR")),
            Ok(net) if net.addr() != net.network() => warns.push(format!(
                "Node {name} {field} {cidr:?} has host bits set: read as {}",
                net.trunc()
            )),
            Ok(_) => {}
        }
    }
}

fn listing(read: &str, fails: &[String], warns: &[String], more: usize) -> String {
    let all: Vec<&String> = fails.iter().chain(warns).collect();
    let mut out = format!("{read}; {} problem(s):", all.len() + more);
    for line in all.iter().take(LISTED) {
        out.push_str("\n  ");
        out.push_str(line);
    }
    let left = all.len().saturating_sub(LISTED) + more;
    if left > 0 {
        out.push_str(&format!("\n  and {left} more"));
    }
    out
}
