//! The kernel's drops of cluster traffic, counted by reason, peer node,
//! overlay and network pair by the `skb:kfree_skb` program: real packets
//! through two namespaces, dropped by real nftables rules whose own
//! counters are the truth. Needs root (namespaces, programs, tracefs).
//!
//! Its own test binary: the tracepoint sees every namespace on the
//! machine, and the fault-injecting tests of other binaries (which drop
//! with netfilter too) never run beside it.
use std::{net::UdpSocket, time::Duration};

use crossover_tests::{
    counting::{observer_in, set_receive_buffer},
    netns::{Netns, TwoNodes, in_netns},
};
use observer::datapath::{AttachMode, DropRecord, Hook};
use observer_ebpf::{Direction, Net, Overlay};

/// `count` datagrams from A's flannel.1 address to B's, a send refused by
/// A's own output chain (EPERM) included: how many B received.
fn send(nodes: &TwoNodes, count: u64) -> u64 {
    send_between((&nodes.a, "10.244.0.0"), (&nodes.b, "10.244.1.0"), count)
}

/// `count` datagrams from one node's flannel.1 address to the other's:
/// how many arrived.
fn send_between(from: (&Netns, &str), to: (&Netns, &str), count: u64) -> u64 {
    let target = format!("{}:7777", to.1);
    let bind = target.clone();
    let receiver = in_netns(&to.0.name, move || UdpSocket::bind(&bind).unwrap());
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Read while they are sent: the socket buffer holds a few hundred.
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        std::iter::from_fn(|| receiver.recv(&mut buf).ok()).count() as u64
    });
    send_to(from, &target, count);
    reader.join().unwrap()
}

/// `count` datagrams from an address of `from` to `target`, paced; a send
/// its own node refuses (EPERM) counts as sent.
fn send_to(from: (&Netns, &str), target: &str, count: u64) {
    let (source, target) = (format!("{}:0", from.1), target.to_owned());
    in_netns(&from.0.name, move || {
        let socket = UdpSocket::bind(&source).unwrap();
        for i in 0..count {
            let _ = socket.send_to(&i.to_be_bytes(), &target);
            std::thread::sleep(Duration::from_micros(200));
        }
    });
}

