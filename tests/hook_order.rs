//! crossover seen before Cilium decides (root): real traffic through the
//! two-node lab with a stand-in for Cilium's programs on node A's underlay
//! egress, attached the way Cilium's loader attaches them and ending every
//! packet's journey (TC_ACT_OK). crossover counts every packet while it is
//! first, keeps its place when Cilium restarts (its programs replaced in
//! place mid-stream), reports the hook blind when something gets in front,
//! and takes the front back. The agent doing so, and crossover beside the
//! stand-in in the lab: `cilium_datapath.rs`.
use aya::programs::TcAttachType;
use crossover_tests::{
    counting::{observer_in, send_udp},
    netns::TwoNodes,
    standin::{Place, Standin},
};
use observer::datapath::{AttachMode, Hook, HookOrder, Observer, Placement};
use observer_ebpf::Direction;

const DATAGRAMS: u64 = 300;

/// The placement of `u0`'s egress hook after a check.
fn u0_egress(observer: &mut Observer, reassert: bool) -> HookOrder {
    let order = observer.check_order(reassert).expect("checking the order");
    assert_eq!(order.len(), 2, "u0 ingress and egress: {order:?}");
    let ingress = order
        .iter()
        .find(|o| o.direction == Direction::Ingress)
        .unwrap();
    assert_eq!(ingress.placement, Placement::First, "nothing on ingress");
    order
        .iter()
        .find(|o| o.iface == "u0" && o.direction == Direction::Egress)
        .cloned()
        .unwrap()
}

/// u0's egress is reported blind behind `ahead`, and `DATAGRAMS` sent
/// then reach `ahead` (the caller checks crossover counted none).
fn assert_blind_behind(a: &mut Observer, ahead: &Standin, nodes: &TwoNodes) {
    let seen = u0_egress(a, false);
    assert_eq!(
        (seen.placement, seen.ahead),
        (Placement::Blind, vec![ahead.program_id()])
    );
    let before = ahead.seen();
    send_udp(nodes, DATAGRAMS);
    assert!(
        ahead.seen() >= before + DATAGRAMS,
        "the program ahead saw them"
    );
}

/// Datagrams to :7777 node A's underlay egress counted so far, over every
/// flow (each send is from a new source port).
fn counted(observer: &Observer) -> u64 {
    let snap = observer.snapshot().unwrap();
    snap.flows
        .iter()
        .filter(|f| {
            f.dst_port == 7777 && f.point.label() == "underlay" && f.direction.label() == "egress"
        })
        .map(|f| f.packets)
        .sum()
}

/// Datagrams of the stream a restart happens in: paced 64 a millisecond,
/// it lasts over 75 ms.
const STREAM: u64 = 5000;

/// Restarts Cilium's stand-in while `STREAM` datagrams are sent, once the
/// old program has seen the stream start, and checks the restart fell in
/// the middle: the new program saw part of it, not all.
fn restart_mid_stream(nodes: &TwoNodes, cilium: Standin) -> Standin {
    let next = Standin::load();
    let started = cilium.seen() + 100;
    let restarted = std::thread::scope(|scope| {
        let sender = scope.spawn(|| send_udp(nodes, STREAM));
        while cilium.seen() < started && !sender.is_finished() {
            std::thread::yield_now();
        }
        let restarted = cilium.hand_over(next);
        sender.join().expect("sender");
        restarted
    });
    assert!(
        (1..STREAM).contains(&restarted.seen()),
        "the restart fell mid-stream: the new program saw {} of {STREAM}",
        restarted.seen()
    );
    restarted
}

