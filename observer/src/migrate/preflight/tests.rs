//! The checks over hand-written facts: the guide's values pass, each wrong
//! value fails (or warns) its own check, with a remedy.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node as KubeNode;
use serde_json::json;

use super::*;
use crate::cluster::cilium::CiliumNodeConfig;

fn node(j: u8, ready: bool) -> KubeNode {
    let name = if j == 0 {
        "control-plane".to_string()
    } else {
        format!("worker-{j}")
    };
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": { "kubernetes.io/hostname": name },
            "annotations": {
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/public-ip": format!("172.18.0.{}", j + 2),
            },
        },
        "spec": { "podCIDR": format!("10.244.{j}.0/24"), "podCIDRs": [format!("10.244.{j}.0/24")] },
        "status": {
            "addresses": [{ "type": "InternalIP", "address": format!("172.18.0.{}", j + 2) }],
            "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
        },
    }))
    .expect("a Node")
}

/// `values-migration.yaml` as the chart renders it into `cilium-config`.
fn migration_config() -> BTreeMap<String, String> {
    [
        ("ipam", "cluster-pool"),
        ("cluster-pool-ipv4-cidr", "10.245.0.0/16"),
        ("routing-mode", "tunnel"),
        ("tunnel-protocol", "vxlan"),
        ("tunnel-port", "8473"),
        ("enable-policy", "never"),
        ("enable-host-legacy-routing", "true"),
        ("custom-cni-conf", "true"),
        ("unmanaged-pod-watcher-interval", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn node_config(namespace: &str, selector: serde_json::Value) -> CiliumNodeConfig {
    serde_json::from_value(json!({
        "metadata": { "namespace": namespace, "name": "cilium-default" },
        "spec": {
            "nodeSelector": selector,
            "defaults": {
                "write-cni-conf-when-ready": "/host/etc/cni/net.d/05-cilium.conflist",
                "custom-cni-conf": "false",
                "cni-chaining-mode": "none",
                "cni-exclusive": "true",
            },
        },
    }))
    .expect("a CiliumNodeConfig")
}

fn guide_node_config() -> CiliumNodeConfig {
    node_config(
        "kube-system",
        json!({ "matchLabels": { "io.cilium.migration/cilium-default": "true" } }),
    )
}

/// A 3-node Flannel cluster with Cilium installed as the guide says.
fn migration_facts() -> Facts {
    let nodes: Vec<KubeNode> = (0..3).map(|j| node(j, true)).collect();
    let agents = nodes
        .iter()
        .map(|n| AgentPod {
            name: format!("crossover-agent-{}", derive_name(n)),
            node: Some(derive_name(n).to_string()),
            ready: true,
        })
        .collect();
    Facts {
        cilium_config: Some(migration_config()),
        node_configs: Some(NodeConfigs {
            api_version: "cilium.io/v2".into(),
            items: vec![guide_node_config()],
        }),
        nodes,
        agents,
        flannel: Some(FlannelConfig {
            namespace: "kube-flannel".into(),
            net_conf: Some(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#.into()),
        }),
        service_cidr: ServiceCidr::Known {
            cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            source: "--service-cidr".into(),
        },
        hooks: AgentHooks::Read {
            answered: 3,
            blind: Vec::new(),
        },
        ..Facts::default()
    }
}

fn derive_name(n: &KubeNode) -> &str {
    crate::cluster::derive::name(n)
}

fn under() -> Baseline {
    Baseline::Under {
        summary: "max loss 0.00% over 6 pairs".into(),
    }
}

fn check(facts: &Facts, name: &str) -> Check {
    checks(facts, &under())
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}"))
}

#[track_caller]
fn assert_status(facts: &Facts, name: &str, status: Status, detail_has: &str) -> Check {
    let c = check(facts, name);
    assert_eq!(c.status, status, "{name}: {c:#?}");
    assert!(
        c.detail.contains(detail_has),
        "{name} detail lacks {detail_has:?}: {}",
        c.detail
    );
    if status != Status::Pass {
        assert!(
            c.remedy.as_deref().is_some_and(|r| !r.is_empty()),
            "{name} has no remedy"
        );
    }
    c
}

fn set(facts: &mut Facts, key: &str, value: Option<&str>) {
    let config = facts.cilium_config.get_or_insert_default();
    match value {
        Some(v) => config.insert(key.into(), v.into()),
        None => config.remove(key),
    };
}

#[test]
fn guide_values_pass_every_check() {
    let all = checks(&migration_facts(), &under());
    let names: Vec<&str> = all.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "cilium-ipam",
            "cidr-disjoint-legacy",
            "cidr-disjoint-service",
            "overlays-distinct",
            "cilium-node-config",
            "cilium-policy-never",
            "cilium-host-legacy-routing",
            "cilium-cni-config",
            "cilium-unmanaged-pod-watcher",
            "calico-node-address",
            "cluster-objects",
            "nodes-ready",
            "agents-everywhere",
            "hooks-seen-first",
            "driver-host-network",
            "baseline-loss",
        ]
    );
    for c in &all {
        assert_eq!(c.status, Status::Pass, "{c:#?}");
        assert!(c.remedy.is_none());
    }
    assert!(!blocking(&all));
    let table = render(&all);
    assert!(
        table.contains("16 checks: 16 pass, 0 warn, 0 fail\n"),
        "{table}"
    );
}

#[test]
fn without_cilium_config_nothing_about_cilium_passes() {
    let mut facts = migration_facts();
    facts.cilium_config = None;
    for name in [
        "cilium-ipam",
        "cidr-disjoint-legacy",
        "cidr-disjoint-service",
        "overlays-distinct",
        "cilium-policy-never",
        "cilium-host-legacy-routing",
        "cilium-cni-config",
        "cilium-unmanaged-pod-watcher",
    ] {
        let c = assert_status(&facts, name, Status::Fail, "cilium-config");
        assert!(
            c.remedy.unwrap().contains("helm upgrade --install cilium"),
            "{name}"
        );
    }
}

#[test]
fn ipam_must_be_cluster_pool() {
    let mut facts = migration_facts();
    set(&mut facts, "ipam", Some("kubernetes"));
    let c = assert_status(&facts, "cilium-ipam", Status::Fail, "ipam=\"kubernetes\"");
    assert!(c.remedy.unwrap().contains("--set ipam.mode=cluster-pool"));
    set(&mut facts, "ipam", None);
    assert_status(&facts, "cilium-ipam", Status::Warn, "no ipam key");
}

#[test]
fn policy_enforcement_must_be_never() {
    let mut facts = migration_facts();
    set(&mut facts, "enable-policy", Some("default"));
    let c = assert_status(
        &facts,
        "cilium-policy-never",
        Status::Fail,
        "enable-policy=\"default\"",
    );
    assert_eq!(
        c.remedy.unwrap(),
        "helm upgrade cilium cilium/cilium -n kube-system --reuse-values --set policyEnforcementMode=never\n\
         kubectl -n kube-system rollout restart ds/cilium"
    );
    set(&mut facts, "enable-policy", None);
    assert_status(&facts, "cilium-policy-never", Status::Fail, "unset");
}

#[test]
fn host_legacy_routing_must_be_on() {
    let mut facts = migration_facts();
    set(&mut facts, "enable-host-legacy-routing", Some("false"));
    let c = assert_status(
        &facts,
        "cilium-host-legacy-routing",
        Status::Fail,
        "\"false\"",
    );
    assert!(
        c.remedy
            .unwrap()
            .contains("--set bpf.hostLegacyRouting=true")
    );
    set(&mut facts, "enable-host-legacy-routing", None);
    assert_status(&facts, "cilium-host-legacy-routing", Status::Fail, "unset");
}

#[test]
fn host_routing_check_says_what_crossover_sees() {
    let mut facts = migration_facts();
    let c = assert_status(
        &facts,
        "cilium-host-legacy-routing",
        Status::Pass,
        "sees every packet",
    );
    assert!(!c.detail.contains("netkit"), "{}", c.detail);
    set(&mut facts, "datapath-mode", Some("netkit"));
    assert_status(
        &facts,
        "cilium-host-legacy-routing",
        Status::Pass,
        "datapath-mode=netkit: crossover's pod hooks do not see Cilium's pods",
    );
    set(&mut facts, "datapath-mode", Some("veth"));
    set(&mut facts, "enable-host-legacy-routing", Some("false"));
    let c = assert_status(
        &facts,
        "cilium-host-legacy-routing",
        Status::Fail,
        "crossover's pod hooks also miss what Cilium redirects into its pods",
    );
    assert!(!c.detail.contains("netkit"), "{}", c.detail);
}

#[test]
fn cni_custom_conf_on_and_uninstall_off() {
    let mut facts = migration_facts();
    set(&mut facts, "cni-uninstall", Some("false"));
    assert_status(
        &facts,
        "cilium-cni-config",
        Status::Pass,
        "cni-uninstall=\"false\"",
    );
    set(&mut facts, "custom-cni-conf", Some("false"));
    let c = assert_status(
        &facts,
        "cilium-cni-config",
        Status::Fail,
        "custom-cni-conf=\"false\"",
    );
    assert!(c.remedy.unwrap().contains("--set cni.customConf=true"));
    set(&mut facts, "custom-cni-conf", Some("true"));
    set(&mut facts, "cni-uninstall", Some("true"));
    let c = assert_status(
        &facts,
        "cilium-cni-config",
        Status::Fail,
        "cni-uninstall=true",
    );
    assert!(c.remedy.unwrap().contains("--set cni.uninstall=false"));
}

#[test]
fn unmanaged_pod_watcher_must_not_restart() {
    let mut facts = migration_facts();
    set(&mut facts, "unmanaged-pod-watcher-interval", Some("15s"));
    let c = assert_status(
        &facts,
        "cilium-unmanaged-pod-watcher",
        Status::Fail,
        "\"15s\"",
    );
    let remedy = c.remedy.unwrap();
    assert!(remedy.contains("--set operator.unmanagedPodWatcher.restart=false"));
    assert!(remedy.contains("rollout restart deploy/cilium-operator"));
    set(&mut facts, "unmanaged-pod-watcher-interval", None);
    assert_status(
        &facts,
        "cilium-unmanaged-pod-watcher",
        Status::Fail,
        "no unmanaged-pod-watcher-interval",
    );
    set(
        &mut facts,
        "unmanaged-pod-watcher-interval",
        Some("sometimes"),
    );
    assert_status(
        &facts,
        "cilium-unmanaged-pod-watcher",
        Status::Fail,
        "\"sometimes\" is not an interval",
    );
}

#[test]
fn cilium_cidr_must_not_overlap_legacy() {
    let mut facts = migration_facts();
    set(
        &mut facts,
        "cluster-pool-ipv4-cidr",
        Some("10.244.128.0/17"),
    );
    let c = assert_status(
        &facts,
        "cidr-disjoint-legacy",
        Status::Fail,
        "overlaps legacy 10.244.0.0/16",
    );
    assert!(
        c.remedy
            .unwrap()
            .contains("clusterPoolIPv4PodCIDRList={10.245.0.0/16}")
    );
    // The legacy range as Flannel declares it, wider than the nodes' shares.
    set(
        &mut facts,
        "cluster-pool-ipv4-cidr",
        Some("10.244.200.0/24"),
    );
    assert_status(
        &facts,
        "cidr-disjoint-legacy",
        Status::Fail,
        "net-conf.json Network",
    );
}

#[test]
fn malformed_values_are_named_not_skipped() {
    let mut facts = migration_facts();
    set(&mut facts, "cluster-pool-ipv4-cidr", Some("10.245.0.0/33"));
    let c = check(&facts, "cidr-disjoint-legacy");
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.detail
            .contains("cluster-pool-ipv4-cidr=\"10.245.0.0/33\""),
        "{}",
        c.detail
    );

    let mut facts = migration_facts();
    set(&mut facts, "tunnel-port", Some("eighty"));
    assert_status(
        &facts,
        "overlays-distinct",
        Status::Fail,
        "tunnel-port=\"eighty\"",
    );

    let mut facts = migration_facts();
    facts.flannel.as_mut().unwrap().net_conf = Some("{\"Network\": ".into());
    assert_status(
        &facts,
        "cidr-disjoint-legacy",
        Status::Fail,
        "net-conf.json does not parse",
    );
    facts.flannel.as_mut().unwrap().net_conf = Some(r#"{"Network": "10.244.0.0/99"}"#.into());
    assert_status(
        &facts,
        "cidr-disjoint-legacy",
        Status::Fail,
        "Network=\"10.244.0.0/99\"",
    );
}

#[test]
fn service_cidr_known_inferred_unknown() {
    let mut facts = migration_facts();
    set(&mut facts, "cluster-pool-ipv4-cidr", Some("10.96.0.0/16"));
    assert_status(
        &facts,
        "cidr-disjoint-service",
        Status::Fail,
        "overlaps Service CIDR 10.96.0.0/12",
    );

    let mut facts = migration_facts();
    facts.service_cidr = ServiceCidr::Inferred {
        cidr: "10.96.0.0/24".parse().unwrap(),
        from: "the ClusterIPs of 3 Services".into(),
    };
    let c = assert_status(
        &facts,
        "cidr-disjoint-service",
        Status::Warn,
        "the real Service CIDR may be wider",
    );
    assert!(c.remedy.unwrap().contains("--service-cidr"));
    facts.service_cidr = ServiceCidr::Unknown("nothing to go by".into());
    assert_status(
        &facts,
        "cidr-disjoint-service",
        Status::Warn,
        "nothing to go by",
    );
}

#[test]
fn covering_prefix_of_cluster_ips() {
    let ips = ["10.96.0.1", "10.96.0.10", "10.96.200.7"].map(|i| i.parse().unwrap());
    assert_eq!(
        gather::covering(&ips),
        Some("10.96.0.0/16".parse().unwrap())
    );
    assert_eq!(
        gather::covering(&ips[..1]),
        Some("10.96.0.1/32".parse().unwrap())
    );
    assert_eq!(gather::covering(&[]), None);
}

#[test]
fn overlays_must_not_share_a_port() {
    let mut facts = migration_facts();
    set(&mut facts, "tunnel-port", None);
    let c = assert_status(
        &facts,
        "overlays-distinct",
        Status::Fail,
        "cannot share one UDP port",
    );
    assert!(c.detail.contains("Flannel vxlan UDP 8472"), "{}", c.detail);
    assert!(c.remedy.unwrap().contains("--set tunnelPort=8473"));
    // Another protocol on its own port is fine.
    set(&mut facts, "tunnel-protocol", Some("geneve"));
    assert_status(&facts, "overlays-distinct", Status::Pass, "Geneve UDP 6081");
    // Flannel moved to Cilium's port.
    let mut facts = migration_facts();
    facts.flannel.as_mut().unwrap().net_conf =
        Some(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": 8473}}"#.into());
    let c = assert_status(
        &facts,
        "overlays-distinct",
        Status::Fail,
        "Flannel vxlan UDP 8473",
    );
    assert!(c.remedy.unwrap().contains("--set tunnelPort=8474"));
    // No tunnel at all on Cilium's side.
    let mut facts = migration_facts();
    set(&mut facts, "routing-mode", Some("native"));
    assert_status(&facts, "overlays-distinct", Status::Fail, "native routing");
}

#[test]
fn node_config_present_selective_and_complete() {
    let mut facts = migration_facts();
    facts.node_configs = None;
    assert_status(
        &facts,
        "cilium-node-config",
        Status::Fail,
        "no CiliumNodeConfig CRD",
    );

    let mut facts = migration_facts();
    facts.node_configs.as_mut().unwrap().items.clear();
    let c = assert_status(
        &facts,
        "cilium-node-config",
        Status::Fail,
        "no CiliumNodeConfig in kube-system",
    );
    let remedy = c.remedy.unwrap();
    assert!(
        remedy.starts_with("kubectl apply --server-side -f - <<'EOF'\napiVersion: cilium.io/v2\n"),
        "{remedy}"
    );
    assert!(remedy.contains("    cni-exclusive: \"true\"\n"), "{remedy}");

    let mut facts = migration_facts();
    facts.node_configs.as_mut().unwrap().items = vec![node_config(
        "default",
        json!({ "matchLabels": { "io.cilium.migration/cilium-default": "true" } }),
    )];
    assert_status(
        &facts,
        "cilium-node-config",
        Status::Fail,
        "only reads its own namespace",
    );

    let mut facts = migration_facts();
    facts.node_configs.as_mut().unwrap().items = vec![node_config("kube-system", json!({}))];
    assert_status(
        &facts,
        "cilium-node-config",
        Status::Fail,
        "also selects nodes without the label",
    );

    let mut facts = migration_facts();
    let items = &mut facts.node_configs.as_mut().unwrap().items;
    items[0]
        .spec
        .defaults
        .insert("cni-exclusive".into(), "false".into());
    items[0].spec.defaults.remove("cni-chaining-mode");
    let c = assert_status(
        &facts,
        "cilium-node-config",
        Status::Fail,
        "cni-exclusive=\"false\" (want \"true\")",
    );
    assert!(
        c.detail.contains("cni-chaining-mode=(unset)"),
        "{}",
        c.detail
    );
    assert!(
        c.remedy
            .unwrap()
            .contains("patch ciliumnodeconfig cilium-default --type=merge")
    );
}

fn calico(autodetection: Option<serde_json::Value>) -> Facts {
    let mut facts = migration_facts();
    facts.flannel = None;
    facts.calico = Some(CalicoInstallation {
        autodetection_v4: autodetection.map(|a| serde_json::from_value(a).unwrap()),
        ip_pools: vec![CalicoIpPool {
            cidr: "192.168.0.0/16".into(),
            encapsulation: Some("VXLANCrossSubnet".into()),
        }],
    });
    facts
}

#[test]
fn calico_must_not_autodetect_cilium_host() {
    let c = assert_status(
        &calico(Some(json!({ "firstFound": true }))),
        "calico-node-address",
        Status::Fail,
        "firstFound=true",
    );
    assert!(
        c.remedy
            .unwrap()
            .contains("\"firstFound\":false,\"kubernetes\":\"NodeInternalIP\"")
    );
    assert_status(
        &calico(None),
        "calico-node-address",
        Status::Fail,
        "defaults to firstFound=true",
    );
    assert_status(
        &calico(Some(
            json!({ "firstFound": false, "kubernetes": "NodeInternalIP" }),
        )),
        "calico-node-address",
        Status::Pass,
        "kubernetes=NodeInternalIP",
    );
    assert_status(
        &calico(Some(json!({ "interface": "eth.*" }))),
        "calico-node-address",
        Status::Warn,
        "pattern",
    );
    assert_status(
        &calico(Some(json!({ "interface": "eth0" }))),
        "calico-node-address",
        Status::Pass,
        "eth0",
    );
    assert_status(
        &calico(Some(json!({ "cidrs": ["10.245.0.0/16"] }))),
        "calico-node-address",
        Status::Fail,
        "inside Cilium's 10.245.0.0/16",
    );
    // Calico's pools are the legacy CIDR, and its VXLAN port is 4789.
    let facts = calico(Some(json!({ "kubernetes": "NodeInternalIP" })));
    assert_status(
        &facts,
        "cidr-disjoint-legacy",
        Status::Pass,
        "192.168.0.0/16 (Installation default",
    );
    assert_status(
        &facts,
        "overlays-distinct",
        Status::Pass,
        "Calico VXLANCrossSubnet UDP 4789",
    );
}

#[test]
fn calico_without_operator_is_a_warning() {
    let mut facts = migration_facts();
    facts.nodes[1]
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(
            "projectcalico.org/IPv4Address".into(),
            "172.18.0.3/16".into(),
        );
    let c = assert_status(&facts, "calico-node-address", Status::Warn, "worker-1");
    assert!(
        c.remedy
            .unwrap()
            .contains("IP_AUTODETECTION_METHOD=kubernetes-internal-ip")
    );
}

#[test]
fn nodes_ready_where_it_matters() {
    let mut facts = migration_facts();
    facts.nodes[2] = node(2, false);
    let c = assert_status(&facts, "nodes-ready", Status::Fail, "NotReady: worker-2");
    assert_eq!(c.remedy.unwrap(), "kubectl describe node worker-2");
    facts.selected = Some(BTreeSet::from(["worker-1".to_string()]));
    assert_status(
        &facts,
        "nodes-ready",
        Status::Warn,
        "not to be migrated: worker-2",
    );
    facts.selected = Some(BTreeSet::new());
    assert_status(&facts, "nodes-ready", Status::Fail, "picks none");
}

#[test]
fn an_agent_on_every_node() {
    let mut facts = migration_facts();
    facts
        .agents
        .retain(|a| a.node.as_deref() != Some("worker-1"));
    facts.agents[0].ready = false;
    let c = assert_status(
        &facts,
        "agents-everywhere",
        Status::Fail,
        "on 2 of 3 Nodes: control-plane, worker-1",
    );
    assert!(c.remedy.unwrap().contains("kubectl describe node worker-1"));
    facts.agents.clear();
    assert_status(
        &facts,
        "agents-everywhere",
        Status::Fail,
        "no crossover agent pod",
    );
}

#[test]
fn baseline_is_rendered_as_given() {
    let facts = migration_facts();
    let over = Baseline::Over {
        breaches: vec!["worker-1 -> worker-2 legacy: 3.1% > 1%".into()],
    };
    let all = checks(&facts, &over);
    let c = all.iter().find(|c| c.name == "baseline-loss").unwrap();
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("worker-1 -> worker-2 legacy: 3.1% > 1%"));
    assert!(blocking(&all));
    let table = render(&all);
    assert!(table.contains("baseline-loss"), "{table}");
    assert!(table.contains("FAIL"), "{table}");
    assert!(table.contains("remedy:"), "{table}");
    assert!(
        table.ends_with("1 fail: the migration cannot start\n"),
        "{table}"
    );

    let all = checks(&facts, &Baseline::NotMeasured("--skip-baseline".into()));
    let c = all.iter().find(|c| c.name == "baseline-loss").unwrap();
    assert_eq!(c.status, Status::Warn);
    assert!(!blocking(&all));
}

#[test]
fn checks_serialize_for_json_output() {
    let c = check(&migration_facts(), "cilium-ipam");
    assert_eq!(
        serde_json::to_value(&c).unwrap(),
        json!({ "name": "cilium-ipam", "status": "pass", "detail": "cilium-config ipam=cluster-pool" })
    );
}

#[test]
fn broken_nodes_cilium_nodes_and_pods_are_named_with_their_field() {
    let mut facts = migration_facts();
    assert_status(
        &facts,
        "cluster-objects",
        Status::Pass,
        "3 Nodes, 0 CiliumNodes, 0 Pods read",
    );
    // A Node without podCIDR (and no InternalIP): warned.
    let mut bare = node(3, true);
    bare.spec.as_mut().unwrap().pod_cidr = None;
    bare.spec.as_mut().unwrap().pod_cidrs = None;
    bare.status.as_mut().unwrap().addresses = None;
    facts.nodes.push(bare);
    assert_status(
        &facts,
        "cluster-objects",
        Status::Warn,
        "Node worker-3 has no spec.podCIDR",
    );
    let c = check(&facts, "cluster-objects");
    assert!(
        c.detail.contains("Node worker-3 has no IPv4 InternalIP"),
        "{}",
        c.detail
    );
    // Unreadable values fail, each named with its field.
    facts.nodes[0].spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.0.0/33".into()]);
    facts.cilium_nodes.push(
        serde_json::from_value(json!({
            "metadata": { "name": "worker-1" },
            "spec": {
                "addresses": [{ "type": "InternalIP", "ip": "not-an-ip" }],
                "ipam": { "podCIDRs": ["bad/cidr"] },
            },
        }))
        .unwrap(),
    );
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": { "namespace": "default", "name": "web-0" },
        "status": { "podIP": "999.1.2.3", "podIPs": [{ "ip": "999.1.2.3" }] },
    }))
    .unwrap();
    facts.pods.check(&pod);
    let c = assert_status(
        &facts,
        "cluster-objects",
        Status::Fail,
        "Node control-plane spec.podCIDRs[0] \"10.244.0.0/33\" is not a CIDR",
    );
    for named in [
        "CiliumNode worker-1 spec.addresses[0].ip \"not-an-ip\" is not an IP address",
        "CiliumNode worker-1 spec.ipam.podCIDRs[0] \"bad/cidr\" is not a CIDR",
        "Pod default/web-0 status.podIP \"999.1.2.3\" is not an IP address",
        "Pod default/web-0 status.podIPs[0].ip \"999.1.2.3\" is not an IP address",
        "1 Pods read",
    ] {
        assert!(c.detail.contains(named), "{named}: {}", c.detail);
    }
    assert!(blocking(&checks(&facts, &under())));
}

