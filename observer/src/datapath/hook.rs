//! Which programs go on which interface: by its hook, and by how the
//! device frames packets.
use crate::iface::Hook;

/// What a device's packets start with at its TC hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Ethernet,
    /// No link-layer header (`tunl0`, TUN devices): the IPv4 header first.
    Ip,
}

impl Framing {
    /// From the device's `ARPHRD_*` type: Ethernet for Ethernet devices
    /// (veths, VXLAN, bridges), IP for the others crossover may meet
    /// (IP-in-IP tunnels, TUN, `none`).
    pub fn of_link_type(link_type: u16) -> Framing {
        if link_type == libc::ARPHRD_ETHER {
            Framing::Ethernet
        } else {
            Framing::Ip
        }
    }
}

impl Hook {
    /// (ingress, egress) program names in the eBPF object, for Ethernet
    /// devices.
    pub fn programs(self) -> [&'static str; 2] {
        match self {
            Hook::Underlay => ["crossover_underlay_ingress", "crossover_underlay_egress"],
            Hook::OverlayLegacy => [
                "crossover_overlay_legacy_ingress",
                "crossover_overlay_legacy_egress",
            ],
            Hook::OverlayCilium => [
                "crossover_overlay_cilium_ingress",
                "crossover_overlay_cilium_egress",
            ],
            Hook::Host => ["crossover_host_ingress", "crossover_host_egress"],
            Hook::Pod => ["crossover_pod_ingress", "crossover_pod_egress"],
        }
    }

    /// The programs for a device of `framing`; `None` where this hook has
    /// none for it (only tunnel devices come without Ethernet).
    pub fn programs_for(self, framing: Framing) -> Option<[&'static str; 2]> {
        match (framing, self) {
            (Framing::Ethernet, _) => Some(self.programs()),
            (Framing::Ip, Hook::OverlayLegacy) => Some([
                "crossover_overlay_legacy_l3_ingress",
                "crossover_overlay_legacy_l3_egress",
            ]),
            (Framing::Ip, Hook::OverlayCilium) => Some([
                "crossover_overlay_cilium_l3_ingress",
                "crossover_overlay_cilium_l3_egress",
            ]),
            (Framing::Ip, _) => None,
        }
    }

    /// Every program of this hook, for loading.
    pub fn all_programs(self) -> impl Iterator<Item = &'static str> {
        [Framing::Ethernet, Framing::Ip]
            .into_iter()
            .filter_map(move |framing| self.programs_for(framing))
            .flatten()
    }
}
