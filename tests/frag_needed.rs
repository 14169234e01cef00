//! ICMP "fragmentation needed" about real traffic in a lab, as the agents
//! count it per peer node, overlay and hop: on `/metrics` and in the
//! `mtu` signal's rows, with no probe running (the agents' default here),
//! so what the rows carry is the traffic's alone. Needs root
//! (namespaces, programs in the kernel).
use std::time::{Duration, Instant};

use crossover_tests::{
    agents::{Agents, metric},
    lab::{Fault, Lab, LabSpec, LegacyCni, Overlay, exec::in_ns, traffic},
    mtu,
    netns::{http_get, unique},
    prometheus::check_documented,
    require_root,
};

/// Agent `j`'s `/metrics`, asked from inside its node.
fn metrics(lab: &Lab, agents: &Agents, node: &str, j: usize) -> String {
    http_get(&lab.node_ns(node), &format!("{}/metrics", agents.urls[j])).1
}

/// A fragmentation-needed series of `node` about `peer` on `overlay`.
fn series(family: &str, node: &str, peer: &str, overlay: &str, rest: &str) -> String {
    format!("{family}{{node=\"{node}\",peer_node=\"{peer}\",overlay=\"{overlay}\",{rest}}}")
}

/// Asserts the control plane's `/metrics` (`body`) has one path told,
/// and worker-1's and worker-2's none.
fn only_path_told(lab: &Lab, agents: &Agents, body: &str) {
    let counted = |body: &str| {
        body.lines()
            .filter(|l| l.starts_with("crossover_icmp_frag_needed_total{"))
            .count()
    };
    assert_eq!(counted(body), 1, "{body}");
    for (j, node) in ["worker-1", "worker-2"].into_iter().enumerate() {
        assert_eq!(counted(&metrics(lab, agents, node, j + 1)), 0, "{node}");
    }
}

/// `crossover loss` arguments: `node`'s rows over the agents' 60 s
/// window (their sampler at 500 ms), long enough to hold a whole test.
fn about(node: &str) -> [&str; 6] {
    [
        "--node",
        node,
        "--window",
        "60s",
        "--sample-interval",
        "500ms",
    ]
}

/// The `mtu` rows of `node` over the agents' 60 s window.
fn mtu_rows(lab: &Lab, agents: &Agents, node: &str) -> Vec<serde_json::Value> {
    let args = [&about(node)[..], &["--signal", "mtu"]].concat();
    let reading = agents.loss_json(&lab.node_ns(node), &args);
    reading["rows"].as_array().unwrap().clone()
}

/// The control plane's mtu row about worker-2 on the legacy overlay,
/// once it carries the traffic's messages, checked against its
/// `/metrics` (returned with it): as many messages on `hop` as the row
/// holds, their next-hop MTU and size that fits 1300, the row's too.
fn told_about_worker_2(lab: &Lab, agents: &Agents, hop: &str) -> (serde_json::Value, String) {
    let row = mtu_row(lab, agents, ("control-plane", "worker-2", "legacy"));
    assert_eq!(row["mtu"]["icmp_next_hop"], 1300, "{row}");
    let body = metrics(lab, agents, "control-plane", 0);
    let path = |family: &str, rest: &str| {
        series(
            family,
            "control-plane",
            "worker-2",
            "legacy",
            &format!("hop=\"{hop}\"{rest}"),
        )
    };
    let messages: u64 = metric(&body, &path("crossover_icmp_frag_needed_total", ""));
    assert!(messages >= 1, "{body}");
    assert_eq!(
        row["mtu"]["icmp_frag_needed"].as_u64(),
        Some(messages),
        "{row}"
    );
    for kind in ["next_hop", "fits"] {
        let s = path("crossover_icmp_mtu_bytes", &format!(",kind=\"{kind}\""));
        assert_eq!(metric::<u64>(&body, &s), 1300, "{body}");
    }
    (row, body)
}