#[test]
fn malformed_pods_are_kept_bounded_and_counted() {
    let mut pods = PodAddresses::default();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": { "namespace": "default", "name": "web" },
        "status": { "podIP": "nope" },
    }))
    .unwrap();
    for _ in 0..150 {
        pods.check(&pod);
    }
    assert_eq!(
        (pods.checked, pods.malformed.len(), pods.more),
        (150, 100, 50)
    );
}

#[test]
fn a_driver_on_the_pod_network_is_warned_of_its_own_connections() {
    let mut facts = migration_facts();
    assert_status(&facts, "driver-host-network", Status::Pass, "outside");
    facts.driver = DriverPlace::Pod {
        pod: "crossover/migrate-x".into(),
        host_network: true,
    };
    assert_status(
        &facts,
        "driver-host-network",
        Status::Pass,
        "pod crossover/migrate-x on its node's host network",
    );
    facts.driver = DriverPlace::Pod {
        pod: "crossover/migrate-x".into(),
        host_network: false,
    };
    let c = assert_status(
        &facts,
        "driver-host-network",
        Status::Warn,
        "its requests to the API server are not",
    );
    assert!(c.remedy.unwrap().contains("hostNetwork: true"));
    facts.driver = DriverPlace::Unknown {
        pod: "crossover/migrate-x".into(),
        reason: "pods \"migrate-x\" is forbidden".into(),
    };
    assert_status(&facts, "driver-host-network", Status::Warn, "is forbidden");
}

