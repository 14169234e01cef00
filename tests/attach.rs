//! Real traffic through network namespaces (root): crossover attached to a
//! veth underlay and a Flannel-style VXLAN device counts exactly what was
//! sent, runs beside other TCX programs, follows interfaces, and leaves
//! nothing behind.
use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use crossover_tests::{
    counting::{observer_in, send_udp, udp_flow},
    netns::{Netns, Tun, TwoNodes, in_netns},
    packet,
};
use observer::datapath::{AttachMode, Hook, Selection, reconcile};

const DATAGRAMS: u64 = 500;

fn tcx_programs(ns: &Netns, iface: &'static str) -> usize {
    in_netns(&ns.name, move || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|t| {
                SchedClassifier::query_tcx(iface, t)
                    .map(|(_, p)| p.len())
                    .unwrap_or(0)
            })
            .sum()
    })
}

#[test]
fn vxlan_traffic_is_counted_exactly_on_both_nodes() {
    let nodes = TwoNodes::new();
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Auto);
    a.attach("u0", Hook::Underlay).unwrap();
    a.attach("flannel.1", Hook::OverlayLegacy).unwrap();
    let mut b = observer_in(&nodes.b, "node-b", AttachMode::Auto);
    b.attach("u0", Hook::Underlay).unwrap();

    send_udp(&nodes, DATAGRAMS);

    let sa = a.snapshot().unwrap();
    let sent = udp_flow(&sa, "underlay", "egress");
    assert_eq!(
        (
            sent.packets,
            sent.overlay.label(),
            sent.src_net.label(),
            sent.dst_net.label()
        ),
        (DATAGRAMS, "legacy", "host", "host")
    );
    assert_eq!(sent.peer, Some([192, 168, 50, 2].into()));
    assert_eq!(udp_flow(&sa, "overlay", "egress").packets, DATAGRAMS);
    let peer = sa
        .peers
        .iter()
        .find(|p| p.overlay.label() == "legacy" && p.direction.label() == "egress")
        .unwrap();
    assert_eq!(
        peer.counts.packets, DATAGRAMS,
        "A's sends to B on the legacy overlay"
    );

    let sb = b.snapshot().unwrap();
    assert_eq!(udp_flow(&sb, "underlay", "ingress").packets, DATAGRAMS);
    let peer = sb
        .peers
        .iter()
        .find(|p| p.overlay.label() == "legacy" && p.direction.label() == "ingress")
        .unwrap();
    assert_eq!(
        (peer.peer, peer.counts.packets),
        ([192, 168, 50, 1].into(), DATAGRAMS),
        "B's receives from A"
    );

    for snap in [&sa, &sb] {
        for reason in [
            "inner_non_ip",
            "inner_ipv6",
            "flow_map_full",
            "peer_map_full",
        ] {
            assert_eq!(snap.counters[reason], 0, "{reason}");
        }
    }
}

#[test]
fn tcp_handshake_through_the_tunnel() {
    let nodes = TwoNodes::new();
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Auto);
    a.attach("u0", Hook::Underlay).unwrap();
    let listener = in_netns(&nodes.b.name, || {
        TcpListener::bind("10.244.1.0:8080").unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        std::io::copy(&mut conn, &mut std::io::sink()).unwrap();
    });
    in_netns(&nodes.a.name, || {
        use std::io::Write;
        let mut conn = TcpStream::connect("10.244.1.0:8080").unwrap();
        conn.write_all(&vec![7u8; 100_000]).unwrap();
    });
    server.join().unwrap();
    let snap = a.snapshot().unwrap();
    let out = snap
        .flows
        .iter()
        .find(|f| f.dst_port == 8080 && f.direction.label() == "egress")
        .unwrap();
    let back = snap
        .flows
        .iter()
        .find(|f| f.src_port == 8080 && f.direction.label() == "ingress")
        .unwrap();
    assert_eq!((out.syns, back.syn_acks, out.retransmits), (1, 1, 0));
    assert!(out.bytes > 100_000, "payload and headers: {}", out.bytes);
    assert_eq!(out.tcp_flags & 0x01, 0x01, "the FIN was seen");
}

