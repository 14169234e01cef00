//! `/metrics` in the Prometheus text exposition format (0.0.4). Every
//! series is labelled from small sets (nodes, networks, overlays, reasons),
//! so an agent's series grow with the number of nodes, never with pods or
//! flows. The counters are the kernel's, read at scrape time; the writer
//! is the format's few rules (HELP, TYPE, escaped label values) rather than
//! a client library built around counters the process increments itself.
use super::State;
use observer_ebpf::{MtuHop, Overlay};

use crate::datapath::{Counters, Observer, PeerCounts, PeerRecord};
use crate::loss::LossRow;

pub use crate::exposition::CONTENT_TYPE;
use crate::exposition::family;

/// Which number of a record a family shows.
type Value<T> = fn(&T) -> u64;

/// The per-peer counter families: delivery and the TCP events of the
/// retransmit signal, one series per peer node, overlay, network pair and
/// direction that carried anything.
const PEER_FAMILIES: [(&str, &str, Value<PeerCounts>); 5] = [
    (
        "crossover_underlay_packets_total",
        "Packets on the underlay to (egress) or from (ingress) a peer node, per overlay and network pair of the inner packets.",
        |c| c.packets,
    ),
    (
        "crossover_underlay_bytes_total",
        "Bytes on the underlay to or from a peer node, per overlay and network pair.",
        |c| c.bytes,
    ),
    (
        "crossover_tcp_segments_total",
        "TCP segments with payload, SYN or FIN on the underlay to or from a peer node.",
        |c| c.segments,
    ),
    (
        "crossover_tcp_retransmits_total",
        "Of those, segments that did not advance their connection (retransmitted).",
        |c| c.retransmits,
    ),
    (
        "crossover_tcp_resets_total",
        "TCP packets with RST on the underlay to or from a peer node.",
        |c| c.rsts,
    ),
];

/// Handshake outcomes by result label.
const HANDSHAKE_RESULTS: [(&str, Value<PeerCounts>); 3] = [
    ("answered", |c| c.handshakes_answered),
    ("unanswered", |c| c.handshakes_unanswered),
    ("reset", |c| c.handshakes_reset),
];

fn peer_labels<'a>(node: &'a str, p: &PeerRecord, peer: &'a str) -> [(&'static str, &'a str); 6] {
    [
        ("node", node),
        ("peer_node", peer),
        ("overlay", p.overlay.label()),
        ("src_net", p.src_net.label()),
        ("dst_net", p.dst_net.label()),
        ("direction", p.direction.label()),
    ]
}

fn has_tcp(c: &PeerCounts) -> bool {
    c.segments != 0 || c.rsts != 0 || c.handshakes() != 0
}

/// Everything one scrape shows: O(nodes) series, from counters the
/// sampler read; the flow table is not read.
pub fn render(state: &State, peers: &[PeerRecord], counters: &Counters) -> String {
    let mut out = String::new();
    let node = state.node.as_str();
    let view = state.view();
    // Every peer its own series in a cluster of up to
    // `--metrics-peer-detail` nodes (PEER_DETAIL_NODES); beyond, the nodes
    // under migration only, and the rest summed (peer `*`): 5,000 peers x
    // 8 series would be 5.5 MB a scrape.
    let everyone = view.shape.nodes.len() <= state.peer_detail_nodes;
    peer_families(&mut out, node, peers, |addr| {
        let name = view.node_name(addr);
        if everyone || view.focus.contains(&name) {
            name
        } else {
            crate::loss::CLUSTER.to_owned()
        }
    });
    render_rest(&mut out, state, counters);
    out
}

/// Clusters up to this size get a series per peer in every per-peer
/// family; larger ones per node under migration, the rest summed. The
/// default of `--metrics-peer-detail`.
pub const PEER_DETAIL_NODES: usize = 100;

