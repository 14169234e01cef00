//! `crossover loss`: one reading of every agent (`/api/v1/reading`, each
//! agent's half of the same aligned window), printed worst first.
//!
//! By default: the cluster totals per signal, overlay and network pair,
//! the exact rows of the nodes named with `--node`, the pairs a
//! drill-down names when a delivery total shows loss, and the worst rows of
//! the signals each agent measures alone. `--all` streams the whole matrix
//! instead, group by group. What is missing is said, never shown as
//! lossless: agents that did not answer are listed and the exit status is
//! 2.
//!
//! `--since-start` reads every agent's raw underlay counters
//! (`/api/v1/peers`) once and prints delivery since the agents started:
//! exact figures to compare with a drop counter (O(N^2) numbers: for labs).
use std::{io::Write, time::Duration};

use clap::{Args, ValueEnum};
use observer_ebpf::Overlay;
use serde::Serialize;

use crate::{
    Error, Result,
    agent::api,
    cluster::agents::{self, AgentPods},
    loss::{
        LossRow, Signal,
        blind::NodeBlind,
        client::Client,
        cluster::{self, ClusterReading, WindowArgs},
        delivery::{self, Delivery},
    },
    table,
};

/// Exit status when the matrix was printed but is incomplete: an agent did
/// not answer.
pub const EXIT_INCOMPLETE: i32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LossFormat {
    /// Worst first, one row per line.
    Table,
    /// The table with every field of a row (refused, seconds).
    Wide,
    /// One document (with `--all`: one row per line, NDJSON).
    Json,
}

#[derive(Debug, Args)]
pub struct LossArgs {
    /// An agent's base URL, e.g. http://10.0.0.5:9190. Repeat for every
    /// node. Without it (and without --prometheus), the agents are found
    /// through the cluster's API (--kubeconfig): one per node, from the
    /// agent pods.
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// Read the shipped recording rules' records from this Prometheus
    /// (base URL, e.g. http://prometheus:9090) instead of the agents:
    /// whole record windows (--window rounded up: minutes with the shipped
    /// rules), from scrapes (docs/metrics.md).
    #[arg(long, value_parser = parse_prometheus, conflicts_with_all = ["agents", "since_start", "all", "kubeconfig"])]
    pub prometheus: Option<String>,
    /// Kubeconfig file, to find the agents when no --agent is given, and
    /// whose user's bearer token is sent to the agents (they check it with
    /// the API server); default: in-cluster, then $KUBECONFIG,
    /// ~/.kube/config (with --agent: only if there is one).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Namespace of the agent pods.
    #[arg(long, default_value = "crossover")]
    pub namespace: String,
    /// Label selector of the agent pods.
    #[arg(long, default_value = "app.kubernetes.io/name=crossover-agent")]
    pub agent_selector: String,
    /// Port of the agents' API (their --listen).
    #[arg(long, default_value_t = 9190)]
    pub agent_port: u16,
    /// Delivery since the agents started, from their raw underlay counters,
    /// instead of a window of every signal.
    #[arg(long, conflicts_with = "all")]
    pub since_start: bool,
    /// Every row of the matrix, streamed group by group (JSON: one row per
    /// line), instead of the totals and the worst rows.
    #[arg(long)]
    pub all: bool,
    /// Read this node's rows exactly (every peer, both directions), as the
    /// gate does for the node under migration, and show the rows it is in
    /// and rows with loss anywhere (what a drill-down named). Repeatable.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Show only rows towards or from this peer node.
    #[arg(long)]
    pub peer: Option<String>,
    /// Show only this overlay (legacy, cilium).
    #[arg(long, value_parser = parse_overlay)]
    pub overlay: Option<Overlay>,
    /// Show only this signal (delivery, handshake, retransmit, probe_udp,
    /// probe_tcp, in_node, mtu).
    #[arg(long)]
    pub signal: Option<Signal>,
    /// Show only rows whose loss ratio is at least this (1%, 0.5% or 0.01).
    #[arg(long, value_parser = parse_ratio)]
    pub min_ratio: Option<f64>,
    /// Rows shown (and worst rows asked of each agent), worst first.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Rows with fewer sent are not ranked among the worst or drilled.
    #[arg(long, default_value_t = 20)]
    pub min_sent: u64,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Output: table, wide or json (`--format` too).
    #[arg(long = "output", short = 'o', alias = "format", value_enum, default_value_t = LossFormat::Table)]
    pub format: LossFormat,
    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub timeout: Duration,
}