#[test]
fn runs_beside_other_tcx_programs_and_detaches_cleanly() {
    let nodes = TwoNodes::new();
    let mut first = observer_in(&nodes.a, "node-a", AttachMode::Tcx);
    first.attach("u0", Hook::Underlay).unwrap();
    // A second set of programs goes in front of the first (TCX order
    // "first"): the first still sees every packet only if ours say "next".
    let mut second = observer_in(&nodes.a, "node-a", AttachMode::Tcx);
    second.attach("u0", Hook::Underlay).unwrap();
    assert_eq!(tcx_programs(&nodes.a, "u0"), 4);

    send_udp(&nodes, DATAGRAMS);
    for observer in [&first, &second] {
        let snap = observer.snapshot().unwrap();
        assert_eq!(udp_flow(&snap, "underlay", "egress").packets, DATAGRAMS);
    }
    drop(second);
    assert_eq!(tcx_programs(&nodes.a, "u0"), 2);
    first.detach("u0").unwrap();
    assert_eq!(tcx_programs(&nodes.a, "u0"), 0);
    // Traffic still flows with nothing attached.
    send_udp(&nodes, 10);
}

#[test]
fn netlink_mode_counts_and_removes_its_qdisc() {
    let nodes = TwoNodes::new();
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Netlink);
    a.attach("u0", Hook::Underlay).unwrap();
    let qdiscs = || nodes.a.exec(&["tc", "qdisc", "show", "dev", "u0"]);
    assert!(qdiscs().contains("clsact"));
    send_udp(&nodes, DATAGRAMS);
    let snap = a.snapshot().unwrap();
    assert_eq!(udp_flow(&snap, "underlay", "egress").packets, DATAGRAMS);
    drop(a);
    assert!(
        !qdiscs().contains("clsact"),
        "our clsact qdisc was left behind: {}",
        qdiscs()
    );
    assert_eq!(
        nodes
            .a
            .exec(&["tc", "filter", "show", "dev", "u0", "ingress"])
            .trim(),
        ""
    );
}

#[test]
fn follows_pod_veths_as_they_come_and_go() {
    let nodes = TwoNodes::new();
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Auto);
    let selection = Selection {
        explicit: vec![("u0".into(), Hook::Underlay)],
        follow: Some(observer::iface::Rules::default()),
    };
    let first = reconcile(&mut a, &selection).unwrap();
    let mut attached = first.attached.clone();
    attached.sort();
    assert_eq!(attached, vec!["cilium_vxlan", "flannel.1", "u0"]);
    let hooks: Vec<Hook> = a.attached().map(|(_, h)| h).collect();
    assert_eq!(
        hooks,
        vec![Hook::OverlayCilium, Hook::OverlayLegacy, Hook::Underlay]
    );

    nodes.a.exec(&[
        "ip", "link", "add", "vethpod1", "type", "veth", "peer", "eth0p",
    ]);
    nodes.a.exec(&[
        "ip", "link", "add", "lxc12ab", "type", "veth", "peer", "eth0q",
    ]);
    let second = reconcile(&mut a, &selection).unwrap();
    let mut attached = second.attached.clone();
    attached.sort();
    assert_eq!(
        attached,
        vec!["lxc12ab", "vethpod1"],
        "the peers eth0p/eth0q are no pod veths"
    );
    assert_eq!(tcx_programs(&nodes.a, "vethpod1"), 2);

    nodes.a.exec(&["ip", "link", "del", "vethpod1"]);
    let third = reconcile(&mut a, &selection).unwrap();
    assert_eq!(third.detached, vec!["vethpod1"]);
    assert!(third.attached.is_empty());
    let names: Vec<&str> = a.attached().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["cilium_vxlan", "flannel.1", "lxc12ab", "u0"]);
    // Reconciling again changes nothing.
    let fourth = reconcile(&mut a, &selection).unwrap();
    assert!(fourth.attached.is_empty() && fourth.detached.is_empty());
}

