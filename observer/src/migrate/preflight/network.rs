//! The address plan and the overlays: Cilium's pod CIDR against the legacy
//! one and the Service CIDR, and the two overlays' UDP ports.
use std::{fmt::Write as _, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::{
    Check, Facts, ServiceCidr,
    cilium::install_remedy,
    helm_set,
    networks::{Networks, list, overlaps},
};

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
