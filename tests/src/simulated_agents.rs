//! A fleet of simulated agents: one HTTP server per node on loopback,
//! serving the agent's real `/api/v1/reading` (the same `Answerer` over the
//! same ticks), with counters from a traffic model instead of the kernel.
//! Readers (`crossover loss`, the gate's reading) are tested and measured
//! against thousands of nodes on one machine this way.
//!
//! The model: node `i` talks with the `fanout` nodes on either side of it
//! in index order, and with the focus node if there is one, on both
//! overlays, `rate` packets a second each way; a fault loses a fraction
//! of one ordered pair's packets on one overlay. Counters are functions of
//! the wall clock, so any tick can be read at any time, exactly.
use std::{collections::HashMap, net::Ipv4Addr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use observer::{
    datapath::{PeerCounts, PeerRecord},
    loss::{
        reading::{self, Answerer},
        ring::Tick,
    },
};
use observer_ebpf::{Direction, Net, Overlay};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fault {
    pub from: usize,
    pub to: usize,
    pub overlay: Overlay,
    /// Fraction of the pair's packets lost.
    pub ratio: f64,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub nodes: usize,
    pub fanout: usize,
    /// Packets a second, each way, per pair and overlay.
    pub rate: u64,
    pub focus: Option<usize>,
    pub faults: Vec<Fault>,
    pub interval_ms: u64,
    pub guard_ms: u64,
    /// Nodes whose agent restarted at this tick (Unix ms): they cannot
    /// serve a window starting earlier, and serve from it.
    pub restarted: Vec<(usize, u64)>,
    /// Every agent on this port of an address of its own, 127.0.0.(2+i),
    /// as agents are on their nodes; none: 127.0.0.1, any port.
    pub port: Option<u16>,
    /// Nodes with hooks that run behind another program, as their agents
    /// report them.
    pub blind: Vec<(usize, observer::loss::blind::BlindHooks)>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            nodes: 10,
            fanout: 4,
            rate: 100,
            focus: None,
            faults: Vec::new(),
            interval_ms: 1000,
            guard_ms: 20,
            restarted: Vec::new(),
            port: None,
            blind: Vec::new(),
        }
    }
}

/// The networks each overlay carries in the model.
pub fn nets(overlay: Overlay) -> (Net, Net) {
    match overlay {
        Overlay::Legacy => (Net::Legacy, Net::Legacy),
        _ => (Net::Cilium, Net::Cilium),
    }
}

pub const OVERLAYS: [Overlay; 2] = [Overlay::Legacy, Overlay::Cilium];