/// Waits (at most 10 s: the sampler reads every 500 ms) until `node`'s
/// mtu row about `peer` on `overlay` carries the traffic's messages.
fn mtu_row(
    lab: &Lab,
    agents: &Agents,
    (node, peer, overlay): (&str, &str, &str),
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = mtu_rows(lab, agents, node);
        let row = rows.iter().find(|r| {
            r["node"] == node
                && r["peer_node"] == peer
                && r["overlay"] == overlay
                && r["mtu"]["icmp_frag_needed"].as_u64() > Some(0)
        });
        if let Some(row) = row {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no mtu row {node} -> {peer} {overlay}: {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The lab's overlay MTU fault: the control plane's `flannel.1` lowered to
/// 1300 while its pods keep 1450. A pod's TCP stream to a legacy pod on
/// worker-2 sends 1450-byte segments with DF; the control plane's kernel
/// refuses the first and tells the pod (ICMP from the node, through the
/// pod's veth), which then fits its segments: the stream goes through.
/// crossover counts that message on the control plane, hop `node`, on
/// the path the pod's flow took (worker-2, legacy), with the MTU 1300;
/// the mtu row of that pair and overlay carries it; nothing else counts.
#[test]
fn the_nodes_own_frag_needed_to_its_pod_joins_the_pairs_mtu_row() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("fnn"),
        nodes: 3,
        migrated: 1,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start(&lab);
    lab.inject(Fault::Mtu {
        node: "control-plane".into(),
        overlay: Overlay::Legacy,
        mtu: 1300,
    })
    .unwrap();
    let e = |id: &str| lab.endpoint(id).unwrap();
    let stream = traffic::tcp_stream(
        &e("control-plane/app-1"),
        &e("worker-2/app-1"),
        Duration::from_secs(2),
        1_000_000,
    )
    .unwrap();
    assert!(stream.connected, "{stream:?}");
    assert_eq!(
        stream.bytes_received, stream.bytes_sent,
        "PMTU discovery worked: {stream:?}"
    );
    // Two sampler ticks (500 ms): the agent's reading holds every message.
    std::thread::sleep(Duration::from_secs(1));

    let (row, body) = told_about_worker_2(&lab, &agents, "node");
    // No probe ran: the row is the traffic's messages, not loss.
    assert_eq!(
        (row["sent"].as_u64(), row["lost"].as_u64()),
        (Some(0), Some(0)),
        "{row}"
    );
    assert_eq!(row["mtu"]["probed"], 0, "{row}");
    // The new families as docs/metrics.md has them, labels included.
    check_documented(&body);
    only_path_told(&lab, &agents, &body);
    drop(agents);
}

/// Two CNIs' MTUs meeting past the tunnel: worker-2's pod veth lowered to
/// 1300 while the control plane's pods send 1450-byte segments, in a
/// Calico VXLAN lab (pods' veths routed, as Calico's and Cilium's are: a
/// bridge, flannel's `cni0`, drops a frame too large for its port
/// without a word). The stream crosses the tunnel whole; worker-2's
/// kernel refuses it on the way into its pod and tells the control
/// plane's pod, through the tunnel, which then fits its segments: the
/// stream goes through.
/// crossover counts that message on the control plane as it reaches the
/// pod's veth, hop `peer`, on the path the pod's flow took (worker-2,
/// legacy), with the MTU 1300; the pair's mtu row carries it; worker-2,
/// whose kernel only forwarded its own message, counts nothing.
#[test]
fn a_peers_frag_needed_through_the_tunnel_counts_on_the_peer_hop() {
    require_root();
    let lab = Lab::up(&LabSpec {
        name: unique("fnp"),
        nodes: 3,
        migrated: 0,
        pods: 1,
        legacy: LegacyCni::CalicoVxlan,
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start(&lab);
    let pod = lab.pod("worker-2/app-1").unwrap();
    in_ns(
        &lab.node_ns("worker-2"),
        &["ip", "link", "set", &pod.host_if, "mtu", "1300"],
    )
    .unwrap();
    let e = |id: &str| lab.endpoint(id).unwrap();
    let stream = traffic::tcp_stream(
        &e("control-plane/app-1"),
        &e("worker-2/app-1"),
        Duration::from_secs(2),
        1_000_000,
    )
    .unwrap();
    assert!(stream.connected, "{stream:?}");
    // Most of it went through (a black hole stalls after the first few
    // KB): PMTU discovery worked; what was in flight at the end may not.
    assert!(
        stream.bytes_received > stream.bytes_sent / 2,
        "PMTU discovery worked: {stream:?}"
    );
    std::thread::sleep(Duration::from_secs(1));

    let (_, body) = told_about_worker_2(&lab, &agents, "peer");
    only_path_told(&lab, &agents, &body);
    drop(agents);
}

/// A router with a smaller MTU on the path of a tunnel that sets DF
/// ([`mtu::router_black_hole`]): a pod's stream from the control plane to
/// worker-1's pod is refused at the router, which sends the control plane
/// ICMP fragmentation-needed, next hop 1400. crossover counts it on the
/// control plane's underlay, hop `wire`, for worker-1 on the legacy
/// overlay, and the size an overlay packet may be: 1350 (VXLAN's 50 bytes
/// less).
///
/// The stream itself stalls ([`mtu::across_router_black_hole`]): an MTU
/// black hole whose only trace outside the node is the router's message
/// counted here. The node's drops of the pod's packets are the in_node
/// signal's loss, their reason NOT_SPECIFIED; the loss table and the
/// gate's halt message say the path's MTU beside it, with the size that
/// fits.
#[test]
fn a_routers_frag_needed_about_a_tunnel_packet_counts_on_the_wire_hop() {
    require_root();
    let lab = mtu::cross_subnet_lab(unique("fnw"))
        .unwrap()
        .remove_on_drop();
    let agents = Agents::start(&lab);
    mtu::router_black_hole(&lab).unwrap();
    let stream = mtu::across_router_black_hole(&lab).unwrap();
    assert!(stream.connected, "{stream:?}");
    assert!(
        stream.bytes_received < stream.bytes_sent,
        "a black hole: {stream:?}"
    );

    let row = mtu_row(&lab, &agents, ("control-plane", "worker-1", "legacy"));
    assert_eq!(row["mtu"]["icmp_next_hop"], 1350, "{row}");
    let body = metrics(&lab, &agents, "control-plane", 0);
    let wire =
        |family: &str, rest: &str| series(family, "control-plane", "worker-1", "legacy", rest);
    let messages: u64 = metric(
        &body,
        &wire("crossover_icmp_frag_needed_total", "hop=\"wire\""),
    );
    assert!(messages >= 1, "{body}");
    for (kind, value) in [("next_hop", 1400), ("fits", 1350)] {
        let s = wire(
            "crossover_icmp_mtu_bytes",
            &format!("hop=\"wire\",kind=\"{kind}\""),
        );
        assert_eq!(metric::<u64>(&body, &s), value, "{body}");
    }
    // The pod was never told (see above): no `node` hop anywhere; no
    // other node was refused anything.
    assert!(!body.contains("hop=\"node\""), "{body}");
    for (j, node) in ["worker-1", "worker-2", "worker-3"].into_iter().enumerate() {
        let other = metrics(&lab, &agents, node, j + 1);
        assert!(
            !other.contains("crossover_icmp_frag_needed_total{"),
            "{node}: {other}"
        );
    }
    let cp = lab.node_ns("control-plane");
    // The stall is the node's loss (in_node), its reason the kernel's
    // NOT_SPECIFIED; the table's footer and the gate's halt message say
    // what ICMP told of the path beside it. A 60 s window holds the
    // whole stream; 5 sent are enough to judge here.
    let about_cp = about("control-plane");
    let table = agents.loss(&cp, &[&about_cp[..], &["--format", "table"]].concat());
    assert!(
        table.lines().any(|l| l
            .starts_with("why: control-plane -> worker-1 legacy legacy->legacy lost ")
            && l.ends_with(mtu::ROUTER_TOLD)),
        "{table}"
    );
    let reading = agents.loss_json(&cp, &about_cp);
    let said = mtu::gate_says(&reading, "control-plane");
    assert!(
        said.iter().any(|b| b
            .starts_with("control-plane -> worker-1 overlay legacy legacy->legacy in_node: ")
            && b.ends_with(mtu::ROUTER_TOLD)),
        "{said:#?}"
    );
    drop(agents);
}
