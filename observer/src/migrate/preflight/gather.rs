//! Reads the API into [`Facts`]: lists and gets only, nothing is written.
//! A resource or object that is absent (404: a CRD not installed, a
//! ConfigMap not created) is a fact; any other API error is an error.
use std::{collections::BTreeSet, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Node as KubeNode, Pod, Service},
    networking::v1::ServiceCIDR,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
};
use serde::de::DeserializeOwned;

use super::{
    AgentHooks, AgentPod, CalicoInstallation, CalicoIpPool, DriverPlace, Facts, FlannelConfig,
    NodeAddressAutodetection, NodeConfigs, PreflightOptions, ServiceCidr,
};
use crate::{
    Error, Result,
    cluster::cilium::{CiliumNode, CiliumNodeConfig},
};

fn kube_error(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let context = context.into();
    move |e| Error::Kube {
        context,
        reason: e.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A list, or `None` when the resource is not served.
async fn list_opt<K>(api: &Api<K>, lp: &ListParams, what: &str) -> Result<Option<Vec<K>>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.list(lp).await {
        Ok(list) => Ok(Some(list.items)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(kube_error(format!("listing {what}"))(e)),
    }
}

/// A list that only refines a guess (the Service CIDR's sources): not
/// being allowed to read it is as good as its absence.
async fn list_hint<K>(api: &Api<K>, lp: &ListParams, what: &str) -> Result<Option<Vec<K>>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.list(lp).await {
        Ok(list) => Ok(Some(list.items)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => Ok(None),
        Err(e) => Err(kube_error(format!("listing {what}"))(e)),
    }
}

async fn get_opt<K>(api: &Api<K>, name: &str, what: &str) -> Result<Option<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(obj) => Ok(Some(obj)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(kube_error(format!("reading {what}"))(e)),
    }
}

fn dynamic(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub async fn gather(client: &Client, opts: &PreflightOptions) -> Result<Facts> {
    let all = ListParams::default();
    let nodes: Vec<KubeNode> = Api::all(client.clone())
        .list(&all)
        .await
        .map_err(kube_error("listing Nodes"))?
        .items;
    let selected = match &opts.node_selector {
        None => None,
        Some(sel) => Some(
            Api::<KubeNode>::all(client.clone())
                .list(&ListParams::default().labels(sel))
                .await
                .map_err(kube_error(format!("listing Nodes with labels {sel}")))?
                .items
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect::<BTreeSet<_>>(),
        ),
    };
    let cilium_ns = opts.cilium_namespace.as_str();
    let cilium_config = get_opt(
        &Api::<ConfigMap>::namespaced(client.clone(), cilium_ns),
        "cilium-config",
        &format!("ConfigMap {cilium_ns}/cilium-config"),
    )
    .await?
    .map(|c| c.data.unwrap_or_default());
    let cilium_nodes = list_opt(&Api::<CiliumNode>::all(client.clone()), &all, "CiliumNodes")
        .await?
        .unwrap_or_default();
    let agents = list_opt(
        &Api::<Pod>::namespaced(client.clone(), &opts.agent_namespace),
        &ListParams::default().labels(&opts.agent_selector),
        "crossover agent pods",
    )
    .await?
    .unwrap_or_default()
    .iter()
    .map(agent_pod)
    .collect();
    let (service_cidr, controller_cluster_cidrs) = service_cidr(client, opts).await?;
    Ok(Facts {
        cilium_namespace: opts.cilium_namespace.clone(),
        cilium_config,
        node_configs: node_configs(client).await?,
        nodes,
        selected,
        cilium_nodes,
        agent_namespace: opts.agent_namespace.clone(),
        agent_selector: opts.agent_selector.clone(),
        agents,
        flannel: flannel(client).await?,
        calico: calico(client).await?,
        service_cidr,
        controller_cluster_cidrs,
        overrides: opts.overrides.clone(),
        pods: pod_addresses(client).await?,
        driver: driver_place(client).await,
        hooks: AgentHooks::NotRead("the agents are read after the API".into()),
    })
}

/// Where the service account's namespace is mounted in every pod.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// This process's pod, when it runs in one: its name is the hostname
/// (unless the spec sets another), its namespace the service account's.
async fn driver_place(client: &Client) -> DriverPlace {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        return DriverPlace::Outside;
    }
    let name = std::env::var("HOSTNAME").unwrap_or_default();
    let namespace = std::fs::read_to_string(POD_NAMESPACE_FILE).unwrap_or_default();
    let pod = format!("{}/{name}", namespace.trim());
    if name.is_empty() || namespace.trim().is_empty() {
        return DriverPlace::Unknown {
            pod,
            reason: format!("no HOSTNAME or no {POD_NAMESPACE_FILE}"),
        };
    }
    match Api::<Pod>::namespaced(client.clone(), namespace.trim())
        .get(&name)
        .await
    {
        Ok(found) => DriverPlace::Pod {
            pod,
            host_network: found.spec.and_then(|s| s.host_network).unwrap_or(false),
        },
        Err(e) => DriverPlace::Unknown {
            pod,
            reason: e.to_string(),
        },
    }
}

/// Pods read before the list stops: a page at a time, only malformed ones
/// kept, so the bound is on time, not memory.
const MAX_PODS: u64 = 1_000_000;

/// Every Pod's addresses checked, page by page.
async fn pod_addresses(client: &Client) -> Result<super::PodAddresses> {
    let api = Api::<Pod>::all(client.clone());
    let mut params = ListParams::default().limit(500);
    let mut out = super::PodAddresses::default();
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(kube_error("listing Pods"))?;
        for pod in &page.items {
            out.check(pod);
        }
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(_) if out.checked >= MAX_PODS => {
                out.truncated = true;
                break;
            }
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(out)
}

fn agent_pod(pod: &Pod) -> AgentPod {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    AgentPod {
        name: pod.metadata.name.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        ready,
    }
}

/// CiliumNodeConfigs from `cilium.io/v2`, else `v2alpha1` (Cilium
/// 1.13-1.15 serve only that one).
async fn node_configs(client: &Client) -> Result<Option<NodeConfigs>> {
    for version in ["v2", "v2alpha1"] {
        let ar = dynamic(
            "cilium.io",
            version,
            "CiliumNodeConfig",
            "ciliumnodeconfigs",
        );
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let what = format!("CiliumNodeConfigs (cilium.io/{version})");
        let Some(items) = list_opt(&api, &ListParams::default(), &what).await? else {
            continue;
        };
        let items = items
            .into_iter()
            .map(|obj| {
                serde_json::to_value(obj)
                    .and_then(serde_json::from_value::<CiliumNodeConfig>)
                    .map_err(|e| Error::Kube {
                        context: format!("decoding {what}"),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(Some(NodeConfigs {
            api_version: format!("cilium.io/{version}"),
            items,
        }));
    }
    Ok(None)
}

/// `kube-flannel-cfg`: in `kube-flannel` since Flannel 0.20, `kube-system`
/// before.
async fn flannel(client: &Client) -> Result<Option<FlannelConfig>> {
    for namespace in ["kube-flannel", "kube-system"] {
        let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
        let what = format!("ConfigMap {namespace}/kube-flannel-cfg");
        if let Some(cm) = get_opt(&api, "kube-flannel-cfg", &what).await? {
            return Ok(Some(FlannelConfig {
                namespace: namespace.into(),
                net_conf: cm.data.and_then(|mut d| d.remove("net-conf.json")),
            }));
        }
    }
    Ok(None)
}

async fn calico(client: &Client) -> Result<Option<CalicoInstallation>> {
    let ar = dynamic("operator.tigera.io", "v1", "Installation", "installations");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let Some(obj) = get_opt(
        &api,
        "default",
        "Installation default (operator.tigera.io/v1)",
    )
    .await?
    else {
        return Ok(None);
    };
    let network = &obj.data["spec"]["calicoNetwork"];
    // A malformed field reads as unset: the check then fails and names
    // the field, which is what an SRE needs.
    let autodetection_v4 = serde_json::from_value::<Option<NodeAddressAutodetection>>(
        network["nodeAddressAutodetectionV4"].clone(),
    )
    .ok()
    .flatten();
    let ip_pools = serde_json::from_value::<Option<Vec<CalicoIpPool>>>(network["ipPools"].clone())
        .ok()
        .flatten()
        .unwrap_or_default();
    Ok(Some(CalicoInstallation {
        autodetection_v4,
        ip_pools,
    }))
}

/// The Service CIDR, from the most to the least certain source, and the
/// controller manager's `--cluster-cidr` met on the way.
async fn service_cidr(
    client: &Client,
    opts: &PreflightOptions,
) -> Result<(ServiceCidr, Vec<Ipv4Net>)> {
    let (flag_cidrs, cluster_cidrs) = control_plane_flags(client).await?;
    if !opts.service_cidrs.is_empty() {
        let known = ServiceCidr::Known {
            cidrs: opts.service_cidrs.clone(),
            source: "--service-cidr".into(),
        };
        return Ok((known, cluster_cidrs));
    }
    // networking.k8s.io/v1 ServiceCIDR, GA in Kubernetes 1.33.
    let objects = list_hint(
        &Api::<ServiceCIDR>::all(client.clone()),
        &ListParams::default(),
        "ServiceCIDRs",
    )
    .await?
    .unwrap_or_default();
    let api_cidrs: Vec<Ipv4Net> = objects
        .iter()
        .flat_map(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.cidrs.clone())
                .unwrap_or_default()
        })
        .filter_map(|c| Ipv4Net::from_str(&c).ok())
        .collect();
    if !api_cidrs.is_empty() {
        let known = ServiceCidr::Known {
            cidrs: api_cidrs,
            source: "ServiceCIDR objects (networking.k8s.io/v1)".into(),
        };
        return Ok((known, cluster_cidrs));
    }
    if let Some((cidrs, source)) = flag_cidrs {
        return Ok((ServiceCidr::Known { cidrs, source }, cluster_cidrs));
    }
    let services = list_hint(
        &Api::<Service>::all(client.clone()),
        &ListParams::default(),
        "Services",
    )
    .await?
    .unwrap_or_default();
    let ips: Vec<Ipv4Addr> = services
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .flat_map(|s| {
            s.cluster_ips
                .clone()
                .or_else(|| s.cluster_ip.clone().map(|i| vec![i]))
        })
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let inferred = match covering(&ips) {
        Some(cidr) => ServiceCidr::Inferred {
            cidr,
            from: format!("the ClusterIPs of {} Services", ips.len()),
        },
        None => ServiceCidr::Unknown(
            "no --service-cidr, no ServiceCIDR objects, no kube-apiserver pod, no ClusterIP".into(),
        ),
    };
    Ok((inferred, cluster_cidrs))
}

/// The smallest prefix holding every address.
pub(super) fn covering(ips: &[Ipv4Addr]) -> Option<Ipv4Net> {
    let first = u32::from(*ips.first()?);
    let differ = ips
        .iter()
        .fold(0u32, |acc, ip| acc | (u32::from(*ip) ^ first));
    let len = differ.leading_zeros().min(32) as u8;
    Ipv4Net::new(Ipv4Addr::from(first), len)
        .ok()
        .map(|n| n.trunc())
}

type FlagCidrs = Option<(Vec<Ipv4Net>, String)>;

/// `--service-cluster-ip-range` and `--cluster-cidr` from the control
/// plane's static pods, which kubeadm labels `component=<name>`.
async fn control_plane_flags(client: &Client) -> Result<(FlagCidrs, Vec<Ipv4Net>)> {
    let pods = list_hint(
        &Api::<Pod>::namespaced(client.clone(), "kube-system"),
        &ListParams::default().labels("component in (kube-apiserver,kube-controller-manager)"),
        "control plane pods in kube-system",
    )
    .await?
    .unwrap_or_default();
    let mut service = None;
    let mut cluster = Vec::new();
    for pod in &pods {
        let args = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.command.iter().flatten().chain(c.args.iter().flatten()));
        for arg in args {
            let cidrs = |v: &str| -> Vec<Ipv4Net> {
                v.split(',')
                    .filter_map(|c| Ipv4Net::from_str(c.trim()).ok())
                    .collect()
            };
            if let Some(v) = arg.strip_prefix("--service-cluster-ip-range=") {
                let name = pod.metadata.name.clone().unwrap_or_default();
                service.get_or_insert((
                    cidrs(v),
                    format!("kube-system/{name} --service-cluster-ip-range"),
                ));
            } else if let Some(v) = arg.strip_prefix("--cluster-cidr=") {
                cluster.extend(cidrs(v));
            }
        }
    }
    Ok((service.filter(|(c, _)| !c.is_empty()), cluster))
}
