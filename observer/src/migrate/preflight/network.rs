//! The address plan and the overlays: Cilium's pod CIDR against the legacy
//! one and the Service CIDR, the two overlays' UDP ports, and whether
//! Calico could take `cilium_host` for its node address.
//!
//! The CIDRs and overlays come from [`crate::cluster::derive`] (flags,
//! Nodes' podCIDRs, `cilium-config`), widened on the legacy side by what
//! the legacy plugin itself declares:
//! - Flannel's `kube-flannel-cfg` ConfigMap key `net-conf.json`: `Network`,
//!   `Backend.Type` and `Backend.Port` (flannel `Documentation/backends.md`:
//!   VXLAN's port "on Linux, defaults to kernel default, currently 8472");
//! - Calico's `operator.tigera.io/v1 Installation default`:
//!   `spec.calicoNetwork.ipPools[].cidr` and `.encapsulation`; Calico's VXLAN
//!   port is Felix's `vxlanPort`, 4789 by default.
use std::{fmt::Write as _, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::{Check, Facts, ServiceCidr, cilium::install_remedy, helm_set};
use crate::{
    cluster::derive::{self, CALICO_VXLAN_ADDR, ClusterObjects},
    shape::Encapsulation,
};

/// Calico's node annotations: a Calico node without the operator has them.
const CALICO_ANNOTATIONS: [&str; 3] = [
    "projectcalico.org/IPv4Address",
    CALICO_VXLAN_ADDR,
    "projectcalico.org/IPv4IPIPTunnelAddr",
];
const CALICO_VXLAN_PORT: u16 = 4789;

/// An overlay as far as a clash matters: the UDP port it listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Overlay {
    pub desc: String,
    pub udp_port: Option<u16>,
    pub source: String,
}

impl Overlay {
    fn from_encapsulation(e: Encapsulation, source: impl Into<String>) -> Self {
        let (desc, udp_port) = match e {
            Encapsulation::Vxlan { port } => (format!("VXLAN UDP {port}"), Some(port)),
            Encapsulation::Geneve { port } => (format!("Geneve UDP {port}"), Some(port)),
            Encapsulation::Native => ("native routing (no tunnel)".to_string(), None),
        };
        Overlay {
            desc,
            udp_port,
            source: source.into(),
        }
    }
}

/// Both networks, each value with where it came from and what did not
/// parse on the way.
pub(super) struct Networks {
    pub legacy: Vec<(Ipv4Net, String)>,
    pub legacy_problems: Vec<String>,
    pub cilium: Vec<Ipv4Net>,
    pub cilium_source: String,
    pub cilium_problems: Vec<String>,
    pub legacy_overlay: Overlay,
    /// The legacy overlay is a guess (no plugin recognised).
    pub legacy_overlay_assumed: bool,
    pub cilium_overlay: Option<Overlay>,
    pub cilium_overlay_problems: Vec<String>,
}

#[derive(Deserialize)]
struct NetConf {
    #[serde(rename = "Network")]
    network: Option<String>,
    #[serde(rename = "Backend")]
    backend: Option<Backend>,
}

#[derive(Deserialize)]
struct Backend {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "Port")]
    port: Option<u16>,
}

impl Networks {
    pub fn of(facts: &Facts) -> Self {
        let config = facts.cilium_config_map();
        let objects = ClusterObjects {
            nodes: facts.nodes.iter().collect(),
            cilium_nodes: facts.cilium_nodes.iter().collect(),
            cilium_config: config.as_ref(),
        };
        let derived = derive::derive(&objects, "", &facts.overrides);
        let source = |field: &str| {
            derived
                .sources
                .iter()
                .rev()
                .find(|s| s.field == field)
                .map(|s| s.from.clone())
                .unwrap_or_default()
        };
        let [legacy_net, cilium_net] = [0, 1].map(|i| derived.shape.networks[i].clone());
        let mut net = Networks {
            legacy: legacy_net
                .cidrs
                .iter()
                .map(|c| (*c, source("legacy.cidrs")))
                .collect(),
            legacy_problems: Vec::new(),
            cilium: cilium_net.cidrs.clone(),
            cilium_source: source("cilium.cidrs"),
            cilium_problems: Vec::new(),
            legacy_overlay: Overlay::from_encapsulation(
                legacy_net.encapsulation,
                source("legacy.encapsulation"),
            ),
            legacy_overlay_assumed: source("legacy.encapsulation") == "default",
            cilium_overlay: (facts.cilium_config.is_some()
                || facts.overrides.cilium_encapsulation.is_some())
            .then(|| {
                Overlay::from_encapsulation(
                    cilium_net.encapsulation,
                    source("cilium.encapsulation"),
                )
            }),
            cilium_overlay_problems: Vec::new(),
        };
        net.validate_cilium_config(facts);
        net.add_legacy_declarations(facts);
        net
    }

