//! Restarting with a pin directory (root): the maps and TCX links outlive
//! the Observer, a new one swaps its programs into the links, and across
//! the restart every packet is counted exactly once. Maps that no longer
//! fit are recreated and reported; uninstall leaves nothing behind.
use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{JoinHandle, sleep, spawn},
    time::{Duration, Instant},
};

use aya::{
    maps::MapInfo,
    programs::{SchedClassifier, TcAttachType},
};
use crossover_tests::{
    harness::{Harness, two_node_shape},
    netns::{Netns, TwoNodes, in_netns, sh},
    packet::{self, ACK, ip, tcp},
    pins::TestPins,
};
use observer::{
    datapath::{Hook, LoadOptions, Observer, Snapshot},
    shape::{ClusterShape, Node, NodePodCidr, Role},
};
use observer_ebpf::map;

fn load(ns: &Netns, pins: &TestPins, options: LoadOptions) -> Observer {
    let mut shape = two_node_shape();
    shape.local_node = Some("node-a".into());
    let mut observer = Observer::load(LoadOptions {
        netns: Some(ns.name.clone()),
        pin_path: Some(pins.path.clone()),
        ..options
    })
    .expect("load");
    observer.configure(&shape).expect("configure");
    observer.attach("u0", Hook::Underlay).expect("attach u0");
    observer
        .attach("flannel.1", Hook::OverlayLegacy)
        .expect("attach flannel.1");
    observer
}

/// Ids of the TCX programs on `iface`, both directions.
fn tcx_ids(ns: &Netns, iface: &'static str) -> Vec<u32> {
    in_netns(&ns.name, move || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(|t| {
                SchedClassifier::query_tcx(iface, t)
                    .map(|(_, p)| p.iter().map(|p| p.id()).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect()
    })
}

/// UDP datagrams from A's flannel.1 address to B's, paced at about 4000
/// per second until stopped; both ends count.
struct Stream {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<u64>,
    receiver: JoinHandle<u64>,
}

impl Stream {
    fn start(nodes: &TwoNodes) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = in_netns(&nodes.b.name, || {
            UdpSocket::bind("10.244.1.0:7777").expect("bind")
        });
        receiver
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let stopped = stop.clone();
        let receiver = spawn(move || {
            let mut buf = [0u8; 64];
            let mut got = 0;
            loop {
                match receiver.recv(&mut buf) {
                    Ok(_) => got += 1,
                    Err(_) if stopped.load(Ordering::Relaxed) => return got,
                    Err(_) => {}
                }
            }
        });
        let stopped = stop.clone();
        let ns = nodes.a.name.clone();
        let sender = spawn(move || {
            let _ns = observer::netns::enter(&ns).expect("enter netns");
            let socket = UdpSocket::bind("10.244.0.0:0").expect("bind");
            let mut sent = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                socket
                    .send_to(&sent.to_be_bytes(), "10.244.1.0:7777")
                    .expect("send");
                sent += 1;
                sleep(Duration::from_micros(250));
            }
            sent
        });
        Stream {
            stop,
            sender,
            receiver,
        }
    }

    /// (sent, received)
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        (self.sender.join().unwrap(), self.receiver.join().unwrap())
    }
}

/// The three counts of the stream on node A: underlay egress flow, overlay
/// egress flow, and packets sent to B on the legacy overlay.
fn counts(snap: &Snapshot) -> [u64; 3] {
    let flow = |point: &str| {
        snap.flows
            .iter()
            .find(|f| {
                f.dst_port == 7777 && f.point.label() == point && f.direction.label() == "egress"
            })
            .map_or(0, |f| f.packets)
    };
    let peer = snap
        .peers
        .iter()
        .find(|p| {
            p.overlay == observer_ebpf::Overlay::Legacy
                && p.direction == observer_ebpf::Direction::Egress
        })
        .map_or(0, |p| p.counts.packets);
    [flow("underlay"), flow("overlay"), peer]
}