fn parse_overlay(s: &str) -> std::result::Result<Overlay, String> {
    Overlay::from_label(s).ok_or_else(|| format!("{s:?} is not an overlay (legacy, cilium)"))
}

/// A Prometheus base URL, checked as `--source prometheus=URL` is.
fn parse_prometheus(s: &str) -> std::result::Result<String, String> {
    match format!("prometheus={s}").parse::<crate::loss::Source>()? {
        crate::loss::Source::Prometheus(url) => Ok(url),
        crate::loss::Source::Agents => Err(format!("{s:?} is not a Prometheus URL")),
    }
}

fn parse_ratio(s: &str) -> std::result::Result<f64, String> {
    s.parse::<crate::migrate::gate::Ratio>().map(|r| r.0)
}

/// What a row must match to be shown.
struct Filter<'a> {
    args: &'a LossArgs,
}

impl Filter<'_> {
    fn keeps(&self, r: &LossRow) -> bool {
        let a = self.args;
        let node = a.nodes.is_empty()
            || r.is_total()
            || r.lost > 0
            || a.nodes.iter().any(|n| *n == r.node || *n == r.peer_node);
        let peer = a
            .peer
            .as_ref()
            .is_none_or(|p| r.is_total() || *p == r.node || *p == r.peer_node);
        node && peer
            && a.overlay.is_none_or(|o| o == r.overlay)
            && a.signal.is_none_or(|s| s == r.signal)
            && a.min_ratio
                .is_none_or(|m| r.ratio().is_some_and(|x| x >= m))
    }
}

/// The agents named, or found through the API; nodes without one are
/// named on stderr and make the reading incomplete.
async fn agents(args: &LossArgs) -> Result<(Vec<String>, bool)> {
    if !args.agents.is_empty() {
        return Ok((args.agents.clone(), true));
    }
    let client = crate::cluster::client(args.kubeconfig.as_ref(), true).await?;
    let how = AgentPods {
        namespace: &args.namespace,
        selector: &args.agent_selector,
        port: args.agent_port,
    };
    let found = agents::find(&client, &how).await?;
    if found.urls.is_empty() {
        return Err(Error::Kube {
            context: "finding the agents".into(),
            reason: format!(
                "no pod matches {} in namespace {} ({} nodes): is the agent DaemonSet \
                 installed (manifests/)? Or name them with --agent URL",
                args.agent_selector,
                args.namespace,
                found.missing.len()
            ),
        });
    }
    for missing in &found.missing {
        eprintln!("crossover: {missing}: its pairs are not measured");
    }
    Ok((found.urls, found.missing.is_empty()))
}

pub async fn run(mut args: LossArgs) -> Result<i32> {
    if args.prometheus.is_some() {
        // The records are the cluster's: no agent is asked.
        return read(args).await;
    }
    let (urls, complete) = agents(&args).await?;
    args.agents = urls;
    // Named agents with no kubeconfig around are read without a token.
    let required = args.kubeconfig.is_some();
    let credentials =
        crate::cluster::reader_credentials(args.kubeconfig.as_ref(), required).await?;
    let code = read_with(args, credentials).await?;
    Ok(if complete { code } else { EXIT_INCOMPLETE })
}

async fn read(args: LossArgs) -> Result<i32> {
    read_with(args, None).await
}

