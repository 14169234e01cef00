//! A reading of the whole cluster, by whoever needs one (the migration
//! gate, `crossover loss`): every agent asked once for its half of the same
//! aligned window, and the pairs computed from both halves.
//!
//! What a reading gives, O(nodes) whatever the cluster's size:
//! * exactly, every row of the focus nodes (the node under migration):
//!   both directions towards every peer, every overlay, network pair and
//!   signal;
//! * cluster totals per signal, overlay and network pair: the sum of every
//!   node's sends against the sum of every node's receives, which catches
//!   loss anywhere;
//! * the worst rows of the signals an agent measures alone (TCP, probes);
//! * when a delivery total breaches, a drill-down that names the pairs:
//!   sums per group of nodes first (one more request per agent), then the
//!   pairs of the worst group pairs (a request per agent of those groups).
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use observer_ebpf::{Net, Overlay};
use serde::{Deserialize, Serialize};

use super::{
    CLUSTER, LossRow, Signal,
    blind::NodeBlind,
    client::Client,
    dropped::DropRow,
    reading::{self, Half, NodeReading, Query},
    ring::unix_ms,
};
use crate::Error;

#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// The window every agent's half covers.
    pub window: Duration,
    /// The agents' tick (`--sample-interval`) and guard (`--reading-guard`).
    pub interval: Duration,
    pub guard: Duration,
    /// Nodes whose rows are read exactly (the node under migration).
    pub focus: Vec<String>,
    /// A delivery total that lost at least this many packets is drilled
    /// down to its pairs: any real loss, above what in-flight packets at
    /// the window's ends can make up.
    pub drill_lost: u64,
    /// Rows (and totals) with fewer sent are neither ranked nor drilled.
    pub min_sent: u64,
    /// Worst rows kept, per agent and in the reading.
    pub top: usize,
    /// Group pairs drilled to their node pairs, worst first.
    pub drill_cells: usize,
    /// The longest a packet spends between two nodes' NICs: what a
    /// total's uncertainty counts as in flight at the window's edges.
    pub in_flight: Duration,
    /// Nodes whose agents a reading must hold (those with an agent pod),
    /// for a reader that does not ask each agent itself (Prometheus): one
    /// it has nothing of is named, not taken for lossless.
    pub expect: Vec<String>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            window: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            guard: DEFAULT_GUARD,
            focus: Vec::new(),
            drill_lost: 10,
            min_sent: 20,
            top: 20,
            drill_cells: 8,
            in_flight: Duration::from_millis(2),
            expect: Vec::new(),
        }
    }
}

impl ReadOptions {
    /// Whether a row (or drop) between `node` and `peer` is about a focus
    /// node, at either end.
    pub fn about_focus(&self, node: &str, peer: &str) -> bool {
        self.focus.iter().any(|n| n == node || n == peer)
    }
}

pub const DEFAULT_GUARD: Duration = Duration::from_millis(20);

/// The window a reader asks every agent for, and the agents' ticks it is
/// made of (the agents' `--sample-interval` and `--reading-guard`).
#[derive(Clone, Debug, clap::Args)]
pub struct WindowArgs {
    /// Length of the loss window read from the agents (whole ticks, at most
    /// the agents' own --window plus two ticks).
    #[arg(long, global = true, default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub window: Duration,
    /// The agents' --sample-interval: their counters are read on its ticks.
    #[arg(long, global = true, default_value = "1s", value_parser = crate::duration::parse_duration)]
    pub sample_interval: Duration,
    /// The agents' --reading-guard.
    #[arg(long, global = true, default_value = "20ms", value_parser = crate::duration::parse_duration)]
    pub reading_guard: Duration,
    /// The longest a packet spends between two nodes' NICs (a few ms
    /// within a data centre): delivery totals may be off by what is sent
    /// in that long, and are drilled down only past it.
    #[arg(long, global = true, default_value = "2ms", value_parser = crate::duration::parse_duration_or_zero)]
    pub in_flight: Duration,
}