#[test]
fn restart_mid_traffic_counts_every_packet_exactly_once() {
    let nodes = TwoNodes::with_prefix("pin");
    let pins = TestPins::new();
    let first = load(&nodes.a, &pins, LoadOptions::default());
    let report = first.pin_report().expect("pinning").clone();
    // Every map but the process's own SLOT_CACHE and DROP_CONFIG:
    // FRAG_NEEDED's messages outlive a restart like the drops.
    assert_eq!(report.created.len(), 12, "{report:?}");
    let before = tcx_ids(&nodes.a, "u0");
    assert_eq!(before.len(), 2);

    let stream = Stream::start(&nodes);
    let mut samples = Vec::new();
    for _ in 0..8 {
        sleep(Duration::from_millis(50));
        samples.push(counts(&first.snapshot().unwrap()));
    }
    assert!(
        samples.last().unwrap()[0] > 100,
        "traffic flows: {samples:?}"
    );
    drop(first);
    // No process holds the programs now: they count on through the
    // pinned links, into the pinned maps.
    assert_eq!(tcx_ids(&nodes.a, "u0"), before, "left attached");
    sleep(Duration::from_millis(300));

    let second = load(&nodes.a, &pins, LoadOptions::default());
    let report = second.pin_report().unwrap();
    assert_eq!(report.reused.len(), 12, "{report:?}");
    assert!(report.created.is_empty() && report.recreated.is_empty());
    let mut adopted = report.links_adopted.clone();
    adopted.sort();
    assert_eq!(
        adopted,
        [
            "flannel.1/overlay-legacy-egress",
            "flannel.1/overlay-legacy-ingress",
            "u0/underlay-egress",
            "u0/underlay-ingress"
        ]
    );
    let after = tcx_ids(&nodes.a, "u0");
    assert_eq!(after.len(), 2, "swapped in place, not added: {after:?}");
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "the new process's programs run: {before:?} -> {after:?}"
    );
    for _ in 0..8 {
        sleep(Duration::from_millis(50));
        samples.push(counts(&second.snapshot().unwrap()));
    }
    let (sent, received) = stream.stop();
    sleep(Duration::from_millis(50));
    let last = counts(&second.snapshot().unwrap());
    samples.push(last);

    for pair in samples.windows(2) {
        let forward = pair[0].iter().zip(&pair[1]).all(|(a, b)| a <= b);
        assert!(forward, "went backwards: {samples:?}");
    }
    assert_eq!(received, sent, "the lab itself lost nothing");
    assert_eq!(
        last, [sent; 3],
        "sent {sent}; counted before, during and after the restart: {samples:?}"
    );
}

/// A connection opened while no agent runs has its handshake tracked by
/// the programs left attached (the tracker a global function they carry,
/// its pending entries and counters in pinned maps), and the next agent
/// finds it answered.
#[test]
fn handshakes_are_tracked_while_no_agent_runs() {
    let nodes = TwoNodes::with_prefix("pin");
    let pins = TestPins::new();
    drop(load(&nodes.a, &pins, LoadOptions::default()));
    assert_eq!(tcx_ids(&nodes.a, "u0").len(), 2, "left attached");

    let listener = in_netns(&nodes.b.name, || {
        TcpListener::bind("10.244.1.0:7778").expect("bind")
    });
    let accepted = spawn(move || listener.accept().map(|_| ()));
    in_netns(&nodes.a.name, || {
        TcpStream::connect_timeout(&"10.244.1.0:7778".parse().unwrap(), Duration::from_secs(5))
    })
    .expect("connect");
    accepted.join().unwrap().expect("accept");

    let second = load(&nodes.a, &pins, LoadOptions::default());
    let snap = second.snapshot().unwrap();
    let answered: u64 = snap
        .peers
        .iter()
        .filter(|p| p.direction == observer_ebpf::Direction::Egress)
        .map(|p| p.counts.handshakes_answered)
        .sum();
    assert_eq!(answered, 1, "{:?}", snap.peers);
}

fn node(name: &str, i: u8) -> Node {
    Node {
        name: name.into(),
        underlay: [192, 168, 50, i + 1].into(),
        overlay_addrs: vec![[10, 244, i, 0].into()],
        pod_cidrs: vec![NodePodCidr {
            role: Role::Legacy,
            cidr: format!("10.244.{i}.0/24").parse().unwrap(),
        }],
    }
}

fn shape(nodes: &[(&str, u8)]) -> ClusterShape {
    ClusterShape {
        local_node: Some("node-a".into()),
        nodes: nodes.iter().map(|(n, i)| node(n, *i)).collect(),
        ..ClusterShape::migration_defaults()
    }
}

