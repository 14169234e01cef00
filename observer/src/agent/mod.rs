//! `crossover agent`: what runs on every node (the DaemonSet). It attaches
//! the programs, follows interfaces as pods come and go, and serves the
//! kernel's counters as Prometheus metrics and a versioned JSON API, from
//! which `crossover loss` (and the migration driver) match one node's sends
//! against its peers' receives.
pub mod api;
pub mod metrics;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::State as Extract,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    Error, Result,
    cli::{
        observe::load_shape,
        session::{Session, lock},
    },
    connections::{self, Connection},
    conntrack,
    datapath::{AttachMode, FlowRecord, Hook, LoadOptions, Observer, monotonic_ns},
};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Cluster shape with `local_node` set (JSON, see docs/shape.md).
    #[arg(long)]
    pub config: PathBuf,
    /// The underlay and any other interface the name does not tell, as
    /// NAME=HOOK. Overlay devices and pod veths are followed by name.
    #[arg(long = "iface", value_parser = super::cli::observe::parse_iface)]
    pub ifaces: Vec<(String, Hook)>,
    /// Address for /metrics, /healthz, /readyz and /api/v1.
    #[arg(long, default_value = "0.0.0.0:9190")]
    pub listen: SocketAddr,
    /// Named network namespace (`ip netns`) of the interfaces.
    #[arg(long)]
    pub netns: Option<String>,
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    #[arg(long, default_value_t = observer_ebpf::DEFAULT_FLOW_CAPACITY)]
    pub flow_capacity: u32,
    /// bpffs directory (e.g. /sys/fs/bpf/crossover) to pin maps and TCX
    /// links in: a restarted agent counts on with no gap (docs/restarts.md).
    #[arg(long)]
    pub pin_path: Option<PathBuf>,
    /// With --pin-path: on SIGTERM remove links and pins instead of
    /// leaving them for the next agent (uninstalling).
    #[arg(long, requires = "pin_path")]
    pub detach_on_exit: bool,
    #[command(flatten)]
    pub ageing: crate::datapath::AgeingPolicy,
}

/// What the HTTP handlers share.
pub struct State {
    pub node: String,
    pub underlay: Ipv4Addr,
    /// Underlay address to node name, for `peer_node` labels.
    names: BTreeMap<Ipv4Addr, String>,
    observer: Arc<Mutex<Observer>>,
    netns: Option<String>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl State {
    pub fn node_name(&self, addr: Ipv4Addr) -> String {
        self.names
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string())
    }

    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn count(&self, err: &Error) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(err.metric_label()).or_default() += 1;
    }

    fn peers_report(&self) -> Result<api::PeersReport> {
        let peers = lock(&self.observer).peers()?;
        Ok(api::PeersReport {
            version: 1,
            node: self.node.clone(),
            underlay: self.underlay,
            taken_ns: monotonic_ns(),
            peers: peers.iter().map(Into::into).collect(),
        })
    }

    /// `flows` joined into connections with this node's NAT table.
    /// Without conntrack (no NAT module, no privilege) connections are
    /// still reported, unjoined across SNAT, and the error is counted.
    fn connections(&self, flows: &[FlowRecord]) -> Result<Vec<Connection>> {
        let nat = {
            let _ns = self.netns.as_deref().map(crate::netns::enter).transpose()?;
            conntrack::nat_entries()
        };
        let nat = nat.map(|d| d.entries).unwrap_or_else(|err| {
            self.count(&err);
            Vec::new()
        });
        Ok(connections::join(
            flows,
            &nat,
            monotonic_ns(),
            connections::HANDSHAKE_GRACE_NS,
        ))
    }
}

impl State {
    /// One ageing sweep, joined across SNAT with this node's NAT table.
    fn age_flows(&self, policy: &crate::datapath::AgeingPolicy) -> Result<()> {
        let nat = {
            let _ns = self.netns.as_deref().map(crate::netns::enter).transpose()?;
            conntrack::nat_entries().map(|d| d.entries)
        };
        let nat = nat.unwrap_or_else(|err| {
            self.count(&err);
            Vec::new()
        });
        lock(&self.observer).age_flows(monotonic_ns(), policy, &nat)?;
        Ok(())
    }
}

type Shared = Arc<State>;

/// Runs blocking map reads off the async workers; errors become 500s and
/// are counted.
async fn blocking<T: Send + 'static>(
    state: &Shared,
    f: impl FnOnce(&State) -> Result<T> + Send + 'static,
) -> std::result::Result<T, Response> {
    let state = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        let result = f(&state);
        if let Err(err) = &result {
            state.count(err);
        }
        result
    })
    .await;
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err((StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()),
        Err(join) => Err((StatusCode::INTERNAL_SERVER_ERROR, join.to_string()).into_response()),
    }
}

