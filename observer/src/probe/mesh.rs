//! The probe mesh: what one node probes, and how often, so that its probes
//! cost a fixed budget of packets a second whatever the cluster's size (the
//! Pingmesh / NetNORAD pattern), while every node pair is still covered.
//!
//! * **Focus.** Every target of a node under migration (its overlay
//!   addresses and its probe pods, both networks) is probed steadily at
//!   `rate` (UDP and TCP each) by every peer, for the whole migration: a
//!   blackhole between it and any peer shows within the timeout plus one
//!   interval.
//! * **Rotation.** The other pairs. The nodes sit on a ring ordered by a
//!   hash of their name (the same ring on every node: it is made from the
//!   cluster's node list), and each node covers the `ceil((N-1)/2)` nodes
//!   after it. A probe and its answer cross the pair both ways, so every
//!   unordered pair has one end covering the other. When every peer fits
//!   in the budget at `rate`, a node covers every peer instead (small
//!   clusters keep the full mesh). Covered targets are probed steadily at
//!   `rate` when that fits the budget left after the focus; otherwise they
//!   are swept: visited one after the other at the pace the rest of the
//!   budget pays for, each once per rotation period, with both signals
//!   while that keeps the period within `period_goal`, with UDP alone
//!   (a quarter of the packets) beyond.
//!
//! **Packets.** The budget counts packets this node's prober sends. A UDP
//! probe is one datagram. A TCP probe that is answered sends three: the
//! SYN, the handshake's ACK, and the RST that closes it (zero linger: no
//! FIN exchange, no TIME_WAIT); unanswered it sends one SYN (two if the
//! kernel's one-second SYN retransmission beats the timeout); refused, one.
//! The plan counts three per TCP probe, the most one sends. A large
//! probe ([`Probe::Mtu`], the route's MTU with DF set) is one datagram;
//! the plan counts one for every target, though probe pods get none
//! ([`Target::takes`]): an upper bound. The MTU ladders it may start have
//! [`LADDER_SHARE`] of the budget. Answers are
//! sent by the peers' responders and count in nobody's budget; a node
//! answers about as many probes as it sends, and a node under migration
//! answers every peer's focus probes.
use std::{collections::BTreeSet, fmt, time::Duration};

use serde::Serialize;

use super::{
    prober::{Schedule, Sweep, Target},
    stats::Probe,
};
use crate::{Error, Result};

/// Packets a UDP probe sends: the datagram.
pub const UDP_PACKETS: f64 = 1.0;
/// Packets an answered TCP probe sends: SYN, ACK, RST.
pub const TCP_PACKETS: f64 = 3.0;
/// Probe packets a second per node, by default.
pub const DEFAULT_BUDGET: f64 = 200.0;
/// The most a budget may be: beyond, the sweep's visits come faster than
/// the prober's timers.
pub const MAX_BUDGET: f64 = 100_000.0;
/// Probes a second per target and signal of a node under migration.
pub const DEFAULT_RATE: f64 = 1.0;
/// Rotation periods up to this probe both signals; beyond, UDP alone. With
/// the timeout and a visit's jitter, a blackhole anywhere shows within a
/// minute.
pub const DEFAULT_PERIOD_GOAL: Duration = Duration::from_secs(50);
/// At most this share of the budget goes to steady focus probes: of a
/// focus list longer than that pays for, the rest joins the rotation.
pub const FOCUS_SHARE: f64 = 0.75;
/// This share of the budget is kept for the MTU ladders: when a node
/// pair's large probes are lost while its small ones pass, the prober
/// sends rounds of sizes between the two to find the one that fits
/// ([`super::prober::ladder`]), paced by a token bucket at this rate.
/// It comes out of the rotation's part, never the focus's; the plan's
/// probes and the ladders together stay within the budget.
pub const LADDER_SHARE: f64 = 0.1;

/// Packets one probe of `signal` may send.
pub fn packets(signal: Probe) -> f64 {
    match signal {
        Probe::Udp | Probe::Mtu => UDP_PACKETS,
        Probe::Tcp => TCP_PACKETS,
    }
}

