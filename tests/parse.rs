//! Every parse path and malformed case, through the real programs in the
//! running kernel with BPF_PROG_TEST_RUN (root). Each test checks the
//! verdict is pass-through, the packet is untouched, and the maps hold
//! exactly the expected entries.
use crossover_tests::{
    harness::{Harness, NEXT, two_node_shape},
    packet::{self, ACK, ICMP, L4, PSH, RST, SYN, frag_needed, ip, ipv6_frame, tcp, udp},
};
use observer::{
    datapath::{FlowRecord, LoadOptions, PeerCounts, Snapshot},
    shape::ClusterShape,
};
use observer_ebpf::{Counter, Direction};

const UNDERLAY_IN: &str = "crossover_underlay_ingress";
const UNDERLAY_OUT: &str = "crossover_underlay_egress";
const NODE_A: [u8; 4] = [192, 168, 50, 1];
const NODE_B: [u8; 4] = [192, 168, 50, 2];
const LEGACY_A: [u8; 4] = [10, 244, 0, 7];
const LEGACY_B: [u8; 4] = [10, 244, 1, 5];
const CILIUM_A: [u8; 4] = [10, 245, 0, 9];
const CILIUM_B: [u8; 4] = [10, 245, 1, 3];

/// Counters other than the "seen" ones that are not zero.
fn problems(snap: &Snapshot) -> Vec<(&'static str, u64)> {
    snap.counters
        .iter()
        .filter(|(name, value)| **value != 0 && !name.starts_with("seen_"))
        .map(|(name, value)| (*name, *value))
        .collect()
}

fn only_flow(snap: &Snapshot) -> &FlowRecord {
    assert_eq!(
        snap.flows.len(),
        1,
        "expected exactly one flow: {:#?}",
        snap.flows
    );
    &snap.flows[0]
}

fn run_ok(h: &Harness, program: &str, packet: &[u8]) {
    assert_eq!(
        h.run(program, packet),
        NEXT,
        "{program} must hand the packet on"
    );
}

#[test]
fn vxlan_on_each_port_is_the_right_overlay() {
    for (port, overlay) in [(8472, "legacy"), (4789, "legacy"), (8473, "cilium")] {
        let mut h = Harness::new(&two_node_shape());
        let inner = ip(LEGACY_A, LEGACY_B, tcp(33000, 80, 1000, SYN, 0));
        let frame = inner.vxlan(NODE_A, NODE_B, port);
        run_ok(&h, UNDERLAY_OUT, &frame);
        let snap = h.snapshot();
        assert_eq!(problems(&snap), vec![], "port {port}");
        let flow = only_flow(&snap);
        assert_eq!(
            (flow.src, flow.dst, flow.src_port, flow.dst_port, flow.proto),
            (LEGACY_A.into(), LEGACY_B.into(), 33000, 80, packet::TCP)
        );
        assert_eq!(
            (
                flow.point.label(),
                flow.direction.label(),
                flow.overlay.label()
            ),
            ("underlay", "egress", overlay)
        );
        assert_eq!(
            (
                flow.src_net.label(),
                flow.dst_net.label(),
                flow.snat.label()
            ),
            ("legacy", "legacy", "none")
        );
        assert_eq!(flow.peer, Some(NODE_B.into()));
        assert_eq!((flow.packets, flow.bytes, flow.syns), (1, 40, 1));
        assert_eq!(snap.peers.len(), 1);
        let peer = &snap.peers[0];
        assert_eq!(
            (peer.peer, peer.overlay.label(), peer.direction.label()),
            (NODE_B.into(), overlay, "egress")
        );
        assert_eq!(
            (peer.counts.packets, peer.counts.bytes),
            (1, frame.len() as u64)
        );
        assert_eq!(snap.counter(Counter::SeenUnderlay), 1);
        h.reset();
    }
}

#[test]
fn geneve_with_and_without_options() {
    for words in [0u8, 1, 3, 63] {
        let h = Harness::new(&two_node_shape());
        let inner = ip(CILIUM_B, CILIUM_A, udp(5000, 53, b"query"));
        let frame = inner.geneve(NODE_B, NODE_A, words);
        run_ok(&h, UNDERLAY_IN, &frame);
        let snap = h.snapshot();
        assert_eq!(problems(&snap), vec![], "{words} option words");
        let flow = only_flow(&snap);
        assert_eq!((flow.src, flow.dst), (CILIUM_B.into(), CILIUM_A.into()));
        assert_eq!(
            (flow.src_port, flow.dst_port, flow.proto),
            (5000, 53, packet::UDP)
        );
        assert_eq!(
            (
                flow.overlay.label(),
                flow.src_net.label(),
                flow.dst_net.label()
            ),
            ("cilium", "cilium", "cilium")
        );
        assert_eq!(flow.peer, Some(NODE_B.into()));
        let peer = &snap.peers[0];
        assert_eq!(
            (peer.peer, peer.overlay.label(), peer.direction.label()),
            (NODE_B.into(), "cilium", "ingress")
        );
    }
}

#[test]
fn vlan_tag_and_ip_options_on_both_layers() {
    let h = Harness::new(&two_node_shape());
    let inner = ip(LEGACY_B, LEGACY_A, tcp(80, 33000, 5, SYN | ACK, 0)).with_options(&[1, 1, 1, 0]);
    let mut outer_payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    outer_payload.extend(inner.frame());
    let outer = ip(NODE_B, NODE_A, udp(40000, 8472, &outer_payload))
        .with_options(&[0x94, 0x04, 0, 0, 1, 1, 1, 1]);
    run_ok(&h, UNDERLAY_IN, &outer.vlan_frame(42));
    let snap = h.snapshot();
    assert_eq!(problems(&snap), vec![]);
    let flow = only_flow(&snap);
    assert_eq!(
        (flow.src, flow.dst, flow.syn_acks, flow.syns),
        (LEGACY_B.into(), LEGACY_A.into(), 1, 0)
    );
    assert_eq!(
        flow.bytes, 44,
        "inner total length counts the 4 option bytes"
    );
}

#[test]
fn stacked_vlan_is_counted_not_parsed() {
    let h = Harness::new(&two_node_shape());
    let inner = ip(LEGACY_A, LEGACY_B, tcp(1, 2, 0, SYN, 0)).vlan_frame(7);
    let mut frame = inner[..12].to_vec();
    frame.extend([0x81, 0x00, 0x00, 0x08]);
    frame.extend(&inner[12..]);
    run_ok(&h, UNDERLAY_OUT, &frame);
    let snap = h.snapshot();
    assert_eq!(problems(&snap), vec![("stacked_vlan", 1)]);
    assert!(snap.flows.is_empty());
}