/// The per-peer counter families: what grows with the cluster, 8 series a
/// peer at most (the datapath bench measures them at 5,000 nodes). `name`
/// gives a record's `peer_node`; records given the same name (and key)
/// are summed into one series.
pub fn peer_families(
    out: &mut String,
    node: &str,
    peers: &[PeerRecord],
    name: impl Fn(std::net::Ipv4Addr) -> String,
) {
    // Records of one name and key summed, in a stable order.
    let mut summed: std::collections::BTreeMap<
        (
            String,
            observer_ebpf::Overlay,
            observer_ebpf::Direction,
            observer_ebpf::Net,
            observer_ebpf::Net,
        ),
        PeerRecord,
    > = std::collections::BTreeMap::new();
    for p in peers {
        summed
            .entry((name(p.peer), p.overlay, p.direction, p.src_net, p.dst_net))
            .and_modify(|s| s.counts += p.counts)
            .or_insert(*p);
    }
    let (names, records): (Vec<String>, Vec<PeerRecord>) =
        summed.into_iter().map(|((n, ..), r)| (n, r)).unzip();
    let peers = &records[..];
    for (i, (name, help, value)) in PEER_FAMILIES.into_iter().enumerate() {
        let mut f = family(out, name, "counter", help);
        for (p, peer) in peers.iter().zip(&names) {
            // TCP families only where TCP ran: a UDP-only pair has no
            // zero series to carry.
            if i >= 2 && !has_tcp(&p.counts) {
                continue;
            }
            f.sample(&peer_labels(node, p, peer), value(&p.counts));
        }
    }
    let mut f = family(
        out,
        "crossover_tcp_handshakes_total",
        "counter",
        "Handshakes this node's clients opened towards a peer node, by result: answered within 0.8 s, unanswered (answered later or never), reset.",
    );
    for (p, peer) in peers.iter().zip(&names) {
        if p.counts.handshakes() == 0 {
            continue;
        }
        for (result, value) in HANDSHAKE_RESULTS {
            let [a, b, c, d, e, g] = peer_labels(node, p, peer);
            f.sample(&[a, b, c, d, e, g, ("result", result)], value(&p.counts));
        }
    }
}