#[test]
fn tcx_stays_first_through_cilium_restarts_and_takes_the_head_back() {
    let nodes = TwoNodes::new();
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Tcx);
    a.attach("u0", Hook::Underlay).unwrap();
    let mut cilium = Standin::load();
    cilium.attach(&nodes.a.name, "u0", TcAttachType::Egress, Place::TcxTail);
    assert_eq!(u0_egress(&mut a, false).placement, Placement::First);

    send_udp(&nodes, DATAGRAMS);
    assert_eq!(counted(&a), DATAGRAMS);
    assert!(cilium.seen() >= DATAGRAMS, "the stand-in ran behind us");

    // Cilium's agent restarts mid-stream: its link gets the new program.
    let before = cilium.program_id();
    let cilium = restart_mid_stream(&nodes, cilium);
    assert_ne!(cilium.program_id(), before, "a new program took the link");
    assert_eq!(
        counted(&a),
        DATAGRAMS + STREAM,
        "no count lost across the restart"
    );
    assert_eq!(u0_egress(&mut a, false).placement, Placement::First);

    // Something attaches at the head, in front of us, and ends the
    // packets' journey there: we are blind and say so.
    let mut intruder = Standin::load();
    intruder.attach(&nodes.a.name, "u0", TcAttachType::Egress, Place::TcxHead);
    assert_blind_behind(&mut a, &intruder, &nodes);
    assert_eq!(counted(&a), DATAGRAMS + STREAM, "behind it we saw nothing");

    // Re-asserted: at the head again, counting again.
    let taken = u0_egress(&mut a, true);
    assert_eq!((taken.placement, a.reasserted()), (Placement::First, 1));
    send_udp(&nodes, DATAGRAMS);
    assert_eq!(counted(&a), 2 * DATAGRAMS + STREAM);
    assert_eq!(u0_egress(&mut a, true).placement, Placement::First);
    assert_eq!(a.reasserted(), 1, "nothing to re-assert when first");
}

#[test]
fn clsact_runs_before_a_cilium_filter_installed_before_it() {
    let nodes = TwoNodes::new();
    let mut cilium = Standin::load();
    cilium.attach(&nodes.a.name, "u0", TcAttachType::Egress, Place::Clsact);
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Netlink);
    a.attach("u0", Hook::Underlay).unwrap();
    let filters = nodes
        .a
        .exec(&["tc", "filter", "show", "dev", "u0", "egress"]);
    assert!(
        filters.contains("handle 0xc055") && filters.contains("handle 0x1"),
        "{filters}"
    );
    assert_eq!(u0_egress(&mut a, false).placement, Placement::First);
    send_udp(&nodes, DATAGRAMS);
    assert_eq!(counted(&a), DATAGRAMS);
    assert!(cilium.seen() >= DATAGRAMS, "the stand-in ran behind us");

    // Cilium's restart replaces its filter in place: we stay in front.
    let cilium = restart_mid_stream(&nodes, cilium);
    assert_eq!(
        counted(&a),
        DATAGRAMS + STREAM,
        "no count lost across the restart"
    );
    assert_eq!(u0_egress(&mut a, false).placement, Placement::First);
    drop(cilium);
}

#[test]
fn clsact_filter_added_after_ours_is_reported_blind_until_reasserted() {
    let nodes = TwoNodes::new();
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Netlink);
    a.attach("u0", Hook::Underlay).unwrap();
    assert_eq!(u0_egress(&mut a, false).placement, Placement::First);

    // Cilium starts after crossover: its new filter at priority 1 runs
    // first (cls_bpf runs a priority's newest filter first).
    let mut cilium = Standin::load();
    cilium.attach(&nodes.a.name, "u0", TcAttachType::Egress, Place::Clsact);
    assert_blind_behind(&mut a, &cilium, &nodes);
    assert_eq!(
        counted(&a),
        0,
        "behind Cilium's final verdict we see nothing"
    );

    let taken = u0_egress(&mut a, true);
    assert_eq!((taken.placement, a.reasserted()), (Placement::First, 1));
    send_udp(&nodes, DATAGRAMS);
    assert_eq!(counted(&a), DATAGRAMS);

    // And a Cilium restart after that keeps us in front.
    let cilium = restart_mid_stream(&nodes, cilium);
    assert_eq!(counted(&a), DATAGRAMS + STREAM);
    assert_eq!(u0_egress(&mut a, false).placement, Placement::First);

    // crossover leaves: it added clsact, but Cilium's filter is on it now,
    // so the qdisc stays (removing it would take Cilium's filter along).
    drop(a);
    let filters = nodes
        .a
        .exec(&["tc", "filter", "show", "dev", "u0", "egress"]);
    assert!(
        filters.contains("handle 0x1") && !filters.contains("0xc055"),
        "{filters}"
    );
    drop(cilium);
}

