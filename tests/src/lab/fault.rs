//! Faults a migration meets: packets lost between two nodes on one overlay
//! (a firewall dropping UDP 8473, a congested link), a node pair cut off on
//! one overlay, an overlay MTU lowered on one node, an MTU black hole
//! between two nodes on one overlay.
//!
//! Loss is injected on the wire, in the underlay namespace, by an nftables
//! `netdev` ingress chain on the bridge port of the sending node. That is
//! after the sender's TC egress and before the receiver's TC ingress, where
//! crossover's two counts of the same packets differ by exactly what the
//! wire lost. Each fault has its own chain and counter: the counter is the
//! ground truth the tests compare crossover against.
use std::fmt;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    aws,
    exec::{batch, in_ns},
    plan::{self, Overlay},
    state::LabState,
};

const TABLE: &str = "crossover_lab";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Fault {
    /// Drops `percent` of the packets `from` sends `to` on `overlay`, at
    /// random; 100 is a blackhole.
    Loss {
        from: String,
        to: String,
        overlay: Overlay,
        percent: f64,
    },
    /// `node`'s own firewall drops `percent` of the tunnel packets it
    /// sends `peer` on `overlay` (postrouting, in the node's namespace):
    /// inside the node, before its NIC, where the kernel names the
    /// reason (`NETFILTER_DROP`) and the wire never sees them.
    Firewall {
        node: String,
        peer: String,
        overlay: Overlay,
        percent: f64,
    },
    /// `overlay`'s device MTU on `node` set to `mtu`. Not a black hole:
    /// the sender's kernel drops the first oversize packet with DF
    /// (`PKT_TOO_BIG`) and answers ICMP fragmentation needed, and the
    /// socket fits its packets from then on.
    Mtu {
        node: String,
        overlay: Overlay,
        mtu: u32,
    },
    /// An MTU black hole: a hop on the wire between `a` and `b` carries
    /// IPv4 packets up to `mtu` bytes and drops larger ones without a
    /// word (no ICMP: a router whose ICMP is filtered, a link of smaller
    /// MTU that drops what it cannot carry), both ways, for `overlay`'s
    /// tunnel only. Each sender still believes its path takes 1500 bytes,
    /// so encapsulated packets over `mtu` vanish: on a 1450-byte overlay,
    /// inner packets over `mtu` - 50 (VXLAN's outer IP, UDP, VXLAN and
    /// inner Ethernet headers). Matched on the IP length in the underlay
    /// namespace, on both nodes' bridge ports: the lab's nodes share one
    /// bridge, so no device MTU there could single out one pair and one
    /// overlay.
    MtuBlackhole {
        a: String,
        b: String,
        overlay: Overlay,
        mtu: u32,
    },
}

/// Outer headers of a VXLAN packet over the inner IP packet: outer IP
/// (20), UDP (8), VXLAN (8), the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Loss {
                from,
                to,
                overlay,
                percent,
            } if *percent >= 100.0 => {
                write!(
                    f,
                    "blackhole {from} -> {to} on the {} overlay",
                    overlay.label()
                )
            }
            Fault::Loss {
                from,
                to,
                overlay,
                percent,
            } => write!(
                f,
                "{percent}% loss {from} -> {to} on the {} overlay",
                overlay.label()
            ),
            Fault::Firewall {
                node,
                peer,
                overlay,
                percent,
            } => write!(
                f,
                "{node}'s firewall drops {percent}% of what it sends {peer} on the {} overlay",
                overlay.label()
            ),
            Fault::Mtu { node, overlay, mtu } => {
                write!(f, "MTU {mtu} on {node}'s {} overlay", overlay.label())
            }
            Fault::MtuBlackhole { a, b, overlay, mtu } => write!(
                f,
                "MTU black hole between {a} and {b} on the {} overlay: tunnel packets over {mtu} \
                 bytes dropped silently",
                overlay.label()
            ),
        }
    }
}