    /// Values derive skipped or defaulted are named here: a malformed
    /// value must fail its check, not vanish.
    fn validate_cilium_config(&mut self, facts: &Facts) {
        let Some(config) = &facts.cilium_config else {
            return;
        };
        if facts.overrides.cilium_cidrs.is_empty()
            && let Some(pool) = config.get("cluster-pool-ipv4-cidr")
        {
            for token in pool.split([' ', ',']).filter(|t| !t.is_empty()) {
                if !token.contains(':') && Ipv4Net::from_str(token).is_err() {
                    self.cilium_problems.push(format!(
                        "cilium-config cluster-pool-ipv4-cidr={pool:?}: {token:?} is not an IPv4 CIDR"
                    ));
                }
            }
        }
        if facts.overrides.cilium_encapsulation.is_none()
            && let Some(port) = config.get("tunnel-port")
            && !port.trim().parse::<u16>().is_ok_and(|p| p != 0)
        {
            self.cilium_overlay_problems.push(format!(
                "cilium-config tunnel-port={port:?} is not a UDP port"
            ));
        }
    }

    fn add_legacy_declarations(&mut self, facts: &Facts) {
        let overridden_cidrs = !facts.overrides.legacy_cidrs.is_empty();
        let overridden_overlay = facts.overrides.legacy_encapsulation.is_some();
        if let Some(flannel) = &facts.flannel {
            let what = format!("{}/kube-flannel-cfg net-conf.json", flannel.namespace);
            match flannel
                .net_conf
                .as_deref()
                .map(serde_json::from_str::<NetConf>)
            {
                None => self.legacy_problems.push(format!("{what} is missing")),
                Some(Err(e)) => self
                    .legacy_problems
                    .push(format!("{what} does not parse: {e}")),
                Some(Ok(conf)) => {
                    if !overridden_cidrs {
                        match conf.network.as_deref().map(Ipv4Net::from_str) {
                            Some(Ok(cidr)) => {
                                self.add_legacy(cidr.trunc(), format!("{what} Network"))
                            }
                            Some(Err(_)) => self.legacy_problems.push(format!(
                                "{what} Network={:?} is not an IPv4 CIDR",
                                conf.network.unwrap_or_default()
                            )),
                            None => self.legacy_problems.push(format!("{what} has no Network")),
                        }
                    }
                    if !overridden_overlay {
                        self.flannel_backend(conf.backend, &what);
                    }
                }
            }
        }
        if let Some(calico) = &facts.calico {
            let what = "Installation default spec.calicoNetwork.ipPools";
            for pool in &calico.ip_pools {
                if pool.cidr.contains(':') {
                    continue;
                }
                match Ipv4Net::from_str(&pool.cidr) {
                    Ok(cidr) if !overridden_cidrs => self.add_legacy(cidr.trunc(), what.into()),
                    Ok(_) => {}
                    Err(_) => self
                        .legacy_problems
                        .push(format!("{what} cidr={:?} is not an IPv4 CIDR", pool.cidr)),
                }
            }
            let encap = calico
                .ip_pools
                .iter()
                .filter(|p| !p.cidr.contains(':'))
                .find_map(|p| p.encapsulation.as_deref());
            if !overridden_overlay && let Some(encap) = encap {
                let udp = encap.starts_with("VXLAN").then_some(CALICO_VXLAN_PORT);
                self.legacy_overlay = Overlay {
                    desc: match udp {
                        Some(port) => format!("Calico {encap} UDP {port}"),
                        None => format!("Calico {encap} (no UDP port)"),
                    },
                    udp_port: udp,
                    source: format!("{what} encapsulation"),
                };
                self.legacy_overlay_assumed = false;
            }
        }
        if !overridden_cidrs {
            for cidr in &facts.controller_cluster_cidrs {
                self.add_legacy(*cidr, "kube-controller-manager --cluster-cidr".into());
            }
        }
    }

