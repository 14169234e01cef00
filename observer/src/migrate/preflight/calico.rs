//! Calico must not take `cilium_host`'s address for its node address:
//! `operator.tigera.io/v1 Installation default`
//! `spec.calicoNetwork.nodeAddressAutodetectionV4`, whose methods are
//! `firstFound` (the operator's default, which does not skip `cilium_*`),
//! `kubernetes: NodeInternalIP`, `interface`, `skipInterface`, `canReach`
//! and `cidrs`.
use std::{net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;

use super::{
    Check, Facts,
    networks::{Networks, overlaps},
};
use crate::cluster::derive::{self, CALICO_IPIP_ADDR, CALICO_VXLAN_ADDR};

/// Calico's node annotations: a Calico node without the operator has them.
const CALICO_ANNOTATIONS: [&str; 3] = [
    "projectcalico.org/IPv4Address",
    CALICO_VXLAN_ADDR,
    CALICO_IPIP_ADDR,
];

pub fn autodetection(facts: &Facts, net: &Networks) -> Check {
    const NAME: &str = "calico-node-address";
    let patch = "kubectl patch installations.operator.tigera.io default --type=merge -p \
                 '{\"spec\":{\"calicoNetwork\":{\"nodeAddressAutodetectionV4\":{\"firstFound\":false,\
                 \"kubernetes\":\"NodeInternalIP\",\"interface\":null,\"skipInterface\":null,\
                 \"canReach\":null,\"cidrs\":null}}}}'";
    let Some(calico) = &facts.calico else {
        let annotated = facts.nodes.iter().find(|n| {
            CALICO_ANNOTATIONS
                .iter()
                .any(|a| derive::annotation(n, a).is_some())
        });
        return match annotated {
            Some(node) => Check::warn(
                NAME,
                format!(
                    "node {} has Calico annotations but there is no operator.tigera.io Installation \
                     default: check calico-node's IP_AUTODETECTION_METHOD cannot pick cilium_host",
                    derive::name(node)
                ),
                "kubectl -n kube-system set env daemonset/calico-node IP_AUTODETECTION_METHOD=kubernetes-internal-ip",
            ),
            None => Check::pass(
                NAME,
                "not Calico: no operator.tigera.io Installation default, no Calico node annotations",
            ),
        };
    };
    let field = "Installation default spec.calicoNetwork.nodeAddressAutodetectionV4";
    let a = calico.autodetection_v4.clone().unwrap_or_default();
    let cilium_hit = |addr: &str| -> Option<String> {
        let cidr = Ipv4Net::from_str(addr)
            .or_else(|_| Ipv4Addr::from_str(addr).map(Ipv4Net::from))
            .ok()?;
        net.cilium
            .iter()
            .find(|c| overlaps(c, &cidr))
            .map(|c| format!("{addr} is inside Cilium's {c}, where cilium_host's address is"))
    };
    if a.kubernetes.as_deref() == Some("NodeInternalIP") {
        return Check::pass(NAME, format!("{field} kubernetes=NodeInternalIP"));
    }
    if let Some(re) = &a.interface {
        return if re.contains("cilium") {
            Check::fail(
                NAME,
                format!("{field} interface={re:?} names Cilium's devices"),
                patch,
            )
        } else if re
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        {
            Check::pass(NAME, format!("{field} interface={re:?}"))
        } else {
            Check::warn(
                NAME,
                format!(
                    "{field} interface={re:?} is a pattern: make sure it cannot match cilium_host"
                ),
                patch,
            )
        };
    }
    if let Some(re) = &a.skip_interface {
        return if re.contains("cilium") {
            Check::pass(NAME, format!("{field} skipInterface={re:?}"))
        } else {
            Check::warn(
                NAME,
                format!("{field} skipInterface={re:?} does not skip cilium_host"),
                patch,
            )
        };
    }
    if let Some(target) = &a.can_reach {
        return match cilium_hit(target) {
            Some(why) => Check::fail(NAME, format!("{field} canReach={target:?}: {why}"), patch),
            None => Check::pass(NAME, format!("{field} canReach={target:?}")),
        };
    }
    if !a.cidrs.is_empty() {
        for cidr in &a.cidrs {
            if Ipv4Net::from_str(cidr).is_err() && !cidr.contains(':') {
                return Check::fail(
                    NAME,
                    format!("{field} cidrs: {cidr:?} is not an IPv4 CIDR"),
                    patch,
                );
            }
            if let Some(why) = cilium_hit(cidr) {
                return Check::fail(NAME, format!("{field} cidrs: {why}"), patch);
            }
        }
        return Check::pass(NAME, format!("{field} cidrs={:?}", a.cidrs));
    }
    let detail = match a.first_found {
        Some(true) => format!("{field} firstFound=true"),
        _ if calico.autodetection_v4.is_none() => {
            format!("{field} is unset and the operator defaults to firstFound=true")
        }
        _ => format!("{field} sets no method Calico can use"),
    };
    Check::fail(
        NAME,
        format!(
            "{detail}: Calico may take cilium_host's address as the node's and break its routing"
        ),
        patch,
    )
}
