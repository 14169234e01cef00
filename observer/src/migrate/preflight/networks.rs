//! Both networks as the checks see them: each CIDR and overlay with where
//! it came from, and every value that did not parse.
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
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::Facts;
use crate::{
    cluster::derive::{self, ClusterObjects},
    shape::Encapsulation,
};

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
            Encapsulation::Ipip => ("IP-in-IP (IPv4 protocol 4)".to_string(), None),
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
            ..ClusterObjects::default()
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

    pub(super) fn cilium_list(&self) -> String {
        list(&self.cilium)
    }
}

pub(super) fn list(cidrs: &[Ipv4Net]) -> String {
    let v: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    v.join(", ")
}

pub(super) fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