    fn flannel_backend(&mut self, backend: Option<Backend>, what: &str) {
        let kind = backend
            .as_ref()
            .and_then(|b| b.kind.clone())
            .unwrap_or_else(|| "udp".into());
        let port = backend.and_then(|b| b.port);
        // Defaults from flannel's Documentation/backends.md.
        let udp = match kind.to_ascii_lowercase().as_str() {
            "vxlan" => Some(port.unwrap_or(derive::FLANNEL_VXLAN_PORT)),
            "udp" => Some(port.unwrap_or(8285)),
            "wireguard" => Some(51820),
            "host-gw" | "ipip" => None,
            other => {
                self.legacy_problems.push(format!(
                    "{what} Backend.Type={other:?} is not a Flannel backend crossover knows"
                ));
                return;
            }
        };
        self.legacy_overlay = Overlay {
            desc: match udp {
                Some(p) => format!("Flannel {kind} UDP {p}"),
                None => format!("Flannel {kind} (no UDP port)"),
            },
            udp_port: udp,
            source: format!("{what} Backend"),
        };
        self.legacy_overlay_assumed = false;
    }

    fn add_legacy(&mut self, cidr: Ipv4Net, source: String) {
        if !self.legacy.iter().any(|(c, _)| *c == cidr) {
            self.legacy.push((cidr, source));
        }
    }

    fn cilium_list(&self) -> String {
        list(&self.cilium)
    }
}

fn list(cidrs: &[Ipv4Net]) -> String {
    let v: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    v.join(", ")
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first 10.x.0.0/16 clear of everything taken, starting where the
/// guide does (10.245.0.0/16).
fn free_cidr(taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    (245..=255u8)
        .chain(0..245)
        .map(|x| Ipv4Net::new(Ipv4Addr::new(10, x, 0, 0), 16).expect("a /16"))
        .find(|c| !taken.iter().any(|t| overlaps(c, t)))
}

fn new_pool_remedy(facts: &Facts, taken: &[Ipv4Net]) -> String {
    let ns = &facts.cilium_namespace;
    let cidr = free_cidr(taken).map_or_else(|| "<a free /16>".to_string(), |c| c.to_string());
    format!(
        "# before any node is migrated; CiliumNodes keep their podCIDRs until deleted\n{}\n\
         kubectl delete ciliumnodes --all\n\
         kubectl -n {ns} rollout restart ds/cilium",
        helm_set(
            ns,
            &[&format!(
                "'ipam.operator.clusterPoolIPv4PodCIDRList={{{cidr}}}'"
            )],
            "deploy/cilium-operator",
        )
    )
}

/// A check on Cilium's CIDRs that cannot even start: none known, or some
/// malformed.
fn cilium_cidrs_unusable(name: &'static str, facts: &Facts, net: &Networks) -> Option<Check> {
    if !net.cilium_problems.is_empty() {
        return Some(Check::fail(
            name,
            net.cilium_problems.join("; "),
            new_pool_remedy(
                facts,
                &net.legacy.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            ),
        ));
    }
    if net.cilium.is_empty() {
        let detail = if facts.cilium_config.is_none() {
            format!(
                "Cilium's pod CIDR is unknown: ConfigMap {}/cilium-config not found and no --cilium-cidr",
                facts.cilium_namespace
            )
        } else {
            format!(
                "Cilium's pod CIDR is unknown: no cluster-pool-ipv4-cidr in cilium-config and no \
                 CiliumNode has spec.ipam.podCIDRs (source: {})",
                net.cilium_source
            )
        };
        return Some(Check::fail(
            name,
            detail,
            install_remedy(&facts.cilium_namespace),
        ));
    }
    None
}

pub fn cilium_cidr_vs_legacy(facts: &Facts, net: &Networks) -> Check {
    const NAME: &str = "cidr-disjoint-legacy";
    if let Some(check) = cilium_cidrs_unusable(NAME, facts, net) {
        return check;
    }
    let taken: Vec<Ipv4Net> = net.legacy.iter().map(|(c, _)| *c).collect();
    let clashes: Vec<String> = net
        .legacy
        .iter()
        .flat_map(|(l, source)| {
            net.cilium
                .iter()
                .filter(move |c| overlaps(c, l))
                .map(move |c| format!("Cilium {c} overlaps legacy {l} ({source})"))
        })
        .collect();
    let cilium = format!("Cilium {} ({})", net.cilium_list(), net.cilium_source);
    if !clashes.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "{}: a pod address must say which network it is on",
                clashes.join("; ")
            ),
            new_pool_remedy(facts, &taken),
        );
    }
    if !net.legacy_problems.is_empty() || net.legacy.is_empty() {
        let mut detail = net.legacy_problems.join("; ");
        if net.legacy.is_empty() {
            if !detail.is_empty() {
                detail.push_str("; ");
            }
            detail.push_str("the legacy cluster CIDR is unknown (no Node spec.podCIDRs, no Flannel or Calico config)");
        }
        return Check::fail(
            NAME,
            format!("{detail}; {cilium}"),
            "crossover migrate plan --legacy-cidr <the legacy cluster CIDR>  # or fix the value named above",
        );
    }
    let legacy: Vec<String> = net
        .legacy
        .iter()
        .map(|(c, s)| format!("{c} ({s})"))
        .collect();
    Check::pass(
        NAME,
        format!("{cilium} is disjoint from legacy {}", legacy.join(", ")),
    )
}

