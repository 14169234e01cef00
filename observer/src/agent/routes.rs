//! The HTTP side: handlers for /metrics, /healthz, /readyz and /api/v1.
//! Map reads block on syscalls, so they run off the async workers.
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, RawQuery, State as Extract, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

use super::{State, api, lock, metrics};
use crate::{
    Result,
    loss::blind::{BlindHooks, BlindRefusal, NodeBlind},
};

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

fn json<T: Serialize>(result: std::result::Result<T, Response>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(response) => response,
    }
}

async fn metrics_handler(Extract(state): Extract<Shared>) -> Response {
    let body = blocking(&state, |s| {
        if let Some(r) = s.fresh_reading() {
            return Ok(metrics::render(s, &r.peers, &r.counters));
        }
        let (peers, counters) = {
            let observer = lock(&s.observer);
            (observer.peers()?, observer.counters()?)
        };
        Ok(metrics::render(s, &peers, &counters))
    })
    .await;
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(response) => response,
    }
}

/// `?peer=ADDR` keeps only the counters about that peer: what a peer
/// agent's sampler needs, a few dozen records instead of the whole table.
async fn peers_handler(Extract(state): Extract<Shared>, RawQuery(query): RawQuery) -> Response {
    let about = match query.as_deref().and_then(|q| q.strip_prefix("peer=")) {
        None => None,
        Some(addr) => match addr.parse::<std::net::Ipv4Addr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("peer={addr:?} is not an IPv4 address\n"),
                )
                    .into_response();
            }
        },
    };
    json(
        blocking(&state, move |s| {
            let mut report = s.peers_report()?;
            if let Some(addr) = about {
                report.peers.retain(|p| p.peer == addr);
            }
            Ok(report)
        })
        .await,
    )
}

/// Flow and connection reads served at once: each holds a page (or, for
/// connections, the table) decoded; more wait for a 429's Retry-After
/// rather than grow the agent's memory with every concurrent client.
pub const FLOW_READERS: usize = 2;

fn too_busy() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "1")],
        format!("{FLOW_READERS} flow or connection reads are in progress, the most served at once; retry\n"),
    )
        .into_response()
}

/// `/api/v1/flows`: a page of the flow table (`limit`, `continue`),
/// filtered (`peer`, `pod`, `src_net`, `dst_net`, `point`), read without
/// the lock the tick's reads need.
async fn flows_handler(
    Extract(state): Extract<Shared>,
    query: std::result::Result<Query<api::FlowsQuery>, QueryRejection>,
) -> Response {
    let view = state.view();
    let node_addr = |name: &str| {
        view.shape
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.underlay)
    };
    let request = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| q.check(node_addr))
    {
        Ok(r) => r,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let Ok(_permit) = state.flow_reads.try_acquire() else {
        return too_busy();
    };
    json(
        blocking(&state, move |s| {
            let (table, counters) = {
                let observer = lock(&s.observer);
                let counters = match s.fresh_reading() {
                    Some(reading) => reading.counters.clone(),
                    None => observer.counters()?,
                };
                (observer.flow_table()?, counters)
            };
            let page = table.page(request.from, request.limit, |f| request.keeps(f))?;
            let view = s.view();
            let flows = page
                .flows
                .into_iter()
                .map(|flow| api::AttributedFlow {
                    src_is: view.index.lookup(flow.src),
                    dst_is: view.index.lookup(flow.dst),
                    flow,
                })
                .collect();
            Ok(api::FlowsReport {
                version: 1,
                node: s.node.clone(),
                taken_ns: crate::datapath::monotonic_ns(),
                counters,
                flows,
                scanned: page.scanned,
                next: page.next.map(|n| n.to_string()),
            })
        })
        .await,
    )
}

/// `/api/v1/connections`: the whole table joined across hooks and SNAT,
/// read without the tick's lock, one of [`FLOW_READERS`] at a time.
async fn connections_handler(Extract(state): Extract<Shared>) -> Response {
    let Ok(_permit) = state.flow_reads.try_acquire() else {
        return too_busy();
    };
    json(
        blocking(&state, |s| {
            let table = lock(&s.observer).flow_table()?;
            let flows = table.all()?;
            s.connections(&flows)
        })
        .await,
    )
}

async fn loss_handler(Extract(state): Extract<Shared>) -> Response {
    Json(state.loss()).into_response()
}