/// `credentials`: the agents' bearer token (never sent to Prometheus).
async fn read_with(
    args: LossArgs,
    credentials: Option<crate::loss::client::Credentials>,
) -> Result<i32> {
    let client = Client::new(args.timeout).with_credentials(credentials);
    let wide = args.format == LossFormat::Wide;
    if args.since_start {
        let (matrix, blind) = read_all(&client, &args.agents).await?;
        let blind = blind_lines(&blind);
        match args.format {
            LossFormat::Json => {
                // The rows stay an array, as before: the hooks go to stderr.
                eprint!("{blind}");
                let rows: Vec<serde_json::Value> = matrix.iter().map(delivery_json).collect();
                println!("{}", to_json(&rows)?)
            }
            LossFormat::Table | LossFormat::Wide => {
                print!("{blind}{}", delivery_table(&matrix))
            }
        }
        return Ok(0);
    }
    let options = cluster::ReadOptions {
        focus: args.nodes.clone(),
        min_sent: args.min_sent,
        top: args.top,
        ..args.window.options()
    };
    let filter = Filter { args: &args };
    let reading = if args.all {
        // Streamed: a row is printed as its group arrives, so the table's
        // columns are of fixed width rather than fitted to every row.
        let mut out = std::io::stdout().lock();
        let table = args.format != LossFormat::Json;
        if table {
            let _ = out.write_all(stream_line(&COLUMNS.map(str::to_string), wide).as_bytes());
        }
        let mut shown = |row: LossRow| {
            if !filter.keeps(&row) {
                return;
            }
            let line = match args.format {
                LossFormat::Table | LossFormat::Wide => stream_line(&cells(&row), wide),
                LossFormat::Json => row_json(&row).to_string() + "\n",
            };
            let _ = out.write_all(line.as_bytes());
        };
        let summary = cluster::stream_all(&client, &args.agents, &options, &mut shown).await;
        for row in &summary.totals {
            shown(row.clone());
        }
        if table {
            // Streamed rows come first: the blind hooks follow them.
            let _ = out.write_all(blind_lines(&summary.blind).as_bytes());
            let _ = out.write_all(footer(&summary).as_bytes());
        }
        summary
    } else {
        let mut reading = match &args.prometheus {
            Some(url) => {
                crate::loss::prometheus::read(&client, url, &options, std::time::SystemTime::now())
                    .await?
            }
            None => cluster::read(&client, &args.agents, &options).await,
        };
        reading.totals.retain(|r| filter.keeps(r));
        reading.rows.retain(|r| filter.keeps(r));
        if args.nodes.is_empty() {
            reading.left_out += reading.rows.len().saturating_sub(args.top);
            reading.rows.truncate(args.top);
        }
        match args.format {
            LossFormat::Json => println!("{}", reading_json(&reading)?),
            LossFormat::Table | LossFormat::Wide => print!("{}", render(&reading, wide)),
        }
        reading
    };
    Ok(if reading.failed.is_empty() {
        0
    } else {
        EXIT_INCOMPLETE
    })
}

/// Column names: the JSON's field names, one name per field.
const COLUMNS: [&str; 11] = [
    "node",
    "peer_node",
    "overlay",
    "src_net",
    "dst_net",
    "signal",
    "sent",
    "lost",
    "ratio",
    "refused",
    "seconds",
];
/// Columns of the narrow table; wide adds the rest.
const NARROW: usize = 9;

fn name(n: &str) -> String {
    if n == crate::loss::CLUSTER {
        "(cluster)".to_string()
    } else {
        n.to_string()
    }
}

fn cells(r: &LossRow) -> [String; 11] {
    [
        name(&r.node),
        name(&r.peer_node),
        r.overlay.to_string(),
        r.src_net.to_string(),
        r.dst_net.to_string(),
        r.signal.to_string(),
        r.sent.to_string(),
        r.lost.to_string(),
        percent(r.ratio()),
        r.refused.to_string(),
        format!("{:.1}", r.seconds),
    ]
}

/// A row as JSON: its fields and its loss ratio (null when nothing was
/// sent), which the row type computes rather than stores.
fn row_json(r: &LossRow) -> serde_json::Value {
    let mut value = serde_json::to_value(r).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.insert("ratio".into(), r.ratio().into());
    }
    value
}