impl WindowArgs {
    pub fn options(&self) -> ReadOptions {
        ReadOptions {
            window: self.window,
            interval: self.sample_interval,
            guard: self.reading_guard,
            in_flight: self.in_flight,
            ..ReadOptions::default()
        }
    }
}
/// How long after a tick's late read a reader asks for it: the agents'
/// reads take a few ms, their clocks differ by a few more.
const SETTLE: Duration = Duration::from_millis(250);
/// Rounds of re-asking agents whose ticks differ from the others'.
const ALIGN_ROUNDS: usize = 3;
/// Pairs a drill-down lists; beyond, counted in `left_out`.
pub const MAX_DRILLED_ROWS: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAgent {
    /// The URL as given.
    pub agent: String,
    pub error: String,
    /// It answered, refusing this reader's token (401, 403): a matter of
    /// credentials or RBAC, not of the agent's health.
    #[serde(default)]
    pub refused: bool,
}

/// What a drill-down of one delivery total found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drill {
    pub overlay: Overlay,
    pub src_net: Net,
    pub dst_net: Net,
    pub groups: u32,
    /// Group pairs that lost packets, and how many of them were drilled.
    pub cells_over: usize,
    pub cells_drilled: usize,
    /// Node pairs named with loss.
    pub pairs: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterReading {
    pub from_ms: u64,
    pub to_ms: u64,
    /// Agents that answered.
    pub answered: usize,
    /// Per signal, overlay and network pair over the whole cluster
    /// (`node` and `peer_node` are [`CLUSTER`]).
    pub totals: Vec<LossRow>,
    /// Exact rows: the focus nodes', the drilled pairs', and the worst of
    /// the local signals; worst first.
    pub rows: Vec<LossRow>,
    pub drills: Vec<Drill>,
    /// Agents that did not answer or answered something unusable: their
    /// pairs are missing, not lossless.
    pub failed: Vec<FailedAgent>,
    /// Rows neither asked for nor among the worst.
    pub left_out: usize,
    /// How far any agent's reads strayed from their ticks (ms).
    pub lateness_ms: u64,
    /// Delivery totals compare the same instants at both ends, so what is
    /// in flight at the window's edges, or sent while one end's read was
    /// late, may show as lost: at most what is sent in this long (twice
    /// the lateness, plus the network's few ms). A drill-down starts only
    /// past it.
    #[serde(default)]
    pub uncertainty_ms: u64,
    /// HTTP requests this reading made.
    pub requests: usize,
    /// Delivery totals need every agent: with one missing, its pairs would
    /// count on one side only, so they are left out (and not drilled).
    #[serde(default)]
    pub delivery_totals_left_out: bool,
    /// Nodes with hooks that run behind another program (docs/hooks.md),
    /// by node: a count per hook kind and direction, a few named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blind: Vec<NodeBlind>,
    /// The kernel's drops over the window, by node, peer, direction and
    /// reason: the focus nodes' (both ends) and the largest others
    /// ([`super::dropped`]); most first.
    #[serde(default)]
    pub drops: Vec<DropRow>,
    /// Drop rows neither about a focus node nor among the largest.
    #[serde(default)]
    pub drops_left_out: usize,
}

impl ClusterReading {
    /// Of a total's `lost`, how many may be in flight or read off-tick.
    pub fn uncertain_packets(&self, total: &LossRow) -> u64 {
        let window = self.to_ms.saturating_sub(self.from_ms).max(1);
        (total.sent * self.uncertainty_ms).div_ceil(window)
    }

    pub fn seconds(&self) -> f64 {
        self.to_ms.saturating_sub(self.from_ms) as f64 / 1000.0
    }

    /// The drops behind `row` (its sender's on the way, its receiver's
    /// on arrival), most first.
    pub fn drops_behind(&self, row: &LossRow) -> Vec<&DropRow> {
        super::dropped::behind(&self.drops, row)
    }

    /// Totals first, then the rows.
    pub fn all_rows(&self) -> impl Iterator<Item = &LossRow> {
        self.totals.iter().chain(&self.rows)
    }
}

type Triple = (Overlay, Net, Net);

fn triple(h: &Half) -> Triple {
    (h.overlay, h.src_net, h.dst_net)
}

/// The end of the newest window every agent has read by now.
pub fn window_end(now: SystemTime, options: &ReadOptions) -> u64 {
    let interval = options.interval.as_millis().max(1) as u64;
    let ready = unix_ms(now).saturating_sub((options.guard + SETTLE).as_millis() as u64);
    ready / interval * interval
}

/// One reading of every agent in `agents` (base URLs).
pub async fn read(client: &Client, agents: &[String], options: &ReadOptions) -> ClusterReading {
    read_at(
        client,
        agents,
        options,
        window_end(SystemTime::now(), options),
    )
    .await
}