impl Model {
    /// Node `i`'s agent address with [`Model::port`].
    pub fn address(i: usize) -> Ipv4Addr {
        let i = u32::try_from(i + 2).expect("a /8 of loopback addresses");
        Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + i)
    }

    pub fn name(i: usize) -> String {
        format!("node-{i:05}")
    }

    pub fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
    }

    pub fn index(&self, addr: Ipv4Addr) -> Option<usize> {
        let [a, b, c, d] = addr.octets();
        if a != 10 || b < 200 {
            return None;
        }
        let i = ((b - 200) as usize) << 16 | (c as usize) << 8 | d as usize;
        (i < self.nodes).then_some(i)
    }

    pub fn talks(&self, i: usize, j: usize) -> bool {
        if i == j {
            return false;
        }
        let d = i.abs_diff(j);
        let circular = d.min(self.nodes - d);
        circular <= self.fanout || self.focus == Some(i) || self.focus == Some(j)
    }

    /// The nodes `i` talks with.
    pub fn peers(&self, i: usize) -> Vec<usize> {
        if self.focus == Some(i) || 2 * self.fanout + 1 >= self.nodes {
            return (0..self.nodes).filter(|&j| self.talks(i, j)).collect();
        }
        let n = self.nodes;
        let mut out: Vec<usize> = (1..=self.fanout)
            .flat_map(|k| [(i + k) % n, (i + n - k) % n])
            .collect();
        if let Some(f) = self.focus
            && f != i
        {
            out.push(f);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn fault(&self, i: usize, j: usize, overlay: Overlay) -> f64 {
        self.faults
            .iter()
            .find(|f| (f.from, f.to, f.overlay) == (i, j, overlay))
            .map_or(0.0, |f| f.ratio)
    }

    /// Packets `i` sent to `j` on `overlay` by `t_ms` (Unix ms).
    pub fn sent(&self, t_ms: u64) -> u64 {
        self.rate * t_ms / 1000
    }

    /// Of those, the ones `j` received.
    pub fn received(&self, i: usize, j: usize, overlay: Overlay, t_ms: u64) -> u64 {
        let sent = self.sent(t_ms);
        sent - (sent as f64 * self.fault(i, j, overlay)) as u64
    }

    /// Node `i`'s counters at `t_ms`.
    pub fn records(&self, i: usize, t_ms: u64) -> Vec<PeerRecord> {
        let mut out = Vec::new();
        for j in self.peers(i) {
            for overlay in OVERLAYS {
                let (src_net, dst_net) = nets(overlay);
                let record = |direction, packets| PeerRecord {
                    peer: Model::addr(j),
                    overlay,
                    direction,
                    src_net,
                    dst_net,
                    counts: PeerCounts {
                        packets,
                        bytes: packets * 100,
                        ..PeerCounts::default()
                    },
                };
                out.push(record(Direction::Egress, self.sent(t_ms)));
                out.push(record(
                    Direction::Ingress,
                    self.received(j, i, overlay, t_ms),
                ));
            }
        }
        out
    }

    pub fn tick(&self, i: usize, k: u64) -> Tick {
        let early = k * self.interval_ms;
        let late = early + self.guard_ms;
        Tick::new(
            k,
            (early, self.records(i, early)),
            (late, self.records(i, late)),
        )
    }

    /// What a reading of the window ending at `to_ms` should say about
    /// `i -> j` on `overlay`: the sender's packets from the start's late
    /// read to the end's early read, the receiver's from the start's early
    /// read to the end's late read.
    pub fn expected(
        &self,
        i: usize,
        j: usize,
        overlay: Overlay,
        from_ms: u64,
        to_ms: u64,
    ) -> (u64, u64) {
        let g = self.guard_ms;
        let sent = self.sent(to_ms) - self.sent(from_ms + g);
        let received =
            self.received(i, j, overlay, to_ms + g) - self.received(i, j, overlay, from_ms);
        (sent, sent.saturating_sub(received))
    }
}

type Shared = Arc<(Model, usize)>;

async fn reading_handler(
    State(shared): State<Shared>,
    Query(query): Query<reading::Query>,
) -> Response {
    let request = match query.check() {
        Ok(r) => r,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let answer = tokio::task::spawn_blocking(move || {
        let (model, i) = &*shared;
        let (from, to) = request.ticks(model.interval_ms);
        // A restarted agent's ring starts at its restart.
        let first = model
            .restarted
            .iter()
            .find(|(n, _)| n == i)
            .map_or(0, |(_, ms)| ms / model.interval_ms);
        let from = from.max(first);
        let name = |addr| model.index(addr).map(Model::name);
        let answerer = Answerer {
            node: &Model::name(*i),
            underlay: Model::addr(*i),
            guard_ms: model.guard_ms,
            interval_ms: model.interval_ms,
            name: &name,
            probes: Vec::new(),
            blind: model
                .blind
                .iter()
                .find(|(n, _)| n == i)
                .map(|(_, b)| b.clone())
                .unwrap_or_default(),
        };
        answerer.answer(&request, &model.tick(*i, from), &model.tick(*i, to))
    })
    .await;
    match answer {
        Ok(reading) => Json(reading).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `/api/v1/loss` as agents served it before the reading API (baselines
/// in the scale bench): every agent a delivery row per peer and overlay,
/// over its own window, for readers that merged them all.
async fn old_loss_handler(State(shared): State<Shared>) -> Response {
    let (model, i) = &*shared;
    let rows: Vec<serde_json::Value> = (0..model.nodes)
        .filter(|j| j != i)
        .flat_map(|j| {
            OVERLAYS.map(|overlay| {
                let (src, dst) = nets(overlay);
                let sent = model.rate * 10;
                let lost = (sent as f64 * model.fault(*i, j, overlay)) as u64;
                serde_json::json!({
                    "node": Model::name(*i), "peer_node": Model::name(j),
                    "overlay": overlay.label(), "src_net": src.label(), "dst_net": dst.label(),
                    "signal": "delivery", "sent": sent, "lost": lost, "refused": 0, "seconds": 10.0,
                })
            })
        })
        .collect();
    Json(serde_json::json!({
        "version": 1, "node": Model::name(*i), "window_seconds": 10.0,
        "rows": rows, "unreachable": [],
    }))
    .into_response()
}

/// The fleet's servers; they stop with the runtime.
pub struct SimulatedAgents {
    pub urls: Vec<String>,
    pub model: Model,
}

impl SimulatedAgents {
    pub async fn start(model: Model) -> std::io::Result<Self> {
        let mut urls = Vec::with_capacity(model.nodes);
        for i in 0..model.nodes {
            let at = match model.port {
                Some(port) => format!("{}:{port}", Model::address(i)),
                None => "127.0.0.1:0".into(),
            };
            let listener = tokio::net::TcpListener::bind(at).await?;
            urls.push(format!("http://{}", listener.local_addr()?));
            let app = Router::new()
                .route(reading::READING_PATH, get(reading_handler))
                .route("/api/v1/loss", get(old_loss_handler))
                .with_state(Arc::new((model.clone(), i)));
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        Ok(SimulatedAgents { urls, model })
    }

    /// URLs by node name.
    pub fn by_name(&self) -> HashMap<String, &str> {
        self.urls
            .iter()
            .enumerate()
            .map(|(i, u)| (Model::name(i), u.as_str()))
            .collect()
    }
}
