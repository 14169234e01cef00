//! ns per packet of each program, measured in the kernel with
//! BPF_PROG_TEST_RUN repeat (root). Run with `cargo xtask bench`.
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use crossover_tests::{
    harness::{Harness, two_node_shape},
    packet::{ACK, ip, tcp, udp},
};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

struct Case {
    name: &'static str,
    program: &'static str,
    packet: Vec<u8>,
    /// Packets with a fresh 5-tuple each round trip through "first packet
    /// of a new flow"; the harness clears the flow table between runs.
    fresh_flow: bool,
}

fn cases() -> Vec<Case> {
    let legacy = ip(
        [10, 244, 0, 7],
        [10, 244, 1, 5],
        tcp(33000, 80, 1, ACK, 100),
    );
    vec![
        Case {
            name: "vxlan tcp, known flow",
            program: "crossover_underlay_egress",
            packet: legacy.vxlan([192, 168, 50, 1], [192, 168, 50, 2], 8472),
            fresh_flow: false,
        },
        Case {
            name: "vxlan tcp, new flow",
            program: "crossover_underlay_egress",
            packet: legacy.vxlan([192, 168, 50, 1], [192, 168, 50, 2], 8472),
            fresh_flow: true,
        },
        Case {
            name: "geneve (2 option words) udp, known",
            program: "crossover_underlay_ingress",
            packet: ip([10, 245, 1, 3], [10, 245, 0, 9], udp(5000, 53, &[0; 64])).geneve(
                [192, 168, 50, 2],
                [192, 168, 50, 1],
                2,
            ),
            fresh_flow: false,
        },
        Case {
            name: "native pod tcp, known (peer w/o slot)",
            program: "crossover_underlay_ingress",
            packet: ip(
                [10, 244, 1, 5],
                [10, 244, 0, 7],
                tcp(41000, 8080, 1, ACK, 100),
            )
            .frame(),
            fresh_flow: false,
        },
        Case {
            name: "pod veth tcp, known",
            program: "crossover_pod_ingress",
            packet: legacy.frame(),
            fresh_flow: false,
        },
        Case {
            name: "non-ip (arp)",
            program: "crossover_underlay_ingress",
            packet: crossover_tests::packet::ethernet(0x0806, &[0; 28]),
            fresh_flow: false,
        },
    ]
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let mut harness = Harness::new(&two_node_shape());
    let floor_packet = cases()[0].packet.clone();
    let floor = {
        let program = harness.observer.load_floor().expect("floor program");
        median(
            (0..ROUNDS)
                .map(|_| {
                    program
                        .test_run(TestRunOptions {
                            data_in: Some(&floor_packet),
                            repeat: REPEAT,
                            ..Default::default()
                        })
                        .expect("test run")
                        .duration
                })
                .collect(),
        )
    };
    println!("crossover datapath, BPF_PROG_TEST_RUN x {REPEAT}, median of {ROUNDS} rounds");
    println!("{:<38} {:>10} {:>14}", "case", "ns/packet", "over floor");
    println!(
        "{:<38} {:>10.1} {:>14}",
        "empty TC program (floor)",
        floor.as_secs_f64() * 1e9,
        "-"
    );
    for case in cases() {
        let per_packet = if case.fresh_flow {
            // One run = one packet into an empty flow table: every run pays
            // for classification and the insert.
            let samples = (0..2000)
                .map(|_| {
                    harness.observer.clear_flows().expect("clear flows");
                    harness.time(case.program, &case.packet, 1)
                })
                .collect();
            median(samples)
        } else {
            median(
                (0..ROUNDS)
                    .map(|_| harness.time(case.program, &case.packet, REPEAT))
                    .collect(),
            )
        };
        let ns = per_packet.as_secs_f64() * 1e9;
        println!(
            "{:<38} {:>10.1} {:>14.1}",
            case.name,
            ns,
            ns - floor.as_secs_f64() * 1e9
        );
    }
    let snap = harness.snapshot();
    assert_eq!(snap.counters["flow_map_full"], 0);
}
