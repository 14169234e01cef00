//! Objects of a cluster migrating from Flannel to Cilium, shaped like the
//! ones kind + Flannel + Cilium's migration guide leave behind, on the
//! lab's address plan (`lab::plan`): node `j` has underlay 172.18.0.(j+2),
//! Flannel subnet 10.244.j.0/24, Cilium subnet 10.245.j.0/24, and is called
//! `control-plane` (j = 0) or `worker-j`, as in the lab.
use std::collections::BTreeMap;

use k8s_openapi::{
    Resource,
    api::{
        apps::v1::{
            DaemonSet, DaemonSetSpec, DaemonSetStatus, ReplicaSet, ReplicaSetSpec, ReplicaSetStatus,
        },
        core::v1::{
            ConfigMap, Container, ContainerStatus, HostIP, Namespace, Node, NodeAddress,
            NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodIP, PodSpec, PodStatus,
            PodTemplateSpec, Service, ServicePort, ServiceSpec, Taint, Toleration,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::lab::plan::{self, Network};

/// The label that selects a node into the `cilium-default` CiliumNodeConfig.
pub const MIGRATION_LABEL: &str = "io.cilium.migration/cilium-default";
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// A k8s-openapi object as the JSON the store holds, `apiVersion` and
/// `kind` included.
pub fn to_value<K: Resource + Serialize>(obj: &K) -> Value {
    let mut v = serde_json::to_value(obj).expect("k8s-openapi objects serialize");
    v["apiVersion"] = json!(K::API_VERSION);
    v["kind"] = json!(K::KIND);
    v
}

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The lab's name for node `j`.
pub fn node_name(j: usize) -> String {
    if j == 0 {
        "control-plane".into()
    } else {
        format!("worker-{j}")
    }
}

/// Workers first, the control plane last, as the guide migrates them.
pub fn migration_order(nodes: usize) -> Vec<usize> {
    (1..nodes).chain((nodes > 0).then_some(0)).collect()
}

pub struct NodeBuilder(Node);

impl NodeBuilder {
    /// A Ready Linux node with no addresses yet.
    pub fn new(name: &str) -> Self {
        let mut m = meta(None, name);
        m.labels = Some(labels(&[
            ("kubernetes.io/hostname", name),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ]));
        NodeBuilder(Node {
            metadata: m,
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus::default()),
        })
        .ready(true)
    }

    /// Node `j` of the plan, running Flannel: InternalIP, legacy podCIDR,
    /// Flannel's annotations, the control-plane role for j = 0.
    pub fn lab(j: usize) -> Self {
        let ip = plan::underlay_addr(j).to_string();
        let b = NodeBuilder::new(&node_name(j))
            .internal_ip(&ip)
            .pod_cidr(&plan::pod_cidr(j, Network::Legacy).to_string())
            .flannel(&ip, &plan::mac(plan::MAC_FLANNEL, j));
        if j == 0 { b.control_plane() } else { b }
    }

    /// Node `j` of the plan as an EC2 instance running the AWS VPC CNI:
    /// InternalIP and `spec.providerID`, no podCIDR (no
    /// `--allocate-node-cidrs`), no CNI annotation; the control-plane role
    /// for j = 0.
    pub fn aws_lab(j: usize) -> Self {
        let ip = plan::underlay_addr(j).to_string();
        let mut b = NodeBuilder::new(&node_name(j)).internal_ip(&ip);
        b.0.spec.get_or_insert_default().provider_id =
            Some(format!("aws:///eu-west-1a/i-0lab{j:013}"));
        if j == 0 { b.control_plane() } else { b }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        let l = self.0.metadata.labels.get_or_insert_default();
        l.insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        let a = self.0.metadata.annotations.get_or_insert_default();
        a.insert(key.into(), value.into());
        self
    }

    pub fn internal_ip(mut self, ip: &str) -> Self {
        let status = self.0.status.get_or_insert_default();
        let addrs = status.addresses.get_or_insert_default();
        addrs.retain(|a| a.type_ != "InternalIP");
        addrs.push(NodeAddress {
            address: ip.into(),
            type_: "InternalIP".into(),
        });
        let name = self.0.metadata.name.clone().unwrap_or_default();
        addrs.retain(|a| a.type_ != "Hostname");
        addrs.push(NodeAddress {
            address: name,
            type_: "Hostname".into(),
        });
        self
    }

    /// `spec.podCIDR` and `spec.podCIDRs` (controller manager's allocation).
    pub fn pod_cidr(self, cidr: &str) -> Self {
        self.pod_cidrs(&[cidr])
    }

    pub fn pod_cidrs(mut self, cidrs: &[&str]) -> Self {
        let spec = self.0.spec.get_or_insert_default();
        spec.pod_cidr = cidrs.first().map(|c| c.to_string());
        spec.pod_cidrs = Some(cidrs.iter().map(|c| c.to_string()).collect());
        self
    }

    pub fn ready(mut self, ready: bool) -> Self {
        let status = self.0.status.get_or_insert_default();
        let conds = status.conditions.get_or_insert_default();
        conds.retain(|c| c.type_ != "Ready");
        conds.push(NodeCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: Some(
                if ready {
                    "KubeletReady"
                } else {
                    "KubeletNotReady"
                }
                .into(),
            ),
            message: Some(
                if ready {
                    "kubelet is posting ready status"
                } else {
                    "container runtime network not ready"
                }
                .into(),
            ),
            ..Default::default()
        });
        self
    }

    /// The control-plane role label and its NoSchedule taint.
    pub fn control_plane(mut self) -> Self {
        self = self.label(CONTROL_PLANE_LABEL, "");
        let spec = self.0.spec.get_or_insert_default();
        spec.taints.get_or_insert_default().push(Taint {
            key: CONTROL_PLANE_LABEL.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        self
    }

    /// `io.cilium.migration/cilium-default=true`: the CiliumNodeConfig
    /// applies to this node.
    pub fn cilium_default(self) -> Self {
        self.label(MIGRATION_LABEL, "true")
    }

    /// Cordoned.
    pub fn unschedulable(mut self, yes: bool) -> Self {
        self.0.spec.get_or_insert_default().unschedulable = yes.then_some(true);
        self
    }

    /// The annotations flanneld (VXLAN backend, kube subnet manager) sets.
    pub fn flannel(self, public_ip: &str, vtep_mac: &str) -> Self {
        let data = json!({ "VNI": plan::LEGACY_VNI, "VtepMAC": vtep_mac }).to_string();
        self.annotation("flannel.alpha.coreos.com/backend-data", &data)
            .annotation("flannel.alpha.coreos.com/backend-type", "vxlan")
            .annotation("flannel.alpha.coreos.com/kube-subnet-manager", "true")
            .annotation("flannel.alpha.coreos.com/public-ip", public_ip)
    }

    pub fn build(self) -> Node {
        self.0
    }

    pub fn value(self) -> Value {
        to_value(&self.0)
    }
}

/// Who created a pod.
#[derive(Clone, Debug)]
pub enum Owner {
    DaemonSet(String),
    ReplicaSet(String),
}

pub struct PodBuilder(Pod);

impl PodBuilder {
    /// A Running, Ready pod with one container.
    pub fn new(namespace: &str, name: &str) -> Self {
        PodBuilder(Pod {
            metadata: meta(Some(namespace), name),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("registry.k8s.io/pause:3.10".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus::default()),
        })
        .phase("Running")
        .ready(true)
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        let l = self.0.metadata.labels.get_or_insert_default();
        l.insert(key.into(), value.into());
        self
    }

    /// `spec.nodeName` and the node's address as `status.hostIP`.
    pub fn node(mut self, node: &str, host_ip: &str) -> Self {
        self.0.spec.get_or_insert_default().node_name = Some(node.into());
        let status = self.0.status.get_or_insert_default();
        status.host_ip = Some(host_ip.into());
        status.host_ips = Some(vec![HostIP { ip: host_ip.into() }]);
        self
    }

    /// `status.podIP` and `status.podIPs`.
    pub fn ips(mut self, ips: &[&str]) -> Self {
        let status = self.0.status.get_or_insert_default();
        status.pod_ip = ips.first().map(|i| i.to_string());
        status.pod_ips = Some(ips.iter().map(|i| PodIP { ip: i.to_string() }).collect());
        self
    }

    pub fn ip(self, ip: &str) -> Self {
        self.ips(&[ip])
    }

    pub fn phase(mut self, phase: &str) -> Self {
        self.0.status.get_or_insert_default().phase = Some(phase.into());
        self
    }

    /// The Ready condition and the container's readiness.
    pub fn ready(mut self, ready: bool) -> Self {
        let status = self.0.status.get_or_insert_default();
        let flag = if ready { "True" } else { "False" };
        let conds = status.conditions.get_or_insert_default();
        conds.retain(|c| c.type_ != "Ready");
        conds.push(PodCondition {
            type_: "Ready".into(),
            status: flag.into(),
            ..Default::default()
        });
        status.container_statuses = Some(vec![ContainerStatus {
            name: "main".into(),
            image: "registry.k8s.io/pause:3.10".into(),
            image_id: String::new(),
            ready,
            restart_count: 0,
            started: Some(ready),
            ..Default::default()
        }]);
        self
    }

    /// A controller ownerReference. The uid is derived from the owner's
    /// name; tests that check uids set the owner's uid to match.
    pub fn owner(mut self, owner: Owner) -> Self {
        let (api_version, kind, name) = match owner {
            Owner::DaemonSet(n) => ("apps/v1", "DaemonSet", n),
            Owner::ReplicaSet(n) => ("apps/v1", "ReplicaSet", n),
        };
        self.0.metadata.owner_references = Some(vec![OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            uid: format!("owner-{kind}-{name}").to_lowercase(),
            name,
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        self
    }

    /// Host-network pods have the node's address.
    pub fn host_network(mut self, yes: bool) -> Self {
        self.0.spec.get_or_insert_default().host_network = yes.then_some(true);
        self
    }

    pub fn build(self) -> Pod {
        self.0
    }

    pub fn value(self) -> Value {
        to_value(&self.0)
    }
}

/// A CiliumNode as the operator and agent leave it in cluster-pool IPAM.
/// There is no k8s-openapi type for it.
pub struct CiliumNodeBuilder(Value);

impl CiliumNodeBuilder {
    pub fn new(name: &str) -> Self {
        CiliumNodeBuilder(json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNode",
            "metadata": {
                "name": name,
                "labels": { "kubernetes.io/hostname": name },
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": name,
                    "uid": format!("owner-node-{name}"),
                }],
            },
            "spec": { "addresses": [], "ipam": { "podCIDRs": [] } },
        }))
    }

    /// Node `j` of the plan: Cilium subnet, InternalIP, `cilium_host`.
    pub fn lab(j: usize) -> Self {
        CiliumNodeBuilder::new(&node_name(j))
            .internal_ip(&plan::underlay_addr(j).to_string())
            .cilium_internal_ip(&plan::cilium_host_addr(j).to_string())
            .pod_cidr(&plan::pod_cidr(j, Network::Cilium).to_string())
    }

    fn address(mut self, kind: &str, ip: &str) -> Self {
        let addrs = self.0["spec"]["addresses"]
            .as_array_mut()
            .expect("made above");
        addrs.retain(|a| a["type"] != kind);
        addrs.push(json!({ "type": kind, "ip": ip }));
        self
    }

    pub fn internal_ip(self, ip: &str) -> Self {
        self.address("InternalIP", ip)
    }

    /// `cilium_host`'s address.
    pub fn cilium_internal_ip(self, ip: &str) -> Self {
        self.address("CiliumInternalIP", ip)
    }

    pub fn pod_cidr(mut self, cidr: &str) -> Self {
        self.0["spec"]["ipam"]["podCIDRs"] = json!([cidr]);
        self
    }

    pub fn health_ip(mut self, ip: &str) -> Self {
        self.0["spec"]["health"] = json!({ "ipv4": ip });
        self
    }

    pub fn value(self) -> Value {
        self.0
    }
}

/// `kube-system/cilium-config` after the migration guide's first phase
/// (`values-migration.yaml`): cluster-pool IPAM on its own CIDR, VXLAN on
/// 8473, no policy, legacy host routing, CNI config left to the
/// per-node CiliumNodeConfig.
pub fn cilium_config() -> Value {
    let data: BTreeMap<String, String> = [
        ("cluster-name", "default"),
        ("cluster-id", "0"),
        ("ipam", "cluster-pool"),
        ("cluster-pool-ipv4-cidr", "10.245.0.0/16"),
        ("cluster-pool-ipv4-mask-size", "24"),
        ("routing-mode", "tunnel"),
        ("tunnel-protocol", "vxlan"),
        ("tunnel-port", "8473"),
        ("enable-ipv4", "true"),
        ("enable-ipv6", "false"),
        ("enable-ipv4-masquerade", "true"),
        ("enable-policy", "never"),
        ("enable-host-legacy-routing", "true"),
        ("custom-cni-conf", "true"),
        ("cni-uninstall", "false"),
        ("cni-exclusive", "false"),
        ("unmanaged-pod-watcher-interval", "0"),
        (
            "write-cni-conf-when-ready",
            "/host/etc/cni/net.d/05-cilium.conflist",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    to_value(&ConfigMap {
        metadata: meta(Some("kube-system"), "cilium-config"),
        data: Some(data),
        ..Default::default()
    })
}

/// The guide's `kube-system/cilium-default` CiliumNodeConfig
/// (`cilium.io/v2`): nodes labelled for migration write Cilium's CNI
/// config and take the node exclusively.
pub fn cilium_node_config() -> Value {
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNodeConfig",
        "metadata": { "namespace": "kube-system", "name": "cilium-default" },
        "spec": {
            "nodeSelector": { "matchLabels": { MIGRATION_LABEL: "true" } },
            "defaults": {
                "write-cni-conf-when-ready": "/host/etc/cni/net.d/05-cilium.conflist",
                "custom-cni-conf": "false",
                "cni-chaining-mode": "none",
                "cni-exclusive": "true",
            },
        },
    })
}

pub fn namespace(name: &str) -> Value {
    to_value(&Namespace {
        metadata: meta(None, name),
        ..Default::default()
    })
}

/// A ClusterIP Service selecting `selector`, one TCP port.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    port: i32,
    selector: &[(&str, &str)],
) -> Value {
    to_value(&Service {
        metadata: meta(Some(namespace), name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            selector: (!selector.is_empty()).then(|| labels(selector)),
            ports: Some(vec![ServicePort {
                port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A DaemonSet selecting pods by `match_labels`, with its status saying
/// `nodes` pods are scheduled and ready. It tolerates every taint, as
/// Cilium's and most node agents' DaemonSets do.
pub fn daemonset(
    namespace: &str,
    name: &str,
    match_labels: &[(&str, &str)],
    host_network: bool,
    nodes: i32,
) -> Value {
    DaemonSetBuilder::new(namespace, name, match_labels)
        .host_network(host_network)
        .tolerate_everything()
        .scheduled(nodes)
        .value()
}

/// A pod template with one container and the given labels.
fn template(labels_: &BTreeMap<String, String>, image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels_.clone()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

pub struct DaemonSetBuilder(DaemonSet);

impl DaemonSetBuilder {
    /// Selects and labels its pods with `match_labels`; no tolerations,
    /// no status.
    pub fn new(namespace: &str, name: &str, match_labels: &[(&str, &str)]) -> Self {
        let l = labels(match_labels);
        DaemonSetBuilder(DaemonSet {
            metadata: meta(Some(namespace), name),
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some(l.clone()),
                    ..Default::default()
                },
                template: template(&l, &format!("example.invalid/{name}:latest")),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn pod_spec(&mut self) -> &mut PodSpec {
        let spec = self.0.spec.get_or_insert_default();
        spec.template.spec.get_or_insert_default()
    }

    pub fn host_network(mut self, yes: bool) -> Self {
        self.pod_spec().host_network = yes.then_some(true);
        self
    }

    /// `tolerations: [{operator: Exists}]`.
    pub fn tolerate_everything(mut self) -> Self {
        self.pod_spec()
            .tolerations
            .get_or_insert_default()
            .push(Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            });
        self
    }

    pub fn node_selector(mut self, pairs: &[(&str, &str)]) -> Self {
        self.pod_spec().node_selector = Some(labels(pairs));
        self
    }

    /// A status saying `nodes` pods are scheduled, ready and up to date.
    pub fn scheduled(mut self, nodes: i32) -> Self {
        self.0.status = Some(DaemonSetStatus {
            current_number_scheduled: nodes,
            desired_number_scheduled: nodes,
            number_ready: nodes,
            number_available: Some(nodes),
            updated_number_scheduled: Some(nodes),
            number_misscheduled: 0,
            ..Default::default()
        });
        self
    }

    pub fn build(self) -> DaemonSet {
        self.0
    }

    pub fn value(self) -> Value {
        to_value(&self.0)
    }
}

/// A ReplicaSet, as a Deployment leaves it: its pods carry
/// `pod-template-hash` besides the given labels.
pub struct ReplicaSetBuilder(ReplicaSet);

impl ReplicaSetBuilder {
    pub fn new(namespace: &str, name: &str, match_labels: &[(&str, &str)], replicas: i32) -> Self {
        let mut l = labels(match_labels);
        if let Some((_, hash)) = name.rsplit_once('-') {
            l.insert("pod-template-hash".into(), hash.into());
        }
        ReplicaSetBuilder(ReplicaSet {
            metadata: meta(Some(namespace), name),
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(l.clone()),
                    ..Default::default()
                },
                template: Some(template(&l, "example.invalid/app:latest")),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas,
                ready_replicas: Some(replicas),
                available_replicas: Some(replicas),
                ..Default::default()
            }),
        })
    }

    fn pod_spec(&mut self) -> &mut PodSpec {
        let spec = self.0.spec.get_or_insert_default();
        let template = spec.template.get_or_insert_default();
        template.spec.get_or_insert_default()
    }

    /// Tolerates the control plane's NoSchedule taint.
    pub fn tolerate_control_plane(mut self) -> Self {
        self.pod_spec()
            .tolerations
            .get_or_insert_default()
            .push(Toleration {
                key: Some(CONTROL_PLANE_LABEL.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            });
        self
    }

    pub fn node_selector(mut self, pairs: &[(&str, &str)]) -> Self {
        self.pod_spec().node_selector = Some(labels(pairs));
        self
    }

    pub fn build(self) -> ReplicaSet {
        self.0
    }

    pub fn value(self) -> Value {
        to_value(&self.0)
    }
}

/// A policy/v1 PodDisruptionBudget selecting pods by `match_labels`.
pub struct PdbBuilder(PodDisruptionBudget);

impl PdbBuilder {
    pub fn new(namespace: &str, name: &str, match_labels: &[(&str, &str)]) -> Self {
        PdbBuilder(PodDisruptionBudget {
            metadata: meta(Some(namespace), name),
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some(labels(match_labels)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn spec(&mut self) -> &mut PodDisruptionBudgetSpec {
        self.0.spec.get_or_insert_default()
    }

    pub fn min_available(mut self, n: i32) -> Self {
        self.spec().min_available = Some(IntOrString::Int(n));
        self
    }

    /// `"50%"` and the like.
    pub fn min_available_percent(mut self, percent: u32) -> Self {
        self.spec().min_available = Some(IntOrString::String(format!("{percent}%")));
        self
    }

    pub fn max_unavailable(mut self, n: i32) -> Self {
        self.spec().max_unavailable = Some(IntOrString::Int(n));
        self
    }

    pub fn max_unavailable_percent(mut self, percent: u32) -> Self {
        self.spec().max_unavailable = Some(IntOrString::String(format!("{percent}%")));
        self
    }

    /// `IfHealthyBudget` (the default) or `AlwaysAllow`.
    pub fn unhealthy_pod_eviction_policy(mut self, policy: &str) -> Self {
        self.spec().unhealthy_pod_eviction_policy = Some(policy.into());
        self
    }

    pub fn build(self) -> PodDisruptionBudget {
        self.0
    }

    pub fn value(self) -> Value {
        to_value(&self.0)
    }
}

/// The ReplicaSet that owns the fixture cluster's app pods.
pub const APP_REPLICASET: &str = "app-5d9c7b";

/// A cluster half way through its migration, as `lab up --nodes n
/// --migrated k` builds it: n nodes running Flannel, the first k in
/// migration order (workers first) labelled for Cilium; Cilium's agent,
/// config and CiliumNode everywhere (its overlay runs on every node);
/// on each node a host-network `cilium` and `kube-flannel` pod, a
/// `goldpinger` DaemonSet pod and `app_pods` app pods (of the ReplicaSet
/// [`APP_REPLICASET`], selector `app=app`), addressed from Cilium's subnet
/// on migrated nodes and Flannel's elsewhere.
pub fn cluster(nodes: usize, migrated: usize) -> Vec<Value> {
    cluster_with_apps(nodes, migrated, 2)
}

pub fn cluster_with_apps(nodes: usize, migrated: usize, app_pods: usize) -> Vec<Value> {
    assert!(nodes <= plan::MAX_NODES && migrated <= nodes);
    let migrated: Vec<usize> = migration_order(nodes).into_iter().take(migrated).collect();
    let n = nodes as i32;
    let mut out = vec![
        namespace("default"),
        namespace("kube-system"),
        namespace("kube-flannel"),
        service("default", "kubernetes", "10.96.0.1", 443, &[]),
        cilium_config(),
        cilium_node_config(),
        daemonset("kube-system", "cilium", &[("k8s-app", "cilium")], true, n),
        daemonset(
            "kube-flannel",
            "kube-flannel-ds",
            &[("app", "flannel")],
            true,
            n,
        ),
        daemonset("default", "goldpinger", &[("app", "goldpinger")], false, n),
    ];
    if app_pods > 0 {
        out.push(
            ReplicaSetBuilder::new(
                "default",
                APP_REPLICASET,
                &[("app", "app")],
                (nodes * app_pods) as i32,
            )
            .value(),
        );
    }
    for j in 0..nodes {
        let name = node_name(j);
        let host = plan::underlay_addr(j).to_string();
        let is_migrated = migrated.contains(&j);
        let node = NodeBuilder::lab(j);
        out.push(
            if is_migrated {
                node.cilium_default()
            } else {
                node
            }
            .value(),
        );
        out.push(CiliumNodeBuilder::lab(j).value());
        let host_pod = |ns: &str, pod: &str, ds: &str, label: (&str, &str)| {
            PodBuilder::new(ns, &format!("{pod}-{name}"))
                .label(label.0, label.1)
                .node(&name, &host)
                .ip(&host)
                .host_network(true)
                .owner(Owner::DaemonSet(ds.into()))
                .value()
        };
        out.push(host_pod(
            "kube-system",
            "cilium",
            "cilium",
            ("k8s-app", "cilium"),
        ));
        out.push(host_pod(
            "kube-flannel",
            "kube-flannel-ds",
            "kube-flannel-ds",
            ("app", "flannel"),
        ));
        let network = if is_migrated {
            Network::Cilium
        } else {
            Network::Legacy
        };
        let subnet = plan::pod_cidr(j, network);
        let pod_ip = |i: usize| plan::host(subnet, 2 + i as u8).to_string();
        out.push(
            PodBuilder::new("default", &format!("goldpinger-{name}"))
                .label("app", "goldpinger")
                .node(&name, &host)
                .ip(&pod_ip(0))
                .owner(Owner::DaemonSet("goldpinger".into()))
                .value(),
        );
        for p in 1..=app_pods {
            out.push(
                PodBuilder::new("default", &format!("app-{p}-{name}"))
                    .label("app", "app")
                    .label("pod-template-hash", "5d9c7b")
                    .node(&name, &host)
                    .ip(&pod_ip(p))
                    .owner(Owner::ReplicaSet(APP_REPLICASET.into()))
                    .value(),
            );
        }
    }
    out
}

/// `cilium_config()` with keys changed (`Some`) or removed (`None`).
pub fn cilium_config_with(changes: &[(&str, Option<&str>)]) -> Value {
    let mut config = cilium_config();
    let data = config["data"].as_object_mut().expect("made with data");
    for (key, value) in changes {
        match value {
            Some(v) => data.insert(key.to_string(), json!(v)),
            None => data.remove(*key),
        };
    }
    config
}

/// Flannel's `kube-flannel/kube-flannel-cfg` as kube-flannel.yml ships it,
/// with `net-conf.json` as given (raw, so tests can break it).
pub fn flannel_config(net_conf: &str) -> Value {
    let data = BTreeMap::from([
        ("net-conf.json".to_string(), net_conf.to_string()),
        (
            "cni-conf.json".to_string(),
            json!({ "name": "cbr0", "cniVersion": "0.3.1", "plugins": [
                { "type": "flannel", "delegate": { "hairpinMode": true, "isDefaultGateway": true } },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]})
            .to_string(),
        ),
    ]);
    to_value(&ConfigMap {
        metadata: meta(Some("kube-flannel"), "kube-flannel-cfg"),
        data: Some(data),
        ..Default::default()
    })
}

/// The lab's Flannel: 10.244.0.0/16 over VXLAN on the default port.
pub fn flannel_lab_config() -> Value {
    flannel_config(
        r#"{"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}"#,
    )
}

/// The `crossover` namespace and a Ready crossover agent pod (host
/// network, `manifests/base/agent-daemonset.yaml`'s labels) on each of the
/// first `nodes` lab nodes.
pub fn agent_pods(nodes: usize) -> Vec<Value> {
    let mut out = vec![namespace("crossover")];
    for j in 0..nodes {
        let host = plan::underlay_addr(j).to_string();
        out.push(
            PodBuilder::new("crossover", &format!("crossover-agent-{}", node_name(j)))
                .label("app.kubernetes.io/name", "crossover-agent")
                .label("app.kubernetes.io/part-of", "crossover")
                .node(&node_name(j), &host)
                .ip(&host)
                .host_network(true)
                .owner(Owner::DaemonSet("crossover-agent".into()))
                .value(),
        );
    }
    out
}

/// Calico's operator CRD `installations.operator.tigera.io`, to register
/// on a server before applying [`calico_installation`].
pub fn calico_installation_kind() -> crate::apiserver::ResourceKind {
    use crate::apiserver::{Gvr, ResourceKind};
    ResourceKind::new(
        Gvr::new("operator.tigera.io", "v1", "installations"),
        "Installation",
        false,
    )
    .with_subresources(&["status"])
}

/// `Installation default` with one VXLANCrossSubnet pool and the given
/// `nodeAddressAutodetectionV4` (`Value::Null`: unset).
pub fn calico_installation(pool_cidr: &str, autodetection_v4: Value) -> Value {
    let mut network = json!({
        "bgp": "Disabled",
        "ipPools": [{
            "name": "default-ipv4-ippool",
            "cidr": pool_cidr,
            "blockSize": 26,
            "encapsulation": "VXLANCrossSubnet",
            "natOutgoing": "Enabled",
            "nodeSelector": "all()",
        }],
    });
    if !autodetection_v4.is_null() {
        network["nodeAddressAutodetectionV4"] = autodetection_v4;
    }
    json!({
        "apiVersion": "operator.tigera.io/v1",
        "kind": "Installation",
        "metadata": { "name": "default" },
        "spec": { "calicoNetwork": network },
    })
}

/// A Calico CRD object (`crd.projectcalico.org/v1`, cluster-scoped) of
/// `kind` (`IPPool`, `BlockAffinity`) with `spec`, as Calico's KDD backend
/// stores it.
pub fn calico_object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": kind,
        "metadata": { "name": name },
        "spec": spec,
    })
}