pub fn cilium_cidr_vs_service(facts: &Facts, net: &Networks) -> Check {
    const NAME: &str = "cidr-disjoint-service";
    if let Some(check) = cilium_cidrs_unusable(NAME, facts, net) {
        return check;
    }
    let cilium = format!("Cilium {}", net.cilium_list());
    let ask = "crossover migrate plan --service-cidr <CIDR>  # kubeadm: kubectl -n kube-system get pod \
               -l component=kube-apiserver -o yaml | grep service-cluster-ip-range";
    let (service, source, inferred) = match &facts.service_cidr {
        ServiceCidr::Known { cidrs, source } => (cidrs.clone(), source.clone(), false),
        ServiceCidr::Inferred { cidr, from } => (vec![*cidr], from.clone(), true),
        ServiceCidr::Unknown(why) => {
            return Check::warn(
                NAME,
                format!("the Service CIDR is unknown ({why}); {cilium} could overlap it"),
                ask,
            );
        }
    };
    let mut taken: Vec<Ipv4Net> = net.legacy.iter().map(|(c, _)| *c).collect();
    taken.extend(&service);
    let clashes: Vec<String> = service
        .iter()
        .flat_map(|s| {
            net.cilium
                .iter()
                .filter(move |c| overlaps(c, s))
                .map(move |c| format!("Cilium {c} overlaps Service CIDR {s}"))
        })
        .collect();
    if !clashes.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "{} ({source}): pod and Service addresses would be ambiguous",
                clashes.join("; ")
            ),
            new_pool_remedy(facts, &taken),
        );
    }
    if inferred {
        return Check::warn(
            NAME,
            format!(
                "{cilium} is disjoint from {}, but that is only the smallest range holding {source}; \
                 the real Service CIDR may be wider",
                list(&service)
            ),
            ask,
        );
    }
    Check::pass(
        NAME,
        format!(
            "{cilium} is disjoint from Service CIDR {} ({source})",
            list(&service)
        ),
    )
}

pub fn overlays(facts: &Facts, net: &Networks) -> Check {
    const NAME: &str = "overlays-distinct";
    let ns = &facts.cilium_namespace;
    let legacy = &net.legacy_overlay;
    let Some(cilium) = &net.cilium_overlay else {
        return Check::fail(
            NAME,
            format!(
                "ConfigMap {ns}/cilium-config not found: Cilium's overlay is unknown (legacy: {} from {})",
                legacy.desc, legacy.source
            ),
            install_remedy(ns),
        );
    };
    let free_port = if legacy.udp_port == Some(8473) {
        8474
    } else {
        8473
    };
    let retunnel = helm_set(
        ns,
        &[
            "routingMode=tunnel",
            "tunnelProtocol=vxlan",
            &format!("tunnelPort={free_port}"),
        ],
        "ds/cilium",
    );
    let both = format!(
        "legacy {} ({}), Cilium {} ({})",
        legacy.desc, legacy.source, cilium.desc, cilium.source
    );
    if !net.cilium_overlay_problems.is_empty() {
        return Check::fail(
            NAME,
            format!("{}; {both}", net.cilium_overlay_problems.join("; ")),
            retunnel,
        );
    }
    if cilium.udp_port.is_none() {
        return Check::fail(
            NAME,
            format!(
                "{both}: the documented migration runs Cilium's own overlay beside the legacy one"
            ),
            retunnel,
        );
    }
    if legacy.udp_port == cilium.udp_port {
        return Check::fail(
            NAME,
            format!("{both}: two tunnel devices cannot share one UDP port on a host"),
            retunnel,
        );
    }
    if net.legacy_overlay_assumed || !net.legacy_problems.is_empty() {
        let mut detail = both;
        for p in &net.legacy_problems {
            let _ = write!(detail, "; {p}");
        }
        return Check::warn(
            NAME,
            format!("{detail}; the legacy overlay is a guess"),
            "crossover migrate plan --legacy-encapsulation vxlan:PORT|geneve:PORT|native",
        );
    }
    Check::pass(NAME, both)
}

pub fn calico_autodetection(facts: &Facts, net: &Networks) -> Check {
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
