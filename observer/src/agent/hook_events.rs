//! Kubernetes Events on the agent's Node when a hook turns blind (another
//! program runs before crossover's and re-asserting our place did not win)
//! and when it sees first again: `HookBlind` (Warning) and `HookSeen`
//! (Normal), as `kubectl describe node` and event exporters show them.
//!
//! Once per transition, not per check: what was told is remembered, and
//! only the difference is told again. Bounded whatever the number of pod
//! veths: one Event per reason per order check, counting the hooks by kind
//! and direction and naming the first few ([`BlindHooks`]), and at most
//! one per reason every [`MIN_SPACING`]; what changes in between is folded
//! into the next. A hook whose interface went away (a pod deleted) is
//! forgotten without an Event: it did not recover.
use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use kube::runtime::events::Reporter;
use observer_ebpf::Direction;
use tokio::sync::watch;

use crate::{
    cluster::{Cluster, events},
    datapath::{Hook, HookOrder},
    loss::blind::{BlindHook, BlindHooks},
};

pub const BLIND: &str = "HookBlind";
pub const SEEN: &str = "HookSeen";
/// Events of one reason come at most this often.
pub const MIN_SPACING: Duration = Duration::from_secs(30);

type Key = (String, Hook, Direction);

fn key(h: &HookOrder) -> Key {
    (h.iface.clone(), h.hook, h.direction)
}

/// One Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub reason: &'static str,
    pub warning: bool,
    pub note: String,
}

/// What the Events told so far.
#[derive(Debug, Default)]
pub struct Told {
    /// Hooks told blind and not told seen since.
    blind: BTreeSet<Key>,
    last_blind: Option<Instant>,
    last_seen: Option<Instant>,
}

impl Told {
    /// The Events one order check calls for, at most one per reason.
    pub fn step(&mut self, order: &[HookOrder], now: Instant) -> Vec<Notice> {
        let due = |last: Option<Instant>| last.is_none_or(|t| now.duration_since(t) >= MIN_SPACING);
        // Gone with their interface: neither blind nor seen any more. A set
        // of what is present, not a scan per hook: nodes have thousands.
        let present: BTreeSet<Key> = order.iter().map(key).collect();
        self.blind.retain(|k| present.contains(k));
        let mut out = Vec::new();
        if due(self.last_blind) {
            let newly: Vec<&HookOrder> = order
                .iter()
                .filter(|o| o.is_blind() && !self.blind.contains(&key(o)))
                .collect();
            if !newly.is_empty() {
                let hooks = BlindHooks::of(newly.iter().copied());
                out.push(Notice {
                    reason: BLIND,
                    warning: true,
                    note: format!(
                        "{hooks}: another program runs before crossover's and re-attaching \
                         in front did not win; it may end a packet's journey there, so what \
                         these hooks count is not what crossed them"
                    ),
                });
                self.blind.extend(newly.into_iter().map(key));
                self.last_blind = Some(now);
            }
        }
        if due(self.last_seen) {
            let seen: Vec<&HookOrder> = order
                .iter()
                .filter(|o| !o.is_blind() && self.blind.contains(&key(o)))
                .collect();
            if !seen.is_empty() {
                // Counted and named as blind ones are, by the same bound.
                let hooks = BlindHooks::of_hooks(seen.iter().map(|o| BlindHook {
                    iface: o.iface.clone(),
                    hook: o.hook,
                    direction: o.direction,
                    ahead: Vec::new(),
                }));
                out.push(Notice {
                    reason: SEEN,
                    warning: false,
                    note: format!("crossover runs first again on {}", seen_names(&hooks)),
                });
                for o in seen {
                    self.blind.remove(&key(o));
                }
                self.last_seen = Some(now);
            }
        }
        out
    }

    /// When a change held back by [`MIN_SPACING`] comes due, if one may.
    pub fn next_due(&self) -> Option<Instant> {
        [self.last_blind, self.last_seen]
            .into_iter()
            .flatten()
            .map(|t| t + MIN_SPACING)
            .max()
    }
}

