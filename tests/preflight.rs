//! `crossover migrate plan`'s preflight checks against the fake API server
//! over HTTP: the lab cluster with Cilium installed per the migration guide
//! passes; each documented mistake fails (or warns) its named check.
//! No root needed.
use crossover_tests::apiserver::{
    FakeApiServer, Gvr, Options, Registry,
    fixtures::{self, NodeBuilder},
};
use observer::migrate::preflight::{self, Baseline, Check, PreflightOptions, ServiceCidr, Status};
use serde_json::{Value, json};

const NODES: usize = 3;

/// `fixtures::cluster` (Flannel, Cilium in migration mode, the guide's
/// CiliumNodeConfig) plus Flannel's net-conf and an agent on every node.
fn guide_cluster() -> Vec<Value> {
    let mut objects = fixtures::cluster(NODES, 0);
    objects.push(fixtures::flannel_lab_config());
    objects.extend(fixtures::agent_pods(NODES));
    objects
}

fn server(objects: Vec<Value>) -> FakeApiServer {
    let server = FakeApiServer::start().expect("fake API server starts");
    for obj in objects {
        server.apply(obj).expect("fixture applies");
    }
    server
}

fn options() -> PreflightOptions {
    PreflightOptions {
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..PreflightOptions::default()
    }
}

async fn run(server: &FakeApiServer, opts: &PreflightOptions) -> Vec<Check> {
    let mut facts = preflight::gather(&server.client(), opts)
        .await
        .expect("gather reads the fake API");
    // The agents' hooks come from the driver's reading of them, not the
    // API: every hook of the three seeing first.
    facts.hooks = preflight::AgentHooks::Read {
        answered: 3,
        blind: Vec::new(),
    };
    preflight::checks(
        &facts,
        &Baseline::Under {
            summary: "no loss".into(),
        },
    )
}

#[track_caller]
fn assert_check(checks: &[Check], name: &str, status: Status, detail_has: &str) {
    let c = checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}"));
    assert_eq!(
        c.status,
        status,
        "{name}: {c:#?}\n{}",
        preflight::render(checks)
    );
    assert!(
        c.detail.contains(detail_has),
        "{name}: {:?} lacks {detail_has:?}",
        c.detail
    );
    if status != Status::Pass {
        assert!(c.remedy.is_some(), "{name} has no remedy");
    }
}

/// Only `name` is not Pass: every mistake is reported where it belongs.
#[track_caller]
fn assert_only(checks: &[Check], name: &str, status: Status, detail_has: &str) {
    assert_check(checks, name, status, detail_has);
    for c in checks.iter().filter(|c| c.name != name) {
        assert_eq!(
            c.status,
            Status::Pass,
            "{c:#?}\n{}",
            preflight::render(checks)
        );
    }
}

#[tokio::test]
async fn the_guides_cluster_passes_every_check() {
    let server = server(guide_cluster());
    let checks = run(&server, &options()).await;
    for c in &checks {
        assert_eq!(
            c.status,
            Status::Pass,
            "{c:#?}\n{}",
            preflight::render(&checks)
        );
    }
    assert!(!preflight::blocking(&checks));
    assert_check(
        &checks,
        "cidr-disjoint-legacy",
        Status::Pass,
        "kube-flannel/kube-flannel-cfg net-conf.json Network",
    );
    assert_check(
        &checks,
        "cilium-node-config",
        Status::Pass,
        "kube-system/cilium-default",
    );
    assert_check(
        &checks,
        "agents-everywhere",
        Status::Pass,
        "each of the 3 Nodes",
    );
}

#[tokio::test]
async fn policy_enforcement_left_on_fails() {
    let mut objects = guide_cluster();
    objects.push(fixtures::cilium_config_with(&[(
        "enable-policy",
        Some("default"),
    )]));
    let checks = run(&server(objects), &options()).await;
    assert_only(
        &checks,
        "cilium-policy-never",
        Status::Fail,
        "enable-policy=\"default\"",
    );
}

