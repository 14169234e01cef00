//! Why packets were lost: the kernel's drops of cluster traffic over a
//! window (`skb:kfree_skb`, by the kernel's reason), per node, peer node
//! and direction, and which of them lie behind a delivery row.
//!
//! A drop is local: one node's counter, read once a tick, never compared
//! with a peer's. It says where (on which node, on its way to or from which
//! peer, in which tunnel) and why; delivery says how much. They are joined
//! by node pair and direction only: a packet dropped before its tunnel is
//! counted `native` (or `none`) with its pre-SNAT networks, while the row
//! it is missing from is the tunnel's, with the networks the underlay saw.
use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use observer_ebpf::{Direction, Net, Overlay};
use serde::{Deserialize, Serialize};

use super::{
    LossRow, Signal,
    ring::{Tick, drop_key_of},
};
use crate::datapath::DropRecord;

/// Packets one node's kernel dropped over a window, for one reason, on
/// their way to (`egress`) or from (`ingress`) one peer node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRow {
    /// The node whose kernel dropped them.
    pub node: String,
    pub peer_node: String,
    pub direction: Direction,
    /// The tunnel they were in (`native`/`none`: before or outside one).
    pub overlay: Overlay,
    pub src_net: Net,
    pub dst_net: Net,
    /// The kernel's name for the reason (`NETFILTER_DROP`).
    pub reason: String,
    pub packets: u64,
}

impl DropRow {
    /// Most packets first, then by identity: the same order everywhere.
    pub fn worse(a: &DropRow, b: &DropRow) -> std::cmp::Ordering {
        b.packets
            .cmp(&a.packets)
            .then_with(|| a.key().cmp(&b.key()))
    }

    fn key(&self) -> (&str, &str, Direction, Overlay, Net, Net, &str) {
        (
            &self.node,
            &self.peer_node,
            self.direction,
            self.overlay,
            self.src_net,
            self.dst_net,
            &self.reason,
        )
    }

    /// Whether these packets were lost from `row`'s pair: dropped on the
    /// sender on their way to the receiver, or on the receiver coming from
    /// the sender. Any overlay and networks: see the module's comment.
    pub fn behind(&self, row: &LossRow) -> bool {
        (self.node == row.node
            && self.peer_node == row.peer_node
            && self.direction == Direction::Egress)
            || (self.node == row.peer_node
                && self.peer_node == row.node
                && self.direction == Direction::Ingress)
    }
}

/// Each drop counter that moved between two ticks' early reads, with its
/// peer node's name and how many it dropped; drops of no node's traffic,
/// towards addresses `name` does not know, or between nodes outside any
/// tunnel are left out.
fn between<'t>(
    (start, end): (&'t Tick, &'t Tick),
    name: &mut dyn FnMut(Ipv4Addr) -> Option<String>,
) -> Vec<(String, &'t DropRecord, u64)> {
    let mut out = Vec::new();
    for d in &end.drops {
        // A counter that went backwards (maps recreated) counts from zero.
        let before = start.dropped(&drop_key_of(d));
        let n = d.packets.checked_sub(before).unwrap_or(d.packets);
        if n == 0 {
            continue;
        }
        // Node to node, outside any tunnel (`none`): no peer counter
        // counts it (the underlay leaves it out by design), and its drops
        // are the nodes' own sockets (late segments of closed control
        // connections): not the overlays' to explain or judge. /metrics
        // keeps them.
        if d.overlay == Overlay::None {
            continue;
        }
        if let Some(peer) = d.peer.and_then(&mut *name) {
            out.push((peer, d, n));
        }
    }
    out
}

/// A node's drops between two ticks' early reads: those towards the nodes
/// `asked`, then the `top` largest of the rest; how many were left out.
/// Drops of no node's traffic (`peer` none) and towards addresses `name`
/// does not know are not about a pair: left to `/metrics`.
pub fn window(
    node: &str,
    (start, end): (&Tick, &Tick),
    name: &mut dyn FnMut(Ipv4Addr) -> Option<String>,
    asked: &dyn Fn(&str) -> bool,
    top: usize,
) -> (Vec<DropRow>, usize) {
    let mut rows: BTreeMap<(String, Direction, Overlay, Net, Net, &str), u64> = BTreeMap::new();
    for (peer, d, n) in between((start, end), name) {
        *rows
            .entry((
                peer,
                d.direction,
                d.overlay,
                d.src_net,
                d.dst_net,
                &d.reason,
            ))
            .or_default() += n;
    }
    let rows = rows.into_iter().map(
        |((peer_node, direction, overlay, src_net, dst_net, reason), packets)| DropRow {
            node: node.to_owned(),
            peer_node,
            direction,
            overlay,
            src_net,
            dst_net,
            reason: reason.to_owned(),
            packets,
        },
    );
    let (mut listed, mut rest): (Vec<DropRow>, Vec<DropRow>) =
        rows.partition(|r| asked(&r.peer_node));
    rest.sort_by(DropRow::worse);
    let left_out = rest.len().saturating_sub(top);
    rest.truncate(top);
    listed.extend(rest);
    listed.sort_by(DropRow::worse);
    (listed, left_out)
}