/// Packets of one probe of each signal.
pub fn visit_packets(signals: &[Probe]) -> f64 {
    signals.iter().map(|s| packets(*s)).sum()
}

#[derive(Clone, Debug, PartialEq)]
pub struct MeshConfig {
    /// Probe packets a second this node may send, all included.
    pub budget: f64,
    /// Probes a second per target and signal of a node under migration;
    /// the most any target is probed at.
    pub rate: f64,
    pub signals: Vec<Probe>,
    pub period_goal: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            budget: DEFAULT_BUDGET,
            rate: DEFAULT_RATE,
            signals: Probe::ALL.to_vec(),
            period_goal: DEFAULT_PERIOD_GOAL,
        }
    }
}

impl MeshConfig {
    /// A budget must pay for one target at `rate`.
    pub fn validate(&self) -> Result<()> {
        if !(self.budget.is_finite() && self.budget > 0.0 && self.budget <= MAX_BUDGET) {
            return Err(Error::Probe(format!(
                "--probe-budget {}: expected more than 0 and at most {MAX_BUDGET} packets a second \
                 (--probe-rate 0 turns probing off)",
                self.budget
            )));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(Error::Probe(format!(
                "--probe-rate {}: expected a positive number of probes a second",
                self.rate
            )));
        }
        if self.signals.is_empty() {
            return Err(Error::Probe("no signal to probe with".into()));
        }
        let least = self.rate * visit_packets(&self.signals) / (1.0 - LADDER_SHARE);
        if self.budget < least {
            return Err(Error::Probe(format!(
                "--probe-budget {}: below {least:.1} packets a second, what one target costs at \
                 --probe-rate {} (a UDP probe is 1 packet, a TCP probe 3: SYN, ACK, RST, a large \
                 probe 1; {}% kept for MTU ladders)",
                self.budget,
                self.rate,
                LADDER_SHARE * 100.0
            )));
        }
        Ok(())
    }
}

/// Which peers a node covers, focus aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    /// Every peer: the budget pays for all of them at `rate`.
    All,
    /// The `ceil((N-1)/2)` nodes after this one on the ring.
    HalfRing,
}

/// How the budget is spent: what the agent prints and shows in /metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub budget: f64,
    pub rate: f64,
    /// Nodes on the ring, this one included.
    pub ring: usize,
    /// Peers with something to probe.
    pub peers: usize,
    pub coverage: Coverage,
    /// Peers in the rotation (covered, not under migration).
    pub covered_peers: usize,
    /// Peers under migration.
    pub focus: Vec<String>,
    /// Their targets probed steadily at `rate`.
    pub focus_targets: usize,
    pub focus_packets: f64,
    /// Targets in the rotation.
    pub rotation_targets: usize,
    /// True when the rotation's targets are probed steadily at `rate`,
    /// false when they are swept.
    pub rotation_steady: bool,
    #[serde(serialize_with = "signal_labels")]
    pub rotation_signals: Vec<Probe>,
    pub rotation_packets: f64,
    /// Packets a second kept for MTU ladders, sent only while a pair's
    /// large probes are lost and its small ones pass.
    pub ladder_packets: f64,
    /// Every rotation target is probed at least once within this.
    #[serde(serialize_with = "seconds")]
    pub period: Duration,
}