#[tokio::test]
async fn missing_node_config_fails() {
    let server = server(guide_cluster());
    server
        .delete(
            &Gvr::cilium_node_configs(),
            Some("kube-system"),
            "cilium-default",
        )
        .expect("deleted");
    let checks = run(&server, &options()).await;
    assert_only(
        &checks,
        "cilium-node-config",
        Status::Fail,
        "no CiliumNodeConfig in kube-system",
    );
}

/// Cilium 1.13-1.15 serve CiliumNodeConfig as `cilium.io/v2alpha1` only.
#[tokio::test]
async fn the_older_v2alpha1_node_config_is_read() {
    let mut registry = Registry::default();
    for kind in Registry::cluster()
        .all()
        .filter(|k| k.gvr != Gvr::cilium_node_configs())
    {
        registry.register((**kind).clone());
    }
    let server = FakeApiServer::start_with(Options {
        registry,
        ..Options::default()
    })
    .expect("starts");
    for mut obj in guide_cluster() {
        if obj["kind"] == "CiliumNodeConfig" {
            obj["apiVersion"] = json!("cilium.io/v2alpha1");
        }
        server.apply(obj).expect("applies");
    }
    let checks = run(&server, &options()).await;
    assert_check(
        &checks,
        "cilium-node-config",
        Status::Pass,
        "kube-system/cilium-default",
    );

    server
        .delete(
            &Gvr::new("cilium.io", "v2alpha1", "ciliumnodeconfigs"),
            Some("kube-system"),
            "cilium-default",
        )
        .expect("deleted");
    let checks = run(&server, &options()).await;
    let c = checks
        .iter()
        .find(|c| c.name == "cilium-node-config")
        .unwrap();
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.remedy
            .as_deref()
            .unwrap()
            .contains("apiVersion: cilium.io/v2alpha1\n")
    );
}

#[tokio::test]
async fn overlapping_cidr_fails() {
    let mut objects = guide_cluster();
    objects.push(fixtures::cilium_config_with(&[(
        "cluster-pool-ipv4-cidr",
        Some("10.244.0.0/16"),
    )]));
    let checks = run(&server(objects), &options()).await;
    assert_only(
        &checks,
        "cidr-disjoint-legacy",
        Status::Fail,
        "Cilium 10.244.0.0/16 overlaps legacy 10.244.0.0/16 (kube-flannel/kube-flannel-cfg net-conf.json Network)",
    );
}

#[tokio::test]
async fn shared_vxlan_port_fails() {
    let mut objects = guide_cluster();
    objects.push(fixtures::cilium_config_with(&[("tunnel-port", None)]));
    let checks = run(&server(objects), &options()).await;
    assert_only(
        &checks,
        "overlays-distinct",
        Status::Fail,
        "cannot share one UDP port",
    );
}

#[tokio::test]
async fn unparsable_net_conf_is_named() {
    let mut objects = guide_cluster();
    objects.push(fixtures::flannel_config(
        "{ \"Network\": \"10.244.0.0/16\", ",
    ));
    let checks = run(&server(objects), &options()).await;
    assert_check(
        &checks,
        "cidr-disjoint-legacy",
        Status::Fail,
        "kube-flannel/kube-flannel-cfg net-conf.json does not parse",
    );
}

#[tokio::test]
async fn not_ready_node_fails() {
    let mut objects = guide_cluster();
    objects.push(NodeBuilder::lab(2).ready(false).value());
    let checks = run(&server(objects), &options()).await;
    assert_only(&checks, "nodes-ready", Status::Fail, "NotReady: worker-2");
}

#[tokio::test]
async fn not_ready_node_outside_the_selection_warns() {
    let mut objects = guide_cluster();
    objects.push(NodeBuilder::lab(2).ready(false).value());
    let opts = PreflightOptions {
        node_selector: Some("kubernetes.io/hostname in (worker-1,control-plane)".into()),
        ..options()
    };
    let checks = run(&server(objects), &opts).await;
    assert_only(
        &checks,
        "nodes-ready",
        Status::Warn,
        "not to be migrated: worker-2",
    );
}