/// A VXLAN packet node A sends to node `i` (192.168.50.i+1).
fn to_node(i: u8, src_port: u16) -> Vec<u8> {
    ip(
        [10, 244, 0, 7],
        [10, 244, i, 5],
        tcp(src_port, 80, 1, ACK, 10),
    )
    .vxlan([192, 168, 50, 1], [192, 168, 50, i + 1], 8472)
}

fn sent_to(h: &Harness, i: u8) -> u64 {
    h.observer
        .peers()
        .unwrap()
        .iter()
        .filter(|p| p.peer == std::net::Ipv4Addr::new(192, 168, 50, i + 1))
        .filter(|p| p.direction == observer_ebpf::Direction::Egress)
        .map(|p| p.counts.packets)
        .sum()
}

#[test]
fn peer_slots_are_recovered_and_never_reused_after_a_restart() {
    let pins = TestPins::new();
    let options = || LoadOptions {
        pin_path: Some(pins.path.clone()),
        ..LoadOptions::default()
    };
    let with_c = shape(&[("node-a", 0), ("node-b", 1), ("node-c", 2)]);
    let mut h = Harness::with_options(&with_c, options());
    for port in 0..5 {
        h.run("crossover_underlay_egress", &to_node(2, 1000 + port));
    }
    assert_eq!(sent_to(&h, 2), 5);
    // node-c leaves the shape: its slot is retired, its counts stay.
    h.observer
        .configure(&shape(&[("node-a", 0), ("node-b", 1)]))
        .unwrap();
    assert_eq!(sent_to(&h, 2), 5);
    drop(h);

    // A new node arrives after the restart: it must get a fresh slot, not
    // node-c's (which would hand it node-c's 5 packets).
    let with_d = shape(&[("node-a", 0), ("node-b", 1), ("node-d", 3)]);
    let h = Harness::with_options(&with_d, options());
    assert_eq!(sent_to(&h, 2), 5, "node-c's counts survive the restart");
    for port in 0..3 {
        h.run("crossover_underlay_egress", &to_node(3, 2000 + port));
    }
    assert_eq!(sent_to(&h, 3), 3, "node-d counts from zero");
    assert_eq!(sent_to(&h, 2), 5);
    // node-c's retired slot is not used for its new flows either.
    h.run("crossover_underlay_egress", &to_node(2, 3000));
    assert_eq!(sent_to(&h, 2), 6, "counted in the PEERS hash instead");
}

#[test]
fn pinned_maps_that_do_not_fit_are_recreated_and_reported() {
    let nodes = TwoNodes::with_prefix("pin");
    let pins = TestPins::new();
    let small = || LoadOptions {
        flow_capacity: 4096,
        ..LoadOptions::default()
    };
    let first = load(&nodes.a, &pins, small());
    let stream = Stream::start(&nodes);
    sleep(Duration::from_millis(200));
    let (sent, _) = stream.stop();
    assert_eq!(counts(&first.snapshot().unwrap()), [sent; 3]);
    drop(first);

    // An upgrade that changed the flow capacity (the same goes for a
    // changed ABI: any key, value, type or size difference).
    let second = load(
        &nodes.a,
        &pins,
        LoadOptions {
            flow_capacity: 8192,
            ..LoadOptions::default()
        },
    );
    let report = second.pin_report().unwrap();
    assert_eq!(report.recreated.len(), 1, "{report:?}");
    let flows = &report.recreated[0];
    assert_eq!(flows.map, map::FLOWS);
    assert_eq!(flows.pinned.unwrap().max_entries, 4096);
    assert_eq!(flows.wanted.max_entries, 8192);
    assert!(report.summary().contains("counters reset: FLOWS"));
    assert_eq!(report.reused.len(), 11);
    let pinned = MapInfo::from_pin(pins.path.join("maps").join(map::FLOWS)).unwrap();
    assert_eq!(pinned.max_entries(), 8192, "the new map is the pinned one");
    let snap = second.snapshot().unwrap();
    assert_eq!(counts(&snap), [0, 0, sent], "flows reset, peers carry on");

    // The adopted links run programs that count into the new map.
    let stream = Stream::start(&nodes);
    sleep(Duration::from_millis(200));
    let (more, _) = stream.stop();
    assert_eq!(
        counts(&second.snapshot().unwrap()),
        [more, more, sent + more]
    );
    drop(second);

    // PEER_SLOTS and PEER_STATS only mean something together.
    let third = load(
        &nodes.a,
        &pins,
        LoadOptions {
            flow_capacity: 8192,
            peer_slot_capacity: 64,
            ..LoadOptions::default()
        },
    );
    let mut recreated: Vec<&str> = third
        .pin_report()
        .unwrap()
        .recreated
        .iter()
        .map(|r| r.map)
        .collect();
    recreated.sort();
    assert_eq!(recreated, [map::PEER_SLOTS, map::PEER_STATS]);
}

