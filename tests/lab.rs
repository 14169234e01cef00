//! End to end, in a 3-node lab with one node migrated and crossover on
//! every node: classification, SNAT, loss, handshakes, and detaching, on
//! Flannel's legacy nodes; classification, SNAT, loss and pods created
//! after start also on Calico's (VXLAN mode, IP-in-IP mode, and both
//! CrossSubnet modes: the legacy network native within an underlay subnet,
//! VXLAN or IP-in-IP across, in a 4-node lab) and the AWS VPC CNI's (natively routed pods in the nodes' subnet,
//! each a /32 of the shape).
//! Needs root (namespaces, programs in the kernel).
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use aya::programs::TcAttachType;
use crossover_tests::{
    fleet::{Fleet, tcx_programs_in},
    lab::{Fault, Lab, LabSpec, LegacyCni, Overlay, PodKind, exec, geneve, ipip, plan, traffic},
    netns::unique,
    require_root,
    standin::{Place, Standin},
};
use observer_ebpf::{Direction, Net, Point};
use std::collections::BTreeMap;

use observer::{
    connections::{Connection, Handshake, SnatSeen},
    datapath::{Hook, PeerCounts, Snapshot},
    loss::delivery::{self, Delivery},
};

/// One lab at a time: the loss figures want the CPU to themselves.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// control-plane (legacy pods), worker-1 (migrated: Cilium pods),
/// worker-2 (legacy pods), the legacy ones built as `legacy` builds them.
/// A CrossSubnet lab has worker-3 (legacy pods) too: its nodes alternate
/// between two underlay subnets (control-plane and worker-2 in one,
/// worker-1 and worker-3 in the other), so legacy nodes meet peers both in
/// their subnet (natively routed) and across (VXLAN or IP-in-IP).
fn lab(legacy: LegacyCni) -> Lab {
    require_root();
    Lab::up(&LabSpec {
        name: unique("e"),
        nodes: if legacy.cross_subnet() { 4 } else { 3 },
        migrated: 1,
        pods: 2,
        legacy,
    })
    .expect("lab up")
    .remove_on_drop()
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn node_of(endpoint: &str) -> &str {
    endpoint.split('/').next().unwrap()
}

/// The connection `node` saw towards `server`.
fn find<'a>(conns: &'a [Connection], server: SocketAddrV4, node: &str) -> &'a Connection {
    let found: Vec<_> = conns.iter().filter(|c| c.server == server).collect();
    assert_eq!(
        found.len(),
        1,
        "{node}: one connection to {server} expected, got {found:#?}\nall: {conns:#?}"
    );
    found[0]
}

#[test]
fn every_network_combination_is_classified_on_both_nodes() {
    every_network_combination_is_classified(LegacyCni::Flannel);
}

#[test]
fn every_network_combination_is_classified_on_both_nodes_from_calico_vxlan() {
    every_network_combination_is_classified(LegacyCni::CalicoVxlan);
}

/// The same legacy network natively within a subnet (control-plane and
/// worker-2) and through `vxlan.calico` across (worker-3 to the control
/// plane; worker-1 to the control plane after Cilium's masquerade).
#[test]
fn every_network_combination_is_classified_on_both_nodes_from_calico_crosssubnet() {
    every_network_combination_is_classified(LegacyCni::CalicoCrossSubnet);
}

/// IP-in-IP: the same combinations as VXLAN, the legacy overlay now IPv4
/// protocol 4 out of `tunl0` (the TC stand-in for the ipip driver), its
/// tunnel address the block's `.0` as Calico's IPAM gives it.
#[test]
fn every_network_combination_is_classified_on_both_nodes_from_calico_ipip() {
    every_network_combination_is_classified(LegacyCni::CalicoIpip);
}

/// IPIP CrossSubnet: the CrossSubnet cases, the tunnel across subnets now
/// IPv4 protocol 4 out of `tunl0` (worker-3 to the control plane, and
/// worker-1's Cilium pods to it after Felix's masquerade onto `tunl0`'s
/// address), native within one.
#[test]
fn every_network_combination_is_classified_on_both_nodes_from_calico_ipip_crosssubnet() {
    every_network_combination_is_classified(LegacyCni::CalicoIpipCrossSubnet);
}

/// The stand-in's two paths go where a real `tunl0`'s do (root): what it
/// encapsulates and redirects to `eth0` passes a TCX program on `eth0`'s
/// egress (where crossover's underlay hook runs), and what it
/// decapsulates arrives at `tunl0`'s ingress (crossover's overlay hook),
/// each packet once: the Cilium stand-in counts what its hook saw.
#[test]
fn ipip_stand_in_sends_through_eth0s_tcx_egress_and_delivers_at_tunl0s_ingress() {
    const PINGS: u64 = 200;
    let _serial = serial();
    let lab = lab(LegacyCni::CalicoIpip);
    let mut egress = Standin::load();
    egress.attach(
        &lab.node_ns("control-plane"),
        "eth0",
        TcAttachType::Egress,
        Place::TcxHead,
    );
    let mut ingress = Standin::load();
    ingress.attach(
        &lab.node_ns("worker-2"),
        "tunl0",
        TcAttachType::Ingress,
        Place::TcxHead,
    );
    let (from, to) = (
        lab.endpoint("control-plane/app-1").unwrap(),
        lab.endpoint("worker-2/app-1").unwrap(),
    );
    let report = traffic::ping(&from, &to, PINGS, Duration::from_millis(2)).unwrap();
    assert_eq!(report.received, PINGS, "{report:?}");
    // Only the decapsulated requests enter tunl0; eth0 also sends the odd
    // ARP probe to confirm a peer's address.
    assert_eq!(ingress.seen(), PINGS, "worker-2's tunl0 ingress");
    let sent = egress.seen();
    assert!(
        (PINGS..=PINGS + 10).contains(&sent),
        "control-plane's eth0 TCX egress saw {sent} for {PINGS} encapsulated requests"
    );
}

#[test]
fn every_network_combination_is_classified_on_both_nodes_from_aws_native() {
    every_network_combination_is_classified(LegacyCni::AwsNative);
}

// Sender's view: client and server networks, overlay, the device whose
// address SNAT gave the client. Receiver's view: the client's network,
// and `arrived` when its source is a peer's overlay address (after SNAT,
// or a node's own traffic into an overlay, which leaves from that
// overlay's address: the receiver cannot tell the two apart). `tunnel`
// is the legacy tunnel device: flannel.1 or vxlan.calico.
const TUNNELLED_CASES: [&str; 9] = [
    // from             to                  nets           overlay  SNAT         receiver
    "control-plane/app-1 worker-2/ds         legacy>legacy  legacy   -            legacy",
    "control-plane/app-1 worker-1/app-1      legacy>cilium  cilium   cilium_host  host,arrived",
    "control-plane/app-2 worker-1            legacy>host    none     eth0         host",
    "worker-1/app-1      control-plane/app-1 cilium>legacy  legacy   tunnel       host,arrived",
    "worker-1/app-1      worker-2/app-1      cilium>cilium  cilium   -            cilium",
    "worker-1/app-2      control-plane       cilium>host    none     eth0         host",
    "control-plane       worker-2/ds         host>legacy    legacy   -            host,arrived",
    "control-plane       worker-1/app-2      host>cilium    cilium   -            host,arrived",
    "worker-1            worker-2            host>host      none     -            host",
];

