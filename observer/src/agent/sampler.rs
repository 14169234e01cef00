//! Once per interval: this node's per-peer counters, every peer agent's
//! counters about this node over HTTP, into the windows. Everything read
//! here is O(nodes): the flow table is never read per interval (the
//! handshake and retransmit signals are per-peer kernel counters too).
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    State, api,
    window::{self, Sample},
};
use crate::{
    Result,
    datapath::{Counters, PeerRecord, monotonic_ns},
    delivery::{self, NodeView},
};

/// This node's counters as the last sample read them: what `/metrics`
/// renders, so a scrape costs a rendering, not another read.
pub struct Reading {
    pub taken: Instant,
    pub peers: Vec<PeerRecord>,
    pub counters: Counters,
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

type PeerReading = (String, String, Result<api::PeersReport>);

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
    let before = if state.read_peers {
        read_peers(state, &view, timeout).await
    } else {
        Vec::new()
    };
    let own_state = state.clone();
    let (own, counters) = tokio::task::spawn_blocking(move || {
        let mut observer = super::lock(&own_state.observer);
        // Known flows' packets are stamped with this time until the next.
        if let Err(err) = observer.tick() {
            own_state.count(&err);
        }
        // Handshakes unanswered past the grace become counts before the
        // reading: what is in flight, a handful of entries.
        if let Err(err) = observer.expire_handshakes(monotonic_ns()) {
            own_state.count(&err);
        }
        let peers = observer.peers()?;
        // Keys first seen since the last sample get their slot.
        if let Err(err) = observer.promote_seen_peers(&peers) {
            own_state.count(&err);
        }
        Ok::<_, crate::Error>((peers, observer.counters()?))
    })
    .await
    .map_err(|e| crate::Error::io("sampling", std::io::Error::other(e)))??;
    let at_ns = monotonic_ns();
    let after = if state.read_peers {
        read_peers(state, &view, timeout).await
    } else {
        Vec::new()
    };
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
    let refused = counters
        .get(observer_ebpf::Counter::FlowMapFull.label())
        .copied()
        .unwrap_or(0);
    let before = state.refused_flows.swap(refused, Ordering::Relaxed);
    if refused > before {
        state.table_full.notify_one();
    }
    state.set_reading(Reading {
        taken: Instant::now(),
        peers: own.clone(),
        counters,
    });

    let Some(local) = view.local() else {
        return Ok(());
    };
    let me = NodeView {
        name: &state.node,
        underlay: local.underlay,
        peers: &own,
    };
    let towards = |readings: &[api::PeersReport]| {
        let mut out = Vec::new();
        for report in readings {
            out.extend(
                delivery::deliveries(&[me.clone(), report.view()])
                    .into_iter()
                    .filter(|d| d.from == state.node),
            );
        }
        out
    };
    let outgoing = towards(&reports);
    let start = towards(&starts);
    let tcp = window::tcp_totals(&own, |addr| view.node_name(addr));
    let read = reports.iter().map(|r| r.node.clone()).collect();
    state.push_sample(Sample {
        at_ns,
        read,
        outgoing,
        start,
        tcp,
    });
    Ok(())
}