/// Waits for the kernel to free what nothing references any more.
fn gone(what: &str, id: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("bpftool")
            .args([what, "show", "id", &id.to_string()])
            .output()
            .unwrap();
        if !out.status.success() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

fn linked_to(prog: u32) -> bool {
    let links: serde_json::Value =
        serde_json::from_str(&sh(&["bpftool", "-j", "link", "show"])).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["prog_id"].as_u64() == Some(prog as u64))
}

fn map_ids(pins: &TestPins) -> Vec<u32> {
    std::fs::read_dir(pins.path.join("maps"))
        .unwrap()
        .map(|e| MapInfo::from_pin(e.unwrap().path()).unwrap().id())
        .collect()
}

#[test]
fn uninstall_leaves_nothing_behind() {
    let nodes = TwoNodes::with_prefix("pin");

    // `crossover uninstall` after the agent left its links attached.
    let pins = TestPins::new();
    let observer = load(&nodes.a, &pins, LoadOptions::default());
    let progs = [tcx_ids(&nodes.a, "u0"), tcx_ids(&nodes.a, "flannel.1")].concat();
    let maps = map_ids(&pins);
    assert_eq!((progs.len(), maps.len()), (4, 12));
    drop(observer);
    assert_eq!(tcx_ids(&nodes.a, "u0").len(), 2, "left attached");
    // Run on the node, where its interfaces are, as the CLI is.
    let path = pins.path.clone();
    let done = in_netns(&nodes.a.name, move || observer::datapath::uninstall(&path)).unwrap();
    assert_eq!((done.links.len(), done.maps.len()), (4, 12), "{done:?}");
    check_nothing_left(&nodes, &pins, &progs, &maps);

    // The agent's --detach-on-exit.
    let pins = TestPins::new();
    let mut observer = load(&nodes.a, &pins, LoadOptions::default());
    let progs = [tcx_ids(&nodes.a, "u0"), tcx_ids(&nodes.a, "flannel.1")].concat();
    let maps = map_ids(&pins);
    observer.exit(true).unwrap();
    drop(observer);
    check_nothing_left(&nodes, &pins, &progs, &maps);
}

fn check_nothing_left(nodes: &TwoNodes, pins: &TestPins, progs: &[u32], maps: &[u32]) {
    assert!(!pins.path.exists(), "{} remains", pins.path.display());
    assert!(tcx_ids(&nodes.a, "u0").is_empty());
    assert!(tcx_ids(&nodes.a, "flannel.1").is_empty());
    for id in progs {
        assert!(!linked_to(*id), "a link of program {id} remains");
        assert!(gone("prog", *id), "program {id} remains");
    }
    for id in maps {
        assert!(gone("map", *id), "map {id} remains");
    }
}