fn render_rest(out: &mut String, state: &State, counters: &Counters) {
    let node = state.node.as_str();

    let mut seen = family(
        out,
        "crossover_seen_packets_total",
        "counter",
        "Packets the programs saw, per hook point.",
    );
    for (name, value) in counters.iter().filter(|(n, _)| n.starts_with("seen_")) {
        seen.sample(&[("node", node), ("point", &name["seen_".len()..])], *value);
    }
    let mut skipped = family(
        out,
        "crossover_skipped_packets_total",
        "counter",
        "Packets not (fully) turned into a flow, by reason; refused map inserts included.",
    );
    for (name, value) in counters.iter().filter(|(n, _)| !n.starts_with("seen_")) {
        skipped.sample(&[("node", node), ("reason", name)], *value);
    }

    hook_families(out, state);

    // The flow table is counted by the ageing sweep, which reads it at its
    // own cadence anyway; absent until the first sweep.
    let census = super::lock(&state.observer).census().cloned();
    if let Some(census) = census {
        let mut f = family(
            out,
            "crossover_flows",
            "gauge",
            "Flows in the kernel's table at the last ageing sweep, by network pair and SNAT mark.",
        );
        for ((src, dst, snat), n) in &census.flows {
            f.sample(
                &[
                    ("node", node),
                    ("src_net", src.label()),
                    ("dst_net", dst.label()),
                    ("snat", snat.label()),
                ],
                *n,
            );
        }
    }

    let pods = super::lock(&state.observer).pod_addrs();
    let mut f = family(
        out,
        "crossover_pod_addrs",
        "gauge",
        "Pods whose addresses no network range covers (AWS VPC CNI), by whether they have their /32 \
         in the kernel's address table (in_table) or were left out for lack of room (refused: \
         classified as outside the cluster; raise --pod-addr-capacity).",
    );
    for (state_label, n) in [("in_table", pods.in_table), ("refused", pods.refused)] {
        f.sample(&[("node", node), ("state", state_label)], u64::from(n));
    }
    let mut f = family(
        out,
        "crossover_pod_addr_capacity",
        "gauge",
        "Room for pods' /32 entries in the kernel's address table (--pod-addr-capacity).",
    );
    f.sample(&[("node", node)], u64::from(pods.capacity));

    // Past --metrics-peer-detail nodes, per-peer series of the probes and of this
    // node's own windows for the nodes under migration only: the rest of
    // the mesh is judged by readers (each agent's worst rows), and a
    // scrape stays bounded whatever the cluster's size.
    let view = state.view();
    let mut f = family(
        out,
        "crossover_node_migrating",
        "gauge",
        "1 while this node is under migration (annotated crossover.io/migrating=true by the driver, \
         from its first step until done or rolled back; kept on a halt), else 0.",
    );
    f.sample(&[("node", node)], u64::from(view.focus.contains(node)));
    let detailed =
        |peer: &str| view.shape.nodes.len() <= state.peer_detail_nodes || view.focus.contains(peer);
    window_families(out, state, &detailed);
    if let Some(probing) = &state.probing {
        let mut totals = probing.stats.totals();
        totals.retain(|t| detailed(&t.key.peer_node));
        let unattributed = probing.stats.unattributed_totals();
        let responder = probing.responder.totals();
        let report = crate::probe::metrics::Report {
            totals: &totals,
            unattributed: &unattributed,
            responder: Some(&responder),
            ladder_packets: probing.stats.rungs(),
        };
        crate::probe::metrics::write(out, node, &report);
        if let Some(summary) = probing.summary() {
            crate::probe::metrics::write_mesh(out, node, &summary);
        }
    }
    cluster_families(out, state);
    if let Some(cluster) = &state.cluster {
        super::migration::write(out, node, cluster.migration_state().as_deref());
    }
    departed_nat_families(out, state);
    if let Some(auth) = &state.auth {
        auth.write_metrics(out, node);
    }
    drop_families(out, state, &detailed);
    frag_families(out, state, &detailed);
    kept_families(out, state);

    let mut f = family(
        out,
        "crossover_errors_total",
        "counter",
        "Errors of the agent itself, by reason.",
    );
    // Read before the errors are written, so a failed read is counted in
    // this very scrape.
    let process = super::process::Process::read().inspect_err(|e| state.count(e));
    for (reason, n) in state.errors() {
        f.sample(&[("node", node), ("reason", reason)], n);
    }
    super::process::write_build_info(out, node);
    if let Ok(process) = process {
        process.write(out);
    }
}

/// What the sampler's last read took (`taken`) while it is fresh: a
/// scrape reads no map itself. Else a read of its own (`read`); `None`
/// when that fails, counted.
fn sampled<T: Clone>(
    state: &State,
    taken: fn(&super::sampler::Reading) -> &Vec<T>,
    read: fn(&Observer) -> crate::Result<Vec<T>>,
) -> Option<Vec<T>> {
    if let Some(reading) = state.fresh_reading() {
        return Some(taken(&reading).clone());
    }
    read(&super::lock(&state.observer))
        .inspect_err(|e| state.count(e))
        .ok()
}