#[test]
fn fragments_first_counts_later_ones_do_not() {
    let h = Harness::new(&two_node_shape());
    let first = ip(LEGACY_A, LEGACY_B, udp(7000, 7001, &[0; 64])).fragment(0, true);
    let later = ip(LEGACY_A, LEGACY_B, packet::raw(packet::UDP, 64)).fragment(9, false);
    run_ok(&h, "crossover_pod_ingress", &first.frame());
    run_ok(&h, "crossover_pod_ingress", &later.frame());
    // The same pair inside a tunnel: an inner non-first fragment.
    run_ok(&h, UNDERLAY_OUT, &later.vxlan(NODE_A, NODE_B, 8472));
    // And an outer one: the tunnel header itself is in the first fragment.
    let outer_later = ip(NODE_A, NODE_B, packet::raw(packet::UDP, 64)).fragment(100, false);
    run_ok(&h, UNDERLAY_OUT, &outer_later.frame());
    let snap = h.snapshot();
    assert_eq!(
        problems(&snap),
        vec![("fragment", 2), ("inner_fragment", 1)]
    );
    let flow = only_flow(&snap);
    assert_eq!(
        (flow.point.label(), flow.src_port, flow.dst_port),
        ("pod", 7000, 7001)
    );
    assert_eq!(
        snap.peers.len(),
        1,
        "the tunnelled fragment still went to the peer"
    );
}

#[test]
fn truncation_at_every_header_boundary() {
    let inner = ip(LEGACY_A, LEGACY_B, tcp(33000, 80, 1, ACK, 0));
    let full = inner.vxlan(NODE_A, NODE_B, 8472);
    assert_eq!(full.len(), 104);
    let h = Harness::new(&two_node_shape());
    // The reason each cut of a VXLAN TCP frame must be counted under.
    let expect = |len: usize| -> &'static str {
        match len {
            34..=41 => "truncated_udp",
            42..=49 => "truncated_vxlan",
            50..=63 => "truncated_inner_eth",
            64..=83 => "truncated_inner_ipv4",
            84..=103 => "truncated_l4",
            _ => unreachable!(),
        }
    };
    let mut want = std::collections::BTreeMap::<&str, u64>::new();
    let mut peer_packets = 0;
    for len in 34..full.len() {
        run_ok(&h, UNDERLAY_OUT, &full[..len]);
        *want.entry(expect(len)).or_default() += 1;
        peer_packets += u64::from(len >= 42);
    }
    // The kernel refuses to test-run an IPv4 frame without a whole IPv4
    // header, so the outer IPv4 and VLAN cuts go through a tagged frame,
    // whose ethertype it does not inspect.
    for len in [13, 14, 20, 33] {
        let refused = h
            .observer
            .program(UNDERLAY_OUT)
            .unwrap()
            .test_run_refuses(&full[..len]);
        assert!(refused, "test_run accepted a {len}-byte IPv4 frame");
    }
    let tagged = ip(NODE_A, NODE_B, udp(1, 2, b"x")).vlan_frame(5);
    for len in 15..38 {
        run_ok(&h, UNDERLAY_OUT, &tagged[..len]);
        *want
            .entry(if len < 18 {
                "truncated_vlan"
            } else {
                "truncated_ipv4"
            })
            .or_default() += 1;
    }
    let snap = h.snapshot();
    assert_eq!(problems(&snap), want.into_iter().collect::<Vec<_>>());
    assert!(snap.flows.is_empty(), "no flow from a truncated packet");
    // A frame is counted towards its peer as soon as its UDP header says tunnel.
    assert_eq!(snap.peers[0].counts.packets, peer_packets);
}

trait RefuseShort {
    fn test_run_refuses(&self, packet: &[u8]) -> bool;
}

impl RefuseShort for aya::programs::SchedClassifier {
    fn test_run_refuses(&self, packet: &[u8]) -> bool {
        use aya::programs::{TestRun, TestRunOptions};
        self.test_run(TestRunOptions {
            data_in: Some(packet),
            ..Default::default()
        })
        .is_err()
    }
}

#[test]
fn truncated_geneve_and_options() {
    let h = Harness::new(&two_node_shape());
    let inner = ip(CILIUM_A, CILIUM_B, udp(1, 2, b"x"));
    let full = inner.geneve(NODE_A, NODE_B, 4);
    // 42: UDP done; 50: base Geneve header done; 66: options done.
    for len in [45, 49] {
        run_ok(&h, UNDERLAY_OUT, &full[..len]);
    }
    for len in [50, 58, 65] {
        run_ok(&h, UNDERLAY_OUT, &full[..len]);
    }
    run_ok(&h, UNDERLAY_OUT, &full[..66]);
    let snap = h.snapshot();
    assert_eq!(
        problems(&snap),
        vec![
            ("truncated_geneve", 2),
            ("truncated_geneve_options", 3),
            ("truncated_inner_eth", 1)
        ]
    );
}

#[test]
fn bad_tunnel_headers() {
    let h = Harness::new(&two_node_shape());
    let inner = ip(LEGACY_A, LEGACY_B, tcp(1, 2, 0, SYN, 0)).frame();
    // VXLAN without the I flag.
    let mut payload = vec![0x00, 0, 0, 0, 0, 0, 1, 0];
    payload.extend(&inner);
    run_ok(
        &h,
        UNDERLAY_OUT,
        &ip(NODE_A, NODE_B, udp(1, 8472, &payload)).frame(),
    );
    // Geneve version 1, then Geneve carrying IPv4 directly instead of Ethernet.
    for header in [
        {
            let mut g = packet::geneve_header(0, 0x6558);
            g[0] |= 0x40;
            g
        },
        packet::geneve_header(0, 0x0800),
    ] {
        let mut payload = header;
        payload.extend(&inner);
        run_ok(
            &h,
            UNDERLAY_OUT,
            &ip(NODE_A, NODE_B, udp(1, 6081, &payload)).frame(),
        );
    }
    // IPv4 header length 4 words (under the minimum of 5).
    let mut bad_ihl = ip(LEGACY_A, LEGACY_B, tcp(1, 2, 0, SYN, 0)).frame();
    bad_ihl[14] = 0x44;
    run_ok(&h, "crossover_pod_egress", &bad_ihl);
    // IPv4 options running past the end of the packet.
    let mut long_ihl = ip(LEGACY_A, LEGACY_B, packet::raw(99, 0)).frame();
    long_ihl[14] = 0x4f;
    long_ihl[16..18].copy_from_slice(&80u16.to_be_bytes());
    run_ok(&h, "crossover_pod_egress", &long_ihl);
    let snap = h.snapshot();
    assert_eq!(
        problems(&snap),
        vec![
            ("bad_geneve", 2),
            ("bad_ipv4", 1),
            ("bad_vxlan", 1),
            ("truncated_ipv4_options", 1)
        ]
    );
    assert!(snap.flows.is_empty());
    assert_eq!(
        snap.peers.len(),
        2,
        "both overlays towards node B were counted"
    );
}