// The AWS VPC CNI: legacy pods are routed natively, with their own
// addresses inside the VPC (no SNAT to nodes or to other legacy pods);
// AWS-SNAT-CHAIN-0 rewrites everything leaving the VPC (Cilium's range)
// to the primary address, pod or host traffic alike, and Cilium's
// masquerade leaves by eth0 towards legacy pods: the receiver sees a
// node's underlay, which is no overlay address (never `arrived`).
const NATIVE_CASES: [&str; 9] = [
    // from             to                  nets           overlay  SNAT         receiver
    "control-plane/app-1 worker-2/ds         legacy>legacy  native   -            legacy",
    "control-plane/app-1 worker-1/app-1      legacy>cilium  cilium   eth0         host",
    "control-plane/app-2 worker-1            legacy>host    native   -            legacy",
    "worker-1/app-1      control-plane/app-1 cilium>legacy  native   eth0         host",
    "worker-1/app-1      worker-2/app-1      cilium>cilium  cilium   -            cilium",
    "worker-1/app-2      control-plane       cilium>host    none     eth0         host",
    "control-plane       worker-2/ds         host>legacy    native   -            host",
    "control-plane       worker-1/app-2      host>cilium    cilium   eth0         host",
    "worker-1            worker-2            host>host      none     -            host",
];

// CrossSubnet (a 4-node lab): control-plane and worker-2 share a subnet, so
// what the legacy network carries between them is native (a node's own
// traffic then leaves from its `eth0`, not the tunnel's address, so
// arrives as plain host traffic); worker-3 reaches the control plane
// through the tunnel (vxlan.calico, or tunl0 in IPIP CrossSubnet mode),
// and worker-1's Cilium pods reach worker-3's legacy
// pods natively, masqueraded onto worker-1's `eth0`.
const CROSS_SUBNET_CASES: [&str; 11] = [
    // from             to                  nets           overlay  SNAT         receiver
    "control-plane/app-1 worker-2/ds         legacy>legacy  native   -            legacy",
    "control-plane/app-1 worker-1/app-1      legacy>cilium  cilium   cilium_host  host,arrived",
    "control-plane/app-2 worker-1            legacy>host    none     eth0         host",
    "worker-1/app-1      control-plane/app-1 cilium>legacy  legacy   tunnel       host,arrived",
    "worker-1/app-1      worker-2/app-1      cilium>cilium  cilium   -            cilium",
    "worker-1/app-2      control-plane       cilium>host    none     eth0         host",
    "control-plane       worker-2/ds         host>legacy    native   -            host",
    "control-plane       worker-1/app-2      host>cilium    cilium   -            host,arrived",
    "worker-1            worker-2            host>host      none     -            host",
    "worker-3/app-1      control-plane/app-1 legacy>legacy  legacy   -            legacy",
    "worker-1/app-2      worker-3/app-2      cilium>legacy  native   eth0         host",
];

fn every_network_combination_is_classified(legacy: LegacyCni) {
    let _serial = serial();
    let mut lab = lab(legacy);
    // worker-2 half way: its app pods are back on Cilium, its DaemonSet pod
    // still has its legacy address, as the guide leaves a node before the
    // DaemonSet restart. Now every combination crosses two nodes.
    lab.migrate("worker-2", false).unwrap();
    if legacy.tunnelled() {
        assert_shape_names_the_legacy_tunnel(&lab, legacy);
    } else {
        assert_shape_lists_the_legacy_pods(&lab);
    }
    let fleet = Fleet::attach(&lab).unwrap();
    let table: &[&str] = if legacy.cross_subnet() {
        &CROSS_SUBNET_CASES
    } else if legacy.tunnelled() {
        &TUNNELLED_CASES
    } else {
        &NATIVE_CASES
    };
    let cases: Vec<Vec<&str>> = table
        .iter()
        .map(|c| c.split_whitespace().collect())
        .collect();
    let mut runs = Vec::new();
    for case in &cases {
        let (from, to) = (case[0], case[1]);
        let (a, b) = (lab.endpoint(from).unwrap(), lab.endpoint(to).unwrap());
        let report = traffic::tcp_connections(&a, &b, 1, CONNECT_TIMEOUT).unwrap();
        assert_eq!(report.answered, 1, "{from} -> {to}: {report:?}");
        runs.push((
            SocketAddrV4::new(b.addr, report.port),
            a.addr,
            v4(report.seen_as[0]),
        ));
    }
    // Geneve from worker-1 to worker-2, a Cilium pod to a Cilium pod.
    let taken = geneve::send(
        &lab,
        "worker-1",
        "worker-2",
        "worker-1/app-1",
        "worker-2/app-1",
        20,
        1000,
    )
    .unwrap();
    assert_eq!(taken, 20);
    std::thread::sleep(Duration::from_millis(1000));

    for (case, (server, client_addr, seen_as)) in cases.iter().zip(runs) {
        let &[from, to, nets, overlay, snat, receiver] = &case[..] else {
            unreachable!("six columns")
        };
        let what = format!("{from} -> {to}");
        let (client_net, server_net) = nets.split_once('>').unwrap();
        let sender_node = node_of(from);
        let j = lab.state().node_index(sender_node).unwrap();
        let sender = fleet.connections(sender_node).unwrap();
        let c = find(&sender, server, sender_node);
        assert_eq!(
            (
                c.client_net.label(),
                c.server_net.label(),
                c.overlay.label()
            ),
            (client_net, server_net, overlay),
            "sender, {what}: {c:#?}"
        );
        assert_eq!(c.handshake, Handshake::Answered, "sender, {what}");
        if from.contains('/') {
            assert_eq!(*c.client.ip(), client_addr, "sender names the pod, {what}");
        }
        let snat_addr = match snat {
            "cilium_host" => Some(plan::cilium_host_addr(j)),
            "tunnel" => Some(plan::flannel_addr(j)),
            "eth0" => Some(lab.state().underlay_addr(j)),
            _ => None,
        };
        match snat_addr {
            Some(addr) => {
                assert_eq!(c.snat_seen, SnatSeen::Translated, "sender, {what}: {c:#?}");
                assert_eq!(
                    c.snat,
                    Some(SocketAddrV4::new(addr, seen_as.port())),
                    "SNAT as the server saw it, {what}"
                );
            }
            None => assert_eq!(c.snat_seen, SnatSeen::None, "sender, {what}: {c:#?}"),
        }
        let (receiver_net, arrived) = match receiver.split_once(',') {
            Some((net, _)) => (net, true),
            None => (receiver, false),
        };
        let receiver = fleet.connections(node_of(to)).unwrap();
        let r = find(&receiver, server, node_of(to));
        assert_eq!(
            (
                r.client_net.label(),
                r.server_net.label(),
                r.overlay.label()
            ),
            (receiver_net, server_net, overlay),
            "receiver, {what}: {r:#?}"
        );
        assert_eq!(r.handshake, Handshake::Answered, "receiver, {what}");
        assert_eq!(
            r.snat_seen == SnatSeen::Arrived,
            arrived,
            "receiver, {what}: {r:#?}"
        );
        assert_eq!(
            r.client, seen_as,
            "receiver sees what the server saw, {what}"
        );
    }

    let (src, dst) = (
        lab.pod("worker-1/app-1").unwrap().addr,
        lab.pod("worker-2/app-1").unwrap().addr,
    );
    for (node, direction) in [("worker-1", "egress"), ("worker-2", "ingress")] {
        let snapshot = fleet.member(node).observer.snapshot().unwrap();
        let flow = snapshot
            .flows
            .iter()
            .find(|f| {
                f.src == src
                    && f.dst == dst
                    && f.dst_port == 80
                    && f.point.label() == "underlay"
                    && f.direction.label() == direction
            })
            .unwrap_or_else(|| panic!("{node}: no Geneve inner flow: {:#?}", snapshot.flows));
        assert_eq!(
            (
                flow.overlay.label(),
                flow.src_net.label(),
                flow.dst_net.label(),
                flow.packets
            ),
            ("cilium", "cilium", "cilium", 20),
            "{node}: {flow:#?}"
        );
    }
}