#[test]
fn follows_every_cnis_devices_and_reads_ip_only_tunnels() {
    use std::io::Write;

    use observer::iface::{Rules, parse_rule};

    let nodes = TwoNodes::new();
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Auto);
    for (veth, peer) in [
        ("cali1a2b3c4d", "eth0c"),
        ("eni0a1b2c", "eth0e"),
        ("gke5f6a", "eth0g"),
    ] {
        nodes
            .a
            .exec(&["ip", "link", "add", veth, "type", "veth", "peer", peer]);
    }
    // Calico's IP-in-IP device has no link-layer header; the kernel here
    // has no ipip module, so a TUN device, IP only like it, stands in.
    let mut tunl0 = Tun::create(&nodes.a, "tunl0");
    nodes
        .a
        .exec(&["ip", "addr", "add", "10.244.0.1/32", "dev", "tunl0"]);
    nodes
        .a
        .exec(&["ip", "route", "add", "10.244.9.0/24", "dev", "tunl0"]);
    let rules = Rules::with_overrides([
        parse_rule("gke*=pod").unwrap(),
        parse_rule("eni0a1b2c=none").unwrap(),
    ])
    .unwrap();
    let selection = Selection {
        explicit: vec![("u0".into(), Hook::Underlay)],
        follow: Some(rules),
    };
    let first = reconcile(&mut a, &selection).unwrap();
    let mut attached = first.attached.clone();
    attached.sort();
    assert_eq!(
        attached,
        vec![
            "cali1a2b3c4d",
            "cilium_vxlan",
            "flannel.1",
            "gke5f6a",
            "tunl0",
            "u0"
        ],
        "Calico's veth and tunnel by default, gke* by rule, eni0a1b2c left alone by rule"
    );
    assert!(first.failed.is_empty(), "{:?}", first.failed);
    assert_eq!(tcx_programs(&nodes.a, "tunl0"), 2);

    const EACH_WAY: u64 = 50;
    in_netns(&nodes.a.name, || {
        let socket = UdpSocket::bind("10.244.0.1:0").expect("bind");
        for i in 0..EACH_WAY {
            socket
                .send_to(&i.to_be_bytes(), "10.244.9.5:7777")
                .expect("send into tunl0");
        }
    });
    let inbound = packet::ip(
        [10, 244, 9, 5],
        [10, 244, 0, 1],
        packet::udp(5555, 7778, b"in"),
    );
    for _ in 0..EACH_WAY {
        tunl0
            .file
            .write_all(&inbound.bytes())
            .expect("write to tunl0");
    }
    std::thread::sleep(Duration::from_millis(200));
    let snap = a.snapshot().unwrap();
    let out = udp_flow(&snap, "overlay", "egress");
    assert_eq!(
        (out.packets, out.overlay.label(), out.src_net.label()),
        (EACH_WAY, "legacy", "legacy")
    );
    let inn = snap
        .flows
        .iter()
        .find(|f| {
            f.dst_port == 7778 && f.point.label() == "overlay" && f.direction.label() == "ingress"
        })
        .unwrap_or_else(|| panic!("no ingress flow on tunl0: {:#?}", snap.flows));
    assert_eq!(inn.packets, EACH_WAY);
    for reason in ["non_ip", "bad_ipv4", "truncated_l4", "ipv6"] {
        assert_eq!(snap.counters[reason], 0, "{reason}");
    }

    // Only overlay devices may be IP-only: anything else is refused by name.
    let _tun1 = Tun::create(&nodes.a, "tun1");
    let err = a.attach("tun1", Hook::Pod).unwrap_err();
    assert!(
        err.to_string().contains("\"tun1\" has no Ethernet header"),
        "{err}"
    );
    assert_eq!(tcx_programs(&nodes.a, "tun1"), 0, "nothing half-attached");
}

#[test]
fn clear_errors_for_a_missing_interface() {
    let nodes = TwoNodes::new();
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Auto);
    let err = a.attach("nosuch0", Hook::Underlay).unwrap_err();
    assert_eq!(
        err.to_string(),
        "interface \"nosuch0\" does not exist in this network namespace"
    );
    assert_eq!(a.attached().count(), 0, "nothing half-attached");
}
