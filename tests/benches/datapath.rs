//! ns per packet of each program, measured in the kernel with
//! BPF_PROG_TEST_RUN repeat (root), then the userspace side at 100k flows:
//! snapshot, ageing sweep and memory. Run with `cargo xtask bench`.
//! `DATAPATH_CASES=packets` runs only the per-packet programs (the first
//! table and the new-flow rows), in about two minutes.
use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions};
use crossover_tests::{
    harness::{Harness, two_node_shape},
    packet::{ACK, LINUX_QUOTE, SYN, frag_needed, ip, tcp, udp},
};
use observer::datapath::{AgeingPolicy, LoadOptions, monotonic_ns};

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
    let too_big = ip(
        [10, 244, 0, 7],
        [10, 244, 1, 5],
        tcp(33000, 80, 1, ACK, 1400),
    )
    .vxlan([192, 168, 50, 1], [192, 168, 50, 2], 8472);
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
            name: "ipip tcp, known flow",
            program: "crossover_underlay_egress",
            packet: legacy.ipip([192, 168, 50, 1], [192, 168, 50, 2]).frame(),
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
            name: "pod veth tcp, known (egress)",
            program: "crossover_pod_egress",
            packet: ip(
                [10, 244, 1, 5],
                [10, 244, 0, 7],
                tcp(80, 33000, 1, ACK, 100),
            )
            .frame(),
            fresh_flow: false,
        },
        // What an ICMP "fragmentation needed" costs, counted (its path's
        // entry exists after the first run): only ICMP pays this.
        Case {
            name: "frag-needed, vxlan quote (wire)",
            program: "crossover_underlay_ingress",
            packet: ip(
                [192, 168, 50, 254],
                [192, 168, 50, 1],
                frag_needed(1400, &too_big[14..], LINUX_QUOTE),
            )
            .frame(),
            fresh_flow: false,
        },
        Case {
            name: "frag-needed, to a pod (node)",
            program: "crossover_pod_egress",
            packet: ip(
                [10, 244, 0, 1],
                [10, 244, 0, 7],
                frag_needed(1400, &legacy.bytes(), LINUX_QUOTE),
            )
            .frame(),
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
    // Two nodes, with IP-in-IP as a second legacy overlay (Calico's) for
    // the IPIP case.
    let mut shape = two_node_shape();
    shape.networks.push(observer::shape::Network {
        role: observer::shape::Role::Legacy,
        cidrs: vec![],
        encapsulation: observer::shape::Encapsulation::Ipip,
        cross_subnet: false,
    });
    let mut harness = Harness::new(&shape);
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
    // A new flow can only be timed one run at a time (the run after it
    // finds the flow), and a single run pays fixed costs a million-fold
    // repeat spreads thin: its floor is the empty program run once, on a
    // cleared table, the same way.
    let floor_once = one_run(&mut harness, observer::datapath::FLOOR, &floor_packet, None);
    println!("crossover datapath, BPF_PROG_TEST_RUN x {REPEAT}, median of {ROUNDS} rounds");
    println!("{:<38} {:>10} {:>14}", "case", "ns/packet", "over floor");
    println!(
        "{:<38} {:>10.1} {:>14}",
        "empty TC program (floor)",
        floor.as_secs_f64() * 1e9,
        "-"
    );
    println!(
        "{:<38} {:>10.1} {:>14}",
        "empty TC program, one run (floor 1)",
        floor_once.as_secs_f64() * 1e9,
        "-"
    );
    for case in cases() {
        let per_packet = if case.fresh_flow {
            new_flow(&mut harness, case.program, &case.packet, None)
        } else {
            // As in the agent: the key gets its slot at the sample after
            // its first packet, and the flow takes it on its next.
            harness.run(case.program, &case.packet);
            harness.observer.promote_peer_slots().expect("promote");
            harness.run(case.program, &case.packet);
            median(
                (0..ROUNDS)
                    .map(|_| harness.time(case.program, &case.packet, REPEAT))
                    .collect(),
            )
        };
        let ns = per_packet.as_secs_f64() * 1e9;
        let (base, over) = match case.fresh_flow {
            true => (floor_once, " (over floor 1)"),
            false => (floor, ""),
        };
        println!(
            "{:<38} {:>10.1} {:>14.1}{over}",
            case.name,
            ns,
            ns - base.as_secs_f64() * 1e9
        );
    }
    // The empty program run once right after another run of it, on a
    // cleared table: the floor of a new flow timed after another's packet.
    let floor_after_another = one_run(
        &mut harness,
        observer::datapath::FLOOR,
        &floor_packet,
        Some(&floor_packet),
    );
    println!(
        "{:<38} {:>10.1} {:>14}",
        "empty TC program, one run after another",
        floor_after_another.as_secs_f64() * 1e9,
        "-"
    );
    new_flow_at_scale(floor_once, floor_after_another);
    new_flows_back_to_back(&mut harness);
    new_connections_on_a_busy_node();
    verifier_headroom(&harness);
    if std::env::var("DATAPATH_CASES").is_ok_and(|cases| cases == "packets") {
        return;
    }
    kernel_drops();
    let snap = harness.snapshot();
    assert_eq!(snap.counters["flow_map_full"], 0);
    hundred_thousand_flows(&mut harness);
    thousand_nodes();
}