fn dropped_by_rule(ns: &Netns) -> u64 {
    let out = ns.exec(&["nft", "list", "table", "ip", "xodrop"]);
    out.split("packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

fn netfilter(drops: &[DropRecord], overlay: Overlay) -> Vec<&DropRecord> {
    drops
        .iter()
        .filter(|d| d.reason == "NETFILTER_DROP" && d.overlay == overlay)
        .collect()
}

/// Dropped before the tunnel (the inner packet in A's output chain) and
/// after it (the VXLAN packet in A's postrouting): each counted with its
/// reason, peer and networks, exactly as many as netfilter dropped.
#[test]
fn netfilter_drops_are_counted_with_reason_peer_and_overlay() {
    let nodes = TwoNodes::with_prefix("drop");
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Auto);
    a.attach("u0", Hook::Underlay).unwrap();
    a.enable_drops().unwrap();
    assert!(a.drops().unwrap().is_empty(), "{:?}", a.drops());

    // Inside the node, before encapsulation: A's flannel.1 address to B's
    // (node addresses: host to host), towards node B.
    nodes.a.drop_every("output", "udp dport 7777", 10);
    let received = send(&nodes, 500);
    let dropped = dropped_by_rule(&nodes.a);
    assert_eq!(dropped, 50);
    assert_eq!(received, 450);
    let drops = a.drops().unwrap();
    let before = netfilter(&drops, Overlay::None);
    assert_eq!(before.len(), 1, "{drops:#?}");
    let d = before[0];
    assert_eq!(d.packets, dropped, "{d:?}");
    assert_eq!(d.peer, Some([192, 168, 50, 2].into()));
    assert_eq!(d.direction, Direction::Egress);
    assert_eq!((d.src_net, d.dst_net), (Net::Host, Net::Host));
    nodes.a.exec(&["nft", "delete", "table", "ip", "xodrop"]);

    // On the way out, in the tunnel: the VXLAN packet itself.
    nodes.a.drop_every("postrouting", "udp dport 8472", 4);
    let received = send(&nodes, 400);
    let dropped = dropped_by_rule(&nodes.a);
    assert_eq!(received, 400 - dropped);
    assert!(
        dropped >= 100,
        "one in four of the tunnel's packets: {dropped}"
    );
    let drops = a.drops().unwrap();
    let tunnel = netfilter(&drops, Overlay::Legacy);
    assert_eq!(tunnel.len(), 1, "{drops:#?}");
    assert_eq!(tunnel[0].packets, dropped, "{:?}", tunnel[0]);
    assert_eq!(tunnel[0].peer, Some([192, 168, 50, 2].into()));
    assert_eq!(tunnel[0].direction, Direction::Egress);
    assert_eq!(
        (tunnel[0].src_net, tunnel[0].dst_net),
        (Net::Host, Net::Host)
    );
    nodes.a.exec(&["nft", "delete", "table", "ip", "xodrop"]);

    // Coming in, in the tunnel: B's VXLAN packets dropped on arrival at A,
    // counted apart from A's own sends to B (the same peer and networks).
    nodes.a.drop_every("prerouting", "udp dport 8472", 4);
    let received = send_between((&nodes.b, "10.244.1.0"), (&nodes.a, "10.244.0.0"), 400);
    let dropped = dropped_by_rule(&nodes.a);
    assert_eq!(received, 400 - dropped);
    assert!(dropped >= 100, "one in four arriving: {dropped}");
    let drops = a.drops().unwrap();
    let arriving: Vec<_> = netfilter(&drops, Overlay::Legacy)
        .into_iter()
        .filter(|d| d.direction == Direction::Ingress)
        .collect();
    assert_eq!(arriving.len(), 1, "{drops:#?}");
    assert_eq!(arriving[0].packets, dropped, "{:?}", arriving[0]);
    assert_eq!(arriving[0].peer, Some([192, 168, 50, 2].into()));
    nodes.a.exec(&["nft", "delete", "table", "ip", "xodrop"]);
}

/// Two more of the kernel's reasons, each counted on the node that dropped,
/// as coming in from its peer: B's datagrams to an address A routes into a
/// blackhole (`ip route add blackhole`, forwarded after the tunnel), and to
/// a socket on A whose receive buffer is full. Exactly as many as were
/// sent and not received.
#[test]
fn a_route_blackhole_and_a_full_socket_buffer_are_counted_with_their_reasons() {
    let nodes = TwoNodes::with_prefix("dropr");
    let mut a = observer_in(&nodes.a, "node-a", AttachMode::Auto);
    a.attach("u0", Hook::Underlay).unwrap();
    a.enable_drops().unwrap();
    let from_b = |drops: &[DropRecord]| -> Vec<DropRecord> {
        drops
            .iter()
            .filter(|d| {
                d.peer == Some([192, 168, 50, 2].into()) && d.direction == Direction::Ingress
            })
            .cloned()
            .collect()
    };

    // A route blackhole on A for an address in its pod range.
    nodes.a.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    nodes
        .a
        .exec(&["ip", "route", "add", "blackhole", "10.244.0.77/32"]);
    send_to((&nodes.b, "10.244.1.0"), "10.244.0.77:7777", 300);
    let drops = a.drops().unwrap();
    let blackholed = from_b(&drops);
    assert_eq!(blackholed.len(), 1, "{drops:#?}");
    let d = &blackholed[0];
    assert_eq!(d.packets, 300, "{d:?}");
    assert_eq!((d.src_net, d.dst_net), (Net::Host, Net::Legacy), "{d:?}");
    // Forwarded after the tunnel: no longer in it.
    assert_eq!(d.overlay, Overlay::Native, "{d:?}");
    // What the kernel says: a blackhole route's input is `dst_discard`,
    // which frees without a reason (6.18).
    assert_eq!(d.reason, "NOT_SPECIFIED", "{d:?}");
    let blackhole_reason = d.reason.clone();

    // A socket on A nobody reads, its buffer at the minimum.
    let socket = in_netns(&nodes.a.name, || {
        UdpSocket::bind("10.244.0.0:7778").unwrap()
    });
    // The kernel raises it to its minimum (a couple of KiB).
    set_receive_buffer(&socket, libc::SO_RCVBUF, 1);
    send_to((&nodes.b, "10.244.1.0"), "10.244.0.0:7778", 500);
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let queued = std::iter::from_fn(|| socket.recv(&mut buf).ok()).count() as u64;
    assert!(queued < 500, "a full buffer drops: {queued} queued");
    let drops = a.drops().unwrap();
    let full: Vec<DropRecord> = from_b(&drops)
        .into_iter()
        .filter(|d| d.reason != blackhole_reason)
        .collect();
    assert_eq!(full.len(), 1, "{drops:#?}");
    assert_eq!(full[0].reason, "SOCKET_RCVBUFF", "{:?}", full[0]);
    assert_eq!(full[0].packets, 500 - queued, "{:?}", full[0]);
    assert_eq!((full[0].src_net, full[0].dst_net), (Net::Host, Net::Host));
}

/// DROPS is pinned with the counters: an agent restarted over its pins
/// finds the drops counted before, and counts on into them, so a window
/// across a restart holds every drop.
#[test]
fn drops_counted_before_a_restart_are_still_there_after_it() {
    let nodes = TwoNodes::with_prefix("dpin");
    let pins = crossover_tests::pins::TestPins::new();
    let load = || {
        let mut shape = crossover_tests::harness::two_node_shape();
        shape.local_node = Some("node-a".into());
        let mut observer = observer::datapath::Observer::load(observer::datapath::LoadOptions {
            netns: Some(nodes.a.name.clone()),
            pin_path: Some(pins.path.clone()),
            ..observer::datapath::LoadOptions::default()
        })
        .expect("load");
        observer.configure(&shape).expect("configure");
        observer.attach("u0", Hook::Underlay).expect("attach u0");
        observer.enable_drops().expect("drops");
        observer
    };
    let netfilter_total = |observer: &observer::datapath::Observer| -> u64 {
        netfilter(&observer.drops().unwrap(), Overlay::None)
            .iter()
            .map(|d| d.packets)
            .sum()
    };
    let first = load();
    nodes.a.drop_every("output", "udp dport 7777", 10);
    send(&nodes, 300);
    let before = dropped_by_rule(&nodes.a);
    assert_eq!(before, 30);
    assert_eq!(netfilter_total(&first), before);
    // The process goes; its pins stay (no uninstall).
    drop(first);
    let second = load();
    let report = second.pin_report().expect("pinned").clone();
    assert!(
        report.reused.contains(&observer_ebpf::map::DROPS),
        "{report:?}"
    );
    assert_eq!(netfilter_total(&second), before, "the drops before it");
    send(&nodes, 200);
    let after = dropped_by_rule(&nodes.a);
    assert_eq!(after, 50);
    assert_eq!(netfilter_total(&second), after);
    nodes.a.exec(&["nft", "delete", "table", "ip", "xodrop"]);
    drop(second);
    observer::datapath::uninstall(&pins.path).expect("uninstall");
}