/// The reading as JSON, every row with its ratio, and the window's end
/// as an RFC 3339 time beside its Unix milliseconds.
fn reading_json(reading: &ClusterReading) -> Result<String> {
    let mut value =
        serde_json::to_value(reading).map_err(|e| Error::io("encoding JSON", e.into()))?;
    if let Some(fields) = value.as_object_mut() {
        for (key, rows) in [("totals", &reading.totals), ("rows", &reading.rows)] {
            fields.insert(key.into(), rows.iter().map(row_json).collect());
        }
        fields.insert("window_end".into(), rfc3339_ms(reading.to_ms).into());
    }
    to_json(&value)
}

/// Unix milliseconds as an RFC 3339 UTC time.
fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

fn stream_line(cells: &[String; 11], wide: bool) -> String {
    let shown = if wide { &cells[..] } else { &cells[..NARROW] };
    let widths = [16, 16, 8, 8, 8, 10, 10, 8, 8, 8, 8];
    let mut line = String::new();
    for (i, (cell, width)) in shown.iter().zip(widths).enumerate() {
        if i > 0 {
            line.push(' ');
        }
        // Names left, figures right.
        if i < 6 {
            line += &format!("{cell:<width$}");
        } else {
            line += &format!("{cell:>width$}");
        }
    }
    line.trim_end().to_string() + "\n"
}

/// The totals, the rows worst first, then one line per missing piece.
pub fn render(reading: &ClusterReading, wide: bool) -> String {
    let mut out = format!(
        "window {:.1}s ending {}, {} agents answered, reads at most {} ms off their ticks\n",
        reading.seconds(),
        rfc3339_ms(reading.to_ms),
        reading.answered,
        reading.lateness_ms
    );
    out += &blind_lines(&reading.blind);
    let columns = if wide {
        &COLUMNS[..]
    } else {
        &COLUMNS[..NARROW]
    };
    let mut t = table::new(columns, 6);
    for r in reading.totals.iter().chain(&reading.rows) {
        t.add_row(cells(r)[..columns.len()].to_vec());
    }
    out += &table::render(&t);
    if !reading.drops.is_empty() {
        out += "dropped by the kernel (skb:kfree_skb), most first:\n";
        let mut t = table::new(&DROP_COLUMNS, 7);
        for d in &reading.drops {
            t.add_row(vec![
                d.node.clone(),
                d.peer_node.clone(),
                d.direction.to_string(),
                d.overlay.to_string(),
                d.src_net.to_string(),
                d.dst_net.to_string(),
                d.reason.clone(),
                d.packets.to_string(),
            ]);
        }
        out += &table::render(&t);
    }
    out += &footer(reading);
    out
}

/// Each node's blind hooks and what they mean for its rows: above the
/// rows, so none passes unremarked.
fn blind_lines(blind: &[NodeBlind]) -> String {
    let mut out = String::new();
    for b in blind {
        out += &format!("blind: {b}\n  {}: {}\n", b.node, b.rows_affected());
    }
    out
}

/// Columns of the drops table: the JSON's field names.
const DROP_COLUMNS: [&str; 8] = [
    "node",
    "peer_node",
    "direction",
    "overlay",
    "src_net",
    "dst_net",
    "reason",
    "packets",
];

