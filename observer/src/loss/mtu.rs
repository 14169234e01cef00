//! An MTU black hole: large packets of a node pair lost on one overlay
//! while small ones pass, with no ICMP "fragmentation needed" to tell the
//! sender (a hop with a smaller MTU that drops silently, or that ICMP
//! filtered). The large probes ([`crate::probe::Probe::Mtu`]) measure it;
//! their rows ([`super::Signal::Mtu`]) carry what they know of the path's
//! MTU, and the gate and the report name it with the size that fits.
//!
//! The same rows carry the ICMP "fragmentation needed" the node's kernel
//! saw about its real traffic on the pair and overlay
//! (`observer-ebpf/src/frag.rs`): a router's about its tunnel packets, its
//! own to its pods about theirs ([`traffic`], [`join`]). Those are path-MTU
//! discovery at work, evidence of where the MTU lies, never loss.
use std::{collections::BTreeMap, net::Ipv4Addr};

use observer_ebpf::{Net, Overlay};
use serde::{Deserialize, Serialize};

use super::{LossRow, Signal, dropped::DropRow, ring::Tick};

/// The kernel's reason for a packet over the MTU of the device it was
/// routed to, DF set (or GSO that cannot be segmented): evidence of an
/// MTU problem on the node that dropped it.
pub const PKT_TOO_BIG: &str = "PKT_TOO_BIG";

/// What the large probes of one series know of their path's MTU (IPv4
/// packet sizes, headers included): the size they are sent at, the
/// largest the ladder saw pass while that size was lost, and what ICMP
/// "fragmentation needed" said, to them and to the node's real traffic.
/// Serialised in the loss rows (`mtu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathMtu {
    /// The size of the large probes: the route's MTU towards the target;
    /// 0 when none went (a row of the traffic's ICMP alone).
    pub probed: u32,
    /// The largest packet the ladder saw answered while `probed` was
    /// lost; none while `probed` passes or before the ladder ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fits: Option<u32>,
    /// The largest packet the path takes by ICMP "fragmentation needed"
    /// (PMTU discovery working: not a black hole), as an overlay packet's
    /// size: the next-hop MTU of the last that answered a large probe, or
    /// of the latest about the node's traffic less its tunnel's headers
    /// (a router's says the wire's size), whichever is smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_next_hop: Option<u32>,
    /// ICMP "fragmentation needed" errors: those that answered the large
    /// probes, in total, and those about the node's traffic on the pair
    /// and overlay, over the window.
    #[serde(default)]
    pub icmp_frag_needed: u64,
}

