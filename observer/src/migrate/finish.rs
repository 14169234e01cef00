//! After the last node: what the guide still asks for, with the pods that
//! still hold legacy addresses named.
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use serde::Serialize;

use super::{context::Options, pods, store::kube_err};
use crate::{
    Result,
    cluster::cilium::{CiliumNode, CiliumNodeConfig},
};

/// Pods listed by name before the rest is only counted.
const NAMED: usize = 20;

#[derive(Debug, Default, Serialize)]
pub struct Leftovers {
    /// Pods whose address is outside every CiliumNode's CIDRs.
    pub legacy_pods: Vec<String>,
    /// CiliumNodeConfigs to delete, as namespace/name.
    pub node_configs: Vec<String>,
}

pub async fn find(client: &Client, cilium_namespace: &str) -> Result<Leftovers> {
    let cilium: Vec<Ipv4Net> = Api::<CiliumNode>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing CiliumNodes"))?
        .items
        .iter()
        .flat_map(|n| n.spec.ipam.pod_cidrs.iter())
        .filter_map(|c| c.parse().ok())
        .collect();
    let legacy_pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing pods"))?
        .items
        .iter()
        .filter(|p| !pods::is_host_network(p) && !pods::is_finished(p))
        .filter(|p| pods::ip(p).is_some_and(|ip| !cilium.iter().any(|c| c.contains(&ip))))
        .map(pods::name)
        .collect();
    // Absent CRD or none left: nothing to delete.
    let node_configs = Api::<CiliumNodeConfig>::namespaced(client.clone(), cilium_namespace)
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|c| {
                    format!(
                        "{}/{}",
                        c.metadata.namespace.as_deref().unwrap_or_default(),
                        c.metadata.name.as_deref().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Leftovers {
        legacy_pods,
        node_configs,
    })
}

impl Leftovers {
    /// What the guide still asks, one item each; commands on their own
    /// lines.
    pub fn items(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.legacy_pods.is_empty() {
            out.push("no pod holds a legacy address any more".into());
        } else {
            let mut item = format!(
                "{} still hold legacy addresses; restart them (kubectl delete pod, or kubectl \
                 rollout restart of their owners):",
                super::count(self.legacy_pods.len(), "pod")
            );
            for p in self.legacy_pods.iter().take(NAMED) {
                item += &format!("\n{p}");
            }
            if self.legacy_pods.len() > NAMED {
                item += &format!("\n... and {} more", self.legacy_pods.len() - NAMED);
            }
            out.push(item);
        }
        out.push(
            "final Helm values, then restart the agents:\nhelm upgrade cilium cilium/cilium -n \
             kube-system --reuse-values --set operator.unmanagedPodWatcher.restart=true --set \
             cni.customConf=false --set policyEnforcementMode=default\nkubectl -n kube-system \
             rollout restart ds/cilium"
                .into(),
        );
        for c in &self.node_configs {
            let (ns, name) = c.split_once('/').unwrap_or(("kube-system", c));
            out.push(format!("kubectl -n {ns} delete ciliumnodeconfig {name}"));
        }
        out.push(
            "remove the legacy CNI (e.g. kubectl delete -f kube-flannel.yml) and its leftover \
             masquerade rules; optionally reboot every node again"
                .into(),
        );
        out.push("cilium connectivity test".into());
        out
    }

    pub fn render(&self) -> String {
        let mut out = String::from("\nwhat is left to do:\n");
        for item in self.items() {
            out += &format!("  - {}\n", item.replace('\n', "\n      "));
        }
        out
    }
}

pub async fn leftovers(client: &Client, options: &Options) -> Result<String> {
    Ok(find(client, &options.cilium_namespace).await?.render())
}