type Figures = (u64, u64);

/// The kernel's reason for a packet to a socket nobody listens on: refused
/// (as a handshake's RST is), not lost.
pub const REFUSED: &str = "NO_SOCKET";

/// Whether a reason is a node's own socket's (its TCP state machine:
/// `TCP_CLOSE`, `TCP_OLD_DATA`, ...; its buffers and filters: `SOCKET_*`):
/// the host stack's endpoints at work, not the datapath losing the
/// overlays' packets. Shown with the drops, never counted as loss inside
/// the node.
pub fn is_socket_reason(reason: &str) -> bool {
    reason.starts_with("TCP_") || reason.starts_with("SOCKET_")
}

/// Loss inside a node ([`Signal::InNode`]) over a window: per peer,
/// direction, overlay and network pair the node's kernel dropped, against
/// what its underlay exchanged with that peer that way (`exchanged`, every
/// overlay and pair, early read to early read as the drops are) plus what
/// was dropped. A drop towards a peer is a row from this node to it; one
/// coming in, a row from the peer to this node.
pub fn in_node_rows(
    node: &str,
    (start, end): (&Tick, &Tick),
    name: &mut dyn FnMut(Ipv4Addr) -> Option<String>,
    exchanged: &BTreeMap<(String, Direction), u64>,
    seconds: f64,
) -> Vec<LossRow> {
    // (lost, refused) per peer, direction, overlay and network pair.
    let mut rows: BTreeMap<(String, Direction, Overlay, Net, Net), Figures> = BTreeMap::new();
    for (peer, d, n) in between((start, end), name) {
        let row = rows
            .entry((peer, d.direction, d.overlay, d.src_net, d.dst_net))
            .or_default();
        if is_socket_reason(&d.reason) {
            continue;
        }
        if d.reason == REFUSED {
            row.1 += n;
        } else {
            row.0 += n;
        }
    }
    rows.into_iter()
        .map(
            |((peer, direction, overlay, src_net, dst_net), (lost, refused))| {
                let through = exchanged
                    .get(&(peer.clone(), direction))
                    .copied()
                    .unwrap_or(0);
                let (from, to) = match direction {
                    Direction::Egress => (node.to_owned(), peer),
                    Direction::Ingress => (peer, node.to_owned()),
                };
                LossRow {
                    node: from,
                    peer_node: to,
                    overlay,
                    src_net,
                    dst_net,
                    signal: Signal::InNode,
                    sent: through + lost,
                    lost,
                    refused,
                    seconds,
                    mtu: None,
                }
            },
        )
        .collect()
}

/// The drops behind `row`, most first.
pub fn behind<'a>(drops: &'a [DropRow], row: &LossRow) -> Vec<&'a DropRow> {
    let mut found: Vec<&DropRow> = drops.iter().filter(|d| d.behind(row)).collect();
    found.sort_by(|a, b| DropRow::worse(a, b));
    found
}