/// The shape the agents get names the legacy overlay's real port and, for
/// every node, the address its legacy tunnel device really has.
fn assert_shape_names_the_legacy_tunnel(lab: &Lab, legacy: LegacyCni) {
    let shape = lab.shape("control-plane").unwrap();
    let encapsulations: Vec<_> = shape
        .networks
        .iter()
        .filter(|n| n.role == observer::shape::Role::Legacy && !n.cidrs.is_empty())
        .map(|n| n.encapsulation)
        .collect();
    assert_eq!(encapsulations, vec![legacy.encapsulation()], "{legacy}");
    if legacy.ipip() {
        // The kernel counts protocol 4 as the legacy overlay, and no
        // second IP-in-IP network (the crafted one of other labs) is added.
        assert_eq!(
            shape.kernel_config().unwrap().ipip_overlay,
            observer_ebpf::Overlay::Legacy.wire(),
            "{shape:#?}"
        );
        let ipip = observer::shape::Encapsulation::Ipip;
        assert_eq!(
            shape
                .networks
                .iter()
                .filter(|n| n.encapsulation == ipip)
                .count(),
            1,
            "{shape:#?}"
        );
    }
    assert!(
        shape
            .networks
            .iter()
            .filter(|n| n.role == observer::shape::Role::Legacy && !n.cidrs.is_empty())
            .all(|n| n.cross_subnet == legacy.cross_subnet()),
        "{legacy}: the tunnel only across subnets when CrossSubnet: {shape:#?}"
    );
    for node in &shape.nodes {
        let out = exec::in_ns(
            &lab.node_ns(&node.name),
            &["ip", "-4", "-o", "addr", "show", "dev", legacy.device()],
        )
        .unwrap();
        let addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("{}: no address on {}: {out}", node.name, legacy.device()));
        assert_eq!(
            node.overlay_addrs[0].to_string(),
            addr,
            "{}: the shape's overlay address is {}'s",
            node.name,
            legacy.device()
        );
    }
}

/// Natively routed legacy pods: the shape has no legacy range and no
/// legacy tunnel address, and lists every legacy pod as a /32 of its node.
fn assert_shape_lists_the_legacy_pods(lab: &Lab) {
    let shape = lab.shape("control-plane").unwrap();
    let legacy: Vec<_> = shape
        .networks
        .iter()
        .filter(|n| n.role == observer::shape::Role::Legacy && n.cidrs.is_empty())
        .map(|n| n.encapsulation)
        .collect();
    assert!(
        legacy.contains(&observer::shape::Encapsulation::Native),
        "{shape:#?}"
    );
    let mut listed: Vec<(Ipv4Addr, &str)> = shape
        .pods
        .iter()
        .map(|p| (p.addr, p.node.as_str()))
        .collect();
    let mut expected: Vec<(Ipv4Addr, &str)> = lab
        .nodes()
        .flat_map(|n| &n.pods)
        .filter(|p| p.network == crossover_tests::lab::Network::Legacy)
        .map(|p| (p.addr, p.node.as_str()))
        .collect();
    listed.sort();
    expected.sort();
    assert!(!expected.is_empty());
    assert_eq!(listed, expected, "every legacy pod, on its node");
    for (j, node) in shape.nodes.iter().enumerate() {
        assert_eq!(
            node.overlay_addrs,
            vec![plan::cilium_host_addr(j)],
            "no legacy tunnel address"
        );
    }
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(v6) => panic!("the lab is IPv4, got {v6}"),
    }
}

#[test]
fn snat_is_seen_through_to_the_pods() {
    snat_is_seen_through(LegacyCni::Flannel);
}

/// Calico's natOutgoing in place of Flannel's masquerade: the same
/// addresses, the same joins.
#[test]
fn snat_is_seen_through_to_the_pods_from_calico_vxlan() {
    snat_is_seen_through(LegacyCni::CalicoVxlan);
}

/// CrossSubnet: the same two cases (worker-1 and the control plane are in
/// different subnets, so Cilium's masquerade is onto `vxlan.calico`), and
/// a Cilium pod to a legacy pod in worker-1's own subnet, natively, which
/// Cilium's masquerade puts onto worker-1's `eth0`.
#[test]
fn snat_is_seen_through_to_the_pods_from_calico_crosssubnet() {
    snat_is_seen_through(LegacyCni::CalicoCrossSubnet);
}

/// AWS-SNAT-CHAIN-0 (to the primary address, leaving the VPC for Cilium's
/// range) and Cilium's masquerade out of eth0 towards the VPC: both onto
/// a node's underlay address, joined the same way.
/// Felix's masquerade `-o tunl0` in IPIP mode: a Cilium pod reaches a
/// legacy pod from worker-1's `tunl0` address.
#[test]
fn snat_is_seen_through_to_the_pods_from_calico_ipip() {
    snat_is_seen_through(LegacyCni::CalicoIpip);
}

/// IPIP CrossSubnet: Felix's masquerade `-o tunl0` across subnets,
/// Cilium's onto worker-1's `eth0` within its own.
#[test]
fn snat_is_seen_through_to_the_pods_from_calico_ipip_crosssubnet() {
    snat_is_seen_through(LegacyCni::CalicoIpipCrossSubnet);
}

