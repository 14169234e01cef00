//! Agents that know the cluster only through the API: a lab whose nodes run
//! `crossover agent --kubeconfig`, against the fake API server serving the
//! lab's own nodes, CiliumNodes, `cilium-config` and pods. The shape comes
//! from the objects, follows them as they change, and probes catch a quiet
//! blackholed pair. Needs root (namespaces, programs in the kernel).
use std::{
    net::TcpListener,
    process::{Child, Command},
    time::{Duration, Instant},
};

use crossover_tests::{
    apiserver::{
        FakeApiServer, Gvr,
        fixtures::{self, PodBuilder},
    },
    lab::{Fault, Lab, LabSpec, Overlay, PodKind, plan},
    netns::{http_get, in_netns, sh, unique},
    require_root,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde_json::{Value, json};

const CROSSOVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/crossover");
const PORT: u16 = 9190;
const PROBE_PORT: u16 = 9191;
/// The API server's address on the lab's underlay bridge.
const API_ADDR: &str = "172.18.0.1";

/// The lab as the API sees it: the fixture cluster's nodes, CiliumNodes and
/// configuration, with the lab's real pods instead of the fixture's, the
/// agent pods (host network) and the lab's DaemonSet pods as probe pods.
fn objects(lab: &Lab) -> Vec<Value> {
    let nodes = lab.nodes().count();
    let migrated = lab.nodes().filter(|n| n.migrated).count();
    let mut out: Vec<Value> = fixtures::cluster_with_apps(nodes, migrated, 0)
        .into_iter()
        .filter(|o| o["kind"] != "Pod")
        .collect();
    out.push(fixtures::namespace("crossover"));
    for (j, node) in lab.nodes().enumerate() {
        let host = plan::underlay_addr(j).to_string();
        out.push(
            PodBuilder::new("crossover", &format!("crossover-agent-{j}"))
                .node(&node.name, &host)
                .ip(&host)
                .host_network(true)
                .label("app.kubernetes.io/name", "crossover-agent")
                .value(),
        );
        for pod in &node.pods {
            let probe = pod.kind == PodKind::DaemonSet;
            let (key, value) = if probe {
                ("app.kubernetes.io/name", "crossover-probe")
            } else {
                ("app", "demo")
            };
            out.push(
                // Lab pod names repeat per node; the API's are unique.
                PodBuilder::new("default", &format!("{}-{}", node.name, pod.name))
                    .node(&node.name, &host)
                    .ip(&pod.addr.to_string())
                    .ready(true)
                    .label(key, value)
                    .value(),
            );
        }
    }
    out
}

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn get_json(ns: &str, url: &str) -> Value {
    let (status, body) = http_get(ns, url);
    serde_json::from_str(&body).unwrap_or_else(|_| {
        eprintln!("{url}: {status} {body}");
        Value::Null
    })
}

/// Polls `f` until it returns something, for at most `limit`.
fn within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(value) = f() {
            return (value, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agents_follow_the_cluster_and_probes_catch_a_quiet_blackhole() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("k"),
        nodes: 3,
        migrated: 1,
        pods: 1,
    })
    .unwrap()
    .remove_on_drop();
    sh(&[
        "ip",
        "-n",
        &lab.underlay_ns(),
        "addr",
        "add",
        &format!("{API_ADDR}/16"),
        "dev",
        "underlay",
    ]);
    let listener = in_netns(&lab.underlay_ns(), || {
        TcpListener::bind((API_ADDR, 0)).unwrap()
    });
    let server = FakeApiServer::start_on(listener).unwrap();
    for object in objects(&lab) {
        server.apply(object).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("crossover-kube-{}", lab.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();

    let mut processes = Processes(Vec::new());
    for node in lab.nodes() {
        let log = std::fs::File::create(dir.join(format!("{}.log", node.name))).unwrap();
        processes.0.push(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.node_ns(&node.name),
                    CROSSOVER,
                    "agent",
                ])
                .args([
                    "--kubeconfig",
                    kubeconfig.to_str().unwrap(),
                    "--node-name",
                    &node.name,
                ])
                .args(["--listen", &format!("0.0.0.0:{PORT}")])
                .args(["--probe-port", &PROBE_PORT.to_string()])
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        for pod in node.pods.iter().filter(|p| p.kind == PodKind::DaemonSet) {
            processes.0.push(
                Command::new("ip")
                    .args(["netns", "exec", &pod.netns, CROSSOVER, "probe"])
                    .args(["--listen", &format!("0.0.0.0:{PROBE_PORT}")])
                    .spawn()
                    .unwrap(),
            );
        }
    }
    let cp = lab.node_ns("control-plane");
    let url = |j: usize, path: &str| format!("http://{}:{PORT}{path}", plan::underlay_addr(j));
    for j in 0..3 {
        within(
            Duration::from_secs(30),
            &format!(
                "agent {j} ready and reading its peers (logs in {})",
                dir.display()
            ),
            || {
                let status = get_json(&cp, &url(j, "/api/v1/status"));
                let peers = status["peer_agents"].as_object()?;
                (status["ready"] == true
                    && peers.len() == 2
                    && peers.values().all(|p| p["up"] == true))
                .then_some(())
            },
        );
    }

    // The shape, derived from the objects, each value with its source.
    let status = get_json(&cp, &url(0, "/api/v1/status"));
    let shape = &status["view"]["shape"];
    assert_eq!(shape["networks"][0]["role"], "legacy");
    assert_eq!(
        shape["networks"][0]["cidrs"],
        json!(["10.244.0.0/23", "10.244.2.0/24"]),
        "{status:#}"
    );
    assert_eq!(
        shape["networks"][0]["encapsulation"],
        json!({"vxlan": {"port": 8472}})
    );
    assert_eq!(shape["networks"][1]["cidrs"], json!(["10.245.0.0/16"]));
    assert_eq!(
        shape["networks"][1]["encapsulation"],
        json!({"vxlan": {"port": 8473}})
    );
    let worker1 = shape["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "worker-1")
        .unwrap();
    assert_eq!(worker1["underlay"], "172.18.0.3");
    assert_eq!(
        worker1["overlay_addrs"],
        json!(["10.244.1.0", "10.245.1.1"])
    );
    let sources = status["view"]["derived"]["sources"].as_array().unwrap();
    assert!(sources.iter().any(
        |s| s["field"] == "cilium.cidrs" && s["from"] == "cilium-config cluster-pool-ipv4-cidr"
    ));
    assert!(
        status["attached"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == &json!(["eth0", "underlay"])),
        "underlay found from the InternalIP: {status:#}"
    );
    let watches = status["watches"].as_object().unwrap();
    assert!(watches.values().all(|w| w["synced"] == true), "{status:#}");

    // Every peer is probed on both overlays and on its probe pod; a clean
    // lab loses nothing.
    let ((), _) = within(
        Duration::from_secs(10),
        "probe rows towards both workers",
        || {
            let loss = get_json(&cp, &url(0, "/api/v1/loss"));
            let rows = loss["rows"].as_array()?;
            let probed = |peer: &str, overlay: &str, net: &str| {
                rows.iter().any(|r| {
                    r["signal"] == "probe_udp"
                        && r["peer_node"] == peer
                        && r["overlay"] == overlay
                        && r["dst_net"] == net
                        && r["sent"].as_u64() > Some(0)
                })
            };
            (probed("worker-1", "legacy", "host")
                && probed("worker-1", "cilium", "host")
                && probed("worker-1", "cilium", "cilium")
                && probed("worker-2", "legacy", "host")
                && probed("worker-2", "cilium", "host")
                && probed("worker-2", "legacy", "legacy"))
            .then_some(())
        },
    );
    let loss = get_json(&cp, &url(0, "/api/v1/loss"));
    for row in loss["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["signal"] == "probe_udp")
    {
        assert_eq!(row["lost"], 0, "clean lab: {row}");
    }

    // A quiet pair: no traffic but the probes. A blackhole on the Cilium
    // overlay from control-plane to worker-2 shows within 5 s, on that
    // overlay only.
    let fault = lab
        .inject(Fault::Loss {
            from: "control-plane".into(),
            to: "worker-2".into(),
            overlay: Overlay::Cilium,
            percent: 100.0,
        })
        .unwrap();
    let (_, took) = within(
        Duration::from_secs(5),
        "probe loss on control-plane -> worker-2 cilium",
        || {
            let loss = get_json(&cp, &url(0, "/api/v1/loss"));
            loss["rows"]
                .as_array()?
                .iter()
                .any(|r| {
                    r["signal"] == "probe_udp"
                        && r["peer_node"] == "worker-2"
                        && r["overlay"] == "cilium"
                        && r["lost"].as_u64() > Some(0)
                })
                .then_some(())
        },
    );
    eprintln!("blackhole seen by probes after {took:?}");
    let loss = get_json(&cp, &url(0, "/api/v1/loss"));
    for row in loss["rows"].as_array().unwrap().iter() {
        let faulty = row["peer_node"] == "worker-2" && row["overlay"] == "cilium";
        if row["signal"].as_str().unwrap().starts_with("probe") && !faulty {
            assert_eq!(row["lost"], 0, "only the blackholed overlay loses: {row}");
        }
    }
    let (status, metrics) = http_get(&cp, &url(0, "/metrics"));
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("crossover_loss_ratio{node=\"control-plane\",peer_node=\"worker-2\",overlay=\"cilium\",src_net=\"host\",dst_net=\"host\",signal=\"probe_udp\"}")), "{metrics}");
    lab.clear(fault).unwrap();

    // Flows name pods: the probes to worker-2's probe pod.
    let flows = get_json(&cp, &url(0, "/api/v1/flows"));
    let probe_pod = lab
        .nodes()
        .nth(2)
        .unwrap()
        .pods
        .iter()
        .find(|p| p.kind == PodKind::DaemonSet)
        .map(|p| format!("worker-2-{}", p.name))
        .unwrap();
    assert!(
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["dst_is"]["kind"] == "pod"
                && f["dst_is"]["name"] == probe_pod.as_str()
                && f["dst_is"]["node"] == "worker-2"),
        "no flow to {probe_pod} named"
    );

    // The cluster changes under the agents. worker-2's agent pod goes away:
    // control-plane stops reading it; it comes back: reads it again.
    let agent_pod = server
        .get(&Gvr::of::<Pod>(), Some("crossover"), "crossover-agent-2")
        .unwrap();
    server
        .delete(&Gvr::of::<Pod>(), Some("crossover"), "crossover-agent-2")
        .unwrap();
    within(
        Duration::from_secs(5),
        "worker-2 dropped from the peers",
        || {
            let status = get_json(&cp, &url(0, "/api/v1/status"));
            (!status["view"]["peers"]
                .as_array()?
                .iter()
                .any(|p| p["node"] == "worker-2"))
            .then_some(())
        },
    );
    let mut again = agent_pod.clone();
    again["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    server.apply(again).unwrap();
    within(
        Duration::from_secs(5),
        "worker-2 back among the peers",
        || {
            let status = get_json(&cp, &url(0, "/api/v1/status"));
            status["view"]["peers"]
                .as_array()?
                .iter()
                .any(|p| p["node"] == "worker-2")
                .then_some(())
        },
    );
    // cilium-config moves Cilium to Geneve: the kernel's shape follows.
    server
        .patch(
            &Gvr::of::<ConfigMap>(),
            Some("kube-system"),
            "cilium-config",
            json!({"data": {"tunnel-protocol": "geneve", "tunnel-port": "6081"}}),
        )
        .unwrap();
    within(
        Duration::from_secs(5),
        "the shape follows cilium-config",
        || {
            let status = get_json(&cp, &url(0, "/api/v1/status"));
            (status["view"]["shape"]["networks"][1]["encapsulation"]
                == json!({"geneve": {"port": 6081}}))
            .then_some(())
        },
    );
    // A Cilium port equal to Flannel's is refused, and the last good shape
    // stays in force.
    server
        .patch(
            &Gvr::of::<ConfigMap>(),
            Some("kube-system"),
            "cilium-config",
            json!({"data": {"tunnel-protocol": "vxlan", "tunnel-port": "8472"}}),
        )
        .unwrap();
    let (status, _) = within(Duration::from_secs(5), "a clashing port rejected", || {
        let status = get_json(&cp, &url(0, "/api/v1/status"));
        status["view"]["rejected"].is_string().then_some(status)
    });
    assert!(
        status["view"]["rejected"]
            .as_str()
            .unwrap()
            .contains("8472"),
        "{status:#}"
    );
    assert_eq!(
        status["view"]["shape"]["networks"][1]["encapsulation"],
        json!({"geneve": {"port": 6081}})
    );
    // Back to the migration's VXLAN 8473; then a node disappearing leaves
    // the shape.
    server
        .patch(
            &Gvr::of::<ConfigMap>(),
            Some("kube-system"),
            "cilium-config",
            json!({"data": {"tunnel-port": "8473"}}),
        )
        .unwrap();
    server
        .delete(
            &Gvr::of::<k8s_openapi::api::core::v1::Node>(),
            None,
            "worker-2",
        )
        .unwrap();
    within(
        Duration::from_secs(5),
        "worker-2 gone from the shape",
        || {
            let status = get_json(&cp, &url(0, "/api/v1/status"));
            (!status["view"]["shape"]["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["name"] == "worker-2"))
            .then_some(())
        },
    );
    drop(processes);
}