#[test]
fn ipv6_and_non_ip_outer_and_inner() {
    let h = Harness::new(&two_node_shape());
    let v6 = ipv6_frame();
    run_ok(&h, UNDERLAY_IN, &v6);
    let arp = packet::ethernet(0x0806, &[0; 28]);
    run_ok(&h, UNDERLAY_IN, &arp);
    for inner in [&v6, &arp] {
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        payload.extend(inner.iter());
        run_ok(
            &h,
            UNDERLAY_IN,
            &ip(NODE_B, NODE_A, udp(1, 8473, &payload)).frame(),
        );
    }
    let snap = h.snapshot();
    assert_eq!(
        problems(&snap),
        vec![
            ("inner_ipv6", 1),
            ("inner_non_ip", 1),
            ("ipv6", 1),
            ("non_ip", 1)
        ]
    );
    assert_eq!(snap.counter(Counter::SeenUnderlay), 4);
    assert!(snap.flows.is_empty());
}

#[test]
fn native_pod_traffic_names_its_peer_and_other_traffic_is_left_out() {
    let h = Harness::new(&two_node_shape());
    // Routed CNI: a pod on B talks to a pod on A without a tunnel.
    let native = ip(LEGACY_B, LEGACY_A, tcp(41000, 8080, 77, SYN, 0)).frame();
    run_ok(&h, UNDERLAY_IN, &native);
    // kubelet to the API server: node to node, not on any overlay.
    run_ok(
        &h,
        UNDERLAY_OUT,
        &ip(NODE_A, NODE_B, tcp(50000, 6443, 1, ACK, 10)).frame(),
    );
    // Somebody's SSH session from outside the cluster.
    run_ok(
        &h,
        UNDERLAY_IN,
        &ip([203, 0, 113, 9], NODE_A, tcp(60000, 22, 1, ACK, 10)).frame(),
    );
    // Node to node UDP on a port that is no tunnel of ours.
    run_ok(
        &h,
        UNDERLAY_IN,
        &ip(NODE_B, NODE_A, udp(1234, 9999, b"hi")).frame(),
    );
    let snap = h.snapshot();
    assert_eq!(problems(&snap), vec![("not_cluster", 1)]);
    assert_eq!(snap.flows.len(), 3);
    let pod = snap.flows.iter().find(|f| f.dst_port == 8080).unwrap();
    assert_eq!(
        (
            pod.overlay.label(),
            pod.src_net.label(),
            pod.dst_net.label()
        ),
        ("native", "legacy", "legacy")
    );
    assert_eq!(pod.peer, Some(NODE_B.into()));
    let api = snap.flows.iter().find(|f| f.dst_port == 6443).unwrap();
    assert_eq!(
        (
            api.overlay.label(),
            api.src_net.label(),
            api.dst_net.label()
        ),
        ("none", "host", "host")
    );
    assert_eq!(api.peer, Some(NODE_B.into()));
    assert_eq!(
        snap.peers.len(),
        1,
        "only pod traffic counts towards the native overlay"
    );
    let peer = &snap.peers[0];
    assert_eq!(
        (
            peer.peer,
            peer.overlay.label(),
            peer.direction.label(),
            peer.counts.packets
        ),
        (NODE_B.into(), "native", "ingress", 1)
    );
}

#[test]
fn snat_sources_and_their_replies_are_marked() {
    let h = Harness::new(&two_node_shape());
    // A legacy pod on B reached a Cilium pod on A: B SNATed it to its
    // cilium_host address 10.245.1.1 and sent it on the Cilium overlay.
    let request = ip([10, 245, 1, 1], CILIUM_A, tcp(35000, 80, 9, SYN, 0));
    run_ok(&h, UNDERLAY_IN, &request.vxlan(NODE_B, NODE_A, 8473));
    // A Cilium pod on A reached a legacy pod on B, SNATed to A's flannel.1.
    let reply = ip(LEGACY_B, [10, 244, 0, 0], tcp(80, 36000, 9, SYN | ACK, 0));
    run_ok(&h, UNDERLAY_IN, &reply.vxlan(NODE_B, NODE_A, 8472));
    let snap = h.snapshot();
    assert_eq!(problems(&snap), vec![]);
    let src = snap.flows.iter().find(|f| f.dst_port == 80).unwrap();
    assert_eq!(
        (
            src.snat.label(),
            src.snat_addr,
            src.src_net.label(),
            src.dst_net.label()
        ),
        ("source", Some([10, 245, 1, 1].into()), "host", "cilium")
    );
    assert_eq!(src.overlay.label(), "cilium");
    let dst = snap.flows.iter().find(|f| f.src_port == 80).unwrap();
    assert_eq!(
        (
            dst.snat.label(),
            dst.snat_addr,
            dst.src_net.label(),
            dst.dst_net.label()
        ),
        (
            "destination",
            Some([10, 244, 0, 0].into()),
            "legacy",
            "host"
        )
    );
    assert_eq!(dst.overlay.label(), "legacy");
}

/// The per-peer TCP counters the agent's handshake and retransmit signals
/// are made of, on the underlay: a SYN and its retry, segments and a
/// retransmission, a reset; the SYN-ACK coming back closes the handshake
/// the first SYN opened and counts it answered on the client's egress
/// counters; a second connection is refused by RST; a third is never
/// answered and expires once the grace has passed. UDP adds none.
#[test]
fn tcp_events_count_into_the_peer_counters() {
    let mut h = Harness::new(&two_node_shape());
    let out = |h: &Harness, l4: L4| {
        let frame = ip(LEGACY_A, LEGACY_B, l4).vxlan(NODE_A, NODE_B, 8472);
        run_ok(h, UNDERLAY_OUT, &frame);
    };
    let back = |h: &Harness, l4: L4| {
        let frame = ip(LEGACY_B, LEGACY_A, l4).vxlan(NODE_B, NODE_A, 8472);
        run_ok(h, UNDERLAY_IN, &frame);
    };
    out(&h, tcp(40000, 443, 100, SYN, 0));
    out(&h, tcp(40000, 443, 100, SYN, 0)); // SYN retried
    back(&h, tcp(443, 40000, 900, SYN | ACK, 0));
    back(&h, tcp(443, 40000, 900, SYN | ACK, 0)); // answered once only
    out(&h, tcp(40000, 443, 101, ACK, 0)); // pure ACK: no segment
    out(&h, tcp(40000, 443, 101, ACK | packet::PSH, 500));
    out(&h, tcp(40000, 443, 101, ACK | packet::PSH, 500)); // retransmitted
    out(&h, tcp(40000, 443, 601, RST, 0));
    out(&h, udp(5000, 53, b"not tcp"));
    out(&h, tcp(40001, 443, 7, SYN, 0));
    back(&h, tcp(443, 40001, 0, RST | ACK, 0)); // refused
    out(&h, tcp(40002, 443, 7, SYN, 0)); // never answered
    let counts = |snap: &Snapshot, direction: Direction| {
        snap.peers
            .iter()
            .filter(|p| p.direction == direction)
            .map(|p| p.counts)
            .fold(PeerCounts::default(), |mut sum, c| {
                sum += c;
                sum
            })
    };
    let snap = h.snapshot();
    assert_eq!(problems(&snap), vec![]);
    let sent = counts(&snap, Direction::Egress);
    assert_eq!(
        (sent.packets, sent.segments, sent.retransmits, sent.rsts),
        (9, 6, 2, 1),
        "4 SYNs and 2 data segments, one SYN and one segment again: {sent:?}"
    );
    assert_eq!(
        (
            sent.handshakes_answered,
            sent.handshakes_reset,
            sent.handshakes_unanswered
        ),
        (1, 1, 0),
        "the third is pending until the grace has passed"
    );
    let received = counts(&snap, Direction::Ingress);
    assert_eq!(
        (received.packets, received.segments, received.rsts),
        (3, 2, 1)
    );
    assert_eq!(
        received.handshakes_answered + received.handshakes_reset,
        0,
        "outcomes count on the client's egress counters only"
    );
    // Not yet past the grace: nothing expires.
    let now = observer::datapath::monotonic_ns();
    assert_eq!(h.observer.expire_handshakes(now).unwrap(), 0);
    let later = now + observer_ebpf::HANDSHAKE_GRACE_NS + 1;
    assert_eq!(h.observer.expire_handshakes(later).unwrap(), 1);
    assert_eq!(h.observer.expire_handshakes(later).unwrap(), 0, "once");
    let sent = counts(&h.snapshot(), Direction::Egress);
    assert_eq!(sent.handshakes_unanswered, 1);
    // An answer after the grace is counted by the kernel as unanswered in
    // time, not answered.
    out(&h, tcp(40003, 443, 7, SYN, 0));
    std::thread::sleep(std::time::Duration::from_nanos(
        observer_ebpf::HANDSHAKE_GRACE_NS + 50_000_000,
    ));
    back(&h, tcp(443, 40003, 0, SYN | ACK, 0));
    let sent = counts(&h.snapshot(), Direction::Egress);
    assert_eq!(
        (sent.handshakes_answered, sent.handshakes_unanswered),
        (1, 2)
    );
}

