//! An MTU black hole: large packets of a node pair lost on one overlay
//! while small ones pass, with no ICMP "fragmentation needed" to tell the
//! sender (a hop with a smaller MTU that drops silently, or that ICMP
//! filtered). The large probes ([`crate::probe::Probe::Mtu`]) measure it;
//! their rows ([`super::Signal::Mtu`]) carry what they know of the path's
//! MTU, and the gate and the report name it with the size that fits.
use serde::{Deserialize, Serialize};

use super::{LossRow, dropped::DropRow};

/// The kernel's reason for a packet over the MTU of the device it was
/// routed to, DF set (or GSO that cannot be segmented): evidence of an
/// MTU problem on the node that dropped it.
pub const PKT_TOO_BIG: &str = "PKT_TOO_BIG";

/// What the large probes of one series know of their path's MTU (IPv4
/// packet sizes, headers included): the size they are sent at, the
/// largest the ladder saw pass while that size was lost, and what ICMP
/// "fragmentation needed" said. Serialised in the loss rows (`mtu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathMtu {
    /// The size of the large probes: the route's MTU towards the target.
    pub probed: u32,
    /// The largest packet the ladder saw answered while `probed` was
    /// lost; none while `probed` passes or before the ladder ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fits: Option<u32>,
    /// The next-hop MTU of the last ICMP "fragmentation needed" that
    /// answered one of them (PMTU discovery working: not a black hole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_next_hop: Option<u32>,
    /// ICMP "fragmentation needed" errors that answered them, in total.
    #[serde(default)]
    pub icmp_frag_needed: u64,
}

impl PathMtu {
    /// What two rows' paths have in common, summed over pairs: the
    /// smallest probed size and the smallest that fits.
    pub fn merge(a: Option<PathMtu>, b: Option<PathMtu>) -> Option<PathMtu> {
        let least = |x: Option<u32>, y: Option<u32>| match (x, y) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        match (a, b) {
            (Some(a), Some(b)) => Some(PathMtu {
                probed: a.probed.min(b.probed),
                fits: least(a.fits, b.fits),
                icmp_next_hop: least(a.icmp_next_hop, b.icmp_next_hop),
                icmp_frag_needed: a.icmp_frag_needed + b.icmp_frag_needed,
            }),
            (a, b) => a.or(b),
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

#[cfg(test)]
mod tests {
    use observer_ebpf::{Direction, Net, Overlay};

    use super::*;
    use crate::loss::Signal;

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
}
