//! `crossover loss`: asks every agent for its loss matrix (`/api/v1/loss`,
//! each agent's current sliding window) and prints them merged, node pair
//! by node pair, network pair by network pair and signal by signal.
//!
//! Each ordered pair is reported by its sender only, so the union of all
//! agents' rows counts every packet once. What is missing is said, never
//! shown as lossless: agents that did not answer (`failed`) and peers an
//! agent could not read (`unreachable`, whose pairs from that agent are
//! absent).
//!
//! `--since-start` instead reads every agent's raw underlay counters
//! (`/api/v1/peers`) once and prints delivery since the agents started:
//! exact figures to compare with a drop counter.
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

pub use crate::agent::window::LossRow;
use crate::{
    Error, Result,
    agent::api,
    delivery::{self, Delivery},
};

/// Exit status when the matrix was printed but is incomplete: an agent did
/// not answer, or an agent could not read one of its peers.
pub const EXIT_INCOMPLETE: i32 = 2;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LossFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct LossArgs {
    /// An agent's base URL, e.g. http://10.0.0.5:9190. Repeat for every node.
    #[arg(long = "agent", required = true)]
    pub agents: Vec<String>,
    /// Delivery since the agents started, from their raw underlay counters,
    /// instead of the agents' sliding windows of every signal.
    #[arg(long)]
    pub since_start: bool,
    #[arg(long, value_enum, default_value_t = LossFormat::Table)]
    pub format: LossFormat,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

/// Every agent's loss rows over its current window, merged.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LossMatrix {
    pub rows: Vec<LossRow>,
    /// Peers an agent could not read at its last sample: the pairs from
    /// `node` to `peer_node` are missing from `rows`, not lossless.
    pub unreachable: Vec<Unreachable>,
    /// Agents that did not answer (or answered something unusable): the
    /// pairs they send on are missing from `rows`.
    pub failed: Vec<FailedAgent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub node: String,
    pub peer_node: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAgent {
    /// The URL as given.
    pub agent: String,
    pub error: String,
}

impl LossMatrix {
    /// Nothing missing: every agent answered and read all its peers.
    pub fn complete(&self) -> bool {
        self.unreachable.is_empty() && self.failed.is_empty()
    }
}

/// Asks every agent at once (each request bounded by `timeout`) and merges
/// their rows. Never fails as a whole: an agent that cannot be used is in
/// `failed`, with why. Two URLs answering for the same node would count
/// that node's pairs twice; the second is refused into `failed`.
pub fn gather(agents: &[String], timeout: Duration) -> LossMatrix {
    let reports: Vec<_> = std::thread::scope(|s| {
        let asks: Vec<_> = agents
            .iter()
            .map(|agent| s.spawn(move || api::fetch_loss(agent, timeout)))
            .collect();
        asks.into_iter()
            .map(|ask| {
                ask.join()
                    .unwrap_or_else(|_| Err(Error::io("loss", std::io::Error::other("panicked"))))
            })
            .collect()
    });
    let mut matrix = LossMatrix::default();
    let mut answered: Vec<(String, &String)> = Vec::new();
    for (agent, report) in agents.iter().zip(reports) {
        let report = match report {
            Ok(report) => report,
            Err(err) => {
                matrix.failed.push(FailedAgent {
                    agent: agent.clone(),
                    error: err.to_string(),
                });
                continue;
            }
        };
        if let Some((_, first)) = answered.iter().find(|(node, _)| *node == report.node) {
            matrix.failed.push(FailedAgent {
                agent: agent.clone(),
                error: format!(
                    "reports node {:?}, already answered by {first}: not counted twice",
                    report.node
                ),
            });
            continue;
        }
        answered.push((report.node.clone(), agent));
        matrix
            .unreachable
            .extend(report.unreachable.iter().map(|peer| Unreachable {
                node: report.node.clone(),
                peer_node: peer.clone(),
            }));
        matrix.rows.extend(report.rows);
    }
    matrix.rows.sort_by(|a, b| {
        let key = |r: &LossRow| {
            (
                r.node.clone(),
                r.peer_node.clone(),
                r.signal.clone(),
                r.overlay.clone(),
                r.src_net.clone(),
                r.dst_net.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    matrix
}

pub fn run(args: LossArgs) -> Result<i32> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    if args.since_start {
        let matrix = read_all(&args.agents, timeout)?;
        match args.format {
            LossFormat::Json => println!("{}", to_json(&matrix)?),
            LossFormat::Table => print!("{}", delivery_table(&matrix)),
        }
        return Ok(0);
    }
    let matrix = gather(&args.agents, timeout);
    match args.format {
        LossFormat::Json => println!("{}", to_json(&matrix)?),
        LossFormat::Table => print!("{}", table(&matrix)),
    }
    Ok(if matrix.complete() {
        0
    } else {
        EXIT_INCOMPLETE
    })
}

/// The merged rows, then one line per missing piece.
pub fn table(matrix: &LossMatrix) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<8} {:<8} {:<8} {:<10} {:>10} {:>8} {:>8}\n",
        "node", "peer", "overlay", "src_net", "dst_net", "signal", "sent", "lost", "ratio"
    );
    for r in &matrix.rows {
        out += &format!(
            "{:<16} {:<16} {:<8} {:<8} {:<8} {:<10} {:>10} {:>8} {:>8}\n",
            r.node,
            r.peer_node,
            r.overlay,
            r.src_net,
            r.dst_net,
            r.signal,
            r.sent,
            r.lost,
            percent(r.ratio())
        );
    }
    for r in matrix.rows.iter().filter(|r| r.refused > 0) {
        out += &format!(
            "refused: {} -> {} {} {}: {} probes refused, nothing listening (not loss)\n",
            r.node, r.peer_node, r.overlay, r.signal, r.refused
        );
    }
    for u in &matrix.unreachable {
        out += &format!(
            "unreachable: {} could not read {}'s agent; pairs {} -> {} are missing\n",
            u.node, u.peer_node, u.node, u.peer_node
        );
    }
    for f in &matrix.failed {
        out += &format!(
            "failed: {} did not answer ({}); its node's pairs are missing\n",
            f.agent, f.error
        );
    }
    out
}

/// One reading of every agent's raw counters, back to back so the skew
/// between one node's sends and its peer's receives stays small.
pub fn read_all(agents: &[String], timeout: Duration) -> Result<Vec<Delivery>> {
    let reports = agents
        .iter()
        .map(|a| api::fetch_peers(a, timeout))
        .collect::<Result<Vec<_>>>()?;
    let views: Vec<_> = reports.iter().map(api::PeersReport::view).collect();
    Ok(delivery::deliveries(&views))
}

pub fn delivery_table(matrix: &[Delivery]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<8} {:<9} {:>10} {:>10} {:>8} {:>8}\n",
        "node", "peer", "overlay", "signal", "sent", "received", "lost", "ratio"
    );
    for d in matrix {
        out += &format!(
            "{:<16} {:<16} {:<8} {:<9} {:>10} {:>10} {:>8} {:>8}\n",
            d.from,
            d.to,
            d.overlay,
            "delivery",
            d.sent,
            d.received,
            d.lost(),
            percent(d.loss_ratio())
        );
    }
    out
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_string(), |r| format!("{:.3}%", r * 100.0))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::io("encoding JSON", e.into()))
}