/// Pinned per-peer maps of a binary whose PeerKey had no networks (ABI 1:
/// same sizes, no version entry) are recreated, not misread; the flows
/// carry on.
#[test]
fn pinned_peer_maps_of_another_abi_are_recreated() {
    use aya::maps::{HashMap, Map, MapData};
    use observer_ebpf::{PEER_ABI_KEY, PEER_ABI_VERSION, PEER_SLOT_RETIRED, PeerKey};
    let nodes = TwoNodes::with_prefix("abi");
    let pins = TestPins::new();
    let first = load(&nodes.a, &pins, LoadOptions::default());
    let stream = Stream::start(&nodes);
    sleep(Duration::from_millis(200));
    let (sent, _) = stream.stop();
    assert_eq!(counts(&first.snapshot().unwrap()), [sent; 3]);
    drop(first);

    let slots_pin = pins.path.join("maps").join(map::PEER_SLOTS);
    let open = || -> HashMap<MapData, PeerKey, u32> {
        Map::HashMap(MapData::from_pin(&slots_pin).unwrap())
            .try_into()
            .unwrap()
    };
    assert_eq!(
        open().get(&PEER_ABI_KEY, 0).unwrap(),
        PEER_SLOT_RETIRED | PEER_ABI_VERSION,
        "the version is kept beside the slots"
    );
    // What an agent of ABI 1 left behind: no version entry.
    open().remove(&PEER_ABI_KEY).unwrap();

    let second = load(&nodes.a, &pins, LoadOptions::default());
    let report = second.pin_report().unwrap();
    let mut recreated: Vec<(&str, &str)> =
        report.recreated.iter().map(|r| (r.map, r.reason)).collect();
    recreated.sort();
    assert_eq!(
        recreated,
        [
            (map::PEERS, "peer ABI differs"),
            (map::PEER_SLOTS, "peer ABI differs"),
            (map::PEER_STATS, "coupled"),
        ],
        "{report:?}"
    );
    assert!(report.reused.contains(&map::FLOWS), "{report:?}");
    assert_eq!(counts(&second.snapshot().unwrap()), [sent, sent, 0]);
    assert_eq!(
        open().get(&PEER_ABI_KEY, 0).unwrap(),
        PEER_SLOT_RETIRED | PEER_ABI_VERSION
    );
    let stream = Stream::start(&nodes);
    sleep(Duration::from_millis(200));
    let (more, _) = stream.stop();
    // The new stream is a new flow; the peer counts from zero.
    assert_eq!(counts(&second.snapshot().unwrap())[2], more);
}

/// Handshakes the agent expired unanswered live in the process, not the
/// kernel: they are kept with the ticks (observer/src/loss/kept.rs), and a
/// restarted process over the same pins carries on from them, so the
/// unanswered count of a window spanning the restart does not drop.
#[test]
fn expired_handshakes_are_carried_across_a_restart() {
    use observer::loss::{
        kept::{Basis, Keeper, MAP},
        ring::Tick,
    };
    let pins = TestPins::new();
    let options = || LoadOptions {
        pin_path: Some(pins.path.clone()),
        ..LoadOptions::default()
    };
    let unanswered = |h: &Harness| -> u64 {
        h.observer
            .peers()
            .unwrap()
            .iter()
            .map(|p| p.counts.handshakes_unanswered)
            .sum()
    };
    let keeper = |h: &Harness| {
        let (pages, found) = h
            .observer
            .pinned_pages(MAP, 4, Keeper::max_bytes(64))
            .unwrap()
            .expect("pinned");
        let basis = Basis {
            interval_ms: 1000,
            guard_ms: 20,
            counters: h.observer.counter_ids().unwrap(),
        };
        (Keeper::new(pages, basis), found)
    };
    let mut h = Harness::with_options(&two_node_shape(), options());
    for port in [40000, 40001, 40002] {
        let syn = ip(
            [10, 244, 0, 7],
            [10, 244, 1, 5],
            tcp(port, 443, 7, packet::SYN, 0),
        )
        .vxlan([192, 168, 50, 1], [192, 168, 50, 2], 8472);
        h.run("crossover_underlay_egress", &syn);
    }
    // Past the grace: all three expire unanswered, counted by the process.
    let later = observer::datapath::monotonic_ns() + 5_000_000_000;
    assert_eq!(h.observer.expire_handshakes(later).unwrap(), 3);
    assert_eq!(unanswered(&h), 3);
    let (mut kept, _) = keeper(&h);
    let peers = h.observer.peers().unwrap();
    let tick = Tick::new(2, (2000, peers.clone()), (2020, peers.clone()));
    kept.keep(&tick, &h.observer.expired_handshakes()).unwrap();
    drop(kept);
    drop(h);

    let mut h = Harness::with_options(&two_node_shape(), options());
    assert_eq!(unanswered(&h), 0, "the kernel never counted them");
    let (kept, found) = keeper(&h);
    let (ticks, expired, report) = kept.adopt(found, 2, 4).unwrap();
    assert_eq!((ticks.len(), report.refused.len()), (1, 0), "{report:?}");
    h.observer.adopt_expired_handshakes(&expired);
    assert_eq!(unanswered(&h), 3, "carried on from the kept tick");
    assert_eq!(ticks[0].early, peers);
}