/// `numgen` sampling for `percent` (1/10000 resolution: 2% is 200 of
/// every 10000 at random); nothing at 100%.
fn sample(percent: f64) -> Result<String> {
    if !(percent > 0.0 && percent <= 100.0) {
        bail!("loss percent {percent} must be in (0, 100]");
    }
    let threshold = (percent * 100.0).round() as u32;
    Ok(if threshold >= 10_000 {
        String::new()
    } else {
        format!("numgen random mod 10000 < {threshold} ")
    })
}

/// The first counter's packets in `nft list` output.
fn counted(out: &str, what: &str) -> Result<u64> {
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| w[0] == "counter" && w[1] == "packets")
        .and_then(|w| w[2].parse().ok())
        .with_context(|| format!("no counter in {what}:\n{out}"))
}

/// Applies `fault` as fault number `id`.
pub fn apply(lab: &LabState, id: u32, fault: &Fault) -> Result<()> {
    match fault {
        Fault::Loss {
            from,
            to,
            overlay,
            percent,
        } => {
            let j = lab.node_index(from)?;
            let k = lab.node_index(to)?;
            if j == k {
                bail!("loss from {from} to itself: pick two nodes");
            }
            let sample = sample(*percent)?;
            // An untunnelled lab's legacy path is native, matched by the
            // receiver's MAC; a CrossSubnet lab's native path by its pods'
            // ranges (`Overlay::nft_path`).
            let untunnelled =
                !lab.legacy.tunnelled() && matches!(overlay, Overlay::Legacy | Overlay::Native);
            let path = if untunnelled {
                aws::native_wire_match(lab, j, k)?
            } else {
                overlay.nft_path(lab.legacy, j, k)
            };
            let script = format!(
                "table netdev {TABLE} {{}}\n\
                 table netdev {TABLE} {{\n\
                   chain fault{id} {{\n\
                     type filter hook ingress device \"{port}\" priority 0; policy accept;\n\
                     {path} {sample}counter drop comment \"{fault}\"\n\
                   }}\n\
                 }}\n",
                port = LabState::underlay_port(j),
            );
            batch(&lab.underlay_ns(), &["nft", "-f", "-"], &script)
        }
        Fault::Firewall {
            node,
            peer,
            overlay,
            percent,
        } => {
            let j = lab.node_index(node)?;
            let k = lab.node_index(peer)?;
            if node == peer {
                bail!("a firewall drop from {node} to itself: pick two nodes");
            }
            if matches!(overlay, Overlay::Legacy | Overlay::Native) && !lab.legacy.tunnelled() {
                bail!(
                    "{}'s pods are routed natively: no legacy tunnel packets to drop; use a loss fault",
                    lab.legacy
                );
            }
            let script = format!(
                "table ip {TABLE} {{}}\n\
                 table ip {TABLE} {{\n\
                   chain fault{id} {{\n\
                     type filter hook postrouting priority 0; policy accept;\n\
                     {path} {sample}counter drop comment \"{fault}\"\n\
                   }}\n\
                 }}\n",
                path = overlay.nft_path(lab.legacy, j, k),
                sample = sample(*percent)?,
            );
            batch(&lab.node_ns(node), &["nft", "-f", "-"], &script)
        }
        Fault::Mtu { node, overlay, mtu } => {
            let normal = normal_mtu(lab, *overlay);
            if !(68..=normal).contains(mtu) {
                bail!("MTU {mtu}: an overlay MTU fault lowers it, within 68..={normal}");
            }
            set_mtu(lab, node, *overlay, *mtu)
        }
        Fault::MtuBlackhole { a, b, overlay, mtu } => {
            let j = lab.node_index(a)?;
            let k = lab.node_index(b)?;
            if j == k {
                bail!("an MTU black hole between {a} and itself: pick two nodes");
            }
            // The underlay's own MTU is the bridge's 1500: a hole lowers it.
            if !(68..1500).contains(mtu) {
                bail!("MTU {mtu}: a black hole on the wire is within 68..1500 bytes");
            }
            if matches!(overlay, Overlay::Legacy | Overlay::Native) && !lab.legacy.tunnelled() {
                bail!(
                    "{}'s pods are routed natively: an MTU black hole here is for a tunnel \
                     (or a CrossSubnet lab's native path)",
                    lab.legacy
                );
            }
            let chain = |name: String, from: usize, to: usize| {
                format!(
                    "table netdev {TABLE} {{\n\
                       chain {name} {{\n\
                         type filter hook ingress device \"{port}\" priority 0; policy accept;\n\
                         {path} ip length > {mtu} counter drop comment \"{fault}\"\n\
                       }}\n\
                     }}\n",
                    port = LabState::underlay_port(from),
                    path = overlay.nft_path(lab.legacy, from, to),
                )
            };
            let script = format!(
                "table netdev {TABLE} {{}}\n{}{}",
                chain(format!("fault{id}"), j, k),
                chain(format!("fault{id}b"), k, j)
            );
            batch(&lab.underlay_ns(), &["nft", "-f", "-"], &script)
        }
    }
}