#[test]
fn snat_is_seen_through_to_the_pods_from_aws_native() {
    snat_is_seen_through(LegacyCni::AwsNative);
}

fn snat_is_seen_through(legacy: LegacyCni) {
    let _serial = serial();
    let lab = lab(legacy);
    let fleet = Fleet::attach(&lab).unwrap();
    // The address each direction is translated to: the tunnelled CNIs'
    // masquerade (--random-fully) onto cilium_host and Cilium's onto the
    // legacy tunnel's address, or the nodes' primary addresses.
    let (to_cilium, to_legacy) = if legacy.tunnelled() {
        (plan::cilium_host_addr(0), plan::flannel_addr(1))
    } else {
        (plan::underlay_addr(0), plan::underlay_addr(1))
    };
    let mut cases = vec![
        (
            "control-plane/app-1",
            "worker-1/app-1",
            to_cilium,
            "legacy",
            "cilium",
        ),
        (
            "worker-1/app-1",
            "control-plane/app-1",
            to_legacy,
            "cilium",
            "legacy",
        ),
    ];
    if legacy.cross_subnet() {
        cases.push((
            "worker-1/app-1",
            "worker-3/app-1",
            lab.state().underlay_addr(1),
            "cilium",
            "legacy",
        ));
    }
    for (from, to, snat_addr, client_net, server_net) in cases {
        let (a, b) = (lab.endpoint(from).unwrap(), lab.endpoint(to).unwrap());
        let report = traffic::tcp_connections(&a, &b, 3, CONNECT_TIMEOUT).unwrap();
        assert_eq!(report.answered, 3, "{from} -> {to}: {report:?}");
        let server = SocketAddrV4::new(b.addr, report.port);
        let conns = fleet.connections(node_of(from)).unwrap();
        for seen in &report.seen_as {
            let seen = v4(*seen);
            assert_eq!(
                *seen.ip(),
                snat_addr,
                "the server sees the node's overlay address"
            );
            let matching: Vec<_> = conns.iter().filter(|c| c.snat == Some(seen)).collect();
            assert_eq!(
                matching.len(),
                1,
                "one connection per SNAT mapping {seen}: {conns:#?}"
            );
            let c = matching[0];
            assert_eq!(
                (*c.client.ip(), c.server),
                (a.addr, server),
                "between the two pods: {c:#?}"
            );
            assert_eq!(
                (c.client_net.label(), c.server_net.label(), c.snat_seen),
                (client_net, server_net, SnatSeen::Translated)
            );
            assert_eq!(c.handshake, Handshake::Answered);
            // Pod side before NAT and wire side after it, in one connection.
            let at = |point: &str, src: Ipv4Addr| {
                c.sightings.iter().any(|s| {
                    s.forward && s.point.label() == point && *s.src.ip() == src && s.packets > 0
                })
            };
            assert!(
                at("pod", a.addr),
                "the pod veth saw the pod's address: {c:#?}"
            );
            assert!(
                at("underlay", snat_addr),
                "the wire saw the SNAT address: {c:#?}"
            );
            assert!(
                c.sightings
                    .iter()
                    .any(|s| !s.forward && s.point.label() == "pod"),
                "replies reached the pod: {c:#?}"
            );
            // And nothing is left over as a separate flow from the SNAT address.
            assert!(
                !conns.iter().any(|other| other.client == seen),
                "post-NAT flows joined, not reported twice: {conns:#?}"
            );
        }
        // The receiving node sees the SNAT address arrive from the sender:
        // an overlay address as such; a node's underlay address (native,
        // CrossSubnet) as that node's own traffic, which it cannot be told
        // from.
        let receiver = fleet.connections(node_of(to)).unwrap();
        let onto_underlay = lab
            .nodes()
            .enumerate()
            .any(|(j, _)| lab.state().underlay_addr(j) == snat_addr);
        for seen in &report.seen_as {
            let r = receiver
                .iter()
                .find(|c| c.server == server && c.client == v4(*seen))
                .unwrap_or_else(|| panic!("receiver: no connection from {seen}: {receiver:#?}"));
            if onto_underlay {
                // A node's underlay address is no overlay address: the
                // receiver sees the node itself as the client.
                assert_eq!(
                    (r.snat_seen, r.client_net.label()),
                    (SnatSeen::None, "host"),
                    "{r:#?}"
                );
            } else {
                assert_eq!(r.snat_seen, SnatSeen::Arrived);
                assert_eq!(r.snat.map(|s| *s.ip()), Some(snat_addr));
            }
        }
    }
}

#[test]
fn pods_created_after_start_are_observed_at_their_pod_hook() {
    pods_created_after_start_are_observed(LegacyCni::Flannel);
}

#[test]
fn pods_created_after_start_are_observed_at_their_pod_hook_on_calico_vxlan() {
    pods_created_after_start_are_observed(LegacyCni::CalicoVxlan);
}

#[test]
fn pods_created_after_start_are_observed_at_their_pod_hook_on_calico_crosssubnet() {
    pods_created_after_start_are_observed(LegacyCni::CalicoCrossSubnet);
}

/// `tunl0` followed by its name as the legacy overlay, a late `cali` veth
/// at its pod hook.
#[test]
fn pods_created_after_start_are_observed_at_their_pod_hook_on_calico_ipip() {
    pods_created_after_start_are_observed(LegacyCni::CalicoIpip);
}

#[test]
fn pods_created_after_start_are_observed_at_their_pod_hook_on_calico_ipip_crosssubnet() {
    pods_created_after_start_are_observed(LegacyCni::CalicoIpipCrossSubnet);
}

/// An `eni` veth followed, and the new pod's /32 in every node's address
/// table: its node counts it as a legacy pod at its hook, and the peer
/// names the pod's node as the sender of what it receives natively.
#[test]
fn pods_created_after_start_are_observed_at_their_pod_hook_on_aws_native() {
    pods_created_after_start_are_observed(LegacyCni::AwsNative);
}