/// "37 dropped on worker-3 by NETFILTER_DROP (before the tunnel), 2 on
/// worker-1 by QDISC_DROP": for a halt message or a report line. At most
/// `most` reasons named, the rest summed.
pub fn describe(drops: &[&DropRow], most: usize) -> String {
    let mut out = String::new();
    for (i, d) in drops.iter().take(most).enumerate() {
        let _ = write!(
            out,
            "{}{} {} {} by {}",
            if i == 0 { "" } else { ", " },
            d.packets,
            if i == 0 { "dropped on" } else { "on" },
            d.node,
            d.reason
        );
        if matches!(d.overlay, Overlay::Native | Overlay::None) {
            out.push_str(" (outside a tunnel)");
        }
    }
    let rest: u64 = drops.iter().skip(most).map(|d| d.packets).sum();
    if rest > 0 {
        let _ = write!(out, ", {rest} more for other reasons");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(peer: u8, direction: Direction, reason: &str, packets: u64) -> DropRecord {
        DropRecord {
            reason: reason.into(),
            peer: (peer != 0).then(|| Ipv4Addr::new(10, 0, 0, peer)),
            overlay: Overlay::Legacy,
            src_net: Net::Legacy,
            dst_net: Net::Legacy,
            direction,
            packets,
        }
    }

    fn tick(k: u64, drops: Vec<DropRecord>) -> Tick {
        Tick::new(k, (k * 1000, Vec::new()), (k * 1000 + 20, Vec::new())).with_drops(drops)
    }

    fn name(addr: Ipv4Addr) -> Option<String> {
        match addr.octets()[3] {
            2 => Some("worker-2".into()),
            3 => Some("worker-3".into()),
            _ => None,
        }
    }

    #[test]
    fn a_window_counts_what_was_dropped_between_its_ticks() {
        let start = tick(
            10,
            vec![
                record(2, Direction::Egress, "NETFILTER_DROP", 100),
                record(3, Direction::Ingress, "QDISC_DROP", 7),
            ],
        );
        let end = tick(
            20,
            vec![
                record(2, Direction::Egress, "NETFILTER_DROP", 137),
                record(3, Direction::Ingress, "QDISC_DROP", 7),
                record(3, Direction::Egress, "NO_SOCKET", 4),
                // No node's, or a stranger's: not about a pair.
                record(0, Direction::Egress, "NETFILTER_DROP", 50),
                record(9, Direction::Egress, "NETFILTER_DROP", 50),
                // Node to node outside a tunnel: its sockets', not ours.
                DropRecord {
                    overlay: Overlay::None,
                    ..record(2, Direction::Ingress, "TCP_OLD_ACK", 5)
                },
            ],
        );
        let (rows, left_out) = window("worker-1", (&start, &end), &mut name, &|_| true, 10);
        assert_eq!(left_out, 0);
        let got: Vec<(&str, Direction, &str, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.peer_node.as_str(),
                    r.direction,
                    r.reason.as_str(),
                    r.packets,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("worker-2", Direction::Egress, "NETFILTER_DROP", 37),
                ("worker-3", Direction::Egress, "NO_SOCKET", 4),
            ]
        );
        // Only the asked peer, and the largest one other.
        let (rows, left_out) = window(
            "worker-1",
            (&start, &end),
            &mut name,
            &|p| p == "worker-3",
            0,
        );
        assert_eq!((rows.len(), left_out), (1, 1));
        assert_eq!(rows[0].peer_node, "worker-3");
    }

    #[test]
    fn loss_inside_a_node_is_what_it_dropped_against_what_it_exchanged() {
        let start = tick(
            10,
            vec![record(2, Direction::Egress, "NETFILTER_DROP", 100)],
        );
        let end = tick(
            20,
            vec![
                record(2, Direction::Egress, "NETFILTER_DROP", 150),
                record(3, Direction::Ingress, "QDISC_DROP", 5),
                record(3, Direction::Ingress, REFUSED, 7),
                // The node's own sockets at work: not loss.
                record(3, Direction::Ingress, "TCP_CLOSE", 3),
                record(2, Direction::Egress, "SOCKET_RCVBUFF", 3),
            ],
        );
        let exchanged = BTreeMap::from([
            (("worker-2".to_owned(), Direction::Egress), 950),
            (("worker-3".to_owned(), Direction::Ingress), 95),
        ]);
        let rows = in_node_rows("worker-1", (&start, &end), &mut name, &exchanged, 5.0);
        let got: Vec<(&str, &str, u64, u64, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.node.as_str(),
                    r.peer_node.as_str(),
                    r.sent,
                    r.lost,
                    r.refused,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                // Sent towards worker-2: 950 left, 50 dropped on the way.
                ("worker-1", "worker-2", 1000, 50, 0),
                // From worker-3: 95 arrived, 5 dropped inside, 7 refused.
                ("worker-3", "worker-1", 100, 5, 7),
            ]
        );
        assert!(rows.iter().all(|r| r.signal == Signal::InNode));
    }

    #[test]
    fn drops_behind_a_row_are_the_senders_outgoing_and_the_receivers_incoming() {
        let row = LossRow {
            node: "worker-1".into(),
            peer_node: "worker-2".into(),
            overlay: Overlay::Legacy,
            src_net: Net::Legacy,
            dst_net: Net::Legacy,
            signal: Signal::Delivery,
            sent: 1000,
            lost: 50,
            refused: 0,
            seconds: 10.0,
            mtu: None,
        };
        let drop = |node: &str, peer: &str, direction, overlay, reason: &str, packets| DropRow {
            node: node.into(),
            peer_node: peer.into(),
            direction,
            overlay,
            src_net: Net::Legacy,
            dst_net: Net::Legacy,
            reason: reason.into(),
            packets,
        };
        let drops = [
            drop(
                "worker-1",
                "worker-2",
                Direction::Egress,
                Overlay::Native,
                "NETFILTER_DROP",
                37,
            ),
            drop(
                "worker-2",
                "worker-1",
                Direction::Ingress,
                Overlay::Legacy,
                "QDISC_DROP",
                3,
            ),
            // The other way: not behind this row.
            drop(
                "worker-1",
                "worker-2",
                Direction::Ingress,
                Overlay::Legacy,
                "NO_SOCKET",
                9,
            ),
            drop(
                "worker-2",
                "worker-1",
                Direction::Egress,
                Overlay::Legacy,
                "NO_SOCKET",
                9,
            ),
        ];
        let found = behind(&drops, &row);
        assert_eq!(found.len(), 2);
        assert_eq!(
            describe(&found, 3),
            "37 dropped on worker-1 by NETFILTER_DROP (outside a tunnel), 3 on worker-2 by \
             QDISC_DROP"
        );
        assert_eq!(
            describe(&found, 1),
            "37 dropped on worker-1 by NETFILTER_DROP (outside a tunnel), 3 more for other \
             reasons"
        );
    }
}