#[tokio::test]
async fn node_without_agent_fails() {
    let server = server(guide_cluster());
    server
        .delete(
            &Gvr::new("", "v1", "pods"),
            Some("crossover"),
            "crossover-agent-worker-1",
        )
        .expect("deleted");
    let checks = run(&server, &options()).await;
    assert_only(
        &checks,
        "agents-everywhere",
        Status::Fail,
        "no Ready crossover agent on 1 of 3 Nodes: worker-1",
    );
}

#[tokio::test]
async fn calico_first_found_fails() {
    let mut objects: Vec<Value> = guide_cluster()
        .into_iter()
        .filter(|o| o["metadata"]["name"] != "kube-flannel-cfg")
        .collect();
    objects.push(fixtures::calico_installation(
        "192.168.0.0/16",
        json!({ "firstFound": true }),
    ));
    let server = FakeApiServer::start().expect("starts");
    server.register(fixtures::calico_installation_kind());
    for obj in objects {
        server.apply(obj).expect("applies");
    }
    let checks = run(&server, &options()).await;
    assert_check(
        &checks,
        "calico-node-address",
        Status::Fail,
        "firstFound=true",
    );
    // Its pool counts as legacy, its VXLAN port is Calico's.
    assert_check(
        &checks,
        "cidr-disjoint-legacy",
        Status::Pass,
        "192.168.0.0/16 (Installation default",
    );
    assert_check(
        &checks,
        "overlays-distinct",
        Status::Pass,
        "Calico VXLANCrossSubnet UDP 4789",
    );

    server
        .apply(fixtures::calico_installation(
            "192.168.0.0/16",
            json!({ "firstFound": false, "kubernetes": "NodeInternalIP" }),
        ))
        .expect("applies");
    let checks = run(&server, &options()).await;
    assert_check(
        &checks,
        "calico-node-address",
        Status::Pass,
        "kubernetes=NodeInternalIP",
    );
}

#[tokio::test]
async fn service_cidr_is_inferred_and_says_so() {
    let server = server(guide_cluster());
    let facts = preflight::gather(&server.client(), &PreflightOptions::default())
        .await
        .expect("gathers");
    assert_eq!(
        facts.service_cidr,
        ServiceCidr::Inferred {
            cidr: "10.96.0.1/32".parse().unwrap(),
            from: "the ClusterIPs of 1 Services".into(),
        }
    );
    let checks = preflight::checks(&facts, &Baseline::NotMeasured("test".into()));
    assert_check(
        &checks,
        "cidr-disjoint-service",
        Status::Warn,
        "the real Service CIDR may be wider",
    );
}

#[tokio::test]
async fn no_cilium_yet_is_a_fact_not_an_error() {
    let objects: Vec<Value> = guide_cluster()
        .into_iter()
        .filter(|o| o["metadata"]["name"] != "cilium-config")
        .collect();
    let server = server(objects);
    let checks = run(&server, &options()).await;
    assert_check(
        &checks,
        "cilium-ipam",
        Status::Fail,
        "kube-system/cilium-config not found",
    );
    assert!(preflight::blocking(&checks));
    let table = preflight::render(&checks);
    assert!(
        table.contains("helm upgrade --install cilium cilium/cilium -n kube-system"),
        "{table}"
    );
    assert!(table.contains("remedy: as for cilium-ipam"), "{table}");
}

#[tokio::test]
async fn broken_objects_are_named_through_the_api() {
    let mut objects = guide_cluster();
    objects.push(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "namespace": "default", "name": "web-0" },
        "spec": { "nodeName": "worker-1", "containers": [{ "name": "web", "image": "web" }] },
        "status": { "phase": "Running", "podIP": "999.1.2.3", "podIPs": [{ "ip": "999.1.2.3" }] },
    }));
    let checks = run(&server(objects), &options()).await;
    assert_only(
        &checks,
        "cluster-objects",
        Status::Fail,
        "Pod default/web-0 status.podIP \"999.1.2.3\" is not an IP address",
    );
    let c = checks.iter().find(|c| c.name == "cluster-objects").unwrap();
    assert!(c.detail.contains("3 Nodes, 3 CiliumNodes,"), "{}", c.detail);
}