#[test]
fn tcp_and_icmp_counters() {
    let h = Harness::new(&two_node_shape());
    let send = |l4: L4| {
        run_ok(
            &h,
            "crossover_pod_ingress",
            &ip(LEGACY_A, CILIUM_B, l4).frame(),
        )
    };
    send(tcp(40000, 443, 100, SYN, 0));
    send(tcp(40000, 443, 100, SYN, 0)); // SYN retransmitted
    send(tcp(40000, 443, 101, ACK, 0)); // pure ACK: not a segment
    send(tcp(40000, 443, 101, ACK | packet::PSH, 500));
    send(tcp(40000, 443, 601, ACK, 1000));
    send(tcp(40000, 443, 101, ACK | packet::PSH, 500)); // retransmitted
    send(tcp(40000, 443, 1601, ACK, 200));
    send(tcp(40000, 443, 1801, RST, 0));
    send(L4::IcmpEcho {
        request: true,
        id: 77,
        seq: 1,
    });
    send(L4::IcmpEcho {
        request: true,
        id: 77,
        seq: 2,
    });
    send(L4::Icmp { kind: 3, code: 4 }); // fragmentation needed
    run_ok(
        &h,
        "crossover_pod_egress",
        &ip(
            CILIUM_B,
            LEGACY_A,
            L4::IcmpEcho {
                request: false,
                id: 77,
                seq: 1,
            },
        )
        .frame(),
    );
    let snap = h.snapshot();
    assert_eq!(problems(&snap), vec![]);
    assert_eq!(snap.flows.len(), 4);
    let conn = snap.flows.iter().find(|f| f.proto == packet::TCP).unwrap();
    assert_eq!(
        (conn.packets, conn.syns, conn.syn_acks, conn.rsts),
        (8, 2, 0, 1)
    );
    assert_eq!((conn.segments, conn.retransmits), (6, 2));
    assert_eq!(conn.tcp_flags, SYN | ACK | packet::PSH | RST);
    assert_eq!(
        (
            conn.src_net.label(),
            conn.dst_net.label(),
            conn.point.label(),
            conn.overlay.label()
        ),
        ("legacy", "cilium", "pod", "none")
    );
    assert_eq!(conn.peer, Some(NODE_B.into()), "the remote pod's node");
    let echo = snap
        .flows
        .iter()
        .find(|f| f.proto == ICMP && f.src_port == 77 && f.direction.label() == "ingress")
        .unwrap();
    assert_eq!(
        (echo.echo_requests, echo.echo_replies, echo.packets),
        (2, 0, 2)
    );
    let reply = snap
        .flows
        .iter()
        .find(|f| f.direction.label() == "egress")
        .unwrap();
    assert_eq!(
        (reply.echo_requests, reply.echo_replies, reply.src_port),
        (0, 1, 77)
    );
    let frag_needed = snap
        .flows
        .iter()
        .find(|f| f.proto == ICMP && f.dst_port == (3 << 8 | 4))
        .unwrap();
    assert_eq!(frag_needed.packets, 1);
}

#[test]
fn every_hook_labels_its_point_and_overlay() {
    let h = Harness::new(&two_node_shape());
    let frame = ip(LEGACY_A, LEGACY_B, udp(9, 9, b"x")).frame();
    for (program, point, overlay) in [
        ("crossover_overlay_legacy_ingress", "overlay", "legacy"),
        ("crossover_overlay_cilium_egress", "overlay", "cilium"),
        ("crossover_host_ingress", "host", "none"),
        ("crossover_pod_egress", "pod", "none"),
    ] {
        run_ok(&h, program, &frame);
        let snap = h.snapshot();
        let flow = snap
            .flows
            .iter()
            .find(|f| f.point.label() == point && f.overlay.label() == overlay)
            .unwrap_or_else(|| panic!("{program}: {:#?}", snap.flows));
        assert_eq!(flow.packets, 1);
    }
    let snap = h.snapshot();
    assert_eq!(snap.flows.len(), 4);
    assert_eq!(
        (
            snap.counter(Counter::SeenOverlay),
            snap.counter(Counter::SeenHost),
            snap.counter(Counter::SeenPod)
        ),
        (2, 1, 1)
    );
}

#[test]
fn full_maps_refuse_and_count() {
    let options = LoadOptions {
        flow_capacity: 4,
        peer_capacity: 2,
        ..LoadOptions::default()
    };
    let h = Harness::with_options(&two_node_shape(), options);
    for port in 0..6u16 {
        let inner = ip(LEGACY_A, LEGACY_B, udp(1000 + port, 53, b"q"));
        let outer_dst = [192, 168, 50, 10 + (port % 3) as u8];
        run_ok(&h, UNDERLAY_OUT, &inner.vxlan(NODE_A, outer_dst, 8472));
    }
    let snap = h.snapshot();
    assert_eq!(
        problems(&snap),
        vec![("flow_map_full", 2), ("peer_map_full", 2)]
    );
    assert_eq!(snap.flows.len(), 4);
    assert_eq!(snap.peers.len(), 2);
    // Known flows still count when the map is full.
    run_ok(
        &h,
        UNDERLAY_OUT,
        &ip(LEGACY_A, LEGACY_B, udp(1000, 53, b"q")).vxlan(NODE_A, [192, 168, 50, 10], 8472),
    );
    let snap = h.snapshot();
    assert_eq!(
        snap.flows
            .iter()
            .find(|f| f.src_port == 1000)
            .unwrap()
            .packets,
        2
    );
}