/// The kernel's drops of cluster traffic by reason: a series per reason,
/// peer, overlay and network pair that dropped (bounded by DROPS), peers
/// past `--metrics-peer-detail` summed into `*` like the per-peer families.
fn drop_families(out: &mut String, state: &State, detailed: &dyn Fn(&str) -> bool) {
    let node = state.node.as_str();
    let Some(drops) = sampled(state, |r| &r.drops, Observer::drops) else {
        return;
    };
    let view = state.view();
    let mut summed: std::collections::BTreeMap<_, u64> = std::collections::BTreeMap::new();
    for d in &drops {
        let peer = match d.peer {
            None => "none".to_owned(),
            Some(addr) => match view.node_name(addr) {
                name if detailed(&name) => name,
                _ => crate::loss::CLUSTER.to_owned(),
            },
        };
        *summed
            .entry((
                d.reason.as_str(),
                peer,
                d.direction,
                d.overlay,
                d.src_net,
                d.dst_net,
            ))
            .or_default() += d.packets;
    }
    let mut f = family(
        out,
        "crossover_drops_total",
        "counter",
        "Packets of the cluster the kernel dropped on this node, by the kernel's drop reason \
         (skb:kfree_skb), peer node, direction (egress: on its way to the peer), overlay \
         (the tunnel it was in; native or none before or outside one) and network pair.",
    );
    for ((reason, peer, direction, overlay, src, dst), n) in &summed {
        f.sample(
            &[
                ("node", node),
                ("reason", reason),
                ("peer_node", peer),
                ("direction", direction.label()),
                ("overlay", overlay.label()),
                ("src_net", src.label()),
                ("dst_net", dst.label()),
            ],
            *n,
        );
    }
}

/// The labels of a fragmentation-needed path.
fn path_labels<'a>(
    node: &'a str,
    (peer, overlay, hop): &'a (String, Overlay, MtuHop),
) -> [(&'static str, &'a str); 4] {
    [
        ("node", node),
        ("peer_node", peer),
        ("overlay", overlay.label()),
        ("hop", hop.label()),
    ]
}

/// ICMP "fragmentation needed" about this node's packets, per peer,
/// overlay and hop (bounded by FRAG_NEEDED), peers past
/// `--metrics-peer-detail` summed into `*` (their sizes: the smallest).
fn frag_families(out: &mut String, state: &State, detailed: &dyn Fn(&str) -> bool) {
    let node = state.node.as_str();
    let Some(paths) = sampled(state, |r| &r.frag_needed, Observer::frag_needed) else {
        return;
    };
    let view = state.view();
    // Per path: messages, and the smallest next-hop MTU and size that fits.
    type Path = (String, Overlay, MtuHop);
    let mut summed: std::collections::BTreeMap<Path, (u64, u32, Option<u32>)> = Default::default();
    for p in &paths {
        let peer = match view.node_name(p.peer) {
            name if detailed(&name) => name,
            _ => crate::loss::CLUSTER.to_owned(),
        };
        let (messages, next_hop, fits) =
            summed
                .entry((peer, p.overlay, p.hop))
                .or_insert((0, u32::MAX, None));
        *messages += p.messages;
        *next_hop = (*next_hop).min(p.next_hop_mtu);
        *fits = crate::loss::mtu::least(*fits, p.fits());
    }
    let mut f = family(
        out,
        "crossover_icmp_frag_needed_total",
        "counter",
        "ICMP fragmentation-needed about this node's packets towards a peer node, per overlay and \
         hop: wire (a router, or the peer, refused a tunnel packet or a routed pod's packet this \
         node sent), node (this node's kernel refused one of its pods' packets and told it) or \
         peer (the peer's kernel refused one past the tunnel and told the pod through it).",
    );
    for (path, (messages, ..)) in &summed {
        f.sample(&path_labels(node, path), *messages);
    }
    let mut f = family(
        out,
        "crossover_icmp_mtu_bytes",
        "gauge",
        "What the latest ICMP fragmentation-needed of a path said: its next-hop MTU as sent \
         (kind next_hop; the wire's size for hop wire), and the largest overlay packet that fits \
         (kind fits: the next hop less the tunnel's headers). 0: no MTU given.",
    );
    for (path, (_, next_hop, fits)) in &summed {
        let [a, b, c, d] = path_labels(node, path);
        for (kind, value) in [("next_hop", *next_hop), ("fits", fits.unwrap_or(0))] {
            f.sample(&[a, b, c, d, ("kind", kind)], u64::from(value));
        }
    }
}