pub fn remove(lab: &LabState, id: u32, fault: &Fault) -> Result<()> {
    match fault {
        Fault::Loss { .. } => batch(
            &lab.underlay_ns(),
            &["nft", "-f", "-"],
            &format!("delete chain netdev {TABLE} fault{id}\n"),
        ),
        Fault::Firewall { node, .. } => batch(
            &lab.node_ns(node),
            &["nft", "-f", "-"],
            &format!("delete chain ip {TABLE} fault{id}\n"),
        ),
        Fault::Mtu { node, overlay, .. } => set_mtu(lab, node, *overlay, normal_mtu(lab, *overlay)),
        Fault::MtuBlackhole { .. } => batch(
            &lab.underlay_ns(),
            &["nft", "-f", "-"],
            &format!(
                "delete chain netdev {TABLE} fault{id}\ndelete chain netdev {TABLE} fault{id}b\n"
            ),
        ),
    }
}

/// Packets fault `id` has dropped so far (loss, firewall and MTU black
/// hole faults; a black hole's both ways).
pub fn drops(lab: &LabState, id: u32, fault: &Fault) -> Result<u64> {
    let chain = format!("fault{id}");
    if let Fault::MtuBlackhole { .. } = fault {
        let mut n = 0;
        for chain in [chain.clone(), format!("{chain}b")] {
            let out = in_ns(
                &lab.underlay_ns(),
                &["nft", "list", "chain", "netdev", TABLE, &chain],
            )?;
            n += counted(&out, &chain)?;
        }
        return Ok(n);
    }
    let out = match fault {
        Fault::Firewall { node, .. } => in_ns(
            &lab.node_ns(node),
            &["nft", "list", "chain", "ip", TABLE, &chain],
        )?,
        _ => in_ns(
            &lab.underlay_ns(),
            &["nft", "list", "chain", "netdev", TABLE, &chain],
        )?,
    };
    counted(&out, &chain)
}

/// The MTU an overlay's device has when no fault lowers it: `tunl0`'s
/// 1480 in an IPIP lab, VXLAN's 1450 otherwise.
fn normal_mtu(lab: &LabState, overlay: Overlay) -> u32 {
    match overlay {
        Overlay::Legacy => lab.legacy.mtu(),
        _ => plan::OVERLAY_MTU,
    }
}

fn set_mtu(lab: &LabState, node: &str, overlay: Overlay, mtu: u32) -> Result<()> {
    let device = match overlay {
        Overlay::Legacy if !lab.legacy.tunnelled() => {
            bail!(
                "{} routes natively: no legacy tunnel device to lower",
                lab.legacy
            )
        }
        Overlay::Legacy => lab.legacy.device(),
        Overlay::Cilium => "cilium_vxlan",
        Overlay::Geneve => {
            bail!("the lab has no Geneve device (no kernel module): no MTU to lower")
        }
        Overlay::Ipip => {
            bail!("the lab has no IP-in-IP device (no kernel module): no MTU to lower")
        }
        Overlay::Native => bail!("the native overlay has no device of its own: no MTU to lower"),
    };
    lab.node_index(node)?;
    in_ns(
        &lab.node_ns(node),
        &["ip", "link", "set", "dev", device, "mtu", &mtu.to_string()],
    )
    .map(drop)
}
