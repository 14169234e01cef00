//! Geneve on the wire without a Geneve device: the kernel here has no
//! module for one, so a node sends real UDP datagrams to port 6081 whose
//! payload is what `cilium_geneve` would put there, a Geneve header and the
//! pod's Ethernet frame. The receiving node has a socket on 6081 to take
//! them, so no port-unreachable comes back.
use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    Lab, plan,
    traffic::{Crafted, Pacer, join, spawn_in, start_server},
};
use crate::packet::{self, geneve_header};

/// Sends `count` Geneve-encapsulated TCP segments from node `from` to node
/// `to`, inner addresses `inner_src` to `inner_dst` (pods or nodes, as
/// [`Lab::endpoint`] names them), `pps` per second. Returns how many the
/// receiving socket took.
pub fn send(
    lab: &Lab,
    from: &str,
    to: &str,
    inner_src: &str,
    inner_dst: &str,
    count: u64,
    pps: u64,
) -> Result<u64> {
    let Crafted {
        src,
        dst,
        outer_src,
        to_node,
        deadline,
    } = Crafted::plan(lab, "geneve", from, to, inner_src, inner_dst, count, pps)?;
    let (target, receiver) = start_server(
        &to_node,
        plan::GENEVE_PORT,
        UdpSocket::bind,
        move |socket| {
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let start = Instant::now();
            let mut buf = [0u8; 2048];
            let mut taken = 0;
            while taken < count && start.elapsed() < deadline {
                if socket.recv(&mut buf).is_ok() {
                    taken += 1;
                }
            }
            Ok(taken)
        },
    )?;
    let sender = spawn_in(&lab.node_ns(from), move || {
        let socket = UdpSocket::bind((outer_src, 0))?;
        let pacer = Pacer::new(pps);
        for n in 0..count {
            pacer.wait(n);
            let inner = packet::ip(
                src.octets(),
                dst.octets(),
                packet::tcp(41000, 80, n as u32 * 100, packet::ACK | packet::PSH, 100),
            );
            let mut payload = geneve_header(0, 0x6558);
            payload.extend(inner.frame());
            socket.send_to(&payload, target)?;
        }
        Ok(())
    });
    join(sender)?;
    join(receiver)
}