/// Hooks where another program runs before ours (order.rs): a series per
/// hook kind and direction, not per interface (pod veths are many).
fn hook_families(out: &mut String, state: &State) {
    let node = state.node.as_str();
    let (blind, reasserted) = {
        let observer = super::lock(&state.observer);
        (
            crate::datapath::blind_by_hook(observer.order()),
            observer.reasserted(),
        )
    };
    let mut f = family(
        out,
        "crossover_hooks_blind",
        "gauge",
        "Interfaces whose hook runs another program before crossover's (which may end a \
         packet's journey there, as Cilium's do), by hook and direction: their counts are not \
         what crossed them.",
    );
    for (hook, direction, n) in blind {
        f.sample(
            &[
                ("node", node),
                ("hook", hook.label()),
                ("direction", direction.label()),
            ],
            n,
        );
    }
    let mut f = family(
        out,
        "crossover_hook_reasserted_total",
        "counter",
        "Times crossover re-attached a program in front of one that had got ahead of it.",
    );
    f.sample(&[("node", node)], reasserted);
}

/// The loss matrix over the current window, from this node's side.
fn window_families(out: &mut String, state: &State, detailed: &dyn Fn(&str) -> bool) {
    let mut loss = state.loss();
    loss.rows.retain(|r| detailed(&r.peer_node));
    let node = state.node.as_str();
    let labels = |r: &'_ LossRow| {
        [
            ("node", node.to_string()),
            ("peer_node", r.peer_node.clone()),
            ("overlay", r.overlay.label().to_string()),
            ("src_net", r.src_net.label().to_string()),
            ("dst_net", r.dst_net.label().to_string()),
            ("signal", r.signal.label().to_string()),
        ]
    };
    let gauges: [(&'static str, &str, Value<LossRow>); 2] = [
        (
            "crossover_window_sent",
            "Packets, segments or handshakes sent in the current window, per peer node, overlay, network pair and signal.",
            |r| r.sent,
        ),
        (
            "crossover_window_lost",
            "Of those, lost (never received, retransmitted, unanswered) in the current window.",
            |r| r.lost,
        ),
    ];
    for (name, help, value) in gauges {
        let mut f = family(out, name, "gauge", help);
        for row in &loss.rows {
            f.sample(&labels(row), value(row));
        }
    }
    let mut f = family(
        out,
        "crossover_loss_ratio",
        "gauge",
        "Lost over sent in the current window; absent when nothing was sent.",
    );
    for row in &loss.rows {
        let Some(ratio) = row.ratio() else { continue };
        f.sample(&labels(row), ratio);
    }
    let mut f = family(
        out,
        "crossover_window_seconds",
        "gauge",
        "Length of the loss window.",
    );
    f.sample(&[("node", node)], loss.window_seconds);
    let mut f = family(
        out,
        "crossover_sample_seconds",
        "gauge",
        "Time the last tick's two reads of this node's counters took, the guard between them included.",
    );
    f.sample(&[("node", node)], state.sample_duration().as_secs_f64());
    let mut f = family(
        out,
        "crossover_tick_lateness_seconds",
        "gauge",
        "How far the newest tick's two reads came after their instants (the tick, the tick plus the guard). Past the guard, a window's edges on this node no longer bracket its peers'.",
    );
    f.sample(&[("node", node)], state.tick_lateness().as_secs_f64());
    let mut f = family(
        out,
        "crossover_newest_tick_timestamp_seconds",
        "gauge",
        "Wall-clock instant (Unix seconds) of the newest tick whose counters this node read; 0 before the first. \
         Far behind time(), the sampler is stuck and readers get no window from this node.",
    );
    f.sample(&[("node", node)], state.newest_tick_ms() as f64 / 1e3);
}

