//! A node's blind hooks, as a reading carries them: hooks where another
//! program runs before crossover's (docs/hooks.md), so what they count is
//! not what crossed them. Bounded whatever the number of pod veths: a
//! count per hook kind and direction, and the first few named.
use std::fmt;

use observer_ebpf::Direction;
use serde::{Deserialize, Serialize};

use crate::datapath::{Hook, HookOrder};

/// Blind hooks named one by one; the rest are only counted.
pub const MAX_NAMED: usize = 5;

/// How many hooks of one kind and direction are blind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindCount {
    pub hook: Hook,
    pub direction: Direction,
    pub blind: u64,
}

/// One blind hook, named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindHook {
    pub iface: String,
    pub hook: Hook,
    pub direction: Direction,
    /// Kernel ids of the programs that run first (0: a filter without a
    /// program, or none could be read).
    pub ahead: Vec<u32>,
}

/// One node's blind hooks: empty when every hook sees first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindHooks {
    /// Only kinds and directions with a blind hook.
    pub counts: Vec<BlindCount>,
    /// The first [`MAX_NAMED`], in the order checked.
    pub named: Vec<BlindHook>,
}

impl BlindHooks {
    /// The blind hooks of one order check.
    pub fn of<'a>(order: impl IntoIterator<Item = &'a HookOrder>) -> BlindHooks {
        BlindHooks::of_hooks(
            order
                .into_iter()
                .filter(|o| o.is_blind())
                .map(|o| BlindHook {
                    iface: o.iface.clone(),
                    hook: o.hook,
                    direction: o.direction,
                    ahead: o.ahead.clone(),
                }),
        )
    }

    /// Counted and the first few named, from every blind hook.
    pub fn of_hooks(hooks: impl IntoIterator<Item = BlindHook>) -> BlindHooks {
        let mut out = BlindHooks::default();
        for h in hooks {
            match out
                .counts
                .iter_mut()
                .find(|c| (c.hook, c.direction) == (h.hook, h.direction))
            {
                Some(c) => c.blind += 1,
                None => out.counts.push(BlindCount {
                    hook: h.hook,
                    direction: h.direction,
                    blind: 1,
                }),
            }
            if out.named.len() < MAX_NAMED {
                out.named.push(h);
            }
        }
        out.counts.sort_by_key(|c| (c.hook, c.direction));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.blind).sum()
    }

    /// Counted but not named.
    pub fn unnamed(&self) -> u64 {
        self.total().saturating_sub(self.named.len() as u64)
    }

    /// `3 pod hooks (ingress), 1 overlay-cilium hook (egress)`.
    pub fn counted(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|c| {
                let s = if c.blind == 1 { "" } else { "s" };
                format!("{} {} hook{s} ({})", c.blind, c.hook, c.direction)
            })
            .collect();
        counts.join(", ")
    }

    /// True when an underlay hook is blind: then no loss figure of the
    /// node stands (every loss signal is counted there).
    pub fn underlay(&self) -> bool {
        self.counts.iter().any(|c| c.hook == Hook::Underlay)
    }
}

/// `3 pod hooks (ingress), 1 overlay-cilium hook (egress) blind; lxc12ab
/// ingress: programs [123] run first, ... and 2 more`.
impl fmt::Display for BlindHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} blind", self.counted())?;
        let named: Vec<String> = self
            .named
            .iter()
            .map(|h| {
                format!(
                    "{} {}: programs {:?} run first",
                    h.iface, h.direction, h.ahead
                )
            })
            .collect();
        if !named.is_empty() {
            write!(f, "; {}", named.join(", "))?;
        }
        if self.unnamed() > 0 {
            write!(f, " and {} more", self.unnamed())?;
        }
        Ok(())
    }
}

/// A node's blind hooks, as a cluster reading gathers them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBlind {
    pub node: String,
    #[serde(flatten)]
    pub hooks: BlindHooks,
}

impl NodeBlind {
    /// What it means for the node's rows: every loss signal is counted on
    /// the underlay, so blind pod, overlay or host hooks leave the rows
    /// standing and make the node's flows and connections incomplete.
    pub fn rows_affected(&self) -> &'static str {
        if self.hooks.underlay() {
            "every loss signal is counted on its underlay, which runs behind another program: \
             no figure of this node is what crossed its NIC (its agent refuses windowed readings)"
        } else {
            "its loss rows are counted on its underlay, which sees first; its flows and \
             connections through these hooks are incomplete"
        }
    }
}

impl fmt::Display for NodeBlind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}; their counts are not what crossed them",
            self.node, self.hooks
        )
    }
}

/// The body of a reading an agent refuses because its underlay is blind
/// (503): why, in words, and which hooks, typed, so a reader names them
/// as it names any node's blind hooks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindRefusal {
    pub version: u32,
    pub error: String,
    pub blind: NodeBlind,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(iface: &str, hook: Hook, direction: Direction, blind: bool) -> HookOrder {
        let ahead = if blind { vec![123] } else { vec![] };
        HookOrder::from_ahead(iface, hook, direction, Some(ahead))
    }

    #[test]
    fn thousands_of_blind_veths_are_counted_and_a_few_named() {
        let mut checked: Vec<HookOrder> = (0..3000)
            .map(|i| order(&format!("lxc{i:04}"), Hook::Pod, Direction::Ingress, true))
            .collect();
        checked.push(order("lxcfirst", Hook::Pod, Direction::Egress, false));
        checked.push(order(
            "cilium_vxlan",
            Hook::OverlayCilium,
            Direction::Egress,
            true,
        ));
        let blind = BlindHooks::of(&checked);
        assert_eq!(
            blind.counts,
            vec![
                BlindCount {
                    hook: Hook::OverlayCilium,
                    direction: Direction::Egress,
                    blind: 1
                },
                BlindCount {
                    hook: Hook::Pod,
                    direction: Direction::Ingress,
                    blind: 3000
                },
            ]
        );
        assert_eq!(blind.named.len(), MAX_NAMED);
        assert_eq!(blind.total(), 3001);
        assert!(!blind.underlay());
        let text = NodeBlind {
            node: "worker-1".into(),
            hooks: blind.clone(),
        }
        .to_string();
        assert!(
            text.starts_with(
                "worker-1: 1 overlay-cilium hook (egress), 3000 pod hooks (ingress) blind; \
                 lxc0000 ingress: programs [123] run first"
            ),
            "{text}"
        );
        assert!(text.ends_with("and 2996 more; their counts are not what crossed them"));
        // By name in JSON, and back.
        let json = serde_json::to_value(&blind).unwrap();
        assert_eq!(json["counts"][1]["hook"], "pod");
        assert_eq!(json["counts"][1]["direction"], "ingress");
        assert_eq!(serde_json::from_value::<BlindHooks>(json).unwrap(), blind);
        assert!(BlindHooks::of(&checked[3000..3001]).is_empty());
    }
}
