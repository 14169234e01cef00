//! Counting real traffic between the two nodes of [`TwoNodes`]: an
//! Observer in a node's namespace, UDP sent from A's flannel.1 address to
//! B's, and the flow it made.
use std::{net::UdpSocket, time::Duration};

use observer::datapath::{AttachMode, LoadOptions, Observer, Snapshot};

use crate::{
    harness::two_node_shape,
    netns::{Netns, TwoNodes, in_netns},
    require_root,
};

/// An Observer loaded for the nodes' shape, attaching in `ns` as `local`.
pub fn observer_in(ns: &Netns, local: &str, mode: AttachMode) -> Observer {
    require_root();
    let mut shape = two_node_shape();
    shape.local_node = Some(local.into());
    let mut observer = Observer::load(LoadOptions {
        netns: Some(ns.name.clone()),
        attach_mode: mode,
        ..LoadOptions::default()
    })
    .expect("load");
    observer.configure(&shape).expect("configure");
    observer
}

/// Sends `count` UDP datagrams from node A's flannel.1 address to B's and
/// checks every one arrived (B reads while A sends, so its socket buffer
/// never overflows).
pub fn send_udp(nodes: &TwoNodes, count: u64) {
    let receiver = in_netns(&nodes.b.name, || {
        UdpSocket::bind("10.244.1.0:7777").expect("bind")
    });
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        (0..count)
            .filter(|_| receiver.recv(&mut buf).is_ok())
            .count() as u64
    });
    in_netns(&nodes.a.name, move || {
        let socket = UdpSocket::bind("10.244.0.0:0").expect("bind");
        for i in 0..count {
            socket
                .send_to(&i.to_be_bytes(), "10.244.1.0:7777")
                .expect("send");
            if i % 64 == 63 {
                // Pace the burst: the lab must not lose what we count.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    assert_eq!(
        reader.join().unwrap(),
        count,
        "every datagram arrives on a clean lab"
    );
}

pub fn udp_flow<'a>(
    snap: &'a Snapshot,
    point: &str,
    direction: &str,
) -> &'a observer::datapath::FlowRecord {
    snap.flows
        .iter()
        .find(|f| {
            f.dst_port == 7777 && f.point.label() == point && f.direction.label() == direction
        })
        .unwrap_or_else(|| panic!("no {point} {direction} flow to :7777 in {:#?}", snap.flows))
}