/// The smaller of two sizes either may lack.
pub fn least(x: Option<u32>, y: Option<u32>) -> Option<u32> {
    match (x, y) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl PathMtu {
    /// What two rows' paths have in common, summed over pairs: the
    /// smallest probed size and the smallest that fits.
    pub fn merge(a: Option<PathMtu>, b: Option<PathMtu>) -> Option<PathMtu> {
        // 0 is "not probed", not a size.
        let probed = |m: PathMtu| (m.probed != 0).then_some(m.probed);
        match (a, b) {
            (Some(a), Some(b)) => Some(PathMtu {
                probed: least(probed(a), probed(b)).unwrap_or(0),
                fits: least(a.fits, b.fits),
                icmp_next_hop: least(a.icmp_next_hop, b.icmp_next_hop),
                icmp_frag_needed: a.icmp_frag_needed + b.icmp_frag_needed,
            }),
            (a, b) => a.or(b),
        }
    }
}

/// What this node's kernel counted of ICMP "fragmentation needed" about
/// its own packets between two ticks' early reads, per peer node and
/// overlay, both hops together: the messages, and the smallest size the
/// latest message of each hop said fits. Paths with no message in the
/// window, and peers `name` does not know, are left out. O(nodes).
pub fn traffic(
    (start, end): (&Tick, &Tick),
    name: &mut dyn FnMut(Ipv4Addr) -> Option<String>,
) -> BTreeMap<(String, Overlay), PathMtu> {
    let mut out: BTreeMap<(String, Overlay), PathMtu> = BTreeMap::new();
    for path in &end.frag_needed {
        // A counter that went backwards (map recreated) counts from zero.
        let before = start.frag_messages(&path.key());
        let n = path.messages.checked_sub(before).unwrap_or(path.messages);
        if n == 0 {
            continue;
        }
        let Some(peer) = name(path.peer) else {
            continue;
        };
        let m = out.entry((peer, path.overlay)).or_default();
        m.icmp_frag_needed += n;
        m.icmp_next_hop = least(m.icmp_next_hop, path.fits());
    }
    out
}

/// Joins [`traffic`] into `node`'s rows: the mtu row of each pair and
/// overlay (the large probes') takes the messages and the smaller size;
/// a pair and overlay without one gets a row of its own, host to host
/// as the probes' are, with nothing sent or lost: the messages are the
/// path's MTU found, not loss. So the mtu signal is one row per pair and
/// overlay whichever told.
pub fn join(
    rows: &mut Vec<LossRow>,
    node: &str,
    traffic: BTreeMap<(String, Overlay), PathMtu>,
    seconds: f64,
) {
    for ((peer, overlay), seen) in traffic {
        let probes = rows.iter_mut().find(|r| {
            r.signal == Signal::Mtu && r.node == node && r.peer_node == peer && r.overlay == overlay
        });
        match probes {
            Some(row) => {
                let m = row.mtu.get_or_insert_with(PathMtu::default);
                m.icmp_frag_needed += seen.icmp_frag_needed;
                m.icmp_next_hop = least(m.icmp_next_hop, seen.icmp_next_hop);
            }
            None => rows.push(LossRow {
                node: node.to_owned(),
                peer_node: peer,
                overlay,
                src_net: Net::Host,
                dst_net: Net::Host,
                signal: Signal::Mtu,
                sent: 0,
                lost: 0,
                refused: 0,
                seconds,
                mtu: Some(seen),
            }),
        }
    }
}

/// How a lossy mtu row reads to an SRE once the ladder confirmed the
/// black hole: "MTU black hole on worker-1 -> worker-2, cilium overlay:
/// 1450-byte packets lost, 1400 pass". None while no size that fits is
/// known: large probes lost with no smaller size seen to pass instead are
/// loss, not yet an MTU's.
pub fn describe(row: &LossRow) -> Option<String> {
    let m = row.mtu?;
    let fits = m.fits?;
    let mut out = format!(
        "MTU black hole on {} -> {}, {} overlay: {}-byte packets lost, {fits} pass",
        row.node, row.peer_node, row.overlay, m.probed
    );
    if m.icmp_frag_needed > 0 {
        out += &format!(
            " ({} ICMP fragmentation-needed seen, next-hop MTU {})",
            m.icmp_frag_needed,
            m.icmp_next_hop.unwrap_or(0)
        );
    }
    Some(out)
}

/// A lossy mtu row as the gate's halt message and the report say it: its
/// description if the black hole is confirmed, then the kernel's
/// `PKT_TOO_BIG` drops on either node of the pair, that way (the only
/// reason that is an MTU's), as [`super::dropped::describe`] says them.
pub fn why(row: &LossRow, drops: &[DropRow]) -> String {
    let mut behind = super::dropped::behind(drops, row);
    behind.retain(|d| d.reason == PKT_TOO_BIG);
    let kernel = super::dropped::describe(&behind, 3);
    match describe(row) {
        Some(named) if kernel.is_empty() => named,
        Some(named) => format!("{named}; the kernel: {kernel}"),
        None => kernel,
    }
}

/// What ICMP "fragmentation needed" said of `row`'s path, for a row of
/// another signal: the messages and sizes of the mtu row of the same
/// node pair and overlay in `rows` (the same reading's). Evidence that
/// the row's loss is an MTU's, which the kernel's own drop reason may not
/// say: a tunnel packet over the path MTU it learnt is dropped as
/// `NOT_SPECIFIED`. None without a message about the path.
pub fn told(row: &LossRow, rows: &[LossRow]) -> Option<PathMtu> {
    if row.signal == Signal::Mtu {
        return None;
    }
    rows.iter()
        .find(|r| {
            r.signal == Signal::Mtu
                && r.node == row.node
                && r.peer_node == row.peer_node
                && r.overlay == row.overlay
        })
        .and_then(|r| r.mtu)
        .filter(|m| m.icmp_frag_needed > 0)
}

/// How [`told`] reads in a halt message, a report and the loss table's
/// footer: "2 ICMP fragmentation-needed about this path: overlay packets
/// up to 1350 bytes fit".
pub fn say_told(m: &PathMtu) -> String {
    let n = m.icmp_frag_needed;
    match m.icmp_next_hop {
        Some(fits) => format!(
            "{n} ICMP fragmentation-needed about this path: overlay packets up to {fits} bytes fit"
        ),
        None => format!("{n} ICMP fragmentation-needed about this path (no MTU given)"),
    }
}

#[cfg(test)]
mod tests {
    use observer_ebpf::{Direction, MtuHop, Net, Overlay};

    use super::*;
    use crate::{datapath::FragRecord, loss::Signal};

    fn row(node: &str, peer: &str, mtu: Option<PathMtu>) -> LossRow {
        LossRow {
            node: node.into(),
            peer_node: peer.into(),
            overlay: Overlay::Cilium,
            src_net: Net::Host,
            dst_net: Net::Host,
            signal: Signal::Mtu,
            sent: 5,
            lost: 5,
            refused: 0,
            seconds: 10.0,
            mtu,
        }
    }

    fn drop(node: &str, peer: &str, direction: Direction, reason: &str) -> DropRow {
        DropRow {
            node: node.into(),
            peer_node: peer.into(),
            direction,
            overlay: Overlay::Cilium,
            src_net: Net::Host,
            dst_net: Net::Host,
            reason: reason.into(),
            packets: 3,
        }
    }

    #[test]
    fn an_mtu_row_is_named_with_the_size_that_fits_and_its_evidence() {
        let known = PathMtu {
            probed: 1450,
            fits: Some(1400),
            ..PathMtu::default()
        };
        let r = row("worker-1", "worker-2", Some(known));
        assert_eq!(
            describe(&r).unwrap(),
            "MTU black hole on worker-1 -> worker-2, cilium overlay: 1450-byte packets lost, 1400 pass"
        );
        let drops = [
            drop("worker-2", "worker-1", Direction::Ingress, PKT_TOO_BIG),
            drop("worker-1", "worker-2", Direction::Egress, "NETFILTER_DROP"),
            // The other way: not this row's.
            drop("worker-1", "worker-2", Direction::Ingress, PKT_TOO_BIG),
        ];
        let why = why(&r, &drops);
        assert!(
            why.ends_with("; the kernel: 3 dropped on worker-2 by PKT_TOO_BIG"),
            "{why}"
        );
        let searching = PathMtu {
            fits: None,
            ..known
        };
        // No size seen to pass: loss, not named an MTU's; the kernel's
        // PKT_TOO_BIG drops still said.
        assert_eq!(describe(&row("a", "b", Some(searching))), None);
        assert_eq!(describe(&row("a", "b", None)), None);
        let unconfirmed = row("worker-1", "worker-2", Some(searching));
        assert_eq!(
            super::why(&unconfirmed, &drops),
            "3 dropped on worker-2 by PKT_TOO_BIG"
        );
    }

    #[test]
    fn sums_keep_the_smallest_sizes() {
        let a = PathMtu {
            probed: 1450,
            fits: Some(1400),
            icmp_frag_needed: 1,
            ..PathMtu::default()
        };
        let b = PathMtu {
            probed: 1500,
            fits: None,
            icmp_next_hop: Some(1300),
            icmp_frag_needed: 2,
        };
        let m = PathMtu::merge(Some(a), Some(b)).unwrap();
        assert_eq!(
            (m.probed, m.fits, m.icmp_next_hop),
            (1450, Some(1400), Some(1300))
        );
        assert_eq!(m.icmp_frag_needed, 3);
        assert_eq!(PathMtu::merge(None, Some(a)), Some(a));
        assert_eq!(PathMtu::merge(None, None), None);
    }

    fn path(peer: u8, overlay: Overlay, hop: MtuHop, messages: u64, mtu: (u32, u32)) -> FragRecord {
        FragRecord {
            peer: Ipv4Addr::new(10, 0, 0, peer),
            overlay,
            hop,
            messages,
            next_hop_mtu: mtu.0,
            overhead: mtu.1,
            refused_len: 1500,
        }
    }

    fn tick(k: u64, paths: Vec<FragRecord>) -> Tick {
        Tick::new(k, (k * 1000, Vec::new()), (k * 1000 + 20, Vec::new())).with_frag_needed(paths)
    }

    fn names(addr: Ipv4Addr) -> Option<String> {
        // 10.0.0.9 is no node.
        (addr.octets()[3] < 9).then(|| format!("worker-{}", addr.octets()[3]))
    }

    /// The window's messages per pair and overlay, both hops together,
    /// with the smallest size the latest of each says fits; paths that
    /// said nothing in the window, and no node's, left out.
    #[test]
    fn the_traffics_messages_are_counted_over_the_window() {
        let start = tick(
            10,
            vec![
                path(1, Overlay::Cilium, MtuHop::Wire, 5, (1400, 50)),
                path(2, Overlay::Legacy, MtuHop::Node, 7, (1300, 0)),
            ],
        );
        let end = tick(
            20,
            vec![
                path(1, Overlay::Cilium, MtuHop::Wire, 8, (1400, 50)),
                path(1, Overlay::Cilium, MtuHop::Node, 2, (1380, 0)),
                path(2, Overlay::Legacy, MtuHop::Node, 7, (1300, 0)),
                path(9, Overlay::Cilium, MtuHop::Wire, 4, (1400, 50)),
            ],
        );
        let seen = traffic((&start, &end), &mut names);
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![(
                ("worker-1".to_owned(), Overlay::Cilium),
                PathMtu {
                    probed: 0,
                    fits: None,
                    icmp_next_hop: Some(1350),
                    icmp_frag_needed: 5,
                }
            )]
        );
        // A map recreated since the start counts from zero.
        let reset = tick(21, vec![path(2, Overlay::Legacy, MtuHop::Node, 3, (0, 0))]);
        let seen = traffic((&start, &reset), &mut names);
        let m = seen[&("worker-2".to_owned(), Overlay::Legacy)];
        // A message without an MTU (a router before RFC 1191) says no size.
        assert_eq!((m.icmp_frag_needed, m.icmp_next_hop), (3, None));
    }

    /// The large probes' row of a pair and overlay takes the traffic's
    /// messages; a pair and overlay without one gets its own row, with
    /// nothing lost, and is named nothing.
    #[test]
    fn the_traffics_messages_join_the_pairs_mtu_row() {
        let probes = PathMtu {
            probed: 1450,
            icmp_next_hop: Some(1400),
            icmp_frag_needed: 1,
            ..PathMtu::default()
        };
        let mut rows = vec![row("worker-0", "worker-1", Some(probes))];
        let seen = |fits, n| PathMtu {
            icmp_next_hop: Some(fits),
            icmp_frag_needed: n,
            ..PathMtu::default()
        };
        let traffic = BTreeMap::from([
            (("worker-1".to_owned(), Overlay::Cilium), seen(1350, 4)),
            (("worker-2".to_owned(), Overlay::Legacy), seen(1300, 2)),
        ]);
        join(&mut rows, "worker-0", traffic, 10.0);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].mtu,
            Some(PathMtu {
                icmp_next_hop: Some(1350),
                icmp_frag_needed: 5,
                ..probes
            })
        );
        let own = &rows[1];
        assert_eq!(
            (
                own.peer_node.as_str(),
                own.overlay,
                own.signal,
                own.sent,
                own.lost
            ),
            ("worker-2", Overlay::Legacy, Signal::Mtu, 0, 0)
        );
        assert_eq!(own.mtu, Some(seen(1300, 2)));
        assert_eq!(describe(own), None);
        // Summed with a probed row, the unprobed one's 0 is no size.
        let sum = PathMtu::merge(rows[0].mtu, own.mtu).unwrap();
        assert_eq!((sum.probed, sum.icmp_next_hop), (1450, Some(1300)));
    }

    /// A row of another signal on the same pair and overlay is told what
    /// the mtu row's ICMP said; other pairs, other overlays and an mtu
    /// row without a message tell nothing.
    #[test]
    fn another_signals_row_is_told_its_paths_icmp() {
        let said = PathMtu {
            icmp_next_hop: Some(1350),
            icmp_frag_needed: 2,
            ..PathMtu::default()
        };
        let rows = vec![
            row("worker-1", "worker-2", Some(said)),
            row("worker-1", "worker-3", Some(PathMtu::default())),
        ];
        let lossy = |peer: &str, signal, overlay| LossRow {
            signal,
            overlay,
            ..row("worker-1", peer, None)
        };
        let m = told(&lossy("worker-2", Signal::InNode, Overlay::Cilium), &rows).unwrap();
        assert_eq!(
            say_told(&m),
            "2 ICMP fragmentation-needed about this path: overlay packets up to 1350 bytes fit"
        );
        assert_eq!(
            told(&lossy("worker-2", Signal::InNode, Overlay::Legacy), &rows),
            None
        );
        assert_eq!(
            told(&lossy("worker-3", Signal::Delivery, Overlay::Cilium), &rows),
            None
        );
        assert_eq!(told(&rows[0], &rows), None, "an mtu row says it itself");
        let silent = PathMtu {
            icmp_next_hop: None,
            ..said
        };
        assert_eq!(
            say_told(&silent),
            "2 ICMP fragmentation-needed about this path (no MTU given)"
        );
    }
}
