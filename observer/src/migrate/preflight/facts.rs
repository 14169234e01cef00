//! Everything the checks read, as plain data: what [`super::gather`] found
//! in the API, or what a test writes down. Absence is a fact here (a
//! ConfigMap not found, a CRD not served), never an error.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ConfigMap, Node as KubeNode};
use serde::Deserialize;

use crate::cluster::{
    cilium::{CiliumNode, CiliumNodeConfig},
    derive::ShapeOverrides,
};

#[derive(Clone, Debug)]
pub struct Facts {
    pub cilium_namespace: String,
    /// `cilium-config`'s data; `None`: the ConfigMap does not exist.
    pub cilium_config: Option<BTreeMap<String, String>>,
    /// `None`: no version of the CiliumNodeConfig CRD is served.
    pub node_configs: Option<NodeConfigs>,
    pub nodes: Vec<KubeNode>,
    /// Names of the nodes to migrate; `None`: all of them.
    pub selected: Option<BTreeSet<String>>,
    pub cilium_nodes: Vec<CiliumNode>,
    pub agent_namespace: String,
    pub agent_selector: String,
    pub agents: Vec<AgentPod>,
    /// Flannel's `kube-flannel-cfg`; `None`: not found.
    pub flannel: Option<FlannelConfig>,
    /// Calico's operator `Installation default`; `None`: not found.
    pub calico: Option<CalicoInstallation>,
    pub service_cidr: ServiceCidr,
    /// kube-controller-manager's `--cluster-cidr`, when its static pod is
    /// visible (kubeadm): the legacy cluster CIDR as Kubernetes allocates it.
    pub controller_cluster_cidrs: Vec<Ipv4Net>,
    pub overrides: ShapeOverrides,
    /// Every Pod's addresses, checked as they were listed.
    pub pods: super::PodAddresses,
    /// Where this driver itself runs.
    pub driver: DriverPlace,
    /// What the agents' readings say of their hooks (not the API's: set
    /// from the baseline reading).
    pub hooks: AgentHooks,
}

/// The agents' blind hooks (docs/hooks.md), from their readings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentHooks {
    /// No reading of the agents (why).
    NotRead(String),
    /// The nodes with blind hooks, of `answered` agents that answered.
    Read {
        answered: usize,
        blind: Vec<crate::loss::blind::NodeBlind>,
    },
}

/// Where the driver runs, for whether its own connections can be judged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DriverPlace {
    /// Not in a pod (no `KUBERNETES_SERVICE_HOST`): a workstation, a node.
    #[default]
    Outside,
    /// In pod `namespace/name`, on its node's host network or not.
    Pod { pod: String, host_network: bool },
    /// In a pod that could not be read (named, with why).
    Unknown { pod: String, reason: String },
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            cilium_namespace: "kube-system".into(),
            cilium_config: None,
            node_configs: None,
            nodes: Vec::new(),
            selected: None,
            cilium_nodes: Vec::new(),
            agent_namespace: "crossover".into(),
            agent_selector: "app.kubernetes.io/name=crossover-agent".into(),
            agents: Vec::new(),
            flannel: None,
            calico: None,
            service_cidr: ServiceCidr::Unknown("not gathered".into()),
            controller_cluster_cidrs: Vec::new(),
            overrides: ShapeOverrides::default(),
            pods: super::PodAddresses::default(),
            driver: DriverPlace::Outside,
            hooks: AgentHooks::NotRead("the agents were not read".into()),
        }
    }
}

impl Facts {
    /// `cilium-config` as the ConfigMap [`crate::cluster::derive`] reads.
    pub(super) fn cilium_config_map(&self) -> Option<ConfigMap> {
        self.cilium_config.as_ref().map(|data| ConfigMap {
            data: Some(data.clone()),
            ..ConfigMap::default()
        })
    }

    pub(super) fn is_selected(&self, node: &str) -> bool {
        self.selected.as_ref().is_none_or(|s| s.contains(node))
    }
}

/// The CiliumNodeConfigs of every namespace, from the newest served version.
#[derive(Clone, Debug, Default)]
pub struct NodeConfigs {
    /// `cilium.io/v2` (Cilium >= 1.16) or `cilium.io/v2alpha1` (1.13-1.15).
    pub api_version: String,
    pub items: Vec<CiliumNodeConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPod {
    pub name: String,
    pub node: Option<String>,
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlannelConfig {
    pub namespace: String,
    /// The raw `net-conf.json`; `None`: the key is missing.
    pub net_conf: Option<String>,
}

/// The parts of `operator.tigera.io/v1 Installation` the checks read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CalicoInstallation {
    /// `spec.calicoNetwork.nodeAddressAutodetectionV4`; `None`: unset, and
    /// the operator then defaults to `firstFound: true`.
    pub autodetection_v4: Option<NodeAddressAutodetection>,
    /// `spec.calicoNetwork.ipPools`.
    pub ip_pools: Vec<CalicoIpPool>,
}

/// Calico's `NodeAddressAutodetection`: one method is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAddressAutodetection {
    pub first_found: Option<bool>,
    pub kubernetes: Option<String>,
    pub interface: Option<String>,
    pub skip_interface: Option<String>,
    pub can_reach: Option<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalicoIpPool {
    #[serde(default)]
    pub cidr: String,
    /// `VXLAN`, `VXLANCrossSubnet`, `IPIP`, `IPIPCrossSubnet` or `None`.
    pub encapsulation: Option<String>,
}

/// Where the Service CIDR came from. Only a flag, the `ServiceCIDR` API
/// (Kubernetes >= 1.33) or the API server's own flag are known; a range
/// inferred from ClusterIPs is a lower bound and says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceCidr {
    Known {
        cidrs: Vec<Ipv4Net>,
        source: String,
    },
    /// The smallest prefix holding every ClusterIP seen.
    Inferred {
        cidr: Ipv4Net,
        from: String,
    },
    Unknown(String),
}