pub async fn read_at(
    client: &Client,
    agents: &[String],
    options: &ReadOptions,
    at: u64,
) -> ClusterReading {
    let mut out = ClusterReading::default();
    let window = options.window.as_millis() as u64;
    let query = |at: u64, window: u64| Query {
        at,
        window,
        nodes: (!options.focus.is_empty()).then(|| options.focus.join(",")),
        top: Some(options.top),
        min_sent: Some(options.min_sent),
        ..Query::default()
    };
    let mut answers: Vec<Option<NodeReading>> = vec![None; agents.len()];
    let mut errors: Vec<Option<Error>> = (0..agents.len()).map(|_| None).collect();
    let path = |q: &Query| format!("{}?{}", reading::READING_PATH, encode(q));
    let first = path(&query(at, window));
    out.requests += agents.len();
    client
        .each(
            agents
                .iter()
                .enumerate()
                .map(|(i, a)| (i, a.clone(), first.clone())),
            "reading",
            |i, answer: crate::Result<NodeReading>| match answer.and_then(|r| check(&agents[i], r))
            {
                Ok(r) => answers[i] = Some(r),
                Err(e) => errors[i] = Some(e),
            },
        )
        .await;
    // Every half must cover the same ticks. An agent that restarted inside
    // the window starts later, one that stalled past the end tick ends
    // earlier: it says which ticks it used, and everyone is asked again for
    // the window they all have.
    for _ in 0..ALIGN_ROUNDS {
        let Some((start, end)) = common_span(&answers) else {
            break;
        };
        let redo: Vec<usize> = (0..agents.len())
            .filter(|&i| {
                answers[i]
                    .as_ref()
                    .is_some_and(|r| (r.from_ms, r.to_ms) != (start, end))
            })
            .collect();
        if redo.is_empty() {
            break;
        }
        if start >= end {
            for i in redo {
                let r = answers[i].take().expect("filtered on answers");
                errors[i] = Some(Error::Agent {
                    agent: agents[i].clone(),
                    reason: format!(
                        "its ticks ({} to {} ms) do not overlap the others' window: is its clock off?",
                        r.from_ms, r.to_ms
                    ),
                });
            }
            continue;
        }
        let again = path(&query(end, end - start));
        out.requests += redo.len();
        client
            .each(
                redo.into_iter()
                    .map(|i| (i, agents[i].clone(), again.clone())),
                "reading",
                |i, answer: crate::Result<NodeReading>| match answer
                    .and_then(|r| check(&agents[i], r))
                {
                    Ok(r) => answers[i] = Some(r),
                    Err(e) => {
                        answers[i] = None;
                        errors[i] = Some(e);
                    }
                },
            )
            .await;
    }
    if let Some((start, end)) = common_span(&answers) {
        for i in 0..agents.len() {
            if let Some(r) = answers[i].take_if(|r| (r.from_ms, r.to_ms) != (start, end)) {
                errors[i] = Some(Error::Agent {
                    agent: agents[i].clone(),
                    reason: format!(
                        "could not be aligned: serves {} to {} ms, the others {start} to {end} ms",
                        r.from_ms, r.to_ms
                    ),
                });
            }
        }
    }
    // One answer per node: a second URL for the same node would count its
    // pairs twice.
    let mut by_node: HashMap<String, usize> = HashMap::new();
    for i in 0..agents.len() {
        let Some(r) = &answers[i] else { continue };
        if let Some(&first) = by_node.get(&r.node) {
            errors[i] = Some(Error::Agent {
                agent: agents[i].clone(),
                reason: format!(
                    "reports node {:?}, already answered by {}: not counted twice",
                    r.node, agents[first]
                ),
            });
            answers[i] = None;
        } else {
            by_node.insert(r.node.clone(), i);
        }
    }
    for (i, e) in errors.iter().enumerate() {
        if let Some(e) = e {
            if let Error::Blind { blind, .. } = e {
                out.blind.push((**blind).clone());
            }
            out.failed.push(FailedAgent {
                agent: agents[i].clone(),
                // The agent is named beside it: its reason alone.
                error: match e {
                    Error::Agent { reason, .. } | Error::Blind { reason, .. } => reason.clone(),
                    other => other.to_string(),
                },
                refused: matches!(e, Error::Refused { .. }),
            });
        }
    }
    let readings: Vec<&NodeReading> = answers.iter().flatten().collect();
    out.answered = readings.len();
    // Those that answered, beside those refused for a blind underlay.
    out.blind.extend(
        readings
            .iter()
            .filter(|r| !r.blind.is_empty())
            .map(|r| NodeBlind {
                node: r.node.clone(),
                hooks: r.blind.clone(),
            }),
    );
    out.blind.sort_by(|a, b| a.node.cmp(&b.node));
    if let Some(r) = readings.first() {
        (out.from_ms, out.to_ms) = (r.from_ms, r.to_ms);
    }
    let seconds = out.seconds();
    out.lateness_ms = readings.iter().map(|r| r.lateness_ms).max().unwrap_or(0);
    out.uncertainty_ms = 2 * out.lateness_ms + options.in_flight.as_millis() as u64;

    // Totals.
    let mut delivery: BTreeMap<Triple, (u64, u64)> = BTreeMap::new();
    let mut local: BTreeMap<(Signal, Triple), LossRow> = BTreeMap::new();
    for r in &readings {
        for h in &r.totals {
            let t = delivery.entry(triple(h)).or_default();
            t.0 += h.sent_all;
            t.1 += h.received;
        }
        for l in &r.local_totals {
            local
                .entry((l.signal, (l.overlay, l.src_net, l.dst_net)))
                .or_insert_with(|| LossRow::sum_like(CLUSTER.into(), CLUSTER.into(), l))
                .add(l);
        }
    }
    out.delivery_totals_left_out = !out.failed.is_empty();
    if out.delivery_totals_left_out {
        delivery.clear();
    }
    for (&(overlay, src_net, dst_net), &(sent, received)) in &delivery {
        out.totals.push(delivery_row(
            (CLUSTER, CLUSTER),
            (overlay, src_net, dst_net),
            (sent, received),
            seconds,
        ));
    }
    out.totals.extend(local.into_values());

    // The focus nodes' rows, both directions, from both halves.
    let half_about = |r: &NodeReading, peer: &str| -> BTreeMap<Triple, Half> {
        r.peers
            .iter()
            .filter(|p| p.peer_node == peer)
            .map(|p| (triple(&p.half), p.half))
            .collect()
    };
    for focus in &options.focus {
        let Some(&fi) = by_node.get(focus) else {
            continue;
        };
        let f = answers[fi].as_ref().expect("indexed answers are kept");
        let mut peers: Vec<&str> = f.peers.iter().map(|p| p.peer_node.as_str()).collect();
        for r in &readings {
            if r.node != *focus && r.peers.iter().any(|p| p.peer_node == *focus) {
                peers.push(&r.node);
            }
        }
        peers.sort_unstable();
        peers.dedup();
        for peer in peers {
            let Some(&pi) = by_node.get(peer) else {
                // Its agent did not answer: in `failed`, not lossless.
                continue;
            };
            let p = answers[pi].as_ref().expect("indexed answers are kept");
            let mine = half_about(f, peer);
            let theirs = half_about(p, focus);
            let mut keys: Vec<Triple> = mine.keys().chain(theirs.keys()).copied().collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                let m = mine.get(&key).copied().unwrap_or(Half::zero(key));
                let t = theirs.get(&key).copied().unwrap_or(Half::zero(key));
                if m.sent > 0 || t.received > 0 {
                    out.rows.push(delivery_row(
                        (focus, peer),
                        key,
                        (m.sent, t.received),
                        seconds,
                    ));
                }
                // Unless the peer is a focus node too: then it adds its own.
                if (t.sent > 0 || m.received > 0) && !options.focus.iter().any(|n| n == peer) {
                    out.rows.push(delivery_row(
                        (peer, focus),
                        key,
                        (t.sent, m.received),
                        seconds,
                    ));
                }
            }
        }
    }

    // Local signals: rows about the focus, then the worst of the rest.
    let is_focus = |r: &LossRow| options.about_focus(&r.node, &r.peer_node);
    let mut worst = Vec::new();
    // A focus node's local rows summed over its peers, each way: at one
    // probe a second per pair, a pair's window holds too few probes to be
    // judged, all its peers together do.
    let mut focus_sums: BTreeMap<(String, String, Signal, Triple), LossRow> = BTreeMap::new();
    for r in &readings {
        out.left_out += r.local_left_out;
        for row in &r.local {
            if is_focus(row) {
                out.rows.push(row.clone());
                let focus = options
                    .focus
                    .iter()
                    .find(|n| **n == row.node || **n == row.peer_node);
                if let Some(f) = focus {
                    let (node, peer) = if *f == row.node {
                        (f.clone(), CLUSTER.to_owned())
                    } else {
                        (CLUSTER.to_owned(), f.clone())
                    };
                    let key = (
                        node.clone(),
                        peer.clone(),
                        row.signal,
                        (row.overlay, row.src_net, row.dst_net),
                    );
                    focus_sums
                        .entry(key)
                        .or_insert_with(|| LossRow::sum_like(node, peer, row))
                        .add(row);
                }
            } else if row.sent >= options.min_sent && row.lost > 0 {
                worst.push(row);
            }
        }
    }
    out.rows.extend(focus_sums.into_values());
    worst.sort_by(|a, b| LossRow::worse(a, b));
    gather_drops(&readings, options, &mut out);
    out.left_out += worst.len().saturating_sub(options.top);
    out.rows
        .extend(worst.into_iter().take(options.top).cloned());

    // Drill-downs.
    let breached: Vec<Triple> = out
        .totals
        .iter()
        .filter(|t| {
            t.signal == Signal::Delivery
                && t.lost >= options.drill_lost.max(1)
                && t.lost > out.uncertain_packets(t)
        })
        .map(|t| (t.overlay, t.src_net, t.dst_net))
        .collect();
    if !breached.is_empty() {
        let mut live: Vec<(String, String)> = by_node
            .iter()
            .map(|(n, &i)| (n.clone(), agents[i].clone()))
            .collect();
        live.sort_unstable();
        drill(
            client,
            &live,
            options,
            (at, out.to_ms - out.from_ms),
            &breached,
            &mut out,
        )
        .await;
    }
    out.rows.sort_by(LossRow::worse);
    out
}