#[test]
fn peer_counts_stay_exact_across_shape_changes() {
    let mut h = Harness::new(&two_node_shape());
    let frame =
        |sport: u16| ip(LEGACY_A, LEGACY_B, udp(sport, 53, b"q")).vxlan(NODE_A, NODE_B, 8472);
    let sent = |snap: &Snapshot| {
        snap.peers
            .iter()
            .find(|p| p.peer == std::net::Ipv4Addr::from(NODE_B) && p.direction.label() == "egress")
            .map_or(0, |p| p.counts.packets)
    };
    // Node B is in the shape: its key counts in the PEERS hash until the
    // sampler hands it a slot, then in the slot, the flow of sport 1
    // included (it takes the slot on its next packet): one figure, exact.
    for sport in [1, 1] {
        run_ok(&h, UNDERLAY_OUT, &frame(sport));
    }
    assert_eq!(h.observer.promote_peer_slots().unwrap(), 1);
    assert_eq!(h.observer.promote_peer_slots().unwrap(), 0, "once");
    run_ok(&h, UNDERLAY_OUT, &frame(2));
    assert_eq!(sent(&h.snapshot()), 3);
    run_ok(&h, UNDERLAY_OUT, &frame(1));
    assert_eq!(sent(&h.snapshot()), 4);
    // Node B leaves the shape (drained and deleted mid-migration): its
    // traffic is still counted, in the hash, and the figure never drops.
    let mut without_b = two_node_shape();
    without_b.nodes.retain(|n| n.name != "node-b");
    h.observer.configure(&without_b).unwrap();
    for sport in [1, 3] {
        run_ok(&h, UNDERLAY_OUT, &frame(sport));
    }
    assert_eq!(
        h.observer.promote_peer_slots().unwrap(),
        0,
        "not in the shape"
    );
    assert_eq!(sent(&h.snapshot()), 6);
    // And comes back: the same slot again.
    h.observer.configure(&two_node_shape()).unwrap();
    assert_eq!(
        h.observer.promote_peer_slots().unwrap(),
        0,
        "its slot is kept"
    );
    run_ok(&h, UNDERLAY_OUT, &frame(4));
    let snap = h.snapshot();
    assert_eq!(sent(&snap), 7);
    assert_eq!(problems(&snap), vec![]);
}