fn signal_labels<S: serde::Serializer>(signals: &[Probe], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(signals.iter().map(|s| s.label()))
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Summary {
    /// Packets a second the plan sends.
    pub fn packets(&self) -> f64 {
        self.focus_packets + self.rotation_packets + self.ladder_packets
    }

    /// Targets probed, focus and rotation.
    pub fn targets(&self) -> usize {
        self.focus_targets + self.rotation_targets
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let signals = |s: &[Probe]| {
            s.iter()
                .map(|s| match s {
                    Probe::Udp => "UDP",
                    Probe::Tcp => "TCP",
                    Probe::Mtu => "MTU",
                })
                .collect::<Vec<_>>()
                .join("+")
        };
        write!(
            f,
            "probe budget {} packets/s (a UDP probe 1 packet, a TCP probe 3: SYN, ACK, RST, a \
             large probe 1), {:.1} planned; ",
            self.budget,
            self.packets()
        )?;
        if self.focus.is_empty() {
            write!(f, "no node under migration; ")?;
        } else {
            write!(
                f,
                "under migration {}: {} targets at {}/s, {:.1} packets/s; ",
                self.focus.join(", "),
                self.focus_targets,
                self.rate,
                self.focus_packets
            )?;
        }
        let covered = match self.coverage {
            Coverage::All => "every peer".to_string(),
            Coverage::HalfRing => format!("half the ring of {} nodes", self.ring),
        };
        write!(
            f,
            "rotation: {} of {} peers ({covered}), {} targets, {}, {:.1} packets/s, ",
            self.covered_peers,
            self.peers,
            self.rotation_targets,
            signals(&self.rotation_signals),
            self.rotation_packets,
        )?;
        if self.rotation_steady {
            write!(f, "each at {}/s", self.rate)?;
        } else {
            write!(
                f,
                "swept: each target once every {:.1} s",
                self.period.as_secs_f64()
            )?;
        }
        write!(f, "; MTU ladders {:.1} packets/s", self.ladder_packets)
    }
}

/// What to probe, and how the budget is spent on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub schedule: Schedule,
    pub summary: Summary,
}

/// FNV-1a, 64 bits: a node's place on the ring, the same on every node
/// and every build.
pub fn ring_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The ring: `names` (duplicates once) by hash, then name.
pub fn ring<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ring: Vec<(u64, &str)> = names.into_iter().map(|n| (ring_hash(n), n)).collect();
    ring.sort_unstable();
    ring.dedup();
    ring.into_iter().map(|(_, n)| n).collect()
}

/// The nodes `local` covers on `ring`: the `ceil((N-1)/2)` after it, in
/// ring order. Empty when `local` is not on the ring.
pub fn half_ring<'a>(ring: &[&'a str], local: &str) -> Vec<&'a str> {
    let Some(at) = ring.iter().position(|n| *n == local) else {
        return Vec::new();
    };
    let n = ring.len();
    let k = (n - 1).div_ceil(2);
    (1..=k).map(|d| ring[(at + d) % n]).collect()
}

/// The cluster as the mesh sees it: the ring of its nodes and every
/// node's targets; any node's [`Mesh::plan`] from it.
pub struct Mesh<'a> {
    /// (hash, name), in ring order.
    ring: Vec<(u64, &'a str)>,
    /// Targets by ring position, each list in a fixed order.
    targets: Vec<Vec<&'a Target>>,
}