/// With pins: what became of the ticks the previous agent kept.
fn kept_families(out: &mut String, state: &State) {
    use crate::loss::kept::Reason;
    let Some(kept) = &state.kept else {
        return;
    };
    let node = state.node.as_str();
    let mut f = family(
        out,
        "crossover_window_kept_ticks",
        "gauge",
        "At this agent's start, the ticks its predecessor kept (pinned beside the counters): \
         adopted into the ring, expired (older than the window), or refused as untrustworthy.",
    );
    for (outcome, n) in [
        ("adopted", kept.adopted),
        ("expired", kept.expired),
        ("refused", kept.refused.len()),
    ] {
        f.sample(&[("node", node), ("outcome", outcome)], n as u64);
    }
    let mut f = family(
        out,
        "crossover_window_kept_refused",
        "gauge",
        "Kept ticks refused at this agent's start, by reason: foreign (another format or version), \
         corrupt (checksum, length, order or a value), tick (another interval or guard), \
         counters (the counter maps were recreated since).",
    );
    for reason in Reason::ALL {
        f.sample(
            &[("node", node), ("reason", reason.label())],
            kept.refused_by(reason) as u64,
        );
    }
    let mut f = family(
        out,
        "crossover_window_restarted",
        "gauge",
        "1 when ticks were kept but none could be trusted: windows start over at this agent's \
         start instead of at their own tick (the reason is in /api/v1/status, kept.restarted).",
    );
    f.sample(&[("node", node)], u64::from(kept.restarted.is_some()));
}

/// The log of NAT mappings conntrack destroyed, when ctnetlink has one.
fn departed_nat_families(out: &mut String, state: &State) {
    let Some(stats) = state.departed_nat_stats() else {
        return;
    };
    let node = state.node.as_str();
    let mut f = family(
        out,
        "crossover_conntrack_departed_mappings",
        "gauge",
        "NAT mappings of connections conntrack destroyed, kept to join their flows across SNAT.",
    );
    f.sample(&[("node", node)], stats.held as f64);
    for (name, help, value) in [
        (
            "crossover_conntrack_departed_kept_total",
            "Destroyed NATed conntrack entries announced and kept.",
            stats.kept_total,
        ),
        (
            "crossover_conntrack_departed_evicted_total",
            "Kept NAT mappings dropped early because the log was full.",
            stats.evicted_total,
        ),
        (
            "crossover_conntrack_departed_overruns_total",
            "Times the kernel could not queue conntrack destroy announcements (ENOBUFS): mappings missed.",
            stats.overruns_total,
        ),
    ] {
        let mut f = family(out, name, "counter", help);
        f.sample(&[("node", node)], value as f64);
    }
}

/// The Kubernetes watches, when the agent follows a cluster.
fn cluster_families(out: &mut String, state: &State) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    let node = state.node.as_str();
    let health = cluster.health();
    let mut f = family(
        out,
        "crossover_kube_watch_synced",
        "gauge",
        "1 once the watch of a resource has listed it fully.",
    );
    for (resource, h) in &health {
        f.sample(
            &[("node", node), ("resource", resource)],
            u64::from(h.synced),
        );
    }
    let mut f = family(
        out,
        "crossover_kube_watch_errors_total",
        "counter",
        "Errors of the watch of a resource (retried with backoff).",
    );
    for (resource, h) in &health {
        f.sample(&[("node", node), ("resource", resource)], h.errors);
    }
    let view = state.view();
    let mut f = family(
        out,
        "crossover_shape_rejected",
        "gauge",
        "1 when the shape derived from the cluster was refused and the previous one is still in force.",
    );
    f.sample(&[("node", node)], u64::from(view.rejected.is_some()));
    let mut f = family(
        out,
        "crossover_peer_keys_without_slot",
        "gauge",
        "Per-peer counter keys of the shape that got no fast-path slot (beyond the slot capacity): still counted, through the PEERS hash, one lookup more per packet.",
    );
    f.sample(
        &[("node", node)],
        super::lock(&state.observer).slotless() as u64,
    );
}