/// (peer, overlay, direction, src_net, dst_net, packets) of every peer
/// record, in the order of their names.
fn peer_rows(snap: &Snapshot) -> Vec<(std::net::Ipv4Addr, &str, &str, &str, &str, u64)> {
    let mut rows: Vec<_> = snap
        .peers
        .iter()
        .map(|p| {
            (
                p.peer,
                p.overlay.label(),
                p.direction.label(),
                p.src_net.label(),
                p.dst_net.label(),
                p.counts.packets,
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn both_ends_count_a_packet_under_the_same_network_pair() {
    // Node A's egress and node B's ingress run on the same frames, each
    // with its own view of the cluster (its own local node): delivery per
    // network pair only means something if both classify alike.
    let a = Harness::new(&two_node_shape());
    let b = Harness::new(&ClusterShape {
        local_node: Some("node-b".into()),
        ..two_node_shape()
    });
    let frames = [
        // Legacy pod to legacy pod on the legacy overlay.
        ip(LEGACY_A, LEGACY_B, udp(1000, 53, b"q")).vxlan(NODE_A, NODE_B, 8472),
        // A Cilium pod on A to a legacy pod on B, SNATed to A's flannel.1.
        ip([10, 244, 0, 0], LEGACY_B, tcp(36000, 80, 9, SYN, 0)).vxlan(NODE_A, NODE_B, 8472),
        // A legacy pod on A to a Cilium pod on B, SNATed to cilium_host.
        ip([10, 245, 0, 1], CILIUM_B, tcp(35000, 80, 9, SYN, 0)).vxlan(NODE_A, NODE_B, 8473),
        ip([10, 245, 0, 1], CILIUM_B, tcp(35000, 80, 10, ACK, 5)).vxlan(NODE_A, NODE_B, 8473),
        // Cilium to Cilium over Geneve, and a probe between cilium_hosts.
        ip(CILIUM_A, CILIUM_B, udp(5000, 53, b"q")).geneve(NODE_A, NODE_B, 1),
        ip([10, 245, 0, 1], [10, 245, 1, 1], udp(5001, 9191, b"p")).vxlan(NODE_A, NODE_B, 8473),
        // An inner packet nobody can key a flow on: IPv6.
        {
            let mut payload = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
            payload.extend(ipv6_frame());
            ip(NODE_A, NODE_B, udp(1, 8472, &payload)).frame()
        },
    ];
    for frame in &frames {
        run_ok(&a, UNDERLAY_OUT, frame);
        run_ok(&b, UNDERLAY_IN, frame);
    }
    let (sent, received) = (a.snapshot(), b.snapshot());
    let b_addr = NODE_B.into();
    assert_eq!(
        peer_rows(&sent),
        vec![
            (b_addr, "cilium", "egress", "cilium", "cilium", 1),
            (b_addr, "cilium", "egress", "host", "cilium", 2),
            (b_addr, "cilium", "egress", "host", "host", 1),
            (b_addr, "legacy", "egress", "host", "legacy", 1),
            (b_addr, "legacy", "egress", "legacy", "legacy", 1),
            (b_addr, "legacy", "egress", "unknown", "unknown", 1),
        ]
    );
    let a_addr = NODE_A.into();
    let mirrored: Vec<_> = peer_rows(&sent)
        .into_iter()
        .map(|(_, o, _, s, d, n)| (a_addr, o, "ingress", s, d, n))
        .collect();
    assert_eq!(peer_rows(&received), mirrored);
    assert_eq!(problems(&sent), vec![("inner_ipv6", 1)]);
}

#[test]
fn a_packet_refused_by_the_full_flow_table_keeps_its_network_pair() {
    let options = LoadOptions {
        flow_capacity: 1,
        ..LoadOptions::default()
    };
    let h = Harness::with_options(&two_node_shape(), options);
    run_ok(
        &h,
        UNDERLAY_OUT,
        &ip(LEGACY_A, LEGACY_B, udp(1000, 53, b"q")).vxlan(NODE_A, NODE_B, 8472),
    );
    run_ok(
        &h,
        UNDERLAY_OUT,
        &ip(CILIUM_A, LEGACY_B, udp(1001, 53, b"q")).vxlan(NODE_A, NODE_B, 8472),
    );
    let snap = h.snapshot();
    assert_eq!(problems(&snap), vec![("flow_map_full", 1)]);
    assert_eq!(snap.flows.len(), 1);
    let b = NODE_B.into();
    assert_eq!(
        peer_rows(&snap),
        vec![
            (b, "legacy", "egress", "cilium", "legacy", 1),
            (b, "legacy", "egress", "legacy", "legacy", 1),
        ],
        "counted once, with the networks its peer will see"
    );
}

/// Calico in IP-in-IP mode as the legacy CNI: the legacy network's pods
/// travel in IPv4 protocol 4 between nodes.
fn calico_ipip_shape() -> ClusterShape {
    let mut shape = two_node_shape();
    shape.networks[0].encapsulation = observer::shape::Encapsulation::Ipip;
    shape
}

#[test]
fn ipip_is_an_overlay_with_options_on_either_header() {
    let no_options: &[u8] = &[];
    let options: &[u8] = &[0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00];
    for (outer_options, inner_options) in [
        (no_options, no_options),
        (options, no_options),
        (no_options, options),
        (options, options),
    ] {
        let h = Harness::new(&calico_ipip_shape());
        let inner =
            ip(LEGACY_A, LEGACY_B, tcp(33000, 80, 1000, SYN, 0)).with_options(inner_options);
        let out = inner
            .ipip(NODE_A, NODE_B)
            .with_options(outer_options)
            .frame();
        run_ok(&h, UNDERLAY_OUT, &out);
        let back = ip(LEGACY_B, LEGACY_A, tcp(80, 33000, 5000, SYN | ACK, 0))
            .ipip(NODE_B, NODE_A)
            .frame();
        run_ok(&h, UNDERLAY_IN, &back);
        let what = format!(
            "options {} outer, {} inner",
            outer_options.len(),
            inner_options.len()
        );
        let snap = h.snapshot();
        assert_eq!(problems(&snap), vec![], "{what}");
        assert_eq!(snap.flows.len(), 2, "{what}: {:#?}", snap.flows);
        let flow = snap
            .flows
            .iter()
            .find(|f| f.direction == Direction::Egress)
            .unwrap();
        assert_eq!(
            (flow.src, flow.dst, flow.src_port, flow.dst_port, flow.proto),
            (LEGACY_A.into(), LEGACY_B.into(), 33000, 80, packet::TCP),
            "{what}"
        );
        assert_eq!(
            (
                flow.point.label(),
                flow.overlay.label(),
                flow.src_net.label(),
                flow.dst_net.label()
            ),
            ("underlay", "legacy", "legacy", "legacy"),
            "{what}"
        );
        assert_eq!(
            flow.peer,
            Some(NODE_B.into()),
            "the outer address names the peer"
        );
        assert_eq!(
            flow.bytes,
            40 + inner_options.len() as u64,
            "inner length, {what}"
        );
        let rows = peer_rows(&snap);
        assert_eq!(
            rows,
            vec![
                (NODE_B.into(), "legacy", "egress", "legacy", "legacy", 1),
                (NODE_B.into(), "legacy", "ingress", "legacy", "legacy", 1),
            ],
            "{what}"
        );
        let egress = snap
            .peers
            .iter()
            .find(|p| p.direction == Direction::Egress)
            .unwrap();
        assert_eq!(egress.counts.bytes, out.len() as u64, "whole frame, {what}");
    }
}

#[test]
fn ipip_without_an_ipip_network_is_node_to_node_traffic() {
    // Flannel's shape: protocol 4 between nodes is no overlay of the
    // cluster's, and its inner packet is not looked into.
    let h = Harness::new(&two_node_shape());
    let out = ip(LEGACY_A, LEGACY_B, udp(9, 9, b"x"))
        .ipip(NODE_A, NODE_B)
        .frame();
    run_ok(&h, UNDERLAY_OUT, &out);
    let snap = h.snapshot();
    let flow = only_flow(&snap);
    assert_eq!(
        (flow.src, flow.dst, flow.proto, flow.overlay.label()),
        (NODE_A.into(), NODE_B.into(), packet::IPIP, "none")
    );
}

#[test]
fn ipip_truncated_at_every_boundary_and_fragmented() {
    let h = Harness::new(&calico_ipip_shape());
    let options = [0x94, 0x04, 0, 0];
    let inner = ip(LEGACY_A, LEGACY_B, tcp(33000, 80, 1, ACK, 0)).with_options(&options);
    let full = inner.ipip(NODE_A, NODE_B).frame();
    assert_eq!(full.len(), 14 + 20 + 24 + 20);
    let expect = |len: usize| -> &'static str {
        match len {
            34..=53 => "truncated_inner_ipv4",
            54..=57 => "truncated_ipv4_options",
            58..=77 => "truncated_l4",
            _ => unreachable!(),
        }
    };
    let mut want = std::collections::BTreeMap::<&str, u64>::new();
    let mut cuts = 0;
    for len in 34..full.len() {
        run_ok(&h, UNDERLAY_OUT, &full[..len]);
        *want.entry(expect(len)).or_default() += 1;
        cuts += 1;
    }
    // Fragments. The outer header's first fragment carries the inner
    // header: counted, flow and all. A later one carries no inner header:
    // counted as a fragment, and (as for VXLAN) not towards the peer, on
    // both nodes alike. An inner later fragment went to the peer whole.
    let first = ip(LEGACY_A, LEGACY_B, udp(7000, 7001, &[0; 64]))
        .ipip(NODE_A, NODE_B)
        .fragment(0, true);
    run_ok(&h, UNDERLAY_OUT, &first.frame());
    let outer_later = ip(NODE_A, NODE_B, packet::raw(packet::IPIP, 64)).fragment(100, false);
    run_ok(&h, UNDERLAY_OUT, &outer_later.frame());
    let inner_later = ip(LEGACY_A, LEGACY_B, packet::raw(packet::UDP, 64))
        .fragment(9, false)
        .ipip(NODE_A, NODE_B);
    run_ok(&h, UNDERLAY_OUT, &inner_later.frame());
    *want.entry("fragment").or_default() += 1;
    *want.entry("inner_fragment").or_default() += 1;
    let snap = h.snapshot();
    assert_eq!(problems(&snap), want.into_iter().collect::<Vec<_>>());
    let flow = only_flow(&snap);
    assert_eq!((flow.src_port, flow.dst_port), (7000, 7001));
    // Every cut and the inner fragment count towards the peer without
    // networks; the first fragment with its networks.
    let unknown: u64 = snap
        .peers
        .iter()
        .filter(|p| p.src_net.label() == "unknown")
        .map(|p| p.counts.packets)
        .sum();
    assert_eq!(unknown, cuts + 1);
    let known: u64 = snap
        .peers
        .iter()
        .filter(|p| p.src_net.label() == "legacy")
        .map(|p| p.counts.packets)
        .sum();
    assert_eq!(known, 1);
}

#[test]
fn ip_only_overlay_devices_are_read_from_the_ipv4_header() {
    // tunl0 has no link-layer header: its programs start at IPv4.
    let h = Harness::new(&calico_ipip_shape());
    let packet = ip(LEGACY_A, LEGACY_B, tcp(33000, 80, 1, ACK, 10)).bytes();
    for (program, direction) in [
        ("crossover_overlay_legacy_l3_egress", "egress"),
        ("crossover_overlay_legacy_l3_ingress", "ingress"),
        ("crossover_overlay_cilium_l3_egress", "egress"),
    ] {
        run_ok(&h, program, &packet);
        let snap = h.snapshot();
        assert_eq!(problems(&snap), vec![], "{program}");
        assert!(
            snap.flows.iter().any(|f| f.point.label() == "overlay"
                && f.direction.label() == direction
                && (f.src, f.dst, f.src_port) == (LEGACY_A.into(), LEGACY_B.into(), 33000)),
            "{program}: {:#?}",
            snap.flows
        );
    }
    assert_eq!(h.snapshot().counter(Counter::SeenOverlay), 3);
}

/// Pod addresses are classified from ADDR_BLOCKS, everything else by the
/// trie: both must give every address the same networks, node and SNAT.
/// The same packets through a harness whose blocks are off (capacity 0)
/// are the reference. Covers pods on both nodes, the nodes' overlay /32s
/// inside their blocks, a block holding two /32s (left to the trie), an
/// address of a cluster range no node has, node and outside addresses.
#[test]
fn pod_addresses_classify_the_same_by_block_as_by_the_trie() {
    let mut shape = two_node_shape();
    shape.nodes[1].overlay_addrs.push([10, 244, 1, 9].into());
    let by_block = Harness::new(&shape);
    let by_trie = Harness::with_options(
        &shape,
        LoadOptions {
            addr_block_capacity: 0,
            ..LoadOptions::default()
        },
    );
    let summary = by_block.observer.block_summary();
    assert_eq!(summary.ranges.len(), 2, "{summary:?}");
    assert_eq!(summary.asking, 1, "{summary:?}");
    assert!(by_trie.observer.block_summary().ranges.is_empty());

    let addresses: [[u8; 4]; 12] = [
        LEGACY_A,
        LEGACY_B,
        CILIUM_A,
        CILIUM_B,
        [10, 244, 0, 0],
        [10, 245, 1, 1],
        [10, 244, 1, 9],
        [10, 244, 77, 3],
        [10, 245, 255, 255],
        NODE_A,
        NODE_B,
        [203, 0, 113, 9],
    ];
    for src in addresses {
        for dst in addresses {
            let packet = ip(src, dst, udp(4000, 53, b"q")).frame();
            run_ok(&by_block, "crossover_pod_egress", &packet);
            run_ok(&by_trie, "crossover_pod_egress", &packet);
        }
    }
    let classes = |h: &Harness| {
        let mut flows: Vec<_> = h
            .snapshot()
            .flows
            .into_iter()
            .map(|f| {
                (
                    f.src,
                    f.dst,
                    f.src_net,
                    f.dst_net,
                    f.snat,
                    f.snat_addr,
                    f.peer,
                )
            })
            .collect();
        flows.sort_by_key(|f| (f.0, f.1));
        flows
    };
    let (block, trie) = (classes(&by_block), classes(&by_trie));
    assert_eq!(block.len(), addresses.len() * addresses.len());
    assert_eq!(block, trie);

    // The kernel does answer from the blocks: an entry changed behind the
    // plan's back changes what a new flow towards its block is given.
    let mut by_block = by_block;
    let plan = by_block.observer.block_plan().clone();
    // node-b's legacy block holds two /32s and asks the trie: its Cilium
    // block answers.
    let range = plan.ranges[1];
    let cilium_b = u32::from(std::net::Ipv4Addr::from(CILIUM_B));
    assert_eq!(range.base, cilium_b & range.mask);
    let index = range.offset + ((cilium_b - range.base) >> range.shift);
    let mut poisoned = plan.entries[index as usize];
    poisoned.info.node = u32::from_ne_bytes([1, 2, 3, 4]);
    by_block
        .observer
        .write_addr_block(index, poisoned)
        .expect("write entry");
    by_block.observer.clear_flows().expect("clear");
    run_ok(
        &by_block,
        "crossover_pod_egress",
        &ip(LEGACY_A, CILIUM_B, udp(4001, 53, b"q")).frame(),
    );
    assert_eq!(
        only_flow(&by_block.snapshot()).peer,
        Some([1, 2, 3, 4].into())
    );
}

/// A router between the nodes' subnets: no node of the cluster.
const ROUTER: [u8; 4] = [192, 168, 50, 254];

/// FRAG_NEEDED's entries: peer, overlay, hop, messages, next-hop MTU,
/// overhead, refused size.
fn frag_rows(snap: &Snapshot) -> Vec<(std::net::Ipv4Addr, &str, &str, u64, u32, u32, u32)> {
    snap.frag_needed
        .iter()
        .map(|f| {
            (
                f.peer,
                f.overlay.label(),
                f.hop.label(),
                f.messages,
                f.next_hop_mtu,
                f.overhead,
                f.refused_len,
            )
        })
        .collect()
}

/// A 1,400-byte segment between two pods: more than a 1,400-byte wire
/// takes once tunnelled.
fn large(src: [u8; 4], dst: [u8; 4]) -> packet::Ipv4 {
    ip(src, dst, tcp(33000, 80, 1, ACK | PSH, 1400))
}

#[test]
fn frag_needed_quoting_a_tunnel_packet_counts_for_its_peer_and_overlay() {
    let vxlan = |port| large(CILIUM_A, CILIUM_B).vxlan(NODE_A, NODE_B, port)[14..].to_vec();
    let geneve = large(CILIUM_A, CILIUM_B).geneve(NODE_A, NODE_B, 2)[14..].to_vec();
    let ipip = large(LEGACY_A, LEGACY_B).ipip(NODE_A, NODE_B).bytes();
    // Outer IPv4 20, UDP 8, VXLAN 8 (Geneve 8 and its 2 option words),
    // inner Ethernet 14; IP-in-IP only its outer header.
    let cases = [
        (two_node_shape(), vxlan(8473), "cilium", 50, 1490),
        (two_node_shape(), vxlan(8472), "legacy", 50, 1490),
        (two_node_shape(), geneve, "cilium", 58, 1498),
        (calico_ipip_shape(), ipip, "legacy", 20, 1460),
    ];
    for (shape, refused, overlay, overhead, refused_len) in cases {
        let h = Harness::new(&shape);
        // RFC 792's least quote (no tunnel header: Geneve's options
        // unseen), then Linux's: the latest message's figures stay.
        for quote in [28, packet::LINUX_QUOTE] {
            let message = ip(ROUTER, NODE_A, frag_needed(1400, &refused, quote)).frame();
            run_ok(&h, UNDERLAY_IN, &message);
        }
        let snap = h.snapshot();
        // The message itself is a router's, to the node: no flow of ours.
        assert_eq!(problems(&snap), vec![("not_cluster", 2)], "{overlay}");
        assert_eq!(
            frag_rows(&snap),
            vec![(
                NODE_B.into(),
                overlay,
                "wire",
                2,
                1400,
                overhead,
                refused_len
            )],
            "{overlay}"
        );
        assert_eq!(snap.frag_needed[0].fits(), Some(1400 - overhead));
    }
}

#[test]
fn frag_needed_quoting_anything_else_is_not_counted() {
    let h = Harness::new(&two_node_shape());
    let big = large(CILIUM_A, CILIUM_B);
    let elsewhere = [192, 168, 50, 77];
    let foreign: [(&str, [u8; 4], Vec<u8>); 5] = [
        (
            "node B's tunnel packet",
            NODE_A,
            big.vxlan(NODE_B, NODE_A, 8473)[14..].to_vec(),
        ),
        (
            "UDP to no overlay's port",
            NODE_A,
            ip(NODE_A, NODE_B, udp(40000, 9999, &[0; 1400])).bytes(),
        ),
        (
            "a tunnel to an address no node owns",
            NODE_A,
            big.vxlan(NODE_A, elsewhere, 8473)[14..].to_vec(),
        ),
        (
            "node-to-node TCP, on no overlay",
            NODE_A,
            ip(NODE_A, NODE_B, tcp(50000, 6443, 1, ACK, 1400)).bytes(),
        ),
        (
            "this node's packet, the message to someone else",
            elsewhere,
            big.vxlan(NODE_A, NODE_B, 8473)[14..].to_vec(),
        ),
    ];
    for (what, to, refused) in &foreign {
        let message = ip(ROUTER, *to, frag_needed(1400, refused, packet::LINUX_QUOTE)).frame();
        run_ok(&h, UNDERLAY_IN, &message);
        assert!(h.snapshot().frag_needed.is_empty(), "{what}");
    }
    // Another unreachable (host unreachable, code 1) about a tunnel
    // packet of ours is no MTU's, and going out it is not ours either.
    let mut unreachable = ip(
        ROUTER,
        NODE_A,
        frag_needed(1400, &big.vxlan(NODE_A, NODE_B, 8473)[14..], 548),
    )
    .frame();
    let out = unreachable.clone();
    unreachable[14 + 20 + 1] = 1;
    run_ok(&h, UNDERLAY_IN, &unreachable);
    run_ok(&h, UNDERLAY_OUT, &out);
    let snap = h.snapshot();
    assert!(snap.frag_needed.is_empty());
    assert_eq!(
        problems(&snap),
        vec![("frag_needed_foreign", 5), ("not_cluster", 7)]
    );
}

#[test]
fn truncated_or_garbled_frag_needed_never_fails_the_program() {
    let refused = large(CILIUM_A, CILIUM_B).vxlan(NODE_A, NODE_B, 8473)[14..].to_vec();
    let full = ip(
        ROUTER,
        NODE_A,
        frag_needed(1400, &refused, packet::LINUX_QUOTE),
    )
    .frame();
    let mut h = Harness::new(&two_node_shape());
    // Ethernet 14, IPv4 20, ICMP 8: the quote begins at 42; its IPv4
    // header and UDP header end at 70. Each cut adds to what the
    // earlier ones counted. (The kernel's test run refuses a frame cut
    // inside its IPv4 header itself.)
    let (mut counted, mut foreign) = (0, 0);
    for cut in 34..full.len() {
        run_ok(&h, UNDERLAY_IN, &full[..cut]);
        counted += u64::from(cut >= 70);
        foreign += u64::from((42..70).contains(&cut));
        let snap = h.snapshot();
        let messages = snap.frag_needed.iter().map(|f| f.messages).sum::<u64>();
        assert_eq!(messages, counted, "cut at {cut}");
        assert_eq!(
            snap.counter(Counter::FragNeededForeign),
            foreign,
            "cut at {cut}"
        );
    }
    // A garbled quote: not IPv4, a header length under 20, a total
    // length under its header, a later fragment.
    let garbles: [(usize, u8); 4] = [(42, 0x65), (42, 0x43), (44, 0), (48, 0x01)];
    for (at, byte) in garbles {
        h.reset();
        let mut bent = full.clone();
        bent[at] = byte;
        if at == 44 {
            bent[45] = 4;
        }
        run_ok(&h, UNDERLAY_IN, &bent);
        let snap = h.snapshot();
        assert!(snap.frag_needed.is_empty(), "byte {at} = {byte:#x}");
        assert_eq!(snap.counter(Counter::FragNeededForeign), 1, "byte {at}");
    }
}

#[test]
fn frag_needed_from_the_node_to_its_pod_counts_on_the_pods_path() {
    let mut h = Harness::new(&two_node_shape());
    const POD_OUT: &str = "crossover_pod_egress";
    let cilium_host_a = [10, 245, 0, 1];
    let cni0_a = [10, 244, 0, 1];
    // The node's cilium_vxlan is smaller than the pod's packet: its
    // kernel tells the pod, from cilium_host. No flow of these addresses
    // crossed the underlay: the destination's network names the overlay.
    let refused = large(CILIUM_A, CILIUM_B).bytes();
    let message = ip(
        cilium_host_a,
        CILIUM_A,
        frag_needed(1300, &refused, packet::LINUX_QUOTE),
    );
    run_ok(&h, POD_OUT, &message.frame());
    // A router's message about a routed pod's packet passes the veth
    // too: counted on the underlay, where it came in, not here again.
    let routed = large(LEGACY_A, LEGACY_B).bytes();
    let from_router = ip(ROUTER, LEGACY_A, frag_needed(1400, &routed, 548)).frame();
    run_ok(&h, UNDERLAY_IN, &from_router);
    run_ok(&h, POD_OUT, &from_router);
    let snap = h.snapshot();
    assert_eq!(
        frag_rows(&snap),
        vec![
            (NODE_B.into(), "cilium", "node", 1, 1300, 0, 1440),
            (NODE_B.into(), "native", "wire", 1, 1400, 0, 1440),
        ]
    );
    assert_eq!(snap.counter(Counter::FragNeededForeign), 1);

    // A flow that crossed the underlay natively (CrossSubnet within a
    // subnet): its own record names the overlay, not its network's.
    h.reset();
    let syn = ip(LEGACY_A, LEGACY_B, tcp(33000, 80, 0, SYN, 0)).frame();
    run_ok(&h, UNDERLAY_OUT, &syn);
    let message = ip(cni0_a, LEGACY_A, frag_needed(1300, &routed, 548)).frame();
    run_ok(&h, POD_OUT, &message);
    assert_eq!(
        frag_rows(&h.snapshot()),
        vec![(NODE_B.into(), "native", "node", 1, 1300, 0, 1440)]
    );

    // To another pod than the refused packet's sender, or about a packet
    // to a pod of this very node: not counted.
    h.reset();
    let to_other = ip(cni0_a, [10, 244, 0, 8], frag_needed(1300, &routed, 548)).frame();
    let local = large(LEGACY_A, [10, 244, 0, 8]).bytes();
    let about_local = ip(cni0_a, LEGACY_A, frag_needed(1300, &local, 548)).frame();
    run_ok(&h, POD_OUT, &to_other);
    run_ok(&h, POD_OUT, &about_local);
    let snap = h.snapshot();
    assert!(snap.frag_needed.is_empty());
    assert_eq!(snap.counter(Counter::FragNeededForeign), 2);
}