impl<'a> Mesh<'a> {
    /// `nodes`: the cluster's nodes; a target's node missing from them (a
    /// probe pod on a node not yet in the shape) is placed all the same.
    pub fn new(nodes: &[&'a str], targets: &'a [Target]) -> Self {
        let mut ring: Vec<(u64, &str)> = nodes
            .iter()
            .copied()
            .chain(targets.iter().map(|t| t.peer_node.as_str()))
            .map(|n| (ring_hash(n), n))
            .collect();
        ring.sort_unstable();
        ring.dedup();
        let mut by_position: Vec<Vec<&Target>> = vec![Vec::new(); ring.len()];
        for t in targets {
            let key = (ring_hash(&t.peer_node), t.peer_node.as_str());
            if let Ok(i) = ring.binary_search(&key) {
                by_position[i].push(t);
            }
        }
        for list in &mut by_position {
            list.sort_by_key(|t| (t.addr, t.port, t.overlay.label(), t.dst_net.label()));
            list.dedup();
        }
        Mesh {
            ring,
            targets: by_position,
        }
    }

    /// The plan of node `local` (on the ring or not: it is placed where its
    /// hash puts it), with `focus` the nodes under migration.
    pub fn plan(&self, local: &str, focus: &BTreeSet<String>, config: &MeshConfig) -> Plan {
        let len = self.ring.len();
        let key = (ring_hash(local), local);
        // Ring positions in order after this node, and the ring's size
        // with this node on it. A peer's distance is its index here + 1.
        let (start, skip, size) = match self.ring.binary_search(&key) {
            Ok(i) => (i + 1, Some(i), len),
            Err(i) => (i, None, len + 1),
        };
        let order = (0..len)
            .map(|j| (start + j) % len)
            .filter(|p| Some(*p) != skip);
        let k = size.saturating_sub(1).div_ceil(2);
        // (distance, name, targets) of every peer with something to probe.
        let peers: Vec<(usize, &str, &[&Target])> = order
            .enumerate()
            .map(|(j, p)| (j + 1, self.ring[p].1, self.targets[p].as_slice()))
            .filter(|(_, _, list)| !list.is_empty())
            .collect();

        let c = visit_packets(&config.signals);
        let steady_cost = |n: usize| n as f64 * config.rate * c;
        // The ladders' share comes out of the rotation's: the focus keeps
        // its own whole (FOCUS_SHARE + LADDER_SHARE < 1).
        let ladder_packets = LADDER_SHARE * config.budget;

        // Focus: steady, within its share of the budget.
        let focus_cap = (FOCUS_SHARE * config.budget / (config.rate * c)).floor() as usize;
        let mut focus_steady: Vec<Target> = Vec::new();
        let mut overflow: Vec<Target> = Vec::new();
        let mut focus_peers = Vec::new();
        let mut others = Vec::new();
        for &(distance, peer, list) in &peers {
            if !focus.contains(peer) {
                others.push((distance, list));
                continue;
            }
            focus_peers.push(peer.to_string());
            for t in list {
                if focus_steady.len() < focus_cap {
                    focus_steady.push((*t).clone());
                } else {
                    overflow.push((*t).clone());
                }
            }
        }
        let left = config.budget - ladder_packets - steady_cost(focus_steady.len());

        // Rotation: every peer if they all fit steadily, else half the
        // ring.
        let everyone = overflow.len() + others.iter().map(|(_, l)| l.len()).sum::<usize>();
        let coverage = if steady_cost(everyone) <= left {
            Coverage::All
        } else {
            others.retain(|(distance, _)| *distance <= k);
            Coverage::HalfRing
        };
        let covered_peers = others.len();
        let mut rotation = overflow;
        rotation.extend(
            others
                .iter()
                .flat_map(|(_, l)| l.iter().map(|t| (*t).clone())),
        );

        let (focus_targets, rotation_targets) = (focus_steady.len(), rotation.len());
        let mut steady = focus_steady;
        let (sweep, rotation_steady, rotation_signals, rotation_packets, period);
        if rotation.is_empty() || steady_cost(rotation.len()) <= left {
            rotation_steady = true;
            rotation_signals = config.signals.clone();
            rotation_packets = steady_cost(rotation.len());
            period = if rotation.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(1.0 / config.rate)
            };
            steady.extend(rotation);
            sweep = Sweep::default();
        } else {
            // Swept: the rest of the budget, both signals while the round
            // stays within the goal, UDP alone beyond.
            rotation_steady = false;
            let both = rotation.len() as f64 * c / left;
            rotation_signals = if both <= config.period_goal.as_secs_f64()
                || !config.signals.contains(&Probe::Udp)
            {
                config.signals.clone()
            } else {
                vec![Probe::Udp]
            };
            rotation_packets = left;
            sweep = Sweep {
                targets: rotation,
                rate: left / visit_packets(&rotation_signals),
                signals: rotation_signals.clone(),
            };
            period = sweep.period();
        }
        let summary = Summary {
            budget: config.budget,
            rate: config.rate,
            ring: size,
            peers: peers.len(),
            coverage,
            covered_peers,
            focus: focus_peers,
            focus_targets,
            focus_packets: steady_cost(focus_targets),
            rotation_targets,
            rotation_steady,
            rotation_signals,
            rotation_packets,
            ladder_packets,
            period,
        };
        Plan {
            schedule: Schedule {
                steady,
                sweep,
                ladder_rate: ladder_packets,
            },
            summary,
        }
    }
}

