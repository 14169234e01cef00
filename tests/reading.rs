//! Readers against a simulated fleet of agents (tests/src/simulated_agents.rs):
//! real HTTP on loopback, the agents' real `/api/v1/reading`, counters from
//! a traffic model with injected loss. No root needed.
use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

use crossover_tests::simulated_agents::{Fault, Model, OVERLAYS, SimulatedAgents, nets};
use observer::loss::{
    CLUSTER, LossRow, Signal,
    client::Client,
    cluster::{self, ReadOptions},
};
use observer_ebpf::Overlay;

fn options(focus: &[usize]) -> ReadOptions {
    ReadOptions {
        focus: focus.iter().map(|&i| Model::name(i)).collect(),
        // The model's packets arrive the instant they are sent.
        in_flight: Duration::ZERO,
        ..ReadOptions::default()
    }
}

fn at() -> u64 {
    cluster::window_end(SystemTime::now(), &ReadOptions::default())
}

fn find(rows: &[LossRow], from: usize, to: usize, overlay: Overlay) -> Option<&LossRow> {
    rows.iter().find(|r| {
        r.signal == Signal::Delivery
            && r.node == Model::name(from)
            && r.peer_node == Model::name(to)
            && r.overlay == overlay
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_agents_the_focus_rows_exact_and_a_far_fault_named_by_the_drill_down() {
    let focus = 0;
    let model = Model {
        nodes: 1000,
        fanout: 2,
        focus: Some(focus),
        faults: vec![
            // Far from the node under migration, on a pair it is not in.
            Fault {
                from: 500,
                to: 501,
                overlay: Overlay::Cilium,
                ratio: 0.05,
            },
            // On one of its pairs.
            Fault {
                from: 7,
                to: focus,
                overlay: Overlay::Legacy,
                ratio: 0.02,
            },
        ],
        ..Model::default()
    };
    let fleet = SimulatedAgents::start(model.clone()).await.unwrap();
    let client = Client::new(Duration::from_secs(10));
    let reading = cluster::read_at(&client, &fleet.urls, &options(&[focus]), at()).await;
    assert!(reading.failed.is_empty(), "{:?}", reading.failed);
    assert_eq!(reading.answered, 1000);
    let (from, to) = (reading.from_ms, reading.to_ms);
    assert_eq!(to - from, 10_000);

    // Every pair of the focus node, both directions, both overlays, exact.
    let focus_rows: Vec<&LossRow> = reading
        .rows
        .iter()
        .filter(|r| r.node == Model::name(focus) || r.peer_node == Model::name(focus))
        .collect();
    assert_eq!(
        focus_rows.len(),
        999 * 2 * OVERLAYS.len(),
        "{:#?}",
        &focus_rows[..4]
    );
    for r in &focus_rows {
        let index = |n: &str| n["node-".len()..].parse::<usize>().unwrap();
        let (i, j) = (index(&r.node), index(&r.peer_node));
        assert_eq!((r.src_net, r.dst_net), nets(r.overlay));
        assert_eq!(
            (r.sent, r.lost),
            model.expected(i, j, r.overlay, from, to),
            "{r:?}"
        );
    }
    let faulted = find(&reading.rows, 7, focus, Overlay::Legacy).unwrap();
    assert!(
        faulted.lost > 0 && faulted.ratio().unwrap() > 0.015,
        "{faulted:?}"
    );

    // The totals caught both faults; the drill-down named the far pair,
    // with exactly the figures the model gives it.
    let total = |overlay| {
        reading
            .totals
            .iter()
            .find(|t| t.signal == Signal::Delivery && t.overlay == overlay)
            .unwrap()
    };
    assert!(total(Overlay::Cilium).lost > 0 && total(Overlay::Legacy).lost > 0);
    assert_eq!(total(Overlay::Cilium).node, CLUSTER);
    let far = find(&reading.rows, 500, 501, Overlay::Cilium)
        .unwrap_or_else(|| panic!("the drill-down names 500 -> 501: {:#?}", reading.drills));
    assert_eq!(
        (far.sent, far.lost),
        model.expected(500, 501, Overlay::Cilium, from, to)
    );
    let named: Vec<_> = reading
        .rows
        .iter()
        .filter(|r| r.lost > 0)
        .map(|r| (r.node.as_str(), r.peer_node.as_str(), r.overlay))
        .collect();
    assert_eq!(
        named.len(),
        2,
        "only the two faulted pairs lost anything: {named:?}"
    );
    assert_eq!(reading.drills.len(), 2, "{:?}", reading.drills);
    // One request per agent, one more per agent for the drill-down's
    // groups, and a few for the drilled group pairs: O(N).
    assert!(
        reading.requests <= 2 * 1000 + 4 * 1000 / 16 * 2,
        "{}",
        reading.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_fleet_shows_no_loss_and_asks_each_agent_once() {
    let fleet = SimulatedAgents::start(Model {
        nodes: 200,
        ..Model::default()
    })
    .await
    .unwrap();
    let client = Client::new(Duration::from_secs(10));
    let reading = cluster::read_at(&client, &fleet.urls, &options(&[3]), at()).await;
    assert!(reading.failed.is_empty());
    assert_eq!(reading.requests, 200);
    assert!(reading.drills.is_empty());
    assert!(
        reading.all_rows().all(|r| r.lost == 0),
        "{:#?}",
        reading.totals
    );
    // Node 3's rows: its 8 neighbours, both ways, both overlays.
    assert_eq!(reading.rows.len(), 8 * 2 * 2);
    let sent: u64 = reading.totals.iter().map(|t| t.sent).sum();
    assert!(sent > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halves_of_a_restarted_agent_start_every_half_later() {
    let a = at();
    // Node 5 restarted 4 s into the window: everyone is read from there.
    let restart = a - 6_000;
    let model = Model {
        nodes: 20,
        faults: vec![Fault {
            from: 5,
            to: 6,
            overlay: Overlay::Cilium,
            ratio: 0.1,
        }],
        restarted: vec![(5, restart)],
        ..Model::default()
    };
    let fleet = SimulatedAgents::start(model.clone()).await.unwrap();
    let client = Client::new(Duration::from_secs(10));
    let options = ReadOptions {
        // No drill-down: the fault is on the focus node's pair.
        drill_lost: u64::MAX,
        ..options(&[5])
    };
    let reading = cluster::read_at(&client, &fleet.urls, &options, a).await;
    assert!(reading.failed.is_empty(), "{:?}", reading.failed);
    assert_eq!((reading.from_ms, reading.to_ms), (restart, a));
    assert_eq!(reading.requests, 20 + 19, "everyone but node 5 asked again");
    let row = find(&reading.rows, 5, 6, Overlay::Cilium).unwrap();
    assert_eq!(
        (row.sent, row.lost),
        model.expected(5, 6, Overlay::Cilium, restart, a)
    );
    assert!(row.lost > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_matrix_streams_every_pair_once() {
    let model = Model {
        nodes: 60,
        fanout: 3,
        faults: vec![Fault {
            from: 10,
            to: 12,
            overlay: Overlay::Legacy,
            ratio: 0.1,
        }],
        ..Model::default()
    };
    let fleet = SimulatedAgents::start(model.clone()).await.unwrap();
    let client = Client::new(Duration::from_secs(10));
    let mut rows = Vec::new();
    let summary = cluster::stream_all(&client, &fleet.urls, &options(&[]), |r| rows.push(r)).await;
    assert!(summary.failed.is_empty());
    let keys: HashSet<_> = rows.iter().map(|r| r.key()).collect();
    assert_eq!(keys.len(), rows.len(), "no row twice");
    assert_eq!(
        rows.len(),
        60 * 6 * 2,
        "every ordered pair on both overlays"
    );
    let (from, to) = (summary.from_ms, summary.to_ms);
    for r in &rows {
        let index = |n: &str| n["node-".len()..].parse::<usize>().unwrap();
        assert_eq!(
            (r.sent, r.lost),
            model.expected(index(&r.node), index(&r.peer_node), r.overlay, from, to)
        );
    }
    assert!(find(&rows, 10, 12, Overlay::Legacy).unwrap().lost > 0);
}
