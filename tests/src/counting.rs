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
/// checks every one arrived.
pub fn send_udp(nodes: &TwoNodes, count: u64) {
    let received = send_datagrams(
        (&nodes.a.name, "10.244.0.0:0"),
        (&nodes.b.name, "10.244.1.0:7777"),
        count,
    );
    assert_eq!(received, count, "every datagram arrives on a clean lab");
}

/// Sends `count` UDP datagrams from an address in one namespace to an
/// address in another; how many arrived (read while they are sent, so the
/// receiver's socket buffer never overflows).
pub fn send_datagrams(from: (&str, &str), to: (&str, &str), count: u64) -> u64 {
    let (from_ns, from_addr) = (from.0.to_owned(), from.1.to_owned());
    let to_addr = to.1.to_owned();
    let bind = to_addr.clone();
    let receiver = in_netns(to.0, move || UdpSocket::bind(&bind).expect("bind"));
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    hold_a_burst(&receiver);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        (0..count)
            .filter(|_| receiver.recv(&mut buf).is_ok())
            .count() as u64
    });
    in_netns(&from_ns, move || {
        let socket = UdpSocket::bind(&from_addr).expect("bind");
        for i in 0..count {
            socket.send_to(&i.to_be_bytes(), &to_addr).expect("send");
            if i % 64 == 63 {
                // Pace the burst: the lab must not lose what we count.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    reader.join().unwrap()
}

/// A receive buffer that holds every datagram of a burst even when the
/// reader is not scheduled for a while (a loaded CI machine): 8 MiB, past
/// `rmem_max` (SO_RCVBUFFORCE, root). The lab must not lose what is
/// counted.
fn hold_a_burst(socket: &UdpSocket) {
    set_receive_buffer(socket, libc::SO_RCVBUFFORCE, 8 << 20);
}

/// Sets a socket's receive buffer with `option` (`SO_RCVBUF`, or
/// `SO_RCVBUFFORCE` past `rmem_max`); the kernel doubles it, with a floor.
pub fn set_receive_buffer(socket: &UdpSocket, option: libc::c_int, size: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket fd and a c_int option value of its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {option}: {}",
        std::io::Error::last_os_error()
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
