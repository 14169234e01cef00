//! Once per interval: this node's counters, every peer agent's counters
//! over HTTP, and this node's TCP connections, into the windows.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    State, api,
    window::{HandshakeCounts, Sample, TcpKey, TcpTotals},
};
use crate::{
    Result,
    connections::{Connection, Handshake},
    datapath::monotonic_ns,
    delivery::{self, NodeView},
};

/// This node's counters, flows and connections as the last sample read
/// them: what `/metrics` renders, so a scrape costs a rendering, not
/// another read of the whole flow table and conntrack.
pub struct Reading {
    pub taken: Instant,
    pub peers: Vec<crate::datapath::PeerRecord>,
    pub snapshot: crate::datapath::Snapshot,
    pub connections: Vec<Connection>,
}

/// How the last reading of one peer agent went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerStatus {
    pub url: String,
    pub up: bool,
    pub failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub async fn run(state: Arc<State>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        if let Err(err) = sample(&state, interval).await {
            state.count(&err);
        }
        state.set_sample_duration(started.elapsed());
    }
}

type PeerReading = (
    String,
    String,
    Result<(api::PeersReport, Vec<crate::datapath::PeerRecord>)>,
);

/// Every peer's counters about this node, fetched in parallel.
async fn read_peers(
    state: &Arc<State>,
    view: &super::view::View,
    timeout: Duration,
) -> Vec<PeerReading> {
    let about = view.local().map(|n| n.underlay);
    let fetches: Vec<_> = view
        .peers
        .iter()
        .map(|peer| {
            let url = format!("http://{}:{}", peer.addr, state.peer_port);
            let node = peer.node.clone();
            tokio::task::spawn_blocking(move || {
                let result = api::fetch_peers_about(&url, about, timeout);
                (node, url, result)
            })
        })
        .collect();
    let mut out = Vec::new();
    for fetch in fetches {
        if let Ok(reading) = fetch.await {
            out.push(reading);
        }
    }
    out
}

async fn sample(state: &Arc<State>, interval: Duration) -> Result<()> {
    let view = state.view();
    // The peers, this node, the peers again. A window starts from a peer
    // reading taken before this node's and ends with one taken after it:
    // at the end every packet this node had counted has reached the peer
    // (or been lost), and at the start no packet this node counts in the
    // window was already counted as received. Packets in flight never look
    // like loss; at most the ones in flight at the window's start are not
    // compared.
    // Two rounds of reads per interval, but never so short that a busy
    // node's answer counts as a failure (a slow round only delays the next).
    let timeout = interval.mul_f64(0.4).max(Duration::from_secs(1));
    let before = read_peers(state, &view, timeout).await;
    let own_state = state.clone();
    let own = tokio::task::spawn_blocking(move || super::lock(&own_state.observer).peers())
        .await
        .map_err(|e| crate::Error::io("sampling", std::io::Error::other(e)))??;
    let after = read_peers(state, &view, timeout).await;
    let mut reports = Vec::new();
    let mut starts = Vec::new();
    for (node, url, result) in after {
        let start = before
            .iter()
            .find(|(n, _, r)| *n == node && r.is_ok())
            .and_then(|(_, _, r)| r.as_ref().ok());
        let status = match (result, start) {
            (Ok(report), Some(start)) => {
                starts.push(start.clone());
                reports.push(report);
                PeerStatus {
                    url,
                    up: true,
                    failures: 0,
                    last_error: None,
                }
            }
            (result, _) => {
                let err = match result {
                    Err(err) => err,
                    Ok(_) => crate::Error::Agent {
                        agent: url.clone(),
                        reason: "did not answer the first reading of this round".into(),
                    },
                };
                state.count(&err);
                let failures = state.peer_failures(&node) + 1;
                PeerStatus {
                    url,
                    up: false,
                    failures,
                    last_error: Some(err.to_string()),
                }
            }
        };
        state.set_peer_status(node, status);
    }
    state.follow_probes();
    let at_ns = monotonic_ns();
    let conn_state = state.clone();
    let (snapshot, conns) = tokio::task::spawn_blocking(move || {
        let snapshot = super::lock(&conn_state.observer).snapshot()?;
        let conns = conn_state.connections(&snapshot.flows)?;
        Ok::<_, crate::Error>((snapshot, conns))
    })
    .await
    .map_err(|e| crate::Error::io("sampling", std::io::Error::other(e)))??;

    let Some(local) = view.local() else {
        return Ok(());
    };
    let me = NodeView {
        name: &state.node,
        underlay: local.underlay,
        peers: &own,
    };
    let towards = |readings: &[(api::PeersReport, Vec<crate::datapath::PeerRecord>)]| {
        let mut out = Vec::new();
        for (report, records) in readings {
            let peer = NodeView {
                name: &report.node,
                underlay: report.underlay,
                peers: records,
            };
            out.extend(
                delivery::deliveries(&[me.clone(), peer])
                    .into_iter()
                    .filter(|d| d.from == state.node),
            );
        }
        out
    };
    let outgoing = towards(&reports);
    let start = towards(&starts);

    let window_start = at_ns.saturating_sub(state.window_ns());
    let mut live = Vec::new();
    let mut handshakes: BTreeMap<TcpKey, HandshakeCounts> = BTreeMap::new();
    for c in opened_here(&conns, &view) {
        let Some(peer) = c.peer else { continue };
        let key = (view.node_name(peer), c.overlay, c.client_net, c.server_net);
        let totals = TcpTotals {
            segments: c.segments,
            retransmits: c.retransmits,
        };
        live.push(((c.client, c.server), key.clone(), totals));
        if c.first_seen_ns >= window_start {
            let h = handshakes.entry(key).or_default();
            match c.handshake {
                Handshake::Answered => h.answered += 1,
                Handshake::Unanswered => h.unanswered += 1,
                Handshake::Reset => h.reset += 1,
                Handshake::Pending | Handshake::Unseen | Handshake::NotTcp => {}
            }
        }
    }
    let tcp = state
        .tcp_ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .update(live);
    let read = reports.iter().map(|(r, _)| r.node.clone()).collect();
    state.set_reading(Reading {
        taken: Instant::now(),
        peers: own,
        snapshot,
        connections: conns,
    });
    state.push_sample(
        Sample {
            at_ns,
            read,
            outgoing,
            start,
            tcp,
        },
        handshakes,
    );
    Ok(())
}

/// TCP connections whose client is this node or one of its pods: the
/// client side is where an unanswered handshake or a retransmission shows.
fn opened_here<'a>(
    conns: &'a [Connection],
    view: &'a super::view::View,
) -> impl Iterator<Item = &'a Connection> {
    conns
        .iter()
        .filter(move |c| c.proto == 6 && view.is_local(*c.client.ip()))
}
