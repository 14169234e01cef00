//! Agents that know the cluster only through the API: a lab whose nodes run
//! `crossover agent --kubeconfig`, against the fake API server serving the
//! lab's own nodes, CiliumNodes, `cilium-config` and pods. The shape comes
//! from the objects, follows them as they change, and probes catch a quiet
//! blackholed pair. Needs root (namespaces, programs in the kernel).
use std::time::Duration;

use crossover_tests::{
    apiserver::{ADMIN_TOKEN, Gvr, fixtures::PodBuilder},
    kubelab::{AGENT_PORT, CROSSOVER, KubeLab, within},
    lab::{Fault, LabSpec, Overlay, PodKind, plan, traffic},
    netns::{http_get_as, unique},
    require_root,
    standin::hold_priority_1,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use serde_json::{Value, json};

/// A GET as the admin: the agents check bearer tokens with the server.
fn http_get(ns: &str, url: &str) -> (u16, String) {
    http_get_as(ns, url, Some(ADMIN_TOKEN))
}

fn get_json(ns: &str, url: &str) -> Value {
    let (status, body) = http_get(ns, url);
    serde_json::from_str(&body).unwrap_or_else(|_| {
        eprintln!("{url}: {status} {body}");
        Value::Null
    })
}

#[test]
fn agents_follow_the_cluster_and_probes_catch_a_quiet_blackhole() {
    require_root();
    let mut kl = KubeLab::up_with_objects(&LabSpec {
        name: unique("k"),
        nodes: 3,
        migrated: 1,
        pods: 1,
        ..LabSpec::default()
    });
    kl.start_agents(&[]);
    kl.start_probes();
    kl.wait_agents_ready();
    let cp = kl.lab.node_ns("control-plane");
    let url =
        |j: usize, path: &str| format!("http://{}:{AGENT_PORT}{path}", plan::underlay_addr(j));

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
    // A Flannel cluster has no Calico CRDs: those watches find them absent.
    let calico = ["ippools", "blockaffinities"];
    assert!(
        watches
            .iter()
            .all(|(name, w)| if calico.contains(&name.as_str()) {
                w["absent"] == true
            } else {
                w["synced"] == true
            }),
        "{status:#}"
    );

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
    let fault = kl
        .lab
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
    kl.lab.clear(fault).unwrap();

    // Flows name pods: the probes to worker-2's probe pod.
    let flows = get_json(&cp, &url(0, "/api/v1/flows"));
    let probe_pod = kl
        .lab
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
    // The flow table by page and filter: the whole of it read first, then
    // page by page (3 entries a page) through the continue tokens. Flows
    // are only added meanwhile, so every one of the first read is in the
    // pages, and no page repeats another's.
    let key = |f: &serde_json::Value| {
        format!(
            "{} {} {} {} {} {} {}",
            f["src"],
            f["dst"],
            f["src_port"],
            f["dst_port"],
            f["proto"],
            f["point"],
            f["direction"]
        )
    };
    let whole = get_json(&cp, &url(0, "/api/v1/flows?limit=10000"));
    assert!(whole.get("continue").is_none(), "one page holds it all");
    let mut paged = std::collections::BTreeSet::new();
    let mut next: Option<String> = None;
    for pages in 0.. {
        assert!(pages < 1000, "paging ends");
        let path = match &next {
            None => "/api/v1/flows?limit=3".to_string(),
            Some(token) => format!("/api/v1/flows?limit=3&continue={token}"),
        };
        let page = get_json(&cp, &url(0, &path));
        assert!(page["scanned"].as_u64().unwrap() <= 3 + 8, "{page}");
        for f in page["flows"].as_array().unwrap() {
            assert!(paged.insert(key(f)), "a flow in two pages: {f}");
        }
        match page["continue"].as_str() {
            Some(token) => next = Some(token.to_string()),
            None => break,
        }
    }
    for f in whole["flows"].as_array().unwrap() {
        assert!(paged.contains(&key(f)), "paging missed {f}");
    }
    let probe_addr = kl
        .lab
        .nodes()
        .nth(2)
        .unwrap()
        .pods
        .iter()
        .find(|p| p.kind == PodKind::DaemonSet)
        .unwrap()
        .addr
        .to_string();
    let to_pod = get_json(
        &cp,
        &url(
            0,
            &format!("/api/v1/flows?pod={probe_addr}&peer=worker-2&point=underlay"),
        ),
    );
    let to_pod = to_pod["flows"].as_array().unwrap();
    assert!(!to_pod.is_empty());
    for f in to_pod {
        assert!(
            f["src"] == probe_addr.as_str() || f["dst"] == probe_addr.as_str(),
            "{f}"
        );
        assert_eq!(
            (f["point"].as_str(), f["peer"].as_str()),
            (
                Some("underlay"),
                Some(
                    crossover_tests::lab::plan::underlay_addr(2)
                        .to_string()
                        .as_str()
                )
            ),
            "{f}"
        );
    }
    for (query, says) in [
        ("limit=0", "limit=\"0\": expected 1 to 10000 entries"),
        ("continue=x", "continue=\"x\": not a token"),
        (
            "peer=nowhere",
            "peer=\"nowhere\": neither a node nor an IPv4 address",
        ),
        ("src_net=pods", "src_net=\"pods\": expected"),
        ("bogus=1", "unknown field `bogus`"),
    ] {
        let (status, body) = http_get(&cp, &url(0, &format!("/api/v1/flows?{query}")));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }

    // The cluster changes under the agents. worker-2's agent pod goes away:
    // control-plane stops reading it; it comes back: reads it again.
    let agent_pod = kl
        .server
        .get(&Gvr::of::<Pod>(), Some("crossover"), "crossover-agent-2")
        .unwrap();
    kl.server
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
    // Its agent gone, its overlay addresses are not probed (nothing would
    // answer there); its probe pod still is.
    let probe_targets = |set: &str| -> Option<u64> {
        let (_, metrics) = http_get(&cp, &url(0, "/metrics"));
        let series = format!("crossover_probe_targets{{node=\"control-plane\",set=\"{set}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.parse().ok())
    };
    within(
        Duration::from_secs(5),
        "worker-2's overlay addresses no longer probed",
        || (probe_targets("rotation")? == 4).then_some(()),
    );
    let mut again = agent_pod.clone();
    again["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    kl.server.apply(again).unwrap();
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
    within(
        Duration::from_secs(5),
        "worker-2's overlay addresses probed again",
        || (probe_targets("rotation")? == 6).then_some(()),
    );
    // The migration driver annotates the node it migrates: every agent
    // probes it steadily (the probe mesh's focus) until the annotation
    // goes.
    let annotate = |value: Value| {
        kl.server
            .patch(
                &Gvr::of::<Node>(),
                None,
                "worker-2",
                json!({"metadata": {"annotations": {"crossover.io/migrating": value}}}),
            )
            .unwrap()
    };
    annotate(json!("true"));
    within(Duration::from_secs(5), "worker-2 the focus", || {
        let status = get_json(&cp, &url(0, "/api/v1/status"));
        (status["view"]["focus"] == json!(["worker-2"])
            && probe_targets("focus")? == 3
            && probe_targets("rotation")? == 3)
            .then_some(())
    });
    annotate(Value::Null);
    within(Duration::from_secs(5), "no focus any more", || {
        let status = get_json(&cp, &url(0, "/api/v1/status"));
        (status["view"]["focus"] == json!([]) && probe_targets("focus")? == 0).then_some(())
    });
    // cilium-config moves Cilium to Geneve: the kernel's shape follows.
    kl.server
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
    kl.server
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
    kl.server
        .patch(
            &Gvr::of::<ConfigMap>(),
            Some("kube-system"),
            "cilium-config",
            json!({"data": {"tunnel-port": "8473"}}),
        )
        .unwrap();
    kl.server
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
}

/// The loss figures in kube mode are the wire's: agents that know the
/// cluster only through the API report, in `/metrics` and `crossover loss`,
/// exactly what a 3% fault dropped on one pair: a legacy pod to a Cilium
/// pod, SNATed to `cilium_host`, on the Cilium overlay.
#[test]
fn loss_from_kube_mode_agents_equals_the_wire_drops() {
    require_root();
    let mut kl = KubeLab::up_with_objects(&LabSpec {
        name: unique("q"),
        nodes: 3,
        migrated: 1,
        pods: 2,
        ..LabSpec::default()
    });
    // No probes: their trickle through the fault would keep the drop
    // counter moving between the readings compared (tests/agent.rs).
    kl.start_agents(&[
        "--probe-rate",
        "0",
        "--window",
        "60s",
        "--sample-interval",
        "500ms",
    ]);
    kl.wait_agents_ready();
    let id = kl
        .lab
        .inject(Fault::Loss {
            from: "control-plane".into(),
            to: "worker-1".into(),
            overlay: Overlay::Cilium,
            percent: 3.0,
        })
        .unwrap();
    let e = |id: &str| kl.lab.endpoint(id).unwrap();
    let sent = traffic::udp_stream(
        &e("control-plane/app-1"),
        &e("worker-1/app-1"),
        10_000,
        10_000,
        200,
    )
    .unwrap()
    .sent;
    std::thread::sleep(Duration::from_millis(300));
    let drops = kl.lab.drops(id).unwrap();
    assert!(drops > 0, "a 3% fault on {sent} packets dropped nothing");
    // Two samples after the traffic: the window holds all of it.
    std::thread::sleep(Duration::from_millis(1200));

    let mut loss = std::process::Command::new("ip");
    loss.args([
        "netns",
        "exec",
        &kl.lab.node_ns("control-plane"),
        CROSSOVER,
        "loss",
        "--format",
        "json",
        "--window",
        "60s",
        "--sample-interval",
        "500ms",
        "--node",
        "control-plane",
    ]);
    loss.args(["--kubeconfig", kl.kubeconfig.to_str().unwrap()]);
    for url in kl.agent_urls() {
        loss.args(["--agent", &url]);
    }
    let out = loss.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let matrix: Value = serde_json::from_slice(&out.stdout).unwrap();
    let delivery: Vec<&Value> = matrix["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["signal"] == "delivery")
        .collect();
    let faulted = |r: &Value| {
        r["node"] == "control-plane" && r["peer_node"] == "worker-1" && r["overlay"] == "cilium"
    };
    let lost: u64 = delivery
        .iter()
        .filter(|r| faulted(r))
        .map(|r| r["lost"].as_u64().unwrap())
        .sum();
    assert_eq!(
        lost, drops,
        "crossover loss equals the wire's drops: {matrix:#}"
    );
    for r in delivery.iter().filter(|r| !faulted(r)) {
        assert_eq!(r["lost"], 0, "no loss elsewhere: {r}");
    }
    let total: u64 = matrix["totals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["signal"] == "delivery")
        .map(|t| t["lost"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total, drops,
        "the cluster totals equal the wire's drops: {matrix:#}"
    );
    // /metrics: control-plane's sends and worker-1's receives on the pair,
    // the counters a recording rule joins, differ by the drops.
    let counter = |j: usize, series: &str, direction: &str| -> u64 {
        let (status, metrics) = http_get(&kl.lab.node_ns("control-plane"), &kl.url(j, "/metrics"));
        assert_eq!(status, 200);
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(series)
                    && l.contains("overlay=\"cilium\"")
                    && l.contains(&format!("direction=\"{direction}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let sent = counter(
        0,
        "crossover_underlay_packets_total{node=\"control-plane\",peer_node=\"worker-1\"",
        "egress",
    );
    let received = counter(
        1,
        "crossover_underlay_packets_total{node=\"worker-1\",peer_node=\"control-plane\"",
        "ingress",
    );
    assert_eq!(
        sent - received,
        drops,
        "/metrics: sends less receives are the drops"
    );
}

/// The Events of `reason` on `node` the agents wrote (events.k8s.io, in
/// `default`, where a Node's Events live).
fn node_events(kl: &KubeLab, node: &str, reason: &str) -> Vec<Value> {
    kl.server
        .list(&Gvr::new("events.k8s.io", "v1", "events"), Some("default"))
        .into_iter()
        .filter(|e| e["regarding"]["kind"] == "Node" && e["regarding"]["name"] == node)
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// The Events of `reason` on `node`, once there is one (30 s at most).
fn wait_events(kl: &KubeLab, node: &str, reason: &str) -> Vec<Value> {
    let what = format!("a {reason} Event on {node}");
    within(Duration::from_secs(30), &what, || {
        let events = node_events(kl, node, reason);
        (!events.is_empty()).then_some(events)
    })
    .0
}

/// `crossover_hook_reasserted_total` of agent `j`: it grows by one per
/// blind hook at every order check.
fn reasserted(kl: &KubeLab, j: usize) -> Option<u64> {
    let (_, metrics) = http_get(&kl.lab.node_ns("control-plane"), &kl.url(j, "/metrics"));
    metrics
        .lines()
        .find(|l| l.starts_with("crossover_hook_reasserted_total"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// A pod hook crossover cannot get in front of (netlink mode, priority 1
/// held by a classic-BPF filter for IPv4 only, returning TC_ACT_OK) on
/// every pod veth of worker-1: its agent writes one `HookBlind` Warning on
/// its Node naming every hook, counted by kind and direction, and writes
/// it once, not at every check; a reading carries the hooks and
/// `crossover loss` names them; once the filters go, one `HookSeen`.
/// control-plane, which sees first, writes nothing.
#[test]
fn a_blind_pod_hook_is_one_event_on_its_node_until_it_sees_again() {
    require_root();
    let mut kl = KubeLab::up_with_objects(&LabSpec {
        name: unique("e"),
        nodes: 2,
        migrated: 0,
        pods: 1,
        ..LabSpec::default()
    });
    let worker = kl.lab.node_ns("worker-1");
    let veths: Vec<String> = kl
        .lab
        .nodes()
        .find(|n| n.name == "worker-1")
        .unwrap()
        .pods
        .iter()
        .map(|p| p.host_if.clone())
        .collect();
    assert!(!veths.is_empty());
    for veth in &veths {
        hold_priority_1(&worker, veth, "egress");
    }
    kl.start_agents(&["--attach-mode", "netlink", "--probe-rate", "0"]);
    kl.wait_agents_ready();

    let blind = wait_events(&kl, "worker-1", "HookBlind");
    assert_eq!(blind.len(), 1, "{blind:#?}");
    let event = &blind[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reportingController"], "crossover-agent");
    assert_eq!(event["action"], "CheckHookOrder");
    let note = event["note"].as_str().unwrap();
    let n = veths.len();
    let count = if n == 1 {
        "1 pod hook (egress) blind".to_string()
    } else {
        format!("{n} pod hooks (egress) blind")
    };
    assert!(note.starts_with(&count), "{note}");
    for veth in &veths {
        assert!(
            note.contains(&format!("{veth} egress: programs [0] run first")),
            "{note}"
        );
    }
    assert!(note.contains("is not what crossed them"), "{note}");

    // The reading carries the hooks, and `crossover loss` names them.
    let mut loss = std::process::Command::new("ip");
    loss.args(["netns", "exec", &kl.lab.node_ns("control-plane"), CROSSOVER]);
    loss.args([
        "loss",
        "-o",
        "json",
        "--kubeconfig",
        kl.kubeconfig.to_str().unwrap(),
    ]);
    for url in kl.agent_urls() {
        loss.args(["--agent", &url]);
    }
    let out = loss.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let reading: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reading["blind"],
        json!([{
            "node": "worker-1",
            "counts": [{"hook": "pod", "direction": "egress", "blind": n}],
            "named": veths.iter().map(|v| json!({
                "iface": v, "hook": "pod", "direction": "egress", "ahead": [0]
            })).collect::<Vec<_>>(),
        }]),
        "{reading:#}"
    );

    // And the raw counters since start say it above their rows.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &kl.lab.node_ns("control-plane"), CROSSOVER])
        .args(["loss", "--since-start", "--kubeconfig"])
        .arg(&kl.kubeconfig)
        .args(kl.agent_urls().iter().flat_map(|u| ["--agent", u.as_str()]))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with(&format!("blind: worker-1: {count}; ")),
        "{table}"
    );
    assert!(
        table.lines().nth(2).unwrap().starts_with("node "),
        "{table}"
    );

    // Another whole order check (every blind hook re-attached once more):
    // still the one Event.
    let before = reasserted(&kl, 1).unwrap();
    within(Duration::from_secs(25), "another order check", || {
        (reasserted(&kl, 1)? >= before + n as u64).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(node_events(&kl, "worker-1", "HookBlind").len(), 1);

    // The filters go: crossover is put first at the next check, and says so.
    for veth in &veths {
        crossover_tests::netns::sh(&[
            "ip", "netns", "exec", &worker, "tc", "filter", "del", "dev", veth, "egress", "pref",
            "1",
        ]);
    }
    let seen = wait_events(&kl, "worker-1", "HookSeen");
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0]["type"], "Normal");
    let note = seen[0]["note"].as_str().unwrap();
    for veth in &veths {
        assert!(note.contains(&format!("{veth} egress")), "{note}");
    }
    let status = kl.get_json(&kl.url(1, "/api/v1/status"));
    let hooks = status["hooks"].as_array().unwrap();
    assert!(
        hooks.iter().all(|h| h["placement"] == "first"),
        "{status:#}"
    );
    assert_eq!(node_events(&kl, "worker-1", "HookBlind").len(), 1);
    for reason in ["HookBlind", "HookSeen"] {
        assert!(node_events(&kl, "control-plane", reason).is_empty());
    }
}

/// The pods' /32 entries in a pinned ADDRS: address -> (network, node
/// underlay).
fn pinned_pod_entries(
    addrs: &std::path::Path,
) -> std::collections::BTreeMap<std::net::Ipv4Addr, (observer_ebpf::Net, std::net::Ipv4Addr)> {
    use aya::maps::{LpmTrie, Map, MapData};
    let data = MapData::from_pin(addrs).unwrap();
    let trie: LpmTrie<MapData, u32, observer_ebpf::AddrInfo> =
        Map::LpmTrie(data).try_into().unwrap();
    trie.iter()
        .map(Result::unwrap)
        .filter(|(key, info)| {
            key.prefix_len() == 32 && info.kind == observer_ebpf::AddrKind::PodNetwork.wire()
        })
        .map(|(key, info)| {
            (
                observer::shape::addr_from_wire(key.data()),
                (
                    observer_ebpf::Net::from_wire(info.net).unwrap_or(observer_ebpf::Net::Unknown),
                    observer::shape::addr_from_wire(info.node),
                ),
            )
        })
        .collect()
}

/// The AWS VPC CNI's cluster, as agents see it through the API: EC2 nodes
/// without ranges, so the legacy network is routed natively and every
/// legacy pod a /32 in the kernel's address table, naming its node. Pods
/// that come get their entry and pods that go lose it, within 5 s, on
/// every node; past --pod-addr-capacity a pod is refused, counted in
/// /metrics and the status, and takes its place once another goes.
#[test]
fn aws_pods_are_each_a_32_in_the_agents_address_table() {
    const WITHIN: Duration = Duration::from_secs(5);
    require_root();
    let mut kl = KubeLab::up_with_objects(&LabSpec {
        name: unique("aw"),
        nodes: 2,
        migrated: 1,
        pods: 1,
        legacy: crossover_tests::lab::LegacyCni::AwsNative,
    });
    let pins = crossover_tests::pins::TestPins::outside_sys();
    for node in ["control-plane", "worker-1"] {
        let pin_path = pins.path.join(node);
        kl.start_agent(
            node,
            &[
                "--probe-rate",
                "0",
                "--pin-path",
                pin_path.to_str().unwrap(),
                "--pod-addr-capacity",
                "4",
            ],
        );
    }
    kl.wait_agents_ready();
    let addrs = |node: &str| pins.path.join(node).join("maps").join("ADDRS");
    let cp = plan::underlay_addr(0);
    let legacy = |addrs: &[std::net::Ipv4Addr]| {
        addrs
            .iter()
            .map(|a| (*a, (observer_ebpf::Net::Legacy, cp)))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let started: Vec<std::net::Ipv4Addr> = kl
        .lab
        .nodes()
        .flat_map(|n| &n.pods)
        .filter(|p| p.network == crossover_tests::lab::Network::Legacy)
        .map(|p| p.addr)
        .collect();
    assert_eq!(started.len(), 2, "control-plane's ds and app-1");

    // Derived from the API: native legacy network, no ranges, pods listed.
    let status = kl.get_json(&kl.url(0, "/api/v1/status"));
    let view = &status["view"];
    assert_eq!(view["shape"]["networks"][0]["encapsulation"], "native");
    assert_eq!(view["shape"]["networks"][0]["cidrs"], json!([]));
    let sources = view["derived"]["sources"].as_array().unwrap();
    assert!(
        sources.iter().any(|s| s["field"] == "legacy.encapsulation"
            && s["from"].as_str().unwrap().contains("providerID")),
        "{view:#}"
    );
    assert_eq!(
        view["pod_addrs"],
        json!({"listed": 2, "capacity": 4, "in_table": 2, "refused": 0}),
        "{view:#}"
    );
    for node in ["control-plane", "worker-1"] {
        assert_eq!(
            pinned_pod_entries(&addrs(node)),
            legacy(&started),
            "{node}: the legacy pods' /32s, naming control-plane"
        );
    }

    // Three more pods on control-plane: one past the capacity.
    let host = cp.to_string();
    let new: Vec<std::net::Ipv4Addr> = (10..13)
        .map(|n| std::net::Ipv4Addr::new(172, 18, 1, n))
        .collect();
    for (i, addr) in new.iter().enumerate() {
        kl.server
            .apply(
                PodBuilder::new("default", &format!("new-{i}"))
                    .node("control-plane", &host)
                    .ip(&addr.to_string())
                    .ready(true)
                    .value(),
            )
            .unwrap();
    }
    // The pods held keep their entries; the new ones in address order.
    let mut held = started.clone();
    held.extend(&new[..2]);
    let (_, took) = within(WITHIN, "new pods' /32s on both nodes", || {
        ["control-plane", "worker-1"]
            .iter()
            .all(|n| pinned_pod_entries(&addrs(n)) == legacy(&held))
            .then_some(())
    });
    eprintln!("new pods' /32s in ADDRS after {took:?}");
    let status = kl.get_json(&kl.url(1, "/api/v1/status"));
    assert_eq!(
        status["view"]["pod_addrs"],
        json!({"listed": 5, "capacity": 4, "in_table": 4, "refused": 1}),
    );
    let (_, metrics) = http_get(&kl.lab.node_ns("control-plane"), &kl.url(0, "/metrics"));
    assert!(
        metrics.contains(r#"crossover_pod_addrs{node="control-plane",state="refused"} 1"#),
        "{metrics}"
    );

    // Two go: their entries with them, and the refused pod gets its place.
    for i in 0..2 {
        kl.server
            .delete(&Gvr::of::<Pod>(), Some("default"), &format!("new-{i}"))
            .unwrap();
    }
    let mut left = started.clone();
    left.push(new[2]);
    within(
        WITHIN,
        "gone pods' /32s removed, the refused one in",
        || {
            ["control-plane", "worker-1"]
                .iter()
                .all(|n| pinned_pod_entries(&addrs(n)) == legacy(&left))
                .then_some(())
        },
    );
    let status = kl.get_json(&kl.url(0, "/api/v1/status"));
    assert_eq!(
        status["view"]["pod_addrs"],
        json!({"listed": 3, "capacity": 4, "in_table": 3, "refused": 0}),
    );
    drop(kl);
    drop(pins);
}
