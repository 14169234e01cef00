//! Geneve on the wire without a Geneve device: the kernel here has no
//! module for one, so a node sends real UDP datagrams to port 6081 whose
//! payload is what `cilium_geneve` would put there, a Geneve header and the
//! pod's Ethernet frame. The receiving node has a socket on 6081 to take
//! them, so no port-unreachable comes back.
use std::{
    net::UdpSocket,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{Lab, plan, traffic::Pacer};
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
    if count > super::traffic::MAX_COUNT || pps == 0 {
        bail!(
            "geneve: count {count} must be at most {} and pps above 0",
            super::traffic::MAX_COUNT
        );
    }
    let j = lab.state().node_index(from)?;
    let k = lab.state().node_index(to)?;
    let src = lab.endpoint(inner_src)?.addr;
    let dst = lab.endpoint(inner_dst)?.addr;
    let outer_src = plan::underlay_addr(j);
    let outer_dst = plan::underlay_addr(k);
    let (ready_tx, ready_rx) = mpsc::channel();
    let deadline = Duration::from_secs_f64(count as f64 / pps as f64) + Duration::from_secs(1);
    let receiver = {
        let ns = lab.node_ns(to);
        std::thread::spawn(move || -> Result<u64> {
            let _guard = observer::netns::enter(&ns)?;
            let socket = UdpSocket::bind((outer_dst, plan::GENEVE_PORT))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = ready_tx.send(());
            let start = Instant::now();
            let mut buf = [0u8; 2048];
            let mut taken = 0;
            while taken < count && start.elapsed() < deadline {
                if socket.recv(&mut buf).is_ok() {
                    taken += 1;
                }
            }
            Ok(taken)
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("Geneve receiver did not start")?;
    let ns = lab.node_ns(from);
    let sender = std::thread::spawn(move || -> Result<()> {
        let _guard = observer::netns::enter(&ns)?;
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
            socket.send_to(&payload, (outer_dst, plan::GENEVE_PORT))?;
        }
        Ok(())
    });
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("Geneve sender panicked"))??;
    receiver
        .join()
        .map_err(|_| anyhow::anyhow!("Geneve receiver panicked"))?
}
