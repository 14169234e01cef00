//! crossover beside Cilium's datapath (root), with the stand-in for
//! Cilium's programs (`bpf/cilium_standin.c`): the agent keeping its place
//! on every hook and reporting it; what BPF host routing's
//! `bpf_redirect_peer` hides from which hook; and the lab's exact loss with
//! the stand-in on every Cilium device of every node, on TCX and on forced
//! netlink, through Cilium restarts and under BPF host routing
//! (docs/hooks.md).
use std::time::{Duration, Instant};

use aya::programs::TcAttachType;
use crossover_tests::{
    agents::{Agents, assert_wire_drops, loss_row},
    counting::{observer_in, send_datagrams},
    lab::{Fault, Lab, LabSpec, Overlay, traffic},
    netns::{Netns, TwoNodes, http_get, in_netns, unique},
    standin::{Place, Standin, Verdict},
};
use observer::datapath::{AttachMode, Hook, Observer};

const DATAGRAMS: u64 = 300;

/// The agent checks its place periodically (attaching a TCX program or a
/// filter raises no link event): something put in front of it on a node's
/// underlay egress is found and moved behind crossover again, and the agent
/// says so in /api/v1/status and /metrics.
fn agent_takes_the_front_back(attach_mode: &str, intruder_place: Place) {
    let lab = Lab::up(&LabSpec {
        name: unique("ho"),
        nodes: 2,
        migrated: 1,
        pods: 0,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start_with(&lab, &["--attach-mode", attach_mode]);
    let ns = lab.node_ns("control-plane");
    let url = &agents.urls[0];
    let status = || -> serde_json::Value {
        serde_json::from_str(&http_get(&ns, &format!("{url}/api/v1/status")).1).unwrap()
    };
    let metrics = || http_get(&ns, &format!("{url}/metrics")).1;
    let eth0_egress = |s: &serde_json::Value| {
        s["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["iface"] == "eth0" && h["direction"] == "egress")
            .cloned()
            .unwrap_or_else(|| panic!("no eth0 egress in {s:#}"))
    };
    let before = status();
    assert_eq!(eth0_egress(&before)["placement"], "first", "{before:#}");
    assert_eq!(eth0_egress(&before)["hook"], "underlay");
    let body = metrics();
    assert!(
        body.contains("crossover_hook_reasserted_total{node=\"control-plane\"} 0"),
        "{body}"
    );
    assert!(body.contains(
        "crossover_hooks_blind{node=\"control-plane\",hook=\"underlay\",direction=\"egress\"} 0"
    ));
    // The families are valid exposition: promtool's lint finds nothing in
    // them (other families are not this test's business).
    let lint = promtool_check_metrics(&body);
    assert!(
        !lint.contains("crossover_hook"),
        "promtool on the hook families:\n{lint}"
    );

    let mut intruder = Standin::load();
    intruder.attach(&ns, "eth0", TcAttachType::Egress, intruder_place);
    let deadline = Instant::now() + observer::datapath::ORDER_CHECK + Duration::from_secs(5);
    while !metrics().contains("crossover_hook_reasserted_total{node=\"control-plane\"} 1") {
        assert!(
            Instant::now() < deadline,
            "the agent never took the front back: {:#}",
            status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = status();
    assert_eq!(eth0_egress(&after)["placement"], "first", "{after:#}");
    // And the kernel agrees: the intruder runs last.
    if intruder_place == Place::Clsact {
        let filters = crossover_tests::netns::sh(&[
            "ip", "netns", "exec", &ns, "tc", "filter", "show", "dev", "eth0", "egress",
        ]);
        let ours = filters.find("handle 0xc055").expect("our filter");
        let theirs = filters.find("handle 0x1 ").expect("the intruder's filter");
        assert!(ours < theirs, "ours listed (and run) first:\n{filters}");
    } else {
        let chain = in_netns(&ns, || {
            aya::programs::SchedClassifier::query_tcx("eth0", TcAttachType::Egress)
                .unwrap()
                .1
                .iter()
                .map(|p| p.id())
                .collect::<Vec<u32>>()
        });
        assert_eq!(
            (chain.len(), chain.last().copied()),
            (2, Some(intruder.program_id())),
            "crossover first, the intruder behind it"
        );
    }
    drop(intruder);
    drop(agents);
}

/// `promtool check metrics` on `body`: what it printed.
fn promtool_check_metrics(body: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_agent_takes_the_tcx_head_back_and_reports_it() {
    agent_takes_the_front_back("tcx", Place::TcxHead);
}

#[test]
fn the_agent_gets_in_front_of_a_later_cilium_filter() {
    agent_takes_the_front_back("netlink", Place::Clsact);
}

/// A pod on node B behind the host-side veth `lxcpod`, at 10.245.1.5 on
/// Cilium's pod network, with static neighbours so no ARP crosses a count.
/// Returns the pod's namespace.
fn pod_on_b(nodes: &TwoNodes) -> Netns {
    let pod = Netns::new("hp");
    nodes.b.exec(&[
        "ip",
        "link",
        "add",
        "lxcpod",
        "type",
        "veth",
        "peer",
        "eth0",
        "netns",
        &pod.name,
        "address",
        "02:00:00:00:05:05",
    ]);
    pod.exec(&["ip", "addr", "add", "10.245.1.5/32", "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        nodes.b.exec(&["sysctl", "-qw", sysctl]);
    }
    nodes.b.exec(&["ip", "link", "set", "lxcpod", "up"]);
    nodes
        .b
        .exec(&["ip", "route", "add", "10.245.1.5/32", "dev", "lxcpod"]);
    nodes.b.exec(&[
        "ip",
        "neigh",
        "add",
        "10.245.1.5",
        "lladdr",
        "02:00:00:00:05:05",
        "dev",
        "lxcpod",
        "nud",
        "permanent",
    ]);
    pod
}

/// Sends `count` datagrams from node A's cilium_vxlan address to the pod's
/// `port`; returns how many the pod received.
fn send_to_pod(nodes: &TwoNodes, pod: &Netns, port: u16, count: u64) -> u64 {
    send_datagrams(
        (&nodes.a.name, "10.245.0.1:0"),
        (&pod.name, &format!("10.245.1.5:{port}")),
        count,
    )
}

/// The ifindex of `iface` in namespace `ns` (`ip netns exec` mounts the
/// namespace's own /sys).
fn host_ifindex(ns: &str, iface: &str) -> u32 {
    crossover_tests::netns::sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        &format!("/sys/class/net/{iface}/ifindex"),
    ])
    .trim()
    .parse()
    .unwrap()
}

/// Datagrams to `port` counted at `point` `direction`.
fn at(observer: &Observer, port: u16, point: &str, direction: &str) -> u64 {
    let snap = observer.snapshot().unwrap();
    snap.flows
        .iter()
        .filter(|f| {
            f.dst_port == port && f.point.label() == point && f.direction.label() == direction
        })
        .map(|f| f.packets)
        .sum()
}

/// Under legacy host routing a packet to a pod crosses the host-side
/// veth's egress; under BPF host routing Cilium's program on the overlay
/// device hands it to the pod with `bpf_redirect_peer` and that hook never
/// runs. The pod receives every datagram either way, the underlay and the
/// overlay device (where crossover runs before Cilium) count every one, and
/// the pod hook counts them only under legacy routing (docs/hooks.md).
#[test]
fn bpf_host_routing_skips_the_pod_veth_but_not_the_underlay() {
    let nodes = TwoNodes::new();
    let pod = pod_on_b(&nodes);
    let mut b = observer_in(&nodes.b, "node-b", AttachMode::Tcx);
    for (iface, hook) in [
        ("u0", Hook::Underlay),
        ("cilium_vxlan", Hook::OverlayCilium),
        ("lxcpod", Hook::Pod),
    ] {
        b.attach(iface, hook).unwrap();
    }
    const LEGACY: u16 = 7001;
    const BPF: u16 = 7002;

    let mut cilium = Standin::load();
    cilium.attach(
        &nodes.b.name,
        "cilium_vxlan",
        TcAttachType::Ingress,
        Place::TcxTail,
    );
    assert_eq!(send_to_pod(&nodes, &pod, LEGACY, DATAGRAMS), DATAGRAMS);
    assert_eq!(
        [
            at(&b, LEGACY, "underlay", "ingress"),
            at(&b, LEGACY, "overlay", "ingress"),
            at(&b, LEGACY, "pod", "egress"),
        ],
        [DATAGRAMS; 3],
        "legacy host routing: every hook on the way sees every datagram"
    );
    drop(cilium);

    let lxcpod = host_ifindex(&nodes.b.name, "lxcpod");
    let mut cilium = Standin::with(Verdict::RedirectPeer);
    cilium.pod([10, 245, 1, 5].into(), lxcpod);
    cilium.attach(
        &nodes.b.name,
        "cilium_vxlan",
        TcAttachType::Ingress,
        Place::TcxTail,
    );
    // The stack is not on the way any more: without forwarding the pod
    // still gets everything.
    nodes.b.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert_eq!(send_to_pod(&nodes, &pod, BPF, DATAGRAMS), DATAGRAMS);
    assert!(cilium.redirected() >= DATAGRAMS);
    assert_eq!(
        [
            at(&b, BPF, "underlay", "ingress"),
            at(&b, BPF, "overlay", "ingress"),
            at(&b, BPF, "pod", "egress"),
        ],
        [DATAGRAMS, DATAGRAMS, 0],
        "BPF host routing: redirect_peer skips the host-side veth's egress"
    );
}

/// The devices Cilium's programs sit on in a lab node: its NIC, its own
/// devices and its pods' veths.
fn cilium_devices(ns: &str) -> Vec<String> {
    crossover_tests::netns::sh(&["ip", "-n", ns, "-o", "link", "show"])
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name == "eth0" || name.starts_with("cilium_") || name.starts_with("lxc"))
        .collect()
}

/// Exact loss with Cilium's stand-in on both hooks of every Cilium device
/// of every node, installed before crossover as in a migration, and every
/// stand-in restarted (Cilium's agents restarting) in the middle of the
/// stream: the loss the agents report on the faulted pair is what the wire
/// dropped, and no hook is blind. With `host_routing`, the stand-in on
/// `cilium_vxlan`'s ingress redirects into Cilium's pods with
/// `bpf_redirect_peer` (BPF host routing) instead of passing packets up.
fn exact_loss_beside_cilium(attach_mode: &str, place: Place, host_routing: bool) {
    let mut lab = Lab::up(&LabSpec {
        name: unique("hc"),
        nodes: 3,
        migrated: 2,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let mut standins: Vec<Standin> = Vec::new();
    // The node and index of each redirecting stand-in.
    let mut redirecting: Vec<(String, usize)> = Vec::new();
    for node in lab.nodes() {
        let ns = lab.node_ns(&node.name);
        let mut standin = Standin::load();
        let devices = cilium_devices(&ns);
        if node.name != "control-plane" {
            assert!(
                ["eth0", "cilium_vxlan", "cilium_host"]
                    .iter()
                    .all(|d| devices.iter().any(|n| n == d))
                    && devices.iter().any(|n| n.starts_with("lxc")),
                "a migrated node's Cilium devices: {devices:?}"
            );
        }
        for iface in devices {
            for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
                if host_routing && iface == "cilium_vxlan" && direction == TcAttachType::Ingress {
                    let mut redirect = Standin::with(Verdict::RedirectPeer);
                    for pod in &node.pods {
                        if pod.host_if.starts_with("lxc") {
                            redirect.pod(pod.addr, host_ifindex(&ns, &pod.host_if));
                        }
                    }
                    redirect.attach(&ns, &iface, direction, place);
                    redirecting.push((node.name.clone(), standins.len()));
                    standins.push(redirect);
                } else {
                    standin.attach(&ns, &iface, direction, place);
                }
            }
        }
        standins.push(standin);
    }
    let agents = Agents::start_with(&lab, &["--attach-mode", attach_mode]);
    let cp = lab.node_ns("control-plane");
    for url in &agents.urls {
        let status: serde_json::Value =
            serde_json::from_str(&http_get(&cp, &format!("{url}/api/v1/status")).1).unwrap();
        let hooks = status["hooks"].as_array().unwrap();
        assert!(
            hooks.len() >= 2 && hooks.iter().all(|h| h["placement"] == "first"),
            "{url}: {status:#}"
        );
    }
    let id = lab
        .inject(Fault::Loss {
            from: "worker-1".into(),
            to: "worker-2".into(),
            overlay: Overlay::Cilium,
            percent: 3.0,
        })
        .unwrap();
    let (from, to) = (
        lab.endpoint("worker-1/app-1").unwrap(),
        lab.endpoint("worker-2/app-1").unwrap(),
    );
    // Cilium's agents restart mid-stream: their new programs loaded first,
    // swapped in once the stream is under way.
    let next: Vec<Standin> = standins.iter().map(Standin::successor).collect();
    let seen = |standins: &[Standin]| standins.iter().map(Standin::seen).sum::<u64>();
    let started = seen(&standins) + 2000;
    let udp = std::thread::scope(|scope| {
        let stream = scope.spawn(|| traffic::udp_stream(&from, &to, 20_000, 10_000, 200));
        while seen(&standins) < started && !stream.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        standins = std::mem::take(&mut standins)
            .into_iter()
            .zip(next)
            .map(|(old, next)| old.hand_over(next))
            .collect();
        stream.join().unwrap().unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let drops = lab.drops(id).unwrap();
    assert!(drops > 0, "the fault dropped something");
    // The control-plane carries none of the stream.
    assert!(
        standins.iter().filter(|s| s.seen() > 0).count() >= 2,
        "the stream's nodes' restarted stand-ins ran"
    );
    // The stream's receiving end redirected it into the pod.
    for (node, j) in &redirecting {
        if node == "worker-2" {
            assert!(
                standins[*j].redirected() > 0,
                "worker-2 redirected the stream"
            );
        }
    }
    // Every node runs Cilium's overlay, migrated or not.
    let nodes = if host_routing { lab.nodes().count() } else { 0 };
    assert_eq!(redirecting.len(), nodes);

    let matrix = agents.loss_since_start(&cp);
    let faulty = loss_row(
        &matrix,
        "worker-1",
        "worker-2",
        "cilium",
        ("cilium", "cilium"),
    );
    assert_wire_drops(faulty, udp.sent, drops);
    drop(agents);
    drop(standins);
}

#[test]
fn exact_loss_beside_cilium_on_tcx() {
    exact_loss_beside_cilium("tcx", Place::TcxTail, false);
}

#[test]
fn exact_loss_beside_cilium_with_bpf_host_routing() {
    exact_loss_beside_cilium("tcx", Place::TcxTail, true);
}

#[test]
fn exact_loss_beside_cilium_with_bpf_host_routing_on_netlink() {
    exact_loss_beside_cilium("netlink", Place::Clsact, true);
}

#[test]
fn exact_loss_beside_cilium_on_netlink() {
    exact_loss_beside_cilium("netlink", Place::Clsact, false);
}
