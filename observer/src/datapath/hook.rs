//! Which programs go on which interface.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Kind of interface crossover observes; each has an ingress and an egress
/// program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// The node's NIC, where tunnels are on the wire.
    Underlay,
    /// `flannel.1`.
    OverlayLegacy,
    /// `cilium_vxlan`, `cilium_geneve`.
    OverlayCilium,
    /// `cilium_host`.
    Host,
    /// Host side of a pod's veth: `veth*`, `lxc*`.
    Pod,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Underlay,
        Hook::OverlayLegacy,
        Hook::OverlayCilium,
        Hook::Host,
        Hook::Pod,
    ];

    /// (ingress, egress) program names in the eBPF object.
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

    /// The hook an interface gets from its name alone, as the CNIs name
    /// them. The underlay has no fixed name and must be given.
    pub fn for_interface(name: &str) -> Option<Hook> {
        match name {
            "flannel.1" => Some(Hook::OverlayLegacy),
            "cilium_vxlan" | "cilium_geneve" => Some(Hook::OverlayCilium),
            "cilium_host" => Some(Hook::Host),
            _ if name.starts_with("veth") || name.starts_with("lxc") => Some(Hook::Pod),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Hook::Underlay => "underlay",
            Hook::OverlayLegacy => "overlay-legacy",
            Hook::OverlayCilium => "overlay-cilium",
            Hook::Host => "host",
            Hook::Pod => "pod",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Hook {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hook::ALL
            .into_iter()
            .find(|h| h.label() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Hook::ALL.iter().map(|h| h.label()).collect();
                format!("unknown hook {s:?}; expected one of {}", known.join(", "))
            })
    }
}

/// `NAME=HOOK`, or a NAME whose hook its name tells (`--iface`).
pub fn parse_iface(arg: &str) -> std::result::Result<(String, Hook), String> {
    let (name, hook) = match arg.split_once('=') {
        Some((name, hook)) => (name, hook.parse::<Hook>()?),
        None => {
            let hook = Hook::for_interface(arg).ok_or_else(|| {
                format!("cannot tell the hook of {arg:?} from its name; write {arg}=underlay (or another hook)")
            })?;
            (arg, hook)
        }
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok((name.to_owned(), hook))
}
