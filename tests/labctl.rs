//! The lab as a tool: its command line, `down` after a crash, migrating a
//! node, the MTU fault. Needs root (network namespaces).
use std::{
    process::{Command, Output},
    time::Duration,
};

use crossover_tests::{
    lab::{
        Fault, Lab, LabSpec, Network, Overlay, PodKind,
        exec::{self, netns_list},
        ipip, traffic,
    },
    netns::unique,
    require_root,
};

const LAB: &str = env!("CARGO_BIN_EXE_lab");

fn lab_cmd(name: &str, args: &[&str]) -> Output {
    Command::new(LAB)
        .args(["--name", name])
        .args(args)
        .output()
        .expect("run lab")
}

fn namespaces_of(name: &str) -> Vec<String> {
    let prefix = format!("xo.{name}.");
    netns_list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn down_after_a_crash_halfway_through_up_removes_everything() {
    require_root();
    let name = unique("c");
    let mut child = Command::new(LAB)
        .args(["--name", &name, "up", "--nodes", "8", "--pods", "4"])
        .spawn()
        .unwrap();
    // Kill it once some of the lab exists, long before it is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while namespaces_of(&name).len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = namespaces_of(&name);
    assert!(!partial.is_empty(), "the crash left something to clean up");
    let out = lab_cmd(&name, &["down"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
    // And again: nothing there is not an error.
    let again = lab_cmd(&name, &["down"]);
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("removed 0 namespaces"));
}

#[test]
fn command_line_builds_faults_and_removes_a_lab() {
    require_root();
    let name = unique("k");
    let up = lab_cmd(
        &name,
        &["up", "--nodes", "2", "--migrated", "1", "--pods", "1"],
    );
    assert!(up.status.success(), "{up:?}");
    let status = lab_cmd(&name, &["status", "--json"]);
    let state: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(state["nodes"].as_array().unwrap().len(), 2);
    // A second `up` of the same name is refused, naming the remedy.
    let twice = lab_cmd(&name, &["up"]);
    assert!(!twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("lab down"),
        "{twice:?}"
    );
    let fault = lab_cmd(
        &name,
        &[
            "fault",
            "blackhole",
            "--from",
            "control-plane",
            "--to",
            "worker-1",
            "--overlay",
            "cilium",
        ],
    );
    assert!(fault.status.success(), "{fault:?}");
    assert!(String::from_utf8_lossy(&fault.stdout).starts_with("fault 1: blackhole"));
    // One TCP connection across the blackholed overlay, through the CLI.
    let answered = || {
        let args = "traffic tcp --from control-plane/app-1 --to worker-1/app-1 --count 1";
        let out = lab_cmd(&name, &args.split(' ').collect::<Vec<_>>());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["answered"].as_u64().unwrap()
    };
    assert_eq!(answered(), 0);
    assert!(lab_cmd(&name, &["fault", "clear", "1"]).status.success());
    assert_eq!(answered(), 1);
    // An MTU black hole: made and cleared through the CLI (what it does
    // to packets: tests/agent.rs).
    let hole = lab_cmd(
        &name,
        &[
            "fault",
            "mtu-blackhole",
            "--from",
            "control-plane",
            "--to",
            "worker-1",
            "--overlay",
            "cilium",
            "--mtu",
            "1400",
        ],
    );
    assert!(
        String::from_utf8_lossy(&hole.stdout)
            .starts_with("fault 2: MTU black hole between control-plane and worker-1"),
        "{hole:?}"
    );
    assert!(lab_cmd(&name, &["fault", "clear", "2"]).status.success());
    for (args, complaint) in [
        (
            &[
                "fault",
                "mtu-blackhole",
                "--from",
                "control-plane",
                "--to",
                "worker-1",
                "--overlay",
                "legacy",
                "--mtu",
                "1500",
            ][..],
            "within 68..1500",
        ),
        (
            &[
                "fault",
                "mtu-blackhole",
                "--from",
                "worker-1",
                "--to",
                "worker-1",
                "--overlay",
                "legacy",
                "--mtu",
                "1400",
            ][..],
            "pick two nodes",
        ),
        (
            &[
                "fault",
                "loss",
                "--from",
                "control-plane",
                "--to",
                "nowhere",
                "--overlay",
                "legacy",
                "--percent",
                "2",
            ][..],
            "no node \"nowhere\"",
        ),
        (
            &[
                "fault",
                "loss",
                "--from",
                "control-plane",
                "--to",
                "worker-1",
                "--overlay",
                "legacy",
                "--percent",
                "0",
            ][..],
            "must be in (0, 100]",
        ),
        (
            &[
                "fault",
                "mtu",
                "--node",
                "worker-1",
                "--overlay",
                "geneve",
                "--mtu",
                "1200",
            ][..],
            "no Geneve device",
        ),
        (
            &[
                "traffic",
                "ping",
                "--from",
                "worker-1/nope",
                "--to",
                "control-plane",
            ][..],
            "no pod \"nope\"",
        ),
    ] {
        let out = lab_cmd(&name, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(complaint),
            "{args:?}: {stderr}"
        );
    }
    assert!(lab_cmd(&name, &["down"]).status.success());
    assert!(namespaces_of(&name).is_empty());
    let gone = lab_cmd(&name, &["status"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("lab up"),
        "{gone:?}"
    );
}

#[test]
fn migrating_a_node_moves_its_pods_to_cilium() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("m"),
        nodes: 3,
        migrated: 0,
        pods: 2,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let before: Vec<_> = lab.state().nodes[1].pods.clone();
    assert!(before.iter().all(|p| p.network == Network::Legacy));
    lab.migrate("worker-1", false).unwrap();
    let node = &lab.state().nodes[1];
    assert!(node.migrated && !node.cordoned);
    for pod in &node.pods {
        match pod.kind {
            // The guide's step 7 is still to come for DaemonSet pods.
            PodKind::DaemonSet => assert_eq!(pod.network, Network::Legacy, "{pod:?}"),
            PodKind::App => {
                assert_eq!(pod.network, Network::Cilium, "{pod:?}");
                assert!(pod.host_if.starts_with("lxc") && pod.addr.octets()[..3] == [10, 245, 1]);
            }
        }
    }
    lab.restart_daemonset_pods("worker-1").unwrap();
    assert!(
        lab.state().nodes[1]
            .pods
            .iter()
            .all(|p| p.network == Network::Cilium)
    );
    // Both ways across the overlays from the new pods.
    let e = |id: &str| lab.endpoint(id).unwrap();
    for (from, to) in [
        ("worker-1/app-1", "worker-2/app-1"),
        ("worker-2/app-1", "worker-1/ds"),
    ] {
        let report = traffic::tcp_connections(&e(from), &e(to), 2, Duration::from_secs(1)).unwrap();
        assert_eq!(report.answered, 2, "{from} -> {to}: {report:?}");
    }
    assert!(
        lab.migrate("worker-1", true).is_err(),
        "migrating twice is refused"
    );
}

#[test]
fn a_lowered_overlay_mtu_refuses_what_no_longer_fits() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("u"),
        nodes: 2,
        migrated: 1,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    // control-plane's legacy pod to worker-1's Cilium pod: out through
    // control-plane's cilium_vxlan. 1400 bytes of IP fit 1450, not 1300.
    let ping = |lab: &Lab| {
        let pod = lab.pod("control-plane/app-1").unwrap();
        let target = lab.pod("worker-1/app-1").unwrap().addr.to_string();
        Command::new("ip")
            .args([
                "netns", "exec", &pod.netns, "ping", "-c", "2", "-W", "1", "-M", "do", "-s",
                "1372", &target,
            ])
            .output()
            .unwrap()
    };
    assert!(ping(&lab).status.success(), "fits before the fault");
    let id = lab
        .inject(Fault::Mtu {
            node: "control-plane".into(),
            overlay: Overlay::Cilium,
            mtu: 1300,
        })
        .unwrap();
    let out = ping(&lab);
    assert!(
        !out.status.success(),
        "too big for the lowered MTU: {out:?}"
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Frag needed")
            || text.contains("mtu = 1300")
            || text.contains("Message too long"),
        "{text}"
    );
    lab.clear(id).unwrap();
    // Like any Linux host, the pod remembers the path MTU it was told for
    // ten minutes: forget it, as an SRE would after fixing the MTU.
    let pod_ns = lab.pod("control-plane/app-1").unwrap().netns.clone();
    crossover_tests::lab::exec::in_ns(&pod_ns, &["ip", "route", "flush", "cache"]).unwrap();
    let out = ping(&lab);
    assert!(
        out.status.success(),
        "fits again once the fault is cleared: {out:?}"
    );
}

/// `lab up --legacy calico-vxlan` builds legacy nodes as Calico does in
/// VXLAN mode (no bridge, `vxlan.calico` on 4789 with VNI 4096, `cali*`
/// veths with /32 routes and proxy ARP, `169.254.1.1` in the pod, Felix's
/// natOutgoing), pods reach each other through it, and a legacy-overlay
/// blackhole cuts exactly that path on Calico's port.
#[test]
fn calico_vxlan_nodes_are_built_as_calico_builds_them() {
    require_root();
    let bad = lab_cmd(&unique("w"), &["up", "--legacy", "weave"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains(
            "expected one of flannel, calico-vxlan, aws-native, calico-crosssubnet, calico-ipip"
        ),
        "{bad:?}"
    );
    let (name, lab) = up_two_nodes("cv", "calico-vxlan");
    let ns = lab.node_ns("control-plane");
    let sh = |args: &str| {
        exec::in_ns(&ns, &args.split(' ').collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{e:#}"))
    };
    let vxlan = sh("ip -d link show vxlan.calico");
    for want in ["vxlan id 4096", "dstport 4789", "mtu 1450", "nolearning"] {
        assert!(vxlan.contains(want), "{want}: {vxlan}");
    }
    assert!(
        exec::in_ns(&ns, &["ip", "link", "show", "cni0"]).is_err(),
        "Calico has no bridge"
    );
    let routes = sh("ip -4 route");
    assert!(routes.contains("blackhole 10.244.0.0/24"), "{routes}");
    assert!(
        routes.contains("10.244.1.0/24 via 10.244.1.0 dev vxlan.calico onlink"),
        "{routes}"
    );
    let pod = lab.pod("control-plane/app-1").unwrap();
    assert!(pod.host_if.starts_with("cali"), "{pod:?}");
    assert!(
        routes.contains(&format!("{} dev {} scope link", pod.addr, pod.host_if)),
        "{routes}"
    );
    assert_eq!(
        sh(&format!(
            "sysctl -n net.ipv4.conf.{}.proxy_arp",
            pod.host_if
        ))
        .trim(),
        "1"
    );
    let inside = exec::in_ns(&pod.netns, &["ip", "-4", "route"]).unwrap();
    assert!(
        inside.contains("default via 169.254.1.1 dev eth0"),
        "{inside}"
    );
    assert!(sh("iptables -t nat -S").contains("-N cali-nat-outgoing"));
    let shape = lab_cmd(&name, &["shape", "worker-1"]);
    let shape: serde_json::Value = serde_json::from_slice(&shape.stdout).unwrap();
    assert_eq!(
        shape["networks"][0]["encapsulation"],
        serde_json::json!({"vxlan": {"port": 4789}}),
        "{shape:#}"
    );

    blackhole_cuts_the_legacy_path(&name, pod.addr, "no NAT inside the pool");
    mtu_fault_lowers_and_restores(&name, &lab, "vxlan.calico", 1450);
}

/// `lab up --legacy calico-ipip` builds Calico's `ipipMode: Always`:
/// `tunl0` (here a veth, NOARP, MTU 1480, the block's `.0`) with the TC
/// stand-in for the ipip driver on its far end and behind crossover on
/// `eth0`, still attached after `lab up` has exited; BIRD's routes via
/// each peer's underlay address out of `tunl0`; `cali*` veths of MTU 1480;
/// Felix's masquerade `-o tunl0`. Pods reach each other through it, and a
/// legacy blackhole matching IPv4 protocol 4 on the wire cuts exactly that
/// path.
#[test]
fn calico_ipip_nodes_are_built_as_calico_builds_them() {
    require_root();
    let (name, lab) = up_two_nodes("ci", "calico-ipip");
    let ns = lab.node_ns("control-plane");
    let sh = |args: &str| {
        exec::in_ns(&ns, &args.split(' ').collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{e:#}"))
    };
    let tunl0 = sh("ip -d link show tunl0");
    for want in ["NOARP", "mtu 1480", "veth"] {
        assert!(tunl0.contains(want), "{want}: {tunl0}");
    }
    assert!(
        sh("ip -4 -o addr show dev tunl0").contains("inet 10.244.0.0/32"),
        "the block's first address"
    );
    for absent in ["vxlan.calico", "flannel.1", "cni0"] {
        assert!(
            exec::in_ns(&ns, &["ip", "link", "show", absent]).is_err(),
            "{absent} in an IPIP node"
        );
    }
    for (dev, program) in [("tunl0p", "ipip_encap"), ("eth0", "ipip_decap")] {
        let filters = sh(&format!("tc filter show dev {dev} ingress"));
        assert!(
            filters.contains(&format!("name {program}")) && filters.contains("direct-action"),
            "{dev}: {filters}"
        );
    }
    let routes = sh("ip -4 route");
    assert!(
        routes.contains("blackhole 10.244.0.0/24 proto 80"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.1.0/24 via 172.18.0.3 dev tunl0 proto bird onlink"),
        "{routes}"
    );
    let pod = lab.pod("control-plane/app-1").unwrap();
    assert!(pod.host_if.starts_with("cali"), "{pod:?}");
    assert!(sh(&format!("ip link show {}", pod.host_if)).contains("mtu 1480"));
    let nat = sh("iptables -t nat -S");
    assert!(
        nat.contains("-A cali-POSTROUTING -o tunl0 ") && nat.contains("-N cali-nat-outgoing"),
        "{nat}"
    );
    let shape = lab_cmd(&name, &["shape", "worker-1"]);
    let shape: serde_json::Value = serde_json::from_slice(&shape.stdout).unwrap();
    assert_eq!(shape["networks"][0]["encapsulation"], "ipip", "{shape:#}");

    blackhole_cuts_the_legacy_path(&name, pod.addr, "no NAT inside the pool");
    mtu_fault_lowers_and_restores(&name, &lab, "tunl0", 1480);
}

/// The MTU fault (fault 2 of the lab) lowers control-plane's legacy tunnel
/// `device` to 1300, and clearing it restores the device's own `normal`.
fn mtu_fault_lowers_and_restores(name: &str, lab: &Lab, device: &str, normal: u32) {
    let ns = lab.node_ns("control-plane");
    let link = || exec::in_ns(&ns, &["ip", "link", "show", device]).unwrap();
    let mtu = "fault mtu --node control-plane --overlay legacy --mtu 1300";
    assert!(
        lab_cmd(name, &mtu.split(' ').collect::<Vec<_>>())
            .status
            .success()
    );
    assert!(link().contains("mtu 1300"), "{}", link());
    assert!(lab_cmd(name, &["fault", "clear", "2"]).status.success());
    assert!(link().contains(&format!("mtu {normal} ")), "{}", link());
}

/// `lab up --legacy calico-crosssubnet` builds Calico's `vxlanMode:
/// CrossSubnet`: nodes alternate between two underlay /24s with a router
/// between them; a peer's block in the same subnet is routed via its
/// underlay address on `eth0` (Felix's protocol 80), one across subnets
/// through `vxlan.calico`, whose VTEP entries exist for every peer. A
/// native blackhole cuts exactly the same-subnet pair's pod traffic, a
/// legacy one exactly the cross-subnet pair's.
#[test]
fn calico_crosssubnet_nodes_route_natively_within_a_subnet_and_tunnel_across() {
    require_root();
    let (name, lab, _) = up_cross_subnet(
        "cs",
        "calico-crosssubnet",
        &[
            "10.244.2.0/24 via 172.18.0.4 dev eth0 proto 80",
            "10.244.1.0/24 via 10.244.1.0 dev vxlan.calico onlink",
            "10.244.3.0/24 via 10.244.3.0 dev vxlan.calico onlink",
        ],
    );
    // Felix programs every VTEP, whichever route a peer's block takes.
    let neigh = sh_in(&lab, "control-plane", "ip neigh show dev vxlan.calico");
    for peer in ["10.244.1.0", "10.244.2.0", "10.244.3.0"] {
        assert!(neigh.contains(peer), "{peer}: {neigh}");
    }

    blackholes_cut_exactly_their_subnet_pair(&name);
}

/// `lab up --legacy calico-ipip-crosssubnet` builds Calico's `ipipMode:
/// CrossSubnet`: the same two subnets; BIRD's routes, a same-subnet
/// peer's block via its underlay address on `eth0`, another subnet's via
/// it out of `tunl0`; no VXLAN device. The stand-in takes IP-in-IP only from
/// the other subnet's nodes: a same-subnet peer's crafted IP-in-IP reaches
/// the node's stack (its raw socket of protocol 4 takes every packet),
/// the other subnet's is decapsulated before the stack sees it. A native
/// blackhole cuts exactly the same-subnet pair's pod traffic, a legacy
/// one (IPv4 protocol 4 on the wire) exactly the cross-subnet pair's.
#[test]
fn calico_ipip_crosssubnet_nodes_route_natively_within_a_subnet_and_tunnel_across() {
    require_root();
    let (name, lab, shape) = up_cross_subnet(
        "ix",
        "calico-ipip-crosssubnet",
        &[
            "10.244.2.0/24 via 172.18.0.4 dev eth0 proto bird",
            "10.244.1.0/24 via 172.18.1.3 dev tunl0 proto bird onlink",
            "10.244.3.0/24 via 172.18.1.5 dev tunl0 proto bird onlink",
        ],
    );
    assert!(sh_in(&lab, "control-plane", "ip -d link show tunl0").contains("mtu 1480"));
    assert!(
        exec::in_ns(
            &lab.node_ns("control-plane"),
            &["ip", "link", "show", "vxlan.calico"]
        )
        .is_err(),
        "vxlan.calico in an IPIP node"
    );
    assert_eq!(shape["networks"][0]["encapsulation"], "ipip", "{shape:#}");
    const CRAFTED: u64 = 20;
    let stack_took = |from: &str| {
        let inner = format!("{from}/app-1");
        ipip::send(
            &lab,
            from,
            "control-plane",
            &inner,
            "control-plane/app-1",
            CRAFTED,
            200,
        )
        .unwrap_or_else(|e| panic!("{from}: {e:#}"))
    };
    assert_eq!(
        stack_took("worker-2"),
        CRAFTED,
        "a same-subnet peer's IP-in-IP is not decapsulated"
    );
    assert_eq!(stack_took("worker-3"), 0, "the other subnet's is");

    blackholes_cut_exactly_their_subnet_pair(&name);
}

/// Runs a command in `node`'s namespace, its output or a panic.
fn sh_in(lab: &Lab, node: &str, args: &str) -> String {
    exec::in_ns(&lab.node_ns(node), &args.split(' ').collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// `lab up` of four nodes of a CrossSubnet `legacy`, none migrated, one
/// app pod each, and what both CrossSubnet modes build alike: nodes
/// alternating between two underlay /24s, the router's address in each,
/// the other subnet via it, Felix's blackhole for the node's own block
/// and a same-subnet peer's block via its underlay address on `eth0`
/// (by Felix or BIRD: `peer_routes`, the control plane's routes to its peers'
/// blocks, say which), and the shape marking the legacy network
/// `cross_subnet`, which it returns.
fn up_cross_subnet(
    prefix: &str,
    legacy: &str,
    peer_routes: &[&str],
) -> (String, Lab, serde_json::Value) {
    let name = unique(prefix);
    let args = format!("up --nodes 4 --migrated 0 --pods 1 --legacy {legacy}");
    let up = lab_cmd(&name, &args.split(' ').collect::<Vec<_>>());
    assert!(up.status.success(), "{up:?}");
    let lab = Lab::open(&name).unwrap().remove_on_drop();
    for (node, addr) in [
        ("control-plane", "172.18.0.2/24"),
        ("worker-1", "172.18.1.3/24"),
        ("worker-2", "172.18.0.4/24"),
        ("worker-3", "172.18.1.5/24"),
    ] {
        assert!(
            sh_in(&lab, node, "ip -4 addr show dev eth0").contains(addr),
            "{node}: {addr}"
        );
    }
    let routes = sh_in(&lab, "control-plane", "ip -4 route");
    let common = [
        "172.18.1.0/24 via 172.18.0.254 dev eth0",
        "blackhole 10.244.0.0/24",
    ];
    for want in peer_routes.iter().chain(&common) {
        assert!(routes.contains(want), "{legacy}: {want}:\n{routes}");
    }
    let routes = sh_in(&lab, "worker-1", "ip -4 route");
    assert!(
        routes.contains("10.244.3.0/24 via 172.18.1.5 dev eth0 proto "),
        "{legacy}: {routes}"
    );
    let underlay = exec::in_ns(&lab.underlay_ns(), &["ip", "-4", "addr"]).unwrap();
    assert!(
        underlay.contains("172.18.0.254/24") && underlay.contains("172.18.1.254/24"),
        "{underlay}"
    );
    let shape = lab_cmd(&name, &["shape", "worker-1"]);
    let shape: serde_json::Value = serde_json::from_slice(&shape.stdout).unwrap();
    assert_eq!(shape["networks"][0]["cross_subnet"], true, "{shape:#}");
    assert_eq!(shape["nodes"][3]["underlay"], "172.18.1.5", "{shape:#}");
    (name, lab, shape)
}

/// In a CrossSubnet lab: control-plane/app-1 reaches worker-2/app-1 (same
/// subnet) and worker-3/app-1 (the other); a native blackhole towards
/// worker-2 cuts exactly the first, a legacy one towards worker-3 exactly
/// the second; the native overlay has no device an MTU fault could lower.
fn blackholes_cut_exactly_their_subnet_pair(name: &str) {
    let answered = |to: &str| {
        let args = format!("traffic tcp --from control-plane/app-1 --to {to} --count 1");
        let out = lab_cmd(name, &args.split(' ').collect::<Vec<_>>());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["answered"].as_u64().unwrap()
    };
    // Which of the same-subnet and the cross-subnet pair answer while
    // `fault` (if any) is in place, the fault cleared afterwards.
    let mut next_fault = 1;
    let mut with_fault = |fault: Option<&str>| {
        if let Some(fault) = fault {
            let out = lab_cmd(name, &fault.split(' ').collect::<Vec<_>>());
            assert!(out.status.success(), "{out:?}");
        }
        let both = (answered("worker-2/app-1"), answered("worker-3/app-1"));
        if fault.is_some() {
            let id = next_fault.to_string();
            assert!(lab_cmd(name, &["fault", "clear", &id]).status.success());
            next_fault += 1;
        }
        both
    };
    assert_eq!(with_fault(None), (1, 1));
    assert_eq!(
        with_fault(Some(
            "fault blackhole --from control-plane --to worker-2 --overlay native"
        )),
        (0, 1)
    );
    assert_eq!(
        with_fault(Some(
            "fault blackhole --from control-plane --to worker-3 --overlay legacy"
        )),
        (1, 0)
    );
    // The native overlay has no device whose MTU a fault could lower.
    let mtu = "fault mtu --node control-plane --overlay native --mtu 1300";
    let out = lab_cmd(name, &mtu.split(' ').collect::<Vec<_>>());
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("no device of its own"),
        "{out:?}"
    );
}

/// `lab up --legacy aws-native` builds legacy nodes as the AWS VPC CNI
/// does: no tunnel and no bridge, `eni*` veths with /32 routes and the
/// to-pod rule, pods with addresses of the node subnet and `169.254.1.1`
/// as gateway, `AWS-SNAT-CHAIN-0`, a /32 route per peer pod via its node
/// (the VPC fabric's stand-in) that goes with the pod; pods reach each
/// other natively, and a legacy blackhole cuts exactly that path.
#[test]
fn aws_native_nodes_are_built_as_the_aws_vpc_cni_builds_them() {
    require_root();
    let (name, mut lab) = up_two_nodes("aw", "aws-native");
    let ns = lab.node_ns("control-plane");
    let sh = |args: &str| {
        exec::in_ns(&ns, &args.split(' ').collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{e:#}"))
    };
    for absent in ["cni0", "flannel.1", "vxlan.calico"] {
        assert!(
            exec::in_ns(&ns, &["ip", "link", "show", absent]).is_err(),
            "the AWS VPC CNI has no {absent}"
        );
    }
    let pod = lab.pod("control-plane/app-1").unwrap().clone();
    let peer = lab.pod("worker-1/app-1").unwrap().clone();
    assert!(pod.host_if.starts_with("eni"), "{pod:?}");
    let subnet: ipnet::Ipv4Net = "172.18.0.0/16".parse().unwrap();
    assert!(
        subnet.contains(&pod.addr) && subnet.contains(&peer.addr),
        "pods in the nodes' subnet: {pod:?} {peer:?}"
    );
    let routes = sh("ip -4 route");
    assert!(
        routes.contains(&format!("{} dev {} scope link", pod.addr, pod.host_if)),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("{} via 172.18.0.3 dev eth0", peer.addr)),
        "the fabric's route to the peer's pod: {routes}"
    );
    assert!(
        sh("ip rule").contains(&format!("512:\tfrom all to {} lookup main", pod.addr)),
        "{}",
        sh("ip rule")
    );
    let inside = exec::in_ns(&pod.netns, &["ip", "-4", "route"]).unwrap();
    assert!(
        inside.contains("default via 169.254.1.1 dev eth0"),
        "{inside}"
    );
    let addr = exec::in_ns(&pod.netns, &["ip", "-4", "addr", "show", "eth0"]).unwrap();
    assert!(addr.contains(&format!("{}/32", pod.addr)), "{addr}");
    let nat = sh("iptables -t nat -S");
    assert!(
        nat.contains("-A AWS-SNAT-CHAIN-0 -d 172.18.0.0/16")
            && nat.contains("-j SNAT --to-source 172.18.0.2 --random-fully"),
        "{nat}"
    );
    let shape = lab_cmd(&name, &["shape", "worker-1"]);
    let shape: serde_json::Value = serde_json::from_slice(&shape.stdout).unwrap();
    assert_eq!(shape["networks"][0]["encapsulation"], "native", "{shape:#}");
    assert_eq!(shape["networks"][0]["cidrs"], serde_json::json!([]));
    let listed = shape["pods"].as_array().unwrap();
    assert!(
        listed.contains(&serde_json::json!({
            "addr": pod.addr.to_string(), "node": "control-plane", "role": "legacy"
        })),
        "{shape:#}"
    );

    blackhole_cuts_the_legacy_path(&name, pod.addr, "no SNAT inside the VPC");
    let mtu = "fault mtu --node control-plane --overlay legacy --mtu 1300";
    let out = lab_cmd(&name, &mtu.split(' ').collect::<Vec<_>>());
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("no legacy tunnel device"),
        "{out:?}"
    );

    // A pod's fabric route and rule go with it.
    let worker = lab.node_ns("worker-1");
    lab.delete_pod("worker-1", "app-1").unwrap();
    assert!(!sh("ip -4 route").contains(&peer.addr.to_string()));
    let rules = exec::in_ns(&worker, &["ip", "rule"]).unwrap();
    assert!(!rules.contains(&peer.addr.to_string()), "{rules}");
}

/// `lab up` of two nodes, none migrated, one app pod each, the legacy side
/// built as `legacy` builds it.
fn up_two_nodes(prefix: &str, legacy: &str) -> (String, Lab) {
    let name = unique(prefix);
    let args = format!("up --nodes 2 --migrated 0 --pods 1 --legacy {legacy}");
    let up = lab_cmd(&name, &args.split(' ').collect::<Vec<_>>());
    assert!(up.status.success(), "{up:?}");
    let lab = Lab::open(&name).unwrap().remove_on_drop();
    (name, lab)
}

/// control-plane/app-1 (at `pod`) reaches worker-1/app-1 untranslated
/// (`why`), not while a legacy blackhole cuts control-plane to worker-1
/// (fault 1), and again once it is cleared.
fn blackhole_cuts_the_legacy_path(name: &str, pod: std::net::Ipv4Addr, why: &str) {
    let answered = || {
        let args = "traffic tcp --from control-plane/app-1 --to worker-1/app-1 --count 1";
        let out = lab_cmd(name, &args.split(' ').collect::<Vec<_>>());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if report["answered"] == 1 {
            let seen = report["seen_as"][0].as_str().unwrap();
            assert!(seen.starts_with(&format!("{pod}:")), "{why}: {report}");
        }
        report["answered"].as_u64().unwrap()
    };
    assert_eq!(answered(), 1);
    let blackhole = "fault blackhole --from control-plane --to worker-1 --overlay legacy";
    let fault = lab_cmd(name, &blackhole.split(' ').collect::<Vec<_>>());
    assert!(fault.status.success(), "{fault:?}");
    assert_eq!(answered(), 0);
    assert!(lab_cmd(name, &["fault", "clear", "1"]).status.success());
    assert_eq!(answered(), 1);
}