/// Every answer's drops: the focus nodes' at both ends, then the largest
/// others, `top` of them.
fn gather_drops(readings: &[&NodeReading], options: &ReadOptions, out: &mut ClusterReading) {
    let is_focus = |d: &DropRow| options.about_focus(&d.node, &d.peer_node);
    let mut rest = Vec::new();
    for r in readings {
        out.drops_left_out += r.drops_left_out;
        for d in &r.drops {
            if is_focus(d) {
                out.drops.push(d.clone());
            } else {
                rest.push(d);
            }
        }
    }
    rest.sort_by(|a, b| DropRow::worse(a, b));
    out.drops_left_out += rest.len().saturating_sub(options.top);
    out.drops
        .extend(rest.into_iter().take(options.top).cloned());
    out.drops.sort_by(DropRow::worse);
}

/// The window every answer covers: the latest start, the earliest end.
fn common_span(answers: &[Option<NodeReading>]) -> Option<(u64, u64)> {
    answers
        .iter()
        .flatten()
        .map(|r| (r.from_ms, r.to_ms))
        .reduce(|(a, b), (c, d)| (a.max(c), b.min(d)))
}

fn delivery_row(
    (node, peer): (&str, &str),
    (overlay, src_net, dst_net): Triple,
    (sent, received): (u64, u64),
    seconds: f64,
) -> LossRow {
    LossRow {
        node: node.into(),
        peer_node: peer.into(),
        overlay,
        src_net,
        dst_net,
        signal: Signal::Delivery,
        sent,
        // Received beyond sent is the guard's bracket, not loss.
        lost: sent.saturating_sub(received),
        refused: 0,
        seconds,
        mtu: None,
    }
}