/// `/api/v1/reading`: this node's half of the window a reader asks for. A
/// reader asks for the newest tick a little after it: if this agent has
/// not read it yet, it is waited for, up to a tick.
async fn reading_handler(
    Extract(state): Extract<Shared>,
    query: std::result::Result<Query<crate::loss::reading::Query>, QueryRejection>,
) -> Response {
    let request = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| q.check())
    {
        Ok(r) => r,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    // Counts from an underlay hook that runs behind another program are
    // not a number to report: the reader sees this node as failed, with
    // why, and the gate treats it as it treats a missing agent.
    let refusal = {
        let observer = lock(&state.observer);
        super::blind_underlay(observer.order()).map(|error| BlindRefusal {
            version: crate::loss::reading::VERSION,
            error,
            blind: NodeBlind {
                node: state.node.clone(),
                hooks: BlindHooks::of(observer.order()),
            },
        })
    };
    if let Some(refusal) = refusal {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(refusal)).into_response();
    }
    let interval = state.interval();
    let k = request.at_ms / interval.as_millis().max(1) as u64;
    let s = state.clone();
    let now_k = crate::loss::ring::unix_ms(std::time::SystemTime::now())
        / interval.as_millis().max(1) as u64;
    if k > now_k + 1 {
        return (
            StatusCode::BAD_REQUEST,
            format!("at={}: in the future on this node's clock\n", request.at_ms),
        )
            .into_response();
    }
    state.wait_tick(k, interval).await;
    match tokio::task::spawn_blocking(move || s.reading(&request)).await {
        Ok(Ok(reading)) => Json(reading).into_response(),
        Ok(Err(crate::loss::ring::Unservable::TooFew {
            oldest,
            newest,
            kept,
        })) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "fewer than two ticks read up to tick {k} (kept: {kept}, {oldest:?} to {newest:?}): just started, or this node's clock is behind\n"
            ),
        )
            .into_response(),
        Err(join) => (StatusCode::INTERNAL_SERVER_ERROR, join.to_string()).into_response(),
    }
}

#[derive(Serialize)]
struct Status<'a> {
    version: u32,
    node: &'a str,
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    unready: Option<String>,
    attached: Vec<(String, &'static str)>,
    /// Every hook's placement: `blind` where another program runs first.
    hooks: Vec<crate::datapath::HookOrder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watches: Option<std::collections::BTreeMap<&'static str, crate::cluster::WatchHealth>>,
    sample_seconds: f64,
    /// The oldest and newest ticks kept, Unix ms: the windows this agent
    /// can serve (0 before the first tick).
    oldest_tick_ms: u64,
    newest_tick_ms: u64,
    /// With pins: what this agent found of the ticks its predecessor kept,
    /// and whether windows restarted at its start (loss/kept.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<&'a crate::loss::kept::KeptReport>,
    view: super::view::ViewStatus<'a>,
}

async fn status_handler(Extract(state): Extract<Shared>) -> Response {
    let unready = state.unready();
    let (attached, hooks, pods) = {
        let observer = lock(&state.observer);
        let attached = observer
            .attached()
            .map(|(name, hook)| (name.to_string(), hook.label()))
            .collect();
        (attached, observer.order().to_vec(), observer.pod_addrs())
    };
    let view = state.view();
    Json(Status {
        version: 1,
        node: &state.node,
        ready: unready.is_none(),
        unready,
        attached,
        hooks,
        watches: state.cluster.as_ref().map(|c| c.health()),
        sample_seconds: state.sample_duration().as_secs_f64(),
        oldest_tick_ms: state.oldest_tick_ms(),
        newest_tick_ms: state.newest_tick_ms(),
        kept: state.kept.as_ref(),
        view: view.status(pods),
    })
    .into_response()
}

/// Alive: the maps answer.
async fn healthz(Extract(state): Extract<Shared>) -> Response {
    match blocking(&state, |s| lock(&s.observer).peers()).await {
        Ok(_) => "ok\n".into_response(),
        Err(response) => response,
    }
}

/// Ready: programs are on the underlay and the cluster is known, so the
/// counters mean something.
async fn readyz(Extract(state): Extract<Shared>) -> Response {
    match state.unready() {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
        None => "ready\n".into_response(),
    }
}

/// Every route; the JSON API (and `/metrics` with `--auth-metrics`)
/// behind the bearer token check when auth is on. `/healthz` and
/// `/readyz` stay open: the kubelet's probes carry no token.
pub fn router(state: Shared) -> Router {
    let check = || axum::middleware::from_fn_with_state(state.clone(), super::auth::require);
    let api = Router::new()
        .route(api::PEERS_PATH, get(peers_handler))
        .route(api::FLOWS_PATH, get(flows_handler))
        .route(api::CONNECTIONS_PATH, get(connections_handler))
        .route(api::LOSS_PATH, get(loss_handler))
        .route(api::READING_PATH, get(reading_handler))
        .route(api::STATUS_PATH, get(status_handler))
        .route_layer(check());
    let mut metrics = Router::new().route("/metrics", get(metrics_handler));
    if state.auth.as_ref().is_some_and(|a| a.metrics) {
        metrics = metrics.route_layer(check());
    }
    Router::new()
        .merge(api)
        .merge(metrics)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}