/// `2 pod hooks (ingress): lxc1 ingress, lxc2 ingress`.
fn seen_names(hooks: &BlindHooks) -> String {
    let named: Vec<String> = hooks
        .named
        .iter()
        .map(|h| format!("{} {}", h.iface, h.direction))
        .collect();
    let more = match hooks.unnamed() {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!("{}: {}{more}", hooks.counted(), named.join(", "))
}

/// Publishes the Events the order checks call for, until the agent ends:
/// `orders` carries every check's result (only the newest is kept, so a
/// slow API server never queues them).
pub async fn follow(cluster: Arc<Cluster>, mut orders: watch::Receiver<Vec<HookOrder>>) {
    let node = cluster.node_name().to_owned();
    let reporter = Reporter {
        controller: "crossover-agent".into(),
        instance: Some(format!("crossover-agent-{node}")),
    };
    let client = cluster.client();
    let mut told = Told::default();
    loop {
        let order = orders.borrow_and_update().clone();
        for notice in told.step(&order, Instant::now()) {
            let found = cluster.node(&node);
            let regarding = events::node_reference(found.as_deref(), &node);
            let event = events::event(
                notice.reason,
                &notice.note,
                "CheckHookOrder",
                notice.warning,
            );
            match events::publish_new(&client, &reporter, &event, &regarding).await {
                Ok(()) => eprintln!(
                    "crossover: event {} on node {node}: {}",
                    notice.reason, notice.note
                ),
                Err(e) => eprintln!(
                    "crossover: could not record event {} on node {node}: {e}",
                    notice.reason
                ),
            }
        }
        let changed = match told.next_due() {
            Some(at) if at > Instant::now() => tokio::select! {
                changed = orders.changed() => changed,
                _ = tokio::time::sleep_until(at.into()) => Ok(()),
            },
            _ => orders.changed().await,
        };
        if changed.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::Placement;

    fn hook(iface: &str, hook: Hook, blind: bool) -> HookOrder {
        let ahead = if blind { vec![0] } else { vec![] };
        HookOrder::from_ahead(iface, hook, Direction::Egress, Some(ahead))
    }

    #[test]
    fn once_per_transition_aggregated_and_spaced() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut told = Told::default();
        let first = [hook("eth0", Hook::Underlay, false)];
        assert!(told.step(&first, at(0)).is_empty(), "all first: nothing");

        // 2,000 pod veths turn blind at once: one Event, counted and a few
        // named.
        let mut order: Vec<HookOrder> = (0..2000)
            .map(|i| hook(&format!("lxc{i:04}"), Hook::Pod, true))
            .collect();
        order.push(hook("eth0", Hook::Underlay, false));
        let notices = told.step(&order, at(1));
        assert_eq!(notices.len(), 1, "{notices:?}");
        let n = &notices[0];
        assert_eq!((n.reason, n.warning), (BLIND, true));
        assert!(
            n.note.starts_with(
                "2000 pod hooks (egress) blind; lxc0000 egress: programs [0] run first"
            ),
            "{}",
            n.note
        );
        assert!(n.note.contains("and 1995 more"), "{}", n.note);
        assert!(n.note.len() < events::MAX_NOTE, "{}", n.note.len());

        // Still blind at the next checks: not repeated.
        assert!(told.step(&order, at(11)).is_empty());
        assert!(told.step(&order, at(60)).is_empty());

        // One more turns blind within the spacing: held back, then told.
        order[0] = hook("eth0", Hook::Underlay, false);
        order.push(hook("cilium_vxlan", Hook::OverlayCilium, true));
        let now = at(62);
        let notices = told.step(&order, now);
        assert_eq!(notices.len(), 1, "spacing from at(1) is over: {notices:?}");
        assert!(
            notices[0]
                .note
                .starts_with("1 overlay-cilium hook (egress) blind")
        );
        order.push(hook("cilium_geneve", Hook::OverlayCilium, true));
        assert!(
            told.step(&order, at(70)).is_empty(),
            "within 30 s of the last"
        );
        assert_eq!(told.next_due(), Some(at(92)));
        let notices = told.step(&order, at(92));
        assert!(
            notices[0]
                .note
                .starts_with("1 overlay-cilium hook (egress) blind; cilium_geneve")
        );

        // lxc0000 was replaced by eth0 (gone): forgotten, not "seen". The
        // rest see first again: one HookSeen.
        for o in order.iter_mut() {
            o.placement = Placement::First;
            o.ahead.clear();
        }
        let notices = told.step(&order, at(100));
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!((notices[0].reason, notices[0].warning), (SEEN, false));
        assert!(
            notices[0].note.starts_with(
                "crossover runs first again on 2 overlay-cilium hooks (egress), 1999 pod hooks \
                 (egress): lxc0001 egress, lxc0002 egress"
            ),
            "{}",
            notices[0].note
        );
        assert!(told.step(&order, at(200)).is_empty(), "told once");
        // Blind again later: told again.
        order[1].placement = Placement::Blind;
        assert_eq!(told.step(&order, at(300))[0].reason, BLIND);
    }
}