/// The fleet follows interfaces by their names' default patterns, as the
/// agent does on every link event: the legacy CNI's tunnel from the start,
/// and a pod created afterwards (on a legacy node a `veth`/`cali` veth, on
/// the migrated node an `lxc`) at its pod hook, its traffic counted there
/// under its own address and network within 5 s of its creation.
fn pods_created_after_start_are_observed(legacy: LegacyCni) {
    const WITHIN: Duration = Duration::from_secs(5);
    let _serial = serial();
    let mut lab = lab(legacy);
    let mut fleet = Fleet::attach(&lab).unwrap();
    let hook_of = |fleet: &Fleet, node: &str, iface: &str| {
        fleet
            .member(node)
            .observer
            .attached()
            .find(|(name, _)| *name == iface)
            .map(|(_, hook)| hook)
    };
    if legacy.tunnelled() {
        assert_eq!(
            hook_of(&fleet, "control-plane", legacy.device()),
            Some(Hook::OverlayLegacy),
            "{legacy}'s tunnel followed by its name"
        );
    }
    // Natively routed, the late legacy pod talks to a legacy pod on
    // another node, which receives it with the pod's own address.
    let legacy_peer = if legacy.tunnelled() {
        "worker-1/app-1"
    } else {
        "worker-2/app-1"
    };
    let cases = [
        ("control-plane", legacy_peer, legacy.veth_prefix(), "legacy"),
        ("worker-1", "worker-2/app-1", "lxc", "cilium"),
    ];
    for (node, peer, prefix, net) in cases {
        let created = Instant::now();
        let pod = lab.add_pod(node, "late", PodKind::App).unwrap();
        assert!(pod.host_if.starts_with(prefix), "{pod:?}");
        fleet.follow().unwrap();
        // The pod as the API reports it: a natively routed legacy pod's
        // /32 enters every node's address table.
        fleet.configure(&lab).unwrap();
        assert_eq!(
            hook_of(&fleet, node, &pod.host_if),
            Some(Hook::Pod),
            "{node}: {} followed",
            pod.host_if
        );
        let (a, b) = (
            lab.endpoint(&format!("{node}/late")).unwrap(),
            lab.endpoint(peer).unwrap(),
        );
        let report = traffic::tcp_connections(&a, &b, 1, CONNECT_TIMEOUT).unwrap();
        assert_eq!(report.answered, 1, "{node}/late -> {peer}: {report:?}");
        let seen = loop {
            let snapshot = fleet.member(node).observer.snapshot().unwrap();
            let at_pod = snapshot.flows.into_iter().find(|f| {
                f.src == pod.addr && f.dst_port == report.port && f.point.label() == "pod"
            });
            if at_pod.is_some() || created.elapsed() > WITHIN {
                break at_pod;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let flow = seen.unwrap_or_else(|| {
            panic!(
                "{node}: {} not counted at its pod hook within {WITHIN:?}",
                pod.addr
            )
        });
        assert!(flow.packets > 0, "{flow:#?}");
        assert_eq!(flow.src_net.label(), net, "{node}: {flow:#?}");
        if !legacy.tunnelled() && net == "legacy" {
            let receiver = node_of(peer);
            let snapshot = fleet.member(receiver).observer.snapshot().unwrap();
            let arrived = snapshot
                .flows
                .iter()
                .find(|f| {
                    f.src == pod.addr && f.dst_port == report.port && f.point.label() == "underlay"
                })
                .unwrap_or_else(|| panic!("{receiver}: nothing from {}", pod.addr));
            assert_eq!(
                (
                    arrived.src_net.label(),
                    arrived.overlay.label(),
                    arrived.peer
                ),
                ("legacy", "native", Some(plan::underlay_addr(0))),
                "{receiver} names the new pod's network and node: {arrived:#?}"
            );
        }
        eprintln!(
            "{legacy}: {node}/late on {} seen after {:?}",
            pod.host_if,
            created.elapsed()
        );
    }
}

const LOSS_PACKETS: u64 = 40_000;

/// A node pair's delivery on one overlay, summed over its network pairs.
#[derive(Debug)]
struct PathTotal {
    from: String,
    to: String,
    overlay: observer_ebpf::Overlay,
    sent: u64,
    received: u64,
}

impl PathTotal {
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    fn loss_ratio(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.lost() as f64 / self.sent as f64)
    }
}

fn pair(window: &[Delivery], from: &str, to: &str, overlay: &str) -> PathTotal {
    let overlay = observer_ebpf::Overlay::from_label(overlay).expect("an overlay name");
    let rows: Vec<&Delivery> = window
        .iter()
        .filter(|d| same_path(d, from, to, overlay))
        .collect();
    assert!(
        !rows.is_empty(),
        "no delivery {from} -> {to} on {overlay}: {window:#?}"
    );
    PathTotal {
        from: from.into(),
        to: to.into(),
        overlay,
        sent: rows.iter().map(|d| d.sent).sum(),
        received: rows.iter().map(|d| d.received).sum(),
    }
}

fn same_path(d: &Delivery, from: &str, to: &str, overlay: observer_ebpf::Overlay) -> bool {
    d.from == from && d.to == to && d.overlay == overlay
}

#[test]
fn injected_loss_is_measured_per_node_pair_and_overlay() {
    injected_loss_is_measured(LegacyCni::Flannel);
}

/// The fault matches Calico's UDP 4789 on the wire; crossover counts the
/// legacy overlay there.
#[test]
fn injected_loss_is_measured_per_node_pair_and_overlay_from_calico_vxlan() {
    injected_loss_is_measured(LegacyCni::CalicoVxlan);
}

/// No tunnel: the fault drops what control-plane sends worker-2 that is
/// not node to node (its pods' packets, routed natively), and crossover
/// counts the same packets on the native overlay, attributed to the node
/// pair by the pods' /32s.
#[test]
fn injected_loss_is_measured_per_node_pair_and_overlay_from_aws_native() {
    injected_loss_is_measured(LegacyCni::AwsNative);
}

/// CrossSubnet: loss on the same legacy network's native path within a
/// subnet (control-plane to worker-2) and on its VXLAN path across
/// (control-plane to worker-3), each alone among rows of both kinds.
#[test]
fn injected_loss_is_measured_per_node_pair_and_overlay_from_calico_crosssubnet() {
    injected_loss_is_measured(LegacyCni::CalicoCrossSubnet);
}

/// The fault matches IPv4 protocol 4 between the two nodes' underlay
/// addresses on the wire; crossover counts the legacy overlay there, in
/// the packets the stand-in encapsulated and sent out of `eth0`.
#[test]
fn injected_loss_is_measured_per_node_pair_and_overlay_from_calico_ipip() {
    injected_loss_is_measured(LegacyCni::CalicoIpip);
}

/// IPIP CrossSubnet: loss on the native path within a subnet
/// (control-plane to worker-2) and on the IP-in-IP path across
/// (control-plane to worker-3, the fault matching protocol 4 between the
/// two underlay addresses), each alone among rows of both kinds.
#[test]
fn injected_loss_is_measured_per_node_pair_and_overlay_from_calico_ipip_crosssubnet() {
    injected_loss_is_measured(LegacyCni::CalicoIpipCrossSubnet);
}

/// One node pair's path at fault, the streams around it, and the paths
/// those streams must show (with no loss).
struct LossCase {
    /// The faulty stream's pods; the fault is between their nodes.
    from: &'static str,
    to: &'static str,
    overlay: Overlay,
    /// The overlay crossover counts the faulty path on.
    row: &'static str,
    others: Vec<(&'static str, &'static str)>,
    /// A long TCP stream beside the UDP ones.
    tcp: (&'static str, &'static str),
    around: Vec<(&'static str, &'static str, &'static str)>,
}

fn injected_loss_is_measured(legacy: LegacyCni) {
    let _serial = serial();
    let mut lab = lab(legacy);
    let fleet = Fleet::attach(&lab).unwrap();
    // The faulty path first (control-plane to worker-2 on the legacy
    // overlay), then everything around it: the way back, the other
    // overlay, other pairs.
    let mut cases = vec![LossCase {
        from: "control-plane/app-1",
        to: "worker-2/app-1",
        overlay: Overlay::Legacy,
        // An untunnelled lab's legacy path is native.
        row: legacy.overlay_label(),
        others: vec![
            ("worker-2/app-2", "control-plane/app-2"),
            ("control-plane/app-2", "worker-1/app-1"),
            ("worker-1/app-2", "worker-2/app-2"),
        ],
        tcp: ("worker-2/ds", "control-plane/ds"),
        around: vec![
            ("worker-2", "control-plane", legacy.overlay_label()),
            ("control-plane", "worker-1", "cilium"),
            ("worker-1", "worker-2", legacy.overlay_label()),
        ],
    }];
    if legacy.cross_subnet() {
        // Both kinds of legacy path carry traffic in both runs: native
        // between control-plane and worker-2 (and worker-1's Cilium pods
        // to worker-3), VXLAN from worker-3 (and worker-1's Cilium pods
        // to worker-2) across.
        let others = vec![
            ("worker-2/app-2", "control-plane/app-2"),
            ("control-plane/app-2", "worker-1/app-1"),
            ("worker-1/app-2", "worker-2/app-2"),
            ("worker-3/app-2", "control-plane/app-2"),
            ("worker-1/app-1", "worker-3/app-1"),
        ];
        let around = vec![
            ("worker-2", "control-plane", "native"),
            ("control-plane", "worker-1", "cilium"),
            ("worker-1", "worker-2", "legacy"),
            ("worker-3", "control-plane", "legacy"),
            ("worker-1", "worker-3", "native"),
        ];
        cases = vec![
            LossCase {
                from: "control-plane/app-1",
                to: "worker-2/app-1",
                overlay: Overlay::Native,
                row: "native",
                others: others.clone(),
                tcp: ("worker-2/ds", "control-plane/ds"),
                around: around.clone(),
            },
            LossCase {
                from: "control-plane/app-1",
                to: "worker-3/app-1",
                overlay: Overlay::Legacy,
                row: "legacy",
                others,
                tcp: ("worker-3/ds", "control-plane/ds"),
                around,
            },
        ];
    }
    for case in &cases {
        loss_on_one_path_only(&mut lab, &fleet, case);
    }
}

/// 2% and then 10% on `case`'s path: crossover's loss there is what the
/// wire dropped, within 0.5 pp of what was injected over at least 10,000
/// packets, and nothing is lost elsewhere.
fn loss_on_one_path_only(lab: &mut Lab, fleet: &Fleet, case: &LossCase) {
    let e = |id: &str| lab.endpoint(id).unwrap();
    let (from_node, to_node) = (node_of(case.from), node_of(case.to));
    let mut streams = vec![(e(case.from), e(case.to), LOSS_PACKETS, 10_000)];
    streams.extend(case.others.iter().map(|(a, b)| (e(a), e(b), 4000, 1000)));
    let (tcp_from, tcp_to) = (e(case.tcp.0), e(case.tcp.1));
    for percent in [2.0, 10.0] {
        let before = fleet.deliveries().unwrap();
        let id = lab
            .inject(Fault::Loss {
                from: from_node.into(),
                to: to_node.into(),
                overlay: case.overlay,
                percent,
            })
            .unwrap();
        std::thread::scope(|s| {
            for (from, to, count, pps) in &streams {
                s.spawn(move || traffic::udp_stream(from, to, *count, *pps, 200).unwrap());
            }
            s.spawn(|| {
                traffic::tcp_stream(&tcp_from, &tcp_to, Duration::from_secs(3), 500_000).unwrap()
            });
        });
        std::thread::sleep(Duration::from_millis(500));
        let window = delivery::window(&before, &fleet.deliveries().unwrap());
        let drops = lab.drops(id).unwrap();
        lab.clear(id).unwrap();

        let faulty = pair(&window, from_node, to_node, case.row);
        let ratio = faulty.loss_ratio().unwrap();
        eprintln!(
            "{} {percent}%: {faulty:?} -> {:.3}%, wire dropped {drops}",
            lab.state().legacy,
            ratio * 100.0
        );
        assert!(faulty.sent >= 10_000, "at least 10,000 packets: {faulty:?}");
        assert_eq!(
            faulty.lost(),
            drops,
            "crossover's loss is what the wire dropped"
        );
        assert!(
            (ratio * 100.0 - percent).abs() <= 0.5,
            "{percent}% injected, {:.3}% measured",
            ratio * 100.0
        );
        for d in window
            .iter()
            .filter(|d| !same_path(d, &faulty.from, &faulty.to, faulty.overlay))
        {
            assert!(d.sent > 0, "{d:?}");
            assert!(d.lost() * 1000 <= d.sent, "no loss elsewhere: {d:?}");
        }
        for (from, to, overlay) in &case.around {
            pair(&window, from, to, overlay);
        }
    }
}

/// Calico's IP-in-IP, crafted on the wire (the kernel has no ipip module):
/// loss on one node pair is what the wire dropped, exactly, and the inner
/// packets are counted under their pods' networks.
#[test]
fn ipip_loss_is_measured_per_node_pair_like_any_overlay() {
    // The fault drops at random: at 12,000 packets the realised rate of a
    // 10% fault strays past the +-0.5 pp below about once in 60 runs (CI saw
    // 9.35%, crossover exact at 1,122 of 1,122); at 48,000 that is a 3.6
    // sigma miss.
    const PACKETS: u64 = 48_000;
    let _serial = serial();
    let mut lab = lab(LegacyCni::Flannel);
    let fleet = Fleet::attach(&lab).unwrap();
    for percent in [2.0, 10.0] {
        let before = fleet.deliveries().unwrap();
        let id = lab
            .inject(Fault::Loss {
                from: "control-plane".into(),
                to: "worker-2".into(),
                overlay: Overlay::Ipip,
                percent,
            })
            .unwrap();
        let taken = ipip::send(
            &lab,
            "control-plane",
            "worker-2",
            "control-plane/app-1",
            "worker-2/app-1",
            PACKETS,
            10_000,
        )
        .unwrap();
        let back = ipip::send(
            &lab,
            "worker-2",
            "control-plane",
            "worker-2/app-2",
            "control-plane/app-2",
            2000,
            5000,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let window = delivery::window(&before, &fleet.deliveries().unwrap());
        let drops = lab.drops(id).unwrap();
        lab.clear(id).unwrap();

        let faulty = pair(&window, "control-plane", "worker-2", "legacy");
        let ratio = faulty.loss_ratio().unwrap();
        eprintln!(
            "ipip {percent}%: {faulty:?} -> {:.3}%, wire dropped {drops}",
            ratio * 100.0
        );
        assert_eq!(
            faulty.sent, PACKETS,
            "every IP-in-IP packet sent is counted"
        );
        assert_eq!(
            faulty.lost(),
            drops,
            "crossover's loss is what the wire dropped"
        );
        // The receiving raw socket may overflow at this rate (after
        // crossover counted the packet at TC ingress): at most the rest.
        assert!(taken > 0 && taken <= PACKETS - drops, "taken {taken}");
        assert!(
            (ratio * 100.0 - percent).abs() <= 0.5,
            "{percent}% injected, {:.3}% measured",
            ratio * 100.0
        );
        let rows: Vec<&Delivery> = window
            .iter()
            .filter(|d| {
                same_path(
                    d,
                    "control-plane",
                    "worker-2",
                    observer_ebpf::Overlay::Legacy,
                )
            })
            .collect();
        assert!(
            rows.iter()
                .all(|d| (d.src_net, d.dst_net) == (Net::Legacy, Net::Legacy)),
            "inner packets counted under their pods' networks: {rows:#?}"
        );
        let back_path = pair(&window, "worker-2", "control-plane", "legacy");
        assert_eq!((back_path.sent, back_path.lost()), (2000, 0));
        assert!(back > 0 && back <= 2000, "taken {back}");
        for d in window
            .iter()
            .filter(|d| !same_path(d, &faulty.from, &faulty.to, faulty.overlay))
        {
            assert_eq!(d.lost(), 0, "no loss elsewhere: {d:?}");
        }
    }
}

#[test]
fn a_blackholed_overlay_fails_exactly_the_handshakes_that_cross_it() {
    let _serial = serial();
    let mut lab = lab(LegacyCni::Flannel);
    // A = worker-2, half way through its migration (a legacy DaemonSet pod
    // and Cilium app pods); B = worker-1, migrated; C = control-plane.
    lab.migrate("worker-2", false).unwrap();
    // client, server, fails
    let cases = [
        ("worker-2/ds", "worker-1/app-1", true), // legacy to Cilium, A to B
        ("worker-2/app-1", "worker-1/app-2", true), // Cilium to Cilium, A to B
        ("worker-2", "worker-1/app-1", true), // A's host to a Cilium pod: also the Cilium overlay
        ("worker-1/app-1", "worker-2/app-2", true), // B to A: its SYN-ACK goes A to B
        ("worker-2/app-1", "worker-1", false), // to B's host: plain underlay
        ("worker-1/app-2", "worker-2/ds", false), // Cilium to legacy rides the legacy overlay both ways
        ("worker-2/app-2", "control-plane/app-1", false),
        ("worker-2/ds", "control-plane/app-2", false),
        ("control-plane/app-1", "worker-1/app-1", false),
        ("worker-1/app-1", "control-plane/app-1", false),
        ("worker-2", "worker-1", false),
    ];
    blackhole_fails_exactly(
        &mut lab,
        LegacyCni::Flannel,
        ("worker-2", "worker-1", Overlay::Cilium),
        &cases,
    );
}

/// The same on each legacy CNI's own path: control-plane's legacy overlay
/// (its tunnel, or for AWS and within a CrossSubnet lab's subnet its
/// natively routed pod traffic) towards worker-2 cut, both legacy nodes'
/// pods and hosts on either side of it.
#[test]
fn a_blackholed_legacy_path_fails_exactly_its_handshakes_on_every_legacy_cni() {
    let _serial = serial();
    // client, server, fails: C = control-plane (legacy), B = worker-1
    // (migrated), A = worker-2 (legacy); C to A on the legacy path is cut.
    let cases = [
        ("control-plane/app-1", "worker-2/app-1", true), // legacy to legacy, C to A
        ("worker-2/app-2", "control-plane/app-2", true), // A to C: its SYN-ACK goes C to A
        ("control-plane", "worker-2/app-1", true),       // C's host to a legacy pod: the same path
        ("worker-1/app-1", "worker-2/app-1", false),     // Cilium to legacy, from B
        ("control-plane/app-1", "worker-1/app-1", false), // legacy to Cilium rides Cilium's overlay
        ("worker-2/app-1", "worker-1/app-2", false),
        ("control-plane", "worker-2", false), // host to host: plain underlay
    ];
    for legacy in LegacyCni::ALL {
        let mut lab = lab(legacy);
        eprintln!("{legacy}");
        // CrossSubnet: control-plane and worker-2 share an underlay
        // subnet, so the legacy network's path between them is native.
        // Its worker-3 reaches control-plane through the tunnel
        // (vxlan.calico or tunl0), untouched.
        let (path, extra) = match legacy.cross_subnet() {
            true => (
                Overlay::Native,
                Some(("worker-3/app-1", "control-plane/app-1", false)),
            ),
            false => (Overlay::Legacy, None),
        };
        let cases: Vec<_> = cases.iter().copied().chain(extra).collect();
        blackhole_fails_exactly(
            &mut lab,
            legacy,
            ("control-plane", "worker-2", path),
            &cases,
        );
    }
}

/// Cuts `cut` (from, to, overlay) whole and opens two TCP connections per
/// case (client, server, whether it must fail): exactly the failing ones
/// are unanswered on the client's node, once each in the kernel's
/// per-peer counters, which agree with the flows; the cut pair's delivery
/// loss is what the wire dropped and no other pair loses.
fn blackhole_fails_exactly(
    lab: &mut Lab,
    legacy: LegacyCni,
    cut: (&str, &str, Overlay),
    cases: &[(&str, &str, bool)],
) {
    let mut fleet = Fleet::attach(lab).unwrap();
    let id = lab
        .inject(Fault::Loss {
            from: cut.0.into(),
            to: cut.1.into(),
            overlay: cut.2,
            percent: 100.0,
        })
        .unwrap();
    let before = fleet.deliveries().unwrap();
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(from, to, _)| {
                let (a, b) = (lab.endpoint(from).unwrap(), lab.endpoint(to).unwrap());
                s.spawn(move || traffic::tcp_connections(&a, &b, 2, CONNECT_TIMEOUT).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::thread::sleep(Duration::from_millis(1000));
    let mut failing = Vec::new();
    for ((from, to, fails), report) in cases.iter().zip(&reports) {
        // The generator is the ground truth crossover is checked against.
        assert_eq!(
            report.answered,
            if *fails { 0 } else { 2 },
            "{from} -> {to}: {report:?}"
        );
        let server = SocketAddrV4::new(lab.endpoint(to).unwrap().addr, report.port);
        let conns = fleet.connections(node_of(from)).unwrap();
        let seen: Vec<_> = conns.iter().filter(|c| c.server == server).collect();
        assert!(
            !seen.is_empty(),
            "{from} -> {to}: not seen on the client's node"
        );
        let expected = if *fails {
            Handshake::Unanswered
        } else {
            Handshake::Answered
        };
        for c in seen {
            assert_eq!(c.handshake, expected, "{from} -> {to}: {c:#?}");
        }
        if *fails {
            failing.push(server);
        }
    }
    for node in ["control-plane", "worker-1", "worker-2"] {
        for c in fleet.connections(node).unwrap() {
            if c.handshake == Handshake::Unanswered {
                assert!(
                    failing.contains(&c.server),
                    "{node}: unexpected failed handshake {c:#?}"
                );
            }
        }
    }
    // The kernel's per-peer TCP counters, which the agent's handshake and
    // retransmit windows are made of, agree with what the flows show.
    fleet.expire_handshakes().unwrap();
    for snap in fleet.snapshots().unwrap() {
        assert_peer_tcp_counts_match_flows(&snap);
    }
    let unanswered: u64 = fleet
        .snapshots()
        .unwrap()
        .iter()
        .flat_map(|s| s.peers.iter())
        .map(|p| p.counts.handshakes_unanswered)
        .sum();
    let failing_handshakes = cases.iter().filter(|(_, _, fails)| *fails).count() as u64 * 2;
    assert_eq!(
        unanswered, failing_handshakes,
        "every failed handshake, once"
    );
    let window = delivery::window(&before, &fleet.deliveries().unwrap());
    let label = match cut.2 {
        Overlay::Legacy => legacy.overlay_label(),
        overlay => overlay.label(),
    };
    let cut_path = pair(&window, cut.0, cut.1, label);
    assert!(cut_path.sent > 0 && cut_path.received == 0, "{cut_path:?}");
    assert_eq!(cut_path.lost(), lab.drops(id).unwrap());
    for d in window
        .iter()
        .filter(|d| !same_path(d, &cut_path.from, &cut_path.to, cut_path.overlay))
    {
        assert_eq!(d.lost(), 0, "only the cut path loses: {d:?}");
    }
    lab.clear(id).unwrap();
}

/// Per (peer, overlay, direction, network pair): the slot counters equal
/// the sums over the node's underlay flows of the same class. A handshake
/// is an egress flow that sent a SYN, counted in its own class by what its
/// reverse flow brought back: a SYN-ACK (answered: the lab answers well
/// within the grace), an RST (reset) or nothing (unanswered).
fn assert_peer_tcp_counts_match_flows(snap: &Snapshot) {
    type Key = (
        Option<Ipv4Addr>,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );
    let mut from_flows: BTreeMap<Key, PeerCounts> = BTreeMap::new();
    // Node to node traffic on no overlay has no peer counters: it carries
    // no pod's packets.
    let on_overlays: Vec<_> = snap
        .flows
        .iter()
        .filter(|f| f.point == Point::Underlay && f.overlay != observer_ebpf::Overlay::None)
        .collect();
    for f in &on_overlays {
        let key = (
            f.peer,
            f.overlay.label(),
            f.direction.label(),
            f.src_net.label(),
            f.dst_net.label(),
        );
        let c = from_flows.entry(key).or_default();
        c.packets += f.packets;
        c.segments += f.segments;
        c.retransmits += f.retransmits;
        c.rsts += f.rsts;
        if f.direction == Direction::Egress && f.syns > 0 {
            let reply = on_overlays.iter().find(|r| {
                r.direction == Direction::Ingress
                    && (r.src, r.src_port, r.dst, r.dst_port)
                        == (f.dst, f.dst_port, f.src, f.src_port)
            });
            match reply {
                Some(r) if r.syn_acks > 0 => c.handshakes_answered += 1,
                Some(r) if r.rsts > 0 => c.handshakes_reset += 1,
                _ => c.handshakes_unanswered += 1,
            }
        }
    }
    let from_slots: BTreeMap<Key, PeerCounts> = snap
        .peers
        .iter()
        .filter(|p| p.src_net != Net::Unknown)
        .map(|p| {
            let key = (
                Some(p.peer),
                p.overlay.label(),
                p.direction.label(),
                p.src_net.label(),
                p.dst_net.label(),
            );
            // Bytes differ by design: frames on the slot, inner IP lengths
            // on the flow.
            (
                key,
                PeerCounts {
                    bytes: 0,
                    ..p.counts
                },
            )
        })
        .collect();
    assert!(!from_slots.is_empty());
    assert_eq!(from_slots, from_flows);
}

#[test]
fn detaching_leaves_traffic_untouched_and_nothing_attached() {
    let _serial = serial();
    let lab = lab(LegacyCni::Flannel);
    let namespaces: Vec<String> = lab.nodes().map(|n| lab.node_ns(&n.name)).collect();
    let fleet = Fleet::attach(&lab).unwrap();
    for ns in &namespaces {
        assert!(
            !tcx_programs_in(ns).is_empty(),
            "{ns}: attached before detaching"
        );
    }
    let e = |id: &str| lab.endpoint(id).unwrap();
    let (stream, ping) = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            traffic::tcp_stream(
                &e("control-plane/app-1"),
                &e("worker-1/app-1"),
                Duration::from_secs(4),
                2_000_000,
            )
            .unwrap()
        });
        let ping = s.spawn(|| {
            traffic::ping(
                &e("worker-1/app-2"),
                &e("worker-2/app-1"),
                150,
                Duration::from_millis(20),
            )
            .unwrap()
        });
        std::thread::sleep(Duration::from_millis(1500));
        let counted = fleet
            .snapshots()
            .unwrap()
            .iter()
            .map(|s| s.flows.len())
            .sum::<usize>();
        assert!(counted > 0, "crossover was counting the traffic");
        drop(fleet);
        (stream.join().unwrap(), ping.join().unwrap())
    });
    assert!(
        stream.connected && stream.bytes_sent > 1_000_000,
        "{stream:?}"
    );
    assert_eq!(
        stream.bytes_received, stream.bytes_sent,
        "the long-lived connection survived the detach"
    );
    assert_eq!(ping.received, ping.sent, "{ping:?}");
    for ns in &namespaces {
        let left = tcx_programs_in(ns);
        assert!(left.is_empty(), "{ns}: programs left behind: {left:?}");
        let qdiscs = crossover_tests::lab::exec::in_ns(ns, &["tc", "qdisc", "show"]).unwrap();
        assert!(
            !qdiscs.contains("clsact"),
            "{ns}: qdisc left behind:\n{qdiscs}"
        );
    }
    let report = traffic::tcp_connections(
        &e("worker-2/app-1"),
        &e("worker-1/app-2"),
        3,
        CONNECT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        report.answered, 3,
        "the lab works without crossover: {report:?}"
    );
}