/// Blind hooks the agents report are named, node by node: pod hooks warn
/// (the loss figures stand), a blind underlay fails; agents not read warn.
#[test]
fn blind_hooks_are_named_and_a_blind_underlay_fails() {
    use crate::{
        datapath::{Hook, HookOrder},
        loss::blind::{BlindHooks, NodeBlind},
    };
    use observer_ebpf::Direction;
    let blind =
        |iface: &str, hook| HookOrder::from_ahead(iface, hook, Direction::Ingress, Some(vec![123]));
    let mut facts = migration_facts();
    assert_status(
        &facts,
        "hooks-seen-first",
        Status::Pass,
        "every hook of the 3 agents that answered",
    );
    let pods: Vec<HookOrder> = (0..3)
        .map(|i| blind(&format!("lxc12ab{i}"), Hook::Pod))
        .collect();
    facts.hooks = AgentHooks::Read {
        answered: 3,
        blind: vec![NodeBlind {
            node: "worker-1".into(),
            hooks: BlindHooks::of(&pods),
        }],
    };
    let c = assert_status(
        &facts,
        "hooks-seen-first",
        Status::Warn,
        "worker-1: 3 pod hooks (ingress) blind; lxc12ab0 ingress: programs [123] run first",
    );
    assert!(
        c.detail
            .contains("worker-1: its loss rows are counted on its underlay"),
        "{}",
        c.detail
    );
    assert!(c.remedy.unwrap().contains("bpftool net show dev IFACE"));
    assert!(!blocking(&checks(&facts, &under())));

    facts.hooks = AgentHooks::Read {
        answered: 3,
        blind: vec![NodeBlind {
            node: "worker-2".into(),
            hooks: BlindHooks::of(&[blind("eth0", Hook::Underlay)]),
        }],
    };
    assert_status(
        &facts,
        "hooks-seen-first",
        Status::Fail,
        "worker-2: 1 underlay hook (ingress) blind; eth0 ingress",
    );
    assert!(blocking(&checks(&facts, &under())));

    facts.hooks = AgentHooks::Read {
        answered: 0,
        blind: Vec::new(),
    };
    assert_status(
        &facts,
        "hooks-seen-first",
        Status::Warn,
        "not read: no agent answered",
    );
    facts.hooks = AgentHooks::NotRead("no agent answered".into());
    assert_status(
        &facts,
        "hooks-seen-first",
        Status::Warn,
        "not read: no agent answered",
    );
}
