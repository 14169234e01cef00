//! An MTU black hole: large packets of a node pair lost on one overlay
//! while small ones pass, with no ICMP "fragmentation needed" to tell the
//! sender (a hop with a smaller MTU that drops silently, or that ICMP
//! filtered). The large probes ([`crate::probe::Probe::Mtu`]) measure it;
//! their rows ([`super::Signal::Mtu`]) carry what they know of the path's
//! MTU, and the gate and the report name it with the size that fits.
use serde::{Deserialize, Serialize};

use super::LossRow;

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

/// How a lossy mtu row reads to an SRE: "MTU black hole on worker-1 ->
/// worker-2, cilium overlay: 1450-byte packets lost, 1400 pass".
pub fn describe(row: &LossRow) -> String {
    let mut out = format!(
        "MTU black hole on {} -> {}, {} overlay",
        row.node, row.peer_node, row.overlay
    );
    match row.mtu {
        Some(m) if m.probed > 0 => {
            out += &format!(": {}-byte packets lost", m.probed);
            match m.fits {
                Some(fits) => out += &format!(", {fits} pass"),
                None => out += ", the size that fits not found yet",
            }
            if m.icmp_frag_needed > 0 {
                out += &format!(
                    " ({} ICMP fragmentation-needed seen, next-hop MTU {})",
                    m.icmp_frag_needed,
                    m.icmp_next_hop.unwrap_or(0)
                );
            }
        }
        _ => out += ": large packets lost while small ones pass",
    }
    out
}