/// What the agent's sampler reads every tick at 1,000 and 5,000 nodes,
/// every one of them a peer on both overlays both ways (4 keys a peer;
/// slots for the first 8,192): the per-peer counters and the reason
/// counters; beside it the same read at 2 nodes. And the per-peer families
/// of `/metrics` rendered from that reading, the part that grows with the
/// cluster.
fn thousand_nodes() {
    println!();
    for nodes in [2, 1000, 5000] {
        let mut harness = Harness::new(&n_node_shape(nodes));
        let refused = |h: &Harness| {
            let c = h.observer.counters().expect("counters");
            c["peer_alloc_failed"] + c["peer_map_full"]
        };
        let mut total_refused = 0;
        for i in 1..nodes {
            let peer = node_underlay(i);
            let (local_legacy, peer_legacy) = (node_pod(0, LEGACY), node_pod(i, LEGACY));
            let (local_cilium, peer_cilium) = (node_pod(0, CILIUM), node_pod(i, CILIUM));
            // PEERS is not preallocated: a tight loop of new keys can
            // empty the kernel's allocation cache (peer_alloc_failed); the
            // node's packets are sent again, after a pause, until its keys
            // are in. Shown, not hidden.
            for attempt in 0..20 {
                let before = refused(&harness);
                for (local, remote, port) in [
                    (local_legacy, peer_legacy, 8472),
                    (local_cilium, peer_cilium, 8473),
                ] {
                    let out =
                        ip(local, remote, udp(5000, 53, b"q")).vxlan([192, 168, 50, 1], peer, port);
                    harness.run("crossover_underlay_egress", &out);
                    let back =
                        ip(remote, local, udp(53, 5000, b"a")).vxlan(peer, [192, 168, 50, 1], port);
                    harness.run("crossover_underlay_ingress", &back);
                }
                let now = refused(&harness) - before;
                total_refused += now;
                if now == 0 {
                    break;
                }
                assert!(attempt < 19, "node {i}'s keys never got into PEERS");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if total_refused > 0 {
            println!(
                "  ({total_refused} new keys refused by PEERS for memory while filling {nodes} nodes, sent again)"
            );
        }
        let promoted = harness.observer.promote_peer_slots().expect("promote");
        let keys = (nodes - 1) * 4;
        assert_eq!(
            promoted,
            keys.min(observer_ebpf::DEFAULT_PEER_SLOT_CAPACITY as usize)
        );
        let samples: Vec<Duration> = (0..20)
            .map(|_| {
                timed(|| {
                    harness.observer.peers().expect("peers");
                    harness.observer.counters().expect("counters");
                })
                .1
            })
            .collect();
        println!(
            "{:<38} {:>10.2?}",
            format!("sampler's reading, {nodes} nodes, {keys} keys"),
            median(samples)
        );
        let peers = harness.observer.peers().expect("peers");
        assert_eq!(peers.len(), keys);
        if nodes > 2 {
            kept_tick(&peers, nodes);
        }
        let mut metrics = String::new();
        let name = |addr: std::net::Ipv4Addr| {
            let [_, _, c, d] = addr.octets();
            format!("node-{}", (c as usize - 50) * 250 + d as usize - 1)
        };
        observer::agent::metrics::peer_families(&mut metrics, "node-0", &peers, name);
        let series = metrics.lines().filter(|l| !l.starts_with('#')).count();
        println!(
            "{:<38} {:>7} series ({:.1} a peer), {:.0} KiB",
            format!("/metrics per-peer families, {nodes} nodes, every peer"),
            series,
            series as f64 / (nodes - 1) as f64,
            metrics.len() as f64 / 1024.0
        );
        if nodes > observer::agent::metrics::PEER_DETAIL_NODES {
            // The default past 100 nodes: the node under migration's own
            // series, every other peer summed.
            let mut metrics = String::new();
            let focus = |addr| {
                let n = name(addr);
                if n == "node-1" {
                    n
                } else {
                    observer::loss::CLUSTER.to_owned()
                }
            };
            observer::agent::metrics::peer_families(&mut metrics, "node-0", &peers, focus);
            let series = metrics.lines().filter(|l| !l.starts_with('#')).count();
            println!(
                "{:<38} {:>7} series, {:.0} KiB",
                format!("  default: node-1 under migration, rest summed"),
                series,
                metrics.len() as f64 / 1024.0
            );
        }
    }
}

/// What the sampler adds to each tick with `--pin-path`: keeping the tick
/// (both reads) beside the counters; and what a restarted agent spends
/// reading a whole ring of such ticks back (13 slots: the default 10 s
/// window at 1 s).
fn kept_tick(peers: &[observer::datapath::PeerRecord], nodes: usize) {
    use observer::loss::{kept, ring::Tick};
    let pins = crossover_tests::pins::TestPins::new();
    let pinned = observer::datapath::Observer::load(observer::datapath::LoadOptions {
        pin_path: Some(pins.path.clone()),
        ..Default::default()
    })
    .expect("pinned load");
    let options = pinned.options();
    let max =
        kept::Keeper::max_bytes((options.peer_capacity + options.peer_slot_capacity) as usize);
    let slots = 13;
    let (pages, found) = pinned
        .pinned_pages(kept::MAP, slots, max)
        .expect("pages")
        .expect("pinned");
    let basis = kept::Basis {
        interval_ms: 1000,
        guard_ms: 20,
        counters: pinned.counter_ids().expect("ids"),
    };
    let mut keeper = kept::Keeper::new(pages, basis);
    let now = observer::loss::ring::unix_ms(std::time::SystemTime::now()) / 1000;
    let tick = |k: u64| {
        Tick::new(
            k,
            (k * 1000, peers.to_vec()),
            (k * 1000 + 20, peers.to_vec()),
        )
    };
    let samples: Vec<Duration> = (0..20)
        .map(|i| {
            let t = tick(now - 19 + i);
            timed(|| keeper.keep(&t, &[]).expect("keep")).1
        })
        .collect();
    println!(
        "{:<38} {:>10.2?}  ({} KiB a tick)",
        format!("  keeping it (--pin-path), {nodes} nodes"),
        median(samples),
        kept::encode(&tick(now), &[], &basis).len() / 1024
    );
    let ((ticks, _, _), took) = timed(|| keeper.adopt(found, now, 13).expect("adopt"));
    assert_eq!(ticks.len(), 13);
    println!(
        "{:<38} {:>10.2?}",
        format!("  a restart reading 13 back, {nodes} nodes"),
        took
    );
}

/// Second octets where [`n_node_shape`]'s legacy and Cilium ranges start.
const LEGACY: u8 = 64;
const CILIUM: u8 = 128;

/// Node `i`'s underlay address in [`n_node_shape`].
fn node_underlay(i: usize) -> [u8; 4] {
    [192, 168, 50 + (i / 250) as u8, (i % 250) as u8 + 1]
}

/// A pod (.7) in node `i`'s /24 of the range starting at `10.{first}`
/// ([`LEGACY`] or [`CILIUM`]) in [`n_node_shape`].
fn node_pod(i: usize, first: u8) -> [u8; 4] {
    [10, first + (i / 256) as u8, (i % 256) as u8, 7]
}

/// `nodes` nodes, each with a legacy and a Cilium /24 of 10.0.0.0/8.
fn n_node_shape(nodes: usize) -> observer::shape::ClusterShape {
    use observer::shape::{ClusterShape, Encapsulation, Network, Node, NodePodCidr, Role};
    let block = |i: usize, first: u8| {
        let [a, b, c, _] = node_pod(i, first);
        format!("{a}.{b}.{c}.0/24").parse().unwrap()
    };
    let node = |i: usize| Node {
        name: format!("node-{i}"),
        underlay: node_underlay(i).into(),
        overlay_addrs: vec![],
        pod_cidrs: vec![
            NodePodCidr {
                role: Role::Legacy,
                cidr: block(i, LEGACY),
            },
            NodePodCidr {
                role: Role::Cilium,
                cidr: block(i, CILIUM),
            },
        ],
    };
    let network = |role, cidr: &str, port| Network {
        role,
        cidrs: vec![cidr.parse().unwrap()],
        encapsulation: Encapsulation::Vxlan { port },
        cross_subnet: false,
    };
    ClusterShape {
        local_node: Some("node-0".into()),
        networks: vec![
            network(Role::Legacy, "10.64.0.0/10", 8472),
            network(Role::Cilium, "10.128.0.0/10", 8473),
        ],
        nodes: (0..nodes).map(node).collect(),
        ..ClusterShape::migration_defaults()
    }
}

/// One run = one packet into an empty flow table: every run pays for
/// classification and the insert. The flow's peer key has its slot, as
/// any key has a sample after its first packet. With `before`, each run
/// follows one packet of another flow ([`one_run`]).
fn new_flow(
    harness: &mut Harness,
    program: &str,
    packet: &[u8],
    before: Option<&[u8]>,
) -> Duration {
    harness.run(program, packet);
    harness.observer.promote_peer_slots().expect("promote");
    one_run(harness, program, packet, before)
}

/// `packet` through `program` one run at a time, each on a table just
/// cleared, the median of 2,000. With `before`, one untimed run of that
/// packet first: the program, its maps' hot lines and a peer's slot warm
/// again after the clearing (see [`new_flow_at_scale`]).
fn one_run(harness: &mut Harness, program: &str, packet: &[u8], before: Option<&[u8]>) -> Duration {
    median(
        (0..2000)
            .map(|_| {
                harness.observer.clear_flows().expect("clear flows");
                if let Some(before) = before {
                    harness.run(program, before);
                }
                harness.time(program, packet, 1)
            })
            .collect(),
    )
}

/// The same new flow at 2 and at 1,000 nodes (3,000 prefixes, a deeper
/// trie), towards node 1 and node 500: with the pod ranges classified by
/// block (the default) and, as the baseline in the same run, by the LPM
/// trie alone (`--addr-block-capacity 0`). And a known flow timed the same
/// way, one run at a time: what of a one-run figure is the program's own
/// cold start rather than the new flow. And the new flow right after
/// another flow's packet, over the empty program run right after another
/// run: clearing FLOWS lists its 131,072 buckets (2 MB) before every one
/// run, which leaves every cache the program reads cold; after one packet
/// of another flow only the new flow's bucket and element are, as on a
/// node that is passing traffic.
fn new_flow_at_scale(floor_once: Duration, floor_after_another: Duration) {
    let packet = |peer: [u8; 4], dst: [u8; 4], port: u16| {
        ip([10, 64, 0, 7], dst, tcp(port, 80, 1, ACK, 100)).vxlan([192, 168, 50, 1], peer, 8472)
    };
    let at = |nodes: usize, peer: [u8; 4], dst: [u8; 4]| {
        (
            n_node_shape(nodes),
            packet(peer, dst, 33000),
            packet(peer, dst, 33001),
        )
    };
    let print = |name: String, per_packet: Duration| {
        let ns = per_packet.as_secs_f64() * 1e9;
        println!(
            "{:<38} {:>10.1} {:>14.1} (over floor 1)",
            name,
            ns,
            ns - floor_once.as_secs_f64() * 1e9
        );
    };
    for (nodes, (shape, packet, another)) in [
        (2, at(2, [192, 168, 50, 2], [10, 64, 1, 7])),
        (1000, at(1000, [192, 168, 52, 1], [10, 65, 244, 7])),
    ] {
        for (how, capacity) in [
            ("", observer_ebpf::DEFAULT_ADDR_BLOCK_CAPACITY),
            (", trie only", 0),
        ] {
            let mut harness = Harness::with_options(
                &shape,
                LoadOptions {
                    addr_block_capacity: capacity,
                    ..LoadOptions::default()
                },
            );
            let program = "crossover_underlay_egress";
            print(
                format!("new flow, {nodes} nodes{how}"),
                new_flow(&mut harness, program, &packet, None),
            );
            if capacity != 0 {
                let ns =
                    new_flow(&mut harness, program, &packet, Some(&another)).as_secs_f64() * 1e9;
                println!(
                    "{:<38} {:>10.1} {:>14.1} (over floor 1 after another run)",
                    format!("new flow after another, {nodes} nodes"),
                    ns,
                    ns - floor_after_another.as_secs_f64() * 1e9
                );
                harness.observer.promote_peer_slots().expect("promote");
                print(
                    format!("known flow, one run, {nodes} nodes"),
                    median(
                        (0..2000)
                            .map(|_| harness.time(program, &packet, 1))
                            .collect(),
                    ),
                );
            }
        }
    }
}

/// New flows as a busy node meets them: distinct packets one after the
/// other (a new 5-tuple each), the program and the table warm, against
/// the empty program run on the same packets the same way. One run per
/// packet either way, so the syscall's fixed cost is in both.
fn new_flows_back_to_back(harness: &mut Harness) {
    const PACKETS: u16 = 4000;
    let packets: Vec<Vec<u8>> = (0..PACKETS)
        .map(|n| {
            ip(
                [10, 244, 0, 7],
                [10, 244, 1, 5],
                tcp(20_000 + n, 80, 1, ACK, 100),
            )
            .vxlan([192, 168, 50, 1], [192, 168, 50, 2], 8472)
        })
        .collect();
    let each = |harness: &Harness, program: &str| {
        median(
            packets
                .iter()
                .map(|p| harness.time(program, p, 1))
                .collect(),
        )
    };
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        harness.observer.clear_flows().expect("clear flows");
        let floor = each(harness, observer::datapath::FLOOR);
        let fresh = each(harness, "crossover_underlay_egress");
        rounds.push((floor, fresh));
    }
    let floor = median(rounds.iter().map(|r| r.0).collect());
    let fresh = median(rounds.iter().map(|r| r.1).collect());
    print_over_its_floor("vxlan tcp, new flows back to back", (floor, fresh));
}

/// Flows in the table of [`new_connections_on_a_busy_node`] before it
/// times anything: the scale bench's 100k, spread over the peers.
const BUSY_FLOWS: usize = 100_000;
/// New flows timed per round and kind there: the SYNs, the ACKs and the
/// flows of their answers, five rounds, stay under FLOWS's 131,072.
const BUSY_NEW: u16 = 1_500;
/// Flows in flight while they are timed: each flow's first packet is
/// answered this many flows later (untimed), so HANDSHAKES holds a few
/// entries and reuses elements answers freed, as on a node whose peers
/// answer.
const IN_FLIGHT: usize = 8;

/// New flows as they meet a busy node of the scale bench's shape: 1,000
/// nodes, FLOWS already holding 100k flows across the peers (their
/// buckets' chains walked, the peers' slots taken), each new flow towards
/// another peer and pod in turn, so neither its bucket, its element nor
/// its peer's entries were just touched. Nothing is cleared between runs:
/// each packet is a new 5-tuple. A connection's first packet (a SYN: FLOWS
/// and HANDSHAKES both insert, the tracker's function runs) and a flow
/// first seen mid-stream (an ACK), each answered by the peer a few flows
/// later (a SYN-ACK, an ACK; untimed: both rows pay alike for the
/// answer's run between theirs), each over the empty program run once on
/// the same packets the same way.
fn new_connections_on_a_busy_node() {
    const NODES: usize = 1000;
    let mut harness = Harness::new(&n_node_shape(NODES));
    harness.observer.load_floor().expect("floor program");
    let (egress, ingress) = ("crossover_underlay_egress", "crossover_underlay_ingress");
    let local = node_underlay(0);
    let out = |src: [u8; 4], i: usize, port: u16, flags: u8| {
        ip(src, node_pod(i, LEGACY), tcp(port, 80, 1, flags, 100)).vxlan(
            local,
            node_underlay(i),
            8472,
        )
    };
    let back = |src: [u8; 4], i: usize, port: u16, flags: u8| {
        ip(node_pod(i, LEGACY), src, tcp(80, port, 1, flags, 0)).vxlan(
            node_underlay(i),
            local,
            8472,
        )
    };
    for n in 0..BUSY_FLOWS {
        let i = 1 + n % (NODES - 1);
        harness.run(
            egress,
            &out([10, 64, 0, 5], i, 10_000 + (n / (NODES - 1)) as u16, ACK),
        );
    }
    harness.observer.promote_peer_slots().expect("promote");
    // Each flow's first packet, and the answer that comes back for it.
    let timed = |src: [u8; 4], flags: u8, answer: u8| {
        let rounds: Vec<(Duration, Duration)> = (0..ROUNDS as u16)
            .map(|round| {
                // Peers in a stride that visits each before any twice.
                let flows: Vec<(Vec<u8>, Vec<u8>)> = (0..BUSY_NEW)
                    .map(|k| {
                        let i = 1 + (usize::from(k) * 367) % (NODES - 1);
                        let port = 20_000 + round * BUSY_NEW + k;
                        (out(src, i, port, flags), back(src, i, port, answer))
                    })
                    .collect();
                let each = |first: &str, then: &str| {
                    let mut took = Vec::with_capacity(flows.len());
                    for (k, (packet, _)) in flows.iter().enumerate() {
                        took.push(harness.time(first, packet, 1));
                        if let Some((_, answer)) = k.checked_sub(IN_FLIGHT).map(|a| &flows[a]) {
                            harness.run(then, answer);
                        }
                    }
                    for (_, answer) in &flows[flows.len() - IN_FLIGHT..] {
                        harness.run(then, answer);
                    }
                    median(took)
                };
                let floor = each(observer::datapath::FLOOR, observer::datapath::FLOOR);
                (floor, each(egress, ingress))
            })
            .collect();
        let floor = median(rounds.iter().map(|r| r.0).collect());
        let fresh = median(rounds.iter().map(|r| r.1).collect());
        (floor, fresh)
    };
    let syns = timed([10, 64, 0, 8], SYN, SYN | ACK);
    let acks = timed([10, 64, 0, 9], ACK, ACK);
    let counters = harness.observer.counters().expect("counters");
    assert_eq!(counters["flow_map_full"], 0, "FLOWS refused a new flow");
    assert_eq!(
        counters["handshake_map_full"], 0,
        "HANDSHAKES refused a SYN"
    );
    let answered: u64 = harness
        .snapshot()
        .peers
        .iter()
        .map(|p| p.counts.handshakes_answered)
        .sum();
    assert_eq!(
        answered,
        ROUNDS as u64 * u64::from(BUSY_NEW),
        "every SYN answered"
    );
    print_over_its_floor("new connection (syn), busy node", syns);
    print_over_its_floor("new flow (ack), busy node", acks);
}

/// A row timed one run at a time beside the empty program run alike:
/// `(floor, fresh)`.
fn print_over_its_floor(name: &str, (floor, fresh): (Duration, Duration)) {
    println!(
        "{:<38} {:>10.1} {:>14.1} (over its floor, {:.0})",
        name,
        fresh.as_secs_f64() * 1e9,
        (fresh.as_secs_f64() - floor.as_secs_f64()) * 1e9,
        floor.as_secs_f64() * 1e9
    );
}

/// The kernel verifier's limit on instructions it walks to load one
/// program (`BPF_COMPLEXITY_LIMIT_INSNS`).
const VERIFIER_LIMIT: u32 = 1_000_000;

/// How much of the verifier's budget each program of the harness's load
/// took (`verified_insns`, kernel 5.16+): the underlay programs walk every
/// combination of tunnel, flow and handshake paths, and a program past
/// the limit does not load at all. A change that moves these is a change
/// in how close the datapath is to that edge.
fn verifier_headroom(harness: &Harness) {
    println!();
    println!(
        "{:<38} {:>10} {:>14}",
        "program", "verified", "of the limit"
    );
    for hook in observer::datapath::Hook::ALL {
        for name in hook.all_programs() {
            let info = harness
                .observer
                .program(name)
                .expect("loaded program")
                .info()
                .expect("program info");
            let Some(walked) = info.verified_instruction_count() else {
                println!("{name:<38} {:>10}", "unknown");
                continue;
            };
            println!(
                "{name:<38} {walked:>10} {:>13.1}%",
                f64::from(walked) * 100.0 / f64::from(VERIFIER_LIMIT)
            );
        }
    }
}

const FLOWS: u32 = 100_000;

/// Resident set of this process, kB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

/// FLOWS filled with 100k flows through the real program, then what the
/// agent pays to read and to age them.
fn hundred_thousand_flows(harness: &mut Harness) {
    harness.observer.clear_flows().expect("clear flows");
    let (_, fill) = timed(|| {
        for n in 0..FLOWS {
            // 100k distinct TCP connections from pod 10.244.0.x.
            let src = [10, 244, 0, 7 + (n / 50_000) as u8];
            let port = 10_000 + (n % 50_000) as u16;
            let packet = ip(src, [10, 244, 1, 5], tcp(port, 80, 1, ACK, 100)).frame();
            harness.run("crossover_pod_ingress", &packet);
        }
    });
    println!();
    println!("{FLOWS} flows in FLOWS (filled through crossover_pod_ingress in {fill:.2?})");
    let rss_before = rss_kb();
    let (snap, batched) = timed(|| harness.snapshot());
    assert_eq!(snap.flows.len(), FLOWS as usize);
    assert_eq!(snap.counters["flow_map_full"], 0);
    let rss_holding = rss_kb();
    drop(snap);
    let (n, by_key) = timed(|| harness.observer.read_flows_raw(false).unwrap());
    assert_eq!(n, FLOWS as usize);
    let (n, raw_batched) = timed(|| harness.observer.read_flows_raw(true).unwrap());
    assert_eq!(n, FLOWS as usize);
    let (snap, again) = timed(|| harness.snapshot());
    drop(snap);
    println!(
        "{:<38} {:>10.1?}",
        "snapshot (decoded, sorted)",
        batched.min(again)
    );
    println!("{:<38} {:>10.1?}", "FLOWS raw read, batched", raw_batched);
    println!("{:<38} {:>10.1?}", "FLOWS raw read, key by key", by_key);
    println!(
        "{:<38} {:>7} kB (RSS {} -> {} kB)",
        "RSS growth holding the snapshot",
        rss_holding.saturating_sub(rss_before),
        rss_before,
        rss_holding
    );
    let policy = AgeingPolicy::default();
    let now = monotonic_ns();
    let (idle, nothing) = timed(|| harness.observer.age_flows(now, &policy, &[]).unwrap());
    assert_eq!(idle.flows, 0);
    println!("{:<38} {:>10.1?}", "ageing sweep, nothing idle", nothing);
    let (aged, all) = timed(|| {
        harness
            .observer
            .age_flows(now + 3_600_000_000_000, &policy, &[])
            .unwrap()
    });
    assert_eq!(aged.flows, FLOWS as u64);
    println!("{:<38} {:>10.1?}", "ageing sweep, all 100k aged", all);
    println!("{:<38} {:>7} kB", "RSS after the sweeps", rss_kb());
}

/// Drops the skb:kfree_skb program counts: this many sends, each dropped
/// in node A's output chain.
const DROPS: u64 = 100_000;

/// The drop program's cost per drop, from the kernel's own program
/// statistics (run time and count, `BPF_ENABLE_STATS`), beside an empty
/// program on the same tracepoint in the same run: a tracepoint cannot be
/// test-run, so real drops are made (netfilter, in a namespace).
fn kernel_drops() {
    use crossover_tests::{
        counting::observer_in,
        netns::{TwoNodes, in_netns},
    };
    use observer::datapath::{AttachMode, DROP_PROGRAMS};
    let nodes = TwoNodes::with_prefix("bdrop");
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Auto);
    a.enable_drops().expect("drop program");
    a.attach_drop_floor().expect("floor program");
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    nodes.a.drop_every("output", "udp dport 7777", 1);
    // The kernel keeps 15 bytes of a program's name; the newest program of
    // that name is this run's.
    let stats = || -> Vec<(u64, u64)> {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "prog", "show"])
            .output()
            .expect("bpftool");
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
        DROP_PROGRAMS
            .iter()
            .map(|name| {
                let v = all
                    .iter()
                    .filter(|p| p["name"].as_str().is_some_and(|n| name.starts_with(n)))
                    .max_by_key(|p| p["id"].as_u64())
                    .unwrap_or_else(|| panic!("no program {name} loaded"));
                (
                    v["run_time_ns"].as_u64().unwrap_or(0),
                    v["run_cnt"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let before = stats();
    in_netns(&nodes.a.name, || {
        let socket = std::net::UdpSocket::bind("10.244.0.0:0").expect("bind");
        for i in 0..DROPS {
            let _ = socket.send_to(&i.to_be_bytes(), "10.244.1.0:7777");
        }
    });
    let after = stats();
    let per_drop = |i: usize| {
        let runs = after[i].1 - before[i].1;
        assert!(
            runs >= DROPS,
            "{} ran {runs} times for {DROPS} drops",
            DROP_PROGRAMS[i]
        );
        (after[i].0 - before[i].0) as f64 / runs as f64
    };
    let (program, floor) = (per_drop(0), per_drop(1));
    let counted: u64 = a.drops().expect("drops").iter().map(|d| d.packets).sum();
    assert!(counted >= DROPS, "{counted} of {DROPS} drops counted");
    println!();
    println!(
        "skb:kfree_skb, {DROPS} netfilter drops of cluster traffic (kernel run-time statistics)"
    );
    println!("{:<38} {:>10} {:>14}", "case", "ns/drop", "over floor");
    println!(
        "{:<38} {:>10.1} {:>14}",
        "empty tracepoint program (floor)", floor, "-"
    );
    println!(
        "{:<38} {:>10.1} {:>14.1}",
        "drop program, host pair, no tunnel",
        program,
        program - floor
    );
}
