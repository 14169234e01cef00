//! Flow ageing against the real programs (root, BPF_PROG_TEST_RUN): a full
//! flow table refuses new flows and counts every refusal; ageing deletes
//! idle connections by protocol and state, admits new flows again, and
//! keeps the deleted counts in the retired totals so sums never go back.
use crossover_tests::{
    harness::{Harness, two_node_shape},
    packet::{ACK, ip, tcp, udp},
};
use observer::datapath::{AgeingPolicy, LoadOptions, Snapshot, monotonic_ns};

const CAPACITY: u32 = 1024;
const FIN: u8 = 0x01;
const S: u64 = 1_000_000_000;

/// A pod veth packet of TCP connection `n` (one flow per n).
fn tcp_packet(n: u32, flags: u8) -> Vec<u8> {
    let port = 10_000 + n as u16;
    ip(
        [10, 244, 0, 7],
        [10, 244, 1, 5],
        tcp(port, 80, 1, flags, 100),
    )
    .frame()
}

fn udp_packet(n: u32) -> Vec<u8> {
    ip(
        [10, 244, 0, 7],
        [10, 244, 1, 5],
        udp(20_000 + n as u16, 53, &[0; 8]),
    )
    .frame()
}

/// TCP segments: live flows plus retired connections.
fn segments(snap: &Snapshot) -> (u64, u64) {
    let live = snap.flows.iter().map(|f| f.segments).sum();
    let retired = snap.retired.groups.iter().map(|g| g.totals.segments).sum();
    (live, retired)
}

#[test]
fn a_full_table_counts_refusals_and_ageing_admits_new_flows() {
    let mut h = Harness::with_options(
        &two_node_shape(),
        LoadOptions {
            flow_capacity: CAPACITY,
            ..LoadOptions::default()
        },
    );
    let pod = "crossover_pod_ingress";
    for n in 0..CAPACITY {
        h.run(pod, &tcp_packet(n, ACK));
    }
    let full = h.snapshot();
    assert_eq!(full.flows.len(), CAPACITY as usize);
    assert_eq!(full.counter(observer_ebpf::Counter::FlowMapFull), 0);
    for n in CAPACITY..CAPACITY + 10 {
        h.run(pod, &tcp_packet(n, ACK));
    }
    let refused = h.snapshot();
    assert_eq!(refused.flows.len(), CAPACITY as usize);
    assert_eq!(
        refused.counters["flow_map_full"], 10,
        "every refusal counted"
    );
    assert_eq!(segments(&refused), (CAPACITY as u64, 0));

    let policy = AgeingPolicy::default();
    let now = monotonic_ns();
    let none = h.observer.age_flows(now, &policy, &[]).unwrap();
    assert_eq!(none.flows, 0, "nothing is idle yet");
    // Ten minutes and a second later, every established connection is idle.
    let all = h.observer.age_flows(now + 601 * S, &policy, &[]).unwrap();
    assert_eq!(
        (all.flows, all.connections),
        (CAPACITY as u64, CAPACITY as u64)
    );
    let aged = h.snapshot();
    assert!(aged.flows.is_empty());
    assert_eq!(aged.retired.flows, CAPACITY as u64);
    assert_eq!(
        segments(&aged),
        (0, CAPACITY as u64),
        "nothing went backwards"
    );

    // Room again: new flows are admitted, none refused.
    for n in 0..10 {
        h.run(pod, &tcp_packet(5000 + n, ACK));
    }
    let admitted = h.snapshot();
    assert_eq!(admitted.flows.len(), 10);
    assert_eq!(admitted.counters["flow_map_full"], 10);
    assert_eq!(segments(&admitted), (10, CAPACITY as u64));
    h.reset();
}

#[test]
fn closed_tcp_and_udp_age_sooner_than_established_tcp() {
    let mut h = Harness::with_options(&two_node_shape(), LoadOptions::default());
    let pod = "crossover_pod_ingress";
    h.run(pod, &tcp_packet(1, ACK));
    h.run(pod, &tcp_packet(2, ACK));
    h.run(pod, &tcp_packet(2, FIN | ACK));
    h.run(pod, &udp_packet(3));
    let policy = AgeingPolicy::default();
    let now = monotonic_ns();
    let ports = |h: &Harness| -> Vec<u16> {
        let mut p: Vec<u16> = h.snapshot().flows.iter().map(|f| f.src_port).collect();
        p.sort();
        p
    };
    let closed = h.observer.age_flows(now + 31 * S, &policy, &[]).unwrap();
    assert_eq!(closed.flows, 1, "the connection that sent a FIN");
    assert_eq!(ports(&h), [10_001, 20_003]);
    let udp = h.observer.age_flows(now + 121 * S, &policy, &[]).unwrap();
    assert_eq!(udp.flows, 1);
    assert_eq!(ports(&h), [10_001]);
    let tcp = h.observer.age_flows(now + 601 * S, &policy, &[]).unwrap();
    assert_eq!(tcp.flows, 1);
    assert!(ports(&h).is_empty());
    let retired = &h.snapshot().retired;
    assert_eq!((retired.flows, retired.sweeps), (3, 3));
    // The closed connection's FIN segment and first segment: 2; the open one 1.
    let tcp_segments: u64 = retired
        .groups
        .iter()
        .filter(|g| g.proto == 6)
        .map(|g| g.totals.segments)
        .sum();
    assert_eq!(tcp_segments, 3);
    h.reset();
}