async fn metrics_handler(Extract(state): Extract<Shared>) -> Response {
    let body = blocking(&state, |s| {
        let (peers, snapshot) = {
            let observer = lock(&s.observer);
            (observer.peers()?, observer.snapshot()?)
        };
        let conns = s.connections(&snapshot.flows)?;
        Ok(metrics::render(s, &peers, &snapshot, &conns))
    })
    .await;
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(response) => response,
    }
}

async fn peers_handler(Extract(state): Extract<Shared>) -> Response {
    match blocking(&state, State::peers_report).await {
        Ok(report) => Json(report).into_response(),
        Err(response) => response,
    }
}

async fn flows_handler(Extract(state): Extract<Shared>) -> Response {
    match blocking(&state, |s| lock(&s.observer).snapshot()).await {
        Ok(snapshot) => Json(snapshot).into_response(),
        Err(response) => response,
    }
}

async fn connections_handler(Extract(state): Extract<Shared>) -> Response {
    let conns = blocking(&state, |s| {
        let snapshot = lock(&s.observer).snapshot()?;
        s.connections(&snapshot.flows)
    });
    match conns.await {
        Ok(conns) => Json(conns).into_response(),
        Err(response) => response,
    }
}

/// Alive: the maps answer.
async fn healthz(Extract(state): Extract<Shared>) -> Response {
    match blocking(&state, |s| lock(&s.observer).peers()).await {
        Ok(_) => "ok\n".into_response(),
        Err(response) => response,
    }
}

/// Ready: programs are on the underlay, so the counters mean something.
async fn readyz(Extract(state): Extract<Shared>) -> Response {
    let observer = lock(&state.observer);
    let underlay: Vec<&str> = observer
        .attached()
        .filter(|(_, hook)| *hook == Hook::Underlay)
        .map(|(name, _)| name)
        .collect();
    if underlay.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not attached to an underlay interface\n",
        )
            .into_response()
    } else {
        format!("attached to {}\n", underlay.join(", ")).into_response()
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(api::PEERS_PATH, get(peers_handler))
        .route(api::FLOWS_PATH, get(flows_handler))
        .route(api::CONNECTIONS_PATH, get(connections_handler))
        .with_state(state)
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let shape = load_shape(Some(&args.config))?;
    let node = shape.local_node.clone().ok_or_else(|| {
        Error::Shape(format!(
            "{}: local_node must name this node",
            args.config.display()
        ))
    })?;
    let underlay = shape
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.underlay)
        .ok_or_else(|| Error::Shape(format!("local_node {node:?} is not in nodes")))?;
    let names = shape
        .nodes
        .iter()
        .map(|n| (n.underlay, n.name.clone()))
        .collect();
    let options = LoadOptions {
        flow_capacity: args.flow_capacity,
        attach_mode: args.attach_mode,
        netns: args.netns.clone(),
        pin_path: args.pin_path.clone(),
        ..LoadOptions::default()
    };
    let selection = crate::datapath::Selection {
        explicit: args.ifaces.clone(),
        follow_named: true,
    };
    let session = Session::open(options, &shape, selection)?;
    let state = Arc::new(State {
        node,
        underlay,
        names,
        observer: session.observer.clone(),
        netns: args.netns.clone(),
        errors: Mutex::new(BTreeMap::new()),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::io(format!("listening on {}", args.listen), e))?;
    eprintln!(
        "crossover: agent for {} on {}, observing {}",
        state.node,
        args.listen,
        session.attached_list()
    );
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut server = Box::pin(axum::serve(listener, router(state.clone())).into_future());
    // Flow ageing (datapath/ageing.rs): a sweep every interval, off the
    // async workers. An interval of 0 never fires.
    let mut sweep = tokio::time::interval(match args.ageing.interval {
        d if d.is_zero() => std::time::Duration::from_secs(365 * 24 * 3600),
        d => d,
    });
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            served = &mut server => {
                served.map_err(|e| Error::io("serving HTTP", e))?;
                break;
            }
            followed = session.follow_links() => followed?,
            _ = sweep.tick() => {
                let policy = args.ageing.clone();
                let _ = blocking(&state, move |s| s.age_flows(&policy)).await;
            }
        }
    }
    // Open connections may still hold the state: detach explicitly
    // (with pins: leave links and maps to the next agent, see exit()).
    drop(server);
    session.observer().exit(args.detach_on_exit)?;
    drop(session);
    eprintln!("crossover: detached");
    Ok(())
}