/// The plan of node `local`: `nodes` are the cluster's nodes (the ring),
/// `targets` every target it could probe (peers' overlay addresses and
/// probe pods), `focus` the nodes under migration. Targets of `local`
/// itself are not probed.
pub fn plan(
    local: &str,
    nodes: &[&str],
    targets: &[Target],
    focus: &BTreeSet<String>,
    config: &MeshConfig,
) -> Plan {
    let mut nodes = nodes.to_vec();
    nodes.push(local);
    Mesh::new(&nodes, targets).plan(local, focus, config)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, net::Ipv4Addr};

    use observer_ebpf::{Net, Overlay};

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:04}")).collect()
    }

    /// Two overlay addresses and a probe pod per node, as in a cluster
    /// half way through its migration.
    fn targets_of(nodes: &[String]) -> Vec<Target> {
        let mut out = Vec::new();
        for (i, name) in nodes.iter().enumerate() {
            let (hi, lo) = ((i / 256) as u8, (i % 256) as u8);
            for (overlay, net, addr) in [
                (
                    Overlay::Legacy,
                    Net::Host,
                    Ipv4Addr::new(10, 64 + hi, lo, 0),
                ),
                (
                    Overlay::Cilium,
                    Net::Host,
                    Ipv4Addr::new(10, 128 + hi, lo, 1),
                ),
                (
                    Overlay::Legacy,
                    Net::Legacy,
                    Ipv4Addr::new(10, 64 + hi, lo, 9),
                ),
            ] {
                out.push(Target {
                    peer_node: name.clone(),
                    overlay,
                    dst_net: net,
                    addr,
                    port: 9191,
                });
            }
        }
        out
    }

    fn plan_of(local: &str, nodes: &[String], focus: &[&str], config: &MeshConfig) -> Plan {
        let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let focus = focus.iter().map(|s| s.to_string()).collect();
        plan(local, &refs, &targets_of(nodes), &focus, config)
    }

    /// Peers a plan probes at all.
    fn probed(plan: &Plan) -> BTreeSet<String> {
        plan.schedule
            .steady
            .iter()
            .chain(&plan.schedule.sweep.targets)
            .map(|t| t.peer_node.clone())
            .collect()
    }

    /// Packets a second the schedule really asks the prober for.
    fn scheduled_packets(plan: &Plan, config: &MeshConfig) -> f64 {
        let s = &plan.schedule;
        s.steady.len() as f64 * config.rate * visit_packets(&config.signals)
            + s.ladder_rate
            + if s.sweep.targets.is_empty() {
                0.0
            } else {
                s.sweep.rate * visit_packets(&s.sweep.signals)
            }
    }

    #[test]
    fn every_pair_is_covered_within_the_period_and_the_budget_holds() {
        let config = MeshConfig::default();
        for n in [2, 3, 10, 1000, 5000] {
            let nodes = names(n);
            // names() numbers the nodes.
            let index = |name: &str| -> usize { name["node-".len()..].parse().unwrap() };
            let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let targets = targets_of(&nodes);
            // Every node's plan, on every core (5000 plans take a while
            // in a debug build): covers[i][j] is true when node i probes
            // node j.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let chunk = n.div_ceil(threads);
            let mesh = Mesh::new(&refs, &targets);
            let (mesh, config) = (&mesh, &config);
            let results: Vec<(Vec<Vec<bool>>, Duration, Summary)> = std::thread::scope(|scope| {
                let workers: Vec<_> = nodes
                    .chunks(chunk)
                    .map(|mine| {
                        scope.spawn(move || {
                            let mut covers = Vec::new();
                            let mut worst = Duration::ZERO;
                            let mut first = None;
                            for me in mine {
                                let p = mesh.plan(me, &BTreeSet::new(), config);
                                let packets = scheduled_packets(&p, config);
                                assert!(
                                    packets <= config.budget + 1e-6,
                                    "N={n}: {packets} packets/s"
                                );
                                assert!((p.summary.packets() - packets).abs() < 1e-6);
                                let mut row = vec![false; n];
                                let mut probed: Vec<(usize, Ipv4Addr)> = Vec::new();
                                for t in p.schedule.steady.iter().chain(&p.schedule.sweep.targets) {
                                    assert_ne!(&t.peer_node, me, "{me} probes itself");
                                    let peer = index(&t.peer_node);
                                    row[peer] = true;
                                    probed.push((peer, t.addr));
                                }
                                // Every covered target is in the rotation once.
                                probed.sort_unstable();
                                probed.dedup();
                                assert_eq!(probed.len(), p.summary.targets());
                                worst = worst.max(p.summary.period);
                                first.get_or_insert(p.summary);
                                covers.push(row);
                            }
                            (covers, worst, first.expect("a node"))
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            let worst = results.iter().map(|r| r.1).max().unwrap();
            let first = results[0].2.clone();
            let covers: Vec<Vec<bool>> = results.into_iter().flat_map(|r| r.0).collect();
            for i in 0..n {
                for j in i + 1..n {
                    assert!(
                        covers[i][j] || covers[j][i],
                        "N={n}: {} - {} covered by neither",
                        nodes[i],
                        nodes[j]
                    );
                }
            }
            // Every pair within a minute, jitter and timeout included, up
            // to 5000 nodes at the default budget.
            let jittered = worst.mul_f64(1.0 + 0.2) + Duration::from_secs(1);
            assert!(jittered <= Duration::from_secs(60), "N={n}: {worst:?}");
            eprintln!("N={n}: {first}");
        }
    }

    #[test]
    fn small_clusters_keep_the_full_mesh_large_ones_sweep_half_the_ring() {
        let config = MeshConfig::default();
        let p = plan_of("node-0000", &names(3), &[], &config);
        assert_eq!(p.summary.coverage, Coverage::All);
        assert!(p.summary.rotation_steady);
        assert_eq!(p.schedule.steady.len(), 6);
        assert_eq!(p.summary.period, Duration::from_secs(1));

        let p = plan_of("node-0000", &names(1000), &[], &config);
        assert_eq!(p.summary.coverage, Coverage::HalfRing);
        assert_eq!(p.summary.covered_peers, 500);
        assert!(!p.summary.rotation_steady);
        assert_eq!(p.schedule.sweep.targets.len(), 1500);
        assert_eq!(p.summary.rotation_signals, Probe::ALL.to_vec());
        assert_eq!(p.summary.ladder_packets, 20.0);
        // 1500 targets x 5 packets (UDP, TCP, large) over the 180
        // packets/s the ladders leave.
        assert!((p.summary.period.as_secs_f64() - 1500.0 * 5.0 / 180.0).abs() < 0.01);

        // 5000 nodes: UDP alone keeps the period under the goal.
        let p = plan_of("node-0000", &names(5000), &[], &config);
        assert_eq!(p.summary.rotation_signals, vec![Probe::Udp]);
        assert!(p.summary.period <= DEFAULT_PERIOD_GOAL, "{}", p.summary);
    }

    #[test]
    fn the_focus_node_is_probed_steadily_by_every_peer() {
        let config = MeshConfig::default();
        for n in [2, 3, 10, 1000, 5000] {
            let nodes = names(n);
            let focus = nodes[n / 2].clone();
            let focus_targets: HashSet<Target> = targets_of(&nodes)
                .into_iter()
                .filter(|t| t.peer_node == focus)
                .collect();
            // Every peer of a large cluster (and all of a small one).
            let step = (n / 97).max(1);
            for me in nodes.iter().step_by(step).filter(|me| **me != focus) {
                let p = plan_of(me, &nodes, &[&focus], &config);
                let steady: HashSet<Target> = p.schedule.steady.iter().cloned().collect();
                assert!(
                    focus_targets.is_subset(&steady),
                    "N={n}: {me} does not probe {focus} steadily"
                );
                assert!(
                    !p.schedule
                        .sweep
                        .targets
                        .iter()
                        .any(|t| t.peer_node == focus),
                    "the focus is not swept as well"
                );
                assert_eq!(p.summary.focus, vec![focus.clone()]);
                assert!(scheduled_packets(&p, &config) <= config.budget + 1e-6);
            }
            // The focus node itself still covers its part of the ring.
            let p = plan_of(&focus, &nodes, &[&focus], &config);
            assert!(p.summary.focus.is_empty());
            assert!(p.summary.rotation_targets > 0);
        }
    }

    #[test]
    fn a_long_focus_list_stays_within_the_budget() {
        let config = MeshConfig::default();
        let nodes = names(100);
        let focus: Vec<&str> = nodes.iter().skip(1).map(String::as_str).collect();
        let p = plan_of("node-0000", &nodes, &focus, &config);
        // 150 packets/s pay for 30 targets at 5 packets (UDP, TCP, large)
        // a second; the rest is swept.
        assert_eq!(p.summary.focus_targets, 30);
        assert!(!p.schedule.sweep.targets.is_empty());
        assert!(scheduled_packets(&p, &config) <= config.budget + 1e-6);
        assert_eq!(probed(&p).len(), 99, "every focus node is still probed");
    }

    #[test]
    fn plans_are_deterministic_and_stable_when_a_node_joins_or_leaves() {
        let config = MeshConfig::default();
        let nodes = names(1000);
        let a = plan_of("node-0007", &nodes, &[], &config);
        let mut shuffled = nodes.clone();
        shuffled.reverse();
        let refs: Vec<&str> = shuffled.iter().map(String::as_str).collect();
        let mut targets = targets_of(&nodes);
        targets.reverse();
        let b = plan("node-0007", &refs, &targets, &BTreeSet::new(), &config);
        assert_eq!(a, b, "the order of the inputs does not matter");

        // The covered pairs of every node, before and after one node joins
        // (or, read the other way, leaves).
        let pairs = |nodes: &[String]| -> HashSet<(String, String)> {
            let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let ring = ring(refs.iter().copied());
            nodes
                .iter()
                .flat_map(|me| {
                    half_ring(&ring, me)
                        .into_iter()
                        .map(move |p| (me.clone(), p.to_string()))
                })
                .collect()
        };
        for n in [10, 1000, 1001] {
            let before = names(n);
            let mut after = before.clone();
            after.push("newcomer".into());
            let (b, a) = (pairs(&before), pairs(&after));
            // Assignments that changed, the newcomer's own aside.
            let changed = b
                .symmetric_difference(&a)
                .filter(|(x, y)| x != "newcomer" && y != "newcomer")
                .count();
            // The newcomer takes a place in the windows that reach it, and
            // with N odd every window grows by one: O(N) of the O(N^2).
            assert!(changed <= n, "N={n}: {changed} of {} changed", b.len());
            if n >= 1000 {
                assert!(
                    (changed as f64) < 0.01 * b.len() as f64,
                    "N={n}: {changed} of {} changed",
                    b.len()
                );
            }
        }
    }

    #[test]
    fn the_budget_is_validated_with_a_clear_error() {
        for budget in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            let config = MeshConfig {
                budget,
                ..MeshConfig::default()
            };
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("--probe-budget"), "{err}");
        }
        let config = MeshConfig {
            budget: 3.0,
            ..MeshConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        // 1 UDP + 3 TCP + 1 large at 1/s, with 10% kept for ladders.
        assert!(err.contains("below 5.6 packets"), "{err}");
        MeshConfig::default().validate().unwrap();
    }
}