/// Groups for a drill-down: about sqrt(N)/2 nodes a group, so both rounds
/// stay near N^1.5 numbers in all.
pub fn groups_for(nodes: usize) -> u32 {
    (((nodes as f64).sqrt() / 2.0).ceil() as u32).clamp(1, 32)
}

async fn drill(
    client: &Client,
    live: &[(String, String)],
    options: &ReadOptions,
    (at, window): (u64, u64),
    breached: &[Triple],
    out: &mut ClusterReading,
) {
    let groups = groups_for(live.len());
    let group_of: Vec<u32> = live
        .iter()
        .map(|(n, _)| reading::group_of(n, groups))
        .collect();
    let base = Query {
        at,
        window,
        groups: Some(groups),
        top: Some(0),
        ..Query::default()
    };
    // Round one: every agent's sums per group of peers.
    let mut cells: BTreeMap<(Triple, u32, u32), (u64, u64)> = BTreeMap::new();
    let path = |q: &Query| format!("{}?{}", reading::READING_PATH, encode(q));
    let first = path(&base);
    out.requests += live.len();
    client
        .each(
            live.iter()
                .enumerate()
                .map(|(i, (_, url))| (i, url.clone(), first.clone())),
            "reading",
            |i, answer: crate::Result<NodeReading>| {
                let Ok(r) = answer else { return };
                let mine = group_of[i];
                for g in &r.groups {
                    let key = triple(&g.half);
                    if !breached.contains(&key) {
                        continue;
                    }
                    cells.entry((key, mine, g.group)).or_default().0 += g.half.sent_all;
                    cells.entry((key, g.group, mine)).or_default().1 += g.half.received;
                }
            },
        )
        .await;
    let index: HashMap<&str, usize> = live
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let named = &mut 0;
    for &key in breached {
        let mut over: Vec<((u32, u32), u64)> = cells
            .iter()
            .filter(|((k, ..), _)| *k == key)
            .filter(|(_, (sent, received))| sent > received)
            .map(|((_, a, b), (sent, received))| ((*a, *b), sent.saturating_sub(*received)))
            .collect();
        over.sort_by_key(|o| std::cmp::Reverse(o.1));
        let mut drill = Drill {
            overlay: key.0,
            src_net: key.1,
            dst_net: key.2,
            groups,
            cells_over: over.len(),
            cells_drilled: over.len().min(options.drill_cells),
            pairs: 0,
        };
        for &((a, b), _) in over.iter().take(options.drill_cells) {
            // Round two: the senders of group a about every peer of group
            // b, the receivers of group b about every peer of group a.
            let asks: Vec<(usize, String, String)> = live
                .iter()
                .enumerate()
                .filter_map(|(i, (_, url))| {
                    let about = if group_of[i] == a {
                        b
                    } else if group_of[i] == b {
                        a
                    } else {
                        return None;
                    };
                    let q = Query {
                        group: Some(about),
                        ..base.clone()
                    };
                    Some((i, url.clone(), path(&q)))
                })
                .collect();
            out.requests += asks.len();
            let mut sent: HashMap<(usize, String), u64> = HashMap::new();
            let mut received: HashMap<(String, usize), u64> = HashMap::new();
            client
                .each(asks, "reading", |i, answer: crate::Result<NodeReading>| {
                    let Ok(r) = answer else { return };
                    for p in r.peers.iter().filter(|p| triple(&p.half) == key) {
                        if group_of[i] == a {
                            sent.insert((i, p.peer_node.clone()), p.half.sent);
                        }
                        if group_of[i] == b {
                            received.insert((p.peer_node.clone(), i), p.half.received);
                        }
                    }
                })
                .await;
            let mut found = Vec::new();
            for ((x, peer), &s) in &sent {
                let Some(&y) = index.get(peer.as_str()) else {
                    continue;
                };
                let r = received.get(&(live[*x].0.clone(), y)).copied().unwrap_or(0);
                if s > r {
                    found.push(delivery_row(
                        (&live[*x].0, peer),
                        key,
                        (s, r),
                        (window as f64) / 1000.0,
                    ));
                }
            }
            drill.pairs += found.len();
            let room = MAX_DRILLED_ROWS.saturating_sub(*named);
            found.sort_by(LossRow::worse);
            out.left_out += found.len().saturating_sub(room);
            for row in found.into_iter().take(room) {
                // A focus node's pair is already there, exactly.
                if !out.rows.iter().any(|r| r.key() == row.key()) {
                    *named += 1;
                    out.rows.push(row);
                }
            }
        }
        out.drills.push(drill);
    }
}