fn footer(reading: &ClusterReading) -> String {
    let mut out = String::new();
    for r in reading.all_rows().filter(|r| r.refused > 0) {
        out += &format!(
            "refused: {} -> {} {} {}: {} refused, nothing listening (not loss)\n",
            r.node, r.peer_node, r.overlay, r.signal, r.refused
        );
    }
    for r in reading
        .rows
        .iter()
        .filter(|r| r.signal == Signal::Mtu && r.lost > 0)
    {
        if crate::loss::mtu::describe(r).is_some() {
            out += &format!("mtu: {}\n", crate::loss::mtu::why(r, &reading.drops));
        }
    }
    for r in reading.rows.iter().filter(|r| r.lost > 0) {
        // The kernel's drops, then what ICMP said of the path: a tunnel
        // packet over its learnt path MTU is dropped as NOT_SPECIFIED.
        let behind = reading.drops_behind(r);
        let mut why: Vec<String> = Vec::new();
        if !behind.is_empty() {
            why.push(crate::loss::dropped::describe(&behind, 3));
        }
        if let Some(m) = crate::loss::mtu::told(r, &reading.rows) {
            why.push(crate::loss::mtu::say_told(&m));
        }
        if !why.is_empty() {
            out += &format!(
                "why: {} -> {} {} {}->{} lost {}: {}\n",
                r.node,
                r.peer_node,
                r.overlay,
                r.src_net,
                r.dst_net,
                r.lost,
                why.join("; ")
            );
        }
    }
    if reading.drops_left_out > 0 {
        out += &format!(
            "left out: {} drop rows (neither about the nodes asked for nor among the largest)\n",
            reading.drops_left_out
        );
    }
    for d in &reading.drills {
        out += &format!(
            "drill-down: delivery {} {}->{}: {} of {} group pairs with loss, {} drilled, {} node pairs with loss\n",
            d.overlay,
            d.src_net,
            d.dst_net,
            d.cells_over,
            d.groups * d.groups,
            d.cells_drilled,
            d.pairs
        );
    }
    if reading.delivery_totals_left_out {
        out += "delivery totals: not computed, an agent is missing (its pairs would count on one side only)\n";
    }
    if reading.left_out > 0 {
        out += &format!(
            "left out: {} rows (filters, --top, or the agents' own worst lists)\n",
            reading.left_out
        );
    }
    for f in &reading.failed {
        out += &if f.refused {
            format!(
                "refused: {} does not let this reader in ({}); its node's pairs are missing\n",
                f.agent, f.error
            )
        } else {
            format!(
                "failed: {}: {}; its node's pairs are missing\n",
                f.agent, f.error
            )
        };
    }
    out
}

/// One reading of every agent's raw counters, all at once so the skew
/// between one node's sends and its peer's receives stays small; and the
/// nodes with blind hooks.
pub async fn read_all(
    client: &Client,
    agents: &[String],
) -> Result<(Vec<Delivery>, Vec<NodeBlind>)> {
    let reports = api::fetch_peers(client, agents).await?;
    let views: Vec<_> = reports.iter().map(api::PeersReport::view).collect();
    let blind = reports
        .iter()
        .filter(|r| !r.blind.is_empty())
        .map(|r| NodeBlind {
            node: r.node.clone(),
            hooks: r.blind.clone(),
        })
        .collect();
    Ok((delivery::deliveries(&views), blind))
}

pub fn delivery_table(matrix: &[Delivery]) -> String {
    let columns = [
        "node",
        "peer_node",
        "overlay",
        "src_net",
        "dst_net",
        "sent",
        "received",
        "lost",
        "ratio",
    ];
    let mut t = table::new(&columns, 5);
    for d in matrix {
        t.add_row(vec![
            d.from.clone(),
            d.to.clone(),
            d.overlay.to_string(),
            d.src_net.to_string(),
            d.dst_net.to_string(),
            d.sent.to_string(),
            d.received.to_string(),
            d.lost().to_string(),
            percent(d.loss_ratio()),
        ]);
    }
    table::render(&t)
}

/// A since-start row as JSON, named as the loss rows are (`node`,
/// `peer_node`), with what was lost and the ratio.
fn delivery_json(d: &Delivery) -> serde_json::Value {
    serde_json::json!({
        "node": d.from,
        "peer_node": d.to,
        "overlay": d.overlay,
        "src_net": d.src_net,
        "dst_net": d.dst_net,
        "sent": d.sent,
        "received": d.received,
        "lost": d.lost(),
        "ratio": d.loss_ratio(),
    })
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_string(), |r| format!("{:.3}%", r * 100.0))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::io("encoding JSON", e.into()))
}