/// With pinned TCX links (`--pin-path`), re-asserting replaces the pin:
/// the link in front is the one a restarted crossover adopts, and it stays
/// in front and counts.
#[test]
fn a_reasserted_pinned_link_is_the_one_a_restart_adopts() {
    let nodes = TwoNodes::new();
    let pins = crossover_tests::pins::TestPins::new();
    let load = || {
        let mut observer = Observer::load(observer::datapath::LoadOptions {
            netns: Some(nodes.a.name.clone()),
            attach_mode: AttachMode::Tcx,
            pin_path: Some(pins.path.clone()),
            ..observer::datapath::LoadOptions::default()
        })
        .expect("load");
        observer
            .configure(&crossover_tests::harness::two_node_shape())
            .expect("configure");
        observer
    };
    let mut a = load();
    a.attach("u0", Hook::Underlay).unwrap();
    let mut intruder = Standin::load();
    intruder.attach(&nodes.a.name, "u0", TcAttachType::Egress, Place::TcxHead);
    assert_eq!(u0_egress(&mut a, true).placement, Placement::First);
    assert_eq!(a.reasserted(), 1);
    // A restart: the old process leaves its pinned links, the new one
    // adopts them (its programs swapped in, in place).
    drop(a);
    let mut b = load();
    assert_eq!(b.attached().count(), 1, "u0 adopted from its pins");
    assert_eq!(u0_egress(&mut b, false).placement, Placement::First);
    send_udp(&nodes, DATAGRAMS);
    assert_eq!(counted(&b), DATAGRAMS);
    b.uninstall().unwrap();
}

/// Priority 1 taken by a filter crossover cannot share it with (another
/// protocol: here a classic-BPF filter for IPv4 only, returning TC_ACT_OK):
/// crossover still attaches, behind it, and says the hook is blind, every
/// check, rather than report the nothing it sees as nothing sent.
#[test]
fn clsact_behind_a_filter_it_cannot_share_priority_1_with_is_blind() {
    let nodes = TwoNodes::new();
    crossover_tests::standin::hold_priority_1(&nodes.a.name, "u0", "egress");
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Netlink);
    a.attach("u0", Hook::Underlay).unwrap();
    for _ in 0..2 {
        let seen = u0_egress(&mut a, true);
        assert_eq!(
            (seen.placement, seen.ahead),
            (Placement::Blind, vec![0]),
            "a filter without a program id ahead"
        );
    }
    assert_eq!(a.reasserted(), 2, "tried on every check");
    send_udp(&nodes, DATAGRAMS);
    assert_eq!(counted(&a), 0, "behind its final verdict we see nothing");
    let blind = observer::datapath::blind_by_hook(a.order());
    assert!(
        blind.contains(&(Hook::Underlay, Direction::Egress, 1)),
        "{blind:?}"
    );
    assert!(
        blind.contains(&(Hook::Underlay, Direction::Ingress, 0)),
        "{blind:?}"
    );
}

/// A crossover killed in netlink mode leaves its filters behind (they are
/// not links and die with nothing); the next one finds its handle taken at
/// priority 1, replaces the stale filter, and counts: one crossover filter
/// per hook, still in front of Cilium's.
#[test]
fn a_stale_filter_of_a_killed_crossover_is_replaced() {
    let nodes = TwoNodes::new();
    let mut cilium = Standin::load();
    cilium.attach(&nodes.a.name, "u0", TcAttachType::Egress, Place::Clsact);
    let mut killed = observer_in(&nodes.a, "node-a", AttachMode::Netlink);
    killed.attach("u0", Hook::Underlay).unwrap();
    // As if SIGKILLed: nothing of it runs again, its filters stay.
    std::mem::forget(killed);

    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Netlink);
    a.attach("u0", Hook::Underlay).unwrap();
    let filters = nodes
        .a
        .exec(&["tc", "filter", "show", "dev", "u0", "egress"]);
    assert_eq!(filters.matches("handle 0xc055").count(), 1, "{filters}");
    assert_eq!(u0_egress(&mut a, false).placement, Placement::First);
    send_udp(&nodes, DATAGRAMS);
    assert_eq!(counted(&a), DATAGRAMS);
}