fn check(agent: &str, r: NodeReading) -> crate::Result<NodeReading> {
    if r.version != reading::VERSION {
        return Err(Error::Agent {
            agent: agent.into(),
            reason: format!(
                "speaks reading version {}, not {}",
                r.version,
                reading::VERSION
            ),
        });
    }
    Ok(r)
}

/// The query string of `q`. Node names are DNS subdomains: nothing in
/// them needs escaping but the separator, which they cannot contain.
pub fn encode(q: &Query) -> String {
    let mut out = format!("at={}&window={}", q.at, q.window);
    if let Some(n) = &q.nodes {
        out += &format!("&nodes={n}");
    }
    for (name, v) in [
        ("groups", q.groups.map(u64::from)),
        ("group", q.group.map(u64::from)),
        ("top", q.top.map(|t| t as u64)),
        ("min_sent", q.min_sent),
    ] {
        if let Some(v) = v {
            out += &format!("&{name}={v}");
        }
    }
    out
}

/// Every row of the cluster's matrix, handed to `each` group by group:
/// the pairs with an end in one group of nodes per round, so what is held
/// at once is a group's rows (about N^1.5 numbers), never the N^2 matrix.
/// Requests: one reading, then one per agent per group.
pub async fn stream_all(
    client: &Client,
    agents: &[String],
    options: &ReadOptions,
    mut each: impl FnMut(LossRow),
) -> ClusterReading {
    let first = ReadOptions {
        focus: Vec::new(),
        drill_lost: u64::MAX,
        ..options.clone()
    };
    let mut summary = read(client, agents, &first).await;
    summary.rows.clear();
    let failed: Vec<&str> = summary.failed.iter().map(|f| f.agent.as_str()).collect();
    let live: Vec<&String> = agents
        .iter()
        .filter(|a| !failed.contains(&a.as_str()))
        .collect();
    // Names come with the answers: ask once more, cheaply, for them.
    let mut names: Vec<Option<String>> = vec![None; live.len()];
    let at = summary.to_ms;
    let window = summary.to_ms.saturating_sub(summary.from_ms).max(1);
    let probe = Query {
        at,
        window,
        top: Some(0),
        ..Query::default()
    };
    let path = |q: &Query| format!("{}?{}", reading::READING_PATH, encode(q));
    let p = path(&probe);
    summary.requests += live.len();
    client
        .each(
            live.iter()
                .enumerate()
                .map(|(i, a)| (i, (*a).clone(), p.clone())),
            "reading",
            |i, answer: crate::Result<NodeReading>| {
                if let Ok(r) = answer {
                    names[i] = Some(r.node);
                }
            },
        )
        .await;
    let groups = groups_for(live.len());
    let group: Vec<Option<u32>> = names
        .iter()
        .map(|n| n.as_deref().map(|n| reading::group_of(n, groups)))
        .collect();
    let index: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((n.clone()?, i)))
        .collect();
    let seconds = window as f64 / 1000.0;
    for g in 0..groups {
        // Members: every peer; the others: the peers of this group.
        let asks: Vec<(usize, String, String)> = live
            .iter()
            .enumerate()
            .filter(|(i, _)| names[*i].is_some())
            .map(|(i, a)| {
                let q = if group[i] == Some(g) {
                    Query {
                        nodes: names[i].clone(),
                        top: Some(0),
                        ..probe.clone()
                    }
                } else {
                    Query {
                        groups: Some(groups),
                        group: Some(g),
                        ..probe.clone()
                    }
                };
                (i, (*a).clone(), path(&q))
            })
            .collect();
        summary.requests += asks.len();
        // (from, to, triple) -> (sent, received)
        let mut pairs: BTreeMap<(usize, usize, Triple), (u64, u64)> = BTreeMap::new();
        let mut local = Vec::new();
        client
            .each(asks, "reading", |i, answer: crate::Result<NodeReading>| {
                let Ok(r) = answer else { return };
                for p in &r.peers {
                    let Some(&j) = index.get(&p.peer_node) else {
                        continue;
                    };
                    let key = triple(&p.half);
                    pairs.entry((i, j, key)).or_default().0 += p.half.sent;
                    // (the receiver's half of the same pair comes from j)
                    pairs.entry((j, i, key)).or_default().1 += p.half.received;
                }
                if group[i] == Some(g) {
                    local.extend(r.local);
                }
            })
            .await;
        for ((from, to, key), (sent, received)) in pairs {
            let round = group[from].min(group[to]);
            if round != Some(g) || (sent == 0 && received == 0) {
                continue;
            }
            let names = (
                names[from].as_deref().unwrap_or_default(),
                names[to].as_deref().unwrap_or_default(),
            );
            each(delivery_row(names, key, (sent, received), seconds));
        }
        for row in local {
            each(row);
        }
    }
    summary
}
